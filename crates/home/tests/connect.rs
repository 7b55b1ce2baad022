//! Market sessions through the home server: relay mode end to end against an in-process
//! market that requires a client certificate; faults of the market.

#![allow(clippy::unwrap_used)]

#[path = "control_support.rs"]
mod support;

use std::sync::Arc;

use support::*;
use tessera_home::terminal::http::{self, Request};
use tessera_home::terminal::{OpenedSession, TerminalError};
use tessera_proto::control::{ErrorCode, Mode};

#[test]
fn relay_mode_speaks_https_to_a_market_with_the_home_cards_certificate() {
    let s = Setup::with("alice home card", Connector::Relay);
    let market = s.market();
    let mut c = s.unlocked();

    // Two sessions over one control connection, one after the other.
    for (i, body) in [b"first".as_slice(), b"second".as_slice()].into_iter().enumerate() {
        let (session, opened) = c.open("localhost", market.port(), Mode::Relay, false).unwrap();
        assert!(matches!(opened, OpenedSession::Opened(ref cert) if cert.is_empty()));
        let request = Request {
            method: "POST".into(),
            host: format!("localhost:{}", market.port()),
            target: format!("/buy?n={i}"),
            headers: vec![("X-Test".into(), "1".into())],
            body: body.to_vec(),
        };
        let resp = http::exchange(&mut c.relay_stream(session), &request).unwrap();
        assert_eq!(resp.status, 200);
        let text = String::from_utf8(resp.body).unwrap();
        assert_eq!(
            text,
            format!(
                "POST /buy?n={i} HTTP/1.1\nclient=alice home card\n{}",
                String::from_utf8_lossy(body)
            )
        );
    }
    assert_eq!(s.card.signatures(), 2, "the home card signed each market handshake");
}

#[test]
fn market_faults_are_reported_per_session() {
    let s = Setup::with("home", Connector::Relay);
    let stranger_ca = Ca::new("not trusted");
    let market = s.market();
    let untrusted = start_market(&s.rt, &stranger_ca, &s.ca);
    let mut c = s.unlocked();

    let code = |r: Result<_, TerminalError>| match r {
        Err(TerminalError::Refused { code, .. }) => code,
        other => panic!("{other:?}"),
    };
    // A market certificate that does not validate.
    assert_eq!(
        code(c.open("localhost", untrusted.port(), Mode::Relay, false)),
        ErrorCode::MarketHandshake
    );
    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    assert_eq!(code(c.open("localhost", closed, Mode::Relay, false)), ErrorCode::MarketUnreachable);
    // A market that closes the connection in the middle of the handshake.
    let rude_port = rude_market();
    assert_eq!(
        code(c.open("localhost", rude_port, Mode::Relay, false)),
        ErrorCode::MarketHandshake
    );
    // The control connection survives all of that.
    let (session, _) = c.open("localhost", market.port(), Mode::Relay, false).unwrap();
    let req = Request {
        method: "GET".into(),
        host: "localhost".into(),
        target: "/".into(),
        headers: vec![],
        body: vec![],
    };
    assert_eq!(http::exchange(&mut c.relay_stream(session), &req).unwrap().status, 200);
}

#[test]
fn handover_mode_the_terminal_speaks_tls_records_with_handed_over_keys() {
    let s = Setup::with("bob home card", Connector::Standard);
    let market = s.market();
    let mut c = s.unlocked();

    for (i, cache_allowed) in [false, true, true].into_iter().enumerate() {
        let (session, opened) =
            c.open("localhost", market.port(), Mode::Handover, cache_allowed).unwrap();
        let OpenedSession::HandedOver(keys) = opened else { panic!("{opened:?}") };
        let mut stream = c.handover_stream(session, &keys).unwrap();
        let req = Request {
            method: "PUT".into(),
            host: "localhost".into(),
            target: format!("/cart/{i}"),
            headers: vec![],
            body: vec![b'x'; 40_000],
        };
        let resp = http::exchange(&mut stream, &req).unwrap();
        assert_eq!(resp.status, 200);
        let text = String::from_utf8(resp.body).unwrap();
        assert!(text.starts_with(&format!("PUT /cart/{i} HTTP/1.1\nclient=bob home card\n")));
        assert_eq!(text.matches('x').count(), 40_000);
        c.end_session(session).unwrap();
    }
    // The first session was a full handshake; the second stored its ticket and the third
    // resumed from the cache without the home card (2 signatures for 3 sessions).
    assert_eq!(s.card.signatures(), 2);
}

#[test]
fn partial_mode_the_terminal_shakes_hands_and_the_home_card_signs_through_the_home_server() {
    let s = Setup::with("dave home card", Connector::Standard);
    let market = s.market();
    let c = s.unlocked();
    let control = Arc::new(std::sync::Mutex::new(c));
    let mut stream = tessera_home::terminal::PartialStream::open(
        control.clone(),
        "localhost",
        market.port(),
        s.market_ca.roots(),
    )
    .unwrap();
    let req = Request {
        method: "GET".into(),
        host: "localhost".into(),
        target: "/partial".into(),
        headers: vec![],
        body: vec![],
    };
    let resp = http::exchange(&mut stream, &req).unwrap();
    assert_eq!(
        String::from_utf8(resp.body).unwrap(),
        "GET /partial HTTP/1.1\nclient=dave home card\n"
    );
    assert_eq!(s.card.signatures(), 1, "exactly one CertificateVerify signed by the home card");

    // A market the terminal does not trust is refused by the terminal itself.
    let other_ca = Ca::new("other");
    let err = tessera_home::terminal::PartialStream::open(
        control.clone(),
        "localhost",
        market.port(),
        other_ca.roots(),
    )
    .and_then(|mut s| http::exchange(&mut s, &req).map_err(TerminalError::Io));
    assert!(err.is_err());
    assert_eq!(s.card.signatures(), 1, "nothing signed for an untrusted market");
}

#[test]
fn handover_faults_market_closing_mid_handshake_and_home_server_stopping_mid_session() {
    let mut s = Setup::with("erin", Connector::Standard);
    let market = s.market();
    let mut c = s.unlocked();

    // A market that reads the ClientHello and closes: the session fails cleanly, the control
    // connection stays usable.
    let rude_port = rude_market();
    match c.open("localhost", rude_port, Mode::Handover, false) {
        Err(TerminalError::Refused { code: ErrorCode::MarketHandshake, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(s.card.signatures(), 0);

    // The home server stops while a handed-over session is open: the terminal's next read
    // reports it at once (no timeout, no hang).
    let (session, opened) = c.open("localhost", market.port(), Mode::Handover, false).unwrap();
    let OpenedSession::HandedOver(keys) = opened else { panic!("{opened:?}") };
    let running = s.running.take().unwrap();
    s.rt.block_on(running.stop());
    let started = std::time::Instant::now();
    let mut stream = c.handover_stream(session, &keys).unwrap();
    let req = Request {
        method: "GET".into(),
        host: "localhost".into(),
        target: "/".into(),
        headers: vec![],
        body: vec![],
    };
    let err = http::exchange(&mut stream, &req).unwrap_err();
    let inner = err.into_inner().and_then(|e| e.downcast::<TerminalError>().ok());
    assert!(
        matches!(inner.as_deref(), Some(TerminalError::Closed | TerminalError::Io(_))),
        "{inner:?}"
    );
    assert!(started.elapsed() < tessera_home::terminal::IO_TIMEOUT);
    assert!(!s.card.enabled(), "the home card went back to the wait state");
}

#[test]
fn relay_mode_with_a_tls12_market_and_from_the_session_cache() {
    let s = Setup::with("frank", Connector::Relay);
    let market12 = start_market_with(&s.rt, &s.market_ca, &s.ca, true);
    let market13 = s.market();
    let mut c = s.unlocked();
    let req = Request {
        method: "GET".into(),
        host: "localhost".into(),
        target: "/r".into(),
        headers: vec![],
        body: vec![],
    };
    let fetch = |c: &mut tessera_home::terminal::ControlConnection, port: u16| {
        let (session, _) = c.open("localhost", port, Mode::Relay, true).unwrap();
        let resp = http::exchange(&mut c.relay_stream(session), &req).unwrap();
        c.end_session(session).unwrap();
        String::from_utf8(resp.body).unwrap()
    };
    // TLS 1.2: the home card signs the TLS 1.2 CertificateVerify (handshake messages it checks).
    assert_eq!(fetch(&mut c, market12.port()), "GET /r HTTP/1.1\nclient=frank\n");
    assert_eq!(s.card.signatures(), 1);
    // The second TLS 1.2 session resumes from the cache: no signature.
    assert_eq!(fetch(&mut c, market12.port()), "GET /r HTTP/1.1\nclient=frank\n");
    assert_eq!(s.card.signatures(), 1);
    // TLS 1.3 too.
    assert_eq!(fetch(&mut c, market13.port()), "GET /r HTTP/1.1\nclient=frank\n");
    assert_eq!(s.card.signatures(), 2);
}

#[test]
fn several_market_sessions_interleave_over_one_control_connection() {
    let s = Setup::with("gina", Connector::Standard);
    let market = s.market();
    let mut c = s.unlocked();
    let req = |path: &str| Request {
        method: "GET".into(),
        host: "localhost".into(),
        target: path.into(),
        headers: vec![],
        body: vec![],
    };
    // Open a handover session and a relay session, send both requests, then read the answers
    // in the opposite order: frames of the other session wait in the terminal's queue.
    let (s1, opened) = c.open("localhost", market.port(), Mode::Handover, false).unwrap();
    let OpenedSession::HandedOver(keys) = opened else { panic!("{opened:?}") };
    let (s2, _) = c.open("localhost", market.port(), Mode::Relay, false).unwrap();
    assert_ne!(s1, s2);
    let mut keyed = tessera_home::handover::KeyedConnection::new(&keys).unwrap();
    let records = keyed.seal_data(&req("/one").encode().unwrap()).unwrap();
    c.send_data(s1, &records).unwrap();
    let two = http::exchange(&mut c.relay_stream(s2), &req("/two")).unwrap();
    assert_eq!(String::from_utf8(two.body).unwrap(), "GET /two HTTP/1.1\nclient=gina\n");
    // Session 1's answer was queued meanwhile; read it through a stream from the same keys.
    let mut raw = Vec::new();
    loop {
        match c.recv(s1).unwrap() {
            tessera_home::terminal::SessionEvent::Data(b) => keyed.received(&b),
            tessera_home::terminal::SessionEvent::End => break,
            other => panic!("{other:?}"),
        }
        while let Some(ev) = keyed.next_event().unwrap() {
            match ev {
                tessera_home::handover::Event::Data(d) => raw.extend_from_slice(&d),
                tessera_home::handover::Event::PostHandshake(p) => {
                    c.post_handshake(s1, &p).unwrap()
                }
                tessera_home::handover::Event::Closed => {}
            }
        }
    }
    let one = http::parse(&raw, false, true).unwrap().unwrap();
    assert_eq!(String::from_utf8(one.body).unwrap(), "GET /one HTTP/1.1\nclient=gina\n");
}
