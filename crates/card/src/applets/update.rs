//! The `update` applet: remote card data update (seed 000, DESIGN.md section 5).
//!
//! The card keeps named data objects (up to 64 KiB each; read freely or after the PIN), its
//! own HPKE decryption key for updates (generated on the card at issuance and vouched for by
//! the device key), and the highest update sequence it has applied. The chain of Fig. 2 is
//! enforced here:
//!
//! 1. the PIN (the card-management applet's global PIN) must be verified before DEVICE
//!    AUTHENTICATE (claim 5), else `6982`;
//! 2. DEVICE AUTHENTICATE signs, with the card's device key, a labelled structure holding the
//!    server's single-use, expiring random and the card's last sequence (claim 8); in the
//!    privacy variant the card seals its id and that signature to the server's HPKE key
//!    (claim 9); the replayable static authenticator (claim 10) answers only on a card
//!    personalised with it;
//! 3. LOAD PACKAGE (before device authentication in this selection `6985`, without the PIN
//!    `6982`) checks the issuer's package-signing signature (`6300`), the card id (`6A88`),
//!    the sequence (not above the last one: `6A89`, except the last package itself, answered
//!    again with its receipt and no change; in the privacy variant the package arrives wrapped
//!    once more to the update key, so the terminal never sees the card id), decrypts (`6984` if the card's key cannot open
//!    it), and applies the value atomically (claims 1, 6) or stores it sealed, to be
//!    decrypted on every read (claims 2, 7); it answers a receipt signed by the device key.
//!
//! Wire format in [`tessera_proto::update`]; flows in `docs/update.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::device::Purpose;
use tessera_crypto::ecdsa::Signature;
use tessera_crypto::hash::sha256;
use tessera_crypto::hpke::{self, HpkePrivateKey, HpkePublicKey};
use tessera_crypto::x509::Certificate;
use tessera_proto::update::{
    self as proto, AuthMode, Challenge, DeviceAuthResponse, MAX_OBJECT_LEN, MAX_PACKAGE_LEN, Mode,
    ObjectDefinition, Outcome, Package, ReadRule, Receipt, STATIC_AUTH_LEN, SealedIdentity, Status,
    UpdateCommand,
};
use zeroize::{Zeroize, Zeroizing};

use crate::applet::{Applet, Context, Persistent, StateError, TearScenario, fci};

pub mod scenarios;

pub use tessera_proto::update::AID;

/// `6300`: the package's signature does not verify.
pub const SIGNATURE_INVALID: StatusWord = StatusWord(0x6300);
/// `6A88`: the package names another card.
pub const WRONG_CARD: StatusWord = StatusWord::REFERENCED_DATA_NOT_FOUND;
/// `6A89`: the package's sequence is not above the card's last one (replay or reordering).
pub const STALE_SEQUENCE: StatusWord = StatusWord::ALREADY_EXISTS;
/// `6984`: the card's update key cannot open the package's value.
pub const UNDECRYPTABLE: StatusWord = StatusWord::REFERENCE_DATA_NOT_USABLE;
/// `6985`: device authentication has not happened in this selection.
pub const NOT_AUTHENTICATED: StatusWord = StatusWord::CONDITIONS_NOT_SATISFIED;
/// `6982`: the PIN has not been verified in this session.
pub const PIN_REQUIRED: StatusWord = StatusWord::SECURITY_STATUS_NOT_SATISFIED;

/// The update key pair and the device key's proof for it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct UpdateKey {
    secret: Vec<u8>,
    public: Vec<u8>,
    /// `public(65) signature(64)`, as GET DATA answers it.
    proof: Vec<u8>,
}

impl Drop for UpdateKey {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

/// An object's value: in the clear (applied), or the package's sealed value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Value {
    Plain(Vec<u8>),
    Sealed { sequence: u64, sealed: Vec<u8> },
}

impl Drop for Value {
    fn drop(&mut self) {
        if let Value::Plain(v) = self {
            v.zeroize();
        }
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Object {
    rule: u8,
    value: Value,
}

/// The applet's persistent state.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct UpdateState {
    key: Option<UpdateKey>,
    legacy_static: Option<[u8; STATIC_AUTH_LEN]>,
    objects: BTreeMap<Vec<u8>, Object>,
    last_sequence: u64,
    /// SHA-256 of the last applied package (to answer its redelivery).
    last_digest: Option<[u8; 32]>,
}

impl Drop for UpdateState {
    fn drop(&mut self) {
        if let Some(s) = self.legacy_static.as_mut() {
            s.zeroize();
        }
    }
}

/// Volatile state: the chain's progress and the package being loaded.
#[derive(Default)]
struct Volatile {
    /// DEVICE AUTHENTICATE answered in this selection.
    authenticated: bool,
    /// Segments received so far, and the next segment number.
    buffer: Vec<u8>,
    next_segment: u8,
}

/// The update applet.
#[derive(Default)]
pub struct UpdateApplet {
    state: Persistent<UpdateState>,
    volatile: Volatile,
}

fn signature_bytes(sig: &Signature) -> [u8; 64] {
    sig.to_bytes()
}

impl UpdateApplet {
    /// A blank applet (no key, no objects).
    pub fn new() -> UpdateApplet {
        UpdateApplet::default()
    }

    fn update_key(&self) -> Result<HpkePrivateKey, StatusWord> {
        let key = self.state.key.as_ref().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        HpkePrivateKey::from_bytes(&key.secret).map_err(|_| StatusWord::UNKNOWN)
    }

    fn status(&self) -> Status {
        Status {
            last_sequence: self.state.last_sequence,
            has_key: self.state.key.is_some(),
            legacy_static: self.state.legacy_static.is_some(),
            objects: self.state.objects.len() as u16,
        }
    }

    fn get_data(&self, ctx: &Context<'_>, tag: u16) -> Result<Vec<u8>, StatusWord> {
        match tag {
            proto::TAG_STATUS => Ok(self.status().to_bytes().to_vec()),
            proto::TAG_UPDATE_KEY => self
                .state
                .key
                .as_ref()
                .map(|k| k.proof.clone())
                .ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND),
            proto::TAG_ISSUER_CA => ctx
                .card()
                .device
                .issuer_ca()
                .map(<[u8]>::to_vec)
                .ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND),
            proto::TAG_DIRECTORY => {
                let mut out = Vec::new();
                for (name, object) in &self.state.objects {
                    out.push(object.rule);
                    out.push(name.len() as u8);
                    out.extend_from_slice(name);
                }
                Ok(out)
            }
            _ => Err(StatusWord::REFERENCED_DATA_NOT_FOUND),
        }
    }

    fn device_authenticate(
        &mut self,
        ctx: &mut Context<'_>,
        mode: AuthMode,
        challenge: Option<Challenge>,
    ) -> Result<Vec<u8>, StatusWord> {
        if !ctx.security().global_pin_verified {
            return Err(PIN_REQUIRED);
        }
        let answer = match (mode, challenge) {
            (AuthMode::LegacyStatic, None) => {
                let value = self.state.legacy_static.ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
                value.to_vec()
            }
            (AuthMode::Plain, Some(challenge)) => self.signed_auth(ctx, &challenge)?.to_bytes(),
            (AuthMode::Private { server_key }, Some(challenge)) => {
                let server = HpkePublicKey::from_bytes(&server_key)
                    .map_err(|_| StatusWord::INCORRECT_DATA)?;
                let identity = SealedIdentity {
                    card_id: ctx.card().card_id.clone(),
                    auth: self.signed_auth(ctx, &challenge)?,
                };
                hpke::seal(
                    &server,
                    proto::IDENTITY_INFO,
                    &challenge.to_bytes(),
                    &identity.to_bytes(),
                )
                .map_err(|_| StatusWord::UNKNOWN)?
            }
            _ => return Err(StatusWord::INCORRECT_DATA),
        };
        self.volatile.authenticated = true;
        Ok(answer)
    }

    fn signed_auth(
        &self,
        ctx: &Context<'_>,
        challenge: &Challenge,
    ) -> Result<DeviceAuthResponse, StatusWord> {
        let body = proto::auth_body(challenge, self.state.last_sequence);
        let signature = ctx.device_sign(Purpose::DeviceAuthentication, &body)?;
        Ok(DeviceAuthResponse {
            last_sequence: self.state.last_sequence,
            signature: signature_bytes(&signature),
        })
    }

    /// One LOAD PACKAGE segment. Any refusal also ends the device authentication of this
    /// selection, so in a batch of packages the card stops at the first one it refuses: every
    /// later LOAD PACKAGE is `6985` until a new DEVICE AUTHENTICATE, and none of them can apply
    /// past a gap.
    fn load_segment(
        &mut self,
        ctx: &mut Context<'_>,
        segment: u8,
        last: bool,
        data: &[u8],
    ) -> Result<Vec<u8>, StatusWord> {
        let result = self.load_segment_checked(ctx, segment, last, data);
        if result.is_err() {
            self.volatile.authenticated = false;
            self.reset_buffer();
        }
        result
    }

    fn load_segment_checked(
        &mut self,
        ctx: &mut Context<'_>,
        segment: u8,
        last: bool,
        data: &[u8],
    ) -> Result<Vec<u8>, StatusWord> {
        if !ctx.security().global_pin_verified {
            return Err(PIN_REQUIRED);
        }
        if !self.volatile.authenticated {
            return Err(NOT_AUTHENTICATED);
        }
        if segment == 0 {
            self.volatile.buffer.clear();
            self.volatile.next_segment = 0;
        }
        if segment != self.volatile.next_segment {
            self.reset_buffer();
            return Err(StatusWord::INCORRECT_P1P2);
        }
        if self.volatile.buffer.len() + data.len() > MAX_PACKAGE_LEN {
            self.reset_buffer();
            return Err(StatusWord::NOT_ENOUGH_MEMORY);
        }
        self.volatile.buffer.extend_from_slice(data);
        if !last {
            self.volatile.next_segment = segment.wrapping_add(1);
            return Ok(Vec::new());
        }
        let package = std::mem::take(&mut self.volatile.buffer);
        self.reset_buffer();
        self.apply(ctx, &package)
    }

    fn reset_buffer(&mut self) {
        self.volatile.buffer = Vec::new();
        self.volatile.next_segment = 0;
    }

    /// Checks and applies one complete package (or a package wrapped for delivery in the
    /// privacy variant, unwrapped first with the update key); answers the receipt.
    fn apply(&mut self, ctx: &mut Context<'_>, received: &[u8]) -> Result<Vec<u8>, StatusWord> {
        let unwrapped;
        let bytes = match received.strip_prefix(proto::DELIVERY_MAGIC.as_slice()) {
            Some(sealed) => {
                unwrapped = hpke::open(
                    &self.update_key()?,
                    proto::DELIVERY_INFO,
                    proto::DELIVERY_MAGIC,
                    sealed,
                )
                .map_err(|_| UNDECRYPTABLE)?;
                unwrapped.as_slice()
            }
            None => received,
        };
        let package = Package::parse(bytes).map_err(|e| e.status_word())?;
        // 1. The issuer's package-signing key (its certificate chained to the issuer CA when
        //    it was installed at issuance).
        let signer =
            ctx.card().device.package_signing().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let signer = Certificate::from_der(signer.to_vec())
            .and_then(|c| c.info())
            .map_err(|_| StatusWord::UNKNOWN)?
            .public_key;
        let signature = Signature::from_bytes(&package.signature).map_err(|_| SIGNATURE_INVALID)?;
        signer.verify(&package.signed_message(), &signature).map_err(|_| SIGNATURE_INVALID)?;
        // 2. This card.
        if !bool::from(package.card_id.ct_eq(&ctx.card().card_id)) {
            return Err(WRONG_CARD);
        }
        // 3. Sequence: strictly increasing; the last package itself is acknowledged again.
        let digest = sha256(bytes);
        if package.sequence == self.state.last_sequence
            && self.state.last_digest.is_some_and(|d| bool::from(d.ct_eq(&digest)))
        {
            return self.receipt(ctx, Outcome::AlreadyApplied, package.sequence, digest);
        }
        if package.sequence <= self.state.last_sequence {
            return Err(STALE_SEQUENCE);
        }
        // 4. Decrypt (in both modes: a sealed value that this card cannot open is refused
        //    now, not at its first use).
        let info = Package::seal_info(&package.card_id, &package.name);
        let aad = Package::seal_aad(package.sequence, package.mode, package.rule);
        let plain = hpke::open(&self.update_key()?, &info, &aad, &package.sealed)
            .map_err(|_| UNDECRYPTABLE)?;
        if plain.len() > MAX_OBJECT_LEN {
            return Err(StatusWord::NOT_ENOUGH_MEMORY);
        }
        // 5. Apply: the object, the sequence and the digest change together, in the one
        //    commit the runtime makes after `9000`.
        let value = match package.mode {
            Mode::Apply => Value::Plain(plain.to_vec()),
            Mode::Sealed => Value::Sealed { sequence: package.sequence, sealed: package.sealed },
        };
        self.insert_object(package.name, Object { rule: package.rule.code(), value })?;
        self.state.last_sequence = package.sequence;
        self.state.last_digest = Some(digest);
        self.receipt(ctx, Outcome::Applied, package.sequence, digest)
    }

    /// Adds or replaces an object; a new name beyond [`proto::MAX_OBJECTS`] is `6A84`.
    fn insert_object(&mut self, name: Vec<u8>, object: Object) -> Result<(), StatusWord> {
        if !self.state.objects.contains_key(&name) && self.state.objects.len() >= proto::MAX_OBJECTS
        {
            return Err(StatusWord::NOT_ENOUGH_MEMORY);
        }
        self.state.objects.insert(name, object);
        Ok(())
    }

    fn receipt(
        &self,
        ctx: &Context<'_>,
        outcome: Outcome,
        sequence: u64,
        digest: [u8; 32],
    ) -> Result<Vec<u8>, StatusWord> {
        let signature =
            ctx.device_sign(Purpose::DeviceAuthentication, &Receipt::body(sequence, &digest))?;
        Ok(Receipt { outcome, sequence, digest, signature: signature_bytes(&signature) }.to_bytes())
    }

    fn read(&self, ctx: &Context<'_>, name: &[u8]) -> Result<Vec<u8>, StatusWord> {
        let object = self.state.objects.get(name).ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND)?;
        let rule = ReadRule::from_code(object.rule).map_err(|_| StatusWord::UNKNOWN)?;
        if rule == ReadRule::Pin && !ctx.security().global_pin_verified {
            return Err(PIN_REQUIRED);
        }
        match &object.value {
            Value::Plain(v) => Ok(v.clone()),
            Value::Sealed { sequence, sealed } => {
                let info = Package::seal_info(&ctx.card().card_id, name);
                let aad = Package::seal_aad(*sequence, Mode::Sealed, rule);
                let plain: Zeroizing<Vec<u8>> =
                    hpke::open(&self.update_key()?, &info, &aad, sealed)
                        .map_err(|_| UNDECRYPTABLE)?;
                Ok(plain.to_vec())
            }
        }
    }

    fn generate_key(&mut self, ctx: &mut Context<'_>, nonce: &[u8]) -> Result<(), StatusWord> {
        if !proto::POP_NONCE_RANGE.contains(&nonce.len()) {
            return Err(StatusWord::INCORRECT_DATA);
        }
        // A new key would orphan the values kept sealed to the old one.
        if self.state.objects.values().any(|o| matches!(o.value, Value::Sealed { .. })) {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let key = HpkePrivateKey::generate(ctx.rng());
        let public = key.public_key().to_bytes();
        let signature = ctx
            .device_sign(Purpose::DeviceAuthentication, &proto::update_key_body(nonce, &public))
            .map_err(|_| StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let proof = [&public[..], &signature_bytes(&signature)].concat();
        self.state.key =
            Some(UpdateKey { secret: key.to_bytes().to_vec(), public: public.to_vec(), proof });
        Ok(())
    }
}

impl Applet for UpdateApplet {
    fn aid(&self) -> &'static [u8] {
        AID
    }

    fn name(&self) -> &'static str {
        "update"
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

    fn clear_volatile(&mut self) {
        self.volatile = Volatile::default();
    }

    fn select(&mut self, _ctx: &mut Context<'_>) -> Result<Vec<u8>, StatusWord> {
        Ok(fci(AID))
    }

    fn call(&mut self, ctx: &mut Context<'_>, cmd: &Command) -> Result<Response, StatusWord> {
        if cmd.cla & 0x80 == 0 {
            return Err(StatusWord::CLA_NOT_SUPPORTED);
        }
        let command = UpdateCommand::parse(cmd).map_err(|e| {
            if cmd.ins == proto::INS_LOAD_PACKAGE {
                self.reset_buffer();
            }
            e.status_word()
        })?;
        let answer = match command {
            UpdateCommand::GetData(tag) => self.get_data(ctx, tag),
            UpdateCommand::DeviceAuthenticate { mode, challenge } => {
                self.device_authenticate(ctx, mode, challenge)
            }
            UpdateCommand::LoadPackage { segment, last, data } => {
                self.load_segment(ctx, segment, last, &data)
            }
            UpdateCommand::ReadObject(name) => self.read(ctx, &name),
        };
        answer.map(Response::ok)
    }

    fn personalize(
        &mut self,
        ctx: &mut Context<'_>,
        dgi: u16,
        data: &[u8],
    ) -> Result<(), StatusWord> {
        match dgi {
            proto::DGI_GENERATE_KEY => self.generate_key(ctx, data),
            proto::DGI_OBJECT => {
                let def = ObjectDefinition::parse(data).map_err(|_| StatusWord::INCORRECT_DATA)?;
                self.insert_object(
                    def.name,
                    Object { rule: def.rule.code(), value: Value::Plain(def.value) },
                )
            }
            proto::DGI_LEGACY_STATIC => {
                let value: [u8; STATIC_AUTH_LEN] =
                    data.try_into().map_err(|_| StatusWord::INCORRECT_DATA)?;
                self.state.legacy_static = Some(value);
                Ok(())
            }
            _ => Err(StatusWord::REFERENCED_DATA_NOT_FOUND),
        }
    }

    fn tear_scenarios(&self) -> Vec<TearScenario> {
        scenarios::all()
    }
}
