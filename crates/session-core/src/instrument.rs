//! The instrumentation layer: tracing spans and lifecycle events for any store.
//!
//! Every event names the session by its public handle; the token never reaches a log line, because
//! neither [`SessionToken`]'s `Debug`/`Display` nor any error message contains it.
//!
//! Events (target `session`): `session.created`, `session.touched`, `session.rotated`,
//! `session.revoked`, `session.expired` at INFO; reads and misses at DEBUG; failures at WARN.
//! Each carries `backend`, `op`, `latency_us` and, where one session is concerned, `handle`.
//!
//! Metrics (through the `metrics` facade; install any recorder, e.g. Prometheus):
//! - `session_operations_total{backend, op, outcome}`: a counter; outcome is `ok`, `miss` (no live
//!   session), `conflict` or `error`;
//! - `session_operation_duration_seconds{backend, op}`: a histogram.

use std::time::Instant;

use async_trait::async_trait;
use tracing::Instrument as _;

use crate::error::{Result, SessionError};
use crate::policy::SessionPolicy;
use crate::session::{IssuedSession, NewUserSession, UserSession};
use crate::store::{StorageDump, UserSessionStore};
use crate::token::{SessionHandle, SessionToken};

/// Wraps a store and traces every operation. Forwards every method unchanged.
#[derive(Debug, Clone)]
pub struct Instrumented<S> {
    inner: S,
}

impl<S> Instrumented<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

fn micros(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Records the operation's metrics.
fn measure(backend: &'static str, op: &'static str, outcome: &'static str, start: Instant) {
    metrics::counter!("session_operations_total", "backend" => backend, "op" => op, "outcome" => outcome).increment(1);
    metrics::histogram!("session_operation_duration_seconds", "backend" => backend, "op" => op)
        .record(start.elapsed().as_secs_f64());
}

fn outcome<T>(result: &Result<T>, hit: impl FnOnce(&T) -> bool) -> &'static str {
    match result {
        Ok(value) if hit(value) => "ok",
        Ok(_) => "miss",
        Err(e) if e.is_conflict() => "conflict",
        Err(_) => "error",
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
        tracing::debug!(target: "session", backend, op, handle, latency_us = micros(start), error = %err, "session.conflict");
    } else {
        tracing::warn!(target: "session", backend, op, handle, latency_us = micros(start), error = %err, "session.failed");
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
        measure(backend, "create", outcome(&result, |_| true), start);
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
        measure(backend, "get", outcome(&result, Option::is_some), start);
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
        measure(backend, "touch", outcome(&result, Option::is_some), start);
        result
    }

    async fn update(&self, session: &UserSession) -> Result<UserSession> {
        let (backend, start) = (self.backend(), Instant::now());
        let result = self
            .inner
            .update(session)
            .instrument(span!(self, "update"))
            .await;
        match &result {
            Ok(s) => tracing::debug!(target: "session", backend, op = "update", handle = %s.handle,
                version = s.version, latency_us = micros(start), "session.updated"),
            Err(e) => failed(backend, "update", Some(&session.handle), start, e),
        }
        measure(backend, "update", outcome(&result, |_| true), start);
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
        measure(backend, "rotate", outcome(&result, Option::is_some), start);
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
        measure(
            backend,
            "delete",
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
        measure(
            backend,
            "delete_by_handle",
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
        measure(backend, "list_by_user", outcome(&result, |_| true), start);
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
        measure(backend, "delete_by_user", outcome(&result, |_| true), start);
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
        measure(backend, "purge_expired", outcome(&result, |_| true), start);
        result
    }

    async fn health(&self) -> Result<()> {
        let (backend, start) = (self.backend(), Instant::now());
        let result = self.inner.health().instrument(span!(self, "health")).await;
        if let Err(e) = &result {
            failed(backend, "health", None, start, e);
        }
        measure(backend, "health", outcome(&result, |_| true), start);
        result
    }
}

#[async_trait]
impl<S: StorageDump> StorageDump for Instrumented<S> {
    async fn dump_raw(&self) -> Result<Vec<String>> {
        self.inner.dump_raw().await
    }
}
