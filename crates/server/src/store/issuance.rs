//! Starting and completing issuance sessions (the protocol is in [`crate::issuance`]).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::Store;
use super::auth::Principal;
use super::sessions::TunnelStep;
use crate::db::Tx;
use crate::error::{ServerError, ServerResult};
use crate::issuance::{ISSUED_KVN, IssuanceSecrets, hello_apdus};
use crate::primitives::random_bytes;
use crate::tunnel::{COUNTER_ISD_KVN, TunnelState, valid_card_id};

/// `POST /v1/admin/issuers/{issuer}/issuances` body.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartIssuance {
    /// The id the new card gets.
    pub card_id: String,
    /// Also personalise a legacy static authenticator (claim 10, DGI `0503`): a fresh random
    /// value, registered for the card in the issuance's last transaction and returned once in
    /// [`Issuance::legacy_static_hex`]. **Replayable**:
    /// whoever sees it once can present it again; only for terminals that cannot do
    /// challenge-response. Audited with `issuance.start`.
    #[serde(default)]
    pub legacy_static_auth: bool,
}

/// An issuance started: the tunnel session to run on a blank card, and the card holder's
/// initial PIN and PUK (shown once; the server does not keep them in the clear).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct Issuance {
    /// The tunnel session: relay its APDUs with `POST /v1/sessions/{id}/exchange`.
    pub session: TunnelStep,
    /// Initial PIN (6 digits); the holder changes it on the terminal.
    pub initial_pin: String,
    /// PUK (8 digits).
    pub puk: String,
    /// The legacy static authenticator personalised into the card (16 bytes, hex), when the
    /// issuance asked for one (shown once; the server keeps it sealed in the session and
    /// registers it with the issued card).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_static_hex: Option<String>,
}

impl std::fmt::Debug for Issuance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Issuance({:?}, ..)", self.session.session_id)
    }
}

pub(crate) fn secrets_context(session_id: &str) -> String {
    format!("session/{session_id}/issuance")
}

pub(crate) fn card_keys_context(issuer: &str, card_id: &str, kvn: i64) -> String {
    format!("card/{issuer}/{card_id}/keys/{kvn}")
}

impl Store {
    /// Starts issuing a new card `card_id` of `issuer` on a blank card.
    pub async fn start_issuance(
        &self,
        principal: &Principal,
        issuer: &str,
        req: &StartIssuance,
    ) -> ServerResult<Issuance> {
        principal.require_issuer(issuer)?;
        let card_id = &req.card_id;
        if !valid_card_id(card_id) {
            return Err(ServerError::BadRequest(
                "card id: 1 to 32 printable ASCII characters, no '/'".into(),
            ));
        }
        let id = hex::encode(random_bytes::<16>());
        let secrets = IssuanceSecrets::generate_with(req.legacy_static_auth);
        let json = Zeroizing::new(
            serde_json::to_vec(&secrets).map_err(|e| ServerError::Internal(e.to_string()))?,
        );
        let sealed = self
            .master
            .seal(&json, &secrets_context(&id))
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        let host_challenge = random_bytes::<8>();
        let apdus = hello_apdus(host_challenge)?;
        let now = crate::clock::now();
        let expires_at = now + self.config.session_ttl_secs;

        let mut tx = self.begin().await?;
        self.require_issuer_exists(&mut tx, issuer).await?;
        let exists = tx
            .query_opt(
                "SELECT card_id FROM cards WHERE issuer_id = $1 AND card_id = $2",
                &[issuer.into(), card_id.into()],
            )
            .await?
            .is_some();
        if exists {
            return Err(ServerError::Conflict(format!(
                "issuer {issuer} already has card {card_id}"
            )));
        }
        let live = self.claim_card(&mut tx, issuer, card_id, &id).await?;
        let state = TunnelState::IssueHello {
            card_id: card_id.clone(),
            host_challenge: hex::encode(host_challenge),
            secrets: hex::encode(sealed),
        };
        super::sessions::insert_session(
            &mut tx,
            super::sessions::NewSession {
                id: &id,
                issuer,
                card_id: Some(card_id),
                live: Some(live),
                state: &state,
                now,
                expires_at,
            },
        )
        .await?;
        self.audit(
            &mut tx,
            principal,
            Some(issuer),
            "issuance.start",
            card_id,
            serde_json::json!({
                "session": id, "legacy_static": req.legacy_static_auth,
            }),
        )
        .await?;
        self.commit(tx).await?;
        Ok(Issuance {
            session: TunnelStep {
                session_id: id,
                step: 0,
                apdus: apdus.iter().map(hex::encode_upper).collect(),
                done: false,
                outcome: None,
                expires_at,
            },
            initial_pin: secrets.pin.clone(),
            puk: secrets.puk.clone(),
            legacy_static_hex: secrets.legacy_static.clone(),
        })
    }

    pub(crate) fn open_secrets(
        &self,
        session_id: &str,
        sealed_hex: &str,
    ) -> ServerResult<IssuanceSecrets> {
        let sealed = hex::decode(sealed_hex)
            .map_err(|_| ServerError::Internal("sealed secrets not hex".into()))?;
        let json = self
            .master
            .open(&sealed, &secrets_context(session_id))
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        serde_json::from_slice(&json)
            .map_err(|e| ServerError::Internal(format!("issuance secrets: {e}")))
    }

    /// Records an issued card: its row, its sealed key set, its key-version counter.
    pub(crate) async fn record_issued(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        session_id: &str,
        secrets: &IssuanceSecrets,
        now: i64,
    ) -> ServerResult<()> {
        tx.execute(
            "INSERT INTO cards (issuer_id, card_id, status, created_at) VALUES ($1, $2, 'active', $3)",
            &[issuer.into(), card_id.into(), now.into()],
        )
        .await?;
        let kvn = i64::from(ISSUED_KVN);
        let keys = Zeroizing::new(secrets.keys.join(":"));
        let sealed = self
            .master
            .seal(keys.as_bytes(), &card_keys_context(issuer, card_id, kvn))
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        tx.execute(
            "INSERT INTO card_keys (issuer_id, card_id, kvn, sealed_keys, master_key_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[issuer.into(), card_id.into(), kvn.into(), sealed.into(), self.master.id().into(), now.into()],
        )
        .await?;
        self.audit(
            tx,
            &Principal::system(),
            Some(issuer),
            "card.issue",
            card_id,
            serde_json::json!({
                "session": session_id, "kvn": kvn,
            }),
        )
        .await?;
        self.set_counter(tx, issuer, card_id, COUNTER_ISD_KVN, kvn, now).await
    }
}
