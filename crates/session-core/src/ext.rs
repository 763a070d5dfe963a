//! Conveniences every store has, written once over the contract.

use async_trait::async_trait;

use crate::error::{Result, SessionError};
use crate::session::{Updated, UserSession};
use crate::store::UserSessionStore;
use crate::token::SessionToken;

/// How many times [`UserSessionStoreExt::update_with`] reads and writes before it gives up on
/// concurrent writers and returns the last [`SessionError::Conflict`].
pub const UPDATE_WITH_ATTEMPTS: u32 = 8;

/// Conveniences over [`UserSessionStore`], implemented for every store (and `dyn` store) so no
/// backend writes them again. Nobody implements this trait by hand.
#[async_trait]
pub trait UserSessionStoreExt: UserSessionStore {
    /// Reads the live session for `token`, lets `change` edit it, and writes it with
    /// compare-and-set. When another writer got there first ([`SessionError::Conflict`]), reads
    /// the session again and reruns `change` on the fresh copy, at most
    /// [`UPDATE_WITH_ATTEMPTS`] times in all. `change` may therefore run more than once: keep it
    /// free of side effects outside the session. Returns what `change` returned on the attempt
    /// that was stored, and the stored session (with the new token if `change` flipped `is_root`).
    ///
    /// # Errors
    /// [`SessionError::NotFound`] if the session is absent or expired (or was rotated away by a
    /// concurrent writer); the error `change` returns; the last `Conflict` once the attempts are
    /// spent; any other store error as it comes.
    async fn update_with<T, F>(&self, token: &SessionToken, change: F) -> Result<(T, Updated)>
    where
        F: FnMut(&mut UserSession) -> Result<T> + Send,
        T: Send;

    /// [`UserSessionStoreExt::update_with`] starting from `current`, a copy of the session the
    /// caller has just read (a request that already touched it), which saves the first read; the
    /// session is read again only after a `Conflict`.
    ///
    /// # Errors
    /// As `update_with`; [`SessionError::NotFound`] if `current` is not the session `token` names.
    async fn update_from<T, F>(
        &self,
        token: &SessionToken,
        current: UserSession,
        change: F,
    ) -> Result<(T, Updated)>
    where
        F: FnMut(&mut UserSession) -> Result<T> + Send,
        T: Send;
}

#[async_trait]
impl<S: UserSessionStore + ?Sized> UserSessionStoreExt for S {
    async fn update_with<T, F>(&self, token: &SessionToken, change: F) -> Result<(T, Updated)>
    where
        F: FnMut(&mut UserSession) -> Result<T> + Send,
        T: Send,
    {
        let current = self.get(token).await?.ok_or(SessionError::NotFound)?;
        self.update_from(token, current, change).await
    }

    async fn update_from<T, F>(
        &self,
        token: &SessionToken,
        mut session: UserSession,
        mut change: F,
    ) -> Result<(T, Updated)>
    where
        F: FnMut(&mut UserSession) -> Result<T> + Send,
        T: Send,
    {
        if session.handle != *token.handle() {
            return Err(SessionError::NotFound);
        }
        let mut attempt = 1;
        loop {
            let value = change(&mut session)?;
            match self.update(&session).await {
                Ok(updated) => return Ok((value, updated)),
                Err(e) if e.is_conflict() && attempt < UPDATE_WITH_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
            }
            session = self.get(token).await?.ok_or(SessionError::NotFound)?;
        }
    }
}
