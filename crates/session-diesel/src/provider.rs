//! The pooled transaction scope, generic over the diesel-async connection.

use std::borrow::Cow;
use std::future::Future;
use std::sync::{Arc, RwLock};

use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, PoolError, PoolableConnection, RecyclingMethod,
};
use diesel_async::{AsyncConnection, SimpleAsyncConnection, TransactionManager};
use session_core::{
    DbSessionProvider, PoolConfig, PoolState, Result, RetryPolicy, ScopeError, ScopeFn,
    ScopeOptions, SessionError, SuspectConnections,
};

use crate::error::{from_diesel, from_pool};

/// A checked-out connection; returned to the pool on drop (or discarded if it is broken).
pub type PooledConnection<C> = bb8::PooledConnection<'static, AsyncDieselConnectionManager<C>>;

/// What differs between the connection types a provider can pool. Sealed: implemented for
/// `AsyncPgConnection`, `AsyncMysqlConnection` and `SyncConnectionWrapper<SqliteConnection>` only.
pub trait ProviderConnection:
    AsyncConnection + SimpleAsyncConnection + PoolableConnection + Send + 'static + sealed::Sealed
{
    /// The backend's name for logs, metrics and errors.
    const BACKEND: &'static str;

    /// The statements that apply `options` right after `BEGIN`, if any.
    ///
    /// # Errors
    /// [`SessionError::Unsupported`] for an option the backend cannot honour.
    fn scope_prelude(options: &ScopeOptions) -> Result<Option<Cow<'static, str>>>;

    /// The statements that apply `options` right before `BEGIN`, if any: MySQL sets the next
    /// transaction's characteristics there, and refuses to change them once it has begun.
    ///
    /// # Errors
    /// [`SessionError::Unsupported`] for an option the backend cannot honour.
    fn scope_preamble(_options: &ScopeOptions) -> Result<Option<Cow<'static, str>>> {
        Ok(None)
    }

    /// How new connections are opened (e.g. SQLite pragmas).
    fn manager_config() -> ManagerConfig<Self>;

    /// Marks the connection so that the pool discards it if it goes back before
    /// [`ProviderConnection::settle`]: for a driver that cannot resume a connection whose request
    /// was dropped half-way (mysql_async reads the next reply out of step). Outside a transaction
    /// diesel-async does not track this itself. Default: nothing (tokio-postgres matches replies
    /// to requests; SQLite runs each call to its end on a thread of its own).
    #[doc(hidden)]
    fn unsettle(&mut self) {}

    /// Ends [`ProviderConnection::unsettle`]: the request finished, the connection is in step.
    #[doc(hidden)]
    fn settle(&mut self) {}
}

pub(crate) mod sealed {
    /// Prevents implementations outside this crate.
    pub trait Sealed {}
}

/// How a connection is tested as it is checked out, when `test_on_checkout` is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CheckoutCheck {
    /// A `SELECT 1` round trip (`pool_pre_ping`): catches every dead connection, costs a round trip.
    Ping,
    /// The driver's own state only (closed socket, broken transaction): no round trip. A connection
    /// the server closed is seen once the driver has read the close; one that died silently fails
    /// its statement with a temporary error and is discarded, and then the next `max_size`
    /// checkouts ping, since its siblings probably died with it (ADR 0008).
    Local,
}

/// A [`DbSessionProvider`] on a bb8 pool of diesel-async connections.
///
/// Use [`crate::PgProvider`] or [`crate::SqliteProvider`].
pub struct DieselProvider<C: ProviderConnection>
where
    AsyncDieselConnectionManager<C>: bb8::ManageConnection<Connection = C, Error = PoolError>,
{
    /// `None` once closed. Checkouts take a clone (an `Arc` inside), so closing drops only this
    /// handle: idle connections close at once, busy ones when their scopes return them.
    pool: RwLock<Option<bb8::Pool<AsyncDieselConnectionManager<C>>>>,
    config: PoolConfig,
    /// Checkouts left that ping although the check is [`CheckoutCheck::Local`].
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    // only the session store pools locally
    suspect: Arc<SuspectConnections>,
    /// Read replicas for read-only scopes (PostgreSQL's `connect_with_replicas`; else none).
    pub(crate) replicas: Arc<ReplicaSet<C>>,
}

/// A read replica's pool and what the monitor last found of it.
pub(crate) struct Replica<C: ProviderConnection>
where
    AsyncDieselConnectionManager<C>: bb8::ManageConnection<Connection = C, Error = PoolError>,
{
    /// The URL without its password, for reports.
    pub(crate) shown: String,
    /// `None` once the provider is closed.
    pub(crate) pool: RwLock<Option<bb8::Pool<AsyncDieselConnectionManager<C>>>>,
    /// Answering, still a replica, and within the lag bound at the last check.
    pub(crate) healthy: std::sync::atomic::AtomicBool,
    /// The lag found at the last check in ms (`u64::MAX`: unknown).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // replicas are PostgreSQL's
    pub(crate) lag_ms: std::sync::atomic::AtomicU64,
    /// Read-only scopes it has run.
    pub(crate) scopes: std::sync::atomic::AtomicU64,
}

/// The replicas, the rotation over them, and the task that checks them.
pub(crate) struct ReplicaSet<C: ProviderConnection>
where
    AsyncDieselConnectionManager<C>: bb8::ManageConnection<Connection = C, Error = PoolError>,
{
    pub(crate) list: Vec<Replica<C>>,
    next: std::sync::atomic::AtomicUsize,
    /// The longest wait for a replica's connection before the scope goes elsewhere.
    checkout_timeout: std::time::Duration,
    /// Read-only scopes that found no healthy replica and ran on the primary.
    pub(crate) fell_back: std::sync::atomic::AtomicU64,
    pub(crate) monitor: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl<C: ProviderConnection> ReplicaSet<C>
where
    AsyncDieselConnectionManager<C>: bb8::ManageConnection<Connection = C, Error = PoolError>,
{
    pub(crate) fn new(list: Vec<Replica<C>>, checkout_timeout: std::time::Duration) -> Self {
        Self {
            list,
            next: std::sync::atomic::AtomicUsize::new(0),
            checkout_timeout,
            fell_back: std::sync::atomic::AtomicU64::new(0),
            monitor: std::sync::Mutex::new(None),
        }
    }

    fn stop(&self) {
        for replica in &self.list {
            replica
                .pool
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
        }
        if let Some(monitor) = self
            .monitor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            monitor.abort();
        }
    }
}

impl<C: ProviderConnection> Drop for ReplicaSet<C>
where
    AsyncDieselConnectionManager<C>: bb8::ManageConnection<Connection = C, Error = PoolError>,
{
    fn drop(&mut self) {
        self.stop();
    }
}

impl<C: ProviderConnection> std::fmt::Debug for DieselProvider<C>
where
    AsyncDieselConnectionManager<C>: bb8::ManageConnection<Connection = C, Error = PoolError>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DieselProvider")
            .field("backend", &C::BACKEND)
            .field("config", &self.config)
            .field("state", &self.state())
            .finish()
    }
}

impl<C: ProviderConnection> DieselProvider<C>
where
    AsyncDieselConnectionManager<C>: bb8::ManageConnection<Connection = C, Error = PoolError>,
{
    /// Builds the pool for `url` (connection strings are passed to the driver as they are) and
    /// checks that the database answers.
    ///
    /// # Errors
    /// [`SessionError::Config`] for invalid pool settings; `Unavailable` or `Timeout` if the
    /// database cannot be reached within the checkout timeout.
    pub async fn connect(url: &str, config: PoolConfig) -> Result<Self> {
        Self::connect_checking(url, config, CheckoutCheck::Ping).await
    }

    /// [`DieselProvider::connect`] with the given kind of checkout test (used when
    /// `test_on_checkout` is on).
    pub(crate) async fn connect_checking(
        url: &str,
        config: PoolConfig,
        check: CheckoutCheck,
    ) -> Result<Self> {
        config.validate()?;
        let suspect = Arc::new(SuspectConnections::new());
        let pool = Self::build_pool(url, &config, check, &suspect);
        let provider = Self {
            pool: RwLock::new(Some(pool)),
            config,
            suspect,
            replicas: Arc::new(ReplicaSet::new(Vec::new(), std::time::Duration::ZERO)),
        };
        provider.health().await?;
        Ok(provider)
    }

    /// A pool for `url` with these settings (not yet connected).
    pub(crate) fn build_pool(
        url: &str,
        config: &PoolConfig,
        check: CheckoutCheck,
        suspect: &Arc<SuspectConnections>,
    ) -> bb8::Pool<AsyncDieselConnectionManager<C>> {
        let mut manager_config = C::manager_config();
        if check == CheckoutCheck::Local {
            let suspect = suspect.clone();
            manager_config.recycling_method =
                RecyclingMethod::CustomFunction(Box::new(move |conn| {
                    let broken = conn.is_broken();
                    let ping = !broken && suspect.take();
                    Box::pin(async move {
                        if broken {
                            return Err(diesel::result::Error::BrokenTransactionManager);
                        }
                        if ping {
                            conn.batch_execute("SELECT 1").await?;
                        }
                        Ok(())
                    })
                }));
        }
        let manager = AsyncDieselConnectionManager::<C>::new_with_config(url, manager_config);
        let mut builder = bb8::Pool::builder()
            .max_size(config.max_size)
            .min_idle(config.min_idle)
            .connection_timeout(config.checkout_timeout)
            // The local check runs in the manager's `is_valid`, which bb8 calls only when testing
            // checkouts, so a pool that checks locally always tests.
            .test_on_check_out(config.test_on_checkout || check == CheckoutCheck::Local)
            .idle_timeout(config.idle_timeout)
            .max_lifetime(config.max_lifetime)
            .reaper_rate(reaper_rate(config));
        // A refused connection should fail the checkout that needed it, not be retried silently
        // until the checkout timeout.
        builder = builder.retry_connection(false);
        builder.build_unchecked(manager)
    }

    /// The pool settings in force.
    #[must_use]
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// After a lost connection: the next `max_size` checkouts ping (with [`CheckoutCheck::Local`]).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn suspect_connections(&self) {
        self.suspect.raise(self.config.max_size);
    }

    fn pool(&self) -> Result<bb8::Pool<AsyncDieselConnectionManager<C>>> {
        self.pool
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(SessionError::Closed {
                backend: C::BACKEND,
            })
    }

    async fn checkout(&self) -> Result<PooledConnection<C>> {
        self.pool()?
            .get_owned()
            .await
            .map_err(|e| from_pool(C::BACKEND, e, self.config.checkout_timeout))
    }

    /// A connection for a read-only scope: from the next healthy replica in turn, else (none
    /// healthy, or its checkout failed) from the primary.
    async fn checkout_for_reading(
        &self,
        deadline: Option<std::time::Duration>,
    ) -> Result<PooledConnection<C>> {
        use std::sync::atomic::Ordering;
        let replicas = &self.replicas;
        // A scope's deadline leaves the primary half of it, should the replica not answer.
        let wait = deadline.map_or(replicas.checkout_timeout, |limit| {
            replicas.checkout_timeout.min(limit / 2)
        });
        let count = replicas.list.len();
        if count > 0 {
            // Closed providers answer `Closed` from the primary's checkout below.
            self.pool()?;
            let start = replicas.next.fetch_add(1, Ordering::Relaxed);
            for i in 0..count {
                let replica = &replicas.list[(start + i) % count];
                let pool = replica
                    .pool
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                let Some(pool) = pool.filter(|_| replica.healthy.load(Ordering::Acquire)) else {
                    continue;
                };
                // Bounded by the check interval: bb8 makes a checkout from a pool whose server died
                // wait out its whole time-out, and a replica is there to take load, not to add it.
                match tokio::time::timeout(wait, pool.get_owned()).await {
                    Ok(Ok(conn)) => {
                        replica.scopes.fetch_add(1, Ordering::Relaxed);
                        return Ok(conn);
                    }
                    failed => {
                        // Until the monitor finds it well again.
                        replica.healthy.store(false, Ordering::Release);
                        let why = match failed {
                            Ok(Err(e)) => session_core::ErrorChain(&e).to_string(),
                            _ => "no connection within the check interval".to_owned(),
                        };
                        tracing::warn!(backend = C::BACKEND, replica = %replica.shown, error = %why, "replica checkout failed; reading from the next, or the primary");
                    }
                }
            }
            replicas.fell_back.fetch_add(1, Ordering::Relaxed);
        }
        self.checkout().await
    }

    /// A new connection of the pool's kind (same URL and set-up) that never enters the pool:
    /// closed when dropped, so session state left on it (a session-level advisory lock, `SET`,
    /// `LISTEN`) cannot leak into a later scope. For migrations and other long or stateful work.
    ///
    /// # Errors
    /// `Closed` after [`DbSessionProvider::close`]; `Unavailable` if the database cannot be
    /// reached.
    pub async fn dedicated_connection(&self) -> Result<C> {
        self.pool()?
            .dedicated_connection()
            .await
            .map_err(|e| SessionError::Unavailable {
                backend: C::BACKEND,
                source: Box::new(e),
            })
    }
}

/// How often idle and old connections are looked for: a quarter of the shorter of `idle_timeout`
/// and `max_lifetime`, between 100 ms and 30 s (bb8's own default, 30 s, would keep a connection
/// idle for `1s` up to half a minute).
fn reaper_rate(config: &PoolConfig) -> std::time::Duration {
    let shortest = [config.idle_timeout, config.max_lifetime]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(std::time::Duration::from_secs(120));
    (shortest / 4).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(30),
    )
}

impl<C: ProviderConnection> DieselProvider<C>
where
    AsyncDieselConnectionManager<C>: bb8::ManageConnection<Connection = C, Error = PoolError>,
{
    /// Runs `scope` as [`DbSessionProvider::transaction`] does, and when it fails with a
    /// serialization failure or a deadlock ([`ScopeError::is_serialization_failure`]: 40001 and
    /// 40P01 on PostgreSQL) runs it again from the start in a new transaction, at most
    /// `retry.max_retries` more times, waiting `retry`'s backoff (with jitter) in between. The way
    /// to run SERIALIZABLE work: conflicts are expected there, and the cure is a fresh attempt.
    ///
    /// The closure is cloned for each attempt, so it must be `Clone` (an `async` closure is when
    /// what it captures is), and it should have no effect outside the transaction, since an
    /// attempt that lost is run again. Other errors, the deadline's included, are returned at once.
    /// A deadline in `options` bounds all the attempts and waits together: each attempt runs with
    /// what is left of it, and no attempt starts that the wait before it would leave no time for.
    ///
    /// # Errors
    /// The last attempt's error.
    pub async fn transaction_retrying<'a, R, E, F>(
        &'a self,
        options: ScopeOptions,
        retry: &RetryPolicy,
        scope: F,
    ) -> std::result::Result<R, E>
    where
        for<'r> F: AsyncFnOnce(&'r mut C) -> std::result::Result<R, E>
            + ScopeFn<&'r mut C, std::result::Result<R, E>, Fut: Send>
            + Clone
            + Send
            + 'a,
        E: ScopeError + Send + 'a,
        R: Send + 'a,
    {
        let mut delays = retry.delays();
        let mut attempt = 1u32;
        // A deadline bounds all the attempts together, waits included: each gets what is left.
        let deadline = options
            .timeout
            .map(|limit| (std::time::Instant::now() + limit, limit));
        loop {
            let mut this_attempt = options;
            if let Some((at, limit)) = deadline {
                let left = at.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(E::from(SessionError::Timeout {
                        backend: C::BACKEND,
                        operation: "scope",
                        after: limit,
                    }));
                }
                this_attempt.timeout = Some(left);
            }
            match self.transaction(this_attempt, scope.clone()).await {
                Err(e) if e.is_serialization_failure() => {
                    let Some(delay) = delays.next() else {
                        return Err(e);
                    };
                    if deadline.is_some_and(|(at, _)| std::time::Instant::now() + delay >= at) {
                        // No time left for another attempt: the conflict is the answer.
                        return Err(e);
                    }
                    tracing::debug!(
                        backend = C::BACKEND,
                        attempt,
                        ?delay,
                        "scope lost a serialization conflict; running it again"
                    );
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }
}

impl<C: ProviderConnection> DbSessionProvider<C> for DieselProvider<C>
where
    AsyncDieselConnectionManager<C>: bb8::ManageConnection<Connection = C, Error = PoolError>,
{
    type Pooled<'a> = PooledConnection<C>;

    fn backend(&self) -> &'static str {
        C::BACKEND
    }

    fn connection(&self) -> impl Future<Output = Result<Self::Pooled<'_>>> + Send {
        self.checkout()
    }

    async fn transaction<'a, R, E, F>(
        &'a self,
        options: ScopeOptions,
        scope: F,
    ) -> std::result::Result<R, E>
    where
        for<'r> F: AsyncFnOnce(&'r mut C) -> std::result::Result<R, E>
            + ScopeFn<&'r mut C, std::result::Result<R, E>, Fut: Send>
            + Send
            + 'a,
        E: From<SessionError> + Send + 'a,
        R: Send + 'a,
    {
        let limit = options.timeout;
        let started = std::time::Instant::now();
        let work = async move {
            let db = |e| E::from(from_diesel(C::BACKEND, e));
            // Checked before the wait for a connection (an option the backend refuses fails at
            // once), and made after it, so a server-side limit is the time the deadline has left.
            C::scope_preamble(&options)?;
            C::scope_prelude(&options)?;
            // A read-write scope never reaches a replica, nor a serializable one: a standby
            // refuses SERIALIZABLE ("cannot use serializable mode in a hot standby").
            let mut pooled = if options.read_only
                && options.isolation != session_core::IsolationLevel::Serializable
            {
                self.checkout_for_reading(options.timeout).await?
            } else {
                self.checkout().await?
            };
            let mut left = options;
            if let Some(limit) = options.timeout {
                left.timeout = Some(
                    limit
                        .saturating_sub(started.elapsed())
                        .max(std::time::Duration::from_millis(1)),
                );
            }
            let preamble = C::scope_preamble(&left)?;
            let prelude = C::scope_prelude(&left)?;
            let conn: &mut C = &mut pooled;
            if let Some(statement) = preamble {
                // Before `BEGIN`, so diesel-async's own guard (an open transaction makes the
                // connection broken) does not cover a scope dropped here.
                conn.unsettle();
                conn.batch_execute(&statement).await.map_err(db)?;
                conn.settle();
            }
            // If this future is dropped from here on (a timeout, a client gone) or the scope
            // panics, the connection goes back with its transaction open; diesel-async then
            // reports it broken and bb8 closes it, so the server rolls back and no later scope
            // can inherit the open transaction.
            C::TransactionManager::begin_transaction(conn)
                .await
                .map_err(db)?;
            if let Some(statement) = prelude
                && let Err(e) = conn.batch_execute(&statement).await
            {
                let _ = C::TransactionManager::rollback_transaction(conn).await;
                return Err(db(e));
            }
            match scope(conn).await {
                Ok(value) => {
                    C::TransactionManager::commit_transaction(conn)
                        .await
                        .map_err(db)?;
                    Ok(value)
                }
                Err(err) => {
                    // The caller's error wins; a failed rollback leaves the connection marked
                    // broken, so it is discarded rather than reused.
                    if let Err(rollback) = C::TransactionManager::rollback_transaction(conn).await {
                        tracing::warn!(backend = C::BACKEND, error = %session_core::ErrorChain(&rollback), "rollback failed; the connection will be discarded");
                    }
                    Err(err)
                }
            }
        };
        let Some(limit) = limit else {
            return work.await;
        };
        let timed_out = || {
            E::from(SessionError::Timeout {
                backend: C::BACKEND,
                operation: "scope",
                after: limit,
            })
        };
        match tokio::time::timeout(limit, work).await {
            // Dropped mid-transaction: the connection goes back broken and is discarded.
            Err(_) => Err(timed_out()),
            // A failure at or past the deadline is the deadline's doing (on PostgreSQL the
            // server's `statement_timeout`, rounded up, may cancel a statement after the deadline
            // but before the client's timer fires); the scope has rolled back and its connection
            // is clean.
            Ok(Err(_)) if started.elapsed() >= limit => Err(timed_out()),
            Ok(result) => result,
        }
    }

    fn state(&self) -> PoolState {
        let mut out = PoolState::default();
        out.max_size = self.config.max_size;
        if let Ok(pool) = self.pool() {
            let state = pool.state();
            out.connections = state.connections;
            out.idle = state.idle_connections;
            out.waited = state.statistics.get_waited;
            out.timed_out = state.statistics.get_timed_out;
            out.broken_closed = state.statistics.connections_closed_broken
                + state.statistics.connections_closed_invalid;
        }
        out
    }

    async fn health(&self) -> Result<()> {
        let mut conn = self.checkout().await?;
        conn.batch_execute("SELECT 1")
            .await
            .map_err(|e| from_diesel(C::BACKEND, e))
    }

    fn close(&self) -> impl Future<Output = ()> + Send {
        self.replicas.stop();
        let pool = self
            .pool
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        async move {
            drop(pool);
        }
    }
}
