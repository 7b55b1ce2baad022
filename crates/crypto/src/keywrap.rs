//! Key wrap for export: AES-256-GCM under a key-encryption key, the wrapped key's metadata
//! bound as associated data.
//!
//! Wrapped layout: `01` (format version) `|| nonce (12 random bytes) || ciphertext || tag (16)`.
//! The GCM associated data is the version byte followed by the caller's metadata (key type,
//! role, key-group check value...), so a blob unwraps only with exactly the metadata it was
//! wrapped with. The metadata itself is not stored in the blob; the caller sends it beside.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::keys::{AesKey, AesKeyLen};
use crate::rng::{Rng, random_array};
use crate::{CryptoError, Result};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
/// Bytes a wrapped key adds to the key: version, nonce and tag.
pub const OVERHEAD: usize = 1 + NONCE_LEN + 16;
/// Largest key (or key blob) that can be wrapped.
pub const MAX_KEY_LEN: usize = 4096;

/// A 256-bit key-encryption key, zeroised on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct WrapKey(AesKey);

impl core::fmt::Debug for WrapKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("WrapKey(..)")
    }
}

impl WrapKey {
    /// A KEK from an AES-256 key (for example one derived with [`crate::kdf::Label::VAULT_KEK`]).
    pub fn new(key: AesKey) -> Result<Self> {
        if key.len() != AesKeyLen::Aes256 {
            return Err(CryptoError::InvalidKeyLength(key.expose_secret().len()));
        }
        Ok(Self(key))
    }

    /// A fresh random KEK.
    pub fn generate<R: Rng + ?Sized>(rng: &mut R) -> Self {
        Self(AesKey::generate(AesKeyLen::Aes256, rng))
    }

    fn cipher(&self) -> Aes256Gcm {
        match Aes256Gcm::new_from_slice(self.0.expose_secret()) {
            Ok(c) => c,
            Err(_) => unreachable!("WrapKey holds 32 bytes"),
        }
    }
}

/// Wraps `key` (1 to 4096 bytes) under `kek`, binding `metadata`.
pub fn wrap<R: Rng + ?Sized>(
    rng: &mut R,
    kek: &WrapKey,
    key: &[u8],
    metadata: &[u8],
) -> Result<Vec<u8>> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(CryptoError::InvalidLength("wrapped key must be 1 to 4096 bytes"));
    }
    let nonce: [u8; NONCE_LEN] = random_array(rng);
    let ct = gcm_seal(&kek.cipher(), &nonce, &aad(metadata), key)?;
    let mut out = Vec::with_capacity(OVERHEAD + key.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Unwraps a blob made by [`wrap`] with the same `metadata`.
pub fn unwrap(kek: &WrapKey, wrapped: &[u8], metadata: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let (&version, rest) = wrapped.split_first().ok_or(CryptoError::Malformed("wrapped key"))?;
    if version != VERSION {
        return Err(CryptoError::UnsupportedVersion { what: "wrapped key", version });
    }
    if rest.len() < NONCE_LEN + 16 + 1 {
        return Err(CryptoError::Malformed("wrapped key too short"));
    }
    let (nonce, ct) = rest.split_at(NONCE_LEN);
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(nonce);
    kek.cipher()
        .decrypt(&Nonce::from(n), Payload { msg: ct, aad: &aad(metadata) })
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::AuthenticationFailed)
}

fn aad(metadata: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(1 + metadata.len());
    a.push(VERSION);
    a.extend_from_slice(metadata);
    a
}

fn gcm_seal(c: &Aes256Gcm, nonce: &[u8; NONCE_LEN], aad: &[u8], pt: &[u8]) -> Result<Vec<u8>> {
    c.encrypt(&Nonce::from(*nonce), Payload { msg: pt, aad })
        .map_err(|_| CryptoError::InvalidLength("AES-GCM input too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn aes256_gcm_known_answers() {
        // McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)", test cases 13, 14, 16
        // (AES-256), as used by NIST's GCM validation.
        let cases = [
            (
                "0000000000000000000000000000000000000000000000000000000000000000",
                "000000000000000000000000",
                "",
                "",
                "",
                "530f8afbc74536b9a963b4f1c4cb738b",
            ),
            (
                "0000000000000000000000000000000000000000000000000000000000000000",
                "000000000000000000000000",
                "",
                "00000000000000000000000000000000",
                "cea7403d4d606b6e074ec5d3baf39d18",
                "d0d1c8a799996bf0265b98b5d48ab919",
            ),
            (
                "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
                "cafebabefacedbaddecaf888",
                "feedfacedeadbeeffeedfacedeadbeefabaddad2",
                "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
                "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
                "76fc6ece0f4e1768cddf8853bb2d551b",
            ),
        ];
        for (k, iv, aad, pt, ct, tag) in cases {
            let c = Aes256Gcm::new_from_slice(&h(k)).unwrap();
            let nonce: [u8; 12] = h(iv).try_into().unwrap();
            let out = gcm_seal(&c, &nonce, &h(aad), &h(pt)).unwrap();
            assert_eq!(hex::encode(out), format!("{ct}{tag}"));
        }
    }

    #[test]
    fn wrap_unwrap_binds_metadata() {
        let mut rng = SeededRng::from_u64(6);
        let kek = WrapKey::generate(&mut rng);
        let key = [0x42u8; 32];
        let w = wrap(&mut rng, &kek, &key, b"type=p256;role=vault").unwrap();
        assert_eq!(w.len(), OVERHEAD + 32);
        assert_eq!(w[0], 1);
        assert_eq!(&unwrap(&kek, &w, b"type=p256;role=vault").unwrap()[..], &key);
        let fail = Err(CryptoError::AuthenticationFailed);
        assert_eq!(unwrap(&kek, &w, b"type=p256;role=other"), fail);
        assert_eq!(unwrap(&WrapKey::generate(&mut rng), &w, b"type=p256;role=vault"), fail);
        for i in 1..w.len() {
            let mut t = w.clone();
            t[i] ^= 0x80;
            assert_eq!(unwrap(&kek, &t, b"type=p256;role=vault"), fail, "flip at {i}");
        }
        let mut v = w.clone();
        v[0] = 2;
        assert!(matches!(unwrap(&kek, &v, b""), Err(CryptoError::UnsupportedVersion { .. })));
        assert!(unwrap(&kek, &w[..OVERHEAD], b"").is_err());
        assert!(unwrap(&kek, &[], b"").is_err());
        // Two wraps of the same key differ (fresh nonce).
        assert_ne!(
            wrap(&mut rng, &kek, &key, b"m").unwrap(),
            wrap(&mut rng, &kek, &key, b"m").unwrap()
        );
        assert!(WrapKey::new(AesKey::Aes128([0; 16])).is_err());
        assert!(wrap(&mut rng, &kek, &[], b"").is_err());
    }
}
