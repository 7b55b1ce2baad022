//! The `Store`: every operation of the server, each one database transaction, on SQLite or
//! PostgreSQL alike. All state lives in the database, so any number of server processes can
//! share one PostgreSQL database.
//!
//! Every operation that changes state appends to the audit log in the same transaction
//! ([`audit`]), and every operation checks the caller's [`auth::Principal`] first.

pub mod audit;
pub mod auth;
pub mod cards;
pub mod enrolment;
pub mod issuance;
pub mod issuers;
pub mod keyring;
pub mod sessions;
pub mod update;
pub mod vault;

use std::sync::Arc;

use crate::db::{Db, Tx, Value};
use crate::error::{ServerError, ServerResult};
use crate::primitives::{CheckpointKey, MasterKey};

/// Tunable limits of a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// A signed checkpoint is appended after every this many audit entries.
    pub checkpoint_every: i64,
    /// Lifetime of a tunnel session, in seconds, renewed by every exchange.
    pub session_ttl_secs: i64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { checkpoint_every: 64, session_ttl_secs: 300 }
    }
}

/// The server's state, over one database.
#[derive(Clone)]
pub struct Store {
    db: Db,
    master: Arc<MasterKey>,
    checkpoint_key: Arc<CheckpointKey>,
    checkpoint_public: Arc<Vec<u8>>,
    config: StoreConfig,
    /// The PKCS#11 token holding issuer keys, when configured.
    token: Option<crate::pkcs11::Token>,
}

const CHECKPOINT_KEY_PURPOSE: &str = "audit-checkpoint";

impl Store {
    /// This store with issuer keys reachable in `token` (see
    /// [`Store::create_issuer_in_token`]).
    pub fn with_token(mut self, token: crate::pkcs11::Token) -> Store {
        self.token = Some(token);
        self
    }

    /// Opens the store over a migrated database: loads the audit checkpoint key, or creates
    /// it on first start (sealed under `master`).
    pub async fn open(db: Db, master: MasterKey, config: StoreConfig) -> ServerResult<Self> {
        let mut tx = db.begin().await?;
        let row = tx
            .query_opt(
                "SELECT sealed_private, master_key_id FROM server_keys WHERE purpose = $1",
                &[CHECKPOINT_KEY_PURPOSE.into()],
            )
            .await?;
        let key = match row {
            Some(row) => {
                let key_id = row.text(1)?;
                if key_id != master.id() {
                    return Err(ServerError::Internal(format!(
                        "the server keys are sealed under master key {key_id}, not the one given ({})",
                        master.id()
                    )));
                }
                let secret = master
                    .open(&row.blob(0)?, CHECKPOINT_KEY_PURPOSE)
                    .map_err(|e| ServerError::Internal(e.to_string()))?;
                CheckpointKey::from_secret(&secret)
                    .map_err(|e| ServerError::Internal(e.to_string()))?
            }
            None => {
                let key = CheckpointKey::generate();
                // Two replicas starting together: the first insert wins, the other re-reads.
                tx.execute(
                    "INSERT INTO server_keys (purpose, public_key, sealed_private, master_key_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (purpose) DO NOTHING",
                    &[
                        CHECKPOINT_KEY_PURPOSE.into(),
                        key.public().into(),
                        master
                            .seal(&key.secret(), CHECKPOINT_KEY_PURPOSE)
                            .map_err(|e| ServerError::Internal(e.to_string()))?
                            .into(),
                        master.id().into(),
                        crate::clock::now().into(),
                    ],
                )
                .await?;
                key
            }
        };
        tx.commit().await?;
        let public = key.public();
        let store = Store {
            db,
            master: Arc::new(master),
            checkpoint_key: Arc::new(key),
            checkpoint_public: Arc::new(public),
            config,
            token: None,
        };
        // If another replica won the race above, use its key.
        let mut tx = store.db.begin().await?;
        let stored = tx
            .query_opt(
                "SELECT public_key FROM server_keys WHERE purpose = $1",
                &[CHECKPOINT_KEY_PURPOSE.into()],
            )
            .await?
            .map(|r| r.blob(0))
            .transpose()?;
        tx.commit().await?;
        if stored.as_deref() != Some(store.checkpoint_public.as_slice()) {
            return Box::pin(Self::open(store.db, (*store.master).clone(), store.config)).await;
        }
        Ok(store)
    }

    /// The database under this store.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The public key (SEC1) that verifies audit checkpoints.
    pub fn checkpoint_public_key(&self) -> &[u8] {
        &self.checkpoint_public
    }

    async fn begin(&self) -> ServerResult<Tx> {
        Ok(self.db.begin().await?)
    }

    /// Re-seals every private key under `new` and makes it the master key; returns how many
    /// keys were re-sealed. One transaction: either every key moves or none does.
    pub async fn rotate_master_key(
        &mut self,
        principal: &auth::Principal,
        new: MasterKey,
    ) -> ServerResult<usize> {
        principal.require_superuser()?;
        let old = self.master.clone();
        let mut tx = self.begin().await?;
        let mut count = 0;
        for row in tx
            .query(
                &format!("SELECT purpose, sealed_private FROM server_keys{}", tx.for_update()),
                &[],
            )
            .await?
        {
            let purpose = row.text(0)?;
            let secret = old
                .open(&row.blob(1)?, &purpose)
                .map_err(|e| ServerError::Internal(e.to_string()))?;
            tx.execute(
                "UPDATE server_keys SET sealed_private = $1, master_key_id = $2 WHERE purpose = $3",
                &[seal(&new, &secret, &purpose)?.into(), new.id().into(), purpose.into()],
            )
            .await?;
            count += 1;
        }
        for row in tx
            .query(
                &format!(
                    "SELECT id, ca_key_sealed, signing_key_sealed FROM issuers{}",
                    tx.for_update()
                ),
                &[],
            )
            .await?
        {
            let id = row.text(0)?;
            let (ca_ctx, sig_ctx) =
                (issuers::ca_key_context(&id), issuers::signing_key_context(&id));
            let ca = old
                .open(&row.blob(1)?, &ca_ctx)
                .map_err(|e| ServerError::Internal(e.to_string()))?;
            let sig = old
                .open(&row.blob(2)?, &sig_ctx)
                .map_err(|e| ServerError::Internal(e.to_string()))?;
            tx.execute(
                "UPDATE issuers SET ca_key_sealed = $1, signing_key_sealed = $2, master_key_id = $3 WHERE id = $4",
                &[seal(&new, &ca, &ca_ctx)?.into(), seal(&new, &sig, &sig_ctx)?.into(), new.id().into(), id.into()],
            )
            .await?;
            count += 2;
        }
        for row in tx
            .query(
                &format!(
                    "SELECT issuer_id, card_id, kvn, sealed_keys FROM card_keys{}",
                    tx.for_update()
                ),
                &[],
            )
            .await?
        {
            let (issuer, card, kvn) = (row.text(0)?, row.text(1)?, row.int(2)?);
            let ctx = issuance::card_keys_context(&issuer, &card, kvn);
            let keys =
                old.open(&row.blob(3)?, &ctx).map_err(|e| ServerError::Internal(e.to_string()))?;
            tx.execute(
                "UPDATE card_keys SET sealed_keys = $1, master_key_id = $2 \
                 WHERE issuer_id = $3 AND card_id = $4 AND kvn = $5",
                &[
                    seal(&new, &keys, &ctx)?.into(),
                    new.id().into(),
                    issuer.into(),
                    card.into(),
                    kvn.into(),
                ],
            )
            .await?;
            count += 1;
        }
        count += reseal_per_card(
            &mut tx,
            ("keyring_cards", "sealed_record"),
            keyring::record_context,
            &old,
            &new,
        )
        .await?;
        count += reseal_per_card(
            &mut tx,
            ("vault_keys", "sealed_private"),
            vault::private_key_context,
            &old,
            &new,
        )
        .await?;
        // Keyrings of issuances in flight are dropped: rotation ends their sessions (below).
        tx.execute("DELETE FROM keyring_issuances", &[]).await?;
        // Sessions in flight hold secrets sealed under the old key: end them.
        tx.execute(
            "UPDATE sessions SET status = 'expired', live_card = NULL WHERE status = 'active'",
            &[],
        )
        .await?;
        self.audit(
            &mut tx,
            principal,
            None,
            "master_key.rotate",
            &new.id(),
            serde_json::json!({
                "old_key_id": old.id(), "resealed": count,
            }),
        )
        .await?;
        self.commit(tx).await?;
        self.master = Arc::new(new);
        Ok(count)
    }
}

/// Re-seals `column` of every row of `table` (a per-card table keyed by `issuer_id` and
/// `card_id`) from `old` to `new`, each under `context(issuer, card)`; rows where the column is
/// NULL hold nothing and stay. Returns how many were re-sealed (master key rotation).
async fn reseal_per_card(
    tx: &mut Tx,
    (table, column): (&str, &str),
    context: fn(&str, &str) -> String,
    old: &MasterKey,
    new: &MasterKey,
) -> ServerResult<usize> {
    let rows = tx
        .query(
            &format!(
                "SELECT issuer_id, card_id, {column} FROM {table} WHERE {column} IS NOT NULL{}",
                tx.for_update()
            ),
            &[],
        )
        .await?;
    for row in &rows {
        let (issuer, card) = (row.text(0)?, row.text(1)?);
        let ctx = context(&issuer, &card);
        let secret =
            old.open(&row.blob(2)?, &ctx).map_err(|e| ServerError::Internal(e.to_string()))?;
        tx.execute(
            &format!(
                "UPDATE {table} SET {column} = $1, master_key_id = $2 \
                 WHERE issuer_id = $3 AND card_id = $4"
            ),
            &[seal(new, &secret, &ctx)?.into(), new.id().into(), issuer.into(), card.into()],
        )
        .await?;
    }
    Ok(rows.len())
}

fn seal(key: &MasterKey, secret: &[u8], context: &str) -> ServerResult<Vec<u8>> {
    key.seal(secret, context).map_err(|e| ServerError::Internal(e.to_string()))
}

fn now_value() -> Value {
    Value::Int(crate::clock::now())
}
