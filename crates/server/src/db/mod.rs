//! The database layer under [`crate::store::Store`]: one connection handle over SQLite or
//! PostgreSQL, transactions, dialect differences and error classification.
//!
//! Queries are written once, with PostgreSQL's numbered placeholders (`$1`, `$2`, …); for
//! SQLite they are rewritten to its numbered form (`?1`, `?2`, …), which binds by the same
//! index. Both schemas use only `BIGINT`, `TEXT` and byte strings, so a [`Value`] maps to the
//! same column on either side.

mod migrate;
mod pg;
mod sqlite;

use std::path::Path;
use std::time::Duration;

pub use migrate::{LATEST_VERSION, MIGRATION_VERSIONS};

/// A database error, classified by what the caller should do about it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached or is too busy: retry later (HTTP 503).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness or foreign-key constraint refused the write.
    #[error("constraint violated: {0}")]
    Constraint(String),
    /// A row did not have the shape the code expects (a bug or a tampered database).
    #[error("unexpected data in the database: {0}")]
    Data(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Other(String),
}

/// Result of a database call.
pub type DbResult<T> = Result<T, DbError>;

/// One SQL value: the only four kinds the schemas use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// A `BIGINT` (also used for flags and Unix-second timestamps).
    Int(i64),
    /// A `TEXT`.
    Text(String),
    /// A `BLOB` (SQLite) or `BYTEA` (PostgreSQL).
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Blob(v.to_vec())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// One result row.
#[derive(Clone, Debug)]
pub struct Row(pub(crate) Vec<Value>);

impl Row {
    fn get(&self, i: usize) -> DbResult<&Value> {
        self.0.get(i).ok_or_else(|| DbError::Data(format!("column {i} missing")))
    }

    /// Column `i` as an integer.
    pub fn int(&self, i: usize) -> DbResult<i64> {
        match self.get(i)? {
            Value::Int(v) => Ok(*v),
            other => Err(DbError::Data(format!("column {i}: expected integer, got {other:?}"))),
        }
    }

    /// Column `i` as an integer or `NULL`.
    pub fn opt_int(&self, i: usize) -> DbResult<Option<i64>> {
        match self.get(i)? {
            Value::Null => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    /// Column `i` as text.
    pub fn text(&self, i: usize) -> DbResult<String> {
        match self.get(i)? {
            Value::Text(v) => Ok(v.clone()),
            other => Err(DbError::Data(format!("column {i}: expected text, got {other:?}"))),
        }
    }

    /// Column `i` as text or `NULL`.
    pub fn opt_text(&self, i: usize) -> DbResult<Option<String>> {
        match self.get(i)? {
            Value::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }

    /// Column `i` as bytes.
    pub fn blob(&self, i: usize) -> DbResult<Vec<u8>> {
        match self.get(i)? {
            Value::Blob(v) => Ok(v.clone()),
            other => Err(DbError::Data(format!("column {i}: expected bytes, got {other:?}"))),
        }
    }

    /// Column `i` as bytes or `NULL`.
    pub fn opt_blob(&self, i: usize) -> DbResult<Option<Vec<u8>>> {
        match self.get(i)? {
            Value::Null => Ok(None),
            _ => self.blob(i).map(Some),
        }
    }
}

/// The one row of a query expected to return at most one.
pub fn at_most_one(mut rows: Vec<Row>) -> DbResult<Option<Row>> {
    match rows.len() {
        0 | 1 => Ok(rows.pop()),
        n => Err(DbError::Data(format!("expected at most one row, got {n}"))),
    }
}

/// Which SQL dialect a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// Embedded SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Where the database is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbLocation {
    /// An SQLite file (created if missing).
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL connection URL (`postgres://user@host:port/db`).
    Postgres(String),
}

impl DbLocation {
    /// Parses a `--db` argument: a `postgres://` or `postgresql://` URL, or an SQLite file path
    /// (optionally prefixed `sqlite:`).
    pub fn parse(s: &str) -> Self {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            DbLocation::Postgres(s.to_owned())
        } else {
            DbLocation::Sqlite(s.strip_prefix("sqlite:").unwrap_or(s).into())
        }
    }
}

/// A handle on the database: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Db {
    inner: DbInner,
}

#[derive(Clone)]
enum DbInner {
    Sqlite(sqlite::SqliteDb),
    Postgres(pg::PgPool),
}

/// A PostgreSQL transaction-scoped advisory lock on `$1` (see [`Tx::lock`]).
const ADVISORY_LOCK: &str = "SELECT pg_advisory_xact_lock($1)";

/// How long SQLite waits for another process's lock, and PostgreSQL for a connection.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Db {
    /// Opens the database and applies every pending migration.
    pub async fn open(location: &DbLocation) -> DbResult<Self> {
        let db = Self::open_unmigrated(location).await?;
        db.migrate_to(LATEST_VERSION).await?;
        Ok(db)
    }

    /// Opens the database without touching its schema (for migration tests).
    pub async fn open_unmigrated(location: &DbLocation) -> DbResult<Self> {
        let inner = match location {
            DbLocation::Sqlite(path) => DbInner::Sqlite(sqlite::SqliteDb::open(path)?),
            DbLocation::Postgres(url) => DbInner::Postgres(pg::PgPool::new(url)?),
        };
        Ok(Db { inner })
    }

    /// Opens an SQLite database file.
    pub async fn open_sqlite(path: &Path) -> DbResult<Self> {
        Self::open(&DbLocation::Sqlite(path.to_path_buf())).await
    }

    /// The dialect of this database.
    pub fn dialect(&self) -> Dialect {
        match &self.inner {
            DbInner::Sqlite(_) => Dialect::Sqlite,
            DbInner::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Round trips to PostgreSQL that ran statements so far, on every connection of this
    /// handle (a statement's preparation, once per connection, is not counted); always 0 on
    /// SQLite, which runs in the process.
    pub fn round_trips(&self) -> u64 {
        match &self.inner {
            DbInner::Sqlite(_) => 0,
            DbInner::Postgres(pool) => pool.round_trips(),
        }
    }

    /// Starts a read-write transaction. SQLite takes the single writer lock at once
    /// (`BEGIN IMMEDIATE`); PostgreSQL runs at READ COMMITTED and callers lock the rows they
    /// change (`FOR UPDATE`, see [`Tx::for_update`]).
    pub async fn begin(&self) -> DbResult<Tx> {
        let inner = match &self.inner {
            DbInner::Sqlite(db) => TxInner::Sqlite(db.begin().await?),
            DbInner::Postgres(pool) => TxInner::Pg(Box::new(pool.begin().await?)),
        };
        Ok(Tx { inner, audit_head: None, chained_audit: 0 })
    }

    /// Checks that the database answers (for `/healthz`).
    pub async fn ping(&self) -> DbResult<()> {
        let mut tx = self.begin().await?;
        tx.query("SELECT 1", &[]).await?;
        tx.commit().await
    }

    /// The schema version currently applied.
    pub async fn schema_version(&self) -> DbResult<i64> {
        migrate::current_version(self).await
    }

    /// Applies migrations up to and including `version`.
    pub async fn migrate_to(&self, version: i64) -> DbResult<()> {
        migrate::migrate_to(self, version).await
    }
}

/// An open transaction. Dropped without [`Tx::commit`], it rolls back.
pub struct Tx {
    inner: TxInner,
    /// The audit chain's head `(seq, hash)` as this transaction last wrote it, where the
    /// server chains the entries (SQLite: the writer lock holds the chain until commit, so
    /// later appends need not read it again).
    audit_head: Option<(i64, Vec<u8>)>,
    /// How many audit entries the database chains in this transaction (PostgreSQL: see
    /// `Store::audit`). Their sequence numbers are known only there, so the transaction then
    /// ends with [`Tx::query_and_commit`], which reads them back.
    chained_audit: i64,
}

enum TxInner {
    Sqlite(sqlite::SqliteTx),
    Pg(Box<pg::PgTx>),
}

impl Tx {
    /// The dialect of this transaction's database.
    pub fn dialect(&self) -> Dialect {
        match &self.inner {
            TxInner::Sqlite(_) => Dialect::Sqlite,
            TxInner::Pg(_) => Dialect::Postgres,
        }
    }

    /// `" FOR UPDATE"` on PostgreSQL (row lock until commit), empty on SQLite, whose
    /// `BEGIN IMMEDIATE` already holds the database's one write lock.
    pub fn for_update(&self) -> &'static str {
        match self.dialect() {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// The audit chain's head this transaction wrote last, taken (see [`Tx::set_audit_head`]).
    pub(crate) fn take_audit_head(&mut self) -> Option<(i64, Vec<u8>)> {
        self.audit_head.take()
    }

    /// Records the audit chain's head after an append in this transaction (which holds the
    /// chain's lock until it ends).
    pub(crate) fn set_audit_head(&mut self, seq: i64, hash: Vec<u8>) {
        self.audit_head = Some((seq, hash));
    }

    /// How many audit entries the database chains in this transaction.
    pub(crate) fn chained_audit(&self) -> i64 {
        self.chained_audit
    }

    /// Records one more audit entry for the database to chain (see [`Tx::chained_audit`]).
    pub(crate) fn add_chained_audit(&mut self) {
        self.chained_audit += 1;
    }

    /// Runs a query and returns its rows.
    pub async fn query(&mut self, sql: &str, params: &[Value]) -> DbResult<Vec<Row>> {
        match &mut self.inner {
            TxInner::Sqlite(tx) => tx.query(sql, params),
            TxInner::Pg(tx) => tx.query(sql, params).await,
        }
    }

    /// Runs a query expected to return at most one row.
    pub async fn query_opt(&mut self, sql: &str, params: &[Value]) -> DbResult<Option<Row>> {
        at_most_one(self.query(sql, params).await?)
    }

    /// Runs the queries of `batch` in order and returns their rows, in order. On PostgreSQL
    /// they go out together, in one round trip (pipelined: the server runs each after the one
    /// before, so each sees what those changed); on SQLite they run one after the other.
    pub async fn query_all(&mut self, batch: &[(&str, &[Value])]) -> DbResult<Vec<Vec<Row>>> {
        match &mut self.inner {
            TxInner::Sqlite(tx) => {
                batch.iter().map(|(sql, params)| tx.query(sql, params)).collect()
            }
            TxInner::Pg(tx) => tx.query_all(batch).await,
        }
    }

    /// Runs a statement and returns the number of rows it changed.
    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> DbResult<u64> {
        match &mut self.inner {
            TxInner::Sqlite(tx) => tx.execute(sql, params),
            TxInner::Pg(tx) => tx.execute(sql, params).await,
        }
    }

    /// Runs a statement whose row count the caller does not need, as part of this
    /// transaction. On PostgreSQL it goes out with the transaction's next statement or its
    /// commit, in the same round trip (pipelined, in order), and an error it meets is returned
    /// by that call; on SQLite it runs now. Every later statement of the transaction sees its
    /// effect, as with [`Tx::execute`].
    pub async fn execute_deferred(&mut self, sql: &str, params: &[Value]) -> DbResult<()> {
        match &mut self.inner {
            TxInner::Sqlite(tx) => tx.execute(sql, params).map(drop),
            TxInner::Pg(tx) => tx.defer(sql, params).await,
        }
    }

    /// Runs several statements without parameters (migrations).
    pub async fn batch(&mut self, sql: &str) -> DbResult<()> {
        match &mut self.inner {
            TxInner::Sqlite(tx) => tx.batch(sql),
            TxInner::Pg(tx) => tx.batch(sql).await,
        }
    }

    /// Serialises this transaction with every other holder of the same `key` across all
    /// replicas, until commit: a transaction-scoped advisory lock on PostgreSQL; nothing on
    /// SQLite, where the writer lock already serialises every write transaction.
    pub async fn lock(&mut self, key: i64) -> DbResult<()> {
        match &mut self.inner {
            TxInner::Sqlite(_) => Ok(()),
            TxInner::Pg(tx) => {
                tx.query(ADVISORY_LOCK, &[Value::Int(key)]).await?;
                Ok(())
            }
        }
    }

    /// [`Tx::lock`], sent with the transaction's next statement or its commit, in the same
    /// round trip (see [`Tx::execute_deferred`]).
    pub async fn lock_deferred(&mut self, key: i64) -> DbResult<()> {
        match &mut self.inner {
            TxInner::Sqlite(_) => Ok(()),
            TxInner::Pg(tx) => tx.defer(ADVISORY_LOCK, &[Value::Int(key)]).await,
        }
    }

    /// Commits the transaction. One in which the database chained audit entries is refused
    /// (and rolled back): it ends with [`Tx::query_and_commit`], through the store.
    pub async fn commit(self) -> DbResult<()> {
        if self.chained_audit > 0 {
            return Err(DbError::Other(
                "audit entries were chained in this transaction: commit it through the store"
                    .into(),
            ));
        }
        match self.inner {
            TxInner::Sqlite(tx) => tx.commit().await,
            TxInner::Pg(tx) => tx.commit().await,
        }
    }

    /// Runs a query as the transaction's last statement and commits; the query's rows once the
    /// commit succeeded. On PostgreSQL both go out with the deferred statements, in one round
    /// trip.
    pub async fn query_and_commit(self, sql: &str, params: &[Value]) -> DbResult<Vec<Row>> {
        match self.inner {
            TxInner::Sqlite(mut tx) => {
                let rows = tx.query(sql, params)?;
                tx.commit().await?;
                Ok(rows)
            }
            TxInner::Pg(tx) => tx.query_and_commit(sql, params).await,
        }
    }
}
