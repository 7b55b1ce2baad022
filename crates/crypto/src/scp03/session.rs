//! Secure messaging of an open SCP03 session (Amendment D sections 6.2.4 to 6.2.7), shared by
//! the host and the card side.

use subtle::ConstantTimeEq;
use tessera_apdu::{Command, Response};
use zeroize::Zeroize;

use super::{SecurityLevel, SessionKeys};
use crate::block::{AesCipher, BLOCK, pad_iso9797_m2, unpad_iso9797_m2};
use crate::mac::AesCmac;
use crate::{CryptoError, Result};

/// Largest Nc of a short command APDU.
const SHORT_MAX_NC: usize = 255;
/// Ne that asks for up to 256 response bytes (short Le `00`).
const SHORT_MAX_NE: usize = 256;
/// Largest Ne of an extended APDU.
const EXTENDED_MAX_NE: usize = 65536;

/// Length of a C-MAC or R-MAC in S8 mode.
pub(crate) const MAC_LEN: usize = 8;
/// The secure-messaging indication bit of a first-interindustry or GlobalPlatform CLA.
pub const CLA_SM: u8 = 0x04;

/// True when `cmd` has the secure-messaging bit of its class byte set.
pub fn has_secure_messaging(cmd: &Command) -> bool {
    cmd.cla & 0x40 == 0 && cmd.cla & CLA_SM != 0
}

/// The class byte as it enters the C-MAC: logical channel bits cleared, b4 cleared, b3 set.
pub(crate) fn mac_cla(cla: u8) -> u8 {
    (cla & 0xF0) | CLA_SM
}

/// True for the status words whose responses are protected: `9000`, `62xx`, `63xx`.
/// Responses with any other (error) status word carry no data, no R-MAC and no encryption.
pub(crate) fn is_protected_status(sw: tessera_apdu::StatusWord) -> bool {
    sw.0 == 0x9000 || sw.sw1() == 0x62 || sw.sw1() == 0x63
}

/// The state of an authenticated session: the session keys (expanded once), level, MAC chaining
/// value, encryption counter.
pub(crate) struct SecureMessaging {
    /// S-ENC expanded once per session.
    enc: AesCipher,
    /// Keyed C-MAC and R-MAC computations, reset after each MAC.
    mac: AesCmac,
    rmac: AesCmac,
    level: SecurityLevel,
    mac_chain: [u8; 16],
    counter: u64,
}

impl Drop for SecureMessaging {
    fn drop(&mut self) {
        self.mac_chain.zeroize();
    }
}

impl SecureMessaging {
    /// A session just after EXTERNAL AUTHENTICATE, whose C-MAC is the first chaining value.
    pub(crate) fn new(keys: SessionKeys, level: SecurityLevel, ext_auth_mac: [u8; 16]) -> Self {
        let enc = AesCipher::new(&keys.s_enc);
        let mac = AesCmac::new(&keys.s_mac);
        let rmac = AesCmac::new(&keys.s_rmac);
        Self { enc, mac, rmac, level, mac_chain: ext_auth_mac, counter: 0 }
    }

    pub(crate) fn level(&self) -> SecurityLevel {
        self.level
    }

    /// The ICV for the command with encryption counter `counter` (Amendment D 6.2.6), or for
    /// its response (6.2.7: the block's first byte set to `80`).
    fn icv(&self, counter: u64, response: bool) -> [u8; BLOCK] {
        let mut block = [0u8; BLOCK];
        block[8..].copy_from_slice(&counter.to_be_bytes());
        if response {
            block[0] = 0x80;
        }
        self.enc.encrypt_block(&mut block);
        block
    }

    fn c_mac(&mut self, cla: u8, cmd: &Command, lc: u8, data: &[u8]) -> [u8; 16] {
        let header = [mac_cla(cla), cmd.ins, cmd.p1, cmd.p2, lc];
        self.mac.update(&self.mac_chain).update(&header).update(data).finalize_reset()
    }

    fn r_mac(&mut self, data: &[u8], sw: [u8; 2]) -> [u8; 16] {
        self.rmac.update(&self.mac_chain).update(data).update(&sw).finalize_reset()
    }

    /// Decrypts `data` in place under the ICV of `counter` and removes the padding.
    fn decrypt(&self, counter: u64, response: bool, data: &mut Vec<u8>) -> Result<()> {
        let icv = self.icv(counter, response);
        let plain_len =
            self.enc.cbc_decrypt(&icv, data).and_then(|()| unpad_iso9797_m2(data).map(<[u8]>::len));
        match plain_len {
            Ok(n) => {
                data[n..].zeroize();
                data.truncate(n);
                Ok(())
            }
            Err(e) => {
                data.zeroize();
                Err(e)
            }
        }
    }

    /// Host: protects a plain command (C-DECRYPTION if the level says so, then C-MAC).
    pub(crate) fn wrap_command(&mut self, cmd: &Command) -> Result<Command> {
        check_plain_cla(cmd.cla)?;
        if cmd.is_extended() {
            return Err(CryptoError::InvalidLength("SCP03 wraps short APDUs only"));
        }
        let next_counter = self
            .counter
            .checked_add(1)
            .ok_or(CryptoError::ChannelState("encryption counter exhausted"))?;
        let encrypt = self.level.c_decryption() && !cmd.data.is_empty();
        let body_len = if encrypt { (cmd.data.len() / BLOCK + 1) * BLOCK } else { cmd.data.len() };
        let lc = body_len + MAC_LEN;
        if lc > SHORT_MAX_NC {
            return Err(CryptoError::InvalidLength("wrapped command data longer than 255 bytes"));
        }
        let mut data = Vec::with_capacity(lc);
        data.extend_from_slice(&cmd.data);
        if encrypt {
            pad_iso9797_m2(&mut data);
            let icv = self.icv(next_counter, false);
            self.enc.cbc_encrypt(&icv, &mut data)?;
        }
        let mac = self.c_mac(cmd.cla, cmd, lc as u8, &data);
        // Commit only now that nothing can fail.
        self.counter = next_counter;
        self.mac_chain = mac;
        data.extend_from_slice(&mac[..MAC_LEN]);
        // Le grows to 256 so the R-MAC and encryption padding always fit.
        Ok(Command {
            cla: cmd.cla | CLA_SM,
            ins: cmd.ins,
            p1: cmd.p1,
            p2: cmd.p2,
            data,
            le: cmd.le.map(|_| SHORT_MAX_NE),
        })
    }

    /// Card: checks the C-MAC and removes the protection of a command. Any error here ends the
    /// session (the caller drops this state).
    pub(crate) fn unwrap_command(&mut self, cmd: &Command) -> Result<Command> {
        if !has_secure_messaging(cmd) {
            return Err(CryptoError::ChannelParameter("command without secure messaging"));
        }
        if cmd.data.len() < MAC_LEN || cmd.data.len() > SHORT_MAX_NC {
            return Err(CryptoError::Malformed("secured command data length"));
        }
        let (body, tag) = cmd.data.split_at(cmd.data.len() - MAC_LEN);
        let mac = self.c_mac(cmd.cla, cmd, cmd.data.len() as u8, body);
        if !bool::from(mac[..MAC_LEN].ct_eq(tag)) {
            return Err(CryptoError::AuthenticationFailed);
        }
        self.mac_chain = mac;
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or(CryptoError::ChannelState("encryption counter exhausted"))?;
        let mut data = body.to_vec();
        if self.level.c_decryption() && !data.is_empty() {
            self.decrypt(self.counter, false, &mut data)?;
        }
        Ok(Command {
            cla: cmd.cla & !CLA_SM,
            ins: cmd.ins,
            p1: cmd.p1,
            p2: cmd.p2,
            data,
            le: cmd.le,
        })
    }

    /// Card: protects a response (R-ENCRYPTION, then R-MAC) if the level says so.
    pub(crate) fn wrap_response(&mut self, resp: &Response) -> Result<Response> {
        if !is_protected_status(resp.sw) {
            return Ok(Response::status(resp.sw));
        }
        let encrypt = self.level.r_encryption() && !resp.data.is_empty();
        let body_len =
            if encrypt { (resp.data.len() / BLOCK + 1) * BLOCK } else { resp.data.len() };
        let len = body_len + if self.level.r_mac() { MAC_LEN } else { 0 };
        if len > EXTENDED_MAX_NE {
            return Err(CryptoError::InvalidLength("wrapped response longer than 65536 bytes"));
        }
        let mut data = Vec::with_capacity(len);
        data.extend_from_slice(&resp.data);
        if encrypt {
            pad_iso9797_m2(&mut data);
            self.enc.cbc_encrypt(&self.icv(self.counter, true), &mut data)?;
        }
        if self.level.r_mac() {
            let mac = self.r_mac(&data, resp.sw.to_bytes());
            data.extend_from_slice(&mac[..MAC_LEN]);
        }
        Ok(Response { data, sw: resp.sw })
    }

    /// Host: checks the R-MAC and removes the protection of a response. Any error here ends the
    /// session (the caller drops this state).
    pub(crate) fn unwrap_response(&mut self, resp: &Response) -> Result<Response> {
        let sw = resp.sw;
        if !is_protected_status(sw) {
            if resp.data.is_empty() {
                return Ok(Response::status(sw));
            }
            return Err(CryptoError::Malformed("data in a response with an error status"));
        }
        let mut body: &[u8] = &resp.data;
        if self.level.r_mac() {
            if body.len() < MAC_LEN {
                return Err(CryptoError::Malformed("response shorter than its R-MAC"));
            }
            let (b, tag) = body.split_at(body.len() - MAC_LEN);
            let mac = self.r_mac(b, sw.to_bytes());
            if !bool::from(mac[..MAC_LEN].ct_eq(tag)) {
                return Err(CryptoError::AuthenticationFailed);
            }
            body = b;
        }
        let mut data = body.to_vec();
        if self.level.r_encryption() && !data.is_empty() {
            self.decrypt(self.counter, true, &mut data)?;
        }
        Ok(Response { data, sw })
    }
}

/// Accepts the class bytes SCP03 can protect: first interindustry (`0x00`-`0x3F`) and
/// GlobalPlatform proprietary (`0x80`-`0xBF`) coding, without the SM bit already set.
pub(crate) fn check_plain_cla(cla: u8) -> Result<()> {
    if cla & 0x40 != 0 {
        return Err(CryptoError::ChannelParameter("further interindustry class not supported"));
    }
    if cla & CLA_SM != 0 {
        return Err(CryptoError::ChannelParameter("class byte already indicates secure messaging"));
    }
    Ok(())
}
