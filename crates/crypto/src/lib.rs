//! tessera's one crypto profile (DESIGN.md section 3).
//!
//! Every other tessera crate reaches cryptography only through this crate:
//!
//! - [`rng`]: randomness as a parameter ([`rng::Rng`], [`rng::OsRng`], [`rng::SeededRng`]).
//! - [`keys`]: zeroising symmetric key types ([`keys::AesKey`]).
//! - [`passphrase`]: sealing a blob under a passphrase (Argon2id + AES-256-GCM).
//! - [`mac`]: the AES-CMAC message authentication code.
//! - [`scp03`]: GlobalPlatform SCP03 secure messaging, host and card side.
//!
//! All fallible operations return [`CryptoError`]. Secrets zeroise on drop, secret comparisons
//! are constant-time, and no function takes randomness from anywhere but its `rng` argument.

#![forbid(unsafe_code)]

mod block;
mod error;
pub mod keys;
pub mod mac;
pub mod passphrase;
pub mod rng;
pub mod scp03;

pub use error::{CryptoError, Result};
