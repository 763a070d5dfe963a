//! PostgreSQL-store behaviour beyond the conformance suite: concurrent purging, the purge task,
//! concurrent migrations, corrupt rows, rows of the previous release, lost connections. Each test
//! works in a schema of its own.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use session_core::{
    Clock, DbSessionProvider, ManualClock, NewUserSession, PoolConfig, SessionError, SessionHandle,
    SessionPolicy, SessionToken, UserSessionStore,
};
use session_diesel::PgSessionStore;
use session_testkit::servers::{PgSchema, eventually, psql};

fn policy(clock: &ManualClock) -> SessionPolicy {
    SessionPolicy::default().with_clock(clock.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_purging_at_once_remove_each_expired_row_once_and_keep_live_ones() {
    const EXPIRED: i64 = 20_000;
    const LIVE: usize = 100;
    let schema = PgSchema::create("purge");
    let clock = ManualClock::starting_now();
    let a = PgSessionStore::connect(&schema.url(), PoolConfig::default(), policy(&clock))
        .await
        .unwrap()
        .with_purge_batch(500);
    let b = PgSessionStore::connect(&schema.url(), PoolConfig::default(), policy(&clock))
        .await
        .unwrap()
        .with_purge_batch(500);
    // Expired rows in bulk, an hour in the past by the store's clock.
    let past = session_core::clock::millis_since_epoch(clock.now()) - 3_600_000;
    psql(
        &schema.url(),
        &format!(
            "INSERT INTO user_sessions SELECT 'expired-' || g, 'u' || (g % 500), '', '', false, false, '{{}}',
                t, t, t, t + INTERVAL '1 hour', 1
             FROM generate_series(1, {EXPIRED}) g, (SELECT TIMESTAMPTZ 'epoch' + {past} * INTERVAL '1 millisecond' AS t) x"
        ),
    );
    let mut live = Vec::new();
    for i in 0..LIVE {
        live.push(
            a.create(NewUserSession::new(format!("u{}", i % 500)))
                .await
                .unwrap()
                .token,
        );
    }
    let (ra, rb) = tokio::join!(a.purge_expired(), b.purge_expired());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(
        ra + rb,
        EXPIRED as u64,
        "every expired row removed exactly once ({ra} + {rb})"
    );
    assert!(ra > 0 && rb > 0, "both purgers did work ({ra}, {rb})");
    assert_eq!(
        psql(&schema.url(), "SELECT count(*) FROM user_sessions"),
        LIVE.to_string()
    );
    for token in &live {
        assert!(
            a.get(token).await.unwrap().is_some(),
            "live sessions are left alone"
        );
    }
    assert_eq!(
        a.purge_expired().await.unwrap() + b.purge_expired().await.unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purge_task_purges_and_close_closes_the_pool() {
    let schema = PgSchema::create("bgpurge");
    let clock = ManualClock::starting_now();
    let store = Arc::new(
        PgSessionStore::connect(&schema.url(), PoolConfig::default(), policy(&clock))
            .await
            .unwrap(),
    );
    for i in 0..10 {
        store
            .create(NewUserSession::new(format!("u{i}")))
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(31 * 60));
    let shared: Arc<dyn UserSessionStore> = store.clone();
    let task = session_core::PurgeTask::spawn(&shared, Duration::from_millis(50));
    eventually(
        Duration::from_secs(10),
        "the purge task did not purge",
        || psql(&schema.url(), "SELECT count(*) FROM user_sessions") == "0",
    )
    .await;
    task.stop().await;
    store.close().await;
    store.close().await; // idempotent
    assert!(matches!(
        store
            .get(&session_core::SessionToken::generate().unwrap())
            .await,
        Err(SessionError::Closed { .. })
    ));
    eventually(
        Duration::from_secs(5),
        "close() left connections open",
        || schema.backends() == 0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_migrating_at_once_all_succeed() {
    let schema = PgSchema::create("migrate");
    let url = schema.url();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgSessionStore::migrate(&url).await })
        })
        .collect();
    for run in runs {
        run.await.unwrap().unwrap();
    }
    assert_eq!(
        psql(&url, "SELECT count(*) FROM __diesel_schema_migrations"),
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
            .unwrap()
            .count()
            .to_string(),
        "every migration applied exactly once"
    );
    PgSessionStore::migrate(&url).await.unwrap(); // a no-op now
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_row_is_a_decode_error_naming_the_session() {
    let schema = PgSchema::create("corrupt");
    let store = PgSessionStore::connect(
        &schema.url(),
        PoolConfig::default(),
        SessionPolicy::default(),
    )
    .await
    .unwrap();
    let victim = store.create(NewUserSession::new("alice")).await.unwrap();
    let healthy = store.create(NewUserSession::new("bob")).await.unwrap();
    psql(
        &schema.url(),
        &format!(
            "UPDATE user_sessions SET attributes = '{{not json' WHERE handle = '{}'",
            victim.session.handle
        ),
    );
    match store.get(&victim.token).await {
        Err(SessionError::Decode {
            handle: Some(h), ..
        }) => assert_eq!(&h, victim.token.handle()),
        other => panic!("expected Decode naming the handle, got {other:?}"),
    }
    assert!(
        store.get(&healthy.token).await.unwrap().is_some(),
        "the pool is unaffected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_the_server_closing_every_pooled_connection() {
    let schema = PgSchema::create("terminated");
    let clock = ManualClock::starting_now();
    // Served through the retry layer, as the manager serves it: reads are retried there.
    let store = session_core::Retrying::new(
        PgSessionStore::connect(&schema.url(), PoolConfig::default(), policy(&clock))
            .await
            .unwrap(),
        session_core::RetryPolicy::default(),
    );
    let issued = store.create(NewUserSession::new("u")).await.unwrap();
    // Fill the pool with four connections, then have the server end every one of them.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(store.inner().provider().connection().await.unwrap());
    }
    drop(held);
    assert!(schema.terminate_backends() >= 4);
    // The store's pool tests connections locally (no ping round trip). A connection whose close
    // the driver has already read is replaced at checkout; one it has not is found lost by the
    // read, which makes the next checkouts ping, and the retry layer runs it once more: every
    // read below succeeds.
    for _ in 0..8 {
        let found = store.get(&issued.token).await.unwrap();
        assert_eq!(found.unwrap().handle, issued.session.handle);
    }
    store.close().await;
}

/// `touch` is one statement that writes only when due: inside the interval the row is not
/// written; when due, 16 concurrent touches write it once and all answer the touched session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_touch_writes_once_and_a_throttled_one_not_at_all() {
    let schema = PgSchema::create("touch");
    let clock = ManualClock::starting_now();
    let store = Arc::new(
        PgSessionStore::connect(&schema.url(), PoolConfig::default(), policy(&clock))
            .await
            .unwrap(),
    );
    let issued = store.create(NewUserSession::new("alice")).await.unwrap();
    // Every write to the table is counted by a trigger.
    psql(
        &schema.url(),
        "CREATE TABLE writes (n BIGINT);
         CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO writes VALUES (1); RETURN NEW; END $$;
         CREATE TRIGGER count_writes AFTER UPDATE ON user_sessions
           FOR EACH ROW EXECUTE FUNCTION count_write();",
    );
    let writes = || {
        psql(&schema.url(), "SELECT COUNT(*) FROM writes")
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    clock.advance(Duration::from_secs(10));
    let throttled = store.touch(&issued.token).await.unwrap().unwrap();
    assert_eq!(throttled.last_seen_at, issued.session.last_seen_at);
    assert_eq!(writes(), 0, "a touch inside the interval writes nothing");

    clock.advance(Duration::from_secs(60));
    let mut touches = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (store, token) = (store.clone(), issued.token.clone());
        touches.spawn(async move { store.touch(&token).await.unwrap().unwrap() });
    }
    let now = clock.now();
    let expected_idle = now + store.policy().idle_timeout;
    while let Some(touched) = touches.join_next().await {
        let touched = touched.unwrap();
        assert_eq!(touched.last_seen_at, now);
        assert_eq!(touched.idle_expires_at, expected_idle);
    }
    assert_eq!(writes(), 1, "concurrent due touches write once");
    let stored = store.get(&issued.token).await.unwrap().unwrap();
    assert_eq!(stored.idle_expires_at, expected_idle);
}

/// A due touch that loses the race to another writer (it waits on the row lock, then its
/// re-checked `WHERE` refuses) answers the row as that writer left it, not the one it read first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_touch_that_loses_the_race_to_write_answers_the_row_as_it_now_stands() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
    let schema = PgSchema::create("touch_race");
    let clock = ManualClock::starting_now();
    let store = Arc::new(
        PgSessionStore::connect(&schema.url(), PoolConfig::default(), policy(&clock))
            .await
            .unwrap(),
    );
    let issued = store.create(NewUserSession::new("alice")).await.unwrap();
    clock.advance(Duration::from_secs(120));
    let now_ms = session_core::clock::millis_since_epoch(clock.now());
    // Another writer touches the row first and holds its lock.
    let mut writer = AsyncPgConnection::establish(&schema.url()).await.unwrap();
    writer
        .batch_execute(&format!(
            "BEGIN; UPDATE user_sessions
             SET last_seen_at = TIMESTAMPTZ 'epoch' + {now_ms} * INTERVAL '1 millisecond',
                 idle_expires_at = TIMESTAMPTZ 'epoch' + {} * INTERVAL '1 millisecond'
             WHERE handle = '{}'",
            now_ms + 1_000_000,
            issued.session.handle
        ))
        .await
        .unwrap();
    let touch = {
        let (store, token) = (store.clone(), issued.token.clone());
        tokio::spawn(async move { store.touch(&token).await })
    };
    // Bounded wait until the touch is blocked on the writer's row lock.
    eventually(
        Duration::from_secs(5),
        "the touch waits on the row lock",
        || {
            psql(
                &schema.url(),
                "SELECT COUNT(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'",
            )
            .trim()
                == "1"
        },
    )
    .await;
    writer.batch_execute("COMMIT").await.unwrap();
    let touched = touch.await.unwrap().unwrap().unwrap();
    assert_eq!(
        session_core::clock::millis_since_epoch(touched.idle_expires_at),
        now_ms + 1_000_000,
        "the answer is the row the other writer left"
    );
}

/// Rows the previous release wrote, through its plain insert (naming only the columns it knew)
/// and through the old overloads of `user_sessions_create_capped` and `user_sessions_import`
/// (kept for it during a rolling deploy), read back as authenticated at sign-in with no device
/// metadata; an update that keeps that instant keeps the token. An `address` that is no IP
/// address is a `Decode` error naming the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_without_client_metadata_read_as_authenticated_at_sign_in() {
    let schema = PgSchema::create("old_rows");
    let clock = ManualClock::starting_now();
    let store = PgSessionStore::connect(&schema.url(), PoolConfig::default(), policy(&clock))
        .await
        .unwrap();
    let created = session_core::clock::millis_since_epoch(clock.now()) - 60_000;
    let t = format!("(TIMESTAMPTZ 'epoch' + {created} * INTERVAL '1 millisecond')");
    let old_fields = |handle: &SessionHandle| {
        format!(
            "'{handle}', 'alice', 'Acme', 'alice@example.com', false, false, '{{}}', {t}, {t},
             {t} + INTERVAL '30 minutes', {t} + INTERVAL '12 hours', 1"
        )
    };
    let tokens: Vec<SessionToken> = (0..3).map(|_| SessionToken::generate().unwrap()).collect();
    psql(
        &schema.url(),
        &format!(
            "INSERT INTO user_sessions (handle, user_id, company_name, email, is_root, remember_me,
                 attributes, created_at, last_seen_at, idle_expires_at, absolute_expires_at, version)
             VALUES ({});
             SELECT user_sessions_create_capped({}, 10);
             SELECT user_sessions_import({}, {t});",
            old_fields(tokens[0].handle()),
            old_fields(tokens[1].handle()),
            old_fields(tokens[2].handle()),
        ),
    );
    let signed_in = session_core::clock::from_millis_since_epoch(created);
    for token in &tokens {
        let read = store.get(token).await.unwrap().unwrap();
        assert_eq!(
            (read.created_at, read.authenticated_at),
            (signed_in, signed_in)
        );
        assert_eq!((read.device.as_str(), read.address), ("", None));
    }
    assert_eq!(store.list_by_user("alice").await.unwrap().len(), 3);

    let mut edited = store.get(&tokens[0]).await.unwrap().unwrap();
    edited.device = "Firefox on Linux".into();
    edited.address = Some("2001:db8::1".parse().unwrap());
    let updated = store.update(&edited).await.unwrap();
    assert!(
        updated.rotated.is_none(),
        "the sign-in instant is unchanged"
    );
    assert_eq!(
        store.get(&tokens[0]).await.unwrap().unwrap(),
        updated.session
    );

    psql(
        &schema.url(),
        &format!(
            "UPDATE user_sessions SET address = 'not-an-ip' WHERE handle = '{}'",
            tokens[0].handle()
        ),
    );
    match store.get(&tokens[0]).await {
        Err(SessionError::Decode {
            backend: "postgres",
            handle: Some(h),
            reason,
        }) => {
            assert_eq!(&h, tokens[0].handle());
            assert!(reason.contains("address"), "{reason}");
        }
        other => panic!("expected Decode naming the address, got {other:?}"),
    }
    assert!(
        store.get(&tokens[1]).await.unwrap().is_some(),
        "the other rows are unaffected"
    );
}
