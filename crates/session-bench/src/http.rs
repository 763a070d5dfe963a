//! `http`: the demo's `GET /sessions/me` with a signed-in session cookie against a bare axum route
//! on the same server that reads the cookie header and returns a small JSON body, both driven by
//! the same client in the same run, on memory + SQLite, Redis + SQLite, and Redis with the near
//! cache. Ratio = the demo route's rate over the bare route's: what the session layer, the store
//! and the handler cost on top of the framework's own ceiling on this machine.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::HeaderMap;
use axum::routing::get;
use session_axum::SessionCookies;
use session_demo::accounts::{NewAccount, SignInLimits, add_account};
use session_manager::{SessionConfig, SessionManager};

use crate::{CONCURRENCY, Outcome, drive, row_named};

async fn bare(headers: HeaderMap) -> Json<serde_json::Value> {
    let cookie = headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    Json(serde_json::json!({ "cookie_bytes": cookie.len(), "ok": true }))
}

/// Serves the demo (plus `/bare`) on `config`; returns its base URL and a session cookie of a
/// signed-in account.
async fn serve(config: SessionConfig) -> (String, String, Arc<SessionManager>) {
    let manager = Arc::new(SessionManager::build(config).await.unwrap());
    let router = session_demo::app_with(
        manager.clone(),
        SessionCookies::default().secure(false),
        SignInLimits::default().per_address(1_000),
    )
    .await
    .unwrap()
    // Added after the demo's layers: it runs without them.
    .route("/bare", get(bare));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        session_axum::serve(
            listener,
            router,
            session_axum::ServerLimits::default(),
            std::future::pending(),
        )
        .await
        .unwrap();
    });
    let password = "bench-password-0123456789";
    add_account(
        manager.db().unwrap(),
        NewAccount {
            email: "bench@acme.test".to_owned(),
            password: password.to_owned(),
            company_name: "Acme".to_owned(),
            is_root: false,
        },
    )
    .await
    .unwrap();
    let response = reqwest::Client::new()
        .post(format!("{base}/sessions"))
        .json(&serde_json::json!({"email": "bench@acme.test", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "sign-in");
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_owned();
    (base, cookie, manager)
}

async fn run(
    client: &reqwest::Client,
    url: &str,
    cookie: &str,
    tasks: usize,
    seconds: u64,
) -> Outcome {
    let init = |_task: usize| {
        let (client, url, cookie) = (client.clone(), url.to_owned(), cookie.to_owned());
        async move { (client, url, cookie) }
    };
    let step = |(client, url, cookie): (reqwest::Client, String, String)| async move {
        let response = client
            .get(&url)
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let _ = response.bytes().await.unwrap();
        (client, url, cookie)
    };
    drive(tasks, seconds, init, step).await
}

pub(crate) async fn bench_http(seconds: u64) {
    let server = session_testkit::servers::RedisServer::start();
    let vars = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>()
    };
    let redis_url = server.url();
    let setups = [
        (
            "http/memory",
            vars(&[
                ("SESSION_STORE_URL", "memory://"),
                ("DATABASE_URL", "sqlite::memory:"),
            ]),
        ),
        (
            "http/redis",
            vars(&[
                ("SESSION_STORE_URL", &redis_url),
                ("SESSION_KEY_PREFIX", "http:"),
                ("DATABASE_URL", "sqlite::memory:"),
            ]),
        ),
        (
            "http/redis+near",
            vars(&[
                ("SESSION_STORE_URL", &redis_url),
                ("SESSION_KEY_PREFIX", "httpnear:"),
                ("SESSION_REDIS_NEAR_CACHE_ENTRIES", "10000"),
                ("DATABASE_URL", "sqlite::memory:"),
            ]),
        ),
    ];
    println!(
        "# http: GET /sessions/me (session layer, store touch, JSON body) against GET /bare (cookie header read, small JSON) on the same server and client (reqwest, keep-alive), 2 s a row"
    );
    for (name, vars) in setups {
        let config = SessionConfig::from_vars(vars).unwrap();
        let (base, cookie, manager) = serve(config).await;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        for tasks in CONCURRENCY {
            let bare = run(&client, &format!("{base}/bare"), &cookie, tasks, seconds).await;
            let me = run(
                &client,
                &format!("{base}/sessions/me"),
                &cookie,
                tasks,
                seconds,
            )
            .await;
            row_named(name, "GET me", "bare route", tasks, &me, Some(&bare));
        }
        manager.shutdown().await;
    }
}
