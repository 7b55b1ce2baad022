//! Attacks on the audit log: a changed, removed or truncated row is detected; the database
//! refuses updates and deletes outright. Both databases.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestDb, root};
use tessera_server::StoreConfig;
use tessera_server::db::{Db, Dialect};

/// Opens a second connection and removes the append-only triggers, as an attacker with
/// database access could.
async fn attacker(db: &TestDb) -> Db {
    let raw = Db::open(&db.location).await.unwrap();
    let mut tx = raw.begin().await.unwrap();
    // The triggers refuse changes first.
    let refused = tx.execute("UPDATE audit_log SET actor = 'x' WHERE seq = 1", &[]).await;
    assert!(refused.is_err(), "append-only trigger must refuse UPDATE");
    drop(tx);
    let mut tx = raw.begin().await.unwrap();
    assert!(tx.execute("DELETE FROM audit_log WHERE seq = 1", &[]).await.is_err());
    drop(tx);
    let mut tx = raw.begin().await.unwrap();
    match raw.dialect() {
        Dialect::Sqlite => tx
            .batch(
                "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete; \
                 DROP TRIGGER audit_checkpoints_no_delete;",
            )
            .await
            .unwrap(),
        Dialect::Postgres => tx
            .batch(
                "DROP TRIGGER audit_log_append_only ON audit_log; \
                 DROP TRIGGER audit_checkpoints_append_only ON audit_checkpoints;",
            )
            .await
            .unwrap(),
    }
    tx.commit().await.unwrap();
    raw
}

async fn tamper(raw: &Db, sql: &str) {
    let mut tx = raw.begin().await.unwrap();
    tx.batch(sql).await.unwrap();
    tx.commit().await.unwrap();
}

async fn populated(db: &TestDb) -> tessera_server::Store {
    let store = db.store_with(StoreConfig { checkpoint_every: 5, ..StoreConfig::default() }).await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    for i in 0..11 {
        store.register_card(&root(), "acme", &format!("C{i}")).await.unwrap();
    }
    assert!(store.verify_audit(None).await.unwrap().ok);
    store
}

async fn changed_row_is_detected(db: TestDb) {
    let store = populated(&db).await;
    let raw = attacker(&db).await;
    tamper(&raw, "UPDATE audit_log SET subject = 'C99' WHERE seq = 7").await;
    let report = store.verify_audit(None).await.unwrap();
    assert!(!report.ok);
    assert!(
        report.problems.iter().any(|p| p.contains("entry 7") && p.contains("changed")),
        "{:?}",
        report.problems
    );
}
both!(changed_row_is_detected);

async fn rehashed_row_is_detected_by_the_next_link(db: TestDb) {
    // An attacker who also recomputes the changed row's hash breaks the next row's link
    // (and the checkpoint covering it).
    let store = populated(&db).await;
    let rows = store.audit_entries(&root(), 5, 1).await.unwrap();
    let e = &rows[0];
    let raw = attacker(&db).await;
    tamper(&raw, &format!("UPDATE audit_log SET hash = prev_hash WHERE seq = {}", e.seq)).await;
    let report = store.verify_audit(None).await.unwrap();
    assert!(!report.ok);
    assert!(report.problems.iter().any(|p| p.contains("does not link")), "{:?}", report.problems);
}
both!(rehashed_row_is_detected_by_the_next_link);

async fn removed_row_is_detected(db: TestDb) {
    let store = populated(&db).await;
    let raw = attacker(&db).await;
    tamper(&raw, "DELETE FROM audit_log WHERE seq = 3").await;
    let report = store.verify_audit(None).await.unwrap();
    assert!(!report.ok);
    assert!(report.problems.iter().any(|p| p.contains("missing")), "{:?}", report.problems);
}
both!(removed_row_is_detected);

async fn truncated_tail_is_detected(db: TestDb) {
    let store = populated(&db).await;
    let before = store.verify_audit(None).await.unwrap();
    assert_eq!(before.head_seq, 12);
    let head = (before.head_seq, hex::decode(&before.head_hash).unwrap());
    let raw = attacker(&db).await;
    // Cutting back past a checkpoint: the checkpoint points beyond the end.
    tamper(&raw, "DELETE FROM audit_log WHERE seq > 8").await;
    let report = store.verify_audit(None).await.unwrap();
    assert!(!report.ok);
    assert!(report.problems.iter().any(|p| p.contains("truncated")), "{:?}", report.problems);
    // Cutting back to just after a checkpoint, and dropping later checkpoints too: only the
    // head remembered from an earlier verify catches it.
    tamper(
        &raw,
        "DELETE FROM audit_log WHERE seq > 5; DELETE FROM audit_checkpoints WHERE seq > 5",
    )
    .await;
    assert!(store.verify_audit(None).await.unwrap().ok, "undetectable without an anchor");
    let report = store.verify_audit(Some(head)).await.unwrap();
    assert!(!report.ok);
    assert!(
        report.problems.iter().any(|p| p.contains("expected head 12 is gone")),
        "{:?}",
        report.problems
    );
}
both!(truncated_tail_is_detected);

async fn forged_checkpoint_is_detected(db: TestDb) {
    let store = populated(&db).await;
    let raw = attacker(&db).await;
    let mut tx = raw.begin().await.unwrap();
    tx.execute(
        "INSERT INTO audit_checkpoints (seq, hash, at, signature) VALUES (12, $1, 0, $2)",
        &[vec![0u8; 32].into(), vec![1u8; 64].into()],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let report = store.verify_audit(None).await.unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("checkpoint 12: bad signature")),
        "{:?}",
        report.problems
    );
}
both!(forged_checkpoint_is_detected);

async fn appends_from_two_replicas_form_one_chain(db: TestDb) {
    let a = db.store().await;
    let b = db.store().await;
    a.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.register_card(&root(), "acme", &format!("C{i}")).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = b.verify_audit(None).await.unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.entries, 21);
}
both!(appends_from_two_replicas_form_one_chain);
