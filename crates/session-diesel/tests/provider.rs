//! The transaction scope against real databases: PostgreSQL (127.0.0.1:5432, or `DATABASE_URL`),
//! each test in its own schema, and SQLite, each test in its own file. The same test bodies run on
//! both through `provider_tests!`.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, RunQueryDsl};
use session_core::{DbSessionProvider, PoolConfig, ScopeOptions, SessionError};
use session_diesel::{MysqlProvider, PgProvider, SqliteProvider};
use session_testkit::servers::{MysqlDatabase, PgSchema, SqliteFile};

#[derive(Debug)]
enum TestError {
    Session(SessionError),
    Db(diesel::result::Error),
    Intentional,
}

impl From<SessionError> for TestError {
    fn from(e: SessionError) -> Self {
        Self::Session(e)
    }
}

impl From<diesel::result::Error> for TestError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(e)
    }
}

#[derive(Debug, QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn small_pool() -> PoolConfig {
    let mut config = PoolConfig::default();
    config.max_size = 4;
    config
}

async fn open_pg(config: PoolConfig) -> (PgProvider, PgSchema) {
    let schema = PgSchema::create("provider");
    let provider = PgProvider::connect(&schema.url(), config).await.unwrap();
    (provider, schema)
}

async fn open_mysql(config: PoolConfig) -> (MysqlProvider, MysqlDatabase) {
    let database = MysqlDatabase::create("provider");
    let provider = MysqlProvider::connect(&database.url(), config)
        .await
        .unwrap();
    (provider, database)
}

async fn open_sqlite(config: PoolConfig) -> (SqliteProvider, SqliteFile) {
    let file = SqliteFile::new("provider");
    let provider = SqliteProvider::open(&file.url(), config).await.unwrap();
    (provider, file)
}

/// Rows of `items` (matching `where`, e.g. `"WHERE v < 0"`), counted in a scope of their own.
macro_rules! count {
    ($pool:expr) => {
        count!($pool, "")
    };
    ($pool:expr, $filter:literal) => {
        $pool
            .transaction(ScopeOptions::new(), async |conn| {
                diesel::sql_query(concat!("SELECT COUNT(*) AS n FROM items ", $filter))
                    .get_result::<Count>(conn)
                    .await
                    .map_err(TestError::from)
            })
            .await
            .unwrap()
            .n
    };
}

macro_rules! provider_tests {
    ($module:ident, $open:ident, $provider:ty, $guard:ty) => {
        mod $module {
            use super::*;

            /// A provider with an empty `items` table, and the guard that removes its database.
            async fn setup(config: PoolConfig) -> ($guard, $provider) {
                let (provider, guard) = $open(config).await;
                provider
                    .transaction(ScopeOptions::new(), async |conn| {
                        diesel::sql_query("CREATE TABLE items (v BIGINT NOT NULL)")
                            .execute(conn)
                            .await
                            .map_err(TestError::from)
                    })
                    .await
                    .unwrap();
                (guard, provider)
            }

            macro_rules! insert {
                ($conn:expr, $v:expr) => {
                    diesel::sql_query(format!("INSERT INTO items (v) VALUES ({})", $v))
                        .execute($conn)
                        .await
                };
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ok_commits_and_err_rolls_back_keeping_the_callers_error() {
                let (_guard, p) = setup(small_pool()).await;
                let n = p
                    .transaction(ScopeOptions::new(), async |conn| {
                        insert!(conn, 1)?;
                        insert!(conn, 2)?;
                        Ok::<_, TestError>(2)
                    })
                    .await
                    .unwrap();
                assert_eq!(n, 2);
                assert_eq!(count!(p), 2);
                let err = p
                    .transaction(ScopeOptions::new(), async |conn| {
                        insert!(conn, 3)?;
                        Err::<(), _>(TestError::Intentional)
                    })
                    .await
                    .unwrap_err();
                assert!(matches!(err, TestError::Intentional), "{err:?}");
                assert_eq!(count!(p), 2, "the failed scope's insert was rolled back");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_panicking_scope_rolls_back_and_the_pool_stays_usable() {
                let (_guard, p) = setup(small_pool()).await;
                let p = std::sync::Arc::new(p);
                let task = {
                    let p = p.clone();
                    tokio::spawn(async move {
                        p.transaction(ScopeOptions::new(), async |conn| {
                            insert!(conn, 1)?;
                            let explode = true;
                            if explode {
                                panic!("scope panics mid-transaction");
                            }
                            Ok::<_, TestError>(())
                        })
                        .await
                    })
                };
                assert!(task.await.unwrap_err().is_panic());
                assert_eq!(count!(p), 0, "nothing committed");
                for i in 0..10 {
                    p.transaction(ScopeOptions::new(), async |conn| {
                        insert!(conn, i).map_err(TestError::from)
                    })
                    .await
                    .unwrap();
                }
                assert_eq!(count!(p), 10);
                assert!(
                    p.state().broken_closed >= 1,
                    "the panicked connection was discarded: {:?}",
                    p.state()
                );
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_cancelled_scope_commits_nothing_and_later_scopes_commit_all() {
                let (_guard, p) = setup(small_pool()).await;
                let cancelled = tokio::time::timeout(
                    Duration::from_millis(200),
                    p.transaction(ScopeOptions::new(), async |conn| {
                        insert!(conn, -1)?;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        Ok::<_, TestError>(())
                    }),
                )
                .await;
                assert!(cancelled.is_err(), "the scope was cancelled by the timeout");
                for i in 0..1000 {
                    p.transaction(ScopeOptions::new(), async |conn| {
                        insert!(conn, i).map_err(TestError::from)
                    })
                    .await
                    .unwrap();
                }
                assert_eq!(
                    count!(p),
                    1000,
                    "exactly the 1,000 later scopes' rows, none of the cancelled one"
                );
                assert_eq!(count!(p, "WHERE v < 0"), 0);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_exhausted_pool_times_out_at_checkout() {
                let mut config = small_pool();
                config.max_size = 1;
                config.checkout_timeout = Duration::from_millis(300);
                let (_guard, p) = setup(config).await;
                let held = p.connection().await.unwrap();
                // The bound only catches a hang (the checkout timeout is 300 ms); the typed
                // error below says the timeout is what answered.
                let err = tokio::time::timeout(
                    Duration::from_secs(10),
                    p.transaction(ScopeOptions::new(), async |conn| {
                        insert!(conn, 1).map_err(TestError::from)
                    }),
                )
                .await
                .expect("answers instead of hanging")
                .unwrap_err();
                assert!(
                    matches!(
                        err,
                        TestError::Session(SessionError::Timeout {
                            operation: "checkout",
                            ..
                        })
                    ),
                    "{err:?}"
                );
                drop(held);
                p.transaction(ScopeOptions::new(), async |conn| {
                    insert!(conn, 1).map_err(TestError::from)
                })
                .await
                .unwrap();
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_nested_scope_is_a_savepoint() {
                let (_guard, p) = setup(small_pool()).await;
                p.transaction(ScopeOptions::new(), async |conn| {
                    insert!(conn, 1)?;
                    let inner = conn
                        .transaction(async |c| {
                            insert!(c, 2)?;
                            Err::<(), _>(diesel::result::Error::RollbackTransaction)
                        })
                        .await;
                    assert!(inner.is_err());
                    conn.transaction(async |c| insert!(c, 3).map(drop)).await?;
                    Ok::<_, TestError>(())
                })
                .await
                .unwrap();
                // (Counted rather than summed: `SUM` is DECIMAL on MySQL and needs a cast whose
                // syntax differs.)
                assert_eq!(
                    (count!(p), count!(p, "WHERE v = 2")),
                    (2, 0),
                    "outer and second inner committed; first inner rolled back"
                );
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn close_is_idempotent_and_refuses_new_scopes() {
                let (_guard, p) = setup(small_pool()).await;
                p.close().await;
                p.close().await;
                let err = p
                    .transaction(ScopeOptions::new(), async |conn| {
                        insert!(conn, 1).map_err(TestError::from)
                    })
                    .await
                    .unwrap_err();
                assert!(
                    matches!(err, TestError::Session(SessionError::Closed { .. })),
                    "{err:?}"
                );
                assert_eq!(p.state().connections, 0);
            }
        }
    };
}

provider_tests!(postgres, open_pg, PgProvider, PgSchema);
provider_tests!(sqlite, open_sqlite, SqliteProvider, SqliteFile);
provider_tests!(mysql, open_mysql, MysqlProvider, MysqlDatabase);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_terminated_backends_are_survived() {
    let (p, schema) = open_pg(small_pool()).await;
    // Fill the pool.
    let held: Vec<_> = futures_of(&p, 4).await;
    drop(held);
    assert_eq!(p.state().connections, 4);
    let terminated = schema.terminate_backends();
    assert_eq!(terminated, 4, "all pooled connections terminated");
    let one: i64 = p
        .transaction(ScopeOptions::new(), async |conn| {
            diesel::sql_query("SELECT 1::BIGINT AS n")
                .get_result::<Count>(conn)
                .await
                .map(|c| c.n)
                .map_err(TestError::from)
        })
        .await
        .unwrap();
    assert_eq!(one, 1, "the next scope after termination succeeds");
}

async fn futures_of(
    p: &PgProvider,
    n: usize,
) -> Vec<session_diesel::PooledConnection<diesel_async::AsyncPgConnection>> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(p.connection().await.unwrap());
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_isolation_and_read_only_options_apply() {
    let (p, _schema) = open_pg(small_pool()).await;
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        transaction_isolation: String,
    }
    let level = p
        .transaction(
            ScopeOptions::new().isolation(session_core::IsolationLevel::Serializable),
            async |conn| {
                diesel::sql_query("SHOW transaction_isolation")
                    .get_result::<Setting>(conn)
                    .await
                    .map_err(TestError::from)
            },
        )
        .await
        .unwrap();
    assert_eq!(level.transaction_isolation, "serializable");
    let err = p
        .transaction(ScopeOptions::new().read_only(), async |conn| {
            diesel::sql_query("CREATE TABLE nope (x INT)")
                .execute(conn)
                .await
                .map_err(TestError::from)
        })
        .await
        .unwrap_err();
    let TestError::Db(diesel::result::Error::DatabaseError(_, info)) = &err else {
        panic!("expected the server to refuse a write in a read-only scope, got {err:?}");
    };
    assert!(info.message().contains("read-only"), "{}", info.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_in_memory_database_is_shared_by_the_pool() {
    let p = SqliteProvider::open("sqlite::memory:", small_pool())
        .await
        .unwrap();
    p.transaction(ScopeOptions::new(), async |conn| {
        diesel::sql_query("CREATE TABLE items (v BIGINT NOT NULL)")
            .execute(conn)
            .await?;
        diesel::sql_query("INSERT INTO items (v) VALUES (7)")
            .execute(conn)
            .await
            .map_err(TestError::from)
    })
    .await
    .unwrap();
    // Hold one connection so the next scope must use another.
    let _held = p.connection().await.unwrap();
    assert_eq!(
        count!(p),
        1,
        "a second pooled connection sees the same in-memory database"
    );
    let err = p
        .transaction(ScopeOptions::new().read_only(), async |_conn| {
            Ok::<_, TestError>(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, TestError::Session(SessionError::Unsupported { .. })),
        "{err:?}"
    );
}

/// Write scopes on the in-memory database from every pooled connection at once all commit: the
/// writers wait for each other (shared-cache mode failed them with "database table is locked").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_in_memory_concurrent_writes_take_turns() {
    let p = std::sync::Arc::new(
        SqliteProvider::open("sqlite::memory:", small_pool())
            .await
            .unwrap(),
    );
    p.transaction(ScopeOptions::new(), async |conn| {
        diesel::sql_query("CREATE TABLE items (v BIGINT NOT NULL)")
            .execute(conn)
            .await
            .map_err(TestError::from)
    })
    .await
    .unwrap();
    let writers: Vec<_> = (0..32)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move {
                p.transaction(ScopeOptions::new(), async |conn| {
                    diesel::sql_query("UPDATE items SET v = v + 1")
                        .execute(conn)
                        .await?;
                    diesel::sql_query("INSERT INTO items (v) VALUES ($1)")
                        .bind::<diesel::sql_types::BigInt, _>(i64::from(i))
                        .execute(conn)
                        .await
                        .map_err(TestError::from)
                })
                .await
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap().unwrap();
    }
    assert_eq!(count!(p), 32);
}

/// MySQL sets a transaction's isolation and access mode before it begins: the scope's level
/// reaches the transaction (a READ COMMITTED scope sees a row another connection commits meanwhile,
/// a REPEATABLE READ one does not), a read-only scope cannot write, a deadline stops the statement
/// (MariaDB's `max_statement_time`) and is not left on the pooled connection for the next scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_isolation_read_only_and_deadline_apply() {
    let (p, database) = open_mysql(small_pool()).await;
    p.transaction(ScopeOptions::new(), async |conn| {
        diesel::sql_query("CREATE TABLE items (v BIGINT NOT NULL) ENGINE = InnoDB")
            .execute(conn)
            .await
            .map_err(TestError::from)
    })
    .await
    .unwrap();
    for (isolation, sees_the_new_row) in [
        (session_core::IsolationLevel::RepeatableRead, false),
        (session_core::IsolationLevel::ReadCommitted, true),
        (session_core::IsolationLevel::Default, false),
        (session_core::IsolationLevel::ReadCommitted, true),
    ] {
        let p = &p;
        let (before, after) = p
            .transaction(ScopeOptions::new().isolation(isolation), async |conn| {
                let count = async |conn: &mut diesel_async::AsyncMysqlConnection| {
                    diesel::sql_query("SELECT COUNT(*) AS n FROM items")
                        .get_result::<Count>(conn)
                        .await
                        .map(|c| c.n)
                };
                let before = count(conn).await?;
                // Another connection commits a row while this transaction is open.
                p.transaction(ScopeOptions::new(), async |other| {
                    diesel::sql_query("INSERT INTO items (v) VALUES (1)")
                        .execute(other)
                        .await
                        .map_err(TestError::from)
                })
                .await?;
                let after = count(conn).await?;
                Ok::<_, TestError>((before, after))
            })
            .await
            .unwrap();
        assert_eq!(after > before, sees_the_new_row, "{isolation:?}");
    }
    let err = p
        .transaction(ScopeOptions::new().read_only(), async |conn| {
            diesel::sql_query("INSERT INTO items (v) VALUES (1)")
                .execute(conn)
                .await
                .map_err(TestError::from)
        })
        .await
        .unwrap_err();
    let TestError::Db(diesel::result::Error::DatabaseError(_, info)) = &err else {
        panic!("expected the server to refuse a write in a read-only scope, got {err:?}");
    };
    assert!(info.message().contains("READ ONLY"), "{}", info.message());
    // The deadline: the statement is stopped, the scope is a typed time-out.
    let limit = Duration::from_millis(200);
    let err = p
        .transaction(ScopeOptions::new().timeout(limit), async |conn| {
            diesel::sql_query("SELECT SLEEP(30) AS n")
                .get_result::<Count>(conn)
                .await
                .map_err(TestError::from)
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TestError::Session(SessionError::Timeout {
                operation: "scope",
                ..
            })
        ),
        "{err:?}"
    );
    // On a pool of one connection: a scope with a deadline runs under it, the next one without.
    let mut one = small_pool();
    one.max_size = 1;
    let single = MysqlProvider::connect(&database.url(), one).await.unwrap();
    #[derive(QueryableByName)]
    struct Limit {
        #[diesel(sql_type = diesel::sql_types::Double)]
        limit: f64,
    }
    let mut seen = Vec::new();
    for options in [
        ScopeOptions::new().timeout(Duration::from_secs(5)),
        ScopeOptions::new(),
    ] {
        let limit = single
            .transaction(options, async |conn| {
                diesel::sql_query("SELECT CAST(@@session.max_statement_time AS DOUBLE) AS `limit`")
                    .get_result::<Limit>(conn)
                    .await
                    .map_err(TestError::from)
            })
            .await
            .unwrap();
        seen.push(limit.limit);
    }
    assert_eq!(seen, vec![5.0, 0.0]);
}
