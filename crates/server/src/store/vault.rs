//! The vault key service's database side (issue 7; the checks are in [`crate::vault`]). Each
//! operation is one transaction:
//!
//! - **Policy** ([`Store::set_vault_policy`]): per issuer, whether private keys are escrowed
//!   (kept sealed under the master key after delivery). Default: no escrow.
//! - **Provisioning** ([`Store::provision_vault_key`]): for a card this server issued (its
//!   device certificate is registered), a P-256 key pair is generated; the public key is
//!   stored, the private key sealed under the master key (context
//!   `vault/{issuer}/{card}/private-key`) until delivery; audited `vault.provision` with the
//!   public key only.
//! - **Delivery**, a step of the card's sync after the keyring and update steps
//!   ([`VaultSync`]): SELECT vault + ATTEST (fresh nonce); the attestation is checked against
//!   the card's device certificate; then IMPORT SEALED (sealed to the attested transport key)
//!   and ATTEST again; the key is marked delivered only when the card attests it holds the
//!   provisioned public key, and in the same transaction the sealed private key is deleted
//!   unless the policy escrows it (audited `vault.deliver`). A card that already holds another
//!   key is refused before anything is sent (audited `vault.refuse`); a card that holds the
//!   provisioned key already (an earlier answer was lost) is marked delivered without a
//!   second import, so a re-run completes exactly once.

use serde::{Deserialize, Serialize};
use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::rng::OsRng;
use tessera_crypto::x509::Certificate;
use tessera_proto::vault::{self as proto, PUBLIC_KEY_LEN, Role, VaultCommand};
use utoipa::ToSchema;

use super::Store;
use super::auth::Principal;
use super::sessions::Outcome;
use crate::db::Tx;
use crate::error::{ServerError, ServerResult};
use crate::tunnel::TunnelState;
use crate::vault::{seal_key_for_card, verify_attestation};

/// A provisioned key waiting for delivery.
pub const STATUS_QUEUED: &str = "queued";
/// A provisioned key the card attested it holds.
pub const STATUS_DELIVERED: &str = "delivered";
/// A provisioning the card cannot take (it holds another key, or is a backup card).
pub const STATUS_REFUSED: &str = "refused";
/// The result of a sync whose vault step stopped on a refusal.
pub const VAULT_ERROR: &str = "vault-error";
/// Length of the ATTEST nonce the server sends.
pub const ATTEST_NONCE_LEN: usize = 32;

/// `PUT /v1/admin/issuers/{issuer}/vault/policy` body and answer: the issuer's key-service
/// policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultPolicy {
    /// Keep each delivered private key sealed under the server's master key (escrow). Without
    /// it, nothing secret is kept once the card holds the key.
    pub escrow: bool,
}

/// A card's provisioned vault key, as an administrator sees it (no secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VaultKeyInfo {
    /// The card.
    pub card_id: String,
    /// The key pair's public key, uncompressed SEC1, hex (the card's age `p256tag` recipient
    /// is its compressed form).
    pub public_key: String,
    /// The private key stays escrowed (sealed under the master key) after delivery.
    pub escrow: bool,
    /// The private key is held by the server right now (until delivery, or escrowed).
    pub private_key_held: bool,
    /// `queued`, `delivered` or `refused`.
    pub status: String,
    /// Why it was refused, when it was.
    pub note: Option<String>,
    /// When it was provisioned (Unix seconds).
    pub queued_at: i64,
    /// When the card attested it holds the key.
    pub delivered_at: Option<i64>,
}

/// Where a sync's vault step is, kept in the tunnel session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultSync {
    /// The card.
    pub card_id: String,
    /// The nonce of the ATTEST out, hex.
    pub nonce: String,
    /// IMPORT SEALED is out (second exchange).
    pub imported: bool,
    /// The outcome of the sync's earlier steps, reported at the end with this step's.
    pub before: Outcome,
}

/// What a tunnel step answers: the next state, its APDUs, the outcome when finished.
pub(crate) type Step = (TunnelState, Vec<Vec<u8>>, Option<Outcome>);

/// The master-key context of a card's provisioned private key.
pub fn private_key_context(issuer: &str, card_id: &str) -> String {
    format!("vault/{issuer}/{card_id}/private-key")
}

fn apdu(cmd: &Command) -> ServerResult<Vec<u8>> {
    cmd.to_bytes().map_err(|e| ServerError::Internal(format!("vault step: {e}")))
}

fn finish(sync: &VaultSync, result: Option<&str>, note: impl std::fmt::Display) -> Step {
    let outcome = Outcome {
        result: result.unwrap_or(&sync.before.result).to_owned(),
        card_id: Some(sync.card_id.clone()),
        message: format!("{}; vault key: {note}", sync.before.message),
    };
    (TunnelState::Finished, Vec::new(), Some(outcome))
}

fn new_nonce() -> [u8; ATTEST_NONCE_LEN] {
    crate::primitives::random_bytes::<ATTEST_NONCE_LEN>()
}

fn sw_text(r: &Response) -> String {
    format!("{:04X}", r.sw.0)
}

/// Results of a sync's earlier steps after which the vault step runs (never after a flagged
/// card, a clone or rolled-back image, nor after another step's refusal).
const CONTINUE_AFTER: &[&str] = &["identified", "synced"];

impl Store {
    /// Sets an issuer's key-service policy (issuer admin); audited `vault.policy`. Applies to
    /// keys provisioned from now on.
    pub async fn set_vault_policy(
        &self,
        principal: &Principal,
        issuer: &str,
        policy: &VaultPolicy,
    ) -> ServerResult<VaultPolicy> {
        principal.require_issuer(issuer)?;
        let now = crate::clock::now();
        let mut tx = self.begin().await?;
        self.require_issuer_exists(&mut tx, issuer).await?;
        tx.execute(
            "INSERT INTO vault_policies (issuer_id, escrow, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (issuer_id) DO UPDATE SET escrow = excluded.escrow, updated_at = excluded.updated_at",
            &[issuer.into(), i64::from(policy.escrow).into(), now.into()],
        )
        .await?;
        self.audit(
            &mut tx,
            principal,
            Some(issuer),
            "vault.policy",
            issuer,
            serde_json::json!({ "escrow": policy.escrow }),
        )
        .await?;
        self.commit(tx).await?;
        Ok(policy.clone())
    }

    /// An issuer's key-service policy (issuer admin).
    pub async fn vault_policy(
        &self,
        principal: &Principal,
        issuer: &str,
    ) -> ServerResult<VaultPolicy> {
        principal.require_issuer(issuer)?;
        let mut tx = self.begin().await?;
        self.require_issuer_exists(&mut tx, issuer).await?;
        let escrow = Self::escrow_policy(&mut tx, issuer).await?;
        self.commit(tx).await?;
        Ok(VaultPolicy { escrow })
    }

    async fn escrow_policy(tx: &mut Tx, issuer: &str) -> ServerResult<bool> {
        let row = tx
            .query_opt("SELECT escrow FROM vault_policies WHERE issuer_id = $1", &[issuer.into()])
            .await?;
        Ok(row.map(|r| r.int(0)).transpose()?.unwrap_or(0) != 0)
    }

    /// Provisions a vault key pair for a card this server issued (issuer admin): generated
    /// here, the public key recorded, the private key sealed under the master key until the
    /// card's next sync delivers it. 404 for an unknown card, 403 for a revoked one, 409 when
    /// the card was not issued through this server (no device certificate to check its
    /// attestation against) or already has a key queued or delivered. A refused provisioning
    /// may be replaced by a new one.
    pub async fn provision_vault_key(
        &self,
        principal: &Principal,
        issuer: &str,
        card_id: &str,
    ) -> ServerResult<VaultKeyInfo> {
        principal.require_issuer(issuer)?;
        let now = crate::clock::now();
        let mut tx = self.begin().await?;
        let card = tx
            .query_opt(
                &format!(
                    "SELECT status FROM cards WHERE issuer_id = $1 AND card_id = $2{}",
                    tx.for_update()
                ),
                &[issuer.into(), card_id.into()],
            )
            .await?
            .ok_or_else(|| {
                ServerError::NotFound(format!("no card {card_id} of issuer {issuer}"))
            })?;
        if card.text(0)? == super::cards::STATUS_REVOKED {
            return Err(ServerError::Forbidden(format!("card {card_id} is revoked")));
        }
        let registered = tx
            .query_opt(
                "SELECT card_id FROM update_cards WHERE issuer_id = $1 AND card_id = $2",
                &[issuer.into(), card_id.into()],
            )
            .await?;
        if registered.is_none() {
            return Err(ServerError::Conflict(format!(
                "card {card_id} was not issued through this server: no device certificate to \
                 check its attestation against"
            )));
        }
        let existing = tx
            .query_opt(
                "SELECT status FROM vault_keys WHERE issuer_id = $1 AND card_id = $2",
                &[issuer.into(), card_id.into()],
            )
            .await?;
        if let Some(row) = existing {
            let status = row.text(0)?;
            if status != STATUS_REFUSED {
                return Err(ServerError::Conflict(format!(
                    "card {card_id} already has a vault key ({status})"
                )));
            }
            tx.execute(
                "DELETE FROM vault_keys WHERE issuer_id = $1 AND card_id = $2",
                &[issuer.into(), card_id.into()],
            )
            .await?;
        }
        let escrow = Self::escrow_policy(&mut tx, issuer).await?;
        let key = SigningKey::generate(&mut OsRng);
        let public = key.public_key().to_sec1_bytes();
        let sealed = self
            .master
            .seal(key.to_bytes().as_slice(), &private_key_context(issuer, card_id))
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        drop(key);
        tx.execute(
            "INSERT INTO vault_keys (issuer_id, card_id, public_key, sealed_private, master_key_id, \
             escrow, status, queued_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                issuer.into(),
                card_id.into(),
                public.to_vec().into(),
                sealed.into(),
                self.master.id().into(),
                i64::from(escrow).into(),
                STATUS_QUEUED.into(),
                now.into(),
            ],
        )
        .await?;
        self.audit(
            &mut tx,
            principal,
            Some(issuer),
            "vault.provision",
            card_id,
            serde_json::json!({ "public_key": hex::encode(public), "escrow": escrow }),
        )
        .await?;
        self.commit(tx).await?;
        Ok(VaultKeyInfo {
            card_id: card_id.to_owned(),
            public_key: hex::encode(public),
            escrow,
            private_key_held: true,
            status: STATUS_QUEUED.into(),
            note: None,
            queued_at: now,
            delivered_at: None,
        })
    }

    /// A card's provisioned vault key (issuer admin); 404 if none.
    pub async fn vault_key(
        &self,
        principal: &Principal,
        issuer: &str,
        card_id: &str,
    ) -> ServerResult<VaultKeyInfo> {
        principal.require_issuer(issuer)?;
        let mut tx = self.begin().await?;
        let row = tx
            .query_opt(
                "SELECT public_key, sealed_private IS NOT NULL, escrow, status, note, queued_at, \
                 delivered_at FROM vault_keys WHERE issuer_id = $1 AND card_id = $2",
                &[issuer.into(), card_id.into()],
            )
            .await?
            .ok_or_else(|| {
                ServerError::NotFound(format!("no vault key provisioned for card {card_id}"))
            })?;
        self.commit(tx).await?;
        Ok(VaultKeyInfo {
            card_id: card_id.to_owned(),
            public_key: hex::encode(row.blob(0)?),
            private_key_held: row.int(1)? != 0,
            escrow: row.int(2)? != 0,
            status: row.text(3)?,
            note: row.opt_text(4)?,
            queued_at: row.int(5)?,
            delivered_at: row.opt_int(6)?,
        })
    }

    /// After a sync step: when it finished a sync (state `Finished` after the counter,
    /// keyring or update step) with a result the vault step may follow, and the card has a
    /// key queued, the vault step starts (SELECT vault, ATTEST); otherwise `step` is returned
    /// unchanged. `known`: a card and whether it has a key queued, as read earlier in `tx`
    /// (with the session), which spares reading it again.
    pub(crate) async fn vault_sync_after(
        &self,
        tx: &mut Tx,
        issuer: &str,
        previous: &TunnelState,
        known: Option<(&str, bool)>,
        step: Step,
    ) -> ServerResult<Step> {
        let from_sync = match previous {
            TunnelState::ReadCounters { .. }
            | TunnelState::Identify { read_counters: true, .. }
            | TunnelState::Keyring(_) => true,
            // Never after an update-only session (the privacy variant, the legacy static
            // authenticator): the attestation would show the terminal who the card is.
            TunnelState::Update(u) => u.session_id.is_none() && u.identity_key.is_none(),
            _ => false,
        };
        let (TunnelState::Finished, _, Some(outcome)) = &step else { return Ok(step) };
        let Some(card_id) = outcome.card_id.clone() else { return Ok(step) };
        if !from_sync || !CONTINUE_AFTER.contains(&outcome.result.as_str()) {
            return Ok(step);
        }
        let queued = match known {
            Some((card, queued)) if card == card_id => queued,
            _ => tx
                .query_opt(
                    "SELECT status FROM vault_keys WHERE issuer_id = $1 AND card_id = $2 AND status = $3",
                    &[issuer.into(), card_id.as_str().into(), STATUS_QUEUED.into()],
                )
                .await?
                .is_some(),
        };
        if !queued {
            return Ok(step);
        }
        let nonce = new_nonce();
        let select =
            Command::new(0x00, 0xA4, 0x04, 0x00).with_data(proto::AID.to_vec()).with_le(256);
        let attest = VaultCommand::Attest(nonce.to_vec()).to_command();
        let sync = VaultSync {
            card_id,
            nonce: hex::encode(nonce),
            imported: false,
            before: outcome.clone(),
        };
        Ok((TunnelState::Vault(sync), vec![apdu(&select)?, apdu(&attest)?], None))
    }

    /// One exchange of a sync's vault step (see the module documentation). Refusals end the
    /// sync with result [`VAULT_ERROR`]; the provisioned key stays queued unless the card can
    /// never take it (it holds another key, or is a backup card), which marks it refused.
    pub(crate) async fn vault_sync_step(
        &self,
        tx: &mut Tx,
        issuer: &str,
        sync: &VaultSync,
        responses: &[Vec<u8>],
        now: i64,
    ) -> ServerResult<Step> {
        let parsed: Vec<Response> = responses
            .iter()
            .map(|r| {
                Response::parse(r).ok_or_else(|| {
                    ServerError::BadRequest(
                        "vault step: response shorter than a status word".into(),
                    )
                })
            })
            .collect::<ServerResult<_>>()?;
        let [first, attest] = parsed.as_slice() else {
            return Err(ServerError::BadRequest(format!(
                "expected 2 responses to the vault step, got {}",
                parsed.len()
            )));
        };
        let card_id = sync.card_id.as_str();
        let row = tx
            .query_opt(
                &format!(
                    "SELECT public_key, sealed_private, escrow FROM vault_keys \
                     WHERE issuer_id = $1 AND card_id = $2 AND status = $3{}",
                    tx.for_update()
                ),
                &[issuer.into(), card_id.into(), STATUS_QUEUED.into()],
            )
            .await?;
        let Some(row) = row else {
            return Ok(finish(sync, None, "nothing queued any more"));
        };
        let provisioned: [u8; PUBLIC_KEY_LEN] = row
            .blob(0)?
            .try_into()
            .map_err(|_| ServerError::Internal("stored vault public key".into()))?;
        let escrow = row.int(2)? != 0;

        if !sync.imported && first.sw != StatusWord::SUCCESS {
            return Ok(finish(
                sync,
                Some(VAULT_ERROR),
                format!(
                    "SELECT vault: the card answered {} (no vault applet?); still queued",
                    sw_text(first)
                ),
            ));
        }
        if sync.imported && first.sw == StatusWord::SECURITY_STATUS_NOT_SATISFIED {
            return Ok(finish(
                sync,
                None,
                "pending; the card wants its PIN first (--pin-file, --pin-stdin or TESSERA_PIN)",
            ));
        }
        if attest.sw != StatusWord::SUCCESS {
            return Ok(finish(
                sync,
                Some(VAULT_ERROR),
                format!(
                    "ATTEST: the card answered {} (vault not personalised, or no device key); still queued",
                    sw_text(attest)
                ),
            ));
        }
        let nonce = hex::decode(&sync.nonce)
            .map_err(|_| ServerError::Internal("stored vault nonce".into()))?;
        let (ca, device) = self.vault_card_certs(tx, issuer, card_id).await?;
        let attestation =
            match verify_attestation(&ca, &device, card_id.as_bytes(), &nonce, &attest.data, now) {
                Ok(a) => a,
                Err(e) => {
                    return Ok(finish(
                        sync,
                        Some(VAULT_ERROR),
                        format!("{e}; nothing sent, still queued"),
                    ));
                }
            };
        if attestation.role != Role::Main {
            let note = "a backup card: the key service delivers to the main card, the backup \
                        flow moves the key to the backup card";
            self.vault_refuse(tx, issuer, card_id, note, now).await?;
            return Ok(finish(sync, Some(VAULT_ERROR), format!("refused, {note}")));
        }
        match attestation.public_key {
            Some(pk) if pk == provisioned => {
                self.vault_delivered(tx, issuer, card_id, &provisioned, escrow, sync.imported, now)
                    .await?;
                let how = if sync.imported {
                    "delivered (IMPORT SEALED; the card attests it holds it)"
                } else {
                    "already on the card (an earlier delivery's answer was lost); marked delivered"
                };
                Ok(finish(sync, None, how))
            }
            Some(_) => {
                let note = "the card already holds another key; nothing was sent";
                self.vault_refuse(tx, issuer, card_id, note, now).await?;
                Ok(finish(sync, Some(VAULT_ERROR), format!("refused, {note}")))
            }
            None if sync.imported => Ok(finish(
                sync,
                Some(VAULT_ERROR),
                format!("IMPORT SEALED: the card answered {}; still queued", sw_text(first)),
            )),
            None => {
                let sealed_private = row.opt_blob(1)?.ok_or_else(|| {
                    ServerError::Internal("queued vault key without its private key".into())
                })?;
                let private = self
                    .master
                    .open(&sealed_private, &private_key_context(issuer, card_id))
                    .map_err(|e| ServerError::Internal(e.to_string()))?;
                let sealed = seal_key_for_card(
                    &mut OsRng,
                    &attestation.transport_key,
                    card_id.as_bytes(),
                    &private,
                )
                .map_err(|e| ServerError::Internal(e.to_string()))?;
                let nonce = new_nonce();
                let apdus = vec![
                    apdu(&VaultCommand::ImportSealed(sealed).to_command())?,
                    apdu(&VaultCommand::Attest(nonce.to_vec()).to_command())?,
                ];
                let next = VaultSync { nonce: hex::encode(nonce), imported: true, ..sync.clone() };
                Ok((TunnelState::Vault(next), apdus, None))
            }
        }
    }

    async fn vault_card_certs(
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
            .ok_or_else(|| ServerError::Conflict(format!("card {card_id} has no device certificate")))?;
        let bad = |e: tessera_crypto::CryptoError| ServerError::Internal(e.to_string());
        Ok((
            Certificate::from_der(row.blob(0)?).map_err(bad)?,
            Certificate::from_der(row.blob(1)?).map_err(bad)?,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    async fn vault_delivered(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        public: &[u8; PUBLIC_KEY_LEN],
        escrow: bool,
        imported: bool,
        now: i64,
    ) -> ServerResult<()> {
        let sql = if escrow {
            "UPDATE vault_keys SET status = $1, delivered_at = $2 \
             WHERE issuer_id = $3 AND card_id = $4 AND status = $5"
        } else {
            // Nothing secret stays once the card holds the key.
            "UPDATE vault_keys SET status = $1, delivered_at = $2, sealed_private = NULL, master_key_id = NULL \
             WHERE issuer_id = $3 AND card_id = $4 AND status = $5"
        };
        let n = tx
            .execute(
                sql,
                &[
                    STATUS_DELIVERED.into(),
                    now.into(),
                    issuer.into(),
                    card_id.into(),
                    STATUS_QUEUED.into(),
                ],
            )
            .await?;
        if n != 1 {
            return Err(ServerError::Conflict(format!("vault key of {card_id}: not queued")));
        }
        self.audit(
            tx,
            &Principal::system(),
            Some(issuer),
            "vault.deliver",
            card_id,
            serde_json::json!({
                "public_key": hex::encode(public), "escrow": escrow,
                "outcome": if imported { "imported" } else { "already on the card" },
            }),
        )
        .await?;
        Ok(())
    }

    async fn vault_refuse(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        note: &str,
        now: i64,
    ) -> ServerResult<()> {
        // The private key of a key no card will take is dropped (it was never delivered).
        tx.execute(
            "UPDATE vault_keys SET status = $1, note = $2, sealed_private = NULL, master_key_id = NULL \
             WHERE issuer_id = $3 AND card_id = $4 AND status = $5",
            &[STATUS_REFUSED.into(), note.into(), issuer.into(), card_id.into(), STATUS_QUEUED.into()],
        )
        .await?;
        self.audit(
            tx,
            &Principal::system(),
            Some(issuer),
            "vault.refuse",
            card_id,
            serde_json::json!({ "reason": note, "at": now }),
        )
        .await?;
        Ok(())
    }
}
