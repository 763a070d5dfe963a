//! The database-session contract: a pooled connection with a transaction scope.
//!
//! Implementations (diesel-async on PostgreSQL and SQLite) live in `session-diesel`. The contract is
//! defined here so the facade and the documentation describe both kinds of session in one place.

use std::future::Future;
use std::ops::DerefMut;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SessionError};

/// An async closure `async |conn| { ... }` whose future is `Send`, the shape diesel-async 0.9 takes.
/// Implemented for every such closure; nobody implements it by hand.
pub trait ScopeFn<T, R>: AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as ScopeFn<T, R>>::Fut {
    /// The closure's future.
    type Fut: Future<Output = R>;
}

impl<F, T, Fut, R> ScopeFn<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// Isolation level of a transaction scope (PostgreSQL; SQLite is always serializable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum IsolationLevel {
    /// The server default (READ COMMITTED on PostgreSQL).
    #[default]
    Default,
    /// READ COMMITTED.
    ReadCommitted,
    /// REPEATABLE READ.
    RepeatableRead,
    /// SERIALIZABLE.
    Serializable,
}

/// Options of one transaction scope.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScopeOptions {
    /// The isolation level.
    pub isolation: IsolationLevel,
    /// A read-only transaction.
    pub read_only: bool,
    /// A deadline for the whole scope, from the wait for a connection to the commit. Past it the
    /// scope is abandoned and answers [`SessionError::Timeout`] (operation `scope`); its
    /// connection, caught mid-transaction, is discarded rather than returned to the pool. On
    /// PostgreSQL the scope also runs with `SET LOCAL statement_timeout` of what the deadline has
    /// left once a connection is had, so the server stops an abandoned statement too (usually the
    /// client's timer fires first; an error at or past the deadline, the server's cancellation
    /// included, is reported as the same `Timeout`). SQLite has no server-side limit: a statement
    /// already running finishes on its blocking thread before that connection closes. Default:
    /// none.
    pub timeout: Option<Duration>,
}

impl ScopeOptions {
    /// Read-write at the server's default isolation.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the isolation level.
    #[must_use]
    pub fn isolation(mut self, isolation: IsolationLevel) -> Self {
        self.isolation = isolation;
        self
    }

    /// Makes the scope read-only.
    #[must_use]
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Sets the scope's deadline (see [`ScopeOptions::timeout`]).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// An error type a transaction scope may return, which says whether the transaction lost to a
/// concurrent one (a serialization failure or a deadlock): the kind of failure that running the
/// whole scope again can cure. Implemented for [`SessionError`]; an application's own scope error
/// implements it by asking the `SessionError` it wraps.
pub trait ScopeError: From<SessionError> {
    /// Whether the scope lost a serialization conflict or was a deadlock's victim.
    fn is_serialization_failure(&self) -> bool;
}

impl ScopeError for SessionError {
    fn is_serialization_failure(&self) -> bool {
        matches!(self, SessionError::SerializationFailure { .. })
    }
}

/// A snapshot of a pool's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PoolState {
    /// Connections open now.
    pub connections: u32,
    /// Of those, idle in the pool.
    pub idle: u32,
    /// Configured maximum.
    pub max_size: u32,
    /// Checkouts that had to wait, since start.
    pub waited: u64,
    /// Checkouts that timed out, since start.
    pub timed_out: u64,
    /// Connections discarded as broken (failed ping, dropped mid-transaction; on a Redis Cluster,
    /// the cluster connection replaced because it stalled), since start.
    pub broken_closed: u64,
}

/// Pool settings shared by every database provider. Durations accept human form (`30s`, `10m`).
///
/// The seed's SQLAlchemy pool in these terms: `pool_size = 5` is `min_idle = 5`, `max_overflow = 10`
/// is `max_size = 15` (5 + 10), `pool_pre_ping = True` is `test_on_checkout = true`, and
/// `engine.dispose()` is the provider's `close()` (the manager's `shutdown()`). SQLAlchemy closes an
/// overflow connection as soon as it is returned; here connections above `min_idle` close once idle
/// for `idle_timeout` (docs/backends.md has the measured timeline).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Most connections open at once. Default `15` (the 5 + 10 overflow of the helpers this replaces).
    pub max_size: u32,
    /// Idle connections kept ready. Default: none.
    pub min_idle: Option<u32>,
    /// Longest wait for a connection before [`SessionError::Timeout`]. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub checkout_timeout: Duration,
    /// Connections idle longer than this are closed (bb8 closes every such connection, then opens
    /// new ones up to `min_idle`): the seed's `max_overflow` connections, gone once a burst has
    /// passed. Checked every quarter of this, but no more often than every 100 ms and no less
    /// often than every 30 s. Default `10m`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Connections older than this are closed. Default `30m`.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Option<Duration>,
    /// Ping each connection as it is checked out (`pool_pre_ping`). Default `true`.
    pub test_on_checkout: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_size: 15,
            min_idle: None,
            checkout_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            test_on_checkout: true,
        }
    }
}

impl PoolConfig {
    /// Checks every setting.
    ///
    /// # Errors
    /// [`SessionError::Config`] naming the key.
    pub fn validate(&self) -> Result<()> {
        if self.max_size == 0 {
            return Err(SessionError::config("max_size", "must be at least 1"));
        }
        if self.min_idle.is_some_and(|m| m > self.max_size) {
            return Err(SessionError::config("min_idle", "must not exceed max_size"));
        }
        if self.checkout_timeout.is_zero() {
            return Err(SessionError::config(
                "checkout_timeout",
                "must be greater than zero (e.g. `5s`)",
            ));
        }
        Ok(())
    }
}

/// A pool of database connections that runs transaction scopes.
///
/// The scope contract:
/// - `Ok` commits, `Err` rolls back and returns the caller's error (even if the rollback also
///   fails), a panic rolls back and the connection is discarded;
/// - if the scope's future is dropped mid-transaction (a time-out, a client gone), the connection is
///   never returned to the pool: otherwise it would stay "idle in transaction" and a later
///   transaction on it would silently become a savepoint that is never committed;
/// - a scope opened on a connection already in a transaction (nesting) is a savepoint.
///
/// `Conn` is the connection type scopes run on (e.g. `AsyncPgConnection`). It is a type parameter
/// rather than an associated type so the scope's higher-ranked closure bound names it directly: the
/// compiler cannot yet normalise an associated type inside such a bound in an implementation.
pub trait DbSessionProvider<Conn: Send + 'static>: Send + Sync + 'static {
    /// A checked-out connection; returning it to the pool on drop.
    type Pooled<'a>: DerefMut<Target = Conn> + Send
    where
        Self: 'a;

    /// A short name for logs and metrics, e.g. `postgres`, `sqlite`.
    fn backend(&self) -> &'static str;

    /// Checks a connection out (pinging it first if configured), waiting at most the checkout timeout.
    fn connection(&self) -> impl Future<Output = Result<Self::Pooled<'_>>> + Send;

    /// Runs `scope` in a transaction on a pooled connection, per the contract above.
    fn transaction<'a, R, E, F>(
        &'a self,
        options: ScopeOptions,
        scope: F,
    ) -> impl Future<Output = std::result::Result<R, E>> + Send + 'a
    where
        for<'r> F: AsyncFnOnce(&'r mut Conn) -> std::result::Result<R, E>
            + ScopeFn<&'r mut Conn, std::result::Result<R, E>, Fut: Send>
            + Send
            + 'a,
        E: From<SessionError> + Send + 'a,
        R: Send + 'a;

    /// The pool's state now.
    fn state(&self) -> PoolState;

    /// Checks that the database answers.
    fn health(&self) -> impl Future<Output = Result<()>> + Send;

    /// Stops handing out connections and closes the idle ones; idempotent. Scopes running now finish
    /// and their connections are closed on return.
    fn close(&self) -> impl Future<Output = ()> + Send;
}
