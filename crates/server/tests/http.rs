//! The HTTP API end to end through the axum router: status codes and JSON bodies of every
//! bad input, the tunnel, health, metrics, OpenAPI, and a database that goes down.

#![allow(clippy::unwrap_used)]

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{FakeCard, TestDb};
use serde_json::{Value, json};
use tessera_server::Store;
use tessera_server::http::{Limits, router};
use tower::ServiceExt;

struct Api {
    app: Router,
    store: Store,
    root: String,
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Api {
    async fn new(db: &TestDb) -> Api {
        Self::with_limits(db, Limits::default()).await
    }

    async fn with_limits(db: &TestDb, limits: Limits) -> Api {
        let store = db.store().await;
        let root = store.bootstrap_superuser().await.unwrap().unwrap().token;
        Api { app: router(store.clone(), limits), store, root }
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req.header(header::CONTENT_TYPE, "application/json").body(Body::from(b)),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        Reply { status, headers, body }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.raw(method, path, token, body.map(|b| b.to_string())).await
    }

    async fn audit_len(&self) -> usize {
        self.store
            .audit_entries(&tessera_server::store::auth::Principal::system(), 0, 1000)
            .await
            .unwrap()
            .len()
    }
}

fn assert_error(r: &Reply, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.body["error"], code, "{:?}", r.body);
    assert!(r.body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

async fn ops_endpoints(db: TestDb) {
    let api = Api::new(&db).await;
    let r = api.call("GET", "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["database"], "ok");
    let r = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["paths"]["/v1/sessions/{id}/exchange"]["post"].is_object());
    assert!(r.body["paths"]["/v1/admin/issuers"]["post"]["security"].is_array());
    assert!(r.body["components"]["securitySchemes"]["bearer"].is_object());
    assert!(r.body["components"]["schemas"]["TunnelStep"].is_object());
    let r = api.call("GET", "/metrics", None, None).await;
    let text = r.body.as_str().unwrap();
    assert!(
        text.contains(
            "tessera_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("tessera_http_request_duration_seconds_bucket"));
    assert_error(&api.call("GET", "/nope", None, None).await, StatusCode::NOT_FOUND, "not_found");
}
both!(ops_endpoints);

async fn tokens_and_isolation_over_http(db: TestDb) {
    let api = Api::new(&db).await;
    let root = api.root.clone();
    let before = api.audit_len().await;
    // Missing, malformed and wrong tokens.
    let r = api.call("GET", "/v1/admin/issuers", None, None).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");
    assert_error(
        &api.call("GET", "/v1/admin/issuers", Some("nope"), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let forged = format!("tsr_{}", "ab".repeat(32));
    let r = api
        .call("POST", "/v1/admin/issuers", Some(&forged), Some(json!({"id": "x", "name": "X"})))
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(api.audit_len().await, before);

    for (id, name) in [("acme", "Acme"), ("globex", "Globex")] {
        let r = api
            .call("POST", "/v1/admin/issuers", Some(&root), Some(json!({"id": id, "name": name})))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        assert!(r.body["ca_cert_pem"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(r.body.get("ca_key_sealed").is_none());
    }
    let r = api
        .call(
            "POST",
            "/v1/admin/tokens",
            Some(&root),
            Some(json!({"issuer": "acme", "label": "ops", "ttl_secs": 600})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let acme = r.body["token"].as_str().unwrap().to_owned();
    let r = api
        .call("POST", "/v1/admin/issuers/globex/cards", Some(&root), Some(json!({"card_id": "G1"})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // The acme token cannot see or touch globex.
    assert_error(
        &api.call("GET", "/v1/admin/issuers/globex/cards", Some(&acme), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.call("GET", "/v1/admin/issuers/globex/cards/G1", Some(&acme), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.call("POST", "/v1/admin/issuers/globex/cards/G1/revoke", Some(&acme), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.call("POST", "/v1/admin/audit/verify", Some(&acme), Some(json!({}))).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let r = api.call("GET", "/v1/admin/issuers", Some(&acme), None).await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    let r = api.call("GET", "/v1/admin/audit", Some(&acme), None).await;
    assert!(r.body.as_array().unwrap().iter().all(|e| e["issuer"] == "acme"), "{:?}", r.body);
    assert_eq!(
        api.call("GET", "/v1/admin/issuers/globex/cards/G1", Some(&root), None).await.body["status"],
        "active"
    );
    // The CRL is public DER.
    let r = api.raw("GET", "/v1/issuers/acme/crl", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/pkix-crl");
    // Verify the whole log over HTTP.
    let r = api.call("POST", "/v1/admin/audit/verify", Some(&root), Some(json!({}))).await;
    assert_eq!(r.body["ok"], true, "{:?}", r.body);
}
both!(tokens_and_isolation_over_http);

async fn malformed_requests_change_nothing(db: TestDb) {
    let api = Api::with_limits(&db, Limits { max_body_bytes: 1024, ..Limits::default() }).await;
    let root = api.root.clone();
    let before = api.audit_len().await;
    for body in [
        "{",
        "[]",
        "{\"id\": 5, \"name\": \"x\"}",
        "{\"id\": \"a\"}",
        "{\"id\":\"a\",\"name\":\"A\",\"extra\":1}",
    ] {
        let r = api.raw("POST", "/v1/admin/issuers", Some(&root), Some(body.into())).await;
        assert!(r.status.is_client_error(), "{body}: {:?}", r.status);
        assert!(r.body["error"].is_string(), "{body}: {:?}", r.body);
    }
    let big = json!({"id": "a", "name": "x".repeat(5000)}).to_string();
    let r = api.raw("POST", "/v1/admin/issuers", Some(&root), Some(big)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = api.raw("POST", "/v1/issuers/acme/sessions", None, Some("not json".into())).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(api.audit_len().await, before);
    assert_eq!(api.call("GET", "/v1/admin/issuers", Some(&root), None).await.body, json!([]));
}
both!(malformed_requests_change_nothing);

async fn tunnel_over_http(db: TestDb) {
    let api = Api::new(&db).await;
    let root = api.root.clone();
    api.call("POST", "/v1/admin/issuers", Some(&root), Some(json!({"id": "acme", "name": "Acme"})))
        .await;
    api.call("POST", "/v1/admin/issuers/acme/cards", Some(&root), Some(json!({"card_id": "C1"})))
        .await;
    let r = api.call("POST", "/v1/issuers/acme/sessions", None, Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["session_id"].as_str().unwrap().to_owned();
    let apdus: Vec<String> = serde_json::from_value(r.body["apdus"].clone()).unwrap();
    let responses = FakeCard::new("C1", 0x30).answer_all(&apdus);
    let path = format!("/v1/sessions/{id}/exchange");
    let step1 =
        api.call("POST", &path, None, Some(json!({"step": 0, "responses": responses}))).await;
    assert_eq!(step1.status, StatusCode::OK, "{:?}", step1.body);
    let apdus: Vec<String> = serde_json::from_value(step1.body["apdus"].clone()).unwrap();
    let responses = FakeCard::new("C1", 0x30).answer_all(&apdus);
    let first =
        api.call("POST", &path, None, Some(json!({"step": 1, "responses": responses}))).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(first.body["done"], true);
    assert_eq!(first.body["outcome"]["card_id"], "C1");
    let again =
        api.call("POST", &path, None, Some(json!({"step": 1, "responses": responses}))).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, first.body);
    assert_error(
        &api.call("POST", &path, None, Some(json!({"step": 2, "responses": []}))).await,
        StatusCode::GONE,
        "gone",
    );
    assert_error(
        &api.call(
            "POST",
            "/v1/sessions/ffff/exchange",
            None,
            Some(json!({"step": 0, "responses": responses})),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let r = api.call("GET", "/v1/admin/issuers/acme/cards/C1", Some(&root), None).await;
    assert_eq!(r.body["counters"]["isd.kvn"], 0x30);
}
both!(tunnel_over_http);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_gives_503_and_writes_nothing() {
    let Some(db) = TestDb::postgres().await else { return };
    let proxy_port;
    let proxy;
    {
        let (upstream, _) = common::via_proxy(&db.location, 0);
        proxy = common::Proxy::start(upstream).await;
        proxy_port = proxy.port;
    }
    let (_, proxied) = common::via_proxy(&db.location, proxy_port);
    let mut db = db;
    db.location = proxied;
    let api = Api::new(&db).await;
    let root = api.root.clone();
    api.call("POST", "/v1/admin/issuers", Some(&root), Some(json!({"id": "acme", "name": "Acme"})))
        .await;

    proxy.down();
    for (method, path, body) in [
        ("GET", "/healthz", None),
        ("POST", "/v1/admin/issuers/acme/cards", Some(json!({"card_id": "C1"}))),
        ("POST", "/v1/issuers/acme/sessions", Some(json!({}))),
        ("GET", "/v1/admin/issuers", None),
    ] {
        let r = api.call(method, path, Some(&root), body).await;
        assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        assert_eq!(r.headers[header::RETRY_AFTER], "5", "{path}");
    }
    proxy.up();
    let r = api.call("GET", "/v1/admin/issuers/acme/cards", Some(&root), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body, json!([]), "the card registered during the outage must not exist");
    let r = api.call("POST", "/v1/admin/audit/verify", Some(&root), Some(json!({}))).await;
    assert_eq!(r.body["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_process_gives_503() {
    let db = TestDb::sqlite();
    let api = Api::new(&db).await;
    let root = api.root.clone();
    let tessera_server::db::DbLocation::Sqlite(path) = &db.location else { unreachable!() };
    let other = rusqlite::Connection::open(path).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let r = api
        .call("POST", "/v1/admin/issuers", Some(&root), Some(json!({"id": "acme", "name": "Acme"})))
        .await;
    assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    other.execute_batch("ROLLBACK").unwrap();
    let r = api.call("GET", "/v1/admin/issuers", Some(&root), None).await;
    assert_eq!(r.body, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let db = TestDb::sqlite();
    let api =
        Api::with_limits(&db, Limits { rate_per_sec: 0.5, burst: 2.0, ..Limits::default() }).await;
    assert_eq!(api.call("GET", "/healthz", None, None).await.status, StatusCode::OK);
    assert_eq!(api.call("GET", "/healthz", None, None).await.status, StatusCode::OK);
    let r = api.call("GET", "/healthz", None, None).await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "too_many_requests");
    assert_eq!(r.headers[header::RETRY_AFTER], "2");
}
