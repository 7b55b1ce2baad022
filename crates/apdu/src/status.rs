//! Status words (SW1-SW2).

use std::fmt;

/// A two-byte ISO/IEC 7816-4 status word, `SW1 << 8 | SW2`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusWord(pub u16);

impl StatusWord {
    /// `9000`: normal processing.
    pub const SUCCESS: Self = Self(0x9000);
    /// `6281`: part of returned data may be corrupted.
    pub const DATA_CORRUPTED: Self = Self(0x6281);
    /// `6283`: selected file (applet) is deactivated / locked.
    pub const SELECTED_FILE_DEACTIVATED: Self = Self(0x6283);
    /// `6581`: memory failure (the persistent store could not be written).
    pub const MEMORY_FAILURE: Self = Self(0x6581);
    /// `6700`: wrong length (Lc or Le).
    pub const WRONG_LENGTH: Self = Self(0x6700);
    /// `6881`: logical channel not supported.
    pub const LOGICAL_CHANNEL_NOT_SUPPORTED: Self = Self(0x6881);
    /// `6882`: secure messaging not supported.
    pub const SECURE_MESSAGING_NOT_SUPPORTED: Self = Self(0x6882);
    /// `6883`: last command of the chain expected.
    pub const LAST_COMMAND_OF_CHAIN_EXPECTED: Self = Self(0x6883);
    /// `6884`: command chaining not supported.
    pub const COMMAND_CHAINING_NOT_SUPPORTED: Self = Self(0x6884);
    /// `6982`: security status not satisfied.
    pub const SECURITY_STATUS_NOT_SATISFIED: Self = Self(0x6982);
    /// `6983`: authentication method blocked.
    pub const AUTH_METHOD_BLOCKED: Self = Self(0x6983);
    /// `6984`: reference data not usable.
    pub const REFERENCE_DATA_NOT_USABLE: Self = Self(0x6984);
    /// `6985`: conditions of use not satisfied.
    pub const CONDITIONS_NOT_SATISFIED: Self = Self(0x6985);
    /// `6987`: expected secure messaging data objects missing.
    pub const SM_DATA_MISSING: Self = Self(0x6987);
    /// `6988`: incorrect secure messaging data objects.
    pub const SM_DATA_INCORRECT: Self = Self(0x6988);
    /// `6A80`: incorrect parameters in the command data field.
    pub const INCORRECT_DATA: Self = Self(0x6A80);
    /// `6A81`: function not supported.
    pub const FUNCTION_NOT_SUPPORTED: Self = Self(0x6A81);
    /// `6A82`: file or application not found.
    pub const NOT_FOUND: Self = Self(0x6A82);
    /// `6A84`: not enough memory space.
    pub const NOT_ENOUGH_MEMORY: Self = Self(0x6A84);
    /// `6A86`: incorrect parameters P1-P2.
    pub const INCORRECT_P1P2: Self = Self(0x6A86);
    /// `6A88`: referenced data or reference data not found.
    pub const REFERENCED_DATA_NOT_FOUND: Self = Self(0x6A88);
    /// `6A89`: file already exists (write-once object already written).
    pub const ALREADY_EXISTS: Self = Self(0x6A89);
    /// `6B00`: wrong parameters P1-P2.
    pub const WRONG_P1P2: Self = Self(0x6B00);
    /// `6D00`: instruction code not supported or invalid.
    pub const INS_NOT_SUPPORTED: Self = Self(0x6D00);
    /// `6E00`: class not supported.
    pub const CLA_NOT_SUPPORTED: Self = Self(0x6E00);
    /// `6F00`: no precise diagnosis.
    pub const UNKNOWN: Self = Self(0x6F00);

    /// Builds a status word from its two bytes.
    pub const fn from_bytes(sw1: u8, sw2: u8) -> Self {
        Self(((sw1 as u16) << 8) | sw2 as u16)
    }

    /// `61xx`: `xx` more bytes are available with GET RESPONSE (`00` means 256 or more).
    pub const fn bytes_remaining(n: u8) -> Self {
        Self::from_bytes(0x61, n)
    }

    /// `6Cxx`: wrong Le; `xx` is the exact length available.
    pub const fn wrong_le(n: u8) -> Self {
        Self::from_bytes(0x6C, n)
    }

    /// `63Cx`: verification failed, `x` tries left (capped at 15).
    pub const fn tries_left(n: u8) -> Self {
        let n = if n > 15 { 15 } else { n };
        Self::from_bytes(0x63, 0xC0 | n)
    }

    /// SW1.
    pub const fn sw1(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// SW2.
    pub const fn sw2(self) -> u8 {
        self.0 as u8
    }

    /// The two bytes in transmission order.
    pub const fn to_bytes(self) -> [u8; 2] {
        self.0.to_be_bytes()
    }

    /// True for `9000` and for `61xx` (success with more data waiting).
    pub const fn is_success(self) -> bool {
        self.0 == 0x9000 || self.sw1() == 0x61
    }

    /// Tries left when this is a `63Cx` status word.
    pub const fn tries(self) -> Option<u8> {
        if self.0 & 0xFFF0 == 0x63C0 { Some(self.sw2() & 0x0F) } else { None }
    }
}

impl fmt::Debug for StatusWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SW({:04X})", self.0)
    }
}

impl fmt::Display for StatusWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04X}", self.0)
    }
}
