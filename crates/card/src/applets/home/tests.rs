//! The home applet against a card in memory: the Fig. 6 states, PIN blocking, enrolment
//! order, CertificateVerify signing, and the wallet's attacks.

#![allow(clippy::unwrap_used)]

use tessera_apdu::{Command, StatusWord};
use tessera_crypto::ecdsa::{PublicKey, Signature, SigningKey};
use tessera_crypto::rng::SeededRng;
use tessera_crypto::tls::certificate_verify::tls13_client_content;
use tessera_crypto::x509::{Certificate, Role};
use tessera_proto::home::{
    self as proto, CERT_PAYMENT, CERT_TLS, CancelChallenge, CancelReceipt, CancelRequest,
    DATA_STATUS, DATA_WALLET, EntryKind, LogPage, Message, PaymentToken, Phase, REF_PIN1, REF_PIN2,
    RefillAck, Signed, Status, WalletInfo,
};

use super::scenarios::*;
use crate::applet::{PowerCut, TearDriver};
use crate::applets::isd;
use crate::script::Script;
use crate::{Card, CardOptions};

struct Plain(Card);

impl TearDriver for Plain {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

fn card() -> Plain {
    let mut c = Card::in_memory(CardOptions::default().rng(Box::new(SeededRng::from_u64(9))));
    c.power_on();
    Plain(c)
}

fn status(s: &mut Script<'_>) -> Status {
    let r = s.expect(&proto::get_data_command(DATA_STATUS), StatusWord::SUCCESS).unwrap();
    Status::parse(&r.data).unwrap()
}

fn verify(r: u8, pin: &[u8]) -> Command {
    proto::verify_command(r, &block(pin).unwrap())
}

#[test]
fn fig6_states_and_end() {
    let mut d = card();
    let mut s = Script::new(&mut d);
    blank_with_pins(&mut s).unwrap();
    assert_eq!(status(&mut s).phase, Phase::Prohibited);
    // PIN2 before PIN1: refused, not counted.
    s.expect(&verify(REF_PIN2, PIN2), StatusWord::CONDITIONS_NOT_SATISFIED).unwrap();
    assert_eq!(status(&mut s).pin2_tries, 3);
    s.expect(&proto::sign_tls13_command(&[0; 32]), StatusWord::SECURITY_STATUS_NOT_SATISFIED)
        .unwrap();
    s.expect(&verify(REF_PIN1, PIN1), StatusWord::SUCCESS).unwrap();
    assert_eq!(status(&mut s).phase, Phase::RemoteWait);
    // Remote-access wait: still no signing.
    s.expect(&proto::sign_tls13_command(&[0; 32]), StatusWord::SECURITY_STATUS_NOT_SATISFIED)
        .unwrap();
    s.expect(&verify(REF_PIN2, PIN2), StatusWord::SUCCESS).unwrap();
    assert_eq!(status(&mut s).phase, Phase::Enabled);
    // Enabled but not enrolled: 6985.
    s.expect(&proto::sign_tls13_command(&[0; 32]), StatusWord::CONDITIONS_NOT_SATISFIED).unwrap();
    s.expect(&proto::end_command(), StatusWord::SUCCESS).unwrap();
    assert_eq!(status(&mut s).phase, Phase::RemoteWait);
    s.expect(&verify(REF_PIN2, PIN2), StatusWord::SUCCESS).unwrap();
    // Selecting another applet (or a reset) returns to prohibited.
    s.select(isd::AID).unwrap();
    s.select(super::AID).unwrap();
    assert_eq!(status(&mut s).phase, Phase::Prohibited);
    // SET PINS only once.
    s.expect(
        &proto::set_pins_command(
            &block(b"5555").unwrap(),
            &block(b"6666").unwrap(),
            &block(PUK).unwrap(),
        ),
        StatusWord::CONDITIONS_NOT_SATISFIED,
    )
    .unwrap();
}

#[test]
fn three_wrong_pins_make_the_card_unusable_until_the_puk() {
    let mut d = card();
    let mut s = Script::new(&mut d);
    blank_with_pins(&mut s).unwrap();
    s.expect(&verify(REF_PIN1, PIN1), StatusWord::SUCCESS).unwrap();
    for left in [2, 1, 0] {
        s.expect(&verify(REF_PIN2, b"0000"), StatusWord::tries_left(left)).unwrap();
    }
    let st = status(&mut s);
    assert_eq!((st.phase, st.pin2_tries), (Phase::Prohibited, 0));
    // The right PIN2, and even PIN1, are refused now.
    s.expect(&verify(REF_PIN1, PIN1), StatusWord::AUTH_METHOD_BLOCKED).unwrap();
    s.expect(&verify(REF_PIN2, PIN2), StatusWord::AUTH_METHOD_BLOCKED).unwrap();
    // A wrong PUK counts; the right one unblocks with a new PIN2.
    s.expect(
        &proto::unblock_command(REF_PIN2, &block(b"00000000").unwrap(), &block(b"3333").unwrap()),
        StatusWord::tries_left(2),
    )
    .unwrap();
    s.expect(
        &proto::unblock_command(REF_PIN2, &block(PUK).unwrap(), &block(b"3333").unwrap()),
        StatusWord::SUCCESS,
    )
    .unwrap();
    assert_eq!(status(&mut s).puk_tries, 3);
    s.expect(&verify(REF_PIN1, PIN1), StatusWord::SUCCESS).unwrap();
    s.expect(&verify(REF_PIN2, PIN2), StatusWord::tries_left(2)).unwrap();
    s.expect(&verify(REF_PIN2, b"3333"), StatusWord::SUCCESS).unwrap();
    assert_eq!(status(&mut s).phase, Phase::Enabled);
    // Malformed PIN blocks change nothing.
    s.expect(
        &Command::new(0, 0x20, 0, REF_PIN1).with_data(b"12".to_vec()),
        StatusWord::WRONG_LENGTH,
    )
    .unwrap();
    s.expect(
        &Command::new(0, 0x20, 0, 0x84).with_data(block(PIN1).unwrap().to_vec()),
        StatusWord::REFERENCED_DATA_NOT_FOUND,
    )
    .unwrap();
}

fn enrolled_card() -> (Plain, Pki) {
    let mut d = card();
    let mut pki = Pki::new().unwrap();
    enrolled(&mut Script::new(&mut d), &mut pki).unwrap();
    (d, pki)
}

fn certificate(s: &mut Script<'_>, which: u8) -> Certificate {
    let r = s.expect(&proto::get_data_command(which), StatusWord::SUCCESS).unwrap();
    Certificate::from_der(r.data).unwrap()
}

#[test]
fn enrolment_is_once_and_the_tls_key_signs_only_cv_contents() {
    let (mut d, mut pki) = enrolled_card();
    let mut s = Script::new(&mut d);
    let tls = certificate(&mut s, CERT_TLS).info().unwrap();
    assert!(tls.roles.contains(&Role::Home));
    // No second key, certificate or CA.
    s.expect(&proto::generate_tls_key_command(&[1; 16]), StatusWord::CONDITIONS_NOT_SATISFIED)
        .unwrap();
    let other = pki
        .ca
        .issue("x", &tls.public_key, Role::Home, crate::applets::pairing::scenarios::VALIDITY)
        .unwrap();
    s.expect(
        &proto::install_certificate_command(CERT_TLS, other.der()),
        StatusWord::CONDITIONS_NOT_SATISFIED,
    )
    .unwrap();
    // TLS 1.3: the content is built on the card.
    let hash = [0x42; 32];
    let r = s.expect(&proto::sign_tls13_command(&hash), StatusWord::SUCCESS).unwrap();
    let sig = Signature::from_der(&r.data).unwrap();
    tls.public_key.verify(&tls13_client_content(&hash), &sig).unwrap();
    assert!(tls.public_key.verify(&hash, &sig).is_err());
    s.expect(&proto::sign_tls13_command(&[0; 32]).with_data(vec![0; 31]), StatusWord::WRONG_LENGTH)
        .unwrap();
    // TLS 1.2: only handshake messages.
    s.expect(&proto::sign_tls12_command(&[0x55; 32]), StatusWord::INCORRECT_DATA).unwrap();
    let msg = |t: u8| vec![t, 0, 0, 1, 0xAA];
    let hs = [msg(1), msg(2), msg(11), msg(13), msg(14), msg(16)].concat();
    let r = s.expect(&proto::sign_tls12_command(&hs), StatusWord::SUCCESS).unwrap();
    tls.public_key.verify(&hs, &Signature::from_der(&r.data).unwrap()).unwrap();
}

#[test]
fn a_foreign_ca_or_wrong_role_certificate_is_refused() {
    let mut d = card();
    let mut s = Script::new(&mut d);
    let mut pki = Pki::new().unwrap();
    let mut foreign = crate::applets::pairing::scenarios::TestCa::new("other CA", 5).unwrap();
    blank_with_pins(&mut s).unwrap();
    enable(&mut s).unwrap();
    // Nothing before the CA.
    s.expect(
        &proto::trust_command(proto::PARTY_MARKET, &pki.market_certificate),
        StatusWord::CONDITIONS_NOT_SATISFIED,
    )
    .unwrap();
    s.expect(
        &proto::install_certificate_command(proto::CERT_CA, pki.ca.certificate.der()),
        StatusWord::SUCCESS,
    )
    .unwrap();
    let r = s.expect(&proto::generate_tls_key_command(&[1; 16]), StatusWord::SUCCESS).unwrap();
    let proof = proto::EnrolmentProof::parse(&r.data).unwrap();
    let key = PublicKey::from_sec1_bytes(&proof.public_key).unwrap();
    key.verify(
        &proto::enrolment_message(
            isd::scenarios::CARD_ID,
            proto::KEY_TLS,
            &proof.public_key,
            &[1; 16],
        ),
        &Signature::from_bytes(&proof.signature).unwrap(),
    )
    .unwrap();
    let v = crate::applets::pairing::scenarios::VALIDITY;
    let wrong_ca = foreign.issue("home", &key, Role::Home, v).unwrap();
    s.expect(&proto::install_certificate_command(CERT_TLS, wrong_ca.der()), proto_refused())
        .unwrap();
    let wrong_role = pki.ca.issue("home", &key, Role::Terminal, v).unwrap();
    s.expect(&proto::install_certificate_command(CERT_TLS, wrong_role.der()), proto_refused())
        .unwrap();
    let other_key = SigningKey::generate(&mut SeededRng::from_u64(1)).public_key();
    let wrong_key = pki.ca.issue("home", &other_key, Role::Home, v).unwrap();
    s.expect(
        &proto::install_certificate_command(CERT_TLS, wrong_key.der()),
        StatusWord::INCORRECT_DATA,
    )
    .unwrap();
    s.expect(&proto::install_certificate_command(CERT_TLS, b"junk"), StatusWord::INCORRECT_DATA)
        .unwrap();
    assert!(!status(&mut s).tls_certificate);
}

fn proto_refused() -> StatusWord {
    super::credential::REFUSED
}

fn wallet(s: &mut Script<'_>) -> WalletInfo {
    let r = s.expect(&proto::get_data_command(DATA_WALLET), StatusWord::SUCCESS).unwrap();
    WalletInfo::parse(&r.data).unwrap()
}

fn payment_key(s: &mut Script<'_>) -> PublicKey {
    let cert = certificate(s, CERT_PAYMENT).info().unwrap();
    assert_eq!(cert.subject_cn.as_bytes(), isd::scenarios::CARD_ID);
    cert.public_key
}

fn verify_signed<M: Message>(key: &PublicKey, bytes: &[u8]) -> M {
    let signed = Signed::<M>::parse(bytes).unwrap();
    key.verify(&signed.message.signed_bytes(), &Signature::from_bytes(&signed.signature).unwrap())
        .unwrap();
    signed.message
}

#[test]
fn refill_pay_cancel_and_the_log() {
    let (mut d, pki) = enrolled_card();
    let mut s = Script::new(&mut d);
    let key = payment_key(&mut s);
    let r = s
        .expect(&proto::credit_command(&pki.by_bank(voucher(1, 5000))), StatusWord::SUCCESS)
        .unwrap();
    let ack: RefillAck = verify_signed(&key, &r.data);
    assert_eq!((ack.sequence, ack.amount, ack.counter), (1, 5000, 1));
    let n = notice(&mut s, b"order-1", 1200).unwrap();
    let r = s.expect(&proto::pay_command(&pki.by_market(n)), StatusWord::SUCCESS).unwrap();
    let token: PaymentToken = verify_signed(&key, &r.data);
    assert_eq!(token.counter, 2);
    assert_eq!(
        (token.amount, token.order.as_slice(), token.market.as_slice()),
        (1200, &b"order-1"[..], MARKET)
    );
    assert_eq!(token.card, isd::scenarios::CARD_ID);
    assert_eq!(wallet(&mut s).balance, 3800);
    // The same order again (token lost): the same token, no second debit.
    let n = notice(&mut s, b"order-1", 1200).unwrap();
    let r = s.expect(&proto::pay_command(&pki.by_market(n)), StatusWord::SUCCESS).unwrap();
    assert_eq!(verify_signed::<PaymentToken>(&key, &r.data), token);
    assert_eq!(wallet(&mut s).balance, 3800);
    // Cancel: credited back once.
    let c = pki.by_market(confirmation(2, b"order-1", 1200));
    let r = s.expect(&proto::cancel_command(&c), StatusWord::SUCCESS).unwrap();
    let receipt: CancelReceipt = verify_signed(&key, &r.data);
    assert_eq!((receipt.payment_counter, receipt.counter, receipt.amount), (2, 3, 1200));
    assert_eq!(wallet(&mut s).balance, 5000);
    s.expect(&proto::cancel_command(&c), StatusWord::CONDITIONS_NOT_SATISFIED).unwrap();
    assert_eq!(wallet(&mut s).balance, 5000);
    // A cancelled order cannot be paid again with the same reference.
    let n = notice(&mut s, b"order-1", 1200).unwrap();
    s.expect(&proto::pay_command(&pki.by_market(n)), StatusWord::CONDITIONS_NOT_SATISFIED).unwrap();
    // The log, from counter 2 on.
    let r = s.expect(&proto::read_log_command(2), StatusWord::SUCCESS).unwrap();
    let page = LogPage::parse(&r.data).unwrap();
    assert!(!page.more);
    let kinds: Vec<_> = page.entries.iter().map(|e| (e.counter, e.kind, e.cancelled)).collect();
    assert_eq!(kinds, [(2, EntryKind::Payment, true), (3, EntryKind::Cancellation, false)]);
    assert_eq!(wallet(&mut s).next_counter, 4);
}

#[test]
fn wallet_attacks_fail_cleanly() {
    let (mut d, pki) = enrolled_card();
    let mut s = Script::new(&mut d);
    s.expect(&proto::credit_command(&pki.by_bank(voucher(1, 1000))), StatusWord::SUCCESS).unwrap();
    let before = wallet(&mut s);

    // Replayed voucher: the acknowledgement again, no second credit.
    let r = s
        .expect(&proto::credit_command(&pki.by_bank(voucher(1, 1000))), StatusWord::SUCCESS)
        .unwrap();
    assert_eq!(Signed::<RefillAck>::parse(&r.data).unwrap().message.counter, 1);
    // A voucher for another card, an older sequence changed in amount, a forged one.
    let mut foreign = voucher(2, 1000);
    foreign.card = b"OTHER-CARD".to_vec();
    s.expect(&proto::credit_command(&pki.by_bank(foreign)), StatusWord::INCORRECT_DATA).unwrap();
    s.expect(
        &proto::credit_command(&pki.by_bank(voucher(1, 9000))),
        StatusWord::CONDITIONS_NOT_SATISFIED,
    )
    .unwrap();
    let forged = pki.by_market(voucher(2, 1000));
    s.expect(&proto::credit_command(&forged), super::credential::VERIFICATION_FAILED).unwrap();
    let mut unknown = voucher(2, 1000);
    unknown.bank = b"evil bank".to_vec();
    s.expect(&proto::credit_command(&pki.by_bank(unknown)), proto_refused()).unwrap();

    // Amount above the balance.
    let n = notice(&mut s, b"big", 1001).unwrap();
    s.expect(&proto::pay_command(&pki.by_market(n)), StatusWord::CONDITIONS_NOT_SATISFIED).unwrap();
    // Unsigned (garbage signature), foreign-signed, unknown market, no challenge, replayed.
    let n = notice(&mut s, b"o", 10).unwrap();
    let unsigned = Signed { message: n, signature: [0; 64] };
    s.expect(&proto::pay_command(&unsigned), super::credential::VERIFICATION_FAILED).unwrap();
    let n = notice(&mut s, b"o", 10).unwrap();
    s.expect(&proto::pay_command(&pki.by_bank(n)), super::credential::VERIFICATION_FAILED).unwrap();
    let mut n = notice(&mut s, b"o", 10).unwrap();
    n.market = b"evil market".to_vec();
    s.expect(&proto::pay_command(&pki.by_market(n)), proto_refused()).unwrap();
    let n = notice(&mut s, b"o", 10).unwrap();
    let signed = pki.by_market(n);
    s.expect(&proto::pay_command(&signed), StatusWord::SUCCESS).unwrap();
    // The same notice again: its challenge is used up.
    s.expect(&proto::pay_command(&signed), StatusWord::CONDITIONS_NOT_SATISFIED).unwrap();
    s.expect(&proto::pay_command(&signed).with_data(vec![1, 2, 3]), StatusWord::INCORRECT_DATA)
        .unwrap();
    // Cancellation: unknown counter, wrong amount, foreign-signed.
    s.expect(
        &proto::cancel_command(&pki.by_market(confirmation(9, b"o", 10))),
        StatusWord::REFERENCED_DATA_NOT_FOUND,
    )
    .unwrap();
    s.expect(
        &proto::cancel_command(&pki.by_market(confirmation(2, b"o", 11))),
        StatusWord::INCORRECT_DATA,
    )
    .unwrap();
    s.expect(
        &proto::cancel_command(&pki.by_bank(confirmation(2, b"o", 10))),
        super::credential::VERIFICATION_FAILED,
    )
    .unwrap();
    let after = wallet(&mut s);
    assert_eq!(after.balance, before.balance - 10);
    assert_eq!(after.next_counter, before.next_counter + 1);

    // Outside the enabled state nothing works.
    s.expect(&proto::end_command(), StatusWord::SUCCESS).unwrap();
    s.expect(
        &proto::credit_command(&pki.by_bank(voucher(2, 1))),
        StatusWord::SECURITY_STATUS_NOT_SATISFIED,
    )
    .unwrap();
    s.expect(&proto::read_log_command(0), StatusWord::SECURITY_STATUS_NOT_SATISFIED).unwrap();
    s.expect(&proto::get_data_command(DATA_WALLET), StatusWord::SECURITY_STATUS_NOT_SATISFIED)
        .unwrap();
}

fn what(market: &[u8], order: &[u8], challenge: u8) -> CancelChallenge {
    CancelChallenge { market: market.to_vec(), order: order.to_vec(), challenge: [challenge; 16] }
}

#[test]
fn the_card_signs_a_cancellation_request_only_for_its_own_uncancelled_payment() {
    let (mut d, pki) = enrolled_card();
    let mut s = Script::new(&mut d);
    let key = payment_key(&mut s);
    s.expect(&proto::credit_command(&pki.by_bank(voucher(1, 5000))), StatusWord::SUCCESS).unwrap();
    let n = notice(&mut s, b"order-1", 1200).unwrap();
    s.expect(&proto::pay_command(&pki.by_market(n)), StatusWord::SUCCESS).unwrap();
    let before = wallet(&mut s);

    // The request: built by the card from its log, bound to the market's challenge.
    let r = s
        .expect(
            &proto::sign_cancel_request_command(&what(MARKET, b"order-1", 7)),
            StatusWord::SUCCESS,
        )
        .unwrap();
    let request: CancelRequest = verify_signed(&key, &r.data);
    assert_eq!(
        request,
        CancelRequest {
            card: isd::scenarios::CARD_ID.to_vec(),
            counter: 2,
            market: MARKET.to_vec(),
            order: b"order-1".to_vec(),
            amount: 1200,
            challenge: [7; 16],
        }
    );
    // Another challenge, another signature over it; nothing changed on the card.
    let r = s
        .expect(
            &proto::sign_cancel_request_command(&what(MARKET, b"order-1", 8)),
            StatusWord::SUCCESS,
        )
        .unwrap();
    assert_eq!(verify_signed::<CancelRequest>(&key, &r.data).challenge, [8; 16]);
    assert_eq!(wallet(&mut s), before);

    // No such payment: another order, another market, a refill's reference (sequence 1).
    for bad in [
        what(MARKET, b"order-2", 7),
        what(b"evil market", b"order-1", 7),
        what(BANK, &1u64.to_be_bytes(), 7),
    ] {
        s.expect(&proto::sign_cancel_request_command(&bad), StatusWord::REFERENCED_DATA_NOT_FOUND)
            .unwrap();
    }
    // Malformed data: never signed as it is.
    let mut arbitrary = proto::sign_cancel_request_command(&what(MARKET, b"order-1", 7));
    arbitrary.data = b"tessera/home/cancel-request\0anything".to_vec();
    s.expect(&arbitrary, StatusWord::INCORRECT_DATA).unwrap();
    let mut short = proto::sign_cancel_request_command(&what(MARKET, b"order-1", 7));
    short.data.pop();
    s.expect(&short, StatusWord::INCORRECT_DATA).unwrap();
    let mut p1 = proto::sign_cancel_request_command(&what(MARKET, b"order-1", 7));
    p1.p1 = 1;
    s.expect(&p1, StatusWord::INCORRECT_P1P2).unwrap();
    assert_eq!(wallet(&mut s), before);

    // Once cancelled, no more requests for it.
    let c = pki.by_market(confirmation(2, b"order-1", 1200));
    s.expect(&proto::cancel_command(&c), StatusWord::SUCCESS).unwrap();
    s.expect(
        &proto::sign_cancel_request_command(&what(MARKET, b"order-1", 9)),
        StatusWord::CONDITIONS_NOT_SATISFIED,
    )
    .unwrap();

    // Only in the enabled state.
    let n = notice(&mut s, b"order-3", 100).unwrap();
    s.expect(&proto::pay_command(&pki.by_market(n)), StatusWord::SUCCESS).unwrap();
    s.expect(&proto::end_command(), StatusWord::SUCCESS).unwrap();
    s.expect(
        &proto::sign_cancel_request_command(&what(MARKET, b"order-3", 7)),
        StatusWord::SECURITY_STATUS_NOT_SATISFIED,
    )
    .unwrap();
}

#[test]
fn the_log_is_a_ring_read_in_pages() {
    let (mut d, pki) = enrolled_card();
    let mut s = Script::new(&mut d);
    for seq in 1..=300u64 {
        s.expect(&proto::credit_command(&pki.by_bank(voucher(seq, 1))), StatusWord::SUCCESS)
            .unwrap();
    }
    let w = wallet(&mut s);
    assert_eq!((w.balance, w.entries, w.oldest_counter, w.next_counter), (300, 256, 45, 301));
    let mut from = 0;
    let mut seen = Vec::new();
    loop {
        let r = s.expect(&proto::read_log_command(from), StatusWord::SUCCESS).unwrap();
        let page = LogPage::parse(&r.data).unwrap();
        seen.extend(page.entries.iter().map(|e| e.counter));
        if !page.more {
            break;
        }
        from = page.entries.last().unwrap().counter + 1;
    }
    assert_eq!(seen, (45..=300).collect::<Vec<_>>());
    // An evicted voucher's sequence is still refused (below the bank's last one).
    s.expect(
        &proto::credit_command(&pki.by_bank(voucher(3, 1))),
        StatusWord::CONDITIONS_NOT_SATISFIED,
    )
    .unwrap();
}

mod model {
    //! The wallet against a model under random sequences of valid, replayed and malformed
    //! operations: balance, counter and log always agree with the model, and no input panics.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Credit { offset: u64, amount: u64 },
        Pay { order: u8, amount: u64 },
        Cancel { pick: usize },
        Request { order: u8 },
        Garbage { ins: u8, data: Vec<u8> },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..3, prop::sample::select(vec![0u64, 1000, 3000]))
                .prop_map(|(offset, amount)| Op::Credit { offset, amount }),
            (0u8..4, prop::sample::select(vec![0u64, 100, 700, 2500]))
                .prop_map(|(order, amount)| Op::Pay { order, amount }),
            (0usize..4).prop_map(|pick| Op::Cancel { pick }),
            (0u8..5).prop_map(|order| Op::Request { order }),
            (
                prop::sample::select(vec![
                    0x54u8, 0x56, 0x58, 0x5A, 0x5C, 0x2A, 0xCA, 0xB8, 0xBA, 0xBC
                ]),
                prop::collection::vec(any::<u8>(), 0..120)
            )
                .prop_map(|(ins, data)| Op::Garbage { ins, data }),
        ]
    }

    #[derive(Default)]
    struct Model {
        balance: u64,
        next_counter: u64,
        last_sequence: u64,
        vouchers: BTreeMap<u64, u64>,
        /// order → (counter, amount, cancelled)
        payments: BTreeMap<u8, (u64, u64, bool)>,
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn wallet_matches_its_model(ops in prop::collection::vec(op(), 1..40)) {
            let (mut d, pki) = enrolled_card();
            let mut s = Script::new(&mut d);
            let mut m = Model { next_counter: 1, ..Model::default() };
            for op in ops {
                match op {
                    Op::Credit { offset, amount } => {
                        let seq = m.last_sequence + offset;
                        let sw = s.send(&proto::credit_command(&pki.by_bank(voucher(seq, amount)))).unwrap().sw;
                        let expected = if amount == 0 || seq == 0 {
                            StatusWord::INCORRECT_DATA
                        } else if seq <= m.last_sequence {
                            if m.vouchers.get(&seq) == Some(&amount) { StatusWord::SUCCESS } else { StatusWord::CONDITIONS_NOT_SATISFIED }
                        } else {
                            m.balance += amount;
                            m.last_sequence = seq;
                            m.vouchers.insert(seq, amount);
                            m.next_counter += 1;
                            StatusWord::SUCCESS
                        };
                        prop_assert_eq!(sw, expected);
                    }
                    Op::Pay { order, amount } => {
                        let reference = format!("order-{order}");
                        let n = notice(&mut s, reference.as_bytes(), amount).unwrap();
                        let sw = s.send(&proto::pay_command(&pki.by_market(n))).unwrap().sw;
                        let expected = if amount == 0 {
                            StatusWord::INCORRECT_DATA
                        } else if let Some(&(_, paid, cancelled)) = m.payments.get(&order) {
                            if paid == amount && !cancelled { StatusWord::SUCCESS } else { StatusWord::CONDITIONS_NOT_SATISFIED }
                        } else if amount > m.balance {
                            StatusWord::CONDITIONS_NOT_SATISFIED
                        } else {
                            m.balance -= amount;
                            m.payments.insert(order, (m.next_counter, amount, false));
                            m.next_counter += 1;
                            StatusWord::SUCCESS
                        };
                        prop_assert_eq!(sw, expected);
                    }
                    Op::Cancel { pick } => {
                        let known: Vec<_> = m.payments.iter().map(|(o, p)| (*o, *p)).collect();
                        let (order, counter, amount, cancelled) = match known.get(pick) {
                            Some((o, (c, a, x))) => (*o, *c, *a, *x),
                            None => (9, 10_000, 1, false),
                        };
                        let reference = format!("order-{order}");
                        let c = pki.by_market(confirmation(counter, reference.as_bytes(), amount));
                        let sw = s.send(&proto::cancel_command(&c)).unwrap().sw;
                        let expected = if order == 9 {
                            StatusWord::REFERENCED_DATA_NOT_FOUND
                        } else if cancelled {
                            StatusWord::CONDITIONS_NOT_SATISFIED
                        } else {
                            m.balance += amount;
                            m.payments.insert(order, (counter, amount, true));
                            m.next_counter += 1;
                            StatusWord::SUCCESS
                        };
                        prop_assert_eq!(sw, expected);
                    }
                    Op::Request { order } => {
                        // Read-only: the model does not move.
                        let reference = format!("order-{order}");
                        let r = s.send(&proto::sign_cancel_request_command(&what(MARKET, reference.as_bytes(), order))).unwrap();
                        match m.payments.get(&order) {
                            Some(&(counter, amount, false)) => {
                                prop_assert_eq!(r.sw, StatusWord::SUCCESS);
                                let q = Signed::<CancelRequest>::parse(&r.data).unwrap().message;
                                prop_assert_eq!((q.counter, q.amount, q.challenge), (counter, amount, [order; 16]));
                            }
                            Some(_) => prop_assert_eq!(r.sw, StatusWord::CONDITIONS_NOT_SATISFIED),
                            None => prop_assert_eq!(r.sw, StatusWord::REFERENCED_DATA_NOT_FOUND),
                        }
                    }
                    Op::Garbage { ins, data } => {
                        let r = s.send(&Command::new(0x80, ins, 0, 0).with_data(data).with_le(256)).unwrap();
                        // Read-only commands may succeed; nothing else can.
                        if r.sw == StatusWord::SUCCESS {
                            prop_assert!(ins == 0x5A || ins == 0x5C || ins == 0xCA, "INS {ins:02X} accepted garbage");
                        }
                    }
                }
                let w = wallet(&mut s);
                prop_assert_eq!((w.balance, w.next_counter), (m.balance, m.next_counter));
            }
            // The log tells the same story as the model.
            let r = s.expect(&proto::read_log_command(0), StatusWord::SUCCESS).unwrap();
            let page = LogPage::parse(&r.data).unwrap();
            let mut balance: i128 = 0;
            for e in &page.entries {
                match e.kind {
                    EntryKind::Payment => balance -= i128::from(e.amount),
                    _ => balance += i128::from(e.amount),
                }
            }
            if !page.more {
                prop_assert_eq!(balance, i128::from(m.balance));
            }
            prop_assert_eq!(status(&mut s).phase, Phase::Enabled);
        }
    }
}

#[test]
fn the_issuer_resets_the_pins_through_the_card_manager() {
    let mut d = card();
    let mut s = Script::new(&mut d);
    blank_with_pins(&mut s).unwrap();
    // The user blocks everything, PUK included.
    s.expect(&verify(REF_PIN1, PIN1), StatusWord::SUCCESS).unwrap();
    for left in [2, 1, 0] {
        s.expect(&verify(REF_PIN2, b"0000"), StatusWord::tries_left(left)).unwrap();
    }
    for left in [2, 1, 0] {
        let cmd = proto::unblock_command(
            REF_PIN2,
            &block(b"00000000").unwrap(),
            &block(b"1234").unwrap(),
        );
        s.expect(&cmd, StatusWord::tries_left(left)).unwrap();
    }
    let pins =
        [block(b"5555").unwrap(), block(b"6666").unwrap(), block(b"77777777").unwrap()].concat();
    // A malformed group is refused and changes nothing; an unknown DGI too.
    assert!(issuer_store(&mut s, super::AID, &[(proto::DGI_PINS, &pins[..20])], false).is_err());
    assert!(issuer_store(&mut s, super::AID, &[(0x9999, &pins)], false).is_err());
    issuer_store(&mut s, super::AID, &[(proto::DGI_PINS, &pins)], false).unwrap();
    s.select(super::AID).unwrap();
    let st = status(&mut s);
    assert_eq!((st.pin1_tries, st.pin2_tries, st.puk_tries), (3, 3, 3));
    s.expect(&verify(REF_PIN1, b"5555"), StatusWord::SUCCESS).unwrap();
    s.expect(&verify(REF_PIN2, b"6666"), StatusWord::SUCCESS).unwrap();
}
