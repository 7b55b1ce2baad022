#![allow(clippy::unwrap_used)] // tests may unwrap

//! The vault applet at the APDU level: the pair's key group, export and import of the wrapped
//! key, the backup confirmation, file-key commands, and every attack of issue 7 that a card
//! alone can refuse.

mod common;

use common::Plain;
use tessera_apdu::{Response, StatusWord};
use tessera_card::Card;
use tessera_card::applets::isd;
use tessera_card::applets::vault::scenarios::{
    self as sc, TEST_PRIVATE_KEY, issuance_groups, issue, test_components, verify_pin,
};
use tessera_card::applets::vault::{AID, backup_confirmation, component_check, wrap_for_group};
use tessera_card::script::Script;
use tessera_crypto::age;
use tessera_crypto::ecdsa::PublicKey;
use tessera_crypto::rng::SeededRng;
use tessera_proto::vault::{
    self as proto, Config, KeyOrigin, Role, Setter, Status, TranscryptRequest, TranscryptResponse,
    VaultCommand, WrappedKey,
};

const DENIED: StatusWord = StatusWord::SECURITY_STATUS_NOT_SATISFIED;
const REFUSED: StatusWord = StatusWord::CONDITIONS_NOT_SATISFIED;
const BAD: StatusWord = StatusWord::INCORRECT_DATA;

fn card(seed: u64) -> Card {
    let mut card = Card::in_memory(
        tessera_card::CardOptions::default().rng(Box::new(SeededRng::from_u64(seed))),
    );
    card.power_on();
    card
}

fn send(card: &mut Card, cmd: &VaultCommand) -> Response {
    Response::parse(&card.transmit(&cmd.to_command().to_bytes().unwrap())).unwrap()
}

fn status(card: &mut Card) -> Status {
    let r = send(card, &VaultCommand::GetData(proto::TAG_STATUS));
    assert_eq!(r.sw, StatusWord::SUCCESS);
    Status::parse(&r.data).unwrap()
}

/// An issued card of `role` with `n` components, PIN verified, vault selected.
fn issued(role: Role, n: u8, holder: bool, seed: u64) -> Card {
    let mut c = card(seed);
    sc::issued(&mut Script::new(&mut Plain(&mut c)), role, n, holder).unwrap();
    c
}

fn reset_and_select(card: &mut Card) {
    card.power_off();
    card.power_on();
    Script::new(&mut Plain(card)).select(AID).unwrap();
}

fn pair(n: u8) -> (Card, Card, WrappedKey) {
    let mut main = issued(Role::Main, n, true, 1);
    let mut backup = issued(Role::Backup, n, true, 2);
    assert_eq!(send(&mut main, &VaultCommand::Generate).sw, StatusWord::SUCCESS);
    let r = send(&mut main, &VaultCommand::Export);
    assert_eq!(r.sw, StatusWord::SUCCESS);
    let blob = WrappedKey::parse(&r.data).unwrap();
    let _ = &mut backup;
    (main, backup, blob)
}

#[test]
fn components_are_tagged_write_once_and_pin_gated() {
    let mut c = issued(Role::Main, 4, false, 1);
    let st = status(&mut c);
    assert_eq!(st.config, Config::new(Role::Main, 4).unwrap());
    let comps = test_components(4);
    assert_eq!(st.components[0], Some((Setter::Issuer, component_check(1, &comps[0]))));
    assert_eq!(st.components[1], None);
    assert_eq!(st.group_check, None);
    // Holder writes slot 2: answered with its check value.
    let r = send(&mut c, &VaultCommand::PutComponent { slot: 2, component: comps[1] });
    assert_eq!(
        (r.sw, r.data.as_slice()),
        (StatusWord::SUCCESS, &component_check(2, &comps[1])[..])
    );
    // Attack: a component written twice (either setter's slot) is refused, nothing changes.
    let before = status(&mut c);
    for slot in [1, 2] {
        let r = send(&mut c, &VaultCommand::PutComponent { slot, component: [0xEE; 32] });
        assert_eq!(r.sw, REFUSED);
    }
    assert_eq!(status(&mut c), before);
    assert_eq!(before.components[1].unwrap().0, Setter::Holder);
    // Out of range.
    for slot in [0, 5, 9] {
        assert_eq!(
            send(&mut c, &VaultCommand::PutComponent { slot, component: [1; 32] }).sw,
            StatusWord::INCORRECT_P1P2
        );
    }
    // Without the PIN: refused.
    reset_and_select(&mut c);
    let r = send(&mut c, &VaultCommand::PutComponent { slot: 4, component: comps[3] });
    assert_eq!(r.sw, DENIED);
    assert_eq!(status(&mut c).components[3], None);
}

#[test]
fn issuer_cannot_write_a_component_twice_nor_configure_twice() {
    let mut c = card(5);
    let mut plain = Plain(&mut c);
    let mut s = Script::new(&mut plain);
    let config = Config::new(Role::Main, 2).unwrap();
    let comp = test_components(2)[0];
    issue(&mut s, &issuance_groups(config, &[(1, comp)], None)).unwrap();
    let err = sc::personalize_vault(&mut s, &issuance_groups(config, &[], None)).unwrap_err();
    assert!(format!("{err:?}").contains("6985"), "{err:?}");
    s.select(tessera_card::applets::isd::AID).unwrap();
    s.open_session(&isd::scenarios::issued_keys(), tessera_crypto::scp03::SecurityLevel::CMacCDec)
        .unwrap();
    let mut v = vec![1];
    v.extend_from_slice(&[9; 32]);
    let err = sc::personalize_vault(&mut s, &[(proto::DGI_COMPONENT, v)]).unwrap_err();
    assert!(format!("{err:?}").contains("6985"), "{err:?}");
}

#[test]
fn backup_flow_moves_the_key_and_sets_the_flag_only_on_confirmation() {
    let (mut main, mut backup, blob) = pair(3);
    let main_pk = send(&mut main, &VaultCommand::GetData(proto::TAG_PUBLIC_KEY)).data;
    assert_eq!(blob.public_key.to_vec(), main_pk);
    assert!(status(&mut main).export_pending);
    assert!(!status(&mut main).backup_created);
    assert_eq!(status(&mut main).group_check, status(&mut backup).group_check);

    let r = send(&mut backup, &VaultCommand::ImportWrapped(blob.clone()));
    assert_eq!(r.sw, StatusWord::SUCCESS);
    let confirmation: [u8; 16] = r.data.as_slice().try_into().unwrap();
    assert_eq!(send(&mut backup, &VaultCommand::GetData(proto::TAG_PUBLIC_KEY)).data, main_pk);
    assert_eq!(status(&mut backup).key, Some(KeyOrigin::Wrapped));
    // Re-run of the import (answer lost): same confirmation, nothing changes.
    let again = send(&mut backup, &VaultCommand::ImportWrapped(blob.clone()));
    assert_eq!((again.sw, again.data.clone()), (StatusWord::SUCCESS, confirmation.to_vec()));

    // A forged confirmation does not set the flag.
    let mut forged = confirmation;
    forged[0] ^= 1;
    assert_eq!(send(&mut main, &VaultCommand::ConfirmBackup(forged)).sw, StatusWord(0x6300));
    assert!(!status(&mut main).backup_created);
    assert_eq!(send(&mut main, &VaultCommand::ConfirmBackup(confirmation)).sw, StatusWord::SUCCESS);
    let st = status(&mut main);
    assert!(st.backup_created && !st.export_pending);
    // Attack: a second export once the backup is confirmed.
    assert_eq!(send(&mut main, &VaultCommand::Export).sw, REFUSED);
    // The backup decrypts what was encrypted to the main card.
    let r = send(&mut main, &VaultCommand::Encrypt([3; 16]));
    assert_eq!(r.sw, StatusWord::SUCCESS);
    let (enc, body) = r.data.split_at(65);
    let dec =
        VaultCommand::Decrypt { enc: enc.try_into().unwrap(), body: body.try_into().unwrap() };
    assert_eq!(send(&mut backup, &dec).data, vec![3; 16]);
    assert_eq!(send(&mut main, &dec).data, vec![3; 16]);
}

#[test]
fn confirmation_of_an_older_export_is_refused() {
    let (mut main, mut backup, first) = pair(2);
    let c1: [u8; 16] =
        send(&mut backup, &VaultCommand::ImportWrapped(first)).data.try_into().unwrap();
    // A new export (re-run) replaces the nonce: the old confirmation no longer counts.
    assert_eq!(send(&mut main, &VaultCommand::Export).sw, StatusWord::SUCCESS);
    assert_eq!(send(&mut main, &VaultCommand::ConfirmBackup(c1)).sw, StatusWord(0x6300));
}

#[test]
fn export_needs_the_pin_every_component_and_an_unlocked_export() {
    // Incomplete key group.
    let mut c = issued(Role::Main, 2, false, 1);
    assert_eq!(send(&mut c, &VaultCommand::Generate).sw, StatusWord::SUCCESS);
    assert_eq!(send(&mut c, &VaultCommand::Export).sw, REFUSED);
    // No PIN.
    let (mut main, _, _) = pair(2);
    reset_and_select(&mut main);
    assert_eq!(send(&mut main, &VaultCommand::Export).sw, DENIED);
    // Locked.
    verify_pin(&mut Script::new(&mut Plain(&mut main))).unwrap();
    assert_eq!(send(&mut main, &VaultCommand::LockExport).sw, StatusWord::SUCCESS);
    assert_eq!(send(&mut main, &VaultCommand::Export).sw, REFUSED);
    let st = status(&mut main);
    assert!(st.export_locked && !st.export_pending);
    // A backup card never exports; a main card without a key neither.
    let mut b = issued(Role::Backup, 1, true, 3);
    assert_eq!(send(&mut b, &VaultCommand::Export).sw, REFUSED);
    let mut k = issued(Role::Main, 1, true, 4);
    assert_eq!(send(&mut k, &VaultCommand::Export).sw, REFUSED);
}

#[test]
fn import_refuses_another_key_group_or_a_modified_blob_and_changes_nothing() {
    let (_, mut backup, blob) = pair(2);
    let before = status(&mut backup);
    // Another key group: a blob wrapped under different components.
    // (The test components XOR to 03..03; these XOR to 06..06.)
    let other = [[1u8; 32], [7u8; 32]];
    let foreign =
        wrap_for_group(&mut SeededRng::from_u64(1), &other, &TEST_PRIVATE_KEY, [0; 16]).unwrap();
    assert_eq!(send(&mut backup, &VaultCommand::ImportWrapped(foreign.clone())).sw, BAD);
    // ... even with our group check value copied in.
    let mut lying = foreign;
    lying.group_check = blob.group_check;
    assert_eq!(send(&mut backup, &VaultCommand::ImportWrapped(lying)).sw, BAD);
    // Modified in transit: every field.
    let bytes = blob.to_bytes();
    for i in (1..bytes.len()).step_by(7) {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        let cmd = proto::VaultCommand::ImportWrapped(match WrappedKey::parse(&b) {
            Ok(w) => w,
            Err(_) => continue,
        });
        assert_ne!(send(&mut backup, &cmd).sw, StatusWord::SUCCESS, "byte {i}");
    }
    assert_eq!(status(&mut backup), before);
    assert_eq!(send(&mut backup, &VaultCommand::GetData(proto::TAG_PUBLIC_KEY)).sw, REFUSED);
    // Without the PIN, even the genuine blob.
    reset_and_select(&mut backup);
    assert_eq!(send(&mut backup, &VaultCommand::ImportWrapped(blob)).sw, DENIED);
}

#[test]
fn decrypt_needs_the_key_and_the_pin() {
    let (mut main, mut backup, _) = pair(1);
    let r = send(&mut main, &VaultCommand::Encrypt([8; 16]));
    let (enc, body) = r.data.split_at(65);
    let dec =
        VaultCommand::Decrypt { enc: enc.try_into().unwrap(), body: body.try_into().unwrap() };
    // The backup has not imported: it does not hold the key.
    assert_eq!(send(&mut backup, &dec).sw, REFUSED);
    // Another card with its own key.
    let mut other = issued(Role::Main, 1, true, 9);
    send(&mut other, &VaultCommand::Generate);
    assert_eq!(send(&mut other, &dec).sw, BAD);
    reset_and_select(&mut main);
    assert_eq!(send(&mut main, &dec).sw, DENIED);
}

#[test]
fn transcrypt_rewraps_and_macs_the_new_header_inside_the_card() {
    let (mut main, _, _) = pair(1);
    let mut new = issued(Role::Main, 1, true, 11);
    let new_pk = send(&mut new, &VaultCommand::Generate).data;
    let main_pk = PublicKey::from_sec1_bytes(
        &send(&mut main, &VaultCommand::GetData(proto::TAG_PUBLIC_KEY)).data,
    )
    .unwrap();
    // A header made by the host with a known file key.
    let file_key = [0x21u8; 16];
    let stanza = age::p256tag_seal(&main_pk, &file_key).unwrap();
    let tag = age::p256tag_stanza_tag(&stanza.enc, &main_pk);
    let mut old_header = b"age-encryption.org/v1\n".to_vec();
    old_header.extend(proto::p256tag_stanza_text(&tag, &stanza.enc, &stanza.body));
    old_header.extend_from_slice(b"---");
    let old_mac = age::header_mac(&file_key, &old_header);
    let req = TranscryptRequest {
        enc: stanza.enc,
        body: stanza.body,
        recipient: new_pk.clone().try_into().unwrap(),
        old_mac,
        old_header: old_header.clone(),
        new_prefix: b"age-encryption.org/v1\n".to_vec(),
        new_suffix: b"---".to_vec(),
    };
    let r = send(&mut main, &VaultCommand::Transcrypt(Box::new(req.clone())));
    assert_eq!(r.sw, StatusWord::SUCCESS);
    let t = TranscryptResponse::parse(&r.data).unwrap();
    // The new card opens the new stanza; the MAC is the header MAC of the new header.
    let opened = send(&mut new, &VaultCommand::Decrypt { enc: t.enc, body: t.body });
    assert_eq!(opened.data, file_key.to_vec());
    let new_pub = PublicKey::from_sec1_bytes(&new_pk).unwrap();
    let mut header = b"age-encryption.org/v1\n".to_vec();
    header.extend(proto::p256tag_stanza_text(
        &age::p256tag_stanza_tag(&t.enc, &new_pub),
        &t.enc,
        &t.body,
    ));
    header.extend_from_slice(b"---");
    assert_eq!(t.mac, age::header_mac(&file_key, &header));
    // A header that does not match the stanza's file key (wrong MAC) is refused.
    let mut bad = req.clone();
    bad.old_header.push(b'x');
    assert_eq!(send(&mut main, &VaultCommand::Transcrypt(Box::new(bad))).sw, BAD);
    let mut bad = req.clone();
    bad.new_suffix = b"--- tail".to_vec();
    assert_eq!(send(&mut main, &VaultCommand::Transcrypt(Box::new(bad))).sw, BAD);
    // A card without the key, and without the PIN.
    assert_eq!(send(&mut new, &VaultCommand::Transcrypt(Box::new(req.clone()))).sw, BAD);
    reset_and_select(&mut main);
    assert_eq!(send(&mut main, &VaultCommand::Transcrypt(Box::new(req))).sw, DENIED);
}

#[test]
fn keys_at_issuance_and_from_a_key_service() {
    // Plain import at issuance (¶0109).
    let mut c = card(4);
    let config = Config::new(Role::Main, 1).unwrap();
    issue(
        &mut Script::new(&mut Plain(&mut c)),
        &issuance_groups(config, &[(1, [1; 32])], Some(&TEST_PRIVATE_KEY)),
    )
    .unwrap();
    Script::new(&mut Plain(&mut c)).select(AID).unwrap();
    assert_eq!(status(&mut c).key, Some(KeyOrigin::Issued));
    assert_eq!(status(&mut c).components[0].unwrap().0, Setter::Issuer);
    // Sealed import: the tear scenario's flow, then a second import is refused.
    let mut c = issued(Role::Main, 1, true, 6);
    let pk = send(&mut c, &VaultCommand::GetData(proto::TAG_TRANSPORT_KEY)).data;
    let pk = tessera_crypto::hpke::HpkePublicKey::from_bytes(&pk).unwrap();
    let info = tessera_card::applets::vault::import_sealed_info(isd::scenarios::CARD_ID);
    let sealed = tessera_crypto::hpke::seal(&pk, &info, AID, &TEST_PRIVATE_KEY).unwrap();
    let mut tampered = sealed.clone();
    tampered[70] ^= 1;
    assert_eq!(send(&mut c, &VaultCommand::ImportSealed(tampered)).sw, BAD);
    assert_eq!(status(&mut c).key, None);
    assert_eq!(send(&mut c, &VaultCommand::ImportSealed(sealed.clone())).sw, StatusWord::SUCCESS);
    assert_eq!(status(&mut c).key, Some(KeyOrigin::Sealed));
    assert_eq!(send(&mut c, &VaultCommand::ImportSealed(sealed)).sw, REFUSED);
    assert_eq!(send(&mut c, &VaultCommand::Generate).sw, REFUSED);
}

#[test]
fn confirmation_helper_matches_the_card() {
    let (_, mut backup, blob) = pair(2);
    let r = send(&mut backup, &VaultCommand::ImportWrapped(blob.clone()));
    assert_eq!(r.data, backup_confirmation(&test_components(2), &blob).unwrap().to_vec());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Arbitrary commands to an issued vault (with a key, PIN verified) never panic and
        /// change nothing unless answered 9000.
        #[test]
        fn arbitrary_commands_never_panic_and_change_nothing_unless_9000(
            ins in prop::sample::select(vec![0x10u8, 0x46, 0x48, 0x4A, 0x4C, 0x4E, 0x50, 0x2A, 0x2C, 0x2E, 0xCA, 0x00, 0xFF]),
            p1 in any::<u8>(), p2 in any::<u8>(),
            data in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let (mut main, _, _) = pair(2);
            let before = main.persistent_state();
            let cmd = tessera_apdu::Command::new(0x80, ins, p1, p2).with_data(data);
            let r = Response::parse(&main.transmit(&cmd.to_bytes().unwrap())).unwrap();
            if r.sw != StatusWord::SUCCESS {
                prop_assert_eq!(main.persistent_state(), before);
            }
        }
    }
}

#[test]
fn attest_needs_a_device_key_and_a_nonce_and_changes_nothing() {
    // The scenarios' cards have no device key (not issued by a server): ATTEST cannot sign.
    let mut c = issued(Role::Main, 1, true, 8);
    let before = c.persistent_state();
    let r = send(&mut c, &VaultCommand::Attest(vec![1; 32]));
    assert_eq!(r.sw, StatusWord::REFERENCED_DATA_NOT_FOUND);
    let short = tessera_apdu::Command::new(0x80, tessera_proto::vault::INS_ATTEST, 0, 0)
        .with_data(vec![1; 8]);
    let r = Response::parse(&c.transmit(&short.to_bytes().unwrap())).unwrap();
    assert_eq!(r.sw, StatusWord::WRONG_LENGTH);
    assert_eq!(c.persistent_state(), before);
}
