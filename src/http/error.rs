//! The one error type of the shim's JSON routes: every refusal is a status and a message,
//! answered as `{"error": message}`, body-limit and body-read rejections included.
//!
//! Must never put a secret, a token or a request body into a message; an internal or
//! database failure is logged here and answered with a fixed text.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::connection::BodyTimedOut;
use super::ingest::IngestError;

/// The body of every refusal: `{"error": "what is wrong"}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What is wrong, for a person to read (never a secret or the request's body).
    pub error: String,
}

/// Why the shim refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 401: no valid bearer token.
    Unauthorized,
    /// 401: no token is configured at all, so none can be valid; the message names the
    /// setting.
    NoTokenConfigured(&'static str),
    /// 401: a webhook whose signature, timestamp or token does not verify.
    Forged(String),
    /// 400: a body that cannot be read as the provider's format.
    Malformed(String),
    /// 403: a valid token that may not do this (another kind, another tenant).
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 409: the request conflicts with the row's state (cancel a finished job, replay a
    /// dead letter twice).
    Conflict(String),
    /// 422: a well-formed request the queue cannot take (unknown kind, bad field).
    Invalid(String),
    /// 415: a body declared as something other than JSON.
    UnsupportedMediaType(String),
    /// Any other status met while reading the body (413 over `max_body`, 408 past
    /// `body_timeout`, ...).
    Body(StatusCode, String),
    /// 503: the database is away; the client should retry.
    Unavailable,
    /// 503: a statement ran past its `statement_timeout` (a lock held by a long
    /// transaction elsewhere, or a read too broad); retry, or narrow the request.
    TimedOut,
    /// 500: a bug of ours; details are in the log only.
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized | ApiError::NoTokenConfigured(_) | ApiError::Forged(_) => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Malformed(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Body(status, _) => *status,
            ApiError::Unavailable | ApiError::TimedOut => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> &str {
        match self {
            ApiError::Unauthorized => "missing or invalid bearer token",
            ApiError::NoTokenConfigured(m) => m,
            ApiError::Forged(m)
            | ApiError::Malformed(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Invalid(m)
            | ApiError::UnsupportedMediaType(m)
            | ApiError::Body(_, m) => m,
            ApiError::Unavailable => "database unavailable, retry later",
            ApiError::TimedOut => {
                "the database did not answer within [admin] statement_timeout: a long \
                 transaction may hold a lock this needs, or the request reads too much; \
                 retry, or narrow the request"
            }
            ApiError::Internal => "internal error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(json!({ "error": self.message() }))).into_response()
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Unavailable(m) => {
                tracing::warn!(error = %m, "database unavailable; answering 503");
                ApiError::Unavailable
            }
            IngestError::Rejected(m) => ApiError::Invalid(m),
            IngestError::Internal(m) => {
                tracing::error!(error = %m, "ingest failed");
                ApiError::Internal
            }
        }
    }
}

/// A storage error as the admin API answers it: not found 404, conflict 409, a refused
/// value 422, the database away 503, anything else 500 (logged).
impl From<crate::queue::Error> for ApiError {
    fn from(e: crate::queue::Error) -> Self {
        use crate::queue::Error as E;
        match e {
            E::NotFound { .. } => ApiError::NotFound(e.to_string()),
            E::Conflict(m) => ApiError::Conflict(m),
            E::Invalid(m) => ApiError::Invalid(m),
            other if other.is_statement_timeout() => {
                tracing::warn!(error = %other, "an admin statement timed out; answering 503");
                ApiError::TimedOut
            }
            other => IngestError::from(other).into(),
        }
    }
}

/// A body axum could not read: over `max_body` (413), not complete within `body_timeout`
/// (408), or cut off mid-way (400).
impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&r);
        while let Some(e) = cause {
            if let Some(timed_out) = e.downcast_ref::<BodyTimedOut>() {
                return ApiError::Body(StatusCode::REQUEST_TIMEOUT, timed_out.to_string());
            }
            cause = e.source();
        }
        ApiError::Body(r.status(), r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_error_is_answered_as_json_with_its_status() {
        for (e, status, message) in [
            (
                ApiError::Unauthorized,
                401,
                "missing or invalid bearer token",
            ),
            (
                ApiError::Invalid("kind: unknown".into()),
                422,
                "kind: unknown",
            ),
            (
                ApiError::Body(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "length limit exceeded".into(),
                ),
                413,
                "length limit exceeded",
            ),
            (
                ApiError::Unavailable,
                503,
                "database unavailable, retry later",
            ),
            (
                ApiError::UnsupportedMediaType("send the job as JSON".into()),
                415,
                "send the job as JSON",
            ),
            (ApiError::Internal, 500, "internal error"),
            (
                ApiError::Conflict("job 1 is completed".into()),
                409,
                "job 1 is completed",
            ),
            (
                ApiError::NoTokenConfigured("no token is configured"),
                401,
                "no token is configured",
            ),
        ] {
            let response = e.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(
                response.headers()["content-type"],
                "application/json",
                "{status}"
            );
            let body = axum::body::to_bytes(response.into_body(), 1024)
                .await
                .unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body, json!({ "error": message }));
        }
    }
}
