//! The `tessera server` and `tessera admin` commands, as clap argument types and functions
//! the `tessera` binary calls. They return a [`Report`] (text and JSON) or a [`Failure`]
//! whose [`FailureKind`] the binary maps to its exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Value, json};

use crate::client::{ApiClient, ClientError};
use crate::db::DbLocation;
use crate::primitives::MasterKey;
use crate::server::{DEFAULT_LISTEN, ServerOptions, TlsMode, open_store, prepare_data_dir};
use crate::store::auth::Principal;

/// Environment variable: default `--server` of `tessera admin`.
pub const SERVER_ENV: &str = "TESSERA_SERVER";
/// Environment variable: default `--fingerprint`.
pub const FINGERPRINT_ENV: &str = "TESSERA_FINGERPRINT";
/// Environment variable: default `--token`.
pub const TOKEN_ENV: &str = "TESSERA_TOKEN";

/// What a command printed: text for people, JSON for `--json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Text output.
    pub human: String,
    /// JSON output.
    pub json: Value,
}

/// Classes of failure, for exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Bad arguments or input.
    Usage,
    /// The server could not be reached (connection, TLS, pinning).
    Transport,
    /// The server answered with an error status.
    Refused,
    /// A local failure (files, database, start-up).
    Local,
}

/// A failed command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// Its class.
    pub kind: FailureKind,
    /// What went wrong and, where possible, what to do.
    pub message: String,
}

fn fail(kind: FailureKind, message: impl Into<String>) -> Failure {
    Failure { kind, message: message.into() }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Usage(m) => fail(FailureKind::Usage, m),
            ClientError::Transport(m) => fail(FailureKind::Transport, m),
        }
    }
}

/// `tessera server`: run the card-management server.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Data directory (SQLite database, master key, TLS certificate, bootstrap token).
    #[arg(long, default_value = "tessera-data")]
    pub data: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Database: `postgres://user@host/db`, or an SQLite file (default: DATA/tessera.db).
    #[arg(long)]
    pub db: Option<String>,
    /// Serve plain HTTP (only behind a TLS-terminating proxy on the same host).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub no_tls: bool,
    /// TLS certificate chain, PEM (default: one generated into DATA/tls on first start).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key, PEM.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Master key file (default DATA/master.key; TESSERA_MASTER_KEY wins over both).
    #[arg(long)]
    pub master_key_file: Option<PathBuf>,
    /// PKCS#11 module for issuer keys in a token (e.g. /usr/lib/softhsm/libsofthsm2.so).
    #[arg(long, requires = "pkcs11_token")]
    pub pkcs11_module: Option<PathBuf>,
    /// Label of the PKCS#11 token.
    #[arg(long, requires = "pkcs11_module")]
    pub pkcs11_token: Option<String>,
    /// File holding the token's user PIN (TESSERA_PKCS11_PIN wins over it).
    #[arg(long, requires = "pkcs11_module")]
    pub pkcs11_pin_file: Option<PathBuf>,
}

impl ServerArgs {
    /// The server options these arguments ask for.
    pub fn options(&self) -> ServerOptions {
        let pkcs11 = self.pkcs11_module.as_ref().map(|module| crate::server::Pkcs11Options {
            module: module.clone(),
            token_label: self.pkcs11_token.clone().unwrap_or_default(),
            pin_file: self.pkcs11_pin_file.clone(),
        });
        let mut o = ServerOptions::new(&self.data);
        o.listen = self.listen;
        o.db = self.db.as_deref().map(DbLocation::parse);
        o.tls = match (&self.tls_cert, &self.tls_key, self.no_tls) {
            (_, _, true) => TlsMode::Disabled,
            (Some(cert), Some(key), _) => TlsMode::Files { cert: cert.clone(), key: key.clone() },
            _ => TlsMode::Generated,
        };
        o.master_key_file = self.master_key_file.clone();
        o.pkcs11 = pkcs11;
        o
    }
}

/// Runs the server until Ctrl-C or SIGTERM; prints where it listens, the certificate
/// fingerprint and, on first start, the bootstrap token.
pub fn run_server(args: &ServerArgs) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(FailureKind::Local, format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let running = crate::server::start(args.options(), shutdown_signal())
            .await
            .map_err(|e| fail(FailureKind::Local, e.to_string()))?;
        let scheme = if running.fingerprint.is_some() { "https" } else { "http" };
        println!("tessera server listening on {scheme}://{}", running.addr);
        if let Some(fp) = &running.fingerprint {
            println!("TLS certificate SHA-256 fingerprint: {fp}");
        }
        if let Some(token) = &running.bootstrap_token {
            println!(
                "bootstrap superuser token (shown once; also in {}): {token}",
                args.data.join("bootstrap-token").display()
            );
        }
        running.wait().await.map_err(|e| fail(FailureKind::Local, format!("server failed: {e}")))
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `tessera admin`: administer a running server through its API.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Server URL (env TESSERA_SERVER; default https://127.0.0.1:8443).
    #[arg(long)]
    pub server: Option<String>,
    /// SHA-256 fingerprint of the server certificate, as `tessera server` prints it (env
    /// TESSERA_FINGERPRINT).
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// Bearer token (env TESSERA_TOKEN).
    #[arg(long)]
    pub token: Option<String>,
    /// Read the bearer token from this file.
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Admin subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Issuers and their PKI.
    #[command(subcommand)]
    Issuers(IssuerCommand),
    /// Cards of an issuer.
    #[command(subcommand)]
    Cards(CardCommand),
    /// Bearer tokens.
    #[command(subcommand)]
    Tokens(TokenCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Card keyrings (issue 4): versions on both sides, compromise reports, the policy.
    #[command(subcommand)]
    Keyring(crate::keyring::cli::KeyringCommand),
    /// Remote data updates (issue 5): queue an update for a card, list its queue.
    #[command(subcommand)]
    Update(crate::update::cli::UpdateAdminCommand),
    /// The vault key service (issue 7): provision a card's key pair, show it, the escrow policy.
    #[command(subcommand)]
    Vault(crate::vault::cli::VaultAdminCommand),
    /// Re-seal every private key under a new master key (offline: stop the servers first).
    RotateMasterKey(RotateArgs),
}

/// `tessera admin issuers …`
#[derive(Debug, Clone, Subcommand)]
pub enum IssuerCommand {
    /// List issuers.
    List,
    /// Create an issuer (superuser): CA and package-signing keys and certificates.
    Create {
        /// Issuer id (a-z, 0-9, '-').
        id: String,
        /// Display name.
        name: String,
        /// Generate both keys in the server's PKCS#11 token (the server was started with
        /// --pkcs11-module).
        #[arg(long)]
        in_token: bool,
    },
    /// Show an issuer with its certificates (PEM).
    Show {
        /// Issuer id.
        id: String,
    },
    /// List the certificates an issuer's CA made.
    Certs {
        /// Issuer id.
        id: String,
    },
    /// Revoke a certificate (a new CRL is signed).
    RevokeCert {
        /// Issuer id.
        id: String,
        /// Serial number, hex.
        serial: String,
    },
}

/// `tessera admin cards …`
#[derive(Debug, Clone, Subcommand)]
pub enum CardCommand {
    /// List an issuer's cards.
    List {
        /// Issuer id.
        issuer: String,
    },
    /// Show a card (status, clone flag, counters).
    Show {
        /// Issuer id.
        issuer: String,
        /// Card id.
        card: String,
    },
    /// Register a card.
    Register {
        /// Issuer id.
        issuer: String,
        /// Card id.
        card: String,
    },
    /// Revoke a card.
    Revoke {
        /// Issuer id.
        issuer: String,
        /// Card id.
        card: String,
    },
}

/// `tessera admin tokens …`
#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// List tokens.
    List,
    /// Create a token (printed once).
    Create {
        /// The issuer it acts for; without it, a superuser token (superusers only).
        #[arg(long)]
        issuer: Option<String>,
        /// A label.
        #[arg(long, default_value = "")]
        label: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 30 * 24 * 3600)]
        ttl: i64,
    },
    /// Revoke a token.
    Revoke {
        /// Token id.
        id: String,
    },
}

/// `tessera admin audit …`
#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// List entries.
    List {
        /// Entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Verify the hash chain and checkpoints (superuser); exit status 1 if anything is wrong.
    Verify {
        /// A head from an earlier verify, `SEQ:HASH`, to detect truncation.
        #[arg(long)]
        head: Option<String>,
    },
    /// Sign a checkpoint at the head now (superuser).
    Checkpoint,
}

/// `tessera admin rotate-master-key`
#[derive(Debug, Clone, Args)]
pub struct RotateArgs {
    /// The server's data directory.
    #[arg(long, default_value = "tessera-data")]
    pub data: PathBuf,
    /// The database, as for `tessera server --db`.
    #[arg(long)]
    pub db: Option<String>,
    /// The current master key file (default DATA/master.key; TESSERA_MASTER_KEY wins).
    #[arg(long)]
    pub master_key_file: Option<PathBuf>,
    /// Where the new key is: read if the file exists, else generated into it (mode 0600).
    #[arg(long)]
    pub new_key_file: PathBuf,
}

fn env_or(value: &Option<String>, env: &str) -> Option<String> {
    value.clone().or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
}

impl AdminArgs {
    fn client(&self) -> Result<ApiClient, Failure> {
        let server =
            env_or(&self.server, SERVER_ENV).unwrap_or_else(|| format!("https://{DEFAULT_LISTEN}"));
        let fingerprint = env_or(&self.fingerprint, FINGERPRINT_ENV);
        let token = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| fail(FailureKind::Usage, format!("{}: {e}", path.display())))?
                    .trim()
                    .to_owned(),
            ),
            None => env_or(&self.token, TOKEN_ENV),
        };
        Ok(ApiClient::new(&server, fingerprint.as_deref(), token)?)
    }
}

/// Runs an admin command.
pub fn run_admin(args: &AdminArgs) -> Result<Report, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(FailureKind::Local, format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(admin(args))
}

/// Runs an admin command (async, for callers that have a runtime).
pub async fn admin(args: &AdminArgs) -> Result<Report, Failure> {
    if let AdminCommand::RotateMasterKey(r) = &args.command {
        return rotate(r).await;
    }
    let client = args.client()?;
    if let AdminCommand::Update(u @ crate::update::cli::UpdateAdminCommand::PutCsv { .. }) =
        &args.command
    {
        // Drawn on standard error, hidden when it is not a terminal (indicatif's stderr
        // target checks).
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template("queued {pos}/{len} {wide_bar}")
        {
            bar.set_style(style);
        }
        let result = crate::update::cli::put_csv(&client, u, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })
        .await;
        bar.finish_and_clear();
        let answers = result?;
        let value = Value::Array(answers);
        return Ok(Report { human: human(&args.command, &value), json: value });
    }
    let (method, path, body) = request_for(&args.command)?;
    let (status, value) = client.request(method, &path, body.as_ref()).await?;
    if !status.is_success() {
        let msg = value["message"].as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
        return Err(fail(FailureKind::Refused, format!("server answered {status}: {msg}")));
    }
    if let AdminCommand::Audit(AuditCommand::Verify { .. }) = &args.command
        && value["ok"] != Value::Bool(true)
    {
        return Err(fail(
            FailureKind::Refused,
            format!("audit log verification FAILED: {}", human(&args.command, &value)),
        ));
    }
    Ok(Report { human: human(&args.command, &value), json: value })
}

fn request_for(cmd: &AdminCommand) -> Result<(Method, String, Option<Value>), Failure> {
    use AdminCommand as A;
    Ok(match cmd {
        A::Issuers(IssuerCommand::List) => (Method::GET, "/v1/admin/issuers".into(), None),
        A::Issuers(IssuerCommand::Create { id, name, in_token }) => (
            Method::POST,
            "/v1/admin/issuers".into(),
            Some(json!({"id": id, "name": name, "keys_in_token": in_token})),
        ),
        A::Issuers(IssuerCommand::Show { id }) => {
            (Method::GET, format!("/v1/admin/issuers/{}", seg(id)?), None)
        }
        A::Issuers(IssuerCommand::Certs { id }) => {
            (Method::GET, format!("/v1/admin/issuers/{}/certificates", seg(id)?), None)
        }
        A::Issuers(IssuerCommand::RevokeCert { id, serial }) => (
            Method::POST,
            format!("/v1/admin/issuers/{}/certificates/{}/revoke", seg(id)?, seg(serial)?),
            None,
        ),
        A::Cards(CardCommand::List { issuer }) => {
            (Method::GET, format!("/v1/admin/issuers/{}/cards", seg(issuer)?), None)
        }
        A::Cards(CardCommand::Show { issuer, card }) => {
            (Method::GET, format!("/v1/admin/issuers/{}/cards/{}", seg(issuer)?, seg(card)?), None)
        }
        A::Cards(CardCommand::Register { issuer, card }) => (
            Method::POST,
            format!("/v1/admin/issuers/{}/cards", seg(issuer)?),
            Some(json!({"card_id": card})),
        ),
        A::Cards(CardCommand::Revoke { issuer, card }) => (
            Method::POST,
            format!("/v1/admin/issuers/{}/cards/{}/revoke", seg(issuer)?, seg(card)?),
            None,
        ),
        A::Tokens(TokenCommand::List) => (Method::GET, "/v1/admin/tokens".into(), None),
        A::Tokens(TokenCommand::Create { issuer, label, ttl }) => (
            Method::POST,
            "/v1/admin/tokens".into(),
            Some(json!({"issuer": issuer, "label": label, "ttl_secs": ttl})),
        ),
        A::Tokens(TokenCommand::Revoke { id }) => {
            (Method::POST, format!("/v1/admin/tokens/{}/revoke", seg(id)?), None)
        }
        A::Audit(AuditCommand::List { after, limit }) => {
            (Method::GET, format!("/v1/admin/audit?after={after}&limit={limit}"), None)
        }
        A::Audit(AuditCommand::Verify { head }) => {
            let body = match head {
                None => json!({}),
                Some(h) => {
                    let (seq, hash) = h
                        .split_once(':')
                        .and_then(|(s, h)| Some((s.parse::<i64>().ok()?, h)))
                        .ok_or_else(|| fail(FailureKind::Usage, "--head must be SEQ:HASH"))?;
                    json!({"expected_head_seq": seq, "expected_head_hash": hash})
                }
            };
            (Method::POST, "/v1/admin/audit/verify".into(), Some(body))
        }
        A::Audit(AuditCommand::Checkpoint) => {
            (Method::POST, "/v1/admin/audit/checkpoint".into(), None)
        }
        A::Keyring(k) => crate::keyring::cli::request(k)?,
        A::Update(u) => crate::update::cli::request(u)?,
        A::Vault(v) => crate::vault::cli::request(v)?,
        A::RotateMasterKey(_) => {
            return Err(fail(FailureKind::Usage, "rotate-master-key runs offline"));
        }
    })
}

/// A path segment: ids are plain ASCII without `/`, `?`, `#` or `%`; anything else is refused
/// rather than escaped.
fn seg(s: &str) -> Result<&str, Failure> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && !b"/?#%".contains(&b)) {
        Ok(s)
    } else {
        Err(fail(FailureKind::Usage, format!("not a valid id: {s:?}")))
    }
}

fn human(cmd: &AdminCommand, v: &Value) -> String {
    let s = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
    let rows = |f: &dyn Fn(&Value) -> String| {
        v.as_array().map(|a| a.iter().map(f).collect::<Vec<_>>().join("\n")).unwrap_or_default()
    };
    match cmd {
        AdminCommand::Issuers(IssuerCommand::List) => {
            rows(&|i| format!("{}\t{}", s(&i["id"]), s(&i["name"])))
        }
        AdminCommand::Issuers(IssuerCommand::Create { .. } | IssuerCommand::Show { .. }) => {
            format!(
                "issuer {} ({})\n{}{}",
                s(&v["id"]),
                s(&v["name"]),
                s(&v["ca_cert_pem"]),
                s(&v["signing_cert_pem"])
            )
        }
        AdminCommand::Issuers(IssuerCommand::Certs { .. }) => rows(&|c| {
            let revoked = if c["revoked_at"].is_null() { "" } else { "\trevoked" };
            format!("{}\t{}\t{}{revoked}", s(&c["serial"]), s(&c["role"]), s(&c["subject"]))
        }),
        AdminCommand::Issuers(IssuerCommand::RevokeCert { .. }) => {
            format!("revoked certificate {}", s(&v["serial"]))
        }
        AdminCommand::Cards(CardCommand::List { .. }) => rows(&|c| {
            let flag = if c["flagged"].is_null() {
                String::new()
            } else {
                format!("\tFLAGGED: {}", s(&c["flagged"]))
            };
            format!("{}\t{}{flag}", s(&c["card_id"]), s(&c["status"]))
        }),
        AdminCommand::Cards(_) => {
            let mut out =
                format!("card {} of {}: {}", s(&v["card_id"]), s(&v["issuer"]), s(&v["status"]));
            if !v["flagged"].is_null() {
                out.push_str(&format!("\nFLAGGED: {}", s(&v["flagged"])));
            }
            if let Some(counters) = v["counters"].as_object() {
                for (k, c) in counters {
                    out.push_str(&format!("\n{k} = {c}"));
                }
            }
            out
        }
        AdminCommand::Tokens(TokenCommand::List) => rows(&|t| {
            let scope = if t["issuer"].is_null() { "superuser".into() } else { s(&t["issuer"]) };
            let revoked = if t["revoked_at"].is_null() { "" } else { "\trevoked" };
            format!(
                "{}\t{scope}\t{}\texpires {}{revoked}",
                s(&t["id"]),
                s(&t["label"]),
                t["expires_at"]
            )
        }),
        AdminCommand::Tokens(TokenCommand::Create { .. }) => {
            format!("token {} (shown once, store it now):\n{}", s(&v["id"]), s(&v["token"]))
        }
        AdminCommand::Tokens(TokenCommand::Revoke { id }) => format!("revoked token {id}"),
        AdminCommand::Audit(AuditCommand::List { .. }) => rows(&|e| {
            format!(
                "{}\t{}\t{}\t{}\t{}\t{}",
                e["seq"],
                e["at"],
                s(&e["actor"]),
                e["issuer"].as_str().unwrap_or("-"),
                s(&e["action"]),
                s(&e["subject"])
            )
        }),
        AdminCommand::Audit(AuditCommand::Verify { .. }) => {
            let mut out = format!(
                "{} entries, {} checkpoints, head {}:{}",
                v["entries"],
                v["checkpoints"],
                v["head_seq"],
                s(&v["head_hash"])
            );
            for p in v["problems"].as_array().into_iter().flatten() {
                out.push_str(&format!("\nPROBLEM: {}", s(p)));
            }
            if v["ok"] == Value::Bool(true) {
                out.push_str("\nok");
            }
            out
        }
        AdminCommand::Audit(AuditCommand::Checkpoint) => {
            format!("checkpoint signed at entry {}", v["seq"])
        }
        AdminCommand::Keyring(k) => crate::keyring::cli::human(k, v),
        AdminCommand::Update(u) => crate::update::cli::human(u, v),
        AdminCommand::Vault(c) => crate::vault::cli::human(c, v),
        AdminCommand::RotateMasterKey(_) => String::new(),
    }
}

async fn rotate(args: &RotateArgs) -> Result<Report, Failure> {
    let local = |e: &dyn std::fmt::Display| fail(FailureKind::Local, e.to_string());
    prepare_data_dir(&args.data).map_err(|e| local(&e))?;
    let new = match std::fs::read_to_string(&args.new_key_file) {
        Ok(hex) => MasterKey::from_hex(&hex).map_err(|e| {
            fail(FailureKind::Usage, format!("{}: {e}", args.new_key_file.display()))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = MasterKey::generate();
            crate::tls::write_private(&args.new_key_file, key.to_hex().as_bytes())
                .map_err(|e| local(&e))?;
            key
        }
        Err(e) => {
            return Err(fail(FailureKind::Usage, format!("{}: {e}", args.new_key_file.display())));
        }
    };
    let mut opts = ServerOptions::new(&args.data);
    opts.db = args.db.as_deref().map(DbLocation::parse);
    opts.master_key_file = args.master_key_file.clone();
    let mut store = open_store(&opts).await.map_err(|e| local(&e))?;
    let count =
        store.rotate_master_key(&Principal::system(), new.clone()).await.map_err(|e| local(&e))?;
    Ok(Report {
        human: format!(
            "re-sealed {count} private keys under master key {} ({}); start every server with this key now \
             (replace the old key file or set TESSERA_MASTER_KEY)",
            new.id(),
            args.new_key_file.display()
        ),
        json: json!({"resealed": count, "key_id": new.id(), "key_file": args.new_key_file}),
    })
}

/// Where the tunnel server is, for the terminal commands (`tessera sync`, `tessera issue`).
#[derive(Debug, Clone, Args)]
pub struct TunnelArgs {
    /// Server URL (env TESSERA_SERVER; default https://127.0.0.1:8443).
    #[arg(long)]
    pub server: Option<String>,
    /// SHA-256 fingerprint of the server certificate (env TESSERA_FINGERPRINT).
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// The card's issuer.
    #[arg(long)]
    pub issuer: String,
}

/// `tessera sync`: run whatever the server has for the card (the card reader or image
/// options are the binary's).
#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// The server.
    #[command(flatten)]
    pub tunnel: TunnelArgs,
    /// The card id, if known (else the card tells the server).
    #[arg(long)]
    pub card_id: Option<String>,
    /// File holding the card's PIN, for the update step (`/dev/fd/N` for a descriptor
    /// inherited from a login hook). Else --pin-stdin, else the TESSERA_PIN environment
    /// variable; never an argument. Without a PIN, pending updates wait for a sync with one.
    #[arg(long, value_name = "F", conflicts_with = "pin_stdin")]
    pub pin_file: Option<std::path::PathBuf>,
    /// Read the card's PIN from the first line of standard input.
    #[arg(long)]
    pub pin_stdin: bool,
    /// The issuer-list publisher's certificate (PEM: the issuer's package-signing
    /// certificate, `tessera admin issuers show`). With it, the card's issuer CA certificate is
    /// checked against the issuer list the publisher signed, before the PIN is used (claims 4,
    /// 13); a card of an issuer not on the list stops the sync.
    #[arg(long, value_name = "PEM")]
    pub publisher_key: Option<PathBuf>,
    /// Where this terminal keeps the issuer list it trusts: read when present, refreshed from
    /// the server (never to an older version), written back.
    #[arg(long, value_name = "FILE", requires = "publisher_key")]
    pub issuer_list: Option<PathBuf>,
    /// Use the list held in --issuer-list as it is, without asking the server.
    #[arg(long, requires = "issuer_list")]
    pub offline_issuer_list: bool,
    /// The privacy variant (claim 9): only the update step, the card's id sealed to the
    /// server; neither this terminal nor the network learns it. Needs the PIN.
    #[arg(long, conflicts_with = "card_id")]
    pub private: bool,
    /// Authenticate the card by its legacy static authenticator (claim 10) instead of
    /// challenge-response: only the update step. **Replayable**: whoever sees the value once
    /// can present it again; for legacy cards personalised with one, nothing else.
    #[arg(long, conflicts_with = "private")]
    pub legacy_static_auth: bool,
}

/// What `tessera sync --legacy-static-auth` prints (and logs) before it runs.
pub const LEGACY_WARNING: &str = "WARNING: --legacy-static-auth: the card's static authenticator \
     is replayable (claim 10): whoever sees it once (this terminal, a log, the network before \
     TLS) can present it again without the card. Use challenge-response where the card supports it.";

impl SyncArgs {
    /// The PIN from --pin-file, --pin-stdin or TESSERA_PIN, if any (trailing newline removed).
    fn pin(&self) -> Result<Option<zeroize::Zeroizing<String>>, Failure> {
        let local = |e: std::io::Error| fail(FailureKind::Local, format!("reading the PIN: {e}"));
        let text = if let Some(path) = &self.pin_file {
            zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(local)?)
        } else if self.pin_stdin {
            let mut line = zeroize::Zeroizing::new(String::new());
            std::io::stdin().read_line(&mut line).map_err(local)?;
            line
        } else {
            match std::env::var("TESSERA_PIN") {
                Ok(v) => zeroize::Zeroizing::new(v),
                Err(_) => return Ok(None),
            }
        };
        Ok(Some(zeroize::Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_owned())))
    }
}

/// Verifies the PIN on the card (SELECT ISD, VERIFY `81`) before the tunnel: the update
/// applet refuses device authentication until it is. The PIN never leaves the terminal.
fn verify_pin(
    pin: &str,
    transmit: &mut impl FnMut(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<(), Failure> {
    use tessera_apdu::{Command, Response, StatusWord};
    if !(4..=8).contains(&pin.len()) || !pin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail(FailureKind::Usage, "the PIN is 4 to 8 digits"));
    }
    let mut send = |c: Command| -> Result<Response, Failure> {
        let raw = c.to_bytes().map_err(|e| fail(FailureKind::Local, e.to_string()))?;
        let answer = transmit(&raw).map_err(|e| fail(FailureKind::Transport, e))?;
        Response::parse(&answer)
            .ok_or_else(|| fail(FailureKind::Transport, "the card's answer is too short"))
    };
    let select = Command::new(0x00, 0xA4, 0x04, 0x00)
        .with_data(crate::tunnel::ISD_AID.to_vec())
        .with_le(256);
    let r = send(select)?;
    if r.sw != StatusWord::SUCCESS {
        return Err(fail(
            FailureKind::Refused,
            format!("SELECT: the card answered {:04X}", r.sw.0),
        ));
    }
    let mut block = zeroize::Zeroizing::new(pin.as_bytes().to_vec());
    block.resize(8, 0xFF);
    let r = send(Command::new(0x00, 0x20, 0x00, 0x81).with_data(block.to_vec()))?;
    match r.sw.0 {
        0x9000 => Ok(()),
        sw @ 0x63C0..=0x63CF => {
            Err(fail(FailureKind::Refused, format!("wrong PIN: {} tries left", sw & 0x0F)))
        }
        0x6983 => Err(fail(FailureKind::Refused, "the PIN is blocked: unblock it with the PUK")),
        sw => Err(fail(FailureKind::Refused, format!("VERIFY PIN: the card answered {sw:04X}"))),
    }
}

/// The card's id, read by the terminal (SELECT ISD, GET DATA `0045`).
fn read_card_id(
    transmit: &mut impl FnMut(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<String, Failure> {
    let mut responses = Vec::new();
    for apdu in crate::tunnel::identify_apdus() {
        responses.push(transmit(&apdu).map_err(|e| fail(FailureKind::Transport, e))?);
    }
    crate::tunnel::parse_identify(&responses)
        .map_err(|e| fail(FailureKind::Refused, format!("reading the card id: {e}")))
}

/// `tessera issue`: personalise a blank card through the server.
#[derive(Debug, Clone, Args)]
pub struct IssueArgs {
    /// The server.
    #[command(flatten)]
    pub tunnel: TunnelArgs,
    /// The new card's id.
    #[arg(long)]
    pub card_id: String,
    /// Bearer token of the issuer (env TESSERA_TOKEN).
    #[arg(long)]
    pub token: Option<String>,
    /// Also personalise a legacy static authenticator (claim 10) and register it for the
    /// card, so that `tessera sync --legacy-static-auth` can authenticate it. **Replayable**:
    /// whoever sees the value once can present it again; only for legacy terminals.
    #[arg(long)]
    pub legacy_static_auth: bool,
}

/// What `tessera issue --legacy-static-auth` prints (and logs) before it runs.
pub const ISSUE_LEGACY_WARNING: &str = "WARNING: --legacy-static-auth: this card gets a static \
     authenticator (claim 10) that is replayable: whoever sees it once (a terminal, a log) can \
     present it again without the card. Remove it with `tessera admin update legacy-static \
     ISSUER CARD --clear` when no legacy terminal needs it.";

impl TunnelArgs {
    fn client(&self, token: Option<String>) -> Result<ApiClient, Failure> {
        let server =
            env_or(&self.server, SERVER_ENV).unwrap_or_else(|| format!("https://{DEFAULT_LISTEN}"));
        let fingerprint = env_or(&self.fingerprint, FINGERPRINT_ENV);
        Ok(ApiClient::new(&server, fingerprint.as_deref(), token)?)
    }
}

fn api_failure(e: crate::client::ApiError) -> Failure {
    use crate::client::ApiError;
    match e {
        ApiError::Client(c) => c.into(),
        ApiError::Server { .. } => fail(FailureKind::Refused, e.to_string()),
        ApiError::Card(m) => fail(FailureKind::Transport, format!("card: {m}")),
        ApiError::Protocol(m) => fail(FailureKind::Local, m),
    }
}

fn outcome_report(step: &crate::store::sessions::TunnelStep) -> Report {
    let (result, card, message) = match &step.outcome {
        Some(o) => (o.result.as_str(), o.card_id.as_deref().unwrap_or("-"), o.message.as_str()),
        None => ("done", "-", ""),
    };
    Report {
        human: format!("{result}: card {card}: {message}"),
        json: serde_json::to_value(step).unwrap_or(Value::Null),
    }
}

/// Runs `tessera sync`: relays the server's session for the card through `transmit` (one
/// command APDU in, the response APDU out). A card the server flags as a clone fails.
pub async fn sync(
    args: &SyncArgs,
    mut transmit: impl FnMut(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<Report, Failure> {
    let client = args.tunnel.client(None)?;
    let pin = args.pin()?;
    if let Some(pin) = &pin {
        verify_pin(pin, &mut transmit)?;
    }
    let mut warning = None;
    if !args.legacy_static_auth && !args.private {
        // The usual sync: the card named (read from it unless given), the session opened and
        // relayed on one connection with the counters read in its first step.
        let card_id = match &args.card_id {
            Some(id) => id.clone(),
            None => read_card_id(&mut transmit)?,
        };
        let last =
            client.sync(&args.tunnel.issuer, &card_id, transmit).await.map_err(api_failure)?;
        return sync_outcome(&last, None);
    }
    let first = if args.legacy_static_auth {
        if pin.is_none() {
            return Err(fail(
                FailureKind::Usage,
                "--legacy-static-auth runs only the update step, which needs the PIN (--pin-file, --pin-stdin or TESSERA_PIN)",
            ));
        }
        tracing::warn!("{LEGACY_WARNING}");
        warning = Some(LEGACY_WARNING);
        let card_id = match &args.card_id {
            Some(id) => id.clone(),
            None => read_card_id(&mut transmit)?,
        };
        client.open_legacy_update_session(&args.tunnel.issuer, &card_id).await
    } else {
        // --private (the usual sync returned above).
        if pin.is_none() {
            return Err(fail(
                FailureKind::Usage,
                "--private runs only the update step, which needs the PIN (--pin-file, --pin-stdin or TESSERA_PIN)",
            ));
        }
        client.open_private_update_session(&args.tunnel.issuer).await
    }
    .map_err(|e| {
        // The warning stands in front of a refusal too (a card without a registered value).
        let mut f = api_failure(e);
        if let Some(w) = warning {
            f.message = format!("{w}\n{}", f.message);
        }
        f
    })?;
    let last = client.relay(first, transmit).await.map_err(api_failure)?;
    sync_outcome(&last, warning)
}

/// The report of a sync's last step, `warning` in front; the refusals as failures.
fn sync_outcome(
    last: &crate::store::sessions::TunnelStep,
    warning: Option<&str>,
) -> Result<Report, Failure> {
    let mut report = outcome_report(last);
    if let Some(w) = warning {
        report.human = format!("{w}\n{}", report.human);
    }
    match &last.outcome {
        Some(o) if o.result == "flagged" => Err(fail(FailureKind::Refused, report.human)),
        // The keyring step: the card must be re-issued, or the sync failed (retry).
        Some(o) if o.result == "needs-reissue" => Err(fail(FailureKind::Refused, report.human)),
        Some(o) if o.result == "keyring-error" => Err(fail(FailureKind::Transport, report.human)),
        // The update step: a refusal (the package stays pending).
        Some(o) if o.result == crate::store::update::UPDATE_ERROR => {
            Err(fail(FailureKind::Refused, report.human))
        }
        _ => Ok(report),
    }
}

/// Runs `tessera issue`: starts the issuance with the issuer's token, relays it to the blank
/// card through `transmit`, and reports the initial PIN and PUK (shown once). With
/// `--legacy-static-auth` (warned), the card also gets a static authenticator, which is
/// registered for it once the card is issued.
pub async fn issue(
    args: &IssueArgs,
    transmit: impl FnMut(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<Report, Failure> {
    let client = args.tunnel.client(env_or(&args.token, TOKEN_ENV))?;
    if args.legacy_static_auth {
        tracing::warn!("{ISSUE_LEGACY_WARNING}");
    }
    let issuer = seg(&args.tunnel.issuer)?;
    let start = crate::store::issuance::StartIssuance {
        card_id: args.card_id.clone(),
        legacy_static_auth: args.legacy_static_auth,
    };
    let body = serde_json::to_value(&start).map_err(|e| fail(FailureKind::Local, e.to_string()))?;
    let issuance: crate::store::issuance::Issuance =
        call(&client, Method::POST, &format!("/v1/admin/issuers/{issuer}/issuances"), &body)
            .await?;
    if args.legacy_static_auth && issuance.legacy_static_hex.is_none() {
        return Err(fail(
            FailureKind::Refused,
            "the server did not personalise a legacy static authenticator",
        ));
    }
    let last = client.relay(issuance.session.clone(), transmit).await.map_err(api_failure)?;
    let mut report = outcome_report(&last);
    let issued = last.outcome.as_ref().is_some_and(|o| o.result == "issued");
    // The server registered the value in the issuance's last transaction.
    let legacy_registered = issued && issuance.legacy_static_hex.is_some();
    if legacy_registered {
        report.human = format!(
            "{ISSUE_LEGACY_WARNING}\n{}\nlegacy static authenticator registered (tessera sync \
             --legacy-static-auth)",
            report.human
        );
    }
    report.human.push_str(&format!(
        "\ninitial PIN: {}\nPUK: {}\n(shown once: hand them to the card holder)",
        issuance.initial_pin, issuance.puk
    ));
    report.json = json!({
        "outcome": last.outcome, "initial_pin": issuance.initial_pin, "puk": issuance.puk,
        "legacy_static": legacy_registered,
    });
    Ok(report)
}

/// One JSON request of `tessera issue`: the answer decoded, or the server's refusal.
async fn call<T: serde::de::DeserializeOwned>(
    client: &ApiClient,
    method: Method,
    path: &str,
    body: &Value,
) -> Result<T, Failure> {
    let (status, value) = client.request(method, path, Some(body)).await?;
    if !status.is_success() {
        let message = value
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| value.to_string(), str::to_owned);
        return Err(fail(FailureKind::Refused, format!("{status}: {message}")));
    }
    serde_json::from_value(value).map_err(|e| fail(FailureKind::Local, e.to_string()))
}

fn current_thread_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(FailureKind::Local, format!("cannot start the async runtime: {e}")))
}

/// [`sync`] for a synchronous caller (the `tessera` binary).
pub fn run_sync(
    args: &SyncArgs,
    transmit: impl FnMut(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<Report, Failure> {
    current_thread_runtime()?.block_on(sync(args, transmit))
}

/// The issuer list the sync's issuer publishes (`GET /v1/issuers/{issuer}/update/issuer-list`),
/// unverified: the terminal checks it against its configured publisher key.
pub async fn fetch_issuer_list(args: &SyncArgs) -> Result<Vec<u8>, Failure> {
    let client = args.tunnel.client(None)?;
    client.issuer_list(&args.tunnel.issuer).await.map_err(api_failure)
}

/// [`fetch_issuer_list`] for a synchronous caller (the `tessera` binary).
pub fn run_fetch_issuer_list(args: &SyncArgs) -> Result<Vec<u8>, Failure> {
    current_thread_runtime()?.block_on(fetch_issuer_list(args))
}

/// [`issue`] for a synchronous caller (the `tessera` binary).
pub fn run_issue(
    args: &IssueArgs,
    transmit: impl FnMut(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<Report, Failure> {
    current_thread_runtime()?.block_on(issue(args, transmit))
}
