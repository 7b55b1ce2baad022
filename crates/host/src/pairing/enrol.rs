//! Enrolment (Fig. 9) of a card and of a terminal with a [`CertificationAuthority`].
//!
//! Card: the holder's PIN is verified (the pairing applet's enrolment commands require it);
//! the pairing applet generates its key and signs the labelled enrolment structure over the
//! CA's challenge (GENERATE KEY); the CA checks it and issues the card certificate (role
//! card); the CA certificate and then the card certificate are installed (INSTALL
//! CERTIFICATE), which ends the card's one-time enrolment state; the current CRL is loaded.
//!
//! Terminal: a new key is generated here (or in a PKCS#11 token, [`enrol_terminal_key`]),
//! proves possession the same way, and the
//! certificate (role terminal), CA certificate and CRL become a [`TerminalIdentity`] that the
//! caller seals into the key file.

use tessera_apdu::{Command, StatusWord};
use tessera_card::applets::isd;
use tessera_card::pin::PinBlock;
use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::rng::OsRng;
use tessera_crypto::x509::{Certificate, Role};
use tessera_proto::pairing::{
    self as proto, AID, CERT_CA, CERT_CARD, EnrolmentProof, enrolment_message,
};

use super::ca::{CertificationAuthority, CertificationRequest};
use super::files::{TerminalIdentity, TerminalKey};
use super::{PairingError, Result};
use crate::channel::CardChannel;

/// SELECT by AID; `6A82` becomes an error naming the applet.
pub fn select(channel: &mut dyn CardChannel, aid: &[u8], what: &'static str) -> Result<()> {
    let r = channel.transmit(&Command::new(0x00, 0xA4, 0x04, 0x00).with_data(aid).with_le(256))?;
    if r.sw != StatusWord::SUCCESS {
        return Err(PairingError::card(what, r.sw));
    }
    Ok(())
}

/// Selects the card-management applet and verifies the global PIN (the card then considers
/// it verified until reset, for every applet).
pub fn verify_pin(channel: &mut dyn CardChannel, pin: &PinBlock) -> Result<()> {
    select(channel, isd::AID, "SELECT of the card-management applet")?;
    let r = channel
        .transmit(&Command::new(0x00, 0x20, 0x00, 0x81).with_data(pin.as_bytes().to_vec()))?;
    match r.sw {
        StatusWord::SUCCESS => Ok(()),
        sw if sw.tries().is_some() => {
            Err(PairingError::WrongPin { tries_left: sw.tries().unwrap_or(0) })
        }
        StatusWord::AUTH_METHOD_BLOCKED => Err(PairingError::WrongPin { tries_left: 0 }),
        sw => Err(PairingError::card("VERIFY", sw)),
    }
}

/// The card id (card-management applet, GET DATA `0045`; it must be selected).
pub fn card_id(channel: &mut dyn CardChannel) -> Result<Vec<u8>> {
    let r = channel.transmit(&Command::new(0x80, 0xCA, 0x00, 0x45).with_le(256))?;
    if r.sw != StatusWord::SUCCESS {
        return Err(PairingError::card("GET DATA (card id)", r.sw));
    }
    match r.data.as_slice() {
        [0x45, len, value @ ..] if usize::from(*len) == value.len() => Ok(value.to_vec()),
        _ => Err(PairingError::Malformed("card id".into())),
    }
}

fn expect_ok(channel: &mut dyn CardChannel, cmd: &Command, step: &'static str) -> Result<Vec<u8>> {
    let r = channel.transmit(cmd)?;
    if r.sw != StatusWord::SUCCESS {
        return Err(PairingError::card(step, r.sw));
    }
    Ok(r.data)
}

/// Loads a CRL on the card (pairing applet selected). A card that already holds this or a
/// newer list answers `6985`, which is fine.
pub fn load_crl(channel: &mut dyn CardChannel, crl: &[u8]) -> Result<()> {
    let r = channel.transmit(&proto::load_crl_command(crl))?;
    match r.sw {
        StatusWord::SUCCESS | StatusWord::CONDITIONS_NOT_SATISFIED => Ok(()),
        sw => Err(PairingError::card("LOAD CRL", sw)),
    }
}

/// Enrols the card in `channel` with `ca` (see the module docs). Returns the card certificate.
pub fn enrol_card(
    channel: &mut dyn CardChannel,
    ca: &mut dyn CertificationAuthority,
    pin: &PinBlock,
    subject: &str,
) -> Result<Certificate> {
    select(channel, isd::AID, "SELECT of the card-management applet")?;
    let card_id = card_id(channel)?;
    verify_pin(channel, pin)?;
    select(channel, AID, "SELECT of the pairing applet")?;
    let challenge = ca.challenge()?;
    let data = expect_ok(channel, &proto::generate_key_command(&challenge), "GENERATE KEY")?;
    let proof = EnrolmentProof::parse(&data).map_err(|e| PairingError::Malformed(e.to_string()))?;
    let certificate = ca.certify(&CertificationRequest {
        role: Role::Card,
        subject: subject.to_owned(),
        holder_id: card_id,
        public_key: proof.public_key,
        challenge,
        proof: proof.signature,
    })?;
    let ca_cert = ca.ca_certificate()?;
    expect_ok(
        channel,
        &proto::install_certificate_command(CERT_CA, ca_cert.der()),
        "INSTALL CERTIFICATE (CA)",
    )?;
    expect_ok(
        channel,
        &proto::install_certificate_command(CERT_CARD, certificate.der()),
        "INSTALL CERTIFICATE (card)",
    )?;
    load_crl(channel, ca.crl()?.der())?;
    Ok(certificate)
}

/// Makes and certifies a new terminal key (kept in the key file) named `subject`.
pub fn enrol_terminal(
    ca: &mut dyn CertificationAuthority,
    subject: &str,
) -> Result<TerminalIdentity> {
    enrol_terminal_key(ca, subject, SigningKey::generate(&mut OsRng).into())
}

/// Certifies an existing terminal key (e.g. one just generated in a PKCS#11 token) named
/// `subject`: the key signs the enrolment structure over the CA's challenge.
pub fn enrol_terminal_key(
    ca: &mut dyn CertificationAuthority,
    subject: &str,
    key: TerminalKey,
) -> Result<TerminalIdentity> {
    let public_key = key.public_key().to_sec1_bytes();
    let challenge = ca.challenge()?;
    let proof = key.sign(&enrolment_message(subject.as_bytes(), &public_key, &challenge))?;
    let certificate = ca.certify(&CertificationRequest {
        role: Role::Terminal,
        subject: subject.to_owned(),
        holder_id: subject.as_bytes().to_vec(),
        public_key,
        challenge,
        proof: proof.to_bytes(),
    })?;
    TerminalIdentity::new(key, certificate, ca.ca_certificate()?, Some(ca.crl()?))
}
