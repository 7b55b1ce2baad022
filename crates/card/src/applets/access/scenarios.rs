//! Set-up helpers and the access applet's tear scenarios: every state-changing command (SET
//! PINS, VERIFY counting a try, RESET RETRY COUNTER, GENERATE KEY, INSTALL CERTIFICATE, PUT
//! DATA of the home server and of the profiles, the PUK-authorised home-server replacement).

use tessera_apdu::StatusWord;
use tessera_crypto::ecdsa::PublicKey;
use tessera_crypto::x509::Role;
use tessera_proto::access::{
    self as proto, CERT_ACCESS, CERT_CA, EnrolmentProof, HomeServer, Profiles, TerminalProfile,
};

use super::AID;
use crate::applet::{TearDriver, TearError, TearScenario};
use crate::applets::home::scenarios::{block, issuer_store};
use crate::applets::isd;
use crate::applets::pairing::scenarios::{TestCa, VALIDITY};
use crate::script::Script;

fn unexpected(what: impl Into<String>) -> TearError {
    TearError::Unexpected(what.into())
}

/// The PIN of the scenarios.
pub const PIN: &[u8] = b"4321";
/// The PUK of the scenarios.
pub const PUK: &[u8] = b"87654321";

/// The home server the scenarios pin.
pub fn home_server(n: u8) -> HomeServer {
    HomeServer { spki_sha256: [n; 32], address: format!("home{n}.test:8443") }
}

/// Two terminal profiles.
pub fn profiles() -> Profiles {
    Profiles(vec![
        TerminalProfile { name: "phone".into(), screen: "compact".into(), input: "keypad".into() },
        TerminalProfile { name: "pda".into(), screen: "touch".into(), input: "stylus".into() },
    ])
}

/// Issues the card (card id), selects the access applet, sets the PINs.
pub fn blank_with_pins(s: &mut Script<'_>) -> Result<(), TearError> {
    isd::scenarios::personalize(s)?;
    s.select(AID)?;
    s.expect(&proto::set_pins_command(&block(PIN)?, &block(PUK)?), StatusWord::SUCCESS)?;
    Ok(())
}

/// VERIFY the PIN.
pub fn unlock(s: &mut Script<'_>) -> Result<(), TearError> {
    s.expect(&proto::verify_command(&block(PIN)?), StatusWord::SUCCESS)?;
    Ok(())
}

/// GENERATE KEY; the new public key.
pub fn generate(s: &mut Script<'_>) -> Result<PublicKey, TearError> {
    let r = s.expect(&proto::generate_key_command(&[5; 16]), StatusWord::SUCCESS)?;
    let proof = EnrolmentProof::parse(&r.data).map_err(|e| unexpected(e.to_string()))?;
    PublicKey::from_sec1_bytes(&proof.public_key).map_err(|e| unexpected(e.to_string()))
}

/// PINs, unlocked, CA and access certificate installed.
pub fn enrolled(s: &mut Script<'_>, ca: &mut TestCa) -> Result<(), TearError> {
    blank_with_pins(s)?;
    unlock(s)?;
    s.expect(
        &proto::install_certificate_command(CERT_CA, ca.certificate.der()),
        StatusWord::SUCCESS,
    )?;
    let key = generate(s)?;
    let cert = ca.issue("terminal", &key, Role::Access, VALIDITY)?;
    s.expect(&proto::install_certificate_command(CERT_ACCESS, cert.der()), StatusWord::SUCCESS)?;
    Ok(())
}

fn set_pins(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    isd::scenarios::personalize(&mut s)?;
    s.select(AID)?;
    s.arm();
    s.expect(&proto::set_pins_command(&block(PIN)?, &block(PUK)?), StatusWord::SUCCESS)?;
    Ok(())
}

fn verify_wrong(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    blank_with_pins(&mut s)?;
    s.arm();
    s.expect(&proto::verify_command(&block(b"0000")?), StatusWord::tries_left(2))?;
    Ok(())
}

fn unblock(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    blank_with_pins(&mut s)?;
    for left in [2, 1, 0] {
        s.expect(&proto::verify_command(&block(b"0000")?), StatusWord::tries_left(left))?;
    }
    s.arm();
    s.expect(&proto::unblock_command(&block(PUK)?, &block(b"5555")?), StatusWord::SUCCESS)?;
    Ok(())
}

fn generate_key(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    blank_with_pins(&mut s)?;
    unlock(&mut s)?;
    s.arm();
    generate(&mut s).map(|_| ())
}

fn install_certificate(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let mut ca = TestCa::new("access test CA", 0xACC)?;
    blank_with_pins(&mut s)?;
    unlock(&mut s)?;
    s.expect(
        &proto::install_certificate_command(CERT_CA, ca.certificate.der()),
        StatusWord::SUCCESS,
    )?;
    let key = generate(&mut s)?;
    let cert = ca.issue("terminal", &key, Role::Access, VALIDITY)?;
    s.arm();
    s.expect(&proto::install_certificate_command(CERT_ACCESS, cert.der()), StatusWord::SUCCESS)?;
    Ok(())
}

fn put_home_server(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    blank_with_pins(&mut s)?;
    unlock(&mut s)?;
    s.arm();
    s.expect(&proto::put_home_server_command(&home_server(1)), StatusWord::SUCCESS)?;
    Ok(())
}

fn replace_home_server(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    blank_with_pins(&mut s)?;
    unlock(&mut s)?;
    s.expect(&proto::put_home_server_command(&home_server(1)), StatusWord::SUCCESS)?;
    s.arm();
    s.expect(
        &proto::replace_home_server_command(&block(PUK)?, &home_server(2)),
        StatusWord::SUCCESS,
    )?;
    Ok(())
}

fn put_profiles(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    blank_with_pins(&mut s)?;
    unlock(&mut s)?;
    s.arm();
    s.expect(&proto::put_profiles_command(&profiles()), StatusWord::SUCCESS)?;
    Ok(())
}

fn install_ca(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let ca = TestCa::new("access test CA", 0xACC)?;
    blank_with_pins(&mut s)?;
    unlock(&mut s)?;
    s.arm();
    s.expect(
        &proto::install_certificate_command(CERT_CA, ca.certificate.der()),
        StatusWord::SUCCESS,
    )?;
    Ok(())
}

fn change_puk(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    blank_with_pins(&mut s)?;
    s.arm();
    s.expect(
        &proto::change_command(proto::REF_PUK, &block(PUK)?, &block(b"11112222")?),
        StatusWord::SUCCESS,
    )?;
    Ok(())
}

fn issuer_home_server(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    blank_with_pins(&mut s)?;
    unlock(&mut s)?;
    s.expect(&proto::put_home_server_command(&home_server(1)), StatusWord::SUCCESS)?;
    let server = home_server(3).to_bytes();
    issuer_store(&mut s, AID, &[(proto::DGI_HOME_SERVER, &server)], true)
}

/// Every state-changing command of the access applet, as tear scenarios.
pub fn all() -> Vec<TearScenario> {
    vec![
        TearScenario { name: "access SET PINS", script: set_pins },
        TearScenario { name: "access VERIFY wrong", script: verify_wrong },
        TearScenario { name: "access RESET RETRY COUNTER", script: unblock },
        TearScenario { name: "access GENERATE KEY", script: generate_key },
        TearScenario { name: "access INSTALL CERTIFICATE (CA)", script: install_ca },
        TearScenario { name: "access INSTALL CERTIFICATE", script: install_certificate },
        TearScenario { name: "access CHANGE REFERENCE DATA (PUK)", script: change_puk },
        TearScenario { name: "access PUT DATA (home server)", script: put_home_server },
        TearScenario {
            name: "access PUT DATA (home server, replaced with the PUK)",
            script: replace_home_server,
        },
        TearScenario { name: "access PUT DATA (profiles)", script: put_profiles },
        TearScenario { name: "access issuer STORE DATA (home server)", script: issuer_home_server },
    ]
}
