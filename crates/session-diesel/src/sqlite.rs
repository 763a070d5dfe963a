//! SQLite, the embedded default: diesel's `SqliteConnection` behind diesel-async's
//! `SyncConnectionWrapper` (queries run on tokio's blocking pool).

use std::borrow::Cow;

use diesel::SqliteConnection;
use diesel_async::pooled_connection::ManagerConfig;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use session_core::{PoolConfig, Result, ScopeOptions, SessionError};

use crate::provider::{DieselProvider, ProviderConnection, sealed};

/// The pooled SQLite connection type.
pub type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

/// A [`session_core::DbSessionProvider`] for SQLite.
pub type SqliteProvider = DieselProvider<SqliteConn>;

/// Applied to every new connection: wait up to 5 s for a lock instead of failing at once, and use
/// the write-ahead log so readers do not block the writer (a file database; an in-memory one keeps
/// its journal in memory, `journal_mode` stays `memory`, and a commit waits for open readers).
const PRAGMAS: &str = "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;";

impl sealed::Sealed for SqliteConn {}

impl ProviderConnection for SqliteConn {
    const BACKEND: &'static str = "sqlite";

    fn scope_prelude(options: &ScopeOptions) -> Result<Option<Cow<'static, str>>> {
        // SQLite transactions are serializable whatever level is asked for; read-only scopes have
        // no per-transaction switch; a deadline is the client's alone (no statement time-out).
        if options.read_only {
            return Err(SessionError::Unsupported {
                backend: Self::BACKEND,
                operation: "read-only scope",
                reason: "SQLite has no per-transaction read-only mode",
            });
        }
        Ok(None)
    }

    fn manager_config() -> ManagerConfig<Self> {
        let mut config = ManagerConfig::default();
        config.custom_setup = Box::new(|url| {
            let url = url.to_owned();
            Box::pin(async move {
                let mut conn = SqliteConn::establish(&url).await?;
                conn.batch_execute(PRAGMAS)
                    .await
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                Ok(conn)
            })
        });
        config
    }
}

/// Where an SQLite URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqliteTarget {
    /// A database file.
    File(String),
    /// A private in-memory database, shared by the pool's connections (a `memdb` VFS URI).
    Memory(String),
}

/// Parses `sqlite://path`, `sqlite:path`, a bare path, or `sqlite::memory:` / `:memory:`.
///
/// A plain `:memory:` would give every pooled connection a separate empty database, so memory
/// URLs become a named database of SQLite's `memdb` VFS, private to this process and call. Not
/// shared-cache mode: there, a write waiting on another connection's fails at once with "database
/// table is locked" (the busy time-out does not apply), so concurrent write scopes failed; memdb
/// uses ordinary locks, and the busy time-out makes writers wait their turn.
///
/// # Errors
/// [`SessionError::Config`] for an empty path.
pub fn parse_sqlite_url(url: &str) -> Result<SqliteTarget> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    if rest == ":memory:" {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        return Ok(SqliteTarget::Memory(format!(
            "file:/session-mem-{}-{n}?vfs=memdb",
            std::process::id()
        )));
    }
    if rest.is_empty() {
        return Err(SessionError::config(
            "url",
            "an SQLite URL needs a file path, e.g. sqlite://data/app.db, or sqlite::memory:",
        ));
    }
    Ok(SqliteTarget::File(rest.to_owned()))
}

impl DieselProvider<SqliteConn> {
    /// Opens an SQLite provider for `url` (see [`parse_sqlite_url`]). For an in-memory database the
    /// pool keeps one connection open for its whole life, since the database vanishes with its last
    /// connection.
    ///
    /// # Errors
    /// As [`DieselProvider::connect`].
    pub async fn open(url: &str, mut config: PoolConfig) -> Result<Self> {
        match parse_sqlite_url(url)? {
            SqliteTarget::File(path) => Self::connect(&path, config).await,
            SqliteTarget::Memory(uri) => {
                config.min_idle = Some(config.min_idle.unwrap_or(1).max(1));
                config.idle_timeout = None;
                config.max_lifetime = None;
                Self::connect(&uri, config).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_to_files_or_private_shared_memory() {
        assert_eq!(
            parse_sqlite_url("sqlite://data/app.db").unwrap(),
            SqliteTarget::File("data/app.db".into())
        );
        assert_eq!(
            parse_sqlite_url("sqlite:app.db").unwrap(),
            SqliteTarget::File("app.db".into())
        );
        assert_eq!(
            parse_sqlite_url("/tmp/x.db").unwrap(),
            SqliteTarget::File("/tmp/x.db".into())
        );
        let (SqliteTarget::Memory(a), SqliteTarget::Memory(b)) = (
            parse_sqlite_url("sqlite::memory:").unwrap(),
            parse_sqlite_url(":memory:").unwrap(),
        ) else {
            panic!("memory URLs");
        };
        assert_ne!(a, b, "each memory database is private");
        assert!(a.contains("vfs=memdb"));
        assert!(matches!(
            parse_sqlite_url("sqlite://"),
            Err(SessionError::Config { .. })
        ));
    }
}
