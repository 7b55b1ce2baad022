//! Terminal side of tessera: how software reaches a card.
//!
//! - [`CardChannel`]: the transport-only view of a card that every terminal flow speaks to;
//!   `61xx`/`6Cxx` handling and APDU tracing ([`trace`]) are built in.
//! - [`InProcessChannel`]: a card simulated in this process (any [`VirtualCard`]).
//! - [`PcscChannel`]: a card in a PC/SC reader (pcscd), real or virtual.
//! - [`SecureChannel`]: a GlobalPlatform SCP03 session over any channel.
//! - [`pairing`]: the secure terminal (seed 002): certification, pairing with a card,
//!   per-insertion authentication and the services behind it.
//! - [`update`]: remote card data update (seed 000): issuer check against a signed issuer
//!   list, PIN, device authentication relayed to the server, packages and receipts.
//! - [`home`]: the home card of the authentication proxy and e-money (seed 004): typed
//!   client, enrolment, the idle fallback with an injectable clock.
//! - [`access`]: the access card (control-channel key, pinned home server, profiles).
//! - [`pcscd`]: a private pcscd for tests and benchmarks.
//! - [`vpcd`]: the bridge that puts a [`VirtualCard`] into pcscd's virtual reader (vsmartcard
//!   vpcd), so every PC/SC program sees it as a card in a reader.

//!
//! ```
//! use tessera_apdu::{Command, StatusWord};
//! use tessera_card::{Card, CardOptions};
//! use tessera_host::{CardChannel, InProcessChannel};
//!
//! let mut channel = InProcessChannel::new(Card::in_memory(CardOptions::default()));
//! let aid = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];
//! let select = Command::new(0x00, 0xA4, 0x04, 0x00).with_data(aid).with_le(256);
//! assert_eq!(channel.transmit(&select)?.sw, StatusWord::SUCCESS);
//! let challenge = channel.transmit(&Command::new(0x00, 0x84, 0x00, 0x00).with_le(8))?;
//! assert_eq!(challenge.data.len(), 8);
//! # Ok::<(), tessera_host::ChannelError>(())
//! ```

#![forbid(unsafe_code)]

pub mod access;
mod channel;
pub mod home;
mod in_process;
pub mod keyring;
pub mod pairing;
pub mod pcscd;
mod reader;
mod secure;
pub mod trace;
pub mod update;
pub mod vault;
mod virtual_card;
pub mod vpcd;

pub use channel::{CardChannel, ChannelError};
pub use in_process::InProcessChannel;
pub use reader::{PcscChannel, ReaderInfo, list_readers};
pub use secure::{Handshake, SecureChannel, SecureChannelError};
pub use virtual_card::{ECHO_ATR, EchoCard, VirtualCard};
