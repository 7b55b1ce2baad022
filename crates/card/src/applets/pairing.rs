//! The `pairing` applet: secure terminal (seed 002, DESIGN.md 5), the security domain of the
//! services a paired terminal uses.
//!
//! - **Enrolment** (Fig. 9), a one-time state before the card certificate is installed, every
//!   step gated by the verified global PIN: GENERATE KEY makes the card's P-256 key and proves
//!   possession by signing a labelled enrolment structure the card builds itself (card id,
//!   public key, CA challenge); INSTALL CERTIFICATE stores the CA certificate (once) and then
//!   the card certificate (role card, for this key, issued by that CA), which ends enrolment
//!   for good: the trust anchor can never change afterwards.
//! - **Time**: the card has no clock. Its time floor is the latest CA-signed time it has seen
//!   (a loaded CRL's `thisUpdate`, a certificate's `notBefore`); a certificate whose
//!   `notAfter` is below the floor is expired.
//! - **Setup** (Fig. 7): PAIR BEGIN (PIN verified) checks the terminal certificate (chain to
//!   the installed CA, role terminal, not expired, not revoked by the loaded CRL), runs ECDH
//!   between both sides' ephemeral keys, derives the pairing key from the transcript (both
//!   certificates, both ephemeral keys, both nonces), signs the transcript and answers its
//!   certificate and key confirmation; PAIR CONFIRM checks the terminal's signature (so only
//!   the holder of the terminal key pairs) and confirmation and stores the pairing STAGED.
//! - **Authentication** (Fig. 6): USE PAIRING names the pairing by terminal key id;
//!   INITIALIZE UPDATE / EXTERNAL AUTHENTICATE (SCP03, random card challenge, level 33 only)
//!   under static keys derived from the pairing key. The first success commits a staged
//!   pairing; later ones write nothing.
//! - **Services** (Fig. 8, claims 2-4): INVOKE inside the session reaches a hosted
//!   [`service::Service`]; GET DATA may also run protected. Any unprotected command, any SELECT, a reset or a MAC failure ends
//!   the session.
//!
//! At most [`MAX_PAIRINGS`] pairings, keyed by terminal certificate serial; a new terminal
//! replaces a staged pairing first, else the least recently set up or first used one (the
//! order is updated only where the card writes anyway, so authentication stays write-free).
//! `docs/pairing.md` has the APDUs and every failure.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::ecdh::EphemeralSecret;
use tessera_crypto::ecdsa::{PublicKey, Signature, SigningKey};
use tessera_crypto::kdf::{self, Label};
use tessera_crypto::keys::{AesKey, AesKeyLen};
use tessera_crypto::mac;
use tessera_crypto::revocation::crl_times;
use tessera_crypto::scp03::{
    CardChallengeSource, CardConfig, ExternalAuthOutcome, INS_EXTERNAL_AUTHENTICATE,
    INS_INITIALIZE_UPDATE, Scp03Card, SecurityLevel, StaticKeys, has_secure_messaging,
};
use tessera_crypto::x509::{Certificate, Crl, Role, verify_chain};
use tessera_proto::pairing::{
    self as proto, CERT_CA, CERT_CARD, CHALLENGE_LEN, CONFIRMATION_LEN, DATA_CARD_CERTIFICATE,
    DATA_STATUS, EnrolmentProof, MAX_KEY_ID_LEN, NONCE_LEN, PAIRING_KVN, PairBegin,
    PairBeginResponse, PairConfirm, ServiceId, Status, Transcript,
};
use zeroize::Zeroize;

use crate::applet::{
    Applet, Context, Persistent, StateError, TearScenario, decode_state, encode_state, fci,
};

pub mod scenarios;
pub mod service;

pub use tessera_proto::pairing::{AID, MAX_PAIRINGS};

use service::{Caller, Service};

/// The services this applet hosts, one line each.
pub fn services() -> Vec<Box<dyn Service>> {
    vec![Box::new(super::ledger::Ledger::new()), Box::new(super::notes::Notes::new())]
}

/// The level every paired session runs at.
pub const SESSION_LEVEL: SecurityLevel = SecurityLevel::Full;

/// `6300`: a signature, confirmation or cryptogram did not verify.
const VERIFICATION_FAILED: StatusWord = StatusWord(0x6300);
/// `6984`: a certificate or CRL was refused (other CA, wrong role, expired, revoked).
const REFUSED: StatusWord = StatusWord::REFERENCE_DATA_NOT_USABLE;

/// One pairing with a terminal.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pairing {
    /// The terminal certificate's serial number.
    terminal: Vec<u8>,
    /// The pairing key (AES-128).
    key: [u8; 16],
    /// Set up but never authenticated.
    staged: bool,
    /// Replacement order: larger is more recent.
    order: u64,
}

impl Drop for Pairing {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

/// The applet's persistent state (besides the services').
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PairingState {
    /// The card's private key (P-256 scalar), from GENERATE KEY.
    key: Option<[u8; 32]>,
    ca_certificate: Option<Vec<u8>>,
    card_certificate: Option<Vec<u8>>,
    /// The card certificate's serial (its key id).
    card_key_id: Vec<u8>,
    crl: Option<Vec<u8>>,
    crl_this_update: i64,
    time_floor: i64,
    pairings: Vec<Pairing>,
    next_order: u64,
}

impl Drop for PairingState {
    fn drop(&mut self) {
        if let Some(k) = self.key.as_mut() {
            k.zeroize();
        }
    }
}

/// The encoding of the whole persistent state: own state and each service's.
#[derive(Serialize, Deserialize)]
struct Saved {
    state: PairingState,
    services: Vec<(u8, Vec<u8>)>,
}

/// A PAIR BEGIN waiting for its PAIR CONFIRM.
struct PendingSetup {
    terminal: Vec<u8>,
    terminal_key: PublicKey,
    terminal_not_before: i64,
    terminal_message: Vec<u8>,
    pairing_key: AesKey,
    expected_confirmation: [u8; CONFIRMATION_LEN],
}

#[derive(Default)]
struct Volatile {
    pending: Option<PendingSetup>,
    /// The pairing USE PAIRING named (terminal key id).
    chosen: Option<Vec<u8>>,
    /// The terminal of the open session.
    session: Option<Vec<u8>>,
    scp: Scp03Card,
}

/// The pairing applet.
pub struct PairingApplet {
    state: Persistent<PairingState>,
    services: Vec<Box<dyn Service>>,
    volatile: Volatile,
}

impl Default for PairingApplet {
    fn default() -> Self {
        Self::new()
    }
}

fn confirmation(key: &AesKey, context: &[u8], label: &str) -> [u8; CONFIRMATION_LEN] {
    let confirm = kdf::derive_key(key, Label::PAIRING_CONFIRMATION, context, AesKeyLen::Aes128);
    mac::cmac(&confirm, &[label.as_bytes()])
}

/// The pairing key from the ECDH shared secret and the transcript context.
pub fn pairing_key(shared: &tessera_crypto::ecdh::SharedSecret, context: &[u8]) -> AesKey {
    kdf::derive_key(&shared.extract(None), Label::PAIRING_KEY, context, AesKeyLen::Aes128)
}

/// Both key confirmation values `(card, terminal)` of a setup.
pub fn confirmations(
    pairing_key: &AesKey,
    context: &[u8],
) -> ([u8; CONFIRMATION_LEN], [u8; CONFIRMATION_LEN]) {
    (
        confirmation(pairing_key, context, proto::LABEL_CONFIRM_CARD),
        confirmation(pairing_key, context, proto::LABEL_CONFIRM_TERMINAL),
    )
}

/// Compares two key confirmation values in constant time.
pub fn confirmation_matches(a: &[u8; CONFIRMATION_LEN], b: &[u8; CONFIRMATION_LEN]) -> bool {
    bool::from(a.ct_eq(b))
}

/// The SCP03 static key set of a pairing (key version [`PAIRING_KVN`]).
pub fn session_keys(
    pairing_key: &AesKey,
    card_key_id: &[u8],
    terminal_key_id: &[u8],
) -> StaticKeys {
    let context = proto::session_key_context(card_key_id, terminal_key_id);
    let derive = |label| kdf::derive_key(pairing_key, label, &context, AesKeyLen::Aes128);
    StaticKeys {
        enc: derive(Label::PAIRING_SCP03_ENC),
        mac: derive(Label::PAIRING_SCP03_MAC),
        dek: derive(Label::PAIRING_SCP03_DEK),
        kvn: PAIRING_KVN,
    }
}

/// The diversification data a card answers in INITIALIZE UPDATE: its key id, zero padded.
pub fn diversification_data(card_key_id: &[u8]) -> [u8; 10] {
    let mut d = [0u8; 10];
    let n = card_key_id.len().min(10);
    d[..n].copy_from_slice(&card_key_id[..n]);
    d
}

impl PairingApplet {
    /// An applet awaiting enrolment, with the registered services.
    pub fn new() -> PairingApplet {
        PairingApplet {
            state: Persistent::default(),
            services: services(),
            volatile: Volatile::default(),
        }
    }

    fn end_session(&mut self) {
        self.volatile.scp.close();
        self.volatile.session = None;
    }

    fn enrolled(&self) -> bool {
        self.state.card_certificate.is_some()
    }

    fn ca(&self) -> Result<Certificate, StatusWord> {
        self.state
            .ca_certificate
            .clone()
            .map(Certificate::from_der)
            .transpose()
            .map_err(|_| StatusWord::UNKNOWN)?
            .ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)
    }

    fn require_pin(ctx: &Context<'_>) -> Result<(), StatusWord> {
        if ctx.security().global_pin_verified {
            Ok(())
        } else {
            Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED)
        }
    }

    fn signing_key(&self) -> Result<SigningKey, StatusWord> {
        let key = self.state.key.as_ref().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        SigningKey::from_bytes(key).map_err(|_| StatusWord::UNKNOWN)
    }

    /// Checks a peer certificate: chain to the CA, role, not expired at the floor, not
    /// revoked by the loaded CRL. Returns its serial, key and `notBefore`.
    fn check_certificate(
        &self,
        der: &[u8],
        role: Role,
    ) -> Result<(Vec<u8>, PublicKey, i64), StatusWord> {
        let ca = self.ca()?;
        let cert = Certificate::from_der(der.to_vec()).map_err(|_| StatusWord::INCORRECT_DATA)?;
        let info = cert.info().map_err(|_| StatusWord::INCORRECT_DATA)?;
        let at = self.state.time_floor.max(info.validity.not_before);
        verify_chain(&cert, &[], &ca, at, Some(role)).map_err(|_| REFUSED)?;
        if info.serial.is_empty() || info.serial.len() > MAX_KEY_ID_LEN {
            return Err(REFUSED);
        }
        if let Some(crl) = &self.state.crl {
            let revoked = Crl::from_der(crl.clone())
                .is_revoked(&ca, &info.serial, self.state.crl_this_update)
                .map_err(|_| StatusWord::UNKNOWN)?;
            if revoked {
                return Err(REFUSED);
            }
        }
        Ok((info.serial, info.public_key, info.validity.not_before))
    }

    fn generate_key(&mut self, ctx: &mut Context<'_>, data: &[u8]) -> Result<Vec<u8>, StatusWord> {
        Self::require_pin(ctx)?;
        if self.enrolled() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let challenge: [u8; CHALLENGE_LEN] =
            data.try_into().map_err(|_| StatusWord::WRONG_LENGTH)?;
        let key = SigningKey::generate(ctx.rng());
        let public_key = key.public_key().to_sec1_bytes();
        let card_id = ctx.card().card_id.clone();
        let signature =
            key.sign(&proto::enrolment_message(&card_id, &public_key, &challenge)).to_bytes();
        self.state.key = Some(*key.to_bytes());
        Ok(EnrolmentProof { public_key, signature }.to_bytes())
    }

    fn install_certificate(
        &mut self,
        ctx: &mut Context<'_>,
        which: u8,
        der: &[u8],
    ) -> Result<(), StatusWord> {
        if which != CERT_CA && which != CERT_CARD {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        Self::require_pin(ctx)?;
        if self.enrolled() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let cert = Certificate::from_der(der.to_vec()).map_err(|_| StatusWord::INCORRECT_DATA)?;
        let info = cert.info().map_err(|_| StatusWord::INCORRECT_DATA)?;
        if which == CERT_CA {
            if self.state.ca_certificate.is_some() {
                return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
            }
            if !info.is_ca {
                return Err(REFUSED);
            }
            let at = self.state.time_floor.max(info.validity.not_before);
            verify_chain(&cert, &[], &cert, at, None).map_err(|_| REFUSED)?;
            self.state.ca_certificate = Some(der.to_vec());
            self.state.time_floor = at;
            return Ok(());
        }
        let key = self.signing_key()?;
        if info.public_key != key.public_key() {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let (serial, _, not_before) = self.check_certificate(der, Role::Card)?;
        self.state.card_certificate = Some(der.to_vec());
        self.state.card_key_id = serial;
        self.state.time_floor = self.state.time_floor.max(not_before);
        Ok(())
    }

    fn load_crl(&mut self, der: &[u8]) -> Result<(), StatusWord> {
        if !self.enrolled() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let ca = self.ca()?;
        let crl = Crl::from_der(der.to_vec());
        let times = crl_times(&crl).map_err(|_| StatusWord::INCORRECT_DATA)?;
        // Verifies signature and issuer; the serial asked for does not matter.
        crl.is_revoked(&ca, &[1], times.this_update).map_err(|_| REFUSED)?;
        if times.this_update < self.state.crl_this_update
            || (self.state.crl.is_some() && times.this_update == self.state.crl_this_update)
        {
            // An older (or the same) list: never roll revocations back.
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let mut revoked = Vec::new();
        for p in &self.state.pairings {
            if crl.is_revoked(&ca, &p.terminal, times.this_update).map_err(|_| REFUSED)? {
                revoked.push(p.terminal.clone());
            }
        }
        self.state.pairings.retain(|p| !revoked.contains(&p.terminal));
        if self.volatile.chosen.as_ref().is_some_and(|c| revoked.contains(c)) {
            self.volatile.chosen = None;
        }
        self.state.crl = Some(der.to_vec());
        self.state.crl_this_update = times.this_update;
        self.state.time_floor = self.state.time_floor.max(times.this_update);
        Ok(())
    }

    fn pair_begin(&mut self, ctx: &mut Context<'_>, data: &[u8]) -> Result<Vec<u8>, StatusWord> {
        self.volatile.pending = None;
        Self::require_pin(ctx)?;
        let card_certificate =
            self.state.card_certificate.clone().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let begin = PairBegin::parse(data).map_err(|e| e.status_word())?;
        let terminal_ephemeral =
            PublicKey::from_sec1_bytes(&begin.ephemeral).map_err(|_| StatusWord::INCORRECT_DATA)?;
        let (terminal, terminal_key, terminal_not_before) =
            self.check_certificate(&begin.certificate, Role::Terminal)?;
        let card_key = self.signing_key()?;

        let mut nonce = [0u8; NONCE_LEN];
        ctx.rng().fill_random(&mut nonce);
        let ephemeral = EphemeralSecret::generate(ctx.rng());
        let ephemeral_public = ephemeral.public_key().to_sec1_bytes();
        let shared = ephemeral.diffie_hellman(&terminal_ephemeral);
        let transcript = Transcript {
            card_certificate: &card_certificate,
            terminal_certificate: &begin.certificate,
            terminal_ephemeral: &begin.ephemeral,
            card_ephemeral: &ephemeral_public,
            terminal_nonce: &begin.nonce,
            card_nonce: &nonce,
        };
        let context = transcript.context();
        let key = pairing_key(&shared, &context);
        let (card_confirmation, expected_confirmation) = confirmations(&key, &context);
        let signature = card_key.sign(&transcript.card_message()).to_bytes();
        self.volatile.pending = Some(PendingSetup {
            terminal,
            terminal_key,
            terminal_not_before,
            terminal_message: transcript.terminal_message(),
            pairing_key: key,
            expected_confirmation,
        });
        Ok(PairBeginResponse {
            nonce,
            ephemeral: ephemeral_public,
            signature,
            confirmation: card_confirmation,
            certificate: card_certificate,
        }
        .to_bytes())
    }

    fn pair_confirm(&mut self, ctx: &mut Context<'_>, data: &[u8]) -> Result<(), StatusWord> {
        // One attempt per PAIR BEGIN, whatever happens.
        let pending = self.volatile.pending.take().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        Self::require_pin(ctx)?;
        let confirm = PairConfirm::parse(data).map_err(|e| e.status_word())?;
        let signature =
            Signature::from_bytes(&confirm.signature).map_err(|_| VERIFICATION_FAILED)?;
        let signed = pending.terminal_key.verify(&pending.terminal_message, &signature).is_ok();
        let confirmed = confirmation_matches(&pending.expected_confirmation, &confirm.confirmation);
        if !(signed && confirmed) {
            return Err(VERIFICATION_FAILED);
        }
        let mut key = [0u8; 16];
        key.copy_from_slice(pending.pairing_key.expose_secret());
        self.store_pairing(Pairing { terminal: pending.terminal, key, staged: true, order: 0 });
        self.state.time_floor = self.state.time_floor.max(pending.terminal_not_before);
        Ok(())
    }

    /// Stores a new staged pairing, replacing this terminal's old one, else (when full) the
    /// oldest staged one, else the least recently set up or first used.
    fn store_pairing(&mut self, mut pairing: Pairing) {
        let state = &mut *self.state;
        let pairings = &mut state.pairings;
        pairings.retain(|p| p.terminal != pairing.terminal);
        if pairings.len() >= MAX_PAIRINGS {
            let victim = pairings
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| (!p.staged, p.order))
                .map(|(i, _)| i);
            if let Some(i) = victim {
                pairings.remove(i);
            }
        }
        pairing.order = state.next_order;
        state.next_order = state.next_order.saturating_add(1);
        pairings.push(pairing);
    }

    fn pairing(&self, terminal: &[u8]) -> Option<&Pairing> {
        self.state.pairings.iter().find(|p| p.terminal == terminal)
    }

    fn initialize_update(
        &mut self,
        ctx: &mut Context<'_>,
        cmd: &Command,
    ) -> Result<Response, StatusWord> {
        self.end_session();
        let chosen = self.volatile.chosen.as_ref().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let pairing = self.pairing(chosen).ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND)?;
        let keys =
            session_keys(&AesKey::Aes128(pairing.key), &self.state.card_key_id, &pairing.terminal);
        let config = CardConfig {
            keys: &keys,
            diversification_data: diversification_data(&self.state.card_key_id),
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

    fn external_authenticate(&mut self, cmd: &Command) -> Result<Response, StatusWord> {
        if !self.volatile.scp.awaiting_external_authenticate() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        if cmd.p1 != SESSION_LEVEL.to_byte() {
            self.end_session();
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        // The pairing keys are 128-bit random to an outsider and a failure ends the handshake,
        // so no persistent failure counter is kept: authentication never writes on failure
        // either, and a failure sends the terminal to setup (PIN required).
        match self.volatile.scp.external_authenticate(cmd, 0, u32::MAX) {
            Ok(ExternalAuthOutcome::Authenticated(_)) => {
                let chosen =
                    self.volatile.chosen.clone().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
                let order = self.state.next_order;
                let mut promoted = false;
                if let Some(p) =
                    self.state.pairings.iter_mut().find(|p| p.terminal == chosen && p.staged)
                {
                    // First success: commit the pairing (the runtime writes it with this
                    // command's answer) and make it the most recent.
                    p.staged = false;
                    p.order = order;
                    promoted = true;
                }
                if promoted {
                    self.state.next_order = order.saturating_add(1);
                }
                self.volatile.session = Some(chosen);
                Ok(Response::ok(Vec::new()))
            }
            Ok(other) => {
                self.end_session();
                Ok(other.response())
            }
            Err(e) => {
                self.end_session();
                Err(e.status_word())
            }
        }
    }

    fn invoke(&mut self, cmd: &Command) -> Result<Response, StatusWord> {
        let terminal =
            self.volatile.session.clone().ok_or(StatusWord::SECURITY_STATUS_NOT_SATISFIED)?;
        let id = ServiceId::from_code(cmd.p1).ok_or(StatusWord::INCORRECT_P1P2)?;
        let service =
            self.services.iter_mut().find(|s| s.id() == id).ok_or(StatusWord::INCORRECT_P1P2)?;
        service.invoke(Caller { terminal: &terminal }, cmd.p2, &cmd.data).map(Response::ok)
    }

    fn get_data(&self, p2: u8) -> Result<Vec<u8>, StatusWord> {
        match p2 {
            DATA_CARD_CERTIFICATE => {
                self.state.card_certificate.clone().ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND)
            }
            DATA_STATUS => {
                let staged = self.state.pairings.iter().filter(|p| p.staged).count();
                Ok(Status {
                    enrolled: self.enrolled(),
                    time_floor: self.state.time_floor,
                    committed: (self.state.pairings.len() - staged) as u8,
                    staged: staged as u8,
                }
                .to_bytes())
            }
            _ => Err(StatusWord::INCORRECT_P1P2),
        }
    }

    fn plain(&mut self, ctx: &mut Context<'_>, cmd: &Command) -> Result<Response, StatusWord> {
        if cmd.cla != proto::CLA_PROPRIETARY {
            return Err(StatusWord::CLA_NOT_SUPPORTED);
        }
        match cmd.ins {
            INS_INITIALIZE_UPDATE => self.initialize_update(ctx, cmd),
            proto::INS_GENERATE_KEY => {
                if cmd.p1 != 0 || cmd.p2 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                self.generate_key(ctx, &cmd.data).map(Response::ok)
            }
            proto::INS_INSTALL_CERTIFICATE => {
                if cmd.p2 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                self.install_certificate(ctx, cmd.p1, &cmd.data).map(|()| Response::ok(Vec::new()))
            }
            proto::INS_LOAD_CRL => {
                if cmd.p1 != 0 || cmd.p2 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                self.load_crl(&cmd.data).map(|()| Response::ok(Vec::new()))
            }
            proto::INS_PAIR_BEGIN => {
                if cmd.p1 != 0 || cmd.p2 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                self.pair_begin(ctx, &cmd.data).map(Response::ok)
            }
            proto::INS_PAIR_CONFIRM => {
                if cmd.p1 != 0 || cmd.p2 != 0 {
                    self.volatile.pending = None;
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                self.pair_confirm(ctx, &cmd.data).map(|()| Response::ok(Vec::new()))
            }
            proto::INS_USE_PAIRING => {
                if cmd.p1 != 0 || cmd.p2 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                self.volatile.chosen = None;
                if cmd.data.is_empty() || cmd.data.len() > MAX_KEY_ID_LEN {
                    return Err(StatusWord::INCORRECT_DATA);
                }
                self.pairing(&cmd.data).ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND)?;
                self.volatile.chosen = Some(cmd.data.clone());
                Ok(Response::ok(Vec::new()))
            }
            proto::INS_GET_DATA if cmd.p1 == 0 => self.get_data(cmd.p2).map(Response::ok),
            proto::INS_GET_DATA => Err(StatusWord::INCORRECT_P1P2),
            // A service operation outside the protected session.
            proto::INS_INVOKE => Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED),
            _ => Err(StatusWord::INS_NOT_SUPPORTED),
        }
    }
}

impl Applet for PairingApplet {
    fn aid(&self) -> &'static [u8] {
        AID
    }

    fn name(&self) -> &'static str {
        "pairing"
    }

    fn save(&self) -> Vec<u8> {
        encode_state(&Saved {
            state: (*self.state).clone(),
            services: self.services.iter().map(|s| (s.id().code(), s.save())).collect(),
        })
    }

    fn load(&mut self, state: &[u8]) -> Result<(), StateError> {
        let saved: Saved = decode_state(state)?;
        for service in &mut self.services {
            // A service this build adds after the image was made keeps its fresh state.
            if let Some((_, bytes)) =
                saved.services.iter().find(|(id, _)| *id == service.id().code())
            {
                service.load(bytes)?;
            }
        }
        self.state = Persistent::new(saved.state);
        Ok(())
    }

    fn take_changed(&mut self) -> bool {
        // Every flag is taken (no short circuit), so none stays set for the next command.
        self.services.iter_mut().fold(self.state.take_changed(), |any, s| s.take_changed() | any)
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
        if gp && cmd.ins == INS_EXTERNAL_AUTHENTICATE && has_secure_messaging(cmd) {
            return self.external_authenticate(cmd);
        }
        if has_secure_messaging(cmd) {
            if self.volatile.session.is_none() {
                self.end_session();
                return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
            }
            let plain = match self.volatile.scp.unwrap_command(cmd) {
                Ok(plain) => plain,
                Err(e) => {
                    // Bad MAC, replay, reorder, modified header: the session is over.
                    self.end_session();
                    return Err(e.status_word());
                }
            };
            // Inside the session: INVOKE, and GET DATA (read-only).
            let response = match (plain.cla, plain.ins, plain.p1) {
                (proto::CLA_PROPRIETARY, proto::INS_INVOKE, _) => self.invoke(&plain),
                (proto::CLA_PROPRIETARY, proto::INS_GET_DATA, 0) => {
                    self.get_data(plain.p2).map(Response::ok)
                }
                _ => Err(StatusWord::INS_NOT_SUPPORTED),
            }
            .unwrap_or_else(Response::status);
            return self.volatile.scp.wrap_response(&response).map_err(|e| e.status_word());
        }
        // Any unprotected command ends the session.
        self.end_session();
        self.plain(ctx, cmd)
    }

    fn tear_scenarios(&self) -> Vec<TearScenario> {
        scenarios::all()
    }
}
