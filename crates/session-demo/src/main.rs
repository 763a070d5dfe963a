//! The demo service. `cargo run -p session-demo`: in-memory sessions and an in-memory SQLite
//! database, no server needed. The same binary runs on Redis and PostgreSQL by environment
//! variables alone (`SESSION_STORE_URL`, `DATABASE_URL`; see docs/configuration.md).
//!
//! `session-demo add-user EMAIL [--root] [--company NAME]` adds an account to the configured
//! database, reading its password from standard input.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use session_axum::{ServerLimits, SessionCookies, TrustedProxies, shutdown_signal};
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        None => run().await,
        Some("add-user") => add_user(&args[1..]).await,
        Some(other) => Err(format!(
            "unknown command `{other}`; usage: session-demo [add-user EMAIL [--root] [--company NAME]]"
        )
        .into()),
    };
    match outcome {
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
    let config = SessionConfig::from_env()?;
    let embedded = config.database_url == SessionConfig::default().database_url
        && config.database_url.contains(":memory:");
    let manager = Arc::new(SessionManager::build(config).await?);
    let trusted_proxies = match std::env::var("DEMO_TRUSTED_PROXIES") {
        Ok(list) => {
            TrustedProxies::parse(&list).map_err(|e| format!("DEMO_TRUSTED_PROXIES: {e}"))?
        }
        Err(_) => TrustedProxies::none(),
    };
    let mut options = session_demo::Options::default();
    options.cookies = SessionCookies::default().secure(secure);
    options.trusted_proxies = trusted_proxies;
    options.recent_auth = Some(duration_var(
        "DEMO_RECENT_AUTH",
        session_axum::DEFAULT_RECENT_AUTH,
    )?);
    let router = session_demo::app_with_options(manager.clone(), options).await?;
    // An in-memory database starts empty: give it two accounts to sign in with.
    let seeded = if embedded {
        session_demo::seed(&manager).await?
    } else {
        Vec::new()
    };
    // Each limit from its variable, or the library's default.
    let base = ServerLimits::default();
    let limits = base
        .clone()
        .header_read_timeout(duration_var(
            "DEMO_HEADER_READ_TIMEOUT",
            base.header_read_timeout,
        )?)
        .request_timeout(duration_var("DEMO_REQUEST_TIMEOUT", base.request_timeout)?)
        .write_stall_timeout(duration_var(
            "DEMO_WRITE_STALL_TIMEOUT",
            base.write_stall_timeout,
        )?)
        .shutdown_grace(duration_var("DEMO_SHUTDOWN_GRACE", base.shutdown_grace)?)
        .max_connections(count_var("DEMO_MAX_CONNECTIONS", base.max_connections)?)
        .max_body_bytes(count_var("DEMO_MAX_BODY_BYTES", base.max_body_bytes)?)
        .max_uri_bytes(count_var("DEMO_MAX_URI_BYTES", base.max_uri_bytes)?)
        .max_header_bytes(count_var("DEMO_MAX_HEADER_BYTES", base.max_header_bytes)?)
        .max_headers(count_var("DEMO_MAX_HEADERS", base.max_headers)?);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    println!(
        "session-demo listening on http://{local} (sessions: {}, database: {})",
        manager.sessions().backend(),
        manager.db().map_or("none", session_manager::Db::backend)
    );
    match seeded.iter().find(|(_, _, root)| !root) {
        Some((email, password, _)) => println!(
            "try: curl -i -X POST http://{local}/sessions -H 'content-type: application/json' -d '{{\"email\":\"{email}\",\"password\":\"{password}\"}}'"
        ),
        None => println!(
            "try: curl -i -X POST http://{local}/sessions -H 'content-type: application/json' -d '{{\"email\":\"EMAIL\",\"password\":\"PASSWORD\"}}' (add an account with `session-demo add-user EMAIL`)"
        ),
    }
    for (email, password, root) in &seeded {
        let root = if *root { " (root)" } else { "" };
        println!(
            "account: {email} password: {password}{root} (in memory: new passwords on every start)"
        );
    }
    println!("or open http://{local}/ in a browser: sign in, then \"Your sessions\"");
    session_axum::serve(listener, router, limits, shutdown_signal()).await?;
    manager.shutdown().await;
    println!("session-demo stopped");
    Ok(())
}

/// `add-user EMAIL [--root] [--company NAME]`: the password is the first line of standard input
/// (so it stays out of the shell history and the process list).
async fn add_user(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    const USAGE: &str =
        "usage: session-demo add-user EMAIL [--root] [--company NAME] (password on standard input)";
    let mut email = None;
    let mut is_root = false;
    let mut company_name = String::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--root" => is_root = true,
            "--company" => {
                company_name = rest
                    .next()
                    .ok_or(format!("--company needs a NAME; {USAGE}"))?
                    .clone();
            }
            flag if flag.starts_with("--") => {
                return Err(format!("unknown option `{flag}`; {USAGE}").into());
            }
            value if email.is_none() => email = Some(value.to_owned()),
            extra => return Err(format!("unexpected argument `{extra}`; {USAGE}").into()),
        }
    }
    let email = email.ok_or(USAGE)?;
    let mut password = String::new();
    std::io::stdin().read_line(&mut password)?;
    let password = password.trim_end_matches(['\r', '\n']).to_owned();
    let config = SessionConfig::from_env()?;
    if config.database_url.contains(":memory:") {
        eprintln!(
            "session-demo: DATABASE_URL is an in-memory database; this account ends with this command (set DATABASE_URL to a file or PostgreSQL)"
        );
    }
    let manager = SessionManager::build(config).await?;
    session_demo::migrate(&manager).await?;
    let db = manager.db()?;
    let id = session_demo::accounts::add_account(
        db,
        session_demo::accounts::NewAccount {
            email: email.clone(),
            password,
            company_name,
            is_root,
        },
    )
    .await?;
    manager.shutdown().await;
    println!(
        "added account {id}: {email}{}",
        if is_root { " (root)" } else { "" }
    );
    Ok(())
}

/// A duration from the environment variable `var` (human form: `10s`, `1m`), or `default`.
fn duration_var(var: &str, default: std::time::Duration) -> Result<std::time::Duration, String> {
    let Ok(value) = std::env::var(var) else {
        return Ok(default);
    };
    match humantime::parse_duration(&value) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!("{var}: must be greater than zero (e.g. `10s`)")),
        Err(e) => Err(format!(
            "{var}: `{value}` is not a duration like `10s` ({e})"
        )),
    }
}

/// A positive count from the environment variable `var`, or `default`.
fn count_var(var: &str, default: usize) -> Result<usize, String> {
    let Ok(value) = std::env::var(var) else {
        return Ok(default);
    };
    value
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or(format!("{var}: `{value}` is not a positive number"))
}
