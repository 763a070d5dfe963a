//! URL handling: `redact_url` and `RedisConfig::validate` (session-redis), `parse_sqlite_url`
//! (session-diesel), and the scheme that picks the session store and the database
//! (session-manager's `StoreKind::of` and `DbKind::of`, through `SessionConfig`). Input: a URL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_core::SessionError;
use session_diesel::{SqliteTarget, parse_sqlite_url};
use session_manager::SessionConfig;
use session_redis::{Layout, RedisConfig, redact_url};

/// The key and the message of a `Config` error; any other error fails the target.
fn config_key<T>(result: Result<T, SessionError>) -> Option<(String, String)> {
    match result {
        Ok(_) => None,
        Err(SessionError::Config { key, reason }) => {
            let shown = SessionError::config(key.clone(), reason).to_string();
            Some((key, shown))
        }
        Err(other) => panic!("untyped error {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let url = String::from_utf8_lossy(data);

    // Whatever parses back out of the redacted text carries no credentials but `***`.
    let redacted = redact_url(&url);
    if let Ok(parsed) = url::Url::parse(&redacted) {
        assert!(
            matches!(parsed.password(), None | Some("***")),
            "{url:?} -> {redacted:?}"
        );
        if parsed.password().is_none() {
            assert!(
                matches!(parsed.username(), "" | "***"),
                "{url:?} -> {redacted:?}"
            );
        }
        for (key, value) in parsed.query_pairs() {
            if matches!(key.as_ref(), "pass" | "password" | "user") {
                assert_eq!(value, "***", "{url:?} -> {redacted:?}");
            }
        }
    }

    for config in [
        RedisConfig::new(url.as_ref()),
        RedisConfig::new(url.as_ref())
            .layout(Layout::Compatible)
            .key_prefix(""),
        RedisConfig::default().key_prefix(url.as_ref()),
    ] {
        let _ = format!("{config:?}");
        if let Some((key, _)) = config_key(config.validate()) {
            assert!(["url", "key_prefix"].contains(&key.as_str()), "{key}");
        }
    }

    match parse_sqlite_url(&url) {
        Ok(SqliteTarget::File(path)) => assert!(!path.is_empty() && url.ends_with(&path)),
        Ok(SqliteTarget::Memory(uri)) => assert!(uri.starts_with("file:"), "{uri}"),
        Err(err) => assert_eq!(
            config_key::<()>(Err(err)).map(|(k, _)| k).as_deref(),
            Some("url")
        ),
    }

    // The store and database URLs: refused ones are named by their scheme, never shown whole.
    let scheme = url.split_once(':').map_or("", |(s, _)| s);
    for var in ["SESSION_STORE_URL", "DATABASE_URL"] {
        let result = SessionConfig::from_vars([(var.to_owned(), url.clone().into_owned())]);
        if let Some((key, shown)) = config_key(result) {
            let redis = var == "SESSION_STORE_URL" && matches!(scheme, "redis" | "rediss");
            if !redis {
                assert_eq!(key, var);
                assert!(!shown.contains('@'), "{url:?} -> {shown}");
            }
        }
    }
});
