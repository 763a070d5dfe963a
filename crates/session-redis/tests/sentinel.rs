//! The Redis store through Redis Sentinel, by master name, on a real topology of its own
//! (1 master, 1 replica, 3 Sentinels on free loopback ports): the whole conformance suite on a
//! shared one, and a steady load of 32 tasks through a killed master and a manual failover, each
//! on a private one. The figures are printed (`--nocapture`) for docs/scaling.md.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;
use std::time::Duration;

use session_core::{SessionPolicy, UserSessionStore};
use session_redis::{RedisConfig, RedisStore};
use session_testkit::Opened;
use session_testkit::servers::{RedisSentinel, unique_prefix};

session_testkit::conformance_tests!(|policy| async move {
    let sentinel = RedisSentinel::shared();
    let prefix = unique_prefix("conf");
    let config = RedisConfig::new(sentinel.url()).key_prefix(prefix.clone());
    let store = RedisStore::connect(config, policy)
        .await
        .expect("Redis store through Sentinel");
    Opened::with_cleanup(Arc::new(store), move || sentinel.delete_prefix(&prefix))
});

const TASKS: usize = 32;

async fn store_on(sentinel: &RedisSentinel, prefix: &str) -> Arc<RedisStore> {
    let config = RedisConfig::new(sentinel.url()).key_prefix(prefix);
    Arc::new(
        RedisStore::connect(config, SessionPolicy::default())
            .await
            .expect("Redis store through Sentinel"),
    )
}

/// A private topology, a store on it, and the 32-task load for `total`, with `event` run 2 s in
/// on a blocking thread (given the topology and the master's port then): the topology, the
/// store, that port, and the report.
async fn load_through(
    label: &str,
    total: Duration,
    event: impl FnOnce(&RedisSentinel, u16) + Send + 'static,
) -> (Arc<RedisSentinel>, Arc<RedisStore>, u16, common::LoadReport) {
    let sentinel = Arc::new(RedisSentinel::start());
    let prefix = unique_prefix(label);
    let store = store_on(&sentinel, &prefix).await;
    let old = sentinel.master_port();
    let mover = sentinel.clone();
    let report = common::run_load(
        store.clone(),
        TASKS,
        total,
        Duration::from_secs(2),
        move || {
            event(&mover, old);
        },
    )
    .await;
    (sentinel, store, old, report)
}

/// The master killed under load: the Sentinels promote the replica, the store's new connections
/// ask them again and reach it, with no rebuild; no call hangs past its time-outs, and only
/// sessions written in the replication window may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_under_load() {
    let (sentinel, store, old, report) =
        load_through("failover", Duration::from_secs(12), move |killer, old| {
            killer.kill_master();
            killer.wait_for_failover(old, Duration::from_secs(20));
        })
        .await;
    println!("{}", report.line("sentinel, master killed (SIGKILL)"));
    // Replication to the replica is asynchronous: only a write acknowledged just before the
    // kill can be missing from it.
    report.assert_failover_kept_its_bounds(store.config(), -1000..=0);
    assert_ne!(sentinel.master_port(), old);
    store.health().await.unwrap();
}

/// `SENTINEL FAILOVER` under load: the old master stays up, and Sentinel does not stop writes to
/// it before promoting the replica, so writes it acknowledges until the Sentinels announce the new
/// master (`+switch-master`) are discarded when it resyncs as a replica; they are counted. The
/// store drops its connections to the old master at that announcement, not when the Sentinels
/// get round to demoting it (seconds later, which would lose far more), and no session created
/// before the switch is lost or goes missing from its user's index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_under_load_loses_at_most_what_was_written_in_the_switch() {
    let (_, _, _, report) = load_through("manual", Duration::from_secs(10), move |mover, old| {
        mover.failover();
        mover.wait_for_failover(old, Duration::from_secs(20));
    })
    .await;
    println!("{}", report.line("sentinel, manual SENTINEL FAILOVER"));
    // Lost: only writes acknowledged from the command until the announcement (about 1.2 s here),
    // not until the demotion of the old master (about 11 s: the event's length).
    assert!(
        report.lost_ms.iter().all(|ms| (-1000..=5000).contains(ms)),
        "{report:?}"
    );
    // The read-back ran once the old master had resynced, so it saw what survived: sessions and
    // indexes agree. A sign-out the old master ran in the switch window can be undone (Sentinel's
    // asynchronous replication; docs/scaling.md): reported by the line above, not asserted.
    assert_eq!(report.unlisted, 0, "{report:?}");
    assert_eq!(report.failed_at_the_end, 0, "{report:?}");
}

/// The planned way to move the master: `CLIENT PAUSE … WRITE` on it first, so that it accepts no
/// write it would later discard, then `SENTINEL FAILOVER`. Writes wait (and time out, a temporary
/// error) instead of being acknowledged and lost; the store follows the Sentinels' announcement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_switchover_with_writes_paused_loses_nothing() {
    let (_, _, _, report) = load_through("planned", Duration::from_secs(10), move |mover, old| {
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(30_000)
            .arg("WRITE")
            .query(&mut mover.node_connection(old))
            .unwrap();
        mover.failover();
        // Once the Sentinels name the new master, the old one's clients are closed (their
        // held writes with them: never acknowledged) and it may run again, for the
        // Sentinels' own reconfiguration of it, a write the pause holds too.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while mover.master_port() == old {
            assert!(std::time::Instant::now() < deadline, "no switch");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut conn = mover.node_connection(old);
        let _: () = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query(&mut conn)
            .unwrap();
        let _: () = redis::cmd("CLIENT")
            .arg("UNPAUSE")
            .query(&mut conn)
            .unwrap();
        mover.wait_for_failover(old, Duration::from_secs(20));
    })
    .await;
    println!(
        "{}",
        report.line("sentinel, CLIENT PAUSE WRITE then SENTINEL FAILOVER")
    );
    assert!(report.lost_ms.is_empty(), "{report:?}");
    assert_eq!(report.unlisted, 0, "{report:?}");
    assert_eq!(report.revoked_but_found, 0, "{report:?}");
    assert_eq!(report.failed_at_the_end, 0, "{report:?}");
}

/// Sentinels listed first that refuse or never answer are passed over, within the checkout's
/// time: each is given a share of it, and the next one asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_silent_sentinels_listed_first_are_passed_over() {
    let sentinel = RedisSentinel::shared();
    let silent = session_testkit::servers::StalledServer::start();
    let dead = session_testkit::servers::free_port();
    let live = sentinel.url();
    let hosts = live
        .strip_prefix("redis+sentinel://")
        .unwrap()
        .split_once('/')
        .unwrap();
    let url = format!(
        "redis+sentinel://127.0.0.1:{dead},127.0.0.1:{},{}/{}",
        silent.port(),
        hosts.0,
        hosts.1
    );
    let prefix = unique_prefix("passover");
    let store = RedisStore::connect(
        RedisConfig::new(url).key_prefix(prefix.clone()),
        SessionPolicy::default(),
    )
    .await
    .expect("the live Sentinels lead to the master");
    let issued = store
        .create(session_core::NewUserSession::new("alice"))
        .await
        .unwrap();
    assert!(store.get(&issued.token).await.unwrap().is_some());
    sentinel.delete_prefix(&prefix);
}
