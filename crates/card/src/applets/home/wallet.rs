//! The home card's wallet (seed 004 claims 4-6, Figs. 17-20): a payment key of its own,
//! balance and currency, a strictly increasing counter, and an append-only settlement log
//! (a ring of [`LOG_CAPACITY`] entries).
//!
//! - **PAY**: a charge notice from a trusted market (signature over the labelled notice),
//!   for this card, answering the challenge of the GET CHALLENGE just before (so a notice is
//!   used once), in the wallet's currency, at most the balance. The debit, the counter and
//!   the log entry commit atomically with the command; the answer is the payment token
//!   signed by the payment key. A notice for an order already paid (same market, same
//!   reference and amount, found in the log) debits nothing and answers the same token again,
//!   so a token lost on the way is recovered without paying twice.
//! - **CREDIT**: a refill voucher from a trusted bank for this card, with a sequence number
//!   above the last one this bank's vouchers used: credited once, acknowledged (signed). The
//!   same voucher again (its sequence is in the log) credits nothing and answers the same
//!   acknowledgement again (the bank lost it); an older sequence not in the log is refused.
//! - **CANCEL**: a trusted market's confirmation naming a logged payment of this card (counter,
//!   order, amount must match): credits the amount back, marks the entry cancelled, logs the
//!   cancellation, answers a signed receipt. A second cancellation is refused (`6985`).
//! - **SIGN CANCELLATION REQUEST**: for a logged payment (found by market and order
//!   reference) that is not cancelled, the card builds the [`CancelRequest`] itself (card id,
//!   the payment's counter, market, order and amount from the log, and the market's fresh
//!   challenge) and signs it with the payment key; the market cancels only on it. The only
//!   outside input that reaches the signature is the 16-byte challenge, next to facts of the
//!   card's own log: the payment key never signs arbitrary data. Read-only (changes nothing).
//! - **READ LOG**: the entries from a counter on, oldest first, a page at a time.
//!
//! Trust: TRUST installs a market's or bank's certificate, issued by the card's CA with role
//! server; its common name is the party's id in the messages.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use tessera_apdu::StatusWord;
use tessera_crypto::ecdsa::{PublicKey, Signature, SigningKey};
use tessera_crypto::x509::Role;
use tessera_proto::home::{
    CancelChallenge, CancelConfirmation, CancelReceipt, CancelRequest, ChargeNotice, EntryKind,
    LOG_CAPACITY, LOG_PAGE, LogEntry, LogPage, MAX_PARTIES, Message, PARTY_BANK, PARTY_MARKET,
    PaymentToken, RefillAck, RefillVoucher, Signed, WalletInfo,
};

use super::credential::{Anchor, KeyAndCertificate, REFUSED, VERIFICATION_FAILED, party_id};
use crate::applet::Context;

/// A trusted market or bank.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Party {
    id: Vec<u8>,
    /// SEC1 public key.
    key: Vec<u8>,
    /// Banks: the highest voucher sequence credited.
    last_sequence: u64,
}

/// A logged operation (the wire form is [`LogEntry`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    counter: u64,
    kind: u8,
    cancelled: bool,
    amount: u64,
    time: i64,
    party: Vec<u8>,
    reference: Vec<u8>,
}

impl Entry {
    fn to_wire(&self) -> Option<LogEntry> {
        Some(LogEntry {
            counter: self.counter,
            kind: EntryKind::from_code(self.kind)?,
            cancelled: self.cancelled,
            amount: self.amount,
            time: self.time,
            party: self.party.clone(),
            reference: self.reference.clone(),
        })
    }
}

/// The wallet's persistent state (part of the home applet's).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletState {
    key: KeyAndCertificate,
    currency: [u8; 3],
    balance: u64,
    next_counter: u64,
    log: VecDeque<Entry>,
    markets: Vec<Party>,
    banks: Vec<Party>,
}

impl WalletState {
    /// The payment certificate, when installed.
    pub fn certificate(&self) -> Option<&[u8]> {
        self.key.certificate()
    }

    /// GENERATE KEY of the payment key: (re)opens the wallet in `currency`, before its
    /// certificate is installed (`6985` after).
    pub fn open(
        &mut self,
        ctx: &mut Context<'_>,
        currency: [u8; 3],
    ) -> Result<SigningKey, StatusWord> {
        let key = self.key.generate(ctx)?;
        self.currency = currency;
        self.balance = 0;
        self.next_counter = 1;
        self.log.clear();
        Ok(key)
    }

    /// INSTALL CERTIFICATE of the payment key: role payment, subject common name = the card id.
    pub fn install_certificate(
        &mut self,
        anchor: &mut Anchor,
        der: &[u8],
        card_id: &[u8],
    ) -> Result<(), StatusWord> {
        if !self.key.has_key() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let mut trial = self.key.clone();
        let info = trial.install(anchor, der, Role::Payment)?;
        if info.subject_cn.as_bytes() != card_id {
            return Err(StatusWord::INCORRECT_DATA);
        }
        self.key = trial;
        Ok(())
    }

    /// TRUST: a market's or bank's certificate (role server) from the CA; replaces the
    /// party's earlier key. `6A84` when [`MAX_PARTIES`] are trusted already.
    pub fn trust(&mut self, anchor: &mut Anchor, which: u8, der: &[u8]) -> Result<(), StatusWord> {
        let parties = match which {
            PARTY_MARKET => &mut self.markets,
            PARTY_BANK => &mut self.banks,
            _ => return Err(StatusWord::INCORRECT_P1P2),
        };
        let info = anchor.check(der, Role::Server)?;
        let id = party_id(&info)?;
        let key = info.public_key.to_sec1_bytes().to_vec();
        if let Some(p) = parties.iter_mut().find(|p| p.id == id) {
            p.key = key;
            return Ok(());
        }
        if parties.len() >= MAX_PARTIES {
            return Err(StatusWord::NOT_ENOUGH_MEMORY);
        }
        parties.push(Party { id, key, last_sequence: 0 });
        Ok(())
    }

    /// GET DATA `05`. `6A88` before the wallet is open.
    pub fn info(&self) -> Result<WalletInfo, StatusWord> {
        if self.certificate().is_none() {
            return Err(StatusWord::REFERENCED_DATA_NOT_FOUND);
        }
        Ok(WalletInfo {
            currency: self.currency,
            balance: self.balance,
            next_counter: self.next_counter,
            entries: self.log.len() as u16,
            oldest_counter: self.log.front().map_or(self.next_counter, |e| e.counter),
        })
    }
}

/// A wallet operation on the state, for this card.
pub struct Wallet<'a> {
    /// The wallet state.
    pub state: &'a mut WalletState,
    /// This card's id.
    pub card_id: &'a [u8],
}

fn check_signature<M: Message>(
    parties: &[Party],
    id: &[u8],
    signed: &Signed<M>,
) -> Result<usize, StatusWord> {
    let index = parties.iter().position(|p| p.id == id).ok_or(REFUSED)?;
    let key = PublicKey::from_sec1_bytes(&parties[index].key).map_err(|_| StatusWord::UNKNOWN)?;
    let signature = Signature::from_bytes(&signed.signature).map_err(|_| VERIFICATION_FAILED)?;
    key.verify(&signed.message.signed_bytes(), &signature).map_err(|_| VERIFICATION_FAILED)?;
    Ok(index)
}

impl Wallet<'_> {
    fn key(&self) -> Result<SigningKey, StatusWord> {
        self.state.key.certified_key()
    }

    fn sign<M: Message>(&self, message: M) -> Result<Vec<u8>, StatusWord> {
        let signature = self.key()?.sign(&message.signed_bytes()).to_bytes();
        Ok(Signed { message, signature }.to_bytes())
    }

    fn for_this_card(&self, card: &[u8], currency: Option<&[u8; 3]>) -> Result<(), StatusWord> {
        if card != self.card_id || currency.is_some_and(|c| *c != self.state.currency) {
            return Err(StatusWord::INCORRECT_DATA);
        }
        Ok(())
    }

    fn log(&mut self, mut entry: Entry) -> u64 {
        let state = &mut *self.state;
        entry.counter = state.next_counter;
        state.next_counter = state.next_counter.saturating_add(1);
        if state.log.len() >= LOG_CAPACITY {
            state.log.pop_front();
        }
        state.log.push_back(entry);
        state.next_counter - 1
    }

    fn token(&self, entry: &Entry, currency: [u8; 3]) -> PaymentToken {
        PaymentToken {
            card: self.card_id.to_vec(),
            counter: entry.counter,
            currency,
            amount: entry.amount,
            order: entry.reference.clone(),
            market: entry.party.clone(),
            time: entry.time,
        }
    }

    /// PAY (see the module docs).
    pub fn pay(&mut self, data: &[u8], challenge: Option<&[u8]>) -> Result<Vec<u8>, StatusWord> {
        self.key()?;
        let signed = Signed::<ChargeNotice>::parse(data).map_err(|_| StatusWord::INCORRECT_DATA)?;
        check_signature(&self.state.markets, &signed.message.market, &signed)?;
        let n = signed.message;
        self.for_this_card(&n.card, Some(&n.currency))?;
        if challenge != Some(&n.challenge[..]) {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        if n.amount == 0 {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let paid = self.state.log.iter().find(|e| {
            e.kind == EntryKind::Payment.code() && e.party == n.market && e.reference == n.order
        });
        if let Some(entry) = paid {
            // The same order again: the token again, never a second debit.
            if entry.amount != n.amount || entry.cancelled {
                return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
            }
            let token = self.token(entry, self.state.currency);
            return self.sign(token);
        }
        if n.amount > self.state.balance {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        self.state.balance -= n.amount;
        let mut entry = Entry {
            counter: 0,
            kind: EntryKind::Payment.code(),
            cancelled: false,
            amount: n.amount,
            time: n.time,
            party: n.market,
            reference: n.order,
        };
        entry.counter = self.log(entry.clone());
        let token = self.token(&entry, self.state.currency);
        self.sign(token)
    }

    /// CREDIT (see the module docs).
    pub fn credit(&mut self, data: &[u8]) -> Result<Vec<u8>, StatusWord> {
        self.key()?;
        let signed =
            Signed::<RefillVoucher>::parse(data).map_err(|_| StatusWord::INCORRECT_DATA)?;
        let bank = check_signature(&self.state.banks, &signed.message.bank, &signed)?;
        let v = signed.message;
        self.for_this_card(&v.card, Some(&v.currency))?;
        if v.amount == 0 || v.sequence == 0 {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let reference = v.sequence.to_be_bytes().to_vec();
        let ack = |counter| RefillAck {
            card: self.card_id.to_vec(),
            bank: v.bank.clone(),
            sequence: v.sequence,
            amount: v.amount,
            counter,
        };
        if v.sequence <= self.state.banks[bank].last_sequence {
            let logged = self.state.log.iter().find(|e| {
                e.kind == EntryKind::Refill.code() && e.party == v.bank && e.reference == reference
            });
            return match logged {
                // Retried after a lost acknowledgement: acknowledge again, credit nothing.
                Some(e) if e.amount == v.amount => self.sign(ack(e.counter)),
                _ => Err(StatusWord::CONDITIONS_NOT_SATISFIED),
            };
        }
        self.state.balance =
            self.state.balance.checked_add(v.amount).ok_or(StatusWord::INCORRECT_DATA)?;
        self.state.banks[bank].last_sequence = v.sequence;
        let counter = self.log(Entry {
            counter: 0,
            kind: EntryKind::Refill.code(),
            cancelled: false,
            amount: v.amount,
            time: v.time,
            party: v.bank.clone(),
            reference,
        });
        self.sign(ack(counter))
    }

    /// CANCEL (see the module docs).
    pub fn cancel(&mut self, data: &[u8]) -> Result<Vec<u8>, StatusWord> {
        self.key()?;
        let signed =
            Signed::<CancelConfirmation>::parse(data).map_err(|_| StatusWord::INCORRECT_DATA)?;
        check_signature(&self.state.markets, &signed.message.market, &signed)?;
        let c = signed.message;
        self.for_this_card(&c.card, None)?;
        let entry = self
            .state
            .log
            .iter_mut()
            .find(|e| e.counter == c.counter && e.kind == EntryKind::Payment.code())
            .ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND)?;
        if entry.party != c.market || entry.reference != c.order || entry.amount != c.amount {
            return Err(StatusWord::INCORRECT_DATA);
        }
        if entry.cancelled {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        entry.cancelled = true;
        self.state.balance =
            self.state.balance.checked_add(c.amount).ok_or(StatusWord::INCORRECT_DATA)?;
        let counter = self.log(Entry {
            counter: 0,
            kind: EntryKind::Cancellation.code(),
            cancelled: false,
            amount: c.amount,
            time: c.time,
            party: c.market.clone(),
            reference: c.order,
        });
        self.sign(CancelReceipt {
            card: self.card_id.to_vec(),
            market: c.market,
            payment_counter: c.counter,
            counter,
            amount: c.amount,
        })
    }

    /// SIGN CANCELLATION REQUEST (see the module docs): `6A88` when no payment to that market
    /// with that order is logged (or it left the ring), `6985` when it is cancelled already.
    pub fn sign_cancel_request(&self, data: &[u8]) -> Result<Vec<u8>, StatusWord> {
        self.key()?;
        let what = CancelChallenge::parse(data).map_err(|_| StatusWord::INCORRECT_DATA)?;
        let entry = self
            .state
            .log
            .iter()
            .find(|e| {
                e.kind == EntryKind::Payment.code()
                    && e.party == what.market
                    && e.reference == what.order
            })
            .ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND)?;
        if entry.cancelled {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        self.sign(CancelRequest {
            card: self.card_id.to_vec(),
            counter: entry.counter,
            market: entry.party.clone(),
            order: entry.reference.clone(),
            amount: entry.amount,
            challenge: what.challenge,
        })
    }

    /// READ LOG from the counter in `data` (8 bytes) on.
    pub fn read_log(&self, data: &[u8]) -> Result<Vec<u8>, StatusWord> {
        self.key()?;
        let from: [u8; 8] = data.try_into().map_err(|_| StatusWord::WRONG_LENGTH)?;
        let from = u64::from_be_bytes(from);
        let mut wanted = self.state.log.iter().filter(|e| e.counter >= from);
        let entries: Vec<LogEntry> =
            wanted.by_ref().take(LOG_PAGE).filter_map(Entry::to_wire).collect();
        let more = wanted.next().is_some();
        Ok(LogPage { more, entries }.to_bytes())
    }
}
