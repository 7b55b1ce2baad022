//! The server's keyring service (issue 4): the server's view of each card's hierarchical
//! authentication keys, as pure logic (no HTTP, no SQL).
//!
//! - [`store`]: [`CardKeys`] (current keys, the pending renewal, the re-issue flag) and the
//!   [`KeyringStore`] trait the database layer implements ([`MemoryStore`] for tests).
//! - [`policy`]: the renewal policy per level and the planner.
//! - [`service`]: [`KeyringService`]: issuance, authentication, renewal with two-phase commit,
//!   resynchronisation from the next upper level, the SCP03 session with the bottom pair.
//! - [`replay`]: a sync run step by step through the stateless APDU tunnel.
//!
//! The database side (records sealed under the master key, the issuer's policy, audit
//! entries, the tunnel step) is [`crate::store::keyring`].
//!
//! The service drives a card through [`KeyringLink`](tessera_proto::keyring::KeyringLink), the
//! APDU transport the terminal implements (`tessera_host::keyring`), with the APDUs of
//! [`tessera_proto::keyring`]. `docs/keyring.md` gives the message sequences.

pub mod cli;
pub mod issuance;
pub mod policy;
pub mod replay;
pub mod service;
pub mod store;

pub use policy::{Plan, RenewalPolicy};
pub use service::{KeyringService, KeyringSession, SlotStatus, SyncOutcome, SyncReport};
pub use store::{CardKeys, KeyringStore, MemoryStore, PendingRenewal, SlotRecord};

use tessera_apdu::StatusWord;
use tessera_proto::keyring::{LinkError, ProtoError};

/// Why a keyring operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The card link failed (lost response, card removed, power cut); any renewal in flight
    /// stays pending and the next sync resynchronises.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The server has no keyring record for this card.
    #[error("no keyring record for this card")]
    UnknownCard,
    /// A keyring record exists already (issuance).
    #[error("this card already has a keyring record")]
    AlreadyIssued,
    /// The card refused a command.
    #[error("the card refused {what}: {sw}")]
    Refused {
        /// The command.
        what: &'static str,
        /// The card's status word.
        sw: StatusWord,
    },
    /// The card's answer is malformed.
    #[error("malformed keyring message: {0}")]
    Malformed(#[from] ProtoError),
    /// A cryptogram, signature, confirmation or check value from the card did not verify.
    #[error("verification failed: {0}")]
    Verification(&'static str),
    /// The card's keys and the server's disagree, and no level authenticates any more (or the
    /// root is reported compromised): the card must be re-issued.
    #[error("the card needs re-issue")]
    NeedsReissue,
    /// The card disagrees with the records and no interrupted renewal explains it (internal:
    /// a sync reports it as [`SyncOutcome::Suspended`]).
    #[error("the card disagrees with the records: suspended")]
    Suspended,
    /// The store failed.
    #[error("keyring store: {0}")]
    Store(String),
    /// A stored record is inconsistent.
    #[error("corrupt keyring record: {0}")]
    Corrupt(&'static str),
    /// A cryptographic operation failed.
    #[error(transparent)]
    Crypto(#[from] tessera_crypto::CryptoError),
}
