//! The facade and its builder.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use session_core::{
    MigratingStore, PoolState, PurgeTask, Result, RetryPolicy, SessionError, UserSessionStore,
    stacked,
};

use crate::backend::{DbKind, StoreKind};

/// `err` reported under `key` when it is a configuration error of another key (the URL checks
/// name `store_url`).
pub(crate) fn rename_key(err: SessionError, key: &'static str) -> SessionError {
    match err {
        SessionError::Config { reason, .. } => SessionError::Config {
            key: key.to_owned(),
            reason,
        },
        other => other,
    }
}
use crate::config::SessionConfig;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
use session_core::DbSessionProvider as _;

/// The application database: one provider, chosen by `database_url` at run time or given to
/// [`SessionManagerBuilder::db`].
///
/// Run a scope on whichever it is with [`crate::db_transaction!`]. Exhaustive on purpose:
/// [`crate::db_transaction!`] matches it in the caller's crate. Without the `sqlite`, `postgres`
/// and `mysql` features it has no variant and a manager has no database.
#[derive(Debug)]
pub enum Db {
    /// SQLite (the embedded default).
    #[cfg(feature = "sqlite")]
    Sqlite(session_diesel::SqliteProvider),
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(session_diesel::PgProvider),
    /// MySQL or MariaDB.
    #[cfg(feature = "mysql")]
    Mysql(session_diesel::MysqlProvider),
}

#[cfg(feature = "mysql")]
impl From<session_diesel::MysqlProvider> for Db {
    fn from(provider: session_diesel::MysqlProvider) -> Self {
        Self::Mysql(provider)
    }
}

#[cfg(feature = "sqlite")]
impl From<session_diesel::SqliteProvider> for Db {
    fn from(provider: session_diesel::SqliteProvider) -> Self {
        Self::Sqlite(provider)
    }
}

#[cfg(feature = "postgres")]
impl From<session_diesel::PgProvider> for Db {
    fn from(provider: session_diesel::PgProvider) -> Self {
        Self::Postgres(provider)
    }
}

// `match *self` rather than `match self`: with no database feature `Db` has no variant, and only
// a match on the place itself may then have no arm.
impl Db {
    /// `sqlite`, `postgres` or `mysql`.
    #[must_use]
    pub fn backend(&self) -> &'static str {
        match *self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(ref p) => p.backend(),
            #[cfg(feature = "postgres")]
            Self::Postgres(ref p) => p.backend(),
            #[cfg(feature = "mysql")]
            Self::Mysql(ref p) => p.backend(),
        }
    }

    /// The pool's state.
    #[must_use]
    pub fn state(&self) -> PoolState {
        match *self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(ref p) => p.state(),
            #[cfg(feature = "postgres")]
            Self::Postgres(ref p) => p.state(),
            #[cfg(feature = "mysql")]
            Self::Mysql(ref p) => p.state(),
        }
    }

    /// Checks that the database answers.
    ///
    /// # Errors
    /// As the provider's `health`.
    pub async fn health(&self) -> Result<()> {
        match *self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(ref p) => p.health().await,
            #[cfg(feature = "postgres")]
            Self::Postgres(ref p) => p.health().await,
            #[cfg(feature = "mysql")]
            Self::Mysql(ref p) => p.health().await,
        }
    }

    /// Closes the pool; idempotent.
    pub async fn close(&self) {
        match *self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(ref p) => p.close().await,
            #[cfg(feature = "postgres")]
            Self::Postgres(ref p) => p.close().await,
            #[cfg(feature = "mysql")]
            Self::Mysql(ref p) => p.close().await,
        }
    }
}

/// User sessions and database scopes under one policy, one error type and one observability layer.
///
/// Build it from configuration with [`SessionManager::build`], or from stores made by hand with
/// [`SessionManager::builder`]; either way the store is served through the same layer stack
/// ([`session_core::stacked`]: tracing and metrics, retry of temporary errors on idempotent
/// operations) and, where the store needs it, one background purge task.
///
/// ```no_run
/// # async fn demo() -> session_core::Result<()> {
/// use session_manager::{SessionConfig, SessionManager};
/// let manager = SessionManager::build(SessionConfig::from_env()?).await?;
/// let issued = manager.sessions().create(session_core::NewUserSession::new("u-1")).await?;
/// manager.shutdown().await;
/// # Ok(()) }
/// ```
pub struct SessionManager {
    sessions: Arc<dyn UserSessionStore>,
    db: Option<Db>,
    purge: Mutex<Option<PurgeTask>>,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManager")
            .field("sessions", &self.sessions.backend())
            .field("db", &self.db.as_ref().map(Db::backend))
            .finish_non_exhaustive()
    }
}

/// Builds a [`SessionManager`] from a store (and optionally a database) made by hand.
///
/// ```no_run
/// # #[cfg(feature = "memory")]
/// # async fn demo() -> session_core::Result<()> {
/// use session_core::{RetryPolicy, SessionPolicy};
/// use session_manager::SessionManager;
/// let store = session_memory::MemoryStore::new(SessionPolicy::default())?;
/// let manager = SessionManager::builder().store(store).retry(RetryPolicy::none()).build()?;
/// # Ok(()) }
/// ```
#[must_use]
pub struct SessionManagerBuilder {
    store: Option<Arc<dyn UserSessionStore>>,
    db: Option<Db>,
    retry: RetryPolicy,
    purge_interval: Duration,
}

impl std::fmt::Debug for SessionManagerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManagerBuilder")
            .field("store", &self.store.as_ref().map(|s| s.backend()))
            .field("db", &self.db.as_ref().map(Db::backend))
            .field("retry", &self.retry)
            .field("purge_interval", &self.purge_interval)
            .finish()
    }
}

impl SessionManagerBuilder {
    /// The user-session store, bare: the manager adds the layers, so do not pass a store that
    /// already has them (such as another manager's `sessions()`). Any [`UserSessionStore`],
    /// including an `Arc<dyn UserSessionStore>`.
    pub fn store(mut self, store: impl UserSessionStore + 'static) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The application database (a `SqliteProvider` or `PgProvider`, or a [`Db`]).
    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
    pub fn db(mut self, db: impl Into<Db>) -> Self {
        self.db = Some(db.into());
        self
    }

    /// How temporary errors are retried. Default [`RetryPolicy::default`].
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How often expired sessions are purged, on stores that need it
    /// ([`UserSessionStore::needs_purge`]); zero turns it off. Default 5 minutes.
    pub fn purge_interval(mut self, every: Duration) -> Self {
        self.purge_interval = every;
        self
    }

    /// Wraps the store in the layer stack and starts the purge task where it applies.
    ///
    /// # Errors
    /// [`SessionError::Config`] if no store was given, the retry policy is invalid, or a purge task
    /// is due but no tokio runtime is running.
    pub fn build(self) -> Result<SessionManager> {
        let store = self.store.ok_or_else(|| {
            SessionError::config("store", "no session store: call .store(...) on the builder")
        })?;
        self.retry.validate()?;
        let sessions: Arc<dyn UserSessionStore> = Arc::new(stacked(store, self.retry));
        let purge = if sessions.needs_purge() && !self.purge_interval.is_zero() {
            tokio::runtime::Handle::try_current().map_err(|_| {
                SessionError::config(
                    "purge_interval",
                    "the background purge needs a tokio runtime: build the manager inside one, or set purge_interval to 0s",
                )
            })?;
            Some(PurgeTask::spawn(&sessions, self.purge_interval))
        } else {
            None
        };
        tracing::info!(
            sessions = sessions.backend(),
            db = self.db.as_ref().map_or("none", Db::backend),
            purging = purge.is_some(),
            "session manager ready"
        );
        Ok(SessionManager {
            sessions,
            db: self.db,
            purge: Mutex::new(purge),
            shut_down: AtomicBool::new(false),
        })
    }
}

impl SessionManager {
    /// A builder for stores and databases made by hand.
    pub fn builder() -> SessionManagerBuilder {
        SessionManagerBuilder {
            store: None,
            db: None,
            retry: RetryPolicy::default(),
            purge_interval: SessionConfig::default().purge_interval,
        }
    }

    /// Builds the store and database the configuration names and passes them to
    /// [`SessionManager::builder`] with the configured retry policy and purge interval.
    ///
    /// # Errors
    /// [`SessionError::Config`] naming the key for a bad value or a backend whose feature is off;
    /// `Unavailable`/`Timeout` if a server cannot be reached.
    pub async fn build(config: SessionConfig) -> Result<Self> {
        config.validate()?;
        let builder = Self::builder()
            .retry(config.retry.clone())
            .purge_interval(config.purge_interval);
        let builder = Self::configured_store(builder, &config).await?;
        let builder = Self::configured_db(builder, &config).await?;
        builder.build()
    }

    /// The configured store; during a migration (`migrate_from_url`), a [`MigratingStore`]
    /// serving from it and moving sessions from the old one.
    async fn configured_store(
        builder: SessionManagerBuilder,
        config: &SessionConfig,
    ) -> Result<SessionManagerBuilder> {
        let store = Self::store_at(config, &config.store_url, "store_url").await?;
        Ok(match &config.migrate_from_url {
            Some(old_url) => {
                // The old store without the near cache: a copy's check must read what the old
                // store holds now, not what this instance cached before another one's revocation.
                #[allow(unused_mut)]
                let mut old_config = config.clone();
                #[cfg(feature = "redis")]
                {
                    old_config.redis.near_cache = None;
                }
                let old = Self::store_at(&old_config, old_url, "migrate_from_url").await?;
                builder.store(MigratingStore::with_phase(
                    old,
                    store,
                    config.migrate_phase.unwrap_or_default(),
                ))
            }
            None => builder.store(store),
        })
    }

    #[allow(unreachable_code)] // with no store feature every kind is the error arm
    async fn store_at(
        config: &SessionConfig,
        url: &str,
        key: &'static str,
    ) -> Result<Arc<dyn UserSessionStore>> {
        let policy = config.policy.clone();
        Ok(match StoreKind::of(url).map_err(|e| rename_key(e, key))? {
            #[cfg(feature = "memory")]
            StoreKind::Memory => Arc::new(session_memory::MemoryStore::new(policy)?),
            #[cfg(feature = "redis")]
            StoreKind::Redis => {
                let mut redis = config.redis.clone();
                url.clone_into(&mut redis.url);
                Arc::new(session_redis::RedisStore::connect(redis, policy).await?)
            }
            #[cfg(feature = "postgres")]
            StoreKind::Postgres => {
                let pg = &config.postgres_store;
                let store = session_diesel::PgSessionStore::connect(url, pg.pool.clone(), policy)
                    .await?
                    .with_purge_batch(pg.purge_batch);
                Arc::new(store)
            }
            #[cfg(feature = "mysql")]
            StoreKind::Mysql => {
                let mysql = &config.mysql_store;
                let store =
                    session_diesel::MysqlSessionStore::connect(url, mysql.pool.clone(), policy)
                        .await?
                        .with_purge_batch(mysql.purge_batch);
                Arc::new(store)
            }
            #[cfg(feature = "sqlite")]
            StoreKind::Sqlite => {
                let sqlite = &config.sqlite_store;
                let store =
                    session_diesel::SqliteSessionStore::open(url, sqlite.pool.clone(), policy)
                        .await?
                        .with_purge_batch(sqlite.purge_batch);
                Arc::new(store)
            }
            // `StoreKind::of` returns only compiled-in kinds; this arm covers the others.
            #[allow(unreachable_patterns)]
            other => {
                let _ = policy;
                return Err(SessionError::config(
                    key,
                    format!("{other:?} is not compiled into this build"),
                ));
            }
        })
    }

    #[allow(clippy::unused_async)] // without a database feature nothing is awaited
    async fn configured_db(
        builder: SessionManagerBuilder,
        config: &SessionConfig,
    ) -> Result<SessionManagerBuilder> {
        Ok(match DbKind::of(&config.database_url)? {
            DbKind::None => builder,
            #[cfg(feature = "sqlite")]
            DbKind::Sqlite => builder.db(session_diesel::SqliteProvider::open(
                &config.database_url,
                config.db_pool.clone(),
            )
            .await?),
            #[cfg(feature = "postgres")]
            DbKind::Postgres if config.database_replicas.is_empty() => builder.db(
                session_diesel::PgProvider::connect(&config.database_url, config.db_pool.clone())
                    .await?,
            ),
            #[cfg(feature = "postgres")]
            DbKind::Postgres => builder.db(session_diesel::PgProvider::connect_with_replicas(
                &config.database_url,
                config.db_pool.clone(),
                session_diesel::ReplicaConfig::new(config.database_replicas.clone())
                    .max_lag(config.database_replica_max_lag),
            )
            .await?),
            #[cfg(feature = "mysql")]
            DbKind::Mysql => builder.db(session_diesel::MysqlProvider::connect(
                &config.database_url,
                config.db_pool.clone(),
            )
            .await?),
            // `DbKind::of` returns only compiled-in kinds; this arm covers the others.
            #[allow(unreachable_patterns)]
            other => {
                return Err(SessionError::config(
                    "database_url",
                    format!("{other:?} is not compiled into this build"),
                ));
            }
        })
    }

    /// The user-session store, inside the layer stack. Conveniences such as `update_with` come
    /// from [`session_core::UserSessionStoreExt`].
    #[must_use]
    pub fn sessions(&self) -> &Arc<dyn UserSessionStore> {
        &self.sessions
    }

    /// The application database.
    ///
    /// # Errors
    /// [`SessionError::Config`] (key `database_url`) if this manager has none.
    pub fn db(&self) -> Result<&Db> {
        self.db.as_ref().ok_or_else(|| {
            SessionError::config(
                "database_url",
                "this manager has no application database; set DATABASE_URL or pass one to the builder",
            )
        })
    }

    /// Checks the session store and, if there is one, the database.
    ///
    /// # Errors
    /// The first failure.
    pub async fn health(&self) -> Result<()> {
        self.sessions.health().await?;
        match &self.db {
            Some(db) => db.health().await,
            None => Ok(()),
        }
    }

    /// Publishes the database pool's state as gauges (`db_pool_connections`, `db_pool_idle`,
    /// `db_pool_max_size`, `db_pool_waited_total`, `db_pool_timed_out_total`,
    /// `db_pool_broken_closed_total`), e.g. before rendering `/metrics`. Nothing without a database.
    #[allow(clippy::cast_precision_loss)] // pool counters fit an f64 exactly in practice
    pub fn record_pool_gauges(&self) {
        let Some(db) = &self.db else { return };
        let backend = db.backend();
        let s = db.state();
        metrics::gauge!("db_pool_connections", "backend" => backend).set(f64::from(s.connections));
        metrics::gauge!("db_pool_idle", "backend" => backend).set(f64::from(s.idle));
        metrics::gauge!("db_pool_max_size", "backend" => backend).set(f64::from(s.max_size));
        metrics::gauge!("db_pool_waited_total", "backend" => backend).set(s.waited as f64);
        metrics::gauge!("db_pool_timed_out_total", "backend" => backend).set(s.timed_out as f64);
        metrics::gauge!("db_pool_broken_closed_total", "backend" => backend)
            .set(s.broken_closed as f64);
    }

    /// Stops the purge task, closes the session store and the database pool. Idempotent; the
    /// seed's `cleanup`.
    pub async fn shutdown(&self) {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let purge = self
            .purge
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = purge {
            task.stop().await;
        }
        self.sessions.close().await;
        if let Some(db) = &self.db {
            db.close().await;
        }
        tracing::info!("session manager shut down");
    }

    /// Whether [`SessionManager::shutdown`] has run.
    #[must_use]
    pub fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::SeqCst)
    }

    /// Whether a background purge task is running.
    #[must_use]
    pub fn is_purging(&self) -> bool {
        self.purge
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }
}
