//! The home card as the home server drives it: PIN2, "end", and its TLS client key.

use std::sync::{Arc, Mutex};

use tessera_host::home::{CardError, Clock, HomeCardSession, IdleTimer, SystemClock};
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::{ClientKey, KeyError};

/// What PIN2 verification on the home card answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// Wrong PIN; this many tries left.
    #[error("wrong PIN2 ({0} tries left)")]
    Wrong(u8),
    /// Blocked after three wrong PINs (needs the PUK).
    #[error("the home card is blocked (PIN2 wrong three times); unblock it with the PUK")]
    Blocked,
    /// The card failed.
    #[error("home card: {0}")]
    Card(String),
}

/// The home card as the home server drives it: its TLS client key (for market handshakes)
/// and the remote-access states of Fig. 6.
pub trait HomeCard: crate::handover::MarketKey {
    /// Verifies PIN2; on success the card is in the encryption-enabled state.
    fn verify_pin2(&self, pin: &[u8]) -> Result<(), PinError>;
    /// The user's "end", or its control connection closing: back to the remote-access wait
    /// state.
    fn end(&self) -> Result<(), KeyError>;
    /// The idle fallback (Fig. 6): if the card has been enabled and unused for
    /// [`super::IDLE_LIMIT`], back to the wait state; true if it went back now.
    fn poll_idle(&self) -> bool;
    /// Whether the card is still enabled after the idle check; records a use when it is.
    fn touch(&self) -> bool;
}

/// A home card in software (tests and demos): a [`crate::SoftwareKey`], PIN2 with three
/// tries, and the Fig. 6 states (it signs only when PIN2 has been accepted since the last
/// "end" and it has not been idle for ten minutes, on the host's [`IdleTimer`]).
pub struct SoftwareHomeCard {
    key: crate::SoftwareKey,
    pin: zeroize::Zeroizing<Vec<u8>>,
    /// Tries left, and the idle timer (running while enabled).
    state: Mutex<(u8, IdleTimer<Arc<dyn Clock>>)>,
}

impl SoftwareHomeCard {
    /// PIN2 tries before the card blocks.
    pub const TRIES: u8 = 3;

    /// A card with `key` whose PIN2 is `pin`, its idle limit on the system clock.
    pub fn new(key: crate::SoftwareKey, pin: &[u8]) -> Self {
        Self::with_clock(key, pin, Arc::new(SystemClock))
    }

    /// [`SoftwareHomeCard::new`] with its idle limit on `clock`.
    pub fn with_clock(key: crate::SoftwareKey, pin: &[u8], clock: Arc<dyn Clock>) -> Self {
        SoftwareHomeCard {
            key,
            pin: zeroize::Zeroizing::new(pin.to_vec()),
            state: Mutex::new((Self::TRIES, IdleTimer::new(clock))),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (u8, IdleTimer<Arc<dyn Clock>>)> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the card is in the encryption-enabled state (as last checked: the idle
    /// fallback happens on the next use or [`HomeCard::poll_idle`]).
    pub fn enabled(&self) -> bool {
        self.state().1.is_running()
    }

    /// Whether the card signs now: enabled after the idle check, the use recorded.
    fn usable(&self) -> Result<(), KeyError> {
        if self.touch() { Ok(()) } else { Err(KeyError::Locked) }
    }

    /// How many signatures it has made.
    pub fn signatures(&self) -> usize {
        self.key.signatures()
    }
}

impl ClientKey for SoftwareHomeCard {
    fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        self.key.certificate_chain()
    }

    fn sign_tls13(&self, transcript_hash: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        self.usable()?;
        self.key.sign_tls13(transcript_hash)
    }
}

impl crate::handover::MarketKey for SoftwareHomeCard {
    fn sign_tls12(&self, handshake_messages: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.usable()?;
        self.key.sign_tls12(handshake_messages)
    }
}

impl HomeCard for SoftwareHomeCard {
    fn verify_pin2(&self, pin: &[u8]) -> Result<(), PinError> {
        use subtle::ConstantTimeEq;
        let mut st = self.state();
        if st.0 == 0 {
            return Err(PinError::Blocked);
        }
        st.0 -= 1;
        if bool::from(pin.ct_eq(&self.pin)) {
            st.0 = Self::TRIES;
            st.1.start();
            Ok(())
        } else {
            st.1.stop();
            match st.0 {
                0 => Err(PinError::Blocked),
                n => Err(PinError::Wrong(n)),
            }
        }
    }

    fn end(&self) -> Result<(), KeyError> {
        self.state().1.stop();
        Ok(())
    }

    fn poll_idle(&self) -> bool {
        self.state().1.expire().is_some()
    }

    fn touch(&self) -> bool {
        let mut st = self.state();
        if st.1.expire().is_some() {
            return false;
        }
        st.1.touch();
        st.1.is_running()
    }
}

/// The real home card as [`CardHome`] drives it: the host's session with the idle fallback.
pub type CardSession = HomeCardSession<Box<dyn tessera_host::CardChannel + Send>, Arc<dyn Clock>>;

/// The real home card (`home` applet) behind any card channel, through
/// [`tessera_host::home::HomeCardSession`] (which keeps the ten-minute idle fallback). Its
/// certificate is read once; PIN2 arrives as typed (4 to 8 characters) and is padded into
/// the card's PIN block here.
pub struct CardHome {
    card: Mutex<CardSession>,
    chain: Vec<CertificateDer<'static>>,
}

impl CardHome {
    /// Takes a home card whose applet is selected and in the remote-access wait state (PIN1
    /// verified); reads its TLS certificate. The idle limit runs on the system clock.
    pub fn new(
        card: tessera_host::home::HomeCard<Box<dyn tessera_host::CardChannel + Send>>,
    ) -> Result<Self, CardError> {
        Self::with_clock(card, Arc::new(SystemClock))
    }

    /// [`CardHome::new`] with the idle limit on `clock`.
    pub fn with_clock(
        mut card: tessera_host::home::HomeCard<Box<dyn tessera_host::CardChannel + Send>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CardError> {
        let cert = card.certificate()?;
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        Ok(CardHome { card: Mutex::new(HomeCardSession::new(card, clock)), chain })
    }

    /// The card's session (operations through it apply the idle fallback).
    pub(crate) fn card(&self) -> std::sync::MutexGuard<'_, CardSession> {
        self.card.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs a card operation (APDUs, possibly over PC/SC) so that it does not stall an async
/// worker: on a multi-threaded tokio runtime's worker (relay mode's TLS client signs from
/// inside the runtime) the worker hands its other tasks over first; elsewhere it just runs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn key_error(e: CardError) -> KeyError {
    match e {
        CardError::Locked | CardError::IdleFallback(_) => KeyError::Locked,
        other => KeyError::Card(other.to_string()),
    }
}

impl ClientKey for CardHome {
    fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.clone()
    }

    fn sign_tls13(&self, transcript_hash: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        blocking(|| self.card().sign_tls13(transcript_hash)).map_err(key_error)
    }
}

impl crate::handover::MarketKey for CardHome {
    fn sign_tls12(&self, handshake_messages: &[u8]) -> Result<Vec<u8>, KeyError> {
        blocking(|| self.card().sign_tls12(handshake_messages)).map_err(key_error)
    }
}

impl HomeCard for CardHome {
    fn verify_pin2(&self, pin: &[u8]) -> Result<(), PinError> {
        let block = tessera_card::pin::PinBlock::from_value(pin)
            .map_err(|_| PinError::Card("PIN2 must be 4 to 8 characters".into()))?;
        match blocking(|| self.card().verify_pin2(&block)) {
            Ok(()) => Ok(()),
            Err(CardError::WrongPin { tries_left: 0 }) | Err(CardError::Blocked) => {
                Err(PinError::Blocked)
            }
            Err(CardError::WrongPin { tries_left }) => Err(PinError::Wrong(tries_left)),
            Err(e) => Err(PinError::Card(e.to_string())),
        }
    }

    fn end(&self) -> Result<(), KeyError> {
        blocking(|| self.card().end()).map_err(key_error)
    }

    fn poll_idle(&self) -> bool {
        blocking(|| self.card().poll()).unwrap_or_else(|e| {
            // END failed (the card is gone): it is not enabled for anyone either way.
            tracing::warn!(error = %e, "home card: idle fallback END failed");
            true
        })
    }

    fn touch(&self) -> bool {
        blocking(|| {
            let mut session = self.card();
            session.card().is_ok() && session.is_enabled()
        })
    }
}
