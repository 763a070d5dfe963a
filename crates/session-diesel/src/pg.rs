//! PostgreSQL: `AsyncPgConnection` (tokio-postgres; no libpq).

use std::borrow::Cow;

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::ManagerConfig;
use session_core::{IsolationLevel, Result, ScopeOptions};

use crate::provider::{DieselProvider, ProviderConnection, sealed};

/// A [`session_core::DbSessionProvider`] for PostgreSQL.
pub type PgProvider = DieselProvider<AsyncPgConnection>;

impl sealed::Sealed for AsyncPgConnection {}

impl ProviderConnection for AsyncPgConnection {
    const BACKEND: &'static str = "postgres";

    fn scope_prelude(options: &ScopeOptions) -> Result<Option<Cow<'static, str>>> {
        let transaction = transaction_statement(options);
        // The server stops the scope's statements at its deadline too: a client that gives up
        // drops the connection, but the server would otherwise run a long statement to its end.
        // Rounded up to the millisecond, so the server never cancels before the deadline has
        // passed on the client's clock (the client then reports the deadline, not a database error).
        let deadline = options.timeout.map(|limit| {
            format!(
                "SET LOCAL statement_timeout = {}",
                limit
                    .as_nanos()
                    .div_ceil(1_000_000)
                    .clamp(1, i32::MAX as u128)
            )
        });
        Ok(match (transaction, deadline) {
            (None, None) => None,
            (Some(t), None) => Some(Cow::Borrowed(t)),
            (None, Some(d)) => Some(Cow::Owned(d)),
            (Some(t), Some(d)) => Some(Cow::Owned(format!("{t}; {d}"))),
        })
    }

    fn manager_config() -> ManagerConfig<Self> {
        ManagerConfig::default()
    }
}

/// `SET TRANSACTION …` for the isolation level and access mode, if they are not the defaults.
fn transaction_statement(options: &ScopeOptions) -> Option<&'static str> {
    let statement = match (options.isolation, options.read_only) {
        (IsolationLevel::Default, false) => return None,
        (IsolationLevel::Default, true) => "SET TRANSACTION READ ONLY",
        (IsolationLevel::ReadCommitted, false) => "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
        (IsolationLevel::ReadCommitted, true) => {
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED READ ONLY"
        }
        (IsolationLevel::RepeatableRead, false) => {
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"
        }
        (IsolationLevel::RepeatableRead, true) => {
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"
        }
        (IsolationLevel::Serializable, false) => "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        (IsolationLevel::Serializable, true) => {
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY"
        }
        _ => return None,
    };
    Some(statement)
}
