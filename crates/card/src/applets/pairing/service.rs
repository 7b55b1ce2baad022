//! The interface between the pairing applet (the security domain) and the services it hosts.
//!
//! A service is reachable only through INVOKE inside a paired SCP03 session at level 33: the
//! pairing applet unwraps and verifies the command, names the calling terminal and passes the
//! operation on; the answer is wrapped on the way back. A service has no AID of its own, so
//! nothing can select it around the channel. Its persistent state is part of the pairing
//! applet's state, so a service operation commits atomically with the command (or not at all).
//!
//! Adding a service: a module in `applets/` implementing [`Service`], one line in
//! [`super::services`], a [`tessera_proto::pairing::ServiceId`] with its operations in
//! `tessera-proto`, and the matching provider in `tessera_host::pairing::service`.

use tessera_apdu::StatusWord;
use tessera_proto::pairing::ServiceId;

use crate::applet::StateError;

/// Who is calling: the paired terminal of the current session.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The terminal's key id (its certificate's serial number).
    pub terminal: &'a [u8],
}

/// A service hosted by the pairing applet.
pub trait Service: Send {
    /// The service's id (INVOKE's P1).
    fn id(&self) -> ServiceId;

    /// The canonical encoding of the service's persistent state.
    fn save(&self) -> Vec<u8>;

    /// Replaces the persistent state with a decoded committed state.
    fn load(&mut self, state: &[u8]) -> Result<(), StateError>;

    /// True when the persistent state may have changed since the last call (clears the flag);
    /// see [`Applet::take_changed`](crate::Applet::take_changed). Default: always.
    fn take_changed(&mut self) -> bool {
        true
    }

    /// Runs one operation; the answer's data, or the status word of the refusal. A refusal
    /// changes nothing (the runtime restores the committed state).
    fn invoke(&mut self, caller: Caller<'_>, op: u8, data: &[u8]) -> Result<Vec<u8>, StatusWord>;
}
