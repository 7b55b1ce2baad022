//! AES-CMAC (NIST SP 800-38B, RFC 4493) over AES-128, AES-192 and AES-256 keys.

use aes::{Aes128, Aes192, Aes256};
use cmac::{Cmac, KeyInit, Mac};
use subtle::ConstantTimeEq;

use crate::keys::AesKey;
use crate::{CryptoError, Result};

/// Length of a full CMAC tag.
pub const CMAC_LEN: usize = 16;
/// Shortest truncated tag [`verify`] accepts.
pub const MIN_TAG_LEN: usize = 8;

#[derive(Clone)]
enum Inner {
    A128(Cmac<Aes128>),
    A192(Cmac<Aes192>),
    A256(Cmac<Aes256>),
}

/// An incremental AES-CMAC computation. Cloning a keyed, not yet fed computation reuses its
/// key schedule and subkeys (cheaper than [`AesCmac::new`] for many MACs under one key).
#[derive(Clone)]
pub struct AesCmac(Inner);

impl AesCmac {
    /// Starts a MAC under `key`.
    pub fn new(key: &AesKey) -> Self {
        // The key lengths match by construction of AesKey, so new() cannot fail.
        AesCmac(match key {
            AesKey::Aes128(k) => Inner::A128(<Cmac<Aes128> as KeyInit>::new(&(*k).into())),
            AesKey::Aes192(k) => Inner::A192(<Cmac<Aes192> as KeyInit>::new(&(*k).into())),
            AesKey::Aes256(k) => Inner::A256(<Cmac<Aes256> as KeyInit>::new(&(*k).into())),
        })
    }

    /// Feeds more message bytes.
    pub fn update(&mut self, data: &[u8]) -> &mut Self {
        match &mut self.0 {
            Inner::A128(m) => m.update(data),
            Inner::A192(m) => m.update(data),
            Inner::A256(m) => m.update(data),
        }
        self
    }

    /// The 16-byte tag.
    pub fn finalize(self) -> [u8; CMAC_LEN] {
        match self.0 {
            Inner::A128(m) => m.finalize().into_bytes().into(),
            Inner::A192(m) => m.finalize().into_bytes().into(),
            Inner::A256(m) => m.finalize().into_bytes().into(),
        }
    }
}

impl core::fmt::Debug for AesCmac {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("AesCmac(..)")
    }
}

/// The AES-CMAC of the concatenation of `parts`.
pub fn cmac(key: &AesKey, parts: &[&[u8]]) -> [u8; CMAC_LEN] {
    let mut m = AesCmac::new(key);
    for p in parts {
        m.update(p);
    }
    m.finalize()
}

/// Checks a (possibly truncated, at least 8-byte) tag over the concatenation of `parts`, in
/// constant time.
pub fn verify(key: &AesKey, parts: &[&[u8]], tag: &[u8]) -> Result<()> {
    if tag.len() < MIN_TAG_LEN || tag.len() > CMAC_LEN {
        return Err(CryptoError::InvalidLength("CMAC tag must be 8 to 16 bytes"));
    }
    let full = cmac(key, parts);
    if bool::from(full[..tag.len()].ct_eq(tag)) {
        Ok(())
    } else {
        Err(CryptoError::AuthenticationFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(h: &str) -> AesKey {
        AesKey::from_slice(&hex::decode(h).unwrap()).unwrap()
    }

    // NIST SP 800-38B Appendix D.1 (AES-128), D.2 (AES-192), D.3 (AES-256); D.1 is also
    // RFC 4493 section 4. Messages are prefixes of the SP 800-38A sample plaintext.
    const MSG: &str = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710";

    #[test]
    fn sp800_38b_known_answers() {
        let msg = hex::decode(MSG).unwrap();
        let cases = [
            (
                "2b7e151628aed2a6abf7158809cf4f3c",
                [
                    "bb1d6929e95937287fa37d129b756746",
                    "070a16b46b4d4144f79bdd9dd04a287c",
                    "dfa66747de9ae63030ca32611497c827",
                    "51f0bebf7e3b9d92fc49741779363cfe",
                ],
            ),
            (
                "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b",
                [
                    "d17ddf46adaacde531cac483de7a9367",
                    "9e99a7bf31e710900662f65e617c5184",
                    "8a1de5be2eb31aad089a82e6ee908b0e",
                    "a1d5df0eed790f794d77589659f39a11",
                ],
            ),
            (
                "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
                [
                    "028962f61b7bf89efc6b551f4667d983",
                    "28a7023f452e8f82bd4bf28d8c37c35c",
                    "aaf3d8f1de5640c232f5b169b9c911e6",
                    "e1992190549f6ed5696a2c056c315410",
                ],
            ),
        ];
        for (k, tags) in cases {
            let k = key(k);
            for (len, tag) in [0usize, 16, 40, 64].into_iter().zip(tags) {
                assert_eq!(hex::encode(cmac(&k, &[&msg[..len]])), tag, "key {k:?} len {len}");
                verify(&k, &[&msg[..len]], &hex::decode(tag).unwrap()[..8]).unwrap();
            }
        }
    }

    #[test]
    fn parts_are_concatenated_and_verify_rejects() {
        let k = key("2b7e151628aed2a6abf7158809cf4f3c");
        let msg = hex::decode(MSG).unwrap();
        assert_eq!(cmac(&k, &[&msg[..7], &msg[7..40]]), cmac(&k, &[&msg[..40]]));
        let mut tag = cmac(&k, &[&msg]);
        tag[3] ^= 1;
        assert_eq!(verify(&k, &[&msg], &tag), Err(CryptoError::AuthenticationFailed));
        assert!(matches!(verify(&k, &[&msg], &tag[..7]), Err(CryptoError::InvalidLength(_))));
    }
}
