//! Issuance helpers, a test package maker and the update applet's tear scenarios (every
//! state-changing command: personalisation of the update key and objects, LOAD PACKAGE in
//! both modes, replacing an object, a redelivered package).

use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::ecdsa::{PublicKey, Signature, SigningKey};
use tessera_crypto::hpke::{self, HpkePublicKey};
use tessera_crypto::rng::{Rng, SeededRng};
use tessera_proto::update::{
    self as proto, AuthMode, Challenge, DeviceAuthResponse, Mode, ObjectDefinition, Package,
    ReadRule, UpdateCommand,
};

use super::AID;
use crate::applet::{TearDriver, TearError, TearScenario};
use crate::applets::isd::{
    self, DGI_CARD_ID, DGI_DEVICE_CERT, DGI_ISSUER_CA, DGI_PACKAGE_SIGNING, DGI_PIN, DGI_PUK,
    scenarios as isd_sc,
};
use crate::pin::PinBlock;
use crate::script::{Script, put_key_data};

fn unexpected(what: impl Into<String>) -> TearError {
    TearError::Unexpected(what.into())
}

/// The nonce the scenarios send for the update key's proof.
pub const KEY_NONCE: [u8; 16] = [0x6B; 16];
/// The challenge the scenarios answer (a real server draws a fresh one every time).
pub const CHALLENGE: Challenge = Challenge { nonce: [0xC4; 32], expires: 1_900_000_000 };
/// The legacy static authenticator of [`issue_legacy`] cards.
pub const STATIC_AUTH: [u8; proto::STATIC_AUTH_LEN] = [0x5A; proto::STATIC_AUTH_LEN];

/// The test issuer's package-signing key (the one certified in
/// [`isd::scenarios::issuer_pki`]: the second key of the same seeded generator).
pub fn package_signer() -> SigningKey {
    let mut rng = SeededRng::from_u64(0xCA);
    let _ca = SigningKey::generate(&mut rng);
    SigningKey::generate(&mut rng)
}

/// What issuance learnt about a card.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The device public key (checked against its proof of possession).
    pub device_key: PublicKey,
    /// The update key (checked against the device key's proof).
    pub update_key: HpkePublicKey,
}

fn pin_dgi(tries: u8, value: &[u8]) -> Result<Vec<u8>, TearError> {
    let block = PinBlock::from_value(value).map_err(|sw| unexpected(format!("pin: {sw}")))?;
    Ok([&[tries][..], block.as_bytes()].concat())
}

/// Issues a blank card with `card_id`: ISD keys, card id, PIN and PUK of
/// [`isd::scenarios`], the device identity of the test PKI, then the update applet's data
/// groups: the update key (proof checked), `objects`, and the static authenticator when
/// `legacy`. Leaves the card PERSONALIZED.
pub fn issue(
    s: &mut Script<'_>,
    card_id: &[u8],
    objects: &[ObjectDefinition],
    legacy: bool,
) -> Result<Issued, TearError> {
    isd_sc::open_initial(s)?;
    s.secure(
        &Command::new(0x80, 0xD8, 0x00, 0x81)
            .with_data(put_key_data(&isd_sc::initial_keys(), &isd_sc::issued_keys())?)
            .with_le(256),
        StatusWord::SUCCESS,
    )?;
    isd_sc::store(s, 0, false, &[(DGI_CARD_ID, card_id)])?;
    isd_sc::store(
        s,
        1,
        true,
        &[(DGI_PIN, &pin_dgi(3, isd_sc::PIN)?), (DGI_PUK, &pin_dgi(5, isd_sc::PUK)?)],
    )?;
    // Device identity.
    let r = s.secure(
        &Command::new(0x80, 0x46, 0x00, 0x00).with_data(isd_sc::NONCE.to_vec()).with_le(256),
        StatusWord::SUCCESS,
    )?;
    let device_key = r
        .data
        .get(5..70)
        .and_then(|p| PublicKey::from_sec1_bytes(p).ok())
        .ok_or_else(|| unexpected("GENERATE KEY PAIR answer"))?;
    let (ca_key, ca, package) = isd_sc::issuer_pki()?;
    let device = isd_sc::device_certificate(&ca_key, &ca, &device_key, card_id)?;
    isd_sc::store_blocks(
        s,
        0,
        &isd_sc::dgi_data(&[
            (DGI_ISSUER_CA, ca.der()),
            (DGI_PACKAGE_SIGNING, package.der()),
            (DGI_DEVICE_CERT, device.der()),
        ]),
    )?;
    // The update applet.
    install_for_personalization(s)?;
    let mut groups: Vec<(u16, Vec<u8>)> = vec![(proto::DGI_GENERATE_KEY, KEY_NONCE.to_vec())];
    groups.extend(objects.iter().map(|o| (proto::DGI_OBJECT, o.to_bytes())));
    if legacy {
        groups.push((proto::DGI_LEGACY_STATIC, STATIC_AUTH.to_vec()));
    }
    let refs: Vec<(u16, &[u8])> = groups.iter().map(|(t, v)| (*t, v.as_slice())).collect();
    isd_sc::store_blocks(s, 0, &isd_sc::dgi_data(&refs))?;
    s.secure(&Command::new(0x80, 0xF0, 0x80, 0x0F), StatusWord::SUCCESS)?;
    s.select(AID)?;
    let r =
        s.expect(&UpdateCommand::GetData(proto::TAG_UPDATE_KEY).to_command(), StatusWord::SUCCESS)?;
    let update_key = check_update_key(&device_key, card_id, &KEY_NONCE, &r.data)
        .ok_or_else(|| unexpected("update key proof does not verify"))?;
    Ok(Issued { device_key, update_key })
}

/// Checks GET DATA [`proto::TAG_UPDATE_KEY`]'s answer (`public(65) signature(64)`) against
/// the device key, card id and nonce; returns the update key.
pub fn check_update_key(
    device_key: &PublicKey,
    card_id: &[u8],
    nonce: &[u8],
    answer: &[u8],
) -> Option<HpkePublicKey> {
    let public: [u8; 65] = answer.get(..65)?.try_into().ok()?;
    let signature = Signature::from_bytes(answer.get(65..)?).ok()?;
    tessera_crypto::device::verify(
        device_key,
        tessera_crypto::device::Purpose::DeviceAuthentication,
        card_id,
        &proto::update_key_body(nonce, &public),
        &signature,
    )
    .ok()?;
    HpkePublicKey::from_bytes(&public).ok()
}

/// INSTALL [for personalization] of the update applet in the open ISD session.
pub fn install_for_personalization(s: &mut Script<'_>) -> Result<(), TearError> {
    let mut install = vec![0x00, AID.len() as u8];
    install.extend_from_slice(AID);
    install.extend_from_slice(&[0, 0, 0]);
    s.secure(
        &Command::new(0x80, 0xE6, 0x20, 0x00).with_data(install).with_le(256),
        StatusWord::SUCCESS,
    )?;
    Ok(())
}

/// A package as the server makes it: `value` sealed to `update_key`, signed by `signer`.
#[allow(clippy::too_many_arguments)]
pub fn make_package(
    rng: &mut dyn Rng,
    signer: &SigningKey,
    update_key: &HpkePublicKey,
    card_id: &[u8],
    sequence: u64,
    mode: Mode,
    rule: ReadRule,
    name: &[u8],
    value: &[u8],
) -> Option<Package> {
    let info = Package::seal_info(card_id, name);
    let aad = Package::seal_aad(sequence, mode, rule);
    let sealed = hpke::seal_with_rng(rng, update_key, &info, &aad, value).ok()?;
    let mut package = Package {
        card_id: card_id.to_vec(),
        sequence,
        mode,
        rule,
        name: name.to_vec(),
        sealed,
        signature: [0; 64],
    };
    package.signature = signer.sign(&package.signed_message()).to_bytes();
    Some(package)
}

/// SELECT the ISD, VERIFY the PIN, SELECT the update applet, DEVICE AUTHENTICATE with
/// [`CHALLENGE`] in plain mode.
pub fn open_chain(s: &mut Script<'_>) -> Result<DeviceAuthResponse, TearError> {
    s.select(isd::AID)?;
    s.expect(
        &Command::new(0x00, 0x20, 0x00, 0x81).with_data(pin_dgi(0, isd_sc::PIN)?[1..].to_vec()),
        StatusWord::SUCCESS,
    )?;
    s.select(AID)?;
    let r = s.expect(
        &UpdateCommand::DeviceAuthenticate { mode: AuthMode::Plain, challenge: Some(CHALLENGE) }
            .to_command(),
        StatusWord::SUCCESS,
    )?;
    DeviceAuthResponse::parse(&r.data).map_err(|e| unexpected(e.to_string()))
}

/// Sends `package` in LOAD PACKAGE segments; returns the last answer (the receipt on success).
pub fn load(s: &mut Script<'_>, package: &[u8]) -> Result<Response, TearError> {
    let mut last = Response::status(StatusWord::UNKNOWN);
    for cmd in proto::load_commands(package) {
        last = s.send(&cmd.to_command())?;
        if last.sw != StatusWord::SUCCESS {
            break;
        }
    }
    Ok(last)
}

fn expect_ok(r: Response, what: &str) -> Result<(), TearError> {
    if r.sw == StatusWord::SUCCESS { Ok(()) } else { Err(unexpected(format!("{what}: {}", r.sw))) }
}

fn issued_card(s: &mut Script<'_>) -> Result<Issued, TearError> {
    let objects = [ObjectDefinition {
        rule: ReadRule::Pin,
        name: b"wifi".to_vec(),
        value: b"old-password".to_vec(),
    }];
    issue(s, isd_sc::CARD_ID, &objects, false)
}

fn package(issued: &Issued, sequence: u64, mode: Mode, value: &[u8]) -> Result<Vec<u8>, TearError> {
    let mut rng = SeededRng::from_u64(sequence);
    make_package(
        &mut rng,
        &package_signer(),
        &issued.update_key,
        isd_sc::CARD_ID,
        sequence,
        mode,
        ReadRule::Pin,
        b"wifi",
        value,
    )
    .map(|p| p.to_bytes())
    .ok_or_else(|| unexpected("package"))
}

fn personalise_update_key(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    isd_sc::open_initial(&mut s)?;
    isd_sc::store(&mut s, 0, true, &[(DGI_CARD_ID, isd_sc::CARD_ID)])?;
    isd_sc::install_device_identity(&mut s, 0)?;
    install_for_personalization(&mut s)?;
    s.arm();
    let object =
        ObjectDefinition { rule: ReadRule::Free, name: b"sso".to_vec(), value: vec![0x33; 600] };
    isd_sc::store_blocks(
        &mut s,
        0,
        &isd_sc::dgi_data(&[
            (proto::DGI_GENERATE_KEY, &KEY_NONCE),
            (proto::DGI_OBJECT, &object.to_bytes()),
        ]),
    )
}

fn apply_mode(mode: Mode, d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let issued = issued_card(&mut s)?;
    let p = package(&issued, 1, mode, &vec![0x77; 3000])?;
    open_chain(&mut s)?;
    s.arm();
    expect_ok(load(&mut s, &p)?, "LOAD PACKAGE")
}

fn apply_wrapped(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let issued = issued_card(&mut s)?;
    let p = package(&issued, 1, Mode::Apply, b"private")?;
    let sealed = hpke::seal_with_rng(
        &mut SeededRng::from_u64(9),
        &issued.update_key,
        proto::DELIVERY_INFO,
        proto::DELIVERY_MAGIC,
        &p,
    )
    .map_err(|e| unexpected(e.to_string()))?;
    open_chain(&mut s)?;
    s.arm();
    expect_ok(load(&mut s, &[&proto::DELIVERY_MAGIC[..], &sealed].concat())?, "LOAD PACKAGE")
}

fn apply_now(d: &mut dyn TearDriver) -> Result<(), TearError> {
    apply_mode(Mode::Apply, d)
}

fn apply_sealed(d: &mut dyn TearDriver) -> Result<(), TearError> {
    apply_mode(Mode::Sealed, d)
}

fn apply_after_sealed(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let issued = issued_card(&mut s)?;
    open_chain(&mut s)?;
    expect_ok(load(&mut s, &package(&issued, 1, Mode::Sealed, b"first")?)?, "first")?;
    let p = package(&issued, 2, Mode::Apply, b"second")?;
    s.arm();
    expect_ok(load(&mut s, &p)?, "second")
}

fn redelivery(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let issued = issued_card(&mut s)?;
    open_chain(&mut s)?;
    let p = package(&issued, 1, Mode::Apply, b"value")?;
    expect_ok(load(&mut s, &p)?, "first delivery")?;
    let next = package(&issued, 2, Mode::Apply, b"next")?;
    s.arm();
    // The redelivery writes nothing; the next package then commits once.
    expect_ok(load(&mut s, &p)?, "redelivery")?;
    expect_ok(load(&mut s, &next)?, "next")
}

/// Every tear scenario of the update applet.
pub fn all() -> Vec<TearScenario> {
    vec![
        TearScenario { name: "personalise update key and object", script: personalise_update_key },
        TearScenario { name: "LOAD PACKAGE apply", script: apply_now },
        TearScenario { name: "LOAD PACKAGE sealed", script: apply_sealed },
        TearScenario { name: "LOAD PACKAGE wrapped for delivery", script: apply_wrapped },
        TearScenario { name: "LOAD PACKAGE replacing a sealed object", script: apply_after_sealed },
        TearScenario { name: "LOAD PACKAGE redelivered, then the next", script: redelivery },
    ]
}
