//! What the `home` and `access` applets share: the issuer CA anchor with the card's time
//! floor, a TLS client key with its certificate (signing only CertificateVerify contents),
//! and the ISO PIN commands over several PIN references.

use serde::{Deserialize, Serialize};
use tessera_apdu::{Command, StatusWord};
use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::tls::certificate_verify::{sign_tls12_client, sign_tls13_client};
use tessera_crypto::x509::{CertInfo, Certificate, Role, verify_chain};
use zeroize::Zeroize;

use crate::applet::Context;
use crate::pin::{BLOCK_LEN, PinBlock};

/// `6300`: a signature did not verify.
pub const VERIFICATION_FAILED: StatusWord = StatusWord(0x6300);
/// `6984`: a certificate was refused (other CA, wrong role), or a signer is not trusted.
pub const REFUSED: StatusWord = StatusWord::REFERENCE_DATA_NOT_USABLE;

/// The issuer CA certificate and the latest CA-signed time seen (the card has no clock: a
/// certificate is checked at the later of its own `notBefore` and this floor).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    ca: Option<Vec<u8>>,
    time_floor: i64,
}

impl Anchor {
    /// The CA certificate's DER, when installed.
    pub fn der(&self) -> Option<&[u8]> {
        self.ca.as_deref()
    }

    /// Installs the CA certificate, once: a self-signed CA certificate. `6985` if one is
    /// installed, `6A80` if it does not parse, `6984` if it is not a valid self-signed CA.
    pub fn install(&mut self, der: &[u8]) -> Result<(), StatusWord> {
        if self.ca.is_some() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let cert = Certificate::from_der(der.to_vec()).map_err(|_| StatusWord::INCORRECT_DATA)?;
        let info = cert.info().map_err(|_| StatusWord::INCORRECT_DATA)?;
        if !info.is_ca {
            return Err(REFUSED);
        }
        let at = self.time_floor.max(info.validity.not_before);
        verify_chain(&cert, &[], &cert, at, None).map_err(|_| REFUSED)?;
        self.ca = Some(der.to_vec());
        self.time_floor = at;
        Ok(())
    }

    /// Checks a certificate issued by the CA with `role`; raises the time floor. `6985`
    /// without a CA, `6A80` unparsable, `6984` refused.
    pub fn check(&mut self, der: &[u8], role: Role) -> Result<CertInfo, StatusWord> {
        let ca = self.ca.clone().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let ca = Certificate::from_der(ca).map_err(|_| StatusWord::UNKNOWN)?;
        let cert = Certificate::from_der(der.to_vec()).map_err(|_| StatusWord::INCORRECT_DATA)?;
        let info = cert.info().map_err(|_| StatusWord::INCORRECT_DATA)?;
        let at = self.time_floor.max(info.validity.not_before);
        verify_chain(&cert, &[], &ca, at, Some(role)).map_err(|_| REFUSED)?;
        self.time_floor = at;
        Ok(info)
    }
}

/// A key pair generated in the card and, once enrolled, its certificate.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAndCertificate {
    key: Option<[u8; 32]>,
    certificate: Option<Vec<u8>>,
}

impl Drop for KeyAndCertificate {
    fn drop(&mut self) {
        if let Some(k) = self.key.as_mut() {
            k.zeroize();
        }
    }
}

impl KeyAndCertificate {
    /// The certificate's DER, when installed.
    pub fn certificate(&self) -> Option<&[u8]> {
        self.certificate.as_deref()
    }

    /// True when a key exists (certified or not).
    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// Generates a new key (replacing an uncertified one; `6985` once certified) and returns
    /// it, to sign the proof of possession.
    pub fn generate(&mut self, ctx: &mut Context<'_>) -> Result<SigningKey, StatusWord> {
        if self.certificate.is_some() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let key = SigningKey::generate(ctx.rng());
        self.key = Some(*key.to_bytes());
        Ok(key)
    }

    /// The private key. `6985` when none.
    pub fn key(&self) -> Result<SigningKey, StatusWord> {
        let bytes = self.key.as_ref().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        SigningKey::from_bytes(bytes).map_err(|_| StatusWord::UNKNOWN)
    }

    /// Installs the certificate of this key, once: issued by the anchor's CA with `role`, for
    /// this key. Returns its parsed fields.
    pub fn install(
        &mut self,
        anchor: &mut Anchor,
        der: &[u8],
        role: Role,
    ) -> Result<CertInfo, StatusWord> {
        if self.certificate.is_some() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let key = self.key()?;
        let info = anchor.check(der, role)?;
        if info.public_key != key.public_key() {
            return Err(StatusWord::INCORRECT_DATA);
        }
        self.certificate = Some(der.to_vec());
        Ok(info)
    }

    /// The certified key, for signing. `6985` before enrolment ends.
    pub fn certified_key(&self) -> Result<SigningKey, StatusWord> {
        if self.certificate.is_none() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        self.key()
    }
}

/// SIGN CV (`80 2A P1 00`): P1 `13` the TLS 1.3 content over a 32-byte transcript hash, P1
/// `12` the TLS 1.2 handshake messages (checked). Returns the DER signature.
pub fn sign_cv(key: &KeyAndCertificate, cmd: &Command) -> Result<Vec<u8>, StatusWord> {
    if cmd.p2 != 0 {
        return Err(StatusWord::INCORRECT_P1P2);
    }
    match cmd.p1 {
        tessera_proto::home::CV_TLS13 => {
            let hash: [u8; 32] =
                cmd.data.as_slice().try_into().map_err(|_| StatusWord::WRONG_LENGTH)?;
            Ok(sign_tls13_client(&key.certified_key()?, &hash))
        }
        tessera_proto::home::CV_TLS12 => {
            let key = key.certified_key()?;
            sign_tls12_client(&key, &cmd.data).map_err(|_| StatusWord::INCORRECT_DATA)
        }
        _ => Err(StatusWord::INCORRECT_P1P2),
    }
}

/// An ISO PIN command naming a reference (P2) the applet resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinCommand {
    /// VERIFY `00 20 00 P2` with a block.
    Verify(u8, PinBlock),
    /// VERIFY `00 20 00 P2` without data: the status.
    Status(u8),
    /// VERIFY `00 20 FF P2`: drop the verified status.
    Reset(u8),
    /// CHANGE REFERENCE DATA `00 24 00 P2`, old || new.
    Change(u8, PinBlock, PinBlock),
    /// RESET RETRY COUNTER `00 2C 00 P2`, PUK || new.
    Unblock(u8, PinBlock, PinBlock),
}

fn two_blocks(data: &[u8]) -> Result<(PinBlock, PinBlock), StatusWord> {
    if data.len() != 2 * BLOCK_LEN {
        return Err(StatusWord::WRONG_LENGTH);
    }
    let (a, b) = data.split_at(BLOCK_LEN);
    Ok((PinBlock::parse(a)?, PinBlock::parse(b)?))
}

impl PinCommand {
    /// Parses VERIFY, CHANGE REFERENCE DATA and RESET RETRY COUNTER (CLA `00`); `None` for
    /// any other command. `refs` are the references the applet knows (else `6A88`).
    pub fn parse(cmd: &Command, refs: &[u8]) -> Option<Result<PinCommand, StatusWord>> {
        if cmd.cla != 0x00 || !matches!(cmd.ins, 0x20 | 0x24 | 0x2C) {
            return None;
        }
        let r = cmd.p2;
        Some((|| {
            if !refs.contains(&r) {
                return Err(StatusWord::REFERENCED_DATA_NOT_FOUND);
            }
            match (cmd.ins, cmd.p1, cmd.data.is_empty()) {
                (0x20, 0x00, true) => Ok(PinCommand::Status(r)),
                (0x20, 0x00, false) => Ok(PinCommand::Verify(r, PinBlock::parse(&cmd.data)?)),
                (0x20, 0xFF, true) => Ok(PinCommand::Reset(r)),
                (0x20, 0xFF, false) => Err(StatusWord::WRONG_LENGTH),
                (0x24, 0x00, _) => {
                    let (old, new) = two_blocks(&cmd.data)?;
                    Ok(PinCommand::Change(r, old, new))
                }
                (0x2C, 0x00, _) => {
                    let (puk, new) = two_blocks(&cmd.data)?;
                    Ok(PinCommand::Unblock(r, puk, new))
                }
                _ => Err(StatusWord::INCORRECT_P1P2),
            }
        })())
    }
}

/// A party id from a certificate's common name: 1 to 32 bytes. `6984` otherwise.
pub fn party_id(info: &CertInfo) -> Result<Vec<u8>, StatusWord> {
    let id = info.subject_cn.as_bytes();
    if id.is_empty() || id.len() > tessera_proto::home::MAX_ID_LEN {
        return Err(REFUSED);
    }
    Ok(id.to_vec())
}
