//! Set-up helpers (a test CA, market and bank) and the home applet's tear scenarios: every
//! state-changing command (SET PINS, VERIFY counting a try, RESET RETRY COUNTER, GENERATE KEY,
//! INSTALL CERTIFICATE, TRUST, PAY, CREDIT, CANCEL).

use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::ecdsa::{PublicKey, SigningKey};
use tessera_crypto::rng::SeededRng;
use tessera_crypto::scp03::SecurityLevel;
use tessera_crypto::x509::Role;
use tessera_proto::home::{
    self as proto, CERT_CA, CERT_PAYMENT, CERT_TLS, CancelConfirmation, ChargeNotice,
    EnrolmentProof, Message, PARTY_BANK, PARTY_MARKET, RefillVoucher, Signed,
};

use super::AID;
use crate::applet::{TearDriver, TearError, TearScenario};
use crate::applets::isd;
use crate::applets::pairing::scenarios::{TestCa, VALIDITY};
use crate::pin::PinBlock;
use crate::script::Script;

fn unexpected(what: impl Into<String>) -> TearError {
    TearError::Unexpected(what.into())
}

/// PIN1 of the scenarios.
pub const PIN1: &[u8] = b"1111";
/// PIN2 of the scenarios.
pub const PIN2: &[u8] = b"2222";
/// PUK of the scenarios.
pub const PUK: &[u8] = b"99999999";
/// The market's id (its certificate's common name).
pub const MARKET: &[u8] = b"market.test";
/// The bank's id.
pub const BANK: &[u8] = b"bank.test";
/// The wallet's currency.
pub const CURRENCY: [u8; 3] = *b"EUR";

/// A PIN block (panics never: the constants are valid).
pub fn block(v: &[u8]) -> Result<[u8; 8], TearError> {
    PinBlock::from_value(v).map(|b| *b.as_bytes()).map_err(|sw| unexpected(format!("PIN: {sw}")))
}

/// The test PKI: CA, market key and certificate, bank key and certificate.
pub struct Pki {
    /// The CA.
    pub ca: TestCa,
    /// The market's signing key.
    pub market: SigningKey,
    /// The market's certificate (role server, CN [`MARKET`]).
    pub market_certificate: Vec<u8>,
    /// The bank's signing key.
    pub bank: SigningKey,
    /// The bank's certificate (role server, CN [`BANK`]).
    pub bank_certificate: Vec<u8>,
}

impl Pki {
    /// The same PKI every time.
    pub fn new() -> Result<Pki, TearError> {
        let mut ca = TestCa::new("home test CA", 0x40AE)?;
        let mut rng = SeededRng::from_u64(0x40AF);
        let market = SigningKey::generate(&mut rng);
        let bank = SigningKey::generate(&mut rng);
        let name = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let market_certificate =
            ca.issue(&name(MARKET), &market.public_key(), Role::Server, VALIDITY)?.der().to_vec();
        let bank_certificate =
            ca.issue(&name(BANK), &bank.public_key(), Role::Server, VALIDITY)?.der().to_vec();
        Ok(Pki { ca, market, market_certificate, bank, bank_certificate })
    }

    /// A market-signed message.
    pub fn by_market<M: Message>(&self, message: M) -> Signed<M> {
        let signature = self.market.sign(&message.signed_bytes()).to_bytes();
        Signed { message, signature }
    }

    /// A bank-signed message.
    pub fn by_bank<M: Message>(&self, message: M) -> Signed<M> {
        let signature = self.bank.sign(&message.signed_bytes()).to_bytes();
        Signed { message, signature }
    }
}

/// Issues the card (card id), selects the home applet and sets the PINs.
pub fn blank_with_pins(s: &mut Script<'_>) -> Result<(), TearError> {
    isd::scenarios::personalize(s)?;
    s.select(AID)?;
    s.expect(
        &proto::set_pins_command(&block(PIN1)?, &block(PIN2)?, &block(PUK)?),
        StatusWord::SUCCESS,
    )?;
    Ok(())
}

/// VERIFY PIN1 then PIN2: the enabled state.
pub fn enable(s: &mut Script<'_>) -> Result<(), TearError> {
    s.expect(&proto::verify_command(proto::REF_PIN1, &block(PIN1)?), StatusWord::SUCCESS)?;
    s.expect(&proto::verify_command(proto::REF_PIN2, &block(PIN2)?), StatusWord::SUCCESS)?;
    Ok(())
}

fn proof_key(r: &Response) -> Result<PublicKey, TearError> {
    let proof = EnrolmentProof::parse(&r.data).map_err(|e| unexpected(e.to_string()))?;
    PublicKey::from_sec1_bytes(&proof.public_key).map_err(|e| unexpected(e.to_string()))
}

/// Full enrolment: PINs, enabled, TLS key and certificate, wallet key and certificate, market
/// and bank trusted. Leaves the applet selected and enabled.
pub fn enrolled(s: &mut Script<'_>, pki: &mut Pki) -> Result<(), TearError> {
    blank_with_pins(s)?;
    enable(s)?;
    s.expect(
        &proto::install_certificate_command(CERT_CA, pki.ca.certificate.der()),
        StatusWord::SUCCESS,
    )?;
    let r = s.expect(&proto::generate_tls_key_command(&[1; 16]), StatusWord::SUCCESS)?;
    let tls = pki.ca.issue("home", &proof_key(&r)?, Role::Home, VALIDITY)?;
    s.expect(&proto::install_certificate_command(CERT_TLS, tls.der()), StatusWord::SUCCESS)?;
    let r =
        s.expect(&proto::generate_payment_key_command(&[2; 16], &CURRENCY), StatusWord::SUCCESS)?;
    let card_id = String::from_utf8_lossy(isd::scenarios::CARD_ID).into_owned();
    let pay = pki.ca.issue(&card_id, &proof_key(&r)?, Role::Payment, VALIDITY)?;
    s.expect(&proto::install_certificate_command(CERT_PAYMENT, pay.der()), StatusWord::SUCCESS)?;
    s.expect(&proto::trust_command(PARTY_MARKET, &pki.market_certificate), StatusWord::SUCCESS)?;
    s.expect(&proto::trust_command(PARTY_BANK, &pki.bank_certificate), StatusWord::SUCCESS)?;
    Ok(())
}

/// A voucher of the test bank for the scenarios' card.
pub fn voucher(sequence: u64, amount: u64) -> RefillVoucher {
    RefillVoucher {
        bank: BANK.to_vec(),
        card: isd::scenarios::CARD_ID.to_vec(),
        sequence,
        currency: CURRENCY,
        amount,
        time: 1_767_300_000,
    }
}

/// GET CHALLENGE, then a charge notice of the test market answering it.
pub fn notice(s: &mut Script<'_>, order: &[u8], amount: u64) -> Result<ChargeNotice, TearError> {
    let r = s.expect(&proto::pay_challenge_command(), StatusWord::SUCCESS)?;
    let challenge = r.data.as_slice().try_into().map_err(|_| unexpected("challenge length"))?;
    Ok(ChargeNotice {
        market: MARKET.to_vec(),
        order: order.to_vec(),
        currency: CURRENCY,
        amount,
        time: 1_767_300_100,
        card: isd::scenarios::CARD_ID.to_vec(),
        challenge,
    })
}

/// A cancellation confirmation of the test market.
pub fn confirmation(counter: u64, order: &[u8], amount: u64) -> CancelConfirmation {
    CancelConfirmation {
        market: MARKET.to_vec(),
        card: isd::scenarios::CARD_ID.to_vec(),
        counter,
        order: order.to_vec(),
        amount,
        time: 1_767_300_200,
    }
}

fn set_pins(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    isd::scenarios::personalize(&mut s)?;
    s.select(AID)?;
    s.arm();
    s.expect(
        &proto::set_pins_command(&block(PIN1)?, &block(PIN2)?, &block(PUK)?),
        StatusWord::SUCCESS,
    )?;
    Ok(())
}

fn verify_wrong(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    blank_with_pins(&mut s)?;
    s.expect(&proto::verify_command(proto::REF_PIN1, &block(PIN1)?), StatusWord::SUCCESS)?;
    s.arm();
    s.expect(&proto::verify_command(proto::REF_PIN2, &block(b"0000")?), StatusWord::tries_left(2))?;
    Ok(())
}

fn verify_right(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    blank_with_pins(&mut s)?;
    s.expect(&proto::verify_command(proto::REF_PIN1, &block(b"0000")?), StatusWord::tries_left(2))?;
    s.arm();
    s.expect(&proto::verify_command(proto::REF_PIN1, &block(PIN1)?), StatusWord::SUCCESS)?;
    Ok(())
}

fn unblock(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    blank_with_pins(&mut s)?;
    s.expect(&proto::verify_command(proto::REF_PIN1, &block(PIN1)?), StatusWord::SUCCESS)?;
    for left in [2, 1, 0] {
        s.expect(
            &proto::verify_command(proto::REF_PIN2, &block(b"0000")?),
            StatusWord::tries_left(left),
        )?;
    }
    s.arm();
    s.expect(
        &proto::unblock_command(proto::REF_PIN2, &block(PUK)?, &block(b"3333")?),
        StatusWord::SUCCESS,
    )?;
    Ok(())
}

fn generate_tls(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    blank_with_pins(&mut s)?;
    enable(&mut s)?;
    s.arm();
    s.expect(&proto::generate_tls_key_command(&[1; 16]), StatusWord::SUCCESS)?;
    Ok(())
}

fn install_tls(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let mut pki = Pki::new()?;
    blank_with_pins(&mut s)?;
    enable(&mut s)?;
    s.expect(
        &proto::install_certificate_command(CERT_CA, pki.ca.certificate.der()),
        StatusWord::SUCCESS,
    )?;
    let r = s.expect(&proto::generate_tls_key_command(&[1; 16]), StatusWord::SUCCESS)?;
    let tls = pki.ca.issue("home", &proof_key(&r)?, Role::Home, VALIDITY)?;
    s.arm();
    s.expect(&proto::install_certificate_command(CERT_TLS, tls.der()), StatusWord::SUCCESS)?;
    Ok(())
}

fn trust_market(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let pki = Pki::new()?;
    blank_with_pins(&mut s)?;
    enable(&mut s)?;
    s.expect(
        &proto::install_certificate_command(CERT_CA, pki.ca.certificate.der()),
        StatusWord::SUCCESS,
    )?;
    s.arm();
    s.expect(&proto::trust_command(PARTY_MARKET, &pki.market_certificate), StatusWord::SUCCESS)?;
    Ok(())
}

fn credit(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let mut pki = Pki::new()?;
    enrolled(&mut s, &mut pki)?;
    s.arm();
    s.expect(&proto::credit_command(&pki.by_bank(voucher(1, 5000))), StatusWord::SUCCESS)?;
    Ok(())
}

fn pay(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let mut pki = Pki::new()?;
    enrolled(&mut s, &mut pki)?;
    s.expect(&proto::credit_command(&pki.by_bank(voucher(1, 5000))), StatusWord::SUCCESS)?;
    let n = notice(&mut s, b"order-1", 1200)?;
    s.arm();
    s.expect(&proto::pay_command(&pki.by_market(n)), StatusWord::SUCCESS)?;
    Ok(())
}

fn cancel(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let mut pki = Pki::new()?;
    enrolled(&mut s, &mut pki)?;
    s.expect(&proto::credit_command(&pki.by_bank(voucher(1, 5000))), StatusWord::SUCCESS)?;
    let n = notice(&mut s, b"order-1", 1200)?;
    s.expect(&proto::pay_command(&pki.by_market(n)), StatusWord::SUCCESS)?;
    s.arm();
    s.expect(
        &proto::cancel_command(&pki.by_market(confirmation(2, b"order-1", 1200))),
        StatusWord::SUCCESS,
    )?;
    Ok(())
}

fn install_ca(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let pki = Pki::new()?;
    blank_with_pins(&mut s)?;
    enable(&mut s)?;
    s.arm();
    s.expect(
        &proto::install_certificate_command(CERT_CA, pki.ca.certificate.der()),
        StatusWord::SUCCESS,
    )?;
    Ok(())
}

fn generate_payment(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    blank_with_pins(&mut s)?;
    enable(&mut s)?;
    s.arm();
    s.expect(&proto::generate_payment_key_command(&[2; 16], &CURRENCY), StatusWord::SUCCESS)?;
    Ok(())
}

fn install_payment(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let mut pki = Pki::new()?;
    blank_with_pins(&mut s)?;
    enable(&mut s)?;
    s.expect(
        &proto::install_certificate_command(CERT_CA, pki.ca.certificate.der()),
        StatusWord::SUCCESS,
    )?;
    let r =
        s.expect(&proto::generate_payment_key_command(&[2; 16], &CURRENCY), StatusWord::SUCCESS)?;
    let card_id = String::from_utf8_lossy(isd::scenarios::CARD_ID).into_owned();
    let pay = pki.ca.issue(&card_id, &proof_key(&r)?, Role::Payment, VALIDITY)?;
    s.arm();
    s.expect(&proto::install_certificate_command(CERT_PAYMENT, pay.der()), StatusWord::SUCCESS)?;
    Ok(())
}

fn trust_bank(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let pki = Pki::new()?;
    blank_with_pins(&mut s)?;
    enable(&mut s)?;
    s.expect(
        &proto::install_certificate_command(CERT_CA, pki.ca.certificate.der()),
        StatusWord::SUCCESS,
    )?;
    s.arm();
    s.expect(&proto::trust_command(PARTY_BANK, &pki.bank_certificate), StatusWord::SUCCESS)?;
    Ok(())
}

fn change_pin(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    blank_with_pins(&mut s)?;
    s.arm();
    s.expect(
        &proto::change_command(proto::REF_PIN1, &block(PIN1)?, &block(b"7777")?),
        StatusWord::SUCCESS,
    )?;
    Ok(())
}

/// INSTALL [for personalization] of the applet `aid`, then one STORE DATA block of `groups`,
/// in an SCP03 session with the issued card's keys (the card must have been issued with
/// [`isd::scenarios::personalize`]). Leaves the ISD selected.
pub fn issuer_store(
    s: &mut Script<'_>,
    aid: &[u8],
    groups: &[(u16, &[u8])],
    arm: bool,
) -> Result<(), TearError> {
    s.select(isd::AID)?;
    s.open_session(&isd::scenarios::issued_keys(), SecurityLevel::CMacCDec)?;
    let mut install = vec![0x00, aid.len() as u8];
    install.extend_from_slice(aid);
    install.extend_from_slice(&[0, 0, 0]);
    s.secure(
        &Command::new(0x80, 0xE6, 0x20, 0x00).with_data(install).with_le(256),
        StatusWord::SUCCESS,
    )?;
    if arm {
        s.arm();
    }
    isd::scenarios::store(s, 0, true, groups)
}

fn issuer_pins(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    blank_with_pins(&mut s)?;
    let pins = [block(b"5555")?, block(b"6666")?, block(b"77777777")?].concat();
    issuer_store(&mut s, AID, &[(proto::DGI_PINS, &pins)], true)
}

/// Every state-changing command of the home applet, as tear scenarios.
pub fn all() -> Vec<TearScenario> {
    vec![
        TearScenario { name: "home SET PINS", script: set_pins },
        TearScenario { name: "home VERIFY PIN2 wrong", script: verify_wrong },
        TearScenario { name: "home VERIFY PIN1 right after a wrong one", script: verify_right },
        TearScenario { name: "home RESET RETRY COUNTER (PIN2)", script: unblock },
        TearScenario { name: "home GENERATE KEY (TLS)", script: generate_tls },
        TearScenario { name: "home INSTALL CERTIFICATE (TLS)", script: install_tls },
        TearScenario { name: "home TRUST (market)", script: trust_market },
        TearScenario { name: "home INSTALL CERTIFICATE (CA)", script: install_ca },
        TearScenario {
            name: "home GENERATE KEY (payment, opens the wallet)",
            script: generate_payment,
        },
        TearScenario { name: "home INSTALL CERTIFICATE (payment)", script: install_payment },
        TearScenario { name: "home TRUST (bank)", script: trust_bank },
        TearScenario { name: "home CHANGE REFERENCE DATA (PIN1)", script: change_pin },
        TearScenario { name: "home issuer STORE DATA (PINs)", script: issuer_pins },
        TearScenario { name: "home CREDIT", script: credit },
        TearScenario { name: "home PAY", script: pay },
        TearScenario { name: "home CANCEL", script: cancel },
    ]
}
