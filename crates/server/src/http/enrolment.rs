//! Enrolment endpoints (bearer token of the issuer): a challenge, then a certificate for a
//! card or terminal key that proves possession over it (see [`crate::store::enrolment`]).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};

use super::{Admin, AppState, JsonBody};
use crate::error::{ErrorBody, ServerResult};
use crate::store::enrolment::{EnrolledCertificate, EnrolmentChallenge, EnrolmentRequest};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/issuers/{issuer}/enrolment/challenges", post(enrolment_challenge))
        .route("/v1/admin/issuers/{issuer}/enrolment/certificates", post(enrol))
}

#[utoipa::path(post, path = "/v1/admin/issuers/{issuer}/enrolment/challenges", tag = "admin",
    security(("bearer" = [])), params(("issuer" = String, Path)),
    responses((status = 201, body = EnrolmentChallenge, description = "Single-use, for this token"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn enrolment_challenge(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path(issuer): Path<String>,
) -> ServerResult<(StatusCode, Json<EnrolmentChallenge>)> {
    Ok((StatusCode::CREATED, Json(s.store.enrolment_challenge(&p, &issuer).await?)))
}

#[utoipa::path(post, path = "/v1/admin/issuers/{issuer}/enrolment/certificates", tag = "admin",
    security(("bearer" = [])), params(("issuer" = String, Path)), request_body = EnrolmentRequest,
    responses((status = 201, body = EnrolledCertificate),
        (status = 400, body = ErrorBody, description = "Bad role, unknown or used challenge, proof does not verify"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn enrol(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path(issuer): Path<String>,
    JsonBody(req): JsonBody<EnrolmentRequest>,
) -> ServerResult<(StatusCode, Json<EnrolledCertificate>)> {
    Ok((StatusCode::CREATED, Json(s.store.enrol(&p, &issuer, &req).await?)))
}
