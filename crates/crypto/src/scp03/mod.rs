//! GlobalPlatform Secure Channel Protocol 03, host side and card side.
//!
//! Byte-exact with GlobalPlatform Card Specification v2.3 Amendment D v1.2 (whose layouts are
//! those of v1.1.2) in S8 mode: INITIALIZE UPDATE and EXTERNAL AUTHENTICATE, key version
//! numbers, the `i` parameter (random or pseudo-random card challenge, R-MAC and R-ENC support),
//! security levels `01`, `03`, `11`, `13`, `33`, C-MAC chaining, command encryption with the
//! counter-derived ICV, R-MAC and response encryption, for all four APDU cases.
//!
//! - Host: [`Scp03Host::initialize_update`] starts a [`HostHandshake`]; the card's answer gives
//!   a [`CardHello`] (diversification data, key information), which with the static keys builds
//!   EXTERNAL AUTHENTICATE ([`CardHello::external_authenticate`]); the card's `9000` then yields
//!   the open [`Scp03Host`], which wraps commands and unwraps responses.
//! - Card: one [`Scp03Card`] lives in the card's volatile state. It processes INITIALIZE UPDATE
//!   ([`Scp03Card::initialize_update`]) and EXTERNAL AUTHENTICATE
//!   ([`Scp03Card::external_authenticate`], which reports the failure-counter event the runtime
//!   must persist), then unwraps commands and wraps responses.
//!
//! A MAC failure on either side ends the session: the state becomes closed and every further
//! wrap or unwrap fails until a new handshake.
//!
//! Only short APDUs are protected (as in the specification's Lc arithmetic); first-interindustry
//! (`0x00`-`0x3F`) and GlobalPlatform (`0x80`-`0xBF`) class bytes, logical channels 0 to 3.

mod card;
mod dek;
mod host;
pub mod kdf;
mod session;

pub use card::{
    CardChallengeSource, CardConfig, ExternalAuthOutcome, InitializeUpdate,
    InitializeUpdateOutcome, Scp03Card,
};
pub use dek::{decrypt_key_component, encrypt_key_component, key_check_value};
pub use host::{CardHello, HostHandshake, PendingExternalAuth, Scp03Host};
pub use kdf::{SessionKeys, pseudo_random_challenge};
pub use session::{CLA_SM, has_secure_messaging};

use crate::keys::AesKey;
use crate::{CryptoError, Result};

/// INS of INITIALIZE UPDATE.
pub const INS_INITIALIZE_UPDATE: u8 = 0x50;
/// INS of EXTERNAL AUTHENTICATE.
pub const INS_EXTERNAL_AUTHENTICATE: u8 = 0x82;
/// The SCP identifier in the key information of INITIALIZE UPDATE's response.
pub const SCP_ID: u8 = 0x03;
/// Length of host and card challenges and cryptograms in S8 mode.
pub const CHALLENGE_LEN: usize = 8;
/// Length of the key diversification data in INITIALIZE UPDATE's response.
pub const DIVERSIFICATION_DATA_LEN: usize = 10;
/// Largest sequence counter (it is three bytes long).
pub const MAX_SEQUENCE_COUNTER: u32 = 0x00FF_FFFF;

/// A static key set: K-ENC, K-MAC and K-DEK of one key version.
///
/// The three keys must have the same length (AES-128, -192 or -256).
#[derive(Clone, PartialEq, Eq)]
pub struct StaticKeys {
    /// K-ENC, from which S-ENC and the pseudo-random card challenge derive.
    pub enc: AesKey,
    /// K-MAC, from which S-MAC and S-RMAC derive.
    pub mac: AesKey,
    /// K-DEK, which encrypts key components (PUT KEY).
    pub dek: AesKey,
    /// Key version number (`01`-`7F`; `30`-`3F` conventionally for SCP03).
    pub kvn: u8,
}

impl core::fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "StaticKeys {{ kvn: {:#04x}, {:?}, .. }}", self.kvn, self.enc.len())
    }
}

impl StaticKeys {
    /// A key set; fails if the keys differ in length or the version is `00` or above `7F`.
    pub fn new(enc: AesKey, mac: AesKey, dek: AesKey, kvn: u8) -> Result<Self> {
        let keys = Self { enc, mac, dek, kvn };
        keys.check()?;
        Ok(keys)
    }

    /// The well-known GlobalPlatform test key set: all three keys `40 41 42 ... 4F`.
    ///
    /// Public knowledge: only for blank test cards, replaced at issuance.
    pub fn gp_test_keys(kvn: u8) -> Self {
        let k: [u8; 16] = core::array::from_fn(|i| 0x40 + i as u8);
        Self { enc: AesKey::Aes128(k), mac: AesKey::Aes128(k), dek: AesKey::Aes128(k), kvn }
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.enc.len() != self.mac.len() || self.enc.len() != self.dek.len() {
            return Err(CryptoError::ChannelParameter("static keys differ in length"));
        }
        if self.kvn == 0 || self.kvn > 0x7F {
            return Err(CryptoError::ChannelParameter("key version number must be 01 to 7F"));
        }
        Ok(())
    }
}

/// The security level requested in EXTERNAL AUTHENTICATE's P1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecurityLevel {
    /// `01`: C-MAC.
    CMac,
    /// `03`: C-DECRYPTION and C-MAC.
    CMacCDec,
    /// `11`: C-MAC and R-MAC.
    CMacRMac,
    /// `13`: C-DECRYPTION, C-MAC and R-MAC.
    CMacCDecRMac,
    /// `33`: C-DECRYPTION, C-MAC, R-ENCRYPTION and R-MAC.
    Full,
}

impl SecurityLevel {
    /// All levels, weakest first.
    pub const ALL: [SecurityLevel; 5] = [
        SecurityLevel::CMac,
        SecurityLevel::CMacCDec,
        SecurityLevel::CMacRMac,
        SecurityLevel::CMacCDecRMac,
        SecurityLevel::Full,
    ];

    /// The P1 byte.
    pub const fn to_byte(self) -> u8 {
        match self {
            SecurityLevel::CMac => 0x01,
            SecurityLevel::CMacCDec => 0x03,
            SecurityLevel::CMacRMac => 0x11,
            SecurityLevel::CMacCDecRMac => 0x13,
            SecurityLevel::Full => 0x33,
        }
    }

    /// Parses a P1 byte; levels other than the five above are refused.
    pub fn from_byte(b: u8) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|l| l.to_byte() == b)
            .ok_or(CryptoError::ChannelParameter("unsupported security level"))
    }

    /// Commands carry a C-MAC (always true).
    pub const fn c_mac(self) -> bool {
        true
    }
    /// Command data is encrypted.
    pub const fn c_decryption(self) -> bool {
        self.to_byte() & 0x02 != 0
    }
    /// Responses carry an R-MAC.
    pub const fn r_mac(self) -> bool {
        self.to_byte() & 0x10 != 0
    }
    /// Response data is encrypted.
    pub const fn r_encryption(self) -> bool {
        self.to_byte() & 0x20 != 0
    }

    /// True when this level gives every protection `required` gives (for access rules such as
    /// "PUT KEY needs at least C-MAC + C-DECRYPTION").
    pub const fn satisfies(self, required: SecurityLevel) -> bool {
        self.to_byte() & required.to_byte() == required.to_byte()
    }
}

/// The SCP03 `i` parameter: the options a card implements (Amendment D section 5.1).
///
/// Bit `10`: pseudo-random card challenge; `20`: R-MAC support; `40` (with `20`): R-ENC
/// support. S16 mode is not implemented, so no other bit is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScpOptions {
    /// The card challenge derives from the sequence counter instead of being random.
    pub pseudo_random_challenge: bool,
    /// R-MAC supported.
    pub r_mac: bool,
    /// R-ENCRYPTION supported (requires `r_mac`).
    pub r_enc: bool,
}

impl ScpOptions {
    /// The `i` byte.
    pub const fn to_byte(self) -> u8 {
        (if self.pseudo_random_challenge { 0x10 } else { 0 })
            | (if self.r_mac { 0x20 } else { 0 })
            | (if self.r_enc { 0x40 } else { 0 })
    }

    /// Parses an `i` byte.
    pub fn from_byte(i: u8) -> Result<Self> {
        if i & !0x70 != 0 || (i & 0x40 != 0 && i & 0x20 == 0) {
            return Err(CryptoError::ChannelParameter("unsupported SCP03 i parameter"));
        }
        Ok(Self {
            pseudo_random_challenge: i & 0x10 != 0,
            r_mac: i & 0x20 != 0,
            r_enc: i & 0x40 != 0,
        })
    }

    /// True when a card with these options can run a session at `level`.
    pub const fn supports(self, level: SecurityLevel) -> bool {
        (!level.r_mac() || self.r_mac) && (!level.r_encryption() || self.r_enc)
    }
}

#[cfg(test)]
mod tests;
