//! PostgreSQL: a small connection pool over [`wire::Wire`] (the protocol spoken directly),
//! without TLS (the database is expected on loopback or a private network; see
//! docs/decisions.md "Server storage").
//!
//! Round trips are what a transaction costs here, so each pooled connection keeps the
//! statements it prepared (the queries are a fixed set of texts: a statement is prepared once
//! per connection, then only bound and executed), and `BEGIN` goes out pipelined with the
//! transaction's first statement. A schema change through [`PgTx::batch`] (migrations) retires
//! every connection that prepared statements under the old schema.

mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::Config;

use self::wire::{Answer, Statement, Wire, WireError};
use super::{BUSY_TIMEOUT, DbError, DbResult, Row, Value};

/// Most connections one server process opens.
const MAX_CONNECTIONS: usize = 16;

/// Most statements one connection keeps prepared (the server's queries are far fewer; the
/// bound only guards against a caller building texts without end: a connection past it is
/// closed at its release, which frees its statements on the server).
const MAX_STATEMENTS: usize = 512;

#[derive(Clone)]
pub(super) struct PgPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    config: Config,
    idle: Mutex<Vec<PgConn>>,
    permits: Arc<Semaphore>,
    /// Raised by every schema change: statements prepared before it are not reused.
    schema: AtomicU64,
    /// Round trips that ran statements ([`PgPool::round_trips`]).
    round_trips: AtomicU64,
}

/// One connection and the statements prepared on it.
struct PgConn {
    wire: Wire,
    /// By SQL text, looked up for every statement a transaction runs: hashed with FxHash,
    /// several times faster than the default SipHash on these long keys, which are the
    /// program's own texts (no caller can choose them to collide).
    statements: FxHashMap<String, Arc<Statement>>,
    /// The pool's schema generation the statements were prepared under.
    schema: u64,
}

impl PgPool {
    pub(super) fn new(url: &str) -> DbResult<Self> {
        let mut config: Config =
            url.parse().map_err(|e| DbError::Other(format!("invalid PostgreSQL URL: {e}")))?;
        config.connect_timeout(BUSY_TIMEOUT);
        Ok(PgPool {
            inner: Arc::new(PoolInner {
                config,
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
                schema: AtomicU64::new(0),
                round_trips: AtomicU64::new(0),
            }),
        })
    }

    async fn get(&self) -> DbResult<PooledClient> {
        let permit = tokio::time::timeout(BUSY_TIMEOUT, self.inner.permits.clone().acquire_owned())
            .await
            .map_err(|_| DbError::Unavailable("no free database connection".into()))?
            .map_err(|_| DbError::Unavailable("connection pool closed".into()))?;
        let schema = self.inner.schema.load(Ordering::Acquire);
        loop {
            let idle = self.inner.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
            match idle {
                Some(conn) if conn.schema == schema && conn.wire.still_open() => {
                    return Ok(PooledClient {
                        client: Some(conn),
                        pool: self.clone(),
                        _permit: permit,
                    });
                }
                Some(_) => continue,
                None => break,
            }
        }
        // Any failure to connect means the database is unavailable to us (down, unreachable,
        // not accepting connections): retry later.
        let wire = Wire::connect(&self.inner.config)
            .await
            .map_err(|e| DbError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
        let conn = PgConn { wire, statements: FxHashMap::default(), schema };
        Ok(PooledClient { client: Some(conn), pool: self.clone(), _permit: permit })
    }

    /// Round trips that ran statements, on every connection so far (a statement's
    /// preparation, once per connection, is not counted).
    pub(super) fn round_trips(&self) -> u64 {
        self.inner.round_trips.load(Ordering::Relaxed)
    }

    /// A transaction on a pooled connection. Its `BEGIN` is sent with the first statement
    /// (pipelined: one round trip for both).
    pub(super) async fn begin(&self) -> DbResult<PgTx> {
        let conn = self.get().await?;
        Ok(PgTx {
            conn: Some(conn),
            begun: false,
            failed: false,
            schema_changed: false,
            deferred: Vec::new(),
        })
    }
}

struct PooledClient {
    client: Option<PgConn>,
    pool: PgPool,
    _permit: OwnedSemaphorePermit,
}

impl PooledClient {
    fn conn(&mut self) -> DbResult<&mut PgConn> {
        self.client.as_mut().ok_or_else(|| DbError::Unavailable("connection lost".into()))
    }

    /// Returns the connection to the pool: only one in step with the server, whose statements
    /// were prepared under the current schema and are not too many, goes back.
    fn release(mut self) {
        let schema = self.pool.inner.schema.load(Ordering::Acquire);
        if let Some(conn) = self.client.take()
            && conn.wire.in_step()
            && conn.schema == schema
            && conn.statements.len() <= MAX_STATEMENTS
            && let Ok(mut idle) = self.pool.inner.idle.lock()
        {
            idle.push(conn);
        }
    }
}

const BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";
const COMMIT: &str = "COMMIT";

impl PgConn {
    /// The prepared statement for `sql`: from this connection's cache, else prepared now.
    async fn statement(&mut self, sql: &str) -> DbResult<Arc<Statement>> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let statement = self.wire.prepare(sql).await.map_err(map_err)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

pub(super) struct PgTx {
    /// `None` once committed.
    conn: Option<PooledClient>,
    /// Whether `BEGIN` went out.
    begun: bool,
    /// Whether a call failed. PostgreSQL then refuses the transaction's later statements and
    /// answers its `COMMIT` with a rollback that is no error, and a statement deferred into
    /// the failed call may never have been sent: so this transaction refuses everything after,
    /// its commit included, should a caller go on.
    failed: bool,
    /// Whether `batch` changed the schema.
    schema_changed: bool,
    /// Statements whose row counts nobody reads ([`PgTx::defer`]): they go out ahead of the
    /// transaction's next statement or its commit, in the same round trip.
    deferred: Vec<(Arc<Statement>, Vec<Value>)>,
}

impl PgTx {
    fn conn(&mut self) -> DbResult<&mut PgConn> {
        self.conn.as_mut().ok_or_else(|| DbError::Other("transaction already ended".into()))?.conn()
    }

    /// Sends, in one round trip: `BEGIN` if the transaction has not started, the deferred
    /// statements, then `batch`. Returns the answers to `batch`, in order. Every statement of
    /// the transaction goes this way (a migration's script aside: [`PgTx::batch`]).
    async fn run(&mut self, batch: &[(&str, &[Value])]) -> DbResult<Vec<Answer>> {
        if self.failed {
            return Err(earlier_failure());
        }
        let answers = self.send_all(batch).await;
        self.failed = answers.is_err();
        answers
    }

    /// [`PgTx::run`]'s round trip.
    async fn send_all(&mut self, batch: &[(&str, &[Value])]) -> DbResult<Vec<Answer>> {
        let deferred = std::mem::take(&mut self.deferred);
        let begun = self.begun;
        let conn = self.conn()?;
        let mut statements: Vec<(Arc<Statement>, &[Value])> =
            Vec::with_capacity(1 + deferred.len() + batch.len());
        if !begun {
            statements.push((conn.statement(BEGIN).await?, &[]));
        }
        let skip = statements.len() + deferred.len();
        statements.extend(deferred.iter().map(|(s, params)| (s.clone(), params.as_slice())));
        for (sql, params) in batch {
            statements.push((conn.statement(sql).await?, params));
        }
        let answers = conn.wire.run(&statements).await;
        if let Some(pooled) = &self.conn {
            pooled.pool.inner.round_trips.fetch_add(1, Ordering::Relaxed);
        }
        // From here the connection's state is the server's: should anything have failed, the
        // transaction's drop closes it rather than pool it.
        self.begun = true;
        let mut answers = answers.map_err(map_err)?;
        Ok(answers.split_off(skip))
    }

    pub(super) async fn query(&mut self, sql: &str, params: &[Value]) -> DbResult<Vec<Row>> {
        Ok(self.run(&[(sql, params)]).await?.pop().map_or_else(Vec::new, |a| a.rows))
    }

    pub(super) async fn execute(&mut self, sql: &str, params: &[Value]) -> DbResult<u64> {
        Ok(self.run(&[(sql, params)]).await?.pop().map_or(0, |a| a.changed))
    }

    /// Runs the queries of `batch` in order, in one round trip; their rows, in order.
    pub(super) async fn query_all(
        &mut self,
        batch: &[(&str, &[Value])],
    ) -> DbResult<Vec<Vec<Row>>> {
        Ok(self.run(batch).await?.into_iter().map(|a| a.rows).collect())
    }

    /// Queues a statement whose row count nobody reads: it is sent with the transaction's next
    /// statement or its commit, in the same round trip, and an error it meets fails that call
    /// (the transaction is then lost, as with any failed statement).
    pub(super) async fn defer(&mut self, sql: &str, params: &[Value]) -> DbResult<()> {
        let statement = self.conn()?.statement(sql).await?;
        self.deferred.push((statement, params.to_vec()));
        Ok(())
    }

    /// Runs `sql` (a schema change: migrations) and makes every connection of the pool
    /// prepare its statements again.
    pub(super) async fn batch(&mut self, sql: &str) -> DbResult<()> {
        // BEGIN and the deferred statements first.
        self.run(&[]).await?;
        self.schema_changed = true;
        let conn = self.conn()?;
        conn.wire.simple(sql).await.map_err(map_err)?;
        // Its own statements too: this transaction prepares afresh under the new schema.
        conn.statements.clear();
        self.forget_statements();
        Ok(())
    }

    /// Retires every connection of the pool that prepared statements before now (after a
    /// schema change, and again at its commit: a statement another connection prepared in
    /// between saw the old schema). This transaction's own connection is among them.
    fn forget_statements(&self) {
        if let Some(conn) = &self.conn {
            conn.pool.inner.schema.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Commits: the deferred statements and `COMMIT` in one round trip. After a failed
    /// statement PostgreSQL answers `COMMIT` with a rollback, not an error: the statement's
    /// error is the transaction's.
    pub(super) async fn commit(mut self) -> DbResult<()> {
        if self.failed {
            return Err(earlier_failure());
        }
        if self.begun || !self.deferred.is_empty() {
            self.run(&[(COMMIT, &[])]).await?;
        }
        self.release();
        Ok(())
    }

    /// `sql`, then the commit (see [`PgTx::commit`]), in one round trip: `sql`'s rows.
    pub(super) async fn query_and_commit(
        mut self,
        sql: &str,
        params: &[Value],
    ) -> DbResult<Vec<Row>> {
        let answers = self.run(&[(sql, params), (COMMIT, &[])]).await?;
        self.release();
        Ok(answers.into_iter().next().map_or_else(Vec::new, |a| a.rows))
    }

    /// After the commit: the pool retires the connections of an older schema, and takes the
    /// connection back (unless it is one of them).
    fn release(&mut self) {
        if self.schema_changed {
            self.forget_statements();
        }
        if let Some(conn) = self.conn.take() {
            conn.release();
        }
    }
}

impl Drop for PgTx {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            if !self.begun {
                // Nothing was sent: the connection is clean.
                conn.release();
                return;
            }
            // A transaction dropped without commit: close its connection, which makes the
            // server roll it back, rather than return a connection in an unknown state.
            conn.client = None;
        }
    }
}

/// A call on a transaction after one of its calls failed ([`PgTx::run`]).
fn earlier_failure() -> DbError {
    DbError::Other(
        "an earlier statement of this transaction failed: nothing of it is committed".into(),
    )
}

fn map_err(e: WireError) -> DbError {
    match e {
        WireError::Io(e) => DbError::Unavailable(format!("PostgreSQL connection: {e}")),
        WireError::Server { code, message } => {
            let text = format!("{code}: {message}");
            match code.as_str() {
                // unique_violation, foreign_key_violation
                "23505" | "23503" => DbError::Constraint(text),
                // connection exceptions, insufficient resources, operator intervention
                // (shutdown), serialization failure, deadlock
                c if c.starts_with("08")
                    || c.starts_with("53")
                    || c.starts_with("57P")
                    || c == "40001"
                    || c == "40P01" =>
                {
                    DbError::Unavailable(text)
                }
                _ => DbError::Other(text),
            }
        }
        WireError::Protocol(m) => DbError::Other(format!("PostgreSQL: {m}")),
        WireError::Data(m) => DbError::Data(m),
    }
}
