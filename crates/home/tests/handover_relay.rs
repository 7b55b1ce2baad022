#![allow(clippy::unwrap_used)] // tests may unwrap

//! Relay mode (¶0048): the home server keeps the keys and offers the market session as a
//! plaintext byte stream (what the control channel carries to the terminal).

mod support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use support::nginx::{self, Nginx};
use support::{GREETING, Pki, Script, localhost, rustls_market};
use tessera_home::handover::{
    MarketConfig, RelayConnection, SessionCache, connect_market, handshake,
};

fn read_until(relay: &mut impl Read, seen: &mut Vec<u8>, needle: &[u8]) {
    let mut buf = [0u8; 4096];
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let n = relay.read(&mut buf).unwrap();
        assert!(n > 0, "EOF before {:?}", String::from_utf8_lossy(needle));
        seen.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn relay_mode_with_a_key_update() {
    let pki = Pki::new(41);
    let market = rustls_market(
        &pki,
        (&pki.market_cert, &pki.market_key),
        true,
        vec![],
        Script::KeyUpdate,
        1,
    );
    let config = MarketConfig::new(pki.roots(), pki.home_card()).client_config().unwrap();
    let mut tcp = connect_market(market.addr, Duration::from_secs(5)).unwrap();
    let h = handshake(&mut tcp, config, localhost()).unwrap();
    let mut relay = RelayConnection::new(tcp, h).unwrap();
    let mut seen = Vec::new();
    read_until(&mut relay, &mut seen, GREETING);
    relay.write_all(b"first request").unwrap();
    read_until(&mut relay, &mut seen, b"after key update");
    relay.write_all(b"second request").unwrap();
    relay.read_to_end(&mut seen).unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("subject=home card of alice;round=0"), "{text}");
    assert!(text.contains("subject=home card of alice;round=1"), "{text}");
    let log = market.thread.join().unwrap().join(";");
    assert!(log.contains("first request") && log.contains("second request"), "{log}");
}

#[test]
fn relay_mode_against_nginx_tls12_with_the_cache() {
    if !nginx::available() {
        return;
    }
    let pki = Pki::new(42);
    let nginx = Nginx::start(&pki, false);
    let card = pki.home_card();
    let cache = Arc::new(SessionCache::default());
    let config =
        MarketConfig::new(pki.roots(), card.clone()).with_cache(cache).client_config().unwrap();
    for round in 0..2 {
        let mut tcp = connect_market(nginx.addr, Duration::from_secs(10)).unwrap();
        let h = handshake(&mut tcp, config.clone(), localhost()).unwrap();
        assert_eq!(h.resumed, round == 1);
        let mut relay = RelayConnection::new(tcp, h).unwrap();
        relay
            .write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = Vec::new();
        relay.read_to_end(&mut response).unwrap();
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("subject=CN=home card of alice"), "{response}");
        assert!(response.contains("protocol=TLSv1.2"), "{response}");
    }
    assert_eq!(card.signatures(), 1, "the second relay session resumed without the card");
}
