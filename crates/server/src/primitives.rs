//! The server's small layer over `tessera-crypto`: SHA-256 over part lists, sealing under the server master key (the crypto
//! crate's AES-256-GCM key wrap), and the ECDSA P-256 key that signs audit checkpoints.

use tessera_crypto::ecdsa::{PublicKey, Signature, SigningKey};
use tessera_crypto::hash::Sha256;
use tessera_crypto::keys::AesKey;
use tessera_crypto::keywrap::{self, WrapKey};
use tessera_crypto::rng::{OsRng, Rng};
use zeroize::{Zeroize, Zeroizing};

/// An error from a primitive.
#[derive(Debug, thiserror::Error)]
pub enum PrimitiveError {
    /// Unsealing failed: wrong master key, wrong context or tampered data.
    #[error("sealed data failed authentication (wrong master key or tampered)")]
    Unseal,
    /// A key or signature had the wrong encoding.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A signature did not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// Any other crypto failure.
    #[error("crypto: {0}")]
    Crypto(#[from] tessera_crypto::CryptoError),
}

pub use tessera_crypto::hash::sha256;

/// SHA-256 over several parts, each prefixed by its 8-byte big-endian length, so that no two
/// different part lists hash alike: the hash of [`length_prefixed`]`(parts)`.
pub fn sha256_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(&(p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize()
}

/// The parts, each prefixed by its 8-byte big-endian length: what [`sha256_parts`] hashes.
pub fn length_prefixed(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| 8 + p.len()).sum());
    for p in parts {
        out.extend_from_slice(&(p.len() as u64).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// `N` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    OsRng.fill_random(&mut out);
    out
}

/// The server master key: 32 bytes that seal every private key the database holds.
#[derive(Clone)]
pub struct MasterKey {
    raw: Zeroizing<[u8; 32]>,
    kek: WrapKey,
}

impl MasterKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let kek = match AesKey::from_slice(&bytes).and_then(WrapKey::new) {
            Ok(k) => k,
            Err(_) => unreachable!("32 bytes make an AES-256 key"),
        };
        MasterKey { raw: Zeroizing::new(bytes), kek }
    }

    /// A key from 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(s: &str) -> Result<Self, PrimitiveError> {
        let mut raw =
            hex::decode(s.trim()).map_err(|_| PrimitiveError::Malformed("master key hex"))?;
        let out = <[u8; 32]>::try_from(raw.as_slice())
            .map(Self::from_bytes)
            .map_err(|_| PrimitiveError::Malformed("master key (need 32 bytes)"));
        raw.zeroize();
        out
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        Self::from_bytes(random_bytes())
    }

    /// The key as hex, for writing the key file.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(*self.raw))
    }

    /// A public identifier of the key (first 8 bytes of a labelled SHA-256), stored beside
    /// every sealed blob so rotation knows which key sealed what.
    pub fn id(&self) -> String {
        hex::encode(&sha256_parts(&[b"tessera master key id", &*self.raw])[..8])
    }

    /// Seals `plaintext` (1 to 4096 bytes), binding `context` (what the blob is, e.g.
    /// `issuer/acme/ca-key`).
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<Vec<u8>, PrimitiveError> {
        Ok(keywrap::wrap(&mut OsRng, &self.kek, plaintext, context.as_bytes())?)
    }

    /// Opens a blob sealed by [`MasterKey::seal`] with the same `context`.
    pub fn open(&self, blob: &[u8], context: &str) -> Result<Zeroizing<Vec<u8>>, PrimitiveError> {
        keywrap::unwrap(&self.kek, blob, context.as_bytes()).map_err(|_| PrimitiveError::Unseal)
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(id {})", self.id())
    }
}

/// The ECDSA P-256 key that signs audit checkpoints.
pub struct CheckpointKey {
    key: SigningKey,
}

impl CheckpointKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        CheckpointKey { key: SigningKey::generate(&mut OsRng) }
    }

    /// The key from its 32-byte scalar.
    pub fn from_secret(bytes: &[u8]) -> Result<Self, PrimitiveError> {
        SigningKey::from_bytes(bytes)
            .map(|key| CheckpointKey { key })
            .map_err(|_| PrimitiveError::Malformed("P-256 private key"))
    }

    /// The 32-byte scalar, to be sealed.
    pub fn secret(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.key.to_bytes().to_vec())
    }

    /// The public key, SEC1 uncompressed.
    pub fn public(&self) -> Vec<u8> {
        self.key.public_key().to_sec1_bytes().to_vec()
    }

    /// Signs `msg` (ECDSA P-256 with SHA-256), 64-byte `r || s`.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.key.sign(msg).to_bytes().to_vec()
    }
}

/// Verifies a signature made by [`CheckpointKey::sign`].
pub fn verify_p256(public_sec1: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), PrimitiveError> {
    let key = PublicKey::from_sec1_bytes(public_sec1)
        .map_err(|_| PrimitiveError::Malformed("P-256 public key"))?;
    let sig = Signature::from_bytes(sig).map_err(|_| PrimitiveError::Malformed("signature"))?;
    key.verify(msg, &sig).map_err(|_| PrimitiveError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answer() {
        // FIPS 180-2, Appendix B.1: SHA-256("abc").
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn length_prefixing_separates_part_boundaries() {
        assert_ne!(sha256_parts(&[b"ab", b"c"]), sha256_parts(&[b"a", b"bc"]));
        let parts: [&[u8]; 3] = [b"ab", b"", b"cde"];
        assert_eq!(sha256_parts(&parts), sha256(&length_prefixed(&parts)));
    }

    #[test]
    fn seal_binds_key_and_context() {
        let k = MasterKey::generate();
        let blob = k.seal(b"secret", "issuer/a/ca").unwrap();
        assert_eq!(&*k.open(&blob, "issuer/a/ca").unwrap(), b"secret");
        assert!(matches!(k.open(&blob, "issuer/b/ca"), Err(PrimitiveError::Unseal)));
        assert!(matches!(
            MasterKey::generate().open(&blob, "issuer/a/ca"),
            Err(PrimitiveError::Unseal)
        ));
        let mut bad = blob.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(k.open(&bad, "issuer/a/ca").is_err());
        assert!(k.open(&blob[..10], "issuer/a/ca").is_err());
    }

    #[test]
    fn master_key_hex_round_trip_and_rejects_wrong_length() {
        let k = MasterKey::generate();
        let k2 = MasterKey::from_hex(&k.to_hex()).unwrap();
        assert_eq!(k.id(), k2.id());
        assert_ne!(k.id(), MasterKey::generate().id());
        assert!(MasterKey::from_hex("abcd").is_err());
        assert!(MasterKey::from_hex("zz").is_err());
    }

    #[test]
    fn checkpoint_signature_verifies_and_detects_change() {
        let k = CheckpointKey::generate();
        let k2 = CheckpointKey::from_secret(&k.secret()).unwrap();
        let sig = k2.sign(b"checkpoint");
        verify_p256(&k.public(), b"checkpoint", &sig).unwrap();
        assert!(verify_p256(&k.public(), b"checkpoinT", &sig).is_err());
        assert!(verify_p256(&CheckpointKey::generate().public(), b"checkpoint", &sig).is_err());
    }
}
