//! The store's behaviour, the same suite on SQLite and on PostgreSQL.

// Test bodies are plain async functions run by the `both!` macro's #[tokio::test]s.
#![allow(clippy::unwrap_used)]

mod common;

use common::{FakeCard, TestDb, root};
use tessera_server::ServerError;
use tessera_server::StoreConfig;
use tessera_server::store::sessions::{CreateSession, Exchange};

async fn issuer_tokens_are_isolated(db: TestDb) {
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme Bank").await.unwrap();
    store.create_issuer(&root(), "globex", "Globex").await.unwrap();
    let acme = store.create_token(&root(), Some("acme"), "ops", 3600).await.unwrap();
    let p = store.authenticate(&acme.token).await.unwrap();
    assert_eq!(p.issuer.as_deref(), Some("acme"));

    store.register_card(&p, "acme", "CARD-1").await.unwrap();
    store.register_card(&root(), "globex", "CARD-2").await.unwrap();
    // Another issuer's cards, tokens and issuer record look like they do not exist.
    assert!(matches!(store.list_cards(&p, "globex").await, Err(ServerError::NotFound(_))));
    assert!(matches!(store.get_card(&p, "globex", "CARD-2").await, Err(ServerError::NotFound(_))));
    assert!(matches!(
        store.revoke_card(&p, "globex", "CARD-2").await,
        Err(ServerError::NotFound(_))
    ));
    assert!(matches!(store.register_card(&p, "globex", "X").await, Err(ServerError::NotFound(_))));
    assert!(matches!(
        store.create_token(&p, Some("globex"), "x", 60).await,
        Err(ServerError::NotFound(_))
    ));
    assert!(matches!(
        store.create_issuer(&p, "evil", "Evil").await,
        Err(ServerError::Forbidden(_))
    ));
    let visible: Vec<String> =
        store.list_issuers(&p).await.unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(visible, ["acme"]);
    // The globex card is untouched.
    assert_eq!(store.get_card(&root(), "globex", "CARD-2").await.unwrap().status, "active");
    assert_eq!(store.list_tokens(&p).await.unwrap().len(), 1);
}
both!(issuer_tokens_are_isolated);

async fn wrong_expired_and_revoked_tokens_are_refused(db: TestDb) {
    let store = db.store().await;
    let boot =
        store.bootstrap_superuser().await.unwrap().expect("first start makes a superuser token");
    assert!(store.bootstrap_superuser().await.unwrap().is_none(), "only once");
    let su = store.authenticate(&boot.token).await.unwrap();
    assert!(su.is_superuser());
    for bad in [
        "",
        "Bearer",
        "tsr_00",
        &format!("tsr_{}", "0".repeat(64)),
        &boot.token[..boot.token.len() - 1],
    ] {
        assert!(
            matches!(store.authenticate(bad).await, Err(ServerError::Unauthorized(_))),
            "{bad}"
        );
    }
    let short = store.create_token(&su, None, "short", 1).await.unwrap();
    store.authenticate(&short.token).await.unwrap();
    let t = store.create_token(&su, None, "t", 3600).await.unwrap();
    store.revoke_token(&su, &t.info.id).await.unwrap();
    assert!(matches!(store.authenticate(&t.token).await, Err(ServerError::Unauthorized(_))));
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert!(matches!(store.authenticate(&short.token).await, Err(ServerError::Unauthorized(_))));
    assert!(matches!(store.create_token(&su, None, "x", 0).await, Err(ServerError::BadRequest(_))));
}
both!(wrong_expired_and_revoked_tokens_are_refused);

async fn tunnel_identifies_a_card_and_retries_are_idempotent(db: TestDb) {
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    store.register_card(&root(), "acme", "CARD-1").await.unwrap();
    let card = FakeCard::new("CARD-1", 0x31);

    let first = store.create_session("acme", &CreateSession { card_id: None }).await.unwrap();
    assert_eq!(first.step, 0);
    assert_eq!(first.apdus.len(), 2);
    let req0 = Exchange { step: 0, responses: card.answer_all(&first.apdus) };
    let second = store.exchange(&first.session_id, &req0).await.unwrap();
    assert_eq!((second.step, second.done, second.apdus.len()), (1, false, 1));
    // A retried step 0 gets the same step 1, even on the other side of step 1's answer.
    assert_eq!(store.exchange(&first.session_id, &req0).await.unwrap(), second);
    let req1 = Exchange { step: 1, responses: card.answer_all(&second.apdus) };
    let answer = store.exchange(&first.session_id, &req1).await.unwrap();
    assert!(answer.done);
    let outcome = answer.outcome.clone().unwrap();
    assert_eq!(outcome.result, "identified");
    assert_eq!(outcome.card_id.as_deref(), Some("CARD-1"));
    // The same responses again: the same answer, and the audit log does not grow.
    let audit_len = store.audit_entries(&root(), 0, 1000).await.unwrap().len();
    assert_eq!(store.exchange(&first.session_id, &req1).await.unwrap(), answer);
    assert_eq!(store.audit_entries(&root(), 0, 1000).await.unwrap().len(), audit_len);
    // Different responses for the answered step, an older step, or a later step: refused.
    let other =
        Exchange { step: 1, responses: FakeCard::new("CARD-1", 0x32).answer_all(&second.apdus) };
    assert!(matches!(
        store.exchange(&first.session_id, &other).await,
        Err(ServerError::Conflict(_))
    ));
    assert!(matches!(store.exchange(&first.session_id, &req0).await, Err(ServerError::Gone(_))));
    let later = Exchange { step: 2, responses: vec![] };
    assert!(matches!(store.exchange(&first.session_id, &later).await, Err(ServerError::Gone(_))));
    let got = store.get_card(&root(), "acme", "CARD-1").await.unwrap();
    assert_eq!(got.counters.get("isd.kvn"), Some(&0x31));
    assert_eq!(got.flagged, None);
}
both!(tunnel_identifies_a_card_and_retries_are_idempotent);

async fn tunnel_bad_input_changes_nothing(db: TestDb) {
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    store.create_issuer(&root(), "globex", "Globex").await.unwrap();
    store.register_card(&root(), "acme", "CARD-1").await.unwrap();
    store.register_card(&root(), "acme", "CARD-R").await.unwrap();
    store.register_card(&root(), "globex", "CARD-G").await.unwrap();
    store.revoke_card(&root(), "acme", "CARD-R").await.unwrap();

    // Unknown issuer, unknown card, revoked card, other issuer's card at creation.
    let s = |c: &str| CreateSession { card_id: Some(c.to_owned()) };
    assert!(matches!(
        store.create_session("nobody", &CreateSession::default()).await,
        Err(ServerError::NotFound(_))
    ));
    assert!(matches!(
        store.create_session("acme", &s("NOPE")).await,
        Err(ServerError::NotFound(_))
    ));
    assert!(matches!(
        store.create_session("acme", &s("CARD-R")).await,
        Err(ServerError::Forbidden(_))
    ));
    assert!(matches!(
        store.create_session("acme", &s("CARD-G")).await,
        Err(ServerError::NotFound(_))
    ));
    assert!(matches!(
        store.create_session("acme", &s("bad/id")).await,
        Err(ServerError::BadRequest(_))
    ));

    let before = store.audit_entries(&root(), 0, 1000).await.unwrap();
    let sess = store.create_session("acme", &CreateSession::default()).await.unwrap();
    let id = &sess.session_id;
    let after_create = store.audit_entries(&root(), 0, 1000).await.unwrap().len();
    assert_eq!(after_create, before.len() + 1);
    // Cards that identify as unknown, revoked, or another issuer's card.
    for (card, want) in [("NOPE", "not_found"), ("CARD-R", "forbidden"), ("CARD-G", "not_found")] {
        let req = Exchange { step: 0, responses: FakeCard::new(card, 1).answer_all(&sess.apdus) };
        let err = store.exchange(id, &req).await.unwrap_err();
        assert_eq!(err.code(), want, "{card}: {err}");
    }
    // Malformed responses.
    for responses in [vec![], vec!["zz".into(); 2], vec!["90".into(); 2], vec!["9000".into(); 2]] {
        let err = store.exchange(id, &Exchange { step: 0, responses }).await.unwrap_err();
        assert!(matches!(err, ServerError::BadRequest(_)), "{err}");
    }
    // A response to a step the session is not at, and an unknown session.
    let good = Exchange { step: 0, responses: FakeCard::new("CARD-1", 1).answer_all(&sess.apdus) };
    let wrong_step = Exchange { step: 5, ..good.clone() };
    assert!(matches!(store.exchange(id, &wrong_step).await, Err(ServerError::Conflict(_))));
    assert!(matches!(store.exchange("00", &good).await, Err(ServerError::NotFound(_))));
    // Nothing was written by any of it.
    assert_eq!(store.audit_entries(&root(), 0, 1000).await.unwrap().len(), after_create);
    // And the session still works.
    let next = store.exchange(id, &good).await.unwrap();
    assert!(common::drive(&store, next, &FakeCard::new("CARD-1", 1)).await.done);
}
both!(tunnel_bad_input_changes_nothing);

async fn one_live_session_per_card_and_expiry(db: TestDb) {
    let store = db.store_with(StoreConfig { session_ttl_secs: 1, ..StoreConfig::default() }).await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    store.register_card(&root(), "acme", "CARD-1").await.unwrap();
    let req = CreateSession { card_id: Some("CARD-1".into()) };
    let a = store.create_session("acme", &req).await.unwrap();
    assert!(matches!(store.create_session("acme", &req).await, Err(ServerError::Conflict(_))));
    // A session of unknown identity that turns out to be the same card is refused too.
    let b = store.create_session("acme", &CreateSession::default()).await.unwrap();
    let card = FakeCard::new("CARD-1", 1);
    let answer_b = Exchange { step: 0, responses: card.answer_all(&b.apdus) };
    assert!(matches!(
        store.exchange(&b.session_id, &answer_b).await,
        Err(ServerError::Conflict(_))
    ));
    // After expiry: the old session is gone, the card is free again.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let answer_a = Exchange { step: 0, responses: card.answer_all(&a.apdus) };
    assert!(matches!(store.exchange(&a.session_id, &answer_a).await, Err(ServerError::Gone(_))));
    assert_eq!(store.expire_sessions().await.unwrap(), 2);
    let c = store.create_session("acme", &req).await.unwrap();
    assert!(common::drive(&store, c, &card).await.done);
    // Ended sessions are purged after the retention period (here: anything ended before now).
    assert_eq!(store.purge_sessions(3600).await.unwrap(), 0, "too recent");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(store.purge_sessions(0).await.unwrap(), 3);
    assert!(
        store
            .audit_entries(&root(), 0, 1000)
            .await
            .unwrap()
            .iter()
            .any(|e| e.action == "sessions.purge")
    );
}
both!(one_live_session_per_card_and_expiry);

async fn older_counter_flags_a_clone(db: TestDb) {
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    store.register_card(&root(), "acme", "CARD-1").await.unwrap();
    for (kvn, want) in [(0x31u8, "identified"), (0x32, "identified"), (0x31, "flagged")] {
        let s = store.create_session("acme", &CreateSession::default()).await.unwrap();
        let out = common::drive(&store, s, &FakeCard::new("CARD-1", kvn)).await;
        assert_eq!(out.outcome.unwrap().result, want, "kvn {kvn}");
    }
    let card = store.get_card(&root(), "acme", "CARD-1").await.unwrap();
    assert!(card.flagged.unwrap().contains("presented 49, server has seen 50"));
    assert_eq!(card.counters.get("isd.kvn"), Some(&0x32), "the newest value stays");
    let log = store.audit_entries(&root(), 0, 1000).await.unwrap();
    assert!(log.iter().any(|e| e.action == "card.flag" && e.subject == "CARD-1"));
}
both!(older_counter_flags_a_clone);

async fn audit_chain_verifies_and_checkpoints(db: TestDb) {
    let store = db.store_with(StoreConfig { checkpoint_every: 4, ..StoreConfig::default() }).await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    for i in 0..9 {
        store.register_card(&root(), "acme", &format!("C{i}")).await.unwrap();
    }
    let report = store.verify_audit(None).await.unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.entries, 10);
    assert_eq!(report.head_seq, 10);
    assert_eq!(report.checkpoints, 2);
    let head = (report.head_seq, hex::decode(&report.head_hash).unwrap());
    assert!(store.verify_audit(Some(head.clone())).await.unwrap().ok);
    let seqs: Vec<i64> =
        store.audit_entries(&root(), 0, 100).await.unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    // A wrong remembered head is reported.
    assert!(!store.verify_audit(Some((10, vec![0; 32]))).await.unwrap().ok);
}
both!(audit_chain_verifies_and_checkpoints);

/// `Tx::execute_deferred`: later statements of the transaction see its effect; its error is
/// the next call's (or the commit's), and nothing of the transaction is committed.
async fn deferred_statements_run_in_order_and_fail_their_transaction(db: TestDb) {
    use tessera_server::db::{Db, DbError, Value};
    let raw = Db::open(&db.location).await.unwrap();
    let mut tx = raw.begin().await.unwrap();
    tx.batch("CREATE TABLE deferred_t (id BIGINT PRIMARY KEY)").await.unwrap();
    tx.commit().await.unwrap();
    let insert = "INSERT INTO deferred_t (id) VALUES ($1)";
    let count = "SELECT COUNT(*) FROM deferred_t";

    let mut tx = raw.begin().await.unwrap();
    tx.execute_deferred(insert, &[Value::Int(1)]).await.unwrap();
    tx.execute_deferred(insert, &[Value::Int(2)]).await.unwrap();
    let n = tx.query_opt(count, &[]).await.unwrap().unwrap().int(0).unwrap();
    assert_eq!(n, 2, "a later query sees the deferred inserts");
    tx.execute_deferred(insert, &[Value::Int(3)]).await.unwrap();
    tx.commit().await.unwrap();

    // A failing deferred statement fails the next call, and the transaction commits nothing.
    let mut tx = raw.begin().await.unwrap();
    let deferred = tx.execute_deferred(insert, &[Value::Int(4)]).await;
    let duplicate = match tx.execute_deferred(insert, &[Value::Int(1)]).await {
        Err(e) => Err(e),
        Ok(()) => tx.query(count, &[]).await.map(drop),
    };
    assert!(deferred.is_ok());
    assert!(matches!(duplicate, Err(DbError::Constraint(_))), "{duplicate:?}");
    if raw.dialect() == tessera_server::db::Dialect::Postgres {
        // A caller going on after the failure: the transaction refuses, its commit too (on
        // PostgreSQL the deferred insert of 4 went down with it).
        assert!(tx.query(count, &[]).await.is_err());
        assert!(tx.commit().await.is_err());
    } else {
        drop(tx);
    }
    // The same at the commit.
    let mut tx = raw.begin().await.unwrap();
    tx.execute_deferred(insert, &[Value::Int(5)]).await.unwrap();
    let committed = match tx.execute_deferred(insert, &[Value::Int(2)]).await {
        // (SQLite runs it at once.)
        Err(e) => {
            drop(tx);
            Err(e)
        }
        Ok(()) => tx.commit().await,
    };
    assert!(matches!(committed, Err(DbError::Constraint(_))), "{committed:?}");

    let mut tx = raw.begin().await.unwrap();
    let rows = tx.query("SELECT id FROM deferred_t ORDER BY id", &[]).await.unwrap();
    let ids: Vec<i64> = rows.iter().map(|r| r.int(0).unwrap()).collect();
    assert_eq!(ids, [1, 2, 3]);
    tx.commit().await.unwrap();
}
both!(deferred_statements_run_in_order_and_fail_their_transaction);

/// `Tx::query_all`: the queries run in order, each seeing what the ones before it changed,
/// with the deferred statements before them; a failing one fails the call, and the
/// transaction commits nothing.
async fn pipelined_queries_run_in_order_and_fail_together(db: TestDb) {
    use tessera_server::db::{Db, DbError, Value};
    let raw = Db::open(&db.location).await.unwrap();
    let mut tx = raw.begin().await.unwrap();
    tx.batch("CREATE TABLE pipelined_t (id BIGINT PRIMARY KEY)").await.unwrap();
    tx.commit().await.unwrap();
    let insert = "INSERT INTO pipelined_t (id) VALUES ($1) RETURNING id";
    let count = "SELECT COUNT(*) FROM pipelined_t";
    let (one, two) = ([Value::Int(1)], [Value::Int(2)]);

    let mut tx = raw.begin().await.unwrap();
    tx.execute_deferred("INSERT INTO pipelined_t (id) VALUES ($1)", &[Value::Int(0)])
        .await
        .unwrap();
    let rows = tx.query_all(&[(count, &[]), (insert, &one), (count, &[]), (insert, &two)]).await;
    let rows = rows.unwrap();
    let firsts: Vec<i64> = rows.iter().map(|r| r[0].int(0).unwrap()).collect();
    assert_eq!(firsts, [1, 1, 2, 2], "each query sees the ones before it");
    assert!(tx.query_all(&[]).await.unwrap().is_empty());
    tx.commit().await.unwrap();

    // A failing query in the middle: the call fails, nothing of the transaction stays.
    let mut tx = raw.begin().await.unwrap();
    let three = [Value::Int(3)];
    let failed = tx.query_all(&[(insert, &three), (insert, &one), (count, &[])]).await;
    assert!(matches!(failed, Err(DbError::Constraint(_))), "{failed:?}");
    drop(tx);
    let mut tx = raw.begin().await.unwrap();
    let n = tx.query_opt(count, &[]).await.unwrap().unwrap().int(0).unwrap();
    assert_eq!(n, 3, "the failed transaction left nothing");
    tx.commit().await.unwrap();
}
both!(pipelined_queries_run_in_order_and_fail_together);
