//! Tunnel endpoints: the terminal relays APDUs between the card and the server.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::{AppState, JsonBody};
use crate::error::{ErrorBody, ServerResult};
use crate::store::sessions::{CreateSession, Exchange, SessionOptions, TunnelStep};

/// Opens a session with a card of this issuer; the answer holds the first APDUs.
#[utoipa::path(post, path = "/v1/issuers/{issuer}/sessions", tag = "tunnel",
    params(("issuer" = String, Path, description = "Issuer id"), SessionOptions),
    request_body = CreateSession,
    responses(
        (status = 201, body = TunnelStep, description = "Session opened; send `apdus` to the card"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody, description = "Card revoked"),
        (status = 404, body = ErrorBody, description = "Unknown issuer or card"),
        (status = 409, body = ErrorBody, description = "The card has another live session"),
        (status = 503, body = ErrorBody)))]
pub async fn create_session(
    State(state): State<AppState>,
    Path(issuer): Path<String>,
    Query(options): Query<SessionOptions>,
    JsonBody(req): JsonBody<CreateSession>,
) -> ServerResult<(StatusCode, Json<TunnelStep>)> {
    let step = state.store.create_session_with(&issuer, &req, options).await?;
    Ok((StatusCode::CREATED, Json(step)))
}

/// Posts the card's responses to one step; the answer is the next step. Posting the same
/// responses again returns the same answer.
#[utoipa::path(post, path = "/v1/sessions/{id}/exchange", tag = "tunnel",
    params(("id" = String, Path, description = "Session id")),
    request_body = Exchange,
    responses(
        (status = 200, body = TunnelStep),
        (status = 400, body = ErrorBody, description = "Malformed responses"),
        (status = 403, body = ErrorBody, description = "Card revoked"),
        (status = 404, body = ErrorBody, description = "Unknown session, or the card is unknown to this issuer"),
        (status = 409, body = ErrorBody, description = "Responses for another step, a replay with other responses, or the card is busy"),
        (status = 410, body = ErrorBody, description = "Session expired or finished"),
        (status = 503, body = ErrorBody)))]
pub async fn exchange(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<Exchange>,
) -> ServerResult<impl IntoResponse> {
    // A `TunnelStep`, serialised once: as the session row keeps it.
    let answer = state.store.exchange_json(&id, &req).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], answer))
}
