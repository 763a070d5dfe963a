//! The sharded in-memory store.
//!
//! Layout: sessions are spread over [`SHARDS`] mutex-guarded shards by their handle, so concurrent
//! requests for different sessions rarely contend. Each shard keeps, beside its map, an index of its
//! sessions ordered by idle expiry, so `purge_expired` pops exactly the expired entries (cost grows
//! with the number expired, not the number stored). A second set of shards maps each user to their
//! session handles.
//!
//! Lock order: a user shard may be held while taking session shards, never the reverse. Reads
//! (`get`, `touch`, `update`) take one session shard only.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use session_core::{
    Imported, IssuedSession, NewUserSession, Result, ScanCursor, ScanPage, SessionError,
    SessionHandle, SessionPolicy, SessionToken, StorageDump, Updated, UserSession,
    UserSessionStore,
};

/// Number of session shards (and user shards). A power of two well above the core count keeps
/// contention low without making purge walk many empty shards.
const SHARDS: usize = 64;
/// A user's index is first pruned of dead handles on `create` at this length, then each time it has
/// doubled since the last prune, so pruning costs O(1) amortised per create.
const PRUNE_INDEX_AT: usize = 16;

const BACKEND: &str = "memory";

/// Maps and sets keyed by handle hash with foldhash rather than SipHash: a handle is a SHA-256
/// output that no client can choose, so flooding needs no defence here, and SipHash was the largest
/// single cost of `create` (11% in `perf`, with the rehashing of growing maps).
type HandleHasher = foldhash::fast::RandomState;
type HandleSet = HashSet<SessionHandle, HandleHasher>;

#[derive(Default)]
struct Shard {
    sessions: HashMap<SessionHandle, UserSession, HandleHasher>,
    /// (idle expiry, handle) of every session in `sessions`; the idle expiry is never after the
    /// absolute one, so it is the instant the session expires.
    by_expiry: BTreeSet<(SystemTime, SessionHandle)>,
    /// Handles ended by `delete_with_tombstone`, with the instant until which an import of them
    /// is refused; checked and written under this shard's lock, as the session is.
    tombstones: HashMap<SessionHandle, SystemTime, HandleHasher>,
}

impl Shard {
    fn insert(&mut self, session: UserSession) {
        self.by_expiry
            .insert((session.idle_expires_at, session.handle.clone()));
        self.sessions.insert(session.handle.clone(), session);
    }

    fn remove(&mut self, handle: &SessionHandle) -> Option<UserSession> {
        let session = self.sessions.remove(handle)?;
        self.by_expiry
            .remove(&(session.idle_expires_at, session.handle.clone()));
        Some(session)
    }

    fn tombstoned(&self, handle: &SessionHandle, now: SystemTime) -> bool {
        self.tombstones
            .get(handle)
            .is_some_and(|until| *until > now)
    }

    fn live(
        &self,
        handle: &SessionHandle,
        policy: &SessionPolicy,
        now: SystemTime,
    ) -> Option<&UserSession> {
        self.sessions
            .get(handle)
            .filter(|s| !policy.is_expired(s, now))
    }
}

/// One user's session handles, possibly including sessions that died since the last prune.
struct UserIndex {
    /// A set, so sign-out and rotation remove their handle in O(1) however many sessions the
    /// user holds.
    handles: HandleSet,
    prune_at: usize,
}

impl Default for UserIndex {
    fn default() -> Self {
        Self {
            handles: HandleSet::default(),
            prune_at: PRUNE_INDEX_AT,
        }
    }
}

/// An in-memory session store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    users: Box<[Mutex<HashMap<String, UserIndex>>]>,
    user_hasher: RandomState,
    policy: SessionPolicy,
    closed: AtomicBool,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &SHARDS)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// A poisoned lock means a panic happened while a shard was being changed; every change here is
/// completed before any call that could panic, so the data is consistent and can be used.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemoryStore {
    /// A store enforcing `policy`.
    ///
    /// # Errors
    /// [`SessionError::Config`] if the policy is invalid.
    pub fn new(policy: SessionPolicy) -> Result<Self> {
        policy.validate()?;
        Ok(Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            users: (0..SHARDS).map(|_| Mutex::default()).collect(),
            user_hasher: RandomState::new(),
            policy,
            closed: AtomicBool::new(false),
        })
    }

    /// Number of sessions held, expired ones not yet purged included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).sessions.len()).sum()
    }

    /// True if no session is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Files `session`, already removed from its shard, under `token`'s handle: in that handle's
    /// shard and in the user's index (whose lock the caller holds as `users`).
    fn rekey(
        &self,
        users: &mut HashMap<String, UserIndex>,
        mut session: UserSession,
        token: &SessionToken,
    ) -> UserSession {
        let old = std::mem::replace(&mut session.handle, token.handle().clone());
        lock(self.shard(&session.handle)).insert(session.clone());
        if let Some(index) = users.get_mut(&session.user_id) {
            index.handles.remove(&old);
            index.handles.insert(session.handle.clone());
        }
        session
    }

    /// `Closed` once [`UserSessionStore::close`] has run.
    fn ensure_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(SessionError::Closed { backend: BACKEND });
        }
        Ok(())
    }

    fn shard(&self, handle: &SessionHandle) -> &Mutex<Shard> {
        // The hash part is base64url of SHA-256: its characters are already uniformly distributed.
        let bytes = handle.hash().as_bytes();
        let index = (usize::from(bytes[0]) << 8 | usize::from(bytes[1])) % SHARDS;
        &self.shards[index]
    }

    fn user_shard(&self, user_id: &str) -> &Mutex<HashMap<String, UserIndex>> {
        let index =
            usize::try_from(self.user_hasher.hash_one(user_id) % SHARDS as u64).unwrap_or(0);
        &self.users[index]
    }

    /// Removes `handle` from its shard; true if it was live.
    fn remove_session(&self, handle: &SessionHandle, now: SystemTime) -> Option<UserSession> {
        lock(self.shard(handle))
            .remove(handle)
            .filter(|s| !self.policy.is_expired(s, now))
    }

    fn evict_over_cap(&self, handles: &mut HandleSet, cap: usize, now: SystemTime) {
        let mut live: Vec<(SystemTime, SessionHandle)> = Vec::with_capacity(handles.len());
        for handle in handles.iter() {
            if let Some(s) = lock(self.shard(handle)).live(handle, &self.policy, now) {
                live.push((s.created_at, handle.clone()));
            }
        }
        live.sort();
        // Room for the session being created.
        let excess = (live.len() + 1).saturating_sub(cap);
        for (_, handle) in live.iter().take(excess) {
            lock(self.shard(handle)).remove(handle);
        }
        let keep: HashSet<&SessionHandle> = live.iter().skip(excess).map(|(_, h)| h).collect();
        handles.retain(|h| keep.contains(h));
    }

    /// Removes `handle` from `user_id`'s index (whose lock the caller does not hold).
    fn unindex(&self, user_id: &str, handle: &SessionHandle) {
        let mut users = lock(self.user_shard(user_id));
        if let Some(index) = users.get_mut(user_id) {
            index.handles.remove(handle);
            if index.handles.is_empty() {
                users.remove(user_id);
            }
        }
    }

    /// Up to `limit` live sessions of shard `from.0` with handles after `from.1`, then of the
    /// shards after it, in handle order within a shard: the next page of a walk, and where the one
    /// after starts.
    fn scan_from(
        &self,
        mut from: (usize, Option<SessionHandle>),
        limit: usize,
    ) -> (Vec<UserSession>, Option<ScanCursor>) {
        let now = self.policy.now();
        let mut page: Vec<UserSession> = Vec::new();
        while from.0 < SHARDS {
            let room = limit - page.len();
            let mut batch: Vec<UserSession> = {
                let shard = lock(&self.shards[from.0]);
                shard
                    .sessions
                    .values()
                    .filter(|s| from.1.as_ref().is_none_or(|after| s.handle > *after))
                    .filter(|s| !self.policy.is_expired(s, now))
                    .cloned()
                    .collect()
            };
            batch.sort_unstable_by(|a, b| a.handle.cmp(&b.handle));
            if batch.len() > room {
                batch.truncate(room);
                let last = batch.last().map(|s| s.handle.clone());
                page.extend(batch);
                return (page, Some(memory_cursor(from.0, last.as_ref())));
            }
            page.extend(batch);
            from = (from.0 + 1, None);
            if page.len() == limit && from.0 < SHARDS {
                return (page, Some(memory_cursor(from.0, None)));
            }
        }
        (page, None)
    }

    fn prune_dead(&self, handles: &mut HandleSet, now: SystemTime) {
        handles.retain(|h| lock(self.shard(h)).live(h, &self.policy, now).is_some());
    }
}

/// `m1:<shard>:<last handle returned in it, or nothing>`.
fn memory_cursor(shard: usize, after: Option<&SessionHandle>) -> ScanCursor {
    ScanCursor::new(format!(
        "m1:{shard}:{}",
        after.map_or("", SessionHandle::as_str)
    ))
}

fn parse_memory_cursor(cursor: &ScanCursor) -> Result<(usize, Option<SessionHandle>)> {
    let bad = || session_core::bad_scan_cursor(cursor);
    let rest = cursor.as_str().strip_prefix("m1:").ok_or_else(bad)?;
    let (shard, after) = rest.split_once(':').ok_or_else(bad)?;
    let shard: usize = shard.parse().map_err(|_| bad())?;
    if shard >= SHARDS {
        return Err(bad());
    }
    let after = match after {
        "" => None,
        handle => Some(SessionHandle::parse(handle).map_err(|_| bad())?),
    };
    Ok((shard, after))
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl UserSessionStore for MemoryStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn policy(&self) -> &SessionPolicy {
        &self.policy
    }

    async fn create(&self, new: NewUserSession) -> Result<IssuedSession> {
        self.ensure_open()?;
        let token = SessionToken::generate()?;
        let session = new.into_session(&token, &self.policy)?;
        let now = session.created_at;
        let mut users = lock(self.user_shard(&session.user_id));
        let index = users.entry(session.user_id.clone()).or_default();
        if let Some(cap) = self.policy.max_sessions_per_user {
            self.evict_over_cap(&mut index.handles, cap as usize, now);
        } else if index.handles.len() >= index.prune_at {
            self.prune_dead(&mut index.handles, now);
            index.prune_at = PRUNE_INDEX_AT.max(index.handles.len() * 2);
        }
        index.handles.insert(session.handle.clone());
        lock(self.shard(&session.handle)).insert(session.clone());
        Ok(IssuedSession { token, session })
    }

    async fn get(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        self.ensure_open()?;
        let now = self.policy.now();
        Ok(lock(self.shard(token.handle()))
            .live(token.handle(), &self.policy, now)
            .cloned())
    }

    async fn touch(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        self.ensure_open()?;
        let now = self.policy.now();
        let handle = token.handle();
        let mut shard = lock(self.shard(handle));
        let Some(session) = shard.live(handle, &self.policy, now) else {
            return Ok(None);
        };
        if !self.policy.touch_due(session, now) {
            return Ok(Some(session.clone()));
        }
        let new_idle = self.policy.touched_idle_expiry(session, now);
        let mut session = shard.remove(handle).ok_or(SessionError::NotFound)?;
        session.last_seen_at = now;
        session.idle_expires_at = new_idle;
        shard.insert(session.clone());
        Ok(Some(session))
    }

    async fn update(&self, session: &UserSession) -> Result<Updated> {
        self.ensure_open()?;
        session.validate(&self.policy)?;
        let now = self.policy.now();
        let check = |stored: Option<&UserSession>| -> Result<bool> {
            let stored = stored
                .filter(|s| !self.policy.is_expired(s, now))
                .ok_or(SessionError::NotFound)?;
            if stored.user_id != session.user_id {
                return Err(SessionError::invalid_input(
                    "user_id",
                    "cannot change; sign the other user in with a new session",
                ));
            }
            if stored.version != session.version {
                return Err(SessionError::Conflict {
                    expected: session.version,
                    actual: stored.version,
                });
            }
            Ok(stored.is_root != session.is_root
                || stored.authenticated_at != session.authenticated_at)
        };
        let apply = |stored: &mut UserSession| {
            stored.company_name.clone_from(&session.company_name);
            stored.email.clone_from(&session.email);
            stored.is_root = session.is_root;
            stored.attributes.clone_from(&session.attributes);
            stored.authenticated_at = session.authenticated_at;
            stored.device.clone_from(&session.device);
            stored.address = session.address;
            stored.version += 1;
        };
        {
            let mut shard = lock(self.shard(&session.handle));
            let moves = check(shard.sessions.get(&session.handle))?;
            if !moves {
                let stored = shard
                    .sessions
                    .get_mut(&session.handle)
                    .ok_or(SessionError::NotFound)?;
                apply(stored);
                return Ok(Updated::kept(stored.clone()));
            }
        }
        // A root change or a re-authentication moves the session to a new token. Lock order is user then session, so
        // take the user's index first and check again under both locks.
        let new_token = SessionToken::generate()?;
        let mut users = lock(self.user_shard(&session.user_id));
        let mut stored = {
            let mut shard = lock(self.shard(&session.handle));
            check(shard.sessions.get(&session.handle))?;
            shard
                .remove(&session.handle)
                .ok_or(SessionError::NotFound)?
        };
        apply(&mut stored);
        let stored = self.rekey(&mut users, stored, &new_token);
        Ok(Updated::moved_to(stored, new_token))
    }

    async fn rotate(&self, token: &SessionToken) -> Result<Option<IssuedSession>> {
        self.ensure_open()?;
        let now = self.policy.now();
        let old = token.handle();
        // Lock order is user then session, so learn the user first and re-check under both locks.
        let Some(user_id) = lock(self.shard(old))
            .live(old, &self.policy, now)
            .map(|s| s.user_id.clone())
        else {
            return Ok(None);
        };
        let new_token = SessionToken::generate()?;
        let mut users = lock(self.user_shard(&user_id));
        let Some(session) = self.remove_session(old, now) else {
            return Ok(None);
        };
        let session = self.rekey(&mut users, session, &new_token);
        Ok(Some(IssuedSession {
            token: new_token,
            session,
        }))
    }

    async fn delete(&self, token: &SessionToken) -> Result<bool> {
        self.delete_by_handle(token.handle()).await
    }

    async fn delete_by_handle(&self, handle: &SessionHandle) -> Result<bool> {
        self.ensure_open()?;
        let now = self.policy.now();
        let Some(removed) = lock(self.shard(handle)).remove(handle) else {
            return Ok(false);
        };
        let mut users = lock(self.user_shard(&removed.user_id));
        if let Some(index) = users.get_mut(&removed.user_id) {
            index.handles.remove(handle);
            if index.handles.is_empty() {
                users.remove(&removed.user_id);
            }
        }
        Ok(!self.policy.is_expired(&removed, now))
    }

    async fn delete_with_tombstone(
        &self,
        handle: &SessionHandle,
        until: SystemTime,
    ) -> Result<bool> {
        self.ensure_open()?;
        let now = self.policy.now();
        let removed = {
            let mut shard = lock(self.shard(handle));
            let kept = shard.tombstones.entry(handle.clone()).or_insert(until);
            *kept = (*kept).max(until);
            shard.remove(handle)
        };
        let Some(removed) = removed else {
            return Ok(false);
        };
        self.unindex(&removed.user_id, handle);
        Ok(!self.policy.is_expired(&removed, now))
    }

    async fn list_by_user(&self, user_id: &str) -> Result<Vec<UserSession>> {
        self.ensure_open()?;
        let now = self.policy.now();
        let handles = lock(self.user_shard(user_id))
            .get(user_id)
            .map(|index| index.handles.clone())
            .unwrap_or_default();
        let mut sessions: Vec<UserSession> = handles
            .iter()
            .filter_map(|h| lock(self.shard(h)).live(h, &self.policy, now).cloned())
            .collect();
        sessions.sort_by(|a, b| (a.created_at, &a.handle).cmp(&(b.created_at, &b.handle)));
        Ok(sessions)
    }

    async fn delete_by_user(&self, user_id: &str, except: Option<&SessionHandle>) -> Result<u64> {
        self.ensure_open()?;
        let now = self.policy.now();
        let mut users = lock(self.user_shard(user_id));
        let Some(index) = users.get_mut(user_id) else {
            return Ok(0);
        };
        let mut removed = 0;
        index.handles.retain(|h| {
            if Some(h) == except {
                return true;
            }
            if self.remove_session(h, now).is_some() {
                removed += 1;
            }
            false
        });
        if index.handles.is_empty() {
            users.remove(user_id);
        }
        Ok(removed)
    }

    async fn purge_expired(&self) -> Result<u64> {
        self.ensure_open()?;
        let now = self.policy.now();
        let mut expired: HashMap<String, Vec<SessionHandle>> = HashMap::new();
        let mut count = 0;
        for shard in &*self.shards {
            let mut shard = lock(shard);
            shard.tombstones.retain(|_, until| *until > now);
            while let Some((at, _)) = shard.by_expiry.first() {
                if *at > now {
                    break;
                }
                let Some((_, handle)) = shard.by_expiry.pop_first() else {
                    break;
                };
                if let Some(session) = shard.sessions.remove(&handle) {
                    count += 1;
                    expired.entry(session.user_id).or_default().push(handle);
                }
            }
        }
        for (user_id, gone) in expired {
            let mut users = lock(self.user_shard(&user_id));
            if let Some(index) = users.get_mut(&user_id) {
                for handle in &gone {
                    index.handles.remove(handle);
                }
                if index.handles.is_empty() {
                    users.remove(&user_id);
                }
            }
        }
        Ok(count)
    }

    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage> {
        self.ensure_open()?;
        session_core::check_scan_limit(limit)?;
        let from = match cursor {
            Some(cursor) => parse_memory_cursor(cursor)?,
            None => (0, None),
        };
        let (sessions, next) = self.scan_from(from, limit);
        Ok(ScanPage { sessions, next })
    }

    async fn import(&self, session: &UserSession) -> Result<Imported> {
        self.ensure_open()?;
        session.validate_import(&self.policy)?;
        let now = self.policy.now();
        if self.policy.is_expired(session, now) {
            return Ok(Imported::Expired);
        }
        let handle = &session.handle;
        loop {
            // An expired session under this handle may belong to another user: remove it and its
            // entry in that user's index first (lock order is user then session, so not under
            // the session lock).
            let stale = {
                let mut shard = lock(self.shard(handle));
                if shard.tombstoned(handle, now) {
                    return Ok(Imported::Ended);
                }
                match shard.sessions.get(handle) {
                    Some(stored) if !self.policy.is_expired(stored, now) => {
                        return Ok(Imported::AlreadyPresent);
                    }
                    Some(stored) if stored.user_id != session.user_id => shard.remove(handle),
                    _ => None,
                }
            };
            if let Some(stale) = stale {
                self.unindex(&stale.user_id, handle);
            }
            let mut users = lock(self.user_shard(&session.user_id));
            let mut shard = lock(self.shard(handle));
            if shard.tombstoned(handle, now) {
                return Ok(Imported::Ended);
            }
            match shard.sessions.get(handle) {
                Some(stored) if !self.policy.is_expired(stored, now) => {
                    return Ok(Imported::AlreadyPresent);
                }
                // Another user's expired session arrived in between: clear it first.
                Some(stored) if stored.user_id != session.user_id => continue,
                Some(_) => {
                    shard.remove(handle);
                }
                None => {}
            }
            shard.insert(session.clone());
            users
                .entry(session.user_id.clone())
                .or_default()
                .handles
                .insert(handle.clone());
            return Ok(Imported::Stored);
        }
    }

    async fn health(&self) -> Result<()> {
        self.ensure_open()
    }

    fn needs_purge(&self) -> bool {
        true
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Nothing can read them any more: free the memory now rather than when the store drops.
        for shard in &*self.shards {
            *lock(shard) = Shard::default();
        }
        for users in &*self.users {
            lock(users).clear();
        }
    }
}

#[async_trait]
impl StorageDump for MemoryStore {
    async fn dump_raw(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for shard in &*self.shards {
            for (key, session) in &lock(shard).sessions {
                let value = serde_json::to_string(session).map_err(|e| SessionError::Decode {
                    backend: BACKEND,
                    handle: Some(key.clone()),
                    reason: e.to_string(),
                })?;
                out.push(format!("{key} => {value}"));
            }
        }
        for users in &*self.users {
            for (user, index) in &*lock(users) {
                let mut handles: Vec<&str> =
                    index.handles.iter().map(SessionHandle::as_str).collect();
                handles.sort_unstable();
                out.push(format!("user:{user} => {}", handles.join(",")));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use session_core::ManualClock;

    use super::*;

    #[tokio::test]
    async fn purge_visits_only_expired_entries_and_trims_the_user_index() {
        let clock = ManualClock::starting_now();
        let policy = SessionPolicy::default().with_clock(clock.clone());
        let store = MemoryStore::new(policy).unwrap();
        for i in 0..10 {
            store
                .create(NewUserSession::new(format!("u{i}")))
                .await
                .unwrap();
        }
        clock.advance(Duration::from_secs(29 * 60));
        let live = store.create(NewUserSession::new("u0")).await.unwrap();
        clock.advance(Duration::from_secs(2 * 60));
        assert_eq!(store.purge_expired().await.unwrap(), 10);
        assert_eq!(store.len(), 1);
        let users: usize = store.users.iter().map(|u| lock(u).len()).sum();
        assert_eq!(
            users, 1,
            "index of users whose sessions all expired is removed"
        );
        assert!(store.get(&live.token).await.unwrap().is_some());
    }
}
