//! SQLite: one connection (the single writer), WAL journal, busy timeout, group commit.
//!
//! Every transaction takes the connection's mutex and runs in a savepoint of the connection's
//! outer transaction (`BEGIN IMMEDIATE`), so there is exactly one writer. SQLite calls are
//! synchronous and run on the Tokio worker itself: the statements read and write pages in
//! memory (the WAL is written at commit) and take microseconds; the commit writes the WAL and
//! waits for the disk (`synchronous=FULL`: one fsync per commit). Since the mutex lets one
//! transaction at a time reach the disk, at most one worker waits on it while the others go on
//! serving; handing the worker's core to another thread for every statement or commit
//! (`block_in_place`) cost more CPU than it saved and lowered throughput (docs/performance.md,
//! "Remote update"). What may wait long leaves the worker: a `BEGIN IMMEDIATE` that finds
//! another process holding the write lock (tried first without waiting, then again with the
//! busy timeout under `block_in_place`), and `batch` (migrations).
//!
//! **Group commit** ([`SqliteTx`]): a transaction that commits while others wait for the
//! connection leaves the outer transaction open for them, and one `COMMIT` (one WAL write, one
//! fsync) then makes the whole group durable; nobody is answered before it returned
//! (docs/decisions.md, "SQLite group commit").

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::{Mutex, OwnedMutexGuard, oneshot};

use super::{BUSY_TIMEOUT, DbError, DbResult, Row, Value};

/// Prepared statements kept per connection (the server's queries are a fixed set, well under
/// this).
const STATEMENT_CACHE: usize = 256;

/// The savepoint each transaction of a group runs in.
const SAVEPOINT: &str = "SAVEPOINT member";

#[derive(Clone)]
pub(super) struct SqliteDb {
    shared: Arc<Mutex<Shared>>,
    /// Transactions waiting in [`SqliteDb::begin`] for the connection: while there are any, a
    /// finished transaction leaves the outer transaction open for them (group commit).
    waiting: Arc<AtomicUsize>,
}

/// The connection and its group commit, behind the mutex.
struct Shared {
    conn: Connection,
    /// The members whose work is in the open outer transaction, waiting for its commit.
    group: Vec<oneshot::Sender<DbResult<()>>>,
    /// Raised each time an outer transaction ends (committed or rolled back): a member that
    /// finds it moved on knows its group was answered.
    generation: u64,
    /// Set when a rollback failed: the connection's transaction state is unknown, and nothing
    /// begins until a `ROLLBACK` succeeds.
    broken: Option<String>,
}

impl Shared {
    /// Commits the outer transaction and answers every member of its group.
    fn commit_group(&mut self) -> DbResult<()> {
        match self.conn.execute_batch("COMMIT") {
            Ok(()) => {
                for member in self.group.drain(..) {
                    let _ = member.send(Ok(()));
                }
                self.generation += 1;
                Ok(())
            }
            Err(e) => {
                let e = map_err(e);
                self.fail_group(&e);
                Err(e)
            }
        }
    }

    /// Rolls the outer transaction back (if SQLite has not already) and fails every member of
    /// its group with `e`: nothing of theirs was committed.
    fn fail_group(&mut self, e: &DbError) {
        self.rollback_outer();
        for member in self.group.drain(..) {
            let _ = member.send(Err(e.clone()));
        }
        self.generation += 1;
    }

    /// `ROLLBACK` of the outer transaction, if one is open; a failure marks the connection
    /// broken.
    fn rollback_outer(&mut self) {
        if !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            self.broken = Some(e.to_string());
        }
    }
}

/// Counts a transaction waiting for the connection, until it has it (or gives up).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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
        let shared = Shared { conn, group: Vec::new(), generation: 0, broken: None };
        Ok(SqliteDb {
            shared: Arc::new(Mutex::new(shared)),
            waiting: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// A transaction: a savepoint in the connection's outer transaction, which is begun here
    /// (`BEGIN IMMEDIATE`) unless an earlier transaction of the same group left it open.
    pub(super) async fn begin(&self) -> DbResult<SqliteTx> {
        let mut shared = {
            let _waiting = Waiting::new(&self.waiting);
            self.shared.clone().lock_owned().await
        };
        if let Some(broken) = &shared.broken {
            // A rollback failed earlier: nothing may run inside what it left.
            match shared.conn.execute_batch("ROLLBACK") {
                Ok(()) => shared.broken = None,
                Err(_) if shared.conn.is_autocommit() => shared.broken = None,
                Err(e) => {
                    return Err(DbError::Unavailable(format!(
                        "SQLite transaction state unknown after a failed rollback ({broken}): {e}"
                    )));
                }
            }
        }
        if shared.conn.is_autocommit() {
            begin_immediate(&shared.conn)?;
        }
        if let Err(e) = shared.conn.execute_batch(SAVEPOINT) {
            let e = map_err(e);
            if shared.group.is_empty() {
                shared.rollback_outer();
            }
            return Err(e);
        }
        Ok(SqliteTx { shared: Some(shared), db: self.clone() })
    }
}

/// `BEGIN IMMEDIATE`: at once, or, when another process holds the write lock, waiting for it
/// off the worker.
fn begin_immediate(conn: &Connection) -> DbResult<()> {
    match conn.execute_batch("BEGIN IMMEDIATE") {
        Err(e) if is_busy(&e) => blocking(|| {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            let begun = conn.execute_batch("BEGIN IMMEDIATE");
            conn.busy_timeout(std::time::Duration::ZERO)?;
            begun
        })
        .map_err(map_err),
        other => other.map_err(map_err),
    }
}

/// One transaction: a savepoint of the connection's outer transaction, holding the connection
/// until it commits or is dropped.
///
/// **Group commit.** When a transaction commits while others wait for the connection, its
/// savepoint is released into the outer transaction, which stays open for the next one; the
/// group's last transaction (nobody waiting) commits it, one WAL write and one fsync for all,
/// and only then is every member answered. A member dropped without commit rolls back to its
/// savepoint and leaves nothing; if the outer transaction itself is lost (a failed commit, a
/// failed rollback to a savepoint, an error that made SQLite roll it back), every member of the
/// group gets the error. A transaction alone commits at once.
pub(super) struct SqliteTx {
    /// `None` once committed.
    shared: Option<OwnedMutexGuard<Shared>>,
    db: SqliteDb,
}

impl SqliteTx {
    fn conn(&self) -> DbResult<&Connection> {
        self.shared
            .as_ref()
            .map(|s| &s.conn)
            .ok_or_else(|| DbError::Other("transaction already ended".into()))
    }

    pub(super) fn query(&mut self, sql: &str, params: &[Value]) -> DbResult<Vec<Row>> {
        let sql = rewrite_placeholders(sql);
        let conn = self.conn()?;
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
        let conn = self.conn()?;
        conn.prepare_cached(&sql)
            .and_then(|mut stmt| stmt.execute(rusqlite::params_from_iter(params.iter())))
            .map(|n| n as u64)
            .map_err(map_err)
    }

    pub(super) fn batch(&mut self, sql: &str) -> DbResult<()> {
        let conn = self.conn()?;
        blocking(|| conn.execute_batch(sql)).map_err(map_err)
    }

    /// Commits: at once when no other transaction waits for the connection, else with the
    /// group (see [`SqliteTx`]). Returns once the commit that holds this transaction's writes
    /// has returned, with its result.
    pub(super) async fn commit(mut self) -> DbResult<()> {
        let Some(mut shared) = self.shared.take() else {
            return Err(DbError::Other("transaction already ended".into()));
        };
        if let Err(e) = shared.conn.execute_batch("RELEASE member") {
            let e = map_err(e);
            shared.fail_group(&e);
            return Err(e);
        }
        let runtime = tokio::runtime::Handle::try_current();
        if self.db.waiting.load(Ordering::Acquire) == 0 || runtime.is_err() {
            return shared.commit_group();
        }
        // Others wait for the connection: the outer transaction stays open for them.
        let (member, answer) = oneshot::channel();
        let first = shared.group.is_empty();
        shared.group.push(member);
        let generation = shared.generation;
        drop(shared);
        if first && let Ok(runtime) = runtime {
            // The group's commit, should no later member make it: queued behind the
            // transactions waiting now, and not cancelled with this request.
            let db = self.db.clone();
            runtime.spawn(async move {
                let mut shared = db.shared.lock_owned().await;
                if shared.generation == generation {
                    let _ = shared.commit_group();
                }
            });
        }
        answer.await.unwrap_or_else(|_| {
            Err(DbError::Other("the group commit ended without an answer".into()))
        })
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        let Some(mut shared) = self.shared.take() else { return };
        // Undo this transaction's work, and only it.
        match shared.conn.execute_batch("ROLLBACK TO member; RELEASE member") {
            Ok(()) if shared.group.is_empty() => shared.rollback_outer(),
            // The group's work stays for its commit.
            Ok(()) => {}
            // The savepoint is gone (SQLite rolled the outer transaction back after an
            // error) or could not be rolled back to: nothing of the group may be committed.
            Err(e) => shared.fail_group(&map_err(e)),
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
    #![allow(clippy::unwrap_used)] // tests may unwrap

    use std::time::Duration;

    use super::*;

    /// A fresh database file with a table `t (id)` and, for a commit that fails, `child
    /// (parent)` whose foreign key to `parent` is checked only at `COMMIT`.
    async fn database(dir: &Path) -> SqliteDb {
        let db = SqliteDb::open(&dir.join("t.db")).unwrap();
        let mut tx = db.begin().await.unwrap();
        tx.batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY); \
             CREATE TABLE parent (id INTEGER PRIMARY KEY); \
             CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);",
        )
        .unwrap();
        tx.commit().await.unwrap();
        db
    }

    /// The ids in `t`, as another connection sees them (only what was committed).
    fn committed(dir: &Path) -> Vec<i64> {
        let conn = Connection::open(dir.join("t.db")).unwrap();
        let mut stmt = conn.prepare("SELECT id FROM t ORDER BY id").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }

    /// Waits until `n` transactions wait for the connection.
    async fn until_waiting(db: &SqliteDb, n: usize) {
        while db.waiting.load(Ordering::Acquire) != n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn insert(tx: &mut SqliteTx, table: &str, id: i64) -> DbResult<u64> {
        tx.execute(&format!("INSERT INTO {table} VALUES ($1)"), &[Value::Int(id)])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_transaction_commits_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path()).await;
        let mut tx = db.begin().await.unwrap();
        insert(&mut tx, "t", 1).unwrap();
        assert!(committed(dir.path()).is_empty());
        let generation = tx.shared.as_ref().unwrap().generation;
        tx.commit().await.unwrap();
        assert_eq!(committed(dir.path()), [1]);
        // Its own commit: the outer transaction ended with it.
        let shared = db.shared.lock().await;
        assert_eq!(shared.generation, generation + 1);
        assert!(shared.conn.is_autocommit() && shared.group.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_transactions_share_one_commit_and_a_failing_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path()).await;
        let mut first = db.begin().await.unwrap();
        insert(&mut first, "t", 1).unwrap();
        let generation = first.shared.as_ref().unwrap().generation;
        // The second writes, then fails (a duplicate key) and is dropped without commit.
        let failing = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin().await.unwrap();
                insert(&mut tx, "t", 2).unwrap();
                insert(&mut tx, "t", 1).unwrap_err()
            }
        });
        until_waiting(&db, 1).await;
        // The third waits for a go before it commits.
        let (go, gone) = oneshot::channel::<()>();
        let (began, begun) = oneshot::channel::<()>();
        let third = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin().await.unwrap();
                insert(&mut tx, "t", 3).unwrap();
                began.send(()).unwrap();
                gone.await.unwrap();
                tx.commit().await
            }
        });
        until_waiting(&db, 2).await;
        // Two wait: the first's commit leaves the outer transaction open for them.
        let first = tokio::spawn(first.commit());
        assert!(matches!(failing.await.unwrap(), DbError::Constraint(_)));
        begun.await.unwrap();
        // The first is not answered, and nothing is visible, before the group's commit.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!first.is_finished());
        assert!(committed(dir.path()).is_empty());
        go.send(()).unwrap();
        third.await.unwrap().unwrap();
        first.await.unwrap().unwrap();
        // One commit for both; the failed one left nothing.
        assert_eq!(committed(dir.path()), [1, 3]);
        let shared = db.shared.lock().await;
        assert_eq!(shared.generation, generation + 1);
        assert!(shared.conn.is_autocommit() && shared.group.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_group_commit_fails_every_member() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path()).await;
        // The first's row breaks a foreign key checked only at COMMIT.
        let mut first = db.begin().await.unwrap();
        insert(&mut first, "t", 1).unwrap();
        insert(&mut first, "child", 99).unwrap();
        let second = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin().await.unwrap();
                insert(&mut tx, "t", 2).unwrap();
                tx.commit().await
            }
        });
        until_waiting(&db, 1).await;
        let first = first.commit().await;
        let second = second.await.unwrap();
        assert!(matches!(first, Err(DbError::Constraint(_))), "{first:?}");
        assert!(matches!(second, Err(DbError::Constraint(_))), "{second:?}");
        assert!(committed(dir.path()).is_empty());
        // The connection is clean for the next transaction.
        let mut tx = db.begin().await.unwrap();
        insert(&mut tx, "t", 3).unwrap();
        tx.commit().await.unwrap();
        assert_eq!(committed(dir.path()), [3]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_left_by_its_members_is_committed_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path()).await;
        let mut first = db.begin().await.unwrap();
        insert(&mut first, "t", 1).unwrap();
        // Someone waits, then gives up before getting the connection.
        let waiter = tokio::spawn({
            let db = db.clone();
            async move { db.begin().await.map(|_| ()) }
        });
        until_waiting(&db, 1).await;
        let commit = tokio::spawn(first.commit());
        // The first's commit is left waiting for the group; whoever waits goes away.
        while db.shared.try_lock().is_ok_and(|s| s.group.is_empty()) {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        commit.await.unwrap().unwrap();
        assert_eq!(committed(dir.path()), [1]);
    }

    #[test]
    fn placeholders_keep_their_numbers() {
        assert_eq!(
            rewrite_placeholders("SELECT a FROM t WHERE b = $2 AND c = $1 AND d = '$x'"),
            "SELECT a FROM t WHERE b = ?2 AND c = ?1 AND d = '$x'"
        );
    }
}
