//! The tunnel against the real card runtime (in process): an issued card identifies itself
//! and its key version is tracked; a blank card is refused clearly.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestDb, root};
use tessera_card::applets::isd::scenarios;
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_server::ServerError;
use tessera_server::store::sessions::{CreateSession, Exchange};

struct Direct<'a>(&'a mut Card);

impl TearDriver for Direct<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

fn issued_card() -> Card {
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    scenarios::personalize(&mut Script::new(&mut Direct(&mut card))).unwrap();
    card.reset();
    card
}

fn relay(card: &mut Card, apdus: &[String]) -> Vec<String> {
    apdus.iter().map(|a| hex::encode_upper(card.transmit(&hex::decode(a).unwrap()))).collect()
}

async fn issued_card_through_the_tunnel(db: TestDb) {
    let store = db.store().await;
    let card_id = std::str::from_utf8(scenarios::CARD_ID).unwrap();
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    store.register_card(&root(), "acme", card_id).await.unwrap();
    let mut card = issued_card();
    let mut step = store.create_session("acme", &CreateSession::default()).await.unwrap();
    while !step.done {
        let req = Exchange { step: step.step, responses: relay(&mut card, &step.apdus) };
        step = store.exchange(&step.session_id, &req).await.unwrap();
    }
    let outcome = step.outcome.unwrap();
    assert_eq!(
        (outcome.result.as_str(), outcome.card_id.as_deref()),
        ("identified", Some(card_id))
    );
    let seen = store.get_card(&root(), "acme", card_id).await.unwrap();
    assert_eq!(seen.counters.get("isd.kvn"), Some(&i64::from(scenarios::issued_keys().kvn)));
}
both!(issued_card_through_the_tunnel);

async fn blank_card_is_refused(db: TestDb) {
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    let first = store.create_session("acme", &CreateSession::default()).await.unwrap();
    let req = Exchange { step: 0, responses: relay(&mut card, &first.apdus) };
    let err = store.exchange(&first.session_id, &req).await.unwrap_err();
    assert!(matches!(&err, ServerError::Conflict(m) if m.contains("6A88")), "{err}");
}
both!(blank_card_is_refused);

async fn issuance_through_the_tunnel(db: TestDb) {
    use tessera_server::store::issuance::StartIssuance;
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let start = StartIssuance { card_id: "NEW-1".into(), legacy_static_auth: false };
    let issuance = store.start_issuance(&root(), "acme", &start).await.unwrap();
    assert_eq!(issuance.initial_pin.len(), 6);
    // The card id is taken while the issuance runs.
    assert!(matches!(
        store.start_issuance(&root(), "acme", &start).await,
        Err(ServerError::Conflict(_))
    ));

    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    let mut step = issuance.session.clone();
    let mut last = None;
    while !step.done {
        let req = Exchange { step: step.step, responses: relay(&mut card, &step.apdus) };
        step = store.exchange(&step.session_id, &req).await.unwrap();
        last = Some(req);
    }
    // A retried last post gets the same answer.
    assert_eq!(store.exchange(&step.session_id, &last.unwrap()).await.unwrap(), step);
    let outcome = step.outcome.unwrap();
    assert_eq!((outcome.result.as_str(), outcome.card_id.as_deref()), ("issued", Some("NEW-1")));
    let record = store.get_card(&root(), "acme", "NEW-1").await.unwrap();
    assert_eq!(record.counters.get("isd.kvn"), Some(&0x31));

    // The card is personalised: it identifies itself, and the initial PIN verifies on it.
    card.reset();
    let mut s = store.create_session("acme", &CreateSession::default()).await.unwrap();
    while !s.done {
        let req = Exchange { step: s.step, responses: relay(&mut card, &s.apdus) };
        s = store.exchange(&s.session_id, &req).await.unwrap();
    }
    assert_eq!(s.outcome.unwrap().result, "identified");
    let select = format!("00A4040008{}00", hex::encode_upper(tessera_server::tunnel::ISD_AID));
    assert!(relay(&mut card, &[select])[0].ends_with("9000"));
    check_device_identity(&store, &mut card, "NEW-1").await;
    // The card has an update key, vouched for by its device key and registered at issuance.
    let update_aid = hex::encode_upper(tessera_proto::update::AID);
    let answers = relay(
        &mut card,
        &[format!("00A40400{:02X}{update_aid}00", update_aid.len() / 2), "80CA010200".into()],
    );
    assert!(answers[0].ends_with("9000") && answers[1].ends_with("9000"), "{answers:?}");
    let registered = store.update_key(&root(), "acme", "NEW-1").await.unwrap().unwrap();
    assert_eq!(hex::encode_upper(&registered), answers[1][..130]);
    let select = format!("00A4040008{}00", hex::encode_upper(tessera_server::tunnel::ISD_AID));
    assert!(relay(&mut card, &[select])[0].ends_with("9000"));
    let mut block = issuance.initial_pin.as_bytes().to_vec();
    block.resize(8, 0xFF);
    let verify = format!("0020008108{}", hex::encode_upper(&block));
    assert_eq!(relay(&mut card, &[verify]), ["9000"]);

    // Issuing onto a card that is not blank is refused, and records nothing.
    let again = store
        .start_issuance(
            &root(),
            "acme",
            &StartIssuance { card_id: "NEW-2".into(), legacy_static_auth: false },
        )
        .await
        .unwrap();
    card.reset();
    let req = Exchange { step: 0, responses: relay(&mut card, &again.session.apdus) };
    let err = store.exchange(&again.session.session_id, &req).await.unwrap_err();
    assert!(matches!(&err, ServerError::Conflict(m) if m.contains("not blank")), "{err}");
    assert!(matches!(
        store.get_card(&root(), "acme", "NEW-2").await,
        Err(ServerError::NotFound(_))
    ));
    assert!(store.verify_audit(None).await.unwrap().ok);
}
both!(issuance_through_the_tunnel);

/// The card's device certificate: GET DATA returns the one the server recorded (role device,
/// subject = card id), for the key the card holds, and `openssl verify` accepts its chain to
/// the issuer CA.
async fn check_device_identity(store: &tessera_server::store::Store, card: &mut Card, id: &str) {
    use tessera_crypto::x509::{Certificate, Role, verify_chain};
    let got = relay(card, &["00CA7F21000000".into(), "00CA7F4900".into()]);
    let cert = hex::decode(&got[0]).unwrap();
    assert!(got[0].ends_with("9000") && cert.starts_with(&[0x7F, 0x21, 0x82]), "{}", got[0]);
    let der = cert[5..cert.len() - 2].to_vec();
    let key = hex::decode(&got[1]).unwrap();
    let certs = store.list_certificates(&root(), "acme").await.unwrap();
    let device: Vec<_> = certs.iter().filter(|c| c.role == "device").collect();
    assert_eq!(device.len(), 1);
    assert_eq!(device[0].subject, id);
    let recorded = Certificate::from_pem(&device[0].pem).unwrap();
    assert_eq!(recorded.der(), der, "the card holds the certificate the server recorded");
    let issuer = store.get_issuer(&root(), "acme").await.unwrap();
    let ca = Certificate::from_pem(&issuer.ca_cert_pem).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        as i64;
    let info = verify_chain(&recorded, &[], &ca, now, Some(Role::Device)).unwrap();
    assert_eq!(info.public_key.to_sec1_bytes()[..], key[5..70], "certified key is the card's");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &issuer.ca_cert_pem).unwrap();
    std::fs::write(dir.path().join("device.pem"), &device[0].pem).unwrap();
    match std::process::Command::new("openssl")
        .args(["verify", "-CAfile", "ca.pem", "device.pem"])
        .current_dir(dir.path())
        .output()
    {
        Ok(out) => assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout)),
        Err(e) => panic!("openssl is needed for this test (apt-get install openssl): {e}"),
    }
}

async fn a_wrong_proof_of_possession_is_refused(db: TestDb) {
    use tessera_server::store::issuance::StartIssuance;
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    // The card's answer to GENERATE KEY PAIR, tampered three ways: a flipped signature bit,
    // another public key beside the card's signature, the key and signature of another card.
    let other = {
        let issuance = store
            .start_issuance(
                &root(),
                "acme",
                &StartIssuance { card_id: "OTHER".into(), legacy_static_auth: false },
            )
            .await
            .unwrap();
        let mut card = Card::in_memory(CardOptions::default());
        card.power_on();
        let req = Exchange { step: 0, responses: relay(&mut card, &issuance.session.apdus) };
        let perso = store.exchange(&issuance.session.session_id, &req).await.unwrap();
        relay(&mut card, &perso.apdus).pop().unwrap()
    };
    for (n, tamper) in [
        &(|r: &mut Vec<u8>| r[100] ^= 1) as &dyn Fn(&mut Vec<u8>),
        &|r: &mut Vec<u8>| r[5..70].copy_from_slice(&hex::decode(&other).unwrap()[5..70]),
        &|r: &mut Vec<u8>| *r = hex::decode(&other).unwrap(),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("NEW-{n}");
        let issuance = store
            .start_issuance(
                &root(),
                "acme",
                &StartIssuance { card_id: id.clone(), legacy_static_auth: false },
            )
            .await
            .unwrap();
        let mut card = Card::in_memory(CardOptions::default());
        card.power_on();
        let req = Exchange { step: 0, responses: relay(&mut card, &issuance.session.apdus) };
        let perso = store.exchange(&issuance.session.session_id, &req).await.unwrap();
        let mut responses = relay(&mut card, &perso.apdus);
        let mut keygen = hex::decode(responses.last().unwrap()).unwrap();
        assert_eq!(keygen.len(), 138);
        tamper(&mut keygen);
        *responses.last_mut().unwrap() = hex::encode_upper(keygen);
        let before = store.audit_entries(&root(), 0, 1000).await.unwrap().len();
        let err =
            store.exchange(&perso.session_id, &Exchange { step: 1, responses }).await.unwrap_err();
        assert!(
            matches!(&err, ServerError::Conflict(m) if m.contains("proof of possession")),
            "{n}: {err}"
        );
        assert_eq!(store.audit_entries(&root(), 0, 1000).await.unwrap().len(), before);
        assert!(matches!(
            store.get_card(&root(), "acme", &id).await,
            Err(ServerError::NotFound(_))
        ));
    }
    let certs = store.list_certificates(&root(), "acme").await.unwrap();
    assert!(certs.iter().all(|c| c.role != "device"), "no device certificate was recorded");
}
both!(a_wrong_proof_of_possession_is_refused);

async fn issuance_aborted_by_the_card_records_nothing(db: TestDb) {
    use tessera_server::store::issuance::StartIssuance;
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let issuance = store
        .start_issuance(
            &root(),
            "acme",
            &StartIssuance { card_id: "NEW-1".into(), legacy_static_auth: false },
        )
        .await
        .unwrap();
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    let req = Exchange { step: 0, responses: relay(&mut card, &issuance.session.apdus) };
    let perso = store.exchange(&issuance.session.session_id, &req).await.unwrap();
    let req = Exchange { step: 1, responses: relay(&mut card, &perso.apdus) };
    let certs = store.exchange(&perso.session_id, &req).await.unwrap();
    // The terminal reports that the card refused the personalisation (SET STATUS failing;
    // the last two commands read the update key).
    let mut responses = relay(&mut card, &certs.apdus);
    let n = responses.len();
    responses[n - 3] = "6985".into();
    let req = Exchange { step: 2, responses };
    let err = store.exchange(&perso.session_id, &req).await.unwrap_err();
    assert!(matches!(&err, ServerError::Conflict(m) if m.contains("SET STATUS")), "{err}");
    assert!(matches!(
        store.get_card(&root(), "acme", "NEW-1").await,
        Err(ServerError::NotFound(_))
    ));
    let certs = store.list_certificates(&root(), "acme").await.unwrap();
    assert!(certs.iter().all(|c| c.role != "device"), "no device certificate was recorded");
}
both!(issuance_aborted_by_the_card_records_nothing);

async fn responses_replayed_into_another_issuance_are_refused(db: TestDb) {
    use tessera_server::store::issuance::StartIssuance;
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let a = store
        .start_issuance(
            &root(),
            "acme",
            &StartIssuance { card_id: "A".into(), legacy_static_auth: false },
        )
        .await
        .unwrap();
    let b = store
        .start_issuance(
            &root(),
            "acme",
            &StartIssuance { card_id: "B".into(), legacy_static_auth: false },
        )
        .await
        .unwrap();
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    // The card's hello for session A carries a cryptogram over A's host challenge.
    let hello_a = relay(&mut card, &a.session.apdus);
    let before = store.audit_entries(&root(), 0, 1000).await.unwrap().len();
    let err = store
        .exchange(&b.session.session_id, &Exchange { step: 0, responses: hello_a.clone() })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ServerError::Conflict(m) if m.contains("does not authenticate")),
        "{err}"
    );
    assert_eq!(store.audit_entries(&root(), 0, 1000).await.unwrap().len(), before);
    // Session A still accepts them.
    let next = store
        .exchange(&a.session.session_id, &Exchange { step: 0, responses: hello_a })
        .await
        .unwrap();
    assert_eq!(next.apdus.len(), 5);
}
both!(responses_replayed_into_another_issuance_are_refused);

async fn an_update_key_without_the_device_proof_is_refused(db: TestDb) {
    use tessera_server::store::issuance::StartIssuance;
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let issuance = store
        .start_issuance(
            &root(),
            "acme",
            &StartIssuance { card_id: "NEW-1".into(), legacy_static_auth: false },
        )
        .await
        .unwrap();
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    let req = Exchange { step: 0, responses: relay(&mut card, &issuance.session.apdus) };
    let perso = store.exchange(&issuance.session.session_id, &req).await.unwrap();
    let req = Exchange { step: 1, responses: relay(&mut card, &perso.apdus) };
    let certs = store.exchange(&perso.session_id, &req).await.unwrap();
    // A terminal substitutes its own key for the card's update key: the proof (the device
    // key's signature over the server's nonce and the key) no longer verifies.
    let mut responses = relay(&mut card, &certs.apdus);
    let last = responses.last_mut().unwrap();
    assert_eq!(last.len(), (65 + 64 + 2) * 2);
    let other = tessera_crypto::hpke::HpkePrivateKey::generate(&mut tessera_crypto::rng::OsRng);
    last.replace_range(..130, &hex::encode_upper(other.public_key().to_bytes()));
    let req = Exchange { step: 2, responses };
    let err = store.exchange(&perso.session_id, &req).await.unwrap_err();
    assert!(matches!(&err, ServerError::Conflict(m) if m.contains("update key")), "{err}");
    assert!(store.update_key(&root(), "acme", "NEW-1").await.unwrap().is_none());
    assert!(matches!(
        store.get_card(&root(), "acme", "NEW-1").await,
        Err(ServerError::NotFound(_))
    ));
}
both!(an_update_key_without_the_device_proof_is_refused);
