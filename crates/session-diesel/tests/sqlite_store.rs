//! The SQLite user-session store: every conformance case on a database file of its own, and
//! what is particular to SQLite (a file shared by two stores, as by the demo and `sessionctl`;
//! the in-memory URL).
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
