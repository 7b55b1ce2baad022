//! AES-CMAC (NIST SP 800-38B, RFC 4493) over AES-128, AES-192 and AES-256 keys.
//!
//! Built directly on the AES block cipher (the `aes` crate, as everything else here) rather than
//! on a CMAC crate: SCP03 computes four MACs per APDU under two long-lived keys, and keeping the
//! key schedule and both subkeys for the whole session makes a MAC cost only its message's
//! blocks. Checked against every SP 800-38B example below.

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::block::{AesCipher, BLOCK};
use crate::keys::AesKey;
use crate::{CryptoError, Result};

/// Length of a full CMAC tag.
pub const CMAC_LEN: usize = 16;
/// Shortest truncated tag [`verify`] accepts.
pub const MIN_TAG_LEN: usize = 8;

/// Doubling in GF(2^128) with the CMAC polynomial (SP 800-38B section 6.1), in constant time.
fn dbl(block: &[u8; BLOCK]) -> [u8; BLOCK] {
    let v = u128::from_be_bytes(*block);
    let carry = (v >> 127) as u8;
    let mut out = (v << 1).to_be_bytes();
    out[BLOCK - 1] ^= 0x87 & 0u8.wrapping_sub(carry);
    out
}

/// An incremental AES-CMAC computation. For many MACs under one key, keep one and use
/// [`AesCmac::finalize_reset`]: the key schedule and the subkeys are computed once.
pub struct AesCmac {
    cipher: AesCipher,
    /// Subkeys K1 (complete last block) and K2 (padded last block).
    k1: [u8; BLOCK],
    k2: [u8; BLOCK],
    /// Chaining value over the blocks processed so far.
    state: [u8; BLOCK],
    /// The last, not yet processed block (it may be the final one); `pos` bytes of it are fed.
    pending: [u8; BLOCK],
    pos: usize,
}

impl Drop for AesCmac {
    fn drop(&mut self) {
        self.k1.zeroize();
        self.k2.zeroize();
        self.state.zeroize();
        self.pending.zeroize();
    }
}

impl AesCmac {
    /// Starts a MAC under `key`.
    pub fn new(key: &AesKey) -> Self {
        let cipher = AesCipher::new(key);
        let mut l = [0u8; BLOCK];
        cipher.encrypt_block(&mut l);
        let k1 = dbl(&l);
        let k2 = dbl(&k1);
        l.zeroize();
        AesCmac { cipher, k1, k2, state: [0; BLOCK], pending: [0; BLOCK], pos: 0 }
    }

    /// Feeds more message bytes.
    pub fn update(&mut self, mut data: &[u8]) -> &mut Self {
        while !data.is_empty() {
            if self.pos == BLOCK {
                // More input follows, so the pending block is not the last one: process it.
                for (s, p) in self.state.iter_mut().zip(self.pending.iter()) {
                    *s ^= p;
                }
                self.cipher.encrypt_block(&mut self.state);
                self.pos = 0;
            }
            let n = (BLOCK - self.pos).min(data.len());
            self.pending[self.pos..self.pos + n].copy_from_slice(&data[..n]);
            self.pos += n;
            data = &data[n..];
        }
        self
    }

    /// The 16-byte tag, leaving the computation keyed and empty for the next message.
    pub fn finalize_reset(&mut self) -> [u8; CMAC_LEN] {
        let subkey = if self.pos == BLOCK {
            &self.k1
        } else {
            self.pending[self.pos] = 0x80;
            self.pending[self.pos + 1..].fill(0);
            &self.k2
        };
        let mut tag = self.state;
        for ((t, p), k) in tag.iter_mut().zip(self.pending.iter()).zip(subkey.iter()) {
            *t ^= p ^ k;
        }
        self.cipher.encrypt_block(&mut tag);
        self.state = [0; BLOCK];
        self.pending.zeroize();
        self.pos = 0;
        tag
    }

    /// The 16-byte tag.
    pub fn finalize(mut self) -> [u8; CMAC_LEN] {
        self.finalize_reset()
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
    fn finalize_reset_starts_the_next_message_afresh() {
        let k = key("2b7e151628aed2a6abf7158809cf4f3c");
        let msg = hex::decode(MSG).unwrap();
        let mut m = AesCmac::new(&k);
        for len in [0usize, 1, 15, 16, 17, 40, 64, 3, 0] {
            // Fed byte by byte, so every buffer boundary is crossed.
            for b in &msg[..len] {
                m.update(core::slice::from_ref(b));
            }
            assert_eq!(m.finalize_reset(), cmac(&k, &[&msg[..len]]), "len {len}");
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
