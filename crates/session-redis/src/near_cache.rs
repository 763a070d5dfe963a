//! The near cache (ADR 0021): sessions read from Redis kept in process memory, so that `get`, and a
//! `touch` not yet due to write, answer without a round trip, while Redis's server-assisted
//! invalidation (`CLIENT TRACKING … BCAST PREFIX`) evicts an entry the moment any instance
//! changes or deletes its key.
//!
//! Consistency rules:
//! - Entries are served only while every node that holds sessions is tracked. Losing a tracking
//!   connection (or the set of nodes changing: a failover, a new Cluster master) flushes the cache
//!   and bypasses it until tracking is back.
//! - A read from Redis is cached only if no invalidation of its key arrived while it ran: the key
//!   holds a placeholder from before the read is sent, which an invalidation removes, and the
//!   answer replaces only its own placeholder. An invalidation always follows the write it is
//!   about, on the server, so either it reaches the placeholder or it evicts the entry.
//! - Expiry is checked on every cached read against the session's stored instants, as on a read
//!   from Redis.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{IntoConnectionInfo as _, PushInfo, PushKind, RedisError, RedisResult, Value};
use serde::{Deserialize, Serialize};
use session_core::{ErrorChain, UserSession};

use crate::codec::bytes;
use crate::pool::{MasterLookup, MasterWatch};

/// Settings of the near cache (see [`crate::RedisConfig::near_cache`]). Every field has a default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct NearCacheConfig {
    /// Most sessions kept. Default `10000`.
    pub max_entries: usize,
    /// Most bytes kept: the stored fields' sizes plus a fixed 256 per entry. Default 16 MiB; at
    /// least 64 KiB.
    pub max_bytes: usize,
}

impl Default for NearCacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_bytes: 16 << 20,
        }
    }
}

impl NearCacheConfig {
    /// At most `max_entries` sessions and `max_bytes` bytes.
    #[must_use]
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            max_entries,
            max_bytes,
        }
    }
}

/// Counters of the near cache, from [`crate::RedisStore::near_cache_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NearCacheStats {
    /// Reads answered from memory.
    pub hits: u64,
    /// Reads that went to Redis while the cache was in use.
    pub misses: u64,
    /// Reads that went to Redis because tracking was down.
    pub bypassed: u64,
    /// Keys evicted by an invalidation from Redis.
    pub invalidations: u64,
    /// Times the whole cache was flushed (tracking lost or regained, the nodes changed).
    pub flushes: u64,
    /// Sessions held now.
    pub entries: u64,
    /// Whether entries are served: invalidations are being received (and, through Sentinel, no
    /// new master has been announced since they were set up).
    pub tracking: bool,
}

/// Bytes counted per entry besides its stored fields: the key, the struct, the map's slot.
const ENTRY_OVERHEAD: usize = 256;
const SHARDS: usize = 16;

pub(crate) struct NearCache {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    tracking: AtomicBool,
    /// Set by [`NearCache::close`]: tracking never turns on again.
    closed: AtomicBool,
    /// Through Sentinel: the watch, and its count when tracking was set up; entries are served
    /// only while the count is unchanged (a new master may take writes before the tracking task
    /// has noticed).
    /// Read on every cached read, so without a lock: the watch is set once (it is the store's),
    /// the count at each set-up.
    fence_watch: std::sync::OnceLock<Arc<MasterWatch>>,
    fence_generation: AtomicU64,
    next_ticket: AtomicU64,
    entries_per_shard: usize,
    bytes_per_shard: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    bypassed: AtomicU64,
    invalidations: AtomicU64,
    flushes: AtomicU64,
}

impl std::fmt::Debug for NearCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearCache")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<String, Slot>,
    /// Insertion order for eviction: a key with the ticket it was inserted under (a key since
    /// removed or replaced is skipped when it comes up).
    order: VecDeque<(String, u64)>,
    bytes: usize,
}

enum Slot {
    /// A read from Redis is under way.
    Pending(u64),
    Ready {
        session: Box<UserSession>,
        bytes: usize,
        ticket: u64,
    },
}

impl Slot {
    fn ticket(&self) -> u64 {
        match self {
            Self::Pending(ticket) | Self::Ready { ticket, .. } => *ticket,
        }
    }
}

impl Shard {
    fn remove(&mut self, key: &str) -> bool {
        match self.map.remove(key) {
            Some(Slot::Ready { bytes, .. }) => {
                self.bytes -= bytes;
                true
            }
            Some(Slot::Pending(_)) => true,
            None => false,
        }
    }

    /// Evicts the oldest entries until one more entry of `incoming` bytes fits.
    fn make_room(&mut self, max_entries: usize, max_bytes: usize, incoming: usize) {
        while self.map.len() >= max_entries || self.bytes + incoming > max_bytes {
            let Some((key, ticket)) = self.order.pop_front() else {
                break;
            };
            if self
                .map
                .get(&key)
                .is_some_and(|slot| slot.ticket() == ticket)
            {
                self.remove(&key);
            }
        }
        // Keys removed by invalidations stay in `order` until they come up: keep it bounded.
        if self.order.len() > 2 * max_entries.max(16) {
            let map = &self.map;
            self.order
                .retain(|(key, ticket)| map.get(key).is_some_and(|s| s.ticket() == *ticket));
        }
    }
}

impl NearCache {
    pub(crate) fn new(config: NearCacheConfig) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            tracking: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            fence_watch: std::sync::OnceLock::new(),
            fence_generation: AtomicU64::new(0),
            next_ticket: AtomicU64::new(1),
            entries_per_shard: config.max_entries.div_ceil(SHARDS).max(1),
            bytes_per_shard: config.max_bytes.div_ceil(SHARDS).max(ENTRY_OVERHEAD),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bypassed: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        use std::hash::BuildHasher as _;
        let index = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether entries may be served now: tracking is up and, through Sentinel, no new master
    /// has been announced since it was set up.
    fn serving(&self) -> bool {
        if !self.tracking.load(Ordering::Acquire) {
            return false;
        }
        self.fence_watch
            .get()
            .is_none_or(|watch| watch.generation() == self.fence_generation.load(Ordering::Acquire))
    }

    /// The cached session under `key` if it may be served and `usable` accepts it (expiry is the
    /// caller's to check).
    pub(crate) fn get_where(
        &self,
        key: &str,
        usable: impl FnOnce(&UserSession) -> bool,
    ) -> Option<UserSession> {
        if !self.serving() {
            self.bypassed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let found = match self.shard(key).map.get(key) {
            Some(Slot::Ready { session, .. }) if usable(session) => {
                Some(UserSession::clone(session))
            }
            _ => None,
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Marks a read of `key` from Redis as begun: the ticket to hand to [`NearCache::complete`],
    /// or `None` when tracking is down (nothing will be cached).
    pub(crate) fn begin(&self, key: &str) -> Option<u64> {
        if !self.serving() {
            return None;
        }
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shard(key);
        shard.remove(key);
        shard.make_room(self.entries_per_shard, self.bytes_per_shard, 0);
        shard.map.insert(key.to_owned(), Slot::Pending(ticket));
        shard.order.push_back((key.to_owned(), ticket));
        Some(ticket)
    }

    /// Ends the read `ticket` of `key`: caches `session` (`bytes` of stored fields) if the read's
    /// placeholder is still there, i.e. no invalidation or flush came meanwhile; else, or with no
    /// session, leaves nothing.
    pub(crate) fn complete(&self, key: &str, ticket: u64, session: Option<(&UserSession, usize)>) {
        let mut shard = self.shard(key);
        if !matches!(shard.map.get(key), Some(Slot::Pending(t)) if *t == ticket) {
            return;
        }
        shard.remove(key);
        let Some((session, stored)) = session else {
            return;
        };
        let bytes = stored + ENTRY_OVERHEAD;
        if bytes > self.bytes_per_shard {
            return;
        }
        shard.make_room(self.entries_per_shard, self.bytes_per_shard, bytes);
        shard.bytes += bytes;
        shard.map.insert(
            key.to_owned(),
            Slot::Ready {
                session: Box::new(session.clone()),
                bytes,
                ticket,
            },
        );
        // Recorded again: making room may have taken the placeholder's record, and an entry
        // without one could never be evicted. A second record of the same ticket is harmless.
        shard.order.push_back((key.to_owned(), ticket));
    }

    /// Forgets `key` on an invalidation from Redis.
    pub(crate) fn invalidate(&self, key: &str) {
        if self.shard(key).remove(key) {
            self.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets `key` after a write of this instance, or an entry found expired.
    pub(crate) fn forget(&self, key: &str) {
        self.shard(key).remove(key);
    }

    /// Forgets everything.
    pub(crate) fn flush(&self) {
        for shard in &*self.shards {
            let mut shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            shard.map.clear();
            shard.order.clear();
            shard.bytes = 0;
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    /// Turns serving on (tracking established; through Sentinel, with the watch's count then)
    /// or off (tracking lost); flushes either way, since invalidations may have been missed in
    /// between. Never on again once closed.
    pub(crate) fn set_tracking(&self, on: bool, fence: Option<(Arc<MasterWatch>, u64)>) {
        if !on {
            // Off first: no reader may take an entry the flush is about to remove as current.
            self.tracking.store(false, Ordering::Release);
        }
        self.flush();
        if on && !self.closed.load(Ordering::Acquire) {
            if let Some((watch, generation)) = fence {
                self.fence_watch.get_or_init(|| watch);
                // Before serving turns on: a reader that sees it on sees this count.
                self.fence_generation.store(generation, Ordering::Release);
            }
            self.tracking.store(true, Ordering::Release);
            // A close that came in between wins.
            if self.closed.load(Ordering::Acquire) {
                self.tracking.store(false, Ordering::Release);
                self.flush();
            }
        }
    }

    /// Stops serving for good (the store is closing).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.set_tracking(false, None);
    }

    pub(crate) fn stats(&self) -> NearCacheStats {
        let entries = self
            .shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .map
                    .values()
                    .filter(|slot| matches!(slot, Slot::Ready { .. }))
                    .count() as u64
            })
            .sum();
        NearCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bypassed: self.bypassed.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            entries,
            tracking: self.serving(),
        }
    }
}

/// Where invalidations come from: the nodes that hold the sessions, found again when they change.
pub(crate) enum Tracked {
    /// One node.
    Node(redis::ConnectionInfo),
    /// The master the Sentinels name; it changes when they announce a new one.
    Sentinel {
        lookup: Arc<MasterLookup>,
        watch: Arc<MasterWatch>,
    },
    /// Every master of a Cluster (`CLUSTER SLOTS`), with the seeds' credentials.
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        settings: redis::RedisConnectionInfo,
    },
}

/// How often the tracking connections are pinged and the set of nodes checked for changes: the
/// longest a silently dead connection or a manual Cluster failover can go unnoticed.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// The first pause before tracking is tried again after it failed, and the longest.
const RETRY_AFTER: Duration = Duration::from_millis(100);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

impl Tracked {
    /// The nodes to track now, and what to compare later to tell whether they changed.
    async fn resolve(
        &self,
        cluster: &mut Option<ClusterConnection>,
    ) -> RedisResult<(Vec<redis::ConnectionInfo>, String)> {
        match self {
            Self::Node(info) => Ok((vec![info.clone()], String::new())),
            Self::Sentinel { lookup, watch } => {
                // Read before asking: a switch announced meanwhile shows as a change at once.
                let generation = watch.generation();
                let (_, info) = lookup.connect().await?;
                Ok((vec![info], generation.to_string()))
            }
            Self::Cluster { client, settings } => {
                let nodes = cluster_nodes(client, cluster).await?;
                let fingerprint = format!("{nodes:?}");
                let infos = nodes
                    .into_iter()
                    .map(|(host, port)| {
                        Ok(redis::ConnectionAddr::Tcp(host, port)
                            .into_connection_info()?
                            .set_redis_settings(settings.clone()))
                    })
                    .collect::<RedisResult<_>>()?;
                Ok((infos, fingerprint))
            }
        }
    }

    /// The Sentinel watch and its count when resolved (read again by every cached read, so that
    /// a switch stops serving at once), or `None`.
    fn generation(&self) -> Option<(Arc<MasterWatch>, u64)> {
        match self {
            Self::Sentinel { watch, .. } => Some((watch.clone(), watch.generation())),
            _ => None,
        }
    }

    async fn fingerprint(&self, cluster: &mut Option<ClusterConnection>) -> RedisResult<String> {
        match self {
            Self::Node(_) => Ok(String::new()),
            Self::Sentinel { watch, .. } => Ok(watch.generation().to_string()),
            Self::Cluster { client, .. } => {
                Ok(format!("{:?}", cluster_nodes(client, cluster).await?))
            }
        }
    }
}

/// Every node's address, sorted, from `CLUSTER NODES`: masters with slots or without (a master
/// a slot is moving to already serves its moved keys) and replicas (a replica applies its
/// master's writes and sends their invalidations too, so one promoted by a failover is tracked
/// before it takes writes). Nodes flagged failing, in handshake or without an address are left
/// out.
async fn cluster_nodes(
    client: &redis::cluster::ClusterClient,
    cluster: &mut Option<ClusterConnection>,
) -> RedisResult<Vec<(String, u16)>> {
    let conn = match cluster {
        Some(conn) => conn,
        None => cluster.insert(client.get_async_connection().await?),
    };
    let listing: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
    let mut nodes = Vec::new();
    for line in listing.lines() {
        // <id> <ip:port@cport[,hostname]> <flags> ...
        let mut fields = line.split(' ');
        let (Some(_), Some(address), Some(flags)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if flags
            .split(',')
            .any(|f| matches!(f, "fail" | "fail?" | "handshake" | "noaddr"))
        {
            continue;
        }
        let address = address.split(['@', ',']).next().unwrap_or_default();
        if let Some((host, port)) = address.rsplit_once(':')
            && !host.is_empty()
            && let Ok(port) = port.parse::<u16>()
            && port != 0
        {
            nodes.push((host.to_owned(), port));
        }
    }
    if nodes.is_empty() {
        return Err((redis::ErrorKind::Client, "CLUSTER NODES named no node").into());
    }
    nodes.sort_unstable();
    nodes.dedup();
    Ok(nodes)
}

/// Keeps `cache` fed with invalidations for keys under `prefix`, for as long as the task runs:
/// tracks every node `tracked` resolves to, serves the cache only while all of them are tracked,
/// and starts over (flushed) when a connection fails or the nodes change.
pub(crate) async fn track(
    cache: Arc<NearCache>,
    tracked: Tracked,
    prefix: String,
    timeout: Duration,
) {
    let mut cluster = None;
    let mut pause = RETRY_AFTER;
    loop {
        let began = tokio::time::Instant::now();
        let outcome = track_until_lost(&cache, &tracked, &prefix, timeout, &mut cluster).await;
        // At once: invalidations may be missing from here on.
        cache.set_tracking(false, None);
        match outcome {
            Ok(()) => tracing::debug!("near cache: the tracked nodes changed"),
            Err(error) => {
                tracing::debug!(error = %ErrorChain(&error), "near cache: tracking lost, the cache is bypassed");
                // The Cluster client's own view may be what failed: open it afresh.
                cluster = None;
                // Doubling pauses while it keeps failing (a fleet must not hammer a Redis that
                // is down), back to the shortest once tracking has held for a while.
                if began.elapsed() > MAX_RETRY_AFTER {
                    pause = RETRY_AFTER;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_AFTER);
            }
        }
    }
}

async fn track_until_lost(
    cache: &NearCache,
    tracked: &Tracked,
    prefix: &str,
    timeout: Duration,
    cluster: &mut Option<ClusterConnection>,
) -> RedisResult<()> {
    let timed_out = || {
        RedisError::from((
            redis::ErrorKind::Io,
            "near cache: tracking set-up timed out",
        ))
    };
    let (nodes, fingerprint) = tokio::time::timeout(timeout, tracked.resolve(cluster))
        .await
        .map_err(|_| timed_out())??;
    let (sender, mut pushes) = tokio::sync::mpsc::unbounded_channel();
    let mut connections = Vec::with_capacity(nodes.len());
    for node in nodes {
        let opening = open_tracking(node, prefix, sender.clone(), timeout);
        connections.push(
            tokio::time::timeout(timeout, opening)
                .await
                .map_err(|_| timed_out())??,
        );
    }
    drop(sender);
    cache.set_tracking(true, tracked.generation());
    // The checks run beside the invalidations, never in their way: a slow node or a slow answer
    // to a check must not hold up the pushes from the others.
    let checks = async {
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let now = tokio::time::timeout(timeout, tracked.fingerprint(cluster))
                .await
                .map_err(|_| timed_out())??;
            if now != fingerprint {
                return Ok(());
            }
            let ping_command = redis::cmd("PING");
            let pings = connections
                .iter_mut()
                .map(|connection| ping_command.query_async::<()>(connection));
            for answer in tokio::time::timeout(timeout, futures_util::future::join_all(pings))
                .await
                .map_err(|_| timed_out())?
            {
                answer?;
            }
        }
    };
    tokio::pin!(checks);
    loop {
        tokio::select! {
            push = pushes.recv() => match push {
                Some(PushInfo { kind: PushKind::Invalidate, data }) => invalidate(cache, &data),
                Some(PushInfo { kind: PushKind::Disconnection, .. }) | None => {
                    return Err((redis::ErrorKind::Io, "near cache: a tracking connection closed").into());
                }
                Some(_) => {}
            },
            outcome = &mut checks => return outcome,
        }
    }
}

/// A RESP3 connection to `node` that receives invalidations for every key under `prefix`
/// written by anyone (`BCAST`: no need to have read a key first, so reads need no extra step).
async fn open_tracking(
    node: redis::ConnectionInfo,
    prefix: &str,
    sender: tokio::sync::mpsc::UnboundedSender<PushInfo>,
    timeout: Duration,
) -> RedisResult<MultiplexedConnection> {
    let settings = node
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let node = node.set_redis_settings(settings);
    let config = redis::AsyncConnectionConfig::new()
        .set_push_sender(sender)
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut connection = redis::Client::open(node)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("BCAST")
        .arg("PREFIX")
        .arg(prefix)
        .query_async::<()>(&mut connection)
        .await?;
    Ok(connection)
}

/// Applies an `invalidate` push: its keys, or (nil) everything, as after `FLUSHALL`.
fn invalidate(cache: &NearCache, data: &[Value]) {
    match data.first() {
        Some(Value::Array(keys)) => {
            for key in keys {
                if let Some(key) = bytes(key) {
                    cache.invalidate(&String::from_utf8_lossy(key));
                }
            }
        }
        _ => cache.flush(),
    }
}

#[cfg(test)]
impl NearCache {
    fn get(&self, key: &str) -> Option<UserSession> {
        self.get_where(key, |_| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use session_core::{NewUserSession, SessionPolicy, SessionToken};

    fn session() -> UserSession {
        let token = SessionToken::generate().unwrap();
        NewUserSession::new("alice")
            .into_session(&token, &SessionPolicy::default())
            .unwrap()
    }

    fn tracked(config: NearCacheConfig) -> NearCache {
        let cache = NearCache::new(config);
        cache.set_tracking(true, None);
        cache
    }

    #[test]
    fn a_read_is_cached_unless_an_invalidation_came_while_it_ran() {
        let cache = tracked(NearCacheConfig::default());
        let s = session();
        let ticket = cache.begin("k:a").unwrap();
        cache.complete("k:a", ticket, Some((&s, 100)));
        assert_eq!(cache.get("k:a").unwrap().handle, s.handle);

        let ticket = cache.begin("k:b").unwrap();
        cache.invalidate("k:b");
        cache.complete("k:b", ticket, Some((&s, 100)));
        assert!(cache.get("k:b").is_none(), "the read raced an invalidation");

        let ticket = cache.begin("k:c").unwrap();
        cache.set_tracking(false, None);
        cache.set_tracking(true, None);
        cache.complete("k:c", ticket, Some((&s, 100)));
        assert!(cache.get("k:c").is_none(), "the read raced a flush");
    }

    #[test]
    fn nothing_is_served_or_cached_while_tracking_is_down() {
        let cache = tracked(NearCacheConfig::default());
        let s = session();
        let ticket = cache.begin("k:a").unwrap();
        cache.complete("k:a", ticket, Some((&s, 100)));
        cache.set_tracking(false, None);
        assert!(cache.get("k:a").is_none());
        assert!(cache.begin("k:a").is_none());
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn reads_completing_out_of_order_stay_within_bounds() {
        let cache = tracked(NearCacheConfig::new(64, 64 * 1024));
        let s = session();
        for round in 0..200 {
            // Fifty reads in flight, the oldest completing last, under byte pressure.
            let keys: Vec<String> = (0..50).map(|i| format!("k:{round}:{i}")).collect();
            let tickets: Vec<u64> = keys.iter().map(|k| cache.begin(k).unwrap()).collect();
            for (key, ticket) in keys.iter().zip(tickets).rev() {
                cache.complete(key, ticket, Some((&s, 1500)));
            }
        }
        for shard in &*cache.shards {
            let shard = shard.lock().unwrap();
            assert!(shard.bytes <= cache.bytes_per_shard);
            assert!(shard.map.len() <= cache.entries_per_shard);
        }
    }

    #[test]
    fn entries_and_bytes_stay_within_bounds() {
        let cache = tracked(NearCacheConfig::new(64, 64 * 1024));
        let s = session();
        for i in 0..10_000 {
            let key = format!("k:{i}");
            let ticket = cache.begin(&key).unwrap();
            cache.complete(&key, ticket, Some((&s, 1000)));
            if i % 7 == 0 {
                cache.invalidate(&key);
            }
        }
        let stats = cache.stats();
        assert!(stats.entries <= 64 + SHARDS as u64, "{stats:?}");
        for shard in &*cache.shards {
            let shard = shard.lock().unwrap();
            assert!(shard.bytes <= cache.bytes_per_shard);
            assert!(shard.order.len() <= 2 * cache.entries_per_shard.max(16) + 1);
        }
        // The newest entries are the ones kept.
        assert!(cache.get("k:9999").is_some());
        assert!(cache.get("k:0").is_none());
    }
}
