//! The whole conformance suite on the MySQL/MariaDB store, each case in a database of its own
//! that is dropped when the case ends.

use std::sync::Arc;

use session_core::PoolConfig;
use session_diesel::MysqlSessionStore;
use session_testkit::Opened;
use session_testkit::servers::MysqlDatabase;

session_testkit::conformance_tests!(|policy| async move {
    let database = MysqlDatabase::create("conf");
    let store = MysqlSessionStore::connect(&database.url(), PoolConfig::default(), policy)
        .await
        .expect("MySQL store");
    Opened::with_cleanup(Arc::new(store), move || drop(database))
});

/// MySQL-store behaviour beyond the conformance suite: concurrent purging, concurrent migrations,
/// corrupt rows, rows of the previous release, the throttled and the raced touch. Each test works
/// in a database of its own.
mod specific {
    #![allow(clippy::unwrap_used)] // a panic is the failure report

    use std::sync::Arc;
    use std::time::Duration;

    use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
    use session_core::{
        Clock, ManualClock, NewUserSession, PoolConfig, SessionError, SessionPolicy,
        UserSessionStore,
    };
    use session_diesel::MysqlSessionStore;
    use session_testkit::servers::{MysqlDatabase, eventually, mysql};

    fn policy(clock: &ManualClock) -> SessionPolicy {
        SessionPolicy::default().with_clock(clock.clone())
    }

    async fn store(database: &MysqlDatabase, clock: &ManualClock) -> Arc<MysqlSessionStore> {
        Arc::new(
            MysqlSessionStore::connect(&database.url(), PoolConfig::default(), policy(clock))
                .await
                .unwrap(),
        )
    }

    /// The columns the release before client metadata wrote (its inserts name only these).
    const OLD_COLUMNS: &str = "handle, user_id, company_name, email, is_root, remember_me, attributes, \
         created_at_ms, last_seen_at_ms, idle_expires_at_ms, absolute_expires_at_ms, version";

    /// One SQL command in `database`, through the `mysql` client.
    fn sql(database: &MysqlDatabase, statements: &str) -> String {
        mysql(&format!("USE {}; {statements}", database.name()))
    }

    /// Two instances purging at once: every expired row goes exactly once (each batch skips the
    /// rows the other has locked), both do work, live sessions stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_stores_purging_at_once_remove_each_expired_row_once_and_keep_live_ones() {
        const EXPIRED: u64 = 20_000;
        const LIVE: usize = 100;
        let database = MysqlDatabase::create("purge");
        let clock = ManualClock::starting_now();
        let a = MysqlSessionStore::connect(&database.url(), PoolConfig::default(), policy(&clock))
            .await
            .unwrap()
            .with_purge_batch(500);
        let b = MysqlSessionStore::connect(&database.url(), PoolConfig::default(), policy(&clock))
            .await
            .unwrap()
            .with_purge_batch(500);
        // Expired rows in bulk, an hour in the past by the store's clock (digits cross-joined:
        // SQL that MySQL and MariaDB both run). The columns are named: MySQL wants a value for
        // every column of an insert that names none.
        let past = session_core::clock::millis_since_epoch(clock.now()) - 3_600_000;
        let digits = "(SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
             UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)";
        sql(
            &database,
            &format!(
                "INSERT INTO user_sessions ({OLD_COLUMNS})
                 SELECT CONCAT('expired-', g.n), CONCAT('u', g.n % 500), '', '',
                     false, false, '{{}}', {past}, {past}, {past}, {past} + 3600000, 1
                 FROM (SELECT a.d + 10 * b.d + 100 * c.d + 1000 * d.d + 10000 * e.d AS n
                       FROM {digits} a, {digits} b, {digits} c, {digits} d, {digits} e) g
                 WHERE g.n BETWEEN 1 AND {EXPIRED}"
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
            EXPIRED,
            "every expired row removed exactly once ({ra} + {rb})"
        );
        assert!(ra > 0 && rb > 0, "both purgers did work ({ra}, {rb})");
        assert_eq!(
            sql(&database, "SELECT COUNT(*) FROM user_sessions"),
            LIVE.to_string()
        );
        for token in &live {
            assert!(a.get(token).await.unwrap().is_some(), "live sessions stay");
        }
        assert_eq!(
            a.purge_expired().await.unwrap() + b.purge_expired().await.unwrap(),
            0
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_migrating_at_once_all_succeed() {
        let database = MysqlDatabase::create("migrate");
        let url = database.url();
        let runs: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { MysqlSessionStore::migrate(&url).await })
            })
            .collect();
        for run in runs {
            run.await.unwrap().unwrap();
        }
        assert_eq!(
            sql(&database, "SELECT COUNT(*) FROM __diesel_schema_migrations"),
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations-mysql"))
                .unwrap()
                .count()
                .to_string(),
            "every migration applied exactly once"
        );
        MysqlSessionStore::migrate(&url).await.unwrap(); // a no-op now
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_row_is_a_decode_error_naming_the_session() {
        let database = MysqlDatabase::create("corrupt");
        let store = store(&database, &ManualClock::starting_now()).await;
        let victim = store.create(NewUserSession::new("alice")).await.unwrap();
        let healthy = store.create(NewUserSession::new("bob")).await.unwrap();
        let negative = store.create(NewUserSession::new("carol")).await.unwrap();
        sql(
            &database,
            &format!(
                "UPDATE user_sessions SET attributes = '{{not json' WHERE handle = '{}';
                 UPDATE user_sessions SET version = -3 WHERE handle = '{}'",
                victim.session.handle, negative.session.handle
            ),
        );
        for issued in [&victim, &negative] {
            match store.get(&issued.token).await {
                Err(SessionError::Decode {
                    backend: "mysql",
                    handle: Some(h),
                    ..
                }) => assert_eq!(&h, issued.token.handle()),
                other => panic!("expected Decode naming the handle, got {other:?}"),
            }
        }
        assert!(
            store.get(&healthy.token).await.unwrap().is_some(),
            "the pool is unaffected"
        );
    }

    /// Handles and user ids compare byte for byte: a user id differing only in case or in
    /// trailing spaces is another user (a text collation would merge them).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn user_ids_differing_in_case_or_trailing_spaces_are_other_users() {
        let database = MysqlDatabase::create("collation");
        let store = store(&database, &ManualClock::starting_now()).await;
        for user in ["bob", "Bob", "bob ", "böb"] {
            store.create(NewUserSession::new(user)).await.unwrap();
        }
        for user in ["bob", "Bob", "bob ", "böb"] {
            let listed = store.list_by_user(user).await.unwrap();
            assert_eq!(listed.len(), 1, "{user:?}");
            assert_eq!(listed[0].user_id, user);
        }
        assert_eq!(store.delete_by_user("BOB", None).await.unwrap(), 0);
        assert_eq!(store.delete_by_user("bob", None).await.unwrap(), 1);
        assert_eq!(store.list_by_user("Bob").await.unwrap().len(), 1);
    }

    /// Inside the interval a touch writes nothing; when due, 16 concurrent touches write the row
    /// once and all answer the touched session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_due_touch_writes_once_and_a_throttled_one_not_at_all() {
        let database = MysqlDatabase::create("touch");
        let clock = ManualClock::starting_now();
        let store = store(&database, &clock).await;
        let issued = store.create(NewUserSession::new("alice")).await.unwrap();
        // Every write to the table is counted by a trigger.
        sql(
            &database,
            "CREATE TABLE writes (n BIGINT);
             CREATE TRIGGER count_writes AFTER UPDATE ON user_sessions
               FOR EACH ROW INSERT INTO writes VALUES (1);",
        );
        let writes = || {
            sql(&database, "SELECT COUNT(*) FROM writes")
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
    /// re-checked `WHERE` refuses) answers the row as that writer left it, not the one it read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_touch_that_loses_the_race_to_write_answers_the_row_as_it_now_stands() {
        let database = MysqlDatabase::create("touch_race");
        let clock = ManualClock::starting_now();
        let store = store(&database, &clock).await;
        let issued = store.create(NewUserSession::new("alice")).await.unwrap();
        clock.advance(Duration::from_secs(120));
        let now_ms = session_core::clock::millis_since_epoch(clock.now());
        let theirs = now_ms + 1_000_000;
        // Another writer touches the row first and holds its lock.
        let mut writer = AsyncMysqlConnection::establish(&database.url())
            .await
            .unwrap();
        writer
            .batch_execute(&format!(
                "BEGIN; UPDATE user_sessions SET last_seen_at_ms = {now_ms}, idle_expires_at_ms = {theirs}
                 WHERE handle = '{}'",
                issued.session.handle
            ))
            .await
            .unwrap();
        let touch = {
            let (store, token) = (store.clone(), issued.token.clone());
            tokio::spawn(async move { store.touch(&token).await })
        };
        eventually(
            Duration::from_secs(5),
            "the touch waits on the row lock",
            || {
                mysql(&format!(
                    "SELECT COUNT(*) FROM information_schema.INNODB_TRX t
                     JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id
                     WHERE t.trx_state = 'LOCK WAIT' AND p.DB = '{}'",
                    database.name()
                )) != "0"
            },
        )
        .await;
        writer.batch_execute("COMMIT").await.unwrap();
        let touched = touch.await.unwrap().unwrap().unwrap();
        assert_eq!(
            session_core::clock::millis_since_epoch(touched.idle_expires_at),
            theirs,
            "the answer is the row the other writer left"
        );
    }

    /// Store calls dropped at every point of their request (time-outs from 0 to 3 ms, 16 at a
    /// time) never leave a connection out of step: every call that completes answers the session
    /// it asked for, never a reply meant for another, and afterwards every session reads back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_dropped_half_way_never_hand_another_call_their_reply() {
        let database = MysqlDatabase::create("dropped");
        let mut pool = PoolConfig::default();
        pool.max_size = 4;
        let store = Arc::new(
            MysqlSessionStore::connect(&database.url(), pool, SessionPolicy::default())
                .await
                .unwrap(),
        );
        let mut issued = Vec::new();
        for i in 0..16 {
            issued.push(
                store
                    .create(NewUserSession::new(format!("u{i}")))
                    .await
                    .unwrap(),
            );
        }
        let issued = Arc::new(issued);
        let mut calls = tokio::task::JoinSet::new();
        for task in 0..16_usize {
            let (store, issued) = (store.clone(), issued.clone());
            calls.spawn(async move {
                let mut completed = 0;
                for round in 0..150_usize {
                    let which = &issued[(task + round) % issued.len()];
                    let cut = Duration::from_micros(((task * 7 + round * 13) % 3000) as u64);
                    if let Ok(answer) = tokio::time::timeout(cut, store.get(&which.token)).await {
                        let session = answer.unwrap().unwrap();
                        assert_eq!(session.handle, which.session.handle, "another call's reply");
                        completed += 1;
                    }
                }
                completed
            });
        }
        let mut completed = 0;
        while let Some(done) = calls.join_next().await {
            completed += done.unwrap();
        }
        assert!(completed > 0, "some calls completed");
        for which in issued.iter() {
            let session = store.get(&which.token).await.unwrap().unwrap();
            assert_eq!(session.handle, which.session.handle);
        }
    }

    /// A row the previous release wrote (its insert names only the columns it knew) reads back as
    /// authenticated at sign-in with no device metadata, an update that keeps that instant keeps
    /// the token, and an `address` that is no IP address is a `Decode` error naming the session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_written_without_client_metadata_reads_as_authenticated_at_sign_in() {
        let database = MysqlDatabase::create("old_row");
        let clock = ManualClock::starting_now();
        let store = store(&database, &clock).await;
        let token = session_core::SessionToken::generate().unwrap();
        let created = session_core::clock::millis_since_epoch(clock.now()) - 60_000;
        sql(
            &database,
            &format!(
                "INSERT INTO user_sessions ({OLD_COLUMNS}) VALUES ('{}', 'alice', 'Acme',
                     'alice@example.com', false, false, '{{}}', {created}, {created},
                     {created} + 1800000, {created} + 43200000, 1)",
                token.handle()
            ),
        );
        let read = store.get(&token).await.unwrap().unwrap();
        let signed_in = session_core::clock::from_millis_since_epoch(created);
        assert_eq!(
            (read.created_at, read.authenticated_at),
            (signed_in, signed_in)
        );
        assert_eq!((read.device.as_str(), read.address), ("", None));
        assert_eq!(
            store.list_by_user("alice").await.unwrap(),
            vec![read.clone()]
        );

        let mut edited = read.clone();
        edited.device = "Firefox on Linux".into();
        edited.address = Some("192.0.2.1".parse().unwrap());
        let updated = store.update(&edited).await.unwrap();
        assert!(
            updated.rotated.is_none(),
            "the sign-in instant is unchanged"
        );
        assert_eq!(store.get(&token).await.unwrap().unwrap(), updated.session);

        sql(
            &database,
            &format!(
                "UPDATE user_sessions SET address = 'not-an-ip' WHERE handle = '{}'",
                token.handle()
            ),
        );
        match store.get(&token).await {
            Err(SessionError::Decode {
                backend: "mysql",
                handle: Some(h),
                reason,
            }) => {
                assert_eq!(&h, token.handle());
                assert!(reason.contains("address"), "{reason}");
            }
            other => panic!("expected Decode naming the address, got {other:?}"),
        }
    }
}
