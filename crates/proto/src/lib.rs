//! Wire formats shared by the card, the terminal and the server.
//!
//! Each applet's commands and responses are defined here once, as typed structs with their
//! encoders and parsers: the card parses its commands at its edge with these definitions, the
//! terminal and the server build them with the same ones, so the two sides cannot drift.
//!
//! - [`keyring`]: the hierarchical key-renewal applet (INTERNAL/EXTERNAL AUTHENTICATE, RENEW,
//!   the labelled cryptogram inputs).
//! - [`vault`]: the card-duplication applet (key group, wrapped export, age file keys).
//! - [`pairing`]: the secure-terminal pairing applet (enrolment, setup, per-insertion
//!   authentication) and the services reachable through it.
//! - [`proxy`]: the proxy's key handover (traffic keys the home server hands to the terminal).
//! - [`update`]: the remote card data update applet (device authentication, signed and
//!   sealed update packages, receipts).
//! - [`home`]: the home card (proxy TLS key, PIN1/PIN2 states, e-money wallet).
//! - [`access`]: the access card (control-channel TLS key, pinned home server, profiles).
//! - [`control`]: the proxy's control channel between terminal and home server (market
//!   sessions, PIN2, handed-over keys, relayed bytes).
//! - [`error`]: the one parse error of the applet protocols (keyring, update, vault).

#![forbid(unsafe_code)]

pub mod access;
pub mod control;
pub mod error;
pub mod home;
pub mod keyring;
pub mod pairing;
pub mod proxy;
pub mod update;
pub mod vault;
