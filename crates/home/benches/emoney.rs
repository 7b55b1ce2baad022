//! E-money throughput (issue 9 "Benchmark"). Numbers, not tests: nothing here asserts a speed.
//!
//! **End to end**: payments per second with 10 concurrent terminals. Each terminal is one
//! user with a home server of its own (in-process `HomeServer`, its enrolled in-memory home
//! card behind the wallet, PIN2 sent once) and buys at one shared market (HTTPS, client
//! certificates, SQLite in memory). One payment is the whole flow from the terminal: order,
//! GET CHALLENGE, charge notice, PAY, token to the market, settlement: four market requests,
//! each a market session of the home server in handover mode (the first a full handshake with
//! the card signing, the rest from the session cache), and three wallet requests over the
//! control channel. Everything shares this machine's cores.
//!
//! **Home card in process**: the wallet commands on an in-memory card through the host's
//! typed client (APDUs through the card runtime, persistent state written per command): PAY
//! (the market's notice signed beforehand, outside the meter), CREDIT, READ LOG of 32 entries,
//! GET CHALLENGE.
//!
//! `cargo bench -p tessera-home --bench emoney` (`TESSERA_BENCH_N`: payments per terminal,
//! default 20; card operations, 10 times that). Prints Markdown tables.

#![allow(clippy::unwrap_used, missing_docs, dead_code)]

#[path = "../tests/emoney_support.rs"]
mod support;

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use support::*;
use tessera_crypto::x509::Role;
use tessera_home::SoftwareKey;
use tessera_home::emoney::https::ProxyTransport;
use tessera_home::emoney::wallet::{self, HomeWallet, RemoteWallet, WalletPort};
use tessera_home::handover::SessionCache;
use tessera_home::registry::Registry;
use tessera_home::server::{HomeServer, Identity, SoftwareHomeCard, StandardMarkets};
use tessera_home::terminal::Terminal;
use tessera_proto::control::Mode;
use tessera_proto::home::{ChargeNotice, RefillVoucher};
use tokio_rustls::rustls::pki_types::CertificateDer;

const TERMINALS: usize = 10;

fn n() -> usize {
    std::env::var("TESSERA_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}

/// A user's home server with `card` behind its wallet; the terminal that reaches it.
fn user(w: &World, i: usize, card: Session) -> (Terminal, tessera_home::server::Running) {
    let (key, cert) = w.ca.issue(&format!("user{i}"), Role::Home, &[]);
    let key = SoftwareKey::new(key, vec![CertificateDer::from(cert.der().to_vec())]);
    let home_card = Arc::new(SoftwareHomeCard::new(key, PIN2));
    let cache = Arc::new(SessionCache::default());
    let markets = Arc::new(StandardMarkets::new(w.ca.roots(), home_card.clone(), cache).unwrap());
    let identity = Identity::generate(now()).unwrap();
    let registry = Arc::new(Registry::in_memory().unwrap());
    let server = HomeServer::new(
        identity.server_config(registry.clone()).unwrap(),
        registry.clone(),
        home_card,
        markets,
    );
    let shared: Arc<Mutex<dyn WalletPort + Send>> = Arc::new(Mutex::new(card));
    server.set_wallet(Arc::new(HomeWallet::new(shared, None)).into_handler());
    let running = w.rt.block_on(server.spawn("127.0.0.1:0".parse().unwrap())).unwrap();
    let (access_key, access_cert) = w.ca.issue(&format!("phone{i}"), Role::Access, &[]);
    registry.admit(access_cert.der(), "phone", now()).unwrap();
    let access =
        SoftwareKey::new(access_key, vec![CertificateDer::from(access_cert.der().to_vec())]);
    let terminal =
        Terminal::new(Arc::new(access), identity.spki_sha256(), running.addr.to_string()).unwrap();
    (terminal, running)
}

fn end_to_end(n: usize) {
    let w = World::new();
    let market = w.market.party();
    let bank = w.bank.party();
    let mut users = Vec::new();
    for i in 0..TERMINALS {
        let mut card = home_card(
            &w.ca,
            &format!("CARD-{i}"),
            &[(&market.certificate, true), (&bank.certificate, false)],
        );
        w.bank.open_account(&format!("user{i}"), "alice", 10_000_000).unwrap();
        let mut b = w.bank_client();
        wallet::refill(&mut card, &mut b, &format!("user{i}"), 1_000_000).unwrap();
        users.push(user(&w, i, card));
    }
    let port = w.market_at.addr.port();
    let start = Instant::now();
    let threads: Vec<_> = users
        .iter()
        .map(|(terminal, _)| {
            let conn = terminal.connect().unwrap();
            std::thread::spawn(move || {
                let conn = RefCell::new(conn);
                conn.borrow_mut().pin2(PIN2).unwrap();
                let mut card = RemoteWallet::new(&conn);
                let mut shop = ProxyTransport::new(&conn, "localhost", port, Mode::Handover);
                for _ in 0..n {
                    wallet::purchase(&mut card, &mut shop, "tea", 1).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = start.elapsed();
    let total = n * TERMINALS;
    println!("### End to end: terminal → home card → market, {TERMINALS} concurrent terminals\n");
    println!("| payments | seconds | payments/s | ms per payment (one terminal's view) |");
    println!("|---|---|---|---|");
    println!(
        "| {total} | {:.2} | {:.1} | {:.1} |\n",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / n as f64
    );
}

fn per_second(label: &str, count: usize, seconds: f64) {
    println!(
        "| {label} | {count} | {:.1} | {:.3} |",
        count as f64 / seconds,
        seconds * 1000.0 / count as f64
    );
}

fn card_ops(n: usize) {
    let w = World::new();
    let market = w.ca.party("market.bench");
    let bank = w.ca.party("bank.bench");
    let mut card =
        home_card(&w.ca, "CARD-B", &[(&market.certificate, true), (&bank.certificate, false)]);
    println!("### Home card in process (host client → card runtime → home applet)\n");
    println!("| operation | count | per second | ms each |");
    println!("|---|---|---|---|");
    let vouchers: Vec<_> = (1..=n as u64)
        .map(|sequence| {
            bank.sign(RefillVoucher {
                bank: b"bank.bench".to_vec(),
                card: b"CARD-B".to_vec(),
                sequence,
                currency: *b"EUR",
                amount: 10_000,
                time: now(),
            })
        })
        .collect();
    let start = Instant::now();
    for v in &vouchers {
        card.credit(v).unwrap();
    }
    per_second("CREDIT", n, start.elapsed().as_secs_f64());

    let start = Instant::now();
    for _ in 0..n {
        card.challenge().unwrap();
    }
    per_second("GET CHALLENGE", n, start.elapsed().as_secs_f64());

    let mut paying = std::time::Duration::ZERO;
    for i in 0..n {
        let challenge = card.challenge().unwrap();
        let notice = market.sign(ChargeNotice {
            market: b"market.bench".to_vec(),
            order: format!("o-{i}").into_bytes(),
            currency: *b"EUR",
            amount: 100,
            time: now(),
            card: b"CARD-B".to_vec(),
            challenge,
        });
        let t = Instant::now();
        card.pay(&notice).unwrap();
        paying += t.elapsed();
    }
    per_second("PAY (notice signed outside the meter)", n, paying.as_secs_f64());

    let start = Instant::now();
    let reads = n / 10 + 1;
    for _ in 0..reads {
        let from = card.info().unwrap().next_counter.saturating_sub(32);
        assert_eq!(card.read_log(from).unwrap().len(), 32);
    }
    per_second("READ LOG (32 entries, with GET DATA)", reads, start.elapsed().as_secs_f64());
    println!();
}

fn main() {
    let n = n();
    end_to_end(n);
    card_ops(n * 10);
}
