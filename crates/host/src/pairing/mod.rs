//! The terminal side of the secure terminal (seed 002): certification, setup, per-insertion
//! authentication, secure messaging to the card's services, and the Fig. 5 orchestration.
//!
//! - [`ca`]: the [`ca::CertificationAuthority`] trait (Fig. 9) and a local CA directory
//!   ([`ca::LocalCa`]); the server's CA endpoint will implement the same trait.
//! - [`enrol`]: enrolling a card (the pairing applet generates its key and proves possession)
//!   and a terminal key.
//! - [`files`]: the terminal key file and the pairing store, sealed under a passphrase, and
//!   the terminal's signing key ([`files::TerminalKey`]: in the key file or in a token).
//! - [`pkcs11`]: the terminal key in a PKCS#11 token.
//! - [`terminal`]: setup (Fig. 7), authentication (Fig. 6), [`terminal::PairedSession`]
//!   (Fig. 8) and [`terminal::connect`] (Fig. 5).
//! - [`bench`](mod@bench): authentication against setup, protected against plain APDUs.
//! - [`service`]: the terminal-side service providers behind one trait (claims 2, 3).
//!
//! `docs/pairing.md` describes the protocol, its APDUs and every failure.

pub mod bench;
pub mod ca;
pub mod enrol;
pub mod files;
pub use tessera_crypto::pkcs11;
pub mod service;
pub mod terminal;

/// The pairing applet's wire formats (`tessera-proto`), for callers of this module.
pub use tessera_proto::pairing as wire;

use tessera_apdu::StatusWord;
use tessera_crypto::CryptoError;

use crate::channel::ChannelError;

/// Why a pairing flow stopped.
#[derive(Debug, thiserror::Error)]
pub enum PairingError {
    /// The transport failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The card refused a command.
    #[error("the card refused {step}: {sw}")]
    Card {
        /// The command.
        step: &'static str,
        /// Its status word.
        sw: StatusWord,
    },
    /// The PIN was wrong (`tries_left` more tries) or is blocked (`0`).
    #[error("wrong PIN ({tries_left} tries left)")]
    WrongPin {
        /// Tries left before the PIN blocks.
        tries_left: u8,
    },
    /// The card's certificate was refused by this terminal (other CA, wrong role, expired,
    /// revoked) or the terminal's own trust material is missing or stale.
    #[error("certificate refused: {0}")]
    Certificate(String),
    /// The card's answer did not verify: a signature, a confirmation, an R-MAC (tampered on
    /// the way back, or not the card it claims to be).
    #[error("the card's answer does not verify: {0}")]
    Verification(String),
    /// A card answer did not parse.
    #[error("malformed card answer: {0}")]
    Malformed(String),
    /// This terminal and this card share no usable pairing.
    #[error("no pairing between this terminal and this card")]
    NotPaired,
    /// Authentication failed again after a fresh setup (Fig. 5: stop).
    #[error("authentication failed after a fresh setup: {0}")]
    SecondFailure(Box<PairingError>),
    /// A local file (key file, pairing store, CA directory) could not be used.
    #[error("{0}")]
    File(String),
    /// The PKCS#11 token (module, token, login, key) failed.
    #[error(transparent)]
    Token(#[from] tessera_crypto::pkcs11::TokenError),
    /// The certification authority refused or failed.
    #[error("certification authority: {0}")]
    Ca(String),
    /// A cryptographic operation failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl PairingError {
    /// The card refused `step` with `sw`.
    pub(crate) fn card(step: &'static str, sw: StatusWord) -> Self {
        PairingError::Card { step, sw }
    }
}

/// The result type of this module.
pub type Result<T> = std::result::Result<T, PairingError>;
