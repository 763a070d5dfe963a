//! The Redis store on a real Redis Cluster (3 masters, 3 replicas of `redis-server` on free
//! loopback ports): slot placement, and a steady load of 32 tasks through a killed master, a
//! manual failover and a live resharding. Each test that changes the topology has a cluster of
//! its own; the figures are printed (`--nocapture`) for docs/scaling.md.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;
use std::time::Duration;

use session_core::{NewUserSession, SessionPolicy, UserSessionStore};
use session_redis::{RedisConfig, RedisStore};
use session_testkit::servers::{RedisCluster, key_slot, redis_keys, unique_prefix};

const TASKS: usize = 32;

async fn store_on(cluster: &RedisCluster, prefix: &str) -> Arc<RedisStore> {
    let config = RedisConfig::new(cluster.url()).key_prefix(prefix);
    Arc::new(
        RedisStore::connect(config, SessionPolicy::default())
            .await
            .expect("Redis Cluster store"),
    )
}

/// Every key under `pattern`, from every master.
fn cluster_keys(cluster: &RedisCluster, pattern: &str) -> Vec<(u16, String)> {
    let mut keys = Vec::new();
    for port in cluster.masters() {
        let mut conn = cluster.node_connection(port);
        keys.extend(
            redis_keys(&mut conn, pattern)
                .into_iter()
                .map(|k| (port, k)),
        );
    }
    keys
}

/// A user's sessions and index live in one slot of one master, and every operation, the
/// scripts that read keys they find in the index included, runs there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_keys_share_one_slot_on_one_master() {
    let cluster = RedisCluster::shared();
    let prefix = unique_prefix("slots");
    let store = store_on(cluster, &prefix).await;
    let mut tokens = Vec::new();
    for user in ["alice", "bob", "carol", "dave"] {
        for _ in 0..3 {
            tokens.push(store.create(NewUserSession::new(user)).await.unwrap().token);
        }
    }
    for token in &tokens {
        assert!(store.touch(token).await.unwrap().is_some());
        let rotated = store.rotate(token).await.unwrap().unwrap();
        assert!(store.get(&rotated.token).await.unwrap().is_some());
    }
    for user in ["alice", "bob", "carol", "dave"] {
        assert_eq!(store.list_by_user(user).await.unwrap().len(), 3);
        let sessions = store.list_by_user(user).await.unwrap();
        let slots: std::collections::BTreeSet<u16> = cluster_keys(cluster, &format!("{prefix}*"))
            .iter()
            .filter(|(_, key)| {
                key.ends_with(&format!(":u:{user}"))
                    || sessions
                        .iter()
                        .any(|s| key.ends_with(&format!(":s:{}", s.handle.hash())))
            })
            .map(|(_, key)| key_slot(key))
            .collect();
        assert_eq!(slots.len(), 1, "{user}'s keys span slots {slots:?}");
    }
    assert_eq!(store.delete_by_user("alice", None).await.unwrap(), 3);
    store.purge_expired().await.unwrap();
    store.health().await.unwrap();
    cluster.delete_prefix(&prefix);
}

/// A master killed under load: its replica takes over (cluster-node-timeout on these nodes is
/// short), the store follows without being rebuilt, no call hangs past its time-outs, and only
/// sessions written in the replication window may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_under_load() {
    let cluster = Arc::new(RedisCluster::start());
    let prefix = unique_prefix("failover");
    let store = store_on(&cluster, &prefix).await;
    let victim = cluster.slot_owner(0);
    let killer = cluster.clone();
    let report = common::run_load(
        store.clone(),
        TASKS,
        Duration::from_secs(10),
        Duration::from_secs(2),
        move || {
            killer.kill(victim);
            killer.wait_for_failover(victim, Duration::from_secs(15));
        },
    )
    .await;
    println!(
        "{} ({} stalled connections replaced)",
        report.line("cluster, master killed (SIGKILL)"),
        store.pool_state().broken_closed
    );
    // Replication to the replica is asynchronous: only a write acknowledged just before the
    // kill can be missing from it.
    report.assert_failover_kept_its_bounds(store.config(), -1000..=0);
    // Every master answers again, the store unchanged (a temporary error while the client's view
    // of the masters catches up, under CI's load, is waited out).
    common::settled(|| store.health()).await;
}

/// A manual `CLUSTER FAILOVER` (the replica takes over in step with its master) under load
/// loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_under_load_loses_nothing() {
    let cluster = Arc::new(RedisCluster::start());
    let prefix = unique_prefix("manual");
    let store = store_on(&cluster, &prefix).await;
    let master = cluster.slot_owner(0);
    let replica = cluster.replicas_of(master)[0];
    let mover = cluster.clone();
    let report = common::run_load(
        store.clone(),
        TASKS,
        Duration::from_secs(8),
        Duration::from_secs(2),
        move || {
            let () = redis::cmd("CLUSTER")
                .arg("FAILOVER")
                .query(&mut mover.node_connection(replica))
                .unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while mover.slot_owner(0) != replica {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the replica did not take over"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        },
    )
    .await;
    println!(
        "{} ({} stalled connections replaced)",
        report.line("cluster, manual CLUSTER FAILOVER"),
        store.pool_state().broken_closed
    );
    assert!(report.lost_ms.is_empty(), "{report:?}");
    assert_eq!(report.unlisted, 0, "{report:?}");
    assert_eq!(report.revoked_but_found, 0, "{report:?}");
    assert_eq!(report.failed_at_the_end, 0, "{report:?}");
}

/// Rounds of gets of `tokens`' sessions, all at once, for `span`: how many were answered, and
/// how many failed with a temporary error (a time-out, or a new connection that could not open).
async fn gets_for(
    store: &RedisStore,
    tokens: &[session_core::SessionToken],
    span: Duration,
) -> (usize, usize) {
    let (mut answered, mut timed_out) = (0, 0);
    let until = std::time::Instant::now() + span;
    while std::time::Instant::now() < until {
        let round = futures_util::future::join_all(tokens.iter().map(|t| store.get(t))).await;
        for outcome in round {
            match outcome {
                Ok(_) => answered += 1,
                Err(e) if e.is_temporary() => timed_out += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
    }
    (answered, timed_out)
}

/// A cluster connection that times out every command, answering none, for its stall time
/// (`2 x response_timeout + checkout_timeout`) is replaced by a new one (redis-rs can leave one
/// waiting for ever in a slot refresh: ADR 0032); a master that stops answering is no reason,
/// as the other masters' commands are still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_connection_that_answers_nothing_is_replaced_and_one_silent_master_is_no_reason()
{
    let cluster = RedisCluster::start();
    let prefix = unique_prefix("stall");
    // Replaced after 2 x 500 ms + 1 s of time-outs only (`cluster_stall_after`).
    let config = RedisConfig::new(cluster.url())
        .key_prefix(&prefix)
        .response_timeout(Duration::from_millis(500))
        .checkout_timeout(Duration::from_secs(1));
    let store = RedisStore::connect(config, SessionPolicy::default())
        .await
        .expect("Redis Cluster store");
    let mut tokens = Vec::new();
    for user in 0..24 {
        tokens.push(
            store
                .create(NewUserSession::new(format!("user-{user}")))
                .await
                .unwrap()
                .token,
        );
    }
    let pause = |ports: &[u16], span: Duration| {
        for &port in ports {
            let _: () = redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(u64::try_from(span.as_millis()).unwrap())
                .arg("ALL")
                .query(&mut cluster.node_connection(port))
                .unwrap();
        }
    };
    let masters = cluster.masters();
    let span = Duration::from_secs(6);

    pause(&masters[..1], span);
    let (answered, timed_out) = gets_for(&store, &tokens, span).await;
    assert!(
        answered > 0 && timed_out > 0,
        "one master silent: {answered} answered, {timed_out} timed out"
    );
    assert_eq!(
        store.pool_state().broken_closed,
        0,
        "replaced while two masters answered"
    );

    pause(&masters, span);
    let (answered, timed_out) = gets_for(&store, &tokens, span).await;
    assert!(
        timed_out > 0,
        "every master silent: {answered} answered, {timed_out} timed out"
    );
    // Every master stayed silent for several stall times: a connection opened in place of the
    // first may stall in its turn. Once the pause is over, the one in use answers.
    for token in &tokens {
        assert!(common::settled(|| store.get(token)).await.is_some());
    }
    let replaced = store.pool_state().broken_closed;
    assert!(replaced >= 1, "not replaced, with every command timing out");
    // The other tests' loads share the CPUs: a get may still time out now and then, but the
    // connection answers, so it stays.
    let (answered, _) = gets_for(&store, &tokens, span).await;
    assert!(answered > 0);
    assert_eq!(
        store.pool_state().broken_closed,
        replaced,
        "replaced while answering"
    );
    cluster.delete_prefix(&prefix);
}

/// Slots that hold sessions move to another master while the load runs: first 256 slots in
/// batches of 100 keys, then every slot holding a user's index (and that user's sessions) one key
/// per `MIGRATE`, so scripts meet slots half moved. Nothing is lost, every live session stays in
/// its user's index, and the only failures are temporary (redirections the client retried until
/// the response time-out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_resharding_loses_nothing() {
    let cluster = Arc::new(RedisCluster::start());
    let prefix = unique_prefix("reshard");
    let store = store_on(&cluster, &prefix).await;
    let (from, to) = (cluster.slot_owner(0), cluster.slot_owner(16383));
    assert_ne!(from, to);
    let mover = cluster.clone();
    let moved = Arc::new(std::sync::Mutex::new((0usize, 0usize, 0usize)));
    let counted = moved.clone();
    let pattern = format!("{prefix}*:u:*");
    let report = common::run_load(
        store.clone(),
        TASKS,
        Duration::from_secs(12),
        Duration::from_secs(3),
        move || {
            let mut whole = 0;
            for slot in 0..256 {
                whole += mover.migrate_slot(slot, to);
            }
            let mut slots: Vec<u16> = redis_keys(&mut mover.node_connection(from), &pattern)
                .iter()
                .map(|k| key_slot(k))
                .collect();
            slots.sort_unstable();
            slots.dedup();
            let mut one_by_one = 0;
            for &slot in &slots {
                one_by_one += mover.migrate_slot_in_batches(slot, to, 1);
            }
            *counted.lock().unwrap() = (whole, slots.len(), one_by_one);
        },
    )
    .await;
    let (whole, user_slots, one_by_one) = *moved.lock().unwrap();
    println!(
        "{} (256 slots with {whole} keys moved in batches, then {user_slots} slots holding users' indexes with {one_by_one} keys one key at a time, from :{from} to :{to}; {} stalled connections replaced)",
        report.line("cluster, live resharding"),
        store.pool_state().broken_closed
    );
    assert!(
        whole > 0 && one_by_one > user_slots,
        "no slot held a user's sessions"
    );
    assert_eq!(cluster.slot_owner(255), to);
    assert!(report.lost_ms.is_empty(), "{report:?}");
    assert_eq!(report.unlisted, 0, "{report:?}");
    assert_eq!(report.revoked_but_found, 0, "{report:?}");
    // A script on a half-moved slot gets `TRYAGAIN`, which the client retries within the
    // response time-out; a slot moved one key at a time can outlast it: a temporary `Timeout`.
    assert!(
        report
            .errors
            .keys()
            .all(|kind| kind == "Timeout" || kind == "Unavailable"),
        "{report:?}"
    );
    assert_eq!(report.failed_at_the_end, 0, "{report:?}");
}

/// A cluster none of whose seeds answers is the same prompt, temporary `Unavailable` as a
/// single node that refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_seeds_are_a_prompt_temporary_error() {
    let (a, b) = (
        session_testkit::servers::free_port(),
        session_testkit::servers::free_port(),
    );
    let config = RedisConfig::new(format!("redis+cluster://127.0.0.1:{a},127.0.0.1:{b}"));
    let started = std::time::Instant::now();
    let err = RedisStore::connect(config, SessionPolicy::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, session_core::SessionError::Unavailable { .. }) && err.is_temporary(),
        "{err:?}"
    );
    // Generous: only a client that keeps retrying unreachable seeds (tens of seconds) fails it.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// Native expiry on a Cluster: once a user's sessions expire, no key of theirs remains on any
/// master (the index carries its own TTL), with no purge called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_of_a_user_remains_once_their_sessions_expire() {
    let cluster = RedisCluster::shared();
    let prefix = unique_prefix("ttl");
    let mut policy = SessionPolicy::default();
    // Long enough that the keys are surely all there when counted on a busy machine.
    policy.idle_timeout = Duration::from_secs(3);
    policy.absolute_timeout = Duration::from_secs(5);
    policy.touch_interval = Duration::from_millis(100);
    let config = RedisConfig::new(cluster.url()).key_prefix(prefix.clone());
    let store = RedisStore::connect(config, policy).await.unwrap();
    let first = store.create(NewUserSession::new("alice")).await.unwrap();
    store.create(NewUserSession::new("alice")).await.unwrap();
    store.create(NewUserSession::new("bob")).await.unwrap();
    assert_eq!(cluster_keys(cluster, &format!("{prefix}*")).len(), 5);
    // Bounded polling for Redis's own expiry, not a speed claim.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = cluster_keys(cluster, &format!("{prefix}*"));
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "keys outlived their sessions: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.get(&first.token).await.unwrap(), None);
    assert!(store.list_by_user("alice").await.unwrap().is_empty());
}

/// Corrupt data on a Cluster node is the same `Decode` error naming the session as on one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_session_data_is_a_decode_error_naming_the_handle() {
    let cluster = RedisCluster::shared();
    let prefix = unique_prefix("corrupt");
    let store = store_on(cluster, &prefix).await;
    let issued = store.create(NewUserSession::new("alice")).await.unwrap();
    let (port, key) = cluster_keys(cluster, &format!("{prefix}*:s:*"))
        .pop()
        .unwrap();
    let () = redis::cmd("HSET")
        .arg(&key)
        .arg("version")
        .arg("not a number")
        .query(&mut cluster.node_connection(port))
        .unwrap();
    let err = store.get(&issued.token).await.unwrap_err();
    assert!(
        matches!(&err, session_core::SessionError::Decode { handle: Some(h), .. } if h == issued.token.handle()),
        "{err:?}"
    );
    store.health().await.unwrap();
    cluster.delete_prefix(&prefix);
}

/// A seed that accepts connections and never answers (a dead address behind a firewall would
/// be like it) does not keep the store from using the cluster the other seeds lead to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_seed_does_not_keep_the_store_from_the_cluster() {
    let cluster = RedisCluster::shared();
    let silent = session_testkit::servers::StalledServer::start();
    let url = format!("{},127.0.0.1:{}", cluster.url(), silent.port());
    let prefix = unique_prefix("silent");
    let store = RedisStore::connect(
        RedisConfig::new(url).key_prefix(prefix.clone()),
        SessionPolicy::default(),
    )
    .await
    .expect("the live seeds lead to the cluster");
    let issued = store.create(NewUserSession::new("alice")).await.unwrap();
    assert!(store.get(&issued.token).await.unwrap().is_some());
    cluster.delete_prefix(&prefix);
}

/// A one-node URL that names a Cluster node answers redirections: a configuration mistake,
/// reported as a non-temporary error that says which URL to use, not as an outage to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_node_url_at_a_cluster_node_says_to_use_the_cluster_url() {
    let cluster = RedisCluster::shared();
    let master = cluster.masters()[0];
    let prefix = unique_prefix("moved");
    let store = RedisStore::connect(
        RedisConfig::new(format!("redis://127.0.0.1:{master}/0")).key_prefix(prefix.clone()),
        SessionPolicy::default(),
    )
    .await
    .unwrap();
    let mut refused = None;
    for n in 0..64 {
        if let Err(e) = store.create(NewUserSession::new(format!("user-{n}"))).await {
            refused = Some(e);
            break;
        }
    }
    let err = refused.expect("two thirds of the users live on other masters");
    assert!(!err.is_temporary(), "{err:?}");
    assert!(format!("{err:?}").contains("redis+cluster://"), "{err:?}");
    cluster.delete_prefix(&prefix);
}

/// A user's slot caught half way through a migration, its index moved and its sessions not:
/// every script names every key it touches, so Redis answers `TRYAGAIN` (which the client
/// retries) instead of running it where only some of the user's keys are, and once the slot has
/// moved each operation completes with the result it would have had. A script reading a key it
/// did not declare fails there ("non local key") instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_caught_half_way_through_a_migration_is_waited_out() {
    let cluster = RedisCluster::start();
    let prefix = unique_prefix("halfway");
    let mut policy = SessionPolicy::default();
    // Every touch writes, so it needs the index.
    policy.touch_interval = Duration::ZERO;
    policy.max_sessions_per_user = Some(4);
    // Room for the retries: the migration is finished after a pause of its own.
    let config = RedisConfig::new(cluster.url())
        .key_prefix(&prefix)
        .response_timeout(Duration::from_secs(10));
    let store = Arc::new(RedisStore::connect(config, policy).await.unwrap());
    let user = "halfway";
    let mut issued = Vec::new();
    for _ in 0..3 {
        issued.push(store.create(NewUserSession::new(user)).await.unwrap());
    }
    let keys = cluster_keys(&cluster, &format!("{prefix}*"));
    let index = keys
        .iter()
        .map(|(_, key)| key.as_str())
        .find(|key| key.ends_with(&format!(":u:{user}")))
        .unwrap()
        .to_owned();
    let slot = key_slot(&index);
    let from = cluster.slot_owner(slot);
    let to = *cluster.masters().iter().find(|&&m| m != from).unwrap();
    let migration = cluster.begin_migration(slot, to).unwrap();
    migration.move_keys(&[&index]);

    let (touched, deleted, rotated) = (
        issued[0].token.clone(),
        issued[1].token.clone(),
        issued[2].token.clone(),
    );
    let s = store.clone();
    let touch = tokio::spawn(async move { s.touch(&touched).await });
    let s = store.clone();
    let delete = tokio::spawn(async move { s.delete(&deleted).await });
    let s = store.clone();
    let rotate = tokio::spawn(async move { s.rotate(&rotated).await });
    let s = store.clone();
    let list = tokio::spawn(async move { s.list_by_user(user).await });
    let s = store.clone();
    let create = tokio::spawn(async move { s.create(NewUserSession::new(user)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    migration.finish();
    assert_eq!(cluster.slot_owner(slot), to);

    let touched = touch.await.unwrap().expect("touch").expect("still live");
    assert!(touched.last_seen_at >= issued[0].session.last_seen_at);
    assert!(
        delete.await.unwrap().expect("delete"),
        "the session was live"
    );
    let rotated = rotate.await.unwrap().expect("rotate").expect("still live");
    let listed = list.await.unwrap().expect("list_by_user");
    assert!(!listed.is_empty());
    let created = create.await.unwrap().expect("create under a cap");

    let mut now_listed: Vec<_> = store
        .list_by_user(user)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.handle)
        .collect();
    now_listed.sort();
    let mut expected = vec![
        issued[0].session.handle.clone(),
        rotated.session.handle.clone(),
        created.session.handle.clone(),
    ];
    expected.sort();
    assert_eq!(now_listed, expected);
    assert!(store.get(&issued[1].token).await.unwrap().is_none());
    assert!(store.get(&issued[2].token).await.unwrap().is_none());
    // Every key of the user is on the new master, the index holding exactly the live sessions.
    let left: Vec<_> = cluster_keys(&cluster, &format!("{prefix}*"))
        .into_iter()
        .filter(|(port, _)| *port != to)
        .collect();
    assert!(left.is_empty(), "{left:?}");
    cluster.delete_prefix(&prefix);
}

/// A walk's cursor names a master by its address: a cursor whose master is no longer one (a
/// fail-over since the page was read) starts the walk again rather than walk another master from
/// that master's SCAN cursor, so every session is still returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_cursor_of_a_master_that_is_gone_walks_again_and_skips_nothing() {
    let cluster = RedisCluster::shared();
    let prefix = unique_prefix("walkaddr");
    let store = store_on(cluster, &prefix).await;
    let mut handles = std::collections::HashSet::new();
    for i in 0..30 {
        let issued = store
            .create(NewUserSession::new(format!("user-{i}")))
            .await
            .unwrap();
        handles.insert(issued.session.handle);
    }
    let page = store.scan(None, 4).await.unwrap();
    let next = page.next.expect("30 sessions: the walk goes on");
    let text = next.as_str();
    assert!(
        cluster
            .masters()
            .iter()
            .any(|port| text.contains(&format!(":{port}|"))),
        "the cursor names a master's address: {text}"
    );
    // The same position on a master that is gone (port 1 serves no Redis).
    let gone = text.replacen(
        &text.split('|').nth(1).unwrap().to_owned(),
        "127.0.0.1:1",
        1,
    );
    assert_ne!(gone, text);
    let mut seen: std::collections::HashSet<_> =
        page.sessions.into_iter().map(|s| s.handle).collect();
    let mut cursor = Some(session_core::ScanCursor::new(gone));
    while let Some(at) = cursor {
        let page = store.scan(Some(&at), 4).await.unwrap();
        seen.extend(page.sessions.into_iter().map(|s| s.handle));
        cursor = page.next;
    }
    assert!(handles.is_subset(&seen), "a session was skipped");
    for i in 0..30 {
        store
            .delete_by_user(&format!("user-{i}"), None)
            .await
            .unwrap();
    }
}
