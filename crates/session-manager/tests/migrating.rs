//! The migrating store (ADR 0026) on real backends, both ways between Redis and PostgreSQL: every
//! conformance case, sessions of the old store served and moved forward, endings applied to
//! both, no revocation undone and no sign-out under concurrent copies, and the manager building
//! it from `migrate_from_url`.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::HashSet;
use std::sync::Arc;

use session_core::{MigratingStore, NewUserSession, PoolConfig, SessionPolicy, UserSessionStore};
use session_manager::session_diesel::PgSessionStore;
use session_manager::session_redis::{RedisConfig, RedisStore};
use session_manager::{SessionConfig, SessionManager};
use session_testkit::Opened;
use session_testkit::servers::{
    PgSchema, redis_delete_prefix, redis_url, require_redis, unique_prefix,
};

/// A Redis store under a prefix of its own, and the cleanup that deletes the prefix.
async fn redis(policy: SessionPolicy) -> (RedisStore, impl FnOnce() + Send + Sync + 'static) {
    let url = redis_url();
    require_redis(&url);
    let prefix = unique_prefix("mig");
    let store = RedisStore::connect(
        RedisConfig::new(url.clone()).key_prefix(prefix.clone()),
        policy,
    )
    .await
    .unwrap();
    (store, move || redis_delete_prefix(&url, &prefix))
}

async fn postgres(policy: SessionPolicy) -> (PgSessionStore, PgSchema) {
    let schema = PgSchema::create("mig");
    let store = PgSessionStore::connect(&schema.url(), PoolConfig::default(), policy)
        .await
        .unwrap();
    (store, schema)
}

mod redis_to_postgres {
    use super::*;

    session_testkit::conformance_tests!(|policy: SessionPolicy| async move {
        let (old, clean_redis) = redis(policy.clone()).await;
        let (new, schema) = postgres(policy).await;
        Opened::with_cleanup(
            Arc::new(MigratingStore::new(Arc::new(old), Arc::new(new))),
            move || {
                clean_redis();
                drop(schema);
            },
        )
    });
}

mod postgres_to_redis {
    use super::*;

    session_testkit::conformance_tests!(|policy: SessionPolicy| async move {
        let (old, schema) = postgres(policy.clone()).await;
        let (new, clean_redis) = redis(policy).await;
        Opened::with_cleanup(
            Arc::new(MigratingStore::new(Arc::new(old), Arc::new(new))),
            move || {
                clean_redis();
                drop(schema);
            },
        )
    });
}

/// Both stores and the migrating store over them (Redis, the old, to PostgreSQL, the new).
struct Pair {
    old: Arc<RedisStore>,
    new: Arc<PgSessionStore>,
    store: MigratingStore<RedisStore, PgSessionStore>,
    clean: Option<Box<dyn FnOnce() + Send + Sync>>,
    _schema: PgSchema,
}

impl Drop for Pair {
    fn drop(&mut self) {
        if let Some(clean) = self.clean.take() {
            clean();
        }
    }
}

async fn pair() -> Pair {
    let policy = SessionPolicy::default();
    let (old, clean) = redis(policy.clone()).await;
    let (new, schema) = postgres(policy).await;
    let old = Arc::new(old);
    let new = Arc::new(new);
    Pair {
        store: MigratingStore::new(old.clone(), new.clone()),
        old,
        new,
        clean: Some(Box::new(clean)),
        _schema: schema,
    }
}

fn ada(i: usize) -> NewUserSession {
    NewUserSession::new("ada")
        .email("ada@acme.test")
        .attribute("i", i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_the_old_store_are_served_and_move_forward() {
    let p = pair().await;
    let mut old = Vec::new();
    for i in 0..6 {
        old.push(p.old.create(ada(i)).await.unwrap());
    }
    let created_new = p.store.create(ada(99)).await.unwrap();
    assert!(
        p.old.get(&created_new.token).await.unwrap().is_none(),
        "creates go to the new store"
    );

    // A read copies forward: the new store holds it from then on, with every field.
    let read = p.store.get(&old[0].token).await.unwrap().unwrap();
    assert_eq!(read, old[0].session);
    assert_eq!(
        p.new.get(&old[0].token).await.unwrap().as_ref(),
        Some(&read)
    );
    assert!(p.store.touch(&old[1].token).await.unwrap().is_some());
    assert!(p.new.get(&old[1].token).await.unwrap().is_some());

    // Each session is listed and walked once, whichever store holds it (or both).
    let listed = p.store.list_by_user("ada").await.unwrap();
    assert_eq!(listed.len(), 7);
    let handles: HashSet<_> = listed.iter().map(|s| s.handle.clone()).collect();
    assert_eq!(handles.len(), 7);
    let mut walked = Vec::new();
    let mut cursor = None;
    loop {
        let page = p.store.scan(cursor.as_ref(), 2).await.unwrap();
        walked.extend(page.sessions.into_iter().map(|s| s.handle));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(walked.len(), 7, "{walked:?}");
    assert_eq!(walked.into_iter().collect::<HashSet<_>>(), handles);

    // An update of a session only in the old store moves it and writes it in the new one.
    let mut edited = listed
        .iter()
        .find(|s| s.handle == old[2].session.handle)
        .unwrap()
        .clone();
    edited.set_attribute("edited", true);
    let updated = p.store.update(&edited).await.unwrap();
    assert_eq!(updated.session.version, 2);
    assert_eq!(p.new.get(&old[2].token).await.unwrap().unwrap().version, 2);

    // Endings reach both stores: an old token never comes back through the old copy.
    let rotated = p.store.rotate(&old[3].token).await.unwrap().unwrap();
    assert_eq!(p.store.get(&old[3].token).await.unwrap(), None);
    assert_eq!(p.old.get(&old[3].token).await.unwrap(), None);
    assert!(p.store.get(&rotated.token).await.unwrap().is_some());
    assert!(
        p.store.delete(&old[0].token).await.unwrap(),
        "copied forward, then deleted"
    );
    assert_eq!(p.old.get(&old[0].token).await.unwrap(), None);
    assert_eq!(p.store.get(&old[0].token).await.unwrap(), None);
    assert!(
        p.store
            .delete_by_handle(&old[4].session.handle)
            .await
            .unwrap()
    );
    assert_eq!(p.store.get(&old[4].token).await.unwrap(), None);

    // Left: old[1] and old[2] (in both), old[5] (old only), rotated and created_new (new only).
    let removed = p
        .store
        .delete_by_user("ada", Some(&created_new.session.handle))
        .await
        .unwrap();
    assert_eq!(removed, 4, "each session counted once");
    let left = p.store.list_by_user("ada").await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].handle, created_new.session.handle);
    assert!(p.old.list_by_user("ada").await.unwrap().is_empty());
}

/// Many rounds of one revocation racing several first reads of the same old session: whichever
/// way they interleave, the session is gone from both stores afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_revocation_is_undone_by_a_concurrent_copy() {
    let p = Arc::new(pair().await);
    for round in 0..150 {
        let issued = p.old.create(ada(round)).await.unwrap();
        let mut tasks = Vec::new();
        for reader in 0..4 {
            let p = p.clone();
            let token = issued.token.clone();
            tasks.push(tokio::spawn(async move {
                if reader % 2 == 0 {
                    p.store.get(&token).await.unwrap();
                } else {
                    p.store.touch(&token).await.unwrap();
                }
                false
            }));
        }
        let revoker = {
            let p = p.clone();
            let handle = issued.session.handle.clone();
            tokio::spawn(async move { p.store.delete_by_handle(&handle).await.unwrap() })
        };
        for task in tasks {
            task.await.unwrap();
        }
        assert!(
            revoker.await.unwrap(),
            "round {round}: the revocation found the session"
        );
        assert_eq!(
            p.store.get(&issued.token).await.unwrap(),
            None,
            "round {round}"
        );
        assert_eq!(
            p.new.get(&issued.token).await.unwrap(),
            None,
            "round {round}"
        );
        assert_eq!(
            p.old.get(&issued.token).await.unwrap(),
            None,
            "round {round}"
        );
    }
}

/// Many rounds of a rotation racing first reads of the same old session: the new token always
/// works afterwards (nobody is signed out) and the old one never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_racing_copies_signs_nobody_out_and_kills_the_old_token() {
    let p = Arc::new(pair().await);
    for round in 0..150 {
        let issued = p.old.create(ada(round)).await.unwrap();
        let mut readers = Vec::new();
        for _ in 0..4 {
            let p = p.clone();
            let token = issued.token.clone();
            readers.push(tokio::spawn(async move {
                p.store.get(&token).await.unwrap();
            }));
        }
        let rotation = {
            let p = p.clone();
            let token = issued.token.clone();
            tokio::spawn(async move { p.store.rotate(&token).await.unwrap() })
        };
        for reader in readers {
            reader.await.unwrap();
        }
        let rotated = rotation
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("round {round}: the rotation lost the session"));
        assert!(
            p.store.get(&rotated.token).await.unwrap().is_some(),
            "round {round}: signed out"
        );
        assert_eq!(
            p.store.get(&issued.token).await.unwrap(),
            None,
            "round {round}"
        );
        assert_eq!(
            p.new.get(&issued.token).await.unwrap(),
            None,
            "round {round}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_builds_a_migrating_store_from_migrate_from_url() {
    let url = redis_url();
    require_redis(&url);
    let prefix = unique_prefix("migm");
    let old = RedisStore::connect(
        RedisConfig::new(url.clone()).key_prefix(prefix.clone()),
        SessionPolicy::default(),
    )
    .await
    .unwrap();
    let issued = old.create(ada(0)).await.unwrap();
    let schema = PgSchema::create("migm");
    let config = SessionConfig::from_vars(
        [
            ("SESSION_STORE_URL", schema.url()),
            ("SESSION_MIGRATE_FROM_URL", url.clone()),
            ("SESSION_KEY_PREFIX", prefix.clone()),
            ("DATABASE_URL", "none".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    )
    .unwrap();
    let manager = SessionManager::build(config).await.unwrap();
    assert_eq!(manager.sessions().backend(), "postgres");
    let read = manager.sessions().get(&issued.token).await.unwrap();
    assert_eq!(
        read.as_ref(),
        Some(&issued.session),
        "an old session is served"
    );

    // Without the old store, the copy made by that read keeps the client signed in.
    manager.shutdown().await;
    let new = PgSessionStore::connect(
        &schema.url(),
        PoolConfig::default(),
        SessionPolicy::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        new.get(&issued.token).await.unwrap().as_ref(),
        Some(&issued.session)
    );

    let same = SessionConfig::from_vars(
        [
            ("SESSION_STORE_URL", url.clone()),
            ("SESSION_MIGRATE_FROM_URL", url.clone()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    assert!(
        matches!(
            same,
            Err(session_core::SessionError::Config { ref key, .. }) if key == "SESSION_MIGRATE_FROM_URL"
        ),
        "{same:?}"
    );
    let bad = SessionConfig::from_vars(
        [("SESSION_MIGRATE_FROM_URL", "ftp://x".to_owned())].map(|(k, v)| (k.to_owned(), v)),
    );
    assert!(
        matches!(
            bad,
            Err(session_core::SessionError::Config { ref key, .. }) if key == "SESSION_MIGRATE_FROM_URL"
        ),
        "{bad:?}"
    );
    redis_delete_prefix(&url, &prefix);
}
