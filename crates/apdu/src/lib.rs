//! ISO/IEC 7816-4 application protocol data units.
//!
//! This crate knows the byte layout of command and response APDUs (cases 1 to 4, short and
//! extended length), status words, command and response chaining and BER-TLV. It does no I/O:
//! the card runtime parses with it at its edge, the host encodes with it before a transmit.

#![forbid(unsafe_code)]

mod command;
mod response;
mod status;

pub use command::{ApduError, Command};
pub use response::Response;
pub use status::StatusWord;
