//! The card-management applet: SCP03 gating, personalisation, life cycle, PINs, lockout.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Plain, SELECT_ISD, card, sw, tx};
use tessera_apdu::{Command, StatusWord};
use tessera_card::applets::isd::scenarios::{
    CARD_ID, PIN, PUK, initial_keys, issued_keys, open_initial, personalize, store,
};
use tessera_card::applets::isd::{AID, AUTH_FAILURE_LIMIT, DGI_CARD_ID, DGI_PIN};
use tessera_card::pin::PinBlock;
use tessera_card::script::{Script, put_key_data};
use tessera_card::{Card, TearError};
use tessera_crypto::scp03::SecurityLevel;

const OK: StatusWord = StatusWord::SUCCESS;

fn block(v: &[u8]) -> Vec<u8> {
    PinBlock::from_value(v).unwrap().as_bytes().to_vec()
}

fn verify(c: &mut Card, v: &[u8]) -> StatusWord {
    sw(c, &format!("0020008108{}", hex::encode(block(v))))
}

fn issued() -> Card {
    let mut c = card();
    personalize(&mut Script::new(&mut Plain(&mut c))).unwrap();
    c
}

#[test]
fn get_data_reports_life_cycle_card_id_and_keys() {
    let mut c = card();
    assert_eq!(sw(&mut c, SELECT_ISD), OK);
    assert_eq!(tx(&mut c, "00CA9F7000").data, [0x9F, 0x70, 0x01, 0x01], "OP_READY");
    assert_eq!(sw(&mut c, "00CA004500"), StatusWord::REFERENCED_DATA_NOT_FOUND, "no card id yet");
    let keys = tx(&mut c, "80CA00E000").data;
    assert_eq!(hex::encode(keys), "e012c00401308810c00402308810c00403308810");
    let cardid = {
        let mut c = issued();
        assert_eq!(sw(&mut c, SELECT_ISD), OK);
        assert_eq!(tx(&mut c, "00CA9F7000").data, [0x9F, 0x70, 0x01, 0x0F], "PERSONALIZED");
        assert_eq!(
            hex::encode(tx(&mut c, "80CA00E000").data),
            "e012c00401318810c00402318810c00403318810"
        );
        tx(&mut c, "00CA004500").data
    };
    assert_eq!(&cardid[2..], CARD_ID);
}

#[test]
fn get_status_lists_the_isd() {
    let mut c = card();
    assert_eq!(sw(&mut c, SELECT_ISD), OK);
    let r = tx(&mut c, "80F28002024F0000");
    assert_eq!(r.sw, OK);
    assert_eq!(hex::encode(r.data), "e3134f08a0000001510000009f700101c5039a0000");
    assert_eq!(sw(&mut c, "80F28002024F00"), StatusWord::bytes_remaining(0x15), "no Le: 61xx");
    assert_eq!(sw(&mut c, "80F28002034F01B100"), StatusWord::REFERENCED_DATA_NOT_FOUND);
    // The registered applications (the keyring); a prefix none has matches nothing.
    let apps = tx(&mut c, "80F24002024F0000");
    assert_eq!(apps.sw, OK);
    assert!(hex::encode(&apps.data).contains("4f0af0544553534552414b52"));
    assert_eq!(sw(&mut c, "80F24002034F01B100"), StatusWord::REFERENCED_DATA_NOT_FOUND);
    assert_eq!(sw(&mut c, "80F28000024F0000"), StatusWord::INCORRECT_P1P2, "legacy format");
    assert_eq!(sw(&mut c, "80F2200202400000"), StatusWord::INCORRECT_P1P2);
    assert_eq!(sw(&mut c, "80F28002024F0500"), StatusWord::INCORRECT_DATA);
}

#[test]
fn personalisation_needs_a_cmac_cdec_session() {
    let mut c = card();
    let mut p = Plain(&mut c);
    let mut s = Script::new(&mut p);
    s.select(AID).unwrap();
    s.open_session(&initial_keys(), SecurityLevel::CMac).unwrap();
    let data = put_key_data(&initial_keys(), &issued_keys()).unwrap();
    let put_key = Command::new(0x80, 0xD8, 0x00, 0x81).with_data(data).with_le(256);
    let r = s.secure(&put_key, StatusWord::SECURITY_STATUS_NOT_SATISFIED);
    assert!(r.is_ok(), "C-MAC only is not enough: {r:?}");
    s.open_session(&initial_keys(), SecurityLevel::CMacCDec).unwrap();
    let r = s.secure(&put_key, OK).unwrap();
    assert_eq!(r.data[0], 0x31);
    assert_eq!(r.data.len(), 1 + 9);
    // The old keys no longer open a session; the new ones do.
    let mut p = Plain(&mut c);
    let mut s = Script::new(&mut p);
    s.select(AID).unwrap();
    assert!(s.open_session(&initial_keys(), SecurityLevel::CMacCDec).is_err());
    s.open_session(&issued_keys(), SecurityLevel::Full).unwrap();
}

#[test]
fn put_key_with_a_wrong_check_value_changes_nothing() {
    let mut c = card();
    let before = c.persistent_state();
    let mut p = Plain(&mut c);
    let mut s = Script::new(&mut p);
    open_initial(&mut s).unwrap();
    let mut data = put_key_data(&initial_keys(), &issued_keys()).unwrap();
    let last = data.len() - 1;
    data[last] ^= 1;
    s.secure(
        &Command::new(0x80, 0xD8, 0x00, 0x81).with_data(data).with_le(256),
        StatusWord::INCORRECT_DATA,
    )
    .unwrap();
    // Wrong key version to replace.
    let data = put_key_data(&initial_keys(), &issued_keys()).unwrap();
    s.secure(
        &Command::new(0x80, 0xD8, 0x55, 0x81).with_data(data).with_le(256),
        StatusWord::REFERENCED_DATA_NOT_FOUND,
    )
    .unwrap();
    drop(s);
    assert_eq!(c.persistent_state(), before);
}

#[test]
fn a_mac_failure_ends_the_session() {
    let mut c = card();
    {
        let mut p = Plain(&mut c);
        let mut s = Script::new(&mut p);
        open_initial(&mut s).unwrap();
    }
    // A secured STORE DATA with a forged MAC.
    assert_eq!(
        sw(&mut c, "84E288000F010104414243440000000000000000"),
        StatusWord::SECURITY_STATUS_NOT_SATISFIED
    );
    assert_eq!(
        sw(&mut c, "84E288000F010104414243440000000000000000"),
        StatusWord::CONDITIONS_NOT_SATISFIED
    );
}

#[test]
fn life_cycle_is_enforced() {
    let mut c = card();
    let mut p = Plain(&mut c);
    let mut s = Script::new(&mut p);
    open_initial(&mut s).unwrap();
    // Not ready: no card id, PIN, PUK, and the initial keys.
    s.secure(&Command::new(0x80, 0xF0, 0x80, 0x0F), StatusWord::CONDITIONS_NOT_SATISFIED).unwrap();
    // Cannot skip to LOCKED from OP_READY.
    s.secure(&Command::new(0x80, 0xF0, 0x80, 0x7F), StatusWord::CONDITIONS_NOT_SATISFIED).unwrap();
    drop(s);

    let mut c = issued();
    let mut p = Plain(&mut c);
    let mut s = Script::new(&mut p);
    s.select(AID).unwrap();
    s.open_session(&issued_keys(), SecurityLevel::CMacCDec).unwrap();
    // PERSONALIZED: the ISD's own data groups are closed.
    let r = s.secure(
        &Command::new(0x80, 0xE2, 0x88, 0x00).with_data(vec![0x01, 0x01, 0x01, 0x41]),
        StatusWord::CONDITIONS_NOT_SATISFIED,
    );
    assert!(r.is_ok(), "{r:?}");
    s.secure(&Command::new(0x80, 0xF0, 0x80, 0x7F), OK).unwrap();
    drop(s);
    // LOCKED: PIN commands refused; GET DATA works.
    assert_eq!(sw(&mut c, SELECT_ISD), OK);
    assert_eq!(verify(&mut c, PIN), StatusWord::CONDITIONS_NOT_SATISFIED);
    assert_eq!(tx(&mut c, "00CA9F7000").data, [0x9F, 0x70, 0x01, 0x7F]);
    let mut p = Plain(&mut c);
    let mut s = Script::new(&mut p);
    s.select(AID).unwrap();
    s.open_session(&issued_keys(), SecurityLevel::CMacCDec).unwrap();
    s.secure(&Command::new(0x80, 0xF0, 0x80, 0x0F), OK).unwrap(); // unlock
    s.secure(&Command::new(0x80, 0xF0, 0x80, 0xFF), OK).unwrap(); // terminate
    s.secure(&Command::new(0x80, 0xF0, 0x80, 0x0F), StatusWord::CONDITIONS_NOT_SATISFIED).unwrap();
    drop(s);
    // TERMINATED: only GET DATA.
    assert_eq!(sw(&mut c, SELECT_ISD), OK);
    assert_eq!(tx(&mut c, "00CA9F7000").data, [0x9F, 0x70, 0x01, 0xFF]);
    assert_eq!(sw(&mut c, "8050300008000102030405060700"), StatusWord::CONDITIONS_NOT_SATISFIED);
    assert_eq!(verify(&mut c, PIN), StatusWord::CONDITIONS_NOT_SATISFIED);
}

#[test]
fn store_data_blocks_must_be_in_sequence() {
    let mut c = card();
    let mut p = Plain(&mut c);
    let mut s = Script::new(&mut p);
    open_initial(&mut s).unwrap();
    let r = s.secure(
        &Command::new(0x80, 0xE2, 0x88, 0x05).with_data(vec![0x01, 0x01, 0x01, 0x41]),
        StatusWord::INCORRECT_P1P2,
    );
    assert!(r.is_ok());
    store(&mut s, 0, false, &[(DGI_CARD_ID, b"A")]).unwrap();
    store(&mut s, 1, true, &[(DGI_CARD_ID, b"B")]).unwrap();
    // Truncated DGI, unknown DGI, bad PIN group: refused, nothing stored.
    for data in [
        vec![0x01, 0x01, 0x05, 0x41],
        vec![0x77, 0x77, 0x01, 0x41],
        vec![0x81, 0x01, 0x02, 0x03, 0x31],
    ] {
        let r = s.secure(&Command::new(0x80, 0xE2, 0x88, 0x00).with_data(data.clone()), OK);
        assert!(matches!(r, Err(TearError::Unexpected(_))), "{data:02X?}");
    }
    drop(s);
    assert_eq!(sw(&mut c, SELECT_ISD), OK);
    assert_eq!(&tx(&mut c, "00CA004500").data[2..], b"B");
}

#[test]
fn pin_rules() {
    let mut c = issued();
    assert_eq!(sw(&mut c, SELECT_ISD), OK);
    assert_eq!(sw(&mut c, "0020008100"), StatusWord::tries_left(3), "empty VERIFY reports tries");
    assert_eq!(sw(&mut c, "00200081"), StatusWord::tries_left(3));
    assert_eq!(verify(&mut c, b"0000"), StatusWord::tries_left(2));
    assert_eq!(verify(&mut c, PIN), OK);
    assert_eq!(sw(&mut c, "00200081"), OK, "verified in this session");
    assert_eq!(sw(&mut c, "0020FF81"), OK, "VERIFY FF drops the status");
    assert_eq!(sw(&mut c, "00200081"), StatusWord::tries_left(3));
    for left in [2, 1, 0] {
        assert_eq!(verify(&mut c, b"0000"), StatusWord::tries_left(left));
    }
    assert_eq!(verify(&mut c, PIN), StatusWord::AUTH_METHOD_BLOCKED);
    assert_eq!(sw(&mut c, "00200081"), StatusWord::AUTH_METHOD_BLOCKED);
    // Change PIN refused while blocked.
    let change = format!("0024008110{}{}", hex::encode(block(PIN)), hex::encode(block(b"5555")));
    assert_eq!(sw(&mut c, &change), StatusWord::AUTH_METHOD_BLOCKED);
    // Wrong PUK counts on the PUK.
    let unblock = |puk: &[u8]| {
        format!("002C008110{}{}", hex::encode(block(puk)), hex::encode(block(b"5555")))
    };
    assert_eq!(sw(&mut c, &unblock(b"00000000")), StatusWord::tries_left(4));
    assert_eq!(sw(&mut c, &unblock(PUK)), OK);
    assert_eq!(verify(&mut c, PIN), StatusWord::tries_left(2), "old PIN gone");
    assert_eq!(verify(&mut c, b"5555"), OK);
    let change =
        format!("0024008110{}{}", hex::encode(block(b"5555")), hex::encode(block(b"777777")));
    assert_eq!(sw(&mut c, &change), OK);
    assert_eq!(verify(&mut c, b"777777"), OK);
    // The PUK's counter was reset by its correct use.
    assert_eq!(sw(&mut c, "00200082"), StatusWord::tries_left(5));
    // Malformed PIN commands change nothing.
    let state = c.persistent_state();
    for apdu in [
        "0020008103313233",
        "002000810831FF323334FFFFFF",
        "00200083083132333435FFFFFF",
        "002C0081083132333435363738",
        "0024018110",
    ] {
        assert_ne!(sw(&mut c, apdu), OK, "{apdu}");
    }
    assert_eq!(c.persistent_state(), state);
}

#[test]
fn failed_external_authentications_lock_the_key_set() {
    let mut c = card();
    for i in 1..=AUTH_FAILURE_LIMIT {
        let mut p = Plain(&mut c);
        let mut s = Script::new(&mut p);
        s.select(AID).unwrap();
        assert_eq!(
            s.failed_authentication(0x30, false).unwrap(),
            StatusWord(0x6300),
            "attempt {i}"
        );
    }
    let mut p = Plain(&mut c);
    let mut s = Script::new(&mut p);
    s.select(AID).unwrap();
    assert!(s.open_session(&initial_keys(), SecurityLevel::CMac).is_err(), "locked out");
    drop(s);
    assert_eq!(sw(&mut c, SELECT_ISD), OK);
    assert_eq!(sw(&mut c, "8050300008000102030405060700"), StatusWord::AUTH_METHOD_BLOCKED);
    assert_eq!(tx(&mut c, "80CA00C100").data, [0xC1, 0x04, 0, 0, 0, AUTH_FAILURE_LIMIT as u8]);
}

#[test]
fn a_successful_authentication_resets_the_failure_count() {
    let mut c = card();
    let mut p = Plain(&mut c);
    let mut s = Script::new(&mut p);
    s.select(AID).unwrap();
    s.failed_authentication(0x30, false).unwrap();
    s.failed_authentication(0x30, false).unwrap();
    drop(s);
    assert_eq!(sw(&mut c, SELECT_ISD), OK);
    assert_eq!(tx(&mut c, "80CA00C100").data, [0xC1, 0x04, 0, 0, 0, 2]);
    let mut p = Plain(&mut c);
    let mut s = Script::new(&mut p);
    open_initial(&mut s).unwrap();
    drop(s);
    assert_eq!(sw(&mut c, SELECT_ISD), OK);
    assert_eq!(tx(&mut c, "80CA00C100").data, [0xC1, 0x04, 0, 0, 0, 0]);
}

#[test]
fn set_pin_group_format() {
    let mut c = card();
    let mut p = Plain(&mut c);
    let mut s = Script::new(&mut p);
    open_initial(&mut s).unwrap();
    let mut group = vec![16u8]; // more than 15 tries
    group.extend_from_slice(&block(PIN));
    let mut data = DGI_PIN.to_be_bytes().to_vec();
    data.push(group.len() as u8);
    data.extend_from_slice(&group);
    s.secure(&Command::new(0x80, 0xE2, 0x88, 0x00).with_data(data), StatusWord::INCORRECT_DATA)
        .unwrap();
}

#[test]
fn secure_messaging_wraps_the_whole_command_before_iso_chaining_splits_it() {
    let data = [&DGI_CARD_ID.to_be_bytes()[..], &[CARD_ID.len() as u8], CARD_ID].concat();
    let store = Command::new(0x80, 0xE2, 0x88, 0x00).with_data(data.clone());
    let mut c = card();
    {
        // Each part wrapped on its own: the card assembles the chain first, so the MAC of
        // the assembled command cannot verify.
        let mut p = Plain(&mut c);
        let mut s = Script::new(&mut p);
        open_initial(&mut s).unwrap();
        let (a, b) = data.split_at(data.len() / 2);
        let first = s.wrap(&Command { cla: 0x90, data: a.to_vec(), ..store.clone() }).unwrap();
        let last = s.wrap(&Command { data: b.to_vec(), ..store.clone() }).unwrap();
        assert_eq!(s.send(&first).unwrap().sw, OK, "a chain part is accepted");
        assert_eq!(s.send(&last).unwrap().sw, StatusWord::SECURITY_STATUS_NOT_SATISFIED);
    }
    assert_eq!(sw(&mut c, SELECT_ISD), OK);
    assert_eq!(sw(&mut c, "00CA004500"), StatusWord::REFERENCED_DATA_NOT_FOUND, "no card id");
    {
        // Wrapped once, then split into a chain: the card reassembles the protected command.
        let mut p = Plain(&mut c);
        let mut s = Script::new(&mut p);
        open_initial(&mut s).unwrap();
        let wrapped = s.wrap(&store).unwrap();
        let (a, b) = wrapped.data.split_at(wrapped.data.len() / 2);
        let first =
            Command { cla: wrapped.cla | 0x10, data: a.to_vec(), le: None, ..wrapped.clone() };
        let last = Command { data: b.to_vec(), ..wrapped };
        assert_eq!(s.send(&first).unwrap().sw, OK);
        assert_eq!(s.send(&last).unwrap().sw, OK);
    }
    assert_eq!(sw(&mut c, SELECT_ISD), OK);
    assert_eq!(&tx(&mut c, "00CA004500").data[2..], CARD_ID);
}

mod device_identity {
    use super::*;
    use tessera_card::applets::isd::scenarios::{
        NONCE, device_certificate, dgi_data, generate_key_pair, install_device_identity, issuer_pki,
    };
    use tessera_card::applets::isd::{DGI_DEVICE_CERT, DGI_ISSUER_CA, DGI_PACKAGE_SIGNING};
    use tessera_crypto::ecdsa::SigningKey;
    use tessera_crypto::rng::SeededRng;

    /// A card with card id, device identity, keys, PIN/PUK, PERSONALIZED.
    fn issued_with_device() -> Card {
        let mut c = card();
        let mut p = Plain(&mut c);
        let mut s = Script::new(&mut p);
        open_initial(&mut s).unwrap();
        store(&mut s, 0, false, &[(DGI_CARD_ID, CARD_ID)]).unwrap();
        install_device_identity(&mut s, 1).unwrap();
        s.secure(
            &Command::new(0x80, 0xD8, 0x00, 0x81)
                .with_data(put_key_data(&initial_keys(), &issued_keys()).unwrap())
                .with_le(256),
            OK,
        )
        .unwrap();
        let pin = |t: u8, v: &[u8]| [&[t][..], &block(v)].concat();
        store(&mut s, 0, true, &[(DGI_PIN, &pin(3, PIN)), (0x8102, &pin(5, PUK))]).unwrap();
        s.secure(&Command::new(0x80, 0xF0, 0x80, 0x0F), OK).unwrap();
        c
    }

    #[test]
    fn get_data_returns_the_device_certificate_and_key() {
        let mut c = issued_with_device();
        assert_eq!(sw(&mut c, SELECT_ISD), OK);
        let cert = tx(&mut c, "00CA7F21000000"); // extended Le: the certificate is over 256 bytes
        assert_eq!(cert.sw, OK);
        // 7F21 82 LL cert
        assert_eq!(cert.data[..3], [0x7F, 0x21, 0x82]);
        let der = cert.data[5..].to_vec();
        assert_eq!(u16::from_be_bytes([cert.data[3], cert.data[4]]) as usize, der.len());
        let cert = tessera_crypto::x509::Certificate::from_der(der).unwrap();
        let (_, ca, _) = issuer_pki().unwrap();
        let info = tessera_crypto::x509::verify_chain(
            &cert,
            &[],
            &ca,
            tessera_card::applets::isd::scenarios::PKI_T0 + 1,
            Some(tessera_crypto::x509::Role::Device),
        )
        .unwrap();
        assert_eq!(info.subject_cn.as_bytes(), CARD_ID);
        let key = tx(&mut c, "00CA7F4900");
        assert_eq!(key.data[..5], [0x7F, 0x49, 0x43, 0x86, 0x41]);
        assert_eq!(key.data[5..], info.public_key.to_sec1_bytes());
        // A blank card has neither.
        let mut blank = card();
        assert_eq!(sw(&mut blank, SELECT_ISD), OK);
        assert_eq!(sw(&mut blank, "00CA7F2100"), StatusWord::REFERENCED_DATA_NOT_FOUND);
        assert_eq!(sw(&mut blank, "00CA7F4900"), StatusWord::REFERENCED_DATA_NOT_FOUND);
    }

    #[test]
    fn generate_key_pair_needs_a_session_a_card_id_and_op_ready() {
        // Outside a session.
        let mut c = card();
        assert_eq!(sw(&mut c, SELECT_ISD), OK);
        assert_eq!(
            sw(&mut c, &format!("8046000010{}", hex::encode(NONCE))),
            StatusWord::SECURITY_STATUS_NOT_SATISFIED
        );
        // No card id yet.
        let mut p = Plain(&mut c);
        let mut s = Script::new(&mut p);
        open_initial(&mut s).unwrap();
        let cmd = Command::new(0x80, 0x46, 0, 0).with_data(NONCE.to_vec()).with_le(256);
        s.secure(&cmd, StatusWord::CONDITIONS_NOT_SATISFIED).unwrap();
        // Nonce too short / too long.
        store(&mut s, 0, true, &[(DGI_CARD_ID, CARD_ID)]).unwrap();
        for n in [15, 65] {
            let cmd = Command::new(0x80, 0x46, 0, 0).with_data(vec![1; n]).with_le(256);
            s.secure(&cmd, StatusWord::WRONG_LENGTH).unwrap();
        }
        // Twice: a new key each time (the proof binds each).
        let (a, _) = generate_key_pair(&mut s, &NONCE).unwrap();
        let (b, _) = generate_key_pair(&mut s, &[9; 32]).unwrap();
        assert_ne!(a, b);
        // Once PERSONALIZED the device key is fixed.
        let mut c = issued_with_device();
        let before = c.persistent_state();
        let mut p = Plain(&mut c);
        let mut s = Script::new(&mut p);
        s.select(AID).unwrap();
        s.open_session(&issued_keys(), SecurityLevel::CMacCDec).unwrap();
        s.secure(&cmd, StatusWord::CONDITIONS_NOT_SATISFIED).unwrap();
        assert_eq!(c.persistent_state(), before);
    }

    /// STORE DATA of `data` in blocks; the first status word other than `9000`, or `9000`.
    fn try_store(s: &mut Script<'_>, data: &[u8]) -> StatusWord {
        let chunks: Vec<&[u8]> = data.chunks(224).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let p1 = if i + 1 == chunks.len() { 0x88 } else { 0x08 };
            let cmd = Command::new(0x80, 0xE2, p1, i as u8).with_data(chunk.to_vec());
            let wrapped = s.wrap(&cmd).unwrap();
            let r = s.send(&wrapped).unwrap();
            if r.sw != OK {
                return r.sw;
            }
        }
        OK
    }

    #[test]
    fn wrong_certificates_are_refused_and_change_nothing() {
        let (ca_key, ca, package) = issuer_pki().unwrap();
        let other_key = SigningKey::generate(&mut SeededRng::from_u64(77));
        let t0 = tessera_card::applets::isd::scenarios::PKI_T0;
        let other_ca = tessera_crypto::x509::self_signed_ca(
            &other_key,
            "other CA",
            &[9],
            tessera_crypto::x509::Validity { not_before: t0, not_after: t0 + 86400 * 365 },
        )
        .unwrap();
        let mut c = card();
        let mut p = Plain(&mut c);
        let mut s = Script::new(&mut p);
        open_initial(&mut s).unwrap();
        store(&mut s, 0, true, &[(DGI_CARD_ID, CARD_ID)]).unwrap();
        let (public, _) = generate_key_pair(&mut s, &NONCE).unwrap();
        let good = device_certificate(&ca_key, &ca, &public, CARD_ID).unwrap();
        let for_other_key =
            device_certificate(&ca_key, &ca, &other_key.public_key(), CARD_ID).unwrap();
        let for_other_card = device_certificate(&ca_key, &ca, &public, b"OTHER").unwrap();
        let from_other_ca = device_certificate(&other_key, &other_ca, &public, CARD_ID).unwrap();

        let refused = |c: &mut Card, what: &str, groups: &[(u16, &[u8])]| {
            let snapshot = c.persistent_state();
            let mut p = Plain(c);
            let mut s = Script::new(&mut p);
            open_initial(&mut s).unwrap();
            let sw = try_store(&mut s, &dgi_data(groups));
            assert_ne!(sw, OK, "{what}");
            assert_eq!(c.persistent_state(), snapshot, "{what}: changed nothing");
        };
        refused(&mut c, "device certificate before any CA", &[(DGI_DEVICE_CERT, good.der())]);
        refused(
            &mut c,
            "package certificate before any CA",
            &[(DGI_PACKAGE_SIGNING, package.der())],
        );
        refused(&mut c, "a CA that is not self-signed", &[(DGI_ISSUER_CA, package.der())]);
        {
            let mut p = Plain(&mut c);
            let mut s = Script::new(&mut p);
            open_initial(&mut s).unwrap();
            let data = dgi_data(&[(DGI_ISSUER_CA, ca.der()), (DGI_PACKAGE_SIGNING, package.der())]);
            assert_eq!(try_store(&mut s, &data), OK);
        }
        refused(&mut c, "device cert for another key", &[(DGI_DEVICE_CERT, for_other_key.der())]);
        refused(&mut c, "device cert for another card", &[(DGI_DEVICE_CERT, for_other_card.der())]);
        refused(&mut c, "device cert from another CA", &[(DGI_DEVICE_CERT, from_other_ca.der())]);
        refused(&mut c, "package cert as device cert", &[(DGI_DEVICE_CERT, package.der())]);
        refused(&mut c, "device cert as package cert", &[(DGI_PACKAGE_SIGNING, good.der())]);
        // The right one is accepted.
        let mut p = Plain(&mut c);
        let mut s = Script::new(&mut p);
        open_initial(&mut s).unwrap();
        assert_eq!(try_store(&mut s, &dgi_data(&[(DGI_DEVICE_CERT, good.der())])), OK);
    }

    #[test]
    fn a_data_group_cut_short_at_the_last_block_is_refused() {
        let (_, ca, _) = issuer_pki().unwrap();
        let mut c = card();
        let mut p = Plain(&mut c);
        let mut s = Script::new(&mut p);
        open_initial(&mut s).unwrap();
        let data = dgi_data(&[(DGI_ISSUER_CA, ca.der())]);
        let cmd = Command::new(0x80, 0xE2, 0x88, 0).with_data(data[..200].to_vec());
        s.secure(&cmd, StatusWord::INCORRECT_DATA).unwrap();
    }
}
