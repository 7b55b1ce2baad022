#![allow(clippy::unwrap_used)] // tests may unwrap

//! The pairing applet at the APDU level: enrolment, setup, authentication, services, and every
//! card-side attack of issue 6 (the terminal-side ones are in `tessera-host`'s tests).

mod common;

use common::{Plain, card};
use tessera_apdu::{Command, Response, StatusWord};
use tessera_card::Card;
use tessera_card::applets::isd;
use tessera_card::applets::pairing::scenarios::{
    TestCa, TestTerminal, VALIDITY, enrol, verify_pin, verify_pin_command,
};
use tessera_card::applets::pairing::{AID, MAX_PAIRINGS, SESSION_LEVEL};
use tessera_card::script::Script;
use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::rng::SeededRng;
use tessera_crypto::scp03::{Scp03Host, StaticKeys};
use tessera_crypto::x509::{Role, Validity};
use tessera_proto::pairing::{self as proto, ServiceId, ServiceRequest, Status};

const REFUSED: StatusWord = StatusWord::REFERENCE_DATA_NOT_USABLE;
const DENIED: StatusWord = StatusWord::SECURITY_STATUS_NOT_SATISFIED;

fn send(card: &mut Card, cmd: &Command) -> Response {
    Response::parse(&card.transmit(&cmd.to_bytes().unwrap())).unwrap()
}

fn select(card: &mut Card, aid: &[u8]) {
    let r = send(card, &Command::new(0, 0xA4, 4, 0).with_data(aid.to_vec()).with_le(256));
    assert_eq!(r.sw, StatusWord::SUCCESS);
}

/// An enrolled card with the PIN verified and the pairing applet selected.
fn enrolled() -> (Card, TestCa) {
    let mut card = card();
    let mut ca = TestCa::new("Test CA", 0xCA).unwrap();
    enrol(&mut Script::new(&mut Plain(&mut card)), &mut ca).unwrap();
    (card, ca)
}

fn pair(card: &mut Card, terminal: &mut TestTerminal) {
    terminal.pair(&mut Script::new(&mut Plain(card))).unwrap();
}

fn status(card: &mut Card) -> Status {
    let r = send(card, &proto::get_data_command(proto::DATA_STATUS));
    assert_eq!(r.sw, StatusWord::SUCCESS);
    Status::parse(&r.data).unwrap()
}

/// USE PAIRING and a level-33 SCP03 handshake by hand, so tests can tamper with wrapped APDUs.
fn open(card: &mut Card, terminal: &TestTerminal, keys: &StaticKeys) -> Result<Scp03Host, String> {
    let r = send(card, &proto::use_pairing_command(&terminal.key_id().unwrap()));
    if r.sw != StatusWord::SUCCESS {
        return Err(format!("USE PAIRING {}", r.sw));
    }
    let mut rng = SeededRng::from_u64(99);
    let (hs, iu) = Scp03Host::initialize_update(proto::PAIRING_KVN, 0, &mut rng).unwrap();
    let r = send(card, &iu);
    let hello = hs.card_hello(&r).map_err(|e| e.to_string())?;
    let (pending, ea) =
        hello.external_authenticate(keys, SESSION_LEVEL, None).map_err(|e| e.to_string())?;
    let r = send(card, &ea);
    pending.finish(&r).map_err(|e| format!("EXTERNAL AUTHENTICATE {}: {e}", r.sw))
}

fn balance() -> ServiceRequest {
    ServiceRequest { service: ServiceId::Ledger, op: proto::ledger::OP_BALANCE, data: vec![] }
}

fn credit(amount: u64) -> ServiceRequest {
    ServiceRequest {
        service: ServiceId::Ledger,
        op: proto::ledger::OP_CREDIT,
        data: amount.to_be_bytes().to_vec(),
    }
}

fn call(card: &mut Card, host: &mut Scp03Host, request: &ServiceRequest) -> Response {
    let wrapped = host.wrap_command(&request.command()).unwrap();
    host.unwrap_response(&send(card, &wrapped)).unwrap()
}

/// A paired card with an open session.
fn session() -> (Card, TestCa, TestTerminal, Scp03Host) {
    let (mut card, mut ca) = enrolled();
    let mut terminal = TestTerminal::new(&mut ca, 1).unwrap();
    pair(&mut card, &mut terminal);
    let host = open(&mut card, &terminal, &terminal.session_keys().unwrap()).unwrap();
    (card, ca, terminal, host)
}

#[test]
fn setup_then_authentication_then_services() {
    let (mut card, _ca, _terminal, mut host) = session();
    assert_eq!(call(&mut card, &mut host, &credit(250)).data, 250u64.to_be_bytes());
    assert_eq!(call(&mut card, &mut host, &balance()).data, 250u64.to_be_bytes());
    let put = ServiceRequest {
        service: ServiceId::Notes,
        op: proto::notes::OP_PUT,
        data: b"\x01hello".to_vec(),
    };
    assert_eq!(call(&mut card, &mut host, &put).sw, StatusWord::SUCCESS);
    let get = ServiceRequest { service: ServiceId::Notes, op: proto::notes::OP_GET, data: vec![1] };
    assert_eq!(call(&mut card, &mut host, &get).data, b"hello");
    let unknown = ServiceRequest { service: ServiceId::Notes, op: 0x7F, data: vec![] };
    assert_eq!(call(&mut card, &mut host, &unknown).sw, StatusWord::INCORRECT_P1P2);
    let st = status(&mut card);
    assert_eq!((st.enrolled, st.committed, st.staged), (true, 1, 0));
}

#[test]
fn pairing_is_staged_until_the_first_authentication_which_alone_writes() {
    let (mut card, mut ca) = enrolled();
    let mut terminal = TestTerminal::new(&mut ca, 1).unwrap();
    pair(&mut card, &mut terminal);
    assert_eq!((status(&mut card).committed, status(&mut card).staged), (0, 1));
    let keys = terminal.session_keys().unwrap();
    let before = card.generation();
    open(&mut card, &terminal, &keys).unwrap();
    assert_eq!(card.generation(), before + 1, "the first authentication commits the pairing");
    assert_eq!((status(&mut card).committed, status(&mut card).staged), (1, 0));
    // Every later authentication writes nothing persistent.
    for _ in 0..3 {
        let before = card.generation();
        let state = card.persistent_state();
        open(&mut card, &terminal, &keys).unwrap();
        assert_eq!(card.generation(), before);
        assert_eq!(card.persistent_state(), state);
    }
}

#[test]
fn enrolment_is_pin_gated_and_one_time() {
    let mut card = card();
    let mut ca = TestCa::new("Test CA", 0xCA).unwrap();
    isd::scenarios::personalize(&mut Script::new(&mut Plain(&mut card))).unwrap();
    select(&mut card, AID);
    let generate = proto::generate_key_command(&[1; 16]);
    assert_eq!(send(&mut card, &generate).sw, DENIED, "GENERATE KEY without the PIN");
    assert_eq!(
        send(&mut card, &proto::install_certificate_command(proto::CERT_CA, ca.certificate.der()))
            .sw,
        DENIED
    );
    // Pairing before enrolment.
    verify_pin(&mut Script::new(&mut Plain(&mut card))).unwrap();
    let mut terminal = TestTerminal::new(&mut ca, 1).unwrap();
    let (_, begin) = terminal.begin_command();
    assert_eq!(send(&mut card, &begin.command()).sw, StatusWord::CONDITIONS_NOT_SATISFIED);
    // A card certificate for another key is refused.
    assert_eq!(send(&mut card, &generate).sw, StatusWord::SUCCESS);
    assert_eq!(
        send(&mut card, &proto::install_certificate_command(proto::CERT_CA, ca.certificate.der()))
            .sw,
        StatusWord::SUCCESS
    );
    let other = SigningKey::generate(&mut SeededRng::from_u64(5)).public_key();
    let wrong = ca.issue("card", &other, Role::Card, VALIDITY).unwrap();
    assert_eq!(
        send(&mut card, &proto::install_certificate_command(proto::CERT_CARD, wrong.der())).sw,
        StatusWord::INCORRECT_DATA
    );
    // After enrolment nothing can be replaced: not the key, not the trust anchor.
    let (mut card, mut ca) = enrolled();
    assert_eq!(send(&mut card, &generate).sw, StatusWord::CONDITIONS_NOT_SATISFIED);
    let rogue = TestCa::new("Rogue CA", 0xBAD).unwrap();
    let state = card.persistent_state();
    assert_eq!(
        send(
            &mut card,
            &proto::install_certificate_command(proto::CERT_CA, rogue.certificate.der())
        )
        .sw,
        StatusWord::CONDITIONS_NOT_SATISFIED
    );
    let key = SigningKey::generate(&mut SeededRng::from_u64(6)).public_key();
    let again = ca.issue("card", &key, Role::Card, VALIDITY).unwrap();
    assert_eq!(
        send(&mut card, &proto::install_certificate_command(proto::CERT_CARD, again.der())).sw,
        StatusWord::CONDITIONS_NOT_SATISFIED
    );
    assert_eq!(card.persistent_state(), state);
}

/// PAIR BEGIN with `terminal`'s certificate: the status word, and the state unchanged on
/// refusal.
fn begin_sw(card: &mut Card, terminal: &mut TestTerminal) -> StatusWord {
    let state = card.persistent_state();
    let (_, begin) = terminal.begin_command();
    let sw = send(card, &begin.command()).sw;
    if sw != StatusWord::SUCCESS {
        assert_eq!(card.persistent_state(), state);
    }
    sw
}

#[test]
fn setup_refuses_another_ca() {
    let (mut card, _ca) = enrolled();
    let mut rogue = TestCa::new("Test CA", 0xBAD).unwrap(); // same name, other key
    let mut terminal = TestTerminal::new(&mut rogue, 1).unwrap();
    assert_eq!(begin_sw(&mut card, &mut terminal), REFUSED);
}

#[test]
fn setup_refuses_the_wrong_role() {
    let (mut card, mut ca) = enrolled();
    let mut terminal = TestTerminal::new(&mut ca, 1).unwrap();
    // Same key, a certificate with role card instead of terminal.
    terminal.certificate = ca.issue("t", &terminal.key.public_key(), Role::Card, VALIDITY).unwrap();
    assert_eq!(begin_sw(&mut card, &mut terminal), REFUSED);
    terminal.certificate =
        ca.issue("t", &terminal.key.public_key(), Role::Terminal, VALIDITY).unwrap();
    assert_eq!(begin_sw(&mut card, &mut terminal), StatusWord::SUCCESS);
}

#[test]
fn setup_refuses_an_expired_certificate_once_the_card_has_seen_a_later_time() {
    let (mut card, mut ca) = enrolled();
    let mut terminal = TestTerminal::new(&mut ca, 1).unwrap();
    let short = Validity { not_before: VALIDITY.not_before, not_after: 1_750_000_000 };
    terminal.certificate =
        ca.issue("t", &terminal.key.public_key(), Role::Terminal, short).unwrap();
    // The card's floor is still 2023: the certificate is not yet expired for it.
    assert_eq!(begin_sw(&mut card, &mut terminal), StatusWord::SUCCESS);
    // A CRL issued in 2027 (revoking nothing) moves the card's clock past notAfter.
    let crl = ca.crl(&[], 1_800_000_000).unwrap();
    assert_eq!(send(&mut card, &proto::load_crl_command(crl.der())).sw, StatusWord::SUCCESS);
    assert_eq!(status(&mut card).time_floor, 1_800_000_000);
    assert_eq!(begin_sw(&mut card, &mut terminal), REFUSED);
}

#[test]
fn setup_refuses_a_revoked_certificate_and_a_crl_drops_its_pairing() {
    let (mut card, mut ca) = enrolled();
    let mut revoked = TestTerminal::new(&mut ca, 1).unwrap();
    let mut other = TestTerminal::new(&mut ca, 2).unwrap();
    pair(&mut card, &mut revoked);
    pair(&mut card, &mut other);
    assert_eq!(status(&mut card).staged, 2);
    let crl = ca.crl(&[&revoked.key_id().unwrap()], 1_800_000_000).unwrap();
    assert_eq!(send(&mut card, &proto::load_crl_command(crl.der())).sw, StatusWord::SUCCESS);
    assert_eq!(status(&mut card).staged, 1, "the revoked terminal's pairing is gone");
    assert_eq!(begin_sw(&mut card, &mut revoked), REFUSED);
    assert_eq!(begin_sw(&mut card, &mut other), StatusWord::SUCCESS);
    let keys = revoked.session_keys().unwrap();
    assert!(open(&mut card, &revoked, &keys).unwrap_err().contains("6A88"));
    // An older or the same CRL cannot roll the revocation back; a forged one is refused.
    assert_eq!(
        send(&mut card, &proto::load_crl_command(ca.crl(&[], 1_790_000_000).unwrap().der())).sw,
        StatusWord::CONDITIONS_NOT_SATISFIED
    );
    assert_eq!(
        send(&mut card, &proto::load_crl_command(crl.der())).sw,
        StatusWord::CONDITIONS_NOT_SATISFIED
    );
    let rogue = TestCa::new("Test CA", 0xBAD).unwrap();
    assert_eq!(
        send(&mut card, &proto::load_crl_command(rogue.crl(&[], 1_900_000_000).unwrap().der())).sw,
        REFUSED
    );
}

#[test]
fn setup_requires_the_pin() {
    let (mut card, mut ca) = enrolled();
    card.reset();
    select(&mut card, AID);
    let mut terminal = TestTerminal::new(&mut ca, 1).unwrap();
    assert_eq!(begin_sw(&mut card, &mut terminal), DENIED);
    // A wrong PIN does not open it either.
    select(&mut card, isd::AID);
    let wrong = send(&mut card, &verify_pin_command(b"9999").unwrap());
    assert_eq!(wrong.sw.sw1(), 0x63);
    select(&mut card, AID);
    assert_eq!(begin_sw(&mut card, &mut terminal), DENIED);
}

#[test]
fn a_second_terminal_with_the_first_ones_certificate_but_not_its_key_cannot_pair() {
    let (mut card, mut ca) = enrolled();
    let mut genuine = TestTerminal::new(&mut ca, 1).unwrap();
    pair(&mut card, &mut genuine);
    let state = card.persistent_state();
    let mut impostor = TestTerminal::new(&mut ca, 2).unwrap();
    impostor.certificate = genuine.certificate.clone();
    let half = impostor.begin(&mut Script::new(&mut Plain(&mut card))).unwrap();
    assert_eq!(send(&mut card, &half.confirm.command()).sw, StatusWord(0x6300));
    assert_eq!(card.persistent_state(), state, "the genuine terminal's pairing is untouched");
    // PAIR CONFIRM is single-use: a retry needs a new PAIR BEGIN.
    assert_eq!(send(&mut card, &half.confirm.command()).sw, StatusWord::CONDITIONS_NOT_SATISFIED);
    // Without the pairing key the impostor cannot authenticate as the genuine terminal.
    impostor.pairing_key = Some(tessera_crypto::keys::AesKey::Aes128([7; 16]));
    impostor.card_key_id = genuine.card_key_id.clone();
    let keys = impostor.session_keys().unwrap();
    assert!(open(&mut card, &impostor, &keys).is_err());
    let keys = genuine.session_keys().unwrap();
    open(&mut card, &genuine, &keys).unwrap();
}

#[test]
fn service_commands_outside_a_session_are_refused() {
    let (mut card, _ca, _terminal, mut host) = session();
    // A plain INVOKE: refused, and it ends the session.
    assert_eq!(send(&mut card, &credit(1).command()).sw, DENIED);
    let wrapped = host.wrap_command(&credit(1).command()).unwrap();
    assert_eq!(send(&mut card, &wrapped).sw, DENIED);
    // Fresh card, never authenticated: a wrapped command is refused too.
    let (mut card, mut ca) = enrolled();
    let mut t = TestTerminal::new(&mut ca, 1).unwrap();
    pair(&mut card, &mut t);
    assert_eq!(send(&mut card, &wrapped).sw, DENIED);
}

/// A session after `n` good commands, the next command wrapped, and the card.
fn tamper_setup() -> (Card, Scp03Host, Command, Vec<u8>) {
    let (mut card, _ca, _terminal, mut host) = session();
    call(&mut card, &mut host, &credit(10));
    let state = card.persistent_state();
    let next = host.wrap_command(&credit(5).command()).unwrap();
    (card, host, next, state)
}

fn assert_session_dead(card: &mut Card, host: &mut Scp03Host) {
    let wrapped = host.wrap_command(&balance().command()).unwrap();
    assert_ne!(send(card, &wrapped).sw, StatusWord::SUCCESS);
}

#[test]
fn a_bad_mac_ends_the_session_and_changes_nothing() {
    let (mut card, mut host, mut next, state) = tamper_setup();
    let last = next.data.len() - 1;
    next.data[last] ^= 1;
    assert_eq!(send(&mut card, &next).sw, DENIED);
    assert_eq!(card.persistent_state(), state);
    assert_session_dead(&mut card, &mut host);
}

#[test]
fn a_modified_header_is_refused() {
    for change in [|c: &mut Command| c.p2 ^= 0x01, |c: &mut Command| c.p1 = ServiceId::Notes.code()]
    {
        let (mut card, mut host, mut next, state) = tamper_setup();
        change(&mut next);
        assert_eq!(send(&mut card, &next).sw, DENIED);
        assert_eq!(card.persistent_state(), state);
        assert_session_dead(&mut card, &mut host);
    }
}

#[test]
fn a_replayed_command_is_refused() {
    let (mut card, mut host, next, _) = tamper_setup();
    let r = host.unwrap_response(&send(&mut card, &next)).unwrap();
    assert_eq!(r.data, 15u64.to_be_bytes());
    let state = card.persistent_state();
    assert_eq!(send(&mut card, &next).sw, DENIED, "the same credit a second time");
    assert_eq!(card.persistent_state(), state);
}

#[test]
fn reordered_commands_are_refused() {
    let (mut card, mut host, first, state) = tamper_setup();
    let second = host.wrap_command(&credit(7).command()).unwrap();
    assert_eq!(send(&mut card, &second).sw, DENIED);
    assert_eq!(send(&mut card, &first).sw, DENIED);
    assert_eq!(card.persistent_state(), state);
}

#[test]
fn selecting_another_applet_ends_the_session() {
    let (mut card, _ca, _terminal, mut host) = session();
    select(&mut card, isd::AID);
    select(&mut card, AID);
    assert_session_dead(&mut card, &mut host);
}

#[test]
fn authentication_with_a_wrong_key_fails_and_writes_nothing() {
    let (mut card, _ca, terminal, _host) = session();
    let state = card.persistent_state();
    let generation = card.generation();
    let mut keys = terminal.session_keys().unwrap();
    keys.mac = tessera_crypto::keys::AesKey::Aes128([1; 16]);
    assert!(open(&mut card, &terminal, &keys).is_err());
    assert_eq!((card.persistent_state(), card.generation()), (state, generation));
    // Only level 33 opens a session.
    let r = send(&mut card, &proto::use_pairing_command(&terminal.key_id().unwrap()));
    assert_eq!(r.sw, StatusWord::SUCCESS);
    let mut rng = SeededRng::from_u64(1);
    let (hs, iu) = Scp03Host::initialize_update(proto::PAIRING_KVN, 0, &mut rng).unwrap();
    let hello = hs.card_hello(&send(&mut card, &iu)).unwrap();
    let keys = terminal.session_keys().unwrap();
    let (_, ea) = hello
        .external_authenticate(&keys, tessera_crypto::scp03::SecurityLevel::CMacCDecRMac, None)
        .unwrap();
    assert_eq!(send(&mut card, &ea).sw, DENIED);
}

#[test]
fn a_half_done_setup_never_authenticates() {
    let (mut card, mut ca) = enrolled();
    let mut terminal = TestTerminal::new(&mut ca, 1).unwrap();
    let half = terminal.begin(&mut Script::new(&mut Plain(&mut card))).unwrap();
    // Power cut before PAIR CONFIRM: nothing was stored.
    card.power_off();
    card.power_on();
    terminal.finish(half);
    select(&mut card, AID);
    let keys = terminal.session_keys().unwrap();
    assert!(open(&mut card, &terminal, &keys).unwrap_err().contains("6A88"));
}

#[test]
fn at_most_eight_pairings_staged_ones_replaced_first_then_the_least_recent() {
    let (mut card, mut ca) = enrolled();
    let mut terminals: Vec<TestTerminal> =
        (0..=MAX_PAIRINGS as u64).map(|i| TestTerminal::new(&mut ca, 100 + i).unwrap()).collect();
    // Terminals 0..8 pair and authenticate (committed), except terminal 3 stays staged.
    for (i, t) in terminals.iter_mut().take(MAX_PAIRINGS).enumerate() {
        pair(&mut card, t);
        if i != 3 {
            let keys = t.session_keys().unwrap();
            open(&mut card, t, &keys).unwrap();
        }
    }
    assert_eq!((status(&mut card).committed, status(&mut card).staged), (7, 1));
    // The ninth replaces the staged one.
    pair(&mut card, &mut terminals[MAX_PAIRINGS]);
    let keys = terminals[3].session_keys().unwrap();
    assert!(open(&mut card, &terminals[3], &keys).is_err());
    let t8 = &terminals[MAX_PAIRINGS];
    open(&mut card, t8, &t8.session_keys().unwrap()).unwrap();
    // Full of committed pairings: terminal 3 pairing again replaces the least recent (0).
    pair(&mut card, &mut terminals[3]);
    let t0 = &terminals[0];
    assert!(open(&mut card, t0, &t0.session_keys().unwrap()).is_err());
    for i in [1, 2, 3, 4, 5, 6, 7, 8] {
        let t = &terminals[i];
        open(&mut card, t, &t.session_keys().unwrap()).unwrap_or_else(|e| panic!("{i}: {e}"));
    }
}

#[test]
fn malformed_commands_change_nothing() {
    let (mut card, _ca, _terminal, _host) = session();
    let state = card.persistent_state();
    for (apdu, sw) in [
        (Command::new(0x80, proto::INS_PAIR_BEGIN, 0, 0).with_data(vec![1; 40]), 0x6A80),
        (Command::new(0x80, proto::INS_PAIR_BEGIN, 1, 0).with_data(vec![1; 40]), 0x6A86),
        (Command::new(0x80, proto::INS_PAIR_CONFIRM, 0, 0).with_data(vec![1; 80]), 0x6985),
        (Command::new(0x80, proto::INS_USE_PAIRING, 0, 0), 0x6A80),
        (Command::new(0x80, proto::INS_USE_PAIRING, 0, 0).with_data(vec![1; 21]), 0x6A80),
        (Command::new(0x80, proto::INS_LOAD_CRL, 0, 0).with_data(vec![0x30, 1, 0]), 0x6A80),
        (Command::new(0x80, proto::INS_GET_DATA, 0, 9), 0x6A86),
        (Command::new(0x80, 0x50, proto::PAIRING_KVN, 0).with_data(vec![0; 8]), 0x6985),
        (Command::new(0x00, proto::INS_PAIR_BEGIN, 0, 0), 0x6E00),
        (Command::new(0x80, 0x44, 0, 0), 0x6D00),
    ] {
        assert_eq!(send(&mut card, &apdu).sw, StatusWord(sw), "{apdu:?}");
    }
    assert_eq!(card.persistent_state(), state);
}

#[test]
fn arbitrary_commands_never_panic_and_refusals_change_nothing() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use std::cell::RefCell;
    let (card, _ca, _terminal, _host) = session();
    let card = RefCell::new(card);
    let strategy = (
        prop::sample::select(vec![0x00u8, 0x80, 0x84, 0x90, 0x0C]),
        prop::sample::select(vec![
            proto::INS_PAIR_BEGIN,
            proto::INS_PAIR_CONFIRM,
            proto::INS_USE_PAIRING,
            proto::INS_GENERATE_KEY,
            proto::INS_INSTALL_CERTIFICATE,
            proto::INS_LOAD_CRL,
            proto::INS_INVOKE,
            proto::INS_GET_DATA,
            0x50,
            0x82,
            0x20,
            0xFF,
        ]),
        0u8..4,
        0u8..4,
        prop::collection::vec(any::<u8>(), 0..300),
    );
    TestRunner::new(Config::with_cases(400))
        .run(&strategy, |(cla, ins, p1, p2, data)| {
            let mut card = card.borrow_mut();
            let before = card.persistent_state();
            let r = send(&mut card, &Command::new(cla, ins, p1, p2).with_data(data).with_le(256));
            if r.sw != StatusWord::SUCCESS {
                prop_assert_eq!(card.persistent_state(), before);
            }
            Ok(())
        })
        .unwrap();
}
