//! The server's record of one card's keys, and the store it lives in.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tessera_proto::keyring::{KeyKind, Layout, Mode, RenewForm};
use zeroize::Zeroize;

use super::KeyringError;

/// One slot as the server knows it.
///
/// `secret` is, by mode and kind: symmetric, the AES-128 key shared with the card; asymmetric
/// internal, the card's public key (uncompressed SEC1, public); asymmetric external, the
/// server's P-256 private scalar. Zeroised on drop; `Debug` hides it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    /// The key material (see above).
    pub secret: Vec<u8>,
    /// The key version, as on the card.
    pub version: u32,
    /// The key check value, as on the card.
    pub kcv: [u8; 3],
    /// When this key was set (seconds since the Unix epoch).
    pub renewed_at: u64,
}

impl Drop for SlotRecord {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl std::fmt::Debug for SlotRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotRecord")
            .field("version", &self.version)
            .field("kcv", &self.kcv)
            .field("renewed_at", &self.renewed_at)
            .finish_non_exhaustive()
    }
}

/// A new key of an unfinished renewal: what the server will commit once the card confirms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingKey {
    /// [`KeyKind::code`].
    pub kind: u8,
    /// The slot.
    pub slot: u8,
    /// The new version (one above the card's current one).
    pub version: u32,
    /// The new key, when the server knows it before the card answers (symmetric keys, the
    /// server's new external key pairs); `None` for a key pair the card generates.
    pub record: Option<SlotRecord>,
}

/// A renewal sent to the card and not yet confirmed (phase one of the two-phase commit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRenewal {
    /// [`RenewForm::code`].
    pub form_code: u8,
    /// [`RenewForm::slot_bytes`].
    pub form_slots: Vec<u8>,
    /// The authenticating pair `(internal, external)`.
    pub auth: (u8, u8),
    /// The new keys.
    pub keys: Vec<PendingKey>,
    /// When the renewal was sent.
    pub started_at: u64,
}

impl PendingRenewal {
    /// The renewal's form.
    pub fn form(&self) -> Result<RenewForm, KeyringError> {
        let (form, rest) = RenewForm::parse(self.form_code, &self.form_slots)?;
        if !rest.is_empty() {
            return Err(KeyringError::Corrupt("pending renewal form"));
        }
        Ok(form)
    }
}

/// Everything the server keeps about one card's keyring. Serialisable so the database layer
/// can seal it whole under the master key (encryption at rest is the store's duty).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardKeys {
    /// The card id.
    pub card_id: Vec<u8>,
    /// `mode || M || N` ([`Layout::to_config`]).
    pub config: [u8; 3],
    /// Internal slots `1..=M` (index = slot - 1): the current, committed keys.
    pub internal: Vec<SlotRecord>,
    /// External slots `1..=N`.
    pub external: Vec<SlotRecord>,
    /// An unconfirmed renewal: the old keys above stay current until it is confirmed.
    pub pending: Option<PendingRenewal>,
    /// The root (slot 1) is compromised or no longer authenticates: the card must be
    /// re-issued; the server does not talk keyring to it any more.
    pub needs_reissue: bool,
    /// The card disagreed with the records without an interrupted renewal to explain it
    /// (rolled-back image or clone): no sync until an administrator decides.
    #[serde(default)]
    pub suspended: bool,
    /// A level reported compromised: it and every level below are renewed at the next sync.
    pub forced_level: Option<u8>,
    /// An administrator approved resynchronising this suspended card (it is known to be
    /// genuine): its next sync runs [`super::KeyringService::resynchronise`].
    #[serde(default)]
    pub resync_approved: bool,
}

impl CardKeys {
    /// The card's layout.
    pub fn layout(&self) -> Result<Layout, KeyringError> {
        Ok(Layout::from_config(&self.config)?)
    }

    /// The card's mode.
    pub fn mode(&self) -> Result<Mode, KeyringError> {
        Ok(self.layout()?.mode)
    }

    /// One slot's record.
    pub fn slot(&self, kind: KeyKind, slot: u8) -> Result<&SlotRecord, KeyringError> {
        let list = match kind {
            KeyKind::Internal => &self.internal,
            KeyKind::External => &self.external,
        };
        list.get(usize::from(slot).wrapping_sub(1)).ok_or(KeyringError::Corrupt("slot"))
    }

    /// One slot's record, to change.
    pub fn slot_mut(&mut self, kind: KeyKind, slot: u8) -> Result<&mut SlotRecord, KeyringError> {
        let list = match kind {
            KeyKind::Internal => &mut self.internal,
            KeyKind::External => &mut self.external,
        };
        list.get_mut(usize::from(slot).wrapping_sub(1)).ok_or(KeyringError::Corrupt("slot"))
    }
}

/// Where the server keeps [`CardKeys`]. The database layer implements it (sealing each record
/// under the master key); [`MemoryStore`] serves tests. Each `save` must be atomic.
pub trait KeyringStore {
    /// The record of `card_id`, if the card has a keyring.
    fn load(&self, card_id: &[u8]) -> Result<Option<CardKeys>, KeyringError>;
    /// Replaces the record of `keys.card_id` atomically.
    fn save(&mut self, keys: &CardKeys) -> Result<(), KeyringError>;
}

/// An in-memory [`KeyringStore`] that can be told to fail, to play a server crash.
#[derive(Debug, Default)]
pub struct MemoryStore {
    cards: HashMap<Vec<u8>, CardKeys>,
    /// Saves still allowed before every save fails (`None`: never fail).
    saves_left: Option<usize>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// After `n` more successful saves, every save fails (the server "crashed"); `None`
    /// heals it.
    pub fn fail_after(&mut self, n: Option<usize>) {
        self.saves_left = n;
    }
}

impl KeyringStore for MemoryStore {
    fn load(&self, card_id: &[u8]) -> Result<Option<CardKeys>, KeyringError> {
        Ok(self.cards.get(card_id).cloned())
    }

    fn save(&mut self, keys: &CardKeys) -> Result<(), KeyringError> {
        match &mut self.saves_left {
            Some(0) => return Err(KeyringError::Store("store unavailable".into())),
            Some(n) => *n -= 1,
            None => {}
        }
        self.cards.insert(keys.card_id.clone(), keys.clone());
        Ok(())
    }
}
