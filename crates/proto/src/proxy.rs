//! The proxy's key handover (seed 004, claims 1, 2, 7, 10): the traffic keys of a TLS connection
//! the home server established with a market server, handed to the terminal over the control
//! channel so that the terminal protects and reads the connection's records itself.
//!
//! [`TrafficKeys`] carries the negotiated version, the cipher suite and, per direction, the AEAD
//! key, the IV and the next record sequence number. Only the suites the terminal implements
//! exist ([`CipherSuite`]); anything else is refused when parsed.
//!
//! Wire format (all integers big-endian, fixed length for a given suite):
//!
//! | field | length | meaning |
//! |---|---|---|
//! | format | 1 | [`TrafficKeys::FORMAT`] (`01`) |
//! | version | 2 | `0303` TLS 1.2, `0304` TLS 1.3 |
//! | suite | 2 | IANA cipher suite value ([`CipherSuite`]) |
//! | client write | 8 + K + 12 | sequence number, key (K = 16 or 32), IV |
//! | server write | 8 + K + 12 | sequence number, key, IV |
//!
//! "Client write" is what the terminal sends to the market, "server write" what it receives.
//! For TLS 1.3 the IV is the 12-byte `server/client_write_iv` of RFC 8446 section 7.3. For the
//! TLS 1.2 GCM suites it is the 4-byte salt (`client/server_write_IV`, RFC 5288 section 3)
//! followed by the 8-byte starting point of the explicit nonce, as rustls extracts it: the
//! explicit nonce of record `seq` is that starting point XOR `seq`.
//!
//! Key and IV are zeroised when dropped, and `Debug` prints neither.

use core::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// A handed-over key set did not parse or is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed traffic keys: {0}")]
pub struct Malformed(pub &'static str);

/// The TLS version of a handed-over connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    /// TLS 1.2 (RFC 5246), wire value `0303`.
    Tls12,
    /// TLS 1.3 (RFC 8446), wire value `0304`.
    Tls13,
}

impl TlsVersion {
    /// The wire value (`ProtocolVersion`).
    pub const fn to_u16(self) -> u16 {
        match self {
            Self::Tls12 => 0x0303,
            Self::Tls13 => 0x0304,
        }
    }

    /// The version with wire value `v`, if it is one tessera hands over.
    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            0x0303 => Some(Self::Tls12),
            0x0304 => Some(Self::Tls13),
            _ => None,
        }
    }
}

/// The AEAD of a handed-over connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aead {
    /// AES-128-GCM (16-byte key).
    Aes128Gcm,
    /// AES-256-GCM (32-byte key).
    Aes256Gcm,
}

impl Aead {
    /// The key length in bytes.
    pub const fn key_len(self) -> usize {
        match self {
            Self::Aes128Gcm => 16,
            Self::Aes256Gcm => 32,
        }
    }
}

/// The cipher suites the terminal implements, hence the only ones the home server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    /// `TLS_AES_128_GCM_SHA256` (`1301`), TLS 1.3.
    Tls13Aes128GcmSha256,
    /// `TLS_AES_256_GCM_SHA384` (`1302`), TLS 1.3.
    Tls13Aes256GcmSha384,
    /// `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256` (`C02B`), TLS 1.2.
    Tls12EcdheEcdsaAes128GcmSha256,
    /// `TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384` (`C02C`), TLS 1.2.
    Tls12EcdheEcdsaAes256GcmSha384,
}

impl CipherSuite {
    /// Every suite, TLS 1.3 first.
    pub const ALL: [Self; 4] = [
        Self::Tls13Aes128GcmSha256,
        Self::Tls13Aes256GcmSha384,
        Self::Tls12EcdheEcdsaAes128GcmSha256,
        Self::Tls12EcdheEcdsaAes256GcmSha384,
    ];

    /// The IANA value.
    pub const fn to_u16(self) -> u16 {
        match self {
            Self::Tls13Aes128GcmSha256 => 0x1301,
            Self::Tls13Aes256GcmSha384 => 0x1302,
            Self::Tls12EcdheEcdsaAes128GcmSha256 => 0xC02B,
            Self::Tls12EcdheEcdsaAes256GcmSha384 => 0xC02C,
        }
    }

    /// The suite with IANA value `v`, if the terminal implements it.
    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            0x1301 => Some(Self::Tls13Aes128GcmSha256),
            0x1302 => Some(Self::Tls13Aes256GcmSha384),
            0xC02B => Some(Self::Tls12EcdheEcdsaAes128GcmSha256),
            0xC02C => Some(Self::Tls12EcdheEcdsaAes256GcmSha384),
            _ => None,
        }
    }

    /// The TLS version the suite belongs to.
    pub const fn version(self) -> TlsVersion {
        match self {
            Self::Tls13Aes128GcmSha256 | Self::Tls13Aes256GcmSha384 => TlsVersion::Tls13,
            Self::Tls12EcdheEcdsaAes128GcmSha256 | Self::Tls12EcdheEcdsaAes256GcmSha384 => {
                TlsVersion::Tls12
            }
        }
    }

    /// The suite's AEAD.
    pub const fn aead(self) -> Aead {
        match self {
            Self::Tls13Aes128GcmSha256 | Self::Tls12EcdheEcdsaAes128GcmSha256 => Aead::Aes128Gcm,
            Self::Tls13Aes256GcmSha384 | Self::Tls12EcdheEcdsaAes256GcmSha384 => Aead::Aes256Gcm,
        }
    }
}

/// Length of the IV of every suite.
pub const IV_LEN: usize = 12;

/// One direction's record protection state: AEAD key, IV, next sequence number.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct DirectionKeys {
    key: Vec<u8>,
    iv: [u8; IV_LEN],
    #[zeroize(skip)]
    seq: u64,
}

impl DirectionKeys {
    /// Keys for one direction. `key` must be 16 or 32 bytes (checked against the suite by
    /// [`TrafficKeys::new`]).
    pub fn new(key: &[u8], iv: [u8; IV_LEN], seq: u64) -> Result<Self, Malformed> {
        if key.len() != 16 && key.len() != 32 {
            return Err(Malformed("key length"));
        }
        Ok(Self { key: key.to_vec(), iv, seq })
    }

    /// The AEAD key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The IV (see the module docs for its TLS 1.2 layout).
    pub fn iv(&self) -> &[u8; IV_LEN] {
        &self.iv
    }

    /// The sequence number of the next record in this direction.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn encoded_len(&self) -> usize {
        8 + self.key.len() + IV_LEN
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.iv);
    }

    fn parse(data: &[u8], key_len: usize) -> Result<Self, Malformed> {
        let (seq, rest) = data.split_first_chunk::<8>().ok_or(Malformed("truncated"))?;
        if rest.len() != key_len + IV_LEN {
            return Err(Malformed("direction length"));
        }
        let (key, iv) = rest.split_at(key_len);
        let iv: [u8; IV_LEN] = iv.try_into().map_err(|_| Malformed("iv length"))?;
        Self::new(key, iv, u64::from_be_bytes(*seq))
    }
}

impl fmt::Debug for DirectionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectionKeys")
            .field("key", &format_args!("<{} bytes redacted>", self.key.len()))
            .field("iv", &"<redacted>")
            .field("seq", &self.seq)
            .finish()
    }
}

/// The traffic keys of a TLS connection, handed from the home server to the terminal.
#[derive(Clone, PartialEq, Eq)]
pub struct TrafficKeys {
    version: TlsVersion,
    suite: CipherSuite,
    client_write: DirectionKeys,
    server_write: DirectionKeys,
}

impl TrafficKeys {
    /// The format byte this version of the encoding starts with.
    pub const FORMAT: u8 = 0x01;

    /// A key set; refused if the suite does not belong to `version` or a key's length is not
    /// the suite's.
    pub fn new(
        version: TlsVersion,
        suite: CipherSuite,
        client_write: DirectionKeys,
        server_write: DirectionKeys,
    ) -> Result<Self, Malformed> {
        if suite.version() != version {
            return Err(Malformed("cipher suite does not belong to the version"));
        }
        let key_len = suite.aead().key_len();
        if client_write.key.len() != key_len || server_write.key.len() != key_len {
            return Err(Malformed("key length does not match the cipher suite"));
        }
        Ok(Self { version, suite, client_write, server_write })
    }

    /// The negotiated TLS version.
    pub fn version(&self) -> TlsVersion {
        self.version
    }

    /// The negotiated cipher suite.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// What the terminal (the TLS client) sends with.
    pub fn client_write(&self) -> &DirectionKeys {
        &self.client_write
    }

    /// What the terminal receives with.
    pub fn server_write(&self) -> &DirectionKeys {
        &self.server_write
    }

    /// Replace one direction after a TLS 1.3 key update; the key length must stay the suite's.
    pub fn with_updated(
        mut self,
        direction: Direction,
        keys: DirectionKeys,
    ) -> Result<Self, Malformed> {
        if self.version != TlsVersion::Tls13 {
            return Err(Malformed("key update outside TLS 1.3"));
        }
        if keys.key.len() != self.suite.aead().key_len() {
            return Err(Malformed("key length does not match the cipher suite"));
        }
        match direction {
            Direction::ClientWrite => self.client_write = keys,
            Direction::ServerWrite => self.server_write = keys,
        }
        Ok(self)
    }

    /// Length of the encoding.
    pub fn encoded_len(&self) -> usize {
        5 + self.client_write.encoded_len() + self.server_write.encoded_len()
    }

    /// The wire encoding (module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(Self::FORMAT);
        out.extend_from_slice(&self.version.to_u16().to_be_bytes());
        out.extend_from_slice(&self.suite.to_u16().to_be_bytes());
        self.client_write.encode_into(&mut out);
        self.server_write.encode_into(&mut out);
        out
    }

    /// Parse the wire encoding; every length is implied by the suite, so trailing or missing
    /// bytes are refused.
    pub fn parse(data: &[u8]) -> Result<Self, Malformed> {
        let (head, rest) = data.split_first_chunk::<5>().ok_or(Malformed("truncated"))?;
        if head[0] != Self::FORMAT {
            return Err(Malformed("unknown format"));
        }
        let version = TlsVersion::from_u16(u16::from_be_bytes([head[1], head[2]]))
            .ok_or(Malformed("unsupported TLS version"))?;
        let suite = CipherSuite::from_u16(u16::from_be_bytes([head[3], head[4]]))
            .ok_or(Malformed("unsupported cipher suite"))?;
        let one = 8 + suite.aead().key_len() + IV_LEN;
        if rest.len() != 2 * one {
            return Err(Malformed("length"));
        }
        let (c, s) = rest.split_at(one);
        let key_len = suite.aead().key_len();
        Self::new(
            version,
            suite,
            DirectionKeys::parse(c, key_len)?,
            DirectionKeys::parse(s, key_len)?,
        )
    }
}

impl fmt::Debug for TrafficKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrafficKeys")
            .field("version", &self.version)
            .field("suite", &self.suite)
            .field("client_write", &self.client_write)
            .field("server_write", &self.server_write)
            .finish()
    }
}

/// One direction of a connection, seen from the TLS client (the terminal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server: what the terminal sends.
    ClientWrite,
    /// Server to client: what the terminal receives.
    ServerWrite,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests may unwrap

    use proptest::prelude::*;

    use super::*;

    fn suite() -> impl Strategy<Value = CipherSuite> {
        prop::sample::select(CipherSuite::ALL.to_vec())
    }

    fn keys() -> impl Strategy<Value = TrafficKeys> {
        (
            suite(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<[u8; 12]>(),
            any::<[u8; 12]>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(suite, k1, k2, iv1, iv2, s1, s2)| {
                let n = suite.aead().key_len();
                TrafficKeys::new(
                    suite.version(),
                    suite,
                    DirectionKeys::new(&k1[..n], iv1, s1).unwrap(),
                    DirectionKeys::new(&k2[..n], iv2, s2).unwrap(),
                )
                .unwrap()
            })
    }

    proptest! {
        #[test]
        fn round_trip(k in keys()) {
            let bytes = k.to_bytes();
            prop_assert_eq!(bytes.len(), k.encoded_len());
            let back = TrafficKeys::parse(&bytes).unwrap();
            prop_assert_eq!(&back, &k);
            // Any truncation or extension is refused.
            for cut in 0..bytes.len() {
                prop_assert!(TrafficKeys::parse(&bytes[..cut]).is_err());
            }
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(TrafficKeys::parse(&longer).is_err());
        }

        #[test]
        fn parse_accepts_only_what_it_reencodes(data in prop::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(k) = TrafficKeys::parse(&data) {
                prop_assert_eq!(k.to_bytes(), data);
            }
        }

        #[test]
        fn header_mutations_are_refused_or_consistent(k in keys(), v in any::<u16>(), s in any::<u16>()) {
            let mut bytes = k.to_bytes();
            bytes[1..3].copy_from_slice(&v.to_be_bytes());
            bytes[3..5].copy_from_slice(&s.to_be_bytes());
            match TrafficKeys::parse(&bytes) {
                Ok(p) => {
                    prop_assert_eq!(p.version().to_u16(), v);
                    prop_assert_eq!(p.suite().to_u16(), s);
                    prop_assert_eq!(p.suite().version(), p.version());
                }
                Err(_) => prop_assert!(
                    TlsVersion::from_u16(v).is_none()
                        || CipherSuite::from_u16(s).is_none_or(|s| s.version().to_u16() != v
                            || s.aead() != k.suite().aead())
                ),
            }
        }
    }

    #[test]
    fn version_and_suite_must_agree() {
        let d = || DirectionKeys::new(&[1; 16], [2; 12], 0).unwrap();
        assert!(
            TrafficKeys::new(TlsVersion::Tls12, CipherSuite::Tls13Aes128GcmSha256, d(), d())
                .is_err()
        );
        let long = DirectionKeys::new(&[1; 32], [2; 12], 0).unwrap();
        assert!(
            TrafficKeys::new(TlsVersion::Tls13, CipherSuite::Tls13Aes128GcmSha256, d(), long)
                .is_err()
        );
        assert!(DirectionKeys::new(&[0; 24], [0; 12], 0).is_err());
        assert!(TrafficKeys::parse(&[]).is_err());
        // Chacha20 (1303) is not one the terminal implements.
        let mut b =
            TrafficKeys::new(TlsVersion::Tls13, CipherSuite::Tls13Aes128GcmSha256, d(), d())
                .unwrap()
                .to_bytes();
        b[3..5].copy_from_slice(&[0x13, 0x03]);
        assert_eq!(TrafficKeys::parse(&b), Err(Malformed("unsupported cipher suite")));
    }

    #[test]
    fn key_update_replaces_one_direction_tls13_only() {
        let d = |b| DirectionKeys::new(&[b; 16], [b; 12], 7).unwrap();
        let k = TrafficKeys::new(TlsVersion::Tls13, CipherSuite::Tls13Aes128GcmSha256, d(1), d(2))
            .unwrap();
        let u = k.clone().with_updated(Direction::ServerWrite, d(3)).unwrap();
        assert_eq!(u.client_write(), k.client_write());
        assert_eq!(u.server_write().key(), &[3; 16]);
        let t12 = TrafficKeys::new(
            TlsVersion::Tls12,
            CipherSuite::Tls12EcdheEcdsaAes128GcmSha256,
            d(1),
            d(2),
        )
        .unwrap();
        assert!(t12.with_updated(Direction::ClientWrite, d(3)).is_err());
    }

    #[test]
    fn debug_redacts_secrets() {
        let k = TrafficKeys::new(
            TlsVersion::Tls13,
            CipherSuite::Tls13Aes128GcmSha256,
            DirectionKeys::new(&[0xAB; 16], [0xCD; 12], 5).unwrap(),
            DirectionKeys::new(&[0xAB; 16], [0xCD; 12], 6).unwrap(),
        )
        .unwrap();
        let s = format!("{k:?}");
        assert!(!s.contains("171") && !s.contains("205") && !s.to_lowercase().contains("ab, "));
        assert!(s.contains("redacted") && s.contains("seq: 5"));
    }
}
