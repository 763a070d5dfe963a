//! The tower layer that gives every request a [`Session`] and writes its cookie.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::header::{CACHE_CONTROL, SET_COOKIE};
use axum::http::{HeaderValue, Request, Response};
use session_core::UserSessionStore;
use tower_layer::Layer;
use tower_service::Service;

use crate::client::{ClientSeen, TrustedProxies, peer_of};
use crate::cookie::SessionCookies;
use crate::session::Session;

/// Puts a request-scoped [`Session`] in every request's extensions and, once the handler has
/// answered, writes the `Set-Cookie` its actions call for: the new cookie after a sign-in, a
/// rotation or a rotation caused by a root change; a clearing cookie after sign-out, or when the
/// request found that the presented cookie names no live session (a handler that never looks at
/// the session does not find out). A response that sets a cookie is also marked
/// `Cache-Control: no-store`, replacing what the handler set, so no cache keeps a token.
///
/// ```
/// # use std::sync::Arc;
/// use axum::{Router, routing::get};
/// use session_axum::{CurrentSession, SessionCookies, SessionLayer};
/// # let store: Arc<dyn session_core::UserSessionStore> = Arc::new(
/// #     session_memory::MemoryStore::new(session_core::SessionPolicy::default()).unwrap());
/// let app: Router = Router::new()
///     .route("/me", get(|current: CurrentSession| async move { current.session.user_id }))
///     .layer(SessionLayer::new(store).with_cookies(SessionCookies::default()));
/// ```
#[derive(Clone, Debug)]
pub struct SessionLayer {
    store: Arc<dyn UserSessionStore>,
    cookies: Arc<SessionCookies>,
    proxies: Arc<TrustedProxies>,
    recent_auth: std::time::Duration,
}

impl SessionLayer {
    /// Sessions from `store` (e.g. `SessionManager::sessions()`), with the default cookie.
    #[must_use]
    pub fn new(store: Arc<dyn UserSessionStore>) -> Self {
        Self {
            store,
            cookies: Arc::new(SessionCookies::default()),
            proxies: Arc::new(TrustedProxies::none()),
            recent_auth: crate::recent::DEFAULT_RECENT_AUTH,
        }
    }

    /// How recently the password must have been entered for [`crate::RecentAuth`] to accept a
    /// session. Default 10 minutes.
    #[must_use]
    pub fn with_recent_auth(mut self, max_age: std::time::Duration) -> Self {
        self.recent_auth = max_age;
        self
    }

    /// Believes `X-Forwarded-For` from these proxies when it works out the client's address
    /// ([`crate::ClientInfo`], recorded at sign-in). Default: none.
    #[must_use]
    pub fn with_trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.proxies = Arc::new(proxies);
        self
    }

    /// Writes and reads the cookie as `cookies` says.
    ///
    /// # Panics
    /// If the cookie's name or path cannot be written in a header ([`SessionCookies::check`]):
    /// a configuration mistake that would otherwise sign nobody in.
    #[must_use]
    pub fn with_cookies(mut self, cookies: SessionCookies) -> Self {
        if let Err(reason) = cookies.check() {
            panic!("SessionLayer::with_cookies: {reason}");
        }
        self.cookies = Arc::new(cookies);
        self
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`SessionLayer`] wraps around the routes.
#[derive(Clone, Debug)]
pub struct SessionService<S> {
    inner: S,
    layer: SessionLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let client = ClientSeen::of(&self.layer.proxies, peer_of(&request), request.headers());
        let session = Session::from_headers(
            request.headers(),
            self.layer.store.clone(),
            self.layer.cookies.clone(),
            client,
            self.layer.recent_auth,
        );
        request.extensions_mut().insert(session.clone());
        // The clone that was polled ready serves this request; the fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut response = inner.call(request).await?;
            let headers = response.headers_mut();
            let cookie = session.cookie_header().await;
            // A response that sets a cookie or may carry a token issued by this request (a
            // bearer sign-in or rotation returns it in the body) must never be cached.
            let no_store = cookie.is_some() || session.issued_token().await;
            if let Some(cookie) = cookie {
                headers.append(SET_COOKIE, cookie);
            }
            if no_store {
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            }
            Ok(response)
        })
    }
}
