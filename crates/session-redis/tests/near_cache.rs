//! The near cache (ADR 0021) against real Redis: the whole conformance suite with it on, what one
//! instance's writes do to another instance's cache (measured under load), and a tracking
//! connection cut or stalled by a proxy.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use session_core::{NewUserSession, SessionPolicy, SessionToken, UserSessionStore};
use session_redis::{NearCacheConfig, RedisConfig, RedisStore};
use session_testkit::Opened;
use session_testkit::servers::{
    FaultProxy, RedisCluster, RedisSentinel, redis_delete_prefix, redis_url, require_redis,
    unique_prefix,
};

session_testkit::conformance_tests!(|policy| async move {
    let url = redis_url();
    require_redis(&url);
    let prefix = unique_prefix("nearconf");
    let config = RedisConfig::new(url.clone())
        .key_prefix(prefix.clone())
        .near_cache(NearCacheConfig::default());
    let store = RedisStore::connect(config, policy)
        .await
        .expect("Redis store");
    Opened::with_cleanup(Arc::new(store), move || redis_delete_prefix(&url, &prefix))
});

fn near(url: &str, prefix: &str) -> RedisConfig {
    RedisConfig::new(url)
        .key_prefix(prefix)
        .near_cache(NearCacheConfig::default())
}

/// The port of the shared Redis the URL names.
fn shared_port(url: &str) -> u16 {
    url.trim_start_matches("redis://")
        .split(['/', ':'])
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(6379)
}

/// Waits until the store's tracking is up (its first operation starts it).
async fn tracking(store: &RedisStore) {
    let deadline = Instant::now() + Duration::from_secs(10);
    store.health().await.unwrap();
    while !store.near_cache_stats().unwrap().tracking {
        assert!(Instant::now() < deadline, "tracking never came up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads `token` on `store` until the answer satisfies `done`; the time it took.
async fn until(
    store: &RedisStore,
    token: &SessionToken,
    done: impl Fn(Option<&session_core::UserSession>) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let read = store.get(token).await.unwrap();
        if done(read.as_ref()) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the other instance kept serving the old state for 5 s"
        );
        tokio::task::yield_now().await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// Two instances on one Redis, both caching. While 32 tasks keep reading through instance B (so
/// its entries are warm and it is busy), instance A deletes, updates or rotates a session B has
/// cached; from the moment A's call returns, B is read until it answers the new state. Every
/// change reaches B within the bound asserted here (100 ms; the figures are printed for
/// docs/backends.md), and B's cache served most reads.
async fn changes_reach_the_other_instance(a: Arc<RedisStore>, b: Arc<RedisStore>, what: &str) {
    tracking(&a).await;
    tracking(&b).await;
    let mut sessions = Vec::new();
    for i in 0..200 {
        sessions.push(
            a.create(NewUserSession::new(format!("user-{i}")))
                .await
                .unwrap(),
        );
    }
    let tokens: Arc<Vec<SessionToken>> =
        Arc::new(sessions.iter().map(|s| s.token.clone()).collect());
    for token in tokens.iter() {
        b.get(token).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for task in 0..32 {
        let (b, tokens, stop) = (b.clone(), tokens.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut n = task;
            while !stop.load(Ordering::Relaxed) {
                n = (n + 7) % tokens.len();
                b.get(&tokens[n]).await.unwrap();
                // A hit never waits on I/O: let the other tasks (the measurement) run.
                tokio::task::yield_now().await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut delays = Vec::new();
    for (i, issued) in sessions.iter().enumerate().take(150) {
        let cached = b.get(&issued.token).await.unwrap().unwrap();
        match i % 3 {
            0 => {
                assert!(a.delete(&issued.token).await.unwrap());
                delays.push(until(&b, &issued.token, |s| s.is_none()).await);
            }
            1 => {
                let mut session = a.get(&issued.token).await.unwrap().unwrap();
                session.set_attribute("step", i);
                let _ = a.update(&session).await.unwrap();
                let version = cached.version + 1;
                delays.push(
                    until(&b, &issued.token, |s| {
                        s.is_some_and(|s| s.version == version)
                    })
                    .await,
                );
            }
            _ => {
                a.rotate(&issued.token).await.unwrap().unwrap();
                delays.push(until(&b, &issued.token, |s| s.is_none()).await);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    delays.sort();
    let stats = b.near_cache_stats().unwrap();
    let hit_ratio = stats.hits as f64 / (stats.hits + stats.misses + stats.bypassed).max(1) as f64;
    println!(
        "{what}: {} changes by instance A seen by instance B after p50 {:?}, p99 {:?}, max {:?}; B under 32 reading tasks, hit ratio {hit_ratio:.3} ({stats:?})",
        delays.len(),
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.last().unwrap(),
    );
    assert!(
        *delays.last().unwrap() < Duration::from_millis(100),
        "{what}: {delays:?}"
    );
    assert!(
        hit_ratio > 0.5,
        "{what}: the cache served few reads: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instances_writes_reach_another_instances_cache() {
    let url = redis_url();
    require_redis(&url);
    let prefix = unique_prefix("near2");
    let policy = SessionPolicy::default();
    let a = Arc::new(
        RedisStore::connect(near(&url, &prefix), policy.clone())
            .await
            .unwrap(),
    );
    let b = Arc::new(
        RedisStore::connect(near(&url, &prefix), policy)
            .await
            .unwrap(),
    );
    changes_reach_the_other_instance(a, b, "one node").await;
    redis_delete_prefix(&url, &prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_writes_reach_another_instances_cache() {
    let cluster = RedisCluster::shared();
    let prefix = unique_prefix("nearcluster");
    let policy = SessionPolicy::default();
    let a = Arc::new(
        RedisStore::connect(near(&cluster.url(), &prefix), policy.clone())
            .await
            .unwrap(),
    );
    let b = Arc::new(
        RedisStore::connect(near(&cluster.url(), &prefix), policy)
            .await
            .unwrap(),
    );
    changes_reach_the_other_instance(a, b, "cluster").await;
    cluster.delete_prefix(&prefix);
}

/// A caching store whose connections (tracking included) go through a proxy of its own, a plain
/// store straight to the shared Redis under the same prefix, and a session the caching store
/// has read: (caching store, plain store, proxy, the session, the URL, the prefix).
async fn behind_a_proxy(
    label: &str,
    checkout_timeout: Duration,
) -> (
    RedisStore,
    RedisStore,
    FaultProxy,
    session_core::IssuedSession,
    String,
    String,
) {
    let url = redis_url();
    require_redis(&url);
    let proxy = FaultProxy::start(shared_port(&url)).await;
    let prefix = unique_prefix(label);
    let through = format!("redis://127.0.0.1:{}/0", proxy.port());
    let config = near(&through, &prefix).checkout_timeout(checkout_timeout);
    let cached = RedisStore::connect(config, SessionPolicy::default())
        .await
        .unwrap();
    let plain = RedisStore::connect(
        RedisConfig::new(url.clone()).key_prefix(&prefix),
        SessionPolicy::default(),
    )
    .await
    .unwrap();
    tracking(&cached).await;
    let issued = plain.create(NewUserSession::new("alice")).await.unwrap();
    cached.get(&issued.token).await.unwrap().unwrap();
    (cached, plain, proxy, issued, url, prefix)
}

/// The store's connections (tracking included) go through a proxy: once it cuts them, the cache
/// is flushed and bypassed, so a session deleted meanwhile by another instance is never served
/// from memory; tracking comes back on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_tracking_connection_flushes_and_bypasses_the_cache() {
    let (a, other, proxy, issued, url, prefix) =
        behind_a_proxy("nearcut", Duration::from_millis(500)).await;
    a.get(&issued.token).await.unwrap().unwrap();
    assert!(a.near_cache_stats().unwrap().hits >= 1);

    proxy.cut();
    // The tracking connection's end is a push the store hears at once.
    let deadline = Instant::now() + Duration::from_secs(2);
    while a.near_cache_stats().unwrap().tracking {
        assert!(Instant::now() < deadline, "the cut went unnoticed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(a.near_cache_stats().unwrap().entries, 0);
    assert!(other.delete(&issued.token).await.unwrap());
    // Whatever answers now comes from Redis (or fails while reconnecting), never from memory.
    for _ in 0..50 {
        if let Ok(read) = a.get(&issued.token).await {
            assert!(read.is_none(), "a deleted session was served");
        }
    }
    tracking(&a).await;
    assert!(a.get(&issued.token).await.unwrap().is_none());
    redis_delete_prefix(&url, &prefix);
}

/// A tracking connection that stops answering without closing (the proxy holds every byte) is
/// found by its ping (every 250 ms, bounded by the checkout time-out) and the cache is bypassed
/// from then on: a session deleted elsewhere meanwhile is never served. The wait for the
/// detection is polled with a generous deadline (the bound is a design figure, not asserted here:
/// a loaded machine may run the check late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tracking_connection_is_found_and_the_cache_bypassed() {
    let (a, other, proxy, issued, url, prefix) =
        behind_a_proxy("nearstall", Duration::from_millis(300)).await;

    proxy.stall(true);
    let stalled = Instant::now();
    assert!(other.delete(&issued.token).await.unwrap());
    let deadline = stalled + Duration::from_secs(15);
    while a.near_cache_stats().unwrap().tracking {
        assert!(
            Instant::now() < deadline,
            "still trusted {:?} into the stall: {:?}",
            stalled.elapsed(),
            a.near_cache_stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The data path is stalled too: a read fails, it does not answer from memory.
    let read = a.get(&issued.token).await;
    assert!(
        !matches!(read, Ok(Some(_))),
        "served a deleted session: {read:?}"
    );
    proxy.stall(false);
    tracking(&a).await;
    assert!(a.get(&issued.token).await.unwrap().is_none());
    redis_delete_prefix(&url, &prefix);
}

/// Two caching instances on `url`, `n` sessions created through the first and read (cached)
/// through the second.
async fn two_warm_instances(
    url: &str,
    prefix: &str,
    n: usize,
) -> (RedisStore, RedisStore, Vec<session_core::IssuedSession>) {
    let policy = SessionPolicy::default();
    let a = RedisStore::connect(near(url, prefix), policy.clone())
        .await
        .unwrap();
    let b = RedisStore::connect(near(url, prefix), policy)
        .await
        .unwrap();
    tracking(&a).await;
    tracking(&b).await;
    let mut issued = Vec::new();
    for i in 0..n {
        issued.push(
            a.create(NewUserSession::new(format!("user-{i}")))
                .await
                .unwrap(),
        );
    }
    for s in &issued {
        b.get(&s.token).await.unwrap().unwrap();
    }
    (a, b, issued)
}

/// For each session: read twice through `b` (the second read from memory once `b` serves
/// again), delete through `a` (a temporary error met in a switch retried), and time until `b`
/// answers `None`. Every delete must reach `b` within 100 ms, and `b` must have served at least
/// half the second reads from memory.
async fn deletes_reach_the_cache(
    a: &RedisStore,
    b: &RedisStore,
    issued: &[session_core::IssuedSession],
    what: &str,
) {
    let served_before = b.near_cache_stats().unwrap().hits;
    let mut delays = Vec::new();
    for s in issued {
        let _ = b.get(&s.token).await;
        let _ = b.get(&s.token).await;
        assert!(
            common::settled(|| a.delete(&s.token)).await,
            "the session was live"
        );
        delays.push(until(b, &s.token, |read| read.is_none()).await);
    }
    delays.sort();
    println!(
        "{what}: {} deletes seen by the other instance after p50 {:?}, max {:?}",
        delays.len(),
        percentile(&delays, 0.5),
        delays.last().unwrap()
    );
    assert!(
        *delays.last().unwrap() < Duration::from_millis(100),
        "{what}: {delays:?}"
    );
    let served = b.near_cache_stats().unwrap().hits - served_before;
    assert!(
        served * 2 >= issued.len() as u64,
        "{what}: B served {served} of {} second reads from memory",
        issued.len()
    );
}

/// A manual `CLUSTER FAILOVER` moves a master's slots to its replica without closing any
/// connection: the replica's tracking connection (every node is tracked, replicas included)
/// carries the invalidations of the writes it now takes, so another instance's delete right after
/// the failover still reaches this instance's cache at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_manual_cluster_failover_writes_still_reach_the_cache() {
    let cluster = RedisCluster::start();
    let prefix = unique_prefix("nearfailover");
    let (a, b, issued) = two_warm_instances(&cluster.url(), &prefix, 64).await;
    let master = cluster.masters()[0];
    let replica = cluster.replicas_of(master)[0];
    let () = redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query(&mut cluster.node_connection(replica))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.masters().contains(&master) {
        assert!(Instant::now() < deadline, "the replica did not take over");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // B keeps its entries through the switch (the nodes are the same, only their roles moved),
    // so each delete must reach it as an invalidation from the new master.
    deletes_reach_the_cache(&a, &b, &issued, "after a manual Cluster failover").await;
    cluster.delete_prefix(&prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_sentinel_writes_reach_another_instances_cache() {
    let sentinel = RedisSentinel::shared();
    let prefix = unique_prefix("nearsentinel");
    let policy = SessionPolicy::default();
    let a = Arc::new(
        RedisStore::connect(near(&sentinel.url(), &prefix), policy.clone())
            .await
            .unwrap(),
    );
    let b = Arc::new(
        RedisStore::connect(near(&sentinel.url(), &prefix), policy)
            .await
            .unwrap(),
    );
    changes_reach_the_other_instance(a, b, "sentinel").await;
    sentinel.delete_prefix(&prefix);
}

/// `SENTINEL FAILOVER`: the moment the Sentinels announce the new master, the cache stops
/// serving (the old master's invalidations say nothing of the new one's writes); tracking moves to
/// the new master, and its writes reach the cache again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_moves_tracking_to_the_new_master() {
    let sentinel = RedisSentinel::start();
    let prefix = unique_prefix("nearsfailover");
    let (a, b, issued) = two_warm_instances(&sentinel.url(), &prefix, 16).await;
    let old = sentinel.master_port();
    sentinel.failover();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sentinel.master_port() == old {
        assert!(Instant::now() < deadline, "no failover");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracking(&b).await;
    // Deletes on the new master reach B's cache again, and B serves from memory again.
    deletes_reach_the_cache(&a, &b, &issued, "after a Sentinel failover").await;
}
