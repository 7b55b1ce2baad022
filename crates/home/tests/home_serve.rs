//! The home server with real cards (in-process `home` and `access` applets): PIN2 through the
//! control channel to the home card (claim 3), the access card's key for the control channel
//! and its pinned home server, handover to a market that requires the home card's certificate.

#![allow(clippy::unwrap_used)]

#[path = "control_support.rs"]
mod support;

use std::sync::Arc;

use support::*;
use tessera_card::applets::isd;
use tessera_card::pin::PinBlock;
use tessera_card::{Card, CardOptions};
use tessera_crypto::scp03::StaticKeys;
use tessera_home::server::CardHome;
use tessera_home::terminal::http::{self, Request};
use tessera_home::terminal::{CardAccess, OpenedSession, Terminal, TerminalError};
use tessera_host::access::AccessCard;
use tessera_host::home::{HomeCard, IDLE_LIMIT, ManualClock, personalize_card_id};
use tessera_host::{CardChannel, InProcessChannel};
use tessera_proto::access::HomeServer;
use tessera_proto::control::{ErrorCode, Mode};

fn pin(v: &[u8]) -> PinBlock {
    PinBlock::from_value(v).unwrap()
}

fn blank(id: &[u8]) -> Box<dyn CardChannel + Send> {
    let mut channel = InProcessChannel::new(Card::in_memory(CardOptions::default()));
    personalize_card_id(&mut channel, &StaticKeys::gp_test_keys(isd::INITIAL_KVN), id).unwrap();
    Box::new(channel)
}

/// A home card `id` of `holder` enrolled by `issuer`, then PIN1 as at the home server's start
/// (Fig. 6: prohibited -> remote-access wait); its idle limit on `clock`.
fn home_card(issuer: &Ca, id: &[u8], holder: &str, clock: Arc<ManualClock>) -> Arc<CardHome> {
    let mut home = HomeCard::new(blank(id));
    home.select().unwrap();
    home.set_pins(&pin(b"1111"), &pin(PIN2), &pin(b"99999999")).unwrap();
    home.verify_pin1(&pin(b"1111")).unwrap();
    home.verify_pin2(&pin(PIN2)).unwrap();
    home.enrol(issuer.signer(), &issuer.cert, id, holder, *b"EUR").unwrap();
    home.end().unwrap();
    Arc::new(CardHome::with_clock(home, clock).unwrap())
}

/// An access card `id` enrolled by `issuer` as `label`, unlocked with its PIN; its
/// certificate.
fn access_card(
    issuer: &Ca,
    id: &[u8],
    label: &str,
) -> (AccessCard<Box<dyn CardChannel + Send>>, tessera_crypto::x509::Certificate) {
    let mut access = AccessCard::new(blank(id));
    access.select().unwrap();
    access.set_pins(&pin(b"4321"), &pin(b"87654321")).unwrap();
    access.verify_pin(&pin(b"4321")).unwrap();
    let cert = access.enrol(issuer.signer(), &issuer.cert, id, label).unwrap();
    (access, cert)
}

#[test]
fn pin2_wrong_three_times_blocks_the_real_home_card() {
    let rt = runtime();
    let issuer = Ca::new("issuer");
    let home = home_card(&issuer, b"HOME-2", "dora", Arc::new(ManualClock::new()));
    let (identity, registry, _server, running) = serve_standard(&rt, issuer.roots(), home.clone());
    let (_, _, terminal) = admitted_terminal(&issuer, &registry, &identity, &running);
    let mut c = terminal.connect().unwrap();
    let code = |r: Result<(), TerminalError>| match r {
        Err(TerminalError::Refused { code, .. }) => code,
        other => panic!("{other:?}"),
    };
    assert_eq!(code(c.pin2(b"0000")), ErrorCode::Pin2Wrong(2));
    assert_eq!(code(c.pin2(b"1111")), ErrorCode::Pin2Wrong(1));
    assert_eq!(code(c.pin2(b"3333")), ErrorCode::Blocked);
    assert_eq!(code(c.pin2(PIN2)), ErrorCode::Blocked, "the card stays blocked (PUK needed)");
    assert!(matches!(
        tessera_home::ClientKey::sign_tls13(&*home, &[0; 32]),
        Err(tessera_home::KeyError::Locked | tessera_home::KeyError::Card(_))
    ));
}

#[test]
fn real_home_and_access_cards_fall_back_after_ten_idle_minutes() {
    use tessera_home::{ClientKey, KeyError};
    let rt = runtime();
    let issuer = Ca::new("issuer");
    let clock = Arc::new(ManualClock::new());
    let home = home_card(&issuer, b"HOME-3", "erin", clock.clone());
    let (identity, registry, server, running) = serve_standard(&rt, issuer.roots(), home.clone());

    // The access card, unlocked by the terminal, its idle limit on the same clock.
    let (access, cert) = access_card(&issuer, b"ACCESS-3", "erin's phone");
    registry.admit(cert.der(), "erin's phone", now()).unwrap();
    let access = Arc::new(CardAccess::with_clock(access, clock.clone()).unwrap());
    let terminal =
        Terminal::new(access.clone(), identity.spki_sha256(), running.addr.to_string()).unwrap();
    let mut c = terminal.connect().unwrap();
    c.pin2(PIN2).unwrap();

    // Used within the limit: both stay unlocked (each use restarts the limit).
    clock.advance(IDLE_LIMIT - std::time::Duration::from_secs(1));
    assert!(!server.check_idle());
    assert!(home.sign_tls13(&[1; 32]).is_ok());
    assert!(access.sign_tls13(&[1; 32]).is_ok());

    // Ten minutes without use: the server's timer tick sends the home card back to the wait
    // state (END on the card), and the access card relocks on its next use.
    clock.advance(IDLE_LIMIT);
    assert!(server.check_idle());
    assert_eq!(home.sign_tls13(&[1; 32]), Err(KeyError::Locked));
    let err = c.open("localhost", 9, Mode::Handover, false).unwrap_err();
    assert!(matches!(err, TerminalError::Refused { code: ErrorCode::Locked, .. }), "{err:?}");
    assert_eq!(access.sign_tls13(&[1; 32]), Err(KeyError::Locked));
    assert_eq!(access.sign_tls13(&[1; 32]), Err(KeyError::Locked), "relocked on the card");

    // PIN2 again unlocks the home card.
    c.pin2(PIN2).unwrap();
    assert!(home.sign_tls13(&[1; 32]).is_ok());
}

#[test]
fn real_home_and_access_cards_through_the_home_server() {
    let rt = runtime();
    let issuer = Ca::new("issuer");
    let market_ca = Ca::new("market CA");
    let market = start_market(&rt, &market_ca, &issuer);
    let home = home_card(&issuer, b"HOME-1", "carol", Arc::new(ManualClock::new()));
    let (identity, registry, _server, running) =
        serve_standard(&rt, market_ca.roots(), home.clone());

    // The access card: enrolled, pinning this home server.
    let (mut access, access_cert) = access_card(&issuer, b"ACCESS-1", "carol's phone");
    access
        .set_home_server(&HomeServer {
            spki_sha256: identity.spki_sha256(),
            address: running.addr.to_string(),
        })
        .unwrap();
    registry.admit(access_cert.der(), "carol's phone", now()).unwrap();

    let access = Arc::new(CardAccess::new(access).unwrap());
    let pinned = access.home_server().unwrap().clone();
    let terminal = Terminal::new(access.clone(), pinned.spki_sha256, pinned.address).unwrap();
    let mut c = terminal.connect().unwrap();

    // The home card refuses market sessions until PIN2; a wrong PIN2 is counted by the card.
    let err = c.open("localhost", market.port(), Mode::Handover, false).unwrap_err();
    assert!(matches!(err, TerminalError::Refused { code: ErrorCode::Locked, .. }), "{err:?}");
    let err = c.pin2(b"0000").unwrap_err();
    assert!(matches!(err, TerminalError::Refused { code: ErrorCode::Pin2Wrong(2), .. }), "{err:?}");
    c.pin2(PIN2).unwrap();

    let (session, opened) = c.open("localhost", market.port(), Mode::Handover, false).unwrap();
    let OpenedSession::HandedOver(keys) = opened else { panic!("{opened:?}") };
    let mut stream = c.handover_stream(session, &keys).unwrap();
    let req = Request {
        method: "GET".into(),
        host: "localhost".into(),
        target: "/orders".into(),
        headers: vec![],
        body: vec![],
    };
    let resp = http::exchange(&mut stream, &req).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(String::from_utf8(resp.body).unwrap(), "GET /orders HTTP/1.1\nclient=carol\n");
    c.end_session(session).unwrap();

    // Relay mode: the home server's own TLS client signs with the real card from inside the
    // runtime (the card operation leaves the async worker).
    let (session, _) = c.open("localhost", market.port(), Mode::Relay, false).unwrap();
    let resp = http::exchange(&mut c.relay_stream(session), &req).unwrap();
    assert_eq!(String::from_utf8(resp.body).unwrap(), "GET /orders HTTP/1.1\nclient=carol\n");
    c.end_session(session).unwrap();

    // "End": the home card goes back to the wait state and refuses to sign.
    c.end().unwrap();
    let err = c.open("localhost", market.port(), Mode::Handover, false).unwrap_err();
    assert!(matches!(err, TerminalError::Refused { code: ErrorCode::Locked, .. }), "{err:?}");
    assert!(matches!(
        tessera_home::ClientKey::sign_tls13(&*home, &[0; 32]),
        Err(tessera_home::KeyError::Locked)
    ));
}
