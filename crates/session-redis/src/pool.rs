//! The bb8 pool: bb8-redis's manager, plus a broken flag so a connection that failed is discarded.
//!
//! bb8-redis reports connections as never broken, and a `MultiplexedConnection` does not reconnect,
//! so without this a connection killed by the server (restart, `CLIENT KILL`, failover) would stay
//! in the pool and fail every operation that checks it out until a checkout ping caught it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bb8_redis::RedisConnectionManager;
use bb8_redis::bb8::ManageConnection;
use redis::RedisError;
use redis::aio::MultiplexedConnection;

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
            inner: self.inner.clone(),
            broken: self.broken.clone(),
        }
    }
}

/// A clone of a pooled connection, used for one operation after the checkout has ended.
pub(crate) struct Shared {
    pub(crate) inner: MultiplexedConnection,
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

/// Creates connections with the configured response timeout and discards broken ones.
#[derive(Debug, Clone)]
pub(crate) struct Manager {
    inner: RedisConnectionManager,
    response_timeout: Duration,
    failures: Arc<ConnectFailures>,
}

impl Manager {
    pub(crate) fn new(
        info: redis::ConnectionInfo,
        response_timeout: Duration,
        failures: Arc<ConnectFailures>,
    ) -> Result<Self, RedisError> {
        Ok(Self {
            inner: RedisConnectionManager::new(info)?,
            response_timeout,
            failures,
        })
    }
}

impl ManageConnection for Manager {
    type Connection = Connection;
    type Error = RedisError;

    async fn connect(&self) -> Result<Connection, RedisError> {
        let mut inner = self
            .inner
            .connect()
            .await
            .inspect_err(|e| self.failures.record(e))?;
        inner.set_response_timeout(self.response_timeout);
        Ok(Connection {
            inner,
            broken: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn is_valid(&self, conn: &mut Connection) -> Result<(), RedisError> {
        let result = self.inner.is_valid(&mut conn.inner).await;
        conn.broken.store(result.is_err(), Ordering::Relaxed);
        result
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        conn.broken.load(Ordering::Relaxed)
    }
}

/// True if `err` means the connection it came from can no longer be trusted.
pub(crate) fn breaks_connection(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_timeout()
        || err.is_unrecoverable_error()
}
