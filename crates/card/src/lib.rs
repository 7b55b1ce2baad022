//! The tessera card runtime.
//!
//! A [`Card`] is a software smart card: it answers ISO/IEC 7816-4 command APDUs, keeps each
//! applet's persistent state in one card image (a file, or memory), commits state changes
//! atomically, and loses its volatile state (selected applet, challenge, security status) at
//! reset and power-off. It knows nothing about transport: a test calls [`Card::transmit`]
//! directly, the host crate serves it behind PC/SC.
//!
//! `docs/card-runtime.md` describes the commands, status words, PIN rules and image format.

#![forbid(unsafe_code)]

pub mod applet;
pub mod applets;
mod card;
pub mod device;
mod error;
pub mod image;
pub mod lifecycle;
mod options;
pub mod pin;
mod runtime;
pub mod script;
pub mod storage;
mod store;

pub use applet::{Applet, Context, PowerCut, TearDriver, TearError, TearScenario};
pub use card::{ATR, Card};
pub use error::CardError;
pub use lifecycle::LifeCycle;
pub use options::{CardOptions, OpenOptions};
