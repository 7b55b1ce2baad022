//! One PostgreSQL connection, spoken to directly in the frontend/backend protocol (version 3,
//! `postgres-protocol`'s message codec) by the task that runs the transaction.
//!
//! Why not `tokio-postgres`' client: it runs each connection as a task of its own, reached
//! through channels, and ends every statement with a `Sync`. A pipeline of N statements then
//! costs N answers flushed one by one by the server, as many reads and task wake-ups here,
//! and a channel per statement. [`Wire::run`] writes the whole pipeline (`Bind`/`Execute` per
//! statement, one `Sync`) in one `send`, and reads every answer up to the one `ReadyForQuery`
//! in as few reads as the kernel allows, in the calling task. Values travel only in the
//! extended protocol's binary formats for the four kinds of [`Value`] (the simple protocol
//! serves parameterless scripts: migrations); `tokio-postgres` still parses the connection URL
//! ([`Config`]).
//!
//! Errors inside a pipeline: the server skips the rest up to the `Sync`, so the first error
//! is the pipeline's (the transaction is then failed on the server, as with any failed
//! statement). A call that did not finish (its future dropped, or an I/O error) leaves the
//! connection out of step ([`Wire::in_step`] `false`): it is closed, never pooled.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::IsNull;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::{self, Message};
use postgres_protocol::message::frontend;
use postgres_protocol::types as pgt;
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::Config;
use tokio_postgres::config::Host;

use crate::db::{Row, Value};

/// Type OIDs (`pg_type`) of the columns and parameters the schemas use.
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const UNKNOWN: u32 = 705;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const VOID: u32 = 2278;
}

/// What went wrong on a connection.
#[derive(Debug)]
pub(super) enum WireError {
    /// The socket failed, or the server closed it.
    Io(io::Error),
    /// The server refused: its `ErrorResponse` (SQLSTATE `code`, message).
    Server { code: String, message: String },
    /// The server sent what the protocol does not allow here.
    Protocol(String),
    /// A value that cannot be sent as, or read from, the type the server named.
    Data(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "{e}"),
            WireError::Server { code, message } => write!(f, "{code}: {message}"),
            WireError::Protocol(m) => write!(f, "protocol error: {m}"),
            WireError::Data(m) => f.write_str(m),
        }
    }
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        WireError::Io(e)
    }
}

/// A statement prepared on one connection: its name there, and the types the server gave
/// its parameters and columns.
#[derive(Debug)]
pub(super) struct Statement {
    name: String,
    params: Vec<u32>,
    columns: Vec<u32>,
}

/// What the server answered to one statement of a pipeline.
pub(super) struct Answer {
    /// The rows, converted.
    pub(super) rows: Vec<Row>,
    /// The rows an `INSERT`, `UPDATE` or `DELETE` changed (a `SELECT`: the rows it returned).
    pub(super) changed: u64,
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Unix(s) => s.readable().await,
        }
    }

    async fn writable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.writable().await,
            Stream::Unix(s) => s.writable().await,
        }
    }

    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read_buf(buf),
            Stream::Unix(s) => s.try_read_buf(buf),
        }
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            Stream::Unix(s) => s.try_write(buf),
        }
    }
}

/// One connection (see the module's documentation).
pub(super) struct Wire {
    stream: Stream,
    read: BytesMut,
    write: BytesMut,
    /// `false` while a call is under way, and for good after one failed on the socket.
    clean: bool,
    /// The number of the next statement prepared on this connection (its name).
    prepared: u64,
}

impl Wire {
    /// Connects to the first of `config`'s hosts that answers, and authenticates (trust,
    /// cleartext password, MD5 or SCRAM-SHA-256, as the server asks).
    pub(super) async fn connect(config: &Config) -> Result<Wire, WireError> {
        let hosts = config.get_hosts();
        let ports = config.get_ports();
        let timeout = config.get_connect_timeout().copied().unwrap_or(Duration::from_secs(30));
        let mut last = WireError::Protocol("no host in the PostgreSQL URL".into());
        for (i, host) in hosts.iter().enumerate() {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            let opened = tokio::time::timeout(timeout, open(host, port))
                .await
                .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")));
            let stream = match opened {
                Ok(stream) => stream,
                Err(e) => {
                    last = WireError::Io(e);
                    continue;
                }
            };
            let mut wire = Wire {
                stream,
                read: BytesMut::with_capacity(8192),
                write: BytesMut::with_capacity(8192),
                clean: false,
                prepared: 0,
            };
            match tokio::time::timeout(timeout, wire.startup(config)).await {
                Ok(Ok(())) => return Ok(wire),
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last = WireError::Io(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
                }
            }
        }
        Err(last)
    }

    /// The startup message, authentication, then the server's parameters up to
    /// `ReadyForQuery`.
    async fn startup(&mut self, config: &Config) -> Result<(), WireError> {
        let user = config
            .get_user()
            .ok_or_else(|| WireError::Protocol("the PostgreSQL URL names no user".into()))?;
        let mut params = vec![("client_encoding", "UTF8"), ("user", user)];
        if let Some(db) = config.get_dbname() {
            params.push(("database", db));
        }
        if let Some(options) = config.get_options() {
            params.push(("options", options));
        }
        params.push(("application_name", config.get_application_name().unwrap_or("tessera")));
        frontend::startup_message(params.iter().copied(), &mut self.write)?;
        self.flush().await?;
        let password = || {
            config.get_password().ok_or_else(|| {
                WireError::Protocol("the server asks for a password; the URL has none".into())
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.message().await? {
                Message::AuthenticationOk => break,
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?, &mut self.write)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(user.as_bytes(), password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write)?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut offered = false;
                    while let Some(m) = mechanisms.next()? {
                        offered |= m == sasl::SCRAM_SHA_256;
                    }
                    if !offered {
                        return Err(WireError::Protocol(
                            "the server offers no SASL mechanism this client speaks".into(),
                        ));
                    }
                    // No TLS to the database (docs/decisions.md), so no channel binding.
                    let s = ScramSha256::new(password()?, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        sasl::SCRAM_SHA_256,
                        s.message(),
                        &mut self.write,
                    )?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| unexpected("SASL continue"))?;
                    s.update(body.data())?;
                    frontend::sasl_response(s.message(), &mut self.write)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or_else(|| unexpected("SASL final"))?;
                    s.finish(body.data())?;
                    continue;
                }
                Message::ErrorResponse(body) => return Err(server_error(&body)),
                Message::NoticeResponse(_) => continue,
                _ => return Err(unexpected("authentication request")),
            }
            self.flush().await?;
        }
        loop {
            match self.message().await? {
                Message::ReadyForQuery(_) => break,
                Message::ParameterStatus(_)
                | Message::BackendKeyData(_)
                | Message::NoticeResponse(_) => {}
                Message::ErrorResponse(body) => return Err(server_error(&body)),
                _ => return Err(unexpected("startup")),
            }
        }
        self.clean = true;
        Ok(())
    }

    /// Whether the connection is in step with the server: no call is under way or was cut
    /// short.
    pub(super) fn in_step(&self) -> bool {
        self.clean
    }

    /// Whether an idle connection is still open and in step: nothing arrived since its last
    /// call (one the server closed, at its restart for example, has its end of file or a
    /// `FATAL` message waiting). One non-blocking read.
    pub(super) fn still_open(&self) -> bool {
        let mut probe = BytesMut::with_capacity(64);
        self.clean
            && matches!(
                self.stream.try_read_buf(&mut probe),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            )
    }

    /// Prepares `sql` under a name of its own on this connection.
    pub(super) async fn prepare(&mut self, sql: &str) -> Result<Arc<Statement>, WireError> {
        let name = format!("s{}", self.prepared);
        self.prepared += 1;
        frontend::parse(&name, sql, std::iter::empty(), &mut self.write)?;
        frontend::describe(b'S', &name, &mut self.write)?;
        frontend::sync(&mut self.write);
        let mut statement = Statement { name, params: Vec::new(), columns: Vec::new() };
        self.call(|message, error| {
            match message {
                Message::ParseComplete | Message::NoData => {}
                Message::ParameterDescription(body) => {
                    statement.params = body.parameters().collect()?;
                }
                Message::RowDescription(body) => {
                    statement.columns = body.fields().map(|f| Ok(f.type_oid())).collect()?;
                }
                _ => {
                    error.get_or_insert_with(|| unexpected("an answer to Parse"));
                }
            }
            Ok(())
        })
        .await?;
        Ok(Arc::new(statement))
    }

    /// Runs `batch` in one round trip: each statement bound and executed in order, one `Sync`
    /// after the last. Their answers, in order, or the first error.
    pub(super) async fn run(
        &mut self,
        batch: &[(Arc<Statement>, &[Value])],
    ) -> Result<Vec<Answer>, WireError> {
        for (statement, params) in batch {
            if let Err(e) = bind(statement, params, &mut self.write) {
                // Nothing of the pipeline goes out: the connection stays in step.
                self.write.clear();
                return Err(e);
            }
            frontend::execute("", 0, &mut self.write)?;
        }
        frontend::sync(&mut self.write);
        let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
        let mut rows = Vec::new();
        self.call(|message, error| {
            match message {
                Message::BindComplete => {}
                Message::DataRow(body) => {
                    let columns = batch.get(answers.len()).map(|(s, _)| s.columns.as_slice());
                    match decode_row(&body, columns.unwrap_or_default()) {
                        Ok(row) => rows.push(row),
                        Err(e) => {
                            error.get_or_insert(e);
                        }
                    }
                }
                Message::CommandComplete(body) => {
                    let changed = body.tag()?.rsplit(' ').next().and_then(|n| n.parse().ok());
                    let rows = std::mem::take(&mut rows);
                    answers.push(Answer { rows, changed: changed.unwrap_or(0) });
                }
                Message::EmptyQueryResponse => {
                    answers.push(Answer { rows: Vec::new(), changed: 0 })
                }
                _ => {
                    error.get_or_insert_with(|| unexpected("an answer to Execute"));
                }
            }
            Ok(())
        })
        .await?;
        if answers.len() != batch.len() {
            return Err(WireError::Protocol(format!(
                "{} answers to {} statements",
                answers.len(),
                batch.len()
            )));
        }
        Ok(answers)
    }

    /// Runs `sql` (one or more statements, no parameters) with the simple query protocol:
    /// schema changes.
    pub(super) async fn simple(&mut self, sql: &str) -> Result<(), WireError> {
        frontend::query(sql, &mut self.write)?;
        self.call(|message, error| {
            match message {
                Message::CommandComplete(_)
                | Message::EmptyQueryResponse
                | Message::RowDescription(_)
                | Message::DataRow(_) => {}
                _ => {
                    error.get_or_insert_with(|| unexpected("an answer to Query"));
                }
            }
            Ok(())
        })
        .await
    }

    /// Sends what is written, then hands each message up to `ReadyForQuery` to `each`; the
    /// server's first error (or the first `each` recorded) is the call's.
    async fn call(
        &mut self,
        mut each: impl FnMut(Message, &mut Option<WireError>) -> io::Result<()>,
    ) -> Result<(), WireError> {
        self.clean = false;
        self.flush().await?;
        let mut error = None;
        loop {
            let message = match self.message().await {
                Ok(message) => message,
                // The server's own word, when it said why before it closed (a shutdown).
                Err(e) => return Err(error.unwrap_or(WireError::Io(e))),
            };
            match message {
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(body) => {
                    error = error.or_else(|| Some(server_error(&body)));
                }
                Message::NoticeResponse(_)
                | Message::ParameterStatus(_)
                | Message::NotificationResponse(_) => {}
                message => each(message, &mut error)?,
            }
        }
        self.clean = true;
        error.map_or(Ok(()), Err)
    }

    /// Writes out everything written so far.
    async fn flush(&mut self) -> io::Result<()> {
        while !self.write.is_empty() {
            match self.stream.try_write(&self.write) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.write.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.stream.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next message from the server.
    async fn message(&mut self) -> io::Result<Message> {
        loop {
            if let Some(message) = Message::parse(&mut self.read)? {
                return Ok(message);
            }
            self.read.reserve(8192);
            match self.stream.try_read_buf(&mut self.read) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.stream.readable().await?,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        // `Terminate`, if the socket takes it now, so that the server logs a clean end.
        if self.clean {
            let mut bye = BytesMut::new();
            frontend::terminate(&mut bye);
            let _ = self.stream.try_write(&bye);
        }
    }
}

async fn open(host: &Host, port: u16) -> io::Result<Stream> {
    match host {
        Host::Tcp(name) => {
            let stream = TcpStream::connect((name.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            // Keep-alive probes find a database host that vanished under an idle connection.
            socket2::SockRef::from(&stream).set_keepalive(true)?;
            Ok(Stream::Tcp(stream))
        }
        Host::Unix(dir) => {
            let path: PathBuf = dir.join(format!(".s.PGSQL.{port}"));
            Ok(Stream::Unix(UnixStream::connect(path).await?))
        }
    }
}

fn unexpected(what: &str) -> WireError {
    WireError::Protocol(format!("unexpected message for {what}"))
}

fn server_error(body: &backend::ErrorResponseBody) -> WireError {
    let (mut code, mut message, mut detail) = (String::new(), String::new(), String::new());
    let mut fields = body.fields();
    while let Ok(Some(field)) = fields.next() {
        match field.type_() {
            b'C' => code = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            b'D' => detail = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            _ => {}
        }
    }
    if !detail.is_empty() {
        message = format!("{message} ({detail})");
    }
    WireError::Server { code, message }
}

/// `Bind` for `statement` with `params` in the binary format, results asked in binary.
fn bind(statement: &Statement, params: &[Value], out: &mut BytesMut) -> Result<(), WireError> {
    if params.len() != statement.params.len() {
        return Err(WireError::Data(format!(
            "{} parameters given, the statement has {}",
            params.len(),
            statement.params.len()
        )));
    }
    let mut refused = None;
    let bound = frontend::bind(
        "",
        &statement.name,
        [1],
        params.iter().zip(&statement.params).enumerate(),
        |(i, (value, ty)), buf| {
            encode(value, *ty, buf).map_err(|e| {
                refused = Some(format!("parameter ${}: {e}", i + 1));
                e.into()
            })
        },
        [1],
        out,
    );
    match bound {
        Ok(()) => Ok(()),
        Err(frontend::BindError::Serialization(e)) => Err(WireError::Io(e)),
        Err(frontend::BindError::Conversion(_)) => {
            Err(WireError::Data(refused.unwrap_or_else(|| "a parameter was refused".into())))
        }
    }
}

/// One parameter in the binary format of type `ty`.
fn encode(value: &Value, ty: u32, buf: &mut BytesMut) -> Result<IsNull, String> {
    match (value, ty) {
        (Value::Null, _) => return Ok(IsNull::Yes),
        (Value::Int(v), oid::INT8) => pgt::int8_to_sql(*v, buf),
        (Value::Text(s), oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::UNKNOWN) => {
            pgt::text_to_sql(s, buf)
        }
        (Value::Blob(b), oid::BYTEA) => pgt::bytea_to_sql(b, buf),
        (value, ty) => return Err(format!("cannot send {value:?} as type {ty}")),
    }
    Ok(IsNull::No)
}

/// One `DataRow` as a [`Row`], each column by the type the server described.
fn decode_row(body: &backend::DataRowBody, columns: &[u32]) -> Result<Row, WireError> {
    let buffer = body.buffer();
    let mut ranges = body.ranges();
    let mut values = Vec::with_capacity(columns.len());
    let mut i = 0;
    while let Some(range) = ranges.next().map_err(WireError::Io)? {
        let ty = *columns
            .get(i)
            .ok_or_else(|| WireError::Protocol(format!("a row with more than {i} columns")))?;
        let value = match range {
            None => Value::Null,
            Some(range) => {
                let raw = buffer
                    .get(range)
                    .ok_or_else(|| WireError::Protocol("a column outside its row".into()))?;
                decode(raw, ty).map_err(|e| WireError::Data(format!("column {i}: {e}")))?
            }
        };
        values.push(value);
        i += 1;
    }
    Ok(Row(values))
}

/// One column in the binary format of type `ty`.
fn decode(raw: &[u8], ty: u32) -> Result<Value, Box<dyn std::error::Error + Sync + Send>> {
    Ok(match ty {
        oid::INT8 => Value::Int(pgt::int8_from_sql(raw)?),
        oid::INT4 => Value::Int(pgt::int4_from_sql(raw)?.into()),
        oid::BOOL => Value::Int(pgt::bool_from_sql(raw)?.into()),
        oid::TEXT | oid::VARCHAR | oid::NAME | oid::BPCHAR => {
            Value::Text(pgt::text_from_sql(raw)?.to_owned())
        }
        oid::BYTEA => Value::Blob(pgt::bytea_from_sql(raw).to_vec()),
        oid::VOID => Value::Null,
        other => return Err(format!("unsupported column type {other}").into()),
    })
}
