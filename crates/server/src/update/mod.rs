//! The update service (seed 000, issue 5): the server's half of the Fig. 2 chain and the
//! update queue, as pure logic over a small [`UpdateStore`] trait.
//!
//! - **Registration** (after issuance): the card's device certificate must chain to its
//!   issuer's CA with the device role and name the card; the update key the card generated
//!   must carry the device key's proof over the server's nonce.
//! - **Queueing**: the value is HPKE-sealed to the card's update key at queue time, the package
//!   signed with the issuer's package-signing key and given the card's next sequence number;
//!   only the package is stored, never the plaintext.
//! - **Device authentication**: a single-use random with an expiry ([`UpdateService::challenge`]);
//!   the answer is accepted once, before the expiry, from a card whose device certificate
//!   chains to its issuer (claims 3, 8, 12); in the privacy variant the card's id arrives
//!   sealed to the server's HPKE key (claim 9). A card presenting a sequence below what it
//!   already acknowledged is a rolled-back or cloned image and is refused.
//! - **Delivery**: the pending packages in sequence order; a package is marked delivered only
//!   on a receipt whose device signature verifies over its sequence and digest. A package whose
//!   receipt was lost stays pending and is sent again; the card answers it with an
//!   "already applied" receipt and applies it no second time.
//!
//! The checks are free functions ([`verify_update_key`], [`device_key`], [`seal_package`],
//! [`verify_device_auth`], [`verify_receipt`], [`wrap_for_delivery`]) shared by two stores:
//! [`UpdateService`] over the [`UpdateStore`] trait with an in-memory implementation
//! ([`MemoryUpdateStore`]: tests, demo) and the database side in [`crate::store::update`]
//! (registration at issuance, the queue, challenges, the update step of `tessera sync`).

use std::collections::BTreeMap;

use tessera_crypto::device::{self, Purpose};
use tessera_crypto::ecdsa::Signature;
use tessera_crypto::hash::sha256;
use tessera_crypto::hpke::{self, HpkePrivateKey, HpkePublicKey};
use tessera_crypto::rng::Rng;
use tessera_crypto::x509::{CaSigner, Certificate, Role, verify_chain};
use tessera_proto::update::{
    Challenge, DELIVERY_INFO, DELIVERY_MAGIC, DeviceAuthResponse, IDENTITY_INFO, MAX_OBJECT_LEN,
    Mode, NONCE_LEN, Package, ReadRule, Receipt, STATIC_AUTH_LEN, SealedIdentity, update_key_body,
};

/// How long a device-authentication challenge stays valid (seconds).
pub const CHALLENGE_TTL: u64 = 120;

/// Why the update service refused something. Each check has its own variant so the terminal
/// can show which one failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// No such card is registered for updates.
    #[error("card {0} is not registered for updates")]
    UnknownCard(String),
    /// No such issuer.
    #[error("unknown issuer {0}")]
    UnknownIssuer(String),
    /// The device certificate does not chain to the issuer's CA, lacks the device role, or
    /// names another card (claims 3, 12).
    #[error("device certificate refused: {0}")]
    DeviceCertificate(String),
    /// The update key's proof by the device key does not verify.
    #[error("the update key is not vouched for by the card's device key")]
    UpdateKeyProof,
    /// The challenge was never issued, already used, or expired.
    #[error("challenge unknown, already used or expired")]
    Challenge,
    /// The device signature over the challenge does not verify.
    #[error("device authentication signature does not verify")]
    DeviceSignature,
    /// The sealed identity of the privacy variant does not open or parse.
    #[error("sealed card identity does not open")]
    SealedIdentity,
    /// The card reports a sequence below what it acknowledged: a rolled-back or cloned image.
    #[error(
        "card reports sequence {reported} below acknowledged {acknowledged}: rolled back or cloned"
    )]
    RolledBack {
        /// What the card says.
        reported: u64,
        /// What the server has receipts for.
        acknowledged: u64,
    },
    /// The receipt does not parse, names no pending package, or does not match its digest.
    #[error("receipt matches no pending package")]
    ReceiptMismatch,
    /// The receipt's device signature does not verify.
    #[error("receipt signature does not verify")]
    ReceiptSignature,
    /// The value or name is out of range.
    #[error("bad update: {0}")]
    BadUpdate(&'static str),
    /// A cryptographic operation failed (sealing, signing).
    #[error("crypto: {0}")]
    Crypto(String),
}

/// Result of the update service.
pub type UpdateResult<T> = Result<T, UpdateError>;

/// A card as the update service knows it.
#[derive(Debug, Clone)]
pub struct CardRecord {
    /// The card id.
    pub card_id: Vec<u8>,
    /// The issuer's id.
    pub issuer: String,
    /// The card's device certificate (issued by the issuer CA, checked at registration and
    /// again at each authentication).
    pub device_certificate: Certificate,
    /// The card's update key (HPKE).
    pub update_key: HpkePublicKey,
    /// The legacy static authenticator (claim 10), for cards personalised with one.
    pub legacy_static: Option<[u8; STATIC_AUTH_LEN]>,
}

/// A queued package: the signed, sealed bytes and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedPackage {
    /// Its sequence for the card.
    pub sequence: u64,
    /// The package bytes ([`Package::to_bytes`]).
    pub bytes: Vec<u8>,
    /// A valid receipt arrived.
    pub delivered: bool,
}

/// What the update service stores. One call per logical step, so a SQL implementation can
/// make each a transaction.
pub trait UpdateStore {
    /// Records a card (replacing an earlier record of the same id).
    fn put_card(&mut self, card: CardRecord);
    /// The card's record.
    fn card(&self, card_id: &[u8]) -> Option<CardRecord>;
    /// Allocates the card's next sequence number (1, 2, ...) and queues `package` built with
    /// it by `build`, atomically. Returns the sequence.
    fn enqueue(
        &mut self,
        card_id: &[u8],
        build: &mut dyn FnMut(u64) -> UpdateResult<Vec<u8>>,
    ) -> UpdateResult<u64>;
    /// The card's packages not yet delivered, in sequence order.
    fn pending(&self, card_id: &[u8]) -> Vec<QueuedPackage>;
    /// Marks a package delivered; false if there is no such undelivered package.
    fn mark_delivered(&mut self, card_id: &[u8], sequence: u64) -> bool;
    /// The highest sequence delivered (receipted) to the card, 0 if none.
    fn acknowledged(&self, card_id: &[u8]) -> u64;
    /// Records an issued challenge.
    fn put_challenge(&mut self, challenge: Challenge);
    /// Removes and returns the challenge with this nonce (single use).
    fn take_challenge(&mut self, nonce: &[u8; NONCE_LEN]) -> Option<Challenge>;
}

#[derive(Debug, Default)]
struct CardQueue {
    next: u64,
    packages: BTreeMap<u64, QueuedPackage>,
}

/// An in-memory [`UpdateStore`] (tests, demo, benchmarks).
#[derive(Debug, Default)]
pub struct MemoryUpdateStore {
    cards: BTreeMap<Vec<u8>, CardRecord>,
    queues: BTreeMap<Vec<u8>, CardQueue>,
    challenges: BTreeMap<[u8; NONCE_LEN], Challenge>,
}

impl UpdateStore for MemoryUpdateStore {
    fn put_card(&mut self, card: CardRecord) {
        self.cards.insert(card.card_id.clone(), card);
    }
    fn card(&self, card_id: &[u8]) -> Option<CardRecord> {
        self.cards.get(card_id).cloned()
    }
    fn enqueue(
        &mut self,
        card_id: &[u8],
        build: &mut dyn FnMut(u64) -> UpdateResult<Vec<u8>>,
    ) -> UpdateResult<u64> {
        let queue = self.queues.entry(card_id.to_vec()).or_default();
        let sequence = queue.next + 1;
        let bytes = build(sequence)?;
        queue.next = sequence;
        queue.packages.insert(sequence, QueuedPackage { sequence, bytes, delivered: false });
        Ok(sequence)
    }
    fn pending(&self, card_id: &[u8]) -> Vec<QueuedPackage> {
        self.queues
            .get(card_id)
            .map(|q| q.packages.values().filter(|p| !p.delivered).cloned().collect())
            .unwrap_or_default()
    }
    fn mark_delivered(&mut self, card_id: &[u8], sequence: u64) -> bool {
        match self.queues.get_mut(card_id).and_then(|q| q.packages.get_mut(&sequence)) {
            Some(p) if !p.delivered => {
                p.delivered = true;
                true
            }
            _ => false,
        }
    }
    fn acknowledged(&self, card_id: &[u8]) -> u64 {
        self.queues
            .get(card_id)
            .and_then(|q| q.packages.values().filter(|p| p.delivered).map(|p| p.sequence).max())
            .unwrap_or(0)
    }
    fn put_challenge(&mut self, challenge: Challenge) {
        self.challenges.insert(challenge.nonce, challenge);
    }
    fn take_challenge(&mut self, nonce: &[u8; NONCE_LEN]) -> Option<Challenge> {
        self.challenges.remove(nonce)
    }
}

/// The device key of a card: `cert` must verify up to `ca` at `now` with the device role and
/// name `card_id` (claims 3, 12).
pub fn device_key(
    ca: &Certificate,
    card_id: &[u8],
    cert: &Certificate,
    now: i64,
) -> UpdateResult<tessera_crypto::ecdsa::PublicKey> {
    let info = verify_chain(cert, &[], ca, now, Some(Role::Device))
        .map_err(|e| UpdateError::DeviceCertificate(e.to_string()))?;
    if info.subject_cn.as_bytes() != card_id {
        return Err(UpdateError::DeviceCertificate("names another card".into()));
    }
    Ok(info.public_key)
}

/// Checks an update's object name (1 to 32 bytes) and value (at most 64 KiB).
pub fn check_update(name: &[u8], value: &[u8]) -> UpdateResult<()> {
    if name.is_empty() || name.len() > tessera_proto::update::MAX_NAME_LEN {
        return Err(UpdateError::BadUpdate("object name: 1 to 32 bytes"));
    }
    if value.len() > MAX_OBJECT_LEN {
        return Err(UpdateError::BadUpdate("value above 64 KiB"));
    }
    Ok(())
}

/// The card and sequence a package is made for.
#[derive(Debug, Clone, Copy)]
pub struct PackageTarget<'a> {
    /// The card id the package names.
    pub card_id: &'a [u8],
    /// The card's update key the value is sealed to.
    pub update_key: &'a HpkePublicKey,
    /// The card's sequence number for this package.
    pub sequence: u64,
}

/// Builds a package: `value` sealed with HPKE to the card's update key (bound to the card id,
/// name, sequence, mode and rule) under a fresh ephemeral key from the system's generator
/// ([`hpke::seal`], `ring`'s ECDH), the whole signed by the issuer's package-signing key.
/// Returns [`Package::to_bytes`]; the plaintext goes nowhere else.
pub fn seal_package(
    signer: &dyn CaSigner,
    target: &PackageTarget<'_>,
    name: &[u8],
    value: &[u8],
    mode: Mode,
    rule: ReadRule,
) -> UpdateResult<Vec<u8>> {
    let seal = |info: &[u8], aad: &[u8]| hpke::seal(target.update_key, info, aad, value);
    build_package(seal, signer, target, name, value, mode, rule)
}

/// [`seal_package`] with the ephemeral key drawn from `rng` ([`hpke::seal_with_rng`], the
/// portable and slower arithmetic): for an injected generator, where a test replays a package
/// byte for byte.
pub fn seal_package_with_rng(
    rng: &mut dyn Rng,
    signer: &dyn CaSigner,
    target: &PackageTarget<'_>,
    name: &[u8],
    value: &[u8],
    mode: Mode,
    rule: ReadRule,
) -> UpdateResult<Vec<u8>> {
    let seal =
        |info: &[u8], aad: &[u8]| hpke::seal_with_rng(rng, target.update_key, info, aad, value);
    build_package(seal, signer, target, name, value, mode, rule)
}

/// The package around `seal(info, aad)`, signed.
fn build_package(
    seal: impl FnOnce(&[u8], &[u8]) -> tessera_crypto::Result<Vec<u8>>,
    signer: &dyn CaSigner,
    target: &PackageTarget<'_>,
    name: &[u8],
    value: &[u8],
    mode: Mode,
    rule: ReadRule,
) -> UpdateResult<Vec<u8>> {
    check_update(name, value)?;
    let info = Package::seal_info(target.card_id, name);
    let aad = Package::seal_aad(target.sequence, mode, rule);
    let sealed = seal(&info, &aad).map_err(|e| UpdateError::Crypto(e.to_string()))?;
    let mut package = Package {
        card_id: target.card_id.to_vec(),
        sequence: target.sequence,
        mode,
        rule,
        name: name.to_vec(),
        sealed,
        signature: [0; 64],
    };
    package.signature = signer
        .sign_message(&package.signed_message())
        .map_err(|e| UpdateError::Crypto(e.to_string()))?
        .to_bytes();
    Ok(package.to_bytes())
}

/// Checks the card's answer to DEVICE AUTHENTICATE (plain): the device key's signature over
/// the challenge and the sequence the card reports.
pub fn verify_device_auth(
    device_key: &tessera_crypto::ecdsa::PublicKey,
    card_id: &[u8],
    challenge: &Challenge,
    response: &DeviceAuthResponse,
) -> UpdateResult<()> {
    let sig =
        Signature::from_bytes(&response.signature).map_err(|_| UpdateError::DeviceSignature)?;
    device::verify(
        device_key,
        Purpose::DeviceAuthentication,
        card_id,
        &tessera_proto::update::auth_body(challenge, response.last_sequence),
        &sig,
    )
    .map_err(|_| UpdateError::DeviceSignature)
}

/// Checks a receipt's device signature (the key of `device_certificate`, checked to chain at
/// registration and authentication). The caller checks its sequence and digest against the
/// pending package.
pub fn verify_receipt(
    device_certificate: &Certificate,
    card_id: &[u8],
    receipt: &Receipt,
) -> UpdateResult<()> {
    let device_key = device_certificate
        .info()
        .map_err(|e| UpdateError::DeviceCertificate(e.to_string()))?
        .public_key;
    let sig =
        Signature::from_bytes(&receipt.signature).map_err(|_| UpdateError::ReceiptSignature)?;
    device::verify(
        &device_key,
        Purpose::DeviceAuthentication,
        card_id,
        &Receipt::body(receipt.sequence, &receipt.digest),
        &sig,
    )
    .map_err(|_| UpdateError::ReceiptSignature)
}

/// Wraps a package once more to the card's update key for delivery in the privacy variant
/// (`"TUW1" || HPKE(update key; package)`), fresh each time (an ephemeral key from the
/// system's generator, [`hpke::seal`]).
pub fn wrap_for_delivery(update_key: &HpkePublicKey, package: &[u8]) -> UpdateResult<Vec<u8>> {
    let sealed = hpke::seal(update_key, DELIVERY_INFO, DELIVERY_MAGIC, package)
        .map_err(|e| UpdateError::Crypto(e.to_string()))?;
    Ok([&DELIVERY_MAGIC[..], &sealed].concat())
}

/// [`wrap_for_delivery`] with the ephemeral key drawn from `rng` (an injected generator).
pub fn wrap_for_delivery_with_rng(
    rng: &mut dyn Rng,
    update_key: &HpkePublicKey,
    package: &[u8],
) -> UpdateResult<Vec<u8>> {
    let sealed = hpke::seal_with_rng(rng, update_key, DELIVERY_INFO, DELIVERY_MAGIC, package)
        .map_err(|e| UpdateError::Crypto(e.to_string()))?;
    Ok([&DELIVERY_MAGIC[..], &sealed].concat())
}

/// Checks a card's update key as issuance reads it (GET DATA `0102`: `public key (65) ||
/// proof (64)`): `device_certificate` must verify up to `ca` at `now` with the device role and
/// name `card_id`, and the proof must be its device key's signature over `nonce` and the key.
/// Returns the update key.
pub fn verify_update_key(
    ca: &Certificate,
    card_id: &[u8],
    device_certificate: &Certificate,
    nonce: &[u8],
    update_key_answer: &[u8],
    now: i64,
) -> UpdateResult<HpkePublicKey> {
    let device_key = device_key(ca, card_id, device_certificate, now)?;
    let (Some(public), Some(sig)) = (update_key_answer.get(..65), update_key_answer.get(65..))
    else {
        return Err(UpdateError::UpdateKeyProof);
    };
    let public: [u8; 65] = public.try_into().map_err(|_| UpdateError::UpdateKeyProof)?;
    let sig = Signature::from_bytes(sig).map_err(|_| UpdateError::UpdateKeyProof)?;
    device::verify(
        &device_key,
        Purpose::DeviceAuthentication,
        card_id,
        &update_key_body(nonce, &public),
        &sig,
    )
    .map_err(|_| UpdateError::UpdateKeyProof)?;
    HpkePublicKey::from_bytes(&public).map_err(|_| UpdateError::UpdateKeyProof)
}

/// An issuer as the update service needs it: its CA (trust anchor of device certificates)
/// and its package-signing key and certificate.
pub struct IssuerKeys {
    /// The issuer's id.
    pub id: String,
    /// The issuer CA certificate.
    pub ca: Certificate,
    /// The package-signing key (in memory or in a token).
    pub package_signer: Box<dyn CaSigner + Send + Sync>,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys").field("id", &self.id).finish_non_exhaustive()
    }
}

/// A card that passed device authentication: the only handle that gives access to its
/// pending packages and accepts its receipts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedCard {
    /// The card id.
    pub card_id: Vec<u8>,
    /// The sequence the card reported.
    pub last_sequence: u64,
    /// Authenticated in the privacy variant: packages are wrapped for delivery so the terminal
    /// never sees the card id they name.
    pub private: bool,
}

/// The update service over a store.
pub struct UpdateService<S: UpdateStore> {
    store: S,
    issuers: BTreeMap<String, IssuerKeys>,
    /// The server's HPKE key for the privacy variant.
    identity_key: HpkePrivateKey,
}

impl<S: UpdateStore> UpdateService<S> {
    /// A service over `store`, with the server's identity key for the privacy variant.
    pub fn new(store: S, identity_key: HpkePrivateKey) -> Self {
        Self { store, issuers: BTreeMap::new(), identity_key }
    }

    /// Adds an issuer.
    pub fn add_issuer(&mut self, issuer: IssuerKeys) {
        self.issuers.insert(issuer.id.clone(), issuer);
    }

    /// The public key cards seal their identity to in the privacy variant.
    pub fn identity_public_key(&self) -> HpkePublicKey {
        self.identity_key.public_key()
    }

    /// The store (read access, for reports and tests).
    pub fn store(&self) -> &S {
        &self.store
    }

    fn issuer(&self, id: &str) -> UpdateResult<&IssuerKeys> {
        self.issuers.get(id).ok_or_else(|| UpdateError::UnknownIssuer(id.to_string()))
    }

    fn card(&self, card_id: &[u8]) -> UpdateResult<CardRecord> {
        self.store
            .card(card_id)
            .ok_or_else(|| UpdateError::UnknownCard(String::from_utf8_lossy(card_id).into_owned()))
    }

    /// Checks the device certificate against the issuer CA at `now` (device role, subject =
    /// card id) and returns its public key.
    fn check_device_certificate(
        &self,
        issuer: &str,
        card_id: &[u8],
        cert: &Certificate,
        now: i64,
    ) -> UpdateResult<tessera_crypto::ecdsa::PublicKey> {
        device_key(&self.issuer(issuer)?.ca, card_id, cert, now)
    }

    /// Registers an issued card: its device certificate must chain to `issuer`'s CA and name
    /// the card; `update_key_answer` (GET DATA of the update key) must carry the device key's
    /// proof over `nonce` (the nonce the issuance sent with the update key's data group).
    pub fn register_card(
        &mut self,
        issuer: &str,
        card_id: &[u8],
        device_certificate: Certificate,
        nonce: &[u8],
        update_key_answer: &[u8],
        now: i64,
    ) -> UpdateResult<()> {
        let ca = &self.issuer(issuer)?.ca;
        let update_key =
            verify_update_key(ca, card_id, &device_certificate, nonce, update_key_answer, now)?;
        self.store.put_card(CardRecord {
            card_id: card_id.to_vec(),
            issuer: issuer.to_string(),
            device_certificate,
            update_key,
            legacy_static: None,
        });
        Ok(())
    }

    /// Queues an update: seals `value` to the card's update key, signs the package with the
    /// issuer's package-signing key under the card's next sequence. Keeps no plaintext.
    #[allow(clippy::too_many_arguments)]
    pub fn queue(
        &mut self,
        rng: &mut dyn Rng,
        card_id: &[u8],
        name: &[u8],
        value: &[u8],
        mode: Mode,
        rule: ReadRule,
    ) -> UpdateResult<u64> {
        check_update(name, value)?;
        let card = self.card(card_id)?;
        let issuer = self
            .issuers
            .get(&card.issuer)
            .ok_or_else(|| UpdateError::UnknownIssuer(card.issuer.clone()))?;
        let mut build = |sequence: u64| -> UpdateResult<Vec<u8>> {
            let target = PackageTarget { card_id, update_key: &card.update_key, sequence };
            let signer = issuer.package_signer.as_ref();
            seal_package_with_rng(rng, signer, &target, name, value, mode, rule)
        };
        self.store.enqueue(card_id, &mut build)
    }

    /// A fresh single-use challenge valid for [`CHALLENGE_TTL`] seconds from `now`.
    pub fn challenge(&mut self, rng: &mut dyn Rng, now: u64) -> Challenge {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_random(&mut nonce);
        let challenge = Challenge { nonce, expires: now.saturating_add(CHALLENGE_TTL) };
        self.store.put_challenge(challenge);
        challenge
    }

    fn consume(&mut self, challenge: &Challenge, now: u64) -> UpdateResult<()> {
        let stored = self.store.take_challenge(&challenge.nonce).ok_or(UpdateError::Challenge)?;
        if stored != *challenge || now > stored.expires {
            return Err(UpdateError::Challenge);
        }
        Ok(())
    }

    /// Device authentication (plain mode): the challenge must be one this service issued,
    /// unused and unexpired (it is used up by this call, whatever the outcome); the card's
    /// device certificate must still chain to its issuer; the signature must verify; the
    /// reported sequence must not be below the acknowledged one.
    pub fn authenticate(
        &mut self,
        card_id: &[u8],
        challenge: &Challenge,
        answer: &[u8],
        now: u64,
    ) -> UpdateResult<AuthenticatedCard> {
        self.consume(challenge, now)?;
        let response =
            DeviceAuthResponse::parse(answer).map_err(|_| UpdateError::DeviceSignature)?;
        self.check_auth(card_id, challenge, &response, now, false)
    }

    /// Records the legacy static authenticator personalised into a card (claim 10).
    pub fn set_legacy_static(
        &mut self,
        card_id: &[u8],
        value: [u8; STATIC_AUTH_LEN],
    ) -> UpdateResult<()> {
        let mut card = self.card(card_id)?;
        card.legacy_static = Some(value);
        self.store.put_card(card);
        Ok(())
    }

    /// Legacy device authentication by the static authenticator (claim 10). **Replayable**:
    /// anyone who saw it once (the terminal, a log) can present it again; accepted only for
    /// cards registered with one, and logged as a warning every time. The device certificate
    /// must still chain to the issuer.
    pub fn authenticate_legacy_static(
        &mut self,
        card_id: &[u8],
        answer: &[u8],
        now: u64,
    ) -> UpdateResult<AuthenticatedCard> {
        let card = self.card(card_id)?;
        let expected = card.legacy_static.ok_or(UpdateError::DeviceSignature)?;
        let now_i = i64::try_from(now).unwrap_or(i64::MAX);
        self.check_device_certificate(&card.issuer, card_id, &card.device_certificate, now_i)?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], answer)) {
            return Err(UpdateError::DeviceSignature);
        }
        tracing::warn!(
            card = %String::from_utf8_lossy(card_id),
            "legacy static authenticator accepted: it is replayable (claim 10)"
        );
        Ok(AuthenticatedCard { card_id: card_id.to_vec(), last_sequence: 0, private: false })
    }

    /// Device authentication, privacy variant: opens the sealed identity with the server's
    /// key (bound to the challenge), then checks as [`UpdateService::authenticate`].
    pub fn authenticate_private(
        &mut self,
        challenge: &Challenge,
        sealed: &[u8],
        now: u64,
    ) -> UpdateResult<AuthenticatedCard> {
        self.consume(challenge, now)?;
        let plain = hpke::open(&self.identity_key, IDENTITY_INFO, &challenge.to_bytes(), sealed)
            .map_err(|_| UpdateError::SealedIdentity)?;
        let identity = SealedIdentity::parse(&plain).map_err(|_| UpdateError::SealedIdentity)?;
        self.check_auth(&identity.card_id, challenge, &identity.auth, now, true)
    }

    fn check_auth(
        &self,
        card_id: &[u8],
        challenge: &Challenge,
        response: &DeviceAuthResponse,
        now: u64,
        private: bool,
    ) -> UpdateResult<AuthenticatedCard> {
        let card = self.card(card_id)?;
        let now_i = i64::try_from(now).unwrap_or(i64::MAX);
        let device_key =
            self.check_device_certificate(&card.issuer, card_id, &card.device_certificate, now_i)?;
        verify_device_auth(&device_key, card_id, challenge, response)?;
        let acknowledged = self.store.acknowledged(card_id);
        if response.last_sequence < acknowledged {
            return Err(UpdateError::RolledBack { reported: response.last_sequence, acknowledged });
        }
        Ok(AuthenticatedCard {
            card_id: card_id.to_vec(),
            last_sequence: response.last_sequence,
            private,
        })
    }

    /// The packages to deliver to an authenticated card, in sequence order.
    pub fn pending(&self, card: &AuthenticatedCard) -> Vec<QueuedPackage> {
        self.store.pending(&card.card_id)
    }

    /// The pending packages as they go to the terminal, `(sequence, bytes)` in order: as
    /// stored, or, for a card authenticated in the privacy variant, each wrapped once more with
    /// HPKE to the card's update key (`"TUW1" || enc || ct`, info
    /// `tessera/update/delivery-v1\0`), so the relaying terminal cannot read the card id.
    pub fn deliverable(
        &self,
        rng: &mut dyn Rng,
        card: &AuthenticatedCard,
    ) -> UpdateResult<Vec<(u64, Vec<u8>)>> {
        let pending = self.store.pending(&card.card_id);
        if !card.private {
            return Ok(pending.into_iter().map(|p| (p.sequence, p.bytes)).collect());
        }
        let key = self.card(&card.card_id)?.update_key;
        pending
            .into_iter()
            .map(|p| Ok((p.sequence, wrap_for_delivery_with_rng(rng, &key, &p.bytes)?)))
            .collect()
    }

    /// Accepts a receipt: it must name a pending package by sequence and digest and carry the
    /// card's device signature. Marks the package delivered; returns its sequence.
    pub fn accept_receipt(
        &mut self,
        card: &AuthenticatedCard,
        receipt: &[u8],
    ) -> UpdateResult<u64> {
        let receipt = Receipt::parse(receipt).map_err(|_| UpdateError::ReceiptMismatch)?;
        let pending = self
            .store
            .pending(&card.card_id)
            .into_iter()
            .find(|p| p.sequence == receipt.sequence)
            .ok_or(UpdateError::ReceiptMismatch)?;
        if sha256(&pending.bytes) != receipt.digest {
            return Err(UpdateError::ReceiptMismatch);
        }
        let record = self.card(&card.card_id)?;
        verify_receipt(&record.device_certificate, &card.card_id, &receipt)?;
        if !self.store.mark_delivered(&card.card_id, receipt.sequence) {
            return Err(UpdateError::ReceiptMismatch);
        }
        Ok(receipt.sequence)
    }
}

pub mod cli;
pub mod issuance;
pub mod schedule;
#[cfg(test)]
mod tests;
