//! The retry layer: temporary errors on idempotent operations are retried with backoff.

use std::future::Future;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use backon::{BackoffBuilder as _, ExponentialBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{ErrorChain, Result, SessionError};
use crate::policy::SessionPolicy;
use crate::session::{IssuedSession, NewUserSession, Updated, UserSession};
use crate::store::{Imported, ScanCursor, ScanPage, StorageDump, UserSessionStore};
use crate::token::{SessionHandle, SessionToken};

/// When the [`Retrying`] layer tries an operation again. Durations accept `5ms`, `1s`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts after the first. `0` turns retrying off. Default `2`.
    pub max_retries: u32,
    /// Wait before the first retry; each later wait doubles. Each wait gets a random jitter of up
    /// to its own length, so processes that failed together do not retry together. Default `5ms`.
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// Longest wait between attempts, jitter included. Default `100ms`.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Also retry [`SessionError::Timeout`]. Default `false`: against a stalled server each retry
    /// adds a whole time-out to the caller's wait, and the caller's own deadline is usually shorter.
    pub retry_timeouts: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(100),
            retry_timeouts: false,
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    #[must_use]
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// Whether `err` is worth another attempt under this policy.
    #[must_use]
    pub fn retries(&self, err: &SessionError) -> bool {
        err.is_temporary() && (self.retry_timeouts || !matches!(err, SessionError::Timeout { .. }))
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// [`SessionError::Config`] naming the key.
    pub fn validate(&self) -> Result<()> {
        if self.max_retries > 10 {
            return Err(SessionError::config(
                "max_retries",
                "at most 10; a backend down for longer should fail fast",
            ));
        }
        if self.min_delay > self.max_delay {
            return Err(SessionError::config(
                "min_delay",
                "must not exceed max_delay",
            ));
        }
        Ok(())
    }

    /// The waits before each retry under this policy: `max_retries` of them, growing from
    /// `min_delay`, with jitter, never over `max_delay`.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        // backon's jitter may take a wait past `max_delay`; the policy says "jitter included".
        let max = self.max_delay;
        self.backoff().build().map(move |d| d.min(max))
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries as usize)
            .with_jitter()
    }
}

/// Retries the idempotent operations (`get`, `touch`, `list_by_user`, `purge_expired`, `health`)
/// when they fail with a temporary error ([`RetryPolicy::retries`]), waiting with exponential
/// backoff and jitter between attempts. (A retried `purge_expired` reports what its last attempt
/// removed.) A retry runs on another pooled connection: the backend discarded the
/// one that failed. Writes (`create`, `update`, `rotate`, the deletes) are never repeated: their
/// lost reply may belong to a write that happened. Forwards every method.
#[derive(Debug, Clone)]
pub struct Retrying<S> {
    inner: S,
    policy: RetryPolicy,
}

impl<S> Retrying<S> {
    /// Wraps `inner`.
    #[must_use]
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: UserSessionStore> Retrying<S> {
    async fn retry<T, F, Fut>(&self, op: &'static str, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T>> + Send,
    {
        let mut last = match call().await {
            Err(e) if self.policy.retries(&e) => e,
            done => return done,
        };
        for delay in self.policy.backoff().build() {
            let delay = delay.min(self.policy.max_delay);
            tracing::debug!(target: "session", backend = self.inner.backend(), op,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error = %ErrorChain(&last), "session.retry");
            tokio::time::sleep(delay).await;
            last = match call().await {
                Err(e) if self.policy.retries(&e) => e,
                done => return done,
            };
        }
        Err(last)
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<S: UserSessionStore> UserSessionStore for Retrying<S> {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn policy(&self) -> &SessionPolicy {
        self.inner.policy()
    }
    async fn create(&self, new: NewUserSession) -> Result<IssuedSession> {
        self.inner.create(new).await
    }
    async fn get(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        self.retry("get", || self.inner.get(token)).await
    }
    async fn touch(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        // A repeated touch is a read or the same slide of the idle expiry: idempotent.
        self.retry("touch", || self.inner.touch(token)).await
    }
    async fn update(&self, session: &UserSession) -> Result<Updated> {
        self.inner.update(session).await
    }
    async fn rotate(&self, token: &SessionToken) -> Result<Option<IssuedSession>> {
        self.inner.rotate(token).await
    }
    async fn delete(&self, token: &SessionToken) -> Result<bool> {
        self.inner.delete(token).await
    }
    async fn delete_by_handle(&self, handle: &SessionHandle) -> Result<bool> {
        self.inner.delete_by_handle(handle).await
    }
    async fn list_by_user(&self, user_id: &str) -> Result<Vec<UserSession>> {
        self.retry("list_by_user", || self.inner.list_by_user(user_id))
            .await
    }
    async fn delete_by_user(&self, user_id: &str, except: Option<&SessionHandle>) -> Result<u64> {
        self.inner.delete_by_user(user_id, except).await
    }
    async fn purge_expired(&self) -> Result<u64> {
        self.retry("purge_expired", || self.inner.purge_expired())
            .await
    }
    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage> {
        // A page is a read from a cursor the caller still holds: repeating it is safe.
        self.retry("scan", || self.inner.scan(cursor, limit)).await
    }
    async fn import(&self, session: &UserSession) -> Result<Imported> {
        // Not retried: a repeat after a lost reply would answer `AlreadyPresent` for the copy the
        // first attempt stored, and the caller's counts would be wrong.
        self.inner.import(session).await
    }
    async fn delete_with_tombstone(
        &self,
        handle: &SessionHandle,
        until: SystemTime,
    ) -> Result<bool> {
        // Not retried, as `delete_by_handle`: a repeat after a lost reply would answer false.
        self.inner.delete_with_tombstone(handle, until).await
    }
    async fn health(&self) -> Result<()> {
        self.retry("health", || self.inner.health()).await
    }
    fn needs_purge(&self) -> bool {
        self.inner.needs_purge()
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

#[async_trait]
impl<S: StorageDump> StorageDump for Retrying<S> {
    async fn dump_raw(&self) -> Result<Vec<String>> {
        self.inner.dump_raw().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_retried_only_when_asked() {
        let timeout = SessionError::Timeout {
            backend: "redis",
            operation: "get",
            after: Duration::from_secs(1),
        };
        let refused = SessionError::Unavailable {
            backend: "redis",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        };
        let policy = RetryPolicy::default();
        assert!(!policy.retries(&timeout));
        assert!(policy.retries(&refused));
        assert!(!policy.retries(&SessionError::NotFound));
        let patient = RetryPolicy {
            retry_timeouts: true,
            ..RetryPolicy::default()
        };
        assert!(patient.retries(&timeout));
        assert_eq!(RetryPolicy::default().backoff().build().count(), 2);
        assert_eq!(RetryPolicy::none().backoff().build().count(), 0);
    }
}
