//! The local topologies the cluster and Sentinel tests run on: a cluster forms completely, slots
//! are computed and moved as Redis does, masters fail over, and no process outlives its test.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use session_testkit::servers::{
    CLUSTER_SLOTS, RedisCluster, RedisSentinel, SENTINEL_MASTER_NAME, key_slot, unique_prefix,
};

/// The `redis-server` processes (`pgrep -af` lines) whose title names 127.0.0.1:`port`.
fn processes_on(port: u16) -> Vec<String> {
    let out = std::process::Command::new("pgrep")
        .args(["-af", &format!("127\\.0\\.0\\.1:{port}([^0-9]|$)")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The directories of the topology nodes on `ports` this process started.
fn node_dirs(label: &str, pid: u32, ports: &[u16]) -> Vec<std::path::PathBuf> {
    ports
        .iter()
        .map(|p| std::env::temp_dir().join(format!("session-test-{label}-{pid}-{p}")))
        .collect()
}

/// Panics unless, within 5 s, no process runs on `ports` and none of `dirs` exists.
fn assert_gone(ports: &[u16], dirs: &[std::path::PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = ports.iter().flat_map(|&p| processes_on(p)).collect();
        let dirs_left: Vec<_> = dirs.iter().filter(|d| d.exists()).collect();
        if left.is_empty() && dirs_left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {left:?} {dirs_left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A key in the slot the master on `port` serves: `prefix` plus a counter, found by trying.
fn key_served_by(cluster: &RedisCluster, port: u16, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| cluster.slot_owner(key_slot(k)) == port)
        .unwrap()
}

/// SET through the cluster as a client does it: to `port` first, then where `MOVED` and `ASK`
/// (after `ASKING`) redirect, retrying on `TRYAGAIN`.
fn set_following_redirects(
    connections: &mut HashMap<u16, redis::Connection>,
    mut port: u16,
    key: &str,
    value: &str,
) {
    let mut asking = false;
    for _ in 0..50 {
        let conn = connections.entry(port).or_insert_with(|| {
            redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .unwrap()
                .get_connection()
                .unwrap()
        });
        let result: redis::RedisResult<()> = if asking {
            redis::pipe()
                .cmd("ASKING")
                .ignore()
                .cmd("SET")
                .arg(key)
                .arg(value)
                .ignore()
                .query(conn)
        } else {
            redis::cmd("SET").arg(key).arg(value).query(conn)
        };
        match result {
            Ok(()) => return,
            Err(e) => {
                // `MOVED <slot> <ip:port>`, `ASK <slot> <ip:port>`: `redirect_node` is the address.
                let to = e
                    .redirect_node()
                    .and_then(|(address, _slot)| address.rsplit(':').next()?.parse().ok());
                match (e.code(), to) {
                    (Some("MOVED"), Some(to)) => (port, asking) = (to, false),
                    (Some("ASK"), Some(to)) => (port, asking) = (to, true),
                    (Some("TRYAGAIN"), _) => std::thread::sleep(Duration::from_millis(10)),
                    _ => panic!("SET {key} on {port}: {e}"),
                }
            }
        }
    }
    panic!("SET {key}: too many redirections");
}

#[test]
fn the_shared_cluster_is_fully_formed() {
    let started = Instant::now();
    let cluster = RedisCluster::shared();
    println!("shared cluster ready after {:?}", started.elapsed());

    let ports = cluster.ports();
    assert_eq!(ports.len(), 6);
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    assert_eq!(
        cluster.url(),
        format!("redis+cluster://{}", nodes.join(","))
    );
    assert_eq!(
        cluster.seeds(),
        ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
    );

    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "{masters:?}");
    let mut all: Vec<u16> = masters.clone();
    for &master in &masters {
        let replicas = cluster.replicas_of(master);
        assert_eq!(replicas.len(), 1, "replicas of {master}: {replicas:?}");
        all.extend(replicas);
    }
    all.sort_unstable();
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    assert_eq!(all, sorted, "every node is a master or a replica of one");

    // What a client reads its routing table from, on every node: all slots, each range with a
    // master and its replica.
    for &port in &ports {
        let ranges: Vec<(u16, u16, Vec<redis::Value>, Vec<redis::Value>)> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut cluster.node_connection(port))
            .unwrap();
        let covered: u32 = ranges.iter().map(|(a, b, _, _)| u32::from(b - a) + 1).sum();
        assert_eq!(covered, u32::from(CLUSTER_SLOTS), "CLUSTER SLOTS of {port}");
    }
    assert!(masters.contains(&cluster.slot_owner(0)));
    assert!(masters.contains(&cluster.slot_owner(CLUSTER_SLOTS - 1)));
}

#[test]
fn key_slot_agrees_with_cluster_keyslot() {
    // The CRC16/XMODEM check value, and the hash tag examples of the cluster specification.
    assert_eq!(key_slot("123456789"), 0x31C3);
    assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
    // An empty tag does not count: the whole key is hashed (checked against the server below).
    assert_ne!(key_slot("foo{}{bar}"), key_slot("bar"));

    let cluster = RedisCluster::shared();
    let mut conn = cluster.node_connection(cluster.ports()[0]);
    for key in [
        "",
        "a",
        "123456789",
        "user:1000",
        "{user1000}.following",
        "{user1000}.followers",
        "foo{}{bar}",
        "foo{{bar}}zap",
        "foo{bar}{zap}",
        "{}",
        "}{",
        "{a",
        "session:{k3f9}:idx",
        "ünïcødé{tag}",
    ] {
        let expected: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)
            .unwrap();
        assert_eq!(key_slot(key), expected, "slot of {key:?}");
    }
}

#[test]
fn migrate_slot_moves_the_keys_of_a_slot_while_a_client_writes_to_it() {
    let cluster = RedisCluster::shared();
    let tag = unique_prefix("reshard");
    let slot = key_slot(&format!("{{{tag}}}"));
    let source = cluster.slot_owner(slot);
    let target = *cluster.masters().iter().find(|&&m| m != source).unwrap();

    let mut on_source = cluster.node_connection(source);
    let keys: Vec<String> = (0..50).map(|i| format!("{{{tag}}}:{i}")).collect();
    for key in &keys {
        assert_eq!(key_slot(key), slot);
        let () = redis::cmd("SET")
            .arg(key)
            .arg(format!("value of {key}"))
            .query(&mut on_source)
            .unwrap();
    }

    // A client writing to the slot throughout, following redirections as a cluster client does.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, tag) = (stop.clone(), tag.clone());
        std::thread::spawn(move || {
            let mut connections = HashMap::new();
            let mut written = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let key = format!("{{{tag}}}:live:{}", written.len());
                set_following_redirects(&mut connections, source, &key, &key);
                written.push(key);
            }
            written
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    let moved = cluster.migrate_slot(slot, target);
    println!(
        "migrated slot {slot} ({moved} keys) in {:?}",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();

    assert!(moved >= keys.len(), "moved {moved}");
    assert_eq!(cluster.slot_owner(slot), target);
    for port in cluster.ports() {
        let mut conn = cluster.node_connection(port);
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut conn).unwrap();
        let owner = nodes
            .lines()
            .find(|l| {
                l.contains("master") && {
                    l.split_whitespace()
                        .skip(8)
                        .any(|r| match r.split_once('-') {
                            Some((a, b)) => {
                                a.parse::<u16>().is_ok_and(|a| a <= slot)
                                    && b.parse::<u16>().is_ok_and(|b| slot <= b)
                            }
                            None => r.parse::<u16>() == Ok(slot),
                        })
                }
            })
            .unwrap();
        assert!(
            owner.contains(&format!(":{target}@")),
            "node {port}: {owner}"
        );
    }
    let count = |port: u16| -> u64 {
        redis::cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(slot)
            .query(&mut cluster.node_connection(port))
            .unwrap()
    };
    assert_eq!(count(source), 0);
    assert_eq!(count(target), (keys.len() + written.len()) as u64);
    let mut on_target = cluster.node_connection(target);
    for key in &keys {
        let value: String = redis::cmd("GET").arg(key).query(&mut on_target).unwrap();
        assert_eq!(value, format!("value of {key}"));
    }
    for key in &written {
        let value: String = redis::cmd("GET").arg(key).query(&mut on_target).unwrap();
        assert_eq!(&value, key);
    }
    println!("a client wrote {} keys during the migration", written.len());
    let () = redis::cmd("DEL")
        .arg(&keys)
        .arg(&written)
        .query(&mut on_target)
        .unwrap();
}

#[test]
fn a_killed_master_fails_over_to_its_replica_and_a_dropped_cluster_leaves_nothing() {
    let started = Instant::now();
    let cluster = RedisCluster::start();
    println!("private cluster ready after {:?}", started.elapsed());
    let ports = cluster.ports();
    let dirs = node_dirs("cluster", std::process::id(), &ports);
    assert!(dirs.iter().all(|d| d.exists()));

    let master = cluster.masters()[0];
    let replica = cluster.replicas_of(master)[0];
    let key = key_served_by(&cluster, master, "failover:");
    let mut conn = cluster.node_connection(master);
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("kept")
        .query(&mut conn)
        .unwrap();
    let acknowledged: u64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut conn)
        .unwrap();
    assert_eq!(acknowledged, 1);

    cluster.kill(master);
    let killed = Instant::now();
    let promoted = cluster.wait_for_failover(master, Duration::from_secs(20));
    println!("cluster failover took {:?}", killed.elapsed());
    assert_eq!(promoted, replica);
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "{masters:?}");
    assert!(masters.contains(&replica) && !masters.contains(&master));
    assert_eq!(cluster.slot_owner(key_slot(&key)), replica);
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query(&mut cluster.node_connection(replica))
        .unwrap();
    assert_eq!(value, "kept");

    drop(cluster);
    assert_gone(&ports, &dirs);
}

#[test]
fn a_killed_sentinel_master_fails_over_to_the_replica_and_a_dropped_setup_leaves_nothing() {
    let started = Instant::now();
    let sentinel = RedisSentinel::start();
    println!("sentinel setup ready after {:?}", started.elapsed());
    let sentinels = sentinel.sentinel_ports();
    assert_eq!(sentinels.len(), 3);
    let addresses: Vec<String> = sentinels.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    assert_eq!(
        sentinel.url(),
        format!(
            "redis+sentinel://{}/{SENTINEL_MASTER_NAME}",
            addresses.join(",")
        )
    );

    let master = sentinel.master_port();
    let replicas = sentinel.replica_ports();
    assert_eq!(replicas.len(), 1, "{replicas:?}");
    let mut ports = vec![master, replicas[0]];
    ports.extend(&sentinels);
    let dirs = node_dirs("sentinel", std::process::id(), &ports);
    assert!(dirs.iter().all(|d| d.exists()));

    let mut conn = sentinel.node_connection(master);
    let () = redis::cmd("SET")
        .arg("failover:key")
        .arg("kept")
        .query(&mut conn)
        .unwrap();
    let acknowledged: u64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut conn)
        .unwrap();
    assert_eq!(acknowledged, 1);

    assert_eq!(sentinel.kill_master(), master);
    let killed = Instant::now();
    let promoted = sentinel.wait_for_failover(master, Duration::from_secs(30));
    println!("sentinel failover took {:?}", killed.elapsed());
    assert_eq!(promoted, replicas[0]);
    assert_eq!(sentinel.master_port(), promoted);
    let value: String = redis::cmd("GET")
        .arg("failover:key")
        .query(&mut sentinel.node_connection(promoted))
        .unwrap();
    assert_eq!(value, "kept");

    drop(sentinel);
    assert_gone(&ports, &dirs);
}

/// Run by the next test in a process of its own: starts the shared cluster, prints its ports and
/// ends, never dropping it.
#[test]
#[ignore = "run by the_shared_cluster_ends_with_its_test_process, in a process of its own"]
fn holds_the_shared_cluster_and_ends() {
    let ports: Vec<String> = RedisCluster::shared()
        .ports()
        .iter()
        .map(u16::to_string)
        .collect();
    println!("PORTS {} PID {}", ports.join(","), std::process::id());
}

#[test]
fn the_shared_cluster_ends_with_its_test_process() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "holds_the_shared_cluster_and_ends",
            "--nocapture",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PORTS "))
        .unwrap_or_else(|| panic!("no ports in {stdout}"));
    let (ports, pid) = line.split_once(" PID ").unwrap();
    let ports: Vec<u16> = ports.split(',').map(|p| p.parse().unwrap()).collect();
    assert_eq!(ports.len(), 6);
    let dirs = node_dirs("cluster", pid.parse().unwrap(), &ports);
    assert_gone(&ports, &dirs);
}
