//! The host side of the home card (seed 004): a typed client of the `home` applet over any
//! [`CardChannel`], its enrolment with a CA, and [`HomeCardSession`], which adds the ten-minute
//! idle fallback the card cannot keep itself.
//!
//! ```text
//! let mut card = HomeCard::new(channel);
//! card.select()?;                       // prohibited
//! card.verify_pin1(&pin1)?;             // remote-access wait (local PIN on the home server)
//! card.verify_pin2(&pin2)?;             // enabled (PIN2 relayed over the control channel)
//! let sig = card.sign_tls13(&hash)?;    // DER ECDSA, for the client CertificateVerify
//! card.end()?;                          // back to remote-access wait
//! ```
//!
//! **Idle fallback (Fig. 6 step 6-11).** The card has no clock, so the host that powers it
//! keeps the time: [`HomeCardSession`] records the last command and, before any command, if
//! the card has been enabled and idle for at least [`IDLE_LIMIT`] (ten minutes), sends END
//! and answers [`CardError::IdleFallback`]: the caller must send PIN2 again. The clock is a
//! [`Clock`] so tests use a [`ManualClock`] and never sleep. A power loss or reset drops the
//! card to prohibited anyway, so the fallback never needs the card's cooperation to be safe
//! in the other direction.
//!
//! `docs/home-card.md` lists every APDU.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_apdu::{Command, Response, StatusWord};
use tessera_card::applets::isd;
use tessera_card::pin::PinBlock;
use tessera_crypto::CryptoError;
use tessera_crypto::ecdsa::{PublicKey, Signature};
use tessera_crypto::rng::{OsRng, Rng};
use tessera_crypto::scp03::{SecurityLevel, StaticKeys};
use tessera_crypto::x509::{self, CaSigner, Certificate, IssueRequest, Role, Validity};
use tessera_proto::home::{
    self as proto, CancelChallenge, CancelConfirmation, CancelReceipt, CancelRequest, ChargeNotice,
    EnrolmentProof, LogEntry, LogPage, PAY_CHALLENGE_LEN, PaymentToken, REF_PIN1, REF_PIN2,
    REF_PUK, RefillAck, RefillVoucher, Signed, Status, WalletInfo,
};

use crate::channel::{CardChannel, ChannelError};
use crate::secure::SecureChannel;

/// The wire formats of the home applet (`tessera-proto`), for callers of this module.
pub use tessera_proto::home as wire;

/// How long an enabled home card may stay unused before it falls back to remote-access
/// wait (Fig. 6: ten minutes).
pub const IDLE_LIMIT: Duration = Duration::from_secs(600);

/// Lifetime of the certificates [`HomeCard::enrol`] issues: two years.
pub const CERTIFICATE_LIFETIME: i64 = 2 * 365 * 86_400;

/// Why a home- or access-card operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// The transport failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The card refused a command with this status word.
    #[error("the card refused {step}: {sw}")]
    Card {
        /// The command.
        step: &'static str,
        /// Its status word.
        sw: StatusWord,
    },
    /// A wrong PIN or PUK: `tries_left` more tries.
    #[error("wrong PIN ({tries_left} tries left)")]
    WrongPin {
        /// Tries left before it blocks.
        tries_left: u8,
    },
    /// The PIN (or PUK) is blocked: the card is unusable until unblocked with the PUK.
    #[error("the PIN is blocked: unblock it with the PUK")]
    Blocked,
    /// The card is not in the state the command needs (home: enabled; access: unlocked).
    #[error("the card is locked: verify the PIN first")]
    Locked,
    /// The home card was idle for the limit and has been sent back to remote-access wait
    /// (or the access card relocked): verify PIN2 (the PIN) again.
    #[error("the card was idle for {0:?} and fell back: verify the PIN again")]
    IdleFallback(Duration),
    /// A card answer did not parse.
    #[error("malformed card answer: {0}")]
    Malformed(String),
    /// A card answer did not verify (proof of possession, signature).
    #[error("the card's answer does not verify: {0}")]
    Verification(String),
    /// The secure channel to the card-management applet failed (personalisation).
    #[error("card-management session: {0}")]
    Session(String),
    /// A cryptographic operation (certificate issuance) failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// The result type of this module.
pub type Result<T> = std::result::Result<T, CardError>;

/// Maps a non-`9000` answer: PIN statuses to [`CardError::WrongPin`]/[`CardError::Blocked`],
/// `6982` to [`CardError::Locked`], others to [`CardError::Card`].
pub(crate) fn check(r: Response, step: &'static str) -> Result<Vec<u8>> {
    match r.sw {
        StatusWord::SUCCESS => Ok(r.data),
        StatusWord::AUTH_METHOD_BLOCKED => Err(CardError::Blocked),
        StatusWord::SECURITY_STATUS_NOT_SATISFIED => Err(CardError::Locked),
        sw => match sw.tries() {
            Some(tries_left) => Err(CardError::WrongPin { tries_left }),
            None => Err(CardError::Card { step, sw }),
        },
    }
}

pub(crate) fn run<C: CardChannel>(
    channel: &mut C,
    cmd: &Command,
    step: &'static str,
) -> Result<Vec<u8>> {
    check(channel.transmit(cmd)?, step)
}

pub(crate) fn malformed(e: impl std::fmt::Display) -> CardError {
    CardError::Malformed(e.to_string())
}

/// SELECT by AID.
pub(crate) fn select_aid<C: CardChannel>(
    channel: &mut C,
    aid: &[u8],
    step: &'static str,
) -> Result<()> {
    let cmd = Command::new(0x00, 0xA4, 0x04, 0x00).with_data(aid.to_vec()).with_le(256);
    run(channel, &cmd, step).map(|_| ())
}

/// The card id (card-management applet, GET DATA `0045`). Selects the card-management
/// applet, which ends the home or access applet's session (back to prohibited).
pub fn card_id<C: CardChannel>(channel: &mut C) -> Result<Vec<u8>> {
    select_aid(channel, isd::AID, "SELECT of the card-management applet")?;
    let data = run(channel, &Command::new(0x80, 0xCA, 0x00, 0x45).with_le(256), "GET DATA")?;
    match data.as_slice() {
        [0x45, len, value @ ..] if usize::from(*len) == value.len() && !value.is_empty() => {
            Ok(value.to_vec())
        }
        _ => Err(CardError::Malformed("card id".into())),
    }
}

/// Gives a blank card (OP_READY) its card id: an SCP03 session (C-MAC + C-DECRYPTION) with
/// the card-management applet under `keys` (a blank card's are
/// [`StaticKeys::gp_test_keys`]`(`[`isd::INITIAL_KVN`]`)`), then STORE DATA of DGI `0101`.
/// Home and access cards need a card id before GENERATE KEY.
pub fn personalize_card_id<C: CardChannel>(
    channel: &mut C,
    keys: &StaticKeys,
    id: &[u8],
) -> Result<()> {
    if id.is_empty() || id.len() > 32 {
        return Err(CardError::Malformed("a card id has 1 to 32 bytes".into()));
    }
    select_aid(channel, isd::AID, "SELECT of the card-management applet")?;
    let (mut session, _) =
        SecureChannel::open(&mut *channel, keys, SecurityLevel::CMacCDec, isd::AID)
            .map_err(|e| CardError::Session(e.to_string()))?;
    let mut data = vec![0x01, 0x01, id.len() as u8];
    data.extend_from_slice(id);
    let r = session
        .transmit(&Command::new(0x80, 0xE2, 0x88, 0x00).with_data(data))
        .map_err(|e| CardError::Session(e.to_string()))?;
    check(r, "STORE DATA (card id)").map(|_| ())
}

/// A monotonic clock, injectable so timers (the idle limits here, the home server's session
/// cache lifetime) are tested without sleeping. The one clock of the host and home crates.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// A shared clock (`Arc<dyn Clock>` where one clock drives several parts).
impl<T: Clock + ?Sized> Clock for Arc<T> {
    fn now(&self) -> Instant {
        (**self).now()
    }
}

/// The system's monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told (tests); clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    start: Instant,
    offset: Arc<Mutex<Duration>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock standing at an arbitrary start.
    pub fn new() -> ManualClock {
        ManualClock { start: Instant::now(), offset: Arc::new(Mutex::new(Duration::ZERO)) }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut offset = self.offset.lock().unwrap_or_else(|e| e.into_inner());
        *offset += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.offset.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The idle rule of Figs. 6 and 7 on a [`Clock`]: started when the card is unlocked, it
/// expires once the card has been unused for the limit ([`IDLE_LIMIT`] by default). The card
/// has no clock, so whoever powers it keeps this timer: [`HomeCardSession`] and
/// [`crate::access::AccessCardSession`] here, the home server's software card in tests.
#[derive(Debug, Clone)]
pub struct IdleTimer<K = SystemClock> {
    clock: K,
    limit: Duration,
    last_use: Option<Instant>,
}

impl<K: Clock> IdleTimer<K> {
    /// A stopped timer with the ten-minute limit.
    pub fn new(clock: K) -> Self {
        IdleTimer { clock, limit: IDLE_LIMIT, last_use: None }
    }

    /// Sets another limit.
    pub fn with_limit(mut self, limit: Duration) -> Self {
        self.limit = limit;
        self
    }

    /// The card was just unlocked: the timer runs from now.
    pub fn start(&mut self) {
        self.last_use = Some(self.clock.now());
    }

    /// The card was locked: the timer stops.
    pub fn stop(&mut self) {
        self.last_use = None;
    }

    /// True while the timer runs (the card unlocked, not yet expired).
    pub fn is_running(&self) -> bool {
        self.last_use.is_some()
    }

    /// If the timer runs and the card has been unused for the limit, stops it and returns
    /// how long the card was unused (the caller then locks the card).
    pub fn expire(&mut self) -> Option<Duration> {
        let idle = self.clock.now().saturating_duration_since(self.last_use?);
        (idle >= self.limit).then(|| {
            self.last_use = None;
            idle
        })
    }

    /// Records a use now, if the timer runs.
    pub fn touch(&mut self) {
        if self.last_use.is_some() {
            self.last_use = Some(self.clock.now());
        }
    }
}

/// What [`HomeCard::enrol`] installed.
#[derive(Debug, Clone)]
pub struct HomeEnrolment {
    /// The TLS client certificate (role home).
    pub tls_certificate: Certificate,
    /// The payment certificate (role payment, common name = card id).
    pub payment_certificate: Certificate,
}

/// Issues a certificate for a key whose holder proved possession over `message`.
pub(crate) fn certify(
    ca: &dyn CaSigner,
    ca_certificate: &Certificate,
    proof: &EnrolmentProof,
    message: &[u8],
    subject: &str,
    role: Role,
) -> Result<Certificate> {
    let key = PublicKey::from_sec1_bytes(&proof.public_key)?;
    let signature = Signature::from_bytes(&proof.signature)?;
    key.verify(message, &signature)
        .map_err(|_| CardError::Verification("proof of possession".into()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let serial = x509::random_serial(&mut OsRng);
    Ok(x509::issue(
        ca,
        ca_certificate,
        &IssueRequest {
            subject_cn: subject,
            public_key: &key,
            roles: &[role],
            serial: &serial,
            validity: Validity { not_before: now - 60, not_after: now + CERTIFICATE_LIFETIME },
            ca_path_len: None,
        },
    )?)
}

/// A typed client of the home applet. Methods send one command each (unless said) and do
/// not select: call [`HomeCard::select`] first, and do not select another applet while a
/// session should last (selection ends the card's security state).
#[derive(Debug)]
pub struct HomeCard<C> {
    channel: C,
}

impl<C: CardChannel> HomeCard<C> {
    /// A client over `channel` (no I/O).
    pub fn new(channel: C) -> HomeCard<C> {
        HomeCard { channel }
    }

    /// The channel.
    pub fn channel_mut(&mut self) -> &mut C {
        &mut self.channel
    }

    /// Gives the channel back.
    pub fn into_inner(self) -> C {
        self.channel
    }

    fn run(&mut self, cmd: &Command, step: &'static str) -> Result<Vec<u8>> {
        run(&mut self.channel, cmd, step)
    }

    /// SELECT the home applet (the card is then prohibited).
    pub fn select(&mut self) -> Result<()> {
        select_aid(&mut self.channel, proto::AID, "SELECT of the home applet")
    }

    /// The applet status (state, tries, what is installed).
    pub fn status(&mut self) -> Result<Status> {
        let data = self.run(&proto::get_data_command(proto::DATA_STATUS), "GET DATA (status)")?;
        Status::parse(&data).map_err(malformed)
    }

    /// SET PINS, once, on a new card.
    pub fn set_pins(&mut self, pin1: &PinBlock, pin2: &PinBlock, puk: &PinBlock) -> Result<()> {
        let cmd = proto::set_pins_command(pin1.as_bytes(), pin2.as_bytes(), puk.as_bytes());
        self.run(&cmd, "SET PINS").map(|_| ())
    }

    /// VERIFY PIN1: prohibited → remote-access wait.
    pub fn verify_pin1(&mut self, pin1: &PinBlock) -> Result<()> {
        self.run(&proto::verify_command(REF_PIN1, pin1.as_bytes()), "VERIFY PIN1").map(|_| ())
    }

    /// VERIFY PIN2: remote-access wait → enabled.
    pub fn verify_pin2(&mut self, pin2: &PinBlock) -> Result<()> {
        self.run(&proto::verify_command(REF_PIN2, pin2.as_bytes()), "VERIFY PIN2").map(|_| ())
    }

    /// END: enabled → remote-access wait.
    pub fn end(&mut self) -> Result<()> {
        self.run(&proto::end_command(), "END").map(|_| ())
    }

    /// VERIFY reset of PIN1: back to prohibited.
    pub fn lock(&mut self) -> Result<()> {
        self.run(&Command::new(0x00, 0x20, 0xFF, REF_PIN1), "VERIFY (reset)").map(|_| ())
    }

    /// RESET RETRY COUNTER of PIN1 (`second` false) or PIN2 (`second` true) with the PUK.
    pub fn unblock(&mut self, second: bool, puk: &PinBlock, new: &PinBlock) -> Result<()> {
        let r = if second { REF_PIN2 } else { REF_PIN1 };
        let cmd = proto::unblock_command(r, puk.as_bytes(), new.as_bytes());
        self.run(&cmd, "RESET RETRY COUNTER").map(|_| ())
    }

    /// CHANGE REFERENCE DATA of `reference` ([`wire::REF_PIN1`], [`wire::REF_PIN2`],
    /// [`wire::REF_PUK`]).
    pub fn change_pin(&mut self, reference: u8, old: &PinBlock, new: &PinBlock) -> Result<()> {
        if ![REF_PIN1, REF_PIN2, REF_PUK].contains(&reference) {
            return Err(CardError::Malformed("unknown PIN reference".into()));
        }
        let cmd = proto::change_command(reference, old.as_bytes(), new.as_bytes());
        self.run(&cmd, "CHANGE REFERENCE DATA").map(|_| ())
    }

    fn certificate_of(&mut self, which: u8, step: &'static str) -> Result<Certificate> {
        let der = self.run(&proto::get_data_command(which), step)?;
        Certificate::from_der(der).map_err(malformed)
    }

    /// The TLS client certificate (role home), readable in any state.
    pub fn certificate(&mut self) -> Result<Certificate> {
        self.certificate_of(proto::CERT_TLS, "GET DATA (TLS certificate)")
    }

    /// The issuer CA certificate installed on the card.
    pub fn ca_certificate(&mut self) -> Result<Certificate> {
        self.certificate_of(proto::CERT_CA, "GET DATA (CA certificate)")
    }

    /// The payment certificate (role payment, common name = card id).
    pub fn payment_certificate(&mut self) -> Result<Certificate> {
        self.certificate_of(proto::CERT_PAYMENT, "GET DATA (payment certificate)")
    }

    /// The TLS 1.3 client CertificateVerify signature (DER, `ecdsa_secp256r1_sha256`) over
    /// the content the card builds from this SHA-256 transcript hash. Enabled state only.
    pub fn sign_tls13(&mut self, transcript_hash: &[u8; 32]) -> Result<Vec<u8>> {
        self.run(&proto::sign_tls13_command(transcript_hash), "SIGN CV (TLS 1.3)")
    }

    /// The TLS 1.2 client CertificateVerify signature (DER) over the handshake messages
    /// (ClientHello up to ClientKeyExchange), which the card checks and hashes itself.
    /// Enabled state only.
    pub fn sign_tls12(&mut self, handshake_messages: &[u8]) -> Result<Vec<u8>> {
        self.run(&proto::sign_tls12_command(handshake_messages), "SIGN CV (TLS 1.2)")
    }

    /// Enrols the card (enabled state, card id `card_id`): installs the CA certificate,
    /// generates the TLS key and the payment key (opening the wallet in `currency`), checks
    /// each proof of possession, issues their certificates with `ca` (TLS: role home, common
    /// name `subject`; payment: role payment, common name the card id) and installs them.
    pub fn enrol(
        &mut self,
        ca: &dyn CaSigner,
        ca_certificate: &Certificate,
        card_id: &[u8],
        subject: &str,
        currency: [u8; 3],
    ) -> Result<HomeEnrolment> {
        let card_name = std::str::from_utf8(card_id)
            .map_err(|_| CardError::Malformed("the card id is not UTF-8".into()))?
            .to_owned();
        self.run(
            &proto::install_certificate_command(proto::CERT_CA, ca_certificate.der()),
            "INSTALL CERTIFICATE (CA)",
        )?;
        let mut challenge = [0u8; proto::CHALLENGE_LEN];
        OsRng.fill_random(&mut challenge);
        let data = self.run(&proto::generate_tls_key_command(&challenge), "GENERATE KEY (TLS)")?;
        let proof = EnrolmentProof::parse(&data).map_err(malformed)?;
        let message =
            proto::enrolment_message(card_id, proto::KEY_TLS, &proof.public_key, &challenge);
        let tls_certificate = certify(ca, ca_certificate, &proof, &message, subject, Role::Home)?;
        self.run(
            &proto::install_certificate_command(proto::CERT_TLS, tls_certificate.der()),
            "INSTALL CERTIFICATE (TLS)",
        )?;
        OsRng.fill_random(&mut challenge);
        let data = self.run(
            &proto::generate_payment_key_command(&challenge, &currency),
            "GENERATE KEY (payment)",
        )?;
        let proof = EnrolmentProof::parse(&data).map_err(malformed)?;
        let message =
            proto::enrolment_message(card_id, proto::KEY_PAYMENT, &proof.public_key, &challenge);
        let payment_certificate =
            certify(ca, ca_certificate, &proof, &message, &card_name, Role::Payment)?;
        self.run(
            &proto::install_certificate_command(proto::CERT_PAYMENT, payment_certificate.der()),
            "INSTALL CERTIFICATE (payment)",
        )?;
        Ok(HomeEnrolment { tls_certificate, payment_certificate })
    }

    /// TRUST a market's certificate (role server, from the card's CA). Enabled state.
    pub fn trust_market(&mut self, certificate: &Certificate) -> Result<()> {
        let cmd = proto::trust_command(proto::PARTY_MARKET, certificate.der());
        self.run(&cmd, "TRUST (market)").map(|_| ())
    }

    /// TRUST a bank's certificate (role server, from the card's CA). Enabled state.
    pub fn trust_bank(&mut self, certificate: &Certificate) -> Result<()> {
        let cmd = proto::trust_command(proto::PARTY_BANK, certificate.der());
        self.run(&cmd, "TRUST (bank)").map(|_| ())
    }

    /// The wallet: currency, balance, counters. Enabled state.
    pub fn wallet(&mut self) -> Result<WalletInfo> {
        let data = self.run(&proto::get_data_command(proto::DATA_WALLET), "GET DATA (wallet)")?;
        WalletInfo::parse(&data).map_err(malformed)
    }

    /// GET CHALLENGE: the value the market's next charge notice must answer (single use;
    /// selecting another applet drops it).
    pub fn pay_challenge(&mut self) -> Result<[u8; PAY_CHALLENGE_LEN]> {
        let data = self.run(&proto::pay_challenge_command(), "GET CHALLENGE")?;
        data.as_slice().try_into().map_err(|_| CardError::Malformed("challenge length".into()))
    }

    /// PAY: the card checks the market's notice and debits; the payment token (signature
    /// not checked here: the market checks it). Enabled state.
    pub fn pay(&mut self, notice: &Signed<ChargeNotice>) -> Result<Signed<PaymentToken>> {
        let data = self.run(&proto::pay_command(notice), "PAY")?;
        Signed::parse(&data).map_err(malformed)
    }

    /// CREDIT: the card checks the bank's voucher and credits; its acknowledgement. Enabled.
    pub fn credit(&mut self, voucher: &Signed<RefillVoucher>) -> Result<Signed<RefillAck>> {
        let data = self.run(&proto::credit_command(voucher), "CREDIT")?;
        Signed::parse(&data).map_err(malformed)
    }

    /// CANCEL: the card checks the market's confirmation and credits back; its receipt.
    pub fn cancel(
        &mut self,
        confirmation: &Signed<CancelConfirmation>,
    ) -> Result<Signed<CancelReceipt>> {
        let data = self.run(&proto::cancel_command(confirmation), "CANCEL")?;
        Signed::parse(&data).map_err(malformed)
    }

    /// SIGN CANCELLATION REQUEST: the card's signed request to cancel its payment to
    /// `what.market` for `what.order`, answering the market's challenge (signature not checked
    /// here: the market checks it). Changes nothing on the card. Enabled state.
    pub fn sign_cancel_request(&mut self, what: &CancelChallenge) -> Result<Signed<CancelRequest>> {
        let data =
            self.run(&proto::sign_cancel_request_command(what), "SIGN CANCELLATION REQUEST")?;
        Signed::parse(&data).map_err(malformed)
    }

    /// Every log entry from counter `from` on (READ LOG, page after page). Enabled state.
    pub fn read_log(&mut self, from: u64) -> Result<Vec<LogEntry>> {
        let mut out: Vec<LogEntry> = Vec::new();
        let mut next = from;
        loop {
            let data = self.run(&proto::read_log_command(next), "READ LOG")?;
            let page = LogPage::parse(&data).map_err(malformed)?;
            let last = page.entries.last().map(|e| e.counter);
            out.extend(page.entries);
            match last {
                Some(c) if page.more && c >= next => next = c + 1,
                _ => return Ok(out),
            }
        }
    }
}

/// A home card in use by the home server: the Fig. 6 states as the host last saw them, and
/// the idle fallback (see the module docs). Every operation first checks the idle time.
#[derive(Debug)]
pub struct HomeCardSession<C, K = SystemClock> {
    card: HomeCard<C>,
    idle: IdleTimer<K>,
}

impl<C: CardChannel, K: Clock> HomeCardSession<C, K> {
    /// A session over a card whose home applet is selected, with the ten-minute limit.
    pub fn new(card: HomeCard<C>, clock: K) -> Self {
        HomeCardSession { card, idle: IdleTimer::new(clock) }
    }

    /// Sets another idle limit.
    pub fn with_idle_limit(mut self, limit: Duration) -> Self {
        self.idle = self.idle.with_limit(limit);
        self
    }

    /// True while the host believes the card enabled (PIN2 verified, not ended, not idle).
    pub fn is_enabled(&self) -> bool {
        self.idle.is_running()
    }

    /// Sends END if the card has been enabled and idle for the limit; true if it did. A
    /// home server may call this from a timer so the fallback happens even without traffic.
    pub fn poll(&mut self) -> Result<bool> {
        self.expire().map(|idle| idle.is_some())
    }

    /// The idle check: END and the idle time if the timer expired.
    fn expire(&mut self) -> Result<Option<Duration>> {
        match self.idle.expire() {
            Some(idle) => self.card.end().map(|()| Some(idle)),
            None => Ok(None),
        }
    }

    /// The card for a command needing the enabled state: the idle check first
    /// ([`CardError::IdleFallback`] after sending END), then the use is recorded.
    fn enabled(&mut self) -> Result<&mut HomeCard<C>> {
        if let Some(idle) = self.expire()? {
            return Err(CardError::IdleFallback(idle));
        }
        self.idle.touch();
        Ok(&mut self.card)
    }

    /// Runs `f` on the card after the idle check; a `6982` answer means the card is not
    /// enabled (a reset happened), which the session then records.
    fn with_card<T>(&mut self, f: impl FnOnce(&mut HomeCard<C>) -> Result<T>) -> Result<T> {
        let r = f(self.enabled()?);
        if matches!(r, Err(CardError::Locked)) {
            self.idle.stop();
        }
        r
    }

    /// VERIFY PIN1 (prohibited → remote-access wait).
    pub fn verify_pin1(&mut self, pin1: &PinBlock) -> Result<()> {
        self.poll()?;
        self.card.verify_pin1(pin1)
    }

    /// VERIFY PIN2 (remote-access wait → enabled); starts the idle clock.
    pub fn verify_pin2(&mut self, pin2: &PinBlock) -> Result<()> {
        self.poll()?;
        self.card.verify_pin2(pin2)?;
        self.idle.start();
        Ok(())
    }

    /// END (the user's "operation over").
    pub fn end(&mut self) -> Result<()> {
        self.idle.stop();
        self.card.end()
    }

    /// [`HomeCard::sign_tls13`] after the idle check.
    pub fn sign_tls13(&mut self, transcript_hash: &[u8; 32]) -> Result<Vec<u8>> {
        self.with_card(|c| c.sign_tls13(transcript_hash))
    }

    /// [`HomeCard::sign_tls12`] after the idle check.
    pub fn sign_tls12(&mut self, handshake_messages: &[u8]) -> Result<Vec<u8>> {
        self.with_card(|c| c.sign_tls12(handshake_messages))
    }

    /// [`HomeCard::certificate`]: public data, readable in any state, so no idle check and
    /// not counted as use.
    pub fn certificate(&mut self) -> Result<Certificate> {
        self.card.certificate()
    }

    /// Any other operation on the card after the idle check (wallet operations, trust, log).
    /// Prefer [`HomeCardSession::run`], which also notices a card that is no longer enabled.
    pub fn card(&mut self) -> Result<&mut HomeCard<C>> {
        self.enabled()
    }

    /// Runs `f` on the card after the idle check; a [`CardError::Locked`] answer (the card
    /// was reset or ended elsewhere) makes the session forget the enabled state.
    pub fn run<T>(&mut self, f: impl FnOnce(&mut HomeCard<C>) -> Result<T>) -> Result<T> {
        self.with_card(f)
    }

    /// The card without the idle check (status, PIN management).
    pub fn card_unchecked(&mut self) -> &mut HomeCard<C> {
        &mut self.card
    }

    /// Gives the card back.
    pub fn into_inner(self) -> HomeCard<C> {
        self.card
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use tessera_card::{Card, CardOptions};
    use tessera_crypto::ecdsa::SigningKey;
    use tessera_crypto::tls::certificate_verify::{tls13_client_content, verify_tls13_client};
    use tessera_crypto::x509::self_signed_ca;
    use tessera_proto::home::{EntryKind, Message, Phase};

    use super::*;
    use crate::InProcessChannel;

    pub(crate) fn pin(v: &[u8]) -> PinBlock {
        PinBlock::from_value(v).unwrap()
    }

    pub(crate) struct Ca {
        pub key: SigningKey,
        pub certificate: Certificate,
    }

    pub(crate) fn ca() -> Ca {
        let key = SigningKey::generate(&mut OsRng);
        let now = 1_767_225_600;
        let certificate = self_signed_ca(
            &key,
            "home test CA",
            &[1],
            Validity { not_before: now, not_after: now + 20 * 365 * 86_400 },
        )
        .unwrap();
        Ca { key, certificate }
    }

    fn server(ca: &Ca, name: &str) -> (SigningKey, Certificate) {
        let key = SigningKey::generate(&mut OsRng);
        let proof_free = x509::issue(
            &ca.key,
            &ca.certificate,
            &IssueRequest {
                subject_cn: name,
                public_key: &key.public_key(),
                roles: &[Role::Server],
                serial: &[7],
                validity: Validity { not_before: 1_767_225_600, not_after: 2_000_000_000 },
                ca_path_len: None,
            },
        )
        .unwrap();
        (key, proof_free)
    }

    pub(crate) fn blank(id: &[u8]) -> InProcessChannel<Card> {
        let mut channel = InProcessChannel::new(Card::in_memory(CardOptions::default()));
        personalize_card_id(&mut channel, &StaticKeys::gp_test_keys(isd::INITIAL_KVN), id).unwrap();
        assert_eq!(card_id(&mut channel).unwrap(), id);
        channel
    }

    fn enrolled(ca: &Ca) -> HomeCard<InProcessChannel<Card>> {
        let mut card = HomeCard::new(blank(b"HOME-1"));
        card.select().unwrap();
        card.set_pins(&pin(b"1111"), &pin(b"2222"), &pin(b"99999999")).unwrap();
        card.verify_pin1(&pin(b"1111")).unwrap();
        card.verify_pin2(&pin(b"2222")).unwrap();
        let e = card.enrol(&ca.key, &ca.certificate, b"HOME-1", "alice", *b"EUR").unwrap();
        assert!(e.tls_certificate.info().unwrap().roles.contains(&Role::Home));
        assert_eq!(e.payment_certificate.info().unwrap().subject_cn, "HOME-1");
        card
    }

    #[test]
    fn enrol_and_sign_the_certificate_verify() {
        let ca = ca();
        let mut card = enrolled(&ca);
        let cert = card.certificate().unwrap();
        x509::verify_chain(&cert, &[], &ca.certificate, 1_800_000_000, Some(Role::Home)).unwrap();
        let hash = [0x5A; 32];
        let sig = card.sign_tls13(&hash).unwrap();
        verify_tls13_client(&cert.info().unwrap().public_key, &hash, &sig).unwrap();
        assert_eq!(tls13_client_content(&hash).len(), 130);
        // PIN errors are typed.
        card.end().unwrap();
        assert!(matches!(card.sign_tls13(&hash), Err(CardError::Locked)));
        assert!(matches!(
            card.verify_pin2(&pin(b"0000")),
            Err(CardError::WrongPin { tries_left: 2 })
        ));
        assert_eq!(card.status().unwrap().phase, Phase::RemoteWait);
    }

    #[test]
    fn the_idle_timer_expires_at_the_limit_and_only_while_running() {
        let clock = ManualClock::new();
        let mut timer = IdleTimer::new(clock.clone()).with_limit(Duration::from_secs(10));
        timer.touch();
        clock.advance(Duration::from_secs(60));
        assert!(!timer.is_running() && timer.expire().is_none(), "stopped: never expires");
        timer.start();
        clock.advance(Duration::from_secs(9));
        assert_eq!(timer.expire(), None);
        timer.touch();
        clock.advance(Duration::from_secs(9));
        assert_eq!(timer.expire(), None, "the use restarted the limit");
        clock.advance(Duration::from_secs(1));
        assert_eq!(timer.expire(), Some(Duration::from_secs(10)), "expires at the limit");
        assert!(!timer.is_running());
        assert_eq!(timer.expire(), None, "once");
        timer.start();
        timer.stop();
        clock.advance(Duration::from_secs(60));
        assert_eq!(timer.expire(), None);
    }

    #[test]
    fn the_session_falls_back_after_ten_idle_minutes() {
        let ca = ca();
        let mut card = enrolled(&ca);
        card.end().unwrap();
        let clock = ManualClock::new();
        let mut session = HomeCardSession::new(card, clock.clone());
        session.verify_pin2(&pin(b"2222")).unwrap();
        clock.advance(Duration::from_secs(599));
        session.sign_tls13(&[1; 32]).unwrap();
        // Use restarts the clock.
        clock.advance(Duration::from_secs(599));
        session.sign_tls13(&[1; 32]).unwrap();
        clock.advance(IDLE_LIMIT);
        match session.sign_tls13(&[1; 32]) {
            Err(CardError::IdleFallback(d)) => assert_eq!(d, IDLE_LIMIT),
            other => panic!("expected the idle fallback, got {other:?}"),
        }
        assert!(!session.is_enabled());
        // The card really is back in remote-access wait.
        assert_eq!(session.card_unchecked().status().unwrap().phase, Phase::RemoteWait);
        assert!(matches!(session.card_unchecked().sign_tls13(&[1; 32]), Err(CardError::Locked)));
        session.verify_pin2(&pin(b"2222")).unwrap();
        session.sign_tls13(&[1; 32]).unwrap();
        // A timer's poll does the same without a command.
        clock.advance(Duration::from_secs(601));
        assert!(session.poll().unwrap());
        assert!(!session.poll().unwrap());
        assert_eq!(session.card_unchecked().status().unwrap().phase, Phase::RemoteWait);
        // A card ended behind the session's back: the next operation notices it.
        session.verify_pin2(&pin(b"2222")).unwrap();
        session.card_unchecked().end().unwrap();
        assert!(session.is_enabled());
        assert!(matches!(session.run(|c| c.wallet()), Err(CardError::Locked)));
        assert!(!session.is_enabled());
    }

    #[test]
    fn wallet_through_the_client() {
        let ca = ca();
        let mut card = enrolled(&ca);
        let (market, market_cert) = server(&ca, "market.example");
        let (bank, bank_cert) = server(&ca, "bank.example");
        card.trust_market(&market_cert).unwrap();
        card.trust_bank(&bank_cert).unwrap();
        let sign = |k: &SigningKey, m: &dyn Fn() -> Vec<u8>| k.sign(&m()).to_bytes();
        let voucher = RefillVoucher {
            bank: b"bank.example".to_vec(),
            card: b"HOME-1".to_vec(),
            sequence: 1,
            currency: *b"EUR",
            amount: 10_000,
            time: 1_767_300_000,
        };
        let signature = sign(&bank, &|| voucher.signed_bytes());
        let ack = card.credit(&Signed { message: voucher, signature }).unwrap();
        let pay_key = card.payment_certificate().unwrap().info().unwrap().public_key;
        pay_key
            .verify(&ack.message.signed_bytes(), &Signature::from_bytes(&ack.signature).unwrap())
            .unwrap();
        let challenge = card.pay_challenge().unwrap();
        let notice = ChargeNotice {
            market: b"market.example".to_vec(),
            order: b"A-1".to_vec(),
            currency: *b"EUR",
            amount: 2_500,
            time: 1_767_300_100,
            card: b"HOME-1".to_vec(),
            challenge,
        };
        let signature = sign(&market, &|| notice.signed_bytes());
        let token = card.pay(&Signed { message: notice, signature }).unwrap();
        pay_key
            .verify(
                &token.message.signed_bytes(),
                &Signature::from_bytes(&token.signature).unwrap(),
            )
            .unwrap();
        assert_eq!(card.wallet().unwrap().balance, 7_500);
        let what = CancelChallenge {
            market: b"market.example".to_vec(),
            order: b"A-1".to_vec(),
            challenge: [4; 16],
        };
        let request = card.sign_cancel_request(&what).unwrap();
        assert_eq!(
            (request.message.counter, request.message.amount, request.message.challenge),
            (token.message.counter, 2_500, [4; 16])
        );
        pay_key
            .verify(
                &request.message.signed_bytes(),
                &Signature::from_bytes(&request.signature).unwrap(),
            )
            .unwrap();
        assert_eq!(card.wallet().unwrap().balance, 7_500);
        let confirmation = CancelConfirmation {
            market: b"market.example".to_vec(),
            card: b"HOME-1".to_vec(),
            counter: token.message.counter,
            order: b"A-1".to_vec(),
            amount: 2_500,
            time: 1_767_400_000,
        };
        let signature = sign(&market, &|| confirmation.signed_bytes());
        let signed = Signed { message: confirmation, signature };
        card.cancel(&signed).unwrap();
        assert!(matches!(
            card.cancel(&signed),
            Err(CardError::Card { sw: StatusWord::CONDITIONS_NOT_SATISFIED, .. })
        ));
        assert!(matches!(
            card.sign_cancel_request(&what),
            Err(CardError::Card { sw: StatusWord::CONDITIONS_NOT_SATISFIED, .. })
        ));
        let log = card.read_log(0).unwrap();
        let kinds: Vec<_> = log.iter().map(|e| (e.counter, e.kind, e.cancelled)).collect();
        assert_eq!(
            kinds,
            [
                (1, EntryKind::Refill, false),
                (2, EntryKind::Payment, true),
                (3, EntryKind::Cancellation, false)
            ]
        );
        assert_eq!(card.read_log(3).unwrap().len(), 1);
        assert_eq!(card.wallet().unwrap().balance, 10_000);
    }

    #[test]
    fn a_blank_card_refuses_enrolment_steps_out_of_order() {
        let ca = ca();
        let mut card = HomeCard::new(blank(b"HOME-2"));
        card.select().unwrap();
        assert!(matches!(
            card.verify_pin1(&pin(b"1111")),
            Err(CardError::Card { sw: StatusWord::CONDITIONS_NOT_SATISFIED, .. })
        ));
        card.set_pins(&pin(b"1111"), &pin(b"2222"), &pin(b"99999999")).unwrap();
        assert!(matches!(
            card.enrol(&ca.key, &ca.certificate, b"HOME-2", "bob", *b"EUR"),
            Err(CardError::Locked)
        ));
        assert!(matches!(
            card.certificate(),
            Err(CardError::Card { sw: StatusWord::REFERENCED_DATA_NOT_FOUND, .. })
        ));
    }
}
