//! The `tessera` binary run as a user runs it: exit codes, messages, JSON, tracing, and a card
//! served into a real pcscd.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tessera_host::pcscd::{self, MachineLock, Pcscd};

mod support;
use support::{Child, Server, assert_exit, tessera, text};

fn new_image(dir: &Path) -> String {
    let path = dir.join("card.img").to_str().unwrap().to_owned();
    assert_exit(&tessera(&["card", "new", "--image", &path]), 0);
    path
}

const SELECT_ISD: &str = "00A4040008A000000151000000";

#[test]
fn help_everywhere() {
    for args in [
        &["--help"][..],
        &["card", "--help"],
        &["card", "new", "--help"],
        &["card", "serve", "--help"],
        &["card", "info", "--help"],
        &["apdu", "send", "--help"],
        &["reader", "list", "--help"],
        &["demo", "--help"],
        &["bench", "apdu", "--help"],
    ] {
        let out = tessera(args);
        assert_exit(&out, 0);
        assert!(text(&out.stdout).contains("Usage"), "{args:?}");
    }
    assert!(text(&tessera(&["--help"]).stdout).contains("Exit codes"));
    assert_exit(&tessera(&["card", "frobnicate"]), 2);
    assert_exit(&tessera(&["apdu", "send", SELECT_ISD]), 2); // no --image or --reader
}

#[test]
fn card_new_makes_a_private_image_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_image(dir.path());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = tessera(&["card", "new", "--image", &path]);
    assert_exit(&again, 4);
    assert!(text(&again.stderr).contains(&path), "the error names the file");
}

#[test]
fn card_info_on_a_blank_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_image(dir.path());
    let out = tessera(&["card", "info", "--image", &path]);
    assert_exit(&out, 0);
    assert!(text(&out.stdout).contains("OP_READY"), "{}", text(&out.stdout));
    let out = tessera(&["card", "info", "--image", &path, "--json"]);
    assert_exit(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["life_cycle"]["name"], "OP_READY");
    assert_eq!(v["card_id"]["unavailable"], "6A88");
}

#[test]
fn encrypted_image_needs_its_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "incorrect horse\n").unwrap();
    let image = dir.path().join("enc.img");
    let (image, pass, wrong) =
        (image.to_str().unwrap(), pass.to_str().unwrap(), wrong.to_str().unwrap());
    let out = tessera(&["card", "new", "--image", image, "--passphrase-file", pass, "--json"]);
    assert_exit(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["encrypted"], true);
    for args in [&[][..], &["--passphrase-file", wrong][..]] {
        let mut cmd = vec!["card", "info", "--image", image];
        cmd.extend_from_slice(args);
        let out = tessera(&cmd);
        assert_exit(&out, 4);
        assert!(text(&out.stderr).contains("enc.img"), "{}", text(&out.stderr));
    }
    assert_exit(&tessera(&["card", "info", "--image", image, "--passphrase-file", pass]), 0);
}

#[test]
fn bad_images_exit_4_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.img");
    let out = tessera(&["card", "info", "--image", missing.to_str().unwrap()]);
    assert_exit(&out, 4);
    assert!(text(&out.stderr).contains("nope.img"));

    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, b"this is not a card image at all").unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = tessera(&["apdu", "send", "--image", junk.to_str().unwrap(), SELECT_ISD]);
    assert_exit(&out, 4);
    assert!(text(&out.stderr).contains("junk.img"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&junk).unwrap(), b"this is not a card image at all", "untouched");
}

#[test]
fn apdu_send_reports_answers_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_image(dir.path());
    let out = tessera(&["apdu", "send", "--image", &path, SELECT_ISD, "0084000008"]);
    assert_exit(&out, 0);
    let stdout = text(&out.stdout);
    assert_eq!(stdout.matches("9000 (success)").count(), 2, "{stdout}");

    let out = tessera(&["apdu", "send", "--image", &path, "--json", SELECT_ISD, "00 84 00 00 08"]);
    assert_exit(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[1]["sw"], "9000");
    assert_eq!(v[1]["data"].as_str().unwrap().len(), 16);

    // --raw sends the bytes as given and shows the answer as is: SELECT without Le gets
    // 61xx (data waiting for GET RESPONSE), which the normal mode fetches transparently.
    let out = tessera(&["apdu", "send", "--image", &path, "--raw", SELECT_ISD]);
    assert_exit(&out, 0);
    assert!(text(&out.stdout).contains("< 6112 (success"), "{}", text(&out.stdout));
    let out = tessera(&["apdu", "send", "--image", &path, SELECT_ISD]);
    assert!(text(&out.stdout).contains("< 6F10"), "{}", text(&out.stdout));

    // The card says no: exit 1, with the status word's meaning.
    let out = tessera(&["apdu", "send", "--image", &path, "00A4040005A0000000FF"]);
    assert_exit(&out, 1);
    assert!(text(&out.stderr).contains("6A82"), "{}", text(&out.stderr));

    // Malformed input never reaches the card: exit 2.
    assert_exit(&tessera(&["apdu", "send", "--image", &path, "00A4G0"]), 2);
    assert_exit(&tessera(&["apdu", "send", "--image", &path, "00A4040005A0"]), 2);
}

#[test]
fn trace_logs_apdus_with_the_pin_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_image(dir.path());
    let out = tessera(&[
        "--trace",
        "apdu",
        "send",
        "--image",
        &path,
        SELECT_ISD,
        "0020008008313233343536FFFF",
    ]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains(">> SELECT 00A40400 08A000000151000000"), "{stderr}");
    assert!(stderr.contains(">> VERIFY 00200080 <9 bytes redacted>"), "{stderr}");
    assert!(!stderr.contains("313233343536"), "the PIN leaked: {stderr}");
    // --raw exchanges are traced too, and 61xx shows as the card sent it.
    let raw = tessera(&["--trace", "apdu", "send", "--raw", "--image", &path, SELECT_ISD]);
    assert!(text(&raw.stderr).contains("<< 6112"), "{}", text(&raw.stderr));
    // Without --trace there is no APDU log.
    let quiet = tessera(&["apdu", "send", "--image", &path, SELECT_ISD]);
    assert!(!text(&quiet.stderr).contains(">> SELECT"));
}

#[test]
fn demo_runs_the_platform_chapter() {
    let out = tessera(&["demo"]);
    assert_exit(&out, 0);
    let stdout = text(&out.stdout);
    for step in [
        "SELECT",
        "INITIALIZE UPDATE",
        "EXTERNAL AUTHENTICATE",
        "STORE DATA 84E28800",
        "<< 450844454D4F30303031 9000",
        "no session any more",
    ] {
        assert!(stdout.contains(step), "missing {step}: {stdout}");
    }
    let out = tessera(&["demo", "--json", "--chapter", "platform"]);
    assert_exit(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["chapter"], "platform");
    assert_exit(&tessera(&["demo", "--chapter", "nope"]), 2);
}

#[test]
fn bench_runs_and_reports_json() {
    // Not a speed test: only that the benchmark runs and reports both cards.
    let out = tessera(&["bench", "apdu", "--seconds", "0.05", "--json"]);
    assert_exit(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["path"], "in-process");
    assert!(v[0]["echo"].as_f64().unwrap() > 0.0);
    assert!(v[0]["tessera"].as_f64().unwrap() > 0.0);
    assert_exit(&tessera(&["bench", "apdu", "--seconds", "0"]), 2);
}

#[test]
fn reader_commands_without_pcscd_exit_3_saying_what_to_do() {
    let _lock = MachineLock::acquire().unwrap();
    if pcscd::is_running() {
        eprintln!("NOTICE: a system pcscd is running; its absence cannot be tested");
        return;
    }
    let out = tessera(&["reader", "list"]);
    assert_exit(&out, 3);
    assert!(text(&out.stderr).contains("pcscd is not running: start it with"));
    assert_exit(&tessera(&["apdu", "send", "--reader", "Virtual PCD 00 00", SELECT_ISD]), 3);
}

fn wait_for_card(reader: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = tessera(&["reader", "list", "--json"]);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if v.as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == reader && r["card_present"] == true)
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no card appeared in {reader}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn served_image_is_reached_through_pcscd_and_stops_cleanly() {
    let Some(daemon) = Pcscd::start_for_test(&[]) else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = new_image(dir.path());
    let serve = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["card", "serve", "--image", &path])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = "Virtual PCD 00 00";
    wait_for_card(reader);

    // The image is locked while served.
    let locked = tessera(&["card", "info", "--image", &path]);
    assert_exit(&locked, 4);
    assert!(text(&locked.stderr).contains("locked"), "{}", text(&locked.stderr));

    let out = tessera(&["card", "info", "--reader", reader, "--json"]);
    assert_exit(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["life_cycle"]["name"], "OP_READY");
    let out = tessera(&["apdu", "send", "--reader", reader, SELECT_ISD, "0084000008"]);
    assert_exit(&out, 0);

    // SIGTERM (as from a service manager; Ctrl-C is SIGINT, handled alike): a clean stop.
    let pid = serve.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let done = serve.wait_with_output().unwrap();
    assert_exit(&done, 0);
    assert!(text(&done.stderr).contains("stopped after"), "{}", text(&done.stderr));
    // The lock is released: the image opens again.
    assert_exit(&tessera(&["card", "info", "--image", &path]), 0);
    drop(daemon);
}

#[test]
fn issue_count_needs_an_image_dir() {
    // A reader or an image file holds one card: --count is refused before any server contact.
    for source in [&["--reader", "any"][..], &["--image", "x.card"]] {
        let mut args = vec!["issue", "--issuer", "acme", "--card-id", "C", "--count", "2"];
        args.extend_from_slice(source);
        let out = tessera(&args);
        assert_exit(&out, 2);
        assert!(text(&out.stderr).contains("--count needs --image-dir"), "{}", text(&out.stderr));
    }
    // An impossible prefix is refused the same way (33-character ids).
    let dir = tempfile::tempdir().unwrap();
    let prefix = "P".repeat(28);
    let d = dir.path().to_str().unwrap();
    let out = tessera(&[
        "issue",
        "--issuer",
        "acme",
        "--card-id",
        &prefix,
        "--count",
        "2",
        "--image-dir",
        d,
    ]);
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("prefix"), "{}", text(&out.stderr));
}

#[test]
fn issue_personalises_a_card_in_a_pcsc_reader() {
    let Some(daemon) = Pcscd::start_for_test(&[]) else { return };
    let dir = tempfile::tempdir().unwrap();
    let image = new_image(dir.path());
    let _serve = Child(
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["card", "serve", "--image", &image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let reader = "Virtual PCD 00 00";
    wait_for_card(reader);

    let server = Server::start(&dir.path().join("server"));
    let with_server = |command: &str, args: &[&str]| server.run(command, true, args);
    assert_exit(&with_server("admin", &["issuers", "create", "acme", "Acme Bank"]), 0);
    let out =
        with_server("issue", &["--issuer", "acme", "--card-id", "READER-1", "--reader", reader]);
    assert_exit(&out, 0);
    assert!(text(&out.stdout).contains("PERSONALIZED"), "{}", text(&out.stdout));

    // The card in the reader is personalised: its id and life cycle, read through PC/SC.
    let out = tessera(&["card", "info", "--reader", reader, "--json"]);
    assert_exit(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["life_cycle"]["name"], "PERSONALIZED", "{v}");
    assert!(v["card_id"].to_string().contains(&hex::encode_upper("READER-1")), "{v}");
    drop(daemon);
}
