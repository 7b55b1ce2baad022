//! Dispatch: the APDU layer, card-wide commands (SELECT, GET CHALLENGE) and the applets.
//!
//! Order of processing for one received APDU:
//!
//! 1. The apdu crate's [`CardApduLayer`] parses it (`6700`/`6E00` when malformed), assembles
//!    command chains (CLA bit `10`) and serves GET RESPONSE from data waiting after `61xx`.
//! 2. Class: CLA `20`..`3F` (reserved) gives `6E00`. The logical channel (CLA b1-b2, or
//!    4 + b1-b4 for CLA `40`..`7F`/`C0`..`FF`) must be 0, else `6881`; MANAGE CHANNEL `6881`.
//! 3. Interindustry SELECT by DF name (`00 A4 04 xx`) and GET CHALLENGE (`00 84 00 00`) are
//!    handled by the runtime.
//! 4. Everything else goes to the selected applet; `6985` when none is selected.
//! 5. After the applet answers: `9000` commits any change to its persistent state (and the
//!    card-wide data) atomically; any other status word restores the last committed state.
//!    A `9000` answer that the APDU layer would turn into `6Cxx` (Le too short for a command
//!    without data) counts as an error: the command changes nothing, its repetition runs it.

use tessera_apdu::{CardApduLayer, Command, DEFAULT_MAX_CHAIN_DATA, Response, StatusWord};
use tessera_crypto::rng::Rng;

use crate::applet::{Applet, Context, Persistent, SecurityStatus, decode_state, encode_state};
use crate::error::CardError;
use crate::lifecycle::CardData;
use crate::store::{CARD_OWNER, StateMap, Store};

/// INS of SELECT.
pub const INS_SELECT: u8 = 0xA4;
/// INS of GET CHALLENGE.
pub const INS_GET_CHALLENGE: u8 = 0x84;
/// INS of MANAGE CHANNEL.
pub const INS_MANAGE_CHANNEL: u8 = 0x70;
/// Longest challenge GET CHALLENGE returns.
pub const MAX_CHALLENGE: usize = 256;

/// Everything below the APDU layer.
pub(crate) struct Core {
    pub(crate) store: Store,
    pub(crate) applets: Vec<Box<dyn Applet>>,
    pub(crate) card: Persistent<CardData>,
    pub(crate) selected: Option<usize>,
    pub(crate) challenge: Option<Vec<u8>>,
    pub(crate) security: SecurityStatus,
    pub(crate) rng: Box<dyn Rng + Send>,
}

/// The runtime: APDU layer plus core.
pub(crate) struct Runtime {
    apdu: CardApduLayer,
    pub(crate) core: Core,
}

/// The initial state map of a fresh card: card-wide data and every applet's state.
pub(crate) fn initial_state(applets: &[Box<dyn Applet>]) -> StateMap {
    let mut map = StateMap::new();
    map.insert(CARD_OWNER.to_vec(), encode_state(&CardData::default()));
    for applet in applets {
        map.insert(applet.aid().to_vec(), applet.save());
    }
    map
}

impl Runtime {
    /// A runtime over an opened store: loads every registered applet's committed state; an
    /// applet the image does not hold yet is committed with its fresh state.
    pub(crate) fn new(
        mut store: Store,
        mut applets: Vec<Box<dyn Applet>>,
        rng: Box<dyn Rng + Send>,
    ) -> Result<Runtime, CardError> {
        let path = store.path().to_owned();
        let card = match store.get(CARD_OWNER) {
            Some(bytes) => decode_state(bytes)
                .map_err(|e| CardError::corrupt(&path, format!("card-wide state: {e}")))?,
            None => return Err(CardError::corrupt(&path, "card-wide state missing")),
        };
        let mut missing: Vec<(&'static [u8], Vec<u8>)> = Vec::new();
        for applet in &mut applets {
            match store.get(applet.aid()) {
                Some(bytes) => applet.load(bytes).map_err(|e| {
                    CardError::corrupt(&path, format!("applet {}: {e}", applet.name()))
                })?,
                None => missing.push((applet.aid(), applet.save())),
            }
        }
        // An applet this build registers but the image does not hold yet (added by a software
        // update) is installed with its fresh state in one commit, so rollback always has a
        // committed state to return to.
        if !missing.is_empty() {
            let changes: Vec<(&[u8], &[u8])> =
                missing.iter().map(|(a, s)| (*a, s.as_slice())).collect();
            store.commit(&changes)?;
        }
        for applet in &mut applets {
            applet.take_changed();
        }
        let core = Core {
            store,
            applets,
            card: Persistent::new(card),
            selected: None,
            challenge: None,
            security: SecurityStatus::default(),
            rng,
        };
        Ok(Runtime { apdu: CardApduLayer::new(DEFAULT_MAX_CHAIN_DATA), core })
    }

    /// Clears all volatile state (reset, power-off).
    pub(crate) fn clear_volatile(&mut self) {
        self.apdu.reset();
        self.core.selected = None;
        self.core.challenge = None;
        self.core.security = SecurityStatus::default();
        for applet in &mut self.core.applets {
            applet.clear_volatile();
        }
    }

    /// Processes one APDU.
    pub(crate) fn transmit(&mut self, apdu: &[u8]) -> Response {
        let core = &mut self.core;
        self.apdu.process(apdu, |cmd| core.execute(cmd))
    }
}

/// True when the APDU layer answers `response` to `cmd` with `6Cxx` (the rule of
/// [`tessera_apdu::ResponseBuffer::respond`]): a command without data whose Ne is below Nr,
/// Nr at most 256.
fn asks_for_le(cmd: &Command, response: &Response) -> bool {
    let nr = response.data.len();
    cmd.data.is_empty()
        && cmd.le.is_some_and(|ne| ne < nr && ne < tessera_apdu::SHORT_MAX_NE)
        && nr <= tessera_apdu::SHORT_MAX_NE
}

/// The logical channel a CLA addresses (ISO/IEC 7816-4 5.4.1), for interindustry and
/// GlobalPlatform proprietary classes alike.
fn channel(cla: u8) -> u8 {
    if cla & 0x40 == 0 { cla & 0x03 } else { 4 + (cla & 0x0F) }
}

impl Core {
    fn execute(&mut self, cmd: &Command) -> Response {
        if cmd.cla & 0xE0 == 0x20 {
            return Response::status(StatusWord::CLA_NOT_SUPPORTED);
        }
        if channel(cmd.cla) != 0 {
            return Response::status(StatusWord::LOGICAL_CHANNEL_NOT_SUPPORTED);
        }
        let interindustry = cmd.cla & 0x80 == 0;
        if interindustry {
            match (cmd.ins, cmd.p1) {
                (INS_MANAGE_CHANNEL, _) => {
                    return Response::status(StatusWord::LOGICAL_CHANNEL_NOT_SUPPORTED);
                }
                (INS_SELECT, 0x04) if cmd.cla & 0x0C == 0 => return self.select(cmd),
                (INS_GET_CHALLENGE, _) if cmd.cla & 0x0C == 0 => return self.get_challenge(cmd),
                _ => {}
            }
        }
        match self.selected {
            Some(index) => self.call(index, cmd),
            None => Response::status(StatusWord::CONDITIONS_NOT_SATISFIED),
        }
    }

    fn call(&mut self, index: usize, cmd: &Command) -> Response {
        let mut touched = Vec::new();
        // Only the card-management applet (index 0) reaches its peers.
        let (applet, peers): (&mut Box<dyn Applet>, &mut [Box<dyn Applet>]) = if index == 0 {
            match self.applets.split_first_mut() {
                Some((first, rest)) => (first, rest),
                None => return Response::status(StatusWord::UNKNOWN),
            }
        } else {
            (&mut self.applets[index], &mut [])
        };
        let aid = applet.aid();
        let mut ctx = Context {
            store: &mut self.store,
            card: &mut self.card,
            challenge: &mut self.challenge,
            security: &mut self.security,
            rng: &mut *self.rng,
            aid,
            peers,
            touched: &mut touched,
        };
        let response = match applet.call(&mut ctx, cmd) {
            Ok(response) => response,
            Err(sw) => Response::status(sw),
        };
        // Peers personalised in this command: absolute indexes (peers start after index 0).
        let mut changed: Vec<usize> = vec![index];
        changed.extend(touched.iter().map(|t| t + 1));
        // Only the states this command may have changed are encoded, committed or restored.
        changed.retain(|&i| self.applets[i].take_changed());
        let card_changed = self.card.take_changed();
        if changed.is_empty() && !card_changed {
            return response;
        }
        if response.sw == StatusWord::SUCCESS && asks_for_le(cmd, &response) {
            // The APDU layer would discard this answer for `6Cxx` and the host send the command
            // again with Le = Nr. `6Cxx` is a checking error, which leaves non-volatile memory
            // unchanged (ISO/IEC 7816-4 5.1.3): a command that changed state is therefore not
            // executed, so its repetition runs it once (e.g. a key generated once, its public key
            // not lost).
            self.rollback(&changed, card_changed);
            return Response::status(StatusWord::wrong_le(response.data.len() as u8));
        }
        if response.sw == StatusWord::SUCCESS {
            let mut states: Vec<(&'static [u8], Vec<u8>)> =
                changed.iter().map(|&i| (self.applets[i].aid(), self.applets[i].save())).collect();
            if card_changed {
                states.push((CARD_OWNER, encode_state(&*self.card)));
            }
            let changes: Vec<(&[u8], &[u8])> =
                states.iter().map(|(owner, state)| (*owner, state.as_slice())).collect();
            if self.store.commit(&changes).is_err() {
                self.rollback(&changed, card_changed);
                return Response::status(StatusWord::MEMORY_FAILURE);
            }
            response
        } else {
            self.rollback(&changed, card_changed);
            response
        }
    }

    /// Restores the committed persistent state of the given applets, and of the card-wide data
    /// when `card` is set.
    fn rollback(&mut self, indexes: &[usize], card: bool) {
        for &index in indexes {
            let applet = &mut self.applets[index];
            if let Some(bytes) = self.store.get(applet.aid()) {
                // These bytes were produced by the applet's own `save`; they decode.
                let _ = applet.load(bytes);
            }
            applet.take_changed();
        }
        if card && let Some(Ok(data)) = self.store.get(CARD_OWNER).map(decode_state::<CardData>) {
            self.card = Persistent::new(data);
        }
    }

    fn deselect(&mut self) {
        if let Some(index) = self.selected.take() {
            self.applets[index].deselect();
        }
        self.challenge = None;
    }

    /// SELECT by DF name (`00 A4 04 P2`, ISO/IEC 7816-4 11.2.2).
    ///
    /// P2 `00` first or only occurrence / `02` next occurrence; `00` returns the FCI, `0C`
    /// nothing; other P2 `6A86`. The data is an AID or a leading part of one (1 to 16 bytes);
    /// applets match in registration order; "next" continues after the selected applet when it
    /// matches the name. Empty data selects the card-management applet (GlobalPlatform).
    /// No match: `6A82`, the current selection is kept. A match deselects the current applet
    /// (even when reselecting it), then the new applet's `select` decides; if it refuses,
    /// nothing is selected.
    fn select(&mut self, cmd: &Command) -> Response {
        let occurrence_next = match cmd.p2 & 0x03 {
            0x00 => false,
            0x02 => true,
            _ => return Response::status(StatusWord::INCORRECT_P1P2),
        };
        let fci = match cmd.p2 & 0xFC {
            0x00 => true,
            0x0C => false,
            _ => return Response::status(StatusWord::INCORRECT_P1P2),
        };
        if cmd.data.len() > 16 {
            return Response::status(StatusWord::INCORRECT_DATA);
        }
        let name = cmd.data.as_slice();
        let matches = |a: &dyn Applet| a.aid().starts_with(name);
        let found = if name.is_empty() {
            (!occurrence_next).then_some(0)
        } else {
            let start = match self.selected {
                Some(i) if occurrence_next && matches(&*self.applets[i]) => i + 1,
                _ => 0,
            };
            (start..self.applets.len()).find(|&i| matches(&*self.applets[i]))
        };
        let Some(index) = found else {
            return Response::status(StatusWord::NOT_FOUND);
        };
        // Only the card-management applet (index 0) is reachable unless the life cycle allows.
        if index != 0 && !self.card.life_cycle.applets_selectable() {
            return Response::status(StatusWord::SELECTED_FILE_DEACTIVATED);
        }
        self.deselect();
        let applet = &mut self.applets[index];
        let mut touched = Vec::new();
        let mut ctx = Context {
            store: &mut self.store,
            card: &mut self.card,
            challenge: &mut self.challenge,
            security: &mut self.security,
            rng: &mut *self.rng,
            aid: applet.aid(),
            peers: &mut [],
            touched: &mut touched,
        };
        match applet.select(&mut ctx) {
            Ok(data) => {
                self.selected = Some(index);
                Response::ok(if fci { data } else { Vec::new() })
            }
            Err(sw) => {
                applet.clear_volatile();
                Response::status(sw)
            }
        }
    }

    /// GET CHALLENGE (`00 84 00 00 Le`): Ne random bytes (1 to 256) from the card's generator;
    /// the challenge is kept (volatile, single use) for a following authentication.
    fn get_challenge(&mut self, cmd: &Command) -> Response {
        if cmd.p1 != 0 || cmd.p2 != 0 {
            return Response::status(StatusWord::INCORRECT_P1P2);
        }
        let ne = match cmd.le {
            Some(ne) if cmd.data.is_empty() && ne <= MAX_CHALLENGE => ne,
            _ => return Response::status(StatusWord::WRONG_LENGTH),
        };
        let mut challenge = vec![0u8; ne];
        self.rng.fill_random(&mut challenge);
        self.challenge = Some(challenge.clone());
        Response::ok(challenge)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use tessera_crypto::rng::SeededRng;

    use super::*;
    use crate::applet::{PowerCut, StateError, TearDriver};
    use crate::applets::isd::scenarios::{open_initial, store};
    use crate::applets::{Provisioning, registry};
    use crate::script::Script;
    use crate::storage::MemoryStorage;

    /// A test applet: a persistent byte string and a counter.
    #[derive(Default, Serialize, Deserialize)]
    struct Notes {
        text: Vec<u8>,
        count: u32,
    }

    struct NotesApplet(Notes);

    const NOTES_AID: &[u8] = &[0xF0, 0x74, 0x65, 0x73, 0x74, 0x01];

    impl Applet for NotesApplet {
        fn aid(&self) -> &'static [u8] {
            NOTES_AID
        }
        fn name(&self) -> &'static str {
            "notes"
        }
        fn save(&self) -> Vec<u8> {
            encode_state(&self.0)
        }
        fn load(&mut self, state: &[u8]) -> Result<(), StateError> {
            self.0 = decode_state(state)?;
            Ok(())
        }
        fn clear_volatile(&mut self) {}
        fn select(&mut self, _ctx: &mut Context<'_>) -> Result<Vec<u8>, StatusWord> {
            Ok(Vec::new())
        }
        fn call(&mut self, ctx: &mut Context<'_>, cmd: &Command) -> Result<Response, StatusWord> {
            match cmd.ins {
                // Append, then fail: nothing may remain.
                0x01 => {
                    self.0.text.extend_from_slice(&cmd.data);
                    Err(StatusWord::INCORRECT_DATA)
                }
                // Append and succeed.
                0x02 => {
                    self.0.text.extend_from_slice(&cmd.data);
                    Ok(Response::ok(Vec::new()))
                }
                // Count durably, then fail: the count remains, the text change does not.
                0x03 => {
                    self.0.count += 1;
                    ctx.commit(&self.save())?;
                    self.0.text.push(b'!');
                    Err(StatusWord::tries_left(1))
                }
                0x04 => Ok(Response::ok(self.0.text.clone())),
                // Device authentication through the runtime API: the card's device key signs
                // the labelled structure over the data; answers the public key and signature.
                0x05 => {
                    let sig = ctx.device_sign(
                        tessera_crypto::device::Purpose::DeviceAuthentication,
                        &cmd.data,
                    )?;
                    let key = ctx.card().device.public_key().ok_or(StatusWord::UNKNOWN)?;
                    Ok(Response::ok([&key.to_sec1_bytes()[..], &sig.to_bytes()].concat()))
                }
                _ => Err(StatusWord::INS_NOT_SUPPORTED),
            }
        }
        fn personalize(
            &mut self,
            _ctx: &mut Context<'_>,
            dgi: u16,
            data: &[u8],
        ) -> Result<(), StatusWord> {
            match dgi {
                0x0201 => {
                    self.0.text = data.to_vec();
                    Ok(())
                }
                _ => Err(StatusWord::REFERENCED_DATA_NOT_FOUND),
            }
        }
    }

    fn runtime() -> Runtime {
        // The ISD and a test applet only: these tests do not depend on the other applets.
        let mut applets = registry(&Provisioning::default());
        applets.truncate(1);
        applets.push(Box::new(NotesApplet(Notes::default())));
        let store =
            Store::create(Box::new(MemoryStorage::new()), None, initial_state(&applets)).unwrap();
        Runtime::new(store, applets, Box::new(SeededRng::from_u64(3))).unwrap()
    }

    struct Direct<'a>(&'a mut Runtime);

    impl TearDriver for Direct<'_> {
        fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
            Ok(self.0.transmit(apdu).to_bytes())
        }
        fn arm(&mut self) {}
    }

    fn send(rt: &mut Runtime, cmd: Command) -> Response {
        rt.transmit(&cmd.to_bytes().unwrap())
    }

    fn notes(rt: &mut Runtime) -> Vec<u8> {
        send(rt, Command::new(0, 0xA4, 4, 0).with_data(NOTES_AID.to_vec()));
        send(rt, Command::new(0x80, 0x04, 0, 0).with_le(256)).data
    }

    #[test]
    fn applets_sign_device_authentication_through_the_context() {
        use crate::applets::isd::scenarios::{CARD_ID, NONCE, generate_key_pair};
        use tessera_crypto::device::{Purpose, verify};
        use tessera_crypto::ecdsa::{PublicKey, Signature};
        let mut rt = runtime();
        let sign = |rt: &mut Runtime| {
            send(rt, Command::new(0, 0xA4, 4, 0).with_data(NOTES_AID.to_vec()));
            send(rt, Command::new(0x80, 0x05, 0, 0).with_data(b"challenge".to_vec()).with_le(256))
        };
        // No device key yet: 6A88, nothing signed.
        assert_eq!(sign(&mut rt).sw, StatusWord::REFERENCED_DATA_NOT_FOUND);
        let public = {
            let mut d = Direct(&mut rt);
            let mut s = Script::new(&mut d);
            open_initial(&mut s).unwrap();
            store(&mut s, 0, true, &[(crate::applets::isd::DGI_CARD_ID, CARD_ID)]).unwrap();
            generate_key_pair(&mut s, &NONCE).unwrap().0
        };
        let r = sign(&mut rt);
        assert_eq!(r.sw, StatusWord::SUCCESS);
        assert_eq!(PublicKey::from_sec1_bytes(&r.data[..65]).unwrap(), public);
        let sig = Signature::from_bytes(&r.data[65..]).unwrap();
        verify(&public, Purpose::DeviceAuthentication, CARD_ID, b"challenge", &sig).unwrap();
        // Bound to this card's id and the purpose: not a signature over the raw challenge.
        assert!(verify(&public, Purpose::PossessionProof, CARD_ID, b"challenge", &sig).is_err());
        assert!(
            verify(&public, Purpose::DeviceAuthentication, b"OTHER", b"challenge", &sig).is_err()
        );
        assert!(public.verify(b"challenge", &sig).is_err());
    }

    #[test]
    fn an_applet_new_to_the_image_is_installed_at_open() {
        let isd_only = registry(&Provisioning::default());
        let store =
            Store::create(Box::new(MemoryStorage::new()), None, initial_state(&isd_only)).unwrap();
        let mut applets = registry(&Provisioning::default());
        applets.push(Box::new(NotesApplet(Notes { text: b"fresh".to_vec(), count: 0 })));
        let mut rt = Runtime::new(store, applets, Box::new(SeededRng::from_u64(3))).unwrap();
        assert_eq!(rt.core.store.generation(), 2);
        assert!(rt.core.store.get(NOTES_AID).is_some());
        assert_eq!(
            send(&mut rt, Command::new(0, 0xA4, 4, 0).with_data(NOTES_AID.to_vec())).sw,
            StatusWord::SUCCESS
        );
        assert_eq!(
            send(&mut rt, Command::new(0x80, 0x01, 0, 0).with_data(b"x".to_vec())).sw,
            StatusWord::INCORRECT_DATA
        );
        assert_eq!(notes(&mut rt), b"fresh");
    }

    #[test]
    fn failed_commands_roll_back_and_successful_ones_commit() {
        let mut rt = runtime();
        assert_eq!(
            send(&mut rt, Command::new(0, 0xA4, 4, 0).with_data(NOTES_AID.to_vec())).sw,
            StatusWord::SUCCESS
        );
        let g = rt.core.store.generation();
        assert_eq!(
            send(&mut rt, Command::new(0x80, 0x01, 0, 0).with_data(b"lost".to_vec())).sw,
            StatusWord::INCORRECT_DATA
        );
        assert_eq!(rt.core.store.generation(), g, "a failed command writes nothing");
        assert_eq!(notes(&mut rt), b"");
        assert_eq!(
            send(&mut rt, Command::new(0x80, 0x02, 0, 0).with_data(b"kept".to_vec())).sw,
            StatusWord::SUCCESS
        );
        assert_eq!(rt.core.store.generation(), g + 1);
        assert_eq!(notes(&mut rt), b"kept");
        assert_eq!(send(&mut rt, Command::new(0x80, 0x03, 0, 0)).sw, StatusWord::tries_left(1));
        assert_eq!(rt.core.store.generation(), g + 2, "the mid-command commit stays");
        assert_eq!(notes(&mut rt), b"kept", "the change after it does not");
        let state: Notes = decode_state(rt.core.store.get(NOTES_AID).unwrap()).unwrap();
        assert_eq!(state.count, 1);
    }

    #[test]
    fn the_isd_routes_personalisation_data_to_an_applet() {
        let mut rt = runtime();
        let mut d = Direct(&mut rt);
        let mut s = Script::new(&mut d);
        open_initial(&mut s).unwrap();
        // INSTALL [for personalization] for an AID that is not on the card.
        let install = |aid: &[u8]| {
            let mut data = vec![0x00, aid.len() as u8];
            data.extend_from_slice(aid);
            data.extend_from_slice(&[0, 0, 0]);
            Command::new(0x80, 0xE6, 0x20, 0x00).with_data(data).with_le(256)
        };
        s.secure(&install(&[0xF0, 1, 2, 3, 4]), StatusWord::REFERENCED_DATA_NOT_FOUND).unwrap();
        let status = s
            .secure(
                &Command::new(0x80, 0xF2, 0x40, 0x02).with_data(vec![0x4F, 0x00]).with_le(256),
                StatusWord::SUCCESS,
            )
            .unwrap();
        assert_eq!(
            status.data,
            [
                &[0xE3, 0x11, 0x4F, 0x06][..],
                NOTES_AID,
                &[0x9F, 0x70, 0x01, 0x07, 0xC5, 0x03, 0, 0, 0]
            ]
            .concat()
        );
        s.secure(&install(NOTES_AID), StatusWord::SUCCESS).unwrap();
        // A group the applet refuses fails the whole block.
        let r = s.secure(
            &Command::new(0x80, 0xE2, 0x88, 0x00)
                .with_data(vec![0x02, 0x01, 0x01, b'x', 0x09, 0x09, 0x00]),
            StatusWord::REFERENCED_DATA_NOT_FOUND,
        );
        assert!(r.is_ok(), "{r:?}");
        drop(s);
        let notes_state: Notes = decode_state(&rt.core.applets[1].save()).unwrap();
        assert_eq!(notes_state.text, b"", "the peer's change was rolled back with the block");
        let mut d = Direct(&mut rt);
        let mut s = Script::new(&mut d);
        open_initial(&mut s).unwrap();
        s.secure(&install(NOTES_AID), StatusWord::SUCCESS).unwrap();
        store(&mut s, 0, true, &[(0x0201, b"personalised")]).unwrap();
        // After the last block, STORE DATA goes to the ISD again.
        store(&mut s, 0, true, &[(crate::applets::isd::DGI_CARD_ID, b"ID")]).unwrap();
        drop(s);
        assert_eq!(notes(&mut rt), b"personalised");
        assert_eq!(rt.core.card.card_id, b"ID");
    }
}
