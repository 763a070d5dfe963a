//! Raw SQL statements that stay prepared on their connection (PostgreSQL, MySQL).

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::QueryResult;

/// A `diesel::sql_query` statement (with its binds) that the connection's statement cache may keep.
///
/// `sql_query` marks itself unsafe to cache because its text could be assembled from input, so
/// diesel-async prepares it anew on every call: a `Parse`/`Describe` round trip before each
/// execution (on MySQL a prepare, the execution and a close). Every statement of the store is fixed text with bind parameters, so it is safe to
/// cache; wrapped, it is keyed by its SQL text and prepared once per connection, and each later
/// call is a single round trip.
pub struct Prepared<Q>(Q);

impl<DB: Backend, Q: QueryFragment<DB>> QueryFragment<DB> for Prepared<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &DB) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q> QueryId for Prepared<Q> {
    type QueryId = ();
    // No static id: the cache keys the statement by its SQL text and bind types.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}

/// `.prepared()` on a bound `sql_query`, for reading in call order:
///
/// ```no_run
/// # async fn demo(conn: &mut diesel_async::AsyncPgConnection) -> diesel::QueryResult<usize> {
/// use diesel::sql_types::Text;
/// use diesel_async::RunQueryDsl;
/// use session_diesel::KeepPrepared;
/// diesel::sql_query("DELETE FROM items WHERE name = $1")
///     .bind::<Text, _>("old")
///     .prepared()          // one round trip per call once the connection has prepared it
///     .execute(conn)
///     .await
/// # }
/// ```
///
/// Only for fixed SQL text: each distinct text stays prepared on every connection that ran it.
pub trait KeepPrepared: Sized {
    /// Wraps the statement so its connection keeps it prepared.
    fn prepared(self) -> Prepared<Self> {
        Prepared(self)
    }
}

impl<Q> KeepPrepared for Q {}
