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
    let start = StartIssuance { card_id: "NEW-1".into() };
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
    let mut block = issuance.initial_pin.as_bytes().to_vec();
    block.resize(8, 0xFF);
    let verify = format!("0020008108{}", hex::encode_upper(&block));
    assert_eq!(relay(&mut card, &[verify]), ["9000"]);

    // Issuing onto a card that is not blank is refused, and records nothing.
    let again = store
        .start_issuance(&root(), "acme", &StartIssuance { card_id: "NEW-2".into() })
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

async fn issuance_aborted_by_the_card_records_nothing(db: TestDb) {
    use tessera_server::store::issuance::StartIssuance;
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let issuance = store
        .start_issuance(&root(), "acme", &StartIssuance { card_id: "NEW-1".into() })
        .await
        .unwrap();
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    let req = Exchange { step: 0, responses: relay(&mut card, &issuance.session.apdus) };
    let perso = store.exchange(&issuance.session.session_id, &req).await.unwrap();
    // The terminal reports that the card refused the personalisation (SET STATUS failing).
    let mut responses = relay(&mut card, &perso.apdus);
    *responses.last_mut().unwrap() = "6985".into();
    let req = Exchange { step: 1, responses };
    let err = store.exchange(&perso.session_id, &req).await.unwrap_err();
    assert!(matches!(&err, ServerError::Conflict(m) if m.contains("SET STATUS")), "{err}");
    assert!(matches!(
        store.get_card(&root(), "acme", "NEW-1").await,
        Err(ServerError::NotFound(_))
    ));
}
both!(issuance_aborted_by_the_card_records_nothing);

async fn responses_replayed_into_another_issuance_are_refused(db: TestDb) {
    use tessera_server::store::issuance::StartIssuance;
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let a = store
        .start_issuance(&root(), "acme", &StartIssuance { card_id: "A".into() })
        .await
        .unwrap();
    let b = store
        .start_issuance(&root(), "acme", &StartIssuance { card_id: "B".into() })
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
