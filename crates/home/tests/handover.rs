#![allow(clippy::unwrap_used)] // tests may unwrap

//! The proxied handshake and key handover against an in-process rustls market: the home
//! server shakes hands (home card signing), the terminal reads and writes the records with the
//! handed-over keys and its own record layer, the home server handles the post-handshake
//! messages; faults end cleanly.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::ring::cipher_suite as cs;
use support::{GREETING, Pki, Script, localhost, rustls_market};
use tessera_home::handover::{
    Event, HandoverError, KeyedConnection, MarketConfig, PostHandshake, SessionCache,
    connect_market, handshake,
};
use tessera_host::home::ManualClock;
use tessera_proto::proxy::{CipherSuite, TlsVersion};

const TIMEOUT: Duration = Duration::from_secs(5);

/// What the terminal saw of a session.
#[derive(Debug, Default)]
struct Seen {
    data: Vec<u8>,
    tickets: usize,
    key_updates: usize,
    closed: bool,
}

/// The terminal's side, in-process: the home server's relay is the identity here (the
/// terminal reads the market's TCP stream after the pending bytes). Sends `requests` one at a
/// time, each after the previous answer, reads until close_notify.
fn terminal(
    tcp: &mut TcpStream,
    handover: &mut tessera_home::handover::Handover,
    requests: &[&[u8]],
    answers_before_next: &[&[u8]],
) -> Result<Seen, HandoverError> {
    let mut conn = KeyedConnection::new(&handover.keys)?;
    conn.received(&handover.pending);
    let mut seen = Seen::default();
    let mut next = 0;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // Send the next request once its precondition (text in the data so far) holds.
        while next < requests.len() {
            let want = answers_before_next.get(next).copied().unwrap_or(b"");
            if !contains(&seen.data, want) {
                break;
            }
            tcp.write_all(&conn.seal_data(requests[next])?)?;
            next += 1;
        }
        match conn.next_event()? {
            Some(Event::Data(d)) => seen.data.extend(d),
            Some(Event::PostHandshake(h)) => {
                for change in handover.session.on_handshake_data(&h)? {
                    match change {
                        PostHandshake::SessionTicket => seen.tickets += 1,
                        PostHandshake::KeyUpdate { keys, respond } => {
                            seen.key_updates += 1;
                            let answer = conn.apply_key_update(&keys, respond)?;
                            tcp.write_all(&answer)?;
                        }
                    }
                }
            }
            Some(Event::Closed) => {
                seen.closed = true;
                let _ = tcp.write_all(&conn.close_notify()?);
                return Ok(seen);
            }
            None => {
                let n = tcp.read(&mut buf)?;
                if n == 0 {
                    return Ok(seen);
                }
                conn.received(&buf[..n]);
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

fn run_greet(
    tls13: bool,
    suites: Vec<rustls::SupportedCipherSuite>,
) -> (Seen, TlsVersion, CipherSuite, usize, String) {
    let pki = Pki::new(1);
    let market = pki.market(tls13, suites, Script::Greet, 1);
    let card = pki.home_card();
    let config = MarketConfig::new(pki.roots(), card.clone()).client_config().unwrap();
    let mut tcp = connect_market(market.addr, TIMEOUT).unwrap();
    let mut h = handshake(&mut tcp, config, localhost()).unwrap();
    assert!(!h.resumed);
    let (v, s) = (h.keys.version(), h.keys.suite());
    let seen = terminal(&mut tcp, &mut h, &[b"GET / HTTP/1.0\r\n\r\n"], &[GREETING]).unwrap();
    let log = market.thread.join().unwrap().join(";");
    (seen, v, s, card.signatures(), log)
}

#[test]
fn tls13_handover_first_bytes_tickets_and_close_notify() {
    let (seen, version, suite, signatures, log) = run_greet(true, vec![]);
    assert_eq!(version, TlsVersion::Tls13);
    assert_eq!(suite, CipherSuite::Tls13Aes128GcmSha256);
    // The market's first bytes (sent with its first records after the handshake) arrived,
    // then the answer to the terminal's request naming the home card's certificate.
    assert!(seen.data.starts_with(GREETING), "{:?}", String::from_utf8_lossy(&seen.data));
    assert!(contains(&seen.data, b"subject=home card of alice;round=0"));
    assert!(seen.tickets >= 1, "the market's tickets reached the home server");
    assert!(seen.closed);
    assert_eq!(signatures, 1, "the home card signed the CertificateVerify once");
    assert!(log.contains("GET / HTTP/1.0"), "{log}");
}

#[test]
fn tls12_handover_first_bytes_and_close_notify() {
    let (seen, version, suite, signatures, log) = run_greet(false, vec![]);
    assert_eq!(version, TlsVersion::Tls12);
    assert_eq!(suite, CipherSuite::Tls12EcdheEcdsaAes128GcmSha256);
    assert!(seen.data.starts_with(GREETING));
    assert!(contains(&seen.data, b"subject=home card of alice;round=0"));
    assert_eq!(seen.tickets, 0);
    assert!(seen.closed);
    assert_eq!(signatures, 1);
    assert!(log.contains("GET / HTTP/1.0"), "{log}");
}

#[test]
fn tls12_aes256_suite() {
    let (seen, _, suite, _, _) =
        run_greet(false, vec![cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]);
    assert_eq!(suite, CipherSuite::Tls12EcdheEcdsaAes256GcmSha384);
    assert!(contains(&seen.data, b"subject=home card of alice"));
}

#[test]
fn tls13_sha384_suite_with_client_auth_fails_cleanly() {
    // The card signs SHA-256 transcript hashes only: the handshake fails with an error, no hang.
    let pki = Pki::new(1);
    let market = pki.market(true, vec![cs::TLS13_AES_256_GCM_SHA384], Script::Greet, 1);
    let config = pki.config();
    let mut tcp = connect_market(market.addr, TIMEOUT).unwrap();
    let err = handshake(&mut tcp, config, localhost()).unwrap_err();
    assert!(matches!(err, HandoverError::Tls(_)), "{err}");
    drop(tcp);
    assert!(market.thread.join().unwrap()[0].starts_with("error"));
}

#[test]
fn tls13_key_update_requested_by_the_market() {
    let pki = Pki::new(2);
    let market = pki.market(true, vec![], Script::KeyUpdate, 1);
    let config = pki.config();
    let mut tcp = connect_market(market.addr, TIMEOUT).unwrap();
    let mut h = handshake(&mut tcp, config, localhost()).unwrap();
    let seen = terminal(
        &mut tcp,
        &mut h,
        &[b"first request", b"second request"],
        &[GREETING, b"after key update"],
    )
    .unwrap();
    assert_eq!(seen.key_updates, 1);
    assert!(contains(&seen.data, b"after key update"));
    // The second answer was read under the market's new keys, the second request written
    // under the terminal's new keys (the market read it).
    assert!(contains(&seen.data, b"round=1"), "{:?}", String::from_utf8_lossy(&seen.data));
    let log = market.thread.join().unwrap().join(";");
    assert!(log.contains("second request"), "{log}");
}

#[test]
fn market_certificate_that_does_not_validate() {
    let pki = Pki::new(3);
    let (fake_cert, fake_key) = pki.untrusted_market();
    let market = rustls_market(&pki, (&fake_cert, &fake_key), true, vec![], Script::Greet, 1);
    let card = pki.home_card();
    let config = MarketConfig::new(pki.roots(), card.clone()).client_config().unwrap();
    let mut tcp = connect_market(market.addr, TIMEOUT).unwrap();
    let err = handshake(&mut tcp, config, localhost()).unwrap_err();
    assert!(matches!(err, HandoverError::Tls(rustls::Error::InvalidCertificate(_))), "{err:?}");
    assert_eq!(card.signatures(), 0, "nothing signed for a market that did not validate");
    drop(tcp);
    let _ = market.thread.join();
}

#[test]
fn market_closing_mid_handshake_is_a_clean_error() {
    let pki = Pki::new(4);
    let market = pki.market(true, vec![], Script::CloseMidHandshake, 1);
    let config = pki.config();
    let mut tcp = connect_market(market.addr, TIMEOUT).unwrap();
    let start = Instant::now();
    let err = handshake(&mut tcp, config, localhost()).unwrap_err();
    assert!(matches!(err, HandoverError::Closed | HandoverError::Io(_)), "{err:?}");
    assert!(start.elapsed() < TIMEOUT);
    market.thread.join().unwrap();
}

#[test]
fn silent_market_times_out() {
    let pki = Pki::new(5);
    let market = pki.market(true, vec![], Script::Silent, 1);
    let config = pki.config();
    let mut tcp = connect_market(market.addr, Duration::from_millis(300)).unwrap();
    let err = handshake(&mut tcp, config, localhost()).unwrap_err();
    match err {
        HandoverError::Io(e) => assert!(
            matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            "{e:?}"
        ),
        other => panic!("expected a timeout, got {other:?}"),
    }
    drop(tcp);
    market.thread.join().unwrap();
}

#[test]
fn market_rejecting_the_client_certificate_ends_the_session() {
    // A home card whose certificate the market does not trust: TLS 1.3 rejects it after the
    // client's Finished (the alert reaches the terminal); TLS 1.2 before the server's.
    for tls13 in [true, false] {
        let pki = Pki::new(6);
        let market = pki.market(tls13, vec![], Script::Greet, 1);
        let other = Pki::new(7); // same market roots for the home server, a foreign home card
        let mut roots = pki.roots();
        roots.add(rustls::pki_types::CertificateDer::from(other.ca.der().to_vec())).unwrap();
        let config = MarketConfig::new(roots, other.home_card()).client_config().unwrap();
        let mut tcp = connect_market(market.addr, TIMEOUT).unwrap();
        match handshake(&mut tcp, config, localhost()) {
            Err(e) => {
                assert!(!tls13, "TLS 1.2 fails in the handshake");
                assert!(matches!(e, HandoverError::Tls(rustls::Error::AlertReceived(_))), "{e:?}");
            }
            Ok(mut h) => {
                assert!(tls13, "TLS 1.3 fails after the handover");
                let err = terminal(&mut tcp, &mut h, &[], &[]).unwrap_err();
                assert!(matches!(err, HandoverError::Ended(_)), "{err:?}");
            }
        }
        drop(tcp);
        let _ = market.thread.join();
    }
}

/// The home card, which the test can lock (no PIN, or idle too long): signing then fails.
struct LockableCard {
    inner: Arc<tessera_home::SoftwareKey>,
    locked: std::sync::atomic::AtomicBool,
}

impl LockableCard {
    fn check(&self) -> Result<(), tessera_home::KeyError> {
        if self.locked.load(std::sync::atomic::Ordering::SeqCst) {
            Err(tessera_home::KeyError::Locked)
        } else {
            Ok(())
        }
    }
    fn lock(&self, locked: bool) {
        self.locked.store(locked, std::sync::atomic::Ordering::SeqCst);
    }
}

impl tessera_home::ClientKey for LockableCard {
    fn certificate_chain(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        self.inner.certificate_chain()
    }
    fn sign_tls13(&self, hash: &[u8; 32]) -> Result<Vec<u8>, tessera_home::KeyError> {
        self.check()?;
        self.inner.sign_tls13(hash)
    }
}

impl tessera_home::handover::MarketKey for LockableCard {
    fn sign_tls12(&self, messages: &[u8]) -> Result<Vec<u8>, tessera_home::KeyError> {
        self.check()?;
        self.inner.sign_tls12(messages)
    }
}

#[test]
fn session_cache_resumes_without_the_card_until_expiry() {
    for tls13 in [true, false] {
        let pki = Pki::new(8);
        let market = pki.market(tls13, vec![], Script::Greet, 4);
        let clock = Arc::new(ManualClock::new());
        let cache = Arc::new(SessionCache::new(Duration::from_secs(3600), clock.clone()));
        let software = pki.home_card();
        let card = Arc::new(LockableCard { inner: software.clone(), locked: false.into() });
        // One configuration, kept: rustls resumes only under the configuration that made the session.
        let config = MarketConfig::new(pki.roots(), card.clone())
            .with_cache(cache.clone())
            .client_config()
            .unwrap();
        let session = |config: Arc<rustls::ClientConfig>| -> Result<(bool, Seen), HandoverError> {
            let mut tcp = connect_market(market.addr, TIMEOUT)?;
            let mut h = handshake(&mut tcp, config, localhost())?;
            let resumed = h.resumed;
            let seen = terminal(&mut tcp, &mut h, &[b"GET /"], &[GREETING])?;
            Ok((resumed, seen))
        };

        // 1. Full handshake with the card; its session (TLS 1.2) or tickets (TLS 1.3) cached.
        let (resumed, seen) = session(config.clone()).unwrap();
        assert!(!resumed);
        assert!(contains(&seen.data, b"subject=home card of alice"));
        assert_eq!(software.signatures(), 1);
        assert!(!cache.is_empty(), "tls13={tls13}");

        // 2. Within the lifetime: resumed with the card locked, fresh keys handed over.
        card.lock(true);
        clock.advance(Duration::from_secs(59 * 60));
        let (resumed, seen) = session(config.clone()).unwrap();
        assert!(resumed, "tls13={tls13}");
        assert!(contains(&seen.data, b"subject=home card of alice"));
        assert_eq!(software.signatures(), 1, "no card signature for a resumption");

        // 3. Past the lifetime: the cache offers nothing, so with the card locked the
        //    handshake fails (the card refuses to sign)...
        clock.advance(Duration::from_secs(2 * 60 * 60));
        assert!(cache.is_empty());
        let failed = session(config.clone());
        assert!(failed.is_err(), "tls13={tls13}: an expired entry needs the card again");
        // ... and with the card unlocked it is a full handshake again.
        card.lock(false);
        let (resumed, _) = session(config.clone()).unwrap();
        assert!(!resumed);
        assert_eq!(software.signatures(), 2);
        let log = market.thread.join().unwrap();
        assert_eq!(log.len(), 4, "{log:?}");
    }
}

#[test]
fn terminal_initiated_key_update() {
    // The terminal renews its own sending keys (the home server computes them): it sends a
    // KeyUpdate under the old keys, then its request under the new ones, which the market reads.
    let pki = Pki::new(9);
    let market = pki.market(true, vec![], Script::Greet, 1);
    let config = pki.config();
    let mut tcp = connect_market(market.addr, TIMEOUT).unwrap();
    let mut h = handshake(&mut tcp, config, localhost()).unwrap();
    let mut conn = KeyedConnection::new(&h.keys).unwrap();
    conn.received(&h.pending);
    let renewed = h.session.update_client_write().unwrap();
    assert_ne!(renewed.client_write().key(), h.keys.client_write().key());
    assert_eq!(renewed.server_write(), h.keys.server_write());
    tcp.write_all(&conn.update_own_keys(&renewed).unwrap()).unwrap();
    tcp.write_all(&conn.seal_data(b"under renewed keys").unwrap()).unwrap();
    let mut data = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match conn.next_event().unwrap() {
            Some(Event::Data(d)) => data.extend(d),
            Some(Event::PostHandshake(m)) => {
                h.session.on_handshake_data(&m).unwrap();
            }
            Some(Event::Closed) => break,
            None => {
                let n = tcp.read(&mut buf).unwrap();
                assert!(n > 0);
                conn.received(&buf[..n]);
            }
        }
    }
    assert!(contains(&data, b"subject=home card of alice;round=0"));
    let log = market.thread.join().unwrap().join(";");
    assert!(log.contains("under renewed keys"), "{log}");
}

#[test]
fn malformed_post_handshake_messages_are_refused() {
    for tls13 in [true, false] {
        let pki = Pki::new(10);
        let market = pki.market(tls13, vec![], Script::Greet, 1);
        let config = pki.config();
        let mut tcp = connect_market(market.addr, TIMEOUT).unwrap();
        let mut h = handshake(&mut tcp, config, localhost()).unwrap();
        let s = &mut h.session;
        // A KeyUpdate with a bad body, an unknown message, an absurd length.
        assert!(s.on_handshake_data(&[24, 0, 0, 1, 7]).is_err());
        assert!(s.on_handshake_data(&[24, 0, 0, 2, 0, 0]).is_err());
        assert!(s.on_handshake_data(&[13, 0, 0, 0]).is_err());
        assert!(s.on_handshake_data(&[4, 0xFF, 0xFF, 0xFF]).is_err());
        // A ticket that does not parse (TLS 1.3), or any ticket after TLS 1.2.
        assert!(s.on_new_session_ticket(&[1, 2, 3]).is_err());
        if !tls13 {
            assert!(s.on_key_update(false).is_err(), "no key update in TLS 1.2");
        }
        drop(tcp);
        let _ = market.thread.join();
    }
}
