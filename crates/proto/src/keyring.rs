//! The `keyring` applet's APDUs (hierarchical key renewal, seed 001) and the inputs of every
//! cryptogram, signature and derivation of its protocol.
//!
//! | command | APDU | data | response |
//! |---|---|---|---|
//! | SELECT | `00 A4 04 00 Lc AID` | [`AID`] | none |
//! | GET CHALLENGE | `00 84 00 00 10` | none | card challenge `Ra` (16) |
//! | INTERNAL AUTHENTICATE | `00 88 00 slot Lc 00` | server challenge `Rs` (16) | [`InternalAuthResponse`] |
//! | EXTERNAL AUTHENTICATE | `00 82 00 slot Lc` | [`ExternalAuthenticate`] | none |
//! | RENEW | `80 C4 form 00 Lc 00` | [`RenewCommand`] | [`RenewResponse`] |
//! | GET DATA | `00 CA DF 01` / `00 CA DF 02` | none | [`KeyInfo`] / [`SecurityStatus`] |
//! | INITIALIZE UPDATE, EXTERNAL AUTHENTICATE | `80 50 ...`, `84 82 ...` | SCP03 | SCP03 |
//!
//! Every signed or MACed message is a labelled structure built by [`labelled`]: the ASCII
//! label, `00`, then each field as a 2-byte big-endian length and its bytes. The labels name
//! the purpose and the direction, so a cryptogram of one kind is never valid as another.
//! `docs/keyring.md` gives the message sequences.

use tessera_apdu::{Command, Response, StatusWord};

pub use crate::error::{ProtoError, Result};

/// The keyring applet's AID: `F0` (proprietary) `TESSERA` `KR`.
pub const AID: &[u8] = &[0xF0, 0x54, 0x45, 0x53, 0x53, 0x45, 0x52, 0x41, 0x4B, 0x52];

/// Most internal (and most external) slots a card may have.
pub const MAX_SLOTS: u8 = 8;
/// Length of a challenge (`Rs`, `Ra`) and of a renewal random (`Rk`).
pub const CHALLENGE_LEN: usize = 16;
/// Length of a renewal random.
pub const RANDOM_LEN: usize = 16;
/// Length of a CMAC cryptogram (symmetric mode).
pub const CRYPTOGRAM_LEN: usize = 16;
/// Length of a raw ECDSA P-256 signature `r || s` (asymmetric mode).
pub const SIGNATURE_LEN: usize = 64;
/// Length of an uncompressed SEC1 P-256 public key.
pub const PUBLIC_KEY_LEN: usize = 65;
/// Length of a key confirmation value.
pub const CONFIRMATION_LEN: usize = 16;
/// Length of a key check value.
pub const KCV_LEN: usize = 3;
/// Length of an AES-128 slot key (symmetric mode).
pub const AES_KEY_LEN: usize = 16;
/// Length of a P-256 private scalar (asymmetric mode, personalisation only).
pub const PRIVATE_KEY_LEN: usize = 32;

/// INS of INTERNAL AUTHENTICATE (ISO/IEC 7816-4).
pub const INS_INTERNAL_AUTHENTICATE: u8 = 0x88;
/// INS of EXTERNAL AUTHENTICATE (ISO/IEC 7816-4).
pub const INS_EXTERNAL_AUTHENTICATE: u8 = 0x82;
/// INS of GET CHALLENGE (answered by the card runtime).
pub const INS_GET_CHALLENGE: u8 = 0x84;
/// INS of RENEW (proprietary class `80`).
pub const INS_RENEW: u8 = 0xC4;
/// INS of GET DATA.
pub const INS_GET_DATA: u8 = 0xCA;
/// Class byte of RENEW.
pub const CLA_PROPRIETARY: u8 = 0x80;

/// GET DATA tag of the key information ([`KeyInfo`]).
pub const TAG_KEY_INFO: u16 = 0xDF01;
/// GET DATA tag of the security status ([`SecurityStatus`]).
pub const TAG_SECURITY_STATUS: u16 = 0xDF02;

/// Personalisation DGI: `mode (1) || M (1) || N (1)`; written once.
pub const DGI_CONFIG: u16 = 0x0201;
/// Personalisation DGI: `slot (1) || version (4) || key`, an internal key (AES-128 key, or a
/// P-256 private scalar); each slot written once.
pub const DGI_INTERNAL_KEY: u16 = 0x8201;
/// Personalisation DGI: `slot (1) || version (4) || key`, an external key (AES-128 key, or the
/// server's P-256 public key, uncompressed SEC1); each slot written once.
pub const DGI_EXTERNAL_KEY: u16 = 0x8202;

/// Label of the card's authentication cryptogram (card to server).
pub const LABEL_AUTH_CARD: &str = "tessera/keyring/auth/card";
/// Label of the server's authentication cryptogram (server to card).
pub const LABEL_AUTH_SERVER: &str = "tessera/keyring/auth/server";
/// Label of the server's authentication of a RENEW command.
pub const LABEL_RENEW_COMMAND: &str = "tessera/keyring/renew/command";
/// Label of the card's signature over a RENEW response (asymmetric mode).
pub const LABEL_RENEW_RESPONSE: &str = "tessera/keyring/renew/response";
/// Label of a new card key pair's proof of possession (asymmetric mode).
pub const LABEL_RENEW_POSSESSION: &str = "tessera/keyring/renew/possession";
/// Label of the session mixing value computed with the bottom external key.
pub const LABEL_SESSION: &str = "tessera/keyring/session";

/// The cryptography a card runs, chosen at issuance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// AES-128 keys, AES-CMAC cryptograms, keys derived inside the card.
    Symmetric,
    /// P-256 keys, ECDSA signatures, key pairs generated inside the card (¶0060-0065).
    Asymmetric,
}

impl Mode {
    /// The personalisation code.
    pub const fn code(self) -> u8 {
        match self {
            Mode::Symmetric => 0x01,
            Mode::Asymmetric => 0x02,
        }
    }

    /// The mode for a personalisation code.
    pub fn from_code(code: u8) -> Result<Mode> {
        match code {
            0x01 => Ok(Mode::Symmetric),
            0x02 => Ok(Mode::Asymmetric),
            _ => Err(ProtoError::Value("mode")),
        }
    }

    /// Length of an authentication proof: a CMAC or a signature.
    pub const fn proof_len(self) -> usize {
        match self {
            Mode::Symmetric => CRYPTOGRAM_LEN,
            Mode::Asymmetric => SIGNATURE_LEN,
        }
    }

    /// Length of the ephemeral public key each side adds to its authentication (asymmetric
    /// mode: the session key agreement), 0 in symmetric mode.
    pub const fn ephemeral_len(self) -> usize {
        match self {
            Mode::Symmetric => 0,
            Mode::Asymmetric => PUBLIC_KEY_LEN,
        }
    }
}

/// Internal keys prove the card to the server; external keys prove the server to the card.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyKind {
    /// An internal authentication key (`Kai[m]`).
    Internal,
    /// An external authentication key (`Kae[n]`).
    External,
}

impl KeyKind {
    /// The wire code.
    pub const fn code(self) -> u8 {
        match self {
            KeyKind::Internal => 0x01,
            KeyKind::External => 0x02,
        }
    }

    /// The kind for a wire code.
    pub fn from_code(code: u8) -> Result<KeyKind> {
        match code {
            0x01 => Ok(KeyKind::Internal),
            0x02 => Ok(KeyKind::External),
            _ => Err(ProtoError::Value("key kind")),
        }
    }
}

/// The shape of a card's key hierarchy: its mode and its slot counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    /// Symmetric or asymmetric.
    pub mode: Mode,
    /// M: internal slots `1..=M`.
    pub internal_slots: u8,
    /// N: external slots `1..=N`.
    pub external_slots: u8,
}

impl Layout {
    /// A layout, checking `1 <= M, N <= MAX_SLOTS`.
    pub fn new(mode: Mode, internal_slots: u8, external_slots: u8) -> Result<Layout> {
        let ok = |x: u8| (1..=MAX_SLOTS).contains(&x);
        if !ok(internal_slots) || !ok(external_slots) {
            return Err(ProtoError::Value("slot count"));
        }
        Ok(Layout { mode, internal_slots, external_slots })
    }

    /// The number of slots of a kind.
    pub const fn slots(&self, kind: KeyKind) -> u8 {
        match kind {
            KeyKind::Internal => self.internal_slots,
            KeyKind::External => self.external_slots,
        }
    }

    /// True when `slot` exists for `kind`.
    pub fn has(&self, kind: KeyKind, slot: u8) -> bool {
        (1..=self.slots(kind)).contains(&slot)
    }

    /// The personalisation data of [`DGI_CONFIG`].
    pub fn to_config(&self) -> [u8; 3] {
        [self.mode.code(), self.internal_slots, self.external_slots]
    }

    /// Parses the data of [`DGI_CONFIG`].
    pub fn from_config(data: &[u8]) -> Result<Layout> {
        match data {
            [mode, m, n] => Layout::new(Mode::from_code(*mode)?, *m, *n),
            _ => Err(ProtoError::Length("config")),
        }
    }
}

/// The forms of RENEW, one per claim of the patent. P1 carries [`RenewForm::code`]; the data
/// starts with the form's slot numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RenewForm {
    /// Claim 3: internal slot `slot`.
    Internal {
        /// The renewed slot.
        slot: u8,
    },
    /// Claim 4: external slot `slot`.
    External {
        /// The renewed slot.
        slot: u8,
    },
    /// Claims 5 and 9: internal slot `internal` and external slot `external` at once, one
    /// random each.
    Pair {
        /// The renewed internal slot.
        internal: u8,
        /// The renewed external slot.
        external: u8,
    },
    /// ¶0088: as [`RenewForm::Pair`] from one random; the external key is derived with a
    /// distinct label (`kdf::Label::KEYRING_RENEWAL_SECOND`). Symmetric mode only.
    PairSingleRandom {
        /// The renewed internal slot.
        internal: u8,
        /// The renewed external slot.
        external: u8,
    },
    /// Claim 6: every internal slot numbered `slot` or more.
    InternalFrom {
        /// The first renewed slot.
        slot: u8,
    },
    /// Claim 7: every external slot numbered `slot` or more.
    ExternalFrom {
        /// The first renewed slot.
        slot: u8,
    },
    /// Claim 8: every internal slot from `internal` and every external slot from `external`.
    BothFrom {
        /// The first renewed internal slot.
        internal: u8,
        /// The first renewed external slot.
        external: u8,
    },
}

impl RenewForm {
    /// P1 of RENEW.
    pub const fn code(&self) -> u8 {
        match self {
            RenewForm::Internal { .. } => 0x01,
            RenewForm::External { .. } => 0x02,
            RenewForm::Pair { .. } => 0x03,
            RenewForm::PairSingleRandom { .. } => 0x04,
            RenewForm::InternalFrom { .. } => 0x05,
            RenewForm::ExternalFrom { .. } => 0x06,
            RenewForm::BothFrom { .. } => 0x07,
        }
    }

    /// The slot bytes at the start of the command data.
    pub fn slot_bytes(&self) -> Vec<u8> {
        match *self {
            RenewForm::Internal { slot }
            | RenewForm::External { slot }
            | RenewForm::InternalFrom { slot }
            | RenewForm::ExternalFrom { slot } => vec![slot],
            RenewForm::Pair { internal, external }
            | RenewForm::PairSingleRandom { internal, external }
            | RenewForm::BothFrom { internal, external } => vec![internal, external],
        }
    }

    /// Reads the form from P1 and the leading slot bytes of `data`; returns the rest.
    pub fn parse(p1: u8, data: &[u8]) -> Result<(RenewForm, &[u8])> {
        let one = |data: &[u8]| -> Result<(u8, usize)> {
            data.first().map(|&s| (s, 1)).ok_or(ProtoError::Length("RENEW slots"))
        };
        let two = |data: &[u8]| -> Result<(u8, u8, usize)> {
            match data {
                [a, b, ..] => Ok((*a, *b, 2)),
                _ => Err(ProtoError::Length("RENEW slots")),
            }
        };
        let (form, used) = match p1 {
            0x01 => one(data).map(|(slot, u)| (RenewForm::Internal { slot }, u))?,
            0x02 => one(data).map(|(slot, u)| (RenewForm::External { slot }, u))?,
            0x05 => one(data).map(|(slot, u)| (RenewForm::InternalFrom { slot }, u))?,
            0x06 => one(data).map(|(slot, u)| (RenewForm::ExternalFrom { slot }, u))?,
            0x03 => two(data).map(|(i, e, u)| (RenewForm::Pair { internal: i, external: e }, u))?,
            0x04 => two(data)
                .map(|(i, e, u)| (RenewForm::PairSingleRandom { internal: i, external: e }, u))?,
            0x07 => {
                two(data).map(|(i, e, u)| (RenewForm::BothFrom { internal: i, external: e }, u))?
            }
            _ => return Err(ProtoError::Parameters("RENEW form")),
        };
        Ok((form, &data[used..]))
    }

    /// The renewed slots in canonical order (internal ascending, then external ascending), or
    /// an error when a slot does not exist in `layout`.
    pub fn targets(&self, layout: &Layout) -> Result<Vec<(KeyKind, u8)>> {
        let check = |kind, slot| {
            if layout.has(kind, slot) { Ok((kind, slot)) } else { Err(ProtoError::Value("slot")) }
        };
        let from = |kind, slot: u8| -> Result<Vec<(KeyKind, u8)>> {
            check(kind, slot)?;
            Ok((slot..=layout.slots(kind)).map(|s| (kind, s)).collect())
        };
        Ok(match *self {
            RenewForm::Internal { slot } => vec![check(KeyKind::Internal, slot)?],
            RenewForm::External { slot } => vec![check(KeyKind::External, slot)?],
            RenewForm::Pair { internal, external }
            | RenewForm::PairSingleRandom { internal, external } => {
                vec![check(KeyKind::Internal, internal)?, check(KeyKind::External, external)?]
            }
            RenewForm::InternalFrom { slot } => from(KeyKind::Internal, slot)?,
            RenewForm::ExternalFrom { slot } => from(KeyKind::External, slot)?,
            RenewForm::BothFrom { internal, external } => {
                let mut v = from(KeyKind::Internal, internal)?;
                v.extend(from(KeyKind::External, external)?);
                v
            }
        })
    }

    /// True for the single-random variant.
    pub const fn single_random(&self) -> bool {
        matches!(self, RenewForm::PairSingleRandom { .. })
    }
}

/// What the server sends for one renewed key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenewEntry {
    /// The renewal random `Rk` (absent for the second key of the single-random variant).
    pub random: Option<[u8; RANDOM_LEN]>,
    /// Asymmetric mode, external slots: the server's new public key.
    pub public_key: Option<[u8; PUBLIC_KEY_LEN]>,
}

/// RENEW command data: the form's slots, one [`RenewEntry`] per renewed key in canonical
/// order (`Rk (16)`, asymmetric external entries `Rk (16) || public key (65)`; the
/// single-random variant has one `Rk` for both keys), then the server's proof (CMAC under the
/// authenticated external key, or its signature) over [`renew_command_message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenewCommand {
    /// The form (P1 and the slot bytes).
    pub form: RenewForm,
    /// One entry per renewed key, canonical order.
    pub entries: Vec<RenewEntry>,
    /// The server's CMAC (16) or signature (64).
    pub proof: Vec<u8>,
}

impl RenewCommand {
    /// The authenticated body: slot bytes and entries (everything but the proof).
    pub fn body(&self) -> Vec<u8> {
        let mut out = self.form.slot_bytes();
        for e in &self.entries {
            if let Some(r) = &e.random {
                out.extend_from_slice(r);
            }
            if let Some(pk) = &e.public_key {
                out.extend_from_slice(pk);
            }
        }
        out
    }

    /// The command APDU, with extended Le 65536: renewing many slots answers over 256 bytes.
    pub fn to_command(&self) -> Command {
        let mut data = self.body();
        data.extend_from_slice(&self.proof);
        Command::new(CLA_PROPRIETARY, INS_RENEW, self.form.code(), 0x00)
            .with_data(data)
            .with_le(65536)
    }

    /// Parses RENEW for a card of `layout`.
    pub fn parse(cmd: &Command, layout: &Layout) -> Result<RenewCommand> {
        if cmd.p2 != 0 {
            return Err(ProtoError::Parameters("RENEW P2"));
        }
        let (form, mut rest) = RenewForm::parse(cmd.p1, &cmd.data)?;
        if form.single_random() && layout.mode == Mode::Asymmetric {
            return Err(ProtoError::Parameters("single-random variant in asymmetric mode"));
        }
        let targets = form.targets(layout)?;
        let mut entries = Vec::with_capacity(targets.len());
        for (index, (kind, _)) in targets.iter().enumerate() {
            let random = if form.single_random() && index == 1 {
                None
            } else {
                Some(take_array::<RANDOM_LEN>(&mut rest, "RENEW random")?)
            };
            let public_key = if layout.mode == Mode::Asymmetric && *kind == KeyKind::External {
                Some(take_array::<PUBLIC_KEY_LEN>(&mut rest, "RENEW public key")?)
            } else {
                None
            };
            entries.push(RenewEntry { random, public_key });
        }
        if rest.len() != layout.mode.proof_len() {
            return Err(ProtoError::Length("RENEW proof"));
        }
        Ok(RenewCommand { form, entries, proof: rest.to_vec() })
    }
}

/// One renewed key as the card reports it: never the key, only public facts about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenewedKey {
    /// Internal or external.
    pub kind: KeyKind,
    /// The slot.
    pub slot: u8,
    /// Its new version.
    pub version: u32,
    /// Its key check value.
    pub kcv: [u8; KCV_LEN],
    /// Symmetric mode: the key confirmation value (KDF of the new key, bound to the session).
    pub confirmation: Option<[u8; CONFIRMATION_LEN]>,
    /// Asymmetric mode, internal slots: the new public key.
    pub public_key: Option<[u8; PUBLIC_KEY_LEN]>,
    /// Asymmetric mode, internal slots: the new key's signature over
    /// [`possession_message`] (proof of possession).
    pub possession: Option<[u8; SIGNATURE_LEN]>,
}

/// RENEW response: `kind (1) || slot (1) || version (4) || kcv (3) || ...` per renewed key
/// (symmetric: `confirmation (16)`; asymmetric internal: `public key (65) || possession (64)`;
/// asymmetric external: nothing), then in asymmetric mode the signature (64) of the
/// authenticating internal key over [`renew_response_message`] of the entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenewResponse {
    /// The renewed keys, canonical order.
    pub keys: Vec<RenewedKey>,
    /// Asymmetric mode: the upper internal key's signature.
    pub signature: Option<[u8; SIGNATURE_LEN]>,
}

impl RenewResponse {
    /// The entries' bytes (everything but the signature).
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for k in &self.keys {
            out.push(k.kind.code());
            out.push(k.slot);
            out.extend_from_slice(&k.version.to_be_bytes());
            out.extend_from_slice(&k.kcv);
            for part in [
                k.confirmation.as_ref().map(|c| c.as_slice()),
                k.public_key.as_ref().map(|c| c.as_slice()),
                k.possession.as_ref().map(|c| c.as_slice()),
            ]
            .into_iter()
            .flatten()
            {
                out.extend_from_slice(part);
            }
        }
        out
    }

    /// The response data.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.body();
        if let Some(s) = &self.signature {
            out.extend_from_slice(s);
        }
        out
    }

    /// Parses the response data for a card in `mode`.
    pub fn parse(mut data: &[u8], mode: Mode) -> Result<RenewResponse> {
        let signature = match mode {
            Mode::Symmetric => None,
            Mode::Asymmetric => {
                let split = data
                    .len()
                    .checked_sub(SIGNATURE_LEN)
                    .ok_or(ProtoError::Length("RENEW response signature"))?;
                let (body, sig) = data.split_at(split);
                data = body;
                Some(to_array(sig, "signature")?)
            }
        };
        let mut keys = Vec::new();
        while !data.is_empty() {
            let kind = KeyKind::from_code(take(&mut data, 1, "kind")?[0])?;
            let slot = take(&mut data, 1, "slot")?[0];
            let version = u32::from_be_bytes(take_array::<4>(&mut data, "version")?);
            let kcv = take_array::<KCV_LEN>(&mut data, "kcv")?;
            let mut key = RenewedKey {
                kind,
                slot,
                version,
                kcv,
                confirmation: None,
                public_key: None,
                possession: None,
            };
            match (mode, kind) {
                (Mode::Symmetric, _) => {
                    key.confirmation = Some(take_array(&mut data, "confirmation")?);
                }
                (Mode::Asymmetric, KeyKind::Internal) => {
                    key.public_key = Some(take_array(&mut data, "public key")?);
                    key.possession = Some(take_array(&mut data, "possession")?);
                }
                (Mode::Asymmetric, KeyKind::External) => {}
            }
            keys.push(key);
        }
        Ok(RenewResponse { keys, signature })
    }
}

/// INTERNAL AUTHENTICATE response: `version (4) || [card ephemeral public key (65)] || proof`,
/// the proof a CMAC under the internal key or its signature over [`card_auth_message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalAuthResponse {
    /// The version of the internal key used.
    pub version: u32,
    /// Asymmetric mode: the card's ephemeral key for the session key agreement.
    pub ephemeral: Option<[u8; PUBLIC_KEY_LEN]>,
    /// CMAC (16) or signature (64).
    pub proof: Vec<u8>,
}

impl InternalAuthResponse {
    /// The response data.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.version.to_be_bytes().to_vec();
        if let Some(e) = &self.ephemeral {
            out.extend_from_slice(e);
        }
        out.extend_from_slice(&self.proof);
        out
    }

    /// Parses the response data for a card in `mode`.
    pub fn parse(mut data: &[u8], mode: Mode) -> Result<InternalAuthResponse> {
        let version = u32::from_be_bytes(take_array::<4>(&mut data, "version")?);
        let ephemeral = match mode {
            Mode::Symmetric => None,
            Mode::Asymmetric => Some(take_array(&mut data, "ephemeral key")?),
        };
        if data.len() != mode.proof_len() {
            return Err(ProtoError::Length("INTERNAL AUTHENTICATE proof"));
        }
        Ok(InternalAuthResponse { version, ephemeral, proof: data.to_vec() })
    }
}

/// EXTERNAL AUTHENTICATE data: `[server ephemeral public key (65)] || proof`, the proof a
/// CMAC under the external key or the server's signature over [`server_auth_message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalAuthenticate {
    /// The external slot the server proves.
    pub slot: u8,
    /// Asymmetric mode: the server's ephemeral key.
    pub ephemeral: Option<[u8; PUBLIC_KEY_LEN]>,
    /// CMAC (16) or signature (64).
    pub proof: Vec<u8>,
}

impl ExternalAuthenticate {
    /// The command APDU.
    pub fn to_command(&self) -> Command {
        let mut data = Vec::new();
        if let Some(e) = &self.ephemeral {
            data.extend_from_slice(e);
        }
        data.extend_from_slice(&self.proof);
        Command::new(0x00, INS_EXTERNAL_AUTHENTICATE, 0x00, self.slot).with_data(data)
    }

    fn parse(cmd: &Command, mode: Mode) -> Result<ExternalAuthenticate> {
        if cmd.p1 != 0 {
            return Err(ProtoError::Parameters("EXTERNAL AUTHENTICATE P1"));
        }
        let mut data = cmd.data.as_slice();
        let ephemeral = match mode {
            Mode::Symmetric => None,
            Mode::Asymmetric => Some(take_array(&mut data, "ephemeral key")?),
        };
        if data.len() != mode.proof_len() {
            return Err(ProtoError::Length("EXTERNAL AUTHENTICATE proof"));
        }
        Ok(ExternalAuthenticate { slot: cmd.p2, ephemeral, proof: data.to_vec() })
    }
}

/// INTERNAL AUTHENTICATE `00 88 00 slot 10 Rs 00`.
pub fn internal_authenticate(slot: u8, server_challenge: &[u8; CHALLENGE_LEN]) -> Command {
    Command::new(0x00, INS_INTERNAL_AUTHENTICATE, 0x00, slot)
        .with_data(server_challenge.to_vec())
        .with_le(256)
}

/// GET CHALLENGE for a keyring challenge: `00 84 00 00 10`.
pub fn get_challenge() -> Command {
    Command::new(0x00, INS_GET_CHALLENGE, 0x00, 0x00).with_le(CHALLENGE_LEN)
}

/// GET DATA of `tag` ([`TAG_KEY_INFO`], [`TAG_SECURITY_STATUS`]).
pub fn get_data(tag: u16) -> Command {
    let [p1, p2] = tag.to_be_bytes();
    Command::new(0x00, INS_GET_DATA, p1, p2).with_le(256)
}

/// A keyring command as the card sees it, parsed once at its edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyringCommand {
    /// INTERNAL AUTHENTICATE with internal slot `slot` over the server challenge.
    InternalAuthenticate {
        /// The internal slot (P2).
        slot: u8,
        /// `Rs`.
        challenge: [u8; CHALLENGE_LEN],
    },
    /// EXTERNAL AUTHENTICATE.
    ExternalAuthenticate(ExternalAuthenticate),
    /// RENEW.
    Renew(RenewCommand),
    /// GET DATA of a tag.
    GetData(u16),
}

impl KeyringCommand {
    /// Parses a plain (unwrapped) command for a card of `layout`.
    pub fn parse(cmd: &Command, layout: &Layout) -> core::result::Result<Self, StatusWord> {
        let proto = |e: ProtoError| e.status_word();
        match (cmd.cla, cmd.ins) {
            (0x00, INS_INTERNAL_AUTHENTICATE) => {
                if cmd.p1 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                let challenge =
                    cmd.data.as_slice().try_into().map_err(|_| StatusWord::WRONG_LENGTH)?;
                Ok(KeyringCommand::InternalAuthenticate { slot: cmd.p2, challenge })
            }
            (0x00, INS_EXTERNAL_AUTHENTICATE) => ExternalAuthenticate::parse(cmd, layout.mode)
                .map(KeyringCommand::ExternalAuthenticate)
                .map_err(proto),
            (CLA_PROPRIETARY, INS_RENEW) => {
                RenewCommand::parse(cmd, layout).map(KeyringCommand::Renew).map_err(proto)
            }
            (0x00 | CLA_PROPRIETARY, INS_GET_DATA) => {
                if !cmd.data.is_empty() {
                    return Err(StatusWord::WRONG_LENGTH);
                }
                Ok(KeyringCommand::GetData(u16::from_be_bytes([cmd.p1, cmd.p2])))
            }
            (0x00 | CLA_PROPRIETARY, _) => Err(StatusWord::INS_NOT_SUPPORTED),
            _ => Err(StatusWord::CLA_NOT_SUPPORTED),
        }
    }
}

/// One slot in [`KeyInfo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// Internal or external.
    pub kind: KeyKind,
    /// The slot.
    pub slot: u8,
    /// The key version.
    pub version: u32,
    /// The key check value.
    pub kcv: [u8; KCV_LEN],
}

/// GET DATA `DF01`: `mode || M || N || (kind || slot || version (4) || kcv (3))*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The card's layout.
    pub layout: Layout,
    /// Every slot, internal then external.
    pub slots: Vec<SlotInfo>,
}

impl KeyInfo {
    /// The response data.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.layout.to_config().to_vec();
        for s in &self.slots {
            out.push(s.kind.code());
            out.push(s.slot);
            out.extend_from_slice(&s.version.to_be_bytes());
            out.extend_from_slice(&s.kcv);
        }
        out
    }

    /// Parses the response data.
    pub fn parse(mut data: &[u8]) -> Result<KeyInfo> {
        let layout = Layout::from_config(take(&mut data, 3, "config")?)?;
        let mut slots = Vec::new();
        while !data.is_empty() {
            let kind = KeyKind::from_code(take(&mut data, 1, "kind")?[0])?;
            let slot = take(&mut data, 1, "slot")?[0];
            let version = u32::from_be_bytes(take_array::<4>(&mut data, "version")?);
            let kcv = take_array(&mut data, "kcv")?;
            slots.push(SlotInfo { kind, slot, version, kcv });
        }
        Ok(KeyInfo { layout, slots })
    }

    /// The version of one slot, if listed.
    pub fn version(&self, kind: KeyKind, slot: u8) -> Option<u32> {
        self.slots.iter().find(|s| s.kind == kind && s.slot == slot).map(|s| s.version)
    }
}

/// GET DATA `DF02`: `proven internal slots (2, bit s-1 for slot s) || proven external slots
/// (2) || authenticated pair (internal, external; 00 00 when none) || session level (1)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SecurityStatus {
    /// Internal slots proven in this session (bit `s - 1`).
    pub proven_internal: u16,
    /// External slots proven in this session (bit `s - 1`).
    pub proven_external: u16,
    /// The current mutual authentication (the pair RENEW relies on), if any.
    pub authenticated: Option<(u8, u8)>,
    /// The SCP03 security level of the keyring session, `00` when none is open.
    pub session_level: u8,
}

impl SecurityStatus {
    /// The response data.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(7);
        out.extend_from_slice(&self.proven_internal.to_be_bytes());
        out.extend_from_slice(&self.proven_external.to_be_bytes());
        let (i, e) = self.authenticated.unwrap_or((0, 0));
        out.extend_from_slice(&[i, e, self.session_level]);
        out
    }

    /// Parses the response data.
    pub fn parse(data: &[u8]) -> Result<SecurityStatus> {
        match data {
            // No authenticated pair is `00 00`: an external slot without an internal one
            // is not an encoding of anything.
            [_, _, _, _, 0, e, _] if *e != 0 => Err(ProtoError::Value("authenticated pair")),
            [a, b, c, d, i, e, level] => Ok(SecurityStatus {
                proven_internal: u16::from_be_bytes([*a, *b]),
                proven_external: u16::from_be_bytes([*c, *d]),
                authenticated: (*i != 0).then_some((*i, *e)),
                session_level: *level,
            }),
            _ => Err(ProtoError::Length("security status")),
        }
    }
}

/// Personalisation data of a slot key ([`DGI_INTERNAL_KEY`], [`DGI_EXTERNAL_KEY`]).
pub fn key_dgi_data(slot: u8, version: u32, key: &[u8]) -> Vec<u8> {
    let mut out = vec![slot];
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// Parses personalisation data of a slot key: `(slot, version, key)`.
pub fn parse_key_dgi(mut data: &[u8]) -> Result<(u8, u32, &[u8])> {
    let slot = take(&mut data, 1, "slot")?[0];
    let version = u32::from_be_bytes(take_array::<4>(&mut data, "version")?);
    Ok((slot, version, data))
}

/// The transport between the server's keyring logic and a card's keyring applet: the terminal
/// (in process now, the APDU tunnel later) implements it over its card channel.
pub trait KeyringLink {
    /// Sends one command APDU and returns the card's response, `61xx`/`6Cxx` resolved.
    fn exchange(&mut self, command: &Command) -> core::result::Result<Response, LinkError>;
}

/// The link to the card failed (reader gone, card removed, power lost, tunnel closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("card link: {0}")]
pub struct LinkError(pub String);

// ---------------------------------------------------------------------------------------------
// Cryptogram inputs: the one place where every authenticated structure is laid out.
// ---------------------------------------------------------------------------------------------

/// `label || 00 || (len (2, big-endian) || field)*`: an unambiguous labelled structure.
pub fn labelled(label: &str, fields: &[&[u8]]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(label.len() + 1 + fields.iter().map(|f| f.len() + 2).sum::<usize>());
    out.extend_from_slice(label.as_bytes());
    out.push(0);
    for f in fields {
        // Fields are at most a few hundred bytes; the length always fits.
        out.extend_from_slice(&(f.len().min(u16::MAX as usize) as u16).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// What the card proves in INTERNAL AUTHENTICATE: its id, the slot and version of the internal
/// key, the server challenge and (asymmetric mode) its ephemeral key.
pub fn card_auth_message(
    card_id: &[u8],
    slot: u8,
    version: u32,
    server_challenge: &[u8],
    card_ephemeral: &[u8],
) -> Vec<u8> {
    labelled(
        LABEL_AUTH_CARD,
        &[card_id, &[slot], &version.to_be_bytes(), server_challenge, card_ephemeral],
    )
}

/// What the server proves in EXTERNAL AUTHENTICATE: the card id, the internal slot the card
/// just proved and the external slot and version, both challenges and both ephemeral keys.
#[allow(clippy::too_many_arguments)]
pub fn server_auth_message(
    card_id: &[u8],
    internal_slot: u8,
    external_slot: u8,
    external_version: u32,
    server_challenge: &[u8],
    card_challenge: &[u8],
    card_ephemeral: &[u8],
    server_ephemeral: &[u8],
) -> Vec<u8> {
    labelled(
        LABEL_AUTH_SERVER,
        &[
            card_id,
            &[internal_slot, external_slot],
            &external_version.to_be_bytes(),
            server_challenge,
            card_challenge,
            card_ephemeral,
            server_ephemeral,
        ],
    )
}

/// What the server's proof on RENEW covers: the card id, both challenges of the current
/// authentication, the form and the body (slots, randoms, public keys).
pub fn renew_command_message(
    card_id: &[u8],
    server_challenge: &[u8],
    card_challenge: &[u8],
    form: u8,
    body: &[u8],
) -> Vec<u8> {
    labelled(LABEL_RENEW_COMMAND, &[card_id, server_challenge, card_challenge, &[form], body])
}

/// What the card's signature on a RENEW response covers (asymmetric mode).
pub fn renew_response_message(
    card_id: &[u8],
    server_challenge: &[u8],
    card_challenge: &[u8],
    body: &[u8],
) -> Vec<u8> {
    labelled(LABEL_RENEW_RESPONSE, &[card_id, server_challenge, card_challenge, body])
}

/// What a new card key pair signs to prove possession (asymmetric mode).
pub fn possession_message(
    card_id: &[u8],
    slot: u8,
    version: u32,
    public_key: &[u8],
    server_challenge: &[u8],
    card_challenge: &[u8],
) -> Vec<u8> {
    labelled(
        LABEL_RENEW_POSSESSION,
        &[card_id, &[slot], &version.to_be_bytes(), public_key, server_challenge, card_challenge],
    )
}

/// KDF context of a renewed symmetric key: card id, kind, slot, new version, random.
pub fn derivation_context(
    card_id: &[u8],
    kind: KeyKind,
    slot: u8,
    version: u32,
    random: &[u8],
) -> Vec<u8> {
    labelled("", &[card_id, &[kind.code(), slot], &version.to_be_bytes(), random])
}

/// KDF context of a key confirmation value: card id, kind, slot, version, both challenges.
pub fn confirmation_context(
    card_id: &[u8],
    kind: KeyKind,
    slot: u8,
    version: u32,
    server_challenge: &[u8],
    card_challenge: &[u8],
) -> Vec<u8> {
    labelled(
        "",
        &[card_id, &[kind.code(), slot], &version.to_be_bytes(), server_challenge, card_challenge],
    )
}

/// KDF context of a keyring session's SCP03 static keys: card id, both challenges and the
/// mixing value (symmetric: CMAC of [`session_mix_message`] under the bottom external key;
/// asymmetric: empty, the KDF key being the ephemeral ECDH secret).
pub fn session_context(
    card_id: &[u8],
    server_challenge: &[u8],
    card_challenge: &[u8],
    mix: &[u8],
) -> Vec<u8> {
    labelled("", &[card_id, server_challenge, card_challenge, mix])
}

/// The message the bottom external key MACs into a symmetric session's key context.
pub fn session_mix_message(
    card_id: &[u8],
    server_challenge: &[u8],
    card_challenge: &[u8],
) -> Vec<u8> {
    labelled(LABEL_SESSION, &[card_id, server_challenge, card_challenge])
}

/// The check value of a public key (asymmetric slots): the first three bytes of the
/// x-coordinate. A public key is public; the value only detects a mismatch.
pub fn public_key_check_value(public_key: &[u8]) -> [u8; KCV_LEN] {
    let mut out = [0u8; KCV_LEN];
    for (o, b) in out.iter_mut().zip(public_key.iter().skip(1)) {
        *o = *b;
    }
    out
}

fn take<'a>(data: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8]> {
    let (head, tail) = data.split_at_checked(n).ok_or(ProtoError::Length(what))?;
    *data = tail;
    Ok(head)
}

fn take_array<const N: usize>(data: &mut &[u8], what: &'static str) -> Result<[u8; N]> {
    to_array(take(data, N, what)?, what)
}

fn to_array<const N: usize>(bytes: &[u8], what: &'static str) -> Result<[u8; N]> {
    bytes.try_into().map_err(|_| ProtoError::Length(what))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn layout(mode: Mode) -> Layout {
        Layout::new(mode, 4, 3).unwrap()
    }

    #[test]
    fn renew_round_trips_for_every_form_and_mode() {
        let forms = [
            RenewForm::Internal { slot: 3 },
            RenewForm::External { slot: 2 },
            RenewForm::Pair { internal: 4, external: 3 },
            RenewForm::PairSingleRandom { internal: 4, external: 3 },
            RenewForm::InternalFrom { slot: 2 },
            RenewForm::ExternalFrom { slot: 2 },
            RenewForm::BothFrom { internal: 3, external: 2 },
        ];
        for mode in [Mode::Symmetric, Mode::Asymmetric] {
            let l = layout(mode);
            for form in forms {
                if mode == Mode::Asymmetric && form.single_random() {
                    continue;
                }
                let targets = form.targets(&l).unwrap();
                let entries = targets
                    .iter()
                    .enumerate()
                    .map(|(i, (kind, _))| RenewEntry {
                        random: (!(form.single_random() && i == 1)).then_some([i as u8; 16]),
                        public_key: (mode == Mode::Asymmetric && *kind == KeyKind::External)
                            .then_some([4; 65]),
                    })
                    .collect();
                let cmd = RenewCommand { form, entries, proof: vec![9; mode.proof_len()] };
                let apdu = cmd.to_command();
                assert_eq!(RenewCommand::parse(&apdu, &l).unwrap(), cmd, "{form:?} {mode:?}");
                // One byte short or long is refused.
                let mut short = apdu.clone();
                short.data.pop();
                assert!(RenewCommand::parse(&short, &l).is_err());
                let mut long = apdu;
                long.data.push(0);
                assert!(RenewCommand::parse(&long, &l).is_err());
            }
        }
    }

    #[test]
    fn targets_are_canonical_and_checked() {
        let l = layout(Mode::Symmetric);
        assert_eq!(
            RenewForm::BothFrom { internal: 3, external: 2 }.targets(&l).unwrap(),
            vec![
                (KeyKind::Internal, 3),
                (KeyKind::Internal, 4),
                (KeyKind::External, 2),
                (KeyKind::External, 3)
            ]
        );
        assert!(RenewForm::Internal { slot: 5 }.targets(&l).is_err());
        assert!(RenewForm::External { slot: 0 }.targets(&l).is_err());
        assert!(RenewForm::parse(0x09, &[1]).is_err());
    }

    #[test]
    fn responses_round_trip() {
        let sym = RenewResponse {
            keys: vec![RenewedKey {
                kind: KeyKind::External,
                slot: 2,
                version: 7,
                kcv: [1, 2, 3],
                confirmation: Some([5; 16]),
                public_key: None,
                possession: None,
            }],
            signature: None,
        };
        assert_eq!(RenewResponse::parse(&sym.to_bytes(), Mode::Symmetric).unwrap(), sym);
        let asym = RenewResponse {
            keys: vec![
                RenewedKey {
                    kind: KeyKind::Internal,
                    slot: 3,
                    version: 2,
                    kcv: [1, 2, 3],
                    confirmation: None,
                    public_key: Some([4; 65]),
                    possession: Some([6; 64]),
                },
                RenewedKey {
                    kind: KeyKind::External,
                    slot: 3,
                    version: 2,
                    kcv: [1, 2, 3],
                    confirmation: None,
                    public_key: None,
                    possession: None,
                },
            ],
            signature: Some([8; 64]),
        };
        assert_eq!(RenewResponse::parse(&asym.to_bytes(), Mode::Asymmetric).unwrap(), asym);
        assert!(RenewResponse::parse(&asym.to_bytes()[1..], Mode::Asymmetric).is_err());
        let ia = InternalAuthResponse { version: 3, ephemeral: Some([4; 65]), proof: vec![1; 64] };
        assert_eq!(InternalAuthResponse::parse(&ia.to_bytes(), Mode::Asymmetric).unwrap(), ia);
        assert!(InternalAuthResponse::parse(&ia.to_bytes(), Mode::Symmetric).is_err());
        let info = KeyInfo {
            layout: layout(Mode::Symmetric),
            slots: vec![SlotInfo { kind: KeyKind::Internal, slot: 1, version: 9, kcv: [7; 3] }],
        };
        assert_eq!(KeyInfo::parse(&info.to_bytes()).unwrap(), info);
        let st = SecurityStatus {
            proven_internal: 0b1010,
            proven_external: 1,
            authenticated: Some((2, 1)),
            session_level: 0x33,
        };
        assert_eq!(SecurityStatus::parse(&st.to_bytes()).unwrap(), st);
    }

    #[test]
    fn labelled_structures_are_unambiguous() {
        // Moving a byte from one field to the next changes the encoding.
        assert_ne!(labelled("x", &[b"ab", b"c"]), labelled("x", &[b"a", b"bc"]));
        assert_eq!(labelled("L", &[b"ab"]), b"L\x00\x00\x02ab".to_vec());
        // Card and server cryptograms never coincide, even over the same values.
        assert_ne!(
            card_auth_message(b"id", 1, 1, &[0; 16], &[]),
            server_auth_message(b"id", 1, 1, 1, &[0; 16], &[], &[], &[])
        );
    }

    #[test]
    fn command_parse_refuses_malformed() {
        let l = layout(Mode::Symmetric);
        let ia = internal_authenticate(2, &[1; 16]);
        assert_eq!(
            KeyringCommand::parse(&ia, &l).unwrap(),
            KeyringCommand::InternalAuthenticate { slot: 2, challenge: [1; 16] }
        );
        let mut bad = ia.clone();
        bad.data.pop();
        assert_eq!(KeyringCommand::parse(&bad, &l), Err(StatusWord::WRONG_LENGTH));
        let ea = ExternalAuthenticate { slot: 1, ephemeral: None, proof: vec![0; 17] };
        assert_eq!(KeyringCommand::parse(&ea.to_command(), &l), Err(StatusWord::WRONG_LENGTH));
        assert_eq!(
            KeyringCommand::parse(&Command::new(0x00, 0x12, 0, 0), &l),
            Err(StatusWord::INS_NOT_SUPPORTED)
        );
        assert_eq!(
            KeyringCommand::parse(&Command::new(0x90, 0x88, 0, 0), &l),
            Err(StatusWord::CLA_NOT_SUPPORTED)
        );
    }
}
