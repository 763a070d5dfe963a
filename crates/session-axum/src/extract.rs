//! Extractors over the layer's [`Session`].

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use session_core::{SessionToken, UserSession};

use crate::error::ApiError;
use crate::session::Session;

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Session>().cloned().ok_or_else(|| {
            tracing::error!("a route extracts the session but SessionLayer is not installed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the service could not complete the request",
            )
        })
    }
}

/// The signed-in session (from the bearer token or the cookie, touched) and the token that names
/// it; a JSON 401 when there is none. Needs [`crate::SessionLayer`].
#[derive(Debug, Clone)]
pub struct CurrentSession {
    /// The session, as the touch left it.
    pub session: UserSession,
    /// The token that names the session now: the one the request presented, or one a handler
    /// earlier in this request was issued (sign-in, rotation).
    pub token: SessionToken,
}

impl<S: Send + Sync> FromRequestParts<S> for CurrentSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        <Self as OptionalFromRequestParts<S>>::from_request_parts(parts, state)
            .await?
            .ok_or_else(ApiError::unauthenticated)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for CurrentSession {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        let handle = <Session as FromRequestParts<S>>::from_request_parts(parts, state).await?;
        Ok(handle
            .current_with_token()
            .await?
            .map(|(session, token)| Self { session, token }))
    }
}

/// An optional [`CurrentSession`]: `None` when no token, or an invalid or unknown one, is
/// presented; a store failure is still an error (503).
#[derive(Debug, Clone)]
pub struct MaybeSession(pub Option<CurrentSession>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        <CurrentSession as OptionalFromRequestParts<S>>::from_request_parts(parts, state)
            .await
            .map(Self)
    }
}
