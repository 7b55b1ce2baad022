//! Issuance helpers and the ISD's tear scenarios: every state-changing command.

use tessera_apdu::{Command, StatusWord};
use tessera_crypto::keys::AesKey;
use tessera_crypto::scp03::{SecurityLevel, StaticKeys};

use super::{AID, DGI_CARD_ID, DGI_PIN, DGI_PUK, INITIAL_KVN};
use crate::applet::{TearDriver, TearError, TearScenario};
use crate::pin::PinBlock;
use crate::script::{Script, put_key_data};

/// The card id the scenarios personalise.
pub const CARD_ID: &[u8] = b"TESSERA-TEST-0001";
/// The PIN the scenarios set.
pub const PIN: &[u8] = b"1234";
/// The PUK the scenarios set.
pub const PUK: &[u8] = b"12345678";

/// The key set the scenarios issue cards with (ENC `11..`, MAC `22..`, DEK `33..`, KVN 31).
pub fn issued_keys() -> StaticKeys {
    StaticKeys {
        enc: AesKey::Aes128([0x11; 16]),
        mac: AesKey::Aes128([0x22; 16]),
        dek: AesKey::Aes128([0x33; 16]),
        kvn: 0x31,
    }
}

/// The initial (GlobalPlatform test) key set.
pub fn initial_keys() -> StaticKeys {
    StaticKeys::gp_test_keys(INITIAL_KVN)
}

fn block(v: &[u8]) -> Result<Vec<u8>, TearError> {
    PinBlock::from_value(v)
        .map(|b| b.as_bytes().to_vec())
        .map_err(|sw| TearError::Unexpected(format!("pin block: {sw}")))
}

/// STORE DATA in DGI format (`84 E2 P1 block`), through the open session.
pub fn store(
    s: &mut Script<'_>,
    block: u8,
    last: bool,
    groups: &[(u16, &[u8])],
) -> Result<(), TearError> {
    let mut data = Vec::new();
    for (dgi, value) in groups {
        data.extend_from_slice(&dgi.to_be_bytes());
        data.push(value.len() as u8);
        data.extend_from_slice(value);
    }
    let p1 = if last { 0x88 } else { 0x08 };
    s.secure(&Command::new(0x80, 0xE2, p1, block).with_data(data), StatusWord::SUCCESS)?;
    Ok(())
}

fn pin_dgi(tries: u8, value: &[u8]) -> Result<Vec<u8>, TearError> {
    let mut v = vec![tries];
    v.extend_from_slice(&block(value)?);
    Ok(v)
}

/// SELECT the ISD and open a session with the initial keys at C-MAC + C-DECRYPTION.
pub fn open_initial(s: &mut Script<'_>) -> Result<(), TearError> {
    s.select(AID)?;
    s.open_session(&initial_keys(), SecurityLevel::CMacCDec)
}

/// Issues a blank card: new keys, card id, PIN, PUK, SET STATUS PERSONALIZED.
pub fn personalize(s: &mut Script<'_>) -> Result<(), TearError> {
    open_initial(s)?;
    s.secure(
        &Command::new(0x80, 0xD8, 0x00, 0x81)
            .with_data(put_key_data(&initial_keys(), &issued_keys())?)
            .with_le(256),
        StatusWord::SUCCESS,
    )?;
    store(s, 0, false, &[(DGI_CARD_ID, CARD_ID)])?;
    store(s, 1, true, &[(DGI_PIN, &pin_dgi(3, PIN)?), (DGI_PUK, &pin_dgi(5, PUK)?)])?;
    s.secure(&Command::new(0x80, 0xF0, 0x80, 0x0F), StatusWord::SUCCESS)?;
    Ok(())
}

fn verify(value: &[u8]) -> Result<Command, TearError> {
    Ok(Command::new(0x00, 0x20, 0x00, 0x81).with_data(block(value)?))
}

fn put_key(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    open_initial(&mut s)?;
    s.arm();
    let data = put_key_data(&initial_keys(), &issued_keys())?;
    s.secure(
        &Command::new(0x80, 0xD8, 0x00, 0x81).with_data(data).with_le(256),
        StatusWord::SUCCESS,
    )?;
    Ok(())
}

fn store_card_id(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    open_initial(&mut s)?;
    s.arm();
    store(&mut s, 0, true, &[(DGI_CARD_ID, CARD_ID)])
}

fn set_pin(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    open_initial(&mut s)?;
    s.arm();
    store(&mut s, 0, true, &[(DGI_PIN, &pin_dgi(3, PIN)?)])
}

fn set_puk(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    open_initial(&mut s)?;
    s.arm();
    store(&mut s, 0, true, &[(DGI_PUK, &pin_dgi(5, PUK)?)])
}

fn set_status_personalized(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    open_initial(&mut s)?;
    let data = put_key_data(&initial_keys(), &issued_keys())?;
    s.secure(
        &Command::new(0x80, 0xD8, 0x00, 0x81).with_data(data).with_le(256),
        StatusWord::SUCCESS,
    )?;
    store(
        &mut s,
        0,
        true,
        &[(DGI_CARD_ID, CARD_ID), (DGI_PIN, &pin_dgi(3, PIN)?), (DGI_PUK, &pin_dgi(5, PUK)?)],
    )?;
    s.arm();
    s.secure(&Command::new(0x80, 0xF0, 0x80, 0x0F), StatusWord::SUCCESS)?;
    Ok(())
}

fn set_status_locked_then_terminated(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    personalize(&mut s)?;
    s.arm();
    s.secure(&Command::new(0x80, 0xF0, 0x80, 0x7F), StatusWord::SUCCESS)?;
    s.secure(&Command::new(0x80, 0xF0, 0x80, 0xFF), StatusWord::SUCCESS)?;
    Ok(())
}

fn verify_wrong(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    personalize(&mut s)?;
    s.select(AID)?;
    s.arm();
    s.expect(&verify(b"9999")?, StatusWord::tries_left(2))?;
    Ok(())
}

fn verify_right(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    personalize(&mut s)?;
    s.select(AID)?;
    s.expect(&verify(b"9999")?, StatusWord::tries_left(2))?;
    s.arm();
    s.expect(&verify(PIN)?, StatusWord::SUCCESS)?;
    Ok(())
}

fn unblock(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    personalize(&mut s)?;
    s.select(AID)?;
    for left in [2, 1, 0] {
        s.expect(&verify(b"9999")?, StatusWord::tries_left(left))?;
    }
    s.expect(&verify(PIN)?, StatusWord::AUTH_METHOD_BLOCKED)?;
    s.arm();
    let mut data = block(PUK)?;
    data.extend_from_slice(&block(b"4321")?);
    s.expect(&Command::new(0x00, 0x2C, 0x00, 0x81).with_data(data), StatusWord::SUCCESS)?;
    Ok(())
}

fn change_pin(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    personalize(&mut s)?;
    s.select(AID)?;
    s.arm();
    let mut data = block(PIN)?;
    data.extend_from_slice(&block(b"87654321")?);
    s.expect(&Command::new(0x00, 0x24, 0x00, 0x81).with_data(data), StatusWord::SUCCESS)?;
    Ok(())
}

fn failed_external_authenticate(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    s.select(AID)?;
    match s.failed_authentication(INITIAL_KVN, true)? {
        StatusWord(0x6300) => Ok(()),
        sw => Err(TearError::Unexpected(format!("failed EXTERNAL AUTHENTICATE answered {sw}"))),
    }
}

fn external_authenticate_after_failure(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    s.select(AID)?;
    s.failed_authentication(INITIAL_KVN, false)?;
    s.arm();
    s.open_session(&initial_keys(), SecurityLevel::CMac)
}

/// Every state-changing command of the ISD, as tear scenarios.
pub fn all() -> Vec<TearScenario> {
    vec![
        TearScenario { name: "PUT KEY replaces the initial key set", script: put_key },
        TearScenario { name: "STORE DATA card id", script: store_card_id },
        TearScenario { name: "STORE DATA set PIN", script: set_pin },
        TearScenario { name: "STORE DATA set PUK", script: set_puk },
        TearScenario {
            name: "SET STATUS OP_READY -> PERSONALIZED",
            script: set_status_personalized,
        },
        TearScenario {
            name: "SET STATUS -> LOCKED -> TERMINATED",
            script: set_status_locked_then_terminated,
        },
        TearScenario { name: "VERIFY wrong PIN", script: verify_wrong },
        TearScenario { name: "VERIFY right PIN after a wrong one", script: verify_right },
        TearScenario { name: "RESET RETRY COUNTER (unblock with PUK)", script: unblock },
        TearScenario { name: "CHANGE REFERENCE DATA (change PIN)", script: change_pin },
        TearScenario { name: "failed EXTERNAL AUTHENTICATE", script: failed_external_authenticate },
        TearScenario {
            name: "EXTERNAL AUTHENTICATE after a failure",
            script: external_authenticate_after_failure,
        },
    ]
}
