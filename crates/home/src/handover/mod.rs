//! The proxied TLS handshake and key handover (seed 004, claims 1, 2, 7, 10; Figs. 2, 10, 11,
//! 15, 16; `docs/proxy.md`, "Key handover").
//!
//! The home server runs a real TLS client handshake with the market server over a TCP stream
//! it opened ([`handshake`]): TLS 1.3 or 1.2, the market's certificate validated against the
//! configured roots, the client certificate's signature made by the home card through a
//! [`MarketKey`]. It then turns the connection into a kernel-style connection (rustls'
//! unbuffered client with secret extraction: nothing past the handshake is buffered or lost)
//! and hands the terminal a [`TrafficKeys`] plus the raw bytes it read past the handshake
//! ([`Handover::pending`]). From then on the home server only relays bytes; the terminal seals
//! and opens the records itself ([`records::KeyedConnection`]). Post-handshake messages the
//! terminal receives (session tickets, key updates) come back to the home server's
//! [`MarketSession`], which keeps the tickets (for the [`cache`]) and computes the updated
//! traffic keys.
//!
//! - [`config`]: the market-facing rustls client configuration (offered suites, roots, client
//!   key, session cache).
//! - [`handshake`](mod@handshake): the handshake over any `Read + Write` stream and the
//!   extraction of the keys.
//! - [`session`]: the home server's side after the handover (tickets, key updates).
//! - [`records`]: the terminal's side: TLS records with the handed-over keys.
//! - [`cache`]: the session cache of Fig. 16 (expiring; resumption needs no home card).
//! - Relay mode (¶0048), where the home server keeps the keys and re-encrypts, is not here:
//!   [`crate::server::RelayMarkets`] runs it under this module's [`MarketConfig`].
//! - [`partial`]: partial proxying (¶0089): the terminal shakes hands, only the
//!   CertificateVerify signature comes from the home card.

pub mod cache;
pub mod config;
pub mod handshake;
pub mod partial;
pub mod records;
pub mod session;

pub use cache::SessionCache;
pub use config::{MarketConfig, MarketKey};
pub use handshake::{Handover, connect_market, handshake};
pub use records::{Event, KeyedConnection};
pub use session::{MarketSession, PostHandshake};
pub use tessera_proto::proxy::TrafficKeys;

use std::io;

/// A market session could not be established or continued.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The TCP stream failed (including a read or write timeout).
    #[error("market connection: {0}")]
    Io(#[from] io::Error),
    /// The market closed the connection before the handshake completed.
    #[error("the market closed the connection during the handshake")]
    Closed,
    /// TLS failed (certificate not valid, alert received, bad message...).
    #[error("market TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The market sent bytes that are not TLS records.
    #[error("market sent a malformed TLS record: {0}")]
    Malformed(&'static str),
    /// The negotiated parameters cannot be handed to the terminal.
    #[error("cannot hand over: {0}")]
    Unsupported(&'static str),
    /// The handed-over keys or a record failed on the terminal's side.
    #[error("record protection: {0}")]
    Record(#[from] tessera_crypto::CryptoError),
    /// The market sent an alert or closed the session.
    #[error("market session ended: {0}")]
    Ended(String),
    /// The configuration could not be built.
    #[error("market TLS configuration: {0}")]
    Config(String),
}

impl From<tessera_proto::proxy::Malformed> for HandoverError {
    fn from(e: tessera_proto::proxy::Malformed) -> Self {
        HandoverError::Unsupported(e.0)
    }
}
