//! `SessionManager`: one user-session store and one database provider, built from configuration
//! or by hand, behind one policy, one error type and one layer stack.
//!
//! Start here:
//! - [`SessionManager::build`] with a [`SessionConfig`] (environment, TOML file, or code): the
//!   backends are chosen by URL, so moving sessions from memory to Redis to PostgreSQL is a
//!   configuration change;
//! - [`SessionManager::builder`] for a store or database you built yourself;
//! - [`db_transaction!`] for a transaction scope on the configured database, whichever it is;
//! - the `session-axum` crate's `SessionLayer` to put the sessions in front of axum routes.
//!
//! Cargo features choose which backends are compiled in, each with its driver and nothing else:
//! `memory` and `sqlite` by default, `redis` and `postgres` opt-in; a manager without `sqlite`
//! and `postgres` manages sessions only. A URL whose backend is not compiled in is a
//! [`session_core::SessionError::Config`] naming the feature.
// The README's Rust blocks are compiled and run as doctests, so they cannot drift from the API.
#![cfg_attr(
    all(doctest, feature = "memory", feature = "sqlite"),
    doc = include_str!("../../../README.md")
)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod backend;
mod config;
mod manager;

#[cfg(feature = "postgres")]
pub use config::PostgresStoreConfig;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub use config::SqlStoreConfig;
pub use config::{CONFIG_FILE_VAR, ENV_VARS, NO_DATABASE, SessionConfig, redacted_url};
pub use manager::{Db, SessionManager, SessionManagerBuilder};

/// Re-exported so applications name one version.
pub use session_core;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub use session_diesel;
#[cfg(feature = "memory")]
pub use session_memory;
#[cfg(feature = "redis")]
pub use session_redis;

/// The scope on one provider, shared by the per-feature forms of [`db_transaction!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __db_scope {
    ($provider:expr, $options:expr, retry = $retry:expr, |$conn:ident| $body:expr) => {
        $provider
            .transaction_retrying($options, $retry, async |$conn| $body)
            .await
    };
    ($provider:expr, $options:expr, |$conn:ident| $body:expr) => {
        $crate::session_core::DbSessionProvider::transaction($provider, $options, async |$conn| {
            $body
        })
        .await
    };
}

/// Defines [`db_transaction!`] with one match arm per compiled-in database backend. (`$d` is a
/// `$` passed in, so the defined macro can have metavariables of its own on stable Rust.)
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
macro_rules! define_db_transaction {
    ($d:tt $($variant:ident)+) => {
        /// Runs a transaction scope on the manager's database, whichever backend it is: the body is
        /// compiled once per compiled-in backend, with `$conn` that backend's connection, so write it
        /// with diesel's query builder or `sql_query` (which every backend accepts) rather than a
        /// function taking one connection type. Commits on `Ok`, rolls back on `Err` and on panic.
        ///
        /// ```text
        /// let n = db_transaction!(manager.db()?, ScopeOptions::new(), |conn| {
        ///     diesel::sql_query("INSERT INTO items (name) VALUES ('x')").execute(conn).await.map_err(AppError::from)
        /// })?;
        /// ```
        ///
        /// With `retry = &policy` before the closure, a scope that fails with a serialization failure or a
        /// deadlock runs again from the start ([`session_diesel::DieselProvider::transaction_retrying`]; the
        /// error type implements `session_core::ScopeError`), the way to run SERIALIZABLE work:
        ///
        /// ```text
        /// let options = ScopeOptions::new().isolation(IsolationLevel::Serializable).timeout(Duration::from_secs(2));
        /// db_transaction!(manager.db()?, options, retry = &RetryPolicy::default(), |conn| { … })?;
        /// ```
        #[macro_export]
        macro_rules! db_transaction {
            ($d db:expr, $d options:expr, $d ($d scope:tt)+) => {
                match $d db {
                    $( $d crate::Db::$variant(provider) => {
                        $d crate::__db_scope!(provider, $d options, $d ($d scope)+)
                    } )+
                }
            };
        }
    };
}

#[cfg(all(feature = "sqlite", feature = "postgres", feature = "mysql"))]
define_db_transaction!($ Sqlite Postgres Mysql);
#[cfg(all(feature = "sqlite", feature = "postgres", not(feature = "mysql")))]
define_db_transaction!($ Sqlite Postgres);
#[cfg(all(feature = "sqlite", not(feature = "postgres"), feature = "mysql"))]
define_db_transaction!($ Sqlite Mysql);
#[cfg(all(not(feature = "sqlite"), feature = "postgres", feature = "mysql"))]
define_db_transaction!($ Postgres Mysql);
#[cfg(all(feature = "sqlite", not(feature = "postgres"), not(feature = "mysql")))]
define_db_transaction!($ Sqlite);
#[cfg(all(not(feature = "sqlite"), feature = "postgres", not(feature = "mysql")))]
define_db_transaction!($ Postgres);
#[cfg(all(not(feature = "sqlite"), not(feature = "postgres"), feature = "mysql"))]
define_db_transaction!($ Mysql);

/// A build without a database feature has no database to run a scope on.
#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
#[macro_export]
macro_rules! db_transaction {
    ($($any:tt)*) => {
        compile_error!(
            "db_transaction! needs the `sqlite`, `postgres` or `mysql` feature of session-manager"
        )
    };
}
