//! PostgreSQL and MySQL/MariaDB store and transaction-scope benchmarks against raw diesel-async.

use std::sync::Arc;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, AsyncPgConnection, RunQueryDsl};
use session_core::{
    DbSessionProvider, PoolConfig, ScopeOptions, SessionError, SessionPolicy, UserSessionStore,
};
use session_diesel::{
    KeepPrepared, MysqlSessionStore, PgProvider, PgSessionStore, ProviderConnection, SqliteConn,
    SqliteProvider,
};
use session_testkit::servers::{MysqlDatabase, PgSchema, SqliteFile};

use crate::{CONCURRENCY, Op, PREFILL, USERS, drive, prefill, row_named, run_store};

type RawPool<C> = bb8::Pool<AsyncDieselConnectionManager<C>>;

/// A bb8 pool of raw diesel-async connections with the provider's settings.
async fn raw_pool<C: ProviderConnection>(url: &str, config: &PoolConfig) -> RawPool<C>
where
    AsyncDieselConnectionManager<C>: bb8::ManageConnection<Connection = C>,
{
    let manager = AsyncDieselConnectionManager::<C>::new_with_config(url, C::manager_config());
    bb8::Pool::builder()
        .max_size(config.max_size)
        .connection_timeout(config.checkout_timeout)
        .test_on_check_out(config.test_on_checkout)
        .build_unchecked(manager)
}

#[derive(QueryableByName)]
struct One {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// `SELECT 1` in a transaction: through the provider, then through raw diesel-async.
async fn scope_pair<C: ProviderConnection>(
    name: &str,
    provider: Arc<session_diesel::DieselProvider<C>>,
    raw: RawPool<C>,
    seconds: u64,
) where
    AsyncDieselConnectionManager<C>:
        bb8::ManageConnection<Connection = C, Error = diesel_async::pooled_connection::PoolError>,
    diesel::query_builder::SqlQuery: diesel_async::methods::LoadQuery<'static, C, One>,
{
    for tasks in CONCURRENCY {
        let ours = {
            let provider = provider.clone();
            drive(
                tasks,
                seconds,
                |_| async {},
                move |()| {
                    let provider = provider.clone();
                    async move {
                        let one = provider
                            .transaction(ScopeOptions::new(), async |conn| {
                                diesel::sql_query("SELECT CAST(1 AS BIGINT) AS n")
                                    .get_result::<One>(conn)
                                    .await
                                    .map_err(|e| SessionError::Backend {
                                        backend: C::BACKEND,
                                        source: Box::new(e),
                                    })
                            })
                            .await
                            .unwrap();
                        assert_eq!(one.n, 1);
                    }
                },
            )
            .await
        };
        let base = {
            let raw = raw.clone();
            drive(
                tasks,
                seconds,
                |_| async {},
                move |()| {
                    let raw = raw.clone();
                    async move {
                        let mut conn = raw.get().await.unwrap();
                        let one = conn
                            .transaction(async |c| {
                                diesel::sql_query("SELECT CAST(1 AS BIGINT) AS n")
                                    .get_result::<One>(c)
                                    .await
                            })
                            .await
                            .unwrap();
                        assert_eq!(one.n, 1);
                    }
                },
            )
            .await
        };
        row_named(
            name,
            "transaction",
            "diesel-async",
            tasks,
            &ours,
            Some(&base),
        );
    }
}

pub(crate) async fn bench_scope(seconds: u64) {
    let config = PoolConfig::default();
    let schema = PgSchema::create("bench_scope");
    let pg = Arc::new(
        PgProvider::connect(&schema.url(), config.clone())
            .await
            .unwrap(),
    );
    let raw_pg = raw_pool::<AsyncPgConnection>(&schema.url(), &config).await;
    scope_pair("postgres", pg, raw_pg, seconds).await;

    let file = SqliteFile::new("bench-scope");
    let sqlite = Arc::new(
        SqliteProvider::open(&file.url(), config.clone())
            .await
            .unwrap(),
    );
    let path = file.url().trim_start_matches("sqlite://").to_owned();
    let raw_sqlite = raw_pool::<SqliteConn>(&path, &config).await;
    scope_pair("sqlite", sqlite, raw_sqlite, seconds).await;
}

#[derive(Clone)]
struct RawPg {
    pool: RawPool<AsyncPgConnection>,
    handles: Arc<Vec<String>>,
}

/// Keys of rows the raw INSERT baseline creates, unique across runs.
static NEXT_RAW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Every column the store reads and writes, the client metadata (ADR 0030) included, so that the
/// baseline moves rows as wide as the store's.
const COLUMNS: &str = "handle, user_id, company_name, email, is_root, remember_me, attributes, created_at, last_seen_at, idle_expires_at, absolute_expires_at, version, authenticated_at, device, address";

async fn raw_pg_step(raw: &RawPg, op: Op, task: usize, i: usize) {
    let mut conn = raw.pool.get().await.unwrap();
    let handle = &raw.handles[i % raw.handles.len()];
    let query = |sql: String| diesel::sql_query(sql).into_boxed::<diesel::pg::Pg>();
    let statement = match op {
        Op::Get | Op::Touch => {
            query(format!("SELECT {COLUMNS} FROM user_sessions WHERE handle = $1 AND idle_expires_at > now()")).bind::<Text, _>(handle.clone())
        }
        Op::Create => query(format!(
            "INSERT INTO user_sessions ({COLUMNS}) VALUES ($1, 'u', '', '', false, false, '{{}}', now(), now(), now() + interval '30 minutes', now() + interval '12 hours', 1, now(), '', NULL)"
        ))
        .bind::<Text, _>(format!("raw-{}", NEXT_RAW.fetch_add(1, std::sync::atomic::Ordering::Relaxed))),
        Op::Update => query("UPDATE user_sessions SET email = email, version = version + 1 WHERE handle = $1".to_owned()).bind::<Text, _>(format!("own-{task}")),
        Op::Rotate => query("UPDATE user_sessions SET handle = $2 WHERE handle = $1".to_owned())
            .bind::<Text, _>(format!("own-{task}-{}", i % 2))
            .bind::<Text, _>(format!("own-{task}-{}", (i + 1) % 2)),
        Op::ListByUser => query(format!("SELECT {COLUMNS} FROM user_sessions WHERE user_id = $1 AND idle_expires_at > now() ORDER BY created_at"))
            .bind::<Text, _>(format!("user-{}", i % USERS)),
        Op::CreateDelete => {
            let new = format!("raw-{}", NEXT_RAW.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            query(format!(
                "INSERT INTO user_sessions ({COLUMNS}) VALUES ($1, 'u', '', '', false, false, '{{}}', now(), now(), now() + interval '30 minutes', now() + interval '12 hours', 1, now(), '', NULL)"
            ))
            .bind::<Text, _>(new.clone())
            .prepared()
            .execute(&mut *conn)
            .await
            .unwrap();
            query("DELETE FROM user_sessions WHERE handle = $1".to_owned()).bind::<Text, _>(new)
        }
    };
    statement.prepared().execute(&mut *conn).await.unwrap();
}

pub(crate) async fn bench_postgres(seconds: u64) {
    let schema = PgSchema::create("bench_store");
    let config = PoolConfig::default();
    let store: Arc<dyn UserSessionStore> = Arc::new(
        PgSessionStore::connect(&schema.url(), config.clone(), SessionPolicy::default())
            .await
            .unwrap(),
    );
    // The baseline is the limit of raw diesel-async: same pool size, no checkout ping, every
    // statement kept prepared (the store tests connections locally, ADR 0008).
    let mut config = config;
    config.test_on_checkout = false;
    let tokens = prefill(&store).await;
    let raw = RawPg {
        pool: raw_pool::<AsyncPgConnection>(&schema.url(), &config).await,
        handles: Arc::new(
            tokens
                .iter()
                .map(|t| t.handle().as_str().to_owned())
                .collect(),
        ),
    };
    {
        // Rows of the baseline's own for update and rotate, one per task.
        let mut conn = raw.pool.get().await.unwrap();
        for task in 0..32 {
            for name in [format!("own-{task}"), format!("own-{task}-0")] {
                diesel::sql_query(format!(
                    "INSERT INTO user_sessions ({COLUMNS}) VALUES ($1, 'own', '', '', false, false, '{{}}', now(), now(), now() + interval '30 minutes', now() + interval '12 hours', 1, now(), '', NULL)"
                ))
                .bind::<Text, _>(name)
                .execute(&mut *conn)
                .await
                .unwrap();
            }
        }
    }
    assert_eq!(tokens.len(), PREFILL);
    // Which of its two keys each task's own row has now (rotation ping-pongs between them); kept
    // across runs because the rows keep their names.
    let rotate_state = Arc::new(
        (0..32)
            .map(|_| std::sync::atomic::AtomicUsize::new(0))
            .collect::<Vec<_>>(),
    );
    for op in Op::ALL.into_iter().filter(|op| op.selected()) {
        for tasks in CONCURRENCY {
            let ours = run_store(&store, &tokens, op, tasks, seconds).await;
            let base = {
                let (raw, rotate_state) = (raw.clone(), rotate_state.clone());
                drive(
                    tasks,
                    seconds,
                    |task| async move { (task, task * 7919) },
                    move |(task, i)| {
                        let (raw, rotate_state) = (raw.clone(), rotate_state.clone());
                        async move {
                            // Rotation ping-pongs a row of the task's own between two keys.
                            let step = if op == Op::Rotate {
                                rotate_state[task]
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                            } else {
                                i
                            };
                            raw_pg_step(&raw, op, task, step).await;
                            (task, i + 1)
                        }
                    },
                )
                .await
            };
            row_named(
                "postgres",
                op.name(),
                op.baseline_sql(),
                tasks,
                &ours,
                Some(&base),
            );
        }
    }
    if Op::Create.selected() {
        capped_create(&tokens, seconds).await;
    }
    drop(schema);
}

/// Rounds of the capped/uncapped `create` comparison, alternating (each `--seconds` per side).
const CAP_ROUNDS: usize = 4;

/// `create` under a per-user cap of 10 (the function that evicts and inserts with the user's
/// creates taking turns) against the uncapped insert. Each store has a table of its own, so the
/// uncapped one's rows never fill the capped one's users past the cap (its evictions would then
/// be work the other side does not do); one warm-up round each reaches the capped side's steady
/// state (every create evicts one), then alternating rounds.
async fn capped_create(tokens: &Arc<Vec<session_core::SessionToken>>, seconds: u64) {
    let open = |schema: &PgSchema, cap: Option<u32>| {
        let url = schema.url();
        async move {
            let mut policy = SessionPolicy::default();
            policy.max_sessions_per_user = cap;
            let store: Arc<dyn UserSessionStore> = Arc::new(
                PgSessionStore::connect(&url, PoolConfig::default(), policy)
                    .await
                    .unwrap(),
            );
            store
        }
    };
    let (capped_schema, uncapped_schema) = (
        PgSchema::create("bench_capped"),
        PgSchema::create("bench_uncapped"),
    );
    let capped = open(&capped_schema, Some(10)).await;
    let uncapped = open(&uncapped_schema, None).await;
    run_store(&capped, tokens, Op::Create, 32, seconds).await;
    run_store(&uncapped, tokens, Op::Create, 32, seconds).await;
    for tasks in CONCURRENCY {
        let (ours, base) = alternate(
            || run_store(&capped, tokens, Op::Create, tasks, seconds),
            || run_store(&uncapped, tokens, Op::Create, tasks, seconds),
        )
        .await;
        row_named(
            "postgres+cap",
            "create",
            "uncapped create",
            tasks,
            &ours,
            Some(&base),
        );
    }
    // What taking turns costs: the same eviction and insert as one statement with no lock (the
    // store's capped create before it took turns, which let concurrent creates exceed the cap),
    // raw diesel-async on a table of its own, against the store's capped create.
    // Both sides start on fresh tables again, so neither has evicted for longer than the other.
    let (capped_schema, racy_schema) = (
        PgSchema::create("bench_capped_again"),
        PgSchema::create("bench_capped_racy"),
    );
    let capped = open(&capped_schema, Some(10)).await;
    open(&racy_schema, None).await; // migrates
    let raw = raw_pool::<AsyncPgConnection>(&racy_schema.url(), &PoolConfig::default()).await;
    let racy = |tasks| {
        let raw = raw.clone();
        drive(
            tasks,
            seconds,
            |task| async move { task * 7919 },
            move |i| {
                let raw = raw.clone();
                async move {
                    let mut conn = raw.get().await.unwrap();
                    diesel::sql_query(CAPPED_ONE_STATEMENT)
                        .bind::<Text, _>(format!(
                            "racy-{}",
                            NEXT_RAW.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        ))
                        .bind::<Text, _>(crate::new_user(i))
                        .prepared()
                        .execute(&mut *conn)
                        .await
                        .unwrap();
                    i + 1
                }
            },
        )
    };
    run_store(&capped, tokens, Op::Create, 32, seconds).await;
    racy(32).await;
    for tasks in CONCURRENCY {
        let (ours, base) = alternate(
            || run_store(&capped, tokens, Op::Create, tasks, seconds),
            || racy(tasks),
        )
        .await;
        row_named(
            "postgres+cap",
            "create",
            "evict+insert, no lock",
            tasks,
            &ours,
            Some(&base),
        );
    }
}

/// `CAP_ROUNDS` alternating rounds of both sides, which going first alternating too, so drift in
/// the machine's speed falls on both alike; each side's rounds combined.
async fn alternate<O, B>(
    ours: impl Fn() -> O,
    base: impl Fn() -> B,
) -> (crate::Outcome, crate::Outcome)
where
    O: std::future::Future<Output = crate::Outcome>,
    B: std::future::Future<Output = crate::Outcome>,
{
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..CAP_ROUNDS {
        if round % 2 == 0 {
            mine.push(ours().await);
            theirs.push(base().await);
        } else {
            theirs.push(base().await);
            mine.push(ours().await);
        }
    }
    (
        crate::Outcome::combine(mine),
        crate::Outcome::combine(theirs),
    )
}

/// The capped create as one statement without the per-user lock, cap 10 (`$1` handle, `$2` user).
const CAPPED_ONE_STATEMENT: &str = "WITH evicted AS (
    DELETE FROM user_sessions WHERE handle IN (
        SELECT handle FROM user_sessions WHERE user_id = $2 AND idle_expires_at > now()
        ORDER BY created_at DESC, handle DESC OFFSET 9))
    INSERT INTO user_sessions (handle, user_id, company_name, email, is_root, remember_me, attributes,
        created_at, last_seen_at, idle_expires_at, absolute_expires_at, version, authenticated_at,
        device, address)
    VALUES ($1, $2, '', '', false, false, '{}', now(), now(), now() + interval '30 minutes',
        now() + interval '12 hours', 1, now(), '', NULL)";

#[derive(Clone)]
struct RawMysql {
    pool: RawPool<AsyncMysqlConnection>,
    handles: Arc<Vec<String>>,
}

/// The MySQL store's session columns as its reads select them (`mysql_store.rs`).
const MYSQL_COLUMNS: &str = "CAST(handle AS CHAR) AS handle, CAST(user_id AS CHAR) AS user_id, company_name, email, \
     is_root, remember_me, attributes, created_at_ms, last_seen_at_ms, idle_expires_at_ms, \
     absolute_expires_at_ms, version, COALESCE(authenticated_at_ms, created_at_ms) AS authenticated_at_ms, \
     COALESCE(device, '') AS device, address";

/// The MySQL store's insert (`mysql_store.rs`), fifteen binds.
const MYSQL_INSERT: &str = "INSERT INTO user_sessions (handle, user_id, company_name, email, is_root, remember_me,
         attributes, created_at_ms, last_seen_at_ms, idle_expires_at_ms, absolute_expires_at_ms, version,
         authenticated_at_ms, device, address)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// Milliseconds since the epoch, the MySQL store's instants.
fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// The MySQL store's insert of a session of `user` under `handle` (30 min idle, 12 h absolute).
fn mysql_insert(
    handle: String,
    user: String,
    now: i64,
) -> diesel::query_builder::BoxedSqlQuery<
    'static,
    diesel::mysql::Mysql,
    diesel::query_builder::SqlQuery,
> {
    use diesel::sql_types::Bool;
    diesel::sql_query(MYSQL_INSERT)
        .into_boxed::<diesel::mysql::Mysql>()
        .bind::<Text, _>(handle)
        .bind::<Text, _>(user)
        .bind::<Text, _>("")
        .bind::<Text, _>("bench@example.com")
        .bind::<Bool, _>(false)
        .bind::<Bool, _>(false)
        .bind::<Text, _>("{}")
        .bind::<BigInt, _>(now)
        .bind::<BigInt, _>(now)
        .bind::<BigInt, _>(now + 30 * 60 * 1000)
        .bind::<BigInt, _>(now + 12 * 3600 * 1000)
        .bind::<BigInt, _>(1)
        .bind::<BigInt, _>(now)
        .bind::<Text, _>("")
        .bind::<diesel::sql_types::Nullable<Text>, _>(None::<String>)
}

/// One statement of the raw MySQL baseline (two for create+delete), kept prepared.
async fn raw_mysql_step(raw: &RawMysql, op: Op, task: usize, i: usize) {
    let mut conn = raw.pool.get().await.unwrap();
    let handle = &raw.handles[i % raw.handles.len()];
    let now = now_ms();
    let query = |sql: String| diesel::sql_query(sql).into_boxed::<diesel::mysql::Mysql>();
    let next_raw = || {
        format!(
            "raw-{}",
            NEXT_RAW.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )
    };
    let statement = match op {
        Op::Get | Op::Touch => query(format!(
            "SELECT {MYSQL_COLUMNS} FROM user_sessions WHERE handle = ? AND idle_expires_at_ms > ?"
        ))
        .bind::<Text, _>(handle.clone())
        .bind::<BigInt, _>(now),
        Op::Create => mysql_insert(next_raw(), crate::new_user(i), now),
        Op::Update => query(
            "UPDATE user_sessions SET attributes = ?, version = version + 1
             WHERE handle = ? AND idle_expires_at_ms > ?"
                .to_owned(),
        )
        .bind::<Text, _>(format!("{{\"n\":{i}}}"))
        .bind::<Text, _>(format!("own-{task}"))
        .bind::<BigInt, _>(now),
        Op::Rotate => query("UPDATE user_sessions SET handle = ? WHERE handle = ?".to_owned())
            .bind::<Text, _>(format!("own-{task}-{}", (i + 1) % 2))
            .bind::<Text, _>(format!("own-{task}-{}", i % 2)),
        Op::ListByUser => query(format!(
            "SELECT {MYSQL_COLUMNS} FROM user_sessions WHERE user_id = ? AND idle_expires_at_ms > ?
             ORDER BY user_sessions.created_at_ms, user_sessions.handle"
        ))
        .bind::<Text, _>(format!("user-{}", i % USERS))
        .bind::<BigInt, _>(now),
        Op::CreateDelete => {
            let new = next_raw();
            mysql_insert(new.clone(), crate::new_user(i), now)
                .prepared()
                .execute(&mut *conn)
                .await
                .unwrap();
            query("DELETE FROM user_sessions WHERE handle = ?".to_owned()).bind::<Text, _>(new)
        }
    };
    statement.prepared().execute(&mut *conn).await.unwrap();
}

/// The MySQL/MariaDB store (`MYSQL_URL`, default the local server as root, in a database of its
/// own) against raw diesel-async statements on the same table, as `bench_postgres` does.
pub(crate) async fn bench_mysql(seconds: u64) {
    let database = MysqlDatabase::create("bench_store");
    let config = PoolConfig::default();
    let store: Arc<dyn UserSessionStore> = Arc::new(
        MysqlSessionStore::connect(&database.url(), config.clone(), SessionPolicy::default())
            .await
            .unwrap(),
    );
    // The baseline is the limit of raw diesel-async: same pool size, no checkout ping, every
    // statement kept prepared (the store tests connections locally, ADR 0008).
    let mut config = config;
    config.test_on_checkout = false;
    let tokens = prefill(&store).await;
    let raw = RawMysql {
        pool: raw_pool::<AsyncMysqlConnection>(&database.url(), &config).await,
        handles: Arc::new(
            tokens
                .iter()
                .map(|t| t.handle().as_str().to_owned())
                .collect(),
        ),
    };
    {
        // Rows of the baseline's own for update and rotate, one per task.
        let mut conn = raw.pool.get().await.unwrap();
        for task in 0..32 {
            for name in [format!("own-{task}"), format!("own-{task}-0")] {
                mysql_insert(name, "own".to_owned(), now_ms())
                    .execute(&mut *conn)
                    .await
                    .unwrap();
            }
        }
    }
    assert_eq!(tokens.len(), PREFILL);
    // Which of its two keys each task's own row has now (rotation ping-pongs between them); kept
    // across runs because the rows keep their names.
    let rotate_state = Arc::new(
        (0..32)
            .map(|_| std::sync::atomic::AtomicUsize::new(0))
            .collect::<Vec<_>>(),
    );
    for op in Op::ALL.into_iter().filter(|op| op.selected()) {
        for tasks in CONCURRENCY {
            let ours = run_store(&store, &tokens, op, tasks, seconds).await;
            let base = {
                let (raw, rotate_state) = (raw.clone(), rotate_state.clone());
                drive(
                    tasks,
                    seconds,
                    |task| async move { (task, task * 7919) },
                    move |(task, i)| {
                        let (raw, rotate_state) = (raw.clone(), rotate_state.clone());
                        async move {
                            let step = if op == Op::Rotate {
                                rotate_state[task]
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                            } else {
                                i
                            };
                            raw_mysql_step(&raw, op, task, step).await;
                            (task, i + 1)
                        }
                    },
                )
                .await
            };
            row_named(
                "mysql",
                op.name(),
                op.baseline_sql(),
                tasks,
                &ours,
                Some(&base),
            );
        }
    }
    if Op::Create.selected() {
        mysql_capped_create(&tokens, seconds).await;
    }
    drop(database);
}

/// `create` under a per-user cap of 10 (a READ COMMITTED transaction: the user's turn row, the
/// live sessions read, the evictions, the insert) against the uncapped insert, each store in a
/// database of its own, then alternating rounds, as on PostgreSQL. The capped side warms up at 32
/// tasks until every user is at the cap (at least 11 creates per user: MariaDB's capped creates
/// are slower than PostgreSQL's, and one round would leave users below it, creates that evict
/// nothing); the uncapped side one round.
async fn mysql_capped_create(tokens: &Arc<Vec<session_core::SessionToken>>, seconds: u64) {
    let open = |database: &MysqlDatabase, cap: Option<u32>| {
        let url = database.url();
        async move {
            let mut policy = SessionPolicy::default();
            policy.max_sessions_per_user = cap;
            let store: Arc<dyn UserSessionStore> = Arc::new(
                MysqlSessionStore::connect(&url, PoolConfig::default(), policy)
                    .await
                    .unwrap(),
            );
            store
        }
    };
    let (capped_db, uncapped_db) = (
        MysqlDatabase::create("bench_capped"),
        MysqlDatabase::create("bench_uncapped"),
    );
    let capped = open(&capped_db, Some(10)).await;
    let uncapped = open(&uncapped_db, None).await;
    let mut made = 0;
    while made < 11 * USERS as u64 {
        made += run_store(&capped, tokens, Op::Create, 32, seconds)
            .await
            .ops;
    }
    run_store(&uncapped, tokens, Op::Create, 32, seconds).await;
    for tasks in CONCURRENCY {
        let (ours, base) = alternate(
            || run_store(&capped, tokens, Op::Create, tasks, seconds),
            || run_store(&uncapped, tokens, Op::Create, tasks, seconds),
        )
        .await;
        row_named(
            "mysql+cap",
            "create",
            "uncapped create",
            tasks,
            &ours,
            Some(&base),
        );
    }
}
