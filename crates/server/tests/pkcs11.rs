//! Issuer keys in a PKCS#11 token: SoftHSM2 (Debian `softhsm2`), with a token the test
//! initialises in a temporary directory.
//!
//! SoftHSM reads `SOFTHSM2_CONF` when the module initialises, and setting a variable in a
//! running test process is not safe, so the test re-runs this binary for its ignored
//! `in_token` test with the variable set for that child only. Without `softhsm2-util` it
//! skips with a notice, except under `CI=true`, where that is a failure.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::root;
use tessera_card::{Card, CardOptions};
use tessera_crypto::pkcs11::softhsm::{self, MODULE};
use tessera_crypto::x509::{Certificate, Crl, Role, verify_chain};
use tessera_server::ServerError;
use tessera_server::pkcs11::{Token, TokenConfig};
use tessera_server::store::issuance::StartIssuance;
use tessera_server::store::sessions::Exchange;

const LABEL: &str = "tessera-test";
const PIN: &str = "123456";
const CHILD: &str = "TESSERA_PKCS11_CHILD";

#[test]
fn issuer_keys_in_a_softhsm_token() {
    if !softhsm::available_for_test("the PKCS#11 tests") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = softhsm::init_token(dir.path(), LABEL, PIN, "654321").unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "in_token", "--nocapture", "--test-threads", "1"])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD, dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success() && out.contains("1 passed"),
        "{out}\n{}",
        String::from_utf8_lossy(&child.stderr)
    );
}

fn relay(card: &mut Card, apdus: &[String]) -> Vec<String> {
    apdus.iter().map(|a| hex::encode_upper(card.transmit(&hex::decode(a).unwrap()))).collect()
}

fn openssl_verify(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").arg("verify").args(args).current_dir(dir).output();
    let out = out.unwrap_or_else(|e| panic!("openssl is needed for this test: {e}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[derive(clap::Parser)]
struct Admin {
    #[command(flatten)]
    args: tessera_server::cli::AdminArgs,
}

/// Run by [`issuer_keys_in_a_softhsm_token`] with `SOFTHSM2_CONF` set. The token is opened by
/// one party at a time (one PKCS#11 library state per process).
#[ignore = "run by issuer_keys_in_a_softhsm_token with SOFTHSM2_CONF set"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_token() {
    use clap::Parser;
    use tessera_server::server::{Pkcs11Options, ServerOptions, open_store, start};

    let work = std::path::PathBuf::from(std::env::var(CHILD).expect("run by the parent test"));
    let config = TokenConfig {
        module: MODULE.into(),
        token_label: LABEL.into(),
        pin: PIN.to_owned().into(),
    };
    let wrong = TokenConfig { pin: "000000".to_owned().into(), ..config.clone() };
    assert!(Token::open(&wrong).is_err(), "a wrong PIN does not log in");

    // The server as `tessera server --pkcs11-module … --pkcs11-token … --pkcs11-pin-file …`.
    std::fs::write(work.join("pin"), format!("{PIN}\n")).unwrap();
    let mut opts = ServerOptions::new(work.join("data"));
    opts.listen = "127.0.0.1:0".parse().unwrap();
    opts.pkcs11 = Some(Pkcs11Options {
        module: MODULE.into(),
        token_label: LABEL.into(),
        pin_file: Some(work.join("pin")),
    });
    let server = start(opts.clone(), std::future::pending()).await.unwrap();
    let store = server.store.clone();
    let mut no_token = opts.clone();
    no_token.pkcs11 = None;
    let plain = open_store(&no_token).await.unwrap();
    // A server without a token cannot put an issuer in one.
    assert!(matches!(
        plain.create_issuer_in_token(&root(), "other", "Other").await,
        Err(ServerError::BadRequest(_))
    ));

    // `tessera admin issuers create acme Acme --in-token` over HTTPS.
    let url = format!("https://{}", server.addr);
    let fp = server.fingerprint.clone().unwrap();
    let token = server.bootstrap_token.clone().unwrap();
    let argv = [
        "admin",
        "--server",
        &url,
        "--fingerprint",
        &fp,
        "--token",
        &token,
        "issuers",
        "create",
        "acme",
        "Acme",
        "--in-token",
    ];
    let report =
        tessera_server::cli::admin(&Admin::try_parse_from(argv).unwrap().args).await.unwrap();
    assert_eq!(report.json["id"], "acme");
    let info = store.get_issuer(&root(), "acme").await.unwrap();
    let ca = Certificate::from_pem(&info.ca_cert_pem).unwrap();
    let signing = Certificate::from_pem(&info.signing_cert_pem).unwrap();
    let now = tessera_server::clock::now();
    verify_chain(&signing, &[], &ca, now, Some(Role::PackageSigning)).unwrap();
    // The issuer id is checked before the token is touched.
    assert!(matches!(
        store.create_issuer_in_token(&root(), "acme", "Again").await,
        Err(ServerError::Conflict(_))
    ));

    // Issuance: the device certificate is signed in the token.
    let issuance = store
        .start_issuance(
            &root(),
            "acme",
            &StartIssuance { card_id: "HSM-1".into(), legacy_static_auth: false },
        )
        .await
        .unwrap();
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    let mut step = issuance.session;
    while !step.done {
        let req = Exchange { step: step.step, responses: relay(&mut card, &step.apdus) };
        step = store.exchange(&step.session_id, &req).await.unwrap();
    }
    assert_eq!(step.outcome.unwrap().result, "issued");
    let certs = store.list_certificates(&root(), "acme").await.unwrap();
    let device = certs.iter().find(|c| c.role == "device").unwrap();
    let device_cert = Certificate::from_pem(&device.pem).unwrap();
    verify_chain(&device_cert, &[], &ca, now, Some(Role::Device)).unwrap();

    // Enrolment for pairing (store::enrolment): a terminal certificate signed in the token.
    let key = tessera_crypto::ecdsa::SigningKey::generate(&mut tessera_crypto::rng::OsRng);
    let public = key.public_key().to_sec1_bytes();
    let challenge = store.enrolment_challenge(&root(), "acme").await.unwrap().challenge;
    let message = tessera_proto::pairing::enrolment_message(
        b"till",
        &public,
        &hex::decode(&challenge).unwrap(),
    );
    let request = tessera_server::store::enrolment::EnrolmentRequest {
        role: "terminal".into(),
        subject: "till".into(),
        holder_id: hex::encode(b"till"),
        public_key: hex::encode(public),
        challenge,
        proof: hex::encode(key.sign(&message).to_bytes()),
    };
    let enrolled = store.enrol(&root(), "acme", &request).await.unwrap();
    let terminal = Certificate::from_pem(&enrolled.pem).unwrap();
    verify_chain(&terminal, &[], &ca, now, Some(Role::Terminal)).unwrap();

    // Revocation: the CRL is signed in the token too.
    store.revoke_certificate(&root(), "acme", &device.serial).await.unwrap();
    let crl = Crl::from_der(store.issuer_crl("acme").await.unwrap());
    let serial = hex::decode(&device.serial).unwrap();
    assert!(crl.is_revoked(&ca, &serial, tessera_server::clock::now()).unwrap());

    // openssl agrees: the package-signing and device chains, and the revoked device.
    std::fs::write(work.join("ca.pem"), &info.ca_cert_pem).unwrap();
    std::fs::write(work.join("signing.pem"), &info.signing_cert_pem).unwrap();
    std::fs::write(work.join("device.pem"), &device.pem).unwrap();
    std::fs::write(work.join("crl.pem"), crl.to_pem()).unwrap();
    openssl_verify(&work, &["-CAfile", "ca.pem", "signing.pem", "device.pem"]);
    let revoked = Command::new("openssl")
        .args(["verify", "-crl_check", "-CAfile", "ca.pem", "-CRLfile", "crl.pem", "device.pem"])
        .current_dir(&work)
        .output()
        .unwrap();
    assert!(!revoked.status.success(), "openssl accepted a revoked device certificate");

    // A server without the token cannot sign for this issuer: a clear 503, nothing changes.
    let before = plain.list_certificates(&root(), "acme").await.unwrap();
    let other = certs.iter().find(|c| c.role == "package-signing").unwrap();
    assert!(matches!(
        plain.revoke_certificate(&root(), "acme", &other.serial).await,
        Err(ServerError::Unavailable(m)) if m.contains("PKCS#11")
    ));
    assert_eq!(plain.list_certificates(&root(), "acme").await.unwrap(), before);

    // The keys are in the token (and only there: the database holds references), and the
    // certificates carry them.
    server.shutdown().await.unwrap();
    drop((store, plain));
    // The server's last tasks (and their store, and its token session) end shortly after
    // shutdown; until then the library stays initialised in this process.
    let mut tries = 0;
    let token = loop {
        match Token::open(&config) {
            Ok(t) => break t,
            Err(e) if tries < 100 => {
                tries += 1;
                eprintln!("token still open elsewhere ({e}); retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let ca_key = token.key("tessera/acme/ca").unwrap();
    let signing_key = token.key("tessera/acme/package-signing").unwrap();
    assert_eq!(ca.info().unwrap().public_key, ca_key.public_key());
    assert_eq!(signing.info().unwrap().public_key, signing_key.public_key());
    assert!(matches!(
        token.generate("tessera/acme/ca"),
        Err(tessera_server::pkcs11::TokenError::Exists(_))
    ));
}
