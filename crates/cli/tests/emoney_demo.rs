//! `tessera demo --chapter emoney` runs end to end in process: refill from the bank, buy at
//! the market through the home server, the settlement notice received by the SMTP sink, the
//! replayed token refused, the purchase cancelled once.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn the_emoney_chapter_refills_buys_mails_and_cancels() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["demo", "--json", "--chapter", "emoney"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["chapter"], "emoney");
    let said: Vec<&str> =
        v[0]["steps"].as_array().unwrap().iter().filter_map(|s| s["say"].as_str()).collect();
    let find = |needle: &str| {
        said.iter().find(|s| s.contains(needle)).unwrap_or_else(|| panic!("{needle}: {said:#?}"))
    };
    assert!(find("Refill (Fig. 18)").contains("account balance 300.00 EUR"));
    assert!(find("Payment (Fig. 17)").contains("Card balance 175.00 EUR"));
    assert!(find("The same payment token again is refused").contains("accepted once"));
    let notice = find("Settlement notice");
    assert!(notice.contains("payment -25.00 EUR") && notice.contains("to market.demo"), "{notice}");
    assert!(find("Cancellation (Fig. 20)").contains("Card balance 200.00 EUR"));
    assert!(find("A second cancellation is refused").contains("cancelled already"));
}
