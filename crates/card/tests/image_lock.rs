//! The image lock and child processes: a child forked while the image is open shares its lock
//! until it execs or exits; opening the card again waits for such a lock (briefly), and still
//! reports a card that stays locked.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::process::{Command, Stdio};

use tessera_card::{Card, CardError, CardOptions, OpenOptions};

/// The image at `path` locked the way a card locks it, and a child process (`sleep SECS`)
/// holding a duplicate of that descriptor, as a child forked by another thread does between
/// its fork and its exec; our own descriptor is closed.
fn lock_held_by_a_child(path: &std::path::Path, secs: &str) -> std::process::Child {
    let file = fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    file.try_lock().unwrap();
    let child = Command::new("sleep").arg(secs).stdin(Stdio::from(file)).spawn().unwrap();
    // Only the child's descriptor is left, and the lock with it.
    let again = fs::OpenOptions::new().read(true).open(path).unwrap();
    assert!(matches!(again.try_lock(), Err(fs::TryLockError::WouldBlock)));
    child
}

#[test]
fn an_image_whose_lock_a_child_still_shares_opens_once_the_child_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.img");
    drop(Card::create(&path, CardOptions::default()).unwrap());
    let mut child = lock_held_by_a_child(&path, "0.1");
    let card = Card::open(&path, OpenOptions::default());
    assert!(card.is_ok(), "{:?}", card.err());
    child.wait().unwrap();
}

#[test]
fn an_image_locked_for_longer_is_still_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.img");
    let card = Card::create(&path, CardOptions::default()).unwrap();
    let e = Card::open(&path, OpenOptions::default()).unwrap_err();
    assert!(matches!(e, CardError::Locked { .. }), "{e}");
    drop(card);
    let mut child = lock_held_by_a_child(&path, "3");
    let e = Card::open(&path, OpenOptions::default()).unwrap_err();
    assert!(matches!(e, CardError::Locked { .. }), "{e}");
    child.kill().unwrap();
    child.wait().unwrap();
    Card::open(&path, OpenOptions::default()).unwrap();
}
