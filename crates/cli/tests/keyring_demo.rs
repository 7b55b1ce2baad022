//! `tessera demo --chapter keyring` runs end to end and shows the renewed versions agreeing.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn the_keyring_chapter_renews_and_both_sides_agree() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["demo", "--json", "--chapter", "keyring"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["chapter"], "keyring");
    let steps = v[0]["steps"].as_array().unwrap();
    let exchanges: Vec<&str> = steps.iter().filter_map(|s| s["exchange"].as_str()).collect();
    // Two RENEWs (explicit, then scheduled), every exchange answered 9000.
    assert_eq!(exchanges.iter().filter(|e| e.starts_with("RENEW")).count(), 2);
    assert!(steps.iter().filter(|s| s["exchange"].is_string()).all(|s| s["status"] == "success"));
    // The last table: the bottom pair at version 3 on both sides, the rest at 1.
    let last = steps.iter().rev().find_map(|s| s["say"].as_str()).unwrap();
    assert!(last.contains("internal  3     3       3"), "{last}");
    assert!(last.contains("external  3     3       3"), "{last}");
    assert!(last.contains("internal  2     1       1"), "{last}");
}
