//! Home-card e-money (seed 004, claims 4-6, Figs. 17-20; `docs/emoney.md`): the reference
//! market and bank servers, the home server's side of payment, refill and cancellation, and
//! the settlement notice by e-mail.
//!
//! - [`market`]: `tessera market serve`: catalogue, orders, charge notices, payment-token
//!   verification against the issuer CA (once only, per-card counters), settlement and
//!   cancellation within [`CANCEL_WINDOW`] of the market's own signed time.
//! - [`bank`]: `tessera bank serve`: accounts, single-use refill vouchers bound to a card, the
//!   account debited exactly once on the card's signed acknowledgement.
//! - [`wallet`]: the card operations behind a [`wallet::WalletPort`] (the home card on the
//!   home server, or reached over the control channel), and the three flows: purchase,
//!   refill, cancellation.
//! - [`notice`]: the settlement digest (READ LOG from the last counter mailed) sent over SMTP.
//!
//! Market and bank speak JSON over HTTPS with client certificates from the issuer CA
//! ([`https`]); every binary value (signed messages, certificates) travels as lower-case hex.
//! The signed messages are those of `tessera_proto::home` plus the market's [`Settlement`].

pub mod bank;
pub mod https;
pub mod market;
pub mod notice;
pub mod wallet;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tessera_crypto::ecdsa::{PublicKey, Signature, SigningKey};
use tessera_crypto::x509::{self, Certificate, Role};
pub use tessera_proto::home::Settlement;
use tessera_proto::home::{Message, Signed};

/// How long after its charge notice a payment may be cancelled (Fig. 20: seven days),
/// measured by the market on its own signed times.
pub const CANCEL_WINDOW: i64 = 7 * 86_400;

/// Wall-clock time in Unix seconds, injectable so the seven-day window is tested without
/// sleeping.
pub trait UnixClock: Send + Sync + 'static {
    /// Seconds since 1970-01-01 UTC.
    fn now(&self) -> i64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemUnixClock;

impl UnixClock for SystemUnixClock {
    fn now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}

/// A clock set by hand (tests, the demo); clones share the time.
#[derive(Debug, Clone)]
pub struct FixedClock(Arc<AtomicI64>);

impl FixedClock {
    /// A clock standing at `now`.
    pub fn new(now: i64) -> FixedClock {
        FixedClock(Arc::new(AtomicI64::new(now)))
    }

    /// Moves it forward by `seconds`.
    pub fn advance(&self, seconds: i64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }
}

impl UnixClock for FixedClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Why an e-money operation failed. Refusals carry the party's reason; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum EmoneyError {
    /// The request is malformed (bad hex, a message that does not parse, an unknown item).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A signature, certificate or binding does not verify.
    #[error("refused: {0}")]
    Refused(String),
    /// The order, voucher or account does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The operation conflicts with what happened before (paid already, cancelled already,
    /// a counter not above the last seen, outside the window, not enough funds).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    /// The home card refused or failed.
    #[error("home card: {0}")]
    Card(String),
    /// The network or the peer's HTTP failed.
    #[error("transport: {0}")]
    Transport(String),
    /// Setting up a server or client failed (certificates, keys, TLS).
    #[error("setup: {0}")]
    Setup(String),
}

impl EmoneyError {
    /// The HTTP status a server answers for it.
    pub fn status(&self) -> u16 {
        match self {
            EmoneyError::BadRequest(_) => 400,
            EmoneyError::Refused(_) => 403,
            EmoneyError::NotFound(_) => 404,
            EmoneyError::Conflict(_) => 409,
            EmoneyError::Card(_) | EmoneyError::Transport(_) => 502,
            EmoneyError::Database(_) | EmoneyError::Setup(_) => 500,
        }
    }

    /// The reason alone, without the kind (what a server puts in its JSON error).
    pub fn reason(&self) -> String {
        match self {
            EmoneyError::BadRequest(m)
            | EmoneyError::Refused(m)
            | EmoneyError::NotFound(m)
            | EmoneyError::Conflict(m)
            | EmoneyError::Card(m)
            | EmoneyError::Transport(m)
            | EmoneyError::Setup(m) => m.clone(),
            EmoneyError::Database(e) => e.to_string(),
        }
    }

    /// The error an HTTP answer with `status` and `message` stands for (the inverse of
    /// [`EmoneyError::status`], for clients).
    pub fn from_status(status: u16, message: String) -> EmoneyError {
        match status {
            400 => EmoneyError::BadRequest(message),
            403 => EmoneyError::Refused(message),
            404 => EmoneyError::NotFound(message),
            409 => EmoneyError::Conflict(message),
            _ => EmoneyError::Transport(format!("HTTP {status}: {message}")),
        }
    }
}

/// The result type of this module.
pub type Result<T> = std::result::Result<T, EmoneyError>;

/// A market or bank: its id (its certificate's common name, which the home card knows from
/// TRUST), its signing key and the certificate (role server, from the issuer CA) the key
/// belongs to. The same key serves its TLS server identity.
pub struct Party {
    /// The id in the signed messages.
    pub id: String,
    /// The signing key.
    pub key: SigningKey,
    /// Its certificate.
    pub certificate: Certificate,
}

impl Party {
    /// Checks that `key` belongs to `certificate` (role server) and takes its common name.
    pub fn new(key: SigningKey, certificate: Certificate) -> Result<Party> {
        let info = certificate.info().map_err(|e| EmoneyError::Setup(e.to_string()))?;
        if info.public_key != key.public_key() {
            return Err(EmoneyError::Setup("the key does not match the certificate".into()));
        }
        if !info.roles.contains(&Role::Server) {
            return Err(EmoneyError::Setup("the certificate lacks the server role".into()));
        }
        if info.subject_cn.is_empty() || info.subject_cn.len() > tessera_proto::home::MAX_ID_LEN {
            return Err(EmoneyError::Setup("the common name must have 1 to 32 bytes".into()));
        }
        Ok(Party { id: info.subject_cn, key, certificate })
    }

    /// Signs `message` (labelled).
    pub fn sign<M: Message>(&self, message: M) -> Signed<M> {
        let signature = self.key.sign(&message.signed_bytes()).to_bytes();
        Signed { message, signature }
    }
}

/// Verifies `signed` under `key`.
pub fn verify<M: Message>(key: &PublicKey, signed: &Signed<M>) -> Result<()> {
    let signature = Signature::from_bytes(&signed.signature)
        .map_err(|_| EmoneyError::Refused("malformed signature".into()))?;
    key.verify(&signed.message.signed_bytes(), &signature)
        .map_err(|_| EmoneyError::Refused(format!("bad signature on {}", M::LABEL)))
}

/// Checks a card's payment certificate (DER) against the issuer CA at `now` (role payment) and
/// that its common name is `card`; returns its public key.
pub fn card_key(issuer: &Certificate, der: &[u8], card: &[u8], now: i64) -> Result<PublicKey> {
    let cert = Certificate::from_der(der.to_vec())
        .map_err(|e| EmoneyError::BadRequest(format!("payment certificate: {e}")))?;
    let info = x509::verify_chain(&cert, &[], issuer, now, Some(Role::Payment))
        .map_err(|e| EmoneyError::Refused(format!("payment certificate: {e}")))?;
    if info.subject_cn.as_bytes() != card {
        return Err(EmoneyError::Refused("the payment certificate is another card's".into()));
    }
    Ok(info.public_key)
}

/// Hex of a signed message.
pub fn to_hex<M: Message>(signed: &Signed<M>) -> String {
    hex::encode(signed.to_bytes())
}

/// Parses a hex signed message.
pub fn from_hex<M: Message>(s: &str, what: &str) -> Result<Signed<M>> {
    let bytes = hex::decode(s).map_err(|_| EmoneyError::BadRequest(format!("{what}: not hex")))?;
    Signed::parse(&bytes).map_err(|e| EmoneyError::BadRequest(format!("{what}: {e}")))
}

/// Parses hex bytes.
pub fn bytes_from_hex(s: &str, what: &str) -> Result<Vec<u8>> {
    hex::decode(s).map_err(|_| EmoneyError::BadRequest(format!("{what}: not hex")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn settlement_round_trips_and_refuses_garbage() {
        let s = Settlement {
            market: b"m".to_vec(),
            card: b"c".to_vec(),
            counter: 3,
            order: b"o-1".to_vec(),
            amount: 99,
            time: -1,
        };
        let signed = Signed { message: s, signature: [1; 64] };
        assert_eq!(Signed::<Settlement>::parse(&signed.to_bytes()).unwrap(), signed);
        let bytes = signed.to_bytes();
        for n in 0..bytes.len() - 64 {
            assert!(Signed::<Settlement>::parse(&bytes[..n]).is_err());
        }
        assert!(signed.message.signed_bytes().starts_with(b"tessera/market/settled\0"));
    }

    #[test]
    fn the_fixed_clock_moves_only_when_told() {
        let c = FixedClock::new(100);
        let d = c.clone();
        d.advance(CANCEL_WINDOW);
        assert_eq!(c.now(), 100 + CANCEL_WINDOW);
    }
}
