//! Key renewal (issue 4 "Benchmark"). Numbers, not tests: nothing here asserts a speed.
//!
//! 1. Card side, symmetric mode, M = N = 4: the time the card spends (inside
//!    `Card::transmit`, measured around each APDU) on one mutual authentication with the bottom
//!    pair plus the derivation of the session keys, and on renewing every renewable slot in one
//!    RENEW (form 07 from the root pair, six keys), beside the same number of raw AES-CMAC, KDF
//!    and key-check-value calls measured in the same run. On an in-memory card, then on a card
//!    image file (the commit to disk, reported separately).
//! 2. Server: keyring renewals per second with 100 cards syncing concurrently through the APDU
//!    tunnel (`Store::exchange`), each sync renewing the bottom pair, on SQLite and PostgreSQL.
//!
//! `cargo bench -p tessera-server --bench keyring` (PostgreSQL: the tests' private cluster,
//! started on first use; skipped with a notice when PostgreSQL is not installed).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{TestDb, root};
use tessera_apdu::{Command, Response};
use tessera_card::applets::isd::scenarios as isd;
use tessera_card::applets::keyring::scenarios::personalize_keyring;
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_crypto::kdf::{self, Label};
use tessera_crypto::keys::{AesKey, AesKeyLen};
use tessera_crypto::mac;
use tessera_crypto::rng::{OsRng, SeededRng};
use tessera_crypto::scp03::key_check_value;
use tessera_proto::keyring::{KeyringLink, Layout, LinkError, Mode, RenewForm};
use tessera_server::Store;
use tessera_server::keyring::{KeyringService, MemoryStore, RenewalPolicy};
use tessera_server::store::keyring::{KeyringLayout, KeyringMode, ReportCompromise};
use tessera_server::store::sessions::{CreateSession, Exchange};

struct Direct<'a>(&'a mut Card);

impl TearDriver for Direct<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

/// A link straight to the card that adds up the time spent inside the card.
struct Timed<'a> {
    card: &'a mut Card,
    in_card: Duration,
}

impl KeyringLink for Timed<'_> {
    fn exchange(&mut self, command: &Command) -> Result<Response, LinkError> {
        let bytes = command.to_bytes().map_err(|e| LinkError(e.to_string()))?;
        let start = Instant::now();
        let raw = self.card.transmit(&bytes);
        self.in_card += start.elapsed();
        Response::parse(&raw).ok_or_else(|| LinkError("short response".into()))
    }
}

const CARD_ID: &[u8] = isd::CARD_ID;

fn issued(card: &mut Card, svc: &mut KeyringService<MemoryStore>, layout: Layout) {
    let groups = svc.issue(CARD_ID, layout, 0).unwrap();
    card.power_on();
    let mut d = Direct(card);
    let mut s = Script::new(&mut d);
    isd::personalize(&mut s).unwrap();
    personalize_keyring(&mut s, &groups).unwrap();
    card.reset();
    let select = Command::new(0x00, 0xA4, 0x04, 0x00)
        .with_data(tessera_proto::keyring::AID.to_vec())
        .with_le(256);
    assert!(card.transmit(&select.to_bytes().unwrap()).ends_with(&[0x90, 0x00]));
}

/// The raw primitives: `cmacs` AES-CMACs over 128 bytes, `kdfs` KDF calls of 16 bytes,
/// `kcvs` key check values.
fn raw(key: &AesKey, cmacs: usize, kdfs: usize, kcvs: usize) {
    let msg = [0x5Au8; 128];
    for _ in 0..cmacs {
        black_box(mac::cmac(key, &[black_box(&msg)]));
    }
    let mut out = [0u8; 16];
    for _ in 0..kdfs {
        kdf::derive(key, Label::KEYRING_RENEWAL, black_box(&msg[..96]), &mut out).unwrap();
        black_box(&out);
    }
    for _ in 0..kcvs {
        black_box(key_check_value(black_box(key)));
    }
}

/// Median of `runs` timings.
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn card_side(label: &str, make: &mut dyn FnMut() -> Card) {
    const RUNS: usize = 200;
    let layout = Layout::new(Mode::Symmetric, 4, 4).unwrap();
    let key = AesKey::generate(AesKeyLen::Aes128, &mut OsRng);

    // One mutual authentication with the bottom pair + session keys (card: 3 CMAC, 3 KDF),
    // then the SCP03 opening with them (card: 1 CMAC, 5 KDF).
    let mut auth = Vec::new();
    let mut auth_scp = Vec::new();
    let mut renew = Vec::new();
    let mut card = make();
    let mut svc = KeyringService::new(
        MemoryStore::new(),
        RenewalPolicy::default(),
        Box::new(SeededRng::from_u64(1)),
    );
    issued(&mut card, &mut svc, layout);
    for _ in 0..RUNS {
        let mut link = Timed { card: &mut card, in_card: Duration::ZERO };
        let session = svc.open_session(CARD_ID, &mut link).unwrap();
        drop(session);
        auth_scp.push(link.in_card);
        // The first three APDUs only (IA, GET CHALLENGE, EA): time them alone.
        let mut link = Timed { card: &mut card, in_card: Duration::ZERO };
        let mut counted = Counted { inner: &mut link, left: 3 };
        let _ = svc.open_session(CARD_ID, &mut counted);
        auth.push(link.in_card);
        // Renew every renewable slot (form 07 from the root pair): card 3 CMAC, 12 KDF, 6 KCV.
        let mut link = Timed { card: &mut card, in_card: Duration::ZERO };
        svc.renew(CARD_ID, &mut link, RenewForm::BothFrom { internal: 2, external: 2 }, (1, 1), 1)
            .unwrap();
        renew.push(link.in_card);
    }
    let time = |f: &dyn Fn()| {
        let mut v = Vec::new();
        for _ in 0..RUNS {
            let s = Instant::now();
            f();
            v.push(s.elapsed());
        }
        median(v)
    };
    let raw_auth = time(&|| raw(&key, 3, 3, 0));
    let raw_auth_scp = time(&|| raw(&key, 4, 8, 0));
    let raw_renew = time(&|| raw(&key, 3, 12, 6));
    let row = |what: &str, card: Duration, raw: Duration| {
        println!(
            "  {what:<44} card {:>9.1} µs   raw primitives {:>8.1} µs   ratio {:>5.2}",
            card.as_secs_f64() * 1e6,
            raw.as_secs_f64() * 1e6,
            card.as_secs_f64() / raw.as_secs_f64()
        );
    };
    println!("card side, {label} (median of {RUNS}):");
    row("mutual auth + session keys (3 CMAC, 3 KDF)", median(auth), raw_auth);
    row("  + SCP03 opening (4 CMAC, 8 KDF)", median(auth_scp), raw_auth_scp);
    row("renew all slots, M=N=4 (3 CMAC, 12 KDF, 6 KCV)", median(renew), raw_renew);
}

/// Passes `left` exchanges through, then fails (stops a flow after its first APDUs).
struct Counted<'a, 'b> {
    inner: &'a mut Timed<'b>,
    left: usize,
}

impl KeyringLink for Counted<'_, '_> {
    fn exchange(&mut self, command: &Command) -> Result<Response, LinkError> {
        if self.left == 0 {
            return Err(LinkError("stop".into()));
        }
        self.left -= 1;
        self.inner.exchange(command)
    }
}

async fn server_side(db: TestDb, label: &str) {
    const CARDS: usize = 100;
    const ROUNDS: usize = 3;
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let layout =
        KeyringLayout { mode: KeyringMode::Symmetric, internal_slots: 3, external_slots: 3 };
    let mut cards = Vec::new();
    for i in 0..CARDS {
        let id = format!("CARD-{i:04}");
        store.register_card(&root(), "acme", &id).await.unwrap();
        let groups = store.issue_keyring(&root(), "acme", &id, &layout).await.unwrap();
        let mut card = Card::in_memory(CardOptions::default());
        card.power_on();
        let mut d = Direct(&mut card);
        let mut s = Script::new(&mut d);
        // The card id and the keyring, in one session with the initial keys.
        isd::open_initial(&mut s).unwrap();
        isd::store(&mut s, 0, true, &[(0x0101, id.as_bytes())]).unwrap();
        personalize_keyring(&mut s, &groups).unwrap();
        cards.push((id, card));
    }
    let mut renewals = 0usize;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        let mut handles = Vec::new();
        for (id, mut card) in std::mem::take(&mut cards) {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                let report = ReportCompromise { kind: "internal".into(), slot: 3 };
                store.keyring_compromised(&root(), "acme", &id, &report).await.unwrap();
                let outcome = sync(&store, &mut card).await;
                assert_eq!(outcome, "synced");
                (id, card)
            }));
        }
        for h in handles {
            cards.push(h.await.unwrap());
            renewals += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "server, {label}: {CARDS} cards concurrently, {renewals} syncs each renewing the bottom pair \
         in {secs:.1} s: {:.1} renewals/s",
        renewals as f64 / secs
    );
}

async fn sync(store: &Store, card: &mut Card) -> String {
    card.reset();
    let mut step = store.create_session("acme", &CreateSession::default()).await.unwrap();
    while !step.done {
        let responses = step
            .apdus
            .iter()
            .map(|a| hex::encode_upper(card.transmit(&hex::decode(a).unwrap())))
            .collect();
        step = store
            .exchange(&step.session_id, &Exchange { step: step.step, responses })
            .await
            .unwrap();
    }
    step.outcome.unwrap().result
}

fn main() {
    card_side("in-memory card", &mut || Card::in_memory(CardOptions::default()));
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    card_side("card image file (commit to disk)", &mut || {
        n += 1;
        let path = dir.path().join(format!("card{n}.img"));
        Card::create(&path, CardOptions::default()).unwrap()
    });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(server_side(TestDb::sqlite(), "SQLite"));
    if let Some(db) = rt.block_on(TestDb::postgres()) {
        rt.block_on(server_side(db, "PostgreSQL"));
    }
}
