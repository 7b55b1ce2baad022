//! An SCP03 secure channel over any [`CardChannel`].

use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::CryptoError;
use tessera_crypto::rng::OsRng;
use tessera_crypto::scp03::{Scp03Host, SecurityLevel, StaticKeys};
use thiserror::Error;

use crate::channel::{CardChannel, ChannelError};

/// Why a secure channel could not be opened or used.
#[derive(Debug, Error)]
pub enum SecureChannelError {
    /// The transport failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The card refused a step of the handshake.
    #[error("the card refused {step}: {sw}")]
    Refused {
        /// INITIALIZE UPDATE or EXTERNAL AUTHENTICATE.
        step: &'static str,
        /// The card's status word.
        sw: StatusWord,
    },
    /// The cryptography failed: wrong keys (the card cryptogram does not verify), a bad
    /// R-MAC, or a closed session.
    #[error("secure channel: {0}")]
    Crypto(#[from] CryptoError),
}

/// An open GlobalPlatform SCP03 session: commands are wrapped (C-MAC, C-DECRYPTION as the
/// level says) before they reach the card and responses unwrapped after.
///
/// `61xx`/`6Cxx` handling happens below the secure messaging, on the wire, as the APDU layer
/// of a card does it.
pub struct SecureChannel<C> {
    inner: C,
    session: Scp03Host,
}

impl<C> std::fmt::Debug for SecureChannel<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureChannel").field("session", &self.session).finish_non_exhaustive()
    }
}

/// The two handshake commands and the card's answers, for callers that show them.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// INITIALIZE UPDATE as sent.
    pub initialize_update: Command,
    /// The card's answer.
    pub initialize_update_response: Response,
    /// EXTERNAL AUTHENTICATE as sent.
    pub external_authenticate: Command,
    /// The card's answer.
    pub external_authenticate_response: Response,
}

impl<C: CardChannel> SecureChannel<C> {
    /// A session whose handshake the caller ran under keys of its own (a pairing's, say): from
    /// here on it protects commands exactly as one opened with [`SecureChannel::open`].
    pub fn from_session(inner: C, session: Scp03Host) -> Self {
        Self { inner, session }
    }

    /// Runs INITIALIZE UPDATE and EXTERNAL AUTHENTICATE with `keys` on logical channel 0 of
    /// the security domain `sd_aid`, which must be selected already.
    pub fn open(
        mut inner: C,
        keys: &StaticKeys,
        level: SecurityLevel,
        sd_aid: &[u8],
    ) -> Result<(Self, Handshake), SecureChannelError> {
        let (handshake, init) = Scp03Host::initialize_update(keys.kvn, 0, &mut OsRng)?;
        let init_rsp = inner.transmit(&init)?;
        if init_rsp.sw != StatusWord::SUCCESS {
            return Err(SecureChannelError::Refused { step: "INITIALIZE UPDATE", sw: init_rsp.sw });
        }
        let hello = handshake.card_hello(&init_rsp)?;
        let (pending, ext) = hello.external_authenticate(keys, level, Some(sd_aid))?;
        let ext_rsp = inner.transmit(&ext)?;
        if ext_rsp.sw != StatusWord::SUCCESS {
            return Err(SecureChannelError::Refused {
                step: "EXTERNAL AUTHENTICATE",
                sw: ext_rsp.sw,
            });
        }
        let session = pending.finish(&ext_rsp)?;
        let shown = Handshake {
            initialize_update: init,
            initialize_update_response: init_rsp,
            external_authenticate: ext,
            external_authenticate_response: ext_rsp,
        };
        Ok((Self { inner, session }, shown))
    }

    /// Sends `command` protected, returns the unwrapped response. Status words the card sends
    /// without secure messaging (an error before unwrapping) come back as they are.
    pub fn transmit(&mut self, command: &Command) -> Result<Response, SecureChannelError> {
        self.transmit_shown(command).map(|(_, _, plain)| plain)
    }

    /// Like [`SecureChannel::transmit`], also returning the protected command as sent.
    pub fn transmit_shown(
        &mut self,
        command: &Command,
    ) -> Result<(Command, Response, Response), SecureChannelError> {
        let wrapped = self.session.wrap_command(command)?;
        let wire = self.inner.transmit(&wrapped)?;
        let plain = if wire.sw != StatusWord::SUCCESS && wire.data.is_empty() {
            // GlobalPlatform: an error status comes without R-MAC; the card ended the session.
            wire.clone()
        } else {
            self.session.unwrap_response(&wire)?
        };
        Ok((wrapped, wire, plain))
    }

    /// The session's security level, `None` once a failure ended it.
    pub fn security_level(&self) -> Option<SecurityLevel> {
        self.session.security_level()
    }

    /// The channel underneath.
    pub fn inner_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// Ends the session (on the host side) and returns the channel.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use tessera_card::{Card, CardOptions};

    use super::*;
    use crate::InProcessChannel;

    const ISD: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];

    fn selected_card() -> InProcessChannel<Card> {
        let mut ch = InProcessChannel::new(Card::in_memory(CardOptions::default()));
        let rsp = ch.transmit(&Command::new(0, 0xA4, 4, 0).with_data(ISD).with_le(256)).unwrap();
        assert_eq!(rsp.sw, StatusWord::SUCCESS);
        ch
    }

    #[test]
    fn session_with_the_blank_cards_test_keys_protects_commands() {
        let keys = StaticKeys::gp_test_keys(0x30);
        let (mut sc, shown) =
            SecureChannel::open(selected_card(), &keys, SecurityLevel::CMacCDec, &ISD).unwrap();
        assert_eq!(shown.initialize_update.ins, 0x50);
        assert_eq!(shown.external_authenticate.cla, 0x84);
        assert_eq!(sc.security_level(), Some(SecurityLevel::CMacCDec));
        let (wire, _, plain) =
            sc.transmit_shown(&Command::new(0x80, 0xCA, 0x9F, 0x70).with_le(256)).unwrap();
        assert_eq!(wire.cla, 0x84, "the command went out with secure messaging");
        assert_eq!(plain, Response::ok([0x9F, 0x70, 0x01, 0x01]));
    }

    #[test]
    fn a_borrowed_channel_outlives_its_session() {
        let mut card = selected_card();
        let keys = StaticKeys::gp_test_keys(0x30);
        let (sc, _) = SecureChannel::open(&mut card, &keys, SecurityLevel::CMac, &ISD).unwrap();
        drop(sc);
        // The card is still ours to use after the session object is gone.
        let rsp = card.transmit(&Command::new(0, 0x84, 0, 0).with_le(8)).unwrap();
        assert_eq!((rsp.sw, rsp.data.len()), (StatusWord::SUCCESS, 8));
    }

    #[test]
    fn wrong_keys_fail_on_the_card_cryptogram() {
        let wrong = || tessera_crypto::keys::AesKey::from_slice(&[0x11; 16]).unwrap();
        let keys = StaticKeys::new(wrong(), wrong(), wrong(), 0x30).unwrap();
        let err =
            SecureChannel::open(selected_card(), &keys, SecurityLevel::CMac, &ISD).unwrap_err();
        assert!(
            matches!(err, SecureChannelError::Crypto(CryptoError::AuthenticationFailed)),
            "{err}"
        );
    }
}
