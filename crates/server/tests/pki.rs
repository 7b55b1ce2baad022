//! Issuer PKI: chains and CRLs that `openssl verify` accepts, revocation, master-key sealing
//! and rotation. Runs on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{TestDb, root, test_master_key};
use tessera_server::primitives::MasterKey;
use tessera_server::{ServerError, Store, StoreConfig};

fn openssl_verify(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").arg("verify").args(args).current_dir(dir).output();
    match out {
        Ok(o) => (
            o.status.success(),
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        ),
        Err(e) => panic!("openssl is needed for this test (apt-get install openssl): {e}"),
    }
}

async fn openssl_accepts_chains_and_crl(db: TestDb) {
    let store = db.store().await;
    let issuer = store.create_issuer(&root(), "acme", "Acme Bank").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &issuer.ca_cert_pem).unwrap();
    std::fs::write(dir.path().join("signing.pem"), &issuer.signing_cert_pem).unwrap();
    let (ok, out) = openssl_verify(dir.path(), &["-CAfile", "ca.pem", "signing.pem"]);
    assert!(ok, "{out}");
    let write_crl = |store_crl: Vec<u8>| {
        let pem = tessera_crypto::x509::Crl::from_der(store_crl).to_pem();
        std::fs::write(dir.path().join("crl.pem"), pem).unwrap();
    };
    write_crl(store.issuer_crl("acme").await.unwrap());
    let crl_args = ["-crl_check", "-CAfile", "ca.pem", "-CRLfile", "crl.pem", "signing.pem"];
    let (ok, out) = openssl_verify(dir.path(), &crl_args);
    assert!(ok, "{out}");

    let certs = store.list_certificates(&root(), "acme").await.unwrap();
    let signing = certs.iter().find(|c| c.role == "package-signing").unwrap();
    let ca = certs.iter().find(|c| c.role == "ca").unwrap();
    assert!(matches!(
        store.revoke_certificate(&root(), "acme", &ca.serial).await,
        Err(ServerError::BadRequest(_))
    ));
    assert!(matches!(
        store.revoke_certificate(&root(), "acme", "00").await,
        Err(ServerError::NotFound(_))
    ));
    let revoked = store.revoke_certificate(&root(), "acme", &signing.serial).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    write_crl(store.issuer_crl("acme").await.unwrap());
    let (ok, out) = openssl_verify(dir.path(), &crl_args);
    assert!(!ok && out.contains("revoked"), "{out}");
    // Revoking again changes nothing (no new audit entry).
    let n = store.audit_entries(&root(), 0, 1000).await.unwrap().len();
    store.revoke_certificate(&root(), "acme", &signing.serial).await.unwrap();
    assert_eq!(store.audit_entries(&root(), 0, 1000).await.unwrap().len(), n);
}
both!(openssl_accepts_chains_and_crl);

async fn issuer_input_is_validated(db: TestDb) {
    let store = db.store().await;
    for id in ["", "UPPER", "-x", "a/b", &"x".repeat(33)] {
        assert!(matches!(
            store.create_issuer(&root(), id, "n").await,
            Err(ServerError::BadRequest(_))
        ));
    }
    assert!(matches!(
        store.create_issuer(&root(), "ok", " ").await,
        Err(ServerError::BadRequest(_))
    ));
    store.create_issuer(&root(), "ok", "Ok").await.unwrap();
    assert!(matches!(
        store.create_issuer(&root(), "ok", "Ok").await,
        Err(ServerError::Conflict(_))
    ));
    assert_eq!(store.list_issuers(&root()).await.unwrap().len(), 1);
}
both!(issuer_input_is_validated);

async fn master_key_rotation_reseals_everything(db: TestDb) {
    let mut store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let certs = store.list_certificates(&root(), "acme").await.unwrap();
    let signing = certs.iter().find(|c| c.role == "package-signing").unwrap().serial.clone();
    let new = MasterKey::generate();
    assert_eq!(store.rotate_master_key(&root(), new.clone()).await.unwrap(), 3);
    // The rotated store signs with the resealed CA key.
    store.revoke_certificate(&root(), "acme", &signing).await.unwrap();
    // Reopening with the old key is refused with a clear error; the new key works.
    let db2 = tessera_server::db::Db::open(&db.location).await.unwrap();
    let err =
        Store::open(db2.clone(), test_master_key(), StoreConfig::default()).await.err().unwrap();
    assert!(err.to_string().contains("sealed under master key"), "{err}");
    let reopened = Store::open(db2, new, StoreConfig::default()).await.unwrap();
    assert!(reopened.verify_audit(None).await.unwrap().ok);
}
both!(master_key_rotation_reseals_everything);
