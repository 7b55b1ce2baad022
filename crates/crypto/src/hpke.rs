//! Hybrid public-key encryption, RFC 9180 base mode, single shot, with DHKEM(P-256,
//! HKDF-SHA256) and HKDF-SHA256, and one of two AEADs:
//!
//! - [`Aead::Aes128Gcm`], the profile's suite ([`seal`], [`open`]);
//! - [`Aead::ChaCha20Poly1305`], which age fixes for its `p256tag` recipient (`crate::age`).
//!
//! [`seal`] encapsulates to the recipient and encrypts one message; [`open`] decapsulates and
//! decrypts it. `info` binds the purpose (and, by tessera convention, the card id and the
//! object); `aad` binds what travels beside the ciphertext. The sealed form is the 65-byte
//! encapsulated key followed by the ciphertext and its 16-byte tag.
//!
//! How the two halves are computed:
//!
//! - **Encapsulation** draws its ephemeral key from the operating system's generator and does
//!   its two P-256 operations (the ephemeral public key and the shared point) with `ring`,
//!   the workspace's TLS crypto provider: an ephemeral key is exactly what `ring`'s ECDH
//!   offers, and it is several times faster than the portable arithmetic.
//! - **Decapsulation** multiplies the encapsulated point by the recipient's static scalar with
//!   the `p256` crate (`ring` does not offer static ECDH keys). The recipient's public key,
//!   which the KEM context needs, is computed once when the key is loaded and kept with it.
//!
//! The key schedule (`LabeledExtract`, `LabeledExpand`, `ExtractAndExpand`, `KeySchedule`) is
//! written out here, checked against the RFC's appendix A.3 and A.5 vectors.

use aes_gcm::Aes128Gcm;
use aes_gcm::aead::{Aead as _, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use hkdf::{Hkdf, HkdfExtract};
use p256::NonZeroScalar;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::ecdsa::PublicKey;
use crate::rng::Rng;
use crate::{CryptoError, Result};

/// Length of the encapsulated key (an uncompressed P-256 point).
pub const ENC_LEN: usize = 65;
/// Length of the AEAD tag that ends every ciphertext.
pub const TAG_LEN: usize = 16;

/// RFC 9180 KEM id of DHKEM(P-256, HKDF-SHA256).
const KEM_ID: u16 = 0x0010;
/// RFC 9180 KDF id of HKDF-SHA256.
const KDF_ID: u16 = 0x0001;
/// Length of the KEM's shared secret (`Nsecret`).
const SECRET_LEN: usize = 32;
/// Length of every AEAD nonce here (`Nn`).
const NONCE_LEN: usize = 12;

/// The AEAD of an HPKE suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aead {
    /// AES-128-GCM (RFC 9180 id `0x0001`): the profile's suite.
    Aes128Gcm,
    /// ChaCha20-Poly1305 (RFC 9180 id `0x0003`): age's `p256tag` suite.
    ChaCha20Poly1305,
}

impl Aead {
    fn id(self) -> u16 {
        match self {
            Aead::Aes128Gcm => 0x0001,
            Aead::ChaCha20Poly1305 => 0x0003,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Aead::Aes128Gcm => 16,
            Aead::ChaCha20Poly1305 => 32,
        }
    }

    fn seal(self, key: &[u8], nonce: &[u8; NONCE_LEN], aad: &[u8], pt: &[u8]) -> Result<Vec<u8>> {
        let payload = Payload { msg: pt, aad };
        let sealed = match self {
            Aead::Aes128Gcm => Aes128Gcm::new_from_slice(key)
                .map_err(|_| CryptoError::InvalidKeyLength(key.len()))?
                .encrypt(nonce.into(), payload),
            Aead::ChaCha20Poly1305 => ChaCha20Poly1305::new_from_slice(key)
                .map_err(|_| CryptoError::InvalidKeyLength(key.len()))?
                .encrypt(nonce.into(), payload),
        };
        sealed.map_err(|_| CryptoError::InvalidLength("HPKE plaintext too long"))
    }

    fn open(
        self,
        key: &[u8],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ct: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let payload = Payload { msg: ct, aad };
        let opened = match self {
            Aead::Aes128Gcm => Aes128Gcm::new_from_slice(key)
                .map_err(|_| CryptoError::InvalidKeyLength(key.len()))?
                .decrypt(nonce.into(), payload),
            Aead::ChaCha20Poly1305 => ChaCha20Poly1305::new_from_slice(key)
                .map_err(|_| CryptoError::InvalidKeyLength(key.len()))?
                .decrypt(nonce.into(), payload),
        };
        opened.map(Zeroizing::new).map_err(|_| CryptoError::AuthenticationFailed)
    }
}

/// An HPKE recipient private key (decryption only; it never signs), with its public key.
/// Zeroised on drop.
#[derive(Clone)]
pub struct HpkePrivateKey {
    scalar: NonZeroScalar,
    public: HpkePublicKey,
}

/// An HPKE recipient public key: a P-256 point, kept with its uncompressed encoding.
#[derive(Clone, PartialEq, Eq)]
pub struct HpkePublicKey {
    point: PublicKey,
    bytes: [u8; ENC_LEN],
}

impl Drop for HpkePrivateKey {
    fn drop(&mut self) {
        self.scalar.zeroize();
    }
}

impl core::fmt::Debug for HpkePrivateKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("HpkePrivateKey(..)")
    }
}

impl core::fmt::Debug for HpkePublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "HpkePublicKey({:?})", self.point)
    }
}

impl HpkePrivateKey {
    /// A fresh key pair from `rng`.
    pub fn generate<R: Rng + ?Sized>(rng: &mut R) -> Self {
        loop {
            let mut candidate = Zeroizing::new([0u8; 32]);
            rng.fill_random(candidate.as_mut_slice());
            if let Ok(key) = Self::from_bytes(candidate.as_slice()) {
                return key;
            }
        }
    }

    /// RFC 9180 `DeriveKeyPair(ikm)` for P-256 (section 7.1.3): deterministic, for keys
    /// derived from other secrets. `ikm` must hold at least 32 bytes.
    pub fn derive(ikm: &[u8]) -> Result<Self> {
        if ikm.len() < 32 {
            return Err(CryptoError::InvalidLength("HPKE key derivation needs 32 bytes of IKM"));
        }
        let suite = kem_suite_id();
        let prk = labeled_extract(&suite, b"", b"dkp_prk", &[ikm]);
        for counter in 0..=255u8 {
            let mut candidate = Zeroizing::new([0u8; 32]);
            labeled_expand(&suite, &prk, b"candidate", &[&[counter]], candidate.as_mut_slice())?;
            // The P-256 bitmask is 0xff: nothing to clear.
            if let Ok(key) = Self::from_bytes(candidate.as_slice()) {
                return Ok(key);
            }
        }
        Err(CryptoError::Malformed("HPKE DeriveKeyPair found no valid scalar"))
    }

    /// A key from its 32-byte big-endian scalar (the public key is computed here, once).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let sk = p256::SecretKey::from_slice(bytes)
            .map_err(|_| CryptoError::Malformed("HPKE P-256 private key"))?;
        let public = HpkePublicKey::from_public_key(&PublicKey(sk.public_key()));
        Ok(Self { scalar: sk.to_nonzero_scalar(), public })
    }

    /// A key from its scalar and the public key stored beside it, without recomputing the
    /// public key (a P-256 multiplication). A pair that does not match opens nothing: the
    /// public key is part of the KEM context, so every [`open`] fails.
    pub fn from_stored(scalar: &[u8], public: &[u8]) -> Result<Self> {
        let sk = p256::SecretKey::from_slice(scalar)
            .map_err(|_| CryptoError::Malformed("HPKE P-256 private key"))?;
        Ok(Self { scalar: sk.to_nonzero_scalar(), public: HpkePublicKey::from_bytes(public)? })
    }

    /// The 32-byte scalar. Do not log.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.scalar.to_bytes().to_vec())
    }

    /// The matching public key.
    pub fn public_key(&self) -> HpkePublicKey {
        self.public.clone()
    }
}

impl HpkePublicKey {
    /// Parses the 65-byte uncompressed SEC1 point.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bytes: [u8; ENC_LEN] =
            bytes.try_into().map_err(|_| CryptoError::Malformed("HPKE P-256 public key"))?;
        if bytes[0] != 0x04 {
            return Err(CryptoError::Malformed("HPKE P-256 public key"));
        }
        let point = PublicKey::from_sec1_bytes(&bytes)
            .map_err(|_| CryptoError::Malformed("HPKE P-256 public key"))?;
        Ok(Self { point, bytes })
    }

    /// The 65-byte uncompressed SEC1 point.
    pub fn to_bytes(&self) -> [u8; ENC_LEN] {
        self.bytes
    }

    /// The same point as a [`PublicKey`] (for certificates).
    pub fn to_public_key(&self) -> PublicKey {
        self.point
    }

    /// The HPKE key for a P-256 public key (for example taken from a card's certificate).
    pub fn from_public_key(pk: &PublicKey) -> Self {
        Self { point: *pk, bytes: pk.to_sec1_bytes() }
    }
}

/// Seals `plaintext` to `recipient` with AES-128-GCM: returns `enc (65 bytes) || ciphertext ||
/// tag (16)`.
pub fn seal(
    recipient: &HpkePublicKey,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let (enc, ct) = seal_with(Aead::Aes128Gcm, recipient, info, aad, plaintext)?;
    let mut out = Vec::with_capacity(ENC_LEN + ct.len());
    out.extend_from_slice(&enc);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// [`seal`] with the ephemeral key drawn from `rng` and computed in the portable `p256`
/// arithmetic (several times slower than [`seal`]'s `ring`): for callers that supply their own
/// randomness, such as an injected generator or test scenarios that must replay byte for byte
/// (the card's tearing test).
pub fn seal_with_rng<R: Rng + ?Sized>(
    rng: &mut R,
    recipient: &HpkePublicKey,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let ephemeral = HpkePrivateKey::generate(rng);
    let (enc, shared) = encap_with(&ephemeral, recipient)?;
    let (key, nonce) = key_schedule(Aead::Aes128Gcm, &shared, info)?;
    let ct = Aead::Aes128Gcm.seal(&key, &nonce, aad, plaintext)?;
    Ok([&enc[..], &ct].concat())
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
    open_with(Aead::Aes128Gcm, recipient, enc, info, aad, ct)
}

/// Seals `plaintext` to `recipient` with `aead`: returns the encapsulated key and the
/// ciphertext with its tag.
pub fn seal_with(
    aead: Aead,
    recipient: &HpkePublicKey,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; ENC_LEN], Vec<u8>)> {
    let (enc, shared) = encap(recipient)?;
    let (key, nonce) = key_schedule(aead, &shared, info)?;
    Ok((enc, aead.seal(&key, &nonce, aad, plaintext)?))
}

/// Opens a ciphertext sealed with `aead` to `recipient`, given its encapsulated key.
/// [`CryptoError::AuthenticationFailed`] when it was not sealed to this key with this `info`
/// and `aad`, or was modified.
pub fn open_with(
    aead: Aead,
    recipient: &HpkePrivateKey,
    enc: &[u8],
    info: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let shared = decap(recipient, enc)?;
    let (key, nonce) = key_schedule(aead, &shared, info)?;
    aead.open(&key, &nonce, aad, ciphertext)
}

/// `Encap(pkR)` with a fresh ephemeral key from the operating system, in `ring`.
fn encap(recipient: &HpkePublicKey) -> Result<([u8; ENC_LEN], Zeroizing<[u8; SECRET_LEN]>)> {
    use ring::agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral};
    let rng = ring::rand::SystemRandom::new();
    let ephemeral = EphemeralPrivateKey::generate(&ECDH_P256, &rng)
        .map_err(|_| CryptoError::Malformed("no randomness for the HPKE ephemeral key"))?;
    let enc: [u8; ENC_LEN] = ephemeral
        .compute_public_key()
        .map_err(|_| CryptoError::Malformed("HPKE ephemeral public key"))?
        .as_ref()
        .try_into()
        .map_err(|_| CryptoError::Malformed("HPKE ephemeral public key"))?;
    let peer = UnparsedPublicKey::new(&ECDH_P256, recipient.bytes);
    let shared =
        agree_ephemeral(ephemeral, &peer, |dh| extract_and_expand(dh, &enc, &recipient.bytes))
            .map_err(|_| CryptoError::Malformed("HPKE P-256 public key"))??;
    Ok((enc, shared))
}

/// `Decap(enc, skR)`: the shared point in `p256`, the KEM context with the stored public key.
fn decap(recipient: &HpkePrivateKey, enc: &[u8]) -> Result<Zeroizing<[u8; SECRET_LEN]>> {
    let point = HpkePublicKey::from_bytes(enc)
        .map_err(|_| CryptoError::Malformed("HPKE encapsulated key"))?;
    let dh = p256::ecdh::diffie_hellman(recipient.scalar, point.point.0.as_affine());
    extract_and_expand(dh.raw_secret_bytes(), &point.bytes, &recipient.public.bytes)
}

/// `Encap(pkR)` with a given ephemeral key, in `p256` ([`seal_with_rng`], the RFC's vectors).
fn encap_with(
    ephemeral: &HpkePrivateKey,
    recipient: &HpkePublicKey,
) -> Result<([u8; ENC_LEN], Zeroizing<[u8; SECRET_LEN]>)> {
    let dh = p256::ecdh::diffie_hellman(ephemeral.scalar, recipient.point.0.as_affine());
    let enc = ephemeral.public.bytes;
    Ok((enc, extract_and_expand(dh.raw_secret_bytes(), &enc, &recipient.bytes)?))
}

/// DHKEM's `ExtractAndExpand(dh, enc || pkRm)`.
fn extract_and_expand(
    dh: &[u8],
    enc: &[u8; ENC_LEN],
    recipient: &[u8; ENC_LEN],
) -> Result<Zeroizing<[u8; SECRET_LEN]>> {
    let suite = kem_suite_id();
    let prk = labeled_extract(&suite, b"", b"eae_prk", &[dh]);
    let mut shared = Zeroizing::new([0u8; SECRET_LEN]);
    labeled_expand(&suite, &prk, b"shared_secret", &[enc, recipient], shared.as_mut_slice())?;
    Ok(shared)
}

/// `KeySchedule` of base mode (no PSK): the AEAD key and the base nonce, which is the nonce
/// of the single message (sequence number 0).
fn key_schedule(
    aead: Aead,
    shared: &[u8; SECRET_LEN],
    info: &[u8],
) -> Result<(Zeroizing<Vec<u8>>, [u8; NONCE_LEN])> {
    let suite = hpke_suite_id(aead);
    let psk_id_hash = labeled_extract(&suite, b"", b"psk_id_hash", &[]);
    let info_hash = labeled_extract(&suite, b"", b"info_hash", &[info]);
    let context: [&[u8]; 3] = [&[0x00], psk_id_hash.as_slice(), info_hash.as_slice()];
    let secret = labeled_extract(&suite, shared, b"secret", &[]);
    let mut key = Zeroizing::new(vec![0u8; aead.key_len()]);
    labeled_expand(&suite, &secret, b"key", &context, key.as_mut_slice())?;
    let mut nonce = [0u8; NONCE_LEN];
    labeled_expand(&suite, &secret, b"base_nonce", &context, &mut nonce)?;
    Ok((key, nonce))
}

fn kem_suite_id() -> [u8; 5] {
    let k = KEM_ID.to_be_bytes();
    [b'K', b'E', b'M', k[0], k[1]]
}

fn hpke_suite_id(aead: Aead) -> [u8; 10] {
    let (k, f, a) = (KEM_ID.to_be_bytes(), KDF_ID.to_be_bytes(), aead.id().to_be_bytes());
    [b'H', b'P', b'K', b'E', k[0], k[1], f[0], f[1], a[0], a[1]]
}

/// `LabeledExtract(salt, label, ikm)` with `ikm` given in parts.
fn labeled_extract(
    suite: &[u8],
    salt: &[u8],
    label: &[u8],
    ikm: &[&[u8]],
) -> Zeroizing<[u8; SECRET_LEN]> {
    let mut extract = HkdfExtract::<Sha256>::new(Some(salt));
    for part in [b"HPKE-v1".as_slice(), suite, label].into_iter().chain(ikm.iter().copied()) {
        extract.input_ikm(part);
    }
    let (prk, _) = extract.finalize();
    let mut out = Zeroizing::new([0u8; SECRET_LEN]);
    out.copy_from_slice(&prk);
    out
}

/// `LabeledExpand(prk, label, info, L)` with `info` given in parts; `L` is `out.len()`.
fn labeled_expand(
    suite: &[u8],
    prk: &[u8; SECRET_LEN],
    label: &[u8],
    info: &[&[u8]],
    out: &mut [u8],
) -> Result<()> {
    let len = u16::try_from(out.len())
        .map_err(|_| CryptoError::InvalidLength("HPKE LabeledExpand length"))?
        .to_be_bytes();
    let mut parts: Vec<&[u8]> = vec![&len, b"HPKE-v1", suite, label];
    parts.extend_from_slice(info);
    Hkdf::<Sha256>::from_prk(prk)
        .map_err(|_| CryptoError::InvalidLength("HPKE pseudorandom key"))?
        .expand_multi_info(&parts, out)
        .map_err(|_| CryptoError::InvalidLength("HPKE LabeledExpand length"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// One base-mode vector of RFC 9180 appendix A (sequence number 0). Each appendix gives
    /// the ephemeral key as its DeriveKeyPair input (`ikmE`) or as the scalar (`skEm`); the
    /// recipient's `ikmR` is checked where it is at hand.
    struct Vector {
        aead: Aead,
        ephemeral: Ephemeral,
        ikm_r: Option<&'static str>,
        sk_rm: &'static str,
        pk_rm: &'static str,
        enc: &'static str,
        ct: &'static str,
    }

    enum Ephemeral {
        Ikm(&'static str),
        Scalar(&'static str),
    }

    const INFO: &str = "4f6465206f6e2061204772656369616e2055726e";
    const PT: &str = "4265617574792069732074727574682c20747275746820626561757479";
    const AAD: &str = "436f756e742d30";

    /// RFC 9180 A.3.1: DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-128-GCM.
    const A31: Vector = Vector {
        aead: Aead::Aes128Gcm,
        ephemeral: Ephemeral::Ikm(
            "4270e54ffd08d79d5928020af4686d8f6b7d35dbe470265f1f5aa22816ce860e",
        ),
        ikm_r: Some("668b37171f1072f3cf12ea8a236a45df23fc13b82af3609ad1e354f6ef817550"),
        sk_rm: "f3ce7fdae57e1a310d87f1ebbde6f328be0a99cdbcadf4d6589cf29de4b8ffd2",
        pk_rm: "04fe8c19ce0905191ebc298a9245792531f26f0cece2460639e8bc39cb7f706a826a779b4cf969b8a0e539c7f62fb3d30ad6aa8f80e30f1d128aafd68a2ce72ea0",
        enc: "04a92719c6195d5085104f469a8b9814d5838ff72b60501e2c4466e5e67b325ac98536d7b61a1af4b78e5b7f951c0900be863c403ce65c9bfcb9382657222d18c4",
        ct: "5ad590bb8baa577f8619db35a36311226a896e7342a6d836d8b7bcd2f20b6c7f9076ac232e3ab2523f39513434",
    };

    /// RFC 9180 A.5.1 (values as published in the RFC): DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305 (age's
    /// `p256tag` suite).
    const A51: Vector = Vector {
        aead: Aead::ChaCha20Poly1305,
        ephemeral: Ephemeral::Scalar(
            "7550253e1147aae48839c1f8af80d2770fb7a4c763afe7d0afa7e0f42a5b3689",
        ),
        ikm_r: None,
        sk_rm: "a4d1c55836aa30f9b3fbb6ac98d338c877c2867dd3a77396d13f68d3ab150d3b",
        pk_rm: "04a697bffde9405c992883c5c439d6cc358170b51af72812333b015621dc0f40bad9bb726f68a5c013806a790ec716ab8669f84f6b694596c2987cf35baba2a006",
        enc: "04c07836a0206e04e31d8ae99bfd549380b072a1b1b82e563c935c095827824fc1559eac6fb9e3c70cd3193968994e7fe9781aa103f5b50e934b5b2f387e381291",
        ct: "6469c41c5c81d3aa85432531ecf6460ec945bde1eb428cb2fedf7a29f5a685b4ccb0d057f03ea2952a27bb458b",
    };

    fn check_vector(v: &Vector) {
        // DeriveKeyPair reproduces the key pairs; the ephemeral public key is `enc`.
        if let Some(ikm_r) = v.ikm_r {
            let sk_r = HpkePrivateKey::derive(&h(ikm_r)).unwrap();
            assert_eq!(hex::encode(&*sk_r.to_bytes()), v.sk_rm);
            assert_eq!(hex::encode(sk_r.public_key().to_bytes()), v.pk_rm);
        }
        let sk_e = match v.ephemeral {
            Ephemeral::Ikm(ikm) => HpkePrivateKey::derive(&h(ikm)).unwrap(),
            Ephemeral::Scalar(sk) => HpkePrivateKey::from_bytes(&h(sk)).unwrap(),
        };
        assert_eq!(hex::encode(sk_e.public_key().to_bytes()), v.enc);
        // The sender's side with the vector's ephemeral key.
        let pk_r = HpkePublicKey::from_bytes(&h(v.pk_rm)).unwrap();
        let (enc, shared) = encap_with(&sk_e, &pk_r).unwrap();
        let (key, nonce) = key_schedule(v.aead, &shared, &h(INFO)).unwrap();
        let ct = v.aead.seal(&key, &nonce, &h(AAD), &h(PT)).unwrap();
        assert_eq!((hex::encode(enc), hex::encode(&ct)), (v.enc.to_owned(), v.ct.to_owned()));
        // The receiver's side, from the scalar alone and from the stored pair.
        let sk = HpkePrivateKey::from_bytes(&h(v.sk_rm)).unwrap();
        let opened = open_with(v.aead, &sk, &h(v.enc), &h(INFO), &h(AAD), &h(v.ct)).unwrap();
        assert_eq!(&opened[..], &h(PT)[..]);
        let stored = HpkePrivateKey::from_stored(&h(v.sk_rm), &h(v.pk_rm)).unwrap();
        let opened = open_with(v.aead, &stored, &h(v.enc), &h(INFO), &h(AAD), &h(v.ct)).unwrap();
        assert_eq!(&opened[..], &h(PT)[..]);
    }

    #[test]
    fn rfc9180_a31_known_answer() {
        check_vector(&A31);
    }

    #[test]
    fn rfc9180_a51_known_answer() {
        check_vector(&A51);
    }

    #[test]
    fn ring_and_seeded_encapsulations_open_for_both_aeads() {
        let mut rng = SeededRng::from_u64(9);
        let sk = HpkePrivateKey::generate(&mut rng);
        for aead in [Aead::Aes128Gcm, Aead::ChaCha20Poly1305] {
            let (enc, ct) = seal_with(aead, &sk.public_key(), b"info", b"aad", b"message").unwrap();
            let (enc2, _) = seal_with(aead, &sk.public_key(), b"info", b"aad", b"message").unwrap();
            assert_ne!(enc, enc2, "a fresh ephemeral key per seal");
            let opened = open_with(aead, &sk, &enc, b"info", b"aad", &ct).unwrap();
            assert_eq!(&opened[..], b"message");
        }
        // The seeded form replays byte for byte and opens like the other.
        let a =
            seal_with_rng(&mut SeededRng::from_u64(3), &sk.public_key(), b"i", b"a", b"m").unwrap();
        let b =
            seal_with_rng(&mut SeededRng::from_u64(3), &sk.public_key(), b"i", b"a", b"m").unwrap();
        assert_eq!(a, b);
        assert_eq!(&open(&sk, b"i", b"a", &a).unwrap()[..], b"m");
        // The two AEADs are not interchangeable.
        let (enc, ct) =
            seal_with(Aead::ChaCha20Poly1305, &sk.public_key(), b"info", b"", b"m").unwrap();
        assert!(open_with(Aead::Aes128Gcm, &sk, &enc, b"info", b"", &ct).is_err());
    }

    #[test]
    fn open_rejects_wrong_context_key_or_tampering() {
        let mut rng = SeededRng::from_u64(4);
        let sk = HpkePrivateKey::generate(&mut rng);
        let pk = sk.public_key();
        let sealed = seal(&pk, b"tessera update card-1", b"obj", b"secret").unwrap();
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
        // A stored pair that does not match opens nothing.
        let mismatched =
            HpkePrivateKey::from_stored(&sk.to_bytes(), &other.public_key().to_bytes()).unwrap();
        assert_eq!(open(&mismatched, b"tessera update card-1", b"obj", &sealed), fail);
        // Converting through PublicKey keeps the point; compressed points are refused.
        assert_eq!(HpkePublicKey::from_public_key(&pk.to_public_key()), pk);
        let compressed = pk.to_public_key().to_sec1_compressed();
        assert!(HpkePublicKey::from_bytes(&compressed).is_err());
        assert!(HpkePrivateKey::derive(&[0; 31]).is_err());
        // Sealing to a point that is not on the curve fails cleanly.
        let mut bad = pk.to_bytes();
        bad[64] ^= 1;
        assert!(HpkePublicKey::from_bytes(&bad).is_err());
    }
}
