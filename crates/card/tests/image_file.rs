//! Card image files: creation, locking, permissions, persistence, encryption at rest, and
//! damaged files (a clear error naming the file, never a silent reset).
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Plain, SELECT_ISD, sw, tx};
use tessera_apdu::StatusWord;
use tessera_card::applets::isd::scenarios::{CARD_ID, personalize};
use tessera_card::script::Script;
use tessera_card::{Card, CardError, CardOptions, OpenOptions};
use tessera_crypto::passphrase::KdfCost;

fn make(path: &Path) -> Card {
    Card::create(path, CardOptions::default()).unwrap()
}

fn open(path: &Path) -> Result<Card, CardError> {
    Card::open(path, OpenOptions::default())
}

fn names_file(e: &CardError, path: &Path) {
    assert_eq!(e.path(), path);
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}

#[test]
fn created_owner_only_locked_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.img");
    let card = make(&path);
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["card.img"], "no temporary file is left behind");
    let e = open(&path).unwrap_err();
    assert!(matches!(e, CardError::Locked { .. }), "{e}");
    names_file(&e, &path);
    drop(card);
    let e = Card::create(&path, CardOptions::default()).unwrap_err();
    assert!(matches!(e, CardError::AlreadyExists { .. }), "{e}");
    open(&path).unwrap();
    let missing = dir.path().join("nope.img");
    let e = open(&missing).unwrap_err();
    assert!(matches!(e, CardError::Missing { .. }), "{e}");
    names_file(&e, &missing);
}

#[test]
fn group_or_world_readable_images_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.img");
    drop(make(&path));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let e = open(&path).unwrap_err();
    assert!(matches!(e, CardError::Permissions { mode: 0o644, .. }), "{e}");
    assert!(e.to_string().contains("chmod 600"));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    open(&path).unwrap();
}

#[test]
fn state_survives_reopening_and_reads_do_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.img");
    let mut card = make(&path);
    card.power_on();
    personalize(&mut Script::new(&mut Plain(&mut card))).unwrap();
    assert_eq!(sw(&mut card, SELECT_ISD), StatusWord::SUCCESS);
    assert_eq!(sw(&mut card, "002000810830303030FFFFFFFF"), StatusWord::tries_left(2));
    let state = card.persistent_state();
    drop(card);

    let len = fs::metadata(&path).unwrap().len();
    let bytes = fs::read(&path).unwrap();
    let mut card = open(&path).unwrap();
    assert_eq!(card.persistent_state(), state);
    assert_eq!(sw(&mut card, SELECT_ISD), StatusWord::SUCCESS);
    assert_eq!(&tx(&mut card, "00CA004500").data[2..], CARD_ID);
    assert_eq!(sw(&mut card, "0020008100"), StatusWord::tries_left(2), "the wrong try was kept");
    for _ in 0..50 {
        assert_eq!(sw(&mut card, SELECT_ISD), StatusWord::SUCCESS);
        assert_eq!(sw(&mut card, "0084000008"), StatusWord::SUCCESS);
        assert_eq!(sw(&mut card, "00CA9F7000"), StatusWord::SUCCESS);
    }
    drop(card);
    assert_eq!(fs::read(&path).unwrap(), bytes, "reading commands wrote nothing");
    assert_eq!(fs::metadata(&path).unwrap().len(), len);
}

#[test]
fn damaged_images_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good_path = dir.path().join("good.img");
    drop(make(&good_path));
    let good = fs::read(&good_path).unwrap();
    type Case = (&'static str, Vec<u8>, fn(&CardError) -> bool);
    let cases: Vec<Case> = vec![
        ("empty", Vec::new(), |e| matches!(e, CardError::Truncated { .. })),
        ("garbage", b"#!/bin/sh\necho not a card\n".to_vec(), |e| {
            matches!(e, CardError::NotAnImage { .. })
        }),
        ("header only", good[..20].to_vec(), |e| matches!(e, CardError::Truncated { .. })),
        ("cut in the record", good[..good.len() - 3].to_vec(), |e| {
            matches!(e, CardError::Truncated { .. })
        }),
        (
            "future version",
            {
                let mut b = good.clone();
                b[9] = 2;
                b
            },
            |e| matches!(e, CardError::UnsupportedVersion { found: 2, .. }),
        ),
        (
            "flipped record bit",
            {
                let mut b = good.clone();
                b[4100] ^= 0x10;
                b
            },
            |e| matches!(e, CardError::Corrupt { .. }),
        ),
        (
            "zeroed superblocks",
            {
                let mut b = good.clone();
                b[512..1536].fill(0);
                b
            },
            |e| matches!(e, CardError::Corrupt { .. }),
        ),
    ];
    for (name, bytes, want) in cases {
        let path = dir.path().join(format!("{}.img", name.replace(' ', "_")));
        fs::write(&path, &bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let e = open(&path).unwrap_err();
        assert!(want(&e), "{name}: {e}");
        names_file(&e, &path);
        assert_eq!(fs::read(&path).unwrap(), bytes, "{name}: the file was not touched");
    }
}

#[test]
fn oversized_files_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.img");
    let f = fs::File::create(&path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    // A sparse file with a valid-looking start.
    drop(make(&dir.path().join("good.img")));
    let head = fs::read(dir.path().join("good.img")).unwrap();
    fs::write(&path, &head).unwrap();
    f.set_len(tessera_card::image::MAX_IMAGE + 1).unwrap();
    let e = open(&path).unwrap_err();
    assert!(matches!(e, CardError::NotAnImage { .. }), "{e}");
}

#[test]
fn encryption_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sealed.img");
    let options = CardOptions::default().passphrase("correct horse").kdf_cost(KdfCost::TEST_ONLY);
    let mut card = Card::create(&path, options).unwrap();
    card.power_on();
    personalize(&mut Script::new(&mut Plain(&mut card))).unwrap();
    let state = card.persistent_state();
    drop(card);
    let bytes = fs::read(&path).unwrap();
    assert!(!bytes.windows(CARD_ID.len()).any(|w| w == CARD_ID), "card id not in clear");
    assert!(!bytes.windows(16).any(|w| w
        == [
            0x40u8, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x4B, 0x4C, 0x4D,
            0x4E, 0x4F
        ]));

    let e = open(&path).unwrap_err();
    assert!(matches!(e, CardError::PassphraseRequired { .. }), "{e}");
    let e = Card::open(&path, OpenOptions::default().passphrase("wrong horse")).unwrap_err();
    assert!(matches!(e, CardError::WrongPassphrase { .. }), "{e}");
    names_file(&e, &path);
    let card = Card::open(&path, OpenOptions::default().passphrase("correct horse")).unwrap();
    assert_eq!(card.persistent_state(), state);
    drop(card);

    let plain = dir.path().join("plain.img");
    drop(make(&plain));
    let e = Card::open(&plain, OpenOptions::default().passphrase("x")).unwrap_err();
    assert!(matches!(e, CardError::NotEncrypted { .. }), "{e}");
}
