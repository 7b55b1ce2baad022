//! The market-facing TLS client configuration of the home server.
//!
//! Only the suites the terminal's record layer implements are offered
//! ([`tessera_proto::proxy::CipherSuite`]): TLS 1.3 `TLS_AES_128_GCM_SHA256` (preferred) and
//! `TLS_AES_256_GCM_SHA384`, TLS 1.2 `ECDHE_ECDSA_WITH_AES_128_GCM_SHA256` and
//! `_AES_256_GCM_SHA384`, all with the `ring` provider. Secret extraction is enabled (it is
//! what the handover is). The client certificate is the home card's: its signer hands the card
//! only the TLS 1.3 transcript hash it extracts from the CertificateVerify content rustls asks
//! it to sign (the card rebuilds the content itself), or for TLS 1.2 the handshake messages the
//! card checks and hashes itself. The card key is ECDSA P-256, so the signature scheme is
//! always `ecdsa_secp256r1_sha256`; a TLS 1.3 handshake under the SHA-384 suite with client
//! authentication therefore fails cleanly (the card signs 32-byte transcript hashes only).

use std::sync::Arc;

use rustls::client::{Resumption, Tls12Resumption};
use rustls::crypto::{CryptoProvider, ring};
use rustls::{ClientConfig, RootCertStore};

use super::HandoverError;
use super::cache::SessionCache;
use crate::card_cert::{CardCert, CardKey};
use crate::{ClientKey, KeyError, SoftwareKey};

/// The home card's TLS client key as the market handshake uses it: a [`ClientKey`] (TLS 1.3)
/// that can also sign a TLS 1.2 CertificateVerify.
pub trait MarketKey: ClientKey {
    /// Signs the TLS 1.2 client CertificateVerify over `handshake_messages` (ClientHello up to
    /// ClientKeyExchange, which the card checks and hashes with SHA-256 itself); returns the
    /// DER `ECDSA-Sig-Value`.
    fn sign_tls12(&self, handshake_messages: &[u8]) -> Result<Vec<u8>, KeyError>;
}

impl MarketKey for SoftwareKey {
    fn sign_tls12(&self, handshake_messages: &[u8]) -> Result<Vec<u8>, KeyError> {
        // The card checks the messages are a client-authenticated TLS 1.2 handshake up to the
        // ClientKeyExchange, as a home card does, before it signs.
        self.signatures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tessera_crypto::tls::certificate_verify::sign_tls12_client(&self.key, handshake_messages)
            .map_err(|e| KeyError::Card(e.to_string()))
    }
}

/// The cipher suites offered to markets, in order of preference.
pub fn offered_suites() -> Vec<rustls::SupportedCipherSuite> {
    vec![
        ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ]
}

/// The crypto provider: `ring` with [`offered_suites`] only.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = ring::default_provider();
    p.cipher_suites = offered_suites();
    Arc::new(p)
}

/// What the home server needs to shake hands with markets.
pub struct MarketConfig {
    roots: RootCertStore,
    key: Arc<dyn MarketKey>,
    cache: Option<Arc<SessionCache>>,
    tls12: bool,
    tls13: bool,
    sha256_only: bool,
}

impl MarketConfig {
    /// Markets validated against `roots`, client certificate from `key` (the home card), no
    /// session cache, TLS 1.3 and 1.2.
    pub fn new(roots: RootCertStore, key: Arc<dyn MarketKey>) -> Self {
        MarketConfig { roots, key, cache: None, tls12: true, tls13: true, sha256_only: false }
    }

    /// Keep sessions in `cache` and resume from it (Fig. 16).
    pub fn with_cache(mut self, cache: Arc<SessionCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Offer only TLS 1.3 (`tls13`) or only TLS 1.2 (`!tls13`): for tests and benchmarks.
    pub fn only(mut self, tls13: bool) -> Self {
        self.tls12 = !tls13;
        self.tls13 = tls13;
        self
    }

    /// Offer no suite whose TLS 1.3 transcript hash is SHA-384 (for a signer that carries
    /// 32-byte hashes only, as partial mode's control frame does).
    pub fn sha256_only(mut self) -> Self {
        self.sha256_only = true;
        self
    }

    /// The rustls client configuration (secret extraction enabled). Build it once and keep
    /// it: rustls resumes a cached session only under the configuration (server verifier and
    /// client-certificate resolver) that made it.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, HandoverError> {
        let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
        if self.tls13 {
            versions.push(&rustls::version::TLS13);
        }
        if self.tls12 {
            versions.push(&rustls::version::TLS12);
        }
        let mut provider = (*provider()).clone();
        if self.sha256_only {
            provider
                .cipher_suites
                .retain(|s| s.suite() != rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&versions)
            .map_err(|e| HandoverError::Config(e.to_string()))?
            .with_root_certificates(self.roots.clone());
        let mut config = builder
            .with_client_cert_resolver(Arc::new(CardCert(CardKey::Market(self.key.clone()))));
        config.enable_secret_extraction = true;
        config.resumption = match &self.cache {
            Some(cache) => Resumption::store(cache.clone())
                .tls12_resumption(Tls12Resumption::SessionIdOrTickets),
            None => Resumption::disabled(),
        };
        Ok(Arc::new(config))
    }
}
