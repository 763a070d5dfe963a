//! diesel-async backends: a [`DbSessionProvider`](session_core::DbSessionProvider) for PostgreSQL
//! and SQLite on a bb8 pool, and a PostgreSQL [`UserSessionStore`](session_core::UserSessionStore).
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
#[cfg(feature = "postgres")]
mod pg;
#[cfg(feature = "postgres")]
mod prepared;
mod provider;
#[cfg(feature = "postgres")]
mod replicas;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "postgres")]
mod store;

pub use error::from_diesel;
#[cfg(feature = "migrations")]
pub use migrate::run_pending_migrations;
#[cfg(feature = "postgres")]
pub use pg::PgProvider;
#[cfg(feature = "postgres")]
pub use prepared::{KeepPrepared, Prepared};
pub use provider::{DieselProvider, PooledConnection, ProviderConnection};
#[cfg(feature = "postgres")]
pub use replicas::{ReplicaConfig, ReplicaState};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteConn, SqliteProvider, SqliteTarget, parse_sqlite_url};
#[cfg(feature = "postgres")]
pub use store::{DEFAULT_PURGE_BATCH, MIGRATIONS, PgSessionStore};

/// Not part of the API; for the fuzz targets and property tests.
#[doc(hidden)]
pub mod fuzzing {
    #[cfg(feature = "postgres")]
    pub use crate::store::Row as PgRow;
}

/// The driver crates, re-exported so users name the same versions.
pub use {bb8, diesel, diesel_async};
