//! Embedded diesel migrations over an async connection.

use diesel_async::{AsyncConnection, AsyncMigrationHarness};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};
use session_core::{Result, SessionError};

/// Applies the `migrations` that the connection's database lacks and gives the connection back
/// with the outcome. diesel's migration runner is synchronous, so it runs on the blocking pool over
/// the async connection. `backend` names the database in errors.
///
/// # Errors
/// The outer error if the blocking task fails (the connection is then gone); the inner one if a
/// migration fails (the connection comes back, e.g. to release a lock taken on it).
pub async fn run_pending_migrations<C>(
    backend: &'static str,
    conn: C,
    migrations: EmbeddedMigrations,
) -> Result<(C, Result<()>)>
where
    C: AsyncConnection + Send + 'static,
    AsyncMigrationHarness<C>: MigrationHarness<C::Backend>,
    EmbeddedMigrations: diesel::migration::MigrationSource<C::Backend>,
{
    let (conn, outcome) = tokio::task::spawn_blocking(move || {
        let mut harness = AsyncMigrationHarness::new(conn);
        let outcome = harness
            .run_pending_migrations(migrations)
            .map(drop)
            .map_err(|e| e.to_string());
        (harness.into_inner(), outcome)
    })
    .await
    .map_err(|e| SessionError::Backend {
        backend,
        source: Box::new(e),
    })?;
    Ok((
        conn,
        outcome.map_err(|reason| SessionError::Backend {
            backend,
            source: reason.into(),
        }),
    ))
}
