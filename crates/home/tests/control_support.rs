//! Shared by the control-channel and connect tests (included with `#[path]`): certificates,
//! a home server on an ephemeral port, and an in-process market (rustls, client certificates
//! required, HTTP/1.1 answers that echo the request).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::rng::OsRng;
use tessera_crypto::x509::{self, AltName, Certificate, IssueRequest, Role, Validity};
use tessera_home::SoftwareKey;
use tessera_home::handover::SessionCache;
use tessera_home::registry::Registry;
use tessera_home::server::{
    HomeCard, HomeServer, Identity, ManualClock, Markets, RelayMarkets, Running, SoftwareHomeCard,
    StandardMarkets,
};
use tessera_home::terminal::{ControlConnection, Terminal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, RootCertStore};

/// The home card's PIN2 in every test.
pub const PIN2: &[u8] = b"246810";

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// An issuer CA that makes access-card, home-card and market certificates.
pub struct Ca {
    key: SigningKey,
    /// The CA certificate.
    pub cert: Certificate,
}

impl Ca {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = SigningKey::generate(&mut OsRng);
        let v = Validity { not_before: now() - 3600, not_after: now() + 86400 };
        let cert = x509::self_signed_ca(&key, name, &x509::random_serial(&mut OsRng), v).unwrap();
        Ca { key, cert }
    }

    /// A key and its certificate with `role`.
    pub fn issue(&self, cn: &str, role: Role, alt: &[AltName]) -> (SigningKey, Certificate) {
        let key = SigningKey::generate(&mut OsRng);
        let v = Validity { not_before: now() - 3600, not_after: now() + 86400 };
        let cert = x509::issue_with_alt_names(
            &self.key,
            &self.cert,
            &IssueRequest {
                subject_cn: cn,
                public_key: &key.public_key(),
                roles: &[role],
                serial: &x509::random_serial(&mut OsRng),
                validity: v,
                ca_path_len: None,
            },
            alt,
        )
        .unwrap();
        (key, cert)
    }

    /// A software card key (access card or home card) with its certificate.
    pub fn card_key(&self, cn: &str, role: Role) -> (SoftwareKey, Vec<u8>) {
        let (key, cert) = self.issue(cn, role, &[]);
        let der = cert.der().to_vec();
        (SoftwareKey::new(key, vec![CertificateDer::from(der.clone())]), der)
    }

    /// The CA key, to enrol cards.
    pub fn signer(&self) -> &SigningKey {
        &self.key
    }

    /// A root store holding this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(self.cert.der().to_vec())).unwrap();
        roots
    }
}

/// A small multi-threaded runtime for the servers.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Starts a home server on an ephemeral loopback port.
pub fn start_home(
    rt: &tokio::runtime::Runtime,
    identity: &Identity,
    registry: Arc<Registry>,
    card: Arc<dyn HomeCard>,
    markets: Arc<dyn Markets>,
) -> (Arc<HomeServer>, Running) {
    let tls = identity.server_config(registry.clone()).unwrap();
    let server = HomeServer::new(tls, registry, card, markets);
    let running = rt.block_on(server.clone().spawn("127.0.0.1:0".parse().unwrap())).unwrap();
    (server, running)
}

/// A home server for `card` on an ephemeral port, serving every mode ([`StandardMarkets`]
/// trusting `market_roots`, its own session cache): its identity, registry, server and
/// running handle.
pub fn serve_standard(
    rt: &tokio::runtime::Runtime,
    market_roots: RootCertStore,
    card: Arc<dyn HomeCard>,
) -> (Identity, Arc<Registry>, Arc<HomeServer>, Running) {
    let identity = Identity::generate(now()).unwrap();
    let registry = Arc::new(Registry::in_memory().unwrap());
    let cache = Arc::new(SessionCache::default());
    let markets = Arc::new(StandardMarkets::new(market_roots, card.clone(), cache).unwrap());
    let (server, running) = start_home(rt, &identity, registry.clone(), card, markets);
    (identity, registry, server, running)
}

/// A software access card issued by `issuer` and admitted in `registry`, and a terminal
/// holding it that pins the home server `identity` at `running`.
pub fn admitted_terminal(
    issuer: &Ca,
    registry: &Registry,
    identity: &Identity,
    running: &Running,
) -> (Arc<SoftwareKey>, Vec<u8>, Terminal) {
    let (key, cert) = issuer.card_key("access card", Role::Access);
    let key = Arc::new(key);
    registry.admit(&cert, "phone", now()).unwrap();
    let t = Terminal::new(key.clone(), identity.spki_sha256(), running.addr.to_string()).unwrap();
    (key, cert, t)
}

/// Which market connector the home server of a [`Setup`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connector {
    /// [`RelayMarkets`]: relay mode only.
    Relay,
    /// [`StandardMarkets`]: every mode, with the setup's session cache.
    Standard,
}

/// The common scene: an issuer CA (home and access cards), a market CA, a home server on an
/// ephemeral port with a software home card (its idle limit on a [`ManualClock`]), and
/// terminals whose access cards it admits.
pub struct Setup {
    /// The runtime the servers run on.
    pub rt: tokio::runtime::Runtime,
    /// The issuer CA.
    pub ca: Ca,
    /// The CA of the markets the home server trusts.
    pub market_ca: Ca,
    /// The home server's certificate (pinned by the terminals).
    pub identity: Identity,
    /// The admitted access cards.
    pub registry: Arc<Registry>,
    /// The home card (PIN2 is [`PIN2`]).
    pub card: Arc<SoftwareHomeCard>,
    /// The home card's idle clock.
    pub clock: Arc<ManualClock>,
    /// The session cache ([`Connector::Standard`]).
    pub cache: Arc<SessionCache>,
    /// The home server.
    pub server: Arc<HomeServer>,
    /// The running server (taken to stop it).
    pub running: Option<Running>,
}

impl Default for Setup {
    /// A home server in relay mode with a home card named "home card".
    fn default() -> Self {
        Self::with("home card", Connector::Relay)
    }
}

impl Setup {
    /// A home server running `connector`, its home card's certificate naming `home_card`.
    pub fn with(home_card: &str, connector: Connector) -> Self {
        let rt = runtime();
        let ca = Ca::new("issuer");
        let market_ca = Ca::new("market CA");
        let identity = Identity::generate(now()).unwrap();
        let registry = Arc::new(Registry::in_memory().unwrap());
        let (home_key, _) = ca.card_key(home_card, Role::Home);
        let clock = Arc::new(ManualClock::default());
        let card = Arc::new(SoftwareHomeCard::with_clock(home_key, PIN2, clock.clone()));
        let cache = Arc::new(SessionCache::default());
        let markets: Arc<dyn Markets> = match connector {
            Connector::Relay => {
                Arc::new(RelayMarkets::new(market_ca.roots(), card.clone()).unwrap())
            }
            Connector::Standard => Arc::new(
                StandardMarkets::new(market_ca.roots(), card.clone(), cache.clone()).unwrap(),
            ),
        };
        let (server, running) = start_home(&rt, &identity, registry.clone(), card.clone(), markets);
        Setup {
            rt,
            ca,
            market_ca,
            identity,
            registry,
            card,
            clock,
            cache,
            server,
            running: Some(running),
        }
    }

    /// The home server's address.
    pub fn home(&self) -> String {
        self.running.as_ref().unwrap().addr.to_string()
    }

    /// A market certified by the market CA, requiring client certificates of the issuer.
    pub fn market(&self) -> SocketAddr {
        start_market(&self.rt, &self.market_ca, &self.ca)
    }

    /// An access card, admitted; the terminal pins the home server's certificate.
    pub fn admitted_terminal(&self) -> (Arc<SoftwareKey>, Vec<u8>, Terminal) {
        let running = self.running.as_ref().unwrap();
        admitted_terminal(&self.ca, &self.registry, &self.identity, running)
    }

    /// An admitted terminal's control connection, the home card unlocked with PIN2.
    pub fn unlocked(&self) -> ControlConnection {
        let (_, _, terminal) = self.admitted_terminal();
        let mut c = terminal.connect().unwrap();
        c.pin2(PIN2).unwrap();
        c
    }
}

/// A "market" that reads the ClientHello and closes the connection: its port.
pub fn rude_market() -> u16 {
    let rude = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = rude.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = rude.accept().unwrap();
        let mut b = [0u8; 64];
        let _ = std::io::Read::read(&mut s, &mut b);
    });
    port
}

/// An in-process market: TLS 1.3 and 1.2, client certificates from `client_ca` required;
/// answers every HTTP/1.1 request with `200` and a body naming the method, the path, the
/// client certificate's subject and the request body, then closes.
pub fn start_market(rt: &tokio::runtime::Runtime, server_ca: &Ca, client_ca: &Ca) -> SocketAddr {
    start_market_with(rt, server_ca, client_ca, false)
}

/// [`start_market`], TLS 1.2 only when `tls12_only`.
pub fn start_market_with(
    rt: &tokio::runtime::Runtime,
    server_ca: &Ca,
    client_ca: &Ca,
    tls12_only: bool,
) -> SocketAddr {
    let (key, cert) = server_ca.issue("market", Role::Server, &[AltName::Dns("localhost".into())]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(client_ca.roots()),
        provider.clone(),
    )
    .build()
    .unwrap();
    let versions: &[&rustls::SupportedProtocolVersion] =
        if tls12_only { &[&rustls::version::TLS12] } else { rustls::DEFAULT_VERSIONS };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_pkcs8_der().unwrap().to_vec())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
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
                let mut buf = [0u8; 4096];
                // Read the head, then Content-Length bytes of body.
                let head_end = loop {
                    let Ok(n) = tls.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                    if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&req[..head_end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while req.len() < head_end + len {
                    let Ok(n) = tls.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                let line = head.lines().next().unwrap_or_default().to_string();
                let mut body = format!("{line}\nclient={subject}\n").into_bytes();
                body.extend_from_slice(&req[head_end..head_end + len]);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.write_all(&body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}
