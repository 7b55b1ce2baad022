//! Enrolment over HTTP (seed 002, Fig. 9): an issuer token gets a single-use challenge, the
//! key proves possession over it, the issuer CA certifies the key (role card or terminal);
//! every refusal; `openssl verify` accepts the chain and, after revocation, refuses it.
//! Runs on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::TestDb;
use serde_json::{Value, json};
use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::rng::OsRng;
use tessera_crypto::x509::{Certificate, Crl, Role};
use tessera_proto::pairing::enrolment_message;
use tessera_server::http::{Limits, router};
use tower::ServiceExt;

async fn call(
    app: &Router,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method("POST").uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => {
            req.header(header::CONTENT_TYPE, "application/json").body(Body::from(b.to_string()))
        }
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn challenge(app: &Router, issuer: &str, token: &str) -> String {
    let (status, body) =
        call(app, &format!("/v1/admin/issuers/{issuer}/enrolment/challenges"), Some(token), None)
            .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["challenge"].as_str().unwrap().to_owned()
}

/// The request a key holder makes: `holder` signs the enrolment message over `challenge`.
fn request(key: &SigningKey, role: &str, subject: &str, holder: &[u8], challenge: &str) -> Value {
    let public = key.public_key().to_sec1_bytes();
    let c = hex::decode(challenge).unwrap();
    let proof = key.sign(&enrolment_message(holder, &public, &c)).to_bytes();
    json!({
        "role": role, "subject": subject, "holder_id": hex::encode(holder),
        "public_key": hex::encode(public), "challenge": challenge, "proof": hex::encode(proof),
    })
}

fn openssl_verify(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let o = Command::new("openssl")
        .arg("verify")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed for this test");
    (
        o.status.success(),
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
    )
}

struct Setup {
    app: Router,
    store: tessera_server::Store,
    root: String,
    acme: String,
    globex: String,
}

async fn setup(db: &TestDb) -> Setup {
    let store = db.store().await;
    let root = store.bootstrap_superuser().await.unwrap().unwrap().token;
    let app = router(store.clone(), Limits::default());
    for id in ["acme", "globex"] {
        let body = json!({"id": id, "name": id});
        let (status, _) = call(&app, "/v1/admin/issuers", Some(&root), Some(body)).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let mut tokens = Vec::new();
    for id in ["acme", "globex"] {
        let body = json!({"issuer": id, "label": "station", "ttl_secs": 3600});
        let (status, t) = call(&app, "/v1/admin/tokens", Some(&root), Some(body)).await;
        assert_eq!(status, StatusCode::CREATED);
        tokens.push(t["token"].as_str().unwrap().to_owned());
    }
    let globex = tokens.pop().unwrap();
    let acme = tokens.pop().unwrap();
    Setup { app, store, root, acme, globex }
}

const CERTS: &str = "/v1/admin/issuers/acme/enrolment/certificates";

async fn issues_card_and_terminal_certificates(db: TestDb) {
    let s = setup(&db).await;
    let card_key = SigningKey::generate(&mut OsRng);
    let c = challenge(&s.app, "acme", &s.acme).await;
    let (status, card) = call(
        &s.app,
        CERTS,
        Some(&s.acme),
        Some(request(&card_key, "card", "card 1", b"CARD-0001", &c)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{card}");
    let cert = Certificate::from_pem(card["pem"].as_str().unwrap()).unwrap();
    let info = cert.info().unwrap();
    assert_eq!(info.public_key, card_key.public_key());
    assert_eq!(info.subject_cn, "card 1");
    assert!(info.roles.contains(&Role::Card) && !info.roles.contains(&Role::Terminal));

    let term_key = SigningKey::generate(&mut OsRng);
    let c = challenge(&s.app, "acme", &s.root).await;
    let (status, term) = call(
        &s.app,
        CERTS,
        Some(&s.root),
        Some(request(&term_key, "terminal", "till 7", b"till 7", &c)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{term}");
    let tinfo = Certificate::from_pem(term["pem"].as_str().unwrap()).unwrap().info().unwrap();
    assert!(tinfo.roles.contains(&Role::Terminal));

    // Recorded, with their roles, and in the audit log.
    let certs = s.store.list_certificates(&common::root(), "acme").await.unwrap();
    assert!(certs.iter().any(|x| x.serial == card["serial"] && x.role == "card"));
    assert!(certs.iter().any(|x| x.serial == term["serial"] && x.role == "terminal"));
    let audit = s.store.audit_entries(&common::root(), 0, 1000).await.unwrap();
    assert_eq!(audit.iter().filter(|e| e.action == "certificate.enrol").count(), 2);

    // openssl accepts both chains with the CRL; after revoking the terminal it refuses it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), card["ca_cert_pem"].as_str().unwrap()).unwrap();
    std::fs::write(dir.path().join("card.pem"), card["pem"].as_str().unwrap()).unwrap();
    std::fs::write(dir.path().join("term.pem"), term["pem"].as_str().unwrap()).unwrap();
    let write_crl = |der: Vec<u8>| {
        std::fs::write(dir.path().join("crl.pem"), Crl::from_der(der).to_pem()).unwrap();
    };
    write_crl(s.store.issuer_crl("acme").await.unwrap());
    let args =
        |leaf: &'static str| ["-crl_check", "-CAfile", "ca.pem", "-CRLfile", "crl.pem", leaf];
    for leaf in ["card.pem", "term.pem"] {
        let (ok, out) = openssl_verify(dir.path(), &args(leaf));
        assert!(ok, "{leaf}: {out}");
    }
    let serial = term["serial"].as_str().unwrap();
    s.store.revoke_certificate(&common::root(), "acme", serial).await.unwrap();
    write_crl(s.store.issuer_crl("acme").await.unwrap());
    let (ok, out) = openssl_verify(dir.path(), &args("term.pem"));
    assert!(!ok && out.contains("revoked"), "{out}");
    let (ok, out) = openssl_verify(dir.path(), &args("card.pem"));
    assert!(ok, "{out}");
}
both!(issues_card_and_terminal_certificates);

async fn enrolled_count(s: &Setup) -> usize {
    let certs = s.store.list_certificates(&common::root(), "acme").await.unwrap();
    certs.iter().filter(|c| c.role == "card" || c.role == "terminal").count()
}

async fn refusals(db: TestDb) {
    let s = setup(&db).await;
    let key = SigningKey::generate(&mut OsRng);
    let challenges = "/v1/admin/issuers/acme/enrolment/challenges";

    // No token, a malformed one, another issuer's token: no challenge.
    assert_eq!(call(&s.app, challenges, None, None).await.0, StatusCode::UNAUTHORIZED);
    let forged = format!("tsr_{}", "0".repeat(64));
    assert_eq!(call(&s.app, challenges, Some(&forged), None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(call(&s.app, challenges, Some(&s.globex), None).await.0, StatusCode::NOT_FOUND);
    let missing = "/v1/admin/issuers/nobody/enrolment/challenges";
    assert_eq!(call(&s.app, missing, Some(&s.root), None).await.0, StatusCode::NOT_FOUND);

    // No token / another issuer's token on the certificate call (the challenge survives
    // those: they never reach it).
    let c = challenge(&s.app, "acme", &s.acme).await;
    let good = request(&key, "card", "card", b"C1", &c);
    assert_eq!(call(&s.app, CERTS, None, Some(good.clone())).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(&s.app, CERTS, Some(&s.globex), Some(good.clone())).await.0,
        StatusCode::NOT_FOUND
    );
    // A challenge is bound to the token that asked for it (the superuser did not).
    let (status, body) = call(&s.app, CERTS, Some(&s.root), Some(good.clone())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // ...and that attempt used it up.
    assert_eq!(call(&s.app, CERTS, Some(&s.acme), Some(good)).await.0, StatusCode::BAD_REQUEST);

    // A challenge of acme is unknown to globex.
    let c = challenge(&s.app, "acme", &s.acme).await;
    let (status, _) = call(
        &s.app,
        "/v1/admin/issuers/globex/enrolment/certificates",
        Some(&s.globex),
        Some(request(&key, "card", "card", b"C1", &c)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A made-up challenge.
    let made_up = hex::encode([9u8; 16]);
    let r = call(&s.app, CERTS, Some(&s.acme), Some(request(&key, "card", "c", b"C1", &made_up)));
    assert_eq!(r.await.0, StatusCode::BAD_REQUEST);

    // Replay: the same request twice; only the first succeeds.
    let c = challenge(&s.app, "acme", &s.acme).await;
    let req = request(&key, "card", "card", b"C1", &c);
    assert_eq!(call(&s.app, CERTS, Some(&s.acme), Some(req.clone())).await.0, StatusCode::CREATED);
    let (status, body) = call(&s.app, CERTS, Some(&s.acme), Some(req)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().contains("challenge"), "{body}");
    assert_eq!(enrolled_count(&s).await, 1);

    // Bad proofs of possession: signed by another key, over another holder id, over another
    // challenge, or a key that is not the one that signed.
    let other = SigningKey::generate(&mut OsRng);
    type MakeRequest<'a> = Box<dyn Fn(&str) -> Value + 'a>;
    let bad_proofs: Vec<MakeRequest> = vec![
        Box::new(|c| {
            let mut r = request(&other, "card", "card", b"C1", c);
            r["public_key"] = json!(hex::encode(key.public_key().to_sec1_bytes()));
            r
        }),
        Box::new(|c| {
            let mut r = request(&key, "card", "card", b"C1", c);
            r["holder_id"] = json!(hex::encode(b"C2"));
            r
        }),
        Box::new(|c| {
            let older = hex::encode([1u8; 16]);
            let mut r = request(&key, "card", "card", b"C1", &older);
            r["challenge"] = json!(c);
            r
        }),
        Box::new(|c| {
            let mut r = request(&key, "card", "card", b"C1", c);
            r["proof"] = json!(hex::encode([0x11u8; 64]));
            r
        }),
    ];
    for make in &bad_proofs {
        let c = challenge(&s.app, "acme", &s.acme).await;
        let (status, body) = call(&s.app, CERTS, Some(&s.acme), Some(make(&c))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        // The challenge is burnt: the correct proof is refused afterwards too.
        let retry = request(&key, "card", "card", b"C1", &c);
        assert_eq!(
            call(&s.app, CERTS, Some(&s.acme), Some(retry)).await.0,
            StatusCode::BAD_REQUEST
        );
    }

    // Wrong roles: any role but card or terminal; a terminal that signed another name.
    for role in ["device", "package-signing", "ca", "home", ""] {
        let c = challenge(&s.app, "acme", &s.acme).await;
        let (status, body) =
            call(&s.app, CERTS, Some(&s.acme), Some(request(&key, role, "x", b"x", &c))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{role}: {body}");
    }
    let c = challenge(&s.app, "acme", &s.acme).await;
    let r = request(&key, "terminal", "till 1", b"till 2", &c);
    assert_eq!(call(&s.app, CERTS, Some(&s.acme), Some(r)).await.0, StatusCode::BAD_REQUEST);

    // Malformed fields, unknown fields.
    let c = challenge(&s.app, "acme", &s.acme).await;
    for (field, value) in [
        ("public_key", json!("zz")),
        ("public_key", json!(hex::encode([4u8; 65]))),
        ("proof", json!("00")),
        ("challenge", json!("00")),
        ("holder_id", json!("")),
        ("subject", json!("")),
        ("subject", json!("a\nb")),
        ("extra", json!(1)),
    ] {
        let mut r = request(&key, "card", "card", b"C1", &c);
        r[field] = value;
        let (status, body) = call(&s.app, CERTS, Some(&s.acme), Some(r)).await;
        assert!(status.is_client_error(), "{field}: {status} {body}");
    }
    assert_eq!(enrolled_count(&s).await, 1);
}
both!(refusals);

async fn expired_challenges_are_refused_and_swept(db: TestDb) {
    use tessera_server::db::Value;
    let s = setup(&db).await;
    let key = SigningKey::generate(&mut OsRng);
    // A challenge as the server made it, its lifetime over (the row's expiry moved back).
    let c = challenge(&s.app, "acme", &s.acme).await;
    let mut tx = s.store.db().begin().await.unwrap();
    let past = tessera_server::clock::now() - 1;
    tx.execute(
        "UPDATE enrolment_challenges SET expires_at = $1 WHERE challenge = $2",
        &[Value::Int(past), Value::from(c.as_str())],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (status, body) =
        call(&s.app, CERTS, Some(&s.acme), Some(request(&key, "card", "card", b"C1", &c))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(enrolled_count(&s).await, 0);

    // Expired challenges are deleted when the next one is made; live ones stay.
    let stale = challenge(&s.app, "acme", &s.acme).await;
    let mut tx = s.store.db().begin().await.unwrap();
    tx.execute(
        "UPDATE enrolment_challenges SET expires_at = $1 WHERE challenge = $2",
        &[Value::Int(past), Value::from(stale.as_str())],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let live = challenge(&s.app, "acme", &s.acme).await;
    let mut tx = s.store.db().begin().await.unwrap();
    let rows = tx.query("SELECT challenge FROM enrolment_challenges", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let left: Vec<String> = rows.iter().map(|r| r.text(0).unwrap()).collect();
    assert_eq!(left, vec![live.clone()]);
    let (status, body) =
        call(&s.app, CERTS, Some(&s.acme), Some(request(&key, "card", "card", b"C1", &live))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}
both!(expired_challenges_are_refused_and_swept);

#[tokio::test]
async fn the_openapi_document_describes_enrolment() {
    let db = TestDb::sqlite();
    let app = router(db.store().await, Limits::default());
    let req = Request::builder().uri("/openapi.json").body(Body::empty()).unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    for path in [
        "/v1/admin/issuers/{issuer}/enrolment/challenges",
        "/v1/admin/issuers/{issuer}/enrolment/certificates",
    ] {
        assert!(doc["paths"][path]["post"]["security"].is_array(), "{path} in {doc}");
    }
    assert!(doc["components"]["schemas"]["EnrolmentRequest"]["properties"]["proof"].is_object());
}
