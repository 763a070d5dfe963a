//! The layer on a real (in-memory) store, driven through the router as axum serves it: which
//! `Set-Cookie` each action leaves, that a stale cookie is cleared, that bearer requests get no
//! cookie, and that a request that never looks at the session makes no store call.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::{get, post};
use session_axum::{CurrentSession, Session, SessionCookies, SessionLayer};
use session_core::{
    IssuedSession, NewUserSession, Result, SessionHandle, SessionPolicy, SessionToken, Updated,
    UserSession, UserSessionStore, async_trait,
};
use session_memory::MemoryStore;
use tower::ServiceExt as _;

/// Counts the calls that reach the (real) memory store underneath.
#[derive(Debug)]
struct Counted {
    inner: MemoryStore,
    calls: AtomicUsize,
}

impl Counted {
    fn tick(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl UserSessionStore for Counted {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn policy(&self) -> &SessionPolicy {
        self.inner.policy()
    }
    async fn create(&self, new: NewUserSession) -> Result<IssuedSession> {
        self.tick();
        self.inner.create(new).await
    }
    async fn get(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        self.tick();
        self.inner.get(token).await
    }
    async fn touch(&self, token: &SessionToken) -> Result<Option<UserSession>> {
        self.tick();
        self.inner.touch(token).await
    }
    async fn update(&self, session: &UserSession) -> Result<Updated> {
        self.tick();
        self.inner.update(session).await
    }
    async fn rotate(&self, token: &SessionToken) -> Result<Option<IssuedSession>> {
        self.tick();
        self.inner.rotate(token).await
    }
    async fn delete(&self, token: &SessionToken) -> Result<bool> {
        self.tick();
        self.inner.delete(token).await
    }
    async fn delete_by_handle(&self, handle: &SessionHandle) -> Result<bool> {
        self.tick();
        self.inner.delete_by_handle(handle).await
    }
    async fn list_by_user(&self, user_id: &str) -> Result<Vec<UserSession>> {
        self.tick();
        self.inner.list_by_user(user_id).await
    }
    async fn delete_by_user(&self, user_id: &str, except: Option<&SessionHandle>) -> Result<u64> {
        self.tick();
        self.inner.delete_by_user(user_id, except).await
    }
    async fn purge_expired(&self) -> Result<u64> {
        self.tick();
        self.inner.purge_expired().await
    }
    async fn scan(
        &self,
        cursor: Option<&session_core::ScanCursor>,
        limit: usize,
    ) -> Result<session_core::ScanPage> {
        self.tick();
        self.inner.scan(cursor, limit).await
    }
    async fn import(&self, session: &UserSession) -> Result<session_core::Imported> {
        self.tick();
        self.inner.import(session).await
    }
    async fn delete_with_tombstone(
        &self,
        handle: &SessionHandle,
        until: std::time::SystemTime,
    ) -> Result<bool> {
        self.tick();
        self.inner.delete_with_tombstone(handle, until).await
    }
    async fn health(&self) -> Result<()> {
        self.tick();
        self.inner.health().await
    }
    fn needs_purge(&self) -> bool {
        self.inner.needs_purge()
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

struct App {
    router: Router,
    store: Arc<Counted>,
}

fn app() -> App {
    app_with(SessionCookies::default().secure(false))
}

fn app_with(cookies: SessionCookies) -> App {
    let store = Arc::new(Counted {
        inner: MemoryStore::new(SessionPolicy::default()).unwrap(),
        calls: AtomicUsize::new(0),
    });
    let shared: Arc<dyn UserSessionStore> = store.clone();
    let router = Router::new()
        .route(
            "/sign-in",
            post(|session: Session| async move {
                let issued = session
                    .sign_in(NewUserSession::new("ada").root(true))
                    .await
                    .unwrap();
                issued.token.expose_secret().to_owned()
            }),
        )
        .route(
            "/me",
            get(|current: CurrentSession| async move { current.session.user_id }),
        )
        .route("/public", get(|| async { "hello" }))
        .route(
            "/locale",
            post(|session: Session| async move {
                session.insert("locale", "fr-FR").await.unwrap();
                session.get::<String>("locale").await.unwrap().unwrap()
            }),
        )
        .route(
            "/step-down",
            post(|session: Session| async move {
                let (_, updated) = session
                    .update_with(|s| {
                        s.is_root = false;
                        Ok(())
                    })
                    .await
                    .unwrap();
                assert!(updated.rotated.is_some());
            }),
        )
        .route(
            "/rotate",
            post(|session: Session| async move {
                session.rotate().await.unwrap().is_some().to_string()
            }),
        )
        .route(
            "/sign-in-cached",
            post(|session: Session| async move {
                session.sign_in(NewUserSession::new("ada")).await.unwrap();
                ([(header::CACHE_CONTROL, "public, max-age=600")], "cached?")
            }),
        )
        .route(
            "/missing-cart",
            post(|session: Session| async move {
                let refused = session
                    .update_with(|s| {
                        s.get::<Vec<u32>>("cart")?
                            .ok_or(session_core::SessionError::NotFound)
                    })
                    .await;
                assert!(matches!(refused, Err(session_core::SessionError::NotFound)));
            }),
        )
        .route(
            "/sign-out",
            post(|session: Session| async move { session.sign_out().await.unwrap().to_string() }),
        )
        .layer(SessionLayer::new(shared).with_cookies(cookies));
    App { router, store }
}

struct Reply {
    status: StatusCode,
    set_cookie: Option<String>,
    cache_control: Option<String>,
    body: String,
}

impl App {
    async fn send(&self, method: &str, path: &str, header: Option<(&str, String)>) -> Reply {
        self.send_all(method, path, header.into_iter().collect())
            .await
    }

    async fn send_all(&self, method: &str, path: &str, headers: Vec<(&str, String)>) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let text = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &axum::http::HeaderValue| v.to_str().unwrap().to_owned())
        };
        let (set_cookie, cache_control) = (text(header::SET_COOKIE), text(header::CACHE_CONTROL));
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        Reply {
            status,
            set_cookie,
            cache_control,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    fn calls(&self) -> usize {
        self.store.calls.load(Ordering::SeqCst)
    }
}

fn cookie(token: &str) -> Option<(&'static str, String)> {
    Some(("cookie", format!("session={token}")))
}

/// The token a `Set-Cookie` value carries.
fn token_of(set_cookie: &str) -> String {
    set_cookie
        .strip_prefix("session=")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn sign_in_sets_the_cookie_and_later_requests_read_it() {
    let app = app();
    let signed_in = app.send("POST", "/sign-in", None).await;
    let set = signed_in.set_cookie.expect("sign-in sets the cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    assert_eq!(signed_in.cache_control.as_deref(), Some("no-store"));
    let token = token_of(&set);
    assert_eq!(token, signed_in.body);
    let me = app.send("GET", "/me", cookie(&token)).await;
    assert_eq!((me.status, me.body.as_str()), (StatusCode::OK, "ada"));
    assert!(me.set_cookie.is_none(), "a read leaves the cookie alone");
}

#[tokio::test]
async fn a_request_that_never_looks_makes_no_store_call() {
    let app = app();
    let token = app.send("POST", "/sign-in", None).await.body;
    let before = app.calls();
    let public = app.send("GET", "/public", cookie(&token)).await;
    assert_eq!(public.status, StatusCode::OK);
    assert!(public.set_cookie.is_none());
    assert_eq!(app.calls(), before, "no store call");
    app.send("GET", "/me", cookie(&token)).await;
    assert_eq!(app.calls(), before + 1, "one touch for a route that reads");
}

#[tokio::test]
async fn a_stale_or_malformed_cookie_is_cleared() {
    let app = app();
    let unknown = SessionToken::generate().unwrap();
    for presented in [unknown.expose_secret().to_owned(), "x".to_owned()] {
        let me = app.send("GET", "/me", cookie(&presented)).await;
        assert_eq!(me.status, StatusCode::UNAUTHORIZED);
        let cleared = me.set_cookie.expect("the stale cookie is cleared");
        assert!(
            cleared.starts_with("session=;") && cleared.contains("Max-Age=0"),
            "{cleared}"
        );
    }
    // A bearer token is never answered with a cookie.
    let me = app
        .send(
            "GET",
            "/me",
            Some((
                "authorization",
                format!("Bearer {}", unknown.expose_secret()),
            )),
        )
        .await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
    assert!(me.set_cookie.is_none());
}

#[tokio::test]
async fn rotation_and_a_root_change_send_the_new_cookie_and_sign_out_clears_it() {
    let app = app();
    let first = app.send("POST", "/sign-in", None).await.body;
    let rotated = app.send("POST", "/rotate", cookie(&first)).await;
    let second = token_of(&rotated.set_cookie.unwrap());
    assert_ne!(second, first);
    assert_eq!(
        app.send("GET", "/me", cookie(&first)).await.status,
        StatusCode::UNAUTHORIZED
    );

    let stepped = app.send("POST", "/step-down", cookie(&second)).await;
    assert_eq!(stepped.status, StatusCode::OK);
    let third = token_of(
        &stepped
            .set_cookie
            .expect("a root change rotates the cookie"),
    );
    assert_ne!(third, second);
    assert_eq!(
        app.send("GET", "/me", cookie(&second)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.send("GET", "/me", cookie(&third)).await.status,
        StatusCode::OK
    );

    let typed = app.send("POST", "/locale", cookie(&third)).await;
    assert_eq!(typed.body, "fr-FR");
    assert!(typed.set_cookie.is_none(), "a plain update keeps the token");

    let out = app.send("POST", "/sign-out", cookie(&third)).await;
    assert_eq!(out.body, "true");
    assert!(out.set_cookie.unwrap().contains("Max-Age=0"));
    assert_eq!(
        app.send("GET", "/me", cookie(&third)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn bearer_requests_read_with_any_case_and_get_no_cookie_on_rotation() {
    let app = app();
    let token = app.send("POST", "/sign-in", None).await.body;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let me = app
            .send(
                "GET",
                "/me",
                Some(("authorization", format!("{scheme} {token}"))),
            )
            .await;
        assert_eq!(me.status, StatusCode::OK, "{scheme}");
    }
    // Another scheme does not hide the cookie.
    let basic = ("authorization", "Basic dXNlcjpwdw==".to_owned());
    let alone = app.send("GET", "/me", Some(basic.clone())).await;
    assert_eq!(alone.status, StatusCode::UNAUTHORIZED);
    let with_cookie = app
        .send_all(
            "GET",
            "/me",
            vec![basic, ("cookie", format!("session={token}"))],
        )
        .await;
    assert_eq!(with_cookie.status, StatusCode::OK);
    let rotated = app
        .send(
            "POST",
            "/rotate",
            Some(("authorization", format!("Bearer {token}"))),
        )
        .await;
    assert_eq!(rotated.body, "true");
    assert!(
        rotated.set_cookie.is_none(),
        "API clients get tokens in bodies, not cookies"
    );
    assert_eq!(
        rotated.cache_control.as_deref(),
        Some("no-store"),
        "a response that may carry a new token is never cached, cookie or not"
    );
    let read = app
        .send(
            "GET",
            "/me",
            Some(("authorization", format!("Bearer {token}"))),
        )
        .await;
    assert_eq!(read.status, StatusCode::UNAUTHORIZED, "rotated away");
    let fresh = app.send("POST", "/sign-in", None).await.body;
    let bearer = Some(("authorization", format!("Bearer {fresh}")));
    let plain = app.send("GET", "/me", bearer.clone()).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert!(
        plain.cache_control.is_none(),
        "a request that issues nothing is left alone"
    );
    let stepped = app.send("POST", "/step-down", bearer).await;
    assert_eq!(stepped.status, StatusCode::OK);
    assert!(stepped.set_cookie.is_none());
    assert_eq!(
        stepped.cache_control.as_deref(),
        Some("no-store"),
        "a root change's rotation issues a token too"
    );
}

#[tokio::test]
async fn a_token_bearing_response_is_never_cacheable_and_a_sign_in_replaces_the_browsers_session() {
    let app = app();
    let first = app.send("POST", "/sign-in", None).await.body;
    let again = app.send("POST", "/sign-in-cached", cookie(&first)).await;
    assert_eq!(
        again.cache_control.as_deref(),
        Some("no-store"),
        "the handler's caching is overridden"
    );
    let second = token_of(&again.set_cookie.unwrap());
    assert_ne!(second, first);
    assert_eq!(
        app.send("GET", "/me", cookie(&first)).await.status,
        StatusCode::UNAUTHORIZED,
        "the session the browser held before is removed"
    );
    // A bearer-presented session is left alone: an API client may hold several.
    let third = app
        .send(
            "POST",
            "/sign-in",
            Some(("authorization", format!("Bearer {second}"))),
        )
        .await
        .body;
    assert_ne!(third, second);
    assert_eq!(
        app.send("GET", "/me", cookie(&second)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_handlers_own_not_found_does_not_sign_the_browser_out() {
    let app = app();
    let token = app.send("POST", "/sign-in", None).await.body;
    let missing = app.send("POST", "/missing-cart", cookie(&token)).await;
    assert_eq!(missing.status, StatusCode::OK);
    assert!(missing.set_cookie.is_none(), "the cookie is kept");
    assert_eq!(
        app.send("GET", "/me", cookie(&token)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_planted_duplicate_cookie_cannot_hide_the_real_one() {
    let app = app();
    let real = app.send("POST", "/sign-in", None).await.body;
    let planted = SessionToken::generate().unwrap();
    for header in [
        format!("session={}; session={real}", planted.expose_secret()),
        format!("session={real}; session={}", planted.expose_secret()),
        format!("session=garbage; session={real}"),
    ] {
        let me = app
            .send("GET", "/me", Some(("cookie", header.clone())))
            .await;
        assert_eq!(
            (me.status, me.body.as_str()),
            (StatusCode::OK, "ada"),
            "{header}"
        );
        assert!(me.set_cookie.is_none(), "the real cookie is kept: {header}");
    }
    // Writes act on the live one too: signing out with the dead value first revokes the real one.
    let dead_first = format!("session={}; session={real}", planted.expose_secret());
    let out = app
        .send("POST", "/sign-out", Some(("cookie", dead_first)))
        .await;
    assert_eq!(out.body, "true", "the live session was the one removed");
    assert_eq!(
        app.send("GET", "/me", cookie(&real)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let real = app.send("POST", "/sign-in", None).await.body;
    let rotated = app
        .send(
            "POST",
            "/rotate",
            Some((
                "cookie",
                format!(
                    "session=x; session={}; session={real}",
                    planted.expose_secret()
                ),
            )),
        )
        .await;
    assert_eq!(rotated.body, "true");
    let real = token_of(&rotated.set_cookie.unwrap());
    // In two Cookie headers, as HTTP/2 clients send them, too.
    let me = app
        .send_all(
            "GET",
            "/me",
            vec![
                ("cookie", format!("session={}", planted.expose_secret())),
                ("cookie", format!("session={real}")),
            ],
        )
        .await;
    assert_eq!(me.status, StatusCode::OK);
}

#[tokio::test]
async fn two_live_sessions_in_duplicate_cookies_are_neither_used_nor_cleared() {
    let app = app();
    let real = app.send("POST", "/sign-in", None).await.body;
    // The attacker's own live session, planted under the same name by a sibling host.
    let planted = app.send("POST", "/sign-in", None).await.body;
    for header in [
        format!("session={planted}; session={real}"),
        format!("session={real}; session={planted}"),
        format!("session=garbage; session={real}; session={planted}"),
    ] {
        let me = app
            .send("GET", "/me", Some(("cookie", header.clone())))
            .await;
        assert_eq!(me.status, StatusCode::UNAUTHORIZED, "{header}");
        assert!(
            me.set_cookie.is_none(),
            "clearing would leave the planted cookie to win next time: {header}"
        );
        let out = app
            .send("POST", "/sign-out", Some(("cookie", header.clone())))
            .await;
        assert_eq!(out.body, "false", "nothing is signed out: {header}");
    }
    // The same value twice is one session, not two.
    let twice = format!("session={real}; session={real}");
    let me = app.send("GET", "/me", Some(("cookie", twice))).await;
    assert_eq!(me.status, StatusCode::OK);
    for token in [&real, &planted] {
        assert_eq!(
            app.send("GET", "/me", cookie(token)).await.status,
            StatusCode::OK,
            "both sessions are untouched"
        );
    }
}

#[tokio::test]
async fn a_secure_cookie_off_the_root_path_carries_the_secure_prefix() {
    let app = app_with(SessionCookies::default().path("/app"));
    let signed_in = app.send("POST", "/sign-in", None).await;
    let set = signed_in.set_cookie.unwrap();
    assert!(
        set.starts_with("__Secure-session=") && set.contains("Secure") && set.contains("Path=/app"),
        "{set}"
    );
}

#[tokio::test]
async fn a_secure_cookie_carries_the_host_prefix_and_is_read_only_under_it() {
    let app = app_with(SessionCookies::default());
    let signed_in = app.send("POST", "/sign-in", None).await;
    let set = signed_in.set_cookie.unwrap();
    assert!(
        set.starts_with("__Host-session=") && set.contains("Secure") && set.contains("Path=/"),
        "{set}"
    );
    let token = signed_in.body;
    let me = app
        .send(
            "GET",
            "/me",
            Some(("cookie", format!("__Host-session={token}"))),
        )
        .await;
    assert_eq!(me.status, StatusCode::OK);
    let unprefixed = app.send("GET", "/me", cookie(&token)).await;
    assert_eq!(
        unprefixed.status,
        StatusCode::UNAUTHORIZED,
        "a cookie without the prefix is not ours"
    );
}
