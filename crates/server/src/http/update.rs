//! Update endpoints (bearer token, issue 5): queue an update for a card, list its queue.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};

use super::{Admin, AppState, JsonBody};
use crate::error::{ErrorBody, ServerResult};
use crate::store::update::{QueueUpdate, QueuedUpdate, UpdateEntry};

pub(super) fn routes() -> Router<AppState> {
    Router::new().route(
        "/v1/admin/issuers/{issuer}/cards/{card}/updates",
        get(list_updates).post(queue_update),
    )
}

#[utoipa::path(post, path = "/v1/admin/issuers/{issuer}/cards/{card}/updates", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path), ("card" = String, Path)), request_body = QueueUpdate,
    responses((status = 200, body = QueuedUpdate), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn queue_update(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path((issuer, card)): Path<(String, String)>,
    JsonBody(req): JsonBody<QueueUpdate>,
) -> ServerResult<Json<QueuedUpdate>> {
    Ok(Json(s.store.queue_update(&p, &issuer, &card, &req).await?))
}

#[utoipa::path(get, path = "/v1/admin/issuers/{issuer}/cards/{card}/updates", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path), ("card" = String, Path)),
    responses((status = 200, body = Vec<UpdateEntry>), (status = 401, body = ErrorBody)))]
pub(super) async fn list_updates(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path((issuer, card)): Path<(String, String)>,
) -> ServerResult<Json<Vec<UpdateEntry>>> {
    Ok(Json(s.store.list_updates(&p, &issuer, &card).await?))
}
