//! [`MigratingStore`]: serves from a new store while sessions move to it from an old one, with no
//! sign-outs and no revocation undone, also while a fleet rolls from one phase to the next
//! (ADR 0026, ADR 0028).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::SessionError;
use crate::error::Result;
use crate::policy::SessionPolicy;
use crate::session::{IssuedSession, NewUserSession, Updated, UserSession};
use crate::store::{Imported, ScanCursor, ScanPage, StorageDump, UserSessionStore};
use crate::token::{SessionHandle, SessionToken};

/// Where a move between stores stands. A fleet rolls from one phase to the next, one rollout at a
/// time; during each rollout two neighbouring configurations serve side by side, and each phase
/// is built so that it and both of its neighbours keep every session and every ending:
///
/// | phase | creates in | reads | copies forward | endings |
/// |---|---|---|---|---|
/// | (before) old store only | old | old | - | old |
/// | [`Prepare`](Self::Prepare) | old | new, then old | no | old, then new (tombstone) |
/// | [`Copy`](Self::Copy) | new | new, then old | yes | old, then new (tombstone) |
/// | [`Finish`](Self::Finish) | new | new | - | old, then new (tombstone) |
/// | (after) new store only | new | new | - | new |
///
/// An instance that still reaches only the old store never meets a copy (nothing copies until
/// every instance ends in both stores), and an instance that reaches only the new store never
/// meets a copying one (every instance reads only the new store first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationPhase {
    /// Serves as the old store did (sessions are created in it) but ends sessions in both stores
    /// and reads the new one first, so that the instances of the next phase can copy.
    Prepare,
    /// Sessions are created in the new store; a session found only in the old one is copied
    /// forward on its first read. `sessionctl migrate` copies the rest in this phase.
    #[default]
    Copy,
    /// Reads only the new store and still ends sessions in both, while instances of the copy
    /// phase may still read the old one.
    Finish,
}

impl MigrationPhase {
    /// The phase's name in configuration: `prepare`, `copy` or `finish`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepare => "prepare",
            Self::Copy => "copy",
            Self::Finish => "finish",
        }
    }
}

impl std::str::FromStr for MigrationPhase {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "prepare" => Ok(Self::Prepare),
            "copy" => Ok(Self::Copy),
            "finish" => Ok(Self::Finish),
            other => Err(format!(
                "unknown migration phase {other:?}: prepare, copy or finish"
            )),
        }
    }
}

impl std::fmt::Display for MigrationPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long a tombstone must stand: a copy read from the old store before the ending carries
/// an idle expiry no later than its last touch there plus the longest idle timeout (capped by
/// the longest absolute lifetime), and an import refuses a copy that has expired; a minute more
/// covers clocks of instances and `sessionctl` that differ a little.
fn tombstone_lifetime(policy: &SessionPolicy) -> std::time::Duration {
    let idle = policy.idle_timeout.max(policy.remember_me_idle_timeout);
    let absolute = policy
        .absolute_timeout
        .max(policy.remember_me_absolute_timeout);
    idle.min(absolute) + std::time::Duration::from_secs(60)
}

/// A store moving from `old` to `new` while both serve, in one [`MigrationPhase`].
///
/// In the copy phase (the default):
/// - **Reads** (`get`, `touch`) look in the new store, then in the old one; a session found only
///   in the old one is copied forward (`import`) and served from the new one.
/// - **Writes** go to the new store (`create`, `import`, `update`, `rotate`, after copying the
///   session forward if it is not there yet).
/// - **Endings** (`delete`, `delete_by_handle`, `delete_by_user`) apply to the old store, then
///   the new one. A session the old store held is ended in the new one with
///   [`UserSessionStore::delete_with_tombstone`]: a copy of it read from the old store just
///   before (by `sessionctl migrate`, or another instance's first read) is removed if it landed
///   first and refused if it lands after, so an ended session is never served again, not even
///   for a moment (ADR 0029). If the old store fails, nothing has changed. A new store without
///   tombstones gets a plain removal, and a copy's own check (below) removes a late copy.
/// - **A copy checks itself**: a copy that stored the session (`Imported::Stored`) reads the old
///   store again, and if the session has gone from it meanwhile (an ending in progress), deletes
///   the copy; no copy is removed while its session lives. `sessionctl migrate` copies the rest,
///   with the same check behind the tombstones.
/// - **A rotation** (`rotate`, an `update` that changes `is_root` or `authenticated_at`) rotates in the new store
///   (after copying forward), then ends the old handle in the old store and then in the new one,
///   with its tombstone, as an ending does. Once the new store has rotated, the new token is handed out whatever the
///   old store answers: a failed clean-up is tried again, then logged with the handle
///   (`session.migrate retire failed`), and until that handle is revoked or expires a copying
///   instance can serve it from the old store. (Removing the old copy first would look, to a
///   concurrent first read's check, like an ending, and that check would remove the copy the
///   rotation is about to rotate.) In the finish phase no instance copies a session the new
///   store holds, so there the old copy goes first and a failure changes nothing.
///
/// The old store is emptied only through endings and rotations: an old copy of a session already
/// copied forward stays there until it expires or the old backend is dropped from the
/// configuration. `list_by_user` shows each session once, the new store's version.
pub struct MigratingStore<O: ?Sized, N: ?Sized> {
    old: Arc<O>,
    new: Arc<N>,
    phase: MigrationPhase,
}

impl<O: ?Sized, N: ?Sized> MigratingStore<O, N> {
    /// Serves from `new`, falling back to `old`, in the copy phase.
    pub fn new(old: Arc<O>, new: Arc<N>) -> Self {
        Self::with_phase(old, new, MigrationPhase::Copy)
    }

    /// Serves in `phase` of the move from `old` to `new`.
    pub fn with_phase(old: Arc<O>, new: Arc<N>, phase: MigrationPhase) -> Self {
        Self { old, new, phase }
    }

    /// The store sessions move from.
    pub fn old(&self) -> &Arc<O> {
        &self.old
    }

    /// The store sessions move to.
    pub fn new_store(&self) -> &Arc<N> {
        &self.new
    }

    /// The phase this store serves in.
    pub fn phase(&self) -> MigrationPhase {
        self.phase
    }
}

impl<O: UserSessionStore + ?Sized, N: UserSessionStore + ?Sized> std::fmt::Debug
    for MigratingStore<O, N>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigratingStore")
            .field("phase", &self.phase)
            .field("old", &self.old)
            .field("new", &self.new)
            .finish()
    }
}

/// The cursor prefix of a walk over the old store, then the new one.
const OLD_PHASE: &str = "mg2:o:";
const NEW_PHASE: &str = "mg2:n:";

/// How many times [`MigratingStore::retire`] tries, and its first pause between tries (doubled
/// after each).
const RETIRE_ATTEMPTS: u32 = 3;
const RETIRE_FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Which read [`MigratingStore::read`] makes.
#[derive(Clone, Copy)]
enum Read {
    Get,
    Touch,
}

/// What a rotation (or an old-store write) left behind, for [`MigratingStore::retire`].
#[derive(Clone, Copy)]
enum Retired<'a> {
    /// A token rotated away: ended in the old store, swept from the new one.
    Token(&'a SessionToken),
    /// A handle rotated away: the same.
    Handle(&'a SessionHandle),
    /// A handle an old-store rotation ended: a new-store copy is ended, with a tombstone.
    CopyOf(&'a SessionHandle),
    /// A handle whose old-store copy was just written: a new-store copy holding the version
    /// before is swept, without a tombstone, so that the next copy is the current one.
    StaleCopyOf(&'a SessionHandle),
}

/// How a copy forward names its session: by token (`get`, `touch`, `rotate`), or by handle and
/// user (`update`).
#[derive(Clone, Copy)]
enum Named<'a> {
    Token(&'a SessionToken),
    Handle(&'a SessionHandle, &'a str),
}

/// What [`MigratingStore::check_copy`] decided.
enum Check {
    Keep,
    /// Removed; with the error that left the copy unchecked, if one did.
    Remove(Option<SessionError>),
    Again,
}

/// How many times a read starts over when the copy it made forward was removed before it read it
/// back (another instance's sweep of a stale copy; the next copy is the current one).
const READ_ATTEMPTS: usize = 3;

impl<O, N> MigratingStore<O, N>
where
    O: UserSessionStore + ?Sized,
    N: UserSessionStore + ?Sized,
{
    /// Copies the session `token` names from the old store to the new one, if it is live there
    /// and not in the new one. True if the new store holds it afterwards.
    async fn forward(&self, token: &SessionToken) -> Result<bool> {
        self.forward_as(Named::Token(token)).await
    }

    /// [`MigratingStore::forward`] by handle, for `update`, which has no token: the old store's
    /// copy is found in its user's list.
    async fn forward_handle(&self, handle: &SessionHandle, user_id: &str) -> Result<bool> {
        self.forward_as(Named::Handle(handle, user_id)).await
    }

    /// The old store's copy of the session `named` names.
    async fn old_copy(&self, named: Named<'_>) -> Result<Option<UserSession>> {
        match named {
            Named::Token(token) => self.old.get(token).await,
            Named::Handle(handle, user_id) => self.old_session(handle, user_id).await,
        }
    }

    /// Removes the new store's copy of the session `named` names.
    async fn remove_copy(&self, named: Named<'_>) -> Result<bool> {
        match named {
            Named::Token(token) => self.new.delete(token).await,
            Named::Handle(handle, _) => self.new.delete_by_handle(handle).await,
        }
    }

    async fn forward_as(&self, named: Named<'_>) -> Result<bool> {
        for attempt in 1..=READ_ATTEMPTS {
            let Some(session) = self.old_copy(named).await? else {
                return Ok(false);
            };
            let checked = self.new.import(&session).await?;
            if checked != Imported::Stored {
                return Ok(checked == Imported::AlreadyPresent);
            }
            match self.check_copy(&session, self.old_copy(named).await, attempt) {
                Check::Keep => return Ok(true),
                Check::Remove(err) => {
                    // Unchecked or ended: the copy must not outlive the old one's ending.
                    let removed = self.remove_copy(named).await;
                    return match err {
                        Some(err) => Err(err),
                        None => removed.map(|_| false),
                    };
                }
                Check::Again => {
                    self.remove_copy(named).await?;
                }
            }
        }
        Ok(false)
    }

    /// What a copy just stored does after reading the old store again (`now`): keep itself if
    /// the old copy is the one it copied, or if the old copy merely expired (touches go to the new
    /// store only, so the copy may be live); remove itself if the old copy ended (an ending in
    /// progress) or cannot be read (unchecked, it could outlive an ending); copy again if the
    /// old copy was written meanwhile (an update on an instance of the prepare phase), but keep
    /// the last attempt's copy rather than sign the session out.
    fn check_copy(
        &self,
        copied: &UserSession,
        now: Result<Option<UserSession>>,
        attempt: usize,
    ) -> Check {
        match now {
            Ok(Some(now)) if now.version == copied.version || attempt == READ_ATTEMPTS => {
                Check::Keep
            }
            Ok(Some(_)) => Check::Again,
            Ok(None) if self.policy().is_expired(copied, self.policy().now()) => Check::Keep,
            Ok(None) => Check::Remove(None),
            Err(err) => Check::Remove(Some(err)),
        }
    }

    /// After a rotation the new store has made (or an old-store write a stale copy may shadow):
    /// removes the old handle from the old store, then ends any copy of it in the new one (with a
    /// tombstone, unless the copy is a stale one of a session that lives on). The rotation has happened, so its new token is handed out whatever this meets:
    /// a failure is tried again a few times, then logged with the handle, which then lives on in
    /// the old store until it expires or is revoked (`sessionctl revoke --handle`).
    async fn retire(&self, retired: Retired<'_>) {
        let mut pause = RETIRE_FIRST_PAUSE;
        // Kept across attempts: an attempt that ended the old copy and then failed in the new
        // store leaves the next one finding nothing in the old store, and the tombstone is due.
        let mut old_held = false;
        for attempt in 1..=RETIRE_ATTEMPTS {
            let ended = match retired {
                Retired::Token(token) => {
                    self.end_in_both(token.handle(), Some(token), &mut old_held)
                        .await
                }
                Retired::Handle(handle) => self.end_in_both(handle, None, &mut old_held).await,
                Retired::CopyOf(handle) => self.end_in_new(handle, true).await,
                Retired::StaleCopyOf(handle) => self.new.delete_by_handle(handle).await,
            };
            match ended {
                Ok(_) => return,
                Err(err) if attempt < RETIRE_ATTEMPTS => {
                    tracing::debug!(target: "session", attempt, error = %crate::ErrorChain(&err), "session.migrate retire retried");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(err) => {
                    let handle = match retired {
                        Retired::Token(token) => token.handle().to_string(),
                        Retired::Handle(handle)
                        | Retired::CopyOf(handle)
                        | Retired::StaleCopyOf(handle) => handle.to_string(),
                    };
                    tracing::error!(target: "session", handle, error = %crate::ErrorChain(&err), "session.migrate retire failed: the old handle may still be served from the old store");
                }
            }
        }
    }

    /// `get` or `touch` (`read`) through both stores: the new store first; in the copy phase a
    /// session found only in the old one is copied forward and read again from the new one.
    async fn read(&self, token: &SessionToken, read: Read) -> Result<Option<UserSession>> {
        for _ in 0..READ_ATTEMPTS {
            let found = match read {
                Read::Get => self.new.get(token).await?,
                Read::Touch => self.new.touch(token).await?,
            };
            if found.is_some() {
                return Ok(found);
            }
            match self.phase {
                MigrationPhase::Prepare => return self.read_old(token, read).await,
                MigrationPhase::Finish => return Ok(None),
                MigrationPhase::Copy if !self.forward(token).await? => return Ok(None),
                MigrationPhase::Copy => {}
            }
        }
        // Copies kept being swept (several first reads racing a write in the prepare phase):
        // the old store's copy is live, so it is served, and a later read copies it.
        self.read_old(token, read).await
    }

    async fn read_old(&self, token: &SessionToken, read: Read) -> Result<Option<UserSession>> {
        match read {
            Read::Get => self.old.get(token).await,
            Read::Touch => self.old.touch(token).await,
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

    /// Ends `handle` in the new store once the old store's ending has run. If the old store held
    /// it live, a copy read from there just before may still be on its way (`sessionctl migrate`,
    /// another instance's first read), so the new store ends it with a tombstone that refuses
    /// such a copy (ADR 0029). If the old store no longer held it but the new store did (an
    /// ending tried again after its first attempt ended the old copy, then failed here), the
    /// tombstone follows the removal. A handle neither store held leaves nothing behind. A new
    /// store without tombstones (`Unsupported`) gets the plain removal.
    async fn end_in_new(&self, handle: &SessionHandle, old_held: bool) -> Result<bool> {
        let until = self.policy().now() + tombstone_lifetime(self.policy());
        if old_held {
            return match self.new.delete_with_tombstone(handle, until).await {
                Err(SessionError::Unsupported { .. }) => self.new.delete_by_handle(handle).await,
                other => other,
            };
        }
        let removed = self.new.delete_by_handle(handle).await?;
        if removed {
            match self.new.delete_with_tombstone(handle, until).await {
                Ok(_) | Err(SessionError::Unsupported { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(removed)
    }

    /// Ends the session in both stores: the old one first, then the new one (with a tombstone
    /// if the old one held it, in this attempt or in an earlier one recorded in `old_held`). If
    /// the old store fails, nothing has changed.
    async fn end_in_both(
        &self,
        handle: &SessionHandle,
        token: Option<&SessionToken>,
        old_held: &mut bool,
    ) -> Result<bool> {
        let old = match token {
            Some(token) => self.old.delete(token).await?,
            None => self.old.delete_by_handle(handle).await?,
        };
        *old_held |= old;
        Ok(self.end_in_new(handle, *old_held).await? || old)
    }

    /// The handles of `sessions`' users that `store` holds (by the users' lists).
    async fn handles_in<S: UserSessionStore + ?Sized>(
        store: &S,
        sessions: &[UserSession],
    ) -> Result<HashSet<SessionHandle>> {
        let mut users: Vec<&str> = sessions.iter().map(|s| s.user_id.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        let mut held = HashSet::new();
        for user in users {
            held.extend(
                store
                    .list_by_user(user)
                    .await?
                    .into_iter()
                    .map(|s| s.handle),
            );
        }
        Ok(held)
    }

    /// A page of the old store's walk: each session as the new store holds it, if it does.
    async fn old_page(&self, sessions: Vec<UserSession>) -> Result<Vec<UserSession>> {
        let mut users: Vec<&str> = sessions.iter().map(|s| s.user_id.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        let mut in_new = std::collections::HashMap::new();
        for user in users {
            for session in self.new.list_by_user(user).await? {
                in_new.insert(session.handle.clone(), session);
            }
        }
        Ok(sessions
            .into_iter()
            .map(|s| in_new.remove(&s.handle).unwrap_or(s))
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
        match self.phase {
            MigrationPhase::Prepare => self.old.backend(),
            MigrationPhase::Copy | MigrationPhase::Finish => self.new.backend(),
        }
    }

    fn policy(&self) -> &SessionPolicy {
        self.new.policy()
    }

    async fn create(&self, new: NewUserSession) -> Result<IssuedSession> {
        match self.phase {
            MigrationPhase::Prepare => self.old.create(new).await,
            MigrationPhase::Copy | MigrationPhase::Finish => self.new.create(new).await,
        }
    }

    async fn get(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        self.read(token, Read::Get).await
    }

    async fn touch(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        self.read(token, Read::Touch).await
    }

    async fn update(&self, session: &UserSession) -> Result<Updated> {
        let handle = &session.handle;
        match self.phase {
            MigrationPhase::Prepare => match self.new.update(session).await {
                // A copying instance moved it (the fleet is rolling into the copy phase): as there.
                Ok(updated) => {
                    if updated.rotated.is_some() {
                        self.retire(Retired::Handle(handle)).await;
                    }
                    Ok(updated)
                }
                Err(SessionError::NotFound) => {
                    let updated = self.old.update(session).await?;
                    if updated.rotated.is_some() {
                        // A copy of the handle this rotation ended goes, whatever it holds.
                        self.retire(Retired::CopyOf(handle)).await;
                        return Ok(updated);
                    }
                    // A copy a copying instance made meanwhile holds the version before this
                    // write: swept, so that reads find the old store's copy and the next copy is
                    // the current one. A copy already written past that version was updated in
                    // the new store from the same version: it stands, and this write is told
                    // as the conflict it lost.
                    let copy = self
                        .new
                        .list_by_user(&session.user_id)
                        .await?
                        .into_iter()
                        .find(|s| &s.handle == handle);
                    let ours = &updated.session;
                    match copy {
                        // Copied after this write: it is this write.
                        Some(copy)
                            if copy.version == ours.version
                                && copy.attributes == ours.attributes
                                && copy.company_name == ours.company_name
                                && copy.email == ours.email
                                && copy.is_root == ours.is_root
                                && copy.authenticated_at == ours.authenticated_at
                                && copy.device == ours.device
                                && copy.address == ours.address =>
                        {
                            Ok(updated)
                        }
                        Some(copy) if copy.version > session.version => {
                            Err(SessionError::Conflict {
                                expected: session.version,
                                actual: copy.version,
                            })
                        }
                        Some(_) => {
                            self.retire(Retired::StaleCopyOf(handle)).await;
                            Ok(updated)
                        }
                        None => Ok(updated),
                    }
                }
                Err(err) => Err(err),
            },
            MigrationPhase::Copy => {
                let updated = match self.new.update(session).await {
                    Err(SessionError::NotFound)
                        if self.forward_handle(handle, &session.user_id).await? =>
                    {
                        self.new.update(session).await?
                    }
                    other => other?,
                };
                if updated.rotated.is_some() {
                    // The old handle ended in the new store; the old store's copy must not bring
                    // it back.
                    self.retire(Retired::Handle(handle)).await;
                }
                Ok(updated)
            }
            MigrationPhase::Finish => {
                // Every session is in the new store, so copying instances reach the old one only
                // for a handle the new store lacks: its old copy goes first, before a rotation
                // can leave it behind, and if that fails nothing has changed.
                let old_held = self.old.delete_by_handle(handle).await?;
                let updated = self.new.update(session).await;
                // A copying instance's copy of the old handle, read before the old copy went,
                // must not land after the rotation (or after the old copy of a session the new
                // store lacked went).
                let handle_gone = match &updated {
                    Ok(updated) => updated.rotated.is_some(),
                    Err(err) => matches!(err, SessionError::NotFound),
                };
                if old_held && handle_gone {
                    self.retire(Retired::CopyOf(handle)).await;
                }
                updated
            }
        }
    }

    async fn rotate(&self, token: &SessionToken) -> Result<Option<IssuedSession>> {
        match self.phase {
            MigrationPhase::Prepare if self.new.get(token).await?.is_none() => {
                let rotated = self.old.rotate(token).await?;
                if rotated.is_some() {
                    // A copy of the old token a copying instance made meanwhile is swept.
                    self.retire(Retired::CopyOf(token.handle())).await;
                }
                Ok(rotated)
            }
            MigrationPhase::Prepare | MigrationPhase::Copy => {
                let mut rotated = self.new.rotate(token).await?;
                if rotated.is_none() && self.phase == MigrationPhase::Prepare {
                    // The copy went (another instance swept it) since the look above: the
                    // session may still be in the old store.
                    let rotated = self.old.rotate(token).await?;
                    if rotated.is_some() {
                        self.retire(Retired::CopyOf(token.handle())).await;
                    }
                    return Ok(rotated);
                }
                if rotated.is_none() && self.forward(token).await? {
                    rotated = self.new.rotate(token).await?;
                }
                if rotated.is_some() {
                    self.retire(Retired::Token(token)).await;
                }
                Ok(rotated)
            }
            MigrationPhase::Finish => {
                // As in `update`: the old copy first, so that a failure changes nothing.
                let old_held = self.old.delete(token).await?;
                let rotated = self.new.rotate(token).await?;
                if old_held {
                    // Rotated away, or (the new store lacked it) ended with its old copy.
                    self.retire(Retired::CopyOf(token.handle())).await;
                }
                Ok(rotated)
            }
        }
    }

    async fn delete(&self, token: &SessionToken) -> Result<bool> {
        self.end_in_both(token.handle(), Some(token), &mut false)
            .await
    }

    async fn delete_by_handle(&self, handle: &SessionHandle) -> Result<bool> {
        self.end_in_both(handle, None, &mut false).await
    }

    async fn list_by_user(&self, user_id: &str) -> Result<Vec<UserSession>> {
        let mut sessions = self.new.list_by_user(user_id).await?;
        if self.phase == MigrationPhase::Finish {
            return Ok(sessions);
        }
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
        // The stores' counts add a session once per store it was removed from, and a session
        // copied forward while this runs can be removed from both: the sum is capped by the
        // distinct sessions there were (a session signed in meanwhile may go uncounted).
        let others = |sessions: Vec<UserSession>| -> HashSet<SessionHandle> {
            sessions
                .into_iter()
                .map(|s| s.handle)
                .filter(|h| Some(h) != except)
                .collect()
        };
        let in_new = others(self.new.list_by_user(user_id).await?);
        let in_old = others(self.old.list_by_user(user_id).await?);
        let before = if self.phase == MigrationPhase::Finish {
            // Only the new store's sessions are served now: an old copy left by an instance
            // that no longer reaches the old store is removed, not counted.
            in_new.len()
        } else {
            in_new.union(&in_old).count()
        } as u64;
        // The old store first; then each session it held is ended in the new store with its
        // tombstone, so that a copy of it read before (`sessionctl migrate`, another instance's
        // first read) cannot land after this.
        let mut removed = self.old.delete_by_user(user_id, except).await?;
        for handle in &in_old {
            removed += u64::from(self.end_in_new(handle, true).await?);
        }
        // The rest: sessions of the new store alone, and (without tombstones, or signed in to
        // the old store while this ran) a copy made meanwhile.
        removed += self.new.delete_by_user(user_id, except).await?;
        Ok(removed.min(before))
    }

    async fn purge_expired(&self) -> Result<u64> {
        Ok(self.new.purge_expired().await? + self.old.purge_expired().await?)
    }

    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage> {
        crate::store::check_scan_limit(limit)?;
        if self.phase == MigrationPhase::Finish {
            return self.new.scan(cursor, limit).await;
        }
        // The old store first: a session copied forward during the walk is still in the old
        // store (copies keep the old one), so it is met there; the new store's walk then skips
        // what the old store holds.
        let text = cursor.map_or(OLD_PHASE, ScanCursor::as_str);
        if let Some(inner) = text.strip_prefix(OLD_PHASE) {
            let inner = (!inner.is_empty()).then(|| ScanCursor::new(inner));
            let page = self.old.scan(inner.as_ref(), limit).await?;
            let next = Some(ScanCursor::new(match page.next {
                Some(next) => format!("{OLD_PHASE}{next}"),
                None => NEW_PHASE.to_owned(),
            }));
            return Ok(ScanPage {
                sessions: self.old_page(page.sessions).await?,
                next,
            });
        }
        if let Some(inner) = text.strip_prefix(NEW_PHASE) {
            let inner = (!inner.is_empty()).then(|| ScanCursor::new(inner));
            let page = self.new.scan(inner.as_ref(), limit).await?;
            let in_old = Self::handles_in(&*self.old, &page.sessions).await?;
            return Ok(ScanPage {
                sessions: page
                    .sessions
                    .into_iter()
                    .filter(|s| !in_old.contains(&s.handle))
                    .collect(),
                next: page
                    .next
                    .map(|next| ScanCursor::new(format!("{NEW_PHASE}{next}"))),
            });
        }
        Err(crate::store::bad_scan_cursor(&ScanCursor::new(text)))
    }

    async fn import(&self, session: &UserSession) -> Result<Imported> {
        match self.phase {
            MigrationPhase::Prepare => self.old.import(session).await,
            MigrationPhase::Copy | MigrationPhase::Finish => self.new.import(session).await,
        }
    }

    /// A tombstone in both stores (either may receive imports from a neighbouring phase of an
    /// outer move), the old one first; a store without tombstones gets a plain removal.
    async fn delete_with_tombstone(
        &self,
        handle: &SessionHandle,
        until: SystemTime,
    ) -> Result<bool> {
        let old = match self.old.delete_with_tombstone(handle, until).await {
            Err(SessionError::Unsupported { .. }) => self.old.delete_by_handle(handle).await?,
            other => other?,
        };
        let new = match self.new.delete_with_tombstone(handle, until).await {
            Err(SessionError::Unsupported { .. }) => self.new.delete_by_handle(handle).await?,
            other => other?,
        };
        Ok(old || new)
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
