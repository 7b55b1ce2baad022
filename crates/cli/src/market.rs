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
    /// Issue a market's or bank's certificate (role server) with a local CA
    /// (`tessera enroll ca init`): `PREFIX.pem` and `PREFIX.key`.
    Cert(CertArgs),
}

/// `tessera market cert`.
#[derive(Debug, Args)]
pub struct CertArgs {
    /// The local CA's directory.
    #[arg(long, value_name = "DIR")]
    ca_dir: PathBuf,
    /// The common name: the market's or bank's id in the signed messages (1 to 32 bytes).
    #[arg(long)]
    name: String,
    /// DNS names (and IP addresses) the server answers to (repeatable; default localhost).
    #[arg(long, value_name = "NAME")]
    dns: Vec<String>,
    /// Output prefix: writes PREFIX.pem (certificate) and PREFIX.key (PKCS#8 DER, mode 0600).
    #[arg(long, value_name = "PREFIX")]
    out: PathBuf,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: i64,
}

fn cert(args: &CertArgs) -> Result<(), CliError> {
    use tessera_crypto::rng::OsRng;
    use tessera_crypto::x509::{self, AltName, IssueRequest, Role, Validity};
    let (ca_key, ca) = crate::card::home::open_ca(&args.ca_dir)?;
    let names = if args.dns.is_empty() { vec!["localhost".to_string()] } else { args.dns.clone() };
    let alt: Vec<AltName> = names
        .iter()
        .map(|n| match n.parse() {
            Ok(ip) => AltName::Ip(ip),
            Err(_) => AltName::Dns(n.clone()),
        })
        .collect();
    let key = SigningKey::generate(&mut OsRng);
    let now = tessera_host::pairing::ca::now();
    let certificate = x509::issue_with_alt_names(
        &ca_key,
        &ca,
        &IssueRequest {
            subject_cn: &args.name,
            public_key: &key.public_key(),
            roles: &[Role::Server],
            serial: &x509::random_serial(&mut OsRng),
            validity: Validity { not_before: now - 300, not_after: now + args.days * 86_400 },
            ca_path_len: None,
        },
        &alt,
    )
    .map_err(|e| CliError::usage(e.to_string()))?;
    let pkcs8 = key.to_pkcs8_der().map_err(|e| CliError::new(Exit::Other, e.to_string()))?;
    let cert_path = args.out.with_extension("pem");
    let key_path = args.out.with_extension("key");
    let write = |p: &Path, data: &[u8], private: bool| -> Result<(), CliError> {
        use std::io::Write;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let _ = private;
        o.open(p)
            .and_then(|mut f| f.write_all(data))
            .map_err(|e| CliError::new(Exit::Other, format!("cannot write {}: {e}", p.display())))
    };
    write(&key_path, &pkcs8, true)?;
    write(&cert_path, certificate.to_pem().as_bytes(), false)?;
    eprintln!(
        "tessera market: {} for {:?}: {} and {}",
        args.name,
        names,
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

/// What a market or bank server needs.
#[derive(Debug, Args)]
pub struct PartyArgs {
    /// Its certificate (PEM; role server, from the issuer CA; the common name is its id in
    /// the signed messages, and the home card must TRUST it).
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PEM or DER).
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
    let raw = zeroize::Zeroizing::new(std::fs::read(&args.key).map_err(|e| {
        CliError::new(Exit::Other, format!("cannot read {}: {e}", args.key.display()))
    })?);
    let key = match PrivateKeyDer::from_pem_slice(&raw) {
        Ok(pem) => SigningKey::from_pkcs8_der(pem.secret_der()),
        Err(_) => SigningKey::from_pkcs8_der(&raw),
    }
    .map_err(|e| bad(&args.key, &e))?;
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
    let args = match cmd {
        MarketCommand::Serve(args) => args,
        MarketCommand::Cert(args) => return cert(&args),
    };
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
