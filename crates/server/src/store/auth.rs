//! Admin bearer tokens: random secrets, stored only as their SHA-256, each scoped to one
//! issuer (or a superuser), with an expiry.
//!
//! A token is `tsr_` followed by 64 hex digits (256 random bits). Looking a token up by its
//! hash leaks nothing useful through timing: an attacker who could steer the comparison
//! would learn bits of a hash of a secret they do not know.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::{Store, now_value};
use crate::db::{Row, Value};
use crate::error::{ServerError, ServerResult};
use crate::primitives::{random_bytes, sha256};

/// Prefix of every token secret.
pub const TOKEN_PREFIX: &str = "tsr_";
/// Longest token lifetime a caller may ask for (two years).
pub const MAX_TOKEN_TTL_SECS: i64 = 2 * 366 * 24 * 3600;
/// Lifetime of the bootstrap superuser token (one year).
pub const BOOTSTRAP_TTL_SECS: i64 = 366 * 24 * 3600;

/// Who is calling: the token that authenticated the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's public id.
    pub token_id: String,
    /// `None` for a superuser token, else the one issuer it may act for.
    pub issuer: Option<String>,
}

impl Principal {
    /// The principal used for actions the server takes by itself (bootstrap, sweeping).
    pub fn system() -> Self {
        Principal { token_id: "system".into(), issuer: None }
    }

    /// Whether this is a superuser.
    pub fn is_superuser(&self) -> bool {
        self.issuer.is_none()
    }

    /// Fails unless this is a superuser.
    pub fn require_superuser(&self) -> ServerResult<()> {
        if self.is_superuser() {
            Ok(())
        } else {
            Err(ServerError::Forbidden("this needs a superuser token".into()))
        }
    }

    /// Fails unless this principal may act for `issuer`. Another issuer's resources are
    /// reported as not found, so a token cannot probe which issuers exist.
    pub fn require_issuer(&self, issuer: &str) -> ServerResult<()> {
        match &self.issuer {
            None => Ok(()),
            Some(own) if own == issuer => Ok(()),
            Some(_) => Err(ServerError::NotFound(format!("no issuer {issuer}"))),
        }
    }

    /// How the audit log names this principal.
    pub fn actor(&self) -> String {
        format!("token:{}", self.token_id)
    }
}

/// A token as listed (never its secret).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TokenInfo {
    /// Public id (used to revoke it).
    pub id: String,
    /// The issuer it is scoped to; absent for a superuser token.
    pub issuer: Option<String>,
    /// A free-form label.
    pub label: String,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
}

/// A newly created token: the only time its secret is shown.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct NewToken {
    /// The token's metadata.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The bearer secret. Store it now: the server keeps only its hash.
    pub token: String,
}

fn token_from_row(r: &Row) -> ServerResult<TokenInfo> {
    Ok(TokenInfo {
        id: r.text(0)?,
        issuer: r.opt_text(1)?,
        label: r.text(2)?,
        created_at: r.int(3)?,
        expires_at: r.int(4)?,
        revoked_at: r.opt_int(5)?,
    })
}

const TOKEN_COLUMNS: &str = "id, issuer_id, label, created_at, expires_at, revoked_at";

fn hash_token(secret: &str) -> Vec<u8> {
    sha256(secret.as_bytes()).to_vec()
}

impl Store {
    /// The principal a bearer token stands for. Unknown, malformed, expired and revoked tokens
    /// all get the same answer.
    pub async fn authenticate(&self, secret: &str) -> ServerResult<Principal> {
        let denied = || ServerError::Unauthorized("invalid, expired or revoked token".into());
        if !secret.starts_with(TOKEN_PREFIX) || secret.len() != TOKEN_PREFIX.len() + 64 {
            return Err(denied());
        }
        let mut tx = self.begin().await?;
        let row = tx
            .query_opt(
                "SELECT id, issuer_id, expires_at, revoked_at FROM tokens WHERE hash = $1",
                &[hash_token(secret).into()],
            )
            .await?;
        self.commit(tx).await?;
        let row = row.ok_or_else(denied)?;
        if row.opt_int(3)?.is_some() || row.int(2)? <= crate::clock::now() {
            return Err(denied());
        }
        Ok(Principal { token_id: row.text(0)?, issuer: row.opt_text(1)? })
    }

    /// On first start (no superuser token yet), creates one and returns its secret; else
    /// `None`. Safe against replicas starting together: the check and the insert share the
    /// audit lock.
    pub async fn bootstrap_superuser(&self) -> ServerResult<Option<NewToken>> {
        let mut tx = self.begin().await?;
        tx.lock(super::audit::AUDIT_LOCK).await?;
        let exists = tx
            .query_opt("SELECT id FROM tokens WHERE issuer_id IS NULL LIMIT 1", &[])
            .await?
            .is_some();
        if exists {
            return Ok(None);
        }
        let token = self
            .insert_token(
                &mut tx,
                &Principal::system(),
                None,
                "bootstrap superuser",
                BOOTSTRAP_TTL_SECS,
            )
            .await?;
        self.commit(tx).await?;
        Ok(Some(token))
    }

    async fn insert_token(
        &self,
        tx: &mut crate::db::Tx,
        principal: &Principal,
        issuer: Option<&str>,
        label: &str,
        ttl_secs: i64,
    ) -> ServerResult<NewToken> {
        let id = hex::encode(random_bytes::<8>());
        let secret = Zeroizing::new(format!("{TOKEN_PREFIX}{}", hex::encode(random_bytes::<32>())));
        let now = crate::clock::now();
        let info = TokenInfo {
            id: id.clone(),
            issuer: issuer.map(str::to_owned),
            label: label.to_owned(),
            created_at: now,
            expires_at: now.saturating_add(ttl_secs),
            revoked_at: None,
        };
        tx.execute(
            "INSERT INTO tokens (id, hash, issuer_id, superuser, label, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                id.clone().into(),
                hash_token(&secret).into(),
                issuer.into(),
                Value::Int(issuer.is_none().into()),
                label.into(),
                now.into(),
                info.expires_at.into(),
            ],
        )
        .await?;
        self.audit(
            tx,
            principal,
            issuer,
            "token.create",
            &id,
            serde_json::json!({
                "label": label, "expires_at": info.expires_at, "superuser": issuer.is_none(),
            }),
        )
        .await?;
        Ok(NewToken { info, token: secret.to_string() })
    }

    /// Creates a token for `issuer` (or, by a superuser, a superuser token when `issuer` is
    /// `None`).
    pub async fn create_token(
        &self,
        principal: &Principal,
        issuer: Option<&str>,
        label: &str,
        ttl_secs: i64,
    ) -> ServerResult<NewToken> {
        match issuer {
            None => principal.require_superuser()?,
            Some(i) => principal.require_issuer(i)?,
        }
        if !(1..=MAX_TOKEN_TTL_SECS).contains(&ttl_secs) {
            return Err(ServerError::BadRequest(format!(
                "ttl_secs must be between 1 and {MAX_TOKEN_TTL_SECS}"
            )));
        }
        if label.len() > 200 {
            return Err(ServerError::BadRequest("label longer than 200 bytes".into()));
        }
        let mut tx = self.begin().await?;
        if let Some(i) = issuer {
            self.require_issuer_exists(&mut tx, i).await?;
        }
        let token = self.insert_token(&mut tx, principal, issuer, label, ttl_secs).await?;
        self.commit(tx).await?;
        Ok(token)
    }

    /// Lists the tokens the principal may see (a superuser sees all).
    pub async fn list_tokens(&self, principal: &Principal) -> ServerResult<Vec<TokenInfo>> {
        let mut tx = self.begin().await?;
        let rows = match &principal.issuer {
            None => tx.query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"), &[]).await?,
            Some(i) => {
                tx.query(
                    &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE issuer_id = $1 ORDER BY created_at, id"),
                    &[i.into()],
                )
                .await?
            }
        };
        self.commit(tx).await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes a token (idempotent: revoking a revoked token changes nothing).
    pub async fn revoke_token(&self, principal: &Principal, id: &str) -> ServerResult<TokenInfo> {
        let mut tx = self.begin().await?;
        let row = tx
            .query_opt(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1{}", tx.for_update()),
                &[id.into()],
            )
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("no token {id}")))?;
        let mut info = token_from_row(&row)?;
        match &info.issuer {
            None => principal.require_superuser()?,
            Some(i) => principal
                .require_issuer(i)
                .map_err(|_| ServerError::NotFound(format!("no token {id}")))?,
        }
        if info.revoked_at.is_none() {
            let now = crate::clock::now();
            tx.execute(
                "UPDATE tokens SET revoked_at = $1 WHERE id = $2",
                &[now_value(), id.into()],
            )
            .await?;
            self.audit(
                &mut tx,
                principal,
                info.issuer.as_deref(),
                "token.revoke",
                id,
                serde_json::json!({}),
            )
            .await?;
            info.revoked_at = Some(now);
        }
        self.commit(tx).await?;
        Ok(info)
    }
}
