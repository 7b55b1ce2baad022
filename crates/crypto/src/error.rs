//! The one error type of the crypto profile.

use tessera_apdu::StatusWord;
use thiserror::Error;

/// Everything that can go wrong in `tessera-crypto`.
///
/// Variants say what failed, never which secret byte was wrong: an authentication failure is
/// one variant whatever the cause (tag, MAC or cryptogram), so callers cannot build an oracle.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CryptoError {
    /// A key had a length the algorithm does not accept.
    #[error("invalid key length {0} bytes")]
    InvalidKeyLength(usize),
    /// An encoded object (blob, key, signature, certificate, APDU field) is malformed.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// An encoded object has a format version this build does not know.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// What carried the version.
        what: &'static str,
        /// The version found.
        version: u8,
    },
    /// Password-KDF parameters are outside the accepted bounds.
    #[error("password KDF parameters out of bounds: {0}")]
    KdfParams(&'static str),
    /// A blob was sealed under different KDF parameters (salt or cost) than the key was
    /// derived with: derive a key from the blob's own parameters.
    #[error("blob was sealed under different KDF parameters")]
    KdfParamsMismatch,
    /// An AEAD tag, MAC or cryptogram did not verify: wrong key, wrong associated data, or
    /// tampered data.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// A signature did not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// A requested output or input length is outside what the algorithm allows.
    #[error("invalid length: {0}")]
    InvalidLength(&'static str),
    /// A secure-channel operation was called in a state that does not allow it (for example
    /// wrapping before EXTERNAL AUTHENTICATE, or after a MAC failure ended the session).
    #[error("secure channel: {0}")]
    ChannelState(&'static str),
    /// A secure-channel parameter (security level, key version, `i` parameter, P1/P2) is not
    /// acceptable.
    #[error("secure channel parameter: {0}")]
    ChannelParameter(&'static str),
    /// No key set with this key version number.
    #[error("unknown key version {0:#04x}")]
    UnknownKeyVersion(u8),
    /// The caller-given limit of failed EXTERNAL AUTHENTICATE attempts is reached.
    #[error("authentication attempts exhausted")]
    AttemptsExhausted,
    /// An X.509 certificate or CRL could not be made, parsed or verified.
    #[error("certificate: {0}")]
    Certificate(String),
}

impl CryptoError {
    /// The ISO/IEC 7816-4 status word a card answers when a command fails with this error.
    pub fn status_word(&self) -> StatusWord {
        match self {
            CryptoError::InvalidLength(_) => StatusWord::WRONG_LENGTH,
            CryptoError::Malformed(_) | CryptoError::UnsupportedVersion { .. } => {
                StatusWord::INCORRECT_DATA
            }
            CryptoError::AuthenticationFailed | CryptoError::BadSignature => {
                StatusWord::SECURITY_STATUS_NOT_SATISFIED
            }
            CryptoError::ChannelState(_) => StatusWord::CONDITIONS_NOT_SATISFIED,
            CryptoError::ChannelParameter(_) => StatusWord::INCORRECT_P1P2,
            CryptoError::UnknownKeyVersion(_) => StatusWord::REFERENCED_DATA_NOT_FOUND,
            CryptoError::AttemptsExhausted => StatusWord::AUTH_METHOD_BLOCKED,
            _ => StatusWord::UNKNOWN,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T> = core::result::Result<T, CryptoError>;
