//! Properties of configuration parsing (TOML file and environment variables, and the URL schemes
//! that choose the backends), the same the `config` and `urls` fuzz targets check (fuzz/), run
//! on stable in every test run.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use session_core::SessionError;
use session_manager::{ENV_VARS, SessionConfig};

/// A TOML file holding `text`, removed when dropped.
struct TempToml(PathBuf);

impl TempToml {
    fn new(text: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "prop-config-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).expect("temp file written");
        Self(path)
    }
}

impl Drop for TempToml {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn vars(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// The names a Config error may carry: a variable, or a configuration key.
fn is_known_key(key: &str) -> bool {
    ENV_VARS
        .iter()
        .any(|(var, path)| key == *var || key == *path)
        || key.contains('.')
        || ["store_url", "database_url", "purge_interval", "config file"].contains(&key)
}

/// A password alphabet whose letters appear nowhere else in the URLs built from it or in the
/// errors about them, so any of them in an error is a piece of the password.
const SECRET_LETTERS: &[char] = &['Q', 'W', 'X', 'Z', 'J', 'K'];

fn password() -> impl Strategy<Value = String> {
    "[QWXZJK0-9@:%/?#!$&'()*+,;= ~._-]{1,24}"
        .prop_filter("has a letter to look for", |p| p.contains(SECRET_LETTERS))
}

fn with_case(text: &str, mask: u64) -> String {
    text.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

proptest! {
    #[test]
    fn any_variables_give_a_valid_config_or_a_config_error(
        pairs in prop::collection::vec(
            (
                prop_oneof![
                    prop::sample::select(ENV_VARS.iter().map(|(var, _)| *var).collect::<Vec<_>>())
                        .prop_map(str::to_owned),
                    "[A-Z_]{1,12}",
                ],
                prop_oneof![any::<String>(), "[0-9]{1,4}(ms|s|m|h)?", "(memory|redis|postgres|sqlite|none):?//?[a-z0-9.:/@]{0,12}"],
            ),
            0..6,
        ),
    ) {
        match SessionConfig::from_vars(pairs) {
            Ok(config) => prop_assert!(config.validate().is_ok()),
            Err(SessionError::Config { key, .. }) => prop_assert!(is_known_key(&key), "{key}"),
            Err(other) => prop_assert!(false, "untyped error {other:?}"),
        }
    }

    #[test]
    fn any_toml_file_gives_a_valid_config_or_a_config_error(
        text in prop_oneof![
            any::<String>(),
            "(store_url|database_url|purge_interval|policy|redis|db_pool|retry) = \"[a-z0-9:/.]{0,12}\"",
            "\\[(policy|db_pool|retry|redis|postgres_store)\\]\n(idle_timeout|max_size|max_retries|key_prefix|layout|purge_batch) = (\"[a-z0-9]{0,6}\"|[0-9]{1,4}|true)",
        ],
        var in proptest::option::of(("SESSION_PURGE_INTERVAL|DB_POOL_MAX_SIZE|SESSION_STORE_URL", "[a-z0-9:/]{0,8}")),
    ) {
        let file = TempToml::new(&text);
        let result = SessionConfig::from_sources(Some(&file.0), var);
        match result {
            Ok(config) => prop_assert!(config.validate().is_ok()),
            Err(SessionError::Config { key, .. }) => prop_assert!(!key.is_empty()),
            Err(other) => prop_assert!(false, "untyped error {other:?}"),
        }
        let parsed = SessionConfig::from_toml_str(&text);
        prop_assert!(matches!(parsed, Ok(_) | Err(SessionError::Config { .. })), "{parsed:?}");
    }

    #[test]
    fn variables_override_the_file(
        file_secs in 1..100_000u64,
        var_secs in proptest::option::of(0..100_000u64),
        max_size in 1..500u32,
    ) {
        let file = TempToml::new(&format!(
            "purge_interval = \"{file_secs}s\"\n[db_pool]\nmax_size = {max_size}\n"
        ));
        let env = var_secs.map(|s| ("SESSION_PURGE_INTERVAL".to_owned(), humantime::format_duration(Duration::from_secs(s)).to_string()));
        let config = SessionConfig::from_sources(Some(&file.0), env).expect("valid");
        prop_assert_eq!(config.purge_interval, Duration::from_secs(var_secs.unwrap_or(file_secs)));
        prop_assert_eq!(config.db_pool.max_size, max_size);
    }

    #[test]
    fn numbers_and_booleans_read_as_written(
        max_size in 1..10_000u32,
        spaces in "[ \t]{0,2}",
        on in any::<bool>(),
        spelling in 0..4usize,
        mask in any::<u64>(),
    ) {
        let word = if on { ["1", "true", "yes", "on"] } else { ["0", "false", "no", "off"] }[spelling];
        let config = SessionConfig::from_vars(vars(&[
            ("DB_POOL_MAX_SIZE", format!("{spaces}{max_size}{spaces}")),
            ("DB_TEST_ON_CHECKOUT", format!("{spaces}{}", with_case(word, mask))),
        ]))
        .expect("valid");
        prop_assert_eq!(config.db_pool.max_size, max_size);
        prop_assert_eq!(config.db_pool.test_on_checkout, on);
    }

    #[test]
    fn a_bad_value_is_reported_under_its_variable(
        var in prop::sample::select(vec![
            "DB_POOL_MAX_SIZE",
            "SESSION_RETRY_MAX",
            "SESSION_IDLE_TIMEOUT",
            "SESSION_PURGE_INTERVAL",
            "DB_TEST_ON_CHECKOUT",
            "DB_CHECKOUT_TIMEOUT",
        ]),
        value in "[a-z!?]{1,8}|-[0-9]{1,3}",
    ) {
        prop_assume!(!["yes", "no", "on", "off", "true", "false"].contains(&value.as_str()));
        match SessionConfig::from_vars(vars(&[(var, value.clone())])) {
            Err(SessionError::Config { key, .. }) => prop_assert_eq!(key, var),
            other => prop_assert!(false, "{var}={value}: {other:?}"),
        }
    }

    #[test]
    fn a_url_of_an_unknown_scheme_is_refused_without_showing_its_password(
        scheme in prop::sample::select(vec!["oracle", "http", "mongodb", "amqp", "memcached", "redis+unix", "file"]),
        user in prop_oneof![Just(""), Just("app")],
        password in password(),
        database in any::<bool>(),
    ) {
        let url = format!("{scheme}://{user}:{password}@db.internal:5432/app");
        let var = if database { "DATABASE_URL" } else { "SESSION_STORE_URL" };
        let err = SessionConfig::from_vars(vars(&[(var, url.clone())])).expect_err("refused");
        prop_assert!(matches!(&err, SessionError::Config { key, .. } if key == var), "{err:?}");
        let shown = err.to_string();
        prop_assert!(!shown.contains(SECRET_LETTERS), "{url} -> {shown}");
        prop_assert!(shown.contains(scheme), "{shown}");
    }
}

#[test]
fn store_and_database_urls_choose_the_compiled_in_backends() {
    let store =
        |url: &str| SessionConfig::from_vars(vars(&[("SESSION_STORE_URL", url.to_owned())]));
    let db = |url: &str| SessionConfig::from_vars(vars(&[("DATABASE_URL", url.to_owned())]));
    assert_eq!(store("memory://").is_ok(), cfg!(feature = "memory"));
    assert_eq!(
        store("postgres://u:p@h/db").is_ok(),
        cfg!(feature = "postgres")
    );
    assert_eq!(db("sqlite::memory:").is_ok(), cfg!(feature = "sqlite"));
    assert_eq!(db("postgresql://h/db").is_ok(), cfg!(feature = "postgres"));
    assert_eq!(db("mysql://root@h/db").is_ok(), cfg!(feature = "mysql"));
    assert_eq!(store("mysql://root@h/db").is_ok(), cfg!(feature = "mysql"));
    assert!(db("none").is_ok() && db("").is_ok());
}

// The regression the properties above found, pinned: a refused URL was echoed whole.
#[test]
fn a_refused_url_is_named_by_its_scheme_alone() {
    for (var, url, shown) in [
        (
            "SESSION_STORE_URL",
            "mongodb://app:s3cr3t@db.internal/app",
            "a `mongodb:` URL",
        ),
        (
            "DATABASE_URL",
            "oracle://app:s3cr3t@db.internal/app",
            "a `oracle:` URL",
        ),
        (
            "DATABASE_URL",
            "s3cr3t@db.internal",
            "a value without a URL scheme",
        ),
        (
            "SESSION_STORE_URL",
            "p@s3cr3t:db.internal",
            "a value without a URL scheme",
        ),
    ] {
        let err = SessionConfig::from_vars(vars(&[(var, url.to_owned())]))
            .expect_err("refused")
            .to_string();
        assert!(
            !err.contains("s3cr3t") && err.contains(shown),
            "{url} -> {err}"
        );
    }
}

// Found by `any_toml_file_gives_a_valid_config_or_a_config_error`: the key was read out of the
// TOML error's message, which quotes values too, so a bad value was reported under the value
// (`""` gave an empty key, `5` the key `5`).
#[test]
fn a_bad_toml_value_names_its_key() {
    let redis = cfg!(feature = "redis");
    for (text, key) in [
        (
            "[redis]\nlayout = \"\"",
            if redis { "redis.layout" } else { "redis" },
        ),
        (
            "[redis]\nlayout = \"sideways\"",
            if redis { "redis.layout" } else { "redis" },
        ),
        ("[db_pool]\nmax_size = \"x\"", "db_pool.max_size"),
        ("purge_interval = 5", "purge_interval"),
        ("[policy]\nidle_timeout = true", "policy.idle_timeout"),
        ("[nope]\nx = 1", "nope"),
        ("store_url = ", "store_url"),
        ("[policy\nx = 1", "config file"),
    ] {
        match SessionConfig::from_toml_str(text) {
            Err(SessionError::Config { key: got, reason }) => {
                assert_eq!(got, key, "{text:?}: {reason}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
}
