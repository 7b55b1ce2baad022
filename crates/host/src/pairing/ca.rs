//! Certification (Fig. 9): a certification authority issues a certificate with a role for a
//! public key whose holder proved possession of the private key.
//!
//! Proof of possession: the CA hands out a single-use challenge; the key holder signs
//! [`tessera_proto::pairing::enrolment_message`] (its id, the public key, the challenge); the
//! CA checks that signature before issuing. A card builds and signs that structure itself
//! (GENERATE KEY), so it never signs a digest it is handed.
//!
//! [`LocalCa`] is a CA in a local directory, for a single site and for tests. An issuer's CA
//! on the server implements [`CertificationAuthority`] too (the CLI's `ServerCa` over
//! `tessera_server::client::IssuerCa`); its enrolment station authenticates with an admin
//! token of the issuer.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use tessera_crypto::ecdsa::{PublicKey, Signature, SigningKey};
use tessera_crypto::rng::{OsRng, Rng};
use tessera_crypto::x509::{
    self, Certificate, Crl, IssueRequest, Revoked, Role, Validity, self_signed_ca,
};
use tessera_proto::pairing::{CHALLENGE_LEN, PUBLIC_KEY_LEN, SIGNATURE_LEN, enrolment_message};

use super::{PairingError, Result};

/// A request for a certificate, with its proof of possession.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificationRequest {
    /// The role asked for (card or terminal).
    pub role: Role,
    /// The subject's common name.
    pub subject: String,
    /// The id the key holder signed (a card's card id, a terminal's subject name).
    pub holder_id: Vec<u8>,
    /// The public key to certify (uncompressed SEC1).
    pub public_key: [u8; PUBLIC_KEY_LEN],
    /// The CA's challenge this proof answers.
    pub challenge: [u8; CHALLENGE_LEN],
    /// Signature by the key over [`enrolment_message`].
    pub proof: [u8; SIGNATURE_LEN],
}

/// A certification authority for cards and terminals.
pub trait CertificationAuthority {
    /// The CA certificate (the trust anchor cards and terminals install).
    fn ca_certificate(&self) -> Result<Certificate>;
    /// The current CRL, signed by the CA.
    fn crl(&mut self) -> Result<Crl>;
    /// A fresh single-use challenge for a proof of possession.
    fn challenge(&mut self) -> Result<[u8; CHALLENGE_LEN]>;
    /// Checks the proof of possession and issues the certificate.
    fn certify(&mut self, request: &CertificationRequest) -> Result<Certificate>;
}

/// The current time, Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

const KEY_FILE: &str = "ca.key";
const CERT_FILE: &str = "ca.crt";
const REVOKED_FILE: &str = "revoked.txt";
/// Lifetime of issued certificates: two years.
const ISSUED_LIFETIME: i64 = 2 * 365 * 86_400;
/// Lifetime of the CA certificate: ten years.
const CA_LIFETIME: i64 = 10 * 365 * 86_400;
/// A CRL is current for a week.
const CRL_LIFETIME: i64 = 7 * 86_400;

fn file_err(path: &Path, e: impl std::fmt::Display) -> PairingError {
    PairingError::File(format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` readable by the owner only (fails if `create_new` and it exists).
pub(crate) fn write_private(path: &Path, bytes: &[u8], create_new: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let target = if create_new { path } else { tmp.as_path() };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)
        .map_err(|e| file_err(target, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| file_err(target, e))?;
    if !create_new {
        std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))?;
    }
    Ok(())
}

/// A certification authority kept in a directory: `ca.key` (PKCS#8, mode 0600), `ca.crt`
/// (PEM) and `revoked.txt` (one hex serial per line).
pub struct LocalCa {
    /// `None` for a CA kept in memory only ([`LocalCa::in_memory`]).
    dir: Option<PathBuf>,
    /// The revoked serials of an in-memory CA.
    revoked: Vec<Vec<u8>>,
    key: SigningKey,
    certificate: Certificate,
    challenges: HashSet<[u8; CHALLENGE_LEN]>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Makes a new CA named `name` in `dir` (created if needed; fails if a CA is there).
    pub fn init(dir: &Path, name: &str) -> Result<LocalCa> {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        let key = SigningKey::generate(&mut OsRng);
        let serial = x509::random_serial(&mut OsRng);
        let t = now();
        let certificate = self_signed_ca(
            &key,
            name,
            &serial,
            Validity { not_before: t - 60, not_after: t + CA_LIFETIME },
        )?;
        write_private(&dir.join(KEY_FILE), &key.to_pkcs8_der()?, true)?;
        write_private(&dir.join(CERT_FILE), certificate.to_pem().as_bytes(), true)?;
        write_private(&dir.join(REVOKED_FILE), b"", true)?;
        Ok(LocalCa {
            dir: Some(dir.to_owned()),
            revoked: Vec::new(),
            key,
            certificate,
            challenges: HashSet::new(),
        })
    }

    /// A CA that lives in memory only (tests, benchmarks, the demo).
    pub fn in_memory(name: &str) -> Result<LocalCa> {
        let key = SigningKey::generate(&mut OsRng);
        let serial = x509::random_serial(&mut OsRng);
        let t = now();
        let certificate = self_signed_ca(
            &key,
            name,
            &serial,
            Validity { not_before: t - 60, not_after: t + CA_LIFETIME },
        )?;
        Ok(LocalCa { dir: None, revoked: Vec::new(), key, certificate, challenges: HashSet::new() })
    }

    /// Opens the CA in `dir`.
    pub fn open(dir: &Path) -> Result<LocalCa> {
        let key_path = dir.join(KEY_FILE);
        let der = std::fs::read(&key_path).map_err(|e| file_err(&key_path, e))?;
        let key = SigningKey::from_pkcs8_der(&der).map_err(|e| file_err(&key_path, e))?;
        let cert_path = dir.join(CERT_FILE);
        let pem = std::fs::read_to_string(&cert_path).map_err(|e| file_err(&cert_path, e))?;
        let certificate = Certificate::from_pem(&pem).map_err(|e| file_err(&cert_path, e))?;
        if certificate.info()?.public_key != key.public_key() {
            return Err(file_err(&cert_path, "does not match ca.key"));
        }
        Ok(LocalCa {
            dir: Some(dir.to_owned()),
            revoked: Vec::new(),
            key,
            certificate,
            challenges: HashSet::new(),
        })
    }

    fn revoked(&self) -> Result<Vec<Vec<u8>>> {
        let Some(dir) = &self.dir else { return Ok(self.revoked.clone()) };
        let path = dir.join(REVOKED_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| file_err(&path, e))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| hex::decode(l.trim()).map_err(|e| file_err(&path, e)))
            .collect()
    }

    /// Revokes the certificate with this serial number (the next CRL lists it).
    pub fn revoke(&mut self, serial: &[u8]) -> Result<()> {
        let mut all = self.revoked()?;
        if !all.iter().any(|s| s == serial) {
            all.push(serial.to_vec());
        }
        let Some(dir) = &self.dir else {
            self.revoked = all;
            return Ok(());
        };
        let text: String = all.iter().map(|s| format!("{}\n", hex::encode_upper(s))).collect();
        write_private(&dir.join(REVOKED_FILE), text.as_bytes(), false)
    }
}

/// Checks a request's proof of possession.
pub fn check_proof(request: &CertificationRequest) -> Result<PublicKey> {
    let key = PublicKey::from_sec1_bytes(&request.public_key)?;
    let signature = Signature::from_bytes(&request.proof)?;
    key.verify(
        &enrolment_message(&request.holder_id, &request.public_key, &request.challenge),
        &signature,
    )
    .map_err(|_| PairingError::Ca("the proof of possession does not verify".into()))?;
    Ok(key)
}

impl CertificationAuthority for LocalCa {
    fn ca_certificate(&self) -> Result<Certificate> {
        Ok(self.certificate.clone())
    }

    fn crl(&mut self) -> Result<Crl> {
        let t = now();
        let revoked: Vec<Revoked> =
            self.revoked()?.into_iter().map(|serial| Revoked { serial, revoked_at: t }).collect();
        Ok(x509::make_crl(&self.key, &self.certificate, &revoked, t, t + CRL_LIFETIME, t as u64)?)
    }

    fn challenge(&mut self) -> Result<[u8; CHALLENGE_LEN]> {
        let mut c = [0u8; CHALLENGE_LEN];
        OsRng.fill_random(&mut c);
        self.challenges.insert(c);
        Ok(c)
    }

    fn certify(&mut self, request: &CertificationRequest) -> Result<Certificate> {
        if !matches!(request.role, Role::Card | Role::Terminal) {
            return Err(PairingError::Ca("only card and terminal certificates".into()));
        }
        if !self.challenges.remove(&request.challenge) {
            return Err(PairingError::Ca("unknown or used challenge".into()));
        }
        let key = check_proof(request)?;
        let serial = x509::random_serial(&mut OsRng);
        let t = now();
        Ok(x509::issue(
            &self.key,
            &self.certificate,
            &IssueRequest {
                subject_cn: &request.subject,
                public_key: &key,
                roles: &[request.role],
                serial: &serial,
                validity: Validity { not_before: t - 60, not_after: t + ISSUED_LIFETIME },
                ca_path_len: None,
            },
        )?)
    }
}
