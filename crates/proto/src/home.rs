//! The `home` applet's APDUs (authentication proxy and e-money, seed 004, DESIGN.md 5) and the
//! inputs of every signature it makes or checks.
//!
//! The home card holds two keys of its own, one per purpose: the **TLS key** (client
//! authentication of the home server's handshakes with markets; certificate role home) and the
//! **payment key** (payment tokens, refill acknowledgements, cancellation requests and
//! receipts; certificate role payment). The TLS key signs only TLS client CertificateVerify contents the
//! card builds or checks itself (`tessera_crypto::tls::certificate_verify`); the payment key
//! signs only the labelled structures below.
//!
//! Security states (Fig. 6), volatile: **prohibited** (after power-on, reset or selecting
//! another applet) → VERIFY PIN1 → **remote-access wait** → VERIFY PIN2 (sent over the control
//! channel) → **enabled** → END → remote-access wait. Three consecutive wrong values of PIN1
//! or PIN2 block it, and a blocked PIN makes the card unusable (every VERIFY, signature and
//! wallet operation `6983`) until RESET RETRY COUNTER with the PUK. The card has no clock: the
//! ten-minute idle fallback is the host's job (`tessera_host::home::HomeCardSession`).
//!
//! | command | APDU | state | data | response |
//! |---|---|---|---|---|
//! | SELECT | `00 A4 04 00 Lc AID` | any | [`AID`] | FCI |
//! | SET PINS | `80 D0 00 00 18 PIN1 PIN2 PUK` | no PINs yet | three 8-byte blocks | none |
//! | VERIFY | `00 20 00 81\|82 08 PIN` | PIN2 needs wait or enabled | PIN block | none |
//! | VERIFY (status) | `00 20 00 81\|82\|83` | any | none | `9000` if verified now, else `63Cx`/`6983` |
//! | CHANGE REFERENCE DATA | `00 24 00 81\|82\|83 10 old new` | any | two blocks | none |
//! | RESET RETRY COUNTER | `00 2C 00 81\|82 10 PUK new` | any | two blocks | none |
//! | END | `80 E0 00 00` | any | none | none (enabled → wait) |
//! | GENERATE KEY | `80 B8 P1 00 Lc challenge [currency] 00` | enabled | P1 `01` TLS, `02` payment: [`CHALLENGE_LEN`] challenge (+ 3-byte currency) | [`EnrolmentProof`] |
//! | INSTALL CERTIFICATE | `80 BA P1 00 Lc DER` | enabled | P1 `01` CA, `02` TLS, `03` payment | none |
//! | TRUST | `80 BC P1 00 Lc DER` | enabled | P1 `01` market, `02` bank: a role-server certificate from the CA | none |
//! | GET DATA | `80 CA 00 P2 00` | any (P2 `05`: enabled) | P2 `01` CA, `02` TLS, `03` payment certificate, `04` [`Status`], `05` [`WalletInfo`] | |
//! | SIGN TLS 1.3 CV | `80 2A 13 00 20 hash 00` | enabled | SHA-256 transcript hash | DER signature |
//! | SIGN TLS 1.2 CV | `80 2A 12 00 Lc messages 00` | enabled | handshake messages | DER signature |
//! | PAY | `80 54 00 00 Lc notice 00` | enabled | [`ChargeNotice`] (after GET CHALLENGE) | [`PaymentToken`] |
//! | CREDIT | `80 56 00 00 Lc voucher 00` | enabled | [`RefillVoucher`] | [`RefillAck`] |
//! | CANCEL | `80 58 00 00 Lc confirmation 00` | enabled | [`CancelConfirmation`] | [`CancelReceipt`] |
//! | READ LOG | `80 5A 00 00 08 from 00` | enabled | first counter wanted | [`LogPage`] |
//! | SIGN CANCELLATION REQUEST | `80 5C 00 00 Lc what 00` | enabled | [`CancelChallenge`] (market, order, the market's challenge) | [`CancelRequest`] |
//!
//! The issuer may also (re)set the PINs through the card-management applet (INSTALL [for
//! personalization] of this applet, then STORE DATA with DGI [`DGI_PINS`] in an SCP03
//! session): the issuer's reset path when the PUK itself is lost.
//!
//! Every signed message is [`labelled`]: ASCII label, `00`, then each field as a 2-byte length
//! and its bytes. On the wire a signed message travels as its fields (the same encoding without
//! the label) followed by the 64-byte `r || s` signature. `docs/home-card.md` has the flows.

use tessera_apdu::Command;

pub use crate::pairing::{EnrolmentProof, Malformed, labelled};

/// The home applet's AID: `F0` (proprietary) `TESSERA` `HM`.
pub const AID: &[u8] = &[0xF0, 0x54, 0x45, 0x53, 0x53, 0x45, 0x52, 0x41, 0x48, 0x4D];

/// Class byte of the proprietary commands.
pub const CLA_PROPRIETARY: u8 = 0x80;
/// INS of SET PINS.
pub const INS_SET_PINS: u8 = 0xD0;
/// INS of END (enabled → remote-access wait).
pub const INS_END: u8 = 0xE0;
/// INS of GENERATE KEY.
pub const INS_GENERATE_KEY: u8 = 0xB8;
/// INS of INSTALL CERTIFICATE.
pub const INS_INSTALL_CERTIFICATE: u8 = 0xBA;
/// INS of TRUST (a market's or bank's certificate).
pub const INS_TRUST: u8 = 0xBC;
/// INS of GET DATA.
pub const INS_GET_DATA: u8 = 0xCA;
/// INS of SIGN CV (a TLS client CertificateVerify).
pub const INS_SIGN_CV: u8 = 0x2A;
/// INS of PAY.
pub const INS_PAY: u8 = 0x54;
/// INS of CREDIT.
pub const INS_CREDIT: u8 = 0x56;
/// INS of CANCEL.
pub const INS_CANCEL: u8 = 0x58;
/// INS of READ LOG.
pub const INS_READ_LOG: u8 = 0x5A;
/// INS of SIGN CANCELLATION REQUEST.
pub const INS_SIGN_CANCEL_REQUEST: u8 = 0x5C;

/// PIN reference (P2) of PIN1 (local, unlocks remote access).
pub const REF_PIN1: u8 = 0x81;
/// PIN reference (P2) of PIN2 (remote, over the control channel, enables the keys).
pub const REF_PIN2: u8 = 0x82;
/// PIN reference (P2) of the PUK.
pub const REF_PUK: u8 = 0x83;
/// Tries of every PIN and of the PUK.
pub const PIN_TRIES: u8 = 3;
/// Personalisation DGI: `PIN1 || PIN2 || PUK` (three 8-byte blocks), set or replaced by the
/// issuer, counters at [`PIN_TRIES`].
pub const DGI_PINS: u16 = 0x8100;

/// GENERATE KEY / INSTALL CERTIFICATE P1: the TLS key.
pub const KEY_TLS: u8 = 0x01;
/// GENERATE KEY P1: the payment key (opens the wallet).
pub const KEY_PAYMENT: u8 = 0x02;
/// INSTALL CERTIFICATE P1 / GET DATA P2: the CA certificate.
pub const CERT_CA: u8 = 0x01;
/// INSTALL CERTIFICATE P1 / GET DATA P2: the TLS certificate (role home).
pub const CERT_TLS: u8 = 0x02;
/// INSTALL CERTIFICATE P1 / GET DATA P2: the payment certificate (role card).
pub const CERT_PAYMENT: u8 = 0x03;
/// GET DATA P2: the [`Status`].
pub const DATA_STATUS: u8 = 0x04;
/// GET DATA P2: the [`WalletInfo`] (enabled state only).
pub const DATA_WALLET: u8 = 0x05;
/// TRUST P1: a market.
pub const PARTY_MARKET: u8 = 0x01;
/// TRUST P1: a bank.
pub const PARTY_BANK: u8 = 0x02;
/// SIGN CV P1: TLS 1.3.
pub const CV_TLS13: u8 = 0x13;
/// SIGN CV P1: TLS 1.2.
pub const CV_TLS12: u8 = 0x12;

/// Length of an enrolment challenge.
pub const CHALLENGE_LEN: usize = crate::pairing::CHALLENGE_LEN;
/// Length of the card challenge a charge notice answers (GET CHALLENGE `00 84 00 00 10`).
pub const PAY_CHALLENGE_LEN: usize = 16;
/// Length of the market's challenge a cancellation request answers.
pub const CANCEL_CHALLENGE_LEN: usize = 16;
/// Length of a raw ECDSA P-256 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Longest market, bank or card id and order reference.
pub const MAX_ID_LEN: usize = 32;
/// Most markets and banks a card trusts (each).
pub const MAX_PARTIES: usize = 16;
/// Entries the settlement log keeps (a ring: the oldest goes beyond).
pub const LOG_CAPACITY: usize = 256;
/// Most entries one READ LOG answers.
pub const LOG_PAGE: usize = 32;

/// Label of the home card's proof of possession at enrolment.
pub const LABEL_ENROL: &str = "tessera/home/enrol";
/// Label of a market's charge notice.
pub const LABEL_CHARGE: &str = "tessera/home/charge";
/// Label of the card's payment token.
pub const LABEL_PAYMENT: &str = "tessera/home/payment";
/// Label of a bank's refill voucher.
pub const LABEL_VOUCHER: &str = "tessera/home/voucher";
/// Label of the card's refill acknowledgement.
pub const LABEL_CREDITED: &str = "tessera/home/credited";
/// Label of a market's cancellation confirmation.
pub const LABEL_CANCEL: &str = "tessera/home/cancel";
/// Label of the card's cancellation receipt.
pub const LABEL_CANCELLED: &str = "tessera/home/cancelled";
/// Label of the card's cancellation request (to the market).
pub const LABEL_CANCEL_REQUEST: &str = "tessera/home/cancel-request";
/// Label of a market's settlement confirmation (market to home server; the card never sees it).
pub const LABEL_SETTLED: &str = "tessera/market/settled";

/// What the card signs at enrolment: its card id, which key (P1 of GENERATE KEY), the new
/// public key and the CA's challenge.
pub fn enrolment_message(card_id: &[u8], key: u8, public_key: &[u8], challenge: &[u8]) -> Vec<u8> {
    labelled(LABEL_ENROL, &[card_id, &[key], public_key, challenge])
}

/// The 8-byte PIN blocks of SET PINS: `PIN1 || PIN2 || PUK`.
pub fn set_pins_command(pin1: &[u8; 8], pin2: &[u8; 8], puk: &[u8; 8]) -> Command {
    Command::new(CLA_PROPRIETARY, INS_SET_PINS, 0, 0).with_data([&pin1[..], pin2, puk].concat())
}

/// VERIFY of `reference` ([`REF_PIN1`], [`REF_PIN2`]) with a PIN block.
pub fn verify_command(reference: u8, block: &[u8; 8]) -> Command {
    Command::new(0x00, 0x20, 0x00, reference).with_data(block.to_vec())
}

/// CHANGE REFERENCE DATA of `reference` (`old || new`).
pub fn change_command(reference: u8, old: &[u8; 8], new: &[u8; 8]) -> Command {
    Command::new(0x00, 0x24, 0x00, reference).with_data([&old[..], new].concat())
}

/// RESET RETRY COUNTER of `reference` ([`REF_PIN1`], [`REF_PIN2`]) with the PUK.
pub fn unblock_command(reference: u8, puk: &[u8; 8], new: &[u8; 8]) -> Command {
    Command::new(0x00, 0x2C, 0x00, reference).with_data([&puk[..], new].concat())
}

/// END: back from enabled to remote-access wait.
pub fn end_command() -> Command {
    Command::new(CLA_PROPRIETARY, INS_END, 0, 0)
}

/// GENERATE KEY of the TLS key.
pub fn generate_tls_key_command(challenge: &[u8; CHALLENGE_LEN]) -> Command {
    Command::new(CLA_PROPRIETARY, INS_GENERATE_KEY, KEY_TLS, 0)
        .with_data(challenge.to_vec())
        .with_le(256)
}

/// GENERATE KEY of the payment key, opening the wallet in `currency` (ISO 4217 letters).
pub fn generate_payment_key_command(
    challenge: &[u8; CHALLENGE_LEN],
    currency: &[u8; 3],
) -> Command {
    Command::new(CLA_PROPRIETARY, INS_GENERATE_KEY, KEY_PAYMENT, 0)
        .with_data([&challenge[..], currency].concat())
        .with_le(256)
}

/// INSTALL CERTIFICATE (`which`: [`CERT_CA`], [`CERT_TLS`], [`CERT_PAYMENT`]).
pub fn install_certificate_command(which: u8, der: &[u8]) -> Command {
    Command::new(CLA_PROPRIETARY, INS_INSTALL_CERTIFICATE, which, 0).with_data(der.to_vec())
}

/// TRUST (`party`: [`PARTY_MARKET`], [`PARTY_BANK`]) a certificate issued by the card's CA.
pub fn trust_command(party: u8, der: &[u8]) -> Command {
    Command::new(CLA_PROPRIETARY, INS_TRUST, party, 0).with_data(der.to_vec())
}

/// GET DATA (`what`: a `CERT_*` or `DATA_*` code).
pub fn get_data_command(what: u8) -> Command {
    Command::new(CLA_PROPRIETARY, INS_GET_DATA, 0, what).with_le(65536)
}

/// SIGN CV for TLS 1.3 with the transcript hash.
pub fn sign_tls13_command(transcript_hash: &[u8; 32]) -> Command {
    Command::new(CLA_PROPRIETARY, INS_SIGN_CV, CV_TLS13, 0)
        .with_data(transcript_hash.to_vec())
        .with_le(256)
}

/// SIGN CV for TLS 1.2 with the handshake messages (extended length when needed).
pub fn sign_tls12_command(handshake_messages: &[u8]) -> Command {
    Command::new(CLA_PROPRIETARY, INS_SIGN_CV, CV_TLS12, 0)
        .with_data(handshake_messages.to_vec())
        .with_le(256)
}

/// GET CHALLENGE for a charge notice (the runtime's, single use, dropped on applet switch).
pub fn pay_challenge_command() -> Command {
    Command::new(0x00, 0x84, 0x00, 0x00).with_le(PAY_CHALLENGE_LEN)
}

/// PAY with a signed charge notice.
pub fn pay_command(notice: &Signed<ChargeNotice>) -> Command {
    Command::new(CLA_PROPRIETARY, INS_PAY, 0, 0).with_data(notice.to_bytes()).with_le(256)
}

/// CREDIT with a signed refill voucher.
pub fn credit_command(voucher: &Signed<RefillVoucher>) -> Command {
    Command::new(CLA_PROPRIETARY, INS_CREDIT, 0, 0).with_data(voucher.to_bytes()).with_le(256)
}

/// CANCEL with a market's signed confirmation.
pub fn cancel_command(confirmation: &Signed<CancelConfirmation>) -> Command {
    Command::new(CLA_PROPRIETARY, INS_CANCEL, 0, 0).with_data(confirmation.to_bytes()).with_le(256)
}

/// SIGN CANCELLATION REQUEST for the payment `what` names, answering the market's challenge.
pub fn sign_cancel_request_command(what: &CancelChallenge) -> Command {
    Command::new(CLA_PROPRIETARY, INS_SIGN_CANCEL_REQUEST, 0, 0)
        .with_data(what.to_bytes())
        .with_le(256)
}

/// READ LOG from counter `from` on.
pub fn read_log_command(from: u64) -> Command {
    Command::new(CLA_PROPRIETARY, INS_READ_LOG, 0, 0)
        .with_data(from.to_be_bytes().to_vec())
        .with_le(65536)
}

/// The security state of Fig. 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Phase {
    /// Access prohibited: nothing verified since power-on, reset or selection.
    #[default]
    Prohibited,
    /// PIN1 verified: waiting for PIN2 over the control channel.
    RemoteWait,
    /// PIN2 verified: the keys and the wallet may be used.
    Enabled,
}

impl Phase {
    /// The status byte.
    pub const fn code(self) -> u8 {
        match self {
            Phase::Prohibited => 0,
            Phase::RemoteWait => 1,
            Phase::Enabled => 2,
        }
    }

    /// Parses the status byte.
    pub fn from_code(code: u8) -> Option<Phase> {
        [Phase::Prohibited, Phase::RemoteWait, Phase::Enabled]
            .into_iter()
            .find(|p| p.code() == code)
    }
}

/// GET DATA `04`: `phase (1) || PIN1 tries (1) || PIN2 tries (1) || PUK tries (1) || flags (1)`,
/// flags b0 PINs set, b1 CA installed, b2 TLS certificate, b3 payment certificate (wallet
/// open). Tries are `0` when blocked (and when no PINs are set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The security state.
    pub phase: Phase,
    /// PIN1 tries left.
    pub pin1_tries: u8,
    /// PIN2 tries left.
    pub pin2_tries: u8,
    /// PUK tries left.
    pub puk_tries: u8,
    /// SET PINS was done.
    pub pins_set: bool,
    /// The CA certificate is installed.
    pub ca: bool,
    /// The TLS certificate is installed.
    pub tls_certificate: bool,
    /// The payment certificate is installed.
    pub payment_certificate: bool,
}

impl Status {
    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let flags = u8::from(self.pins_set)
            | u8::from(self.ca) << 1
            | u8::from(self.tls_certificate) << 2
            | u8::from(self.payment_certificate) << 3;
        vec![self.phase.code(), self.pin1_tries, self.pin2_tries, self.puk_tries, flags]
    }

    /// Parses the encoding.
    pub fn parse(data: &[u8]) -> Result<Status, Malformed> {
        let [phase, pin1_tries, pin2_tries, puk_tries, flags] = data else {
            return Err(Malformed("home status length"));
        };
        if flags & 0xF0 != 0 {
            return Err(Malformed("home status flags"));
        }
        Ok(Status {
            phase: Phase::from_code(*phase).ok_or(Malformed("home status phase"))?,
            pin1_tries: *pin1_tries,
            pin2_tries: *pin2_tries,
            puk_tries: *puk_tries,
            pins_set: flags & 1 != 0,
            ca: flags & 2 != 0,
            tls_certificate: flags & 4 != 0,
            payment_certificate: flags & 8 != 0,
        })
    }
}

/// GET DATA `05`: `currency (3) || balance (8) || next counter (8) || entries (2) || oldest
/// counter (8)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalletInfo {
    /// ISO 4217 letters.
    pub currency: [u8; 3],
    /// Balance in minor units.
    pub balance: u64,
    /// The counter the next operation will take.
    pub next_counter: u64,
    /// Entries in the log.
    pub entries: u16,
    /// The counter of the oldest entry kept (equal to `next_counter` when empty).
    pub oldest_counter: u64,
}

impl WalletInfo {
    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = self.currency.to_vec();
        v.extend_from_slice(&self.balance.to_be_bytes());
        v.extend_from_slice(&self.next_counter.to_be_bytes());
        v.extend_from_slice(&self.entries.to_be_bytes());
        v.extend_from_slice(&self.oldest_counter.to_be_bytes());
        v
    }

    /// Parses the encoding.
    pub fn parse(mut data: &[u8]) -> Result<WalletInfo, Malformed> {
        let currency = array(&mut data, "wallet currency")?;
        let balance = u64::from_be_bytes(array(&mut data, "wallet balance")?);
        let next_counter = u64::from_be_bytes(array(&mut data, "wallet counter")?);
        let entries = u16::from_be_bytes(array(&mut data, "wallet entries")?);
        let oldest_counter = u64::from_be_bytes(array(&mut data, "wallet oldest")?);
        end(data, "wallet info")?;
        Ok(WalletInfo { currency, balance, next_counter, entries, oldest_counter })
    }
}

fn array<const N: usize>(data: &mut &[u8], what: &'static str) -> Result<[u8; N], Malformed> {
    if data.len() < N {
        return Err(Malformed(what));
    }
    let (head, rest) = data.split_at(N);
    *data = rest;
    let mut out = [0u8; N];
    out.copy_from_slice(head);
    Ok(out)
}

fn end(data: &[u8], what: &'static str) -> Result<(), Malformed> {
    if data.is_empty() { Ok(()) } else { Err(Malformed(what)) }
}

/// Reads the length-prefixed fields of a message body (`(len16 || bytes)*`), exactly `N`.
fn fields<'a, const N: usize>(
    mut data: &'a [u8],
    what: &'static str,
) -> Result<[&'a [u8]; N], Malformed> {
    let mut out: [&'a [u8]; N] = [&[]; N];
    for slot in &mut out {
        let len = u16::from_be_bytes(array(&mut data, what)?) as usize;
        if data.len() < len {
            return Err(Malformed(what));
        }
        let (head, rest) = data.split_at(len);
        *slot = head;
        data = rest;
    }
    end(data, what)?;
    Ok(out)
}

/// The body encoding of `fields` (a [`labelled`] structure without its label).
fn body(fields: &[&[u8]]) -> Vec<u8> {
    labelled("", fields)[1..].to_vec()
}

fn id(bytes: &[u8], what: &'static str) -> Result<Vec<u8>, Malformed> {
    if bytes.is_empty() || bytes.len() > MAX_ID_LEN {
        return Err(Malformed(what));
    }
    Ok(bytes.to_vec())
}

fn fixed<const N: usize>(bytes: &[u8], what: &'static str) -> Result<[u8; N], Malformed> {
    bytes.try_into().map_err(|_| Malformed(what))
}

fn u64_field(bytes: &[u8], what: &'static str) -> Result<u64, Malformed> {
    fixed::<8>(bytes, what).map(u64::from_be_bytes)
}

fn i64_field(bytes: &[u8], what: &'static str) -> Result<i64, Malformed> {
    fixed::<8>(bytes, what).map(i64::from_be_bytes)
}

/// A message with a label, a field encoding and a parser: what a party signs.
pub trait Message: Sized {
    /// The label of its signatures.
    const LABEL: &'static str;
    /// The fields in order.
    fn fields(&self) -> Vec<Vec<u8>>;
    /// Parses the fields (the body encoding).
    fn parse_body(body: &[u8]) -> Result<Self, Malformed>;

    /// The body encoding: each field as `len16 || bytes`.
    fn body(&self) -> Vec<u8> {
        let f = self.fields();
        body(&f.iter().map(Vec::as_slice).collect::<Vec<_>>())
    }

    /// The exact bytes signed: [`labelled`] with [`Message::LABEL`].
    fn signed_bytes(&self) -> Vec<u8> {
        let f = self.fields();
        labelled(Self::LABEL, &f.iter().map(Vec::as_slice).collect::<Vec<_>>())
    }
}

/// A message and its signature (`r || s`): on the wire the body, then the 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed<M> {
    /// The message.
    pub message: M,
    /// ECDSA P-256 / SHA-256 over [`Message::signed_bytes`].
    pub signature: [u8; SIGNATURE_LEN],
}

impl<M: Message> Signed<M> {
    /// `body || signature`.
    pub fn to_bytes(&self) -> Vec<u8> {
        [self.message.body(), self.signature.to_vec()].concat()
    }

    /// Parses `body || signature`.
    pub fn parse(data: &[u8]) -> Result<Self, Malformed> {
        let split = data.len().checked_sub(SIGNATURE_LEN).ok_or(Malformed("signature missing"))?;
        let (body, signature) = data.split_at(split);
        Ok(Signed { message: M::parse_body(body)?, signature: fixed(signature, "signature")? })
    }
}

/// A market's charge notice (Fig. 17): what to pay, to whom, for which order, answering the
/// card's challenge (so a notice is usable once, and only by the card that asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeNotice {
    /// The market's id (its certificate's common name).
    pub market: Vec<u8>,
    /// The market's order reference.
    pub order: Vec<u8>,
    /// ISO 4217 letters.
    pub currency: [u8; 3],
    /// Amount in minor units (non-zero).
    pub amount: u64,
    /// The market's time (Unix seconds), logged.
    pub time: i64,
    /// The paying card's id.
    pub card: Vec<u8>,
    /// The card's GET CHALLENGE answer.
    pub challenge: [u8; PAY_CHALLENGE_LEN],
}

impl Message for ChargeNotice {
    const LABEL: &'static str = LABEL_CHARGE;
    fn fields(&self) -> Vec<Vec<u8>> {
        vec![
            self.market.clone(),
            self.order.clone(),
            self.currency.to_vec(),
            self.amount.to_be_bytes().to_vec(),
            self.time.to_be_bytes().to_vec(),
            self.card.clone(),
            self.challenge.to_vec(),
        ]
    }
    fn parse_body(b: &[u8]) -> Result<Self, Malformed> {
        let [market, order, currency, amount, time, card, challenge] = fields(b, "charge notice")?;
        Ok(ChargeNotice {
            market: id(market, "charge notice market")?,
            order: id(order, "charge notice order")?,
            currency: fixed(currency, "charge notice currency")?,
            amount: u64_field(amount, "charge notice amount")?,
            time: i64_field(time, "charge notice time")?,
            card: id(card, "charge notice card")?,
            challenge: fixed(challenge, "charge notice challenge")?,
        })
    }
}

/// The card's payment token: bound to card, counter, amount, order and market; signed by the
/// payment key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentToken {
    /// The paying card's id.
    pub card: Vec<u8>,
    /// The wallet counter of this payment (strictly increasing per card).
    pub counter: u64,
    /// ISO 4217 letters.
    pub currency: [u8; 3],
    /// Amount paid.
    pub amount: u64,
    /// The market's order reference.
    pub order: Vec<u8>,
    /// The market's id.
    pub market: Vec<u8>,
    /// The notice's time.
    pub time: i64,
}

impl Message for PaymentToken {
    const LABEL: &'static str = LABEL_PAYMENT;
    fn fields(&self) -> Vec<Vec<u8>> {
        vec![
            self.card.clone(),
            self.counter.to_be_bytes().to_vec(),
            self.currency.to_vec(),
            self.amount.to_be_bytes().to_vec(),
            self.order.clone(),
            self.market.clone(),
            self.time.to_be_bytes().to_vec(),
        ]
    }
    fn parse_body(b: &[u8]) -> Result<Self, Malformed> {
        let [card, counter, currency, amount, order, market, time] = fields(b, "payment token")?;
        Ok(PaymentToken {
            card: id(card, "payment token card")?,
            counter: u64_field(counter, "payment token counter")?,
            currency: fixed(currency, "payment token currency")?,
            amount: u64_field(amount, "payment token amount")?,
            order: id(order, "payment token order")?,
            market: id(market, "payment token market")?,
            time: i64_field(time, "payment token time")?,
        })
    }
}

/// A bank's refill voucher (Fig. 18): single use, bound to the card by its id and to the
/// bank's per-card sequence (the card accepts each sequence number once; retrying the same
/// voucher after a lost acknowledgement returns the acknowledgement again, crediting nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefillVoucher {
    /// The bank's id (its certificate's common name).
    pub bank: Vec<u8>,
    /// The card's id.
    pub card: Vec<u8>,
    /// The bank's voucher sequence number for this card (strictly increasing from 1).
    pub sequence: u64,
    /// ISO 4217 letters.
    pub currency: [u8; 3],
    /// Amount in minor units (non-zero).
    pub amount: u64,
    /// The bank's time (Unix seconds), logged.
    pub time: i64,
}

impl Message for RefillVoucher {
    const LABEL: &'static str = LABEL_VOUCHER;
    fn fields(&self) -> Vec<Vec<u8>> {
        vec![
            self.bank.clone(),
            self.card.clone(),
            self.sequence.to_be_bytes().to_vec(),
            self.currency.to_vec(),
            self.amount.to_be_bytes().to_vec(),
            self.time.to_be_bytes().to_vec(),
        ]
    }
    fn parse_body(b: &[u8]) -> Result<Self, Malformed> {
        let [bank, card, sequence, currency, amount, time] = fields(b, "refill voucher")?;
        Ok(RefillVoucher {
            bank: id(bank, "voucher bank")?,
            card: id(card, "voucher card")?,
            sequence: u64_field(sequence, "voucher sequence")?,
            currency: fixed(currency, "voucher currency")?,
            amount: u64_field(amount, "voucher amount")?,
            time: i64_field(time, "voucher time")?,
        })
    }
}

/// The card's acknowledgement of a credited voucher, signed by the payment key; the bank
/// debits the account on it, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefillAck {
    /// The card's id.
    pub card: Vec<u8>,
    /// The bank's id.
    pub bank: Vec<u8>,
    /// The voucher's sequence number.
    pub sequence: u64,
    /// Amount credited.
    pub amount: u64,
    /// The wallet counter of the credit.
    pub counter: u64,
}

impl Message for RefillAck {
    const LABEL: &'static str = LABEL_CREDITED;
    fn fields(&self) -> Vec<Vec<u8>> {
        vec![
            self.card.clone(),
            self.bank.clone(),
            self.sequence.to_be_bytes().to_vec(),
            self.amount.to_be_bytes().to_vec(),
            self.counter.to_be_bytes().to_vec(),
        ]
    }
    fn parse_body(b: &[u8]) -> Result<Self, Malformed> {
        let [card, bank, sequence, amount, counter] = fields(b, "refill ack")?;
        Ok(RefillAck {
            card: id(card, "ack card")?,
            bank: id(bank, "ack bank")?,
            sequence: u64_field(sequence, "ack sequence")?,
            amount: u64_field(amount, "ack amount")?,
            counter: u64_field(counter, "ack counter")?,
        })
    }
}

/// A market's confirmation of a cancellation (Fig. 20): names the payment by card and counter
/// (and repeats its order and amount, which must match the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelConfirmation {
    /// The market's id.
    pub market: Vec<u8>,
    /// The card's id.
    pub card: Vec<u8>,
    /// The counter of the payment cancelled.
    pub counter: u64,
    /// The order reference of that payment.
    pub order: Vec<u8>,
    /// The amount credited back (the payment's amount).
    pub amount: u64,
    /// The market's time (Unix seconds), logged.
    pub time: i64,
}

impl Message for CancelConfirmation {
    const LABEL: &'static str = LABEL_CANCEL;
    fn fields(&self) -> Vec<Vec<u8>> {
        vec![
            self.market.clone(),
            self.card.clone(),
            self.counter.to_be_bytes().to_vec(),
            self.order.clone(),
            self.amount.to_be_bytes().to_vec(),
            self.time.to_be_bytes().to_vec(),
        ]
    }
    fn parse_body(b: &[u8]) -> Result<Self, Malformed> {
        let [market, card, counter, order, amount, time] = fields(b, "cancel confirmation")?;
        Ok(CancelConfirmation {
            market: id(market, "cancel market")?,
            card: id(card, "cancel card")?,
            counter: u64_field(counter, "cancel counter")?,
            order: id(order, "cancel order")?,
            amount: u64_field(amount, "cancel amount")?,
            time: i64_field(time, "cancel time")?,
        })
    }
}

/// A market's confirmation that a payment token was accepted and the order settled (Fig. 17),
/// signed by the market and kept by the home server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The market's id.
    pub market: Vec<u8>,
    /// The paying card's id.
    pub card: Vec<u8>,
    /// The token's counter.
    pub counter: u64,
    /// The order reference.
    pub order: Vec<u8>,
    /// The amount settled.
    pub amount: u64,
    /// The market's time of settlement (Unix seconds).
    pub time: i64,
}

impl Message for Settlement {
    const LABEL: &'static str = LABEL_SETTLED;
    fn fields(&self) -> Vec<Vec<u8>> {
        vec![
            self.market.clone(),
            self.card.clone(),
            self.counter.to_be_bytes().to_vec(),
            self.order.clone(),
            self.amount.to_be_bytes().to_vec(),
            self.time.to_be_bytes().to_vec(),
        ]
    }
    fn parse_body(b: &[u8]) -> Result<Self, Malformed> {
        let [market, card, counter, order, amount, time] = fields(b, "settlement")?;
        Ok(Settlement {
            market: id(market, "settlement market")?,
            card: id(card, "settlement card")?,
            counter: u64_field(counter, "settlement counter")?,
            order: id(order, "settlement order")?,
            amount: u64_field(amount, "settlement amount")?,
            time: i64_field(time, "settlement time")?,
        })
    }
}

/// SIGN CANCELLATION REQUEST's data: which payment (the market and its order reference, as
/// logged) and the market's fresh challenge. Not signed by anybody: the card only looks the
/// payment up and builds the [`CancelRequest`] itself. Encoded as a message body (three
/// length-prefixed fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelChallenge {
    /// The payee market's id.
    pub market: Vec<u8>,
    /// The order reference of the payment.
    pub order: Vec<u8>,
    /// The market's challenge for this cancellation.
    pub challenge: [u8; CANCEL_CHALLENGE_LEN],
}

impl CancelChallenge {
    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        body(&[&self.market, &self.order, &self.challenge])
    }

    /// Parses the encoding.
    pub fn parse(data: &[u8]) -> Result<CancelChallenge, Malformed> {
        let [market, order, challenge] = fields(data, "cancel challenge")?;
        Ok(CancelChallenge {
            market: id(market, "cancel challenge market")?,
            order: id(order, "cancel challenge order")?,
            challenge: fixed(challenge, "cancel challenge challenge")?,
        })
    }
}

/// The card's cancellation request (Fig. 20), signed by the payment key: built by the card
/// from a logged payment that is not cancelled (card, counter, market, order and amount all
/// come from the card's own log), bound to the market's fresh challenge. The market cancels
/// a paid order only on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    /// The card's id.
    pub card: Vec<u8>,
    /// The wallet counter of the payment to cancel.
    pub counter: u64,
    /// The payee market's id.
    pub market: Vec<u8>,
    /// The order reference of the payment.
    pub order: Vec<u8>,
    /// The amount paid (to be credited back).
    pub amount: u64,
    /// The market's challenge.
    pub challenge: [u8; CANCEL_CHALLENGE_LEN],
}

impl Message for CancelRequest {
    const LABEL: &'static str = LABEL_CANCEL_REQUEST;
    fn fields(&self) -> Vec<Vec<u8>> {
        vec![
            self.card.clone(),
            self.counter.to_be_bytes().to_vec(),
            self.market.clone(),
            self.order.clone(),
            self.amount.to_be_bytes().to_vec(),
            self.challenge.to_vec(),
        ]
    }
    fn parse_body(b: &[u8]) -> Result<Self, Malformed> {
        let [card, counter, market, order, amount, challenge] = fields(b, "cancel request")?;
        Ok(CancelRequest {
            card: id(card, "request card")?,
            counter: u64_field(counter, "request counter")?,
            market: id(market, "request market")?,
            order: id(order, "request order")?,
            amount: u64_field(amount, "request amount")?,
            challenge: fixed(challenge, "request challenge")?,
        })
    }
}

/// The card's receipt of a cancellation, signed by the payment key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelReceipt {
    /// The card's id.
    pub card: Vec<u8>,
    /// The market's id.
    pub market: Vec<u8>,
    /// The counter of the cancelled payment.
    pub payment_counter: u64,
    /// The counter of the cancellation entry.
    pub counter: u64,
    /// The amount credited back.
    pub amount: u64,
}

impl Message for CancelReceipt {
    const LABEL: &'static str = LABEL_CANCELLED;
    fn fields(&self) -> Vec<Vec<u8>> {
        vec![
            self.card.clone(),
            self.market.clone(),
            self.payment_counter.to_be_bytes().to_vec(),
            self.counter.to_be_bytes().to_vec(),
            self.amount.to_be_bytes().to_vec(),
        ]
    }
    fn parse_body(b: &[u8]) -> Result<Self, Malformed> {
        let [card, market, payment_counter, counter, amount] = fields(b, "cancel receipt")?;
        Ok(CancelReceipt {
            card: id(card, "receipt card")?,
            market: id(market, "receipt market")?,
            payment_counter: u64_field(payment_counter, "receipt payment counter")?,
            counter: u64_field(counter, "receipt counter")?,
            amount: u64_field(amount, "receipt amount")?,
        })
    }
}

/// What a log entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A payment to a market (debit).
    Payment,
    /// A refill from a bank (credit).
    Refill,
    /// A cancellation credited back (the payment's entry is marked cancelled).
    Cancellation,
}

impl EntryKind {
    /// The wire code.
    pub const fn code(self) -> u8 {
        match self {
            EntryKind::Payment => 1,
            EntryKind::Refill => 2,
            EntryKind::Cancellation => 3,
        }
    }

    /// Parses the wire code.
    pub fn from_code(c: u8) -> Option<EntryKind> {
        [EntryKind::Payment, EntryKind::Refill, EntryKind::Cancellation]
            .into_iter()
            .find(|k| k.code() == c)
    }
}

/// One settlement-log entry: `counter (8) || kind (1) || cancelled (1) || amount (8) || time
/// (8) || len || party || len || reference`. The party is the payee market (payments,
/// cancellations) or the bank (refills); the reference is the order reference (payments,
/// cancellations) or the voucher sequence as 8 bytes (refills).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The wallet counter of the operation.
    pub counter: u64,
    /// What happened.
    pub kind: EntryKind,
    /// A payment later cancelled.
    pub cancelled: bool,
    /// Amount in minor units.
    pub amount: u64,
    /// The counterpart's signed time (Unix seconds).
    pub time: i64,
    /// The payee market or the bank.
    pub party: Vec<u8>,
    /// The order reference, or the voucher sequence.
    pub reference: Vec<u8>,
}

impl LogEntry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.push(self.kind.code());
        out.push(u8::from(self.cancelled));
        out.extend_from_slice(&self.amount.to_be_bytes());
        out.extend_from_slice(&self.time.to_be_bytes());
        // Parties and references are at most MAX_ID_LEN bytes (checked when logged).
        out.push(self.party.len() as u8);
        out.extend_from_slice(&self.party);
        out.push(self.reference.len() as u8);
        out.extend_from_slice(&self.reference);
    }

    fn parse(data: &mut &[u8]) -> Result<LogEntry, Malformed> {
        let counter = u64::from_be_bytes(array(data, "log counter")?);
        let [kind, cancelled] = array(data, "log kind")?;
        let amount = u64::from_be_bytes(array(data, "log amount")?);
        let time = i64::from_be_bytes(array(data, "log time")?);
        let mut short = |what| -> Result<Vec<u8>, Malformed> {
            let [n] = array(data, what)?;
            let n = usize::from(n);
            if data.len() < n || n > MAX_ID_LEN {
                return Err(Malformed(what));
            }
            let (head, rest) = data.split_at(n);
            *data = rest;
            Ok(head.to_vec())
        };
        let party = short("log party")?;
        let reference = short("log reference")?;
        if cancelled > 1 {
            return Err(Malformed("log cancelled flag"));
        }
        Ok(LogEntry {
            counter,
            kind: EntryKind::from_code(kind).ok_or(Malformed("log kind"))?,
            cancelled: cancelled == 1,
            amount,
            time,
            party,
            reference,
        })
    }
}

/// READ LOG's answer: `more (1) || count (1) || entries`, oldest first; `more` is `01` when
/// entries beyond this page exist (ask again from the last counter + 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPage {
    /// More entries follow.
    pub more: bool,
    /// At most [`LOG_PAGE`] entries.
    pub entries: Vec<LogEntry>,
}

impl LogPage {
    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.more), self.entries.len().min(LOG_PAGE) as u8];
        for e in self.entries.iter().take(LOG_PAGE) {
            e.encode(&mut out);
        }
        out
    }

    /// Parses the encoding.
    pub fn parse(mut data: &[u8]) -> Result<LogPage, Malformed> {
        let [more, count] = array(&mut data, "log page header")?;
        if more > 1 || usize::from(count) > LOG_PAGE {
            return Err(Malformed("log page header"));
        }
        let entries =
            (0..count).map(|_| LogEntry::parse(&mut data)).collect::<Result<Vec<_>, _>>()?;
        end(data, "log page")?;
        Ok(LogPage { more: more == 1, entries })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn notice() -> ChargeNotice {
        ChargeNotice {
            market: b"market.example".to_vec(),
            order: b"order-1".to_vec(),
            currency: *b"EUR",
            amount: 1250,
            time: 1_700_000_000,
            card: b"CARD-1".to_vec(),
            challenge: [7; 16],
        }
    }

    #[test]
    fn signed_messages_round_trip_and_are_labelled() {
        let s = Signed { message: notice(), signature: [9; 64] };
        assert_eq!(Signed::<ChargeNotice>::parse(&s.to_bytes()).unwrap(), s);
        let signed = notice().signed_bytes();
        assert!(signed.starts_with(b"tessera/home/charge\0"));
        assert_eq!(&signed[LABEL_CHARGE.len() + 1..], notice().body().as_slice());
        // A charge notice body never parses as another message kind's.
        assert!(RefillVoucher::parse_body(&notice().body()).is_err());
    }

    #[test]
    fn malformed_messages_are_refused() {
        let bytes = Signed { message: notice(), signature: [9; 64] }.to_bytes();
        assert!(Signed::<ChargeNotice>::parse(&bytes[..bytes.len() - 65]).is_err());
        assert!(Signed::<ChargeNotice>::parse(&bytes[..10]).is_err());
        let mut long_id = notice();
        long_id.market = vec![b'm'; 33];
        assert!(ChargeNotice::parse_body(&long_id.body()).is_err());
        let mut empty = notice();
        empty.order.clear();
        assert!(ChargeNotice::parse_body(&empty.body()).is_err());
    }

    #[test]
    fn cancellation_requests_round_trip_and_are_labelled() {
        let what = CancelChallenge {
            market: b"market.example".to_vec(),
            order: b"order-1".to_vec(),
            challenge: [5; CANCEL_CHALLENGE_LEN],
        };
        assert_eq!(CancelChallenge::parse(&what.to_bytes()).unwrap(), what);
        let bytes = what.to_bytes();
        assert!(CancelChallenge::parse(&bytes[..bytes.len() - 1]).is_err());
        assert!(CancelChallenge::parse(&[bytes.clone(), vec![0]].concat()).is_err());
        let request = CancelRequest {
            card: b"CARD-1".to_vec(),
            counter: 2,
            market: what.market.clone(),
            order: what.order.clone(),
            amount: 1250,
            challenge: what.challenge,
        };
        let s = Signed { message: request.clone(), signature: [9; 64] };
        assert_eq!(Signed::<CancelRequest>::parse(&s.to_bytes()).unwrap(), s);
        assert!(request.signed_bytes().starts_with(b"tessera/home/cancel-request\0"));
        // Neither a market's confirmation nor a payment token parses as a request.
        assert!(CancelRequest::parse_body(&notice().body()).is_err());
        let command = sign_cancel_request_command(&what);
        assert_eq!((command.cla, command.ins), (CLA_PROPRIETARY, INS_SIGN_CANCEL_REQUEST));
    }

    #[test]
    fn status_and_wallet_round_trip() {
        let s = Status {
            phase: Phase::RemoteWait,
            pin1_tries: 3,
            pin2_tries: 2,
            puk_tries: 3,
            pins_set: true,
            ca: true,
            tls_certificate: false,
            payment_certificate: true,
        };
        assert_eq!(Status::parse(&s.to_bytes()).unwrap(), s);
        assert!(Status::parse(&[3, 0, 0, 0, 0]).is_err());
        let w = WalletInfo {
            currency: *b"JPY",
            balance: 5,
            next_counter: 9,
            entries: 3,
            oldest_counter: 6,
        };
        assert_eq!(WalletInfo::parse(&w.to_bytes()).unwrap(), w);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Signed::<ChargeNotice>::parse(&data);
            let _ = Signed::<RefillVoucher>::parse(&data);
            let _ = Signed::<CancelConfirmation>::parse(&data);
            let _ = Signed::<CancelRequest>::parse(&data);
            let _ = CancelChallenge::parse(&data);
            let _ = LogPage::parse(&data);
            let _ = Status::parse(&data);
            let _ = WalletInfo::parse(&data);
        }

        #[test]
        fn log_pages_round_trip(n in 0usize..LOG_PAGE, more: bool, amount: u64) {
            let entries = (0..n as u64).map(|i| LogEntry {
                counter: i,
                kind: EntryKind::Payment,
                cancelled: i % 2 == 0,
                amount,
                time: -5,
                party: b"m".to_vec(),
                reference: vec![b'r'; (i % 33) as usize],
            }).collect();
            let page = LogPage { more, entries };
            prop_assert_eq!(LogPage::parse(&page.to_bytes()).unwrap(), page);
        }
    }
}
