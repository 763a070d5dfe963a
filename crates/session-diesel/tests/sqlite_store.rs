//! The SQLite user-session store: every conformance case on a database file of its own, and
//! what is particular to SQLite (a file shared by two stores, as by the demo and `sessionctl`;
//! the in-memory URL; rows of the previous release).
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::sync::Arc;

use session_core::{NewUserSession, PoolConfig, SessionPolicy, UserSessionStore};
use session_diesel::SqliteSessionStore;
use session_testkit::Opened;
use session_testkit::servers::SqliteFile;

session_testkit::conformance_tests!(|policy| async move {
    let file = SqliteFile::new("conf");
    let store = SqliteSessionStore::open(&file.url(), PoolConfig::default(), policy)
        .await
        .expect("SQLite store");
    Opened::with_cleanup(Arc::new(store), move || drop(file))
});

/// Two stores on one file (two processes, say) see each other's sessions, and a capped create
/// holds its cap across them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_share_sessions_and_the_cap() {
    let file = SqliteFile::new("shared");
    let mut policy = SessionPolicy::default();
    policy.max_sessions_per_user = Some(3);
    let a = SqliteSessionStore::open(&file.url(), PoolConfig::default(), policy.clone())
        .await
        .unwrap();
    let b = SqliteSessionStore::open(&file.url(), PoolConfig::default(), policy)
        .await
        .unwrap();
    let issued = a.create(NewUserSession::new("ada")).await.unwrap();
    assert_eq!(
        b.get(&issued.token).await.unwrap().as_ref(),
        Some(&issued.session)
    );
    let a = Arc::new(a);
    let b = Arc::new(b);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store.create(NewUserSession::new("ada")).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(a.list_by_user("ada").await.unwrap().len(), 3);
    assert!(
        b.delete(&issued.token).await.unwrap() || a.get(&issued.token).await.unwrap().is_none()
    );
}

/// `sqlite::memory:` gives a private database that lives as long as the store.
#[tokio::test]
async fn an_in_memory_store_keeps_its_sessions_while_it_lives() {
    let store = SqliteSessionStore::open(
        "sqlite::memory:",
        PoolConfig::default(),
        SessionPolicy::default(),
    )
    .await
    .unwrap();
    let issued = store.create(NewUserSession::new("ada")).await.unwrap();
    assert!(store.get(&issued.token).await.unwrap().is_some());
    let other = SqliteSessionStore::open(
        "sqlite::memory:",
        PoolConfig::default(),
        SessionPolicy::default(),
    )
    .await
    .unwrap();
    assert!(other.get(&issued.token).await.unwrap().is_none(), "private");
}

/// A row the previous release wrote (its insert names only the columns it knew) reads back as
/// authenticated at sign-in with no device metadata, an update that keeps that instant keeps the
/// token, and an `address` that is no IP address is a `Decode` error naming the session.
#[tokio::test]
async fn a_row_written_without_client_metadata_reads_as_authenticated_at_sign_in() {
    use diesel_async::SimpleAsyncConnection;
    use session_core::{Clock, DbSessionProvider, ManualClock, SessionError, SessionToken};
    let file = SqliteFile::new("old_row");
    let clock = ManualClock::starting_now();
    let store = SqliteSessionStore::open(
        &file.url(),
        PoolConfig::default(),
        SessionPolicy::default().with_clock(clock.clone()),
    )
    .await
    .unwrap();
    let raw = async |sql: String| {
        let mut conn = store.provider().connection().await.unwrap();
        conn.batch_execute(&sql).await.unwrap();
    };
    let token = SessionToken::generate().unwrap();
    let created = session_core::clock::millis_since_epoch(clock.now()) - 60_000;
    raw(format!(
        "INSERT INTO user_sessions (handle, user_id, company_name, email, is_root, remember_me,
             attributes, created_at_ms, last_seen_at_ms, idle_expires_at_ms,
             absolute_expires_at_ms, version)
         VALUES ('{}', 'alice', 'Acme', 'alice@example.com', false, false, '{{}}', {created},
             {created}, {created} + 1800000, {created} + 43200000, 1)",
        token.handle()
    ))
    .await;
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

    raw(format!(
        "UPDATE user_sessions SET address = 'not-an-ip' WHERE handle = '{}'",
        token.handle()
    ))
    .await;
    match store.get(&token).await {
        Err(SessionError::Decode {
            backend: "sqlite",
            handle: Some(h),
            reason,
        }) => {
            assert_eq!(&h, token.handle());
            assert!(reason.contains("address"), "{reason}");
        }
        other => panic!("expected Decode naming the address, got {other:?}"),
    }
}
