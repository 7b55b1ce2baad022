//! The terminal's side of a handed-over session: it protects what it sends and opens what it
//! receives with the [`TrafficKeys`] the home server handed it, with
//! [`tessera_crypto::tls::record`], against the unmodified market server.
//!
//! Post-handshake handshake messages are not the terminal's business: [`Event::PostHandshake`]
//! gives their content to forward to the home server ([`super::MarketSession`]). After a
//! KeyUpdate the terminal cannot read on until the home server's new keys are applied
//! ([`KeyedConnection::apply_key_update`]); [`KeyedConnection::next_event`] returns `None`
//! meanwhile. A close_notify ends the session ([`Event::Closed`]); any other alert ends it
//! with an error.

use tessera_crypto::tls::record::{
    ContentType, MAX_PLAINTEXT_LEN, RecordOpener, RecordSealer, Version, record_len,
};
use tessera_proto::proxy::{DirectionKeys, TlsVersion, TrafficKeys};

use super::HandoverError;
use super::session::KEY_UPDATE;

/// Alert description `close_notify`.
const CLOSE_NOTIFY: u8 = 0;
/// Alert level `warning` (TLS 1.2; TLS 1.3 ignores the level).
const WARNING: u8 = 1;

/// Something the market sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Application data.
    Data(Vec<u8>),
    /// The content of a post-handshake handshake record: forward it to the home server.
    PostHandshake(Vec<u8>),
    /// The market sent close_notify: the session is over.
    Closed,
}

/// A TLS connection driven with handed-over keys.
pub struct KeyedConnection {
    version: Version,
    sealer: RecordSealer,
    opener: RecordOpener,
    incoming: Vec<u8>,
    /// Handshake bytes of a message split across records (to find KeyUpdates).
    handshake: Vec<u8>,
    awaiting_keys: bool,
    closed: bool,
}

fn version(keys: &TrafficKeys) -> Version {
    match keys.version() {
        TlsVersion::Tls12 => Version::Tls12,
        TlsVersion::Tls13 => Version::Tls13,
    }
}

fn sealer(v: Version, d: &DirectionKeys) -> Result<RecordSealer, HandoverError> {
    Ok(RecordSealer::new(v, d.key(), *d.iv(), d.seq())?)
}

fn opener(v: Version, d: &DirectionKeys) -> Result<RecordOpener, HandoverError> {
    Ok(RecordOpener::new(v, d.key(), *d.iv(), d.seq())?)
}

impl KeyedConnection {
    /// A connection from the handed-over keys.
    pub fn new(keys: &TrafficKeys) -> Result<Self, HandoverError> {
        let v = version(keys);
        Ok(KeyedConnection {
            version: v,
            sealer: sealer(v, keys.client_write())?,
            opener: opener(v, keys.server_write())?,
            incoming: Vec::new(),
            handshake: Vec::new(),
            awaiting_keys: false,
            closed: false,
        })
    }

    /// Records carrying `data` as application data (split at 2^14 bytes).
    pub fn seal_data(&mut self, data: &[u8]) -> Result<Vec<u8>, HandoverError> {
        if self.closed {
            return Err(HandoverError::Ended("the session is closed".into()));
        }
        let mut out = Vec::with_capacity(data.len() + 32);
        for piece in data.chunks(MAX_PLAINTEXT_LEN) {
            out.extend(self.sealer.seal(ContentType::ApplicationData, piece)?);
        }
        Ok(out)
    }

    /// A close_notify alert record; nothing can be sent after it.
    pub fn close_notify(&mut self) -> Result<Vec<u8>, HandoverError> {
        let record = self.sealer.seal(ContentType::Alert, &[WARNING, CLOSE_NOTIFY])?;
        self.closed = true;
        Ok(record)
    }

    /// Bytes received from the market (through the home server's relay).
    pub fn received(&mut self, bytes: &[u8]) {
        self.incoming.extend_from_slice(bytes);
    }

    /// Whether reading waits for the home server's keys after a KeyUpdate.
    pub fn awaiting_keys(&self) -> bool {
        self.awaiting_keys
    }

    /// The next thing the market sent, or `None` if more bytes (or, after a KeyUpdate, the new
    /// keys) are needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, HandoverError> {
        if self.awaiting_keys || self.closed {
            return Ok(None);
        }
        let Some(len) = record_len(&self.incoming)? else {
            return Ok(None);
        };
        if self.incoming.len() < len {
            return Ok(None);
        }
        let mut opened = self.opener.open(&self.incoming[..len])?;
        self.incoming.drain(..len);
        match opened.typ {
            ContentType::ApplicationData => {
                Ok(Some(Event::Data(std::mem::take(&mut opened.content))))
            }
            ContentType::Handshake => {
                self.note_handshake(&opened.content)?;
                Ok(Some(Event::PostHandshake(std::mem::take(&mut opened.content))))
            }
            ContentType::Alert => match opened.content.as_slice() {
                [_, CLOSE_NOTIFY] => {
                    self.closed = true;
                    Ok(Some(Event::Closed))
                }
                [_, desc] => {
                    self.closed = true;
                    Err(HandoverError::Ended(format!("market sent alert {desc}")))
                }
                _ => Err(HandoverError::Malformed("alert")),
            },
            ContentType::ChangeCipherSpec => Err(HandoverError::Malformed("change_cipher_spec")),
        }
    }

    /// Tracks handshake message boundaries across records; a KeyUpdate stops reading until
    /// the new keys are applied.
    fn note_handshake(&mut self, content: &[u8]) -> Result<(), HandoverError> {
        self.handshake.extend_from_slice(content);
        while let Some((&[typ, a, b, c], rest)) = self.handshake.split_first_chunk::<4>() {
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            if len > 1 << 16 {
                return Err(HandoverError::Malformed("post-handshake message too long"));
            }
            if rest.len() < len {
                break;
            }
            if typ == KEY_UPDATE {
                self.awaiting_keys = true;
            }
            self.handshake.drain(..4 + len);
        }
        Ok(())
    }

    /// Applies the keys the home server computed for a KeyUpdate the market sent: reading
    /// continues with the new server-write keys; if `respond`, returns the terminal's own
    /// KeyUpdate record (sealed under the old client-write keys, to send now) and switches to
    /// the new client-write keys.
    pub fn apply_key_update(
        &mut self,
        keys: &TrafficKeys,
        respond: bool,
    ) -> Result<Vec<u8>, HandoverError> {
        if version(keys) != self.version || self.version != Version::Tls13 {
            return Err(HandoverError::Unsupported("key update outside TLS 1.3"));
        }
        let new_opener = opener(self.version, keys.server_write())?;
        let mut out = Vec::new();
        if respond {
            let new_sealer = sealer(self.version, keys.client_write())?;
            out = self.sealer.seal(ContentType::Handshake, &[KEY_UPDATE, 0, 0, 1, 0])?;
            self.sealer = new_sealer;
        }
        self.opener = new_opener;
        self.awaiting_keys = false;
        Ok(out)
    }

    /// The terminal updates its own sending keys with `keys` from
    /// [`MarketSession::update_client_write`](super::MarketSession::update_client_write):
    /// returns the KeyUpdate record (`update_not_requested`, under the old keys) to send.
    pub fn update_own_keys(&mut self, keys: &TrafficKeys) -> Result<Vec<u8>, HandoverError> {
        if version(keys) != self.version || self.version != Version::Tls13 {
            return Err(HandoverError::Unsupported("key update outside TLS 1.3"));
        }
        let new_sealer = sealer(self.version, keys.client_write())?;
        let out = self.sealer.seal(ContentType::Handshake, &[KEY_UPDATE, 0, 0, 1, 0])?;
        self.sealer = new_sealer;
        Ok(out)
    }
}
