//! The home card as the home server drives it: PIN2, "end", and its TLS client key.

use std::sync::Mutex;

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
    /// The user's "end" or the idle fallback: back to the remote-access wait state.
    fn end(&self) -> Result<(), KeyError>;
}

/// A home card in software (tests and demos): a [`crate::SoftwareKey`], PIN2 with three
/// tries, and the Fig. 6 states (it signs only when PIN2 has been accepted since the last
/// "end").
pub struct SoftwareHomeCard {
    key: crate::SoftwareKey,
    pin: zeroize::Zeroizing<Vec<u8>>,
    state: Mutex<(u8, bool)>,
}

impl SoftwareHomeCard {
    /// PIN2 tries before the card blocks.
    pub const TRIES: u8 = 3;

    /// A card with `key` whose PIN2 is `pin`.
    pub fn new(key: crate::SoftwareKey, pin: &[u8]) -> Self {
        SoftwareHomeCard {
            key,
            pin: zeroize::Zeroizing::new(pin.to_vec()),
            state: Mutex::new((Self::TRIES, false)),
        }
    }

    /// Whether the card is in the encryption-enabled state.
    pub fn enabled(&self) -> bool {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1
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
        if !self.enabled() {
            return Err(KeyError::Locked);
        }
        self.key.sign_tls13(transcript_hash)
    }
}

impl crate::handover::MarketKey for SoftwareHomeCard {
    fn sign_tls12(&self, handshake_messages: &[u8]) -> Result<Vec<u8>, KeyError> {
        if !self.enabled() {
            return Err(KeyError::Locked);
        }
        self.key.sign_tls12(handshake_messages)
    }
}

impl HomeCard for SoftwareHomeCard {
    fn verify_pin2(&self, pin: &[u8]) -> Result<(), PinError> {
        use subtle::ConstantTimeEq;
        let mut st = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if st.0 == 0 {
            return Err(PinError::Blocked);
        }
        st.0 -= 1;
        if bool::from(pin.ct_eq(&self.pin)) {
            *st = (Self::TRIES, true);
            Ok(())
        } else {
            st.1 = false;
            match st.0 {
                0 => Err(PinError::Blocked),
                n => Err(PinError::Wrong(n)),
            }
        }
    }

    fn end(&self) -> Result<(), KeyError> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1 = false;
        Ok(())
    }
}

/// The real home card (`home` applet) behind any card channel, through
/// [`tessera_host::home::HomeCard`]. Its certificate is read once; PIN2 arrives as typed
/// (4 to 8 characters) and is padded into the card's PIN block here.
pub struct CardHome {
    card: Mutex<tessera_host::home::HomeCard<Box<dyn tessera_host::CardChannel + Send>>>,
    chain: Vec<CertificateDer<'static>>,
}

impl CardHome {
    /// Takes a home card whose applet is selected and in the remote-access wait state (PIN1
    /// verified); reads its TLS certificate.
    pub fn new(
        mut card: tessera_host::home::HomeCard<Box<dyn tessera_host::CardChannel + Send>>,
    ) -> Result<Self, tessera_host::home::CardError> {
        let cert = card.certificate()?;
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        Ok(CardHome { card: Mutex::new(card), chain })
    }

    pub(crate) fn card(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        tessera_host::home::HomeCard<Box<dyn tessera_host::CardChannel + Send>>,
    > {
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

fn key_error(e: tessera_host::home::CardError) -> KeyError {
    match e {
        tessera_host::home::CardError::Locked | tessera_host::home::CardError::IdleFallback(_) => {
            KeyError::Locked
        }
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
            Err(tessera_host::home::CardError::WrongPin { tries_left: 0 })
            | Err(tessera_host::home::CardError::Blocked) => Err(PinError::Blocked),
            Err(tessera_host::home::CardError::WrongPin { tries_left }) => {
                Err(PinError::Wrong(tries_left))
            }
            Err(e) => Err(PinError::Card(e.to_string())),
        }
    }

    fn end(&self) -> Result<(), KeyError> {
        blocking(|| self.card().end()).map_err(key_error)
    }
}
