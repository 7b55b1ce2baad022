//! The `vault` applet's wire format (seed 003, card duplication; `docs/vault.md`).
//!
//! A vault holds a key group of 1 to 8 components (write-once, each tagged with who set it),
//! one P-256 key pair for file encryption, and the backup state. Commands are proprietary
//! (`CLA 80`); the issuer's data groups arrive through the card-management applet's STORE
//! DATA. Every command parses here, once, into [`VaultCommand`].

use tessera_apdu::Command;

pub use crate::error::{ProtoError, Result};

/// The vault applet's AID: `F0` (proprietary) `TESSERA` `VT`.
pub const AID: &[u8] = &[0xF0, 0x54, 0x45, 0x53, 0x53, 0x45, 0x52, 0x41, 0x56, 0x54];

/// Length of one key-group component.
pub const COMPONENT_LEN: usize = 32;
/// Most components a key group may have.
pub const MAX_COMPONENTS: u8 = 8;
/// Length of a component's check value (answered by PUT COMPONENT to confirm the write).
pub const COMPONENT_CHECK_LEN: usize = 3;
/// Length of the key group's check value (bound into every wrapped blob).
pub const GROUP_CHECK_LEN: usize = 8;
/// Length of a P-256 private scalar.
pub const PRIVATE_KEY_LEN: usize = 32;
/// Length of an uncompressed SEC1 P-256 public key.
pub const PUBLIC_KEY_LEN: usize = 65;
/// Length of the export nonce (fresh for every EXPORT).
pub const NONCE_LEN: usize = 16;
/// Length of the backup card's confirmation (AES-CMAC under a key-group key).
pub const CONFIRMATION_LEN: usize = 16;
/// Length of an age file key.
pub const FILE_KEY_LEN: usize = 16;
/// Length of a `p256tag` stanza's encapsulated key.
pub const ENC_LEN: usize = 65;
/// Length of a `p256tag` stanza's body.
pub const BODY_LEN: usize = 32;
/// Length of the age header MAC.
pub const MAC_LEN: usize = 32;

/// Data group: configuration, `role || component count` (once, at issuance).
pub const DGI_CONFIG: u16 = 0x0301;
/// Data group: an issuer component, `slot || component (32)`.
pub const DGI_COMPONENT: u16 = 0x8301;
/// Data group: a key pair generated outside and imported at issuance, `scalar (32)`.
pub const DGI_KEY: u16 = 0x8302;

/// INS of PUT COMPONENT (P1 = slot, data = component; answers its check value).
pub const INS_PUT_COMPONENT: u8 = 0x10;
/// INS of GENERATE (answers the public key).
pub const INS_GENERATE: u8 = 0x46;
/// INS of IMPORT SEALED (data = HPKE-sealed scalar to the card's transport key).
pub const INS_IMPORT_SEALED: u8 = 0x48;
/// INS of EXPORT (answers a [`WrappedKey`]).
pub const INS_EXPORT: u8 = 0x4A;
/// INS of IMPORT WRAPPED (data = [`WrappedKey`]; answers the confirmation).
pub const INS_IMPORT_WRAPPED: u8 = 0x4C;
/// INS of CONFIRM BACKUP (data = the backup card's confirmation).
pub const INS_CONFIRM_BACKUP: u8 = 0x4E;
/// INS of LOCK EXPORT (permanent).
pub const INS_LOCK_EXPORT: u8 = 0x50;
/// INS of DECRYPT (data = `enc || body` of a `p256tag` stanza; answers the file key).
pub const INS_DECRYPT: u8 = 0x2A;
/// INS of ENCRYPT (data = a file key; answers `enc || body` of a stanza to the card's key).
pub const INS_ENCRYPT: u8 = 0x2C;
/// INS of TRANSCRYPT (data = [`TranscryptRequest`]; answers [`TranscryptResponse`]).
pub const INS_TRANSCRYPT: u8 = 0x2E;
/// INS of ATTEST (data = a key service's nonce; answers an [`Attestation`] signed by the
/// card's device key).
pub const INS_ATTEST: u8 = 0x52;
/// INS of GET DATA (P1-P2 = tag).
pub const INS_GET_DATA: u8 = 0xCA;

/// GET DATA tag: the vault's [`Status`].
pub const TAG_STATUS: u16 = 0x0101;
/// GET DATA tag: the file-encryption public key (65 bytes).
pub const TAG_PUBLIC_KEY: u16 = 0x0102;
/// GET DATA tag: the transport public key for IMPORT SEALED (65 bytes).
pub const TAG_TRANSPORT_KEY: u16 = 0x0103;

/// Version byte of the wrapped-key blob.
pub const WRAPPED_VERSION: u8 = 1;
/// Key type code: P-256 key for age `p256tag` file-key wrapping.
pub const KEY_TYPE_P256_AGE: u8 = 1;
/// Key role code: file encryption.
pub const KEY_ROLE_FILE_ENCRYPTION: u8 = 1;

/// HPKE `info` prefix of IMPORT SEALED (followed by the card id).
pub const IMPORT_SEALED_INFO: &[u8] = b"tessera/vault/import-sealed";
/// KDF label of the backup confirmation key.
pub const LABEL_CONFIRMATION: &str = "tessera/vault/backup-confirmation";
/// The HPKE `info` of IMPORT SEALED for a card: [`IMPORT_SEALED_INFO`] `|| card id`.
pub fn import_sealed_info(card_id: &[u8]) -> Vec<u8> {
    [IMPORT_SEALED_INFO, card_id].concat()
}

/// Label at the start of the body the device key signs in ATTEST (distinct from every other
/// device-signed body, as the update applet's labels are).
pub const ATTEST_LABEL: &[u8] = b"vault-attest\0";
/// Shortest ATTEST nonce.
pub const ATTEST_NONCE_MIN: usize = 16;
/// Longest ATTEST nonce.
pub const ATTEST_NONCE_MAX: usize = 64;
/// Length of an ECDSA P-256 signature (`r || s`).
pub const SIGNATURE_LEN: usize = 64;

/// A vault card's role in its pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The main card: generates the key pair and exports it once, wrapped.
    Main,
    /// The backup card: receives the wrapped key and confirms.
    Backup,
}

impl Role {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            Role::Main => 1,
            Role::Backup => 2,
        }
    }
    /// Parses the wire code.
    pub fn from_code(code: u8) -> Result<Role> {
        match code {
            1 => Ok(Role::Main),
            2 => Ok(Role::Backup),
            _ => Err(ProtoError::Value("role")),
        }
    }
}

/// Who set a key-group component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setter {
    /// The issuer, at issuance (STORE DATA in the issuer's secure channel).
    Issuer,
    /// The holder, after issuance (PUT COMPONENT, PIN verified).
    Holder,
}

impl Setter {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            Setter::Issuer => 1,
            Setter::Holder => 2,
        }
    }
    /// Parses the wire code.
    pub fn from_code(code: u8) -> Result<Setter> {
        match code {
            1 => Ok(Setter::Issuer),
            2 => Ok(Setter::Holder),
            _ => Err(ProtoError::Value("setter")),
        }
    }
}

/// How the card's key pair came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    /// GENERATE, inside this card.
    Generated,
    /// Imported in the clear at issuance (DGI).
    Issued,
    /// IMPORT SEALED from a key service.
    Sealed,
    /// IMPORT WRAPPED from the main card (a backup's copy).
    Wrapped,
}

impl KeyOrigin {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            KeyOrigin::Generated => 1,
            KeyOrigin::Issued => 2,
            KeyOrigin::Sealed => 3,
            KeyOrigin::Wrapped => 4,
        }
    }
    /// Parses the wire code.
    pub fn from_code(code: u8) -> Result<KeyOrigin> {
        match code {
            1 => Ok(KeyOrigin::Generated),
            2 => Ok(KeyOrigin::Issued),
            3 => Ok(KeyOrigin::Sealed),
            4 => Ok(KeyOrigin::Wrapped),
            _ => Err(ProtoError::Value("key origin")),
        }
    }
}

/// The configuration data group: role and component count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The card's role.
    pub role: Role,
    /// The number of key-group components (1 to 8), fixed for the card's life.
    pub components: u8,
}

impl Config {
    /// A configuration; `Value` unless `1 <= components <= 8`.
    pub fn new(role: Role, components: u8) -> Result<Config> {
        if components == 0 || components > MAX_COMPONENTS {
            return Err(ProtoError::Value("component count"));
        }
        Ok(Config { role, components })
    }
    /// The data group's value.
    pub fn to_bytes(self) -> [u8; 2] {
        [self.role.code(), self.components]
    }
    /// Parses the data group's value.
    pub fn parse(data: &[u8]) -> Result<Config> {
        let [role, n] = to_array::<2>(data, "config")?;
        Config::new(Role::from_code(role)?, n)
    }
}

/// The vault's state as GET DATA [`TAG_STATUS`] answers it (no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Role and component count, once configured.
    pub config: Config,
    /// Per slot: who set it and the component's check value, or `None` while empty.
    pub components: Vec<Option<(Setter, [u8; COMPONENT_CHECK_LEN])>>,
    /// The key group's check value, once every component is set.
    pub group_check: Option<[u8; GROUP_CHECK_LEN]>,
    /// How the key pair came to be, once there is one.
    pub key: Option<KeyOrigin>,
    /// An EXPORT happened and its confirmation has not arrived.
    pub export_pending: bool,
    /// The backup card's confirmation has arrived ("backup created").
    pub backup_created: bool,
    /// Export is locked for good.
    pub export_locked: bool,
}

impl Status {
    /// Encodes: `role n slots[n] flags (group_check[8])? (origin)?` where each slot is `00`
    /// (empty) or a [`Setter`] code and the 3-byte check value, and flags bit 0 = group check present, 1 = key present,
    /// 2 = export pending, 3 = backup created, 4 = export locked.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![self.config.role.code(), self.config.components];
        for slot in &self.components {
            match slot {
                None => out.push(0),
                Some((setter, check)) => {
                    out.push(setter.code());
                    out.extend_from_slice(check);
                }
            }
        }
        let flags = u8::from(self.group_check.is_some())
            | u8::from(self.key.is_some()) << 1
            | u8::from(self.export_pending) << 2
            | u8::from(self.backup_created) << 3
            | u8::from(self.export_locked) << 4;
        out.push(flags);
        if let Some(check) = &self.group_check {
            out.extend_from_slice(check);
        }
        if let Some(origin) = self.key {
            out.push(origin.code());
        }
        out
    }

    /// Parses what [`Status::to_bytes`] made.
    pub fn parse(data: &[u8]) -> Result<Status> {
        let mut rest = data;
        let [role, n] = take_array::<2>(&mut rest, "status")?;
        let config = Config::new(Role::from_code(role)?, n)?;
        let mut components = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let [code] = take_array::<1>(&mut rest, "status slot")?;
            components.push(if code == 0 {
                None
            } else {
                Some((Setter::from_code(code)?, take_array(&mut rest, "component check")?))
            });
        }
        let [flags] = take_array::<1>(&mut rest, "status flags")?;
        if flags >> 5 != 0 {
            return Err(ProtoError::Value("status flags"));
        }
        let group_check =
            if flags & 1 != 0 { Some(take_array(&mut rest, "group check")?) } else { None };
        let key = if flags & 2 != 0 {
            let [o] = take_array::<1>(&mut rest, "key origin")?;
            Some(KeyOrigin::from_code(o)?)
        } else {
            None
        };
        if !rest.is_empty() {
            return Err(ProtoError::Length("status trailing bytes"));
        }
        Ok(Status {
            config,
            components,
            group_check,
            key,
            export_pending: flags & 4 != 0,
            backup_created: flags & 8 != 0,
            export_locked: flags & 16 != 0,
        })
    }

    /// True when every component is set.
    pub fn complete(&self) -> bool {
        self.components.iter().all(Option::is_some)
    }
}

/// The exported private key, wrapped under the key-group KEK (AES-256-GCM, the metadata
/// fields as associated data).
///
/// Layout: `version(1) key_type(1) role(1) group_check(8) public_key(65) nonce(16) wrapped`.
/// The metadata (everything before `wrapped`) is the associated data, so a blob made under
/// another key group, for another key type or role, or modified anywhere fails to unwrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// Key type code ([`KEY_TYPE_P256_AGE`]).
    pub key_type: u8,
    /// Key role code ([`KEY_ROLE_FILE_ENCRYPTION`]).
    pub role: u8,
    /// The exporting card's key-group check value.
    pub group_check: [u8; GROUP_CHECK_LEN],
    /// The key pair's public key.
    pub public_key: [u8; PUBLIC_KEY_LEN],
    /// The export nonce the confirmation must answer.
    pub nonce: [u8; NONCE_LEN],
    /// The key wrap (crypto's `keywrap` output) of the private scalar.
    pub wrapped: Vec<u8>,
}

/// Length of a [`WrappedKey`]'s metadata.
pub const WRAPPED_METADATA_LEN: usize = 3 + GROUP_CHECK_LEN + PUBLIC_KEY_LEN + NONCE_LEN;

impl WrappedKey {
    /// The metadata bytes (associated data of the wrap).
    pub fn metadata(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(WRAPPED_METADATA_LEN);
        out.extend_from_slice(&[WRAPPED_VERSION, self.key_type, self.role]);
        out.extend_from_slice(&self.group_check);
        out.extend_from_slice(&self.public_key);
        out.extend_from_slice(&self.nonce);
        out
    }
    /// The blob.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.metadata();
        out.extend_from_slice(&self.wrapped);
        out
    }
    /// Parses a blob (structure only; the card checks every field).
    pub fn parse(data: &[u8]) -> Result<WrappedKey> {
        let mut rest = data;
        let [version, key_type, role] = take_array::<3>(&mut rest, "wrapped key header")?;
        if version != WRAPPED_VERSION {
            return Err(ProtoError::Value("wrapped key version"));
        }
        let group_check = take_array(&mut rest, "group check")?;
        let public_key = take_array(&mut rest, "public key")?;
        let nonce = take_array(&mut rest, "nonce")?;
        if rest.is_empty() || rest.len() > 256 {
            return Err(ProtoError::Length("wrapped key"));
        }
        Ok(WrappedKey { key_type, role, group_check, public_key, nonce, wrapped: rest.to_vec() })
    }
}

/// ATTEST's answer: what a key service must know before it seals a key to the card, vouched
/// for by the card's device key (whose certificate chains to the issuer CA).
///
/// Layout: `role(1) transport_key(65) has_key(1: 00 or 01) [public_key(65)] signature(64)`.
/// The signature is the device key's (the `DeviceAuthentication` structure of `tessera_crypto::device`,
/// naming the card id) over [`Attestation::body`]: the service's nonce, so an old answer cannot be
/// replayed, and every field above, so a relaying terminal cannot substitute its own
/// transport key or hide a key the card already holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// The card's role in its pair.
    pub role: Role,
    /// The card's transport key (HPKE, DHKEM P-256, uncompressed SEC1) for IMPORT SEALED.
    pub transport_key: [u8; PUBLIC_KEY_LEN],
    /// The file-encryption public key, once the card holds a key pair.
    pub public_key: Option<[u8; PUBLIC_KEY_LEN]>,
    /// The device key's signature over [`Attestation::body`].
    pub signature: [u8; SIGNATURE_LEN],
}

impl Attestation {
    /// The signed body: [`ATTEST_LABEL`] `len(nonce)(1) nonce role transport_key has_key
    /// [public_key]`.
    pub fn body(
        nonce: &[u8],
        role: Role,
        transport_key: &[u8; PUBLIC_KEY_LEN],
        public_key: Option<&[u8; PUBLIC_KEY_LEN]>,
    ) -> Vec<u8> {
        let mut out = ATTEST_LABEL.to_vec();
        out.push(nonce.len() as u8);
        out.extend_from_slice(nonce);
        out.push(role.code());
        out.extend_from_slice(transport_key);
        match public_key {
            Some(pk) => {
                out.push(1);
                out.extend_from_slice(pk);
            }
            None => out.push(0),
        }
        out
    }

    /// This answer's signed body for `nonce`.
    pub fn signed_body(&self, nonce: &[u8]) -> Vec<u8> {
        Attestation::body(nonce, self.role, &self.transport_key, self.public_key.as_ref())
    }

    /// Encodes the answer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![self.role.code()];
        out.extend_from_slice(&self.transport_key);
        match &self.public_key {
            Some(pk) => {
                out.push(1);
                out.extend_from_slice(pk);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses the answer (structure only; the key service verifies the signature).
    pub fn parse(data: &[u8]) -> Result<Attestation> {
        let mut rest = data;
        let [role] = take_array::<1>(&mut rest, "attestation role")?;
        let role = Role::from_code(role)?;
        let transport_key = take_array(&mut rest, "transport key")?;
        let public_key = match take_array::<1>(&mut rest, "attestation key flag")? {
            [0] => None,
            [1] => Some(take_array(&mut rest, "public key")?),
            _ => return Err(ProtoError::Value("attestation key flag")),
        };
        let signature = to_array(rest, "attestation signature")?;
        Ok(Attestation { role, transport_key, public_key, signature })
    }
}

/// TRANSCRYPT: re-wrap a file key from this card's stanza to `recipient`, and MAC the new
/// header, inside the card.
///
/// The card opens `stanza` with its key, checks `old_mac` over `old_header` with the file key
/// (so the stanza belongs to this file), seals the file key to `recipient` as a new
/// `p256tag` stanza, builds `new_prefix || stanza line || new_suffix` and answers its MAC.
/// Layout: `enc(65) body(32) recipient(65) old_mac(32)` then three `u16`-length-prefixed
/// byte strings: `old_header`, `new_prefix`, `new_suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscryptRequest {
    /// The old stanza's encapsulated key.
    pub enc: [u8; ENC_LEN],
    /// The old stanza's body.
    pub body: [u8; BODY_LEN],
    /// The new recipient (uncompressed SEC1).
    pub recipient: [u8; PUBLIC_KEY_LEN],
    /// The old header's MAC.
    pub old_mac: [u8; MAC_LEN],
    /// The old header, up to and including `---`.
    pub old_header: Vec<u8>,
    /// The new header's bytes before the new stanza (starts with the version line).
    pub new_prefix: Vec<u8>,
    /// The new header's bytes after the new stanza (ends with `---`).
    pub new_suffix: Vec<u8>,
}

impl TranscryptRequest {
    /// Encodes the command data.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.enc);
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&self.recipient);
        out.extend_from_slice(&self.old_mac);
        for part in [&self.old_header, &self.new_prefix, &self.new_suffix] {
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }
    /// Parses the command data.
    pub fn parse(data: &[u8]) -> Result<TranscryptRequest> {
        let mut rest = data;
        let enc = take_array(&mut rest, "enc")?;
        let body = take_array(&mut rest, "body")?;
        let recipient = take_array(&mut rest, "recipient")?;
        let old_mac = take_array(&mut rest, "old MAC")?;
        let mut part = |what| -> Result<Vec<u8>> {
            let len = u16::from_be_bytes(take_array(&mut rest, what)?);
            Ok(take(&mut rest, usize::from(len), what)?.to_vec())
        };
        let old_header = part("old header")?;
        let new_prefix = part("new prefix")?;
        let new_suffix = part("new suffix")?;
        if !rest.is_empty() {
            return Err(ProtoError::Length("TRANSCRYPT trailing bytes"));
        }
        Ok(TranscryptRequest { enc, body, recipient, old_mac, old_header, new_prefix, new_suffix })
    }
}

/// TRANSCRYPT's answer: the new stanza and the new header's MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscryptResponse {
    /// The new stanza's encapsulated key.
    pub enc: [u8; ENC_LEN],
    /// The new stanza's body.
    pub body: [u8; BODY_LEN],
    /// The MAC of `new_prefix || stanza line || new_suffix`.
    pub mac: [u8; MAC_LEN],
}

impl TranscryptResponse {
    /// Encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        [&self.enc[..], &self.body, &self.mac].concat()
    }
    /// Parses.
    pub fn parse(data: &[u8]) -> Result<TranscryptResponse> {
        let mut rest = data;
        let enc = take_array(&mut rest, "enc")?;
        let body = take_array(&mut rest, "body")?;
        let mac = take_array(&mut rest, "mac")?;
        if !rest.is_empty() {
            return Err(ProtoError::Length("TRANSCRYPT response"));
        }
        Ok(TranscryptResponse { enc, body, mac })
    }
}

/// The text of a `p256tag` stanza as it appears in an age header:
/// `-> p256tag <b64 tag> <b64 enc>\n<b64 body>\n` (standard base64 without padding; a
/// 32-byte body is one 43-character line).
pub fn p256tag_stanza_text(tag: &[u8; 4], enc: &[u8; ENC_LEN], body: &[u8; BODY_LEN]) -> Vec<u8> {
    let mut out = b"-> p256tag ".to_vec();
    out.extend_from_slice(base64_no_pad(tag).as_bytes());
    out.push(b' ');
    out.extend_from_slice(base64_no_pad(enc).as_bytes());
    out.push(b'\n');
    out.extend_from_slice(base64_no_pad(body).as_bytes());
    out.push(b'\n');
    out
}

/// Standard base64 (RFC 4648 section 4) without padding, as age writes it.
pub fn base64_no_pad(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// A vault command, parsed once at the card's edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultCommand {
    /// PUT COMPONENT: the holder sets component `slot` (1-based).
    PutComponent {
        /// The slot.
        slot: u8,
        /// The component.
        component: [u8; COMPONENT_LEN],
    },
    /// GENERATE the key pair in the card.
    Generate,
    /// IMPORT SEALED: an HPKE-sealed scalar from a key service.
    ImportSealed(Vec<u8>),
    /// EXPORT the key wrapped under the key group.
    Export,
    /// IMPORT WRAPPED on a backup card.
    ImportWrapped(WrappedKey),
    /// CONFIRM BACKUP with the backup card's confirmation.
    ConfirmBackup([u8; CONFIRMATION_LEN]),
    /// LOCK EXPORT for good.
    LockExport,
    /// DECRYPT a `p256tag` stanza.
    Decrypt {
        /// Encapsulated key.
        enc: [u8; ENC_LEN],
        /// Body.
        body: [u8; BODY_LEN],
    },
    /// ENCRYPT a file key to the card's own key.
    Encrypt([u8; FILE_KEY_LEN]),
    /// TRANSCRYPT a stanza to another recipient.
    Transcrypt(Box<TranscryptRequest>),
    /// ATTEST: the device-signed [`Attestation`] over a key service's nonce.
    Attest(Vec<u8>),
    /// GET DATA.
    GetData(u16),
}

impl VaultCommand {
    /// Parses a command (CLA `80`, or `00` for GET DATA).
    pub fn parse(cmd: &Command) -> Result<VaultCommand> {
        let no_params = |what| {
            if cmd.p1 != 0 || cmd.p2 != 0 { Err(ProtoError::Parameters(what)) } else { Ok(()) }
        };
        let empty = |what| {
            if cmd.data.is_empty() { Ok(()) } else { Err(ProtoError::Length(what)) }
        };
        match cmd.ins {
            INS_GET_DATA => {
                empty("GET DATA")?;
                Ok(VaultCommand::GetData(u16::from_be_bytes([cmd.p1, cmd.p2])))
            }
            INS_PUT_COMPONENT => {
                if cmd.p2 != 0 {
                    return Err(ProtoError::Parameters("PUT COMPONENT P2"));
                }
                Ok(VaultCommand::PutComponent {
                    slot: cmd.p1,
                    component: to_array(&cmd.data, "component")?,
                })
            }
            INS_GENERATE => {
                no_params("GENERATE")?;
                empty("GENERATE")?;
                Ok(VaultCommand::Generate)
            }
            INS_IMPORT_SEALED => {
                no_params("IMPORT SEALED")?;
                if cmd.data.len() < ENC_LEN + PRIVATE_KEY_LEN + 16 {
                    return Err(ProtoError::Length("IMPORT SEALED"));
                }
                Ok(VaultCommand::ImportSealed(cmd.data.clone()))
            }
            INS_EXPORT => {
                no_params("EXPORT")?;
                empty("EXPORT")?;
                Ok(VaultCommand::Export)
            }
            INS_IMPORT_WRAPPED => {
                no_params("IMPORT WRAPPED")?;
                Ok(VaultCommand::ImportWrapped(WrappedKey::parse(&cmd.data)?))
            }
            INS_CONFIRM_BACKUP => {
                no_params("CONFIRM BACKUP")?;
                Ok(VaultCommand::ConfirmBackup(to_array(&cmd.data, "confirmation")?))
            }
            INS_LOCK_EXPORT => {
                no_params("LOCK EXPORT")?;
                empty("LOCK EXPORT")?;
                Ok(VaultCommand::LockExport)
            }
            INS_DECRYPT => {
                no_params("DECRYPT")?;
                let mut rest = cmd.data.as_slice();
                let enc = take_array(&mut rest, "enc")?;
                let body = to_array(rest, "body")?;
                Ok(VaultCommand::Decrypt { enc, body })
            }
            INS_ENCRYPT => {
                no_params("ENCRYPT")?;
                Ok(VaultCommand::Encrypt(to_array(&cmd.data, "file key")?))
            }
            INS_TRANSCRYPT => {
                no_params("TRANSCRYPT")?;
                Ok(VaultCommand::Transcrypt(Box::new(TranscryptRequest::parse(&cmd.data)?)))
            }
            INS_ATTEST => {
                no_params("ATTEST")?;
                if !(ATTEST_NONCE_MIN..=ATTEST_NONCE_MAX).contains(&cmd.data.len()) {
                    return Err(ProtoError::Length("ATTEST nonce"));
                }
                Ok(VaultCommand::Attest(cmd.data.clone()))
            }
            other => Err(ProtoError::Instruction(other)),
        }
    }

    /// The command APDU (extended length where the data needs it).
    pub fn to_command(&self) -> Command {
        let c = |ins, p1, data: Vec<u8>| {
            let cmd = Command::new(0x80, ins, p1, 0);
            if data.is_empty() { cmd.with_le(256) } else { cmd.with_data(data).with_le(256) }
        };
        match self {
            VaultCommand::PutComponent { slot, component } => {
                c(INS_PUT_COMPONENT, *slot, component.to_vec())
            }
            VaultCommand::Generate => c(INS_GENERATE, 0, Vec::new()),
            VaultCommand::ImportSealed(sealed) => c(INS_IMPORT_SEALED, 0, sealed.clone()),
            VaultCommand::Export => c(INS_EXPORT, 0, Vec::new()),
            VaultCommand::ImportWrapped(w) => c(INS_IMPORT_WRAPPED, 0, w.to_bytes()),
            VaultCommand::ConfirmBackup(conf) => c(INS_CONFIRM_BACKUP, 0, conf.to_vec()),
            VaultCommand::LockExport => c(INS_LOCK_EXPORT, 0, Vec::new()),
            VaultCommand::Decrypt { enc, body } => c(INS_DECRYPT, 0, [&enc[..], body].concat()),
            VaultCommand::Encrypt(key) => c(INS_ENCRYPT, 0, key.to_vec()),
            VaultCommand::Transcrypt(req) => c(INS_TRANSCRYPT, 0, req.to_bytes()),
            VaultCommand::Attest(nonce) => c(INS_ATTEST, 0, nonce.clone()),
            VaultCommand::GetData(tag) => {
                let [p1, p2] = tag.to_be_bytes();
                Command::new(0x80, INS_GET_DATA, p1, p2).with_le(256)
            }
        }
    }
}

fn take<'a>(data: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8]> {
    if data.len() < n {
        return Err(ProtoError::Length(what));
    }
    let (head, tail) = data.split_at(n);
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
    use proptest::prelude::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        // RFC 4648 section 10, without the padding.
        for (input, out) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_no_pad(input.as_bytes()), out);
        }
    }

    #[test]
    fn status_and_blobs_round_trip() {
        let status = Status {
            config: Config::new(Role::Backup, 3).unwrap(),
            components: vec![
                Some((Setter::Issuer, [1, 2, 3])),
                None,
                Some((Setter::Holder, [4, 5, 6])),
            ],
            group_check: Some([1; 8]),
            key: Some(KeyOrigin::Wrapped),
            export_pending: false,
            backup_created: true,
            export_locked: true,
        };
        assert_eq!(Status::parse(&status.to_bytes()).unwrap(), status);
        let w = WrappedKey {
            key_type: 1,
            role: 1,
            group_check: [2; 8],
            public_key: [4; 65],
            nonce: [5; 16],
            wrapped: vec![6; 61],
        };
        assert_eq!(WrappedKey::parse(&w.to_bytes()).unwrap(), w);
        let t = TranscryptRequest {
            enc: [1; 65],
            body: [2; 32],
            recipient: [3; 65],
            old_mac: [4; 32],
            old_header: b"old".to_vec(),
            new_prefix: b"pre".to_vec(),
            new_suffix: b"---".to_vec(),
        };
        let cmd = VaultCommand::Transcrypt(Box::new(t));
        assert_eq!(VaultCommand::parse(&cmd.to_command()).unwrap(), cmd);
        let a = Attestation {
            role: Role::Main,
            transport_key: [7; 65],
            public_key: Some([8; 65]),
            signature: [9; 64],
        };
        assert_eq!(Attestation::parse(&a.to_bytes()).unwrap(), a);
        let none = Attestation { public_key: None, ..a.clone() };
        assert_eq!(Attestation::parse(&none.to_bytes()).unwrap(), none);
        assert_ne!(a.signed_body(&[1; 16]), none.signed_body(&[1; 16]));
        assert_ne!(a.signed_body(&[1; 16]), a.signed_body(&[2; 16]));
        assert!(Attestation::parse(&a.to_bytes()[..a.to_bytes().len() - 1]).is_err());
        let cmd = VaultCommand::Attest(vec![3; 32]);
        assert_eq!(VaultCommand::parse(&cmd.to_command()).unwrap(), cmd);
        let short = Command::new(0x80, INS_ATTEST, 0, 0).with_data(vec![0; 15]);
        assert_eq!(VaultCommand::parse(&short), Err(ProtoError::Length("ATTEST nonce")));
        assert_eq!(Config::new(Role::Main, 0), Err(ProtoError::Value("component count")));
        assert_eq!(Config::new(Role::Main, 9), Err(ProtoError::Value("component count")));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(ins in any::<u8>(), p1 in any::<u8>(), p2 in any::<u8>(),
                               data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let cmd = Command::new(0x80, ins, p1, p2).with_data(data.clone());
            if let Ok(parsed) = VaultCommand::parse(&cmd) {
                // What parses re-encodes to the same data.
                prop_assert_eq!(parsed.to_command().data, data);
            }
            let _ = Status::parse(&cmd.data);
            let _ = WrappedKey::parse(&cmd.data);
            let _ = TranscryptResponse::parse(&cmd.data);
            let _ = Attestation::parse(&cmd.data);
        }
    }
}
