//! The facade: configuration from the environment and TOML (every error names its key), backend
//! selection by URL, rotation on a root change, and shutdown, on memory + SQLite and on
//! Redis + PostgreSQL.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::Duration;

use session_core::{NewUserSession, ScopeOptions, SessionError};
use session_manager::{SessionConfig, SessionManager};
use session_testkit::servers::{
    PgSchema, redis_delete_prefix, redis_url, require_redis, unique_prefix,
};

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn config_key(result: session_core::Result<SessionConfig>) -> (String, String) {
    match result {
        Err(SessionError::Config { key, reason }) => (key, reason),
        other => panic!("expected a Config error, got {other:?}"),
    }
}

#[test]
fn every_bad_environment_value_names_its_variable() {
    let cases = [
        ("SESSION_IDLE_TIMEOUT", "soon"),
        ("SESSION_ABSOLUTE_TIMEOUT", "-1"),
        ("SESSION_TOUCH_INTERVAL", "fast"),
        ("SESSION_REMEMBER_ME_IDLE_TIMEOUT", "week"),
        ("SESSION_REMEMBER_ME_ABSOLUTE_TIMEOUT", "month"),
        ("SESSION_MAX_ATTRIBUTES_BYTES", "lots"),
        ("SESSION_MAX_PER_USER", "-3"),
        ("SESSION_STORE_POOL_SIZE", "many"),
        ("SESSION_PURGE_INTERVAL", "often"),
        ("DB_POOL_MAX_SIZE", "x"),
        ("DB_POOL_MIN_IDLE", "y"),
        ("DB_CHECKOUT_TIMEOUT", "later"),
        ("DB_TEST_ON_CHECKOUT", "maybe"),
        ("SESSION_STORE_URL", "ftp://example"),
        ("DATABASE_URL", "mysql://example"),
    ];
    for (var, bad) in cases {
        let (key, reason) = config_key(SessionConfig::from_vars(vars(&[(var, bad)])));
        assert_eq!(key, var, "{reason}");
        assert!(!reason.is_empty());
    }
    // Values that parse but break the policy are reported under the variable that set them.
    let (key, reason) = config_key(SessionConfig::from_vars(vars(&[(
        "SESSION_IDLE_TIMEOUT",
        "13h",
    )])));
    assert_eq!(key, "SESSION_IDLE_TIMEOUT", "{reason}");
    let (key, _) = config_key(SessionConfig::from_vars(vars(&[(
        "SESSION_MAX_PER_USER",
        "0",
    )])));
    assert_eq!(key, "SESSION_MAX_PER_USER");
    let (key, _) = config_key(SessionConfig::from_vars(vars(&[("DB_POOL_MAX_SIZE", "0")])));
    assert_eq!(key, "DB_POOL_MAX_SIZE");
    let (key, _) = config_key(SessionConfig::from_vars(vars(&[(
        "SESSION_STORE_POOL_SIZE",
        "0",
    )])));
    assert_eq!(key, "SESSION_STORE_POOL_SIZE");
}

#[test]
fn environment_values_are_applied() {
    let c = SessionConfig::from_vars(vars(&[
        ("SESSION_STORE_URL", "redis://127.0.0.1:6379/2"),
        ("DATABASE_URL", "postgres://postgres@127.0.0.1/test"),
        ("SESSION_IDLE_TIMEOUT", "15m"),
        ("SESSION_ABSOLUTE_TIMEOUT", "8h"),
        ("SESSION_MAX_PER_USER", "5"),
        ("DB_POOL_MAX_SIZE", "7"),
        ("DB_TEST_ON_CHECKOUT", "false"),
        ("UNRELATED", "ignored"),
    ]))
    .unwrap();
    assert_eq!(c.store_url, "redis://127.0.0.1:6379/2");
    assert_eq!(c.policy.idle_timeout, Duration::from_secs(900));
    assert_eq!(c.policy.absolute_timeout, Duration::from_secs(8 * 3600));
    assert_eq!(c.policy.max_sessions_per_user, Some(5));
    assert_eq!(c.db_pool.max_size, 7);
    assert!(!c.db_pool.test_on_checkout);
}

#[test]
fn toml_files_load_and_their_errors_name_the_key() {
    let c = SessionConfig::from_toml_str(
        r#"
        store_url = "memory://"
        database_url = "sqlite://app.db"
        purge_interval = "1m"
        [policy]
        idle_timeout = "20m"
        [db_pool]
        max_size = 3
        checkout_timeout = "2s"
        "#,
    )
    .unwrap();
    assert_eq!(c.policy.idle_timeout, Duration::from_secs(1200));
    assert_eq!(c.db_pool.max_size, 3);
    for (text, key) in [
        ("stor_url = \"memory://\"", "stor_url"),
        ("[policy]\nidle_timout = \"1m\"", "idle_timout"),
        ("[policy]\nidle_timeout = \"13h\"", "idle_timeout"),
        ("[db_pool]\nmax_size = 0", "max_size"),
        ("store_url = \"ftp://x\"", "store_url"),
        ("database_url = \"mysql://x\"", "database_url"),
    ] {
        let (got, reason) = config_key(SessionConfig::from_toml_str(text));
        assert_eq!(got, key, "{text}: {reason}");
    }
    let (key, _) = config_key(SessionConfig::from_toml_file("/nonexistent/session.toml"));
    assert_eq!(key, "config file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_sqlite_by_default_with_rotation_on_root_change_and_idempotent_shutdown() {
    let manager = SessionManager::build(SessionConfig::default())
        .await
        .unwrap();
    assert_eq!(
        (manager.sessions().backend(), manager.db().backend()),
        ("memory", "sqlite")
    );
    exercise(&manager).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_postgres_by_url_alone() {
    let url = redis_url();
    require_redis(&url);
    let prefix = unique_prefix("manager");
    let schema = PgSchema::create("manager");
    let config = SessionConfig::from_vars(vars(&[
        ("SESSION_STORE_URL", &url),
        ("SESSION_KEY_PREFIX", &prefix),
        ("DATABASE_URL", &schema.url()),
    ]))
    .unwrap();
    let manager = SessionManager::build(config).await.unwrap();
    assert_eq!(
        (manager.sessions().backend(), manager.db().backend()),
        ("redis", "postgres")
    );
    exercise(&manager).await;
    redis_delete_prefix(&url, &prefix);

    let store_schema = PgSchema::create("manager_store");
    let config = SessionConfig::from_vars(vars(&[
        ("SESSION_STORE_URL", &store_schema.url()),
        ("DATABASE_URL", &schema.url()),
    ]))
    .unwrap();
    let manager = SessionManager::build(config).await.unwrap();
    assert_eq!(
        (manager.sessions().backend(), manager.db().backend()),
        ("postgres", "postgres")
    );
    exercise(&manager).await;
}

async fn exercise(manager: &SessionManager) {
    manager.health().await.unwrap();
    let issued = manager
        .sessions()
        .create(NewUserSession::new("alice").email("a@x.test"))
        .await
        .unwrap();
    // An edit that keeps the root flag keeps the token.
    let mut s = manager
        .sessions()
        .get(&issued.token)
        .await
        .unwrap()
        .unwrap();
    s.email = "alice@x.test".into();
    let updated = manager.update(&issued.token, &s).await.unwrap();
    assert!(updated.rotated.is_none());
    // Granting root rotates: the old token is dead, the new one holds the updated session.
    let mut s = updated.session;
    s.is_root = true;
    let updated = manager.update(&issued.token, &s).await.unwrap();
    let new_token = updated.rotated.expect("a root change rotates the token");
    assert!(
        manager
            .sessions()
            .get(&issued.token)
            .await
            .unwrap()
            .is_none()
    );
    let now = manager.sessions().get(&new_token).await.unwrap().unwrap();
    assert!(now.is_root);
    assert_eq!(now.email, "alice@x.test");
    // A scope on whichever database is configured.
    let n = session_manager::db_transaction!(manager.db(), ScopeOptions::new(), |conn| {
        use session_manager::session_diesel::diesel_async::RunQueryDsl;
        let db = |e| SessionError::Backend {
            backend: "db",
            source: Box::new(e),
        };
        session_manager::session_diesel::diesel::sql_query(
            "CREATE TABLE IF NOT EXISTS manager_probe (x INTEGER)",
        )
        .execute(conn)
        .await
        .map_err(db)?;
        session_manager::session_diesel::diesel::sql_query(
            "INSERT INTO manager_probe (x) VALUES (1)",
        )
        .execute(conn)
        .await
        .map_err(db)
    })
    .unwrap();
    assert_eq!(n, 1);
    manager.record_pool_gauges();
    manager.shutdown().await;
    manager.shutdown().await;
    assert!(manager.is_shut_down());
    let after =
        session_manager::db_transaction!(manager.db(), ScopeOptions::new(), |_conn| Ok::<
            _,
            SessionError,
        >(()));
    assert!(
        matches!(after, Err(SessionError::Closed { .. })),
        "{after:?}"
    );
}
