//! The `update` applet's wire format (seed 000, remote card data update; `docs/update.md`).
//!
//! The card holds named data objects (up to [`MAX_OBJECT_LEN`] bytes each, each readable
//! freely or only after the PIN), a separate HPKE decryption key generated on the card (the
//! update key), and the highest update sequence number it has applied. The server queues
//! [`Package`]s: the object's value HPKE-sealed to the card's update key, under an `info` that
//! binds the purpose, the card id and the object name and an `aad` that binds the sequence,
//! mode and read rule; the whole package signed by the issuer's package-signing key. The card
//! answers every applied package with a [`Receipt`] signed by its device key.
//!
//! The card signs with its device key only structures it builds itself (crypto's `device`
//! module, purpose *device-authentication*), whose body starts with a sub-label of this module
//! ([`AUTH_LABEL`], [`RECEIPT_LABEL`]), so a receipt can never pass as an authentication and
//! the card is never a signing oracle. Every command parses here, once, into
//! [`UpdateCommand`].

use tessera_apdu::Command;

pub use crate::error::{ProtoError, Result};

/// The update applet's AID: `F0` (proprietary) `TESSERA` `UP`.
pub const AID: &[u8] = &[0xF0, 0x54, 0x45, 0x53, 0x53, 0x45, 0x52, 0x41, 0x55, 0x50];

/// Largest value of one data object (64 KiB).
pub const MAX_OBJECT_LEN: usize = 64 * 1024;
/// Most objects a card holds (so the card image stays far below its size limit).
pub const MAX_OBJECTS: usize = 32;
/// Longest object name.
pub const MAX_NAME_LEN: usize = 32;
/// Longest card id (as crypto's device structures allow).
pub const MAX_CARD_ID_LEN: usize = 32;
/// Largest package the card accepts (an object of [`MAX_OBJECT_LEN`] plus headers, HPKE and
/// the signature).
pub const MAX_PACKAGE_LEN: usize = MAX_OBJECT_LEN + 512;
/// Length of the server's device-authentication nonce.
pub const NONCE_LEN: usize = 32;
/// Length of an uncompressed P-256 public key (also an HPKE P-256 public key).
pub const PUBLIC_KEY_LEN: usize = 65;
/// Length of a raw P-256 ECDSA signature `r || s`.
pub const SIGNATURE_LEN: usize = 64;
/// Length of a SHA-256 digest.
pub const DIGEST_LEN: usize = 32;
/// Length of the legacy static authenticator (claim 10).
pub const STATIC_AUTH_LEN: usize = 16;
/// Shortest and longest proof-of-possession nonce for the update key.
pub const POP_NONCE_RANGE: core::ops::RangeInclusive<usize> = 16..=64;

/// Package magic and version.
pub const PACKAGE_MAGIC: &[u8; 4] = b"TUP1";
/// Domain of the package-signing key's signature over a package.
pub const PACKAGE_SIGNATURE_DOMAIN: &[u8] = b"tessera/update/package-v1\0";
/// HPKE `info` prefix of a package's sealed value.
pub const SEAL_INFO_DOMAIN: &[u8] = b"tessera/update/object-v1\0";
/// HPKE `info` of the privacy variant's sealed identity.
pub const IDENTITY_INFO: &[u8] = b"tessera/update/identity-v1\0";
/// Magic of a package wrapped for delivery in the privacy variant: `"TUW1" || HPKE(update
/// key; package)`, so the terminal relaying it never sees the card id the package names.
pub const DELIVERY_MAGIC: &[u8; 4] = b"TUW1";
/// HPKE `info` of a wrapped delivery (the `aad` is [`DELIVERY_MAGIC`]).
pub const DELIVERY_INFO: &[u8] = b"tessera/update/delivery-v1\0";
/// Sub-label of a device-authentication body.
pub const AUTH_LABEL: &[u8] = b"update-auth\0";
/// Sub-label of a receipt body.
pub const RECEIPT_LABEL: &[u8] = b"update-receipt\0";
/// Sub-label of the update key's proof of possession (the device key vouches for it).
pub const UPDATE_KEY_LABEL: &[u8] = b"update-key\0";

/// Data group: generate the update key, value = a proof-of-possession nonce (16 to 64 bytes).
pub const DGI_GENERATE_KEY: u16 = 0x0501;
/// Data group: an issuer-defined object, value = [`ObjectDefinition`].
pub const DGI_OBJECT: u16 = 0x0502;
/// Data group: the legacy static authenticator (claim 10), 16 bytes. Only a card
/// personalised with it answers [`AuthMode::LegacyStatic`].
pub const DGI_LEGACY_STATIC: u16 = 0x0503;

/// INS of DEVICE AUTHENTICATE (P1 = [`AuthMode`]).
pub const INS_DEVICE_AUTHENTICATE: u8 = 0x88;
/// INS of LOAD PACKAGE (P1 b8 = last segment, P2 = segment number).
pub const INS_LOAD_PACKAGE: u8 = 0xE8;
/// INS of READ OBJECT (data = name).
pub const INS_READ_OBJECT: u8 = 0xB0;
/// INS of GET DATA (P1-P2 = tag).
pub const INS_GET_DATA: u8 = 0xCA;

/// GET DATA tag: [`Status`].
pub const TAG_STATUS: u16 = 0x0101;
/// GET DATA tag: the update key: public key (65) followed by the device key's proof (64).
pub const TAG_UPDATE_KEY: u16 = 0x0102;
/// GET DATA tag: the issuer CA certificate (DER), for the terminal's issuer check.
pub const TAG_ISSUER_CA: u16 = 0x0103;
/// GET DATA tag: the object names, each `rule(1) len(1) name`.
pub const TAG_DIRECTORY: u16 = 0x0104;

/// Who may read an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadRule {
    /// Anyone who selects the applet.
    Free,
    /// Only after the global PIN was verified in this session.
    Pin,
}

impl ReadRule {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            ReadRule::Free => 0,
            ReadRule::Pin => 1,
        }
    }
    /// Parses the wire code.
    pub fn from_code(code: u8) -> Result<ReadRule> {
        match code {
            0 => Ok(ReadRule::Free),
            1 => Ok(ReadRule::Pin),
            _ => Err(ProtoError::Value("read rule")),
        }
    }
}

/// What the card does with a package's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Decrypt now and replace the object atomically (claims 1, 6).
    Apply,
    /// Store the sealed value; decrypt on every read (claims 2, 7).
    Sealed,
}

impl Mode {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            Mode::Apply => 1,
            Mode::Sealed => 2,
        }
    }
    /// Parses the wire code.
    pub fn from_code(code: u8) -> Result<Mode> {
        match code {
            1 => Ok(Mode::Apply),
            2 => Ok(Mode::Sealed),
            _ => Err(ProtoError::Value("mode")),
        }
    }
}

/// How DEVICE AUTHENTICATE answers (P1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// The card names itself: answers [`DeviceAuthResponse`] in the clear (claim 8).
    Plain,
    /// The card seals its id and signature to the server's HPKE key (claim 9).
    Private {
        /// The update server's HPKE public key (65 bytes).
        server_key: [u8; PUBLIC_KEY_LEN],
    },
    /// The legacy static authenticator (claim 10): replayable, only on cards personalised
    /// with it.
    LegacyStatic,
}

/// The server's device-authentication challenge: a single-use random and the time it expires
/// (Unix seconds; the card has no clock, the server enforces it, the card signs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    /// The server's random.
    pub nonce: [u8; NONCE_LEN],
    /// When the server stops accepting an answer.
    pub expires: u64,
}

impl Challenge {
    /// `nonce(32) expires(8)`.
    pub fn to_bytes(&self) -> [u8; NONCE_LEN + 8] {
        let mut out = [0u8; NONCE_LEN + 8];
        out[..NONCE_LEN].copy_from_slice(&self.nonce);
        out[NONCE_LEN..].copy_from_slice(&self.expires.to_be_bytes());
        out
    }
    /// Parses [`Challenge::to_bytes`].
    pub fn parse(data: &[u8]) -> Result<Challenge> {
        let mut rest = data;
        let nonce = take_array(&mut rest, "challenge nonce")?;
        let expires = u64::from_be_bytes(take_array(&mut rest, "challenge expiry")?);
        if !rest.is_empty() {
            return Err(ProtoError::Length("challenge"));
        }
        Ok(Challenge { nonce, expires })
    }
}

/// The body the device key signs for an authentication (after crypto's labelled prefix):
/// `AUTH_LABEL nonce expires last_sequence`.
pub fn auth_body(challenge: &Challenge, last_sequence: u64) -> Vec<u8> {
    [AUTH_LABEL, &challenge.to_bytes()[..], &last_sequence.to_be_bytes()].concat()
}

/// DEVICE AUTHENTICATE's answer (plain mode), and the plaintext of the privacy variant's
/// sealed identity (with the card id in front).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAuthResponse {
    /// The highest sequence the card has applied (the server detects rolled-back cards).
    pub last_sequence: u64,
    /// The device key's signature over [`auth_body`].
    pub signature: [u8; SIGNATURE_LEN],
}

impl DeviceAuthResponse {
    /// `last_sequence(8) signature(64)`.
    pub fn to_bytes(&self) -> Vec<u8> {
        [&self.last_sequence.to_be_bytes()[..], &self.signature].concat()
    }
    /// Parses [`DeviceAuthResponse::to_bytes`].
    pub fn parse(data: &[u8]) -> Result<DeviceAuthResponse> {
        let mut rest = data;
        let last_sequence = u64::from_be_bytes(take_array(&mut rest, "last sequence")?);
        let signature = take_array(&mut rest, "signature")?;
        if !rest.is_empty() {
            return Err(ProtoError::Length("device authentication"));
        }
        Ok(DeviceAuthResponse { last_sequence, signature })
    }
}

/// The plaintext of the privacy variant: `len(card id) card id` then a
/// [`DeviceAuthResponse`]. Sealed with HPKE to the server's key, `info` = [`IDENTITY_INFO`],
/// `aad` = the challenge bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedIdentity {
    /// The card id.
    pub card_id: Vec<u8>,
    /// The signature and sequence.
    pub auth: DeviceAuthResponse,
}

impl SealedIdentity {
    /// Encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![self.card_id.len() as u8];
        out.extend_from_slice(&self.card_id);
        out.extend_from_slice(&self.auth.to_bytes());
        out
    }
    /// Parses.
    pub fn parse(data: &[u8]) -> Result<SealedIdentity> {
        let mut rest = data;
        let card_id = take_short(&mut rest, MAX_CARD_ID_LEN, "card id")?;
        Ok(SealedIdentity { card_id, auth: DeviceAuthResponse::parse(rest)? })
    }
}

/// An update package as queued by the server and checked by the card.
///
/// Layout: `"TUP1" len(card id) card-id sequence(8) mode(1) rule(1) len(name) name
/// len(sealed)(4) sealed signature(64)`. The signature (package-signing key, ECDSA P-256) covers
/// [`PACKAGE_SIGNATURE_DOMAIN`] followed by every byte before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The card the package is for.
    pub card_id: Vec<u8>,
    /// The card's next sequence number (strictly increasing per card).
    pub sequence: u64,
    /// Apply now or keep sealed.
    pub mode: Mode,
    /// The object's read rule after the update.
    pub rule: ReadRule,
    /// The target object.
    pub name: Vec<u8>,
    /// The value, HPKE-sealed to the card's update key (`enc || ciphertext || tag`).
    pub sealed: Vec<u8>,
    /// The package-signing key's signature.
    pub signature: [u8; SIGNATURE_LEN],
}

impl Package {
    /// The signed bytes: everything before the signature.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.sealed.len() + 128);
        out.extend_from_slice(PACKAGE_MAGIC);
        out.push(self.card_id.len() as u8);
        out.extend_from_slice(&self.card_id);
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.push(self.mode.code());
        out.push(self.rule.code());
        out.push(self.name.len() as u8);
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&(self.sealed.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.sealed);
        out
    }

    /// What the package-signing key signs: the domain, then [`Package::body`].
    pub fn signed_message(&self) -> Vec<u8> {
        [PACKAGE_SIGNATURE_DOMAIN, &self.body()].concat()
    }

    /// The package's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.body();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses a package (structure and ranges only; the card checks signature, card id and
    /// sequence).
    pub fn parse(data: &[u8]) -> Result<Package> {
        if data.len() > MAX_PACKAGE_LEN {
            return Err(ProtoError::Length("package too large"));
        }
        let mut rest = data;
        if take_array::<4>(&mut rest, "package magic")? != *PACKAGE_MAGIC {
            return Err(ProtoError::Value("package magic"));
        }
        let card_id = take_short(&mut rest, MAX_CARD_ID_LEN, "card id")?;
        let sequence = u64::from_be_bytes(take_array(&mut rest, "sequence")?);
        let [mode, rule] = take_array::<2>(&mut rest, "mode and rule")?;
        let (mode, rule) = (Mode::from_code(mode)?, ReadRule::from_code(rule)?);
        let name = take_short(&mut rest, MAX_NAME_LEN, "object name")?;
        let len = u32::from_be_bytes(take_array(&mut rest, "sealed length")?) as usize;
        if rest.len() != len.saturating_add(SIGNATURE_LEN) || len < 65 + 16 {
            return Err(ProtoError::Length("sealed value"));
        }
        let (sealed, sig) = rest.split_at(len);
        let signature = to_array(sig, "package signature")?;
        if sequence == 0 {
            return Err(ProtoError::Value("sequence 0"));
        }
        Ok(Package { card_id, sequence, mode, rule, name, sealed: sealed.to_vec(), signature })
    }

    /// The HPKE `info` of this package's value: domain, card id and object name, each
    /// length-prefixed.
    pub fn seal_info(card_id: &[u8], name: &[u8]) -> Vec<u8> {
        let mut out = SEAL_INFO_DOMAIN.to_vec();
        out.push(card_id.len() as u8);
        out.extend_from_slice(card_id);
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out
    }

    /// The HPKE `aad` of this package's value: `sequence(8) mode(1) rule(1)`.
    pub fn seal_aad(sequence: u64, mode: Mode, rule: ReadRule) -> [u8; 10] {
        let mut out = [0u8; 10];
        out[..8].copy_from_slice(&sequence.to_be_bytes());
        out[8] = mode.code();
        out[9] = rule.code();
        out
    }
}

/// Whether the package of a receipt was applied now or had been applied before (a
/// redelivery of the last package after a lost answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied (or stored sealed) by this LOAD PACKAGE.
    Applied,
    /// The card's last package, already applied; nothing changed.
    AlreadyApplied,
}

/// The card's signed receipt for a package.
///
/// Layout: `outcome(1) sequence(8) package-digest(32) signature(64)`; the device key signs
/// (crypto's labelled structure, purpose device-authentication) [`Receipt::body`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Applied now or before.
    pub outcome: Outcome,
    /// The package's sequence.
    pub sequence: u64,
    /// SHA-256 of the package's bytes.
    pub digest: [u8; DIGEST_LEN],
    /// The device key's signature.
    pub signature: [u8; SIGNATURE_LEN],
}

impl Receipt {
    /// The signed body: [`RECEIPT_LABEL`] `sequence digest`. (The outcome is not signed: both
    /// mean the card holds the package.)
    pub fn body(sequence: u64, digest: &[u8; DIGEST_LEN]) -> Vec<u8> {
        [RECEIPT_LABEL, &sequence.to_be_bytes()[..], digest].concat()
    }
    /// Encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let code = match self.outcome {
            Outcome::Applied => 0,
            Outcome::AlreadyApplied => 1,
        };
        [&[code][..], &self.sequence.to_be_bytes(), &self.digest, &self.signature].concat()
    }
    /// Parses.
    pub fn parse(data: &[u8]) -> Result<Receipt> {
        let mut rest = data;
        let [code] = take_array::<1>(&mut rest, "outcome")?;
        let outcome = match code {
            0 => Outcome::Applied,
            1 => Outcome::AlreadyApplied,
            _ => return Err(ProtoError::Value("outcome")),
        };
        let sequence = u64::from_be_bytes(take_array(&mut rest, "sequence")?);
        let digest = take_array(&mut rest, "digest")?;
        let signature = take_array(&mut rest, "signature")?;
        if !rest.is_empty() {
            return Err(ProtoError::Length("receipt"));
        }
        Ok(Receipt { outcome, sequence, digest, signature })
    }
}

/// The body the device key signs to vouch for the update key: [`UPDATE_KEY_LABEL`] `nonce
/// public-key`.
pub fn update_key_body(nonce: &[u8], public_key: &[u8; PUBLIC_KEY_LEN]) -> Vec<u8> {
    [UPDATE_KEY_LABEL, nonce, public_key].concat()
}

/// An issuer-defined object at personalisation: `rule(1) len(name) name value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDefinition {
    /// The read rule.
    pub rule: ReadRule,
    /// The name (1 to 32 bytes).
    pub name: Vec<u8>,
    /// The initial value (at most [`MAX_OBJECT_LEN`]).
    pub value: Vec<u8>,
}

impl ObjectDefinition {
    /// Encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![self.rule.code(), self.name.len() as u8];
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&self.value);
        out
    }
    /// Parses.
    pub fn parse(data: &[u8]) -> Result<ObjectDefinition> {
        let mut rest = data;
        let [rule] = take_array::<1>(&mut rest, "rule")?;
        let rule = ReadRule::from_code(rule)?;
        let name = take_short(&mut rest, MAX_NAME_LEN, "object name")?;
        if rest.len() > MAX_OBJECT_LEN {
            return Err(ProtoError::Length("object value"));
        }
        Ok(ObjectDefinition { rule, name, value: rest.to_vec() })
    }
}

/// The applet's status (GET DATA [`TAG_STATUS`]): `last_sequence(8) flags(1) objects(2)`,
/// flags bit 0 = update key present, bit 1 = legacy static authenticator personalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Highest applied sequence (0: none).
    pub last_sequence: u64,
    /// The update key exists.
    pub has_key: bool,
    /// The card was personalised with the legacy static authenticator.
    pub legacy_static: bool,
    /// Number of objects.
    pub objects: u16,
}

impl Status {
    /// Encodes.
    pub fn to_bytes(&self) -> [u8; 11] {
        let mut out = [0u8; 11];
        out[..8].copy_from_slice(&self.last_sequence.to_be_bytes());
        out[8] = u8::from(self.has_key) | u8::from(self.legacy_static) << 1;
        out[9..].copy_from_slice(&self.objects.to_be_bytes());
        out
    }
    /// Parses.
    pub fn parse(data: &[u8]) -> Result<Status> {
        let b: [u8; 11] = to_array(data, "status")?;
        if b[8] >> 2 != 0 {
            return Err(ProtoError::Value("status flags"));
        }
        Ok(Status {
            last_sequence: u64::from_be_bytes(to_array(&b[..8], "sequence")?),
            has_key: b[8] & 1 != 0,
            legacy_static: b[8] & 2 != 0,
            objects: u16::from_be_bytes([b[9], b[10]]),
        })
    }
}

/// An update applet command, parsed once at the card's edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateCommand {
    /// GET DATA (P1-P2 = tag).
    GetData(u16),
    /// DEVICE AUTHENTICATE `80 88 P1 00 Lc challenge [server-key] Le`.
    DeviceAuthenticate {
        /// How to answer.
        mode: AuthMode,
        /// The server's challenge (absent for the legacy static mode).
        challenge: Option<Challenge>,
    },
    /// LOAD PACKAGE `80 E8 P1 P2 Lc segment [Le]`: P1 `80` on the last segment (`00`
    /// otherwise), P2 the segment number from 0. The last segment's answer is the receipt.
    LoadPackage {
        /// The segment number.
        segment: u8,
        /// This is the last segment.
        last: bool,
        /// The bytes.
        data: Vec<u8>,
    },
    /// READ OBJECT `80 B0 00 00 Lc name Le`.
    ReadObject(Vec<u8>),
}

impl UpdateCommand {
    /// Parses a command (CLA checked by the applet).
    pub fn parse(cmd: &Command) -> Result<UpdateCommand> {
        match cmd.ins {
            INS_GET_DATA => {
                if !cmd.data.is_empty() {
                    return Err(ProtoError::Length("GET DATA"));
                }
                Ok(UpdateCommand::GetData(u16::from_be_bytes([cmd.p1, cmd.p2])))
            }
            INS_DEVICE_AUTHENTICATE => {
                if cmd.p2 != 0 {
                    return Err(ProtoError::Parameters("DEVICE AUTHENTICATE P2"));
                }
                let c = NONCE_LEN + 8;
                match cmd.p1 {
                    0 => Ok(UpdateCommand::DeviceAuthenticate {
                        mode: AuthMode::Plain,
                        challenge: Some(Challenge::parse(&cmd.data)?),
                    }),
                    1 => {
                        if cmd.data.len() != c + PUBLIC_KEY_LEN {
                            return Err(ProtoError::Length("DEVICE AUTHENTICATE private"));
                        }
                        let (ch, key) = cmd.data.split_at(c);
                        Ok(UpdateCommand::DeviceAuthenticate {
                            mode: AuthMode::Private { server_key: to_array(key, "server key")? },
                            challenge: Some(Challenge::parse(ch)?),
                        })
                    }
                    2 => {
                        if !cmd.data.is_empty() {
                            return Err(ProtoError::Length("DEVICE AUTHENTICATE static"));
                        }
                        Ok(UpdateCommand::DeviceAuthenticate {
                            mode: AuthMode::LegacyStatic,
                            challenge: None,
                        })
                    }
                    _ => Err(ProtoError::Parameters("DEVICE AUTHENTICATE P1")),
                }
            }
            INS_LOAD_PACKAGE => {
                let last = match cmd.p1 {
                    0x00 => false,
                    0x80 => true,
                    _ => return Err(ProtoError::Parameters("LOAD PACKAGE P1")),
                };
                if cmd.data.is_empty() {
                    return Err(ProtoError::Length("LOAD PACKAGE"));
                }
                Ok(UpdateCommand::LoadPackage { segment: cmd.p2, last, data: cmd.data.clone() })
            }
            INS_READ_OBJECT => {
                if cmd.p1 != 0 || cmd.p2 != 0 {
                    return Err(ProtoError::Parameters("READ OBJECT"));
                }
                if cmd.data.is_empty() || cmd.data.len() > MAX_NAME_LEN {
                    return Err(ProtoError::Length("object name"));
                }
                Ok(UpdateCommand::ReadObject(cmd.data.clone()))
            }
            ins => Err(ProtoError::Instruction(ins)),
        }
    }

    /// The command APDU (CLA `80`). GET DATA and READ OBJECT ask for at most [`READ_LE`] bytes
    /// at once; a longer answer follows by GET RESPONSE, so no single response exceeds what PC/SC
    /// drivers frame (vpcd: 65535 bytes).
    pub fn to_command(&self) -> Command {
        match self {
            UpdateCommand::GetData(tag) => {
                let [p1, p2] = tag.to_be_bytes();
                Command::new(0x80, INS_GET_DATA, p1, p2).with_le(READ_LE)
            }
            UpdateCommand::DeviceAuthenticate { mode, challenge } => {
                let ch = challenge.map(|c| c.to_bytes().to_vec()).unwrap_or_default();
                let (p1, data) = match mode {
                    AuthMode::Plain => (0, ch),
                    AuthMode::Private { server_key } => (1, [&ch[..], server_key].concat()),
                    AuthMode::LegacyStatic => (2, Vec::new()),
                };
                let cmd = Command::new(0x80, INS_DEVICE_AUTHENTICATE, p1, 0);
                let cmd = if data.is_empty() { cmd } else { cmd.with_data(data) };
                cmd.with_le(256)
            }
            UpdateCommand::LoadPackage { segment, last, data } => {
                Command::new(0x80, INS_LOAD_PACKAGE, if *last { 0x80 } else { 0 }, *segment)
                    .with_data(data.clone())
                    .with_le(256)
            }
            UpdateCommand::ReadObject(name) => {
                Command::new(0x80, INS_READ_OBJECT, 0, 0).with_data(name.clone()).with_le(READ_LE)
            }
        }
    }
}

/// Domain of the publisher's signature over an [`IssuerList`].
pub const ISSUER_LIST_DOMAIN: &[u8] = b"tessera/update/issuer-list-v1\0";
/// Issuer list magic and version.
pub const ISSUER_LIST_MAGIC: &[u8; 4] = b"TIL1";

/// The list of issuers a terminal trusts (claims 4, 13): published and signed by the
/// issuer (ECDSA P-256 over [`ISSUER_LIST_DOMAIN`] followed by [`IssuerList::body`]); the
/// terminal is configured with the publisher's public key and accepts only a list whose
/// signature verifies and whose version is not below the one it already holds.
///
/// Layout: `"TIL1" version(8) count(1) { len(1) issuer-id len(2) CA certificate DER }*
/// signature(64)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerList {
    /// Increases with every publication (a terminal refuses to go back).
    pub version: u64,
    /// `(issuer id, issuer CA certificate DER)`.
    pub issuers: Vec<(String, Vec<u8>)>,
    /// The publisher's signature.
    pub signature: [u8; SIGNATURE_LEN],
}

impl IssuerList {
    /// The signed bytes.
    pub fn body(&self) -> Vec<u8> {
        let mut out = ISSUER_LIST_MAGIC.to_vec();
        out.extend_from_slice(&self.version.to_be_bytes());
        out.push(self.issuers.len() as u8);
        for (id, ca) in &self.issuers {
            out.push(id.len() as u8);
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(&(ca.len() as u16).to_be_bytes());
            out.extend_from_slice(ca);
        }
        out
    }
    /// What the publisher signs.
    pub fn signed_message(&self) -> Vec<u8> {
        [ISSUER_LIST_DOMAIN, &self.body()].concat()
    }
    /// Encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        [&self.body()[..], &self.signature].concat()
    }
    /// Parses (structure only; the terminal checks the signature).
    pub fn parse(data: &[u8]) -> Result<IssuerList> {
        let mut rest = data;
        if take_array::<4>(&mut rest, "issuer list magic")? != *ISSUER_LIST_MAGIC {
            return Err(ProtoError::Value("issuer list magic"));
        }
        let version = u64::from_be_bytes(take_array(&mut rest, "issuer list version")?);
        let [count] = take_array::<1>(&mut rest, "issuer count")?;
        let mut issuers = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let id = take_short(&mut rest, 64, "issuer id")?;
            let id = String::from_utf8(id).map_err(|_| ProtoError::Value("issuer id"))?;
            let len = usize::from(u16::from_be_bytes(take_array(&mut rest, "CA length")?));
            if len == 0 || rest.len() < len {
                return Err(ProtoError::Length("issuer CA certificate"));
            }
            let (ca, tail) = rest.split_at(len);
            rest = tail;
            issuers.push((id, ca.to_vec()));
        }
        let signature = to_array(rest, "issuer list signature")?;
        Ok(IssuerList { version, issuers, signature })
    }
}

/// Le of GET DATA and READ OBJECT (32 KiB; see [`UpdateCommand::to_command`]).
pub const READ_LE: usize = 32 * 1024;

/// Largest LOAD PACKAGE segment the terminal sends (an extended APDU; the runtime also
/// assembles ISO chains of short APDUs up to 65535 bytes).
pub const SEGMENT_LEN: usize = 32 * 1024;

/// The LOAD PACKAGE commands that carry `package` in segments of [`SEGMENT_LEN`].
pub fn load_commands(package: &[u8]) -> Vec<UpdateCommand> {
    let chunks: Vec<&[u8]> = package.chunks(SEGMENT_LEN).collect();
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| UpdateCommand::LoadPackage {
            segment: i as u8,
            last: i + 1 == n,
            data: c.to_vec(),
        })
        .collect()
}

fn to_array<const N: usize>(data: &[u8], what: &'static str) -> Result<[u8; N]> {
    data.try_into().map_err(|_| ProtoError::Length(what))
}

fn take_array<const N: usize>(rest: &mut &[u8], what: &'static str) -> Result<[u8; N]> {
    if rest.len() < N {
        return Err(ProtoError::Length(what));
    }
    let (head, tail) = rest.split_at(N);
    *rest = tail;
    to_array(head, what)
}

/// A 1-byte-length-prefixed field of 1 to `max` bytes.
fn take_short(rest: &mut &[u8], max: usize, what: &'static str) -> Result<Vec<u8>> {
    let [len] = take_array::<1>(rest, what)?;
    let len = usize::from(len);
    if len == 0 || len > max || rest.len() < len {
        return Err(ProtoError::Length(what));
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    Ok(head.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn package() -> Package {
        Package {
            card_id: b"CARD-A".to_vec(),
            sequence: 7,
            mode: Mode::Sealed,
            rule: ReadRule::Pin,
            name: b"wifi-password".to_vec(),
            sealed: vec![0xAB; 65 + 16 + 5],
            signature: [0x11; 64],
        }
    }

    #[test]
    fn package_round_trips_and_rejects_damage() {
        let p = package();
        let bytes = p.to_bytes();
        assert_eq!(Package::parse(&bytes).unwrap(), p);
        assert!(p.signed_message().starts_with(PACKAGE_SIGNATURE_DOMAIN));
        assert_eq!(&p.signed_message()[PACKAGE_SIGNATURE_DOMAIN.len()..], &p.body()[..]);
        assert_eq!(
            Package::parse(&bytes[..bytes.len() - 1]),
            Err(ProtoError::Length("sealed value"))
        );
        let mut b = bytes.clone();
        b[0] = b'X';
        assert_eq!(Package::parse(&b), Err(ProtoError::Value("package magic")));
        let mut zero = p.clone();
        zero.sequence = 0;
        assert_eq!(Package::parse(&zero.to_bytes()), Err(ProtoError::Value("sequence 0")));
        let mut bad_mode = bytes.clone();
        bad_mode[4 + 1 + 6 + 8] = 9;
        assert_eq!(Package::parse(&bad_mode), Err(ProtoError::Value("mode")));
        // info and aad bind card, object, sequence, mode and rule.
        assert_ne!(Package::seal_info(b"A", b"x"), Package::seal_info(b"B", b"x"));
        assert_ne!(Package::seal_info(b"A", b"x"), Package::seal_info(b"A", b"y"));
        assert_ne!(
            Package::seal_aad(1, Mode::Apply, ReadRule::Free),
            Package::seal_aad(1, Mode::Sealed, ReadRule::Free)
        );
    }

    #[test]
    fn commands_round_trip() {
        let challenge = Challenge { nonce: [3; 32], expires: 1_800_000_000 };
        let cmds = [
            UpdateCommand::GetData(TAG_STATUS),
            UpdateCommand::DeviceAuthenticate { mode: AuthMode::Plain, challenge: Some(challenge) },
            UpdateCommand::DeviceAuthenticate {
                mode: AuthMode::Private { server_key: [4; 65] },
                challenge: Some(challenge),
            },
            UpdateCommand::DeviceAuthenticate { mode: AuthMode::LegacyStatic, challenge: None },
            UpdateCommand::LoadPackage { segment: 2, last: true, data: vec![1, 2] },
            UpdateCommand::ReadObject(b"sso".to_vec()),
        ];
        for c in cmds {
            assert_eq!(UpdateCommand::parse(&c.to_command()).unwrap(), c);
        }
        let r = Receipt {
            outcome: Outcome::AlreadyApplied,
            sequence: 9,
            digest: [5; 32],
            signature: [6; 64],
        };
        assert_eq!(Receipt::parse(&r.to_bytes()).unwrap(), r);
        let s = Status { last_sequence: 3, has_key: true, legacy_static: false, objects: 2 };
        assert_eq!(Status::parse(&s.to_bytes()).unwrap(), s);
        let id = SealedIdentity {
            card_id: b"C".to_vec(),
            auth: DeviceAuthResponse { last_sequence: 1, signature: [7; 64] },
        };
        assert_eq!(SealedIdentity::parse(&id.to_bytes()).unwrap(), id);
        assert_ne!(auth_body(&challenge, 1), Receipt::body(1, &[0; 32]));
        let list = IssuerList {
            version: 4,
            issuers: vec![("acme".into(), vec![0x30, 1, 2]), ("b".into(), vec![9; 300])],
            signature: [8; 64],
        };
        assert_eq!(IssuerList::parse(&list.to_bytes()).unwrap(), list);
        assert!(IssuerList::parse(&list.to_bytes()[..20]).is_err());
        let segments = load_commands(&vec![0; SEGMENT_LEN * 2 + 1]);
        assert_eq!(segments.len(), 3);
        assert!(matches!(segments[2], UpdateCommand::LoadPackage { segment: 2, last: true, .. }));
        assert!(matches!(segments[0], UpdateCommand::LoadPackage { last: false, .. }));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(ins in any::<u8>(), p1 in any::<u8>(), p2 in any::<u8>(),
                               data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let cmd = Command::new(0x80, ins, p1, p2).with_data(data.clone());
            if let Ok(parsed) = UpdateCommand::parse(&cmd) {
                prop_assert_eq!(parsed.to_command().data, data.clone());
            }
            let _ = Package::parse(&data);
            let _ = Receipt::parse(&data);
            let _ = SealedIdentity::parse(&data);
            let _ = ObjectDefinition::parse(&data);
            let _ = Status::parse(&data);
            let _ = IssuerList::parse(&data);
        }
    }
}
