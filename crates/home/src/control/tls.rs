//! The control channel's TLS: TLS 1.3 only, SHA-256 cipher suites only (the card signs a
//! 32-byte transcript hash), `ring`, mutual authentication.
//!
//! - The terminal's client key is a [`ClientKey`] (the access card): [`CardClientCert`]
//!   resolves it, and its signer hands the card only the transcript hash it extracts from the
//!   CertificateVerify content rustls asks it to sign.
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
use tessera_crypto::tls::certificate_verify::{TLS13_CLIENT_CONTEXT, TLS13_CONTENT_LEN};
use tokio_rustls::rustls::client::ResolvesClientCert;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::sign::{CertifiedKey, Signer, SigningKey};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureAlgorithm,
    SignatureScheme,
};

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
        .with_client_cert_resolver(Arc::new(CardClientCert { key }));
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
        .with_client_cert_resolver(Arc::new(CardClientCert { key }));
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
        Err(rustls::Error::General("the control channel is TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
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
        Err(rustls::Error::General("the control channel is TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}

/// Resolves the terminal's client certificate to the card key.
pub struct CardClientCert {
    key: Arc<dyn ClientKey>,
}

impl std::fmt::Debug for CardClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CardClientCert")
    }
}

impl ResolvesClientCert for CardClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        if !sigschemes.contains(&SignatureScheme::ECDSA_NISTP256_SHA256) {
            return None;
        }
        let signing = CardSigningKey { key: self.key.clone() };
        Some(Arc::new(CertifiedKey::new(self.key.certificate_chain(), Arc::new(signing))))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The card key as a rustls signing key (`ecdsa_secp256r1_sha256` only).
struct CardSigningKey {
    key: Arc<dyn ClientKey>,
}

impl std::fmt::Debug for CardSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CardSigningKey")
    }
}

impl SigningKey for CardSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(CardSigner { key: self.key.clone() }) as Box<dyn Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

struct CardSigner {
    key: Arc<dyn ClientKey>,
}

impl std::fmt::Debug for CardSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CardSigner")
    }
}

/// The transcript hash inside a TLS 1.3 client CertificateVerify content, or `None` if
/// `message` is not exactly such a content.
pub fn tls13_transcript_hash(message: &[u8]) -> Option<[u8; 32]> {
    if message.len() != TLS13_CONTENT_LEN {
        return None;
    }
    let (prefix, rest) = message.split_at(64);
    let (context, rest) = rest.split_at(TLS13_CLIENT_CONTEXT.len());
    let (zero, hash) = rest.split_first()?;
    if prefix.iter().all(|b| *b == 0x20) && context == TLS13_CLIENT_CONTEXT && *zero == 0 {
        hash.try_into().ok()
    } else {
        None
    }
}

impl Signer for CardSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let hash = tls13_transcript_hash(message).ok_or_else(|| {
            rustls::Error::General("the card signs only TLS 1.3 client CertificateVerify".into())
        })?;
        self.key.sign_tls13(&hash).map_err(|e| rustls::Error::General(e.to_string()))
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_crypto::tls::certificate_verify::tls13_client_content;

    #[test]
    fn transcript_hash_extracted_only_from_client_content() {
        let content = tls13_client_content(&[7; 32]);
        assert_eq!(tls13_transcript_hash(&content), Some([7; 32]));
        let mut server = content;
        server[64..64 + 6].copy_from_slice(b"TLS 1.");
        server[64 + 9] = b's'; // "TLS 1.3, server ..." differs from the client context
        assert_eq!(tls13_transcript_hash(&server), None);
        assert_eq!(tls13_transcript_hash(&content[..content.len() - 1]), None);
        let mut bad_pad = content;
        bad_pad[0] = 0;
        assert_eq!(tls13_transcript_hash(&bad_pad), None);
    }
}
