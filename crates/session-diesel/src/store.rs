//! User sessions in PostgreSQL.
//!
//! One statement (one round trip) per operation. Instants cross the wire as epoch milliseconds and
//! are stored as `TIMESTAMPTZ`, converted in SQL with exact interval arithmetic, so no session
//! time zone can shift them. Expiry is judged by the policy clock's "now", passed to every
//! statement; a session is live while `idle_expires_at > now` (the idle expiry is never after the
//! absolute one, a table constraint).

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use diesel::pg::Pg;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel::{OptionalExtension, QueryableByName};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use session_core::clock::millis_since_epoch;
use session_core::{
    DbSessionProvider, Imported, IssuedSession, NewUserSession, PoolConfig, Result, ScanCursor,
    ScanPage, SessionError, SessionHandle, SessionPolicy, SessionToken, StorageDump, Updated,
    UserSession, UserSessionStore,
};

use crate::error::from_diesel;
use crate::pg::PgProvider;
use crate::prepared::KeepPrepared;
use crate::provider::CheckoutCheck;
use crate::row::{
    Row, Stored, keyset_page, parse_keyset_cursor, update_looking_twice, update_missed,
};

/// The schema, applied by [`PgSessionStore::connect`] (and [`PgSessionStore::migrate`]).
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

const BACKEND: &str = "postgres";

/// Serializes migrations across instances starting at once (an arbitrary, fixed advisory-lock key).
const MIGRATION_LOCK: i64 = 0x5e55_1057;

/// The session columns, instants as epoch milliseconds. `$p` is a table alias prefix.
fn columns(p: &str) -> String {
    let ms = |c: &str| format!("(EXTRACT(EPOCH FROM {p}{c}) * 1000)::BIGINT AS {c}_ms");
    // A row the previous release wrote has no `authenticated_at`: authenticated at sign-in.
    format!(
        "{p}handle, {p}user_id, {p}company_name, {p}email, {p}is_root, {p}remember_me, {p}attributes, {}, {}, {}, {}, {p}version,
         (EXTRACT(EPOCH FROM COALESCE({p}authenticated_at, {p}created_at)) * 1000)::BIGINT AS authenticated_at_ms,
         {p}device, {p}address",
        ms("created_at"),
        ms("last_seen_at"),
        ms("idle_expires_at"),
        ms("absolute_expires_at")
    )
}

/// A row `TOUCH` answers, and whether that statement wrote it.
#[derive(QueryableByName)]
struct TouchRow {
    #[diesel(embed)]
    stored: Row,
    #[diesel(sql_type = Bool)]
    written: bool,
}

/// The live row under a handle: $1 handle, $2 now.
static READ_LIVE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM user_sessions WHERE handle = $1 AND idle_expires_at > {}",
        columns(""),
        at(2)
    )
});

/// `touch` in one statement: the live row (`cur`), the write when due (`upd`, whose WHERE re-checks
/// the throttle after any row lock), and whichever of them is the row as it stands. $1 handle,
/// $2 now, $3 and $4 the remember-me and plain idle timeouts (ms), $5 now minus the interval.
static TOUCH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH cur AS (
             SELECT {columns} FROM user_sessions WHERE handle = $1 AND idle_expires_at > {now}
         ), upd AS (
             UPDATE user_sessions
             SET last_seen_at = {now},
                 idle_expires_at = LEAST(
                     {now} + (CASE WHEN remember_me THEN $3 ELSE $4 END) * INTERVAL '1 millisecond',
                     absolute_expires_at)
             WHERE handle = $1 AND idle_expires_at > {now} AND last_seen_at <= {due}
             RETURNING {columns}
         )
         SELECT *, TRUE AS written FROM upd
         UNION ALL
         SELECT *, FALSE AS written FROM cur WHERE NOT EXISTS (SELECT 1 FROM upd)",
        columns = columns(""),
        now = at(2),
        due = at(5),
    )
});

/// The insert of `create` without a per-user cap.
static CREATE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO user_sessions (handle, user_id, company_name, email, is_root, remember_me, attributes,
             created_at, last_seen_at, idle_expires_at, absolute_expires_at, version,
             authenticated_at, device, address)
         VALUES ($1, $2, $3, $4, $5, $6, $7, {now}, {seen}, {idle}, {absolute}, $12, {auth}, $14, $15)",
        now = at(8),
        seen = at(9),
        idle = at(10),
        absolute = at(11),
        auth = at(13),
    )
});

/// `create` with a per-user cap (`$16`): the user's newest `cap - 1` live sessions stay, older
/// live ones go, and the new one is inserted, with concurrent creates of one user taking turns
/// (the function's migration says how). One round trip, like the uncapped insert.
static CREATE_CAPPED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT user_sessions_create_capped($1, $2, $3, $4, $5, $6, $7, {now}, {seen}, {idle}, {absolute}, $12, $16,
             {auth}, $14, $15)",
        now = at(8),
        seen = at(9),
        idle = at(10),
        absolute = at(11),
        auth = at(13),
    )
});

/// `import`: refused while the handle's tombstone stands, else the insert of `create`, which may
/// replace only a row that has expired by `$16`; taking turns with `delete_with_tombstone` of the
/// handle (the function's migration says how). One round trip.
static IMPORT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT user_sessions_import($1, $2, $3, $4, $5, $6, $7, {now}, {seen}, {idle}, {absolute}, $12, {at},
             {auth}, $14, $15) AS outcome",
        now = at(8),
        seen = at(9),
        idle = at(10),
        absolute = at(11),
        at = at(16),
        auth = at(13),
    )
});

/// `delete_with_tombstone`: `$1` handle, `$2` until, `$3` now.
static END: LazyLock<String> =
    LazyLock::new(|| format!("SELECT user_sessions_end($1, {}, {}) AS live", at(2), at(3)));

/// The first page of `scan`: keyset pagination on the primary key, `$2` rows.
static SCAN_FIRST: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM user_sessions WHERE idle_expires_at > {} ORDER BY handle LIMIT $2",
        columns(""),
        at(1)
    )
});

/// A later page of `scan`: the rows after handle `$3`.
static SCAN_AFTER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM user_sessions WHERE handle > $3 AND idle_expires_at > {}
         ORDER BY handle LIMIT $2",
        columns(""),
        at(1)
    )
});

/// Binds `$1`–`$15` of [`CREATE`], [`CREATE_CAPPED`] and [`IMPORT`]: the session's fields
/// (`address` is the session's address as text).
fn session_binds<'a>(
    query: BoxedSqlQuery<'a, Pg, SqlQuery>,
    session: &'a UserSession,
    attributes: &'a str,
    address: Option<&'a str>,
) -> BoxedSqlQuery<'a, Pg, SqlQuery> {
    query
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
        .bind::<BigInt, _>(i64::try_from(session.version).unwrap_or(i64::MAX))
        .bind::<BigInt, _>(ms(session.authenticated_at))
        .bind::<Text, _>(&session.device)
        .bind::<Nullable<Text>, _>(address)
}

/// `pg1:<handle of the last session of the page before>`.
const CURSOR_PREFIX: &str = "pg1:";

/// The instant held (as epoch milliseconds) by bind parameter `$n`.
fn at(n: u8) -> String {
    format!("(TIMESTAMPTZ 'epoch' + ${n} * INTERVAL '1 millisecond')")
}

#[derive(QueryableByName)]
struct Liveness {
    #[diesel(sql_type = Bool)]
    live: bool,
}

#[derive(QueryableByName)]
struct Outcome {
    #[diesel(sql_type = Text)]
    outcome: String,
}

#[derive(QueryableByName)]
struct Json {
    #[diesel(sql_type = Text)]
    row: String,
}

fn ms(t: std::time::SystemTime) -> i64 {
    i64::try_from(millis_since_epoch(t)).unwrap_or(i64::MAX)
}

fn ms_of(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A [`UserSessionStore`] on a PostgreSQL table `user_sessions`, through a [`PgProvider`] pool.
pub struct PgSessionStore {
    db: PgProvider,
    policy: SessionPolicy,
    purge_batch: i64,
}

impl std::fmt::Debug for PgSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSessionStore")
            .field("db", &self.db)
            .field("policy", &self.policy)
            .field("purge_batch", &self.purge_batch)
            .finish_non_exhaustive()
    }
}

impl PgSessionStore {
    /// The session under `token` if it is live at `now_ms`: one keyed `SELECT` on `conn`.
    async fn read_live(
        &self,
        conn: &mut AsyncPgConnection,
        token: &SessionToken,
        now_ms: i64,
    ) -> Result<Option<UserSession>> {
        let row: Option<Row> = diesel::sql_query(READ_LIVE.as_str())
            .bind::<Text, _>(token.handle().as_str())
            .bind::<BigInt, _>(now_ms)
            .prepared()
            .get_result(conn)
            .await
            .optional()
            .map_err(|e| self.fail(e))?;
        row.map(Row::into_session).transpose()
    }

    /// One attempt of `update`: the compare-and-set statement, and on a miss, a read that says
    /// why.
    async fn update_once(&self, session: &UserSession) -> Result<Updated> {
        // A change of `is_root` or of `authenticated_at` (a re-authentication) also moves the row
        // to a new handle, in the same statement: the CASE reads the row's old values.
        let new_token = SessionToken::generate()?;
        let sql = format!(
            "UPDATE user_sessions SET company_name = $3, email = $4, is_root = $5, attributes = $6,
                 authenticated_at = {auth}, device = $11, address = $12, version = version + 1,
                 handle = CASE WHEN is_root <> $5
                     OR COALESCE(authenticated_at, created_at) <> {auth} THEN $9 ELSE handle END
             WHERE handle = $1 AND version = $2 AND user_id = $7 AND idle_expires_at > {now}
             RETURNING {columns}",
            auth = at(10),
            now = at(8),
            columns = columns("")
        );
        let now = self.now();
        let mut conn = self.conn().await?;
        let updated: Vec<Row> = diesel::sql_query(sql)
            .bind::<Text, _>(session.handle.as_str())
            .bind::<BigInt, _>(i64::try_from(session.version).unwrap_or(-1))
            .bind::<Text, _>(&session.company_name)
            .bind::<Text, _>(&session.email)
            .bind::<Bool, _>(session.is_root)
            .bind::<Text, _>(session.attributes_json()?)
            .bind::<Text, _>(&session.user_id)
            .bind::<BigInt, _>(now)
            .bind::<Text, _>(new_token.handle().as_str())
            .bind::<BigInt, _>(ms(session.authenticated_at))
            .bind::<Text, _>(&session.device)
            .bind::<Nullable<Text>, _>(crate::row::address_text(session))
            .prepared()
            .load(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
        if let Some(row) = updated.into_iter().next() {
            let stored = row.into_session()?;
            return Ok(if stored.handle == session.handle {
                Updated::kept(stored)
            } else {
                Updated::moved_to(stored, new_token)
            });
        }
        // Nothing matched: a second statement, on the failure path only, says why.
        let sql = format!(
            "SELECT user_id, version FROM user_sessions WHERE handle = $1 AND idle_expires_at > {}",
            at(2)
        );
        let stored: Vec<Stored> = diesel::sql_query(sql)
            .bind::<Text, _>(session.handle.as_str())
            .bind::<BigInt, _>(now)
            .prepared()
            .load(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
        let live = <[Stored]>::first(&stored).map(|s| (s.user_id.as_str(), s.version));
        Err(update_missed(session, live))
    }

    /// Connects, applies pending migrations (see [`PgSessionStore::migrate`]) and returns the store.
    ///
    /// # Errors
    /// [`SessionError::Config`] for invalid settings; `Unavailable`/`Timeout` if PostgreSQL cannot
    /// be reached; `Backend` if a migration fails.
    pub async fn connect(url: &str, pool: PoolConfig, policy: SessionPolicy) -> Result<Self> {
        policy.validate()?;
        Self::migrate(url).await?;
        Ok(Self {
            // Every store operation is one statement; a checkout ping would double its round
            // trips, so the store's pool tests connections locally (ADR 0008).
            db: PgProvider::connect_checking(url, pool, CheckoutCheck::Local).await?,
            policy,
            purge_batch: i64::from(crate::DEFAULT_PURGE_BATCH),
        })
    }

    /// Applies the embedded migrations that `url`'s database lacks. Safe to call from several
    /// instances at once: they take turns on an advisory lock.
    ///
    /// # Errors
    /// `Unavailable` if PostgreSQL cannot be reached; `Backend` if a migration fails.
    pub async fn migrate(url: &str) -> Result<()> {
        let mut conn =
            AsyncPgConnection::establish(url)
                .await
                .map_err(|e| SessionError::Unavailable {
                    backend: BACKEND,
                    source: Box::new(e),
                })?;
        conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            .await
            .map_err(|e| from_diesel(BACKEND, e))?;
        let (mut conn, result) =
            crate::migrate::run_pending_migrations(BACKEND, conn, MIGRATIONS).await?;
        let _ = conn
            .batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
            .await;
        result
    }

    /// Sets how many rows each `purge_expired` statement deletes (default 1000).
    #[must_use]
    pub fn with_purge_batch(mut self, rows: u32) -> Self {
        self.purge_batch = i64::from(rows.max(1));
        self
    }

    /// The connection pool (also usable as a [`DbSessionProvider`] for application queries).
    #[must_use]
    pub fn provider(&self) -> &PgProvider {
        &self.db
    }

    fn now(&self) -> i64 {
        ms(self.policy.now())
    }

    /// Runs `sql` (a `DELETE` of at most `$2` rows due by `$1`) until a batch comes back short;
    /// how many rows went.
    async fn delete_in_batches(
        &self,
        conn: &mut AsyncPgConnection,
        sql: &str,
        now: i64,
    ) -> Result<u64> {
        let mut total = 0u64;
        loop {
            let deleted = diesel::sql_query(sql)
                .bind::<BigInt, _>(now)
                .bind::<BigInt, _>(self.purge_batch)
                .prepared()
                .execute(conn)
                .await
                .map_err(|e| self.fail(e))?;
            total += deleted as u64;
            if (deleted as i64) < self.purge_batch {
                return Ok(total);
            }
        }
    }

    async fn conn(&self) -> Result<crate::PooledConnection<AsyncPgConnection>> {
        self.db.connection().await
    }

    /// Converts a statement's error. A lost connection makes the next checkouts ping: its
    /// siblings in the pool probably died with it (the server restarted, or a network cut).
    fn fail(&self, e: diesel::result::Error) -> SessionError {
        let err = from_diesel(BACKEND, e);
        if matches!(err, SessionError::Unavailable { .. }) {
            self.db.suspect_connections();
        }
        err
    }
}

fn rows(rows: Vec<Row>) -> Result<Vec<UserSession>> {
    rows.into_iter().map(Row::into_session).collect()
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl UserSessionStore for PgSessionStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn policy(&self) -> &SessionPolicy {
        &self.policy
    }

    async fn create(&self, new: NewUserSession) -> Result<IssuedSession> {
        let token = SessionToken::generate()?;
        let session = new.into_session(&token, &self.policy)?;
        let cap = self.policy.max_sessions_per_user.map_or(0, i64::from);
        let sql: &str = if cap > 0 { &CREATE_CAPPED } else { &CREATE };
        let attributes = session.attributes_json()?;
        let address = crate::row::address_text(&session);
        let mut conn = self.conn().await?;
        let insert = session_binds(
            diesel::sql_query(sql).into_boxed(),
            &session,
            &attributes,
            address.as_deref(),
        );
        let insert = if cap > 0 {
            insert.bind::<BigInt, _>(cap)
        } else {
            insert
        };
        insert
            .prepared()
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(IssuedSession { token, session })
    }

    async fn get(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        let mut conn = self.conn().await?;
        self.read_live(&mut conn, token, self.now()).await
    }

    async fn touch(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        let now = self.policy.now();
        // One checkout for every statement below: a checkout may ping (test_on_checkout, or
        // after a lost connection), a round trip of its own.
        let mut conn = self.conn().await?;
        // With a throttle, most touches are not due: a plain read answers them (ADR 0033), and
        // only a due one goes on to the statement below, which decides again atomically.
        if !self.policy.touch_interval.is_zero() {
            match self.read_live(&mut conn, token, ms(now)).await? {
                None => return Ok(None),
                Some(session) if !self.policy.touch_due(&session, now) => return Ok(Some(session)),
                Some(_) => {}
            }
        }
        // One statement: the UPDATE writes only when the throttle interval has passed (its WHERE
        // re-checks it, so concurrent touches write once), and the row as it stands is returned
        // when it did not write.
        let due = ms(now).saturating_sub(ms_of(self.policy.touch_interval));
        let row: Option<TouchRow> = diesel::sql_query(TOUCH.as_str())
            .bind::<Text, _>(token.handle().as_str())
            .bind::<BigInt, _>(ms(now))
            .bind::<BigInt, _>(ms_of(self.policy.remember_me_idle_timeout))
            .bind::<BigInt, _>(ms_of(self.policy.idle_timeout))
            .bind::<BigInt, _>(due)
            .prepared()
            .get_result(&mut *conn)
            .await
            .optional()
            .map_err(|e| self.fail(e))?;
        let Some(TouchRow {
            stored: row,
            written,
        }) = row
        else {
            return Ok(None);
        };
        if !written && row.last_seen_at_ms <= due {
            // The touch was due but another one wrote first (the WHERE, re-checked after the
            // row lock, refused): the row returned is from before that write; read what stands.
            return self.read_live(&mut conn, token, self.now()).await;
        }
        row.into_session().map(Some)
    }

    async fn update(&self, session: &UserSession) -> Result<Updated> {
        session.validate(&self.policy)?;
        update_looking_twice(|| self.update_once(session)).await
    }

    async fn rotate(&self, token: &SessionToken) -> Result<Option<IssuedSession>> {
        let new_token = SessionToken::generate()?;
        // Changing the key of the row is atomic; a concurrent rotation waits on the row lock, then
        // finds the old handle gone.
        let sql = format!(
            "UPDATE user_sessions SET handle = $2 WHERE handle = $1 AND idle_expires_at > {} RETURNING {}",
            at(3),
            columns("")
        );
        let mut conn = self.conn().await?;
        let rotated: Vec<Row> = diesel::sql_query(sql)
            .bind::<Text, _>(token.handle().as_str())
            .bind::<Text, _>(new_token.handle().as_str())
            .bind::<BigInt, _>(self.now())
            .prepared()
            .load(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
        rotated
            .into_iter()
            .next()
            .map(|row| {
                row.into_session().map(|session| IssuedSession {
                    token: new_token,
                    session,
                })
            })
            .transpose()
    }

    async fn delete(&self, token: &SessionToken) -> Result<bool> {
        self.delete_by_handle(token.handle()).await
    }

    async fn delete_by_handle(&self, handle: &SessionHandle) -> Result<bool> {
        let sql = format!(
            "DELETE FROM user_sessions WHERE handle = $1 RETURNING idle_expires_at > {} AS live",
            at(2)
        );
        let mut conn = self.conn().await?;
        let deleted: Vec<Liveness> = diesel::sql_query(sql)
            .bind::<Text, _>(handle.as_str())
            .bind::<BigInt, _>(self.now())
            .prepared()
            .load(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(deleted.iter().any(|d| d.live))
    }

    async fn delete_with_tombstone(
        &self,
        handle: &SessionHandle,
        until: SystemTime,
    ) -> Result<bool> {
        let mut conn = self.conn().await?;
        let ended: Liveness = diesel::sql_query(END.as_str())
            .bind::<Text, _>(handle.as_str())
            .bind::<BigInt, _>(ms(until))
            .bind::<BigInt, _>(self.now())
            .prepared()
            .get_result(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(ended.live)
    }

    async fn list_by_user(&self, user_id: &str) -> Result<Vec<UserSession>> {
        let sql = format!(
            "SELECT {} FROM user_sessions WHERE user_id = $1 AND idle_expires_at > {} ORDER BY created_at, handle",
            columns(""),
            at(2)
        );
        let mut conn = self.conn().await?;
        if cannot_hold_sessions(user_id) {
            return Ok(Vec::new());
        }
        let found: Vec<Row> = diesel::sql_query(&sql)
            .bind::<Text, _>(user_id)
            .bind::<BigInt, _>(self.now())
            .prepared()
            .load(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
        rows(found)
    }

    async fn delete_by_user(&self, user_id: &str, except: Option<&SessionHandle>) -> Result<u64> {
        let sql = format!(
            "DELETE FROM user_sessions WHERE user_id = $1 AND handle <> $2 RETURNING idle_expires_at > {} AS live",
            at(3)
        );
        let mut conn = self.conn().await?;
        if cannot_hold_sessions(user_id) {
            return Ok(0);
        }
        let deleted: Vec<Liveness> = diesel::sql_query(sql)
            .bind::<Text, _>(user_id)
            .bind::<Text, _>(except.map_or("", SessionHandle::as_str))
            .bind::<BigInt, _>(self.now())
            .prepared()
            .load(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(deleted.iter().filter(|d| d.live).count() as u64)
    }

    async fn purge_expired(&self) -> Result<u64> {
        // Bounded batches; rows another purger has locked are skipped, not waited for, so several
        // instances purging at once neither deadlock nor delete a row twice.
        let sql = format!(
            "DELETE FROM user_sessions WHERE handle IN (
                SELECT handle FROM user_sessions WHERE idle_expires_at <= {}
                ORDER BY idle_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
            at(1)
        );
        let now = self.now();
        let mut conn = self.conn().await?;
        // Tombstones whose instant has passed refuse nothing any more; they are not sessions,
        // so not counted.
        let tombstones = format!(
            "DELETE FROM user_session_tombstones WHERE handle IN (
                SELECT handle FROM user_session_tombstones WHERE until <= {}
                LIMIT $2 FOR UPDATE SKIP LOCKED)",
            at(1)
        );
        self.delete_in_batches(&mut conn, &tombstones, now).await?;
        self.delete_in_batches(&mut conn, &sql, now).await
    }

    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage> {
        session_core::check_scan_limit(limit)?;
        let after = parse_keyset_cursor(CURSOR_PREFIX, cursor)?;
        let rows_wanted = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let mut conn = self.conn().await?;
        let query = match &after {
            None => diesel::sql_query(SCAN_FIRST.as_str()).into_boxed::<Pg>(),
            Some(_) => diesel::sql_query(SCAN_AFTER.as_str()).into_boxed::<Pg>(),
        }
        .bind::<BigInt, _>(self.now())
        .bind::<BigInt, _>(rows_wanted);
        let query = match &after {
            None => query,
            Some(handle) => query.bind::<Text, _>(handle.as_str()),
        };
        let found: Vec<Row> = query
            .prepared()
            .load(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(keyset_page(CURSOR_PREFIX, rows(found)?, limit))
    }

    async fn import(&self, session: &UserSession) -> Result<Imported> {
        session.validate_import(&self.policy)?;
        let now = self.policy.now();
        if self.policy.is_expired(session, now) {
            return Ok(Imported::Expired);
        }
        let attributes = session.attributes_json()?;
        let address = crate::row::address_text(session);
        let mut conn = self.conn().await?;
        let answer: Outcome = session_binds(
            diesel::sql_query(IMPORT.as_str()).into_boxed(),
            session,
            &attributes,
            address.as_deref(),
        )
        .bind::<BigInt, _>(ms(now))
        .prepared()
        .get_result(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        match answer.outcome.as_str() {
            "stored" => Ok(Imported::Stored),
            "present" => Ok(Imported::AlreadyPresent),
            "ended" => Ok(Imported::Ended),
            other => Err(SessionError::Decode {
                backend: BACKEND,
                handle: Some(session.handle.clone()),
                reason: format!("user_sessions_import answered {other:?}"),
            }),
        }
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
impl StorageDump for PgSessionStore {
    async fn dump_raw(&self) -> Result<Vec<String>> {
        let mut conn = self.conn().await?;
        let found: Vec<Json> = diesel::sql_query(
            "SELECT row_to_json(s)::TEXT AS row FROM user_sessions s
                 UNION ALL SELECT row_to_json(t)::TEXT AS row FROM user_session_tombstones t",
        )
        .prepared()
        .load(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(found.into_iter().map(|j| j.row).collect())
    }
}

/// A user id holding NUL has no sessions: `create` refuses control characters, and PostgreSQL
/// refuses NUL in any text parameter, so asking would turn "no such user" into a backend error.
/// (Checked after the checkout, so a closed store still says `Closed`.)
fn cannot_hold_sessions(user_id: &str) -> bool {
    user_id.contains('\0')
}
