//! The facade.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use session_core::{
    DbSessionProvider, Instrumented, IssuedSession, PoolState, PurgeTask, Result, SessionError,
    SessionToken, UserSession, UserSessionStore,
};

use crate::backend::{DbKind, StoreKind};
use crate::config::SessionConfig;

/// The application database: one provider, chosen by `database_url` at run time.
///
/// Run a scope on whichever it is with [`crate::db_transaction!`].
/// Exhaustive on purpose: [`crate::db_transaction!`] matches it in the caller's crate.
#[derive(Debug)]
pub enum Db {
    /// SQLite (the embedded default).
    #[cfg(feature = "sqlite")]
    Sqlite(session_diesel::SqliteProvider),
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(session_diesel::PgProvider),
}

impl Db {
    /// `sqlite` or `postgres`.
    #[must_use]
    pub fn backend(&self) -> &'static str {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(p) => p.backend(),
            #[cfg(feature = "postgres")]
            Self::Postgres(p) => p.backend(),
        }
    }

    /// The pool's state.
    #[must_use]
    pub fn state(&self) -> PoolState {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(p) => p.state(),
            #[cfg(feature = "postgres")]
            Self::Postgres(p) => p.state(),
        }
    }

    /// Checks that the database answers.
    ///
    /// # Errors
    /// As the provider's `health`.
    pub async fn health(&self) -> Result<()> {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(p) => p.health().await,
            #[cfg(feature = "postgres")]
            Self::Postgres(p) => p.health().await,
        }
    }

    async fn close(&self) {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(p) => p.close().await,
            #[cfg(feature = "postgres")]
            Self::Postgres(p) => p.close().await,
        }
    }
}

/// The result of [`SessionManager::update`].
#[derive(Debug)]
pub struct Updated {
    /// The session as stored.
    pub session: UserSession,
    /// A new token, when the update changed `is_root` and the manager rotated the session. The old
    /// token is dead; hand this one to the client.
    pub rotated: Option<SessionToken>,
}

/// User sessions and database scopes under one policy, one error type and one observability layer.
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
    db: Db,
    purge: Mutex<Option<PurgeTask>>,
    #[cfg(feature = "postgres")]
    pg_store: Option<Arc<session_diesel::PgSessionStore>>,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManager")
            .field("sessions", &self.sessions.backend())
            .field("db", &self.db.backend())
            .finish_non_exhaustive()
    }
}

impl SessionManager {
    /// Builds the stores the configuration names, behind the instrumentation layer (tracing and
    /// metrics), and starts the background purge when it applies.
    ///
    /// # Errors
    /// [`SessionError::Config`] naming the key for a bad value or a backend whose feature is off;
    /// `Unavailable`/`Timeout` if a server cannot be reached.
    pub async fn build(config: SessionConfig) -> Result<Self> {
        config.validate()?;
        let policy = config.policy.clone();
        #[cfg(feature = "postgres")]
        let mut pg_store = None;
        let (backend, purge_applies): (Arc<dyn UserSessionStore>, bool) =
            match StoreKind::of(&config.store_url)? {
                #[cfg(feature = "memory")]
                StoreKind::Memory => (Arc::new(session_memory::MemoryStore::new(policy)?), true),
                #[cfg(feature = "redis")]
                StoreKind::Redis => {
                    let redis = session_redis::RedisConfig::new(config.store_url.clone())
                        .key_prefix(config.key_prefix.clone())
                        .pool_max_size(config.store_pool_size);
                    (
                        Arc::new(session_redis::RedisStore::connect(redis, policy).await?),
                        false,
                    )
                }
                #[cfg(feature = "postgres")]
                StoreKind::Postgres => {
                    let mut pool = session_core::PoolConfig::default();
                    pool.max_size = config.store_pool_size;
                    let store = Arc::new(
                        session_diesel::PgSessionStore::connect(&config.store_url, pool, policy)
                            .await?,
                    );
                    pg_store = Some(store.clone());
                    (store, true)
                }
                #[allow(unreachable_patterns)] // every kind is compiled in under --all-features
                _ => unreachable!("StoreKind::of only returns compiled-in kinds"),
            };
        let sessions: Arc<dyn UserSessionStore> = Arc::new(Instrumented::new(backend));
        let db = match DbKind::of(&config.database_url)? {
            #[cfg(feature = "sqlite")]
            DbKind::Sqlite => Db::Sqlite(
                session_diesel::SqliteProvider::open(&config.database_url, config.db_pool.clone())
                    .await?,
            ),
            #[cfg(feature = "postgres")]
            DbKind::Postgres => Db::Postgres(
                session_diesel::PgProvider::connect(&config.database_url, config.db_pool.clone())
                    .await?,
            ),
            #[allow(unreachable_patterns)]
            _ => unreachable!("DbKind::of only returns compiled-in kinds"),
        };
        let purge = (purge_applies && !config.purge_interval.is_zero())
            .then(|| PurgeTask::spawn(&sessions, config.purge_interval));
        tracing::info!(
            sessions = sessions.backend(),
            db = db.backend(),
            "session manager ready"
        );
        Ok(Self {
            sessions,
            db,
            purge: Mutex::new(purge),
            #[cfg(feature = "postgres")]
            pg_store,
            shut_down: AtomicBool::new(false),
        })
    }

    /// The user-session store (instrumented).
    #[must_use]
    pub fn sessions(&self) -> &Arc<dyn UserSessionStore> {
        &self.sessions
    }

    /// The application database.
    #[must_use]
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Writes `session` (compare-and-set on its version) and, if that changed `is_root`, rotates the
    /// session's token (a privilege change must not keep a token that may have leaked before it).
    ///
    /// # Errors
    /// As [`UserSessionStore::update`]; [`SessionError::NotFound`] if `token` does not hold
    /// `session`.
    pub async fn update(&self, token: &SessionToken, session: &UserSession) -> Result<Updated> {
        let before = self
            .sessions
            .get(token)
            .await?
            .ok_or(SessionError::NotFound)?;
        if before.handle != session.handle {
            return Err(SessionError::NotFound);
        }
        let after = self.sessions.update(session).await?;
        if after.is_root == before.is_root {
            return Ok(Updated {
                session: after,
                rotated: None,
            });
        }
        match self.sessions.rotate(token).await? {
            Some(IssuedSession { token, session }) => Ok(Updated {
                session,
                rotated: Some(token),
            }),
            None => Err(SessionError::NotFound),
        }
    }

    /// Checks both stores.
    ///
    /// # Errors
    /// The first failure.
    pub async fn health(&self) -> Result<()> {
        self.sessions.health().await?;
        self.db.health().await
    }

    /// Publishes the database pool's state as gauges (`db_pool_connections`, `db_pool_idle`,
    /// `db_pool_max_size`, `db_pool_waited_total`, `db_pool_timed_out_total`,
    /// `db_pool_broken_closed_total`), e.g. before rendering `/metrics`.
    #[allow(clippy::cast_precision_loss)] // pool counters fit an f64 exactly in practice
    pub fn record_pool_gauges(&self) {
        let backend = self.db.backend();
        let s = self.db.state();
        metrics::gauge!("db_pool_connections", "backend" => backend).set(f64::from(s.connections));
        metrics::gauge!("db_pool_idle", "backend" => backend).set(f64::from(s.idle));
        metrics::gauge!("db_pool_max_size", "backend" => backend).set(f64::from(s.max_size));
        metrics::gauge!("db_pool_waited_total", "backend" => backend).set(s.waited as f64);
        metrics::gauge!("db_pool_timed_out_total", "backend" => backend).set(s.timed_out as f64);
        metrics::gauge!("db_pool_broken_closed_total", "backend" => backend)
            .set(s.broken_closed as f64);
    }

    /// Stops background tasks and closes the pools. Idempotent; the seed's `cleanup`.
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
        #[cfg(feature = "postgres")]
        if let Some(store) = &self.pg_store {
            store.close().await;
        }
        self.db.close().await;
        tracing::info!("session manager shut down");
    }

    /// Whether [`SessionManager::shutdown`] has run.
    #[must_use]
    pub fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::SeqCst)
    }
}
