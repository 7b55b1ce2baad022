//! Running the server: data directory, master key, database, bootstrap token, TLS, the
//! background sweeper, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::db::{Db, DbLocation};
use crate::error::ServerError;
use crate::http::Limits;
use crate::http::limits::ClientAddr;
use crate::primitives::MasterKey;
use crate::store::auth::Principal;
use crate::store::{Store, StoreConfig};
use crate::tls::{ServerIdentity, TlsListener, write_private};

/// Environment variable holding the master key (64 hex digits); it wins over the key file.
pub const MASTER_KEY_ENV: &str = "TESSERA_MASTER_KEY";
/// How long ended tunnel sessions are kept before the sweeper deletes them (7 days).
pub const SESSION_RETENTION_SECS: i64 = 7 * 24 * 3600;
/// Default listening address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

/// How the server speaks TLS.
#[derive(Clone, Debug)]
pub enum TlsMode {
    /// A certificate generated into `<data>/tls` on first start (the default).
    Generated,
    /// The operator's PEM certificate chain and key.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Private key (PKCS#8, SEC1 or PKCS#1 PEM).
        key: PathBuf,
    },
    /// Plain HTTP, only for a server behind a TLS-terminating proxy on the same host, or tests.
    Disabled,
}

/// Everything `tessera server` can be told.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The data directory (SQLite database, master key file, TLS files, bootstrap token).
    pub data_dir: PathBuf,
    /// Where to listen.
    pub listen: SocketAddr,
    /// The database; `None` means SQLite at `<data>/tessera.db`.
    pub db: Option<DbLocation>,
    /// TLS.
    pub tls: TlsMode,
    /// The master key file; `None` means `<data>/master.key`. Ignored when
    /// [`MASTER_KEY_ENV`] is set.
    pub master_key_file: Option<PathBuf>,
    /// Request limits.
    pub limits: Limits,
    /// Store tuning.
    pub store: StoreConfig,
    /// How often expired sessions are swept.
    pub sweep_every: Duration,
    /// How often a signed audit checkpoint is taken (besides every N entries).
    pub checkpoint_every: Duration,
    /// A PKCS#11 token for issuer keys, if any.
    pub pkcs11: Option<Pkcs11Options>,
}

/// Environment variable: the PKCS#11 user PIN (wins over `--pkcs11-pin-file`).
pub const PKCS11_PIN_ENV: &str = "TESSERA_PKCS11_PIN";

/// Where the PKCS#11 token for issuer keys is.
#[derive(Clone, Debug)]
pub struct Pkcs11Options {
    /// The module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// A file holding the user PIN (used when [`PKCS11_PIN_ENV`] is not set).
    pub pin_file: Option<PathBuf>,
}

impl Pkcs11Options {
    /// Opens and logs in to the token.
    pub fn open(&self) -> Result<crate::pkcs11::Token, StartError> {
        let pin = match (std::env::var(PKCS11_PIN_ENV), &self.pin_file) {
            (Ok(pin), _) => pin,
            (Err(_), Some(path)) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| file_err(path, e))?,
            (Err(_), None) => {
                return Err(StartError::Token(format!(
                    "no PIN: set {PKCS11_PIN_ENV} or give --pkcs11-pin-file"
                )));
            }
        };
        let config = crate::pkcs11::TokenConfig {
            module: self.module.clone(),
            token_label: self.token_label.clone(),
            pin: pin.into(),
        };
        crate::pkcs11::Token::open(&config).map_err(|e| StartError::Token(e.to_string()))
    }
}

impl ServerOptions {
    /// Defaults for a data directory: SQLite, generated TLS certificate, loopback port 8443.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerOptions {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            db: None,
            tls: TlsMode::Generated,
            master_key_file: None,
            limits: Limits::default(),
            store: StoreConfig::default(),
            sweep_every: Duration::from_secs(30),
            checkpoint_every: Duration::from_secs(600),
            pkcs11: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A file or directory problem.
    #[error("{path}: {message}")]
    File {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The master key is unusable.
    #[error("master key: {0}")]
    MasterKey(String),
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Database(String),
    /// The PKCS#11 token could not be opened.
    #[error("{0}")]
    Token(String),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Binding the listening socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl From<ServerError> for StartError {
    fn from(e: ServerError) -> Self {
        StartError::Database(e.to_string())
    }
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> StartError {
    StartError::File { path: path.to_path_buf(), message: e.to_string() }
}

/// The master key: from [`MASTER_KEY_ENV`], else from the key file, which is created (mode
/// 0600) when missing.
pub fn resolve_master_key(data_dir: &Path, file: Option<&Path>) -> Result<MasterKey, StartError> {
    if let Ok(hex) = std::env::var(MASTER_KEY_ENV) {
        return MasterKey::from_hex(&hex)
            .map_err(|e| StartError::MasterKey(format!("{MASTER_KEY_ENV}: {e}")));
    }
    let path = file.map(Path::to_path_buf).unwrap_or_else(|| data_dir.join("master.key"));
    match std::fs::read_to_string(&path) {
        Ok(s) => MasterKey::from_hex(&s)
            .map_err(|e| StartError::MasterKey(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = MasterKey::generate();
            write_private(&path, key.to_hex().as_bytes()).map_err(|e| file_err(&path, e))?;
            tracing::info!(path = %path.display(), key_id = key.id(), "created a new master key");
            Ok(key)
        }
        Err(e) => Err(file_err(&path, e)),
    }
}

/// Creates the data directory (mode 0700) if needed.
pub fn prepare_data_dir(dir: &Path) -> Result<(), StartError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| file_err(dir, e))?;
    }
    Ok(())
}

/// Opens the database and the store for `opts`.
pub async fn open_store(opts: &ServerOptions) -> Result<Store, StartError> {
    prepare_data_dir(&opts.data_dir)?;
    let master = resolve_master_key(&opts.data_dir, opts.master_key_file.as_deref())?;
    let location =
        opts.db.clone().unwrap_or_else(|| DbLocation::Sqlite(opts.data_dir.join("tessera.db")));
    let db = Db::open(&location).await.map_err(|e| StartError::Database(e.to_string()))?;
    let store = Store::open(db, master, opts.store.clone()).await?;
    Ok(match &opts.pkcs11 {
        Some(p) => store.with_token(p.open()?),
        None => store,
    })
}

/// A started server.
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// SHA-256 fingerprint of its TLS certificate (`None` without TLS).
    pub fingerprint: Option<String>,
    /// The superuser token made on first start (also written to `<data>/bootstrap-token`).
    pub bootstrap_token: Option<String>,
    /// The store it serves.
    pub store: Store,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Stops accepting, lets requests in flight finish, and waits for the server to end.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Waits until the server ends by itself (it ends only on shutdown or a fatal error).
    pub async fn wait(self) -> std::io::Result<()> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Starts the server; it runs until [`RunningServer::shutdown`] or `stop` completes.
pub async fn start(
    opts: ServerOptions,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningServer, StartError> {
    let store = open_store(&opts).await?;
    let bootstrap_token = match store.bootstrap_superuser().await? {
        Some(t) => {
            let path = opts.data_dir.join("bootstrap-token");
            write_private(&path, format!("{}\n", t.token).as_bytes())
                .map_err(|e| file_err(&path, e))?;
            tracing::info!(path = %path.display(), token_id = t.info.id, "created the bootstrap superuser token");
            Some(t.token)
        }
        None => None,
    };
    let app = crate::http::router(store.clone(), opts.limits.clone());
    let tcp = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| StartError::Listen { addr: opts.listen, source })?;
    let addr =
        tcp.local_addr().map_err(|source| StartError::Listen { addr: opts.listen, source })?;

    let sweeper = spawn_sweeper(store.clone(), opts.sweep_every, opts.checkpoint_every);
    let (tx, rx) = oneshot::channel::<()>();
    let signal = async move {
        tokio::select! {
            _ = rx => {},
            () = stop => {},
        }
        tracing::info!("shutting down: finishing requests in flight");
    };
    let (fingerprint, task) = match &opts.tls {
        TlsMode::Disabled => {
            let serve = axum::serve(tcp, app.into_make_service_with_connect_info::<ClientAddr>())
                .with_graceful_shutdown(signal);
            (
                None,
                tokio::spawn(async move {
                    let r = serve.await;
                    sweeper.abort();
                    r
                }),
            )
        }
        mode => {
            let identity = match mode {
                TlsMode::Files { cert, key } => ServerIdentity::from_pem_files(cert, key)?,
                _ => {
                    let names = crate::tls::generated_alt_names(opts.listen);
                    ServerIdentity::load_or_create(&opts.data_dir.join("tls"), &names)?.0
                }
            };
            let listener = TlsListener::new(tcp, identity.server_config()?)
                .map_err(|source| StartError::Listen { addr, source })?;
            let serve =
                axum::serve(listener, app.into_make_service_with_connect_info::<ClientAddr>())
                    .with_graceful_shutdown(signal);
            (
                Some(identity.fingerprint()),
                tokio::spawn(async move {
                    let r = serve.await;
                    sweeper.abort();
                    r
                }),
            )
        }
    };
    tracing::info!(%addr, tls = fingerprint.is_some(), fingerprint = fingerprint.as_deref().unwrap_or("-"), "listening");
    Ok(RunningServer { addr, fingerprint, bootstrap_token, store, shutdown: Some(tx), task })
}

fn spawn_sweeper(
    store: Store,
    sweep_every: Duration,
    checkpoint_every: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut sweep = tokio::time::interval(sweep_every);
        let mut checkpoint = tokio::time::interval(checkpoint_every);
        loop {
            tokio::select! {
                _ = sweep.tick() => {
                    match store.expire_sessions().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(expired = n, "expired tunnel sessions"),
                        Err(e) => tracing::warn!(error = %e, "session sweep failed"),
                    }
                    match store.purge_sessions(SESSION_RETENTION_SECS).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deleted = n, "purged old tunnel sessions"),
                        Err(e) => tracing::warn!(error = %e, "session purge failed"),
                    }
                }
                _ = checkpoint.tick() => match store.audit_checkpoint(&Principal::system()).await {
                    Ok(_) | Err(ServerError::Conflict(_)) => {}
                    Err(e) => tracing::warn!(error = %e, "audit checkpoint failed"),
                },
            }
        }
    })
}
