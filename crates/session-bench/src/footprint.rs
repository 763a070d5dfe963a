//! Memory per stored session in the memory backend, and purge cost as the store grows.
//!
//! Bytes per session come from the growth of the process's resident set (`VmRSS` in
//! `/proc/self/status`) while sessions are added: at 100k+ sessions the page granularity is
//! negligible, and it counts everything a session costs (map entries, index entries, allocator
//! overhead), which a sum of struct sizes would not.
//!
//! `footprint-redis` and `footprint-pg` measure the same session shape in the Redis store (growth
//! of `used_memory` on a private `redis-server`, and `MEMORY USAGE` of sampled keys; standard
//! layout with its per-user index against the compatible layout without one) and in the
//! PostgreSQL store (table, TOAST and index sizes after `VACUUM ANALYZE`, in a schema of its own).

use std::sync::Arc;
use std::time::{Duration, Instant};

use session_core::{
    ManualClock, NewUserSession, PoolConfig, SessionPolicy, SessionToken, UserSessionStore,
};
use session_diesel::PgSessionStore;
use session_memory::MemoryStore;
use session_redis::{Layout, RedisConfig, RedisStore};
use session_testkit::servers::{PgSchema, RedisServer, database_url, psql};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A session like a web app's: ids, an e-mail, a company, two small attributes.
fn typical(i: usize) -> NewUserSession {
    typical_of(i, 100_000)
}

/// [`typical`], spread over `users` users (session `i` belongs to `user-{i % users}`).
fn typical_of(i: usize, users: usize) -> NewUserSession {
    NewUserSession::new(format!("user-{}", i % users))
        .company_name("Acme Corporation")
        .email(format!("user{}@example.com", i % users))
        .attribute("locale", "en-GB")
        .attribute("csrf", "f3a9c1d2e4b5a6978812")
}

pub(crate) async fn bench_footprint() {
    println!(
        "{:<28} {:>10} {:>16}",
        "memory store", "sessions", "bytes/session"
    );
    for n in [100_000usize, 1_000_000] {
        let store = MemoryStore::new(SessionPolicy::default()).unwrap();
        // Warm the allocator and the maps' first growth steps so they are not charged to sessions.
        for i in 0..1000 {
            store.create(typical(i)).await.unwrap();
        }
        let before = rss_bytes();
        for i in 0..n {
            store.create(typical(i)).await.unwrap();
        }
        let after = rss_bytes();
        println!(
            "{:<28} {:>10} {:>16.0}",
            "resident set growth",
            n,
            (after - before) as f64 / n as f64
        );
        drop(store);
    }
    println!();
    println!(
        "{:<12} {:>10} {:>10} {:>12} {:>16}",
        "purge", "stored", "expired", "time ms", "ns/expired"
    );
    // The first round is not reported: it pays for the allocator handing back the memory of the
    // million sessions measured above (32 ms at 1,000 stored, against 0.1 ms when repeated).
    for (round, n) in [1_000usize, 1_000, 100_000, 1_000_000]
        .into_iter()
        .enumerate()
    {
        let clock = ManualClock::starting_now();
        let store = MemoryStore::new(SessionPolicy::default().with_clock(clock.clone())).unwrap();
        let expiring = n / 10;
        for i in 0..expiring {
            store.create(typical(i)).await.unwrap();
        }
        clock.advance(Duration::from_secs(20 * 60));
        for i in expiring..n {
            store.create(typical(i)).await.unwrap();
        }
        clock.advance(Duration::from_secs(11 * 60)); // the first 10% are now past their idle expiry
        let start = Instant::now();
        let purged = store.purge_expired().await.unwrap();
        let elapsed = start.elapsed();
        assert_eq!(purged as usize, expiring);
        assert_eq!(store.len(), n - expiring);
        if round == 0 {
            continue;
        }
        println!(
            "{:<12} {:>10} {:>10} {:>12.2} {:>16.0}",
            "memory",
            n,
            expiring,
            elapsed.as_secs_f64() * 1e3,
            elapsed.as_nanos() as f64 / expiring as f64
        );
    }
}

/// Sessions per footprint run on Redis and PostgreSQL.
const FOOTPRINT_N: usize = 100_000;
/// Tasks creating them (the count only changes how fast the store fills).
const FILL_TASKS: usize = 32;

/// Creates `typical_of(i, users)` for every `i` in `0..n` over [`FILL_TASKS`] tasks.
async fn fill(store: &Arc<dyn UserSessionStore>, n: usize, users: usize) {
    let handles: Vec<_> = (0..FILL_TASKS)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in (task..n).step_by(FILL_TASKS) {
                    store.create(typical_of(i, users)).await.unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
}

/// A field of an `INFO` reply.
fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(field)?.strip_prefix(':'))
        .map(str::to_owned)
}

async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .unwrap();
    info_field(&info, "used_memory").unwrap().parse().unwrap()
}

/// Up to `limit` keys matching `pattern`, in `SCAN` order (the keyspace's hash order: no
/// relation to creation order).
async fn scan_keys(
    conn: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
    limit: usize,
) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 || keys.len() >= limit {
            break;
        }
        cursor = next;
    }
    keys.truncate(limit);
    keys
}

/// The mean `MEMORY USAGE <key> SAMPLES 0` (exact for these small encodings) over `keys`.
async fn mean_memory_usage(conn: &mut redis::aio::MultiplexedConnection, keys: &[String]) -> f64 {
    if keys.is_empty() {
        return 0.0;
    }
    let mut total = 0u64;
    for key in keys {
        let bytes: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(conn)
            .await
            .unwrap();
        total += bytes;
    }
    total as f64 / keys.len() as f64
}

struct RedisFootprint {
    layout: &'static str,
    per_user: usize,
    keys: u64,
    before: u64,
    after: u64,
    hash_mean: f64,
    index_mean: f64,
    index_keys: u64,
}

impl RedisFootprint {
    fn per_session(&self) -> f64 {
        (self.after - self.before) as f64 / FOOTPRINT_N as f64
    }

    /// Index bytes per session by `MEMORY USAGE`: the mean index key over the sessions per key.
    fn index_per_session(&self) -> f64 {
        self.index_mean * self.index_keys as f64 / FOOTPRINT_N as f64
    }
}

/// One run on a fresh private `redis-server`.
async fn redis_footprint(layout: Layout, per_user: usize, samples: usize) -> RedisFootprint {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let standard = layout == Layout::Standard;
    let mut config = RedisConfig::new(server.url()).layout(layout);
    if !standard {
        config = config.key_prefix("");
    }
    let store: Arc<dyn UserSessionStore> = Arc::new(
        RedisStore::connect(config, SessionPolicy::default())
            .await
            .unwrap(),
    );
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Warm-up, then removed: opens the pool's connections (each a client in the server's memory)
    // and loads the scripts, so neither is charged to the sessions.
    let warm: Vec<SessionToken> = {
        let handles: Vec<_> = (0..FILL_TASKS)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut tokens = Vec::new();
                    for _ in 0..32 {
                        tokens.push(
                            store
                                .create(NewUserSession::new(format!("warm-{task}")))
                                .await
                                .unwrap()
                                .token,
                        );
                    }
                    tokens
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        all
    };
    for token in &warm {
        assert!(store.delete(token).await.unwrap());
    }
    let dbsize = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("DBSIZE")
                .query_async::<u64>(&mut conn)
                .await
                .unwrap()
        }
    };
    assert_eq!(dbsize(&mut conn).await, 0, "the warm-up left keys behind");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = used_memory(&mut conn).await;
    fill(&store, FOOTPRINT_N, FOOTPRINT_N / per_user).await;
    // Let the server's cron shrink the clients' query buffers again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = used_memory(&mut conn).await;
    let keys = dbsize(&mut conn).await;

    let (session_keys, index_keys) = if standard {
        (
            scan_keys(&mut conn, "session:*:s:*", samples).await,
            scan_keys(&mut conn, "session:*:u:*", samples).await,
        )
    } else {
        (scan_keys(&mut conn, "*", samples).await, Vec::new())
    };
    let index_count = if standard {
        scan_keys(&mut conn, "session:*:u:*", usize::MAX)
            .await
            .len() as u64
    } else {
        0
    };
    let hash_mean = mean_memory_usage(&mut conn, &session_keys).await;
    let index_mean = mean_memory_usage(&mut conn, &index_keys).await;

    let label = if standard { "standard" } else { "compatible" };
    let first = &session_keys[0];
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(first)
        .query_async(&mut conn)
        .await
        .unwrap();
    let encoding: String = redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(first)
        .query_async(&mut conn)
        .await
        .unwrap();
    let key_len =
        session_keys.iter().map(String::len).sum::<usize>() as f64 / session_keys.len() as f64;
    let keyspace: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut conn)
        .await
        .unwrap();
    println!(
        "# {label}, {per_user}/user: session key e.g. {first:?} (mean key length {key_len:.1} B), {} fields {fields:?}, encoding {encoding}; {}",
        fields.len(),
        info_field(&keyspace, "db0").unwrap_or_default()
    );
    if let Some(index) = index_keys.first() {
        let members: u64 = redis::cmd("ZCARD")
            .arg(index)
            .query_async(&mut conn)
            .await
            .unwrap();
        let encoding: String = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(index)
            .query_async(&mut conn)
            .await
            .unwrap();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(index)
            .query_async(&mut conn)
            .await
            .unwrap();
        println!(
            "#   index key e.g. {index:?}: sorted set of {members} member(s), encoding {encoding}, PTTL {ttl} ms"
        );
    }
    store.close().await;
    drop(store);
    drop(conn);
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
    RedisFootprint {
        layout: label,
        per_user,
        keys,
        before,
        after,
        hash_mean,
        index_mean,
        index_keys: index_count,
    }
}

pub(crate) async fn bench_footprint_redis() {
    const SAMPLES: usize = 1000;
    println!();
    println!(
        "# footprint-redis: {FOOTPRINT_N} sessions of the typical shape (user id, company \"Acme Corporation\", e-mail, attributes locale + csrf), default policy"
    );
    println!(
        "# each run on a fresh private redis-server (--save '' --appendonly no, default maxmemory-policy and listpack limits); {FILL_TASKS} tasks create them"
    );
    println!(
        "# bytes/session = (INFO memory used_memory after - before) / {FOOTPRINT_N}; before = after a warm-up (pool opened, scripts loaded, warm-up sessions deleted)"
    );
    println!(
        "# MEMORY USAGE <key> SAMPLES 0, mean over up to {SAMPLES} keys in SCAN order; index/session = mean index key x index keys / sessions"
    );
    let mut runs = Vec::new();
    for layout in [Layout::Standard, Layout::Compatible] {
        for per_user in [1usize, 10] {
            runs.push(redis_footprint(layout, per_user, SAMPLES).await);
        }
    }
    println!();
    println!(
        "| layout | sessions/user | users | keys | used_memory before | used_memory after | bytes/session | MEMORY USAGE session hash | MEMORY USAGE index key | index keys | index bytes/session (MEMORY USAGE) | index share (MEMORY USAGE) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &runs {
        let (index_mean, index_per_session, share) = if r.index_keys == 0 {
            ("-".to_owned(), "-".to_owned(), "-".to_owned())
        } else {
            (
                format!("{:.0}", r.index_mean),
                format!("{:.1}", r.index_per_session()),
                format!(
                    "{:.1}%",
                    100.0 * r.index_per_session() / (r.hash_mean + r.index_per_session())
                ),
            )
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {index_mean} | {} | {index_per_session} | {share} |",
            r.layout,
            r.per_user,
            FOOTPRINT_N / r.per_user,
            r.keys,
            r.before,
            r.after,
            r.per_session(),
            r.hash_mean,
            r.index_keys,
        );
    }
    println!();
    for per_user in [1usize, 10] {
        let find = |layout: &str| {
            runs.iter()
                .find(|r| r.layout == layout && r.per_user == per_user)
                .unwrap()
        };
        let (standard, compatible) = (find("standard"), find("compatible"));
        println!(
            "# {per_user}/user: standard {:.1} B/session, compatible {:.1} B/session: the standard layout costs {:.1} B ({:.1}%) more per session (its index, plus its longer session key names: the compatible layout keys by the bare token)",
            standard.per_session(),
            compatible.per_session(),
            standard.per_session() - compatible.per_session(),
            100.0 * (standard.per_session() - compatible.per_session()) / standard.per_session()
        );
    }
    println!();
}

pub(crate) async fn bench_footprint_pg() {
    let base = database_url();
    println!();
    println!(
        "# footprint-pg: {FOOTPRINT_N} sessions of the typical shape in the PostgreSQL store's table (schema of its own, dropped after), created by {FILL_TASKS} tasks"
    );
    println!(
        "# sizes after VACUUM ANALYZE; indexes as grown by the inserts, then again after REINDEX TABLE (freshly built, btree fillfactor 90)"
    );
    let version = psql(&base, "SHOW server_version");
    println!("# PostgreSQL {version}");
    let mut rows = Vec::new();
    for per_user in [1usize, 10] {
        let schema = PgSchema::create("bench_footprint");
        let store: Arc<dyn UserSessionStore> = Arc::new(
            PgSessionStore::connect(
                &schema.url(),
                PoolConfig::default(),
                SessionPolicy::default(),
            )
            .await
            .unwrap(),
        );
        fill(&store, FOOTPRINT_N, FOOTPRINT_N / per_user).await;
        store.close().await;
        drop(store);
        let table = format!("{}.user_sessions", schema.name());
        psql(&base, &format!("VACUUM ANALYZE {table}"));
        let mut sizes = |when: &str| {
            let line = psql(
                &base,
                &format!(
                    "SELECT count(*), pg_total_relation_size('{table}'), pg_relation_size('{table}'), \
                     pg_indexes_size('{table}'), \
                     pg_total_relation_size('{table}') - pg_relation_size('{table}') - pg_indexes_size('{table}'), \
                     (SELECT avg(pg_column_size(t.*))::numeric(10,1) FROM {table} t) FROM {table}"
                ),
            );
            let f: Vec<&str> = line.split('|').collect();
            let n: f64 = f[0].parse().unwrap();
            assert_eq!(n as usize, FOOTPRINT_N);
            let indexes = psql(
                &base,
                &format!(
                    "SELECT c.relname || '=' || pg_relation_size(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                     WHERE i.indrelid = '{table}'::regclass ORDER BY c.relname"
                ),
            )
            .lines()
            .map(|l| {
                let (name, bytes) = l.split_once('=').unwrap();
                format!("{name} {:.1}", bytes.parse::<f64>().unwrap() / n)
            })
            .collect::<Vec<_>>()
            .join(", ");
            let per = |s: &str| s.parse::<f64>().unwrap() / n;
            rows.push(format!(
                "| {per_user} | {} | {when} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {indexes} |",
                FOOTPRINT_N / per_user,
                f[1],
                per(f[1]),
                per(f[2]),
                per(f[3]),
                per(f[4]),
                f[5],
            ));
        };
        sizes("after VACUUM ANALYZE");
        psql(&base, &format!("REINDEX TABLE {table}"));
        sizes("after REINDEX");
        drop(schema);
    }
    println!();
    println!(
        "| sessions/user | users | indexes | total bytes | total/row | table (heap)/row | indexes/row | FSM+VM+TOAST/row | mean row (pg_column_size) | per index, bytes/row |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---|");
    for row in rows {
        println!("{row}");
    }
    println!();
}
