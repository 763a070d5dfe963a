//! Live migration under traffic: the demo's router serves a steady load of signed-in clients while
//! its sessions move Redis -> PostgreSQL -> Redis, each move the runbook's four rollouts (to the
//! prepare, copy and finish phases of `migrate_from_url`, then to the new store alone). During
//! each rollout two instances, the earlier configuration and the later one, serve the load side
//! by side, as a fleet part-way through a rollout does; `sessionctl migrate` copies the rest in
//! the copy phase. During every rollout and the copy, clients sign out, rotate, one user signs out
//! everywhere else, and new clients sign in, on whichever instance their request reaches.
//!
//! Checked: no request of a signed-in client is refused (zero sign-outs), every revoked or
//! rotated-away token stays refused through every later phase, and the final store holds exactly
//! the live clients' sessions. The figures (requests, errors, copy rates, switch times) are
//! printed; `LIVE_MIGRATION_CLIENTS` sets the load's size (default 120) for the larger run
//! documented in docs/operations.md.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use session_axum::SessionCookies;
use session_core::MigrationPhase;
use session_core::NewUserSession;
use session_demo::accounts::{NewAccount, SignInLimits, add_account};
use session_manager::{SessionConfig, SessionManager};
use session_testkit::servers::{
    PgSchema, redis_delete_prefix, redis_url, require_redis, unique_prefix,
};

const PASSWORD: &str = "correct horse battery staple";

/// How long an instance taken out of the load keeps running before it stops, as a load balancer's
/// deregistration delay: a request that chose it just before the switch still reaches it.
const DRAIN: Duration = Duration::from_millis(200);

/// One demo instance: its manager, its base URL and the way to stop it gracefully.
struct Instance {
    base: String,
    manager: Arc<SessionManager>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Instance {
    /// Starts the demo on `store_url` (moving from `migrate_from` in its phase, if any), accounts
    /// in `database_url`, Redis keys under `prefix`.
    async fn start(
        store_url: &str,
        migrate_from: Option<(&str, MigrationPhase)>,
        prefix: &str,
        database_url: &str,
    ) -> Self {
        let mut vars = vec![
            ("SESSION_STORE_URL", store_url.to_owned()),
            ("SESSION_KEY_PREFIX", prefix.to_owned()),
            ("DATABASE_URL", database_url.to_owned()),
            ("SESSION_PURGE_INTERVAL", "0s".to_owned()),
        ];
        if let Some((old, phase)) = migrate_from {
            vars.push(("SESSION_MIGRATE_FROM_URL", old.to_owned()));
            vars.push(("SESSION_MIGRATE_PHASE", phase.as_str().to_owned()));
        }
        let config =
            SessionConfig::from_vars(vars.into_iter().map(|(k, v)| (k.to_owned(), v))).unwrap();
        let manager = Arc::new(SessionManager::build(config).await.unwrap());
        let router = session_demo::app_with(
            manager.clone(),
            SessionCookies::default().secure(false),
            SignInLimits::default().per_address(1_000_000),
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            session_axum::serve(
                listener,
                router,
                session_axum::ServerLimits::default(),
                async move {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
        });
        Self {
            base,
            manager,
            stop,
            server,
        }
    }

    /// Stops accepting, lets requests in flight finish, closes the stores.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.unwrap();
        self.manager.shutdown().await;
    }
}

/// A client of the load: its token while signed in; after a sign-out or revocation, the token
/// that must stay refused.
/// The CSRF token the demo's `CsrfLayer` wants with a cookie-authenticated unsafe request, as
/// its pages would give it.
fn csrf(token: &str) -> String {
    session_core::SessionToken::parse(token)
        .map(|t| session_axum::csrf_token_for(&t))
        .unwrap_or_default()
}

enum Client {
    Active(String),
    /// The token, and how it ended (for the failure report).
    Revoked(String, &'static str),
}

/// The load: every client's state behind its own lock (held during its requests, so a sign-out
/// never races the client's own request), and the counts.
struct Load {
    clients: tokio::sync::RwLock<Vec<Arc<tokio::sync::Mutex<Client>>>>,
    /// The user (account index) of each client, in the order of `clients`.
    user_of: std::sync::Mutex<Vec<usize>>,
    /// The instances serving, requests spread over them in turn (two during a rollout).
    bases: std::sync::RwLock<Vec<String>>,
    turn: std::sync::atomic::AtomicUsize,
    /// Each instance's base URL and configuration, for failure reports.
    phases: std::sync::Mutex<Vec<(String, String)>>,
    http: reqwest::Client,
    stop: AtomicBool,
    requests: AtomicU64,
    errors: AtomicU64,
    samples: std::sync::Mutex<Vec<String>>,
}

impl Load {
    fn url(&self, path: &str) -> String {
        let bases = self.bases.read().unwrap();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        format!("{}{path}", bases[turn % bases.len()])
    }

    fn serve_on(&self, bases: &[&Instance]) {
        *self.bases.write().unwrap() = bases.iter().map(|i| i.base.clone()).collect();
    }

    fn request(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .header("cookie", format!("session={token}"))
            .header("x-csrf-token", csrf(token))
    }

    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.samples.lock().unwrap();
        if samples.len() < 20 {
            samples.push(what);
        }
    }

    /// One request for `client`: its session for a signed-in one, a refusal for a revoked one.
    async fn check(&self, client: &Client) {
        let (token, want, ended) = match client {
            Client::Active(token) => (token, StatusCode::OK, ""),
            Client::Revoked(token, how) => (token, StatusCode::UNAUTHORIZED, *how),
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        let url = self.url("/sessions/me");
        let phase = self.phase_of(&url);
        match self
            .http
            .get(&url)
            .header("cookie", format!("session={token}"))
            .send()
            .await
        {
            Ok(response) if response.status() == want => {}
            Ok(response) => self.error(format!(
                "GET /sessions/me on {phase}: {} where {want} was due ({ended})",
                response.status()
            )),
            Err(err) => self.error(format!("GET /sessions/me on {phase}: {err}")),
        }
    }

    /// The configuration of the instance `url` reaches, for the failure report.
    fn phase_of(&self, url: &str) -> String {
        self.phases
            .lock()
            .unwrap()
            .iter()
            .find(|(base, _)| url.starts_with(base.as_str()))
            .map_or_else(|| "?".to_owned(), |(_, phase)| phase.clone())
    }

    /// A worker: walks the clients from `offset` in steps of `step` until stopped.
    async fn run(self: Arc<Self>, offset: usize, step: usize) {
        let mut i = offset;
        while !self.stop.load(Ordering::Relaxed) {
            let client = {
                let clients = self.clients.read().await;
                if clients.is_empty() {
                    None
                } else {
                    Some(clients[i % clients.len()].clone())
                }
            };
            if let Some(client) = client {
                let client = client.lock().await;
                self.check(&client).await;
            }
            i += step;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn add(&self, client: Client, user: usize) {
        let mut clients = self.clients.write().await;
        clients.push(Arc::new(tokio::sync::Mutex::new(client)));
        self.user_of.lock().unwrap().push(user);
    }
}

/// Signs in account `email` over HTTP; the session token.
async fn sign_in(load: &Load, email: &str) -> String {
    let response = load
        .http
        .post(load.url("/sessions"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    body["session_id"].as_str().unwrap().to_owned()
}

/// What changes during a copy: from client `first` on, `signs_out` clients sign out and the next
/// `rotates` rotate; user `everywhere` signs out everywhere else; `joins` new clients sign in.
struct Churn {
    first: usize,
    signs_out: usize,
    rotates: usize,
    everywhere: usize,
    joins: usize,
}

/// Runs the churn against the current instance; returns how many clients were revoked (signed
/// out, or signed out by their user elsewhere) and the tokens rotated away.
async fn churn(load: &Arc<Load>, churn: &Churn, emails: &[String]) -> u64 {
    let clients = load.clients.read().await.clone();
    let user_of = load.user_of.lock().unwrap().clone();
    let mut revoked = 0;
    let mut at = churn.first;
    for _ in 0..churn.signs_out {
        let mut client = clients[at % clients.len()].lock().await;
        if let Client::Active(token) = &*client {
            let response = load
                .request(reqwest::Method::DELETE, "/sessions/me", token)
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            *client = Client::Revoked(token.clone(), "signed out");
            revoked += 1;
        }
        at += 1;
    }
    for _ in 0..churn.rotates {
        let mut client = clients[at % clients.len()].lock().await;
        if let Client::Active(token) = &*client {
            let response = load
                .request(reqwest::Method::POST, "/sessions/me/rotate", token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let body: Value = response.json().await.unwrap();
            let fresh = body["session_id"].as_str().unwrap().to_owned();
            // The old token must stay refused: it joins the load as a revoked client.
            let old = std::mem::replace(&mut *client, Client::Active(fresh));
            if let Client::Active(old) = old {
                drop(client);
                load.add(
                    Client::Revoked(old, "rotated away"),
                    user_of[at % clients.len()],
                )
                .await;
            }
        }
        at += 1;
    }
    // "Sign out everywhere else" by user `everywhere` from its first signed-in client: every
    // client of that user is locked first, so none of their requests is in flight.
    let mut mine = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        if user_of[i] == churn.everywhere {
            mine.push(client.lock().await);
        }
    }
    let keeper = mine
        .iter()
        .position(|c| matches!(&**c, Client::Active(_)))
        .expect("the user has a signed-in client");
    let mut others = Vec::new();
    let mut keeper_client = None;
    for (i, guard) in mine.into_iter().enumerate() {
        if i == keeper {
            keeper_client = Some(guard);
        } else {
            others.push(guard);
        }
    }
    let keeper_client = keeper_client.unwrap();
    if let Client::Active(token) = &*keeper_client {
        let me: Value = load
            .request(reqwest::Method::GET, "/sessions/me", token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let user_id = me["user_id"].as_str().unwrap().to_owned();
        let url = load.url(&format!("/users/{user_id}/sessions"));
        let on = load.phase_of(&url);
        let response = load
            .http
            .delete(&url)
            .header("cookie", format!("session={token}"))
            .header("x-csrf-token", csrf(token))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        let mut marked = 0;
        for other in &mut others {
            if let Client::Active(token) = &**other {
                let token = token.clone();
                **other = Client::Revoked(token, "signed out everywhere else");
                marked += 1;
            }
        }
        // Each session once, also one the migrating store held in both stores. That each stays
        // refused is checked by the load from here on.
        assert_eq!(
            body["revoked"].as_u64().unwrap(),
            marked,
            "every other session of user {}, on {on}: {body}",
            churn.everywhere
        );
        revoked += marked;
    }
    drop(keeper_client);
    drop(others);
    for j in 0..churn.joins {
        let user = j % emails.len();
        let token = sign_in(load, &emails[user]).await;
        load.add(Client::Active(token), user).await;
    }
    revoked
}

/// Runs `sessionctl migrate` in a thread (a process of its own), returning its JSON summary.
fn migrate(from: String, to: String, prefix: String) -> std::thread::JoinHandle<Value> {
    std::thread::spawn(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sessionctl"));
        for (name, _) in session_manager::ENV_VARS {
            command.env_remove(name);
        }
        let out = command
            .env_remove(session_manager::CONFIG_FILE_VAR)
            .env("SESSION_KEY_PREFIX", prefix)
            .args([
                "migrate", "--from", &from, "--to", &to, "--batch", "25", "--json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sessionctl migrate: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    })
}

/// Live sessions in a store, by `sessionctl stats`.
fn live_sessions(store: &str, prefix: &str) -> u64 {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sessionctl"));
    for (name, _) in session_manager::ENV_VARS {
        command.env_remove(name);
    }
    let out = command
        .env("SESSION_KEY_PREFIX", prefix)
        .args(["--store", store, "stats", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    stats["live_sessions"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_move_redis_to_postgres_and_back_under_load_with_no_sign_out() {
    let clients: usize = std::env::var("LIVE_MIGRATION_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let users = (clients / 6).max(4);
    let redis = redis_url();
    require_redis(&redis);
    let first_prefix = unique_prefix("live1");
    let second_prefix = unique_prefix("live2");
    let accounts = PgSchema::create("liveacc");
    let sessions = PgSchema::create("livesess");
    let started = Instant::now();

    // Phase 0: the demo on Redis, every client signed in.
    let a = Instance::start(&redis, None, &first_prefix, &accounts.url()).await;
    let mut emails = Vec::new();
    let mut ids = Vec::new();
    for u in 0..users {
        let email = format!("user{u}@acme.test");
        let id = add_account(
            a.manager.db().unwrap(),
            NewAccount {
                email: email.clone(),
                password: PASSWORD.to_owned(),
                company_name: "Acme".to_owned(),
                is_root: false,
            },
        )
        .await
        .unwrap();
        emails.push(email);
        ids.push(id.to_string());
    }
    let load = Arc::new(Load {
        clients: tokio::sync::RwLock::new(Vec::new()),
        user_of: std::sync::Mutex::new(Vec::new()),
        bases: std::sync::RwLock::new(vec![a.base.clone()]),
        turn: std::sync::atomic::AtomicUsize::new(0),
        phases: std::sync::Mutex::new(vec![(a.base.clone(), "old store only".to_owned())]),
        http: reqwest::Client::new(),
        stop: AtomicBool::new(false),
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        samples: std::sync::Mutex::new(Vec::new()),
    });
    // One client a user signs in over HTTP (password checked); the rest are sessions of the
    // same accounts created through the instance's store, as sign-ins would.
    for (u, email) in emails.iter().enumerate() {
        let token = sign_in(&load, email).await;
        load.add(Client::Active(token), u).await;
    }
    for c in users..clients {
        let u = c % users;
        let issued = a
            .manager
            .sessions()
            .create(NewUserSession::new(ids[u].clone()).company_name("Acme"))
            .await
            .unwrap();
        load.add(Client::Active(issued.token.expose_secret().to_owned()), u)
            .await;
    }
    let workers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(load.clone().run(w, 4)))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut figures = Vec::new();
    let mut current = a;
    let mut revoked_total = 0;
    // Each move: from, to, and the prefix of the Redis side.
    let moves = [
        (redis.clone(), sessions.url(), first_prefix.clone()),
        (sessions.url(), redis.clone(), second_prefix.clone()),
    ];
    let mut next_first = users;
    let mut everywhere = 0;
    // The churn of one rollout (or, larger, of the copy), on the clients not yet churned.
    let mut next_churn = |large: bool| {
        let (signs_out, rotates, joins) = if large { (10, 5, 5) } else { (4, 2, 2) };
        everywhere += 1;
        let churn = Churn {
            first: next_first,
            signs_out,
            rotates,
            everywhere: everywhere % users,
            joins,
        };
        next_first += signs_out + rotates;
        churn
    };
    for (step, (from, to, prefix)) in moves.into_iter().enumerate() {
        let mut ready = Vec::new();
        let mut copied = Value::Null;
        // The runbook's four rollouts: prepare, copy (then `sessionctl migrate`), finish, and the
        // new store alone.
        for phase in [
            Some(MigrationPhase::Prepare),
            Some(MigrationPhase::Copy),
            Some(MigrationPhase::Finish),
            None,
        ] {
            let switch = Instant::now();
            let next = Instance::start(
                &to,
                phase.map(|phase| (from.as_str(), phase)),
                &prefix,
                &accounts.url(),
            )
            .await;
            ready.push(switch.elapsed());
            load.phases.lock().unwrap().push((
                next.base.clone(),
                format!(
                    "move {} {}",
                    step + 1,
                    phase.map_or("new store only", MigrationPhase::as_str)
                ),
            ));
            next.manager.health().await.unwrap();
            // Part-way through the rollout: both configurations serve, and the churn reaches
            // either.
            load.serve_on(&[&current, &next]);
            revoked_total += churn(&load, &next_churn(false), &emails).await;
            load.serve_on(&[&next]);
            tokio::time::sleep(DRAIN).await;
            current.stop().await;
            current = next;
            if phase == Some(MigrationPhase::Copy) {
                // Every instance copies now: the rest is copied in the background while clients
                // sign out, rotate and sign in. An ending the copy races leaves a tombstone in
                // the new store, so the copy of a session read just before it ended is refused
                // rather than served until its check (ADR 0029).
                let copy = migrate(from.clone(), to.clone(), prefix.clone());
                revoked_total += churn(&load, &next_churn(true), &emails).await;
                copied = tokio::task::spawn_blocking(move || copy.join().unwrap())
                    .await
                    .unwrap();
                assert_eq!(copied["sample_missing"], json!([]), "{copied}");
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        figures.push(format!(
            "move {}: {} -> {}: instances of the four rollouts ready in {} ms, copy of {} sessions ({} stored, {} already present, {} ended during the copy) in {:.2} s = {:.0}/s",
            step + 1,
            session_manager::redacted_url(&from),
            session_manager::redacted_url(&to),
            ready
                .iter()
                .map(|d| d.as_millis().to_string())
                .collect::<Vec<_>>()
                .join(" / "),
            copied["walked"],
            copied["stored"],
            copied["already_present"],
            copied["ended_during_copy"],
            copied["seconds"].as_f64().unwrap(),
            copied["sessions_per_second"].as_f64().unwrap(),
        ));
    }

    load.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    // Every client once more, in order, on the final instance.
    let all = load.clients.read().await.clone();
    let mut active = 0u64;
    for client in &all {
        let client = client.lock().await;
        if matches!(&*client, Client::Active(_)) {
            active += 1;
        }
        load.check(&client).await;
    }
    let final_live = live_sessions(&redis, &second_prefix);
    current.stop().await;
    let requests = load.requests.load(Ordering::Relaxed);
    let errors = load.errors.load(Ordering::Relaxed);
    println!(
        "live migration: {} clients ({users} users), {requests} requests, {errors} errors, {revoked_total} revoked during the copies, {active} signed in at the end, {final_live} live sessions in the final store, {:.1} s in all",
        all.len(),
        started.elapsed().as_secs_f64()
    );
    for line in &figures {
        println!("{line}");
    }
    redis_delete_prefix(&redis, &first_prefix);
    redis_delete_prefix(&redis, &second_prefix);
    assert_eq!(
        errors,
        0,
        "refused or failed requests: {:?}",
        load.samples.lock().unwrap()
    );
    assert_eq!(
        final_live, active,
        "the final store holds exactly the live clients' sessions"
    );
}
