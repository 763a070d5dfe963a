//! A steady load of session operations for the topology tests (Cluster failover and resharding,
//! Sentinel failover): tasks that create, read, touch and update their own sessions while an
//! event (a killed master, a moved slot) happens, and what the load saw.
#![allow(dead_code, clippy::unwrap_used)] // each test binary uses part of it; a panic is the report

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use session_core::{NewUserSession, SessionError, SessionToken, UserSessionStore};

/// One task's record.
#[derive(Default)]
struct TaskRecord {
    revocations: u64,
    ops: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
    error_times: Vec<Instant>,
    slowest: Duration,
    acknowledged: Vec<(SessionToken, String, Instant)>,
    /// Sessions a `delete_by_user` that returned `Ok` revoked.
    revoked: Vec<SessionToken>,
}

/// What a load saw, timed from the event.
#[derive(Debug)]
pub(crate) struct LoadReport {
    /// Operations completed or failed (an update is a read and a write: one operation).
    pub(crate) ops: u64,
    /// Operations that failed.
    pub(crate) failed: u64,
    /// Failures by kind (`Unavailable`, `Timeout`, `NotFound` …).
    pub(crate) errors: BTreeMap<String, u64>,
    /// The first and the last failure, in ms after the event (negative: before it).
    pub(crate) error_window_ms: Option<(i64, i64)>,
    /// The longest single operation.
    pub(crate) slowest: Duration,
    /// Sessions whose creation was acknowledged.
    pub(crate) created: u64,
    /// Acknowledged sessions no longer found after the event, each with when its creation was
    /// acknowledged, in ms after the event (negative: before it).
    pub(crate) lost_ms: Vec<i64>,
    /// Sessions still found by `get` that their user's `list_by_user` no longer shows (so
    /// `delete_by_user` would not revoke them).
    pub(crate) unlisted: u64,
    /// The unlisted sessions: user, handle, and when their creation was acknowledged (ms after
    /// the event).
    pub(crate) unlisted_sessions: Vec<(String, session_core::SessionHandle, i64)>,
    /// Sign-outs everywhere (`delete_by_user`) that returned `Ok` during the load, and sessions
    /// they should have revoked that `get` still finds afterwards.
    pub(crate) revocations: u64,
    /// See `revocations`: must be 0.
    pub(crate) revoked_but_found: u64,
    /// Failures in the last second of the load (the topology should have settled by then).
    pub(crate) failed_at_the_end: u64,
    /// How long the event took (e.g. until the failover was seen done), in ms.
    pub(crate) event_ms: i64,
}

impl LoadReport {
    /// The figures on one line, for the docs and the closing note.
    #[must_use]
    pub(crate) fn line(&self, what: &str) -> String {
        let window = self
            .error_window_ms
            .map_or("none".to_owned(), |(a, b)| format!("{a}..{b} ms"));
        format!(
            "{what}: event took {} ms; {} ops, {} failed {:?}, error window {window} after the event, slowest call {} ms, {} sessions created, {} lost{}, {} live but unlisted, {} sign-outs everywhere and {} of their sessions still found",
            self.event_ms,
            self.ops,
            self.failed,
            self.errors,
            self.slowest.as_millis(),
            self.created,
            self.lost_ms.len(),
            match (self.lost_ms.first(), self.lost_ms.last()) {
                (Some(first), Some(last)) =>
                    format!(" (acknowledged {first}..{last} ms after the event)"),
                _ => String::new(),
            },
            self.unlisted,
            self.revocations,
            self.revoked_but_found
        )
    }
}

impl LoadReport {
    /// What a failover must keep, whatever the topology: no call longer than the store's
    /// time-outs allow, no failure once it has settled (the load's last second), and only
    /// sessions acknowledged in `lost_window_ms` (ms around the event) missing afterwards.
    pub(crate) fn assert_failover_kept_its_bounds(
        &self,
        config: &session_redis::RedisConfig,
        lost_window_ms: std::ops::RangeInclusive<i64>,
    ) {
        let bound = config.checkout_timeout + config.response_timeout + Duration::from_millis(500);
        assert!(self.slowest <= bound, "a call hung: {self:?}");
        assert_eq!(self.failed_at_the_end, 0, "{self:?}");
        assert_eq!(self.unlisted, 0, "{self:?}");
        assert_eq!(self.revoked_but_found, 0, "{self:?}");
        assert!(
            self.lost_ms.iter().all(|ms| lost_window_ms.contains(ms)),
            "{self:?}"
        );
    }
}

/// The answer of `read` once the topology has settled: a temporary error (a connection the
/// failover closed, found broken at its next use) is retried for up to 30 s.
pub(crate) async fn settled<T, F>(mut read: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Result<T, SessionError>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match read().await {
            Ok(value) => return value,
            Err(e) if e.is_temporary() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("reading back after the load: {e}"),
        }
    }
}

fn kind(e: &SessionError) -> String {
    let shown = format!("{e:?}");
    shown
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Runs `tasks` tasks of get/touch/update/create on `store` for `total`; `event` runs (on a
/// blocking thread) `event_after` into the load. Then checks every acknowledged session.
pub(crate) async fn run_load(
    store: Arc<dyn UserSessionStore>,
    tasks: usize,
    total: Duration,
    event_after: Duration,
    event: impl FnOnce() + Send + 'static,
) -> LoadReport {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let (store, stop) = (store.clone(), stop.clone());
        set.spawn(async move { one_task(task, &*store, &stop).await });
    }
    tokio::time::sleep(event_after).await;
    let event_at = Instant::now();
    tokio::task::spawn_blocking(event).await.unwrap();
    let event_ms = i64::try_from(event_at.elapsed().as_millis()).unwrap();
    // Long enough after the event that the last second (which must see no failure) comes after
    // the topology has settled even when the event ran long: 3 s, plus the time a cluster
    // connection the event stalled takes to be replaced with the default time-outs (its first
    // time-out 1 s, the stall time 4 s, the time-outs of commands already sent to it 1 s;
    // ADR 0032). The Sentinel tests wait as long: it costs them only time.
    tokio::time::sleep(
        total
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(9)),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let ended = Instant::now();
    let mut all = TaskRecord::default();
    let mut revocations = 0u64;
    while let Some(record) = set.join_next().await {
        let record = record.unwrap();
        all.ops += record.ops;
        all.failed += record.failed;
        for (k, n) in record.errors {
            *all.errors.entry(k).or_default() += n;
        }
        all.error_times.extend(record.error_times);
        all.slowest = all.slowest.max(record.slowest);
        all.acknowledged.extend(record.acknowledged);
        all.revoked.extend(record.revoked);
        revocations += record.revocations;
    }
    let since_event = |t: Instant| -> i64 {
        if t >= event_at {
            i64::try_from((t - event_at).as_millis()).unwrap()
        } else {
            -i64::try_from((event_at - t).as_millis()).unwrap()
        }
    };
    all.error_times.sort();
    let error_window_ms = all
        .error_times
        .first()
        .zip(all.error_times.last())
        .map(|(a, b)| (since_event(*a), since_event(*b)));
    let failed_at_the_end = all
        .error_times
        .iter()
        .filter(|t| ended.duration_since(**t) < Duration::from_secs(1))
        .count() as u64;
    // Read back concurrently: tens of thousands of sessions, one at a time, would take longer
    // than the load did.
    let mut readers = tokio::task::JoinSet::new();
    let chunk = all.acknowledged.len().div_ceil(32).max(1);
    for part in all.acknowledged.chunks(chunk) {
        let (store, part) = (store.clone(), part.to_vec());
        readers.spawn(async move {
            let mut lost = Vec::new();
            let mut found_by_user: Vec<(String, session_core::SessionHandle, Instant)> = Vec::new();
            for (token, user, at) in part {
                let found = settled(|| store.get(&token)).await;
                match found {
                    Some(session) => found_by_user.push((user, session.handle, at)),
                    None => lost.push(at),
                }
            }
            (lost, found_by_user)
        });
    }
    let mut lost_ms = Vec::new();
    let mut found: BTreeMap<String, Vec<(session_core::SessionHandle, Instant)>> = BTreeMap::new();
    while let Some(part) = readers.join_next().await {
        let (lost, found_by_user) = part.unwrap();
        lost_ms.extend(lost.into_iter().map(since_event));
        for (user, handle, at) in found_by_user {
            found.entry(user).or_default().push((handle, at));
        }
    }
    lost_ms.sort_unstable();
    // Every live session is in its user's index, which is what revocation goes by.
    let mut unlisted_sessions = Vec::new();
    for (user, handles) in &found {
        let listed: Vec<_> = settled(|| store.list_by_user(user))
            .await
            .into_iter()
            .map(|s| s.handle)
            .collect();
        for (handle, at) in handles {
            if !listed.contains(handle) {
                unlisted_sessions.push((user.clone(), handle.clone(), since_event(*at)));
            }
        }
    }
    let mut revoked_but_found = 0u64;
    for token in &all.revoked {
        if settled(|| store.get(token)).await.is_some() {
            revoked_but_found += 1;
        }
    }
    LoadReport {
        revocations,
        revoked_but_found,
        ops: all.ops,
        failed: all.failed,
        errors: all.errors,
        error_window_ms,
        slowest: all.slowest,
        created: all.acknowledged.len() as u64,
        lost_ms,
        failed_at_the_end,
        event_ms,
        unlisted: unlisted_sessions.len() as u64,
        unlisted_sessions,
    }
}

async fn one_task(task: usize, store: &dyn UserSessionStore, stop: &AtomicBool) -> TaskRecord {
    let mut record = TaskRecord::default();
    let mut mine: Vec<SessionToken> = Vec::new();
    let mut last_user = String::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let started = Instant::now();
        let pick = mine.get(n % mine.len().max(1)).cloned();
        let result: Result<(), SessionError> = match (n % 4, pick) {
            // Now and then, sign the last user out everywhere: what it revoked must stay revoked.
            (3, Some(_)) if n % 64 == 63 && !last_user.is_empty() => {
                let user = std::mem::take(&mut last_user);
                let outcome = store.delete_by_user(&user, None).await;
                // Whatever the outcome, that user's sessions leave the checks of what must live
                // (a failed call may still have revoked them); an `Ok` one joins those that must
                // stay revoked.
                let (theirs, others): (Vec<_>, Vec<_>) = std::mem::take(&mut record.acknowledged)
                    .into_iter()
                    .partition(|(_, u, _)| *u == user);
                record.acknowledged = others;
                mine.retain(|t| !theirs.iter().any(|(gone, _, _)| gone == t));
                if outcome.is_ok() {
                    record.revocations += 1;
                    record.revoked.extend(theirs.into_iter().map(|(t, _, _)| t));
                }
                outcome.map(drop)
            }
            (1, Some(token)) => store.get(&token).await.map(drop),
            (2, Some(token)) => store.touch(&token).await.map(drop),
            (3, Some(token)) => match store.get(&token).await {
                Ok(Some(mut session)) => {
                    session.set_attribute("n", n);
                    store.update(&session).await.map(drop)
                }
                Ok(None) => Err(SessionError::NotFound),
                Err(e) => Err(e),
            },
            // 64 users per task, each signing in again and again: the sessions spread over the
            // slots, and each user's index holds many.
            _ => {
                let user = format!("load-{task}-{}", n % 64);
                last_user.clone_from(&user);
                store
                    .create(NewUserSession::new(user.clone()))
                    .await
                    .map(|issued| {
                        record
                            .acknowledged
                            .push((issued.token.clone(), user, Instant::now()));
                        // Keep a bounded working set: the newest sessions are the ones used.
                        mine.push(issued.token);
                        if mine.len() > 16 {
                            mine.remove(0);
                        }
                    })
            }
        };
        let took = started.elapsed();
        record.ops += 1;
        record.slowest = record.slowest.max(took);
        if let Err(e) = result {
            record.failed += 1;
            *record.errors.entry(kind(&e)).or_default() += 1;
            record.error_times.push(Instant::now());
            // Do not spin on a down cluster: a client would back off too.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    record
}
