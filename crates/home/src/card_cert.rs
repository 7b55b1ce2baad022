//! A card key as rustls' client certificate, shared by the control channel (the access card,
//! TLS 1.3 only) and the market handshakes (the home card, TLS 1.3 and 1.2).
//!
//! The card never signs an arbitrary digest: for TLS 1.3 the signer extracts the transcript
//! hash from the CertificateVerify content rustls asks it to sign (the card rebuilds the
//! content itself); for TLS 1.2 it passes the handshake messages (starting with the
//! ClientHello), which the card checks and hashes itself, to a key that signs TLS 1.2. The key
//! is ECDSA P-256, so the scheme is always `ecdsa_secp256r1_sha256`.

use std::sync::Arc;

use tessera_crypto::tls::certificate_verify::{TLS13_CLIENT_CONTEXT, TLS13_CONTENT_LEN};
use tokio_rustls::rustls::client::ResolvesClientCert;
use tokio_rustls::rustls::sign::{CertifiedKey, Signer, SigningKey};
use tokio_rustls::rustls::{self, SignatureAlgorithm, SignatureScheme};

use crate::ClientKey;
use crate::handover::MarketKey;

/// First byte of a TLS 1.2 handshake transcript (a ClientHello).
const CLIENT_HELLO: u8 = 1;

/// The card key and which CertificateVerify versions it signs.
#[derive(Clone)]
pub(crate) enum CardKey {
    /// TLS 1.3 only (the access card on the control channel).
    Tls13(Arc<dyn ClientKey>),
    /// TLS 1.3 and 1.2 (the home card towards markets).
    Market(Arc<dyn MarketKey>),
}

impl CardKey {
    fn tls13(&self) -> &dyn ClientKey {
        match self {
            CardKey::Tls13(k) => &**k,
            CardKey::Market(k) => &**k,
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        // A TLS 1.3 content starts with 64 spaces, a TLS 1.2 transcript with a ClientHello:
        // the two cannot be confused.
        let result = match (tls13_transcript_hash(message), self) {
            (Some(hash), key) => key.tls13().sign_tls13(&hash),
            (None, CardKey::Market(key)) if message.first() == Some(&CLIENT_HELLO) => {
                key.sign_tls12(message)
            }
            (None, _) => {
                return Err(rustls::Error::General(
                    "the card signs only a client CertificateVerify with a SHA-256 transcript"
                        .into(),
                ));
            }
        };
        result.map_err(|e| rustls::Error::General(format!("card: {e}")))
    }
}

/// Resolves the peer's certificate request to the card key.
pub(crate) struct CardCert(pub(crate) CardKey);

impl std::fmt::Debug for CardCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CardCert")
    }
}

impl ResolvesClientCert for CardCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        if !sigschemes.contains(&SignatureScheme::ECDSA_NISTP256_SHA256) {
            return None;
        }
        let chain = self.0.tls13().certificate_chain();
        Some(Arc::new(CertifiedKey::new(chain, Arc::new(CardSigner(self.0.clone())))))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The card key as rustls' signing key and signer (`ecdsa_secp256r1_sha256` only).
struct CardSigner(CardKey);

impl std::fmt::Debug for CardSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CardSigner")
    }
}

impl SigningKey for CardSigner {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(CardSigner(self.0.clone())) as Box<dyn Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

impl Signer for CardSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.0.sign(message)
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// The transcript hash inside a TLS 1.3 client CertificateVerify content, or `None` if
/// `message` is not exactly such a content.
pub(crate) fn tls13_transcript_hash(message: &[u8]) -> Option<[u8; 32]> {
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
