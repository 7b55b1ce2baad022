//! The terminal's side of the control channel (`tessera connect`).
//!
//! A [`Terminal`] holds the access card's key, the pinned home-server certificate and the
//! rustls configuration whose in-memory store keeps the TLS 1.3 resumption tickets: the first
//! [`Terminal::connect`] is a full handshake (the access card signs once), later ones resume
//! without the card. A [`ControlConnection`] sends PIN2, opens market sessions and carries
//! their bytes; frames for other sessions than the one being read are queued, so several
//! sessions share one connection.
//!
//! Everything is blocking with socket timeouts ([`IO_TIMEOUT`]): a home server that stops
//! answering or goes away ends the call with an error, never a hang.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use tessera_proto::control::{ErrorCode, Frame, MAX_DATA_LEN, Mode};
use tessera_proto::proxy::TrafficKeys;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, ClientConnection, HandshakeKind, StreamOwned};

use crate::ClientKey;
use crate::control::{FrameError, read_frame_sync, write_frame_sync};

/// Timeout of the TCP connect and of every read and write on the control connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong on the terminal's side.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// The home server could not be reached, or the connection failed or timed out.
    #[error("home server: {0}")]
    Io(#[from] io::Error),
    /// The control channel's TLS failed (unpinned certificate, card not admitted...).
    #[error("control channel TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The configuration is wrong (address, certificate).
    #[error("{0}")]
    Setup(String),
    /// The home server sent something malformed or unexpected.
    #[error("home server protocol: {0}")]
    Protocol(String),
    /// The home server closed the control connection.
    #[error("the home server closed the control connection")]
    Closed,
    /// The home server refused or failed a request.
    #[error("home server: {message}")]
    Refused {
        /// Its code.
        code: ErrorCode,
        /// Its text.
        message: String,
    },
}

impl From<FrameError> for TerminalError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => io_or_tls(e),
            FrameError::Malformed(e) => TerminalError::Protocol(e.to_string()),
            FrameError::Truncated => TerminalError::Closed,
        }
    }
}

/// rustls reports TLS failures inside `io::Error`s; take them out.
fn io_or_tls(e: io::Error) -> TerminalError {
    if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        return match e.into_inner().map(|b| b.downcast::<rustls::Error>()) {
            Some(Ok(tls)) => TerminalError::Tls(*tls),
            _ => TerminalError::Protocol("TLS".into()),
        };
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => TerminalError::Closed,
        _ => TerminalError::Io(e),
    }
}

/// The terminal: its access-card key, the pinned home server, and the resumption tickets.
pub struct Terminal {
    config: Arc<ClientConfig>,
    home: String,
}

impl Terminal {
    /// A terminal for the home server at `home` (`HOST:PORT`) whose key's SubjectPublicKeyInfo
    /// hashes to `pinned_spki` (from the access card), with the access card's key `key`.
    pub fn new(
        key: Arc<dyn ClientKey>,
        pinned_spki: [u8; 32],
        home: impl Into<String>,
    ) -> Result<Self, TerminalError> {
        let config = crate::control::tls::client_config(key, pinned_spki)
            .map_err(|e| TerminalError::Setup(e.to_string()))?;
        Ok(Terminal { config, home: home.into() })
    }

    /// Opens a control connection: a full handshake the first time, a resumption (no access
    /// card signature) afterwards while the home server keeps the session.
    pub fn connect(&self) -> Result<ControlConnection, TerminalError> {
        let addr = self
            .home
            .to_socket_addrs()
            .map_err(|e| TerminalError::Setup(format!("home server address {}: {e}", self.home)))?
            .next()
            .ok_or_else(|| TerminalError::Setup(format!("{}: no address", self.home)))?;
        let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        tcp.set_nodelay(true)?;
        // The pin, not the name, authenticates the home server; the name only keys the
        // resumption tickets.
        let host = self.home.rsplit_once(':').map(|(h, _)| h).unwrap_or(&self.home);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| TerminalError::Setup(format!("{host}: not a host name or address")))?;
        let conn = ClientConnection::new(self.config.clone(), name)?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).map_err(io_or_tls)?;
        }
        // In TLS 1.3 the server's verdict on the client certificate arrives after the
        // client's Finished: the first read surfaces it, so the caller learns "not admitted"
        // from its first request at the latest.
        Ok(ControlConnection { tls, queued: HashMap::new(), next_session: 1, closed: false })
    }
}

/// The real access card (`access` applet) as the control channel's client key, through
/// [`tessera_host::access::AccessCard`] (unlocked with its PIN by the caller). Its
/// certificate and the pinned home server are read once.
pub struct CardAccess {
    card: std::sync::Mutex<
        tessera_host::access::AccessCard<Box<dyn tessera_host::CardChannel + Send>>,
    >,
    chain: Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>,
    home: Option<tessera_proto::access::HomeServer>,
}

impl CardAccess {
    /// Takes an access card whose applet is selected and unlocked.
    pub fn new(
        mut card: tessera_host::access::AccessCard<Box<dyn tessera_host::CardChannel + Send>>,
    ) -> Result<Self, tessera_host::home::CardError> {
        let cert = card.certificate()?;
        let home = card.home_server()?;
        let chain = vec![cert.der().to_vec().into()];
        Ok(CardAccess { card: std::sync::Mutex::new(card), chain, home })
    }

    /// The home server the card pins (key hash and address), if it has one.
    pub fn home_server(&self) -> Option<&tessera_proto::access::HomeServer> {
        self.home.as_ref()
    }
}

impl ClientKey for CardAccess {
    fn certificate_chain(&self) -> Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>> {
        self.chain.clone()
    }

    fn sign_tls13(&self, transcript_hash: &[u8; 32]) -> Result<Vec<u8>, crate::KeyError> {
        let mut card = self.card.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        card.sign_tls13(transcript_hash).map_err(|e| match e {
            tessera_host::home::CardError::Locked => crate::KeyError::Locked,
            other => crate::KeyError::Card(other.to_string()),
        })
    }
}

/// What a market session received.
#[derive(Debug)]
pub enum SessionEvent {
    /// Bytes from the market (TLS records in handover/partial mode, plaintext in relay mode).
    Data(Vec<u8>),
    /// New traffic keys after a key update, and whether the terminal must answer with its own
    /// KeyUpdate before switching its sending keys.
    KeysUpdated(TrafficKeys, bool),
    /// The home card's signature (partial mode).
    Signature(Vec<u8>),
    /// The market closed the connection.
    End,
}

/// How the home server opened a market session.
#[derive(Debug)]
pub enum OpenedSession {
    /// Handover mode: the traffic keys.
    HandedOver(TrafficKeys),
    /// Relay or partial mode: the home card's certificate (partial mode), else empty.
    Opened(Vec<u8>),
}

/// An open control connection.
pub struct ControlConnection {
    tls: StreamOwned<ClientConnection, TcpStream>,
    queued: HashMap<u32, VecDeque<Frame>>,
    next_session: u32,
    closed: bool,
}

impl ControlConnection {
    /// Whether this connection resumed an earlier session (no access card signature).
    pub fn resumed(&self) -> bool {
        self.tls.conn.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    fn send(&mut self, f: &Frame) -> Result<(), TerminalError> {
        write_frame_sync(&mut self.tls, f).map_err(TerminalError::from)
    }

    /// Reads the next frame for `session` (0: connection-level), queueing others.
    fn next_for(&mut self, session: u32) -> Result<Frame, TerminalError> {
        if let Some(f) = self.queued.get_mut(&session).and_then(VecDeque::pop_front) {
            return Ok(f);
        }
        loop {
            if self.closed {
                return Err(TerminalError::Closed);
            }
            let f = match read_frame_sync(&mut self.tls) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    self.closed = true;
                    return Err(TerminalError::Closed);
                }
                Err(e) => {
                    self.closed = true;
                    return Err(e.into());
                }
            };
            let s = f.session();
            if let Frame::Error { session: 0, code: ErrorCode::Protocol, message } = &f {
                self.closed = true;
                let message = message.clone();
                return Err(TerminalError::Refused { code: ErrorCode::Protocol, message });
            }
            if s == session {
                return Ok(f);
            }
            self.queued.entry(s).or_default().push_back(f);
        }
    }

    /// Sends PIN2 to the home card (claim 3).
    pub fn pin2(&mut self, pin: &[u8]) -> Result<(), TerminalError> {
        self.send(&Frame::Pin2 { pin: pin.to_vec() })?;
        match self.next_for(0)? {
            Frame::Unlocked => Ok(()),
            Frame::Error { code, message, .. } => Err(TerminalError::Refused { code, message }),
            other => Err(unexpected(&other)),
        }
    }

    /// A wallet request (e-money) for the home card; returns the home server's reply body.
    pub fn wallet(&mut self, body: &[u8]) -> Result<Vec<u8>, TerminalError> {
        self.send(&Frame::Wallet { body: body.to_vec() })?;
        match self.next_for(0)? {
            Frame::WalletReply { body } => Ok(body),
            Frame::Error { code, message, .. } => Err(TerminalError::Refused { code, message }),
            other => Err(unexpected(&other)),
        }
    }

    /// The user's "end": the home card goes back to the remote-access wait state.
    pub fn end(&mut self) -> Result<(), TerminalError> {
        self.send(&Frame::End { session: 0 })
    }

    /// Opens a market session to `host:port` in `mode`; returns its number and what the home
    /// server handed over.
    pub fn open(
        &mut self,
        host: &str,
        port: u16,
        mode: Mode,
        cache_allowed: bool,
    ) -> Result<(u32, OpenedSession), TerminalError> {
        let session = self.next_session;
        self.next_session = self.next_session.checked_add(1).unwrap_or(1);
        let open = Frame::OpenMarket { session, host: host.into(), port, mode, cache_allowed };
        open.encode().map_err(|e| TerminalError::Setup(e.to_string()))?;
        self.send(&open)?;
        match self.next_for(session)? {
            Frame::HandedOver { keys, .. } => Ok((session, OpenedSession::HandedOver(keys))),
            Frame::Opened { certificate, .. } => Ok((session, OpenedSession::Opened(certificate))),
            Frame::Error { code, message, .. } => Err(TerminalError::Refused { code, message }),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends bytes to the market (cut into [`MAX_DATA_LEN`] pieces).
    pub fn send_data(&mut self, session: u32, bytes: &[u8]) -> Result<(), TerminalError> {
        for piece in bytes.chunks(MAX_DATA_LEN) {
            self.send(&Frame::Data { session, bytes: piece.to_vec() })?;
        }
        Ok(())
    }

    /// Forwards post-handshake handshake messages to the home server (handover mode).
    pub fn post_handshake(&mut self, session: u32, messages: &[u8]) -> Result<(), TerminalError> {
        for piece in messages.chunks(MAX_DATA_LEN) {
            self.send(&Frame::PostHandshake { session, bytes: piece.to_vec() })?;
        }
        Ok(())
    }

    /// Asks the home card to sign a TLS 1.3 client CertificateVerify (partial mode); returns
    /// the DER signature.
    pub fn sign(
        &mut self,
        session: u32,
        transcript_hash: [u8; 32],
    ) -> Result<Vec<u8>, TerminalError> {
        self.send(&Frame::SignRequest { session, transcript_hash })?;
        loop {
            match self.recv(session)? {
                SessionEvent::Signature(s) => return Ok(s),
                SessionEvent::End => return Err(TerminalError::Closed),
                // Market bytes arriving before the signature stay for the caller.
                other => self.requeue(session, other),
            }
        }
    }

    fn requeue(&mut self, session: u32, ev: SessionEvent) {
        let f = match ev {
            SessionEvent::Data(bytes) => Frame::Data { session, bytes },
            SessionEvent::KeysUpdated(keys, respond) => {
                Frame::KeysUpdated { session, keys, respond }
            }
            SessionEvent::Signature(signature) => Frame::SignResponse { session, signature },
            SessionEvent::End => Frame::End { session },
        };
        self.queued.entry(session).or_default().push_back(f);
    }

    /// The next event of `session`.
    pub fn recv(&mut self, session: u32) -> Result<SessionEvent, TerminalError> {
        match self.next_for(session)? {
            Frame::Data { bytes, .. } => Ok(SessionEvent::Data(bytes)),
            Frame::KeysUpdated { keys, respond, .. } => {
                Ok(SessionEvent::KeysUpdated(keys, respond))
            }
            Frame::SignResponse { signature, .. } => Ok(SessionEvent::Signature(signature)),
            Frame::End { .. } => Ok(SessionEvent::End),
            Frame::Error { code, message, .. } => Err(TerminalError::Refused { code, message }),
            other => Err(unexpected(&other)),
        }
    }

    /// Ends a market session.
    pub fn end_session(&mut self, session: u32) -> Result<(), TerminalError> {
        self.queued.remove(&session);
        self.send(&Frame::End { session })
    }

    /// A handover-mode session as a byte stream of application data: the terminal seals and
    /// opens the TLS records itself with the handed-over `keys`, forwards post-handshake
    /// messages to the home server and applies the keys it answers with.
    pub fn handover_stream(
        &mut self,
        session: u32,
        keys: &TrafficKeys,
    ) -> Result<HandoverStream<'_>, TerminalError> {
        let keyed = crate::handover::KeyedConnection::new(keys)
            .map_err(|e| TerminalError::Protocol(e.to_string()))?;
        Ok(HandoverStream { conn: self, session, keyed, buf: Vec::new(), pos: 0, eof: false })
    }

    /// A relay-mode session as a byte stream of application data.
    pub fn relay_stream(&mut self, session: u32) -> RelayStream<'_> {
        RelayStream { conn: self, session, buf: Vec::new(), pos: 0, eof: false }
    }
}

fn unexpected(f: &Frame) -> TerminalError {
    TerminalError::Protocol(format!("unexpected frame {f:?}"))
}

/// A handover-mode market session as `Read + Write` of application data (the records are
/// protected here, with the handed-over keys; the home server only relays them).
pub struct HandoverStream<'a> {
    conn: &'a mut ControlConnection,
    session: u32,
    keyed: crate::handover::KeyedConnection,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl HandoverStream<'_> {
    /// Sends close_notify to the market.
    pub fn close(&mut self) -> Result<(), TerminalError> {
        let record =
            self.keyed.close_notify().map_err(|e| TerminalError::Protocol(e.to_string()))?;
        self.conn.send_data(self.session, &record)
    }
}

fn handover_io(e: crate::handover::HandoverError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl Read for HandoverStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        use crate::handover::Event;
        while self.pos >= self.buf.len() && !self.eof {
            match self.keyed.next_event().map_err(handover_io)? {
                Some(Event::Data(bytes)) => {
                    self.buf = bytes;
                    self.pos = 0;
                    continue;
                }
                Some(Event::PostHandshake(bytes)) => {
                    self.conn.post_handshake(self.session, &bytes).map_err(to_io)?;
                    continue;
                }
                Some(Event::Closed) => {
                    self.eof = true;
                    continue;
                }
                None => {}
            }
            match self.conn.recv(self.session).map_err(to_io)? {
                SessionEvent::Data(bytes) => self.keyed.received(&bytes),
                SessionEvent::KeysUpdated(keys, respond) => {
                    let record =
                        self.keyed.apply_key_update(&keys, respond).map_err(handover_io)?;
                    if !record.is_empty() {
                        self.conn.send_data(self.session, &record).map_err(to_io)?;
                    }
                }
                SessionEvent::End => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the market closed the connection without close_notify",
                    ));
                }
                SessionEvent::Signature(_) => {
                    return Err(io::Error::other("unexpected signature in a handover session"));
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for HandoverStream<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let records = self.keyed.seal_data(data).map_err(handover_io)?;
        self.conn.send_data(self.session, &records).map_err(to_io)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A control connection shared between a partial-mode session's TLS engine and the home
/// card signer it calls back into.
pub type SharedControl = Arc<std::sync::Mutex<ControlConnection>>;

fn lock(control: &SharedControl) -> std::sync::MutexGuard<'_, ControlConnection> {
    control.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A partial-mode market session (¶0089): the terminal runs the TLS 1.3 handshake with the
/// market itself (the market validated against the terminal's roots); only the client
/// CertificateVerify is signed by the home card, through the home server, which also relays
/// the TCP bytes.
pub struct PartialStream {
    control: SharedControl,
    session: u32,
    tls: ClientConnection,
}

impl PartialStream {
    /// Opens a partial-mode session to `host:port` over `control`.
    pub fn open(
        control: SharedControl,
        host: &str,
        port: u16,
        roots: rustls::RootCertStore,
    ) -> Result<Self, TerminalError> {
        let (session, opened) = lock(&control).open(host, port, Mode::Partial, false)?;
        let OpenedSession::Opened(certificate) = opened else {
            return Err(TerminalError::Protocol("partial mode answered with keys".into()));
        };
        let signer_control = control.clone();
        let signer = move |hash: &[u8; 32]| {
            lock(&signer_control).sign(session, *hash).map_err(|e| match e {
                TerminalError::Refused { code: ErrorCode::Locked, .. } => crate::KeyError::Locked,
                other => crate::KeyError::Card(other.to_string()),
            })
        };
        let key = Arc::new(crate::handover::partial::ForwardedKey::new(
            vec![certificate.into()],
            Arc::new(signer),
        ));
        let config = crate::handover::partial::terminal_config(roots, key)
            .map_err(|e| TerminalError::Setup(e.to_string()))?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| TerminalError::Setup(format!("{host}: not a valid server name")))?;
        let tls = ClientConnection::new(config, name)?;
        let mut stream = PartialStream { control, session, tls };
        stream.flush_tls().map_err(TerminalError::Io)?;
        Ok(stream)
    }

    /// The session number.
    pub fn session(&self) -> u32 {
        self.session
    }

    fn flush_tls(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            let mut out = Vec::new();
            self.tls.write_tls(&mut out)?;
            lock(&self.control).send_data(self.session, &out).map_err(to_io)?;
        }
        Ok(())
    }
}

impl Read for PartialStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(out) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            self.flush_tls()?;
            let event = lock(&self.control).recv(self.session).map_err(to_io)?;
            match event {
                SessionEvent::Data(bytes) => {
                    let mut rest = bytes.as_slice();
                    while !rest.is_empty() {
                        self.tls.read_tls(&mut rest)?;
                        // The home card's signature is requested from in here (the control
                        // connection is not locked now).
                        self.tls
                            .process_new_packets()
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    }
                    self.flush_tls()?;
                }
                SessionEvent::End => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the market closed the connection without close_notify",
                    ));
                }
                SessionEvent::KeysUpdated(..) | SessionEvent::Signature(_) => {
                    return Err(io::Error::other("unexpected frame in a partial session"));
                }
            }
        }
    }
}

impl Write for PartialStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.tls.writer().write(data)?;
        self.flush_tls()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls()
    }
}

/// A relay-mode market session as `Read + Write` of application data.
pub struct RelayStream<'a> {
    conn: &'a mut ControlConnection,
    session: u32,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

fn to_io(e: TerminalError) -> io::Error {
    io::Error::other(e)
}

impl Read for RelayStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() && !self.eof {
            match self.conn.recv(self.session).map_err(to_io)? {
                SessionEvent::Data(bytes) => {
                    self.buf = bytes;
                    self.pos = 0;
                }
                SessionEvent::End => self.eof = true,
                SessionEvent::KeysUpdated(..) | SessionEvent::Signature(_) => {
                    return Err(io::Error::other("unexpected frame in a relay session"));
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for RelayStream<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.conn.send_data(self.session, data).map_err(to_io)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A minimal HTTP/1.1 client for one request per market session (`Connection: close`), over
/// any byte stream of application data (a relay session, or handed-over keys' records).
pub mod http {
    use std::io::{self, Read, Write};

    /// Largest response accepted (head and body).
    pub const MAX_RESPONSE_LEN: usize = 64 * 1024 * 1024;

    /// An HTTP request.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Request {
        /// Method (`GET`, `POST`...).
        pub method: String,
        /// The `Host` header's value.
        pub host: String,
        /// Path and query, starting with `/`.
        pub target: String,
        /// Extra headers, in order.
        pub headers: Vec<(String, String)>,
        /// Body (sent with `Content-Length` when not empty or when the method is not GET/HEAD).
        pub body: Vec<u8>,
    }

    /// An HTTP response.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Response {
        /// Status code.
        pub status: u16,
        /// Reason phrase.
        pub reason: String,
        /// Headers, in order.
        pub headers: Vec<(String, String)>,
        /// Body (chunked transfer coding removed).
        pub body: Vec<u8>,
    }

    fn bad(m: impl Into<String>) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, m.into())
    }

    fn token_ok(s: &str) -> bool {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
    }

    impl Request {
        /// The request on the wire; refuses header names or values that would split it.
        pub fn encode(&self) -> io::Result<Vec<u8>> {
            if !token_ok(&self.method) {
                return Err(bad(format!("bad method {:?}", self.method)));
            }
            let line_ok = |s: &str| !s.contains(['\r', '\n']);
            if !self.target.starts_with('/') || self.target.contains([' ', '\r', '\n']) {
                return Err(bad(format!("bad path {:?}", self.target)));
            }
            let mut out =
                format!("{} {} HTTP/1.1\r\nHost: {}\r\n", self.method, self.target, self.host);
            let has = |name: &str| self.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
            for (k, v) in &self.headers {
                if !token_ok(k) || !line_ok(v) {
                    return Err(bad(format!("bad header {k:?}")));
                }
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            if !has("connection") {
                out.push_str("Connection: close\r\n");
            }
            if !has("content-length")
                && (!self.body.is_empty() || !matches!(self.method.as_str(), "GET" | "HEAD"))
            {
                out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
            }
            out.push_str("\r\n");
            let mut bytes = out.into_bytes();
            bytes.extend_from_slice(&self.body);
            Ok(bytes)
        }
    }

    /// Sends `request` over `stream` and reads the response until the market closes.
    pub fn exchange<S: Read + Write>(stream: &mut S, request: &Request) -> io::Result<Response> {
        stream.write_all(&request.encode()?)?;
        stream.flush()?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if raw.len() + n > MAX_RESPONSE_LEN {
                return Err(bad("response too large"));
            }
            raw.extend_from_slice(&buf[..n]);
            // Stop early when the response is complete (the market may keep the connection).
            if let Ok(Some(r)) = parse(&raw, request.method == "HEAD", false) {
                return Ok(r);
            }
        }
        parse(&raw, request.method == "HEAD", true)?
            .ok_or_else(|| bad("the market closed the connection before the response was complete"))
    }

    /// Parses a complete response from `raw` (`eof`: the connection has ended); `Ok(None)` if
    /// more bytes are needed.
    pub fn parse(raw: &[u8], head_only: bool, eof: bool) -> io::Result<Option<Response>> {
        let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(None);
        };
        let head =
            std::str::from_utf8(&raw[..head_end]).map_err(|_| bad("response head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(bad(format!("not an HTTP/1.x response: {status_line:?}")));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .filter(|s| (100..1000).contains(s))
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let reason = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        for l in lines {
            let (k, v) = l.split_once(':').ok_or_else(|| bad(format!("bad header line {l:?}")))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let get = |name: &str| {
            headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        };
        let rest = &raw[head_end + 4..];
        if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
            return Ok(Some(Response { status, reason, headers, body: Vec::new() }));
        }
        let body = if get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            match dechunk(rest)? {
                Some(b) => b,
                None => return Ok(None),
            }
        } else if let Some(len) = get("content-length") {
            let len: usize = len.parse().map_err(|_| bad("bad Content-Length"))?;
            if rest.len() < len {
                return Ok(None);
            }
            rest[..len].to_vec()
        } else {
            // Delimited by the end of the connection.
            if !eof {
                return Ok(None);
            }
            rest.to_vec()
        };
        Ok(Some(Response { status, reason, headers, body }))
    }

    fn dechunk(mut rest: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let mut body = Vec::new();
        loop {
            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
            let size_line = std::str::from_utf8(&rest[..eol]).map_err(|_| bad("bad chunk size"))?;
            let size_hex = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad("bad chunk size"))?;
            rest = &rest[eol + 2..];
            if size == 0 {
                return Ok(Some(body));
            }
            if rest.len() < size + 2 {
                return Ok(None);
            }
            body.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
    }
}
