//! Accounts: the `users` table (embedded migrations for both databases), argon2id password hashes
//! and limits on failed sign-in attempts, per account and per client address.
//!
//! Sign-in takes three steps, so that no database connection is held while a hash is computed:
//! 1. a scope claims an attempt on the account (one `UPDATE … RETURNING`: the counter goes up
//!    before the password is checked, so concurrent guesses cannot slip past the limit) and
//!    reads the row;
//! 2. the password is verified on the hashing threads (one per CPU), against the row's hash, or against a dummy
//!    hash with the same parameters when there is no such account or it is locked, so the answer
//!    takes the same time either way;
//! 3. on success a second scope sets the counter back to zero.
//!
//! A locked account answers exactly as a wrong password does (401 `invalid_credentials`): a lock
//! says nothing about whether the account exists. The per-address limit answers 429 with
//! `Retry-After`; it is kept in this process's memory (one instance's view; a fleet behind a
//! load balancer would keep it in Redis).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::FromRequestParts;
use axum::extract::connect_info::ConnectInfo;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use axum::response::{IntoResponse, Response};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use session_axum::ApiError;
use session_core::{ErrorChain, ScopeOptions, SessionError};
use session_manager::Db;
use session_manager::db_transaction;
use session_manager::session_diesel::diesel::QueryableByName;
use session_manager::session_diesel::diesel::sql_types::{BigInt, Bool, Integer, Text};
use session_manager::session_diesel::diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use session_manager::session_diesel::run_pending_migrations;

const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Serialises the demo's migrations across instances starting at once on one PostgreSQL (an
/// arbitrary, fixed advisory-lock key, distinct from session-diesel's).
const MIGRATION_LOCK: i64 = 0x5e55_10de_0001;

/// Shortest new password, in characters (ASVS 4.0.3 V2.1.1).
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password, in characters (ASVS V2.1.2 asks that at least 64 be allowed).
pub const MAX_PASSWORD_CHARS: usize = 128;
/// Longest email address, in bytes (RFC 5321's path limit).
const MAX_EMAIL_BYTES: usize = 254;

/// How many failed sign-in attempts are allowed, and over how long.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SignInLimits {
    /// Failed attempts per account within `window`; after that the account refuses every
    /// attempt, the right password included, until the window (counted from its first failure)
    /// has passed. Default 5.
    pub per_account: u32,
    /// Failed attempts per client address (IPv6: per /64) within `window`; after that the
    /// address gets 429. Default 20.
    pub per_address: u32,
    /// Default 15 minutes.
    pub window: Duration,
}

impl Default for SignInLimits {
    fn default() -> Self {
        Self {
            per_account: 5,
            per_address: 20,
            window: Duration::from_secs(15 * 60),
        }
    }
}

impl SignInLimits {
    /// Sets the per-account limit.
    #[must_use]
    pub fn per_account(mut self, attempts: u32) -> Self {
        self.per_account = attempts;
        self
    }

    /// Sets the per-address limit.
    #[must_use]
    pub fn per_address(mut self, attempts: u32) -> Self {
        self.per_address = attempts;
        self
    }
}

/// What can go wrong with an account, as the demo answers it.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// A field fails validation (400).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The email is taken (409).
    #[error("an account with this email already exists")]
    EmailTaken,
    /// Unknown email, wrong password or a locked account: one answer for all three (401).
    #[error("the email or the password is wrong")]
    InvalidCredentials,
    /// The current password given to change it is wrong, or the account is locked (403).
    #[error("the current password is wrong")]
    WrongPassword,
    /// This session's user has no account here (a session another service wrote) (403).
    #[error("this session's user has no password account here")]
    NoAccount,
    /// Too many failed attempts from this address (429).
    #[error("too many failed sign-in attempts from this address; retry in {} s", .retry_after.as_secs())]
    TooManyAttempts {
        /// When the address may try again.
        retry_after: Duration,
    },
    /// The store or the database failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The API error of a helper this module calls.
    #[error("{}", .0.status())]
    Api(ApiError),
}

impl From<ApiError> for AccountError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl IntoResponse for AccountError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            Self::Invalid { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", message).into_response()
            }
            Self::EmailTaken => {
                ApiError::new(StatusCode::CONFLICT, "email_taken", message).into_response()
            }
            Self::InvalidCredentials => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", message)
                    .into_response()
            }
            Self::WrongPassword => {
                ApiError::new(StatusCode::FORBIDDEN, "wrong_password", message).into_response()
            }
            Self::NoAccount => {
                ApiError::new(StatusCode::FORBIDDEN, "no_account", message).into_response()
            }
            Self::TooManyAttempts { retry_after } => {
                let seconds = retry_after.as_secs().max(1);
                (
                    [(RETRY_AFTER, HeaderValue::from(seconds))],
                    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts", message),
                )
                    .into_response()
            }
            Self::Session(e) => ApiError::from(e).into_response(),
            Self::Api(e) => e.into_response(),
        }
    }
}

fn db_error(e: session_manager::session_diesel::diesel::result::Error) -> SessionError {
    use session_manager::session_diesel::diesel::result::{DatabaseErrorKind, Error};
    match e {
        Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => SessionError::Conflict {
            expected: 0,
            actual: 0,
        },
        e => SessionError::Backend {
            backend: "db",
            source: Box::new(e),
        },
    }
}

/// Applies the demo's embedded migrations (the `users` and `db_items` tables) that the database
/// lacks. Instances starting at once on one PostgreSQL take turns on an advisory lock.
///
/// # Errors
/// If the database refuses.
pub async fn migrate(db: &Db) -> Result<(), SessionError> {
    use session_core::DbSessionProvider;
    match db {
        Db::Sqlite(provider) => {
            let conn = provider.connection().await?;
            let (_, result) = run_pending_migrations("sqlite", conn, SQLITE_MIGRATIONS).await?;
            result
        }
        Db::Postgres(provider) => {
            // A connection outside the pool: the session-level lock dies with it whatever happens
            // (a failed migration, a panic in the harness, this call cancelled while waiting).
            let mut conn = provider.dedicated_connection().await?;
            conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
                .await
                .map_err(db_error)?;
            let (_, result) = run_pending_migrations("postgres", conn, POSTGRES_MIGRATIONS).await?;
            result
        }
        // A build whose session-manager has more database backends (the workspace's, with every
        // feature on): the demo's SQL is written for these two.
        #[allow(unreachable_patterns)]
        other => Err(SessionError::Unsupported {
            backend: other.backend(),
            operation: "the demo's accounts",
            reason: "the demo runs on SQLite or PostgreSQL",
        }),
    }
}

/// A new account. Its `Debug` does not show the password.
#[derive(Clone, Default)]
pub struct NewAccount {
    /// Compared case-insensitively (stored lower-cased).
    pub email: String,
    /// Between [`MIN_PASSWORD_CHARS`] and [`MAX_PASSWORD_CHARS`] characters.
    pub password: String,
    /// The company, copied into the account's sessions.
    pub company_name: String,
    /// Whether the account's sessions are root sessions.
    pub is_root: bool,
}

impl std::fmt::Debug for NewAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAccount")
            .field("email", &self.email)
            .field("password", &"***")
            .field("company_name", &self.company_name)
            .field("is_root", &self.is_root)
            .finish()
    }
}

/// An account as a sign-in reads it. Its `Debug` does not show the password hash.
#[derive(QueryableByName)]
pub struct Account {
    /// The id, which is the user id of the account's sessions.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// The email, lower-cased.
    #[diesel(sql_type = Text)]
    pub email: String,
    #[diesel(sql_type = Text)]
    password_hash: String,
    /// The company.
    #[diesel(sql_type = Text)]
    pub company_name: String,
    /// Root or not.
    #[diesel(sql_type = Bool)]
    pub is_root: bool,
    #[diesel(sql_type = Integer)]
    failed_attempts: i32,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("company_name", &self.company_name)
            .field("is_root", &self.is_root)
            .finish_non_exhaustive()
    }
}

impl Account {
    /// What a session created from this sign-in depends on: see [`still_current`].
    #[must_use]
    pub fn stamp(&self) -> PasswordStamp {
        PasswordStamp {
            id: self.id,
            hash: self.password_hash.clone(),
        }
    }
}

/// The account and the password hash a sign-in verified.
pub struct PasswordStamp {
    id: i64,
    hash: String,
}

/// Whether the account still has the password hash a sign-in verified. A sign-in checks this
/// after creating its session: a password change that landed in between (and whose sign-out of
/// the other sessions ran before this session existed) is caught here, and the session is ended.
///
/// # Errors
/// The database's.
pub async fn still_current(db: &Db, stamp: &PasswordStamp) -> Result<bool, SessionError> {
    #[derive(QueryableByName)]
    struct Current {
        #[diesel(sql_type = Text)]
        password_hash: String,
    }
    let rows = db_transaction!(db, ScopeOptions::new(), |conn| {
        session_manager::session_diesel::diesel::sql_query(
            "SELECT password_hash FROM users WHERE id = $1",
        )
        .bind::<BigInt, _>(stamp.id)
        .get_results::<Current>(conn)
        .await
        .map_err(db_error)
    })?;
    Ok(<[Current]>::first(&rows).is_some_and(|row| row.password_hash == stamp.hash))
}

fn normalize_email(email: &str) -> Result<String, AccountError> {
    let email = email.trim().to_lowercase();
    let invalid = |reason: &str| AccountError::Invalid {
        field: "email",
        reason: reason.to_owned(),
    };
    if email.len() > MAX_EMAIL_BYTES {
        return Err(invalid("at most 254 bytes"));
    }
    if email.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters"));
    }
    match email.split_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Ok(email),
        _ => Err(invalid("must look like name@example.com")),
    }
}

/// Checks a password an account is about to get.
fn check_new_password(password: &str) -> Result<(), AccountError> {
    let chars = password.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
        return Err(AccountError::Invalid {
            field: "password",
            reason: format!(
                "must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters (it is {chars})"
            ),
        });
    }
    Ok(())
}

/// Runs `work` on the hashing threads: one per CPU, started on first use. Each argon2 computation
/// takes 19 MiB, so running them on tokio's blocking pool (up to 512 threads) let a burst of
/// sign-ins hold hundreds of MiB at once, kept afterwards by the allocator's per-thread arenas
/// (the soak saw 1.8 GiB RSS with 64 concurrent sign-ins); here at most one per CPU runs, and the
/// rest wait their turn. Work whose caller has gone (its request timed out) is skipped.
async fn on_hashing_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SessionError> {
    type Job = Box<dyn FnOnce() + Send>;
    static QUEUE: OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel::<Job>();
        let receiver = std::sync::Arc::new(Mutex::new(receiver));
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        for n in 0..threads {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    loop {
                        let job = receiver
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %ErrorChain(&e), "could not start a hashing thread");
            }
        }
        Mutex::new(sender)
    });
    // Past this many waiting, a new request is refused at once (503) rather than queued behind
    // work that would outlast its own request time-out.
    static QUEUED: AtomicUsize = AtomicUsize::new(0);
    let limit = MAX_QUEUED_PER_THREAD
        * std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let busy = || SessionError::Unavailable {
        backend: "argon2",
        source: "too many password checks waiting".into(),
    };
    if QUEUED.fetch_add(1, Ordering::AcqRel) >= limit {
        QUEUED.fetch_sub(1, Ordering::AcqRel);
        return Err(busy());
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        QUEUED.fetch_sub(1, Ordering::AcqRel);
        if !reply.is_closed() {
            // A panic in the work is the caller's error, not the end of this thread.
            if let Ok(value) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
                let _ = reply.send(value);
            }
        }
    });
    let gone = || SessionError::Unavailable {
        backend: "argon2",
        source: "the password check failed".into(),
    };
    if queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .send(job)
        .is_err()
    {
        QUEUED.fetch_sub(1, Ordering::AcqRel);
        return Err(gone());
    }
    answer.await.map_err(|_| gone())
}

/// Password checks allowed to wait per hashing thread: at ~20 ms each, 64 is about 1.3 s.
const MAX_QUEUED_PER_THREAD: usize = 64;

/// Computes the dummy hash now, so the first unknown-account attempt does not pay for it (and
/// take twice as long as a real check).
///
/// # Errors
/// If hashing fails.
pub async fn warm_up() -> Result<(), SessionError> {
    dummy_hash().await.map(drop)
}

/// Hashes `password` with argon2id (the crate's defaults: 19 MiB, 2 passes, 1 lane, OWASP's
/// first recommendation) and a random salt, on the hashing threads.
async fn hash(password: String) -> Result<String, SessionError> {
    on_hashing_thread(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
    })
    .await?
    .map_err(|e| SessionError::Backend {
        backend: "argon2",
        source: e.to_string().into(),
    })
}

/// A hash of a random password with the same parameters as real ones: what an unknown or locked
/// account is verified against, so that its answer takes as long as a real check.
async fn dummy_hash() -> Result<&'static str, SessionError> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(hash) = DUMMY.get() {
        return Ok(hash);
    }
    let hash = hash(random_password()?).await?;
    Ok(DUMMY.get_or_init(|| hash))
}

/// A password of 22 characters from the OS CSPRNG (128 bits), for seeded accounts.
///
/// # Errors
/// If the OS has no randomness to give.
pub fn random_password() -> Result<String, SessionError> {
    use base64::Engine as _;
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| SessionError::Backend {
        backend: "os random",
        source: e.to_string().into(),
    })?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Password verifications run so far in this process (real and dummy alike): what a test reads
/// to see that an unknown or locked account is checked like a real one.
#[doc(hidden)]
pub fn password_checks() -> u64 {
    std::sync::atomic::AtomicU64::load(&PASSWORD_CHECKS, Ordering::Relaxed)
}

static PASSWORD_CHECKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Verifies `password` against `stored` on the hashing threads. A stored hash that does not
/// parse is logged and fails the check.
async fn verify(password: String, stored: String) -> Result<bool, SessionError> {
    PASSWORD_CHECKS.fetch_add(1, Ordering::Relaxed);
    on_hashing_thread(move || match PasswordHash::new(&stored) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(e) => {
            tracing::error!(error = %ErrorChain(&e), "an account's password hash does not parse");
            false
        }
    })
    .await
}

fn epoch_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Adds an account and returns its id.
///
/// # Errors
/// `Invalid` for a bad email or password, `EmailTaken`, or the database's error.
pub async fn add_account(db: &Db, new: NewAccount) -> Result<i64, AccountError> {
    let email = normalize_email(&new.email)?;
    check_new_password(&new.password)?;
    if new.company_name.chars().any(char::is_control) {
        return Err(AccountError::Invalid {
            field: "company_name",
            reason: "must not contain control characters".to_owned(),
        });
    }
    let password_hash = hash(new.password).await?;
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let inserted = db_transaction!(db, ScopeOptions::new(), |conn| {
        session_manager::session_diesel::diesel::sql_query(
            "INSERT INTO users (email, password_hash, company_name, is_root) VALUES ($1, $2, $3, $4)
             RETURNING CAST(id AS BIGINT) AS id",
        )
        .bind::<Text, _>(&email)
        .bind::<Text, _>(&password_hash)
        .bind::<Text, _>(&new.company_name)
        .bind::<Bool, _>(new.is_root)
        .get_result::<Id>(conn)
        .await
        .map_err(db_error)
    });
    match inserted {
        Ok(row) => Ok(row.id),
        Err(SessionError::Conflict { .. }) => Err(AccountError::EmailTaken),
        Err(e) => Err(e.into()),
    }
}

/// Which account an attempt is on.
enum Lookup<'a> {
    Email(&'a str),
    Id(i64),
}

/// Counts one attempt on the account (a new window if the last began `window` ago or more) and
/// reads it; `None` if there is no such account.
async fn claim_attempt(
    db: &Db,
    lookup: Lookup<'_>,
    window: Duration,
) -> Result<Option<Account>, SessionError> {
    let now = epoch_ms(SystemTime::now());
    let window_start = now.saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
    let condition = match lookup {
        Lookup::Email(_) => "email = $3",
        Lookup::Id(_) => "id = $3",
    };
    // `$1`, `$2`, `$3` first appear in that order: SQLite numbers named parameters by first
    // appearance, PostgreSQL by their digits, so both bind them the same way.
    let sql = format!(
        "UPDATE users SET
            failed_attempts = CASE WHEN attempts_since <= $1 THEN 1 ELSE failed_attempts + 1 END,
            attempts_since = CASE WHEN attempts_since <= $1 THEN $2 ELSE attempts_since END
         WHERE {condition}
         RETURNING CAST(id AS BIGINT) AS id, email, password_hash, company_name, is_root, failed_attempts"
    );
    // The claim writes a row only when the account exists, and a commit that wrote waits for
    // PostgreSQL to flush its log: that wait would tell an attacker which emails have accounts.
    // The counter is not worth a flush (a crash loses at most the last moments' counts).
    let postgres = db.backend() == "postgres";
    db_transaction!(db, ScopeOptions::new(), |conn| {
        if postgres {
            session_manager::session_diesel::diesel::sql_query(
                "SET LOCAL synchronous_commit = off",
            )
            .execute(conn)
            .await
            .map_err(db_error)?;
        }
        let query = session_manager::session_diesel::diesel::sql_query(&sql)
            .bind::<BigInt, _>(window_start)
            .bind::<BigInt, _>(now);
        match lookup {
            Lookup::Email(email) => {
                query
                    .bind::<Text, _>(email)
                    .get_results::<Account>(conn)
                    .await
            }
            Lookup::Id(id) => {
                query
                    .bind::<BigInt, _>(id)
                    .get_results::<Account>(conn)
                    .await
            }
        }
        .map_err(db_error)
    })
    .map(|mut rows| rows.pop())
}

/// Sets the account's failed-attempt count back to zero after a successful check.
async fn clear_attempts(db: &Db, id: i64) -> Result<(), SessionError> {
    db_transaction!(db, ScopeOptions::new(), |conn| {
        session_manager::session_diesel::diesel::sql_query(
            "UPDATE users SET failed_attempts = 0, attempts_since = 0 WHERE id = $1",
        )
        .bind::<BigInt, _>(id)
        .execute(conn)
        .await
        .map_err(db_error)
    })
    .map(drop)
}

/// What a password check found.
enum Checked {
    /// The password is the account's and the account is not locked.
    Passed(Account),
    /// Wrong password, or the account is locked.
    Failed,
    /// No such account.
    NoAccount,
}

/// Claims an attempt, verifies, and clears the count on success. Takes as long when the account
/// is missing or locked (a dummy hash is verified instead).
async fn check_password(
    db: &Db,
    lookup: Lookup<'_>,
    password: &str,
    limits: &SignInLimits,
) -> Result<Checked, AccountError> {
    if password.chars().count() > MAX_PASSWORD_CHARS {
        return Err(AccountError::Invalid {
            field: "password",
            reason: format!("at most {MAX_PASSWORD_CHARS} characters"),
        });
    }
    let account = claim_attempt(db, lookup, limits.window).await?;
    let locked = account
        .as_ref()
        .is_some_and(|a| u32::try_from(a.failed_attempts).unwrap_or(u32::MAX) > limits.per_account);
    let stored = match &account {
        Some(a) if !locked => a.password_hash.clone(),
        _ => dummy_hash().await?.to_owned(),
    };
    let matches = verify(password.to_owned(), stored).await?;
    Ok(match account {
        Some(account) if matches && !locked => {
            clear_attempts(db, account.id).await?;
            Checked::Passed(account)
        }
        Some(_) => Checked::Failed,
        None => Checked::NoAccount,
    })
}

/// Per-address counts of failed sign-in attempts, in this process's memory.
#[derive(Debug)]
pub struct AddressLimiter {
    limits: SignInLimits,
    windows: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    last_sweep: Mutex<Option<Instant>>,
}

/// The shared key of new addresses while the table is full (an address no client has).
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// Addresses tracked at most; past it, expired windows are dropped, and if none has expired new
/// addresses share one window (never evicting an address under attack, never going unlimited).
const MAX_TRACKED_ADDRESSES: usize = 100_000;

impl AddressLimiter {
    /// A limiter with these limits.
    #[must_use]
    pub fn new(limits: SignInLimits) -> Self {
        Self {
            limits,
            windows: Mutex::new(HashMap::new()),
            last_sweep: Mutex::new(None),
        }
    }

    /// The limits it applies (the per-account ones included, which the database enforces).
    #[must_use]
    pub fn limits(&self) -> &SignInLimits {
        &self.limits
    }

    /// The key of `addr`: IPv6 clients usually hold a whole /64, so they count as one.
    fn key(addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    IpAddr::V6(Ipv6Addr::from(bits))
                }
            },
            v4 @ IpAddr::V4(_) => v4,
        }
    }

    /// Counts an attempt from `addr` before it is checked and returns the key it was counted
    /// under, or refuses it with how long to wait.
    fn claim(&self, addr: IpAddr) -> Result<IpAddr, AccountError> {
        let key = Self::key(addr);
        let now = Instant::now();
        let window = self.limits.window;
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut key = key;
        if !windows.contains_key(&key) && windows.len() >= MAX_TRACKED_ADDRESSES {
            // Expired windows are swept at most once a second (a sweep walks the whole table).
            let mut last_sweep = self
                .last_sweep
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last_sweep.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
                windows.retain(|_, (_, since)| now.duration_since(*since) < window);
                *last_sweep = Some(now);
            }
            if windows.len() >= MAX_TRACKED_ADDRESSES {
                // Full of live windows: a distributed attack is on. New addresses share one
                // window, so they stay limited, together.
                key = OVERFLOW;
            }
        }
        let (count, since) = windows.entry(key).or_insert((0, now));
        if now.duration_since(*since) >= window {
            (*count, *since) = (0, now);
        }
        if *count >= self.limits.per_address {
            return Err(AccountError::TooManyAttempts {
                retry_after: window.saturating_sub(now.duration_since(*since)),
            });
        }
        *count += 1;
        Ok(key)
    }

    /// Takes back the claim (counted under `key`) of an attempt that succeeded: only failures
    /// count.
    fn succeeded(&self, key: IpAddr) {
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((count, _)) = windows.get_mut(&key) {
            *count = count.saturating_sub(1);
        }
    }
}

/// The client's address, as the session layer works it out (`session_axum::ClientInfo`: the
/// connection's peer, which `session_axum::serve` and axum's `into_make_service_with_connect_info`
/// record, or behind the layer's trusted proxies the address they report); the peer itself on a
/// router without the layer. `None` when the server did not record it: then the per-address
/// limit does not apply.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(session) = parts.extensions.get::<session_axum::Session>() {
            return Ok(Self(session.client().address));
        }
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip()),
        ))
    }
}

/// Signs in: the account whose `email` and `password` these are, within both limits.
///
/// # Errors
/// `TooManyAttempts` from the address, `InvalidCredentials` for anything wrong with the email,
/// the password or the account's lock, or the database's error.
pub async fn authenticate(
    db: &Db,
    limiter: &AddressLimiter,
    client: ClientAddr,
    email: &str,
    password: &str,
) -> Result<Account, AccountError> {
    let claimed = client.0.map(|addr| limiter.claim(addr)).transpose()?;
    // A malformed email is checked like an unknown one (same time, same answer).
    let email = normalize_email(email).unwrap_or_default();
    match check_password(db, Lookup::Email(&email), password, &limiter.limits).await? {
        Checked::Passed(account) => {
            if let Some(key) = claimed {
                limiter.succeeded(key);
            }
            Ok(account)
        }
        Checked::Failed | Checked::NoAccount => Err(AccountError::InvalidCredentials),
    }
}

/// Checks account `id`'s password again (a re-authentication before a sensitive action). The
/// attempt counts toward the account's limit, as a sign-in does, so a stolen session cannot
/// guess it freely.
///
/// # Errors
/// `WrongPassword` (a wrong password or a locked account), `NoAccount`, or the database's error.
pub async fn confirm_password(
    db: &Db,
    limits: &SignInLimits,
    id: i64,
    password: &str,
) -> Result<(), AccountError> {
    match check_password(db, Lookup::Id(id), password, limits).await? {
        Checked::Passed(_) => Ok(()),
        Checked::Failed => Err(AccountError::WrongPassword),
        Checked::NoAccount => Err(AccountError::NoAccount),
    }
}

/// Changes account `id`'s password after checking its current one (the attempt counts toward
/// the account's limit, so a stolen session cannot guess it freely).
///
/// # Errors
/// `WrongPassword`, `NoAccount`, `Invalid` for a new password that fails the rules, or the
/// database's error.
pub async fn change_password(
    db: &Db,
    limits: &SignInLimits,
    id: i64,
    current: &str,
    new: String,
) -> Result<(), AccountError> {
    check_new_password(&new)?;
    match check_password(db, Lookup::Id(id), current, limits).await? {
        Checked::Passed(_) => {}
        Checked::Failed => return Err(AccountError::WrongPassword),
        Checked::NoAccount => return Err(AccountError::NoAccount),
    }
    let password_hash = hash(new).await?;
    db_transaction!(db, ScopeOptions::new(), |conn| {
        session_manager::session_diesel::diesel::sql_query(
            "UPDATE users SET password_hash = $1 WHERE id = $2",
        )
        .bind::<Text, _>(&password_hash)
        .bind::<BigInt, _>(id)
        .execute(conn)
        .await
        .map_err(db_error)
    })?;
    Ok(())
}
