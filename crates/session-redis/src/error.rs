//! Conversion of Redis and pool errors into [`SessionError`], in one place.

use std::time::Duration;

use redis::RedisError;
use session_core::{SessionError, SessionHandle};

use crate::pool::breaks_connection;

pub(crate) const BACKEND: &str = "redis";

/// Converts a command's error. Data that does not fit the session schema is `Decode`, naming the
/// session; connectivity, and a Cluster or Sentinel in the middle of a change of owner, is
/// `Unavailable`; a reply that did not come in time is `Timeout`.
pub(crate) fn from_redis(
    err: RedisError,
    handle: Option<&SessionHandle>,
    response_timeout: Duration,
) -> SessionError {
    if err.is_timeout() {
        return SessionError::Timeout {
            backend: BACKEND,
            operation: "command",
            after: response_timeout,
        };
    }
    // A cluster or a master between owners (failover, resharding, a replica still loading):
    // temporary, like a lost connection. The cluster client retries these before giving up.
    // A script refused a key it found (not declared) because the key's slot is being migrated
    // away from this node: the migration ends, and the operation can then run whole.
    let migrating = err.to_string().contains("non local key");
    let in_transition = migrating
        || matches!(
            err.code(),
            Some("CLUSTERDOWN" | "TRYAGAIN" | "MASTERDOWN" | "LOADING" | "MOVED" | "ASK")
        );
    if in_transition || err.is_connection_refusal() || breaks_connection(&err) {
        return SessionError::Unavailable {
            backend: BACKEND,
            source: Box::new(err),
        };
    }
    if err.code() == Some("WRONGTYPE") || err.kind() == redis::ErrorKind::UnexpectedReturnType {
        return SessionError::Decode {
            backend: BACKEND,
            handle: handle.cloned(),
            reason: err.to_string(),
        };
    }
    SessionError::Backend {
        backend: BACKEND,
        source: Box::new(err),
    }
}

/// Converts a checkout failure.
pub(crate) fn from_pool(
    err: bb8::RunError<RedisError>,
    checkout_timeout: Duration,
    response_timeout: Duration,
) -> SessionError {
    match err {
        bb8::RunError::TimedOut => SessionError::Timeout {
            backend: BACKEND,
            operation: "checkout",
            after: checkout_timeout,
        },
        bb8::RunError::User(err) => match from_redis(err, None, response_timeout) {
            // Failing to connect at all is unavailability, whatever the driver called it.
            SessionError::Backend { source, .. } => SessionError::Unavailable {
                backend: BACKEND,
                source,
            },
            other => other,
        },
    }
}

/// A `Decode` error for `handle`.
pub(crate) fn decode(handle: &SessionHandle, reason: impl Into<String>) -> SessionError {
    SessionError::Decode {
        backend: BACKEND,
        handle: Some(handle.clone()),
        reason: reason.into(),
    }
}
