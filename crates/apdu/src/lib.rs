//! ISO/IEC 7816-4 application protocol data units.
//!
//! This crate knows the byte layout of command and response APDUs (cases 1 to 4, short and
//! extended length), status words, command and response chaining and BER-TLV. It does no I/O:
//! the card runtime parses with it at its edge ([`CardApduLayer`]), the host exchanges commands
//! through a transmit function it supplies ([`Exchange`]).
//!
//! A host on a short-only link and a card, wired together in process:
//!
//! ```
//! use std::convert::Infallible;
//! use tessera_apdu::{CardApduLayer, Command, Exchange, Response};
//!
//! let mut card = CardApduLayer::default();
//! // An applet answering its command data twice.
//! let applet = |cmd: &Command| Response::ok(cmd.data.repeat(2));
//! let cmd = Command::new(0x00, 0xCA, 0x00, 0x66).with_data(vec![0xAB; 600]).with_le(65536);
//! // 3 chained parts go out, 1200 bytes come back through 61xx / GET RESPONSE.
//! let response = Exchange::short_only()
//!     .run(&cmd, |apdu| Ok::<_, Infallible>(card.process(apdu, applet).to_bytes()))
//!     .unwrap();
//! assert_eq!(response, Response::ok(vec![0xAB; 1200]));
//! ```

#![forbid(unsafe_code)]

mod card;
mod chain;
mod command;
mod exchange;
pub mod fuzzing;
mod get_response;
mod response;
mod status;
pub mod tlv;

pub use card::CardApduLayer;
pub use chain::{ChainAssembler, ChainError, Chained, DEFAULT_MAX_CHAIN_DATA};
pub use command::{
    ApduError, CLA_CHAINING, Command, EXTENDED_MAX_NC, EXTENDED_MAX_NE, INS_GET_RESPONSE,
    SHORT_MAX_NC, SHORT_MAX_NE,
};
pub use exchange::{DEFAULT_MAX_RESPONSE_LEN, DEFAULT_MAX_ROUND_TRIPS, Exchange, ExchangeError};
pub use get_response::ResponseBuffer;
pub use response::Response;
pub use status::StatusWord;
pub use tlv::{Tag, TagClass, Tlv, TlvError};
