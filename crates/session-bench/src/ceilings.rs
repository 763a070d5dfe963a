//! `redis-ceilings`: the server's own ceiling for what each side sends. `redis-benchmark` on a
//! private `redis-server` replays, at 1 and 32 clients, the exact commands captured with
//! `MONITOR` from real operations. On our side these are the `HMGET` of `get` (and of a touch
//! inside its interval), and the `EVALSHA` of a writing touch and of a create, the scripts the
//! store loaded. On the peer's side (tower-sessions' Redis store over fred) they are its `load`
//! (`GET`) and `save` (`SET … XX EXAT` of its msgpack record).
//!
//! A replay repeats one command with the same arguments, so the `EVALSHA`s run slightly more than
//! a live call. A touch's `PEXPIREAT … GT` of the index refuses (the same instant each time) and
//! adds its `ZSCORE`. A create's `GT` refuses too and adds its `NX`, and its `HSET` overwrites.
//! The peer's record has its NUL bytes replaced (argv cannot carry them), at the same length.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use session_core::{NewUserSession, SessionPolicy, UserSessionStore};
use session_redis::{RedisConfig, RedisStore};
use session_testkit::servers::RedisServer;
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::{Id, Record};

use crate::{CONCURRENCY, USERS};

/// `MONITOR` lines of a private server, read over a raw socket.
struct Monitor {
    lines: mpsc::Receiver<String>,
}

impl Monitor {
    fn start(port: u16) -> Self {
        let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        socket.write_all(b"MONITOR\r\n").unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(socket).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { lines }
    }

    /// The client-issued commands (not those run inside scripts) seen since the last call, each
    /// as its arguments.
    fn take(&self) -> Vec<Vec<Vec<u8>>> {
        std::thread::sleep(Duration::from_millis(200));
        self.lines
            .try_iter()
            .filter(|line| !line.contains(" lua]"))
            .filter_map(|line| Some(unquote(line.split_once("] ")?.1)))
            .collect()
    }
}

/// The arguments of a `MONITOR` line's command part: `"ARG" "ARG" …`, with `\"`, `\\`, `\n`,
/// `\r`, `\t`, `\a`, `\b` and `\xHH` escapes (Redis's `sdscatrepr`).
fn unquote(command: &str) -> Vec<Vec<u8>> {
    let bytes = command.as_bytes();
    let mut args = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        i += 1;
        let mut arg = Vec::new();
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] == b'\\' && i + 1 < bytes.len() {
                i += 1;
                match bytes[i] {
                    b'n' => arg.push(b'\n'),
                    b'r' => arg.push(b'\r'),
                    b't' => arg.push(b'\t'),
                    b'a' => arg.push(7),
                    b'b' => arg.push(8),
                    b'x' => {
                        let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                        arg.push(u8::from_str_radix(hex, 16).unwrap());
                        i += 2;
                    }
                    other => arg.push(other),
                }
            } else {
                arg.push(bytes[i]);
            }
            i += 1;
        }
        args.push(arg);
        i += 1;
    }
    args
}

/// The one command named `name` among `commands`.
fn only(commands: &[Vec<Vec<u8>>], name: &str) -> Vec<Vec<u8>> {
    let found: Vec<_> = commands
        .iter()
        .filter(|c| c[0].eq_ignore_ascii_case(name.as_bytes()))
        .collect();
    assert_eq!(found.len(), 1, "one {name} expected, got {commands:?}");
    found[0].clone()
}

/// `redis-benchmark`'s requests per second for `command` at `clients`.
fn replay(port: u16, clients: usize, command: &[Vec<u8>]) -> f64 {
    let requests = if clients == 1 { 30_000 } else { 150_000 };
    let out = std::process::Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-c", &clients.to_string()])
        .args(["-n", &requests.to_string(), "-q"])
        .args(command.iter().map(|a| OsStr::from_bytes(a)))
        .output()
        .expect("redis-benchmark (Debian package redis-tools) on PATH");
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = text
        .split_whitespace()
        .zip(text.split_whitespace().skip(1))
        .find(|(_, next)| *next == "requests")
        .and_then(|(n, _)| n.parse().ok());
    rate.unwrap_or_else(|| panic!("no rate in redis-benchmark's output: {text}"))
}

pub(crate) async fn bench_redis_ceilings() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let port = server.port();
    let mut writing = SessionPolicy::default();
    writing.touch_interval = Duration::ZERO;
    let store: Arc<dyn UserSessionStore> = Arc::new(
        RedisStore::connect(RedisConfig::new(server.url()), writing)
            .await
            .unwrap(),
    );
    // A user holding 10 sessions, as in the other sections' prefill.
    let mut issued = Vec::new();
    for _ in 0..10 {
        issued.push(store.create(NewUserSession::new("user-0")).await.unwrap());
    }
    // Loads the touch script, so that no NOSCRIPT reload shows in what is captured.
    store.touch(&issued[1].token).await.unwrap().unwrap();
    let monitor = Monitor::start(port);
    monitor.take();
    let token = &issued[0].token;
    store.get(token).await.unwrap().unwrap();
    let get = only(&monitor.take(), "HMGET");
    store.touch(token).await.unwrap().unwrap();
    let touch = only(&monitor.take(), "EVALSHA");
    // A create that does not sample a trim (about 1 in 21 do; ADR 0020).
    let create = loop {
        let new = NewUserSession::new(format!("user-{}", USERS + 1)).email("bench@example.com");
        let made = store.create(new).await.unwrap();
        let commands = monitor.take();
        if !made.session.handle.hash().as_bytes()[0].is_multiple_of(16) {
            break only(&commands, "EVALSHA");
        }
    };

    let fred_config =
        tower_sessions_redis_store::fred::prelude::Config::from_url(&server.url()).unwrap();
    let pool =
        tower_sessions_redis_store::fred::prelude::Pool::new(fred_config, None, None, None, 1)
            .unwrap();
    tower_sessions_redis_store::fred::prelude::ClientLike::init(&pool)
        .await
        .unwrap();
    let peer = tower_sessions_redis_store::RedisStore::new(pool);
    let mut record = Record {
        id: Id::default(),
        data: HashMap::from([
            ("user_id".to_owned(), serde_json::json!("user-0")),
            ("email".to_owned(), serde_json::json!("bench@example.com")),
            ("company_name".to_owned(), serde_json::json!("Acme")),
            ("is_root".to_owned(), serde_json::json!(false)),
        ]),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::minutes(30),
    };
    peer.create(&mut record).await.unwrap();
    monitor.take();
    peer.load(&record.id).await.unwrap().unwrap();
    let load = only(&monitor.take(), "GET");
    peer.save(&record).await.unwrap();
    // An argument cannot carry a NUL byte through argv: the msgpack record's are replaced, which
    // keeps its length and so the server's work.
    let mut save = only(&monitor.take(), "SET");
    for arg in &mut save {
        for byte in arg.iter_mut().filter(|b| **b == 0) {
            *byte = 1;
        }
    }
    drop(monitor);

    let rows: [(&str, &[Vec<u8>]); 5] = [
        ("ours get / touch not due: HMGET", &get),
        ("ours touch writing: EVALSHA", &touch),
        ("ours create: EVALSHA", &create),
        ("peer load: GET", &load),
        ("peer save / create: SET XX EXAT", &save),
    ];
    for clients in CONCURRENCY {
        for (name, command) in rows {
            let rate = replay(port, clients, command);
            println!("redis-ceiling clients={clients:<2} {name:<36} {rate:>10.0} requests/s");
        }
    }
    drop(server);
}
