//! Enrolment through a running `tessera server` (issue 6 item 1, Fig. 9) end to end, as a
//! user runs it: the issuer's CA certifies a card and two terminals (`tessera enroll …
//! --server URL --issuer ID`, the server certificate pinned, an issuer token), both terminals
//! pair and use a service, terminal B is revoked at the server, the card loads the new CRL
//! from the server (`tessera enroll card-crl --server`) and then refuses to pair with B while
//! A keeps working; B's key file takes the new CRL too (`tessera enroll crl --server`).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::{Server, text};

use tessera_card::applets::isd::scenarios as isd;
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};

fn tessera(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env_remove("TESSERA_TOKEN")
        .env_remove("TESSERA_FINGERPRINT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command refused before it reads stdin closes the pipe: that is not a failure here.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
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
fn enrol_through_the_server_pair_revoke_and_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = Server::start(&data);
    let (url, fingerprint, root) =
        (server.url.clone(), server.fingerprint.clone(), server.token.clone());
    let admin = |token: &str, args: &[&str]| {
        let mut all = vec!["--json", "admin", "--server", &url, "--fingerprint", &fingerprint];
        all.extend_from_slice(&["--token", token]);
        all.extend_from_slice(args);
        tessera(&all, "")
    };
    ok(&admin(&root, &["issuers", "create", "acme", "Acme Bank"]));
    ok(&admin(&root, &["issuers", "create", "globex", "Globex"]));
    let station_token = |issuer: &str| {
        let out =
            ok(&admin(&root, &["tokens", "create", "--issuer", issuer, "--label", "station"]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let token = v["token"].as_str().unwrap().to_owned();
        let path = dir.path().join(format!("{issuer}.token"));
        std::fs::write(&path, format!("{token}\n")).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let acme = station_token("acme");
    let globex = station_token("globex");
    let at_server = |token: &str| {
        ["--server", url.as_str(), "--issuer", "acme", "--fingerprint", fingerprint.as_str()]
            .into_iter()
            .map(str::to_owned)
            .chain(["--token-file".to_owned(), token.to_owned()])
            .collect::<Vec<_>>()
    };

    let image = issued_image(dir.path());
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "pw\n").unwrap();
    let pass = pass.to_str().unwrap();
    let enrol_card = |token: &str| {
        let mut args = vec!["--json", "enroll", "card", "--image", &image, "--pin-stdin"];
        let server = at_server(token);
        args.extend(server.iter().map(String::as_str));
        tessera(&args, "1234\n")
    };
    // Another issuer's token gets no challenge of acme; nothing is written on the card.
    let refused = enrol_card(&globex);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("404"), "{}", text(&refused.stderr));
    // Without a pinned fingerprint the https server is not contacted.
    let unpinned = tessera(
        &["enroll", "card", "--image", &image, "--pin-stdin", "--server", &url, "--issuer", "acme"],
        "1234\n",
    );
    assert_eq!(unpinned.status.code(), Some(2), "{}", text(&unpinned.stderr));
    let card: serde_json::Value = serde_json::from_str(&ok(&enrol_card(&acme))).unwrap();
    assert_eq!(card["enrolled"], "card", "{card}");
    // Enrolment is one-time: the card refuses a second one (exit 1, like the server's 4xx).
    let again = enrol_card(&acme);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stderr));

    let mut serials = Vec::new();
    let mut keys = Vec::new();
    for name in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
        let key = dir.path().join(name).join("terminal.key");
        let key = key.to_str().unwrap().to_owned();
        let mut args = vec!["--json", "enroll", "terminal", "--key", &key, "--name"];
        let subject = format!("till {name}");
        args.extend_from_slice(&[&subject, "--key-passphrase-file", pass]);
        let server = at_server(&acme);
        args.extend(server.iter().map(String::as_str));
        let out = ok(&tessera(&args, ""));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        serials.push(v["serial"].as_str().unwrap().to_owned());
        keys.push(key);
    }
    // The server recorded one card and two terminal certificates.
    let acme_token = std::fs::read_to_string(&acme).unwrap();
    let acme_token = acme_token.trim();
    let certs = ok(&admin(acme_token, &["issuers", "certs", "acme"]));
    let certs: serde_json::Value = serde_json::from_str(&certs).unwrap();
    let roles: Vec<&str> =
        certs.as_array().unwrap().iter().filter_map(|c| c["role"].as_str()).collect();
    assert_eq!(roles.iter().filter(|r| **r == "terminal").count(), 2, "{certs}");
    assert_eq!(roles.iter().filter(|r| **r == "card").count(), 1, "{certs}");

    let service = |key: &str, args: &[&str], stdin: &str| {
        let mut all = vec!["--json", "service"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--image", &image, "--key", key, "--key-passphrase-file", pass]);
        tessera(&all, stdin)
    };
    // Both terminals pair (PIN) and use a service.
    ok(&service(&keys[0], &["ledger", "credit", "100", "--pin-stdin"], "1234\n"));
    let out = ok(&service(&keys[1], &["ledger", "balance", "--pin-stdin"], "1234\n"));
    assert!(out.contains("balance 100"), "{out}");

    // Control: B re-pairs after forgetting its pairing (the refusal below is the CRL's doing).
    std::fs::remove_file(dir.path().join("b").join("pairings.store")).unwrap();
    let out = ok(&service(&keys[1], &["ledger", "balance", "--pin-stdin"], "1234\n"));
    assert!(out.contains("balance 100"), "{out}");

    // Revoke terminal B at the server and load the new CRL on the card from the server (no
    // token: the CRL is public). The card drops its pairing with B: B's next insertion fails
    // to authenticate, runs setup, and the card refuses B's certificate (6984).
    ok(&admin(acme_token, &["issuers", "revoke-cert", "acme", &serials[1]]));
    let loaded = ok(&tessera(
        &[
            "enroll",
            "card-crl",
            "--image",
            &image,
            "--server",
            &url,
            "--issuer",
            "acme",
            "--fingerprint",
            &fingerprint,
        ],
        "",
    ));
    assert!(loaded.contains("loaded the CRL"), "{loaded}");
    let refused = service(&keys[1], &["ledger", "balance", "--pin-stdin"], "1234\n");
    let why = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{why}");
    assert!(why.contains("PAIR BEGIN") && why.contains("6984"), "{why}");
    // B refreshes its own CRL from the server too (a current list of its CA).
    let crl = ok(&tessera(
        &[
            "enroll",
            "crl",
            "--key",
            &keys[1],
            "--key-passphrase-file",
            pass,
            "--server",
            &url,
            "--issuer",
            "acme",
            "--fingerprint",
            &fingerprint,
        ],
        "",
    ));
    assert!(crl.contains("refreshed the CRL"), "{crl}");
    let refused = service(&keys[1], &["ledger", "balance", "--pin-stdin"], "1234\n");
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    // A (already paired) still works; the card was not changed by B's attempt.
    let out = ok(&service(&keys[0], &["ledger", "balance", "--pin-fd", "999"], ""));
    assert!(out.contains("balance 100"), "{out}");
}

#[test]
fn the_ca_is_a_directory_or_a_server_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("t.key");
    let key = key.to_str().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "pw\n").unwrap();
    let pass = pass.to_str().unwrap();
    let base = ["enroll", "terminal", "--key", key, "--key-passphrase-file", pass];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        tessera(&args, "")
    };
    // Neither, both, a server without an issuer, a token without a server: usage (2).
    for extra in [
        &[][..],
        &["--ca-dir", "x", "--server", "http://127.0.0.1:1", "--issuer", "acme"][..],
        &["--server", "http://127.0.0.1:1"][..],
        &["--ca-dir", "x", "--token", "tsr_x"][..],
    ] {
        let out = run(extra);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", text(&out.stderr));
    }
    // A server that does not answer: exit 3, and no key file is written.
    let out = run(&["--server", "http://127.0.0.1:1", "--issuer", "acme", "--token", "tsr_x"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(!Path::new(key).exists());
}
