//! E-money end to end over real HTTPS (client certificates from the issuer CA): refill, buy,
//! cancel with an in-memory home card, the market and the bank on loopback; and every attack
//! and fault of issue 9 that is not the card's alone.

#![allow(clippy::unwrap_used)]

#[path = "emoney_support.rs"]
mod support;

use serde_json::json;
use support::*;
use tessera_home::emoney::https::DirectTransport;
use tessera_home::emoney::https::{call, field};
use tessera_home::emoney::market::OrderStatus;
use tessera_home::emoney::wallet::{self, WalletPort};
use tessera_home::emoney::{CANCEL_WINDOW, EmoneyError, from_hex, to_hex};
use tessera_proto::home::{
    CancelChallenge, CancelConfirmation, CancelRequest, ChargeNotice, EntryKind, Message,
    PaymentToken, Signed,
};

fn conflict(r: Result<impl std::fmt::Debug, EmoneyError>, needle: &str) {
    match r {
        Err(EmoneyError::Conflict(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("expected a conflict ({needle}), got {other:?}"),
    }
}

fn refused(r: Result<impl std::fmt::Debug, EmoneyError>, needle: &str) {
    match r {
        Err(EmoneyError::Refused(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("expected a refusal ({needle}), got {other:?}"),
    }
}

fn card_refused(r: Result<impl std::fmt::Debug, EmoneyError>) {
    assert!(matches!(r, Err(EmoneyError::Card(_))), "expected the card to refuse, got {r:?}");
}

#[test]
fn refill_buy_and_cancel_end_to_end() {
    let mut w = World::new();
    let (mut bank, mut market) = (w.bank_client(), w.market_client());
    let refill = wallet::refill(&mut w.card, &mut bank, "alice", 10_000).unwrap();
    assert!(refill.debited);
    assert_eq!(refill.account_balance, 90_000);
    assert_eq!(w.balance(), 10_000);

    let catalogue = call(&mut market, "GET", "/catalogue", None).unwrap();
    assert_eq!(catalogue["market"], "market.test");
    let bought = wallet::purchase(&mut w.card, &mut market, "book", 2).unwrap();
    assert_eq!(bought.order.amount, 2_500);
    assert_eq!(bought.settlement.message.counter, bought.token.message.counter);
    // The settlement is the market's signature.
    tessera_home::emoney::verify(&w.market.party().key.public_key(), &bought.settlement).unwrap();
    assert_eq!(w.balance(), 7_500);
    let status = w.market.status(&fp(&w), &bought.order.order).unwrap();
    assert_eq!(status.status, OrderStatus::Paid);

    let receipt = wallet::cancel(&mut w.card, &mut market, &bought.order.order).unwrap();
    assert_eq!(receipt.message.amount, 2_500);
    assert_eq!(receipt.message.payment_counter, bought.token.message.counter);
    assert_eq!(w.balance(), 10_000);
    let log = w.card.read_log(0).unwrap();
    let kinds: Vec<_> = log.iter().map(|e| (e.kind, e.cancelled, e.amount)).collect();
    assert_eq!(
        kinds,
        [
            (EntryKind::Refill, false, 10_000),
            (EntryKind::Payment, true, 2_500),
            (EntryKind::Cancellation, false, 2_500)
        ]
    );
    // The order's confirmation can be fetched again; the order is cancelled.
    let status = w.market.status(&fp(&w), &bought.order.order).unwrap();
    assert_eq!(status.status, OrderStatus::Cancelled);
    assert!(status.confirmation.is_some());
}

fn refill(w: &mut World, account: &str, amount: u64) -> Result<wallet::Refill, EmoneyError> {
    let mut bank = w.bank_client();
    wallet::refill(&mut w.card, &mut bank, account, amount)
}

fn buy(w: &mut World, sku: &str, n: u64) -> Result<wallet::Purchase, EmoneyError> {
    let mut market = w.market_client();
    wallet::purchase(&mut w.card, &mut market, sku, n)
}

/// The fingerprint of the test client's TLS certificate (the market binds orders to it).
fn fp(w: &World) -> [u8; 32] {
    use tessera_home::ClientKey;
    tessera_home::fingerprint(w.tls.certificate_chain()[0].as_ref())
}

/// A charge notice and token for a new order, the token not yet sent to the market.
fn charged_token(w: &mut World, sku: &str) -> (String, Signed<PaymentToken>) {
    let mut market = w.market_client();
    let order = call(&mut market, "POST", "/orders", Some(&json!({ "sku": sku }))).unwrap();
    let reference = field(&order, "order").unwrap().to_string();
    let challenge = w.card.challenge().unwrap();
    let body = json!({ "card": hex::encode("HOME-1"), "challenge": hex::encode(challenge) });
    let answer =
        call(&mut market, "POST", &format!("/orders/{reference}/charge"), Some(&body)).unwrap();
    let notice: Signed<ChargeNotice> =
        from_hex(field(&answer, "notice").unwrap(), "notice").unwrap();
    (reference, w.card.pay(&notice).unwrap())
}

fn submit(
    w: &mut World,
    reference: &str,
    token: &Signed<PaymentToken>,
) -> Result<serde_json::Value, EmoneyError> {
    let certificate = w.card.payment_certificate().unwrap();
    let body = json!({ "token": to_hex(token), "certificate": hex::encode(certificate) });
    call(&mut w.market_client(), "POST", &format!("/orders/{reference}/pay"), Some(&body))
}

#[test]
fn a_payment_token_is_accepted_once_and_counters_only_go_up() {
    let mut w = World::new();
    refill(&mut w, "alice", 10_000).unwrap();
    let (first, token_a) = charged_token(&mut w, "tea");
    let (second, token_b) = charged_token(&mut w, "tea");
    assert!(token_b.message.counter > token_a.message.counter);
    // A token for another order is refused (it does not match that order's notice).
    match submit(&mut w, &second, &token_a) {
        Err(EmoneyError::Refused(m)) => assert!(m.contains("does not match"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The later payment first; then the earlier token's counter is not above the last seen:
    // what a cloned or rolled-back card shows.
    submit(&mut w, &second, &token_b).unwrap();
    conflict(submit(&mut w, &first, &token_a), "cloned or rolled-back");
    // A replayed token.
    conflict(submit(&mut w, &second, &token_b), "accepted once");
    // A token whose signature does not verify (the amount altered).
    let (third, mut token_c) = charged_token(&mut w, "tea");
    token_c.message.amount -= 1;
    assert!(matches!(submit(&mut w, &third, &token_c), Err(EmoneyError::Refused(_))));
    // A token presented with another card's certificate.
    let other = support::home_card(&w.ca, "HOME-2", &[]);
    let mut other = other;
    let certificate = other.payment_certificate().unwrap();
    let body = json!({ "token": to_hex(&token_c), "certificate": hex::encode(certificate) });
    let r = call(&mut w.market_client(), "POST", &format!("/orders/{third}/pay"), Some(&body));
    match r {
        Err(EmoneyError::Refused(m)) => assert!(m.contains("another card"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The first order stays unpaid: charged, not paid.
    assert_eq!(w.market.status(&fp(&w), &first).unwrap().status, OrderStatus::Charged);
}

#[test]
fn a_notice_from_an_unknown_market_or_above_the_balance_is_refused_by_the_card() {
    let mut w = World::new();
    refill(&mut w, "alice", 1_000).unwrap();
    let challenge = w.card.challenge().unwrap();
    let notice = ChargeNotice {
        market: b"market.test".to_vec(),
        order: b"forged".to_vec(),
        currency: *b"EUR",
        amount: 100,
        time: now(),
        card: b"HOME-1".to_vec(),
        challenge,
    };
    // Signed by a market the card does not trust, under a trusted market's name.
    let stranger = w.ca.party("market.test");
    card_refused(w.card.pay(&stranger.sign(notice.clone())));
    // A market with a certificate from the CA that the card never trusted.
    let unknown = w.ca.party("other.market");
    let mut n = notice.clone();
    n.market = b"other.market".to_vec();
    n.challenge = w.card.challenge().unwrap();
    card_refused(w.card.pay(&unknown.sign(n)));
    assert_eq!(w.balance(), 1_000);
    // Above the balance (lamp: 39.90 EUR).
    let mut market = w.market_client();
    card_refused(wallet::purchase(&mut w.card, &mut market, "lamp", 1));
    assert_eq!(w.balance(), 1_000);
    assert_eq!(w.card.read_log(0).unwrap().len(), 1, "nothing logged but the refill");
}

#[test]
fn vouchers_are_single_use_and_bound_to_the_card() {
    let mut w = World::new();
    let mut bank = w.bank_client();
    let refill = wallet::refill(&mut w.card, &mut bank, "alice", 5_000).unwrap();
    // The same voucher again: no second credit, the same acknowledgement, no second debit.
    let again = wallet::settle_voucher(&mut w.card, &mut bank, refill.voucher.clone()).unwrap();
    assert_eq!(again.ack, refill.ack);
    assert!(!again.debited);
    assert_eq!(again.account_balance, 95_000);
    assert_eq!(w.balance(), 5_000);
    // A voucher for another card.
    let mut other = support::home_card(&w.ca, "HOME-2", &[]);
    let theirs = wallet::request_voucher(&mut other, &mut bank, "alice", 1_000).unwrap();
    assert_eq!(theirs.message.card, b"HOME-2");
    card_refused(w.card.credit(&theirs));
    // A forged voucher (the amount raised after signing).
    let mut forged = wallet::request_voucher(&mut w.card, &mut bank, "alice", 100).unwrap();
    forged.message.amount = 50_000;
    card_refused(w.card.credit(&forged));
    assert_eq!(w.balance(), 5_000);
    // An acknowledgement for a voucher this bank never issued.
    let ack = refill.ack.clone();
    let mut fake = ack.clone();
    fake.message.sequence = 99;
    assert!(matches!(
        wallet::acknowledge(&mut w.card, &mut bank, &fake),
        Err(EmoneyError::Refused(_))
    ));
    // More than the account holds (less what is reserved by issued vouchers).
    conflict(wallet::request_voucher(&mut w.card, &mut bank, "alice", 95_000), "cannot cover");
    // Somebody else's account.
    assert!(matches!(
        wallet::request_voucher(&mut w.card, &mut bank, "bob", 1),
        Err(EmoneyError::NotFound(_))
    ));
}

#[test]
fn a_lost_acknowledgement_is_resolved_without_double_credit_or_debit() {
    let mut w = World::new();
    let mut bank = w.bank_client();
    let voucher = wallet::request_voucher(&mut w.card, &mut bank, "alice", 3_000).unwrap();
    // The card credits, but its acknowledgement never reaches the bank.
    let lost = w.card.credit(&voucher).unwrap();
    assert_eq!(w.balance(), 3_000);
    assert_eq!(w.bank.account("alice", "alice").unwrap().balance, 100_000);
    // The home server retries with the same voucher: the card answers the same ack.
    let retried = wallet::settle_voucher(&mut w.card, &mut bank, voucher.clone()).unwrap();
    assert_eq!(retried.ack, lost);
    assert!(retried.debited);
    assert_eq!(w.balance(), 3_000);
    // The bank's answer lost too: the ack again debits nothing.
    let (debited, balance) = wallet::acknowledge(&mut w.card, &mut bank, &lost).unwrap();
    assert!(!debited);
    assert_eq!(balance, 97_000);
    let account = w.bank.account("alice", "alice").unwrap();
    assert_eq!((account.balance, account.reserved), (97_000, 0));
    let refills = w.card.read_log(0).unwrap();
    assert_eq!(refills.len(), 1);
}

#[test]
fn a_lost_voucher_is_found_again_and_settled_once() {
    let mut w = World::new();
    let mut bank = w.bank_client();
    // Issued by the bank, its answer lost before the home server saw it.
    let lost = wallet::request_voucher(&mut w.card, &mut bank, "alice", 2_000).unwrap();
    assert_eq!(w.bank.account("alice", "alice").unwrap().reserved, 2_000);
    let resumed = wallet::resume_refills(&mut w.card, &mut bank, "alice").unwrap();
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].voucher, lost);
    assert!(resumed[0].debited);
    assert_eq!(w.balance(), 2_000);
    // Nothing is pending any more: resuming again does nothing.
    assert!(wallet::resume_refills(&mut w.card, &mut bank, "alice").unwrap().is_empty());
    let account = w.bank.account("alice", "alice").unwrap();
    assert_eq!((account.balance, account.reserved), (98_000, 0));
    assert_eq!(w.balance(), 2_000);
}

#[test]
fn cancellation_window_once_and_only_with_the_markets_confirmation() {
    let mut w = World::new();
    let mut market = w.market_client();
    refill(&mut w, "alice", 10_000).unwrap();
    let late = wallet::purchase(&mut w.card, &mut market, "tea", 1).unwrap();
    let on_time = wallet::purchase(&mut w.card, &mut market, "book", 1).unwrap();
    assert_eq!(w.balance(), 10_000 - 450 - 1_250);

    // Without the market's confirmation: a confirmation the card did not get from the market
    // (signed by a key it does not trust) credits nothing.
    let forged = w.ca.party("market.test").sign(CancelConfirmation {
        market: b"market.test".to_vec(),
        card: b"HOME-1".to_vec(),
        counter: on_time.token.message.counter,
        order: on_time.order.order.as_bytes().to_vec(),
        amount: 1_250,
        time: now(),
    });
    card_refused(w.card.cancel(&forged));
    assert_eq!(w.balance(), 8_300);

    // Exactly seven days after the notice still counts; one second more does not.
    w.market_clock.advance(CANCEL_WINDOW);
    wallet::cancel(&mut w.card, &mut market, &on_time.order.order).unwrap();
    assert_eq!(w.balance(), 9_550);
    w.market_clock.advance(1);
    conflict(wallet::cancel(&mut w.card, &mut market, &late.order.order), "more than 7 days");
    assert_eq!(w.balance(), 9_550);

    // Twice: the market refuses a second cancellation; the card refuses the same
    // confirmation twice (fetched again from the order).
    conflict(wallet::cancel(&mut w.card, &mut market, &on_time.order.order), "cancelled already");
    let status = w.market.status(&fp(&w), &on_time.order.order).unwrap();
    let confirmation = from_hex(&status.confirmation.unwrap(), "confirmation").unwrap();
    card_refused(w.card.cancel(&confirmation));
    assert_eq!(w.balance(), 9_550);
}

/// The market's cancellation challenge for `order`.
fn cancel_challenge(market: &mut DirectTransport, order: &str) -> CancelChallenge {
    let answer =
        call(market, "POST", &format!("/orders/{order}/cancel-challenge"), Some(&json!({})))
            .unwrap();
    CancelChallenge::parse(&hex::decode(field(&answer, "challenge").unwrap()).unwrap()).unwrap()
}

/// Posts a cancellation of `order` with `request` and `certificate` (each only when given).
fn post_cancel(
    market: &mut DirectTransport,
    order: &str,
    request: Option<&Signed<CancelRequest>>,
    certificate: Option<&[u8]>,
) -> Result<serde_json::Value, EmoneyError> {
    let mut body = json!({});
    if let Some(r) = request {
        body["request"] = to_hex(r).into();
    }
    if let Some(c) = certificate {
        body["certificate"] = hex::encode(c).into();
    }
    call(market, "POST", &format!("/orders/{order}/cancel"), Some(&body))
}

/// Signs `request` with `key` (not the card: what a thief or another card could send).
fn signed_by(
    key: &tessera_crypto::ecdsa::SigningKey,
    request: CancelRequest,
) -> Signed<CancelRequest> {
    let signature = key.sign(&request.signed_bytes()).to_bytes();
    Signed { message: request, signature }
}

#[test]
fn a_cancellation_needs_the_cards_signed_request_for_that_order() {
    let mut w = World::new();
    let mut market = w.market_client();
    refill(&mut w, "alice", 10_000).unwrap();
    let a = wallet::purchase(&mut w.card, &mut market, "book", 1).unwrap();
    let b = wallet::purchase(&mut w.card, &mut market, "tea", 1).unwrap();
    let (ra, rb) = (a.order.order.clone(), b.order.order.clone());
    let certificate = w.card.payment_certificate().unwrap();
    let balance = w.balance();
    let unchanged = |w: &mut World| {
        assert_eq!(w.balance(), balance);
        for r in [&ra, &rb] {
            assert_eq!(w.market.status(&fp(w), r).unwrap().status, OrderStatus::Paid);
        }
    };

    // No signed request at all (a bare cancellation, as over mutual TLS alone), or one
    // without the certificate to check it with.
    refused(post_cancel(&mut market, &ra, None, None), "signed request");
    let what = cancel_challenge(&mut market, &ra);
    assert_eq!(
        (what.market.as_slice(), what.order.as_slice()),
        (&b"market.test"[..], ra.as_bytes())
    );
    let good = w.card.cancel_request(&what).unwrap();
    assert_eq!(good.message.counter, a.token.message.counter);
    assert_eq!((good.message.amount, good.message.card.as_slice()), (1_250, &b"HOME-1"[..]));
    refused(post_cancel(&mut market, &ra, Some(&good), None), "signed request");
    // Not signed: the signature zeroed, or the request altered after signing (another amount).
    let mut unsigned = good.clone();
    unsigned.signature = [0; 64];
    refused(post_cancel(&mut market, &ra, Some(&unsigned), Some(&certificate)), "signature");
    let mut altered = good.clone();
    altered.message.amount = 99_999;
    refused(post_cancel(&mut market, &ra, Some(&altered), Some(&certificate)), "bad signature");
    unchanged(&mut w);

    // Signed by another card (certified by the same issuer): with its own certificate it is
    // another card's; with this card's certificate the signature does not verify.
    let (other_key, other_cert) = w.ca.issue("HOME-2", tessera_crypto::x509::Role::Payment, &[]);
    let by_other = signed_by(&other_key, good.message.clone());
    refused(post_cancel(&mut market, &ra, Some(&by_other), Some(other_cert.der())), "another card");
    refused(post_cancel(&mut market, &ra, Some(&by_other), Some(&certificate)), "bad signature");
    // The card's own request for another of its orders, answering this order's challenge.
    let for_b = w
        .card
        .cancel_request(&CancelChallenge { order: rb.as_bytes().to_vec(), ..what.clone() })
        .unwrap();
    refused(post_cancel(&mut market, &ra, Some(&for_b), Some(&certificate)), "does not name");
    conflict(
        post_cancel(&mut market, &rb, Some(&for_b), Some(&certificate)),
        "no cancellation challenge",
    );
    let what_b = cancel_challenge(&mut market, &rb);
    refused(post_cancel(&mut market, &rb, Some(&for_b), Some(&certificate)), "challenge");
    // Each bound field checked, even under a key the issuer certified for this card id (a
    // clone): another amount, counter, market or order is refused.
    let (clone_key, clone_cert) = w.ca.issue("HOME-1", tessera_crypto::x509::Role::Payment, &[]);
    let edits: [fn(&mut CancelRequest); 4] = [
        |r| r.amount += 1,
        |r| r.counter += 1,
        |r| r.market = b"other.market".to_vec(),
        |r| r.order = b"ord-other".to_vec(),
    ];
    for edit in edits {
        let mut m = good.message.clone();
        edit(&mut m);
        let forged = signed_by(&clone_key, m);
        refused(
            post_cancel(&mut market, &ra, Some(&forged), Some(clone_cert.der())),
            "does not name",
        );
    }
    unchanged(&mut w);

    // A new challenge makes the old request stale; the fresh one is accepted, once.
    let fresh = cancel_challenge(&mut market, &ra);
    assert_ne!(fresh.challenge, what.challenge);
    refused(post_cancel(&mut market, &ra, Some(&good), Some(&certificate)), "challenge");
    unchanged(&mut w);
    let request = w.card.cancel_request(&fresh).unwrap();
    let answer = post_cancel(&mut market, &ra, Some(&request), Some(&certificate)).unwrap();
    let confirmation: Signed<CancelConfirmation> =
        from_hex(field(&answer, "confirmation").unwrap(), "confirmation").unwrap();
    assert_eq!(
        (confirmation.message.counter, confirmation.message.amount),
        (a.token.message.counter, 1_250)
    );
    w.card.cancel(&confirmation).unwrap();
    assert_eq!(w.balance(), balance + 1_250);
    // Replayed for a second cancellation: refused by the market; the card signs no more
    // requests for a cancelled payment.
    conflict(
        post_cancel(&mut market, &ra, Some(&request), Some(&certificate)),
        "cancelled already",
    );
    conflict(
        call(&mut market, "POST", &format!("/orders/{ra}/cancel-challenge"), Some(&json!({}))),
        "cancelled already",
    );
    card_refused(w.card.cancel_request(&fresh));
    assert_eq!(w.balance(), balance + 1_250);
    // The other order is untouched and still cancellable with its own challenge.
    assert_eq!(w.market.status(&fp(&w), &rb).unwrap().status, OrderStatus::Paid);
    let request_b = w.card.cancel_request(&what_b).unwrap();
    post_cancel(&mut market, &rb, Some(&request_b), Some(&certificate)).unwrap();
}

#[test]
fn orders_belong_to_the_client_that_placed_them() {
    let mut w = World::new();
    refill(&mut w, "alice", 10_000).unwrap();
    let bought = buy(&mut w, "tea", 1).unwrap();
    let mallory = w.ca.tls_key("mallory");
    let mut theirs = tessera_home::emoney::https::DirectTransport::new(
        mallory,
        w.ca.roots(),
        "localhost",
        w.market_at.addr.port(),
    )
    .unwrap();
    for op in ["cancel", "cancel-challenge"] {
        let path = format!("/orders/{}/{op}", bought.order.order);
        assert!(matches!(
            call(&mut theirs, "POST", &path, Some(&json!({}))),
            Err(EmoneyError::NotFound(_))
        ));
    }
    // A client certificate from another CA does not even connect.
    let stranger = Ca::new("stranger");
    let mut outsider = tessera_home::emoney::https::DirectTransport::new(
        stranger.tls_key("eve"),
        w.ca.roots(),
        "localhost",
        w.market_at.addr.port(),
    )
    .unwrap();
    assert!(matches!(
        call(&mut outsider, "GET", "/catalogue", None),
        Err(EmoneyError::Transport(_))
    ));
}

#[test]
fn the_market_keeps_its_state_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("market.sqlite");
    let mut w = World::with_market_db(Some(&db));
    refill(&mut w, "alice", 10_000).unwrap();
    let (reference, token) = charged_token(&mut w, "tea");
    submit(&mut w, &reference, &token).unwrap();
    let client = fp(&w);
    let party = tessera_home::emoney::Party::new(
        tessera_crypto::ecdsa::SigningKey::from_bytes(&*w.market.party().key.to_bytes()).unwrap(),
        w.market.party().certificate.clone(),
    )
    .unwrap();
    let reopened = tessera_home::emoney::market::Market::open(
        party,
        w.ca.cert.clone(),
        *b"EUR",
        tessera_home::emoney::market::default_catalogue(),
        Some(&db),
        std::sync::Arc::new(tessera_home::emoney::SystemUnixClock),
    )
    .unwrap();
    assert_eq!(reopened.status(&client, &reference).unwrap().status, OrderStatus::Paid);
    let certificate = w.card.payment_certificate().unwrap();
    conflict(reopened.pay(&client, &reference, &token, &certificate), "accepted once");
}
