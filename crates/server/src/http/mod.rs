//! The HTTP API: an axum router over a [`Store`].
//!
//! - Tunnel (no token; the card proves itself in the protocol):
//!   `POST /v1/issuers/{issuer}/sessions`, `POST /v1/sessions/{id}/exchange`.
//! - Public: `GET /v1/issuers/{issuer}/crl`, `GET /healthz`, `GET /metrics`,
//!   `GET /openapi.json`.
//! - Admin (bearer token): everything under `/v1/admin/`.
//!
//! Every error is JSON ([`ErrorBody`]) with a clear status; `503` carries `Retry-After`.
//! Bodies are limited in size, requests in time and clients in rate ([`limits`]).

mod admin;
mod enrolment;
mod keyring;
pub mod limits;
mod metrics;
mod openapi;
mod tunnel;
mod update;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use tower_http::limit::RequestBodyLimitLayer;

pub use limits::{Limits, RateLimiter};
pub use metrics::Metrics;
pub use openapi::ApiDoc;

use crate::error::{ErrorBody, ServerError, ServerResult};
use crate::store::Store;
use crate::store::auth::Principal;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Per-client rate limiter.
    pub limiter: Arc<RateLimiter>,
    /// Longest a request may take ([`Limits::request_timeout_secs`]).
    pub request_timeout: Duration,
}

/// Builds the router with every route and middleware.
pub fn router(store: Store, limits: Limits) -> Router {
    let state = AppState {
        store,
        metrics: Arc::new(Metrics::new()),
        limiter: Arc::new(RateLimiter::new(limits.rate_per_sec, limits.burst)),
        request_timeout: Duration::from_secs(limits.request_timeout_secs),
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::handler))
        .route("/openapi.json", get(openapi::handler))
        .route("/v1/issuers/{issuer}/sessions", post(tunnel::create_session))
        .route("/v1/sessions/{id}/exchange", post(tunnel::exchange))
        .route("/v1/issuers/{issuer}/crl", get(admin::crl))
        .merge(admin::routes())
        .merge(enrolment::routes())
        .merge(keyring::routes())
        .merge(update::routes())
        .merge(crate::vault::http::routes())
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Middleware around every request, in one layer (each layer costs every request a boxed
/// clone of the service below it and a boxed future): the client's rate limit and the time
/// limit ([`limits`]), the metrics ([`metrics`]) and a log event (`debug`; `error` for a
/// `5xx`). A request over its time is answered `503` (its transaction, if any, is dropped and
/// so rolled back).
async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let resp = match limits::over_rate(&state.limiter, &req, start) {
        Some(refused) => refused,
        None => match tokio::time::timeout(state.request_timeout, next.run(req)).await {
            Ok(resp) => resp,
            Err(_) => ServerError::Unavailable("request timed out".into()).into_response(),
        },
    };
    let elapsed = start.elapsed();
    let status = resp.status();
    state.metrics.observe(&method, route.as_deref(), status, elapsed);
    let route = route.as_deref().unwrap_or("unmatched");
    if status.is_server_error() {
        tracing::error!(%method, route, status = status.as_u16(), ?elapsed, "request failed");
    } else {
        tracing::debug!(%method, route, status = status.as_u16(), ?elapsed, "request");
    }
    resp
}

async fn not_found() -> ServerError {
    ServerError::NotFound("no such endpoint".into())
}

/// Health of the process and its database.
#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// `ok`, or why the database is not.
    pub database: String,
}

/// Liveness and database reachability.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
async fn healthz(State(state): State<AppState>) -> ServerResult<axum::Json<Health>> {
    state.store.db().ping().await?;
    Ok(axum::Json(Health { status: "ok".into(), database: "ok".into() }))
}

/// A JSON body whose rejection (malformed JSON, wrong type, too large) is a JSON error.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> Response {
    let status = r.status();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "bad_request",
    };
    (status, axum::Json(ErrorBody { error: code.into(), message: r.body_text() })).into_response()
}

/// The caller of an admin endpoint, from its `Authorization: Bearer` token.
pub struct Admin(pub Principal);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ServerError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ServerError::Unauthorized("missing Authorization: Bearer token".into())
        })?;
        let token =
            value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(|| {
                ServerError::Unauthorized("Authorization must be 'Bearer <token>'".into())
            })?;
        state.store.authenticate(token.trim()).await.map(Admin)
    }
}
