//! Schema migrations: upgrading a database made with the first schema keeps its data and
//! gains the new tables; a newer schema is refused. Both databases.

#![allow(clippy::unwrap_used)]

mod common;

use common::{FakeCard, TestDb, root, test_master_key};
use tessera_server::db::{Db, LATEST_VERSION, MIGRATION_VERSIONS, Value};
use tessera_server::store::sessions::CreateSession;
use tessera_server::{Store, StoreConfig};

async fn upgrade_from_first_schema(db: TestDb) {
    let v1 = Db::open_unmigrated(&db.location).await.unwrap();
    assert_eq!(v1.schema_version().await.unwrap(), 0);
    v1.migrate_to(MIGRATION_VERSIONS[0]).await.unwrap();
    assert_eq!(v1.schema_version().await.unwrap(), 1);
    // The tunnel's tables do not exist yet.
    let mut tx = v1.begin().await.unwrap();
    assert!(tx.query("SELECT id FROM sessions", &[]).await.is_err());
    drop(tx);
    // Data written with the first schema.
    let old = Store::open(v1, test_master_key(), StoreConfig::default()).await.unwrap();
    let token = old.bootstrap_superuser().await.unwrap().unwrap().token;
    old.create_issuer(&root(), "acme", "Acme").await.unwrap();
    drop(old);
    // A card row as the first schema had it (no `flagged` column yet).
    let v1 = Db::open_unmigrated(&db.location).await.unwrap();
    let mut tx = v1.begin().await.unwrap();
    tx.execute(
        "INSERT INTO cards (issuer_id, card_id, status, created_at) VALUES ('acme', 'C1', 'active', 0)",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    drop(v1);

    // Upgrade by opening with the current build.
    let store = db.store().await;
    assert_eq!(store.db().schema_version().await.unwrap(), LATEST_VERSION);
    assert!(store.authenticate(&token).await.unwrap().is_superuser());
    let card = store.get_card(&root(), "acme", "C1").await.unwrap();
    assert_eq!(card.flagged, None, "new column, empty for old rows");
    let s =
        store.create_session("acme", &CreateSession { card_id: Some("C1".into()) }).await.unwrap();
    assert!(common::drive(&store, s, &FakeCard::new("C1", 1)).await.done);
    assert!(store.verify_audit(None).await.unwrap().ok);
    // Opening again applies nothing twice.
    let again = Db::open(&db.location).await.unwrap();
    assert_eq!(again.schema_version().await.unwrap(), LATEST_VERSION);
}
both!(upgrade_from_first_schema);

async fn newer_schema_is_refused(db: TestDb) {
    let d = Db::open(&db.location).await.unwrap();
    let mut tx = d.begin().await.unwrap();
    tx.execute(
        "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, 0)",
        &[Value::Int(LATEST_VERSION + 1)],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let err = Db::open(&db.location).await.err().unwrap();
    assert!(err.to_string().contains("newer than this build"), "{err}");
}
both!(newer_schema_is_refused);
