//! Issuance of a legacy card (issue 5, claim 10): `tessera issue --legacy-static-auth`
//! personalises a fresh static authenticator (DGI `0503`) and registers the same value for
//! the card, audited; that card syncs with `tessera sync --legacy-static-auth` (warned,
//! audited as legacy), a card issued without it cannot, and clearing the value stops it. On
//! SQLite and PostgreSQL, against a running server over HTTPS.

#![allow(clippy::unwrap_used)]

mod common;

use clap::Parser;
use common::{TestDb, root};
use tessera_card::{Card, CardOptions};
use tessera_server::cli::{
    AdminArgs, FailureKind, ISSUE_LEGACY_WARNING, IssueArgs, LEGACY_WARNING, SyncArgs, admin,
    issue, sync,
};
use tessera_server::server::{ServerOptions, start};
use tessera_server::store::audit::AuditEntry;

#[derive(Parser)]
struct Admin {
    #[command(flatten)]
    args: AdminArgs,
}

#[derive(Parser)]
struct Sync {
    #[command(flatten)]
    args: SyncArgs,
}

#[derive(Parser)]
struct Issue {
    #[command(flatten)]
    args: IssueArgs,
}

fn blank_card() -> Card {
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    card
}

/// The PIN `tessera issue` reported (its JSON).
fn pin_of(report: &serde_json::Value) -> String {
    report["initial_pin"].as_str().unwrap().to_owned()
}

fn entries<'a>(log: &'a [AuditEntry], action: &str, card: &str) -> Vec<&'a AuditEntry> {
    log.iter().filter(|e| e.action == action && e.subject == card).collect()
}

async fn legacy_issuance_end_to_end(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServerOptions::new(dir.path());
    opts.listen = "127.0.0.1:0".parse().unwrap();
    opts.db = Some(db.location.clone());
    let server = start(opts, std::future::pending()).await.unwrap();
    let url = format!("https://{}", server.addr);
    let fp = server.fingerprint.clone().unwrap();
    let token = server.bootstrap_token.clone().unwrap();
    server.store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let base = ["--server", &url, "--fingerprint", &fp, "--issuer", "acme"];
    let issue_args = |card: &str, extra: &[&str]| {
        let mut argv = vec!["issue", "--token", &token, "--card-id", card];
        argv.extend_from_slice(&base);
        argv.extend_from_slice(extra);
        Issue::try_parse_from(argv).unwrap().args
    };
    let sync_args = |extra: &[&str]| {
        let mut argv = vec!["sync"];
        argv.extend_from_slice(&base);
        argv.extend_from_slice(extra);
        Sync::try_parse_from(argv).unwrap().args
    };
    let run_admin = |rest: &[&str]| {
        let mut argv = vec!["admin", "--server", &url, "--fingerprint", &fp, "--token", &token];
        argv.extend_from_slice(rest);
        Admin::try_parse_from(argv).unwrap().args
    };

    // A legacy card: the switch warns, the card is issued and its value registered.
    let mut legacy = blank_card();
    let r =
        issue(&issue_args("LEGACY-1", &["--legacy-static-auth"]), |apdu| Ok(legacy.transmit(apdu)))
            .await
            .unwrap();
    assert!(r.human.starts_with(ISSUE_LEGACY_WARNING), "{}", r.human);
    assert!(r.human.contains("issued: card LEGACY-1"), "{}", r.human);
    assert_eq!(r.json["legacy_static"], true);
    assert_eq!(r.json["outcome"]["result"], "issued");
    let legacy_pin = pin_of(&r.json);
    // And one without it.
    let mut plain = blank_card();
    let r = issue(&issue_args("PLAIN-1", &[]), |apdu| Ok(plain.transmit(apdu))).await.unwrap();
    assert!(!r.human.contains("WARNING"), "{}", r.human);
    assert_eq!(r.json["legacy_static"], false);
    let plain_pin = pin_of(&r.json);

    let log = server.store.audit_entries(&root(), 0, 1000).await.unwrap();
    let started = entries(&log, "issuance.start", "LEGACY-1");
    assert_eq!(started.len(), 1);
    assert!(started[0].detail.contains("\"legacy_static\":true"), "{}", started[0].detail);
    let set = entries(&log, "update.legacy_static.set", "LEGACY-1");
    assert_eq!(set.len(), 1, "registered once, audited");
    assert!(set[0].detail.contains("\"enabled\":true"), "{}", set[0].detail);
    assert!(entries(&log, "issuance.start", "PLAIN-1")[0].detail.contains("false"));
    assert!(entries(&log, "update.legacy_static.set", "PLAIN-1").is_empty());
    // The value is not in the audit entries of the issuance.
    assert!(!set[0].detail.contains("value") && !started[0].detail.contains("value"));

    // Each card gets an update; the PINs come from files, never arguments.
    for card in ["LEGACY-1", "PLAIN-1"] {
        admin(&run_admin(&["update", "put", "acme", card, "wifi", "--value", "pw-1"]))
            .await
            .unwrap();
    }
    let pin_file = |name: &str, pin: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{pin}\n")).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let legacy_pin = pin_file("legacy-pin", &legacy_pin);
    let plain_pin = pin_file("plain-pin", &plain_pin);

    // The legacy card syncs by its static authenticator: warned, audited as legacy.
    legacy.reset();
    let args = sync_args(&["--pin-file", &legacy_pin, "--legacy-static-auth"]);
    let r = sync(&args, |apdu| Ok(legacy.transmit(apdu))).await.unwrap();
    assert!(r.human.starts_with(LEGACY_WARNING), "{}", r.human);
    assert!(r.human.contains("1 delivered"), "{}", r.human);
    let log = server.store.audit_entries(&root(), 0, 1000).await.unwrap();
    assert_eq!(entries(&log, "update.legacy_static", "LEGACY-1").len(), 1);

    // The card issued without one cannot: the server has no value for it.
    plain.reset();
    let args = sync_args(&["--pin-file", &plain_pin, "--legacy-static-auth"]);
    let err = sync(&args, |apdu| Ok(plain.transmit(apdu))).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Refused, "{}", err.message);
    assert!(err.message.contains("no legacy static authenticator registered"), "{}", err.message);
    assert!(err.message.starts_with(LEGACY_WARNING), "warned before the refusal: {}", err.message);
    // Its challenge-response sync still delivers.
    plain.reset();
    let r = sync(&sync_args(&["--pin-file", &plain_pin]), |apdu| Ok(plain.transmit(apdu)))
        .await
        .unwrap();
    assert!(r.human.contains("1 delivered"), "{}", r.human);

    // Clearing the legacy card's value stops its legacy syncs (another update is pending).
    admin(&run_admin(&["update", "put", "acme", "LEGACY-1", "wifi", "--value", "pw-2"]))
        .await
        .unwrap();
    admin(&run_admin(&["update", "legacy-static", "acme", "LEGACY-1", "--clear"])).await.unwrap();
    legacy.reset();
    let args = sync_args(&["--pin-file", &legacy_pin, "--legacy-static-auth"]);
    let err = sync(&args, |apdu| Ok(legacy.transmit(apdu))).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Refused, "{}", err.message);
    assert!(err.message.contains("no legacy static authenticator registered"), "{}", err.message);
    let log = server.store.audit_entries(&root(), 0, 1000).await.unwrap();
    assert_eq!(entries(&log, "update.legacy_static", "LEGACY-1").len(), 1, "no second one");
    // The card itself still syncs by challenge-response.
    legacy.reset();
    let r = sync(&sync_args(&["--pin-file", &legacy_pin]), |apdu| Ok(legacy.transmit(apdu)))
        .await
        .unwrap();
    assert!(r.human.contains("1 delivered"), "{}", r.human);

    // A second legacy card gets its own value: the first card's static authenticator is not
    // the second's (each issuance draws a fresh one).
    let mut second = blank_card();
    let r =
        issue(&issue_args("LEGACY-2", &["--legacy-static-auth"]), |apdu| Ok(second.transmit(apdu)))
            .await
            .unwrap();
    assert_eq!(r.json["legacy_static"], true);
    server.shutdown().await.unwrap();
}

both!(legacy_issuance_end_to_end);

async fn start_issuance_returns_the_value_once_and_only_when_asked(db: TestDb) {
    use tessera_server::store::issuance::StartIssuance;
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let ask =
        |card: &str, legacy| StartIssuance { card_id: card.into(), legacy_static_auth: legacy };
    let a = store.start_issuance(&root(), "acme", &ask("A", true)).await.unwrap();
    let b = store.start_issuance(&root(), "acme", &ask("B", true)).await.unwrap();
    let c = store.start_issuance(&root(), "acme", &ask("C", false)).await.unwrap();
    let (va, vb) = (a.legacy_static_hex.unwrap(), b.legacy_static_hex.unwrap());
    assert_eq!(hex::decode(&va).unwrap().len(), 16);
    assert_ne!(va, vb, "fresh per card");
    assert!(c.legacy_static_hex.is_none());
    assert!(!serde_json::to_string(&c).unwrap().contains("legacy_static_hex"));
    // Older clients send only the card id: no legacy value.
    let old: StartIssuance = serde_json::from_str(r#"{"card_id":"D"}"#).unwrap();
    assert!(!old.legacy_static_auth);
}

both!(start_issuance_returns_the_value_once_and_only_when_asked);
