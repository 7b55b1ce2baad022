//! The secure terminal through a real pcscd: a card image (issued and enrolled in process) is
//! served into vpcd's first slot; the terminal pairs with it over `PcscChannel` (extended APDUs
//! for the certificates), uses a service at level 33, and authenticates alone at the next
//! connection. Skipped with a notice when pcscd or the vpcd driver is missing (fails under
//! `CI=true`), like `tests/pcscd.rs`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tessera_card::applets::isd::scenarios as isd;
use tessera_card::pin::PinBlock;
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, OpenOptions, PowerCut, TearDriver};
use tessera_host::pairing::ca::LocalCa;
use tessera_host::pairing::enrol::{enrol_card, enrol_terminal};
use tessera_host::pairing::files::PairingStore;
use tessera_host::pairing::service::LedgerProvider;
use tessera_host::pairing::terminal::{Connection, Terminal, connect};
use tessera_host::pcscd::{self, Pcscd};
use tessera_host::vpcd::{BridgeConfig, DEFAULT_PORT, VpcdBridge};
use tessera_host::{InProcessChannel, PcscChannel};

const SLOT_0: &str = "Virtual PCD 00 00";

struct Plain<'a>(&'a mut Card);

impl TearDriver for Plain<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

#[test]
fn pairing_and_a_service_through_pcscd() {
    let Some(_daemon) = Pcscd::start_for_test(&[]) else { return };
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("card.img");
    let pin = PinBlock::from_value(isd::PIN).unwrap();
    let mut ca = LocalCa::in_memory("pcscd CA").unwrap();
    {
        let mut card = Card::create(&image, CardOptions::default()).unwrap();
        card.power_on();
        isd::personalize(&mut Script::new(&mut Plain(&mut card))).unwrap();
        let mut channel = InProcessChannel::new(card);
        enrol_card(&mut channel, &mut ca, &pin, "card").unwrap();
    }
    let terminal = Terminal::new(enrol_terminal(&mut ca, "terminal").unwrap());

    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let served = std::thread::spawn(move || {
        let card = Card::open(&image, OpenOptions::default()).unwrap();
        let mut bridge =
            VpcdBridge::new(card, BridgeConfig { port: DEFAULT_PORT, ..Default::default() });
        bridge.run(&flag).unwrap();
    });
    assert!(
        pcscd::wait_until(Duration::from_secs(15), || pcscd::card_present(SLOT_0)),
        "timed out waiting for the card in slot 0"
    );

    let mut store = PairingStore::in_memory();
    let channel = PcscChannel::connect(Some(SLOT_0)).unwrap();
    let (mut session, how) =
        connect(&terminal, channel, &mut store, &mut || Ok(pin.clone())).unwrap();
    assert_eq!(how, Connection::Repaired);
    assert_eq!(session.invoke(&LedgerProvider::credit(42)).unwrap(), 42u64.to_be_bytes());
    drop(session);

    let channel = PcscChannel::connect(Some(SLOT_0)).unwrap();
    let (mut session, how) =
        connect(&terminal, channel, &mut store, &mut || panic!("no PIN is needed once paired"))
            .unwrap();
    assert_eq!(how, Connection::Authenticated);
    assert_eq!(session.invoke(&LedgerProvider::balance()).unwrap(), 42u64.to_be_bytes());
    drop(session);

    stop.store(true, Ordering::Relaxed);
    served.join().unwrap();
}
