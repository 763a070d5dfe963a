//! Errors as HTTP responses, in one JSON shape.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use session_core::SessionError;

/// An error as an HTTP response: a status and `{"error": code, "message": text}`.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    code: &'static str,
    pub(crate) message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    /// A response with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 401: no usable session.
    #[must_use]
    pub fn unauthenticated() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", "sign in first")
    }

    /// 403: signed in, but not allowed.
    #[must_use]
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// The status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<SessionError> for ApiError {
    fn from(err: SessionError) -> Self {
        let status = match &err {
            SessionError::InvalidToken { .. } => StatusCode::UNAUTHORIZED,
            SessionError::NotFound => StatusCode::NOT_FOUND,
            SessionError::InvalidInput { .. } => StatusCode::BAD_REQUEST,
            SessionError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            SessionError::Conflict { .. } => StatusCode::CONFLICT,
            SessionError::Unsupported { .. } => StatusCode::NOT_IMPLEMENTED,
            e if e.is_temporary() => StatusCode::SERVICE_UNAVAILABLE,
            SessionError::Closed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = match status {
            StatusCode::UNAUTHORIZED => "invalid_session",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::BAD_REQUEST => "invalid_input",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::CONFLICT => "conflict",
            StatusCode::NOT_IMPLEMENTED => "unsupported",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "internal",
        };
        // Client errors say what is wrong; server errors are logged and not described.
        let message = if status.is_server_error() {
            tracing::error!(error = %err, "request failed");
            "the service could not complete the request".to_owned()
        } else {
            err.to_string()
        };
        Self {
            status,
            code,
            message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(ErrorBody {
            error: self.code,
            message: &self.message,
        });
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::new(rejection.status(), "invalid_body", rejection.body_text())
    }
}

/// `axum::Json<T>` whose rejection (a malformed or mistyped body: 400, 415 or 422) is an
/// [`ApiError`], so every error a client sees has the same JSON shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_statuses_without_internal_detail() {
        let cases = [
            (
                SessionError::InvalidToken {
                    reason: "too short",
                },
                StatusCode::UNAUTHORIZED,
            ),
            (SessionError::NotFound, StatusCode::NOT_FOUND),
            (
                SessionError::invalid_input("user_id", "must not be empty"),
                StatusCode::BAD_REQUEST,
            ),
            (
                SessionError::PayloadTooLarge {
                    what: "attributes",
                    size: 9,
                    limit: 1,
                },
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                SessionError::Conflict {
                    expected: 1,
                    actual: 2,
                },
                StatusCode::CONFLICT,
            ),
            (
                SessionError::Closed { backend: "redis" },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                SessionError::config("url", "bad"),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (err, status) in cases {
            let api = ApiError::from(err);
            assert_eq!(api.status, status);
            if status.is_server_error() {
                assert!(
                    !api.message.contains("url"),
                    "server errors are not described: {}",
                    api.message
                );
            }
        }
    }
}
