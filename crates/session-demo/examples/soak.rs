//! The soak: drives the demo binary over HTTP on Redis + PostgreSQL at a fixed rate for a bounded
//! time and samples it every minute. `just soak` (30 minutes), or
//! `cargo run --release -p session-demo --example soak -- MINUTES [RATE] [OUT_DIR]`.
//!
//! It builds nothing itself: it runs `target/release/session-demo` (the recipe builds it first) on
//! a fresh PostgreSQL schema and Redis key prefix of its own, both removed at the end. Accounts
//! are added with `session-demo add-user`. A fixed number of virtual users each hold a cookie; a
//! scheduler starts one operation per tick (open loop: a slow server does not slow the offered
//! load) on a user who has none in flight: sign-in when signed out, else a touch (`GET
//! /sessions/me`), an update (`PUT /sessions/me/preferences`), a rotation, a sign-out, a
//! committing or a rolled-back database write, or a database read. Every minute it records
//! operations, unexpected answers, p50/p99 latency, the demo's RSS, its open sockets and its pool
//! gauge, and writes `soak.md` (table) and `soak.svg` (plot) to OUT_DIR (default `docs/soak`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a driver: a panic is the report

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use session_testkit::servers::{PgSchema, redis_delete_prefix, redis_url, unique_prefix};

const USERS: usize = 64;
const PASSWORD: &str = "soak password, long enough";
/// Minutes excluded from the RSS growth figure: pools fill, caches warm.
const WARM_UP_MINUTES: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    SignIn,
    Touch,
    Update,
    Rotate,
    SignOut,
    DbCommit,
    DbRollback,
    DbRead,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::SignIn => "sign-in",
            Op::Touch => "touch",
            Op::Update => "update",
            Op::Rotate => "rotate",
            Op::SignOut => "sign-out",
            Op::DbCommit => "db-commit",
            Op::DbRollback => "db-rollback",
            Op::DbRead => "db-read",
        }
    }

    /// A signed-in user's next operation, from a number in 0..100.
    fn pick(roll: u32) -> Op {
        match roll {
            0..40 => Op::Touch,
            40..55 => Op::Update,
            55..63 => Op::Rotate,
            63..68 => Op::SignOut,
            68..80 => Op::DbCommit,
            80..85 => Op::DbRollback,
            _ => Op::DbRead,
        }
    }
}

/// What one minute saw.
#[derive(Default)]
struct Minute {
    latencies_us: Vec<u64>,
    unexpected: BTreeMap<String, u64>,
    by_op: BTreeMap<Op, u64>,
    skipped: u64,
}

struct Sample {
    minute: usize,
    ops: usize,
    unexpected: u64,
    skipped: u64,
    p50_ms: f64,
    p99_ms: f64,
    rss_mib: f64,
    sockets: usize,
    db_pool: f64,
    detail: String,
}

struct Demo {
    child: Child,
    base: String,
}

fn demo_binary() -> String {
    std::env::var("SOAK_DEMO_BIN").unwrap_or_else(|_| "target/release/session-demo".to_owned())
}

fn start_demo(env: &[(&str, String)]) -> Demo {
    use std::io::{BufRead, BufReader};
    let mut command = Command::new(demo_binary());
    command
        .env("DEMO_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("run target/release/session-demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    // The rest is drained, so the demo never blocks or fails writing to a full or closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let base = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    Demo { child, base }
}

fn add_users(env: &[(&str, String)], prefix: &str) {
    use std::io::Write;
    for i in 0..USERS {
        let mut command = Command::new(demo_binary());
        command
            .args(["add-user", &format!("soak{i}@{prefix}.test")])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
        assert!(child.wait().unwrap().success(), "add-user failed");
    }
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// The sum of a gauge's series in Prometheus text.
fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    #[allow(clippy::cast_precision_loss)]
    let ms = sorted[index] as f64 / 1000.0;
    ms
}

/// One virtual user: an HTTP client with its own cookie jar, and whether it is signed in.
struct User {
    email: String,
    client: reqwest::Client,
    signed_in: bool,
}

async fn run_op(base: &str, user: &mut User, op: Op, n: u64) -> Result<(), String> {
    let url = |path: &str| format!("{base}{path}");
    let c = &user.client;
    let (request, expected) = match op {
        Op::SignIn => (
            c.post(url("/sessions"))
                .json(&json!({"email": user.email, "password": PASSWORD})),
            201,
        ),
        Op::Touch => (c.get(url("/sessions/me")), 200),
        Op::Update => (
            c.put(url("/sessions/me/preferences"))
                .json(&json!({"locale": "en-GB", "theme": format!("t{}", n % 7)})),
            200,
        ),
        Op::Rotate => (c.post(url("/sessions/me/rotate")), 200),
        Op::SignOut => (c.delete(url("/sessions/me")), 204),
        Op::DbCommit => (
            c.post(url("/db-items"))
                .json(&json!({"name": format!("item {n}"), "quantity": 1 + n % 5})),
            201,
        ),
        Op::DbRollback => (
            c.post(url("/db-items"))
                .json(&json!({"name": format!("item {n}"), "quantity": 0})),
            422,
        ),
        Op::DbRead => (c.get(url("/db-items?limit=20")), 200),
    };
    let response = request
        .send()
        .await
        .map_err(|e| format!("{}: {e}", op.name()))?;
    let status = response.status().as_u16();
    // The body is read, as a browser would, so the connection goes back to the client's pool.
    let _ = response.bytes().await;
    match op {
        Op::SignIn if status == 201 => user.signed_in = true,
        Op::SignOut if status == 204 => user.signed_in = false,
        _ => {}
    }
    if status == expected {
        Ok(())
    } else {
        Err(format!("{} {status}", op.name()))
    }
}

fn write_report(out: &str, samples: &[Sample], settings: &str) -> String {
    let mut md = String::new();
    writeln!(md, "# Soak run\n\n{settings}\n").unwrap();
    writeln!(
        md,
        "| minute | operations | unexpected | skipped | p50 ms | p99 ms | RSS MiB | sockets | DB pool |"
    )
    .unwrap();
    writeln!(md, "|---|---|---|---|---|---|---|---|---|").unwrap();
    for s in samples {
        writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
            s.minute,
            s.ops,
            s.unexpected,
            s.skipped,
            s.p50_ms,
            s.p99_ms,
            s.rss_mib,
            s.sockets,
            s.db_pool
        )
        .unwrap();
    }
    let details: Vec<String> = samples
        .iter()
        .filter(|s| !s.detail.is_empty())
        .map(|s| format!("- minute {}: {}", s.minute, s.detail))
        .collect();
    if !details.is_empty() {
        writeln!(md, "\nUnexpected answers:\n{}", details.join("\n")).unwrap();
    }
    let summary = summary(samples);
    writeln!(md, "\n{summary}").unwrap();
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(format!("{out}/soak.md"), md).unwrap();
    std::fs::write(format!("{out}/soak.svg"), plot(samples)).unwrap();
    summary
}

fn summary(samples: &[Sample]) -> String {
    let after_warm_up: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.minute > WARM_UP_MINUTES)
        .collect();
    let (Some(first), Some(last)) = (after_warm_up.first(), after_warm_up.last()) else {
        return "Too short for an RSS figure after the warm-up.".to_owned();
    };
    let peak = after_warm_up
        .iter()
        .map(|s| s.rss_mib)
        .fold(0.0_f64, f64::max);
    let growth = (last.rss_mib - first.rss_mib) / first.rss_mib * 100.0;
    let unexpected: u64 = samples.iter().map(|s| s.unexpected).sum();
    let ops: usize = samples.iter().map(|s| s.ops).sum();
    let worst_p99 = samples.iter().map(|s| s.p99_ms).fold(0.0_f64, f64::max);
    format!(
        "Summary: {ops} operations, {unexpected} unexpected answers; RSS after the {WARM_UP_MINUTES}-minute warm-up {:.1} MiB (minute {}) to {:.1} MiB (minute {}), growth {growth:+.1}%, peak {peak:.1} MiB; worst minute p99 {worst_p99:.1} ms.",
        first.rss_mib, first.minute, last.rss_mib, last.minute
    )
}

/// RSS (MiB, left axis) and p99 (ms, right axis) per minute, as an SVG line chart.
fn plot(samples: &[Sample]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 320.0, 60.0, 60.0, 30.0, 40.0);
    let n = samples.len().max(2);
    let max_rss = samples.iter().map(|s| s.rss_mib).fold(1.0_f64, f64::max) * 1.2;
    let max_p99 = samples.iter().map(|s| s.p99_ms).fold(1.0_f64, f64::max) * 1.2;
    #[allow(clippy::cast_precision_loss)]
    let x = |i: usize| left + (w - left - right) * i as f64 / (n - 1) as f64;
    let y = |v: f64, max: f64| top + (h - top - bottom) * (1.0 - v / max);
    let line = |f: &dyn Fn(&Sample) -> f64, max: f64| {
        samples
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{:.1},{:.1}", x(i), y(f(s), max)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
<line x1="{}" y1="{top}" x2="{}" y2="{}" stroke="black"/>
<text x="{left}" y="18" fill="#1f77b4">RSS MiB (left, 0-{max_rss:.0})</text>
<text x="{}" y="18" fill="#d62728" text-anchor="end">p99 ms (right, 0-{max_p99:.0})</text>
<text x="{}" y="{}" text-anchor="middle">minute (1-{})</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>
<polyline fill="none" stroke="#d62728" stroke-width="2" points="{}"/>
"##,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        w - right,
        w - right,
        h - bottom,
        w - right,
        w / 2.0,
        h - 10.0,
        samples.len(),
        line(&|s| s.rss_mib, max_rss),
        line(&|s| s.p99_ms, max_p99),
    );
    svg.push_str("</svg>\n");
    svg
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let minutes: usize = args.first().map_or(30, |m| m.parse().expect("MINUTES"));
    let rate: u64 = args
        .get(1)
        .map_or(100, |r| r.parse().expect("RATE (operations/s)"));
    assert!(
        (1..=1_000_000).contains(&rate),
        "RATE must be 1 to 1000000 operations/s"
    );
    let out = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "docs/soak".to_owned());

    let redis = redis_url();
    let prefix = unique_prefix("soak");
    let schema = PgSchema::create("soak");
    let env = [
        ("SESSION_STORE_URL", redis.clone()),
        ("SESSION_KEY_PREFIX", prefix.clone()),
        ("DATABASE_URL", schema.url()),
    ];
    add_users(&env, "soak");
    let mut demo = start_demo(&env);
    let pid = demo.child.id();
    let base = Arc::new(demo.base.clone());
    println!(
        "soak: {minutes} min at {rate} operations/s on {} (pid {pid})",
        demo.base
    );

    let users: Vec<Arc<tokio::sync::Mutex<User>>> = (0..USERS)
        .map(|i| {
            Arc::new(tokio::sync::Mutex::new(User {
                email: format!("soak{i}@soak.test"),
                // Each user from an address of its own, as real clients are: one address
                // signing in 64 users at once would meet the per-address limit.
                client: reqwest::Client::builder()
                    .local_address(std::net::IpAddr::from([
                        127,
                        0,
                        1,
                        u8::try_from(i + 2).unwrap(),
                    ]))
                    .cookie_store(true)
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap(),
                signed_in: false,
            }))
        })
        .collect();
    let minute = Arc::new(Mutex::new(Minute::default()));
    let stop = Arc::new(AtomicBool::new(false));

    // The scheduler: one operation per tick on a random idle user.
    let scheduler = {
        let (minute, stop, base) = (minute.clone(), stop.clone(), base.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let seed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
                #[allow(clippy::cast_possible_truncation)]
                let index = (seed % USERS as u64) as usize;
                let Ok(mut user) = users[index].clone().try_lock_owned() else {
                    minute.lock().unwrap().skipped += 1;
                    continue;
                };
                #[allow(clippy::cast_possible_truncation)]
                let op = if user.signed_in {
                    Op::pick(((seed >> 8) % 100) as u32)
                } else {
                    Op::SignIn
                };
                let (minute, base) = (minute.clone(), base.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    let outcome = run_op(&base, &mut user, op, n).await;
                    #[allow(clippy::cast_possible_truncation)]
                    let us = started.elapsed().as_micros() as u64;
                    let mut m = minute.lock().unwrap();
                    m.latencies_us.push(us);
                    *m.by_op.entry(op).or_default() += 1;
                    if let Err(what) = outcome {
                        *m.unexpected.entry(what).or_default() += 1;
                    }
                });
            }
        })
    };

    let metrics_client = reqwest::Client::new();
    // A minute, unless a quick check of the driver itself asks for less.
    let sample_every = Duration::from_secs(
        std::env::var("SOAK_SAMPLE_SECS").map_or(60, |s| s.parse().expect("SOAK_SAMPLE_SECS")),
    );
    let mut samples = Vec::new();
    for m in 1..=minutes {
        tokio::time::sleep(sample_every).await;
        let seen = std::mem::take(&mut *minute.lock().unwrap());
        let mut latencies = seen.latencies_us;
        latencies.sort_unstable();
        let metrics = match metrics_client.get(format!("{base}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let sample = Sample {
            minute: m,
            ops: latencies.len(),
            unexpected: seen.unexpected.values().sum(),
            skipped: seen.skipped,
            p50_ms: percentile(&latencies, 0.50),
            p99_ms: percentile(&latencies, 0.99),
            rss_mib: rss_mib(pid),
            sockets: sockets(pid),
            db_pool: gauge(&metrics, "db_pool_connections"),
            detail: seen
                .unexpected
                .iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        println!(
            "minute {m}: {} ops ({:?}), {} unexpected, p99 {:.1} ms, RSS {:.1} MiB, {} sockets",
            sample.ops,
            seen.by_op
                .iter()
                .map(|(op, n)| format!("{} {n}", op.name()))
                .collect::<Vec<_>>(),
            sample.unexpected,
            sample.p99_ms,
            sample.rss_mib,
            sample.sockets
        );
        samples.push(sample);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = scheduler.await;
    let settings = format!(
        "`just soak {minutes}` (= `cargo run --release -p session-demo --example soak -- {minutes} {rate}`): the release demo binary on Redis (`{}`, own key prefix) and PostgreSQL (own schema), {rate} operations/s offered at a fixed rate over {USERS} users with a cookie each; mix for a signed-in user: touch 40%, preferences update 15%, rotate 8%, sign-out 5%, committing database write 12%, rolled-back write 5%, database read (20 newest items) 15%; a signed-out user signs in (argon2id). Sampled every minute: operations finished, unexpected answers, operations skipped because the chosen user was busy, latency percentiles, the demo's RSS (VmRSS), its open sockets (HTTP clients, Redis and PostgreSQL connections, the listener), and the database pool's connection gauge from /metrics.",
        redis
    );
    let summary = write_report(&out, &samples, &settings);
    println!("{summary}\nwrote {out}/soak.md and {out}/soak.svg");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = demo.child.wait();
    redis_delete_prefix(&redis, &prefix);
    drop(schema);
}
