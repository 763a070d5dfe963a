//! Which backend a URL selects, among those compiled in.

use session_core::{Result, SessionError};

/// The session-store backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreKind {
    Memory,
    Redis,
    Postgres,
    Mysql,
    Sqlite,
}

/// The application-database backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DbKind {
    None,
    Sqlite,
    Postgres,
    Mysql,
}

fn feature_off(key: &str, scheme: &str, feature: &str) -> SessionError {
    SessionError::config(
        key,
        format!(
            "`{scheme}` URLs need the `{feature}` feature of session-manager, which this build does not have; enable it in Cargo.toml"
        ),
    )
}

fn scheme(url: &str) -> &str {
    url.split_once(':').map_or("", |(scheme, _)| scheme)
}

/// How an error names a URL it refuses: by its scheme alone, since the rest may hold a password.
fn described(url: &str) -> String {
    let scheme = scheme(url);
    let well_formed = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if well_formed {
        format!("a `{scheme}:` URL")
    } else {
        "a value without a URL scheme".to_owned()
    }
}

impl StoreKind {
    pub(crate) fn of(url: &str) -> Result<Self> {
        const KEY: &str = "store_url";
        match scheme(url) {
            "memory" if cfg!(feature = "memory") => Ok(Self::Memory),
            "memory" => Err(feature_off(KEY, "memory://", "memory")),
            "redis" | "rediss" | "redis+cluster" | "redis+sentinel" | "rediss+cluster"
            | "rediss+sentinel"
                if cfg!(feature = "redis") =>
            {
                Ok(Self::Redis)
            }
            "redis" | "rediss" | "redis+cluster" | "redis+sentinel" | "rediss+cluster"
            | "rediss+sentinel" => Err(feature_off(KEY, "redis://", "redis")),
            "postgres" | "postgresql" if cfg!(feature = "postgres") => Ok(Self::Postgres),
            "postgres" | "postgresql" => Err(feature_off(KEY, "postgres://", "postgres")),
            "mysql" if cfg!(feature = "mysql") => Ok(Self::Mysql),
            "mysql" => Err(feature_off(KEY, "mysql://", "mysql")),
            "sqlite" if cfg!(feature = "sqlite") => Ok(Self::Sqlite),
            "sqlite" => Err(feature_off(KEY, "sqlite://", "sqlite")),
            _ => Err(SessionError::config(
                KEY,
                format!(
                    "{} is not a session store URL; use memory://, redis://host:6379/0, rediss://…, redis+cluster://host:port,host:port, redis+sentinel://host:port,host:port/master, postgres://…, mysql://… or sqlite://path",
                    described(url)
                ),
            )),
        }
    }
}

impl DbKind {
    pub(crate) fn of(url: &str) -> Result<Self> {
        const KEY: &str = "database_url";
        if url.is_empty() || url == crate::config::NO_DATABASE {
            return Ok(Self::None);
        }
        match scheme(url) {
            "sqlite" if cfg!(feature = "sqlite") => Ok(Self::Sqlite),
            "sqlite" => Err(feature_off(KEY, "sqlite:", "sqlite")),
            "postgres" | "postgresql" if cfg!(feature = "postgres") => Ok(Self::Postgres),
            "postgres" | "postgresql" => Err(feature_off(KEY, "postgres://", "postgres")),
            "mysql" if cfg!(feature = "mysql") => Ok(Self::Mysql),
            "mysql" => Err(feature_off(KEY, "mysql://", "mysql")),
            _ => Err(SessionError::config(
                KEY,
                format!(
                    "{} is not a database URL; use sqlite://path, sqlite::memory:, postgres://…, mysql://… or none",
                    described(url)
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheme_whose_feature_is_off_names_the_key_and_the_feature() {
        let err = feature_off("store_url", "redis://", "redis").to_string();
        assert!(
            err.contains("`store_url`") && err.contains("`redis` feature"),
            "{err}"
        );
    }

    #[test]
    fn schemes_select_backends() {
        assert_eq!(DbKind::of("none").unwrap(), DbKind::None);
        assert_eq!(DbKind::of("").unwrap(), DbKind::None);
        assert!(
            matches!(StoreKind::of("nonsense"), Err(SessionError::Config { key, .. }) if key == "store_url")
        );
        assert!(
            matches!(DbKind::of("oracle://x"), Err(SessionError::Config { key, .. }) if key == "database_url")
        );
        if cfg!(feature = "mysql") {
            assert_eq!(DbKind::of("mysql://root@db/app").unwrap(), DbKind::Mysql);
        } else {
            assert!(DbKind::of("mysql://root@db/app").is_err());
        }
        if cfg!(feature = "memory") {
            assert_eq!(StoreKind::of("memory://").unwrap(), StoreKind::Memory);
        } else {
            assert!(StoreKind::of("memory://").is_err());
        }
        if cfg!(feature = "sqlite") {
            assert_eq!(DbKind::of("sqlite::memory:").unwrap(), DbKind::Sqlite);
            assert_eq!(DbKind::of("sqlite://x.db").unwrap(), DbKind::Sqlite);
        } else {
            assert!(DbKind::of("sqlite::memory:").is_err());
        }
    }
}
