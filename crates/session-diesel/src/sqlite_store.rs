//! User sessions in an SQLite file: the embedded store, for a service on one machine (and for
//! `sessionctl` on the demo's default, whose sessions then outlive a restart).
//!
//! The same table shape and guarantees as the MySQL store, each operation one statement where
//! SQLite allows it (`UPDATE … RETURNING`, an upsert that replaces only an expired row). A capped
//! create is a transaction whose first statement is its delete, so it takes SQLite's write lock
//! before it reads anything: concurrent sign-ins of one user (from any process on the file) run one
//! after another, waiting for the lock up to the connection's busy time-out (ADR 0027).

use std::time::SystemTime;

use async_trait::async_trait;
use diesel::OptionalExtension;
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel_async::RunQueryDsl;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use session_core::clock::millis_since_epoch;
use session_core::{
    DbSessionProvider, Imported, IssuedSession, NewUserSession, PoolConfig, Result, ScanCursor,
    ScanPage, ScopeOptions, SessionError, SessionHandle, SessionPolicy, SessionToken, StorageDump,
    Updated, UserSession, UserSessionStore,
};

use crate::error::from_diesel;
use crate::row::{Row, keyset_page, parse_keyset_cursor, update_missed};
use crate::sqlite::{SqliteConn, SqliteProvider};

/// The schema of the SQLite store, applied by [`SqliteSessionStore::open`].
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations-sqlite");

const BACKEND: &str = "sqlite";

/// The session columns, in [`Row`]'s order. A row the previous release wrote has no
/// `authenticated_at_ms`: authenticated at sign-in.
const COLUMNS: &str = "handle, user_id, company_name, email, is_root, remember_me, attributes, \
     created_at_ms, last_seen_at_ms, idle_expires_at_ms, absolute_expires_at_ms, version, \
     COALESCE(authenticated_at_ms, created_at_ms) AS authenticated_at_ms, device, address";

/// `sq1:<handle of the last session of the page before>`.
const CURSOR_PREFIX: &str = "sq1:";

#[derive(QueryableByName)]
struct Expiry {
    #[diesel(sql_type = BigInt)]
    idle_expires_at_ms: i64,
}

#[derive(QueryableByName)]
struct Stored {
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = BigInt)]
    idle_expires_at_ms: i64,
}

#[derive(QueryableByName)]
struct Json {
    #[diesel(sql_type = Text)]
    row: String,
}

fn ms(t: std::time::SystemTime) -> i64 {
    i64::try_from(millis_since_epoch(t)).unwrap_or(i64::MAX)
}

/// A [`UserSessionStore`] on an SQLite table `user_sessions`, through a [`SqliteProvider`] pool
/// (write-ahead log, 5 s busy time-out).
pub struct SqliteSessionStore {
    db: SqliteProvider,
    policy: SessionPolicy,
    purge_batch: i64,
}

impl std::fmt::Debug for SqliteSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSessionStore")
            .field("db", &self.db)
            .field("policy", &self.policy)
            .field("purge_batch", &self.purge_batch)
            .finish_non_exhaustive()
    }
}

impl SqliteSessionStore {
    /// Opens the database `url` names (see [`crate::parse_sqlite_url`]; `sqlite::memory:` gives a
    /// private in-memory database), applies pending migrations and returns the store.
    ///
    /// # Errors
    /// [`SessionError::Config`] for invalid settings; `Unavailable` if the file cannot be opened;
    /// `Backend` if a migration fails.
    pub async fn open(url: &str, pool: PoolConfig, policy: SessionPolicy) -> Result<Self> {
        policy.validate()?;
        let db = SqliteProvider::open(url, pool).await?;
        // On a connection to the pool's own database: an in-memory one is reachable only
        // through the pool's URL, while its connections keep it alive.
        let conn = db.dedicated_connection().await?;
        let (_, result) =
            crate::migrate::run_pending_migrations(BACKEND, conn, SQLITE_MIGRATIONS).await?;
        result?;
        Ok(Self {
            db,
            policy,
            purge_batch: i64::from(crate::DEFAULT_PURGE_BATCH),
        })
    }

    /// Sets how many rows each `purge_expired` statement deletes (default 1000).
    #[must_use]
    pub fn with_purge_batch(mut self, rows: u32) -> Self {
        self.purge_batch = i64::from(rows.max(1));
        self
    }

    /// The connection pool (also usable as a [`DbSessionProvider`] for application queries).
    #[must_use]
    pub fn provider(&self) -> &SqliteProvider {
        &self.db
    }

    fn now(&self) -> i64 {
        ms(self.policy.now())
    }

    async fn conn(&self) -> Result<crate::PooledConnection<SqliteConn>> {
        self.db.connection().await
    }

    fn fail(e: diesel::result::Error) -> SessionError {
        from_diesel(BACKEND, e)
    }

    /// The live session under `handle`.
    async fn live(
        &self,
        conn: &mut SqliteConn,
        handle: &str,
        now: i64,
    ) -> Result<Option<UserSession>> {
        let row: Option<Row> = diesel::sql_query(format!(
            "SELECT {COLUMNS} FROM user_sessions WHERE handle = ? AND idle_expires_at_ms > ?"
        ))
        .bind::<Text, _>(handle)
        .bind::<BigInt, _>(now)
        .get_result(conn)
        .await
        .optional()
        .map_err(Self::fail)?;
        row.map(|r| r.decode(BACKEND)).transpose()
    }
}

/// The insert of a new session.
/// The head of every insert of a session: its fifteen columns, in `bind_session!`'s order.
macro_rules! insert_into_sessions {
    () => {
        "INSERT INTO user_sessions (handle, user_id, company_name, email, is_root, remember_me,
         attributes, created_at_ms, last_seen_at_ms, idle_expires_at_ms, absolute_expires_at_ms,
         version, authenticated_at_ms, device, address)"
    };
}

const INSERT: &str = concat!(
    insert_into_sessions!(),
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
);

/// [`INSERT`] as a select that yields no row while the handle's tombstone stands: binds the
/// session's fifteen columns, then the handle and now. The `WHERE` also keeps an upsert after it
/// unambiguous.
const INSERT_UNLESS_ENDED: &str = concat!(
    insert_into_sessions!(),
    " SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?
     WHERE NOT EXISTS (SELECT 1 FROM user_session_tombstones WHERE handle = ? AND until_ms > ?)"
);

/// Binds a session's fifteen columns, in [`INSERT`]'s order, to `query`.
macro_rules! bind_session {
    ($query:expr, $session:expr, $attributes:expr) => {
        $query
            .bind::<Text, _>($session.handle.as_str())
            .bind::<Text, _>(&$session.user_id)
            .bind::<Text, _>(&$session.company_name)
            .bind::<Text, _>(&$session.email)
            .bind::<Bool, _>($session.is_root)
            .bind::<Bool, _>($session.remember_me)
            .bind::<Text, _>($attributes)
            .bind::<BigInt, _>(ms($session.created_at))
            .bind::<BigInt, _>(ms($session.last_seen_at))
            .bind::<BigInt, _>(ms($session.idle_expires_at))
            .bind::<BigInt, _>(ms($session.absolute_expires_at))
            .bind::<BigInt, _>(i64::try_from($session.version).unwrap_or(i64::MAX))
            .bind::<BigInt, _>(ms($session.authenticated_at))
            .bind::<Text, _>(&$session.device)
            .bind::<Nullable<Text>, _>(crate::row::address_text(&$session))
    };
}

fn rows(rows: Vec<Row>) -> Result<Vec<UserSession>> {
    rows.into_iter().map(|r| r.decode(BACKEND)).collect()
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl UserSessionStore for SqliteSessionStore {
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
                let keep = i64::from(cap) - 1;
                let created = ms(session.created_at);
                let (session_ref, attributes_ref) = (&session, attributes.as_str());
                self.db
                    .transaction(ScopeOptions::new(), async move |conn| {
                        // The delete comes first: it takes the write lock, so no other create of
                        // this user runs between this count and the insert.
                        diesel::sql_query(
                            "DELETE FROM user_sessions WHERE handle IN (
                                 SELECT handle FROM user_sessions
                                 WHERE user_id = ? AND idle_expires_at_ms > ?
                                 ORDER BY created_at_ms DESC, handle DESC LIMIT -1 OFFSET ?)",
                        )
                        .bind::<Text, _>(&session_ref.user_id)
                        .bind::<BigInt, _>(created)
                        .bind::<BigInt, _>(keep)
                        .execute(conn)
                        .await
                        .map_err(Self::fail)?;
                        bind_session!(diesel::sql_query(INSERT), session_ref, attributes_ref)
                            .execute(conn)
                            .await
                            .map_err(Self::fail)
                    })
                    .await?;
            }
            _ => {
                let mut conn = self.conn().await?;
                bind_session!(diesel::sql_query(INSERT), &session, &attributes)
                    .execute(&mut *conn)
                    .await
                    .map_err(Self::fail)?;
            }
        }
        Ok(IssuedSession { token, session })
    }

    async fn get(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        let mut conn = self.conn().await?;
        self.live(&mut conn, token.handle().as_str(), self.now())
            .await
    }

    async fn touch(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        // A read, and a write only when the throttle interval has passed; the write's WHERE
        // re-checks the interval, so of concurrent due touches one writes and the others read
        // what it wrote.
        let now = self.policy.now();
        let handle = token.handle().as_str();
        let mut conn = self.conn().await?;
        let Some(session) = self.live(&mut conn, handle, ms(now)).await? else {
            return Ok(None);
        };
        if !self.policy.touch_due(&session, now) {
            return Ok(Some(session));
        }
        let idle = self.policy.touched_idle_expiry(&session, now);
        let due = ms(now).saturating_sub(
            i64::try_from(self.policy.touch_interval.as_millis()).unwrap_or(i64::MAX),
        );
        let written: Option<Row> = diesel::sql_query(format!(
            "UPDATE user_sessions SET last_seen_at_ms = ?, idle_expires_at_ms = ?
             WHERE handle = ? AND idle_expires_at_ms > ? AND last_seen_at_ms <= ?
             RETURNING {COLUMNS}"
        ))
        .bind::<BigInt, _>(ms(now))
        .bind::<BigInt, _>(ms(idle))
        .bind::<Text, _>(handle)
        .bind::<BigInt, _>(ms(now))
        .bind::<BigInt, _>(due)
        .get_result(&mut *conn)
        .await
        .optional()
        .map_err(Self::fail)?;
        match written {
            Some(row) => row.decode(BACKEND).map(Some),
            // Another touch wrote first (or the session went): read what is there now.
            None => self.live(&mut conn, handle, ms(now)).await,
        }
    }

    async fn update(&self, session: &UserSession) -> Result<Updated> {
        session.validate(&self.policy)?;
        let attributes = session.attributes_json()?;
        let now = self.now();
        // The token the session moves to if this write changes `is_root` or `authenticated_at`
        // (a re-authentication): one statement decides, atomically, by comparing with the
        // stored values (SQLite's SET expressions all read the row as it was).
        let new_token = SessionToken::generate()?;
        let expected = i64::try_from(session.version).unwrap_or(i64::MAX);
        let mut conn = self.conn().await?;
        let written: Option<Row> = diesel::sql_query(format!(
            "UPDATE user_sessions SET
                 handle = CASE WHEN is_root <> ?
                     OR COALESCE(authenticated_at_ms, created_at_ms) <> ? THEN ? ELSE handle END,
                 company_name = ?, email = ?, is_root = ?, attributes = ?,
                 authenticated_at_ms = ?, device = ?, address = ?, version = version + 1
             WHERE handle = ? AND version = ? AND user_id = ? AND idle_expires_at_ms > ?
             RETURNING {COLUMNS}"
        ))
        .bind::<Bool, _>(session.is_root)
        .bind::<BigInt, _>(ms(session.authenticated_at))
        .bind::<Text, _>(new_token.handle().as_str())
        .bind::<Text, _>(&session.company_name)
        .bind::<Text, _>(&session.email)
        .bind::<Bool, _>(session.is_root)
        .bind::<Text, _>(&attributes)
        .bind::<BigInt, _>(ms(session.authenticated_at))
        .bind::<Text, _>(&session.device)
        .bind::<Nullable<Text>, _>(crate::row::address_text(session))
        .bind::<Text, _>(session.handle.as_str())
        .bind::<BigInt, _>(expected)
        .bind::<Text, _>(&session.user_id)
        .bind::<BigInt, _>(now)
        .get_result(&mut *conn)
        .await
        .optional()
        .map_err(Self::fail)?;
        if let Some(row) = written {
            let stored = row.decode(BACKEND)?;
            return Ok(if stored.handle == session.handle {
                Updated::kept(stored)
            } else {
                Updated::moved_to(stored, new_token)
            });
        }
        // Nothing written: say why.
        let found: Option<Stored> = diesel::sql_query(
            "SELECT user_id, version, idle_expires_at_ms FROM user_sessions WHERE handle = ?",
        )
        .bind::<Text, _>(session.handle.as_str())
        .get_result(&mut *conn)
        .await
        .optional()
        .map_err(Self::fail)?;
        let live = found
            .as_ref()
            .filter(|s| s.idle_expires_at_ms > now)
            .map(|s| (s.user_id.as_str(), s.version));
        Err(update_missed(session, live))
    }

    async fn rotate(&self, token: &SessionToken) -> Result<Option<IssuedSession>> {
        let new_token = SessionToken::generate()?;
        let mut conn = self.conn().await?;
        let row: Option<Row> = diesel::sql_query(format!(
            "UPDATE user_sessions SET handle = ? WHERE handle = ? AND idle_expires_at_ms > ?
             RETURNING {COLUMNS}"
        ))
        .bind::<Text, _>(new_token.handle().as_str())
        .bind::<Text, _>(token.handle().as_str())
        .bind::<BigInt, _>(self.now())
        .get_result(&mut *conn)
        .await
        .optional()
        .map_err(Self::fail)?;
        row.map(|row| {
            row.decode(BACKEND).map(|session| IssuedSession {
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
        let mut conn = self.conn().await?;
        let gone: Vec<Expiry> = diesel::sql_query(
            "DELETE FROM user_sessions WHERE handle = ? RETURNING idle_expires_at_ms",
        )
        .bind::<Text, _>(handle.as_str())
        .load(&mut *conn)
        .await
        .map_err(Self::fail)?;
        let now = self.now();
        Ok(gone.iter().any(|g| g.idle_expires_at_ms > now))
    }

    async fn delete_with_tombstone(
        &self,
        handle: &SessionHandle,
        until: SystemTime,
    ) -> Result<bool> {
        let mut conn = self.conn().await?;
        // The tombstone first, then the removal (see the tombstones' migration).
        diesel::sql_query(
            "INSERT INTO user_session_tombstones (handle, until_ms) VALUES (?, ?)
             ON CONFLICT (handle) DO UPDATE SET until_ms = MAX(until_ms, excluded.until_ms)",
        )
        .bind::<Text, _>(handle.as_str())
        .bind::<BigInt, _>(ms(until))
        .execute(&mut *conn)
        .await
        .map_err(Self::fail)?;
        drop(conn);
        self.delete_by_handle(handle).await
    }

    async fn list_by_user(&self, user_id: &str) -> Result<Vec<UserSession>> {
        let mut conn = self.conn().await?;
        let found: Vec<Row> = diesel::sql_query(format!(
            "SELECT {COLUMNS} FROM user_sessions WHERE user_id = ? AND idle_expires_at_ms > ?
             ORDER BY created_at_ms, handle"
        ))
        .bind::<Text, _>(user_id)
        .bind::<BigInt, _>(self.now())
        .load(&mut *conn)
        .await
        .map_err(Self::fail)?;
        rows(found)
    }

    async fn delete_by_user(&self, user_id: &str, except: Option<&SessionHandle>) -> Result<u64> {
        let mut conn = self.conn().await?;
        let gone: Vec<Expiry> = diesel::sql_query(
            "DELETE FROM user_sessions WHERE user_id = ? AND handle <> ?
             RETURNING idle_expires_at_ms",
        )
        .bind::<Text, _>(user_id)
        .bind::<Text, _>(except.map_or("", SessionHandle::as_str))
        .load(&mut *conn)
        .await
        .map_err(Self::fail)?;
        let now = self.now();
        Ok(gone.iter().filter(|g| g.idle_expires_at_ms > now).count() as u64)
    }

    async fn purge_expired(&self) -> Result<u64> {
        let now = self.now();
        let mut removed = 0u64;
        {
            // Tombstones whose instant has passed refuse nothing; not sessions, so not counted.
            let mut conn = self.conn().await?;
            loop {
                let n = diesel::sql_query(
                    "DELETE FROM user_session_tombstones WHERE handle IN (
                         SELECT handle FROM user_session_tombstones WHERE until_ms <= ? LIMIT ?)",
                )
                .bind::<BigInt, _>(now)
                .bind::<BigInt, _>(self.purge_batch)
                .execute(&mut *conn)
                .await
                .map_err(Self::fail)?;
                if i64::try_from(n).unwrap_or(i64::MAX) < self.purge_batch {
                    break;
                }
            }
        }
        loop {
            let mut conn = self.conn().await?;
            let n = diesel::sql_query(
                "DELETE FROM user_sessions WHERE handle IN (
                     SELECT handle FROM user_sessions WHERE idle_expires_at_ms <= ? LIMIT ?)",
            )
            .bind::<BigInt, _>(now)
            .bind::<BigInt, _>(self.purge_batch)
            .execute(&mut *conn)
            .await
            .map_err(Self::fail)?;
            removed += n as u64;
            if i64::try_from(n).unwrap_or(i64::MAX) < self.purge_batch {
                return Ok(removed);
            }
        }
    }

    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage> {
        session_core::check_scan_limit(limit)?;
        let after = parse_keyset_cursor(CURSOR_PREFIX, cursor)?;
        let read = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let mut conn = self.conn().await?;
        let found: Vec<Row> = diesel::sql_query(format!(
            "SELECT {COLUMNS} FROM user_sessions WHERE handle > ? AND idle_expires_at_ms > ?
             ORDER BY handle LIMIT ?"
        ))
        .bind::<Text, _>(after.as_ref().map_or("", SessionHandle::as_str))
        .bind::<BigInt, _>(self.now())
        .bind::<BigInt, _>(read)
        .load(&mut *conn)
        .await
        .map_err(Self::fail)?;
        Ok(keyset_page(CURSOR_PREFIX, rows(found)?, limit))
    }

    async fn import(&self, session: &UserSession) -> Result<Imported> {
        session.validate_import(&self.policy)?;
        let now = self.policy.now();
        if self.policy.is_expired(session, now) {
            return Ok(Imported::Expired);
        }
        let attributes = session.attributes_json()?;
        let mut conn = self.conn().await?;
        // One statement: inserted, or an expired row under the handle replaced; a live one stays;
        // nothing while the handle's tombstone stands.
        let written = bind_session!(
            diesel::sql_query(format!(
                "{INSERT_UNLESS_ENDED} ON CONFLICT (handle) DO UPDATE SET user_id = excluded.user_id,
                     company_name = excluded.company_name, email = excluded.email,
                     is_root = excluded.is_root, remember_me = excluded.remember_me,
                     attributes = excluded.attributes, created_at_ms = excluded.created_at_ms,
                     last_seen_at_ms = excluded.last_seen_at_ms,
                     idle_expires_at_ms = excluded.idle_expires_at_ms,
                     absolute_expires_at_ms = excluded.absolute_expires_at_ms,
                     version = excluded.version, authenticated_at_ms = excluded.authenticated_at_ms,
                     device = excluded.device, address = excluded.address
                 WHERE user_sessions.idle_expires_at_ms <= ?"
            )),
            session,
            &attributes
        )
        .bind::<Text, _>(session.handle.as_str())
        .bind::<BigInt, _>(ms(now))
        .bind::<BigInt, _>(ms(now))
        .execute(&mut *conn)
        .await
        .map_err(Self::fail)?;
        if written == 1 {
            return Ok(Imported::Stored);
        }
        let standing: Vec<Expiry> = diesel::sql_query(
            "SELECT until_ms AS idle_expires_at_ms FROM user_session_tombstones
             WHERE handle = ? AND until_ms > ?",
        )
        .bind::<Text, _>(session.handle.as_str())
        .bind::<BigInt, _>(ms(now))
        .load(&mut *conn)
        .await
        .map_err(Self::fail)?;
        Ok(if standing.is_empty() {
            Imported::AlreadyPresent
        } else {
            Imported::Ended
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
impl StorageDump for SqliteSessionStore {
    async fn dump_raw(&self) -> Result<Vec<String>> {
        let mut conn = self.conn().await?;
        let found: Vec<Json> = diesel::sql_query(
            "SELECT json_object('handle', handle, 'user_id', user_id,
                 'company_name', company_name, 'email', email, 'is_root', is_root,
                 'remember_me', remember_me, 'attributes', attributes,
                 'created_at_ms', created_at_ms, 'last_seen_at_ms', last_seen_at_ms,
                 'idle_expires_at_ms', idle_expires_at_ms,
                 'absolute_expires_at_ms', absolute_expires_at_ms, 'version', version,
                 'authenticated_at_ms', authenticated_at_ms, 'device', device,
                 'address', address) AS row
             FROM user_sessions
             UNION ALL
             SELECT json_object('tombstone', handle, 'until_ms', until_ms) AS row
             FROM user_session_tombstones",
        )
        .load(&mut *conn)
        .await
        .map_err(Self::fail)?;
        Ok(found.into_iter().map(|j| j.row).collect())
    }
}
