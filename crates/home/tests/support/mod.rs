//! Shared test fixtures for the handover tests: a test PKI made with tessera's own X.509
//! module, an in-process rustls market server, and an nginx market ([`nginx`]).

#![allow(dead_code, clippy::unwrap_used)] // each test binary uses part of the fixtures

pub mod nginx;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::rng::SeededRng;
use tessera_crypto::x509::{self, AltName, Certificate, IssueRequest, Role, Validity};
use tessera_home::SoftwareKey;
use tessera_home::handover::MarketConfig;
use tessera_home::server::{HomeCard, SoftwareHomeCard};

/// A CA, a market server certificate for `localhost`/`127.0.0.1`, a home card client
/// certificate, and a second CA the market does not know.
pub struct Pki {
    pub ca: Certificate,
    pub ca_key: SigningKey,
    pub market_cert: Certificate,
    pub market_key: SigningKey,
    pub home_cert: Certificate,
    pub home_key: SigningKey,
    pub home_serial: Vec<u8>,
    pub other_ca: Certificate,
    pub other_ca_key: SigningKey,
}

const VALIDITY: Validity = Validity { not_before: 1_600_000_000, not_after: 4_000_000_000 };

impl Pki {
    pub fn new(seed: u8) -> Pki {
        let mut rng = SeededRng::from_seed([seed; 32]);
        let ca_key = SigningKey::generate(&mut rng);
        let ca = x509::self_signed_ca(&ca_key, "tessera test issuer CA", &[1], VALIDITY).unwrap();
        let other_ca_key = SigningKey::generate(&mut rng);
        let other_ca = x509::self_signed_ca(&other_ca_key, "unknown CA", &[2], VALIDITY).unwrap();
        let market_key = SigningKey::generate(&mut rng);
        let market_cert = x509::issue_with_alt_names(
            &ca_key,
            &ca,
            &IssueRequest {
                subject_cn: "market.test",
                public_key: &market_key.public_key(),
                roles: &[Role::Server],
                serial: &[3],
                validity: VALIDITY,
                ca_path_len: None,
            },
            &[AltName::Dns("localhost".into()), AltName::Ip("127.0.0.1".parse().unwrap())],
        )
        .unwrap();
        let home_key = SigningKey::generate(&mut rng);
        let home_serial = vec![0x4A, 0x11, 0x05];
        let home_cert = x509::issue(
            &ca_key,
            &ca,
            &IssueRequest {
                subject_cn: "home card of alice",
                public_key: &home_key.public_key(),
                roles: &[Role::Home],
                serial: &home_serial,
                validity: VALIDITY,
                ca_path_len: None,
            },
        )
        .unwrap();
        Pki {
            ca,
            ca_key,
            market_cert,
            market_key,
            home_cert,
            home_key,
            home_serial,
            other_ca,
            other_ca_key,
        }
    }

    /// A market certificate signed by the CA the home server does not trust.
    pub fn untrusted_market(&self) -> (Certificate, SigningKey) {
        let mut rng = SeededRng::from_seed([0xEE; 32]);
        let key = SigningKey::generate(&mut rng);
        let cert = x509::issue_with_alt_names(
            &self.other_ca_key,
            &self.other_ca,
            &IssueRequest {
                subject_cn: "fake market",
                public_key: &key.public_key(),
                roles: &[Role::Server],
                serial: &[9],
                validity: VALIDITY,
                ca_path_len: None,
            },
            &[AltName::Dns("localhost".into())],
        )
        .unwrap();
        (cert, key)
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(self.ca.der().to_vec())).unwrap();
        roots
    }

    /// The home card as a software key (its certificate only in the chain, as a card holds).
    pub fn home_card(&self) -> Arc<SoftwareKey> {
        let key = SigningKey::from_bytes(&*self.home_key.to_bytes()).unwrap();
        Arc::new(SoftwareKey::new(key, vec![CertificateDer::from(self.home_cert.der().to_vec())]))
    }

    /// A rustls market ([`rustls_market`]) with this PKI's market certificate.
    pub fn market(
        &self,
        tls13: bool,
        suites: Vec<rustls::SupportedCipherSuite>,
        script: Script,
        connections: usize,
    ) -> RustlsMarket {
        let cert = (&self.market_cert, &self.market_key);
        rustls_market(self, cert, tls13, suites, script, connections)
    }

    /// The home server's market configuration: this PKI's roots, its software home card.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        MarketConfig::new(self.roots(), self.home_card()).client_config().unwrap()
    }

    /// The home card as the home server holds it: in software, PIN2 already verified.
    pub fn unlocked_home_card(&self) -> Arc<SoftwareHomeCard> {
        let key = SigningKey::from_bytes(&*self.home_key.to_bytes()).unwrap();
        let chain = vec![CertificateDer::from(self.home_cert.der().to_vec())];
        let card = SoftwareHomeCard::new(SoftwareKey::new(key, chain), b"2468");
        card.verify_pin2(b"2468").unwrap();
        Arc::new(card)
    }

    pub fn key_pem(key: &SigningKey) -> String {
        pem("PRIVATE KEY", &key.to_pkcs8_der().unwrap())
    }
}

pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

pub fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

/// What the in-process rustls market does on each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    /// Writes `GREETING` as soon as it can (before its handshake completes: rustls sends it
    /// with its last flight), then answers one request with the client certificate subject,
    /// then close_notify.
    Greet,
    /// Like `Greet`, but after answering sends a KeyUpdate (update_requested), then answers a
    /// second request under the new keys.
    KeyUpdate,
    /// Closes the TCP connection after reading the ClientHello.
    CloseMidHandshake,
    /// Accepts the TCP connection and never answers.
    Silent,
}

pub const GREETING: &[u8] = b"welcome, first bytes after the market's Finished";

pub struct RustlsMarket {
    pub addr: SocketAddr,
    pub thread: JoinHandle<Vec<String>>,
}

/// A rustls market on an ephemeral loopback port serving `connections` connections with
/// `script`; TLS 1.3 (`tls13`) or TLS 1.2, suites as given (all of the home server's when
/// empty), requiring a client certificate from the CA. The thread returns, per connection,
/// what it saw ("resumed"/"full" and the requests) or the error.
pub fn rustls_market(
    pki: &Pki,
    cert: (&Certificate, &SigningKey),
    tls13: bool,
    suites: Vec<rustls::SupportedCipherSuite>,
    script: Script,
    connections: usize,
) -> RustlsMarket {
    let mut provider = rustls::crypto::ring::default_provider();
    if !suites.is_empty() {
        provider.cipher_suites = suites;
    }
    let provider = Arc::new(provider);
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(pki.roots()), provider.clone())
            .build()
            .unwrap();
    let version: &'static rustls::SupportedProtocolVersion =
        if tls13 { &rustls::version::TLS13 } else { &rustls::version::TLS12 };
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(cert.0.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.1.to_pkcs8_der().unwrap().to_vec())),
        )
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let mut log = Vec::new();
        for _ in 0..connections {
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            log.push(match serve(tcp, config.clone(), script) {
                Ok(s) => s,
                Err(e) => format!("error: {e}"),
            });
        }
        log
    });
    RustlsMarket { addr, thread }
}

fn serve(mut tcp: TcpStream, config: Arc<ServerConfig>, script: Script) -> Result<String, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    match script {
        Script::Silent => {
            let mut buf = [0u8; 4096];
            // Read until the client gives up; never answer.
            while tcp.read(&mut buf).map_err(|x| e(&x))? > 0 {}
            return Ok("silent".into());
        }
        Script::CloseMidHandshake => {
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).map_err(|x| e(&x))?;
            return Ok("closed".into());
        }
        _ => {}
    }
    let mut conn = ServerConnection::new(config).map_err(|x| e(&x))?;
    conn.writer().write_all(GREETING).map_err(|x| e(&x))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|x| e(&x))?;
    }
    let subject = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| tessera_crypto::x509::Certificate::from_der(c.to_vec()).ok())
        .and_then(|c| c.info().ok())
        .map(|i| i.subject_cn)
        .unwrap_or_default();
    let kind = format!("{:?}", conn.handshake_kind());
    let mut log = vec![kind];
    let rounds = if script == Script::KeyUpdate { 2 } else { 1 };
    for round in 0..rounds {
        let request = read_some(&mut conn, &mut tcp)?;
        log.push(String::from_utf8_lossy(&request).into_owned());
        conn.writer()
            .write_all(format!("subject={subject};round={round}").as_bytes())
            .map_err(|x| e(&x))?;
        if script == Script::KeyUpdate && round == 0 {
            conn.refresh_traffic_keys().map_err(|x| e(&x))?;
            conn.writer().write_all(b"after key update").map_err(|x| e(&x))?;
        }
        while conn.wants_write() {
            conn.write_tls(&mut tcp).map_err(|x| e(&x))?;
        }
    }
    conn.send_close_notify();
    while conn.wants_write() {
        conn.write_tls(&mut tcp).map_err(|x| e(&x))?;
    }
    Ok(log.join("|"))
}

fn read_some(conn: &mut ServerConnection, tcp: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; 4096];
    loop {
        match conn.reader().read(&mut buf) {
            Ok(n) if n > 0 => return Ok(buf[..n].to_vec()),
            Ok(_) => return Err("peer closed".into()),
            Err(x) if x.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(x) => return Err(x.to_string()),
        }
        while conn.wants_write() {
            conn.write_tls(tcp).map_err(|x| x.to_string())?;
        }
        if conn.read_tls(tcp).map_err(|x| x.to_string())? == 0 {
            return Err("eof".into());
        }
        conn.process_new_packets().map_err(|x| x.to_string())?;
    }
}
