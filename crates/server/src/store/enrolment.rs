//! Enrolment (seed 002, Fig. 9): the issuer CA certifies card and terminal keys for pairing.
//!
//! An enrolment station authenticates with an admin token of the issuer (tokens have no
//! finer scope: any token that may act for the issuer, or a superuser token, may enrol). It
//! asks for a challenge ([`Store::enrolment_challenge`]: 16 random bytes, single-use, bound to
//! the issuer and to the token that asked, valid [`CHALLENGE_TTL_SECS`]), has the key holder
//! sign [`tessera_proto::pairing::enrolment_message`] (its holder id, the public key, the
//! challenge; a card's pairing applet builds and signs that structure itself, a terminal's
//! key signs the same structure with its subject name as holder id), and sends the result
//! ([`Store::enrol`]). A well-formed request consumes its challenge before the proof is
//! checked, so a refused proof cannot be retried with it (a malformed one is refused first and
//! leaves it). The certificate (role card or terminal) is recorded in
//! `certificates`, revocable and listed in the issuer's CRL like any other.

use serde::{Deserialize, Serialize};
use tessera_crypto::ecdsa::{PublicKey, Signature};
use tessera_crypto::rng::OsRng;
use tessera_crypto::x509::{self, Certificate, IssueRequest, Role, Validity};
use tessera_proto::pairing::{CHALLENGE_LEN, PUBLIC_KEY_LEN, SIGNATURE_LEN, enrolment_message};
use utoipa::ToSchema;

use super::Store;
use super::auth::Principal;
use super::issuers::ca_key_context;
use crate::error::{ServerError, ServerResult};
use crate::primitives::random_bytes;

/// How long an enrolment challenge may be answered (five minutes).
pub const CHALLENGE_TTL_SECS: i64 = 300;
/// Lifetime of a card or terminal certificate (two years, never past the CA's).
const ENROLLED_LIFETIME_SECS: i64 = 2 * 365 * 24 * 3600;
/// Role name of a card's pairing certificate in the `certificates` table.
pub const ROLE_CARD: &str = "card";
/// Role name of a terminal's certificate.
pub const ROLE_TERMINAL: &str = "terminal";
/// Longest holder id (a card id or a terminal's name), in bytes.
const MAX_HOLDER_ID: usize = 64;

/// A fresh enrolment challenge.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct EnrolmentChallenge {
    /// 16 bytes, hex.
    pub challenge: String,
    /// When it stops being accepted, Unix seconds.
    pub expires_at: i64,
}

/// `POST /v1/admin/issuers/{issuer}/enrolment/certificates` body.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EnrolmentRequest {
    /// `card` or `terminal`.
    pub role: String,
    /// The certificate's subject common name (1 to 64 printable characters).
    pub subject: String,
    /// The id the key holder signed, hex: a card's card id; a terminal's subject in UTF-8.
    pub holder_id: String,
    /// The public key, uncompressed SEC1 (65 bytes), hex.
    pub public_key: String,
    /// The challenge this proof answers, hex.
    pub challenge: String,
    /// Signature (r || s, 64 bytes, hex) by the key over the enrolment message.
    pub proof: String,
}

/// A certificate issued by enrolment.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct EnrolledCertificate {
    /// Serial number, hex.
    pub serial: String,
    /// `card` or `terminal`.
    pub role: String,
    /// The certificate, PEM.
    pub pem: String,
    /// The issuer CA certificate, PEM (the trust anchor to install).
    pub ca_cert_pem: String,
}

fn bad(msg: impl Into<String>) -> ServerError {
    ServerError::BadRequest(msg.into())
}

fn hex_field<const N: usize>(value: &str, what: &str) -> ServerResult<[u8; N]> {
    let bytes = hex::decode(value).map_err(|_| bad(format!("{what}: not hex")))?;
    bytes.try_into().map_err(|_| bad(format!("{what}: must be {N} bytes")))
}

/// A request parsed once at the edge.
struct Parsed {
    role: Role,
    holder_id: Vec<u8>,
    public_key: [u8; PUBLIC_KEY_LEN],
    challenge: [u8; CHALLENGE_LEN],
    proof: [u8; SIGNATURE_LEN],
}

fn parse(req: &EnrolmentRequest) -> ServerResult<Parsed> {
    let role = match req.role.as_str() {
        ROLE_CARD => Role::Card,
        ROLE_TERMINAL => Role::Terminal,
        other => return Err(bad(format!("role {other:?}: only card or terminal"))),
    };
    let s = &req.subject;
    if s.trim().is_empty() || s.chars().count() > 64 || s.chars().any(char::is_control) {
        return Err(bad("subject: 1 to 64 printable characters"));
    }
    let holder_id = hex::decode(&req.holder_id).map_err(|_| bad("holder_id: not hex"))?;
    if holder_id.is_empty() || holder_id.len() > MAX_HOLDER_ID {
        return Err(bad(format!("holder_id: 1 to {MAX_HOLDER_ID} bytes")));
    }
    if role == Role::Terminal && holder_id != s.as_bytes() {
        return Err(bad("holder_id: a terminal signs its subject name"));
    }
    Ok(Parsed {
        role,
        holder_id,
        public_key: hex_field(&req.public_key, "public_key")?,
        challenge: hex_field(&req.challenge, "challenge")?,
        proof: hex_field(&req.proof, "proof")?,
    })
}

impl Store {
    /// A fresh single-use challenge for one enrolment with `issuer`'s CA, bound to the
    /// calling token. Expired challenges of the issuer are swept.
    pub async fn enrolment_challenge(
        &self,
        principal: &Principal,
        issuer: &str,
    ) -> ServerResult<EnrolmentChallenge> {
        principal.require_issuer(issuer)?;
        let now = crate::clock::now();
        let challenge = hex::encode(random_bytes::<CHALLENGE_LEN>());
        let expires_at = now + CHALLENGE_TTL_SECS;
        let mut tx = self.begin().await?;
        self.require_issuer_exists(&mut tx, issuer).await?;
        tx.execute(
            "DELETE FROM enrolment_challenges WHERE issuer_id = $1 AND expires_at < $2",
            &[issuer.into(), now.into()],
        )
        .await?;
        tx.execute(
            "INSERT INTO enrolment_challenges (issuer_id, challenge, token_id, expires_at) \
             VALUES ($1, $2, $3, $4)",
            &[
                issuer.into(),
                challenge.clone().into(),
                principal.token_id.clone().into(),
                expires_at.into(),
            ],
        )
        .await?;
        self.commit(tx).await?;
        Ok(EnrolmentChallenge { challenge, expires_at })
    }

    /// Checks the proof of possession over a challenge this token got and issues the
    /// certificate (see the module docs). The challenge is used up whatever the outcome.
    pub async fn enrol(
        &self,
        principal: &Principal,
        issuer: &str,
        req: &EnrolmentRequest,
    ) -> ServerResult<EnrolledCertificate> {
        principal.require_issuer(issuer)?;
        let request = parse(req)?;
        let now = crate::clock::now();
        let challenge_hex = hex::encode(request.challenge);
        // Consume the challenge in its own transaction first: a refused proof burns it.
        let mut tx = self.begin().await?;
        self.require_issuer_exists(&mut tx, issuer).await?;
        let row = tx
            .query_opt(
                "SELECT token_id, expires_at FROM enrolment_challenges \
                 WHERE issuer_id = $1 AND challenge = $2",
                &[issuer.into(), challenge_hex.clone().into()],
            )
            .await?;
        let deleted = tx
            .execute(
                "DELETE FROM enrolment_challenges WHERE issuer_id = $1 AND challenge = $2",
                &[issuer.into(), challenge_hex.clone().into()],
            )
            .await?;
        self.commit(tx).await?;
        let unknown = || bad("unknown, used or expired enrolment challenge");
        let row = row.ok_or_else(unknown)?;
        if deleted != 1 || row.text(0)? != principal.token_id || row.int(1)? < now {
            return Err(unknown());
        }

        let key = PublicKey::from_sec1_bytes(&request.public_key)
            .map_err(|_| bad("public_key: not a P-256 point"))?;
        let signature =
            Signature::from_bytes(&request.proof).map_err(|_| bad("proof: not a signature"))?;
        key.verify(
            &enrolment_message(&request.holder_id, &request.public_key, &request.challenge),
            &signature,
        )
        .map_err(|_| bad("the proof of possession does not verify"))?;

        let role_name = if request.role == Role::Card { ROLE_CARD } else { ROLE_TERMINAL };
        let mut tx = self.begin().await?;
        let issuer_row = tx
            .query_opt("SELECT ca_cert, ca_key_sealed FROM issuers WHERE id = $1", &[issuer.into()])
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("no issuer {issuer}")))?;
        let ca = Certificate::from_der(issuer_row.blob(0)?)
            .map_err(|e| ServerError::Internal(format!("certificate: {e}")))?;
        let ca_key = self.unseal_key(&issuer_row.blob(1)?, &ca_key_context(issuer))?;
        let ca_end = ca
            .info()
            .map_err(|e| ServerError::Internal(format!("certificate: {e}")))?
            .validity
            .not_after;
        let serial = x509::random_serial(&mut OsRng);
        let cert = x509::issue(
            &ca_key,
            &ca,
            &IssueRequest {
                subject_cn: &req.subject,
                public_key: &key,
                roles: &[request.role],
                serial: &serial,
                validity: Validity {
                    not_before: now - 3600,
                    not_after: (now + ENROLLED_LIFETIME_SECS).min(ca_end),
                },
                ca_path_len: None,
            },
        )
        .map_err(|e| ServerError::Internal(format!("certificate: {e}")))?;
        let serial_hex = hex::encode(serial);
        tx.execute(
            "INSERT INTO certificates (issuer_id, serial, role, subject, der) VALUES ($1, $2, $3, $4, $5)",
            &[
                issuer.into(),
                serial_hex.clone().into(),
                role_name.into(),
                req.subject.clone().into(),
                cert.der().into(),
            ],
        )
        .await?;
        self.audit(
            &mut tx,
            principal,
            Some(issuer),
            "certificate.enrol",
            &serial_hex,
            serde_json::json!({
                "role": role_name,
                "subject": req.subject,
                "holder_id": req.holder_id,
            }),
        )
        .await?;
        self.commit(tx).await?;
        Ok(EnrolledCertificate {
            serial: serial_hex,
            role: role_name.to_owned(),
            pem: cert.to_pem(),
            ca_cert_pem: ca.to_pem(),
        })
    }
}
