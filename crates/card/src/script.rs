//! Host-side scripting of a card, for tear scenarios and tests: plain and SCP03-secured
//! exchanges through a [`TearDriver`], with a deterministic host random generator.

use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::rng::SeededRng;
use tessera_crypto::scp03::{
    Scp03Host, SecurityLevel, StaticKeys, encrypt_key_component, key_check_value,
};

use crate::applet::{TearDriver, TearError};

/// A script running against a card: sends commands, checks status words, opens SCP03.
pub struct Script<'a> {
    driver: &'a mut dyn TearDriver,
    scp: Option<Scp03Host>,
    rng: SeededRng,
}

fn unexpected(what: impl Into<String>) -> TearError {
    TearError::Unexpected(what.into())
}

impl<'a> Script<'a> {
    /// A script over `driver`; host challenges come from a generator seeded with a constant.
    pub fn new(driver: &'a mut dyn TearDriver) -> Self {
        Self { driver, scp: None, rng: SeededRng::from_u64(0x5C09_0003) }
    }

    /// Marks the start of the state-changing part (see [`TearDriver::arm`]).
    pub fn arm(&mut self) {
        self.driver.arm();
    }

    /// Sends a plain command.
    pub fn send(&mut self, cmd: &Command) -> Result<Response, TearError> {
        let bytes = cmd.to_bytes().map_err(|e| unexpected(format!("encode: {e}")))?;
        let out = self.driver.transmit(&bytes)?;
        Response::parse(&out).ok_or_else(|| unexpected("response shorter than a status word"))
    }

    /// Sends a plain command and checks its status word.
    pub fn expect(&mut self, cmd: &Command, sw: StatusWord) -> Result<Response, TearError> {
        let r = self.send(cmd)?;
        if r.sw != sw {
            return Err(unexpected(format!(
                "{:02X}{:02X}: expected {sw}, card answered {}",
                cmd.cla, cmd.ins, r.sw
            )));
        }
        Ok(r)
    }

    /// SELECT by AID, expecting `9000`.
    pub fn select(&mut self, aid: &[u8]) -> Result<Response, TearError> {
        self.expect(
            &Command::new(0x00, 0xA4, 0x04, 0x00).with_data(aid.to_vec()).with_le(256),
            StatusWord::SUCCESS,
        )
    }

    /// Opens an SCP03 session with `keys` at `level` (INITIALIZE UPDATE, check of the card
    /// cryptogram, EXTERNAL AUTHENTICATE), failing unless the card accepts.
    pub fn open_session(
        &mut self,
        keys: &StaticKeys,
        level: SecurityLevel,
    ) -> Result<(), TearError> {
        self.scp = None;
        let (handshake, iu) = Scp03Host::initialize_update(keys.kvn, 0, &mut self.rng)
            .map_err(|e| unexpected(format!("INITIALIZE UPDATE: {e}")))?;
        let resp = self.expect(&iu, StatusWord::SUCCESS)?;
        let hello =
            handshake.card_hello(&resp).map_err(|e| unexpected(format!("card hello: {e}")))?;
        let (pending, ea) = hello
            .external_authenticate(keys, level, None)
            .map_err(|e| unexpected(format!("EXTERNAL AUTHENTICATE: {e}")))?;
        let resp = self.expect(&ea, StatusWord::SUCCESS)?;
        self.scp = Some(pending.finish(&resp).map_err(|e| unexpected(format!("session: {e}")))?);
        Ok(())
    }

    /// INITIALIZE UPDATE then an EXTERNAL AUTHENTICATE with a wrong cryptogram and MAC; returns
    /// the card's status word to the latter (`6300` while attempts remain).
    pub fn failed_authentication(
        &mut self,
        kvn: u8,
        arm_before_external_authenticate: bool,
    ) -> Result<StatusWord, TearError> {
        self.scp = None;
        let (_, iu) = Scp03Host::initialize_update(kvn, 0, &mut self.rng)
            .map_err(|e| unexpected(format!("INITIALIZE UPDATE: {e}")))?;
        self.expect(&iu, StatusWord::SUCCESS)?;
        if arm_before_external_authenticate {
            self.arm();
        }
        let ea = Command::new(0x84, 0x82, 0x03, 0x00).with_data(vec![0xEE; 16]);
        Ok(self.send(&ea)?.sw)
    }

    /// Wraps a command for the open session without sending it (for tests that tamper with
    /// the protected APDU).
    pub fn wrap(&mut self, cmd: &Command) -> Result<Command, TearError> {
        let scp = self.scp.as_mut().ok_or_else(|| unexpected("no SCP03 session"))?;
        scp.wrap_command(cmd).map_err(|e| unexpected(format!("wrap: {e}")))
    }

    /// Sends a command through the open session, expecting `sw`; returns the unwrapped response.
    pub fn secure(&mut self, cmd: &Command, sw: StatusWord) -> Result<Response, TearError> {
        let scp = self.scp.as_mut().ok_or_else(|| unexpected("no SCP03 session"))?;
        let wrapped = scp.wrap_command(cmd).map_err(|e| unexpected(format!("wrap: {e}")))?;
        let resp = self.send(&wrapped)?;
        let scp = self.scp.as_mut().ok_or_else(|| unexpected("no SCP03 session"))?;
        let plain = scp.unwrap_response(&resp).map_err(|e| unexpected(format!("unwrap: {e}")))?;
        if plain.sw != sw {
            return Err(unexpected(format!(
                "secured {:02X}{:02X}: expected {sw}, card answered {}",
                cmd.cla, cmd.ins, plain.sw
            )));
        }
        Ok(plain)
    }
}

/// The data of PUT KEY replacing the key set with `new` (GP 2.3 11.8, Amendment D 7.2): new
/// KVN, then for ENC, MAC, DEK: `88 L Lk <key encrypted under dek> 03 <KCV>`.
pub fn put_key_data(dek: &StaticKeys, new: &StaticKeys) -> Result<Vec<u8>, TearError> {
    let mut data = vec![new.kvn];
    for key in [&new.enc, &new.mac, &new.dek] {
        let block = encrypt_key_component(&dek.dek, key.expose_secret())
            .map_err(|e| unexpected(format!("encrypt key: {e}")))?;
        data.push(0x88);
        data.push(block.len() as u8);
        data.extend_from_slice(&block);
        data.push(3);
        data.extend_from_slice(&key_check_value(key));
    }
    Ok(data)
}
