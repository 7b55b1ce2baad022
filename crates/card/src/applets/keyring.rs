//! The `keyring` applet: hierarchical authentication-key renewal (seed 001, DESIGN.md 5).
//!
//! Internal slots `1..=M` (the card proves itself with them) and external slots `1..=N` (the
//! server proves itself with them), each with a key, a version counter and a key check value;
//! symmetric (AES-128, CMAC) or asymmetric (P-256, ECDSA) per card, set at personalisation.
//! The APDUs and cryptogram inputs are in [`tessera_proto::keyring`]; `docs/keyring.md` has the
//! message sequences.
//!
//! - INTERNAL AUTHENTICATE (slot in P2) answers a proof over the server challenge and starts a
//!   mutual authentication; any earlier one (and its session) ends.
//! - EXTERNAL AUTHENTICATE consumes the challenge of the last GET CHALLENGE (one attempt per
//!   challenge, whatever the outcome) and the pending INTERNAL AUTHENTICATE; on success the
//!   pair `(i, j)` is authenticated and both slots are recorded as proven in this session.
//! - RENEW consumes the authentication (one RENEW per mutual authentication), checks the rules
//!   of [`rules`], the server's proof over the command bound to both challenges, and that no
//!   random was used before; then derives (symmetric) or generates (asymmetric) the new keys
//!   under the authenticating internal key, stores them with their new versions in the
//!   command's one transaction, and answers only check and confirmation values.
//! - After mutual authentication with the bottom pair `(M, N)`, both sides derive SCP03 static
//!   keys from it and both challenges; INITIALIZE UPDATE / EXTERNAL AUTHENTICATE then open an
//!   SCP03 session (security level 33 required) in which secured commands run.

use serde::{Deserialize, Serialize};
use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::ecdh::EphemeralSecret;
use tessera_crypto::ecdsa::{PublicKey, Signature, SigningKey};
use tessera_crypto::kdf::{self, Label};
use tessera_crypto::keys::{AesKey, AesKeyLen};
use tessera_crypto::mac;
use tessera_crypto::scp03::{
    CardChallengeSource, CardConfig, ExternalAuthOutcome, INS_EXTERNAL_AUTHENTICATE,
    INS_INITIALIZE_UPDATE, Scp03Card, SecurityLevel, StaticKeys, has_secure_messaging,
    key_check_value,
};
use tessera_proto::keyring::{
    self as proto, AES_KEY_LEN, CHALLENGE_LEN, CONFIRMATION_LEN, ExternalAuthenticate,
    InternalAuthResponse, KeyInfo, KeyKind, KeyringCommand, Layout, Mode, PRIVATE_KEY_LEN,
    PUBLIC_KEY_LEN, RANDOM_LEN, RenewCommand, RenewResponse, RenewedKey, SecurityStatus, SlotInfo,
};
use zeroize::Zeroize;

use crate::applet::{Applet, Context, Persistent, StateError, TearScenario, fci};

pub mod rules;
pub mod scenarios;

pub use tessera_proto::keyring::AID;

/// Key version number of a keyring session's derived SCP03 key set.
pub const SESSION_KVN: u8 = 0x01;
/// The SCP03 level a keyring session must run at (C-MAC, C-DEC, R-MAC, R-ENC).
pub const SESSION_LEVEL: SecurityLevel = SecurityLevel::Full;

/// One slot's key: AES key, P-256 private scalar (asymmetric internal) or the server's public
/// key (asymmetric external), with its version, check value and the random that made it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SlotKey {
    key: Vec<u8>,
    version: u32,
    kcv: [u8; 3],
    /// The renewal random that produced this key (refused if offered again).
    random: Option<[u8; RANDOM_LEN]>,
}

impl Drop for SlotKey {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

/// The keyring's persistent state.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct KeyringState {
    /// `mode || M || N`, once personalised.
    config: Option<[u8; 3]>,
    internal: Vec<Option<SlotKey>>,
    external: Vec<Option<SlotKey>>,
}

/// An INTERNAL AUTHENTICATE waiting for its EXTERNAL AUTHENTICATE.
struct PendingInternal {
    slot: u8,
    server_challenge: [u8; CHALLENGE_LEN],
    ephemeral: Option<EphemeralSecret>,
    ephemeral_public: Vec<u8>,
}

/// A completed mutual authentication.
struct Authenticated {
    internal: u8,
    external: u8,
    server_challenge: [u8; CHALLENGE_LEN],
    card_challenge: [u8; CHALLENGE_LEN],
    /// The derived SCP03 key set, after authentication with the bottom pair.
    session_keys: Option<StaticKeys>,
}

#[derive(Default)]
struct Volatile {
    pending: Option<PendingInternal>,
    auth: Option<Authenticated>,
    proven_internal: u16,
    proven_external: u16,
    scp: Scp03Card,
}

/// The keyring applet.
#[derive(Default)]
pub struct Keyring {
    state: Persistent<KeyringState>,
    volatile: Volatile,
}

/// An operational keyring: layout and every slot present.
struct Ready<'a> {
    layout: Layout,
    internal: Vec<&'a SlotKey>,
    external: Vec<&'a SlotKey>,
}

impl Ready<'_> {
    fn slot(&self, kind: KeyKind, slot: u8) -> Result<&SlotKey, StatusWord> {
        let list = match kind {
            KeyKind::Internal => &self.internal,
            KeyKind::External => &self.external,
        };
        list.get(usize::from(slot).wrapping_sub(1))
            .copied()
            .ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND)
    }
}

fn aes(key: &[u8]) -> Result<AesKey, StatusWord> {
    AesKey::from_slice(key).map_err(|_| StatusWord::UNKNOWN)
}

fn signing_key(key: &[u8]) -> Result<SigningKey, StatusWord> {
    SigningKey::from_bytes(key).map_err(|_| StatusWord::UNKNOWN)
}

/// True when `proof` is a valid signature over `message` by the public key `public` (SEC1).
fn signature_verifies(public: &[u8], message: &[u8], proof: &[u8]) -> bool {
    match (PublicKey::from_sec1_bytes(public), Signature::from_bytes(proof)) {
        (Ok(key), Ok(signature)) => key.verify(message, &signature).is_ok(),
        _ => false,
    }
}

/// `6300`: a cryptogram or signature did not verify.
const VERIFICATION_FAILED: StatusWord = StatusWord(0x6300);

/// The check value of a slot key as stored.
fn check_value(mode: Mode, kind: KeyKind, key: &[u8]) -> Result<[u8; 3], StatusWord> {
    Ok(match (mode, kind) {
        (Mode::Symmetric, _) => key_check_value(&aes(key)?),
        (Mode::Asymmetric, KeyKind::Internal) => {
            proto::public_key_check_value(&signing_key(key)?.public_key().to_sec1_bytes())
        }
        (Mode::Asymmetric, KeyKind::External) => proto::public_key_check_value(key),
    })
}

impl Keyring {
    /// A keyring awaiting personalisation.
    pub fn new() -> Keyring {
        Keyring::default()
    }

    fn layout(&self) -> Option<Layout> {
        let [mode, m, n] = self.state.config?;
        Layout::new(Mode::from_code(mode).ok()?, m, n).ok()
    }

    fn ready(&self) -> Result<Ready<'_>, StatusWord> {
        let layout = self.layout().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        fn all(v: &[Option<SlotKey>]) -> Option<Vec<&SlotKey>> {
            v.iter().map(|s| s.as_ref()).collect()
        }
        let internal = all(&self.state.internal).ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let external = all(&self.state.external).ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        Ok(Ready { layout, internal, external })
    }

    /// Ends any authentication, pending or complete, and the session built on it.
    fn reset_auth(&mut self) {
        self.volatile.pending = None;
        self.volatile.auth = None;
        self.volatile.scp.close();
    }

    fn internal_authenticate(
        &mut self,
        ctx: &mut Context<'_>,
        slot: u8,
        server_challenge: [u8; CHALLENGE_LEN],
    ) -> Result<Vec<u8>, StatusWord> {
        self.reset_auth();
        let card_id = ctx.card().card_id.clone();
        let ready = self.ready()?;
        let key = ready.slot(KeyKind::Internal, slot)?;
        let (ephemeral, ephemeral_public) = match ready.layout.mode {
            Mode::Symmetric => (None, Vec::new()),
            Mode::Asymmetric => {
                let e = EphemeralSecret::generate(ctx.rng());
                let public = e.public_key().to_sec1_bytes().to_vec();
                (Some(e), public)
            }
        };
        let message = proto::card_auth_message(
            &card_id,
            slot,
            key.version,
            &server_challenge,
            &ephemeral_public,
        );
        let proof = match ready.layout.mode {
            Mode::Symmetric => mac::cmac(&aes(&key.key)?, &[&message]).to_vec(),
            Mode::Asymmetric => signing_key(&key.key)?.sign(&message).to_bytes().to_vec(),
        };
        let response = InternalAuthResponse {
            version: key.version,
            ephemeral: ephemeral_public.as_slice().try_into().ok(),
            proof,
        };
        self.volatile.pending =
            Some(PendingInternal { slot, server_challenge, ephemeral, ephemeral_public });
        Ok(response.to_bytes())
    }

    fn external_authenticate(
        &mut self,
        ctx: &mut Context<'_>,
        ea: ExternalAuthenticate,
    ) -> Result<(), StatusWord> {
        // One attempt per challenge and per INTERNAL AUTHENTICATE, whatever happens next.
        let challenge = ctx.take_challenge();
        let pending = self.volatile.pending.take();
        self.volatile.auth = None;
        self.volatile.scp.close();
        let card_challenge: [u8; CHALLENGE_LEN] = challenge
            .as_deref()
            .and_then(|c| c.try_into().ok())
            .ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let pending = pending.ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let card_id = ctx.card().card_id.clone();
        let ready = self.ready()?;
        let key = ready.slot(KeyKind::External, ea.slot)?;
        let server_ephemeral = ea.ephemeral.map(|e| e.to_vec()).unwrap_or_default();
        let message = proto::server_auth_message(
            &card_id,
            pending.slot,
            ea.slot,
            key.version,
            &pending.server_challenge,
            &card_challenge,
            &pending.ephemeral_public,
            &server_ephemeral,
        );
        let verified = match ready.layout.mode {
            Mode::Symmetric => mac::verify(&aes(&key.key)?, &[&message], &ea.proof).is_ok(),
            Mode::Asymmetric => signature_verifies(&key.key, &message, &ea.proof),
        };
        if !verified {
            return Err(VERIFICATION_FAILED);
        }
        let bottom =
            pending.slot == ready.layout.internal_slots && ea.slot == ready.layout.external_slots;
        let session_keys = if bottom {
            let kdf_key = match ready.layout.mode {
                Mode::Symmetric => {
                    let internal = aes(&ready.slot(KeyKind::Internal, pending.slot)?.key)?;
                    let mix = mac::cmac(
                        &aes(&key.key)?,
                        &[&proto::session_mix_message(
                            &card_id,
                            &pending.server_challenge,
                            &card_challenge,
                        )],
                    );
                    (internal, mix.to_vec())
                }
                Mode::Asymmetric => {
                    let peer = PublicKey::from_sec1_bytes(&server_ephemeral)
                        .map_err(|_| StatusWord::INCORRECT_DATA)?;
                    let ephemeral = pending.ephemeral.ok_or(StatusWord::UNKNOWN)?;
                    (ephemeral.diffie_hellman(&peer).extract(None), Vec::new())
                }
            };
            let context = proto::session_context(
                &card_id,
                &pending.server_challenge,
                &card_challenge,
                &kdf_key.1,
            );
            Some(session_static_keys(&kdf_key.0, &context)?)
        } else {
            None
        };
        self.volatile.proven_internal |= 1 << (pending.slot - 1);
        self.volatile.proven_external |= 1 << (ea.slot - 1);
        self.volatile.auth = Some(Authenticated {
            internal: pending.slot,
            external: ea.slot,
            server_challenge: pending.server_challenge,
            card_challenge,
            session_keys,
        });
        Ok(())
    }

    fn renew(&mut self, ctx: &mut Context<'_>, renew: RenewCommand) -> Result<Vec<u8>, StatusWord> {
        // One RENEW per mutual authentication.
        let auth = self.volatile.auth.take().ok_or(StatusWord::SECURITY_STATUS_NOT_SATISFIED)?;
        self.volatile.scp.close();
        let card_id = ctx.card().card_id.clone();
        let ready = self.ready()?;
        let mode = ready.layout.mode;
        let targets = renew.form.targets(&ready.layout).map_err(|e| e.status_word())?;
        rules::authorize(&targets, auth.internal, auth.external)?;

        // The server's proof, under the external key it authenticated with.
        let message = proto::renew_command_message(
            &card_id,
            &auth.server_challenge,
            &auth.card_challenge,
            renew.form.code(),
            &renew.body(),
        );
        let server_key = &ready.slot(KeyKind::External, auth.external)?.key;
        let verified = match mode {
            Mode::Symmetric => mac::verify(&aes(server_key)?, &[&message], &renew.proof).is_ok(),
            Mode::Asymmetric => signature_verifies(server_key, &message, &renew.proof),
        };
        if !verified {
            return Err(VERIFICATION_FAILED);
        }

        // No random twice: within the command, nor one that made a current key.
        let randoms: Vec<[u8; RANDOM_LEN]> =
            renew.entries.iter().filter_map(|e| e.random).collect();
        let used = |r: &[u8; RANDOM_LEN]| {
            ready.internal.iter().chain(ready.external.iter()).any(|s| s.random.as_ref() == Some(r))
        };
        for (index, r) in randoms.iter().enumerate() {
            if used(r) || randoms[..index].contains(r) {
                return Err(StatusWord::INCORRECT_DATA);
            }
        }

        let upper = &ready.slot(KeyKind::Internal, auth.internal)?.key;
        let mut updates: Vec<(KeyKind, u8, SlotKey)> = Vec::with_capacity(targets.len());
        let mut report: Vec<RenewedKey> = Vec::with_capacity(targets.len());
        for (&(kind, slot), entry) in targets.iter().zip(&renew.entries) {
            let version = ready
                .slot(kind, slot)?
                .version
                .checked_add(1)
                .ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
            let mut renewed = RenewedKey {
                kind,
                slot,
                version,
                kcv: [0; 3],
                confirmation: None,
                public_key: None,
                possession: None,
            };
            let (key, random) = match mode {
                Mode::Symmetric => {
                    let (label, random) = match entry.random {
                        Some(r) => (Label::KEYRING_RENEWAL, r),
                        // The single-random variant's second key: the first random, another label.
                        None => (
                            Label::KEYRING_RENEWAL_SECOND,
                            renew
                                .entries
                                .first()
                                .and_then(|e| e.random)
                                .ok_or(StatusWord::INCORRECT_DATA)?,
                        ),
                    };
                    let context = proto::derivation_context(&card_id, kind, slot, version, &random);
                    let new = kdf::derive_key(&aes(upper)?, label, &context, AesKeyLen::Aes128);
                    let mut confirmation = [0u8; CONFIRMATION_LEN];
                    kdf::derive(
                        &new,
                        Label::KEYRING_CONFIRMATION,
                        &proto::confirmation_context(
                            &card_id,
                            kind,
                            slot,
                            version,
                            &auth.server_challenge,
                            &auth.card_challenge,
                        ),
                        &mut confirmation,
                    )
                    .map_err(|_| StatusWord::UNKNOWN)?;
                    renewed.kcv = key_check_value(&new);
                    renewed.confirmation = Some(confirmation);
                    (new.expose_secret().to_vec(), entry.random)
                }
                Mode::Asymmetric => match kind {
                    KeyKind::Internal => {
                        let new = SigningKey::generate(ctx.rng());
                        let public = new.public_key().to_sec1_bytes();
                        let possession = new.sign(&proto::possession_message(
                            &card_id,
                            slot,
                            version,
                            &public,
                            &auth.server_challenge,
                            &auth.card_challenge,
                        ));
                        renewed.kcv = proto::public_key_check_value(&public);
                        renewed.public_key = Some(public);
                        renewed.possession = Some(possession.to_bytes());
                        (new.to_bytes().to_vec(), entry.random)
                    }
                    KeyKind::External => {
                        let public = entry.public_key.ok_or(StatusWord::INCORRECT_DATA)?;
                        PublicKey::from_sec1_bytes(&public)
                            .map_err(|_| StatusWord::INCORRECT_DATA)?;
                        renewed.kcv = proto::public_key_check_value(&public);
                        (public.to_vec(), entry.random)
                    }
                },
            };
            updates.push((kind, slot, SlotKey { key, version, kcv: renewed.kcv, random }));
            report.push(renewed);
        }
        let mut response = RenewResponse { keys: report, signature: None };
        if mode == Mode::Asymmetric {
            let message = proto::renew_response_message(
                &card_id,
                &auth.server_challenge,
                &auth.card_challenge,
                &response.body(),
            );
            response.signature = Some(signing_key(upper)?.sign(&message).to_bytes());
        }
        drop(ready);
        // All new keys and versions land in the state together; the runtime commits them in
        // this command's one transaction (or none of them, on any failure or power cut).
        for (kind, slot, key) in updates {
            let list = match kind {
                KeyKind::Internal => &mut self.state.internal,
                KeyKind::External => &mut self.state.external,
            };
            let entry =
                list.get_mut(usize::from(slot) - 1).ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND)?;
            *entry = Some(key);
        }
        Ok(response.to_bytes())
    }

    fn get_data(&self, tag: u16) -> Result<Vec<u8>, StatusWord> {
        match tag {
            proto::TAG_KEY_INFO => {
                let ready = self.ready()?;
                let mut slots = Vec::new();
                for (kind, list) in
                    [(KeyKind::Internal, &ready.internal), (KeyKind::External, &ready.external)]
                {
                    for (index, s) in list.iter().enumerate() {
                        slots.push(SlotInfo {
                            kind,
                            slot: index as u8 + 1,
                            version: s.version,
                            kcv: s.kcv,
                        });
                    }
                }
                Ok(KeyInfo { layout: ready.layout, slots }.to_bytes())
            }
            proto::TAG_SECURITY_STATUS => Ok(SecurityStatus {
                proven_internal: self.volatile.proven_internal,
                proven_external: self.volatile.proven_external,
                authenticated: self.volatile.auth.as_ref().map(|a| (a.internal, a.external)),
                session_level: self.volatile.scp.security_level().map_or(0, |l| l.to_byte()),
            }
            .to_bytes()),
            _ => Err(StatusWord::REFERENCED_DATA_NOT_FOUND),
        }
    }

    fn initialize_update(
        &mut self,
        ctx: &mut Context<'_>,
        cmd: &Command,
    ) -> Result<Response, StatusWord> {
        self.volatile.scp.close();
        let keys = self
            .volatile
            .auth
            .as_ref()
            .and_then(|a| a.session_keys.as_ref())
            .ok_or(StatusWord::SECURITY_STATUS_NOT_SATISFIED)?
            .clone();
        let mut diversification_data = [0u8; 10];
        let id = &ctx.card().card_id;
        let n = id.len().min(10);
        diversification_data[..n].copy_from_slice(&id[..n]);
        let config = CardConfig {
            keys: &keys,
            diversification_data,
            r_mac: true,
            r_enc: true,
            challenge: CardChallengeSource::Random,
        };
        let outcome = self
            .volatile
            .scp
            .initialize_update(cmd, &config, ctx.rng())
            .map_err(|e| e.status_word())?;
        Ok(outcome.response)
    }

    fn scp_external_authenticate(&mut self, cmd: &Command) -> Result<Response, StatusWord> {
        if !self.volatile.scp.awaiting_external_authenticate() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        // Only level 33 opens a keyring session. The derived keys are single-session and
        // 128-bit random to an outsider, so no persistent failure counter is needed: a failure
        // ends the handshake and a new one needs a new mutual authentication.
        if cmd.p1 != SESSION_LEVEL.to_byte() {
            self.reset_auth();
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        let outcome = self.volatile.scp.external_authenticate(cmd, 0, u32::MAX);
        match outcome {
            Ok(ExternalAuthOutcome::Authenticated(_)) => Ok(Response::ok(Vec::new())),
            Ok(other) => {
                self.reset_auth();
                Ok(other.response())
            }
            Err(e) => {
                self.reset_auth();
                Err(e.status_word())
            }
        }
    }

    fn dispatch(
        &mut self,
        ctx: &mut Context<'_>,
        cmd: &Command,
        secured: bool,
    ) -> Result<Response, StatusWord> {
        let layout = self.layout().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        // Every cryptogram binds the card id: without one (ISD not personalised) nothing runs.
        if ctx.card().card_id.is_empty() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        match KeyringCommand::parse(cmd, &layout)? {
            KeyringCommand::InternalAuthenticate { slot, challenge } => {
                if secured {
                    // A new authentication starts outside any session.
                    return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
                }
                self.internal_authenticate(ctx, slot, challenge).map(Response::ok)
            }
            KeyringCommand::ExternalAuthenticate(ea) => {
                if secured {
                    return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
                }
                self.external_authenticate(ctx, ea).map(|()| Response::ok(Vec::new()))
            }
            KeyringCommand::Renew(renew) => self.renew(ctx, renew).map(Response::ok),
            KeyringCommand::GetData(tag) => self.get_data(tag).map(Response::ok),
        }
    }

    fn personalize_slot(&mut self, kind: KeyKind, data: &[u8]) -> Result<(), StatusWord> {
        let layout = self.layout().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let (slot, version, key) =
            proto::parse_key_dgi(data).map_err(|_| StatusWord::INCORRECT_DATA)?;
        if !layout.has(kind, slot) {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let expected = match (layout.mode, kind) {
            (Mode::Symmetric, _) => AES_KEY_LEN,
            (Mode::Asymmetric, KeyKind::Internal) => PRIVATE_KEY_LEN,
            (Mode::Asymmetric, KeyKind::External) => PUBLIC_KEY_LEN,
        };
        if key.len() != expected {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let valid = match (layout.mode, kind) {
            (Mode::Symmetric, _) => true,
            (Mode::Asymmetric, KeyKind::Internal) => SigningKey::from_bytes(key).is_ok(),
            (Mode::Asymmetric, KeyKind::External) => PublicKey::from_sec1_bytes(key).is_ok(),
        };
        if !valid {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let kcv = check_value(layout.mode, kind, key)?;
        let list = match kind {
            KeyKind::Internal => &mut self.state.internal,
            KeyKind::External => &mut self.state.external,
        };
        let entry = list.get_mut(usize::from(slot) - 1).ok_or(StatusWord::INCORRECT_DATA)?;
        if entry.is_some() {
            // Written once: afterwards keys change only by RENEW.
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        *entry = Some(SlotKey { key: key.to_vec(), version, kcv, random: None });
        Ok(())
    }
}

/// The SCP03 static keys of a keyring session, from a KDF key and the session context.
fn session_static_keys(kdf_key: &AesKey, context: &[u8]) -> Result<StaticKeys, StatusWord> {
    let derive = |label| kdf::derive_key(kdf_key, label, context, AesKeyLen::Aes128);
    StaticKeys::new(
        derive(Label::KEYRING_SCP03_ENC),
        derive(Label::KEYRING_SCP03_MAC),
        derive(Label::KEYRING_SCP03_DEK),
        SESSION_KVN,
    )
    .map_err(|_| StatusWord::UNKNOWN)
}

impl Applet for Keyring {
    fn aid(&self) -> &'static [u8] {
        AID
    }

    fn name(&self) -> &'static str {
        "keyring"
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
        // FCI: 6F { 84 AID }.
        Ok(fci(AID))
    }

    fn call(&mut self, ctx: &mut Context<'_>, cmd: &Command) -> Result<Response, StatusWord> {
        let gp = cmd.cla & 0x80 != 0;
        if gp && cmd.ins == INS_INITIALIZE_UPDATE && !has_secure_messaging(cmd) {
            return self.initialize_update(ctx, cmd);
        }
        if gp && cmd.ins == INS_EXTERNAL_AUTHENTICATE && has_secure_messaging(cmd) {
            return self.scp_external_authenticate(cmd);
        }
        if has_secure_messaging(cmd) {
            if self.volatile.scp.security_level().is_none() {
                return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
            }
            let plain = match self.volatile.scp.unwrap_command(cmd) {
                Ok(plain) => plain,
                Err(e) => {
                    // A MAC failure ends the session and the authentication behind it.
                    self.reset_auth();
                    return Err(e.status_word());
                }
            };
            let response = match self.dispatch(ctx, &plain, true) {
                Ok(r) => r,
                Err(sw) => Response::status(sw),
            };
            return self.volatile.scp.wrap_response(&response).map_err(|e| e.status_word());
        }
        self.dispatch(ctx, cmd, false)
    }

    fn personalize(
        &mut self,
        _ctx: &mut Context<'_>,
        dgi: u16,
        data: &[u8],
    ) -> Result<(), StatusWord> {
        match dgi {
            proto::DGI_CONFIG => {
                if self.state.config.is_some() {
                    return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
                }
                let layout = Layout::from_config(data).map_err(|_| StatusWord::INCORRECT_DATA)?;
                self.state.config = Some(layout.to_config());
                self.state.internal = vec![None; usize::from(layout.internal_slots)];
                self.state.external = vec![None; usize::from(layout.external_slots)];
                Ok(())
            }
            proto::DGI_INTERNAL_KEY => self.personalize_slot(KeyKind::Internal, data),
            proto::DGI_EXTERNAL_KEY => self.personalize_slot(KeyKind::External, data),
            _ => Err(StatusWord::REFERENCED_DATA_NOT_FOUND),
        }
    }

    fn tear_scenarios(&self) -> Vec<TearScenario> {
        scenarios::all()
    }
}
