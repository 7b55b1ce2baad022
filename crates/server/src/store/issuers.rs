//! Issuers and their PKI: a P-256 CA (key and self-signed certificate), a package-signing key
//! with a certificate from that CA, certificate revocation and a CRL.
//!
//! Private keys are PKCS#8 documents sealed under the server master key, bound to their
//! purpose (`issuer/<id>/ca-key`); they are never logged and never returned by the API.
//! The CA certificate is `cA` with path length 0 (it certifies end entities only) and key
//! usages keyCertSign, cRLSign and digitalSignature; the package-signing certificate has
//! digitalSignature and the extended key usage codeSigning. `openssl verify` accepts both
//! (tested). Serial numbers are per issuer: 1 is the CA, 2 the package-signing certificate.
//! A new CRL, with the next CRL number, is signed at creation and at every revocation.
//!
//! Keys in a PKCS#11 token (SoftHSM2) are a later step; see docs/server.md.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_rustls::rustls::pki_types::CertificateDer;
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::Store;
use super::auth::Principal;
use crate::db::{Row, Tx};
use crate::error::{ServerError, ServerResult};

/// Lifetime of an issuer CA certificate (20 years).
const CA_LIFETIME_SECS: i64 = 20 * 365 * 24 * 3600;
/// Lifetime of a package-signing certificate (5 years).
const SIGNING_LIFETIME_SECS: i64 = 5 * 365 * 24 * 3600;
/// A CRL's validity (its nextUpdate).
const CRL_LIFETIME_SECS: i64 = 30 * 24 * 3600;
/// Serial of an issuer's CA certificate.
pub const CA_SERIAL: i64 = 1;
/// Serial of an issuer's first package-signing certificate.
pub const SIGNING_SERIAL: i64 = 2;

pub(crate) fn ca_key_context(issuer: &str) -> String {
    format!("issuer/{issuer}/ca-key")
}
pub(crate) fn signing_key_context(issuer: &str) -> String {
    format!("issuer/{issuer}/signing-key")
}

/// An issuer id: 1 to 32 of `a-z`, `0-9`, `-`, not starting with `-`.
pub fn valid_issuer_id(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// An issuer as the API shows it (public parts only).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct IssuerInfo {
    /// Issuer id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// CA certificate, PEM.
    pub ca_cert_pem: String,
    /// Package-signing certificate, PEM.
    pub signing_cert_pem: String,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

/// A certificate an issuer's CA made.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Serial number (per issuer).
    pub serial: i64,
    /// `ca`, `package-signing`, later `device`, `terminal`.
    pub role: String,
    /// Subject common name.
    pub subject: String,
    /// Certificate, PEM.
    pub pem: String,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
}

fn pem(label: &str, der: &[u8]) -> String {
    // RFC 7468: base64 in 64-column lines.
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// PEM of a DER certificate.
pub fn cert_pem(der: &[u8]) -> String {
    pem("CERTIFICATE", der)
}

/// PEM of a DER CRL.
pub fn crl_pem(der: &[u8]) -> String {
    pem("X509 CRL", der)
}

fn cert_err(e: rcgen::Error) -> ServerError {
    ServerError::Internal(format!("certificate generation: {e}"))
}

fn time_at(unix: i64) -> ServerResult<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|e| ServerError::Internal(format!("time: {e}")))
}

fn new_key() -> ServerResult<KeyPair> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(cert_err)
}

fn ca_params(id: &str, name: &str, now: i64) -> ServerResult<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    p.distinguished_name.push(DnType::CommonName, format!("{name} CA"));
    p.distinguished_name.push(DnType::OrganizationName, format!("tessera issuer {id}"));
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(SerialNumber::from(CA_SERIAL as u64));
    p.not_before = time_at(now - 3600)?;
    p.not_after = time_at(now + CA_LIFETIME_SECS)?;
    Ok(p)
}

/// The issuer's CA as an rcgen signer, from its stored certificate and sealed key.
struct CaSigner {
    key: KeyPair,
    cert_der: Vec<u8>,
}

impl CaSigner {
    fn issuer(&self) -> ServerResult<Issuer<'static, &KeyPair>> {
        Issuer::from_ca_cert_der(&CertificateDer::from(self.cert_der.clone()), &self.key)
            .map_err(cert_err)
    }
}

impl Store {
    pub(crate) async fn require_issuer_exists(&self, tx: &mut Tx, id: &str) -> ServerResult<()> {
        tx.query_opt("SELECT id FROM issuers WHERE id = $1", &[id.into()])
            .await?
            .map(|_| ())
            .ok_or_else(|| ServerError::NotFound(format!("no issuer {id}")))
    }

    /// Creates an issuer with a fresh CA and package-signing key (superuser only).
    pub async fn create_issuer(
        &self,
        principal: &Principal,
        id: &str,
        name: &str,
    ) -> ServerResult<IssuerInfo> {
        principal.require_superuser()?;
        if !valid_issuer_id(id) {
            return Err(ServerError::BadRequest(
                "issuer id: 1 to 32 characters of a-z, 0-9 and '-', not starting with '-'".into(),
            ));
        }
        if name.trim().is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
            return Err(ServerError::BadRequest(
                "issuer name: 1 to 100 printable characters".into(),
            ));
        }
        let now = crate::clock::now();
        // Key generation and signing happen before the transaction: nothing is written if
        // they fail, and no database lock is held while they run.
        let ca_key = new_key()?;
        let ca_params = ca_params(id, name, now)?;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_err)?;
        let signing_key = new_key()?;
        let mut sp = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        sp.distinguished_name.push(DnType::CommonName, format!("{name} package signing"));
        sp.distinguished_name.push(DnType::OrganizationName, format!("tessera issuer {id}"));
        sp.is_ca = IsCa::ExplicitNoCa;
        sp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        sp.serial_number = Some(SerialNumber::from(SIGNING_SERIAL as u64));
        sp.use_authority_key_identifier_extension = true;
        sp.not_before = time_at(now - 3600)?;
        sp.not_after = time_at(now + SIGNING_LIFETIME_SECS)?;
        let ca = CaSigner { key: ca_key, cert_der: ca_cert.der().to_vec() };
        let signing_cert = sp.signed_by(&signing_key, &ca.issuer()?).map_err(cert_err)?;
        let crl = self.sign_crl(&ca, 1, &[], now)?;

        let ca_sealed =
            self.master.seal(&Zeroizing::new(ca.key.serialize_der()), &ca_key_context(id));
        let signing_sealed = self
            .master
            .seal(&Zeroizing::new(signing_key.serialize_der()), &signing_key_context(id));
        let mut tx = self.begin().await?;
        if tx.query_opt("SELECT id FROM issuers WHERE id = $1", &[id.into()]).await?.is_some() {
            return Err(ServerError::Conflict(format!("issuer {id} already exists")));
        }
        tx.execute(
            "INSERT INTO issuers (id, name, ca_cert, ca_key_sealed, signing_cert, signing_key_sealed, \
             master_key_id, next_serial, crl_number, crl, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                id.into(),
                name.into(),
                ca.cert_der.clone().into(),
                ca_sealed.into(),
                signing_cert.der().to_vec().into(),
                signing_sealed.into(),
                self.master.id().into(),
                (SIGNING_SERIAL + 1).into(),
                1i64.into(),
                crl.into(),
                now.into(),
            ],
        )
        .await?;
        for (serial, role, subject, der) in [
            (CA_SERIAL, "ca", format!("{name} CA"), ca.cert_der.clone()),
            (
                SIGNING_SERIAL,
                "package-signing",
                format!("{name} package signing"),
                signing_cert.der().to_vec(),
            ),
        ] {
            tx.execute(
                "INSERT INTO certificates (issuer_id, serial, role, subject, der) VALUES ($1, $2, $3, $4, $5)",
                &[id.into(), serial.into(), role.into(), subject.into(), der.into()],
            )
            .await?;
        }
        self.audit(
            &mut tx,
            principal,
            Some(id),
            "issuer.create",
            id,
            serde_json::json!({"name": name}),
        )
        .await?;
        tx.commit().await?;
        Ok(IssuerInfo {
            id: id.to_owned(),
            name: name.to_owned(),
            ca_cert_pem: cert_pem(&ca.cert_der),
            signing_cert_pem: cert_pem(signing_cert.der()),
            created_at: now,
        })
    }

    fn sign_crl(
        &self,
        ca: &CaSigner,
        number: i64,
        revoked: &[(i64, i64)],
        now: i64,
    ) -> ServerResult<Vec<u8>> {
        let params = CertificateRevocationListParams {
            this_update: time_at(now)?,
            next_update: time_at(now + CRL_LIFETIME_SECS)?,
            crl_number: SerialNumber::from(number as u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|&(serial, at)| {
                    Ok(RevokedCertParams {
                        serial_number: SerialNumber::from(serial as u64),
                        revocation_time: time_at(at)?,
                        reason_code: None,
                        invalidity_date: None,
                    })
                })
                .collect::<ServerResult<_>>()?,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&ca.issuer()?).map_err(cert_err)?.der().to_vec())
    }

    fn issuer_from_row(r: &Row) -> ServerResult<IssuerInfo> {
        Ok(IssuerInfo {
            id: r.text(0)?,
            name: r.text(1)?,
            ca_cert_pem: cert_pem(&r.blob(2)?),
            signing_cert_pem: cert_pem(&r.blob(3)?),
            created_at: r.int(4)?,
        })
    }

    /// Lists the issuers the principal may see.
    pub async fn list_issuers(&self, principal: &Principal) -> ServerResult<Vec<IssuerInfo>> {
        let mut tx = self.begin().await?;
        let rows = tx
            .query(
                "SELECT id, name, ca_cert, signing_cert, created_at FROM issuers ORDER BY id",
                &[],
            )
            .await?;
        tx.commit().await?;
        let all: Vec<IssuerInfo> =
            rows.iter().map(Self::issuer_from_row).collect::<ServerResult<_>>()?;
        Ok(all.into_iter().filter(|i| principal.require_issuer(&i.id).is_ok()).collect())
    }

    /// One issuer.
    pub async fn get_issuer(&self, principal: &Principal, id: &str) -> ServerResult<IssuerInfo> {
        principal.require_issuer(id)?;
        let mut tx = self.begin().await?;
        let row = tx
            .query_opt(
                "SELECT id, name, ca_cert, signing_cert, created_at FROM issuers WHERE id = $1",
                &[id.into()],
            )
            .await?;
        tx.commit().await?;
        Self::issuer_from_row(&row.ok_or_else(|| ServerError::NotFound(format!("no issuer {id}")))?)
    }

    /// The issuer's certificates.
    pub async fn list_certificates(
        &self,
        principal: &Principal,
        issuer: &str,
    ) -> ServerResult<Vec<CertificateInfo>> {
        principal.require_issuer(issuer)?;
        let mut tx = self.begin().await?;
        self.require_issuer_exists(&mut tx, issuer).await?;
        let rows = tx
            .query(
                "SELECT serial, role, subject, der, revoked_at FROM certificates WHERE issuer_id = $1 ORDER BY serial",
                &[issuer.into()],
            )
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(CertificateInfo {
                    serial: r.int(0)?,
                    role: r.text(1)?,
                    subject: r.text(2)?,
                    pem: cert_pem(&r.blob(3)?),
                    revoked_at: r.opt_int(4)?,
                })
            })
            .collect()
    }

    /// The issuer's current CRL, DER (public: anyone may fetch it).
    pub async fn issuer_crl(&self, issuer: &str) -> ServerResult<Vec<u8>> {
        let mut tx = self.begin().await?;
        let row = tx.query_opt("SELECT crl FROM issuers WHERE id = $1", &[issuer.into()]).await?;
        tx.commit().await?;
        row.ok_or_else(|| ServerError::NotFound(format!("no issuer {issuer}")))?
            .blob(0)
            .map_err(Into::into)
    }

    /// Revokes one of the issuer's certificates (not the CA's own) and signs a new CRL.
    pub async fn revoke_certificate(
        &self,
        principal: &Principal,
        issuer: &str,
        serial: i64,
    ) -> ServerResult<CertificateInfo> {
        principal.require_issuer(issuer)?;
        if serial == CA_SERIAL {
            return Err(ServerError::BadRequest("a CA does not revoke its own certificate".into()));
        }
        let mut tx = self.begin().await?;
        let issuer_row = tx
            .query_opt(
                &format!(
                    "SELECT ca_cert, ca_key_sealed, crl_number FROM issuers WHERE id = $1{}",
                    tx.for_update()
                ),
                &[issuer.into()],
            )
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("no issuer {issuer}")))?;
        let cert = tx
            .query_opt(
                "SELECT revoked_at FROM certificates WHERE issuer_id = $1 AND serial = $2",
                &[issuer.into(), serial.into()],
            )
            .await?
            .ok_or_else(|| {
                ServerError::NotFound(format!("issuer {issuer} has no certificate {serial}"))
            })?;
        if cert.opt_int(0)?.is_none() {
            let now = crate::clock::now();
            tx.execute(
                "UPDATE certificates SET revoked_at = $1 WHERE issuer_id = $2 AND serial = $3",
                &[now.into(), issuer.into(), serial.into()],
            )
            .await?;
            let revoked: Vec<(i64, i64)> = tx
                .query(
                    "SELECT serial, revoked_at FROM certificates WHERE issuer_id = $1 AND revoked_at IS NOT NULL ORDER BY serial",
                    &[issuer.into()],
                )
                .await?
                .iter()
                .map(|r| Ok((r.int(0)?, r.int(1)?)))
                .collect::<ServerResult<_>>()?;
            let key_der = self
                .master
                .open(&issuer_row.blob(1)?, &ca_key_context(issuer))
                .map_err(|e| ServerError::Internal(e.to_string()))?;
            let key = KeyPair::try_from(key_der.as_slice()).map_err(cert_err)?;
            let ca = CaSigner { key, cert_der: issuer_row.blob(0)? };
            let number = issuer_row.int(2)? + 1;
            let crl = self.sign_crl(&ca, number, &revoked, now)?;
            tx.execute(
                "UPDATE issuers SET crl = $1, crl_number = $2 WHERE id = $3",
                &[crl.into(), number.into(), issuer.into()],
            )
            .await?;
            self.audit(
                &mut tx,
                principal,
                Some(issuer),
                "certificate.revoke",
                &serial.to_string(),
                serde_json::json!({
                    "crl_number": number,
                }),
            )
            .await?;
        }
        tx.commit().await?;
        self.list_certificates(principal, issuer)
            .await?
            .into_iter()
            .find(|c| c.serial == serial)
            .ok_or_else(|| ServerError::Internal("revoked certificate vanished".into()))
    }
}
