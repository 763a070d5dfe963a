//! Recent authentication: a route that needs the password entered lately.

use std::time::{Duration, SystemTime};

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::extract::CurrentSession;
use crate::session::Session;

/// The signed-in session, only if its user proved who they are (signed in, or re-entered the
/// password with [`Session::reauthenticate`]) within the layer's bound
/// ([`crate::SessionLayer::with_recent_auth`], default 10 minutes) by the store's policy clock.
/// Put it on sensitive routes (revoking other sessions, changing the e-mail address): a session
/// left open on a shared computer, or a stolen cookie, cannot use them without the password.
///
/// ```
/// use session_axum::RecentAuth;
/// async fn delete_account(RecentAuth(current): RecentAuth) { let _ = current.session; }
/// ```
#[derive(Debug, Clone)]
pub struct RecentAuth(pub CurrentSession);

/// The bound [`RecentAuth`] enforces unless the layer is told another.
pub const DEFAULT_RECENT_AUTH: Duration = Duration::from_secs(10 * 60);

/// Why [`RecentAuth`] refused: no session at all, or one whose authentication is too old.
#[derive(Debug)]
#[non_exhaustive]
pub enum RecentAuthRejection {
    /// No live session (401), or the store failed: as [`CurrentSession`] answers.
    SignedOut(ApiError),
    /// Signed in, but the password was last entered longer ago than the bound (403,
    /// `reauthentication_required`): send the user to enter it again.
    Stale {
        /// When the user last proved who they are.
        authenticated_at: SystemTime,
        /// The bound the route asked for.
        max_age: Duration,
    },
}

impl IntoResponse for RecentAuthRejection {
    fn into_response(self) -> Response {
        match self {
            Self::SignedOut(error) => error.into_response(),
            Self::Stale { max_age, .. } => ApiError::new(
                StatusCode::FORBIDDEN,
                "reauthentication_required",
                format!(
                    "enter your password again: this needs a sign-in within the last {}",
                    humanize(max_age)
                ),
            )
            .into_response(),
        }
    }
}

fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(60) && secs >= 60 {
        let minutes = secs / 60;
        format!("{minutes} minute{}", if minutes == 1 { "" } else { "s" })
    } else {
        format!("{secs} second{}", if secs == 1 { "" } else { "s" })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RecentAuth {
    type Rejection = RecentAuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let current = <CurrentSession as FromRequestParts<S>>::from_request_parts(parts, state)
            .await
            .map_err(RecentAuthRejection::SignedOut)?;
        let session = <Session as FromRequestParts<S>>::from_request_parts(parts, state)
            .await
            .map_err(RecentAuthRejection::SignedOut)?;
        let policy = session.store().policy();
        let max_age = session.recent_auth_bound();
        if current.session.authentication_age(policy) > max_age {
            return Err(RecentAuthRejection::Stale {
                authenticated_at: current.session.authenticated_at,
                max_age,
            });
        }
        Ok(Self(current))
    }
}

/// `Option<RecentAuth>`: `None` for a signed-in session whose authentication is too old (so a
/// handler can offer the password form); a request with no session at all is still refused
/// (401), unlike `Option<CurrentSession>`.
impl<S: Send + Sync> OptionalFromRequestParts<S> for RecentAuth {
    type Rejection = RecentAuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        match <Self as FromRequestParts<S>>::from_request_parts(parts, state).await {
            Ok(recent) => Ok(Some(recent)),
            Err(RecentAuthRejection::Stale { .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }
}
