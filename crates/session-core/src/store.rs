//! The user-session contract every backend implements.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::error::{ErrorChain, Result};
use crate::policy::SessionPolicy;
use crate::session::{IssuedSession, NewUserSession, Updated, UserSession};
use crate::token::{SessionHandle, SessionToken};

/// Storage for user sessions.
///
/// The contract, identical on every backend:
/// - **Expiry**: a session is expired once the policy clock reaches its `idle_expires_at` or its
///   `absolute_expires_at`. No method ever returns, touches, updates or rotates an expired session,
///   whether or not a sweeper has removed it yet; to every method an expired session is absent.
/// - **Tokens**: the store issues every token (`create`, `rotate`) and never adopts one a caller
///   invents: a token the store did not issue finds nothing. Only a hash of the token is kept.
/// - **Errors**: driver failures are [`crate::SessionError`]s; connectivity problems and time-outs
///   are temporary ([`crate::SessionError::is_temporary`]).
///
/// The trait is object safe: the facade holds an `Arc<dyn UserSessionStore>`.
#[async_trait]
pub trait UserSessionStore: Send + Sync + fmt::Debug {
    /// A short name for logs and metrics, e.g. `memory`, `redis`, `postgres`.
    fn backend(&self) -> &'static str;

    /// The policy this store enforces.
    fn policy(&self) -> &SessionPolicy;

    /// Signs a user in: validates `new` against the policy, issues a fresh token and stores the
    /// session at version 1. With a per-user cap, the user's oldest live sessions are evicted so that
    /// at most the cap remain, the new one included.
    async fn create(&self, new: NewUserSession) -> Result<IssuedSession>;

    /// The live session for `token`, or `None` if there is none or it has expired. Never writes.
    async fn get(&self, token: &SessionToken) -> Result<Option<UserSession>>;

    /// Records activity: slides the idle expiry forward (capped by the absolute expiry) and sets
    /// `last_seen_at`, but writes at most once per `touch_interval`; a touch inside the interval is
    /// a read. Returns the session as it now stands, or `None` if absent or expired. Does not change
    /// `version`, so a touch never makes a concurrent `update` conflict.
    async fn touch(&self, token: &SessionToken) -> Result<Option<UserSession>>;

    /// Writes `session`'s editable fields (`company_name`, `email`, `is_root`, `attributes`,
    /// `authenticated_at`, `device`, `address`) if the stored version still equals
    /// `session.version` (compare-and-set), and returns the stored session with `version + 1`.
    /// Expiry is not extended.
    ///
    /// When the write changes `is_root` or `authenticated_at`, the session is also rotated in the
    /// same atomic step: it moves to a new token and handle (returned in [`Updated::rotated`]) and
    /// the old token finds nothing from then on, so no caller can keep a token from before a
    /// privilege change or a re-authentication by skipping a step.
    ///
    /// # Errors
    /// [`crate::SessionError::Conflict`] if the stored version differs (no write happens);
    /// [`crate::SessionError::NotFound`] if the session is absent or expired;
    /// [`crate::SessionError::InvalidInput`] if `user_id` differs from the stored one.
    async fn update(&self, session: &UserSession) -> Result<Updated>;

    /// Replaces the token (session-fixation defence): the session keeps its data, version and expiry
    /// under a new token and handle; the old token finds nothing from then on. One atomic step: no
    /// observer sees both tokens live or neither holding the data once this returns.
    /// `None` if absent or expired.
    async fn rotate(&self, token: &SessionToken) -> Result<Option<IssuedSession>>;

    /// Signs out: removes the session. True if a live session was removed.
    async fn delete(&self, token: &SessionToken) -> Result<bool>;

    /// Removes a session by its public handle (revocation from a session list). True if removed.
    async fn delete_by_handle(&self, handle: &SessionHandle) -> Result<bool>;

    /// The user's live sessions, oldest first.
    async fn list_by_user(&self, user_id: &str) -> Result<Vec<UserSession>>;

    /// Removes every session of the user except `except` ("sign out everywhere else").
    /// Returns how many live sessions were removed.
    async fn delete_by_user(&self, user_id: &str, except: Option<&SessionHandle>) -> Result<u64>;

    /// Removes expired sessions and their index entries; returns how many sessions were removed.
    /// Correctness never depends on calling it: expired sessions are invisible regardless.
    async fn purge_expired(&self) -> Result<u64>;

    /// One page of a walk over every live session of the store, for operators' tools
    /// (`sessionctl`) and copies between backends. Start with `cursor = None`; pass each page's
    /// [`ScanPage::next`] back until it is `None`.
    ///
    /// The walk holds bounded memory on both sides: a page has at most `limit` sessions (it may
    /// have fewer, even none, before the walk ends; Redis stops a page at a slot boundary). A
    /// session live for the whole walk is returned at least once (exactly once on the SQL and
    /// memory stores; Redis SCAN may repeat one); one created or removed during the walk may or may
    /// not appear. Expired sessions are never returned. The cursor is opaque text that outlives
    /// the process, so a walk can resume after an interruption.
    ///
    /// # Errors
    /// [`crate::SessionError::InvalidInput`] for `limit == 0`, a `limit` above [`MAX_SCAN_LIMIT`]
    /// or a cursor this backend did not issue; [`crate::SessionError::Unsupported`] from a store
    /// that cannot enumerate (the default).
    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage> {
        let _ = (cursor, limit);
        Err(crate::SessionError::Unsupported {
            backend: self.backend(),
            operation: "scan",
            reason: "this store does not enumerate its sessions",
        })
    }

    /// Stores a session read from another store under its existing handle, with its version and
    /// instants as they are, so the client's token keeps working here (the handle is the hash of
    /// the token; no token is ever needed). Never overwrites a live session with that handle, and
    /// does not apply the per-user cap (the copy mirrors a store that applied its own). Validated
    /// like a write ([`UserSession::validate_import`]).
    ///
    /// # Errors
    /// [`crate::SessionError::InvalidInput`] or [`crate::SessionError::PayloadTooLarge`] for a
    /// session no store could hold; [`crate::SessionError::Unsupported`] from a store that cannot
    /// import (the default).
    async fn import(&self, session: &UserSession) -> Result<Imported> {
        let _ = session;
        Err(crate::SessionError::Unsupported {
            backend: self.backend(),
            operation: "import",
            reason: "this store does not import sessions",
        })
    }

    /// Ends the session under `handle` as [`UserSessionStore::delete_by_handle`] does, and leaves
    /// a tombstone: until `until`, [`UserSessionStore::import`] of that handle stores nothing and
    /// answers [`Imported::Ended`]. True if a live session was removed.
    ///
    /// A migration's endings use it on the store sessions are copied into ([`crate::MigratingStore`],
    /// ADR 0029): a copy read from the old store just before the session ended there can reach the
    /// new store only after the ending, and it must not be served even for a moment. The removal
    /// and the tombstone are one atomic step against an import of the same handle: an import that
    /// wins is removed, one that loses is refused. `until` should be no earlier than the last
    /// instant a copy of the session could still be live (its absolute expiry); a store forgets
    /// the tombstone after it.
    ///
    /// # Errors
    /// [`crate::SessionError::Unsupported`] from a store that cannot import (the default).
    async fn delete_with_tombstone(
        &self,
        handle: &SessionHandle,
        until: SystemTime,
    ) -> Result<bool> {
        let _ = (handle, until);
        Err(crate::SessionError::Unsupported {
            backend: self.backend(),
            operation: "delete_with_tombstone",
            reason: "this store does not import sessions",
        })
    }

    /// Checks that the backend answers.
    async fn health(&self) -> Result<()>;

    /// Whether expired sessions keep occupying storage until [`UserSessionStore::purge_expired`]
    /// runs (memory, SQL tables), so the owner should purge periodically. False where the backend
    /// expires data by itself (Redis key TTLs).
    fn needs_purge(&self) -> bool;

    /// Stops background work and closes connection pools. Idempotent. Every later operation that
    /// needs the backend fails with [`crate::SessionError::Closed`] (one that can answer without
    /// it, such as a lookup of a token no session of this store could have, may still answer).
    /// Operations already running finish.
    async fn close(&self);
}

/// A diagnostic view of everything a store keeps, as text, so tests can prove the raw token is
/// stored nowhere. Not for production use: it reads the whole store.
#[async_trait]
pub trait StorageDump: Send + Sync {
    /// Every key and value the store holds for its sessions, rendered as text.
    async fn dump_raw(&self) -> Result<Vec<String>>;
}

#[async_trait]
impl<T: StorageDump + ?Sized> StorageDump for Arc<T> {
    async fn dump_raw(&self) -> Result<Vec<String>> {
        (**self).dump_raw().await
    }
}

/// The largest page [`UserSessionStore::scan`] hands back.
pub const MAX_SCAN_LIMIT: usize = 10_000;

/// Where a walk over a store's sessions stands ([`UserSessionStore::scan`]): opaque text, prefixed
/// by the backend that issued it, safe to keep in a file and resume from after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ScanCursor(String);

impl ScanCursor {
    /// A cursor from its text (as [`ScanCursor::as_str`] gave it, e.g. read back from a file).
    /// The store that receives it checks it.
    #[must_use]
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The cursor as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ScanCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One page of [`UserSessionStore::scan`].
#[derive(Clone, Debug, Default)]
pub struct ScanPage {
    /// Live sessions, at most the `limit` asked for.
    pub sessions: Vec<UserSession>,
    /// Where the next page starts; `None` once the walk is over.
    pub next: Option<ScanCursor>,
}

/// What [`UserSessionStore::import`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Imported {
    /// The session is now stored under its handle.
    Stored,
    /// A live session with that handle was already stored; it was left as it was.
    AlreadyPresent,
    /// The session had expired by the store's clock; nothing was stored.
    Expired,
    /// The session was ended here with [`UserSessionStore::delete_with_tombstone`] and its
    /// tombstone still stands: the copy would bring an ended session back, so nothing was stored.
    Ended,
}

/// Checks the `limit` of a [`UserSessionStore::scan`] call, for backends.
///
/// # Errors
/// [`crate::SessionError::InvalidInput`] unless `1 <= limit <= MAX_SCAN_LIMIT`.
pub fn check_scan_limit(limit: usize) -> Result<()> {
    if limit == 0 || limit > MAX_SCAN_LIMIT {
        return Err(crate::SessionError::invalid_input(
            "limit",
            format!("must be between 1 and {MAX_SCAN_LIMIT}"),
        ));
    }
    Ok(())
}

/// The error for a cursor a backend did not issue, for backends.
#[must_use]
pub fn bad_scan_cursor(cursor: &ScanCursor) -> crate::SessionError {
    let shown: String = cursor.as_str().chars().take(40).collect();
    crate::SessionError::invalid_input("cursor", format!("not a cursor of this store: {shown:?}"))
}

/// A background task that calls [`UserSessionStore::purge_expired`] periodically.
/// Stops when dropped, when [`PurgeTask::stop`] is called, or when the store is dropped.
#[derive(Debug)]
pub struct PurgeTask {
    handle: tokio::task::JoinHandle<()>,
}

impl PurgeTask {
    /// Spawns the task on the current tokio runtime. Holds only a weak reference to the store.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn(store: &Arc<dyn UserSessionStore>, every: Duration) -> Self {
        let weak: Weak<dyn UserSessionStore> = Arc::downgrade(store);
        let handle = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(store) = weak.upgrade() else { break };
                match store.purge_expired().await {
                    Ok(n) => {
                        tracing::debug!(backend = store.backend(), purged = n, "session.purge")
                    }
                    Err(e) => {
                        tracing::warn!(backend = store.backend(), error = %ErrorChain(&e), "session.purge failed");
                    }
                }
            }
        });
        Self { handle }
    }

    /// Stops the task and waits until it has stopped.
    pub async fn stop(mut self) {
        self.handle.abort();
        // A cancelled task reports `JoinError::Cancelled`; that is the expected outcome here.
        let _ = (&mut self.handle).await;
    }
}

impl Drop for PurgeTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// A boxed future as `async_trait` declares the trait's methods.
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Forwards to the shared store, so `Arc<dyn UserSessionStore>` can be wrapped by layers.
///
/// Written without `#[async_trait]`: each method hands back the inner store's boxed future as it
/// is, instead of boxing a future that awaits it. Every box is an allocation that, at 32 tasks, is
/// often freed on another worker thread, which is where layer overhead was found (ADR 0010).
#[deny(clippy::missing_trait_methods)]
impl<T: UserSessionStore + ?Sized> UserSessionStore for Arc<T> {
    fn backend(&self) -> &'static str {
        (**self).backend()
    }
    fn policy(&self) -> &SessionPolicy {
        (**self).policy()
    }
    fn create<'s, 'f>(&'s self, new: NewUserSession) -> BoxFuture<'f, Result<IssuedSession>>
    where
        's: 'f,
        Self: 'f,
    {
        (**self).create(new)
    }
    fn get<'s, 't, 'f>(
        &'s self,
        token: &'t SessionToken,
    ) -> BoxFuture<'f, Result<Option<UserSession>>>
    where
        's: 'f,
        't: 'f,
        Self: 'f,
    {
        (**self).get(token)
    }
    fn touch<'s, 't, 'f>(
        &'s self,
        token: &'t SessionToken,
    ) -> BoxFuture<'f, Result<Option<UserSession>>>
    where
        's: 'f,
        't: 'f,
        Self: 'f,
    {
        (**self).touch(token)
    }
    fn update<'s, 'u, 'f>(&'s self, session: &'u UserSession) -> BoxFuture<'f, Result<Updated>>
    where
        's: 'f,
        'u: 'f,
        Self: 'f,
    {
        (**self).update(session)
    }
    fn rotate<'s, 't, 'f>(
        &'s self,
        token: &'t SessionToken,
    ) -> BoxFuture<'f, Result<Option<IssuedSession>>>
    where
        's: 'f,
        't: 'f,
        Self: 'f,
    {
        (**self).rotate(token)
    }
    fn delete<'s, 't, 'f>(&'s self, token: &'t SessionToken) -> BoxFuture<'f, Result<bool>>
    where
        's: 'f,
        't: 'f,
        Self: 'f,
    {
        (**self).delete(token)
    }
    fn delete_by_handle<'s, 'h, 'f>(
        &'s self,
        handle: &'h SessionHandle,
    ) -> BoxFuture<'f, Result<bool>>
    where
        's: 'f,
        'h: 'f,
        Self: 'f,
    {
        (**self).delete_by_handle(handle)
    }
    fn list_by_user<'s, 'u, 'f>(
        &'s self,
        user_id: &'u str,
    ) -> BoxFuture<'f, Result<Vec<UserSession>>>
    where
        's: 'f,
        'u: 'f,
        Self: 'f,
    {
        (**self).list_by_user(user_id)
    }
    fn delete_by_user<'s, 'u, 'h, 'f>(
        &'s self,
        user_id: &'u str,
        except: Option<&'h SessionHandle>,
    ) -> BoxFuture<'f, Result<u64>>
    where
        's: 'f,
        'u: 'f,
        'h: 'f,
        Self: 'f,
    {
        (**self).delete_by_user(user_id, except)
    }
    fn purge_expired<'s, 'f>(&'s self) -> BoxFuture<'f, Result<u64>>
    where
        's: 'f,
        Self: 'f,
    {
        (**self).purge_expired()
    }
    fn scan<'s, 'c, 'f>(
        &'s self,
        cursor: Option<&'c ScanCursor>,
        limit: usize,
    ) -> BoxFuture<'f, Result<ScanPage>>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        (**self).scan(cursor, limit)
    }
    fn import<'s, 'u, 'f>(&'s self, session: &'u UserSession) -> BoxFuture<'f, Result<Imported>>
    where
        's: 'f,
        'u: 'f,
        Self: 'f,
    {
        (**self).import(session)
    }
    fn delete_with_tombstone<'s, 'h, 'f>(
        &'s self,
        handle: &'h SessionHandle,
        until: SystemTime,
    ) -> BoxFuture<'f, Result<bool>>
    where
        's: 'f,
        'h: 'f,
        Self: 'f,
    {
        (**self).delete_with_tombstone(handle, until)
    }
    fn health<'s, 'f>(&'s self) -> BoxFuture<'f, Result<()>>
    where
        's: 'f,
        Self: 'f,
    {
        (**self).health()
    }
    fn needs_purge(&self) -> bool {
        (**self).needs_purge()
    }
    fn close<'s, 'f>(&'s self) -> BoxFuture<'f, ()>
    where
        's: 'f,
        Self: 'f,
    {
        (**self).close()
    }
}
