//! The primitives of the age file format (age-encryption.org/v1) that a card performs: the
//! tagged P-256 recipient stanza (`p256tag`, C2SP age "tagged recipients") and the header MAC.
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

use hkdf::Hkdf;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::DhP256HkdfSha256;
use hpke::{Deserializable, Kem as KemTrait, OpModeR, OpModeS, Serializable};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::ecdsa::PublicKey;
use crate::rng::Rng;
use crate::{CryptoError, Result};

type Kem = DhP256HkdfSha256;

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

struct RngRef<'a, R: Rng + ?Sized>(&'a mut R);

impl<R: Rng + ?Sized> rand_core::TryRng for RngRef<'_, R> {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> core::result::Result<u32, Self::Error> {
        Ok(rand_core::Rng::next_u32(self.0))
    }
    fn try_next_u64(&mut self) -> core::result::Result<u64, Self::Error> {
        Ok(rand_core::Rng::next_u64(self.0))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> core::result::Result<(), Self::Error> {
        self.0.fill_random(dst);
        Ok(())
    }
}

impl<R: Rng + ?Sized> rand_core::TryCryptoRng for RngRef<'_, R> {}

/// Wraps `file_key` to `recipient` as a `p256tag` stanza.
pub fn p256tag_seal<R: Rng + ?Sized>(
    rng: &mut R,
    recipient: &PublicKey,
    file_key: &[u8; FILE_KEY_LEN],
) -> Result<P256TagStanza> {
    let pk = <Kem as KemTrait>::PublicKey::from_bytes(&recipient.to_sec1_bytes())
        .map_err(|_| CryptoError::Malformed("P-256 recipient"))?;
    let (enc, ct) = hpke::single_shot_seal_with_rng::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &OpModeS::Base,
        &pk,
        P256TAG_INFO,
        file_key,
        &[],
        &mut RngRef(rng),
    )
    .map_err(|_| CryptoError::Malformed("HPKE seal"))?;
    let enc: [u8; ENC_LEN] = enc
        .to_bytes()
        .as_slice()
        .try_into()
        .map_err(|_| CryptoError::Malformed("HPKE encapsulated key"))?;
    let body: [u8; STANZA_BODY_LEN] =
        ct.as_slice().try_into().map_err(|_| CryptoError::Malformed("stanza body"))?;
    Ok(P256TagStanza { enc, body })
}

/// Unwraps a `p256tag` stanza with the recipient's private scalar (32 bytes).
/// [`CryptoError::AuthenticationFailed`] when the stanza is not for this key or was modified.
pub fn p256tag_open(private_scalar: &[u8], stanza: &P256TagStanza) -> Result<FileKey> {
    let sk = <Kem as KemTrait>::PrivateKey::from_bytes(private_scalar)
        .map_err(|_| CryptoError::InvalidKeyLength(private_scalar.len()))?;
    let enc = <Kem as KemTrait>::EncappedKey::from_bytes(&stanza.enc)
        .map_err(|_| CryptoError::Malformed("HPKE encapsulated key"))?;
    let pt = Zeroizing::new(
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeR::Base,
            &sk,
            &enc,
            P256TAG_INFO,
            &stanza.body,
            &[],
        )
        .map_err(|_| CryptoError::AuthenticationFailed)?,
    );
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
        let stanza = p256tag_seal(&mut rng, &sk.public_key(), &key).unwrap();
        assert_eq!(*p256tag_open(sk.to_bytes().as_slice(), &stanza).unwrap(), key);
        assert_eq!(
            p256tag_open(other.to_bytes().as_slice(), &stanza).unwrap_err(),
            CryptoError::AuthenticationFailed
        );
        let mut bad = stanza.clone();
        bad.body[3] ^= 1;
        assert!(p256tag_open(sk.to_bytes().as_slice(), &bad).is_err());
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
