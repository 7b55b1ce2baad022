//! Complete update sessions per second (issue 5 "Benchmark"). Numbers, not tests: nothing here
//! asserts a speed. Release build only, not part of CI:
//!
//! ```text
//! cargo bench -p tessera-server --bench update     # TESSERA_BENCH_ROUNDS (default 3)
//! TESSERA_BENCH_HTTP=1 TESSERA_BENCH_DB=sqlite cargo bench -p tessera-server --bench update
//! ```
//!
//! Two processes. The **server** is this binary re-executed with `--serve DIR [DB]`: it runs
//! `tessera_server::server::start`, what `tessera server` runs (HTTPS with a generated
//! certificate, the data directory's master key), on SQLite (a file in DIR) or on PostgreSQL
//! (the tests' private cluster, `scripts/postgres`), with the per-address rate limit raised
//! (every virtual card comes from 127.0.0.1). The **load** is this process: 100 and 1,000
//! in-process virtual cards (`Card::in_memory`), issued through the server beforehand, each
//! a terminal of its own (its own HTTPS connections, as `tessera sync` makes them).
//!
//! A *complete update session* is what a sync does for a card with one 1 KiB update pending:
//! VERIFY PIN on the card, open a tunnel session, the identification and counter exchanges,
//! DEVICE AUTHENTICATE (the whole chain: challenge, device certificate chain, signature,
//! rollback check), the package (one batch) and its receipt, the session closed. The load's
//! terminals run it two ways, taking turns round by round, so that each row pair is a
//! before/after in the same run, both on one kept-alive connection per session: device
//! authentication in a step of its own (`ApiClient::sync_with` without
//! `SessionOptions::device_auth`: open with the identification and counter APDUs, then
//! device authentication, then the package: four HTTPS requests), and the combined first step
//! (`ApiClient::sync`: SELECT update and DEVICE AUTHENTICATE go out with the identification
//! and counters: three requests). Each round queues one 1 KiB update per card through the
//! admin API (not counted), then runs every card's session at once; sessions/s = cards /
//! wall time.
//!
//! Beside it, in the same run, the server's **crypto floor** for one session, measured alone
//! in this process: the device certificate's chain check, the device-authentication
//! signature and the receipt signature (three P-256 ECDSA verifications with the same code the
//! server runs), in CPU time of the measuring thread, the best of three runs, measured before
//! the rounds and after each level (the lowest so far counts). The server's CPU per session (user + system time of the server process over
//! the round, from `/proc`) is printed against it: the ratio is what the issue's target
//! (at most 2x) is about. TLS handshakes, JSON, SQL and the tunnel's
//! bookkeeping are all in the server's CPU; only the update step's own checks are in the
//! floor. (`ApiClient::sync` posts again after a busy `503` itself.)

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::json;
use tessera_card::{Card, CardOptions};
use tessera_crypto::device::{self, Purpose};
use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::rng::OsRng;
use tessera_crypto::x509::{self, IssueRequest, Role, Validity};
use tessera_proto::update::{Challenge, DeviceAuthResponse, Outcome, Receipt};

use tessera_server::client::ApiClient;
use tessera_server::store::sessions::SessionOptions;

const ISSUER: &str = "bench";
const LEVELS: [usize; 2] = [100, 1000];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        serve(&args[2], args.get(3).cloned());
        return;
    }
    let rounds: usize =
        std::env::var("TESSERA_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(load(rounds));
}

/// `TESSERA_BENCH_HTTP=1`: plain HTTP (`tessera server --no-tls`), to see what TLS costs.
fn plain_http() -> bool {
    std::env::var("TESSERA_BENCH_HTTP").is_ok_and(|v| v == "1")
}

/// `TESSERA_BENCH_DB=sqlite|postgres`: one database only (default both).
fn only_db() -> Option<String> {
    std::env::var("TESSERA_BENCH_DB").ok().filter(|v| !v.is_empty())
}

/// The server process: `tessera server` with the rate limit raised.
fn serve(data: &str, db: Option<String>) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut opts = tessera_server::server::ServerOptions::new(data);
        opts.listen = "127.0.0.1:0".parse().unwrap();
        opts.db = db.as_deref().map(tessera_server::db::DbLocation::parse);
        if plain_http() {
            opts.tls = tessera_server::server::TlsMode::Disabled;
        }
        opts.limits.rate_per_sec = 1e9;
        opts.limits.burst = 1e9;
        let running = tessera_server::server::start(opts, std::future::pending()).await.unwrap();
        let scheme = if plain_http() { "http" } else { "https" };
        println!("listening on {scheme}://{}", running.addr);
        println!("fingerprint: {}", running.fingerprint.clone().unwrap_or_default());
        println!("token: {}", running.bootstrap_token.clone().unwrap());
        running.wait().await.unwrap();
    });
}

/// The server process, killed when dropped.
struct Server {
    child: Child,
    url: String,
    fingerprint: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn spawn(db: Option<&str>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.arg("--serve").arg(dir.path());
        if let Some(db) = db {
            cmd.arg(db);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut after = |prefix: &str| {
            let line = lines.next().expect("server output ended").unwrap();
            line.strip_prefix(prefix).expect("server output").trim().to_owned()
        };
        let url = after("listening on ");
        let fingerprint = after("fingerprint: ");
        let token = after("token: ");
        Server { child, url, fingerprint, token, _dir: dir }
    }

    fn client(&self, token: bool) -> ApiClient {
        let token = token.then(|| self.token.clone());
        let fingerprint = Some(self.fingerprint.as_str()).filter(|f| !f.is_empty());
        ApiClient::new(&self.url, fingerprint, token).unwrap()
    }

    /// User + system CPU time of the server process so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name (which ends with ')'): utime and stime are 14 and 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / clock_ticks())
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A virtual card with its id and PIN.
struct VirtualCard {
    id: String,
    pin: String,
    card: Card,
}

/// The card's answer to one APDU.
fn transmit(card: &mut Card, apdu: &[u8]) -> Result<Vec<u8>, String> {
    Ok(card.transmit(apdu))
}

/// Issues `n` cards through the server (8 at a time).
async fn issue_cards(server: &Server, n: usize) -> Vec<VirtualCard> {
    let admin = Arc::new(server.client(true));
    let mut cards = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(8) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let admin = admin.clone();
                tokio::spawn(async move {
                    let id = format!("U-{i:04}");
                    let issuance = admin.start_issuance(ISSUER, &id).await.unwrap();
                    let mut card = Card::in_memory(CardOptions::default());
                    card.power_on();
                    let last = admin
                        .relay(issuance.session.clone(), |a| transmit(&mut card, a))
                        .await
                        .unwrap();
                    assert_eq!(last.outcome.unwrap().result, "issued");
                    VirtualCard { id, pin: issuance.initial_pin, card }
                })
            })
            .collect();
        for t in tasks {
            cards.push(t.await.unwrap());
        }
    }
    cards
}

/// VERIFY PIN on the card (the terminal's part before the session).
fn verify_pin(card: &mut VirtualCard) {
    use tessera_apdu::Command as Apdu;
    card.card.reset();
    let select = Apdu::new(0x00, 0xA4, 0x04, 0x00)
        .with_data(tessera_server::tunnel::ISD_AID.to_vec())
        .with_le(256);
    card.card.transmit(&select.to_bytes().unwrap());
    let mut block = card.pin.as_bytes().to_vec();
    block.resize(8, 0xFF);
    let r =
        card.card.transmit(&Apdu::new(0x00, 0x20, 0x00, 0x81).with_data(block).to_bytes().unwrap());
    assert_eq!(r, [0x90, 0x00]);
}

/// How the load process's terminal runs a session.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// `ApiClient::sync_with` without the combined first step: the counters read with the
    /// identification, device authentication in a step of its own: four HTTPS requests on one
    /// connection (the way before the combined first step).
    Steps,
    /// `ApiClient::sync`: SELECT update and DEVICE AUTHENTICATE in the first step too (the
    /// combined first step): three HTTPS requests on one connection.
    Combined,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Steps => "sync, device authentication a step of its own (4 requests)",
            Mode::Combined => "sync, combined first step (3 requests)",
        }
    }
}

/// One complete update session for `card`; panics unless one update was delivered.
async fn session(client: &ApiClient, card: &mut VirtualCard, mode: Mode) {
    verify_pin(card);
    let last = match mode {
        Mode::Steps => {
            let options = SessionOptions { read_counters: true, device_auth: false };
            client.sync_with(ISSUER, &card.id, options, |a| transmit(&mut card.card, a)).await
        }
        Mode::Combined => client.sync(ISSUER, &card.id, |a| transmit(&mut card.card, a)).await,
    }
    .unwrap();
    let outcome = last.outcome.unwrap();
    assert!(outcome.message.ends_with("updates: 1 delivered"), "{outcome:?}");
}

/// One round for `cards`: queue 1 KiB each (not counted), then every session at once.
/// Returns the wall time and the server's CPU time of the sessions.
async fn round(
    server: &Server,
    cards: Vec<VirtualCard>,
    mode: Mode,
) -> (Vec<VirtualCard>, Duration, Duration) {
    let admin = Arc::new(server.client(true));
    let value = hex::encode([0x5A; 1024]);
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let queued: Vec<_> = cards
        .iter()
        .map(|c| {
            let (admin, gate, value) = (admin.clone(), gate.clone(), value.clone());
            let path = format!("/v1/admin/issuers/{ISSUER}/cards/{}/updates", c.id);
            tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let body = json!({"object": "wifi", "value_hex": value});
                let (status, v) = admin.request(Method::POST, &path, Some(&body)).await.unwrap();
                assert!(status.is_success(), "{v}");
            })
        })
        .collect();
    for q in queued {
        q.await.unwrap();
    }
    let cpu = server.cpu();
    let start = Instant::now();
    let tasks: Vec<_> = cards
        .into_iter()
        .map(|mut card| {
            let client = server.client(false);
            tokio::spawn(async move {
                session(&client, &mut card, mode).await;
                card
            })
        })
        .collect();
    let mut back = Vec::with_capacity(tasks.len());
    for t in tasks {
        back.push(t.await.unwrap());
    }
    let wall = start.elapsed();
    (back, wall, server.cpu().saturating_sub(cpu))
}

/// The server's own crypto for one session, alone: the device certificate's chain check, the
/// device-authentication signature, the receipt signature (P-256 ECDSA verifications, the
/// server's code: `device_key`, `verify_device_auth`, `verify_receipt`).
fn crypto_floor(iterations: u32) -> Duration {
    let mut rng = OsRng;
    let now = 1_800_000_000;
    let validity = Validity { not_before: now - 3600, not_after: now + 86_400 };
    let ca_key = SigningKey::generate(&mut rng);
    let ca = x509::self_signed_ca(&ca_key, "Bench CA", &[1; 16], validity).unwrap();
    let card_id = b"U-0000";
    let device_key = SigningKey::generate(&mut rng);
    let device_public = device_key.public_key();
    let req = IssueRequest {
        subject_cn: "U-0000",
        public_key: &device_public,
        roles: &[Role::Device],
        serial: &[2; 16],
        validity,
        ca_path_len: None,
    };
    let cert = x509::issue(&ca_key, &ca, &req).unwrap();
    let challenge = Challenge { nonce: [7; 32], expires: (now + 120) as u64 };
    let auth = DeviceAuthResponse {
        last_sequence: 1,
        signature: device::sign(
            &device_key,
            Purpose::DeviceAuthentication,
            card_id,
            &tessera_proto::update::auth_body(&challenge, 1),
        )
        .unwrap()
        .to_bytes(),
    };
    let digest = [9; 32];
    let receipt = Receipt {
        outcome: Outcome::Applied,
        sequence: 2,
        digest,
        signature: device::sign(
            &device_key,
            Purpose::DeviceAuthentication,
            card_id,
            &Receipt::body(2, &digest),
        )
        .unwrap()
        .to_bytes(),
    };
    // CPU time of this thread (other processes share the cores), the best of three runs.
    (0..3)
        .map(|_| {
            let start = thread_cpu();
            for _ in 0..iterations {
                let key = tessera_server::update::device_key(&ca, card_id, &cert, now).unwrap();
                tessera_server::update::verify_device_auth(&key, card_id, &challenge, &auth)
                    .unwrap();
                tessera_server::update::verify_receipt(&cert, card_id, &receipt).unwrap();
            }
            (thread_cpu() - start) / iterations
        })
        .min()
        .unwrap()
}

/// CPU time of the calling thread (`/proc/thread-self/schedstat`: nanoseconds on a CPU).
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    Duration::from_nanos(text.split_whitespace().next().unwrap().parse().unwrap())
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

async fn load(rounds: usize) {
    let max = *LEVELS.iter().max().unwrap();
    // Measured before anything runs, and again after each level; the lowest counts (the
    // cores' other load slows the measuring thread too, which would flatter the ratio).
    let mut floor = crypto_floor(300);
    let pg = common::cluster_url();
    let mut backends: Vec<(&str, Option<String>)> = vec![("sqlite", None)];
    // The database made for this run, dropped at its end.
    let mut made = None;
    match &pg {
        Some(url) => {
            let name =
                format!("bench_{}", hex::encode(tessera_server::primitives::random_bytes::<6>()));
            let (client, conn) =
                tokio_postgres::connect(&format!("{url}/postgres"), tokio_postgres::NoTls)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
            backends.push(("postgres", Some(format!("{url}/{name}"))));
            made = Some((client, name));
        }
        None => eprintln!("NOTICE: PostgreSQL is not installed; measuring SQLite only"),
    }
    println!(
        "| database | terminal | concurrent cards | sessions | sessions/s | server CPU ms/session | crypto floor ms/session | CPU / floor |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    if let Some(only) = only_db() {
        backends.retain(|(name, _)| *name == only);
    }
    for (name, db) in &backends {
        let server = Server::spawn(db.as_deref());
        let admin = server.client(true);
        let (status, v) = admin
            .request(
                Method::POST,
                "/v1/admin/issuers",
                Some(&json!({"id": ISSUER, "name": "Bench"})),
            )
            .await
            .unwrap();
        assert!(status.is_success(), "{v}");
        eprintln!("{name}: issuing {max} cards...");
        let mut cards = issue_cards(&server, max).await;
        for n in LEVELS {
            let mut rest = cards.split_off(n);
            let mut mine = cards;
            // Warm-up round, then the measured rounds, the two modes taking turns so that the
            // machine's other load falls on both alike.
            (mine, _, _) = round(&server, mine, Mode::Steps).await;
            (mine, _, _) = round(&server, mine, Mode::Combined).await;
            let mut totals = [(Duration::ZERO, Duration::ZERO); 2];
            for _ in 0..rounds {
                for (i, mode) in [Mode::Steps, Mode::Combined].into_iter().enumerate() {
                    let (back, w, c) = round(&server, mine, mode).await;
                    mine = back;
                    totals[i].0 += w;
                    totals[i].1 += c;
                }
            }
            floor = floor.min(crypto_floor(300));
            let sessions = n * rounds;
            for (mode, (wall, cpu)) in [Mode::Steps, Mode::Combined].into_iter().zip(totals) {
                let per_session = cpu / sessions as u32;
                println!(
                    "| {name} | {} | {n} | {sessions} | {:.0} | {} | {} | {:.1} |",
                    mode.label(),
                    sessions as f64 / wall.as_secs_f64(),
                    ms(per_session),
                    ms(floor),
                    per_session.as_secs_f64() / floor.as_secs_f64(),
                );
            }
            mine.append(&mut rest);
            cards = mine;
        }
    }
    if let Some((client, name)) = made {
        client.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)")).await.unwrap();
    }
}
