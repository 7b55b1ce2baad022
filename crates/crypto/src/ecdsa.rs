//! ECDSA over P-256 with SHA-256: keys, signatures and their encodings.
//!
//! Signing is deterministic (RFC 6979), so it needs no generator and a card signs the same
//! structure the same way on a replayed command. Verification accepts fixed-size (`r || s`,
//! 64 bytes) and DER signatures through [`Signature`].

use p256::ecdsa::signature::{Signer, Verifier};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use zeroize::Zeroizing;

use crate::rng::Rng;
use crate::{CryptoError, Result};

/// An ECDSA P-256 signing key; zeroised on drop. Signs only; it never does key agreement.
#[derive(Clone)]
pub struct SigningKey(p256::ecdsa::SigningKey);

/// A P-256 public key (a point on the curve, never the identity).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PublicKey(pub(crate) p256::PublicKey);

/// An ECDSA P-256 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(p256::ecdsa::Signature);

impl core::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SigningKey({:?})", self.public_key())
    }
}

impl core::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let b = self.to_sec1_bytes();
        write!(f, "PublicKey(")?;
        for x in &b[1..9] {
            write!(f, "{x:02x}")?;
        }
        write!(f, "..)")
    }
}

impl core::fmt::Debug for Signature {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Signature(")?;
        for x in &self.to_bytes()[..8] {
            write!(f, "{x:02x}")?;
        }
        write!(f, "..)")
    }
}

impl SigningKey {
    /// A fresh key from `rng`.
    pub fn generate<R: Rng + ?Sized>(rng: &mut R) -> Self {
        Self(<p256::ecdsa::SigningKey as p256::elliptic_curve::Generate>::generate_from_rng(rng))
    }

    /// A key from its 32-byte big-endian scalar.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        p256::ecdsa::SigningKey::from_slice(bytes)
            .map(Self)
            .map_err(|_| CryptoError::Malformed("P-256 private scalar"))
    }

    /// The 32-byte big-endian scalar. Do not log.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes().into())
    }

    /// Parses a PKCS#8 `PrivateKeyInfo` (DER) holding a P-256 key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        p256::ecdsa::SigningKey::from_pkcs8_der(der)
            .map(Self)
            .map_err(|_| CryptoError::Malformed("PKCS#8 P-256 private key"))
    }

    /// The PKCS#8 `PrivateKeyInfo` (DER), with the public key included.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>> {
        let doc = self.0.to_pkcs8_der().map_err(|_| CryptoError::Malformed("PKCS#8 encoding"))?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(p256::PublicKey::from_affine(*self.0.verifying_key().as_affine()).unwrap_or_else(
            |_| unreachable!("the public key of a valid signing key is never the identity"),
        ))
    }

    /// Signs `message` (hashed with SHA-256), deterministically per RFC 6979.
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.0.sign(message))
    }
}

impl PublicKey {
    /// Parses a SEC1 point (65-byte uncompressed or 33-byte compressed).
    pub fn from_sec1_bytes(bytes: &[u8]) -> Result<Self> {
        p256::PublicKey::from_sec1_bytes(bytes)
            .map(Self)
            .map_err(|_| CryptoError::Malformed("SEC1 P-256 point"))
    }

    /// The 65-byte uncompressed SEC1 encoding `04 || x || y`.
    pub fn to_sec1_bytes(&self) -> [u8; 65] {
        let b = self.0.to_sec1_bytes();
        let mut out = [0u8; 65];
        out.copy_from_slice(&b);
        out
    }

    /// The 33-byte compressed SEC1 encoding `02|03 || x`.
    pub fn to_sec1_compressed(&self) -> [u8; 33] {
        use p256::elliptic_curve::sec1::ToSec1Point;
        let p = self.0.to_sec1_point(true);
        let mut out = [0u8; 33];
        out.copy_from_slice(p.as_bytes());
        out
    }

    /// Parses a DER `SubjectPublicKeyInfo` holding a P-256 key.
    pub fn from_spki_der(der: &[u8]) -> Result<Self> {
        p256::PublicKey::from_public_key_der(der)
            .map(Self)
            .map_err(|_| CryptoError::Malformed("SubjectPublicKeyInfo P-256 key"))
    }

    /// The DER `SubjectPublicKeyInfo` (id-ecPublicKey, prime256v1, uncompressed point).
    pub fn to_spki_der(&self) -> Result<Vec<u8>> {
        self.0
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .map_err(|_| CryptoError::Malformed("SubjectPublicKeyInfo encoding"))
    }

    /// Verifies `signature` over `message` (hashed with SHA-256).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<()> {
        let vk = p256::ecdsa::VerifyingKey::from(self.0);
        vk.verify(message, &signature.0).map_err(|_| CryptoError::BadSignature)
    }
}

impl Signature {
    /// Parses the 64-byte fixed-size encoding `r || s`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        p256::ecdsa::Signature::from_slice(bytes)
            .map(Self)
            .map_err(|_| CryptoError::Malformed("P-256 signature (r || s)"))
    }

    /// The 64-byte fixed-size encoding `r || s`.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0.to_bytes().into()
    }

    /// Parses a DER `Ecdsa-Sig-Value` (`SEQUENCE { r INTEGER, s INTEGER }`).
    pub fn from_der(der: &[u8]) -> Result<Self> {
        p256::ecdsa::Signature::from_der(der)
            .map(Self)
            .map_err(|_| CryptoError::Malformed("DER ECDSA signature"))
    }

    /// The DER `Ecdsa-Sig-Value`.
    pub fn to_der(&self) -> Vec<u8> {
        self.0.to_der().as_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace([' ', '\n'], "")).unwrap()
    }

    #[test]
    fn rfc6979_a25_known_answers() {
        // RFC 6979 Appendix A.2.5, P-256 with SHA-256: key, public key, "sample" and "test".
        let k = SigningKey::from_bytes(&h(
            "C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721",
        ))
        .unwrap();
        let pk = k.public_key().to_sec1_bytes();
        assert_eq!(
            hex::encode_upper(&pk[1..33]),
            "60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6"
        );
        assert_eq!(
            hex::encode_upper(&pk[33..]),
            "7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299"
        );
        for (msg, r, s) in [
            (
                "sample",
                "EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716",
                "F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8",
            ),
            (
                "test",
                "F1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367",
                "019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083",
            ),
        ] {
            let sig = k.sign(msg.as_bytes());
            assert_eq!(hex::encode_upper(sig.to_bytes()), format!("{r}{s}"));
            k.public_key().verify(msg.as_bytes(), &sig).unwrap();
        }
    }

    #[test]
    fn encodings_round_trip() {
        let k = SigningKey::generate(&mut SeededRng::from_u64(1));
        let pk = k.public_key();
        let sig = k.sign(b"msg");
        // DER signature: SEQUENCE of two INTEGERs.
        let der = sig.to_der();
        assert_eq!(der[0], 0x30);
        assert_eq!(Signature::from_der(&der).unwrap(), sig);
        assert_eq!(Signature::from_bytes(&sig.to_bytes()).unwrap(), sig);
        // SEC1 both forms, SPKI, PKCS#8.
        assert_eq!(PublicKey::from_sec1_bytes(&pk.to_sec1_bytes()).unwrap(), pk);
        assert_eq!(PublicKey::from_sec1_bytes(&pk.to_sec1_compressed()).unwrap(), pk);
        let spki = pk.to_spki_der().unwrap();
        assert_eq!(spki.len(), 91);
        assert_eq!(PublicKey::from_spki_der(&spki).unwrap(), pk);
        let p8 = k.to_pkcs8_der().unwrap();
        let k2 = SigningKey::from_pkcs8_der(&p8).unwrap();
        assert_eq!(k2.public_key(), pk);
        assert_eq!(*k2.to_bytes(), *k.to_bytes());
        assert!(format!("{k:?}").starts_with("SigningKey(PublicKey("));
    }

    #[test]
    fn verify_rejects_and_parsers_refuse_garbage() {
        let mut rng = SeededRng::from_u64(2);
        let k = SigningKey::generate(&mut rng);
        let other = SigningKey::generate(&mut rng);
        let sig = k.sign(b"msg");
        assert_eq!(k.public_key().verify(b"msG", &sig), Err(CryptoError::BadSignature));
        assert_eq!(other.public_key().verify(b"msg", &sig), Err(CryptoError::BadSignature));
        let mut bad = sig.to_bytes();
        bad[40] ^= 1;
        if let Ok(s) = Signature::from_bytes(&bad) {
            assert!(k.public_key().verify(b"msg", &s).is_err());
        }
        assert!(Signature::from_bytes(&[0u8; 64]).is_err());
        assert!(Signature::from_bytes(&[1u8; 63]).is_err());
        assert!(Signature::from_der(&[0x30, 0x02, 0x02, 0x00]).is_err());
        assert!(PublicKey::from_sec1_bytes(&[0x04; 65]).is_err());
        assert!(PublicKey::from_sec1_bytes(&[0x00]).is_err());
        assert!(PublicKey::from_spki_der(&[0x30, 0x00]).is_err());
        assert!(SigningKey::from_bytes(&[0u8; 32]).is_err());
        assert!(SigningKey::from_bytes(&[0xFFu8; 32]).is_err());
        assert!(SigningKey::from_pkcs8_der(b"not der").is_err());
    }
}
