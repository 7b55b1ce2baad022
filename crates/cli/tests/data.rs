//! `tessera data list|read` on an issued card image: free objects without a PIN, PIN objects
//! with the PIN from stdin or a file (never an argument), a wrong PIN and an unknown object.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use tessera_card::applets::isd::scenarios::CARD_ID;
use tessera_card::applets::update::scenarios as sc;
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_proto::update::{ObjectDefinition, ReadRule};

fn tessera(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env_remove("TESSERA_PIN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

struct Plain<'a>(&'a mut Card);

impl TearDriver for Plain<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

fn issue(path: &Path) {
    let mut card = Card::create(path, CardOptions::default()).unwrap();
    card.power_on();
    let objects = [
        ObjectDefinition { rule: ReadRule::Pin, name: b"wifi".to_vec(), value: b"s3cret".to_vec() },
        ObjectDefinition {
            rule: ReadRule::Free,
            name: b"dialup".to_vec(),
            value: b"+81 3 555".to_vec(),
        },
    ];
    sc::issue(&mut Script::new(&mut Plain(&mut card)), CARD_ID, &objects, false).unwrap();
}

#[test]
fn data_list_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("card.img");
    issue(&image);
    let img = image.to_str().unwrap();

    let out = tessera(&["data", "list", "--image", img], "");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "dialup\tfree\nwifi\tpin\n");

    // A free object needs no PIN.
    let out = tessera(&["data", "read", "dialup", "--image", img], "");
    assert_eq!((out.status.code(), out.stdout.as_slice()), (Some(0), &b"+81 3 555"[..]));
    // A PIN object without a PIN source: usage error naming the sources.
    let out = tessera(&["data", "read", "wifi", "--image", img], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pin-stdin"));
    // PIN from stdin; from a file.
    let out = tessera(&["data", "read", "wifi", "--image", img, "--pin-stdin"], "1234\n");
    assert_eq!((out.status.code(), out.stdout.as_slice()), (Some(0), &b"s3cret"[..]));
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, "1234\n").unwrap();
    let out = tessera(
        &["data", "read", "wifi", "--image", img, "--pin-file", pin_file.to_str().unwrap()],
        "",
    );
    assert_eq!((out.status.code(), out.stdout.as_slice()), (Some(0), &b"s3cret"[..]));
    // Wrong PIN: the card says no, tries left shown.
    let out = tessera(&["data", "read", "wifi", "--image", img, "--pin-stdin"], "9999\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 tries left"));
    // Unknown object.
    let out = tessera(&["data", "read", "nothing", "--image", img], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no data object"));
}
