//! Contracts, policy, tokens, errors and layers shared by every session backend.
//!
//! Building a service? Start with the `session-manager` crate (`SessionManager::build` from
//! configuration, or `SessionManager::builder()` for stores made by hand) and put the
//! `session-axum` crate's `SessionLayer` in front of your routes; this crate holds what they share.
//!
//! Two kinds of session share one policy and one error type here:
//! - the **user session** ([`UserSessionStore`]): who is signed in, as whom, until when;
//! - the **database session** ([`DbSessionProvider`]): a pooled connection with a transaction scope.
//!
//! ```
//! use session_core::{NewUserSession, SessionPolicy, SessionToken};
//! let token = SessionToken::generate()?;               // 256 bits from the OS CSPRNG
//! let session = NewUserSession::new("u-42").email("a@example.com")
//!     .into_session(&token, &SessionPolicy::default())?;
//! assert_eq!(&session.handle, token.handle());          // stores key by this hash, never the token
//! # Ok::<(), session_core::SessionError>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod clock;
pub mod db;
pub mod error;
pub mod ext;
pub mod instrument;
pub mod migrate;
pub mod policy;
pub mod pool;
mod random;
pub mod retry;
pub mod session;
pub mod store;
pub mod token;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use db::{
    DbSessionProvider, IsolationLevel, PoolConfig, PoolState, ScopeError, ScopeFn, ScopeOptions,
};
pub use error::{BoxError, ErrorChain, Result, SessionError};
pub use ext::{UPDATE_WITH_ATTEMPTS, UserSessionStoreExt};
pub use instrument::Instrumented;
pub use migrate::{MigratingStore, MigrationPhase};
pub use policy::{Expiry, SessionPolicy};
pub use pool::SuspectConnections;
pub use retry::{RetryPolicy, Retrying};
pub use session::{
    Attributes, IssuedSession, MAX_CLOCK_SKEW, NewUserSession, Updated, UserSession,
};
pub use store::{
    Imported, MAX_SCAN_LIMIT, PurgeTask, ScanCursor, ScanPage, StorageDump, UserSessionStore,
    bad_scan_cursor, check_scan_limit,
};
pub use token::{SessionHandle, SessionToken};

/// Re-exported so backends and tests name one version.
pub use async_trait::async_trait;

/// A store inside the layers `SessionManager` serves every backend through, outermost first:
/// [`Instrumented`] (tracing and metrics, one record per call) and [`Retrying`] (temporary errors
/// on idempotent operations).
pub type Stacked<S> = Instrumented<Retrying<S>>;

/// Wraps `store` in the manager's layer stack ([`Stacked`]). The conformance suite runs every
/// backend both bare and through this function, so what is tested is what is served.
#[must_use]
pub fn stacked<S: UserSessionStore>(store: S, retry: RetryPolicy) -> Stacked<S> {
    Instrumented::new(Retrying::new(store, retry))
}
