//! Host side of one command/response exchange, without I/O: command chaining for short-only
//! links, `61xx` GET RESPONSE loops and `6Cxx` re-sends, all driven through a caller-supplied
//! transmit function.

use std::fmt;

use crate::{
    ApduError, CLA_CHAINING, Command, INS_GET_RESPONSE, Response, StatusWord,
    command::{SHORT_MAX_NC, SHORT_MAX_NE},
};

/// Default cap on the response data of one exchange: 1 MiB.
pub const DEFAULT_MAX_RESPONSE_LEN: usize = 1 << 20;

/// Default cap on the APDUs transmitted for one exchange (chain parts, GET RESPONSEs and
/// re-sends): enough for 1 MiB fetched 256 bytes at a time plus a 64 KiB chain.
pub const DEFAULT_MAX_ROUND_TRIPS: usize = 8192;

/// How the host exchanges a command with a card.
///
/// [`run`](Self::run) sends one [`Command`] and returns the card's final [`Response`]:
///
/// 1. **Encoding.** The command is sent as one APDU (extended lengths where needed) unless
///    `short_only` is set and it needs extended lengths. Then its data is split into parts of
///    at most 255 bytes sent as a chain (CLA b5 set on every part but the last, no Le on them),
///    and Ne above 256 is sent as Le `00` (256); the rest comes through `61xx`. A non-last
///    part answered with anything but `9000` ends the exchange with that answer.
/// 2. **`6Cxx`.** The last APDU sent is sent again with Le = xx (`00` = 256), its answer
///    replacing the `6Cxx`. A second `6Cxx` in a row is an error
///    ([`ExchangeError::RepeatedWrongLe`]).
/// 3. **`61xx`.** The data received so far is kept and GET RESPONSE (INS `C0`, P1-P2 `0000`,
///    Le = xx, `00` = 256; CLA `00` with the logical channel of the command's CLA) is sent; its
///    data is appended. An answer `61xx` to a GET RESPONSE that carries no data is an error
///    ([`ExchangeError::NoProgress`]).
/// 4. The first other status word ends the exchange: the result holds all the data collected
///    and that status word.
///
/// Bounds: the collected data never exceeds `max_response_len` and no more than
/// `max_round_trips` APDUs are transmitted, so a card answering `61xx` forever cannot hang the
/// host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    /// Send only short APDUs (for readers or cards without extended length support).
    pub short_only: bool,
    /// Largest total response data accepted.
    pub max_response_len: usize,
    /// Largest number of APDUs transmitted for one exchange.
    pub max_round_trips: usize,
}

impl Default for Exchange {
    fn default() -> Self {
        Self {
            short_only: false,
            max_response_len: DEFAULT_MAX_RESPONSE_LEN,
            max_round_trips: DEFAULT_MAX_ROUND_TRIPS,
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExchangeError<E> {
    /// The transmit function failed.
    Transport(E),
    /// The command cannot be encoded.
    Command(ApduError),
    /// The card answered fewer than the two status bytes.
    MalformedResponse,
    /// The card's response data exceeds the configured cap.
    ResponseTooLong {
        /// The cap in force.
        limit: usize,
    },
    /// More APDUs would be needed than the configured cap allows.
    TooManyRoundTrips {
        /// The cap in force.
        limit: usize,
    },
    /// The card answered `6Cxx` to a command re-sent after `6Cxx`.
    RepeatedWrongLe,
    /// The card answered `61xx` to a GET RESPONSE without returning any data.
    NoProgress,
}

impl<E: fmt::Display> fmt::Display for ExchangeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transport(e) => write!(f, "transmit failed: {e}"),
            Self::Command(e) => write!(f, "cannot encode command: {e}"),
            Self::MalformedResponse => f.write_str("card response shorter than a status word"),
            Self::ResponseTooLong { limit } => {
                write!(f, "card response data exceeds {limit} bytes")
            }
            Self::TooManyRoundTrips { limit } => {
                write!(f, "exchange needs more than {limit} APDUs")
            }
            Self::RepeatedWrongLe => f.write_str("card answered 6Cxx twice in a row"),
            Self::NoProgress => f.write_str("card answered 61xx to GET RESPONSE with no data"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ExchangeError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Transport(e) => Some(e),
            Self::Command(e) => Some(e),
            _ => None,
        }
    }
}

impl Exchange {
    /// The default settings: extended lengths allowed, 1 MiB and 8192 APDUs at most.
    pub fn new() -> Self {
        Self::default()
    }

    /// Settings for a link that carries short APDUs only.
    pub fn short_only() -> Self {
        Self { short_only: true, ..Self::default() }
    }

    /// Exchanges `cmd` through `transmit` (which sends one APDU and returns the card's answer)
    /// following the rules in the type's documentation.
    pub fn run<E>(
        &self,
        cmd: &Command,
        transmit: impl FnMut(&[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<Response, ExchangeError<E>> {
        let parts = self.split(cmd)?;
        let Some((last, init)) = parts.split_last() else {
            return Err(ExchangeError::Command(ApduError::WrongLength));
        };
        let mut link = Link { transmit, round_trips: 0, limit: self.max_round_trips };
        if let Some(refused) = link.send_chain(init)? {
            self.check_len(refused.data.len())?;
            return Ok(refused);
        }

        let mut current = last.clone();
        let mut collected = Vec::new();
        let mut resent = false;
        let mut fetching = false;
        loop {
            let Response { data, sw } = link.send(&current)?;
            match sw.sw1() {
                0x6C => {
                    if resent {
                        return Err(ExchangeError::RepeatedWrongLe);
                    }
                    resent = true;
                    current.le = Some(short_ne(sw.sw2()));
                    if !fetching {
                        // The whole chain is the command: send all of it again.
                        if let Some(refused) = link.send_chain(init)? {
                            self.check_len(refused.data.len())?;
                            return Ok(refused);
                        }
                    }
                }
                0x61 => {
                    if fetching && data.is_empty() {
                        return Err(ExchangeError::NoProgress);
                    }
                    self.check_len(collected.len().saturating_add(data.len()))?;
                    collected.extend_from_slice(&data);
                    current = get_response(cmd.cla, short_ne(sw.sw2()));
                    resent = false;
                    fetching = true;
                }
                _ => {
                    self.check_len(collected.len().saturating_add(data.len()))?;
                    collected.extend_from_slice(&data);
                    return Ok(Response { data: collected, sw });
                }
            }
        }
    }

    fn check_len<E>(&self, len: usize) -> Result<(), ExchangeError<E>> {
        if len > self.max_response_len {
            return Err(ExchangeError::ResponseTooLong { limit: self.max_response_len });
        }
        Ok(())
    }

    /// The APDUs that carry `cmd`: itself, or its chain of short parts.
    fn split<E>(&self, cmd: &Command) -> Result<Vec<Command>, ExchangeError<E>> {
        if !self.short_only || !cmd.is_extended() {
            return Ok(vec![cmd.clone()]);
        }
        if cmd.data.len() > crate::command::EXTENDED_MAX_NC {
            return Err(ExchangeError::Command(ApduError::DataTooLong));
        }
        let le = cmd.le.map(|ne| ne.min(SHORT_MAX_NE));
        if cmd.data.is_empty() {
            return Ok(vec![Command { le, ..cmd.clone() }]);
        }
        let count = cmd.data.len().div_ceil(SHORT_MAX_NC);
        Ok(cmd
            .data
            .chunks(SHORT_MAX_NC)
            .enumerate()
            .map(|(i, chunk)| {
                let last = i + 1 == count;
                Command {
                    cla: if last { cmd.cla } else { cmd.cla | CLA_CHAINING },
                    ins: cmd.ins,
                    p1: cmd.p1,
                    p2: cmd.p2,
                    data: chunk.to_vec(),
                    le: if last { le } else { None },
                }
            })
            .collect())
    }
}

/// The transmit function with its round-trip budget.
struct Link<T> {
    transmit: T,
    round_trips: usize,
    limit: usize,
}

impl<T> Link<T> {
    fn send<E>(&mut self, apdu: &Command) -> Result<Response, ExchangeError<E>>
    where
        T: FnMut(&[u8]) -> Result<Vec<u8>, E>,
    {
        if self.round_trips >= self.limit {
            return Err(ExchangeError::TooManyRoundTrips { limit: self.limit });
        }
        self.round_trips += 1;
        let bytes = apdu.to_bytes().map_err(ExchangeError::Command)?;
        let answer = (self.transmit)(&bytes).map_err(ExchangeError::Transport)?;
        Response::parse(&answer).ok_or(ExchangeError::MalformedResponse)
    }

    /// Sends the non-last parts of a chain; returns the first answer other than `9000`.
    fn send_chain<E>(&mut self, parts: &[Command]) -> Result<Option<Response>, ExchangeError<E>>
    where
        T: FnMut(&[u8]) -> Result<Vec<u8>, E>,
    {
        for part in parts {
            let response = self.send(part)?;
            if response.sw != StatusWord::SUCCESS {
                return Ok(Some(response));
            }
        }
        Ok(None)
    }
}

fn short_ne(b: u8) -> usize {
    if b == 0 { SHORT_MAX_NE } else { usize::from(b) }
}

/// GET RESPONSE on the logical channel of `cla`: channels 0-3 are coded in b2-b1 of the first
/// interindustry class, channels 4-19 in b4-b1 of the further interindustry class (b7 set).
fn get_response(cla: u8, ne: usize) -> Command {
    let cla = if cla & 0x40 == 0 { cla & 0x03 } else { 0x40 | (cla & 0x0F) };
    Command::new(cla, INS_GET_RESPONSE, 0, 0).with_le(ne)
}
