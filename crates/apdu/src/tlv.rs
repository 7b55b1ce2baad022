//! BER-TLV data objects (ISO/IEC 7816-4 section 6.3, after ISO/IEC 8825-1 / X.690).
//!
//! Parsing borrows from the input and never recurses: [`Tlv::children`] parses one level of a
//! constructed object on demand, so deeply nested input costs no stack. Accepted:
//!
//! * tags of one to four bytes; the first byte must not be `00` or `FF` (ISO/IEC 7816-4 reserves
//!   them for padding, which this parser does not skip), a multi-byte tag's first subsequent
//!   byte must not be `80` (X.690 8.1.2.4.2), and b8 of the last byte must be clear;
//! * definite lengths: short form `00`–`7F`, long form `81`–`84` followed by one to four bytes
//!   (non-minimal long forms are valid BER and accepted).
//!
//! Rejected with a [`TlvError`]: the indefinite length `80`, length fields `85`–`FF`, lengths
//! running past the end of the input, and truncated tags or lengths. Encoding always writes the
//! minimal length form.

use std::fmt;

use thiserror::Error;

/// Why bytes are not well-formed BER-TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TlvError {
    /// The input ends inside a tag, a length or a value.
    #[error("BER-TLV object truncated")]
    Truncated,
    /// The tag is malformed (first byte `00`/`FF`, or a bad subsequent byte).
    #[error("invalid BER-TLV tag")]
    InvalidTag,
    /// The tag is longer than four bytes.
    #[error("BER-TLV tag longer than four bytes")]
    TagTooLong,
    /// Indefinite length (`80`), which ISO/IEC 7816-4 does not allow.
    #[error("indefinite BER-TLV length")]
    IndefiniteLength,
    /// A length field of more than four subsequent bytes (`85`–`FF`).
    #[error("BER-TLV length field too long")]
    LengthTooLong,
    /// [`Tlv::children`] called on a primitive object.
    #[error("BER-TLV object is primitive, not constructed")]
    NotConstructed,
    /// Bytes left over after the object that should have filled the input.
    #[error("trailing bytes after BER-TLV object")]
    TrailingData,
}

/// Class of a tag (b8-b7 of its first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TagClass {
    /// `00xxxxxx`.
    Universal,
    /// `01xxxxxx`.
    Application,
    /// `10xxxxxx`.
    ContextSpecific,
    /// `11xxxxxx`.
    Private,
}

/// A BER-TLV tag, held as its encoded bytes read as a big-endian number (`0x5F2D`, `0x7F49`,
/// `0x9F7F`...).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(u32);

impl Tag {
    /// The tag whose encoding, as a big-endian number, is `raw`.
    ///
    /// # Panics
    ///
    /// When `raw` is not a valid tag encoding. Meant for constants (it is evaluated at compile
    /// time there); use [`Tag::try_new`] for values from outside.
    pub const fn new(raw: u32) -> Self {
        match Self::try_new(raw) {
            Ok(tag) => tag,
            Err(_) => panic!("invalid BER-TLV tag"),
        }
    }

    /// The tag whose encoding, as a big-endian number, is `raw`, if that is a valid encoding.
    pub const fn try_new(raw: u32) -> Result<Self, TlvError> {
        let bytes = raw.to_be_bytes();
        let mut start = 0;
        while start < 3 && bytes[start] == 0 {
            start += 1;
        }
        // Re-parse the significant bytes: they must form exactly one tag.
        let mut buf = [0u8; 4];
        let mut i = 0;
        while start + i < 4 {
            buf[i] = bytes[start + i];
            i += 1;
        }
        match parse_tag(&buf, 4 - start) {
            Ok((tag, len)) if len == 4 - start => Ok(tag),
            Ok(_) => Err(TlvError::InvalidTag),
            Err(TlvError::Truncated) => Err(TlvError::InvalidTag),
            Err(e) => Err(e),
        }
    }

    /// The encoding as a big-endian number.
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// Number of bytes of the encoded tag.
    pub const fn encoded_len(self) -> usize {
        match self.0 {
            0..=0xFF => 1,
            0x100..=0xFFFF => 2,
            0x1_0000..=0xFF_FFFF => 3,
            _ => 4,
        }
    }

    /// The encoded tag bytes.
    pub fn to_bytes(self) -> Vec<u8> {
        self.0.to_be_bytes()[4 - self.encoded_len()..].to_vec()
    }

    const fn first_byte(self) -> u8 {
        (self.0 >> (8 * (self.encoded_len() - 1))) as u8
    }

    /// True when b6 of the first byte is set: the value is a sequence of BER-TLV objects.
    pub const fn is_constructed(self) -> bool {
        self.first_byte() & 0x20 != 0
    }

    /// The tag's class.
    pub const fn class(self) -> TagClass {
        match self.first_byte() >> 6 {
            0 => TagClass::Universal,
            1 => TagClass::Application,
            2 => TagClass::ContextSpecific,
            _ => TagClass::Private,
        }
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({self})")
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:0width$X}", self.0, width = self.encoded_len() * 2)
    }
}

/// Parses the tag at the start of `input[..len]`; returns it and its length in bytes.
const fn parse_tag(input: &[u8], len: usize) -> Result<(Tag, usize), TlvError> {
    if len == 0 {
        return Err(TlvError::Truncated);
    }
    let first = input[0];
    if first == 0x00 || first == 0xFF {
        return Err(TlvError::InvalidTag);
    }
    let mut raw = first as u32;
    if first & 0x1F != 0x1F {
        return Ok((Tag(raw), 1));
    }
    let mut i = 1;
    loop {
        if i >= len {
            return Err(TlvError::Truncated);
        }
        if i >= 4 {
            return Err(TlvError::TagTooLong);
        }
        let b = input[i];
        if i == 1 && b == 0x80 {
            return Err(TlvError::InvalidTag);
        }
        raw = (raw << 8) | b as u32;
        i += 1;
        if b & 0x80 == 0 {
            return Ok((Tag(raw), i));
        }
    }
}

/// Parses a length field; returns the length and the field's size in bytes.
fn parse_length(input: &[u8]) -> Result<(usize, usize), TlvError> {
    let (&first, rest) = input.split_first().ok_or(TlvError::Truncated)?;
    match first {
        0x00..=0x7F => Ok((usize::from(first), 1)),
        0x80 => Err(TlvError::IndefiniteLength),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7F);
            let bytes = rest.get(..n).ok_or(TlvError::Truncated)?;
            let len = bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            let len = usize::try_from(len).map_err(|_| TlvError::LengthTooLong)?;
            Ok((len, 1 + n))
        }
        _ => Err(TlvError::LengthTooLong),
    }
}

/// One BER-TLV data object, borrowing its value from the parsed input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The tag.
    pub tag: Tag,
    /// The value field (for a constructed tag, the encoded child objects).
    pub value: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// Parses the first object of `input`; returns it and the bytes after it.
    pub fn parse(input: &'a [u8]) -> Result<(Self, &'a [u8]), TlvError> {
        let (tag, tag_len) = parse_tag(input, input.len())?;
        let rest = &input[tag_len..];
        let (len, len_len) = parse_length(rest)?;
        let rest = &rest[len_len..];
        if rest.len() < len {
            return Err(TlvError::Truncated);
        }
        let (value, rest) = rest.split_at(len);
        Ok((Self { tag, value }, rest))
    }

    /// Parses `input` as exactly one object.
    pub fn parse_exact(input: &'a [u8]) -> Result<Self, TlvError> {
        match Self::parse(input)? {
            (tlv, []) => Ok(tlv),
            _ => Err(TlvError::TrailingData),
        }
    }

    /// Parses `input` as a sequence of objects (the whole input must be consumed).
    pub fn parse_all(input: &'a [u8]) -> Result<Vec<Self>, TlvError> {
        Tlvs { rest: input }.collect()
    }

    /// The child objects of a constructed object, parsed one level deep on demand.
    pub fn children(&self) -> Result<Tlvs<'a>, TlvError> {
        if !self.tag.is_constructed() {
            return Err(TlvError::NotConstructed);
        }
        Ok(Tlvs { rest: self.value })
    }

    /// The first direct child with `tag` (errors if this object is primitive or a child before
    /// the match is malformed).
    pub fn find(&self, tag: Tag) -> Result<Option<Tlv<'a>>, TlvError> {
        for child in self.children()? {
            let child = child?;
            if child.tag == tag {
                return Ok(Some(child));
            }
        }
        Ok(None)
    }

    /// Appends this object's encoding (minimal length form) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), TlvError> {
        encode(self.tag, self.value, out)
    }

    /// This object's encoding.
    pub fn to_bytes(&self) -> Result<Vec<u8>, TlvError> {
        let mut out = Vec::with_capacity(self.tag.encoded_len() + 5 + self.value.len());
        self.encode_into(&mut out)?;
        Ok(out)
    }
}

/// Iterator over consecutive BER-TLV objects; yields one error and then stops.
#[derive(Debug, Clone)]
pub struct Tlvs<'a> {
    rest: &'a [u8],
}

impl<'a> Tlvs<'a> {
    /// Iterates over the objects encoded one after the other in `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Self { rest: input }
    }
}

impl<'a> Iterator for Tlvs<'a> {
    type Item = Result<Tlv<'a>, TlvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match Tlv::parse(self.rest) {
            Ok((tlv, rest)) => {
                self.rest = rest;
                Some(Ok(tlv))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// Appends a length field in its minimal form to `out`; lengths above `u32::MAX` cannot be
/// encoded in four bytes.
pub fn encode_length(len: usize, out: &mut Vec<u8>) -> Result<(), TlvError> {
    if len < 0x80 {
        out.push(len as u8);
        return Ok(());
    }
    let len = u32::try_from(len).map_err(|_| TlvError::LengthTooLong)?;
    let bytes = len.to_be_bytes();
    let skip = (len.leading_zeros() / 8) as usize;
    out.push(0x80 | (4 - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
    Ok(())
}

/// Appends the object `tag`/`value` to `out`. For a constructed tag, `value` is the
/// concatenated encoding of its children.
pub fn encode(tag: Tag, value: &[u8], out: &mut Vec<u8>) -> Result<(), TlvError> {
    if u32::try_from(value.len()).is_err() {
        return Err(TlvError::LengthTooLong);
    }
    out.extend_from_slice(&tag.to_bytes());
    encode_length(value.len(), out)?;
    out.extend_from_slice(value);
    Ok(())
}
