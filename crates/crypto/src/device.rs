//! The labelled structures a card's device key signs.
//!
//! A card's device key (ECDSA P-256, generated on the card at issuance) never signs a digest or
//! message chosen by someone else: the card builds every message itself as
//!
//! ```text
//! "tessera-device-v1" 00 || purpose label || 00 || len(card id) (1 byte) || card id || body
//! ```
//!
//! so a signature made for one [`Purpose`] or one card can never pass as another, and no
//! caller can make the card sign an X.509 TBS, a CRL or a foreign protocol's transcript.

use crate::ecdsa::{PublicKey, Signature, SigningKey};
use crate::{CryptoError, Result};

/// The prefix of every device-signed message.
pub const DOMAIN: &[u8] = b"tessera-device-v1";
/// Longest card id a structure may name.
pub const MAX_CARD_ID: usize = 32;

/// What a device signature is for; each purpose has its own label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Proof of possession at issuance: the body is the server's nonce followed by the
    /// device public key (SEC1 uncompressed, 65 bytes).
    PossessionProof,
    /// Device authentication to an update service: the body is the service's challenge.
    DeviceAuthentication,
}

impl Purpose {
    /// The purpose's label in the signed structure.
    pub const fn label(self) -> &'static [u8] {
        match self {
            Purpose::PossessionProof => b"possession",
            Purpose::DeviceAuthentication => b"device-authentication",
        }
    }
}

/// The exact bytes a device key signs for `purpose`, `card_id` and `body`.
pub fn message(purpose: Purpose, card_id: &[u8], body: &[u8]) -> Result<Vec<u8>> {
    if card_id.is_empty() || card_id.len() > MAX_CARD_ID {
        return Err(CryptoError::InvalidLength("device structure card id: 1 to 32 bytes"));
    }
    let label = purpose.label();
    let mut m = Vec::with_capacity(DOMAIN.len() + label.len() + card_id.len() + body.len() + 3);
    m.extend_from_slice(DOMAIN);
    m.push(0);
    m.extend_from_slice(label);
    m.push(0);
    m.push(card_id.len() as u8);
    m.extend_from_slice(card_id);
    m.extend_from_slice(body);
    Ok(m)
}

/// Signs the labelled structure (card side).
pub fn sign(key: &SigningKey, purpose: Purpose, card_id: &[u8], body: &[u8]) -> Result<Signature> {
    Ok(key.sign(&message(purpose, card_id, body)?))
}

/// Verifies a device signature over the labelled structure (server side).
pub fn verify(
    key: &PublicKey,
    purpose: Purpose,
    card_id: &[u8],
    body: &[u8],
    signature: &Signature,
) -> Result<()> {
    key.verify(&message(purpose, card_id, body)?, signature)
}

/// The body of a [`Purpose::PossessionProof`]: `nonce || public key`.
pub fn possession_body(nonce: &[u8], public_key: &PublicKey) -> Vec<u8> {
    let mut body = nonce.to_vec();
    body.extend_from_slice(&public_key.to_sec1_bytes());
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;

    #[test]
    fn structure_is_labelled_and_bound() {
        let m = message(Purpose::PossessionProof, b"C1", b"xyz").unwrap();
        assert_eq!(m, b"tessera-device-v1\0possession\0\x02C1xyz".to_vec());
        assert!(message(Purpose::PossessionProof, b"", b"").is_err());
        assert!(message(Purpose::PossessionProof, &[b'a'; 33], b"").is_err());
    }

    #[test]
    fn signature_binds_purpose_card_and_body() {
        let key = SigningKey::generate(&mut SeededRng::from_u64(3));
        let public = key.public_key();
        let body = possession_body(&[7; 16], &public);
        let sig = sign(&key, Purpose::PossessionProof, b"CARD-1", &body).unwrap();
        verify(&public, Purpose::PossessionProof, b"CARD-1", &body, &sig).unwrap();
        assert!(verify(&public, Purpose::DeviceAuthentication, b"CARD-1", &body, &sig).is_err());
        assert!(verify(&public, Purpose::PossessionProof, b"CARD-2", &body, &sig).is_err());
        let other = possession_body(&[8; 16], &public);
        assert!(verify(&public, Purpose::PossessionProof, b"CARD-1", &other, &sig).is_err());
    }
}
