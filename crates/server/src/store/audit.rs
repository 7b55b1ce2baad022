//! The audit log: append-only and hash-chained, in one total order across replicas, with
//! periodic signed checkpoints.
//!
//! Entry `n` stores `hash_n = SHA-256(len-prefixed "tessera audit v1", n, at, actor, issuer,
//! action, subject, detail, hash_{n-1})` with `hash_0` = 32 zero bytes. Appends take a
//! database-wide lock (PostgreSQL advisory lock; SQLite's single writer), so sequence
//! numbers are gap-free and every replica extends the same chain. On PostgreSQL the database
//! itself chains each entry when the transaction commits (its `sha256` over the same bytes),
//! so the lock is held for the commit's round trip only. Every
//! [`super::StoreConfig::checkpoint_every`] entries, the server signs `(n, hash_n)` with its
//! checkpoint key (ECDSA P-256): in the transaction that appends entry `n` on SQLite, right
//! after it commits on PostgreSQL ([`Store::commit`]). Both tables are append-only at the database level too
//! (triggers refuse `UPDATE` and `DELETE`).
//!
//! [`Store::verify_audit`] recomputes the chain: a changed row breaks its own hash, a removed
//! row leaves a gap in the sequence, and a truncated tail is caught by a checkpoint beyond
//! the last row or by the head the caller saw last (`expected_head`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Store;
use super::auth::Principal;
use crate::db::{Dialect, Row, Tx, Value};
use crate::error::{ServerError, ServerResult};
use crate::primitives::{length_prefixed, sha256, verify_p256};

/// Advisory-lock key that serialises audit appends across replicas.
pub const AUDIT_LOCK: i64 = 0x7465_7373_0002;

const GENESIS: [u8; 32] = [0; 32];

/// One audit entry.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the log, from 1, without gaps.
    pub seq: i64,
    /// Time, Unix seconds.
    pub at: i64,
    /// Who did it (`token:<id>` or `system`).
    pub actor: String,
    /// The issuer concerned, if any.
    pub issuer: Option<String>,
    /// What was done (`issuer.create`, `card.revoke`…).
    pub action: String,
    /// What it was done to.
    pub subject: String,
    /// Details, as JSON text.
    pub detail: String,
    /// Hash of the previous entry, hex.
    pub prev_hash: String,
    /// This entry's hash, hex.
    pub hash: String,
}

/// The outcome of [`Store::verify_audit`].
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct VerifyReport {
    /// Whether the log is intact.
    pub ok: bool,
    /// Entries checked.
    pub entries: i64,
    /// Sequence number of the last entry (0 for an empty log).
    pub head_seq: i64,
    /// Hash of the last entry, hex: keep it, and pass it back later to detect truncation.
    pub head_hash: String,
    /// Signed checkpoints checked.
    pub checkpoints: i64,
    /// Every problem found, in log order.
    pub problems: Vec<String>,
}

/// The hash of an entry's content (its `prev_hash` and `hash` fields are not read; the
/// previous hash comes as raw bytes): SHA-256 over the length-prefixed parts
/// (`sha256_parts`) label, `seq`, `at`, actor, issuer (empty if none), whether there is one,
/// action, subject, detail, previous hash.
fn entry_hash(e: &AuditEntry, prev: &[u8]) -> [u8; 32] {
    let (head, middle) = hash_frame(e);
    sha256(&[head.as_slice(), &e.seq.to_be_bytes(), &middle, &length_prefixed(&[prev])].concat())
}

/// An entry's hash input without its sequence number and previous hash, which only the
/// chain's head gives: the encoded parts before the sequence number, and those between it
/// and the previous hash ([`entry_hash`]; on PostgreSQL, [`CHAIN_ENTRY`]).
fn hash_frame(e: &AuditEntry) -> (Vec<u8>, Vec<u8>) {
    let mut head = length_prefixed(&[b"tessera audit v1"]);
    // The sequence number's own length prefix ends the head.
    head.extend_from_slice(&8u64.to_be_bytes());
    let issuer = e.issuer.as_deref();
    let middle = length_prefixed(&[
        &e.at.to_be_bytes(),
        e.actor.as_bytes(),
        issuer.unwrap_or("").as_bytes(),
        &[u8::from(issuer.is_some())],
        e.action.as_bytes(),
        e.subject.as_bytes(),
        e.detail.as_bytes(),
    ]);
    (head, middle)
}

/// Appends an entry on PostgreSQL, chained by the database: its sequence number follows the
/// head's, its previous hash is the head's (`$9`, the genesis hash, for the first entry), and
/// its hash is `sha256` over the entry's [`hash_frame`] (`$7`, `$8`) around the sequence
/// number and the length-prefixed previous hash, as [`entry_hash`] computes it. Run under
/// the chain's lock.
const CHAIN_ENTRY: &str = "WITH head AS (SELECT COALESCE(MAX(seq), 0) AS seq FROM audit_log) \
     INSERT INTO audit_log (seq, at, actor, issuer_id, action, subject, detail, prev_hash, hash) \
     SELECT head.seq + 1, $1::bigint, $2::text, $3::text, $4::text, $5::text, $6::text, \
     COALESCE(l.hash, $9::bytea), \
     sha256($7::bytea || int8send(head.seq + 1) || $8::bytea \
     || int8send(length(COALESCE(l.hash, $9::bytea))::bigint) || COALESCE(l.hash, $9::bytea)) \
     FROM head LEFT JOIN audit_log l ON l.seq = head.seq";

/// The last `$1` entries, newest first: those a transaction chained, read back before its
/// commit.
const CHAINED: &str = "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT $1";

fn checkpoint_message(seq: i64, hash: &[u8]) -> Vec<u8> {
    [b"tessera audit checkpoint v1".as_slice(), &seq.to_be_bytes(), hash].concat()
}

const ENTRY_COLUMNS: &str = "seq, at, actor, issuer_id, action, subject, detail, prev_hash, hash";

fn entry_from_row(r: &Row) -> ServerResult<(AuditEntry, Vec<u8>, Vec<u8>)> {
    let prev = r.blob(7)?;
    let hash = r.blob(8)?;
    Ok((
        AuditEntry {
            seq: r.int(0)?,
            at: r.int(1)?,
            actor: r.text(2)?,
            issuer: r.opt_text(3)?,
            action: r.text(4)?,
            subject: r.text(5)?,
            detail: r.text(6)?,
            prev_hash: hex::encode(&prev),
            hash: hex::encode(&hash),
        },
        prev,
        hash,
    ))
}

/// An entry's content columns, `at` to `detail`, as both appends bind them.
fn content_values(e: AuditEntry) -> Vec<Value> {
    vec![
        e.at.into(),
        e.actor.into(),
        e.issuer.into(),
        e.action.into(),
        e.subject.into(),
        e.detail.into(),
    ]
}

/// [`Store::audit`] on PostgreSQL: the chain's lock (once per transaction) and the entry,
/// deferred.
async fn chain_in_database(tx: &mut Tx, entry: AuditEntry) -> ServerResult<()> {
    if tx.chained_audit() == 0 {
        tx.lock_deferred(AUDIT_LOCK).await?;
    }
    let (head, middle) = hash_frame(&entry);
    let mut params = content_values(entry);
    params.extend([head.into(), middle.into(), GENESIS.to_vec().into()]);
    tx.execute_deferred(CHAIN_ENTRY, &params).await?;
    tx.add_chained_audit();
    Ok(())
}

impl Store {
    /// Appends an entry inside `tx` (so it commits or rolls back with the change it records).
    ///
    /// On SQLite (one writer) the entry is chained here: the head is read, the entry hashed
    /// and inserted, and every [`super::StoreConfig::checkpoint_every`]-th entry signed in a
    /// checkpoint in the same transaction. On PostgreSQL the database chains it
    /// ([`CHAIN_ENTRY`]): the chain's lock and the entry go out with the transaction's next
    /// statement, normally its commit, so the lock, which serialises every append across
    /// replicas, is held for that round trip only; the transaction then ends with
    /// [`Store::commit`], which reads the entries' sequence numbers back and signs a
    /// checkpoint that fell due.
    pub(crate) async fn audit(
        &self,
        tx: &mut Tx,
        principal: &Principal,
        issuer: Option<&str>,
        action: &str,
        subject: &str,
        detail: serde_json::Value,
    ) -> ServerResult<()> {
        let entry = AuditEntry {
            seq: 0,
            at: crate::clock::now(),
            actor: principal.actor(),
            issuer: issuer.map(str::to_owned),
            action: action.to_owned(),
            subject: subject.to_owned(),
            detail: detail.to_string(),
            prev_hash: String::new(),
            hash: String::new(),
        };
        match tx.dialect() {
            Dialect::Sqlite => self.append_here(tx, entry).await,
            Dialect::Postgres => chain_in_database(tx, entry).await,
        }
    }

    /// [`Store::audit`] on SQLite: the entry chained here.
    async fn append_here(&self, tx: &mut Tx, mut entry: AuditEntry) -> ServerResult<()> {
        // The transaction's own last append, if any; else the head (the transaction holds
        // SQLite's one writer lock: nobody else appends until it ends).
        let (seq, prev) = match tx.take_audit_head() {
            Some((seq, hash)) => (seq + 1, hash),
            None => {
                let mut rows = tx
                    .query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1", &[])
                    .await?;
                match rows.pop() {
                    Some(r) => (r.int(0)? + 1, r.blob(1)?),
                    None => (1, GENESIS.to_vec()),
                }
            }
        };
        entry.seq = seq;
        let hash = entry_hash(&entry, &prev);
        let mut params = vec![seq.into()];
        params.extend(content_values(entry));
        params.extend([prev.into(), hash.to_vec().into()]);
        tx.execute_deferred(
            &format!(
                "INSERT INTO audit_log ({ENTRY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ),
            &params,
        )
        .await?;
        if seq % self.config.checkpoint_every == 0 {
            self.insert_checkpoint(tx, seq, &hash).await?;
        }
        tx.set_audit_head(seq, hash.to_vec());
        Ok(())
    }

    /// Commits `tx` (see [`Tx::commit`]). When the database chained audit entries in it
    /// ([`Store::audit`] on PostgreSQL), their sequence numbers and hashes are read back in
    /// the commit's round trip, and a checkpoint due at one of them is signed and written
    /// right after, in a transaction of its own. Should that fail, the entries stand (and the
    /// error is logged): the next checkpoint, or the periodic one, covers them.
    pub(crate) async fn commit(&self, tx: Tx) -> ServerResult<()> {
        let chained = tx.chained_audit();
        if chained == 0 {
            return Ok(tx.commit().await?);
        }
        let rows = tx.query_and_commit(CHAINED, &[chained.into()]).await?;
        for row in rows {
            let (seq, hash) = (row.int(0)?, row.blob(1)?);
            if seq % self.config.checkpoint_every != 0 {
                continue;
            }
            let written = async {
                let mut tx = self.begin().await?;
                self.insert_checkpoint(&mut tx, seq, &hash).await?;
                ServerResult::Ok(tx.commit().await?)
            };
            if let Err(e) = written.await {
                tracing::warn!(seq, error = %e, "audit checkpoint after commit failed");
            }
        }
        Ok(())
    }

    async fn insert_checkpoint(&self, tx: &mut Tx, seq: i64, hash: &[u8]) -> ServerResult<()> {
        let sig = self.checkpoint_key.sign(&checkpoint_message(seq, hash));
        tx.execute_deferred(
            "INSERT INTO audit_checkpoints (seq, hash, at, signature) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (seq) DO NOTHING",
            &[seq.into(), hash.to_vec().into(), crate::clock::now().into(), sig.into()],
        )
        .await?;
        Ok(())
    }

    /// Signs a checkpoint at the current head now (superuser). Returns its sequence number.
    pub async fn audit_checkpoint(&self, principal: &Principal) -> ServerResult<i64> {
        principal.require_superuser()?;
        let mut tx = self.begin().await?;
        tx.lock(AUDIT_LOCK).await?;
        let last =
            tx.query_opt("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1", &[]).await?;
        let Some(last) = last else {
            return Err(ServerError::Conflict("the audit log is empty".into()));
        };
        let seq = last.int(0)?;
        self.insert_checkpoint(&mut tx, seq, &last.blob(1)?).await?;
        self.commit(tx).await?;
        Ok(seq)
    }

    /// Reads audit entries after `after` (at most `limit`). An issuer token sees only its
    /// issuer's entries.
    pub async fn audit_entries(
        &self,
        principal: &Principal,
        after: i64,
        limit: i64,
    ) -> ServerResult<Vec<AuditEntry>> {
        let limit = limit.clamp(1, 1000);
        let mut tx = self.begin().await?;
        let rows = match &principal.issuer {
            None => {
                tx.query(
                    &format!("SELECT {ENTRY_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"),
                    &[after.into(), limit.into()],
                )
                .await?
            }
            Some(i) => {
                tx.query(
                    &format!(
                        "SELECT {ENTRY_COLUMNS} FROM audit_log WHERE seq > $1 AND issuer_id = $3 ORDER BY seq LIMIT $2"
                    ),
                    &[after.into(), limit.into(), i.into()],
                )
                .await?
            }
        };
        self.commit(tx).await?;
        rows.iter().map(|r| entry_from_row(r).map(|e| e.0)).collect()
    }

    /// Recomputes the whole chain and checks every checkpoint signature. `expected_head` is
    /// a `(seq, hash)` seen earlier (from a previous report): the log must still contain it.
    pub async fn verify_audit(
        &self,
        expected_head: Option<(i64, Vec<u8>)>,
    ) -> ServerResult<VerifyReport> {
        let mut problems = Vec::new();
        let mut tx = self.begin().await?;
        let mut hashes: std::collections::BTreeMap<i64, Vec<u8>> =
            std::collections::BTreeMap::new();
        let mut expected_seq = 1;
        let mut prev = GENESIS.to_vec();
        let mut entries = 0;
        let mut after = 0;
        loop {
            let rows = tx
                .query(
                    &format!("SELECT {ENTRY_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT 1000"),
                    &[Value::Int(after)],
                )
                .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let (e, stored_prev, stored_hash) = entry_from_row(row)?;
                after = e.seq;
                entries += 1;
                if e.seq != expected_seq {
                    problems.push(format!(
                        "entries {expected_seq}..{} are missing (removed rows)",
                        e.seq - 1
                    ));
                }
                if stored_prev != prev {
                    problems.push(format!("entry {}: does not link to the entry before it", e.seq));
                }
                let h = entry_hash(&e, &stored_prev);
                if h.as_slice() != stored_hash.as_slice() {
                    problems.push(format!(
                        "entry {}: content does not match its hash (changed row)",
                        e.seq
                    ));
                }
                prev = stored_hash.clone();
                hashes.insert(e.seq, stored_hash);
                expected_seq = e.seq + 1;
            }
        }
        let head_seq = expected_seq - 1;
        let mut checkpoints = 0;
        for row in
            tx.query("SELECT seq, hash, signature FROM audit_checkpoints ORDER BY seq", &[]).await?
        {
            checkpoints += 1;
            let (seq, hash, sig) = (row.int(0)?, row.blob(1)?, row.blob(2)?);
            if verify_p256(&self.checkpoint_public, &checkpoint_message(seq, &hash), &sig).is_err()
            {
                problems.push(format!("checkpoint {seq}: bad signature"));
            }
            match hashes.get(&seq) {
                None if seq > head_seq => problems.push(format!(
                    "checkpoint {seq} is beyond the last entry {head_seq} (truncated log)"
                )),
                None => problems.push(format!("checkpoint {seq}: its entry is missing")),
                Some(h) if *h != hash => problems
                    .push(format!("checkpoint {seq}: entry hash differs from the signed one")),
                Some(_) => {}
            }
        }
        self.commit(tx).await?;
        if let Some((seq, hash)) = expected_head {
            match hashes.get(&seq) {
                None => problems.push(format!("expected head {seq} is gone (truncated log)")),
                Some(h) if *h != hash => {
                    problems.push(format!("expected head {seq}: hash differs"))
                }
                Some(_) => {}
            }
        }
        Ok(VerifyReport {
            ok: problems.is_empty(),
            entries,
            head_seq,
            head_hash: hex::encode(hashes.get(&head_seq).map(Vec::as_slice).unwrap_or(&GENESIS)),
            checkpoints,
            problems,
        })
    }
}
