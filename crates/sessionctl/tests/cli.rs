//! `sessionctl` driven as a process, against the shared Redis (a key prefix of its own) and
//! PostgreSQL (a schema of its own): every command, its exit codes, JSON output, and copies
//! between backends whose tokens keep working.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::HashSet;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use session_core::{
    NewUserSession, PoolConfig, SessionPolicy, SessionToken, UserSession, UserSessionStore,
};
use session_manager::session_diesel::{PgSessionStore, SqliteSessionStore};
use session_manager::session_redis::{RedisConfig, RedisStore};
use session_testkit::servers::{
    PgSchema, SqliteFile, redis_delete_prefix, redis_keys, redis_url, require_redis, unique_prefix,
};

/// Deletes a Redis prefix when the test ends, also on panic.
struct Prefix(String);

impl Prefix {
    fn new(label: &str) -> Self {
        require_redis(&redis_url());
        Self(unique_prefix(label))
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        redis_delete_prefix(&redis_url(), &self.0);
    }
}

async fn redis_store(prefix: &Prefix) -> RedisStore {
    RedisStore::connect(
        RedisConfig::new(redis_url()).key_prefix(prefix.0.clone()),
        SessionPolicy::default(),
    )
    .await
    .unwrap()
}

async fn pg_store(schema: &PgSchema) -> PgSessionStore {
    PgSessionStore::connect(
        &schema.url(),
        PoolConfig::default(),
        SessionPolicy::default(),
    )
    .await
    .unwrap()
}

/// Runs the binary with `args`, the Redis key prefix `prefix` (if any), none of the caller's own
/// `SESSION_*` variables, and `stdin` as its input.
fn run(args: &[&str], prefix: Option<&Prefix>, stdin: Option<&str>) -> Output {
    run_env(args, prefix, stdin, &[])
}

/// [`run`] with the variables `vars` set.
fn run_env(
    args: &[&str],
    prefix: Option<&Prefix>,
    stdin: Option<&str>,
    vars: &[(&str, &str)],
) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sessionctl"));
    command.args(args);
    for (name, _) in session_manager::ENV_VARS {
        command.env_remove(name);
    }
    command.envs(vars.iter().copied());
    command.env_remove(session_manager::CONFIG_FILE_VAR);
    if let Some(prefix) = prefix {
        command.env("SESSION_KEY_PREFIX", &prefix.0);
    }
    command.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    if let Some(input) = stdin {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The JSON document a successful (or partly successful) run printed.
fn json(out: &Output) -> Value {
    serde_json::from_str(stdout(out).trim()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            stdout(out),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn expect(out: &Output, want: i32) {
    assert_eq!(
        code(out),
        want,
        "stdout: {}\nstderr: {}",
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Signs in `users` users with `each` sessions apiece; returns every token with its session.
async fn populate(
    store: &dyn UserSessionStore,
    users: usize,
    each: usize,
) -> Vec<(SessionToken, UserSession)> {
    let mut out = Vec::new();
    for u in 0..users {
        for i in 0..each {
            let new = NewUserSession::new(format!("user-{u}"))
                .email(format!("user-{u}@acme.test"))
                .remember_me(i % 2 == 0)
                .attribute("i", i);
            let issued = store.create(new).await.unwrap();
            out.push((issued.token, issued.session));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looks_inside_revokes_and_purges_on_redis() {
    let prefix = Prefix::new("ctl");
    let store = redis_store(&prefix).await;
    let sessions = populate(&store, 3, 4).await;
    let url = redis_url();
    let with = |args: &[&str]| {
        let mut all = vec!["--store", url.as_str()];
        all.extend_from_slice(args);
        run(&all, Some(&prefix), None)
    };

    let stats = with(&["stats", "--json"]);
    expect(&stats, 0);
    let stats = json(&stats);
    assert_eq!(stats["backend"], "redis");
    assert_eq!(stats["live_sessions"], 12);
    assert_eq!(stats["users"], 3);
    assert_eq!(stats["remember_me"], 6);
    assert_eq!(stats["most_sessions_of_one_user"], 4);
    assert_eq!(
        stats["users_by_sessions"][2]["users"], 3,
        "3-5 sessions: {stats}"
    );
    let human = stdout(&with(&["stats"]));
    assert!(human.contains("live sessions   12"), "{human}");

    let listed = with(&["list", "--user", "user-1", "--json"]);
    expect(&listed, 0);
    let listed: Vec<UserSession> = serde_json::from_value(json(&listed)).unwrap();
    let expected: HashSet<_> = sessions
        .iter()
        .filter(|(_, s)| s.user_id == "user-1")
        .map(|(_, s)| s.handle.clone())
        .collect();
    assert_eq!(
        listed
            .iter()
            .map(|s| s.handle.clone())
            .collect::<HashSet<_>>(),
        expected
    );
    let table = stdout(&with(&["list", "--user", "user-1"]));
    assert_eq!(table.lines().count(), 5, "a header and four rows: {table}");

    let (token, session) = &sessions[0];
    let handle = session.handle.to_string();
    for args in [
        vec!["inspect", handle.as_str(), "--json"],
        vec!["inspect", handle.as_str(), "--user", "user-0", "--json"],
    ] {
        let inspected = with(&args);
        expect(&inspected, 0);
        let read: UserSession = serde_json::from_value(json(&inspected)).unwrap();
        assert_eq!(&read, session, "inspect shows the stored session");
    }
    let human = stdout(&with(&["inspect", handle.as_str()]));
    assert!(human.contains("user               user-0"), "{human}");
    assert!(
        !human.contains(token.expose_secret()),
        "never the token itself"
    );

    let unknown = SessionToken::generate().unwrap().handle().to_string();
    expect(&with(&["inspect", &unknown]), 3);
    expect(&with(&["inspect", "not-a-handle"]), 2);

    // Dry runs write nothing.
    let dry = with(&["revoke", "--handle", &handle, "--dry-run", "--json"]);
    expect(&dry, 0);
    assert_eq!(json(&dry)["revoked"], 1);
    assert!(store.get(token).await.unwrap().is_some());
    let dry = with(&["revoke", "--user", "user-2", "--dry-run", "--json"]);
    assert_eq!(json(&dry)["revoked"], 4);
    assert_eq!(store.list_by_user("user-2").await.unwrap().len(), 4);

    expect(&with(&["revoke", "--handle", &handle]), 0);
    assert_eq!(store.get(token).await.unwrap(), None);
    expect(&with(&["revoke", "--handle", &handle]), 3);

    let keep = sessions
        .iter()
        .find(|(_, s)| s.user_id == "user-2")
        .unwrap();
    let keep_handle = keep.1.handle.to_string();
    let revoked = with(&[
        "revoke",
        "--user",
        "user-2",
        "--except",
        &keep_handle,
        "--json",
    ]);
    expect(&revoked, 0);
    assert_eq!(json(&revoked)["revoked"], 3);
    let left = store.list_by_user("user-2").await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].handle, keep.1.handle);

    expect(&with(&["purge", "--dry-run"]), 0);
    let purged = with(&["purge", "--json"]);
    expect(&purged, 0);
    assert_eq!(json(&purged)["purged"], 0, "nothing had expired");
    assert_eq!(json(&with(&["stats", "--json"]))["live_sessions"], 8);

    // Usage errors: 2, and `memory://` is refused as a store of no other process.
    expect(&run(&["revoke"], None, None), 2);
    expect(&run(&["stats"], None, None), 2);
    expect(
        &run(&["--store", "redis://127.0.0.1:1", "stats"], None, None),
        1,
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_carry_sessions_between_backends_without_tokens() {
    let prefix = Prefix::new("ctlx");
    let redis = redis_store(&prefix).await;
    let sessions = populate(&redis, 5, 3).await;
    let url = redis_url();
    let dir = std::env::temp_dir().join(unique_prefix("sessionctl-export").replace(':', ""));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sessions.jsonl");
    let file_arg = file.to_str().unwrap();

    let exported = run(
        &["--store", &url, "export", "--out", file_arg, "--json"],
        Some(&prefix),
        None,
    );
    expect(&exported, 0);
    assert_eq!(json(&exported)["exported"], 15);
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 15);
    for (token, _) in &sessions {
        assert!(
            !text.contains(token.expose_secret()),
            "an export holds no token"
        );
    }
    // Standard output, when no file is named: the same sessions.
    let piped = run(&["--store", &url, "export"], Some(&prefix), None);
    expect(&piped, 0);
    assert_eq!(stdout(&piped).lines().count(), 15);

    // Into PostgreSQL, through a configuration file naming the store.
    let schema = PgSchema::create("ctlx");
    let config = dir.join("sessions.toml");
    std::fs::write(&config, format!("store_url = {:?}\n", schema.url())).unwrap();
    let config_arg = config.to_str().unwrap();
    let dry = run(
        &[
            "--config",
            config_arg,
            "import",
            "--in",
            file_arg,
            "--dry-run",
            "--json",
        ],
        None,
        None,
    );
    expect(&dry, 0);
    assert_eq!(json(&dry)["stored"], 15);
    let pg = pg_store(&schema).await;
    assert!(
        pg.list_by_user("user-0").await.unwrap().is_empty(),
        "a dry run writes nothing"
    );

    let imported = run(
        &["--config", config_arg, "import", "--in", file_arg, "--json"],
        None,
        None,
    );
    expect(&imported, 0);
    assert_eq!(json(&imported)["stored"], 15);
    for (token, session) in &sessions {
        assert_eq!(
            pg.get(token).await.unwrap().as_ref(),
            Some(session),
            "the client's token works on the new store, every field kept"
        );
    }
    let again = run(
        &["--config", config_arg, "import", "--in", file_arg, "--json"],
        None,
        None,
    );
    expect(&again, 0);
    assert_eq!(json(&again)["already_present"], 15);

    // From standard input, with a bad line among good ones: done in part, exit 4.
    let mut fresh = sessions[0].1.clone();
    fresh.handle = SessionToken::generate().unwrap().handle().clone();
    let mut invalid = fresh.clone();
    invalid.handle = SessionToken::generate().unwrap().handle().clone();
    invalid.version = 0;
    let input = format!(
        "{}\nnot json\n{}\n",
        serde_json::to_string(&fresh).unwrap(),
        serde_json::to_string(&invalid).unwrap()
    );
    let partial = run(
        &["--config", config_arg, "import", "--json"],
        None,
        Some(&input),
    );
    expect(&partial, 4);
    let partial = json(&partial);
    assert_eq!(partial["stored"], 1);
    assert_eq!(partial["refused"], 2);
    pg.close().await;
    redis.close().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The JSON summary of a migration, checked for a complete, verified copy of `n` sessions.
fn assert_complete(summary: &Value, n: u64) {
    assert_eq!(summary["walked"], n, "{summary}");
    assert_eq!(
        summary["stored"].as_u64().unwrap() + summary["already_present"].as_u64().unwrap(),
        n,
        "{summary}"
    );
    assert_eq!(summary["source_live"], n, "{summary}");
    assert_eq!(summary["target_live"], n, "{summary}");
    assert_eq!(summary["sample_missing"], Value::Array(Vec::new()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_copies_postgres_to_redis_and_back_and_resumes_after_a_kill() {
    let source_schema = PgSchema::create("ctlm");
    let pg = pg_store(&source_schema).await;
    let n = 1500;
    let sessions = populate(&pg, 150, 10).await;
    let prefix = Prefix::new("ctlm");
    let url = redis_url();
    let dir = std::env::temp_dir().join(unique_prefix("sessionctl-migrate").replace(':', ""));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");
    let state_arg = state.to_str().unwrap();
    let from = source_schema.url();

    let dry = run(
        &[
            "migrate",
            "--from",
            &from,
            "--to",
            &url,
            "--dry-run",
            "--json",
        ],
        Some(&prefix),
        None,
    );
    expect(&dry, 0);
    assert_eq!(json(&dry)["walked"], n);
    assert!(
        redis_keys(
            &mut session_testkit::servers::redis_connection(&url),
            &format!("{}*", prefix.0)
        )
        .is_empty(),
        "a dry run writes nothing"
    );

    // Killed once its state file shows progress: the second run resumes from it.
    let mut command = Command::new(env!("CARGO_BIN_EXE_sessionctl"));
    command
        .args([
            "migrate", "--from", &from, "--to", &url, "--state", state_arg, "--batch", "10",
        ])
        .env("SESSION_KEY_PREFIX", &prefix.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = command.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // The state is saved before a page's first import (its sessions pending) and after its
    // check: a state with pages walked is progress.
    let walked = |state: &std::path::Path| -> u64 {
        std::fs::read_to_string(state)
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .and_then(|saved| saved["walked"].as_u64())
            .unwrap_or(0)
    };
    while walked(&state) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no progress in the state file within a minute"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the first run ended before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let done_before = saved["walked"].as_u64().unwrap();
    assert!(done_before > 0 && done_before < n, "{saved}");

    let resumed = run(
        &[
            "migrate", "--from", &from, "--to", &url, "--state", state_arg, "--json",
        ],
        Some(&prefix),
        None,
    );
    expect(&resumed, 0);
    let summary = json(&resumed);
    assert_eq!(summary["resumed"], true);
    assert_complete(&summary, n);
    assert!(!state.exists(), "a completed copy leaves no state");
    let redis = redis_store(&prefix).await;
    for (token, session) in &sessions {
        assert_eq!(
            redis.get(token).await.unwrap().as_ref(),
            Some(session),
            "a PostgreSQL token works on Redis"
        );
    }

    // And back, into a fresh schema: Redis's walk, PostgreSQL's import.
    let back_schema = PgSchema::create("ctlb");
    let back = run(
        &[
            "migrate",
            "--from",
            &url,
            "--to",
            &back_schema.url(),
            "--batch",
            "200",
            "--json",
        ],
        Some(&prefix),
        None,
    );
    expect(&back, 0);
    let back_summary = json(&back);
    assert_eq!(back_summary["stored"], n, "{back_summary}");
    assert_eq!(back_summary["source_live"], n);
    assert_eq!(back_summary["target_live"], n);
    let pg_back = pg_store(&back_schema).await;
    for (token, session) in sessions.iter().step_by(7) {
        assert_eq!(pg_back.get(token).await.unwrap().as_ref(), Some(session));
    }

    // A state file of another copy is refused rather than resumed.
    std::fs::write(
        &state,
        r#"{"from":"redis://elsewhere","to":"x","cursor":null,"walked":0,"tally":{"stored":0,"already_present":0,"expired":0,"refused":0},"seconds":0.0}"#,
    )
    .unwrap();
    expect(
        &run(
            &[
                "migrate", "--from", &from, "--to", &url, "--state", state_arg,
            ],
            Some(&prefix),
            None,
        ),
        2,
    );
    expect(
        &run(
            &["migrate", "--from", &url, "--to", &url],
            Some(&prefix),
            None,
        ),
        2,
    );
    pg.close().await;
    pg_back.close().await;
    redis.close().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// On an SQLite file (the embedded store, shared by the application and the tool): the walk, a
/// revocation, and a copy to Redis whose tokens keep working there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_a_sqlite_file_and_copies_it_to_redis() {
    let file = SqliteFile::new("ctl");
    let sqlite =
        SqliteSessionStore::open(&file.url(), PoolConfig::default(), SessionPolicy::default())
            .await
            .unwrap();
    let sessions = populate(&sqlite, 4, 3).await;
    let url = file.url();

    let stats = run(&["--store", &url, "stats", "--json"], None, None);
    expect(&stats, 0);
    assert_eq!(json(&stats)["backend"], "sqlite");
    assert_eq!(json(&stats)["live_sessions"], 12);
    let revoked = run(
        &["--store", &url, "revoke", "--user", "user-3", "--json"],
        None,
        None,
    );
    expect(&revoked, 0);
    assert_eq!(json(&revoked)["revoked"], 3);
    assert!(sqlite.list_by_user("user-3").await.unwrap().is_empty());

    let prefix = Prefix::new("ctlsq");
    let redis_target = redis_url();
    let copied = run(
        &["migrate", "--from", &url, "--to", &redis_target, "--json"],
        Some(&prefix),
        None,
    );
    expect(&copied, 0);
    assert_complete(&json(&copied), 9);
    let redis = redis_store(&prefix).await;
    for (token, session) in sessions.iter().filter(|(_, s)| s.user_id != "user-3") {
        assert_eq!(
            redis.get(token).await.unwrap().as_ref(),
            Some(session),
            "an SQLite token works on Redis"
        );
    }
    expect(
        &run(&["--store", "sqlite::memory:", "stats"], None, None),
        2,
    );
    sqlite.close().await;
    redis.close().await;
}

/// A run killed between an import and its check left copies unchecked: the next run checks the
/// saved page first and removes the copy of a session that ended in the source meanwhile (and
/// keeps the others). A dry run never opens the target (an SQLite file is not even created).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_checks_a_killed_runs_pending_copies_and_a_dry_run_opens_no_target() {
    let prefix = Prefix::new("ctlp");
    let url = redis_url();
    let redis = redis_store(&prefix).await;
    let live = populate(&redis, 2, 1).await;
    let schema = PgSchema::create("ctlp");
    let pg = pg_store(&schema).await;
    // The killed run's copies: one of a session still in the source, one of a session the
    // application ended after the copy was made (gone from the source, left in the target).
    assert_eq!(
        pg.import(&live[0].1).await.unwrap(),
        session_core::Imported::Stored
    );
    let ended = pg
        .create(NewUserSession::new("user-0").email("user-0@acme.test"))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(unique_prefix("sessionctl-pending").replace(':', ""));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");
    let to = schema.url();
    std::fs::write(
        &state,
        serde_json::json!({
            "from": session_manager::redacted_url(&url),
            "to": session_manager::redacted_url(&to),
            "cursor": null,
            "walked": 0,
            "tally": {"stored": 0, "already_present": 0, "expired": 0, "refused": 0},
            "seconds": 0.0,
            "pending": [&live[0].1, &ended.session],
        })
        .to_string(),
    )
    .unwrap();
    let out = run(
        &[
            "migrate",
            "--from",
            &url,
            "--to",
            &to,
            "--state",
            state.to_str().unwrap(),
            "--json",
        ],
        Some(&prefix),
        None,
    );
    expect(&out, 0);
    let summary = json(&out);
    assert_eq!(summary["ended_during_copy"], 1, "{summary}");
    assert_eq!(summary["target_live"], 2, "{summary}");
    assert_eq!(pg.get(&ended.token).await.unwrap(), None);
    for (token, session) in &live {
        assert_eq!(pg.get(token).await.unwrap().as_ref(), Some(session));
    }

    let never = dir.join("never.db");
    let never_url = format!("sqlite://{}", never.display());
    let dry = run(
        &[
            "migrate",
            "--from",
            &url,
            "--to",
            &never_url,
            "--dry-run",
            "--json",
        ],
        Some(&prefix),
        None,
    );
    expect(&dry, 0);
    assert_eq!(json(&dry)["walked"], 2);
    assert!(!never.exists(), "a dry run opened its target");
    expect(
        &run(
            &[
                "migrate",
                "--from",
                &url,
                "--to",
                "ftp://nowhere",
                "--dry-run",
            ],
            Some(&prefix),
            None,
        ),
        2,
    );
    pg.close().await;
    redis.close().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With the application's migrating configuration, `revoke` and `list` act as the application
/// does: a session in both stores (or only the old one) is listed and revoked in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_and_list_during_a_move_reach_both_stores() {
    let prefix = Prefix::new("ctlr");
    let url = redis_url();
    let redis = redis_store(&prefix).await;
    let schema = PgSchema::create("ctlr");
    let pg = pg_store(&schema).await;
    let both = populate(&redis, 1, 2).await;
    assert_eq!(
        pg.import(&both[0].1).await.unwrap(),
        session_core::Imported::Stored
    );
    let to = schema.url();
    let vars = [
        ("SESSION_STORE_URL", to.as_str()),
        ("SESSION_MIGRATE_FROM_URL", url.as_str()),
    ];
    let listed = run_env(
        &["list", "--user", "user-0", "--json"],
        Some(&prefix),
        None,
        &vars,
    );
    expect(&listed, 0);
    assert_eq!(
        json(&listed).as_array().unwrap().len(),
        2,
        "both stores listed"
    );
    for (token, session) in &both {
        let revoked = run_env(
            &["revoke", "--handle", session.handle.as_str(), "--json"],
            Some(&prefix),
            None,
            &vars,
        );
        expect(&revoked, 0);
        assert_eq!(
            redis.get(token).await.unwrap(),
            None,
            "left in the old store"
        );
        assert_eq!(pg.get(token).await.unwrap(), None, "left in the new store");
    }
    pg.close().await;
    redis.close().await;
}
