//! The access cards a home server admits (claim 8): a small SQLite table keyed by the SHA-256
//! fingerprint of each access card's certificate, with a label and the times it was admitted
//! and revoked. A revoked card stays listed (with its revocation time) and is refused; admitting
//! it again clears the revocation.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::{fingerprint, fingerprint_hex};

/// A registry error.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The database failed.
    #[error("registry database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The label is empty or too long, or the certificate does not parse.
    #[error("registry: {0}")]
    Invalid(&'static str),
    /// No card with that fingerprint is registered.
    #[error("registry: no access card {0}")]
    NotFound(String),
}

/// One registered access card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// SHA-256 of its certificate.
    pub fingerprint: [u8; 32],
    /// What the owner called it.
    pub label: String,
    /// When it was (last) admitted, Unix seconds.
    pub admitted_at: i64,
    /// When it was revoked, if it is.
    pub revoked_at: Option<i64>,
}

/// The registry, safe to share between connections.
#[derive(Debug)]
pub struct Registry {
    db: Mutex<Connection>,
}

/// Longest label.
pub const MAX_LABEL_LEN: usize = 128;

impl Registry {
    /// Opens (creating if needed) the registry in the SQLite file `path`.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        Self::init(Connection::open(path)?)
    }

    /// An in-memory registry (tests, demos).
    pub fn in_memory() -> Result<Self, RegistryError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(db: Connection) -> Result<Self, RegistryError> {
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS access_cards (
                 fingerprint BLOB PRIMARY KEY CHECK (length(fingerprint) = 32),
                 label TEXT NOT NULL,
                 admitted_at INTEGER NOT NULL,
                 revoked_at INTEGER
             );",
        )?;
        Ok(Registry { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (each statement is
        // atomic), so a poisoned lock is still usable.
        self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits the access card whose certificate is `cert_der` under `label` at time `now`;
    /// returns its fingerprint.
    pub fn admit(&self, cert_der: &[u8], label: &str, now: i64) -> Result<[u8; 32], RegistryError> {
        if label.trim().is_empty() || label.len() > MAX_LABEL_LEN {
            return Err(RegistryError::Invalid("label must be 1 to 128 bytes"));
        }
        tessera_crypto::x509::Certificate::from_der(cert_der.to_vec())
            .map_err(|_| RegistryError::Invalid("not an X.509 certificate"))?;
        let fp = fingerprint(cert_der);
        self.db().execute(
            "INSERT INTO access_cards (fingerprint, label, admitted_at, revoked_at)
             VALUES (?1, ?2, ?3, NULL)
             ON CONFLICT (fingerprint) DO UPDATE
             SET label = excluded.label, admitted_at = excluded.admitted_at, revoked_at = NULL",
            params![&fp[..], label, now],
        )?;
        Ok(fp)
    }

    /// Revokes the card with fingerprint `fp` at time `now`.
    pub fn revoke(&self, fp: &[u8; 32], now: i64) -> Result<(), RegistryError> {
        let n = self.db().execute(
            "UPDATE access_cards SET revoked_at = ?2 WHERE fingerprint = ?1 AND revoked_at IS NULL",
            params![&fp[..], now],
        )?;
        if n == 0 {
            return Err(RegistryError::NotFound(fingerprint_hex(fp)));
        }
        Ok(())
    }

    /// Whether the card with fingerprint `fp` is admitted and not revoked.
    pub fn is_admitted(&self, fp: &[u8; 32]) -> Result<bool, RegistryError> {
        let found: Option<i64> = self
            .db()
            .query_row(
                "SELECT 1 FROM access_cards WHERE fingerprint = ?1 AND revoked_at IS NULL",
                params![&fp[..]],
                |row| row.get(0),
            )
            .optional()?;
        Ok(found.is_some())
    }

    /// Every registered card, revoked ones included, oldest first.
    pub fn list(&self) -> Result<Vec<Entry>, RegistryError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT fingerprint, label, admitted_at, revoked_at FROM access_cards
             ORDER BY admitted_at, label",
        )?;
        let rows = stmt.query_map([], |row| {
            let fp: Vec<u8> = row.get(0)?;
            Ok((fp, row.get(1)?, row.get(2)?, row.get(3)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (fp, label, admitted_at, revoked_at) = row?;
            let fingerprint = <[u8; 32]>::try_from(fp.as_slice())
                .map_err(|_| RegistryError::Invalid("stored fingerprint is not 32 bytes"))?;
            out.push(Entry { fingerprint, label, admitted_at, revoked_at });
        }
        Ok(out)
    }
}
