//! The migrating store (ADR 0026) on real backends, both ways between Redis and PostgreSQL: every
//! conformance case, sessions of the old store served and moved forward, endings applied to
//! both, no revocation undone and no sign-out under concurrent copies, and the manager building
//! it from `migrate_from_url`.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::HashSet;
use std::sync::Arc;

use session_core::{
    MigratingStore, MigrationPhase, NewUserSession, PoolConfig, SessionPolicy, UserSessionStore,
};
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

/// The prepare phase: sessions are created in the old store, and read from both.
mod redis_to_postgres_prepare {
    use super::*;

    session_testkit::conformance_tests!(|policy: SessionPolicy| async move {
        let (old, clean_redis) = redis(policy.clone()).await;
        let (new, schema) = postgres(policy).await;
        Opened::with_cleanup(
            Arc::new(MigratingStore::with_phase(
                Arc::new(old),
                Arc::new(new),
                MigrationPhase::Prepare,
            )),
            move || {
                clean_redis();
                drop(schema);
            },
        )
    });
}

/// The finish phase: reads only the new store, ends sessions in both.
mod postgres_to_redis_finish {
    use super::*;

    session_testkit::conformance_tests!(|policy: SessionPolicy| async move {
        let (old, schema) = postgres(policy.clone()).await;
        let (new, clean_redis) = redis(policy).await;
        Opened::with_cleanup(
            Arc::new(MigratingStore::with_phase(
                Arc::new(old),
                Arc::new(new),
                MigrationPhase::Finish,
            )),
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
    for (vars, key) in [
        (
            vec![("SESSION_MIGRATE_PHASE", "copy")],
            "SESSION_MIGRATE_PHASE",
        ),
        (
            vec![
                ("SESSION_MIGRATE_FROM_URL", "redis://127.0.0.1:6379/0"),
                ("SESSION_MIGRATE_PHASE", "halfway"),
            ],
            "SESSION_MIGRATE_PHASE",
        ),
    ] {
        let err =
            SessionConfig::from_vars(vars.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
        assert!(
            matches!(&err, Err(session_core::SessionError::Config { key: got, .. }) if got == key),
            "{err:?}"
        );
    }

    // The phase names the manager's migrating store: a prepare-phase instance creates in the old
    // store and serves sessions from both.
    let prepare = SessionConfig::from_toml_str(&format!(
        "store_url = \"{}\"\nmigrate_from_url = \"{url}\"\nmigrate_phase = \"prepare\"\n\
         database_url = \"none\"\n[redis]\nkey_prefix = \"{prefix}\"\n",
        schema.url()
    ))
    .unwrap();
    let manager = SessionManager::build(prepare).await.unwrap();
    assert_eq!(manager.sessions().backend(), "redis");
    let created = manager
        .sessions()
        .create(NewUserSession::new("prep"))
        .await
        .unwrap();
    assert!(old.get(&created.token).await.unwrap().is_some());
    assert!(new.get(&created.token).await.unwrap().is_none());
    assert!(
        manager
            .sessions()
            .get(&issued.token)
            .await
            .unwrap()
            .is_some()
    );
    manager.shutdown().await;
    redis_delete_prefix(&url, &prefix);
}

/// How an instance of the fleet is configured during a move from Redis to PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    OldOnly,
    Phase(MigrationPhase),
    NewOnly,
}

fn instance(p: &Pair, role: Role) -> Arc<dyn UserSessionStore> {
    match role {
        Role::OldOnly => p.old.clone(),
        Role::NewOnly => p.new.clone(),
        Role::Phase(phase) => Arc::new(MigratingStore::with_phase(
            p.old.clone(),
            p.new.clone(),
            phase,
        )),
    }
}

/// Where a session is when a rollout meets it.
#[derive(Clone, Copy, Debug)]
enum Start {
    /// Not yet moved.
    Old,
    /// Copied forward, the old copy kept.
    Both,
    /// Created in the new store.
    New,
}

#[derive(Clone, Copy, Debug)]
enum Ending {
    Delete,
    DeleteByHandle,
    DeleteByUser,
    Rotate,
    UpdateRoot,
}

const ENDINGS: [Ending; 5] = [
    Ending::Delete,
    Ending::DeleteByHandle,
    Ending::DeleteByUser,
    Ending::Rotate,
    Ending::UpdateRoot,
];

async fn start_session(p: &Pair, start: Start, user: &str) -> session_core::IssuedSession {
    let new = NewUserSession::new(user).email("fleet@acme.test");
    match start {
        Start::Old => p.old.create(new).await.unwrap(),
        Start::Both => {
            let issued = p.old.create(new).await.unwrap();
            assert_eq!(
                p.new.import(&issued.session).await.unwrap(),
                session_core::Imported::Stored
            );
            issued
        }
        Start::New => p.new.create(new).await.unwrap(),
    }
}

/// Ends the session `issued` on `ender`; the rotated token, if the ending rotates.
async fn end_session(
    ender: &dyn UserSessionStore,
    ending: Ending,
    issued: &session_core::IssuedSession,
) -> Option<session_core::SessionToken> {
    let what = format!("{ending:?} on {}", ender.backend());
    match ending {
        Ending::Delete => assert!(ender.delete(&issued.token).await.unwrap(), "{what}"),
        Ending::DeleteByHandle => assert!(
            ender
                .delete_by_handle(&issued.session.handle)
                .await
                .unwrap(),
            "{what}"
        ),
        Ending::DeleteByUser => assert_eq!(
            ender
                .delete_by_user(&issued.session.user_id, None)
                .await
                .unwrap(),
            1,
            "{what}"
        ),
        Ending::Rotate => return Some(ender.rotate(&issued.token).await.unwrap().unwrap().token),
        Ending::UpdateRoot => {
            let mut session = ender.get(&issued.token).await.unwrap().unwrap();
            session.is_root = true;
            return Some(ender.update(&session).await.unwrap().rotated.unwrap());
        }
    }
    None
}

/// During each rollout of the runbook two neighbouring configurations serve side by side. For
/// every place a session can be in, every kind of ending and either side ending it: before the
/// ending both sides serve the session (nobody is signed out), after it neither side ever serves
/// the ended token again (no ending undone by the other side's copy), and a rotated token works
/// on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rollout_of_the_runbook_keeps_sessions_and_endings_on_both_sides() {
    let p = pair().await;
    let rollouts = [
        (
            Role::OldOnly,
            Role::Phase(MigrationPhase::Prepare),
            &[Start::Old][..],
        ),
        (
            Role::Phase(MigrationPhase::Prepare),
            Role::Phase(MigrationPhase::Copy),
            &[Start::Old, Start::Both, Start::New][..],
        ),
        (
            Role::Phase(MigrationPhase::Copy),
            Role::Phase(MigrationPhase::Finish),
            &[Start::Both, Start::New][..],
        ),
        (
            Role::Phase(MigrationPhase::Finish),
            Role::NewOnly,
            &[Start::Both, Start::New][..],
        ),
    ];
    let mut n = 0;
    for (earlier, later, starts) in rollouts {
        let (a, b) = (instance(&p, earlier), instance(&p, later));
        for &start in starts {
            for ending in ENDINGS {
                for ender_is_a in [true, false] {
                    n += 1;
                    let user = format!("fleet-{n}");
                    let case = format!(
                        "{earlier:?} beside {later:?}, session {start:?}, {ending:?} on {}",
                        if ender_is_a {
                            "the first"
                        } else {
                            "the second"
                        }
                    );
                    let issued = start_session(&p, start, &user).await;
                    for side in [&a, &b, &a, &b] {
                        assert!(side.get(&issued.token).await.unwrap().is_some(), "{case}");
                        assert!(side.touch(&issued.token).await.unwrap().is_some(), "{case}");
                    }
                    let ender = if ender_is_a { &a } else { &b };
                    let rotated = end_session(ender.as_ref(), ending, &issued).await;
                    for side in [&a, &b, &a, &b] {
                        assert_eq!(side.get(&issued.token).await.unwrap(), None, "{case}");
                        assert_eq!(side.touch(&issued.token).await.unwrap(), None, "{case}");
                        let listed = side.list_by_user(&user).await.unwrap();
                        assert!(
                            listed.iter().all(|s| s.handle != issued.session.handle),
                            "{case}: the ended handle is listed"
                        );
                        if let Some(token) = &rotated {
                            assert!(side.get(token).await.unwrap().is_some(), "{case}: rotated");
                        }
                    }
                }
            }
        }
    }
    assert_eq!(n, 80);
}

/// Why the runbook has a prepare and a finish phase: a copying instance beside one that reaches
/// only one store brings back a session the other signed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_prepare_and_finish_phases_a_copy_undoes_a_sign_out() {
    let p = pair().await;
    let copying = instance(&p, Role::Phase(MigrationPhase::Copy));
    for (other, start) in [(Role::OldOnly, Start::Old), (Role::NewOnly, Start::Both)] {
        let other = instance(&p, other);
        let issued = start_session(&p, start, "gap").await;
        assert!(copying.get(&issued.token).await.unwrap().is_some());
        assert!(other.delete(&issued.token).await.unwrap());
        assert!(
            copying.get(&issued.token).await.unwrap().is_some(),
            "the signed-out session is served again by the copying instance"
        );
        copying.delete(&issued.token).await.unwrap();
    }
}

/// An update made on a prepare-phase instance while copying instances move the same session:
/// whichever way they interleave, both sides then serve the update (no stale copy hides it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_in_the_prepare_phase_racing_copies_is_never_hidden_by_a_stale_copy() {
    let p = Arc::new(pair().await);
    let preparing = instance(&p, Role::Phase(MigrationPhase::Prepare));
    let copying = instance(&p, Role::Phase(MigrationPhase::Copy));
    for round in 0..100 {
        let issued = p.old.create(ada(round)).await.unwrap();
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (copying, token) = (copying.clone(), issued.token.clone());
                tokio::spawn(async move { copying.get(&token).await.unwrap() })
            })
            .collect();
        let mut edited = issued.session.clone();
        edited.set_attribute("edited", round);
        let updated = preparing.update(&edited).await.unwrap();
        for reader in readers {
            assert!(reader.await.unwrap().is_some(), "round {round}: signed out");
        }
        for side in [&preparing, &copying] {
            let read = side.get(&issued.token).await.unwrap().unwrap();
            assert_eq!(read.version, updated.session.version, "round {round}");
            assert_eq!(
                read.get::<usize>("edited").unwrap(),
                Some(round),
                "round {round}"
            );
        }
    }
}

/// A rotation whose old-store step fails. In the copy phase the new store rotates first: the new
/// token is handed out (not lost), and it works. In the finish phase the old copy goes first: the
/// rotation fails and changes nothing, and succeeds once the old store answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_whose_old_store_fails_loses_no_token() {
    use std::time::Duration;
    let server = session_testkit::servers::RedisServer::start();
    let proxy = session_testkit::servers::FaultProxy::start(server.port()).await;
    let old = Arc::new(
        RedisStore::connect(
            RedisConfig::new(format!("redis://127.0.0.1:{}/0", proxy.port()))
                .checkout_timeout(Duration::from_millis(200))
                .response_timeout(Duration::from_millis(200)),
            SessionPolicy::default(),
        )
        .await
        .unwrap(),
    );
    let (new, _schema) = postgres(SessionPolicy::default()).await;
    let new = Arc::new(new);
    for phase in [MigrationPhase::Copy, MigrationPhase::Finish] {
        let store = MigratingStore::with_phase(old.clone(), new.clone(), phase);
        let user = format!("rot-{phase}");
        let start = || async {
            let issued = old
                .create(NewUserSession::new(user.as_str()))
                .await
                .unwrap();
            assert_eq!(
                new.import(&issued.session).await.unwrap(),
                session_core::Imported::Stored
            );
            issued
        };
        let by_rotate = start().await;
        let by_update = start().await;
        let mut root = new.get(&by_update.token).await.unwrap().unwrap();
        root.is_root = true;
        proxy.stall(true);
        let rotated = store.rotate(&by_rotate.token).await;
        let updated = store.update(&root).await;
        if phase == MigrationPhase::Copy {
            let rotated = rotated.unwrap().expect("rotated").token;
            let updated = updated.unwrap().rotated.expect("rotated");
            for token in [rotated, updated] {
                assert!(store.get(&token).await.unwrap().is_some(), "{phase}");
                assert!(new.get(&token).await.unwrap().is_some(), "{phase}");
            }
            proxy.stall(false);
        } else {
            assert!(rotated.is_err(), "{phase}");
            assert!(updated.is_err(), "{phase}");
            proxy.stall(false);
            let mut in_new: Vec<_> = new
                .list_by_user(&user)
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.handle)
                .collect();
            in_new.sort();
            let mut before = vec![
                by_rotate.session.handle.clone(),
                by_update.session.handle.clone(),
            ];
            before.sort();
            assert_eq!(in_new, before, "{phase}: nothing rotated");
            let rotated = store.rotate(&by_rotate.token).await.unwrap().unwrap();
            assert!(
                store.get(&rotated.token).await.unwrap().is_some(),
                "{phase}"
            );
        }
        for issued in [&by_rotate, &by_update] {
            // Once the old store answers, the old tokens are ended everywhere (the copy phase's
            // logged handles revoked as the log says).
            store
                .delete_by_handle(&issued.session.handle)
                .await
                .unwrap();
            assert_eq!(store.get(&issued.token).await.unwrap(), None, "{phase}");
            assert_eq!(old.get(&issued.token).await.unwrap(), None, "{phase}");
        }
    }
}

/// The interleaving issue 12's live test met (ADR 0029): a copier (`sessionctl migrate`, or
/// another instance's first read) reads a session from the old store, the session is ended
/// through a migrating instance, and only then does the copy reach the new store. For every
/// ending and every phase that ends in both stores, the late copy is refused (`Ended`) and the
/// ended token is served by nobody, not even before any check runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_read_before_an_ending_and_imported_after_it_is_refused() {
    let p = pair().await;
    for phase in [
        MigrationPhase::Prepare,
        MigrationPhase::Copy,
        MigrationPhase::Finish,
    ] {
        let ender = instance(&p, Role::Phase(phase));
        for ending in ENDINGS {
            for start in [Start::Old, Start::Both] {
                if matches!(phase, MigrationPhase::Finish) && matches!(start, Start::Old) {
                    // The finish phase serves only what the new store holds: every session has
                    // been copied by then.
                    continue;
                }
                let what = format!("{ending:?} in the {phase:?} phase of a session in {start:?}");
                let issued = start_session(&p, start, "late").await;
                let read_before = p.old.get(&issued.token).await.unwrap().unwrap();
                end_session(&*ender, ending, &issued).await;
                assert_eq!(
                    p.new.import(&read_before).await.unwrap(),
                    session_core::Imported::Ended,
                    "{what}: the late copy is refused"
                );
                for side in [
                    instance(&p, Role::Phase(MigrationPhase::Copy)),
                    instance(&p, Role::NewOnly),
                ] {
                    assert_eq!(
                        side.get(&issued.token).await.unwrap(),
                        None,
                        "{what}: the ended token is served by nobody"
                    );
                }
                p.store.delete_by_user("late", None).await.unwrap();
            }
        }
    }
    // A token nobody issued leaves no tombstone: nothing can be copied for it.
    let invented = session_core::SessionToken::generate().unwrap();
    let copying = instance(&p, Role::Phase(MigrationPhase::Copy));
    assert!(!copying.delete(&invented).await.unwrap());
    let dump = session_core::StorageDump::dump_raw(&*p.new)
        .await
        .unwrap()
        .join("\n");
    assert!(!dump.contains(invented.handle().as_str()));
}
