//! `tessera sync` as a terminal runs it against a real `tessera server` process: the issuer
//! list check before the PIN (claims 4, 13), the PIN handed over on an inherited descriptor by
//! a login-hook script, the update delivered, and `tessera data read` showing it.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::{Server, assert_exit, tessera, text};

/// The issuer's package-signing certificate (the issuer-list publisher), as a PEM file.
fn publisher_pem(server: &Server, issuer: &str, path: &Path) {
    let out = server.admin(&["--json", "issuers", "show", issuer]);
    assert_exit(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    std::fs::write(path, v["signing_cert_pem"].as_str().unwrap()).unwrap();
}

/// Runs `tessera sync ARGS --pin-file /dev/fd/3` from a login-hook-like shell script that
/// receives the PIN on its standard input (as `pam_exec expose_authtok` gives it) and hands it
/// over on descriptor 3: the PIN is never in any process's arguments.
fn sync_from_hook(server: &Server, args: &[&str], pin: &str) -> Output {
    let mut argv = vec![
        "sync".to_owned(),
        "--server".into(),
        server.url.clone(),
        "--fingerprint".into(),
        server.fingerprint.clone(),
    ];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    argv.extend(["--pin-file".into(), "/dev/fd/3".into()]);
    assert!(!argv.iter().any(|a| a.contains(pin)), "the PIN is not an argument");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"exec "$0" "$@" 3<&0 </dev/null"#)
        .arg(env!("CARGO_BIN_EXE_tessera"))
        .args(&argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A sync that stops before the PIN (an untrusted issuer) may exit before this write: the
    // broken pipe is then the expected outcome, not a test failure.
    let _ = writeln!(child.stdin.take().unwrap(), "{pin}");
    child.wait_with_output().unwrap()
}

#[test]
fn sync_checks_the_issuer_list_before_the_pin_and_delivers_with_a_pin_from_a_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    assert_exit(&server.run("admin", true, &["issuers", "create", "acme", "Acme Bank"]), 0);
    assert_exit(&server.run("admin", true, &["issuers", "create", "other", "Other Bank"]), 0);
    let image = dir.path().join("card.img");
    let image = image.to_str().unwrap();
    assert_exit(&tessera(&["card", "new", "--image", image]), 0);
    let out =
        server.run("issue", true, &["--issuer", "acme", "--card-id", "CARD-1", "--image", image]);
    assert_exit(&out, 0);
    let stdout = text(&out.stdout);
    let pin =
        stdout.lines().find_map(|l| l.strip_prefix("initial PIN: ")).unwrap().trim().to_owned();
    let acme_pem = dir.path().join("acme.pem");
    let other_pem = dir.path().join("other.pem");
    publisher_pem(&server, "acme", &acme_pem);
    publisher_pem(&server, "other", &other_pem);
    let (acme_pem, other_pem) = (acme_pem.to_str().unwrap(), other_pem.to_str().unwrap());
    let held = dir.path().join("trusted-issuers");
    let held_s = held.to_str().unwrap();
    let put = ["update", "put", "acme", "CARD-1", "wifi", "--value", "pw-1"];
    assert_exit(&server.run("admin", true, &put), 0);

    // acme's list checked under other's key: refused, nothing held, the card untouched.
    let card = ["--image", image, "--issuer-list", held_s];
    let wrong_publisher = [&["--issuer", "acme", "--publisher-key", other_pem][..], &card].concat();
    let out = sync_from_hook(&server, &wrong_publisher, "0000");
    assert_exit(&out, 1);
    assert!(text(&out.stderr).contains("issuer list refused"), "{}", text(&out.stderr));
    assert!(!held.exists());

    // other's list, correctly signed, does not name acme's CA: not trusted, stopped before
    // the PIN (a wrong PIN is given and no try is used up).
    let other_issuer = [&["--issuer", "other", "--publisher-key", other_pem][..], &card].concat();
    let out = sync_from_hook(&server, &other_issuer, "0000");
    assert_exit(&out, 1);
    let err = text(&out.stderr);
    assert!(err.contains("issuer not trusted") && !err.contains("PIN"), "{err}");
    std::fs::remove_file(&held).unwrap();

    // The right publisher: the list is held, the PIN comes from descriptor 3, the update is
    // delivered.
    let right = [&["--issuer", "acme", "--publisher-key", acme_pem][..], &card].concat();
    let out = sync_from_hook(&server, &right, &pin);
    assert_exit(&out, 0);
    assert!(text(&out.stdout).contains("updates: 1 delivered"), "{}", text(&out.stdout));
    assert!(held.exists());
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, format!("{pin}\n")).unwrap();
    let out = tessera(&[
        "data",
        "read",
        "wifi",
        "--image",
        image,
        "--pin-file",
        pin_file.to_str().unwrap(),
    ]);
    assert_exit(&out, 0);
    assert_eq!(out.stdout, b"pw-1");

    // Offline, the held list is enough; a held list altered on disk is refused.
    let offline = [&right[..], &["--offline-issuer-list"]].concat();
    assert_exit(&sync_from_hook(&server, &offline, &pin), 0);
    let mut bytes = std::fs::read(&held).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&held, bytes).unwrap();
    let out = sync_from_hook(&server, &offline, &pin);
    assert_exit(&out, 1);
    assert!(text(&out.stderr).contains("issuer list refused"), "{}", text(&out.stderr));
}
