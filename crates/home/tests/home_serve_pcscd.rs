//! The home server holding a home card in a PC/SC reader: a home card image served into
//! vpcd's first slot through a real pcscd; the home server opens it with `PcscChannel`,
//! verifies PIN1, and serves a terminal (PIN2 over the control channel, a handover to a
//! market that requires the home card's certificate). Skipped with a notice when pcscd or the
//! vpcd driver is missing (fails under `CI=true`), like the host crate's pcscd tests.

#![allow(clippy::unwrap_used)]

#[path = "control_support.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::*;
use tessera_card::applets::isd;
use tessera_card::pin::PinBlock;
use tessera_card::{Card, CardOptions, OpenOptions};
use tessera_crypto::scp03::StaticKeys;
use tessera_home::server::CardHome;
use tessera_home::terminal::http::{self, Request};
use tessera_home::terminal::{OpenedSession, TerminalError};
use tessera_host::home::{HomeCard, personalize_card_id};
use tessera_host::pcscd::{self, Pcscd};
use tessera_host::vpcd::{BridgeConfig, DEFAULT_PORT, VpcdBridge};
use tessera_host::{CardChannel, InProcessChannel, PcscChannel};
use tessera_proto::control::{ErrorCode, Mode};

const SLOT_0: &str = "Virtual PCD 00 00";

fn pin(v: &[u8]) -> PinBlock {
    PinBlock::from_value(v).unwrap()
}

#[test]
fn home_card_in_a_pcsc_reader() {
    let Some(_daemon) = Pcscd::start_for_test(&[]) else { return };
    let rt = runtime();
    let issuer = Ca::new("issuer");
    let market_ca = Ca::new("market CA");
    let market = start_market(&rt, &market_ca, &issuer);

    // An enrolled home card image, then served into vpcd's slot 0.
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("home.img");
    {
        let mut ch = InProcessChannel::new(Card::create(&image, CardOptions::default()).unwrap());
        personalize_card_id(&mut ch, &StaticKeys::gp_test_keys(isd::INITIAL_KVN), b"HOME-P")
            .unwrap();
        let mut home = HomeCard::new(ch);
        home.select().unwrap();
        home.set_pins(&pin(b"1111"), &pin(PIN2), &pin(b"99999999")).unwrap();
        home.verify_pin1(&pin(b"1111")).unwrap();
        home.verify_pin2(&pin(PIN2)).unwrap();
        home.enrol(issuer.signer(), &issuer.cert, b"HOME-P", "pat", *b"EUR").unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let served = std::thread::spawn(move || {
        let card = Card::open(&image, OpenOptions::default()).unwrap();
        let mut bridge =
            VpcdBridge::new(card, BridgeConfig { port: DEFAULT_PORT, ..Default::default() });
        bridge.run(&flag).unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while !pcscd::card_present(SLOT_0) {
        assert!(Instant::now() < deadline, "timed out waiting for the card in slot 0");
        std::thread::sleep(Duration::from_millis(50));
    }

    // `tessera home serve --reader`: PIN1 at start, then the home server.
    let channel: Box<dyn CardChannel + Send> =
        Box::new(PcscChannel::connect(Some(SLOT_0)).unwrap());
    let mut home = HomeCard::new(channel);
    home.select().unwrap();
    home.verify_pin1(&pin(b"1111")).unwrap();
    let home = Arc::new(CardHome::new(home).unwrap());
    let (identity, registry, _server, running) = serve_standard(&rt, market_ca.roots(), home);
    let (_, _, terminal) = admitted_terminal(&issuer, &registry, &identity, &running);
    let mut c = terminal.connect().unwrap();
    let err = c.pin2(b"0000").unwrap_err();
    assert!(matches!(err, TerminalError::Refused { code: ErrorCode::Pin2Wrong(2), .. }), "{err:?}");
    c.pin2(PIN2).unwrap();
    let (session, opened) = c.open("localhost", market.port(), Mode::Handover, false).unwrap();
    let OpenedSession::HandedOver(keys) = opened else { panic!("{opened:?}") };
    let req = Request {
        method: "GET".into(),
        host: "localhost".into(),
        target: "/pcsc".into(),
        headers: vec![],
        body: vec![],
    };
    let resp = http::exchange(&mut c.handover_stream(session, &keys).unwrap(), &req).unwrap();
    assert_eq!(String::from_utf8(resp.body).unwrap(), "GET /pcsc HTTP/1.1\nclient=pat\n");
    c.end_session(session).unwrap();
    drop(c);
    drop(running);

    stop.store(true, Ordering::Relaxed);
    served.join().unwrap();
}
