//! The home server's side of the wallet (Figs. 17, 18, 20): the home card's wallet commands
//! behind a [`WalletPort`], and the three flows that join card, market and bank.
//!
//! - [`purchase`]: order → GET CHALLENGE → the market's charge notice for this card and
//!   challenge → PAY (the card checks the notice and debits) → the payment token and the
//!   payment certificate to the market → the market's signed [`Settlement`].
//! - [`refill`]: the bank's voucher for this card → CREDIT → the card's acknowledgement to the
//!   bank, which debits the account. [`settle_voucher`] repeats the last two steps and is safe
//!   to repeat: a lost acknowledgement is recovered by sending the same voucher again (the card
//!   answers the same acknowledgement and credits nothing) and the bank debits once.
//! - [`cancel`]: the market's cancellation challenge for the order → SIGN CANCELLATION
//!   REQUEST (the card signs, with its payment key, a request it builds from its own log entry
//!   of the payment) → the request and the payment certificate to the market, which verifies
//!   them → its signed confirmation → CANCEL (the card credits the amount back and marks the
//!   payment cancelled, once).
//!
//! Every card operation needs the encryption-enabled state (PIN2 accepted over the control
//! channel); the card refuses otherwise ([`EmoneyError::Card`] "locked"), and the host's
//! [`HomeCardSession`] adds the ten-minute idle fallback.

use serde_json::json;
use tessera_crypto::x509::Certificate;
use tessera_host::CardChannel;
use tessera_host::home::{CardError, Clock, HomeCardSession};
use tessera_proto::home::{
    CancelChallenge, CancelConfirmation, CancelReceipt, CancelRequest, ChargeNotice, LOG_PAGE,
    LogEntry, LogPage, PAY_CHALLENGE_LEN, PaymentToken, RefillAck, RefillVoucher, Signed,
    WalletInfo,
};

use super::https::{Transport, call, field};
use super::market::Order;
use super::{EmoneyError, Result, Settlement, from_hex, to_hex};

/// The home card's wallet commands.
pub trait WalletPort {
    /// GET CHALLENGE: what the next charge notice must answer.
    fn challenge(&mut self) -> Result<[u8; PAY_CHALLENGE_LEN]>;
    /// PAY.
    fn pay(&mut self, notice: &Signed<ChargeNotice>) -> Result<Signed<PaymentToken>>;
    /// CREDIT.
    fn credit(&mut self, voucher: &Signed<RefillVoucher>) -> Result<Signed<RefillAck>>;
    /// SIGN CANCELLATION REQUEST: the card's signed request to cancel the payment `what`
    /// names, answering the market's challenge (changes nothing on the card).
    fn cancel_request(&mut self, what: &CancelChallenge) -> Result<Signed<CancelRequest>>;
    /// CANCEL.
    fn cancel(
        &mut self,
        confirmation: &Signed<CancelConfirmation>,
    ) -> Result<Signed<CancelReceipt>>;
    /// GET DATA (wallet).
    fn info(&mut self) -> Result<WalletInfo>;
    /// READ LOG from counter `from` on.
    fn read_log(&mut self, from: u64) -> Result<Vec<LogEntry>>;
    /// The payment certificate (DER).
    fn payment_certificate(&mut self) -> Result<Vec<u8>>;
}

fn card_error(e: CardError) -> EmoneyError {
    EmoneyError::Card(e.to_string())
}

impl<C: CardChannel, K: Clock> WalletPort for HomeCardSession<C, K> {
    fn challenge(&mut self) -> Result<[u8; PAY_CHALLENGE_LEN]> {
        self.card().and_then(|c| c.pay_challenge()).map_err(card_error)
    }
    fn pay(&mut self, notice: &Signed<ChargeNotice>) -> Result<Signed<PaymentToken>> {
        self.card().and_then(|c| c.pay(notice)).map_err(card_error)
    }
    fn credit(&mut self, voucher: &Signed<RefillVoucher>) -> Result<Signed<RefillAck>> {
        self.card().and_then(|c| c.credit(voucher)).map_err(card_error)
    }
    fn cancel_request(&mut self, what: &CancelChallenge) -> Result<Signed<CancelRequest>> {
        self.card().and_then(|c| c.sign_cancel_request(what)).map_err(card_error)
    }
    fn cancel(
        &mut self,
        confirmation: &Signed<CancelConfirmation>,
    ) -> Result<Signed<CancelReceipt>> {
        self.card().and_then(|c| c.cancel(confirmation)).map_err(card_error)
    }
    fn info(&mut self) -> Result<WalletInfo> {
        self.card().and_then(|c| c.wallet()).map_err(card_error)
    }
    fn read_log(&mut self, from: u64) -> Result<Vec<LogEntry>> {
        self.card().and_then(|c| c.read_log(from)).map_err(card_error)
    }
    fn payment_certificate(&mut self) -> Result<Vec<u8>> {
        self.card_unchecked().payment_certificate().map(|c| c.der().to_vec()).map_err(card_error)
    }
}

/// The card id: the payment certificate's common name.
pub fn card_id(certificate: &[u8]) -> Result<Vec<u8>> {
    Certificate::from_der(certificate.to_vec())
        .and_then(|c| c.info())
        .map(|i| i.subject_cn.into_bytes())
        .map_err(|e| EmoneyError::Card(format!("payment certificate: {e}")))
}

/// A completed purchase.
#[derive(Debug, Clone)]
pub struct Purchase {
    /// The order as placed.
    pub order: Order,
    /// The card's payment token.
    pub token: Signed<PaymentToken>,
    /// The market's settlement.
    pub settlement: Signed<Settlement>,
}

/// Buys `quantity` of `sku` at the market behind `market`, paying with the card (module docs).
pub fn purchase(
    card: &mut dyn WalletPort,
    market: &mut dyn Transport,
    sku: &str,
    quantity: u64,
) -> Result<Purchase> {
    let answer =
        call(market, "POST", "/orders", Some(&json!({ "sku": sku, "quantity": quantity })))?;
    let order: Order = serde_json::from_value(answer)
        .map_err(|e| EmoneyError::Transport(format!("the order does not parse: {e}")))?;
    pay_order(card, market, order)
}

/// Pays a placed `order` (the steps of [`purchase`] after the order).
pub fn pay_order(
    card: &mut dyn WalletPort,
    market: &mut dyn Transport,
    order: Order,
) -> Result<Purchase> {
    let certificate = card.payment_certificate()?;
    let id = card_id(&certificate)?;
    let challenge = card.challenge()?;
    let path = format!("/orders/{}/charge", order.order);
    let body = json!({ "card": hex::encode(&id), "challenge": hex::encode(challenge) });
    let notice: Signed<ChargeNotice> =
        from_hex(field(&call(market, "POST", &path, Some(&body))?, "notice")?, "notice")?;
    if notice.message.amount != order.amount || notice.message.order != order.order.as_bytes() {
        return Err(EmoneyError::Refused("the charge notice is not for this order".into()));
    }
    let token = card.pay(&notice)?;
    let path = format!("/orders/{}/pay", order.order);
    let body = json!({ "token": to_hex(&token), "certificate": hex::encode(&certificate) });
    let answer = call(market, "POST", &path, Some(&body))?;
    let settlement: Signed<Settlement> = from_hex(field(&answer, "settlement")?, "settlement")?;
    let s = &settlement.message;
    if s.counter != token.message.counter || s.amount != token.message.amount || s.card != id {
        return Err(EmoneyError::Refused("the settlement does not match the payment".into()));
    }
    Ok(Purchase { order, token, settlement })
}

/// A completed refill.
#[derive(Debug, Clone)]
pub struct Refill {
    /// The bank's voucher.
    pub voucher: Signed<RefillVoucher>,
    /// The card's acknowledgement.
    pub ack: Signed<RefillAck>,
    /// Whether the bank debited the account now (false: it had for this voucher already).
    pub debited: bool,
    /// The account's balance after.
    pub account_balance: u64,
}

/// Asks the bank for a voucher of `amount` from `account` for this card.
pub fn request_voucher(
    card: &mut dyn WalletPort,
    bank: &mut dyn Transport,
    account: &str,
    amount: u64,
) -> Result<Signed<RefillVoucher>> {
    let certificate = card.payment_certificate()?;
    let body =
        json!({ "account": account, "certificate": hex::encode(&certificate), "amount": amount });
    let answer = call(bank, "POST", "/vouchers", Some(&body))?;
    from_hex(field(&answer, "voucher")?, "voucher")
}

/// CREDIT of `voucher`, then its acknowledgement to the bank; safe to repeat (module docs).
pub fn settle_voucher(
    card: &mut dyn WalletPort,
    bank: &mut dyn Transport,
    voucher: Signed<RefillVoucher>,
) -> Result<Refill> {
    let ack = card.credit(&voucher)?;
    let (debited, account_balance) = acknowledge(card, bank, &ack)?;
    Ok(Refill { voucher, ack, debited, account_balance })
}

/// Sends the card's acknowledgement to the bank: (debited now, account balance).
pub fn acknowledge(
    card: &mut dyn WalletPort,
    bank: &mut dyn Transport,
    ack: &Signed<RefillAck>,
) -> Result<(bool, u64)> {
    let certificate = card.payment_certificate()?;
    let body = json!({ "ack": to_hex(ack), "certificate": hex::encode(&certificate) });
    let answer = call(bank, "POST", "/acks", Some(&body))?;
    let debited = answer["debited"].as_bool();
    let balance = answer["balance"].as_u64();
    match (debited, balance) {
        (Some(d), Some(b)) => Ok((d, b)),
        _ => Err(EmoneyError::Transport("the bank's answer lacks debited/balance".into())),
    }
}

/// Refills the card with `amount` from `account` at the bank (module docs).
pub fn refill(
    card: &mut dyn WalletPort,
    bank: &mut dyn Transport,
    account: &str,
    amount: u64,
) -> Result<Refill> {
    let voucher = request_voucher(card, bank, account, amount)?;
    settle_voucher(card, bank, voucher)
}

/// Settles every voucher of `account` the bank issued to this card and has not seen
/// acknowledged (`GET /accounts/{account}/vouchers`): recovers a refill whose voucher, credit
/// or acknowledgement was lost anywhere on the way. Each is credited once and debited once.
pub fn resume_refills(
    card: &mut dyn WalletPort,
    bank: &mut dyn Transport,
    account: &str,
) -> Result<Vec<Refill>> {
    let id = card_id(&card.payment_certificate()?)?;
    let answer = call(bank, "GET", &format!("/accounts/{account}/vouchers"), None)?;
    let listed = answer["vouchers"]
        .as_array()
        .ok_or_else(|| EmoneyError::Transport("the bank's answer lacks vouchers".into()))?;
    let mut out = Vec::new();
    for v in listed {
        let voucher: Signed<RefillVoucher> = from_hex(v.as_str().unwrap_or_default(), "voucher")?;
        if voucher.message.card == id {
            out.push(settle_voucher(card, bank, voucher)?);
        }
    }
    Ok(out)
}

/// Cancels `order` at the market and has the card credit it back (module docs); the card's
/// receipt.
pub fn cancel(
    card: &mut dyn WalletPort,
    market: &mut dyn Transport,
    order: &str,
) -> Result<Signed<CancelReceipt>> {
    let path = format!("/orders/{order}/cancel-challenge");
    let answer = call(market, "POST", &path, Some(&json!({})))?;
    let what = hex::decode(field(&answer, "challenge")?)
        .ok()
        .and_then(|b| CancelChallenge::parse(&b).ok())
        .ok_or_else(|| {
            EmoneyError::Transport("the cancellation challenge does not parse".into())
        })?;
    if what.order != order.as_bytes() {
        return Err(EmoneyError::Transport(format!(
            "the market's cancellation challenge is for another order than {order}"
        )));
    }
    let request = card.cancel_request(&what)?;
    let certificate = card.payment_certificate()?;
    let body = json!({ "request": to_hex(&request), "certificate": hex::encode(certificate) });
    let answer = call(market, "POST", &format!("/orders/{order}/cancel"), Some(&body))?;
    let confirmation = from_hex(field(&answer, "confirmation")?, "confirmation")?;
    card.cancel(&confirmation)
}

/// A wallet request from the terminal to the home server (the body of the control channel's
/// `Wallet` frame): `op (1) || argument`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// GET CHALLENGE.
    Challenge,
    /// PAY with the market's notice.
    Pay(Signed<ChargeNotice>),
    /// CREDIT with the bank's voucher.
    Credit(Signed<RefillVoucher>),
    /// CANCEL with the market's confirmation.
    Cancel(Signed<CancelConfirmation>),
    /// SIGN CANCELLATION REQUEST for the market's challenge.
    CancelRequest(CancelChallenge),
    /// GET DATA (wallet).
    Info,
    /// READ LOG from this counter on (one page of at most [`LOG_PAGE`] entries).
    ReadLog(u64),
    /// The payment certificate.
    Certificate,
}

mod op {
    pub const CHALLENGE: u8 = 1;
    pub const PAY: u8 = 2;
    pub const CREDIT: u8 = 3;
    pub const CANCEL: u8 = 4;
    pub const INFO: u8 = 5;
    pub const READ_LOG: u8 = 6;
    pub const CERTIFICATE: u8 = 7;
    pub const CANCEL_REQUEST: u8 = 8;
}

impl Request {
    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Challenge => vec![op::CHALLENGE],
            Request::Pay(n) => [vec![op::PAY], n.to_bytes()].concat(),
            Request::Credit(v) => [vec![op::CREDIT], v.to_bytes()].concat(),
            Request::Cancel(c) => [vec![op::CANCEL], c.to_bytes()].concat(),
            Request::Info => vec![op::INFO],
            Request::ReadLog(from) => [vec![op::READ_LOG], from.to_be_bytes().to_vec()].concat(),
            Request::Certificate => vec![op::CERTIFICATE],
            Request::CancelRequest(w) => [vec![op::CANCEL_REQUEST], w.to_bytes()].concat(),
        }
    }

    /// Parses the encoding.
    pub fn parse(data: &[u8]) -> Result<Request> {
        let bad =
            |e: &dyn std::fmt::Display| EmoneyError::BadRequest(format!("wallet request: {e}"));
        let (&code, arg) = data.split_first().ok_or_else(|| bad(&"empty"))?;
        let none = |r: Request| if arg.is_empty() { Ok(r) } else { Err(bad(&"trailing bytes")) };
        match code {
            op::CHALLENGE => none(Request::Challenge),
            op::PAY => Signed::parse(arg).map(Request::Pay).map_err(|e| bad(&e)),
            op::CREDIT => Signed::parse(arg).map(Request::Credit).map_err(|e| bad(&e)),
            op::CANCEL => Signed::parse(arg).map(Request::Cancel).map_err(|e| bad(&e)),
            op::INFO => none(Request::Info),
            op::READ_LOG => <[u8; 8]>::try_from(arg)
                .map(|b| Request::ReadLog(u64::from_be_bytes(b)))
                .map_err(|_| bad(&"counter length")),
            op::CERTIFICATE => none(Request::Certificate),
            op::CANCEL_REQUEST => {
                CancelChallenge::parse(arg).map(Request::CancelRequest).map_err(|e| bad(&e))
            }
            _ => Err(bad(&format!("unknown operation {code}"))),
        }
    }
}

/// Runs an encoded request on the card; the encoded reply (`00 || answer` or `01 || UTF-8
/// reason`) and whether a payment was made (for the settlement notice).
pub fn serve(card: &mut dyn WalletPort, request: &[u8]) -> (Vec<u8>, bool) {
    let answer = Request::parse(request).and_then(|r| {
        let paid = matches!(r, Request::Pay(_));
        let bytes = match r {
            Request::Challenge => card.challenge()?.to_vec(),
            Request::Pay(n) => card.pay(&n)?.to_bytes(),
            Request::Credit(v) => card.credit(&v)?.to_bytes(),
            Request::Cancel(c) => card.cancel(&c)?.to_bytes(),
            Request::Info => card.info()?.to_bytes(),
            Request::ReadLog(from) => {
                let mut entries = card.read_log(from)?;
                let more = entries.len() > LOG_PAGE;
                entries.truncate(LOG_PAGE);
                LogPage { more, entries }.to_bytes()
            }
            Request::Certificate => card.payment_certificate()?,
            Request::CancelRequest(w) => card.cancel_request(&w)?.to_bytes(),
        };
        Ok((bytes, paid))
    });
    match answer {
        Ok((bytes, paid)) => ([vec![0], bytes].concat(), paid),
        Err(e) => ([vec![1], e.to_string().into_bytes()].concat(), false),
    }
}

/// Parses an encoded reply: the answer, or the home server's reason as [`EmoneyError::Card`].
pub fn parse_reply(reply: &[u8]) -> Result<Vec<u8>> {
    match reply.split_first() {
        Some((0, answer)) => Ok(answer.to_vec()),
        Some((1, reason)) => Err(EmoneyError::Card(String::from_utf8_lossy(reason).into_owned())),
        _ => Err(EmoneyError::Transport("malformed wallet reply".into())),
    }
}

/// The home card's wallet on the home server (what it does with the control channel's
/// `Wallet` frames), with the settlement notice after each payment.
pub struct HomeWallet {
    card: super::notice::SharedWallet,
    scheduler: Option<super::notice::Scheduler>,
}

impl HomeWallet {
    /// The wallet of `card`; `scheduler` (if any) is told after each payment.
    pub fn new(
        card: super::notice::SharedWallet,
        scheduler: Option<super::notice::Scheduler>,
    ) -> HomeWallet {
        HomeWallet { card, scheduler }
    }
}

impl HomeWallet {
    /// Runs an encoded request on the home card (see [`serve`]); the encoded reply.
    pub fn handle(&self, request: &[u8]) -> Vec<u8> {
        let (reply, paid) = {
            let mut card = self.card.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            serve(&mut *card, request)
        };
        if paid && let Some(s) = &self.scheduler {
            s.after_payment();
        }
        reply
    }

    /// As the home server's handler of `Wallet` frames
    /// ([`crate::server::HomeServer::set_wallet`]).
    pub fn into_handler(self: std::sync::Arc<Self>) -> crate::server::WalletFn {
        std::sync::Arc::new(move |request: &[u8]| self.handle(request))
    }
}

/// The home card reached from the terminal over the control channel (`Wallet` frames): the
/// terminal side of [`WalletService`]. Shares the connection with [`super::https::ProxyTransport`].
pub struct RemoteWallet<'a> {
    conn: &'a std::cell::RefCell<crate::terminal::ControlConnection>,
}

impl<'a> RemoteWallet<'a> {
    /// The wallet behind `conn` (PIN2 already sent).
    pub fn new(conn: &'a std::cell::RefCell<crate::terminal::ControlConnection>) -> Self {
        RemoteWallet { conn }
    }

    fn ask(&mut self, request: Request) -> Result<Vec<u8>> {
        let reply = self
            .conn
            .borrow_mut()
            .wallet(&request.encode())
            .map_err(|e| EmoneyError::Card(e.to_string()))?;
        parse_reply(&reply)
    }
}

fn malformed(e: impl std::fmt::Display) -> EmoneyError {
    EmoneyError::Transport(format!("wallet reply: {e}"))
}

impl WalletPort for RemoteWallet<'_> {
    fn challenge(&mut self) -> Result<[u8; PAY_CHALLENGE_LEN]> {
        self.ask(Request::Challenge)?.try_into().map_err(|_| malformed("challenge length"))
    }
    fn pay(&mut self, notice: &Signed<ChargeNotice>) -> Result<Signed<PaymentToken>> {
        Signed::parse(&self.ask(Request::Pay(notice.clone()))?).map_err(malformed)
    }
    fn credit(&mut self, voucher: &Signed<RefillVoucher>) -> Result<Signed<RefillAck>> {
        Signed::parse(&self.ask(Request::Credit(voucher.clone()))?).map_err(malformed)
    }
    fn cancel_request(&mut self, what: &CancelChallenge) -> Result<Signed<CancelRequest>> {
        Signed::parse(&self.ask(Request::CancelRequest(what.clone()))?).map_err(malformed)
    }
    fn cancel(
        &mut self,
        confirmation: &Signed<CancelConfirmation>,
    ) -> Result<Signed<CancelReceipt>> {
        Signed::parse(&self.ask(Request::Cancel(confirmation.clone()))?).map_err(malformed)
    }
    fn info(&mut self) -> Result<WalletInfo> {
        WalletInfo::parse(&self.ask(Request::Info)?).map_err(malformed)
    }
    fn read_log(&mut self, from: u64) -> Result<Vec<LogEntry>> {
        let mut out: Vec<LogEntry> = Vec::new();
        let mut next = from;
        loop {
            let page = LogPage::parse(&self.ask(Request::ReadLog(next))?).map_err(malformed)?;
            let last = page.entries.last().map(|e| e.counter);
            out.extend(page.entries);
            match last {
                Some(c) if page.more && c >= next => next = c + 1,
                _ => return Ok(out),
            }
        }
    }
    fn payment_certificate(&mut self) -> Result<Vec<u8>> {
        self.ask(Request::Certificate)
    }
}

/// The real home card as the home server holds it ([`crate::server::CardHome`], shared with
/// the market handshakes), as a [`WalletPort`]. The home server's idle fallback and PIN2
/// state apply to it as to the handshakes.
pub struct CardHomeWallet(pub std::sync::Arc<crate::server::CardHome>);

impl WalletPort for CardHomeWallet {
    fn challenge(&mut self) -> Result<[u8; PAY_CHALLENGE_LEN]> {
        self.0.card().challenge()
    }
    fn pay(&mut self, notice: &Signed<ChargeNotice>) -> Result<Signed<PaymentToken>> {
        self.0.card().pay(notice)
    }
    fn credit(&mut self, voucher: &Signed<RefillVoucher>) -> Result<Signed<RefillAck>> {
        self.0.card().credit(voucher)
    }
    fn cancel_request(&mut self, what: &CancelChallenge) -> Result<Signed<CancelRequest>> {
        self.0.card().cancel_request(what)
    }
    fn cancel(
        &mut self,
        confirmation: &Signed<CancelConfirmation>,
    ) -> Result<Signed<CancelReceipt>> {
        self.0.card().cancel(confirmation)
    }
    fn info(&mut self) -> Result<WalletInfo> {
        self.0.card().info()
    }
    fn read_log(&mut self, from: u64) -> Result<Vec<LogEntry>> {
        self.0.card().read_log(from)
    }
    fn payment_certificate(&mut self) -> Result<Vec<u8>> {
        self.0.card().payment_certificate()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn notice() -> Signed<ChargeNotice> {
        Signed {
            message: ChargeNotice {
                market: b"m".to_vec(),
                order: b"o".to_vec(),
                currency: *b"EUR",
                amount: 5,
                time: 7,
                card: b"c".to_vec(),
                challenge: [3; PAY_CHALLENGE_LEN],
            },
            signature: [1; 64],
        }
    }

    #[test]
    fn requests_round_trip_and_malformed_ones_are_refused() {
        for r in [
            Request::Challenge,
            Request::Pay(notice()),
            Request::Info,
            Request::ReadLog(u64::MAX),
            Request::Certificate,
            Request::CancelRequest(CancelChallenge {
                market: b"m".to_vec(),
                order: b"o".to_vec(),
                challenge: [4; 16],
            }),
        ] {
            assert_eq!(Request::parse(&r.encode()).unwrap(), r);
        }
        assert!(matches!(Request::parse(&[8, 0, 1]), Err(EmoneyError::BadRequest(_))));
        let pay = Request::Pay(notice()).encode();
        for bad in [&[][..], &[0], &[8], &[1, 0], &[5, 0], &[6, 0, 0, 0], &pay[..pay.len() - 1]] {
            assert!(matches!(Request::parse(bad), Err(EmoneyError::BadRequest(_))), "{bad:?}");
        }
        // A notice where a voucher is expected does not parse.
        let mut credit = pay.clone();
        credit[0] = 3;
        assert!(Request::parse(&credit).is_err());
    }

    #[test]
    fn replies_parse_or_carry_the_reason() {
        assert_eq!(parse_reply(&[0, 9, 9]).unwrap(), [9, 9]);
        match parse_reply(b"\x01the card is locked") {
            Err(EmoneyError::Card(m)) => assert_eq!(m, "the card is locked"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_reply(&[]), Err(EmoneyError::Transport(_))));
        assert!(matches!(parse_reply(&[2]), Err(EmoneyError::Transport(_))));
    }
}
