//! The `vault` applet: card duplication and file keys (seed 003, DESIGN.md section 5).
//!
//! A pair of cards (main and backup) receives the same key group: 1 to 8 components, the
//! count fixed at issuance, each written once and tagged with who set it (the issuer by STORE
//! DATA at issuance, the holder by PUT COMPONENT with the PIN verified). The key-group key is
//! the XOR of all components (the classic key-component scheme: secret as long as one
//! component is); the key-encryption key and the key-group check value are derived from it
//! with crypto's KDF under distinct labels.
//!
//! The main card GENERATEs its P-256 key pair (or receives one: in the clear at issuance, or
//! sealed with HPKE to its transport key by a key service), EXPORTs the private key once,
//! wrapped under the KEK with its key type, role, the key-group check value, the public key
//! and a fresh nonce as associated data; the backup card IMPORTs it WRAPPED (a different key
//! group or a modified blob fails and changes nothing) and answers a confirmation that only
//! a card holding the key group can compute; CONFIRM BACKUP on the main card checks it and
//! only then sets "backup created", after which export is refused for good, as it is after
//! LOCK EXPORT. DECRYPT unwraps an age `p256tag` stanza (the file key goes to the host, which
//! decrypts the body), ENCRYPT wraps a file key to the card's key, TRANSCRYPT re-wraps a
//! file key for another recipient and MACs the new header so the key never leaves the card.
//!
//! Wire format in [`tessera_proto::vault`]; flows in `docs/vault.md`.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::age::{self, P256TagStanza};
use tessera_crypto::device::Purpose;
use tessera_crypto::ecdsa::{PublicKey, SigningKey};
use tessera_crypto::hpke::{self, HpkePrivateKey};
use tessera_crypto::kdf::{self, Label};
use tessera_crypto::keys::{AesKey, AesKeyLen};
use tessera_crypto::keywrap::{self, WrapKey};
use tessera_crypto::mac;
use tessera_proto::vault::{
    self as proto, Attestation, COMPONENT_CHECK_LEN, COMPONENT_LEN, CONFIRMATION_LEN, Config,
    GROUP_CHECK_LEN, KEY_ROLE_FILE_ENCRYPTION, KEY_TYPE_P256_AGE, KeyOrigin, NONCE_LEN,
    PUBLIC_KEY_LEN, Role, Setter, Status, TranscryptRequest, TranscryptResponse, VaultCommand,
    WrappedKey,
};
use zeroize::{Zeroize, Zeroizing};

use crate::applet::{Applet, Context, Persistent, StateError, TearScenario, fci};

pub mod scenarios;

pub use tessera_proto::vault::AID;

/// KDF label of the backup confirmation key.
pub const LABEL_CONFIRMATION: Label = Label::new(proto::LABEL_CONFIRMATION);

/// `6300`: a confirmation did not verify.
const VERIFICATION_FAILED: StatusWord = StatusWord(0x6300);

/// One key-group component and who set it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Component {
    value: [u8; COMPONENT_LEN],
    setter: u8,
}

impl Drop for Component {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

/// The card's key pair.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KeyPair {
    private: [u8; 32],
    #[serde(with = "serde_public")]
    public: [u8; PUBLIC_KEY_LEN],
    origin: u8,
}

impl KeyPair {
    /// The pair as an HPKE recipient key (its public key as stored, not recomputed).
    fn hpke(&self) -> Result<HpkePrivateKey, StatusWord> {
        HpkePrivateKey::from_stored(&self.private, &self.public).map_err(|_| StatusWord::UNKNOWN)
    }
}

impl Drop for KeyPair {
    fn drop(&mut self) {
        self.private.zeroize();
    }
}

mod serde_public {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8; 65], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 65], D::Error> {
        let v: Vec<u8> = Vec::deserialize(d)?;
        v.try_into().map_err(|_| serde::de::Error::custom("public key length"))
    }
}

/// The vault's persistent state.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct VaultState {
    /// `role || count`, once personalised.
    config: Option<[u8; 2]>,
    components: Vec<Option<Component>>,
    key: Option<KeyPair>,
    /// The transport key's private scalar (IMPORT SEALED), made with the configuration.
    transport: Option<Vec<u8>>,
    /// The nonce of the last EXPORT, awaiting its confirmation.
    pending_export: Option<[u8; NONCE_LEN]>,
    backup_created: bool,
    export_locked: bool,
}

impl Drop for VaultState {
    fn drop(&mut self) {
        if let Some(t) = self.transport.as_mut() {
            t.zeroize();
        }
    }
}

/// The vault applet.
#[derive(Default)]
pub struct Vault {
    state: Persistent<VaultState>,
}

/// The key-group key, derived keys and check value of a complete key group.
struct KeyGroup {
    key: AesKey,
}

impl KeyGroup {
    /// The XOR of all components.
    fn combine(components: &[&[u8; COMPONENT_LEN]]) -> Result<KeyGroup, StatusWord> {
        let mut acc = Zeroizing::new([0u8; COMPONENT_LEN]);
        for c in components {
            for (a, b) in acc.iter_mut().zip(c.iter()) {
                *a ^= b;
            }
        }
        Ok(KeyGroup { key: AesKey::from_slice(acc.as_slice()).map_err(|_| StatusWord::UNKNOWN)? })
    }

    fn context(&self, count: usize) -> [u8; 1] {
        [count as u8]
    }

    fn kek(&self, count: usize) -> Result<WrapKey, StatusWord> {
        WrapKey::new(kdf::derive_key(
            &self.key,
            Label::VAULT_KEK,
            &self.context(count),
            AesKeyLen::Aes256,
        ))
        .map_err(|_| StatusWord::UNKNOWN)
    }

    fn check(&self, count: usize) -> Result<[u8; GROUP_CHECK_LEN], StatusWord> {
        let mut out = [0u8; GROUP_CHECK_LEN];
        kdf::derive(&self.key, Label::VAULT_KEY_GROUP_CHECK, &self.context(count), &mut out)
            .map_err(|_| StatusWord::UNKNOWN)?;
        Ok(out)
    }

    fn confirmation(
        &self,
        count: usize,
        blob: &WrappedKey,
    ) -> Result<[u8; CONFIRMATION_LEN], StatusWord> {
        let key =
            kdf::derive_key(&self.key, LABEL_CONFIRMATION, &self.context(count), AesKeyLen::Aes128);
        Ok(mac::cmac(&key, &[&confirmation_message(blob)]))
    }
}

/// What the backup card's confirmation covers: the blob's metadata (public key, group check,
/// nonce, type and role).
fn confirmation_message(blob: &WrappedKey) -> Vec<u8> {
    let mut m = b"tessera/vault/backup-confirmation\0".to_vec();
    m.extend_from_slice(&blob.metadata());
    m
}

/// A component's check value: the first 3 bytes of a KDF output under the component (as an
/// AES-256 key), bound to its slot. The host computes the same to confirm a write.
pub fn component_check(slot: u8, component: &[u8; COMPONENT_LEN]) -> [u8; COMPONENT_CHECK_LEN] {
    let mut out = [0u8; COMPONENT_CHECK_LEN];
    let key = AesKey::Aes256(*component);
    if kdf::derive(&key, Label::VAULT_KEY_GROUP_CHECK, &[b'c', slot], &mut out).is_err() {
        unreachable!("3 bytes is a valid KDF output length");
    }
    out
}

/// The key-group check value of a complete set of components (what a card reports and binds
/// into its wrapped blobs).
pub fn group_check(components: &[[u8; COMPONENT_LEN]]) -> Option<[u8; GROUP_CHECK_LEN]> {
    let refs: Vec<&[u8; COMPONENT_LEN]> = components.iter().collect();
    KeyGroup::combine(&refs).ok()?.check(components.len()).ok()
}

pub use tessera_proto::vault::import_sealed_info;

impl Vault {
    /// A vault awaiting personalisation.
    pub fn new() -> Vault {
        Vault::default()
    }

    fn config(&self) -> Result<Config, StatusWord> {
        let [role, n] = self.state.config.ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        Config::new(Role::from_code(role).map_err(|_| StatusWord::UNKNOWN)?, n)
            .map_err(|_| StatusWord::UNKNOWN)
    }

    /// The complete key group, or `6985`.
    fn key_group(&self) -> Result<KeyGroup, StatusWord> {
        let values: Option<Vec<&[u8; COMPONENT_LEN]>> =
            self.state.components.iter().map(|c| c.as_ref().map(|c| &c.value)).collect();
        KeyGroup::combine(&values.ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?)
    }

    fn count(&self) -> usize {
        self.state.components.len()
    }

    fn key(&self) -> Result<&KeyPair, StatusWord> {
        self.state.key.as_ref().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)
    }

    fn status(&self) -> Result<Status, StatusWord> {
        let config = self.config()?;
        let components = self
            .state
            .components
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let c = c.as_ref()?;
                Some((Setter::from_code(c.setter).ok()?, component_check(i as u8 + 1, &c.value)))
            })
            .collect();
        let group_check = match self.key_group() {
            Ok(group) => Some(group.check(self.count())?),
            Err(_) => None,
        };
        Ok(Status {
            config,
            components,
            group_check,
            key: self.state.key.as_ref().and_then(|k| KeyOrigin::from_code(k.origin).ok()),
            export_pending: self.state.pending_export.is_some(),
            backup_created: self.state.backup_created,
            export_locked: self.state.export_locked,
        })
    }

    fn set_component(
        &mut self,
        slot: u8,
        value: [u8; COMPONENT_LEN],
        setter: Setter,
    ) -> Result<[u8; COMPONENT_CHECK_LEN], StatusWord> {
        self.config()?;
        let entry = usize::from(slot)
            .checked_sub(1)
            .and_then(|i| self.state.components.get_mut(i))
            .ok_or(StatusWord::INCORRECT_P1P2)?;
        if entry.is_some() {
            // Written once, whoever set it.
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        *entry = Some(Component { value, setter: setter.code() });
        Ok(component_check(slot, &value))
    }

    fn install_key(&mut self, private: &[u8], origin: KeyOrigin) -> Result<Vec<u8>, StatusWord> {
        if self.state.key.is_some() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let sk = SigningKey::from_bytes(private).map_err(|_| StatusWord::INCORRECT_DATA)?;
        let public = sk.public_key().to_sec1_bytes();
        self.state.key = Some(KeyPair { private: *sk.to_bytes(), public, origin: origin.code() });
        Ok(public.to_vec())
    }

    fn export(&mut self, ctx: &mut Context<'_>) -> Result<Vec<u8>, StatusWord> {
        let config = self.config()?;
        if config.role != Role::Main || self.state.export_locked || self.state.backup_created {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let group = self.key_group()?;
        let key = self.key()?;
        let mut nonce = [0u8; NONCE_LEN];
        ctx.rng().fill_random(&mut nonce);
        let mut blob = WrappedKey {
            key_type: KEY_TYPE_P256_AGE,
            role: KEY_ROLE_FILE_ENCRYPTION,
            group_check: group.check(self.count())?,
            public_key: key.public,
            nonce,
            wrapped: Vec::new(),
        };
        blob.wrapped =
            keywrap::wrap(ctx.rng(), &group.kek(self.count())?, &key.private, &blob.metadata())
                .map_err(|_| StatusWord::UNKNOWN)?;
        self.state.pending_export = Some(nonce);
        Ok(blob.to_bytes())
    }

    fn import_wrapped(&mut self, blob: &WrappedKey) -> Result<Vec<u8>, StatusWord> {
        let config = self.config()?;
        if config.role != Role::Backup {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let group = self.key_group()?;
        let count = self.count();
        if blob.key_type != KEY_TYPE_P256_AGE || blob.role != KEY_ROLE_FILE_ENCRYPTION {
            return Err(StatusWord::INCORRECT_DATA);
        }
        if !bool::from(blob.group_check.ct_eq(&group.check(count)?)) {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let private = keywrap::unwrap(&group.kek(count)?, &blob.wrapped, &blob.metadata())
            .map_err(|_| StatusWord::INCORRECT_DATA)?;
        let sk = SigningKey::from_bytes(&private).map_err(|_| StatusWord::INCORRECT_DATA)?;
        if sk.public_key().to_sec1_bytes() != blob.public_key {
            return Err(StatusWord::INCORRECT_DATA);
        }
        match &self.state.key {
            // A re-run after a lost answer: the same key, confirmed again, nothing changes.
            Some(existing) if existing.public == blob.public_key => {}
            Some(_) => return Err(StatusWord::CONDITIONS_NOT_SATISFIED),
            None => {
                self.install_key(&private, KeyOrigin::Wrapped)?;
            }
        }
        Ok(group.confirmation(count, blob)?.to_vec())
    }

    fn confirm_backup(&mut self, confirmation: &[u8; CONFIRMATION_LEN]) -> Result<(), StatusWord> {
        let config = self.config()?;
        if config.role != Role::Main || self.state.backup_created {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let nonce = self.state.pending_export.ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let group = self.key_group()?;
        let key = self.key()?;
        let blob = WrappedKey {
            key_type: KEY_TYPE_P256_AGE,
            role: KEY_ROLE_FILE_ENCRYPTION,
            group_check: group.check(self.count())?,
            public_key: key.public,
            nonce,
            wrapped: Vec::new(),
        };
        let expected = group.confirmation(self.count(), &blob)?;
        if !bool::from(expected.ct_eq(confirmation)) {
            return Err(VERIFICATION_FAILED);
        }
        self.state.pending_export = None;
        self.state.backup_created = true;
        Ok(())
    }

    fn import_sealed(
        &mut self,
        ctx: &mut Context<'_>,
        sealed: &[u8],
    ) -> Result<Vec<u8>, StatusWord> {
        self.config()?;
        let transport =
            self.state.transport.as_ref().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let sk = HpkePrivateKey::from_bytes(transport).map_err(|_| StatusWord::UNKNOWN)?;
        let info = import_sealed_info(&ctx.card().card_id);
        let private =
            hpke::open(&sk, &info, AID, sealed).map_err(|_| StatusWord::INCORRECT_DATA)?;
        self.install_key(&private, KeyOrigin::Sealed)
    }

    fn transcrypt(&self, req: &TranscryptRequest) -> Result<Vec<u8>, StatusWord> {
        let key = self.key()?;
        let old = P256TagStanza { enc: req.enc, body: req.body };
        let file_key =
            age::p256tag_open(&key.hpke()?, &old).map_err(|_| StatusWord::INCORRECT_DATA)?;
        // The stanza must belong to this header: its file key verifies the header's MAC.
        age::verify_header_mac(&file_key, &req.old_header, &req.old_mac)
            .map_err(|_| StatusWord::INCORRECT_DATA)?;
        if !req.new_prefix.starts_with(b"age-encryption.org/v1\n")
            || !(req.new_suffix == b"---" || req.new_suffix.ends_with(b"\n---"))
        {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let recipient =
            PublicKey::from_sec1_bytes(&req.recipient).map_err(|_| StatusWord::INCORRECT_DATA)?;
        let new = age::p256tag_seal(&recipient, &file_key).map_err(|_| StatusWord::UNKNOWN)?;
        let tag = age::p256tag_stanza_tag(&new.enc, &recipient);
        let mut header = req.new_prefix.clone();
        header.extend_from_slice(&proto::p256tag_stanza_text(&tag, &new.enc, &new.body));
        header.extend_from_slice(&req.new_suffix);
        let mac = age::header_mac(&file_key, &header);
        Ok(TranscryptResponse { enc: new.enc, body: new.body, mac }.to_bytes())
    }

    /// ATTEST: role, transport key and public key (if any), signed by the device key over the
    /// key service's nonce. `6A88` on a card without a device key (not issued by a server).
    fn attest(&self, ctx: &Context<'_>, nonce: &[u8]) -> Result<Vec<u8>, StatusWord> {
        let role = self.config()?.role;
        let t = self.state.transport.as_ref().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let transport_key =
            HpkePrivateKey::from_bytes(t).map_err(|_| StatusWord::UNKNOWN)?.public_key().to_bytes();
        let public_key = self.state.key.as_ref().map(|k| k.public);
        let body = Attestation::body(nonce, role, &transport_key, public_key.as_ref());
        let signature = ctx.device_sign(Purpose::DeviceAuthentication, &body)?.to_bytes();
        Ok(Attestation { role, transport_key, public_key, signature }.to_bytes())
    }

    fn get_data(&self, tag: u16) -> Result<Vec<u8>, StatusWord> {
        match tag {
            proto::TAG_STATUS => Ok(self.status()?.to_bytes()),
            proto::TAG_PUBLIC_KEY => Ok(self.key()?.public.to_vec()),
            proto::TAG_TRANSPORT_KEY => {
                let t =
                    self.state.transport.as_ref().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
                let sk = HpkePrivateKey::from_bytes(t).map_err(|_| StatusWord::UNKNOWN)?;
                Ok(sk.public_key().to_bytes().to_vec())
            }
            _ => Err(StatusWord::REFERENCED_DATA_NOT_FOUND),
        }
    }

    fn dispatch(&mut self, ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, StatusWord> {
        let command = VaultCommand::parse(cmd).map_err(|e| e.status_word())?;
        if let VaultCommand::GetData(tag) = command {
            return self.get_data(tag);
        }
        if let VaultCommand::Attest(nonce) = &command {
            return self.attest(ctx, nonce);
        }
        self.config()?;
        let pin_needed =
            !matches!(command, VaultCommand::Encrypt(_) | VaultCommand::ConfirmBackup(_));
        if pin_needed && !ctx.security().global_pin_verified {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        match command {
            VaultCommand::PutComponent { slot, component } => {
                Ok(self.set_component(slot, component, Setter::Holder)?.to_vec())
            }
            VaultCommand::Generate => {
                if self.config()?.role != Role::Main {
                    return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
                }
                if self.state.key.is_some() {
                    return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
                }
                let sk = SigningKey::generate(ctx.rng());
                self.install_key(sk.to_bytes().as_slice(), KeyOrigin::Generated)
            }
            VaultCommand::ImportSealed(sealed) => self.import_sealed(ctx, &sealed),
            VaultCommand::Export => self.export(ctx),
            VaultCommand::ImportWrapped(blob) => self.import_wrapped(&blob),
            VaultCommand::ConfirmBackup(c) => self.confirm_backup(&c).map(|()| Vec::new()),
            VaultCommand::LockExport => {
                self.state.export_locked = true;
                self.state.pending_export = None;
                Ok(Vec::new())
            }
            VaultCommand::Decrypt { enc, body } => {
                let key = self.key()?;
                let file_key = age::p256tag_open(&key.hpke()?, &P256TagStanza { enc, body })
                    .map_err(|_| StatusWord::INCORRECT_DATA)?;
                Ok(file_key.to_vec())
            }
            VaultCommand::Encrypt(file_key) => {
                let public = PublicKey::from_sec1_bytes(&self.key()?.public)
                    .map_err(|_| StatusWord::UNKNOWN)?;
                let s = age::p256tag_seal(&public, &file_key).map_err(|_| StatusWord::UNKNOWN)?;
                Ok([&s.enc[..], &s.body].concat())
            }
            VaultCommand::Transcrypt(req) => self.transcrypt(&req),
            VaultCommand::Attest(nonce) => self.attest(ctx, &nonce),
            VaultCommand::GetData(tag) => self.get_data(tag),
        }
    }
}

impl Applet for Vault {
    fn aid(&self) -> &'static [u8] {
        AID
    }

    fn name(&self) -> &'static str {
        "vault"
    }

    fn save(&self) -> Vec<u8> {
        self.state.encode()
    }

    fn load(&mut self, state: &[u8]) -> Result<(), StateError> {
        self.state.load(state)
    }

    fn take_changed(&mut self) -> bool {
        self.state.take_changed()
    }

    fn clear_volatile(&mut self) {}

    fn select(&mut self, _ctx: &mut Context<'_>) -> Result<Vec<u8>, StatusWord> {
        Ok(fci(AID))
    }

    fn call(&mut self, ctx: &mut Context<'_>, cmd: &Command) -> Result<Response, StatusWord> {
        if cmd.cla & 0x80 == 0 {
            return Err(StatusWord::CLA_NOT_SUPPORTED);
        }
        self.dispatch(ctx, cmd).map(Response::ok)
    }

    fn personalize(
        &mut self,
        ctx: &mut Context<'_>,
        dgi: u16,
        data: &[u8],
    ) -> Result<(), StatusWord> {
        match dgi {
            proto::DGI_CONFIG => {
                if self.state.config.is_some() {
                    return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
                }
                let config = Config::parse(data).map_err(|_| StatusWord::INCORRECT_DATA)?;
                self.state.config = Some(config.to_bytes());
                self.state.components = vec![None; usize::from(config.components)];
                let transport = HpkePrivateKey::generate(ctx.rng());
                self.state.transport = Some(transport.to_bytes().to_vec());
                Ok(())
            }
            proto::DGI_COMPONENT => {
                let (&slot, value) = data.split_first().ok_or(StatusWord::INCORRECT_DATA)?;
                let value: [u8; COMPONENT_LEN] =
                    value.try_into().map_err(|_| StatusWord::INCORRECT_DATA)?;
                self.set_component(slot, value, Setter::Issuer).map(|_| ())
            }
            proto::DGI_KEY => {
                self.config()?;
                self.install_key(data, KeyOrigin::Issued).map(|_| ())
            }
            _ => Err(StatusWord::REFERENCED_DATA_NOT_FOUND),
        }
    }

    fn tear_scenarios(&self) -> Vec<TearScenario> {
        scenarios::all()
    }
}

/// Wraps `private` for a key group as the main card's EXPORT does (for issuers' tools and
/// tests that play a main card): the blob a backup card of that group accepts.
pub fn wrap_for_group(
    rng: &mut dyn tessera_crypto::rng::Rng,
    components: &[[u8; COMPONENT_LEN]],
    private: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Option<WrappedKey> {
    let refs: Vec<&[u8; COMPONENT_LEN]> = components.iter().collect();
    let group = KeyGroup::combine(&refs).ok()?;
    let sk = SigningKey::from_bytes(private).ok()?;
    let mut blob = WrappedKey {
        key_type: KEY_TYPE_P256_AGE,
        role: KEY_ROLE_FILE_ENCRYPTION,
        group_check: group.check(components.len()).ok()?,
        public_key: sk.public_key().to_sec1_bytes(),
        nonce,
        wrapped: Vec::new(),
    };
    blob.wrapped =
        keywrap::wrap(rng, &group.kek(components.len()).ok()?, private, &blob.metadata()).ok()?;
    Some(blob)
}

/// The confirmation a backup card of this key group answers for `blob` (for tests and tools
/// that play a backup card).
pub fn backup_confirmation(
    components: &[[u8; COMPONENT_LEN]],
    blob: &WrappedKey,
) -> Option<[u8; CONFIRMATION_LEN]> {
    let refs: Vec<&[u8; COMPONENT_LEN]> = components.iter().collect();
    KeyGroup::combine(&refs).ok()?.confirmation(components.len(), blob).ok()
}
