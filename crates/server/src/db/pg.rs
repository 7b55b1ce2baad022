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

    /// A transaction on a pooled connection. Its `BEGIN` is sent with the first statement
    /// (pipelined: one round trip for both).
    pub(super) async fn begin(&self) -> DbResult<PgTx> {
        let conn = self.get().await?;
        Ok(PgTx { conn: Some(conn), begun: false, schema_changed: false, deferred: Vec::new() })
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

    /// Runs `run` on the client, behind `BEGIN` in the same round trip when the transaction
    /// has not started (`begun`).
    async fn begun<T, F>(&self, begun: &mut bool, run: F) -> DbResult<T>
    where
        F: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    {
        if *begun {
            return run.await.map_err(map_err);
        }
        // Polled in order: BEGIN is sent first, the statement right behind it. BEGIN fails
        // only when the connection does (and the statement with it); the connection is then
        // closed, not pooled (`begun` set: the transaction's drop closes it).
        let (began, result) = tokio::join!(self.client.batch_execute(BEGIN), run);
        *begun = true;
        began.map_err(map_err)?;
        result.map_err(map_err)
    }
}

pub(super) struct PgTx {
    /// `None` once committed.
    conn: Option<PooledClient>,
    /// Whether `BEGIN` went out.
    begun: bool,
    /// Whether `batch` changed the schema.
    schema_changed: bool,
    /// Statements whose row counts nobody reads ([`PgTx::defer`]): they go out ahead of the
    /// transaction's next statement or its commit, in the same round trip.
    deferred: Vec<(Statement, Vec<Value>)>,
}

/// A pipelined statement's future.
type Sent<'a> = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;

/// Sends `deferred` in order (each is written when first polled, so all go out before whatever
/// is polled after this) and waits for their answers; the first error, if any.
async fn send_deferred(
    client: &Client,
    deferred: &[(Statement, Vec<Value>)],
) -> Result<(), tokio_postgres::Error> {
    let mut pending: Vec<Sent<'_>> = deferred
        .iter()
        .map(|(statement, params)| -> Sent<'_> {
            Box::pin(async move {
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
                client.execute(statement, &refs).await
            })
        })
        .collect();
    let mut first_error = None;
    std::future::poll_fn(|cx| {
        // In order: answers come back in the order the statements went out.
        pending.retain_mut(|f| match f.as_mut().poll(cx) {
            Poll::Ready(result) => {
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                }
                false
            }
            Poll::Pending => true,
        });
        if pending.is_empty() { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    first_error.map_or(Ok(()), Err)
}

impl PgTx {
    fn conn(&mut self) -> DbResult<&mut PgConn> {
        self.conn.as_mut().ok_or_else(|| DbError::Other("transaction already ended".into()))?.conn()
    }

    pub(super) async fn query(&mut self, sql: &str, params: &[Value]) -> DbResult<Vec<Row>> {
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let deferred = std::mem::take(&mut self.deferred);
        let mut begun = self.begun;
        let conn = self.conn()?;
        let statement = conn.statement(sql).await?;
        let client = &conn.client;
        let all = async {
            let (before, rows) =
                tokio::join!(send_deferred(client, &deferred), client.query(&statement, &refs));
            before?;
            rows
        };
        let rows = conn.begun(&mut begun, all).await;
        self.begun = begun;
        rows?.iter().map(convert_row).collect()
    }

    pub(super) async fn execute(&mut self, sql: &str, params: &[Value]) -> DbResult<u64> {
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let deferred = std::mem::take(&mut self.deferred);
        let mut begun = self.begun;
        let conn = self.conn()?;
        let statement = conn.statement(sql).await?;
        let client = &conn.client;
        let all = async {
            let (before, n) =
                tokio::join!(send_deferred(client, &deferred), client.execute(&statement, &refs));
            before?;
            n
        };
        let n = conn.begun(&mut begun, all).await;
        self.begun = begun;
        n
    }

    /// Queues a statement whose row count nobody reads: it is sent with the transaction's next
    /// statement or its commit, in the same round trip, and an error it meets fails that call
    /// (the transaction is then lost, as with any failed statement).
    pub(super) async fn defer(&mut self, sql: &str, params: &[Value]) -> DbResult<()> {
        let statement = self.conn()?.statement(sql).await?;
        self.deferred.push((statement, params.to_vec()));
        Ok(())
    }

    /// Sends the deferred statements now, if any.
    async fn flush(&mut self) -> DbResult<()> {
        if self.deferred.is_empty() {
            return Ok(());
        }
        let deferred = std::mem::take(&mut self.deferred);
        let mut begun = self.begun;
        let conn = self.conn()?;
        let sent = conn.begun(&mut begun, send_deferred(&conn.client, &deferred)).await;
        self.begun = begun;
        sent
    }

    /// `pg_advisory_xact_lock(key)`, then `sql`, pipelined (see `Tx::lock_then_query`).
    pub(super) async fn lock_then_query(
        &mut self,
        key: i64,
        sql: &str,
        params: &[Value],
    ) -> DbResult<Vec<Row>> {
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let key = Value::Int(key);
        let lock_params: [&(dyn ToSql + Sync); 1] = [&key];
        let deferred = std::mem::take(&mut self.deferred);
        let mut begun = self.begun;
        let conn = self.conn()?;
        let lock = conn.statement("SELECT pg_advisory_xact_lock($1)").await?;
        let statement = conn.statement(sql).await?;
        let client = &conn.client;
        let both = async {
            // Polled in order: the deferred statements, the lock, the query right behind it.
            let (before, locked, rows) = tokio::join!(
                send_deferred(client, &deferred),
                client.query(&lock, &lock_params),
                client.query(&statement, &refs)
            );
            before?;
            locked?;
            rows
        };
        let rows = conn.begun(&mut begun, both).await;
        self.begun = begun;
        rows?.iter().map(convert_row).collect()
    }

    /// Runs `sql` (a schema change: migrations) and makes every connection of the pool
    /// prepare its statements again.
    pub(super) async fn batch(&mut self, sql: &str) -> DbResult<()> {
        self.flush().await?;
        self.start().await?;
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

    /// Sends `BEGIN` now if no statement has yet.
    async fn start(&mut self) -> DbResult<()> {
        if !self.begun {
            self.conn()?.client.batch_execute(BEGIN).await.map_err(map_err)?;
            self.begun = true;
        }
        Ok(())
    }

    pub(super) async fn commit(mut self) -> DbResult<()> {
        let deferred = std::mem::take(&mut self.deferred);
        let mut begun = self.begun;
        if begun || !deferred.is_empty() {
            let conn = self.conn()?;
            let client = &conn.client;
            let all = async {
                // The deferred statements and COMMIT in one round trip. After a failed
                // statement PostgreSQL answers COMMIT with a rollback, not an error: the
                // statement's error is the transaction's.
                let (before, committed) =
                    tokio::join!(send_deferred(client, &deferred), client.batch_execute("COMMIT"));
                before?;
                committed
            };
            let committed = conn.begun(&mut begun, all).await;
            self.begun = begun;
            committed?;
        }
        if self.schema_changed {
            self.forget_statements();
        }
        if let Some(conn) = self.conn.take() {
            conn.release();
        }
        Ok(())
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
