//! Real servers for tests: the shared local services, and private processes for fault tests.
//!
//! Shared services are found through environment variables read at run time (`REDIS_URL`,
//! `DATABASE_URL`), defaulting to the local ones. A test that cannot reach its server fails with
//! the command that starts it; it never passes by skipping.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use session_core::SessionToken;

/// How to start the shared Redis, quoted in failures.
pub const START_REDIS: &str = "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log";

/// Polls `condition` until it holds, failing the test with `what` if it has not within `within`:
/// for effects of background work (a purge task, a pool closing), a bound on waiting, not a
/// speed claim.
pub async fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The shared Redis: `REDIS_URL`, default `redis://127.0.0.1:6379/0`.
#[must_use]
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// A key prefix no other test run uses, e.g. `test:conf:Xy3...:`.
#[must_use]
pub fn unique_prefix(label: &str) -> String {
    let random = SessionToken::generate().unwrap();
    format!("test:{label}:{}:", &random.expose_secret()[..12])
}

/// Panics, saying how to start it, unless Redis answers at `url`.
pub fn require_redis(url: &str) {
    let ok = redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    if let Err(e) = ok {
        panic!(
            "Redis is not reachable at {url} ({e}). Start it with:\n  {START_REDIS}\nor set REDIS_URL."
        );
    }
}

/// A synchronous connection to `url` (for set-up, inspection and clean-up in tests).
pub fn redis_connection(url: &str) -> redis::Connection {
    require_redis(url);
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

/// Every key matching `pattern` (a Redis glob), by SCAN.
pub fn redis_keys(conn: &mut redis::Connection, pattern: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(conn)
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// Deletes every key under `prefix`. Synchronous, so it can run from `Drop`.
pub fn redis_delete_prefix(url: &str, prefix: &str) {
    let Ok(mut conn) = redis::Client::open(url).and_then(|c| c.get_connection()) else {
        return;
    };
    for keys in redis_keys(&mut conn, &format!("{prefix}*")).chunks(1000) {
        let _: redis::RedisResult<()> = redis::cmd("UNLINK").arg(keys).query(&mut conn);
    }
}

/// How to start the shared PostgreSQL, quoted in failures.
pub const START_POSTGRES: &str =
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";

/// The shared PostgreSQL: `DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`.
#[must_use]
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Runs one SQL command through `psql` against `url` and returns its unaligned output.
///
/// # Panics
/// If `psql` is missing or the command fails; the message says how to start PostgreSQL.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run psql ({e}); install it with: apt-get install postgresql-client")
        });
    assert!(
        out.status.success(),
        "psql failed at {url}: {}\nIf PostgreSQL is down, start it with:\n  {START_POSTGRES}\nor set DATABASE_URL.",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A schema of its own in the shared PostgreSQL, dropped with everything in it when this is
/// dropped. Its URL sets `search_path` to it and `application_name` to its name, so a test can find
/// (and terminate) exactly its own connections.
pub struct PgSchema {
    base: String,
    name: String,
}

impl PgSchema {
    /// Creates `test_<label>_<random>`.
    #[must_use]
    pub fn create(label: &str) -> Self {
        let random: String = SessionToken::generate()
            .unwrap()
            .expose_secret()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect::<String>()
            .to_ascii_lowercase();
        let name = format!("test_{label}_{random}");
        let base = database_url();
        psql(&base, &format!("CREATE SCHEMA {name}"));
        Self { base, name }
    }

    /// The schema's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection URL whose sessions use this schema.
    #[must_use]
    pub fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!(
            "{}{sep}options=-csearch_path%3D{}&application_name={}",
            self.base, self.name, self.name
        )
    }

    /// Terminates every server process connected through [`PgSchema::url`]; returns how many.
    #[must_use]
    pub fn terminate_backends(&self) -> u64 {
        psql(
            &self.base,
            &format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{}'", self.name),
        )
        .parse()
        .unwrap()
    }

    /// How many server processes are connected through [`PgSchema::url`].
    #[must_use]
    pub fn backends(&self) -> u64 {
        psql(
            &self.base,
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{}'",
                self.name
            ),
        )
        .parse()
        .unwrap()
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                self.base.as_str(),
                "-X",
                "-q",
                "-c",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
            ])
            .output();
    }
}

/// An SQLite database file of its own in the temporary directory, removed (with its WAL files)
/// when this is dropped.
pub struct SqliteFile {
    path: PathBuf,
}

impl SqliteFile {
    /// A fresh path `session-test-<label>-<random>.db`; the file is created on first connect.
    #[must_use]
    pub fn new(label: &str) -> Self {
        let token = SessionToken::generate().unwrap();
        let random = &token.expose_secret()[..12];
        Self {
            path: std::env::temp_dir().join(format!("session-test-{label}-{random}.db")),
        }
    }

    /// Its `sqlite://` URL.
    #[must_use]
    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

/// A free TCP port on 127.0.0.1.
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private `redis-server` process on its own port, for tests that kill connections, read
/// server-wide statistics or must not disturb the shared server. Killed when dropped.
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
    tls: bool,
}

impl RedisServer {
    /// Starts one and waits until it answers.
    pub fn start() -> Self {
        Self::spawn(false)
    }

    /// Starts one that accepts only TLS, with a self-signed certificate made for it by `openssl`.
    /// Its [`RedisServer::url`] is `rediss://...#insecure` (the certificate is not verified).
    pub fn start_tls() -> Self {
        Self::spawn(true)
    }

    fn spawn(tls: bool) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("session-test-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir);
        if tls {
            let made = Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=127.0.0.1",
                ])
                .args(["-keyout", "key.pem", "-out", "cert.pem"])
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap_or_else(|e| {
                    panic!("cannot run openssl ({e}); install it with: apt-get install openssl")
                });
            assert!(made.success(), "openssl could not make a certificate");
            command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--tls-auth-clients",
                    "no",
                ])
                .args(["--tls-cert-file", "cert.pem", "--tls-key-file", "key.pem"])
                .current_dir(&dir);
        } else {
            command.args(["--port", &port.to_string()]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}); install it with: apt-get install redis-server"
                )
            });
        let server = Self {
            child,
            port,
            dir,
            tls,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        // A TLS server is ready once it accepts; a plain one once it answers.
        let ready = |server: &Self| {
            if tls {
                std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
            } else {
                redis::Client::open(server.url())
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                    .is_ok()
            }
        };
        while !ready(&server) {
            assert!(
                Instant::now() < deadline,
                "private redis-server on port {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Its URL.
    #[must_use]
    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://127.0.0.1:{}/0#insecure", self.port)
        } else {
            format!("redis://127.0.0.1:{}/0", self.port)
        }
    }

    /// Its port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A synchronous connection to it.
    #[must_use]
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP listener that accepts connections and never answers: a stalled server.
pub struct StalledServer {
    port: u16,
    _thread: std::thread::JoinHandle<()>,
}

impl StalledServer {
    /// Starts one; connections it accepts are held open, unread, until the process exits.
    #[must_use]
    pub fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                held.push(stream);
            }
        });
        Self {
            port,
            _thread: thread,
        }
    }

    /// Its port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// A TCP proxy a test controls, in front of a real server: it forwards bytes until told to stall
/// (hold everything, so the server seems hung) or to cut (close every open connection).
/// Needs a tokio runtime; stops when dropped.
pub struct FaultProxy {
    port: u16,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free local port forwarding to `target_port` on 127.0.0.1.
    pub async fn start(target_port: u16) -> Self {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let stalled = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (stalled, connections) = (stalled.clone(), connections.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) =
                        tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, target_port)).await
                    else {
                        continue;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let (up, down) = (stalled.clone(), stalled.clone());
                    let task = tokio::spawn(async move {
                        tokio::select! {
                            () = pump(client_read, server_write, up) => {},
                            () = pump(server_read, client_write, down) => {},
                        }
                    });
                    connections.lock().unwrap().push(task);
                }
            })
        };
        Self {
            port,
            stalled,
            connections,
            accept,
        }
    }

    /// The port clients connect to.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Holds (or releases) every byte in both directions.
    pub fn stall(&self, on: bool) {
        self.stalled.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every connection open through the proxy; new ones are accepted as before.
    pub fn cut(&self) {
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
