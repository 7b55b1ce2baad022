//! `tessera home`: the home server of the authentication proxy (seed 004, `docs/proxy.md`).
//!
//! - `tessera home init --data DIR`: makes the home server's TLS identity (the certificate
//!   access cards pin: `DIR/home-cert.pem`) and prints its key hash.
//! - `tessera home serve --data DIR (--image FILE | --reader NAME)`: holds the home card
//!   (PIN1 from `--pin1-file` or `TESSERA_PIN1` at start: prohibited → remote-access wait),
//!   listens for control connections from admitted access cards, relays PIN2 to the card,
//!   and serves market sessions (handover with the session cache, relay, partial).
//! - `tessera home admit CERT --label L`, `revoke FINGERPRINT`, `list`: the registry of
//!   access cards (claim 8), `DIR/registry.db`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;
use tessera_card::pin::PinBlock;
use tessera_crypto::x509::Certificate;
use tessera_home::registry::Registry;
use tessera_home::server::{CardHome, HomeServer, Identity, StandardMarkets, SystemClock};
use tessera_home::{fingerprint_hex, parse_fingerprint};
use tessera_host::CardChannel;
use tokio_rustls::rustls::RootCertStore;
use tokio_rustls::rustls::pki_types::CertificateDer;
use zeroize::Zeroizing;

use crate::Output;
use crate::error::{CliError, Exit};
use crate::source::{CardSource, PassphraseArg};

/// Default address of the home server.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";

/// `tessera home …`.
#[derive(Debug, Subcommand)]
pub enum HomeCommand {
    /// Make the home server's TLS identity (the certificate access cards pin).
    Init(DataArg),
    /// Run the home server with the home card.
    Serve(ServeArgs),
    /// Admit an access card (its certificate, PEM or DER).
    Admit(AdmitArgs),
    /// Revoke an access card by its certificate's SHA-256 fingerprint.
    Revoke(RevokeArgs),
    /// List the registered access cards.
    List(DataArg),
}

/// The home server's data directory.
#[derive(Debug, Args)]
pub struct DataArg {
    /// Data directory (identity, registry).
    #[arg(long, value_name = "DIR", default_value = "tessera-home")]
    pub data: PathBuf,
}

/// `tessera home serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    data: DataArg,
    /// Address to listen on for control connections.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    #[command(flatten)]
    card: CardSource,
    #[command(flatten)]
    passphrase: PassphraseArg,
    /// File holding PIN1, the home card's local PIN (else TESSERA_PIN1).
    #[arg(long, value_name = "F")]
    pin1_file: Option<PathBuf>,
    /// CA certificate (PEM) market servers must chain to (repeatable; default: the home
    /// card's CA).
    #[arg(long, value_name = "FILE")]
    market_ca: Vec<PathBuf>,
    /// How long a cached market session may be resumed without the home card, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    cache_lifetime: u64,
    #[command(flatten)]
    notice: NoticeArgs,
}

/// The settlement notice by e-mail (e-money, `docs/emoney.md`).
#[derive(Debug, Args)]
pub struct NoticeArgs {
    /// E-mail the settlement digest (new log entries) to this address, after each payment and
    /// every `--notify-every` seconds.
    #[arg(long, value_name = "ADDRESS")]
    notify_to: Option<String>,
    /// The notices' sender address.
    #[arg(long, value_name = "ADDRESS", default_value = "tessera-home@localhost")]
    notify_from: String,
    /// The SMTP server (`host:port`).
    #[arg(long, value_name = "HOST:PORT", default_value = "localhost:25")]
    smtp: String,
    /// STARTTLS: when offered (opportunistic), required, or never.
    #[arg(long, value_name = "POLICY", default_value = "opportunistic")]
    smtp_tls: String,
    /// Extra root CA (PEM) for the SMTP server's certificate (repeatable).
    #[arg(long, value_name = "FILE")]
    smtp_ca: Vec<PathBuf>,
    /// Seconds between scheduled notices.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    notify_every: u64,
}

/// The notice scheduler `args` ask for (none without `--notify-to`).
fn notice(
    args: &NoticeArgs,
    data: &Path,
    card: tessera_home::emoney::notice::SharedWallet,
) -> Result<Option<tessera_home::emoney::notice::Scheduler>, CliError> {
    use tessera_home::emoney::notice::{Notifier, Scheduler, SmtpSettings, TlsPolicy};
    let Some(to) = &args.notify_to else { return Ok(None) };
    let (host, port) = args
        .smtp
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| CliError::usage("--smtp: expected host:port"))?;
    let tls = match args.smtp_tls.as_str() {
        "opportunistic" => TlsPolicy::Opportunistic,
        "required" => TlsPolicy::Required,
        "never" => TlsPolicy::Never,
        other => {
            return Err(CliError::usage(format!(
                "--smtp-tls {other}: opportunistic, required or never"
            )));
        }
    };
    let roots = args
        .smtp_ca
        .iter()
        .map(|p| read_ca(p).map(|c| c.der().to_vec()))
        .collect::<Result<_, _>>()?;
    let settings =
        SmtpSettings { host, port, from: args.notify_from.clone(), to: to.clone(), tls, roots };
    let notifier = Notifier::new(settings, Some(&data.join("notice.state"))).map_err(local)?;
    Ok(Some(Scheduler::start(
        Arc::new(notifier),
        card,
        Duration::from_secs(args.notify_every.max(1)),
    )))
}

/// `tessera home admit`.
#[derive(Debug, Args)]
pub struct AdmitArgs {
    #[command(flatten)]
    data: DataArg,
    /// The access card's certificate (PEM or DER); or read it from the card with `--image`
    /// or `--reader`.
    #[arg(required_unless_present_any = ["image", "reader"])]
    cert: Option<PathBuf>,
    /// The access card's image file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["cert", "reader"])]
    image: Option<PathBuf>,
    /// The PC/SC reader holding the access card.
    #[arg(long, value_name = "NAME", conflicts_with = "cert")]
    reader: Option<String>,
    #[command(flatten)]
    passphrase: PassphraseArg,
    /// A name for the card (the terminal it is in, its owner).
    #[arg(long)]
    label: String,
}

/// `tessera home revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    data: DataArg,
    /// SHA-256 fingerprint of the card's certificate (hex, colons optional).
    fingerprint: String,
}

/// Runs a `tessera home` command.
pub fn run(cmd: HomeCommand, out: Output) -> Result<(), CliError> {
    match cmd {
        HomeCommand::Init(args) => init(&args, out),
        HomeCommand::Serve(args) => serve(args),
        HomeCommand::Admit(args) => admit(&args, out),
        HomeCommand::Revoke(args) => revoke(&args, out),
        HomeCommand::List(args) => list(&args, out),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn local(e: impl std::fmt::Display) -> CliError {
    CliError::new(Exit::Other, e.to_string())
}

fn identity(data: &Path) -> Result<(Identity, bool), CliError> {
    Identity::load_or_create(data, now()).map_err(local)
}

fn registry(data: &Path) -> Result<Registry, CliError> {
    std::fs::create_dir_all(data)
        .map_err(|e| CliError::new(Exit::Other, format!("{}: {e}", data.display())))?;
    Registry::open(&data.join("registry.db")).map_err(local)
}

fn init(args: &DataArg, out: Output) -> Result<(), CliError> {
    let (id, made) = identity(&args.data)?;
    let pem = args.data.join("home-cert.pem");
    let spki = hex::encode(id.spki_sha256());
    out.emit(
        || {
            format!(
                "{} home server identity: {}\npinned key (SHA-256 of its SubjectPublicKeyInfo): {spki}",
                if made { "made" } else { "kept the" },
                pem.display()
            )
        },
        || json!({ "made": made, "certificate": pem, "spki_sha256": spki }),
    );
    Ok(())
}

fn read_pin1(file: &Option<PathBuf>) -> Result<PinBlock, CliError> {
    let text = match file {
        Some(path) => Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            CliError::new(Exit::Other, format!("cannot read PIN1 file {}: {e}", path.display()))
        })?),
        None => Zeroizing::new(
            std::env::var("TESSERA_PIN1")
                .map_err(|_| CliError::usage("give PIN1 in --pin1-file or TESSERA_PIN1"))?,
        ),
    };
    PinBlock::from_value(text.trim_end_matches(['\n', '\r']).as_bytes())
        .map_err(|_| CliError::usage("PIN1 must be 4 to 8 characters"))
}

fn read_ca(path: &Path) -> Result<Certificate, CliError> {
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::new(Exit::Other, format!("cannot read {}: {e}", path.display())))?;
    let cert = match std::str::from_utf8(&bytes) {
        Ok(text) if text.contains("-----BEGIN") => Certificate::from_pem(text),
        _ => Certificate::from_der(bytes),
    };
    cert.map_err(|e| CliError::usage(format!("{}: not a certificate: {e}", path.display())))
}

fn card_failure(e: tessera_host::home::CardError) -> CliError {
    match e {
        tessera_host::home::CardError::Channel(e) => CliError::new(Exit::Transport, e.to_string()),
        other => CliError::new(Exit::CardSaidNo, format!("card: {other}")),
    }
}

fn serve(args: ServeArgs) -> Result<(), CliError> {
    let (id, made) = identity(&args.data.data)?;
    if made {
        tracing::info!(path = %args.data.data.join("home-cert.pem").display(), "made the home server identity");
    }
    let registry = Arc::new(registry(&args.data.data)?);
    let pin1 = read_pin1(&args.pin1_file)?;
    let channel: Box<dyn CardChannel + Send> = match (&args.card.image, &args.card.reader) {
        (Some(path), _) => Box::new(tessera_host::InProcessChannel::new(
            crate::source::open_image(path, &args.passphrase)?,
        )),
        (None, Some(reader)) => Box::new(tessera_host::PcscChannel::connect(Some(reader))?),
        (None, None) => return Err(CliError::usage("give --image FILE or --reader NAME")),
    };
    let mut card = tessera_host::home::HomeCard::new(channel);
    card.select().map_err(card_failure)?;
    card.verify_pin1(&pin1).map_err(card_failure)?;
    let mut roots = RootCertStore::empty();
    let cas = if args.market_ca.is_empty() {
        vec![card.ca_certificate().map_err(card_failure)?]
    } else {
        args.market_ca.iter().map(|p| read_ca(p)).collect::<Result<Vec<_>, _>>()?
    };
    for ca in cas {
        roots
            .add(CertificateDer::from(ca.der().to_vec()))
            .map_err(|e| CliError::usage(e.to_string()))?;
    }
    let card = Arc::new(CardHome::new(card).map_err(card_failure)?);
    let cache = Arc::new(tessera_home::handover::SessionCache::new(
        Duration::from_secs(args.cache_lifetime),
        Arc::new(SystemClock),
    ));
    let markets = Arc::new(StandardMarkets::new(roots, card.clone(), cache).map_err(local)?);
    let tls = id.server_config(registry.clone()).map_err(local)?;
    let server = HomeServer::new(tls, registry, card.clone(), markets);
    // E-money: the home card's wallet over the control channel, and the settlement notice.
    let wallet: tessera_home::emoney::notice::SharedWallet =
        Arc::new(std::sync::Mutex::new(tessera_home::emoney::wallet::CardHomeWallet(card)));
    let scheduler = notice(&args.notice, &args.data.data, wallet.clone())?;
    server.set_wallet(
        Arc::new(tessera_home::emoney::wallet::HomeWallet::new(wallet, scheduler)).into_handler(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(local)?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await.map_err(|e| {
            CliError::new(Exit::Other, format!("cannot listen on {}: {e}", args.listen))
        })?;
        let addr = listener.local_addr().map_err(local)?;
        eprintln!(
            "tessera home: listening on {addr}; pinned key {}",
            hex::encode(id.spki_sha256())
        );
        let (stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            let _ = stop.send(true);
        });
        server.serve(listener, rx).await;
        Ok::<(), CliError>(())
    })
}

fn admit(args: &AdmitArgs, out: Output) -> Result<(), CliError> {
    let cert = match (&args.cert, &args.image, &args.reader) {
        (Some(path), _, _) => read_ca(path)?,
        (None, image, reader) => {
            let source = CardSource { image: image.clone(), reader: reader.clone() };
            let mut card = tessera_host::access::AccessCard::new(source.open(&args.passphrase)?);
            card.select().map_err(card_failure)?;
            card.certificate().map_err(card_failure)?
        }
    };
    let registry = registry(&args.data.data)?;
    let fp = registry
        .admit(cert.der(), &args.label, now())
        .map_err(|e| CliError::usage(e.to_string()))?;
    let fp = fingerprint_hex(&fp);
    out.emit(
        || format!("admitted {} ({fp})", args.label),
        || json!({ "admitted": fp, "label": args.label }),
    );
    Ok(())
}

fn revoke(args: &RevokeArgs, out: Output) -> Result<(), CliError> {
    let fp = parse_fingerprint(&args.fingerprint)
        .ok_or_else(|| CliError::usage("the fingerprint is 32 bytes of hex"))?;
    let registry = registry(&args.data.data)?;
    registry.revoke(&fp, now()).map_err(|e| match e {
        tessera_home::registry::RegistryError::NotFound(m) => {
            CliError::usage(format!("no admitted access card {m}"))
        }
        other => local(other),
    })?;
    let fp = fingerprint_hex(&fp);
    out.emit(|| format!("revoked {fp}"), || json!({ "revoked": fp }));
    Ok(())
}

fn list(args: &DataArg, out: Output) -> Result<(), CliError> {
    let entries = registry(&args.data)?.list().map_err(local)?;
    out.emit(
        || {
            entries
                .iter()
                .map(|e| {
                    let state = match e.revoked_at {
                        Some(t) => format!("revoked at {t}"),
                        None => "admitted".to_string(),
                    };
                    format!(
                        "{}  {}  admitted at {}  {state}",
                        fingerprint_hex(&e.fingerprint),
                        e.label,
                        e.admitted_at
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
        || {
            json!(
                entries
                    .iter()
                    .map(|e| json!({
                        "fingerprint": fingerprint_hex(&e.fingerprint),
                        "label": e.label,
                        "admitted_at": e.admitted_at,
                        "revoked_at": e.revoked_at,
                    }))
                    .collect::<Vec<_>>()
            )
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tessera_crypto::ecdsa::SigningKey;
    use tessera_crypto::rng::OsRng;
    use tessera_crypto::x509::{self, Validity};

    fn cert(dir: &Path) -> (PathBuf, [u8; 32]) {
        let key = SigningKey::generate(&mut OsRng);
        let v = Validity { not_before: now() - 10, not_after: now() + 3600 };
        let c = x509::self_signed_ca(&key, "access", &[1], v).unwrap();
        let path = dir.join("access.pem");
        std::fs::write(&path, c.to_pem()).unwrap();
        (path, tessera_home::fingerprint(c.der()))
    }

    #[test]
    fn init_admit_list_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataArg { data: dir.path().join("hs") };
        let out = Output { json: true };
        init(&data, out).unwrap();
        let pem = std::fs::read_to_string(data.data.join("home-cert.pem")).unwrap();
        let (id, made) = identity(&data.data).unwrap();
        assert!(!made, "init keeps the identity it made");
        assert_eq!(Certificate::from_pem(&pem).unwrap().der(), id.certificate());

        let (path, fp) = cert(dir.path());
        let admit_args = |label: &str| AdmitArgs {
            data: DataArg { data: data.data.clone() },
            cert: Some(path.clone()),
            image: None,
            reader: None,
            passphrase: PassphraseArg { passphrase_file: None },
            label: label.into(),
        };
        assert_eq!(admit(&admit_args(""), out).unwrap_err().exit, Exit::Usage);
        admit(&admit_args("phone"), out).unwrap();
        let reg = registry(&data.data).unwrap();
        assert!(reg.is_admitted(&fp).unwrap());

        let revoke_args =
            |s: String| RevokeArgs { data: DataArg { data: data.data.clone() }, fingerprint: s };
        assert_eq!(revoke(&revoke_args("zz".into()), out).unwrap_err().exit, Exit::Usage);
        revoke(&revoke_args(fingerprint_hex(&fp)), out).unwrap();
        assert!(!reg.is_admitted(&fp).unwrap());
        assert_eq!(
            revoke(&revoke_args(hex::encode(fp)), out).unwrap_err().exit,
            Exit::Usage,
            "already revoked"
        );
        list(&data, out).unwrap();
    }
}
