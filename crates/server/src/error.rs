//! The one error type of the server's operations, and its HTTP form.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::DbError;

/// Seconds a client is told to wait when the database is unavailable.
pub const RETRY_AFTER_SECS: u32 = 5;

/// Why an operation failed. Every variant leaves the database unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The request is malformed or invalid.
    #[error("{0}")]
    BadRequest(String),
    /// No valid bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// The token is valid but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// The thing does not exist (or belongs to another issuer).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The resource existed but is over (expired or finished session).
    #[error("{0}")]
    Gone(String),
    /// Too many requests.
    #[error("{0}")]
    TooManyRequests(String),
    /// The database cannot be reached; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or corrupted data.
    #[error("{0}")]
    Internal(String),
}

impl ServerError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ServerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServerError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ServerError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServerError::NotFound(_) => StatusCode::NOT_FOUND,
            ServerError::Conflict(_) => StatusCode::CONFLICT,
            ServerError::Gone(_) => StatusCode::GONE,
            ServerError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ServerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServerError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ServerError::BadRequest(_) => "bad_request",
            ServerError::Unauthorized(_) => "unauthorized",
            ServerError::Forbidden(_) => "forbidden",
            ServerError::NotFound(_) => "not_found",
            ServerError::Conflict(_) => "conflict",
            ServerError::Gone(_) => "gone",
            ServerError::TooManyRequests(_) => "too_many_requests",
            ServerError::Unavailable(_) => "unavailable",
            ServerError::Internal(_) => "internal",
        }
    }
}

impl From<DbError> for ServerError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) => ServerError::Unavailable(m),
            DbError::Constraint(m) => ServerError::Conflict(m),
            DbError::Data(m) | DbError::Other(m) => ServerError::Internal(m),
        }
    }
}

/// Result of a server operation.
pub type ServerResult<T> = Result<T, ServerError>;

/// The JSON body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code (`not_found`, `conflict`, `unavailable`…).
    pub error: String,
    /// What went wrong, for a human.
    pub message: String,
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(code = self.code(), error = %self, "request failed");
        }
        // Internal details stay in the log.
        let message = match &self {
            ServerError::Internal(_) => "internal error (see the server log)".to_owned(),
            ServerError::Unavailable(_) => "database unavailable, retry later".to_owned(),
            other => other.to_string(),
        };
        let mut resp = (status, axum::Json(ErrorBody { error: self.code().to_owned(), message }))
            .into_response();
        match self {
            ServerError::Unavailable(_) => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            ServerError::Unauthorized(_) => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}
