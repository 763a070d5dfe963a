//! User sessions in MySQL (8.0 and later) and MariaDB (10.6 and later).
//!
//! The same table shape and the same guarantees as the PostgreSQL store, in SQL both servers
//! accept. Neither has `UPDATE … RETURNING`, so a write that must answer the row as stored reads
//! it back by its primary key (a second round trip, on the write path only); reads and the
//! throttled `touch` are one statement. Instants are epoch milliseconds judged by the policy
//! clock's "now", passed to every statement; a session is live while `idle_expires_at_ms > now`.
//! A capped `create` takes its user's turn row (`user_session_turns`) in a READ COMMITTED
//! transaction, so concurrent sign-ins of one user evict and insert one after another (ADR 0023).

use std::time::SystemTime;

use async_trait::async_trait;
use diesel::OptionalExtension;
use diesel::QueryableByName;
use diesel::mysql::Mysql;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use session_core::clock::millis_since_epoch;
use session_core::{
    DbSessionProvider, Imported, IsolationLevel, IssuedSession, NewUserSession, PoolConfig, Result,
    RetryPolicy, ScanCursor, ScanPage, ScopeOptions, SessionError, SessionHandle, SessionPolicy,
    SessionToken, StorageDump, Updated, UserSession, UserSessionStore,
};

use crate::error::from_diesel;
use crate::mysql::MysqlProvider;
use crate::prepared::KeepPrepared;
use crate::provider::{CheckoutCheck, ProviderConnection};
use crate::row::{
    Row, Stored, keyset_page, parse_keyset_cursor, update_looking_twice, update_missed,
};

/// The schema of the MySQL store, applied by [`MysqlSessionStore::connect`] (and
/// [`MysqlSessionStore::migrate`]).
pub const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations-mysql");

const BACKEND: &str = "mysql";

/// Serializes migrations across instances starting at once: a named lock of the server, held by
/// the migrating connection (which is closed afterwards, so the lock cannot outlive it).
const MIGRATION_LOCK: &str = "session_diesel.migrations";

/// How long an instance waits for another's migrations before giving up.
const MIGRATION_LOCK_WAIT_SECONDS: u32 = 60;

/// The session columns, in [`Row`]'s order. A row the previous release wrote has no
/// `authenticated_at_ms` (authenticated at sign-in) and no `device` (the column is nullable, see
/// its migration).
const COLUMNS: &str = "CAST(handle AS CHAR) AS handle, CAST(user_id AS CHAR) AS user_id, company_name, email, \
     is_root, remember_me, attributes, created_at_ms, last_seen_at_ms, idle_expires_at_ms, \
     absolute_expires_at_ms, version, COALESCE(authenticated_at_ms, created_at_ms) AS authenticated_at_ms, \
     COALESCE(device, '') AS device, address";

const INSERT: &str = "INSERT INTO user_sessions (handle, user_id, company_name, email, is_root, remember_me,
         attributes, created_at_ms, last_seen_at_ms, idle_expires_at_ms, absolute_expires_at_ms, version,
         authenticated_at_ms, device, address)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// Takes the user's turn: the row is created on the first capped sign-in and locked (until the
/// transaction ends) by every one, the first included.
const TAKE_TURN: &str = "INSERT INTO user_session_turns (user_key) VALUES (UNHEX(SHA2(?, 256)))
     ON DUPLICATE KEY UPDATE user_key = user_key";

/// How often a transaction of the store chosen as a deadlock victim is run again: two first
/// sign-ins of one user creating its turn row, or two instances purging at once.
fn deadlock_retry() -> RetryPolicy {
    let mut retry = RetryPolicy::default();
    retry.max_retries = 8;
    retry.min_delay = std::time::Duration::from_millis(1);
    retry.max_delay = std::time::Duration::from_millis(50);
    retry
}

#[derive(QueryableByName)]
struct Handle {
    #[diesel(sql_type = Text)]
    handle: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Json {
    #[diesel(sql_type = Text)]
    row: String,
}

fn ms(t: std::time::SystemTime) -> i64 {
    i64::try_from(millis_since_epoch(t)).unwrap_or(i64::MAX)
}

/// Runs `$body` (an async block's contents, with `$conn: &mut AsyncMysqlConnection`) on a pooled
/// connection that is marked broken until the body has run to its end: a store call dropped
/// half-way (its caller's deadline, a client gone) must not hand the next caller a connection
/// whose reply is still on the wire (ADR 0023).
macro_rules! in_step {
    ($self:ident, |$conn:ident| $body:block) => {{
        let mut pooled = $self.conn().await?;
        let $conn: &mut AsyncMysqlConnection = &mut pooled;
        $conn.unsettle();
        let out: Result<_> = async $body.await;
        $conn.settle();
        out
    }};
}

/// A [`UserSessionStore`] on a MySQL or MariaDB table `user_sessions`, through a
/// [`MysqlProvider`] pool.
pub struct MysqlSessionStore {
    db: MysqlProvider,
    policy: SessionPolicy,
    purge_batch: i64,
}

impl std::fmt::Debug for MysqlSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlSessionStore")
            .field("db", &self.db)
            .field("policy", &self.policy)
            .field("purge_batch", &self.purge_batch)
            .finish_non_exhaustive()
    }
}

impl MysqlSessionStore {
    /// Connects, applies pending migrations (see [`MysqlSessionStore::migrate`]) and returns the
    /// store.
    ///
    /// # Errors
    /// [`SessionError::Config`] for invalid settings; `Unavailable`/`Timeout` if the server cannot
    /// be reached; `Backend` if a migration fails.
    pub async fn connect(url: &str, pool: PoolConfig, policy: SessionPolicy) -> Result<Self> {
        policy.validate()?;
        Self::migrate(url).await?;
        Ok(Self {
            // Most operations are one statement; a checkout ping would double their round trips,
            // so the pool tests connections locally, as the PostgreSQL store's does (ADR 0008).
            db: MysqlProvider::connect_checking(url, pool, CheckoutCheck::Local).await?,
            policy,
            purge_batch: i64::from(crate::DEFAULT_PURGE_BATCH),
        })
    }

    /// Applies the embedded migrations that `url`'s database lacks. Safe to call from several
    /// instances at once: they take turns on a named lock (`GET_LOCK`).
    ///
    /// # Errors
    /// `Unavailable` if the server cannot be reached; `Backend` if a migration fails or another
    /// instance holds the lock for over a minute.
    pub async fn migrate(url: &str) -> Result<()> {
        #[derive(QueryableByName)]
        struct Locked {
            #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
            locked: Option<i64>,
        }
        let mut conn =
            AsyncMysqlConnection::establish(url)
                .await
                .map_err(|e| SessionError::Unavailable {
                    backend: BACKEND,
                    source: Box::new(e),
                })?;
        let locked: Locked = diesel::sql_query(format!(
            "SELECT GET_LOCK('{MIGRATION_LOCK}', {MIGRATION_LOCK_WAIT_SECONDS}) AS locked"
        ))
        .get_result(&mut conn)
        .await
        .map_err(|e| from_diesel(BACKEND, e))?;
        if locked.locked != Some(1) {
            return Err(SessionError::Backend {
                backend: BACKEND,
                source: format!(
                    "another instance held the migration lock for over {MIGRATION_LOCK_WAIT_SECONDS} s"
                )
                .into(),
            });
        }
        let (mut conn, result) =
            crate::migrate::run_pending_migrations(BACKEND, conn, MYSQL_MIGRATIONS).await?;
        let _ = conn
            .batch_execute(&format!("DO RELEASE_LOCK('{MIGRATION_LOCK}')"))
            .await;
        result
    }

    /// Sets how many rows each `purge_expired` transaction deletes (default 1000).
    #[must_use]
    pub fn with_purge_batch(mut self, rows: u32) -> Self {
        self.purge_batch = i64::from(rows.max(1));
        self
    }

    /// The connection pool (also usable as a [`DbSessionProvider`] for application queries).
    #[must_use]
    pub fn provider(&self) -> &MysqlProvider {
        &self.db
    }

    fn now(&self) -> i64 {
        ms(self.policy.now())
    }

    async fn conn(&self) -> Result<crate::PooledConnection<AsyncMysqlConnection>> {
        self.db.connection().await
    }

    /// Converts a statement's error. A lost connection makes the next checkouts ping: its
    /// siblings in the pool probably died with it.
    fn fail(&self, e: diesel::result::Error) -> SessionError {
        let err = from_diesel(BACKEND, e);
        if matches!(err, SessionError::Unavailable { .. }) {
            self.db.suspect_connections();
        }
        err
    }

    /// The live session under `handle`, on `conn`.
    async fn live(
        &self,
        conn: &mut AsyncMysqlConnection,
        handle: &str,
        now: i64,
    ) -> Result<Option<UserSession>> {
        let row: Option<Row> = diesel::sql_query(SELECT_LIVE.as_str())
            .bind::<Text, _>(handle)
            .bind::<BigInt, _>(now)
            .prepared()
            .get_result(conn)
            .await
            .optional()
            .map_err(|e| self.fail(e))?;
        row.map(|r| r.decode(BACKEND)).transpose()
    }

    /// One attempt of `update`: the compare-and-set statement, and on a miss, a read that says
    /// why.
    async fn update_once(&self, session: &UserSession) -> Result<Updated> {
        let new_token = SessionToken::generate()?;
        let now = self.now();
        in_step!(self, |conn| {
            // MySQL assigns left to right, each assignment seeing the ones before it: the handle is
            // decided first, from the row's old `is_root` and `authenticated_at_ms`. A change of
            // either (a privilege change, a re-authentication) moves the row to a new handle in
            // the same statement.
            let changed = diesel::sql_query(
                "UPDATE user_sessions SET handle = IF(is_root <> ?
                     OR COALESCE(authenticated_at_ms, created_at_ms) <> ?, ?, handle),
                     company_name = ?, email = ?, is_root = ?, attributes = ?,
                     authenticated_at_ms = ?, device = ?, address = ?, version = version + 1
                 WHERE handle = ? AND version = ? AND user_id = ? AND idle_expires_at_ms > ?",
            )
            .bind::<Bool, _>(session.is_root)
            .bind::<BigInt, _>(ms(session.authenticated_at))
            .bind::<Text, _>(new_token.handle().as_str())
            .bind::<Text, _>(&session.company_name)
            .bind::<Text, _>(&session.email)
            .bind::<Bool, _>(session.is_root)
            .bind::<Text, _>(session.attributes_json()?)
            .bind::<BigInt, _>(ms(session.authenticated_at))
            .bind::<Text, _>(&session.device)
            .bind::<Nullable<Text>, _>(crate::row::address_text(session))
            .bind::<Text, _>(session.handle.as_str())
            .bind::<BigInt, _>(i64::try_from(session.version).unwrap_or(-1))
            .bind::<Text, _>(&session.user_id)
            .bind::<BigInt, _>(now)
            .prepared()
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
            if changed == 1 {
                // The row as stored (its instants may have moved since the caller read it). Gone
                // already means a delete came right after this update: the session is over.
                let sql = format!(
                    "SELECT {COLUMNS} FROM user_sessions WHERE handle IN (?, ?) AND idle_expires_at_ms > ?"
                );
                let row: Option<Row> = diesel::sql_query(sql)
                    .bind::<Text, _>(session.handle.as_str())
                    .bind::<Text, _>(new_token.handle().as_str())
                    .bind::<BigInt, _>(now)
                    .prepared()
                    .get_result(&mut *conn)
                    .await
                    .optional()
                    .map_err(|e| self.fail(e))?;
                let stored = row.ok_or(SessionError::NotFound)?.decode(BACKEND)?;
                return Ok(if stored.handle == session.handle {
                    Updated::kept(stored)
                } else {
                    Updated::moved_to(stored, new_token)
                });
            }
            // Nothing matched: a second statement, on the failure path only, says why.
            let stored: Option<Stored> = diesel::sql_query(
                "SELECT CAST(user_id AS CHAR) AS user_id, version FROM user_sessions
                 WHERE handle = ? AND idle_expires_at_ms > ?",
            )
            .bind::<Text, _>(session.handle.as_str())
            .bind::<BigInt, _>(now)
            .prepared()
            .get_result(&mut *conn)
            .await
            .optional()
            .map_err(|e| self.fail(e))?;
            let live = stored.as_ref().map(|s| (s.user_id.as_str(), s.version));
            Err(update_missed(session, live))
        })
    }

    /// `create` under a per-user cap of `cap`: in one READ COMMITTED transaction, take the user's
    /// turn, evict the live sessions beyond the newest `cap - 1`, insert.
    async fn create_capped(&self, session: &UserSession, attributes: &str, cap: i64) -> Result<()> {
        let options = ScopeOptions::new().isolation(IsolationLevel::ReadCommitted);
        self.db
            .transaction_retrying(options, &deadlock_retry(), async |conn| {
                diesel::sql_query(TAKE_TURN)
                    .bind::<Text, _>(&session.user_id)
                    .prepared()
                    .execute(conn)
                    .await
                    .map_err(|e| from_diesel(BACKEND, e))?;
                // Repeated until every session found beyond the cap is gone: a row that a
                // concurrent rotate re-keys between the read and the delete is missed by the
                // delete, and found again, under its new handle, by the next read.
                loop {
                    let live: Vec<Handle> = diesel::sql_query(
                        "SELECT CAST(handle AS CHAR) AS handle FROM user_sessions
                         WHERE user_id = ? AND idle_expires_at_ms > ?
                         ORDER BY user_sessions.created_at_ms DESC, user_sessions.handle DESC",
                    )
                    .bind::<Text, _>(&session.user_id)
                    .bind::<BigInt, _>(ms(session.created_at))
                    .prepared()
                    .load(conn)
                    .await
                    .map_err(|e| from_diesel(BACKEND, e))?;
                    let keep = usize::try_from(cap - 1).unwrap_or(usize::MAX);
                    let evicted: Vec<&str> =
                        live.iter().skip(keep).map(|h| h.handle.as_str()).collect();
                    if evicted.is_empty() {
                        break;
                    }
                    let deleted = delete_handles(conn, &evicted).await?;
                    if deleted == evicted.len() {
                        break;
                    }
                }
                insert(session, attributes)
                    .execute(conn)
                    .await
                    .map_err(|e| from_diesel(BACKEND, e))
            })
            .await
            .map(drop)
            .inspect_err(|e| {
                if matches!(e, SessionError::Unavailable { .. }) {
                    self.db.suspect_connections();
                }
            })
    }
}

static SELECT_LIVE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("SELECT {COLUMNS} FROM user_sessions WHERE handle = ? AND idle_expires_at_ms > ?")
});

/// `my1:<handle of the last session of the page before>`.
const CURSOR_PREFIX: &str = "my1:";

/// The first page of `scan`, `?` rows.
static SCAN_FIRST: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM user_sessions WHERE idle_expires_at_ms > ?
         ORDER BY user_sessions.handle LIMIT ?"
    )
});

/// A later page of `scan`: the rows after a handle.
static SCAN_AFTER: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM user_sessions
         WHERE user_sessions.handle > CAST(? AS BINARY) AND idle_expires_at_ms > ?
         ORDER BY user_sessions.handle LIMIT ?"
    )
});

/// The insert of a new session, bound.
fn insert<'a>(
    session: &'a UserSession,
    attributes: &'a str,
) -> crate::Prepared<BoxedSqlQuery<'a, Mysql, SqlQuery>> {
    diesel::sql_query(INSERT)
        .into_boxed::<Mysql>()
        .bind::<Text, _>(session.handle.as_str())
        .bind::<Text, _>(&session.user_id)
        .bind::<Text, _>(&session.company_name)
        .bind::<Text, _>(&session.email)
        .bind::<Bool, _>(session.is_root)
        .bind::<Bool, _>(session.remember_me)
        .bind::<Text, _>(attributes)
        .bind::<BigInt, _>(ms(session.created_at))
        .bind::<BigInt, _>(ms(session.last_seen_at))
        .bind::<BigInt, _>(ms(session.idle_expires_at))
        .bind::<BigInt, _>(ms(session.absolute_expires_at))
        .bind::<BigInt, _>(i64::try_from(session.version).unwrap_or(1))
        .bind::<BigInt, _>(ms(session.authenticated_at))
        .bind::<Text, _>(&session.device)
        .bind::<Nullable<Text>, _>(crate::row::address_text(session))
        .prepared()
}

/// Deletes the rows under `handles` (one statement) and returns how many it deleted.
async fn delete_handles(conn: &mut AsyncMysqlConnection, handles: &[&str]) -> Result<usize> {
    let marks = vec!["?"; handles.len()].join(", ");
    let mut delete = diesel::sql_query(format!(
        "DELETE FROM user_sessions WHERE handle IN ({marks})"
    ))
    .into_boxed::<Mysql>();
    for handle in handles {
        delete = delete.bind::<Text, _>(*handle);
    }
    delete
        .execute(conn)
        .await
        .map_err(|e| from_diesel(BACKEND, e))
}

fn rows(rows: Vec<Row>) -> Result<Vec<UserSession>> {
    rows.into_iter().map(|r| r.decode(BACKEND)).collect()
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl UserSessionStore for MysqlSessionStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn policy(&self) -> &SessionPolicy {
        &self.policy
    }

    async fn create(&self, new: NewUserSession) -> Result<IssuedSession> {
        let token = SessionToken::generate()?;
        let session = new.into_session(&token, &self.policy)?;
        let attributes = session.attributes_json()?;
        match self.policy.max_sessions_per_user {
            Some(cap) if cap > 0 => {
                self.create_capped(&session, &attributes, i64::from(cap))
                    .await?;
            }
            _ => {
                in_step!(self, |conn| {
                    insert(&session, &attributes)
                        .execute(&mut *conn)
                        .await
                        .map_err(|e| self.fail(e))
                })?;
            }
        }
        Ok(IssuedSession { token, session })
    }

    async fn get(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        in_step!(self, |conn| {
            self.live(&mut *conn, token.handle().as_str(), self.now())
                .await
        })
    }

    async fn touch(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        // A read, and a write only when the throttle interval has passed; the write's WHERE
        // re-checks the interval, so of concurrent due touches one writes, and the others read
        // what it wrote.
        let now = self.policy.now();
        in_step!(self, |conn| {
            let handle = token.handle().as_str();
            let Some(mut session) = self.live(&mut *conn, handle, ms(now)).await? else {
                return Ok(None);
            };
            if !self.policy.touch_due(&session, now) {
                return Ok(Some(session));
            }
            let idle = self.policy.touched_idle_expiry(&session, now);
            let due = ms(now).saturating_sub(
                i64::try_from(self.policy.touch_interval.as_millis()).unwrap_or(i64::MAX),
            );
            let written = diesel::sql_query(
                "UPDATE user_sessions SET last_seen_at_ms = ?, idle_expires_at_ms = ?
                 WHERE handle = ? AND idle_expires_at_ms > ? AND last_seen_at_ms <= ?",
            )
            .bind::<BigInt, _>(ms(now))
            .bind::<BigInt, _>(ms(idle))
            .bind::<Text, _>(handle)
            .bind::<BigInt, _>(ms(now))
            .bind::<BigInt, _>(due)
            .prepared()
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
            if written == 0 {
                // Another touch wrote first (or the session went meanwhile): read what stands.
                return self.live(&mut *conn, handle, ms(now)).await;
            }
            session.last_seen_at = now;
            session.idle_expires_at = idle;
            Ok(Some(session))
        })
    }

    async fn update(&self, session: &UserSession) -> Result<Updated> {
        session.validate(&self.policy)?;
        update_looking_twice(|| self.update_once(session)).await
    }

    async fn rotate(&self, token: &SessionToken) -> Result<Option<IssuedSession>> {
        let new_token = SessionToken::generate()?;
        let now = self.now();
        in_step!(self, |conn| {
            // Changing the key of the row is atomic; a concurrent rotation waits on the row lock, then
            // finds the old handle gone.
            let moved = diesel::sql_query(
                "UPDATE user_sessions SET handle = ? WHERE handle = ? AND idle_expires_at_ms > ?",
            )
            .bind::<Text, _>(new_token.handle().as_str())
            .bind::<Text, _>(token.handle().as_str())
            .bind::<BigInt, _>(now)
            .prepared()
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
            if moved == 0 {
                return Ok(None);
            }
            Ok(self
                .live(&mut *conn, new_token.handle().as_str(), now)
                .await?
                .map(|session| IssuedSession {
                    token: new_token,
                    session,
                }))
        })
    }

    async fn delete(&self, token: &SessionToken) -> Result<bool> {
        self.delete_by_handle(token.handle()).await
    }

    async fn delete_by_handle(&self, handle: &SessionHandle) -> Result<bool> {
        let now = self.now();
        in_step!(self, |conn| {
            let live = diesel::sql_query(
                "DELETE FROM user_sessions WHERE handle = ? AND idle_expires_at_ms > ?",
            )
            .bind::<Text, _>(handle.as_str())
            .bind::<BigInt, _>(now)
            .prepared()
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
            if live == 0 {
                // An expired row under the handle goes too (the purge would take it later).
                diesel::sql_query("DELETE FROM user_sessions WHERE handle = ?")
                    .bind::<Text, _>(handle.as_str())
                    .prepared()
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| self.fail(e))?;
            }
            Ok(live > 0)
        })
    }

    async fn list_by_user(&self, user_id: &str) -> Result<Vec<UserSession>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM user_sessions WHERE user_id = ? AND idle_expires_at_ms > ?
             ORDER BY user_sessions.created_at_ms, user_sessions.handle"
        );
        in_step!(self, |conn| {
            let found: Vec<Row> = diesel::sql_query(sql)
                .bind::<Text, _>(user_id)
                .bind::<BigInt, _>(self.now())
                .prepared()
                .load(&mut *conn)
                .await
                .map_err(|e| self.fail(e))?;
            rows(found)
        })
    }

    async fn delete_by_user(&self, user_id: &str, except: Option<&SessionHandle>) -> Result<u64> {
        let now = self.now();
        let except = except.map_or("", SessionHandle::as_str);
        in_step!(self, |conn| {
            // Live sessions first (their number is the answer), then the user's expired leftovers.
            let mut deleted = [0; 2];
            for (sql, n) in [
                "DELETE FROM user_sessions WHERE user_id = ? AND handle <> ? AND idle_expires_at_ms > ?",
                "DELETE FROM user_sessions WHERE user_id = ? AND handle <> ? AND idle_expires_at_ms <= ?",
            ]
            .into_iter()
            .zip(&mut deleted)
            {
                *n = diesel::sql_query(sql)
                    .bind::<Text, _>(user_id)
                    .bind::<Text, _>(except)
                    .bind::<BigInt, _>(now)
                    .prepared()
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| self.fail(e))?;
            }
            Ok(deleted[0] as u64)
        })
    }

    async fn purge_expired(&self) -> Result<u64> {
        // Bounded batches, each a READ COMMITTED transaction that locks the rows it will delete
        // and skips rows another purger has locked: instances purging at once neither wait for
        // each other nor delete a row twice.
        let now = self.now();
        let batch = self.purge_batch;
        let options = ScopeOptions::new().isolation(IsolationLevel::ReadCommitted);
        // Tombstones whose instant has passed (and imports' turn rows, at 0) refuse nothing;
        // they are not sessions, so not counted.
        loop {
            let deleted = in_step!(self, |conn| {
                diesel::sql_query("DELETE FROM user_session_tombstones WHERE until_ms <= ? LIMIT ?")
                    .bind::<BigInt, _>(now)
                    .bind::<BigInt, _>(batch)
                    .prepared()
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| self.fail(e))
            })?;
            if (deleted as i64) < batch {
                break;
            }
        }
        let mut total = 0u64;
        loop {
            // Two purgers can still deadlock on InnoDB (a skipped row's secondary-index record
            // stays locked by the one that skipped it): the victim's batch rolled back whole and
            // runs again.
            let deleted = self
                .db
                .transaction_retrying(options, &deadlock_retry(), async |conn| {
                    let due: Vec<Handle> = diesel::sql_query(
                        "SELECT CAST(handle AS CHAR) AS handle FROM user_sessions
                         WHERE idle_expires_at_ms <= ? ORDER BY user_sessions.idle_expires_at_ms
                         LIMIT ? FOR UPDATE SKIP LOCKED",
                    )
                    .bind::<BigInt, _>(now)
                    .bind::<BigInt, _>(batch)
                    .prepared()
                    .load(conn)
                    .await
                    .map_err(|e| from_diesel(BACKEND, e))?;
                    if due.is_empty() {
                        return Ok::<_, SessionError>((0, 0));
                    }
                    let handles: Vec<&str> = due.iter().map(|h| h.handle.as_str()).collect();
                    Ok((due.len(), delete_handles(conn, &handles).await?))
                })
                .await?;
            let (found, removed) = deleted;
            total += removed as u64;
            if (found as i64) < batch {
                return Ok(total);
            }
        }
    }

    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage> {
        session_core::check_scan_limit(limit)?;
        let after = parse_keyset_cursor(CURSOR_PREFIX, cursor)?;
        let rows_wanted = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let now = self.now();
        in_step!(self, |conn| {
            // Keyset pagination on the primary key, compared and ordered as bytes: `handle` in
            // `COLUMNS` is a text alias, whose collation would order (and compare) differently.
            let found: Vec<Row> = match &after {
                None => {
                    diesel::sql_query(SCAN_FIRST.as_str())
                        .bind::<BigInt, _>(now)
                        .bind::<BigInt, _>(rows_wanted)
                        .prepared()
                        .load(&mut *conn)
                        .await
                }
                Some(handle) => {
                    diesel::sql_query(SCAN_AFTER.as_str())
                        .bind::<Text, _>(handle.as_str())
                        .bind::<BigInt, _>(now)
                        .bind::<BigInt, _>(rows_wanted)
                        .prepared()
                        .load(&mut *conn)
                        .await
                }
            }
            .map_err(|e| self.fail(e))?;
            Ok(keyset_page(CURSOR_PREFIX, rows(found)?, limit))
        })
    }

    async fn import(&self, session: &UserSession) -> Result<Imported> {
        session.validate_import(&self.policy)?;
        let now = self.policy.now();
        if self.policy.is_expired(session, now) {
            return Ok(Imported::Expired);
        }
        let attributes = session.attributes_json()?;
        let options = ScopeOptions::new().isolation(IsolationLevel::ReadCommitted);
        self.db
            .transaction_retrying(options, &deadlock_retry(), async |conn| {
                // The handle's turn (see the tombstones' migration), then its tombstone. No
                // affected row: the row was there already, and no turn row of this import needs
                // removing below (a client asking for found rows counts it too, and the removal
                // then finds no row at 0).
                let created = diesel::sql_query(
                    "INSERT INTO user_session_tombstones (handle, until_ms) VALUES (?, 0)
                     ON DUPLICATE KEY UPDATE handle = handle",
                )
                .bind::<Text, _>(session.handle.as_str())
                .prepared()
                .execute(conn)
                .await
                .map_err(|e| from_diesel(BACKEND, e))?;
                let standing: Vec<Count> = diesel::sql_query(
                    "SELECT COUNT(*) AS n FROM user_session_tombstones
                     WHERE handle = ? AND until_ms > ?",
                )
                .bind::<Text, _>(session.handle.as_str())
                .bind::<BigInt, _>(ms(now))
                .prepared()
                .load(conn)
                .await
                .map_err(|e| from_diesel(BACKEND, e))?;
                if standing.iter().any(|c| c.n > 0) {
                    return Ok(Imported::Ended);
                }
                // A row that has expired may be replaced; a live one never is. The insert then
                // settles a race with another import (or an expired row's purge): one wins, the
                // other finds the key taken.
                diesel::sql_query(
                    "DELETE FROM user_sessions WHERE handle = ? AND idle_expires_at_ms <= ?",
                )
                .bind::<Text, _>(session.handle.as_str())
                .bind::<BigInt, _>(ms(now))
                .prepared()
                .execute(conn)
                .await
                .map_err(|e| from_diesel(BACKEND, e))?;
                let imported = match insert(session, &attributes).execute(conn).await {
                    Ok(_) => Imported::Stored,
                    Err(diesel::result::Error::DatabaseError(
                        diesel::result::DatabaseErrorKind::UniqueViolation,
                        _,
                    )) => Imported::AlreadyPresent,
                    Err(e) => return Err(from_diesel(BACKEND, e)),
                };
                // A turn row created here goes with the commit (its lock is held until then), so
                // a copy of many sessions leaves no row per session behind.
                if created == 1 {
                    diesel::sql_query(
                        "DELETE FROM user_session_tombstones WHERE handle = ? AND until_ms = 0",
                    )
                    .bind::<Text, _>(session.handle.as_str())
                    .prepared()
                    .execute(conn)
                    .await
                    .map_err(|e| from_diesel(BACKEND, e))?;
                }
                Ok(imported)
            })
            .await
            .inspect_err(|e| {
                if matches!(e, SessionError::Unavailable { .. }) {
                    self.db.suspect_connections();
                }
            })
    }

    async fn delete_with_tombstone(
        &self,
        handle: &SessionHandle,
        until: SystemTime,
    ) -> Result<bool> {
        let now = self.now();
        let options = ScopeOptions::new().isolation(IsolationLevel::ReadCommitted);
        self.db
            .transaction_retrying(options, &deadlock_retry(), async |conn| {
                diesel::sql_query(
                    "INSERT INTO user_session_tombstones (handle, until_ms) VALUES (?, ?)
                     ON DUPLICATE KEY UPDATE until_ms = GREATEST(until_ms, VALUES(until_ms))",
                )
                .bind::<Text, _>(handle.as_str())
                .bind::<BigInt, _>(ms(until))
                .prepared()
                .execute(conn)
                .await
                .map_err(|e| from_diesel(BACKEND, e))?;
                // The live row's removal is the answer; an expired leftover goes too.
                let live = diesel::sql_query(
                    "DELETE FROM user_sessions WHERE handle = ? AND idle_expires_at_ms > ?",
                )
                .bind::<Text, _>(handle.as_str())
                .bind::<BigInt, _>(now)
                .prepared()
                .execute(conn)
                .await
                .map_err(|e| from_diesel(BACKEND, e))?;
                if live == 0 {
                    diesel::sql_query("DELETE FROM user_sessions WHERE handle = ?")
                        .bind::<Text, _>(handle.as_str())
                        .prepared()
                        .execute(conn)
                        .await
                        .map_err(|e| from_diesel(BACKEND, e))?;
                }
                Ok(live > 0)
            })
            .await
            .inspect_err(|e| {
                if matches!(e, SessionError::Unavailable { .. }) {
                    self.db.suspect_connections();
                }
            })
    }

    async fn health(&self) -> Result<()> {
        self.db.health().await
    }

    fn needs_purge(&self) -> bool {
        true
    }

    async fn close(&self) {
        self.db.close().await;
    }
}

#[async_trait]
impl StorageDump for MysqlSessionStore {
    async fn dump_raw(&self) -> Result<Vec<String>> {
        in_step!(self, |conn| {
            let mut found = Vec::new();
            for sql in [
                "SELECT JSON_OBJECT('handle', CAST(handle AS CHAR), 'user_id', CAST(user_id AS CHAR),
                     'company_name', company_name, 'email', email, 'is_root', is_root,
                     'remember_me', remember_me, 'attributes', attributes,
                     'created_at_ms', created_at_ms, 'last_seen_at_ms', last_seen_at_ms,
                     'idle_expires_at_ms', idle_expires_at_ms,
                     'absolute_expires_at_ms', absolute_expires_at_ms, 'version', version,
                     'authenticated_at_ms', authenticated_at_ms, 'device', device,
                     'address', address) AS `row`
                 FROM user_sessions",
                "SELECT JSON_OBJECT('user_key', HEX(user_key)) AS `row` FROM user_session_turns",
                "SELECT JSON_OBJECT('tombstone', CAST(handle AS CHAR), 'until_ms', until_ms) AS `row`
                 FROM user_session_tombstones",
            ] {
                let rows: Vec<Json> = diesel::sql_query(sql)
                    .load(&mut *conn)
                    .await
                    .map_err(|e| self.fail(e))?;
                found.extend(rows);
            }
            Ok(found.into_iter().map(|j| j.row).collect())
        })
    }
}
