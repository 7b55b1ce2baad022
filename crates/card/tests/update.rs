#![allow(clippy::unwrap_used)] // tests may unwrap

//! The update applet at the APDU level: the Fig. 2 chain (PIN, device authentication,
//! packages), both package modes, receipts, the privacy and legacy variants, large objects,
//! and every attack of issue 5 a card alone can refuse.

mod common;

use common::Plain;
use tessera_apdu::{Command, Response, StatusWord};
use tessera_card::Card;
use tessera_card::applets::isd::scenarios::{self as isd_sc, CARD_ID};
use tessera_card::applets::update::scenarios::{
    self as sc, CHALLENGE, Issued, STATIC_AUTH, make_package, open_chain, package_signer,
};
use tessera_card::applets::update::{
    AID, NOT_AUTHENTICATED, PIN_REQUIRED, SIGNATURE_INVALID, STALE_SEQUENCE, UNDECRYPTABLE,
    WRONG_CARD,
};
use tessera_card::script::Script;
use tessera_crypto::device::{self, Purpose};
use tessera_crypto::ecdsa::{Signature, SigningKey};
use tessera_crypto::hash::sha256;
use tessera_crypto::hpke::{self, HpkePrivateKey};
use tessera_crypto::rng::SeededRng;
use tessera_proto::update::{
    self as proto, AuthMode, Challenge, DeviceAuthResponse, Mode, ObjectDefinition, Outcome,
    Package, ReadRule, Receipt, SealedIdentity, Status, UpdateCommand,
};

const CARD_B: &[u8] = b"TESSERA-TEST-0002";

fn blank(seed: u64) -> Card {
    let mut card = Card::in_memory(
        tessera_card::CardOptions::default().rng(Box::new(SeededRng::from_u64(seed))),
    );
    card.power_on();
    card
}

fn objects() -> Vec<ObjectDefinition> {
    vec![
        ObjectDefinition { rule: ReadRule::Pin, name: b"wifi".to_vec(), value: b"old".to_vec() },
        ObjectDefinition { rule: ReadRule::Free, name: b"dialup".to_vec(), value: b"555".to_vec() },
    ]
}

fn issued(card_id: &[u8], seed: u64, legacy: bool) -> (Card, Issued) {
    let mut c = blank(seed);
    let i = sc::issue(&mut Script::new(&mut Plain(&mut c)), card_id, &objects(), legacy).unwrap();
    (c, i)
}

fn send(card: &mut Card, cmd: &UpdateCommand) -> Response {
    Response::parse(&card.transmit(&cmd.to_command().to_bytes().unwrap())).unwrap()
}

fn chain(card: &mut Card) -> DeviceAuthResponse {
    open_chain(&mut Script::new(&mut Plain(card))).unwrap()
}

fn load(card: &mut Card, package: &Package) -> Response {
    sc::load(&mut Script::new(&mut Plain(card)), &package.to_bytes()).unwrap()
}

/// DEVICE AUTHENTICATE again, then [`load`]: any refusal ends the device authentication (the
/// card stops a batch at its first refusal), so each attempt after one needs it.
fn authed_load(card: &mut Card, package: &Package) -> Response {
    let auth =
        UpdateCommand::DeviceAuthenticate { mode: AuthMode::Plain, challenge: Some(CHALLENGE) };
    assert_eq!(send(card, &auth).sw, StatusWord::SUCCESS);
    load(card, package)
}

/// READ OBJECT with an extended Le of 65536 (in process there is no frame limit, so the whole
/// value comes in one answer; hosts use `READ_LE` and GET RESPONSE).
fn read(card: &mut Card, name: &[u8]) -> Response {
    let cmd = UpdateCommand::ReadObject(name.to_vec()).to_command().with_le(65536);
    Response::parse(&card.transmit(&cmd.to_bytes().unwrap())).unwrap()
}

fn status(card: &mut Card) -> Status {
    let r = send(card, &UpdateCommand::GetData(proto::TAG_STATUS));
    assert_eq!(r.sw, StatusWord::SUCCESS);
    Status::parse(&r.data).unwrap()
}

fn package_for(issued: &Issued, card_id: &[u8], seq: u64, mode: Mode, value: &[u8]) -> Package {
    let mut rng = SeededRng::from_u64(1000 + seq);
    make_package(
        &mut rng,
        &package_signer(),
        &issued.update_key,
        card_id,
        seq,
        mode,
        ReadRule::Pin,
        b"wifi",
        value,
    )
    .unwrap()
}

fn power_cycle_and_select(card: &mut Card) {
    card.power_off();
    card.power_on();
    Script::new(&mut Plain(card)).select(AID).unwrap();
}

#[test]
fn apply_updates_the_object_and_returns_a_signed_receipt() {
    let (mut card, issued) = issued(CARD_ID, 1, false);
    let auth = chain(&mut card);
    assert_eq!(auth.last_sequence, 0);
    // The server checks the device signature over its challenge (claim 8).
    let body = proto::auth_body(&CHALLENGE, 0);
    let sig = Signature::from_bytes(&auth.signature).unwrap();
    device::verify(&issued.device_key, Purpose::DeviceAuthentication, CARD_ID, &body, &sig)
        .unwrap();
    // Bound to the challenge: another nonce does not verify (a replayed signature fails).
    let other = Challenge { nonce: [0; 32], ..CHALLENGE };
    assert!(
        device::verify(
            &issued.device_key,
            Purpose::DeviceAuthentication,
            CARD_ID,
            &proto::auth_body(&other, 0),
            &sig
        )
        .is_err()
    );

    assert_eq!(read(&mut card, b"wifi").data, b"old");
    let p = package_for(&issued, CARD_ID, 1, Mode::Apply, b"new-password");
    let r = load(&mut card, &p);
    assert_eq!(r.sw, StatusWord::SUCCESS);
    let receipt = Receipt::parse(&r.data).unwrap();
    assert_eq!(receipt.outcome, Outcome::Applied);
    assert_eq!(receipt.sequence, 1);
    assert_eq!(receipt.digest, sha256(&p.to_bytes()));
    device::verify(
        &issued.device_key,
        Purpose::DeviceAuthentication,
        CARD_ID,
        &Receipt::body(1, &receipt.digest),
        &Signature::from_bytes(&receipt.signature).unwrap(),
    )
    .unwrap();
    assert_eq!(read(&mut card, b"wifi").data, b"new-password");
    assert_eq!(status(&mut card).last_sequence, 1);
    // Applied in the clear: the image holds the new value.
    let state = card.persistent_state();
    assert!(state.windows(12).any(|w| w == b"new-password"));

    // After a power cycle the PIN object needs the PIN again, the free one does not.
    power_cycle_and_select(&mut card);
    assert_eq!(read(&mut card, b"wifi").sw, PIN_REQUIRED);
    assert_eq!(read(&mut card, b"dialup").data, b"555");
    assert_eq!(read(&mut card, b"nothing").sw, StatusWord::REFERENCED_DATA_NOT_FOUND);
}

#[test]
fn sealed_mode_keeps_the_value_sealed_and_decrypts_on_every_read() {
    let (mut card, issued) = issued(CARD_ID, 2, false);
    chain(&mut card);
    let secret = b"sealed-sso-token-0123456789";
    let p = package_for(&issued, CARD_ID, 5, Mode::Sealed, secret);
    assert_eq!(load(&mut card, &p).sw, StatusWord::SUCCESS);
    let state = card.persistent_state();
    assert!(!state.windows(secret.len()).any(|w| w == secret), "plaintext in the image");
    assert!(state.windows(p.sealed.len()).any(|w| w == p.sealed.as_slice()));
    for _ in 0..2 {
        assert_eq!(read(&mut card, b"wifi").data, secret);
    }
    power_cycle_and_select(&mut card);
    assert_eq!(read(&mut card, b"wifi").sw, PIN_REQUIRED);
}

#[test]
fn a_package_for_card_a_fails_on_card_b() {
    let (_, issued_a) = issued(CARD_ID, 3, false);
    let (mut b, issued_b) = issued(CARD_B, 4, false);
    chain(&mut b);
    let before = b.persistent_state();
    // Delivered as is: names card A.
    let for_a = package_for(&issued_a, CARD_ID, 1, Mode::Apply, b"a-secret");
    assert_eq!(authed_load(&mut b, &for_a).sw, WRONG_CARD);
    // Its card id rewritten to B: the signature no longer verifies.
    let mut retargeted = for_a.clone();
    retargeted.card_id = CARD_B.to_vec();
    assert_eq!(authed_load(&mut b, &retargeted).sw, SIGNATURE_INVALID);
    // Even signed for B by the issuer, a value sealed to A's key does not open on B.
    let mut resigned = retargeted.clone();
    resigned.signature = package_signer().sign(&resigned.signed_message()).to_bytes();
    assert_eq!(authed_load(&mut b, &resigned).sw, UNDECRYPTABLE);
    assert_eq!(b.persistent_state(), before);
    assert_eq!(read(&mut b, b"wifi").data, b"old");
    // B's own package applies.
    let for_b = package_for(&issued_b, CARD_B, 1, Mode::Apply, b"b-secret");
    assert_eq!(authed_load(&mut b, &for_b).sw, StatusWord::SUCCESS);
}

#[test]
fn wrong_signature_card_id_or_sequence_and_forgeries_are_refused() {
    let (mut card, issued) = issued(CARD_ID, 5, false);
    chain(&mut card);
    let good = package_for(&issued, CARD_ID, 3, Mode::Apply, b"v3");
    let before = card.persistent_state();

    let mut bad_sig = good.clone();
    bad_sig.signature[10] ^= 1;
    assert_eq!(authed_load(&mut card, &bad_sig).sw, SIGNATURE_INVALID);
    let mut bad_seq = good.clone();
    bad_seq.sequence = 4;
    assert_eq!(authed_load(&mut card, &bad_seq).sw, SIGNATURE_INVALID);
    let mut bad_value = good.clone();
    bad_value.sealed[70] ^= 1;
    assert_eq!(authed_load(&mut card, &bad_value).sw, SIGNATURE_INVALID);

    // Forged with the card's public update key alone, signed by someone else's key (or by the
    // CA key, which is not the package-signing key).
    let mut rng = SeededRng::from_u64(99);
    let forger = SigningKey::generate(&mut rng);
    let forged = make_package(
        &mut rng,
        &forger,
        &issued.update_key,
        CARD_ID,
        9,
        Mode::Apply,
        ReadRule::Free,
        b"wifi",
        b"attacker",
    )
    .unwrap();
    assert_eq!(authed_load(&mut card, &forged).sw, SIGNATURE_INVALID);
    let (ca_key, _, _) = isd_sc::issuer_pki().unwrap();
    let mut by_ca = forged.clone();
    by_ca.signature = ca_key.sign(&by_ca.signed_message()).to_bytes();
    assert_eq!(authed_load(&mut card, &by_ca).sw, SIGNATURE_INVALID);

    // Signed by the issuer but the value sealed under another object's info: no decryption.
    let mut rng = SeededRng::from_u64(7);
    let mut moved = make_package(
        &mut rng,
        &package_signer(),
        &issued.update_key,
        CARD_ID,
        3,
        Mode::Apply,
        ReadRule::Pin,
        b"dialup",
        b"x",
    )
    .unwrap();
    moved.name = b"wifi".to_vec();
    moved.signature = package_signer().sign(&moved.signed_message()).to_bytes();
    assert_eq!(authed_load(&mut card, &moved).sw, UNDECRYPTABLE);
    // Malformed.
    let mut bytes = good.to_bytes();
    bytes.truncate(40);
    let auth =
        UpdateCommand::DeviceAuthenticate { mode: AuthMode::Plain, challenge: Some(CHALLENGE) };
    assert_eq!(send(&mut card, &auth).sw, StatusWord::SUCCESS);
    let r = sc::load(&mut Script::new(&mut Plain(&mut card)), &bytes).unwrap();
    assert_eq!(r.sw, StatusWord::WRONG_LENGTH);

    assert_eq!(card.persistent_state(), before);
    assert_eq!(authed_load(&mut card, &good).sw, StatusWord::SUCCESS);
}

#[test]
fn replays_and_reordering_are_refused_and_redelivery_is_acknowledged_once() {
    let (mut card, issued) = issued(CARD_ID, 6, false);
    chain(&mut card);
    let p1 = package_for(&issued, CARD_ID, 1, Mode::Apply, b"password-1");
    let p2 = package_for(&issued, CARD_ID, 2, Mode::Apply, b"password-2");
    let p3 = package_for(&issued, CARD_ID, 3, Mode::Apply, b"password-3");
    assert_eq!(authed_load(&mut card, &p1).sw, StatusWord::SUCCESS);
    assert_eq!(authed_load(&mut card, &p3).sw, StatusWord::SUCCESS);
    // Reordered: 2 after 3.
    assert_eq!(authed_load(&mut card, &p2).sw, STALE_SEQUENCE);
    // The old password coming back.
    assert_eq!(authed_load(&mut card, &p1).sw, STALE_SEQUENCE);
    assert_eq!(read(&mut card, b"wifi").data, b"password-3");
    // The last package again (its receipt was lost): acknowledged, nothing changes.
    let generation = card.generation();
    let r = authed_load(&mut card, &p3);
    assert_eq!(r.sw, StatusWord::SUCCESS);
    let receipt = Receipt::parse(&r.data).unwrap();
    assert_eq!((receipt.outcome, receipt.sequence), (Outcome::AlreadyApplied, 3));
    assert_eq!(card.generation(), generation);
    // A different package reusing sequence 3 is a replay, not a redelivery.
    let other3 = package_for(&issued, CARD_ID, 3, Mode::Apply, b"evil");
    assert_eq!(authed_load(&mut card, &other3).sw, STALE_SEQUENCE);
    assert_eq!(read(&mut card, b"wifi").data, b"password-3");
}

#[test]
fn the_chain_is_enforced_in_order() {
    let (mut card, issued) = issued(CARD_ID, 8, false);
    let p = package_for(&issued, CARD_ID, 1, Mode::Apply, b"v");
    let auth =
        UpdateCommand::DeviceAuthenticate { mode: AuthMode::Plain, challenge: Some(CHALLENGE) };
    power_cycle_and_select(&mut card);
    // Before the PIN: neither device authentication nor an update.
    assert_eq!(send(&mut card, &auth).sw, PIN_REQUIRED);
    assert_eq!(load(&mut card, &p).sw, PIN_REQUIRED);
    // PIN verified, device authentication not yet done.
    let mut plain = Plain(&mut card);
    let mut s = Script::new(&mut plain);
    s.select(tessera_card::applets::isd::AID).unwrap();
    let pin = tessera_card::pin::PinBlock::from_value(isd_sc::PIN).unwrap();
    s.expect(
        &Command::new(0x00, 0x20, 0x00, 0x81).with_data(pin.as_bytes().to_vec()),
        StatusWord::SUCCESS,
    )
    .unwrap();
    s.select(AID).unwrap();
    assert_eq!(load(&mut card, &p).sw, NOT_AUTHENTICATED);
    assert_eq!(send(&mut card, &auth).sw, StatusWord::SUCCESS);
    // Re-selecting the applet ends the authenticated state.
    Script::new(&mut Plain(&mut card)).select(AID).unwrap();
    assert_eq!(load(&mut card, &p).sw, NOT_AUTHENTICATED);
    assert_eq!(status(&mut card).last_sequence, 0);
    assert_eq!(send(&mut card, &auth).sw, StatusWord::SUCCESS);
    // Segments out of order.
    let bytes = p.to_bytes();
    let part = |seg: u8, last: bool, data: &[u8]| UpdateCommand::LoadPackage {
        segment: seg,
        last,
        data: data.to_vec(),
    };
    assert_eq!(send(&mut card, &part(0, false, &bytes[..50])).sw, StatusWord::SUCCESS);
    assert_eq!(send(&mut card, &part(2, true, &bytes[50..])).sw, StatusWord::INCORRECT_P1P2);
    // Any refusal ends the device authentication (a batch stops at its first refusal).
    assert_eq!(send(&mut card, &part(1, true, &bytes[50..])).sw, NOT_AUTHENTICATED);
    assert_eq!(send(&mut card, &auth).sw, StatusWord::SUCCESS);
    assert_eq!(send(&mut card, &part(0, false, &bytes[..50])).sw, StatusWord::SUCCESS);
    assert_eq!(send(&mut card, &part(1, true, &bytes[50..])).sw, StatusWord::SUCCESS);
    assert_eq!(read(&mut card, b"wifi").data, b"v");
}

#[test]
fn privacy_variant_seals_the_card_id_to_the_server() {
    let (mut card, issued) = issued(CARD_ID, 9, false);
    chain(&mut card);
    let server = HpkePrivateKey::generate(&mut SeededRng::from_u64(77));
    let cmd = UpdateCommand::DeviceAuthenticate {
        mode: AuthMode::Private { server_key: server.public_key().to_bytes() },
        challenge: Some(CHALLENGE),
    };
    let r = send(&mut card, &cmd);
    assert_eq!(r.sw, StatusWord::SUCCESS);
    assert!(!r.data.windows(CARD_ID.len()).any(|w| w == CARD_ID), "card id visible");
    let plain = hpke::open(&server, proto::IDENTITY_INFO, &CHALLENGE.to_bytes(), &r.data).unwrap();
    let id = SealedIdentity::parse(&plain).unwrap();
    assert_eq!(id.card_id, CARD_ID);
    device::verify(
        &issued.device_key,
        Purpose::DeviceAuthentication,
        CARD_ID,
        &proto::auth_body(&CHALLENGE, 0),
        &Signature::from_bytes(&id.auth.signature).unwrap(),
    )
    .unwrap();
    // Opened under another challenge (aad) it fails: bound to this session.
    let other = Challenge { expires: 1, ..CHALLENGE };
    assert!(hpke::open(&server, proto::IDENTITY_INFO, &other.to_bytes(), &r.data).is_err());
    // Packages wrapped for delivery (privacy variant) open only on this card.
    let p = package_for(&issued, CARD_ID, 1, Mode::Apply, b"wrapped");
    let wrap = |key: &tessera_crypto::hpke::HpkePublicKey, bytes: &[u8]| {
        let sealed = hpke::seal_with_rng(
            &mut SeededRng::from_u64(5),
            key,
            proto::DELIVERY_INFO,
            proto::DELIVERY_MAGIC,
            bytes,
        )
        .unwrap();
        [&proto::DELIVERY_MAGIC[..], &sealed].concat()
    };
    let (_, other) = crate::issued(CARD_B, 30, false);
    let before = card.persistent_state();
    let load_raw = |card: &mut Card, bytes: &[u8]| {
        sc::load(&mut Script::new(&mut Plain(card)), bytes).unwrap().sw
    };
    let auth =
        UpdateCommand::DeviceAuthenticate { mode: AuthMode::Plain, challenge: Some(CHALLENGE) };
    assert_eq!(load_raw(&mut card, &wrap(&other.update_key, &p.to_bytes())), UNDECRYPTABLE);
    let mut tampered = wrap(&issued.update_key, &p.to_bytes());
    tampered[100] ^= 1;
    assert_eq!(send(&mut card, &auth).sw, StatusWord::SUCCESS);
    assert_eq!(load_raw(&mut card, &tampered), UNDECRYPTABLE);
    assert_eq!(card.persistent_state(), before);
    let wrapped = wrap(&issued.update_key, &p.to_bytes());
    assert_eq!(send(&mut card, &auth).sw, StatusWord::SUCCESS);
    assert_eq!(load_raw(&mut card, &wrapped), StatusWord::SUCCESS);
    assert_eq!(read(&mut card, b"wifi").data, b"wrapped");
    // The terminal can still check the issuer: the CA certificate is readable.
    let ca = send(&mut card, &UpdateCommand::GetData(proto::TAG_ISSUER_CA));
    assert_eq!(ca.data, isd_sc::issuer_pki().unwrap().1.der());
}

#[test]
fn static_authenticator_only_on_legacy_cards() {
    let stat = UpdateCommand::DeviceAuthenticate { mode: AuthMode::LegacyStatic, challenge: None };
    let (mut card, _) = issued(CARD_ID, 10, false);
    chain(&mut card);
    assert_eq!(send(&mut card, &stat).sw, StatusWord::CONDITIONS_NOT_SATISFIED);
    assert!(!status(&mut card).legacy_static);
    let (mut legacy, issued) = issued(CARD_ID, 11, true);
    chain(&mut legacy);
    assert!(status(&mut legacy).legacy_static);
    Script::new(&mut Plain(&mut legacy)).select(AID).unwrap();
    let r = send(&mut legacy, &stat);
    assert_eq!((r.sw, r.data.as_slice()), (StatusWord::SUCCESS, &STATIC_AUTH[..]));
    // It satisfies the chain (that is why it is legacy only).
    let p = package_for(&issued, CARD_ID, 1, Mode::Apply, b"v");
    assert_eq!(load(&mut legacy, &p).sw, StatusWord::SUCCESS);
}

#[test]
fn a_64_kib_object_travels_in_segments_and_iso_chains() {
    let (mut card, issued) = issued(CARD_ID, 12, false);
    chain(&mut card);
    let value: Vec<u8> = (0..proto::MAX_OBJECT_LEN).map(|i| (i * 7 % 251) as u8).collect();
    let p = package_for(&issued, CARD_ID, 1, Mode::Sealed, &value);
    assert!(p.to_bytes().len() > 65535);
    assert_eq!(load(&mut card, &p).sw, StatusWord::SUCCESS);
    assert_eq!(read(&mut card, b"wifi").data, value);
    // A second package in ISO command chains of short APDUs (CLA b5), as a short-only reader
    // sends them.
    let value2 = vec![0xEE; 3000];
    let p2 = package_for(&issued, CARD_ID, 2, Mode::Apply, &value2);
    let full = UpdateCommand::LoadPackage { segment: 0, last: true, data: p2.to_bytes() };
    let cmd = full.to_command();
    let parts: Vec<&[u8]> = cmd.data.chunks(255).collect();
    let mut answer = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let mut c = Command::new(if last { 0x80 } else { 0x90 }, cmd.ins, cmd.p1, cmd.p2)
            .with_data(part.to_vec());
        if last {
            c = c.with_le(256);
        }
        answer = card.transmit(&c.to_bytes().unwrap());
    }
    let r = Response::parse(&answer).unwrap();
    assert_eq!(r.sw, StatusWord::SUCCESS);
    assert_eq!(Receipt::parse(&r.data).unwrap().sequence, 2);
    assert_eq!(read(&mut card, b"wifi").data, value2);
}

#[test]
fn update_key_is_vouched_for_by_the_device_key_and_distinct_from_it() {
    let (mut card, issued) = issued(CARD_ID, 13, false);
    Script::new(&mut Plain(&mut card)).select(AID).unwrap();
    let r = send(&mut card, &UpdateCommand::GetData(proto::TAG_UPDATE_KEY));
    assert!(sc::check_update_key(&issued.device_key, CARD_ID, &sc::KEY_NONCE, &r.data).is_some());
    assert!(sc::check_update_key(&issued.device_key, CARD_B, &sc::KEY_NONCE, &r.data).is_none());
    assert!(sc::check_update_key(&issued.device_key, CARD_ID, &[0; 16], &r.data).is_none());
    assert_ne!(issued.update_key.to_bytes(), issued.device_key.to_sec1_bytes());
    let dir = send(&mut card, &UpdateCommand::GetData(proto::TAG_DIRECTORY)).data;
    assert_eq!(dir, [&[0u8, 6][..], b"dialup", &[1, 4], b"wifi"].concat());
}

#[test]
fn an_unissued_applet_refuses_everything_cleanly() {
    let mut card = blank(14);
    Script::new(&mut Plain(&mut card)).select(AID).unwrap();
    assert_eq!(
        send(&mut card, &UpdateCommand::GetData(proto::TAG_UPDATE_KEY)).sw,
        StatusWord::REFERENCED_DATA_NOT_FOUND
    );
    let auth =
        UpdateCommand::DeviceAuthenticate { mode: AuthMode::Plain, challenge: Some(CHALLENGE) };
    assert_eq!(send(&mut card, &auth).sw, PIN_REQUIRED);
    assert_eq!(
        status(&mut card),
        Status { last_sequence: 0, has_key: false, legacy_static: false, objects: 0 }
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Arbitrary update-applet commands and damaged packages on an authenticated card:
        /// never a panic, and whatever is refused changes nothing.
        #[test]
        fn refused_commands_and_damaged_packages_change_nothing(
            cmds in proptest::collection::vec(
                (prop::sample::select(vec![0xCAu8, 0x88, 0xE8, 0xB0, 0x00, 0x20]), any::<u8>(), any::<u8>(),
                 proptest::collection::vec(any::<u8>(), 0..200)),
                1..12),
            flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4),
        ) {
            let (mut card, issued) = issued(CARD_ID, 20, false);
            chain(&mut card);
            for (ins, p1, p2, data) in cmds {
                let before = card.persistent_state();
                let cmd = Command::new(0x80, ins, p1, p2).with_data(data).with_le(256);
                let out = card.transmit(&cmd.to_bytes().unwrap());
                let r = Response::parse(&out).unwrap();
                if r.sw != StatusWord::SUCCESS {
                    prop_assert_eq!(card.persistent_state(), before);
                }
            }
            // Re-authenticate (a refused command may have dropped nothing, but be sure).
            chain(&mut card);
            let good = package_for(&issued, CARD_ID, 1, Mode::Apply, b"value").to_bytes();
            let mut bad = good.clone();
            for (at, x) in flips {
                let at = at % bad.len();
                bad[at] ^= x;
            }
            let before = card.persistent_state();
            let r = sc::load(&mut Script::new(&mut Plain(&mut card)), &bad).unwrap();
            prop_assert_ne!(r.sw, StatusWord::SUCCESS);
            prop_assert_eq!(card.persistent_state(), before);
            // The refusal ended the device authentication: the good package needs a new one.
            prop_assert_eq!(load(&mut card, &Package::parse(&good).unwrap()).sw, NOT_AUTHENTICATED);
            chain(&mut card);
            let r = sc::load(&mut Script::new(&mut Plain(&mut card)), &good).unwrap();
            prop_assert_eq!(r.sw, StatusWord::SUCCESS);
        }
    }
}

#[test]
fn the_card_holds_at_most_max_objects() {
    let (mut card, issued) = issued(CARD_ID, 40, false);
    chain(&mut card);
    // Two objects from issuance; fill up to the limit.
    let mut seq = 0;
    for i in 0..proto::MAX_OBJECTS - 2 {
        seq += 1;
        let name = format!("obj-{i}");
        let p = make_package(
            &mut SeededRng::from_u64(seq),
            &package_signer(),
            &issued.update_key,
            CARD_ID,
            seq,
            Mode::Apply,
            ReadRule::Free,
            name.as_bytes(),
            b"v",
        )
        .unwrap();
        assert_eq!(load(&mut card, &p).sw, StatusWord::SUCCESS, "{name}");
    }
    assert_eq!(status(&mut card).objects as usize, proto::MAX_OBJECTS);
    let before = card.persistent_state();
    let extra = make_package(
        &mut SeededRng::from_u64(99),
        &package_signer(),
        &issued.update_key,
        CARD_ID,
        seq + 1,
        Mode::Apply,
        ReadRule::Free,
        b"one-too-many",
        b"v",
    )
    .unwrap();
    assert_eq!(load(&mut card, &extra).sw, StatusWord::NOT_ENOUGH_MEMORY);
    assert_eq!(card.persistent_state(), before);
    // Replacing an existing object still works at the limit.
    let p = package_for(&issued, CARD_ID, seq + 1, Mode::Apply, b"replaced");
    assert_eq!(authed_load(&mut card, &p).sw, StatusWord::SUCCESS);
}

#[test]
fn the_update_key_is_not_replaced_while_sealed_values_depend_on_it() {
    use tessera_crypto::scp03::SecurityLevel;
    let (mut card, issued) = issued(CARD_ID, 41, false);
    chain(&mut card);
    let p = package_for(&issued, CARD_ID, 1, Mode::Sealed, b"sealed");
    assert_eq!(load(&mut card, &p).sw, StatusWord::SUCCESS);
    let mut plain = Plain(&mut card);
    let mut s = Script::new(&mut plain);
    s.select(tessera_card::applets::isd::AID).unwrap();
    s.open_session(&isd_sc::issued_keys(), SecurityLevel::CMacCDec).unwrap();
    sc::install_for_personalization(&mut s).unwrap();
    let data = isd_sc::dgi_data(&[(proto::DGI_GENERATE_KEY, &sc::KEY_NONCE)]);
    s.secure(
        &Command::new(0x80, 0xE2, 0x88, 0x00).with_data(data),
        StatusWord::CONDITIONS_NOT_SATISFIED,
    )
    .unwrap();
    power_cycle_and_select(&mut card);
    let pin = tessera_card::pin::PinBlock::from_value(isd_sc::PIN).unwrap();
    let mut plain = Plain(&mut card);
    let mut s = Script::new(&mut plain);
    s.select(tessera_card::applets::isd::AID).unwrap();
    s.expect(
        &Command::new(0x00, 0x20, 0x00, 0x81).with_data(pin.as_bytes().to_vec()),
        StatusWord::SUCCESS,
    )
    .unwrap();
    s.select(AID).unwrap();
    assert_eq!(read(&mut card, b"wifi").data, b"sealed");
}

#[test]
fn a_batch_stops_at_the_first_refusal() {
    // Packages 1, 2 (altered: refused) and 3 sent in one batch, as the server does: 1
    // applies, 2 is refused, and 3, although valid, is refused too (6985): nothing applies
    // past the gap until a new device authentication.
    let (mut card, issued) = issued(CARD_ID, 12, false);
    chain(&mut card);
    let p1 = package_for(&issued, CARD_ID, 1, Mode::Apply, b"one");
    let mut p2 = package_for(&issued, CARD_ID, 2, Mode::Apply, b"two");
    p2.signature[3] ^= 1;
    let p3 = package_for(&issued, CARD_ID, 3, Mode::Apply, b"three");
    assert_eq!(load(&mut card, &p1).sw, StatusWord::SUCCESS);
    assert_eq!(load(&mut card, &p2).sw, SIGNATURE_INVALID);
    assert_eq!(load(&mut card, &p3).sw, NOT_AUTHENTICATED);
    assert_eq!(status(&mut card).last_sequence, 1);
    assert_eq!(read(&mut card, b"wifi").data, b"one");
}
