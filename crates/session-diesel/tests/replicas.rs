//! Read replicas against a real PostgreSQL primary and streaming standby that the testkit starts
//! for each test (`PgReplicaPair`: `initdb`, `pg_basebackup`, on free ports as the `postgres`
//! user; the shared server is not touched): routing, the lag fallback, and a replica killed under
//! load.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::Bool;
use session_core::{DbSessionProvider, PoolConfig, ScopeOptions, SessionError};
use session_diesel::{PgProvider, ReplicaConfig};
use session_testkit::servers::{PgReplicaPair, psql};

#[derive(QueryableByName)]
struct Recovery {
    #[diesel(sql_type = Bool)]
    on_replica: bool,
}

/// Whether a scope with these options ran on the replica (`pg_is_in_recovery()`).
async fn ran_on_replica(
    provider: &PgProvider,
    options: ScopeOptions,
) -> Result<bool, SessionError> {
    provider
        .transaction(options, async |conn| {
            diesel_async::RunQueryDsl::get_result::<Recovery>(
                diesel::sql_query("SELECT pg_is_in_recovery() AS on_replica"),
                conn,
            )
            .await
            .map(|r| r.on_replica)
            .map_err(|e| session_diesel::from_diesel("postgres", e))
        })
        .await
}

fn read_only() -> ScopeOptions {
    ScopeOptions::new().read_only()
}

async fn provider(pair: &PgReplicaPair, max_lag: Duration) -> PgProvider {
    let config = ReplicaConfig::new([pair.standby_url()])
        .max_lag(max_lag)
        .check_interval(Duration::from_millis(100));
    PgProvider::connect_with_replicas(&pair.primary_url(), PoolConfig::default(), config)
        .await
        .unwrap()
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Read-only scopes run on the replica, every other scope (and a read-only serializable one) on
/// the primary; a write attempted in a read-only scope fails there, and the replica's state says
/// it served them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_scopes_go_to_the_replica_and_the_rest_never_do() {
    let pair = PgReplicaPair::start();
    let provider = provider(&pair, Duration::from_secs(1)).await;
    wait_for("the replica is healthy", async || {
        provider.replica_states()[0].healthy
    })
    .await;
    for _ in 0..20 {
        assert!(ran_on_replica(&provider, read_only()).await.unwrap());
        assert!(
            !ran_on_replica(&provider, ScopeOptions::new())
                .await
                .unwrap()
        );
    }
    // A standby refuses SERIALIZABLE: such a read-only scope runs on the primary.
    let serializable = read_only().isolation(session_core::IsolationLevel::Serializable);
    assert!(!ran_on_replica(&provider, serializable).await.unwrap());
    let write = provider
        .transaction(read_only(), async |conn| {
            diesel_async::RunQueryDsl::execute(
                diesel::sql_query("CREATE TABLE nope (id int)"),
                conn,
            )
            .await
            .map_err(|e| session_diesel::from_diesel("postgres", e))
        })
        .await;
    assert!(write.is_err(), "a read-only scope wrote");
    let state = &provider.replica_states()[0];
    assert!(state.scopes >= 20, "{state:?}");
    assert!(!state.url.is_empty());
    assert_eq!(provider.read_only_scopes_on_primary(), 0);
    provider.close().await;
}

/// A replica whose replay is paused falls behind as the primary writes: past the bound it serves
/// no read-only scope (they run on the primary), and once it replays again it serves them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_the_bound_is_left_until_it_catches_up() {
    let pair = PgReplicaPair::start();
    let provider = provider(&pair, Duration::from_millis(500)).await;
    wait_for("the replica is healthy", async || {
        provider.replica_states()[0].healthy
    })
    .await;
    assert!(ran_on_replica(&provider, read_only()).await.unwrap());
    pair.pause_replay(true);
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (writing, url) = (writing.clone(), pair.primary_url());
        std::thread::spawn(move || {
            psql(&url, "CREATE TABLE IF NOT EXISTS ticks (at timestamptz)");
            while writing.load(Ordering::Relaxed) {
                psql(&url, "INSERT INTO ticks VALUES (now())");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let paused = Instant::now();
    wait_for("the lagging replica is left", async || {
        !provider.replica_states()[0].healthy
    })
    .await;
    let left_after = paused.elapsed();
    for _ in 0..10 {
        assert!(
            !ran_on_replica(&provider, read_only()).await.unwrap(),
            "read from a lagging replica"
        );
    }
    assert!(provider.read_only_scopes_on_primary() >= 10);
    let lag = provider.replica_states()[0].lag;
    pair.pause_replay(false);
    wait_for("the replica is back", async || {
        provider.replica_states()[0].healthy
    })
    .await;
    assert!(ran_on_replica(&provider, read_only()).await.unwrap());
    writing.store(false, Ordering::Relaxed);
    writer.join().unwrap();
    println!(
        "replay paused: left after {left_after:?} (bound 500 ms, checks every 100 ms), lag then {lag:?}"
    );
    assert!(left_after < Duration::from_secs(3), "{left_after:?}");
    provider.close().await;
}

/// The replica killed while 8 tasks run read-only scopes: the scopes that were on it fail with a
/// temporary error, and within a check or two every read-only scope runs on the primary, with no
/// failure after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_under_load_falls_back_to_the_primary() {
    let pair = PgReplicaPair::start();
    let provider = Arc::new(provider(&pair, Duration::from_secs(1)).await);
    wait_for("the replica is healthy", async || {
        provider.replica_states()[0].healthy
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let last_failure = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (provider, stop, done, failed, last_failure) = (
            provider.clone(),
            stop.clone(),
            done.clone(),
            failed.clone(),
            last_failure.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match ran_on_replica(&provider, read_only()).await {
                    Ok(_) => AtomicU64::fetch_add(&done, 1, Ordering::Relaxed),
                    Err(e) => {
                        assert!(e.is_temporary(), "a replica's loss is temporary: {e:?}");
                        *last_failure.lock().unwrap() = Some(Instant::now());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    pair.kill_standby();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let last = last_failure
        .lock()
        .unwrap()
        .map(|t| t.duration_since(killed));
    println!(
        "replica killed under 8 tasks: {} read-only scopes done, {} failed, the last failure {last:?} after the kill, {} ran on the primary",
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        provider.read_only_scopes_on_primary()
    );
    assert!(!provider.replica_states()[0].healthy);
    assert!(
        provider.read_only_scopes_on_primary() > 100,
        "the load did not go on on the primary"
    );
    assert!(
        last.is_none_or(|after| after < Duration::from_secs(2)),
        "failures went on {last:?} after the kill"
    );
    assert!(!ran_on_replica(&provider, read_only()).await.unwrap());
    provider.close().await;
}
