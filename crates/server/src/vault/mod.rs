//! The vault key service (seed 003, Figs. 28-31, ¶0111-0113, claims 3, 10, 13): the server,
//! as the issuer's key service, generates a card's file-encryption key pair, seals the private
//! key with HPKE to the card's transport key and delivers it through the APDU tunnel (IMPORT
//! SEALED) at the card's next sync.
//!
//! - **Queueing** (`tessera admin vault provision ISSUER CARD`): the key pair is generated at
//!   once; the public key is recorded (the card's age recipient is known before delivery) and
//!   the private key is kept sealed under the server's master key until it is delivered.
//! - **Delivery** (a step of `tessera sync`): the card's ATTEST answer, signed by its device
//!   key over the server's fresh nonce, tells the server the card's role, its transport key and
//!   whether it already holds a key; only an attested transport key is sealed to, so a relaying
//!   terminal cannot substitute its own. IMPORT SEALED is followed by a second ATTEST; the key
//!   is marked delivered only when the card attests it holds exactly the provisioned public key.
//! - **Afterwards** the service keeps the public key, and the private key sealed under the
//!   master key only if the issuer's policy says escrow; otherwise the sealed private key is
//!   deleted in the transaction that marks the delivery.
//!
//! The checks are free functions here ([`seal_key_for_card`], [`verify_attestation`]); the
//! database side is [`crate::store::vault`], the admin commands [`cli`].

pub mod cli;
pub mod http;

use tessera_crypto::device::{self, Purpose};
use tessera_crypto::ecdsa::Signature;
use tessera_crypto::hpke::{self, HpkePublicKey};
use tessera_crypto::rng::Rng;
use tessera_crypto::x509::{Certificate, Role as CertRole, verify_chain};
use tessera_proto::vault::{AID, Attestation, import_sealed_info};

/// Why the key service refused something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultServiceError {
    /// The card's answer to ATTEST does not parse.
    #[error("the card's attestation does not parse")]
    Malformed,
    /// The device certificate does not chain to the issuer CA, lacks the device role or names
    /// another card.
    #[error("device certificate refused: {0}")]
    DeviceCertificate(String),
    /// The attestation's signature does not verify (another nonce, a substituted transport key,
    /// another card).
    #[error("the card's attestation does not verify (replayed, altered or from another card)")]
    Signature,
    /// The transport key is not a valid P-256 point.
    #[error("the attested transport key is not a P-256 public key")]
    TransportKey,
    /// Sealing failed.
    #[error("sealing the key: {0}")]
    Crypto(String),
}

/// Seals a P-256 private scalar to a card's transport key for IMPORT SEALED: HPKE base mode
/// (the profile suite: DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-128-GCM), `info =
/// "tessera/vault/import-sealed" || card id`, associated data the vault's AID. Only the card
/// holding the transport key's private half, and naming that card id, opens it. Returns `enc
/// || ciphertext`, the data of IMPORT SEALED.
pub fn seal_key_for_card(
    rng: &mut dyn Rng,
    transport_key: &[u8],
    card_id: &[u8],
    private: &[u8],
) -> Result<Vec<u8>, VaultServiceError> {
    let pk =
        HpkePublicKey::from_bytes(transport_key).map_err(|_| VaultServiceError::TransportKey)?;
    hpke::seal_with_rng(rng, &pk, &import_sealed_info(card_id), AID, private)
        .map_err(|e| VaultServiceError::Crypto(e.to_string()))
}

/// Checks a card's answer to ATTEST over `nonce`: `device_certificate` must verify up to `ca`
/// at `now` with the device role and name `card_id`, and its key must have signed the
/// attestation's body (nonce, role, transport key, public key). Returns the attestation.
pub fn verify_attestation(
    ca: &Certificate,
    device_certificate: &Certificate,
    card_id: &[u8],
    nonce: &[u8],
    answer: &[u8],
    now: i64,
) -> Result<Attestation, VaultServiceError> {
    let info = verify_chain(device_certificate, &[], ca, now, Some(CertRole::Device))
        .map_err(|e| VaultServiceError::DeviceCertificate(e.to_string()))?;
    if info.subject_cn.as_bytes() != card_id {
        return Err(VaultServiceError::DeviceCertificate("names another card".into()));
    }
    let attestation = Attestation::parse(answer).map_err(|_| VaultServiceError::Malformed)?;
    let sig =
        Signature::from_bytes(&attestation.signature).map_err(|_| VaultServiceError::Signature)?;
    device::verify(
        &info.public_key,
        Purpose::DeviceAuthentication,
        card_id,
        &attestation.signed_body(nonce),
        &sig,
    )
    .map_err(|_| VaultServiceError::Signature)?;
    HpkePublicKey::from_bytes(&attestation.transport_key)
        .map_err(|_| VaultServiceError::TransportKey)?;
    Ok(attestation)
}

#[cfg(test)]
mod tests;
