//! Two server replicas on one PostgreSQL database: a tunnel session started on one is
//! continued on the other mid-flight, retries go to either, and the card stays locked to the
//! session across both.

#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{FakeCard, TestDb};
use serde_json::{Value, json};
use tessera_server::http::{Limits, router};
use tower::ServiceExt;

async fn post(app: &axum::Router, path: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_moves_between_replicas_mid_flight() {
    let Some(db) = TestDb::postgres().await else { return };
    // Two replicas: separate stores, separate connection pools, one database.
    let store_a = db.store().await;
    let store_b = db.store().await;
    let a = router(store_a.clone(), Limits::default());
    let b = router(store_b.clone(), Limits::default());
    store_a.create_issuer(&common::root(), "acme", "Acme").await.unwrap();
    store_b.register_card(&common::root(), "acme", "C1").await.unwrap();
    let card = FakeCard::new("C1", 0x31);

    let (status, step0) = post(&a, "/v1/issuers/acme/sessions", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = step0["session_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/sessions/{id}/exchange");
    let apdus: Vec<String> = serde_json::from_value(step0["apdus"].clone()).unwrap();
    let req0 = json!({"step": 0, "responses": card.answer_all(&apdus)});

    // Step 0 answered by replica B.
    let (status, step1) = post(&b, &path, req0.clone()).await;
    assert_eq!(status, StatusCode::OK, "{step1}");
    assert_eq!(step1["step"], 1);
    // The card is now held by this session, as seen from replica A.
    let (status, busy) = post(&a, "/v1/issuers/acme/sessions", json!({"card_id": "C1"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{busy}");
    // A retry of step 0 sent to replica A gets B's answer.
    let (status, retry) = post(&a, &path, req0).await;
    assert_eq!((status, &retry), (StatusCode::OK, &step1));

    // Step 1 answered by replica A; the retry on B returns the same final answer.
    let apdus: Vec<String> = serde_json::from_value(step1["apdus"].clone()).unwrap();
    let req1 = json!({"step": 1, "responses": card.answer_all(&apdus)});
    let (status, done) = post(&a, &path, req1.clone()).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["done"], true);
    assert_eq!(post(&b, &path, req1).await, (StatusCode::OK, done));

    // Both replicas see the counter, and the card is free again.
    let seen = store_b.get_card(&common::root(), "acme", "C1").await.unwrap();
    assert_eq!(seen.counters.get("isd.kvn"), Some(&0x31));
    let (status, _) = post(&b, "/v1/issuers/acme/sessions", json!({"card_id": "C1"})).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_exchanges_on_two_replicas_advance_once() {
    let Some(db) = TestDb::postgres().await else { return };
    let store_a = db.store().await;
    let store_b = db.store().await;
    store_a.create_issuer(&common::root(), "acme", "Acme").await.unwrap();
    store_a.register_card(&common::root(), "acme", "C1").await.unwrap();
    let card = FakeCard::new("C1", 1);
    let first = store_a.create_session("acme", &Default::default()).await.unwrap();
    let req = tessera_server::store::sessions::Exchange {
        step: 0,
        responses: card.answer_all(&first.apdus),
    };
    let (ra, rb) = tokio::join!(
        store_a.exchange(&first.session_id, &req),
        store_b.exchange(&first.session_id, &req)
    );
    // Row locking serialises them: one advances, the other is the idempotent replay.
    assert_eq!(ra.unwrap(), rb.unwrap());
    let log = store_a.audit_entries(&common::root(), 0, 1000).await.unwrap();
    assert_eq!(log.iter().filter(|e| e.action == "session.create").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_share_one_session_over_https() {
    use tessera_server::client::ApiClient;
    use tessera_server::server::{ServerOptions, start};
    use tessera_server::store::sessions::Exchange;
    let Some(db) = TestDb::postgres().await else { return };
    // Two replicas as `tessera server --db postgres://…` would run them: their own data
    // directories and certificates, one master key, one database.
    let master = tempfile::tempdir().unwrap();
    let key_file = master.path().join("master.key");
    std::fs::write(&key_file, "07".repeat(32)).unwrap();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = ServerOptions::new(dir.path());
        opts.listen = "127.0.0.1:0".parse().unwrap();
        opts.db = Some(db.location.clone());
        opts.master_key_file = Some(key_file.clone());
        let server = start(opts, std::future::pending()).await.unwrap();
        replicas.push((dir, server));
    }
    let token = replicas[0].1.bootstrap_token.clone().expect("the first replica bootstraps");
    assert!(replicas[1].1.bootstrap_token.is_none(), "only once across replicas");
    let client = |i: usize, token: Option<String>| {
        let s = &replicas[i].1;
        ApiClient::new(&format!("https://{}", s.addr), s.fingerprint.as_deref(), token).unwrap()
    };
    let (a, b) = (client(0, Some(token.clone())), client(1, None));
    a.start_issuance("acme", "X").await.unwrap_err(); // no issuer yet: refused, nothing made
    replicas[1].1.store.create_issuer(&common::root(), "acme", "Acme").await.unwrap();
    replicas[0].1.store.register_card(&common::root(), "acme", "C1").await.unwrap();

    let card = FakeCard::new("C1", 0x33);
    let step0 = b.open_session("acme", None).await.unwrap();
    let req0 = Exchange { step: 0, responses: card.answer_all(&step0.apdus) };
    let step1 = a.exchange(&step0.session_id, &req0).await.unwrap();
    let req1 = Exchange { step: 1, responses: card.answer_all(&step1.apdus) };
    let done = b.exchange(&step0.session_id, &req1).await.unwrap();
    assert!(done.done);
    assert_eq!(
        a.exchange(&step0.session_id, &req1).await.unwrap(),
        done,
        "retry on the other replica"
    );
    let report = replicas[1].1.store.verify_audit(None).await.unwrap();
    assert!(report.ok, "{:?}", report.problems);
    for (_, server) in replicas {
        server.shutdown().await.unwrap();
    }
}
