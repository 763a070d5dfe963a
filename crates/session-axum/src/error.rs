//! Errors as HTTP responses, in one JSON shape.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::RETRY_AFTER;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use session_core::{ErrorChain, SessionError};

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
            // The session a request acts on is gone (revoked, expired, rotated away): the client
            // must sign in again, whatever the route.
            SessionError::NotFound => StatusCode::UNAUTHORIZED,
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
            StatusCode::BAD_REQUEST => "invalid_input",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::CONFLICT => "conflict",
            StatusCode::NOT_IMPLEMENTED => "unsupported",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "internal",
        };
        // Client errors say what is wrong; server errors are logged and not described.
        let message = if status.is_server_error() {
            // With its source chain (the driver's cause), whatever the subscriber.
            tracing::error!(error = %ErrorChain(&err), "request failed");
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

/// `axum::extract::Path<T>` whose rejection (a segment that is not valid percent-encoded UTF-8 or
/// not a `T`: 400) is an [`ApiError`] rather than axum's plain text.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonPath<T>(pub T);

impl<T, S> FromRequestParts<S> for JsonPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(value) = axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(|rejection: PathRejection| {
                if rejection.status().is_server_error() {
                    // The route and the extractor disagree: the service's fault, not described.
                    tracing::error!(error = %rejection.body_text(), "path extraction failed");
                    return ApiError::new(
                        rejection.status(),
                        "internal",
                        "the service could not complete the request",
                    );
                }
                ApiError::new(rejection.status(), "invalid_path", rejection.body_text())
            })?;
        Ok(Self(value))
    }
}

impl ApiError {
    /// 404 for a route that does not exist: use as the router's `fallback`.
    #[must_use]
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// 405 for a route that exists without this method: use as `method_not_allowed_fallback`.
    #[must_use]
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take this method",
        )
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
            (SessionError::NotFound, StatusCode::UNAUTHORIZED),
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

    #[test]
    fn a_server_error_is_logged_with_its_source_chain() {
        #[derive(Clone, Default)]
        struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let cause = std::io::Error::other("invalid byte sequence for encoding UTF8: 0x00");
            let api = ApiError::from(SessionError::Backend {
                backend: "db",
                source: Box::new(cause),
            });
            assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
        });
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("db error"), "{log}");
        assert!(
            log.contains("invalid byte sequence"),
            "the cause is logged: {log}"
        );
    }
}
