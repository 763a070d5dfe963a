//! axum integration: a tower layer that owns the session cookie.
//!
//! - [`SessionLayer`]: wrap the routes with it (`.layer(SessionLayer::new(manager.sessions().clone()))`).
//!   Every request gets a [`Session`]: a request-scoped handle to sign in, read (typed), insert,
//!   rotate and sign out. The layer writes `Set-Cookie` after the handler and clears a cookie that
//!   names no live session; a request whose handler never looks at the session costs no store call.
//! - [`CurrentSession`]: the signed-in session, from `Authorization: Bearer <token>` (APIs) or
//!   the cookie; a JSON 401 when there is none. [`MaybeSession`]: the same, optional.
//! - [`SessionCookies`]: the cookie, with safe defaults (HttpOnly, Secure, SameSite=Lax, Path=/).
//! - [`CsrfLayer`]: refuses cross-site unsafe requests (`Sec-Fetch-Site`/`Origin`) and
//!   cookie-authenticated ones without the session's CSRF token ([`Session::csrf_token`], in a
//!   header or a form field); bearer-authenticated API calls are exempt.
//! - [`RecentAuth`]: the session, only if its password was entered within the layer's bound;
//!   [`Session::reauthenticate`] records a fresh proof (and rotates the token).
//! - [`ClientInfo`] and [`TrustedProxies`]: the client's address (through trusted proxies'
//!   `X-Forwarded-For`) and device label, which [`Session::sign_in`] records in the session.
//! - [`ApiError`]: [`session_core::SessionError`] mapped to HTTP statuses and a JSON body that
//!   never carries a token or an internal detail; [`JsonBody`] and [`JsonPath`] give body and path
//!   rejections that shape, and [`ApiError::no_route`] / [`ApiError::method_not_allowed`] serve
//!   as the router's fallbacks.
//! - [`serve`] with [`ServerLimits`]: HTTP/1.1 with a header-read time-out (which also ends idle
//!   keep-alive connections), a whole-request time-out (408), body, target and header limits (413,
//!   414, 431), a connection cap and a write-stall time-out; every error is JSON, hyper's own
//!   refusals of heads it cannot parse included;
//!   [`shutdown_signal`]: Ctrl-C or SIGTERM, for it or `axum::serve(..).with_graceful_shutdown(..)`.
//!
//! It depends on `session-core` only: the store can come from `session-manager` or be built by hand.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod cookie;
mod csrf;
mod error;
mod extract;
mod layer;
mod recent;
mod refusals;
mod serve;
mod session;
mod shutdown;

pub use client::{ClientInfo, TrustedProxies, device_label};
pub use cookie::SessionCookies;
pub use csrf::{
    CSRF_FIELD, CSRF_HEADER, CsrfConfig, CsrfLayer, CsrfRejection, CsrfRenderer, CsrfService,
};
pub use error::{ApiError, JsonBody, JsonPath};
pub use extract::{CurrentSession, MaybeSession};
pub use layer::{SessionLayer, SessionService};
pub use recent::{DEFAULT_RECENT_AUTH, RecentAuth, RecentAuthRejection};
pub use serve::{ServerLimits, serve};
pub use session::{Session, Transport, csrf_token_for};
pub use shutdown::shutdown_signal;

/// Not part of the API; for the fuzz targets and property tests.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::session::presented;
}
