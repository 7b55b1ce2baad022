#![allow(clippy::unwrap_used)] // tests may unwrap

//! The key handover against a real, unmodified market server: nginx with
//! `ssl_verify_client on`, TLS 1.3 and TLS 1.2 instances, compared with `curl --cert` using
//! the same client certificate. With `CI=true` a missing nginx fails.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use support::nginx::{self, Nginx};
use support::{Pki, localhost};
use tessera_home::handover::{
    Event, Handover, HandoverError, KeyedConnection, MarketConfig, PostHandshake, SessionCache,
    connect_market, handshake,
};
use tessera_proto::proxy::TlsVersion;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The terminal's side: one HTTP/1.1 request with the handed-over keys, read to close_notify.
/// Returns the response and the number of session tickets handed to the home server.
fn fetch(
    tcp: &mut TcpStream,
    h: &mut Handover,
    path: &str,
) -> Result<(String, usize), HandoverError> {
    let mut conn = KeyedConnection::new(&h.keys)?;
    conn.received(&h.pending);
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(&conn.seal_data(request.as_bytes())?)?;
    let mut body = Vec::new();
    let mut tickets = 0;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match conn.next_event()? {
            Some(Event::Data(d)) => body.extend(d),
            Some(Event::PostHandshake(m)) => {
                for c in h.session.on_handshake_data(&m)? {
                    if c == PostHandshake::SessionTicket {
                        tickets += 1;
                    }
                }
            }
            Some(Event::Closed) => break,
            None => {
                let n = tcp.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                conn.received(&buf[..n]);
            }
        }
    }
    Ok((String::from_utf8_lossy(&body).into_owned(), tickets))
}

fn body(response: &str) -> &str {
    response.split("\r\n\r\n").nth(1).unwrap_or("")
}

fn curl(pki: &Pki, nginx: &Nginx) -> String {
    std::fs::write(nginx.path("home.pem"), pki.home_cert.to_pem()).unwrap();
    std::fs::write(nginx.path("home.key"), Pki::key_pem(&pki.home_key)).unwrap();
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .arg("--cacert")
        .arg(nginx.path("ca.pem"))
        .arg("--cert")
        .arg(nginx.path("home.pem"))
        .arg("--key")
        .arg(nginx.path("home.key"))
        .arg(format!("https://localhost:{}/whoami", nginx.addr.port()))
        .output()
        .unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn nginx_session(tls13: bool) {
    if !nginx::available() {
        return;
    }
    let pki = Pki::new(21);
    let nginx = Nginx::start(&pki, tls13);
    let cache = Arc::new(SessionCache::default());
    let card = pki.home_card();
    let config = MarketConfig::new(pki.roots(), card.clone())
        .with_cache(cache.clone())
        .client_config()
        .unwrap();

    // A full handshake: the home card signs, the terminal talks to nginx with the keys.
    let mut tcp = connect_market(nginx.addr, TIMEOUT).unwrap();
    let mut h = handshake(&mut tcp, config.clone(), localhost()).unwrap();
    assert_eq!(h.keys.version(), if tls13 { TlsVersion::Tls13 } else { TlsVersion::Tls12 });
    assert!(!h.resumed);
    let (response, tickets) = fetch(&mut tcp, &mut h, "/whoami").unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let proxied = body(&response).to_owned();
    assert!(proxied.contains("subject=CN=home card of alice"), "{proxied}");
    assert!(proxied.contains("serial=4A1105"), "{proxied}");
    assert!(proxied.contains("verify=SUCCESS"), "{proxied}");
    assert!(proxied.contains(if tls13 { "protocol=TLSv1.3" } else { "protocol=TLSv1.2" }));
    assert_eq!(card.signatures(), 1);
    if tls13 {
        assert!(tickets >= 1, "nginx's tickets reached the home server");
    }

    // curl with the same certificate sees the same identity.
    let control = curl(&pki, &nginx);
    let strip =
        |s: &str| s.replace("reused=r", "reused=.").replace("protocol=TLSv1.2", "protocol=TLSv1.3");
    assert_eq!(
        strip(&proxied).split(" protocol").next(),
        strip(&control).split(" protocol").next(),
        "proxied {proxied:?} vs curl {control:?}"
    );

    // From the session cache: no card signature, nginx reports a reused session.
    let mut tcp = connect_market(nginx.addr, TIMEOUT).unwrap();
    let mut h = handshake(&mut tcp, config.clone(), localhost()).unwrap();
    assert!(h.resumed);
    let (response, _) = fetch(&mut tcp, &mut h, "/whoami").unwrap();
    assert!(body(&response).contains("reused=r"), "{}", response);
    assert!(body(&response).contains("subject=CN=home card of alice"), "{}", response);
    assert_eq!(card.signatures(), 1, "resumed without the home card");
}

#[test]
fn nginx_tls13_handover_and_resumption() {
    nginx_session(true);
}

#[test]
fn nginx_tls12_handover_and_resumption() {
    nginx_session(false);
}

#[test]
fn nginx_refuses_an_untrusted_home_card() {
    if !nginx::available() {
        return;
    }
    let pki = Pki::new(22);
    let nginx = Nginx::start(&pki, false);
    let stranger = Pki::new(23);
    let mut roots = pki.roots();
    roots.add(rustls::pki_types::CertificateDer::from(stranger.ca.der().to_vec())).unwrap();
    let config = MarketConfig::new(roots, stranger.home_card()).client_config().unwrap();
    let mut tcp = connect_market(nginx.addr, TIMEOUT).unwrap();
    // nginx finishes the handshake whatever the client certificate, then refuses every request
    // of a client whose certificate did not verify: the terminal reads a 400, nothing hangs.
    let mut h = handshake(&mut tcp, config, localhost()).unwrap();
    let (response, _) = fetch(&mut tcp, &mut h, "/whoami").unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("SSL certificate error"), "{response}");
    assert!(!response.contains("subject="), "{response}");
}
