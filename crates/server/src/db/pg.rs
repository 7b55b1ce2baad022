//! PostgreSQL: a small connection pool over `tokio-postgres`, without TLS (the database is
//! expected on loopback or a private network; see docs/decisions.md "Server storage").
//!
//! Round trips are what a transaction costs here, so each pooled connection keeps the
//! statements it prepared (the queries are a fixed set of texts: a statement is prepared once
//! per connection, then only bound and executed), and `BEGIN` goes out pipelined with the
//! transaction's first statement. A schema change through [`PgTx::batch`] (migrations) makes
//! every connection forget its statements.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use bytes::BytesMut;
use futures_util::TryStreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Config, NoTls, Statement};

use super::{BUSY_TIMEOUT, DbError, DbResult, Row, Value};

/// Most connections one server process opens.
const MAX_CONNECTIONS: usize = 16;

/// Most statements one connection keeps prepared (the server's queries are far fewer; the
/// bound only guards against a caller building texts without end).
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
    client: Client,
    statements: HashMap<String, Statement>,
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
        loop {
            let idle = self.inner.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
            match idle {
                Some(conn) if !conn.client.is_closed() => {
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
        let (client, connection) = self.inner.config.connect(NoTls).await.map_err(|e| {
            DbError::Unavailable(format!("cannot connect to PostgreSQL: {}", describe(&e)))
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection ended");
            }
        });
        let conn = PgConn {
            client,
            statements: HashMap::new(),
            schema: self.inner.schema.load(Ordering::Acquire),
        };
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
        let schema = self.pool.inner.schema.load(Ordering::Acquire);
        let conn =
            self.client.as_mut().ok_or_else(|| DbError::Unavailable("connection lost".into()))?;
        if conn.schema != schema {
            conn.statements.clear();
            conn.schema = schema;
        }
        Ok(conn)
    }

    /// Returns the connection to the pool (only clean, idle connections go back).
    fn release(mut self) {
        if let Some(conn) = self.client.take()
            && !conn.client.is_closed()
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
    async fn statement(&mut self, sql: &str) -> DbResult<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let statement = self.client.prepare(sql).await.map_err(map_err)?;
        if self.statements.len() >= MAX_STATEMENTS {
            self.statements.clear();
        }
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
    deferred: Vec<(Statement, Vec<Value>)>,
}

/// What the server answered to one statement.
struct Answer {
    rows: Vec<tokio_postgres::Row>,
    /// The rows an `INSERT`, `UPDATE` or `DELETE` changed (0 for other statements).
    changed: u64,
}

/// One statement's answer, on its way.
type Sent<'a> = Pin<Box<dyn Future<Output = Result<Answer, tokio_postgres::Error>> + Send + 'a>>;

/// Sends one statement (it is written to the connection when first polled) and reads its
/// answer.
async fn send(
    client: &Client,
    statement: &Statement,
    params: &[Value],
) -> Result<Answer, tokio_postgres::Error> {
    let mut stream = std::pin::pin!(client.query_raw(statement, params).await?);
    let rows = stream.as_mut().try_collect().await?;
    Ok(Answer { rows, changed: stream.rows_affected().unwrap_or(0) })
}

/// Sends `statements` in order, all before waiting for any answer (one round trip), and
/// returns their answers in order, or the first error. After a failed statement the server
/// refuses the rest of the transaction: the first error is the cause.
async fn pipeline(
    client: &Client,
    statements: &[(Statement, &[Value])],
) -> Result<Vec<Answer>, tokio_postgres::Error> {
    let mut pending: Vec<Option<Sent<'_>>> = statements
        .iter()
        .map(|(statement, params)| Some(Box::pin(send(client, statement, params)) as Sent<'_>))
        .collect();
    let mut answers: Vec<Option<Result<Answer, tokio_postgres::Error>>> =
        pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        // In order: each statement is written when first polled, and the answers come back
        // in the order the statements went out.
        let mut done = true;
        for (slot, answer) in pending.iter_mut().zip(&mut answers) {
            if let Some(sent) = slot {
                match sent.as_mut().poll(cx) {
                    Poll::Ready(result) => {
                        *answer = Some(result);
                        *slot = None;
                    }
                    Poll::Pending => done = false,
                }
            }
        }
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    answers.into_iter().flatten().collect()
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
        let mut statements: Vec<(Statement, &[Value])> =
            Vec::with_capacity(1 + deferred.len() + batch.len());
        if !begun {
            statements.push((conn.statement(BEGIN).await?, &[]));
        }
        let skip = statements.len() + deferred.len();
        statements.extend(deferred.iter().map(|(s, params)| (s.clone(), params.as_slice())));
        for (sql, params) in batch {
            statements.push((conn.statement(sql).await?, params));
        }
        let answers = pipeline(&conn.client, &statements).await;
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
        let answer = self.run(&[(sql, params)]).await?.pop();
        answer.map_or(Ok(Vec::new()), |a| a.rows.iter().map(convert_row).collect())
    }

    pub(super) async fn execute(&mut self, sql: &str, params: &[Value]) -> DbResult<u64> {
        Ok(self.run(&[(sql, params)]).await?.pop().map_or(0, |a| a.changed))
    }

    /// Runs the queries of `batch` in order, in one round trip; their rows, in order.
    pub(super) async fn query_all(
        &mut self,
        batch: &[(&str, &[Value])],
    ) -> DbResult<Vec<Vec<Row>>> {
        let answers = self.run(batch).await?;
        answers.iter().map(|a| a.rows.iter().map(convert_row).collect()).collect()
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
        self.conn()?.client.batch_execute(sql).await.map_err(map_err)?;
        self.forget_statements();
        Ok(())
    }

    /// Makes every connection of the pool prepare its statements again (after a schema
    /// change, and again at its commit: a statement another connection prepared in between
    /// saw the old schema).
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
        let rows = answers.first().map(|a| a.rows.as_slice()).unwrap_or_default();
        rows.iter().map(convert_row).collect()
    }

    /// After the commit: the pool forgets the statements of an older schema, and takes the
    /// connection back.
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

fn convert_row(row: &tokio_postgres::Row) -> DbResult<Row> {
    let mut values = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let ty = col.type_();
        let v = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::Int))
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i).map(|v| v.map(|v| Value::Int(v.into())))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i).map(|v| v.map(|v| Value::Int(v.into())))
        } else if *ty == Type::TEXT || *ty == Type::VARCHAR || *ty == Type::NAME {
            row.try_get::<_, Option<String>>(i).map(|v| v.map(Value::Text))
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i).map(|v| v.map(Value::Blob))
        } else if *ty == Type::VOID {
            Ok(None)
        } else {
            return Err(DbError::Data(format!("unsupported column type {ty} in column {i}")));
        };
        values.push(v.map_err(map_err)?.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => v.to_sql(ty, out),
            Value::Text(s) => s.to_sql(ty, out),
            Value::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty)
            || <String as ToSql>::accepts(ty)
            || <Vec<u8> as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// The error with the server's message (tokio-postgres' `Display` says only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match e.source() {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

fn map_err(e: tokio_postgres::Error) -> DbError {
    if e.is_closed() {
        return DbError::Unavailable(format!("PostgreSQL connection closed: {}", describe(&e)));
    }
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::FOREIGN_KEY_VIOLATION => {
            DbError::Constraint(describe(&e))
        }
        Some(c)
            if c.code().starts_with("08")
                || c.code().starts_with("53")
                || c.code().starts_with("57P")
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            DbError::Unavailable(describe(&e))
        }
        Some(_) => DbError::Other(describe(&e)),
        // No SQLSTATE: an I/O or protocol failure talking to the server.
        None if e.source().is_some_and(|s| s.is::<std::io::Error>()) => {
            DbError::Unavailable(format!("PostgreSQL unreachable: {}", describe(&e)))
        }
        None => DbError::Unavailable(format!("PostgreSQL: {}", describe(&e))),
    }
}
