//! The demo's pages in a real browser: Debian's chromium, headless, driven over WebDriver
//! (chromium-driver, through fantoccini) with two independent profiles, once on memory + SQLite
//! and once on Redis + PostgreSQL. Both profiles sign in with the form; the first sees both
//! sessions with their device labels and revokes the second, whose next page is the sign-in form;
//! a form posted from another site is refused; and once the sign-in is older than the
//! recent-authentication bound, the revoke button asks for the password first.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (`apt-get install chromium
//! chromium-driver`; `.ci/run` installs them). `DEMO_SCREENSHOT=path.png` saves the sessions page
//! as the first profile sees it, at a phone's width.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use session_axum::SessionCookies;
use session_core::ManualClock;
use session_demo::accounts::{NewAccount, SignInLimits, add_account};
use session_manager::{SessionConfig, SessionManager};
use session_testkit::servers::{
    PgSchema, redis_delete_prefix, redis_url, require_redis, unique_prefix,
};

const PASSWORD: &str = "correct horse battery staple";
const FIREFOX_ON_LINUX: &str =
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const CHROME_ON_ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36";

/// A chromedriver of this test's own, on a free port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_driver() -> Driver {
    for binary in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(binary).exists(),
            "{binary} is missing: install Debian's browser with `apt-get install -y chromium chromium-driver` (.ci/run does)"
        );
    }
    let port = free_port();
    let child = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let status = format!("{}/status", driver.url);
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(&status).await
            && r.status().is_success()
        {
            return driver;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not answer on {status} within 10 s");
}

/// A headless chromium with a profile of its own (a fresh user-data directory) and `user_agent`.
async fn open_browser(driver: &Driver, profile: &tempfile::TempDir, user_agent: &str) -> Client {
    let args = vec![
        "--headless=new".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        // Without these, chromium keeps reaching for Google's hosts, which this machine refuses.
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        format!("--user-data-dir={}", profile.path().display()),
        format!("--user-agent={user_agent}"),
        "--window-size=390,900".to_owned(),
    ];
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({"binary": "/usr/bin/chromium", "args": args}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .unwrap()
}

struct Demo {
    base: String,
    manager: Arc<SessionManager>,
    clock: ManualClock,
    server: tokio::task::JoinHandle<()>,
}

async fn start_demo(mut config: SessionConfig) -> Demo {
    // The policy's clock is the test's: "ten minutes later" needs no waiting.
    let clock = ManualClock::starting_now();
    config.policy = config.policy.with_clock(clock.clone());
    let manager = Arc::new(SessionManager::build(config).await.unwrap());
    let mut options = session_demo::Options::default();
    // Plain HTTP on loopback: a Secure cookie would never be sent back.
    options.cookies = SessionCookies::default().secure(false);
    options.limits = SignInLimits::default().per_address(1_000);
    let router = session_demo::app_with_options(manager.clone(), options)
        .await
        .unwrap();
    add_account(
        manager.db().unwrap(),
        NewAccount {
            email: "alice@acme.test".to_owned(),
            password: PASSWORD.to_owned(),
            company_name: "Acme".to_owned(),
            is_root: false,
        },
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        session_axum::serve(
            listener,
            router,
            session_axum::ServerLimits::default(),
            std::future::pending(),
        )
        .await
        .unwrap();
    });
    Demo {
        base,
        manager,
        clock,
        server,
    }
}

async fn sign_in(browser: &Client, demo: &Demo) {
    browser.goto(&format!("{}/", demo.base)).await.unwrap();
    assert_eq!(browser.current_url().await.unwrap().path(), "/sign-in");
    browser
        .find(Locator::Id("email"))
        .await
        .unwrap()
        .send_keys("alice@acme.test")
        .await
        .unwrap();
    browser
        .find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    browser
        .find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_path(browser, "/account/sessions").await;
}

async fn wait_for_path(browser: &Client, path: &str) {
    for _ in 0..100 {
        if browser.current_url().await.unwrap().path() == path {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the browser stayed on {} instead of reaching {path}: {}",
        browser.current_url().await.unwrap(),
        browser.source().await.unwrap()
    );
}

/// Each session card on the page: (is this device, device label, address line).
async fn cards(browser: &Client) -> Vec<(bool, String, String)> {
    let mut out = Vec::new();
    for card in browser.find_all(Locator::Css("li.session")).await.unwrap() {
        let current = card.attr("data-current").await.unwrap() == Some("true".to_owned());
        let device = card
            .find(Locator::Css(".device"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let address = card
            .find(Locator::Css(".address"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        out.push((current, device, address));
    }
    out
}

async fn click_revoke_on_the_other_session(browser: &Client) {
    browser
        .find(Locator::Css(
            "li.session[data-current='false'] button.revoke",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// An attacker's page on another site (`localhost` is another site than `127.0.0.1`) whose form
/// posts to the demo as soon as it loads.
async fn attacker_page(target: String) -> (String, tokio::task::JoinHandle<()>) {
    let page = format!(
        "<!doctype html><html><body><form id=f method=post action=\"{target}/account/sessions/revoke-others\"></form><script>document.getElementById('f').submit()</script></body></html>"
    );
    let router = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let page = page.clone();
            async move { axum::response::Html(page) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://localhost:{}/",
        listener.local_addr().unwrap().port()
    );
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (url, server)
}

async fn scenario(demo: &Demo) {
    let driver = start_driver().await;
    let (profile_a, profile_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open_browser(&driver, &profile_a, FIREFOX_ON_LINUX).await;
    let b = open_browser(&driver, &profile_b, CHROME_ON_ANDROID).await;

    // Both sign in with the form.
    sign_in(&a, demo).await;
    sign_in(&b, demo).await;

    // The first sees both sessions, itself marked, with real device labels and addresses.
    a.goto(&format!("{}/account/sessions", demo.base))
        .await
        .unwrap();
    let seen = cards(&a).await;
    assert_eq!(
        seen,
        vec![
            (true, "Firefox on Linux".to_owned(), "127.0.0.1".to_owned()),
            (
                false,
                "Chrome on Android".to_owned(),
                "127.0.0.1".to_owned()
            ),
        ],
        "{}",
        a.source().await.unwrap()
    );
    let text = a
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("Signed in") && text.contains("Last active"),
        "{text}"
    );
    // Readable on a phone: nothing wider than the 390-pixel window.
    let overflow = a
        .execute(
            "return document.documentElement.scrollWidth > window.innerWidth",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        overflow,
        serde_json::Value::Bool(false),
        "the page scrolls sideways"
    );
    if let Ok(path) = std::env::var("DEMO_SCREENSHOT") {
        std::fs::write(path, a.screenshot().await.unwrap()).unwrap();
    }

    // A form posted from another site is refused, and nothing is signed out.
    let (attacker, attacker_server) = attacker_page(demo.base.clone()).await;
    a.goto(&attacker).await.unwrap();
    wait_for_path(&a, "/account/sessions/revoke-others").await;
    let refused = a
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(refused.contains("Request refused"), "{refused}");
    attacker_server.abort();
    a.goto(&format!("{}/account/sessions", demo.base))
        .await
        .unwrap();
    assert_eq!(
        cards(&a).await.len(),
        2,
        "the cross-site post changed nothing"
    );

    // The first revokes the second, which is sent to the sign-in page on its next navigation.
    click_revoke_on_the_other_session(&a).await;
    wait_for_path(&a, "/account/sessions").await;
    let notice = a
        .find(Locator::Css(".notice"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(notice, "That session is signed out.");
    assert_eq!(cards(&a).await.len(), 1);
    b.goto(&format!("{}/account/sessions", demo.base))
        .await
        .unwrap();
    wait_for_path(&b, "/sign-in").await;

    // Later than the recent-authentication bound (10 minutes): the revoke button asks for the
    // password first, then works.
    sign_in(&b, demo).await;
    demo.clock.advance(Duration::from_secs(11 * 60));
    a.goto(&format!("{}/account/sessions", demo.base))
        .await
        .unwrap();
    assert_eq!(cards(&a).await.len(), 2);
    click_revoke_on_the_other_session(&a).await;
    wait_for_path(&a, "/account/confirm").await;
    a.find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    a.find(Locator::Id("confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_path(&a, "/account/sessions").await;
    assert_eq!(cards(&a).await.len(), 2, "confirming alone revokes nothing");
    click_revoke_on_the_other_session(&a).await;
    wait_for_path(&a, "/account/sessions").await;
    assert_eq!(cards(&a).await.len(), 1);
    b.goto(&format!("{}/account/sessions", demo.base))
        .await
        .unwrap();
    wait_for_path(&b, "/sign-in").await;

    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sessions_page_in_a_real_browser_on_memory_and_sqlite() {
    let demo = start_demo(SessionConfig::default()).await;
    scenario(&demo).await;
    demo.server.abort();
    demo.manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sessions_page_in_a_real_browser_on_redis_and_postgres() {
    let url = redis_url();
    require_redis(&url);
    let prefix = unique_prefix("browser");
    let schema = PgSchema::create("browser");
    let config = SessionConfig::from_vars([
        ("SESSION_STORE_URL".to_owned(), url.clone()),
        ("SESSION_KEY_PREFIX".to_owned(), prefix.clone()),
        ("DATABASE_URL".to_owned(), schema.url()),
    ])
    .unwrap();
    let demo = start_demo(config).await;
    assert_eq!(demo.manager.sessions().backend(), "redis");
    scenario(&demo).await;
    demo.server.abort();
    demo.manager.shutdown().await;
    redis_delete_prefix(&url, &prefix);
}
