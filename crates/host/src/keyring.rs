//! The terminal side of the keyring (hierarchical key renewal): selects the applet, relays the
//! server's APDUs to the card, and offers typed calls built from [`tessera_proto::keyring`].
//!
//! The server decides everything (which slots authenticate, which form renews, what the
//! cryptograms are); the terminal only carries APDUs. [`KeyringTerminal`] implements
//! [`KeyringLink`] over any [`CardChannel`], so the server's keyring logic drives a card in
//! this process now and through the APDU tunnel later, unchanged.

use tessera_apdu::{Command, Response, StatusWord};
use tessera_proto::keyring::{
    self as proto, AID, CHALLENGE_LEN, ExternalAuthenticate, InternalAuthResponse, KeyInfo,
    KeyringLink, LinkError, Mode, ProtoError, RenewCommand, RenewResponse, SecurityStatus,
};
use thiserror::Error;

use crate::channel::{CardChannel, ChannelError};

/// Why a keyring call failed.
#[derive(Debug, Error)]
pub enum KeyringError {
    /// The transport failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The card answered with an error status word.
    #[error("the keyring applet refused {what}: {sw}")]
    Refused {
        /// The command.
        what: &'static str,
        /// The card's status word.
        sw: StatusWord,
    },
    /// The card's answer does not parse.
    #[error("malformed keyring answer: {0}")]
    Malformed(#[from] ProtoError),
}

/// A card's keyring applet, selected, behind a [`CardChannel`].
#[derive(Debug)]
pub struct KeyringTerminal<C> {
    channel: C,
    /// Every command and response that passed, when recording (tests, audits).
    log: Option<Vec<(Command, Response)>>,
}

impl<C: CardChannel> KeyringTerminal<C> {
    /// SELECTs the keyring applet on `channel`.
    pub fn select(mut channel: C) -> Result<Self, KeyringError> {
        let r = channel.transmit(&Command::new(0x00, 0xA4, 0x04, 0x00).with_data(AID.to_vec()))?;
        if r.sw != StatusWord::SUCCESS {
            return Err(KeyringError::Refused { what: "SELECT", sw: r.sw });
        }
        Ok(Self { channel, log: None })
    }

    /// Starts recording every APDU exchanged from now on.
    pub fn record(&mut self) {
        self.log = Some(Vec::new());
    }

    /// The recorded exchanges (empty unless [`KeyringTerminal::record`] was called).
    pub fn recorded(&self) -> &[(Command, Response)] {
        self.log.as_deref().unwrap_or_default()
    }

    /// The channel, to reset the card or reach another applet.
    pub fn channel_mut(&mut self) -> &mut C {
        &mut self.channel
    }

    /// Gives the channel back.
    pub fn into_channel(self) -> C {
        self.channel
    }

    fn call(&mut self, what: &'static str, cmd: &Command) -> Result<Response, KeyringError> {
        let r = self.transmit(cmd)?;
        if r.sw != StatusWord::SUCCESS {
            return Err(KeyringError::Refused { what, sw: r.sw });
        }
        Ok(r)
    }

    fn transmit(&mut self, cmd: &Command) -> Result<Response, ChannelError> {
        let r = self.channel.transmit(cmd)?;
        if let Some(log) = &mut self.log {
            log.push((cmd.clone(), r.clone()));
        }
        Ok(r)
    }

    /// INTERNAL AUTHENTICATE with internal slot `slot` over `challenge`.
    pub fn internal_authenticate(
        &mut self,
        slot: u8,
        challenge: &[u8; CHALLENGE_LEN],
        mode: Mode,
    ) -> Result<InternalAuthResponse, KeyringError> {
        let r =
            self.call("INTERNAL AUTHENTICATE", &proto::internal_authenticate(slot, challenge))?;
        Ok(InternalAuthResponse::parse(&r.data, mode)?)
    }

    /// GET CHALLENGE: the card's 16-byte challenge.
    pub fn get_challenge(&mut self) -> Result<[u8; CHALLENGE_LEN], KeyringError> {
        let r = self.call("GET CHALLENGE", &proto::get_challenge())?;
        r.data
            .as_slice()
            .try_into()
            .map_err(|_| KeyringError::Malformed(ProtoError::Length("challenge")))
    }

    /// EXTERNAL AUTHENTICATE.
    pub fn external_authenticate(&mut self, ea: &ExternalAuthenticate) -> Result<(), KeyringError> {
        self.call("EXTERNAL AUTHENTICATE", &ea.to_command()).map(|_| ())
    }

    /// RENEW.
    pub fn renew(&mut self, cmd: &RenewCommand, mode: Mode) -> Result<RenewResponse, KeyringError> {
        let r = self.call("RENEW", &cmd.to_command())?;
        Ok(RenewResponse::parse(&r.data, mode)?)
    }

    /// GET DATA: versions and check values of every slot.
    pub fn key_info(&mut self) -> Result<KeyInfo, KeyringError> {
        let r = self.call("GET DATA", &proto::get_data(proto::TAG_KEY_INFO))?;
        Ok(KeyInfo::parse(&r.data)?)
    }

    /// GET DATA: the card's security status (proven slots, authenticated pair, session).
    pub fn security_status(&mut self) -> Result<SecurityStatus, KeyringError> {
        let r = self.call("GET DATA", &proto::get_data(proto::TAG_SECURITY_STATUS))?;
        Ok(SecurityStatus::parse(&r.data)?)
    }
}

impl<C: CardChannel> KeyringLink for KeyringTerminal<C> {
    fn exchange(&mut self, command: &Command) -> Result<Response, LinkError> {
        self.transmit(command).map_err(|e| LinkError(e.to_string()))
    }
}

/// Runs one server-driven keyring exchange (`drive`, typically the server's sync of this card)
/// over `channel`: selects the keyring applet, hands the server the link, gives back the
/// channel with the server's result.
pub fn run<C, R>(
    channel: C,
    drive: impl FnOnce(&mut dyn KeyringLink) -> R,
) -> Result<(C, R), KeyringError>
where
    C: CardChannel,
{
    let mut terminal = KeyringTerminal::select(channel)?;
    let result = drive(&mut terminal);
    Ok((terminal.into_channel(), result))
}
