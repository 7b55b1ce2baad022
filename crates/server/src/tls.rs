//! TLS: the server's certificate (self-signed on first start, or the operator's) and a
//! listener that completes TLS handshakes (rustls with the `ring` provider) before handing
//! connections to axum.
//!
//! On first start the server makes, in `<data>/tls/`, a local CA and a server certificate
//! from it (tessera's server role, which carries `id-kp-serverAuth`), with
//! `tessera_crypto::x509`: `server-chain.pem` (leaf then CA), `server.key.der` (PKCS#8, mode
//! 0600). Clients pin the leaf's SHA-256 fingerprint, printed at every start. The
//! certificate has no subjectAltName yet (the crypto crate's X.509 helpers do not take one),
//! so clients that check host names need the fingerprint pin or an operator certificate
//! (`--tls-cert`, `--tls-key`, PEM).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tessera_crypto::rng::OsRng;
use tessera_crypto::x509::{self, AltName, Role, Validity};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;

use crate::http::limits::ClientAddr;
use crate::primitives::sha256;

/// Longest a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; further connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;
/// Lifetime of the generated certificates (5 years).
const LIFETIME_SECS: i64 = 5 * 365 * 24 * 3600;

/// A TLS setup error.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a certificate or key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A certificate or key is malformed or does not fit.
    #[error("TLS: {0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_path_buf(), source }
}

/// The server's certificate chain and key.
pub struct ServerIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ServerIdentity {
    /// SHA-256 of the leaf certificate, colon-separated hex (what clients pin).
    pub fn fingerprint(&self) -> String {
        let digest = self.chain.first().map(|c| sha256(c)).unwrap_or_default();
        digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
    }

    /// Loads PEM files given by the operator.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| TlsError::Invalid(format!("{}: {e}", cert.display())))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Invalid(format!("{}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(TlsError::Invalid(format!("{}: no certificate", cert.display())));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| TlsError::Invalid(format!("{}: {e}", key.display())))?;
        Ok(ServerIdentity { chain, key })
    }

    /// Loads the generated identity from `dir`, making it first if it is not there (its leaf
    /// then names `alt_names` as subjectAltNames, see [`generated_alt_names`]). An identity
    /// already there is kept as it is, so pinned fingerprints stay valid.
    /// Returns whether it was just made.
    pub fn load_or_create(dir: &Path, alt_names: &[AltName]) -> Result<(Self, bool), TlsError> {
        let chain_path = dir.join("server-chain.pem");
        let key_path = dir.join("server.key.der");
        if chain_path.exists() && key_path.exists() {
            let chain = CertificateDer::pem_file_iter(&chain_path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| TlsError::Invalid(format!("{}: {e}", chain_path.display())))?;
            let key = std::fs::read(&key_path).map_err(io_err(&key_path))?;
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
            return Ok((ServerIdentity { chain, key }, false));
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let now = crate::clock::now();
        let validity = Validity { not_before: now - 3600, not_after: now + LIFETIME_SECS };
        let invalid = |e: tessera_crypto::CryptoError| TlsError::Invalid(e.to_string());
        let x509::LocalIdentity { ca, certificate: leaf, key } = x509::local_identity(
            "tessera server local CA",
            "tessera server",
            &[Role::Server],
            alt_names,
            validity,
            &mut OsRng,
        )
        .map_err(invalid)?;
        let key_der = key.to_pkcs8_der().map_err(invalid)?;
        write_private(&key_path, &key_der)?;
        std::fs::write(&chain_path, format!("{}{}", leaf.to_pem(), ca.to_pem()))
            .map_err(io_err(&chain_path))?;
        let chain = vec![
            CertificateDer::from(leaf.der().to_vec()),
            CertificateDer::from(ca.der().to_vec()),
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec()));
        Ok((ServerIdentity { chain, key }, true))
    }

    /// A rustls server configuration (TLS 1.2 and 1.3, `ring`, HTTP/1.1). The server picks
    /// the cipher suite by its own order, `TLS_AES_128_GCM_SHA256` first (see
    /// docs/decisions.md, "TLS"); every suite of the provider stays available.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let mut provider = rustls::crypto::ring::default_provider();
        let preferred = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.suite();
        provider.cipher_suites.sort_by_key(|s| s.suite() != preferred);
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.ignore_client_order = true;
        // No resumption: terminals connect once per sync, long after any cache would have
        // kept their session (docs/decisions.md, "TLS").
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(Arc::new(config))
    }
}

/// The subjectAltNames a generated certificate gets for a server listening on `listen`:
/// `localhost`, `127.0.0.1` and `::1` always, and the listening address itself when it is a
/// specific one (not `0.0.0.0` / `::`).
pub fn generated_alt_names(listen: SocketAddr) -> Vec<AltName> {
    let mut names = vec![
        AltName::Dns("localhost".into()),
        AltName::Ip(std::net::Ipv4Addr::LOCALHOST.into()),
        AltName::Ip(std::net::Ipv6Addr::LOCALHOST.into()),
    ];
    let ip = AltName::Ip(listen.ip());
    if !listen.ip().is_unspecified() && !names.contains(&ip) {
        names.push(ip);
    }
    names
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(io_err(path))
}

/// A listener that accepts TCP connections and yields them once their TLS handshake is
/// done. Handshakes run in their own tasks (at most 256 at once, each at most
/// 10 s), so a slow client never blocks others.
pub struct TlsListener {
    local: SocketAddr,
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Starts accepting on `tcp`.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else { break };
                let (stream, addr) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, conn_tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = conn_tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    break;
                }
            }
        });
        Ok(TlsListener { local, rx })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task only ends when this listener is dropped; wait forever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// A rustls client configuration that accepts exactly the server certificate whose SHA-256
/// fingerprint is `fingerprint` (hex, colons optional), for clients of a server with a
/// self-signed certificate (`tessera sync`, tests). The handshake signature is still checked
/// against that certificate's key.
pub fn pinned_client_config(fingerprint: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let hex_digits: String = fingerprint.chars().filter(|c| *c != ':').collect();
    let pin: [u8; 32] = hex::decode(&hex_digits)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| TlsError::Invalid("fingerprint: expected 32 bytes of hex".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinnedCert { pin, provider: provider.clone() };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct PinnedCert {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use subtle::ConstantTimeEq;
        if bool::from(sha256(end_entity).ct_eq(&self.pin)) {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "server certificate does not match the pinned fingerprint".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The server chooses `TLS_AES_128_GCM_SHA256` although the client (rustls, as `tessera
    /// sync` is) lists AES-256 first.
    #[test]
    fn the_server_picks_its_preferred_suite() {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let (identity, _) =
            ServerIdentity::load_or_create(dir.path(), &generated_alt_names(listen)).unwrap();
        let client_config = pinned_client_config(&identity.fingerprint()).unwrap();
        let first = client_config.crypto_provider().cipher_suites[0].suite();
        assert_eq!(first, rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(client_config, name).unwrap();
        let mut server = rustls::ServerConnection::new(identity.server_config().unwrap()).unwrap();
        while client.is_handshaking() || server.is_handshaking() {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            buf.clear();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        let suite = client.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    }
}
