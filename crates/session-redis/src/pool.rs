//! Connections: the bb8 pool (bb8-redis's manager to one node, or to the master Sentinel names,
//! plus a broken flag so a connection that failed is discarded) and the cluster client's.
//!
//! bb8-redis reports connections as never broken, and a `MultiplexedConnection` does not reconnect,
//! so without this a connection killed by the server (restart, `CLIENT KILL`, failover) would stay
//! in the pool and fail every operation that checks it out until a checkout ping caught it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bb8_redis::RedisConnectionManager;
use bb8_redis::bb8::ManageConnection;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// A pooled connection and whether it has failed. The flag is shared with the connection's
/// [`Shared`] clones, so a failure seen on a clone discards the pooled connection too.
pub(crate) struct Connection {
    pub(crate) inner: MultiplexedConnection,
    pub(crate) broken: Arc<AtomicBool>,
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
    /// `MOVED`/`ASK`, waits out `TRYAGAIN`/`CLUSTERDOWN` and reconnects by itself.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
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
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
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
    Sentinel(Arc<tokio::sync::Mutex<SentinelClient>>),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Direct(_) => "Direct",
            Self::Sentinel(_) => "Sentinel",
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

    /// Connections to the master the Sentinels at `sentinels` know as `master_name`.
    pub(crate) fn sentinel(
        sentinels: Vec<redis::ConnectionInfo>,
        master_name: String,
        node: redis::RedisConnectionInfo,
        response_timeout: Duration,
        failures: Arc<ConnectFailures>,
    ) -> Result<Self, RedisError> {
        let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(node);
        let client = SentinelClient::build(
            sentinels,
            master_name,
            Some(node),
            SentinelServerType::Master,
        )?;
        Ok(Self {
            connector: Connector::Sentinel(Arc::new(tokio::sync::Mutex::new(client))),
            response_timeout,
            failures,
        })
    }
}

impl ManageConnection for Manager {
    type Connection = Connection;
    type Error = RedisError;

    async fn connect(&self) -> Result<Connection, RedisError> {
        let connected = match &self.connector {
            Connector::Direct(manager) => manager.connect().await,
            Connector::Sentinel(client) => {
                // The lock serializes lookups, not operations: it is held while one connection
                // is opened, and the Sentinels are asked afresh each time.
                let client = client.lock().await.async_get_client().await;
                match client {
                    Ok(client) => client.get_multiplexed_async_connection().await,
                    Err(e) => Err(e),
                }
            }
        };
        let mut inner = connected.inspect_err(|e| self.failures.record(e))?;
        inner.set_response_timeout(self.response_timeout);
        Ok(Connection {
            inner,
            broken: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn is_valid(&self, conn: &mut Connection) -> Result<(), RedisError> {
        let result = redis::cmd("PING").query_async::<()>(&mut conn.inner).await;
        conn.broken.store(result.is_err(), Ordering::Relaxed);
        result
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        conn.broken.load(Ordering::Relaxed)
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
