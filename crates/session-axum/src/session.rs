//! The request-scoped session handle the layer gives every request.

use std::sync::Arc;

use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use session_core::{
    ErrorChain, IssuedSession, NewUserSession, SessionError, SessionToken, Updated, UserSession,
    UserSessionStore, UserSessionStoreExt,
};

use crate::client::{ClientInfo, ClientSeen};
use crate::cookie::SessionCookies;

/// How a request presented its session token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// `Authorization: Bearer <token>` (APIs). The layer never writes cookies for it, except for
    /// a session signed in by this request.
    Bearer,
    /// The session cookie (browsers).
    Cookie,
}

/// What the layer does to the cookie once the handler has answered.
pub(crate) enum CookieAction {
    Keep,
    Set(HeaderValue),
    Clear,
}

struct State {
    /// The token the session now has: the one presented, or one issued during this request.
    token: Option<SessionToken>,
    /// Further well-formed tokens presented under the cookie's name, tried in order when `token`
    /// names no live session (duplicate cookies: a planted one cannot hide the real one).
    alternatives: Vec<SessionToken>,
    /// What the store said about `token` (`None`: not asked yet).
    loaded: Option<Option<UserSession>>,
    /// Whether cookie changes are this request's to make: the token came in a cookie, or this
    /// request signed in.
    cookie_owned: bool,
    cookie: CookieAction,
    /// Whether this request issued a token (sign-in, rotation, a root change's rotation): the
    /// response may carry it, cookie or not, so the layer marks it `no-store`.
    issued: bool,
}

struct Inner {
    store: Arc<dyn UserSessionStore>,
    cookies: Arc<SessionCookies>,
    client: ClientSeen,
    recent_auth: std::time::Duration,
    transport: Option<Transport>,
    state: tokio::sync::Mutex<State>,
}

/// The session of one request, given to handlers by [`crate::SessionLayer`] (extract it as
/// `session: Session`). Nothing is asked of the store until a method needs it, and then once per
/// request: a handler that never looks costs no store call.
///
/// Sign-in, rotation, sign-out and a rotation caused by a root change decide the cookie; the
/// layer writes `Set-Cookie` after the handler. A presented cookie that this request finds names
/// no live session is cleared. Clones share one state.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

/// Shows the transport only: the state holds tokens and `Set-Cookie` values.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("transport", &self.inner.transport)
            .finish_non_exhaustive()
    }
}

/// The CSRF token [`crate::CsrfLayer`] expects with `token`'s session: a secret derived from it
/// ([`SessionToken::derive`]). For a response that hands a new token to a script (a sign-in or a
/// rotation answered with JSON); pages use [`Session::csrf_token`].
#[must_use]
pub fn csrf_token_for(token: &SessionToken) -> String {
    token.derive("csrf")
}

/// Most cookie values of the session's name a request may present that are tried.
const MAX_PRESENTED_COOKIES: usize = 4;

/// The raw tokens a request presents and how: a bearer token if the `Authorization` header has
/// the Bearer scheme (any case), else every value of the session cookie, in the order sent.
pub fn presented(headers: &HeaderMap, cookie: &str) -> Option<(Vec<String>, Transport)> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let mut parts = value.splitn(2, ' ');
        // An empty bearer token names nothing: it does not hide the cookie.
        if let (Some(scheme), Some(token)) = (parts.next(), parts.next())
            && scheme.eq_ignore_ascii_case("bearer")
            && !token.trim().is_empty()
        {
            return Some((vec![token.trim().to_owned()], Transport::Bearer));
        }
    }
    // Every `name=value` pair of every Cookie header: a cookie planted for a parent domain (or
    // over plain HTTP without the `__Host-` prefix) arrives beside the real one under the same
    // name, and which comes first is up to the browser.
    let values: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name.trim() == cookie).then(|| value.trim().trim_matches('"').to_owned())
        })
        .collect();
    (!values.is_empty()).then_some((values, Transport::Cookie))
}

impl Session {
    /// The session a request with these headers presents. Parses the token (a malformed one is
    /// treated as absent); asks the store nothing.
    pub(crate) fn from_headers(
        headers: &HeaderMap,
        store: Arc<dyn UserSessionStore>,
        cookies: Arc<SessionCookies>,
        client: ClientSeen,
        recent_auth: std::time::Duration,
    ) -> Self {
        let found = presented(headers, &cookies.cookie_name());
        let transport = found.as_ref().map(|(_, via)| *via);
        // Well-formed values only, then at most a few: each costs a store read when the ones
        // before it name nothing, and garbage must not push a real value out of the window.
        let mut tokens: Vec<SessionToken> = found
            .into_iter()
            .flat_map(|(raws, _)| raws)
            .filter_map(|raw| SessionToken::parse(&raw).ok())
            .take(MAX_PRESENTED_COOKIES)
            .collect();
        let token = (!tokens.is_empty()).then(|| tokens.remove(0));
        let malformed = transport.is_some() && token.is_none();
        let cookie_owned = transport == Some(Transport::Cookie);
        Self {
            inner: Arc::new(Inner {
                store,
                cookies,
                client,
                recent_auth,
                transport,
                state: tokio::sync::Mutex::new(State {
                    token,
                    alternatives: tokens,
                    // A malformed token names no session: known absent without asking.
                    loaded: malformed.then_some(None),
                    cookie_owned,
                    cookie: if malformed && cookie_owned {
                        CookieAction::Clear
                    } else {
                        CookieAction::Keep
                    },
                    issued: false,
                }),
            }),
        }
    }

    /// How the request presented its token, if it did.
    #[must_use]
    pub fn transport(&self) -> Option<Transport> {
        self.inner.transport
    }

    /// The store behind the layer.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn UserSessionStore> {
        &self.inner.store
    }

    /// The requesting client: its address (through the layer's trusted proxies) and device label.
    #[must_use]
    pub fn client(&self) -> ClientInfo {
        self.inner.client.info()
    }

    /// How recently the password must have been entered for [`crate::RecentAuth`]
    /// ([`crate::SessionLayer::with_recent_auth`]).
    #[must_use]
    pub fn recent_auth_bound(&self) -> std::time::Duration {
        self.inner.recent_auth
    }

    /// The CSRF token of the live session, for a form's hidden field or a fetch request's
    /// header ([`crate::CsrfLayer`] checks it on unsafe methods). Derived from the session's
    /// token, so nothing is stored and it changes whenever the token does (sign-in, rotation,
    /// re-authentication). `None` without a live session.
    ///
    /// # Errors
    /// As [`Session::current`].
    pub async fn csrf_token(&self) -> Result<Option<String>, SessionError> {
        Ok(self
            .current_with_token()
            .await?
            .map(|(_, token)| csrf_token_for(&token)))
    }

    /// Records that the user has just proved who they are again (re-entered the password): sets
    /// the session's `authenticated_at` to now, which moves it to a new token in the same store
    /// step, and sends the new cookie. What [`crate::RecentAuth`] then accepts.
    ///
    /// # Errors
    /// `NotFound` without a live session; the store's errors.
    pub async fn reauthenticate(&self) -> Result<Updated, SessionError> {
        let policy = self.inner.store.policy().clone();
        self.update_with(|s| {
            *s = s.clone().reauthenticated(&policy);
            Ok(())
        })
        .await
        .map(|((), updated)| updated)
    }

    /// The live session, touched (sliding its idle expiry, throttled by the policy); `None` when
    /// the request presents no token or one that names no live session (then a presented cookie
    /// is cleared). Asks the store at most once per request.
    ///
    /// # Errors
    /// The store's error (e.g. `Unavailable`), not cached: a later call asks again.
    pub async fn current(&self) -> Result<Option<UserSession>, SessionError> {
        Ok(self.current_with_token().await?.map(|(session, _)| session))
    }

    /// [`Session::current`] with the token that names it.
    pub(crate) async fn current_with_token(
        &self,
    ) -> Result<Option<(UserSession, SessionToken)>, SessionError> {
        let mut state = self.inner.state.lock().await;
        self.load(&mut state).await?;
        Ok(match (&state.loaded, &state.token) {
            (Some(Some(session)), Some(token)) => Some((session.clone(), token.clone())),
            _ => None,
        })
    }

    /// Asks the store about the presented token(s), once per request. Duplicate cookies: the
    /// first value that names a live session becomes the request's token, whatever order the
    /// browser sent them in, unless a later value names a *different* live session. Then neither
    /// wins: a cookie planted by a sibling host (possible only without `Secure`, which brings the
    /// `__Host-` prefix) could be the attacker's own signed-in session, and using it would act as
    /// the attacker. The request is treated as signed out and the cookie is not cleared: clearing
    /// removes only this host's cookie and would leave the planted one to win the next request.
    async fn load(&self, state: &mut State) -> Result<(), SessionError> {
        if state.loaded.is_some() {
            return Ok(());
        }
        let mut found = match &state.token {
            Some(token) => self.inner.store.touch(token).await?,
            None => None,
        };
        while found.is_none() && !state.alternatives.is_empty() {
            let next = state.alternatives.remove(0);
            found = self.inner.store.touch(&next).await?;
            state.token = Some(next);
        }
        if let Some(live) = &found {
            for other in std::mem::take(&mut state.alternatives) {
                if *other.handle() == live.handle {
                    continue;
                }
                // `get`, not `touch`: asking must not keep the other session alive.
                if self.inner.store.get(&other).await?.is_some() {
                    tracing::warn!(
                        "duplicate session cookies name two live sessions; neither is used"
                    );
                    state.token = None;
                    state.loaded = Some(None);
                    return Ok(());
                }
            }
        }
        if found.is_none() && state.token.is_some() && state.cookie_owned {
            state.cookie = CookieAction::Clear;
        }
        state.loaded = Some(found);
        Ok(())
    }

    /// Before a write acts on the request's token: with duplicate cookies, settle which one names
    /// the live session first, so a dead value sent ahead of it is never the one written to.
    async fn settle(&self, state: &mut State) -> Result<(), SessionError> {
        if state.alternatives.is_empty() {
            return Ok(());
        }
        self.load(state).await
    }

    /// The attribute `key` of the live session, decoded as a `T`; `None` if there is no session
    /// or no such attribute.
    ///
    /// # Errors
    /// As [`Session::current`]; `InvalidInput` if the value is not a `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        match self.current().await? {
            Some(session) => session.get(key),
            None => Ok(None),
        }
    }

    /// Stores `value` under `key` in the live session (one compare-and-set write, re-read and
    /// retried on a concurrent change).
    ///
    /// # Errors
    /// `NotFound` without a live session; `InvalidInput`/`PayloadTooLarge` for a value that
    /// cannot be encoded or does not fit; the store's errors.
    pub async fn insert<T: Serialize + Sync + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), SessionError> {
        self.update_with(|s| s.insert(key, value)).await.map(drop)
    }

    /// Removes the attribute `key` from the live session; returns its raw value if it was there.
    /// Writes nothing when the session has no such attribute.
    ///
    /// # Errors
    /// `NotFound` without a live session; the store's errors.
    pub async fn remove(&self, key: &str) -> Result<Option<serde_json::Value>, SessionError> {
        match self.current().await? {
            Some(session) if !session.attributes.contains_key(key) => return Ok(None),
            Some(_) => {}
            None => return Err(SessionError::NotFound),
        }
        self.update_with(|s| Ok(s.remove(key)))
            .await
            .map(|(value, _)| value)
    }

    /// Edits the live session with `change` and writes it with compare-and-set, starting from the
    /// copy this request already read when there is one (see
    /// [`UserSessionStoreExt::update_from`]: reread and rerun on a concurrent change). If `change`
    /// flips `is_root`, the store rotates the token in the same step and the layer sends the new
    /// cookie.
    ///
    /// # Errors
    /// `NotFound` without a live session (the cookie is then cleared); `change`'s own error as it
    /// is (the session and cookie stay); the store's errors.
    pub async fn update_with<T, F>(&self, mut change: F) -> Result<(T, Updated), SessionError>
    where
        F: FnMut(&mut UserSession) -> Result<T, SessionError> + Send,
        T: Send,
    {
        let mut state = self.inner.state.lock().await;
        self.settle(&mut state).await?;
        let Some(token) = state.token.clone() else {
            return Err(SessionError::NotFound);
        };
        let loaded = state.loaded.clone();
        // Tells the caller's own error from the store's, so only the store's `NotFound` signs out.
        let mut change_failed = false;
        let tracked = |s: &mut UserSession| {
            let result = change(s);
            change_failed = result.is_err();
            result
        };
        let result = match loaded {
            Some(None) => Err(SessionError::NotFound),
            Some(Some(current)) => self.inner.store.update_from(&token, current, tracked).await,
            None => self.inner.store.update_with(&token, tracked).await,
        };
        let (value, updated) = match result {
            Err(SessionError::NotFound) if !change_failed => {
                self.forget(&mut state);
                return Err(SessionError::NotFound);
            }
            other => other?,
        };
        if let Some(new_token) = &updated.rotated {
            self.adopt(&mut state, new_token.clone(), &updated.session);
        } else {
            state.loaded = Some(Some(updated.session.clone()));
        }
        Ok((value, updated))
    }

    /// Signs a user in: creates a session and sets its cookie (also on a request that came with a
    /// bearer token: a sign-in response is where a browser gets its cookie). A session whose
    /// cookie the request presented is then removed: this browser holds one session, and the old
    /// one would otherwise live on unused. A bearer-presented session is left alone (an API client
    /// may hold several).
    ///
    /// # Errors
    /// `InvalidInput`/`PayloadTooLarge` for bad fields; the store's errors. Nothing changes then.
    ///
    /// The session records the client's device label and address ([`Session::client`]) where
    /// `new` leaves them empty.
    pub async fn sign_in(&self, mut new: NewUserSession) -> Result<IssuedSession, SessionError> {
        let client = self.client();
        if new.device.is_empty() {
            // Cut to the policy's field limit: a client's User-Agent alone must not fail a sign-in.
            let limit = self.inner.store.policy().max_field_bytes;
            let mut device = client.device;
            while device.len() > limit {
                device.pop();
            }
            new.device = device;
        }
        if new.address.is_none() {
            new.address = client.address;
        }
        let mut state = self.inner.state.lock().await;
        self.settle(&mut state).await?;
        let issued = self.inner.store.create(new).await?;
        let replaced = state.token.take().filter(|_| state.cookie_owned);
        if let Some(old) = replaced
            && let Err(e) = self.inner.store.delete(&old).await
        {
            // The new session stands; the old one, no longer in this browser, expires by itself.
            tracing::warn!(handle = %old.handle(), error = %ErrorChain(&e), "could not remove the session replaced by a sign-in");
        }
        state.cookie_owned = true;
        self.adopt(&mut state, issued.token.clone(), &issued.session);
        Ok(issued)
    }

    /// Moves the live session to a new token (after sign-in or any privilege change) and sends
    /// the new cookie. `None` without a live session.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn rotate(&self) -> Result<Option<IssuedSession>, SessionError> {
        let mut state = self.inner.state.lock().await;
        self.settle(&mut state).await?;
        let Some(token) = state.token.clone() else {
            return Ok(None);
        };
        match self.inner.store.rotate(&token).await? {
            Some(issued) => {
                self.adopt(&mut state, issued.token.clone(), &issued.session);
                Ok(Some(issued))
            }
            None => {
                self.forget(&mut state);
                Ok(None)
            }
        }
    }

    /// Signs out: removes the session and clears the cookie. True if a live session was removed.
    ///
    /// # Errors
    /// The store's errors (the cookie is then left as it was).
    pub async fn sign_out(&self) -> Result<bool, SessionError> {
        let mut state = self.inner.state.lock().await;
        self.settle(&mut state).await?;
        let removed = match &state.token {
            Some(token) => self.inner.store.delete(token).await?,
            None => false,
        };
        self.forget(&mut state);
        Ok(removed)
    }

    fn adopt(&self, state: &mut State, token: SessionToken, session: &UserSession) {
        if state.cookie_owned {
            state.cookie = CookieAction::Set(self.inner.cookies.set(&token, session));
        }
        state.token = Some(token);
        state.loaded = Some(Some(session.clone()));
        state.issued = true;
    }

    fn forget(&self, state: &mut State) {
        if state.cookie_owned && state.token.is_some() {
            state.cookie = CookieAction::Clear;
        }
        state.token = None;
        state.loaded = Some(None);
    }

    /// Whether this request issued a token, which the response may carry in its body.
    pub(crate) async fn issued_token(&self) -> bool {
        self.inner.state.lock().await.issued
    }

    /// The `Set-Cookie` value this request decided on, if any, for the layer to write.
    pub(crate) async fn cookie_header(&self) -> Option<HeaderValue> {
        let state = self.inner.state.lock().await;
        match &state.cookie {
            CookieAction::Keep => None,
            CookieAction::Set(value) => Some(value.clone()),
            CookieAction::Clear => Some(self.inner.cookies.clear()),
        }
    }
}
