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

pub mod schedule;

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use tessera_crypto::hash::sha256;
use tessera_crypto::hpke::HpkePublicKey;
use tessera_crypto::rng::OsRng;
use tessera_crypto::x509::Certificate;
use tessera_proto::update::{
    Challenge, DeviceAuthResponse, IssuerList, MAX_OBJECT_LEN, Mode, NONCE_LEN, ReadRule, Receipt,
};
use utoipa::ToSchema;

use super::Store;
use super::auth::Principal;
use super::issuers::signing_key_context;
use super::sessions::Outcome;
use crate::db::{Row, Tx, Value, at_most_one};
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

/// `PUT /v1/admin/issuers/{issuer}/cards/{card}/update-legacy-static` body.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LegacyStaticBody {
    /// The card's static authenticator (16 bytes), hex; `null` removes it.
    pub value_hex: Option<String>,
}

impl std::fmt::Debug for LegacyStaticBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyStaticBody").finish_non_exhaustive()
    }
}

impl LegacyStaticBody {
    /// The value, checked: 16 bytes of hex.
    pub fn value(&self) -> ServerResult<Option<[u8; tessera_proto::update::STATIC_AUTH_LEN]>> {
        self.value_hex
            .as_deref()
            .map(|h| {
                hex::decode(h)
                    .ok()
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| ServerError::BadRequest("value_hex: 16 bytes of hex".into()))
            })
            .transpose()
    }
}

/// `GET /v1/issuers/{issuer}/update/issuer-list`: the signed issuer list
/// ([`IssuerList`], docs/update.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IssuerListBody {
    /// The list's version (its signing time, Unix seconds).
    pub version: u64,
    /// The list ([`IssuerList::to_bytes`]), hex.
    pub list_hex: String,
}

/// Where a value is queued: card, object, mode and read rule.
#[derive(Clone, Copy)]
struct QueueTarget<'a> {
    issuer: &'a str,
    card_id: &'a str,
    object: &'a str,
    mode: Mode,
    rule: ReadRule,
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Apply => "apply",
        Mode::Sealed => "sealed",
    }
}

/// A failed check with its refusal code ([`refusal_code`]), or a server failure (code
/// `server`).
type Checked<T> = Result<T, (ServerError, &'static str)>;

fn check_err(e: UpdateError) -> (ServerError, &'static str) {
    let code = refusal_code(&e);
    (update_err(e), code)
}

fn server_err(e: impl Into<ServerError>) -> (ServerError, &'static str) {
    (e.into(), "server")
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
        let ca = Certificate::from_stored_der(row.blob(0)?);
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
        let mode = if req.sealed { Mode::Sealed } else { Mode::Apply };
        let rule = if req.free_read { ReadRule::Free } else { ReadRule::Pin };
        let mut tx = self.begin().await?;
        let target = QueueTarget { issuer, card_id, object: &req.object, mode, rule };
        let queued =
            self.queue_in_tx(&mut tx, principal, &target, &value, crate::clock::now()).await?;
        self.commit(tx).await?;
        Ok(queued)
    }

    /// [`Store::queue_update`] inside `tx`: the card's row is locked, the value sealed and
    /// signed under the next sequence, the package stored and audited (without the value).
    async fn queue_in_tx(
        &self,
        tx: &mut Tx,
        principal: &Principal,
        target: &QueueTarget<'_>,
        value: &[u8],
        now: i64,
    ) -> ServerResult<QueuedUpdate> {
        let QueueTarget { issuer, card_id, object, mode, rule } = *target;
        if value.len() > MAX_OBJECT_LEN {
            return Err(ServerError::BadRequest("value above 64 KiB".into()));
        }
        check_update(object.as_bytes(), value).map_err(update_err)?;
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
        let package_target = PackageTarget {
            card_id: card_id.as_bytes(),
            update_key: &update_key,
            sequence: u64::try_from(sequence)
                .map_err(|_| ServerError::Internal("sequence counter".into()))?,
        };
        let package = seal_package(&signer, &package_target, object.as_bytes(), value, mode, rule)
            .map_err(update_err)?;
        tx.execute(
            "INSERT INTO update_packages (issuer_id, card_id, sequence, object_name, mode, package, queued_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                issuer.into(),
                card_id.into(),
                sequence.into(),
                object.into(),
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
            tx,
            principal,
            Some(issuer),
            "update.queue",
            card_id,
            serde_json::json!({
                "object": object, "sequence": sequence, "mode": mode_name(mode),
                "free_read": rule == ReadRule::Free, "len": value.len(),
            }),
        )
        .await?;
        Ok(QueuedUpdate {
            card_id: card_id.to_owned(),
            object: object.to_owned(),
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
        self.commit(tx).await?;
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
        self.commit(tx).await?;
        Ok(challenge)
    }

    async fn update_new_challenge(&self, tx: &mut Tx, now: i64) -> ServerResult<Challenge> {
        let nonce = crate::primitives::random_bytes::<NONCE_LEN>();
        let expires = u64::try_from(now).unwrap_or(0).saturating_add(CHALLENGE_TTL);
        tx.execute_deferred("DELETE FROM update_challenges WHERE expires < $1", &[now.into()])
            .await?;
        tx.execute_deferred(
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
        self.commit(tx).await?;
        if taken != 1 || u64::try_from(now).unwrap_or(u64::MAX) > challenge.expires {
            return Err(update_err(UpdateError::Challenge));
        }
        let mut tx = self.begin().await?;
        let (card, _) = self
            .update_check_auth(&mut tx, issuer, card_id, challenge, answer, now)
            .await
            .map_err(|(e, _)| e)?;
        self.commit(tx).await?;
        Ok(card)
    }

    /// The checks of device authentication after the challenge was used up ([`check_auth`]
    /// on what [`AUTH_READ`] finds). Besides the card, what the same query found for the
    /// steps after it ([`AuthFound`]).
    async fn update_check_auth(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        challenge: &Challenge,
        answer: &[u8],
        now: i64,
    ) -> Checked<(AuthenticatedCard, AuthFound)> {
        let response = DeviceAuthResponse::parse(answer)
            .map_err(|_| check_err(UpdateError::DeviceSignature))?;
        let row = tx
            .query_opt(&AUTH_READ, &auth_read_params(issuer, card_id, now))
            .await
            .map_err(server_err)?;
        check_auth(row, card_id, challenge, &response, now)
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
        Ok((Certificate::from_stored_der(row.blob(0)?), Certificate::from_stored_der(row.blob(1)?)))
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
        self.commit(tx).await?;
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
        let sequence = self
            .update_accept_receipt(&mut tx, issuer, card, receipt, now)
            .await
            .map_err(|(e, _)| e)?;
        self.commit(tx).await?;
        Ok(sequence)
    }

    async fn update_accept_receipt(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card: &AuthenticatedCard,
        receipt: &[u8],
        now: i64,
    ) -> Checked<u64> {
        let card_id = card_str(card).map_err(server_err)?;
        let sequence =
            Receipt::parse(receipt).map_err(|_| check_err(UpdateError::ReceiptMismatch))?.sequence;
        let (mut rows, _) = self
            .update_receipt_reads(tx, issuer, card_id, &[sequence], None)
            .await
            .map_err(server_err)?;
        let row = rows.pop().flatten();
        self.update_accept_receipt_row(tx, issuer, card, sequence, receipt, row, now).await?;
        Ok(sequence)
    }

    /// The packages the receipts of a batch are for, by `sequences` (each row locked, with
    /// the card's device certificate; none for a package not pending), and with `next_after`
    /// the last of them, the packages of the batch after it ([`PENDING_PACKAGES`]): all in one
    /// round trip.
    async fn update_receipt_reads(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        sequences: &[u64],
        next_after: Option<u64>,
    ) -> ServerResult<(Vec<Option<Row>>, Option<Vec<Row>>)> {
        let sql = format!(
            "SELECT p.package, u.device_cert FROM update_packages p \
             JOIN update_cards u ON u.issuer_id = p.issuer_id AND u.card_id = p.card_id \
             WHERE p.issuer_id = $1 AND p.card_id = $2 \
             AND p.sequence = $3 AND p.delivered_at IS NULL{}",
            tx.for_update()
        );
        // A sequence beyond the column's range names no package.
        let column = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
        let reads: Vec<[Value; 3]> =
            sequences.iter().map(|&s| [issuer.into(), card_id.into(), column(s).into()]).collect();
        let after = next_after
            .map(|s| [issuer.into(), card_id.into(), (MAX_BATCH as i64).into(), column(s).into()]);
        let mut queries: Vec<(&str, &[Value])> =
            reads.iter().map(|p| (sql.as_str(), p.as_slice())).collect();
        if let Some(params) = &after {
            queries.push((PENDING_PACKAGES, params));
        }
        let mut answers = tx.query_all(&queries).await?;
        let next = if after.is_some() { answers.pop() } else { None };
        let rows = answers.into_iter().map(at_most_one).collect::<Result<_, _>>()?;
        Ok((rows, next))
    }

    /// Accepts `receipt`, the card's answer for package `sequence`, on what
    /// [`Store::update_receipt_reads`] found of it (`row`): it must name that package, match
    /// its digest and carry the card's device signature. The package is then marked delivered
    /// (its row is locked and was found pending: the `UPDATE` goes out with the next
    /// statement) and the delivery audited `update.deliver`.
    #[allow(clippy::too_many_arguments)]
    async fn update_accept_receipt_row(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card: &AuthenticatedCard,
        sequence: u64,
        receipt: &[u8],
        row: Option<Row>,
        now: i64,
    ) -> Checked<()> {
        let card_id = card_str(card).map_err(server_err)?;
        let receipt =
            Receipt::parse(receipt).map_err(|_| check_err(UpdateError::ReceiptMismatch))?;
        if receipt.sequence != sequence {
            let e = format!("receipt for {}, package {sequence} was out", receipt.sequence);
            return Err((ServerError::Conflict(e), "receipt-mismatch"));
        }
        let row = row.ok_or_else(|| check_err(UpdateError::ReceiptMismatch))?;
        if sha256(&row.blob(0).map_err(server_err)?) != receipt.digest {
            return Err(check_err(UpdateError::ReceiptMismatch));
        }
        let device = Certificate::from_stored_der(row.blob(1).map_err(server_err)?);
        verify_receipt(&device, card_id.as_bytes(), &receipt).map_err(check_err)?;
        let sequence =
            i64::try_from(sequence).map_err(|_| check_err(UpdateError::ReceiptMismatch))?;
        tx.execute_deferred(
            "UPDATE update_packages SET delivered_at = $1 WHERE issuer_id = $2 AND card_id = $3 \
             AND sequence = $4",
            &[now.into(), issuer.into(), card_id.into(), sequence.into()],
        )
        .await
        .map_err(server_err)?;
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
        .await
        .map_err(server_err)?;
        Ok(())
    }

    /// The issuer list `issuer` publishes for terminals (claims 4, 13): its own CA
    /// certificate, version = the signing time (Unix seconds, so a terminal holding a list
    /// never goes back to an older one), signed by the issuer's package-signing key, whose
    /// certificate terminals are configured with (`tessera sync --publisher-key`). Public.
    pub async fn update_issuer_list(&self, issuer: &str) -> ServerResult<IssuerListBody> {
        let mut tx = self.begin().await?;
        let row = tx
            .query_opt(
                "SELECT ca_cert, signing_key_sealed FROM issuers WHERE id = $1",
                &[issuer.into()],
            )
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("no issuer {issuer}")))?;
        self.commit(tx).await?;
        if issuer.len() > 64 {
            return Err(ServerError::BadRequest("issuer id above 64 bytes".into()));
        }
        let signer = self.unseal_key(&row.blob(1)?, &signing_key_context(issuer))?;
        let version = u64::try_from(crate::clock::now()).unwrap_or(0);
        let mut list = IssuerList {
            version,
            issuers: vec![(issuer.to_owned(), row.blob(0)?)],
            signature: [0; 64],
        };
        list.signature =
            tessera_crypto::x509::CaSigner::sign_message(&signer, &list.signed_message())
                .map_err(|e| ServerError::Internal(e.to_string()))?
                .to_bytes();
        Ok(IssuerListBody { version, list_hex: hex::encode(list.to_bytes()) })
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
        self.commit(tx).await?;
        row.map(|r| r.blob(0)).transpose().map_err(Into::into)
    }
}

/// What device authentication's query found for the steps after the checks.
struct AuthFound {
    /// Packages below the sequence the card reported are still pending (it acknowledged them
    /// by reporting it: [`Store::update_acknowledge_below`]).
    pending_below: bool,
    /// A schedule of the card is due ([`Store::update_run_due_tx`]).
    due: bool,
}

/// What device authentication reads of a card (`$1` the time), for the card `filter` names:
/// its status (`NULL`: not in `cards`, unknown as a card), the issuer CA certificate, the
/// device certificate, the highest delivered sequence; for after the checks, the lowest
/// pending sequence and how many of the card's schedules are due (the card's session holds
/// its row: nobody else delivers its packages meanwhile).
fn auth_read_sql(filter: &str) -> String {
    format!(
        "SELECT c.status, i.ca_cert, u.device_cert, \
         (SELECT MAX(p.sequence) FROM update_packages p WHERE p.issuer_id = u.issuer_id \
         AND p.card_id = u.card_id AND p.delivered_at IS NOT NULL), \
         (SELECT MIN(p.sequence) FROM update_packages p WHERE p.issuer_id = u.issuer_id \
         AND p.card_id = u.card_id AND p.delivered_at IS NULL), \
         (SELECT COUNT(*) FROM update_schedules s WHERE s.issuer_id = u.issuer_id \
         AND s.card_id = u.card_id AND s.next_due <= $1) \
         FROM update_cards u JOIN issuers i ON i.id = u.issuer_id \
         LEFT JOIN cards c ON c.issuer_id = u.issuer_id AND c.card_id = u.card_id \
         WHERE {filter}"
    )
}

/// [`auth_read_sql`] for a card by `$2` its issuer and `$3` its id ([`auth_read_params`]).
static AUTH_READ: LazyLock<String> =
    LazyLock::new(|| auth_read_sql("u.issuer_id = $2 AND u.card_id = $3"));

/// [`AUTH_READ`]'s parameters.
fn auth_read_params(issuer: &str, card_id: &str, now: i64) -> [Value; 3] {
    [now.into(), issuer.into(), card_id.into()]
}

/// Uses up a challenge: one row when it was still there.
const TAKE_CHALLENGE: &str = "DELETE FROM update_challenges WHERE nonce = $1 RETURNING nonce";

/// The packages pending for a card, in sequence order: `$1` the issuer, `$2` the card, `$3`
/// the most, `$4` only after this sequence.
const PENDING_PACKAGES: &str = "SELECT sequence, package FROM update_packages \
     WHERE issuer_id = $1 AND card_id = $2 AND delivered_at IS NULL AND sequence > $4 \
     ORDER BY sequence LIMIT $3";

/// [`PENDING_PACKAGES`]' parameters for the first batch.
fn first_batch_params(issuer: &str, card_id: &str) -> [Value; 4] {
    [issuer.into(), card_id.into(), (MAX_BATCH as i64).into(), i64::MIN.into()]
}

/// [`TAKE_CHALLENGE`] for the challenge session `$1` sent ([`Awaits::challenge`]).
const TAKE_SESSION_CHALLENGE: &str = "DELETE FROM update_challenges \
     WHERE nonce = (SELECT challenge FROM sessions WHERE id = $1) RETURNING nonce";

/// [`AUTH_READ`] for the card of session `$2`, when it sent a challenge.
static AUTH_READ_SESSION: LazyLock<String> = LazyLock::new(|| {
    auth_read_sql(
        "(u.issuer_id, u.card_id) = (SELECT s.issuer_id, s.card_id FROM sessions s \
         WHERE s.id = $2 AND s.challenge IS NOT NULL)",
    )
});

/// The first batch's packages ([`PENDING_PACKAGES`]) for the card of session `$1`, when it
/// sent a challenge; at most `$2`.
const FIRST_BATCH_SESSION: &str = "SELECT p.sequence, p.package FROM update_packages p \
     JOIN sessions s ON s.issuer_id = p.issuer_id AND s.card_id = p.card_id \
     WHERE s.id = $1 AND s.challenge IS NOT NULL AND p.delivered_at IS NULL \
     ORDER BY p.sequence LIMIT $2";

/// The packages of the batch session `$1` sent ([`Awaits::batch`]) still pending, each with
/// the card's device certificate and its sequence, locked; in sequence order.
fn batch_out_sql(tx: &Tx) -> String {
    format!(
        "SELECT p.package, u.device_cert, p.sequence FROM update_packages p \
         JOIN update_cards u ON u.issuer_id = p.issuer_id AND u.card_id = p.card_id \
         JOIN sessions s ON s.issuer_id = p.issuer_id AND s.card_id = p.card_id \
         WHERE s.id = $1 AND p.sequence BETWEEN s.batch_first AND s.batch_last \
         AND p.delivered_at IS NULL ORDER BY p.sequence{}",
        tx.for_update()
    )
}

/// The rows of [`batch_out_sql`] (`out`) for `sequences`, in their order (`None`: not
/// pending).
fn by_sequence(out: Vec<Row>, sequences: &[u64]) -> ServerResult<Vec<Option<Row>>> {
    let mut out = out
        .into_iter()
        .map(|row| Ok((u64::try_from(row.int(2)?).ok(), Some(row))))
        .collect::<ServerResult<Vec<_>>>()?;
    Ok(sequences
        .iter()
        .map(|s| {
            out.iter_mut().find(|(sequence, _)| *sequence == Some(*s)).and_then(|r| r.1.take())
        })
        .collect())
}

/// The packages of the batch after the one session `$1` sent ([`PENDING_PACKAGES`]); at most
/// `$2`.
const NEXT_BATCH_SESSION: &str = "SELECT p.sequence, p.package FROM update_packages p \
     JOIN sessions s ON s.issuer_id = p.issuer_id AND s.card_id = p.card_id \
     WHERE s.id = $1 AND p.delivered_at IS NULL AND p.sequence > s.batch_last \
     ORDER BY p.sequence LIMIT $2";

/// What a session's next exchange answers, kept in its row (`challenge`, `batch_first`,
/// `batch_last`) so that the exchange's first round trip can read by it ([`SyncReads`]).
#[derive(Debug, Default)]
pub(crate) struct Awaits {
    /// The nonce of the challenge its DEVICE AUTHENTICATE went out with.
    pub(crate) challenge: Option<Vec<u8>>,
    /// The sequences of the first and last packages out.
    pub(crate) batch: Option<(i64, i64)>,
}

impl Awaits {
    /// What the exchange after one that left a session in `state` answers.
    pub(crate) fn of(state: &TunnelState) -> Self {
        let nonce = |challenge: &str| {
            hex::decode(challenge)
                .ok()
                .and_then(|b| Challenge::parse(&b).ok())
                .map(|c| c.nonce.to_vec())
        };
        let sequence = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
        match state {
            TunnelState::Identify { device_auth: Some(challenge), .. } => {
                Awaits { challenge: nonce(challenge), batch: None }
            }
            TunnelState::Update(sync) if sync.authenticated.is_none() && !sync.legacy => {
                Awaits { challenge: nonce(&sync.challenge), batch: None }
            }
            TunnelState::Update(sync) if sync.authenticated.is_some() => Awaits {
                challenge: None,
                batch: sync
                    .batch
                    .first()
                    .zip(sync.batch.last())
                    .map(|((first, _), (last, _))| (sequence(*first), sequence(*last))),
            },
            _ => Awaits::default(),
        }
    }

    /// Read back from a session row's three columns, from `i` on.
    pub(crate) fn from_row(row: &Row, i: usize) -> ServerResult<Self> {
        let batch = row.opt_int(i + 1)?.zip(row.opt_int(i + 2)?);
        Ok(Awaits { challenge: row.opt_blob(i)?, batch })
    }

    /// The three columns' values.
    pub(crate) fn values(self) -> [Value; 3] {
        let (first, last) = self.batch.unzip();
        [self.challenge.into(), first.into(), last.into()]
    }
}

/// An update sync's reads that go out with the session's own, in an exchange's first round
/// trip. Keyed by the session, they find something only when its row awaits what they are
/// for ([`Awaits`]), and the sync uses what they found only then; otherwise it reads for
/// itself. Which go out is a guess from the request's shape ([`SyncReadPlan::new`]): a wrong
/// guess costs a round trip or a few empty reads, never a wrong answer.
#[derive(Default)]
pub(crate) struct SyncReads {
    /// The challenge the session sent, used up: the nonces removed.
    taken: Option<Vec<Row>>,
    /// The session's card, what device authentication reads of it ([`AUTH_READ`]) and the
    /// first batch's packages.
    auth: Option<(String, AuthReads)>,
    /// The session's card, the packages of the batch out still pending (with the device
    /// certificate and the sequence, [`batch_out_sql`]) and the next batch's.
    batch: Option<(String, Vec<Row>, Vec<Row>)>,
}

/// Which [`SyncReads`] an exchange sends, and their statements.
pub(crate) struct SyncReadPlan {
    device_auth: bool,
    receipts: bool,
    queries: Vec<(String, Vec<Value>)>,
}

impl SyncReadPlan {
    /// The reads for an exchange of `session_id` at `step` with `responses` card responses:
    /// device authentication's with the combined first step's five, or with two (the answers
    /// to `SELECT` update and DEVICE AUTHENTICATE); a batch's receipts after the first step.
    pub(crate) fn new(tx: &Tx, session_id: &str, step: i64, responses: usize, now: i64) -> Self {
        let device_auth = responses == 2 || (step == 0 && responses == 5);
        let receipts = step > 0;
        let session = || Value::from(session_id);
        let most = || Value::Int(MAX_BATCH as i64);
        let mut queries = Vec::new();
        if device_auth {
            queries.push((TAKE_SESSION_CHALLENGE.to_owned(), vec![session()]));
            queries.push((AUTH_READ_SESSION.clone(), vec![now.into(), session()]));
            queries.push((FIRST_BATCH_SESSION.to_owned(), vec![session(), most()]));
        }
        if receipts {
            queries.push((batch_out_sql(tx), vec![session()]));
            queries.push((NEXT_BATCH_SESSION.to_owned(), vec![session(), most()]));
        }
        SyncReadPlan { device_auth, receipts, queries }
    }

    /// The statements, in order.
    pub(crate) fn queries(&self) -> impl Iterator<Item = (&str, &[Value])> {
        self.queries.iter().map(|(sql, params)| (sql.as_str(), params.as_slice()))
    }

    /// What the statements found (`answers`, in order), for a session of `card` (if known)
    /// that awaits `awaits`.
    pub(crate) fn read(
        &self,
        answers: &mut impl Iterator<Item = Vec<Row>>,
        card: Option<&str>,
        awaits: &Awaits,
    ) -> ServerResult<SyncReads> {
        let mut reads = SyncReads::default();
        if self.device_auth {
            let (taken, auth, pending) = (answers.next(), answers.next(), answers.next());
            if awaits.challenge.is_some() {
                reads.taken = taken;
                if let (Some(card), Some(auth), Some(pending)) = (card, auth, pending) {
                    let auth = AuthReads { auth: at_most_one(auth)?, pending };
                    reads.auth = Some((card.to_owned(), auth));
                }
            }
        }
        if self.receipts {
            let (out, next) = (answers.next(), answers.next());
            if let (Some(card), Some(out), Some(next), true) =
                (card, out, next, awaits.batch.is_some())
            {
                reads.batch = Some((card.to_owned(), out, next));
            }
        }
        Ok(reads)
    }
}

/// Device authentication's checks, in order, on what [`AUTH_READ`] found for `card_id`
/// (`row`): the card registered for updates and not revoked, its device certificate chaining
/// to the issuer CA and naming it, the signature over `challenge`, the reported sequence not
/// below the highest delivered one.
fn check_auth(
    row: Option<Row>,
    card_id: &str,
    challenge: &Challenge,
    response: &DeviceAuthResponse,
    now: i64,
) -> Checked<(AuthenticatedCard, AuthFound)> {
    let row = row.ok_or_else(|| check_err(UpdateError::UnknownCard(card_id.into())))?;
    match row.opt_text(0).map_err(server_err)? {
        None => return Err(check_err(UpdateError::UnknownCard(card_id.into()))),
        Some(status) if status == super::cards::STATUS_REVOKED => {
            return Err((ServerError::Forbidden(format!("card {card_id} is revoked")), "revoked"));
        }
        Some(_) => {}
    }
    let ca = Certificate::from_stored_der(row.blob(1).map_err(server_err)?);
    let device = Certificate::from_stored_der(row.blob(2).map_err(server_err)?);
    let key = device_key(&ca, card_id.as_bytes(), &device, now).map_err(check_err)?;
    verify_device_auth(&key, card_id.as_bytes(), challenge, response).map_err(check_err)?;
    let delivered = row.opt_int(3).map_err(server_err)?.unwrap_or(0);
    let acknowledged = u64::try_from(delivered).unwrap_or(0);
    if response.last_sequence < acknowledged {
        return Err(check_err(UpdateError::RolledBack {
            reported: response.last_sequence,
            acknowledged,
        }));
    }
    let card = AuthenticatedCard {
        card_id: card_id.as_bytes().to_vec(),
        last_sequence: response.last_sequence,
        private: false,
    };
    let found = AuthFound {
        pending_below: row
            .opt_int(4)
            .map_err(server_err)?
            .is_some_and(|lowest| u64::try_from(lowest).is_ok_and(|l| l < response.last_sequence)),
        due: row.int(5).map_err(server_err)? > 0,
    };
    Ok((card, found))
}

/// What a sync's device authentication read in one round trip ([`Store::update_auth_reads`]).
struct AuthReads {
    /// [`AUTH_READ`]'s row.
    auth: Option<Row>,
    /// The first batch's packages ([`PENDING_PACKAGES`]).
    pending: Vec<Row>,
}

/// A card authenticated in a sync's update step.
struct SyncAuth {
    /// The card (opened from the sealed identity in the privacy variant).
    card_id: String,
    /// The sequence the card reported.
    last_sequence: u64,
    /// Packages below it the card acknowledged by reporting it (marked delivered now).
    acknowledged: u64,
    /// The first batch's packages ([`PENDING_PACKAGES`]), unless they changed since they were
    /// read.
    pending: Option<Vec<Row>>,
}

/// Where a sync's update step is, kept in the tunnel session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateSync {
    /// The card (empty in the privacy variant until the server opens the card's sealed id).
    pub card_id: String,
    /// The challenge sent with DEVICE AUTHENTICATE ([`Challenge::to_bytes`]), hex.
    pub challenge: String,
    /// Once the card authenticated: the sequence it reported.
    pub authenticated: Option<u64>,
    /// The packages out in this exchange, in order: `(sequence, number of APDUs)`.
    #[serde(default)]
    pub batch: Vec<(u64, usize)>,
    /// Packages delivered in this sync so far.
    pub delivered: u64,
    /// The outcome of the sync's earlier steps, reported at the end with this step's.
    pub before: Outcome,
    /// The privacy variant: the session's HPKE identity key (fresh per session), sealed
    /// under the master key, hex. The card seals its id to its public half.
    #[serde(default)]
    pub identity_key: Option<String>,
    /// The update-only session's id (the privacy variant's identity key is sealed to it).
    #[serde(default)]
    pub session_id: Option<String>,
    /// Authenticated by the legacy static authenticator (claim 10): replayable.
    #[serde(default)]
    pub legacy: bool,
}

impl UpdateSync {
    /// A step about to send DEVICE AUTHENTICATE over `challenge` (hex): nothing authenticated
    /// or delivered yet, plain device authentication.
    fn new(card_id: String, challenge: String, before: Outcome) -> Self {
        UpdateSync {
            card_id,
            challenge,
            authenticated: None,
            batch: Vec::new(),
            delivered: 0,
            before,
            identity_key: None,
            session_id: None,
            legacy: false,
        }
    }

    fn private(&self) -> bool {
        self.identity_key.is_some()
    }
}

/// What a tunnel step answers: the next state, its APDUs, the outcome when finished.
pub(crate) type Step = (TunnelState, Vec<Vec<u8>>, Option<Outcome>);

fn apdu(cmd: &tessera_apdu::Command) -> ServerResult<Vec<u8>> {
    cmd.to_bytes().map_err(|e| ServerError::Internal(format!("update step: {e}")))
}

fn package_apdus(package: &[u8]) -> ServerResult<Vec<Vec<u8>>> {
    tessera_proto::update::load_commands(package).iter().map(|c| apdu(&c.to_command())).collect()
}

/// Most package bytes sent in one exchange (the packages of a batch go out together; the
/// card stops at the first it refuses).
pub const BATCH_BYTES: usize = 256 * 1024;

/// The result of an update step that stopped on a refusal (the card's or the server's).
pub const UPDATE_ERROR: &str = "update-error";

/// The stable name of an update refusal, shown by the terminal in the outcome as
/// `refused (NAME)`: one per failing check of the chain (docs/update.md, "Errors").
pub fn refusal_code(e: &UpdateError) -> &'static str {
    match e {
        UpdateError::UnknownCard(_) => "unknown-card",
        UpdateError::UnknownIssuer(_) => "unknown-issuer",
        UpdateError::DeviceCertificate(_) => "device-certificate",
        UpdateError::UpdateKeyProof => "update-key-proof",
        UpdateError::Challenge => "challenge",
        UpdateError::DeviceSignature => "device-signature",
        UpdateError::SealedIdentity => "sealed-identity",
        UpdateError::RolledBack { .. } => "rolled-back",
        UpdateError::ReceiptMismatch => "receipt-mismatch",
        UpdateError::ReceiptSignature => "receipt-signature",
        UpdateError::BadUpdate(_) => "bad-update",
        UpdateError::Crypto(_) => "crypto",
    }
}

/// The stable name and meaning of the card's refusal of a LOAD PACKAGE (docs/update.md).
pub fn card_refusal(sw: u16) -> (&'static str, &'static str) {
    match sw {
        0x6300 => ("package-signature", "the package signature does not verify"),
        0x6A88 => ("wrong-card", "the package is for another card"),
        0x6A89 => ("stale-sequence", "replayed or out of order"),
        0x6984 => ("undecryptable", "the card cannot decrypt it"),
        0x6982 => ("pin-required", "the PIN is not verified"),
        0x6985 => ("not-authenticated", "no device authentication in this selection"),
        0x6A86 => ("segment-order", "segments out of order"),
        0x6A84 => ("too-large", "too large, or no room for another object"),
        _ => ("package-refused", "refused by the card"),
    }
}

fn finish(sync: &UpdateSync, result: Option<&str>, note: String) -> Step {
    // The privacy variant never names the card to the terminal.
    let (card_id, note) = if sync.private() {
        let note = if sync.card_id.is_empty() {
            note
        } else {
            note.replace(&sync.card_id, "(sealed card)")
        };
        (None, note)
    } else {
        (Some(sync.card_id.clone()), note)
    };
    let outcome = Outcome {
        result: result.unwrap_or(&sync.before.result).to_owned(),
        card_id,
        message: format!("{}; updates: {note}", sync.before.message),
    };
    (TunnelState::Finished, Vec::new(), Some(outcome))
}

/// A refusal by the server's checks, as the step's end.
fn refused(sync: &UpdateSync, e: &ServerError, code: &str) -> Step {
    let delivered = if sync.delivered > 0 {
        format!("{} delivered, then ", sync.delivered)
    } else {
        String::new()
    };
    finish(sync, Some(UPDATE_ERROR), format!("{delivered}refused ({code}): {e}"))
}

/// `POST /v1/issuers/{issuer}/update/sessions` body: an update-only tunnel session.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUpdateSession {
    /// `private`: the privacy variant (claim 9). The session names no card: the card seals its
    /// id to a key fresh for this session and only the server opens it; the packages are
    /// wrapped for delivery. `legacy-static`: the static authenticator of claim 10, for a card
    /// registered with one (`card_id` needed). **Replayable**: audited and warned every time.
    pub mode: String,
    /// The card (`legacy-static` only).
    #[serde(default)]
    pub card_id: Option<String>,
}

impl Store {
    /// Opens an update-only tunnel session.
    ///
    /// - `private` (claim 9): no identification step, no card named anywhere the terminal
    ///   sees; the first APDUs are SELECT update and DEVICE AUTHENTICATE `P1 01` with a fresh
    ///   challenge and the session's fresh HPKE identity key. The card's sealed answer is
    ///   opened by the next exchange.
    /// - `legacy-static` (claim 10): for a card whose static authenticator was registered
    ///   ([`Store::update_set_legacy_static`]); SELECT update and DEVICE AUTHENTICATE `P1 02`.
    ///   Accepting it is audited `update.legacy_static` with the session: whoever saw the value
    ///   once can present it again.
    pub async fn create_update_session(
        &self,
        issuer: &str,
        req: &CreateUpdateSession,
    ) -> ServerResult<super::sessions::TunnelStep> {
        let legacy = match (req.mode.as_str(), &req.card_id) {
            ("private", None) => false,
            ("legacy-static", Some(_)) => true,
            _ => {
                return Err(ServerError::BadRequest(format!(
                    "update session: mode \"private\" (no card_id) or \"legacy-static\" (with card_id), not {:?}",
                    req.mode
                )));
            }
        };
        let id = hex::encode(crate::primitives::random_bytes::<16>());
        let now = crate::clock::now();
        let expires_at = now + self.config.session_ttl_secs;
        let mut tx = self.begin().await?;
        tx.query_opt("SELECT id FROM issuers WHERE id = $1", &[issuer.into()])
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("no issuer {issuer}")))?;
        let (sync, apdus, live) = if let (true, Some(card_id)) = (legacy, &req.card_id) {
            if !crate::tunnel::valid_card_id(card_id) {
                return Err(ServerError::BadRequest("card id".into()));
            }
            self.update_card_usable(&mut tx, issuer, card_id).await.map_err(|(e, _)| e)?;
            let registered = tx
                .query_opt(
                    "SELECT legacy_static FROM update_cards WHERE issuer_id = $1 AND card_id = $2",
                    &[issuer.into(), card_id.as_str().into()],
                )
                .await?
                .map(|r| r.opt_blob(0))
                .transpose()?
                .flatten();
            if registered.is_none() {
                return Err(ServerError::Conflict(format!(
                    "card {card_id} has no legacy static authenticator registered (claim 10 is opt-in per card)"
                )));
            }
            let live = self.claim_card(&mut tx, issuer, card_id, &id).await?;
            let before = Outcome {
                result: "legacy-static".into(),
                card_id: Some(card_id.clone()),
                message: "LEGACY static authenticator (replayable, claim 10)".into(),
            };
            let sync = UpdateSync {
                session_id: Some(id.clone()),
                legacy: true,
                ..UpdateSync::new(card_id.clone(), String::new(), before)
            };
            let auth = tessera_proto::update::UpdateCommand::DeviceAuthenticate {
                mode: tessera_proto::update::AuthMode::LegacyStatic,
                challenge: None,
            };
            (sync, [apdu(&select_update())?, apdu(&auth.to_command())?], Some(live))
        } else {
            let key = tessera_crypto::hpke::HpkePrivateKey::generate(&mut OsRng);
            let sealed = self
                .master
                .seal(&key.to_bytes(), &identity_key_context(&id))
                .map_err(|e| ServerError::Internal(e.to_string()))?;
            let challenge = self.update_new_challenge(&mut tx, now).await?;
            let before = Outcome {
                result: "private".into(),
                card_id: None,
                message: "private session (the card id sealed to the server)".into(),
            };
            let sync = UpdateSync {
                identity_key: Some(hex::encode(sealed)),
                session_id: Some(id.clone()),
                ..UpdateSync::new(String::new(), hex::encode(challenge.to_bytes()), before)
            };
            let mode = tessera_proto::update::AuthMode::Private {
                server_key: key.public_key().to_bytes(),
            };
            let auth = tessera_proto::update::UpdateCommand::DeviceAuthenticate {
                mode,
                challenge: Some(challenge),
            };
            (sync, [apdu(&select_update())?, apdu(&auth.to_command())?], None)
        };
        let state = TunnelState::Update(sync);
        super::sessions::insert_session(
            &mut tx,
            super::sessions::NewSession {
                id: &id,
                issuer,
                card_id: req.card_id.as_deref(),
                live,
                state: &state,
                now,
                expires_at,
            },
        )
        .await?;
        self.audit(
            &mut tx,
            &Principal::system(),
            Some(issuer),
            "session.create",
            &id,
            serde_json::json!({ "mode": format!("update-{}", req.mode), "card_id": req.card_id }),
        )
        .await?;
        self.commit(tx).await?;
        Ok(super::sessions::TunnelStep {
            session_id: id,
            step: 0,
            apdus: apdus.iter().map(hex::encode_upper).collect(),
            done: false,
            outcome: None,
            expires_at,
        })
    }

    /// Registers (or, with `None`, removes) the static authenticator personalised into a
    /// legacy card (claim 10; issuer admin; audited `update.legacy_static.set` without the
    /// value). Only such a card can be authenticated by a `legacy-static` session.
    pub async fn update_set_legacy_static(
        &self,
        principal: &Principal,
        issuer: &str,
        card_id: &str,
        value: Option<[u8; tessera_proto::update::STATIC_AUTH_LEN]>,
    ) -> ServerResult<()> {
        principal.require_issuer(issuer)?;
        let mut tx = self.begin().await?;
        self.update_set_legacy_static_in(&mut tx, principal, issuer, card_id, value).await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// [`Store::update_set_legacy_static`] inside `tx` (the issuance's last step registers the
    /// value it personalised in its own transaction).
    pub(crate) async fn update_set_legacy_static_in(
        &self,
        tx: &mut Tx,
        principal: &Principal,
        issuer: &str,
        card_id: &str,
        value: Option<[u8; tessera_proto::update::STATIC_AUTH_LEN]>,
    ) -> ServerResult<()> {
        let n = tx
            .execute(
                "UPDATE update_cards SET legacy_static = $1 WHERE issuer_id = $2 AND card_id = $3",
                &[value.map(|v| v.to_vec()).into(), issuer.into(), card_id.into()],
            )
            .await?;
        if n != 1 {
            return Err(ServerError::NotFound(format!(
                "card {card_id} of issuer {issuer} is not registered for updates"
            )));
        }
        self.audit(
            tx,
            principal,
            Some(issuer),
            "update.legacy_static.set",
            card_id,
            serde_json::json!({ "enabled": value.is_some() }),
        )
        .await?;
        Ok(())
    }

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
        if !self.update_has_work(tx, issuer, card_id, now).await? {
            return Ok(None);
        }
        let challenge = self.update_new_challenge(tx, now).await?;
        let sync = UpdateSync::new(card_id.to_owned(), hex::encode(challenge.to_bytes()), before);
        Ok(Some((TunnelState::Update(sync), device_auth_apdus(challenge)?, None)))
    }

    /// Whether `card_id` has packages pending or a schedule due (the update step runs).
    async fn update_has_work(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        now: i64,
    ) -> ServerResult<bool> {
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
        Ok(pending.is_some() || self.update_any_due(tx, issuer, card_id, now).await?)
    }

    /// The combined first step of a sync that names the card, when its session opens: if the
    /// card has update work and no keyring (whose step would come first), a fresh single-use
    /// challenge recorded in `tx` and the APDUs `SELECT` update, DEVICE AUTHENTICATE over it;
    /// else `None` (the steps run one after the other). `card` was found usable, its row
    /// locked, in `tx`.
    pub(crate) async fn update_first_step(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card: &super::sessions::UsableCard,
        now: i64,
    ) -> ServerResult<Option<(Challenge, Vec<Vec<u8>>)>> {
        // Pending packages and a keyring record: read with the card's row.
        if card.keyring {
            return Ok(None);
        }
        let card_id = card.card_id.as_str();
        if !card.updates_pending && !self.update_any_due(tx, issuer, card_id, now).await? {
            return Ok(None);
        }
        let challenge = self.update_new_challenge(tx, now).await?;
        Ok(Some((challenge, device_auth_apdus(challenge)?)))
    }

    /// Uses up the challenge of a combined first step whose device authentication is not
    /// looked at (the counters flagged the card, or keyring work came first).
    pub(crate) async fn update_discard_challenge(
        &self,
        tx: &mut Tx,
        challenge_hex: &str,
    ) -> ServerResult<()> {
        let challenge = hex::decode(challenge_hex)
            .ok()
            .and_then(|b| Challenge::parse(&b).ok())
            .ok_or_else(|| ServerError::Internal("stored challenge".into()))?;
        tx.execute_deferred(
            "DELETE FROM update_challenges WHERE nonce = $1",
            &[challenge.nonce.to_vec().into()],
        )
        .await?;
        Ok(())
    }

    /// The update step's first exchange inside the combined first step: the card (identified,
    /// usable and its counters checked in this transaction, ending with `before`) answered
    /// `SELECT` update and DEVICE AUTHENTICATE over `challenge_hex`. The same checks as
    /// [`Store::update_sync_step`] on its first exchange: the challenge single-use and
    /// unexpired, the device certificate chain, the signature, the rollback check; then the
    /// first batch of packages, or the end.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn update_sync_first(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        before: Outcome,
        challenge_hex: &str,
        responses: &[Vec<u8>],
        now: i64,
        read: SyncReads,
    ) -> ServerResult<Step> {
        let sync = UpdateSync::new(card_id.to_owned(), challenge_hex.to_owned(), before);
        self.update_sync_step(tx, issuer, &sync, responses, now, read).await
    }

    /// One exchange of a sync's update step: first the card's answer to DEVICE AUTHENTICATE,
    /// then, per exchange, a batch of packages (their LOAD PACKAGE segments one after the
    /// other; the card stops at the first refusal) and their receipts. Refusals end the sync
    /// with result [`UPDATE_ERROR`] and a `refused (CODE)` message (the transaction commits:
    /// a challenge is used up whatever the outcome, the packages receipted before the refusal
    /// stay delivered); an undelivered package stays pending for the next sync.
    ///
    /// `read`: what went out with the session's read for this exchange.
    pub(crate) async fn update_sync_step(
        &self,
        tx: &mut Tx,
        issuer: &str,
        sync: &UpdateSync,
        responses: &[Vec<u8>],
        now: i64,
        read: SyncReads,
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
        let mut next = sync.clone();
        // The next batch's packages, when read with what came before (`None`: read them below).
        let pending;
        if sync.authenticated.is_none() {
            let [_, answer] = parsed.as_slice() else {
                return Err(ServerError::BadRequest(format!(
                    "expected 2 responses to the update step, got {}",
                    parsed.len()
                )));
            };
            match self.update_sync_auth(tx, issuer, sync, answer, now, read).await? {
                Ok(auth) => {
                    next.card_id = auth.card_id;
                    next.authenticated = Some(auth.last_sequence);
                    next.delivered += auth.acknowledged;
                    pending = auth.pending;
                }
                Err(step) => return Ok(step),
            }
        } else {
            let expected: usize = sync.batch.iter().map(|(_, n)| n).sum();
            if parsed.len() != expected {
                return Err(ServerError::BadRequest(format!(
                    "expected {expected} responses to the update step, got {}",
                    parsed.len()
                )));
            }
            let card = AuthenticatedCard {
                card_id: sync.card_id.as_bytes().to_vec(),
                last_sequence: sync.authenticated.unwrap_or(0),
                private: sync.private(),
            };
            // The batch's answers, package by package, up to the first the card refused.
            let mut rest = parsed.as_slice();
            let mut receipts = Vec::with_capacity(sync.batch.len());
            let mut card_refused = None;
            for &(sequence, n) in &sync.batch {
                let (answers, tail) = rest.split_at(n.min(rest.len()));
                rest = tail;
                if let Some(r) = answers.iter().find(|r| r.sw != tessera_apdu::StatusWord::SUCCESS)
                {
                    card_refused = Some((sequence, r.sw.0));
                    break;
                }
                let receipt = answers.last().map(|r| r.data.as_slice()).unwrap_or_default();
                receipts.push((sequence, receipt));
            }
            // Their packages, and the next batch's should every package be applied, in one
            // round trip.
            let sequences: Vec<u64> = receipts.iter().map(|(s, _)| *s).collect();
            let last = if card_refused.is_none() { sequences.last().copied() } else { None };
            let (rows, after) = match read.batch.filter(|(card, ..)| *card == sync.card_id) {
                Some((_, out, next)) => (by_sequence(out, &sequences)?, Some(next)),
                None => {
                    self.update_receipt_reads(tx, issuer, &sync.card_id, &sequences, last).await?
                }
            };
            for ((sequence, receipt), row) in receipts.into_iter().zip(rows) {
                match self
                    .update_accept_receipt_row(tx, issuer, &card, sequence, receipt, row, now)
                    .await
                {
                    Ok(()) => next.delivered += 1,
                    Err((e, code)) if refusal(&e) => return Ok(refused(&next, &e, code)),
                    Err((e, _)) => return Err(e),
                }
            }
            if let Some((sequence, sw)) = card_refused {
                let (code, meaning) = card_refusal(sw);
                let delivered = if next.delivered > 0 {
                    format!("{} delivered, then ", next.delivered)
                } else {
                    String::new()
                };
                return Ok(finish(
                    &next,
                    Some(UPDATE_ERROR),
                    format!("{delivered}refused ({code}): update {sequence}: {meaning} ({sw:04X})"),
                ));
            }
            pending = after;
        }
        // The next batch of pending packages, if any.
        let rows = match pending {
            Some(rows) => rows,
            None => tx.query(PENDING_PACKAGES, &first_batch_params(issuer, &next.card_id)).await?,
        };
        let mut apdus = Vec::new();
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let update_key = if next.private() {
            Some(self.update_card_key(tx, issuer, &next.card_id).await?)
        } else {
            None
        };
        for row in &rows {
            let sequence = u64::try_from(row.int(0)?)
                .map_err(|_| ServerError::Internal("stored sequence".into()))?;
            let mut package = row.blob(1)?;
            if let Some(key) = &update_key {
                package = crate::update::wrap_for_delivery(key, &package).map_err(update_err)?;
            }
            let segments = package_apdus(&package)?;
            let fits = bytes + package.len() <= BATCH_BYTES
                && apdus.len() + segments.len() <= super::sessions::MAX_RESPONSES;
            if !batch.is_empty() && !fits {
                break;
            }
            bytes += package.len();
            batch.push((sequence, segments.len()));
            apdus.extend(segments);
        }
        if batch.is_empty() {
            return Ok(finish(&next, None, format!("{} delivered", next.delivered)));
        }
        next.batch = batch;
        Ok((TunnelState::Update(next), apdus, None))
    }

    /// The answer to DEVICE AUTHENTICATE in a sync: the card, authenticated ([`SyncAuth`]), or
    /// the step that ends the sync. The challenge is used up whatever the answer.
    ///
    /// The challenge's `DELETE`, what authentication reads of the card and the first batch's
    /// packages usually went out with the session's read (`read`). Otherwise: the plain
    /// variant names its card up front, so they go out together, in one round trip; the
    /// privacy variant's card is known once its sealed id is opened, and its reads follow.
    async fn update_sync_auth(
        &self,
        tx: &mut Tx,
        issuer: &str,
        sync: &UpdateSync,
        answer: &tessera_apdu::Response,
        now: i64,
        read: SyncReads,
    ) -> ServerResult<Result<SyncAuth, Step>> {
        if sync.legacy {
            return self.update_sync_legacy(tx, issuer, sync, answer, now).await;
        }
        let challenge = hex::decode(&sync.challenge)
            .ok()
            .and_then(|b| Challenge::parse(&b).ok())
            .ok_or_else(|| ServerError::Internal("stored challenge".into()))?;
        let success = answer.sw == tessera_apdu::StatusWord::SUCCESS;
        let private = match (&sync.identity_key, &sync.session_id) {
            (Some(key), Some(session_id)) => Some((key, session_id)),
            _ => None,
        };
        let nonce = [Value::from(challenge.nonce.to_vec())];
        let plain = match private {
            None if success => DeviceAuthResponse::parse(&answer.data).ok(),
            _ => None,
        };
        // Used up with the session's read, or now.
        let taken = read.taken.map(|rows| {
            rows.iter().filter(|r| r.blob(0).is_ok_and(|n| n[..] == challenge.nonce[..])).count()
        });
        let read_auth = read.auth.filter(|(card, _)| *card == sync.card_id).map(|(_, a)| a);
        let (taken, reads) = match (&plain, taken) {
            (Some(_), Some(taken)) => match read_auth {
                Some(reads) => (taken, Some(reads)),
                None => (
                    taken,
                    Some(self.update_auth_reads(tx, issuer, &sync.card_id, now, None).await?.1),
                ),
            },
            (Some(_), None) => {
                let (taken, reads) =
                    self.update_auth_reads(tx, issuer, &sync.card_id, now, Some(&nonce)).await?;
                (taken, Some(reads))
            }
            (None, Some(taken)) => (taken, None),
            (None, None) => (tx.query(TAKE_CHALLENGE, &nonce).await?.len(), None),
        };
        if answer.sw == tessera_apdu::StatusWord(0x6982) {
            let step = finish(
                sync,
                if sync.private() { Some(UPDATE_ERROR) } else { None },
                "pending; the card wants its PIN first (--pin-file, --pin-stdin or TESSERA_PIN)"
                    .into(),
            );
            return Ok(Err(step));
        }
        if !success {
            return Ok(Err(finish(
                sync,
                Some(UPDATE_ERROR),
                format!(
                    "refused (device-authentication-refused): DEVICE AUTHENTICATE: the card answered {:04X}",
                    answer.sw.0
                ),
            )));
        }
        let fail = check_err;
        // The privacy variant: open the card's sealed id with the session's key.
        let (card_id, auth) = match private {
            Some((sealed_key, session_id)) => {
                let key = hex::decode(sealed_key)
                    .ok()
                    .and_then(|b| self.master.open(&b, &identity_key_context(session_id)).ok())
                    .and_then(|k| tessera_crypto::hpke::HpkePrivateKey::from_bytes(&k).ok())
                    .ok_or_else(|| ServerError::Internal("session identity key".into()))?;
                let opened = tessera_crypto::hpke::open(
                    &key,
                    tessera_proto::update::IDENTITY_INFO,
                    &challenge.to_bytes(),
                    &answer.data,
                )
                .ok()
                .and_then(|p| tessera_proto::update::SealedIdentity::parse(&p).ok())
                .and_then(|i| Some((String::from_utf8(i.card_id).ok()?, i.auth)));
                match opened {
                    Some((card_id, auth)) => (card_id, Some(auth)),
                    None => {
                        let (e, code) = fail(UpdateError::SealedIdentity);
                        return Ok(Err(refused(sync, &e, code)));
                    }
                }
            }
            None => (sync.card_id.clone(), plain),
        };
        let mut named = sync.clone();
        named.card_id = card_id.clone();
        let checks = match auth {
            _ if taken != 1 || u64::try_from(now).unwrap_or(u64::MAX) > challenge.expires => {
                Err(UpdateError::Challenge)
            }
            None => Err(UpdateError::DeviceSignature),
            Some(auth) => Ok(auth),
        };
        let auth = match checks {
            Ok(auth) => auth,
            Err(e) => {
                let (e, code) = fail(e);
                return Ok(Err(refused(&named, &e, code)));
            }
        };
        let reads = match reads {
            Some(reads) => reads,
            None => self.update_auth_reads(tx, issuer, &card_id, now, None).await?.1,
        };
        let (card, found) = match check_auth(reads.auth, &card_id, &challenge, &auth, now) {
            Ok(checked) => checked,
            Err((e, code)) if refusal(&e) => return Ok(Err(refused(&named, &e, code))),
            Err((e, _)) => return Err(e),
        };
        if let (Some(session_id), true) = (&sync.session_id, sync.private()) {
            // The session row stays anonymous; the server's own record names the card.
            self.audit(
                tx,
                &Principal::system(),
                Some(issuer),
                "update.authenticate",
                &card_id,
                serde_json::json!({ "session": session_id, "mode": "private" }),
            )
            .await?;
        }
        let acknowledged = match found.pending_below {
            true => {
                self.update_acknowledge_below(tx, issuer, &card_id, card.last_sequence, now).await?
            }
            false => 0,
        };
        // Scheduled changes due now are generated for the authenticated card.
        if found.due {
            self.update_run_due_tx(tx, issuer, &card_id, now).await?;
        }
        // What was read before is out of date once either changed the card's packages.
        let pending = (acknowledged == 0 && !found.due).then_some(reads.pending);
        Ok(Ok(SyncAuth { card_id, last_sequence: card.last_sequence, acknowledged, pending }))
    }

    /// What device authentication reads of `card_id` ([`AUTH_READ`]) and the first batch's
    /// packages ([`PENDING_PACKAGES`]), in one round trip; with `take_challenge` (its nonce),
    /// the challenge used up first ([`TAKE_CHALLENGE`]), and how many rows that removed.
    async fn update_auth_reads(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        now: i64,
        take_challenge: Option<&[Value; 1]>,
    ) -> ServerResult<(usize, AuthReads)> {
        let auth = auth_read_params(issuer, card_id, now);
        let pending = first_batch_params(issuer, card_id);
        let mut queries = Vec::with_capacity(3);
        if let Some(nonce) = take_challenge {
            queries.push((TAKE_CHALLENGE, nonce.as_slice()));
        }
        queries.push((AUTH_READ.as_str(), auth.as_slice()));
        queries.push((PENDING_PACKAGES, pending.as_slice()));
        let mut answers = tx.query_all(&queries).await?;
        let pending = answers.pop().unwrap_or_default();
        let auth = at_most_one(answers.pop().unwrap_or_default())?;
        let taken = answers.pop().map_or(0, |rows| rows.len());
        Ok((taken, AuthReads { auth, pending }))
    }

    /// Marks delivered the pending packages below the sequence `reported` that the card
    /// signed in its device authentication: the server sends a card's packages in sequence
    /// order and the card stops a batch at its first refusal, so the card can only be at
    /// `reported` by having applied every package before it; their receipts were lost with a
    /// batch's answer. (The package at `reported` itself is sent again and answered "already
    /// applied" with a receipt.) Audited `update.deliver`, outcome `acknowledged by device
    /// authentication`. Returns how many.
    async fn update_acknowledge_below(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        reported: u64,
        now: i64,
    ) -> ServerResult<u64> {
        let reported = i64::try_from(reported).unwrap_or(i64::MAX);
        let rows = tx
            .query(
                "SELECT sequence FROM update_packages WHERE issuer_id = $1 AND card_id = $2 \
                 AND sequence < $3 AND delivered_at IS NULL ORDER BY sequence",
                &[issuer.into(), card_id.into(), reported.into()],
            )
            .await?;
        for row in &rows {
            let sequence = row.int(0)?;
            tx.execute(
                "UPDATE update_packages SET delivered_at = $1 WHERE issuer_id = $2 AND card_id = $3 \
                 AND sequence = $4",
                &[now.into(), issuer.into(), card_id.into(), sequence.into()],
            )
            .await?;
            self.audit(
                tx,
                &Principal::system(),
                Some(issuer),
                "update.deliver",
                card_id,
                serde_json::json!({
                    "sequence": sequence,
                    "outcome": "acknowledged by device authentication",
                    "reported": reported,
                }),
            )
            .await?;
        }
        Ok(rows.len() as u64)
    }

    /// The legacy static authenticator's answer (claim 10): it must equal the registered
    /// value and the card's device certificate must still chain to the issuer CA. There is no
    /// challenge and no signed sequence, so no rollback check and no acknowledgement below a
    /// reported sequence. Accepting it is audited `update.legacy_static` and logged as a
    /// warning, every time.
    async fn update_sync_legacy(
        &self,
        tx: &mut Tx,
        issuer: &str,
        sync: &UpdateSync,
        answer: &tessera_apdu::Response,
        now: i64,
    ) -> ServerResult<Result<SyncAuth, Step>> {
        let card_id = sync.card_id.as_str();
        if answer.sw != tessera_apdu::StatusWord::SUCCESS {
            return Ok(Err(finish(
                sync,
                Some(UPDATE_ERROR),
                format!(
                    "refused (device-authentication-refused): DEVICE AUTHENTICATE (legacy static): the card answered {:04X}",
                    answer.sw.0
                ),
            )));
        }
        let stored = tx
            .query_opt(
                "SELECT legacy_static FROM update_cards WHERE issuer_id = $1 AND card_id = $2",
                &[issuer.into(), card_id.into()],
            )
            .await?
            .map(|r| r.opt_blob(0))
            .transpose()?
            .flatten();
        let matches = stored.is_some_and(|v| {
            v.len() == answer.data.len()
                && bool::from(subtle::ConstantTimeEq::ct_eq(&v[..], &answer.data[..]))
        });
        if !matches {
            let e = ServerError::Conflict("the static authenticator does not match".into());
            return Ok(Err(refused(sync, &e, "legacy-static")));
        }
        let (ca, device) = self.update_card_certs(tx, issuer, card_id).await?;
        if let Err(e) = device_key(&ca, card_id.as_bytes(), &device, now) {
            let (e, code) = check_err(e);
            return Ok(Err(refused(sync, &e, code)));
        }
        tracing::warn!(
            card = card_id,
            "legacy static authenticator accepted: it is replayable by whoever saw it once (claim 10)"
        );
        self.audit(
            tx,
            &Principal::system(),
            Some(issuer),
            "update.legacy_static",
            card_id,
            serde_json::json!({
                "session": sync.session_id,
                "replayable": true,
            }),
        )
        .await?;
        self.update_run_due_tx(tx, issuer, card_id, now).await?;
        Ok(Ok(SyncAuth {
            card_id: card_id.to_owned(),
            last_sequence: 0,
            acknowledged: 0,
            pending: None,
        }))
    }

    /// A card registered for updates of `issuer` and not revoked (the privacy variant has no
    /// identification step that checks this).
    async fn update_card_usable(&self, tx: &mut Tx, issuer: &str, card_id: &str) -> Checked<()> {
        let row = tx
            .query_opt(
                "SELECT status FROM cards WHERE issuer_id = $1 AND card_id = $2",
                &[issuer.into(), card_id.into()],
            )
            .await
            .map_err(server_err)?;
        match row.map(|r| r.text(0)) {
            None => Err((update_err(UpdateError::UnknownCard(card_id.into())), "unknown-card")),
            Some(Ok(status)) if status == super::cards::STATUS_REVOKED => {
                Err((ServerError::Forbidden(format!("card {card_id} is revoked")), "revoked"))
            }
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(server_err(e)),
        }
    }

    async fn update_card_key(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
    ) -> ServerResult<HpkePublicKey> {
        let row = tx
            .query_opt(
                "SELECT update_key FROM update_cards WHERE issuer_id = $1 AND card_id = $2",
                &[issuer.into(), card_id.into()],
            )
            .await?
            .ok_or_else(|| update_err(UpdateError::UnknownCard(card_id.into())))?;
        HpkePublicKey::from_bytes(&row.blob(0)?)
            .map_err(|_| ServerError::Internal("stored update key".into()))
    }
}

/// Most packages looked at for one batch.
const MAX_BATCH: usize = 64;

/// `SELECT` update and DEVICE AUTHENTICATE (plain mode) over `challenge`.
fn device_auth_apdus(challenge: Challenge) -> ServerResult<Vec<Vec<u8>>> {
    let auth = tessera_proto::update::UpdateCommand::DeviceAuthenticate {
        mode: tessera_proto::update::AuthMode::Plain,
        challenge: Some(challenge),
    };
    Ok(vec![apdu(&select_update())?, apdu(&auth.to_command())?])
}

fn select_update() -> tessera_apdu::Command {
    tessera_apdu::Command::new(0x00, 0xA4, 0x04, 0x00)
        .with_data(tessera_proto::update::AID.to_vec())
        .with_le(256)
}

fn identity_key_context(session_id: &str) -> String {
    format!("session/{session_id}/update-identity-key")
}

/// A refusal of the card's answer (ends the sync with an outcome), as opposed to a failure of
/// the server (the exchange fails and can be retried).
fn refusal(e: &ServerError) -> bool {
    matches!(
        e,
        ServerError::Conflict(_)
            | ServerError::NotFound(_)
            | ServerError::BadRequest(_)
            | ServerError::Forbidden(_)
    )
}

fn card_str(card: &AuthenticatedCard) -> ServerResult<&str> {
    std::str::from_utf8(&card.card_id).map_err(|_| ServerError::BadRequest("card id".into()))
}
