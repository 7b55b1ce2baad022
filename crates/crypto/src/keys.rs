//! Symmetric key types.

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::rng::{Rng, random_array};
use crate::{CryptoError, Result};

/// The length of an AES key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AesKeyLen {
    /// 16 bytes.
    Aes128,
    /// 24 bytes.
    Aes192,
    /// 32 bytes.
    Aes256,
}

impl AesKeyLen {
    /// Length in bytes.
    pub const fn bytes(self) -> usize {
        match self {
            AesKeyLen::Aes128 => 16,
            AesKeyLen::Aes192 => 24,
            AesKeyLen::Aes256 => 32,
        }
    }

    /// The key length for `n` bytes, if AES accepts it.
    pub const fn from_bytes(n: usize) -> Option<Self> {
        match n {
            16 => Some(AesKeyLen::Aes128),
            24 => Some(AesKeyLen::Aes192),
            32 => Some(AesKeyLen::Aes256),
            _ => None,
        }
    }
}

/// An AES key of 128, 192 or 256 bits, zeroised on drop.
///
/// `Debug` prints only the length; equality is constant-time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub enum AesKey {
    /// AES-128.
    Aes128([u8; 16]),
    /// AES-192.
    Aes192([u8; 24]),
    /// AES-256.
    Aes256([u8; 32]),
}

impl AesKey {
    /// A key from its raw bytes (16, 24 or 32 of them).
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        Ok(match bytes.len() {
            16 => AesKey::Aes128(bytes.try_into().map_err(|_| CryptoError::InvalidKeyLength(16))?),
            24 => AesKey::Aes192(bytes.try_into().map_err(|_| CryptoError::InvalidKeyLength(24))?),
            32 => AesKey::Aes256(bytes.try_into().map_err(|_| CryptoError::InvalidKeyLength(32))?),
            n => return Err(CryptoError::InvalidKeyLength(n)),
        })
    }

    /// A fresh random key of the given length.
    pub fn generate<R: Rng + ?Sized>(len: AesKeyLen, rng: &mut R) -> Self {
        match len {
            AesKeyLen::Aes128 => AesKey::Aes128(random_array(rng)),
            AesKeyLen::Aes192 => AesKey::Aes192(random_array(rng)),
            AesKeyLen::Aes256 => AesKey::Aes256(random_array(rng)),
        }
    }

    /// The key's length.
    pub fn len(&self) -> AesKeyLen {
        match self {
            AesKey::Aes128(_) => AesKeyLen::Aes128,
            AesKey::Aes192(_) => AesKeyLen::Aes192,
            AesKey::Aes256(_) => AesKeyLen::Aes256,
        }
    }

    /// The raw key bytes, for storing the key in a protected place or wrapping it. Do not log.
    pub fn expose_secret(&self) -> &[u8] {
        match self {
            AesKey::Aes128(k) => k,
            AesKey::Aes192(k) => k,
            AesKey::Aes256(k) => k,
        }
    }
}

impl core::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "AesKey({:?}, ..)", self.len())
    }
}

impl PartialEq for AesKey {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && bool::from(self.expose_secret().ct_eq(other.expose_secret()))
    }
}

impl Eq for AesKey {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;

    #[test]
    fn from_slice_checks_length() {
        assert_eq!(AesKey::from_slice(&[0; 16]).unwrap().len(), AesKeyLen::Aes128);
        assert_eq!(AesKey::from_slice(&[0; 24]).unwrap().len(), AesKeyLen::Aes192);
        assert_eq!(AesKey::from_slice(&[0; 32]).unwrap().len(), AesKeyLen::Aes256);
        assert_eq!(AesKey::from_slice(&[0; 17]), Err(CryptoError::InvalidKeyLength(17)));
    }

    #[test]
    fn debug_hides_bytes_and_eq_compares() {
        let mut rng = SeededRng::from_u64(1);
        let k = AesKey::generate(AesKeyLen::Aes256, &mut rng);
        assert_eq!(format!("{k:?}"), "AesKey(Aes256, ..)");
        assert_eq!(k, AesKey::from_slice(k.expose_secret()).unwrap());
        assert_ne!(k, AesKey::generate(AesKeyLen::Aes256, &mut rng));
    }
}
