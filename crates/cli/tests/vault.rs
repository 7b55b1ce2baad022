#![allow(clippy::unwrap_used)] // tests may unwrap

//! `tessera vault` and `tessera file` end to end on card images: issue a pair, back up,
//! encrypt, decrypt with main and backup, recover onto a new card, decrypt with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tessera_card::applets::isd;
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");

struct Direct<'a>(&'a mut Card);
impl TearDriver for Direct<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

/// A card image whose card-management applet is issued (scenario keys, PIN 1234).
fn image(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let mut card = Card::create(&p, CardOptions::default()).unwrap();
    card.power_on();
    isd::scenarios::personalize(&mut Script::new(&mut Direct(&mut card))).unwrap();
    p
}

fn tessera(args: &[&str]) -> Output {
    Command::new(TESSERA).args(args).env("TESSERA_PIN", "1234").output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = tessera(args);
    assert!(
        out.status.success(),
        "tessera {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn issue_backup_encrypt_lose_recover() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (main, backup, new, new_b) =
        (image(d, "main.img"), image(d, "backup.img"), image(d, "new.img"), image(d, "new-b.img"));
    let keys = d.join("isd.keys");
    std::fs::write(&keys, "11111111111111111111111111111111 22222222222222222222222222222222 33333333333333333333333333333333 31\n").unwrap();
    ok(&[
        "vault",
        "issue",
        "--main-image",
        s(&main),
        "--backup-image",
        s(&backup),
        "--components",
        "3",
        "--issuer-slots",
        "1",
        "--isd-keys",
        s(&keys),
    ]);
    let holder = d.join("holder.txt");
    std::fs::write(&holder, format!("2 {}\n3 {}\n", "ab".repeat(32), "cd".repeat(32))).unwrap();
    let out = ok(&[
        "vault",
        "backup",
        "--main-image",
        s(&main),
        "--backup-image",
        s(&backup),
        "--holder-components",
        s(&holder),
    ]);
    assert!(out.contains("main: backup confirmed"), "{out}");
    // Re-running after success changes nothing and says so.
    let out = ok(&[
        "vault",
        "backup",
        "--main-image",
        s(&main),
        "--backup-image",
        s(&backup),
        "--holder-components",
        s(&holder),
    ]);
    assert!(out.contains("backup already confirmed"), "{out}");
    let status = ok(&["--json", "vault", "status", "--image", s(&main)]);
    assert!(status.contains("\"backup_created\": true"), "{status}");

    let plain = d.join("doc.txt");
    std::fs::write(&plain, b"tessera vault file\n".repeat(500)).unwrap();
    let enc = d.join("doc.txt.age");
    ok(&["file", "encrypt", "--image", s(&main), "-o", s(&enc), s(&plain)]);
    // `tessera file …` is parsed on its own; global options work before and after it.
    let json = ok(&["--json", "file", "encrypt", "--image", s(&main), "-o", s(&enc), s(&plain)]);
    let after = ok(&["file", "encrypt", "--json", "--image", s(&main), "-o", s(&enc), s(&plain)]);
    assert!(json.contains("\"output\"") && after.contains("\"output\""), "{json} {after}");
    assert!(ok(&["file", "--help"]).contains("decrypt"));
    for card in [&main, &backup] {
        let out = d.join("out.txt");
        ok(&["file", "decrypt", "--image", s(card), "-o", s(&out), s(&enc)]);
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&plain).unwrap());
    }
    // The new card: a fresh pair, the holder sets its one component, backup generates its key.
    ok(&[
        "vault",
        "issue",
        "--main-image",
        s(&new),
        "--backup-image",
        s(&new_b),
        "--components",
        "1",
        "--issuer-slots",
        "1",
        "--isd-keys",
        s(&keys),
    ]);
    ok(&["vault", "backup", "--main-image", s(&new), "--backup-image", s(&new_b)]);
    // A wrong card cannot decrypt (exit 5, nothing written).
    let out = d.join("never.txt");
    let r = tessera(&["file", "decrypt", "--image", s(&new), "-o", s(&out), s(&enc)]);
    assert!(!r.status.success() && !out.exists());
    // Main card lost: recover with the backup onto the new card.
    let peers = d.join("peers.txt");
    let old = ok(&["vault", "recipient", "--image", s(&backup)]);
    std::fs::write(&peers, format!("alice {}\n", old.trim())).unwrap();
    let report = ok(&[
        "vault",
        "recover",
        "--backup-image",
        s(&backup),
        "--new-image",
        s(&new),
        "--peers",
        s(&peers),
        s(&enc),
    ]);
    assert!(report.contains("recovered") && report.contains("peers.txt:1"), "{report}");
    let out = d.join("after.txt");
    ok(&["file", "decrypt", "--image", s(&new), "-o", s(&out), s(&enc)]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&plain).unwrap());
}

#[test]
fn demo_chapter_runs() {
    let out = ok(&["demo", "--chapter", "vault"]);
    assert!(out.contains("The new card decrypts all 3 files"), "{out}");
    // The key-service part: delivered through the tunnel, nothing secret kept, moved on.
    assert!(out.contains("vault key: delivered"), "{out}");
    assert!(out.contains("private key held: false"), "{out}");
    assert!(out.contains("backup: wrapped key imported"), "{out}");
}
