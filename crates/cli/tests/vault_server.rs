//! The key-service variant (Figs. 28-31) through the `tessera` binary against a real `tessera
//! server` process: a card image with a vault is issued through the server, `tessera admin
//! vault provision` generates its key pair, `tessera vault provision` (the card's sync) delivers
//! it sealed to the card, `tessera vault backup` moves it to the backup card, and a file
//! encrypted to the provisioned recipient opens with the backup card.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;

use tessera_card::applets::isd;
use tessera_card::applets::vault::scenarios::{
    issuance_groups, issue, personalize_vault, test_components,
};
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, OpenOptions, PowerCut, TearDriver};
use tessera_proto::vault::{Config, Role};

mod support;
use support::{Server, assert_exit, tessera, text};

struct Plain<'a>(&'a mut Card);
impl TearDriver for Plain<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

fn groups(role: Role) -> Vec<(u16, Vec<u8>)> {
    let issuer: Vec<(u8, [u8; 32])> =
        test_components(2).into_iter().enumerate().map(|(i, c)| (i as u8 + 1, c)).collect();
    issuance_groups(Config::new(role, 2).unwrap(), &issuer, None)
}

/// A blank card image whose vault the issuer personalised as a main card (with the blank
/// card's initial key set), ready for `tessera issue`.
fn blank_main(path: &Path) {
    let mut card = Card::create(path, CardOptions::default()).unwrap();
    card.power_on();
    let mut driver = Plain(&mut card);
    let mut s = Script::new(&mut driver);
    isd::scenarios::open_initial(&mut s).unwrap();
    personalize_vault(&mut s, &groups(Role::Main)).unwrap();
}

/// The backup card of the same key group (the scenarios' card id, keys and PIN `1234`).
fn backup(path: &Path) {
    let mut card = Card::create(path, CardOptions::default()).unwrap();
    card.power_on();
    let mut driver = Plain(&mut card);
    issue(&mut Script::new(&mut driver), &groups(Role::Backup)).unwrap();
}

/// The holder changes the main card's PIN to the backup card's (CHANGE REFERENCE DATA).
fn change_pin(path: &Path, old: &str) {
    let mut card = Card::open(path, OpenOptions::default()).unwrap();
    card.power_on();
    let mut data = Vec::new();
    for p in [old.as_bytes(), isd::scenarios::PIN] {
        let mut block = p.to_vec();
        block.resize(8, 0xFF);
        data.extend(block);
    }
    let select = [&[0x00, 0xA4, 0x04, 0x00, isd::AID.len() as u8][..], isd::AID].concat();
    let r = card.transmit(&select);
    assert!(matches!(r[..].last_chunk(), Some([0x90, 0x00] | [0x61, _])), "{r:02X?}");
    let change = [&[0x00, 0x24, 0x00, 0x81, data.len() as u8][..], &data].concat();
    assert_eq!(card.transmit(&change), vec![0x90, 0x00]);
}

#[test]
fn key_service_provisions_delivers_and_the_backup_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    assert_exit(&server.admin(&["issuers", "create", "acme", "Acme Bank"]), 0);
    let main = dir.path().join("main.img");
    blank_main(&main);
    let main_s = main.to_str().unwrap();
    let out = tessera(&[
        "issue",
        "--server",
        &server.url,
        "--fingerprint",
        &server.fingerprint,
        "--token",
        &server.token,
        "--issuer",
        "acme",
        "--card-id",
        "CARD-1",
        "--image",
        main_s,
    ]);
    assert_exit(&out, 0);
    let pin = text(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("initial PIN: "))
        .unwrap()
        .trim()
        .to_owned();
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, format!("{pin}\n")).unwrap();

    let out = server.admin(&["--json", "vault", "provision", "acme", "CARD-1"]);
    assert_exit(&out, 0);
    let provisioned: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(provisioned["status"], "queued");

    let deliver = |pin_file: &Path| {
        tessera(&[
            "vault",
            "provision",
            "--server",
            &server.url,
            "--fingerprint",
            &server.fingerprint,
            "--issuer",
            "acme",
            "--image",
            main_s,
            "--pin-file",
            pin_file.to_str().unwrap(),
        ])
    };
    let out = deliver(&pin_file);
    assert_exit(&out, 0);
    assert!(text(&out.stdout).contains("vault key: delivered"), "{}", text(&out.stdout));
    // Nothing left to deliver: a second run says so and fails.
    let out = deliver(&pin_file);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("no vault key was pending"), "{}", text(&out.stderr));
    let out = server.admin(&["vault", "show", "acme", "CARD-1"]);
    assert_exit(&out, 0);
    let shown = text(&out.stdout);
    assert!(shown.contains("delivered") && shown.contains("held by the server: false"), "{shown}");
    let out = tessera(&["--json", "vault", "status", "--image", main_s]);
    assert_exit(&out, 0);
    assert!(text(&out.stdout).contains("\"key\": \"Sealed\""), "{}", text(&out.stdout));

    // The backup flow moves the key; the backup card decrypts a file for the recipient.
    change_pin(&main, &pin);
    let backup_img = dir.path().join("backup.img");
    backup(&backup_img);
    let backup_s = backup_img.to_str().unwrap();
    let pin1234 = dir.path().join("pin1234");
    std::fs::write(&pin1234, "1234\n").unwrap();
    let pin1234 = pin1234.to_str().unwrap();
    let out = tessera(&[
        "vault",
        "backup",
        "--main-image",
        main_s,
        "--backup-image",
        backup_s,
        "--pin-file",
        pin1234,
    ]);
    assert_exit(&out, 0);
    let recipient = |img: &str| {
        let out = tessera(&["vault", "recipient", "--image", img]);
        assert_exit(&out, 0);
        text(&out.stdout).trim().to_owned()
    };
    let r = recipient(main_s);
    assert_eq!(recipient(backup_s), r);
    let plain = dir.path().join("plain.txt");
    std::fs::write(&plain, b"provisioned by the key service").unwrap();
    let sealed = dir.path().join("plain.txt.age");
    let opened = dir.path().join("opened.txt");
    let (plain, sealed_s, opened_s) =
        (plain.to_str().unwrap(), sealed.to_str().unwrap(), opened.to_str().unwrap());
    assert_exit(&tessera(&["file", "encrypt", "-r", &r, "-o", sealed_s, plain]), 0);
    let out = tessera(&[
        "file",
        "decrypt",
        "--image",
        backup_s,
        "--pin-file",
        pin1234,
        "-o",
        opened_s,
        sealed_s,
    ]);
    assert_exit(&out, 0);
    assert_eq!(std::fs::read(&opened).unwrap(), b"provisioned by the key service");
}
