//! End to end: the demo's router on an ephemeral port, driven over HTTP by reqwest clients with
//! cookie jars, once on memory + SQLite and once on Redis + PostgreSQL; and the binary itself,
//! started and stopped with SIGTERM.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{Value, json};
use session_axum::SessionCookies;
use session_core::SessionToken;
use session_demo::accounts::{NewAccount, SignInLimits, add_account};
use session_manager::{SessionConfig, SessionManager};
use session_testkit::servers::{
    PgSchema, RedisCluster, redis_delete_prefix, redis_url, require_redis, unique_prefix,
};

/// The password of every account the tests add.
const PASSWORD: &str = "correct horse battery staple";

struct Demo {
    base: String,
    manager: Arc<SessionManager>,
    server: tokio::task::JoinHandle<()>,
    /// Account name (the email's local part) to user id.
    accounts: Mutex<HashMap<String, String>>,
}

impl Demo {
    /// The demo with sign-in limits high enough for the scenarios, which sign in often from one
    /// address.
    async fn start(config: SessionConfig) -> Self {
        Self::start_with(config, SignInLimits::default().per_address(1_000)).await
    }

    async fn start_with(config: SessionConfig, limits: SignInLimits) -> Self {
        let manager = Arc::new(SessionManager::build(config).await.unwrap());
        // Plain HTTP on loopback: a Secure cookie would never be sent back.
        let router = session_demo::app_with(
            manager.clone(),
            SessionCookies::default().secure(false),
            limits,
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        // Served as the binary serves it, with short limits so the time-out tests finish quickly.
        let limits = session_axum::ServerLimits::default()
            .header_read_timeout(std::time::Duration::from_secs(1))
            .request_timeout(std::time::Duration::from_secs(2));
        let server = tokio::spawn(async move {
            session_axum::serve(listener, router, limits, std::future::pending())
                .await
                .unwrap();
        });
        Self {
            base,
            manager,
            server,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// The user id of account `name` (`name@acme.test`, password [`PASSWORD`]), added on first
    /// use.
    async fn account(&self, name: &str, root: bool) -> String {
        if let Some(id) = self.accounts.lock().unwrap().get(name) {
            return id.clone();
        }
        let id = add_account(
            self.manager.db().unwrap(),
            NewAccount {
                email: format!("{name}@acme.test"),
                password: PASSWORD.to_owned(),
                company_name: "Acme".to_owned(),
                is_root: root,
            },
        )
        .await
        .unwrap()
        .to_string();
        self.accounts
            .lock()
            .unwrap()
            .insert(name.to_owned(), id.clone());
        id
    }

    /// The user id of account `name`, which must exist.
    fn id(&self, name: &str) -> String {
        self.accounts.lock().unwrap()[name].clone()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn stop(self) {
        self.server.abort();
        self.manager.shutdown().await;
    }
}

/// A client with a cookie jar that sends, as a page's script would, the CSRF token of the
/// session its cookie names with every unsafe request (the demo's `CsrfLayer` refuses
/// cookie-authenticated ones without it).
#[derive(Clone)]
struct Browser {
    client: reqwest::Client,
    jar: Arc<reqwest::cookie::Jar>,
}

impl Browser {
    fn get(&self, url: String) -> reqwest::RequestBuilder {
        self.client.get(url)
    }

    fn post(&self, url: String) -> reqwest::RequestBuilder {
        self.unsafe_request(reqwest::Method::POST, url)
    }

    fn put(&self, url: String) -> reqwest::RequestBuilder {
        self.unsafe_request(reqwest::Method::PUT, url)
    }

    fn delete(&self, url: String) -> reqwest::RequestBuilder {
        self.unsafe_request(reqwest::Method::DELETE, url)
    }

    fn patch(&self, url: String) -> reqwest::RequestBuilder {
        self.unsafe_request(reqwest::Method::PATCH, url)
    }

    fn unsafe_request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let csrf = self.csrf_token(&url);
        let request = self.client.request(method, url);
        match csrf {
            Some(token) => request.header("x-csrf-token", token),
            None => request,
        }
    }

    /// The CSRF token of the session the jar's cookie names, as the demo's pages would show it.
    fn csrf_token(&self, url: &str) -> Option<String> {
        use reqwest::cookie::CookieStore as _;
        let cookies = self.jar.cookies(&reqwest::Url::parse(url).ok()?)?;
        let token = cookies
            .to_str()
            .ok()?
            .split(';')
            .find_map(|pair| pair.trim().strip_prefix("session="))?
            .to_owned();
        SessionToken::parse(&token)
            .ok()
            .map(|t| session_axum::csrf_token_for(&t))
    }
}

fn browser() -> Browser {
    let jar = Arc::new(reqwest::cookie::Jar::default());
    Browser {
        client: reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .build()
            .unwrap(),
        jar,
    }
}

/// Signs `client` in to account `user` (added as root or not on first use) with its password.
async fn sign_in(demo: &Demo, client: &Browser, user: &str, root: bool) -> String {
    let id = demo.account(user, root).await;
    let response = client
        .post(demo.url("/sessions"))
        .json(&json!({"email": format!("{user}@acme.test"), "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let cookie = response
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["session"]["user_id"], id);
    assert_eq!(
        body["session"]["is_root"], root,
        "root comes from the account"
    );
    assert!(
        body["session"].get("token").is_none(),
        "the session body carries no token"
    );
    body["session_id"].as_str().unwrap().to_owned()
}

async fn status(request: reqwest::RequestBuilder) -> StatusCode {
    request.send().await.unwrap().status()
}

/// Sends `request` and decodes its JSON body.
async fn json<T: serde::de::DeserializeOwned>(request: reqwest::RequestBuilder) -> T {
    request.send().await.unwrap().json().await.unwrap()
}

fn with_token(demo: &Demo, path: &str, token: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .get(demo.url(path))
        .header("cookie", format!("session={token}"))
}

/// The whole scenario the issue lists.
async fn scenario(demo: &Demo) {
    // Sign in, me.
    let alice_a = browser();
    let first = sign_in(demo, &alice_a, "alice", false).await;
    let me: Value = json(alice_a.get(demo.url("/sessions/me"))).await;
    assert_eq!(me["email"], "alice@acme.test");

    // Rotate: the new cookie works, the old one is now 401.
    let rotated: Value = json(alice_a.post(demo.url("/sessions/me/rotate"))).await;
    let second = rotated["session_id"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    assert_eq!(
        status(alice_a.get(demo.url("/sessions/me"))).await,
        StatusCode::OK
    );
    assert_eq!(
        status(with_token(demo, "/sessions/me", &first)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(with_token(demo, "/sessions/me", &second)).await,
        StatusCode::OK
    );

    // A second session of alice's; list from it.
    let alice_b = browser();
    sign_in(demo, &alice_b, "alice", false).await;
    let alice = format!("/users/{}/sessions", demo.id("alice"));
    let list: Vec<Value> = json(alice_b.get(demo.url(&alice))).await;
    assert_eq!(list.len(), 2);

    // Authorization: another non-root user is refused; a root session is allowed.
    let bob = browser();
    sign_in(demo, &bob, "bob", false).await;
    assert_eq!(
        status(bob.get(demo.url(&alice))).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(bob.delete(demo.url(&alice))).await,
        StatusCode::FORBIDDEN
    );
    let carol = browser();
    sign_in(demo, &carol, "carol", true).await;
    assert_eq!(status(carol.get(demo.url(&alice))).await, StatusCode::OK);

    // Typed session data through the layer's handle.
    let prefs: Value = json(
        alice_b
            .put(demo.url("/sessions/me/preferences"))
            .json(&json!({"locale": "fr-FR", "theme": "dark"})),
    )
    .await;
    assert_eq!(prefs["locale"], "fr-FR");
    let prefs: Value = json(alice_b.get(demo.url("/sessions/me/preferences"))).await;
    assert_eq!(
        (prefs["locale"].as_str(), prefs["theme"].as_str()),
        (Some("fr-FR"), Some("dark"))
    );

    // A root session steps down: the store rotates its token in the same write and the layer
    // sends the new cookie, so the browser keeps working while the old token is dead.
    let carol_root = carol_token(demo, &carol).await;
    let stepped = carol
        .post(demo.url("/sessions/me/step-down"))
        .send()
        .await
        .unwrap();
    assert_eq!(stepped.status(), StatusCode::OK);
    assert!(stepped.headers().get("set-cookie").is_some(), "new cookie");
    let stepped: Value = stepped.json().await.unwrap();
    assert_eq!(stepped["session"]["is_root"], false);
    assert_ne!(stepped["session_id"].as_str().unwrap(), carol_root);
    assert_eq!(
        status(with_token(demo, "/sessions/me", &carol_root)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(carol.get(demo.url(&alice))).await,
        StatusCode::FORBIDDEN,
        "no longer root"
    );
    assert_eq!(
        status(carol.post(demo.url("/sessions/me/step-down"))).await,
        StatusCode::CONFLICT
    );
    // Root again, by signing in anew: the account is a root account.
    sign_in(demo, &carol, "carol", true).await;

    // Revoke-all from alice's other session: the first browser is signed out, this one stays.
    let revoked: Value = json(alice_b.delete(demo.url(&alice))).await;
    assert_eq!(revoked["revoked"], 1);
    assert_eq!(
        status(alice_a.get(demo.url("/sessions/me"))).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(alice_b.get(demo.url("/sessions/me"))).await,
        StatusCode::OK
    );
    // A root session revokes another user's sessions entirely.
    let bob_sessions = format!("/users/{}/sessions", demo.id("bob"));
    let revoked: Value = json(carol.delete(demo.url(&bob_sessions))).await;
    assert_eq!(revoked["revoked"], 1);
    assert_eq!(
        status(bob.get(demo.url("/sessions/me"))).await,
        StatusCode::UNAUTHORIZED
    );

    // db-items: a valid item commits; one failing validation after its insert rolls back.
    let created = alice_b
        .post(demo.url("/db-items"))
        .json(&json!({"name": "apple", "quantity": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let rejected = alice_b
        .post(demo.url("/db-items"))
        .json(&json!({"name": "pear", "quantity": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // A body that is not the item's JSON is refused with the same JSON error shape as the rest.
    let malformed = alice_b
        .post(demo.url("/db-items"))
        .json(&json!({"name": "plum"}))
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error: Value = malformed.json().await.unwrap();
    assert_eq!(error["error"], "invalid_body");
    assert!(error["message"].as_str().unwrap().contains("quantity"));
    // A NUL (or any control character) in a text field is a 400 on every database, not a 500.
    let nul = alice_b
        .post(demo.url("/db-items"))
        .json(&json!({"name": "nul\u{0}x", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(nul.status(), StatusCode::BAD_REQUEST);
    let error: Value = nul.json().await.unwrap();
    assert_eq!(error["error"], "invalid_input");
    let items: Vec<Value> = json(alice_b.get(demo.url("/db-items"))).await;
    let names: Vec<&str> = items.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["apple"], "the rejected insert was rolled back");
    assert_eq!(items[0]["created_by"], demo.id("alice"));
    assert_eq!(
        status(reqwest::Client::new().get(demo.url("/db-items"))).await,
        StatusCode::UNAUTHORIZED
    );

    // Logout clears the cookie and ends the session.
    let logout = alice_b
        .delete(demo.url("/sessions/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    assert!(
        logout
            .headers()
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        status(alice_b.get(demo.url("/sessions/me"))).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(alice_b.delete(demo.url("/sessions/me"))).await,
        StatusCode::UNAUTHORIZED,
        "signing out a session that is gone is not a success"
    );

    // Health and metrics.
    let health: Value = reqwest::get(demo.url("/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let metrics = reqwest::get(demo.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("session_operations_total"), "{metrics}");
    // Each operation's handles are registered on first use and then kept: a sign-in and reads
    // earlier in this test are counted under their own labels, with durations.
    for op in ["create", "touch"] {
        assert!(
            metrics.contains(&format!("op=\"{op}\",outcome=\"ok\"")),
            "{op}: {metrics}"
        );
    }
    assert!(
        metrics.contains("session_operation_duration_seconds"),
        "{metrics}"
    );
    assert!(metrics.contains("db_pool_connections"), "{metrics}");
}

/// The token `client`'s cookie jar holds for the demo, read from the session list.
async fn carol_token(demo: &Demo, client: &Browser) -> String {
    let rotated: Value = json(client.post(demo.url("/sessions/me/rotate"))).await;
    rotated["session_id"].as_str().unwrap().to_owned()
}

/// A cookie naming no live session is answered 401 and cleared by the layer.
async fn a_stale_cookie_is_cleared(demo: &Demo) {
    let client = browser();
    let token = sign_in(demo, &client, "dave", false).await;
    assert_eq!(
        status(client.delete(demo.url("/sessions/me"))).await,
        StatusCode::NO_CONTENT
    );
    let stale = with_token(demo, "/sessions/me", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);
    let cleared = stale.headers().get("set-cookie").unwrap().to_str().unwrap();
    assert!(
        cleared.starts_with("session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    // Signing out again with the revoked cookie sent by hand (a jar would have dropped it): 401
    // with the JSON error, and the cookie is cleared.
    let again = reqwest::Client::new()
        .delete(demo.url("/sessions/me"))
        .header("cookie", format!("session={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
    let cleared = again
        .headers()
        .get("set-cookie")
        .expect("the stale cookie is cleared")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cleared.starts_with("session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let error: Value = again.json().await.unwrap();
    assert_eq!(error["error"], "unauthenticated", "{error}");
    assert!(error["message"].is_string(), "{error}");
    // A route that never looks at the session leaves the stale cookie alone.
    let health = reqwest::Client::new()
        .get(demo.url("/healthz"))
        .header("cookie", format!("session={token}"))
        .send()
        .await
        .unwrap();
    assert!(health.headers().get("set-cookie").is_none());
}

/// Requests the routes do not expect get the same JSON error shape as the rest.
async fn every_client_error_is_json(demo: &Demo) {
    let client = browser();
    sign_in(demo, &client, "erin", false).await;
    for (request, status) in [
        (
            client.get(demo.url("/no/such/route")),
            StatusCode::NOT_FOUND,
        ),
        (
            client.patch(demo.url("/sessions/me")),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            client.get(demo.url("/users/%FF%FE/sessions")),
            StatusCode::BAD_REQUEST,
        ),
        (
            client.get(demo.url(&format!("/sessions/me?{}", "a".repeat(9_000)))),
            StatusCode::URI_TOO_LONG,
        ),
        (
            client
                .get(demo.url("/sessions/me"))
                .header("x-padding", "p".repeat(17_000)),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ),
        (
            client
                .post(demo.url("/sessions"))
                .header("content-type", "application/json")
                .body("{not json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            client.post(demo.url("/sessions")).body("email=x"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            client.post(demo.url("/sessions")).json(&json!([1, 2])),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            client
                .post(demo.url("/sessions"))
                .json(&json!({"email": "erin@acme.test", "password": "p".repeat(129)})),
            StatusCode::BAD_REQUEST,
        ),
        (
            client
                .put(demo.url("/sessions/me/password"))
                .json(&json!({"current_password": PASSWORD})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            reqwest::Client::new()
                .get(demo.url("/sessions/me"))
                .header("authorization", "Basic ZXJpbjpwdw=="),
            StatusCode::UNAUTHORIZED,
        ),
        (
            reqwest::Client::new()
                .get(demo.url("/sessions/me"))
                .header("cookie", "session=\u{e9}t\u{e9}; session=%%%; =; session"),
            StatusCode::UNAUTHORIZED,
        ),
        (
            client.delete(demo.url(&format!("/users/{}/sessions", "9".repeat(4_000)))),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status);
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{body}"
        );
    }
    // Heads hyper refuses before any route runs get the same shape.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = demo.base.trim_start_matches("http://").to_owned();
    for head in [
        "GET /sessions/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \u{1}x\r\n\r\n",
        "GET /sessions/me HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    ] {
        let mut raw = tokio::net::TcpStream::connect(&addr).await.unwrap();
        raw.write_all(head.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            raw.read_to_end(&mut reply),
        )
        .await
        .expect("the server closes after a refusal")
        .unwrap();
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
        assert!(
            reply.ends_with("\"message\":\"the request is not valid HTTP/1.1\"}"),
            "{reply}"
        );
    }
}

/// A client that stalls is cut off: half a header block, or an answered keep-alive connection
/// that sends nothing more, ends the connection at the header-read time-out (1 s here), a stalled body gets a JSON 408 at the request time-out (2 s), and a body
/// over the limit a JSON 413. The 10 s bounds only catch a server that never cuts off.
async fn stalling_clients_are_cut_off(demo: &Demo) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = demo.base.trim_start_matches("http://").to_owned();

    let mut half = tokio::net::TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        half.read_to_end(&mut rest),
    )
    .await;
    assert!(
        closed.is_ok(),
        "a connection with half its headers stays open"
    );

    // A keep-alive connection that has been answered and then sends nothing is closed at the
    // same time-out: idle connections do not pile up.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answered = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        idle.read_to_end(&mut answered),
    )
    .await;
    assert!(closed.is_ok(), "an idle keep-alive connection stays open");
    let answered = String::from_utf8_lossy(&answered);
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert!(
        !answered.contains("connection: close"),
        "closed for idling, not because the answer said so: {answered}"
    );

    let client = browser();
    sign_in(demo, &client, "frank", false).await;
    let token = client
        .post(demo.url("/sessions/me/rotate"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        format!(
            "POST /db-items HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\""
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    let answered = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        slow.read_to_end(&mut reply),
    )
    .await;
    assert!(answered.is_ok(), "a stalled body holds the connection");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("\"request_timeout\""), "{reply}");

    let big = client
        .post(demo.url("/db-items"))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"name\":\"{}\",\"quantity\":1}}",
            "x".repeat(70_000)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let error: Value = big.json().await.unwrap();
    assert!(error["error"].is_string(), "{error}");
}

/// A token the store never issued gets 401, and no session is created from it.
async fn unknown_tokens_are_refused(demo: &Demo) {
    let invented = SessionToken::generate().unwrap();
    for request in [
        reqwest::Client::new()
            .get(demo.url("/sessions/me"))
            .bearer_auth(invented.expose_secret()),
        with_token(demo, "/sessions/me", invented.expose_secret()),
        reqwest::Client::new()
            .post(demo.url("/sessions/me/rotate"))
            .bearer_auth(invented.expose_secret()),
        reqwest::Client::new()
            .get(demo.url("/sessions/me"))
            .bearer_auth("not a token"),
        with_token(demo, "/sessions/me", "x"),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "JSON 401: {body}");
    }
    assert!(
        demo.manager
            .sessions()
            .get(&invented)
            .await
            .unwrap()
            .is_none(),
        "no session was created from it"
    );
}

/// Identity comes from the account, never from the client: a body naming a user or a root flag
/// is refused, and unknown accounts and wrong passwords get one and the same answer.
async fn identity_comes_from_the_password(demo: &Demo) {
    demo.account("mallory", false).await;
    let client = browser();
    let forged = client
        .post(demo.url("/sessions"))
        .json(&json!({"user_id": "mallory", "is_root": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let forged = client
        .post(demo.url("/sessions"))
        .json(&json!({"email": "mallory@acme.test", "password": PASSWORD, "is_root": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        forged.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "a root flag in the body is refused, not ignored"
    );
    let mut answers = Vec::new();
    for (email, password) in [
        ("mallory@acme.test", "not the password"),
        ("nobody@acme.test", PASSWORD),
        ("not an email", PASSWORD),
        ("MALLORY@acme.test", ""),
    ] {
        let response = client
            .post(demo.url("/sessions"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{email}");
        assert!(response.headers().get("set-cookie").is_none());
        answers.push(response.text().await.unwrap());
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "one answer for every failure: {answers:?}"
    );
    // The email is matched case-insensitively, and the session is the account's, not root.
    let response = client
        .post(demo.url("/sessions"))
        .json(&json!({"email": " Mallory@ACME.test ", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["session"]["is_root"], false);
    assert_eq!(body["session"]["user_id"], demo.id("mallory"));
    assert_eq!(body["session"]["email"], "mallory@acme.test");
}

/// After `per_account` failures the account refuses even its right password, with the answer a
/// wrong one gets, also when the failures arrive at once; other accounts are unaffected.
async fn failed_attempts_lock_the_account(demo: &Demo) {
    demo.account("olga", false).await;
    demo.account("pete", false).await;
    let attempts = (0..8).map(|_| {
        reqwest::Client::new()
            .post(demo.url("/sessions"))
            .json(&json!({"email": "olga@acme.test", "password": "a wrong password"}))
            .send()
    });
    for response in futures_join_all(attempts).await {
        assert_eq!(response.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    // The right password on the locked account is answered exactly as a wrong password is (that
    // both are verified against a hash is tests/password_checks.rs's subject).
    let locked = answer(demo, "olga@acme.test", PASSWORD).await;
    let wrong = answer(demo, "pete@acme.test", "a wrong password").await;
    assert_eq!(locked, wrong, "a lock answers as a wrong password does");
    assert_eq!(locked.0, StatusCode::UNAUTHORIZED);
    // Every attempt was counted, the concurrent ones included: 8 wrong and the right one.
    assert_eq!(failed_attempts(demo, "olga@acme.test").await, 9);
    assert_eq!(answer(demo, "nobody@acme.test", PASSWORD).await, wrong);
    // Pete's one failure did not lock him.
    sign_in(demo, &browser(), "pete", false).await;
    assert_eq!(failed_attempts(demo, "pete@acme.test").await, 0);
}

/// A sign-in's status, `content-type`, `set-cookie` and body.
async fn answer(
    demo: &Demo,
    email: &str,
    password: &str,
) -> (StatusCode, Option<String>, Option<String>, String) {
    let response = reqwest::Client::new()
        .post(demo.url("/sessions"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &reqwest::header::HeaderValue| v.to_str().unwrap().to_owned())
    };
    let (content_type, cookie) = (header("content-type"), header("set-cookie"));
    (
        response.status(),
        content_type,
        cookie,
        response.text().await.unwrap(),
    )
}

/// The account's failed-attempt count, read from the database.
async fn failed_attempts(demo: &Demo, email: &str) -> i64 {
    use session_manager::session_diesel::diesel::{QueryableByName, sql_query, sql_types};
    use session_manager::session_diesel::diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = sql_types::BigInt)]
        n: i64,
    }
    let count = session_manager::db_transaction!(
        demo.manager.db().unwrap(),
        session_core::ScopeOptions::new(),
        |conn| {
            sql_query("SELECT CAST(failed_attempts AS BIGINT) AS n FROM users WHERE email = $1")
                .bind::<sql_types::Text, _>(email)
                .get_result::<Count>(conn)
                .await
                .map_err(|e| session_manager::session_diesel::from_diesel("db", e))
        }
    )
    .unwrap();
    count.n
}

/// An account locked by failures opens again once its window, counted from the first failure,
/// has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_lock_ends_with_its_window() {
    let mut limits = SignInLimits::default().per_account(2).per_address(1_000);
    // Long enough that four sign-in attempts on a loaded machine finish inside it.
    limits.window = std::time::Duration::from_secs(4);
    let demo = Demo::start_with(SessionConfig::default(), limits.clone()).await;
    demo.account("sam", false).await;
    let first_failure = tokio::time::Instant::now();
    for _ in 0..3 {
        let (status, ..) = answer(&demo, "sam@acme.test", "a wrong password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, ..) = answer(&demo, "sam@acme.test", PASSWORD).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "locked");
    // Past the window, counted from the first failure, the count starts again.
    tokio::time::sleep_until(first_failure + limits.window + std::time::Duration::from_millis(500))
        .await;
    sign_in(&demo, &browser(), "sam", false).await;
    demo.stop().await;
}

/// Runs the requests concurrently and returns their results in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    requests: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send,
{
    let tasks: Vec<_> = requests.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

/// Changing the password signs out every other session of the account and moves this one to a
/// new token; the old password stops working.
async fn changing_the_password_signs_out_the_others(demo: &Demo) {
    let here = browser();
    let elsewhere = browser();
    let old_token = sign_in(demo, &here, "quinn", false).await;
    sign_in(demo, &elsewhere, "quinn", false).await;
    for (body, status) in [
        (
            json!({"current_password": "wrong guess", "new_password": "a brand new passphrase"}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"current_password": PASSWORD, "new_password": "short"}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let response = here
            .put(demo.url("/sessions/me/password"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{body}");
    }
    assert_eq!(
        status(elsewhere.get(demo.url("/sessions/me"))).await,
        StatusCode::OK,
        "a refused change signs no one out"
    );
    let changed = here
        .put(demo.url("/sessions/me/password"))
        .json(&json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    assert!(changed.headers().get("set-cookie").is_some(), "new cookie");
    let changed: Value = changed.json().await.unwrap();
    assert_eq!(changed["signed_out"], 1);
    assert_ne!(changed["session_id"].as_str().unwrap(), old_token);
    assert_eq!(
        status(elsewhere.get(demo.url("/sessions/me"))).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(with_token(demo, "/sessions/me", &old_token)).await,
        StatusCode::UNAUTHORIZED,
        "this session's old token is dead"
    );
    assert_eq!(
        status(here.get(demo.url("/sessions/me"))).await,
        StatusCode::OK
    );
    for (password, expected) in [
        (PASSWORD, StatusCode::UNAUTHORIZED),
        ("a brand new passphrase", StatusCode::CREATED),
    ] {
        let response = browser()
            .post(demo.url("/sessions"))
            .json(&json!({"email": "quinn@acme.test", "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected);
    }
}

/// Past `per_address` failures from one address, every sign-in from it gets 429 with
/// `Retry-After`, whatever account and password it names; successes do not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_from_one_address_are_limited() {
    let demo = Demo::start_with(
        SessionConfig::default(),
        SignInLimits::default().per_address(3),
    )
    .await;
    for _ in 0..4 {
        sign_in(&demo, &browser(), "rita", false).await;
    }
    for name in ["x1", "x2", "x3"] {
        let response = browser()
            .post(demo.url("/sessions"))
            .json(&json!({"email": format!("{name}@acme.test"), "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let refused = browser()
        .post(demo.url("/sessions"))
        .json(&json!({"email": "rita@acme.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=15 * 60).contains(&retry_after), "{retry_after}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "too_many_attempts");
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_on_memory_and_sqlite() {
    let demo = Demo::start(SessionConfig::default()).await;
    scenario(&demo).await;
    identity_comes_from_the_password(&demo).await;
    failed_attempts_lock_the_account(&demo).await;
    changing_the_password_signs_out_the_others(&demo).await;
    unknown_tokens_are_refused(&demo).await;
    a_stale_cookie_is_cleared(&demo).await;
    every_client_error_is_json(&demo).await;
    stalling_clients_are_cut_off(&demo).await;
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_on_redis_and_postgres() {
    let url = redis_url();
    require_redis(&url);
    let prefix = unique_prefix("e2e");
    let schema = PgSchema::create("e2e");
    let config = SessionConfig::from_vars([
        ("SESSION_STORE_URL".to_owned(), url.clone()),
        ("SESSION_KEY_PREFIX".to_owned(), prefix.clone()),
        ("DATABASE_URL".to_owned(), schema.url()),
    ])
    .unwrap();
    let demo = Demo::start(config).await;
    assert_eq!(
        (
            demo.manager.sessions().backend(),
            demo.manager.db().unwrap().backend()
        ),
        ("redis", "postgres")
    );
    scenario(&demo).await;
    identity_comes_from_the_password(&demo).await;
    failed_attempts_lock_the_account(&demo).await;
    changing_the_password_signs_out_the_others(&demo).await;
    unknown_tokens_are_refused(&demo).await;
    a_stale_cookie_is_cleared(&demo).await;
    every_client_error_is_json(&demo).await;
    stalling_clients_are_cut_off(&demo).await;
    demo.stop().await;
    redis_delete_prefix(&url, &prefix);
}

/// The demo on a Redis Cluster, with the near cache, by configuration alone: the whole scenario,
/// sign-ins, revocations and password changes included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_on_a_redis_cluster_with_the_near_cache() {
    let cluster = RedisCluster::start();
    let prefix = unique_prefix("e2ecluster");
    let config = SessionConfig::from_vars([
        ("SESSION_STORE_URL".to_owned(), cluster.url()),
        ("SESSION_KEY_PREFIX".to_owned(), prefix.clone()),
        (
            "SESSION_REDIS_NEAR_CACHE_ENTRIES".to_owned(),
            "1000".to_owned(),
        ),
        ("DATABASE_URL".to_owned(), "sqlite::memory:".to_owned()),
    ])
    .unwrap();
    let demo = Demo::start(config).await;
    assert_eq!(demo.manager.sessions().backend(), "redis");
    scenario(&demo).await;
    changing_the_password_signs_out_the_others(&demo).await;
    unknown_tokens_are_refused(&demo).await;
    demo.stop().await;
    cluster.delete_prefix(&prefix);
}

/// The demo on the Redis compatible layout, set by configuration alone: a session another
/// service wrote the way the Python helper does (`HSET` of the four fields, then `EXPIRE`) opens
/// the protected routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compatible_layout_accepts_sessions_the_python_service_wrote() {
    let url = redis_url();
    require_redis(&url);
    let config = SessionConfig::from_vars([
        ("SESSION_STORE_URL".to_owned(), url.clone()),
        ("SESSION_REDIS_LAYOUT".to_owned(), "compatible".to_owned()),
    ])
    .unwrap();
    let demo = Demo::start(config).await;
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    // A session id as the Python helper issues it (uuid4), unique to this run.
    let session_id = uuid::Uuid::new_v4().to_string();
    redis::cmd("HSET")
        .arg(&session_id)
        .arg(&[
            "user_id",
            "42",
            "company_name",
            "Globex",
            "email",
            "hank@globex.test",
            "is_root",
            "N",
        ])
        .exec(&mut conn)
        .unwrap();
    redis::cmd("EXPIRE")
        .arg(&session_id)
        .arg(600)
        .exec(&mut conn)
        .unwrap();

    let me: Value = json(with_token(&demo, "/sessions/me", &session_id)).await;
    assert_eq!(
        (
            me["user_id"].as_str(),
            me["company_name"].as_str(),
            me["is_root"].as_bool()
        ),
        (Some("42"), Some("Globex"), Some(false))
    );
    let items = reqwest::Client::new()
        .get(demo.url("/db-items"))
        .bearer_auth(&session_id)
        .send()
        .await
        .unwrap();
    assert_eq!(items.status(), StatusCode::OK);
    // The demo's own sign-in writes the same layout, readable by the other service.
    let client = browser();
    let ours = sign_in(&demo, &client, "ivan", false).await;
    let fields: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg(&ours).query(&mut conn).unwrap();
    assert_eq!(
        (fields["user_id"].clone(), fields["is_root"].as_str()),
        (demo.id("ivan"), "N")
    );
    // Signing out removes the other service's session the same way.
    let out = reqwest::Client::new()
        .delete(demo.url("/sessions/me"))
        .bearer_auth(&session_id)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&session_id)
        .query(&mut conn)
        .unwrap();
    assert_eq!(exists, 0);
    assert_eq!(
        status(client.delete(demo.url("/sessions/me"))).await,
        StatusCode::NO_CONTENT
    );
    demo.stop().await;
}

/// The demo binary's output lines.
type Lines = std::io::Lines<std::io::BufReader<std::process::ChildStdout>>;

/// Starts the demo binary on a free port with in-memory sessions and `database_url` (the
/// embedded default if `None`); returns it, its remaining output, its first line and its base URL.
fn spawn_demo(database_url: Option<&str>) -> (std::process::Child, Lines, String, String) {
    spawn_demo_with(database_url, &[])
}

/// [`spawn_demo`] with further environment variables.
fn spawn_demo_with(
    database_url: Option<&str>,
    vars: &[(&str, &str)],
) -> (std::process::Child, Lines, String, String) {
    use std::io::BufRead;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_session-demo"));
    command
        .envs(vars.iter().copied())
        .env("DEMO_ADDR", "127.0.0.1:0")
        .env_remove("SESSION_STORE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    match database_url {
        Some(url) => command.env("DATABASE_URL", url),
        None => command.env_remove("DATABASE_URL"),
    };
    let mut child = command.spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let base = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    (child, lines, first, base)
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_on_defaults_and_stops_gracefully_on_sigterm() {
    let (mut child, mut lines, first, base) = spawn_demo(None);
    assert!(
        first.contains("sessions: memory, database: sqlite"),
        "{first}"
    );
    let example = lines.next().unwrap().unwrap();
    assert!(
        example.starts_with("try: curl"),
        "prints an example request"
    );
    // The example signs in to a seeded account with its printed password.
    let body = example.split("-d '").nth(1).unwrap().trim_end_matches('\'');
    let signed_in = reqwest::Client::new()
        .post(format!("{base}/sessions"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::CREATED, "{body}");
    let signed_in: Value = signed_in.json().await.unwrap();
    assert_eq!(signed_in["session"]["email"], "user@demo.test");
    assert_eq!(signed_in["session"]["is_root"], false);
    let root_line = lines.next().unwrap().unwrap();
    assert!(
        root_line.starts_with("account: root@demo.test password: ") && root_line.contains("(root)"),
        "{root_line}"
    );
    let health: Value = reqwest::get(format!("{base}/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let signal = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(signal.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "graceful exit: {exit:?}");
    assert!(
        lines
            .map_while(Result::ok)
            .any(|l| l == "session-demo stopped")
    );
}

/// The binary's HTTP limits come from the environment: a body or request target over the
/// configured size is a JSON 413 or 414; a limit that is not a positive number stops it at start.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_its_http_limits_from_the_environment() {
    let (mut child, _lines, _first, base) = spawn_demo_with(
        None,
        &[
            ("DEMO_MAX_BODY_BYTES", "200"),
            ("DEMO_MAX_URI_BYTES", "100"),
        ],
    );
    let client = reqwest::Client::new();
    let fits = client
        .post(format!("{base}/sessions"))
        .json(&json!({"email": "nobody@demo.test", "password": "p".repeat(100)}))
        .send()
        .await
        .unwrap();
    assert_eq!(fits.status(), StatusCode::UNAUTHORIZED, "under the limit");
    let big = client
        .post(format!("{base}/sessions"))
        .json(&json!({"email": "nobody@demo.test", "password": "p".repeat(300)}))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(big.json::<Value>().await.unwrap()["error"].is_string());
    let long = client
        .get(format!("{base}/healthz?{}", "q".repeat(150)))
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), StatusCode::URI_TOO_LONG);
    assert!(long.json::<Value>().await.unwrap()["error"].is_string());
    child.kill().unwrap();
    child.wait().unwrap();

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_session-demo"))
        .env("DEMO_ADDR", "127.0.0.1:0")
        .env("DEMO_MAX_HEADERS", "0")
        .env_remove("SESSION_STORE_URL")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("DEMO_MAX_HEADERS: `0` is not a positive number"),
        "{stderr}"
    );
}

/// `session-demo add-user` adds an account to the configured database with the password from
/// standard input; the demo started on that database signs it in (and seeds nothing there).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_user_adds_an_account_the_demo_signs_in() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("session-demo-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let database_url = format!("sqlite://{}", dir.join("demo.db").display());
    let add = |args: &[&str], password: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_session-demo"))
            .arg("add-user")
            .args(args)
            .env("DATABASE_URL", &database_url)
            .env_remove("SESSION_STORE_URL")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let added = add(&["Zoe@Acme.test", "--root", "--company", "Acme"], PASSWORD);
    assert!(added.status.success(), "{added:?}");
    let said = String::from_utf8(added.stdout).unwrap();
    assert!(
        said.starts_with("added account ") && said.contains("(root)"),
        "{said}"
    );
    let again = add(&["zoe@acme.test"], PASSWORD);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );
    let weak = add(&["yan@acme.test"], "short");
    assert!(!weak.status.success());
    assert!(
        String::from_utf8_lossy(&weak.stderr).contains("password"),
        "{weak:?}"
    );
    let unknown = add(&["yan@acme.test", "--admin"], PASSWORD);
    assert!(!unknown.status.success());

    let (mut child, mut lines, _, base) = spawn_demo(Some(&database_url));
    assert!(
        lines.next().unwrap().unwrap().contains("add-user"),
        "no seeded account on a database of one's own"
    );
    let response = reqwest::Client::new()
        .post(format!("{base}/sessions"))
        .json(&json!({"email": "zoe@acme.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (
            body["session"]["is_root"].as_bool(),
            body["session"]["company_name"].as_str()
        ),
        (Some(true), Some("Acme"))
    );
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
