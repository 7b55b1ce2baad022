//! Card side of command chaining (ISO/IEC 7816-4 section 5.3.3, CLA bit b5 = `0x10`).
//!
//! A host that must send more data than one APDU carries sends a chain: every command but the
//! last has the chaining bit set in CLA, and all of them carry the same INS, P1 and P2. The card
//! answers `9000` to each non-last part and executes the assembled command when the last part
//! (chaining bit clear) arrives.

use thiserror::Error;

use crate::{CLA_CHAINING, Command, StatusWord};

/// Default limit on the assembled command data: the largest extended Nc.
pub const DEFAULT_MAX_CHAIN_DATA: usize = crate::command::EXTENDED_MAX_NC;

/// What [`ChainAssembler::feed`] made of one incoming command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chained {
    /// A non-last part was stored; the card answers `9000` with no data.
    Incomplete,
    /// A command to execute: either an unchained command passed through unchanged, or the
    /// assembled chain (header of the chain with the chaining bit cleared, all data in order,
    /// Le of the last part).
    Complete(Command),
}

/// Why a command was refused by the chain assembler. The chain in progress, if any, is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ChainError {
    /// A command arrived during a chain whose CLA (ignoring b5), INS, P1 or P2 differ from the
    /// chain's first part.
    #[error("command does not continue the pending chain")]
    Interrupted,
    /// The data of the chain (or of a single command) exceeds the configured limit.
    #[error("command data exceeds the card's limit of {limit} bytes")]
    TooLong {
        /// The limit in force.
        limit: usize,
    },
}

impl ChainError {
    /// The status word the card answers: `6883` (last command of the chain expected) for an
    /// interrupted chain, `6A84` (not enough memory space) for oversized data.
    pub fn status(&self) -> StatusWord {
        match self {
            ChainError::Interrupted => StatusWord::LAST_COMMAND_OF_CHAIN_EXPECTED,
            ChainError::TooLong { .. } => StatusWord::NOT_ENOUGH_MEMORY,
        }
    }
}

/// The header that every part of a chain must repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    cla: u8,
    ins: u8,
    p1: u8,
    p2: u8,
}

impl Header {
    fn of(cmd: &Command) -> Self {
        Self { cla: cmd.cla & !CLA_CHAINING, ins: cmd.ins, p1: cmd.p1, p2: cmd.p2 }
    }
}

/// Assembles chained commands on the card. Volatile: [`reset`](Self::reset) it at card reset.
///
/// Rules, applied to each command passed to [`feed`](Self::feed):
///
/// 1. No chain pending, chaining bit clear: the command passes through as
///    [`Chained::Complete`] unchanged, provided its data is within the limit.
/// 2. No chain pending, chaining bit set: a chain starts; its header is the command's CLA with
///    b5 cleared, INS, P1, P2. Answer: [`Chained::Incomplete`].
/// 3. Chain pending, same header (CLA compared with b5 cleared): the data is appended. With b5
///    set the answer is [`Chained::Incomplete`]; with b5 clear the chain ends and the assembled
///    command is returned, with the Le of this last part.
/// 4. Chain pending, any other header (another INS, other P1/P2, another logical channel, a
///    GET RESPONSE, a SELECT...): the chain is dropped and the command is refused with
///    [`ChainError::Interrupted`] (`6883`); it is not executed. The assembler is then idle, so the
///    host may send the command again.
/// 5. If the data held (chain so far plus this part, or a single command's data) would exceed
///    the limit, the chain is dropped and the command refused with [`ChainError::TooLong`]
///    (`6A84`).
///
/// Le on a non-last part is ignored (the response comes after the last part). Errors leave the
/// assembler idle; nothing else changes.
#[derive(Debug, Clone)]
pub struct ChainAssembler {
    limit: usize,
    pending: Option<(Header, Vec<u8>)>,
}

impl Default for ChainAssembler {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CHAIN_DATA)
    }
}

impl ChainAssembler {
    /// An assembler accepting at most `max_data` bytes of command data in total.
    pub fn new(max_data: usize) -> Self {
        Self { limit: max_data, pending: None }
    }

    /// The data limit in force.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// True while a chain has started and its last part has not arrived.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Drops any chain in progress (card reset, power-off, applet deselection).
    pub fn reset(&mut self) {
        self.pending = None;
    }

    /// Feeds one incoming command; see the type's documentation for the rules.
    pub fn feed(&mut self, cmd: Command) -> Result<Chained, ChainError> {
        let header = Header::of(&cmd);
        let chained = cmd.is_chained();
        let mut data = match self.pending.take() {
            None => Vec::new(),
            Some((start, data)) if start == header => data,
            Some(_) => return Err(ChainError::Interrupted),
        };
        if data.len().saturating_add(cmd.data.len()) > self.limit {
            return Err(ChainError::TooLong { limit: self.limit });
        }
        if chained {
            data.extend_from_slice(&cmd.data);
            self.pending = Some((header, data));
            return Ok(Chained::Incomplete);
        }
        if data.is_empty() {
            // Unchained command, or a chain whose earlier parts carried no data: no copy.
            return Ok(Chained::Complete(Command { cla: header.cla, ..cmd }));
        }
        data.extend_from_slice(&cmd.data);
        Ok(Chained::Complete(Command {
            cla: header.cla,
            ins: header.ins,
            p1: header.p1,
            p2: header.p2,
            data,
            le: cmd.le,
        }))
    }
}
