//! Elliptic-curve Diffie-Hellman over P-256, with static and ephemeral keys.
//!
//! The shared secret is the x-coordinate of the shared point (SEC1 section 3.3.1), 32 bytes,
//! zeroised on drop. Feed it to a KDF with both parties' identities; never use it as a key.

use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use zeroize::Zeroizing;

use crate::ecdsa::PublicKey;
use crate::keys::AesKey;
use crate::rng::Rng;
use crate::{CryptoError, Result};

/// A long-lived ECDH private key (key agreement only; it never signs). Zeroised on drop.
#[derive(Clone)]
pub struct StaticSecret(p256::SecretKey);

/// A single-use ECDH private key: [`EphemeralSecret::diffie_hellman`] consumes it.
pub struct EphemeralSecret(p256::SecretKey);

/// The 32-byte ECDH shared secret (x-coordinate), zeroised on drop.
pub struct SharedSecret(Zeroizing<[u8; 32]>);

impl core::fmt::Debug for StaticSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "StaticSecret({:?})", self.public_key())
    }
}

impl core::fmt::Debug for EphemeralSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "EphemeralSecret({:?})", self.public_key())
    }
}

impl core::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

fn agree(sk: &p256::SecretKey, peer: &PublicKey) -> SharedSecret {
    let shared = p256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), peer.0.as_affine());
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(shared.raw_secret_bytes());
    SharedSecret(out)
}

impl StaticSecret {
    /// A fresh key from `rng`.
    pub fn generate<R: Rng + ?Sized>(rng: &mut R) -> Self {
        Self(<p256::SecretKey as p256::elliptic_curve::Generate>::generate_from_rng(rng))
    }

    /// A key from its 32-byte big-endian scalar.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        p256::SecretKey::from_slice(bytes)
            .map(Self)
            .map_err(|_| CryptoError::Malformed("P-256 private scalar"))
    }

    /// The 32-byte big-endian scalar. Do not log.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes().into())
    }

    /// Parses a PKCS#8 `PrivateKeyInfo` (DER).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        p256::SecretKey::from_pkcs8_der(der)
            .map(Self)
            .map_err(|_| CryptoError::Malformed("PKCS#8 P-256 private key"))
    }

    /// The PKCS#8 `PrivateKeyInfo` (DER).
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>> {
        let doc = self.0.to_pkcs8_der().map_err(|_| CryptoError::Malformed("PKCS#8 encoding"))?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.public_key())
    }

    /// The shared secret with `peer`.
    pub fn diffie_hellman(&self, peer: &PublicKey) -> SharedSecret {
        agree(&self.0, peer)
    }
}

impl EphemeralSecret {
    /// A fresh single-use key from `rng`.
    pub fn generate<R: Rng + ?Sized>(rng: &mut R) -> Self {
        Self(<p256::SecretKey as p256::elliptic_curve::Generate>::generate_from_rng(rng))
    }

    /// The matching public key, to send to the peer.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.public_key())
    }

    /// The shared secret with `peer`; the ephemeral key is consumed.
    pub fn diffie_hellman(self, peer: &PublicKey) -> SharedSecret {
        agree(&self.0, peer)
    }
}

impl SharedSecret {
    /// The 32 secret bytes. Do not log.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }

    /// Randomness extraction (NIST SP 800-56C rev. 2, section 5.1, two-step key derivation
    /// with AES-128-CMAC): `KDK = CMAC(salt, Z)`, with `salt` sixteen `00` bytes when `None`.
    /// The resulting AES-128 key derivation key then feeds [`crate::kdf::derive`] with a
    /// purpose label and a context naming both parties.
    pub fn extract(&self, salt: Option<&[u8; 16]>) -> AesKey {
        let salt = AesKey::Aes128(salt.copied().unwrap_or([0; 16]));
        AesKey::Aes128(crate::mac::cmac(&salt, &[&self.0[..]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;

    #[test]
    fn cavp_ecc_cdh_p256_known_answer() {
        // NIST CAVP "ECC CDH Primitive" test vectors (KAS_ECC_CDH_PrimitiveTest.txt), P-256,
        // COUNT = 0.
        let peer = PublicKey::from_sec1_bytes(
            &hex::decode(
                "04700c48f77f56584c5cc632ca65640db91b6bacce3a4df6b42ce7cc838833d287\
                 db71e509e3fd9b060ddb20ba5c51dcc5948d46fbf640dfe0441782cab85fa4ac",
            )
            .unwrap(),
        )
        .unwrap();
        let d = StaticSecret::from_bytes(
            &hex::decode("7d7dc5f71eb29ddaf80d6214632eeae03d9058af1fb6d22ed80badb62bc1a534")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            hex::encode(&d.public_key().to_sec1_bytes()[1..33]),
            "ead218590119e8876b29146ff89ca61770c4edbbf97d38ce385ed281d8a6b230"
        );
        assert_eq!(
            hex::encode(d.diffie_hellman(&peer).expose_secret()),
            "46fc62106420ff012e54a434fbdd2d25ccc5852060561e68040dd7778997bd7b"
        );
    }

    #[test]
    fn both_sides_agree_static_and_ephemeral() {
        let mut rng = SeededRng::from_u64(3);
        let a = StaticSecret::generate(&mut rng);
        let e = EphemeralSecret::generate(&mut rng);
        let epk = e.public_key();
        let s1 = e.diffie_hellman(&a.public_key());
        let s2 = a.diffie_hellman(&epk);
        assert_eq!(s1.expose_secret(), s2.expose_secret());
        let b = StaticSecret::from_pkcs8_der(&a.to_pkcs8_der().unwrap()).unwrap();
        assert_eq!(b.diffie_hellman(&epk).expose_secret(), s2.expose_secret());
        let c = StaticSecret::generate(&mut rng);
        assert_ne!(c.diffie_hellman(&epk).expose_secret(), s2.expose_secret());
        assert_eq!(s1.extract(None), s2.extract(None));
        assert_ne!(s1.extract(None), s2.extract(Some(&[1; 16])));
    }

    #[test]
    fn extraction_is_cmac_of_the_secret() {
        // Z from the CAVP vector above; KDK computed with Python `cryptography` 48
        // (cmac.CMAC(algorithms.AES(bytes(16))) over Z), an independent implementation.
        let z = SharedSecret(Zeroizing::new(
            hex::decode("46fc62106420ff012e54a434fbdd2d25ccc5852060561e68040dd7778997bd7b")
                .unwrap()
                .try_into()
                .unwrap(),
        ));
        assert_eq!(hex::encode(z.extract(None).expose_secret()), EXTRACTED);
    }

    const EXTRACTED: &str = "2b35df756942df4ac0625738348d3408";
}
