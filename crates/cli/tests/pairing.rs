//! `tessera enroll` and `tessera service` as a user runs them: a local CA, an issued card
//! image, a terminal key file; pairing on first use (PIN from stdin), authentication alone
//! afterwards (no PIN read), services, and the refusals.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use tessera_card::applets::isd::scenarios as isd;
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};

fn tessera(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    text(&out.stdout)
}

struct Plain<'a>(&'a mut Card);

impl TearDriver for Plain<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

/// An issued card image (card id, PIN 1234).
fn issued_image(dir: &Path) -> String {
    let path = dir.join("card.img");
    let mut card = Card::create(&path, CardOptions::default()).unwrap();
    card.power_on();
    isd::personalize(&mut Script::new(&mut Plain(&mut card))).unwrap();
    drop(card);
    path.to_str().unwrap().to_owned()
}

#[test]
fn enrol_pair_on_first_use_then_authenticate_without_pin() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let ca = ca.to_str().unwrap();
    let image = issued_image(dir.path());
    let key = dir.path().join("terminal").join("terminal.key");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    let key = key.to_str().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "terminal passphrase\n").unwrap();
    let pass = pass.to_str().unwrap();

    ok(&tessera(&["enroll", "ca", "init", "--ca-dir", ca], ""));
    let out = ok(&tessera(
        &["enroll", "card", "--image", &image, "--ca-dir", ca, "--pin-stdin"],
        "1234\n",
    ));
    assert!(out.contains("enrolled card"), "{out}");
    // Enrolment is one-time.
    let again =
        tessera(&["enroll", "card", "--image", &image, "--ca-dir", ca, "--pin-stdin"], "1234\n");
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stderr));
    ok(&tessera(
        &["enroll", "terminal", "--key", key, "--ca-dir", ca, "--key-passphrase-file", pass],
        "",
    ));
    let refreshed = ok(&tessera(
        &["enroll", "crl", "--key", key, "--ca-dir", ca, "--key-passphrase-file", pass],
        "",
    ));
    assert!(refreshed.contains("refreshed the CRL"), "{refreshed}");

    let service = |args: &[&str], stdin: &str| {
        let mut all = vec!["--json", "service"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--image", &image, "--key", key, "--key-passphrase-file", pass]);
        tessera(&all, stdin)
    };
    // PIN never from argv.
    let argv_pin = service(&["ledger", "balance", "--pin", "1234"], "");
    assert_eq!(argv_pin.status.code(), Some(2));
    // First use: pairs (PIN from stdin), then credits.
    let first = ok(&service(&["ledger", "credit", "250", "--pin-stdin"], "1234\n"));
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!((v["result"].as_str(), v["repaired"].as_bool()), (Some("balance 250"), Some(true)));
    // Afterwards: no PIN is read (a closed descriptor would fail if it were).
    let second = ok(&service(&["ledger", "balance", "--pin-fd", "999"], ""));
    let v: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert_eq!((v["result"].as_str(), v["repaired"].as_bool()), (Some("balance 250"), Some(false)));
    ok(&service(&["notes", "put", "3", "meet at noon", "--pin-fd", "999"], ""));
    let note = ok(&service(&["notes", "get", "3", "--pin-fd", "999"], ""));
    assert!(note.contains("meet at noon"), "{note}");
    // Refusals: an overdraft (card says no), a bad argument (usage), a wrong passphrase.
    let over = service(&["ledger", "debit", "1000", "--pin-fd", "999"], "");
    assert_eq!(over.status.code(), Some(1), "{}", text(&over.stderr));
    let bad = service(&["ledger", "credit", "lots", "--pin-fd", "999"], "");
    assert_eq!(bad.status.code(), Some(2));
    std::fs::write(dir.path().join("wrong"), "nope\n").unwrap();
    let wrong = tessera(
        &[
            "service",
            "ledger",
            "balance",
            "--image",
            &image,
            "--key",
            key,
            "--key-passphrase-file",
            dir.path().join("wrong").to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(wrong.status.code(), Some(5), "{}", text(&wrong.stderr));
}

#[test]
fn a_second_terminal_pairs_with_the_pin_and_a_wrong_pin_stops() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let ca = ca.to_str().unwrap();
    let image = issued_image(dir.path());
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "pw\n").unwrap();
    let pass = pass.to_str().unwrap();
    ok(&tessera(&["enroll", "ca", "init", "--ca-dir", ca], ""));
    ok(&tessera(&["enroll", "card", "--image", &image, "--ca-dir", ca, "--pin-stdin"], "1234\n"));
    for name in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
        let key = dir.path().join(name).join("terminal.key");
        let key = key.to_str().unwrap();
        ok(&tessera(
            &["enroll", "terminal", "--key", key, "--ca-dir", ca, "--key-passphrase-file", pass],
            "",
        ));
        let base = ["service", "ledger", "balance", "--image", &image, "--key", key];
        let mut wrong_pin = base.to_vec();
        wrong_pin.extend_from_slice(&["--key-passphrase-file", pass, "--pin-stdin"]);
        let out = tessera(&wrong_pin, "9999\n");
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("wrong PIN"), "{}", text(&out.stderr));
        let out = ok(&tessera(&wrong_pin, "1234\n"));
        assert!(out.contains("balance 0"), "{out}");
    }
}
