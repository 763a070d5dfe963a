//! The one error type every backend and the facade return.

use std::time::Duration;

use crate::token::SessionHandle;

/// A boxed error kept as a `source`, so the driver's own chain survives.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for results whose error is [`SessionError`].
pub type Result<T, E = SessionError> = std::result::Result<T, E>;

/// Everything that can go wrong in a session store or a database scope.
///
/// Backends convert their driver errors into this type in one place each, keeping the driver error as
/// the [`std::error::Error::source`]. Match on the kind, and use [`SessionError::is_temporary`] to
/// decide whether a retry can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The presented token is not a well-formed session token; no store was asked.
    #[error("invalid session token: {reason}")]
    InvalidToken {
        /// What is wrong with it (never the token itself).
        reason: &'static str,
    },

    /// A caller-supplied value is malformed.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The offending field.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },

    /// A value exceeds the size the policy allows.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },

    /// The session does not exist or has expired.
    #[error("session not found or expired")]
    NotFound,

    /// A compare-and-set lost: the session changed since the caller read it.
    #[error("session was modified concurrently (expected version {expected}, found {actual})")]
    Conflict {
        /// The version the caller read.
        expected: u64,
        /// The version now stored.
        actual: u64,
    },

    /// A configuration value is missing or invalid.
    #[error("configuration error in `{key}`: {reason}")]
    Config {
        /// The configuration key (e.g. `idle_timeout` or `SESSION_STORE_URL`).
        key: String,
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// The backend cannot be reached (connection refused, reset, pool broken). Temporary.
    #[error("{backend} is unavailable")]
    Unavailable {
        /// The backend name, e.g. `redis`.
        backend: &'static str,
        /// The underlying driver error.
        #[source]
        source: BoxError,
    },

    /// An operation or a pool checkout did not finish in time. Temporary.
    #[error("{backend} {operation} timed out after {after:?}")]
    Timeout {
        /// The backend name.
        backend: &'static str,
        /// What timed out, e.g. `checkout`.
        operation: &'static str,
        /// The limit that was exceeded.
        after: Duration,
    },

    /// A transaction lost to a concurrent one: a serialization failure of a serializable or
    /// repeatable-read transaction (SQLSTATE 40001), or the victim of a deadlock (40P01).
    /// Temporary: run the whole transaction again.
    #[error("{backend} transaction could not be serialized with a concurrent one; retry it")]
    SerializationFailure {
        /// The backend name.
        backend: &'static str,
        /// The underlying driver error.
        #[source]
        source: BoxError,
    },

    /// The backend reported an error that is neither a connectivity problem nor bad data.
    #[error("{backend} error")]
    Backend {
        /// The backend name.
        backend: &'static str,
        /// The underlying driver error.
        #[source]
        source: BoxError,
    },

    /// Stored data could not be decoded into a session.
    #[error("{backend} holds an undecodable session{}: {reason}", handle.as_ref().map(|h| format!(" {h}")).unwrap_or_default())]
    Decode {
        /// The backend name.
        backend: &'static str,
        /// The session's public handle, when known.
        handle: Option<SessionHandle>,
        /// What could not be decoded.
        reason: String,
    },

    /// The operation is not available on this backend or in this mode.
    #[error("{operation} is not supported by {backend}: {reason}")]
    Unsupported {
        /// The backend name.
        backend: &'static str,
        /// The operation.
        operation: &'static str,
        /// Why.
        reason: &'static str,
    },

    /// The store or provider was closed by `close()`/`shutdown()`.
    #[error("{backend} has been closed")]
    Closed {
        /// The backend name.
        backend: &'static str,
    },
}

impl SessionError {
    /// True when the same call may succeed if retried later (connectivity, time-outs, and a
    /// transaction that lost a serialization conflict).
    ///
    /// A [`SessionError::Conflict`] is not temporary: retrying the same write loses again; re-read and
    /// reapply instead.
    #[must_use]
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. } | Self::Timeout { .. } | Self::SerializationFailure { .. }
        )
    }

    /// True for a lost compare-and-set.
    #[must_use]
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }

    /// Builds a [`SessionError::Config`].
    pub fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// Builds a [`SessionError::InvalidInput`].
    pub fn invalid_input(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidInput {
            field,
            reason: reason.into(),
        }
    }
}

/// Shows an error followed by each of its [`std::error::Error::source`]s, joined with `": "`, for
/// logs: [`SessionError`]'s own `Display` leaves its cause out (`postgres error`), and a log line
/// needs it (`postgres error: connection refused`). A source whose message the previous one
/// already ends with is not repeated.
///
/// ```
/// use session_core::{ErrorChain, SessionError};
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
/// let err = SessionError::Unavailable { backend: "redis", source: Box::new(io) };
/// assert_eq!(ErrorChain(&err).to_string(), "redis is unavailable: connection refused");
/// // In a log: tracing::warn!(error = %ErrorChain(&err), "session.failed");
/// ```
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut previous = self.0.to_string();
        f.write_str(&previous)?;
        let mut next = self.0.source();
        while let Some(source) = next {
            let message = source.to_string();
            if !message.is_empty() && !previous.ends_with(&message) {
                write!(f, ": {message}")?;
            }
            previous = message;
            next = source.source();
        }
        Ok(())
    }
}

impl std::fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_shows_every_source() {
        #[derive(Debug, thiserror::Error)]
        #[error("pool checkout failed")]
        struct Checkout(#[source] std::io::Error);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let err = SessionError::Backend {
            backend: "postgres",
            source: Box::new(Checkout(io)),
        };
        assert_eq!(
            err.to_string(),
            "postgres error",
            "Display alone drops the cause"
        );
        assert_eq!(
            ErrorChain(&err).to_string(),
            "postgres error: pool checkout failed: connection refused"
        );
        assert_eq!(
            ErrorChain(&SessionError::NotFound).to_string(),
            "session not found or expired"
        );
        // A source already in its parent's message is not repeated.
        #[derive(Debug, thiserror::Error)]
        #[error("query failed: {0}")]
        struct Echo(#[source] std::io::Error);
        let echo = Echo(std::io::Error::other("broken pipe"));
        assert_eq!(ErrorChain(&echo).to_string(), "query failed: broken pipe");
    }

    #[test]
    fn temporary_kinds_are_connectivity_and_timeouts() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(
            SessionError::Unavailable {
                backend: "redis",
                source: Box::new(io)
            }
            .is_temporary()
        );
        assert!(
            SessionError::Timeout {
                backend: "redis",
                operation: "checkout",
                after: Duration::from_millis(5)
            }
            .is_temporary()
        );
        assert!(
            !SessionError::Conflict {
                expected: 1,
                actual: 2
            }
            .is_temporary()
        );
        assert!(!SessionError::NotFound.is_temporary());
    }

    #[test]
    fn sources_are_kept_not_stringified() {
        use std::error::Error as _;
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let err = SessionError::Backend {
            backend: "postgres",
            source: Box::new(io),
        };
        let source = err.source().expect("source kept");
        assert!(source.downcast_ref::<std::io::Error>().is_some());
    }

    #[test]
    fn config_error_names_the_key() {
        let err = SessionError::config("idle_timeout", "must be greater than zero");
        assert_eq!(
            err.to_string(),
            "configuration error in `idle_timeout`: must be greater than zero"
        );
    }
}
