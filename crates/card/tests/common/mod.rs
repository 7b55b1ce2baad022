//! Helpers shared by the card's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use tessera_apdu::{Response, StatusWord};
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_crypto::rng::SeededRng;

/// An in-memory card on a seeded generator, powered on.
pub fn card() -> Card {
    let mut card = Card::in_memory(CardOptions::default().rng(Box::new(SeededRng::from_u64(7))));
    card.power_on();
    card
}

/// Sends hex, returns the parsed response.
pub fn tx(card: &mut Card, apdu: &str) -> Response {
    let bytes = hex::decode(apdu.replace(' ', "")).unwrap();
    Response::parse(&card.transmit(&bytes)).unwrap()
}

/// Sends hex, returns the status word.
pub fn sw(card: &mut Card, apdu: &str) -> StatusWord {
    tx(card, apdu).sw
}

/// A driver with no power cuts, so scripts run against a plain card.
pub struct Plain<'a>(pub &'a mut Card);

impl TearDriver for Plain<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

pub const SELECT_ISD: &str = "00A4040008A00000015100000000";
