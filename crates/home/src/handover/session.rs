//! The home server's side of a handed-over market session: it never sees the records, but the
//! terminal forwards it every post-handshake handshake message it opens (RFC 8446 section
//! 4.6), and the home server answers with what changes.
//!
//! - `NewSessionTicket` (4): kept in the session cache of the connection's configuration, so
//!   the next session with that market can resume without the home card.
//! - `KeyUpdate` (24): the market changed its sending keys; the home server computes the next
//!   server-write keys (and, if the market requested it, the next client-write keys the
//!   terminal switches to after sending its own KeyUpdate).
//!
//! Anything else after the handshake (a renegotiation request, a CertificateRequest for
//! post-handshake authentication, which the home server never offers) ends the session.

use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use tessera_proto::proxy::{Direction, TlsVersion, TrafficKeys};

use super::HandoverError;
use super::handshake::direction_keys;

/// Handshake message type `new_session_ticket`.
pub const NEW_SESSION_TICKET: u8 = 4;
/// Handshake message type `key_update`.
pub const KEY_UPDATE: u8 = 24;
/// Longest post-handshake message accepted (a ticket is far smaller).
const MAX_MESSAGE_LEN: usize = 1 << 16;

/// What a post-handshake message changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostHandshake {
    /// A session ticket was stored for resumption.
    SessionTicket,
    /// The traffic keys changed: the terminal reads with the server-write keys of `keys` from
    /// now on. If `respond` is set the market asked for an update in return: the terminal
    /// first sends a KeyUpdate (`update_not_requested`) under its old client-write keys, then
    /// switches to the client-write keys of `keys`. A direction that did not change keeps the
    /// terminal's own sequence number ([`KeyedConnection::apply_key_update`]).
    ///
    /// [`KeyedConnection::apply_key_update`]: super::KeyedConnection::apply_key_update
    KeyUpdate {
        /// The new key set.
        keys: TrafficKeys,
        /// Whether the terminal must answer with its own KeyUpdate.
        respond: bool,
    },
}

/// The home server's side of a market session after the handover.
pub struct MarketSession {
    kernel: KernelConnection<ClientConnectionData>,
    keys: TrafficKeys,
    /// A post-handshake message split across records, waiting for its rest.
    partial: Vec<u8>,
}

impl std::fmt::Debug for MarketSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarketSession").field("keys", &self.keys).finish()
    }
}

impl MarketSession {
    pub(crate) fn new(kernel: KernelConnection<ClientConnectionData>, keys: TrafficKeys) -> Self {
        MarketSession { kernel, keys, partial: Vec::new() }
    }

    /// The keys as the terminal holds them now (sequence numbers as at the last change).
    pub fn keys(&self) -> &TrafficKeys {
        &self.keys
    }

    /// Handles the content of handshake records the terminal opened (one or more messages,
    /// possibly the continuation of one split across records). After an error the session is
    /// over (the terminal ends it); nothing partial is kept.
    pub fn on_handshake_data(&mut self, data: &[u8]) -> Result<Vec<PostHandshake>, HandoverError> {
        let result = self.handle_messages(data);
        if result.is_err() {
            self.partial.clear();
        }
        result
    }

    fn handle_messages(&mut self, data: &[u8]) -> Result<Vec<PostHandshake>, HandoverError> {
        if self.partial.len() + data.len() > MAX_MESSAGE_LEN + 4 {
            return Err(HandoverError::Malformed("post-handshake message too long"));
        }
        self.partial.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some((&[typ, a, b, c], rest)) = self.partial.split_first_chunk::<4>() {
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            if len > MAX_MESSAGE_LEN {
                return Err(HandoverError::Malformed("post-handshake message too long"));
            }
            if rest.len() < len {
                break;
            }
            let body = rest[..len].to_vec();
            self.partial.drain(..4 + len);
            out.push(match typ {
                NEW_SESSION_TICKET => {
                    self.on_new_session_ticket(&body)?;
                    PostHandshake::SessionTicket
                }
                KEY_UPDATE => {
                    let respond = match body.as_slice() {
                        [0] => false,
                        [1] => true,
                        _ => return Err(HandoverError::Malformed("KeyUpdate")),
                    };
                    PostHandshake::KeyUpdate { keys: self.on_key_update(respond)?, respond }
                }
                _ => return Err(HandoverError::Unsupported("post-handshake message")),
            });
        }
        Ok(out)
    }

    /// Stores a TLS 1.3 NewSessionTicket (`body` without the 4-byte handshake header).
    pub fn on_new_session_ticket(&mut self, body: &[u8]) -> Result<(), HandoverError> {
        if self.keys.version() != TlsVersion::Tls13 {
            return Err(HandoverError::Unsupported("session ticket after a TLS 1.2 handshake"));
        }
        Ok(self.kernel.handle_new_session_ticket(body)?)
    }

    /// The market sent a KeyUpdate: the next server-write keys, and if `respond` (the market
    /// set `update_requested`) the next client-write keys too. TLS 1.3 only.
    pub fn on_key_update(&mut self, respond: bool) -> Result<TrafficKeys, HandoverError> {
        let (seq, rx) = self.kernel.update_rx_secret()?;
        let mut keys =
            self.keys.clone().with_updated(Direction::ServerWrite, direction_keys(seq, rx)?)?;
        if respond {
            let (seq, tx) = self.kernel.update_tx_secret()?;
            keys = keys.with_updated(Direction::ClientWrite, direction_keys(seq, tx)?)?;
        }
        self.keys = keys.clone();
        Ok(keys)
    }

    /// The terminal wants to update its own sending keys (it sends a KeyUpdate under the old
    /// ones, then switches): the next client-write keys.
    pub fn update_client_write(&mut self) -> Result<TrafficKeys, HandoverError> {
        let (seq, tx) = self.kernel.update_tx_secret()?;
        let keys =
            self.keys.clone().with_updated(Direction::ClientWrite, direction_keys(seq, tx)?)?;
        self.keys = keys.clone();
        Ok(keys)
    }
}
