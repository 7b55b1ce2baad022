//! The control channel's TLS: TLS 1.3 only, SHA-256 cipher suites only (the card signs a
//! 32-byte transcript hash), `ring`, mutual authentication.
//!
//! - The terminal's client key is a [`ClientKey`] (the access card), resolved and signed
//!   through `crate::card_cert` (TLS 1.3 only: the card gets the transcript hash only).
//! - The terminal accepts exactly the pinned home-server key ([`PinnedServer`]): the SHA-256
//!   of the certificate's SubjectPublicKeyInfo, as the access card stores it, compared in
//!   constant time; the handshake signature is still checked against that key. No CA, no
//!   name check: the pin is the trust.
//! - The home server accepts only client certificates admitted in its [`Registry`]
//!   ([`AdmittedClients`]); it checks again after every handshake, resumed ones included
//!   (a resumed session carries the certificate of its full handshake), so a revoked card
//!   cannot ride on an old ticket.
//! - The terminal keeps its TLS 1.3 tickets in memory (rustls' default store, in the
//!   [`ClientConfig`] the terminal reuses), so a reconnection is a PSK resumption without a
//!   card signature.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};

use crate::card_cert::{CardCert, CardKey};
use crate::registry::Registry;
use crate::{ClientKey, fingerprint};

/// The control channel's ALPN protocol name.
pub const ALPN: &[u8] = b"tessera-control/1";

/// A control-channel TLS set-up error.
#[derive(Debug, thiserror::Error)]
#[error("control channel TLS: {0}")]
pub struct TlsSetupError(pub String);

/// The crypto provider: `ring`, with only the TLS 1.3 suites whose hash is SHA-256.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = ring::default_provider();
    p.cipher_suites = vec![
        ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

/// The terminal's configuration: client key in `key`, home server pinned to the SHA-256 of
/// its SubjectPublicKeyInfo `pinned_spki` ([`crate::spki_sha256`]). Keep it for the life of
/// the terminal: it holds the resumption tickets.
pub fn client_config(
    key: Arc<dyn ClientKey>,
    pinned_spki: [u8; 32],
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = provider();
    let verifier = PinnedServer { pin: pinned_spki, provider: provider.clone() };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsSetupError(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CardCert(CardKey::Tls13(key))));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A configuration for a TLS 1.3 client of a market server (the e-money flows'
/// HTTPS client): the market's certificate validated against `roots`, the client key in the
/// home card.
pub fn market_client_config(
    key: Arc<dyn ClientKey>,
    roots: Arc<rustls::RootCertStore>,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsSetupError(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(CardCert(CardKey::Tls13(key))));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The home server's configuration: its certificate chain and key, and the registry of
/// admitted access cards.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    registry: Arc<Registry>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = provider();
    let verifier = AdmittedClients { registry, provider: provider.clone() };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsSetupError(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)
        .map_err(|e| TlsSetupError(e.to_string()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Both ends refuse TLS 1.2 (never negotiated: both configurations are TLS 1.3 only).
fn tls12_refused() -> rustls::Error {
    rustls::Error::General("the control channel is TLS 1.3 only".into())
}

/// The peer's TLS 1.3 handshake signature, checked with `provider`'s algorithms.
fn verify_tls13(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// Accepts exactly one server key, by the SHA-256 of its SubjectPublicKeyInfo.
#[derive(Debug)]
pub struct PinnedServer {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let spki = crate::spki_sha256(end_entity).unwrap_or([0; 32]);
        if bool::from(spki.ct_eq(&self.pin)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Accepts only client certificates admitted in the registry.
#[derive(Debug)]
pub struct AdmittedClients {
    registry: Arc<Registry>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AdmittedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.registry.is_admitted(&fingerprint(end_entity)) {
            Ok(true) => Ok(ClientCertVerified::assertion()),
            Ok(false) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            Err(e) => Err(rustls::Error::General(format!("registry: {e}"))),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}
