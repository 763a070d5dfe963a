//! The demo service. `cargo run -p session-demo`: in-memory sessions and an in-memory SQLite
//! database, no server needed. The same binary runs on Redis and PostgreSQL by environment
//! variables alone (`SESSION_STORE_URL`, `DATABASE_URL`; see docs/configuration.md).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use session_axum::{ServerLimits, SessionCookies, shutdown_signal};
use session_manager::{SessionConfig, SessionManager};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Logs go to stderr; stdout carries only the address and the example request.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("session-demo: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::var("DEMO_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8080".to_owned())
        .parse()
        .map_err(|e| format!("DEMO_ADDR: not an address like 127.0.0.1:8080 ({e})"))?;
    // Browsers send Secure cookies only over HTTPS; on loopback plain HTTP the demo relaxes it.
    let secure = match std::env::var("SESSION_COOKIE_SECURE") {
        Ok(v) => !matches!(v.as_str(), "0" | "false" | "no" | "off"),
        Err(_) => !addr.ip().is_loopback(),
    };
    // The recorder goes in before the manager exists: the session layer registers its metric
    // handles on each operation's first use.
    session_demo::prometheus();
    let manager = Arc::new(SessionManager::build(SessionConfig::from_env()?).await?);
    let router = session_demo::app(manager.clone(), SessionCookies::default().secure(secure))
        .await
        .map_err(|e| format!("{e:?}"))?;
    let limits = ServerLimits::default()
        .header_read_timeout(duration_var("DEMO_HEADER_READ_TIMEOUT", "10s")?)
        .request_timeout(duration_var("DEMO_REQUEST_TIMEOUT", "30s")?);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    println!(
        "session-demo listening on http://{local} (sessions: {}, database: {})",
        manager.sessions().backend(),
        manager.db().map_or("none", session_manager::Db::backend)
    );
    println!(
        "try: curl -i -X POST http://{local}/sessions -H 'content-type: application/json' -d '{{\"user_id\":\"42\",\"company_name\":\"Acme\",\"email\":\"ada@acme.test\",\"is_root\":false}}'"
    );
    session_axum::serve(listener, router, limits, shutdown_signal()).await?;
    manager.shutdown().await;
    println!("session-demo stopped");
    Ok(())
}

/// A duration from the environment variable `var` (human form: `10s`, `1m`), or `default`.
fn duration_var(var: &str, default: &str) -> Result<std::time::Duration, String> {
    let value = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    match humantime::parse_duration(&value) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!("{var}: must be greater than zero (e.g. `10s`)")),
        Err(e) => Err(format!(
            "{var}: `{value}` is not a duration like `10s` ({e})"
        )),
    }
}
