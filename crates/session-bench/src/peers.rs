//! tower-sessions (0.14 line) stores against ours, operation by operation, in the same run.
//!
//! tower-sessions' store API is `create`, `load`, `save`, `delete` on a record; the equivalents:
//! get = `load`; touch = `save` with a new expiry (tower-sessions saves on every request under
//! `Expiry::OnInactivity`; ours writes only when the touch interval has passed); update = `save`;
//! create = `create`; rotate = `delete` + `create` (what `Session::cycle_id` does at the store).
//! Each row is ours over the peer: above 1 means ahead.

use std::collections::HashMap;
use std::sync::Arc;

use session_core::{NewUserSession, SessionPolicy, SessionToken, UserSessionStore};
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::{Id, Record};

use crate::{
    CONCURRENCY, Op, Outcome, PREFILL, SESSIONS_PER_USER, USERS, drive, prefill, row_named,
    run_store,
};

const OPS: [Op; 6] = [
    Op::Get,
    Op::Touch,
    Op::Create,
    Op::Update,
    Op::Rotate,
    Op::CreateDelete,
];

fn record(i: usize) -> Record {
    let mut data = HashMap::new();
    data.insert(
        "user_id".to_owned(),
        serde_json::json!(format!("user-{}", i % USERS)),
    );
    data.insert("email".to_owned(), serde_json::json!("bench@example.com"));
    data.insert("company_name".to_owned(), serde_json::json!("Acme"));
    data.insert("is_root".to_owned(), serde_json::json!(false));
    Record {
        id: Id::default(),
        data,
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::minutes(30),
    }
}

struct PeerTask<S> {
    store: S,
    ids: Arc<Vec<Id>>,
    own: Record,
    i: usize,
}

async fn run_peer<S: SessionStore + Clone>(
    store: &S,
    ids: &Arc<Vec<Id>>,
    op: Op,
    tasks: usize,
    seconds: u64,
) -> Outcome {
    let init = |task: usize| {
        let (store, ids) = (store.clone(), ids.clone());
        async move {
            let mut own = record(task);
            store.create(&mut own).await.unwrap();
            PeerTask {
                store,
                ids,
                own,
                i: task * 7919,
            }
        }
    };
    let step = move |mut t: PeerTask<S>| async move {
        t.i += 1;
        let id = t.ids[t.i % t.ids.len()];
        match op {
            Op::Get => drop(t.store.load(&id).await.unwrap()),
            Op::Touch => {
                let mut r = t.store.load(&id).await.unwrap().unwrap();
                r.expiry_date = time::OffsetDateTime::now_utc() + time::Duration::minutes(30);
                t.store.save(&r).await.unwrap();
            }
            Op::Create => {
                let mut r = record(t.i);
                t.store.create(&mut r).await.unwrap();
            }
            Op::Update => {
                t.own.data.insert("n".to_owned(), serde_json::json!(t.i));
                t.store.save(&t.own).await.unwrap();
            }
            Op::Rotate => {
                t.store.delete(&t.own.id).await.unwrap();
                t.own.id = Id::default();
                t.store.create(&mut t.own).await.unwrap();
            }
            Op::CreateDelete => {
                let mut r = record(t.i);
                t.store.create(&mut r).await.unwrap();
                t.store.delete(&r.id).await.unwrap();
            }
            Op::ListByUser => unreachable!("tower-sessions has no per-user listing"),
        }
        t
    };
    drive(tasks, seconds, init, step).await
}

/// `PREFILL` records in the peer's store, as `prefill` puts sessions in ours.
async fn prefill_peer<S: SessionStore>(peer: &S) -> Arc<Vec<Id>> {
    let mut ids = Vec::with_capacity(PREFILL);
    for i in 0..PREFILL {
        let mut r = record(i);
        peer.create(&mut r).await.unwrap();
        ids.push(r.id);
    }
    Arc::new(ids)
}

/// Ours (`ours`: the default policy; `writing`: the same store with `touch_interval = 0`) against
/// `peer`. `touch` gives two rows against the peer's `load` + `save`: `per-request`, each library
/// as configured by default (ours writes once per 60 s interval, so almost every touch is a read),
/// and `touch-writes`, ours writing on every touch (the same work as the peer's save).
async fn compare<S: SessionStore + Clone>(
    name: &str,
    ours: &Arc<dyn UserSessionStore>,
    writing: &Arc<dyn UserSessionStore>,
    peer: S,
    seconds: u64,
) {
    let tokens: Arc<Vec<SessionToken>> = prefill(ours).await;
    let ids = prefill_peer(&peer).await;
    let writing_tokens = if Op::Touch.selected() {
        prefill(writing).await
    } else {
        Arc::default()
    };
    for op in OPS.into_iter().filter(|op| op.selected()) {
        for tasks in CONCURRENCY {
            if op == Op::Touch {
                let mine = run_store(ours, &tokens, op, tasks, seconds).await;
                let theirs = run_peer(&peer, &ids, op, tasks, seconds).await;
                row_named(
                    name,
                    "per-request",
                    "ts load+save",
                    tasks,
                    &mine,
                    Some(&theirs),
                );
                let mine = run_store(writing, &writing_tokens, op, tasks, seconds).await;
                let theirs = run_peer(&peer, &ids, op, tasks, seconds).await;
                row_named(
                    name,
                    "touch-writes",
                    "ts load+save",
                    tasks,
                    &mine,
                    Some(&theirs),
                );
                continue;
            }
            let mine = run_store(ours, &tokens, op, tasks, seconds).await;
            let theirs = run_peer(&peer, &ids, op, tasks, seconds).await;
            row_named(
                name,
                op.name(),
                "tower-sessions",
                tasks,
                &mine,
                Some(&theirs),
            );
        }
    }
}

/// Runs the comparisons for `which` backends (`memory`, `redis`, `postgres`, `mysql`; all when
/// empty).
pub(crate) async fn bench_peers(seconds: u64, which: &[&str]) {
    let wanted = |backend: &str| which.is_empty() || which.contains(&backend);
    if wanted("memory") {
        memory_peers(seconds).await;
    }
    if wanted("redis") {
        redis_peers(seconds).await;
    }
    if wanted("postgres") {
        postgres_peers(seconds).await;
    }
    if wanted("mysql") {
        mysql_peers(seconds).await;
    }
}

async fn memory_peers(seconds: u64) {
    let store = |policy: SessionPolicy| -> Arc<dyn UserSessionStore> {
        Arc::new(session_memory::MemoryStore::new(policy).unwrap())
    };
    // Ours against tower-sessions' MemoryStore and its moka store.
    compare(
        "memory/ts-mem",
        &store(SessionPolicy::default()),
        &store(writing_policy()),
        tower_sessions_memory_store::MemoryStore::default(),
        seconds,
    )
    .await;
    compare(
        "memory/ts-moka",
        &store(SessionPolicy::default()),
        &store(writing_policy()),
        tower_sessions_moka_store::MokaStore::new(None),
        seconds,
    )
    .await;
}

/// The policy of our `touch-writes` rows: a touch interval of 0, so that every touch writes, the
/// work a peer's save does.
fn writing_policy() -> SessionPolicy {
    let mut policy = SessionPolicy::default();
    policy.touch_interval = std::time::Duration::ZERO;
    policy
}

async fn redis_peers(seconds: u64) {
    // Both on a private redis-server (tower-sessions keys sessions by bare id), same pool size.
    let server = session_testkit::servers::RedisServer::start();
    let config = session_redis::RedisConfig::new(server.url());
    let size = config.pool_max_size as usize;
    let ours: Arc<dyn UserSessionStore> = Arc::new(
        session_redis::RedisStore::connect(config.clone(), SessionPolicy::default())
            .await
            .unwrap(),
    );
    let writing: Arc<dyn UserSessionStore> = Arc::new(
        session_redis::RedisStore::connect(config.key_prefix("w:"), writing_policy())
            .await
            .unwrap(),
    );
    let fred_config =
        tower_sessions_redis_store::fred::prelude::Config::from_url(&server.url()).unwrap();
    let pool =
        tower_sessions_redis_store::fred::prelude::Pool::new(fred_config, None, None, None, size)
            .unwrap();
    tower_sessions_redis_store::fred::prelude::ClientLike::init(&pool)
        .await
        .unwrap();
    let peer = tower_sessions_redis_store::RedisStore::new(pool);
    compare("redis/ts-redis", &ours, &writing, peer.clone(), seconds).await;
    if crate::bench_ops_select("delete") {
        delete_rows("redis/ts-redis", &ours, &peer, seconds).await;
    }
    near_cache_rows(&server, peer, seconds).await;
    drop(server);
}

/// Sessions each task may delete in one second of a `delete` row: above the fastest rate either
/// side reached on this machine (fred's one-command `DEL`, about 17k/s at 1 task and 140k/s at 32),
/// so a row never runs out; a task that does panics rather than time an empty step.
fn delete_budget(tasks: usize) -> usize {
    if tasks == 1 { 40_000 } else { 8_000 }
}

/// `delete` alone, ours against the peer's: each task deletes sessions made for it before the
/// clock starts (a delete needs a live session, and a 2 s row needs more than the prefill holds).
/// Ours is the delete script (the session and its index member); the peer's a `DEL`.
async fn delete_rows<S: SessionStore + Clone>(
    name: &str,
    ours: &Arc<dyn UserSessionStore>,
    peer: &S,
    seconds: u64,
) {
    for tasks in CONCURRENCY {
        let budget = delete_budget(tasks) * seconds as usize;
        let mine = {
            let batches = make_batches(tasks, budget, |task, i| {
                let ours = ours.clone();
                async move {
                    ours.create(NewUserSession::new(format!(
                        "del-user-{}",
                        (task * budget + i) / SESSIONS_PER_USER
                    )))
                    .await
                    .unwrap()
                    .token
                }
            })
            .await;
            drain(
                tasks,
                seconds,
                ours.clone(),
                batches,
                async |store, token| {
                    assert!(
                        store.delete(&token).await.unwrap(),
                        "a prefilled session was not there to delete"
                    );
                },
            )
            .await
        };
        let theirs = {
            let batches = make_batches(tasks, budget, |task, i| {
                let peer = peer.clone();
                async move {
                    let mut r = record(task * budget + i);
                    peer.create(&mut r).await.unwrap();
                    r.id
                }
            })
            .await;
            drain(
                tasks,
                seconds,
                peer.clone(),
                batches,
                |store, id| async move {
                    store.delete(&id).await.unwrap();
                },
            )
            .await
        };
        row_named(
            name,
            "delete",
            "tower-sessions",
            tasks,
            &mine,
            Some(&theirs),
        );
    }
}

/// Runs `tasks` tasks for `seconds`, each taking the next item of its own batch and passing it
/// to `step` with `store`. A task that runs out panics rather than time an empty step.
async fn drain<C, T, F, Fut>(
    tasks: usize,
    seconds: u64,
    store: C,
    batches: Vec<Arc<std::sync::Mutex<Vec<T>>>>,
    step: F,
) -> Outcome
where
    C: Clone + Send + Sync + 'static,
    T: Send + 'static,
    F: Fn(C, T) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let init = |task: usize| {
        let state = (store.clone(), batches[task].clone(), step.clone());
        async move { state }
    };
    let next = |(store, queue, step): (C, Arc<std::sync::Mutex<Vec<T>>>, F)| async move {
        let item = queue
            .lock()
            .unwrap()
            .pop()
            .expect("a delete row ran out of prefilled items: raise delete_budget");
        step(store.clone(), item).await;
        (store, queue, step)
    };
    drive(tasks, seconds, init, next).await
}

/// `per_task` items for each of `tasks` tasks, made by `make(task, i)` 32 at a time.
async fn make_batches<T, F, Fut>(
    tasks: usize,
    per_task: usize,
    make: F,
) -> Vec<Arc<std::sync::Mutex<Vec<T>>>>
where
    T: Send + 'static,
    F: Fn(usize, usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let mut batches = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let mut items = Vec::with_capacity(per_task);
        for start in (0..per_task).step_by(32) {
            let mut chunk = tokio::task::JoinSet::new();
            for i in start..(start + 32).min(per_task) {
                chunk.spawn(make(task, i));
            }
            items.extend(chunk.join_all().await);
        }
        batches.push(Arc::new(std::sync::Mutex::new(items)));
    }
    batches
}

/// Ours with the near cache (ADR 0021) against the peer's `load`: `get`, and a `touch` not yet
/// due to write (the prefilled sessions were last seen less than the 60 s interval ago), both
/// answered from memory once warm; the hit ratio follows. Skipped unless `BENCH_OPS` selects
/// `get` or `touch`.
async fn near_cache_rows<S: SessionStore + Clone>(
    server: &session_testkit::servers::RedisServer,
    peer: S,
    seconds: u64,
) {
    if !Op::Get.selected() && !Op::Touch.selected() {
        return;
    }
    let config = session_redis::RedisConfig::new(server.url())
        .key_prefix("near:")
        .near_cache(session_redis::NearCacheConfig::new(4 * PREFILL, 64 << 20));
    let near = Arc::new(
        session_redis::RedisStore::connect(config, SessionPolicy::default())
            .await
            .unwrap(),
    );
    let ours: Arc<dyn UserSessionStore> = near.clone();
    let tokens: Arc<Vec<SessionToken>> = prefill(&ours).await;
    let ids = prefill_peer(&peer).await;
    // Warm: one read of each session, so the rows measure a warm cache (as a busy service has).
    for token in tokens.iter() {
        ours.get(token).await.unwrap();
    }
    let before = near.near_cache_stats().unwrap();
    for op in [Op::Get, Op::Touch].into_iter().filter(|op| op.selected()) {
        for tasks in CONCURRENCY {
            let mine = run_store(&ours, &tokens, op, tasks, seconds).await;
            let theirs = run_peer(&peer, &ids, Op::Get, tasks, seconds).await;
            let name = if op == Op::Touch {
                "touch-not-due"
            } else {
                "get"
            };
            row_named("redis+near", name, "ts load", tasks, &mine, Some(&theirs));
        }
    }
    let after = near.near_cache_stats().unwrap();
    let hits = after.hits - before.hits;
    let reads = hits + (after.misses - before.misses) + (after.bypassed - before.bypassed);
    println!(
        "# redis+near: hit ratio {:.4} over the rows ({hits} of {reads} reads from memory; {} entries, tracking {})",
        hits as f64 / reads.max(1) as f64,
        after.entries,
        after.tracking
    );
}

async fn postgres_peers(seconds: u64) {
    // Each in a schema of its own on the shared server, same pool size.
    let ours_schema = session_testkit::servers::PgSchema::create("bench_peer_ours");
    let writing_schema = session_testkit::servers::PgSchema::create("bench_peer_ours_w");
    let peer_schema = session_testkit::servers::PgSchema::create("bench_peer_ts");
    let store = async |url: String, policy: SessionPolicy| -> Arc<dyn UserSessionStore> {
        let store = session_diesel::PgSessionStore::connect(
            &url,
            session_core::PoolConfig::default(),
            policy,
        )
        .await
        .unwrap();
        Arc::new(store) as Arc<dyn UserSessionStore>
    };
    let ours = store(ours_schema.url(), SessionPolicy::default()).await;
    let writing = store(writing_schema.url(), writing_policy()).await;
    let pg = tower_sessions_sqlx_store::sqlx::postgres::PgPoolOptions::new()
        .max_connections(session_core::PoolConfig::default().max_size)
        .connect(&session_testkit::servers::database_url())
        .await
        .unwrap();
    let peer = tower_sessions_sqlx_store::PostgresStore::new(pg)
        .with_schema_name(peer_schema.name())
        .unwrap();
    peer.migrate().await.unwrap();
    compare("postgres/ts-sqlx", &ours, &writing, peer, seconds).await;
}

async fn mysql_peers(seconds: u64) {
    // Each in a database of its own on the shared MySQL/MariaDB server, same pool size.
    let ours_db = session_testkit::servers::MysqlDatabase::create("bench_peer_ours");
    let writing_db = session_testkit::servers::MysqlDatabase::create("bench_peer_ours_w");
    let peer_db = session_testkit::servers::MysqlDatabase::create("bench_peer_ts");
    let store = async |url: String, policy: SessionPolicy| -> Arc<dyn UserSessionStore> {
        let store = session_diesel::MysqlSessionStore::connect(
            &url,
            session_core::PoolConfig::default(),
            policy,
        )
        .await
        .unwrap();
        Arc::new(store) as Arc<dyn UserSessionStore>
    };
    let ours = store(ours_db.url(), SessionPolicy::default()).await;
    let writing = store(writing_db.url(), writing_policy()).await;
    let pool = tower_sessions_sqlx_store::sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(session_core::PoolConfig::default().max_size)
        .connect(&peer_db.url())
        .await
        .unwrap();
    let peer = tower_sessions_sqlx_store::MySqlStore::new(pool)
        .with_schema_name(peer_db.name())
        .unwrap();
    peer.migrate().await.unwrap();
    compare("mysql/ts-sqlx", &ours, &writing, peer, seconds).await;
}
