//! Benchmarks the user-session stores against raw-driver baselines measured in the same run.
//!
//! ```text
//! cargo run --release --manifest-path crates/session-bench/Cargo.toml -- [--seconds N] [memory] [redis] [postgres] [mysql] [scope]
//! cargo run --release --manifest-path crates/session-bench/Cargo.toml -- --seconds 2 peers-mysql     # vs tower-sessions' sqlx MySqlStore
//! BENCH_OPS=get,touch cargo run --release --manifest-path crates/session-bench/Cargo.toml -- redis    # only those operations
//! BENCH_TOP=1 cargo run --release --manifest-path crates/session-bench/Cargo.toml -- peers-memory  # per row, on stderr: time in operations over 50 µs, the slowest
//! cargo run --release --manifest-path crates/session-bench/Cargo.toml -- --seconds 2 topologies      # node vs Cluster vs Sentinel
//! cargo run --release --manifest-path crates/session-bench/Cargo.toml -- footprint-redis footprint-pg  # bytes per session
//! cargo run --release --manifest-path crates/session-bench/Cargo.toml -- --seconds 2 writes  # writes, server commands per op
//! cargo run --release --manifest-path crates/session-bench/Cargo.toml -- --seconds 2 http    # the demo over HTTP vs a bare route
//! ```
//! `topologies` starts a private one-node Redis, a private Redis Cluster (3 masters, 3 replicas) and
//! a private Sentinel setup (master, replica, 3 sentinels) with `session_testkit::servers`, and runs
//! the Redis store's get, touch, update, create, rotate and list_by_user at 1 and 32 tasks on the
//! three in turn (the first of each row rotating), with the ratios cluster/node and sentinel/node
//! (see topologies.rs). `writes` runs create, touch (every one writing), create+delete, get and
//! rotate on a private `redis-server`, with server commands and `EVALSHA` time per operation from
//! `INFO commandstats` (see writes.rs). `footprint-redis` measures the Redis store's bytes per
//! session (100k sessions, 1 and 10 per user; `used_memory` growth on a private `redis-server` and
//! `MEMORY USAGE` of sampled keys), standard layout against the compatible one (no per-user index);
//! `footprint-pg` the PostgreSQL store's table and index bytes per row after `VACUUM ANALYZE`.
//! `peers` runs tower-sessions' memory, moka, Redis, sqlx PostgreSQL and sqlx MySQL stores against
//! ours (see peers.rs); `peers-memory`, `peers-redis`, `peers-postgres`, `peers-mysql` run one
//! backend's comparisons (`peers-mysql` on MySQL/MariaDB at `MYSQL_URL`). `footprint` measures the memory store's bytes per session (100k, 1M) and purge cost (1k, 100k,
//! 1M stored, 10% expired). `postgres` runs the PostgreSQL store (`DATABASE_URL`, default the local `test` database, in a
//! schema of its own) against raw diesel-async statements on the same table; `mysql` the same for
//! the MySQL/MariaDB store (`MYSQL_URL`, default `mysql://root@127.0.0.1:3306`, in a database of
//! its own; not among the defaults), with its capped `create` against the uncapped; `scope` runs a trivial
//! transaction through the provider against raw diesel-async `conn.transaction` on a pool with the
//! same settings, on PostgreSQL and SQLite.
//! Each operation runs at 1 and 32 concurrent tasks for N seconds (default 2) against a store
//! pre-filled with 10,000 sessions of 1,000 users. For Redis (`REDIS_URL`, default
//! `redis://127.0.0.1:6379/0`) a raw bb8-redis pool of the same size issuing the nearest single
//! command runs right after each measurement, and the table gives the ratio.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)] // a benchmark: a panic is the report

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use session_core::{NewUserSession, SessionPolicy, SessionToken, UserSession, UserSessionStore};
use session_redis::{RedisConfig, RedisStore};

pub(crate) const PREFILL: usize = 10_000;
pub(crate) const USERS: usize = 1_000;
/// Sessions a user holds in the prefill, and at most about as many from the rows that create.
pub(crate) const SESSIONS_PER_USER: usize = PREFILL / USERS;

/// The user of the `i`-th session a row creates: a new one every [`SESSIONS_PER_USER`] creates,
/// so a user's index holds about as many sessions as a prefilled user's (a few devices each),
/// however long the row runs. Cycling through [`USERS`] instead gave each user hundreds of
/// sessions over a run, an index no real user has, whose cost only our side pays.
pub(crate) fn new_user(i: usize) -> String {
    format!("new-user-{}", i / SESSIONS_PER_USER)
}
pub(crate) const CONCURRENCY: [usize; 2] = [1, 32];
/// Alternating rounds of the layer-overhead comparison (each `--seconds` long per side).
const LAYER_ROUNDS: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Get,
    Touch,
    Create,
    Update,
    Rotate,
    ListByUser,
    /// A create and the delete of what it created, both timed: a delete needs a live session to
    /// remove, and a 2 s run at memory speed would need millions made in advance.
    CreateDelete,
}

impl Op {
    pub(crate) const ALL: [Op; 7] = [
        Op::Get,
        Op::Touch,
        Op::Create,
        Op::Update,
        Op::Rotate,
        Op::ListByUser,
        Op::CreateDelete,
    ];

    /// Whether `BENCH_OPS` selects this op.
    pub(crate) fn selected(self) -> bool {
        bench_ops_select(self.name())
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Touch => "touch",
            Op::Create => "create",
            Op::Update => "update",
            Op::Rotate => "rotate",
            Op::ListByUser => "list_by_user",
            Op::CreateDelete => "create+delete",
        }
    }

    /// The raw statement the PostgreSQL baseline runs for this operation.
    pub(crate) fn baseline_sql(self) -> &'static str {
        match self {
            Op::Get | Op::Touch => "SELECT",
            Op::Create => "INSERT",
            Op::Update | Op::Rotate => "UPDATE",
            Op::ListByUser => "SELECT user",
            Op::CreateDelete => "INSERT+DELETE",
        }
    }

    /// The raw command the baseline issues for this operation.
    fn baseline_command(self) -> &'static str {
        match self {
            Op::Get | Op::Touch => "HMGET",
            Op::Create | Op::Update => "HSET",
            Op::Rotate => "RENAME",
            Op::ListByUser => "ZRANGEBYSCORE",
            Op::CreateDelete => "HSET+DEL",
        }
    }
}

/// Whether `BENCH_OPS` (a comma-separated list of op names; unset: all) names `name`.
pub(crate) fn bench_ops_select(name: &str) -> bool {
    std::env::var("BENCH_OPS").map_or(true, |ops| ops.split(',').any(|o| o.trim() == name))
}

pub(crate) struct Outcome {
    ops: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Outcome {
    /// Several runs as one: their operations over their summed time; the percentiles are the
    /// runs' medians.
    pub(crate) fn combine(mut runs: Vec<Outcome>) -> Outcome {
        let ops = runs.iter().map(|o| o.ops).sum();
        let elapsed = runs.iter().map(|o| o.elapsed).sum();
        let median = |runs: &mut Vec<Outcome>, key: fn(&Outcome) -> Duration| {
            runs.sort_by_key(key);
            key(&runs[runs.len() / 2])
        };
        let p50 = median(&mut runs, |o| o.p50);
        let p99 = median(&mut runs, |o| o.p99);
        Outcome {
            ops,
            elapsed,
            p50,
            p99,
        }
    }

    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `tasks` concurrent loops of `step` for `seconds`; each task owns the state `init` makes.
pub(crate) async fn drive<S, I, IF, F, FF>(tasks: usize, seconds: u64, init: I, step: F) -> Outcome
where
    S: Send + 'static,
    I: Fn(usize) -> IF,
    IF: Future<Output = S>,
    F: Fn(S) -> FF + Send + Sync + Clone + 'static,
    FF: Future<Output = S> + Send,
{
    let mut states = Vec::with_capacity(tasks);
    for task in 0..tasks {
        states.push(init(task).await);
    }
    let start = Instant::now();
    // Each task checks the deadline itself: a store that never awaits (memory) would otherwise
    // keep the workers busy and starve a timer-based stop.
    let deadline = start + Duration::from_secs(seconds);
    let handles: Vec<_> = states
        .into_iter()
        .map(|mut state| {
            let step = step.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 16);
                let mut i = 0u64;
                loop {
                    if i.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                    i += 1;
                    let t = Instant::now();
                    if t >= deadline {
                        break;
                    }
                    state = step(state).await;
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    if std::env::var_os("BENCH_TOP").is_some() {
        print_slowest(&all);
    }
    let pick = |q: f64| {
        all.get(((all.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    Outcome {
        ops: all.len() as u64,
        elapsed,
        p50: pick(0.50),
        p99: pick(0.99),
    }
}

/// `BENCH_TOP=1`: how much of a row's time its slow operations take (over 50 µs: stalls, not
/// work), and its eight slowest, on stderr; `sorted` are the row's latencies in ascending order.
fn print_slowest(sorted: &[Duration]) {
    let slow = Duration::from_micros(50);
    let stalls: Vec<&Duration> = sorted.iter().filter(|d| **d > slow).collect();
    eprintln!(
        "# slowest: {} ops taking {:?} in all; {} over 50 µs taking {:?}; slowest {:?}",
        sorted.len(),
        sorted.iter().sum::<Duration>(),
        stalls.len(),
        stalls.into_iter().sum::<Duration>(),
        &sorted[sorted.len().saturating_sub(8)..],
    );
}

/// One read over plain redis-rs, its reply decoded to `Value` and dropped: `HMGET` of a session's
/// fields, or (`packed`) `GET` of one string.
async fn plain_read(conn: &mut redis::aio::MultiplexedConnection, key: &str, packed: bool) {
    let mut cmd = redis::cmd(if packed { "GET" } else { "HMGET" });
    cmd.arg(key);
    if !packed {
        cmd.arg(&session_redis::SESSION_FIELDS[..]);
    }
    let _: redis::Value = cmd.query_async(conn).await.unwrap();
}

/// [`plain_read`]s of `keys` by `tasks` tasks for `seconds`, the tasks spread over `muxed`.
async fn plain_reads(
    muxed: &Arc<Vec<redis::aio::MultiplexedConnection>>,
    keys: &Arc<Vec<String>>,
    packed: bool,
    tasks: usize,
    seconds: u64,
) -> Outcome {
    let init = |task: usize| {
        let (muxed, keys) = (muxed.clone(), keys.clone());
        async move { (muxed[task % muxed.len()].clone(), keys, task * 7919) }
    };
    let step = move |(mut conn, keys, i): (
        redis::aio::MultiplexedConnection,
        Arc<Vec<String>>,
        usize,
    )| async move {
        plain_read(&mut conn, &keys[i % keys.len()], packed).await;
        (conn, keys, i + 1)
    };
    drive(tasks, seconds, init, step).await
}

/// What a layout storing a session as one packed value would buy the read path, on the client:
/// plain redis-rs `GET` of a string as long as a session's `HMGET` reply (its 14 values, each
/// behind a length), against that `HMGET` on the same connections, same run. No store, no
/// decoding: the gap is the driver's cost of decoding 14 values instead of one (the server's is
/// in `redis-ceilings`).
async fn packed_read_rows(
    muxed: &Arc<Vec<redis::aio::MultiplexedConnection>>,
    session_keys: &Arc<Vec<String>>,
    packed_prefix: String,
    seconds: u64,
) {
    let mut conn = muxed[0].clone();
    let row: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
        .arg(&session_keys[0])
        .arg(&session_redis::SESSION_FIELDS[..])
        .query_async(&mut conn)
        .await
        .unwrap();
    let packed_len: usize = row.iter().flatten().map(|v| v.len() + 4).sum();
    let packed_keys: Arc<Vec<String>> = Arc::new(
        (0..session_keys.len())
            .map(|i| format!("{packed_prefix}{i}"))
            .collect(),
    );
    for chunk in packed_keys.chunks(1000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("SET")
                .arg(key)
                .arg(vec![b'x'; packed_len])
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await.unwrap();
    }
    println!(
        "# redis/packed: GET of a {packed_len}-byte string (a session's HMGET reply packed) against HMGET of its 14 fields, plain redis-rs, same connections"
    );
    for tasks in CONCURRENCY {
        let packed = plain_reads(muxed, &packed_keys, true, tasks, seconds).await;
        let fields = plain_reads(muxed, session_keys, false, tasks, seconds).await;
        row_named(
            "redis/packed",
            "get",
            "redis-rs HMGET",
            tasks,
            &packed,
            Some(&fields),
        );
    }
    let mut del = redis::pipe();
    for key in packed_keys.iter() {
        del.cmd("DEL").arg(key).ignore();
    }
    let () = del.query_async(&mut conn).await.unwrap();
}

/// Per-task state for the store loops.
struct StoreTask {
    store: Arc<dyn UserSessionStore>,
    tokens: Arc<Vec<SessionToken>>,
    own: (SessionToken, UserSession),
    i: usize,
}

pub(crate) async fn run_store(
    store: &Arc<dyn UserSessionStore>,
    tokens: &Arc<Vec<SessionToken>>,
    op: Op,
    tasks: usize,
    seconds: u64,
) -> Outcome {
    let init = |task: usize| {
        let (store, tokens) = (store.clone(), tokens.clone());
        async move {
            let issued = store
                .create(NewUserSession::new(format!("bench-own-{task}")))
                .await
                .unwrap();
            StoreTask {
                store,
                tokens,
                own: (issued.token, issued.session),
                i: task * 7919,
            }
        }
    };
    let step = move |mut t: StoreTask| async move {
        t.i += 1;
        let token = &t.tokens[t.i % t.tokens.len()];
        match op {
            Op::Get => drop(t.store.get(token).await.unwrap()),
            Op::Touch => drop(t.store.touch(token).await.unwrap()),
            // New users, so the listed users keep their 10 sessions each.
            Op::Create => drop(
                t.store
                    .create(NewUserSession::new(new_user(t.i)).email("bench@example.com"))
                    .await
                    .unwrap(),
            ),
            Op::Update => {
                let mut session = t.own.1.clone();
                session.set_attribute("n", t.i);
                t.own.1 = t.store.update(&session).await.unwrap().session;
            }
            Op::Rotate => {
                let issued = t.store.rotate(&t.own.0).await.unwrap().unwrap();
                t.own = (issued.token, issued.session);
            }
            Op::ListByUser => drop(
                t.store
                    .list_by_user(&format!("user-{}", t.i % USERS))
                    .await
                    .unwrap(),
            ),
            Op::CreateDelete => {
                let issued = t
                    .store
                    .create(NewUserSession::new(new_user(t.i)).email("bench@example.com"))
                    .await
                    .unwrap();
                assert!(t.store.delete(&issued.token).await.unwrap());
            }
        }
        t
    };
    drive(tasks, seconds, init, step).await
}

/// Per-task state for the raw bb8-redis baseline.
struct RawTask {
    pool: bb8::Pool<bb8_redis::RedisConnectionManager>,
    prefix: Arc<str>,
    session_keys: Arc<Vec<String>>,
    index_keys: Arc<Vec<String>>,
    i: usize,
    task: usize,
    /// Whether the task's own key currently has its alternate name (rotate ping-pong).
    renamed: bool,
}

/// The raw baseline: the nearest single command, on the store's own keys where it reads them.
async fn run_baseline(
    pool: &bb8::Pool<bb8_redis::RedisConnectionManager>,
    prefix: &str,
    keys: &(Arc<Vec<String>>, Arc<Vec<String>>),
    op: Op,
    tasks: usize,
    seconds: u64,
) -> Outcome {
    let prefix: Arc<str> = Arc::from(format!("{prefix}raw:"));
    let init = |task: usize| {
        let (pool, prefix, session_keys, index_keys) =
            (pool.clone(), prefix.clone(), keys.0.clone(), keys.1.clone());
        async move {
            let mut conn = pool.get().await.unwrap();
            let key = format!("{prefix}own:{task}");
            redis::cmd("DEL")
                .arg(&key)
                .arg(format!("{key}b"))
                .exec_async(&mut *conn)
                .await
                .unwrap();
            redis::cmd("HSET")
                .arg(&key)
                .arg("user_id")
                .arg("u")
                .arg("email")
                .arg("e")
                .exec_async(&mut *conn)
                .await
                .unwrap();
            drop(conn);
            RawTask {
                pool,
                prefix,
                session_keys,
                index_keys,
                i: task * 7919,
                task,
                renamed: false,
            }
        }
    };
    let step = move |mut t: RawTask| async move {
        t.i += 1;
        let mut conn = t.pool.get().await.unwrap();
        let key = &t.session_keys[t.i % t.session_keys.len()];
        let own = format!("{}own:{}", t.prefix, t.task);
        let cmd = match op {
            Op::Get | Op::Touch => redis::cmd("HMGET")
                .arg(key)
                .arg(&session_redis::SESSION_FIELDS[..])
                .clone(),
            Op::CreateDelete => {
                let new = format!("{}new:{}:{}", t.prefix, t.task, t.i);
                let () = redis::cmd("HSET")
                    .arg(&new)
                    .arg(&[("user_id", "u"), ("email", "bench@example.com")])
                    .exec_async(&mut *conn)
                    .await
                    .unwrap();
                redis::cmd("DEL").arg(new).clone()
            }
            Op::Create => redis::cmd("HSET")
                .arg(format!("{}new:{}:{}", t.prefix, t.task, t.i))
                .arg(&[
                    ("user_id", "u"),
                    ("company_name", "c"),
                    ("email", "bench@example.com"),
                    ("is_root", "N"),
                ])
                .clone(),
            Op::Update => redis::cmd("HSET")
                .arg(&own)
                .arg("attributes")
                .arg(t.i)
                .clone(),
            Op::Rotate => {
                // Ping-pong the task's own key between two names.
                let (from, to) = if t.renamed {
                    (format!("{own}b"), own.clone())
                } else {
                    (own.clone(), format!("{own}b"))
                };
                t.renamed = !t.renamed;
                redis::cmd("RENAME").arg(from).arg(to).clone()
            }
            Op::ListByUser => redis::cmd("ZRANGEBYSCORE")
                .arg(&t.index_keys[t.i % t.index_keys.len()])
                .arg(0)
                .arg("+inf")
                .clone(),
        };
        let _: redis::Value = cmd.query_async(&mut *conn).await.unwrap();
        drop(conn);
        t
    };
    drive(tasks, seconds, init, step).await
}

pub(crate) async fn prefill(store: &Arc<dyn UserSessionStore>) -> Arc<Vec<SessionToken>> {
    let mut tokens = Vec::with_capacity(PREFILL);
    for i in 0..PREFILL {
        tokens.push(
            store
                .create(NewUserSession::new(format!("user-{}", i % USERS)))
                .await
                .unwrap()
                .token,
        );
    }
    Arc::new(tokens)
}

pub(crate) fn row(backend: &str, op: Op, tasks: usize, o: &Outcome, baseline: Option<&Outcome>) {
    row_named(
        backend,
        op.name(),
        op.baseline_command(),
        tasks,
        o,
        baseline,
    );
}

/// Every row printed, for `bench-results/results.json`.
static RESULTS: std::sync::Mutex<Vec<serde_json::Value>> = std::sync::Mutex::new(Vec::new());

pub(crate) fn row_named(
    backend: &str,
    op: &str,
    baseline_name: &str,
    tasks: usize,
    o: &Outcome,
    baseline: Option<&Outcome>,
) {
    RESULTS.lock().unwrap().push(serde_json::json!({
        "backend": backend,
        "op": op,
        "tasks": tasks,
        "ops_per_sec": o.rate(),
        "p50_us": o.p50.as_secs_f64() * 1e6,
        "p99_us": o.p99.as_secs_f64() * 1e6,
        "baseline": baseline.map(|b| serde_json::json!({"name": baseline_name, "ops_per_sec": b.rate(), "p50_us": b.p50.as_secs_f64() * 1e6, "p99_us": b.p99.as_secs_f64() * 1e6, "ratio": o.rate() / b.rate()})),
    }));
    let (base, base_p99, ratio) = baseline.map_or(
        (String::from("-"), String::from("-"), String::from("-")),
        |b| {
            (
                format!("{:.0}", b.rate()),
                format!("{:.1}", b.p99.as_secs_f64() * 1e6),
                format!("{:.2}", o.rate() / b.rate()),
            )
        },
    );
    println!(
        "{backend:<12} {op:<13} {tasks:>5} {:>11.0} {:>8.1} {:>9.1} {:>22} {:>6} {base_p99:>9}",
        o.rate(),
        o.p50.as_secs_f64() * 1e6,
        o.p99.as_secs_f64() * 1e6,
        baseline.map_or(String::new(), |_| format!("{baseline_name} {base}")),
        ratio
    );
}

/// Deletes the bench's keys when dropped, also when a measurement panics.
struct PrefixCleanup {
    url: String,
    prefix: String,
}

impl Drop for PrefixCleanup {
    fn drop(&mut self) {
        session_testkit::servers::redis_delete_prefix(&self.url, &self.prefix);
    }
}

async fn bench_memory(seconds: u64) {
    let store: Arc<dyn UserSessionStore> =
        Arc::new(session_memory::MemoryStore::new(SessionPolicy::default()).unwrap());
    let tokens = prefill(&store).await;
    for op in Op::ALL.into_iter().filter(|op| op.selected()) {
        for tasks in CONCURRENCY {
            row(
                "memory",
                op,
                tasks,
                &run_store(&store, &tokens, op, tasks, seconds).await,
                None,
            );
        }
    }
}

async fn bench_redis(seconds: u64) {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned());
    let prefix = format!(
        "bench:{}:",
        &SessionToken::generate().unwrap().expose_secret()[..10]
    );
    let _cleanup = PrefixCleanup {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let config = RedisConfig::new(url.clone()).key_prefix(prefix.clone());
    let pool_size = config.pool_max_size;
    let store: Arc<dyn UserSessionStore> = Arc::new(
        RedisStore::connect(config.clone(), SessionPolicy::default())
            .await
            .unwrap(),
    );
    let pinging: Arc<dyn UserSessionStore> = Arc::new(
        RedisStore::connect(config.test_on_checkout(true), SessionPolicy::default())
            .await
            .unwrap(),
    );
    let tokens = prefill(&store).await;

    let raw = bb8::Pool::builder()
        .max_size(pool_size)
        .test_on_check_out(false)
        .build(bb8_redis::RedisConnectionManager::new(url.as_str()).unwrap())
        .await
        .unwrap();
    // The store's own keys (see docs/backends.md for the layout), for the baseline to read.
    let mut conn = raw.get().await.unwrap();
    let mut session_keys = Vec::with_capacity(PREFILL);
    for token in tokens.iter() {
        let handle = token.handle();
        session_keys.push(format!(
            "{prefix}{{{}}}:s:{}",
            handle.routing_tag().unwrap(),
            handle.hash()
        ));
    }
    let mut index_keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}{{*}}:u:user-*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut *conn)
            .await
            .unwrap();
        index_keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    drop(conn);
    assert_eq!(index_keys.len(), USERS);
    let keys = (Arc::new(session_keys), Arc::new(index_keys));
    for op in Op::ALL.into_iter().filter(|op| op.selected()) {
        for tasks in CONCURRENCY {
            let ours = run_store(&store, &tokens, op, tasks, seconds).await;
            let base = run_baseline(&raw, &prefix, &keys, op, tasks, seconds).await;
            row("redis", op, tasks, &ours, Some(&base));
        }
    }
    if Op::Get.selected() {
        // The driver's own limit: `get`'s HMGET on the same keys over plain redis-rs multiplexed
        // connections (as many as the store's pool, tasks spread over them), with no pool, no
        // decoding and no policy. What separates the store from this is ours; what separates
        // this from another client library is the driver's.
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut muxed = Vec::new();
        for _ in 0..pool_size {
            muxed.push(client.get_multiplexed_async_connection().await.unwrap());
        }
        let muxed = Arc::new(muxed);
        for tasks in CONCURRENCY {
            let ours = run_store(&store, &tokens, Op::Get, tasks, seconds).await;
            let limit = plain_reads(&muxed, &keys.0, false, tasks, seconds).await;
            row_named(
                "redis/driver",
                "get",
                "redis-rs HMGET",
                tasks,
                &ours,
                Some(&limit),
            );
        }
        packed_read_rows(&muxed, &keys.0, format!("{prefix}packed:"), seconds).await;
    }
    for tasks in CONCURRENCY.into_iter().filter(|_| Op::Get.selected()) {
        let base = run_baseline(&raw, &prefix, &keys, Op::Get, tasks, seconds).await;
        row(
            "redis+ping",
            Op::Get,
            tasks,
            &run_store(&pinging, &tokens, Op::Get, tasks, seconds).await,
            Some(&base),
        );
    }
    // The facade's layer stack (`session_core::stacked`: tracing and metrics with a Prometheus
    // recorder installed, and the retry layer) against the bare store, same run.
    let layered: Arc<dyn UserSessionStore> = Arc::new(session_core::stacked(
        store.clone(),
        session_core::RetryPolicy::default(),
    ));
    for op in [Op::Get, Op::Touch, Op::Update]
        .into_iter()
        .filter(|op| op.selected())
    {
        for tasks in CONCURRENCY {
            // Alternating rounds, so drift in the machine's speed falls on both sides alike.
            let (mut bare, mut stacked) = (Vec::new(), Vec::new());
            for round in 0..LAYER_ROUNDS {
                // Which side goes first alternates too, so neither always runs on a warmer or
                // cooler server.
                if round % 2 == 0 {
                    bare.push(run_store(&store, &tokens, op, tasks, seconds).await);
                    stacked.push(run_store(&layered, &tokens, op, tasks, seconds).await);
                } else {
                    stacked.push(run_store(&layered, &tokens, op, tasks, seconds).await);
                    bare.push(run_store(&store, &tokens, op, tasks, seconds).await);
                }
            }
            let (bare, stacked) = (Outcome::combine(bare), Outcome::combine(stacked));
            row_named(
                "redis+layers",
                op.name(),
                "bare store",
                tasks,
                &stacked,
                Some(&bare),
            );
        }
    }
}

mod ceilings;
mod db;
mod footprint;
mod http;
mod peers;
mod topologies;
mod writes;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut seconds = 2;
    let mut backends = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--seconds" {
            seconds = args
                .next()
                .and_then(|s| s.parse().ok())
                .expect("--seconds takes a whole number");
        } else {
            backends.push(arg);
        }
    }
    if backends.is_empty() {
        backends = ["memory", "redis", "postgres", "scope"]
            .map(str::to_owned)
            .to_vec();
    }
    println!(
        "{:<12} {:<13} {:>5} {:>11} {:>8} {:>9} {:>22} {:>6} {:>9}",
        "backend",
        "op",
        "tasks",
        "ops/s",
        "p50 µs",
        "p99 µs",
        "baseline ops/s",
        "ratio",
        "base p99"
    );
    // As in production: metrics go to a Prometheus recorder.
    let _ = metrics::set_global_recorder(
        metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder(),
    );
    for backend in &backends {
        match backend.as_str() {
            "memory" => bench_memory(seconds).await,
            "redis" => bench_redis(seconds).await,
            "postgres" => db::bench_postgres(seconds).await,
            "mysql" => db::bench_mysql(seconds).await,
            "scope" => db::bench_scope(seconds).await,
            "footprint" => footprint::bench_footprint().await,
            "footprint-redis" => footprint::bench_footprint_redis().await,
            "footprint-pg" => footprint::bench_footprint_pg().await,
            "topologies" => topologies::bench_topologies(seconds).await,
            "writes" => writes::bench_writes(seconds).await,
            "redis-ceilings" => ceilings::bench_redis_ceilings().await,
            "http" => http::bench_http(seconds).await,
            "peers" => peers::bench_peers(seconds, &[]).await,
            "peers-memory" => peers::bench_peers(seconds, &["memory"]).await,
            "peers-redis" => peers::bench_peers(seconds, &["redis"]).await,
            "peers-postgres" => peers::bench_peers(seconds, &["postgres"]).await,
            "peers-mysql" => peers::bench_peers(seconds, &["mysql"]).await,
            other => panic!(
                "unknown backend {other:?}; known: memory, redis, postgres, mysql, scope, footprint, footprint-redis, footprint-pg, topologies, writes, redis-ceilings, peers, peers-memory, peers-redis, peers-postgres, peers-mysql"
            ),
        }
    }
    // Sections without rows (`redis-ceilings`, `footprint`) leave an earlier run's file alone.
    let results = RESULTS.lock().unwrap();
    if !results.is_empty() {
        let _ = std::fs::create_dir_all("bench-results");
        let json = serde_json::to_string_pretty(&*results).unwrap();
        std::fs::write("bench-results/results.json", json).unwrap();
        println!("\nresults: bench-results/results.json");
    }
}
