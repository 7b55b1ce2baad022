#![allow(clippy::unwrap_used)] // tests may unwrap

//! THE tearing test: every tear scenario of every registered applet, power cut at every
//! storage operation, on both tearing models; the reopened image must hold a state that a
//! clean run made durable (for a single commit: exactly the state before or after).

use std::collections::BTreeSet;

use tessera_card::storage::{MemoryStorage, TearMode, TearingDisk};
use tessera_card::{Card, CardOptions, OpenOptions, PowerCut, TearDriver, TearError, TearScenario};
use tessera_crypto::passphrase::KdfCost;
use tessera_crypto::rng::SeededRng;

struct Driver {
    card: Card,
    disk: TearingDisk,
    cut_at: Option<u64>,
    armed_state: Option<Vec<u8>>,
}

impl TearDriver for Driver {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        let out = self.card.transmit(apdu);
        if self.disk.is_cut() { Err(PowerCut) } else { Ok(out) }
    }

    fn arm(&mut self) {
        self.armed_state = Some(self.card.persistent_state());
        self.disk.arm(self.cut_at);
    }
}

const PASSPHRASE: &str = "tear me";

fn state_of(platter: Vec<u8>, encrypted: bool) -> Vec<u8> {
    let options = if encrypted {
        OpenOptions::default().passphrase(PASSPHRASE)
    } else {
        OpenOptions::default()
    };
    Card::open_on(Box::new(MemoryStorage::from_bytes(platter)), options)
        .unwrap_or_else(|e| panic!("reopening after a cut: {e}"))
        .persistent_state()
}

struct Run {
    driver: Driver,
    result: Result<(), TearError>,
}

fn run(scenario: &TearScenario, cut_at: Option<u64>, mode: TearMode, encrypted: bool) -> Run {
    let disk = TearingDisk::new(Vec::new(), None, mode);
    let mut options = CardOptions::default().rng(Box::new(SeededRng::from_u64(42)));
    if encrypted {
        options = options.passphrase(PASSPHRASE).kdf_cost(KdfCost::TEST_ONLY);
    }
    let card = Card::create_on(Box::new(disk.storage()), options).unwrap();
    let mut driver = Driver { card, disk, cut_at, armed_state: None };
    driver.card.power_on();
    let result = (scenario.script)(&mut driver);
    Run { driver, result }
}

#[test]
fn every_state_changing_command_is_atomic_under_power_cuts() {
    let scenarios = tessera_card::applets::tear_scenarios();
    assert!(scenarios.len() >= 12, "the ISD's scenarios are registered");
    // (tear model, image encrypted at rest)
    let modes = [
        (TearMode::DropUnflushed, false),
        (TearMode::ReorderUnflushed { seed: 1 }, false),
        (TearMode::ReorderUnflushed { seed: 0xDEAD_BEEF }, false),
        (TearMode::ReorderUnflushed { seed: 7 }, true),
    ];
    let mut cuts = 0;
    for (applet, scenario) in &scenarios {
        for encrypted in [false, true] {
            let clean = run(scenario, None, TearMode::DropUnflushed, encrypted);
            if let Err(e) = &clean.result {
                panic!("{applet}: {}: clean run failed: {e:?}", scenario.name);
            }
            let before = clean.driver.armed_state.clone().expect("scenario calls arm");
            let after = clean.driver.card.persistent_state();
            assert_ne!(before, after, "{applet}: {}: the scenario changes state", scenario.name);
            // Every state the clean run made durable after arming (a command may commit twice,
            // e.g. a PIN counter before the comparison, then its reset).
            let mut durable: BTreeSet<Vec<u8>> =
                clean.driver.disk.snapshots().into_iter().map(|p| state_of(p, encrypted)).collect();
            durable.insert(before.clone());
            assert!(durable.contains(&after));
            let ops = clean.driver.disk.operations();
            assert!(ops > 0);

            for (mode, _) in modes.iter().filter(|(_, e)| *e == encrypted) {
                let mode = *mode;
                let mut k = 1;
                loop {
                    let torn = run(scenario, Some(k), mode, encrypted);
                    let what = format!(
                        "{applet}: {}: {mode:?}, encrypted {encrypted}, cut at operation {k}",
                        scenario.name
                    );
                    if !torn.driver.disk.is_cut() {
                        assert_eq!(torn.result, Ok(()), "{what}");
                        assert_eq!(
                            torn.driver.card.persistent_state(),
                            after,
                            "{what}: uncut run differs"
                        );
                        assert_eq!(
                            k,
                            ops + 1,
                            "{what}: the uncut run did as many operations as the clean one"
                        );
                        break;
                    }
                    assert_eq!(torn.result, Err(TearError::Cut), "{what}");
                    let state = state_of(torn.driver.disk.platter(), encrypted);
                    assert!(
                        durable.contains(&state),
                        "{what}: the image holds a state no clean run committed"
                    );
                    if durable.len() == 2 {
                        assert!(state == before || state == after, "{what}");
                    }
                    cuts += 1;
                    k += 1;
                }
            }
        }
    }
    eprintln!(
        "{} scenarios, {cuts} power cuts, every one left an all-or-nothing image",
        scenarios.len()
    );
    assert!(cuts > 100, "only {cuts} cuts were exercised");
}
