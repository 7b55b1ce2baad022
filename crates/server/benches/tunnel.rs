//! Tunnel sessions per second (issue 3 "Benchmark"). Numbers, not tests: nothing here asserts
//! a speed.
//!
//! A *complete tunnel session* is the shortest one the server runs for an issued card:
//! `create_session` (card id given), the identification exchange (SELECT + GET DATA card id)
//! and the counter exchange (GET DATA key information), after which the session is done and
//! closed in the database. The card is an in-process virtual card (`Card::in_memory`) issued
//! through the server beforehand; each of 1, 10 or 100 concurrent workers owns one card and
//! runs sessions back to back through `Store::create_session` / `Store::exchange` (the store
//! layer the HTTP handlers call; no HTTP or TLS in the loop).
//!
//! Three stores, measured in the same run, one after the other for each concurrency:
//!
//! - **memory**: the same `Store` over an in-memory SQLite database (`:memory:`; one
//!   connection, so one shared database). The server's store is SQL over one `Db` handle, not
//!   a trait, so this is the in-memory backend: the same SQL and transactions, no disk, no
//!   fsync, no network. It is the baseline the others are compared with.
//! - **sqlite**: the default, a file in a temporary directory (WAL, `synchronous=FULL`).
//! - **postgres**: the tests' private cluster (started on first use; skipped with a notice when
//!   PostgreSQL is not installed).
//!
//! `cargo bench -p tessera-server --bench tunnel` (`TESSERA_BENCH_SECONDS`, default 3, per
//! measurement). Prints a Markdown table: sessions/s, p50 and p99 latency, and the ratio to the
//! in-memory store at the same concurrency.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{TestDb, root, test_master_key};
use tessera_card::{Card, CardOptions};
use tessera_server::db::{Db, DbLocation};
use tessera_server::store::issuance::StartIssuance;
use tessera_server::store::sessions::{CreateSession, Exchange, TunnelStep};
use tessera_server::{Store, StoreConfig};

const ISSUER: &str = "bench";
const LEVELS: [usize; 3] = [1, 10, 100];

fn relay(card: &mut Card, step: &TunnelStep) -> Vec<String> {
    step.apdus.iter().map(|a| hex::encode_upper(card.transmit(&hex::decode(a).unwrap()))).collect()
}

/// Runs one session to the end; panics on anything but `identified`.
async fn session(store: &Store, card: &mut Card, card_id: &str) {
    let create = CreateSession { card_id: Some(card_id.to_owned()) };
    let mut step = store.create_session(ISSUER, &create).await.unwrap();
    while !step.done {
        let req = Exchange { step: step.step, responses: relay(card, &step) };
        step = store.exchange(&step.session_id, &req).await.unwrap();
    }
    let outcome = step.outcome.unwrap();
    assert_eq!(outcome.result, "identified", "{outcome:?}");
}

/// An issuer and `n` cards issued through the store, each on its own virtual card.
async fn issue_cards(store: &Store, n: usize) -> Vec<(String, Card)> {
    store.create_issuer(&root(), ISSUER, "Bench").await.unwrap();
    let mut cards = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("B-{i:04}");
        let issuance = store
            .start_issuance(
                &root(),
                ISSUER,
                &StartIssuance { card_id: id.clone(), legacy_static_auth: false },
            )
            .await
            .unwrap();
        let mut card = Card::in_memory(CardOptions::default());
        card.power_on();
        let mut step = issuance.session;
        while !step.done {
            let req = Exchange { step: step.step, responses: relay(&mut card, &step) };
            step = store.exchange(&step.session_id, &req).await.unwrap();
        }
        card.reset();
        cards.push((id, card));
    }
    cards
}

struct Measured {
    sessions: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.sessions as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        l[i]
    }
}

/// `workers` tasks, each with its own card, running sessions for `seconds`.
async fn measure(
    store: &Store,
    cards: &mut Vec<(String, Card)>,
    workers: usize,
    seconds: f64,
) -> Measured {
    let deadline = Duration::from_secs_f64(seconds);
    let mine: Vec<(String, Card)> = cards.drain(..workers).collect();
    let start = Instant::now();
    let tasks: Vec<_> = mine
        .into_iter()
        .map(|(id, mut card)| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while start.elapsed() < deadline {
                    let t = Instant::now();
                    session(&store, &mut card, &id).await;
                    latencies.push(t.elapsed());
                }
                (id, card, latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        let (id, card, l) = t.await.unwrap();
        latencies.extend(l);
        cards.push((id, card));
    }
    let elapsed = start.elapsed();
    Measured { sessions: latencies.len(), elapsed, latencies }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: f64 =
        std::env::var("TESSERA_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let max = *LEVELS.iter().max().unwrap();

    let memory = Store::open(
        Db::open(&DbLocation::Sqlite(":memory:".into())).await.unwrap(),
        test_master_key(),
        StoreConfig::default(),
    )
    .await
    .unwrap();
    let sqlite_db = TestDb::sqlite();
    let sqlite = sqlite_db.store().await;
    let pg_db = TestDb::postgres().await;
    let mut stores: Vec<(&str, Store)> = vec![("memory", memory), ("sqlite", sqlite)];
    match &pg_db {
        Some(db) => stores.push(("postgres", db.store().await)),
        None => eprintln!("NOTICE: PostgreSQL is not installed; measuring memory and SQLite only"),
    }
    let mut cards = Vec::new();
    for (name, store) in &stores {
        eprintln!("issuing {max} cards on {name}...");
        cards.push(issue_cards(store, max).await);
    }

    println!("| store | concurrent cards | sessions | sessions/s | p50 ms | p99 ms | / memory |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for workers in LEVELS {
        let mut baseline = None;
        for ((name, store), cards) in stores.iter().zip(cards.iter_mut()) {
            // Warm-up (prepared statements, connection pool), then the measurement.
            measure(store, cards, workers, seconds.min(0.5)).await;
            let m = measure(store, cards, workers, seconds).await;
            let base = *baseline.get_or_insert(m.rate());
            println!(
                "| {name} | {workers} | {} | {:.0} | {} | {} | {:.2} |",
                m.sessions,
                m.rate(),
                ms(m.percentile(0.50)),
                ms(m.percentile(0.99)),
                m.rate() / base
            );
        }
    }
}
