#![allow(clippy::unwrap_used)] // tests may unwrap

//! Partial proxying (¶0089): the terminal shakes hands with the market itself; only the
//! CertificateVerify signature comes from the home card (here the control channel is a
//! closure calling the card). Against a rustls market and nginx.

mod support;

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::{ClientConnection, StreamOwned};
use support::nginx::{self, Nginx};
use support::{GREETING, Pki, Script, localhost};
use tessera_home::ClientKey;
use tessera_home::handover::connect_market;
use tessera_home::handover::partial::{ForwardedKey, terminal_config};

fn forwarded(pki: &Pki) -> (Arc<ForwardedKey>, Arc<tessera_home::SoftwareKey>) {
    let card = pki.home_card();
    let home = card.clone();
    let chain = vec![CertificateDer::from(pki.home_cert.der().to_vec())];
    // The home server's side of the SignRequest: the card signs the hash it is sent.
    let key = ForwardedKey::new(chain, Arc::new(move |hash: &[u8; 32]| home.sign_tls13(hash)));
    (Arc::new(key), card)
}

#[test]
fn partial_mode_against_a_rustls_market() {
    let pki = Pki::new(31);
    let market = pki.market(true, vec![], Script::Greet, 1);
    let (key, card) = forwarded(&pki);
    let config = terminal_config(pki.roots(), key.clone()).unwrap();
    let tcp = connect_market(market.addr, std::time::Duration::from_secs(5)).unwrap();
    let conn = ClientConnection::new(config, localhost()).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(b"partial request").unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with(std::str::from_utf8(GREETING).unwrap()), "{answer}");
    assert!(answer.contains("subject=home card of alice"), "{answer}");
    assert_eq!(key.requests(), 1);
    assert_eq!(card.signatures(), 1);
    let log = market.thread.join().unwrap().join(";");
    assert!(log.contains("partial request"), "{log}");
}

#[test]
fn partial_mode_against_nginx() {
    if !nginx::available() {
        return;
    }
    let pki = Pki::new(32);
    let nginx = Nginx::start(&pki, true);
    let (key, card) = forwarded(&pki);
    let config = terminal_config(pki.roots(), key.clone()).unwrap();
    let tcp = connect_market(nginx.addr, std::time::Duration::from_secs(10)).unwrap();
    let conn = ClientConnection::new(config, localhost()).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("subject=CN=home card of alice"), "{answer}");
    assert!(answer.contains("protocol=TLSv1.3"), "{answer}");
    assert_eq!((key.requests(), card.signatures()), (1, 1));
}

#[test]
fn partial_mode_card_refusal_fails_the_handshake() {
    let pki = Pki::new(33);
    let market = pki.market(true, vec![], Script::Greet, 1);
    let chain = vec![CertificateDer::from(pki.home_cert.der().to_vec())];
    let locked =
        ForwardedKey::new(chain, Arc::new(|_: &[u8; 32]| Err(tessera_home::KeyError::Locked)));
    let config = terminal_config(pki.roots(), Arc::new(locked)).unwrap();
    let tcp = connect_market(market.addr, std::time::Duration::from_secs(5)).unwrap();
    let conn = ClientConnection::new(config, localhost()).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    let err = tls.write_all(b"x").and_then(|_| tls.flush()).and_then(|_| {
        let mut b = [0u8; 16];
        tls.read(&mut b).map(|_| ())
    });
    assert!(err.is_err(), "a locked home card fails the handshake");
    drop(tls);
    let _ = market.thread.join();
}
