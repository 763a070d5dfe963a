//! The Redis store on its three topologies, in one run: one node, a Redis Cluster and a
//! Sentinel-watched master, each a private set of fresh `redis-server` processes (no persistence)
//! started by `session_testkit::servers`.
//!
//! Each operation runs at 1 and 32 tasks on the three topologies one after the other, before the
//! next operation or task count; which topology goes first rotates from row to row, so none
//! always runs on a warmer (or more tired) machine.

use std::sync::Arc;

use session_core::{SessionPolicy, SessionToken, UserSessionStore};
use session_redis::{RedisConfig, RedisStore};
use session_testkit::servers::{RedisCluster, RedisSentinel, RedisServer};

use crate::{CONCURRENCY, Op, Outcome, PREFILL, USERS, prefill, row_named, run_store};

/// The operations compared (`create+delete` adds nothing a topology would change).
const OPS: [Op; 6] = [
    Op::Get,
    Op::Touch,
    Op::Update,
    Op::Create,
    Op::Rotate,
    Op::ListByUser,
];

const NAMES: [&str; 3] = ["node", "cluster", "sentinel"];

/// A field of an `INFO` reply.
fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(field)?.strip_prefix(':'))
        .map(str::to_owned)
}

fn info(conn: &mut redis::Connection, section: &str) -> String {
    redis::cmd("INFO").arg(section).query(conn).unwrap()
}

fn dbsize(conn: &mut redis::Connection) -> u64 {
    redis::cmd("DBSIZE").query(conn).unwrap()
}

async fn connect(url: String) -> Arc<dyn UserSessionStore> {
    // Defaults: pool of 16 (node, Sentinel), one multiplexed connection per node (Cluster), no
    // checkout ping, prefix `session:`.
    Arc::new(
        RedisStore::connect(RedisConfig::new(url), SessionPolicy::default())
            .await
            .unwrap(),
    )
}

pub(crate) async fn bench_topologies(seconds: u64) {
    let started = std::time::Instant::now();
    let (node, cluster, sentinel) = tokio::task::spawn_blocking(|| {
        (
            RedisServer::start(),
            RedisCluster::start(),
            RedisSentinel::start(),
        )
    })
    .await
    .unwrap();
    let setup = started.elapsed();

    let stores: [Arc<dyn UserSessionStore>; 3] = [
        connect(node.url()).await,
        connect(cluster.url()).await,
        connect(sentinel.url()).await,
    ];
    let mut tokens: Vec<Arc<Vec<SessionToken>>> = Vec::new();
    for store in &stores {
        tokens.push(prefill(store).await);
    }

    // What the three are, as the servers report it.
    let masters = cluster.masters();
    let master_port = sentinel.master_port();
    let (version, per_master, master_replicas) = tokio::task::spawn_blocking({
        let node_url = node.url();
        let masters = masters.clone();
        move || {
            let mut conn = redis::Client::open(node_url)
                .unwrap()
                .get_connection()
                .unwrap();
            let version = info_field(&info(&mut conn, "server"), "redis_version").unwrap();
            let per_master: Vec<(u16, u64, String)> = masters
                .iter()
                .map(|&port| {
                    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                        .unwrap()
                        .get_connection()
                        .unwrap();
                    let replicas =
                        info_field(&info(&mut conn, "replication"), "connected_slaves").unwrap();
                    (port, dbsize(&mut conn), replicas)
                })
                .collect();
            let mut conn = redis::Client::open(format!("redis://127.0.0.1:{master_port}"))
                .unwrap()
                .get_connection()
                .unwrap();
            let master_replicas =
                info_field(&info(&mut conn, "replication"), "connected_slaves").unwrap();
            (version, per_master, master_replicas)
        }
    })
    .await
    .unwrap();

    println!();
    println!(
        "# topologies: RedisStore on one node, Redis Cluster and Sentinel, same run, same machine"
    );
    println!(
        "# redis-server {version}, all private processes started by this run with --save '' --appendonly no; {} CPUs (std::thread::available_parallelism)",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "# node:     1 redis-server (127.0.0.1:{}), no replica; RedisStore pool_max_size 16 (bb8, multiplexed connections)",
        node.port()
    );
    println!(
        "# cluster:  3 masters + 3 replicas (masters {masters:?}, connected replicas / keys after prefill per master: {}); redis crate cluster client, one multiplexed connection per node (pool size unused)",
        per_master
            .iter()
            .map(|(port, keys, replicas)| format!("{port}: {replicas} / {keys}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "# sentinel: 1 master (127.0.0.1:{master_port}, {master_replicas} connected replica) + 1 replica + 3 sentinels; RedisStore pool_max_size 16 to the master Sentinel names"
    );
    println!(
        "# each store prefilled with {PREFILL} sessions of {USERS} users; default policy (touch interval 60 s); prefix session:; {seconds} s per row; topologies set up in {:.1} s",
        setup.as_secs_f64()
    );
    println!(
        "# writes on cluster and sentinel also feed a replica (replication stream); the node has none"
    );
    println!(
        "# CAVEAT: on this machine all {} redis-server processes (and 3 sentinels) and the benchmark client share the same CPUs: no throughput scaling with masters can show; the cluster's 3 masters compete for the cores the single node has to itself",
        1 + 6 + 2
    );
    println!(
        "# order: the three run back to back per (operation, tasks) row, the first of them rotating row by row (column order)"
    );
    println!();

    let mut summary: Vec<(Op, usize, String, [Outcome; 3])> = Vec::new();
    let mut row_index = 0;
    for op in OPS.into_iter().filter(|op| op.selected()) {
        for tasks in CONCURRENCY {
            let mut results: [Option<Outcome>; 3] = [None, None, None];
            let order: Vec<usize> = (0..3).map(|k| (row_index + k) % 3).collect();
            row_index += 1;
            for &t in &order {
                results[t] = Some(run_store(&stores[t], &tokens[t], op, tasks, seconds).await);
            }
            let [Some(n), Some(c), Some(s)] = results else {
                unreachable!("every topology ran");
            };
            row_named(NAMES[0], op.name(), "-", tasks, &n, None);
            row_named(NAMES[1], op.name(), "node", tasks, &c, Some(&n));
            row_named(NAMES[2], op.name(), "node", tasks, &s, Some(&n));
            let order: String = order
                .iter()
                .map(|&t| NAMES[t][..1].to_owned())
                .collect::<Vec<_>>()
                .join("-");
            summary.push((op, tasks, order, [n, c, s]));
        }
    }

    println!();
    println!(
        "| op | tasks | node ops/s | node p50 µs | node p99 µs | cluster ops/s | cluster p50 µs | cluster p99 µs | sentinel ops/s | sentinel p50 µs | sentinel p99 µs | cluster/node | sentinel/node | order |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
    for (op, tasks, order, [n, c, s]) in &summary {
        println!(
            "| {} | {tasks} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} | {order} |",
            op.name(),
            n.rate(),
            us(n.p50),
            us(n.p99),
            c.rate(),
            us(c.p50),
            us(c.p99),
            s.rate(),
            us(s.p50),
            us(s.p99),
            c.rate() / n.rate(),
            s.rate() / n.rate(),
        );
    }
    println!();

    for store in &stores {
        store.close().await;
    }
    drop(stores);
    // Stopping the processes waits on them: off the runtime's workers.
    tokio::task::spawn_blocking(move || drop((node, cluster, sentinel)))
        .await
        .unwrap();
}
