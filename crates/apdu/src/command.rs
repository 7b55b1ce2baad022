//! Command APDUs: the four ISO/IEC 7816-4 cases, short and extended length.

use thiserror::Error;

use crate::StatusWord;

/// Why a byte string is not a well-formed command APDU.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApduError {
    /// Fewer than the four header bytes.
    #[error("command APDU shorter than its 4-byte header")]
    TooShort,
    /// The body length does not match any of the seven encodings of cases 1 to 4.
    #[error("command APDU body does not match its length fields")]
    WrongLength,
    /// CLA `FF` is reserved for protocol parameter selection.
    #[error("invalid class byte FF")]
    InvalidClass,
    /// More data than an extended APDU can carry.
    #[error("command data longer than 65535 bytes")]
    DataTooLong,
}

impl ApduError {
    /// The status word a card answers to this malformed command.
    pub fn status(&self) -> StatusWord {
        match self {
            ApduError::InvalidClass => StatusWord::CLA_NOT_SUPPORTED,
            _ => StatusWord::WRONG_LENGTH,
        }
    }
}

/// A command APDU.
///
/// `le` is Ne, the maximum number of response bytes expected: `None` for cases 1 and 3,
/// `Some(1..=256)` for short and `Some(1..=65536)` for extended cases 2 and 4.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Command {
    /// Class byte.
    pub cla: u8,
    /// Instruction byte.
    pub ins: u8,
    /// First parameter.
    pub p1: u8,
    /// Second parameter.
    pub p2: u8,
    /// Command data (Nc bytes, empty for cases 1 and 2).
    pub data: Vec<u8>,
    /// Ne, or `None` when no response data is expected.
    pub le: Option<usize>,
}

/// Largest Ne of a short APDU.
pub const SHORT_MAX_NE: usize = 256;
/// Largest Ne of an extended APDU.
pub const EXTENDED_MAX_NE: usize = 65536;
/// Largest Nc of a short APDU.
pub const SHORT_MAX_NC: usize = 255;
/// Largest Nc of an extended APDU.
pub const EXTENDED_MAX_NC: usize = 65535;

impl Command {
    /// A command with no data and no Le (case 1).
    pub fn new(cla: u8, ins: u8, p1: u8, p2: u8) -> Self {
        Self { cla, ins, p1, p2, data: Vec::new(), le: None }
    }

    /// Sets the command data.
    pub fn with_data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.data = data.into();
        self
    }

    /// Sets Ne.
    pub fn with_le(mut self, ne: usize) -> Self {
        self.le = Some(ne);
        self
    }

    /// True when the CLA has the command-chaining bit (b5, `0x10`) of an interindustry class.
    pub fn is_chained(&self) -> bool {
        self.cla & 0x10 != 0
    }

    /// True when the command needs the extended length encoding.
    pub fn is_extended(&self) -> bool {
        self.data.len() > SHORT_MAX_NC || self.le.is_some_and(|ne| ne > SHORT_MAX_NE)
    }

    /// Parses a command APDU, accepting every short and extended encoding of cases 1 to 4.
    pub fn parse(bytes: &[u8]) -> Result<Self, ApduError> {
        let (header, body) = bytes.split_first_chunk::<4>().ok_or(ApduError::TooShort)?;
        let [cla, ins, p1, p2] = *header;
        if cla == 0xFF {
            return Err(ApduError::InvalidClass);
        }
        let mut cmd = Command::new(cla, ins, p1, p2);
        match body.len() {
            0 => {}
            1 => cmd.le = Some(short_ne(body[0])),
            _ if body[0] != 0 => {
                let nc = body[0] as usize;
                let rest = &body[1..];
                match rest.len().checked_sub(nc) {
                    Some(0) => cmd.data = rest.to_vec(),
                    Some(1) => {
                        cmd.data = rest[..nc].to_vec();
                        cmd.le = Some(short_ne(rest[nc]));
                    }
                    _ => return Err(ApduError::WrongLength),
                }
            }
            3 => cmd.le = Some(extended_ne(body[1], body[2])),
            _ => {
                let nc = u16::from_be_bytes([body[1], body[2]]) as usize;
                let rest = &body[3..];
                if nc == 0 {
                    return Err(ApduError::WrongLength);
                }
                match rest.len().checked_sub(nc) {
                    Some(0) => cmd.data = rest.to_vec(),
                    Some(2) => {
                        cmd.data = rest[..nc].to_vec();
                        cmd.le = Some(extended_ne(rest[nc], rest[nc + 1]));
                    }
                    _ => return Err(ApduError::WrongLength),
                }
            }
        }
        Ok(cmd)
    }

    /// Encodes the command, choosing short length fields when both Nc and Ne fit.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ApduError> {
        let nc = self.data.len();
        if nc > EXTENDED_MAX_NC || self.le.is_some_and(|ne| ne == 0 || ne > EXTENDED_MAX_NE) {
            return Err(ApduError::DataTooLong);
        }
        let mut out = Vec::with_capacity(4 + 3 + nc + 2);
        out.extend_from_slice(&[self.cla, self.ins, self.p1, self.p2]);
        if !self.is_extended() {
            if nc > 0 {
                out.push(nc as u8);
                out.extend_from_slice(&self.data);
            }
            if let Some(ne) = self.le {
                out.push(ne as u8); // 256 encodes as 00
            }
        } else {
            out.push(0);
            if nc > 0 {
                out.extend_from_slice(&(nc as u16).to_be_bytes());
                out.extend_from_slice(&self.data);
            }
            if let Some(ne) = self.le {
                out.extend_from_slice(&(ne as u16).to_be_bytes()); // 65536 encodes as 0000
            }
        }
        Ok(out)
    }
}

fn short_ne(b: u8) -> usize {
    if b == 0 { SHORT_MAX_NE } else { b as usize }
}

fn extended_ne(hi: u8, lo: u8) -> usize {
    match u16::from_be_bytes([hi, lo]) {
        0 => EXTENDED_MAX_NE,
        n => n as usize,
    }
}
