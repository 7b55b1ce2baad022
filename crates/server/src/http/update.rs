//! Update endpoints (bearer token, issue 5): queue an update for a card, list its queue.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};

use super::{Admin, AppState, JsonBody};
use crate::error::{ErrorBody, ServerResult};
use crate::store::sessions::TunnelStep;
use crate::store::update::schedule::{ScheduleEntry, ScheduleUpdate};
use crate::store::update::{
    CreateUpdateSession, IssuerListBody, LegacyStaticBody, QueueUpdate, QueuedUpdate, UpdateEntry,
};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/admin/issuers/{issuer}/cards/{card}/updates",
            get(list_updates).post(queue_update),
        )
        .route("/v1/issuers/{issuer}/update/issuer-list", get(issuer_list))
        .route("/v1/issuers/{issuer}/update/sessions", axum::routing::post(create_update_session))
        .route(
            "/v1/admin/issuers/{issuer}/cards/{card}/update-schedules",
            get(list_schedules).post(schedule_update),
        )
        .route(
            "/v1/admin/issuers/{issuer}/cards/{card}/update-schedules/{object}",
            axum::routing::delete(unschedule_update),
        )
        .route(
            "/v1/admin/issuers/{issuer}/cards/{card}/update-legacy-static",
            axum::routing::put(set_legacy_static),
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

#[utoipa::path(get, path = "/v1/issuers/{issuer}/update/issuer-list", tag = "pki",
    params(("issuer" = String, Path)),
    responses((status = 200, body = IssuerListBody), (status = 404, body = ErrorBody)))]
pub(super) async fn issuer_list(
    State(s): State<AppState>,
    Path(issuer): Path<String>,
) -> ServerResult<Json<IssuerListBody>> {
    Ok(Json(s.store.update_issuer_list(&issuer).await?))
}

/// Opens an update-only session in the privacy variant (claim 9): no card named; the answer
/// holds SELECT update and DEVICE AUTHENTICATE with the session's key; continue with
/// `/v1/sessions/{id}/exchange`.
#[utoipa::path(post, path = "/v1/issuers/{issuer}/update/sessions", tag = "tunnel",
    params(("issuer" = String, Path)), request_body = CreateUpdateSession,
    responses((status = 201, body = TunnelStep), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn create_update_session(
    State(s): State<AppState>,
    Path(issuer): Path<String>,
    JsonBody(req): JsonBody<CreateUpdateSession>,
) -> ServerResult<(axum::http::StatusCode, Json<TunnelStep>)> {
    let step = s.store.create_update_session(&issuer, &req).await?;
    Ok((axum::http::StatusCode::CREATED, Json(step)))
}

#[utoipa::path(post, path = "/v1/admin/issuers/{issuer}/cards/{card}/update-schedules", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path), ("card" = String, Path)), request_body = ScheduleUpdate,
    responses((status = 200, body = ScheduleEntry), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn schedule_update(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path((issuer, card)): Path<(String, String)>,
    JsonBody(req): JsonBody<ScheduleUpdate>,
) -> ServerResult<Json<ScheduleEntry>> {
    Ok(Json(s.store.update_schedule(&p, &issuer, &card, &req).await?))
}

#[utoipa::path(get, path = "/v1/admin/issuers/{issuer}/cards/{card}/update-schedules", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path), ("card" = String, Path)),
    responses((status = 200, body = Vec<ScheduleEntry>), (status = 401, body = ErrorBody)))]
pub(super) async fn list_schedules(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path((issuer, card)): Path<(String, String)>,
) -> ServerResult<Json<Vec<ScheduleEntry>>> {
    Ok(Json(s.store.update_schedules(&p, &issuer, &card).await?))
}

#[utoipa::path(delete, path = "/v1/admin/issuers/{issuer}/cards/{card}/update-schedules/{object}", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path), ("card" = String, Path), ("object" = String, Path)),
    responses((status = 200, body = serde_json::Value), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn unschedule_update(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path((issuer, card, object)): Path<(String, String, String)>,
) -> ServerResult<Json<serde_json::Value>> {
    s.store.update_unschedule(&p, &issuer, &card, &object).await?;
    Ok(Json(serde_json::json!({ "card_id": card, "object": object, "unscheduled": true })))
}

/// Registers (or removes, `null`) the static authenticator personalised into a legacy card
/// (claim 10): only then can a `legacy-static` session authenticate it. Replayable by design.
#[utoipa::path(put, path = "/v1/admin/issuers/{issuer}/cards/{card}/update-legacy-static", tag = "admin", security(("bearer" = [])),
    params(("issuer" = String, Path), ("card" = String, Path)), request_body = LegacyStaticBody,
    responses((status = 200, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn set_legacy_static(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path((issuer, card)): Path<(String, String)>,
    JsonBody(req): JsonBody<LegacyStaticBody>,
) -> ServerResult<Json<serde_json::Value>> {
    let value = req.value()?;
    s.store.update_set_legacy_static(&p, &issuer, &card, value).await?;
    Ok(Json(serde_json::json!({ "card_id": card, "legacy_static": value.is_some() })))
}
