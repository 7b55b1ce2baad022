//! tessera's card-management server: issuers and their PKI, admin tokens, cards, the APDU
//! tunnel through which the server drives a card, and the hash-chained audit log, over
//! SQLite (embedded default) or PostgreSQL (several replicas on one database).
//!
//! - [`batch`]: batch issuance (ids from a prefix, one card after another).
//! - [`db`]: connections, transactions, dialects, migrations.
//! - [`store`]: every operation, one transaction each ([`store::Store`]).
//! - [`tunnel`]: the APDUs the server sends a card and how it reads the answers.
//! - [`http`]: the axum router (JSON API, `/healthz`, `/metrics`, `/openapi.json`).
//! - [`tls`]: the self-signed certificate and the TLS listener (rustls, `ring`).
//! - [`server`]: configuration and the run loop with graceful shutdown.
//! - [`pkcs11`]: issuer keys in a PKCS#11 token (SoftHSM2).
//! - [`update`]: remote card data update (queue, device authentication, receipts).
//! - [`vault`]: the vault key service (key pairs generated here, sealed to the card, delivered
//!   through the tunnel).
//! - [`primitives`]: hashing, sealing and signing helpers awaiting a home in `tessera-crypto`.

#![forbid(unsafe_code)]

pub mod batch;
pub mod cli;
pub mod client;
pub mod clock;
pub mod db;
pub mod error;
pub mod http;
pub mod issuance;
pub use tessera_crypto::pkcs11;
pub mod primitives;
pub mod server;
pub mod store;
pub mod tls;
pub mod tunnel;
pub mod update;
pub mod vault;

pub use error::{ServerError, ServerResult};
pub use store::{Store, StoreConfig};
pub mod keyring;
