//! Admin endpoints (bearer token): issuers, certificates, cards, tokens, audit.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Admin, AppState, JsonBody};
use crate::error::{ErrorBody, ServerError, ServerResult};
use crate::store::audit::{AuditEntry, VerifyReport};
use crate::store::auth::{NewToken, TokenInfo};
use crate::store::cards::CardInfo;
use crate::store::issuance::{Issuance, StartIssuance};
use crate::store::issuers::{CertificateInfo, IssuerInfo};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/issuers", get(list_issuers).post(create_issuer))
        .route("/v1/admin/issuers/{issuer}", get(get_issuer))
        .route("/v1/admin/issuers/{issuer}/certificates", get(list_certificates))
        .route("/v1/admin/issuers/{issuer}/certificates/{serial}/revoke", post(revoke_certificate))
        .route("/v1/admin/issuers/{issuer}/cards", get(list_cards).post(register_card))
        .route("/v1/admin/issuers/{issuer}/cards/{card}", get(get_card))
        .route("/v1/admin/issuers/{issuer}/cards/{card}/revoke", post(revoke_card))
        .route("/v1/admin/issuers/{issuer}/issuances", post(start_issuance))
        .route("/v1/admin/tokens", get(list_tokens).post(create_token))
        .route("/v1/admin/tokens/{id}/revoke", post(revoke_token))
        .route("/v1/admin/audit", get(audit_entries))
        .route("/v1/admin/audit/verify", post(verify_audit))
        .route("/v1/admin/audit/checkpoint", post(checkpoint))
}

/// `POST /v1/admin/issuers` body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIssuer {
    /// Issuer id: 1 to 32 of `a-z`, `0-9`, `-`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Generate the CA and package-signing keys in the server's PKCS#11 token (400 when the
    /// server has none).
    #[serde(default)]
    pub keys_in_token: bool,
}

/// `POST /v1/admin/issuers/{issuer}/cards` body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterCard {
    /// The card id.
    pub card_id: String,
}

/// `POST /v1/admin/tokens` body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// The issuer the token acts for; absent for a superuser token (superusers only).
    #[serde(default)]
    pub issuer: Option<String>,
    /// A label.
    #[serde(default)]
    pub label: String,
    /// Lifetime in seconds.
    pub ttl_secs: i64,
}

/// `POST /v1/admin/audit/verify` body.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyAudit {
    /// A head seen earlier (`head_seq` of a previous report), to detect truncation.
    #[serde(default)]
    pub expected_head_seq: Option<i64>,
    /// Its hash, hex.
    #[serde(default)]
    pub expected_head_hash: Option<String>,
}

/// Paging of `GET /v1/admin/audit`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// Entries after this sequence number (default 0).
    pub after: Option<i64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// A checkpoint just signed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Checkpoint {
    /// The audit entry it covers.
    pub seq: i64,
}

#[utoipa::path(get, path = "/v1/admin/issuers", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Vec<IssuerInfo>), (status = 401, body = ErrorBody)))]
pub(super) async fn list_issuers(
    State(s): State<AppState>,
    Admin(p): Admin,
) -> ServerResult<Json<Vec<IssuerInfo>>> {
    Ok(Json(s.store.list_issuers(&p).await?))
}

#[utoipa::path(post, path = "/v1/admin/issuers", tag = "admin", security(("bearer" = [])),
    request_body = CreateIssuer,
    responses((status = 201, body = IssuerInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_issuer(
    State(s): State<AppState>,
    Admin(p): Admin,
    JsonBody(req): JsonBody<CreateIssuer>,
) -> ServerResult<(StatusCode, Json<IssuerInfo>)> {
    let info = if req.keys_in_token {
        s.store.create_issuer_in_token(&p, &req.id, &req.name).await?
    } else {
        s.store.create_issuer(&p, &req.id, &req.name).await?
    };
    Ok((StatusCode::CREATED, Json(info)))
}

#[utoipa::path(get, path = "/v1/admin/issuers/{issuer}", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path)),
    responses((status = 200, body = IssuerInfo), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_issuer(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path(issuer): Path<String>,
) -> ServerResult<Json<IssuerInfo>> {
    Ok(Json(s.store.get_issuer(&p, &issuer).await?))
}

#[utoipa::path(get, path = "/v1/admin/issuers/{issuer}/certificates", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path)),
    responses((status = 200, body = Vec<CertificateInfo>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn list_certificates(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path(issuer): Path<String>,
) -> ServerResult<Json<Vec<CertificateInfo>>> {
    Ok(Json(s.store.list_certificates(&p, &issuer).await?))
}

#[utoipa::path(post, path = "/v1/admin/issuers/{issuer}/certificates/{serial}/revoke", tag = "admin",
    security(("bearer" = [])), params(("issuer" = String, Path), ("serial" = String, Path, description = "Serial, hex")),
    responses((status = 200, body = CertificateInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn revoke_certificate(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path((issuer, serial)): Path<(String, String)>,
) -> ServerResult<Json<CertificateInfo>> {
    Ok(Json(s.store.revoke_certificate(&p, &issuer, &serial.to_ascii_lowercase()).await?))
}

/// The issuer's CRL (DER, public).
#[utoipa::path(get, path = "/v1/issuers/{issuer}/crl", tag = "pki", params(("issuer" = String, Path)),
    responses((status = 200, description = "DER CRL", content_type = "application/pkix-crl"), (status = 404, body = ErrorBody)))]
pub(super) async fn crl(
    State(s): State<AppState>,
    Path(issuer): Path<String>,
) -> ServerResult<Response> {
    let der = s.store.issuer_crl(&issuer).await?;
    Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response())
}

#[utoipa::path(get, path = "/v1/admin/issuers/{issuer}/cards", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path)),
    responses((status = 200, body = Vec<CardInfo>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn list_cards(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path(issuer): Path<String>,
) -> ServerResult<Json<Vec<CardInfo>>> {
    Ok(Json(s.store.list_cards(&p, &issuer).await?))
}

#[utoipa::path(post, path = "/v1/admin/issuers/{issuer}/cards", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path)), request_body = RegisterCard,
    responses((status = 201, body = CardInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn register_card(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path(issuer): Path<String>,
    JsonBody(req): JsonBody<RegisterCard>,
) -> ServerResult<(StatusCode, Json<CardInfo>)> {
    Ok((StatusCode::CREATED, Json(s.store.register_card(&p, &issuer, &req.card_id).await?)))
}

#[utoipa::path(get, path = "/v1/admin/issuers/{issuer}/cards/{card}", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path), ("card" = String, Path)),
    responses((status = 200, body = CardInfo), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_card(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path((issuer, card)): Path<(String, String)>,
) -> ServerResult<Json<CardInfo>> {
    Ok(Json(s.store.get_card(&p, &issuer, &card).await?))
}

#[utoipa::path(post, path = "/v1/admin/issuers/{issuer}/cards/{card}/revoke", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path), ("card" = String, Path)),
    responses((status = 200, body = CardInfo), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn revoke_card(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path((issuer, card)): Path<(String, String)>,
) -> ServerResult<Json<CardInfo>> {
    Ok(Json(s.store.revoke_card(&p, &issuer, &card).await?))
}

#[utoipa::path(get, path = "/v1/admin/tokens", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Vec<TokenInfo>), (status = 401, body = ErrorBody)))]
pub(super) async fn list_tokens(
    State(s): State<AppState>,
    Admin(p): Admin,
) -> ServerResult<Json<Vec<TokenInfo>>> {
    Ok(Json(s.store.list_tokens(&p).await?))
}

#[utoipa::path(post, path = "/v1/admin/tokens", tag = "admin", security(("bearer" = [])), request_body = CreateToken,
    responses((status = 201, body = NewToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn create_token(
    State(s): State<AppState>,
    Admin(p): Admin,
    JsonBody(req): JsonBody<CreateToken>,
) -> ServerResult<(StatusCode, Json<NewToken>)> {
    let t = s.store.create_token(&p, req.issuer.as_deref(), &req.label, req.ttl_secs).await?;
    Ok((StatusCode::CREATED, Json(t)))
}

#[utoipa::path(post, path = "/v1/admin/tokens/{id}/revoke", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = TokenInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn revoke_token(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path(id): Path<String>,
) -> ServerResult<Json<TokenInfo>> {
    Ok(Json(s.store.revoke_token(&p, &id).await?))
}

#[utoipa::path(get, path = "/v1/admin/audit", tag = "admin", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>), (status = 401, body = ErrorBody)))]
pub(super) async fn audit_entries(
    State(s): State<AppState>,
    Admin(p): Admin,
    Query(q): Query<AuditQuery>,
) -> ServerResult<Json<Vec<AuditEntry>>> {
    Ok(Json(s.store.audit_entries(&p, q.after.unwrap_or(0), q.limit.unwrap_or(100)).await?))
}

#[utoipa::path(post, path = "/v1/admin/audit/verify", tag = "admin", security(("bearer" = [])), request_body = VerifyAudit,
    responses((status = 200, body = VerifyReport), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub(super) async fn verify_audit(
    State(s): State<AppState>,
    Admin(p): Admin,
    JsonBody(req): JsonBody<VerifyAudit>,
) -> ServerResult<Json<VerifyReport>> {
    p.require_superuser()?;
    let head = match (req.expected_head_seq, req.expected_head_hash) {
        (Some(seq), Some(h)) => Some((
            seq,
            hex::decode(&h)
                .map_err(|_| ServerError::BadRequest("expected_head_hash: not hex".into()))?,
        )),
        (None, None) => None,
        _ => {
            return Err(ServerError::BadRequest(
                "give both expected_head_seq and expected_head_hash".into(),
            ));
        }
    };
    Ok(Json(s.store.verify_audit(head).await?))
}

#[utoipa::path(post, path = "/v1/admin/audit/checkpoint", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Checkpoint), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(super) async fn checkpoint(
    State(s): State<AppState>,
    Admin(p): Admin,
) -> ServerResult<Json<Checkpoint>> {
    Ok(Json(Checkpoint { seq: s.store.audit_checkpoint(&p).await? }))
}

#[utoipa::path(post, path = "/v1/admin/issuers/{issuer}/issuances", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path)), request_body = StartIssuance,
    responses((status = 201, body = Issuance, description = "Relay the session's APDUs to a blank card"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The card id exists or has a live session")))]
pub(super) async fn start_issuance(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path(issuer): Path<String>,
    JsonBody(req): JsonBody<StartIssuance>,
) -> ServerResult<(StatusCode, Json<Issuance>)> {
    Ok((StatusCode::CREATED, Json(s.store.start_issuance(&p, &issuer, &req).await?)))
}
