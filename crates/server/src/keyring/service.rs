//! The keyring service: issuance, mutual authentication, renewal with two-phase commit,
//! resynchronisation, and the SCP03 session with the bottom pair.
//!
//! A sync of one card ([`KeyringService::sync`]) runs, over a [`KeyringLink`]:
//!
//! 1. **Resynchronisation of an interrupted renewal.** A pending renewal (sent, never
//!    confirmed: lost response, power cut, server crash) is run again, with fresh randoms,
//!    from the pair that authenticated it, which that renewal cannot have changed. Whatever
//!    the card holds (old or new keys of the renewed slots), afterwards both sides agree.
//! 2. **Scheduled renewal.** The planner ([`super::policy`]) picks what is due.
//! 3. **Session.** Mutual authentication with the bottom pair `(M, N)`, SCP03 session keys
//!    derived from it and both challenges, a session at level 33, and a secured GET DATA whose
//!    versions and check values must match the server's records.
//!
//! Every legitimate interruption leaves a pending renewal (phase one is saved before RENEW
//! leaves), so a disagreement that no pending renewal explains means the card is not the one
//! the records describe: a restored old image, or a copy. The card is then **suspended**; an
//! administrator either resynchronises it ([`KeyringService::resynchronise`]: walk up the
//! levels until a pair authenticates, renew everything below it; re-issue when even the root
//! pair fails) or re-issues it. Healing such a card automatically would hand a copied image,
//! which holds the upper keys too, the renewed hierarchy.

use subtle::ConstantTimeEq;
use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::ecdh::EphemeralSecret;
use tessera_crypto::ecdsa::{PublicKey, Signature, SigningKey};
use tessera_crypto::kdf::{self, Label};
use tessera_crypto::keys::{AesKey, AesKeyLen};
use tessera_crypto::mac;
use tessera_crypto::rng::Rng;
use tessera_crypto::scp03::{Scp03Host, SecurityLevel, StaticKeys, key_check_value};
use tessera_proto::keyring::{
    self as proto, CHALLENGE_LEN, CONFIRMATION_LEN, ExternalAuthenticate, InternalAuthResponse,
    KeyInfo, KeyKind, KeyringLink, Layout, Mode, RANDOM_LEN, RenewCommand, RenewEntry, RenewForm,
    RenewResponse, RenewedKey,
};
use zeroize::Zeroizing;

use super::KeyringError;
use super::policy::{self, Plan, RenewalPolicy};
use super::store::{CardKeys, KeyringStore, PendingKey, PendingRenewal, SlotRecord};

/// Key version number of a keyring session's derived SCP03 key set (as on the card).
pub const SESSION_KVN: u8 = 0x01;
/// The SCP03 level of a keyring session.
pub const SESSION_LEVEL: SecurityLevel = SecurityLevel::Full;

/// How a sync ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Card and server agree; a session with the bottom pair was opened.
    InAgreement,
    /// The root is compromised or nothing authenticates: re-issue the card.
    NeedsReissue,
    /// The card holds other keys than the server's records and no interrupted renewal
    /// explains it: a restored old image, or a copy of the card. Syncs stop until an
    /// administrator either resynchronises ([`KeyringService::resynchronise`]) or re-issues.
    Suspended,
}

/// What a sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// The outcome.
    pub outcome: SyncOutcome,
    /// An interrupted renewal or a disagreement was repaired from an upper level.
    pub resynchronised: bool,
    /// The RENEWs run, in order.
    pub renewals: Vec<Plan>,
    /// The card's key information, read inside the session (when in agreement).
    pub card_keys: Option<KeyInfo>,
}

/// One slot of [`KeyringService::status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotStatus {
    /// Internal or external.
    pub kind: KeyKind,
    /// The slot.
    pub slot: u8,
    /// The committed version.
    pub version: u32,
    /// The version of an unconfirmed renewal of this slot, if any.
    pub pending_version: Option<u32>,
}

/// A completed mutual authentication, server side.
struct Authenticated {
    internal: u8,
    external: u8,
    server_challenge: [u8; CHALLENGE_LEN],
    card_challenge: [u8; CHALLENGE_LEN],
    session_keys: Option<StaticKeys>,
}

/// An authentication attempt's failure: the keys disagree, or something else went wrong.
enum AuthFailure {
    Mismatch,
    Error(KeyringError),
}

impl From<KeyringError> for AuthFailure {
    fn from(e: KeyringError) -> Self {
        AuthFailure::Error(e)
    }
}

/// An open SCP03 session with a card's keyring, keys derived from the bottom pair.
pub struct KeyringSession<'a> {
    link: &'a mut dyn KeyringLink,
    scp: Scp03Host,
}

impl std::fmt::Debug for KeyringSession<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyringSession").field("scp", &self.scp).finish_non_exhaustive()
    }
}

impl KeyringSession<'_> {
    /// Sends a command through the session (C-MAC, C-DEC), returns the verified, decrypted
    /// response.
    pub fn transmit(&mut self, cmd: &Command) -> Result<Response, KeyringError> {
        let wrapped = self.scp.wrap_command(cmd)?;
        let r = self.link.exchange(&wrapped)?;
        Ok(self.scp.unwrap_response(&r)?)
    }

    /// The card's key information, read through the session.
    pub fn key_info(&mut self) -> Result<KeyInfo, KeyringError> {
        let r = self.transmit(&proto::get_data(proto::TAG_KEY_INFO))?;
        expect_ok("GET DATA", &r)?;
        Ok(KeyInfo::parse(&r.data)?)
    }
}

fn expect_ok(what: &'static str, r: &Response) -> Result<(), KeyringError> {
    if r.sw == StatusWord::SUCCESS { Ok(()) } else { Err(KeyringError::Refused { what, sw: r.sw }) }
}

fn aes(secret: &[u8]) -> Result<AesKey, KeyringError> {
    AesKey::from_slice(secret).map_err(|_| KeyringError::Corrupt("AES key"))
}

fn signing_key(secret: &[u8]) -> Result<SigningKey, KeyringError> {
    SigningKey::from_bytes(secret).map_err(|_| KeyringError::Corrupt("private key"))
}

fn verify_signature(public: &[u8], message: &[u8], signature: &[u8]) -> bool {
    match (PublicKey::from_sec1_bytes(public), Signature::from_bytes(signature)) {
        (Ok(k), Ok(s)) => k.verify(message, &s).is_ok(),
        _ => false,
    }
}

/// The SCP03 static keys of a keyring session (the card derives the same).
fn session_static_keys(kdf_key: &AesKey, context: &[u8]) -> Result<StaticKeys, KeyringError> {
    let derive = |label| kdf::derive_key(kdf_key, label, context, AesKeyLen::Aes128);
    Ok(StaticKeys::new(
        derive(Label::KEYRING_SCP03_ENC),
        derive(Label::KEYRING_SCP03_MAC),
        derive(Label::KEYRING_SCP03_DEK),
        SESSION_KVN,
    )?)
}

/// The service: a store, the issuer's policy and a random generator.
pub struct KeyringService<S> {
    store: S,
    policy: RenewalPolicy,
    rng: Box<dyn Rng + Send>,
}

impl<S> std::fmt::Debug for KeyringService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyringService").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl<S: KeyringStore> KeyringService<S> {
    /// A service over `store` with `policy`, taking randomness from `rng`.
    pub fn new(store: S, policy: RenewalPolicy, rng: Box<dyn Rng + Send>) -> Self {
        Self { store, policy, rng }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, to change (tests play crashes with it).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Gives the store back.
    pub fn into_store(self) -> S {
        self.store
    }

    fn load(&self, card_id: &[u8]) -> Result<CardKeys, KeyringError> {
        self.store.load(card_id)?.ok_or(KeyringError::UnknownCard)
    }

    fn random<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        self.rng.fill_random(&mut out);
        out
    }

    /// Generates the keys of a new card (¶0035, ¶0061): every internal and external key at
    /// version 1, recorded; returns the keyring's personalisation data groups for the issuer
    /// to send through the ISD (STORE DATA after INSTALL [for personalization]).
    pub fn issue(
        &mut self,
        card_id: &[u8],
        layout: Layout,
        now: u64,
    ) -> Result<Vec<(u16, Vec<u8>)>, KeyringError> {
        if self.store.load(card_id)?.is_some() {
            return Err(KeyringError::AlreadyIssued);
        }
        let mut groups = vec![(proto::DGI_CONFIG, layout.to_config().to_vec())];
        let mut records = |kind: KeyKind, count: u8, groups: &mut Vec<(u16, Vec<u8>)>| {
            let dgi = match kind {
                KeyKind::Internal => proto::DGI_INTERNAL_KEY,
                KeyKind::External => proto::DGI_EXTERNAL_KEY,
            };
            let mut out = Vec::new();
            for slot in 1..=count {
                let (card_key, record) = match layout.mode {
                    Mode::Symmetric => {
                        let key = AesKey::generate(AesKeyLen::Aes128, &mut *self.rng);
                        let kcv = key_check_value(&key);
                        let secret = key.expose_secret().to_vec();
                        (secret.clone(), SlotRecord { secret, version: 1, kcv, renewed_at: now })
                    }
                    Mode::Asymmetric => {
                        let pair = SigningKey::generate(&mut *self.rng);
                        let public = pair.public_key().to_sec1_bytes();
                        let kcv = proto::public_key_check_value(&public);
                        match kind {
                            // The card gets the private key, the server keeps the public one.
                            KeyKind::Internal => (
                                pair.to_bytes().to_vec(),
                                SlotRecord {
                                    secret: public.to_vec(),
                                    version: 1,
                                    kcv,
                                    renewed_at: now,
                                },
                            ),
                            // The card gets the public key, the server keeps the private one.
                            KeyKind::External => (
                                public.to_vec(),
                                SlotRecord {
                                    secret: pair.to_bytes().to_vec(),
                                    version: 1,
                                    kcv,
                                    renewed_at: now,
                                },
                            ),
                        }
                    }
                };
                groups.push((dgi, proto::key_dgi_data(slot, 1, &card_key)));
                out.push(record);
            }
            out
        };
        let internal = records(KeyKind::Internal, layout.internal_slots, &mut groups);
        let external = records(KeyKind::External, layout.external_slots, &mut groups);
        self.store.save(&CardKeys {
            card_id: card_id.to_vec(),
            config: layout.to_config(),
            internal,
            external,
            pending: None,
            needs_reissue: false,
            suspended: false,
            forced_level: None,
            resync_approved: false,
        })?;
        Ok(groups)
    }

    /// Versions per slot on the server side, with any unconfirmed renewal.
    pub fn status(&self, card_id: &[u8]) -> Result<Vec<SlotStatus>, KeyringError> {
        let keys = self.load(card_id)?;
        let pending_version = |kind: KeyKind, slot: u8| {
            keys.pending.as_ref().and_then(|p| {
                p.keys.iter().find(|k| k.kind == kind.code() && k.slot == slot).map(|k| k.version)
            })
        };
        let mut out = Vec::new();
        for (kind, list) in
            [(KeyKind::Internal, &keys.internal), (KeyKind::External, &keys.external)]
        {
            for (index, r) in list.iter().enumerate() {
                let slot = index as u8 + 1;
                out.push(SlotStatus {
                    kind,
                    slot,
                    version: r.version,
                    pending_version: pending_version(kind, slot),
                });
            }
        }
        Ok(out)
    }

    /// Reports a key as compromised: slot 1 (the root) means re-issue; any other slot's level
    /// is renewed, with every level below it, at the next sync, whatever the schedule.
    pub fn mark_compromised(
        &mut self,
        card_id: &[u8],
        kind: KeyKind,
        slot: u8,
    ) -> Result<(), KeyringError> {
        let mut keys = self.load(card_id)?;
        let layout = keys.layout()?;
        if !layout.has(kind, slot) {
            return Err(KeyringError::Corrupt("no such slot"));
        }
        if slot == 1 {
            keys.needs_reissue = true;
        } else {
            let depth = layout.slots(kind) - slot;
            keys.forced_level = Some(keys.forced_level.map_or(depth, |d| d.max(depth)));
        }
        self.store.save(&keys)
    }

    /// Mutual authentication with internal slot `i` and external slot `j`.
    fn authenticate(
        &mut self,
        keys: &CardKeys,
        link: &mut dyn KeyringLink,
        i: u8,
        j: u8,
    ) -> Result<Authenticated, AuthFailure> {
        let layout = keys.layout()?;
        let mode = layout.mode;
        let card_id = &keys.card_id;
        let rs: [u8; CHALLENGE_LEN] = self.random();
        let r = link.exchange(&proto::internal_authenticate(i, &rs)).map_err(KeyringError::from)?;
        expect_ok("INTERNAL AUTHENTICATE", &r)?;
        let ia = InternalAuthResponse::parse(&r.data, mode).map_err(KeyringError::from)?;
        let internal = keys.slot(KeyKind::Internal, i)?;
        if ia.version != internal.version {
            return Err(AuthFailure::Mismatch);
        }
        let card_ephemeral = ia.ephemeral.map(|e| e.to_vec()).unwrap_or_default();
        let message = proto::card_auth_message(card_id, i, ia.version, &rs, &card_ephemeral);
        let ok = match mode {
            Mode::Symmetric => mac::verify(&aes(&internal.secret)?, &[&message], &ia.proof).is_ok(),
            Mode::Asymmetric => verify_signature(&internal.secret, &message, &ia.proof),
        };
        if !ok {
            return Err(AuthFailure::Mismatch);
        }
        let r = link.exchange(&proto::get_challenge()).map_err(KeyringError::from)?;
        expect_ok("GET CHALLENGE", &r)?;
        let ra: [u8; CHALLENGE_LEN] = r
            .data
            .as_slice()
            .try_into()
            .map_err(|_| KeyringError::Malformed(proto::ProtoError::Length("challenge")))?;
        let external = keys.slot(KeyKind::External, j)?;
        let ephemeral = match mode {
            Mode::Symmetric => None,
            Mode::Asymmetric => Some(EphemeralSecret::generate(&mut *self.rng)),
        };
        let server_ephemeral = ephemeral.as_ref().map(|e| e.public_key().to_sec1_bytes());
        let message = proto::server_auth_message(
            card_id,
            i,
            j,
            external.version,
            &rs,
            &ra,
            &card_ephemeral,
            server_ephemeral.as_ref().map_or(&[][..], |e| &e[..]),
        );
        let proof = match mode {
            Mode::Symmetric => mac::cmac(&aes(&external.secret)?, &[&message]).to_vec(),
            Mode::Asymmetric => signing_key(&external.secret)?.sign(&message).to_bytes().to_vec(),
        };
        let ea = ExternalAuthenticate { slot: j, ephemeral: server_ephemeral, proof };
        let r = link.exchange(&ea.to_command()).map_err(KeyringError::from)?;
        if r.sw == StatusWord(0x6300) {
            return Err(AuthFailure::Mismatch);
        }
        expect_ok("EXTERNAL AUTHENTICATE", &r)?;
        let bottom = i == layout.internal_slots && j == layout.external_slots;
        let session_keys = if bottom {
            let (kdf_key, mix) = match ephemeral {
                Some(e) => {
                    let peer = PublicKey::from_sec1_bytes(&card_ephemeral)
                        .map_err(|_| KeyringError::Verification("card ephemeral key"))?;
                    (e.diffie_hellman(&peer).extract(None), Vec::new())
                }
                None => {
                    let mix = mac::cmac(
                        &aes(&external.secret)?,
                        &[&proto::session_mix_message(card_id, &rs, &ra)],
                    );
                    (aes(&internal.secret)?, mix.to_vec())
                }
            };
            let context = proto::session_context(card_id, &rs, &ra, &mix);
            Some(session_static_keys(&kdf_key, &context)?)
        } else {
            None
        };
        Ok(Authenticated {
            internal: i,
            external: j,
            server_challenge: rs,
            card_challenge: ra,
            session_keys,
        })
    }

    /// RENEW of `form` after `auth`, with the two-phase commit: the new keys are saved as
    /// pending before the command leaves, and committed only when every key confirmation
    /// verifies.
    fn renew_after(
        &mut self,
        keys: &mut CardKeys,
        link: &mut dyn KeyringLink,
        auth: &Authenticated,
        form: RenewForm,
        now: u64,
    ) -> Result<Vec<RenewedKey>, KeyringError> {
        let layout = keys.layout()?;
        let mode = layout.mode;
        let targets = form.targets(&layout)?;
        let card_id = keys.card_id.clone();
        let upper = Zeroizing::new(keys.slot(KeyKind::Internal, auth.internal)?.secret.clone());
        // The card counts its versions (public); after a rollback of its image they lag the
        // server's, and the card's counter is the one RENEW increments.
        let r = link.exchange(&proto::get_data(proto::TAG_KEY_INFO))?;
        expect_ok("GET DATA", &r)?;
        let card_info = KeyInfo::parse(&r.data)?;
        let mut entries = Vec::with_capacity(targets.len());
        let mut pending = Vec::with_capacity(targets.len());
        let mut first_random = None;
        for (index, &(kind, slot)) in targets.iter().enumerate() {
            let version = card_info
                .version(kind, slot)
                .ok_or(KeyringError::Verification("card key information"))?
                .checked_add(1)
                .ok_or(KeyringError::Corrupt("version exhausted"))?;
            let second = form.single_random() && index == 1;
            let random: Option<[u8; RANDOM_LEN]> = (!second).then(|| self.random());
            first_random = first_random.or(random);
            let (public_key, record) = match (mode, kind) {
                (Mode::Symmetric, _) => {
                    let (label, r) = match random {
                        Some(r) => (Label::KEYRING_RENEWAL, r),
                        None => (
                            Label::KEYRING_RENEWAL_SECOND,
                            first_random.ok_or(KeyringError::Corrupt("random"))?,
                        ),
                    };
                    let context = proto::derivation_context(&card_id, kind, slot, version, &r);
                    let key = kdf::derive_key(&aes(&upper)?, label, &context, AesKeyLen::Aes128);
                    let kcv = key_check_value(&key);
                    let secret = key.expose_secret().to_vec();
                    (None, Some(SlotRecord { secret, version, kcv, renewed_at: now }))
                }
                (Mode::Asymmetric, KeyKind::Internal) => (None, None),
                (Mode::Asymmetric, KeyKind::External) => {
                    let pair = SigningKey::generate(&mut *self.rng);
                    let public = pair.public_key().to_sec1_bytes();
                    let kcv = proto::public_key_check_value(&public);
                    let secret = pair.to_bytes().to_vec();
                    (Some(public), Some(SlotRecord { secret, version, kcv, renewed_at: now }))
                }
            };
            entries.push(RenewEntry { random, public_key });
            pending.push(PendingKey { kind: kind.code(), slot, version, record });
        }
        let mut cmd = RenewCommand { form, entries, proof: Vec::new() };
        let message = proto::renew_command_message(
            &card_id,
            &auth.server_challenge,
            &auth.card_challenge,
            form.code(),
            &cmd.body(),
        );
        let external = &keys.slot(KeyKind::External, auth.external)?.secret;
        cmd.proof = match mode {
            Mode::Symmetric => mac::cmac(&aes(external)?, &[&message]).to_vec(),
            Mode::Asymmetric => signing_key(external)?.sign(&message).to_bytes().to_vec(),
        };

        // Phase one: the new keys are durable as pending before the card can commit them.
        keys.pending = Some(PendingRenewal {
            form_code: form.code(),
            form_slots: form.slot_bytes(),
            auth: (auth.internal, auth.external),
            keys: pending,
            started_at: now,
        });
        self.store.save(keys)?;

        let r = link.exchange(&cmd.to_command())?;
        if r.sw != StatusWord::SUCCESS {
            // The card refused: it changed nothing (RENEW is one transaction).
            keys.pending = None;
            self.store.save(keys)?;
            return Err(KeyringError::Refused { what: "RENEW", sw: r.sw });
        }
        let response = RenewResponse::parse(&r.data, mode)?;
        let confirmed = self.confirm(keys, auth, &response)?;

        // Phase two: commit.
        for (kind, slot, record) in confirmed {
            *keys.slot_mut(kind, slot)? = record;
        }
        keys.pending = None;
        self.store.save(keys)?;
        Ok(response.keys)
    }

    /// Checks the card's RENEW response against the pending renewal; returns the records to
    /// commit. Leaves everything pending on any mismatch.
    fn confirm(
        &self,
        keys: &CardKeys,
        auth: &Authenticated,
        response: &RenewResponse,
    ) -> Result<Vec<(KeyKind, u8, SlotRecord)>, KeyringError> {
        let mode = keys.mode()?;
        let card_id = &keys.card_id;
        let pending = keys.pending.as_ref().ok_or(KeyringError::Corrupt("no pending renewal"))?;
        if pending.keys.len() != response.keys.len() {
            return Err(KeyringError::Verification("number of renewed keys"));
        }
        if mode == Mode::Asymmetric {
            let upper = &keys.slot(KeyKind::Internal, auth.internal)?.secret;
            let message = proto::renew_response_message(
                card_id,
                &auth.server_challenge,
                &auth.card_challenge,
                &response.body(),
            );
            let signature = response.signature.ok_or(KeyringError::Verification("signature"))?;
            if !verify_signature(upper, &message, &signature) {
                return Err(KeyringError::Verification("RENEW response signature"));
            }
        }
        let mut out = Vec::with_capacity(pending.keys.len());
        for (p, k) in pending.keys.iter().zip(&response.keys) {
            let kind = KeyKind::from_code(p.kind)?;
            if k.kind != kind || k.slot != p.slot || k.version != p.version {
                return Err(KeyringError::Verification("renewed slot or version"));
            }
            let record = match (&p.record, mode) {
                (Some(record), Mode::Symmetric) => {
                    let mut expected = [0u8; CONFIRMATION_LEN];
                    kdf::derive(
                        &aes(&record.secret)?,
                        Label::KEYRING_CONFIRMATION,
                        &proto::confirmation_context(
                            card_id,
                            kind,
                            p.slot,
                            record.version,
                            &auth.server_challenge,
                            &auth.card_challenge,
                        ),
                        &mut expected,
                    )?;
                    let confirmation =
                        k.confirmation.ok_or(KeyringError::Verification("confirmation"))?;
                    if !bool::from(expected.ct_eq(&confirmation)) || k.kcv != record.kcv {
                        return Err(KeyringError::Verification("key confirmation"));
                    }
                    record.clone()
                }
                (Some(record), Mode::Asymmetric) => {
                    if k.kcv != record.kcv {
                        return Err(KeyringError::Verification("external key check value"));
                    }
                    record.clone()
                }
                (None, _) => {
                    let public = k.public_key.ok_or(KeyringError::Verification("public key"))?;
                    let possession =
                        k.possession.ok_or(KeyringError::Verification("possession"))?;
                    let message = proto::possession_message(
                        card_id,
                        p.slot,
                        k.version,
                        &public,
                        &auth.server_challenge,
                        &auth.card_challenge,
                    );
                    if !verify_signature(&public, &message, &possession)
                        || k.kcv != proto::public_key_check_value(&public)
                    {
                        return Err(KeyringError::Verification("proof of possession"));
                    }
                    SlotRecord {
                        secret: public.to_vec(),
                        version: k.version,
                        kcv: k.kcv,
                        renewed_at: pending.started_at,
                    }
                }
            };
            out.push((kind, p.slot, record));
        }
        Ok(out)
    }

    /// Authenticates with `plan.auth` and runs `plan.form`. `Ok(None)` when the pair does not
    /// authenticate (the keys disagree).
    fn run_plan(
        &mut self,
        keys: &mut CardKeys,
        link: &mut dyn KeyringLink,
        plan: Plan,
        now: u64,
    ) -> Result<Option<Vec<RenewedKey>>, KeyringError> {
        match self.authenticate(keys, link, plan.auth.0, plan.auth.1) {
            Ok(auth) => self.renew_after(keys, link, &auth, plan.form, now).map(Some),
            Err(AuthFailure::Mismatch) => Ok(None),
            Err(AuthFailure::Error(e)) => Err(e),
        }
    }

    /// Renews `form` after authenticating with `auth` (an explicit renewal, e.g. by an
    /// administrator or a test of each form). The card enforces the rules; so does this.
    pub fn renew(
        &mut self,
        card_id: &[u8],
        link: &mut dyn KeyringLink,
        form: RenewForm,
        auth: (u8, u8),
        now: u64,
    ) -> Result<Vec<RenewedKey>, KeyringError> {
        let mut keys = self.load(card_id)?;
        if keys.needs_reissue {
            return Err(KeyringError::NeedsReissue);
        }
        if keys.suspended {
            return Err(KeyringError::Suspended);
        }
        // The card's rules, checked here too so a bad request never reaches the card.
        for (kind, slot) in form.targets(&keys.layout()?)? {
            let upper = match kind {
                KeyKind::Internal => auth.0,
                KeyKind::External => auth.1,
            };
            if slot < 2 || upper == 0 || upper >= slot {
                return Err(KeyringError::Refused {
                    what: "RENEW (a key is only renewed from above, slot 1 never)",
                    sw: StatusWord::SECURITY_STATUS_NOT_SATISFIED,
                });
            }
        }
        self.run_plan(&mut keys, link, Plan { form, auth }, now)?
            .ok_or(KeyringError::Verification("authentication with the upper pair"))
    }

    /// Walks up from level `from`: the first level whose pair authenticates renews every level
    /// below it. Marks the card for re-issue when even the root pair fails.
    fn resync_from(
        &mut self,
        keys: &mut CardKeys,
        link: &mut dyn KeyringLink,
        from: u8,
        now: u64,
        report: &mut SyncReport,
    ) -> Result<(), KeyringError> {
        let layout = keys.layout()?;
        report.resynchronised = true;
        for d in from.max(1)..=policy::top_level(&layout) + 1 {
            let Some(plan) = policy::plan_up_to(&layout, d - 1, false) else { break };
            // Only the levels at or below d - 1 are renewed: authenticate at level d.
            if self.run_plan(keys, link, plan, now)?.is_some() {
                report.renewals.push(plan);
                return Ok(());
            }
        }
        keys.needs_reissue = true;
        self.store.save(keys)?;
        Err(KeyringError::NeedsReissue)
    }

    /// Authenticates with the bottom pair and opens the keyring's SCP03 session at level 33.
    pub fn open_session<'l>(
        &mut self,
        card_id: &[u8],
        link: &'l mut dyn KeyringLink,
    ) -> Result<KeyringSession<'l>, KeyringError> {
        let keys = self.load(card_id)?;
        let layout = keys.layout()?;
        match self.authenticate(&keys, link, layout.internal_slots, layout.external_slots) {
            Ok(auth) => self.session_with(link, &auth),
            Err(AuthFailure::Mismatch) => Err(KeyringError::Verification("bottom pair")),
            Err(AuthFailure::Error(e)) => Err(e),
        }
    }

    fn session_with<'l>(
        &mut self,
        link: &'l mut dyn KeyringLink,
        auth: &Authenticated,
    ) -> Result<KeyringSession<'l>, KeyringError> {
        let keys = auth.session_keys.as_ref().ok_or(KeyringError::Corrupt("no session keys"))?;
        let (handshake, iu) = Scp03Host::initialize_update(SESSION_KVN, 0, &mut *self.rng)?;
        let r = link.exchange(&iu)?;
        expect_ok("INITIALIZE UPDATE", &r)?;
        let hello = handshake.card_hello(&r)?;
        let (pending, ea) = hello.external_authenticate(keys, SESSION_LEVEL, None)?;
        let r = link.exchange(&ea)?;
        expect_ok("EXTERNAL AUTHENTICATE (SCP03)", &r)?;
        Ok(KeyringSession { link, scp: pending.finish(&r)? })
    }

    /// One sync of a card (see the module documentation): resynchronise an interrupted
    /// renewal, renew what is due, then authenticate with the bottom pair, open the session and
    /// check that the card's versions and check values match the server's. A disagreement that
    /// no interrupted renewal explains suspends the card (see [`SyncOutcome::Suspended`]).
    pub fn sync(
        &mut self,
        card_id: &[u8],
        link: &mut dyn KeyringLink,
        now: u64,
    ) -> Result<SyncReport, KeyringError> {
        let mut keys = self.load(card_id)?;
        let mut report = SyncReport {
            outcome: SyncOutcome::NeedsReissue,
            resynchronised: false,
            renewals: Vec::new(),
            card_keys: None,
        };
        if keys.needs_reissue {
            return Ok(report);
        }
        if keys.suspended {
            report.outcome = SyncOutcome::Suspended;
            return Ok(report);
        }
        let layout = keys.layout()?;
        match self.sync_inner(&mut keys, link, now, &mut report, &layout) {
            Ok(()) => {
                report.outcome = SyncOutcome::InAgreement;
                Ok(report)
            }
            Err(KeyringError::Suspended) => {
                keys.suspended = true;
                self.store.save(&keys)?;
                report.outcome = SyncOutcome::Suspended;
                Ok(report)
            }
            Err(e) => Err(e),
        }
    }

    /// The administrator's answer to a suspended card that is known to be genuine (e.g. its
    /// holder restored an old image): walks up the levels until a pair authenticates, renews
    /// every level below it, and lifts the suspension; marks the card for re-issue when even
    /// the root pair fails. Then runs a normal sync.
    pub fn resynchronise(
        &mut self,
        card_id: &[u8],
        link: &mut dyn KeyringLink,
        now: u64,
    ) -> Result<SyncReport, KeyringError> {
        let mut keys = self.load(card_id)?;
        if keys.needs_reissue {
            return Err(KeyringError::NeedsReissue);
        }
        let mut report = SyncReport {
            outcome: SyncOutcome::NeedsReissue,
            resynchronised: true,
            renewals: Vec::new(),
            card_keys: None,
        };
        keys.pending = None;
        keys.resync_approved = false;
        match self.resync_from(&mut keys, link, 1, now, &mut report) {
            Ok(()) => {}
            Err(KeyringError::NeedsReissue) => return Ok(report),
            Err(e) => return Err(e),
        }
        keys.suspended = false;
        self.store.save(&keys)?;
        let mut after = self.sync(card_id, link, now)?;
        report.renewals.append(&mut after.renewals);
        after.renewals = report.renewals;
        after.resynchronised = true;
        Ok(after)
    }

    fn sync_inner(
        &mut self,
        keys: &mut CardKeys,
        link: &mut dyn KeyringLink,
        now: u64,
        report: &mut SyncReport,
        layout: &Layout,
    ) -> Result<(), KeyringError> {
        // 1. An interrupted renewal: run it again from the pair that authenticated it, which
        //    that renewal cannot have changed. Whatever the card committed, both sides agree
        //    afterwards.
        if let Some(p) = keys.pending.clone() {
            report.resynchronised = true;
            let plan = Plan { form: p.form()?, auth: p.auth };
            keys.pending = None;
            self.run_plan(keys, link, plan, now)?.ok_or(KeyringError::Suspended)?;
            report.renewals.push(plan);
            // A renewal forced by a compromise report that this one covers is done.
            let covered = keys.forced_level.and_then(|d| policy::plan_up_to(layout, d, false));
            if covered.is_some_and(|f| plan.auth.0 <= f.auth.0 && plan.auth.1 <= f.auth.1) {
                keys.forced_level = None;
                self.store.save(keys)?;
            }
        }
        // 2. What the policy says is due, and levels reported compromised.
        let renewed_at = |keys: &CardKeys, d: u8| {
            let (i, e) = policy::level_slots(layout, d);
            [(KeyKind::Internal, i), (KeyKind::External, e)]
                .into_iter()
                .filter_map(|(k, s)| s.and_then(|s| keys.slot(k, s).ok()).map(|r| r.renewed_at))
                .min()
                .unwrap_or(u64::MAX)
        };
        let due = policy::plan_due(layout, &self.policy, now, |d| renewed_at(keys, d));
        let forced = keys.forced_level.and_then(|d| policy::plan_up_to(layout, d, false));
        // The wider of the two plans (the one authenticated from higher up).
        let plan = match (due, forced) {
            (Some(a), Some(b)) => {
                Some(if b.auth.0 + b.auth.1 < a.auth.0 + a.auth.1 { b } else { a })
            }
            (a, b) => a.or(b),
        };
        if let Some(plan) = plan {
            self.run_plan(keys, link, plan, now)?.ok_or(KeyringError::Suspended)?;
            report.renewals.push(plan);
            if keys.forced_level.take().is_some() {
                self.store.save(keys)?;
            }
        }
        // 3. The session with the bottom pair, and agreement on every slot.
        let auth = match self.authenticate(keys, link, layout.internal_slots, layout.external_slots)
        {
            Ok(auth) => auth,
            Err(AuthFailure::Mismatch) => return Err(KeyringError::Suspended),
            Err(AuthFailure::Error(e)) => return Err(e),
        };
        let mut session = self.session_with(link, &auth)?;
        let info = session.key_info()?;
        let agree = info.layout == *layout
            && info.slots.iter().all(|s| {
                keys.slot(s.kind, s.slot).is_ok_and(|r| r.version == s.version && r.kcv == s.kcv)
            });
        if !agree {
            return Err(KeyringError::Suspended);
        }
        report.card_keys = Some(info);
        Ok(())
    }
}
