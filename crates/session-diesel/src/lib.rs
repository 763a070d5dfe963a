//! diesel-async backends: a [`DbSessionProvider`](session_core::DbSessionProvider) for PostgreSQL,
//! MySQL/MariaDB and SQLite on a bb8 pool, and a [`UserSessionStore`](session_core::UserSessionStore)
//! on PostgreSQL, on MySQL/MariaDB and on SQLite.
//!
//! ```no_run
//! # async fn demo() -> Result<(), session_core::SessionError> {
//! use diesel_async::RunQueryDsl;
//! use session_core::{DbSessionProvider, PoolConfig, ScopeOptions, SessionError};
//! let db = session_diesel::SqliteProvider::open("sqlite://app.db", PoolConfig::default()).await?;
//! let n = db.transaction(ScopeOptions::new(), async |conn| {
//!     diesel::sql_query("CREATE TABLE IF NOT EXISTS t (x INTEGER)").execute(conn).await
//!         .map_err(|e| SessionError::Backend { backend: "sqlite", source: Box::new(e) })
//! }).await?;
//! # let _ = n; Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
#[cfg(feature = "migrations")]
mod migrate;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "mysql")]
mod mysql_store;
#[cfg(feature = "postgres")]
mod pg;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod prepared;
mod provider;
#[cfg(feature = "postgres")]
mod replicas;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod row;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
mod sqlite_store;
#[cfg(feature = "postgres")]
mod store;

pub use error::from_diesel;
#[cfg(feature = "migrations")]
pub use migrate::run_pending_migrations;
#[cfg(feature = "mysql")]
pub use mysql::MysqlProvider;
#[cfg(feature = "mysql")]
pub use mysql_store::{MYSQL_MIGRATIONS, MysqlSessionStore};
#[cfg(feature = "postgres")]
pub use pg::PgProvider;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub use prepared::{KeepPrepared, Prepared};
pub use provider::{DieselProvider, PooledConnection, ProviderConnection};
#[cfg(feature = "postgres")]
pub use replicas::{ReplicaConfig, ReplicaState};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteConn, SqliteProvider, SqliteTarget, parse_sqlite_url};
#[cfg(feature = "sqlite")]
pub use sqlite_store::{SQLITE_MIGRATIONS, SqliteSessionStore};
#[cfg(feature = "postgres")]
pub use store::{MIGRATIONS, PgSessionStore};

/// Rows the SQL session stores delete per `purge_expired` batch by default.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub const DEFAULT_PURGE_BATCH: u32 = 1000;

/// Not part of the API; for the fuzz targets and property tests.
#[doc(hidden)]
pub mod fuzzing {
    /// The SQL stores' row (the PostgreSQL, MySQL and SQLite stores read the same columns).
    #[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
    pub use crate::row::Row as PgRow;
}

/// The driver crates, re-exported so users name the same versions.
pub use {bb8, diesel, diesel_async};
