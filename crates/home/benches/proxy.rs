//! The proxy's costs (issue 8 "Benchmark"). Numbers, not tests: nothing here asserts a speed.
//!
//! **Terminal side, per market session** (one `GET /whoami` to nginx, read to close_notify),
//! CPU time of the terminal's thread (`/proc/thread-self/schedstat`, on-CPU nanoseconds, user
//! and kernel) and bytes the terminal sends, three ways in the same run:
//!
//! - **direct**: the terminal runs the mutual-TLS handshake with nginx itself (rustls, ring,
//!   its client key in software: one ECDSA signature, ECDHE, the server's chain check).
//! - **handover**: the home server shakes hands (the home card signing) and hands the keys over;
//!   the terminal only encodes its `OpenMarket` frame, parses `HandedOver`, seals the request
//!   and opens the answer with `crypto::tls::record`, forwards the session tickets and sends
//!   close_notify. Everything it exchanges with the home server travels in control-channel
//!   frames (`proto::control`) inside TLS 1.3 AES-128-GCM records, which the terminal seals and
//!   opens here with the same record layer (what rustls does on the control channel), so their
//!   bytes and CPU are counted. The home server's work (handshake, relaying, ticket storage) runs
//!   in the same thread but outside the terminal's meter.
//! - **cache**: as handover, the home server resuming a cached session (no card signature).
//!
//! **Control channel**: the terminal's CPU and bytes for a control-channel set-up (TLS 1.3,
//! mutual authentication with the access card's key, pinned home certificate:
//! `control::tls::client_config` / `server_config`) and for a resumption (same configuration,
//! PSK ticket, no access-card signature); paid once per control connection, not per market
//! session.
//!
//! **Home server**: market handshakes per second, sequential, full (home card in software)
//! versus from the session cache; TLS 1.3 (each resumption also reads the market's new
//! tickets) and TLS 1.2.
//!
//! `cargo bench -p tessera-home --bench proxy` (`TESSERA_BENCH_N`, default 200 sessions per
//! measurement). Needs `/usr/sbin/nginx` (scripts/install-test-deps). Prints Markdown tables.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, ClientConnection, ServerConnection, StreamOwned};
use support::nginx::{self, Nginx};
use support::{Pki, localhost};
use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::rng::SeededRng;
use tessera_crypto::tls::record::{ContentType, RecordOpener, RecordSealer, Version};
use tessera_crypto::x509::{self, IssueRequest, Role, Validity};
use tessera_home::SoftwareKey;
use tessera_home::handover::{
    Event, KeyedConnection, MarketConfig, SessionCache, connect_market, handshake,
};
use tessera_home::registry::Registry;
use tessera_proto::control::{Frame, Mode};

const TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST: &[u8] = b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

/// On-CPU time of the calling thread, nanoseconds. The kernel brings a running thread's
/// counter up to date only when it passes through the scheduler, so yield first.
fn thread_cpu_ns() -> u64 {
    std::thread::yield_now();
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

/// Accumulates the calling thread's CPU time spent inside `run`, less the cost of reading
/// the clock itself (calibrated once).
#[derive(Default)]
struct Meter {
    ns: u64,
    sent: u64,
}

static OVERHEAD_NS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

fn overhead_ns() -> u64 {
    *OVERHEAD_NS.get_or_init(|| {
        (0..200)
            .map(|_| {
                let t0 = thread_cpu_ns();
                thread_cpu_ns() - t0
            })
            .min()
            .unwrap_or(0)
    })
}

impl Meter {
    fn run<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let overhead = overhead_ns();
        let t0 = thread_cpu_ns();
        let out = f();
        self.ns += (thread_cpu_ns() - t0).saturating_sub(overhead);
        out
    }
}

/// A stream that counts the bytes written to it.
struct Counting<S> {
    inner: S,
    sent: u64,
}

impl<S: Read> Read for Counting<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<S: Write> Write for Counting<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sent += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn sessions() -> usize {
    std::env::var("TESSERA_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
}

/// The direct session: the terminal's own mutual-TLS handshake and request.
fn direct(config: &Arc<ClientConfig>, addr: std::net::SocketAddr, m: &mut Meter) {
    let sent = m.run(|| {
        let tcp = Counting { inner: connect_market(addr, TIMEOUT).unwrap(), sent: 0 };
        let conn = ClientConnection::new(config.clone(), localhost()).unwrap();
        let mut tls = StreamOwned::new(conn, tcp);
        tls.write_all(REQUEST).unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer);
        assert!(answer.starts_with(b"HTTP/1.1 200"));
        tls.sock.sent
    });
    m.sent += sent;
}

/// Both ends of a simulated control channel: TLS 1.3 AES-128-GCM records.
struct Control {
    terminal_tx: RecordSealer,
    home_rx: RecordOpener,
    home_tx: RecordSealer,
    terminal_rx: RecordOpener,
}

impl Control {
    fn new() -> Control {
        let (k1, k2, iv) = ([1u8; 16], [2u8; 16], [3u8; 12]);
        Control {
            terminal_tx: RecordSealer::new(Version::Tls13, &k1, iv, 0).unwrap(),
            home_rx: RecordOpener::new(Version::Tls13, &k1, iv, 0).unwrap(),
            home_tx: RecordSealer::new(Version::Tls13, &k2, iv, 0).unwrap(),
            terminal_rx: RecordOpener::new(Version::Tls13, &k2, iv, 0).unwrap(),
        }
    }

    /// Terminal side: a frame sealed into a control record (its bytes counted).
    fn terminal_send(&mut self, frame: &Frame, m: &mut Meter) -> Vec<u8> {
        let record =
            self.terminal_tx.seal(ContentType::ApplicationData, &frame.encode().unwrap()).unwrap();
        m.sent += record.len() as u64;
        record
    }

    /// Terminal side: a control record opened and its frame parsed.
    fn terminal_receive(&mut self, record: &[u8]) -> Frame {
        let opened = self.terminal_rx.open(record).unwrap();
        Frame::parse(&opened.content[4..]).unwrap()
    }

    /// Home side (unmetered).
    fn home_send(&mut self, frame: &Frame) -> Vec<u8> {
        self.home_tx.seal(ContentType::ApplicationData, &frame.encode().unwrap()).unwrap()
    }

    fn home_receive(&mut self, record: &[u8]) -> Frame {
        let opened = self.home_rx.open(record).unwrap();
        Frame::parse(&opened.content[4..]).unwrap()
    }
}

/// A proxied session: the home server's handshake (unmetered), the terminal's side metered.
fn proxied(config: &Arc<ClientConfig>, addr: std::net::SocketAddr, m: &mut Meter) -> bool {
    let mut control = Control::new();
    let session = 1;
    let open = Frame::OpenMarket {
        session,
        host: "localhost".into(),
        port: addr.port(),
        mode: Mode::Handover,
        cache_allowed: true,
    };
    let record = m.run(|| control.terminal_send(&open, &mut Meter::default()));
    m.sent += record.len() as u64;
    // Home server: the open request, the handshake, the keys and any pending bytes.
    let _ = control.home_receive(&record);
    let mut tcp = connect_market(addr, TIMEOUT).unwrap();
    let mut h = handshake(&mut tcp, config.clone(), localhost()).unwrap();
    let resumed = h.resumed;
    let handed = control.home_send(&Frame::HandedOver { session, keys: h.keys.clone() });
    let pending = (!h.pending.is_empty())
        .then(|| control.home_send(&Frame::Data { session, bytes: h.pending.clone() }));

    let mut conn = m.run(|| {
        let Frame::HandedOver { keys, .. } = control.terminal_receive(&handed) else {
            panic!("expected HandedOver")
        };
        let mut conn = KeyedConnection::new(&keys).unwrap();
        if let Some(p) = &pending
            && let Frame::Data { bytes, .. } = control.terminal_receive(p)
        {
            conn.received(&bytes);
        }
        conn
    });
    // Terminal: the request, relayed by the home server to the market (the relay unmetered).
    let mut sent = 0u64;
    let record = m.run(|| {
        let records = conn.seal_data(REQUEST).unwrap();
        let mut c = Meter::default();
        let r = control.terminal_send(&Frame::Data { session, bytes: records }, &mut c);
        sent += c.sent;
        r
    });
    if let Frame::Data { bytes, .. } = control.home_receive(&record) {
        tcp.write_all(&bytes).unwrap();
    }
    let mut buf = vec![0u8; 32 * 1024];
    let mut answer = Vec::new();
    loop {
        // Home server: market bytes into a Data frame.
        let n = tcp.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        let relayed = control.home_send(&Frame::Data { session, bytes: buf[..n].to_vec() });
        let mut forwards = Vec::new();
        let mut closed = false;
        m.run(|| {
            if let Frame::Data { bytes, .. } = control.terminal_receive(&relayed) {
                conn.received(&bytes);
            }
            while let Some(event) = conn.next_event().unwrap() {
                match event {
                    Event::Data(d) => answer.extend(d),
                    Event::PostHandshake(msg) => {
                        let mut c = Meter::default();
                        forwards.push(
                            control.terminal_send(
                                &Frame::PostHandshake { session, bytes: msg },
                                &mut c,
                            ),
                        );
                        sent += c.sent;
                    }
                    Event::Closed => {
                        let record = conn.close_notify().unwrap();
                        let mut c = Meter::default();
                        let _ =
                            control.terminal_send(&Frame::Data { session, bytes: record }, &mut c);
                        sent += c.sent;
                        closed = true;
                        break;
                    }
                }
            }
        });
        // Home server: the forwarded tickets into the cache.
        for f in forwards {
            if let Frame::PostHandshake { bytes, .. } = control.home_receive(&f) {
                h.session.on_handshake_data(&bytes).unwrap();
            }
        }
        if closed {
            break;
        }
    }
    m.sent += sent;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    resumed
}

/// The home server alone: a handshake, then (TLS 1.3) the market's tickets into the cache.
fn home_handshake(config: &Arc<ClientConfig>, addr: std::net::SocketAddr, tls13: bool) -> bool {
    let mut tcp = connect_market(addr, TIMEOUT).unwrap();
    let mut h = handshake(&mut tcp, config.clone(), localhost()).unwrap();
    if tls13 {
        // The terminal's part of ticket delivery, done here to keep the cache filled.
        let mut conn = KeyedConnection::new(&h.keys).unwrap();
        conn.received(&h.pending);
        let mut buf = vec![0u8; 16 * 1024];
        let mut tickets = 0;
        while tickets == 0 {
            match conn.next_event().unwrap() {
                Some(Event::PostHandshake(m)) => {
                    tickets += h.session.on_handshake_data(&m).unwrap().len()
                }
                Some(_) => {}
                None => {
                    let n = tcp.read(&mut buf).unwrap();
                    assert!(n > 0);
                    conn.received(&buf[..n]);
                }
            }
        }
    }
    h.resumed
}

fn per_session(m: &Meter, n: usize) -> (f64, f64) {
    (m.ns as f64 / n as f64 / 1000.0, m.sent as f64 / n as f64)
}

fn terminal_table(pki: &Pki, nginx: &Nginx, tls13: bool, n: usize) {
    let card = pki.home_card();
    let direct_config =
        MarketConfig::new(pki.roots(), card.clone()).only(tls13).client_config().unwrap();
    let plain = MarketConfig::new(pki.roots(), card.clone()).only(tls13).client_config().unwrap();
    let cache = Arc::new(SessionCache::default());
    let cached = MarketConfig::new(pki.roots(), card.clone())
        .only(tls13)
        .with_cache(cache)
        .client_config()
        .unwrap();
    // Warm-up (and the first cached session).
    direct(&direct_config, nginx.addr, &mut Meter::default());
    proxied(&plain, nginx.addr, &mut Meter::default());
    proxied(&cached, nginx.addr, &mut Meter::default());

    let (mut d, mut p, mut c) = (Meter::default(), Meter::default(), Meter::default());
    let mut resumed = 0;
    for _ in 0..n {
        direct(&direct_config, nginx.addr, &mut d);
        assert!(!proxied(&plain, nginx.addr, &mut p));
        resumed += usize::from(proxied(&cached, nginx.addr, &mut c));
    }
    let version = if tls13 { "TLS 1.3" } else { "TLS 1.2" };
    let (dn, db) = per_session(&d, n);
    println!("\n### Terminal side per market session, {version}, nginx ({n} sessions each)\n");
    println!("| mode | CPU µs/session | ratio to direct | bytes sent/session |");
    println!("|---|---|---|---|");
    println!("| direct mutual-TLS handshake | {dn:.0} | 1.00 | {db:.0} |");
    for (name, m) in [("proxied, handover", &p), ("proxied, from the cache", &c)] {
        let (us, b) = per_session(m, n);
        println!("| {name} | {us:.0} | {:.3} | {b:.0} |", us / dn);
    }
    println!("\n(cache: {resumed} of {n} sessions resumed)");
}

fn home_table(pki: &Pki, n: usize) {
    println!("\n### Home server: market handshakes per second (sequential, nginx)\n");
    println!("| version | full (home card in software) | from the cache | ratio |");
    println!("|---|---|---|---|");
    for tls13 in [true, false] {
        let nginx = Nginx::start(pki, tls13);
        let card = pki.home_card();
        let plain =
            MarketConfig::new(pki.roots(), card.clone()).only(tls13).client_config().unwrap();
        let cache = Arc::new(SessionCache::default());
        let cached = MarketConfig::new(pki.roots(), card)
            .only(tls13)
            .with_cache(cache)
            .client_config()
            .unwrap();
        home_handshake(&plain, nginx.addr, tls13);
        home_handshake(&cached, nginx.addr, tls13);
        let t = Instant::now();
        for _ in 0..n {
            home_handshake(&plain, nginx.addr, tls13);
        }
        let full = n as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut resumed = 0;
        for _ in 0..n {
            resumed += usize::from(home_handshake(&cached, nginx.addr, tls13));
        }
        let from_cache = n as f64 / t.elapsed().as_secs_f64();
        assert_eq!(resumed, n, "every cached handshake resumed");
        let v = if tls13 { "TLS 1.3" } else { "TLS 1.2" };
        println!("| {v} | {full:.0}/s | {from_cache:.0}/s | {:.2} |", from_cache / full);
    }
}

/// The control channel: the terminal's CPU and bytes for a full set-up and a resumption.
fn control_table(n: usize) {
    let mut rng = SeededRng::from_seed([77; 32]);
    let validity = Validity { not_before: 1_600_000_000, not_after: 4_000_000_000 };
    let ca_key = SigningKey::generate(&mut rng);
    let ca = x509::self_signed_ca(&ca_key, "issuer", &[1], validity).unwrap();
    let issue = |cn: &str, role: Role, serial: u8, rng: &mut SeededRng| {
        let key = SigningKey::generate(rng);
        let cert = x509::issue(
            &ca_key,
            &ca,
            &IssueRequest {
                subject_cn: cn,
                public_key: &key.public_key(),
                roles: &[role],
                serial: &[serial],
                validity,
                ca_path_len: None,
            },
        )
        .unwrap();
        (key, cert)
    };
    let (home_key, home_cert) = issue("home server", Role::Home, 2, &mut rng);
    let (access_key, access_cert) = issue("access card", Role::Access, 3, &mut rng);
    let registry = Arc::new(Registry::in_memory().unwrap());
    registry.admit(access_cert.der(), "bench terminal", 1_700_000_000).unwrap();
    let server = tessera_home::control::tls::server_config(
        vec![CertificateDer::from(home_cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(home_key.to_pkcs8_der().unwrap().to_vec())),
        registry,
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let total = 2 * n + 2;
    let thread = std::thread::spawn(move || {
        for _ in 0..total {
            let (tcp, _) = listener.accept().unwrap();
            let mut tls = StreamOwned::new(ServerConnection::new(server.clone()).unwrap(), tcp);
            let mut b = [0u8; 16];
            if tls.read(&mut b).is_ok() {
                // An answer, so the client reads (and keeps) the tickets sent before it.
                let _ = tls.write_all(b"y");
                let _ = tls.read(&mut b);
            }
        }
    });
    let access: Arc<dyn tessera_home::ClientKey> = Arc::new(SoftwareKey::new(
        access_key,
        vec![CertificateDer::from(access_cert.der().to_vec())],
    ));
    let connect = |config: &Arc<ClientConfig>, m: &mut Meter| {
        let (resumed, sent) = m.run(|| {
            let tcp = Counting { inner: TcpStream::connect(addr).unwrap(), sent: 0 };
            let conn = ClientConnection::new(config.clone(), localhost()).unwrap();
            let mut tls = StreamOwned::new(conn, tcp);
            tls.write_all(b"x").unwrap();
            tls.flush().unwrap();
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).unwrap();
            let resumed = tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            tls.conn.send_close_notify();
            let _ = tls.conn.complete_io(&mut tls.sock);
            (resumed, tls.sock.sent)
        });
        m.sent += sent;
        resumed
    };
    let kept = tessera_home::control::tls::client_config(
        access.clone(),
        tessera_home::spki_sha256(home_cert.der()).unwrap(),
    )
    .unwrap();
    let (mut full, mut resumption) = (Meter::default(), Meter::default());
    connect(&kept, &mut Meter::default());
    let mut resumed = 0;
    for _ in 0..n {
        let fresh = tessera_home::control::tls::client_config(
            access.clone(),
            tessera_home::spki_sha256(home_cert.der()).unwrap(),
        )
        .unwrap();
        assert!(!connect(&fresh, &mut full));
        resumed += usize::from(connect(&kept, &mut resumption));
    }
    connect(&kept, &mut Meter::default());
    thread.join().unwrap();
    println!("\n### Control channel (terminal side, TLS 1.3, {n} connections each)\n");
    println!("| | CPU µs | bytes sent |");
    println!("|---|---|---|");
    let (us, b) = per_session(&full, n);
    println!("| set-up (full handshake, access card signs) | {us:.0} | {b:.0} |");
    let (us, b) = per_session(&resumption, n);
    println!("| resumption (PSK, no signature) | {us:.0} | {b:.0} |");
    println!("\n({resumed} of {n} reconnections resumed)");
}

fn main() {
    if !std::path::Path::new(nginx::NGINX).exists() {
        eprintln!("the proxy benchmark needs {} (scripts/install-test-deps)", nginx::NGINX);
        return;
    }
    let n = sessions();
    let pki = Pki::new(99);
    for tls13 in [true, false] {
        let nginx = Nginx::start(&pki, tls13);
        terminal_table(&pki, &nginx, tls13, n);
    }
    control_table(n);
    home_table(&pki, n);
}
