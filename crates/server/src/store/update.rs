//! The update service's database side (issue 5; the checks and the package format are in
//! [`crate::update`]). Each operation is one transaction:
//!
//! - **Registration** at issuance ([`Store::update_register_card`]): the update key, the nonce
//!   its proof is bound to and the device certificate, sequence counter 0.
//! - **Queueing** ([`Store::queue_update`]): the card's row is locked, the value sealed to its
//!   update key and the package signed by the issuer's package-signing key under the next
//!   sequence; only the package is stored (`update_packages`), never the plaintext; audited
//!   `update.queue` with the object name, sequence, mode and size, never the value.
//! - **Device authentication**: challenges are single-use rows with an expiry, consumed in a
//!   transaction of their own before the answer is checked, so a failed answer still uses one
//!   up; a card reporting a sequence below the highest delivered one is refused (rolled back).
//! - **Delivery**: a package is marked delivered only on a receipt whose sequence and digest
//!   match it and whose device signature verifies (audited `update.deliver`); until then it
//!   stays pending and is sent again, and the card answers "already applied".

use serde::{Deserialize, Serialize};
use tessera_crypto::hash::sha256;
use tessera_crypto::hpke::HpkePublicKey;
use tessera_crypto::rng::OsRng;
use tessera_crypto::x509::Certificate;
use tessera_proto::update::{
    Challenge, DeviceAuthResponse, MAX_OBJECT_LEN, Mode, NONCE_LEN, ReadRule, Receipt,
};
use utoipa::ToSchema;

use super::Store;
use super::auth::Principal;
use super::issuers::signing_key_context;
use crate::db::Tx;
use crate::error::{ServerError, ServerResult};
use crate::update::{
    AuthenticatedCard, CHALLENGE_TTL, PackageTarget, UpdateError, check_update, device_key,
    seal_package, verify_device_auth, verify_receipt, verify_update_key,
};

/// `POST /v1/admin/issuers/{issuer}/cards/{card}/updates` body: one update for one card.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueUpdate {
    /// The data object's name (1 to 32 bytes of UTF-8).
    pub object: String,
    /// The value, hex (at most 64 KiB).
    pub value_hex: String,
    /// Store it sealed on the card and decrypt on every read (claims 2, 7) instead of applying
    /// it now (claims 1, 6).
    #[serde(default)]
    pub sealed: bool,
    /// Reading the object needs the PIN (default) or is free.
    #[serde(default)]
    pub free_read: bool,
}

impl std::fmt::Debug for QueueUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The value is a secret (a password, a token): never logged.
        f.debug_struct("QueueUpdate")
            .field("object", &self.object)
            .field("sealed", &self.sealed)
            .field("free_read", &self.free_read)
            .finish_non_exhaustive()
    }
}

/// An update queued: its sequence for the card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueuedUpdate {
    /// The card.
    pub card_id: String,
    /// The data object.
    pub object: String,
    /// The card's sequence number of this package.
    pub sequence: i64,
    /// `apply` or `sealed`.
    pub mode: String,
}

/// One package of a card's update queue, as an administrator sees it (no value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UpdateEntry {
    /// The card's sequence number of this package.
    pub sequence: i64,
    /// The data object.
    pub object: String,
    /// `apply` or `sealed`.
    pub mode: String,
    /// When it was queued (Unix seconds).
    pub queued_at: i64,
    /// When a valid receipt arrived, if one did.
    pub delivered_at: Option<i64>,
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Apply => "apply",
        Mode::Sealed => "sealed",
    }
}

/// An update-service refusal as a server error: the card's or the caller's fault is a
/// conflict, anything else internal.
pub(crate) fn update_err(e: UpdateError) -> ServerError {
    match e {
        UpdateError::UnknownCard(_) | UpdateError::UnknownIssuer(_) => {
            ServerError::NotFound(e.to_string())
        }
        UpdateError::BadUpdate(_) => ServerError::BadRequest(e.to_string()),
        UpdateError::Crypto(_) => ServerError::Internal(e.to_string()),
        _ => ServerError::Conflict(e.to_string()),
    }
}

impl Store {
    /// Registers a card being issued with the update service: the update key the card
    /// reported (`update_key_answer`, GET DATA `0102`) must carry its device key's proof over
    /// `nonce`, and the device certificate (`device_der`) must chain to the issuer CA and name
    /// the card. Records the key, the nonce and the certificate with sequence counter 0
    /// (audited `update.register`). Called inside the issuance's last step.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn update_register_card(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        device_der: &[u8],
        nonce: &[u8],
        update_key_answer: &[u8],
        now: i64,
    ) -> ServerResult<()> {
        let row = tx
            .query_opt("SELECT ca_cert FROM issuers WHERE id = $1", &[issuer.into()])
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("no issuer {issuer}")))?;
        let bad = |e: tessera_crypto::CryptoError| ServerError::Internal(e.to_string());
        let ca = Certificate::from_der(row.blob(0)?).map_err(bad)?;
        let device = Certificate::from_der(device_der.to_vec()).map_err(bad)?;
        let key =
            verify_update_key(&ca, card_id.as_bytes(), &device, nonce, update_key_answer, now)
                .map_err(update_err)?;
        tx.execute(
            "INSERT INTO update_cards (issuer_id, card_id, update_key, key_nonce, device_cert, next_sequence, created_at) \
             VALUES ($1, $2, $3, $4, $5, 0, $6)",
            &[
                issuer.into(),
                card_id.into(),
                key.to_bytes().to_vec().into(),
                nonce.into(),
                device_der.into(),
                now.into(),
            ],
        )
        .await?;
        self.audit(
            tx,
            &Principal::system(),
            Some(issuer),
            "update.register",
            card_id,
            serde_json::json!({ "update_key": hex::encode(key.to_bytes()) }),
        )
        .await?;
        Ok(())
    }

    /// Queues an update for a card (issuer admin): seals it to the card's update key, signs it
    /// with the issuer's package-signing key under the card's next sequence and stores the
    /// package only. 404 for a card not registered for updates, 400 for a bad name or value.
    pub async fn queue_update(
        &self,
        principal: &Principal,
        issuer: &str,
        card_id: &str,
        req: &QueueUpdate,
    ) -> ServerResult<QueuedUpdate> {
        principal.require_issuer(issuer)?;
        let value = zeroize::Zeroizing::new(
            hex::decode(&req.value_hex)
                .map_err(|_| ServerError::BadRequest("value_hex: not hex".into()))?,
        );
        if value.len() > MAX_OBJECT_LEN {
            return Err(ServerError::BadRequest("value above 64 KiB".into()));
        }
        check_update(req.object.as_bytes(), &value).map_err(update_err)?;
        let mode = if req.sealed { Mode::Sealed } else { Mode::Apply };
        let rule = if req.free_read { ReadRule::Free } else { ReadRule::Pin };
        let now = crate::clock::now();

        let mut tx = self.begin().await?;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT update_key, next_sequence FROM update_cards \
                     WHERE issuer_id = $1 AND card_id = $2{}",
                    tx.for_update()
                ),
                &[issuer.into(), card_id.into()],
            )
            .await?
            .ok_or_else(|| {
                ServerError::NotFound(format!(
                    "card {card_id} of issuer {issuer} is not registered for updates"
                ))
            })?;
        let update_key = HpkePublicKey::from_bytes(&row.blob(0)?)
            .map_err(|_| ServerError::Internal("stored update key".into()))?;
        let sequence = row.int(1)? + 1;
        let signer_row = tx
            .query_opt("SELECT signing_key_sealed FROM issuers WHERE id = $1", &[issuer.into()])
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("no issuer {issuer}")))?;
        let signer = self.unseal_key(&signer_row.blob(0)?, &signing_key_context(issuer))?;
        let target = PackageTarget {
            card_id: card_id.as_bytes(),
            update_key: &update_key,
            sequence: u64::try_from(sequence)
                .map_err(|_| ServerError::Internal("sequence counter".into()))?,
        };
        let package =
            seal_package(&mut OsRng, &signer, &target, req.object.as_bytes(), &value, mode, rule)
                .map_err(update_err)?;
        tx.execute(
            "INSERT INTO update_packages (issuer_id, card_id, sequence, object_name, mode, package, queued_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                issuer.into(),
                card_id.into(),
                sequence.into(),
                req.object.as_str().into(),
                mode_name(mode).into(),
                package.into(),
                now.into(),
            ],
        )
        .await?;
        tx.execute(
            "UPDATE update_cards SET next_sequence = $1 WHERE issuer_id = $2 AND card_id = $3",
            &[sequence.into(), issuer.into(), card_id.into()],
        )
        .await?;
        self.audit(
            &mut tx,
            principal,
            Some(issuer),
            "update.queue",
            card_id,
            serde_json::json!({
                "object": req.object, "sequence": sequence, "mode": mode_name(mode),
                "free_read": req.free_read, "len": value.len(),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(QueuedUpdate {
            card_id: card_id.to_owned(),
            object: req.object.clone(),
            sequence,
            mode: mode_name(mode).into(),
        })
    }

    /// A card's update queue, oldest first (issuer admin): what was queued and what delivered.
    pub async fn list_updates(
        &self,
        principal: &Principal,
        issuer: &str,
        card_id: &str,
    ) -> ServerResult<Vec<UpdateEntry>> {
        principal.require_issuer(issuer)?;
        let mut tx = self.begin().await?;
        let rows = tx
            .query(
                "SELECT sequence, object_name, mode, queued_at, delivered_at FROM update_packages \
                 WHERE issuer_id = $1 AND card_id = $2 ORDER BY sequence",
                &[issuer.into(), card_id.into()],
            )
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(UpdateEntry {
                    sequence: r.int(0)?,
                    object: r.text(1)?,
                    mode: r.text(2)?,
                    queued_at: r.int(3)?,
                    delivered_at: r.opt_int(4)?,
                })
            })
            .collect()
    }

    /// A fresh single-use device-authentication challenge, valid [`CHALLENGE_TTL`] seconds
    /// (expired ones are swept in the same transaction).
    pub async fn update_challenge(&self) -> ServerResult<Challenge> {
        let now = crate::clock::now();
        let nonce = crate::primitives::random_bytes::<NONCE_LEN>();
        let expires = u64::try_from(now).unwrap_or(0).saturating_add(CHALLENGE_TTL);
        let mut tx = self.begin().await?;
        tx.execute("DELETE FROM update_challenges WHERE expires < $1", &[now.into()]).await?;
        tx.execute(
            "INSERT INTO update_challenges (nonce, expires) VALUES ($1, $2)",
            &[nonce.to_vec().into(), i64::try_from(expires).unwrap_or(i64::MAX).into()],
        )
        .await?;
        tx.commit().await?;
        Ok(Challenge { nonce, expires })
    }

    /// Device authentication (plain mode) of `card_id` of `issuer`: the challenge must be one
    /// this server issued, unused and unexpired (it is used up first, in its own transaction,
    /// whatever the outcome); the card's device certificate must still chain to the issuer
    /// CA; the signature must verify; the sequence the card reports must not be below the
    /// highest delivered one. The answer is the handle for [`Store::update_pending`] and
    /// [`Store::update_receipt`].
    pub async fn update_authenticate(
        &self,
        issuer: &str,
        card_id: &str,
        challenge: &Challenge,
        answer: &[u8],
    ) -> ServerResult<AuthenticatedCard> {
        let now = crate::clock::now();
        let mut tx = self.begin().await?;
        let taken = tx
            .execute(
                "DELETE FROM update_challenges WHERE nonce = $1 AND expires = $2",
                &[
                    challenge.nonce.to_vec().into(),
                    i64::try_from(challenge.expires).unwrap_or(-1).into(),
                ],
            )
            .await?;
        // A made-up expiry must not spare the real challenge: it goes too.
        tx.execute(
            "DELETE FROM update_challenges WHERE nonce = $1",
            &[challenge.nonce.to_vec().into()],
        )
        .await?;
        tx.commit().await?;
        if taken != 1 || u64::try_from(now).unwrap_or(u64::MAX) > challenge.expires {
            return Err(update_err(UpdateError::Challenge));
        }
        let response = DeviceAuthResponse::parse(answer)
            .map_err(|_| update_err(UpdateError::DeviceSignature))?;

        let mut tx = self.begin().await?;
        let (ca, device) = self.update_card_certs(&mut tx, issuer, card_id).await?;
        let key = device_key(&ca, card_id.as_bytes(), &device, now).map_err(update_err)?;
        verify_device_auth(&key, card_id.as_bytes(), challenge, &response).map_err(update_err)?;
        let acknowledged = self.update_acknowledged(&mut tx, issuer, card_id).await?;
        tx.commit().await?;
        if response.last_sequence < acknowledged {
            return Err(update_err(UpdateError::RolledBack {
                reported: response.last_sequence,
                acknowledged,
            }));
        }
        Ok(AuthenticatedCard {
            card_id: card_id.as_bytes().to_vec(),
            last_sequence: response.last_sequence,
            private: false,
        })
    }

    async fn update_card_certs(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
    ) -> ServerResult<(Certificate, Certificate)> {
        let row = tx
            .query_opt(
                "SELECT i.ca_cert, u.device_cert FROM update_cards u JOIN issuers i ON i.id = u.issuer_id \
                 WHERE u.issuer_id = $1 AND u.card_id = $2",
                &[issuer.into(), card_id.into()],
            )
            .await?
            .ok_or_else(|| update_err(UpdateError::UnknownCard(card_id.into())))?;
        let bad = |e: tessera_crypto::CryptoError| ServerError::Internal(e.to_string());
        Ok((
            Certificate::from_der(row.blob(0)?).map_err(bad)?,
            Certificate::from_der(row.blob(1)?).map_err(bad)?,
        ))
    }

    async fn update_acknowledged(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
    ) -> ServerResult<u64> {
        let row = tx
            .query_opt(
                "SELECT MAX(sequence) FROM update_packages \
                 WHERE issuer_id = $1 AND card_id = $2 AND delivered_at IS NOT NULL",
                &[issuer.into(), card_id.into()],
            )
            .await?;
        let max = row.map(|r| r.opt_int(0)).transpose()?.flatten().unwrap_or(0);
        Ok(u64::try_from(max).unwrap_or(0))
    }

    /// The packages pending for an authenticated card, `(sequence, bytes)` in sequence order.
    pub async fn update_pending(
        &self,
        issuer: &str,
        card: &AuthenticatedCard,
    ) -> ServerResult<Vec<(u64, Vec<u8>)>> {
        let card_id = card_str(card)?;
        let mut tx = self.begin().await?;
        let rows = tx
            .query(
                "SELECT sequence, package FROM update_packages \
                 WHERE issuer_id = $1 AND card_id = $2 AND delivered_at IS NULL ORDER BY sequence",
                &[issuer.into(), card_id.into()],
            )
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                let seq = u64::try_from(r.int(0)?)
                    .map_err(|_| ServerError::Internal("stored sequence".into()))?;
                Ok((seq, r.blob(1)?))
            })
            .collect()
    }

    /// Accepts a receipt from an authenticated card: it must name a pending package by
    /// sequence and digest and carry the card's device signature; only then is the package
    /// marked delivered (audited `update.deliver`). Returns its sequence. A receipt for a
    /// package already delivered, or any other mismatch, changes nothing (409).
    pub async fn update_receipt(
        &self,
        issuer: &str,
        card: &AuthenticatedCard,
        receipt: &[u8],
    ) -> ServerResult<u64> {
        let card_id = card_str(card)?;
        let receipt =
            Receipt::parse(receipt).map_err(|_| update_err(UpdateError::ReceiptMismatch))?;
        let sequence = i64::try_from(receipt.sequence)
            .map_err(|_| update_err(UpdateError::ReceiptMismatch))?;
        let now = crate::clock::now();
        let mut tx = self.begin().await?;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT package FROM update_packages WHERE issuer_id = $1 AND card_id = $2 \
                     AND sequence = $3 AND delivered_at IS NULL{}",
                    tx.for_update()
                ),
                &[issuer.into(), card_id.into(), sequence.into()],
            )
            .await?
            .ok_or_else(|| update_err(UpdateError::ReceiptMismatch))?;
        if sha256(&row.blob(0)?) != receipt.digest {
            return Err(update_err(UpdateError::ReceiptMismatch));
        }
        let (_, device) = self.update_card_certs(&mut tx, issuer, card_id).await?;
        verify_receipt(&device, card_id.as_bytes(), &receipt).map_err(update_err)?;
        let marked = tx
            .execute(
                "UPDATE update_packages SET delivered_at = $1 WHERE issuer_id = $2 AND card_id = $3 \
                 AND sequence = $4 AND delivered_at IS NULL",
                &[now.into(), issuer.into(), card_id.into(), sequence.into()],
            )
            .await?;
        if marked != 1 {
            return Err(update_err(UpdateError::ReceiptMismatch));
        }
        self.audit(
            &mut tx,
            &Principal::system(),
            Some(issuer),
            "update.deliver",
            card_id,
            serde_json::json!({
                "sequence": sequence,
                "outcome": match receipt.outcome {
                    tessera_proto::update::Outcome::Applied => "applied",
                    tessera_proto::update::Outcome::AlreadyApplied => "already applied",
                },
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(receipt.sequence)
    }

    /// The update key registered for a card at issuance (uncompressed SEC1), if any.
    pub async fn update_key(
        &self,
        principal: &Principal,
        issuer: &str,
        card_id: &str,
    ) -> ServerResult<Option<Vec<u8>>> {
        principal.require_issuer(issuer)?;
        let mut tx = self.begin().await?;
        let row = tx
            .query_opt(
                "SELECT update_key FROM update_cards WHERE issuer_id = $1 AND card_id = $2",
                &[issuer.into(), card_id.into()],
            )
            .await?;
        tx.commit().await?;
        row.map(|r| r.blob(0)).transpose().map_err(Into::into)
    }
}

fn card_str(card: &AuthenticatedCard) -> ServerResult<&str> {
    std::str::from_utf8(&card.card_id).map_err(|_| ServerError::BadRequest("card id".into()))
}
