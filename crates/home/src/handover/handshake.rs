//! The market handshake over a TCP stream, and the extraction of the traffic keys.
//!
//! The stream is read in bulk, but rustls is given one complete record at a time and only
//! while the handshake is blocked on input: once the client's Finished is sent the handshake
//! is over and every byte read past the last handshake record is still untouched in the buffer
//! ([`Handover::pending`]), to be forwarded to the terminal before anything else. So the first
//! application bytes (or session tickets) the market writes right after its Finished, even in
//! the same TCP segment, reach the terminal under the handed-over keys and sequence numbers.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::{ConnectionState, EncodeError};
use rustls::{ClientConfig, ConnectionTrafficSecrets, ProtocolVersion};
use tessera_crypto::tls::record::record_len;
use tessera_proto::proxy::{CipherSuite, DirectionKeys, TlsVersion, TrafficKeys};

use super::HandoverError;
use super::session::MarketSession;

/// Largest read per `read` call.
const READ_CHUNK: usize = 16 * 1024 + 2048;

/// The result of a market handshake: the keys for the terminal, the bytes already read from
/// the market that belong to the terminal, and the home server's side of the session.
pub struct Handover {
    /// The traffic keys and sequence numbers to hand to the terminal.
    pub keys: TrafficKeys,
    /// Raw bytes the market sent after its last handshake record that were already read:
    /// forward them to the terminal first, then relay the stream.
    pub pending: Vec<u8>,
    /// The home server's side (post-handshake messages, key updates).
    pub session: MarketSession,
    /// Whether the handshake resumed a cached session (no home-card signature).
    pub resumed: bool,
}

impl std::fmt::Debug for Handover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handover")
            .field("keys", &self.keys)
            .field("pending", &self.pending.len())
            .field("resumed", &self.resumed)
            .finish()
    }
}

/// Opens a TCP connection to a market with `timeout` on the connect and on every read and
/// write, so a market that stops answering ends the handshake with an error instead of a hang.
pub fn connect_market(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Runs the TLS client handshake with the market named `server_name` over `stream` and
/// extracts the connection's traffic keys.
///
/// Fails cleanly (never hangs beyond the stream's timeouts) when the market's certificate does
/// not validate, the market sends an alert or closes the connection, or the negotiated suite
/// is not one the terminal implements.
pub fn handshake<S: Read + Write>(
    stream: &mut S,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
) -> Result<Handover, HandoverError> {
    let mut conn = UnbufferedClientConnection::new(config, server_name)?;
    // `incoming[..released]` has been given to rustls; `incoming[released..]` is raw.
    let mut incoming: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut released = 0usize;
    let mut outgoing: Vec<u8> = vec![0; 4096];
    let mut out_len = 0usize;
    let mut chunk = vec![0u8; READ_CHUNK];

    loop {
        let status = conn.process_tls_records(&mut incoming[..released]);
        let discard = status.discard;
        let mut blocked = false;
        let mut done = false;
        match status.state? {
            ConnectionState::EncodeTlsData(mut state) => loop {
                match state.encode(&mut outgoing[out_len..]) {
                    Ok(n) => {
                        out_len += n;
                        break;
                    }
                    Err(EncodeError::InsufficientSize(e)) => {
                        outgoing.resize(out_len + e.required_size, 0);
                    }
                    Err(_) => return Err(HandoverError::Unsupported("TLS encoder state")),
                }
            },
            ConnectionState::TransmitTlsData(state) => {
                stream.write_all(&outgoing[..out_len])?;
                stream.flush()?;
                out_len = 0;
                state.done();
            }
            ConnectionState::BlockedHandshake => blocked = true,
            ConnectionState::WriteTraffic(_) => done = true,
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                return Err(HandoverError::Closed);
            }
            _ => return Err(HandoverError::Unsupported("application data during the handshake")),
        }
        incoming.drain(..discard);
        released -= discard;
        if done {
            break;
        }
        if blocked {
            released += next_record(stream, &mut incoming, released, &mut chunk)?;
        }
    }
    if released != 0 || out_len != 0 {
        return Err(HandoverError::Unsupported("handshake data left over at the switch-over"));
    }
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let (secrets, kernel) = conn.dangerous_into_kernel_connection()?;
    let keys = traffic_keys(&kernel, secrets.tx, secrets.rx)?;
    Ok(Handover {
        session: MarketSession::new(kernel, keys.clone()),
        keys,
        pending: incoming,
        resumed,
    })
}

/// Makes sure `incoming[released..]` starts with one complete record, reading from `stream`
/// as needed; returns its length.
fn next_record<S: Read>(
    stream: &mut S,
    incoming: &mut Vec<u8>,
    released: usize,
    chunk: &mut [u8],
) -> Result<usize, HandoverError> {
    loop {
        let raw = &incoming[released..];
        let len = record_len(raw).map_err(|_| HandoverError::Malformed("record header"))?;
        if let Some(len) = len.filter(|len| raw.len() >= *len) {
            return Ok(len);
        }
        let n = match stream.read(chunk) {
            Ok(0) => return Err(HandoverError::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HandoverError::Io(e)),
        };
        incoming.extend_from_slice(&chunk[..n]);
    }
}

/// The version and suite of a kernel connection, as the terminal knows them.
pub(crate) fn negotiated(
    kernel: &KernelConnection<ClientConnectionData>,
) -> Result<(TlsVersion, CipherSuite), HandoverError> {
    let version = match kernel.protocol_version() {
        ProtocolVersion::TLSv1_3 => TlsVersion::Tls13,
        ProtocolVersion::TLSv1_2 => TlsVersion::Tls12,
        _ => return Err(HandoverError::Unsupported("TLS version")),
    };
    let suite = CipherSuite::from_u16(u16::from(kernel.negotiated_cipher_suite().suite()))
        .ok_or(HandoverError::Unsupported("cipher suite"))?;
    Ok((version, suite))
}

/// One direction's keys from rustls' extracted secrets.
pub(crate) fn direction_keys(
    seq: u64,
    secrets: ConnectionTrafficSecrets,
) -> Result<DirectionKeys, HandoverError> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            let iv: [u8; 12] =
                iv.as_ref().try_into().map_err(|_| HandoverError::Unsupported("IV length"))?;
            Ok(DirectionKeys::new(key.as_ref(), iv, seq)?)
        }
        _ => Err(HandoverError::Unsupported("AEAD")),
    }
}

fn traffic_keys(
    kernel: &KernelConnection<ClientConnectionData>,
    tx: (u64, ConnectionTrafficSecrets),
    rx: (u64, ConnectionTrafficSecrets),
) -> Result<TrafficKeys, HandoverError> {
    let (version, suite) = negotiated(kernel)?;
    Ok(TrafficKeys::new(version, suite, direction_keys(tx.0, tx.1)?, direction_keys(rx.0, rx.1)?)?)
}
