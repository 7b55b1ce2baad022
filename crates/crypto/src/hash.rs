//! SHA-256 (FIPS 180-4), the profile's one hash function.
//!
//! [`sha256`] hashes one message; [`Sha256`] hashes one fed in parts. Both give the same
//! digest for the same bytes.

use sha2::Digest as _;

/// Length of a SHA-256 digest in bytes.
pub const SHA256_LEN: usize = 32;

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; SHA256_LEN] {
    sha2::Sha256::digest(data).into()
}

/// An incremental SHA-256 computation.
#[derive(Clone, Default)]
pub struct Sha256(sha2::Sha256);

impl Sha256 {
    /// A fresh computation over no bytes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything fed.
    pub fn finalize(self) -> [u8; SHA256_LEN] {
        self.0.finalize().into()
    }
}

impl core::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Sha256")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // FIPS 180-2 appendix B.1 and B.2 (one-block and two-block messages).
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const TWO_BLOCK: &str = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
    const TWO_BLOCK_MSG: &[u8] = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";

    #[test]
    fn known_answers() {
        assert_eq!(hex::encode(sha256(b"abc")), ABC);
        assert_eq!(hex::encode(sha256(TWO_BLOCK_MSG)), TWO_BLOCK);
        // The empty message (FIPS 180-4 examples).
        assert_eq!(
            hex::encode(sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn incremental_matches_one_shot() {
        let mut h = Sha256::new();
        for part in TWO_BLOCK_MSG.chunks(7) {
            h.update(part);
        }
        assert_eq!(hex::encode(h.finalize()), TWO_BLOCK);
    }
}
