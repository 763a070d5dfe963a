//! Redis-specific behaviour: round trips per operation, what is in the keyspace, native expiry of
//! the index, faults (killed connections, unreachable and stalled servers, an exhausted pool),
//! corrupt data, and the compatibility layout. Fault tests use private servers, never the shared one.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use session_core::{
    ManualClock, NewUserSession, SessionError, SessionPolicy, SessionToken, UserSessionStore,
};
use session_redis::{Layout, RedisConfig, RedisStore};
use session_testkit::servers::{
    FaultProxy, RedisServer, StalledServer, free_port, redis_connection, redis_delete_prefix,
    redis_keys, redis_url, unique_prefix,
};

/// Deletes a prefix when the test ends, also on panic.
struct PrefixGuard {
    url: String,
    prefix: String,
}

impl Drop for PrefixGuard {
    fn drop(&mut self) {
        redis_delete_prefix(&self.url, &self.prefix);
    }
}

async fn shared_store(label: &str, policy: SessionPolicy) -> (RedisStore, PrefixGuard) {
    let url = redis_url();
    let _ = redis_connection(&url); // fails with how to start Redis if it is down
    let prefix = unique_prefix(label);
    let store = RedisStore::connect(
        RedisConfig::new(url.clone()).key_prefix(prefix.clone()),
        policy,
    )
    .await
    .expect("connect");
    (store, PrefixGuard { url, prefix })
}

fn alice() -> NewUserSession {
    NewUserSession::new("alice")
        .company_name("Acme")
        .email("alice@acme.test")
        .root(true)
}

/// `err` is a temporary `Timeout` of `operation` (`checkout` or `command`).
fn assert_timeout(err: &SessionError, operation: &str) {
    assert!(
        matches!(err, SessionError::Timeout { operation: op, .. } if *op == operation),
        "{err:?}"
    );
    assert!(err.is_temporary());
}

/// `MONITOR` on a private server, read over a raw socket: tells client-issued commands (one per
/// round trip of a store that does not pipeline) from commands run inside scripts (`[0 lua]`).
struct Monitor {
    lines: mpsc::Receiver<String>,
    admin: redis::Connection,
    markers: u32,
}

impl Monitor {
    fn start(server: &RedisServer) -> Self {
        let mut socket = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        std::io::Write::write_all(&mut socket, b"MONITOR\r\n").unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(socket).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut monitor = Self {
            lines,
            admin: server.connection(),
            markers: 0,
        };
        monitor.take();
        monitor
    }

    /// The monitored lines since the last call, up to a marker command sent now.
    fn take(&mut self) -> Vec<String> {
        self.markers += 1;
        let marker = format!("marker-{}", self.markers);
        let _: String = redis::cmd("ECHO")
            .arg(&marker)
            .query(&mut self.admin)
            .unwrap();
        let mut out = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(5))
                .expect("monitor output");
            if line.contains(&marker) {
                return out;
            }
            if line != "+OK" {
                out.push(line);
            }
        }
    }
}

fn command_stats(conn: &mut redis::Connection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            (!matches!(name, "info" | "config|resetstat" | "echo" | "monitor"))
                .then(|| (name.to_owned(), calls))
        })
        .collect()
}

fn client_commands(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| !l.contains(" lua]"))
        .filter_map(|l| {
            l.split("] ")
                .nth(1)?
                .split(' ')
                .next()
                .map(|c| c.trim_matches('"').to_lowercase())
        })
        .collect()
}

/// Runs `op` and returns (client-issued commands, every command executed by name).
async fn measure<T>(
    monitor: &mut Monitor,
    stats: &mut redis::Connection,
    op: impl std::future::Future<Output = T>,
) -> (T, Vec<String>, BTreeMap<String, u64>) {
    monitor.take();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(stats).unwrap();
    let value = op.await;
    let lines = monitor.take();
    (value, client_commands(&lines), command_stats(stats))
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_sends_the_documented_commands() {
    let server = RedisServer::start();
    let clock = ManualClock::starting_now();
    let policy = SessionPolicy::default().with_clock(clock.clone());
    let store = RedisStore::connect(RedisConfig::new(server.url()).pool_max_size(1), policy)
        .await
        .unwrap();
    // Load every script once, so NOSCRIPT reloads do not show in the counts.
    let warm = store.create(alice()).await.unwrap();
    // Due, so that it runs (and loads) the touch script.
    clock.advance(Duration::from_secs(61));
    store.touch(&warm.token).await.unwrap();
    let _ = store.update(&warm.session).await.unwrap();
    let warm = store.rotate(&warm.token).await.unwrap().unwrap();
    store.list_by_user("alice").await.unwrap();
    store.create(NewUserSession::new("nobody")).await.unwrap();
    store.delete_by_user("nobody", None).await.unwrap();
    store.purge_expired().await.unwrap();
    store.delete(&warm.token).await.unwrap();

    let mut monitor = Monitor::start(&server);
    let mut stats = server.connection();
    let one_evalsha = vec!["evalsha".to_owned()];

    // About one create in 21, chosen by the new session's hash, also trims the index: one
    // `ZRANGEBYSCORE` more on an index with nothing due.
    let trims = |issued: &session_core::IssuedSession| {
        issued.session.handle.hash().as_bytes()[0].is_multiple_of(16)
    };
    let (issued, client, all) = measure(&mut monitor, &mut stats, store.create(alice())).await;
    let issued = issued.unwrap();
    assert_eq!(client, one_evalsha, "create");
    let mut expected = counts(&[
        ("evalsha", 1),
        ("hset", 1),
        ("zadd", 1),
        // The session's TTL, then the index's: GT, and NX since a user's first index has none.
        ("pexpireat", 3),
    ]);
    if trims(&issued) {
        expected.insert("zrangebyscore".to_owned(), 1);
    }
    assert_eq!(all, expected, "create, the user's first session");
    // A later sign-in (its idle expiry past the index's TTL, which `GT` then raises).
    clock.advance(Duration::from_millis(1));
    let (other, _, all) = measure(&mut monitor, &mut stats, store.create(alice())).await;
    let mut expected = counts(&[("evalsha", 1), ("hset", 1), ("zadd", 1), ("pexpireat", 2)]);
    if trims(&other.unwrap()) {
        expected.insert("zrangebyscore".to_owned(), 1);
    }
    assert_eq!(all, expected, "create, the user's next session");

    let (_, client, all) = measure(&mut monitor, &mut stats, store.get(&issued.token)).await;
    assert_eq!(client, vec!["hmget".to_owned()], "get");
    assert_eq!(all, counts(&[("hmget", 1)]), "get");

    // A touch reads first (ADR 0031): inside the interval that read is all it sends.
    let (_, client, all) = measure(&mut monitor, &mut stats, store.touch(&issued.token)).await;
    assert_eq!(
        client,
        vec!["hmget".to_owned()],
        "touch inside the interval"
    );
    assert_eq!(
        all,
        counts(&[("hmget", 1)]),
        "a throttled touch writes nothing"
    );

    // Due: the read, then the script, which reads again and writes; the member's score stays.
    clock.advance(Duration::from_secs(61));
    let (_, client, all) = measure(&mut monitor, &mut stats, store.touch(&issued.token)).await;
    assert_eq!(
        client,
        vec!["hmget".to_owned(), "evalsha".to_owned()],
        "touch when due"
    );
    assert_eq!(
        all,
        counts(&[("evalsha", 1), ("hmget", 2), ("hset", 1), ("pexpireat", 2)]),
        "touch when due"
    );

    // With an interval of 0 every touch writes: the script alone, 4 commands inside it.
    let mut writing = SessionPolicy::default().with_clock(clock.clone());
    writing.touch_interval = Duration::ZERO;
    let every_time = RedisStore::connect(RedisConfig::new(server.url()).pool_max_size(1), writing)
        .await
        .unwrap();
    every_time.touch(&issued.token).await.unwrap().unwrap();
    clock.advance(Duration::from_millis(1));
    let (touched, client, all) =
        measure(&mut monitor, &mut stats, every_time.touch(&issued.token)).await;
    assert!(touched.unwrap().is_some());
    assert_eq!(client, one_evalsha, "touch with an interval of 0");
    assert_eq!(
        all,
        counts(&[("evalsha", 1), ("hmget", 1), ("hset", 1), ("pexpireat", 2)]),
        "touch with an interval of 0"
    );

    let session = store.get(&issued.token).await.unwrap().unwrap();
    let (updated, client, all) = measure(&mut monitor, &mut stats, store.update(&session)).await;
    let _ = updated.unwrap();
    assert_eq!(client, one_evalsha, "update");
    assert_eq!(
        all,
        counts(&[("evalsha", 1), ("hmget", 1), ("hset", 1)]),
        "update"
    );

    let (rotated, client, all) =
        measure(&mut monitor, &mut stats, store.rotate(&issued.token)).await;
    let rotated = rotated.unwrap().unwrap();
    assert_eq!(client, one_evalsha, "rotate");
    assert_eq!(
        all,
        counts(&[
            ("evalsha", 1),
            ("hmget", 1),
            ("rename", 1),
            ("zrem", 1),
            ("zadd", 1),
            // NX: a TTL for an index the ZADD had to make.
            ("pexpireat", 1)
        ]),
        "rotate"
    );

    let second = store.create(alice()).await.unwrap();
    let (listed, client, all) =
        measure(&mut monitor, &mut stats, store.list_by_user("alice")).await;
    assert_eq!(listed.unwrap().len(), 3);
    assert_eq!(client, one_evalsha, "list_by_user");
    assert_eq!(
        all,
        counts(&[("evalsha", 1), ("zrange", 1), ("hmget", 3)]),
        "list_by_user"
    );

    let (deleted, client, all) = measure(
        &mut monitor,
        &mut stats,
        store.delete_by_handle(&second.session.handle),
    )
    .await;
    assert!(deleted.unwrap());
    assert_eq!(client, one_evalsha, "delete_by_handle");
    assert_eq!(
        all,
        counts(&[("evalsha", 1), ("hmget", 1), ("del", 1), ("zrem", 1)]),
        "delete_by_handle"
    );

    store.create(alice()).await.unwrap();
    let (removed, client, _) = measure(
        &mut monitor,
        &mut stats,
        store.delete_by_user("alice", Some(&rotated.session.handle)),
    )
    .await;
    assert_eq!(removed.unwrap(), 2);
    // Two round trips: the members, then the script with every key it touches declared.
    assert_eq!(
        client,
        vec!["zrange".to_owned(), "evalsha".to_owned()],
        "delete_by_user"
    );

    let (deleted, client, _) =
        measure(&mut monitor, &mut stats, store.delete(&rotated.token)).await;
    assert!(deleted.unwrap());
    assert_eq!(client, one_evalsha, "delete");

    // A checkout ping, when configured, is one more round trip on every operation.
    let pinging = RedisStore::connect(
        RedisConfig::new(server.url()).test_on_checkout(true),
        SessionPolicy::default(),
    )
    .await
    .unwrap();
    let (_, client, _) = measure(&mut monitor, &mut stats, pinging.get(&issued.token)).await;
    assert_eq!(
        client,
        vec!["ping".to_owned(), "hmget".to_owned()],
        "get with test_on_checkout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_of_the_keyspace_finds_no_raw_token() {
    let (store, guard) = shared_store("scan", SessionPolicy::default()).await;
    let mut tokens = Vec::new();
    for i in 0..20 {
        let issued = store
            .create(NewUserSession::new(format!("user-{}", i % 4)).attribute("n", i))
            .await
            .unwrap();
        tokens.push(issued.token);
    }
    for token in tokens.clone().iter().take(5) {
        tokens.push(store.rotate(token).await.unwrap().unwrap().token);
    }
    let mut conn = redis_connection(&guard.url);
    let keys = redis_keys(&mut conn, &format!("{}*", guard.prefix));
    assert_eq!(keys.len(), 20 + 4, "20 sessions and 4 user indexes");
    let mut everything = String::new();
    for key in &keys {
        everything.push_str(key);
        let dumped: Vec<u8> = redis::cmd("DUMP").arg(key).query(&mut conn).unwrap();
        everything.push_str(&String::from_utf8_lossy(&dumped));
        let kind: String = redis::cmd("TYPE").arg(key).query(&mut conn).unwrap();
        let values: Vec<String> = match kind.as_str() {
            "hash" => redis::cmd("HGETALL").arg(key).query(&mut conn).unwrap(),
            _ => redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query(&mut conn)
                .unwrap(),
        };
        everything.push_str(&values.join(" "));
    }
    for token in &tokens {
        let secret = token.expose_secret();
        let random_part = secret.split_once('.').map_or(secret, |(_, r)| r);
        assert!(
            !everything.contains(random_part),
            "token found in the keyspace"
        );
    }
    assert!(
        everything.contains(tokens[0].handle().hash())
            || everything.contains(tokens[20].handle().hash())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_of_a_user_remains_once_their_sessions_expire() {
    let mut policy = SessionPolicy::default();
    // An idle expiry far beyond the 300 ms pause, so a loaded machine cannot expire the session
    // before its touch.
    policy.idle_timeout = Duration::from_secs(2);
    policy.absolute_timeout = Duration::from_secs(4);
    policy.touch_interval = Duration::from_millis(100);
    let (store, guard) = shared_store("ttl", policy).await;
    let first = store.create(alice()).await.unwrap();
    store.create(alice()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.touch(&first.token).await.unwrap().unwrap(); // the index TTL follows the latest expiry
    let mut conn = redis_connection(&guard.url);
    assert_eq!(
        redis_keys(&mut conn, &format!("{}*", guard.prefix)).len(),
        3
    );
    let index: Vec<String> = redis_keys(&mut conn, &format!("{}*:u:*", guard.prefix));
    let pttl: i64 = redis::cmd("PTTL").arg(&index[0]).query(&mut conn).unwrap();
    assert!(
        pttl > 0 && pttl <= 2_000,
        "the index carries its own TTL ({pttl} ms)"
    );
    // Wait for Redis's own expiry (no purge is called): bounded polling, not a speed claim.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = redis_keys(&mut conn, &format!("{}*", guard.prefix));
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "keys outlived their sessions: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.get(&first.token).await.unwrap(), None);
    assert!(store.list_by_user("alice").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_are_replaced_and_reads_do_not_notice() {
    let server = RedisServer::start();
    let mut config = RedisConfig::new(server.url()).pool_max_size(4);
    config.pool_min_idle = Some(4);
    // Served through the retry layer, as the manager serves it: reads are retried there.
    let store = session_core::Retrying::new(
        RedisStore::connect(config, SessionPolicy::default())
            .await
            .unwrap(),
        session_core::RetryPolicy::default(),
    );
    let issued = store.create(alice()).await.unwrap();
    // Wait until the pool holds all four connections, so the kill leaves several dead ones in it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.inner().pool_state().connections < 4 {
        assert!(
            Instant::now() < deadline,
            "pool did not fill: {:?}",
            store.inner().pool_state()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut admin = server.connection();
    let kill = |admin: &mut redis::Connection| {
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query(admin)
            .unwrap();
        assert!(killed >= 4, "killed {killed}");
    };

    kill(&mut admin);
    // A read right after the kill is retried on a fresh connection when the dead one reports a
    // dropped connection. redis-rs can instead leave a request queued on a dying connection
    // unanswered until the response timeout; that is a temporary error, never a hang, and the
    // dead connection is discarded with it.
    if let Err(e) = store.get(&issued.token).await {
        assert!(e.is_temporary(), "{e:?}");
    }
    // Every operation after that succeeds.
    for _ in 0..20 {
        assert!(store.get(&issued.token).await.unwrap().is_some());
        assert!(store.touch(&issued.token).await.unwrap().is_some());
    }

    kill(&mut admin);
    // A write is never repeated: it either succeeds or reports a temporary error...
    let mut session = store.get(&issued.token).await.unwrap().unwrap();
    session.email = "after-kill@acme.test".into();
    match store.update(&session).await {
        Ok(s) => session = s.session,
        Err(e) => assert!(e.is_temporary(), "{e:?}"),
    }
    // ...and the next writes succeed on fresh connections.
    for _ in 0..10 {
        let fresh = store.get(&issued.token).await.unwrap().unwrap();
        session = store.update(&fresh).await.unwrap().session;
    }
    assert!(session.version >= 11);
    assert!(store.inner().pool_state().broken_closed >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_session_data_is_a_decode_error_naming_the_handle() {
    let (store, guard) = shared_store("corrupt", SessionPolicy::default()).await;
    let healthy = store.create(NewUserSession::new("bob")).await.unwrap();
    let mut conn = redis_connection(&guard.url);
    let key_of = |token: &SessionToken| {
        let handle = token.handle();
        format!(
            "{}{{{}}}:s:{}",
            guard.prefix,
            handle.routing_tag().unwrap(),
            handle.hash()
        )
    };
    type Corruption = Box<dyn Fn(&mut redis::Connection, &str)>;
    let corruptions: Vec<(&str, Corruption)> = vec![
        (
            "is_root not Y/N",
            Box::new(|c, k| {
                redis::cmd("HSET")
                    .arg(k)
                    .arg("is_root")
                    .arg("maybe")
                    .exec(c)
                    .unwrap()
            }),
        ),
        (
            "missing user_id",
            Box::new(|c, k| redis::cmd("HDEL").arg(k).arg("user_id").exec(c).unwrap()),
        ),
        (
            "garbage attributes",
            Box::new(|c, k| {
                redis::cmd("HSET")
                    .arg(k)
                    .arg("attributes")
                    .arg("{not json")
                    .exec(c)
                    .unwrap()
            }),
        ),
        (
            "non-numeric expiry",
            Box::new(|c, k| {
                redis::cmd("HSET")
                    .arg(k)
                    .arg("absolute_expires_at")
                    .arg("soon")
                    .exec(c)
                    .unwrap()
            }),
        ),
        (
            "binary field",
            Box::new(|c, k| {
                redis::cmd("HSET")
                    .arg(k)
                    .arg("email")
                    .arg(&[0xff_u8, 0xfe][..])
                    .exec(c)
                    .unwrap()
            }),
        ),
        (
            "wrong type",
            Box::new(|c, k| {
                redis::cmd("DEL").arg(k).exec(c).unwrap();
                redis::cmd("SET").arg(k).arg("garbage").exec(c).unwrap();
            }),
        ),
    ];
    for (what, corrupt) in corruptions {
        let victim = store.create(alice()).await.unwrap();
        corrupt(&mut conn, &key_of(&victim.token));
        let err = store.get(&victim.token).await.expect_err(what);
        match &err {
            SessionError::Decode {
                handle: Some(h), ..
            } => assert_eq!(h, victim.token.handle(), "{what}"),
            other => panic!("{what}: expected Decode naming the handle, got {other:?}"),
        }
        assert!(
            err.to_string().contains(victim.token.handle().as_str()),
            "{what}: {err}"
        );
        assert!(!err.is_temporary());
        // The pool is not poisoned: the next operation on a healthy session works.
        assert!(store.get(&healthy.token).await.unwrap().is_some(), "{what}");
    }
    // Scripts meeting a wrong-type key also report Decode, and the pool stays usable.
    let victim = store.create(alice()).await.unwrap();
    redis::cmd("DEL")
        .arg(key_of(&victim.token))
        .exec(&mut conn)
        .unwrap();
    redis::cmd("SET")
        .arg(key_of(&victim.token))
        .arg("x")
        .exec(&mut conn)
        .unwrap();
    assert!(matches!(
        store.touch(&victim.token).await,
        Err(SessionError::Decode { .. })
    ));
    assert!(store.touch(&healthy.token).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_prompt_temporary_error() {
    let port = free_port(); // nothing listens here
    let config = RedisConfig::new(format!("redis://127.0.0.1:{port}/0"))
        .checkout_timeout(Duration::from_millis(500));
    // A refused connection is reported as such (not waited out as a checkout time-out); the
    // bound only catches a hang, it makes no speed claim.
    let err = answers(RedisStore::connect(
        config.clone(),
        SessionPolicy::default(),
    ))
    .await
    .expect_err("nothing listens");
    assert!(err.is_temporary(), "{err:?}");
    assert!(matches!(err, SessionError::Unavailable { .. }), "{err:?}");
    let lazy = RedisStore::new_lazy(config, SessionPolicy::default()).unwrap();
    let err = lazy
        .get(&SessionToken::generate_tagged(Some("abcd")).unwrap())
        .await
        .expect_err("down");
    assert!(err.is_temporary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_a_timeout() {
    let stalled = StalledServer::start();
    // Database 1 makes the handshake send a `SELECT`, which is never answered: the checkout is
    // what times out.
    let config = RedisConfig::new(format!("redis://127.0.0.1:{}/1", stalled.port()))
        .checkout_timeout(Duration::from_millis(300));
    let store = RedisStore::new_lazy(config, SessionPolicy::default()).unwrap();
    let err = answers(store.get(&SessionToken::generate_tagged(Some("abcd")).unwrap()))
        .await
        .expect_err("no reply");
    assert_timeout(&err, "checkout");
    // On database 0 without credentials nothing is sent at connect (not even `CLIENT SETINFO`),
    // so the first command's reply is what times out.
    let config = RedisConfig::new(format!("redis://127.0.0.1:{}/0", stalled.port()))
        .checkout_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(300));
    let store = RedisStore::new_lazy(config, SessionPolicy::default()).unwrap();
    let err = answers(store.get(&SessionToken::generate_tagged(Some("abcd")).unwrap()))
        .await
        .expect_err("no reply");
    assert_timeout(&err, "command");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_mid_session_times_out_and_checkouts_during_it_time_out_too() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    let config = RedisConfig::new(format!("redis://127.0.0.1:{}/0", proxy.port()))
        .pool_max_size(1)
        .checkout_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(500));
    // Through the retry layer, as the manager serves it: time-outs are not retried (each would
    // add a whole time-out), a cut connection is.
    let store = std::sync::Arc::new(session_core::Retrying::new(
        RedisStore::connect(config, SessionPolicy::default())
            .await
            .unwrap(),
        session_core::RetryPolicy::default(),
    ));
    let issued = store.create(alice()).await.unwrap();

    proxy.stall(true);
    let err = answers(store.get(&issued.token))
        .await
        .expect_err("stalled");
    assert_timeout(&err, "command");

    // Operations do not hold connections (they pipeline over a clone), but the timed-out connection
    // is now suspect: checkouts ping it, the ping fails, and a replacement cannot complete its
    // handshake through the stalled proxy, so checkouts time out within the checkout timeout.
    let busy = {
        let (store, token) = (store.clone(), issued.token.clone());
        tokio::spawn(async move { store.get(&token).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = answers(store.get(&issued.token))
        .await
        .expect_err("no connection can be had");
    assert_timeout(&err, "checkout");
    assert!(busy.await.unwrap().is_err());

    // Once the server answers again, so does the store (timed-out connections were discarded).
    proxy.stall(false);
    assert_eq!(
        store.get(&issued.token).await.unwrap().unwrap().user_id,
        "alice"
    );
    // Cut connections are survived the same way as killed ones.
    proxy.cut();
    assert!(store.get(&issued.token).await.unwrap().is_some());
}

/// Awaits `operation`, failing the test if it has not answered within 10 s: a hang, far beyond
/// every time-out configured in these tests (a bound on hanging, not a speed claim).
async fn answers<T>(operation: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), operation)
        .await
        .expect("answers within its configured time-outs instead of hanging")
}

/// Keys of the compatibility layout are bare session ids; this guard deletes the ones a test made.
struct KeysGuard(Vec<String>);

impl Drop for KeysGuard {
    fn drop(&mut self) {
        let mut conn = redis_connection(&redis_url());
        for key in &self.0 {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(key).query(&mut conn);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compatible_layout_is_shared_with_another_service_both_ways() {
    let url = redis_url();
    let mut conn = redis_connection(&url);
    let config = RedisConfig::new(url.clone())
        .layout(Layout::Compatible)
        .key_prefix("");
    let store = RedisStore::connect(config, SessionPolicy::default())
        .await
        .unwrap();
    let mut guard = KeysGuard(Vec::new());

    // We write; the other service reads `HGETALL <session_id>`.
    let ours = store.create(alice().root(true)).await.unwrap();
    let id = ours.token.expose_secret().to_owned();
    guard.0.push(id.clone());
    let fields: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&id).query(&mut conn).unwrap();
    assert_eq!(fields["user_id"], "alice");
    assert_eq!(fields["company_name"], "Acme");
    assert_eq!(fields["email"], "alice@acme.test");
    assert_eq!(fields["is_root"], "Y");
    let ttl: i64 = redis::cmd("TTL").arg(&id).query(&mut conn).unwrap();
    assert!(ttl > 0 && ttl <= 30 * 60, "native TTL set ({ttl}s)");

    // The other service writes HSET of the four fields plus EXPIRE; we read it.
    let foreign_id = "7c9e6679-7425-40de-944b-e07fc1f90ae7".to_owned() + &id[..4];
    guard.0.push(foreign_id.clone());
    redis::cmd("HSET")
        .arg(&foreign_id)
        .arg("user_id")
        .arg("42")
        .arg("company_name")
        .arg("Globex")
        .arg("email")
        .arg("hank@globex.test")
        .arg("is_root")
        .arg("N")
        .exec(&mut conn)
        .unwrap();
    redis::cmd("EXPIRE")
        .arg(&foreign_id)
        .arg(600)
        .exec(&mut conn)
        .unwrap();
    let token = SessionToken::parse(&foreign_id).unwrap();
    let read = store
        .get(&token)
        .await
        .unwrap()
        .expect("foreign session is read");
    assert_eq!(
        (
            read.user_id.as_str(),
            read.company_name.as_str(),
            read.email.as_str(),
            read.is_root
        ),
        ("42", "Globex", "hank@globex.test", false)
    );
    let now = std::time::SystemTime::now();
    assert!(
        read.idle_expires_at > now + Duration::from_secs(590)
            && read.idle_expires_at <= now + Duration::from_secs(601)
    );

    // Touch slides its TTL like ours and keeps the four fields the other service reads.
    let touched = store.touch(&token).await.unwrap().unwrap();
    assert_eq!(
        touched
            .idle_expires_at
            .duration_since(touched.last_seen_at)
            .unwrap(),
        Duration::from_secs(30 * 60)
    );
    let ttl: i64 = redis::cmd("TTL").arg(&foreign_id).query(&mut conn).unwrap();
    assert!(ttl > 600, "TTL slid to the idle timeout ({ttl}s)");
    let is_root: String = redis::cmd("HGET")
        .arg(&foreign_id)
        .arg("is_root")
        .query(&mut conn)
        .unwrap();
    assert_eq!(is_root, "N");

    // Rotation moves the session to a new id; the other service sees the old id gone.
    let rotated = store.rotate(&ours.token).await.unwrap().unwrap();
    guard.0.push(rotated.token.expose_secret().to_owned());
    let exists: i64 = redis::cmd("EXISTS").arg(&id).query(&mut conn).unwrap();
    assert_eq!(exists, 0);
    let fields: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(rotated.token.expose_secret())
        .query(&mut conn)
        .unwrap();
    assert_eq!(fields["user_id"], "alice");

    // Deleting either way ends it for both.
    assert!(store.delete(&token).await.unwrap());
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&foreign_id)
        .query(&mut conn)
        .unwrap();
    assert_eq!(exists, 0);
    redis::cmd("DEL")
        .arg(rotated.token.expose_secret())
        .exec(&mut conn)
        .unwrap();
    assert_eq!(store.get(&rotated.token).await.unwrap(), None);

    // What the layout gives up is reported, not silently wrong.
    for result in [
        store.list_by_user("alice").await.map(|_| ()),
        store.delete_by_user("alice", None).await.map(|_| ()),
        store
            .delete_by_handle(rotated.token.handle())
            .await
            .map(|_| ()),
        store.update(&rotated.session).await.map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(SessionError::Unsupported { .. })),
            "{result:?}"
        );
    }
    let mut capped = SessionPolicy::default();
    capped.max_sessions_per_user = Some(3);
    let err = RedisStore::new_lazy(
        RedisConfig::new(url)
            .layout(Layout::Compatible)
            .key_prefix(""),
        capped,
    )
    .unwrap_err();
    assert!(
        matches!(err, SessionError::Config { ref key, .. } if key == "max_sessions_per_user"),
        "{err:?}"
    );
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_carry_sessions_over_tls() {
    let server = RedisServer::start_tls();
    let store = RedisStore::connect(RedisConfig::new(server.url()), SessionPolicy::default())
        .await
        .unwrap();
    let issued = store.create(alice()).await.unwrap();
    assert_eq!(
        store.get(&issued.token).await.unwrap().unwrap().email,
        "alice@acme.test"
    );
    let rotated = store.rotate(&issued.token).await.unwrap().unwrap();
    assert_eq!(store.list_by_user("alice").await.unwrap().len(), 1);
    assert!(store.delete(&rotated.token).await.unwrap());
    // A plain-text client cannot talk to it: TLS really is in use.
    let plain = format!("redis://127.0.0.1:{}/0", server.port());
    assert!(
        RedisStore::connect(
            RedisConfig::new(plain).checkout_timeout(Duration::from_millis(500)),
            SessionPolicy::default()
        )
        .await
        .is_err()
    );
}

/// Opening pooled connections and running every operation adds no error to the server's count:
/// redis-rs's `CLIENT SETINFO`, which Redis before 7.2 refuses with two `ERR` replies a
/// connection, is not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_and_every_operation_add_no_server_error() {
    let server = RedisServer::start();
    // Asked over a connection that skips `CLIENT SETINFO` too, so the question adds no error; the
    // count before the store connects includes the test kit's own probes.
    let info = redis::IntoConnectionInfo::into_connection_info(server.url().as_str()).unwrap();
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    let mut conn = redis::Client::open(info.set_redis_settings(settings))
        .unwrap()
        .get_connection()
        .unwrap();
    let mut err_replies = || {
        let stats: String = redis::cmd("INFO")
            .arg("errorstats")
            .query(&mut conn)
            .unwrap();
        stats
            .lines()
            .find_map(|l| l.strip_prefix("errorstat_ERR:count="))
            .map_or(0, |n| n.trim().parse::<u64>().unwrap())
    };
    let before = err_replies();
    let mut config = RedisConfig::new(server.url()).pool_max_size(4);
    config.pool_min_idle = Some(4);
    let store = RedisStore::connect(config, SessionPolicy::default())
        .await
        .unwrap();
    session_testkit::servers::eventually(Duration::from_secs(5), "4 idle connections", || {
        store.pool_state().connections == 4
    })
    .await;
    let issued = store.create(alice()).await.unwrap();
    store.get(&issued.token).await.unwrap().unwrap();
    store.touch(&issued.token).await.unwrap().unwrap();
    let rotated = store.rotate(&issued.token).await.unwrap().unwrap();
    let _ = store.update(&rotated.session).await.unwrap();
    store.list_by_user("alice").await.unwrap();
    store.delete_by_user("alice", None).await.unwrap();
    store.purge_expired().await.unwrap();
    assert_eq!(
        err_replies(),
        before,
        "ERR replies to the store's connections"
    );
}

/// Index scores are read as hints (ADR 0020): a member whose score has passed while its session
/// lives (as a writer that left a score behind would leave it) is kept, listed, re-scored by a
/// trim and revoked by `delete_by_user`; a member whose session is gone is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_scores_are_lower_bounds_and_never_drop_a_live_session() {
    let clock = ManualClock::starting_now();
    let mut policy = SessionPolicy::default().with_clock(clock.clone());
    policy.idle_timeout = Duration::from_secs(30 * 60);
    let (store, guard) = shared_store("scores", policy).await;
    let kept = store.create(alice()).await.unwrap();
    let gone = store.create(alice()).await.unwrap();
    let mut conn = redis_connection(&guard.url);
    let index = redis_keys(&mut conn, &format!("{}*:u:*", guard.prefix)).remove(0);
    let created_score: i64 = redis::cmd("ZSCORE")
        .arg(&index)
        .arg(kept.session.handle.hash())
        .query(&mut conn)
        .unwrap();
    clock.advance(Duration::from_secs(20 * 60));
    store.touch(&kept.token).await.unwrap().unwrap();
    // A writer that left `kept`'s score at its creation-time expiry.
    let () = redis::cmd("ZADD")
        .arg(&index)
        .arg(created_score)
        .arg(kept.session.handle.hash())
        .query(&mut conn)
        .unwrap();
    // Past both sessions' first idle expiry: `kept` lives on by its touch, `gone` has expired.
    clock.advance(Duration::from_secs(20 * 60));
    let score =
        |conn: &mut redis::Connection, handle: &session_core::SessionHandle| -> Option<i64> {
            redis::cmd("ZSCORE")
                .arg(&index)
                .arg(handle.hash())
                .query(conn)
                .unwrap()
        };
    let lagging = score(&mut conn, &kept.session.handle).unwrap();
    let now_ms = i64::try_from(session_core::clock::millis_since_epoch(
        session_core::Clock::now(&clock),
    ))
    .unwrap();
    assert!(lagging < now_ms, "the score is behind");
    let listed = store.list_by_user("alice").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].handle, kept.session.handle);
    // `gone` expired by the policy clock: the trim drops its member (and key); `kept` stays,
    // re-scored with its idle expiry.
    assert_eq!(store.purge_expired().await.unwrap(), 1);
    assert_eq!(score(&mut conn, &gone.session.handle), None);
    assert!(score(&mut conn, &kept.session.handle).unwrap() > now_ms);
    assert!(store.get(&kept.token).await.unwrap().is_some());
    assert_eq!(store.delete_by_user("alice", None).await.unwrap(), 1);
    assert!(store.get(&kept.token).await.unwrap().is_none());
}

/// A touch leaves its member's score at the expiry create wrote (ADR 0031) and raises the
/// index's TTL with the session's; the trim that meets the passed score keeps the member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_touch_leaves_the_score_and_extends_the_index() {
    let clock = ManualClock::starting_now();
    let policy = SessionPolicy::default().with_clock(clock.clone());
    let (store, guard) = shared_store("rolling", policy).await;
    let kept = store.create(alice()).await.unwrap();
    let mut conn = redis_connection(&guard.url);
    let index = redis_keys(&mut conn, &format!("{}*:u:*", guard.prefix)).remove(0);
    let score = |conn: &mut redis::Connection| -> i64 {
        redis::cmd("ZSCORE")
            .arg(&index)
            .arg(kept.session.handle.hash())
            .query(conn)
            .unwrap()
    };
    let created = score(&mut conn);
    clock.advance(Duration::from_secs(20 * 60));
    let touched = store.touch(&kept.token).await.unwrap().unwrap();
    assert_eq!(
        score(&mut conn),
        created,
        "the score is left as create wrote it"
    );
    let expiry = |key: &str, conn: &mut redis::Connection| -> i64 {
        redis::cmd("PEXPIRETIME").arg(key).query(conn).unwrap()
    };
    let session_key = redis_keys(&mut conn, &format!("{}*:s:*", guard.prefix)).remove(0);
    let idle = i64::try_from(session_core::clock::millis_since_epoch(
        touched.idle_expires_at,
    ))
    .unwrap();
    assert_eq!(expiry(&session_key, &mut conn), idle);
    assert_eq!(expiry(&index, &mut conn), idle, "the index lives as long");
    // Past the score, the session alive: a trim re-scores it, listing and revoking find it.
    clock.advance(Duration::from_secs(20 * 60));
    assert_eq!(store.purge_expired().await.unwrap(), 0);
    assert_eq!(score(&mut conn), idle, "re-scored by the trim");
    let listed = store.list_by_user("alice").await.unwrap();
    assert_eq!(listed.len(), 1, "the touched session left the index");
    assert_eq!(store.delete_by_user("alice", None).await.unwrap(), 1);
}

/// Where the session's index lacks its member (as on the node a slot is migrating to, before the
/// index arrives), a due touch writes nothing: a session's activity never outruns what
/// revocation can find. A rotate there indexes the new token and gives the index a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_touch_never_extends_a_session_its_index_does_not_hold() {
    let clock = ManualClock::starting_now();
    let policy = SessionPolicy::default().with_clock(clock.clone());
    let (store, guard) = shared_store("unindexed", policy).await;
    let issued = store.create(alice()).await.unwrap();
    let mut conn = redis_connection(&guard.url);
    let index = redis_keys(&mut conn, &format!("{}*:u:*", guard.prefix)).remove(0);
    let () = redis::cmd("DEL").arg(&index).query(&mut conn).unwrap();
    clock.advance(Duration::from_secs(120));
    let touched = store.touch(&issued.token).await.unwrap().unwrap();
    assert_eq!(
        touched.last_seen_at, issued.session.last_seen_at,
        "no write"
    );
    let rotated = store.rotate(&issued.token).await.unwrap().unwrap();
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&index)
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(members, vec![rotated.session.handle.hash().to_owned()]);
    let ttl: i64 = redis::cmd("PTTL").arg(&index).query(&mut conn).unwrap();
    assert!(ttl > 0, "the index has a TTL ({ttl})");
}

/// An imported session whose handle lacks its user's routing tag (another backend issued it) is
/// kept in its user's slot, indexed under `.` and the handle, behind an alias key in the handle's
/// own slot that names the user's tag and expires with the session's absolute expiry; a handle
/// with a Redis-shaped tag of another user is refused without a write.
#[tokio::test]
async fn an_imported_handle_without_the_users_tag_is_found_through_an_alias() {
    let (store, guard) = shared_store("alias", SessionPolicy::default()).await;
    let issued = store.create(alice()).await.unwrap();
    let tag = issued.token.routing_tag().unwrap().to_owned();
    let token = SessionToken::generate().unwrap();
    let mut copy = issued.session.clone();
    copy.handle = token.handle().clone();
    assert_eq!(
        store.import(&copy).await.unwrap(),
        session_core::Imported::Stored
    );
    assert_eq!(store.get(&token).await.unwrap().as_ref(), Some(&copy));

    let mut conn = redis_connection(&guard.url);
    let hash = copy.handle.hash();
    let session_key = format!("{}{{{tag}}}:s:.{hash}", guard.prefix);
    let alias_key = format!("{}{{{}}}:a:{hash}", guard.prefix, &hash[..4]);
    let exists: u64 = redis::cmd("EXISTS")
        .arg(&session_key)
        .query(&mut conn)
        .unwrap();
    assert_eq!(exists, 1, "the session is in its user's slot");
    let alias: String = redis::cmd("GET").arg(&alias_key).query(&mut conn).unwrap();
    assert_eq!(alias, tag, "the alias names the user's tag");
    let alias_expires: i64 = redis::cmd("PEXPIRETIME")
        .arg(&alias_key)
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        alias_expires,
        i64::try_from(session_core::clock::millis_since_epoch(
            copy.absolute_expires_at
        ))
        .unwrap()
    );
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{}{{{tag}}}:u:alice", guard.prefix))
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert!(members.contains(&format!(".{hash}")), "{members:?}");

    // A rotation moves it to a token carrying the user's tag: no alias needed from then on.
    let rotated = store.rotate(&token).await.unwrap().unwrap();
    assert_eq!(rotated.token.routing_tag(), Some(tag.as_str()));
    assert_eq!(store.get(&token).await.unwrap(), None);

    let before = redis_keys(&mut conn, &format!("{}*", guard.prefix)).len();
    let foreign_tag = if tag == "AAAA" { "BBBB" } else { "AAAA" };
    let mut foreign = copy.clone();
    foreign.handle = SessionToken::generate_tagged(Some(foreign_tag))
        .unwrap()
        .handle()
        .clone();
    assert!(matches!(
        store.import(&foreign).await,
        Err(SessionError::InvalidInput {
            field: "handle",
            ..
        })
    ));
    assert_eq!(
        redis_keys(&mut conn, &format!("{}*", guard.prefix)).len(),
        before,
        "nothing written"
    );

    // Cursors are this topology's: one node's read `r2:n|`, a Cluster's cursor is refused here.
    let page = store.scan(None, 1).await.unwrap();
    let next = page.next.expect("two sessions: the walk goes on");
    assert!(next.as_str().starts_with("r2:n|"), "{next}");
    assert!(matches!(
        store
            .scan(
                Some(&session_core::ScanCursor::new("r2:c|127.0.0.1:7000|0|")),
                1
            )
            .await,
        Err(SessionError::InvalidInput {
            field: "cursor",
            ..
        })
    ));
}

/// The compatible layout has no index and keys sessions by raw token: it cannot be walked or
/// imported into, and says so.
#[tokio::test]
async fn the_compatible_layout_refuses_scan_and_import() {
    let config = RedisConfig::new(redis_url())
        .layout(Layout::Compatible)
        .key_prefix("");
    let store = RedisStore::connect(config, SessionPolicy::default())
        .await
        .unwrap();
    assert!(matches!(
        store.scan(None, 10).await,
        Err(SessionError::Unsupported {
            operation: "scan",
            ..
        })
    ));
    let mut session = store_free_session();
    session.handle = SessionToken::generate().unwrap().handle().clone();
    assert!(matches!(
        store.import(&session).await,
        Err(SessionError::Unsupported {
            operation: "import",
            ..
        })
    ));
}

/// A valid session, built without any store.
fn store_free_session() -> session_core::UserSession {
    let token = SessionToken::generate().unwrap();
    alice()
        .into_session(&token, &SessionPolicy::default())
        .unwrap()
}

/// A walk in small pages, past keys that match its pattern but are no sessions, while the
/// keyspace around it grows and shrinks by thousands of keys between pages (the server rehashes its table, so a SCAN cursor asked again would give another
/// batch): every session live for the whole walk is returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_while_the_keyspace_is_rehashed_skips_no_session() {
    let server = RedisServer::start();
    let store = RedisStore::connect(
        RedisConfig::new(server.url()).key_prefix("walk:"),
        SessionPolicy::default(),
    )
    .await
    .unwrap();
    let mut handles = std::collections::HashSet::new();
    for i in 0..400 {
        let issued = store
            .create(session_core::NewUserSession::new(format!(
                "user-{}",
                i % 40
            )))
            .await
            .unwrap();
        handles.insert(issued.session.handle);
    }
    let mut conn = server.connection();
    // Keys that match the walk's pattern but are no sessions: skipped, and never in a cursor.
    for foreign in ["walk:{zzzz}:s:not,a|handle", "walk:{zzzz}:s:short"] {
        redis::cmd("SET")
            .arg(foreign)
            .arg(1)
            .query::<()>(&mut conn)
            .unwrap();
    }
    let churn = |conn: &mut redis::Connection, round: usize| {
        let keys: Vec<String> = (0..4000).map(|k| format!("junk:{k}")).collect();
        if round.is_multiple_of(2) {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("SET").arg(key).arg(1).ignore();
            }
            pipe.query::<()>(conn).unwrap();
        } else {
            redis::cmd("DEL").arg(&keys).query::<()>(conn).unwrap();
        }
    };
    let mut seen = std::collections::HashSet::new();
    let mut cursor = None;
    let mut round = 0;
    loop {
        let page = store.scan(cursor.as_ref(), 7).await.unwrap();
        assert!(page.sessions.len() <= 7);
        seen.extend(page.sessions.into_iter().map(|s| s.handle));
        churn(&mut conn, round);
        round += 1;
        if round.is_multiple_of(8) {
            // Time for the server's cron to resize the table it grew or emptied.
            tokio::time::sleep(std::time::Duration::from_millis(120)).await;
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let missed: Vec<_> = handles.difference(&seen).collect();
    assert!(
        missed.is_empty(),
        "{} of 400 skipped after {round} pages",
        missed.len()
    );
}
