//! Through the control channel against a real, unmodified market: nginx with
//! `ssl_verify_client on` (TLS 1.3 and TLS 1.2 instances). The terminal asks the home server
//! for each mode; nginx reports the client certificate it verified (the home card's) and
//! whether the session was resumed. With `CI=true` a missing nginx fails.

#![allow(clippy::unwrap_used)]

#[path = "control_support.rs"]
mod control_support;
mod support;

use std::sync::{Arc, Mutex};

use control_support::{Ca, PIN2, admitted_terminal, runtime, serve_standard};
use support::Pki;
use support::nginx::{self, Nginx};
use tessera_crypto::ecdsa::SigningKey;
use tessera_home::SoftwareKey;
use tessera_home::server::SoftwareHomeCard;
use tessera_home::terminal::http::{self, Request};
use tessera_home::terminal::{ControlConnection, OpenedSession, PartialStream};
use tessera_proto::control::Mode;
use tokio_rustls::rustls::pki_types::CertificateDer;

fn get() -> Request {
    Request {
        method: "GET".into(),
        host: "localhost".into(),
        target: "/".into(),
        headers: vec![],
        body: vec![],
    }
}

fn fetch(c: &mut ControlConnection, port: u16, mode: Mode, cache: bool) -> String {
    let (session, opened) = c.open("localhost", port, mode, cache).unwrap();
    let resp = match opened {
        OpenedSession::HandedOver(keys) => {
            let mut s = c.handover_stream(session, &keys).unwrap();
            let r = http::exchange(&mut s, &get()).unwrap();
            s.close().unwrap();
            r
        }
        OpenedSession::Opened(_) => http::exchange(&mut c.relay_stream(session), &get()).unwrap(),
    };
    c.end_session(session).unwrap();
    assert_eq!(resp.status, 200);
    String::from_utf8(resp.body).unwrap()
}

#[test]
fn every_mode_against_nginx_through_the_control_channel() {
    if !nginx::available() {
        return;
    }
    let pki = Pki::new(0x51);
    let rt = runtime();
    let key = SigningKey::from_bytes(&*pki.home_key.to_bytes()).unwrap();
    let chain = vec![CertificateDer::from(pki.home_cert.der().to_vec())];
    let card = Arc::new(SoftwareHomeCard::new(SoftwareKey::new(key, chain), PIN2));
    let (identity, registry, _server, running) = serve_standard(&rt, pki.roots(), card.clone());
    let issuer = Ca::new("access issuer");
    let (_, _, terminal) = admitted_terminal(&issuer, &registry, &identity, &running);
    let mut c = terminal.connect().unwrap();
    c.pin2(PIN2).unwrap();

    // TLS 1.2 first: the cache is keyed by server name (both instances are `localhost`), and
    // rustls prefers a cached TLS 1.3 ticket over a TLS 1.2 session when it has both.
    for tls13 in [false, true] {
        let nginx = Nginx::start(&pki, tls13);
        let port = nginx.addr.port();
        let protocol = if tls13 { "protocol=TLSv1.3" } else { "protocol=TLSv1.2" };
        let signed = card.signatures();
        let body = fetch(&mut c, port, Mode::Handover, true);
        assert!(body.contains("subject=CN=home card of alice"), "{body}");
        assert!(body.contains("verify=SUCCESS") && body.contains(protocol), "{body}");
        assert!(body.contains("reused=."), "a full handshake first: {body}");
        assert_eq!(card.signatures(), signed + 1);
        let body = fetch(&mut c, port, Mode::Handover, true);
        assert!(body.contains("reused=r") && body.contains("verify=SUCCESS"), "{body}");
        assert_eq!(card.signatures(), signed + 1, "resumed from the cache without the card");
        let body = fetch(&mut c, port, Mode::Relay, false);
        assert!(
            body.contains("subject=CN=home card of alice") && body.contains(protocol),
            "{body}"
        );
        assert_eq!(card.signatures(), signed + 2);
    }

    // Partial mode (TLS 1.3): the terminal shakes hands with nginx itself.
    let nginx = Nginx::start(&pki, true);
    let shared = Arc::new(Mutex::new(c));
    let mut s = PartialStream::open(shared, "localhost", nginx.addr.port(), pki.roots()).unwrap();
    let resp = http::exchange(&mut s, &get()).unwrap();
    let body = String::from_utf8(resp.body).unwrap();
    assert!(
        body.contains("subject=CN=home card of alice") && body.contains("verify=SUCCESS"),
        "{body}"
    );
}
