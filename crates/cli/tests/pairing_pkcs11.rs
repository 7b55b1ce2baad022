//! `tessera enroll terminal` and `tessera service` with the terminal key in a PKCS#11 token
//! (SoftHSM2, a token the test initialises in a temporary directory; `SOFTHSM2_CONF` is set
//! for the child processes only). Without `softhsm2-util` the test skips with a notice,
//! except under `CI=true`, where that is a failure.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use tessera_card::applets::isd::scenarios as isd;
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_crypto::pkcs11::softhsm::{self, MODULE};

const TOKEN: &str = "tessera-terminal";

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

#[test]
fn terminal_key_in_a_token_enrols_pairs_and_uses_a_service() {
    if !softhsm::available_for_test("the PKCS#11 terminal-key test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = softhsm::init_token(dir.path(), TOKEN, "123456", "654321").unwrap();
    // The child processes see the test's token only, and never a PIN from our environment.
    let tessera = |args: &[&str], pkcs11_pin: Option<&str>, stdin: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
        cmd.args(args).env("SOFTHSM2_CONF", &conf).env_remove("TESSERA_PKCS11_PIN");
        if let Some(pin) = pkcs11_pin {
            cmd.env("TESSERA_PKCS11_PIN", pin);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A command refused before it reads stdin may close the pipe first.
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        child.wait_with_output().unwrap()
    };

    let ca = dir.path().join("ca");
    let ca = ca.to_str().unwrap();
    let image = dir.path().join("card.img");
    let mut card = Card::create(&image, CardOptions::default()).unwrap();
    card.power_on();
    isd::personalize(&mut Script::new(&mut Plain(&mut card))).unwrap();
    drop(card);
    let image = image.to_str().unwrap();
    let key = dir.path().join("terminal.key");
    let key = key.to_str().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "terminal passphrase\n").unwrap();
    let pass = pass.to_str().unwrap();
    let pin_file = dir.path().join("token-pin");
    std::fs::write(&pin_file, "123456\n").unwrap();
    let pin_file = pin_file.to_str().unwrap();
    let token = ["--pkcs11-module", MODULE, "--pkcs11-token", TOKEN];

    ok(&tessera(&["enroll", "ca", "init", "--ca-dir", ca], None, ""));
    ok(&tessera(
        &["enroll", "card", "--image", image, "--ca-dir", ca, "--pin-stdin"],
        None,
        "1234\n",
    ));

    let enrol = |key: &str, pin_args: &[&str], pin_env: Option<&str>| {
        let mut args = vec!["enroll", "terminal", "--key", key, "--ca-dir", ca];
        args.extend_from_slice(&["--key-passphrase-file", pass, "--key-label", "terminal 1"]);
        args.extend_from_slice(&token);
        args.extend_from_slice(pin_args);
        tessera(&args, pin_env, "")
    };
    // The token options without a key label, or a wrong token PIN: refused, no key file.
    let mut no_label = vec!["enroll", "terminal", "--key", key, "--ca-dir", ca];
    no_label.extend_from_slice(&["--key-passphrase-file", pass]);
    no_label.extend_from_slice(&token);
    assert_eq!(tessera(&no_label, Some("123456"), "").status.code(), Some(2));
    let wrong_pin = enrol(key, &[], Some("000000"));
    assert_ne!(wrong_pin.status.code(), Some(0));
    assert!(text(&wrong_pin.stderr).contains("C_Login"), "{}", text(&wrong_pin.stderr));
    assert!(!Path::new(key).exists());
    // A CA that does not answer after the key was generated in the token: exit 3, no key
    // file, and the key is deleted again (the label is free for the retry below).
    let mut down = vec!["enroll", "terminal", "--key", key, "--key-passphrase-file", pass];
    down.extend_from_slice(&["--server", "http://127.0.0.1:1", "--issuer", "acme"]);
    down.extend_from_slice(&["--token", "tsr_x", "--key-label", "terminal 1"]);
    down.extend_from_slice(&token);
    let out = tessera(&down, Some("123456"), "");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(!Path::new(key).exists());
    // Enrolment with the key generated in the token (PIN from a file).
    let out = ok(&enrol(key, &["--pkcs11-pin-file", pin_file], None));
    assert!(out.contains("enrolled terminal"), "{out}");
    // The label is taken now: a second enrolment with it is refused and writes nothing.
    let other = dir.path().join("other.key");
    let again = enrol(other.to_str().unwrap(), &[], Some("123456"));
    assert_ne!(again.status.code(), Some(0));
    assert!(text(&again.stderr).contains("already has a key"), "{}", text(&again.stderr));
    assert!(!other.exists());

    let service = |args: &[&str], with_token: bool, stdin: &str| {
        let mut all = vec!["--json", "service"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--image", image, "--key", key, "--key-passphrase-file", pass]);
        if with_token {
            all.extend_from_slice(&token);
        }
        tessera(&all, Some("123456"), stdin)
    };
    // The key file names a key in a token: without the token it is refused.
    let without = service(&["ledger", "balance", "--pin-fd", "999"], false, "");
    assert_eq!(without.status.code(), Some(5), "{}", text(&without.stderr));
    assert!(text(&without.stderr).contains("PKCS#11 token"), "{}", text(&without.stderr));
    // First use: pairs (the setup transcript signed in the token), then credits.
    let first = ok(&service(&["ledger", "credit", "70", "--pin-stdin"], true, "1234\n"));
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!((v["result"].as_str(), v["repaired"].as_bool()), (Some("balance 70"), Some(true)));
    // Afterwards: authentication alone, no card PIN read.
    let second = ok(&service(&["ledger", "balance", "--pin-fd", "999"], true, ""));
    let v: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert_eq!((v["result"].as_str(), v["repaired"].as_bool()), (Some("balance 70"), Some(false)));
    // The CRL refresh rewrites the key file and keeps the key in the token.
    let mut crl =
        vec!["enroll", "crl", "--key", key, "--ca-dir", ca, "--key-passphrase-file", pass];
    crl.extend_from_slice(&token);
    ok(&tessera(&crl, Some("123456"), ""));
    ok(&service(&["notes", "put", "1", "token", "--pin-fd", "999"], true, ""));
}
