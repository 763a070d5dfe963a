//! PostgreSQL: `AsyncPgConnection` (tokio-postgres; no libpq).

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::ManagerConfig;
use session_core::{IsolationLevel, Result, ScopeOptions};

use crate::provider::{DieselProvider, ProviderConnection, sealed};

/// A [`session_core::DbSessionProvider`] for PostgreSQL.
pub type PgProvider = DieselProvider<AsyncPgConnection>;

impl sealed::Sealed for AsyncPgConnection {}

impl ProviderConnection for AsyncPgConnection {
    const BACKEND: &'static str = "postgres";

    fn scope_prelude(options: &ScopeOptions) -> Result<Option<&'static str>> {
        let statement = match (options.isolation, options.read_only) {
            (IsolationLevel::Default, false) => return Ok(None),
            (IsolationLevel::Default, true) => "SET TRANSACTION READ ONLY",
            (IsolationLevel::ReadCommitted, false) => {
                "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"
            }
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
            _ => return Ok(None),
        };
        Ok(Some(statement))
    }

    fn manager_config() -> ManagerConfig<Self> {
        ManagerConfig::default()
    }
}
