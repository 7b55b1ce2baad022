//! Scheduled changes on the database (`update_schedules`, migration 7): an issuer admin
//! schedules "a new `password:20` for object `wifi` of card C every 30 days"
//! ([`Store::update_schedule`]); at the card's first sync after the change is due, once the
//! card passed device authentication, the server generates the value, seals and queues it in
//! the sync's transaction ([`Store::update_run_due`]) and the sync delivers it. The plaintext
//! lives only in memory between generation and sealing.

use serde::{Deserialize, Serialize};
use tessera_crypto::rng::OsRng;
use tessera_proto::update::{Mode, ReadRule};
use utoipa::ToSchema;

use super::{QueueTarget, QueuedUpdate, update_err};
use crate::db::Tx;
use crate::error::{ServerError, ServerResult};
use crate::store::Store;
use crate::store::auth::Principal;
use crate::update::schedule::{Generator, MIN_EVERY_SECS, next_due};

/// `POST /v1/admin/issuers/{issuer}/cards/{card}/update-schedules` body.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleUpdate {
    /// The data object (1 to 32 bytes of UTF-8).
    pub object: String,
    /// The period between changes, seconds (at least 3600).
    pub every_secs: i64,
    /// What to generate: `password:N` (N letters and digits, 8 to 64).
    pub generate: String,
    /// Store the values sealed on the card (decrypted on every read).
    #[serde(default)]
    pub sealed: bool,
    /// Anyone may read the object (default: only after the PIN).
    #[serde(default)]
    pub free_read: bool,
    /// When the first change is due (Unix seconds); default: now, i.e. at the card's next
    /// sync.
    #[serde(default)]
    pub first_due: Option<i64>,
}

/// A schedule as an administrator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleEntry {
    /// The card.
    pub card_id: String,
    /// The data object.
    pub object: String,
    /// The period, seconds.
    pub every_secs: i64,
    /// The generator (`password:N`).
    pub generate: String,
    /// Values stored sealed on the card.
    pub sealed: bool,
    /// Free read rule.
    pub free_read: bool,
    /// When the next change is due (Unix seconds).
    pub next_due: i64,
    /// Changes generated so far.
    pub runs: i64,
}

fn entry(card_id: &str, r: &crate::db::Row) -> ServerResult<ScheduleEntry> {
    Ok(ScheduleEntry {
        card_id: card_id.to_owned(),
        object: r.text(0)?,
        every_secs: r.int(1)?,
        generate: r.text(2)?,
        sealed: r.int(3)? != 0,
        free_read: r.int(4)? != 0,
        next_due: r.int(5)?,
        runs: r.int(6)?,
    })
}

const COLUMNS: &str = "object_name, every_secs, generator, sealed, free_read, next_due, runs";

impl Store {
    /// Schedules (or replaces) the periodic change of `req.object` on a card registered for
    /// updates (issuer admin; audited `update.schedule`). 404 for an unknown card, 400 for a
    /// bad generator, period or name.
    pub async fn update_schedule(
        &self,
        principal: &Principal,
        issuer: &str,
        card_id: &str,
        req: &ScheduleUpdate,
    ) -> ServerResult<ScheduleEntry> {
        principal.require_issuer(issuer)?;
        let generator = Generator::parse(&req.generate).map_err(update_err)?;
        if req.every_secs < MIN_EVERY_SECS {
            return Err(ServerError::BadRequest("every_secs: at least 3600".into()));
        }
        crate::update::check_update(req.object.as_bytes(), b"").map_err(update_err)?;
        let now = crate::clock::now();
        let due = req.first_due.unwrap_or(now);
        let mut tx = self.begin().await?;
        tx.query_opt(
            "SELECT card_id FROM update_cards WHERE issuer_id = $1 AND card_id = $2",
            &[issuer.into(), card_id.into()],
        )
        .await?
        .ok_or_else(|| {
            ServerError::NotFound(format!(
                "card {card_id} of issuer {issuer} is not registered for updates"
            ))
        })?;
        tx.execute(
            "INSERT INTO update_schedules (issuer_id, card_id, object_name, every_secs, generator, sealed, free_read, next_due, runs, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9) \
             ON CONFLICT (issuer_id, card_id, object_name) DO UPDATE SET every_secs = excluded.every_secs, \
             generator = excluded.generator, sealed = excluded.sealed, free_read = excluded.free_read, \
             next_due = excluded.next_due",
            &[
                issuer.into(),
                card_id.into(),
                req.object.as_str().into(),
                req.every_secs.into(),
                generator.to_text().into(),
                i64::from(req.sealed).into(),
                i64::from(req.free_read).into(),
                due.into(),
                now.into(),
            ],
        )
        .await?;
        self.audit(
            &mut tx,
            principal,
            Some(issuer),
            "update.schedule",
            card_id,
            serde_json::json!({
                "object": req.object, "every_secs": req.every_secs,
                "generate": generator.to_text(), "first_due": due,
            }),
        )
        .await?;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM update_schedules \
                     WHERE issuer_id = $1 AND card_id = $2 AND object_name = $3"
                ),
                &[issuer.into(), card_id.into(), req.object.as_str().into()],
            )
            .await?
            .ok_or_else(|| ServerError::Internal("schedule just written".into()))?;
        let out = entry(card_id, &row)?;
        self.commit(tx).await?;
        Ok(out)
    }

    /// A card's schedules (issuer admin).
    pub async fn update_schedules(
        &self,
        principal: &Principal,
        issuer: &str,
        card_id: &str,
    ) -> ServerResult<Vec<ScheduleEntry>> {
        principal.require_issuer(issuer)?;
        let mut tx = self.begin().await?;
        let rows = tx
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM update_schedules \
                     WHERE issuer_id = $1 AND card_id = $2 ORDER BY object_name"
                ),
                &[issuer.into(), card_id.into()],
            )
            .await?;
        self.commit(tx).await?;
        rows.iter().map(|r| entry(card_id, r)).collect()
    }

    /// Removes a schedule (issuer admin; audited `update.unschedule`); 404 if there is none.
    /// Changes already queued stay queued.
    pub async fn update_unschedule(
        &self,
        principal: &Principal,
        issuer: &str,
        card_id: &str,
        object: &str,
    ) -> ServerResult<()> {
        principal.require_issuer(issuer)?;
        let mut tx = self.begin().await?;
        let n = tx
            .execute(
                "DELETE FROM update_schedules WHERE issuer_id = $1 AND card_id = $2 AND object_name = $3",
                &[issuer.into(), card_id.into(), object.into()],
            )
            .await?;
        if n != 1 {
            return Err(ServerError::NotFound(format!("no schedule for {object} of {card_id}")));
        }
        self.audit(
            &mut tx,
            principal,
            Some(issuer),
            "update.unschedule",
            card_id,
            serde_json::json!({ "object": object }),
        )
        .await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// Generates, seals and queues every change of the card due at `now` (a sync calls this
    /// with the wall clock once the card authenticated; tests with any time). Each schedule's
    /// next change is then due `every_secs` after `now`.
    pub async fn update_run_due(
        &self,
        issuer: &str,
        card_id: &str,
        now: i64,
    ) -> ServerResult<Vec<QueuedUpdate>> {
        let mut tx = self.begin().await?;
        let queued = self.update_run_due_tx(&mut tx, issuer, card_id, now).await?;
        self.commit(tx).await?;
        Ok(queued)
    }

    /// Whether a change of the card is due at `now`.
    pub(crate) async fn update_any_due(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        now: i64,
    ) -> ServerResult<bool> {
        Ok(tx
            .query_opt(
                "SELECT object_name FROM update_schedules \
                 WHERE issuer_id = $1 AND card_id = $2 AND next_due <= $3 LIMIT 1",
                &[issuer.into(), card_id.into(), now.into()],
            )
            .await?
            .is_some())
    }

    /// [`Store::update_run_due`] inside `tx`.
    pub(crate) async fn update_run_due_tx(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        now: i64,
    ) -> ServerResult<Vec<QueuedUpdate>> {
        let rows = tx
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM update_schedules \
                     WHERE issuer_id = $1 AND card_id = $2 AND next_due <= $3 ORDER BY object_name{}",
                    tx.for_update()
                ),
                &[issuer.into(), card_id.into(), now.into()],
            )
            .await?;
        let mut queued = Vec::with_capacity(rows.len());
        for row in &rows {
            let s = entry(card_id, row)?;
            let generator = Generator::parse(&s.generate).map_err(update_err)?;
            let value = generator.generate(&mut OsRng);
            let target = QueueTarget {
                issuer,
                card_id,
                object: &s.object,
                mode: if s.sealed { Mode::Sealed } else { Mode::Apply },
                rule: if s.free_read { ReadRule::Free } else { ReadRule::Pin },
            };
            let q = self.queue_in_tx(tx, &Principal::system(), &target, &value, now).await?;
            drop(value);
            tx.execute(
                "UPDATE update_schedules SET next_due = $1, runs = runs + 1 \
                 WHERE issuer_id = $2 AND card_id = $3 AND object_name = $4",
                &[
                    next_due(now, s.every_secs).into(),
                    issuer.into(),
                    card_id.into(),
                    s.object.as_str().into(),
                ],
            )
            .await?;
            self.audit(
                tx,
                &Principal::system(),
                Some(issuer),
                "update.schedule.run",
                card_id,
                serde_json::json!({
                    "object": s.object, "sequence": q.sequence, "generate": s.generate,
                    "next_due": next_due(now, s.every_secs),
                }),
            )
            .await?;
            queued.push(q);
        }
        Ok(queued)
    }
}
