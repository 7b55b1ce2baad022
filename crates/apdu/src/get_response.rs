//! Card side of response chaining: `61xx` and GET RESPONSE, and `6Cxx` (ISO/IEC 7816-4
//! section 5.3.4 and 7.6.1, ISO/IEC 7816-3 section 12.2).

use crate::{Command, INS_GET_RESPONSE, Response, StatusWord, command::SHORT_MAX_NE};

/// Response data waiting to be fetched with GET RESPONSE. Volatile: [`reset`](Self::reset) it at
/// card reset.
///
/// [`respond`](Self::respond) turns an applet's full response into what the card sends:
///
/// 1. No response data, or Nr ≤ Ne: the response is sent unchanged.
/// 2. Ne absent (case 1 or 3 command) but the applet produced data (what a T=0 case 4 command
///    looks like): no data is sent; the answer is `61xx` and all data waits for GET RESPONSE.
/// 3. Short case 2 command (no command data) with Ne < Nr ≤ 256: the data is discarded and the
///    answer is `6Cxx`, xx = Nr (`00` for 256): the host re-sends the command with Le = xx
///    (ISO/IEC 7816-3 12.2.2, case 2S, procedure byte `6C`). The command has been executed once;
///    this is used only for commands without data, which are expected to be repeatable.
/// 4. Otherwise (Ne < Nr): the first Ne bytes are sent with `61xx`, the rest waits.
///
/// `61xx` gives the number of bytes still waiting, `6100` meaning 256 or more. The applet's own
/// status word is sent with the last part of the data.
///
/// [`intercept`](Self::intercept) runs before every command is executed:
///
/// * INS `C0` is GET RESPONSE and is answered here, whatever the CLA: with nothing waiting
///   `6985`; P1-P2 other than `0000` gives `6A86`; command data or no Le gives `6700` (the data
///   stays waiting in these three error cases). Otherwise the next min(Ne, waiting) bytes are
///   sent, with `61xx` if more remain (never `6Cxx`) or the applet's status word with the last
///   part.
/// * Any other command discards the waiting data and goes on to be executed.
#[derive(Debug, Clone, Default)]
pub struct ResponseBuffer {
    pending: Option<Pending>,
}

#[derive(Debug, Clone)]
struct Pending {
    data: Vec<u8>,
    offset: usize,
    sw: StatusWord,
}

impl Pending {
    fn remaining(&self) -> usize {
        self.data.len() - self.offset
    }
}

/// `61xx` for `n` waiting bytes (`6100` when 256 or more).
fn more_available(n: usize) -> StatusWord {
    StatusWord::bytes_remaining(u8::try_from(n).unwrap_or(0))
}

impl ResponseBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// True while data waits for GET RESPONSE.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Number of bytes waiting for GET RESPONSE.
    pub fn remaining(&self) -> usize {
        self.pending.as_ref().map_or(0, Pending::remaining)
    }

    /// Discards waiting data (card reset, power-off).
    pub fn reset(&mut self) {
        self.pending = None;
    }

    /// Answers a GET RESPONSE (INS `C0`), or discards waiting data and returns `None` for any
    /// other command, which the caller then executes.
    pub fn intercept(&mut self, cmd: &Command) -> Option<Response> {
        if cmd.ins != INS_GET_RESPONSE {
            self.pending = None;
            return None;
        }
        let Some(pending) = self.pending.as_mut() else {
            return Some(Response::status(StatusWord::CONDITIONS_NOT_SATISFIED));
        };
        if (cmd.p1, cmd.p2) != (0, 0) {
            return Some(Response::status(StatusWord::INCORRECT_P1P2));
        }
        let Some(ne) = cmd.le.filter(|_| cmd.data.is_empty()) else {
            return Some(Response::status(StatusWord::WRONG_LENGTH));
        };
        let take = ne.min(pending.remaining());
        let part = pending.data[pending.offset..pending.offset + take].to_vec();
        pending.offset += take;
        let sw = match pending.remaining() {
            0 => {
                let sw = pending.sw;
                self.pending = None;
                sw
            }
            n => more_available(n),
        };
        Some(Response { data: part, sw })
    }

    /// Turns the full `response` to `cmd` into the response to send, keeping what does not fit
    /// Ne for GET RESPONSE. Any data still waiting from an earlier command is discarded.
    pub fn respond(&mut self, cmd: &Command, response: Response) -> Response {
        self.pending = None;
        let nr = response.data.len();
        match cmd.le {
            _ if nr == 0 => response,
            Some(ne) if nr <= ne => response,
            Some(ne) if cmd.data.is_empty() && ne < SHORT_MAX_NE && nr <= SHORT_MAX_NE => {
                // 256 encodes as 00.
                Response::status(StatusWord::wrong_le(nr as u8))
            }
            ne => {
                let first = ne.unwrap_or(0);
                let Response { mut data, sw } = response;
                let rest = data.split_off(first);
                let waiting = rest.len();
                self.pending = Some(Pending { data: rest, offset: 0, sw });
                Response { data, sw: more_available(waiting) }
            }
        }
    }
}
