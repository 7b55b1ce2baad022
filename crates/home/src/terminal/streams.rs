//! Market sessions as byte streams of application data, one per mode: [`HandoverStream`]
//! (the terminal protects the records with the handed-over keys), [`PartialStream`] (the
//! terminal runs the handshake; the home card signs through the home server) and
//! [`RelayStream`] (the home server re-encrypts).

use std::io::{self, Read, Write};
use std::sync::Arc;

use tessera_proto::control::{ErrorCode, Mode};
use tessera_proto::proxy::TrafficKeys;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConnection};

use super::{ControlConnection, OpenedSession, SessionEvent, TerminalError};

impl ControlConnection {
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
