//! The keyring service's database side (issue 4): each card's key record sealed under the
//! master key, each issuer's renewal policy, the versions a card last reported, the keyring
//! step of a tunnel sync, and an audit entry for every change of a card's keyring.
//!
//! A card's [`CardKeys`] (current keys, an unconfirmed renewal, the suspension and re-issue
//! flags) is stored whole as one sealed JSON document in `keyring_cards`, bound to
//! `card/<issuer>/<card>/keyring`; it is replaced in one statement, so every save is atomic,
//! and the sync's tunnel step writes it in the same transaction as the step's answer.
//!
//! A sync runs the keyring logic ([`crate::keyring::service`]) by deterministic replay
//! ([`crate::keyring::replay`]): the session keeps the sealed seed, snapshot, policy and time,
//! and the card's responses so far; any replica can take the next step.

use serde::{Deserialize, Serialize};
use tessera_proto::keyring::{KeyKind, Layout, Mode};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::Store;
use super::auth::Principal;
use super::sessions::Outcome;
use crate::db::Tx;
use crate::error::{ServerError, ServerResult};
use crate::keyring::policy::{MONTH, YEAR};
use crate::keyring::replay::{Replayed, describe, replay_sync};
use crate::keyring::{
    CardKeys, KeyringError, KeyringService, MemoryStore, RenewalPolicy, SyncOutcome,
};
use crate::primitives::{MasterKey, random_bytes};
use crate::tunnel::TunnelState;

pub(crate) fn record_context(issuer: &str, card_id: &str) -> String {
    format!("card/{issuer}/{card_id}/keyring")
}

fn issuance_context(session_id: &str) -> String {
    format!("session/{session_id}/keyring-issue")
}

/// How long a keyring generated for an issuance that never finished is kept (like sessions).
const ISSUANCE_RETENTION_SECS: i64 = 7 * 24 * 3600;

fn sync_context(session_id: &str) -> String {
    format!("session/{session_id}/keyring-sync")
}

/// A keyring's personalisation data groups: (DGI, value), in order.
pub type DataGroups = Vec<(u16, Vec<u8>)>;

fn internal(e: impl std::fmt::Display) -> ServerError {
    ServerError::Internal(format!("keyring: {e}"))
}

fn keyring_error(e: KeyringError) -> ServerError {
    match e {
        KeyringError::UnknownCard => ServerError::NotFound("the card has no keyring".into()),
        KeyringError::AlreadyIssued => ServerError::Conflict("the card has a keyring".into()),
        KeyringError::NeedsReissue => ServerError::Conflict("the card needs re-issue".into()),
        KeyringError::Suspended => ServerError::Conflict("the card's keyring is suspended".into()),
        other => internal(other),
    }
}

/// The cryptography of a keyring.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeyringMode {
    /// AES-128 keys, AES-CMAC cryptograms.
    Symmetric,
    /// P-256 keys, ECDSA signatures.
    Asymmetric,
}

impl From<Mode> for KeyringMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Symmetric => KeyringMode::Symmetric,
            Mode::Asymmetric => KeyringMode::Asymmetric,
        }
    }
}

/// The keyring an issuer's new cards get at issuance: mode and slot counts (M, N).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyringLayout {
    /// Symmetric or asymmetric.
    pub mode: KeyringMode,
    /// M: internal slots (1 to 8).
    pub internal_slots: u8,
    /// N: external slots (1 to 8).
    pub external_slots: u8,
}

impl KeyringLayout {
    /// The protocol layout, checking the slot counts.
    pub fn to_layout(&self) -> ServerResult<Layout> {
        let mode = match self.mode {
            KeyringMode::Symmetric => Mode::Symmetric,
            KeyringMode::Asymmetric => Mode::Asymmetric,
        };
        Layout::new(mode, self.internal_slots, self.external_slots).map_err(|_| {
            ServerError::BadRequest("keyring layout: 1 to 8 slots of each kind".into())
        })
    }
}

/// An issuer's keyring policy: renewal intervals per level and the layout of new cards.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyringPolicy {
    /// Renewal interval of level `d` at index `d`, in seconds (level 0 is the bottom pair,
    /// used for every session); `null` or beyond the list: never by schedule.
    pub intervals: Vec<Option<u64>>,
    /// Renew a single pair with one random (¶0088; symmetric cards only).
    #[serde(default)]
    pub single_random: bool,
    /// The keyring issuance installs on new cards; `null`: none.
    #[serde(default)]
    pub layout: Option<KeyringLayout>,
}

impl Default for KeyringPolicy {
    /// The bottom level monthly, the next yearly, deeper levels never by schedule; no keyring
    /// at issuance until the issuer chooses a layout.
    fn default() -> Self {
        KeyringPolicy {
            intervals: vec![Some(MONTH), Some(YEAR)],
            single_random: false,
            layout: None,
        }
    }
}

impl KeyringPolicy {
    /// The renewal part, as the keyring service takes it.
    pub fn renewal(&self) -> RenewalPolicy {
        RenewalPolicy { intervals: self.intervals.clone(), single_random: self.single_random }
    }

    fn validate(&self) -> ServerResult<()> {
        if self.intervals.len() > usize::from(tessera_proto::keyring::MAX_SLOTS) {
            return Err(ServerError::BadRequest("keyring policy: at most 8 levels".into()));
        }
        if self.intervals.iter().flatten().any(|&s| s < 60) {
            return Err(ServerError::BadRequest(
                "keyring policy: intervals are at least 60 seconds".into(),
            ));
        }
        if let Some(l) = &self.layout {
            l.to_layout()?;
        }
        Ok(())
    }
}

/// One slot in [`KeyringStatus`].
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct KeyringSlotStatus {
    /// `internal` or `external`.
    pub kind: String,
    /// The slot number.
    pub slot: u8,
    /// The version the server has committed.
    pub server_version: u32,
    /// The version of an unconfirmed renewal of this slot.
    pub pending_version: Option<u32>,
    /// The version the card reported at its last completed sync.
    pub card_version: Option<u32>,
    /// When the server's key was set, Unix seconds.
    pub renewed_at: u64,
}

/// `GET /v1/admin/issuers/{issuer}/cards/{card}/keyring`: a card's keyring on both sides.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct KeyringStatus {
    /// The issuer.
    pub issuer: String,
    /// The card.
    pub card_id: String,
    /// The card's mode.
    pub mode: KeyringMode,
    /// `ok`, `renewal-pending` (an unconfirmed renewal: the next sync resynchronises),
    /// `suspended` or `needs-reissue`.
    pub state: String,
    /// A level reported compromised, renewed at the next sync.
    pub forced_level: Option<u8>,
    /// A suspended card's resynchronisation is approved for its next sync.
    pub resync_approved: bool,
    /// When the card last reported its versions (a completed sync), Unix seconds.
    pub card_reported_at: Option<i64>,
    /// Every slot, internal then external.
    pub slots: Vec<KeyringSlotStatus>,
}

/// `POST /v1/admin/issuers/{issuer}/cards/{card}/keyring/compromised` body.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportCompromise {
    /// `internal` or `external`.
    pub kind: String,
    /// The slot; slot 1 (the root) means the card must be re-issued.
    pub slot: u8,
}

/// A slot as the card reported it at a sync (stored as JSON, public).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct ReportedSlot {
    kind: u8,
    slot: u8,
    version: u32,
}

fn kind_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Internal => "internal",
        KeyKind::External => "external",
    }
}

fn parse_kind(s: &str) -> ServerResult<KeyKind> {
    match s {
        "internal" => Ok(KeyKind::Internal),
        "external" => Ok(KeyKind::External),
        _ => Err(ServerError::BadRequest("key kind: internal or external".into())),
    }
}

fn versions(keys: &CardKeys) -> Vec<(KeyKind, u8, u32)> {
    let list = |kind, v: &Vec<crate::keyring::SlotRecord>| {
        v.iter().enumerate().map(move |(i, r)| (kind, i as u8 + 1, r.version)).collect::<Vec<_>>()
    };
    let mut out = list(KeyKind::Internal, &keys.internal);
    out.extend(list(KeyKind::External, &keys.external));
    out
}

fn version_json(v: &[(KeyKind, u8, u32)]) -> serde_json::Value {
    v.iter()
        .map(|(k, s, ver)| serde_json::json!({"kind": kind_name(*k), "slot": s, "version": ver}))
        .collect()
}

/// The audit entries for one change of a card's keyring record (never any key material).
fn transitions(
    before: Option<&CardKeys>,
    after: &CardKeys,
) -> Vec<(&'static str, serde_json::Value)> {
    let mut out = Vec::new();
    let Some(before) = before else {
        let (m, n) = (after.internal.len(), after.external.len());
        let mode = after.mode().map(KeyringMode::from).ok();
        out.push((
            "keyring.issue",
            serde_json::json!({"mode": mode, "internal_slots": m, "external_slots": n}),
        ));
        return out;
    };
    match (&before.pending, &after.pending) {
        (None, Some(p)) | (Some(_), Some(p)) if before.pending.as_ref() != Some(p) => {
            let keys: Vec<_> = p
                .keys
                .iter()
                .map(|k| serde_json::json!({"kind": k.kind, "slot": k.slot, "version": k.version}))
                .collect();
            out.push((
                "keyring.renew.start",
                serde_json::json!({"form": p.form_code, "auth": [p.auth.0, p.auth.1], "keys": keys}),
            ));
        }
        _ => {}
    }
    let (old, new) = (versions(before), versions(after));
    let changed: Vec<_> = new.iter().filter(|v| !old.contains(v)).copied().collect();
    if !changed.is_empty() {
        out.push(("keyring.renew.commit", serde_json::json!({"versions": version_json(&changed)})));
    } else if before.pending.is_some() && after.pending.is_none() {
        out.push(("keyring.renew.abandon", serde_json::json!({})));
    }
    if before.forced_level != after.forced_level {
        out.push(("keyring.forced_level", serde_json::json!({"level": after.forced_level})));
    }
    if !before.suspended && after.suspended {
        out.push(("keyring.suspend", serde_json::json!({})));
    }
    if before.suspended && !after.suspended {
        out.push(("keyring.resume", serde_json::json!({})));
    }
    if !before.resync_approved && after.resync_approved {
        out.push(("keyring.resync_approved", serde_json::json!({})));
    }
    if !before.needs_reissue && after.needs_reissue {
        out.push(("keyring.needs_reissue", serde_json::json!({})));
    }
    out
}

/// What a sync session keeps sealed: the seed, the record at the start, the policy.
#[derive(Serialize, Deserialize)]
struct SyncSecrets {
    seed: [u8; 32],
    snapshot: CardKeys,
    policy: RenewalPolicy,
}

/// The keyring step of a tunnel sync, kept in the session row (see [`crate::keyring::replay`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringSync {
    /// The card.
    pub card_id: String,
    /// The seed, the record at the start and the policy, sealed under the master key, hex.
    pub sealed: String,
    /// The sync's clock, Unix seconds.
    pub now: u64,
    /// Every command sent, hex; the last one is out.
    pub commands: Vec<String>,
    /// The card's response to each command but the last, hex.
    pub responses: Vec<String>,
    /// How many of the sync's saved records are in the database already.
    pub saves: usize,
}

fn seal_json<T: Serialize>(master: &MasterKey, value: &T, context: &str) -> ServerResult<Vec<u8>> {
    let json = Zeroizing::new(serde_json::to_vec(value).map_err(internal)?);
    master.seal(&json, context).map_err(internal)
}

fn open_json<T: for<'de> Deserialize<'de>>(
    master: &MasterKey,
    blob: &[u8],
    context: &str,
) -> ServerResult<T> {
    let json = master.open(blob, context).map_err(internal)?;
    serde_json::from_slice(&json).map_err(internal)
}

impl Store {
    /// A card's keyring record, if it has one (`lock`: for update).
    pub(crate) async fn load_keyring(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        lock: bool,
    ) -> ServerResult<Option<CardKeys>> {
        let sql = format!(
            "SELECT sealed_record FROM keyring_cards WHERE issuer_id = $1 AND card_id = $2{}",
            if lock { tx.for_update() } else { "" }
        );
        let Some(row) = tx.query_opt(&sql, &[issuer.into(), card_id.into()]).await? else {
            return Ok(None);
        };
        let keys: CardKeys =
            open_json(&self.master, &row.blob(0)?, &record_context(issuer, card_id))?;
        if keys.card_id != card_id.as_bytes() {
            return Err(internal("a keyring record is filed under another card"));
        }
        Ok(Some(keys))
    }

    /// Writes the records a keyring operation saved, in order (only the last is kept), with
    /// an audit entry for every change from `before`.
    async fn write_keyring(
        &self,
        tx: &mut Tx,
        principal: &Principal,
        (issuer, card_id): (&str, &str),
        mut before: Option<CardKeys>,
        saved: &[CardKeys],
        now: i64,
    ) -> ServerResult<()> {
        let Some(last) = saved.last() else { return Ok(()) };
        for keys in saved {
            for (action, detail) in transitions(before.as_ref(), keys) {
                self.audit(tx, principal, Some(issuer), action, card_id, detail).await?;
            }
            before = Some(keys.clone());
        }
        let sealed = seal_json(&self.master, last, &record_context(issuer, card_id))?;
        tx.execute(
            "INSERT INTO keyring_cards (issuer_id, card_id, sealed_record, master_key_id, updated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (issuer_id, card_id) DO UPDATE SET \
             sealed_record = excluded.sealed_record, master_key_id = excluded.master_key_id, \
             updated_at = excluded.updated_at",
            &[issuer.into(), card_id.into(), sealed.into(), self.master.id().into(), now.into()],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn load_keyring_policy(
        &self,
        tx: &mut Tx,
        issuer: &str,
    ) -> ServerResult<KeyringPolicy> {
        let row = tx
            .query_opt("SELECT policy FROM keyring_policies WHERE issuer_id = $1", &[issuer.into()])
            .await?;
        match row {
            None => Ok(KeyringPolicy::default()),
            Some(r) => serde_json::from_str(&r.text(0)?).map_err(internal),
        }
    }

    /// The issuer's keyring policy (the default until one is set).
    pub async fn keyring_policy(
        &self,
        principal: &Principal,
        issuer: &str,
    ) -> ServerResult<KeyringPolicy> {
        principal.require_issuer(issuer)?;
        let mut tx = self.begin().await?;
        self.require_issuer_exists(&mut tx, issuer).await?;
        let p = self.load_keyring_policy(&mut tx, issuer).await?;
        self.commit(tx).await?;
        Ok(p)
    }

    /// Sets the issuer's keyring policy (audited). It applies from each card's next sync;
    /// a sync in progress keeps the policy it started with.
    pub async fn set_keyring_policy(
        &self,
        principal: &Principal,
        issuer: &str,
        policy: &KeyringPolicy,
    ) -> ServerResult<KeyringPolicy> {
        principal.require_issuer(issuer)?;
        policy.validate()?;
        let json = serde_json::to_string(policy).map_err(internal)?;
        let mut tx = self.begin().await?;
        self.require_issuer_exists(&mut tx, issuer).await?;
        tx.execute(
            "INSERT INTO keyring_policies (issuer_id, policy, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (issuer_id) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at",
            &[issuer.into(), json.into(), crate::clock::now().into()],
        )
        .await?;
        let detail = serde_json::to_value(policy).map_err(internal)?;
        self.audit(&mut tx, principal, Some(issuer), "keyring.policy", issuer, detail).await?;
        self.commit(tx).await?;
        Ok(policy.clone())
    }

    /// Generates the keyring of a registered card that has none and records it; returns the
    /// personalisation data groups (DGI, value) to send to the card's keyring applet through
    /// its ISD (INSTALL [for personalization], STORE DATA). Issuance through the tunnel does
    /// this itself (the keyring step of [`crate::issuance`]); this serves cards personalised elsewhere.
    pub async fn issue_keyring(
        &self,
        principal: &Principal,
        issuer: &str,
        card_id: &str,
        layout: &KeyringLayout,
    ) -> ServerResult<DataGroups> {
        principal.require_issuer(issuer)?;
        let layout = layout.to_layout()?;
        let now = crate::clock::now();
        let mut tx = self.begin().await?;
        self.load_card(&mut tx, issuer, card_id, true).await?;
        let (groups, keys) = generate_keyring(card_id, layout, now)?;
        self.record_new_keyring(&mut tx, principal, issuer, card_id, &keys, now).await?;
        self.commit(tx).await?;
        Ok(groups)
    }

    /// Records a freshly generated keyring (refusing a card that has one).
    pub(crate) async fn record_new_keyring(
        &self,
        tx: &mut Tx,
        principal: &Principal,
        issuer: &str,
        card_id: &str,
        keys: &CardKeys,
        now: i64,
    ) -> ServerResult<()> {
        if self.load_keyring(tx, issuer, card_id, true).await?.is_some() {
            return Err(ServerError::Conflict(format!("card {card_id} already has a keyring")));
        }
        self.write_keyring(tx, principal, (issuer, card_id), None, std::slice::from_ref(keys), now)
            .await
    }

    /// A card's keyring on both sides: the server's versions from the database, the card's as
    /// it reported them at its last completed sync.
    pub async fn keyring_status(
        &self,
        principal: &Principal,
        issuer: &str,
        card_id: &str,
    ) -> ServerResult<KeyringStatus> {
        principal.require_issuer(issuer)?;
        let mut tx = self.begin().await?;
        self.load_card(&mut tx, issuer, card_id, false).await?;
        let keys = self
            .load_keyring(&mut tx, issuer, card_id, false)
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("card {card_id} has no keyring")))?;
        let report = tx
            .query_opt(
                "SELECT card_report, reported_at FROM keyring_cards WHERE issuer_id = $1 AND card_id = $2",
                &[issuer.into(), card_id.into()],
            )
            .await?;
        self.commit(tx).await?;
        let (reported, reported_at) = match report {
            Some(r) => {
                let slots: Vec<ReportedSlot> = match r.opt_text(0)? {
                    Some(json) => serde_json::from_str(&json).map_err(internal)?,
                    None => Vec::new(),
                };
                (slots, r.opt_int(1)?)
            }
            None => (Vec::new(), None),
        };
        status_of(issuer, card_id, &keys, &reported, reported_at)
    }

    /// Reports a key of a card as compromised (audited): slot 1 marks the card for re-issue;
    /// another slot's level and every level below it are renewed at the card's next sync.
    pub async fn keyring_compromised(
        &self,
        principal: &Principal,
        issuer: &str,
        card_id: &str,
        report: &ReportCompromise,
    ) -> ServerResult<KeyringStatus> {
        principal.require_issuer(issuer)?;
        let kind = parse_kind(&report.kind)?;
        let mut tx = self.begin().await?;
        self.load_card(&mut tx, issuer, card_id, true).await?;
        let keys = self
            .load_keyring(&mut tx, issuer, card_id, true)
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("card {card_id} has no keyring")))?;
        if !keys.layout().map_err(keyring_error)?.has(kind, report.slot) {
            return Err(ServerError::BadRequest(format!(
                "the card has no {} slot {}",
                report.kind, report.slot
            )));
        }
        let mut memory = MemoryStore::new();
        {
            use crate::keyring::KeyringStore as _;
            memory.save(&keys).map_err(keyring_error)?;
        }
        let mut service = KeyringService::new(
            memory,
            RenewalPolicy::default(),
            Box::new(tessera_crypto::rng::OsRng),
        );
        service.mark_compromised(card_id.as_bytes(), kind, report.slot).map_err(keyring_error)?;
        let after = {
            use crate::keyring::KeyringStore as _;
            service.store().load(card_id.as_bytes()).map_err(keyring_error)?
        }
        .ok_or_else(|| internal("record vanished"))?;
        self.audit(
            &mut tx,
            principal,
            Some(issuer),
            "keyring.compromised",
            card_id,
            serde_json::json!({"kind": report.kind, "slot": report.slot}),
        )
        .await?;
        let now = crate::clock::now();
        self.write_keyring(&mut tx, principal, (issuer, card_id), Some(keys), &[after], now)
            .await?;
        self.commit(tx).await?;
        self.keyring_status(principal, issuer, card_id).await
    }

    /// The keyring step of an issuance in flight: when the issuer's policy names a layout,
    /// generates the card's keyring, keeps it sealed with the session until the card confirms
    /// its personalisation, and returns the commands to wrap into the issuance session before
    /// SET STATUS ([`crate::keyring::issuance`]). No layout: no commands.
    pub(crate) async fn keyring_issuance_commands(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        session_id: &str,
        now: i64,
    ) -> ServerResult<Vec<tessera_apdu::Command>> {
        let Some(layout) = self.load_keyring_policy(tx, issuer).await?.layout else {
            return Ok(Vec::new());
        };
        let (groups, keys) = generate_keyring(card_id, layout.to_layout()?, now)?;
        let sealed = seal_json(&self.master, &keys, &issuance_context(session_id))?;
        tx.execute(
            "DELETE FROM keyring_issuances WHERE session_id = $1 OR created_at < $2",
            &[session_id.into(), (now - ISSUANCE_RETENTION_SECS).into()],
        )
        .await?;
        tx.execute(
            "INSERT INTO keyring_issuances (session_id, issuer_id, card_id, sealed_record, master_key_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                session_id.into(),
                issuer.into(),
                card_id.into(),
                sealed.into(),
                self.master.id().into(),
                now.into(),
            ],
        )
        .await?;
        Ok(crate::keyring::issuance::personalisation_commands(&groups))
    }

    /// Records the keyring of an issuance the card confirmed (audited `keyring.issue`); nothing
    /// when the issuance installed none.
    pub(crate) async fn keyring_issuance_record(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        session_id: &str,
        now: i64,
    ) -> ServerResult<()> {
        let row = tx
            .query_opt(
                "SELECT issuer_id, card_id, sealed_record FROM keyring_issuances WHERE session_id = $1",
                &[session_id.into()],
            )
            .await?;
        let Some(row) = row else { return Ok(()) };
        if row.text(0)? != issuer || row.text(1)? != card_id {
            return Err(internal("an issuance's keyring is filed under another card"));
        }
        let keys: CardKeys = open_json(&self.master, &row.blob(2)?, &issuance_context(session_id))?;
        self.record_new_keyring(tx, &Principal::system(), issuer, card_id, &keys, now).await?;
        tx.execute("DELETE FROM keyring_issuances WHERE session_id = $1", &[session_id.into()])
            .await?;
        Ok(())
    }

    /// An administrator's answer to a suspended card known to be genuine (its holder restored
    /// an old image): its next sync walks up the levels until a pair authenticates and renews
    /// every level below it, then syncs; if even the root pair fails, the card needs re-issue.
    /// Refused unless the card is suspended.
    pub async fn keyring_approve_resync(
        &self,
        principal: &Principal,
        issuer: &str,
        card_id: &str,
    ) -> ServerResult<KeyringStatus> {
        principal.require_issuer(issuer)?;
        let mut tx = self.begin().await?;
        self.load_card(&mut tx, issuer, card_id, true).await?;
        let keys = self
            .load_keyring(&mut tx, issuer, card_id, true)
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("card {card_id} has no keyring")))?;
        if !keys.suspended || keys.needs_reissue {
            return Err(ServerError::Conflict(format!(
                "card {card_id}'s keyring is not suspended"
            )));
        }
        let mut after = keys.clone();
        after.resync_approved = true;
        let now = crate::clock::now();
        self.write_keyring(&mut tx, principal, (issuer, card_id), Some(keys), &[after], now)
            .await?;
        self.commit(tx).await?;
        self.keyring_status(principal, issuer, card_id).await
    }

    /// Starts the keyring step of a sync once the card is identified: `None` when the card
    /// has no keyring. Otherwise the next tunnel state, its APDUs, and the outcome when the
    /// sync ended at once (a card suspended or awaiting re-issue gets no APDUs).
    pub(crate) async fn keyring_sync_start(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        session_id: &str,
        now: i64,
    ) -> ServerResult<Option<(TunnelState, Vec<Vec<u8>>, Option<Outcome>)>> {
        let Some(keys) = self.load_keyring(tx, issuer, card_id, true).await? else {
            return Ok(None);
        };
        if keys.needs_reissue || (keys.suspended && !keys.resync_approved) {
            let report = crate::keyring::SyncReport {
                outcome: if keys.needs_reissue {
                    SyncOutcome::NeedsReissue
                } else {
                    SyncOutcome::Suspended
                },
                resynchronised: false,
                renewals: Vec::new(),
                card_keys: None,
            };
            let outcome =
                self.keyring_outcome(tx, issuer, card_id, session_id, Ok(report), now).await?;
            return Ok(Some((TunnelState::Finished, Vec::new(), Some(outcome))));
        }
        let policy = self.load_keyring_policy(tx, issuer).await?.renewal();
        let secrets = SyncSecrets { seed: random_bytes::<32>(), snapshot: keys, policy };
        let sealed = seal_json(&self.master, &secrets, &sync_context(session_id))?;
        let state = KeyringSync {
            card_id: card_id.to_owned(),
            sealed: hex::encode(sealed),
            now: u64::try_from(now).unwrap_or(0),
            commands: Vec::new(),
            responses: Vec::new(),
            saves: 0,
        };
        self.keyring_advance(tx, issuer, session_id, state, secrets, now).await.map(Some)
    }

    /// One keyring step of a sync: the card's response to the command out, then the next
    /// command or the end.
    pub(crate) async fn keyring_sync_step(
        &self,
        tx: &mut Tx,
        issuer: &str,
        session_id: &str,
        state: &KeyringSync,
        responses: &[Vec<u8>],
        now: i64,
    ) -> ServerResult<(TunnelState, Vec<Vec<u8>>, Option<Outcome>)> {
        let [response] = responses else {
            return Err(ServerError::BadRequest(format!(
                "expected 1 response to the keyring step, got {}",
                responses.len()
            )));
        };
        if state.commands.len() != state.responses.len() + 1 {
            return Err(internal("keyring step: no command out"));
        }
        let sealed = hex::decode(&state.sealed).map_err(internal)?;
        let secrets: SyncSecrets = open_json(&self.master, &sealed, &sync_context(session_id))?;
        let mut next = state.clone();
        next.responses.push(hex::encode_upper(response));
        self.keyring_advance(tx, issuer, session_id, next, secrets, now).await
    }

    async fn keyring_advance(
        &self,
        tx: &mut Tx,
        issuer: &str,
        session_id: &str,
        mut state: KeyringSync,
        secrets: SyncSecrets,
        now: i64,
    ) -> ServerResult<(TunnelState, Vec<Vec<u8>>, Option<Outcome>)> {
        let card_id = state.card_id.clone();
        let transcript = state
            .commands
            .iter()
            .zip(&state.responses)
            .map(|(c, r)| {
                Ok((hex::decode(c).map_err(internal)?, hex::decode(r).map_err(internal)?))
            })
            .collect::<ServerResult<Vec<_>>>()?;
        let before = self.load_keyring(tx, issuer, &card_id, true).await?;
        let snapshot = secrets.snapshot.clone();
        let replay =
            replay_sync(secrets.seed, secrets.snapshot, secrets.policy, state.now, &transcript);
        // The record must be what this sync last wrote: an administrator's change in between
        // (a compromise report, a resync approval) must not be overwritten. The sync ends, and
        // the next one starts from the changed record (a renewal in flight stays pending).
        let ours = match state.saves {
            0 => Some(&snapshot),
            n => replay.saved.get(n - 1),
        };
        if before.as_ref() != ours {
            let e = KeyringError::Store("the keyring record changed during the sync".into());
            let outcome =
                self.keyring_outcome(tx, issuer, &card_id, session_id, Err(e), now).await?;
            return Ok((TunnelState::Finished, Vec::new(), Some(outcome)));
        }
        let new_saves = replay.saved.get(state.saves..).unwrap_or_default();
        self.write_keyring(tx, &Principal::system(), (issuer, &card_id), before, new_saves, now)
            .await?;
        state.saves = replay.saved.len();
        match replay.stopped {
            Replayed::Next(command) => {
                state.commands.push(hex::encode_upper(&command));
                Ok((TunnelState::Keyring(state), vec![command], None))
            }
            Replayed::Done(result) => {
                let outcome =
                    self.keyring_outcome(tx, issuer, &card_id, session_id, result, now).await?;
                Ok((TunnelState::Finished, Vec::new(), Some(outcome)))
            }
        }
    }

    async fn keyring_outcome(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        session_id: &str,
        result: Result<crate::keyring::SyncReport, KeyringError>,
        now: i64,
    ) -> ServerResult<Outcome> {
        let outcome = |result: &str, message: String| Outcome {
            result: result.into(),
            card_id: Some(card_id.to_owned()),
            message,
        };
        let report = match result {
            Ok(report) => report,
            Err(e) => {
                self.audit(
                    tx,
                    &Principal::system(),
                    Some(issuer),
                    "keyring.sync_failed",
                    card_id,
                    serde_json::json!({"session": session_id, "error": e.to_string()}),
                )
                .await?;
                return Ok(outcome("keyring-error", format!("keyring sync failed: {e}")));
            }
        };
        let message = describe(&report);
        match report.outcome {
            SyncOutcome::InAgreement => {
                if let Some(info) = &report.card_keys {
                    let slots: Vec<ReportedSlot> = info
                        .slots
                        .iter()
                        .map(|s| ReportedSlot {
                            kind: s.kind.code(),
                            slot: s.slot,
                            version: s.version,
                        })
                        .collect();
                    tx.execute(
                        "UPDATE keyring_cards SET card_report = $1, reported_at = $2 \
                         WHERE issuer_id = $3 AND card_id = $4",
                        &[
                            serde_json::to_string(&slots).map_err(internal)?.into(),
                            now.into(),
                            issuer.into(),
                            card_id.into(),
                        ],
                    )
                    .await?;
                }
                Ok(outcome("synced", message))
            }
            SyncOutcome::NeedsReissue => Ok(outcome("needs-reissue", message)),
            SyncOutcome::Suspended => {
                tx.execute(
                    "UPDATE cards SET flagged = $1 WHERE issuer_id = $2 AND card_id = $3",
                    &[message.clone().into(), issuer.into(), card_id.into()],
                )
                .await?;
                self.audit(
                    tx,
                    &Principal::system(),
                    Some(issuer),
                    "card.flag",
                    card_id,
                    serde_json::json!({"reason": message, "session": session_id}),
                )
                .await?;
                Ok(outcome("flagged", message))
            }
        }
    }
}

/// Generates a new card's keyring: its personalisation data groups and the server's record.
pub(crate) fn generate_keyring(
    card_id: &str,
    layout: Layout,
    now: i64,
) -> ServerResult<(DataGroups, CardKeys)> {
    use crate::keyring::KeyringStore as _;
    let mut service = KeyringService::new(
        MemoryStore::new(),
        RenewalPolicy::default(),
        Box::new(tessera_crypto::rng::OsRng),
    );
    let groups = service
        .issue(card_id.as_bytes(), layout, u64::try_from(now).unwrap_or(0))
        .map_err(keyring_error)?;
    let keys = service
        .store()
        .load(card_id.as_bytes())
        .map_err(keyring_error)?
        .ok_or_else(|| internal("issued record missing"))?;
    Ok((groups, keys))
}

fn status_of(
    issuer: &str,
    card_id: &str,
    keys: &CardKeys,
    reported: &[ReportedSlot],
    reported_at: Option<i64>,
) -> ServerResult<KeyringStatus> {
    let layout = keys.layout().map_err(keyring_error)?;
    let pending = |kind: KeyKind, slot: u8| {
        keys.pending.as_ref().and_then(|p| {
            p.keys.iter().find(|k| k.kind == kind.code() && k.slot == slot).map(|k| k.version)
        })
    };
    let mut slots = Vec::new();
    for (kind, list) in [(KeyKind::Internal, &keys.internal), (KeyKind::External, &keys.external)] {
        for (i, r) in list.iter().enumerate() {
            let slot = i as u8 + 1;
            slots.push(KeyringSlotStatus {
                kind: kind_name(kind).into(),
                slot,
                server_version: r.version,
                pending_version: pending(kind, slot),
                card_version: reported
                    .iter()
                    .find(|s| s.kind == kind.code() && s.slot == slot)
                    .map(|s| s.version),
                renewed_at: r.renewed_at,
            });
        }
    }
    let state = if keys.needs_reissue {
        "needs-reissue"
    } else if keys.suspended {
        "suspended"
    } else if keys.pending.is_some() {
        "renewal-pending"
    } else {
        "ok"
    };
    Ok(KeyringStatus {
        issuer: issuer.into(),
        card_id: card_id.into(),
        mode: layout.mode.into(),
        state: state.into(),
        forced_level: keys.forced_level,
        resync_approved: keys.resync_approved,
        card_reported_at: reported_at,
        slots,
    })
}
