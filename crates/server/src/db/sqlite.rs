//! SQLite: one connection (the single writer), WAL journal, busy timeout.
//!
//! Every transaction takes the connection's mutex and starts with `BEGIN IMMEDIATE`, so there is
//! exactly one writer. SQLite calls are synchronous and run on the Tokio worker itself: the
//! statements read and write pages in memory (the WAL is written at commit) and take
//! microseconds; the commit writes the WAL and waits for the disk (`synchronous=FULL`: one
//! fsync per commit). Since the mutex lets one transaction at a time reach the disk, at most one
//! worker waits on it while the others go on serving; handing the worker's core to another
//! thread for every statement or commit (`block_in_place`) cost more CPU than it saved and
//! lowered throughput (docs/performance.md, "Remote update"). What may wait long leaves the
//! worker: a `BEGIN IMMEDIATE` that finds another process holding the write lock (tried first
//! without waiting, then again with the busy timeout under `block_in_place`), and `batch`
//! (migrations).

use std::path::Path;
use std::sync::Arc;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{BUSY_TIMEOUT, DbError, DbResult, Row, Value};

/// Prepared statements kept per connection (the server's queries are a fixed set, well under
/// this).
const STATEMENT_CACHE: usize = 256;

#[derive(Clone)]
pub(super) struct SqliteDb {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteDb {
    pub(super) fn open(path: &Path) -> DbResult<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| {
            DbError::Unavailable(format!("cannot open SQLite database {}: {e}", path.display()))
        })?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(map_err)?;
        // WAL: readers never block the writer. synchronous=FULL: a committed transaction
        // survives a power cut, not only a process crash.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(map_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(map_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(map_err)?;
        // The query planner's stability guarantee: plans never depend on bound values, so a
        // cached statement is reused as it is. Without it, a statement whose plan looked at a
        // parameter (a `LIMIT $n`, a range bound such as `next_due <= $3`) is expired at every
        // new binding and compiled again at its next step.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(map_err)?;
        // Room for every statement the server runs (the default keeps 16, fewer than one
        // update session uses, so statements were compiled again and again).
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // From now on no waiting by default: only BEGIN can meet another process's lock (the
        // transaction holds the write lock after it), and it waits off the worker (`begin`).
        conn.busy_timeout(std::time::Duration::ZERO).map_err(map_err)?;
        Ok(SqliteDb { conn: Arc::new(Mutex::new(conn)) })
    }

    pub(super) async fn begin(&self) -> DbResult<SqliteTx> {
        let conn = self.conn.clone().lock_owned().await;
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Err(e) if is_busy(&e) => blocking(|| {
                // Another process writes: wait for it, off the worker.
                conn.busy_timeout(BUSY_TIMEOUT)?;
                let begun = conn.execute_batch("BEGIN IMMEDIATE");
                conn.busy_timeout(std::time::Duration::ZERO)?;
                begun
            })
            .map_err(map_err)?,
            other => other.map_err(map_err)?,
        }
        Ok(SqliteTx { conn, open: true })
    }
}

pub(super) struct SqliteTx {
    conn: OwnedMutexGuard<Connection>,
    open: bool,
}

impl SqliteTx {
    pub(super) fn query(&mut self, sql: &str, params: &[Value]) -> DbResult<Vec<Row>> {
        let sql = rewrite_placeholders(sql);
        let conn = &*self.conn;
        let run = || {
            let mut stmt = conn.prepare_cached(&sql)?;
            let ncols = stmt.column_count();
            let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let mut values = Vec::with_capacity(ncols);
                for i in 0..ncols {
                    values.push(match row.get_ref(i)? {
                        ValueRef::Null => Value::Null,
                        ValueRef::Integer(v) => Value::Int(v),
                        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                        ValueRef::Real(_) => {
                            return Err(rusqlite::Error::InvalidColumnType(
                                i,
                                "real".into(),
                                rusqlite::types::Type::Real,
                            ));
                        }
                    });
                }
                out.push(Row(values));
            }
            Ok(out)
        };
        run().map_err(map_err)
    }

    pub(super) fn execute(&mut self, sql: &str, params: &[Value]) -> DbResult<u64> {
        let sql = rewrite_placeholders(sql);
        let conn = &*self.conn;
        conn.prepare_cached(&sql)
            .and_then(|mut stmt| stmt.execute(rusqlite::params_from_iter(params.iter())))
            .map(|n| n as u64)
            .map_err(map_err)
    }

    pub(super) fn batch(&mut self, sql: &str) -> DbResult<()> {
        let conn = &*self.conn;
        blocking(|| conn.execute_batch(sql)).map_err(map_err)
    }

    pub(super) fn commit(mut self) -> DbResult<()> {
        let result = self.conn.execute_batch("COMMIT").map_err(map_err);
        if result.is_ok() {
            self.open = false;
        }
        result
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if self.open {
            // A failed rollback leaves the transaction open; the next BEGIN then fails and
            // reports it, so nothing half-done is ever committed.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

/// `$N` → `?N` (SQLite's numbered parameter, bound by the same index).
fn rewrite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

fn map_err(e: rusqlite::Error) -> DbError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            DbError::Unavailable(format!("SQLite busy: {e}"))
        }
        Some(
            ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::ReadOnly
            | ErrorCode::NotADatabase,
        ) => DbError::Unavailable(format!("SQLite: {e}")),
        Some(ErrorCode::ConstraintViolation) => DbError::Constraint(e.to_string()),
        _ => DbError::Other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::rewrite_placeholders;

    #[test]
    fn placeholders_keep_their_numbers() {
        assert_eq!(
            rewrite_placeholders("SELECT a FROM t WHERE b = $2 AND c = $1 AND d = '$x'"),
            "SELECT a FROM t WHERE b = ?2 AND c = ?1 AND d = '$x'"
        );
    }
}
