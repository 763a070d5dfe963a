//! The conformance cases. Each takes a factory and opens the store(s) it needs.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use session_core::{
    Imported, NewUserSession, ScanCursor, SessionError, SessionHandle, SessionToken, UserSession,
    UserSessionStore, UserSessionStoreExt,
};

use crate::{Fixture, StoreFactory};

const MINUTE: Duration = Duration::from_secs(60);
const MS: Duration = Duration::from_millis(1);

/// The handles of `user_id`'s live sessions, in the order the store lists them.
async fn listed_handles(fx: &Fixture, user_id: &str) -> Vec<SessionHandle> {
    fx.store()
        .list_by_user(user_id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.handle)
        .collect()
}

fn alice() -> NewUserSession {
    NewUserSession::new("alice")
        .company_name("Acme Ltd")
        .email("alice@acme.test")
        .root(true)
        .attribute("locale", "en-GB")
        .attribute("prefs", json!({"theme": "dark", "n": 3}))
}

/// Every field survives create → get unchanged, and only `create` shows the token.
pub async fn round_trip_every_field(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |_| {}).await;
    let now = fx.store().policy().now();
    let issued = fx.store().create(alice()).await.unwrap();
    let s = &issued.session;
    assert_eq!(&s.handle, issued.token.handle());
    assert_eq!(s.user_id, "alice");
    assert_eq!(s.company_name, "Acme Ltd");
    assert_eq!(s.email, "alice@acme.test");
    assert!(s.is_root);
    assert!(!s.remember_me);
    assert_eq!(s.attributes["locale"], json!("en-GB"));
    assert_eq!(s.attributes["prefs"], json!({"theme": "dark", "n": 3}));
    assert_eq!(s.created_at, now);
    assert_eq!(s.last_seen_at, now);
    assert_eq!(s.idle_expires_at, now + 30 * MINUTE);
    assert_eq!(s.absolute_expires_at, now + 12 * 60 * MINUTE);
    assert_eq!(s.version, 1);

    let read = fx
        .store()
        .get(&issued.token)
        .await
        .unwrap()
        .expect("session is live");
    assert_eq!(&read, s, "get returns exactly what create stored");

    // A non-root user with empty optional fields round-trips too.
    let plain = fx.store().create(NewUserSession::new("bob")).await.unwrap();
    let read = fx.store().get(&plain.token).await.unwrap().unwrap();
    assert_eq!(read, plain.session);
    assert!(!read.is_root && read.email.is_empty() && read.attributes.is_empty());
}

/// A well-formed token the store never issued finds nothing anywhere, and is never stored.
pub async fn unissued_token_is_never_adopted(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |_| {}).await;
    fx.store().create(alice()).await.unwrap();
    let invented = SessionToken::generate().unwrap();
    assert_eq!(fx.store().get(&invented).await.unwrap(), None);
    assert_eq!(fx.store().touch(&invented).await.unwrap(), None);
    assert!(fx.store().rotate(&invented).await.unwrap().is_none());
    assert!(!fx.store().delete(&invented).await.unwrap());
    assert!(
        !fx.store()
            .delete_by_handle(invented.handle())
            .await
            .unwrap()
    );
    assert_eq!(
        fx.store().get(&invented).await.unwrap(),
        None,
        "reads never create"
    );
    let dump = fx.dump().await;
    assert!(!dump.contains(invented.expose_secret()));
    assert!(!dump.contains(invented.handle().as_str()));
    // Each create issues its own fresh token.
    let a = fx.store().create(alice()).await.unwrap();
    let b = fx.store().create(alice()).await.unwrap();
    assert_ne!(a.token.expose_secret(), b.token.expose_secret());
    assert_ne!(a.token.expose_secret(), invented.expose_secret());
}

/// Malformed input is rejected before any store is asked; long but valid tokens simply miss.
pub async fn malformed_and_oversized_tokens(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |_| {}).await;
    for bad in [
        "",
        "x",
        "not a token at all, spaces",
        "%00%00%00%00%00%00%00%00%00%00%00%00",
    ] {
        assert!(matches!(
            SessionToken::parse(bad),
            Err(SessionError::InvalidToken { .. })
        ));
    }
    let oversized = "A".repeat(10_000);
    assert!(matches!(
        SessionToken::parse(&oversized),
        Err(SessionError::InvalidToken { .. })
    ));
    let longest = SessionToken::parse(&"z".repeat(128)).unwrap();
    assert_eq!(fx.store().get(&longest).await.unwrap(), None);
    assert_eq!(fx.store().touch(&longest).await.unwrap(), None);
    let tagged = SessionToken::parse("zz.abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
    assert_eq!(fx.store().get(&tagged).await.unwrap(), None);
    assert!(SessionHandle::parse("../../etc/passwd").is_err());
}

/// A session unused for the idle timeout is gone for every method, purged or not.
pub async fn idle_expiry(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |_| {}).await;
    let issued = fx.store().create(alice()).await.unwrap();
    fx.clock.advance(30 * MINUTE - MS);
    assert!(
        fx.store().get(&issued.token).await.unwrap().is_some(),
        "live 1ms before idle expiry"
    );
    fx.clock.advance(MS);
    let store = fx.store();
    assert_eq!(
        store.get(&issued.token).await.unwrap(),
        None,
        "expired at idle_expires_at"
    );
    assert_eq!(
        store.touch(&issued.token).await.unwrap(),
        None,
        "touch cannot revive it"
    );
    assert!(store.rotate(&issued.token).await.unwrap().is_none());
    assert!(matches!(
        store.update(&issued.session).await,
        Err(SessionError::NotFound)
    ));
    assert!(store.list_by_user("alice").await.unwrap().is_empty());
    assert!(
        !store.delete(&issued.token).await.unwrap(),
        "deleting an expired session removes nothing live"
    );
}

/// Touch slides the idle expiry but never past the absolute expiry, which ends the session.
pub async fn absolute_expiry_caps_touch(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |p| {
        p.idle_timeout = 30 * MINUTE;
        p.absolute_timeout = 60 * MINUTE;
    })
    .await;
    let issued = fx.store().create(alice()).await.unwrap();
    let absolute = issued.session.absolute_expires_at;
    for _ in 0..2 {
        fx.clock.advance(20 * MINUTE);
        let s = fx
            .store()
            .touch(&issued.token)
            .await
            .unwrap()
            .expect("kept alive by touch");
        assert!(s.idle_expires_at <= absolute);
        assert_eq!(s.absolute_expires_at, absolute);
    }
    // At 40 min: the slide to 70 min is capped at 60.
    let s = fx.store().get(&issued.token).await.unwrap().unwrap();
    assert_eq!(s.idle_expires_at, absolute);
    fx.clock.advance(20 * MINUTE - MS);
    assert!(fx.store().touch(&issued.token).await.unwrap().is_some());
    fx.clock.advance(MS);
    assert_eq!(
        fx.store().touch(&issued.token).await.unwrap(),
        None,
        "expired at absolute_expires_at"
    );
    assert_eq!(fx.store().get(&issued.token).await.unwrap(), None);
}

/// A "remember me" session lives by the longer timeouts.
pub async fn remember_me_uses_longer_timeouts(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |_| {}).await;
    let issued = fx.store().create(alice().remember_me(true)).await.unwrap();
    let s = &issued.session;
    assert!(s.remember_me);
    assert_eq!(
        s.idle_expires_at,
        s.created_at + Duration::from_secs(7 * 24 * 3600)
    );
    assert_eq!(
        s.absolute_expires_at,
        s.created_at + Duration::from_secs(30 * 24 * 3600)
    );
    fx.clock.advance(24 * 60 * MINUTE);
    let touched = fx
        .store()
        .touch(&issued.token)
        .await
        .unwrap()
        .expect("alive after a day");
    assert!(touched.remember_me);
    assert_eq!(
        touched.idle_expires_at,
        touched.last_seen_at + Duration::from_secs(7 * 24 * 3600)
    );
}

/// Touches inside the interval write nothing; the first one after it slides the expiry.
pub async fn touch_is_throttled(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |p| p.touch_interval = MINUTE).await;
    let issued = fx.store().create(alice()).await.unwrap();
    let created = issued.session.clone();
    fx.clock.advance(MINUTE - MS);
    let s = fx.store().touch(&issued.token).await.unwrap().unwrap();
    assert_eq!(
        s.last_seen_at, created.last_seen_at,
        "inside the interval: no write"
    );
    assert_eq!(s.idle_expires_at, created.idle_expires_at);
    let stored = fx.store().get(&issued.token).await.unwrap().unwrap();
    assert_eq!(stored.idle_expires_at, created.idle_expires_at);
    fx.clock.advance(MS);
    let now = fx.store().policy().now();
    let s = fx.store().touch(&issued.token).await.unwrap().unwrap();
    assert_eq!(s.last_seen_at, now);
    assert_eq!(s.idle_expires_at, now + 30 * MINUTE);
    assert_eq!(
        s.version, created.version,
        "touch does not bump the CAS version"
    );
    let stored = fx.store().get(&issued.token).await.unwrap().unwrap();
    assert_eq!(stored, s, "the due touch was written");
}

/// A write against a stale version is a conflict and changes nothing.
pub async fn update_is_compare_and_set(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |_| {}).await;
    let issued = fx.store().create(alice()).await.unwrap();
    let mut first = issued.session.clone();
    first.email = "first@acme.test".into();
    first.set_attribute("step", 1);
    let written = fx.store().update(&first).await.unwrap();
    assert!(written.rotated.is_none(), "no root change, no new token");
    let written = written.session;
    assert_eq!(written.version, 2);
    assert_eq!(written.email, "first@acme.test");

    let mut stale = issued.session.clone();
    stale.email = "stale@acme.test".into();
    match fx.store().update(&stale).await {
        Err(SessionError::Conflict { expected, actual }) => assert_eq!((expected, actual), (1, 2)),
        other => panic!("expected Conflict, got {other:?}"),
    }
    let stored = fx.store().get(&issued.token).await.unwrap().unwrap();
    assert_eq!(stored, written, "the losing write changed nothing");
    // A touch between read and write does not make the write conflict.
    fx.clock.advance(2 * MINUTE);
    fx.store().touch(&issued.token).await.unwrap().unwrap();
    let mut next = stored.clone();
    next.company_name = "Acme Group".into();
    let written = fx.store().update(&next).await.unwrap().session;
    assert_eq!(written.version, 3);
    assert_eq!(written.company_name, "Acme Group");
}

/// An update that changes `is_root` rotates the session in the same step: new token and handle,
/// the old token dead, data and expiry kept; other updates keep the token.
pub async fn update_that_changes_root_rotates_the_token(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |_| {}).await;
    let issued = fx.store().create(alice()).await.unwrap();
    fx.clock.advance(2 * MINUTE);
    let mut demoted = issued.session.clone();
    demoted.is_root = false;
    demoted.email = "demoted@acme.test".into();
    let written = fx.store().update(&demoted).await.unwrap();
    let new_token = written.rotated.expect("a root change issues a new token");
    let s = written.session;
    assert_ne!(new_token.expose_secret(), issued.token.expose_secret());
    assert_eq!(&s.handle, new_token.handle());
    assert_ne!(s.handle, issued.session.handle);
    assert_eq!(
        (s.is_root, s.email.as_str(), s.version),
        (false, "demoted@acme.test", 2)
    );
    assert_eq!(s.idle_expires_at, issued.session.idle_expires_at);
    assert_eq!(s.created_at, issued.session.created_at);

    assert_eq!(fx.store().get(&issued.token).await.unwrap(), None);
    assert!(fx.store().rotate(&issued.token).await.unwrap().is_none());
    assert_eq!(fx.store().get(&new_token).await.unwrap().unwrap(), s);
    assert_eq!(listed_handles(&fx, "alice").await, vec![s.handle.clone()]);
    // A stale copy under the old handle finds nothing to write.
    assert!(matches!(
        fx.store().update(&demoted).await,
        Err(SessionError::NotFound)
    ));
    // Promoting again rotates again; a plain change keeps the token.
    let mut promoted = s.clone();
    promoted.is_root = true;
    let again = fx.store().update(&promoted).await.unwrap();
    let newest = again.rotated.expect("rotates on promotion too");
    assert_eq!(fx.store().get(&new_token).await.unwrap(), None);
    let mut plain = again.session.clone();
    plain.set_attribute("locale", "fr-FR");
    let kept = fx.store().update(&plain).await.unwrap();
    assert!(kept.rotated.is_none());
    assert_eq!(kept.session.handle, *newest.handle());
    assert!(fx.store().get(&newest).await.unwrap().unwrap().is_root);
}

/// `update_with` reruns its change on a fresh copy after a conflict, stores typed values, and
/// writes nothing when the change fails or the session is gone.
pub async fn update_with_retries_conflicts_and_stores_typed_values(factory: &dyn StoreFactory) {
    const TASKS: u64 = 4;
    let fx = Fixture::open(factory, |_| {}).await;
    let issued = fx.store().create(alice()).await.unwrap();
    let token = Arc::new(issued.token);
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (store, token) = (fx.store.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            store
                .update_with(&token, |s| {
                    let n = s.get::<u64>("count")?.unwrap_or(0) + 1;
                    s.insert("count", &n)?;
                    Ok(n)
                })
                .await
                .unwrap()
        }));
    }
    let mut seen = Vec::new();
    for task in tasks {
        let (n, updated) = task.await.unwrap();
        assert!(updated.rotated.is_none());
        seen.push(n);
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=TASKS).collect::<Vec<_>>(),
        "each attempt that was stored saw the last"
    );
    let s = fx.store().get(&token).await.unwrap().unwrap();
    assert_eq!(s.get::<u64>("count").unwrap(), Some(TASKS));
    assert_eq!(s.version, TASKS + 1);

    let failed = fx
        .store()
        .update_with(&token, |s| {
            s.insert("count", &0u64)?;
            Err::<(), _>(SessionError::invalid_input(
                "count",
                "refused by the caller",
            ))
        })
        .await;
    assert!(matches!(
        failed,
        Err(SessionError::InvalidInput { field: "count", .. })
    ));
    assert_eq!(
        fx.store().get(&token).await.unwrap().unwrap(),
        s,
        "nothing written"
    );
    let unknown = SessionToken::generate().unwrap();
    assert!(matches!(
        fx.store().update_with(&unknown, |_| Ok(())).await,
        Err(SessionError::NotFound)
    ));
}

/// Concurrent sign-ins of one user never leave more live sessions than the cap: 32 at once at a
/// cap of 5, and 2 at once at a cap of 1, 20 rounds each, every create succeeding.
pub async fn per_user_cap_holds_under_concurrent_creates(factory: &dyn StoreFactory) {
    const ROUNDS: usize = 20;
    for (cap, tasks) in [(5u32, 32usize), (1, 2)] {
        let fx = Fixture::open(factory, |p| p.max_sessions_per_user = Some(cap)).await;
        for round in 0..ROUNDS {
            let user = format!("crowd-{cap}-{round}");
            let mut creates = Vec::new();
            for _ in 0..tasks {
                let (store, user) = (fx.store.clone(), user.clone());
                creates.push(tokio::spawn(async move {
                    store.create(NewUserSession::new(user)).await
                }));
            }
            let mut issued = Vec::new();
            for create in creates {
                issued.push(create.await.unwrap().unwrap());
            }
            let live = listed_handles(&fx, &user).await;
            assert_eq!(
                live.len(),
                cap as usize,
                "cap {cap}, {tasks} concurrent creates, round {round}"
            );
            let answering = live_count(&fx, &issued).await;
            assert_eq!(
                answering, cap as usize,
                "the listed sessions are the live ones"
            );
        }
    }
}

/// How many of `issued` still answer `get`.
async fn live_count(fx: &Fixture, issued: &[session_core::IssuedSession]) -> usize {
    let mut n = 0;
    for i in issued {
        if fx.store().get(&i.token).await.unwrap().is_some() {
            n += 1;
        }
    }
    n
}

/// `close` is idempotent, and every operation after it is `Closed`, not a hang or a panic.
pub async fn close_is_idempotent_and_later_calls_are_closed(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |_| {}).await;
    let issued = fx.store().create(alice()).await.unwrap();
    fx.store().close().await;
    fx.store().close().await;
    assert!(matches!(
        fx.store().get(&issued.token).await,
        Err(SessionError::Closed { .. })
    ));
    assert!(matches!(
        fx.store().create(alice()).await,
        Err(SessionError::Closed { .. })
    ));
    assert!(matches!(
        fx.store().health().await,
        Err(SessionError::Closed { .. })
    ));
}

/// `create` and `update` refuse control characters (NUL included) in text fields, and `create`
/// stores nothing then; `update` cannot move a session to another user, and does not extend
/// expiry.
pub async fn update_validates_and_keeps_user_and_expiry(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |_| {}).await;
    for ch in ['\0', '\n', '\u{1b}'] {
        let bad = format!("bad{ch}value");
        for field in ["user_id", "company_name", "email"] {
            let user = if field == "user_id" {
                bad.clone()
            } else {
                "control-user".to_owned()
            };
            let mut new = NewUserSession::new(user.clone())
                .company_name("Acme Ltd")
                .email("control@acme.test");
            match field {
                "company_name" => new = new.company_name(bad.clone()),
                "email" => new = new.email(bad.clone()),
                _ => {}
            }
            match fx.store().create(new).await {
                Err(SessionError::InvalidInput { field: refused, .. }) => {
                    assert_eq!(refused, field, "{ch:?} in {field}");
                }
                other => panic!("{ch:?} in {field} at create: {other:?}"),
            }
            // Nothing was stored, and asking about a user id that cannot hold sessions is "none"
            // on every backend, never an error (PostgreSQL refuses NUL in a text parameter).
            match fx.store().list_by_user(&user).await {
                Ok(stored) => assert!(stored.is_empty(), "{ch:?} in {field} stored a session"),
                Err(e) => panic!("{ch:?} in {field}: list_by_user: {e}"),
            }
            if field == "user_id" {
                match fx.store().delete_by_user(&user, None).await {
                    Ok(removed) => assert_eq!(removed, 0, "{ch:?}: delete_by_user"),
                    Err(e) => panic!("{ch:?}: delete_by_user: {e}"),
                }
            }
        }
        for stripped in ["badvalue", "bad", "control-user"] {
            assert!(fx.store().list_by_user(stripped).await.unwrap().is_empty());
        }
    }
    let issued = fx.store().create(alice()).await.unwrap();
    let mut other_user = issued.session.clone();
    other_user.user_id = "mallory".into();
    assert!(matches!(
        fx.store().update(&other_user).await,
        Err(SessionError::InvalidInput {
            field: "user_id",
            ..
        })
    ));
    let mut control = issued.session.clone();
    control.company_name = "Bad\u{0}Co".into();
    assert!(matches!(
        fx.store().update(&control).await,
        Err(SessionError::InvalidInput { .. })
    ));
    fx.clock.advance(10 * MINUTE);
    let mut changed = issued.session.clone();
    changed.company_name = "Acme Group".into();
    let written = fx.store().update(&changed).await.unwrap().session;
    assert_eq!(written.idle_expires_at, issued.session.idle_expires_at);
    assert_eq!(written.last_seen_at, issued.session.last_seen_at);
    assert_eq!(written.user_id, "alice");
    let mut unknown = issued.session.clone();
    unknown.handle = SessionToken::generate().unwrap().handle().clone();
    assert!(matches!(
        fx.store().update(&unknown).await,
        Err(SessionError::NotFound)
    ));
}

/// 64 tasks each add one to a counter by read-modify-update, retrying on conflict: none is lost.
pub async fn concurrent_increments_lose_nothing(factory: &dyn StoreFactory) {
    const TASKS: u64 = 64;
    let fx = Fixture::open(factory, |_| {}).await;
    let issued = fx
        .store()
        .create(alice().attribute("count", 0))
        .await
        .unwrap();
    let token = Arc::new(issued.token);
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (store, token) = (fx.store.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            loop {
                let mut s = store.get(&token).await.unwrap().unwrap();
                let n = s.attributes["count"].as_u64().unwrap();
                s.set_attribute("count", n + 1);
                // Let other tasks read the same version, so in-memory stores race as networked ones do.
                tokio::task::yield_now().await;
                match store.update(&s).await {
                    Ok(_) => return conflicts,
                    Err(SessionError::Conflict { .. }) => {
                        conflicts += 1;
                        tokio::task::yield_now().await;
                    }
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let s = fx.store().get(&token).await.unwrap().unwrap();
    assert_eq!(s.attributes["count"], json!(TASKS));
    assert_eq!(s.version, TASKS + 1);
}

/// Rotation issues a new token for the same data; the old token is dead everywhere.
pub async fn rotate_kills_old_token_and_keeps_data(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |_| {}).await;
    let issued = fx.store().create(alice()).await.unwrap();
    fx.clock.advance(5 * MINUTE);
    let rotated = fx
        .store()
        .rotate(&issued.token)
        .await
        .unwrap()
        .expect("live session rotates");
    assert_ne!(rotated.token.expose_secret(), issued.token.expose_secret());
    assert_ne!(rotated.session.handle, issued.session.handle);
    assert_eq!(&rotated.session.handle, rotated.token.handle());
    let mut expected = issued.session.clone();
    expected.handle = rotated.session.handle.clone();
    assert_eq!(
        rotated.session, expected,
        "same data, version and expiry under the new handle"
    );

    assert_eq!(fx.store().get(&issued.token).await.unwrap(), None);
    assert_eq!(fx.store().touch(&issued.token).await.unwrap(), None);
    assert!(fx.store().rotate(&issued.token).await.unwrap().is_none());
    assert!(matches!(
        fx.store().update(&issued.session).await,
        Err(SessionError::NotFound)
    ));
    assert_eq!(
        fx.store().get(&rotated.token).await.unwrap().unwrap(),
        rotated.session
    );
    let listed = fx.store().list_by_user("alice").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].handle, rotated.session.handle);
    // The new token is fully functional.
    let mut s = rotated.session.clone();
    s.email = "rotated@acme.test".into();
    assert_eq!(fx.store().update(&s).await.unwrap().session.version, 2);
    assert!(fx.store().delete(&rotated.token).await.unwrap());
}

/// Concurrent rotations of one token: exactly one wins; the session is never duplicated or lost.
pub async fn concurrent_rotations_issue_one_token(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |_| {}).await;
    let issued = fx.store().create(alice()).await.unwrap();
    let token = Arc::new(issued.token);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, token) = (fx.store.clone(), token.clone());
            tokio::spawn(async move { store.rotate(&token).await.unwrap() })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        if let Some(issued) = task.await.unwrap() {
            winners.push(issued);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one rotation wins");
    let listed = fx.store().list_by_user("alice").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].handle, winners[0].session.handle);
    assert!(fx.store().get(&winners[0].token).await.unwrap().is_some());
}

/// Delete by token and by handle remove exactly that session; repeats report false.
pub async fn delete_and_delete_by_handle(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |_| {}).await;
    let a = fx.store().create(alice()).await.unwrap();
    let b = fx.store().create(alice()).await.unwrap();
    let c = fx.store().create(alice()).await.unwrap();
    assert!(fx.store().delete(&a.token).await.unwrap());
    assert!(!fx.store().delete(&a.token).await.unwrap());
    assert_eq!(fx.store().get(&a.token).await.unwrap(), None);
    assert!(
        fx.store()
            .delete_by_handle(&b.session.handle)
            .await
            .unwrap()
    );
    assert!(
        !fx.store()
            .delete_by_handle(&b.session.handle)
            .await
            .unwrap()
    );
    assert_eq!(fx.store().get(&b.token).await.unwrap(), None);
    assert!(
        fx.store().get(&c.token).await.unwrap().is_some(),
        "others untouched"
    );
    let listed = listed_handles(&fx, "alice").await;
    assert_eq!(listed, vec![c.session.handle.clone()]);
}

/// Listing is per user, oldest first; "sign out everywhere else" keeps exactly the exception.
pub async fn list_and_delete_by_user_except(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |_| {}).await;
    let mut alice_handles = Vec::new();
    for _ in 0..3 {
        alice_handles.push(fx.store().create(alice()).await.unwrap());
        fx.clock.advance(MS * 10);
    }
    let bob = fx.store().create(NewUserSession::new("bob")).await.unwrap();
    let listed = listed_handles(&fx, "alice").await;
    let expected: Vec<_> = alice_handles
        .iter()
        .map(|i| i.session.handle.clone())
        .collect();
    assert_eq!(listed, expected, "oldest first");
    assert!(fx.store().list_by_user("nobody").await.unwrap().is_empty());

    let keep = &alice_handles[1];
    assert_eq!(
        fx.store()
            .delete_by_user("alice", Some(&keep.session.handle))
            .await
            .unwrap(),
        2
    );
    let listed = listed_handles(&fx, "alice").await;
    assert_eq!(listed, vec![keep.session.handle.clone()]);
    assert!(fx.store().get(&keep.token).await.unwrap().is_some());
    assert_eq!(fx.store().get(&alice_handles[0].token).await.unwrap(), None);
    assert!(
        fx.store().get(&bob.token).await.unwrap().is_some(),
        "other users untouched"
    );

    assert_eq!(fx.store().delete_by_user("alice", None).await.unwrap(), 1);
    assert!(fx.store().list_by_user("alice").await.unwrap().is_empty());
    assert_eq!(fx.store().delete_by_user("alice", None).await.unwrap(), 0);
}

/// With a cap of 2, a third sign-in evicts the oldest session.
pub async fn per_user_cap_evicts_oldest(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |p| p.max_sessions_per_user = Some(2)).await;
    let first = fx.store().create(alice()).await.unwrap();
    fx.clock.advance(MS * 10);
    let second = fx.store().create(alice()).await.unwrap();
    fx.clock.advance(MS * 10);
    let bob = fx.store().create(NewUserSession::new("bob")).await.unwrap();
    let third = fx.store().create(alice()).await.unwrap();
    assert_eq!(
        fx.store().get(&first.token).await.unwrap(),
        None,
        "oldest evicted"
    );
    assert!(fx.store().get(&second.token).await.unwrap().is_some());
    assert!(fx.store().get(&third.token).await.unwrap().is_some());
    assert!(
        fx.store().get(&bob.token).await.unwrap().is_some(),
        "the cap is per user"
    );
    let listed = listed_handles(&fx, "alice").await;
    assert_eq!(
        listed,
        vec![second.session.handle.clone(), third.session.handle.clone()]
    );
    // Expired sessions do not count against the cap.
    fx.clock.advance(31 * MINUTE);
    let a = fx.store().create(alice()).await.unwrap();
    let b = fx.store().create(alice()).await.unwrap();
    assert!(fx.store().get(&a.token).await.unwrap().is_some());
    assert!(fx.store().get(&b.token).await.unwrap().is_some());
}

/// Purge removes the expired sessions, reports how many, and leaves live ones alone.
pub async fn purge_expired_removes_only_expired(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |_| {}).await;
    let old1 = fx.store().create(alice()).await.unwrap();
    let old2 = fx.store().create(NewUserSession::new("bob")).await.unwrap();
    fx.clock.advance(20 * MINUTE);
    let young = fx.store().create(alice()).await.unwrap();
    fx.clock.advance(11 * MINUTE);
    assert_eq!(fx.store().purge_expired().await.unwrap(), 2);
    assert_eq!(
        fx.store().purge_expired().await.unwrap(),
        0,
        "each expired session is purged once"
    );
    assert!(fx.store().get(&young.token).await.unwrap().is_some());
    let dump = fx.dump().await;
    assert!(
        !dump.contains(old1.session.handle.as_str()),
        "purged session and its index entry gone"
    );
    assert!(!dump.contains(old2.session.handle.as_str()));
    assert!(dump.contains(young.session.handle.as_str()));
    let listed = fx.store().list_by_user("alice").await.unwrap();
    assert_eq!(listed.len(), 1);
}

/// Oversized attributes are refused on create and update and nothing stored changes.
pub async fn oversized_attributes_are_rejected(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |p| p.max_attributes_bytes = 256).await;
    let too_big = alice().attribute("blob", "x".repeat(300));
    assert!(matches!(
        fx.store().create(too_big).await,
        Err(SessionError::PayloadTooLarge {
            what: "attributes",
            limit: 256,
            ..
        })
    ));
    assert!(
        fx.store().list_by_user("alice").await.unwrap().is_empty(),
        "nothing stored"
    );
    let issued = fx.store().create(alice()).await.unwrap();
    let mut grown = issued.session.clone();
    grown.set_attribute("blob", "x".repeat(300));
    assert!(matches!(
        fx.store().update(&grown).await,
        Err(SessionError::PayloadTooLarge { .. })
    ));
    assert_eq!(
        fx.store().get(&issued.token).await.unwrap().unwrap(),
        issued.session
    );
    let huge_field = NewUserSession::new("u").email("e".repeat(10_000));
    assert!(matches!(
        fx.store().create(huge_field).await,
        Err(SessionError::PayloadTooLarge { what: "email", .. })
    ));
}

/// The raw token appears nowhere in what the store keeps; the handle is what it keys by.
pub async fn raw_token_is_stored_nowhere(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |_| {}).await;
    let mut tokens = Vec::new();
    for i in 0..5 {
        tokens.push(
            fx.store()
                .create(alice().attribute("i", i))
                .await
                .unwrap()
                .token,
        );
    }
    let rotated = fx.store().rotate(&tokens[0]).await.unwrap().unwrap();
    tokens.push(rotated.token.clone());
    fx.clock.advance(2 * MINUTE);
    fx.store().touch(&tokens[1]).await.unwrap().unwrap();
    let dump = fx.dump().await;
    assert!(!dump.is_empty());
    let mut seen = HashSet::new();
    for token in &tokens {
        assert!(
            !dump.contains(token.expose_secret()),
            "raw token found in storage"
        );
        // Nor any long run of it (e.g. the token without its routing tag).
        let secret = token.expose_secret();
        assert!(
            !dump.contains(&secret[secret.len() - 24..]),
            "token fragment found in storage"
        );
        seen.insert(token.handle().clone());
    }
    assert!(
        dump.contains(rotated.session.handle.as_str()),
        "sessions are keyed by handle"
    );
    assert_eq!(seen.len(), tokens.len());
}

/// `health` answers on a working store.
pub async fn health_answers(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |_| {}).await;
    fx.store().health().await.unwrap();
}

/// Walks the whole store page by page and returns every session it handed back, checking the
/// page bound on the way. Stops with a failure if the walk does not end.
async fn scan_all(store: &dyn UserSessionStore, limit: usize) -> Vec<UserSession> {
    let mut cursor: Option<ScanCursor> = None;
    let mut seen = Vec::new();
    for _ in 0..100_000 {
        let page = store.scan(cursor.as_ref(), limit).await.unwrap();
        assert!(
            page.sessions.len() <= limit,
            "a page of {} sessions for a limit of {limit}",
            page.sessions.len()
        );
        seen.extend(page.sessions);
        match page.next {
            // A cursor is text that survives a restart: resume from its text, as a tool would.
            Some(next) => cursor = Some(ScanCursor::new(next.as_str().to_owned())),
            None => return seen,
        }
    }
    panic!("the walk did not end after 100,000 pages");
}

/// `scan` returns every live session (with every field as `get` reads it) and no expired one, in
/// pages no larger than the limit, resumable from the cursor's text; bad limits and cursors are
/// typed errors.
pub async fn scan_walks_every_live_session_in_bounded_pages(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |_| {}).await;
    assert!(
        scan_all(fx.store(), 10).await.is_empty(),
        "an empty store walks to the end"
    );
    let mut doomed = Vec::new();
    for i in 0..3 {
        doomed.push(
            fx.store()
                .create(NewUserSession::new(format!("old-{i}")))
                .await
                .unwrap(),
        );
    }
    fx.clock.advance(20 * MINUTE);
    let mut live = std::collections::HashMap::new();
    for i in 0..25 {
        let new = alice()
            .attribute("i", i)
            .email(format!("u{}@acme.test", i % 5));
        let mut new = new;
        new.user_id = format!("user-{}", i % 5);
        let issued = fx.store().create(new).await.unwrap();
        live.insert(issued.session.handle.clone(), issued.token);
    }
    fx.clock.advance(15 * MINUTE);
    for issued in &doomed {
        assert_eq!(fx.store().get(&issued.token).await.unwrap(), None);
    }

    for limit in [1, 7, 1000] {
        let walked = scan_all(fx.store(), limit).await;
        let handles: HashSet<SessionHandle> = walked.iter().map(|s| s.handle.clone()).collect();
        let expected: HashSet<SessionHandle> = live.keys().cloned().collect();
        assert_eq!(
            handles, expected,
            "limit {limit}: every live session, no expired one"
        );
        for session in &walked {
            let read = fx.store().get(&live[&session.handle]).await.unwrap();
            assert_eq!(
                Some(session),
                read.as_ref(),
                "a scanned session is what get reads"
            );
        }
    }

    // A session removed before the walk is not in it.
    let (gone, token) = live
        .iter()
        .next()
        .map(|(h, t)| (h.clone(), t.clone()))
        .unwrap();
    assert!(fx.store().delete(&token).await.unwrap());
    let walked = scan_all(fx.store(), 10).await;
    assert!(walked.iter().all(|s| s.handle != gone));
    assert_eq!(
        walked
            .iter()
            .map(|s| s.handle.clone())
            .collect::<HashSet<_>>()
            .len(),
        24
    );

    for limit in [0, session_core::MAX_SCAN_LIMIT + 1] {
        assert!(
            matches!(
                fx.store().scan(None, limit).await,
                Err(SessionError::InvalidInput { field: "limit", .. })
            ),
            "limit {limit} is refused"
        );
    }
    for cursor in ["", "nonsense", "m1:x", "pg1:", "r1:s:0:x", "my1:%%"] {
        let cursor = ScanCursor::new(cursor);
        let answer = fx.store().scan(Some(&cursor), 10).await;
        assert!(
            matches!(
                answer,
                Err(SessionError::InvalidInput {
                    field: "cursor",
                    ..
                })
            ),
            "cursor {cursor:?} gave {answer:?}"
        );
    }
}

/// A copy of `session` under the handle of a new token of the given shape, so a case can import
/// sessions whose handles have or lack a routing tag, whichever store issued the original.
fn under_new_token(session: &UserSession, tagged: bool) -> (UserSession, SessionToken) {
    let token = if tagged {
        SessionToken::generate_tagged(Some("zq")).unwrap()
    } else {
        SessionToken::generate().unwrap()
    };
    let mut copy = session.clone();
    copy.handle = token.handle().clone();
    (copy, token)
}

/// `import` stores a session from another store under its handle with its version and instants,
/// so the client's token works there for every operation; it never overwrites a live session,
/// refuses expired and invalid ones without storing anything, and may replace an expired one.
pub async fn import_keeps_the_session_and_never_overwrites(factory: &dyn StoreFactory) {
    let source = Fixture::open(factory, |_| {}).await;
    let target = source.open_beside(factory).await;
    let issued = source
        .store()
        .create(alice().remember_me(true))
        .await
        .unwrap();
    source.clock.advance(2 * MINUTE);
    source.store().touch(&issued.token).await.unwrap().unwrap();
    let mut edited = source.store().get(&issued.token).await.unwrap().unwrap();
    edited.set_attribute("step", 2);
    let original = source.store().update(&edited).await.unwrap().session;
    assert_eq!(original.version, 2);

    // The source's own handle, and handles with and without a routing tag.
    let (untagged, untagged_token) = under_new_token(&original, false);
    let (tagged, tagged_token) = under_new_token(&original, true);
    for (session, token) in [
        (&original, &issued.token),
        (&untagged, &untagged_token),
        (&tagged, &tagged_token),
    ] {
        assert_eq!(
            target.store().import(session).await.unwrap(),
            Imported::Stored
        );
        let read = target.store().get(token).await.unwrap();
        assert_eq!(
            read.as_ref(),
            Some(session),
            "every field, version and instant kept"
        );
        assert_eq!(
            target.store().import(session).await.unwrap(),
            Imported::AlreadyPresent
        );
    }
    let listed: HashSet<SessionHandle> = target
        .store()
        .list_by_user("alice")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.handle)
        .collect();
    let imported: HashSet<SessionHandle> = [&original, &untagged, &tagged]
        .iter()
        .map(|s| s.handle.clone())
        .collect();
    assert_eq!(
        listed, imported,
        "imported sessions are in the user's index"
    );

    // Every operation works on an imported session, whatever its handle's shape.
    for token in [&issued.token, &untagged_token, &tagged_token] {
        let mut stored = target.store().get(token).await.unwrap().unwrap();
        stored.set_attribute("step", 3);
        let updated = target.store().update(&stored).await.unwrap().session;
        assert_eq!(updated.version, 3, "the version continues from the copy");
        // An older copy imported again never overwrites the newer state.
        let stale = [&original, &untagged, &tagged]
            .into_iter()
            .find(|s| &s.handle == token.handle())
            .unwrap();
        assert_eq!(
            target.store().import(stale).await.unwrap(),
            Imported::AlreadyPresent
        );
        assert_eq!(target.store().get(token).await.unwrap().unwrap().version, 3);
    }
    target.clock.advance(2 * MINUTE);
    let touched = target
        .store()
        .touch(&untagged_token)
        .await
        .unwrap()
        .unwrap();
    assert!(touched.idle_expires_at > untagged.idle_expires_at);
    let rotated = target
        .store()
        .rotate(&untagged_token)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(target.store().get(&untagged_token).await.unwrap(), None);
    assert_eq!(
        target
            .store()
            .get(&rotated.token)
            .await
            .unwrap()
            .unwrap()
            .version,
        3
    );
    assert!(
        target
            .store()
            .delete_by_handle(&tagged.handle)
            .await
            .unwrap()
    );
    assert_eq!(target.store().get(&tagged_token).await.unwrap(), None);
    assert!(target.store().delete(&issued.token).await.unwrap());
    assert_eq!(
        target.store().delete_by_user("alice", None).await.unwrap(),
        1
    );

    // An expired session is not stored.
    let (mut expired, expired_token) = under_new_token(&original, false);
    let now = target.store().policy().now();
    expired.idle_expires_at = now - MS * 5;
    expired.last_seen_at = expired.created_at;
    assert_eq!(
        target.store().import(&expired).await.unwrap(),
        Imported::Expired
    );
    assert_eq!(target.store().get(&expired_token).await.unwrap(), None);

    // A session that has expired here may be replaced by a live copy (an older copy lost nothing).
    let (mut short, short_token) = under_new_token(&original, true);
    short.idle_expires_at = now + MS * 50;
    short.created_at = now - MINUTE;
    short.authenticated_at = short.created_at;
    short.last_seen_at = now - MINUTE;
    assert_eq!(
        target.store().import(&short).await.unwrap(),
        Imported::Stored
    );
    target.clock.advance(MS * 100);
    assert_eq!(target.store().get(&short_token).await.unwrap(), None);
    let mut renewed = short.clone();
    renewed.idle_expires_at = target.store().policy().now() + MINUTE;
    renewed.version = 9;
    assert_eq!(
        target.store().import(&renewed).await.unwrap(),
        Imported::Stored
    );
    assert_eq!(
        target
            .store()
            .get(&short_token)
            .await
            .unwrap()
            .unwrap()
            .version,
        9
    );

    // Invalid sessions are typed errors and store nothing.
    let mut bad = Vec::new();
    let (mut s, t) = under_new_token(&renewed, false);
    s.version = 0;
    bad.push((s, t, "version"));
    let (mut s, t) = under_new_token(&renewed, false);
    s.last_seen_at = s.created_at - MS;
    bad.push((s, t, "last_seen_at"));
    let (mut s, t) = under_new_token(&renewed, false);
    s.absolute_expires_at = s.idle_expires_at - MS;
    bad.push((s, t, "absolute_expires_at"));
    let (mut s, t) = under_new_token(&renewed, false);
    s.user_id = "nul\0user".into();
    bad.push((s, t, "user_id"));
    let (mut s, t) = under_new_token(&renewed, false);
    s.created_at += Duration::from_micros(1);
    bad.push((s, t, "created_at"));
    for (session, token, field) in bad {
        match target.store().import(&session).await {
            Err(SessionError::InvalidInput { field: f, .. }) => assert_eq!(f, field),
            other => panic!("import with a bad {field} gave {other:?}"),
        }
        assert_eq!(target.store().get(&token).await.unwrap(), None);
    }
    let (mut big, big_token) = under_new_token(&renewed, false);
    big.set_attribute(
        "blob",
        "x".repeat(target.store().policy().max_attributes_bytes + 1),
    );
    assert!(matches!(
        target.store().import(&big).await,
        Err(SessionError::PayloadTooLarge { .. })
    ));
    assert_eq!(target.store().get(&big_token).await.unwrap(), None);
    // The source was never touched by any of it.
    assert_eq!(
        source
            .store()
            .get(&issued.token)
            .await
            .unwrap()
            .unwrap()
            .version,
        2
    );
}

/// `delete_with_tombstone` ends a session as `delete_by_handle` does and keeps copies of it out
/// until the instant given: an import answers `Ended` and stores nothing, whatever the handle's
/// shape and whether a session was there; an import racing it never leaves the session behind;
/// a purge keeps a tombstone that stands; after its instant a copy is stored again.
pub async fn tombstone_ends_a_session_and_refuses_its_copies(factory: &dyn StoreFactory) {
    let source = Fixture::open(factory, |_| {}).await;
    let target = source.open_beside(factory).await;
    let hour = 60 * MINUTE;
    let issued = source.store().create(alice()).await.unwrap();
    let original = source.store().get(&issued.token).await.unwrap().unwrap();
    let (untagged, untagged_token) = under_new_token(&original, false);
    let (tagged, tagged_token) = under_new_token(&original, true);
    for (session, token) in [
        (&original, &issued.token),
        (&untagged, &untagged_token),
        (&tagged, &tagged_token),
    ] {
        assert_eq!(
            target.store().import(session).await.unwrap(),
            Imported::Stored
        );
        let until = target.store().policy().now() + hour;
        assert!(
            target
                .store()
                .delete_with_tombstone(&session.handle, until)
                .await
                .unwrap(),
            "a live session was removed"
        );
        assert_eq!(target.store().get(token).await.unwrap(), None);
        assert_eq!(
            target.store().import(session).await.unwrap(),
            Imported::Ended,
            "the copy of an ended session is refused"
        );
        assert_eq!(target.store().get(token).await.unwrap(), None);
        assert!(
            !target
                .store()
                .delete_with_tombstone(&session.handle, until)
                .await
                .unwrap(),
            "nothing live is left to remove"
        );
    }
    assert_eq!(target.store().list_by_user("alice").await.unwrap(), vec![]);

    // A handle never stored here is refused as well: its copy may arrive after the ending.
    let (never, never_token) = under_new_token(&original, false);
    let until = target.store().policy().now() + hour;
    assert!(
        !target
            .store()
            .delete_with_tombstone(&never.handle, until)
            .await
            .unwrap()
    );
    target.store().purge_expired().await.unwrap();
    assert_eq!(
        target.store().import(&never).await.unwrap(),
        Imported::Ended,
        "a purge keeps a tombstone that stands"
    );
    assert_eq!(target.store().get(&never_token).await.unwrap(), None);

    // An import racing the ending: whichever runs first, the session is gone afterwards.
    let target_store = target.store();
    for round in 0..40 {
        let (copy, token) = under_new_token(&original, round % 2 == 0);
        let until = target_store.policy().now() + hour;
        let (imported, ended) = tokio::join!(
            target_store.import(&copy),
            target_store.delete_with_tombstone(&copy.handle, until),
        );
        let imported = imported.unwrap();
        let ended = ended.unwrap();
        assert!(
            matches!(imported, Imported::Stored | Imported::Ended),
            "round {round}: {imported:?}"
        );
        assert_eq!(
            ended,
            imported == Imported::Stored,
            "round {round}: the ending removed the copy exactly when the copy came first"
        );
        assert_eq!(
            target_store.get(&token).await.unwrap(),
            None,
            "round {round}: an ended session is never served"
        );
        assert_eq!(
            target_store.import(&copy).await.unwrap(),
            Imported::Ended,
            "round {round}"
        );
    }
    assert_eq!(target.store().list_by_user("alice").await.unwrap(), vec![]);

    // After its instant the tombstone is gone: a live copy is stored.
    let (short, short_token) = under_new_token(&original, true);
    let until = target.store().policy().now() + 10 * MINUTE;
    target
        .store()
        .delete_with_tombstone(&short.handle, until)
        .await
        .unwrap();
    target.clock.advance(11 * MINUTE);
    target.store().purge_expired().await.unwrap();
    let mut renewed = short.clone();
    let now = target.store().policy().now();
    renewed.created_at = now;
    renewed.authenticated_at = now;
    renewed.last_seen_at = now;
    renewed.idle_expires_at = now + MINUTE;
    renewed.absolute_expires_at = now + hour;
    assert_eq!(
        target.store().import(&renewed).await.unwrap(),
        Imported::Stored
    );
    assert_eq!(
        target.store().get(&short_token).await.unwrap().as_ref(),
        Some(&renewed)
    );
    target.store().delete_by_user("alice", None).await.unwrap();
    source.store().delete_by_user("alice", None).await.unwrap();
}

/// The client metadata (device label, address, `authenticated_at`) is stored on create and kept
/// by every read, list, touch, rotation, scan and import; an `update` edits the device and
/// address in place, while a re-authentication (a new `authenticated_at`) rotates the token in the
/// same step, as a root change does. Bad metadata is a typed error that changes nothing.
pub async fn client_metadata_is_kept_and_reauthentication_rotates(factory: &dyn StoreFactory) {
    let fx = Fixture::open(factory, |_| {}).await;
    let v4: std::net::IpAddr = "203.0.113.7".parse().unwrap();
    let v6: std::net::IpAddr = "2001:db8::42".parse().unwrap();
    let signed_in = fx.store().policy().now();
    let issued = fx
        .store()
        .create(alice().device("Firefox on Linux").address(Some(v4)))
        .await
        .unwrap();
    let s = &issued.session;
    assert_eq!(
        (s.device.as_str(), s.address, s.authenticated_at),
        ("Firefox on Linux", Some(v4), signed_in)
    );
    assert_eq!(&fx.store().get(&issued.token).await.unwrap().unwrap(), s);
    fx.clock.advance(MS);
    let other = fx
        .store()
        .create(
            NewUserSession::new("alice")
                .device("Chrome on Android")
                .address(Some(v6)),
        )
        .await
        .unwrap();
    let listed = fx.store().list_by_user("alice").await.unwrap();
    assert_eq!(listed, vec![s.clone(), other.session.clone()]);
    let unknown = fx
        .store()
        .create(NewUserSession::new("carol"))
        .await
        .unwrap();
    let read = fx.store().get(&unknown.token).await.unwrap().unwrap();
    assert_eq!((read.device.as_str(), read.address), ("", None));

    // A touch and a rotation keep it.
    fx.clock.advance(10 * MINUTE);
    let touched = fx.store().touch(&issued.token).await.unwrap().unwrap();
    assert_eq!(
        (
            touched.device.as_str(),
            touched.address,
            touched.authenticated_at
        ),
        ("Firefox on Linux", Some(v4), signed_in)
    );
    let rotated = fx.store().rotate(&issued.token).await.unwrap().unwrap();
    assert_eq!(
        (
            rotated.session.device.as_str(),
            rotated.session.address,
            rotated.session.authenticated_at
        ),
        ("Firefox on Linux", Some(v4), signed_in)
    );

    // Editing the device and address keeps the token.
    let mut moved = rotated.session.clone();
    moved.device = "Firefox on macOS".into();
    moved.address = Some(v6);
    let kept = fx.store().update(&moved).await.unwrap();
    assert!(kept.rotated.is_none(), "a metadata edit keeps the token");
    let now_stored = fx.store().get(&rotated.token).await.unwrap().unwrap();
    assert_eq!(now_stored, kept.session);
    assert_eq!(
        (
            now_stored.device.as_str(),
            now_stored.address,
            now_stored.version
        ),
        ("Firefox on macOS", Some(v6), 2)
    );

    // Bad metadata is refused, and the stored session stays as it was.
    let policy = fx.store().policy().clone();
    let mut future = now_stored.clone();
    future.authenticated_at = policy.now() + session_core::MAX_CLOCK_SKEW + MINUTE;
    let mut before_sign_in = now_stored.clone();
    before_sign_in.authenticated_at = now_stored.created_at - MS;
    let mut long_label = now_stored.clone();
    long_label.device = "x".repeat(policy.max_field_bytes + 1);
    let mut control = now_stored.clone();
    control.device = "Firefox\non Linux".into();
    for (bad, field) in [
        (future, "authenticated_at"),
        (before_sign_in, "authenticated_at"),
        (control, "device"),
    ] {
        match fx.store().update(&bad).await {
            Err(SessionError::InvalidInput { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected InvalidInput({field}), got {other:?}"),
        }
    }
    assert!(matches!(
        fx.store().update(&long_label).await,
        Err(SessionError::PayloadTooLarge { what: "device", .. })
    ));
    assert!(matches!(
        fx.store()
            .create(NewUserSession::new("dave").device("x".repeat(policy.max_field_bytes + 1)))
            .await,
        Err(SessionError::PayloadTooLarge { what: "device", .. })
    ));
    assert_eq!(
        fx.store().get(&rotated.token).await.unwrap().unwrap(),
        now_stored
    );

    // A re-authentication moves the session to a new token in the same step.
    fx.clock.advance(5 * MINUTE);
    let proved = policy.now();
    let reauth = fx
        .store()
        .update(&now_stored.clone().reauthenticated(&policy))
        .await
        .unwrap();
    let fresh = reauth
        .rotated
        .expect("a re-authentication issues a new token");
    let s = reauth.session;
    assert_eq!(&s.handle, fresh.handle());
    assert_eq!((s.authenticated_at, s.version), (proved, 3));
    assert_eq!(s.created_at, signed_in, "the sign-in time stays");
    assert_eq!(s.authentication_age(&policy), Duration::ZERO);
    assert_eq!(fx.store().get(&rotated.token).await.unwrap(), None);
    assert_eq!(fx.store().get(&fresh).await.unwrap().unwrap(), s);
    // The same instant again is no re-authentication: the token stays.
    let mut same = s.clone();
    same.set_attribute("locale", "fr-FR");
    assert!(fx.store().update(&same).await.unwrap().rotated.is_none());
    fx.clock.advance(MINUTE);
    assert_eq!(
        fx.store()
            .get(&fresh)
            .await
            .unwrap()
            .unwrap()
            .authentication_age(&policy),
        MINUTE
    );

    // A scan and an import into another store carry the metadata as it is.
    let walked = scan_all(fx.store(), 100).await;
    let beside = fx.open_beside(factory).await;
    {
        let copy = walked
            .into_iter()
            .find(|c| c.handle == *fresh.handle())
            .expect("the scan finds the live session");
        assert_eq!(copy, fx.store().get(&fresh).await.unwrap().unwrap());
        match beside.store().import(&copy).await {
            Ok(Imported::Stored) => {
                assert_eq!(beside.store().get(&fresh).await.unwrap().unwrap(), copy);
            }
            Err(SessionError::Unsupported { .. }) => {}
            other => panic!("expected Stored, got {other:?}"),
        }
    }
}
