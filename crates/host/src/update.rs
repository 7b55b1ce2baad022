//! The terminal side of remote card data update (seed 000, `docs/update.md`): the Fig. 2
//! chain as the terminal runs it, relaying between the card and the update server.
//!
//! 1. **Issuer client authentication** (claims 4, 13): the terminal holds a [`TrustedIssuers`]
//!    list, accepted only when the issuer's published [`IssuerList`] verifies under the
//!    publisher key the terminal was configured with; it reads the card's issuer CA
//!    certificate and refuses a card whose issuer is not on the list.
//! 2. **Personal authentication** (claim 5): the PIN is verified on the card (VERIFY to the
//!    card-management applet); the card itself refuses everything below until it is.
//! 3. **Issuer server and device authentication** (claims 3, 8, 9, 12): the terminal relays the
//!    server's challenge to the card and the card's answer (plain, or sealed to the server in
//!    the privacy variant) back; the server decides.
//! 4. **Updates**: every pending package goes to the card in LOAD PACKAGE segments; each
//!    receipt goes back to the server. The first refusal stops the session.
//!
//! Each failing check is its own [`UpdateError`] variant, for the terminal to show.

use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::ecdsa::{PublicKey, Signature};
use tessera_crypto::hash::sha256;
use tessera_proto::update::{
    self as proto, AID, AuthMode, Challenge, IssuerList, ProtoError, UpdateCommand,
};
use thiserror::Error;

use crate::channel::{CardChannel, ChannelError};

/// The card-management applet (holds the global PIN).
const ISD_AID: &[u8] = &[0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];

/// Why an update session stopped.
#[derive(Debug, Error)]
pub enum UpdateError {
    /// The transport failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The issuer list's signature does not verify under the configured publisher key.
    #[error("the issuer list is not signed by the configured publisher")]
    IssuerListSignature,
    /// The issuer list is older than the one the terminal holds.
    #[error("the issuer list (version {offered}) is older than the one held ({held})")]
    IssuerListOlder {
        /// Version offered.
        offered: u64,
        /// Version held.
        held: u64,
    },
    /// The card's issuer is not on the trusted list (issuer client authentication).
    #[error("the card's issuer is not trusted by this terminal")]
    IssuerNotTrusted,
    /// The PIN is wrong.
    #[error("wrong PIN, {tries_left} tries left")]
    WrongPin {
        /// Tries left.
        tries_left: u8,
    },
    /// The PIN is not 4 to 8 bytes (none `FF`); nothing was sent.
    #[error("a PIN is 4 to 8 characters")]
    PinFormat,
    /// The PIN is blocked.
    #[error("the PIN is blocked: unblock it with the PUK")]
    PinBlocked,
    /// The card refused device authentication (PIN not verified, not issued...).
    #[error("the card refused device authentication: {0}")]
    DeviceAuthenticationRefused(StatusWord),
    /// The server refused the card's device authentication.
    #[error("the server refused the card: {0}")]
    ServerRefused(String),
    /// The card refused a package: its signature does not verify.
    #[error("update {sequence}: the package signature does not verify (6300)")]
    PackageSignature {
        /// The package's sequence.
        sequence: u64,
    },
    /// The card refused a package made for another card.
    #[error("update {sequence}: the package is for another card (6A88)")]
    WrongCard {
        /// The package's sequence.
        sequence: u64,
    },
    /// The card refused a package replayed or out of order.
    #[error("update {sequence}: replayed or out of order (6A89)")]
    StaleSequence {
        /// The package's sequence.
        sequence: u64,
    },
    /// The card could not decrypt the package.
    #[error("update {sequence}: the card cannot decrypt it (6984)")]
    Undecryptable {
        /// The package's sequence.
        sequence: u64,
    },
    /// The card refused a package for another reason.
    #[error("update {sequence}: refused by the card ({sw})")]
    PackageRefused {
        /// The package's sequence.
        sequence: u64,
        /// The card's status word.
        sw: StatusWord,
    },
    /// The card refused another command.
    #[error("the update applet refused {what}: {sw}")]
    Refused {
        /// The command.
        what: &'static str,
        /// The status word.
        sw: StatusWord,
    },
    /// An answer does not parse.
    #[error("malformed update answer: {0}")]
    Malformed(#[from] ProtoError),
}

/// The issuers a terminal trusts: a verified [`IssuerList`].
#[derive(Debug, Clone)]
pub struct TrustedIssuers {
    publisher: PublicKey,
    list: Option<IssuerList>,
}

impl TrustedIssuers {
    /// A terminal configured with the publisher's key and no list yet (trusts nobody).
    pub fn new(publisher: PublicKey) -> Self {
        Self { publisher, list: None }
    }

    /// Installs a published list after checking its signature and that it is not older than
    /// the one held.
    pub fn install(&mut self, published: &[u8]) -> Result<(), UpdateError> {
        let list = IssuerList::parse(published)?;
        let sig =
            Signature::from_bytes(&list.signature).map_err(|_| UpdateError::IssuerListSignature)?;
        self.publisher
            .verify(&list.signed_message(), &sig)
            .map_err(|_| UpdateError::IssuerListSignature)?;
        if let Some(held) = &self.list
            && list.version < held.version
        {
            return Err(UpdateError::IssuerListOlder { offered: list.version, held: held.version });
        }
        self.list = Some(list);
        Ok(())
    }

    /// The issuer id whose CA certificate is exactly `ca_der`, if trusted.
    pub fn issuer_of(&self, ca_der: &[u8]) -> Option<&str> {
        let digest = sha256(ca_der);
        self.list
            .as_ref()?
            .issuers
            .iter()
            .find(|(_, ca)| sha256(ca) == digest)
            .map(|(id, _)| id.as_str())
    }
}

/// What the terminal needs from the update server (over HTTPS in the CLI, in process in
/// tests). The session token is whatever the server uses to name the authenticated card.
pub trait UpdateServer {
    /// The server's session handle for an authenticated card.
    type Session;
    /// A fresh challenge.
    fn challenge(&mut self) -> Result<Challenge, String>;
    /// The server's HPKE key for the privacy variant.
    fn identity_key(&mut self) -> Result<[u8; proto::PUBLIC_KEY_LEN], String>;
    /// Checks the card's answer (`card_id` is `None` in the privacy variant).
    fn authenticate(
        &mut self,
        card_id: Option<&[u8]>,
        challenge: &Challenge,
        answer: &[u8],
    ) -> Result<Self::Session, String>;
    /// Legacy static authentication (claim 10; replayable). Default: not offered.
    fn authenticate_legacy_static(
        &mut self,
        card_id: &[u8],
        answer: &[u8],
    ) -> Result<Self::Session, String> {
        let _ = (card_id, answer);
        Err("this server does not accept the legacy static authenticator".into())
    }
    /// The packages pending for the card, in sequence order, as `(sequence, bytes)`.
    fn pending(&mut self, session: &Self::Session) -> Result<Vec<(u64, Vec<u8>)>, String>;
    /// Hands over a receipt.
    fn receipt(&mut self, session: &Self::Session, receipt: &[u8]) -> Result<(), String>;
}

/// The update applet behind a [`CardChannel`].
#[derive(Debug)]
pub struct UpdateTerminal<C> {
    channel: C,
}

impl<C: CardChannel> UpdateTerminal<C> {
    /// Wraps a channel (nothing is sent yet).
    pub fn new(channel: C) -> Self {
        Self { channel }
    }

    /// The channel, to reach another applet or inspect it.
    pub fn channel_mut(&mut self) -> &mut C {
        &mut self.channel
    }

    /// Gives the channel back.
    pub fn into_channel(self) -> C {
        self.channel
    }

    fn select(&mut self, aid: &[u8]) -> Result<(), UpdateError> {
        let r = self
            .channel
            .transmit(&Command::new(0x00, 0xA4, 0x04, 0x00).with_data(aid.to_vec()).with_le(256))?;
        if r.sw != StatusWord::SUCCESS {
            return Err(UpdateError::Refused { what: "SELECT", sw: r.sw });
        }
        Ok(())
    }

    fn call(&mut self, what: &'static str, cmd: &UpdateCommand) -> Result<Response, UpdateError> {
        let r = self.channel.transmit(&cmd.to_command())?;
        if r.sw != StatusWord::SUCCESS {
            return Err(UpdateError::Refused { what, sw: r.sw });
        }
        Ok(r)
    }

    /// SELECTs the update applet (ends any authenticated state on the card).
    pub fn select_applet(&mut self) -> Result<(), UpdateError> {
        self.select(AID)
    }

    /// GET DATA of the update applet (selected).
    pub fn get_data(&mut self, tag: u16) -> Result<Vec<u8>, UpdateError> {
        Ok(self.call("GET DATA", &UpdateCommand::GetData(tag))?.data)
    }

    /// Issuer client authentication: selects the update applet, reads the card's issuer CA
    /// certificate and looks it up in `trusted`. Returns the issuer id.
    pub fn check_issuer(&mut self, trusted: &TrustedIssuers) -> Result<String, UpdateError> {
        self.select(AID)?;
        let ca = self
            .call("GET DATA issuer CA", &UpdateCommand::GetData(proto::TAG_ISSUER_CA))
            .map_err(|e| match e {
                UpdateError::Refused { .. } => UpdateError::IssuerNotTrusted,
                e => e,
            })?;
        trusted.issuer_of(&ca.data).map(str::to_string).ok_or(UpdateError::IssuerNotTrusted)
    }

    /// Personal authentication: VERIFY the PIN on the card, then selects the update applet.
    pub fn verify_pin(&mut self, pin: &[u8]) -> Result<(), UpdateError> {
        if !(4..=8).contains(&pin.len()) || pin.contains(&0xFF) {
            return Err(UpdateError::PinFormat);
        }
        let mut block = [0xFFu8; 8];
        block[..pin.len()].copy_from_slice(pin);
        self.select(ISD_AID)?;
        let r = self.channel.transmit(&Command::new(0x00, 0x20, 0x00, 0x81).with_data(block))?;
        match r.sw {
            StatusWord::SUCCESS => {}
            StatusWord::AUTH_METHOD_BLOCKED => return Err(UpdateError::PinBlocked),
            sw => {
                return Err(match sw.tries() {
                    Some(tries_left) => UpdateError::WrongPin { tries_left },
                    None => UpdateError::Refused { what: "VERIFY", sw },
                });
            }
        }
        self.select(AID)
    }

    /// The card id, from the card-management applet (GET DATA `0045`), then reselects the
    /// update applet (which ends its authenticated state: call before authenticating).
    pub fn card_id(&mut self) -> Result<Vec<u8>, UpdateError> {
        self.select(ISD_AID)?;
        let r = self.channel.transmit(&Command::new(0x80, 0xCA, 0x00, 0x45).with_le(256))?;
        if r.sw != StatusWord::SUCCESS || r.data.len() < 2 || r.data[0] != 0x45 {
            return Err(UpdateError::Refused { what: "GET DATA card id", sw: r.sw });
        }
        let len = usize::from(r.data[1]);
        let id = r.data.get(2..2 + len).ok_or(UpdateError::Refused {
            what: "GET DATA card id",
            sw: StatusWord::WRONG_LENGTH,
        })?;
        let id = id.to_vec();
        self.select(AID)?;
        Ok(id)
    }

    /// DEVICE AUTHENTICATE: relays the server's challenge, returns the card's answer.
    pub fn device_authenticate(
        &mut self,
        challenge: Challenge,
        mode: AuthMode,
    ) -> Result<Vec<u8>, UpdateError> {
        let cmd = UpdateCommand::DeviceAuthenticate { mode, challenge: Some(challenge) };
        let r = self.channel.transmit(&cmd.to_command())?;
        if r.sw != StatusWord::SUCCESS {
            return Err(UpdateError::DeviceAuthenticationRefused(r.sw));
        }
        Ok(r.data)
    }

    /// LOAD PACKAGE in segments; returns the receipt bytes.
    pub fn load_package(&mut self, sequence: u64, package: &[u8]) -> Result<Vec<u8>, UpdateError> {
        let mut last = Vec::new();
        for cmd in proto::load_commands(package) {
            let r = self.channel.transmit(&cmd.to_command())?;
            if r.sw != StatusWord::SUCCESS {
                return Err(match r.sw {
                    StatusWord(0x6300) => UpdateError::PackageSignature { sequence },
                    StatusWord::REFERENCED_DATA_NOT_FOUND => UpdateError::WrongCard { sequence },
                    StatusWord::ALREADY_EXISTS => UpdateError::StaleSequence { sequence },
                    StatusWord::REFERENCE_DATA_NOT_USABLE => {
                        UpdateError::Undecryptable { sequence }
                    }
                    sw => UpdateError::PackageRefused { sequence, sw },
                });
            }
            last = r.data;
        }
        Ok(last)
    }

    /// READ OBJECT (the PIN must have been verified for PIN-rule objects).
    pub fn read(&mut self, name: &[u8]) -> Result<Vec<u8>, UpdateError> {
        Ok(self.call("READ OBJECT", &UpdateCommand::ReadObject(name.to_vec()))?.data)
    }
}

/// How the card identifies itself to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identification {
    /// The card's id travels in the clear; the signature is over the challenge (claim 8).
    Plain,
    /// The card seals its id to the server (claim 9); the terminal never learns it.
    Private,
    /// The legacy static authenticator (claim 10): **replayable** by whoever sees it once;
    /// only for cards personalised with it (`--legacy-static-auth`).
    LegacyStatic,
}

/// What a completed session did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionReport {
    /// The card's issuer (from the trusted list).
    pub issuer: String,
    /// The sequences delivered and receipted, in order.
    pub delivered: Vec<u64>,
}

/// Runs the whole chain on the card behind `terminal`: issuer check, PIN, device
/// authentication through `server`, then every pending update with its receipt. Stops at the
/// first failing step.
pub fn run_session<C: CardChannel, S: UpdateServer>(
    terminal: &mut UpdateTerminal<C>,
    trusted: &TrustedIssuers,
    pin: &[u8],
    identification: Identification,
    server: &mut S,
) -> Result<SessionReport, UpdateError> {
    let issuer = terminal.check_issuer(trusted)?;
    let card_id = match identification {
        Identification::Plain | Identification::LegacyStatic => Some(terminal.card_id()?),
        Identification::Private => None,
    };
    terminal.verify_pin(pin)?;
    let session = match (identification, card_id.as_deref()) {
        (Identification::LegacyStatic, Some(id)) => {
            tracing::warn!(
                "legacy static device authentication: the authenticator is replayable by anyone \
                 who sees it (claim 10); use challenge-response where the card supports it"
            );
            let cmd =
                UpdateCommand::DeviceAuthenticate { mode: AuthMode::LegacyStatic, challenge: None };
            let r = terminal.channel.transmit(&cmd.to_command())?;
            if r.sw != StatusWord::SUCCESS {
                return Err(UpdateError::DeviceAuthenticationRefused(r.sw));
            }
            server.authenticate_legacy_static(id, &r.data).map_err(UpdateError::ServerRefused)?
        }
        _ => {
            let challenge = server.challenge().map_err(UpdateError::ServerRefused)?;
            let mode = match identification {
                Identification::Private => AuthMode::Private {
                    server_key: server.identity_key().map_err(UpdateError::ServerRefused)?,
                },
                _ => AuthMode::Plain,
            };
            let answer = terminal.device_authenticate(challenge, mode)?;
            server
                .authenticate(card_id.as_deref(), &challenge, &answer)
                .map_err(UpdateError::ServerRefused)?
        }
    };
    let mut delivered = Vec::new();
    for (sequence, package) in server.pending(&session).map_err(UpdateError::ServerRefused)? {
        let receipt = terminal.load_package(sequence, &package)?;
        server.receipt(&session, &receipt).map_err(UpdateError::ServerRefused)?;
        delivered.push(sequence);
    }
    Ok(SessionReport { issuer, delivered })
}
