//! `tessera demo --chapter update` runs end to end: card A's updates applied with receipts,
//! A's package refused by card B (6A88, then 6984 when re-addressed), the old one replayed (6A89).

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn the_update_chapter_applies_and_refuses_what_it_must() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["demo", "--json", "--chapter", "update"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["chapter"], "update");
    let steps = v[0]["steps"].as_array().unwrap();
    let loads: Vec<&str> = steps
        .iter()
        .filter(|s| s["exchange"].as_str().is_some_and(|e| e.starts_with("LOAD PACKAGE")))
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(loads.len(), 5, "{loads:?}");
    assert_eq!(&loads[..2], ["success", "success"]);
    assert_eq!(loads[2], "referenced data not found");
    assert_eq!(loads[3], "reference data not usable");
    assert_eq!(loads[4], "already exists");
    let said: Vec<&str> = steps.iter().filter_map(|s| s["say"].as_str()).collect();
    assert!(
        said.iter()
            .any(|s| s.contains("\"correct-horse-2026\"") && s.contains("\"sso-token-7f3a\""))
    );
}
