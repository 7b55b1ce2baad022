#![allow(clippy::unwrap_used)] // tests may unwrap

//! Hostile input for every registered applet: "bad input gets a clear error and changes
//! nothing" (DESIGN.md section 4).
//!
//! The test iterates the applet registry, so a new applet joins by registering. For each
//! applet it prepares several states: fresh (blank card, applet selected), and for each of
//! the applet's tear scenarios the state at the scenario's `arm` (personalised, PIN verified,
//! mid-session, ... with the volatile state the setup left: sessions, verified PINs, the
//! selection), one command later, and after the whole scenario. The prepared state is reached
//! by running the scenario script on a driver that stops it (a pretend power cut that does
//! not touch the card) after a chosen number of commands past `arm`.
//!
//! Into each state, proptest sends sequences of hostile commands: random bytes, and commands
//! made *near-valid* from the APDUs the applet's own scenarios send (their CLA/INS with random
//! P1/P2/Lc/data/Le, truncated and overlong data, extended encodings, command chains, the
//! secure-messaging bit toggled, random bytes after a valid prefix, flipped data bytes). For
//! every answer: nothing panics; it ends in an ISO status word; and when that status word is
//! an error (anything but `9000`, `61xx`, `62xx`, `63xx`) the card's persistent state is
//! byte-identical to its state before the command; it is never `6F00` or `6581` (a failure
//! of the card, not a diagnosis of the input); and a read-only command (SELECT, GET
//! CHALLENGE, GET DATA, GET RESPONSE) never writes the image, whatever its answer.
//!
//! A second test sends hostile personalisation (STORE DATA of every known data group with random
//! values, other card-management commands) through a *valid* SCP03 session, so the content
//! reaches each applet's personalisation handler past the MAC check.
//!
//! A third sends hostile commands inside the open service sessions (the pairing applet at
//! level 33 with its ledger and notes services, the keyring after bottom-pair authentication).
//!
//! A fourth replays each tear scenario's own state-changing commands from its state at `arm`
//! with one of them made near-valid, so each command meets hostile input in exactly the state
//! where it would change something.
//!
//! Case counts: `HOSTILE_CASES` (default 5) sequences per prepared state (8 times that per
//! applet or session for the in-session tests); raise it for a deeper run.

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use tessera_apdu::Command;
use tessera_card::applets::{Provisioning, registry};
use tessera_card::{Card, CardOptions, PowerCut, TearDriver, TearError, TearScenario};
use tessera_crypto::rng::SeededRng;

/// Runs a scenario script against a card, records every APDU it sends, and stops it (without
/// touching the card) once `stop_after` commands past `arm` have been sent.
struct Recorder {
    card: Card,
    log: Vec<Vec<u8>>,
    armed: bool,
    /// Index in `log` of the first command after `arm`.
    armed_at: usize,
    after_arm: usize,
    stop_after: Option<usize>,
}

impl TearDriver for Recorder {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        if self.armed {
            if self.stop_after.is_some_and(|n| self.after_arm >= n) {
                return Err(PowerCut);
            }
            self.after_arm += 1;
        }
        self.log.push(apdu.to_vec());
        Ok(self.card.transmit(apdu))
    }

    fn arm(&mut self) {
        self.armed = true;
        self.armed_at = self.log.len();
    }
}

fn new_card() -> Card {
    let mut card = Card::in_memory(CardOptions::default().rng(Box::new(SeededRng::from_u64(42))));
    card.power_on();
    card
}

/// A way to bring a card into a prepared state.
#[derive(Clone, Copy)]
enum Prepare {
    /// A blank card with the applet selected.
    Fresh(&'static [u8]),
    /// A scenario stopped after `stop_after` commands past its `arm` (`None`: run to its end).
    Scenario(TearScenario, Option<usize>),
}

impl Prepare {
    fn card(&self) -> Recorder {
        let mut r = Recorder {
            card: new_card(),
            log: Vec::new(),
            armed: false,
            armed_at: 0,
            after_arm: 0,
            stop_after: None,
        };
        match *self {
            Prepare::Fresh(aid) => {
                let select = Command::new(0x00, 0xA4, 0x04, 0x00).with_data(aid.to_vec());
                let out = r.card.transmit(&select.to_bytes().unwrap());
                assert!(out.ends_with(&[0x90, 0x00]) || out[out.len() - 2] == 0x61);
            }
            Prepare::Scenario(scenario, stop_after) => {
                r.stop_after = stop_after;
                let result = (scenario.script)(&mut r);
                match stop_after {
                    None => assert_eq!(result, Ok(()), "{}: clean run", scenario.name),
                    Some(_) => assert!(
                        matches!(result, Ok(()) | Err(TearError::Cut)),
                        "{}: {result:?}",
                        scenario.name
                    ),
                }
            }
        }
        r
    }
}

/// Encodes a command, in the extended form when asked to (or when its lengths need it).
/// A command without data and without Le is case 1 in either form.
fn encode(cmd: &Command, extended: bool) -> Vec<u8> {
    let mut out = vec![cmd.cla, cmd.ins, cmd.p1, cmd.p2];
    let nc = cmd.data.len();
    if !extended && !cmd.is_extended() {
        if nc > 0 {
            out.push(nc as u8);
            out.extend_from_slice(&cmd.data);
        }
        if let Some(ne) = cmd.le {
            out.push((ne % 256) as u8);
        }
        return out;
    }
    if nc > 0 {
        out.push(0);
        out.extend_from_slice(&(nc as u16).to_be_bytes());
        out.extend_from_slice(&cmd.data);
    }
    if let Some(ne) = cmd.le {
        if nc == 0 {
            out.push(0);
        }
        out.extend_from_slice(&((ne % 65536) as u16).to_be_bytes());
    }
    out
}

/// How the data field of a template is mutated.
#[derive(Debug, Clone)]
enum DataMut {
    Keep,
    Random(Vec<u8>),
    Truncate(usize),
    Extend(Vec<u8>),
    Flip(Vec<(usize, u8)>),
}

/// One hostile step: one APDU, or a chain of them.
#[derive(Debug, Clone)]
enum Step {
    /// Arbitrary bytes.
    Random(Vec<u8>),
    /// A field-wise mutation of a recorded command.
    Near {
        template: usize,
        p1: Option<u8>,
        p2: Option<u8>,
        data: DataMut,
        le: Option<Option<usize>>,
        extended: bool,
        /// XORed into CLA: the secure-messaging bits, the proprietary-class bit, a logical
        /// channel, the further-interindustry range.
        cla_xor: u8,
        /// Split the data into a command chain at this fraction (per mille) of its length;
        /// `(split, send_last)`: without the last part the chain is left pending.
        chain: Option<(u16, bool)>,
    },
    /// A recorded APDU cut short (its encoding then no longer matches its Lc).
    Truncated { template: usize, keep: usize },
    /// A recorded APDU with random bytes after it.
    Suffixed { template: usize, extra: Vec<u8> },
    /// A recorded APDU sent again unchanged (replay).
    Replay { template: usize },
}

fn data_mut() -> impl Strategy<Value = DataMut> {
    prop_oneof![
        2 => Just(DataMut::Keep),
        2 => prop::collection::vec(any::<u8>(), 0..300).prop_map(DataMut::Random),
        1 => prop::collection::vec(any::<u8>(), 250..600).prop_map(DataMut::Random),
        2 => any::<usize>().prop_map(DataMut::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..40).prop_map(DataMut::Extend),
        3 => prop::collection::vec((any::<usize>(), 1u8..=255), 1..4).prop_map(DataMut::Flip),
    ]
}

fn le_mut() -> impl Strategy<Value = Option<Option<usize>>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(None)),
        2 => (1usize..=256).prop_map(|n| Some(Some(n))),
        1 => (1usize..=65536).prop_map(|n| Some(Some(n))),
    ]
}

fn step(templates: usize) -> impl Strategy<Value = Step> {
    let t = 0..templates;
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Step::Random),
        8 => (
            t.clone(),
            prop::option::weighted(0.5, any::<u8>()),
            prop::option::weighted(0.5, any::<u8>()),
            data_mut(),
            le_mut(),
            prop::bool::weighted(0.2),
            prop_oneof![
                6 => Just(0u8),
                2 => Just(0x04u8),
                1 => Just(0x0C),
                1 => Just(0x80),
                1 => Just(0x01),
                1 => Just(0x40),
            ],
            prop::option::weighted(0.15, (0u16..=1000, prop::bool::weighted(0.7))),
        )
            .prop_map(|(template, p1, p2, data, le, extended, cla_xor, chain)| Step::Near {
                template,
                p1,
                p2,
                data,
                le,
                extended,
                cla_xor,
                chain
            }),
        2 => (t.clone(), any::<usize>()).prop_map(|(template, keep)| Step::Truncated { template, keep }),
        2 => (t.clone(), prop::collection::vec(any::<u8>(), 1..20))
            .prop_map(|(template, extra)| Step::Suffixed { template, extra }),
        1 => t.prop_map(|template| Step::Replay { template }),
    ]
}

/// The APDUs a step sends.
fn apdus(step: &Step, corpus: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let template = |i: &usize| &corpus[*i % corpus.len()];
    match step {
        Step::Random(bytes) => vec![bytes.clone()],
        Step::Truncated { template: i, keep } => {
            let t = template(i);
            vec![t[..keep % (t.len() + 1)].to_vec()]
        }
        Step::Suffixed { template: i, extra } => vec![[template(i).as_slice(), extra].concat()],
        Step::Replay { template: i } => vec![template(i).clone()],
        Step::Near { template: i, p1, p2, data, le, extended, cla_xor, chain } => {
            let Ok(mut cmd) = Command::parse(template(i)) else {
                return vec![template(i).clone()];
            };
            cmd.p1 = p1.unwrap_or(cmd.p1);
            cmd.p2 = p2.unwrap_or(cmd.p2);
            match data {
                DataMut::Keep => {}
                DataMut::Random(d) => cmd.data = d.clone(),
                DataMut::Truncate(n) => cmd.data.truncate(n % (cmd.data.len() + 1)),
                DataMut::Extend(more) => cmd.data.extend_from_slice(more),
                DataMut::Flip(flips) => {
                    if !cmd.data.is_empty() {
                        let len = cmd.data.len();
                        for (at, x) in flips {
                            cmd.data[at % len] ^= x;
                        }
                    }
                }
            }
            if let Some(le) = le {
                cmd.le = *le;
            }
            cmd.cla ^= cla_xor;
            cmd.cla &= !0x10;
            if cmd.cla == 0xFF {
                cmd.cla = 0xEF;
            }
            match chain {
                Some((split, send_last)) if !cmd.data.is_empty() => {
                    let at = cmd.data.len() * usize::from(*split) / 1000;
                    let mut first = cmd.clone();
                    first.cla |= 0x10;
                    first.data = cmd.data[..at].to_vec();
                    first.le = None;
                    let mut last = cmd.clone();
                    last.data = cmd.data[at..].to_vec();
                    let mut out = vec![encode(&first, *extended)];
                    if *send_last {
                        out.push(encode(&last, *extended));
                    }
                    out
                }
                _ => vec![encode(&cmd, *extended)],
            }
        }
    }
}

/// Status words that say the card failed rather than the input: `6F00` (no precise
/// diagnosis, used for cases that "cannot happen") and `6581` (memory failure, impossible on
/// a memory image). Hostile input must always get a precise answer.
fn is_internal_failure(sw: u16) -> bool {
    sw == 0x6F00 || sw == 0x6581
}

/// Commands that only read, whatever they are answered (docs/card-runtime.md: SELECT, GET
/// CHALLENGE, GET DATA and GET RESPONSE never write): interindustry SELECT and GET CHALLENGE,
/// GET DATA and GET RESPONSE in any class.
fn is_read_only(apdu: &[u8]) -> bool {
    match apdu {
        [cla, ins, ..] if cla & 0x80 == 0 && matches!(ins, 0xA4 | 0x84) => true,
        [_, ins, ..] => matches!(ins, 0xCA | 0xC0),
        _ => false,
    }
}

fn is_error(sw: u16) -> bool {
    !(sw == 0x9000 || matches!(sw >> 8, 0x61..=0x63))
}

/// Sends `steps` into a freshly prepared card; checks every answer.
fn check(prepare: &Prepare, corpus: &[Vec<u8>], steps: &[Step]) -> Result<(), TestCaseError> {
    let mut card = prepare.card().card;
    for step in steps {
        for apdu in apdus(step, corpus) {
            let before = card.persistent_state();
            let generation = card.generation();
            let out = card.transmit(&apdu);
            if is_read_only(&apdu) {
                prop_assert_eq!(
                    card.generation(),
                    generation,
                    "a read-only command wrote: {}",
                    hex::encode(&apdu)
                );
            }
            prop_assert!(out.len() >= 2, "answer without a status word to {}", hex::encode(&apdu));
            let sw = u16::from_be_bytes([out[out.len() - 2], out[out.len() - 1]]);
            prop_assert!(
                matches!(sw >> 8, 0x61..=0x6F | 0x90..=0x9F),
                "{sw:04X} is not an ISO status word (command {})",
                hex::encode(&apdu)
            );
            prop_assert!(
                !is_internal_failure(sw),
                "{sw:04X} (no precise diagnosis) answered to {}",
                hex::encode(&apdu)
            );
            if is_error(sw) {
                prop_assert!(
                    card.persistent_state() == before,
                    "{sw:04X} answered to {} changed the persistent state",
                    hex::encode(&apdu)
                );
            }
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("HOSTILE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(5)
}

/// Runs the hostile sequences against one prepared state; panics with the minimal failing
/// sequence.
fn attack(label: &str, seed: u64, prepare: Prepare, corpus: Arc<Vec<Vec<u8>>>) {
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    };
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
    let strategy = prop::collection::vec(step(corpus.len()), 1..12);
    if let Err(e) = runner.run(&strategy, |steps| check(&prepare, &corpus, &steps)) {
        panic!("{label}: {e}");
    }
}

#[test]
fn every_applet_in_every_prepared_state_refuses_hostile_commands_without_changing_state() {
    let applets = registry(&Provisioning::default());
    let mut states = 0;
    let mut seed = 0u64;
    for applet in &applets {
        let name = applet.name();
        let scenarios = applet.tear_scenarios();
        // The applet's own commands: every APDU its scenarios send (setup included), plus a
        // SELECT of it, for the fresh state and as templates everywhere.
        let select = Command::new(0x00, 0xA4, 0x04, 0x00).with_data(applet.aid().to_vec());
        let mut corpus = vec![select.to_bytes().unwrap()];
        let mut runs = Vec::new();
        for scenario in &scenarios {
            let full = Prepare::Scenario(*scenario, None).card();
            corpus.extend(full.log.iter().cloned());
            runs.push((*scenario, full.after_arm));
        }
        corpus.sort();
        corpus.dedup();
        let corpus = Arc::new(corpus);

        seed += 1;
        attack(&format!("{name}: fresh"), seed, Prepare::Fresh(applet.aid()), corpus.clone());
        states += 1;
        for (scenario, after_arm) in runs {
            let mut stops = vec![Some(0), None];
            if after_arm > 1 {
                stops.push(Some(1));
            }
            for stop in stops {
                seed += 1;
                let label = format!("{name}: {}: stopped at {stop:?} past arm", scenario.name);
                attack(&label, seed, Prepare::Scenario(scenario, stop), corpus.clone());
                states += 1;
            }
        }
    }
    eprintln!("{} applets, {states} prepared states, {} sequences each", applets.len(), cases());
    assert!(states > applets.len() * 2, "scenarios provide prepared states");
}

/// The prepared state at the `arm` of the registered scenario called `name`.
fn at_arm_of(name: &str) -> Card {
    let scenario = tessera_card::applets::tear_scenarios()
        .into_iter()
        .map(|(_, s)| s)
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no tear scenario {name:?}"));
    Prepare::Scenario(scenario, Some(0)).card().card
}

/// Regression (found by the test above): a state-changing command without data sent with a
/// short Le (`80 46 00 00 01`, vault GENERATE) was executed and committed, then the APDU layer
/// discarded its answer for `6C41`; the host's repetition with Le `41` then found a key and
/// failed, the public key lost. `6Cxx` now changes nothing and the repetition runs once.
#[test]
fn a_state_changing_command_answered_6cxx_changes_nothing() {
    let mut card = at_arm_of("vault GENERATE");
    let before = card.persistent_state();
    assert_eq!(card.transmit(&[0x80, 0x46, 0x00, 0x00, 0x01]), [0x6C, 0x41]);
    assert!(card.persistent_state() == before, "6C41 changed the persistent state");
    let out = card.transmit(&[0x80, 0x46, 0x00, 0x00, 0x41]);
    assert_eq!(out.len(), 0x41 + 2);
    assert_eq!(out[0x41..], [0x90, 0x00]);
    assert_ne!(card.persistent_state(), before, "the repeated GENERATE made a key");
}

// ------------------------------------------------------------------------------------------
// Hostile personalisation inside a valid SCP03 session
// ------------------------------------------------------------------------------------------

/// A driver that checks every answer as [`check`] does, for scripts that must run through a
/// real SCP03 session (hostile content that passes the MAC check).
struct Checker {
    card: Card,
    failure: Option<String>,
}

impl TearDriver for Checker {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        let before = self.card.persistent_state();
        let out = self.card.transmit(apdu);
        let sw = match out.len() {
            n if n >= 2 => u16::from_be_bytes([out[n - 2], out[n - 1]]),
            _ => 0,
        };
        if self.failure.is_none() {
            if !matches!(sw >> 8, 0x61..=0x6F | 0x90..=0x9F) {
                self.failure =
                    Some(format!("{sw:04X} is not a status word ({})", hex::encode(apdu)));
            } else if is_internal_failure(sw) {
                self.failure = Some(format!("{sw:04X} answered to {}", hex::encode(apdu)));
            } else if is_error(sw) && self.card.persistent_state() != before {
                self.failure =
                    Some(format!("{sw:04X} answered to {} changed the state", hex::encode(apdu)));
            }
        }
        Ok(out)
    }

    fn arm(&mut self) {}
}

/// Every personalisation data group tessera defines, as tags for near-valid STORE DATA.
const DGIS: &[u16] = &[
    0x0101, 0x8101, 0x8102, 0x0201, 0x0202, 0x0203, // ISD
    0x0201, 0x8201, 0x8202, // keyring
    0x0301, 0x8301, 0x8302, // vault
    0x0501, 0x0502, 0x0503, // update
    0x8100, 0x0110, // home, access
];

/// One secured command of a hostile personalisation session.
#[derive(Debug, Clone)]
enum Secured {
    /// STORE DATA of data groups: (tag choice, value); `in_sequence` keeps the block number.
    Store {
        groups: Vec<(Option<u16>, usize, Vec<u8>)>,
        last: bool,
        in_sequence: bool,
        p1: Option<u8>,
    },
    /// Any card-management instruction with random parameters and data.
    Other { ins: u8, p1: u8, p2: u8, data: Vec<u8> },
}

fn secured() -> impl Strategy<Value = Secured> {
    let group = (
        prop::option::weighted(0.15, any::<u16>()),
        any::<usize>(),
        prop::collection::vec(any::<u8>(), 0..100),
    );
    prop_oneof![
        4 => (prop::collection::vec(group, 0..4), prop::bool::weighted(0.2), prop::bool::weighted(0.85), prop::option::weighted(0.1, any::<u8>()))
            .prop_map(|(groups, last, in_sequence, p1)| Secured::Store { groups, last, in_sequence, p1 }),
        2 => (
            prop::sample::select(vec![
                (0xD8u8, 0x00u8, 0x81u8),
                (0xE6, 0x20, 0x00),
                (0xF0, 0x80, 0x0F),
                (0xF0, 0x80, 0x7F),
                (0x46, 0x00, 0x00),
                (0xCA, 0x00, 0x45),
                (0xF2, 0x40, 0x02),
                (0xE2, 0x08, 0x00),
                (0x20, 0x00, 0x81),
            ]),
            prop::option::weighted(0.3, (any::<u8>(), any::<u8>())),
            prop::collection::vec(any::<u8>(), 0..120),
        )
            .prop_map(|((ins, p1, p2), params, data)| {
                let (p1, p2) = params.unwrap_or((p1, p2));
                Secured::Other { ins, p1, p2, data }
            }),
    ]
}

/// Opens the ISD session (on a blank card with the initial keys, or on a personalised one
/// with the issued keys), names `aid` in INSTALL [for personalization] unless it is the ISD's,
/// then sends the hostile commands through the session.
fn personalise_hostile(aid: &[u8], issued: bool, steps: &[Secured]) -> Result<(), TestCaseError> {
    use tessera_card::applets::isd::{self, scenarios as isd_sc};
    use tessera_card::script::Script;
    use tessera_crypto::scp03::SecurityLevel;

    let mut checker = Checker { card: new_card(), failure: None };
    let mut s = Script::new(&mut checker);
    if issued {
        isd_sc::personalize(&mut s).unwrap();
        s.select(isd::AID).unwrap();
        s.open_session(&isd_sc::issued_keys(), SecurityLevel::CMacCDec).unwrap();
    } else {
        isd_sc::open_initial(&mut s).unwrap();
    }
    if aid != isd::AID {
        let mut install = vec![0x00, aid.len() as u8];
        install.extend_from_slice(aid);
        install.extend_from_slice(&[0, 0, 0]);
        s.secure(
            &Command::new(0x80, 0xE6, 0x20, 0x00).with_data(install).with_le(256),
            tessera_apdu::StatusWord::SUCCESS,
        )
        .unwrap();
    }
    let mut block = 0u8;
    for step in steps {
        let cmd = match step {
            Secured::Store { groups, last, in_sequence, p1 } => {
                let groups: Vec<(u16, &[u8])> = groups
                    .iter()
                    .map(|(tag, pick, value)| {
                        (tag.unwrap_or(DGIS[pick % DGIS.len()]), value.as_slice())
                    })
                    .collect();
                let p2 = if *in_sequence { block } else { block ^ 0x5A };
                let p1 = p1.unwrap_or(if *last { 0x88 } else { 0x08 });
                Command::new(0x80, 0xE2, p1, p2).with_data(isd_sc::dgi_data(&groups))
            }
            Secured::Other { ins, p1, p2, data } => {
                Command::new(0x80, *ins, *p1, *p2).with_data(data.clone()).with_le(256)
            }
        };
        // Too long to protect in a short APDU: not a command a host can send in a session.
        let Ok(wrapped) = s.wrap(&cmd) else { continue };
        if wrapped.data.len() > 255 {
            continue;
        }
        // The card moves its block number on only when it accepts a block.
        if let Ok(r) = s.send(&wrapped)
            && r.sw == tessera_apdu::StatusWord::SUCCESS
            && cmd.ins == 0xE2
        {
            block = if cmd.p1 & 0x80 != 0 { 0 } else { cmd.p2.wrapping_add(1) };
        }
    }
    drop(s);
    if let Some(failure) = checker.failure {
        return Err(TestCaseError::fail(failure));
    }
    Ok(())
}

#[test]
fn hostile_personalisation_in_a_valid_session_changes_nothing_it_refuses() {
    let applets = registry(&Provisioning::default());
    let mut seed = 1000u64;
    for applet in &applets {
        for issued in [false, true] {
            seed += 1;
            let config = Config {
                cases: cases() * 8,
                failure_persistence: None,
                max_shrink_iters: 200,
                ..Config::default()
            };
            let mut seed_bytes = [0u8; 32];
            seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
            let mut runner = TestRunner::new_with_rng(
                config,
                TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
            );
            let aid = applet.aid();
            let strategy = prop::collection::vec(secured(), 1..10);
            if let Err(e) = runner.run(&strategy, |steps| personalise_hostile(aid, issued, &steps))
            {
                panic!("{}: issued {issued}: {e}", applet.name());
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Hostile commands inside the service sessions (pairing, keyring)
// ------------------------------------------------------------------------------------------

/// A command to protect and send inside an open session: a known (INS, P1, P2), or random
/// parameters, with random data.
#[derive(Debug, Clone)]
struct InSession {
    template: usize,
    params: Option<(u8, u8)>,
    data: Vec<u8>,
    le: bool,
}

fn in_session() -> impl Strategy<Value = InSession> {
    (
        any::<usize>(),
        prop::option::weighted(0.25, (any::<u8>(), any::<u8>())),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..12),
            prop::collection::vec(any::<u8>(), 8..=8),
            prop::collection::vec(any::<u8>(), 0..180),
        ],
        any::<bool>(),
    )
        .prop_map(|(template, params, data, le)| InSession { template, params, data, le })
}

/// The pairing applet's and its services' commands (INVOKE: service, operation).
const PAIRING_COMMANDS: &[(u8, u8, u8)] = &[
    (0xC2, 0x01, 0x01),
    (0xC2, 0x01, 0x02),
    (0xC2, 0x01, 0x03),
    (0xC2, 0x01, 0x04),
    (0xC2, 0x02, 0x01),
    (0xC2, 0x02, 0x02),
    (0xC2, 0x02, 0x03),
    (0xC2, 0x02, 0x04),
    (0xB0, 0x00, 0x00),
    (0xB2, 0x00, 0x00),
    (0xB4, 0x00, 0x00),
    (0xB8, 0x00, 0x00),
    (0xBA, 0x01, 0x00),
    (0xBC, 0x00, 0x00),
    (0xCA, 0x00, 0x01),
];

/// The keyring's commands.
const KEYRING_COMMANDS: &[(u8, u8, u8)] = &[
    (0x88, 0x01, 0x00),
    (0x88, 0x03, 0x00),
    (0x82, 0x03, 0x00),
    (0xC4, 0x01, 0x00),
    (0xC4, 0x03, 0x00),
    (0xC4, 0x07, 0x00),
    (0xCA, 0xDF, 0x01),
    (0xCA, 0xDF, 0x02),
];

/// Brings a card into an open session (`pairing` or keyring), then sends `steps` through it.
fn session_hostile(pairing: bool, steps: &[InSession]) -> Result<(), TestCaseError> {
    use tessera_card::applets::keyring::{self, scenarios as kr};
    use tessera_card::applets::pairing::scenarios as pr;
    use tessera_card::script::Script;

    let mut checker = Checker { card: new_card(), failure: None };
    let mut s = Script::new(&mut checker);
    let commands = if pairing {
        pr::paired(&mut s).unwrap();
        PAIRING_COMMANDS
    } else {
        let mut server =
            kr::TestServer::new(tessera_proto::keyring::Mode::Symmetric, 3, 3).unwrap();
        server.issue(&mut s).unwrap();
        let auth = server.authenticate(&mut s, 3, 3).unwrap();
        s.open_session(&auth.session_keys.unwrap(), keyring::SESSION_LEVEL).unwrap();
        KEYRING_COMMANDS
    };
    for step in steps {
        let (ins, p1, p2) = commands[step.template % commands.len()];
        let (p1, p2) = step.params.unwrap_or((p1, p2));
        let mut cmd = Command::new(0x80, ins, p1, p2).with_data(step.data.clone());
        if step.le {
            cmd = cmd.with_le(256);
        }
        let Ok(wrapped) = s.wrap(&cmd) else { continue };
        if wrapped.data.len() > 255 {
            continue;
        }
        let _ = s.send(&wrapped);
    }
    drop(s);
    if let Some(failure) = checker.failure {
        return Err(TestCaseError::fail(failure));
    }
    Ok(())
}

#[test]
fn hostile_commands_inside_service_sessions_change_nothing_they_refuse() {
    for (seed, pairing) in [(2001u64, true), (2002, false)] {
        let config = Config {
            cases: cases() * 8,
            failure_persistence: None,
            max_shrink_iters: 200,
            ..Config::default()
        };
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
        let strategy = prop::collection::vec(in_session(), 1..12);
        if let Err(e) = runner.run(&strategy, |steps| session_hostile(pairing, &steps)) {
            panic!("pairing session {pairing}: {e}");
        }
    }
}

// ------------------------------------------------------------------------------------------
// Each scenario's own state-changing commands, one of them made hostile
// ------------------------------------------------------------------------------------------

/// From the scenario's state at `arm`, replays its recorded commands up to the `k`-th, sends
/// that one mutated (as a near-valid step), then the rest unchanged. The card's generator is
/// seeded and the commands are the recorded bytes, so the replayed prefix runs as it did.
fn replay_one_hostile(
    scenario: TearScenario,
    post: &[Vec<u8>],
    k: usize,
    step: &Step,
) -> Result<(), TestCaseError> {
    let mut card = Prepare::Scenario(scenario, Some(0)).card().card;
    let k = k % post.len();
    let mut sequence: Vec<Vec<u8>> = post[..k].to_vec();
    sequence.extend(apdus(step, &post[k..=k]));
    sequence.extend(post[k + 1..].iter().cloned());
    for apdu in sequence {
        let before = card.persistent_state();
        let out = card.transmit(&apdu);
        prop_assert!(out.len() >= 2);
        let sw = u16::from_be_bytes([out[out.len() - 2], out[out.len() - 1]]);
        prop_assert!(matches!(sw >> 8, 0x61..=0x6F | 0x90..=0x9F), "{sw:04X}");
        prop_assert!(!is_internal_failure(sw), "{sw:04X} answered to {}", hex::encode(&apdu));
        if is_error(sw) {
            prop_assert!(
                card.persistent_state() == before,
                "{sw:04X} answered to {} changed the persistent state",
                hex::encode(&apdu)
            );
        }
    }
    Ok(())
}

#[test]
fn each_state_changing_command_made_hostile_in_its_own_state_changes_nothing_it_refuses() {
    let mut seed = 3000u64;
    let mut runs = 0;
    for (applet, scenario) in tessera_card::applets::tear_scenarios() {
        let full = Prepare::Scenario(scenario, None).card();
        let post: Vec<Vec<u8>> = full.log[full.armed_at..].to_vec();
        if post.is_empty() {
            continue;
        }
        seed += 1;
        let config = Config {
            cases: cases() * 4,
            failure_persistence: None,
            max_shrink_iters: 200,
            ..Config::default()
        };
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
        // Near-valid mutations of the one template (index 0 of a one-command corpus).
        let strategy = (any::<usize>(), step(1));
        if let Err(e) =
            runner.run(&strategy, |(k, step)| replay_one_hostile(scenario, &post, k, &step))
        {
            panic!("{applet}: {}: {e}", scenario.name);
        }
        runs += 1;
    }
    assert!(runs > 50, "only {runs} scenarios replayed");
}
