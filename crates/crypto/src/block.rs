//! AES as a block cipher over any key length, and the CBC mode SCP03 needs (crate-internal).

use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes::{Aes128, Aes192, Aes256, Block};

use crate::keys::AesKey;
use crate::{CryptoError, Result};

/// AES block size in bytes.
pub(crate) const BLOCK: usize = 16;

/// An expanded AES key of any length. The key schedules zeroise on drop.
pub(crate) enum AesCipher {
    A128(Aes128),
    A192(Aes192),
    A256(Aes256),
}

impl AesCipher {
    pub(crate) fn new(key: &AesKey) -> Self {
        match key {
            AesKey::Aes128(k) => AesCipher::A128(Aes128::new(&(*k).into())),
            AesKey::Aes192(k) => AesCipher::A192(Aes192::new(&(*k).into())),
            AesKey::Aes256(k) => AesCipher::A256(Aes256::new(&(*k).into())),
        }
    }

    pub(crate) fn encrypt_block(&self, block: &mut [u8; BLOCK]) {
        let b: &mut Block = block.into();
        match self {
            AesCipher::A128(c) => c.encrypt_block(b),
            AesCipher::A192(c) => c.encrypt_block(b),
            AesCipher::A256(c) => c.encrypt_block(b),
        }
    }

    pub(crate) fn decrypt_block(&self, block: &mut [u8; BLOCK]) {
        let b: &mut Block = block.into();
        match self {
            AesCipher::A128(c) => c.decrypt_block(b),
            AesCipher::A192(c) => c.decrypt_block(b),
            AesCipher::A256(c) => c.decrypt_block(b),
        }
    }

    /// CBC encryption in place; `data` must be a whole number of blocks.
    pub(crate) fn cbc_encrypt(&self, iv: &[u8; BLOCK], data: &mut [u8]) -> Result<()> {
        if !data.len().is_multiple_of(BLOCK) {
            return Err(CryptoError::InvalidLength("CBC input not a multiple of 16 bytes"));
        }
        let mut prev = *iv;
        for chunk in data.chunks_exact_mut(BLOCK) {
            let mut b = [0u8; BLOCK];
            for (o, (x, p)) in b.iter_mut().zip(chunk.iter().zip(prev.iter())) {
                *o = x ^ p;
            }
            self.encrypt_block(&mut b);
            chunk.copy_from_slice(&b);
            prev = b;
        }
        Ok(())
    }

    /// CBC decryption in place; `data` must be a whole number of blocks.
    pub(crate) fn cbc_decrypt(&self, iv: &[u8; BLOCK], data: &mut [u8]) -> Result<()> {
        if !data.len().is_multiple_of(BLOCK) {
            return Err(CryptoError::InvalidLength("CBC input not a multiple of 16 bytes"));
        }
        let mut prev = *iv;
        for chunk in data.chunks_exact_mut(BLOCK) {
            let mut b = [0u8; BLOCK];
            b.copy_from_slice(chunk);
            let ct = b;
            self.decrypt_block(&mut b);
            for (o, (x, p)) in chunk.iter_mut().zip(b.iter().zip(prev.iter())) {
                *o = x ^ p;
            }
            prev = ct;
        }
        Ok(())
    }
}

/// ISO/IEC 9797-1 padding method 2, in place: append `80`, then `00` up to a multiple of
/// `BLOCK`.
pub(crate) fn pad_iso9797_m2(data: &mut Vec<u8>) {
    let padded = (data.len() / BLOCK + 1) * BLOCK;
    data.reserve_exact(padded - data.len());
    data.push(0x80);
    data.resize(padded, 0);
}

/// Removes ISO/IEC 9797-1 method 2 padding; the `80` must lie in the last block.
pub(crate) fn unpad_iso9797_m2(data: &[u8]) -> Result<&[u8]> {
    let bad = CryptoError::Malformed("ISO 9797-1 method 2 padding");
    if data.is_empty() || !data.len().is_multiple_of(BLOCK) {
        return Err(bad);
    }
    let last_block_start = data.len() - BLOCK;
    let mut i = data.len();
    while i > last_block_start {
        i -= 1;
        match data[i] {
            0x00 => continue,
            0x80 => return Ok(&data[..i]),
            _ => return Err(bad),
        }
    }
    Err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_block_known_answers() {
        // FIPS-197 Appendix C.1, C.2, C.3: plaintext 00112233445566778899aabbccddeeff.
        let pt: [u8; 16] =
            hex::decode("00112233445566778899aabbccddeeff").unwrap().try_into().unwrap();
        for (key, ct) in [
            ("000102030405060708090a0b0c0d0e0f", "69c4e0d86a7b0430d8cdb78070b4c55a"),
            (
                "000102030405060708090a0b0c0d0e0f1011121314151617",
                "dda97ca4864cdfe06eaf70a0ec0d7191",
            ),
            (
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                "8ea2b7ca516745bfeafc49904b496089",
            ),
        ] {
            let c = AesCipher::new(&AesKey::from_slice(&hex::decode(key).unwrap()).unwrap());
            let mut b = pt;
            c.encrypt_block(&mut b);
            assert_eq!(hex::encode(b), ct);
            c.decrypt_block(&mut b);
            assert_eq!(b, pt);
        }
    }

    #[test]
    fn cbc_known_answer() {
        // NIST SP 800-38A F.2.1 CBC-AES128.Encrypt, first two blocks.
        let key =
            AesKey::from_slice(&hex::decode("2b7e151628aed2a6abf7158809cf4f3c").unwrap()).unwrap();
        let iv: [u8; 16] =
            hex::decode("000102030405060708090a0b0c0d0e0f").unwrap().try_into().unwrap();
        let mut data =
            hex::decode("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
                .unwrap();
        let c = AesCipher::new(&key);
        c.cbc_encrypt(&iv, &mut data).unwrap();
        assert_eq!(
            hex::encode(&data),
            "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2"
        );
        c.cbc_decrypt(&iv, &mut data).unwrap();
        assert_eq!(
            hex::encode(&data),
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
        );
        assert!(c.cbc_encrypt(&iv, &mut [0u8; 15]).is_err());
    }

    #[test]
    fn padding_round_trip_and_rejects() {
        for n in 0..40 {
            let d: Vec<u8> = (0..n as u8).collect();
            let mut p = d.clone();
            pad_iso9797_m2(&mut p);
            assert_eq!(p.len() % 16, 0);
            assert!(p.len() > d.len());
            assert_eq!(unpad_iso9797_m2(&p).unwrap(), &d[..]);
        }
        assert!(unpad_iso9797_m2(&[0u8; 16]).is_err());
        assert!(unpad_iso9797_m2(&[]).is_err());
        let mut p = [0u8; 32];
        p[10] = 0x80; // 80 in the first block, whole last block zero
        assert!(unpad_iso9797_m2(&p).is_err());
        let mut q = [0u8; 16];
        q[15] = 0x01;
        assert!(unpad_iso9797_m2(&q).is_err());
    }
}
