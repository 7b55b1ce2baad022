//! tessera's one crypto profile (DESIGN.md section 3).
//!
//! Every other tessera crate reaches cryptography only through this crate:
//!
//! - [`hash`]: SHA-256, one-shot and incremental.
//! - [`rng`]: randomness as a parameter ([`rng::Rng`], [`rng::OsRng`], [`rng::SeededRng`]).
//! - [`keys`]: zeroising symmetric key types ([`keys::AesKey`]).
//! - [`passphrase`]: sealing a blob under a passphrase (Argon2id + AES-256-GCM).
//! - [`mac`]: the AES-CMAC message authentication code.
//! - [`kdf`]: SP 800-108 counter-mode KDF with AES-CMAC, one [`kdf::Label`] per purpose.
//! - [`keywrap`]: AES-256-GCM key wrap for export, metadata as associated data.
//! - [`ecdsa`]: ECDSA P-256/SHA-256 keys and signatures, SEC1/SPKI/PKCS#8/DER encodings.
//! - [`device`]: the labelled structures a card's device key signs (never arbitrary data).
//! - [`ecdh`]: P-256 Diffie-Hellman with static and ephemeral keys.
//! - [`x509`]: X.509 certificates, chains, roles and CRLs.
//! - [`revocation`]: a CRL's issue times, the clock of a party without one.
//! - [`hpke`]: RFC 9180 base mode, DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-128-GCM.
//! - [`age`]: the age format's `p256tag` stanza (HPKE with ChaCha20-Poly1305) and header MAC.
//! - [`scp03`]: GlobalPlatform SCP03 secure messaging, host and card side.
//! - [`tls`]: what a card or terminal computes of TLS itself (CertificateVerify content, record
//!   protection with handed-over keys).
//!
//! All fallible operations return [`CryptoError`]. Secrets zeroise on drop, secret comparisons
//! are constant-time, and no function takes randomness from anywhere but its `rng` argument.

#![forbid(unsafe_code)]

pub mod age;
mod block;
pub mod device;
pub mod ecdh;
pub mod ecdsa;
mod error;
pub mod hash;
pub mod hpke;
pub mod kdf;
pub mod keys;
pub mod keywrap;
pub mod mac;
pub mod passphrase;
pub mod pkcs11;
pub mod revocation;
pub mod rng;
pub mod scp03;
pub mod tls;
pub mod x509;

pub use error::{CryptoError, Result};
