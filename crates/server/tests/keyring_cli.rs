//! The keyring from the command line's functions against a running server over HTTPS:
//! `tessera sync` (renewal through the tunnel, the card in process), `tessera admin keyring
//! status|compromised|policy|resync`; and master-key rotation re-sealing keyring records.

#![allow(clippy::unwrap_used)]

mod common;

use clap::Parser;
use common::{TestDb, root, test_master_key};
use tessera_card::applets::isd::scenarios as isd;
use tessera_card::applets::keyring::scenarios::personalize_keyring;
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_server::cli::{AdminArgs, FailureKind, SyncArgs, admin, sync};
use tessera_server::primitives::MasterKey;
use tessera_server::server::{ServerOptions, start};
use tessera_server::store::keyring::{KeyringLayout, KeyringMode, ReportCompromise};
use tessera_server::{ServerError, Store, StoreConfig};

struct Direct<'a>(&'a mut Card);

impl TearDriver for Direct<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

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

const LAYOUT: KeyringLayout =
    KeyringLayout { mode: KeyringMode::Symmetric, internal_slots: 3, external_slots: 2 };

async fn card_with_keyring(store: &Store) -> Card {
    let id = std::str::from_utf8(isd::CARD_ID).unwrap();
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    store.register_card(&root(), "acme", id).await.unwrap();
    let groups = store.issue_keyring(&root(), "acme", id, &LAYOUT).await.unwrap();
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    let mut d = Direct(&mut card);
    let mut s = Script::new(&mut d);
    isd::personalize(&mut s).unwrap();
    personalize_keyring(&mut s, &groups).unwrap();
    card
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_admin_keyring_commands_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServerOptions::new(dir.path());
    opts.listen = "127.0.0.1:0".parse().unwrap();
    let server = start(opts, std::future::pending()).await.unwrap();
    let url = format!("https://{}", server.addr);
    let fp = server.fingerprint.clone().unwrap();
    let token = server.bootstrap_token.clone().unwrap();
    let card_id = std::str::from_utf8(isd::CARD_ID).unwrap();
    let mut card = card_with_keyring(&server.store).await;
    let run = |rest: &[&str]| {
        let mut argv = vec!["admin", "--server", &url, "--fingerprint", &fp, "--token", &token];
        argv.extend_from_slice(rest);
        Admin::try_parse_from(argv).unwrap().args
    };
    let sync_args =
        Sync::try_parse_from(["sync", "--server", &url, "--fingerprint", &fp, "--issuer", "acme"])
            .unwrap()
            .args;

    let r =
        admin(&run(&["keyring", "compromised", "acme", card_id, "internal", "3"])).await.unwrap();
    assert_eq!(r.json["forced_level"], 0);
    card.reset();
    let report = sync(&sync_args, |apdu| Ok(card.transmit(apdu))).await.unwrap();
    assert!(report.human.contains("renewal"), "{}", report.human);
    let r = admin(&run(&["keyring", "status", "acme", card_id])).await.unwrap();
    assert!(r.human.starts_with(&format!("card {card_id} (acme, symmetric): ok")), "{}", r.human);
    assert!(r.human.contains("internal\t3\t2\t2\t-"), "{}", r.human);
    assert!(r.human.contains("external\t2\t2\t2\t-"), "{}", r.human);
    assert!(r.human.contains("internal\t1\t1\t1\t-"), "{}", r.human);

    let r = admin(&run(&["keyring", "policy", "acme"])).await.unwrap();
    assert_eq!(r.json["intervals"][0], 2_592_000);
    let set = r#"{"intervals":[3600],"single_random":true}"#;
    let r = admin(&run(&["keyring", "policy", "acme", "--set", set])).await.unwrap();
    assert_eq!(r.json["single_random"], true);
    let err = admin(&run(&["keyring", "resync", "acme", card_id])).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Refused);
    let err = admin(&run(&["keyring", "status", "acme", "NOPE"])).await.unwrap_err();
    assert!(err.message.contains("404"), "{}", err.message);

    // Root compromise: tessera sync fails with the re-issue report.
    admin(&run(&["keyring", "compromised", "acme", card_id, "external", "1"])).await.unwrap();
    card.reset();
    let err = sync(&sync_args, |apdu| Ok(card.transmit(apdu))).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Refused);
    assert!(err.message.contains("re-issue"), "{}", err.message);
    server.shutdown().await.unwrap();
}

async fn rotation_reseals_keyrings(db: TestDb) {
    let mut store = db.store().await;
    let _card = card_with_keyring(&store).await;
    let id = std::str::from_utf8(isd::CARD_ID).unwrap();
    let report = ReportCompromise { kind: "internal".into(), slot: 2 };
    store.keyring_compromised(&root(), "acme", id, &report).await.unwrap();
    let before = store.keyring_status(&root(), "acme", id).await.unwrap();
    let new = MasterKey::from_bytes([9; 32]);
    store.rotate_master_key(&root(), new.clone()).await.unwrap();
    assert_eq!(store.keyring_status(&root(), "acme", id).await.unwrap(), before);
    // A server started with the new key reads them; the old key no longer opens the store.
    let db2 = tessera_server::db::Db::open(&db.location).await.unwrap();
    let reopened = Store::open(db2, new, StoreConfig::default()).await.unwrap();
    assert_eq!(reopened.keyring_status(&root(), "acme", id).await.unwrap(), before);
    let db3 = tessera_server::db::Db::open(&db.location).await.unwrap();
    assert!(matches!(
        Store::open(db3, test_master_key(), StoreConfig::default()).await,
        Err(ServerError::Internal(_))
    ));
}
both!(rotation_reseals_keyrings);
