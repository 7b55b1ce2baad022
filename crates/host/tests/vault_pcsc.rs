#![allow(clippy::unwrap_used)] // tests may unwrap

//! The vault flows against real parts: two virtual cards served at once to a private pcscd
//! through vpcd (slots 0 and 1), reached through PC/SC as a terminal reaches two readers.
//! Skipped with a notice when pcscd or vsmartcard-vpcd is missing; fails under `CI=true`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tessera_card::applets::vault::scenarios::{issuance_groups, issue, test_components};
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_crypto::rng::SeededRng;
use tessera_host::PcscChannel;
use tessera_host::pcscd::{self, Pcscd};
use tessera_host::vault::files::{self, CardIdentity, FileOutcome};
use tessera_host::vault::{VaultCard, backup};
use tessera_host::vpcd::{BridgeConfig, DEFAULT_PORT, SECOND_SLOT_PORT, VpcdBridge};
use tessera_proto::vault::{Config, KeyOrigin, Role};

const SLOT_0: &str = "Virtual PCD 00 00";
const SLOT_1: &str = "Virtual PCD 00 01";
const PIN: &[u8] = b"1234";

struct Direct<'a>(&'a mut Card);
impl TearDriver for Direct<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

/// An in-memory card with its ISD issued and its vault personalised (issuer: odd slots of 3).
fn vault_card(role: Role, seed: u64) -> Card {
    let mut card = Card::in_memory(CardOptions::default().rng(Box::new(SeededRng::from_u64(seed))));
    card.power_on();
    let comps = test_components(3);
    let groups =
        issuance_groups(Config::new(role, 3).unwrap(), &[(1, comps[0]), (3, comps[2])], None);
    issue(&mut Script::new(&mut Direct(&mut card)), &groups).unwrap();
    card.power_off();
    card
}

struct Served {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Served {
    fn start(port: u16, card: Card) -> Served {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let config = BridgeConfig { port, ..BridgeConfig::default() };
        let thread = std::thread::spawn(move || {
            let mut bridge = VpcdBridge::new(card, config);
            bridge.run(&flag).unwrap();
        });
        Served { stop, thread: Some(thread) }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_for(reader: &str) {
    assert!(
        pcscd::wait_until(Duration::from_secs(10), || pcscd::card_present(reader)),
        "no card in {reader}"
    );
}

fn start_pcscd() -> Option<Pcscd> {
    Pcscd::start_for_test(&[])
}

fn reader(name: &str) -> VaultCard<PcscChannel> {
    let mut v = VaultCard::select(PcscChannel::connect(Some(name)).unwrap()).unwrap();
    v.verify_pin(PIN).unwrap();
    v
}

#[test]
fn backup_decrypt_and_recovery_between_two_readers() {
    let Some(_daemon) = start_pcscd() else { return };
    let main = Served::start(DEFAULT_PORT, vault_card(Role::Main, 1));
    let backup_card = Served::start(SECOND_SLOT_PORT, vault_card(Role::Backup, 2));
    wait_for(SLOT_0);
    wait_for(SLOT_1);
    let holder = vec![(2u8, test_components(3)[1])];
    let (mut m, mut b) = (reader(SLOT_0), reader(SLOT_1));
    let report = backup::run(&mut m, &mut b, &holder).unwrap();
    assert!(report.steps.iter().any(|s| s == "main: backup confirmed"), "{report:?}");
    assert_eq!(b.status().unwrap().key, Some(KeyOrigin::Wrapped));
    let pk = m.public_key().unwrap();
    drop(m);
    drop(main); // the main card is lost

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.age");
    let plain = b"through two readers".repeat(100);
    let mut enc = Vec::new();
    files::encrypt(&[pk], plain.as_slice(), &mut enc).unwrap();
    std::fs::write(&path, enc).unwrap();
    let id = CardIdentity::new(b).unwrap();
    let mut out = Vec::new();
    files::decrypt(&id, std::fs::File::open(&path).unwrap(), &mut out).unwrap();
    assert_eq!(out, plain);

    // Recovery through PC/SC: TRANSCRYPT carries the header in an extended APDU.
    let new_key = tessera_crypto::ecdsa::SigningKey::generate(&mut SeededRng::from_u64(5));
    let new_pk = new_key.public_key().to_sec1_bytes();
    let mut b = id.into_card();
    let r = files::recover(&mut b, &new_pk, std::slice::from_ref(&path), 8, &mut |_| {}).unwrap();
    assert_eq!(r[0].outcome, FileOutcome::Recovered);
    // The new stanza opens with the new key (played here by a software key).
    let bytes = std::fs::read(&path).unwrap();
    let header = files::parse_header(&bytes).unwrap();
    let s = &header.stanzas[0];
    let (enc, body) = files::stanza_for(&s.tag, &s.args, &s.body, &new_key.public_key()).unwrap();
    let key = tessera_crypto::age::p256tag_open(
        &tessera_crypto::hpke::HpkePrivateKey::from_bytes(new_key.to_bytes().as_slice()).unwrap(),
        &tessera_crypto::age::P256TagStanza { enc, body },
    )
    .unwrap();
    tessera_crypto::age::verify_header_mac(&key, &bytes[..header.mac_input_len], &header.mac)
        .unwrap();
    drop(backup_card);
}
