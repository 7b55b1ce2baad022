//! The card's APDU layer: parsing, command chaining and response chaining in one place, so the
//! card runtime sees only complete commands and returns only complete responses.

use crate::{ChainAssembler, Chained, Command, Response, ResponseBuffer};

/// Per-card (per-session) APDU state: a [`ChainAssembler`] and a [`ResponseBuffer`].
///
/// [`process`](Self::process) handles one received APDU in this order:
///
/// 1. Parse. A malformed APDU is answered with [`ApduError::status`](crate::ApduError::status)
///    (`6700`, or `6E00` for CLA `FF`) and changes nothing.
/// 2. Chaining ([`ChainAssembler`] rules). A non-last part is answered `9000`; a refused part is
///    answered `6883` or `6A84`. Both discard response data waiting for GET RESPONSE.
/// 3. GET RESPONSE ([`ResponseBuffer::intercept`] rules) is answered from the waiting data; any
///    other complete command discards it.
/// 4. The complete command is executed by the caller's closure, whose full response is split
///    with [`ResponseBuffer::respond`] (`61xx`, `6Cxx`).
///
/// All of this state is volatile: call [`reset`](Self::reset) at card reset and power-off.
#[derive(Debug, Clone, Default)]
pub struct CardApduLayer {
    chain: ChainAssembler,
    responses: ResponseBuffer,
}

impl CardApduLayer {
    /// A layer accepting at most `max_command_data` bytes of (assembled) command data.
    pub fn new(max_command_data: usize) -> Self {
        Self { chain: ChainAssembler::new(max_command_data), responses: ResponseBuffer::new() }
    }

    /// Forgets any chain in progress and any response data waiting.
    pub fn reset(&mut self) {
        self.chain.reset();
        self.responses.reset();
    }

    /// True while a command chain is in progress.
    pub fn chain_pending(&self) -> bool {
        self.chain.is_pending()
    }

    /// Bytes waiting for GET RESPONSE.
    pub fn response_pending(&self) -> usize {
        self.responses.remaining()
    }

    /// Handles one received APDU; `execute` runs a complete command and returns its full
    /// response. Returns the response APDU to send.
    pub fn process(&mut self, apdu: &[u8], execute: impl FnOnce(&Command) -> Response) -> Response {
        let cmd = match Command::parse(apdu) {
            Ok(cmd) => cmd,
            Err(e) => return Response::status(e.status()),
        };
        self.process_command(cmd, execute)
    }

    /// As [`process`](Self::process), for an already parsed command.
    pub fn process_command(
        &mut self,
        cmd: Command,
        execute: impl FnOnce(&Command) -> Response,
    ) -> Response {
        match self.chain.feed(cmd) {
            Err(e) => {
                self.responses.reset();
                Response::status(e.status())
            }
            Ok(Chained::Incomplete) => {
                self.responses.reset();
                Response::ok(Vec::new())
            }
            Ok(Chained::Complete(cmd)) => {
                if let Some(response) = self.responses.intercept(&cmd) {
                    return response;
                }
                let response = execute(&cmd);
                self.responses.respond(&cmd, response)
            }
        }
    }
}
