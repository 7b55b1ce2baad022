//! The control channel: mutual TLS 1.3 with the access card's key and the pinned home-server
//! certificate, registered cards only, resumption, PIN2 relay and the home card's states.

#![allow(clippy::unwrap_used)]

#[path = "control_support.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use tessera_crypto::x509::Role;
use tessera_home::registry::Registry;
use tessera_home::server::IDLE_LIMIT;
use tessera_home::terminal::{Terminal, TerminalError};
use tessera_home::{ClientKey, SoftwareKey, fingerprint};
use tessera_proto::control::{ErrorCode, Mode};
use tokio_rustls::rustls;

#[test]
fn admitted_card_unlocks_the_home_card_and_resumes_without_signing() {
    let s = Setup::default();
    let (key, _, terminal) = s.admitted_terminal();
    let mut c = terminal.connect().unwrap();
    assert!(!c.resumed());
    c.pin2(PIN2).unwrap();
    assert!(s.card.enabled());
    assert_eq!(key.signatures(), 1, "the access card signs the full handshake");
    drop(c);
    // The connection closing puts the home card back in the wait state.
    std::thread::sleep(Duration::from_millis(200));
    assert!(!s.card.enabled());

    let mut c = terminal.connect().unwrap();
    assert!(c.resumed(), "the second connection resumes");
    c.pin2(PIN2).unwrap();
    assert_eq!(key.signatures(), 1, "a resumed connection needs no card signature");
}

#[test]
fn card_not_admitted_is_refused() {
    let s = Setup::default();
    let (key, _) = s.ca.card_key("stranger", Role::Access);
    let t = Terminal::new(Arc::new(key), s.identity.spki_sha256(), s.home()).unwrap();
    // The verdict arrives after the client's Finished (TLS 1.3): at the latest on the first
    // request.
    let err = t.connect().and_then(|mut c| c.pin2(PIN2)).unwrap_err();
    assert!(
        matches!(err, TerminalError::Tls(rustls::Error::AlertReceived(_)) | TerminalError::Closed),
        "{err:?}"
    );
    assert!(!s.card.enabled());
}

#[test]
fn revoked_card_is_refused_even_with_a_resumption_ticket() {
    let s = Setup::default();
    let (_, cert, terminal) = s.admitted_terminal();
    let mut c = terminal.connect().unwrap();
    c.pin2(PIN2).unwrap();
    drop(c);
    s.registry.revoke(&fingerprint(&cert), now()).unwrap();
    let entries = s.registry.list().unwrap();
    assert_eq!(entries.len(), 1);
    assert!(entries[0].revoked_at.is_some());
    let err = terminal.connect().and_then(|mut c| c.pin2(PIN2)).unwrap_err();
    assert!(matches!(err, TerminalError::Closed | TerminalError::Tls(_)), "{err:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(!s.card.enabled());
    // A fresh terminal (no ticket) is refused in the handshake.
    let (key, _) = (
        Arc::new(SoftwareKey::new(
            tessera_crypto::ecdsa::SigningKey::generate(&mut tessera_crypto::rng::OsRng),
            vec![cert.clone().into()],
        )),
        (),
    );
    let t2 = Terminal::new(key, s.identity.spki_sha256(), s.home()).unwrap();
    assert!(t2.connect().and_then(|mut c| c.pin2(PIN2)).is_err());
}

#[test]
fn wrong_or_unpinned_home_certificate_is_refused() {
    let s = Setup::default();
    let (key, cert) = s.ca.card_key("access card", Role::Access);
    s.registry.admit(&cert, "phone", now()).unwrap();
    let other = tessera_home::server::Identity::generate(now()).unwrap();
    let t = Terminal::new(Arc::new(key), other.spki_sha256(), s.home()).unwrap();
    let err = t.connect().err().expect("a home server with another certificate is refused");
    assert!(
        matches!(
            err,
            TerminalError::Tls(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure
            ))
        ),
        "{err:?}"
    );
}

#[test]
fn pin2_wrong_three_times_blocks_the_home_card() {
    let s = Setup::default();
    let (_, _, terminal) = s.admitted_terminal();
    let mut c = terminal.connect().unwrap();
    let refused = |r: Result<(), TerminalError>| match r {
        Err(TerminalError::Refused { code, .. }) => code,
        other => panic!("{other:?}"),
    };
    assert_eq!(refused(c.pin2(b"000000")), ErrorCode::Pin2Wrong(2));
    assert_eq!(refused(c.pin2(b"111111")), ErrorCode::Pin2Wrong(1));
    assert_eq!(refused(c.pin2(b"222222")), ErrorCode::Blocked);
    assert_eq!(refused(c.pin2(PIN2)), ErrorCode::Blocked, "blocked even for the right PIN");
    assert!(!s.card.enabled());
    // The connection still works for other requests, which the locked card refuses.
    let err = c.open("localhost", 1, Mode::Relay, false).unwrap_err();
    assert!(matches!(err, TerminalError::Refused { code: ErrorCode::Locked, .. }), "{err:?}");
}

#[test]
fn market_sessions_need_pin2_and_lock_on_end_and_after_ten_idle_minutes() {
    let s = Setup::default();
    let (_, _, terminal) = s.admitted_terminal();
    let mut c = terminal.connect().unwrap();
    let locked = |c: &mut tessera_home::terminal::ControlConnection| {
        matches!(
            c.open("localhost", 9, Mode::Relay, false),
            Err(TerminalError::Refused { code: ErrorCode::Locked, .. })
        )
    };
    assert!(locked(&mut c), "no PIN2 yet");
    // A home card in the wait state refuses to sign, whoever asks.
    assert_eq!(s.card.sign_tls13(&[0; 32]), Err(tessera_home::KeyError::Locked));

    c.pin2(PIN2).unwrap();
    c.end().unwrap();
    assert!(locked(&mut c), "after the user's end");
    assert!(!s.card.enabled());

    c.pin2(PIN2).unwrap();
    s.clock.advance(IDLE_LIMIT - Duration::from_secs(1));
    assert!(!s.server.check_idle());
    assert!(s.card.enabled());
    s.clock.advance(Duration::from_secs(1));
    assert!(locked(&mut c), "after ten minutes without use");
    assert!(!s.card.enabled());
}

#[test]
fn home_server_stopped_mid_session_is_reported_without_hanging() {
    let mut s = Setup::default();
    let (_, _, terminal) = s.admitted_terminal();
    let mut c = terminal.connect().unwrap();
    c.pin2(PIN2).unwrap();
    let running = s.running.take().unwrap();
    s.rt.block_on(running.stop());
    let started = std::time::Instant::now();
    let err = c.pin2(PIN2).unwrap_err();
    assert!(matches!(err, TerminalError::Closed | TerminalError::Io(_)), "{err:?}");
    // Reported by the closed connection, not by a timeout.
    assert!(started.elapsed() < tessera_home::terminal::IO_TIMEOUT);
    assert!(!s.card.enabled());
    assert!(terminal.connect().is_err(), "nothing listens any more");
}

#[test]
fn registry_persists_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let ca = Ca::new("issuer");
    let (_, cert) = ca.card_key("card", Role::Access);
    let fp = {
        let r = Registry::open(&path).unwrap();
        assert!(r.admit(&cert, "", 1).is_err(), "empty label");
        assert!(r.admit(b"not a certificate", "x", 1).is_err());
        assert!(r.list().unwrap().is_empty(), "refused input changes nothing");
        r.admit(&cert, "tablet", 10).unwrap()
    };
    let r = Registry::open(&path).unwrap();
    assert!(r.is_admitted(&fp).unwrap());
    r.revoke(&fp, 20).unwrap();
    assert!(!r.is_admitted(&fp).unwrap());
    assert!(r.revoke(&fp, 21).is_err(), "already revoked");
    assert!(r.revoke(&[0; 32], 21).is_err(), "unknown");
    r.admit(&cert, "tablet again", 30).unwrap();
    let e = r.list().unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].label.as_str(), e[0].admitted_at, e[0].revoked_at),
        ("tablet again", 30, None)
    );
}

#[test]
fn malformed_frames_end_the_connection_with_a_protocol_error() {
    use std::io::Write;
    let s = Setup::default();
    let (key, cert) = s.ca.card_key("access card", Role::Access);
    s.registry.admit(&cert, "phone", now()).unwrap();
    let config =
        tessera_home::control::tls::client_config(Arc::new(key), s.identity.spki_sha256()).unwrap();
    for garbage in [&[0u8, 0, 0, 1, 0x7F][..], &[0, 0, 0, 2, 0x09, 0], &[0xFF, 0, 0, 0]] {
        let tcp = std::net::TcpStream::connect(s.home()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let conn =
            rustls::ClientConnection::new(config.clone(), "localhost".try_into().unwrap()).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(garbage).unwrap();
        match tessera_home::control::read_frame_sync(&mut tls).unwrap() {
            Some(tessera_proto::control::Frame::Error { session: 0, code, .. }) => {
                assert_eq!(code, ErrorCode::Protocol)
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(tessera_home::control::read_frame_sync(&mut tls), Ok(None) | Err(_)));
    }
    assert!(!s.card.enabled());
}

#[test]
fn data_for_a_session_that_is_not_open_is_refused_and_the_connection_goes_on() {
    let s = Setup::default();
    let (_, _, terminal) = s.admitted_terminal();
    let mut c = terminal.connect().unwrap();
    c.pin2(PIN2).unwrap();
    c.send_data(77, b"stray bytes").unwrap();
    match c.recv(77) {
        Err(TerminalError::Refused { code: ErrorCode::UnknownSession, .. }) => {}
        other => panic!("{other:?}"),
    }
    c.post_handshake(78, &[4, 0, 0, 0]).unwrap();
    match c.recv(78) {
        Err(TerminalError::Refused { code: ErrorCode::UnknownSession, .. }) => {}
        other => panic!("{other:?}"),
    }
    // Ending a session that is not open is harmless; the connection still answers.
    c.end_session(79).unwrap();
    c.pin2(PIN2).unwrap();
    assert!(s.card.enabled());
}
