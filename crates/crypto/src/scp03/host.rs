//! The host side of SCP03.

use subtle::ConstantTimeEq;
use tessera_apdu::{Command, Response, StatusWord};

use super::kdf::{SessionKeys, pseudo_random_challenge};
use super::session::{CLA_SM, SecureMessaging, mac_cla};
use super::{
    CHALLENGE_LEN, DIVERSIFICATION_DATA_LEN, INS_EXTERNAL_AUTHENTICATE, INS_INITIALIZE_UPDATE,
    SCP_ID, ScpOptions, SecurityLevel, StaticKeys,
};
use crate::mac::AesCmac;
use crate::rng::{Rng, random_array};
use crate::{CryptoError, Result};

/// An INITIALIZE UPDATE sent, waiting for the card's answer.
#[derive(Debug)]
pub struct HostHandshake {
    kvn: u8,
    channel: u8,
    host_challenge: [u8; CHALLENGE_LEN],
}

/// The card's answer to INITIALIZE UPDATE, parsed; its cryptogram is checked once the static
/// keys are known (they may be diversified with [`CardHello::diversification_data`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardHello {
    /// Key diversification data (10 bytes).
    pub diversification_data: [u8; DIVERSIFICATION_DATA_LEN],
    /// The key version the card used.
    pub kvn: u8,
    /// The card's `i` parameter.
    pub options: ScpOptions,
    /// The card challenge.
    pub card_challenge: [u8; CHALLENGE_LEN],
    /// The sequence counter, present with a pseudo-random challenge.
    pub sequence_counter: Option<u32>,
    card_cryptogram: [u8; CHALLENGE_LEN],
    host_challenge: [u8; CHALLENGE_LEN],
    channel: u8,
}

/// EXTERNAL AUTHENTICATE sent, waiting for the card's `9000`.
pub struct PendingExternalAuth {
    sm: SecureMessaging,
    channel: u8,
}

impl core::fmt::Debug for PendingExternalAuth {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PendingExternalAuth({:?})", self.sm.level())
    }
}

/// An open SCP03 session, host side: wraps commands, unwraps responses.
///
/// A failed R-MAC or malformed protected response ends the session; later calls fail with
/// [`CryptoError::ChannelState`].
pub struct Scp03Host {
    sm: Option<SecureMessaging>,
    channel: u8,
}

impl core::fmt::Debug for Scp03Host {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Scp03Host({:?})", self.security_level())
    }
}

impl Scp03Host {
    /// Starts a handshake with a random host challenge: returns INITIALIZE UPDATE
    /// `80|ch 50 KVN 00 08 <host challenge> 00`. `kvn` `00` lets the card choose its key set.
    pub fn initialize_update<R: Rng + ?Sized>(
        kvn: u8,
        channel: u8,
        rng: &mut R,
    ) -> Result<(HostHandshake, Command)> {
        HostHandshake::with_challenge(kvn, channel, random_array(rng))
    }

    /// The session's level, or `None` once a failure has ended it.
    pub fn security_level(&self) -> Option<SecurityLevel> {
        self.sm.as_ref().map(|sm| sm.level())
    }

    /// Protects a command: C-DECRYPTION if the level says so, then the C-MAC. The command must
    /// use this session's logical channel and a class byte without the SM bit.
    pub fn wrap_command(&mut self, cmd: &Command) -> Result<Command> {
        let sm = self.sm.as_mut().ok_or(CryptoError::ChannelState("session closed"))?;
        if cmd.cla & 0x03 != self.channel {
            return Err(CryptoError::ChannelParameter("command on another logical channel"));
        }
        sm.wrap_command(cmd)
    }

    /// Verifies the R-MAC and decrypts the response as the level says. Any failure ends the
    /// session.
    pub fn unwrap_response(&mut self, resp: &Response) -> Result<Response> {
        let sm = self.sm.as_mut().ok_or(CryptoError::ChannelState("session closed"))?;
        let r = sm.unwrap_response(resp);
        if r.is_err() {
            self.sm = None;
        }
        r
    }
}

impl HostHandshake {
    /// Starts a handshake with a given host challenge (for replaying published vectors;
    /// use [`Scp03Host::initialize_update`] otherwise).
    pub fn with_challenge(
        kvn: u8,
        channel: u8,
        host_challenge: [u8; CHALLENGE_LEN],
    ) -> Result<(Self, Command)> {
        if kvn > 0x7F {
            return Err(CryptoError::ChannelParameter("key version number must be 00 to 7F"));
        }
        if channel > 3 {
            return Err(CryptoError::ChannelParameter("logical channel must be 0 to 3"));
        }
        let cmd = Command::new(0x80 | channel, INS_INITIALIZE_UPDATE, kvn, 0)
            .with_data(host_challenge.to_vec())
            .with_le(256);
        Ok((Self { kvn, channel, host_challenge }, cmd))
    }

    /// Parses the card's answer to INITIALIZE UPDATE.
    pub fn card_hello(self, resp: &Response) -> Result<CardHello> {
        if resp.sw != StatusWord::SUCCESS {
            return Err(CryptoError::ChannelState("card refused INITIALIZE UPDATE"));
        }
        let d = &resp.data;
        if d.len() != 29 && d.len() != 32 {
            return Err(CryptoError::Malformed("INITIALIZE UPDATE response length"));
        }
        let kvn = d[10];
        if d[11] != SCP_ID {
            return Err(CryptoError::ChannelParameter("card does not speak SCP03"));
        }
        if self.kvn != 0 && kvn != self.kvn {
            return Err(CryptoError::UnknownKeyVersion(kvn));
        }
        let options = ScpOptions::from_byte(d[12])?;
        let sequence_counter = match (options.pseudo_random_challenge, d.len()) {
            (true, 32) => Some(u32::from_be_bytes([0, d[29], d[30], d[31]])),
            (false, 29) => None,
            _ => return Err(CryptoError::Malformed("sequence counter presence contradicts i")),
        };
        let mut diversification_data = [0u8; DIVERSIFICATION_DATA_LEN];
        diversification_data.copy_from_slice(&d[..10]);
        let mut card_challenge = [0u8; CHALLENGE_LEN];
        card_challenge.copy_from_slice(&d[13..21]);
        let mut card_cryptogram = [0u8; CHALLENGE_LEN];
        card_cryptogram.copy_from_slice(&d[21..29]);
        Ok(CardHello {
            diversification_data,
            kvn,
            options,
            card_challenge,
            sequence_counter,
            card_cryptogram,
            host_challenge: self.host_challenge,
            channel: self.channel,
        })
    }
}

impl CardHello {
    /// Checks the card cryptogram under `keys` (and, given the security domain's `aid`, that a
    /// pseudo-random challenge is the one its sequence counter dictates), derives the session
    /// keys and builds EXTERNAL AUTHENTICATE `84|ch 82 SL 00 10 <host cryptogram> <C-MAC>`.
    pub fn external_authenticate(
        self,
        keys: &StaticKeys,
        level: SecurityLevel,
        aid: Option<&[u8]>,
    ) -> Result<(PendingExternalAuth, Command)> {
        keys.check()?;
        if keys.kvn != self.kvn {
            return Err(CryptoError::UnknownKeyVersion(self.kvn));
        }
        if !self.options.supports(level) {
            return Err(CryptoError::ChannelParameter("security level not offered by the card"));
        }
        if let (Some(counter), Some(aid)) = (self.sequence_counter, aid) {
            let expected = pseudo_random_challenge(&keys.enc, counter, aid);
            if !bool::from(expected.ct_eq(&self.card_challenge)) {
                return Err(CryptoError::AuthenticationFailed);
            }
        }
        let sk = SessionKeys::derive(keys, &self.host_challenge, &self.card_challenge)?;
        let expected = sk.card_cryptogram(&self.host_challenge, &self.card_challenge);
        if !bool::from(expected.ct_eq(&self.card_cryptogram)) {
            return Err(CryptoError::AuthenticationFailed);
        }
        let host_cryptogram = sk.host_cryptogram(&self.host_challenge, &self.card_challenge);
        let cla = 0x80 | CLA_SM | self.channel;
        let p1 = level.to_byte();
        let mut m = AesCmac::new(&sk.s_mac);
        m.update(&[0u8; 16]).update(&[mac_cla(cla), INS_EXTERNAL_AUTHENTICATE, p1, 0, 0x10]);
        m.update(&host_cryptogram);
        let mac = m.finalize();
        let mut data = host_cryptogram.to_vec();
        data.extend_from_slice(&mac[..8]);
        let cmd = Command::new(cla, INS_EXTERNAL_AUTHENTICATE, p1, 0).with_data(data);
        Ok((
            PendingExternalAuth { sm: SecureMessaging::new(sk, level, mac), channel: self.channel },
            cmd,
        ))
    }
}

impl PendingExternalAuth {
    /// Opens the session when the card answered `9000`.
    pub fn finish(self, resp: &Response) -> Result<Scp03Host> {
        if resp.sw != StatusWord::SUCCESS || !resp.data.is_empty() {
            return Err(CryptoError::AuthenticationFailed);
        }
        Ok(Scp03Host { sm: Some(self.sm), channel: self.channel })
    }
}
