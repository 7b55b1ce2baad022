//! `tessera market serve`: the reference market of home-card e-money (`docs/emoney.md`).
//!
//! HTTPS with client certificates from the issuer CA (TLS 1.3 and 1.2, so the home server's
//! proxy reaches it in every mode), a small catalogue, orders, market-signed charge notices,
//! payment tokens verified against the issuer CA (once, per-card counters), signed settlement
//! and cancellation within 7 days of the notice. State in SQLite (`--db`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::x509::Certificate;
use tessera_home::emoney::market::{Market, default_catalogue};
use tessera_home::emoney::{Party, SystemUnixClock, https};
use tokio_rustls::rustls::pki_types::PrivateKeyDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

use crate::error::{CliError, Exit};

/// `tessera market …`.
#[derive(Debug, Subcommand)]
pub enum MarketCommand {
    /// Run the reference market.
    Serve(MarketArgs),
}

/// What a market or bank server needs.
#[derive(Debug, Args)]
pub struct PartyArgs {
    /// Its certificate (PEM; role server, from the issuer CA; the common name is its id in
    /// the signed messages, and the home card must TRUST it).
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Its private key (PKCS#8 PEM).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The issuer CA certificate (PEM) client and payment certificates must chain to.
    #[arg(long, value_name = "FILE")]
    pub issuer_ca: PathBuf,
    /// ISO 4217 currency of its amounts.
    #[arg(long, default_value = "EUR")]
    pub currency: String,
}

/// `tessera market serve`.
#[derive(Debug, Args)]
pub struct MarketArgs {
    #[command(flatten)]
    party: PartyArgs,
    /// SQLite database of orders and card counters.
    #[arg(long, value_name = "FILE", default_value = "market.sqlite")]
    db: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
}

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::new(Exit::Other, format!("cannot read {}: {e}", path.display())))
}

/// Loads the party (certificate and key), the issuer CA and the currency.
pub fn load(args: &PartyArgs) -> Result<(Party, Certificate, [u8; 3]), CliError> {
    let bad =
        |p: &Path, e: &dyn std::fmt::Display| CliError::usage(format!("{}: {e}", p.display()));
    let cert = Certificate::from_pem(&read(&args.cert)?).map_err(|e| bad(&args.cert, &e))?;
    let key = PrivateKeyDer::from_pem_slice(read(&args.key)?.as_bytes())
        .map_err(|e| bad(&args.key, &e))?;
    let key = SigningKey::from_pkcs8_der(key.secret_der()).map_err(|e| bad(&args.key, &e))?;
    let issuer =
        Certificate::from_pem(&read(&args.issuer_ca)?).map_err(|e| bad(&args.issuer_ca, &e))?;
    let party = Party::new(key, cert).map_err(|e| CliError::usage(e.to_string()))?;
    let currency: [u8; 3] = args
        .currency
        .as_bytes()
        .try_into()
        .ok()
        .filter(|c: &[u8; 3]| c.iter().all(u8::is_ascii_uppercase))
        .ok_or_else(|| CliError::usage("the currency is three capital letters (EUR)"))?;
    Ok((party, issuer, currency))
}

/// Serves `router` with `config` on `listen` until Ctrl-C.
pub fn serve(
    name: &str,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
    listen: SocketAddr,
    router: https::Router,
) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(Exit::Other, e.to_string()))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| CliError::new(Exit::Other, format!("cannot listen on {listen}: {e}")))?;
        let running = https::serve(config, listener, router)
            .await
            .map_err(|e| CliError::new(Exit::Other, e.to_string()))?;
        eprintln!("tessera {name}: listening on https://{}", running.addr);
        let _ = tokio::signal::ctrl_c().await;
        running.stop().await;
        Ok(())
    })
}

/// Runs `tessera market …`.
pub fn run(cmd: MarketCommand) -> Result<(), CliError> {
    let MarketCommand::Serve(args) = cmd;
    let (party, issuer, currency) = load(&args.party)?;
    let config =
        https::server_config(&party, &issuer).map_err(|e| CliError::usage(e.to_string()))?;
    eprintln!("tessera market: {} selling {} items", party.id, default_catalogue().len());
    let market = Market::open(
        party,
        issuer,
        currency,
        default_catalogue(),
        Some(&args.db),
        Arc::new(SystemUnixClock),
    )
    .map_err(|e| CliError::new(Exit::Other, e.to_string()))?;
    serve("market", config, args.listen, market.router())
}
