//! Keyring endpoints (bearer token, issue 4): a card's key versions on both sides, a key
//! reported compromised, the issuer's keyring policy.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::{Admin, AppState, JsonBody};
use crate::error::{ErrorBody, ServerResult};
use crate::store::keyring::{KeyringPolicy, KeyringStatus, ReportCompromise};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/issuers/{issuer}/cards/{card}/keyring", get(keyring_status))
        .route(
            "/v1/admin/issuers/{issuer}/cards/{card}/keyring/compromised",
            post(keyring_compromised),
        )
        .route("/v1/admin/issuers/{issuer}/cards/{card}/keyring/resync", post(keyring_resync))
        .route(
            "/v1/admin/issuers/{issuer}/keyring-policy",
            get(keyring_policy).put(set_keyring_policy),
        )
}

#[utoipa::path(get, path = "/v1/admin/issuers/{issuer}/cards/{card}/keyring", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path), ("card" = String, Path)),
    responses((status = 200, body = KeyringStatus), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn keyring_status(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path((issuer, card)): Path<(String, String)>,
) -> ServerResult<Json<KeyringStatus>> {
    Ok(Json(s.store.keyring_status(&p, &issuer, &card).await?))
}

#[utoipa::path(post, path = "/v1/admin/issuers/{issuer}/cards/{card}/keyring/compromised", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path), ("card" = String, Path)), request_body = ReportCompromise,
    responses((status = 200, body = KeyringStatus), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn keyring_compromised(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path((issuer, card)): Path<(String, String)>,
    JsonBody(req): JsonBody<ReportCompromise>,
) -> ServerResult<Json<KeyringStatus>> {
    Ok(Json(s.store.keyring_compromised(&p, &issuer, &card, &req).await?))
}

#[utoipa::path(post, path = "/v1/admin/issuers/{issuer}/cards/{card}/keyring/resync", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path), ("card" = String, Path)),
    responses((status = 200, body = KeyringStatus), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn keyring_resync(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path((issuer, card)): Path<(String, String)>,
) -> ServerResult<Json<KeyringStatus>> {
    Ok(Json(s.store.keyring_approve_resync(&p, &issuer, &card).await?))
}

#[utoipa::path(get, path = "/v1/admin/issuers/{issuer}/keyring-policy", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path)),
    responses((status = 200, body = KeyringPolicy), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn keyring_policy(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path(issuer): Path<String>,
) -> ServerResult<Json<KeyringPolicy>> {
    Ok(Json(s.store.keyring_policy(&p, &issuer).await?))
}

#[utoipa::path(put, path = "/v1/admin/issuers/{issuer}/keyring-policy", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path)), request_body = KeyringPolicy,
    responses((status = 200, body = KeyringPolicy), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn set_keyring_policy(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path(issuer): Path<String>,
    JsonBody(req): JsonBody<KeyringPolicy>,
) -> ServerResult<Json<KeyringPolicy>> {
    Ok(Json(s.store.set_keyring_policy(&p, &issuer, &req).await?))
}
