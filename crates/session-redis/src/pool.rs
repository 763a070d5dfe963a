//! Connections: the bb8 pool (bb8-redis's manager to one node, or to the master Sentinel names,
//! plus a broken flag so a connection that failed is discarded) and the cluster client's.
//!
//! bb8-redis reports connections as never broken, and a `MultiplexedConnection` does not reconnect,
//! so without this a connection killed by the server (restart, `CLIENT KILL`, failover) would stay
//! in the pool and fail every operation that checks it out until a checkout ping caught it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bb8_redis::RedisConnectionManager;
use bb8_redis::bb8::ManageConnection;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo as _, Pipeline, RedisError, RedisFuture, Value};
use session_core::ErrorChain;

/// A pooled connection and whether it has failed. The flag is shared with the connection's
/// [`Shared`] clones, so a failure seen on a clone discards the pooled connection too.
pub(crate) struct Connection {
    pub(crate) inner: MultiplexedConnection,
    pub(crate) broken: Arc<AtomicBool>,
    /// The master generation (see [`MasterWatch`]) when this connection asked the Sentinels
    /// which node is the master; 0 for a direct connection.
    pub(crate) generation: u64,
}

impl Connection {
    /// A clone of the multiplexed handle for one operation. Multiplexed connections are made for
    /// concurrent use: requests from many clones are pipelined over the one socket.
    pub(crate) fn share(&self) -> Shared {
        Shared {
            inner: Conn::Node(self.inner.clone()),
            broken: self.broken.clone(),
        }
    }
}

/// A connection of either topology, for one operation.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One node's multiplexed connection (a single Redis, or the master Sentinel named).
    Node(MultiplexedConnection),
    /// The cluster client's connection: routes each command by its first key's slot, follows
    /// `MOVED`/`ASK`, waits out `TRYAGAIN`/`CLUSTERDOWN` and reconnects by itself. Commands sent
    /// through [`ConnectionLike`] report to its [`ClusterHealth`].
    Cluster(ClusterConnection, Arc<ClusterHealth>),
}

/// What the commands sent on one cluster connection have seen, so that a connection which
/// stopped answering is told apart from a node that is down or slow.
///
/// The cluster client answers every request from one task, and redis-rs 1.8 can leave that task
/// waiting for ever in a slot refresh (one starts at every `MOVED`, so a live resharding under
/// load starts hundreds): from then on every request times out while every node answers. A node
/// that is down or slow times out only the requests for its slots, and the others keep being
/// answered. So a connection on which every command has timed out for `stall_after`, none being
/// answered in between, is marked stalled, and the store replaces it (ADR 0032).
#[derive(Debug)]
pub(crate) struct ClusterHealth {
    /// Commands that got a reply or an error other than a time-out.
    answered: AtomicU64,
    /// `answered` at the first time-out since it last moved, and when that time-out came.
    timing_out_since: Mutex<Option<(u64, Instant)>>,
    /// `answered` when the connection was marked stalled; [`NOT_STALLED`] until then. An answer
    /// after the mark moves `answered` past it, which takes the mark back.
    stalled_at: AtomicU64,
    stall_after: Duration,
}

const NOT_STALLED: u64 = u64::MAX;

impl ClusterHealth {
    pub(crate) fn new(stall_after: Duration) -> Self {
        Self {
            answered: AtomicU64::new(0),
            timing_out_since: Mutex::new(None),
            stalled_at: AtomicU64::new(NOT_STALLED),
            stall_after,
        }
    }

    /// Counts a command's outcome, and hands it back: a time-out with none answered for
    /// `stall_after` before it marks the connection stalled. Time with no command sent counts
    /// too: two time-outs that far apart with nothing answered between them mark it, which at
    /// worst costs a connection that was idle one reconnect.
    pub(crate) fn observed<T>(&self, outcome: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if !matches!(&outcome, Err(err) if err.is_timeout()) {
            self.answered.fetch_add(1, Ordering::Relaxed);
            return outcome;
        }
        let answered = self.answered.load(Ordering::Relaxed);
        let mut since = self
            .timing_out_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *since {
            Some((seen, first)) if seen == answered => {
                if first.elapsed() >= self.stall_after {
                    self.stalled_at.store(answered, Ordering::Relaxed);
                }
            }
            _ => *since = Some((answered, Instant::now())),
        }
        outcome
    }

    /// Whether the connection is marked stalled and has answered nothing since.
    pub(crate) fn stalled(&self) -> bool {
        let at = self.stalled_at.load(Ordering::Relaxed);
        at != NOT_STALLED && at == self.answered.load(Ordering::Relaxed)
    }

    pub(crate) fn stall_after(&self) -> Duration {
        self.stall_after
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn, health) => {
                Box::pin(async move { health.observed(conn.req_packed_command(cmd).await) })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn, health) => Box::pin(async move {
                health.observed(conn.req_packed_commands(pipeline, offset, count).await)
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(conn) => conn.get_db(),
            Self::Cluster(conn, _) => conn.get_db(),
        }
    }
}

/// A clone of a connection, used for one operation after the checkout has ended.
pub(crate) struct Shared {
    pub(crate) inner: Conn,
    /// Set when the operation breaks the connection, so the pool discards it (a cluster
    /// connection repairs itself, and its flag is read by no one).
    pub(crate) broken: Arc<AtomicBool>,
}

/// The latest failure to open a connection, and a signal to checkouts waiting for one.
///
/// bb8 hands connect errors only to its error sink and lets `get()` wait out the whole checkout
/// timeout; with this, a checkout learns at once that Redis refused and says so.
#[derive(Debug, Default)]
pub(crate) struct ConnectFailures {
    last: Mutex<Option<RedisError>>,
    pub(crate) notify: tokio::sync::Notify,
}

impl ConnectFailures {
    fn record(&self, err: &RedisError) {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(err.clone());
        self.notify.notify_waiters();
    }

    /// The latest connect error, if any.
    pub(crate) fn last(&self) -> Option<RedisError> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// How a pool opens connections.
#[derive(Clone)]
enum Connector {
    /// To one node.
    Direct(Box<RedisConnectionManager>),
    /// To whichever node the Sentinels name as the master, asked at every connect, so that
    /// connections opened after a failover reach the new master.
    Sentinel {
        lookup: Arc<MasterLookup>,
        watch: Arc<MasterWatch>,
    },
}

/// Finds the master the way Redis's guidelines for Sentinel clients say: the first Sentinel
/// that answers `SENTINEL GET-MASTER-ADDR-BY-NAME` names it, and the node must answer `ROLE` as a
/// master. That command names the promoted replica as soon as a failover has promoted it, while
/// `SENTINEL MASTERS` (which the `redis` crate's Sentinel client reads) still names the old
/// master until the failover ends: connections opened in between would reach a master whose
/// writes are about to be discarded (ADR 0019).
#[derive(Debug)]
pub(crate) struct MasterLookup {
    sentinels: Vec<redis::ConnectionInfo>,
    master_name: String,
    /// Database and credentials for the master.
    node: redis::RedisConnectionInfo,
    /// How long one Sentinel, or the node it names, may take to answer before the next is tried.
    step_timeout: Duration,
}

impl MasterLookup {
    /// A connection to the master, and where it is.
    pub(crate) async fn connect(
        &self,
    ) -> Result<(MultiplexedConnection, redis::ConnectionInfo), RedisError> {
        let mut last_error = None;
        for sentinel in &self.sentinels {
            match tokio::time::timeout(self.step_timeout, self.ask(sentinel)).await {
                Ok(Ok(found)) => return Ok(found),
                Ok(Err(e)) => last_error = Some(e),
                Err(_) => {
                    last_error = Some(RedisError::from((
                        redis::ErrorKind::Io,
                        "a Sentinel, or the master it named, did not answer in time",
                        sentinel.addr().to_string(),
                    )));
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| (redis::ErrorKind::Client, "no Sentinel configured").into()))
    }

    /// The master `sentinel` names, connected and checked.
    async fn ask(
        &self,
        sentinel: &redis::ConnectionInfo,
    ) -> Result<(MultiplexedConnection, redis::ConnectionInfo), RedisError> {
        let mut conn = redis::Client::open(sentinel.clone())?
            .get_multiplexed_async_connection()
            .await?;
        let address: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.master_name)
            .query_async(&mut conn)
            .await?;
        let Some((host, port)) = address else {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "the Sentinel does not know the master name",
                format!("{} at {}", self.master_name, sentinel.addr()),
            )));
        };
        let info = redis::ConnectionAddr::Tcp(host, port)
            .into_connection_info()?
            .set_redis_settings(self.node.clone());
        let addr = info.addr().to_string();
        let mut node = redis::Client::open(info.clone())?
            .get_multiplexed_async_connection()
            .await?;
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut node).await?;
        match role.first() {
            Some(Value::BulkString(r)) if r == b"master" => Ok((node, info)),
            _ => Err(RedisError::from((
                redis::ErrorKind::Client,
                "the node a Sentinel named is not a master (yet)",
                addr,
            ))),
        }
    }
}

/// Follows the Sentinels' announcements of a new master, counting them: a connection opened
/// before the latest one may lead to the old master, which keeps accepting writes until the
/// Sentinels get round to demoting it (up to their 10 s `INFO` period after a `SENTINEL
/// FAILOVER`), and whatever it accepts then is discarded when it resyncs as a replica. Checkouts
/// discard such connections (ADR 0019). The announcements: `+failover-state-reconf-slaves`, the
/// moment a failover has seen its replica promoted (from then on `GET-MASTER-ADDR-BY-NAME` names
/// it), and `+switch-master` when the failover ends (for a switch this Sentinel did not lead).
#[derive(Debug)]
pub(crate) struct MasterWatch {
    generation: Arc<AtomicU64>,
    sentinels: Vec<redis::ConnectionInfo>,
    master_name: String,
    connect_timeout: Duration,
    /// The task following the Sentinels, started with the first connection (a runtime is
    /// certain to run then), stopped by [`MasterWatch::stop`] or when the watch is dropped.
    task: Mutex<Option<AbortOnDrop>>,
    /// Set by [`MasterWatch::stop`]: the task is not started again.
    stopped: AtomicBool,
}

/// Aborts a background task when dropped, so that it lives as long as its owner.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl MasterWatch {
    /// The number of master switches announced so far (plus one per lost subscription, when a
    /// switch may have gone unseen; a switch counts twice, at the promotion and at the end).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn start(&self) {
        let mut task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if task.is_none() && !self.stopped.load(Ordering::Acquire) {
            let (generation, sentinels, name, timeout) = (
                self.generation.clone(),
                self.sentinels.clone(),
                self.master_name.clone(),
                self.connect_timeout,
            );
            *task = Some(AbortOnDrop(
                tokio::spawn(follow_switches(generation, sentinels, name, timeout)).abort_handle(),
            ));
        }
    }

    /// Stops following the Sentinels for good (the store is closing).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }
}

/// Subscribes to the announcements on one Sentinel after another (the next when one goes away or
/// stops answering pings), and bumps `generation` at every announcement about `master_name` and
/// at every subscription (a switch may have been announced while none was followed).
async fn follow_switches(
    generation: Arc<AtomicU64>,
    sentinels: Vec<redis::ConnectionInfo>,
    master_name: String,
    connect_timeout: Duration,
) {
    use futures_util::StreamExt as _;
    loop {
        for sentinel in &sentinels {
            let subscribe = async {
                let mut pubsub = redis::Client::open(sentinel.clone())?
                    .get_async_pubsub()
                    .await?;
                pubsub.subscribe(&[SWITCH_MASTER, RECONF_REPLICAS]).await?;
                Ok::<_, RedisError>(pubsub)
            };
            let pubsub = match tokio::time::timeout(connect_timeout, subscribe).await {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(e)) => {
                    tracing::debug!(sentinel = %sentinel.addr(), error = %ErrorChain(&e), "cannot follow this Sentinel");
                    continue;
                }
                Err(_) => {
                    tracing::debug!(sentinel = %sentinel.addr(), "this Sentinel did not answer");
                    continue;
                }
            };
            // A switch may have been announced before this subscription (the first one included:
            // connections can open before it is in place): connections from before are stale.
            generation.fetch_add(1, Ordering::AcqRel);
            let (mut sink, mut messages) = pubsub.split();
            loop {
                tokio::select! {
                    message = messages.next() => {
                        let Some(message) = message else { break };
                        let payload: String = message.get_payload().unwrap_or_default();
                        let mut words = payload.split(' ');
                        let name = match message.get_channel_name() {
                            // "master <master name> <ip> <port>"
                            RECONF_REPLICAS => words.nth(1),
                            // "<master name> <old ip> <old port> <new ip> <new port>"
                            _ => words.next(),
                        };
                        if name == Some(master_name.as_str()) {
                            generation.fetch_add(1, Ordering::AcqRel);
                            tracing::info!(master = %master_name, channel = %message.get_channel_name(), event = %payload, "the Sentinels are naming a new master: connections to the old one are dropped");
                        }
                    }
                    () = tokio::time::sleep(SENTINEL_KEEPALIVE) => {
                        // A Sentinel cut off without a reset would otherwise keep this
                        // subscription quiet for ever: it must answer a ping in time.
                        let ping = tokio::time::timeout(connect_timeout, sink.ping::<Value>()).await;
                        if !matches!(ping, Ok(Ok(_))) {
                            break;
                        }
                    }
                }
            }
            tracing::debug!(sentinel = %sentinel.addr(), "lost the Sentinel subscription");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const SWITCH_MASTER: &str = "+switch-master";
const RECONF_REPLICAS: &str = "+failover-state-reconf-slaves";
/// How often the followed Sentinel must answer a ping.
const SENTINEL_KEEPALIVE: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Direct(_) => "Direct",
            Self::Sentinel { .. } => "Sentinel",
        })
    }
}

/// Creates connections with the configured response timeout and discards broken ones.
#[derive(Debug, Clone)]
pub(crate) struct Manager {
    connector: Connector,
    response_timeout: Duration,
    failures: Arc<ConnectFailures>,
}

impl Manager {
    /// Connections to one node.
    pub(crate) fn direct(
        info: redis::ConnectionInfo,
        response_timeout: Duration,
        failures: Arc<ConnectFailures>,
    ) -> Result<Self, RedisError> {
        Ok(Self {
            connector: Connector::Direct(Box::new(RedisConnectionManager::new(info)?)),
            response_timeout,
            failures,
        })
    }

    /// Connections to the master the Sentinels at `sentinels` know as `master_name`, and the
    /// watch that tells which are to an old master.
    pub(crate) fn sentinel(
        sentinels: Vec<redis::ConnectionInfo>,
        master_name: String,
        node: redis::RedisConnectionInfo,
        response_timeout: Duration,
        connect_timeout: Duration,
        failures: Arc<ConnectFailures>,
    ) -> (Self, Arc<MasterWatch>, Arc<MasterLookup>) {
        let watch = Arc::new(MasterWatch {
            generation: Arc::new(AtomicU64::new(0)),
            sentinels: sentinels.clone(),
            master_name: master_name.clone(),
            connect_timeout,
            task: Mutex::new(None),
            stopped: AtomicBool::new(false),
        });
        let lookup = MasterLookup {
            // Each Sentinel in turn gets a share of the checkout's time, so that a silent one
            // leaves time to ask the next.
            step_timeout: connect_timeout
                / u32::try_from(sentinels.len().max(1)).unwrap_or(u32::MAX),
            sentinels,
            master_name,
            node,
        };
        let lookup = Arc::new(lookup);
        let manager = Self {
            connector: Connector::Sentinel {
                lookup: lookup.clone(),
                watch: watch.clone(),
            },
            response_timeout,
            failures,
        };
        (manager, watch, lookup)
    }
}

impl ManageConnection for Manager {
    type Connection = Connection;
    type Error = RedisError;

    async fn connect(&self) -> Result<Connection, RedisError> {
        let (connected, generation) = match &self.connector {
            Connector::Direct(manager) => (manager.connect().await, 0),
            Connector::Sentinel { lookup, watch } => {
                watch.start();
                // Read before asking: a switch announced meanwhile makes this connection stale
                // at once rather than trusted.
                let generation = watch.generation();
                (lookup.connect().await.map(|(conn, _)| conn), generation)
            }
        };
        let mut inner = connected.inspect_err(|e| self.failures.record(e))?;
        inner.set_response_timeout(self.response_timeout);
        Ok(Connection {
            inner,
            broken: Arc::new(AtomicBool::new(false)),
            generation,
        })
    }

    async fn is_valid(&self, conn: &mut Connection) -> Result<(), RedisError> {
        let result = redis::cmd("PING").query_async::<()>(&mut conn.inner).await;
        conn.broken.store(result.is_err(), Ordering::Relaxed);
        result
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        conn.broken.load(Ordering::Relaxed)
            || matches!(&self.connector, Connector::Sentinel { watch, .. } if watch.generation() != conn.generation)
    }
}

/// True if `err` means the connection it came from can no longer be trusted.
///
/// `READONLY` is one: a node that answers it was demoted to replica (a Sentinel failover), and
/// only a new connection, which asks the Sentinels again, reaches the new master.
pub(crate) fn breaks_connection(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_timeout()
        || err.is_unrecoverable_error()
        || err.code() == Some("READONLY")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_millis(30);

    fn timed_out() -> redis::RedisResult<()> {
        Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())
    }

    fn refused() -> redis::RedisResult<()> {
        Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into())
    }

    #[test]
    fn time_outs_with_nothing_answered_for_the_stall_time_mark_it_stalled() {
        let health = ClusterHealth::new(STALL);
        let _ = health.observed(timed_out());
        let _ = health.observed(timed_out());
        assert!(!health.stalled(), "within the stall time");
        std::thread::sleep(STALL);
        let _ = health.observed(timed_out());
        assert!(health.stalled());
    }

    #[test]
    fn an_answer_between_the_time_outs_starts_the_count_again() {
        for answer in [Ok(()), refused()] {
            let health = ClusterHealth::new(STALL);
            let _ = health.observed(timed_out());
            std::thread::sleep(STALL);
            let _ = health.observed(answer);
            let _ = health.observed(timed_out());
            assert!(!health.stalled(), "an answer came between");
            std::thread::sleep(STALL);
            let _ = health.observed(timed_out());
            assert!(health.stalled(), "none since the time-out after it");
        }
    }

    #[test]
    fn an_answer_after_the_mark_takes_it_back() {
        let health = ClusterHealth::new(STALL);
        let _ = health.observed(timed_out());
        std::thread::sleep(STALL);
        let _ = health.observed(timed_out());
        assert!(health.stalled());
        assert!(health.observed(Ok(())).is_ok());
        assert!(!health.stalled());
    }
}
