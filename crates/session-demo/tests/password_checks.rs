//! Every failed sign-in is verified against a hash, also for an unknown or a locked account (a
//! dummy hash then), so that it takes as long as a real check. One test in its own process: the
//! count of verifications is process-wide.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::sync::Arc;

use serde_json::json;
use session_axum::SessionCookies;
use session_demo::accounts::{NewAccount, SignInLimits, add_account, password_checks};
use session_manager::{SessionConfig, SessionManager};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_locked_accounts_are_verified_like_real_ones() {
    let manager = Arc::new(
        SessionManager::build(SessionConfig::default())
            .await
            .unwrap(),
    );
    let router = session_demo::app_with(
        manager.clone(),
        SessionCookies::default().secure(false),
        SignInLimits::default().per_account(1).per_address(1_000),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(session_axum::serve(
        listener,
        router,
        session_axum::ServerLimits::default(),
        std::future::pending(),
    ));
    add_account(
        manager.db().unwrap(),
        NewAccount {
            email: "una@acme.test".to_owned(),
            password: "a long enough password".to_owned(),
            ..NewAccount::default()
        },
    )
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let attempt = |email: &'static str, password: &'static str| {
        let request = client
            .post(format!("{base}/sessions"))
            .json(&json!({"email": email, "password": password}));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    for (what, email, password, status) in [
        (
            "an unknown account",
            "nobody@acme.test",
            "a long enough password",
            401,
        ),
        ("a wrong password", "una@acme.test", "not the password", 401),
        (
            "a locked account",
            "una@acme.test",
            "a long enough password",
            401,
        ),
        (
            "a second locked attempt",
            "una@acme.test",
            "not the password",
            401,
        ),
    ] {
        let before = password_checks();
        assert_eq!(attempt(email, password).await, status, "{what}");
        assert_eq!(password_checks(), before + 1, "{what}: one verification");
    }
    server.abort();
    manager.shutdown().await;
}
