//! The TLS pieces a card or a terminal computes itself, outside a TLS library.
//!
//! - [`certificate_verify`]: the content a TLS client's CertificateVerify signs, built by the
//!   card that holds the client key from the handshake's transcript, so the card never signs an
//!   arbitrary digest handed to it.
//! - [`record`]: TLS record protection (AEAD) with traffic keys handed over from another party's
//!   handshake, for a terminal that speaks to a TLS server it never shook hands with.

pub mod certificate_verify;
pub mod record;
