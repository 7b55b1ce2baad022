//! Hybrid public-key encryption, RFC 9180 base mode, with the one suite of the profile:
//! DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-128-GCM.
//!
//! Single-shot only: [`seal`] encapsulates to the recipient and encrypts one message; [`open`]
//! decapsulates and decrypts it. `info` binds the purpose (and, by tessera convention, the card
//! id and the object); `aad` binds what travels beside the ciphertext. The sealed form is the
//! 65-byte encapsulated key followed by the ciphertext and its 16-byte tag.

use hpke::aead::AesGcm128;
use hpke::kdf::HkdfSha256;
use hpke::kem::DhP256HkdfSha256;
use hpke::{Deserializable, Kem as KemTrait, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

use crate::ecdsa::PublicKey;
use crate::rng::Rng;
use crate::{CryptoError, Result};

type Kem = DhP256HkdfSha256;

/// Length of the encapsulated key (an uncompressed P-256 point).
pub const ENC_LEN: usize = 65;
/// Length of the AEAD tag that ends every ciphertext.
pub const TAG_LEN: usize = 16;

/// An HPKE recipient private key (decryption only; it never signs). Zeroised on drop.
#[derive(Clone)]
pub struct HpkePrivateKey(<Kem as KemTrait>::PrivateKey);

/// An HPKE recipient public key.
#[derive(Clone, PartialEq, Eq)]
pub struct HpkePublicKey(<Kem as KemTrait>::PublicKey);

impl core::fmt::Debug for HpkePrivateKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("HpkePrivateKey(..)")
    }
}

impl core::fmt::Debug for HpkePublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "HpkePublicKey({:?})", self.to_public_key())
    }
}

impl HpkePrivateKey {
    /// A fresh key pair from `rng`.
    pub fn generate<R: Rng + ?Sized>(rng: &mut R) -> Self {
        Self(Kem::gen_keypair_with_rng(&mut RngRef(rng)).0)
    }

    /// RFC 9180 `DeriveKeyPair(ikm)`: deterministic, for keys derived from other secrets.
    pub fn derive(ikm: &[u8]) -> Result<Self> {
        if ikm.len() < 32 {
            return Err(CryptoError::InvalidLength("HPKE key derivation needs 32 bytes of IKM"));
        }
        Ok(Self(Kem::derive_keypair(ikm).0))
    }

    /// A key from its 32-byte big-endian scalar.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        <Kem as KemTrait>::PrivateKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| CryptoError::Malformed("HPKE P-256 private key"))
    }

    /// The 32-byte scalar. Do not log.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.to_bytes().to_vec())
    }

    /// The matching public key.
    pub fn public_key(&self) -> HpkePublicKey {
        HpkePublicKey(Kem::sk_to_pk(&self.0))
    }
}

impl HpkePublicKey {
    /// Parses the 65-byte uncompressed SEC1 point.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        <Kem as KemTrait>::PublicKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| CryptoError::Malformed("HPKE P-256 public key"))
    }

    /// The 65-byte uncompressed SEC1 point.
    pub fn to_bytes(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        out.copy_from_slice(&self.0.to_bytes());
        out
    }

    /// The same point as a [`PublicKey`] (for certificates).
    pub fn to_public_key(&self) -> PublicKey {
        PublicKey::from_sec1_bytes(&self.to_bytes())
            .unwrap_or_else(|_| unreachable!("an HPKE public key is a valid P-256 point"))
    }

    /// The HPKE key for a P-256 public key (for example taken from a card's certificate).
    pub fn from_public_key(pk: &PublicKey) -> Self {
        Self::from_bytes(&pk.to_sec1_bytes())
            .unwrap_or_else(|_| unreachable!("a PublicKey is a valid P-256 point"))
    }
}

/// Adapts `&mut R` (possibly unsized) to the sized `impl CryptoRng` the hpke crate takes.
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

/// Seals `plaintext` to `recipient`: returns `enc (65 bytes) || ciphertext || tag (16)`.
pub fn seal<R: Rng + ?Sized>(
    rng: &mut R,
    recipient: &HpkePublicKey,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let (enc, ct) = hpke::single_shot_seal_with_rng::<AesGcm128, HkdfSha256, Kem>(
        &OpModeS::Base,
        &recipient.0,
        info,
        plaintext,
        aad,
        &mut RngRef(rng),
    )
    .map_err(|_| CryptoError::InvalidLength("HPKE seal failed"))?;
    let mut out = Vec::with_capacity(ENC_LEN + ct.len());
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens what [`seal`] produced, with the same `info` and `aad`.
pub fn open(
    recipient: &HpkePrivateKey,
    info: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    if sealed.len() < ENC_LEN + TAG_LEN {
        return Err(CryptoError::Malformed("HPKE sealed message too short"));
    }
    let (enc, ct) = sealed.split_at(ENC_LEN);
    let enc = <Kem as KemTrait>::EncappedKey::from_bytes(enc)
        .map_err(|_| CryptoError::Malformed("HPKE encapsulated key"))?;
    hpke::single_shot_open::<AesGcm128, HkdfSha256, Kem>(
        &OpModeR::Base,
        &recipient.0,
        &enc,
        info,
        ct,
        aad,
    )
    .map(Zeroizing::new)
    .map_err(|_| CryptoError::AuthenticationFailed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;
    use rand_core::{Infallible, TryCryptoRng, TryRng};

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// Hands out fixed bytes: the hpke crate draws an ephemeral key as DeriveKeyPair(32 random
    /// bytes), so feeding it ikmE reproduces the RFC's ephemeral key.
    struct FixedBytes(Vec<u8>);
    impl TryRng for FixedBytes {
        type Error = Infallible;
        fn try_next_u32(&mut self) -> core::result::Result<u32, Infallible> {
            unreachable!()
        }
        fn try_next_u64(&mut self) -> core::result::Result<u64, Infallible> {
            unreachable!()
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> core::result::Result<(), Infallible> {
            let rest = self.0.split_off(dst.len());
            dst.copy_from_slice(&self.0);
            self.0 = rest;
            Ok(())
        }
    }
    impl TryCryptoRng for FixedBytes {}

    // RFC 9180 Appendix A.3.1: DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, base mode,
    // sequence number 0.
    const INFO: &str = "4f6465206f6e2061204772656369616e2055726e";
    const IKM_E: &str = "4270e54ffd08d79d5928020af4686d8f6b7d35dbe470265f1f5aa22816ce860e";
    const IKM_R: &str = "668b37171f1072f3cf12ea8a236a45df23fc13b82af3609ad1e354f6ef817550";
    const PK_RM: &str = "04fe8c19ce0905191ebc298a9245792531f26f0cece2460639e8bc39cb7f706a826a779b4cf969b8a0e539c7f62fb3d30ad6aa8f80e30f1d128aafd68a2ce72ea0";
    const SK_RM: &str = "f3ce7fdae57e1a310d87f1ebbde6f328be0a99cdbcadf4d6589cf29de4b8ffd2";
    const ENC: &str = "04a92719c6195d5085104f469a8b9814d5838ff72b60501e2c4466e5e67b325ac98536d7b61a1af4b78e5b7f951c0900be863c403ce65c9bfcb9382657222d18c4";
    const PT: &str = "4265617574792069732074727574682c20747275746820626561757479";
    const AAD: &str = "436f756e742d30";
    const CT: &str = "5ad590bb8baa577f8619db35a36311226a896e7342a6d836d8b7bcd2f20b6c7f9076ac232e3ab2523f39513434";

    #[test]
    fn rfc9180_a31_known_answer() {
        let sk = HpkePrivateKey::derive(&h(IKM_R)).unwrap();
        assert_eq!(hex::encode(&*sk.to_bytes()), SK_RM);
        assert_eq!(hex::encode(sk.public_key().to_bytes()), PK_RM);
        let pk = HpkePublicKey::from_bytes(&h(PK_RM)).unwrap();
        let sealed = seal(&mut FixedBytes(h(IKM_E)), &pk, &h(INFO), &h(AAD), &h(PT)).unwrap();
        assert_eq!(hex::encode(&sealed), format!("{ENC}{CT}"));
        let sk = HpkePrivateKey::from_bytes(&h(SK_RM)).unwrap();
        assert_eq!(&open(&sk, &h(INFO), &h(AAD), &sealed).unwrap()[..], &h(PT)[..]);
    }

    #[test]
    fn open_rejects_wrong_context_key_or_tampering() {
        let mut rng = SeededRng::from_u64(4);
        let sk = HpkePrivateKey::generate(&mut rng);
        let pk = sk.public_key();
        let sealed = seal(&mut rng, &pk, b"tessera update card-1", b"obj", b"secret").unwrap();
        assert_eq!(sealed.len(), ENC_LEN + 6 + TAG_LEN);
        assert_eq!(&open(&sk, b"tessera update card-1", b"obj", &sealed).unwrap()[..], b"secret");
        let fail = Err(CryptoError::AuthenticationFailed);
        assert_eq!(open(&sk, b"tessera update card-2", b"obj", &sealed), fail);
        assert_eq!(open(&sk, b"tessera update card-1", b"obx", &sealed), fail);
        let other = HpkePrivateKey::generate(&mut rng);
        assert_eq!(open(&other, b"tessera update card-1", b"obj", &sealed), fail);
        for i in [0usize, 1, 40, 64, 65, sealed.len() - 1] {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(open(&sk, b"tessera update card-1", b"obj", &t).is_err(), "flip at {i}");
        }
        assert!(open(&sk, b"", b"", &sealed[..ENC_LEN + TAG_LEN - 1]).is_err());
        // Converting through PublicKey keeps the point.
        assert_eq!(HpkePublicKey::from_public_key(&pk.to_public_key()), pk);
        assert!(HpkePrivateKey::derive(&[0; 31]).is_err());
    }
}
