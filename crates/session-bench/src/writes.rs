//! `writes`: the Redis store's writes on a private `redis-server` (a fresh process), with
//! `touch_interval` zero so that every touch writes (the work a peer's save does), and the server's
//! own count of what each operation runs: `CONFIG RESETSTAT` before each row, `INFO commandstats`
//! after it. Self-contained (the crate root's helpers only), so the same file can be copied into
//! an older tree to compare script versions like for like (ADR 0020).
//!
//! The counts include each task's own session, created before the timed loop (`run_store`): 1 or
//! 32 creates against thousands of operations.

use std::sync::Arc;
use std::time::Duration;

use session_core::{SessionPolicy, UserSessionStore};
use session_redis::{RedisConfig, RedisStore};
use session_testkit::servers::RedisServer;

use crate::{CONCURRENCY, Op, PREFILL, USERS, prefill, row_named, run_store};

const OPS: [Op; 5] = [Op::Create, Op::Touch, Op::CreateDelete, Op::Get, Op::Rotate];

/// `INFO commandstats` as (command, calls, usec), without the `CONFIG RESETSTAT` that began it.
async fn command_stats(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim_end().strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            Some((name.to_owned(), field("calls")?, field("usec")?))
        })
        .filter(|(name, ..)| name != "config|resetstat")
        .collect()
}

pub(crate) async fn bench_writes(seconds: u64) {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let mut policy = SessionPolicy::default();
    policy.touch_interval = Duration::ZERO;
    let store: Arc<dyn UserSessionStore> = Arc::new(
        RedisStore::connect(RedisConfig::new(server.url()).pool_max_size(16), policy)
            .await
            .unwrap(),
    );
    let tokens = prefill(&store).await;
    let mut admin = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut admin)
        .await
        .unwrap();
    let version = info
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("redis_version:"))
        .unwrap_or("?");
    println!(
        "# private redis-server {version} on port {}, pool 16, touch_interval 0 (every touch writes), \
         {PREFILL} sessions of {USERS} users",
        server.port()
    );
    for op in OPS.into_iter().filter(|op| op.selected()) {
        for tasks in CONCURRENCY {
            redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .exec_async(&mut admin)
                .await
                .unwrap();
            let outcome = run_store(&store, &tokens, op, tasks, seconds).await;
            let mut stats = command_stats(&mut admin).await;
            row_named("redis/writes", op.name(), "-", tasks, &outcome, None);
            let per_op = |calls: u64| calls as f64 / outcome.ops as f64;
            let (sha_calls, sha_usec) = stats
                .iter()
                .find(|(name, ..)| name == "evalsha")
                .map_or((0, 0), |&(_, calls, usec)| (calls, usec));
            stats.retain(|(name, ..)| name != "evalsha");
            stats.sort();
            let others: u64 = stats.iter().map(|&(_, calls, _)| calls).sum();
            let each: Vec<String> = stats
                .iter()
                .map(|(name, calls, _)| format!("{name} {:.3}", per_op(*calls)))
                .collect();
            println!(
                "    server per op: {:.3} commands besides EVALSHA, {:.3} EVALSHA, EVALSHA {:.2} µs/call \
                 ({:.2} µs/op) | {}",
                per_op(others),
                per_op(sha_calls),
                sha_usec as f64 / sha_calls.max(1) as f64,
                per_op(sha_usec),
                each.join(", ")
            );
        }
    }
}
