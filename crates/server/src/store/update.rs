//! The update service's database side (issue 5; the checks and the package format are in
//! [`crate::update`]). Each operation is one transaction:
//!
//! - **Registration** at issuance (`Store::update_register_card`): the update key, the nonce
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
use super::sessions::Outcome;
use crate::db::Tx;
use crate::error::{ServerError, ServerResult};
use crate::tunnel::TunnelState;
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
        let mut tx = self.begin().await?;
        let challenge = self.update_new_challenge(&mut tx, crate::clock::now()).await?;
        tx.commit().await?;
        Ok(challenge)
    }

    async fn update_new_challenge(&self, tx: &mut Tx, now: i64) -> ServerResult<Challenge> {
        let nonce = crate::primitives::random_bytes::<NONCE_LEN>();
        let expires = u64::try_from(now).unwrap_or(0).saturating_add(CHALLENGE_TTL);
        tx.execute("DELETE FROM update_challenges WHERE expires < $1", &[now.into()]).await?;
        tx.execute(
            "INSERT INTO update_challenges (nonce, expires) VALUES ($1, $2)",
            &[nonce.to_vec().into(), i64::try_from(expires).unwrap_or(i64::MAX).into()],
        )
        .await?;
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
        let mut tx = self.begin().await?;
        let card = self.update_check_auth(&mut tx, issuer, card_id, challenge, answer, now).await?;
        tx.commit().await?;
        Ok(card)
    }

    /// The checks of device authentication after the challenge was used up.
    async fn update_check_auth(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        challenge: &Challenge,
        answer: &[u8],
        now: i64,
    ) -> ServerResult<AuthenticatedCard> {
        let response = DeviceAuthResponse::parse(answer)
            .map_err(|_| update_err(UpdateError::DeviceSignature))?;
        let (ca, device) = self.update_card_certs(tx, issuer, card_id).await?;
        let key = device_key(&ca, card_id.as_bytes(), &device, now).map_err(update_err)?;
        verify_device_auth(&key, card_id.as_bytes(), challenge, &response).map_err(update_err)?;
        let acknowledged = self.update_acknowledged(tx, issuer, card_id).await?;
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
        let now = crate::clock::now();
        let mut tx = self.begin().await?;
        let sequence = self.update_accept_receipt(&mut tx, issuer, card, receipt, now).await?;
        tx.commit().await?;
        Ok(sequence)
    }

    async fn update_accept_receipt(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card: &AuthenticatedCard,
        receipt: &[u8],
        now: i64,
    ) -> ServerResult<u64> {
        let card_id = card_str(card)?;
        let receipt =
            Receipt::parse(receipt).map_err(|_| update_err(UpdateError::ReceiptMismatch))?;
        let sequence = i64::try_from(receipt.sequence)
            .map_err(|_| update_err(UpdateError::ReceiptMismatch))?;
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
        let (_, device) = self.update_card_certs(tx, issuer, card_id).await?;
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
            tx,
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

/// Where a sync's update step is, kept in the tunnel session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateSync {
    /// The card.
    pub card_id: String,
    /// The challenge sent with DEVICE AUTHENTICATE ([`Challenge::to_bytes`]), hex.
    pub challenge: String,
    /// Once the card authenticated: the sequence it reported.
    pub authenticated: Option<u64>,
    /// The sequence of the package out, once authenticated.
    pub sequence: Option<u64>,
    /// Packages delivered in this sync so far.
    pub delivered: u64,
    /// The outcome of the sync's earlier steps, reported at the end with this step's.
    pub before: Outcome,
}

/// What a tunnel step answers: the next state, its APDUs, the outcome when finished.
pub(crate) type Step = (TunnelState, Vec<Vec<u8>>, Option<Outcome>);

fn apdu(cmd: &tessera_apdu::Command) -> ServerResult<Vec<u8>> {
    cmd.to_bytes().map_err(|e| ServerError::Internal(format!("update step: {e}")))
}

fn package_apdus(package: &[u8]) -> ServerResult<Vec<Vec<u8>>> {
    tessera_proto::update::load_commands(package).iter().map(|c| apdu(&c.to_command())).collect()
}

fn finish(sync: &UpdateSync, result: Option<&str>, note: String) -> Step {
    let outcome = Outcome {
        result: result.unwrap_or(&sync.before.result).to_owned(),
        card_id: Some(sync.card_id.clone()),
        message: format!("{}; updates: {note}", sync.before.message),
    };
    (TunnelState::Finished, Vec::new(), Some(outcome))
}

/// The result of an update step that stopped on a refusal (the card's or the server's).
pub const UPDATE_ERROR: &str = "update-error";

impl Store {
    /// Starts the update step of a sync whose earlier steps ended with `before`: when the
    /// card is registered for updates and has packages pending, a challenge and the APDUs
    /// SELECT update, DEVICE AUTHENTICATE; else `None` (the sync ends as it was).
    pub(crate) async fn update_sync_start(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        before: Outcome,
        now: i64,
    ) -> ServerResult<Option<Step>> {
        let pending = tx
            .query_opt(
                "SELECT MIN(sequence) FROM update_packages \
                 WHERE issuer_id = $1 AND card_id = $2 AND delivered_at IS NULL",
                &[issuer.into(), card_id.into()],
            )
            .await?
            .map(|r| r.opt_int(0))
            .transpose()?
            .flatten();
        if pending.is_none() {
            return Ok(None);
        }
        let challenge = self.update_new_challenge(tx, now).await?;
        let select = tessera_apdu::Command::new(0x00, 0xA4, 0x04, 0x00)
            .with_data(tessera_proto::update::AID.to_vec())
            .with_le(256);
        let auth = tessera_proto::update::UpdateCommand::DeviceAuthenticate {
            mode: tessera_proto::update::AuthMode::Plain,
            challenge: Some(challenge),
        };
        let sync = UpdateSync {
            card_id: card_id.to_owned(),
            challenge: hex::encode(challenge.to_bytes()),
            authenticated: None,
            sequence: None,
            delivered: 0,
            before,
        };
        Ok(Some((TunnelState::Update(sync), vec![apdu(&select)?, apdu(&auth.to_command())?], None)))
    }

    /// One exchange of a sync's update step. Refusals end the sync with result
    /// [`UPDATE_ERROR`] (the transaction commits: a challenge is used up whatever the
    /// outcome); an undelivered package stays pending for the next sync.
    pub(crate) async fn update_sync_step(
        &self,
        tx: &mut Tx,
        issuer: &str,
        sync: &UpdateSync,
        responses: &[Vec<u8>],
        now: i64,
    ) -> ServerResult<Step> {
        let parsed: Vec<tessera_apdu::Response> = responses
            .iter()
            .map(|r| {
                tessera_apdu::Response::parse(r).ok_or_else(|| {
                    ServerError::BadRequest(
                        "update step: response shorter than a status word".into(),
                    )
                })
            })
            .collect::<ServerResult<_>>()?;
        let card_id = sync.card_id.as_str();
        let mut next = sync.clone();
        match sync.authenticated {
            None => {
                let [_, answer] = parsed.as_slice() else {
                    return Err(ServerError::BadRequest(format!(
                        "expected 2 responses to the update step, got {}",
                        parsed.len()
                    )));
                };
                let challenge = hex::decode(&sync.challenge)
                    .ok()
                    .and_then(|b| Challenge::parse(&b).ok())
                    .ok_or_else(|| ServerError::Internal("stored challenge".into()))?;
                let taken = tx
                    .execute(
                        "DELETE FROM update_challenges WHERE nonce = $1",
                        &[challenge.nonce.to_vec().into()],
                    )
                    .await?;
                if answer.sw == tessera_apdu::StatusWord(0x6982) {
                    return Ok(finish(
                        sync,
                        None,
                        "pending; the card wants its PIN first (--pin-file, --pin-stdin or TESSERA_PIN)"
                            .into(),
                    ));
                }
                if answer.sw != tessera_apdu::StatusWord::SUCCESS {
                    return Ok(finish(
                        sync,
                        Some(UPDATE_ERROR),
                        format!("DEVICE AUTHENTICATE: the card answered {:04X}", answer.sw.0),
                    ));
                }
                let checked = match taken {
                    1 if u64::try_from(now).unwrap_or(u64::MAX) <= challenge.expires => {
                        self.update_check_auth(tx, issuer, card_id, &challenge, &answer.data, now)
                            .await
                    }
                    _ => Err(update_err(UpdateError::Challenge)),
                };
                match checked {
                    Ok(card) => next.authenticated = Some(card.last_sequence),
                    Err(e) if refusal(&e) => {
                        return Ok(finish(sync, Some(UPDATE_ERROR), e.to_string()));
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(_) => {
                let Some(sequence) = sync.sequence else {
                    return Err(ServerError::Internal("update step without a package out".into()));
                };
                let failed = parsed.iter().find(|r| r.sw != tessera_apdu::StatusWord::SUCCESS);
                if let Some(r) = failed {
                    return Ok(finish(
                        sync,
                        Some(UPDATE_ERROR),
                        format!("the card refused package {sequence}: {:04X}", r.sw.0),
                    ));
                }
                let receipt = parsed.last().map(|r| r.data.as_slice()).unwrap_or_default();
                let card = AuthenticatedCard {
                    card_id: card_id.as_bytes().to_vec(),
                    last_sequence: sync.authenticated.unwrap_or(0),
                    private: false,
                };
                match self.update_accept_receipt(tx, issuer, &card, receipt, now).await {
                    Ok(s) if s == sequence => next.delivered += 1,
                    Ok(s) => {
                        return Ok(finish(
                            sync,
                            Some(UPDATE_ERROR),
                            format!("receipt for {s}, package {sequence} was out"),
                        ));
                    }
                    Err(e) if refusal(&e) => {
                        return Ok(finish(sync, Some(UPDATE_ERROR), e.to_string()));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        // The next pending package, if any.
        let row = tx
            .query_opt(
                "SELECT sequence, package FROM update_packages WHERE issuer_id = $1 AND card_id = $2 \
                 AND delivered_at IS NULL ORDER BY sequence LIMIT 1",
                &[issuer.into(), card_id.into()],
            )
            .await?;
        let Some(row) = row else {
            return Ok(finish(&next, None, format!("{} delivered", next.delivered)));
        };
        next.sequence = Some(
            u64::try_from(row.int(0)?)
                .map_err(|_| ServerError::Internal("stored sequence".into()))?,
        );
        let apdus = package_apdus(&row.blob(1)?)?;
        Ok((TunnelState::Update(next), apdus, None))
    }
}

/// A refusal of the card's answer (ends the sync with an outcome), as opposed to a failure of
/// the server (the exchange fails and can be retried).
fn refusal(e: &ServerError) -> bool {
    matches!(e, ServerError::Conflict(_) | ServerError::NotFound(_) | ServerError::BadRequest(_))
}

fn card_str(card: &AuthenticatedCard) -> ServerResult<&str> {
    std::str::from_utf8(&card.card_id).map_err(|_| ServerError::BadRequest("card id".into()))
}
