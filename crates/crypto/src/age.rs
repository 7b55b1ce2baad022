//! The primitives of the age file format (age-encryption.org/v1): the tagged P-256 recipient
//! stanza (`p256tag`, C2SP age "tagged recipients") and the header MAC, which a card performs,
//! and the payload's STREAM chunks ([`PayloadKey`]), which the host seals.
//!
//! A `p256tag` stanza wraps the 16-byte file key with HPKE base mode, DHKEM(P-256,
//! HKDF-SHA256), HKDF-SHA256, **ChaCha20-Poly1305**, `info = "age-encryption.org/p256tag"`,
//! empty `aad`: the stanza is `-> p256tag <tag> <enc>` and its body is the 32-byte
//! ciphertext. This is the one place the profile uses ChaCha20-Poly1305: age fixes it.
//! The header MAC is HMAC-SHA256 keyed with `HKDF-SHA256(ikm = file key, salt = "", info =
//! "header")` over the header up to and including `---`.
//!
//! Interoperability with the `age` crate's own `p256tag` recipient is tested in
//! `tessera-host` (files made by `age` open here, headers rewritten here open in `age`).

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::ecdsa::PublicKey;
use crate::hpke::{self, Aead, HpkePrivateKey, HpkePublicKey};
use crate::{CryptoError, Result};

/// The HPKE `info` (and tag salt) of the `p256tag` recipient type.
pub const P256TAG_INFO: &[u8] = b"age-encryption.org/p256tag";
/// The stanza type of the tagged P-256 recipient.
pub const P256TAG_STANZA: &str = "p256tag";
/// Length of an age file key.
pub const FILE_KEY_LEN: usize = 16;
/// Length of a `p256tag` stanza body (file key and Poly1305 tag).
pub const STANZA_BODY_LEN: usize = FILE_KEY_LEN + 16;
/// Length of the HPKE encapsulated key (uncompressed P-256 point).
pub const ENC_LEN: usize = 65;
/// Length of the header MAC.
pub const MAC_LEN: usize = 32;

/// An age file key (zeroised on drop).
pub type FileKey = Zeroizing<[u8; FILE_KEY_LEN]>;

/// A wrapped file key: the stanza's encapsulated key and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P256TagStanza {
    /// The HPKE encapsulated key (second stanza argument, uncompressed SEC1).
    pub enc: [u8; ENC_LEN],
    /// The stanza body (ciphertext of the file key).
    pub body: [u8; STANZA_BODY_LEN],
}

/// Wraps `file_key` to `recipient` (a fresh ephemeral key from the operating system).
pub fn p256tag_seal(recipient: &PublicKey, file_key: &[u8; FILE_KEY_LEN]) -> Result<P256TagStanza> {
    let recipient = HpkePublicKey::from_public_key(recipient);
    let (enc, ct) =
        hpke::seal_with(Aead::ChaCha20Poly1305, &recipient, P256TAG_INFO, &[], file_key)?;
    let body: [u8; STANZA_BODY_LEN] =
        ct.as_slice().try_into().map_err(|_| CryptoError::Malformed("stanza body"))?;
    Ok(P256TagStanza { enc, body })
}

/// Unwraps a `p256tag` stanza with the recipient's key.
/// [`CryptoError::AuthenticationFailed`] when the stanza is not for this key or was modified.
pub fn p256tag_open(recipient: &HpkePrivateKey, stanza: &P256TagStanza) -> Result<FileKey> {
    let pt = hpke::open_with(
        Aead::ChaCha20Poly1305,
        recipient,
        &stanza.enc,
        P256TAG_INFO,
        &[],
        &stanza.body,
    )
    .map_err(|_| CryptoError::AuthenticationFailed)?;
    let mut key = Zeroizing::new([0u8; FILE_KEY_LEN]);
    if pt.len() != FILE_KEY_LEN {
        return Err(CryptoError::AuthenticationFailed);
    }
    key.copy_from_slice(&pt);
    Ok(key)
}

/// The recipient's static tag: the first 4 bytes of SHA-256 of its compressed SEC1 encoding.
pub fn p256tag_static_tag(recipient: &PublicKey) -> [u8; 4] {
    let digest = Sha256::digest(recipient.to_sec1_compressed());
    [digest[0], digest[1], digest[2], digest[3]]
}

/// The stanza's tag argument: `HKDF-Extract(salt = P256TAG_INFO, ikm = enc || static tag)`,
/// first 4 bytes. Lets a reader find the stanza addressed to a key without trying each one.
pub fn p256tag_stanza_tag(enc: &[u8; ENC_LEN], recipient: &PublicKey) -> [u8; 4] {
    let mut ikm = Vec::with_capacity(ENC_LEN + 4);
    ikm.extend_from_slice(enc);
    ikm.extend_from_slice(&p256tag_static_tag(recipient));
    let (prk, _) = Hkdf::<Sha256>::extract(Some(P256TAG_INFO), &ikm);
    [prk[0], prk[1], prk[2], prk[3]]
}

/// HMAC-SHA256(key, message), as HKDF-Extract with the key as salt (RFC 5869 section 2.2).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; MAC_LEN] {
    let (prk, _) = Hkdf::<Sha256>::extract(Some(key), message);
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&prk);
    out
}

/// The age header MAC of `header` (every byte up to and including the final `---`).
pub fn header_mac(file_key: &[u8; FILE_KEY_LEN], header: &[u8]) -> [u8; MAC_LEN] {
    let hk = Hkdf::<Sha256>::new(Some(&[]), file_key);
    let mut mac_key = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit.
    if hk.expand(b"header", mac_key.as_mut_slice()).is_err() {
        unreachable!("32-byte HKDF output is always valid");
    }
    hmac_sha256(mac_key.as_slice(), header)
}

/// Checks an age header MAC in constant time.
pub fn verify_header_mac(file_key: &[u8; FILE_KEY_LEN], header: &[u8], mac: &[u8]) -> Result<()> {
    let expected = header_mac(file_key, header);
    if mac.len() == MAC_LEN && bool::from(expected.as_slice().ct_eq(mac)) {
        Ok(())
    } else {
        Err(CryptoError::AuthenticationFailed)
    }
}

/// Plaintext length of every STREAM chunk but the last (64 KiB).
pub const CHUNK_LEN: usize = 64 * 1024;
/// Length of the payload nonce written after the header.
pub const PAYLOAD_NONCE_LEN: usize = 16;
/// Length of each chunk's Poly1305 tag.
pub const CHUNK_TAG_LEN: usize = 16;

/// The payload's STREAM key: ChaCha20-Poly1305 under `HKDF-SHA256(ikm = file key, salt =
/// payload nonce, info = "payload")`. Chunk `i` is sealed with the 12-byte nonce `i` (11 bytes,
/// big-endian) followed by `01` for the last chunk and `00` otherwise, no associated data.
/// Chunks are independent, so callers may seal them in parallel.
pub struct PayloadKey(ChaCha20Poly1305);

impl PayloadKey {
    /// The key of the payload whose nonce is `nonce`.
    pub fn new(file_key: &[u8; FILE_KEY_LEN], nonce: &[u8; PAYLOAD_NONCE_LEN]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(nonce), file_key);
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit.
        if hk.expand(b"payload", key.as_mut_slice()).is_err() {
            unreachable!("32-byte HKDF output is always valid");
        }
        Self(ChaCha20Poly1305::new(&(*key).into()))
    }

    /// Seals chunk `index` in place and returns its tag, which follows it in the file. `chunk`
    /// holds at most [`CHUNK_LEN`] bytes; only the last chunk may be shorter, and only an
    /// empty payload's single chunk may be empty.
    pub fn seal_chunk(
        &self,
        index: u64,
        last: bool,
        chunk: &mut [u8],
    ) -> Result<[u8; CHUNK_TAG_LEN]> {
        if chunk.len() > CHUNK_LEN {
            return Err(CryptoError::InvalidLength("age STREAM chunk longer than 64 KiB"));
        }
        let mut nonce = [0u8; 12];
        nonce[3..11].copy_from_slice(&index.to_be_bytes());
        nonce[11] = u8::from(last);
        let tag = self
            .0
            .encrypt_inout_detached(&nonce.into(), &[], chunk.into())
            .map_err(|_| CryptoError::InvalidLength("age STREAM chunk"))?;
        Ok(tag.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecdsa::SigningKey;
    use crate::rng::SeededRng;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        // RFC 4231 section 4.3, test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn stanza_round_trip_and_wrong_key_or_tamper_fails() {
        let mut rng = SeededRng::from_u64(1);
        let sk = SigningKey::generate(&mut rng);
        let other = SigningKey::generate(&mut rng);
        let key = [7u8; FILE_KEY_LEN];
        let stanza = p256tag_seal(&sk.public_key(), &key).unwrap();
        let open_key =
            |k: &SigningKey| HpkePrivateKey::from_bytes(k.to_bytes().as_slice()).unwrap();
        assert_eq!(*p256tag_open(&open_key(&sk), &stanza).unwrap(), key);
        assert_eq!(
            p256tag_open(&open_key(&other), &stanza).unwrap_err(),
            CryptoError::AuthenticationFailed
        );
        let mut bad = stanza.clone();
        bad.body[3] ^= 1;
        assert!(p256tag_open(&open_key(&sk), &bad).is_err());
    }

    #[test]
    fn header_mac_verifies_only_the_same_header() {
        let key = [9u8; FILE_KEY_LEN];
        let mac = header_mac(&key, b"age-encryption.org/v1\n---");
        assert!(verify_header_mac(&key, b"age-encryption.org/v1\n---", &mac).is_ok());
        assert!(verify_header_mac(&key, b"age-encryption.org/v1\n--", &mac).is_err());
        assert!(verify_header_mac(&[8u8; 16], b"age-encryption.org/v1\n---", &mac).is_err());
    }
}
