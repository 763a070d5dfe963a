//! Conversion of diesel, diesel-async pool and bb8 errors into [`SessionError`], in one place.

use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::PoolError;
use session_core::SessionError;

/// Converts a diesel query error into the [`SessionError`] every backend uses: serialization
/// failures and deadlocks are [`SessionError::SerializationFailure`] (which
/// [`session_core::ScopeError`] reports and [`crate::DieselProvider::transaction_retrying`] runs
/// again), lost connections `Unavailable`, anything else `Backend` with the driver's error as its
/// source. For a scope's closure: `.map_err(|e| from_diesel("postgres", e))`.
pub fn from_diesel(backend: &'static str, err: DieselError) -> SessionError {
    match err {
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => {
            SessionError::SerializationFailure {
                backend,
                source: Box::new(err),
            }
        }
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        )
        | DieselError::BrokenTransactionManager => SessionError::Unavailable {
            backend,
            source: Box::new(err),
        },
        DieselError::DeserializationError(_) => SessionError::Decode {
            backend,
            handle: None,
            reason: err.to_string(),
        },
        // diesel-async maps only 40001 to `SerializationFailure`; a deadlock (40P01) arrives as an
        // unknown error. The server chose this transaction as the victim: running it again is the
        // remedy, as for a serialization failure. (Matched by message: the SQLSTATE is not exposed.)
        // MySQL and MariaDB report a deadlock (1213) the same way, in their own words.
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, ref info)
            if info.message().contains("deadlock detected")
                || info
                    .message()
                    .starts_with("Deadlock found when trying to get lock") =>
        {
            SessionError::SerializationFailure {
                backend,
                source: Box::new(err),
            }
        }
        // A connection whose server went away surfaces as an unknown database error whose message
        // says so; it is temporary like any other lost connection.
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, ref info)
            if is_connection_loss(info.message()) =>
        {
            SessionError::Unavailable {
                backend,
                source: Box::new(err),
            }
        }
        other => SessionError::Backend {
            backend,
            source: Box::new(other),
        },
    }
}

fn is_connection_loss(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "connection closed",
        "terminating connection",
        "broken pipe",
        "connection reset",
        "server closed the connection",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

/// Converts a checkout error.
pub(crate) fn from_pool(
    backend: &'static str,
    err: bb8::RunError<PoolError>,
    checkout_timeout: Duration,
) -> SessionError {
    match err {
        bb8::RunError::TimedOut => SessionError::Timeout {
            backend,
            operation: "checkout",
            after: checkout_timeout,
        },
        bb8::RunError::User(PoolError::ConnectionError(e)) => SessionError::Unavailable {
            backend,
            source: Box::new(e),
        },
        bb8::RunError::User(PoolError::QueryError(e)) => from_diesel(backend, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadlock_victim_is_temporary_like_a_serialization_failure() {
        let deadlock = DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("deadlock detected".to_owned()),
        );
        let err = from_diesel("postgres", deadlock);
        assert!(
            matches!(err, SessionError::SerializationFailure { .. }) && err.is_temporary(),
            "{err:?}"
        );
        let other = DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("syntax error".to_owned()),
        );
        assert!(!from_diesel("postgres", other).is_temporary());
    }
}
