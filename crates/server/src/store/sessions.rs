//! APDU tunnel sessions, kept entirely in the database so that any replica can serve the
//! next exchange of any session.
//!
//! A session is at step `n` with a list of APDUs out. The terminal posts the card's
//! responses for step `n`; the server checks them, advances the script ([`crate::tunnel`])
//! and answers step `n + 1` (more APDUs, or done). The request's hash and the answer are kept
//! with the session: posting the same responses for step `n` again returns the same answer
//! and changes nothing; different responses for an answered step are refused. The session
//! row is locked (`FOR UPDATE`) for the exchange, so two replicas cannot advance it twice.
//!
//! One card has at most one live session: the `live_card` column (`issuer/card`) is unique,
//! set while the session is active and the card known, cleared when it ends. Sessions expire
//! `session_ttl_secs` after their last exchange.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Store;
use super::auth::Principal;
use super::cards::STATUS_REVOKED;
use super::update::{Awaits, SyncReadPlan, SyncReads};
use crate::db::{Row, Tx, Value, at_most_one};
use crate::error::{ServerError, ServerResult};
use crate::primitives::{random_bytes, sha256_parts};
use crate::tunnel::{
    COUNTER_ISD_KVN, TunnelState, counter_apdus, identify_apdus, parse_counters, parse_identify,
    valid_card_id,
};

/// Most responses one exchange may carry.
pub const MAX_RESPONSES: usize = 64;
/// Longest response APDU accepted (extended length data plus the status word).
pub const MAX_RESPONSE_LEN: usize = 65538;

pub(crate) fn live_key(issuer: &str, card_id: &str) -> String {
    format!("{issuer}/{card_id}")
}

/// What [`Store::check_card_usable`] reads of a card, locked, for the card `filter` names:
/// its status, the highest ISD key version seen (`$1`: that counter's name), whether it has a
/// keyring record, and its lowest pending update's sequence.
fn usable_card_sql(tx: &Tx, filter: &str) -> String {
    format!(
        "SELECT c.status, (SELECT k.value FROM card_counters k WHERE k.issuer_id = c.issuer_id \
         AND k.card_id = c.card_id AND k.name = $1), \
         (SELECT COUNT(*) FROM keyring_cards r WHERE r.issuer_id = c.issuer_id AND r.card_id = c.card_id), \
         (SELECT MIN(p.sequence) FROM update_packages p WHERE p.issuer_id = c.issuer_id \
         AND p.card_id = c.card_id AND p.delivered_at IS NULL) \
         FROM cards c WHERE {filter}{}",
        tx.for_update()
    )
}

/// The live session holding a card other than `$2`, by the card's [`live_key`] `$1`: its id
/// and expiry.
const LIVE_HOLDER: &str = "SELECT id, expires_at FROM sessions WHERE live_card = $1 AND id <> $2";

/// A session to insert at step 0 ([`insert_session`]).
pub(crate) struct NewSession<'a> {
    pub(crate) id: &'a str,
    pub(crate) issuer: &'a str,
    /// The card, when known.
    pub(crate) card_id: Option<&'a str>,
    /// Its claim on the card ([`live_key`]), when it holds one.
    pub(crate) live: Option<String>,
    pub(crate) state: &'a TunnelState,
    pub(crate) now: i64,
    pub(crate) expires_at: i64,
}

/// Inserts `new`, active at step 0, with what its first exchange answers ([`Awaits`]). The
/// `INSERT` goes out with the transaction's next statement or its commit.
pub(crate) async fn insert_session(tx: &mut Tx, new: NewSession<'_>) -> ServerResult<()> {
    let state = serde_json::to_string(new.state)
        .map_err(|e| ServerError::Internal(format!("session state: {e}")))?;
    let [challenge, batch_first, batch_last] = Awaits::of(new.state).values();
    tx.execute_deferred(
        "INSERT INTO sessions (id, issuer_id, card_id, live_card, status, step, state, created_at, \
         updated_at, expires_at, challenge, batch_first, batch_last) \
         VALUES ($1, $2, $3, $4, 'active', 0, $5, $6, $6, $7, $8, $9, $10)",
        &[
            new.id.into(),
            new.issuer.into(),
            new.card_id.into(),
            new.live.into(),
            state.into(),
            new.now.into(),
            new.expires_at.into(),
            challenge,
            batch_first,
            batch_last,
        ],
    )
    .await?;
    Ok(())
}

/// `POST /v1/issuers/{issuer}/sessions` body.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// The card id, if the terminal knows it. Absent: the card identifies itself in the
    /// first step.
    #[serde(default)]
    pub card_id: Option<String>,
}

/// `POST /v1/issuers/{issuer}/sessions` query: how the session's script runs.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SessionOptions {
    /// Read the card's counters in the first step too, behind the identification APDUs (the
    /// same applet): one exchange fewer. Off by default, for terminals that expect the
    /// counters in a step of their own.
    #[serde(default)]
    pub read_counters: bool,
    /// With `read_counters` and a named card: when, in the opening transaction, the card has
    /// updates pending and no keyring work, the update step's `SELECT` update and DEVICE
    /// AUTHENTICATE (over a fresh single-use challenge recorded in that transaction) go out in
    /// the first step too, behind the counters: the combined first step, one exchange fewer
    /// again (docs/server.md, "The script"). Otherwise the steps run as without it.
    #[serde(default)]
    pub device_auth: bool,
}

/// `POST /v1/sessions/{id}/exchange` body: the card's responses to one step's APDUs.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    /// The step whose APDUs these responses answer.
    pub step: i64,
    /// One response APDU (data and status word) per command, hex, in order.
    pub responses: Vec<String>,
}

/// How a finished session ended.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Outcome {
    /// `identified`, or `flagged` when the card presented an older counter than already seen.
    pub result: String,
    /// The card, once known.
    pub card_id: Option<String>,
    /// For a human.
    pub message: String,
}

/// The server's answer: the next APDUs for the card, or the end of the session.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TunnelStep {
    /// Session id.
    pub session_id: String,
    /// The step these APDUs belong to; echo it with the responses.
    pub step: i64,
    /// Command APDUs to send to the card, hex, in order (empty when done).
    pub apdus: Vec<String>,
    /// Whether the session is over.
    pub done: bool,
    /// How it ended, when done.
    pub outcome: Option<Outcome>,
    /// When the session expires unless advanced, Unix seconds.
    pub expires_at: i64,
}

/// A card found usable in this transaction: its id, the highest ISD key version seen, and what
/// its sync will have to do.
pub(crate) struct UsableCard {
    pub(crate) card_id: String,
    isd_kvn: Option<i64>,
    /// Whether the card has a keyring record (its sync runs a keyring step).
    pub(crate) keyring: bool,
    /// Whether the card has update packages pending.
    pub(crate) updates_pending: bool,
}

struct SessionRow {
    issuer: String,
    card_id: Option<String>,
    live_card: Option<String>,
    status: String,
    step: i64,
    state: TunnelState,
    last_request: Option<Vec<u8>>,
    last_answer: Option<String>,
    expires_at: i64,
    /// Whether the session's card has a vault key queued, read with the session (`None`
    /// before the card is known).
    vault_queued: Option<bool>,
    /// What the exchange answers.
    awaits: Awaits,
}

fn session_from_row(r: &Row) -> ServerResult<SessionRow> {
    Ok(SessionRow {
        issuer: r.text(0)?,
        card_id: r.opt_text(1)?,
        live_card: r.opt_text(2)?,
        status: r.text(3)?,
        step: r.int(4)?,
        state: serde_json::from_str(&r.text(5)?)
            .map_err(|e| ServerError::Internal(format!("session state: {e}")))?,
        last_request: r.opt_blob(6)?,
        last_answer: r.opt_text(7)?,
        expires_at: r.int(8)?,
        vault_queued: r.opt_text(1)?.map(|_| r.int(9)).transpose()?.map(|n| n > 0),
        awaits: Awaits::from_row(r, 10)?,
    })
}

/// What an exchange leads to: the next state, its APDUs, the outcome when it ends, and the
/// session's claim on the card.
type NextStep = (TunnelState, Vec<Vec<u8>>, Option<Outcome>, Option<String>);

fn request_hash(step: i64, responses: &[Vec<u8>]) -> Vec<u8> {
    let step = step.to_be_bytes();
    let mut parts: Vec<&[u8]> = vec![b"tessera tunnel exchange v1", &step];
    parts.extend(responses.iter().map(Vec::as_slice));
    sha256_parts(&parts).to_vec()
}

impl Store {
    /// Marks active sessions past their expiry as expired and frees their cards. Returns how
    /// many it ended.
    pub async fn expire_sessions(&self) -> ServerResult<u64> {
        let mut tx = self.begin().await?;
        let n = tx
            .execute(
                "UPDATE sessions SET status = 'expired', live_card = NULL WHERE status = 'active' AND expires_at < $1",
                &[crate::clock::now().into()],
            )
            .await?;
        self.commit(tx).await?;
        Ok(n)
    }

    /// Deletes ended sessions (done, failed, expired) last changed more than `age_secs` ago;
    /// returns how many. Their outcomes stay in the audit log.
    pub async fn purge_sessions(&self, age_secs: i64) -> ServerResult<u64> {
        let mut tx = self.begin().await?;
        let n = tx
            .execute(
                "DELETE FROM sessions WHERE status <> 'active' AND updated_at < $1",
                &[(crate::clock::now() - age_secs).into()],
            )
            .await?;
        if n > 0 {
            let detail = serde_json::json!({ "deleted": n, "older_than_secs": age_secs });
            self.audit(&mut tx, &Principal::system(), None, "sessions.purge", "sessions", detail)
                .await?;
        }
        self.commit(tx).await?;
        Ok(n)
    }

    /// Claims the card for `session`, failing if another live session holds it.
    pub(crate) async fn claim_card(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        session: &str,
    ) -> ServerResult<String> {
        let key = live_key(issuer, card_id);
        let holder = tx.query_opt(LIVE_HOLDER, &[key.clone().into(), session.into()]).await?;
        self.take_over_card(tx, card_id, holder).await?;
        Ok(key)
    }

    /// The rest of [`Store::claim_card`] once its [`LIVE_HOLDER`] query answered: a live
    /// holder refuses the claim, one past its expiry is ended.
    async fn take_over_card(
        &self,
        tx: &mut Tx,
        card_id: &str,
        holder: Option<Row>,
    ) -> ServerResult<()> {
        let Some(holder) = holder else { return Ok(()) };
        if holder.int(1)? >= crate::clock::now() {
            return Err(ServerError::Conflict(format!(
                "card {card_id} already has a live session"
            )));
        }
        // A holder past its expiry no longer counts.
        tx.execute_deferred(
            "UPDATE sessions SET status = 'expired', live_card = NULL WHERE id = $1",
            &[holder.text(0)?.into()],
        )
        .await?;
        Ok(())
    }

    /// The card, which must be registered for `issuer` and not revoked, with the highest ISD
    /// key version seen; its row is locked for the rest of the transaction. With `claim_for`
    /// a session, the card is also claimed for it ([`Store::claim_card`]; its key returned),
    /// both read in one round trip.
    async fn check_card_usable(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        claim_for: Option<&str>,
        read: Option<Option<Row>>,
    ) -> ServerResult<(UsableCard, Option<String>)> {
        let sql = usable_card_sql(tx, "c.issuer_id = $2 AND c.card_id = $3");
        let card_params = [COUNTER_ISD_KVN.into(), issuer.into(), card_id.into()];
        let key = claim_for.map(|_| live_key(issuer, card_id));
        let holder_params: Option<[Value; 2]> =
            key.as_ref().zip(claim_for).map(|(key, session)| [key.into(), session.into()]);
        let (row, holder) = match read {
            Some(row) if claim_for.is_none() => (row, None),
            _ => {
                let mut queries = vec![(sql.as_str(), card_params.as_slice())];
                if let Some(params) = &holder_params {
                    queries.push((LIVE_HOLDER, params.as_slice()));
                }
                let mut answers = tx.query_all(&queries).await?.into_iter();
                let row = at_most_one(answers.next().unwrap_or_default())?;
                (row, at_most_one(answers.next().unwrap_or_default())?)
            }
        };
        let Some(row) = row else {
            // Which is unknown: the issuer, or its card.
            self.require_issuer_exists(tx, issuer).await?;
            return Err(ServerError::NotFound(format!("issuer {issuer} has no card {card_id}")));
        };
        if row.text(0)? == STATUS_REVOKED {
            return Err(ServerError::Forbidden(format!("card {card_id} is revoked")));
        }
        if key.is_some() {
            self.take_over_card(tx, card_id, holder).await?;
        }
        let card = UsableCard {
            card_id: card_id.to_owned(),
            isd_kvn: row.opt_int(1)?,
            keyring: row.int(2)? != 0,
            updates_pending: row.opt_int(3)?.is_some(),
        };
        Ok((card, key))
    }

    /// Opens a tunnel session for a card of `issuer` (identity optional), with the default
    /// [`SessionOptions`].
    pub async fn create_session(
        &self,
        issuer: &str,
        req: &CreateSession,
    ) -> ServerResult<TunnelStep> {
        self.create_session_with(issuer, req, SessionOptions::default()).await
    }

    /// Opens a tunnel session for a card of `issuer` (identity optional).
    pub async fn create_session_with(
        &self,
        issuer: &str,
        req: &CreateSession,
        options: SessionOptions,
    ) -> ServerResult<TunnelStep> {
        if let Some(c) = &req.card_id
            && !valid_card_id(c)
        {
            return Err(ServerError::BadRequest(
                "card id: 1 to 32 printable ASCII characters, no '/'".into(),
            ));
        }
        let id = hex::encode(random_bytes::<16>());
        let now = crate::clock::now();
        let expires_at = now + self.config.session_ttl_secs;
        let mut tx = self.begin().await?;
        if req.card_id.is_none() {
            // (A named card's query below finds an unknown issuer too.)
            self.require_issuer_exists(&mut tx, issuer).await?;
        }
        let (live, card) = match &req.card_id {
            Some(c) => {
                let (card, live) =
                    self.check_card_usable(&mut tx, issuer, c, Some(&id), None).await?;
                (live, Some(card))
            }
            None => (None, None),
        };
        // The combined first step: the update step's device authentication goes out now.
        let device_auth = match &card {
            Some(card) if options.read_counters && options.device_auth => {
                self.update_first_step(&mut tx, issuer, card, now).await?
            }
            _ => None,
        };
        let state = TunnelState::Identify {
            expected_card: req.card_id.clone(),
            read_counters: options.read_counters,
            device_auth: device_auth
                .as_ref()
                .map(|(challenge, _)| hex::encode(challenge.to_bytes())),
        };
        insert_session(
            &mut tx,
            NewSession {
                id: &id,
                issuer,
                card_id: req.card_id.as_deref(),
                live,
                state: &state,
                now,
                expires_at,
            },
        )
        .await?;
        self.audit(
            &mut tx,
            &Principal::system(),
            Some(issuer),
            "session.create",
            &id,
            serde_json::json!({
                "card_id": req.card_id,
                "device_auth": device_auth.is_some(),
            }),
        )
        .await?;
        self.commit(tx).await?;
        Ok(TunnelStep {
            session_id: id,
            step: 0,
            apdus: identify_apdus()
                .iter()
                .chain(options.read_counters.then(counter_apdus).iter().flatten())
                .chain(device_auth.iter().flat_map(|(_, apdus)| apdus))
                .map(hex::encode_upper)
                .collect(),
            done: false,
            outcome: None,
            expires_at,
        })
    }

    /// Takes the card's responses for one step and answers the next.
    pub async fn exchange(&self, session_id: &str, req: &Exchange) -> ServerResult<TunnelStep> {
        let answer = self.exchange_json(session_id, req).await?;
        serde_json::from_str(&answer).map_err(|e| ServerError::Internal(format!("answer: {e}")))
    }

    /// [`Store::exchange`]'s answer as the JSON the session row keeps for a retry, which is
    /// what the HTTP API sends (serialised once, a retry's answer not at all).
    pub async fn exchange_json(&self, session_id: &str, req: &Exchange) -> ServerResult<String> {
        if req.responses.len() > MAX_RESPONSES {
            return Err(ServerError::BadRequest(format!(
                "at most {MAX_RESPONSES} responses per exchange"
            )));
        }
        let responses = req
            .responses
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let b = hex::decode(h)
                    .map_err(|_| ServerError::BadRequest(format!("response {i}: not hex")))?;
                if b.len() < 2 || b.len() > MAX_RESPONSE_LEN {
                    return Err(ServerError::BadRequest(format!(
                        "response {i}: length {} out of range",
                        b.len()
                    )));
                }
                Ok(b)
            })
            .collect::<ServerResult<Vec<_>>>()?;
        let hash = request_hash(req.step, &responses);
        let now = crate::clock::now();

        let mut tx = self.begin().await?;
        let session_sql = format!(
            "SELECT s.issuer_id, s.card_id, s.live_card, s.status, s.step, s.state, s.last_request, \
             s.last_answer, s.expires_at, (SELECT COUNT(*) FROM vault_keys v WHERE v.issuer_id = s.issuer_id \
             AND v.card_id = s.card_id AND v.status = $2), s.challenge, s.batch_first, s.batch_last \
             FROM sessions s WHERE s.id = $1{}",
            tx.for_update()
        );
        let session_params = [session_id.into(), super::vault::STATUS_QUEUED.into()];
        // The first step identifies the card: the card the session names is read (and
        // locked, after the session) with it, in one round trip.
        let card_sql = usable_card_sql(
            &tx,
            "(c.issuer_id, c.card_id) = (SELECT s.issuer_id, s.card_id FROM sessions s WHERE s.id = $2)",
        );
        let card_params = [COUNTER_ISD_KVN.into(), session_id.into()];
        // And an update sync's reads, when the exchange looks like one of its steps.
        let sync_plan = SyncReadPlan::new(&tx, session_id, req.step, responses.len(), now);
        let mut queries = vec![(session_sql.as_str(), session_params.as_slice())];
        if req.step == 0 {
            queries.push((card_sql.as_str(), card_params.as_slice()));
        }
        queries.extend(sync_plan.queries());
        let mut answers = tx.query_all(&queries).await?.into_iter();
        let row = at_most_one(answers.next().unwrap_or_default())?
            .ok_or_else(|| ServerError::NotFound(format!("no session {session_id}")))?;
        let session_card = if req.step == 0 {
            Some(at_most_one(answers.next().unwrap_or_default())?)
        } else {
            None
        };
        let s = session_from_row(&row)?;
        let sync_read = sync_plan.read(&mut answers, s.card_id.as_deref(), &s.awaits)?;

        // A retry of the exchange already answered: the same answer, nothing changes.
        if req.step == s.step - 1 && s.last_request.as_deref() == Some(hash.as_slice()) {
            return s
                .last_answer
                .ok_or_else(|| ServerError::Internal("answered step without answer".into()));
        }
        if req.step == s.step - 1 {
            return Err(ServerError::Conflict(format!(
                "step {} was already answered with other responses",
                req.step
            )));
        }
        if s.status != "active" {
            return Err(ServerError::Gone(format!("session {session_id} is {}", s.status)));
        }
        if now > s.expires_at {
            return Err(ServerError::Gone(format!("session {session_id} expired")));
        }
        if req.step != s.step {
            return Err(ServerError::Conflict(format!(
                "these responses are for step {}, the session is at step {}",
                req.step, s.step
            )));
        }

        let (next_state, answer_apdus, outcome, live_card) = match &s.state {
            TunnelState::Identify { expected_card, read_counters, device_auth } => {
                // Identification (2), counters (1), device authentication (2): the combined
                // first step is all or nothing.
                if device_auth.is_some() && responses.len() != 5 {
                    return Err(ServerError::BadRequest(format!(
                        "expected 5 responses to the combined first step, got {}",
                        responses.len()
                    )));
                }
                let split = if *read_counters { 2 } else { responses.len() };
                let (identify, rest) = responses.split_at(split.min(responses.len()));
                let (counters, update) =
                    rest.split_at(if device_auth.is_some() { 1 } else { rest.len() });
                let card_id = parse_identify(identify)?;
                if let Some(expected) = expected_card
                    && *expected != card_id
                {
                    return Err(ServerError::Conflict(format!(
                        "the card answered id {card_id}, the session was opened for {expected}"
                    )));
                }
                let claim = if s.live_card.is_none() { Some(session_id) } else { None };
                let read = session_card.filter(|_| s.card_id.as_deref() == Some(card_id.as_str()));
                let (card, claimed) =
                    self.check_card_usable(&mut tx, &s.issuer, &card_id, claim, read).await?;
                let live = claimed.or_else(|| s.live_card.clone()).ok_or_else(|| {
                    ServerError::Internal("a session without its claim on the card".into())
                })?;
                if *read_counters {
                    let first =
                        device_auth.as_deref().map(|challenge| (challenge, update, sync_read));
                    self.after_counters(
                        &mut tx,
                        &s.issuer,
                        &card,
                        session_id,
                        counters,
                        Some(live),
                        now,
                        first,
                    )
                    .await?
                } else {
                    (TunnelState::ReadCounters { card_id }, counter_apdus(), None, Some(live))
                }
            }
            TunnelState::ReadCounters { card_id } => {
                let live = s.live_card.clone();
                let (card, _) =
                    self.check_card_usable(&mut tx, &s.issuer, card_id, None, None).await?;
                self.after_counters(
                    &mut tx, &s.issuer, &card, session_id, &responses, live, now, None,
                )
                .await?
            }
            TunnelState::Keyring(k) => {
                let (next, apdus, outcome) = self
                    .keyring_sync_step(&mut tx, &s.issuer, session_id, k, &responses, now)
                    .await?;
                // After a successful keyring step, the update step.
                let update = match (&next, &outcome) {
                    (TunnelState::Finished, Some(o)) if o.result == "synced" => {
                        self.update_sync_start(&mut tx, &s.issuer, &k.card_id, o.clone(), now)
                            .await?
                    }
                    _ => None,
                };
                match update {
                    Some((next, apdus, o)) => (next, apdus, o, s.live_card.clone()),
                    None => (next, apdus, outcome, s.live_card.clone()),
                }
            }
            TunnelState::Update(u) => {
                let (next, apdus, outcome) = self
                    .update_sync_step(&mut tx, &s.issuer, u, &responses, now, sync_read)
                    .await?;
                let live =
                    if matches!(next, TunnelState::Finished) { None } else { s.live_card.clone() };
                (next, apdus, outcome, live)
            }
            TunnelState::IssueHello { card_id, host_challenge, secrets } => {
                let challenge: [u8; 8] = hex::decode(host_challenge)
                    .ok()
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| ServerError::Internal("stored host challenge".into()))?;
                let opened = self.open_secrets(session_id, secrets)?;
                let nonce = crate::primitives::random_bytes::<{ crate::issuance::NONCE_LEN }>();
                let (apdus, hello) =
                    crate::issuance::perso_apdus(challenge, &responses, card_id, &opened, &nonce)?;
                let next = TunnelState::IssueKeygen(crate::issuance::KeygenStep {
                    card_id: card_id.clone(),
                    secrets: secrets.clone(),
                    host_challenge: host_challenge.clone(),
                    card_hello: hex::encode(hello),
                    nonce: hex::encode(nonce),
                });
                (next, apdus, None, s.live_card.clone())
            }
            TunnelState::IssueKeygen(step) => {
                let opened = self.open_secrets(session_id, &step.secrets)?;
                let public = crate::issuance::check_keygen(&responses, step, &opened)?;
                let certs =
                    self.certify_device(&mut tx, &s.issuer, &step.card_id, &public, now).await?;
                let keyring = self
                    .keyring_issuance_commands(&mut tx, &s.issuer, &step.card_id, session_id, now)
                    .await?;
                let update_nonce = crate::primitives::random_bytes::<32>();
                let apdus = crate::issuance::device_apdus(
                    step,
                    &opened,
                    &certs.ca,
                    &certs.package_signing,
                    &certs.device,
                    &keyring,
                    &update_nonce,
                )?;
                let next = TunnelState::IssueFinish(crate::issuance::FinishStep {
                    card_id: step.card_id.clone(),
                    secrets: step.secrets.clone(),
                    device_cert: hex::encode(certs.device.der()),
                    device_serial: hex::encode(certs.serial),
                    commands: apdus.len(),
                    update_nonce: hex::encode(update_nonce),
                });
                (next, apdus, None, s.live_card.clone())
            }
            TunnelState::IssueFinish(step) => {
                let opened = self.open_secrets(session_id, &step.secrets)?;
                let update_key = crate::issuance::check_device(&responses, step)?;
                let card_id = &step.card_id;
                let der = hex::decode(&step.device_cert)
                    .map_err(|_| ServerError::Internal("stored device certificate".into()))?;
                let update_nonce = hex::decode(&step.update_nonce)
                    .map_err(|_| ServerError::Internal("stored update key nonce".into()))?;
                self.record_issued(&mut tx, &s.issuer, card_id, session_id, &opened, now).await?;
                self.keyring_issuance_record(&mut tx, &s.issuer, card_id, session_id, now).await?;
                self.record_device_certificate(
                    &mut tx,
                    &s.issuer,
                    card_id,
                    &step.device_serial,
                    &der,
                )
                .await?;
                self.update_register_card(
                    &mut tx,
                    &s.issuer,
                    card_id,
                    &der,
                    &update_nonce,
                    &update_key,
                    now,
                )
                .await?;
                if let Some(value) = opened.legacy_static()? {
                    // Registered in the issuance's own transaction: the card never holds a
                    // static authenticator the server does not know.
                    self.update_set_legacy_static_in(
                        &mut tx,
                        &Principal::system(),
                        &s.issuer,
                        card_id,
                        Some(value),
                    )
                    .await?;
                }
                let outcome = Outcome {
                    result: "issued".into(),
                    card_id: Some(card_id.clone()),
                    message: "card personalised: new keys, card id, PIN and PUK, device key and \
                              certificate, issuer trust anchors; life cycle PERSONALIZED"
                        .into(),
                };
                (TunnelState::Finished, Vec::new(), Some(outcome), None)
            }
            TunnelState::Vault(v) => {
                let (next, apdus, outcome) =
                    self.vault_sync_step(&mut tx, &s.issuer, v, &responses, now).await?;
                let live =
                    if matches!(next, TunnelState::Finished) { None } else { s.live_card.clone() };
                (next, apdus, outcome, live)
            }
            TunnelState::Finished => {
                return Err(ServerError::Gone(format!(
                    "session {session_id} has nothing more to do"
                )));
            }
        };
        // The vault step, once the sync's other steps are done and a key is queued.
        let (next_state, answer_apdus, outcome, live_card) = match self
            .vault_sync_after(
                &mut tx,
                &s.issuer,
                &s.state,
                s.card_id.as_deref().zip(s.vault_queued),
                (next_state, answer_apdus, outcome),
            )
            .await?
        {
            (next @ TunnelState::Vault(_), apdus, o) => (next, apdus, o, s.live_card.clone()),
            (next, apdus, o) => (next, apdus, o, live_card),
        };

        let done = matches!(next_state, TunnelState::Finished);
        let status = match &outcome {
            Some(o) if o.result == "flagged" => "failed",
            _ if done => "done",
            _ => "active",
        };
        let expires_at = if done { s.expires_at } else { now + self.config.session_ttl_secs };
        let card_id = match &next_state {
            TunnelState::ReadCounters { card_id } => Some(card_id.clone()),
            _ => s.card_id.clone(),
        };
        let answer = TunnelStep {
            session_id: session_id.to_owned(),
            step: s.step + 1,
            apdus: answer_apdus.iter().map(hex::encode_upper).collect(),
            done,
            outcome,
            expires_at,
        };
        let answer_json =
            serde_json::to_string(&answer).map_err(|e| ServerError::Internal(e.to_string()))?;
        let state_json =
            serde_json::to_string(&next_state).map_err(|e| ServerError::Internal(e.to_string()))?;
        let [challenge, batch_first, batch_last] = Awaits::of(&next_state).values();
        tx.execute_deferred(
            "UPDATE sessions SET step = $1, state = $2, status = $3, card_id = $4, live_card = $5, \
             last_request = $6, last_answer = $7, updated_at = $8, expires_at = $9, \
             challenge = $11, batch_first = $12, batch_last = $13 WHERE id = $10",
            &[
                (s.step + 1).into(),
                state_json.into(),
                status.into(),
                card_id.into(),
                if done { Value::Null } else { live_card.into() },
                hash.into(),
                answer_json.clone().into(),
                now.into(),
                expires_at.into(),
                session_id.into(),
                challenge,
                batch_first,
                batch_last,
            ],
        )
        .await?;
        if done {
            self.audit(
                &mut tx,
                &Principal::system(),
                Some(&s.issuer),
                "session.end",
                session_id,
                serde_json::json!({
                    "status": status, "outcome": answer.outcome,
                }),
            )
            .await?;
        }
        self.commit(tx).await?;
        Ok(answer_json)
    }

    /// The counter step's answers: checks the ISD key version of `card` (checked usable, and
    /// locked, in this transaction), then starts the sync's first pending step (keyring, else
    /// update) or ends the session. `live` is the session's claim on the card.
    ///
    /// `device_auth`, in the combined first step: the challenge that went out and the card's
    /// answers to `SELECT` update and DEVICE AUTHENTICATE. They are looked at only after the
    /// counters passed and when no keyring work came up since the session opened; otherwise
    /// the answer is discarded and the challenge used up, unusable later.
    #[allow(clippy::too_many_arguments)]
    async fn after_counters(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card: &UsableCard,
        session_id: &str,
        responses: &[Vec<u8>],
        live: Option<String>,
        now: i64,
        device_auth: Option<(&str, &[Vec<u8>], SyncReads)>,
    ) -> ServerResult<NextStep> {
        let card_id = card.card_id.as_str();
        let kvn = parse_counters(responses)?;
        let outcome = self.check_counter(tx, issuer, card, session_id, kvn, now).await?;
        if outcome.result == "flagged" {
            if let Some((challenge, ..)) = device_auth {
                self.update_discard_challenge(tx, challenge).await?;
            }
            return Ok((TunnelState::Finished, Vec::new(), Some(outcome), None));
        }
        let keyring = match card.keyring {
            true => self.keyring_sync_start(tx, issuer, card_id, session_id, now).await?,
            false => None,
        };
        if let Some((next, apdus, keyring)) = keyring {
            if let Some((challenge, ..)) = device_auth {
                self.update_discard_challenge(tx, challenge).await?;
            }
            return Ok((next, apdus, keyring, live));
        }
        if let Some((challenge, answers, read)) = device_auth {
            let (next, apdus, o) = self
                .update_sync_first(tx, issuer, card_id, outcome, challenge, answers, now, read)
                .await?;
            let live = if matches!(next, TunnelState::Finished) { None } else { live };
            return Ok((next, apdus, o, live));
        }
        // The update step, when the card has updates pending.
        Ok(match self.update_sync_start(tx, issuer, card_id, outcome.clone(), now).await? {
            Some((next, apdus, o)) => (next, apdus, o, live),
            None => (TunnelState::Finished, Vec::new(), Some(outcome), None),
        })
    }

    /// Compares the presented ISD key version with the highest seen: older flags the card
    /// (clone or rolled-back image), newer is recorded.
    async fn check_counter(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card: &UsableCard,
        session_id: &str,
        kvn: u8,
        now: i64,
    ) -> ServerResult<Outcome> {
        let seen = card.isd_kvn;
        let presented = i64::from(kvn);
        let card_id = &card.card_id;
        if let Some(seen) = seen.filter(|v| presented < *v) {
            let reason = format!(
                "{COUNTER_ISD_KVN}: card presented {presented}, server has seen {seen} \
                 (clone or rolled-back image)"
            );
            tx.execute(
                "UPDATE cards SET flagged = $1 WHERE issuer_id = $2 AND card_id = $3",
                &[reason.clone().into(), issuer.into(), card_id.into()],
            )
            .await?;
            self.audit(
                tx,
                &Principal::system(),
                Some(issuer),
                "card.flag",
                card_id,
                serde_json::json!({"reason": reason, "session": session_id}),
            )
            .await?;
            return Ok(Outcome {
                result: "flagged".into(),
                card_id: Some(card_id.clone()),
                message: reason,
            });
        }
        if seen != Some(presented) {
            self.set_counter(tx, issuer, card_id, COUNTER_ISD_KVN, presented, now).await?;
        }
        Ok(Outcome {
            result: "identified".into(),
            card_id: Some(card_id.clone()),
            message: "card identified; nothing else is pending for it".into(),
        })
    }

    pub(crate) async fn set_counter(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        name: &str,
        value: i64,
        now: i64,
    ) -> ServerResult<()> {
        tx.execute_deferred(
            "INSERT INTO card_counters (issuer_id, card_id, name, value, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (issuer_id, card_id, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            &[issuer.into(), card_id.into(), name.into(), value.into(), now.into()],
        )
        .await?;
        self.audit(
            tx,
            &Principal::system(),
            Some(issuer),
            "card.counter",
            card_id,
            serde_json::json!({
                "name": name, "value": value,
            }),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests may unwrap

    use tessera_apdu::{Command, StatusWord};
    use tessera_card::{Card, CardOptions};

    use super::*;
    use crate::db::{Db, DbLocation};
    use crate::store::issuance::StartIssuance;
    use crate::store::update::QueueUpdate;

    fn relay(card: &mut Card, apdus: &[String]) -> Vec<String> {
        apdus.iter().map(|a| hex::encode_upper(card.transmit(&hex::decode(a).unwrap()))).collect()
    }

    /// A store on a fresh SQLite file with issuer `acme` and an issued in-memory card
    /// `CARD-A` with one update pending; the card has its PIN verified.
    async fn store_with_card(dir: &std::path::Path) -> (Store, Card) {
        let db = Db::open(&DbLocation::Sqlite(dir.join("t.db"))).await.unwrap();
        let key = crate::primitives::MasterKey::from_bytes([7; 32]);
        let store = Store::open(db, key, super::super::StoreConfig::default()).await.unwrap();
        let root = Principal::system();
        store.create_issuer(&root, "acme", "Acme").await.unwrap();
        let start = StartIssuance { card_id: "CARD-A".into(), legacy_static_auth: false };
        let issuance = store.start_issuance(&root, "acme", &start).await.unwrap();
        let mut card = Card::in_memory(CardOptions::default());
        card.power_on();
        let mut step = issuance.session.clone();
        while !step.done {
            let req = Exchange { step: step.step, responses: relay(&mut card, &step.apdus) };
            step = store.exchange(&step.session_id, &req).await.unwrap();
        }
        let queue = QueueUpdate {
            object: "wifi".into(),
            value_hex: hex::encode(b"pw-1"),
            sealed: false,
            free_read: false,
        };
        store.queue_update(&root, "acme", "CARD-A", &queue).await.unwrap();
        card.reset();
        let isd = Command::new(0x00, 0xA4, 0x04, 0x00).with_data(ISD_AID.to_vec()).with_le(256);
        card.transmit(&isd.to_bytes().unwrap());
        let mut block = issuance.initial_pin.as_bytes().to_vec();
        block.resize(8, 0xFF);
        let verify = Command::new(0x00, 0x20, 0x00, 0x81).with_data(block).to_bytes().unwrap();
        assert_eq!(card.transmit(&verify), StatusWord::SUCCESS.to_bytes());
        (store, card)
    }

    use crate::tunnel::ISD_AID;

    #[tokio::test]
    async fn counters_read_with_the_identification_save_one_exchange() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut card) = store_with_card(dir.path()).await;
        let req = CreateSession { card_id: Some("CARD-A".into()) };
        let options = SessionOptions { read_counters: true, device_auth: false };
        let first = store.create_session_with("acme", &req, options).await.unwrap();
        // SELECT ISD, GET DATA card id, GET DATA key information.
        assert_eq!(first.apdus.len(), 3);
        assert!(first.apdus[2].starts_with("80CA00E0"), "{:?}", first.apdus);
        let responses = relay(&mut card, &first.apdus);
        let id = first.session_id.clone();
        // Too few answers for the combined step: refused, nothing changes.
        let short = Exchange { step: 0, responses: responses[..2].to_vec() };
        assert!(matches!(store.exchange(&id, &short).await, Err(ServerError::BadRequest(_))));
        let req0 = Exchange { step: 0, responses };
        let update = store.exchange(&id, &req0).await.unwrap();
        // Straight to the update step: SELECT update, DEVICE AUTHENTICATE.
        assert_eq!((update.step, update.apdus.len()), (1, 2));
        // The same answers posted again: the same answer, nothing changes.
        assert_eq!(store.exchange(&id, &req0).await.unwrap(), update);
        let mut step = update;
        let mut exchanges = 1;
        while !step.done {
            let req = Exchange { step: step.step, responses: relay(&mut card, &step.apdus) };
            step = store.exchange(&id, &req).await.unwrap();
            exchanges += 1;
        }
        let outcome = step.outcome.unwrap();
        assert!(outcome.message.ends_with("updates: 1 delivered"), "{outcome:?}");
        // Identification and counters, device authentication, the package: three exchanges.
        assert_eq!(exchanges, 3);
        let audit = store.audit_entries(&Principal::system(), 0, 1000).await.unwrap();
        assert_eq!(audit.iter().filter(|e| e.action == "update.deliver").count(), 1);
        assert!(audit.iter().any(|e| e.action == "session.end" && e.subject == id));
    }

    #[tokio::test]
    async fn a_combined_first_step_identifies_an_unnamed_card() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut card) = store_with_card(dir.path()).await;
        let req = CreateSession { card_id: Some("CARD-B".into()) };
        let options = SessionOptions { read_counters: true, device_auth: false };
        // CARD-B is unknown to the issuer: no session.
        assert!(store.create_session_with("acme", &req, options).await.is_err());
        let req = CreateSession { card_id: None };
        let first = store.create_session_with("acme", &req, options).await.unwrap();
        assert_eq!(first.apdus.len(), 3);
        let responses = relay(&mut card, &first.apdus);
        let step = store.exchange(&first.session_id, &Exchange { step: 0, responses }).await;
        // Identified as CARD-A, claimed, and on to the update step.
        assert_eq!(step.unwrap().apdus.len(), 2);
    }
}
