//! The control channel's frames (seed 004, Figs. 13 and 14; `docs/proxy.md`, "Control
//! channel").
//!
//! The terminal and the home server speak over one TLS 1.3 connection (mutual authentication,
//! the client key in the access card, the home server's certificate pinned). Inside it they
//! exchange length-prefixed typed frames:
//!
//! ```text
//! frame = length (u32, big-endian, counts type and body) || type (u8) || body
//! ```
//!
//! Integers are big-endian; a `bytes16`/`bytes32` field is a u16/u32 length and that many
//! bytes. Several market sessions share one connection: every session frame names its
//! session, a non-zero number the terminal picks when it sends [`Frame::OpenMarket`]. A frame
//! is parsed once, here, into [`Frame`]; anything malformed is an error and nothing else.

use crate::proxy::TrafficKeys;

/// Largest body of one [`Frame::Data`] (the relayed TCP bytes are cut into pieces this size).
pub const MAX_DATA_LEN: usize = 64 * 1024;
/// Largest frame (type and body) the codec accepts: a data frame plus its header.
pub const MAX_FRAME_LEN: usize = MAX_DATA_LEN + 16;
/// Longest market host name (DNS names are at most 253 characters).
pub const MAX_HOST_LEN: usize = 253;
/// Longest PIN2.
pub const MAX_PIN_LEN: usize = 64;
/// Longest error message.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// Frame type bytes.
mod tag {
    pub const OPEN_MARKET: u8 = 0x01;
    pub const HANDED_OVER: u8 = 0x02;
    pub const DATA: u8 = 0x03;
    pub const POST_HANDSHAKE: u8 = 0x04;
    pub const KEYS_UPDATED: u8 = 0x05;
    pub const SIGN_REQUEST: u8 = 0x06;
    pub const SIGN_RESPONSE: u8 = 0x07;
    pub const PIN2: u8 = 0x08;
    pub const UNLOCKED: u8 = 0x09;
    pub const END: u8 = 0x0A;
    pub const ERROR: u8 = 0x0B;
    pub const OPENED: u8 = 0x0C;
    pub const WALLET: u8 = 0x0D;
    pub const WALLET_REPLY: u8 = 0x0E;
}

/// A control frame that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The frame or a field is shorter than its length says, or has bytes left over.
    #[error("control: wrong length ({0})")]
    Length(&'static str),
    /// A field has a value outside its range.
    #[error("control: bad value ({0})")]
    Value(&'static str),
    /// The frame type is not one this version knows.
    #[error("control: unknown frame type {0:02X}")]
    Type(u8),
    /// The frame is longer than [`MAX_FRAME_LEN`].
    #[error("control: frame of {0} bytes is too long")]
    TooLong(usize),
}

/// How the home server serves one market session (DESIGN.md section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The home server runs the handshake, then hands the traffic keys to the terminal and
    /// relays TCP bytes (claims 1, 2, 7).
    Handover,
    /// The home server keeps the market connection's keys and re-encrypts between the two
    /// channels (¶0048): [`Frame::Data`] carries plaintext.
    Relay,
    /// The terminal runs the handshake; only the CertificateVerify signature is made by the
    /// home card, through [`Frame::SignRequest`] (¶0089).
    Partial,
}

impl Mode {
    fn to_byte(self) -> u8 {
        match self {
            Mode::Handover => 1,
            Mode::Relay => 2,
            Mode::Partial => 3,
        }
    }

    fn from_byte(b: u8) -> Result<Self, ControlError> {
        match b {
            1 => Ok(Mode::Handover),
            2 => Ok(Mode::Relay),
            3 => Ok(Mode::Partial),
            _ => Err(ControlError::Value("mode")),
        }
    }

    /// The mode's name as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Handover => "handover",
            Mode::Relay => "relay",
            Mode::Partial => "partial",
        }
    }
}

/// Why a request failed, as [`Frame::Error`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame was malformed or not expected in this state; the connection ends.
    Protocol,
    /// PIN2 was wrong; the home card allows this many more tries.
    Pin2Wrong(u8),
    /// The home card is blocked (PIN2 wrong three times): it needs its PUK.
    Blocked,
    /// The home card is not unlocked (no PIN2 yet, "end" received, or idle for too long).
    Locked,
    /// The market could not be reached.
    MarketUnreachable,
    /// The handshake with the market failed (certificate, alert, closed connection).
    MarketHandshake,
    /// The market closed the connection or the relay failed after the handshake.
    MarketClosed,
    /// The session number is not open (or already in use, for an open request).
    UnknownSession,
    /// The home server does not offer this mode.
    Unsupported,
    /// The home card or the home server failed.
    Internal,
}

impl ErrorCode {
    fn encode(self) -> [u8; 2] {
        match self {
            ErrorCode::Protocol => [1, 0],
            ErrorCode::Pin2Wrong(n) => [2, n],
            ErrorCode::Blocked => [3, 0],
            ErrorCode::Locked => [4, 0],
            ErrorCode::MarketUnreachable => [5, 0],
            ErrorCode::MarketHandshake => [6, 0],
            ErrorCode::MarketClosed => [7, 0],
            ErrorCode::UnknownSession => [8, 0],
            ErrorCode::Unsupported => [9, 0],
            ErrorCode::Internal => [10, 0],
        }
    }

    fn decode(b: [u8; 2]) -> Result<Self, ControlError> {
        let plain =
            |code| if b[1] == 0 { Ok(code) } else { Err(ControlError::Value("error detail")) };
        match b[0] {
            1 => plain(ErrorCode::Protocol),
            2 => Ok(ErrorCode::Pin2Wrong(b[1])),
            3 => plain(ErrorCode::Blocked),
            4 => plain(ErrorCode::Locked),
            5 => plain(ErrorCode::MarketUnreachable),
            6 => plain(ErrorCode::MarketHandshake),
            7 => plain(ErrorCode::MarketClosed),
            8 => plain(ErrorCode::UnknownSession),
            9 => plain(ErrorCode::Unsupported),
            10 => plain(ErrorCode::Internal),
            _ => Err(ControlError::Value("error code")),
        }
    }
}

/// One control frame. Session numbers are non-zero; session 0 in [`Frame::End`] and
/// [`Frame::Error`] means the whole connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Terminal → home: open a market session to `host:port`.
    OpenMarket {
        /// The terminal's number for the session.
        session: u32,
        /// The market's host name (ASCII, as in the URL; also its TLS server name).
        host: String,
        /// The market's TCP port.
        port: u16,
        /// How the home server serves it.
        mode: Mode,
        /// Whether the home server may resume a cached TLS session with this market instead
        /// of a full handshake with the home card (Fig. 16).
        cache_allowed: bool,
    },
    /// Home → terminal: the market session is open in relay or partial mode (handover mode
    /// answers with [`Frame::HandedOver`]); for partial mode `certificate` is the home card's
    /// client certificate (DER), which the terminal sends in its handshake.
    Opened {
        /// The session.
        session: u32,
        /// The home card's client certificate (partial mode), or empty.
        certificate: Vec<u8>,
    },
    /// Home → terminal: the handshake is done; these are the connection's traffic keys and
    /// sequence numbers (encoded as [`TrafficKeys::to_bytes`], behind a u16 length).
    HandedOver {
        /// The session.
        session: u32,
        /// The traffic keys.
        keys: TrafficKeys,
    },
    /// Either way: TCP bytes of a market session (TLS records in handover and partial mode,
    /// application plaintext in relay mode).
    Data {
        /// The session.
        session: u32,
        /// At most [`MAX_DATA_LEN`] bytes.
        bytes: Vec<u8>,
    },
    /// Terminal → home: a post-handshake handshake message the terminal received (session
    /// ticket, key update), decrypted, for the home server.
    PostHandshake {
        /// The session.
        session: u32,
        /// The handshake message(s).
        bytes: Vec<u8>,
    },
    /// Home → terminal: the traffic keys after a post-handshake message (key update).
    KeysUpdated {
        /// The session.
        session: u32,
        /// The updated traffic keys.
        keys: TrafficKeys,
        /// The market asked for a key update in return: the terminal sends its own KeyUpdate
        /// under its old client-write keys, then switches to the new ones.
        respond: bool,
    },
    /// Terminal → home (partial mode): sign a TLS 1.3 client CertificateVerify for this
    /// transcript hash with the home card.
    SignRequest {
        /// The session.
        session: u32,
        /// SHA-256 of the handshake transcript.
        transcript_hash: [u8; 32],
    },
    /// Home → terminal (partial mode): the home card's signature (ECDSA P-256, DER).
    SignResponse {
        /// The session.
        session: u32,
        /// The signature.
        signature: Vec<u8>,
    },
    /// Terminal → home: PIN2 for the home card (claim 3). Answered by [`Frame::Unlocked`] or
    /// an error.
    Pin2 {
        /// The PIN, as typed.
        pin: Vec<u8>,
    },
    /// Home → terminal: the home card accepted PIN2 and is in the encryption-enabled state.
    Unlocked,
    /// Terminal → home: a wallet request for the home card (e-money; the body is
    /// `tessera_home::emoney::wallet::Request`, at most [`MAX_DATA_LEN`] bytes). Answered by
    /// [`Frame::WalletReply`], or an error when the card is locked.
    Wallet {
        /// The encoded request.
        body: Vec<u8>,
    },
    /// Home → terminal: the answer to [`Frame::Wallet`].
    WalletReply {
        /// The encoded reply.
        body: Vec<u8>,
    },
    /// Either way: end a market session, or (session 0) the user's "end": the home card goes
    /// back to the remote-access wait state.
    End {
        /// The session, or 0.
        session: u32,
    },
    /// Either way: a request failed.
    Error {
        /// The session it concerns, or 0.
        session: u32,
        /// Why.
        code: ErrorCode,
        /// Text for people (at most [`MAX_MESSAGE_LEN`] bytes).
        message: String,
    },
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ControlError> {
        if self.0.len() < n {
            return Err(ControlError::Length(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, ControlError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, ControlError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, ControlError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn session(&mut self) -> Result<u32, ControlError> {
        match self.u32("session")? {
            0 => Err(ControlError::Value("session 0")),
            s => Ok(s),
        }
    }
    fn bytes16(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, ControlError> {
        let n = usize::from(self.u16(what)?);
        if n > max {
            return Err(ControlError::Value(what));
        }
        Ok(self.take(n, what)?.to_vec())
    }
    fn bytes32(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, ControlError> {
        let n = usize::try_from(self.u32(what)?).map_err(|_| ControlError::Value(what))?;
        if n > max {
            return Err(ControlError::Value(what));
        }
        Ok(self.take(n, what)?.to_vec())
    }
    fn keys(&mut self) -> Result<TrafficKeys, ControlError> {
        let b = self.bytes16("keys", 256)?;
        TrafficKeys::parse(&b).map_err(|e| ControlError::Value(e.0))
    }
    fn end(&self) -> Result<(), ControlError> {
        if self.0.is_empty() { Ok(()) } else { Err(ControlError::Length("trailing bytes")) }
    }
}

fn put16(out: &mut Vec<u8>, b: &[u8]) {
    // Callers bound every field well below 64 KiB (checked in `encode`).
    out.extend_from_slice(&u16::try_from(b.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

fn put32(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_HOST_LEN
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
}

impl Frame {
    /// The session a frame concerns (0 for connection-level frames).
    pub fn session(&self) -> u32 {
        match self {
            Frame::OpenMarket { session, .. }
            | Frame::Opened { session, .. }
            | Frame::HandedOver { session, .. }
            | Frame::Data { session, .. }
            | Frame::PostHandshake { session, .. }
            | Frame::KeysUpdated { session, .. }
            | Frame::SignRequest { session, .. }
            | Frame::SignResponse { session, .. }
            | Frame::End { session }
            | Frame::Error { session, .. } => *session,
            Frame::Pin2 { .. }
            | Frame::Unlocked
            | Frame::Wallet { .. }
            | Frame::WalletReply { .. } => 0,
        }
    }

    /// The frame's type and body (without the length prefix), checking every field's bounds.
    fn body(&self) -> Result<Vec<u8>, ControlError> {
        let mut out = Vec::new();
        let check_session =
            |s: u32| if s == 0 { Err(ControlError::Value("session 0")) } else { Ok(()) };
        match self {
            Frame::OpenMarket { session, host, port, mode, cache_allowed } => {
                check_session(*session)?;
                if !valid_host(host) {
                    return Err(ControlError::Value("host"));
                }
                out.push(tag::OPEN_MARKET);
                out.extend_from_slice(&session.to_be_bytes());
                put16(&mut out, host.as_bytes());
                out.extend_from_slice(&port.to_be_bytes());
                out.push(mode.to_byte());
                out.push(u8::from(*cache_allowed));
            }
            Frame::Opened { session, certificate } => {
                check_session(*session)?;
                if certificate.len() > MAX_DATA_LEN {
                    return Err(ControlError::Value("certificate"));
                }
                out.push(tag::OPENED);
                out.extend_from_slice(&session.to_be_bytes());
                put32(&mut out, certificate);
            }
            Frame::HandedOver { session, keys } => {
                check_session(*session)?;
                out.push(tag::HANDED_OVER);
                out.extend_from_slice(&session.to_be_bytes());
                put16(&mut out, &keys.to_bytes());
            }
            Frame::KeysUpdated { session, keys, respond } => {
                check_session(*session)?;
                out.push(tag::KEYS_UPDATED);
                out.extend_from_slice(&session.to_be_bytes());
                put16(&mut out, &keys.to_bytes());
                out.push(u8::from(*respond));
            }
            Frame::Data { session, bytes } | Frame::PostHandshake { session, bytes } => {
                check_session(*session)?;
                if bytes.len() > MAX_DATA_LEN {
                    return Err(ControlError::Value("data"));
                }
                out.push(if matches!(self, Frame::Data { .. }) {
                    tag::DATA
                } else {
                    tag::POST_HANDSHAKE
                });
                out.extend_from_slice(&session.to_be_bytes());
                put32(&mut out, bytes);
            }
            Frame::SignRequest { session, transcript_hash } => {
                check_session(*session)?;
                out.push(tag::SIGN_REQUEST);
                out.extend_from_slice(&session.to_be_bytes());
                out.extend_from_slice(transcript_hash);
            }
            Frame::SignResponse { session, signature } => {
                check_session(*session)?;
                if signature.len() > 128 {
                    return Err(ControlError::Value("signature"));
                }
                out.push(tag::SIGN_RESPONSE);
                out.extend_from_slice(&session.to_be_bytes());
                put16(&mut out, signature);
            }
            Frame::Pin2 { pin } => {
                if pin.is_empty() || pin.len() > MAX_PIN_LEN {
                    return Err(ControlError::Value("PIN2 length"));
                }
                out.push(tag::PIN2);
                put16(&mut out, pin);
            }
            Frame::Unlocked => out.push(tag::UNLOCKED),
            Frame::Wallet { body } | Frame::WalletReply { body } => {
                if body.len() > MAX_DATA_LEN {
                    return Err(ControlError::Value("wallet body"));
                }
                out.push(if matches!(self, Frame::Wallet { .. }) {
                    tag::WALLET
                } else {
                    tag::WALLET_REPLY
                });
                put32(&mut out, body);
            }
            Frame::End { session } => {
                out.push(tag::END);
                out.extend_from_slice(&session.to_be_bytes());
            }
            Frame::Error { session, code, message } => {
                if message.len() > MAX_MESSAGE_LEN {
                    return Err(ControlError::Value("message"));
                }
                out.push(tag::ERROR);
                out.extend_from_slice(&session.to_be_bytes());
                out.extend_from_slice(&code.encode());
                put16(&mut out, message.as_bytes());
            }
        }
        Ok(out)
    }

    /// The frame on the wire: length prefix, type, body. Fails only on a field out of bounds
    /// (session 0 where a session is needed, an over-long host, data or message).
    pub fn encode(&self) -> Result<Vec<u8>, ControlError> {
        let body = self.body()?;
        let mut out = Vec::with_capacity(body.len() + 4);
        out.extend_from_slice(&put_len(body.len())?);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Parses a frame's type and body (what follows its length prefix).
    pub fn parse(frame: &[u8]) -> Result<Frame, ControlError> {
        if frame.len() > MAX_FRAME_LEN {
            return Err(ControlError::TooLong(frame.len()));
        }
        let mut r = Reader(frame);
        let t = r.u8("type")?;
        let f = match t {
            tag::OPEN_MARKET => {
                let session = r.session()?;
                let host = r.bytes16("host", MAX_HOST_LEN)?;
                let host = String::from_utf8(host).map_err(|_| ControlError::Value("host"))?;
                if !valid_host(&host) {
                    return Err(ControlError::Value("host"));
                }
                let port = r.u16("port")?;
                let mode = Mode::from_byte(r.u8("mode")?)?;
                let cache_allowed = match r.u8("cache")? {
                    0 => false,
                    1 => true,
                    _ => return Err(ControlError::Value("cache flag")),
                };
                Frame::OpenMarket { session, host, port, mode, cache_allowed }
            }
            tag::OPENED => {
                let session = r.session()?;
                Frame::Opened { session, certificate: r.bytes32("certificate", MAX_DATA_LEN)? }
            }
            tag::HANDED_OVER => {
                let session = r.session()?;
                Frame::HandedOver { session, keys: r.keys()? }
            }
            tag::KEYS_UPDATED => {
                let session = r.session()?;
                let keys = r.keys()?;
                let respond = match r.u8("respond")? {
                    0 => false,
                    1 => true,
                    _ => return Err(ControlError::Value("respond flag")),
                };
                Frame::KeysUpdated { session, keys, respond }
            }
            tag::DATA => {
                let session = r.session()?;
                Frame::Data { session, bytes: r.bytes32("data", MAX_DATA_LEN)? }
            }
            tag::POST_HANDSHAKE => {
                let session = r.session()?;
                Frame::PostHandshake { session, bytes: r.bytes32("data", MAX_DATA_LEN)? }
            }
            tag::SIGN_REQUEST => {
                let session = r.session()?;
                let mut transcript_hash = [0u8; 32];
                transcript_hash.copy_from_slice(r.take(32, "transcript hash")?);
                Frame::SignRequest { session, transcript_hash }
            }
            tag::SIGN_RESPONSE => {
                let session = r.session()?;
                Frame::SignResponse { session, signature: r.bytes16("signature", 128)? }
            }
            tag::PIN2 => {
                let pin = r.bytes16("PIN2", MAX_PIN_LEN)?;
                if pin.is_empty() {
                    return Err(ControlError::Value("PIN2 length"));
                }
                Frame::Pin2 { pin }
            }
            tag::UNLOCKED => Frame::Unlocked,
            tag::WALLET => Frame::Wallet { body: r.bytes32("wallet body", MAX_DATA_LEN)? },
            tag::WALLET_REPLY => {
                Frame::WalletReply { body: r.bytes32("wallet body", MAX_DATA_LEN)? }
            }
            tag::END => Frame::End { session: r.u32("session")? },
            tag::ERROR => {
                let session = r.u32("session")?;
                let b = r.take(2, "error code")?;
                let code = ErrorCode::decode([b[0], b[1]])?;
                let message = r.bytes16("message", MAX_MESSAGE_LEN)?;
                let message =
                    String::from_utf8(message).map_err(|_| ControlError::Value("message"))?;
                Frame::Error { session, code, message }
            }
            other => return Err(ControlError::Type(other)),
        };
        r.end()?;
        Ok(f)
    }
}

fn put_len(n: usize) -> Result<[u8; 4], ControlError> {
    if n > MAX_FRAME_LEN {
        return Err(ControlError::TooLong(n));
    }
    u32::try_from(n).map(u32::to_be_bytes).map_err(|_| ControlError::TooLong(n))
}

/// Reads a frame's length prefix: the number of bytes (type and body) that follow.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, ControlError> {
    let n = usize::try_from(u32::from_be_bytes(prefix)).map_err(|_| ControlError::TooLong(0))?;
    match n {
        0 => Err(ControlError::Length("empty frame")),
        n if n > MAX_FRAME_LEN => Err(ControlError::TooLong(n)),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(f: &Frame) {
        let wire = f.encode().unwrap();
        let n = frame_len([wire[0], wire[1], wire[2], wire[3]]).unwrap();
        assert_eq!(n, wire.len() - 4);
        assert_eq!(&Frame::parse(&wire[4..]).unwrap(), f);
    }

    fn keys(seq: u64) -> TrafficKeys {
        use crate::proxy::{CipherSuite, DirectionKeys, TlsVersion};
        TrafficKeys::new(
            TlsVersion::Tls13,
            CipherSuite::ALL
                .into_iter()
                .find(|s| s.version() == TlsVersion::Tls13 && s.aead().key_len() == 16)
                .unwrap(),
            DirectionKeys::new(&[1; 16], [2; 12], seq).unwrap(),
            DirectionKeys::new(&[3; 16], [4; 12], seq + 1).unwrap(),
        )
        .unwrap()
    }

    fn samples() -> Vec<Frame> {
        vec![
            Frame::OpenMarket {
                session: 7,
                host: "market.example".into(),
                port: 443,
                mode: Mode::Handover,
                cache_allowed: true,
            },
            Frame::Opened { session: 1, certificate: vec![0x30, 0x82] },
            Frame::HandedOver { session: 2, keys: keys(0) },
            Frame::Data { session: 3, bytes: vec![0x17; MAX_DATA_LEN] },
            Frame::PostHandshake { session: 3, bytes: vec![4, 0, 0, 1, 0] },
            Frame::KeysUpdated { session: 3, keys: keys(5), respond: true },
            Frame::SignRequest { session: 4, transcript_hash: [0xAB; 32] },
            Frame::SignResponse { session: 4, signature: vec![0x30; 71] },
            Frame::Pin2 { pin: b"1234".to_vec() },
            Frame::Wallet { body: vec![1] },
            Frame::WalletReply { body: vec![0; MAX_DATA_LEN] },
            Frame::Unlocked,
            Frame::End { session: 0 },
            Frame::Error {
                session: 0,
                code: ErrorCode::Pin2Wrong(2),
                message: "wrong PIN2".into(),
            },
            Frame::Error { session: 5, code: ErrorCode::MarketClosed, message: String::new() },
        ]
    }

    #[test]
    fn every_frame_roundtrips() {
        for f in samples() {
            roundtrip(&f);
        }
    }

    #[test]
    fn known_encoding_of_open_market() {
        let f = Frame::OpenMarket {
            session: 1,
            host: "a.b".into(),
            port: 8443,
            mode: Mode::Relay,
            cache_allowed: false,
        };
        assert_eq!(
            f.encode().unwrap(),
            [0, 0, 0, 14, 0x01, 0, 0, 0, 1, 0, 3, b'a', b'.', b'b', 0x20, 0xFB, 2, 0]
        );
    }

    #[test]
    fn refuses_bad_fields() {
        let open = |host: &str, session| Frame::OpenMarket {
            session,
            host: host.into(),
            port: 1,
            mode: Mode::Partial,
            cache_allowed: false,
        };
        assert_eq!(open("a b", 1).encode(), Err(ControlError::Value("host")));
        assert_eq!(open("", 1).encode(), Err(ControlError::Value("host")));
        assert_eq!(open("a", 0).encode(), Err(ControlError::Value("session 0")));
        let big = Frame::Data { session: 1, bytes: vec![0; MAX_DATA_LEN + 1] };
        assert_eq!(big.encode(), Err(ControlError::Value("data")));
        assert_eq!(Frame::Pin2 { pin: vec![] }.encode(), Err(ControlError::Value("PIN2 length")));
        // Parsing: unknown type, trailing bytes, truncated, session 0, bad mode.
        assert_eq!(Frame::parse(&[0x7F]), Err(ControlError::Type(0x7F)));
        assert_eq!(Frame::parse(&[0x09, 0]), Err(ControlError::Length("trailing bytes")));
        assert_eq!(Frame::parse(&[0x03, 0, 0, 0]), Err(ControlError::Length("session")));
        assert_eq!(Frame::parse(&[0x03, 0, 0, 0, 0]), Err(ControlError::Value("session 0")));
        assert_eq!(
            Frame::parse(&[0x01, 0, 0, 0, 1, 0, 1, b'a', 0, 1, 4, 0]),
            Err(ControlError::Value("mode"))
        );
        assert_eq!(frame_len([0, 0, 0, 0]), Err(ControlError::Length("empty frame")));
        assert!(matches!(frame_len([0xFF, 0, 0, 0]), Err(ControlError::TooLong(_))));
        assert!(matches!(Frame::parse(&[0u8; MAX_FRAME_LEN + 1]), Err(ControlError::TooLong(_))));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_reencodes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(f) = Frame::parse(&bytes) {
                let wire = f.encode().unwrap();
                prop_assert_eq!(&wire[4..], &bytes[..]);
            }
        }

        #[test]
        fn data_roundtrips(session in 1u32.., bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            roundtrip(&Frame::Data { session, bytes });
        }
    }
}
