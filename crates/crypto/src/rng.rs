//! Randomness as a parameter.
//!
//! Every function of this crate that consumes randomness takes `&mut R` with `R: Rng + ?Sized`,
//! so a caller can pass the operating system's generator ([`OsRng`]), a seeded deterministic
//! generator ([`SeededRng`]) for tests and reproducible simulations, or a `&mut dyn Rng` held
//! in a runtime. [`Rng`] is the `rand_core` 0.10 [`CryptoRng`](rand_core::CryptoRng) of the
//! p256 0.14 / hpke 0.15 generation, so the same value feeds the primitive crates directly.

use aes::Aes256;
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use core::convert::Infallible;
use rand_core::{TryCryptoRng, TryRng};
use zeroize::{Zeroize, Zeroizing};

/// A cryptographically secure, infallible random generator.
///
/// Blanket-implemented for every `rand_core::CryptoRng`; usable as `&mut dyn Rng`.
pub trait Rng: rand_core::CryptoRng {
    /// Fills `dst` with random bytes.
    fn fill_random(&mut self, dst: &mut [u8]) {
        rand_core::Rng::fill_bytes(self, dst);
    }
}

impl<R: rand_core::CryptoRng + ?Sized> Rng for R {}

/// The operating system's generator, through `getrandom`.
///
/// Stateless; copy it freely. If the operating system cannot deliver randomness (a condition
/// Linux never reports after early boot), it panics rather than return predictable bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsRng;

impl TryRng for OsRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        if let Err(e) = getrandom::fill(dst) {
            // No secure fallback exists; continuing would hand out predictable keys.
            panic!("operating system random generator failed: {e}");
        }
        Ok(())
    }
}

impl TryCryptoRng for OsRng {}

/// A deterministic generator: AES-256 in counter mode keyed by a 32-byte seed.
///
/// **For tests and reproducible simulations only.** Two instances made from the same seed
/// produce the same byte stream, which lets a test replay a card command and expect
/// bit-identical state. Anyone who knows the seed knows every key it generates. The stream is
/// AES-256 encryptions of a 128-bit big-endian block counter starting at zero; bytes are
/// consumed in order, whatever the sizes of the requests.
#[derive(Clone)]
pub struct SeededRng {
    cipher: Aes256,
    counter: u128,
    buf: Zeroizing<[u8; 16]>,
    used: usize,
}

impl SeededRng {
    /// A generator whose stream is fully determined by `seed`.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let mut seed = Zeroizing::new(seed);
        let cipher = Aes256::new(&(*seed).into());
        seed.zeroize();
        Self { cipher, counter: 0, buf: Zeroizing::new([0; 16]), used: 16 }
    }

    /// A generator seeded from a small number (the seed is `n` big-endian in the last 8 bytes
    /// of an otherwise zero 32-byte seed), convenient in tests.
    pub fn from_u64(n: u64) -> Self {
        let mut seed = [0u8; 32];
        seed[24..].copy_from_slice(&n.to_be_bytes());
        Self::from_seed(seed)
    }

    fn refill(&mut self) {
        let mut block = self.counter.to_be_bytes().into();
        self.cipher.encrypt_block(&mut block);
        self.buf.copy_from_slice(&block);
        block.zeroize();
        self.counter = self.counter.wrapping_add(1);
        self.used = 0;
    }
}

impl core::fmt::Debug for SeededRng {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SeededRng").finish_non_exhaustive()
    }
}

impl TryRng for SeededRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, mut dst: &mut [u8]) -> Result<(), Infallible> {
        while !dst.is_empty() {
            if self.used == 16 {
                self.refill();
            }
            let n = dst.len().min(16 - self.used);
            let (head, tail) = dst.split_at_mut(n);
            head.copy_from_slice(&self.buf[self.used..self.used + n]);
            self.used += n;
            dst = tail;
        }
        Ok(())
    }
}

// Marked as a crypto generator so it can drive key generation in tests; see the type's docs.
impl TryCryptoRng for SeededRng {}

/// Fills a fixed-size array from `rng`.
pub(crate) fn random_array<const N: usize, R: Rng + ?Sized>(rng: &mut R) -> [u8; N] {
    let mut out = [0u8; N];
    rng.fill_random(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_stream_is_aes_ctr_of_the_seed() {
        // FIPS-197 Appendix C.3 (AES-256): key 000102..1f, plaintext 00112233..ff gives
        // 8ea2b7ca516745bfeafc49904b496089. Our first block is AES(seed, 0^128), so check the
        // construction with the block cipher directly and the stream against it.
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        let c = Aes256::new(&key.into());
        let mut b = hex::decode("00112233445566778899aabbccddeeff").unwrap();
        let blk: &mut aes::Block = b.as_mut_slice().try_into().unwrap();
        c.encrypt_block(blk);
        assert_eq!(hex::encode(blk), "8ea2b7ca516745bfeafc49904b496089");

        let mut rng = SeededRng::from_seed(key);
        let mut out = [0u8; 20];
        rng.fill_random(&mut out);
        let mut zero = aes::Block::default();
        c.encrypt_block(&mut zero);
        assert_eq!(&out[..16], zero.as_slice());
        let mut one: aes::Block = 1u128.to_be_bytes().into();
        c.encrypt_block(&mut one);
        assert_eq!(&out[16..], &one[..4]);
    }

    #[test]
    fn seeded_is_reproducible_across_request_sizes() {
        let mut a = SeededRng::from_u64(7);
        let mut b = SeededRng::from_u64(7);
        let mut x = [0u8; 37];
        a.fill_random(&mut x);
        let mut y = [0u8; 37];
        b.fill_random(&mut y[..5]);
        b.fill_random(&mut y[5..21]);
        b.fill_random(&mut y[21..]);
        assert_eq!(x, y);
        let mut c = SeededRng::from_u64(8);
        let mut z = [0u8; 37];
        c.fill_random(&mut z);
        assert_ne!(x, z);
    }

    #[test]
    fn os_rng_works_as_dyn() {
        let mut os = OsRng;
        let rng: &mut dyn Rng = &mut os;
        let a: [u8; 32] = random_array(rng);
        let b: [u8; 32] = random_array(rng);
        assert_ne!(a, b);
    }
}
