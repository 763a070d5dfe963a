//! Real servers for tests: the shared local services, private processes for fault tests, and local
//! Redis topologies ([`RedisCluster`], [`RedisSentinel`]) started from the `redis-server` binary.
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

/// `test_<label>_<random>`: a schema or database name no other test run picks.
fn unique_name(label: &str) -> String {
    let random: String = SessionToken::generate()
        .unwrap()
        .expose_secret()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect::<String>()
        .to_ascii_lowercase();
    format!("test_{label}_{random}")
}

impl PgSchema {
    /// Creates `test_<label>_<random>`.
    #[must_use]
    pub fn create(label: &str) -> Self {
        let name = unique_name(label);
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

    /// Starts one on a port from [`free_port`]. That port was free a moment ago; another process
    /// can take it before the server binds, and the server then exits, so an exit at start is
    /// retried on another port (as the topologies do) instead of waiting 10 s for the wrong
    /// listener.
    fn spawn(tls: bool) -> Self {
        for attempt in 1..=5 {
            let port = free_port();
            if let Some(server) = Self::spawn_on(tls, port) {
                return server;
            }
            assert!(
                attempt < 5,
                "private redis-server exited at start on five ports"
            );
        }
        unreachable!("the loop returns or panics")
    }

    /// One try of [`RedisServer::spawn`]: `None` if the server exited before it answered.
    fn spawn_on(tls: bool, port: u16) -> Option<Self> {
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
        let mut server = Self {
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
            if server.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "private redis-server on port {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
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

// Local topologies: a Redis Cluster and a Sentinel-monitored master, as real `redis-server`
// processes on loopback ports, for the cluster and Sentinel tests of the Redis store.

/// `cluster-node-timeout` of every [`RedisCluster`]: how long a node may be unreachable before it
/// is suspected. Short, so that a failover test takes seconds, not the default 15.
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_millis(1000);

/// The number of hash slots of a Redis Cluster.
pub const CLUSTER_SLOTS: u16 = 16384;

/// The name the sentinels of a [`RedisSentinel`] monitor its master under.
pub const SENTINEL_MASTER_NAME: &str = "mymaster";

/// The log file of every topology node, in its own directory: quoted when a node fails to start.
const NODE_LOG: &str = "redis.log";

/// The cluster hash slot of `key`, as Redis computes it: CRC16 (XMODEM) of the key, or of its hash
/// tag (what lies between the first `{` and the next `}`, if that is not empty), modulo 16384.
#[must_use]
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let len = rest.iter().position(|&b| b == b'}')?;
            (len > 0).then(|| &rest[..len])
        })
        .unwrap_or(bytes);
    crc16_xmodem(hashed) % CLUSTER_SLOTS
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            };
        }
    }
    crc
}

/// Polls `check` until it returns a value, panicking with `what` and its last complaint if it has
/// not within `within`. Synchronous, as the topologies are: they are set up outside any runtime.
fn wait_until<T>(within: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return value,
            Err(why) => assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?} ({why})"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connection to one node for the helpers' own polling: it fails fast on a dead node, and a
/// hung one fails the wait instead of hanging the test. A poll opens one per node, not one per
/// command: waits poll every 20 ms.
struct Probe {
    port: u16,
    conn: redis::Connection,
}

impl Probe {
    fn open(port: u16) -> Result<Self, String> {
        let connect = || {
            let conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))?
                .get_connection_with_timeout(Duration::from_millis(500))?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))?;
            conn.set_write_timeout(Some(Duration::from_secs(10)))?;
            Ok::<_, redis::RedisError>(conn)
        };
        let conn = connect().map_err(|e| format!("node {port}: {e}"))?;
        Ok(Self { port, conn })
    }

    fn query<T: redis::FromRedisValue>(&mut self, args: &[&str]) -> Result<T, String> {
        redis::cmd(args[0])
            .arg(&args[1..])
            .query(&mut self.conn)
            .map_err(|e| format!("node {}: {}: {e}", self.port, args.join(" ")))
    }
}

/// Runs one command on the node on `port`, through a connection of its own.
fn query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> Result<T, String> {
    Probe::open(port)?.query(args)
}

/// The value of `field` in an `INFO`-style text (`field:value` lines).
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.trim_end().strip_prefix(field)?.strip_prefix(':'))
}

/// A synchronous connection to the topology node on `port`.
fn node_connection(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("cannot connect to the node on port {port}: {e}"))
}

/// What a topology's watchdog runs. It collects `node <pid> <port>` and `dir <path>` lines from its
/// stdin until end of file, which comes when the test process closes the pipe: on drop, or when the
/// process ends however it ends (a static is never dropped, a killed process runs no destructor).
/// Then it kills the nodes and removes their directories. It kills a pid only while its command
/// line still names the node's port: once the test process is gone, the pids of its reaped children
/// may be reused. It ignores SIGINT and SIGHUP, which a Ctrl-C or a closed terminal sends to the
/// whole process group, so it outlives them to clean up.
/// Starts a [`WATCHDOG`]; the returned stdin is where `node` and `dir` lines go.
fn spawn_watchdog(label: &str) -> (Child, std::process::ChildStdin) {
    let mut watchdog = Command::new("sh")
        .args(["-c", WATCHDOG])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run sh for the {label} watchdog ({e})"));
    let stdin = watchdog.stdin.take().unwrap();
    (watchdog, stdin)
}

const WATCHDOG: &str = r#"trap '' INT HUP
lines=$(cat)
printf '%s\n' "$lines" | while read -r kind pid port; do
  if [ "$kind" = node ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qE "(:| )$port( |\$)"; then
    kill -9 "$pid"
  fi
done
printf '%s\n' "$lines" | while read -r kind dir; do
  if [ "$kind" = dir ]; then rm -rf -- "$dir"; fi
done"#;

/// The `redis-server` processes of one topology, each in a directory of its own, with the watchdog
/// that removes them if the test process ends without dropping this.
struct Processes {
    label: &'static str,
    inner: std::sync::Mutex<ProcessesInner>,
}

struct ProcessesInner {
    nodes: Vec<Node>,
    dirs: Vec<PathBuf>,
    watchdog: Option<(Child, std::process::ChildStdin)>,
}

struct Node {
    port: u16,
    child: Child,
    killed: bool,
}

impl Processes {
    fn new(label: &'static str) -> Self {
        let (watchdog, stdin) = spawn_watchdog(label);
        Self {
            label,
            inner: std::sync::Mutex::new(ProcessesInner {
                nodes: Vec::new(),
                dirs: Vec::new(),
                watchdog: Some((watchdog, stdin)),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProcessesInner> {
        // A test that panicked while holding it leaves the list intact: keep cleaning up.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tells the watchdog about `line`; the pipe is unbuffered, so it knows at once.
    fn tell_watchdog(inner: &mut ProcessesInner, line: &str) {
        use std::io::Write;
        if let Some((_, stdin)) = &mut inner.watchdog {
            let _ = writeln!(stdin, "{line}");
        }
    }

    /// Starts one `redis-server` on a free port, configured by `configure(command, port, dir)`, and
    /// waits until it answers; returns its port. `free_port` only finds a port that was free a
    /// moment ago (another test binary may take it, or a bus port of this topology), so a node that
    /// exits at start is retried on other ports.
    fn spawn(&self, configure: impl Fn(&mut Command, u16, &std::path::Path)) -> u16 {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!(
                "session-test-{}-{}-{port}",
                self.label,
                std::process::id()
            ));
            let shown = dir.display().to_string();
            assert!(
                !shown.contains('\n'),
                "a temporary directory with a newline: {shown}"
            );
            std::fs::create_dir_all(&dir).unwrap();
            {
                let mut inner = self.lock();
                Self::tell_watchdog(&mut inner, &format!("dir {shown}"));
                inner.dirs.push(dir.clone());
            }
            let mut command = Command::new("redis-server");
            configure(&mut command, port, &dir);
            command
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = command.spawn().unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}); install it with: apt-get install redis-server"
                )
            });
            let pid = child.id();
            {
                let mut inner = self.lock();
                Self::tell_watchdog(&mut inner, &format!("node {pid} {port}"));
                inner.nodes.push(Node {
                    port,
                    child,
                    killed: false,
                });
            }
            match self.wait_answering(port, pid) {
                Ok(()) => return port,
                Err(why) => {
                    // Exited, or never answered: either way not to be left running.
                    let mut inner = self.lock();
                    let node = inner
                        .nodes
                        .iter_mut()
                        .rev()
                        .find(|n| n.port == port)
                        .unwrap();
                    let _ = node.child.kill();
                    node.killed = true;
                    drop(inner);
                    let log = std::fs::read_to_string(dir.join(NODE_LOG)).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    failures.push(format!("port {port}: {why}; log: {tail:?}"));
                }
            }
        }
        panic!("a {} redis-server did not start: {failures:#?}", self.label);
    }

    /// Waits until the node on `port` answers as process `pid` (not some other server that took
    /// the port first), or fails if it exited.
    fn wait_answering(&self, port: u16, pid: u32) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            {
                let mut inner = self.lock();
                let node = inner
                    .nodes
                    .iter_mut()
                    .rev()
                    .find(|n| n.port == port)
                    .unwrap();
                if let Ok(Some(status)) = node.child.try_wait() {
                    node.killed = true;
                    return Err(format!("exited with {status}"));
                }
            }
            if let Ok(info) = query::<String>(port, &["INFO", "server"]) {
                if info_field(&info, "process_id") == Some(pid.to_string().as_str()) {
                    return Ok(());
                }
                return Err("another server answers on the port".to_owned());
            }
            if Instant::now() >= deadline {
                return Err("does not answer".to_owned());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the node on `port` and waits until its port refuses connections. The child is not
    /// reaped until drop, so its pid cannot be reused while the watchdog holds it.
    fn kill(&self, port: u16) {
        {
            let mut inner = self.lock();
            let node = inner
                .nodes
                .iter_mut()
                .find(|n| n.port == port && !n.killed)
                .unwrap_or_else(|| panic!("no running node on port {port}"));
            node.child.kill().unwrap();
            node.killed = true;
        }
        wait_port_closed(
            port,
            Duration::from_secs(5),
            "a killed node closes its port",
        );
    }

    /// Whether the node on `port` was started here and not killed.
    fn is_running(&self, port: u16) -> bool {
        self.lock()
            .nodes
            .iter()
            .any(|n| n.port == port && !n.killed)
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        let inner = self
            .inner
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for node in &mut inner.nodes {
            let _ = node.child.kill();
        }
        // Closing its stdin makes the watchdog clean up now, and exit; the nodes are not reaped yet,
        // so no pid it holds can belong to another process.
        if let Some((mut watchdog, stdin)) = inner.watchdog.take() {
            drop(stdin);
            let _ = watchdog.wait();
        }
        for node in &mut inner.nodes {
            let _ = node.child.wait();
        }
        for dir in &inner.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Port, id, whether a master, master id and slots: a node as all nodes must see it.
type NodeShape<'a> = (u16, &'a str, bool, Option<&'a str>, &'a [(u16, u16)]);

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
struct ClusterNode {
    id: String,
    port: u16,
    flags: Vec<String>,
    master_id: Option<String>,
    /// Inclusive ranges; the importing and migrating markers (`[slot-<-id]`) are left out.
    slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn is_master(&self) -> bool {
        self.has("master")
    }

    /// Flagged `fail`: the cluster agreed it is down (`fail?` is one node's suspicion).
    fn failed(&self) -> bool {
        self.has("fail")
    }

    /// Neither failing, suspected, nor still joining.
    fn healthy(&self) -> bool {
        !["fail", "fail?", "handshake", "noaddr"]
            .iter()
            .any(|f| self.has(f))
    }

    fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }

    fn slot_count(&self) -> usize {
        self.slots
            .iter()
            .map(|&(a, b)| usize::from(b - a) + 1)
            .sum()
    }

    /// What every node must agree on: flags such as `myself` differ by who is asked.
    fn shape(&self) -> NodeShape<'_> {
        (
            self.port,
            &self.id,
            self.is_master(),
            self.master_id.as_deref(),
            &self.slots,
        )
    }
}

/// `CLUSTER NODES` of `node`.
fn cluster_nodes(node: &mut Probe) -> Result<Vec<ClusterNode>, String> {
    node.query::<String>(&["CLUSTER", "NODES"])
        .map(|text| parse_cluster_nodes(&text))
}

fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            // `ip:port@cport[,hostname]`
            let address = fields[1].split('@').next()?;
            let port = address.rsplit(':').next()?.parse().ok()?;
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some(ClusterNode {
                id: fields[0].to_owned(),
                port,
                flags: fields[2].split(',').map(str::to_owned).collect(),
                master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                slots,
            })
        })
        .collect()
}

/// How many slots `CLUSTER SLOTS` of `node` covers, and whether each range has a master and
/// `replicas` replicas: what a cluster client reads its routing table from.
fn cluster_slots_coverage(node: &mut Probe, replicas: usize) -> Result<usize, String> {
    let port = node.port;
    let ranges: Vec<Vec<redis::Value>> = node.query(&["CLUSTER", "SLOTS"])?;
    let mut covered = 0;
    for range in &ranges {
        let bound = |i: usize| match range.get(i) {
            Some(redis::Value::Int(n)) => Ok(*n),
            other => Err(format!("node {port}: CLUSTER SLOTS range bound {other:?}")),
        };
        let (start, end) = (bound(0)?, bound(1)?);
        if range.len() != 3 + replicas {
            return Err(format!(
                "node {port}: CLUSTER SLOTS {start}-{end} lists {} nodes",
                range.len() - 2
            ));
        }
        covered += usize::try_from(end - start + 1).unwrap_or(0);
    }
    Ok(covered)
}

/// A Redis Cluster of 3 masters with 1 replica each: six `redis-server` processes on free
/// loopback ports, each in a temporary directory of its own, with [`CLUSTER_NODE_TIMEOUT`].
///
/// Dropping it kills the nodes and removes their directories; a watchdog does the same when the
/// test process ends without dropping it (as with [`RedisCluster::shared`]).
pub struct RedisCluster {
    processes: Processes,
    ports: Vec<u16>,
    /// The slots each master owned when [`RedisCluster::kill`] killed it.
    killed_masters: std::sync::Mutex<std::collections::HashMap<u16, Vec<(u16, u16)>>>,
    /// One reshard at a time: two concurrent `SETSLOT NODE` bump config epochs without consensus.
    resharding: std::sync::Mutex<()>,
}

impl RedisCluster {
    /// The cluster all test cases of this test binary share, started on first use (cases keep
    /// apart by random key prefixes). Never dropped: its watchdog removes it when the process ends.
    /// Tests that kill nodes must use a private one, [`RedisCluster::start`].
    pub fn shared() -> &'static Self {
        static SHARED: std::sync::OnceLock<RedisCluster> = std::sync::OnceLock::new();
        SHARED.get_or_init(Self::start)
    }

    /// Starts a private cluster and waits until it is fully formed: every node reports
    /// `cluster_state:ok`, all agree on the same 3 masters covering all 16384 slots (in
    /// `CLUSTER NODES` and `CLUSTER SLOTS`), each with 1 replica whose replication link is up. A
    /// client connecting right after `redis-cli --cluster create` could otherwise see an incomplete
    /// routing table, and a failover test kill a master before its replica has its data.
    pub fn start() -> Self {
        let processes = Processes::new("cluster");
        let timeout = CLUSTER_NODE_TIMEOUT.as_millis().to_string();
        let ports: Vec<u16> = (0..6)
            .map(|_| {
                processes.spawn(|command, port, dir| {
                    command
                        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                        // The bus port is chosen too: the default, port + 10000, may be taken or
                        // above 65535 for a port from the ephemeral range.
                        .args(["--cluster-port", &free_port().to_string()])
                        .args(["--cluster-enabled", "yes"])
                        .args(["--cluster-config-file", "nodes.conf"])
                        .args(["--cluster-node-timeout", &timeout])
                        // A replica may always fail over, however long it was cut off: a failover
                        // test does not depend on timing.
                        .args(["--cluster-replica-validity-factor", "0"])
                        // No replica changes master, no master that loses its slots turns replica:
                        // the topology changes only when a test changes it.
                        .args(["--cluster-allow-replica-migration", "no"])
                        // A replica's first sync starts at once, not after the default 5 s.
                        .args(["--repl-diskless-sync-delay", "0"])
                        // `CLUSTER SLOTS` leaves out a replica until its replication offset moves,
                        // which on an idle master only its pings do: every second, not every 10.
                        .args(["--repl-ping-replica-period", "1"])
                        .args(["--save", "", "--appendonly", "no"])
                        .args(["--logfile", NODE_LOG])
                        .arg("--dir")
                        .arg(dir);
                })
            })
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-cli ({e}); install it with: apt-get install redis-tools")
            });
        let report = String::from_utf8_lossy(&created.stdout);
        assert!(
            created.status.success() && report.contains("All 16384 slots covered"),
            "redis-cli --cluster create failed: {report}{}",
            String::from_utf8_lossy(&created.stderr)
        );
        let cluster = Self {
            processes,
            ports,
            killed_masters: std::sync::Mutex::default(),
            resharding: std::sync::Mutex::new(()),
        };
        wait_until(Duration::from_secs(30), "the new cluster settles", || {
            cluster.check_formed()
        });
        cluster
    }

    /// Ok once the freshly created cluster is complete and every node sees it the same way.
    fn check_formed(&self) -> Result<(), String> {
        let mut reference: Option<Vec<ClusterNode>> = None;
        for &port in &self.ports {
            let mut node = Probe::open(port)?;
            let info: String = node.query(&["CLUSTER", "INFO"])?;
            for (field, want) in [
                ("cluster_state", "ok"),
                ("cluster_slots_ok", "16384"),
                ("cluster_known_nodes", "6"),
                ("cluster_size", "3"),
            ] {
                if info_field(&info, field) != Some(want) {
                    return Err(format!(
                        "node {port}: {field} is {:?}",
                        info_field(&info, field)
                    ));
                }
            }
            let mut view = cluster_nodes(&mut node)?;
            view.sort_by_key(|n| n.port);
            if let Some(bad) = view.iter().find(|n| !n.healthy()) {
                return Err(format!("node {port} sees {} as {:?}", bad.port, bad.flags));
            }
            let masters: Vec<&ClusterNode> = view.iter().filter(|n| n.is_master()).collect();
            if masters.len() != 3 || masters.iter().map(|m| m.slot_count()).sum::<usize>() != 16384
            {
                return Err(format!("node {port} sees {} masters", masters.len()));
            }
            for master in &masters {
                let replicas = view
                    .iter()
                    .filter(|n| n.master_id.as_deref() == Some(master.id.as_str()))
                    .count();
                if replicas != 1 {
                    return Err(format!(
                        "node {port} sees {replicas} replicas of {}",
                        master.port
                    ));
                }
            }
            match &reference {
                None => reference = Some(view.clone()),
                Some(first) => {
                    if !first
                        .iter()
                        .map(ClusterNode::shape)
                        .eq(view.iter().map(ClusterNode::shape))
                    {
                        return Err(format!("node {port} disagrees with node {}", self.ports[0]));
                    }
                }
            }
            let covered = cluster_slots_coverage(&mut node, 1)?;
            if covered != 16384 {
                return Err(format!("node {port}: CLUSTER SLOTS covers {covered} slots"));
            }
            let me = view.iter().find(|n| n.port == port).unwrap();
            if !me.is_master() {
                let replication: String = node.query(&["INFO", "replication"])?;
                if info_field(&replication, "master_link_status") != Some("up") {
                    return Err(format!("replica {port} is not in sync yet"));
                }
            }
        }
        Ok(())
    }

    /// `CLUSTER NODES` of the first running node that answers.
    fn view(&self) -> Vec<ClusterNode> {
        let mut failures = Vec::new();
        for port in self.running_ports() {
            match Probe::open(port).and_then(|mut node| cluster_nodes(&mut node)) {
                Ok(view) => return view,
                Err(why) => failures.push(why),
            }
        }
        panic!("no cluster node answers: {failures:?}");
    }

    fn running_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .copied()
            .filter(|&p| self.processes.is_running(p))
            .collect()
    }

    /// Ok with the common view once every running node reports `cluster_state:ok`, and all agree on
    /// the roles, masters and slots of the running nodes, none of which any of them suspects.
    fn check_agreement(&self) -> Result<Vec<ClusterNode>, String> {
        let running = self.running_ports();
        let mut reference: Option<(u16, Vec<ClusterNode>)> = None;
        for &port in &running {
            let mut node = Probe::open(port)?;
            let info: String = node.query(&["CLUSTER", "INFO"])?;
            if info_field(&info, "cluster_state") != Some("ok") {
                return Err(format!("node {port}: cluster_state is not ok"));
            }
            let view = cluster_nodes(&mut node)?;
            let mut live: Vec<&ClusterNode> =
                view.iter().filter(|n| running.contains(&n.port)).collect();
            live.sort_by_key(|n| n.port);
            if let Some(bad) = live.iter().find(|n| !n.healthy()) {
                return Err(format!("node {port} sees {} as {:?}", bad.port, bad.flags));
            }
            match &reference {
                None => reference = Some((port, view.clone())),
                Some((first_port, first)) => {
                    let mut first_live: Vec<&ClusterNode> =
                        first.iter().filter(|n| running.contains(&n.port)).collect();
                    first_live.sort_by_key(|n| n.port);
                    if !first_live
                        .iter()
                        .map(|n| n.shape())
                        .eq(live.iter().map(|n| n.shape()))
                    {
                        return Err(format!("node {port} disagrees with node {first_port}"));
                    }
                }
            }
        }
        reference
            .map(|(_, view)| view)
            .ok_or_else(|| "no node is running".to_owned())
    }

    /// `redis://127.0.0.1:<port>` of every node (also of killed ones), in start order.
    #[must_use]
    pub fn seeds(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// `redis+cluster://127.0.0.1:<p1>,...,127.0.0.1:<p6>`: every node, the form the store parses.
    #[must_use]
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The ports of all six nodes (also of killed ones), in start order.
    #[must_use]
    pub fn ports(&self) -> Vec<u16> {
        self.ports.clone()
    }

    /// Deletes every key under `prefix` on every master (each holds its own slots' keys).
    pub fn delete_prefix(&self, prefix: &str) {
        for port in self.masters() {
            redis_delete_prefix(&format!("redis://127.0.0.1:{port}"), prefix);
        }
    }

    /// The ports of the current masters (sorted), as `CLUSTER NODES` of a running node lists them,
    /// leaving out nodes flagged `fail`.
    #[must_use]
    pub fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<u16> = self
            .view()
            .iter()
            .filter(|n| n.is_master() && !n.failed())
            .map(|n| n.port)
            .collect();
        masters.sort_unstable();
        masters
    }

    /// The ports of the replicas of the master on `master_port` (sorted), leaving out nodes
    /// flagged `fail`.
    #[must_use]
    pub fn replicas_of(&self, master_port: u16) -> Vec<u16> {
        let view = self.view();
        let master = view
            .iter()
            .find(|n| n.port == master_port)
            .unwrap_or_else(|| panic!("no cluster node on port {master_port}"));
        let mut replicas: Vec<u16> = view
            .iter()
            .filter(|n| n.master_id.as_deref() == Some(master.id.as_str()) && !n.failed())
            .map(|n| n.port)
            .collect();
        replicas.sort_unstable();
        replicas
    }

    /// The port of the master serving `slot`, as `CLUSTER NODES` of a running node says. After
    /// [`RedisCluster::migrate_slot`] or [`RedisCluster::wait_for_failover`] all nodes agree.
    #[must_use]
    pub fn slot_owner(&self, slot: u16) -> u16 {
        self.view()
            .iter()
            .find(|n| n.is_master() && !n.failed() && n.owns(slot))
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
            .port
    }

    /// A synchronous connection to the node on `port`: it answers for its own slots only
    /// (`MOVED` otherwise), and a replica only after `READONLY`.
    #[must_use]
    pub fn node_connection(&self, port: u16) -> redis::Connection {
        node_connection(port)
    }

    /// SIGKILLs the node on `port` (no shutdown, no goodbye to the cluster) and waits until its
    /// port is closed. Only on a private cluster: other cases share [`RedisCluster::shared`].
    pub fn kill(&self, port: u16) {
        if let Some(me) = self.view().into_iter().find(|n| n.port == port)
            && me.is_master()
        {
            self.killed_masters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(port, me.slots);
        }
        self.processes.kill(port);
    }

    /// Waits until the slots of the dead master on `dead_master_port` are served by another master
    /// (one of its replicas) and every surviving node reports `cluster_state:ok` and agrees on the
    /// new topology; returns the new master's port. Panics if that takes longer than `within`.
    pub fn wait_for_failover(&self, dead_master_port: u16, within: Duration) -> u16 {
        let remembered = self
            .killed_masters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&dead_master_port)
            .cloned();
        // Killed some other way: its slots are still its own until the failover.
        let slots = remembered.unwrap_or_else(|| {
            self.view()
                .into_iter()
                .find(|n| n.port == dead_master_port)
                .map(|n| n.slots)
                .unwrap_or_default()
        });
        let &(slot, _) = slots
            .first()
            .unwrap_or_else(|| panic!("node {dead_master_port} served no slots when killed"));
        wait_until(within, "the cluster fails over", || {
            let view = self.check_agreement()?;
            let owner = view
                .iter()
                .find(|n| n.is_master() && !n.failed() && n.owns(slot))
                .ok_or_else(|| format!("no master serves slot {slot}"))?;
            if owner.port == dead_master_port {
                return Err(format!("slot {slot} is still served by the dead master"));
            }
            let role: Vec<redis::Value> = query(owner.port, &["ROLE"])?;
            match role.first() {
                Some(redis::Value::BulkString(r)) if r == b"master" => Ok(owner.port),
                other => Err(format!("node {} answers ROLE with {other:?}", owner.port)),
            }
        })
    }

    /// Moves `slot`, with all its keys, to the master on `to_port`, the documented manual way, so
    /// that clients may keep writing to it meanwhile (they follow `ASK` to the target for keys not
    /// moved yet): `SETSLOT IMPORTING` on the target, `SETSLOT MIGRATING` on the source, `MIGRATE`
    /// in batches until the source holds none of its keys, then `SETSLOT NODE` on the target, the
    /// source and the other masters. Returns once every running node agrees the target owns it.
    ///
    /// Returns the number of keys moved (a key deleted between listing and moving still counts).
    pub fn migrate_slot(&self, slot: u16, to_port: u16) -> usize {
        self.migrate_slot_in_batches(slot, to_port, 100)
    }

    /// [`RedisCluster::migrate_slot`] moving `batch` keys per `MIGRATE`: with 1, a slot holding
    /// a user's session and index spends time with one moved and the other not, the state a
    /// script touching both meets during a real resharding of a large slot.
    pub fn migrate_slot_in_batches(&self, slot: u16, to_port: u16, batch: usize) -> usize {
        let Some(migration) = self.begin_migration(slot, to_port) else {
            return 0;
        };
        let mut moved = 0;
        loop {
            let n = migration.move_batch(batch);
            if n == 0 {
                break;
            }
            moved += n;
        }
        migration.finish();
        moved
    }

    /// Starts moving `slot` to the master on `to_port` (`SETSLOT IMPORTING` on the target, then
    /// `MIGRATING` on the source) and leaves it half way for the caller to move keys one by one:
    /// the slot's keys stay where they are until [`SlotMigration::move_keys`] or
    /// [`SlotMigration::finish`]. `None` if the target already serves it. One migration at a
    /// time: others wait.
    pub fn begin_migration(&self, slot: u16, to_port: u16) -> Option<SlotMigration<'_>> {
        let one_at_a_time = self
            .resharding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        assert!(slot < CLUSTER_SLOTS, "no slot {slot}");
        let view = self.view();
        let source = view
            .iter()
            .find(|n| n.is_master() && !n.failed() && n.owns(slot))
            .unwrap_or_else(|| panic!("no master serves slot {slot}"));
        let target = view
            .iter()
            .find(|n| n.port == to_port && n.is_master() && !n.failed())
            .unwrap_or_else(|| panic!("node {to_port} is not a master"));
        if source.port == target.port {
            return None;
        }
        let migration = SlotMigration {
            cluster: self,
            slot,
            source: (source.port, source.id.clone()),
            target: (target.port, target.id.clone()),
            _one_at_a_time: one_at_a_time,
        };
        // The target first: once the source redirects with ASK, the target must accept.
        migration.run(
            migration.target.0,
            &migration.setslot("IMPORTING", &migration.source.1),
        );
        migration.run(
            migration.source.0,
            &migration.setslot("MIGRATING", &migration.target.1),
        );
        Some(migration)
    }
}

/// A master, its replica and 3 sentinels monitoring it as [`SENTINEL_MASTER_NAME`] with quorum 2
/// (`down-after-milliseconds` 1000, `failover-timeout` 5000): five `redis-server` processes on
/// free loopback ports, each in a temporary directory of its own.
///
/// Dropping it kills them and removes their directories; a watchdog does the same when the test
/// process ends without dropping it (as with [`RedisSentinel::shared`]).
pub struct RedisSentinel {
    processes: Processes,
    sentinel_ports: Vec<u16>,
}

impl RedisSentinel {
    /// The Sentinel setup all test cases of this test binary share, started on first use. Never
    /// dropped: its watchdog removes it when the process ends. Tests that kill the master must use
    /// a private one, [`RedisSentinel::start`].
    pub fn shared() -> &'static Self {
        static SHARED: std::sync::OnceLock<RedisSentinel> = std::sync::OnceLock::new();
        SHARED.get_or_init(Self::start)
    }

    /// Starts a private one and waits until a failover could start at once: the replica is in
    /// sync, and every sentinel reports the master and knows the replica and the 2 other sentinels.
    pub fn start() -> Self {
        let processes = Processes::new("sentinel");
        let data_node = |command: &mut Command, port: u16, dir: &std::path::Path| {
            command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--logfile", NODE_LOG])
                .arg("--dir")
                .arg(dir);
        };
        let master = processes.spawn(data_node);
        let replica = processes.spawn(|command, port, dir| {
            data_node(command, port, dir);
            command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        });
        // Sentinels learn replicas from the master's INFO, which they read when they connect and
        // then every 10 s: they start once the replica is attached, or would not know it for 10 s.
        wait_until(Duration::from_secs(20), "the replica syncs", || {
            let on_replica: String = query(replica, &["INFO", "replication"])?;
            let on_master: String = query(master, &["INFO", "replication"])?;
            let online =
                info_field(&on_master, "slave0").is_some_and(|s| s.contains("state=online"));
            if info_field(&on_replica, "master_link_status") == Some("up") && online {
                Ok(())
            } else {
                Err(format!("replica {replica} of {master} is not in sync"))
            }
        });
        let sentinel_ports = (0..3)
            .map(|_| {
                processes.spawn(|command, port, dir| {
                    // Sentinel rewrites its configuration file: a copy of its own, in its directory.
                    let conf = dir.join("sentinel.conf");
                    std::fs::write(
                        &conf,
                        format!(
                            "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {NODE_LOG}\n\
                             sentinel resolve-hostnames no\n\
                             sentinel monitor {SENTINEL_MASTER_NAME} 127.0.0.1 {master} 2\n\
                             sentinel down-after-milliseconds {SENTINEL_MASTER_NAME} 1000\n\
                             sentinel failover-timeout {SENTINEL_MASTER_NAME} 5000\n\
                             sentinel parallel-syncs {SENTINEL_MASTER_NAME} 1\n",
                            dir = dir.display()
                        ),
                    )
                    .unwrap();
                    command
                        .arg(&conf)
                        .args(["--sentinel", "--port", &port.to_string()]);
                })
            })
            .collect();
        let sentinel = Self {
            processes,
            sentinel_ports,
        };
        wait_until(Duration::from_secs(30), "the sentinels settle", || {
            sentinel.check_settled(master, replica)
        });
        sentinel
    }

    fn check_settled(&self, master: u16, replica: u16) -> Result<(), String> {
        for &port in &self.sentinel_ports {
            let mut sentinel = Probe::open(port)?;
            let reported = Self::reported_master(&mut sentinel)?;
            if reported != master {
                return Err(format!("sentinel {port} reports master {reported}"));
            }
            let state: std::collections::HashMap<String, String> =
                sentinel.query(&["SENTINEL", "MASTER", SENTINEL_MASTER_NAME])?;
            if state.get("flags").map(String::as_str) != Some("master") {
                return Err(format!(
                    "sentinel {port} sees the master as {:?}",
                    state.get("flags")
                ));
            }
            let others: Vec<redis::Value> =
                sentinel.query(&["SENTINEL", "SENTINELS", SENTINEL_MASTER_NAME])?;
            if others.len() != 2 {
                return Err(format!(
                    "sentinel {port} knows {} other sentinels",
                    others.len()
                ));
            }
            let replicas: Vec<std::collections::HashMap<String, String>> =
                sentinel.query(&["SENTINEL", "REPLICAS", SENTINEL_MASTER_NAME])?;
            let known = replicas.iter().any(|r| {
                r.get("port") == Some(&replica.to_string())
                    && r.get("flags").map(String::as_str) == Some("slave")
            });
            if replicas.len() != 1 || !known {
                return Err(format!("sentinel {port} sees replicas {replicas:?}"));
            }
        }
        Ok(())
    }

    /// The master port `sentinel` reports.
    fn reported_master(sentinel: &mut Probe) -> Result<u16, String> {
        let (_, master): (String, String) =
            sentinel.query(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER_NAME])?;
        master
            .parse()
            .map_err(|e| format!("sentinel {} reports port {master:?}: {e}", sentinel.port))
    }

    /// `redis+sentinel://127.0.0.1:<s1>,127.0.0.1:<s2>,127.0.0.1:<s3>/mymaster`: the sentinels,
    /// then the master name as the path (a `/<db>` may follow), the form the store parses.
    #[must_use]
    pub fn url(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!(
            "redis+sentinel://{}/{SENTINEL_MASTER_NAME}",
            sentinels.join(",")
        )
    }

    /// The ports of the 3 sentinels.
    #[must_use]
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinel_ports.clone()
    }

    /// Deletes every key under `prefix` on the current master (the replica follows).
    pub fn delete_prefix(&self, prefix: &str) {
        redis_delete_prefix(&format!("redis://127.0.0.1:{}", self.master_port()), prefix);
    }

    /// The port of the current master, as the first sentinel that answers reports it.
    #[must_use]
    pub fn master_port(&self) -> u16 {
        let mut failures = Vec::new();
        for &port in &self.sentinel_ports {
            match Probe::open(port).and_then(|mut sentinel| Self::reported_master(&mut sentinel)) {
                Ok(master) => return master,
                Err(why) => failures.push(why),
            }
        }
        panic!("no sentinel reports the master: {failures:?}");
    }

    /// The ports of the replicas the first sentinel that answers knows and considers up (sorted).
    #[must_use]
    pub fn replica_ports(&self) -> Vec<u16> {
        let mut failures = Vec::new();
        for &port in &self.sentinel_ports {
            match query::<Vec<std::collections::HashMap<String, String>>>(
                port,
                &["SENTINEL", "REPLICAS", SENTINEL_MASTER_NAME],
            ) {
                Ok(replicas) => {
                    let mut ports: Vec<u16> = replicas
                        .iter()
                        .filter(|r| {
                            r.get("flags").is_some_and(|f| {
                                !["s_down", "o_down", "disconnected"]
                                    .iter()
                                    .any(|bad| f.contains(bad))
                            })
                        })
                        .filter_map(|r| r.get("port")?.parse().ok())
                        .collect();
                    ports.sort_unstable();
                    return ports;
                }
                Err(why) => failures.push(why),
            }
        }
        panic!("no sentinel lists the replicas: {failures:?}");
    }

    /// SIGKILLs the current master (no shutdown) and waits until its port is closed; returns its
    /// port. Only on a private setup: other cases share [`RedisSentinel::shared`].
    pub fn kill_master(&self) -> u16 {
        let master = self.master_port();
        self.processes.kill(master);
        master
    }

    /// Asks the first Sentinel for a manual failover (`SENTINEL FAILOVER`); returns at once.
    pub fn failover(&self) {
        let _: String = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(SENTINEL_MASTER_NAME)
            .query(&mut self.node_connection(self.sentinel_ports[0]))
            .unwrap_or_else(|e| panic!("SENTINEL FAILOVER: {e}"));
    }

    /// Waits until every running sentinel reports the same master, not the one on
    /// `old_master_port`, with no failover in progress, that master answers `ROLE` as a master,
    /// and the old master, if still running, has been made its replica and has synced; returns
    /// the new master's port. Panics if that takes longer than `within`.
    pub fn wait_for_failover(&self, old_master_port: u16, within: Duration) -> u16 {
        wait_until(within, "the sentinels fail over", || {
            let mut reported = None;
            for &port in &self.sentinel_ports {
                if !self.processes.is_running(port) {
                    continue;
                }
                let mut sentinel = Probe::open(port)?;
                let master = Self::reported_master(&mut sentinel)?;
                if master == old_master_port {
                    return Err(format!(
                        "sentinel {port} still reports the old master {master}"
                    ));
                }
                if let Some(other) = reported.filter(|&r| r != master) {
                    return Err(format!(
                        "sentinel {port} reports master {master}, an earlier one {other}"
                    ));
                }
                let state: std::collections::HashMap<String, String> =
                    sentinel.query(&["SENTINEL", "MASTER", SENTINEL_MASTER_NAME])?;
                if state.get("flags").map(String::as_str) != Some("master") {
                    return Err(format!(
                        "sentinel {port} sees the master as {:?}",
                        state.get("flags")
                    ));
                }
                reported = Some(master);
            }
            let master = reported.ok_or_else(|| "no sentinel is running".to_owned())?;
            let role: Vec<redis::Value> = query(master, &["ROLE"])?;
            match role.first() {
                Some(redis::Value::BulkString(r)) if r == b"master" => {}
                other => return Err(format!("node {master} answers ROLE with {other:?}")),
            }
            // A master still running (a manual failover) keeps accepting writes until the
            // Sentinels demote it, and drops them when it resyncs: until then, what a client
            // reads from it says nothing about what survived.
            if self.processes.is_running(old_master_port) {
                let info: String = query(old_master_port, &["INFO", "replication"])?;
                let synced = info.contains("role:slave")
                    && info.contains(&format!("master_port:{master}"))
                    && info.contains("master_link_status:up")
                    && info.contains("master_sync_in_progress:0");
                if !synced {
                    return Err(format!(
                        "the old master {old_master_port} is not yet a replica in sync with {master}"
                    ));
                }
            }
            Ok(master)
        })
    }

    /// A synchronous connection to the node (or sentinel) on `port`.
    #[must_use]
    pub fn node_connection(&self, port: u16) -> redis::Connection {
        node_connection(port)
    }
}

/// A slot half way from one master of a [`RedisCluster`] to another (see
/// [`RedisCluster::begin_migration`]): keys not moved yet are served by the source, moved ones by
/// the target (`ASK`), and a command naming keys on both sides gets `TRYAGAIN`.
pub struct SlotMigration<'a> {
    cluster: &'a RedisCluster,
    slot: u16,
    source: (u16, String),
    target: (u16, String),
    _one_at_a_time: std::sync::MutexGuard<'a, ()>,
}

impl SlotMigration<'_> {
    fn run(&self, port: u16, command: &redis::Cmd) {
        let mut conn = Probe::open(port).unwrap().conn;
        command
            .query::<()>(&mut conn)
            .unwrap_or_else(|e| panic!("node {port}: {command:?}: {e}"));
    }

    fn setslot(&self, state: &str, id: &str) -> redis::Cmd {
        let mut command = redis::cmd("CLUSTER");
        command.arg("SETSLOT").arg(self.slot).arg(state).arg(id);
        command
    }

    /// The slot being moved.
    #[must_use]
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// Moves these keys of the slot to the target (`MIGRATE … KEYS`); panics if one is not in the
    /// slot or Redis refuses.
    pub fn move_keys(&self, keys: &[&str]) {
        for key in keys {
            assert_eq!(
                key_slot(key),
                self.slot,
                "{key} is not in slot {}",
                self.slot
            );
        }
        self.migrate(keys);
    }

    fn migrate<K: redis::ToRedisArgs>(&self, keys: &[K]) {
        let mut conn = Probe::open(self.source.0).unwrap().conn;
        let _: String = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(self.target.0)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(keys)
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("MIGRATE of slot {} to {}: {e}", self.slot, self.target.0));
    }

    /// Moves up to `batch` of the keys the source still holds; returns how many.
    fn move_batch(&self, batch: usize) -> usize {
        let mut conn = Probe::open(self.source.0).unwrap().conn;
        // While migrating, the source creates no key in the slot (it answers ASK for missing
        // keys), so an empty listing means it holds none.
        let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(self.slot)
            .arg(batch.max(1))
            .query(&mut conn)
            .unwrap();
        if !keys.is_empty() {
            self.migrate(&keys);
        }
        keys.len()
    }

    /// Moves the keys left, then hands the slot to the target: `SETSLOT NODE` on the target (it
    /// bumps its config epoch, so its claim wins), then the source, then the other masters, so
    /// that none of them keeps redirecting to the source. Returns once every running node agrees.
    pub fn finish(self) {
        while self.move_batch(100) > 0 {}
        let slot = self.slot;
        let to_port = self.target.0;
        let assign = self.setslot("NODE", &self.target.1);
        self.run(self.target.0, &assign);
        self.run(self.source.0, &assign);
        let cluster = self.cluster;
        for other in cluster.view().iter().filter(|n| {
            n.is_master()
                && !n.failed()
                && n.port != self.source.0
                && n.port != self.target.0
                && cluster.processes.is_running(n.port)
        }) {
            self.run(other.port, &assign);
        }
        wait_until(
            Duration::from_secs(30),
            "every node sees the migrated slot",
            || {
                let view = cluster.check_agreement()?;
                match view.iter().find(|n| n.is_master() && n.owns(slot)) {
                    Some(owner) if owner.port == to_port => Ok(()),
                    other => Err(format!(
                        "slot {slot} is served by {:?}",
                        other.map(|n| n.port)
                    )),
                }
            },
        );
    }
}

/// A PostgreSQL primary and a streaming standby of their own (`initdb`, `pg_basebackup -R`), run
/// as the `postgres` user on free loopback ports in a temporary directory, for replica routing
/// tests; the shared server on 5432 is not touched. Both are killed and the directory removed on
/// drop, or by a watchdog if the test process ends without dropping it.
pub struct PgReplicaPair {
    primary_port: u16,
    standby_port: u16,
    children: std::sync::Mutex<Vec<(u16, Child, bool)>>,
    watchdog: Option<(Child, std::process::ChildStdin)>,
    dir: PathBuf,
}

/// The directory of the installed PostgreSQL server binaries (`/usr/lib/postgresql/<v>/bin`).
fn pg_bindir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| d.ok().map(|d| d.path().join("bin")))
                .filter(|bin| bin.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("no PostgreSQL server binaries under /usr/lib/postgresql; install them with: apt-get install postgresql")
    })
}

/// The `postgres` user's uid and gid, which `initdb` and the server must run as (not root).
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("cannot run id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no postgres user: install postgresql"))
    };
    (id("-u"), id("-g"))
}

impl PgReplicaPair {
    /// Starts the primary, takes a base backup of it for the standby, starts the standby and
    /// waits until it streams.
    #[must_use]
    pub fn start() -> Self {
        use std::os::unix::process::CommandExt as _;
        let bin = pg_bindir();
        let (uid, gid) = postgres_ids();
        let (primary_port, standby_port) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!(
            "session-test-pgpair-{}-{primary_port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        let (watchdog, mut stdin) = spawn_watchdog("pgpair");
        {
            use std::io::Write;
            let _ = writeln!(stdin, "dir {}", dir.display());
        }
        let mut pair = Self {
            primary_port,
            standby_port,
            children: std::sync::Mutex::new(Vec::new()),
            watchdog: Some((watchdog, stdin)),
            dir: dir.clone(),
        };
        let as_postgres = |program: &str| {
            let mut command = Command::new(bin.join(program));
            command
                .uid(uid)
                .gid(gid)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            command
        };
        let run = |mut command: Command, what: &str| {
            let status = command.status().unwrap_or_else(|e| {
                panic!("cannot run {what} as the postgres user: {e} (the tests switch to it, which needs root)")
            });
            assert!(status.success(), "{what} failed: {status}");
        };
        let primary = dir.join("primary");
        let standby = dir.join("standby");
        let mut initdb = as_postgres("initdb");
        initdb
            .arg("-D")
            .arg(&primary)
            .args(["-U", "postgres", "--auth=trust", "--no-sync"]);
        run(initdb, "initdb");
        pair.primary_port = pair.spawn_server(|| as_postgres("postgres"), &primary, primary_port);
        let mut backup = as_postgres("pg_basebackup");
        backup
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pair.primary_port.to_string(),
                "-U",
                "postgres",
                "-D",
            ])
            .arg(&standby)
            .args(["-R", "-X", "stream", "--no-sync"]);
        run(backup, "pg_basebackup");
        pair.standby_port = pair.spawn_server(|| as_postgres("postgres"), &standby, standby_port);
        wait_until(Duration::from_secs(30), "the standby streams", || {
            let streaming = psql_try(
                &pair.primary_url(),
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            )?;
            if streaming == "1" {
                Ok(())
            } else {
                Err(format!("{streaming} standbys streaming"))
            }
        });
        pair
    }

    /// Starts a postmaster on `data` and returns the port it answers on. The port came from
    /// [`free_port`], which releases it before the server binds: another process can take it in
    /// between (an outgoing connection's ephemeral port, another test's listener). The server then
    /// exits, and whatever holds the port may accept and close connections, which psql reports as
    /// "server closed the connection unexpectedly". So a postmaster that has exited is restarted
    /// on a fresh port, up to three times, instead of polling someone else's listener for 30 s.
    fn spawn_server(
        &mut self,
        command: impl Fn() -> Command,
        data: &std::path::Path,
        mut port: u16,
    ) -> u16 {
        for attempt in 1..=3 {
            let mut command = command();
            command
                .arg("-D")
                .arg(data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(&self.dir)
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "wal_receiver_status_interval=1",
                    "-c",
                    "max_connections=50",
                ]);
            let mut child = command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start postgres: {e}"));
            if let Some((_, stdin)) = &mut self.watchdog {
                use std::io::Write;
                let _ = writeln!(stdin, "node {} {port}", child.id());
            }
            let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
            let answered = wait_until(Duration::from_secs(30), "postgres answers", || {
                if let Some(status) = child.try_wait().ok().flatten() {
                    return Ok(Err(status));
                }
                psql_try(&url, "SELECT 1").map(|_| Ok(()))
            });
            match answered {
                Ok(()) => {
                    self.children
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((port, child, false));
                    return port;
                }
                Err(status) => {
                    assert!(
                        attempt < 3,
                        "postgres on {} exited ({status}) three times: is the port range exhausted?",
                        data.display()
                    );
                    port = free_port();
                }
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// `postgres://postgres@127.0.0.1:<primary>/postgres`.
    #[must_use]
    pub fn primary_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.primary_port
        )
    }

    /// `postgres://postgres@127.0.0.1:<standby>/postgres`.
    #[must_use]
    pub fn standby_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.standby_port
        )
    }

    /// Pauses (or resumes) the standby's replay of the WAL it receives: it falls behind.
    pub fn pause_replay(&self, paused: bool) {
        let call = if paused {
            "SELECT pg_wal_replay_pause()"
        } else {
            "SELECT pg_wal_replay_resume()"
        };
        psql(&self.standby_url(), call);
    }

    /// SIGKILLs the standby's postmaster (its backends exit when they notice) and waits until its
    /// port refuses connections.
    pub fn kill_standby(&self) {
        {
            let mut children = self
                .children
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (_, child, killed) = children
                .iter_mut()
                .find(|(port, _, killed)| *port == self.standby_port && !*killed)
                .expect("the standby is running");
            child.kill().unwrap();
            *killed = true;
        }
        wait_port_closed(
            self.standby_port,
            Duration::from_secs(10),
            "the killed standby closes its port",
        );
    }
}

impl Drop for PgReplicaPair {
    fn drop(&mut self) {
        let children = self
            .children
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A fast shutdown first (SIGINT), so the servers remove their shared memory and stop
        // their own processes; SIGKILL for any that has not within 5 s.
        for (_, child, killed) in children.iter() {
            if !*killed {
                let _ = Command::new("kill")
                    .args(["-INT", &child.id().to_string()])
                    .status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, child, _) in children.iter_mut() {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
        }
        if let Some((mut watchdog, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = watchdog.wait();
        }
        for (_, child, _) in children.iter_mut() {
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until nothing accepts connections on `port` (a killed server's), panicking with `what`
/// after `within`.
fn wait_port_closed(port: u16, within: Duration, what: &str) {
    wait_until(within, what, || match std::net::TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(100),
    ) {
        Ok(_) => Err(format!("port {port} still accepts")),
        Err(_) => Ok(()),
    });
}

/// `psql` that reports failure instead of panicking (for waiting on a server).
fn psql_try(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([url, "-XAtqc", sql])
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The MySQL/MariaDB server the tests use: `MYSQL_URL`, default the local MariaDB as root.
#[must_use]
pub fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

const START_MARIADB: &str =
    "service mariadb start (or: mysqld_safe --user=mysql --bind-address=127.0.0.1 &)";

/// Runs one SQL command through the `mysql` client against the server of [`mysql_url`] (its
/// host, port and user; no password) and returns its output.
///
/// # Panics
/// If the client is missing or the command fails; the message says how to start MariaDB.
pub fn mysql(sql: &str) -> String {
    mysql_try(sql).unwrap_or_else(|why| {
        panic!(
            "mysql failed at {}: {why}\nIf MariaDB is down, start it with:\n  {START_MARIADB}\nor set MYSQL_URL.",
            mysql_url()
        )
    })
}

/// [`mysql`] that reports a failure (the client's error output) instead of panicking, for waits.
///
/// # Errors
/// The `mysql` client's error output when the command fails.
///
/// # Panics
/// If the `mysql` client cannot be run at all.
pub fn mysql_try(sql: &str) -> Result<String, String> {
    let url = mysql_url();
    let rest = url.strip_prefix("mysql://").unwrap_or(&url);
    let (user, host) = rest.split_once('@').unwrap_or(("root", rest));
    let host = host.split('/').next().unwrap_or(host);
    let (host, port) = host.split_once(':').unwrap_or((host, "3306"));
    let out = Command::new("mysql")
        .args(["-h", host, "-P", port, "-u", user, "-N", "-B", "-e", sql])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run mysql ({e}); install it with: apt-get install mariadb-client")
        });
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// A database of its own on the MySQL/MariaDB server, dropped when this is dropped.
pub struct MysqlDatabase {
    name: String,
}

impl MysqlDatabase {
    /// Creates `test_<label>_<random>`.
    #[must_use]
    pub fn create(label: &str) -> Self {
        let name = unique_name(label);
        mysql(&format!("CREATE DATABASE {name}"));
        Self { name }
    }

    /// The database's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection URL to this database.
    #[must_use]
    pub fn url(&self) -> String {
        format!("{}/{}", mysql_url().trim_end_matches('/'), self.name)
    }
}

impl Drop for MysqlDatabase {
    fn drop(&mut self) {
        let _ =
            std::panic::catch_unwind(|| mysql(&format!("DROP DATABASE IF EXISTS {}", self.name)));
    }
}
