//! The card side of SCP03.

use subtle::ConstantTimeEq;
use tessera_apdu::{Command, Response, StatusWord};

use super::kdf::{SessionKeys, pseudo_random_challenge};
use super::session::{SecureMessaging, check_plain_cla, has_secure_messaging, mac_cla};
use super::{
    CHALLENGE_LEN, DIVERSIFICATION_DATA_LEN, INS_EXTERNAL_AUTHENTICATE, INS_INITIALIZE_UPDATE,
    MAX_SEQUENCE_COUNTER, SCP_ID, ScpOptions, SecurityLevel, StaticKeys,
};
use crate::mac::AesCmac;
use crate::rng::{Rng, random_array};
use crate::{CryptoError, Result};

/// A parsed INITIALIZE UPDATE command: `80 50 KVN 00 08 <host challenge> 00`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitializeUpdate {
    /// P1: the key version to use, `00` for "the first available key set".
    pub kvn: u8,
    /// The host challenge.
    pub host_challenge: [u8; CHALLENGE_LEN],
    /// The logical channel of the class byte.
    pub channel: u8,
}

impl InitializeUpdate {
    /// Parses the command; the card runtime uses [`InitializeUpdate::kvn`] to pick the key set.
    pub fn parse(cmd: &Command) -> Result<Self> {
        check_plain_cla(cmd.cla)?;
        if cmd.ins != INS_INITIALIZE_UPDATE {
            return Err(CryptoError::ChannelParameter("not INITIALIZE UPDATE"));
        }
        if cmd.p2 != 0 {
            return Err(CryptoError::ChannelParameter("INITIALIZE UPDATE P2 must be 00"));
        }
        let host_challenge = cmd
            .data
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::InvalidLength("host challenge must be 8 bytes"))?;
        Ok(Self { kvn: cmd.p1, host_challenge, channel: cmd.cla & 0x03 })
    }
}

/// Where the card challenge comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardChallengeSource<'a> {
    /// Eight bytes from the generator passed to [`Scp03Card::initialize_update`].
    Random,
    /// Derived from the sequence counter and the security domain's AID (`i` bit `10`).
    PseudoRandom {
        /// The card's current sequence counter (24 bits).
        sequence_counter: u32,
        /// The AID of the security domain being authenticated to.
        aid: &'a [u8],
    },
}

/// What the card needs to answer INITIALIZE UPDATE.
#[derive(Clone, Copy, Debug)]
pub struct CardConfig<'a> {
    /// The static key set chosen for the command's key version.
    pub keys: &'a StaticKeys,
    /// The 10 bytes of key diversification data returned to the host.
    pub diversification_data: [u8; DIVERSIFICATION_DATA_LEN],
    /// Whether the card offers R-MAC (security levels `11`, `13`, `33`).
    pub r_mac: bool,
    /// Whether the card offers R-ENCRYPTION (level `33`; requires `r_mac`).
    pub r_enc: bool,
    /// The card challenge's source.
    pub challenge: CardChallengeSource<'a>,
}

/// The result of INITIALIZE UPDATE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitializeUpdateOutcome {
    /// The response to send (`9000` with the 29 or 32 data bytes).
    pub response: Response,
    /// With a pseudo-random challenge: the sequence counter value the card must persist
    /// before the response leaves, so no challenge is ever used twice.
    pub next_sequence_counter: Option<u32>,
}

/// The result of EXTERNAL AUTHENTICATE, the event the card runtime persists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExternalAuthOutcome {
    /// The host is authenticated; the session is open at this level. Reset the failure
    /// counter. Answer `9000`.
    Authenticated(SecurityLevel),
    /// The host cryptogram or the C-MAC was wrong; no session. Persist this new failure count.
    /// Answer `6300`.
    Failed {
        /// The failure count including this attempt.
        failed_attempts: u32,
    },
    /// The failure limit was already reached; nothing was checked. Answer `6983`.
    Blocked,
}

impl ExternalAuthOutcome {
    /// The response APDU for this outcome.
    pub fn response(&self) -> Response {
        Response::status(match self {
            ExternalAuthOutcome::Authenticated(_) => StatusWord::SUCCESS,
            ExternalAuthOutcome::Failed { .. } => StatusWord(0x6300),
            ExternalAuthOutcome::Blocked => StatusWord::AUTH_METHOD_BLOCKED,
        })
    }
}

struct Handshake {
    keys: SessionKeys,
    host_challenge: [u8; CHALLENGE_LEN],
    card_challenge: [u8; CHALLENGE_LEN],
    options: ScpOptions,
    channel: u8,
}

enum State {
    Idle,
    AwaitingExternalAuthenticate(Box<Handshake>),
    Open { sm: Box<SecureMessaging>, channel: u8 },
}

/// The card's SCP03 state: idle, waiting for EXTERNAL AUTHENTICATE, or an open session.
///
/// Lives in volatile state; [`Scp03Card::close`] at reset, power-off and applet deselection.
/// The failure counter of EXTERNAL AUTHENTICATE and the sequence counter are persistent and
/// belong to the card runtime, which passes them in and persists what the outcomes report.
pub struct Scp03Card {
    state: State,
}

impl Default for Scp03Card {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Scp03Card {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match &self.state {
            State::Idle => "Idle".to_string(),
            State::AwaitingExternalAuthenticate(_) => "AwaitingExternalAuthenticate".to_string(),
            State::Open { sm, .. } => format!("Open({:?})", sm.level()),
        };
        write!(f, "Scp03Card({s})")
    }
}

impl Scp03Card {
    /// An idle card side.
    pub fn new() -> Self {
        Self { state: State::Idle }
    }

    /// Ends any handshake or session, zeroising its keys.
    pub fn close(&mut self) {
        self.state = State::Idle;
    }

    /// The level of the open session, or `None` when no session is open.
    pub fn security_level(&self) -> Option<SecurityLevel> {
        match &self.state {
            State::Open { sm, .. } => Some(sm.level()),
            _ => None,
        }
    }

    /// True between a successful INITIALIZE UPDATE and the next EXTERNAL AUTHENTICATE.
    pub fn awaiting_external_authenticate(&self) -> bool {
        matches!(self.state, State::AwaitingExternalAuthenticate(_))
    }

    /// Processes INITIALIZE UPDATE: ends any current session, computes the card challenge, the
    /// session keys and the card cryptogram, and returns the response
    /// `diversification data (10) || KVN || 03 || i || card challenge (8) || card cryptogram (8)
    /// [|| sequence counter (3)]`.
    pub fn initialize_update<R: Rng + ?Sized>(
        &mut self,
        cmd: &Command,
        config: &CardConfig<'_>,
        rng: &mut R,
    ) -> Result<InitializeUpdateOutcome> {
        self.close();
        let iu = InitializeUpdate::parse(cmd)?;
        config.keys.check()?;
        if iu.kvn != 0 && iu.kvn != config.keys.kvn {
            return Err(CryptoError::UnknownKeyVersion(iu.kvn));
        }
        if config.r_enc && !config.r_mac {
            return Err(CryptoError::ChannelParameter("R-ENC support requires R-MAC support"));
        }
        let (card_challenge, counter) = match config.challenge {
            CardChallengeSource::Random => (random_array(rng), None),
            CardChallengeSource::PseudoRandom { sequence_counter, aid } => {
                if sequence_counter >= MAX_SEQUENCE_COUNTER {
                    return Err(CryptoError::ChannelState("sequence counter exhausted"));
                }
                if !(5..=16).contains(&aid.len()) {
                    return Err(CryptoError::ChannelParameter("AID must be 5 to 16 bytes"));
                }
                (
                    pseudo_random_challenge(&config.keys.enc, sequence_counter, aid),
                    Some(sequence_counter),
                )
            }
        };
        let options = ScpOptions {
            pseudo_random_challenge: counter.is_some(),
            r_mac: config.r_mac,
            r_enc: config.r_enc,
        };
        let keys = SessionKeys::derive(config.keys, &iu.host_challenge, &card_challenge)?;
        let cryptogram = keys.card_cryptogram(&iu.host_challenge, &card_challenge);
        let mut data = Vec::with_capacity(32);
        data.extend_from_slice(&config.diversification_data);
        data.extend_from_slice(&[config.keys.kvn, SCP_ID, options.to_byte()]);
        data.extend_from_slice(&card_challenge);
        data.extend_from_slice(&cryptogram);
        if let Some(c) = counter {
            data.extend_from_slice(&c.to_be_bytes()[1..]);
        }
        self.state = State::AwaitingExternalAuthenticate(Box::new(Handshake {
            keys,
            host_challenge: iu.host_challenge,
            card_challenge,
            options,
            channel: iu.channel,
        }));
        Ok(InitializeUpdateOutcome {
            response: Response::ok(data),
            next_sequence_counter: counter.map(|c| c + 1),
        })
    }

    /// Processes EXTERNAL AUTHENTICATE `84 82 SL 00 10 <host cryptogram> <C-MAC>`.
    ///
    /// `failed_attempts` is the card's persistent count of failures so far and `limit` the
    /// count at which the method blocks. A malformed command (`Err`) ends the handshake without
    /// counting; a wrong cryptogram or MAC returns [`ExternalAuthOutcome::Failed`]. For tearing
    /// safety the runtime may persist `failed_attempts + 1` before calling and reset it on
    /// [`ExternalAuthOutcome::Authenticated`].
    pub fn external_authenticate(
        &mut self,
        cmd: &Command,
        failed_attempts: u32,
        limit: u32,
    ) -> Result<ExternalAuthOutcome> {
        let State::AwaitingExternalAuthenticate(hs) =
            core::mem::replace(&mut self.state, State::Idle)
        else {
            return Err(CryptoError::ChannelState(
                "EXTERNAL AUTHENTICATE without INITIALIZE UPDATE",
            ));
        };
        if failed_attempts >= limit {
            return Ok(ExternalAuthOutcome::Blocked);
        }
        if !has_secure_messaging(cmd) || cmd.ins != INS_EXTERNAL_AUTHENTICATE {
            return Err(CryptoError::ChannelParameter("EXTERNAL AUTHENTICATE must be C-MACed"));
        }
        if cmd.cla & 0x03 != hs.channel {
            return Err(CryptoError::ChannelParameter("EXTERNAL AUTHENTICATE on another channel"));
        }
        let level = SecurityLevel::from_byte(cmd.p1)?;
        if cmd.p2 != 0 {
            return Err(CryptoError::ChannelParameter("EXTERNAL AUTHENTICATE P2 must be 00"));
        }
        if !hs.options.supports(level) {
            return Err(CryptoError::ChannelParameter("security level not offered by this card"));
        }
        if cmd.data.len() != 2 * CHALLENGE_LEN {
            return Err(CryptoError::InvalidLength("EXTERNAL AUTHENTICATE data must be 16 bytes"));
        }
        let (cryptogram, tag) = cmd.data.split_at(CHALLENGE_LEN);
        let expected = hs.keys.host_cryptogram(&hs.host_challenge, &hs.card_challenge);
        let mut m = AesCmac::new(&hs.keys.s_mac);
        m.update(&[0u8; 16]).update(&[mac_cla(cmd.cla), cmd.ins, cmd.p1, cmd.p2, 0x10]);
        m.update(cryptogram);
        let mac = m.finalize();
        let ok = expected.ct_eq(cryptogram) & mac[..8].ct_eq(tag);
        if !bool::from(ok) {
            return Ok(ExternalAuthOutcome::Failed {
                failed_attempts: failed_attempts.saturating_add(1),
            });
        }
        let Handshake { keys, channel, .. } = *hs;
        self.state = State::Open { sm: Box::new(SecureMessaging::new(keys, level, mac)), channel };
        Ok(ExternalAuthOutcome::Authenticated(level))
    }

    /// Verifies and removes the protection of a command of the open session. On any error
    /// (missing SM bit, bad C-MAC, bad padding) the session ends; answer with
    /// [`CryptoError::status_word`] (`6982` for a MAC failure).
    pub fn unwrap_command(&mut self, cmd: &Command) -> Result<Command> {
        let State::Open { sm, channel } = &mut self.state else {
            return Err(CryptoError::ChannelState("no secure channel session"));
        };
        let result = if cmd.cla & 0x40 == 0 && cmd.cla & 0x03 == *channel {
            sm.unwrap_command(cmd)
        } else {
            Err(CryptoError::ChannelParameter("command on another logical channel"))
        };
        if result.is_err() {
            self.close();
        }
        result
    }

    /// Protects the response to the last unwrapped command (R-ENCRYPTION and R-MAC as the
    /// level says). Error statuses (other than `9000`, `62xx`, `63xx`) go out bare.
    pub fn wrap_response(&mut self, resp: &Response) -> Result<Response> {
        let State::Open { sm, .. } = &mut self.state else {
            return Err(CryptoError::ChannelState("no secure channel session"));
        };
        sm.wrap_response(resp)
    }
}
