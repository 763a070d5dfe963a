//! [`MigratingStore`]: serves from a new store while sessions move to it from an old one, with no
//! sign-outs and no revocation undone (ADR 0026).

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;

use crate::SessionError;
use crate::error::Result;
use crate::policy::SessionPolicy;
use crate::session::{IssuedSession, NewUserSession, Updated, UserSession};
use crate::store::{Imported, ScanCursor, ScanPage, StorageDump, UserSessionStore};
use crate::token::{SessionHandle, SessionToken};

/// A store moving from `old` to `new` while both serve.
///
/// - **Reads** (`get`, `touch`) look in the new store, then in the old one; a session found only
///   in the old one is copied forward (`import`) and served from the new one.
/// - **Writes** go to the new store (`create`, `import`, `update`, `rotate`, after copying the
///   session forward if it is not there yet).
/// - **Endings** (`delete`, `delete_by_handle`, `delete_by_user`, `rotate`, an `update` that
///   rotates) apply to the new store, then the old one, then the new one again: a copy another
///   request made between the first two steps is swept by the third.
/// - **A copy checks itself**: a copy that stored the session (`Imported::Stored`) reads the old
///   store again, and if the session has gone from it meanwhile (an ending in progress), deletes
///   the copy. An ending removes the old copy before its last sweep, so any copy is either swept or
///   sees the old copy gone: no ending is undone by a concurrent copy, and no copy is removed
///   while its session lives. `sessionctl migrate` copies the rest with the same check.
///
/// The old store is only read and emptied through endings: an old copy of a session already
/// copied forward stays there until it expires or the old backend is dropped from the
/// configuration. `list_by_user` and `scan` show each session once, the new store's version.
pub struct MigratingStore<O: ?Sized, N: ?Sized> {
    old: Arc<O>,
    new: Arc<N>,
}

impl<O: ?Sized, N: ?Sized> MigratingStore<O, N> {
    /// Serves from `new`, falling back to `old`.
    pub fn new(old: Arc<O>, new: Arc<N>) -> Self {
        Self { old, new }
    }

    /// The store sessions move from.
    pub fn old(&self) -> &Arc<O> {
        &self.old
    }

    /// The store sessions move to.
    pub fn new_store(&self) -> &Arc<N> {
        &self.new
    }
}

impl<O: UserSessionStore + ?Sized, N: UserSessionStore + ?Sized> std::fmt::Debug
    for MigratingStore<O, N>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigratingStore")
            .field("old", &self.old)
            .field("new", &self.new)
            .finish()
    }
}

/// The cursor prefix of a walk over the new store, then the old one.
const NEW_PHASE: &str = "mg1:n:";
const OLD_PHASE: &str = "mg1:o:";

impl<O, N> MigratingStore<O, N>
where
    O: UserSessionStore + ?Sized,
    N: UserSessionStore + ?Sized,
{
    /// Copies the session `token` names from the old store to the new one, if it is live there
    /// and not in the new one. True if the new store holds it afterwards.
    async fn forward(&self, token: &SessionToken) -> Result<bool> {
        let Some(session) = self.old.get(token).await? else {
            return Ok(false);
        };
        match self.new.import(&session).await? {
            Imported::AlreadyPresent => Ok(true),
            Imported::Expired => Ok(false),
            Imported::Stored => match self.old.get(token).await {
                Ok(Some(_)) => Ok(true),
                // The old copy expired (touches go to the new store only): an expiry, not an
                // ending, so the copy, which may have been touched since, stays.
                Ok(None) if self.policy().is_expired(&session, self.policy().now()) => Ok(true),
                // Ended in the old store while this copy was made: the copy must not outlive it.
                Ok(None) => {
                    self.new.delete(token).await?;
                    Ok(false)
                }
                // Unchecked, the copy could outlive an ending: removed before the error is told.
                Err(err) => {
                    let _ = self.new.delete(token).await;
                    Err(err)
                }
            },
        }
    }

    /// [`MigratingStore::forward`] by handle, for `update`, which has no token: the old store's
    /// copy is found in its user's list.
    async fn forward_handle(&self, handle: &SessionHandle, user_id: &str) -> Result<bool> {
        let Some(session) = self.old_session(handle, user_id).await? else {
            return Ok(false);
        };
        match self.new.import(&session).await? {
            Imported::AlreadyPresent => Ok(true),
            Imported::Expired => Ok(false),
            Imported::Stored => match self.old_session(handle, user_id).await {
                Ok(Some(_)) => Ok(true),
                Ok(None) if self.policy().is_expired(&session, self.policy().now()) => Ok(true),
                Ok(None) => {
                    self.new.delete_by_handle(handle).await?;
                    Ok(false)
                }
                Err(err) => {
                    let _ = self.new.delete_by_handle(handle).await;
                    Err(err)
                }
            },
        }
    }

    async fn old_session(
        &self,
        handle: &SessionHandle,
        user_id: &str,
    ) -> Result<Option<UserSession>> {
        Ok(self
            .old
            .list_by_user(user_id)
            .await?
            .into_iter()
            .find(|s| &s.handle == handle))
    }

    /// Ends `token`'s session in the old store, then sweeps the new one of any copy made since.
    async fn end_token(&self, token: &SessionToken) -> Result<bool> {
        let old = self.old.delete(token).await?;
        let swept = self.new.delete(token).await?;
        Ok(old || swept)
    }

    /// [`MigratingStore::end_token`] by handle.
    async fn end_handle(&self, handle: &SessionHandle) -> Result<bool> {
        let old = self.old.delete_by_handle(handle).await?;
        let swept = self.new.delete_by_handle(handle).await?;
        Ok(old || swept)
    }

    /// Of the old store's `sessions`, those the new store does not hold (by their users' lists).
    async fn only_in_old(&self, sessions: Vec<UserSession>) -> Result<Vec<UserSession>> {
        let mut users: Vec<&str> = sessions.iter().map(|s| s.user_id.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        let mut in_new = HashSet::new();
        for user in users {
            in_new.extend(
                self.new
                    .list_by_user(user)
                    .await?
                    .into_iter()
                    .map(|s| s.handle),
            );
        }
        Ok(sessions
            .into_iter()
            .filter(|s| !in_new.contains(&s.handle))
            .collect())
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<O, N> UserSessionStore for MigratingStore<O, N>
where
    O: UserSessionStore + ?Sized,
    N: UserSessionStore + ?Sized,
{
    fn backend(&self) -> &'static str {
        self.new.backend()
    }

    fn policy(&self) -> &SessionPolicy {
        self.new.policy()
    }

    async fn create(&self, new: NewUserSession) -> Result<IssuedSession> {
        self.new.create(new).await
    }

    async fn get(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        if let Some(session) = self.new.get(token).await? {
            return Ok(Some(session));
        }
        if self.forward(token).await? {
            return self.new.get(token).await;
        }
        Ok(None)
    }

    async fn touch(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        if let Some(session) = self.new.touch(token).await? {
            return Ok(Some(session));
        }
        if self.forward(token).await? {
            return self.new.touch(token).await;
        }
        Ok(None)
    }

    async fn update(&self, session: &UserSession) -> Result<Updated> {
        let updated = match self.new.update(session).await {
            Err(SessionError::NotFound)
                if self
                    .forward_handle(&session.handle, &session.user_id)
                    .await? =>
            {
                self.new.update(session).await?
            }
            other => other?,
        };
        if updated.rotated.is_some() {
            // The old handle ended in the new store; the old store's copy must not bring it back.
            self.end_handle(&session.handle).await?;
        }
        Ok(updated)
    }

    async fn rotate(&self, token: &SessionToken) -> Result<Option<IssuedSession>> {
        let mut rotated = self.new.rotate(token).await?;
        if rotated.is_none() && self.forward(token).await? {
            rotated = self.new.rotate(token).await?;
        }
        if rotated.is_some() {
            self.end_token(token).await?;
        }
        Ok(rotated)
    }

    async fn delete(&self, token: &SessionToken) -> Result<bool> {
        let new = self.new.delete(token).await?;
        Ok(self.end_token(token).await? || new)
    }

    async fn delete_by_handle(&self, handle: &SessionHandle) -> Result<bool> {
        let new = self.new.delete_by_handle(handle).await?;
        Ok(self.end_handle(handle).await? || new)
    }

    async fn list_by_user(&self, user_id: &str) -> Result<Vec<UserSession>> {
        let mut sessions = self.new.list_by_user(user_id).await?;
        let known: HashSet<SessionHandle> = sessions.iter().map(|s| s.handle.clone()).collect();
        sessions.extend(
            self.old
                .list_by_user(user_id)
                .await?
                .into_iter()
                .filter(|s| !known.contains(&s.handle)),
        );
        sessions.sort_by(|a, b| (a.created_at, &a.handle).cmp(&(b.created_at, &b.handle)));
        Ok(sessions)
    }

    async fn delete_by_user(&self, user_id: &str, except: Option<&SessionHandle>) -> Result<u64> {
        // A session in both stores (copied forward, its old copy kept) counts once.
        let in_new: HashSet<SessionHandle> = self
            .new
            .list_by_user(user_id)
            .await?
            .into_iter()
            .map(|s| s.handle)
            .collect();
        let in_both = self
            .old
            .list_by_user(user_id)
            .await?
            .iter()
            .filter(|s| in_new.contains(&s.handle) && Some(&s.handle) != except)
            .count() as u64;
        let new = self.new.delete_by_user(user_id, except).await?;
        let old = self.old.delete_by_user(user_id, except).await?;
        let swept = self.new.delete_by_user(user_id, except).await?;
        Ok((new + old + swept).saturating_sub(in_both))
    }

    async fn purge_expired(&self) -> Result<u64> {
        Ok(self.new.purge_expired().await? + self.old.purge_expired().await?)
    }

    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage> {
        crate::store::check_scan_limit(limit)?;
        let text = cursor.map_or(NEW_PHASE, ScanCursor::as_str);
        if let Some(inner) = text.strip_prefix(NEW_PHASE) {
            let inner = (!inner.is_empty()).then(|| ScanCursor::new(inner));
            let page = self.new.scan(inner.as_ref(), limit).await?;
            let next = Some(ScanCursor::new(match page.next {
                Some(next) => format!("{NEW_PHASE}{next}"),
                None => OLD_PHASE.to_owned(),
            }));
            return Ok(ScanPage {
                sessions: page.sessions,
                next,
            });
        }
        if let Some(inner) = text.strip_prefix(OLD_PHASE) {
            let inner = (!inner.is_empty()).then(|| ScanCursor::new(inner));
            let page = self.old.scan(inner.as_ref(), limit).await?;
            return Ok(ScanPage {
                sessions: self.only_in_old(page.sessions).await?,
                next: page
                    .next
                    .map(|next| ScanCursor::new(format!("{OLD_PHASE}{next}"))),
            });
        }
        Err(crate::store::bad_scan_cursor(&ScanCursor::new(text)))
    }

    async fn import(&self, session: &UserSession) -> Result<Imported> {
        self.new.import(session).await
    }

    async fn health(&self) -> Result<()> {
        self.new.health().await?;
        self.old.health().await
    }

    fn needs_purge(&self) -> bool {
        self.new.needs_purge() || self.old.needs_purge()
    }

    async fn close(&self) {
        self.new.close().await;
        self.old.close().await;
    }
}

#[async_trait]
impl<O, N> StorageDump for MigratingStore<O, N>
where
    O: UserSessionStore + StorageDump + ?Sized,
    N: UserSessionStore + StorageDump + ?Sized,
{
    /// The new store's lines, then the old store's, each prefixed by its side.
    async fn dump_raw(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = self
            .new
            .dump_raw()
            .await?
            .into_iter()
            .map(|line| format!("new: {line}"))
            .collect();
        out.extend(
            self.old
                .dump_raw()
                .await?
                .into_iter()
                .map(|line| format!("old: {line}")),
        );
        Ok(out)
    }
}
