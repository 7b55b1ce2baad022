//! The terminal's side of the control channel (`tessera connect`).
//!
//! A [`Terminal`] holds the access card's key, the pinned home-server certificate and the
//! rustls configuration whose in-memory store keeps the TLS 1.3 resumption tickets: the first
//! [`Terminal::connect`] is a full handshake (the access card signs once), later ones resume
//! without the card. A [`ControlConnection`] sends PIN2, opens market sessions and carries
//! their bytes; frames for other sessions than the one being read are queued, so several
//! sessions share one connection.
//!
//! Market sessions read and write through [`HandoverStream`], [`PartialStream`] or
//! [`RelayStream`]; [`http`] makes one HTTP/1.1 request over any of them.
//!
//! Everything is blocking with socket timeouts ([`IO_TIMEOUT`]): a home server that stops
//! answering or goes away ends the call with an error, never a hang.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use tessera_proto::control::{ErrorCode, Frame, MAX_DATA_LEN, Mode};
use tessera_proto::proxy::TrafficKeys;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, ClientConnection, HandshakeKind, StreamOwned};

use crate::ClientKey;
use crate::control::{FrameError, read_frame_sync, write_frame_sync};

pub mod http;
mod streams;

pub use streams::{HandoverStream, PartialStream, RelayStream, SharedControl};

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

/// The real access card as [`CardAccess`] drives it: the host's session with the idle relock.
pub type AccessSession = tessera_host::access::AccessCardSession<
    Box<dyn tessera_host::CardChannel + Send>,
    std::sync::Arc<dyn tessera_host::home::Clock>,
>;

/// The real access card (`access` applet) as the control channel's client key, through
/// [`tessera_host::access::AccessCardSession`] (unlocked with its PIN by the caller; relocked
/// after ten minutes without use, so a long-running terminal asks for the PIN again). Its
/// certificate and the pinned home server are read once.
pub struct CardAccess {
    card: std::sync::Mutex<AccessSession>,
    chain: Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>,
    home: Option<tessera_proto::access::HomeServer>,
}

impl CardAccess {
    /// Takes an access card whose applet is selected and which the caller has just
    /// unlocked; the idle limit runs on the system clock.
    pub fn new(
        card: tessera_host::access::AccessCard<Box<dyn tessera_host::CardChannel + Send>>,
    ) -> Result<Self, tessera_host::home::CardError> {
        Self::with_clock(card, std::sync::Arc::new(tessera_host::home::SystemClock))
    }

    /// [`CardAccess::new`] with the idle limit on `clock`.
    pub fn with_clock(
        mut card: tessera_host::access::AccessCard<Box<dyn tessera_host::CardChannel + Send>>,
        clock: std::sync::Arc<dyn tessera_host::home::Clock>,
    ) -> Result<Self, tessera_host::home::CardError> {
        let cert = card.certificate()?;
        let home = card.home_server()?;
        let chain = vec![cert.der().to_vec().into()];
        let session = tessera_host::access::AccessCardSession::unlocked(card, clock);
        Ok(CardAccess { card: std::sync::Mutex::new(session), chain, home })
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
            tessera_host::home::CardError::Locked
            | tessera_host::home::CardError::IdleFallback(_) => crate::KeyError::Locked,
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
}

fn unexpected(f: &Frame) -> TerminalError {
    TerminalError::Protocol(format!("unexpected frame {f:?}"))
}
