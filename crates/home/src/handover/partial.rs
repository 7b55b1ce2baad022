//! Partial proxying (¶0089): the terminal runs the TLS handshake with the market itself, and
//! only the client CertificateVerify signature is made by the home card, through the home
//! server.
//!
//! The terminal's client key is a [`ForwardedKey`]: it holds the home card's certificate
//! chain (public) and, when rustls asks it to sign, extracts the transcript hash from the TLS
//! 1.3 CertificateVerify content (checking the client context string) and sends only that hash
//! to the home server through a [`RemoteSigner`] (the control channel's `SignRequest` /
//! `SignResponse`). The home card rebuilds the content from the hash and signs it, so neither
//! the terminal nor the home server can get it to sign anything else. The control frame
//! carries a 32-byte hash, so partial mode is TLS 1.3 with a SHA-256 suite only
//! ([`terminal_config`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

use super::HandoverError;
use super::config::{MarketConfig, MarketKey};
use crate::{ClientKey, KeyError};

/// Carries a transcript hash to the home card and its signature back (the control channel).
pub trait RemoteSigner: Send + Sync + 'static {
    /// The home card's DER signature of the TLS 1.3 client CertificateVerify content for
    /// `transcript_hash`.
    fn sign_tls13(&self, transcript_hash: &[u8; 32]) -> Result<Vec<u8>, KeyError>;
}

impl<F> RemoteSigner for F
where
    F: Fn(&[u8; 32]) -> Result<Vec<u8>, KeyError> + Send + Sync + 'static,
{
    fn sign_tls13(&self, transcript_hash: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        self(transcript_hash)
    }
}

/// The terminal's client key in partial mode: the home card's certificate, signatures made
/// remotely.
pub struct ForwardedKey {
    chain: Vec<CertificateDer<'static>>,
    signer: Arc<dyn RemoteSigner>,
    requests: AtomicUsize,
}

impl ForwardedKey {
    /// A key for the home card's certificate `chain` (from the control channel's `Opened`
    /// frame), signing through `signer`.
    pub fn new(chain: Vec<CertificateDer<'static>>, signer: Arc<dyn RemoteSigner>) -> Self {
        ForwardedKey { chain, signer, requests: AtomicUsize::new(0) }
    }

    /// How many signatures were requested from the home card.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl ClientKey for ForwardedKey {
    fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.clone()
    }

    fn sign_tls13(&self, transcript_hash: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.signer.sign_tls13(transcript_hash)
    }
}

impl MarketKey for ForwardedKey {
    fn sign_tls12(&self, _handshake_messages: &[u8]) -> Result<Vec<u8>, KeyError> {
        Err(KeyError::Card("partial mode forwards TLS 1.3 transcript hashes only".into()))
    }
}

/// The terminal's TLS configuration for partial mode: TLS 1.3 only, the market validated
/// against `roots`, the client certificate signed remotely by `key`.
pub fn terminal_config(
    roots: RootCertStore,
    key: Arc<ForwardedKey>,
) -> Result<Arc<ClientConfig>, HandoverError> {
    MarketConfig::new(roots, key).only(true).sha256_only().client_config()
}
