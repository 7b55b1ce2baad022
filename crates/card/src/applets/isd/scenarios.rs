//! Issuance helpers and the ISD's tear scenarios: every state-changing command.

use tessera_apdu::{Command, StatusWord};
use tessera_crypto::keys::AesKey;
use tessera_crypto::scp03::{SecurityLevel, StaticKeys};

use tessera_crypto::device::{Purpose, possession_body};
use tessera_crypto::ecdsa::{PublicKey, Signature, SigningKey};
use tessera_crypto::rng::SeededRng;
use tessera_crypto::x509::{self, Certificate, IssueRequest, Role, Validity};

use super::{
    AID, DGI_CARD_ID, DGI_DEVICE_CERT, DGI_ISSUER_CA, DGI_PACKAGE_SIGNING, DGI_PIN, DGI_PUK,
    INITIAL_KVN,
};
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

/// The nonce the scenarios send with GENERATE KEY PAIR.
pub const NONCE: [u8; 16] = [0x4E; 16];
/// Start of the test PKI's validity (2026-01-01T00:00:00Z).
pub const PKI_T0: i64 = 1_767_225_600;

fn pki_err(e: tessera_crypto::CryptoError) -> TearError {
    TearError::Unexpected(format!("test PKI: {e}"))
}

/// A test issuer PKI, the same every time: CA key, CA certificate, package-signing
/// certificate.
pub fn issuer_pki() -> Result<(SigningKey, Certificate, Certificate), TearError> {
    let mut rng = SeededRng::from_u64(0xCA);
    let ca_key = SigningKey::generate(&mut rng);
    let validity = Validity { not_before: PKI_T0, not_after: PKI_T0 + 20 * 365 * 86400 };
    let ca = x509::self_signed_ca(&ca_key, "test issuer CA", &[1], validity).map_err(pki_err)?;
    let signing = SigningKey::generate(&mut rng);
    let package = x509::issue(
        &ca_key,
        &ca,
        &IssueRequest {
            subject_cn: "test package signing",
            public_key: &signing.public_key(),
            roles: &[Role::PackageSigning],
            serial: &[2],
            validity,
            ca_path_len: None,
        },
    )
    .map_err(pki_err)?;
    Ok((ca_key, ca, package))
}

/// The device certificate the test issuer makes for `public` (subject = [`CARD_ID`]).
pub fn device_certificate(
    ca_key: &SigningKey,
    ca: &Certificate,
    public: &PublicKey,
    subject: &[u8],
) -> Result<Certificate, TearError> {
    let cn = std::str::from_utf8(subject).map_err(|_| TearError::Unexpected("card id".into()))?;
    x509::issue(
        ca_key,
        ca,
        &IssueRequest {
            subject_cn: cn,
            public_key: public,
            roles: &[Role::Device],
            serial: &[3],
            validity: Validity { not_before: PKI_T0, not_after: PKI_T0 + 10 * 365 * 86400 },
            ca_path_len: None,
        },
    )
    .map_err(pki_err)
}

/// Data groups in DGI format, lengths over 254 as `FF LL LL`.
pub fn dgi_data(groups: &[(u16, &[u8])]) -> Vec<u8> {
    let mut data = Vec::new();
    for (dgi, value) in groups {
        data.extend_from_slice(&dgi.to_be_bytes());
        if value.len() < 0xFF {
            data.push(value.len() as u8);
        } else {
            data.push(0xFF);
            data.extend_from_slice(&(value.len() as u16).to_be_bytes());
        }
        data.extend_from_slice(value);
    }
    data
}

/// Most STORE DATA bytes per block such that the wrapped command (padding, MAC) still fits a
/// short APDU.
pub const STORE_DATA_BLOCK: usize = 224;

/// STORE DATA of `data` (DGI format) in blocks from `first_block`, the last marked last.
pub fn store_blocks(s: &mut Script<'_>, first_block: u8, data: &[u8]) -> Result<(), TearError> {
    let chunks: Vec<&[u8]> = data.chunks(STORE_DATA_BLOCK).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let p1 = if last { 0x88 } else { 0x08 };
        let cmd = Command::new(0x80, 0xE2, p1, first_block.wrapping_add(i as u8))
            .with_data(chunk.to_vec());
        s.secure(&cmd, StatusWord::SUCCESS)?;
    }
    Ok(())
}

/// GENERATE KEY PAIR through the open session; returns the device public key and the proof
/// of possession, after checking the proof over `nonce` and [`CARD_ID`].
pub fn generate_key_pair(
    s: &mut Script<'_>,
    nonce: &[u8],
) -> Result<(PublicKey, Signature), TearError> {
    let r = s.secure(
        &Command::new(0x80, 0x46, 0x00, 0x00).with_data(nonce.to_vec()).with_le(256),
        StatusWord::SUCCESS,
    )?;
    let bad = || TearError::Unexpected(format!("GENERATE KEY PAIR answer {:02X?}", r.data));
    let d = r.data.as_slice();
    let (Some(point), Some(sig)) = (d.get(5..70), d.get(72..136)) else { return Err(bad()) };
    if d.len() != 136 || d[..5] != [0x7F, 0x49, 0x43, 0x86, 0x41] || d[70..72] != [0x9E, 0x40] {
        return Err(bad());
    }
    let public = PublicKey::from_sec1_bytes(point).map_err(|_| bad())?;
    let sig = Signature::from_bytes(sig).map_err(|_| bad())?;
    tessera_crypto::device::verify(
        &public,
        Purpose::PossessionProof,
        CARD_ID,
        &possession_body(nonce, &public),
        &sig,
    )
    .map_err(|_| TearError::Unexpected("proof of possession does not verify".into()))?;
    Ok((public, sig))
}

/// Inside an open session on a card with [`CARD_ID`]: device key, trust anchors and device
/// certificate from [`issuer_pki`], in STORE DATA blocks from `first_block`.
pub fn install_device_identity(s: &mut Script<'_>, first_block: u8) -> Result<(), TearError> {
    let (public, _) = generate_key_pair(s, &NONCE)?;
    let (ca_key, ca, package) = issuer_pki()?;
    let device = device_certificate(&ca_key, &ca, &public, CARD_ID)?;
    let data = dgi_data(&[
        (DGI_ISSUER_CA, ca.der()),
        (DGI_PACKAGE_SIGNING, package.der()),
        (DGI_DEVICE_CERT, device.der()),
    ]);
    store_blocks(s, first_block, &data)
}

fn generate_key(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    open_initial(&mut s)?;
    store(&mut s, 0, true, &[(DGI_CARD_ID, CARD_ID)])?;
    s.arm();
    generate_key_pair(&mut s, &NONCE)?;
    Ok(())
}

fn store_device_identity(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    open_initial(&mut s)?;
    store(&mut s, 0, true, &[(DGI_CARD_ID, CARD_ID)])?;
    let (public, _) = generate_key_pair(&mut s, &NONCE)?;
    let (ca_key, ca, package) = issuer_pki()?;
    let device = device_certificate(&ca_key, &ca, &public, CARD_ID)?;
    let data = dgi_data(&[
        (DGI_ISSUER_CA, ca.der()),
        (DGI_PACKAGE_SIGNING, package.der()),
        (DGI_DEVICE_CERT, device.der()),
    ]);
    s.arm();
    store_blocks(&mut s, 0, &data)
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
        TearScenario { name: "GENERATE KEY PAIR (device key)", script: generate_key },
        TearScenario {
            name: "STORE DATA trust anchors and device certificate (several blocks)",
            script: store_device_identity,
        },
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
