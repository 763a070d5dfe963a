//! The instrumentation layer: tracing spans and lifecycle events for any store.
//!
//! Every event names the session by its public handle; the token never reaches a log line, because
//! neither [`SessionToken`]'s `Debug`/`Display` nor any error message contains it.
//!
//! Events (target `session`): `session.created`, `session.touched`, `session.rotated`,
//! `session.revoked`, `session.expired` at INFO; reads and misses at DEBUG; failures at WARN.
//! Each carries `backend`, `op`, `latency_us` and, where one session is concerned, `handle`.
//!
//! Metrics (through the `metrics` facade; install any recorder, e.g. Prometheus, before the first
//! operation: each operation's metric handles are registered with the recorder in force at its
//! first use and kept):
//! - `session_operations_total{backend, op, outcome}`: a counter; outcome is `ok`, `miss` (no live
//!   session), `conflict` or `error`;
//! - `session_operation_duration_seconds{backend, op}`: a histogram.

use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use tracing::Instrument as _;

use crate::error::{ErrorChain, Result, SessionError};
use crate::policy::SessionPolicy;
use crate::session::{IssuedSession, NewUserSession, Updated, UserSession};
use crate::store::{Imported, ScanCursor, ScanPage, StorageDump, UserSessionStore};
use crate::token::{SessionHandle, SessionToken};

/// Wraps a store and traces every operation. Forwards every method unchanged.
#[derive(Debug, Clone)]
pub struct Instrumented<S> {
    inner: S,
    metrics: Arc<OpMetrics>,
}

/// The operations measured; each indexes its slot in [`OpMetrics`].
#[derive(Clone, Copy)]
enum Op {
    Create,
    Get,
    Touch,
    Update,
    Rotate,
    Delete,
    DeleteByHandle,
    ListByUser,
    DeleteByUser,
    PurgeExpired,
    Scan,
    Import,
    DeleteWithTombstone,
    Health,
}

impl Op {
    const COUNT: usize = Op::Health as usize + 1;

    /// The `op` label.
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Get => "get",
            Op::Touch => "touch",
            Op::Update => "update",
            Op::Rotate => "rotate",
            Op::Delete => "delete",
            Op::DeleteByHandle => "delete_by_handle",
            Op::ListByUser => "list_by_user",
            Op::DeleteByUser => "delete_by_user",
            Op::PurgeExpired => "purge_expired",
            Op::Scan => "scan",
            Op::Import => "import",
            Op::DeleteWithTombstone => "delete_with_tombstone",
            Op::Health => "health",
        }
    }
}

/// An operation's outcome; each indexes its counter in [`Handles::outcomes`].
#[derive(Clone, Copy)]
enum Outcome {
    Ok,
    Miss,
    Conflict,
    Error,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Miss,
        Outcome::Conflict,
        Outcome::Error,
    ];

    /// The `outcome` label.
    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Miss => "miss",
            Outcome::Conflict => "conflict",
            Outcome::Error => "error",
        }
    }
}

/// One operation's metric handles.
struct Handles {
    outcomes: [metrics::Counter; Outcome::ALL.len()],
    duration: metrics::Histogram,
}

/// Metric handles, registered with the recorder on an operation's first use and kept. Looking a
/// metric up by name and labels on every call (what `metrics::counter!` does) allocates its label
/// set each time, and on the Redis path at 32 tasks those allocations, freed on other threads,
/// contended in the allocator (docs/benchmarks.md, facade overhead). The recorder must therefore
/// be installed before the first operation, as `SessionManager`'s callers do at start-up.
#[derive(Default)]
struct OpMetrics([OnceLock<Handles>; Op::COUNT]);

impl std::fmt::Debug for OpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpMetrics")
    }
}

impl OpMetrics {
    /// Records one operation.
    fn record(&self, backend: &'static str, op: Op, outcome: Outcome, start: Instant) {
        let handles = self.0[op as usize].get_or_init(|| {
            let name = op.name();
            Handles {
                outcomes: Outcome::ALL.map(|outcome| {
                    metrics::counter!("session_operations_total", "backend" => backend, "op" => name, "outcome" => outcome.name())
                }),
                duration: metrics::histogram!("session_operation_duration_seconds", "backend" => backend, "op" => name),
            }
        });
        handles.outcomes[outcome as usize].increment(1);
        handles.duration.record(start.elapsed().as_secs_f64());
    }
}

impl<S> Instrumented<S> {
    /// Wraps `inner`.
    #[must_use]
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            metrics: Arc::default(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

fn micros(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn outcome<T>(result: &Result<T>, hit: impl FnOnce(&T) -> bool) -> Outcome {
    match result {
        Ok(value) if hit(value) => Outcome::Ok,
        Ok(_) => Outcome::Miss,
        Err(e) if e.is_conflict() => Outcome::Conflict,
        Err(_) => Outcome::Error,
    }
}

fn failed(
    backend: &'static str,
    op: &'static str,
    handle: Option<&SessionHandle>,
    start: Instant,
    err: &SessionError,
) {
    let handle = handle.map(SessionHandle::fingerprint);
    if err.is_conflict() {
        tracing::debug!(target: "session", backend, op, handle, latency_us = micros(start), error = %ErrorChain(err), "session.conflict");
    } else {
        tracing::warn!(target: "session", backend, op, handle, latency_us = micros(start), error = %ErrorChain(err), "session.failed");
    }
}

macro_rules! span {
    ($self:ident, $op:literal) => {
        tracing::info_span!(target: "session", "session", backend = $self.inner.backend(), op = $op)
    };
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<S: UserSessionStore> UserSessionStore for Instrumented<S> {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn policy(&self) -> &SessionPolicy {
        self.inner.policy()
    }

    async fn create(&self, new: NewUserSession) -> Result<IssuedSession> {
        let (backend, start) = (self.backend(), Instant::now());
        let result = self
            .inner
            .create(new)
            .instrument(span!(self, "create"))
            .await;
        match &result {
            Ok(issued) => tracing::info!(target: "session", backend, op = "create",
                handle = %issued.session.handle, user_id = %issued.session.user_id,
                latency_us = micros(start), "session.created"),
            Err(e) => failed(backend, "create", None, start, e),
        }
        self.metrics
            .record(backend, Op::Create, outcome(&result, |_| true), start);
        result
    }

    async fn get(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        let (backend, start) = (self.backend(), Instant::now());
        let result = self.inner.get(token).instrument(span!(self, "get")).await;
        match &result {
            Ok(found) => {
                tracing::debug!(target: "session", backend, op = "get", handle = %token.handle(),
                hit = found.is_some(), latency_us = micros(start), "session.read")
            }
            Err(e) => failed(backend, "get", Some(token.handle()), start, e),
        }
        self.metrics
            .record(backend, Op::Get, outcome(&result, Option::is_some), start);
        result
    }

    async fn touch(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        let (backend, start) = (self.backend(), Instant::now());
        let result = self
            .inner
            .touch(token)
            .instrument(span!(self, "touch"))
            .await;
        match &result {
            Ok(Some(s)) => {
                tracing::debug!(target: "session", backend, op = "touch", handle = %token.handle(),
                idle_expires_at = ?s.idle_expires_at, latency_us = micros(start), "session.touched")
            }
            Ok(None) => {
                tracing::debug!(target: "session", backend, op = "touch", handle = %token.handle(),
                hit = false, latency_us = micros(start), "session.read")
            }
            Err(e) => failed(backend, "touch", Some(token.handle()), start, e),
        }
        self.metrics
            .record(backend, Op::Touch, outcome(&result, Option::is_some), start);
        result
    }

    async fn update(&self, session: &UserSession) -> Result<Updated> {
        let (backend, start) = (self.backend(), Instant::now());
        let result = self
            .inner
            .update(session)
            .instrument(span!(self, "update"))
            .await;
        match &result {
            Ok(Updated {
                session: s,
                rotated: Some(_),
            }) => tracing::info!(target: "session", backend, op = "update",
                old_handle = %session.handle, handle = %s.handle, is_root = s.is_root,
                version = s.version, latency_us = micros(start), "session.rotated"),
            Ok(Updated { session: s, .. }) => tracing::debug!(target: "session", backend,
                op = "update", handle = %s.handle, version = s.version,
                latency_us = micros(start), "session.updated"),
            Err(e) => failed(backend, "update", Some(&session.handle), start, e),
        }
        self.metrics
            .record(backend, Op::Update, outcome(&result, |_| true), start);
        result
    }

    async fn rotate(&self, token: &SessionToken) -> Result<Option<IssuedSession>> {
        let (backend, start) = (self.backend(), Instant::now());
        let result = self
            .inner
            .rotate(token)
            .instrument(span!(self, "rotate"))
            .await;
        match &result {
            Ok(Some(issued)) => tracing::info!(target: "session", backend, op = "rotate",
                old_handle = %token.handle(), handle = %issued.session.handle,
                latency_us = micros(start), "session.rotated"),
            Ok(None) => {
                tracing::debug!(target: "session", backend, op = "rotate", handle = %token.handle(),
                hit = false, latency_us = micros(start), "session.read")
            }
            Err(e) => failed(backend, "rotate", Some(token.handle()), start, e),
        }
        self.metrics.record(
            backend,
            Op::Rotate,
            outcome(&result, Option::is_some),
            start,
        );
        result
    }

    async fn delete(&self, token: &SessionToken) -> Result<bool> {
        let (backend, start) = (self.backend(), Instant::now());
        let result = self
            .inner
            .delete(token)
            .instrument(span!(self, "delete"))
            .await;
        match &result {
            Ok(removed) => {
                tracing::info!(target: "session", backend, op = "delete", handle = %token.handle(),
                removed, latency_us = micros(start), "session.revoked")
            }
            Err(e) => failed(backend, "delete", Some(token.handle()), start, e),
        }
        self.metrics.record(
            backend,
            Op::Delete,
            outcome(&result, |removed| *removed),
            start,
        );
        result
    }

    async fn delete_by_handle(&self, handle: &SessionHandle) -> Result<bool> {
        let (backend, start) = (self.backend(), Instant::now());
        let result = self
            .inner
            .delete_by_handle(handle)
            .instrument(span!(self, "delete_by_handle"))
            .await;
        match &result {
            Ok(removed) => {
                tracing::info!(target: "session", backend, op = "delete_by_handle", handle = %handle,
                removed, latency_us = micros(start), "session.revoked")
            }
            Err(e) => failed(backend, "delete_by_handle", Some(handle), start, e),
        }
        self.metrics.record(
            backend,
            Op::DeleteByHandle,
            outcome(&result, |removed| *removed),
            start,
        );
        result
    }

    async fn list_by_user(&self, user_id: &str) -> Result<Vec<UserSession>> {
        let (backend, start) = (self.backend(), Instant::now());
        let result = self
            .inner
            .list_by_user(user_id)
            .instrument(span!(self, "list_by_user"))
            .await;
        match &result {
            Ok(list) => tracing::debug!(target: "session", backend, op = "list_by_user", user_id,
                count = list.len(), latency_us = micros(start), "session.listed"),
            Err(e) => failed(backend, "list_by_user", None, start, e),
        }
        self.metrics
            .record(backend, Op::ListByUser, outcome(&result, |_| true), start);
        result
    }

    async fn delete_by_user(&self, user_id: &str, except: Option<&SessionHandle>) -> Result<u64> {
        let (backend, start) = (self.backend(), Instant::now());
        let result = self
            .inner
            .delete_by_user(user_id, except)
            .instrument(span!(self, "delete_by_user"))
            .await;
        match &result {
            Ok(removed) => {
                tracing::info!(target: "session", backend, op = "delete_by_user", user_id,
                except = except.map(SessionHandle::as_str), removed, latency_us = micros(start), "session.revoked")
            }
            Err(e) => failed(backend, "delete_by_user", None, start, e),
        }
        self.metrics
            .record(backend, Op::DeleteByUser, outcome(&result, |_| true), start);
        result
    }

    async fn purge_expired(&self) -> Result<u64> {
        let (backend, start) = (self.backend(), Instant::now());
        let result = self
            .inner
            .purge_expired()
            .instrument(span!(self, "purge_expired"))
            .await;
        match &result {
            Ok(removed) => {
                tracing::info!(target: "session", backend, op = "purge_expired", removed,
                latency_us = micros(start), "session.expired")
            }
            Err(e) => failed(backend, "purge_expired", None, start, e),
        }
        self.metrics
            .record(backend, Op::PurgeExpired, outcome(&result, |_| true), start);
        result
    }

    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage> {
        let (backend, start) = (self.backend(), Instant::now());
        let result = self
            .inner
            .scan(cursor, limit)
            .instrument(span!(self, "scan"))
            .await;
        match &result {
            Ok(page) => {
                tracing::debug!(target: "session", backend, op = "scan", sessions = page.sessions.len(),
                done = page.next.is_none(), latency_us = micros(start), "session.scanned")
            }
            Err(e) => failed(backend, "scan", None, start, e),
        }
        self.metrics
            .record(backend, Op::Scan, outcome(&result, |_| true), start);
        result
    }

    async fn import(&self, session: &UserSession) -> Result<Imported> {
        let (backend, start) = (self.backend(), Instant::now());
        let result = self
            .inner
            .import(session)
            .instrument(span!(self, "import"))
            .await;
        match &result {
            Ok(imported) => {
                tracing::debug!(target: "session", backend, op = "import", handle = %session.handle,
                outcome = ?imported, latency_us = micros(start), "session.imported")
            }
            Err(e) => failed(backend, "import", Some(&session.handle), start, e),
        }
        self.metrics.record(
            backend,
            Op::Import,
            outcome(&result, |imported| *imported == Imported::Stored),
            start,
        );
        result
    }

    async fn delete_with_tombstone(
        &self,
        handle: &SessionHandle,
        until: SystemTime,
    ) -> Result<bool> {
        let (backend, start) = (self.backend(), Instant::now());
        let result = self
            .inner
            .delete_with_tombstone(handle, until)
            .instrument(span!(self, "delete_with_tombstone"))
            .await;
        match &result {
            Ok(removed) => {
                tracing::info!(target: "session", backend, op = "delete_with_tombstone", handle = %handle,
                removed, latency_us = micros(start), "session.revoked")
            }
            Err(e) => failed(backend, "delete_with_tombstone", Some(handle), start, e),
        }
        self.metrics.record(
            backend,
            Op::DeleteWithTombstone,
            outcome(&result, |removed| *removed),
            start,
        );
        result
    }

    async fn health(&self) -> Result<()> {
        let (backend, start) = (self.backend(), Instant::now());
        let result = self.inner.health().instrument(span!(self, "health")).await;
        if let Err(e) = &result {
            failed(backend, "health", None, start, e);
        }
        self.metrics
            .record(backend, Op::Health, outcome(&result, |_| true), start);
        result
    }

    fn needs_purge(&self) -> bool {
        self.inner.needs_purge()
    }

    async fn close(&self) {
        self.inner.close().await;
        tracing::info!(target: "session", backend = self.backend(), "session.store_closed");
    }
}

#[async_trait]
impl<S: StorageDump> StorageDump for Instrumented<S> {
    async fn dump_raw(&self) -> Result<Vec<String>> {
        self.inner.dump_raw().await
    }
}
