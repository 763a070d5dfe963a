//! `SessionConfig`: every setting, from code, a TOML file or environment variables.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use session_core::{PoolConfig, Result, SessionError, SessionPolicy};

/// Everything the manager needs. Every field has a default, so an empty file (or no environment
/// variable at all) gives an in-memory session store and an in-memory SQLite database.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Where user sessions live: `memory://`, `redis://…`, `rediss://…` or `postgres://…`.
    /// Default `memory://`.
    pub store_url: String,
    /// The application database: `sqlite://path`, `sqlite::memory:` or `postgres://…`.
    /// Default `sqlite::memory:`.
    pub database_url: String,
    /// Expiry, throttling and size limits.
    pub policy: SessionPolicy,
    /// The application database's pool.
    pub db_pool: PoolConfig,
    /// Prefix of every Redis key. Default `session:`.
    pub key_prefix: String,
    /// Connections of the session store's own pool (Redis, PostgreSQL). Default `16`.
    pub store_pool_size: u32,
    /// How often expired sessions are purged in the background (memory and PostgreSQL stores;
    /// Redis expires keys itself). `0s` turns it off. Default `5m`.
    #[serde(with = "humantime_serde")]
    pub purge_interval: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            store_url: "memory://".to_owned(),
            database_url: "sqlite::memory:".to_owned(),
            policy: SessionPolicy::default(),
            db_pool: PoolConfig::default(),
            key_prefix: "session:".to_owned(),
            store_pool_size: 16,
            purge_interval: Duration::from_secs(300),
        }
    }
}

/// Environment variables and the configuration keys they set.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("SESSION_STORE_URL", "store_url"),
    ("DATABASE_URL", "database_url"),
    ("SESSION_IDLE_TIMEOUT", "idle_timeout"),
    ("SESSION_ABSOLUTE_TIMEOUT", "absolute_timeout"),
    ("SESSION_TOUCH_INTERVAL", "touch_interval"),
    (
        "SESSION_REMEMBER_ME_IDLE_TIMEOUT",
        "remember_me_idle_timeout",
    ),
    (
        "SESSION_REMEMBER_ME_ABSOLUTE_TIMEOUT",
        "remember_me_absolute_timeout",
    ),
    ("SESSION_MAX_ATTRIBUTES_BYTES", "max_attributes_bytes"),
    ("SESSION_MAX_PER_USER", "max_sessions_per_user"),
    ("SESSION_KEY_PREFIX", "key_prefix"),
    ("SESSION_STORE_POOL_SIZE", "store_pool_size"),
    ("SESSION_PURGE_INTERVAL", "purge_interval"),
    ("DB_POOL_MAX_SIZE", "max_size"),
    ("DB_POOL_MIN_IDLE", "min_idle"),
    ("DB_CHECKOUT_TIMEOUT", "checkout_timeout"),
    ("DB_TEST_ON_CHECKOUT", "test_on_checkout"),
];

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

impl SessionConfig {
    /// Defaults overridden by the process's environment variables (see [`ENV_VARS`]).
    ///
    /// # Errors
    /// [`SessionError::Config`] naming the variable and what it should look like.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(std::env::vars())
    }

    /// Defaults overridden by the given `(name, value)` pairs; names not in [`ENV_VARS`] are ignored.
    ///
    /// # Errors
    /// [`SessionError::Config`] naming the variable and what it should look like.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut c = Self::default();
        for (var, value) in vars {
            let v = value.as_str();
            let var = var.as_str();
            match var {
                "SESSION_STORE_URL" => c.store_url = value.clone(),
                "DATABASE_URL" => c.database_url = value.clone(),
                "SESSION_IDLE_TIMEOUT" => c.policy.idle_timeout = duration(var, v)?,
                "SESSION_ABSOLUTE_TIMEOUT" => c.policy.absolute_timeout = duration(var, v)?,
                "SESSION_TOUCH_INTERVAL" => c.policy.touch_interval = duration(var, v)?,
                "SESSION_REMEMBER_ME_IDLE_TIMEOUT" => {
                    c.policy.remember_me_idle_timeout = duration(var, v)?
                }
                "SESSION_REMEMBER_ME_ABSOLUTE_TIMEOUT" => {
                    c.policy.remember_me_absolute_timeout = duration(var, v)?
                }
                "SESSION_MAX_ATTRIBUTES_BYTES" => c.policy.max_attributes_bytes = number(var, v)?,
                "SESSION_MAX_PER_USER" => c.policy.max_sessions_per_user = Some(number(var, v)?),
                "SESSION_KEY_PREFIX" => c.key_prefix = value.clone(),
                "SESSION_STORE_POOL_SIZE" => c.store_pool_size = number(var, v)?,
                "SESSION_PURGE_INTERVAL" => c.purge_interval = duration(var, v)?,
                "DB_POOL_MAX_SIZE" => c.db_pool.max_size = number(var, v)?,
                "DB_POOL_MIN_IDLE" => c.db_pool.min_idle = Some(number(var, v)?),
                "DB_CHECKOUT_TIMEOUT" => c.db_pool.checkout_timeout = duration(var, v)?,
                "DB_TEST_ON_CHECKOUT" => c.db_pool.test_on_checkout = boolean(var, v)?,
                _ => {}
            }
        }
        // Report a bad value under the variable that set it.
        c.validate().map_err(|e| match e {
            SessionError::Config { key, reason } => {
                let var = ENV_VARS
                    .iter()
                    .find(|(_, k)| *k == key)
                    .map_or(key.clone(), |(var, _)| (*var).to_owned());
                SessionError::Config { key: var, reason }
            }
            other => other,
        })?;
        Ok(c)
    }

    /// Parses a TOML document (keys as in this struct; `[policy]` and `[db_pool]` tables).
    ///
    /// # Errors
    /// [`SessionError::Config`] naming the key, for syntax errors, unknown keys and bad values.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let c: Self = toml::from_str(text).map_err(|e| {
            let key = e
                .message()
                .split('`')
                .nth(1)
                .unwrap_or("config file")
                .to_owned();
            SessionError::config(key, e.to_string().trim().to_owned())
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Reads and parses a TOML file.
    ///
    /// # Errors
    /// [`SessionError::Config`] with key `config file` if it cannot be read, else as
    /// [`SessionConfig::from_toml_str`].
    pub fn from_toml_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            SessionError::config(
                "config file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Self::from_toml_str(&text)
    }

    /// Checks every value that can be checked without connecting.
    ///
    /// # Errors
    /// [`SessionError::Config`] naming the first bad key.
    pub fn validate(&self) -> Result<()> {
        self.policy.validate()?;
        self.db_pool.validate()?;
        if self.store_pool_size == 0 {
            return Err(SessionError::config(
                "store_pool_size",
                "must be at least 1",
            ));
        }
        crate::backend::StoreKind::of(&self.store_url)?;
        crate::backend::DbKind::of(&self.database_url)?;
        Ok(())
    }
}
