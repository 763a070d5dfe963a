//! MySQL and MariaDB: `AsyncMysqlConnection` (mysql_async, pure Rust; no libmysqlclient).

use std::borrow::Cow;

use diesel_async::pooled_connection::ManagerConfig;
use diesel_async::{AsyncConnection, AsyncMysqlConnection};
use session_core::{IsolationLevel, Result, ScopeOptions};

use crate::provider::{DieselProvider, ProviderConnection, sealed};

/// A [`session_core::DbSessionProvider`] for MySQL and MariaDB.
pub type MysqlProvider = DieselProvider<AsyncMysqlConnection>;

impl sealed::Sealed for AsyncMysqlConnection {}

impl ProviderConnection for AsyncMysqlConnection {
    const BACKEND: &'static str = "mysql";

    /// MySQL sets the next transaction's isolation and access mode before it begins (`SET
    /// TRANSACTION` inside one is an error), and a statement time-out is a session variable, so
    /// every scope sets it, to its deadline or to none (`0`), lest a previous scope's stay on the
    /// pooled connection: one statement, one round trip before `BEGIN`. `max_statement_time`
    /// (seconds) is MariaDB's; MySQL's `max_execution_time` covers `SELECT` only, so on MySQL the
    /// deadline is the client's alone.
    fn scope_preamble(options: &ScopeOptions) -> Result<Option<Cow<'static, str>>> {
        let isolation = match options.isolation {
            IsolationLevel::ReadCommitted => Some("ISOLATION LEVEL READ COMMITTED"),
            IsolationLevel::RepeatableRead => Some("ISOLATION LEVEL REPEATABLE READ"),
            IsolationLevel::Serializable => Some("ISOLATION LEVEL SERIALIZABLE"),
            _ => None,
        };
        let access = options.read_only.then_some("READ ONLY");
        // Last: any statement run after `SET TRANSACTION` in autocommit mode is itself the "next
        // transaction" and would use up the characteristics before `BEGIN`.
        let characteristics = match (isolation, access) {
            (Some(i), Some(a)) => format!("; SET TRANSACTION {i}, {a}"),
            (Some(x), None) | (None, Some(x)) => format!("; SET TRANSACTION {x}"),
            (None, None) => String::new(),
        };
        // Rounded up to the millisecond, so the server never stops a statement before the
        // deadline has passed on the client's clock (the scope then reports the deadline).
        let millis = options
            .timeout
            .map_or(0, |limit| limit.as_nanos().div_ceil(1_000_000).max(1));
        let seconds = format!("{}.{:03}", millis / 1000, millis % 1000);
        // `/*M! … */` is run by MariaDB only; MySQL reads it as a comment, so both accept the one
        // statement (a statement of nothing but a comment would be an empty-query error).
        Ok(Some(Cow::Owned(format!(
            "SET /*M! @@session.max_statement_time = {seconds}, */ @session_diesel_scope = 1{characteristics}"
        ))))
    }

    fn scope_prelude(_options: &ScopeOptions) -> Result<Option<Cow<'static, str>>> {
        Ok(None)
    }

    fn manager_config() -> ManagerConfig<Self> {
        ManagerConfig::default()
    }

    /// Puts the transaction manager in its error state, which the pool reads as "broken"
    /// (diesel-async's `is_broken`): a statement dropped half-way (a deadline, a client gone)
    /// leaves mysql_async out of step with the server, and the next user of the connection
    /// would read the rest of the abandoned reply ("can't parse: buf doesn't have enough data",
    /// or worse, another statement's rows).
    fn unsettle(&mut self) {
        use diesel_async::TransactionManager;
        <Self as AsyncConnection>::TransactionManager::transaction_manager_status_mut(self)
            .set_in_error();
    }

    /// Back to the valid state, outside any transaction: only called between transactions.
    fn settle(&mut self) {
        use diesel_async::TransactionManager;
        *<Self as AsyncConnection>::TransactionManager::transaction_manager_status_mut(self) =
            diesel::connection::TransactionManagerStatus::default();
    }
}
