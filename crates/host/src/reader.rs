//! Card readers through PC/SC (pcsc-lite's `pcscd` on Linux), via the `pcsc` crate.

use std::ffi::CString;

use pcsc::{Context, Disposition, Protocols, ReaderState, Scope, ShareMode, State};

use crate::channel::{CardChannel, ChannelError};

/// A reader as PC/SC reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderInfo {
    /// The reader's name, as to pass to [`PcscChannel::connect`].
    pub name: String,
    /// True when a card is in the reader.
    pub card_present: bool,
    /// The ATR of the card in the reader, when one is present.
    pub atr: Option<Vec<u8>>,
}

/// Lists the readers PC/SC knows, with whether each holds a card.
///
/// No reader at all is an empty list, not an error.
pub fn list_readers() -> Result<Vec<ReaderInfo>, ChannelError> {
    let ctx = Context::establish(Scope::User)?;
    list_with(&ctx)
}

fn list_with(ctx: &Context) -> Result<Vec<ReaderInfo>, ChannelError> {
    let names = match ctx.list_readers_owned() {
        Ok(names) => names,
        Err(pcsc::Error::NoReadersAvailable) => return Ok(Vec::new()),
        Err(err) => return Err(err.into()),
    };
    let mut states: Vec<ReaderState> =
        names.into_iter().map(|name| ReaderState::new(name, State::UNAWARE)).collect();
    if states.is_empty() {
        return Ok(Vec::new());
    }
    ctx.get_status_change(std::time::Duration::ZERO, &mut states)?;
    Ok(states
        .iter()
        .map(|s| {
            let present = s.event_state().contains(State::PRESENT);
            ReaderInfo {
                name: s.name().to_string_lossy().into_owned(),
                card_present: present,
                atr: present.then(|| s.atr().to_vec()),
            }
        })
        .collect())
}

/// A [`CardChannel`] to a card in a PC/SC reader.
///
/// Connects in shared mode with T=0 or T=1. After pcscd restarts or the card is reinserted,
/// [`PcscChannel::reconnect`] opens the same reader again.
pub struct PcscChannel {
    ctx: Context,
    card: pcsc::Card,
    reader: String,
    buf: Vec<u8>,
}

impl std::fmt::Debug for PcscChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcscChannel").field("reader", &self.reader).finish_non_exhaustive()
    }
}

impl PcscChannel {
    /// Connects to the card in the reader named `reader`, or, with `None`, to the card in the
    /// first reader that holds one.
    pub fn connect(reader: Option<&str>) -> Result<Self, ChannelError> {
        let ctx = Context::establish(Scope::User)?;
        let (name, card) = connect_with(&ctx, reader)?;
        Ok(Self { ctx, card, reader: name, buf: vec![0; pcsc::MAX_BUFFER_SIZE_EXTENDED] })
    }

    /// The name of the reader this channel talks through.
    pub fn reader(&self) -> &str {
        &self.reader
    }

    /// Opens the same reader again from a new PC/SC context: after pcscd restarted, or the
    /// card was removed and is back. The card's volatile state is gone either way.
    pub fn reconnect(&mut self) -> Result<(), ChannelError> {
        let ctx = Context::establish(Scope::User)?;
        let (_, card) = connect_with(&ctx, Some(&self.reader))?;
        // Drop order: the old card handle first (its disconnect may fail harmlessly), then the
        // old context.
        self.card = card;
        self.ctx = ctx;
        Ok(())
    }
}

fn connect_with(ctx: &Context, reader: Option<&str>) -> Result<(String, pcsc::Card), ChannelError> {
    let readers = list_with(ctx)?;
    if readers.is_empty() {
        return Err(ChannelError::NoReaders);
    }
    let chosen = match reader {
        Some(wanted) => {
            let info = readers
                .iter()
                .find(|r| r.name == wanted)
                .ok_or_else(|| ChannelError::UnknownReader(wanted.to_owned()))?;
            if !info.card_present {
                return Err(ChannelError::NoCardInReader(info.name.clone()));
            }
            info
        }
        None => readers.iter().find(|r| r.card_present).ok_or(ChannelError::NoCard)?,
    };
    let cname = CString::new(chosen.name.as_bytes())
        .map_err(|_| ChannelError::UnknownReader(chosen.name.clone()))?;
    let card = match ctx.connect(&cname, ShareMode::Shared, Protocols::ANY) {
        Ok(card) => card,
        Err(pcsc::Error::NoSmartcard | pcsc::Error::RemovedCard) => {
            return Err(ChannelError::NoCardInReader(chosen.name.clone()));
        }
        Err(pcsc::Error::UnknownReader) => {
            return Err(ChannelError::UnknownReader(chosen.name.clone()));
        }
        Err(err) => return Err(err.into()),
    };
    Ok((chosen.name.clone(), card))
}

impl CardChannel for PcscChannel {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, ChannelError> {
        let rsp = self.card.transmit(command, &mut self.buf)?;
        Ok(rsp.to_vec())
    }

    fn reset(&mut self) -> Result<Vec<u8>, ChannelError> {
        self.card.reconnect(ShareMode::Shared, Protocols::ANY, Disposition::ResetCard)?;
        self.atr()
    }

    fn atr(&mut self) -> Result<Vec<u8>, ChannelError> {
        // SCardStatus, not SCardGetAttrib: pcscd answers the ATR it cached at power-up,
        // while drivers such as vpcd do not implement the ATR attribute.
        Ok(self.card.status2_owned()?.atr().to_vec())
    }
}
