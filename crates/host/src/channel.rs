//! The transport-only view of a card that all terminal code speaks to.

use tessera_apdu::{ApduError, Command, Exchange, ExchangeError, Response};
use thiserror::Error;

use crate::trace;

/// Why an exchange with a card failed in transport (never a card's "no": that is a status word).
#[derive(Debug, Error)]
pub enum ChannelError {
    /// The PC/SC service is not running.
    #[error(
        "pcscd is not running: start it with `sudo systemctl start pcscd.socket` \
         (or run `pcscd --foreground` in another terminal), then retry"
    )]
    NoService,
    /// The PC/SC service knows no reader.
    #[error(
        "no smart-card reader found: plug in a reader, or install vsmartcard-vpcd and \
         restart pcscd to get the virtual reader"
    )]
    NoReaders,
    /// No reader has this name.
    #[error("no reader named {0:?}: `tessera reader list` shows the readers")]
    UnknownReader(String),
    /// No reader holds a card.
    #[error(
        "no card in any reader: insert a card, or serve a virtual one with \
         `tessera card serve --image FILE`"
    )]
    NoCard,
    /// The named reader holds no card.
    #[error("no card in reader {0:?}: insert a card or serve a virtual one into that slot")]
    NoCardInReader(String),
    /// The card was removed (or the virtual card disconnected) during the session.
    #[error("the card was removed from the reader; insert it again and retry")]
    CardRemoved,
    /// Another application reset the card; its volatile state (sessions, PIN status) is gone.
    #[error("the card was reset by another application; reconnect and start again")]
    CardReset,
    /// The card is not powered.
    #[error("the card is powered off")]
    PoweredOff,
    /// The card broke the response protocol: an answer shorter than a status word, or
    /// `61xx`/`6Cxx` answers that never end.
    #[error("the card broke the response protocol: {0}")]
    CardProtocol(String),
    /// The command cannot be encoded.
    #[error("command cannot be encoded: {0}")]
    Command(#[from] ApduError),
    /// Any other PC/SC failure.
    #[error("PC/SC error: {0}")]
    Pcsc(#[source] pcsc::Error),
}

impl From<ExchangeError<ChannelError>> for ChannelError {
    fn from(err: ExchangeError<ChannelError>) -> Self {
        match err {
            ExchangeError::Transport(err) => err,
            ExchangeError::Command(err) => ChannelError::Command(err),
            other => ChannelError::CardProtocol(other.to_string()),
        }
    }
}

impl From<pcsc::Error> for ChannelError {
    fn from(err: pcsc::Error) -> Self {
        match err {
            pcsc::Error::NoService | pcsc::Error::ServiceStopped => ChannelError::NoService,
            pcsc::Error::NoReadersAvailable => ChannelError::NoReaders,
            pcsc::Error::RemovedCard | pcsc::Error::NoSmartcard => ChannelError::CardRemoved,
            pcsc::Error::ResetCard => ChannelError::CardReset,
            pcsc::Error::UnpoweredCard => ChannelError::PoweredOff,
            other => ChannelError::Pcsc(other),
        }
    }
}

/// A card reached through some transport: in process, PC/SC, or anything that moves bytes.
///
/// Implementations provide one raw exchange; [`CardChannel::transmit`] builds the ISO/IEC 7816-4
/// conveniences on top (encoding, `61xx` GET RESPONSE, `6Cxx` re-issue, APDU tracing), so every
/// transport behaves the same.
pub trait CardChannel {
    /// Sends one command APDU as bytes and returns the card's answer, status word included.
    /// No status word is interpreted here.
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, ChannelError>;

    /// Warm-resets the card (volatile state is lost) and returns its ATR.
    fn reset(&mut self) -> Result<Vec<u8>, ChannelError>;

    /// The card's answer to reset.
    fn atr(&mut self) -> Result<Vec<u8>, ChannelError>;

    /// Sends `command` and returns the complete response: `61xx` is followed with GET RESPONSE
    /// (concatenating the data) and `6Cxx` re-issues the command with the exact Le, so callers
    /// never see either (see [`Exchange`]). Every APDU exchanged is traced (see
    /// [`crate::trace`]).
    fn transmit(&mut self, command: &Command) -> Result<Response, ChannelError> {
        Exchange::new()
            .run(command, |bytes| trace::traced(bytes, |b| self.transmit_raw(b)))
            .map_err(ChannelError::from)
    }
}

impl<T: CardChannel + ?Sized> CardChannel for &mut T {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, ChannelError> {
        (**self).transmit_raw(command)
    }

    fn reset(&mut self) -> Result<Vec<u8>, ChannelError> {
        (**self).reset()
    }

    fn atr(&mut self) -> Result<Vec<u8>, ChannelError> {
        (**self).atr()
    }

    fn transmit(&mut self, command: &Command) -> Result<Response, ChannelError> {
        (**self).transmit(command)
    }
}

impl<T: CardChannel + ?Sized> CardChannel for Box<T> {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, ChannelError> {
        (**self).transmit_raw(command)
    }

    fn reset(&mut self) -> Result<Vec<u8>, ChannelError> {
        (**self).reset()
    }

    fn atr(&mut self) -> Result<Vec<u8>, ChannelError> {
        (**self).atr()
    }

    fn transmit(&mut self, command: &Command) -> Result<Response, ChannelError> {
        (**self).transmit(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcsc_errors_map_to_what_the_user_must_do() {
        for (raw, check) in [
            (pcsc::Error::NoService, "pcscd is not running: start it with"),
            (pcsc::Error::ServiceStopped, "pcscd is not running: start it with"),
            (pcsc::Error::NoReadersAvailable, "no smart-card reader found"),
            (pcsc::Error::RemovedCard, "removed"),
            (pcsc::Error::ResetCard, "reset by another application"),
        ] {
            let err = ChannelError::from(raw);
            assert!(err.to_string().contains(check), "{raw:?} -> {err}");
        }
        assert!(matches!(ChannelError::from(pcsc::Error::Timeout), ChannelError::Pcsc(_)));
    }

    #[test]
    fn exchange_failures_keep_the_transport_error() {
        let transport = ExchangeError::Transport(ChannelError::CardRemoved);
        assert!(matches!(ChannelError::from(transport), ChannelError::CardRemoved));
        let broken: ExchangeError<ChannelError> = ExchangeError::MalformedResponse;
        assert!(matches!(ChannelError::from(broken), ChannelError::CardProtocol(_)));
    }
}
