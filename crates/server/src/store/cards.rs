//! Card records: registered per issuer (by issuance, or by an admin), revocable, with the
//! counters the server tracks to detect clones and rolled-back images.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Store;
use super::auth::Principal;
use crate::db::{Row, Tx};
use crate::error::{ServerError, ServerResult};
use crate::tunnel::valid_card_id;

/// A card's status.
pub const STATUS_ACTIVE: &str = "active";
/// A revoked card: the tunnel refuses it.
pub const STATUS_REVOKED: &str = "revoked";

/// A card as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CardInfo {
    /// The issuer.
    pub issuer: String,
    /// The card id (GET DATA `0045`).
    pub card_id: String,
    /// `active` or `revoked`.
    pub status: String,
    /// Registration time, Unix seconds.
    pub created_at: i64,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
    /// Set when the card presented a counter older than one already seen (a clone or a
    /// rolled-back image): the reason.
    pub flagged: Option<String>,
    /// The counters the server tracks, by name.
    pub counters: std::collections::BTreeMap<String, i64>,
}

const CARD_COLUMNS: &str = "issuer_id, card_id, status, created_at, revoked_at, flagged";

impl Store {
    async fn card_from_row(tx: &mut Tx, r: &Row) -> ServerResult<CardInfo> {
        let issuer = r.text(0)?;
        let card_id = r.text(1)?;
        let counters = tx
            .query(
                "SELECT name, value FROM card_counters WHERE issuer_id = $1 AND card_id = $2 ORDER BY name",
                &[issuer.clone().into(), card_id.clone().into()],
            )
            .await?
            .iter()
            .map(|c| Ok((c.text(0)?, c.int(1)?)))
            .collect::<ServerResult<_>>()?;
        Ok(CardInfo {
            issuer,
            card_id,
            status: r.text(2)?,
            created_at: r.int(3)?,
            revoked_at: r.opt_int(4)?,
            flagged: r.opt_text(5)?,
            counters,
        })
    }

    pub(crate) async fn load_card(
        &self,
        tx: &mut Tx,
        issuer: &str,
        card_id: &str,
        lock: bool,
    ) -> ServerResult<CardInfo> {
        let sql = format!(
            "SELECT {CARD_COLUMNS} FROM cards WHERE issuer_id = $1 AND card_id = $2{}",
            if lock { tx.for_update() } else { "" }
        );
        let row = tx.query_opt(&sql, &[issuer.into(), card_id.into()]).await?.ok_or_else(|| {
            ServerError::NotFound(format!("issuer {issuer} has no card {card_id}"))
        })?;
        Self::card_from_row(tx, &row).await
    }

    /// Registers a card for an issuer.
    pub async fn register_card(
        &self,
        principal: &Principal,
        issuer: &str,
        card_id: &str,
    ) -> ServerResult<CardInfo> {
        principal.require_issuer(issuer)?;
        if !valid_card_id(card_id) {
            return Err(ServerError::BadRequest(
                "card id: 1 to 32 printable ASCII characters, no '/'".into(),
            ));
        }
        let mut tx = self.begin().await?;
        self.require_issuer_exists(&mut tx, issuer).await?;
        let now = crate::clock::now();
        let inserted = tx
            .execute(
                "INSERT INTO cards (issuer_id, card_id, status, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (issuer_id, card_id) DO NOTHING",
                &[issuer.into(), card_id.into(), STATUS_ACTIVE.into(), now.into()],
            )
            .await?;
        if inserted == 0 {
            return Err(ServerError::Conflict(format!(
                "issuer {issuer} already has card {card_id}"
            )));
        }
        self.audit(
            &mut tx,
            principal,
            Some(issuer),
            "card.register",
            card_id,
            serde_json::json!({}),
        )
        .await?;
        let card = self.load_card(&mut tx, issuer, card_id, false).await?;
        self.commit(tx).await?;
        Ok(card)
    }

    /// Lists an issuer's cards.
    pub async fn list_cards(
        &self,
        principal: &Principal,
        issuer: &str,
    ) -> ServerResult<Vec<CardInfo>> {
        principal.require_issuer(issuer)?;
        let mut tx = self.begin().await?;
        self.require_issuer_exists(&mut tx, issuer).await?;
        let rows = tx
            .query(
                &format!("SELECT {CARD_COLUMNS} FROM cards WHERE issuer_id = $1 ORDER BY card_id"),
                &[issuer.into()],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(Self::card_from_row(&mut tx, r).await?);
        }
        self.commit(tx).await?;
        Ok(out)
    }

    /// One card.
    pub async fn get_card(
        &self,
        principal: &Principal,
        issuer: &str,
        card_id: &str,
    ) -> ServerResult<CardInfo> {
        principal.require_issuer(issuer)?;
        let mut tx = self.begin().await?;
        let card = self.load_card(&mut tx, issuer, card_id, false).await?;
        self.commit(tx).await?;
        Ok(card)
    }

    /// Revokes a card: the tunnel refuses it from now on, and its live session ends.
    pub async fn revoke_card(
        &self,
        principal: &Principal,
        issuer: &str,
        card_id: &str,
    ) -> ServerResult<CardInfo> {
        principal.require_issuer(issuer)?;
        let mut tx = self.begin().await?;
        let card = self.load_card(&mut tx, issuer, card_id, true).await?;
        if card.status != STATUS_REVOKED {
            tx.execute(
                "UPDATE cards SET status = $1, revoked_at = $2 WHERE issuer_id = $3 AND card_id = $4",
                &[STATUS_REVOKED.into(), crate::clock::now().into(), issuer.into(), card_id.into()],
            )
            .await?;
            tx.execute(
                "UPDATE sessions SET status = 'failed', live_card = NULL WHERE live_card = $1",
                &[super::sessions::live_key(issuer, card_id).into()],
            )
            .await?;
            self.audit(
                &mut tx,
                principal,
                Some(issuer),
                "card.revoke",
                card_id,
                serde_json::json!({}),
            )
            .await?;
        }
        let card = self.load_card(&mut tx, issuer, card_id, false).await?;
        self.commit(tx).await?;
        Ok(card)
    }
}
