//! Issuers and their PKI: a P-256 CA (key and self-signed certificate), a package-signing key
//! with a certificate from that CA, certificate revocation and a CRL, all made with
//! `tessera_crypto::x509`.
//!
//! Private keys are PKCS#8 documents sealed under the server master key, bound to their
//! purpose (`issuer/<id>/ca-key`); they are never logged and never returned by the API. The
//! package-signing certificate carries tessera's package-signing role (an extended key
//! usage). Serial numbers are 16 random bytes, shown as hex. A new CRL, with the next CRL
//! number, is signed when the issuer is created and at every revocation; `openssl verify`
//! accepts the chains and the CRL (tested).
//!
//! An issuer may instead keep both keys in a PKCS#11 token ([`Store::create_issuer_in_token`],
//! tested with SoftHSM2): the keys are generated in the token, labelled
//! `tessera/<issuer>/ca` and `tessera/<issuer>/package-signing`, and the sealed columns hold
//! the sealed reference `pkcs11:<label>` instead of a PKCS#8 document (which starts with a DER
//! SEQUENCE byte, so the two never mix). Every signature (certificates, CRLs) then goes
//! through the token.

use serde::{Deserialize, Serialize};
use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::rng::OsRng;
use tessera_crypto::x509::{self, CaSigner, Certificate, IssueRequest, Revoked, Role, Validity};
use utoipa::ToSchema;

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
/// Role name of a CA certificate in the `certificates` table.
pub const ROLE_CA: &str = "ca";
/// Role name of a package-signing certificate.
pub const ROLE_PACKAGE_SIGNING: &str = "package-signing";
/// Role name of a card's device certificate.
pub const ROLE_DEVICE: &str = "device";
/// Lifetime of a device certificate (10 years, never past the CA's).
const DEVICE_LIFETIME_SECS: i64 = 10 * 365 * 24 * 3600;

/// What issuance installs on a card: the issuer's trust anchors and the card's device
/// certificate.
#[derive(Clone, Debug)]
pub struct DeviceCertificates {
    /// The issuer CA certificate.
    pub ca: Certificate,
    /// The issuer's package-signing certificate.
    pub package_signing: Certificate,
    /// The device certificate (role device, subject = card id).
    pub device: Certificate,
    /// The device certificate's serial number.
    pub serial: [u8; 16],
}

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
    /// Serial number, hex.
    pub serial: String,
    /// `ca`, `package-signing`, `device` (subject = card id), `card` or `terminal`
    /// (enrolment for pairing).
    pub role: String,
    /// Subject common name.
    pub subject: String,
    /// Certificate, PEM.
    pub pem: String,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
}

/// The sealed content of a reference to a key in the PKCS#11 token.
const TOKEN_REF_PREFIX: &[u8] = b"pkcs11:";

/// An issuer's private key: sealed in the database, or in the PKCS#11 token.
pub(super) enum IssuerKey {
    Soft(SigningKey),
    Token(crate::pkcs11::TokenKey),
}

impl x509::CaSigner for IssuerKey {
    fn public_key(&self) -> tessera_crypto::ecdsa::PublicKey {
        match self {
            IssuerKey::Soft(k) => k.public_key(),
            IssuerKey::Token(k) => k.public_key(),
        }
    }
    fn sign_message(
        &self,
        message: &[u8],
    ) -> Result<tessera_crypto::ecdsa::Signature, tessera_crypto::CryptoError> {
        match self {
            IssuerKey::Soft(k) => Ok(k.sign(message)),
            IssuerKey::Token(k) => k.sign_message(message),
        }
    }
}

fn token_err(e: crate::pkcs11::TokenError) -> ServerError {
    ServerError::Unavailable(e.to_string())
}

fn crypto_err(e: tessera_crypto::CryptoError) -> ServerError {
    ServerError::Internal(format!("certificate: {e}"))
}

fn cert_pem(der: &[u8]) -> ServerResult<String> {
    Ok(Certificate::from_der(der.to_vec()).map_err(crypto_err)?.to_pem())
}

impl Store {
    pub(crate) async fn require_issuer_exists(&self, tx: &mut Tx, id: &str) -> ServerResult<()> {
        tx.query_opt("SELECT id FROM issuers WHERE id = $1", &[id.into()])
            .await?
            .map(|_| ())
            .ok_or_else(|| ServerError::NotFound(format!("no issuer {id}")))
    }

    fn seal(&self, secret: &[u8], context: &str) -> ServerResult<Vec<u8>> {
        self.master.seal(secret, context).map_err(|e| ServerError::Internal(e.to_string()))
    }

    pub(super) fn unseal_key(&self, blob: &[u8], context: &str) -> ServerResult<IssuerKey> {
        let der =
            self.master.open(blob, context).map_err(|e| ServerError::Internal(e.to_string()))?;
        if let Some(label) = der.strip_prefix(TOKEN_REF_PREFIX) {
            let label = std::str::from_utf8(label)
                .map_err(|_| ServerError::Internal("token key reference".into()))?;
            let token = self.token.as_ref().ok_or_else(|| {
                ServerError::Unavailable(format!(
                    "the issuer key {label:?} is in a PKCS#11 token this server was not given"
                ))
            })?;
            return token.key(label).map(IssuerKey::Token).map_err(token_err);
        }
        SigningKey::from_pkcs8_der(&der).map(IssuerKey::Soft).map_err(crypto_err)
    }

    /// Certifies a card's device key with the issuer CA (role device, subject = card id).
    /// Nothing is written: [`Store::record_device_certificate`] records it once the card has
    /// accepted it.
    pub(crate) async fn certify_device(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        public_key: &tessera_crypto::ecdsa::PublicKey,
        now: i64,
    ) -> ServerResult<DeviceCertificates> {
        let row = tx
            .query_opt(
                "SELECT ca_cert, ca_key_sealed, signing_cert FROM issuers WHERE id = $1",
                &[issuer.into()],
            )
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("no issuer {issuer}")))?;
        let ca = Certificate::from_der(row.blob(0)?).map_err(crypto_err)?;
        let ca_key = self.unseal_key(&row.blob(1)?, &ca_key_context(issuer))?;
        let package_signing = Certificate::from_der(row.blob(2)?).map_err(crypto_err)?;
        let ca_end = ca.info().map_err(crypto_err)?.validity.not_after;
        let serial = x509::random_serial(&mut OsRng);
        let device = x509::issue(
            &ca_key,
            &ca,
            &IssueRequest {
                subject_cn: card_id,
                public_key,
                roles: &[Role::Device],
                serial: &serial,
                validity: Validity {
                    not_before: now - 3600,
                    not_after: (now + DEVICE_LIFETIME_SECS).min(ca_end),
                },
                ca_path_len: None,
            },
        )
        .map_err(crypto_err)?;
        Ok(DeviceCertificates { ca, package_signing, device, serial })
    }

    /// Records a device certificate the card accepted (revocable like any other).
    pub(crate) async fn record_device_certificate(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        serial_hex: &str,
        der: &[u8],
    ) -> ServerResult<()> {
        tx.execute(
            "INSERT INTO certificates (issuer_id, serial, role, subject, der) VALUES ($1, $2, $3, $4, $5)",
            &[issuer.into(), serial_hex.into(), ROLE_DEVICE.into(), card_id.into(), der.into()],
        )
        .await?;
        self.audit(
            tx,
            &Principal::system(),
            Some(issuer),
            "certificate.issue",
            serial_hex,
            serde_json::json!({"role": ROLE_DEVICE, "subject": card_id}),
        )
        .await?;
        Ok(())
    }

    /// Creates an issuer with a fresh CA and package-signing key (superuser only).
    pub async fn create_issuer(
        &self,
        principal: &Principal,
        id: &str,
        name: &str,
    ) -> ServerResult<IssuerInfo> {
        self.create_issuer_with(principal, id, name, false).await
    }

    /// [`Store::create_issuer`] with both keys generated in the server's PKCS#11 token (400
    /// when the server has none; 503 when the token fails). Every later signature of the
    /// issuer goes through the token.
    pub async fn create_issuer_in_token(
        &self,
        principal: &Principal,
        id: &str,
        name: &str,
    ) -> ServerResult<IssuerInfo> {
        self.create_issuer_with(principal, id, name, true).await
    }

    /// A new key pair for `purpose` of issuer `id`, and its sealed form for the database.
    fn new_issuer_key(
        &self,
        id: &str,
        purpose: &str,
        context: &str,
        in_token: bool,
    ) -> ServerResult<(IssuerKey, Vec<u8>)> {
        if in_token {
            let token = self.token.as_ref().ok_or_else(|| {
                ServerError::BadRequest("this server has no PKCS#11 token configured".into())
            })?;
            let label = format!("tessera/{id}/{purpose}");
            let key = token.generate(&label).map_err(token_err)?;
            let reference = [TOKEN_REF_PREFIX, label.as_bytes()].concat();
            Ok((IssuerKey::Token(key), self.seal(&reference, context)?))
        } else {
            let key = SigningKey::generate(&mut OsRng);
            let sealed = self.seal(&key.to_pkcs8_der().map_err(crypto_err)?, context)?;
            Ok((IssuerKey::Soft(key), sealed))
        }
    }

    async fn create_issuer_with(
        &self,
        principal: &Principal,
        id: &str,
        name: &str,
        in_token: bool,
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
        // Keys and certificates are made before the transaction: nothing is written if that
        // fails, and no database lock is held meanwhile.
        if in_token {
            // Checked before the token makes keys, so a taken id leaves none behind (a race
            // with another replica can: the token then holds two unused keys).
            let mut tx = self.begin().await?;
            let taken = tx.query_opt("SELECT id FROM issuers WHERE id = $1", &[id.into()]).await?;
            self.commit(tx).await?;
            if taken.is_some() {
                return Err(ServerError::Conflict(format!("issuer {id} already exists")));
            }
        }
        let (ca_key, ca_sealed) = self.new_issuer_key(id, "ca", &ca_key_context(id), in_token)?;
        let ca_serial = x509::random_serial(&mut OsRng);
        let ca_cn = format!("{name} CA ({id})");
        let ca = x509::self_signed_ca(
            &ca_key,
            &ca_cn,
            &ca_serial,
            Validity { not_before: now - 3600, not_after: now + CA_LIFETIME_SECS },
        )
        .map_err(crypto_err)?;
        let (signing_key, signing_sealed) =
            self.new_issuer_key(id, "package-signing", &signing_key_context(id), in_token)?;
        let signing_serial = x509::random_serial(&mut OsRng);
        let signing_cn = format!("{name} package signing ({id})");
        let signing = x509::issue(
            &ca_key,
            &ca,
            &IssueRequest {
                subject_cn: &signing_cn,
                public_key: &signing_key.public_key(),
                roles: &[Role::PackageSigning],
                serial: &signing_serial,
                validity: Validity {
                    not_before: now - 3600,
                    not_after: now + SIGNING_LIFETIME_SECS,
                },
                ca_path_len: None,
            },
        )
        .map_err(crypto_err)?;
        let crl = x509::make_crl(&ca_key, &ca, &[], now, now + CRL_LIFETIME_SECS, 1)
            .map_err(crypto_err)?;

        let mut tx = self.begin().await?;
        if tx.query_opt("SELECT id FROM issuers WHERE id = $1", &[id.into()]).await?.is_some() {
            return Err(ServerError::Conflict(format!("issuer {id} already exists")));
        }
        tx.execute(
            "INSERT INTO issuers (id, name, ca_cert, ca_key_sealed, signing_cert, signing_key_sealed, \
             master_key_id, crl_number, crl, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                id.into(),
                name.into(),
                ca.der().into(),
                ca_sealed.into(),
                signing.der().into(),
                signing_sealed.into(),
                self.master.id().into(),
                1i64.into(),
                crl.der().into(),
                now.into(),
            ],
        )
        .await?;
        for (serial, role, subject, der) in [
            (&ca_serial, ROLE_CA, &ca_cn, ca.der()),
            (&signing_serial, ROLE_PACKAGE_SIGNING, &signing_cn, signing.der()),
        ] {
            tx.execute(
                "INSERT INTO certificates (issuer_id, serial, role, subject, der) VALUES ($1, $2, $3, $4, $5)",
                &[id.into(), hex::encode(serial).into(), role.into(), subject.into(), der.into()],
            )
            .await?;
        }
        self.audit(
            &mut tx,
            principal,
            Some(id),
            "issuer.create",
            id,
            serde_json::json!({"name": name, "ca_serial": hex::encode(ca_serial)}),
        )
        .await?;
        self.commit(tx).await?;
        Ok(IssuerInfo {
            id: id.to_owned(),
            name: name.to_owned(),
            ca_cert_pem: ca.to_pem(),
            signing_cert_pem: signing.to_pem(),
            created_at: now,
        })
    }

    fn issuer_from_row(r: &Row) -> ServerResult<IssuerInfo> {
        Ok(IssuerInfo {
            id: r.text(0)?,
            name: r.text(1)?,
            ca_cert_pem: cert_pem(&r.blob(2)?)?,
            signing_cert_pem: cert_pem(&r.blob(3)?)?,
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
        self.commit(tx).await?;
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
        self.commit(tx).await?;
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
                "SELECT serial, role, subject, der, revoked_at FROM certificates \
                 WHERE issuer_id = $1 ORDER BY role, serial",
                &[issuer.into()],
            )
            .await?;
        self.commit(tx).await?;
        rows.iter()
            .map(|r| {
                Ok(CertificateInfo {
                    serial: r.text(0)?,
                    role: r.text(1)?,
                    subject: r.text(2)?,
                    pem: cert_pem(&r.blob(3)?)?,
                    revoked_at: r.opt_int(4)?,
                })
            })
            .collect()
    }

    /// The issuer's current CRL, DER (public: anyone may fetch it).
    pub async fn issuer_crl(&self, issuer: &str) -> ServerResult<Vec<u8>> {
        let mut tx = self.begin().await?;
        let row = tx.query_opt("SELECT crl FROM issuers WHERE id = $1", &[issuer.into()]).await?;
        self.commit(tx).await?;
        row.ok_or_else(|| ServerError::NotFound(format!("no issuer {issuer}")))?
            .blob(0)
            .map_err(Into::into)
    }

    /// Revokes one of the issuer's certificates (not the CA's own) and signs a new CRL.
    /// Revoking a revoked certificate changes nothing.
    pub async fn revoke_certificate(
        &self,
        principal: &Principal,
        issuer: &str,
        serial: &str,
    ) -> ServerResult<CertificateInfo> {
        principal.require_issuer(issuer)?;
        let not_found =
            || ServerError::NotFound(format!("issuer {issuer} has no certificate {serial}"));
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
                "SELECT role, revoked_at FROM certificates WHERE issuer_id = $1 AND serial = $2",
                &[issuer.into(), serial.into()],
            )
            .await?
            .ok_or_else(not_found)?;
        if cert.text(0)? == ROLE_CA {
            return Err(ServerError::BadRequest("a CA does not revoke its own certificate".into()));
        }
        if cert.opt_int(1)?.is_none() {
            let now = crate::clock::now();
            tx.execute(
                "UPDATE certificates SET revoked_at = $1 WHERE issuer_id = $2 AND serial = $3",
                &[now.into(), issuer.into(), serial.into()],
            )
            .await?;
            let revoked = tx
                .query(
                    "SELECT serial, revoked_at FROM certificates \
                     WHERE issuer_id = $1 AND revoked_at IS NOT NULL ORDER BY serial",
                    &[issuer.into()],
                )
                .await?
                .iter()
                .map(|r| {
                    let serial = hex::decode(r.text(0)?)
                        .map_err(|_| ServerError::Internal("stored serial is not hex".into()))?;
                    Ok(Revoked { serial, revoked_at: r.int(1)? })
                })
                .collect::<ServerResult<Vec<_>>>()?;
            let ca_key = self.unseal_key(&issuer_row.blob(1)?, &ca_key_context(issuer))?;
            let ca = Certificate::from_der(issuer_row.blob(0)?).map_err(crypto_err)?;
            let number = issuer_row.int(2)? + 1;
            let crl = x509::make_crl(
                &ca_key,
                &ca,
                &revoked,
                now,
                now + CRL_LIFETIME_SECS,
                u64::try_from(number).unwrap_or(u64::MAX),
            )
            .map_err(crypto_err)?;
            tx.execute(
                "UPDATE issuers SET crl = $1, crl_number = $2 WHERE id = $3",
                &[crl.der().into(), number.into(), issuer.into()],
            )
            .await?;
            self.audit(
                &mut tx,
                principal,
                Some(issuer),
                "certificate.revoke",
                serial,
                serde_json::json!({ "crl_number": number }),
            )
            .await?;
        }
        self.commit(tx).await?;
        self.list_certificates(principal, issuer)
            .await?
            .into_iter()
            .find(|c| c.serial == serial)
            .ok_or_else(not_found)
    }
}
