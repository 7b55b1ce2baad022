//! TLS record protection with handed-over traffic keys (RFC 8446 section 5; RFC 5288).
//!
//! The terminal of the authentication proxy never shakes hands with the market server: the
//! home server does, and hands it the connection's traffic keys and sequence numbers. With them
//! the terminal protects the records it sends ([`RecordSealer`]) and reads the records it
//! receives ([`RecordOpener`]), one direction each, for the AES-GCM suites of TLS 1.3 and TLS
//! 1.2.
//!
//! - TLS 1.3 (RFC 8446 section 5.2, 5.3): the record is `17 0303 length` followed by the AEAD
//!   output of `content || type || zeros`; nonce = IV XOR the 64-bit sequence number
//!   (left-padded to 12 bytes); associated data = the 5-byte record header.
//! - TLS 1.2 AES-GCM (RFC 5288 section 3, RFC 5246 section 6.2.3.3): the record is
//!   `type 0303 length` followed by an 8-byte explicit nonce and the AEAD output of the
//!   content; nonce = 4-byte salt || explicit nonce; associated data =
//!   `seq(8) || type || 0303 || plaintext length(2)`. The sealer's explicit nonce is the
//!   handed-over 8-byte starting point XOR the sequence number (what rustls sends, so nonces
//!   never repeat across the switch-over).
//!
//! A record that does not authenticate, is malformed or too long is refused and changes no
//! state; a sequence number is never reused or wrapped ([`CryptoError::ChannelState`] once it
//! would be).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce};
use zeroize::Zeroize;

use crate::{CryptoError, Result};

/// Length of a record header.
pub const HEADER_LEN: usize = 5;
/// Longest plaintext fragment (2^14, RFC 8446 section 5.1).
pub const MAX_PLAINTEXT_LEN: usize = 1 << 14;
/// Longest TLS 1.3 ciphertext (2^14 + 256, RFC 8446 section 5.2).
pub const MAX_TLS13_CIPHERTEXT_LEN: usize = MAX_PLAINTEXT_LEN + 256;
/// Longest TLS 1.2 ciphertext (2^14 + 2048, RFC 5246 section 6.2.3).
pub const MAX_TLS12_CIPHERTEXT_LEN: usize = MAX_PLAINTEXT_LEN + 2048;
/// Length of an IV (TLS 1.3) or salt + explicit nonce start (TLS 1.2).
pub const IV_LEN: usize = 12;
/// Most records a [`RecordSealer`] protects under one AES-GCM key: 2^23, the confidentiality
/// limit of the AEAD usage-limit analysis (draft-irtf-cfrg-aead-limits; rustls applies the
/// same to its GCM suites; RFC 8446 section 5.5 allows 2^24.5 full-size records). The record
/// after it is refused: the sender updates its keys (a TLS 1.3 KeyUpdate) or opens a new
/// connection. Sequence numbers count the records under the current key (both versions start
/// them at 0 with each key).
pub const AES_GCM_RECORD_LIMIT: u64 = 1 << 23;

const TAG_LEN: usize = 16;
const EXPLICIT_NONCE_LEN: usize = 8;
const LEGACY_VERSION: [u8; 2] = [0x03, 0x03];

/// The TLS version a key set protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// TLS 1.2 with an AES-GCM suite (RFC 5288).
    Tls12,
    /// TLS 1.3 (RFC 8446).
    Tls13,
}

/// A record's content type (RFC 8446 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentType {
    /// `change_cipher_spec` (20): never protected, never valid after the handshake.
    ChangeCipherSpec,
    /// `alert` (21).
    Alert,
    /// `handshake` (22): post-handshake messages (session tickets, key updates).
    Handshake,
    /// `application_data` (23).
    ApplicationData,
}

impl ContentType {
    /// The wire value.
    pub const fn to_u8(self) -> u8 {
        match self {
            Self::ChangeCipherSpec => 20,
            Self::Alert => 21,
            Self::Handshake => 22,
            Self::ApplicationData => 23,
        }
    }

    /// The content type with wire value `v`.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            20 => Some(Self::ChangeCipherSpec),
            21 => Some(Self::Alert),
            22 => Some(Self::Handshake),
            23 => Some(Self::ApplicationData),
            _ => None,
        }
    }
}

/// The length of the whole record that starts `buf` (header included), or `None` while fewer
/// than [`HEADER_LEN`] bytes are there. Refuses a header no protected TLS 1.2/1.3 record can
/// have (unknown type, version other than `0303`, a length beyond the TLS 1.2 limit), so a
/// reader never waits for an absurd record.
pub fn record_len(buf: &[u8]) -> Result<Option<usize>> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    if ContentType::from_u8(header[0]).is_none() {
        return Err(CryptoError::Malformed("TLS record content type"));
    }
    if header[1..3] != LEGACY_VERSION {
        return Err(CryptoError::Malformed("TLS record version"));
    }
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len > MAX_TLS12_CIPHERTEXT_LEN {
        return Err(CryptoError::Malformed("TLS record too long"));
    }
    Ok(Some(HEADER_LEN + len))
}

enum Gcm {
    Aes128(Box<Aes128Gcm>),
    Aes256(Box<Aes256Gcm>),
}

impl Gcm {
    fn new(key: &[u8]) -> Result<Self> {
        match key.len() {
            16 => Aes128Gcm::new_from_slice(key).map(|c| Self::Aes128(Box::new(c))),
            32 => Aes256Gcm::new_from_slice(key).map(|c| Self::Aes256(Box::new(c))),
            n => return Err(CryptoError::InvalidKeyLength(n)),
        }
        .map_err(|_| CryptoError::InvalidKeyLength(key.len()))
    }

    fn seal(&self, nonce: &[u8; IV_LEN], aad: &[u8], msg: &[u8]) -> Result<Vec<u8>> {
        let nonce = Nonce::from(*nonce);
        let payload = Payload { msg, aad };
        match self {
            Self::Aes128(c) => c.encrypt(&nonce, payload),
            Self::Aes256(c) => c.encrypt(&nonce, payload),
        }
        .map_err(|_| CryptoError::InvalidLength("AES-GCM input too long"))
    }

    fn open(&self, nonce: &[u8; IV_LEN], aad: &[u8], msg: &[u8]) -> Result<Vec<u8>> {
        let nonce = Nonce::from(*nonce);
        let payload = Payload { msg, aad };
        match self {
            Self::Aes128(c) => c.decrypt(&nonce, payload),
            Self::Aes256(c) => c.decrypt(&nonce, payload),
        }
        .map_err(|_| CryptoError::AuthenticationFailed)
    }
}

/// One direction's keys and position: shared by [`RecordSealer`] and [`RecordOpener`].
struct DirectionState {
    version: Version,
    gcm: Gcm,
    iv: [u8; IV_LEN],
    /// The next record's sequence number; `None` once every number has been used.
    seq: Option<u64>,
}

impl DirectionState {
    fn new(version: Version, key: &[u8], iv: [u8; IV_LEN], seq: u64) -> Result<Self> {
        Ok(Self { version, gcm: Gcm::new(key)?, iv, seq: Some(seq) })
    }

    fn current_seq(&self) -> Result<u64> {
        self.seq.ok_or(CryptoError::ChannelState("TLS sequence number exhausted: rekey"))
    }

    /// IV XOR the sequence number, right-aligned (RFC 8446 section 5.3; rustls' TLS 1.2 GCM
    /// explicit nonce is the same construction).
    fn xor_nonce(&self, seq: u64) -> [u8; IV_LEN] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    fn advance(&mut self, seq: u64) {
        self.seq = seq.checked_add(1);
    }
}

impl Drop for DirectionState {
    fn drop(&mut self) {
        self.iv.zeroize();
    }
}

fn header(typ: u8, len: usize) -> Result<[u8; HEADER_LEN]> {
    let len = u16::try_from(len).map_err(|_| CryptoError::InvalidLength("TLS record too long"))?;
    let l = len.to_be_bytes();
    Ok([typ, LEGACY_VERSION[0], LEGACY_VERSION[1], l[0], l[1]])
}

fn tls12_aad(seq: u64, typ: u8, len: usize) -> Result<[u8; 13]> {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8..13].copy_from_slice(&header(typ, len)?);
    Ok(aad)
}

/// Protects the records one side sends.
pub struct RecordSealer(DirectionState);

impl RecordSealer {
    /// A sealer for `version` with an AES-128-GCM (16-byte) or AES-256-GCM (32-byte) key, the
    /// IV (TLS 1.2: salt || explicit nonce start) and the next sequence number.
    pub fn new(version: Version, key: &[u8], iv: [u8; IV_LEN], seq: u64) -> Result<Self> {
        DirectionState::new(version, key, iv, seq).map(Self)
    }

    /// The sequence number the next record gets (`None` once exhausted).
    pub fn next_seq(&self) -> Option<u64> {
        self.0.seq
    }

    /// How many more records this key may protect ([`AES_GCM_RECORD_LIMIT`]).
    pub fn records_left(&self) -> u64 {
        self.0.seq.map_or(0, |seq| AES_GCM_RECORD_LIMIT.saturating_sub(seq))
    }

    /// One protected record (header included) carrying `content` (at most
    /// [`MAX_PLAINTEXT_LEN`] bytes) as `typ`; refused once the key has protected
    /// [`AES_GCM_RECORD_LIMIT`] records.
    pub fn seal(&mut self, typ: ContentType, content: &[u8]) -> Result<Vec<u8>> {
        self.seal_padded(typ, content, 0)
    }

    /// As [`seal`](Self::seal), with `padding` zero bytes after the inner content type (TLS
    /// 1.3 only, RFC 8446 section 5.4; refused for TLS 1.2).
    pub fn seal_padded(
        &mut self,
        typ: ContentType,
        content: &[u8],
        padding: usize,
    ) -> Result<Vec<u8>> {
        if content.len() > MAX_PLAINTEXT_LEN {
            return Err(CryptoError::InvalidLength("TLS plaintext longer than 2^14"));
        }
        if typ == ContentType::ChangeCipherSpec {
            return Err(CryptoError::Malformed("change_cipher_spec is never protected"));
        }
        let seq = self.0.current_seq()?;
        if seq >= AES_GCM_RECORD_LIMIT {
            return Err(CryptoError::ChannelState(
                "AES-GCM record limit of this key reached: update the keys or reconnect",
            ));
        }
        let record = self.protect(seq, typ, content, padding)?;
        self.0.advance(seq);
        Ok(record)
    }

    /// The record `seq` of this direction (no limit checked, nothing advanced).
    fn protect(
        &self,
        seq: u64,
        typ: ContentType,
        content: &[u8],
        padding: usize,
    ) -> Result<Vec<u8>> {
        let s = &self.0;
        Ok(match s.version {
            Version::Tls13 => {
                // The inner plaintext (content, type, zeros) must fit the ciphertext limit.
                if content.len() + 1 + padding + TAG_LEN > MAX_TLS13_CIPHERTEXT_LEN
                    || content.len() + padding > MAX_PLAINTEXT_LEN
                {
                    return Err(CryptoError::InvalidLength("TLS 1.3 padding too long"));
                }
                let mut inner = Vec::with_capacity(content.len() + 1 + padding);
                inner.extend_from_slice(content);
                inner.push(typ.to_u8());
                inner.resize(inner.len() + padding, 0);
                let hdr = header(ContentType::ApplicationData.to_u8(), inner.len() + TAG_LEN)?;
                let ct = s.gcm.seal(&s.xor_nonce(seq), &hdr, &inner);
                inner.zeroize();
                let ct = ct?;
                let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
                out.extend_from_slice(&hdr);
                out.extend_from_slice(&ct);
                out
            }
            Version::Tls12 => {
                if padding != 0 {
                    return Err(CryptoError::InvalidLength("TLS 1.2 records carry no padding"));
                }
                let nonce = s.xor_nonce(seq);
                let aad = tls12_aad(seq, typ.to_u8(), content.len())?;
                let ct = s.gcm.seal(&nonce, &aad, content)?;
                let hdr = header(typ.to_u8(), EXPLICIT_NONCE_LEN + ct.len())?;
                let mut out = Vec::with_capacity(HEADER_LEN + EXPLICIT_NONCE_LEN + ct.len());
                out.extend_from_slice(&hdr);
                out.extend_from_slice(&nonce[4..]);
                out.extend_from_slice(&ct);
                out
            }
        })
    }
}

/// Reads the records one side receives.
pub struct RecordOpener(DirectionState);

/// An opened record: its (inner) content type and content.
#[derive(Clone, PartialEq, Eq)]
pub struct Opened {
    /// The content type (the inner one for TLS 1.3).
    pub typ: ContentType,
    /// The content, padding removed.
    pub content: Vec<u8>,
}

impl core::fmt::Debug for Opened {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Opened").field("typ", &self.typ).field("len", &self.content.len()).finish()
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.content.zeroize();
    }
}

impl RecordOpener {
    /// An opener for `version` (key, IV, next sequence number as for [`RecordSealer::new`]).
    pub fn new(version: Version, key: &[u8], iv: [u8; IV_LEN], seq: u64) -> Result<Self> {
        DirectionState::new(version, key, iv, seq).map(Self)
    }

    /// The sequence number the next record is expected under (`None` once exhausted).
    pub fn next_seq(&self) -> Option<u64> {
        self.0.seq
    }

    /// Open exactly one complete record (header included; [`record_len`] frames a stream).
    /// A record that is malformed, too long or does not authenticate is refused and the
    /// sequence number does not move.
    pub fn open(&mut self, record: &[u8]) -> Result<Opened> {
        let total = record_len(record)?.ok_or(CryptoError::Malformed("TLS record header"))?;
        if total != record.len() {
            return Err(CryptoError::Malformed("TLS record length"));
        }
        let (hdr, body) = record.split_at(HEADER_LEN);
        let outer = ContentType::from_u8(hdr[0])
            .ok_or(CryptoError::Malformed("TLS record content type"))?;
        let seq = self.0.current_seq()?;
        let s = &self.0;
        let opened = match s.version {
            Version::Tls13 => {
                if outer != ContentType::ApplicationData {
                    return Err(CryptoError::Malformed("TLS 1.3 protected record type"));
                }
                if body.len() > MAX_TLS13_CIPHERTEXT_LEN {
                    return Err(CryptoError::Malformed("TLS 1.3 record too long"));
                }
                if body.len() < TAG_LEN + 1 {
                    return Err(CryptoError::Malformed("TLS 1.3 record too short"));
                }
                let mut inner = s.gcm.open(&s.xor_nonce(seq), hdr, body)?;
                // The content type is the last non-zero byte (RFC 8446 section 5.4).
                let Some(pos) = inner.iter().rposition(|b| *b != 0) else {
                    inner.zeroize();
                    return Err(CryptoError::Malformed("TLS 1.3 record without content type"));
                };
                let typ = match ContentType::from_u8(inner[pos]) {
                    Some(t) if t != ContentType::ChangeCipherSpec => t,
                    _ => {
                        inner.zeroize();
                        return Err(CryptoError::Malformed("TLS 1.3 inner content type"));
                    }
                };
                inner.truncate(pos);
                if inner.len() > MAX_PLAINTEXT_LEN {
                    inner.zeroize();
                    return Err(CryptoError::Malformed("TLS 1.3 plaintext too long"));
                }
                Opened { typ, content: inner }
            }
            Version::Tls12 => {
                if outer == ContentType::ChangeCipherSpec {
                    return Err(CryptoError::Malformed("change_cipher_spec after the handshake"));
                }
                if body.len() < EXPLICIT_NONCE_LEN + TAG_LEN {
                    return Err(CryptoError::Malformed("TLS 1.2 record too short"));
                }
                let (explicit, ct) = body.split_at(EXPLICIT_NONCE_LEN);
                let plain_len = ct.len() - TAG_LEN;
                if plain_len > MAX_PLAINTEXT_LEN {
                    return Err(CryptoError::Malformed("TLS 1.2 plaintext too long"));
                }
                let mut nonce = [0u8; IV_LEN];
                nonce[..4].copy_from_slice(&s.iv[..4]);
                nonce[4..].copy_from_slice(explicit);
                let aad = tls12_aad(seq, outer.to_u8(), plain_len)?;
                let content = s.gcm.open(&nonce, &aad, ct)?;
                Opened { typ: outer, content }
            }
        };
        self.0.advance(seq);
        Ok(opened)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests may unwrap

    use proptest::prelude::*;

    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    // RFC 8448 section 3 (Simple 1-RTT Handshake): "{client} derive write traffic keys for
    // application data" and "{client} send application_data record", the first record under
    // the client application traffic keys (sequence number 0).
    const RFC8448_KEY: &str = "17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51";
    const RFC8448_IV: &str = "5b 78 92 3d ee 08 57 90 33 e5 23 d9";
    const RFC8448_RECORD: &str = "17 03 03 00 43 a2 3f 70 54 b6 2c 94
         d0 af fa fe 82 28 ba 55 cb ef ac ea 42 f9 14 aa 66 bc ab 3f 2b
         98 19 a8 a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b 62 97 4e 1f 5a 62
         92 a2 97 70 14 bd 1e 3d ea e6 3a ee bb 21 69 49 15 e4";

    fn rfc8448_iv() -> [u8; 12] {
        h(RFC8448_IV).try_into().unwrap()
    }

    #[test]
    fn rfc8448_client_application_record() {
        let payload: Vec<u8> = (0u8..=0x31).collect();
        let mut sealer =
            RecordSealer::new(Version::Tls13, &h(RFC8448_KEY), rfc8448_iv(), 0).unwrap();
        assert_eq!(sealer.seal(ContentType::ApplicationData, &payload).unwrap(), h(RFC8448_RECORD));
        assert_eq!(sealer.next_seq(), Some(1));

        let mut opener =
            RecordOpener::new(Version::Tls13, &h(RFC8448_KEY), rfc8448_iv(), 0).unwrap();
        let opened = opener.open(&h(RFC8448_RECORD)).unwrap();
        assert_eq!(opened.typ, ContentType::ApplicationData);
        assert_eq!(opened.content, payload);
        // The same record again is out of sequence: it no longer authenticates.
        assert_eq!(opener.open(&h(RFC8448_RECORD)).unwrap_err(), CryptoError::AuthenticationFailed);
        assert_eq!(opener.next_seq(), Some(1));
    }

    #[test]
    fn rfc8448_record_forgeries_are_refused_without_moving() {
        let record = h(RFC8448_RECORD);
        for i in 0..record.len() {
            let mut bad = record.clone();
            bad[i] ^= 0x01;
            let mut opener =
                RecordOpener::new(Version::Tls13, &h(RFC8448_KEY), rfc8448_iv(), 0).unwrap();
            assert!(opener.open(&bad).is_err(), "byte {i}");
            assert_eq!(opener.next_seq(), Some(0));
            // The genuine record still opens afterwards.
            assert!(opener.open(&record).is_ok());
        }
        let mut opener =
            RecordOpener::new(Version::Tls13, &h(RFC8448_KEY), rfc8448_iv(), 0).unwrap();
        assert!(opener.open(&record[..record.len() - 1]).is_err());
        assert!(opener.open(&[record.as_slice(), &[0]].concat()).is_err());
        assert!(opener.open(&[]).is_err());
    }

    fn pair(version: Version, key_len: usize, seq: u64) -> (RecordSealer, RecordOpener) {
        let key: Vec<u8> = (0..key_len as u8).collect();
        let iv = [7u8; 12];
        (
            RecordSealer::new(version, &key, iv, seq).unwrap(),
            RecordOpener::new(version, &key, iv, seq).unwrap(),
        )
    }

    #[test]
    fn tls13_padding_and_inner_type() {
        let (mut s, mut o) = pair(Version::Tls13, 32, 5);
        let rec = s.seal_padded(ContentType::Handshake, b"ticket", 100).unwrap();
        assert_eq!(&rec[..3], &[23, 3, 3]);
        assert_eq!(rec.len(), HEADER_LEN + 6 + 1 + 100 + TAG_LEN);
        let opened = o.open(&rec).unwrap();
        assert_eq!(opened.typ, ContentType::Handshake);
        assert_eq!(opened.content, b"ticket");
        // Only zeros inside (no content type) is refused.
        let mut s2 = pair(Version::Tls13, 16, 0).0;
        let mut o2 = pair(Version::Tls13, 16, 0).1;
        let hdr = header(23, 4 + TAG_LEN).unwrap();
        let ct = s2.0.gcm.seal(&s2.0.xor_nonce(0), &hdr, &[0, 0, 0, 0]).unwrap();
        assert!(o2.open(&[hdr.as_slice(), &ct].concat()).is_err());
        assert!(s2.seal_padded(ContentType::Alert, &[1, 0], 0).is_ok());
        assert!(s.seal(ContentType::ChangeCipherSpec, &[1]).is_err());
    }

    #[test]
    fn tls12_explicit_nonce_and_aad() {
        let (mut s, mut o) = pair(Version::Tls12, 16, 3);
        let rec = s.seal(ContentType::Alert, &[1, 0]).unwrap();
        assert_eq!(&rec[..5], &[21, 3, 3, 0, 8 + 2 + 16]);
        // Explicit nonce = the IV's last 8 bytes XOR seq 3.
        assert_eq!(&rec[5..13], &[7, 7, 7, 7, 7, 7, 7, 7 ^ 3]);
        let opened = o.open(&rec).unwrap();
        assert_eq!((opened.typ, opened.content.as_slice()), (ContentType::Alert, &[1u8, 0][..]));
        // The type is authenticated through the AAD.
        let rec = s.seal(ContentType::ApplicationData, b"GET /").unwrap();
        let mut retyped = rec.clone();
        retyped[0] = 22;
        assert_eq!(o.open(&retyped).unwrap_err(), CryptoError::AuthenticationFailed);
        assert_eq!(o.open(&rec).unwrap().content, b"GET /");
        assert!(s.seal_padded(ContentType::ApplicationData, b"x", 1).is_err());
    }

    #[test]
    fn a_key_seals_at_most_the_gcm_record_limit() {
        for version in [Version::Tls12, Version::Tls13] {
            let (mut s, mut o) = pair(version, 16, AES_GCM_RECORD_LIMIT - 1);
            assert_eq!(s.records_left(), 1);
            let rec = s.seal(ContentType::ApplicationData, b"last").unwrap();
            assert_eq!((s.next_seq(), s.records_left()), (Some(AES_GCM_RECORD_LIMIT), 0));
            for typ in [ContentType::ApplicationData, ContentType::Alert, ContentType::Handshake] {
                assert!(matches!(s.seal(typ, b"more"), Err(CryptoError::ChannelState(_))));
            }
            assert_eq!(s.next_seq(), Some(AES_GCM_RECORD_LIMIT), "a refusal moves nothing");
            assert_eq!(o.open(&rec).unwrap().content, b"last");
            // Handed-over keys already past the limit seal nothing.
            let (mut late, _) = pair(version, 16, u64::MAX);
            assert!(matches!(
                late.seal(ContentType::ApplicationData, b"x"),
                Err(CryptoError::ChannelState(_))
            ));
        }
    }

    #[test]
    fn sequence_numbers_never_wrap() {
        for version in [Version::Tls12, Version::Tls13] {
            // Only the opener can get this far (the peer's key, the peer's limit).
            let (s, mut o) = pair(version, 16, u64::MAX);
            let rec = s.protect(u64::MAX, ContentType::ApplicationData, b"last", 0).unwrap();
            assert_eq!(o.open(&rec).unwrap().content, b"last");
            assert_eq!(o.next_seq(), None);
            assert!(matches!(o.open(&rec), Err(CryptoError::ChannelState(_))));
        }
    }

    #[test]
    fn limits() {
        for version in [Version::Tls12, Version::Tls13] {
            let (mut s, mut o) = pair(version, 16, 0);
            let max = vec![0xAA; MAX_PLAINTEXT_LEN];
            let rec = s.seal(ContentType::ApplicationData, &max).unwrap();
            assert_eq!(o.open(&rec).unwrap().content.len(), MAX_PLAINTEXT_LEN);
            assert!(s.seal(ContentType::ApplicationData, &[0; MAX_PLAINTEXT_LEN + 1]).is_err());
        }
        assert!(RecordSealer::new(Version::Tls13, &[0; 24], [0; 12], 0).is_err());
        assert_eq!(record_len(&[23, 3, 3, 0]).unwrap(), None);
        assert_eq!(record_len(&[23, 3, 3, 0, 20, 9]).unwrap(), Some(25));
        assert!(record_len(&[24, 3, 3, 0, 20]).is_err());
        assert!(record_len(&[23, 3, 1, 0, 20]).is_err());
        assert!(record_len(&[23, 3, 3, 0xFF, 0xFF]).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(v13 in any::<bool>(), aes256 in any::<bool>(), seq in 0u64..AES_GCM_RECORD_LIMIT - 4,
                      msgs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..4)) {
            let version = if v13 { Version::Tls13 } else { Version::Tls12 };
            let (mut s, mut o) = pair(version, if aes256 { 32 } else { 16 }, seq);
            for m in &msgs {
                let rec = s.seal(ContentType::ApplicationData, m).unwrap();
                prop_assert_eq!(record_len(&rec).unwrap(), Some(rec.len()));
                prop_assert_eq!(&o.open(&rec).unwrap().content, m);
            }
        }

        #[test]
        fn open_never_panics(v13 in any::<bool>(), data in prop::collection::vec(any::<u8>(), 0..200)) {
            let version = if v13 { Version::Tls13 } else { Version::Tls12 };
            let (_, mut o) = pair(version, 16, 0);
            prop_assert!(o.open(&data).is_err());
            prop_assert_eq!(o.next_seq(), Some(0));
        }
    }
}
