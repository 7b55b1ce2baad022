//! Relay mode (¶0048): the home server keeps the market session's keys itself and re-encrypts
//! between the market and the terminal: towards the terminal the bytes travel as application
//! data inside the control channel (which has its own keys, X′ of the patent).
//!
//! [`RelayConnection`] is the byte-stream adapter: after a [`super::handshake`] (full, or
//! resumed from the session cache) it is `Read + Write` of the market session's application
//! data, sealing and opening the records with the same record layer the terminal uses in
//! handover mode, and handling the post-handshake messages itself (session tickets go to the
//! cache, key updates are applied and answered). The control channel pumps the bytes between
//! it and the terminal. It works for TLS 1.3 and 1.2 alike.

use std::io::{self, Read, Write};

use super::HandoverError;
use super::handshake::Handover;
use super::records::{Event, KeyedConnection};
use super::session::{MarketSession, PostHandshake};

/// A market session as a plaintext byte stream, held by the home server.
pub struct RelayConnection<S> {
    stream: S,
    conn: KeyedConnection,
    session: MarketSession,
    plain: Vec<u8>,
    pos: usize,
    eof: bool,
    chunk: Vec<u8>,
}

fn other(e: HandoverError) -> io::Error {
    match e {
        HandoverError::Io(e) => e,
        e => io::Error::other(e),
    }
}

impl<S: Read + Write> RelayConnection<S> {
    /// The relay for the market session `handover`, whose TCP stream is `stream`.
    pub fn new(stream: S, handover: Handover) -> Result<Self, HandoverError> {
        let mut conn = KeyedConnection::new(&handover.keys)?;
        conn.received(&handover.pending);
        Ok(RelayConnection {
            stream,
            conn,
            session: handover.session,
            plain: Vec::new(),
            pos: 0,
            eof: false,
            chunk: vec![0; 16 * 1024 + 2048],
        })
    }

    /// Sends close_notify to the market; nothing can be written afterwards.
    pub fn close(&mut self) -> io::Result<()> {
        let record = self.conn.close_notify().map_err(other)?;
        self.stream.write_all(&record)?;
        self.stream.flush()
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    fn fill(&mut self) -> io::Result<()> {
        while self.pos >= self.plain.len() && !self.eof {
            match self.conn.next_event().map_err(other)? {
                Some(Event::Data(d)) => {
                    self.plain = d;
                    self.pos = 0;
                }
                Some(Event::PostHandshake(m)) => {
                    for change in self.session.on_handshake_data(&m).map_err(other)? {
                        if let PostHandshake::KeyUpdate { keys, respond } = change {
                            let answer =
                                self.conn.apply_key_update(&keys, respond).map_err(other)?;
                            self.stream.write_all(&answer)?;
                        }
                    }
                }
                Some(Event::Closed) => {
                    self.eof = true;
                    // Answer the market's close_notify; the connection is over either way.
                    let _ = self.close();
                }
                None => {
                    let n = self.stream.read(&mut self.chunk)?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the market closed the connection without close_notify",
                        ));
                    }
                    self.conn.received(&self.chunk[..n]);
                }
            }
        }
        Ok(())
    }
}

impl<S: Read + Write> Read for RelayConnection<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.fill()?;
        let available = &self.plain[self.pos..];
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.pos += n;
        Ok(n)
    }
}

impl<S: Read + Write> Write for RelayConnection<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(tessera_crypto::tls::record::MAX_PLAINTEXT_LEN);
        let records = self.conn.seal_data(&buf[..n]).map_err(other)?;
        self.stream.write_all(&records)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}
