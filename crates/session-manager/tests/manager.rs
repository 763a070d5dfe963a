//! The facade: configuration from the environment and TOML (every error names its key, the
//! environment wins over the file, every backend option is reachable), backend selection by URL,
//! the builder for stores made by hand, the one purge task, and shutdown, on memory + SQLite and on
//! Redis + PostgreSQL.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::Duration;

use session_core::{
    ManualClock, NewUserSession, PoolConfig, RetryPolicy, ScopeOptions, SessionError,
    SessionPolicy, UserSessionStoreExt,
};
use session_manager::{SessionConfig, SessionManager};
use session_testkit::servers::{
    MysqlDatabase, PgSchema, RedisCluster, RedisSentinel, eventually, redis_delete_prefix,
    redis_url, require_redis, unique_prefix,
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
        ("DATABASE_URL", "oracle://example"),
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
        ("[policy]\nidle_timeout = \"13h\"", "policy.idle_timeout"),
        ("[db_pool]\nmax_size = 0", "db_pool.max_size"),
        ("store_url = \"ftp://x\"", "store_url"),
        ("database_url = \"oracle://x\"", "database_url"),
    ] {
        let (got, reason) = config_key(SessionConfig::from_toml_str(text));
        assert_eq!(got, key, "{text}: {reason}");
    }
    let (key, _) = config_key(SessionConfig::from_toml_file("/nonexistent/session.toml"));
    assert_eq!(key, "config file");
}

#[test]
fn every_backend_option_is_reachable_from_the_file_and_the_environment_wins() {
    let file = SessionConfig::from_toml_str(
        r#"
        store_url = "redis://127.0.0.1:6379/3"
        database_url = "none"
        [retry]
        max_retries = 4
        min_delay = "10ms"
        [redis]
        layout = "compatible"
        response_timeout = "250ms"
        pool_max_size = 8
        [postgres_store]
        purge_batch = 50
        [postgres_store.pool]
        max_size = 4
        "#,
    )
    .unwrap();
    assert_eq!(file.redis.layout, session_redis::Layout::Compatible);
    assert_eq!(file.redis.response_timeout, Duration::from_millis(250));
    assert_eq!(file.redis.pool_max_size, 8);
    assert_eq!(file.retry.max_retries, 4);
    assert_eq!(file.postgres_store.purge_batch, 50);
    assert_eq!(file.postgres_store.pool.max_size, 4);
    let merged = file
        .with_vars(vars(&[
            ("SESSION_REDIS_LAYOUT", "standard"),
            ("SESSION_REDIS_RESPONSE_TIMEOUT", "2s"),
            ("SESSION_STORE_POOL_SIZE", "12"),
            ("SESSION_RETRY_MAX", "1"),
        ]))
        .unwrap();
    assert_eq!(merged.redis.layout, session_redis::Layout::Standard);
    assert_eq!(merged.redis.response_timeout, Duration::from_secs(2));
    assert_eq!(
        (
            merged.redis.pool_max_size,
            merged.postgres_store.pool.max_size
        ),
        (12, 12)
    );
    assert_eq!(merged.retry.max_retries, 1);
    assert_eq!(
        merged.store_url, "redis://127.0.0.1:6379/3",
        "the file's value stays"
    );
    assert_eq!(merged.redis.near_cache, None, "off unless asked for");
    let near = SessionConfig::from_toml_str("[redis.near_cache]\nmax_entries = 500\n")
        .unwrap()
        .with_vars(vars(&[("SESSION_REDIS_NEAR_CACHE_BYTES", "1048576")]))
        .unwrap();
    assert_eq!(
        near.redis.near_cache,
        Some(session_redis::NearCacheConfig::new(500, 1 << 20))
    );
    let (key, _) = config_key(SessionConfig::from_toml_str(
        "[redis]\nlayout = \"compatible\"\n[redis.near_cache]\nmax_entries = 5\n",
    ));
    assert_eq!(key, "redis.near_cache");

    let (key, reason) = config_key(SessionConfig::from_toml_str(
        "[redis]\nurl = \"redis://elsewhere:6379\"",
    ));
    assert_eq!(key, "redis.url", "{reason}");
    let (key, _) = config_key(SessionConfig::from_toml_str("[redis]\npool_max_size = 0"));
    assert_eq!(key, "redis.pool_max_size");
    let (key, _) = config_key(SessionConfig::from_vars(vars(&[(
        "SESSION_REDIS_LAYOUT",
        "sideways",
    )])));
    assert_eq!(key, "SESSION_REDIS_LAYOUT");
    let (key, _) = config_key(SessionConfig::from_vars(vars(&[(
        "SESSION_RETRY_MAX",
        "99",
    )])));
    assert_eq!(key, "SESSION_RETRY_MAX");

    // The file is validated only after the environment is applied, so a variable corrects it,
    // and a bad value the file set is reported under its key, not under an unrelated variable.
    let dir = std::env::temp_dir().join(format!("session-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("session.toml");
    std::fs::write(
        &path,
        "store_url = \"ftp://nowhere\"\n[db_pool]\nmin_idle = 20\n",
    )
    .unwrap();
    let fixed = SessionConfig::from_sources(
        Some(&path),
        vars(&[
            ("SESSION_STORE_URL", "memory://"),
            ("DB_POOL_MIN_IDLE", "2"),
        ]),
    )
    .unwrap();
    assert_eq!(
        (fixed.store_url.as_str(), fixed.db_pool.min_idle),
        ("memory://", Some(2))
    );
    let (key, _) = config_key(SessionConfig::from_sources(
        Some(&path),
        vars(&[("DB_POOL_MAX_SIZE", "30")]),
    ));
    assert_eq!(key, "store_url", "the file's own bad value");
    let (key, _) = config_key(SessionConfig::from_sources(
        Some(&path),
        vars(&[
            ("SESSION_STORE_URL", "memory://"),
            ("DB_POOL_MAX_SIZE", "3"),
        ]),
    ));
    assert_eq!(
        key, "db_pool.min_idle",
        "set by the file, not by DB_POOL_MAX_SIZE"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_sqlite_by_default_with_rotation_on_root_change_and_idempotent_shutdown() {
    let manager = SessionManager::build(SessionConfig::default())
        .await
        .unwrap();
    assert_eq!(
        (
            manager.sessions().backend(),
            manager.db().unwrap().backend()
        ),
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
        (
            manager.sessions().backend(),
            manager.db().unwrap().backend()
        ),
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
        (
            manager.sessions().backend(),
            manager.db().unwrap().backend()
        ),
        ("postgres", "postgres")
    );
    exercise(&manager).await;
}

/// Moving sessions to a Redis Cluster or behind Sentinel is a change of `SESSION_STORE_URL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_and_sentinel_by_url_alone() {
    let cluster = RedisCluster::shared();
    let sentinel = RedisSentinel::shared();
    for (url, topology) in [(cluster.url(), "cluster"), (sentinel.url(), "sentinel")] {
        let prefix = unique_prefix("manager");
        let config = SessionConfig::from_vars(vars(&[
            ("SESSION_STORE_URL", &url),
            ("SESSION_KEY_PREFIX", &prefix),
            ("DATABASE_URL", "sqlite::memory:"),
        ]))
        .unwrap();
        let manager = SessionManager::build(config).await.unwrap();
        assert_eq!(manager.sessions().backend(), "redis", "{topology}");
        exercise(&manager).await;
        manager.shutdown().await;
        match topology {
            "cluster" => cluster.delete_prefix(&prefix),
            _ => sentinel.delete_prefix(&prefix),
        }
    }
}

use session_manager::session_diesel::diesel;

#[derive(diesel::QueryableByName)]
struct Recovery {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    r: bool,
}

/// Read replicas from the environment alone: read-only scopes on the standby, the rest on the
/// primary; and replicas with a non-PostgreSQL database are a configuration error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_read_replicas_by_configuration_alone() {
    let pair = session_testkit::servers::PgReplicaPair::start();
    let config = SessionConfig::from_vars(vars(&[
        ("DATABASE_URL", &pair.primary_url()),
        ("DATABASE_REPLICA_URLS", &pair.standby_url()),
        ("DATABASE_REPLICA_MAX_LAG", "2s"),
    ]))
    .unwrap();
    assert!(format!("{config:?}").contains("database_replicas"));
    let manager = SessionManager::build(config).await.unwrap();
    let session_manager::Db::Postgres(provider) = manager.db().unwrap() else {
        panic!("not PostgreSQL");
    };
    eventually(Duration::from_secs(20), "the replica is healthy", || {
        provider.replica_states()[0].healthy
    })
    .await;
    for (options, on_replica) in [
        (ScopeOptions::new().read_only(), true),
        (ScopeOptions::new(), false),
    ] {
        let recovery =
            session_core::DbSessionProvider::transaction(provider, options, async |conn| {
                use session_manager::session_diesel::diesel_async::RunQueryDsl;
                session_manager::session_diesel::diesel::sql_query(
                    "SELECT pg_is_in_recovery() AS r",
                )
                .get_result::<Recovery>(conn)
                .await
                .map(|row| row.r)
                .map_err(|e| SessionError::Backend {
                    backend: "db",
                    source: Box::new(e),
                })
            })
            .await
            .unwrap();
        assert_eq!(recovery, on_replica);
    }
    manager.shutdown().await;
    let (key, _) = config_key(SessionConfig::from_vars(vars(&[
        ("DATABASE_URL", "sqlite::memory:"),
        ("DATABASE_REPLICA_URLS", "postgres://replica/x"),
    ])));
    assert_eq!(key, "DATABASE_REPLICA_URLS", "named as the user set it");
}

/// MySQL/MariaDB as the application database, by URL alone: scopes (the retrying form with a
/// deadline included) run on it through `db_transaction!`; then sessions move there too, by
/// `SESSION_STORE_URL` alone, with the purge batch from `SESSION_MYSQL_PURGE_BATCH`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_mysql_by_url_alone() {
    let database = MysqlDatabase::create("manager");
    for (store_url, backends) in [
        ("memory://".to_owned(), ("memory", "mysql")),
        (database.url(), ("mysql", "mysql")),
    ] {
        let config = SessionConfig::from_vars(vars(&[
            ("SESSION_STORE_URL", &store_url),
            ("DATABASE_URL", &database.url()),
            ("SESSION_MYSQL_PURGE_BATCH", "7"),
            ("SESSION_STORE_POOL_SIZE", "3"),
        ]))
        .unwrap();
        assert_eq!(
            (
                config.mysql_store.purge_batch,
                config.mysql_store.pool.max_size
            ),
            (7, 3)
        );
        let manager = SessionManager::build(config).await.unwrap();
        assert_eq!(
            (
                manager.sessions().backend(),
                manager.db().unwrap().backend()
            ),
            backends
        );
        exercise(&manager).await;
        manager.shutdown().await;
    }
}

async fn exercise(manager: &SessionManager) {
    manager.health().await.unwrap();
    let issued = manager
        .sessions()
        .create(NewUserSession::new("alice").email("a@x.test"))
        .await
        .unwrap();
    // An edit that keeps the root flag keeps the token; one that changes it rotates, in the store.
    let (_, updated) = manager
        .sessions()
        .update_with(&issued.token, |s| {
            s.email = "alice@x.test".into();
            Ok(())
        })
        .await
        .unwrap();
    assert!(updated.rotated.is_none());
    let mut s = updated.session;
    s.is_root = true;
    let updated = manager.sessions().update(&s).await.unwrap();
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
    let n = session_manager::db_transaction!(manager.db().unwrap(), ScopeOptions::new(), |conn| {
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
    // The retrying form, with a deadline: a scope that commits runs once.
    let runs = std::sync::atomic::AtomicUsize::new(0);
    let n = session_manager::db_transaction!(
        manager.db().unwrap(),
        ScopeOptions::new().timeout(std::time::Duration::from_secs(5)),
        retry = &session_core::RetryPolicy::default(),
        |conn| {
            use session_manager::session_diesel::diesel_async::RunQueryDsl;
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            session_manager::session_diesel::diesel::sql_query(
                "INSERT INTO manager_probe (x) VALUES (2)",
            )
            .execute(conn)
            .await
            .map_err(|e| session_manager::session_diesel::from_diesel("db", e))
        }
    )
    .unwrap();
    assert_eq!((n, runs.into_inner()), (1, 1));
    manager.record_pool_gauges();
    manager.shutdown().await;
    manager.shutdown().await;
    assert!(manager.is_shut_down());
    let after =
        session_manager::db_transaction!(manager.db().unwrap(), ScopeOptions::new(), |_conn| Ok::<
            _,
            SessionError,
        >(
            ()
        ));
    assert!(
        matches!(after, Err(SessionError::Closed { .. })),
        "{after:?}"
    );
    assert!(
        matches!(
            manager.sessions().get(&new_token).await,
            Err(SessionError::Closed { .. })
        ),
        "shutdown closes the session store too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_takes_stores_made_by_hand_and_purges_only_where_needed() {
    let memory = session_memory::MemoryStore::new(SessionPolicy::default()).unwrap();
    let db = session_manager::session_diesel::SqliteProvider::open(
        "sqlite::memory:",
        PoolConfig::default(),
    )
    .await
    .unwrap();
    let manager = SessionManager::builder()
        .store(memory)
        .db(db)
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    assert!(
        manager.is_purging(),
        "memory keeps expired sessions until purged"
    );
    assert_eq!(manager.db().unwrap().backend(), "sqlite");
    exercise(&manager).await;
    assert!(!manager.is_purging(), "shutdown stops the purge task");

    // Sessions only: no database, and a store whose backend expires keys itself is not purged.
    let url = redis_url();
    require_redis(&url);
    let prefix = unique_prefix("builder");
    let redis = session_redis::RedisStore::connect(
        session_redis::RedisConfig::new(url.clone()).key_prefix(prefix.clone()),
        SessionPolicy::default(),
    )
    .await
    .unwrap();
    let manager = SessionManager::builder().store(redis).build().unwrap();
    assert!(!manager.is_purging());
    assert!(matches!(
        manager.db(),
        Err(SessionError::Config { key, .. }) if key == "database_url"
    ));
    manager.health().await.unwrap();
    manager.shutdown().await;
    redis_delete_prefix(&url, &prefix);

    let (key, _) = match SessionManager::builder().build() {
        Err(SessionError::Config { key, reason }) => (key, reason),
        other => panic!("expected a Config error, got {other:?}"),
    };
    assert_eq!(key, "store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_managers_purge_task_purges_a_postgres_store_and_shutdown_closes_its_pool() {
    let schema = PgSchema::create("mgr_purge");
    let clock = ManualClock::starting_now();
    let store = session_manager::session_diesel::PgSessionStore::connect(
        &schema.url(),
        PoolConfig::default(),
        SessionPolicy::default().with_clock(clock.clone()),
    )
    .await
    .unwrap();
    let manager = SessionManager::builder()
        .store(store)
        .purge_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    for i in 0..10 {
        manager
            .sessions()
            .create(NewUserSession::new(format!("u{i}")))
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(31 * 60));
    eventually(
        Duration::from_secs(10),
        "the purge task did not purge",
        || {
            session_testkit::servers::psql(&schema.url(), "SELECT count(*) FROM user_sessions")
                == "0"
        },
    )
    .await;
    manager.shutdown().await;
    eventually(
        Duration::from_secs(5),
        "shutdown left the store's connections open",
        || schema.backends() == 0,
    )
    .await;
}

/// A configuration's `Debug` (what a service logs at start-up) shows no credential of its URLs.
#[test]
fn debug_of_a_configuration_hides_url_credentials() {
    let config = SessionConfig::from_vars([
        (
            "SESSION_STORE_URL".to_owned(),
            "redis://:p%40ss:w0rd@127.0.0.1:6379/0".to_owned(),
        ),
        (
            "DATABASE_URL".to_owned(),
            "postgres://app:s3cr@t/x@db.internal/app?sslmode=require".to_owned(),
        ),
    ])
    .unwrap();
    let shown = format!("{config:?}");
    for secret in ["w0rd", "s3cr", "t/x", "db.internal"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(
        shown.contains("redis://***") && shown.contains("postgres://***"),
        "{shown}"
    );
    // A URL that can hold no credential is shown as it is.
    assert_eq!(
        session_manager::redacted_url("sqlite://data/app.db"),
        "sqlite://data/app.db"
    );
    assert_eq!(
        session_manager::redacted_url("postgres://db/app?password=x"),
        "postgres://***"
    );
}

/// A configuration file's error names the key and the line, and never quotes the line: it may
/// hold a password.
#[test]
fn a_toml_error_does_not_quote_the_line() {
    let err = SessionConfig::from_toml_str(
        "store_url = \"redis://:hunter2hunter2@cache:6379/0\"\npurge_interval = 5\n",
    )
    .unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("purge_interval") && shown.contains("line 2"),
        "{shown}"
    );
    let err =
        SessionConfig::from_toml_str("store_url = \"redis://:hunter2hunter2@cache:6379/0\" x\n")
            .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}
