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
use tessera_home::registry::Registry;
use tessera_home::server::{HomeCard, HomeServer, Identity, Markets, Running};
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
