//! PIN objects with retry counters, reusable by every applet.
//!
//! Format (after PIV, NIST SP 800-73-4 part 2 section 2.4.3): a PIN or PUK travels as an
//! 8-byte *reference data block*: 4 to 8 bytes of value, none of them `FF`, padded with `FF` to
//! eight bytes (a PUK is 8 bytes, unpadded, from 4 up if the issuer chooses shorter). Hosts
//! usually send ASCII digits; the card accepts any byte except `FF`.
//!
//! Rules:
//! * The retry counter is decremented and **committed before** the comparison (see
//!   [`Pin::begin`]): cutting power during the comparison costs a try, it never saves one.
//! * A correct value resets the counter to its maximum.
//! * At zero the object is blocked: `6983`, whatever the value sent.
//! * A wrong value answers `63Cx`, x = tries left (0 on the last one).
//! * Comparison is constant-time over the whole padded block.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tessera_apdu::{Command, StatusWord};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of a reference data block.
pub const BLOCK_LEN: usize = 8;
/// Shortest PIN or PUK value.
pub const MIN_LEN: usize = 4;
/// Largest retry limit (the `63Cx` nibble).
pub const MAX_TRIES: u8 = 15;

/// A PIN or PUK value in its padded 8-byte block form, checked for the format rules.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct PinBlock([u8; BLOCK_LEN]);

impl std::fmt::Debug for PinBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinBlock(redacted)")
    }
}

impl PinBlock {
    /// Parses an 8-byte block: 4 to 8 non-`FF` bytes then `FF` padding. `6700` if not 8
    /// bytes, `6A80` if the padding or value length is wrong.
    pub fn parse(bytes: &[u8]) -> Result<PinBlock, StatusWord> {
        let block: [u8; BLOCK_LEN] = bytes.try_into().map_err(|_| StatusWord::WRONG_LENGTH)?;
        let len = block.iter().position(|&b| b == 0xFF).unwrap_or(BLOCK_LEN);
        if len < MIN_LEN || block[len..].iter().any(|&b| b != 0xFF) {
            return Err(StatusWord::INCORRECT_DATA);
        }
        Ok(PinBlock(block))
    }

    /// Pads a value (4 to 8 bytes, no `FF`) into a block; for hosts and tests.
    pub fn from_value(value: &[u8]) -> Result<PinBlock, StatusWord> {
        if value.len() > BLOCK_LEN {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let mut block = [0xFF; BLOCK_LEN];
        block[..value.len()].copy_from_slice(value);
        PinBlock::parse(&block)
    }

    /// The 8 bytes as sent.
    pub fn as_bytes(&self) -> &[u8; BLOCK_LEN] {
        &self.0
    }

    fn ct_eq(&self, other: &PinBlock) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

/// A PIN (or PUK): value, tries left and the retry limit. Part of an applet's persistent state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    value: PinBlock,
    tries_left: u8,
    max_tries: u8,
}

/// Proof that a try was counted; consumed by [`Pin::finish`]. Commit the applet's state
/// between [`Pin::begin`] and [`Pin::finish`].
#[must_use = "commit the decremented counter, then call Pin::finish"]
#[derive(Debug)]
pub struct PinAttempt(());

impl Pin {
    /// A PIN set to `value` with `max_tries` tries (1 to 15).
    pub fn new(value: PinBlock, max_tries: u8) -> Result<Pin, StatusWord> {
        if !(1..=MAX_TRIES).contains(&max_tries) {
            return Err(StatusWord::INCORRECT_DATA);
        }
        Ok(Pin { value, tries_left: max_tries, max_tries })
    }

    /// Tries left before the PIN blocks.
    pub fn tries_left(&self) -> u8 {
        self.tries_left
    }

    /// The retry limit.
    pub fn max_tries(&self) -> u8 {
        self.max_tries
    }

    /// True when no try is left.
    pub fn is_blocked(&self) -> bool {
        self.tries_left == 0
    }

    /// The status word describing the counter: `63Cx`, or `6983` when blocked.
    pub fn status(&self) -> StatusWord {
        if self.is_blocked() {
            StatusWord::AUTH_METHOD_BLOCKED
        } else {
            StatusWord::tries_left(self.tries_left)
        }
    }

    /// Starts a verification: `6983` if blocked, else decrements the counter. The caller must
    /// commit its state before calling [`Pin::finish`].
    pub fn begin(&mut self) -> Result<PinAttempt, StatusWord> {
        if self.is_blocked() {
            return Err(StatusWord::AUTH_METHOD_BLOCKED);
        }
        self.tries_left -= 1;
        Ok(PinAttempt(()))
    }

    /// Compares `candidate` in constant time. Correct: the counter is reset to the maximum.
    /// Wrong: `63Cx` with the tries left (the decrement already happened in `begin`).
    pub fn finish(&mut self, attempt: PinAttempt, candidate: &PinBlock) -> Result<(), StatusWord> {
        let PinAttempt(()) = attempt;
        if self.value.ct_eq(candidate) {
            self.tries_left = self.max_tries;
            Ok(())
        } else {
            Err(StatusWord::tries_left(self.tries_left))
        }
    }

    /// Sets a new value and resets the counter (after the caller checked authorisation).
    pub fn set(&mut self, value: PinBlock) {
        self.value = value;
        self.tries_left = self.max_tries;
    }
}

/// Which reference data a PIN command addresses (P2, ISO/IEC 7816-4 specific reference data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinRef {
    /// P2 `81`: the PIN.
    Pin,
    /// P2 `82`: the PUK.
    Puk,
}

/// The ISO/IEC 7816-4 PIN commands, parsed once from the APDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinCommand {
    /// VERIFY `00 20 00 P2` with a block: check the value.
    Verify(PinRef, PinBlock),
    /// VERIFY `00 20 00 P2` without data: report the status (`9000` if verified in this
    /// session, else `63Cx`/`6983`).
    Status(PinRef),
    /// VERIFY `00 20 FF P2` without data: drop the verified status.
    Reset(PinRef),
    /// CHANGE REFERENCE DATA `00 24 00 P2` with old block || new block.
    Change(PinRef, PinBlock, PinBlock),
    /// RESET RETRY COUNTER `00 2C 00 81` with PUK block || new PIN block.
    Unblock(PinBlock, PinBlock),
}

/// INS of VERIFY.
pub const INS_VERIFY: u8 = 0x20;
/// INS of CHANGE REFERENCE DATA.
pub const INS_CHANGE_REFERENCE_DATA: u8 = 0x24;
/// INS of RESET RETRY COUNTER.
pub const INS_RESET_RETRY_COUNTER: u8 = 0x2C;

fn pin_ref(p2: u8) -> Result<PinRef, StatusWord> {
    match p2 {
        0x81 => Ok(PinRef::Pin),
        0x82 => Ok(PinRef::Puk),
        _ => Err(StatusWord::REFERENCED_DATA_NOT_FOUND),
    }
}

fn two_blocks(data: &[u8]) -> Result<(PinBlock, PinBlock), StatusWord> {
    if data.len() != 2 * BLOCK_LEN {
        return Err(StatusWord::WRONG_LENGTH);
    }
    let (a, b) = data.split_at(BLOCK_LEN);
    Ok((PinBlock::parse(a)?, PinBlock::parse(b)?))
}

impl PinCommand {
    /// Parses a VERIFY, CHANGE REFERENCE DATA or RESET RETRY COUNTER command; `None` for
    /// another INS. Errors: `6A86` (P1), `6A88` (unknown reference), `6700`/`6A80` (data).
    pub fn parse(cmd: &Command) -> Option<Result<PinCommand, StatusWord>> {
        let parsed = match cmd.ins {
            INS_VERIFY => (|| {
                let r = pin_ref(cmd.p2)?;
                match (cmd.p1, cmd.data.is_empty()) {
                    (0x00, true) => Ok(PinCommand::Status(r)),
                    (0x00, false) => Ok(PinCommand::Verify(r, PinBlock::parse(&cmd.data)?)),
                    (0xFF, true) => Ok(PinCommand::Reset(r)),
                    (0xFF, false) => Err(StatusWord::WRONG_LENGTH),
                    _ => Err(StatusWord::INCORRECT_P1P2),
                }
            })(),
            INS_CHANGE_REFERENCE_DATA => (|| {
                let r = pin_ref(cmd.p2)?;
                if cmd.p1 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                let (old, new) = two_blocks(&cmd.data)?;
                Ok(PinCommand::Change(r, old, new))
            })(),
            INS_RESET_RETRY_COUNTER => (|| {
                if cmd.p2 != 0x81 {
                    return Err(StatusWord::REFERENCED_DATA_NOT_FOUND);
                }
                if cmd.p1 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                let (puk, new) = two_blocks(&cmd.data)?;
                Ok(PinCommand::Unblock(puk, new))
            })(),
            _ => return None,
        };
        Some(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(v: &[u8]) -> PinBlock {
        PinBlock::from_value(v).unwrap()
    }

    #[test]
    fn block_format_rules() {
        assert_eq!(block(b"1234").as_bytes(), b"1234\xFF\xFF\xFF\xFF");
        assert!(PinBlock::parse(b"12345678").is_ok());
        assert_eq!(PinBlock::parse(b"123\xFF\xFF\xFF\xFF\xFF"), Err(StatusWord::INCORRECT_DATA));
        assert_eq!(PinBlock::parse(b"1234\xFF5\xFF\xFF"), Err(StatusWord::INCORRECT_DATA));
        assert_eq!(PinBlock::parse(b"1234"), Err(StatusWord::WRONG_LENGTH));
        assert_eq!(PinBlock::from_value(b"123456789"), Err(StatusWord::INCORRECT_DATA));
    }

    #[test]
    fn counter_decrements_before_compare_and_resets_on_success() {
        let mut pin = Pin::new(block(b"1234"), 3).unwrap();
        let a = pin.begin().unwrap();
        assert_eq!(pin.tries_left(), 2, "decremented before the comparison");
        assert_eq!(pin.finish(a, &block(b"0000")), Err(StatusWord::from_bytes(0x63, 0xC2)));
        let a = pin.begin().unwrap();
        assert_eq!(pin.finish(a, &block(b"1234")), Ok(()));
        assert_eq!(pin.tries_left(), 3);
        for left in [2u8, 1, 0] {
            let a = pin.begin().unwrap();
            assert_eq!(pin.finish(a, &block(b"9999")), Err(StatusWord::tries_left(left)));
        }
        assert!(pin.is_blocked());
        assert_eq!(pin.begin().map(|_| ()), Err(StatusWord::AUTH_METHOD_BLOCKED));
        assert_eq!(pin.status(), StatusWord::AUTH_METHOD_BLOCKED);
        pin.set(block(b"5678"));
        assert_eq!(pin.tries_left(), 3);
    }

    #[test]
    fn parse_commands() {
        let c = |p1, p2, data: &[u8]| {
            PinCommand::parse(&Command::new(0, 0x20, p1, p2).with_data(data.to_vec())).unwrap()
        };
        assert_eq!(c(0, 0x81, b""), Ok(PinCommand::Status(PinRef::Pin)));
        assert_eq!(c(0xFF, 0x81, b""), Ok(PinCommand::Reset(PinRef::Pin)));
        assert_eq!(c(0, 0x83, b""), Err(StatusWord::REFERENCED_DATA_NOT_FOUND));
        assert_eq!(c(1, 0x81, b""), Err(StatusWord::INCORRECT_P1P2));
        assert_eq!(c(0, 0x81, b"12"), Err(StatusWord::WRONG_LENGTH));
        let unblock = Command::new(0, 0x2C, 0, 0x81).with_data(b"12345678".to_vec());
        assert_eq!(PinCommand::parse(&unblock), Some(Err(StatusWord::WRONG_LENGTH)));
        assert_eq!(PinCommand::parse(&Command::new(0, 0xA4, 0, 0)), None);
    }
}
