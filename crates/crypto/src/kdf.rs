//! NIST SP 800-108r1 key derivation in counter mode with AES-CMAC as PRF, one label per
//! purpose.
//!
//! For `i = 1, 2, ...` (a 32-bit big-endian counter before the fixed input):
//!
//! ```text
//! K(i) = CMAC(KI, [i]_32 || Label || 00 || Context || [L]_32)
//! ```
//!
//! where `L` is the output length in bits and the output is the first `L/8` bytes of
//! `K(1) || K(2) || ...`. Labels are ASCII without NUL, so the `00` separator is unambiguous.
//! (SCP03 has its own layout and does not use this module; see [`crate::scp03::kdf`].)

use zeroize::Zeroizing;

use crate::keys::{AesKey, AesKeyLen};
use crate::mac::{AesCmac, CMAC_LEN};
use crate::{CryptoError, Result};

/// Longest output one call may ask for.
pub const MAX_OUTPUT_LEN: usize = 1024;

/// A derivation label: names exactly one purpose. Every label in use is listed in
/// `docs/crypto.md`; a key derived for one purpose is useless for another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Label(&'static str);

impl Label {
    /// Keyring: a renewed key, derived inside the card from the server's random under the
    /// authenticating upper internal key (context: slot, version, server random).
    pub const KEYRING_RENEWAL: Label = Label::new("tessera/keyring/renewal");
    /// Keyring: the second renewed key of the single-random variant (seed 001 ¶0088), derived
    /// from the same server random as the first under a label of its own.
    pub const KEYRING_RENEWAL_SECOND: Label = Label::new("tessera/keyring/renewal/second");
    /// Keyring: SCP03 static K-ENC of a keyring session, from the bottom key pair.
    pub const KEYRING_SCP03_ENC: Label = Label::new("tessera/keyring/scp03/enc");
    /// Keyring: SCP03 static K-MAC of a keyring session.
    pub const KEYRING_SCP03_MAC: Label = Label::new("tessera/keyring/scp03/mac");
    /// Keyring: SCP03 static K-DEK of a keyring session.
    pub const KEYRING_SCP03_DEK: Label = Label::new("tessera/keyring/scp03/dek");
    /// Keyring: key confirmation value for a renewed key.
    pub const KEYRING_CONFIRMATION: Label = Label::new("tessera/keyring/confirmation");
    /// Pairing: the pairing key, from the ECDH shared secret (context: the setup transcript:
    /// both certificates, both ephemeral public keys and both nonces).
    pub const PAIRING_KEY: Label = Label::new("tessera/pairing/key");
    /// Pairing: SCP03 static K-ENC of a paired session, from the pairing key.
    pub const PAIRING_SCP03_ENC: Label = Label::new("tessera/pairing/scp03/enc");
    /// Pairing: SCP03 static K-MAC of a paired session.
    pub const PAIRING_SCP03_MAC: Label = Label::new("tessera/pairing/scp03/mac");
    /// Pairing: SCP03 static K-DEK of a paired session.
    pub const PAIRING_SCP03_DEK: Label = Label::new("tessera/pairing/scp03/dek");
    /// Pairing: key confirmation after setup.
    pub const PAIRING_CONFIRMATION: Label = Label::new("tessera/pairing/confirmation");
    /// Vault: the key-encryption key, from all key-group components.
    pub const VAULT_KEK: Label = Label::new("tessera/vault/kek");
    /// Vault: the key-group check value bound into every wrapped blob.
    pub const VAULT_KEY_GROUP_CHECK: Label = Label::new("tessera/vault/key-group-check");

    /// A label for a purpose not listed above. `s` must be non-empty ASCII without NUL; used
    /// in a `const`, a bad label fails the build.
    pub const fn new(s: &'static str) -> Self {
        let b = s.as_bytes();
        assert!(!b.is_empty(), "empty KDF label");
        let mut i = 0;
        while i < b.len() {
            assert!(b[i] != 0 && b[i].is_ascii(), "KDF label must be ASCII without NUL");
            i += 1;
        }
        Label(s)
    }

    /// The label text.
    pub const fn as_str(&self) -> &'static str {
        self.0
    }
}

/// Fills `out` (1 to [`MAX_OUTPUT_LEN`] bytes) with key material derived from `key`.
pub fn derive(key: &AesKey, label: Label, context: &[u8], out: &mut [u8]) -> Result<()> {
    if out.is_empty() || out.len() > MAX_OUTPUT_LEN {
        return Err(CryptoError::InvalidLength("KDF output must be 1 to 1024 bytes"));
    }
    let mut fixed = Vec::with_capacity(label.0.len() + 1 + context.len() + 4);
    fixed.extend_from_slice(label.0.as_bytes());
    fixed.push(0);
    fixed.extend_from_slice(context);
    fixed.extend_from_slice(&((out.len() * 8) as u32).to_be_bytes());
    counter_mode(key, &fixed, out);
    Ok(())
}

/// Derives an AES key of the given length.
pub fn derive_key(key: &AesKey, label: Label, context: &[u8], len: AesKeyLen) -> AesKey {
    let mut buf = Zeroizing::new([0u8; 32]);
    let out = &mut buf[..len.bytes()];
    // 16 to 32 bytes is always within bounds.
    if derive(key, label, context, out).is_err() {
        unreachable!("AES key lengths are valid KDF outputs");
    }
    match AesKey::from_slice(out) {
        Ok(k) => k,
        Err(_) => unreachable!("AesKeyLen gives a valid AES key length"),
    }
}

/// SP 800-108 counter mode, CMAC PRF, 32-bit counter before the fixed input data.
fn counter_mode(key: &AesKey, fixed: &[u8], out: &mut [u8]) {
    for (i, chunk) in out.chunks_mut(CMAC_LEN).enumerate() {
        let mut m = AesCmac::new(key);
        m.update(&((i + 1) as u32).to_be_bytes()).update(fixed);
        let block = Zeroizing::new(m.finalize());
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn cavp_kdfctr_cmac_aes128_known_answer() {
        // NIST CAVP KBKDF (SP 800-108) test vectors, KDFCTR_gen.rsp,
        // [PRF=CMAC_AES128] [CTRLOCATION=BEFORE_FIXED] [RLEN=32_BITS], COUNT=0, L=128.
        let ki = AesKey::from_slice(&h("c10b152e8c97b77e18704e0f0bd38305")).unwrap();
        let fixed = h("98cd4cbbbebe15d17dc86e6dbad800a2dcbd64f7c7ad0e78e9cf94ffdba89d03\
                       e97eadf6c4f7b806caf52aa38f09d0eb71d71f497bcc6906b48d36c4");
        let mut out = [0u8; 16];
        counter_mode(&ki, &fixed, &mut out);
        assert_eq!(hex::encode(out), "26faf61908ad9ee881b8305c221db53f");
    }

    #[test]
    fn labelled_layout_matches_independent_implementation() {
        // Computed with Python `cryptography` 48's KBKDFCMAC (an independent implementation):
        //   KBKDFCMAC(algorithm=AES, mode=CounterMode.CounterMode, length=40, rlen=4,
        //             llen=4, location=CounterLocation.BeforeFixed,
        //             label=b"tessera/vault/kek", context=bytes(range(8)), fixed=None)
        //   .derive(bytes(range(16)))
        let ki = AesKey::from_slice(&(0u8..16).collect::<Vec<_>>()).unwrap();
        let mut out = [0u8; 40];
        derive(&ki, Label::VAULT_KEK, &(0u8..8).collect::<Vec<_>>(), &mut out).unwrap();
        assert_eq!(hex::encode(out), EXPECTED_40);
    }

    // See labelled_layout_matches_independent_implementation.
    const EXPECTED_40: &str =
        "0607ea40e3136bdbe0b0e3462ef7dab2ab3ef14178cb8d1570f44dec30684fbc173de3ca3b4536c6";

    #[test]
    fn labels_separate_and_lengths_bind() {
        let ki = AesKey::Aes128([7; 16]);
        let a = derive_key(&ki, Label::PAIRING_SCP03_ENC, b"ctx", AesKeyLen::Aes128);
        let b = derive_key(&ki, Label::PAIRING_SCP03_MAC, b"ctx", AesKeyLen::Aes128);
        let c = derive_key(&ki, Label::PAIRING_SCP03_ENC, b"ctX", AesKeyLen::Aes128);
        assert_ne!(a, b);
        assert_ne!(a, c);
        // L is bound: a 32-byte output does not start with the 16-byte one.
        let d = derive_key(&ki, Label::PAIRING_SCP03_ENC, b"ctx", AesKeyLen::Aes256);
        assert_ne!(&d.expose_secret()[..16], a.expose_secret());
        let mut big = [0u8; MAX_OUTPUT_LEN + 1];
        assert!(derive(&ki, Label::VAULT_KEK, b"", &mut big).is_err());
        assert!(derive(&ki, Label::VAULT_KEK, b"", &mut []).is_err());
    }
}
