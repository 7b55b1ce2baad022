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
//! - [`cancel`]: the cancellation to the market → its signed confirmation → CANCEL (the card
//!   credits the amount back and marks the payment cancelled, once).
//!
//! Every card operation needs the encryption-enabled state (PIN2 accepted over the control
//! channel); the card refuses otherwise ([`EmoneyError::Card`] "locked"), and the host's
//! [`HomeCardSession`] adds the ten-minute idle fallback.

use serde_json::json;
use tessera_crypto::x509::Certificate;
use tessera_host::CardChannel;
use tessera_host::home::{CardError, Clock, HomeCardSession};
use tessera_proto::home::{
    CancelConfirmation, CancelReceipt, ChargeNotice, LogEntry, PAY_CHALLENGE_LEN, PaymentToken,
    RefillAck, RefillVoucher, Signed, WalletInfo,
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

/// Cancels `order` at the market and has the card credit it back; the card's receipt.
pub fn cancel(
    card: &mut dyn WalletPort,
    market: &mut dyn Transport,
    order: &str,
) -> Result<Signed<CancelReceipt>> {
    let path = format!("/orders/{order}/cancel");
    let answer = call(market, "POST", &path, Some(&json!({})))?;
    let confirmation = from_hex(field(&answer, "confirmation")?, "confirmation")?;
    card.cancel(&confirmation)
}
