#![allow(clippy::unwrap_used)] // tests may unwrap

//! Relay mode (¶0048): the home server keeps the market session's keys itself
//! ([`RelayMarkets`], the handover module's market configuration under tokio-rustls) and
//! offers the market's application data as a plaintext byte stream (what the control channel
//! carries to the terminal): a key update from the market, and TLS 1.2 with the session cache
//! against nginx.

mod support;

use std::sync::Arc;

use support::nginx::{self, Nginx};
use support::{GREETING, Pki, Script};
use tessera_home::server::{MarketStream, Markets, OpenRequest, RelayMarkets, SoftwareHomeCard};
use tessera_proto::control::Mode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A relay-mode market connector whose home card (software, PIN2 verified) is returned too.
fn relay(pki: &Pki) -> (RelayMarkets, Arc<SoftwareHomeCard>) {
    let card = pki.unlocked_home_card();
    (RelayMarkets::new(pki.roots(), card.clone()).unwrap(), card)
}

async fn open(markets: &RelayMarkets, port: u16, cache_allowed: bool) -> Box<dyn MarketStream> {
    let request = OpenRequest { host: "localhost".into(), port, mode: Mode::Relay, cache_allowed };
    markets.open(request).await.unwrap().stream
}

async fn read_until(relay: &mut Box<dyn MarketStream>, seen: &mut Vec<u8>, needle: &[u8]) {
    let mut buf = [0u8; 4096];
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let n = relay.read(&mut buf).await.unwrap();
        assert!(n > 0, "EOF before {:?}", String::from_utf8_lossy(needle));
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Runs a test body on a small multi-threaded runtime (as the home server runs).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    rt.unwrap().block_on(f)
}

#[test]
fn relay_mode_with_a_key_update() {
    block_on(async {
        let pki = Pki::new(41);
        let market = pki.market(true, vec![], Script::KeyUpdate, 1);
        let (markets, _) = relay(&pki);
        let mut relay = open(&markets, market.addr.port(), false).await;
        let mut seen = Vec::new();
        read_until(&mut relay, &mut seen, GREETING).await;
        relay.write_all(b"first request").await.unwrap();
        read_until(&mut relay, &mut seen, b"after key update").await;
        relay.write_all(b"second request").await.unwrap();
        relay.read_to_end(&mut seen).await.unwrap();
        let text = String::from_utf8_lossy(&seen);
        assert!(text.contains("subject=home card of alice;round=0"), "{text}");
        assert!(text.contains("subject=home card of alice;round=1"), "{text}");
        let log = market.thread.join().unwrap().join(";");
        assert!(log.contains("first request") && log.contains("second request"), "{log}");
    });
}

#[test]
fn relay_mode_against_nginx_tls12_with_the_cache() {
    block_on(async {
        if !nginx::available() {
            return;
        }
        let pki = Pki::new(42);
        let nginx = Nginx::start(&pki, false);
        let (markets, card) = relay(&pki);
        for round in 0..2 {
            let mut relay = open(&markets, nginx.addr.port(), true).await;
            relay
                .write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut response = Vec::new();
            relay.read_to_end(&mut response).await.unwrap();
            let response = String::from_utf8_lossy(&response);
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            assert!(response.contains("subject=CN=home card of alice"), "{response}");
            assert!(response.contains("protocol=TLSv1.2"), "{response}");
            let reused = if round == 1 { "reused=r" } else { "reused=." };
            assert!(response.contains(reused), "round {round}: {response}");
            assert_eq!(card.signatures(), 1, "round {round}: the second session resumed");
        }
    });
}
