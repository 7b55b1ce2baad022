#![allow(clippy::unwrap_used)] // tests may unwrap

//! The keyring applet at the APDU level: authentication, the renewal rules of claims 3-9, the
//! attacks of issue 4, and the SCP03 session after authentication with the bottom pair.

mod common;

use common::{Plain, card};
use tessera_apdu::{Command, Response, StatusWord};
use tessera_card::Card;
use tessera_card::applets::isd::scenarios as isd;
use tessera_card::applets::keyring::scenarios::{Auth, TestServer, personalize_keyring};
use tessera_card::applets::keyring::{AID, SESSION_LEVEL};
use tessera_card::script::Script;
use tessera_crypto::scp03::SecurityLevel;
use tessera_proto::keyring::{
    self as proto, ExternalAuthenticate, KeyInfo, KeyKind, Mode, RenewForm, RenewResponse,
    SecurityStatus,
};

const FAILED: StatusWord = StatusWord(0x6300);
const DENIED: StatusWord = StatusWord::SECURITY_STATUS_NOT_SATISFIED;

fn issued(mode: Mode, m: u8, n: u8) -> (Card, TestServer) {
    let mut card = card();
    let server = TestServer::new(mode, m, n).unwrap();
    server.issue(&mut Script::new(&mut Plain(&mut card))).unwrap();
    (card, server)
}

fn send(card: &mut Card, cmd: &Command) -> Response {
    Response::parse(&card.transmit(&cmd.to_bytes().unwrap())).unwrap()
}

fn auth(card: &mut Card, server: &mut TestServer, i: u8, j: u8) -> Auth {
    server.authenticate(&mut Script::new(&mut Plain(card)), i, j).unwrap()
}

fn key_info(card: &mut Card) -> KeyInfo {
    let r = send(card, &proto::get_data(proto::TAG_KEY_INFO));
    assert_eq!(r.sw, StatusWord::SUCCESS);
    KeyInfo::parse(&r.data).unwrap()
}

fn status(card: &mut Card) -> SecurityStatus {
    let r = send(card, &proto::get_data(proto::TAG_SECURITY_STATUS));
    SecurityStatus::parse(&r.data).unwrap()
}

#[test]
fn personalised_keyring_reports_its_slots_and_refuses_a_second_personalisation() {
    let (mut card, server) = issued(Mode::Symmetric, 4, 3);
    send(&mut card, &Command::new(0, 0xA4, 4, 0).with_data(AID.to_vec()));
    let info = key_info(&mut card);
    assert_eq!(info.layout, server.layout);
    assert_eq!(info.slots.len(), 7);
    assert!(info.slots.iter().all(|s| s.version == 1));
    // Keys are written once: personalising again is refused by the keyring.
    let mut plain = Plain(&mut card);
    let mut s = Script::new(&mut plain);
    s.select(tessera_card::applets::isd::AID).unwrap();
    s.open_session(&isd::issued_keys(), SecurityLevel::CMacCDec).unwrap();
    let err = personalize_keyring(&mut s, &server.personalisation()).unwrap_err();
    assert!(format!("{err:?}").contains("6985"), "{err:?}");
}

#[test]
fn mutual_authentication_records_the_proven_slots() {
    let (mut card, mut server) = issued(Mode::Symmetric, 4, 4);
    auth(&mut card, &mut server, 3, 2);
    let st = status(&mut card);
    assert_eq!(st.authenticated, Some((3, 2)));
    assert_eq!(st.proven_internal, 0b0100);
    assert_eq!(st.proven_external, 0b0010);
    server.authenticate_selected(&mut Script::new(&mut Plain(&mut card)), 4, 4).unwrap();
    let st = status(&mut card);
    assert_eq!(st.authenticated, Some((4, 4)));
    assert_eq!(st.proven_internal, 0b1100);
    assert_eq!(st.proven_external, 0b1010);
    // A reset forgets everything.
    card.reset();
    send(&mut card, &Command::new(0, 0xA4, 4, 0).with_data(AID.to_vec()));
    assert_eq!(status(&mut card), SecurityStatus::default());
}

#[test]
fn renewal_without_authentication_is_refused() {
    let (mut card, mut server) = issued(Mode::Symmetric, 4, 4);
    let a = auth(&mut card, &mut server, 3, 3);
    let cmd = server.renew_command(&a, RenewForm::Pair { internal: 4, external: 4 });
    card.reset();
    send(&mut card, &Command::new(0, 0xA4, 4, 0).with_data(AID.to_vec()));
    let before = key_info(&mut card);
    assert_eq!(send(&mut card, &cmd.to_command()).sw, DENIED);
    assert_eq!(key_info(&mut card), before);
}

/// Every form with an authenticating pair just outside its rule is refused; just inside, it
/// succeeds. Claims 3-9 as `docs/keyring.md` states them (stricter: "numbered below").
#[test]
fn renewal_with_a_too_low_privileged_slot_is_refused_for_every_claim() {
    type Pair = (u8, u8);
    let cases: &[(RenewForm, Pair, Pair)] = &[
        // (form, refused pair, accepted pair)
        (RenewForm::Internal { slot: 3 }, (3, 1), (2, 4)), // claim 3
        (RenewForm::Internal { slot: 3 }, (4, 1), (1, 1)), // claim 3, lower internal
        (RenewForm::External { slot: 3 }, (1, 3), (4, 2)), // claim 4
        (RenewForm::External { slot: 3 }, (1, 4), (4, 1)), // claim 4, lower external
        (RenewForm::Pair { internal: 4, external: 4 }, (3, 4), (3, 3)), // claims 5, 9
        (RenewForm::Pair { internal: 4, external: 4 }, (4, 3), (1, 3)), // claim 5
        (RenewForm::PairSingleRandom { internal: 4, external: 4 }, (4, 4), (3, 3)), // par. 0088
        (RenewForm::InternalFrom { slot: 3 }, (3, 1), (2, 4)), // claim 6
        (RenewForm::ExternalFrom { slot: 2 }, (1, 2), (4, 1)), // claim 7
        (RenewForm::BothFrom { internal: 3, external: 3 }, (2, 3), (2, 2)), // claim 8
        (RenewForm::BothFrom { internal: 3, external: 3 }, (3, 2), (2, 2)), // claim 8
    ];
    for &(form, refused, accepted) in cases {
        let (mut card, mut server) = issued(Mode::Symmetric, 4, 4);
        let a = auth(&mut card, &mut server, refused.0, refused.1);
        let cmd = server.renew_command(&a, form);
        let before = key_info(&mut card);
        assert_eq!(send(&mut card, &cmd.to_command()).sw, DENIED, "{form:?} after {refused:?}");
        assert_eq!(key_info(&mut card), before, "{form:?}: nothing changed");
        let a = auth(&mut card, &mut server, accepted.0, accepted.1);
        let cmd = server.renew_command(&a, form);
        let r = send(&mut card, &cmd.to_command());
        assert_eq!(r.sw, StatusWord::SUCCESS, "{form:?} after {accepted:?}");
        let renewed = RenewResponse::parse(&r.data, Mode::Symmetric).unwrap();
        let after = key_info(&mut card);
        for k in &renewed.keys {
            assert_eq!(k.version, 2);
            assert_eq!(after.version(k.kind, k.slot), Some(2));
        }
        assert_eq!(renewed.keys.len(), form.targets(&server.layout).unwrap().len());
    }
}

#[test]
fn slot_one_is_never_renewed_online() {
    let (mut card, mut server) = issued(Mode::Symmetric, 3, 3);
    for form in [
        RenewForm::Internal { slot: 1 },
        RenewForm::External { slot: 1 },
        RenewForm::InternalFrom { slot: 1 },
        RenewForm::BothFrom { internal: 1, external: 1 },
    ] {
        let a = auth(&mut card, &mut server, 1, 1);
        let cmd = server.renew_command(&a, form);
        assert_eq!(send(&mut card, &cmd.to_command()).sw, DENIED, "{form:?}");
    }
}

#[test]
fn one_renew_per_authentication() {
    let (mut card, mut server) = issued(Mode::Symmetric, 4, 4);
    let a = auth(&mut card, &mut server, 3, 3);
    let cmd = server.renew_command(&a, RenewForm::Internal { slot: 4 });
    assert_eq!(send(&mut card, &cmd.to_command()).sw, StatusWord::SUCCESS);
    let cmd = server.renew_command(&a, RenewForm::External { slot: 4 });
    assert_eq!(send(&mut card, &cmd.to_command()).sw, DENIED);
}

#[test]
fn replayed_external_authenticate_is_refused() {
    let (mut card, mut server) = issued(Mode::Symmetric, 4, 4);
    // Record a good EXTERNAL AUTHENTICATE by rebuilding what the server sent.
    let a = auth(&mut card, &mut server, 4, 4);
    let message = proto::server_auth_message(
        &server.card_id,
        4,
        4,
        1,
        &a.server_challenge,
        &a.card_challenge,
        &[],
        &[],
    );
    let recorded =
        ExternalAuthenticate { slot: 4, ephemeral: None, proof: server.prove(4, &message) }
            .to_command();
    // The attacker replays it against a new challenge, with the same INTERNAL AUTHENTICATE.
    let r = send(&mut card, &proto::internal_authenticate(4, &a.server_challenge));
    assert_eq!(r.sw, StatusWord::SUCCESS);
    assert_eq!(send(&mut card, &proto::get_challenge()).sw, StatusWord::SUCCESS);
    assert_eq!(send(&mut card, &recorded).sw, FAILED);
    assert_eq!(status(&mut card).authenticated, None);
}

#[test]
fn external_authenticate_with_a_stale_challenge_or_twice_is_refused() {
    let (mut card, mut server) = issued(Mode::Symmetric, 4, 4);
    let rs = [7u8; 16];
    let cryptogram = |server: &TestServer, ra: &[u8]| {
        let m = proto::server_auth_message(&server.card_id, 4, 4, 1, &rs, ra, &[], &[]);
        ExternalAuthenticate { slot: 4, ephemeral: None, proof: server.prove(4, &m) }.to_command()
    };
    send(&mut card, &Command::new(0, 0xA4, 4, 0).with_data(AID.to_vec()));
    // Stale: computed over a challenge the card replaced with a newer one.
    assert_eq!(send(&mut card, &proto::internal_authenticate(4, &rs)).sw, StatusWord::SUCCESS);
    let stale = send(&mut card, &proto::get_challenge()).data;
    let _newer = send(&mut card, &proto::get_challenge()).data;
    assert_eq!(send(&mut card, &cryptogram(&server, &stale)).sw, FAILED);
    // Twice per challenge: a wrong attempt consumes the challenge; the right answer to the
    // same challenge is then refused.
    assert_eq!(send(&mut card, &proto::internal_authenticate(4, &rs)).sw, StatusWord::SUCCESS);
    let ra = send(&mut card, &proto::get_challenge()).data;
    let mut wrong = cryptogram(&server, &ra);
    wrong.data[0] ^= 1;
    assert_eq!(send(&mut card, &wrong).sw, FAILED);
    assert_eq!(send(&mut card, &cryptogram(&server, &ra)).sw, StatusWord::CONDITIONS_NOT_SATISFIED);
    // A successful answer cannot be sent twice either.
    assert_eq!(send(&mut card, &proto::internal_authenticate(4, &rs)).sw, StatusWord::SUCCESS);
    let ra = send(&mut card, &proto::get_challenge()).data;
    assert_eq!(send(&mut card, &cryptogram(&server, &ra)).sw, StatusWord::SUCCESS);
    assert_eq!(send(&mut card, &cryptogram(&server, &ra)).sw, StatusWord::CONDITIONS_NOT_SATISFIED);
    // And EXTERNAL AUTHENTICATE without any challenge is refused.
    assert_eq!(send(&mut card, &proto::internal_authenticate(4, &rs)).sw, StatusWord::SUCCESS);
    assert_eq!(send(&mut card, &cryptogram(&server, &ra)).sw, StatusWord::CONDITIONS_NOT_SATISFIED);
    let _ = &mut server;
}

#[test]
fn renew_with_a_wrong_or_reused_random_is_refused() {
    let (mut card, mut server) = issued(Mode::Symmetric, 4, 4);
    let a = auth(&mut card, &mut server, 3, 3);
    let before = key_info(&mut card);
    // Wrong: a random changed on the way (the server's proof no longer matches).
    let mut cmd = server.renew_command(&a, RenewForm::Pair { internal: 4, external: 4 });
    let good = cmd.clone();
    cmd.entries[1].random = Some([0x55; 16]);
    assert_eq!(send(&mut card, &cmd.to_command()).sw, FAILED);
    assert_eq!(key_info(&mut card), before);
    // A RENEW recorded in one authentication is worthless in the next.
    let _a2 = auth(&mut card, &mut server, 3, 3);
    assert_eq!(send(&mut card, &good.to_command()).sw, FAILED);
    // A good renewal, then the same randoms again under a new authentication (properly
    // proven, as a faulty or malicious server might send them): refused.
    let a3 = auth(&mut card, &mut server, 3, 3);
    let mut first = good.clone();
    server.sign_renew(&a3, &mut first);
    assert_eq!(send(&mut card, &first.to_command()).sw, StatusWord::SUCCESS);
    let a4 = auth(&mut card, &mut server, 3, 3);
    let mut again = good.clone();
    server.sign_renew(&a4, &mut again);
    let after_first = key_info(&mut card);
    assert_eq!(send(&mut card, &again.to_command()).sw, StatusWord::INCORRECT_DATA);
    assert_eq!(key_info(&mut card), after_first);
    // Two equal randoms in one command: refused.
    let a5 = auth(&mut card, &mut server, 3, 3);
    let mut twins = server.renew_command(&a5, RenewForm::Pair { internal: 4, external: 4 });
    twins.entries[1].random = twins.entries[0].random;
    server.sign_renew(&a5, &mut twins);
    assert_eq!(send(&mut card, &twins.to_command()).sw, StatusWord::INCORRECT_DATA);
}

#[test]
fn renew_outputs_no_key_and_the_keys_differ_per_slot() {
    let (mut card, mut server) = issued(Mode::Symmetric, 4, 4);
    let a = auth(&mut card, &mut server, 1, 1);
    let cmd = server.renew_command(&a, RenewForm::BothFrom { internal: 2, external: 2 });
    let r = send(&mut card, &cmd.to_command());
    assert_eq!(r.sw, StatusWord::SUCCESS);
    let renewed = RenewResponse::parse(&r.data, Mode::Symmetric).unwrap();
    assert_eq!(renewed.keys.len(), 6);
    // Only kind, slot, version, KCV and a confirmation per key: 9 + 16 bytes each.
    assert_eq!(r.data.len(), 6 * (9 + 16));
    let mut kcvs: Vec<_> = renewed.keys.iter().map(|k| k.kcv).collect();
    kcvs.sort();
    kcvs.dedup();
    assert_eq!(kcvs.len(), 6, "every renewed key is different");
    // The new bottom pair works: the server double does not know it, so authentication with
    // the old keys now fails.
    let mut plain = Plain(&mut card);
    assert!(server.authenticate(&mut Script::new(&mut plain), 4, 4).is_err());
}

#[test]
fn bottom_pair_authentication_opens_an_scp03_session_at_level_33() {
    let (mut card, mut server) = issued(Mode::Symmetric, 3, 3);
    // Without authentication with the bottom pair, no session.
    let a = auth(&mut card, &mut server, 2, 3);
    assert!(a.session_keys.is_none());
    let mut plain = Plain(&mut card);
    let mut s = Script::new(&mut plain);
    let err = s.open_session(&tessera_crypto::scp03::StaticKeys::gp_test_keys(1), SESSION_LEVEL);
    assert!(format!("{err:?}").contains("6982"), "{err:?}");
    drop(s);
    let a = auth(&mut card, &mut server, 3, 3);
    let keys = a.session_keys.clone().unwrap();
    let mut plain = Plain(&mut card);
    let mut s = Script::new(&mut plain);
    // Lower levels are refused.
    assert!(s.open_session(&keys, SecurityLevel::CMacCDec).is_err());
    drop(s);
    let a = auth(&mut card, &mut server, 3, 3);
    let keys = a.session_keys.clone().unwrap();
    let mut plain = Plain(&mut card);
    let mut s = Script::new(&mut plain);
    s.open_session(&keys, SESSION_LEVEL).unwrap();
    let r = s.secure(&proto::get_data(proto::TAG_SECURITY_STATUS), StatusWord::SUCCESS).unwrap();
    let st = SecurityStatus::parse(&r.data).unwrap();
    assert_eq!(st.session_level, SESSION_LEVEL.to_byte());
    assert_eq!(st.authenticated, Some((3, 3)));
    drop(s);
    // A plain command with a forged secure-messaging bit ends the session.
    let forged = Command::new(0x04, 0xCA, 0xDF, 0x02).with_data(vec![0; 8]).with_le(256);
    assert_ne!(send(&mut card, &forged).sw, StatusWord::SUCCESS);
    assert_eq!(status(&mut card).session_level, 0);
    assert_eq!(status(&mut card).authenticated, None);
}

#[test]
fn asymmetric_mode_authenticates_by_signatures_and_renews_by_key_generation() {
    let (mut card, mut server) = issued(Mode::Asymmetric, 3, 3);
    let a = auth(&mut card, &mut server, 2, 2);
    let cmd = server.renew_command(&a, RenewForm::Pair { internal: 3, external: 3 });
    let r = send(&mut card, &cmd.to_command());
    assert_eq!(r.sw, StatusWord::SUCCESS);
    let renewed = RenewResponse::parse(&r.data, Mode::Asymmetric).unwrap();
    let internal = &renewed.keys[0];
    assert_eq!((internal.kind, internal.slot, internal.version), (KeyKind::Internal, 3, 2));
    let public = internal.public_key.unwrap();
    // The new public key proves possession, and the whole answer is signed by the upper key.
    let pk = tessera_crypto::ecdsa::PublicKey::from_sec1_bytes(&public).unwrap();
    let pop = proto::possession_message(
        &server.card_id,
        3,
        2,
        &public,
        &a.server_challenge,
        &a.card_challenge,
    );
    let sig = tessera_crypto::ecdsa::Signature::from_bytes(&internal.possession.unwrap()).unwrap();
    pk.verify(&pop, &sig).unwrap();
    let external = &renewed.keys[1];
    assert_eq!(external.kcv, proto::public_key_check_value(&cmd.entries[1].public_key.unwrap()));
    // A RENEW proven by a key the card does not hold for that slot fails.
    let a = auth(&mut card, &mut server, 1, 1);
    let mut cmd = server.renew_command(&a, RenewForm::Internal { slot: 2 });
    cmd.proof = vec![0x11; 64];
    assert_eq!(send(&mut card, &cmd.to_command()).sw, FAILED);
    // The single-random variant is symmetric only.
    let a = auth(&mut card, &mut server, 2, 2);
    let mut cmd = server.renew_command(&a, RenewForm::Pair { internal: 3, external: 3 });
    let mut apdu = cmd.to_command();
    apdu.p1 = 0x04;
    assert_eq!(send(&mut card, &apdu).sw, StatusWord::INCORRECT_P1P2);
    cmd.proof.clear();
}

#[test]
fn malformed_keyring_commands_change_nothing() {
    let (mut card, _server) = issued(Mode::Symmetric, 2, 2);
    send(&mut card, &Command::new(0, 0xA4, 4, 0).with_data(AID.to_vec()));
    let before = card.persistent_state();
    for apdu in [
        Command::new(0x00, 0x88, 0x00, 0x01).with_data(vec![0; 15]),
        Command::new(0x00, 0x88, 0x01, 0x01).with_data(vec![0; 16]),
        Command::new(0x00, 0x88, 0x00, 0x09).with_data(vec![0; 16]),
        Command::new(0x00, 0x82, 0x00, 0x01).with_data(vec![0; 3]),
        Command::new(0x80, 0xC4, 0x09, 0x00).with_data(vec![2; 40]),
        Command::new(0x80, 0xC4, 0x01, 0x00),
        Command::new(0x80, 0xC4, 0x01, 0x00).with_data(vec![9; 33]),
        Command::new(0x80, 0x50, 0x01, 0x00).with_data(vec![0; 8]),
        Command::new(0x00, 0xCA, 0xDF, 0x09),
        Command::new(0x00, 0x12, 0x00, 0x00),
    ] {
        let r = send(&mut card, &apdu);
        assert_ne!(r.sw, StatusWord::SUCCESS, "{apdu:?}");
        assert!(r.data.is_empty());
    }
    assert_eq!(card.persistent_state(), before);
}

#[test]
fn a_keyring_on_a_card_without_an_id_does_nothing() {
    let mut card = card();
    let server = TestServer::new(Mode::Symmetric, 2, 2).unwrap();
    let mut plain = Plain(&mut card);
    let mut s = Script::new(&mut plain);
    isd::open_initial(&mut s).unwrap();
    personalize_keyring(&mut s, &server.personalisation()).unwrap();
    s.select(AID).unwrap();
    let r = s.send(&proto::internal_authenticate(2, &[1; 16])).unwrap();
    assert_eq!(r.sw, StatusWord::CONDITIONS_NOT_SATISFIED);
}

mod arbitrary {
    use proptest::prelude::*;
    use tessera_card::storage::{MemoryStorage, TearMode, TearingDisk};
    use tessera_card::{CardOptions, OpenOptions, PowerCut, TearDriver};

    use super::*;

    struct Direct<'a>(&'a mut Card);

    impl TearDriver for Direct<'_> {
        fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
            Ok(self.0.transmit(apdu))
        }
        fn arm(&mut self) {}
    }

    /// The image of a card issued with a keyring of `mode`, 3 + 3 slots.
    fn issued_image(mode: Mode) -> Vec<u8> {
        let disk = TearingDisk::new(Vec::new(), None, TearMode::DropUnflushed);
        let mut card = Card::create_on(Box::new(disk.storage()), CardOptions::default()).unwrap();
        card.power_on();
        let server = TestServer::new(mode, 3, 3).unwrap();
        server.issue(&mut Script::new(&mut Direct(&mut card))).unwrap();
        disk.platter()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Arbitrary commands to the selected keyring never panic, and whatever is not
        /// answered `9000` changes nothing.
        #[test]
        fn arbitrary_commands_never_panic_nor_change_state_on_failure(
            asym in any::<bool>(),
            apdus in prop::collection::vec(
                (
                    prop::sample::select(vec![0x00u8, 0x80, 0x84, 0x04]),
                    prop::sample::select(vec![0x88u8, 0x82, 0x84, 0xC4, 0xCA, 0x50, 0x00]),
                    0u8..9,
                    0u8..9,
                    prop::collection::vec(any::<u8>(), 0..300),
                ),
                1..6,
            ),
        ) {
            let mode = if asym { Mode::Asymmetric } else { Mode::Symmetric };
            let image = issued_image(mode);
            let mut card =
                Card::open_on(Box::new(MemoryStorage::from_bytes(image)), OpenOptions::default())
                    .unwrap();
            card.power_on();
            send(&mut card, &Command::new(0, 0xA4, 4, 0).with_data(AID.to_vec()));
            for (cla, ins, p1, p2, data) in apdus {
                let before = card.persistent_state();
                let cmd = Command::new(cla, ins, p1, p2).with_data(data).with_le(256);
                let Ok(bytes) = cmd.to_bytes() else { continue };
                let out = card.transmit(&bytes);
                let r = Response::parse(&out).unwrap();
                if r.sw != StatusWord::SUCCESS {
                    prop_assert_eq!(card.persistent_state(), before);
                }
            }
        }
    }
}
