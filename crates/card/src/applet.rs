//! The applet interface, the command context and card-wide state.
//!
//! In the style of Trussed's apdu-dispatch and piv-authenticator: an applet is selected by AID,
//! deselected, and called with complete commands; it parses each command into its own typed
//! enum at its edge. Its state is split into a *persistent* struct (encoded with
//! [`encode_state`], committed through [`Context::commit`] or automatically after a successful
//! command) and a *volatile* struct, cleared at reset, power-off and deselection.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::rng::Rng;

use crate::lifecycle::CardData;
use crate::store::{CARD_OWNER, Store};

/// An applet's persistent state could not be decoded from the image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("applet state does not decode: {0}")]
pub struct StateError(pub String);

/// Encodes a persistent state struct canonically (postcard).
pub fn encode_state<T: Serialize>(state: &T) -> Vec<u8> {
    // postcard into a Vec fails only for serde constructs it cannot represent (sequences of
    // unknown length, custom serializer errors); state structs are plain data, so a failure
    // is a programming error in the state type, not something input can cause.
    postcard::to_allocvec(state).expect("persistent state types are plain postcard data")
}

/// Decodes a persistent state struct encoded by [`encode_state`].
pub fn decode_state<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StateError> {
    postcard::from_bytes(bytes).map_err(|e| StateError(e.to_string()))
}

/// An applet's persistent state struct, with a flag that records every mutable access.
///
/// Reading goes through [`Deref`](std::ops::Deref) and costs nothing; any `&mut` access through
/// [`DerefMut`](std::ops::DerefMut) marks the state changed, so the runtime encodes and commits
/// only the states a command may have changed, and rolls back only those. (A mutable access that
/// changes nothing costs one encoding; the store then sees equal bytes and writes nothing.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Persistent<T> {
    value: T,
    changed: bool,
}

impl<T> Persistent<T> {
    /// Wraps a state that is already committed (or is the fresh state the image will receive).
    pub fn new(value: T) -> Self {
        Self { value, changed: false }
    }

    /// True when the state was accessed mutably since the last call; clears the flag.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }
}

impl<T: Serialize + DeserializeOwned> Persistent<T> {
    /// The canonical encoding of the state (what [`Applet::save`] returns).
    pub fn encode(&self) -> Vec<u8> {
        encode_state(&self.value)
    }

    /// Replaces the state with a committed encoding (what [`Applet::load`] does); the state is
    /// then unchanged.
    pub fn load(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        *self = Self::new(decode_state(bytes)?);
        Ok(())
    }
}

/// The FCI an applet answers to SELECT when it has nothing more to say than its name:
/// `6F L { 84 L AID }`.
pub fn fci(aid: &[u8]) -> Vec<u8> {
    let mut out = vec![0x6F, aid.len() as u8 + 2, 0x84, aid.len() as u8];
    out.extend_from_slice(aid);
    out
}

impl<T> std::ops::Deref for Persistent<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> std::ops::DerefMut for Persistent<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.changed = true;
        &mut self.value
    }
}

/// A card application.
///
/// Contract: `select` does not change persistent state. `call` may change the persistent state
/// freely: the runtime commits it after a command answered `9000`, and restores the last
/// committed state after any other status word, so a failing command changes nothing (except
/// what the applet committed explicitly with [`Context::commit`], such as a PIN retry counter).
pub trait Applet: Send {
    /// The applet's AID (5 to 16 bytes), used by SELECT and as its key in the image.
    fn aid(&self) -> &'static [u8];

    /// A short name for logs and reports.
    fn name(&self) -> &'static str;

    /// The canonical encoding of the persistent state.
    fn save(&self) -> Vec<u8>;

    /// Replaces the persistent state with a decoded committed state (volatile state is kept).
    fn load(&mut self, state: &[u8]) -> Result<(), StateError>;

    /// Clears the volatile state (reset, power-off, deselection).
    fn clear_volatile(&mut self);

    /// True when the persistent state may have changed since the last call (clears the
    /// flag): the runtime saves and commits an applet's state after a `9000`, or restores it
    /// after an error, only then. Applets that keep their state in a [`Persistent`] return its
    /// [`Persistent::take_changed`]; the default, `true`, always saves.
    fn take_changed(&mut self) -> bool {
        true
    }

    /// Called when SELECT picks this applet; returns the FCI (response data) or refuses.
    fn select(&mut self, ctx: &mut Context<'_>) -> Result<Vec<u8>, StatusWord>;

    /// Called when another applet is selected or the selection fails. Clears volatile state by
    /// default.
    fn deselect(&mut self) {
        self.clear_volatile();
    }

    /// Processes a complete command (chaining and GET RESPONSE are handled below it).
    fn call(&mut self, ctx: &mut Context<'_>, command: &Command) -> Result<Response, StatusWord>;

    /// Receives one data group of personalisation data, sent by the issuer to the
    /// card-management applet in an SCP03 session after INSTALL [for personalization] named
    /// this applet (GlobalPlatform 11.5.2.3 and 11.11). The change is committed atomically with
    /// the STORE DATA command that carried it. Default: `6A88` (no such data group).
    fn personalize(
        &mut self,
        ctx: &mut Context<'_>,
        dgi: u16,
        data: &[u8],
    ) -> Result<(), StatusWord> {
        let _ = (ctx, dgi, data);
        Err(StatusWord::REFERENCED_DATA_NOT_FOUND)
    }

    /// The tearing scenarios of this applet's state-changing commands (see [`TearScenario`]).
    fn tear_scenarios(&self) -> Vec<TearScenario> {
        Vec::new()
    }
}

/// A card's APDU interface as seen by a tearing scenario script.
pub trait TearDriver {
    /// Sends a command APDU, returns the response APDU; `Err` once power has been cut.
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut>;
    /// Marks the start of the state-changing part: storage operations are counted from here.
    fn arm(&mut self);
}

/// The card lost power during a tearing scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerCut;

/// A state-changing command (or short sequence) to run under the tearing test.
///
/// `script` drives a fresh card made with a seeded random generator: it first brings the card
/// into the scenario's starting state (setup, never cut), calls [`TearDriver::arm`], then sends
/// the state-changing command(s). Power is cut at the k-th storage write or flush after `arm`,
/// for k = 1, 2, ... until a run completes; each time the image must then hold exactly the
/// state at `arm` or the state after a clean run. A script returns `Err` with a message when
/// the card answers something unexpected on a clean run (the test fails), and propagates
/// [`PowerCut`] from [`TearDriver::transmit`] with `?`.
#[derive(Clone, Copy)]
pub struct TearScenario {
    /// What the scenario does, for reports.
    pub name: &'static str,
    /// The script.
    pub script: fn(&mut dyn TearDriver) -> Result<(), TearError>,
}

impl std::fmt::Debug for TearScenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TearScenario").field("name", &self.name).finish_non_exhaustive()
    }
}

/// How a tearing scenario script stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TearError {
    /// Power was cut (expected while the test sweeps k).
    Cut,
    /// The card answered something the script did not expect.
    Unexpected(String),
}

impl From<PowerCut> for TearError {
    fn from(_: PowerCut) -> Self {
        TearError::Cut
    }
}

/// Card-wide volatile security status, cleared at reset and power-off.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SecurityStatus {
    /// The card holder's global PIN (held by the card-management applet) has been verified
    /// in this session. Applets that rely on the global PIN read this flag.
    pub global_pin_verified: bool,
}

/// What an applet can reach while processing a command.
pub struct Context<'a> {
    pub(crate) store: &'a mut Store,
    pub(crate) card: &'a mut Persistent<CardData>,
    pub(crate) challenge: &'a mut Option<Vec<u8>>,
    pub(crate) security: &'a mut SecurityStatus,
    pub(crate) rng: &'a mut dyn Rng,
    pub(crate) aid: &'static [u8],
    /// Other applets the caller may address (the card-management applet only).
    pub(crate) peers: &'a mut [Box<dyn Applet>],
    /// Indexes into `peers` whose state was changed in this command.
    pub(crate) touched: &'a mut Vec<usize>,
}

impl Context<'_> {
    /// The card's random generator.
    pub fn rng(&mut self) -> &mut dyn Rng {
        self.rng
    }

    /// Takes the challenge issued by the last GET CHALLENGE (single use).
    pub fn take_challenge(&mut self) -> Option<Vec<u8>> {
        self.challenge.take()
    }

    /// The card-wide security status.
    pub fn security(&self) -> &SecurityStatus {
        self.security
    }

    /// The card-wide security status, to change.
    pub fn security_mut(&mut self) -> &mut SecurityStatus {
        self.security
    }

    /// The card-wide persistent data (life cycle, card id).
    pub fn card(&self) -> &CardData {
        self.card
    }

    /// Signs, with the card's device key, the labelled structure for `purpose` naming this
    /// card's id and `body` (see [`tessera_crypto::device`]): the one way an applet uses the
    /// device key. `6A88` when the card has no device key (not issued).
    pub fn device_sign(
        &self,
        purpose: tessera_crypto::device::Purpose,
        body: &[u8],
    ) -> Result<tessera_crypto::ecdsa::Signature, StatusWord> {
        self.card.device.sign(purpose, &self.card.card_id, body)
    }

    /// The card-wide persistent data, to change: only the card-management applet does.
    /// Changes are committed with the applet's own state.
    pub fn card_mut(&mut self) -> &mut CardData {
        &mut *self.card
    }

    /// The AIDs of the other applets the caller may address (the card-management applet's
    /// peers; empty for every other applet).
    pub fn peer_aids(&self) -> impl Iterator<Item = &'static [u8]> + '_ {
        self.peers.iter().map(|p| p.aid())
    }

    /// True when an applet with this AID is registered besides the caller.
    pub fn has_peer(&self, aid: &[u8]) -> bool {
        self.peers.iter().any(|p| p.aid() == aid)
    }

    /// Passes a personalisation data group to the applet `aid` (card-management applet only).
    /// `6A88` if no such applet.
    pub fn personalize_peer(
        &mut self,
        aid: &[u8],
        dgi: u16,
        data: &[u8],
    ) -> Result<(), StatusWord> {
        let index = self
            .peers
            .iter()
            .position(|p| p.aid() == aid)
            .ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND)?;
        if !self.touched.contains(&index) {
            self.touched.push(index);
        }
        let peer = &mut self.peers[index];
        let peer_aid = peer.aid();
        let mut ctx = Context {
            store: self.store,
            card: self.card,
            challenge: self.challenge,
            security: self.security,
            rng: self.rng,
            aid: peer_aid,
            peers: &mut [],
            touched: &mut Vec::new(),
        };
        peer.personalize(&mut ctx, dgi, data)
    }

    /// Makes `applet_state` (the caller's [`Applet::save`]) and the card-wide data durable now,
    /// in one atomic commit, in the middle of a command. Used where a change must survive even
    /// if the command then fails or power is cut, e.g. a PIN retry counter decremented before
    /// the comparison. `6581` (memory failure) if the image cannot be written.
    pub fn commit(&mut self, applet_state: &[u8]) -> Result<(), StatusWord> {
        let card = encode_state(&**self.card);
        self.store
            .commit(&[(self.aid, applet_state), (CARD_OWNER, &card)])
            .map_err(|_| StatusWord::MEMORY_FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::Persistent;

    #[test]
    fn persistent_state_records_mutable_access_only() {
        let mut state = Persistent::new(vec![1u8, 2, 3]);
        assert!(!state.take_changed(), "a freshly wrapped state is the committed one");
        assert_eq!(state.len(), 3);
        assert!(!state.take_changed(), "reading does not mark it changed");
        state.push(4);
        assert!(state.take_changed(), "a mutation marks it changed");
        assert!(!state.take_changed(), "taking the flag clears it");
        assert_eq!(*state, [1, 2, 3, 4]);
    }
}
