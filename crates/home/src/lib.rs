//! tessera home: the authentication proxy of seed 004 (`docs/proxy.md`).
//!
//! A home server holds the user's home card and acts for a weak terminal that holds an
//! access card: the terminal opens a [`control`] channel to the home server (TLS 1.3, mutual
//! authentication with the access card's key, the home server's certificate pinned by the
//! access card), sends PIN2 through it to the home card, and asks for market sessions; the
//! home server runs the expensive handshake with the market and hands the traffic keys over
//! (or relays, or signs only), then relays the market's TCP bytes.
//!
//! - [`control`]: the control channel's TLS set-up (client key in a card, pinned server
//!   certificate, registered access cards only) and its frame I/O.
//! - [`emoney`]: home-card e-money: the reference market and bank, the wallet flows
//!   (payment, refill, cancellation) and the settlement notice by e-mail.
//! - [`handover`]: the proxied market handshake and key handover, the session cache, relay
//!   mode and partial proxying.
//! - [`registry`]: the access cards the home server admits (claim 8).
//! - [`server`]: `tessera home serve`: control connections, PIN2 relay, the home card's idle
//!   fallback, market sessions.
//! - [`terminal`]: the terminal's side: the control connection (kept open and resumed), PIN2,
//!   market sessions.

#![forbid(unsafe_code)]

mod card_cert;
pub mod control;
pub mod emoney;
pub mod handover;
pub mod registry;
pub mod server;
pub mod terminal;

use tokio_rustls::rustls::pki_types::CertificateDer;

/// A TLS client key held in a card (the access card's terminal key, the home card's
/// e-commerce key), with its certificate.
///
/// The card signs only TLS 1.3 client CertificateVerify content it builds itself from the
/// transcript hash (`tessera_crypto::tls::certificate_verify`), with ECDSA P-256 / SHA-256
/// (`ecdsa_secp256r1_sha256`); it never signs a digest it is handed.
pub trait ClientKey: Send + Sync + 'static {
    /// The client certificate chain (leaf first, DER).
    fn certificate_chain(&self) -> Vec<CertificateDer<'static>>;

    /// Signs the TLS 1.3 client CertificateVerify content for `transcript_hash` (SHA-256 of
    /// the handshake so far); returns the DER `ECDSA-Sig-Value`.
    fn sign_tls13(&self, transcript_hash: &[u8; 32]) -> Result<Vec<u8>, KeyError>;
}

/// A card key operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The card refuses: it is locked (no PIN yet, or idle for too long).
    #[error("the card is locked (PIN needed)")]
    Locked,
    /// The card or its reader failed.
    #[error("card: {0}")]
    Card(String),
}

/// A [`ClientKey`] in software (tests, demos, and a terminal without a card reader).
pub struct SoftwareKey {
    chain: Vec<CertificateDer<'static>>,
    key: tessera_crypto::ecdsa::SigningKey,
    signatures: std::sync::atomic::AtomicUsize,
}

impl SoftwareKey {
    /// A key and its certificate chain (leaf first).
    pub fn new(
        key: tessera_crypto::ecdsa::SigningKey,
        chain: Vec<CertificateDer<'static>>,
    ) -> Self {
        SoftwareKey { chain, key, signatures: std::sync::atomic::AtomicUsize::new(0) }
    }

    /// How many signatures the key has made (a resumed control channel makes none).
    pub fn signatures(&self) -> usize {
        self.signatures.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl ClientKey for SoftwareKey {
    fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.clone()
    }

    fn sign_tls13(&self, transcript_hash: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        self.signatures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(tessera_crypto::tls::certificate_verify::sign_tls13_client(&self.key, transcript_hash))
    }
}

/// SHA-256 of a certificate, the fingerprint the registry and the pins use.
pub fn fingerprint(cert: &[u8]) -> [u8; 32] {
    tessera_crypto::hash::sha256(cert)
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo (DER): what an access card pins the home
/// server by. `None` if the certificate does not parse as a tessera (P-256) certificate.
pub fn spki_sha256(cert: &[u8]) -> Option<[u8; 32]> {
    let info = tessera_crypto::x509::Certificate::from_der(cert.to_vec()).ok()?.info().ok()?;
    Some(tessera_crypto::hash::sha256(&info.public_key.to_spki_der().ok()?))
}

/// A fingerprint as colon-separated upper-case hex, as `tessera home list` prints it.
pub fn fingerprint_hex(fp: &[u8; 32]) -> String {
    fp.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Parses a fingerprint given as hex, colons optional.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let digits: String = s.trim().chars().filter(|c| *c != ':').collect();
    hex::decode(digits).ok().and_then(|v| v.try_into().ok())
}
