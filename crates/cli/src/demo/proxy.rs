//! Chapter: the authentication proxy (seed 004, issue 8), all in this process. A local CA
//! enrols a home card and an access card (in-memory `home` and `access` applets); a home
//! server holds the home card and admits the access card; a market (an in-process rustls
//! server that requires a client certificate from the CA, standing in for nginx) answers
//! HTTPS. The terminal opens the control channel with the access card, sends PIN2, and fetches
//! a page in handover mode (it speaks the TLS records itself with the handed-over keys), from
//! the session cache, in relay mode and in partial mode; then "end", and a revoked card.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_card::applets::isd;
use tessera_card::pin::PinBlock;
use tessera_card::{Card, CardOptions};
use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::rng::OsRng;
use tessera_crypto::scp03::StaticKeys;
use tessera_crypto::x509::{self, AltName, Certificate, IssueRequest, Role, Validity};
use tessera_home::registry::Registry;
use tessera_home::server::{CardHome, HomeServer, Identity, StandardMarkets};
use tessera_home::terminal::http::{self, Request};
use tessera_home::terminal::{
    CardAccess, ControlConnection, OpenedSession, PartialStream, Terminal, TerminalError,
};
use tessera_home::{fingerprint, fingerprint_hex};
use tessera_host::access::AccessCard;
use tessera_host::home::{HomeCard, personalize_card_id};
use tessera_host::{CardChannel, InProcessChannel};
use tessera_proto::access::HomeServer as PinnedHome;
use tessera_proto::control::Mode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, RootCertStore};

use super::{Chapter, Narrator};
use crate::error::{CliError, Exit};

/// The chapter.
pub const CHAPTER: Chapter =
    Chapter { name: "proxy", title: "authentication proxy: home server and key handover", run };

fn fail(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::new(Exit::Other, format!("proxy demo: {what}: {e}"))
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0)
}

fn pin(v: &[u8]) -> Result<PinBlock, CliError> {
    PinBlock::from_value(v).map_err(|sw| fail("PIN", sw))
}

fn blank(id: &[u8]) -> Result<Box<dyn CardChannel + Send>, CliError> {
    let mut channel = InProcessChannel::new(Card::in_memory(CardOptions::default()));
    personalize_card_id(&mut channel, &StaticKeys::gp_test_keys(isd::INITIAL_KVN), id)
        .map_err(|e| fail("card id", e))?;
    Ok(Box::new(channel))
}

/// The demo's issuer CA (key and certificate, valid for a day).
pub(crate) fn demo_ca() -> Result<(SigningKey, Certificate), CliError> {
    let ca_key = SigningKey::generate(&mut OsRng);
    let validity = Validity { not_before: now() - 3600, not_after: now() + 86_400 };
    let ca =
        x509::self_signed_ca(&ca_key, "demo issuer CA", &x509::random_serial(&mut OsRng), validity)
            .map_err(|e| fail("CA", e))?;
    Ok((ca_key, ca))
}

/// A home card enrolled by `ca` (card id HOME-DEMO, TLS key for "alice", wallet in EUR; PIN1
/// 1111, PIN2 2468), left in the enabled state for the caller's last personalisation.
pub(crate) fn enrolled_home_card(
    ca_key: &SigningKey,
    ca: &Certificate,
) -> Result<HomeCard<Box<dyn CardChannel + Send>>, CliError> {
    let mut home = HomeCard::new(blank(b"HOME-DEMO")?);
    let hc = |e| fail("home card", e);
    home.select().map_err(hc)?;
    home.set_pins(&pin(b"1111")?, &pin(b"2468")?, &pin(b"99999999")?).map_err(hc)?;
    home.verify_pin1(&pin(b"1111")?).map_err(hc)?;
    home.verify_pin2(&pin(b"2468")?).map_err(hc)?;
    home.enrol(ca_key, ca, b"HOME-DEMO", "alice", *b"EUR").map_err(hc)?;
    Ok(home)
}

/// An access card enrolled by `ca` (card id ACCESS-DEMO, "alice's phone", PIN 4321, verified)
/// and its certificate.
pub(crate) fn enrolled_access_card(
    ca_key: &SigningKey,
    ca: &Certificate,
) -> Result<(AccessCard<Box<dyn CardChannel + Send>>, Certificate), CliError> {
    let mut access = AccessCard::new(blank(b"ACCESS-DEMO")?);
    let ac = |e| fail("access card", e);
    access.select().map_err(ac)?;
    access.set_pins(&pin(b"4321")?, &pin(b"87654321")?).map_err(ac)?;
    access.verify_pin(&pin(b"4321")?).map_err(ac)?;
    let cert = access.enrol(ca_key, ca, b"ACCESS-DEMO", "alice's phone").map_err(ac)?;
    Ok((access, cert))
}

/// The market: TLS 1.3/1.2, client certificate from `ca` required; answers one HTTP request
/// per connection naming the client certificate's subject.
pub(crate) fn start_market(
    rt: &tokio::runtime::Runtime,
    ca_key: &SigningKey,
    ca: &Certificate,
) -> Result<u16, CliError> {
    let key = SigningKey::generate(&mut OsRng);
    let validity = Validity { not_before: now() - 3600, not_after: now() + 86_400 };
    let cert = x509::issue_with_alt_names(
        ca_key,
        ca,
        &IssueRequest {
            subject_cn: "market.localhost",
            public_key: &key.public_key(),
            roles: &[Role::Server],
            serial: &x509::random_serial(&mut OsRng),
            validity,
            ca_path_len: None,
        },
        &[AltName::Dns("localhost".into())],
    )
    .map_err(|e| fail("market certificate", e))?;
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der().to_vec())).map_err(|e| fail("roots", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| fail("market verifier", e))?;
    let key_der = key.to_pkcs8_der().map_err(|e| fail("market key", e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("market TLS", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec())),
        )
        .map_err(|e| fail("market TLS", e))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| fail("market listen", e))?;
    let port = listener.local_addr().map_err(|e| fail("market listen", e))?.port();
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(Ok(mut tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                else {
                    return;
                };
                let subject = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| Certificate::from_der(c.to_vec()).ok())
                    .and_then(|c| c.info().ok())
                    .map(|i| i.subject_cn)
                    .unwrap_or_default();
                let mut req = Vec::new();
                let mut buf = [0u8; 2048];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line =
                    String::from_utf8_lossy(&req).lines().next().unwrap_or_default().to_string();
                let body = format!("hello {subject}, you asked for {line}\n");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Ok(port)
}

fn get(target: &str) -> Request {
    Request {
        method: "GET".into(),
        host: "localhost".into(),
        target: target.into(),
        headers: vec![],
        body: vec![],
    }
}

fn term(what: &str) -> impl Fn(TerminalError) -> CliError + '_ {
    move |e| fail(what, e)
}

fn handover(
    n: &mut Narrator,
    c: &mut ControlConnection,
    port: u16,
    cache: bool,
    target: &str,
) -> Result<(), CliError> {
    let (session, opened) =
        c.open("localhost", port, Mode::Handover, cache).map_err(term("open market"))?;
    let OpenedSession::HandedOver(keys) = opened else {
        return Err(fail("handover", "no keys"));
    };
    n.say(&format!(
        "HandedOver (session {session}): {:?} {:?}; the terminal's next record numbers: send {}, receive {}. Keys redacted.",
        keys.version(),
        keys.suite(),
        keys.client_write().seq(),
        keys.server_write().seq()
    ));
    let mut stream = c.handover_stream(session, &keys).map_err(term("records"))?;
    let r = http::exchange(&mut stream, &get(target)).map_err(|e| fail("HTTP", e))?;
    n.say(&format!(
        "The terminal sealed the request and opened the answer itself: {} {}\n  {}",
        r.status,
        r.reason,
        String::from_utf8_lossy(&r.body).trim_end()
    ));
    c.end_session(session).map_err(term("end session"))
}

fn run(n: &mut Narrator) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail("runtime", e))?;
    let (ca_key, ca) = demo_ca()?;
    n.say("An issuer CA enrols two cards. The home card (home applet) gets the user's TLS key, generated on the card; its certificate names \"alice\". PIN1 1111, PIN2 2468.");
    let mut home = enrolled_home_card(&ca_key, &ca)?;
    let hc = |e| fail("home card", e);
    home.end().map_err(hc)?;
    n.say("The home server verified PIN1 at start: the home card is in the remote-access wait state (Fig. 6) and signs nothing until PIN2 arrives over the control channel.");
    let home = Arc::new(CardHome::new(home).map_err(hc)?);

    let (mut access, access_cert) = enrolled_access_card(&ca_key, &ca)?;
    let ac = |e| fail("access card", e);

    let identity = Identity::generate(now()).map_err(|e| fail("identity", e))?;
    let registry = Arc::new(Registry::in_memory().map_err(|e| fail("registry", e))?);
    let port = start_market(&rt, &ca_key, &ca)?;
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der().to_vec())).map_err(|e| fail("roots", e))?;
    let cache = Arc::new(tessera_home::handover::SessionCache::default());
    let markets = Arc::new(
        StandardMarkets::new(roots.clone(), home.clone(), cache.clone())
            .map_err(|e| fail("markets", e))?,
    );
    let tls = identity.server_config(registry.clone()).map_err(|e| fail("control TLS", e))?;
    let server = HomeServer::new(tls, registry.clone(), home, markets);
    let running = rt
        .block_on(server.spawn("127.0.0.1:0".parse().map_err(|e| fail("address", e))?))
        .map_err(|e| fail("listen", e))?;
    access
        .set_home_server(&PinnedHome {
            spki_sha256: identity.spki_sha256(),
            address: running.addr.to_string(),
        })
        .map_err(ac)?;
    let fp =
        registry.admit(access_cert.der(), "alice's phone", now()).map_err(|e| fail("admit", e))?;
    n.say(&format!(
        "The access card pins the home server's key ({}…) and address {}; the home server admits the access card (tessera home admit): {}…",
        &hex::encode(identity.spki_sha256())[..16],
        running.addr,
        &fingerprint_hex(&fp)[..23]
    ));

    let access = Arc::new(CardAccess::new(access).map_err(ac)?);
    let terminal = Terminal::new(access.clone(), identity.spki_sha256(), running.addr.to_string())
        .map_err(term("terminal"))?;
    let mut c = terminal.connect().map_err(term("control channel"))?;
    n.say(&format!(
        "Control channel: TLS 1.3, the access card signed the CertificateVerify (only the transcript hash went to the card), the home server's key matched the pin. Resumed: {}.",
        c.resumed()
    ));
    match c.open("localhost", port, Mode::Handover, false) {
        Err(e) => n.say(&format!("Before PIN2 the home server refuses market sessions: {e}")),
        Ok(_) => return Err(fail("locked card", "a session opened before PIN2")),
    }
    c.pin2(b"2468").map_err(term("PIN2"))?;
    n.say("Pin2 → Unlocked: PIN2 went through the control channel to the home card (claim 3), now in the encryption-enabled state.");

    n.say("Handover mode: the home server ran the TLS handshake with the market (the home card signed), extracted the keys and now only relays TCP bytes.");
    handover(n, &mut c, port, true, "/orders")?;
    n.say(&format!(
        "The market's session ticket came back through the terminal (PostHandshake) and is cached by the home server: {} session(s).",
        cache.len()
    ));
    handover(n, &mut c, port, true, "/orders/2")?;
    n.say("That second session resumed from the cache (Fig. 16): no home-card signature.");

    let (session, _) = c.open("localhost", port, Mode::Relay, false).map_err(term("relay"))?;
    let r = http::exchange(&mut c.relay_stream(session), &get("/relay"))
        .map_err(|e| fail("HTTP", e))?;
    n.say(&format!(
        "Relay mode (¶0048): the home server re-encrypts; plaintext in Data frames: {}",
        String::from_utf8_lossy(&r.body).trim_end()
    ));
    c.end_session(session).map_err(term("end session"))?;

    let shared = Arc::new(Mutex::new(c));
    let mut stream =
        PartialStream::open(shared.clone(), "localhost", port, roots).map_err(term("partial"))?;
    let r = http::exchange(&mut stream, &get("/partial")).map_err(|e| fail("HTTP", e))?;
    let session = stream.session();
    drop(stream);
    n.say(&format!(
        "Partial mode (¶0089): the terminal shook hands itself; only the CertificateVerify's transcript hash went to the home card (SignRequest): {}",
        String::from_utf8_lossy(&r.body).trim_end()
    ));
    let mut c = match Arc::try_unwrap(shared) {
        Ok(m) => m.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner),
        Err(_) => return Err(fail("partial", "connection still shared")),
    };
    c.end_session(session).map_err(term("end session"))?;

    c.end().map_err(term("end"))?;
    match c.open("localhost", port, Mode::Handover, false) {
        Err(e) => n.say(&format!("\"End\": the home card is back in the wait state: {e}")),
        Ok(_) => return Err(fail("end", "a session opened after end")),
    }
    drop(c);
    let c = terminal.connect().map_err(term("reconnect"))?;
    n.say(&format!(
        "Reconnecting: resumed = {} (TLS 1.3 ticket kept in memory; the access card did not sign again).",
        c.resumed()
    ));
    drop(c);
    registry.revoke(&fingerprint(access_cert.der()), now()).map_err(|e| fail("revoke", e))?;
    match terminal.connect().and_then(|mut c| c.pin2(b"2468")) {
        Err(e) => n.say(&format!(
            "After tessera home revoke, the access card is refused even with its ticket: {e}"
        )),
        Ok(()) => return Err(fail("revoke", "a revoked card was admitted")),
    }
    rt.block_on(running.stop());
    Ok(())
}
