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
