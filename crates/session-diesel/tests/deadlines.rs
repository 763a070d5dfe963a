//! Scope deadlines and the retry of serialization failures, against real databases: PostgreSQL
//! (127.0.0.1:5432, each test in its own schema), MariaDB (127.0.0.1:3306, each test in its own
//! database) and SQLite (each test in its own file).
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use session_core::{
    DbSessionProvider, IsolationLevel, PoolConfig, RetryPolicy, ScopeError, ScopeOptions,
    SessionError,
};
use session_diesel::{MysqlProvider, PgProvider, SqliteProvider, from_diesel};
use session_testkit::servers::{MysqlDatabase, PgSchema, SqliteFile, eventually, mysql_try};

#[derive(Debug, QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn pool(max_size: u32) -> PoolConfig {
    let mut config = PoolConfig::default();
    config.max_size = max_size;
    config
}

fn is_scope_timeout(e: &SessionError, limit: Duration) -> bool {
    matches!(e, SessionError::Timeout { operation: "scope", after, .. } if *after == limit)
}

/// A thousand scopes cut by their deadline, sixteen at a time, each in the middle of a statement
/// that would run for ten seconds: every one answers a typed `Timeout`, the server stops every
/// statement (no backend of this schema is left running one or idle in a transaction), and the
/// pool then serves clean connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deadline_cut_scopes_leave_the_pool_clean() {
    let schema = PgSchema::create("deadline");
    let provider = Arc::new(PgProvider::connect(&schema.url(), pool(8)).await.unwrap());
    let limit = Duration::from_millis(20);
    let mut cut = tokio::task::JoinSet::new();
    let started = Arc::new(AtomicUsize::new(0));
    for _ in 0..16 {
        let (provider, started) = (provider.clone(), started.clone());
        cut.spawn(async move {
            while started.fetch_add(1, Ordering::Relaxed) < 1000 {
                let result = provider
                    .transaction(ScopeOptions::new().timeout(limit), async |conn| {
                        diesel::sql_query("SELECT pg_sleep(60)")
                            .execute(conn)
                            .await
                            .map_err(|e| from_diesel("postgres", e))
                    })
                    .await;
                let err = result.unwrap_err();
                assert!(is_scope_timeout(&err, limit), "{err:?}");
            }
        });
    }
    while let Some(done) = cut.join_next().await {
        done.unwrap();
    }
    // Each backend the client gave up on stops at its own statement_timeout.
    let app = schema.name().to_owned();
    let leftovers = || {
        let provider = provider.clone();
        let app = app.clone();
        async move {
            provider
                .transaction(ScopeOptions::new(), async |conn| {
                    diesel::sql_query(
                        "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE application_name = $1
                         AND pid <> pg_backend_pid()
                         AND (query LIKE '%pg_sleep%' AND state = 'active' OR state LIKE 'idle in transaction%')",
                    )
                    .bind::<Text, _>(&app)
                    .get_result::<Count>(conn)
                    .await
                    .map_err(|e| from_diesel("postgres", e))
                })
                .await
                .unwrap()
                .n
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = leftovers().await;
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} backends still sleeping or idle in a transaction"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The pool serves: scopes on the connections it now hands out commit and answer.
    for n in 0..16_i64 {
        let answer = provider
            .transaction(ScopeOptions::new(), async |conn| {
                diesel::sql_query("SELECT CAST($1 AS BIGINT) AS n")
                    .bind::<BigInt, _>(n)
                    .get_result::<Count>(conn)
                    .await
                    .map_err(|e| from_diesel("postgres", e))
            })
            .await
            .unwrap();
        assert_eq!(answer.n, n);
    }
    let state = provider.state();
    assert!(state.connections <= 8, "{state:?}");
}

/// A scope within its deadline commits as usual, and a deadline also bounds the wait for a
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_deadline_covers_the_wait_for_a_connection() {
    let schema = PgSchema::create("deadline");
    let provider = PgProvider::connect(&schema.url(), pool(1)).await.unwrap();
    let fine = provider
        .transaction(
            ScopeOptions::new().timeout(Duration::from_secs(5)),
            async |conn| {
                diesel::sql_query("SELECT CAST(1 AS BIGINT) AS n")
                    .get_result::<Count>(conn)
                    .await
                    .map_err(|e| from_diesel("postgres", e))
            },
        )
        .await
        .unwrap();
    assert_eq!(fine.n, 1);
    let held = provider.connection().await.unwrap();
    let limit = Duration::from_millis(100);
    let err = provider
        .transaction(ScopeOptions::new().timeout(limit), async |_conn| {
            Ok::<_, SessionError>(())
        })
        .await
        .unwrap_err();
    assert!(is_scope_timeout(&err, limit), "{err:?}");
    drop(held);
}

/// SQLite has no statement time-out: the client's deadline alone cuts the scope, and the pool
/// serves on (the abandoned statement finishes on its blocking thread, and that connection is
/// discarded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_scope_past_its_deadline_times_out_and_the_pool_serves_on() {
    let file = SqliteFile::new("deadline");
    let provider = SqliteProvider::open(&file.url(), pool(4)).await.unwrap();
    let limit = Duration::from_millis(50);
    let err = provider
        .transaction(ScopeOptions::new().timeout(limit), async |conn| {
            diesel::sql_query(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000)
                 SELECT COUNT(*) AS n FROM c",
            )
            .get_result::<Count>(conn)
            .await
            .map_err(|e| from_diesel("sqlite", e))
        })
        .await
        .unwrap_err();
    assert!(is_scope_timeout(&err, limit), "{err:?}");
    let n = provider
        .transaction(ScopeOptions::new(), async |conn| {
            diesel::sql_query("SELECT CAST(7 AS BIGINT) AS n")
                .get_result::<Count>(conn)
                .await
                .map_err(|e| from_diesel("sqlite", e))
        })
        .await
        .unwrap();
    assert_eq!(n.n, 7);
}

/// Two SERIALIZABLE scopes that each read the whole table and then insert (write skew): run
/// together, one of them loses. `transaction` returns the loss as a serialization failure;
/// `transaction_retrying` runs the loser again and both commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_serialization_failures_run_again_until_they_commit() {
    let schema = PgSchema::create("retry");
    let provider = Arc::new(PgProvider::connect(&schema.url(), pool(4)).await.unwrap());
    provider
        .transaction(ScopeOptions::new(), async |conn| {
            diesel::sql_query("CREATE TABLE ledger (v BIGINT NOT NULL)")
                .execute(conn)
                .await
                .map_err(|e| from_diesel("postgres", e))
        })
        .await
        .unwrap();
    let serializable = ScopeOptions::new().isolation(IsolationLevel::Serializable);

    // Both read before either writes: the barrier holds the first attempts of both together.
    async fn skewed(
        provider: Arc<PgProvider>,
        barrier: Arc<tokio::sync::Barrier>,
        attempts: Arc<AtomicUsize>,
        retry: Option<RetryPolicy>,
    ) -> Result<(), SessionError> {
        let options = ScopeOptions::new().isolation(IsolationLevel::Serializable);
        let (barrier, attempts) = (&*barrier, &*attempts);
        let scope = async |conn: &mut diesel_async::AsyncPgConnection| {
            let first = attempts.fetch_add(1, Ordering::SeqCst) < 2;
            let sum = diesel::sql_query("SELECT COALESCE(SUM(v), 0)::BIGINT AS n FROM ledger")
                .get_result::<Count>(conn)
                .await
                .map_err(|e| from_diesel("postgres", e))?;
            if first {
                barrier.wait().await;
            }
            diesel::sql_query("INSERT INTO ledger (v) VALUES ($1)")
                .bind::<BigInt, _>(sum.n + 1)
                .execute(conn)
                .await
                .map_err(|e| from_diesel("postgres", e))?;
            Ok::<_, SessionError>(())
        };
        match retry {
            Some(retry) => provider.transaction_retrying(options, &retry, scope).await,
            None => provider.transaction(options, scope).await,
        }
    }

    for retry in [None, Some(RetryPolicy::default())] {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let attempts = Arc::new(AtomicUsize::new(0));
        let runs: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(skewed(
                    provider.clone(),
                    barrier.clone(),
                    attempts.clone(),
                    retry.clone(),
                ))
            })
            .collect();
        let mut outcomes = Vec::new();
        for run in runs {
            outcomes.push(run.await.unwrap());
        }
        match retry {
            None => {
                let lost: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
                assert_eq!(lost.len(), 1, "{outcomes:?}");
                assert!(lost[0].is_serialization_failure(), "{:?}", lost[0]);
            }
            Some(_) => {
                assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
                assert!(
                    AtomicUsize::load(&attempts, Ordering::SeqCst) >= 3,
                    "the loser ran again"
                );
            }
        }
    }
    // One row from the first round's winner, two from the second: each saw a consistent sum.
    let rows = provider
        .transaction(serializable, async |conn| {
            diesel::sql_query("SELECT COUNT(DISTINCT v) AS n FROM ledger")
                .get_result::<Count>(conn)
                .await
                .map_err(|e| from_diesel("postgres", e))
        })
        .await
        .unwrap();
    assert_eq!(rows.n, 3);
}

/// Two rounds of two transactions on `$provider` that add 1 to rows 1 and 2 in opposite orders,
/// each holding its first row lock until the other has taken its own: the server picks one as the
/// deadlock victim. Without retry exactly one fails, as a temporary serialization failure; with
/// `transaction_retrying` the victim runs again and both commit. Rows 1 and 2 end 6 higher.
macro_rules! opposite_order_rounds {
    ($provider:expr, $conn:ty, $backend:literal, $update:literal) => {
        for retry in [None, Some(RetryPolicy::default())] {
            let barrier = Arc::new(tokio::sync::Barrier::new(2));
            let attempts = Arc::new(AtomicUsize::new(0));
            let runs: Vec<_> = [(1, 2), (2, 1)]
                .into_iter()
                .map(|(first, second)| {
                    let (provider, barrier, attempts, retry) = (
                        $provider.clone(),
                        barrier.clone(),
                        attempts.clone(),
                        retry.clone(),
                    );
                    tokio::spawn(async move {
                        let (barrier, attempts) = (&*barrier, &*attempts);
                        let scope = async |conn: &mut $conn| {
                            let first_attempt = attempts.fetch_add(1, Ordering::SeqCst) < 2;
                            for (i, id) in [first, second].into_iter().enumerate() {
                                diesel::sql_query($update)
                                    .bind::<BigInt, _>(id)
                                    .execute(conn)
                                    .await
                                    .map_err(|e| from_diesel($backend, e))?;
                                if i == 0 && first_attempt {
                                    barrier.wait().await;
                                }
                            }
                            Ok::<_, SessionError>(())
                        };
                        match retry {
                            Some(mut retry) => {
                                retry.max_retries = 5;
                                provider
                                    .transaction_retrying(ScopeOptions::new(), &retry, scope)
                                    .await
                            }
                            None => provider.transaction(ScopeOptions::new(), scope).await,
                        }
                    })
                })
                .collect();
            let mut outcomes = Vec::new();
            for run in runs {
                outcomes.push(run.await.unwrap());
            }
            if retry.is_none() {
                let lost: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
                assert_eq!(lost.len(), 1, "one victim: {outcomes:?}");
                assert!(
                    lost[0].is_serialization_failure() && lost[0].is_temporary(),
                    "{:?}",
                    lost[0]
                );
            } else {
                assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
                assert!(
                    AtomicUsize::load(&attempts, Ordering::SeqCst) >= 3,
                    "the victim ran again"
                );
            }
        }
    };
}

/// Two PostgreSQL transactions that lock two rows in opposite orders: the server picks one as the
/// deadlock victim (40P01, after its `deadlock_timeout`, 1 s by default), which is a temporary
/// serialization failure (diesel-async maps only 40001; the deadlock is matched by its message);
/// `transaction_retrying` runs the victim again and both commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deadlock_victims_are_temporary_and_run_again_until_they_commit() {
    let schema = PgSchema::create("deadlock");
    let provider = Arc::new(PgProvider::connect(&schema.url(), pool(4)).await.unwrap());
    provider
        .transaction(ScopeOptions::new(), async |conn| {
            diesel::sql_query("CREATE TABLE accounts (id BIGINT PRIMARY KEY, n BIGINT NOT NULL)")
                .execute(conn)
                .await
                .map_err(|e| from_diesel("postgres", e))?;
            diesel::sql_query("INSERT INTO accounts VALUES (1, 0), (2, 0)")
                .execute(conn)
                .await
                .map_err(|e| from_diesel("postgres", e))
        })
        .await
        .unwrap();
    opposite_order_rounds!(
        provider,
        diesel_async::AsyncPgConnection,
        "postgres",
        "UPDATE accounts SET n = n + 1 WHERE id = $1"
    );
    let total = provider
        .transaction(ScopeOptions::new(), async |conn| {
            diesel::sql_query("SELECT SUM(n)::BIGINT AS n FROM accounts")
                .get_result::<Count>(conn)
                .await
                .map_err(|e| from_diesel("postgres", e))
        })
        .await
        .unwrap();
    assert_eq!(
        total.n, 6,
        "the winner of round one (2), both of round two (4)"
    );
}

/// The seed's pool (`pool_size 5`, `max_overflow 10`) as `min_idle 5`, `max_size 15`: a burst of
/// 15 concurrent scopes opens more connections than the minimum, and once the burst has passed,
/// the idle ones close after `idle_timeout` (1 s here) and the pool is back at 5. Prints the
/// timeline it measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_overflow_connections_close_once_the_burst_has_passed() {
    let schema = PgSchema::create("overflow");
    let mut config = pool(15);
    config.min_idle = Some(5);
    config.idle_timeout = Some(Duration::from_secs(1));
    let provider = Arc::new(PgProvider::connect(&schema.url(), config).await.unwrap());
    let burst: Vec<_> = (0..15)
        .map(|_| {
            let provider = provider.clone();
            tokio::spawn(async move {
                provider
                    .transaction(ScopeOptions::new(), async |conn| {
                        diesel::sql_query("SELECT pg_sleep(0.3)")
                            .execute(conn)
                            .await
                            .map_err(|e| from_diesel("postgres", e))
                    })
                    .await
                    .unwrap();
            })
        })
        .collect();
    for scope in burst {
        scope.await.unwrap();
    }
    let passed = std::time::Instant::now();
    // (More than the minimum, at least: on a slow machine a connection of the burst may already
    // have idled past the time-out.)
    assert!(
        provider.state().connections > 5,
        "the burst opened more than the minimum"
    );
    let mut timeline = vec![(0, provider.state().connections)];
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let open = provider.state().connections;
        let at = passed.elapsed().as_millis();
        if timeline.last().is_some_and(|(_, last)| *last != open) {
            timeline.push((at, open));
        }
        // bb8 closes every idle connection past the time-out and then reopens up to `min_idle`:
        // the count may dip below 5 on its way back.
        if open <= 5 {
            break;
        }
        assert!(
            at < 10_000,
            "still {open} connections 10 s after the burst: {timeline:?}"
        );
    }
    // And bb8 opens the minimum again.
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let open = provider.state().connections;
        if open == 5 {
            timeline.push((passed.elapsed().as_millis(), open));
            break;
        }
        assert!(
            passed.elapsed() < Duration::from_secs(15),
            "the minimum of 5 was not reopened: {timeline:?}"
        );
    }
    println!("connections after the burst (ms since it passed, open): {timeline:?}");
}

/// Two MariaDB transactions that lock two rows in opposite orders: InnoDB picks one as a deadlock
/// victim (1213), which is a temporary serialization failure; `transaction_retrying` runs it again
/// and both commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_deadlock_victims_run_again_until_they_commit() {
    let database = MysqlDatabase::create("deadlock");
    let provider = Arc::new(
        MysqlProvider::connect(&database.url(), pool(4))
            .await
            .unwrap(),
    );
    provider
        .transaction(ScopeOptions::new(), async |conn| {
            diesel::sql_query(
                "CREATE TABLE accounts (id BIGINT PRIMARY KEY, n BIGINT NOT NULL) ENGINE = InnoDB",
            )
            .execute(conn)
            .await
            .map_err(|e| from_diesel("mysql", e))?;
            diesel::sql_query("INSERT INTO accounts VALUES (1, 0), (2, 0)")
                .execute(conn)
                .await
                .map_err(|e| from_diesel("mysql", e))
        })
        .await
        .unwrap();
    opposite_order_rounds!(
        provider,
        diesel_async::AsyncMysqlConnection,
        "mysql",
        "UPDATE accounts SET n = n + 1 WHERE id = ?"
    );
    let total = provider
        .transaction(ScopeOptions::new(), async |conn| {
            diesel::sql_query("SELECT CAST(SUM(n) AS SIGNED) AS n FROM accounts")
                .get_result::<Count>(conn)
                .await
                .map_err(|e| from_diesel("mysql", e))
        })
        .await
        .unwrap();
    assert_eq!(
        total.n, 6,
        "the winner of round one (2), both of round two (4)"
    );
}

/// The MySQL form of the deadline-cut scopes: 400 scopes cut by a 50 ms deadline in the middle of
/// `SLEEP(60)`, two at a time, each a typed `Timeout`; MariaDB stops every statement the client
/// gave up on (`max_statement_time`; nothing of this database is left sleeping or in a transaction),
/// and the pool then serves clean connections, without the last scope's time limit. Fewer and
/// slower than the PostgreSQL run: each cut scope discards its connection, and under that churn
/// MariaDB 10.11 at times stalls new statements for about two seconds (their `max_statement_time`
/// timers wait), while every cut opens another connection; sixteen tasks at 20 ms went past its
/// 151 connections (ADR 0023).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_deadline_cut_scopes_leave_the_pool_clean() {
    let database = MysqlDatabase::create("deadline");
    let provider = Arc::new(
        MysqlProvider::connect(&database.url(), pool(8))
            .await
            .unwrap(),
    );
    let limit = Duration::from_millis(50);
    let mut cut = tokio::task::JoinSet::new();
    let started = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let (provider, started) = (provider.clone(), started.clone());
        cut.spawn(async move {
            while started.fetch_add(1, Ordering::Relaxed) < 400 {
                let result = provider
                    .transaction(ScopeOptions::new().timeout(limit), async |conn| {
                        diesel::sql_query("SELECT SLEEP(60)")
                            .execute(conn)
                            .await
                            .map_err(|e| from_diesel("mysql", e))
                    })
                    .await;
                let err = result.unwrap_err();
                assert!(is_scope_timeout(&err, limit), "{err:?}");
            }
        });
    }
    while let Some(done) = cut.join_next().await {
        done.unwrap();
    }
    // Answered by the `mysql` client, which may itself be refused a connection while the cut
    // ones close: that counts as "not yet".
    let leftovers = || {
        mysql_try(&format!(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST p
             LEFT JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID
             WHERE p.DB = '{}' AND p.ID <> CONNECTION_ID()
               AND (p.INFO LIKE '%SLEEP(60)%' OR t.trx_id IS NOT NULL)",
            database.name()
        ))
    };
    eventually(
        Duration::from_secs(5),
        "connections still sleeping or in a transaction",
        || leftovers().is_ok_and(|n| n == "0"),
    )
    .await;
    #[derive(QueryableByName)]
    struct Limit {
        #[diesel(sql_type = diesel::sql_types::Double)]
        limit: f64,
    }
    for n in 0..16_i64 {
        let (answer, left) = provider
            .transaction(ScopeOptions::new(), async |conn| {
                let answer = diesel::sql_query("SELECT CAST(? AS SIGNED) AS n")
                    .bind::<BigInt, _>(n)
                    .get_result::<Count>(conn)
                    .await
                    .map_err(|e| from_diesel("mysql", e))?;
                let left = diesel::sql_query(
                    "SELECT CAST(@@session.max_statement_time AS DOUBLE) AS `limit`",
                )
                .get_result::<Limit>(conn)
                .await
                .map_err(|e| from_diesel("mysql", e))?;
                Ok::<_, SessionError>((answer.n, left.limit))
            })
            .await
            .unwrap();
        assert_eq!((answer, left), (n, 0.0));
    }
    let state = provider.state();
    assert!(state.connections <= 8, "{state:?}");
}
