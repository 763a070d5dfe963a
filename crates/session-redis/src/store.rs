//! The Redis store.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, SingleNodeRoutingInfo,
};
use redis::{RedisError, Value};
use session_core::clock::millis_since_epoch;
use session_core::{
    Imported, IssuedSession, NewUserSession, PoolState, Result, ScanCursor, ScanPage, SessionError,
    SessionHandle, SessionPolicy, SessionToken, StorageDump, SuspectConnections, Updated,
    UserSession, UserSessionStore,
};
use sha2::{Digest, Sha256};

use crate::codec::{
    FIELDS, Row, bytes, decode_session, flag, push_all_fields, push_editable_fields,
    updated_session,
};
use crate::config::{Layout, RedisConfig, Topology};
use crate::error::{BACKEND, decode, from_pool, from_redis};
use crate::near_cache::{self, NearCache, NearCacheStats, Tracked};
use crate::pool::{
    AbortOnDrop, ClusterHealth, Conn, ConnectFailures, Manager, MasterWatch, Shared,
    breaks_connection,
};
use crate::scripts;

/// Characters of a user's routing tag: 24 bits of SHA-256 of the user id, spread over all 16,384
/// Cluster slots.
const TAG_LEN: usize = 4;

/// Where connections come from.
#[derive(Clone)]
enum Source {
    /// A bb8 pool of multiplexed connections to one node (directly or through Sentinel).
    Pool(bb8::Pool<Manager>),
    /// The cluster client: one multiplexed connection per node, shared by every operation.
    Cluster(std::sync::Arc<ClusterSource>),
}

/// The cluster client and its connection, opened at the first operation.
struct ClusterSource {
    client: redis::cluster::ClusterClient,
    /// The connection in use; once it has stalled, the next checkout puts a new one in its place.
    link: std::sync::Mutex<std::sync::Arc<ClusterLink>>,
    /// Connections replaced because they stalled.
    replaced: AtomicU64,
    /// The `broken` flag handed with every operation's connection; nothing reads it, since the
    /// cluster connection replaces a failed node's connection itself.
    unused_flag: std::sync::Arc<AtomicBool>,
}

/// One cluster connection, opened by the first checkout that needs it, and its health.
struct ClusterLink {
    connection: tokio::sync::OnceCell<redis::cluster_async::ClusterConnection>,
    health: std::sync::Arc<ClusterHealth>,
}

impl ClusterLink {
    fn new(stall_after: Duration) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            connection: tokio::sync::OnceCell::new(),
            health: std::sync::Arc::new(ClusterHealth::new(stall_after)),
        })
    }
}

impl ClusterSource {
    /// The connection to use: the current one, or a new one in place of a stalled one (its
    /// operations still running keep it until they end).
    fn link(&self) -> std::sync::Arc<ClusterLink> {
        let mut link = self.current();
        if link.health.stalled() {
            let stall_after = link.health.stall_after();
            tracing::warn!(
                backend = BACKEND,
                ?stall_after,
                "the Redis Cluster connection answered no command for the stall time while every command timed out; opening a new one"
            );
            *link = ClusterLink::new(stall_after);
            self.replaced.fetch_add(1, Ordering::Relaxed);
        }
        link.clone()
    }

    fn current(&self) -> std::sync::MutexGuard<'_, std::sync::Arc<ClusterLink>> {
        self.link
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A [`UserSessionStore`] on Redis: one node or a Sentinel-watched master through a bb8 pool of
/// bb8-redis multiplexed connections, or a Redis Cluster through the `redis` crate's cluster
/// client; [`RedisConfig::url`] chooses.
///
/// Every operation is one round trip: a single command (`HMGET` for `get`) or one `EVALSHA` of a
/// script loaded once (reloaded on `NOSCRIPT`). Expiry is native (`PEXPIREAT` at the policy's idle
/// expiry) and also checked against the policy clock on every read. See docs/backends.md.
pub struct RedisStore {
    /// `None` once closed. Checkouts take a clone (an `Arc` inside), so closing drops only this
    /// handle: idle connections close at once, busy ones when their operations return them.
    pool: RwLock<Option<Source>>,
    config: RedisConfig,
    policy: SessionPolicy,
    /// Checkouts still to be pinged because a connection was recently found broken.
    suspect: SuspectConnections,
    connect_failures: std::sync::Arc<ConnectFailures>,
    /// Whether scripts must be given every key they touch (on a Cluster, where a slot can be half
    /// way to another node; ADR 0019). Elsewhere they find the user's index and other sessions'
    /// keys themselves, saving a round trip.
    declare_all_keys: bool,
    /// Through Sentinel: which connections lead to a master since replaced.
    master_watch: Option<std::sync::Arc<MasterWatch>>,
    /// The near cache, when configured.
    near: Option<Near>,
}

/// The near cache and the task that feeds it invalidations (ADR 0021).
struct Near {
    cache: std::sync::Arc<NearCache>,
    started: AtomicBool,
    /// What to track, until the task starts: at the first operation, when a runtime is certain.
    tracked: std::sync::Mutex<Option<Tracked>>,
    task: std::sync::Mutex<Option<AbortOnDrop>>,
    prefix: String,
    timeout: std::time::Duration,
}

impl Near {
    fn new(config: &RedisConfig, tracked: Tracked) -> Option<Self> {
        let settings = config.near_cache?;
        Some(Self {
            cache: std::sync::Arc::new(NearCache::new(settings)),
            started: AtomicBool::new(false),
            tracked: std::sync::Mutex::new(Some(tracked)),
            task: std::sync::Mutex::new(None),
            prefix: config.key_prefix.clone(),
            timeout: config.checkout_timeout,
        })
    }

    /// The cache, its tracking started if it was not yet.
    fn cache(&self) -> &NearCache {
        if !self.started.load(Ordering::Acquire) {
            let mut task = self
                .task
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let tracked = self
                .tracked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(tracked) = tracked {
                let feeding = near_cache::track(
                    self.cache.clone(),
                    tracked,
                    self.prefix.clone(),
                    self.timeout,
                );
                *task = Some(AbortOnDrop(tokio::spawn(feeding).abort_handle()));
            }
            self.started.store(true, Ordering::Release);
        }
        &self.cache
    }

    /// Stops the tracking for good (the store is closing): nothing is served from memory any
    /// more, and no later call starts it again.
    fn stop(&self) {
        self.started.store(true, Ordering::Release);
        self.tracked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        self.task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        self.cache.close();
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("config", &self.config)
            .field("policy", &self.policy)
            .field("pool", &self.pool_state())
            .finish_non_exhaustive()
    }
}

/// Where a session lives: its key, the user's key base (`<prefix>{tag}:`, empty in the compatible
/// layout), its index member and the user's routing tag (empty in the compatible layout).
///
/// A session this store issued has a handle tagged with its user's tag: the member is the hash.
/// A session imported under a handle without that tag (issued by another backend) lives under
/// its user's tag all the same, in the user's slot, with the member `.` and the whole handle; an
/// alias key in the handle's own slot names the user's tag (ADR 0025).
struct Location {
    key: String,
    base: String,
    member: String,
    tag: String,
}

/// Runs `$op` (an expression using the connection `$conn`) on a clone of a pooled multiplexed
/// connection and converts its error. The checkout ends before the operation starts, so concurrent
/// operations pipeline over the pool's connections instead of queueing for exclusive use. A
/// connection that breaks is discarded; retrying is the [`session_core::Retrying`] layer's.
/// A macro rather than a function taking an async closure: such closures' futures cannot yet be
/// proven `Send` for every borrow, which `async_trait` requires.
macro_rules! run {
    ($store:expr, $handle:expr, |$conn:ident| $op:expr) => {{
        let store = $store;
        let mut shared = store.checkout().await?;
        let $conn = &mut shared.inner;
        match $op {
            Ok(value) => Ok(value),
            Err(err) => Err(store.fail(&shared, err, $handle)),
        }
    }};
}

impl RedisStore {
    /// Validates `config` and `policy`, builds the pool and checks that Redis answers.
    ///
    /// # Errors
    /// [`SessionError::Config`] for invalid settings; [`SessionError::Unavailable`] or
    /// [`SessionError::Timeout`] if Redis cannot be reached within the checkout timeout.
    pub async fn connect(config: RedisConfig, policy: SessionPolicy) -> Result<Self> {
        let store = Self::new_lazy(config, policy)?;
        store.health().await?;
        Ok(store)
    }

    /// Like [`RedisStore::connect`], but does not contact Redis until the first operation.
    ///
    /// # Errors
    /// [`SessionError::Config`] for invalid settings.
    pub fn new_lazy(config: RedisConfig, policy: SessionPolicy) -> Result<Self> {
        let topology = config.validate()?;
        policy.validate()?;
        if config.layout == Layout::Compatible && policy.max_sessions_per_user.is_some() {
            return Err(SessionError::config(
                "max_sessions_per_user",
                "needs the per-user index of the standard Redis layout; unset it or use layout = standard",
            ));
        }
        let connect_failures = std::sync::Arc::new(ConnectFailures::default());
        let url_error = |e: RedisError| SessionError::config("url", e.to_string());
        let mut master_watch = None;
        let (manager, tracked) = match topology {
            Topology::Node(info) => (
                Manager::direct(
                    info.clone(),
                    config.response_timeout,
                    connect_failures.clone(),
                ),
                Tracked::Node(info),
            ),
            Topology::Sentinel {
                sentinels,
                master_name,
                node,
            } => {
                let (manager, watch, lookup) = Manager::sentinel(
                    sentinels,
                    master_name,
                    node,
                    config.response_timeout,
                    config.checkout_timeout,
                    connect_failures.clone(),
                );
                let tracked = Tracked::Sentinel {
                    lookup,
                    watch: watch.clone(),
                };
                master_watch = Some(watch);
                (Ok(manager), tracked)
            }
            Topology::Cluster { seeds } => {
                let settings = seeds
                    .first()
                    .map(|seed| seed.redis_settings().clone())
                    .unwrap_or_default();
                // The client connects to every seed and waits for the slowest: a seed that drops
                // packets must give up well within the checkout's own time-out, or no checkout
                // could ever succeed while it is listed.
                let client = redis::cluster::ClusterClientBuilder::new(seeds)
                    .connection_timeout(config.checkout_timeout / 2)
                    .response_timeout(config.response_timeout)
                    // The client's first wait before a retry (of `TRYAGAIN` mid-migration, of a
                    // node that went away) is 1.28 s by default, past the default response
                    // time-out, which bounds the request with its retries: no retry would ever
                    // run. Waits from 10 ms, doubling, fit several into it.
                    .min_retry_wait(CLUSTER_MIN_RETRY_WAIT_MS)
                    .build()
                    .map_err(url_error)?;
                let near = Near::new(
                    &config,
                    Tracked::Cluster {
                        client: Box::new(client.clone()),
                        settings,
                    },
                );
                let source = ClusterSource {
                    client,
                    link: std::sync::Mutex::new(ClusterLink::new(cluster_stall_after(&config))),
                    replaced: AtomicU64::new(0),
                    unused_flag: std::sync::Arc::default(),
                };
                return Ok(Self {
                    pool: RwLock::new(Some(Source::Cluster(std::sync::Arc::new(source)))),
                    config,
                    policy,
                    suspect: SuspectConnections::new(),
                    connect_failures,
                    declare_all_keys: true,
                    master_watch: None,
                    near,
                });
            }
        };
        let manager = manager.map_err(url_error)?;
        let near = Near::new(&config, tracked);
        let pool = bb8::Pool::builder()
            .max_size(config.pool_max_size)
            .min_idle(config.pool_min_idle)
            .connection_timeout(config.checkout_timeout)
            .test_on_check_out(config.test_on_checkout)
            // A refused connection is reported at once as `Unavailable` instead of being retried
            // until the checkout timeout.
            .retry_connection(false)
            .build_unchecked(manager);
        Ok(Self {
            pool: RwLock::new(Some(Source::Pool(pool))),
            config,
            policy,
            suspect: SuspectConnections::new(),
            connect_failures,
            declare_all_keys: false,
            master_watch,
            near,
        })
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The pool's state now.
    #[must_use]
    pub fn pool_state(&self) -> PoolState {
        let mut out = PoolState::default();
        let pool = match self.pool() {
            Ok(Source::Pool(pool)) => pool,
            Ok(Source::Cluster(cluster)) => {
                out.connections = u32::from(cluster.current().connection.initialized());
                out.broken_closed = cluster.replaced.load(Ordering::Relaxed);
                return out;
            }
            Err(_) => return out,
        };
        let state = pool.state();
        out.connections = state.connections;
        out.idle = state.idle_connections;
        out.max_size = self.config.pool_max_size;
        out.waited = state.statistics.get_waited;
        out.timed_out = state.statistics.get_timed_out;
        out.broken_closed = state.statistics.connections_closed_broken;
        out
    }

    /// The routing tag of a user's keys.
    fn user_tag(user_id: &str) -> String {
        let digest = Sha256::digest(user_id.as_bytes());
        let mut tag = URL_SAFE_NO_PAD.encode(&digest[..3]);
        tag.truncate(TAG_LEN);
        tag
    }

    fn base(&self, tag: &str) -> String {
        format!("{}{{{tag}}}:", self.config.key_prefix)
    }

    fn index_key(&self, user_id: &str) -> (String, String) {
        let base = self.base(&Self::user_tag(user_id));
        (index_at(&base, user_id), base)
    }

    /// The location of a session under a handle tagged by this store, or `None` if the handle
    /// has no tag of this store's shape.
    fn locate_native(&self, handle: &SessionHandle) -> Option<Location> {
        let tag = handle.routing_tag().filter(|t| t.len() == TAG_LEN)?;
        Some(self.located(tag, handle.hash().to_owned()))
    }

    /// The location of member `member` under the user's tag `tag`.
    fn located(&self, tag: &str, member: String) -> Location {
        let base = self.base(tag);
        Location {
            key: format!("{base}s:{member}"),
            base,
            member,
            tag: tag.to_owned(),
        }
    }

    /// The location of an imported session whose handle does not carry its user's tag.
    fn located_alias(&self, user_tag: &str, handle: &SessionHandle) -> Location {
        self.located(user_tag, format!(".{}", handle.as_str()))
    }

    /// The alias key of a handle without this store's tag: in the slot of the handle's hash, so
    /// a lookup needs nothing but the handle; its value is the user's tag.
    fn alias_key(&self, handle: &SessionHandle) -> String {
        self.handle_slot_key("a", handle)
    }

    /// Key `kind` of `handle` in the slot of the handle's hash.
    fn handle_slot_key(&self, kind: &str, handle: &SessionHandle) -> String {
        let hash = handle.hash();
        format!(
            "{}{{{}}}:{kind}:{}",
            self.config.key_prefix,
            &hash[..TAG_LEN.min(hash.len())],
            handle.as_str()
        )
    }

    /// The key of the tombstone beside the session at `location` (ADR 0029).
    fn tombstone_key(location: &Location) -> String {
        format!("{}t:{}", location.base, location.member)
    }

    /// The tombstone of a handle without this store's tag, beside its alias.
    fn alias_tombstone_key(&self, handle: &SessionHandle) -> String {
        self.handle_slot_key("t", handle)
    }

    /// The location of the session a handle names in the standard layout, or `None` if no
    /// session of this store has that handle. A handle without this store's tag costs one `GET`
    /// of its alias.
    async fn locate_handle(&self, handle: &SessionHandle) -> Result<Option<Location>> {
        if let Some(location) = self.locate_native(handle) {
            return Ok(Some(location));
        }
        let alias = self.alias_key(handle);
        let tag: Option<String> = run!(self, Some(handle), |conn| redis::cmd("GET")
            .arg(&alias)
            .query_async(conn)
            .await)?;
        Ok(tag
            .filter(|tag| tag.len() == TAG_LEN)
            .map(|tag| self.located_alias(&tag, handle)))
    }

    async fn locate(&self, token: &SessionToken) -> Result<Option<Location>> {
        match self.config.layout {
            Layout::Standard => self.locate_handle(token.handle()).await,
            Layout::Compatible => Ok(Some(Self::compatible_location(token))),
        }
    }

    /// The location of a token this store has just generated.
    fn locate_new(&self, token: &SessionToken) -> Result<Location> {
        match self.config.layout {
            Layout::Standard => self
                .locate_native(token.handle())
                .ok_or_else(|| decode(token.handle(), "issued token has no location")),
            Layout::Compatible => Ok(Self::compatible_location(token)),
        }
    }

    /// In the compatible layout a session's key is its raw token.
    fn compatible_location(token: &SessionToken) -> Location {
        Location {
            key: token.expose_secret().to_owned(),
            base: String::new(),
            member: String::new(),
            tag: String::new(),
        }
    }

    fn unsupported_in_compat(&self, operation: &'static str) -> Result<()> {
        if self.config.layout == Layout::Compatible {
            return Err(SessionError::Unsupported {
                backend: BACKEND,
                operation,
                reason: "the compatible layout keeps no per-user index and keys sessions by their raw id",
            });
        }
        Ok(())
    }

    /// The connection source, or `Closed`.
    fn pool(&self) -> Result<Source> {
        self.pool
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(SessionError::Closed { backend: BACKEND })
    }

    /// A connection for one operation: a clone of a pooled multiplexed connection (the checkout
    /// ends at once), or of the cluster connection.
    async fn checkout(&self) -> Result<Shared> {
        let pool = match self.pool()? {
            Source::Pool(pool) => pool,
            Source::Cluster(cluster) => {
                let link = cluster.link();
                let connection = match link.connection.get() {
                    Some(connection) => connection.clone(),
                    None => self.connect_cluster(&cluster, &link).await?,
                };
                return Ok(Shared {
                    inner: Conn::Cluster(connection, link.health.clone()),
                    broken: cluster.unused_flag.clone(),
                });
            }
        };
        let mut attempts = 0;
        loop {
            let connect_failed = self.connect_failures.notify.notified();
            tokio::pin!(connect_failed);
            connect_failed.as_mut().enable();
            let mut conn = tokio::select! {
                biased;
                got = pool.get() => got.map_err(|e| from_pool(e, self.config.checkout_timeout, self.config.response_timeout))?,
                () = connect_failed => {
                    let err = self.connect_failures.last().unwrap_or_else(|| (redis::ErrorKind::Io, "connect failed").into());
                    return Err(SessionError::Unavailable { backend: BACKEND, source: Box::new(err) });
                }
            };
            if let Some(watch) = &self.master_watch
                && conn.generation != watch.generation()
            {
                // Opened before the Sentinels named a new master: it may lead to the old one.
                conn.broken.store(true, Ordering::Relaxed);
                drop(conn);
                continue;
            }
            if self.config.test_on_checkout || !self.suspect.take() {
                return Ok(conn.share());
            }
            let ping: std::result::Result<(), RedisError> =
                redis::cmd("PING").query_async(&mut conn.inner).await;
            match ping {
                Ok(()) => return Ok(conn.share()),
                Err(err) => {
                    conn.broken.store(true, Ordering::Relaxed);
                    drop(conn);
                    attempts += 1;
                    if attempts > self.config.pool_max_size {
                        return Err(from_redis(err, None, self.config.response_timeout));
                    }
                }
            }
        }
    }

    /// Opens the cluster connection, or joins the opening under way. The opening runs in a task of
    /// its own to its end: the client connects to the seeds, then to every node the slot map
    /// names, each within its connect time-out, which together can outlast one checkout; a
    /// checkout that gives up leaves it running for the next instead of starting it over.
    async fn connect_cluster(
        &self,
        cluster: &std::sync::Arc<ClusterSource>,
        link: &std::sync::Arc<ClusterLink>,
    ) -> Result<redis::cluster_async::ClusterConnection> {
        let (source, link) = (cluster.clone(), link.clone());
        let opening = tokio::spawn(async move {
            link.connection
                .get_or_try_init(|| source.client.get_async_connection())
                .await
                .cloned()
        });
        let unavailable =
            |source: Box<dyn std::error::Error + Send + Sync>| SessionError::Unavailable {
                backend: BACKEND,
                source,
            };
        tokio::time::timeout(self.config.checkout_timeout, opening)
            .await
            .map_err(|_| SessionError::Timeout {
                backend: BACKEND,
                operation: "checkout",
                after: self.config.checkout_timeout,
            })?
            .map_err(|e| unavailable(Box::new(e)))?
            .map_err(|e| unavailable(Box::new(e)))
    }

    /// Every key matching `pattern`: SCAN on the one node, or on every master of a Cluster.
    async fn scan(&self, pattern: &str) -> Result<Vec<String>> {
        let mut shared = self.checkout().await?;
        let nodes = match &mut shared.inner {
            Conn::Node(_) => vec![None],
            Conn::Cluster(cluster, health) => health
                .observed(masters(cluster).await)
                .map_err(|e| from_redis(e, None, self.config.response_timeout))?
                .into_iter()
                .map(Some)
                .collect(),
        };
        let mut keys = Vec::new();
        for node in nodes {
            let mut cursor = 0u64;
            loop {
                let (next, batch) = scan_page(
                    &mut shared.inner,
                    node.as_ref(),
                    cursor,
                    pattern,
                    SCAN_COUNT_MAX,
                )
                .await
                .map_err(|e| self.fail(&shared, e, None))?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(keys)
    }

    /// Converts a command error, discarding the connection if the error broke it.
    fn fail(&self, conn: &Shared, err: RedisError, handle: Option<&SessionHandle>) -> SessionError {
        if breaks_connection(&err) {
            conn.broken.store(true, Ordering::Relaxed);
            self.suspect.raise(self.config.pool_max_size);
        }
        // A redirection on a one-node connection means the URL names a Cluster node: the
        // configuration is wrong, which no retry mends (on a Cluster it is a slot in motion).
        if matches!(conn.inner, Conn::Node(_)) && matches!(err.code(), Some("MOVED" | "ASK")) {
            return SessionError::Backend {
                backend: BACKEND,
                source: Box::new(RedisError::from((
                    redis::ErrorKind::Client,
                    "Redis answered with a Cluster redirection: use a redis+cluster:// URL",
                    err.to_string(),
                ))),
            };
        }
        from_redis(err, handle, self.config.response_timeout)
    }

    async fn invoke(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        handle: Option<&SessionHandle>,
    ) -> Result<Value> {
        run!(self, handle, |conn| invocation
            .invoke_async::<Value>(conn)
            .await)
    }

    /// Decodes a `{row, PTTL}` script reply (or nil) and applies the policy's expiry.
    fn session_reply(&self, handle: &SessionHandle, reply: Value) -> Result<Option<UserSession>> {
        match reply {
            Value::Nil => Ok(None),
            Value::Array(parts) if parts.len() == 2 => {
                let mut parts = parts.into_iter();
                let row = parts.next().unwrap_or(Value::Nil);
                let pttl = match parts.next() {
                    Some(Value::Int(ms)) => Some(ms),
                    _ => None,
                };
                self.live(handle, row, pttl)
            }
            other => Err(decode(handle, format!("unexpected script reply {other:?}"))),
        }
    }

    /// Decodes a row (see [`Row`]) and applies the policy's expiry: `None` if absent or expired.
    /// `HMGET` of a session's fields (the row `Row::from_reply` reads).
    async fn read_row(conn: &mut Conn, key: &str) -> redis::RedisResult<Value> {
        redis::cmd("HMGET")
            .arg(key)
            .arg(&FIELDS[..])
            .query_async::<Value>(conn)
            .await
    }

    fn live(
        &self,
        handle: &SessionHandle,
        row: Value,
        pttl: Option<i64>,
    ) -> Result<Option<UserSession>> {
        let Some(row) = Row::from_reply(handle, row)? else {
            return Ok(None);
        };
        let now = self.policy.now();
        let session = decode_session(handle, row, pttl, now, &self.policy, self.config.layout)?;
        Ok((!self.policy.is_expired(&session, now)).then_some(session))
    }

    /// Deletes the session at `location`; true if it was live.
    async fn delete_at(&self, location: &Location, handle: &SessionHandle) -> Result<bool> {
        self.end_at(location, handle, 0).await
    }

    /// Deletes the session at `location` and, unless `until` is 0, leaves its tombstone until
    /// then (epoch ms), in one script; true if it was live.
    async fn end_at(
        &self,
        location: &Location,
        handle: &SessionHandle,
        until: u64,
    ) -> Result<bool> {
        let now = self.now_ms();
        let tombstone = Self::tombstone_key(location);
        let reply = self
            .invoke_naming_index(&location.base, handle, |index| {
                let mut invocation = scripts::DELETE.prepare_invoke();
                invocation.key(&location.key).key(&tombstone);
                if let Some(index) = index {
                    invocation.key(index);
                }
                invocation
                    .arg(now)
                    .arg(&location.base)
                    .arg(&location.member)
                    .arg(flag(self.declare_all_keys))
                    .arg(until);
                invocation
            })
            .await;
        self.forget(&location.key);
        Ok(matches!(reply?, Value::Int(1)))
    }

    /// Invokes a script that may answer `{'index', user_id}` (see `scripts`): on a Cluster it
    /// must be told the user's index, found from the session it reads, so it is called again with
    /// the index declared. `build` makes the invocation, given the index key to declare.
    async fn invoke_naming_index(
        &self,
        base: &str,
        handle: &SessionHandle,
        build: impl Fn(Option<&str>) -> redis::ScriptInvocation<'static> + Send + Sync,
    ) -> Result<Value> {
        let mut index = None;
        // A session's user never changes, so a second request means a corrupt row.
        for _ in 0..2 {
            let reply = self.invoke(&build(index.as_deref()), Some(handle)).await?;
            match index_request(&reply) {
                Some(user_id) => index = Some(index_at(base, user_id)),
                None => return Ok(reply),
            }
        }
        Err(decode(
            handle,
            "the script asked twice for the user's index",
        ))
    }

    /// The members of `index` to name to a script: all of them, or (`due_by`) up to `limit` of
    /// those scored at or before that time, in epoch ms.
    async fn read_members(
        &self,
        index: &str,
        due_by: Option<u64>,
        limit: usize,
    ) -> Result<Vec<String>> {
        run!(self, None, |conn| match due_by {
            None =>
                redis::cmd("ZRANGE")
                    .arg(index)
                    .arg(0)
                    .arg(-1)
                    .query_async(conn)
                    .await,
            Some(now) =>
                redis::cmd("ZRANGEBYSCORE")
                    .arg(index)
                    .arg("-inf")
                    .arg(now)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(conn)
                    .await,
        })
    }

    fn now_ms(&self) -> u64 {
        millis_since_epoch(self.policy.now())
    }

    /// A cached session as a read answers it: `None` once expired by the policy's clock (and
    /// forgotten), as a read from Redis would.
    fn unexpired(&self, cache: &NearCache, key: &str, cached: UserSession) -> Option<UserSession> {
        if self.policy.is_expired(&cached, self.policy.now()) {
            cache.forget(key);
            return None;
        }
        Some(cached)
    }

    /// Drops `key` from this instance's near cache, if any (after a write of this instance).
    fn forget(&self, key: &str) {
        if let Some(near) = &self.near {
            near.cache.forget(key);
        }
    }

    /// Reads the sessions at `keys` (session keys a SCAN found, on one node) in one pipeline and
    /// appends the live ones to `out`.
    async fn read_scanned(
        &self,
        shared: &mut Shared,
        keys: &[String],
        out: &mut Vec<UserSession>,
    ) -> Result<()> {
        let rows: redis::RedisResult<Vec<Value>> = match &shared.inner {
            // A Cluster pipeline must stay in one slot: one read per key, all at once.
            Conn::Cluster(..) => {
                futures_util::future::try_join_all(keys.iter().map(|key| {
                    let mut cluster = shared.inner.clone();
                    async move {
                        redis::cmd("HMGET")
                            .arg(key)
                            .arg(&FIELDS[..])
                            .query_async::<Value>(&mut cluster)
                            .await
                    }
                }))
                .await
            }
            Conn::Node(_) => {
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.cmd("HMGET").arg(key).arg(&FIELDS[..]);
                }
                pipe.query_async(&mut shared.inner).await
            }
        };
        let rows = rows.map_err(|e| self.fail(shared, e, None))?;
        for (key, row) in keys.iter().zip(rows) {
            let Some(handle) = handle_of_key(key) else {
                continue;
            };
            if let Some(session) = self.live(&handle, row, None)? {
                out.push(session);
            }
        }
        Ok(())
    }

    /// The near cache's counters, or `None` when it is off.
    #[must_use]
    pub fn near_cache_stats(&self) -> Option<NearCacheStats> {
        self.near.as_ref().map(|near| near.cache.stats())
    }
}

/// The bytes of a reply's strings (a row's stored fields), for the near cache's bound.
fn reply_bytes(reply: &Value) -> usize {
    match reply {
        Value::BulkString(b) => b.len(),
        Value::Array(items) => items.iter().map(reply_bytes).sum(),
        _ => 8,
    }
}

/// The handle of the session at index member `member` under the user's tag `tag`: the tag and
/// the hash, or for an imported session without the tag (a member starting with `.`), the
/// handle after the dot.
fn handle_of_member(tag: &str, member: &str) -> Option<SessionHandle> {
    match member.strip_prefix('.') {
        Some(handle) => SessionHandle::parse(handle).ok(),
        None => SessionHandle::parse(&format!("{tag}.{member}")).ok(),
    }
}

/// The index member of `handle` among the sessions of the user whose tag is `tag`.
fn member_of(handle: &SessionHandle, tag: &str) -> String {
    if handle.routing_tag() == Some(tag) {
        handle.hash().to_owned()
    } else {
        format!(".{}", handle.as_str())
    }
}

/// The handle of the session stored at a session key (`<prefix>{tag}:s:<member>`), if it is one.
fn handle_of_key(key: &str) -> Option<SessionHandle> {
    let close = key.rfind("}:s:")?;
    let open = key[..close].rfind('{')?;
    handle_of_member(&key[open + 1..close], &key[close + 4..])
}

/// The user's index key under a key base (`<prefix>{tag}:`), in the base's slot.
fn index_at(base: &str, user_id: &str) -> String {
    format!("{base}u:{user_id}")
}

/// The user id of a script's `{'index', user_id}` reply: the script needs the user's index
/// declared.
fn index_request(reply: &Value) -> Option<&str> {
    let Value::Array(parts) = reply else {
        return None;
    };
    match parts.as_slice() {
        [tag, user_id] if bytes(tag) == Some(b"index") => {
            bytes(user_id).and_then(|u| std::str::from_utf8(u).ok())
        }
        _ => None,
    }
}

/// Whether a create samples its user's index for trimming: about one in 21 (the first character
/// of a base64url hash, modulo 16), the same choice the `CREATE` script makes on one node.
fn samples_index(member: &str) -> bool {
    member.as_bytes().first().is_some_and(|b| b % 16 == 0)
}

/// The cluster client's shortest wait before retrying a request, in ms.
const CLUSTER_MIN_RETRY_WAIT_MS: u64 = 10;

/// How long a cluster connection may time out every command, answering none, after a first
/// time-out before it is replaced. Longer than a healthy client holds every request: a slot
/// refresh that finds a node silent waits for its `PING` (a response time-out), reconnects to it
/// (the connect time-out, half the checkout time-out), and may first have asked it for the slots
/// (another response time-out). A node that is down or slow times out only its own slots'
/// commands otherwise, so neither trips it (ADR 0032).
fn cluster_stall_after(config: &RedisConfig) -> Duration {
    config.response_timeout * 2 + config.checkout_timeout
}

/// How many due members a sampled trim looks at.
const TRIM_SAMPLE: usize = 32;

/// How many times a create under a cap on a Cluster reads the members before giving up.
const CREATE_ATTEMPTS: u64 = 32;

/// The largest `COUNT` hint of the SCAN calls of `scan` (a page asks for about its limit, within
/// this): a page cut inside a batch keeps the batch's unread keys in its cursor, so a batch
/// bounds the cursor's size.
const SCAN_COUNT_PAGE: usize = 250;

/// The smallest `COUNT` hint of `scan`: below it a SCAN call's round trip outweighs its keys.
const SCAN_COUNT_MIN: usize = 10;

/// The `COUNT` hint of every other SCAN.
const SCAN_COUNT_MAX: usize = 1000;

/// How many SCAN calls one page of `scan` makes at most before it ends short (a long stretch of
/// other keys or expired sessions), so that each call returns in bounded time.
const SCAN_CALLS_PER_PAGE: usize = 64;

/// The version of the `scan` cursor's format.
const CURSOR_PREFIX: &str = "r2:";

/// Where a walk of `scan` stands: the node (its address among the Cluster's masters, sorted by
/// address; `-` on one node), the SCAN cursor to ask it next, and the keys of the last batch
/// that page did not reach, read before asking. Re-asking a SCAN cursor is not repeatable (a
/// rehash between two calls gives another batch), so a page never asks the same cursor twice: it
/// keeps what the batch had.
#[derive(Clone, Debug, Default)]
struct WalkPosition {
    node: usize,
    cursor: u64,
    unread: Vec<String>,
}

impl WalkPosition {
    /// Parses `r2:<n|c>|<node>|<cursor>|<unread>`: `n` on one node and `c` on a Cluster; `node`
    /// a master's `host:port`, `-` on one node, or `end` after the last; `unread` keys without
    /// the store's prefix, comma separated. A master no longer among `nodes` (a fail-over since
    /// the page) starts the walk again from the first: sessions may repeat, none is skipped for it.
    fn parse(
        cursor: &ScanCursor,
        cluster: bool,
        nodes: &[Option<(String, u16)>],
        prefix: &str,
    ) -> Result<Self> {
        let bad = || session_core::bad_scan_cursor(cursor);
        let rest = cursor
            .as_str()
            .strip_prefix(CURSOR_PREFIX)
            .ok_or_else(bad)?;
        let mut parts = rest.split('|');
        let (Some(mode), Some(node), Some(scan), Some(unread), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        if mode != if cluster { "c" } else { "n" } {
            return Err(bad());
        }
        let scan: u64 = scan.parse().map_err(|_| bad())?;
        let unread: Vec<String> = if unread.is_empty() {
            Vec::new()
        } else {
            unread
                .split(',')
                .map(|key| {
                    handle_of_key(key)
                        .map(|_| format!("{prefix}{key}"))
                        .ok_or_else(bad)
                })
                .collect::<Result<_>>()?
        };
        let node = match node {
            "end" => nodes.len(),
            "-" if !cluster => 0,
            address if cluster => {
                let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
                let port: u16 = port.parse().map_err(|_| bad())?;
                match nodes
                    .iter()
                    .position(|n| n.as_ref().is_some_and(|(h, p)| h == host && *p == port))
                {
                    Some(index) => index,
                    None => {
                        return Ok(Self {
                            unread,
                            ..Self::default()
                        });
                    }
                }
            }
            _ => return Err(bad()),
        };
        Ok(Self {
            node,
            cursor: scan,
            unread,
        })
    }

    /// The position after a SCAN call answered `next` with the batch's keys not yet read: the
    /// next batch, or the next node.
    fn advanced(&self, next: u64, unread: Vec<String>) -> Self {
        if next == 0 {
            Self {
                node: self.node + 1,
                cursor: 0,
                unread,
            }
        } else {
            Self {
                node: self.node,
                cursor: next,
                unread,
            }
        }
    }

    /// The cursor resuming here, or `None` past the last of `nodes` with nothing unread; keys are
    /// kept without `prefix` (the store's own).
    fn to_cursor(&self, nodes: &[Option<(String, u16)>], prefix: &str) -> Option<ScanCursor> {
        let cluster = nodes.iter().any(Option::is_some);
        let node = match nodes.get(self.node) {
            Some(Some((host, port))) => format!("{host}:{port}"),
            Some(None) => "-".to_owned(),
            None if self.unread.is_empty() => return None,
            None => "end".to_owned(),
        };
        let unread: Vec<&str> = self
            .unread
            .iter()
            .map(|key| key.strip_prefix(prefix).unwrap_or(key))
            .collect();
        Some(ScanCursor::new(format!(
            "{CURSOR_PREFIX}{}|{node}|{}|{}",
            if cluster { "c" } else { "n" },
            self.cursor,
            unread.join(",")
        )))
    }
}

/// `text` with Redis glob's special characters escaped, to match itself in a `MATCH` pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// How many due members `purge_expired` names to one script.
const PURGE_BATCH: usize = 256;

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl UserSessionStore for RedisStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn policy(&self) -> &SessionPolicy {
        &self.policy
    }

    async fn create(&self, new: NewUserSession) -> Result<IssuedSession> {
        let token = match self.config.layout {
            Layout::Standard => SessionToken::generate_tagged(Some(&Self::user_tag(&new.user_id)))?,
            Layout::Compatible => SessionToken::generate()?,
        };
        let session = new.into_session(&token, &self.policy)?;
        let location = self.locate_new(&token)?;
        let index =
            (self.config.layout == Layout::Standard).then(|| self.index_key(&session.user_id).0);
        let cap = self.policy.max_sessions_per_user.unwrap_or(0);
        let now = millis_since_epoch(session.created_at);
        // With a cap on a Cluster, sign-ins of the same user racing this one can make the script
        // ask to be named the members again; each pass, one of the racers gets through.
        for attempt in 0..CREATE_ATTEMPTS {
            if attempt > 0 {
                // Spread the racers out: by this create's hash, up to a millisecond per attempt.
                let spread = u64::from(location.member.as_bytes()[1]) * 1000 / 128;
                tokio::time::sleep(std::time::Duration::from_micros(spread * attempt)).await;
            }
            // On a Cluster the script is named the members it looks at, read first: all of them
            // for the cap, the due ones for a sampled trim.
            let named = match &index {
                Some(index) if self.declare_all_keys => {
                    if cap > 0 {
                        Some(self.read_members(index, None, 0).await?)
                    } else if samples_index(&location.member) {
                        Some(self.read_members(index, Some(now), TRIM_SAMPLE).await?)
                    } else {
                        Some(Vec::new())
                    }
                }
                _ => None,
            };
            let mut invocation = scripts::CREATE.prepare_invoke();
            invocation.key(&location.key);
            if let Some(index) = &index {
                invocation.key(index);
            }
            invocation
                .arg(now)
                .arg(&location.member)
                .arg(millis_since_epoch(session.idle_expires_at))
                .arg(millis_since_epoch(session.absolute_expires_at))
                .arg(cap)
                .arg(&location.base);
            match &named {
                Some(members) => {
                    invocation.arg(members.len());
                    for member in members {
                        invocation
                            .key(format!("{}s:{member}", location.base))
                            .arg(member);
                    }
                }
                None => {
                    invocation.arg(-1);
                }
            }
            push_all_fields(&mut invocation, &session)?;
            let reply = self.invoke(&invocation, Some(&session.handle)).await?;
            if bytes(&reply) != Some(b"retry") {
                return Ok(IssuedSession { token, session });
            }
        }
        Err(SessionError::Unavailable {
            backend: BACKEND,
            source: "the user's sessions kept changing during create; try again".into(),
        })
    }

    async fn get(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        let Some(location) = self.locate(token).await? else {
            return Ok(None);
        };
        let handle = token.handle();
        let layout = self.config.layout;
        let key = location.key.as_str();
        let near = self.near.as_ref().map(Near::cache);
        if let Some(cache) = near
            && let Some(cached) = cache.get_where(key, |_| true)
        {
            return Ok(self.unexpired(cache, key, cached));
        }
        // Begun before the read is sent: an invalidation from here on keeps its answer out.
        let ticket = near.and_then(|cache| cache.begin(key));
        let (row, pttl) = run!(self, Some(handle), |conn| match layout {
            Layout::Standard => Self::read_row(conn, key).await.map(|row| (row, None)),
            Layout::Compatible => redis::pipe()
                .cmd("HMGET")
                .arg(key)
                .arg(&FIELDS[..])
                .cmd("PTTL")
                .arg(key)
                .query_async::<(Value, i64)>(conn)
                .await
                .map(|(row, pttl)| (row, Some(pttl))),
        })?;
        let stored = reply_bytes(&row);
        let session = self.live(handle, row, pttl)?;
        if let (Some(cache), Some(ticket)) = (near, ticket) {
            cache.complete(key, ticket, session.as_ref().map(|s| (s, stored)));
        }
        Ok(session)
    }

    async fn touch(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        let Some(location) = self.locate(token).await? else {
            return Ok(None);
        };
        let policy = &self.policy;
        let key = location.key.as_str();
        let near = self.near.as_ref().map(Near::cache);
        if let Some(cache) = near
            && let Some(cached) = cache.get_where(key, |s| !policy.touch_due(s, policy.now()))
        {
            // Not due to write: what the script would answer, without the round trip.
            return Ok(self.unexpired(cache, key, cached));
        }
        let ticket = near.and_then(|cache| cache.begin(key));
        // Read first (ADR 0031): most touches are not due to write, and a plain `HMGET` costs the
        // server a fraction of the script. A due touch then runs the script, which reads again
        // and decides atomically. With an interval of 0 every touch is due: straight to the
        // script. The compatible layout's rows may need the script's first-sight writes.
        if self.config.layout == Layout::Standard && !policy.touch_interval.is_zero() {
            let handle = token.handle();
            let row = run!(self, Some(handle), |conn| Self::read_row(conn, key).await)?;
            let stored = reply_bytes(&row);
            let read = self.live(handle, row, None)?;
            let due = read
                .as_ref()
                .is_some_and(|session| policy.touch_due(session, policy.now()));
            if !due {
                if let (Some(cache), Some(ticket)) = (near, ticket) {
                    cache.complete(key, ticket, read.as_ref().map(|s| (s, stored)));
                }
                return Ok(read);
            }
        }
        let now = self.now_ms();
        let reply = self
            .invoke_naming_index(&location.base, token.handle(), |index| {
                let mut invocation = scripts::TOUCH.prepare_invoke();
                invocation.key(&location.key);
                if let Some(index) = index {
                    invocation.key(index);
                }
                invocation
                    .arg(now)
                    .arg(ms(policy.touch_interval))
                    .arg(ms(policy.idle_timeout))
                    .arg(ms(policy.remember_me_idle_timeout))
                    .arg(ms(policy.absolute_timeout))
                    .arg(&location.base)
                    .arg(&location.member)
                    .arg(flag(self.declare_all_keys));
                invocation
            })
            .await?;
        let stored = reply_bytes(&reply);
        let session = self.session_reply(token.handle(), reply)?;
        if let (Some(cache), Some(ticket)) = (near, ticket) {
            cache.complete(key, ticket, session.as_ref().map(|s| (s, stored)));
        }
        Ok(session)
    }

    async fn update(&self, session: &UserSession) -> Result<Updated> {
        self.unsupported_in_compat("update")?;
        session.validate(&self.policy)?;
        let location = self
            .locate_handle(&session.handle)
            .await?
            .ok_or(SessionError::NotFound)?;
        // The token the session moves to if this write changes `is_root` or `authenticated_at`
        // (the script decides,
        // atomically); the user's routing tag, so the new key is in the same slot.
        let new_token = SessionToken::generate_tagged(Some(&location.tag))?;
        let new = self.locate_new(&new_token)?;
        let mut invocation = scripts::UPDATE.prepare_invoke();
        invocation
            .key(&location.key)
            .key(&new.key)
            .key(index_at(&location.base, &session.user_id))
            .arg(self.now_ms())
            .arg(session.version)
            .arg(&session.user_id)
            .arg(&new.member)
            .arg(&location.member)
            .arg(flag(session.is_root))
            .arg(millis_since_epoch(session.authenticated_at));
        push_editable_fields(&mut invocation, session)?;
        let reply = self.invoke(&invocation, Some(&session.handle)).await;
        // This instance reads its own write at once; the others' caches hear from Redis.
        self.forget(&location.key);
        let reply = reply?;
        let handle = &session.handle;
        let Value::Array(parts) = &reply else {
            return Err(decode(handle, format!("unexpected update reply {reply:?}")));
        };
        match parts.first().and_then(bytes) {
            Some(b"ok") => updated_session(handle, session, &parts[1..]).map(Updated::kept),
            Some(b"rotated") => {
                let mut stored = updated_session(handle, session, &parts[1..])?;
                stored.handle = new_token.handle().clone();
                Ok(Updated::moved_to(stored, new_token))
            }
            Some(b"missing") => Err(SessionError::NotFound),
            Some(b"user") => Err(SessionError::invalid_input(
                "user_id",
                "cannot change; sign the other user in with a new session",
            )),
            Some(b"conflict") => {
                let actual = parts
                    .get(1)
                    .and_then(bytes)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| decode(handle, "conflict reply without a version"))?;
                Err(SessionError::Conflict {
                    expected: session.version,
                    actual,
                })
            }
            _ => Err(decode(handle, format!("unexpected update reply {reply:?}"))),
        }
    }

    async fn rotate(&self, token: &SessionToken) -> Result<Option<IssuedSession>> {
        let Some(old) = self.locate(token).await? else {
            return Ok(None);
        };
        // The user's routing tag: the new key stays in the user's slot, so RENAME is legal in a
        // Cluster (and an imported session's new token carries the tag: no alias needed).
        let new_token = match self.config.layout {
            Layout::Standard => SessionToken::generate_tagged(Some(&old.tag))?,
            Layout::Compatible => SessionToken::generate()?,
        };
        let new = self.locate_new(&new_token)?;
        let now = self.now_ms();
        let reply = self
            .invoke_naming_index(&old.base, token.handle(), |index| {
                let mut invocation = scripts::ROTATE.prepare_invoke();
                invocation.key(&old.key).key(&new.key);
                if let Some(index) = index {
                    invocation.key(index);
                }
                invocation
                    .arg(now)
                    .arg(&old.base)
                    .arg(&old.member)
                    .arg(&new.member)
                    .arg(flag(self.declare_all_keys));
                invocation
            })
            .await;
        self.forget(&old.key);
        let reply = reply?;
        Ok(self
            .session_reply(new_token.handle(), reply)?
            .map(|session| IssuedSession {
                token: new_token,
                session,
            }))
    }

    async fn delete(&self, token: &SessionToken) -> Result<bool> {
        match self.locate(token).await? {
            Some(location) => self.delete_at(&location, token.handle()).await,
            None => Ok(false),
        }
    }

    async fn delete_by_handle(&self, handle: &SessionHandle) -> Result<bool> {
        self.unsupported_in_compat("delete_by_handle")?;
        match self.locate_handle(handle).await? {
            Some(location) => self.delete_at(&location, handle).await,
            None => Ok(false),
        }
    }

    async fn delete_with_tombstone(
        &self,
        handle: &SessionHandle,
        until: SystemTime,
    ) -> Result<bool> {
        self.unsupported_in_compat("delete_with_tombstone")?;
        let until = millis_since_epoch(until);
        if let Some(location) = self.locate_native(handle) {
            return self.end_at(&location, handle, until).await;
        }
        // A handle without this store's tag: its tombstone goes beside its alias first, which an
        // import claims before it stores the session. An import that claimed it earlier is
        // found by the alias and ended under its user's tag; a later one is refused.
        let mut invocation = scripts::END_ALIAS.prepare_invoke();
        invocation
            .key(self.alias_key(handle))
            .key(self.alias_tombstone_key(handle))
            .arg(until);
        let tag: Option<String> = match self.invoke(&invocation, Some(handle)).await? {
            Value::Nil => None,
            other => bytes(&other).map(|b| String::from_utf8_lossy(b).into_owned()),
        };
        match tag.filter(|tag| tag.len() == TAG_LEN) {
            Some(tag) => {
                self.end_at(&self.located_alias(&tag, handle), handle, until)
                    .await
            }
            None => Ok(false),
        }
    }

    async fn list_by_user(&self, user_id: &str) -> Result<Vec<UserSession>> {
        self.unsupported_in_compat("list_by_user")?;
        let tag = Self::user_tag(user_id);
        let (index, base) = self.index_key(user_id);
        let mut reply = None;
        // On a Cluster, two steps, so that the script declares every key it reads: the members
        // (all of them: a score is only a hint), then their sessions, the script checking that
        // the members are still those. On one node, one script reads both.
        for _ in 0..8 {
            let named = if self.declare_all_keys {
                Some(self.read_members(&index, None, 0).await?)
            } else {
                None
            };
            let mut invocation = scripts::LIST.prepare_invoke();
            invocation.key(&index).arg(&base);
            match &named {
                Some(members) => {
                    invocation.arg(members.len());
                    for member in members {
                        invocation.key(format!("{base}s:{member}")).arg(member);
                    }
                }
                None => {
                    invocation.arg(-1);
                }
            }
            let answer = self.invoke(&invocation, None).await?;
            if bytes(&answer) != Some(b"retry") {
                reply = Some(answer);
                break;
            }
        }
        let Some(reply) = reply else {
            return Err(SessionError::Unavailable {
                backend: BACKEND,
                source: "the user's sessions kept changing during list_by_user; try again".into(),
            });
        };
        let Value::Array(items) = reply else {
            return Err(SessionError::Decode {
                backend: BACKEND,
                handle: None,
                reason: format!("unexpected list reply for user index {index}"),
            });
        };
        let mut sessions = Vec::with_capacity(items.len() / 2);
        let mut items = items.into_iter();
        while let (Some(member), Some(row)) = (items.next(), items.next()) {
            let member = bytes(&member)
                .and_then(|m| std::str::from_utf8(m).ok())
                .unwrap_or_default();
            let handle = handle_of_member(&tag, member).ok_or_else(|| SessionError::Decode {
                backend: BACKEND,
                handle: None,
                reason: format!("index {index} holds a malformed member"),
            })?;
            if let Some(session) = self.live(&handle, row, None)? {
                sessions.push(session);
            }
        }
        sessions.sort_by(|a, b| (a.created_at, &a.handle).cmp(&(b.created_at, &b.handle)));
        Ok(sessions)
    }

    async fn delete_by_user(&self, user_id: &str, except: Option<&SessionHandle>) -> Result<u64> {
        self.unsupported_in_compat("delete_by_user")?;
        let tag = Self::user_tag(user_id);
        let (index, base) = self.index_key(user_id);
        let keep = except.map_or_else(String::new, |h| member_of(h, &tag));
        // Two steps, so that the script can declare every key it touches: read the members, then
        // delete with all their keys named; the script refuses if the members changed between.
        for _ in 0..8 {
            let members = self.read_members(&index, None, 0).await?;
            if members.is_empty() {
                return Ok(0);
            }
            let mut invocation = scripts::DELETE_BY_USER.prepare_invoke();
            invocation.key(&index).arg(self.now_ms()).arg(&keep);
            for member in &members {
                invocation.key(format!("{base}s:{member}")).arg(member);
            }
            let reply = self.invoke(&invocation, None).await;
            for member in &members {
                self.forget(&format!("{base}s:{member}"));
            }
            match reply? {
                Value::Int(n) => return Ok(n.unsigned_abs()),
                reply if bytes(&reply) == Some(b"retry") => {}
                other => {
                    return Err(SessionError::Decode {
                        backend: BACKEND,
                        handle: None,
                        reason: format!("unexpected delete_by_user reply {other:?}"),
                    });
                }
            }
        }
        // Sign-ins and sign-outs of this user kept changing the index between the two steps.
        Err(SessionError::Unavailable {
            backend: BACKEND,
            source: "the user's sessions kept changing during delete_by_user; try again".into(),
        })
    }

    async fn purge_expired(&self) -> Result<u64> {
        if self.config.layout == Layout::Compatible {
            // Redis expires these keys itself and there is no index to trim.
            return Ok(0);
        }
        let pattern = format!("{}{{*}}:u:*", self.config.key_prefix);
        let now = self.now_ms();
        let mut removed = 0u64;
        let indexes = self.scan(&pattern).await?;
        for index in indexes {
            let Some(end) = index.find("}:u:") else {
                continue;
            };
            let base = &index[..end + 2];
            // The due members in batches, each named to the script with its session's key; a
            // batch re-scores or removes every member it names, so the next one reads others.
            loop {
                let due = self.read_members(&index, Some(now), PURGE_BATCH).await?;
                if due.is_empty() {
                    break;
                }
                let mut invocation = scripts::PURGE_INDEX.prepare_invoke();
                invocation.key(&index).arg(now).arg(due.len());
                for member in &due {
                    invocation.key(format!("{base}s:{member}")).arg(member);
                }
                match self.invoke(&invocation, None).await? {
                    Value::Int(n) => removed += n.unsigned_abs(),
                    other => {
                        return Err(SessionError::Decode {
                            backend: BACKEND,
                            handle: None,
                            reason: format!("unexpected purge reply {other:?}"),
                        });
                    }
                }
                if due.len() < PURGE_BATCH {
                    break;
                }
            }
        }
        Ok(removed)
    }

    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage> {
        self.unsupported_in_compat("scan")?;
        session_core::check_scan_limit(limit)?;
        let mut shared = self.checkout().await?;
        let nodes = match &mut shared.inner {
            Conn::Node(_) => vec![None],
            Conn::Cluster(cluster, health) => {
                let mut masters = health
                    .observed(masters(cluster).await)
                    .map_err(|e| from_redis(e, None, self.config.response_timeout))?;
                masters.sort();
                masters.into_iter().map(Some).collect()
            }
        };
        let cluster = matches!(shared.inner, Conn::Cluster(..));
        let mut at = match cursor {
            Some(cursor) => WalkPosition::parse(cursor, cluster, &nodes, &self.config.key_prefix)?,
            None => WalkPosition::default(),
        };
        // Exactly a tag's four characters between the braces: a user's index key whose user id
        // holds `}:s:` must not match (it is no session, and a read of it would fail).
        let pattern = format!("{}{{????}}:s:*", glob_escape(&self.config.key_prefix));
        let count = limit.clamp(SCAN_COUNT_MIN, SCAN_COUNT_PAGE);
        let mut sessions = Vec::new();
        for _ in 0..SCAN_CALLS_PER_PAGE {
            // The keys a batch had that the last page did not reach come first (a Cluster routes
            // each read by its key, so they are read whichever node is next).
            if !at.unread.is_empty() {
                let room = limit - sessions.len();
                let rest = at.unread.split_off(room.min(at.unread.len()));
                let chunk = std::mem::replace(&mut at.unread, rest);
                self.read_scanned(&mut shared, &chunk, &mut sessions)
                    .await?;
                if sessions.len() == limit {
                    return Ok(ScanPage {
                        sessions,
                        next: at.to_cursor(&nodes, &self.config.key_prefix),
                    });
                }
                continue;
            }
            let Some(node) = nodes.get(at.node) else {
                return Ok(ScanPage {
                    sessions,
                    next: None,
                });
            };
            let (next, mut keys) =
                scan_page(&mut shared.inner, node.as_ref(), at.cursor, &pattern, count)
                    .await
                    .map_err(|e| self.fail(&shared, e, None))?;
            // Only session keys are kept: a foreign key matching the pattern (or one with a `,`
            // or `|`) would make the cursor unreadable, and a read would skip it anyway.
            keys.retain(|key| handle_of_key(key).is_some() && !key.contains([',', '|']));
            keys.sort_unstable();
            keys.dedup();
            at = at.advanced(next, keys);
        }
        // A stretch of keys with no live session: the page ends short, the walk goes on.
        Ok(ScanPage {
            sessions,
            next: at.to_cursor(&nodes, &self.config.key_prefix),
        })
    }

    async fn import(&self, session: &UserSession) -> Result<Imported> {
        self.unsupported_in_compat("import")?;
        session.validate_import(&self.policy)?;
        if self.policy.is_expired(session, self.policy.now()) {
            return Ok(Imported::Expired);
        }
        let handle = &session.handle;
        let tag = Self::user_tag(&session.user_id);
        let location = match handle.routing_tag() {
            Some(own) if own == tag => self.located(&tag, handle.hash().to_owned()),
            Some(own) if own.len() == TAG_LEN => {
                // Lookups of such a handle go to the slot its tag names, not to its user's.
                return Err(SessionError::invalid_input(
                    "handle",
                    "carries a Redis routing tag that is not its user's",
                ));
            }
            _ => {
                // A copy under this handle for another user (whose tag the alias names) stands in
                // the way while it lives; an expired one goes, with its index member.
                if let Some(previous) = self.locate_handle(handle).await?
                    && previous.tag != tag
                {
                    let key = previous.key.as_str();
                    let row = run!(self, Some(handle), |conn| redis::cmd("HMGET")
                        .arg(key)
                        .arg(&FIELDS[..])
                        .query_async::<Value>(conn)
                        .await)?;
                    if self.live(handle, row, None)?.is_some() {
                        return Ok(Imported::AlreadyPresent);
                    }
                    self.delete_at(&previous, handle).await?;
                }
                // The alias first, unless the handle's tombstone stands (see
                // `delete_with_tombstone`); an import cut off before the session is written
                // leaves an alias to nothing, which a lookup reads as no session, and running
                // it again writes both. It lives as long as the session can.
                let mut claim = scripts::CLAIM_ALIAS.prepare_invoke();
                claim
                    .key(self.alias_key(handle))
                    .key(self.alias_tombstone_key(handle))
                    .arg(self.now_ms())
                    .arg(&tag)
                    .arg(millis_since_epoch(session.absolute_expires_at));
                if bytes(&self.invoke(&claim, Some(handle)).await?) == Some(b"ended") {
                    return Ok(Imported::Ended);
                }
                self.located_alias(&tag, handle)
            }
        };
        let tombstone = Self::tombstone_key(&location);
        let index = index_at(&location.base, &session.user_id);
        let mut other_index = None;
        let mut answer = None;
        // A session's user never changes, so a second request means a corrupt row.
        for _ in 0..2 {
            let mut invocation = scripts::IMPORT.prepare_invoke();
            invocation.key(&location.key).key(&tombstone).key(&index);
            if let Some(other) = &other_index {
                invocation.key(other);
            }
            invocation
                .arg(self.now_ms())
                .arg(&location.member)
                .arg(millis_since_epoch(session.idle_expires_at))
                .arg(&location.base)
                .arg(flag(self.declare_all_keys))
                .arg(&session.user_id);
            push_all_fields(&mut invocation, session)?;
            let reply = self.invoke(&invocation, Some(handle)).await;
            self.forget(&location.key);
            let reply = reply?;
            match index_request(&reply) {
                Some(user_id) => other_index = Some(index_at(&location.base, user_id)),
                None => {
                    answer = Some(reply);
                    break;
                }
            }
        }
        let imported = match answer.as_ref().and_then(bytes) {
            Some(b"stored") => Imported::Stored,
            Some(b"present") => Imported::AlreadyPresent,
            Some(b"ended") => Imported::Ended,
            _ => {
                return Err(decode(
                    handle,
                    format!("unexpected import reply {answer:?}"),
                ));
            }
        };
        Ok(imported)
    }

    async fn health(&self) -> Result<()> {
        // `connect` checks health: the near cache's tracking starts with it.
        if let Some(near) = &self.near {
            near.cache();
        }
        run!(self, None, |conn| match conn {
            // Every master answers, so every slot can be served.
            Conn::Cluster(cluster, health) => health
                .observed(
                    cluster
                        .route_command(
                            redis::cmd("PING"),
                            RoutingInfo::MultiNode((
                                MultipleNodeRoutingInfo::AllMasters,
                                Some(ResponsePolicy::AllSucceeded),
                            )),
                        )
                        .await,
                )
                .map(drop),
            Conn::Node(node) => redis::cmd("PING").query_async::<()>(node).await,
        })
    }

    fn needs_purge(&self) -> bool {
        // Keys expire by their TTLs, and an index by its own TTL once its sessions have gone.
        false
    }

    async fn close(&self) {
        if let Some(near) = &self.near {
            near.stop();
        }
        if let Some(watch) = &self.master_watch {
            watch.stop();
        }
        self.pool
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }
}

#[async_trait]
impl StorageDump for RedisStore {
    /// Every key under the store's prefix (the whole database in the compatible layout), with its
    /// value; session keys also show the handle they hold.
    async fn dump_raw(&self) -> Result<Vec<String>> {
        let pattern = format!("{}*", self.config.key_prefix);
        let keys = self.scan(&pattern).await?;
        let mut conn = self.checkout().await?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut conn.inner)
                .await
                .map_err(|e| self.fail(&conn, e, None))?;
            let value: Value = match kind.as_str() {
                "hash" => {
                    redis::cmd("HGETALL")
                        .arg(&key)
                        .query_async(&mut conn.inner)
                        .await
                }
                "zset" => {
                    redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query_async(&mut conn.inner)
                        .await
                }
                "string" => {
                    redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut conn.inner)
                        .await
                }
                _ => Ok(Value::Nil),
            }
            .map_err(|e| self.fail(&conn, e, None))?;
            let handle = handle_of_key(&key)
                .map(|handle| format!(" (handle {handle})"))
                .unwrap_or_default();
            out.push(format!("{key}{handle} [{kind}] => {}", render(&value)));
        }
        Ok(out)
    }
}

/// One page of `SCAN cursor MATCH pattern`: the next cursor (0 at the end) and the keys; on a
/// Cluster, of the master at `node`.
async fn scan_page(
    conn: &mut Conn,
    node: Option<&(String, u16)>,
    cursor: u64,
    pattern: &str,
    count: usize,
) -> redis::RedisResult<(u64, Vec<String>)> {
    let mut scan = redis::cmd("SCAN");
    scan.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(count);
    match (conn, node) {
        (Conn::Cluster(cluster, health), Some((host, port))) => {
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            });
            let reply = health.observed(cluster.route_command(scan, routing).await)?;
            redis::FromRedisValue::from_redis_value(reply).map_err(Into::into)
        }
        (conn, _) => scan.query_async(conn).await,
    }
}

/// The masters of a cluster (host, port) as the cluster client knows them (the addresses it
/// routes to, whatever `CLUSTER SLOTS` calls them): the senders of a `PING` sent to all masters.
async fn masters(
    cluster: &mut redis::cluster_async::ClusterConnection,
) -> redis::RedisResult<Vec<(String, u16)>> {
    let replies = cluster
        .route_command(
            redis::cmd("PING"),
            RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
        )
        .await?;
    let Value::Map(replies) = replies else {
        return Err((redis::ErrorKind::Client, "PING to all masters: not a map").into());
    };
    replies
        .iter()
        .map(|(address, _)| {
            let address = bytes(address)
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            address
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host.to_owned(), port.parse().ok()?)))
                .ok_or_else(|| {
                    (
                        redis::ErrorKind::Client,
                        "a master address the cluster client reported",
                        address.into_owned(),
                    )
                        .into()
                })
        })
        .collect()
}

fn render(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::Array(items) => items.iter().map(render).collect::<Vec<_>>().join(" "),
        other => format!("{other:?}"),
    }
}
