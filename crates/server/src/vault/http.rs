//! Vault key-service endpoints (bearer token, issue 7): provision a card's key pair, show it,
//! read and set the issuer's escrow policy.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};

use crate::error::{ErrorBody, ServerResult};
use crate::http::{Admin, AppState, JsonBody};
use crate::store::vault::{VaultKeyInfo, VaultPolicy};

/// The routes, merged into the server's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/admin/issuers/{issuer}/cards/{card}/vault",
            get(get_vault_key).post(provision_vault_key),
        )
        .route("/v1/admin/issuers/{issuer}/vault/policy", get(vault_policy).put(set_vault_policy))
}

/// Provisions a key pair for the card: generated now, delivered sealed at its next sync.
#[utoipa::path(post, path = "/v1/admin/issuers/{issuer}/cards/{card}/vault", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path), ("card" = String, Path)),
    responses((status = 200, body = VaultKeyInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn provision_vault_key(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path((issuer, card)): Path<(String, String)>,
) -> ServerResult<Json<VaultKeyInfo>> {
    Ok(Json(s.store.provision_vault_key(&p, &issuer, &card).await?))
}

/// The card's provisioned key: public key, state, whether the server holds the private key.
#[utoipa::path(get, path = "/v1/admin/issuers/{issuer}/cards/{card}/vault", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path), ("card" = String, Path)),
    responses((status = 200, body = VaultKeyInfo), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_vault_key(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path((issuer, card)): Path<(String, String)>,
) -> ServerResult<Json<VaultKeyInfo>> {
    Ok(Json(s.store.vault_key(&p, &issuer, &card).await?))
}

/// The issuer's key-service policy.
#[utoipa::path(get, path = "/v1/admin/issuers/{issuer}/vault/policy", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path)),
    responses((status = 200, body = VaultPolicy), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn vault_policy(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path(issuer): Path<String>,
) -> ServerResult<Json<VaultPolicy>> {
    Ok(Json(s.store.vault_policy(&p, &issuer).await?))
}

/// Sets the issuer's key-service policy (escrow or not) for keys provisioned from now on.
#[utoipa::path(put, path = "/v1/admin/issuers/{issuer}/vault/policy", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path)), request_body = VaultPolicy,
    responses((status = 200, body = VaultPolicy), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_vault_policy(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path(issuer): Path<String>,
    JsonBody(req): JsonBody<VaultPolicy>,
) -> ServerResult<Json<VaultPolicy>> {
    Ok(Json(s.store.set_vault_policy(&p, &issuer, &req).await?))
}
