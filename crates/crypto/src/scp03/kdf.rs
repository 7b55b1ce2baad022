//! The SCP03 key derivation function, exactly as Amendment D section 4.1.5 lays out its input,
//! and the values derived with it (session keys, cryptograms, pseudo-random card challenge).
//!
//! Data derivation is NIST SP 800-108 counter mode with AES-CMAC as PRF, but with SCP03's own
//! fixed-input layout, for each block `i = 1, 2, ...`:
//!
//! ```text
//! 00 00 00 00 00 00 00 00 00 00 00 || constant || 00 || L (2 bytes, bits) || i (1 byte) || context
//! \______ 11-byte label ______/     (1 byte)  separation
//! ```
//!
//! and the output is the first `L / 8` bytes of `CMAC(key, block_1) || CMAC(key, block_2) ...`.
//! This is deliberately not routed through tessera's generic labelled KDF.

use zeroize::Zeroizing;

use super::StaticKeys;
use crate::Result;
use crate::keys::AesKey;
use crate::mac::{AesCmac, CMAC_LEN};

/// The derivation constants of Amendment D Table 4-1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DerivationConstant {
    /// `00`: card authentication cryptogram.
    CardCryptogram = 0x00,
    /// `01`: host authentication cryptogram.
    HostCryptogram = 0x01,
    /// `02`: card challenge generation (pseudo-random challenge).
    CardChallenge = 0x02,
    /// `04`: derivation of S-ENC.
    SEnc = 0x04,
    /// `06`: derivation of S-MAC.
    SMac = 0x06,
    /// `07`: derivation of S-RMAC.
    SRmac = 0x07,
}

/// SCP03 data derivation: fills `out` (whose length in bits is L) from `key`, `constant` and
/// `context`. `out` must be 1 to 255 blocks long (always true for SCP03's 8- to 32-byte outputs).
pub fn derive(key: &AesKey, constant: DerivationConstant, context: &[u8], out: &mut [u8]) {
    let l_bits = (out.len() * 8) as u16;
    for (i, chunk) in out.chunks_mut(CMAC_LEN).enumerate() {
        let mut prefix = [0u8; 16];
        prefix[11] = constant as u8;
        // prefix[12] = 00: separation indicator
        prefix[13..15].copy_from_slice(&l_bits.to_be_bytes());
        prefix[15] = (i + 1) as u8;
        let mut m = AesCmac::new(key);
        m.update(&prefix).update(context);
        let block = Zeroizing::new(m.finalize());
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}

fn derive_key(key: &AesKey, constant: DerivationConstant, context: &[u8]) -> Result<AesKey> {
    let mut buf = Zeroizing::new(vec![0u8; key.expose_secret().len()]);
    derive(key, constant, context, &mut buf);
    AesKey::from_slice(&buf)
}

/// The three session keys of one SCP03 session (Amendment D section 6.2.1).
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// S-ENC: command and response encryption.
    pub s_enc: AesKey,
    /// S-MAC: C-MAC and the cryptograms.
    pub s_mac: AesKey,
    /// S-RMAC: R-MAC.
    pub s_rmac: AesKey,
}

impl core::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

impl SessionKeys {
    /// Derives S-ENC from K-ENC and S-MAC, S-RMAC from K-MAC, with context
    /// `host challenge || card challenge`; each session key as long as its static key.
    pub fn derive(keys: &StaticKeys, host_challenge: &[u8], card_challenge: &[u8]) -> Result<Self> {
        let ctx = [host_challenge, card_challenge].concat();
        Ok(Self {
            s_enc: derive_key(&keys.enc, DerivationConstant::SEnc, &ctx)?,
            s_mac: derive_key(&keys.mac, DerivationConstant::SMac, &ctx)?,
            s_rmac: derive_key(&keys.mac, DerivationConstant::SRmac, &ctx)?,
        })
    }

    /// The 8-byte card cryptogram (S8 mode): `KDF(S-MAC, 00, L=64, host || card challenge)`.
    pub fn card_cryptogram(&self, host_challenge: &[u8], card_challenge: &[u8]) -> [u8; 8] {
        let mut out = [0u8; 8];
        derive(
            &self.s_mac,
            DerivationConstant::CardCryptogram,
            &[host_challenge, card_challenge].concat(),
            &mut out,
        );
        out
    }

    /// The 8-byte host cryptogram (S8 mode): `KDF(S-MAC, 01, L=64, host || card challenge)`.
    pub fn host_cryptogram(&self, host_challenge: &[u8], card_challenge: &[u8]) -> [u8; 8] {
        let mut out = [0u8; 8];
        derive(
            &self.s_mac,
            DerivationConstant::HostCryptogram,
            &[host_challenge, card_challenge].concat(),
            &mut out,
        );
        out
    }
}

/// The pseudo-random card challenge (S8 mode):
/// `KDF(K-ENC, 02, L=64, sequence counter (3 bytes) || AID of the security domain)`.
pub fn pseudo_random_challenge(k_enc: &AesKey, sequence_counter: u32, aid: &[u8]) -> [u8; 8] {
    let mut ctx = Vec::with_capacity(3 + aid.len());
    ctx.extend_from_slice(&sequence_counter.to_be_bytes()[1..]);
    ctx.extend_from_slice(aid);
    let mut out = [0u8; 8];
    derive(k_enc, DerivationConstant::CardChallenge, &ctx, &mut out);
    out
}
