//! The browser-facing guards on a real (in-memory) store, through the router as axum serves it:
//! the CSRF layer (origin checks, the session's token in a header or a form field, bearer calls
//! exempt), recent authentication and re-authentication, and the client metadata a sign-in
//! records. Each guard's test also sends the forged request to the same routes without the guard,
//! to show what it stops.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use axum::routing::{get, post};
use session_axum::{
    ClientInfo, CsrfLayer, CurrentSession, RecentAuth, Session, SessionCookies, SessionLayer,
    TrustedProxies,
};
use session_core::{ManualClock, NewUserSession, SessionPolicy, UserSessionStore};
use session_memory::MemoryStore;
use tower::ServiceExt as _;

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

struct App {
    router: Router,
    store: Arc<dyn UserSessionStore>,
    clock: ManualClock,
}

fn routes() -> Router {
    Router::new()
        .route(
            "/sign-in",
            post(|session: Session| async move {
                session.sign_in(NewUserSession::new("alice")).await.unwrap();
                "signed in"
            }),
        )
        .route(
            "/token",
            get(|session: Session| async move { session.csrf_token().await.unwrap().unwrap() }),
        )
        .route(
            "/act",
            post(|current: CurrentSession, body: String| async move {
                format!("{} acted with {body}", current.session.user_id)
            }),
        )
        .route(
            "/sensitive",
            post(|RecentAuth(current): RecentAuth| async move { current.session.user_id }),
        )
        .route(
            "/reauthenticate",
            post(|session: Session| async move {
                let updated = session.reauthenticate().await.unwrap();
                assert!(updated.rotated.is_some(), "a re-authentication rotates");
                "confirmed"
            }),
        )
        .route(
            "/me",
            get(|current: CurrentSession| async move { axum::Json(current.session) }),
        )
        .route(
            "/client",
            get(|client: ClientInfo| async move { format!("{client:?}") }),
        )
}

fn app(csrf: bool, proxies: TrustedProxies) -> App {
    let clock = ManualClock::starting_now();
    let policy = SessionPolicy::default().with_clock(clock.clone());
    let store: Arc<dyn UserSessionStore> = Arc::new(MemoryStore::new(policy).unwrap());
    let mut router = routes();
    if csrf {
        router = router.layer(CsrfLayer::default());
    }
    let router = router.layer(
        SessionLayer::new(store.clone())
            .with_cookies(SessionCookies::default().secure(false))
            .with_trusted_proxies(proxies)
            .with_recent_auth(Duration::from_secs(60)),
    );
    App {
        router,
        store,
        clock,
    }
}

struct Answer {
    status: StatusCode,
    set_cookie: Option<String>,
    content_type: String,
    body: String,
}

async fn send(app: &App, request: Request<Body>) -> Answer {
    let response = app.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let set_cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned());
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    Answer {
        status,
        set_cookie,
        content_type,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

/// `session=<token>` from a `Set-Cookie` value.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

/// Signs in (as a same-origin form post would) and returns the cookie and the CSRF token.
async fn signed_in(app: &App) -> (String, String) {
    let answer = send(
        app,
        Request::post("/sign-in")
            .header("sec-fetch-site", "same-origin")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let cookie = cookie_pair(&answer.set_cookie.unwrap());
    let token = send(
        app,
        Request::get("/token")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .body;
    (cookie, token)
}

fn post_act(cookie: &str) -> axum::http::request::Builder {
    Request::post("/act").header(header::COOKIE, cookie)
}

#[tokio::test]
async fn cookie_posts_need_the_sessions_token_in_a_header_or_a_form_field() {
    let app = app(true, TrustedProxies::none());
    let (cookie, token) = signed_in(&app).await;

    let missing = send(&app, post_act(&cookie).body(Body::from("x")).unwrap()).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    assert!(missing.body.contains("\"csrf_token\""), "{}", missing.body);

    let wrong = send(
        &app,
        post_act(&cookie)
            .header("x-csrf-token", "A".repeat(43))
            .body(Body::from("x"))
            .unwrap(),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);

    let header_ok = send(
        &app,
        post_act(&cookie)
            .header("x-csrf-token", &token)
            .body(Body::from("fetch"))
            .unwrap(),
    )
    .await;
    assert_eq!(
        (header_ok.status, header_ok.body.as_str()),
        (StatusCode::OK, "alice acted with fetch")
    );

    // A form post carries it as a field, and the handler still reads the whole body.
    let form = format!("note=hello&csrf_token={token}");
    let form_ok = send(
        &app,
        post_act(&cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(form_ok.status, StatusCode::OK, "{}", form_ok.body);
    assert_eq!(form_ok.body, format!("alice acted with {form}"));

    // A browser's form post gets an HTML refusal, an API call JSON.
    let html = send(
        &app,
        post_act(&cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "text/html,application/xhtml+xml")
            .body(Body::from("note=hello&csrf_token=nope"))
            .unwrap(),
    )
    .await;
    assert_eq!(html.status, StatusCode::FORBIDDEN);
    assert!(
        html.content_type.starts_with("text/html"),
        "{}",
        html.content_type
    );
    assert!(html.body.contains("CSRF token"), "{}", html.body);
    assert!(missing.content_type.starts_with("application/json"));

    // The token of another session does not do.
    let (_, other_token) = signed_in(&app).await;
    assert_ne!(other_token, token);
    let crossed = send(
        &app,
        post_act(&cookie)
            .header("x-csrf-token", &other_token)
            .body(Body::from("x"))
            .unwrap(),
    )
    .await;
    assert_eq!(crossed.status, StatusCode::FORBIDDEN);

    // Without the layer, the same forged post acts: what the layer stops.
    let unguarded = app_without_csrf_sharing(&app);
    let forged = send(
        &unguarded,
        post_act(&cookie).body(Body::from("forged")).unwrap(),
    )
    .await;
    assert_eq!(
        (forged.status, forged.body.as_str()),
        (StatusCode::OK, "alice acted with forged")
    );
}

/// The same store behind the routes without the CSRF layer.
fn app_without_csrf_sharing(app: &App) -> App {
    let router = routes().layer(
        SessionLayer::new(app.store.clone()).with_cookies(SessionCookies::default().secure(false)),
    );
    App {
        router,
        store: app.store.clone(),
        clock: app.clock.clone(),
    }
}

#[tokio::test]
async fn cross_site_posts_are_refused_signed_in_or_not_and_bearer_calls_are_exempt() {
    let app = app(true, TrustedProxies::none());
    let (cookie, token) = signed_in(&app).await;
    // Even with the right token (leaked, say), a post from another site is refused.
    for (name, value) in [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ] {
        let answer = send(
            &app,
            post_act(&cookie)
                .header(name, value)
                .header("x-csrf-token", &token)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert!(answer.body.contains("cross_site"), "{}", answer.body);
    }
    let foreign_origin = send(
        &app,
        post_act(&cookie)
            .header(header::HOST, "app.test")
            .header(header::ORIGIN, "https://evil.test")
            .header("x-csrf-token", &token)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(foreign_origin.status, StatusCode::FORBIDDEN);
    let own_origin = send(
        &app,
        post_act(&cookie)
            .header(header::HOST, "app.test")
            .header(header::ORIGIN, "https://app.test")
            .header("x-csrf-token", &token)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(own_origin.status, StatusCode::OK, "{}", own_origin.body);
    // Login CSRF: another site's sign-in post is refused before any session exists.
    let login = send(
        &app,
        Request::post("/sign-in")
            .header("sec-fetch-site", "cross-site")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(login.status, StatusCode::FORBIDDEN);
    assert!(login.set_cookie.is_none());
    // A bearer call carries no ambient credential: no token needed.
    let secret = cookie.split_once('=').unwrap().1;
    let bearer = send(
        &app,
        Request::post("/act")
            .header(header::AUTHORIZATION, format!("Bearer {secret}"))
            .body(Body::from("api"))
            .unwrap(),
    )
    .await;
    assert_eq!(
        (bearer.status, bearer.body.as_str()),
        (StatusCode::OK, "alice acted with api")
    );
    // Safe methods are never checked.
    let read = send(
        &app,
        Request::get("/me")
            .header(header::COOKIE, &cookie)
            .header("sec-fetch-site", "cross-site")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(read.status, StatusCode::OK);
}

#[tokio::test]
async fn a_sensitive_route_needs_a_recent_password_and_reauthentication_rotates() {
    let app = app(true, TrustedProxies::none());
    let (cookie, token) = signed_in(&app).await;
    let sensitive = |cookie: &str, token: &str| {
        Request::post("/sensitive")
            .header(header::COOKIE, cookie)
            .header("x-csrf-token", token)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(
        send(&app, sensitive(&cookie, &token)).await.status,
        StatusCode::OK
    );
    app.clock.advance(Duration::from_secs(61));
    let stale = send(&app, sensitive(&cookie, &token)).await;
    assert_eq!(stale.status, StatusCode::FORBIDDEN);
    assert!(
        stale.body.contains("reauthentication_required"),
        "{}",
        stale.body
    );
    assert!(stale.body.contains("1 minute"), "{}", stale.body);

    let confirmed = send(
        &app,
        Request::post("/reauthenticate")
            .header(header::COOKIE, &cookie)
            .header("x-csrf-token", &token)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.body);
    let fresh = cookie_pair(&confirmed.set_cookie.expect("the new token's cookie"));
    assert_ne!(fresh, cookie);
    // The old cookie is dead, and so is its CSRF token; the new pair works.
    let old = send(
        &app,
        Request::get("/me")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    let fresh_token = send(
        &app,
        Request::get("/token")
            .header(header::COOKIE, &fresh)
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .body;
    assert_ne!(fresh_token, token);
    assert_eq!(
        send(&app, sensitive(&fresh, &token)).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&app, sensitive(&fresh, &fresh_token)).await.status,
        StatusCode::OK
    );
    // Signed out entirely: 401, not the re-authentication answer.
    let none = send(
        &app,
        Request::post("/sensitive").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_sign_in_records_the_device_and_the_address_through_trusted_proxies_only() {
    let with_peer = |peer: &str, forwarded: Option<&str>| {
        let mut builder = Request::post("/sign-in")
            .header(header::USER_AGENT, FIREFOX)
            .extension(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        if let Some(forwarded) = forwarded {
            builder = builder.header("x-forwarded-for", forwarded);
        }
        builder.body(Body::empty()).unwrap()
    };
    let cases = [
        (
            TrustedProxies::none(),
            "203.0.113.5:4000",
            Some("198.51.100.1"),
            "203.0.113.5",
        ),
        (
            TrustedProxies::parse("10.0.0.0/8").unwrap(),
            "10.0.0.2:4000",
            Some("198.51.100.66, 198.51.100.1"),
            "198.51.100.1",
        ),
        (
            TrustedProxies::parse("10.0.0.0/8").unwrap(),
            "[::1]:4000",
            None,
            "::1",
        ),
    ];
    for (proxies, peer, forwarded, expected) in cases {
        let app = app(false, proxies);
        let answer = send(&app, with_peer(peer, forwarded)).await;
        assert_eq!(answer.status, StatusCode::OK);
        let sessions = app.store.list_by_user("alice").await.unwrap();
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].device, "Firefox on Linux");
        assert_eq!(
            sessions[0].address,
            Some(expected.parse().unwrap()),
            "peer {peer}"
        );
    }
    // Served without a recorded peer, the address is unknown rather than guessed.
    let app = app(false, TrustedProxies::none());
    let answer = send(&app, Request::get("/client").body(Body::empty()).unwrap()).await;
    assert!(answer.body.contains("address: None"), "{}", answer.body);
}
