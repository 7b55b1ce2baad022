#![allow(clippy::unwrap_used)] // tests may unwrap

//! The update service against real in-memory cards (the card crate's update applet): the whole
//! chain, queueing, receipts, redelivery, and the server-side attacks of issue 5.

use tessera_apdu::{Command, Response, StatusWord};
use tessera_card::applets::isd::scenarios::{self as isd_sc, CARD_ID, PKI_T0};
use tessera_card::applets::update::scenarios::{self as sc, KEY_NONCE};
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::rng::SeededRng;
use tessera_crypto::x509::{self, Certificate, Validity};
use tessera_proto::update::{
    AuthMode, Challenge, Mode, Outcome, ReadRule, Receipt, UpdateCommand, load_commands,
};

use super::*;

const NOW: u64 = PKI_T0 as u64 + 1000;
const CARD_B: &[u8] = b"TESSERA-TEST-0002";

struct Plain<'a>(&'a mut Card);
impl TearDriver for Plain<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

fn send(card: &mut Card, cmd: &Command) -> Response {
    Response::parse(&card.transmit(&cmd.to_bytes().unwrap())).unwrap()
}

fn issued_card(card_id: &[u8], seed: u64) -> Card {
    let mut card = Card::in_memory(CardOptions::default().rng(Box::new(SeededRng::from_u64(seed))));
    card.power_on();
    sc::issue(&mut Script::new(&mut Plain(&mut card)), card_id, &[], false).unwrap();
    card
}

fn device_certificate(card: &mut Card) -> Certificate {
    Script::new(&mut Plain(card)).select(tessera_card::applets::isd::AID).unwrap();
    let r = send(card, &Command::new(0x80, 0xCA, 0x7F, 0x21).with_le(65536));
    assert_eq!(r.sw, StatusWord::SUCCESS);
    Certificate::from_der(r.data[5..].to_vec()).unwrap()
}

fn update_key_answer(card: &mut Card) -> Vec<u8> {
    Script::new(&mut Plain(card)).select(tessera_card::applets::update::AID).unwrap();
    send(card, &UpdateCommand::GetData(tessera_proto::update::TAG_UPDATE_KEY).to_command()).data
}

fn service() -> UpdateService<MemoryUpdateStore> {
    let mut s = UpdateService::new(
        MemoryUpdateStore::default(),
        HpkePrivateKey::generate(&mut SeededRng::from_u64(0x5E)),
    );
    let (_, ca, _) = isd_sc::issuer_pki().unwrap();
    s.add_issuer(IssuerKeys {
        id: "test".into(),
        ca,
        package_signer: Box::new(sc::package_signer()),
    });
    s
}

fn register(s: &mut UpdateService<MemoryUpdateStore>, card: &mut Card, card_id: &[u8]) {
    let cert = device_certificate(card);
    let answer = update_key_answer(card);
    s.register_card("test", card_id, cert, &KEY_NONCE, &answer, NOW as i64).unwrap();
}

/// ISD: VERIFY PIN; update applet selected.
fn pin(card: &mut Card) {
    let mut plain = Plain(card);
    let mut s = Script::new(&mut plain);
    s.select(tessera_card::applets::isd::AID).unwrap();
    let block = tessera_card::pin::PinBlock::from_value(isd_sc::PIN).unwrap();
    s.expect(
        &Command::new(0x00, 0x20, 0x00, 0x81).with_data(block.as_bytes().to_vec()),
        StatusWord::SUCCESS,
    )
    .unwrap();
    s.select(tessera_card::applets::update::AID).unwrap();
}

fn device_auth(card: &mut Card, challenge: Challenge) -> Vec<u8> {
    let cmd =
        UpdateCommand::DeviceAuthenticate { mode: AuthMode::Plain, challenge: Some(challenge) };
    let r = send(card, &cmd.to_command());
    assert_eq!(r.sw, StatusWord::SUCCESS);
    r.data
}

fn deliver(card: &mut Card, package: &[u8]) -> Response {
    let mut last = Response::status(StatusWord::UNKNOWN);
    for cmd in load_commands(package) {
        last = send(card, &cmd.to_command());
        if last.sw != StatusWord::SUCCESS {
            break;
        }
    }
    last
}

/// A whole session: PIN, challenge, device authentication, every pending package, receipts.
fn session(
    s: &mut UpdateService<MemoryUpdateStore>,
    card: &mut Card,
    card_id: &[u8],
    rng: &mut SeededRng,
) -> Vec<u64> {
    pin(card);
    let challenge = s.challenge(rng, NOW);
    let answer = device_auth(card, challenge);
    let auth = s.authenticate(card_id, &challenge, &answer, NOW).unwrap();
    let mut delivered = Vec::new();
    for p in s.pending(&auth) {
        let r = deliver(card, &p.bytes);
        assert_eq!(r.sw, StatusWord::SUCCESS);
        delivered.push(s.accept_receipt(&auth, &r.data).unwrap());
    }
    delivered
}

fn read(card: &mut Card, name: &[u8]) -> Vec<u8> {
    let r = send(card, &UpdateCommand::ReadObject(name.to_vec()).to_command());
    assert_eq!(r.sw, StatusWord::SUCCESS);
    r.data
}

#[test]
fn queued_updates_reach_the_card_and_are_marked_delivered_on_receipts() {
    let mut rng = SeededRng::from_u64(1);
    let mut s = service();
    let mut card = issued_card(CARD_ID, 1);
    register(&mut s, &mut card, CARD_ID);
    assert_eq!(s.queue(&mut rng, CARD_ID, b"wifi", b"pw-1", Mode::Apply, ReadRule::Pin), Ok(1));
    assert_eq!(
        s.queue(&mut rng, CARD_ID, b"sso", b"token-xyz", Mode::Sealed, ReadRule::Free),
        Ok(2)
    );
    // No plaintext is kept.
    for p in s.store().pending(CARD_ID) {
        assert!(!p.bytes.windows(4).any(|w| w == b"pw-1"));
        assert!(!p.bytes.windows(9).any(|w| w == b"token-xyz"));
    }
    assert_eq!(session(&mut s, &mut card, CARD_ID, &mut rng), vec![1, 2]);
    assert!(s.store().pending(CARD_ID).is_empty());
    assert_eq!(s.store().acknowledged(CARD_ID), 2);
    assert_eq!(read(&mut card, b"wifi"), b"pw-1");
    assert_eq!(read(&mut card, b"sso"), b"token-xyz");
    // A periodic change queued later reaches the card at its next session.
    s.queue(&mut rng, CARD_ID, b"wifi", b"pw-2", Mode::Apply, ReadRule::Pin).unwrap();
    assert_eq!(session(&mut s, &mut card, CARD_ID, &mut rng), vec![3]);
    assert_eq!(read(&mut card, b"wifi"), b"pw-2");
}

#[test]
fn challenges_are_single_use_expiring_and_bound_to_the_card() {
    let mut rng = SeededRng::from_u64(2);
    let mut s = service();
    let mut a = issued_card(CARD_ID, 2);
    let mut b = issued_card(CARD_B, 3);
    register(&mut s, &mut a, CARD_ID);
    register(&mut s, &mut b, CARD_B);
    pin(&mut a);
    pin(&mut b);
    let challenge = s.challenge(&mut rng, NOW);
    let answer = device_auth(&mut a, challenge);
    s.authenticate(CARD_ID, &challenge, &answer, NOW).unwrap();
    // The same signature replayed.
    assert_eq!(s.authenticate(CARD_ID, &challenge, &answer, NOW), Err(UpdateError::Challenge));
    // A challenge the server never issued.
    let made_up = Challenge { nonce: [9; 32], expires: NOW + 60 };
    let answer = device_auth(&mut a, made_up);
    assert_eq!(s.authenticate(CARD_ID, &made_up, &answer, NOW), Err(UpdateError::Challenge));
    // Expired.
    let late = s.challenge(&mut rng, NOW);
    let answer = device_auth(&mut a, late);
    assert_eq!(
        s.authenticate(CARD_ID, &late, &answer, NOW + CHALLENGE_TTL + 1),
        Err(UpdateError::Challenge)
    );
    // Card B's answer presented as card A; the expiry changed by the terminal.
    let c = s.challenge(&mut rng, NOW);
    let answer_b = device_auth(&mut b, c);
    assert_eq!(s.authenticate(CARD_ID, &c, &answer_b, NOW), Err(UpdateError::DeviceSignature));
    let c = s.challenge(&mut rng, NOW);
    let answer = device_auth(&mut a, c);
    let stretched = Challenge { expires: c.expires + 1000, ..c };
    assert_eq!(s.authenticate(CARD_ID, &stretched, &answer, NOW), Err(UpdateError::Challenge));
    // Unknown card.
    let c = s.challenge(&mut rng, NOW);
    let answer = device_auth(&mut a, c);
    assert!(matches!(
        s.authenticate(b"NOBODY", &c, &answer, NOW),
        Err(UpdateError::UnknownCard(_))
    ));
}

#[test]
fn privacy_variant_authenticates_without_naming_the_card() {
    let mut rng = SeededRng::from_u64(4);
    let mut s = service();
    let mut card = issued_card(CARD_ID, 4);
    register(&mut s, &mut card, CARD_ID);
    s.queue(&mut rng, CARD_ID, b"wifi", b"private-pw", Mode::Apply, ReadRule::Pin).unwrap();
    pin(&mut card);
    let challenge = s.challenge(&mut rng, NOW);
    let cmd = UpdateCommand::DeviceAuthenticate {
        mode: AuthMode::Private { server_key: s.identity_public_key().to_bytes() },
        challenge: Some(challenge),
    };
    let r = send(&mut card, &cmd.to_command());
    assert_eq!(r.sw, StatusWord::SUCCESS);
    let auth = s.authenticate_private(&challenge, &r.data, NOW).unwrap();
    assert_eq!(auth.card_id, CARD_ID);
    assert!(auth.private);
    // Wrapped for delivery: the card id the package names is not visible to the terminal.
    let (seq, wrapped) = s.deliverable(&mut rng, &auth).unwrap().remove(0);
    assert_eq!(seq, 1);
    assert!(wrapped.starts_with(b"TUW1"));
    assert!(!wrapped.windows(CARD_ID.len()).any(|w| w == CARD_ID));
    assert!(s.pending(&auth)[0].bytes.windows(CARD_ID.len()).any(|w| w == CARD_ID));
    let receipt = deliver(&mut card, &wrapped);
    assert_eq!(receipt.sw, StatusWord::SUCCESS);
    s.accept_receipt(&auth, &receipt.data).unwrap();
    assert_eq!(read(&mut card, b"wifi"), b"private-pw");
    // Replayed sealed identity.
    assert_eq!(s.authenticate_private(&challenge, &r.data, NOW), Err(UpdateError::Challenge));
    // Tampered.
    let c = s.challenge(&mut rng, NOW);
    let cmd = UpdateCommand::DeviceAuthenticate {
        mode: AuthMode::Private { server_key: s.identity_public_key().to_bytes() },
        challenge: Some(c),
    };
    let mut sealed = send(&mut card, &cmd.to_command()).data;
    sealed[80] ^= 1;
    assert_eq!(s.authenticate_private(&c, &sealed, NOW), Err(UpdateError::SealedIdentity));
}

#[test]
fn an_interrupted_delivery_is_redelivered_and_applied_exactly_once() {
    let mut rng = SeededRng::from_u64(5);
    let mut s = service();
    let mut card = issued_card(CARD_ID, 5);
    register(&mut s, &mut card, CARD_ID);
    s.queue(&mut rng, CARD_ID, b"wifi", b"pw-1", Mode::Apply, ReadRule::Pin).unwrap();
    // First session: the card applies, the receipt is lost on the way back.
    pin(&mut card);
    let c = s.challenge(&mut rng, NOW);
    let answer = device_auth(&mut card, c);
    let auth = s.authenticate(CARD_ID, &c, &answer, NOW).unwrap();
    let p = s.pending(&auth).remove(0);
    let lost = deliver(&mut card, &p.bytes);
    assert_eq!(lost.sw, StatusWord::SUCCESS);
    assert_eq!(s.store().pending(CARD_ID).len(), 1, "not delivered without a receipt");
    // Next session: redelivered, acknowledged without a second application (no commit).
    pin(&mut card);
    let c = s.challenge(&mut rng, NOW);
    let answer = device_auth(&mut card, c);
    let auth = s.authenticate(CARD_ID, &c, &answer, NOW).unwrap();
    let generation = card.generation();
    assert_eq!(auth.last_sequence, 1);
    let p = s.pending(&auth).remove(0);
    let r = deliver(&mut card, &p.bytes);
    assert_eq!(Receipt::parse(&r.data).unwrap().outcome, Outcome::AlreadyApplied);
    assert_eq!(card.generation(), generation);
    assert_eq!(s.accept_receipt(&auth, &r.data), Ok(1));
    assert!(s.store().pending(CARD_ID).is_empty());
    // The late first receipt arriving now changes nothing.
    assert_eq!(s.accept_receipt(&auth, &lost.data), Err(UpdateError::ReceiptMismatch));
}

#[test]
fn forged_or_foreign_receipts_are_refused() {
    let mut rng = SeededRng::from_u64(6);
    let mut s = service();
    let mut a = issued_card(CARD_ID, 6);
    let mut b = issued_card(CARD_B, 7);
    register(&mut s, &mut a, CARD_ID);
    register(&mut s, &mut b, CARD_B);
    s.queue(&mut rng, CARD_ID, b"wifi", b"a", Mode::Apply, ReadRule::Pin).unwrap();
    s.queue(&mut rng, CARD_B, b"wifi", b"b", Mode::Apply, ReadRule::Pin).unwrap();
    pin(&mut a);
    let c = s.challenge(&mut rng, NOW);
    let answer = device_auth(&mut a, c);
    let auth_a = s.authenticate(CARD_ID, &c, &answer, NOW).unwrap();
    pin(&mut b);
    let c = s.challenge(&mut rng, NOW);
    let answer = device_auth(&mut b, c);
    let auth_b = s.authenticate(CARD_B, &c, &answer, NOW).unwrap();
    let receipt_b = deliver(&mut b, &s.pending(&auth_b)[0].bytes).data;
    // B's receipt offered for A: digest of another package.
    assert_eq!(s.accept_receipt(&auth_a, &receipt_b), Err(UpdateError::ReceiptMismatch));
    // A's receipt with a bad signature.
    let mut receipt_a =
        Receipt::parse(&deliver(&mut a, &s.pending(&auth_a)[0].bytes).data).unwrap();
    receipt_a.signature[5] ^= 1;
    assert_eq!(
        s.accept_receipt(&auth_a, &receipt_a.to_bytes()),
        Err(UpdateError::ReceiptSignature)
    );
    assert_eq!(s.store().pending(CARD_ID).len(), 1);
    assert_eq!(s.accept_receipt(&auth_b, &receipt_b), Ok(1));
}

#[test]
fn a_rolled_back_image_is_detected() {
    let mut rng = SeededRng::from_u64(8);
    let mut s = service();
    // Two images of the same card (same seed: the same keys): a copy kept aside.
    let mut card = issued_card(CARD_ID, 9);
    let mut copy = issued_card(CARD_ID, 9);
    register(&mut s, &mut card, CARD_ID);
    s.queue(&mut rng, CARD_ID, b"wifi", b"new", Mode::Apply, ReadRule::Pin).unwrap();
    assert_eq!(session(&mut s, &mut card, CARD_ID, &mut rng), vec![1]);
    pin(&mut copy);
    let c = s.challenge(&mut rng, NOW);
    let answer = device_auth(&mut copy, c);
    assert_eq!(
        s.authenticate(CARD_ID, &c, &answer, NOW),
        Err(UpdateError::RolledBack { reported: 0, acknowledged: 1 })
    );
}

#[test]
fn registration_checks_the_device_certificate_and_the_update_key_proof() {
    let mut s = service();
    let mut card = issued_card(CARD_ID, 10);
    let cert = device_certificate(&mut card);
    let answer = update_key_answer(&mut card);
    // Wrong nonce: the proof does not verify.
    assert_eq!(
        s.register_card("test", CARD_ID, cert.clone(), &[0; 16], &answer, NOW as i64),
        Err(UpdateError::UpdateKeyProof)
    );
    // Registered under another card id.
    assert!(matches!(
        s.register_card("test", CARD_B, cert.clone(), &KEY_NONCE, &answer, NOW as i64),
        Err(UpdateError::DeviceCertificate(_))
    ));
    // An issuer whose CA did not issue the certificate (claims 3, 12).
    let other_key = SigningKey::generate(&mut SeededRng::from_u64(0x07));
    let validity = Validity { not_before: PKI_T0, not_after: PKI_T0 + 86400 * 3650 };
    let other_ca = x509::self_signed_ca(&other_key, "other CA", &[1], validity).unwrap();
    s.add_issuer(IssuerKeys {
        id: "other".into(),
        ca: other_ca,
        package_signer: Box::new(other_key),
    });
    assert!(matches!(
        s.register_card("other", CARD_ID, cert.clone(), &KEY_NONCE, &answer, NOW as i64),
        Err(UpdateError::DeviceCertificate(_))
    ));
    // Expired at registration time.
    assert!(matches!(
        s.register_card("test", CARD_ID, cert.clone(), &KEY_NONCE, &answer, PKI_T0 + 86400 * 4000),
        Err(UpdateError::DeviceCertificate(_))
    ));
    s.register_card("test", CARD_ID, cert, &KEY_NONCE, &answer, NOW as i64).unwrap();
    // Queue refuses bad input without consuming a sequence.
    let mut rng = SeededRng::from_u64(11);
    assert!(s.queue(&mut rng, CARD_ID, b"", b"x", Mode::Apply, ReadRule::Free).is_err());
    assert!(
        s.queue(
            &mut rng,
            CARD_ID,
            b"big",
            &vec![0; MAX_OBJECT_LEN + 1],
            Mode::Apply,
            ReadRule::Free
        )
        .is_err()
    );
    assert!(matches!(
        s.queue(&mut rng, CARD_B, b"x", b"x", Mode::Apply, ReadRule::Free),
        Err(UpdateError::UnknownCard(_))
    ));
    assert_eq!(s.queue(&mut rng, CARD_ID, b"x", b"x", Mode::Apply, ReadRule::Free), Ok(1));
}
