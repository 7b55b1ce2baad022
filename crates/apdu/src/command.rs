//! Command APDUs: the four ISO/IEC 7816-4 cases, short and extended length.
//!
//! Decoding follows ISO/IEC 7816-3 section 12.1.3 (the body length `L` and its first byte `B1`
//! decide the case); the seven valid encodings are:
//!
//! | case | body                         | condition                          |
//! |------|------------------------------|------------------------------------|
//! | 1    | (empty)                      | `L = 0`                            |
//! | 2S   | `Le`                         | `L = 1`                            |
//! | 3S   | `Lc data`                    | `B1 ≠ 0`, `L = 1 + B1`             |
//! | 4S   | `Lc data Le`                 | `B1 ≠ 0`, `L = 2 + B1`             |
//! | 2E   | `00 Le1 Le2`                 | `B1 = 0`, `L = 3`                  |
//! | 3E   | `00 Lc1 Lc2 data`            | `B1 = 0`, `Lc ≠ 0`, `L = 3 + Lc`   |
//! | 4E   | `00 Lc1 Lc2 data Le1 Le2`    | `B1 = 0`, `Lc ≠ 0`, `L = 5 + Lc`   |
//!
//! Everything else is rejected, in particular `L = 2` with `B1 = 0`, an extended `Lc` of zero,
//! mixed short/extended fields and bodies longer or shorter than their `Lc` announces.

use thiserror::Error;

use crate::StatusWord;

/// Why a byte string is not a well-formed command APDU, or a [`Command`] cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
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
    /// Ne is zero or above 65536 (use `None` for "no response data expected").
    #[error("Ne must be between 1 and 65536")]
    InvalidLe,
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

/// The command-chaining bit of the class byte (ISO/IEC 7816-4 section 5.4.1, b5).
pub const CLA_CHAINING: u8 = 0x10;

/// INS of GET RESPONSE.
pub const INS_GET_RESPONSE: u8 = 0xC0;

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

    /// True when the CLA has the command-chaining bit (b5, `0x10`): more commands of the chain
    /// follow.
    ///
    /// tessera reads b5 this way in every class, proprietary ones included (as GlobalPlatform
    /// does for CLA `80`–`8F`/`90`–`9F`).
    pub fn is_chained(&self) -> bool {
        self.cla & CLA_CHAINING != 0
    }

    /// True when the command needs the extended length encoding.
    pub fn is_extended(&self) -> bool {
        self.data.len() > SHORT_MAX_NC || self.le.is_some_and(|ne| ne > SHORT_MAX_NE)
    }

    /// The ISO case (1 to 4) of this command: 1 no data no Le, 2 Le only, 3 data only, 4 both.
    pub fn case(&self) -> u8 {
        match (self.data.is_empty(), self.le.is_some()) {
            (true, false) => 1,
            (true, true) => 2,
            (false, false) => 3,
            (false, true) => 4,
        }
    }

    /// Parses a command APDU, accepting exactly the seven encodings listed in the module docs.
    ///
    /// Extended length fields are accepted even when the values would fit the short ones, so
    /// `parse(to_bytes(c)) == c` holds but `to_bytes(parse(b)) == b` need not.
    pub fn parse(bytes: &[u8]) -> Result<Self, ApduError> {
        let (header, body) = bytes.split_first_chunk::<4>().ok_or(ApduError::TooShort)?;
        let [cla, ins, p1, p2] = *header;
        if cla == 0xFF {
            return Err(ApduError::InvalidClass);
        }
        let mut cmd = Command::new(cla, ins, p1, p2);
        match body {
            [] => {}
            [le] => cmd.le = Some(short_ne(*le)),
            [0, rest @ ..] => match rest {
                [hi, lo] => cmd.le = Some(extended_ne(*hi, *lo)),
                [lc1, lc2, rest @ ..] => {
                    let nc = usize::from(u16::from_be_bytes([*lc1, *lc2]));
                    if nc == 0 {
                        return Err(ApduError::WrongLength);
                    }
                    match rest.len().checked_sub(nc) {
                        Some(0) => cmd.data = rest.to_vec(),
                        Some(2) => {
                            let (data, le) = rest.split_at(nc);
                            cmd.data = data.to_vec();
                            cmd.le = Some(extended_ne(le[0], le[1]));
                        }
                        _ => return Err(ApduError::WrongLength),
                    }
                }
                _ => return Err(ApduError::WrongLength),
            },
            [lc, rest @ ..] => {
                let nc = usize::from(*lc);
                match rest.len().checked_sub(nc) {
                    Some(0) => cmd.data = rest.to_vec(),
                    Some(1) => {
                        let (data, le) = rest.split_at(nc);
                        cmd.data = data.to_vec();
                        cmd.le = Some(short_ne(le[0]));
                    }
                    _ => return Err(ApduError::WrongLength),
                }
            }
        }
        Ok(cmd)
    }

    /// Encodes the command, choosing short length fields when both Nc and Ne fit, extended ones
    /// otherwise (ISO forbids mixing them).
    ///
    /// Fails on CLA `FF`, more than 65535 data bytes, or Ne of 0 or above 65536.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ApduError> {
        let nc = self.data.len();
        if self.cla == 0xFF {
            return Err(ApduError::InvalidClass);
        }
        if nc > EXTENDED_MAX_NC {
            return Err(ApduError::DataTooLong);
        }
        if self.le.is_some_and(|ne| ne == 0 || ne > EXTENDED_MAX_NE) {
            return Err(ApduError::InvalidLe);
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
    if b == 0 { SHORT_MAX_NE } else { usize::from(b) }
}

fn extended_ne(hi: u8, lo: u8) -> usize {
    match u16::from_be_bytes([hi, lo]) {
        0 => EXTENDED_MAX_NE,
        n => usize::from(n),
    }
}
