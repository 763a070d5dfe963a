//! axum integration for [`session_manager::SessionManager`].
//!
//! - [`CurrentSession`]: the signed-in session, from `Authorization: Bearer <token>` or the session
//!   cookie; touched on every request (throttled by the policy); a missing, malformed or unknown
//!   token is a JSON 401.
//! - [`MaybeSession`]: the same, optional.
//! - [`SessionCookies`]: the cookie, with safe defaults (HttpOnly, Secure, SameSite=Lax, Path=/).
//! - [`ApiError`]: [`SessionError`] mapped to HTTP statuses and a JSON body that never carries a
//!   token or an internal detail.
//! - [`shutdown_signal`]: Ctrl-C or SIGTERM, for `axum::serve(..).with_graceful_shutdown(..)`.
//!
//! Handlers reach the manager through [`SessionState`], which the router state must provide via
//! `FromRef`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRef, FromRequest, FromRequestParts, OptionalFromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use serde::Serialize;
use serde::de::DeserializeOwned;
use session_core::{SessionError, SessionToken, UserSession};
use session_manager::SessionManager;

/// How the session cookie is written.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SessionCookies {
    /// The cookie's name. Default `session`.
    pub name: String,
    /// Send it over HTTPS only. Default `true`; turn off only for local plain-HTTP development.
    pub secure: bool,
    /// The `SameSite` attribute. Default `Lax`.
    pub same_site: SameSite,
    /// The cookie's path. Default `/`.
    pub path: String,
}

impl Default for SessionCookies {
    fn default() -> Self {
        Self {
            name: "session".to_owned(),
            secure: true,
            same_site: SameSite::Lax,
            path: "/".to_owned(),
        }
    }
}

impl SessionCookies {
    /// Sets whether the cookie is `Secure` (keep it on outside local plain-HTTP development).
    #[must_use]
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// Sets the cookie's name.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The `Set-Cookie` value carrying `token`, living until the session's absolute expiry
    /// (the server enforces the idle expiry itself).
    #[must_use]
    pub fn set(&self, token: &SessionToken, session: &UserSession) -> HeaderValue {
        let seconds = session
            .absolute_expires_at
            .duration_since(SystemTime::now())
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let cookie = Cookie::build((self.name.clone(), token.expose_secret().to_owned()))
            .http_only(true)
            .secure(self.secure)
            .same_site(self.same_site)
            .path(self.path.clone())
            .max_age(time::Duration::seconds(seconds))
            .build();
        // A token is base64url and the attributes are ASCII, so this is always a valid header.
        HeaderValue::from_str(&cookie.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The `Set-Cookie` value that removes the cookie.
    #[must_use]
    pub fn clear(&self) -> HeaderValue {
        let cookie = Cookie::build((self.name.clone(), ""))
            .http_only(true)
            .secure(self.secure)
            .same_site(self.same_site)
            .path(self.path.clone())
            .max_age(time::Duration::ZERO)
            .build();
        HeaderValue::from_str(&cookie.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Adds `Set-Cookie: value` to `response`.
    pub fn apply(response: &mut Response, value: HeaderValue) {
        response.headers_mut().append(SET_COOKIE, value);
    }
}

/// What the extractors need from the router state.
#[derive(Clone, Debug)]
pub struct SessionState {
    /// The manager.
    pub manager: Arc<SessionManager>,
    /// How the cookie is written and read.
    pub cookies: Arc<SessionCookies>,
}

/// An error as an HTTP response: a status and `{"error": code, "message": text}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
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

/// The signed-in session and its token. Extracting it touches the session.
#[derive(Debug, Clone)]
pub struct CurrentSession {
    /// The session, as the touch left it.
    pub session: UserSession,
    /// The token the request presented.
    pub token: SessionToken,
}

/// The raw token a request presents: the bearer token if there is one, else the cookie.
fn presented_token<'a>(parts: &'a Parts, jar: &'a CookieJar, cookie: &str) -> Option<&'a str> {
    if let Some(value) = parts.headers.get(AUTHORIZATION) {
        return value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
    }
    jar.get(cookie).map(Cookie::value)
}

async fn extract(parts: &Parts, state: &SessionState) -> Result<Option<CurrentSession>, ApiError> {
    let jar = CookieJar::from_headers(&parts.headers);
    let Some(raw) = presented_token(parts, &jar, &state.cookies.name) else {
        return Ok(None);
    };
    let token = SessionToken::parse(raw)?;
    let session = state.manager.sessions().touch(&token).await?;
    Ok(session.map(|session| CurrentSession { session, token }))
}

impl<S> FromRequestParts<S> for CurrentSession
where
    SessionState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        extract(parts, &SessionState::from_ref(state))
            .await?
            .ok_or_else(ApiError::unauthenticated)
    }
}

/// An optional [`CurrentSession`]: `None` when no token, or an invalid or unknown one, is presented.
#[derive(Debug, Clone)]
pub struct MaybeSession(pub Option<CurrentSession>);

impl<S> FromRequestParts<S> for MaybeSession
where
    SessionState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match extract(parts, &SessionState::from_ref(state)).await {
            Ok(found) => Ok(Self(found)),
            Err(e) if e.status == StatusCode::UNAUTHORIZED => Ok(Self(None)),
            Err(e) => Err(e),
        }
    }
}

impl<S> OptionalFromRequestParts<S> for CurrentSession
where
    SessionState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        <MaybeSession as FromRequestParts<S>>::from_request_parts(parts, state)
            .await
            .map(|m| m.0)
    }
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM: pass it to `with_graceful_shutdown`, then call
/// [`SessionManager::shutdown`].
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_http_only_secure_lax_and_scoped_by_default() {
        let policy = session_core::SessionPolicy::default();
        let token = SessionToken::generate().unwrap();
        let session = session_core::NewUserSession::new("u")
            .into_session(&token, &policy)
            .unwrap();
        let set = SessionCookies::default().set(&token, &session);
        let text = set.to_str().unwrap();
        for part in [
            "session=",
            "HttpOnly",
            "Secure",
            "SameSite=Lax",
            "Path=/",
            "Max-Age=",
        ] {
            assert!(text.contains(part), "{text}");
        }
        let local = SessionCookies::default()
            .secure(false)
            .set(&token, &session);
        assert!(!local.to_str().unwrap().contains("Secure"));
        assert!(
            SessionCookies::default()
                .clear()
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
    }

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
