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
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

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
}

/// Builds the router with every route and middleware.
pub fn router(store: Store, limits: Limits) -> Router {
    let state = AppState {
        store,
        metrics: Arc::new(Metrics::new()),
        limiter: Arc::new(RateLimiter::new(limits.rate_per_sec, limits.burst)),
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
        .layer(axum::middleware::from_fn_with_state(state.clone(), limits::rate_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            Duration::from_secs(limits.request_timeout_secs),
            limits::timeout,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
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
