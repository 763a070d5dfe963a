//! `SessionManager`: one user-session store and one database provider, built from configuration,
//! behind one policy, one error type and one observability layer.
//!
//! Moving sessions from memory to Redis to PostgreSQL is a change of `SESSION_STORE_URL`; cargo
//! features (`memory` and `sqlite` by default, `redis` and `postgres` opt-in) choose which backends
//! are compiled in, and a URL whose backend is not is a [`session_core::SessionError::Config`]
//! naming the feature.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod backend;
mod config;
mod manager;

pub use config::{ENV_VARS, SessionConfig};
pub use manager::{Db, SessionManager, Updated};

/// Re-exported so applications name one version.
pub use session_core;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use session_diesel;

/// The scope on one provider, shared by the per-feature forms of [`db_transaction!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __db_scope {
    ($provider:expr, $options:expr, |$conn:ident| $body:expr) => {
        $crate::session_core::DbSessionProvider::transaction($provider, $options, async |$conn| {
            $body
        })
        .await
    };
}

/// Runs a transaction scope on the manager's database, whichever backend it is: the body is
/// compiled once per compiled-in backend, with `$conn` the backend's connection.
///
/// ```text
/// let id = db_transaction!(manager.db(), ScopeOptions::new(), |conn| {
///     diesel::sql_query("INSERT INTO items (name) VALUES ('x')").execute(conn).await.map_err(AppError::from)
/// })?;
/// ```
#[cfg(all(feature = "sqlite", feature = "postgres"))]
#[macro_export]
macro_rules! db_transaction {
    ($db:expr, $options:expr, |$conn:ident| $body:expr) => {
        match $db {
            $crate::Db::Sqlite(provider) => $crate::__db_scope!(provider, $options, |$conn| $body),
            $crate::Db::Postgres(provider) => {
                $crate::__db_scope!(provider, $options, |$conn| $body)
            }
        }
    };
}

/// Runs a transaction scope on the manager's database (SQLite in this build).
#[cfg(all(feature = "sqlite", not(feature = "postgres")))]
#[macro_export]
macro_rules! db_transaction {
    ($db:expr, $options:expr, |$conn:ident| $body:expr) => {
        match $db {
            $crate::Db::Sqlite(provider) => $crate::__db_scope!(provider, $options, |$conn| $body),
        }
    };
}

/// Runs a transaction scope on the manager's database (PostgreSQL in this build).
#[cfg(all(feature = "postgres", not(feature = "sqlite")))]
#[macro_export]
macro_rules! db_transaction {
    ($db:expr, $options:expr, |$conn:ident| $body:expr) => {
        match $db {
            $crate::Db::Postgres(provider) => {
                $crate::__db_scope!(provider, $options, |$conn| $body)
            }
        }
    };
}
