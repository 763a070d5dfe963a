//! `SessionConfig`: every setting, from code, a TOML file or environment variables.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use session_core::{MigrationPhase, PoolConfig, Result, RetryPolicy, SessionError, SessionPolicy};

/// Settings of a SQL user-session store: PostgreSQL's (`[postgres_store]` in TOML), MySQL's
/// (`[mysql_store]`) and SQLite's (`[sqlite_store]`).
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SqlStoreConfig {
    /// The store's own connection pool (`[postgres_store.pool]`, `[mysql_store.pool]`). Default:
    /// as [`PoolConfig`], with `max_size` 16.
    pub pool: PoolConfig,
    /// Rows each `purge_expired` batch deletes. Default `1000`.
    pub purge_batch: u32,
}

/// The PostgreSQL store's settings (the name they had before the MySQL store shared them).
#[cfg(feature = "postgres")]
pub type PostgresStoreConfig = SqlStoreConfig;

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
impl Default for SqlStoreConfig {
    fn default() -> Self {
        let mut pool = PoolConfig::default();
        pool.max_size = 16;
        Self {
            pool,
            purge_batch: session_diesel::DEFAULT_PURGE_BATCH,
        }
    }
}

/// Everything the manager needs. Every field has a default, so an empty file (or no environment
/// variable at all) gives an in-memory session store and an in-memory SQLite database.
///
/// Sources, later over earlier: defaults, the TOML file named by `SESSION_CONFIG_FILE` (if set),
/// environment variables ([`ENV_VARS`]); see [`SessionConfig::from_env`].
///
/// Its `Debug` shows the URLs without credentials ([`redacted_url`]), so a logged configuration
/// cannot leak a password.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Where user sessions live: `memory://`, `redis://…`, `rediss://…`, a Redis Cluster
    /// (`redis+cluster://host:port,host:port…`), a master behind Redis Sentinel
    /// (`redis+sentinel://host:port,host:port…/<master name>[/db]`), `postgres://…` or
    /// `mysql://…` (MySQL or MariaDB).
    /// Default `memory://`.
    pub store_url: String,
    /// During a move between backends: the store sessions move from. The manager then serves a
    /// `MigratingStore` (reads fall back to this store and copy forward, endings apply to both;
    /// ADR 0026) while `sessionctl migrate` copies the rest; remove it once the copy is checked.
    /// Same URL forms as `store_url`, and the same backend settings. Default: none.
    pub migrate_from_url: Option<String>,
    /// The phase of the move (`prepare`, `copy` or `finish`; ADR 0028): a fleet rolls through
    /// them one rollout at a time, so that instances of neighbouring phases serving side by side
    /// never undo each other's endings (docs/operations.md). Only with `migrate_from_url`.
    /// Default: `copy`.
    pub migrate_phase: Option<MigrationPhase>,
    /// The application database: `sqlite://path`, `sqlite::memory:`, `postgres://…`, `mysql://…`,
    /// or `none`
    /// (sessions only). Default `sqlite::memory:` with the `sqlite` feature, else `none`.
    pub database_url: String,
    /// Read replicas of a PostgreSQL `database_url`: read-only scopes go to a healthy one, the
    /// rest to the primary (session-diesel's `ReplicaConfig`, ADR 0022). Default: none.
    pub database_replicas: Vec<String>,
    /// A replica further behind the primary than this serves no read-only scope. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub database_replica_max_lag: Duration,
    /// Expiry, throttling and size limits (`[policy]`).
    pub policy: SessionPolicy,
    /// The application database's pool (`[db_pool]`).
    pub db_pool: PoolConfig,
    /// How often expired sessions are purged in the background, on stores that need it (memory,
    /// PostgreSQL, MySQL; Redis expires keys itself). `0s` turns it off. Default `5m`.
    #[serde(with = "humantime_serde")]
    pub purge_interval: Duration,
    /// Retries of temporary errors on idempotent session operations (`[retry]`).
    pub retry: RetryPolicy,
    /// The Redis store (`[redis]`): `layout` (`standard` or `compatible`), `key_prefix`,
    /// `pool_max_size`, `pool_min_idle`, `checkout_timeout`, `response_timeout`,
    /// `test_on_checkout`. The URL is `store_url`.
    #[cfg(feature = "redis")]
    pub redis: session_redis::RedisConfig,
    /// The PostgreSQL session store (`[postgres_store]`).
    #[cfg(feature = "postgres")]
    pub postgres_store: SqlStoreConfig,
    /// The MySQL/MariaDB session store (`[mysql_store]`).
    #[cfg(feature = "mysql")]
    pub mysql_store: SqlStoreConfig,
    /// The SQLite session store (`[sqlite_store]`), for a `sqlite://` `store_url`.
    #[cfg(feature = "sqlite")]
    pub sqlite_store: SqlStoreConfig,
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("SessionConfig");
        d.field("store_url", &redacted_url(&self.store_url))
            .field(
                "migrate_from_url",
                &self.migrate_from_url.as_deref().map(redacted_url),
            )
            .field("migrate_phase", &self.migrate_phase)
            .field("database_url", &redacted_url(&self.database_url))
            .field(
                "database_replicas",
                &self
                    .database_replicas
                    .iter()
                    .map(|u| redacted_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("database_replica_max_lag", &self.database_replica_max_lag)
            .field("policy", &self.policy)
            .field("db_pool", &self.db_pool)
            .field("purge_interval", &self.purge_interval)
            .field("retry", &self.retry);
        #[cfg(feature = "redis")]
        d.field("redis", &self.redis);
        #[cfg(feature = "postgres")]
        d.field("postgres_store", &self.postgres_store);
        #[cfg(feature = "mysql")]
        d.field("mysql_store", &self.mysql_store);
        #[cfg(feature = "sqlite")]
        d.field("sqlite_store", &self.sqlite_store);
        d.finish()
    }
}

/// `url` as it may be logged: unchanged when it can hold no credentials (no `@`, no `pass` in
/// any case), else only its scheme and `://***`. Errs on the side of hiding: a URL parser is not
/// compiled into every build, and a wrong guess here would print a password.
#[must_use]
pub fn redacted_url(url: &str) -> String {
    let lower = url.to_ascii_lowercase();
    if !url.contains('@') && !lower.contains("pass") {
        return url.to_owned();
    }
    match url.split_once("://") {
        Some((scheme, _))
            if !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            format!("{scheme}://***")
        }
        _ => "***".to_owned(),
    }
}

/// The database URL meaning "no application database".
pub const NO_DATABASE: &str = "none";

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            store_url: "memory://".to_owned(),
            migrate_from_url: None,
            migrate_phase: None,
            database_url: if cfg!(feature = "sqlite") {
                "sqlite::memory:"
            } else {
                NO_DATABASE
            }
            .to_owned(),
            database_replicas: Vec::new(),
            database_replica_max_lag: Duration::from_secs(1),
            policy: SessionPolicy::default(),
            db_pool: PoolConfig::default(),
            purge_interval: Duration::from_secs(300),
            retry: RetryPolicy::default(),
            #[cfg(feature = "redis")]
            redis: session_redis::RedisConfig::default(),
            #[cfg(feature = "postgres")]
            postgres_store: SqlStoreConfig::default(),
            #[cfg(feature = "mysql")]
            mysql_store: SqlStoreConfig::default(),
            #[cfg(feature = "sqlite")]
            sqlite_store: SqlStoreConfig::default(),
        }
    }
}

/// Environment variables and the configuration keys they set (`table.key` for nested keys).
/// Variables of a backend whose feature is not compiled in are ignored.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("SESSION_STORE_URL", "store_url"),
    ("SESSION_MIGRATE_FROM_URL", "migrate_from_url"),
    ("SESSION_MIGRATE_PHASE", "migrate_phase"),
    ("DATABASE_URL", "database_url"),
    ("DATABASE_REPLICA_URLS", "database_replicas"),
    ("DATABASE_REPLICA_MAX_LAG", "database_replica_max_lag"),
    ("SESSION_IDLE_TIMEOUT", "policy.idle_timeout"),
    ("SESSION_ABSOLUTE_TIMEOUT", "policy.absolute_timeout"),
    ("SESSION_TOUCH_INTERVAL", "policy.touch_interval"),
    (
        "SESSION_REMEMBER_ME_IDLE_TIMEOUT",
        "policy.remember_me_idle_timeout",
    ),
    (
        "SESSION_REMEMBER_ME_ABSOLUTE_TIMEOUT",
        "policy.remember_me_absolute_timeout",
    ),
    (
        "SESSION_MAX_ATTRIBUTES_BYTES",
        "policy.max_attributes_bytes",
    ),
    ("SESSION_MAX_PER_USER", "policy.max_sessions_per_user"),
    ("SESSION_PURGE_INTERVAL", "purge_interval"),
    ("SESSION_RETRY_MAX", "retry.max_retries"),
    ("SESSION_STORE_POOL_SIZE", "redis.pool_max_size"),
    ("SESSION_STORE_POOL_SIZE", "postgres_store.pool.max_size"),
    ("SESSION_STORE_POOL_SIZE", "mysql_store.pool.max_size"),
    ("SESSION_STORE_POOL_SIZE", "sqlite_store.pool.max_size"),
    ("SESSION_KEY_PREFIX", "redis.key_prefix"),
    ("SESSION_REDIS_LAYOUT", "redis.layout"),
    ("SESSION_REDIS_CHECKOUT_TIMEOUT", "redis.checkout_timeout"),
    ("SESSION_REDIS_RESPONSE_TIMEOUT", "redis.response_timeout"),
    ("SESSION_REDIS_TEST_ON_CHECKOUT", "redis.test_on_checkout"),
    (
        "SESSION_REDIS_NEAR_CACHE_ENTRIES",
        "redis.near_cache.max_entries",
    ),
    (
        "SESSION_REDIS_NEAR_CACHE_BYTES",
        "redis.near_cache.max_bytes",
    ),
    ("SESSION_PG_PURGE_BATCH", "postgres_store.purge_batch"),
    ("SESSION_MYSQL_PURGE_BATCH", "mysql_store.purge_batch"),
    ("SESSION_SQLITE_PURGE_BATCH", "sqlite_store.purge_batch"),
    ("DB_POOL_MAX_SIZE", "db_pool.max_size"),
    ("DB_POOL_MIN_IDLE", "db_pool.min_idle"),
    ("DB_CHECKOUT_TIMEOUT", "db_pool.checkout_timeout"),
    ("DB_TEST_ON_CHECKOUT", "db_pool.test_on_checkout"),
];

/// The variable naming the TOML file [`SessionConfig::from_env`] reads first.
pub const CONFIG_FILE_VAR: &str = "SESSION_CONFIG_FILE";

fn read_file(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        SessionError::config(
            "config file",
            format!("cannot read {}: {e}", path.display()),
        )
    })
}

fn duration(var: &str, value: &str) -> Result<Duration> {
    humantime::parse_duration(value).map_err(|e| {
        SessionError::config(
            var,
            format!("`{value}` is not a duration like `30m` or `90s`: {e}"),
        )
    })
}

fn number<T: std::str::FromStr>(var: &str, value: &str) -> Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| SessionError::config(var, format!("`{value}` is not a whole number")))
}

fn boolean(var: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(SessionError::config(
            var,
            format!("`{value}` is not true or false"),
        )),
    }
}

/// The key a TOML error is about, found from the error's span (its message quotes values as
/// well as keys): an unknown key or table it points at, by its name; a bad value, by the key on
/// its line under the table above it (`redis.layout`), as validation names keys. `None` when the
/// span is not on a `key = value` or `[table]` line (a syntax error).
fn toml_error_key(text: &str, err: &toml::de::Error) -> Option<String> {
    let at = err.span()?.start;
    let line_start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or_default();
    let is_key = |k: &str| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    };
    let header = |l: &str| {
        Some(
            l.trim()
                .strip_prefix('[')?
                .strip_suffix(']')?
                .trim()
                .to_owned(),
        )
    };
    let Some((key, _)) = line.split_once('=') else {
        return header(line).filter(|t| is_key(t));
    };
    let key = key.trim();
    if !is_key(key) {
        return None;
    }
    if at - line_start <= line.find('=')? {
        return Some(key.to_owned());
    }
    let table = text[..line_start].lines().rev().find_map(header);
    Some(match table {
        Some(table) if is_key(&table) => format!("{table}.{key}"),
        _ => key.to_owned(),
    })
}

/// A table's error under the table's path, e.g. `redis.pool_max_size`.
fn nested(table: &str, err: SessionError) -> SessionError {
    match err {
        SessionError::Config { key, reason } => SessionError::Config {
            key: format!("{table}.{key}"),
            reason,
        },
        other => other,
    }
}

impl SessionConfig {
    /// Defaults, then the TOML file named by `SESSION_CONFIG_FILE` if it is set, then the
    /// process's environment variables (see [`ENV_VARS`]): the environment wins over the file.
    ///
    /// # Errors
    /// [`SessionError::Config`] naming the variable (or the file's key) and what it should look
    /// like.
    pub fn from_env() -> Result<Self> {
        let file = std::env::var_os(CONFIG_FILE_VAR).filter(|path| !path.is_empty());
        // Variables that are not UTF-8 cannot be ours; skipped rather than a panic.
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        Self::from_sources(file.as_deref().map(std::path::Path::new), vars)
    }

    /// What [`SessionConfig::from_env`] does, with the file and the variables given: defaults,
    /// then the TOML `file` if any, then `vars`, validated once at the end, so a variable can
    /// correct what the file says.
    ///
    /// # Errors
    /// [`SessionError::Config`] naming the variable, or the file's key.
    pub fn from_sources(
        file: Option<&std::path::Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let base = match file {
            Some(path) => Self::parse_toml(&read_file(path)?)?,
            None => Self::default(),
        };
        base.with_vars(vars)
    }

    /// Defaults overridden by the given `(name, value)` pairs; names not in [`ENV_VARS`] are ignored.
    ///
    /// # Errors
    /// [`SessionError::Config`] naming the variable and what it should look like.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        Self::default().with_vars(vars)
    }

    /// This configuration overridden by the given `(name, value)` pairs (see [`ENV_VARS`]).
    ///
    /// # Errors
    /// [`SessionError::Config`] naming the variable and what it should look like.
    pub fn with_vars(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut applied = Vec::new();
        for (var, value) in vars {
            if let Some((name, _)) = ENV_VARS.iter().find(|(name, _)| *name == var) {
                self.apply_var(name, &value)?;
                applied.push(*name);
            }
        }
        // A bad value is reported under the variable that set it, if one did.
        self.validate().map_err(|e| match e {
            SessionError::Config { key, reason } => {
                let var = ENV_VARS
                    .iter()
                    .find(|(name, k)| *k == key && applied.contains(name))
                    .map_or(key, |(name, _)| (*name).to_owned());
                SessionError::Config { key: var, reason }
            }
            other => other,
        })?;
        Ok(self)
    }

    fn apply_var(&mut self, var: &str, v: &str) -> Result<()> {
        let c = self;
        match var {
            "SESSION_STORE_URL" => v.clone_into(&mut c.store_url),
            "SESSION_MIGRATE_FROM_URL" => {
                c.migrate_from_url = (!v.trim().is_empty()).then(|| v.trim().to_owned());
            }
            "SESSION_MIGRATE_PHASE" => {
                c.migrate_phase = if v.trim().is_empty() {
                    None
                } else {
                    Some(
                        v.parse()
                            .map_err(|reason: String| SessionError::config(var, reason))?,
                    )
                };
            }
            "DATABASE_URL" => v.clone_into(&mut c.database_url),
            "DATABASE_REPLICA_URLS" => {
                c.database_replicas = v
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
            "DATABASE_REPLICA_MAX_LAG" => c.database_replica_max_lag = duration(var, v)?,
            "SESSION_IDLE_TIMEOUT" => c.policy.idle_timeout = duration(var, v)?,
            "SESSION_ABSOLUTE_TIMEOUT" => c.policy.absolute_timeout = duration(var, v)?,
            "SESSION_TOUCH_INTERVAL" => c.policy.touch_interval = duration(var, v)?,
            "SESSION_REMEMBER_ME_IDLE_TIMEOUT" => {
                c.policy.remember_me_idle_timeout = duration(var, v)?;
            }
            "SESSION_REMEMBER_ME_ABSOLUTE_TIMEOUT" => {
                c.policy.remember_me_absolute_timeout = duration(var, v)?;
            }
            "SESSION_MAX_ATTRIBUTES_BYTES" => c.policy.max_attributes_bytes = number(var, v)?,
            "SESSION_MAX_PER_USER" => c.policy.max_sessions_per_user = Some(number(var, v)?),
            "SESSION_PURGE_INTERVAL" => c.purge_interval = duration(var, v)?,
            "SESSION_RETRY_MAX" => c.retry.max_retries = number(var, v)?,
            "DB_POOL_MAX_SIZE" => c.db_pool.max_size = number(var, v)?,
            "DB_POOL_MIN_IDLE" => c.db_pool.min_idle = Some(number(var, v)?),
            "DB_CHECKOUT_TIMEOUT" => c.db_pool.checkout_timeout = duration(var, v)?,
            "DB_TEST_ON_CHECKOUT" => c.db_pool.test_on_checkout = boolean(var, v)?,
            _ => c.apply_backend_var(var, v)?,
        }
        Ok(())
    }

    /// The variables of the optional backends; each is ignored when its feature is off.
    #[allow(clippy::unnecessary_wraps, unused_variables)] // with neither feature, nothing can fail
    fn apply_backend_var(&mut self, var: &str, v: &str) -> Result<()> {
        #[cfg(feature = "redis")]
        match var {
            "SESSION_STORE_POOL_SIZE" => self.redis.pool_max_size = number(var, v)?,
            "SESSION_KEY_PREFIX" => v.clone_into(&mut self.redis.key_prefix),
            "SESSION_REDIS_LAYOUT" => {
                self.redis.layout = match v.trim() {
                    "standard" => session_redis::Layout::Standard,
                    "compatible" => session_redis::Layout::Compatible,
                    _ => {
                        return Err(SessionError::config(
                            var,
                            format!("`{v}` is not a layout; use standard or compatible"),
                        ));
                    }
                };
            }
            "SESSION_REDIS_CHECKOUT_TIMEOUT" => self.redis.checkout_timeout = duration(var, v)?,
            "SESSION_REDIS_RESPONSE_TIMEOUT" => self.redis.response_timeout = duration(var, v)?,
            "SESSION_REDIS_TEST_ON_CHECKOUT" => self.redis.test_on_checkout = boolean(var, v)?,
            "SESSION_REDIS_NEAR_CACHE_ENTRIES" => {
                self.redis
                    .near_cache
                    .get_or_insert_with(session_redis::NearCacheConfig::default)
                    .max_entries = number(var, v)?;
            }
            "SESSION_REDIS_NEAR_CACHE_BYTES" => {
                self.redis
                    .near_cache
                    .get_or_insert_with(session_redis::NearCacheConfig::default)
                    .max_bytes = number(var, v)?;
            }
            _ => {}
        }
        #[cfg(feature = "postgres")]
        match var {
            "SESSION_STORE_POOL_SIZE" => self.postgres_store.pool.max_size = number(var, v)?,
            "SESSION_PG_PURGE_BATCH" => self.postgres_store.purge_batch = number(var, v)?,
            _ => {}
        }
        #[cfg(feature = "mysql")]
        match var {
            "SESSION_STORE_POOL_SIZE" => self.mysql_store.pool.max_size = number(var, v)?,
            "SESSION_MYSQL_PURGE_BATCH" => self.mysql_store.purge_batch = number(var, v)?,
            _ => {}
        }
        #[cfg(feature = "sqlite")]
        match var {
            "SESSION_STORE_POOL_SIZE" => self.sqlite_store.pool.max_size = number(var, v)?,
            "SESSION_SQLITE_PURGE_BATCH" => self.sqlite_store.purge_batch = number(var, v)?,
            _ => {}
        }
        Ok(())
    }

    /// Parses a TOML document (keys as in this struct; `[policy]`, `[db_pool]`, `[retry]`,
    /// `[redis]`, `[postgres_store]`, `[mysql_store]` and `[sqlite_store]` tables).
    ///
    /// # Errors
    /// [`SessionError::Config`] naming the key, for syntax errors, unknown keys and bad values.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let c = Self::parse_toml(text)?;
        c.validate()?;
        Ok(c)
    }

    /// Parses without validating, so that values applied later (the environment) can still fix it.
    fn parse_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| {
            let key = toml_error_key(text, &e).unwrap_or_else(|| "config file".to_owned());
            // The message and the line number, not the toml crate's quote of the line: that
            // line may hold a URL with its password.
            let line = e
                .span()
                .and_then(|span| text.get(..span.start))
                .map(|before| before.matches('\n').count() + 1);
            let reason = match line {
                Some(line) => format!("line {line}: {}", e.message().trim()),
                None => e.message().trim().to_owned(),
            };
            SessionError::config(key, reason)
        })
    }

    /// Reads and parses a TOML file.
    ///
    /// # Errors
    /// [`SessionError::Config`] with key `config file` if it cannot be read, else as
    /// [`SessionConfig::from_toml_str`].
    pub fn from_toml_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::from_toml_str(&read_file(path.as_ref())?)
    }

    /// Checks every value that can be checked without connecting.
    ///
    /// # Errors
    /// [`SessionError::Config`] naming the first bad key.
    pub fn validate(&self) -> Result<()> {
        self.policy.validate().map_err(|e| nested("policy", e))?;
        self.db_pool.validate().map_err(|e| nested("db_pool", e))?;
        self.retry.validate().map_err(|e| nested("retry", e))?;
        let store = crate::backend::StoreKind::of(&self.store_url)?;
        if let Some(old) = &self.migrate_from_url {
            crate::backend::StoreKind::of(old)
                .map_err(|e| crate::manager::rename_key(e, "migrate_from_url"))?;
            if old == &self.store_url {
                return Err(SessionError::config(
                    "migrate_from_url",
                    "names the store_url itself; it is the store sessions move from",
                ));
            }
        }
        if let (Some(phase), None) = (self.migrate_phase, &self.migrate_from_url) {
            return Err(SessionError::config(
                "migrate_phase",
                format!(
                    "is {phase} but migrate_from_url is not set; a phase belongs to a move \
                     between stores (remove both once it is over)"
                ),
            ));
        }
        let db = crate::backend::DbKind::of(&self.database_url)?;
        if !self.database_replicas.is_empty() {
            #[cfg(feature = "postgres")]
            let primary_is_postgres = db == crate::backend::DbKind::Postgres;
            #[cfg(not(feature = "postgres"))]
            let primary_is_postgres = false;
            if !primary_is_postgres {
                return Err(SessionError::config(
                    "database_replicas",
                    "read replicas need a postgres:// database_url (and the postgres feature)",
                ));
            }
            if self
                .database_replicas
                .iter()
                .any(|u| !(u.starts_with("postgres://") || u.starts_with("postgresql://")))
            {
                return Err(SessionError::config(
                    "database_replicas",
                    "each replica is a postgres:// URL",
                ));
            }
            #[cfg(feature = "postgres")]
            session_diesel::ReplicaConfig::new(self.database_replicas.clone())
                .max_lag(self.database_replica_max_lag)
                .validate()
                .map_err(|_| {
                    SessionError::config(
                        "database_replica_max_lag",
                        "must be at least 500ms (twice the 250 ms check interval)",
                    )
                })?;
        }
        let _ = db;
        #[cfg(feature = "redis")]
        {
            if self.redis.url != session_redis::RedisConfig::default().url {
                return Err(SessionError::config(
                    "redis.url",
                    "the Redis URL is `store_url` (SESSION_STORE_URL); remove `url` from [redis]",
                ));
            }
            let mut redis = self.redis.clone();
            if store == crate::backend::StoreKind::Redis {
                redis.url.clone_from(&self.store_url);
            }
            redis.validate().map_err(|e| nested("redis", e))?;
        }
        #[cfg(feature = "postgres")]
        self.postgres_store
            .pool
            .validate()
            .map_err(|e| nested("postgres_store.pool", e))?;
        #[cfg(feature = "mysql")]
        self.mysql_store
            .pool
            .validate()
            .map_err(|e| nested("mysql_store.pool", e))?;
        #[cfg(feature = "sqlite")]
        self.sqlite_store
            .pool
            .validate()
            .map_err(|e| nested("sqlite_store.pool", e))?;
        let _ = store;
        Ok(())
    }
}
