//! Test support: a database per test on SQLite or PostgreSQL, and a fake card.
//!
//! PostgreSQL: the first test to need it starts a private cluster (initdb + pg_ctl, run as
//! the `postgres` user when the tests run as root, since initdb refuses root) in
//! `$TMPDIR/tessera-test-pg`, on a free loopback port, and later tests (in this or another
//! test process) reuse it; a file lock serialises the start. Every test gets a database of
//! its own. `scripts/postgres stop` stops the cluster. When PostgreSQL is not installed, tests
//! print a notice and skip, except under `CI=true`, where that is a failure.

#![allow(dead_code, missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use tessera_apdu::{Response, StatusWord, Tag};
use tessera_server::db::{Db, DbLocation};
use tessera_server::primitives::MasterKey;
use tessera_server::store::auth::Principal;
use tessera_server::{Store, StoreConfig};

pub struct TestDb {
    pub location: DbLocation,
    pub _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL database to drop at the end (its URL when created).
    drop_url: Option<String>,
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        TestDb {
            location: DbLocation::Sqlite(dir.path().join("tessera.db")),
            _dir: Some(dir),
            drop_url: None,
        }
    }

    /// A fresh database in the shared test cluster, or `None` (skip) when PostgreSQL is
    /// missing outside CI.
    pub async fn postgres() -> Option<TestDb> {
        let base = cluster_url()?;
        let name = format!("t_{}", hex::encode(tessera_server::primitives::random_bytes::<8>()));
        let (client, conn) =
            tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls)
                .await
                .expect("connect to the test cluster");
        tokio::spawn(conn);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let url = format!("{base}/{name}");
        Some(TestDb {
            location: DbLocation::Postgres(url.clone()),
            _dir: None,
            drop_url: Some(url),
        })
    }
}

impl Drop for TestDb {
    /// Drops a test's PostgreSQL database, so repeated runs do not fill the cluster. Runs on
    /// its own thread and runtime: the test's runtime may be shutting down.
    fn drop(&mut self) {
        let Some(url) = &self.drop_url else { return };
        let Some((base, name)) = url.rsplit_once('/') else { return };
        let (admin, name) = (format!("{base}/postgres"), name.to_owned());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let (client, conn) =
                    tokio_postgres::connect(&admin, tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}

impl TestDb {
    pub async fn store(&self) -> Store {
        self.store_with(StoreConfig::default()).await
    }

    pub async fn store_with(&self, config: StoreConfig) -> Store {
        let db = Db::open(&self.location).await.unwrap();
        Store::open(db, test_master_key(), config).await.unwrap()
    }
}

pub fn test_master_key() -> MasterKey {
    MasterKey::from_bytes([7; 32])
}

pub fn root() -> Principal {
    Principal::system()
}

fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
    })
}

fn run_pg(bin: &Path, tool: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    };
    cmd.args(args).output().unwrap_or_else(|e| panic!("cannot run {tool}: {e}"))
}

/// `postgres://postgres@127.0.0.1:PORT` of the shared cluster, started if needed.
///
/// Found (or started) once per test process: looking spawns processes (`id`, `pg_ctl status`,
/// `chown -R`), and a child forked while another test's thread has a card image open shares
/// that image's lock until it execs, so a test reopening its image right after closing it
/// could find it locked (see `lock` in crates/card/src/card.rs).
/// Roles of the test cluster that log in over TCP with a password, and the method its
/// `pg_hba.conf` asks of each (everyone else is trusted).
pub const PASSWORD_ROLES: [(&str, &str); 3] =
    [("tessera_scram", "scram-sha-256"), ("tessera_md5", "md5"), ("tessera_clear", "password")];

/// The directory of the test cluster's Unix socket.
pub fn cluster_socket_dir() -> PathBuf {
    std::env::temp_dir().join("tessera-test-pg")
}

pub fn cluster_url() -> Option<String> {
    static URL: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    URL.get_or_init(find_or_start_cluster).clone()
}

fn find_or_start_cluster() -> Option<String> {
    let Some(bin) = pg_bin() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); CI needs it: apt-get install postgresql"
            );
        }
        eprintln!("NOTICE: PostgreSQL not installed; skipping the PostgreSQL variant of this test");
        return None;
    };
    let dir = std::env::temp_dir().join("tessera-test-pg");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = File::create(std::env::temp_dir().join("tessera-test-pg.lock")).unwrap();
    // File locks are stable since 1.89; the toolchain here is 1.95 (the manifest's
    // rust-version lags).
    #[allow(clippy::incompatible_msrv)]
    lock.lock().unwrap();
    let data = dir.join("data");
    let port_file = dir.join("port");
    if is_root() {
        Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status().unwrap();
    }
    let running = data.join("PG_VERSION").exists()
        && run_pg(&bin, "pg_ctl", &["-D", data.to_str().unwrap(), "status"]).status.success();
    if !running && data.exists() {
        // Not running: no test is using it. Start from a clean cluster (databases of runs
        // that crashed are gone).
        std::fs::remove_dir_all(&data).unwrap();
    }
    if !data.join("PG_VERSION").exists() {
        let out = run_pg(
            &bin,
            "initdb",
            &["-D", data.to_str().unwrap(), "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Roles that must authenticate with a password, checked before the trust rules
    // (tests/postgres_wire.rs makes the roles); also in a cluster an older checkout started.
    let hba = data.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    let password_rules = PASSWORD_ROLES
        .iter()
        .map(|(role, method)| format!("host all {role} 127.0.0.1/32 {method}\n"))
        .collect::<String>();
    if !rules.starts_with(&password_rules) {
        std::fs::write(&hba, password_rules + &rules).unwrap();
        if running {
            let out = run_pg(&bin, "pg_ctl", &["-D", data.to_str().unwrap(), "reload"]);
            assert!(
                out.status.success(),
                "pg_ctl reload: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // The postmaster rereads the file on the signal, moments later (once per cluster).
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    if !running {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            dir.display()
        );
        let log = dir.join("log");
        let out = run_pg(
            &bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::fs::write(&port_file, port.to_string()).unwrap();
    }
    let port = std::fs::read_to_string(&port_file).unwrap();
    Some(format!("postgres://postgres@127.0.0.1:{}", port.trim()))
}

/// Runs a test body against SQLite and PostgreSQL: `both!(name);` expects
/// `async fn name(db: TestDb)` in scope and makes `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::common::TestDb::sqlite()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = super::common::TestDb::postgres().await {
                    super::$name(db).await
                }
            }
        }
    };
}

/// A card that answers the tunnel's identification APDUs like the ISD does.
pub struct FakeCard {
    pub card_id: Option<String>,
    pub kvn: u8,
}

impl FakeCard {
    pub fn new(card_id: &str, kvn: u8) -> Self {
        FakeCard { card_id: Some(card_id.to_owned()), kvn }
    }

    pub fn answer(&self, apdu_hex: &str) -> String {
        let apdu = hex::decode(apdu_hex).unwrap();
        let resp = match &apdu[..4] {
            [0x00, 0xA4, 0x04, 0x00] => Response::ok(Vec::new()),
            [0x80, 0xCA, 0x00, 0x45] => match &self.card_id {
                Some(id) => {
                    let mut out = Vec::new();
                    tessera_apdu::tlv::encode(Tag::new(0x45), id.as_bytes(), &mut out).unwrap();
                    Response::ok(out)
                }
                None => Response::status(StatusWord(0x6A88)),
            },
            [0x80, 0xCA, 0x00, 0xE0] => {
                let mut inner = Vec::new();
                for id in 1..=3u8 {
                    tessera_apdu::tlv::encode(
                        Tag::new(0xC0),
                        &[id, self.kvn, 0x88, 16],
                        &mut inner,
                    )
                    .unwrap();
                }
                let mut out = Vec::new();
                tessera_apdu::tlv::encode(Tag::new(0xE0), &inner, &mut out).unwrap();
                Response::ok(out)
            }
            _ => Response::status(StatusWord(0x6D00)),
        };
        hex::encode_upper(resp.to_bytes())
    }

    pub fn answer_all(&self, apdus: &[String]) -> Vec<String> {
        apdus.iter().map(|a| self.answer(a)).collect()
    }
}

/// A TCP proxy in front of a database, to take it "down" and bring it back mid-test.
pub struct Proxy {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection closed at once
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().unwrap().push(task);
            }
        });
        Proxy { port, up, conns }
    }

    /// Cuts every open connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The cluster's address and a database URL through a proxy on `port`.
pub fn via_proxy(location: &DbLocation, port: u16) -> (std::net::SocketAddr, DbLocation) {
    let DbLocation::Postgres(url) = location else { panic!("not PostgreSQL") };
    let rest = url.strip_prefix("postgres://postgres@127.0.0.1:").unwrap();
    let (pg_port, db) = rest.split_once('/').unwrap();
    let upstream = format!("127.0.0.1:{pg_port}").parse().unwrap();
    (upstream, DbLocation::Postgres(format!("postgres://postgres@127.0.0.1:{port}/{db}")))
}

/// Answers every step of a session with `card` until the server says done.
pub async fn drive(
    store: &Store,
    first: tessera_server::store::sessions::TunnelStep,
    card: &FakeCard,
) -> tessera_server::store::sessions::TunnelStep {
    let mut step = first;
    while !step.done {
        let req = tessera_server::store::sessions::Exchange {
            step: step.step,
            responses: card.answer_all(&step.apdus),
        };
        step = store.exchange(&step.session_id, &req).await.unwrap();
    }
    step
}
