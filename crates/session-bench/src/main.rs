//! Benchmarks the user-session stores.
//!
//! ```text
//! cargo run --release -p session-bench -- [--seconds N] [BACKEND...]
//! ```
//! Backends: `memory` (default). Each operation runs at 1 and 32 concurrent tasks for N seconds
//! (default 2) against a store pre-filled with 10,000 sessions; the table gives ops/s, p50 and p99.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use session_core::{NewUserSession, SessionPolicy, SessionToken, UserSessionStore};

const PREFILL: usize = 10_000;
const CONCURRENCY: [usize; 2] = [1, 32];

#[derive(Clone, Copy, Debug)]
enum Op {
    Create,
    Get,
    Touch,
}

impl Op {
    const ALL: [Op; 3] = [Op::Get, Op::Touch, Op::Create];

    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Get => "get",
            Op::Touch => "touch",
        }
    }
}

struct Outcome {
    ops: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

async fn run(
    store: Arc<dyn UserSessionStore>,
    tokens: Arc<Vec<SessionToken>>,
    op: Op,
    tasks: usize,
    seconds: u64,
) -> Outcome {
    let start = Instant::now();
    // Each task checks the deadline itself: a store that never awaits (memory) would otherwise keep
    // the workers busy and starve a timer-based stop.
    let deadline = start + Duration::from_secs(seconds);
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (store, tokens) = (store.clone(), tokens.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 16);
                let mut i = task * 7919;
                loop {
                    if i % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                    let t = Instant::now();
                    if t >= deadline {
                        break;
                    }
                    let token = &tokens[i % tokens.len()];
                    i += 1;
                    match op {
                        Op::Create => store
                            .create(
                                NewUserSession::new(format!("bench-{}", i % 1000))
                                    .email("bench@example.com"),
                            )
                            .await
                            .map(|_| ()),
                        Op::Get => store.get(token).await.map(|_| ()),
                        Op::Touch => store.touch(token).await.map(|_| ()),
                    }
                    .unwrap_or_else(|e| panic!("{} failed: {e}", op.name()));
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap_or_default());
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    let pick = |q: f64| {
        all.get(((all.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    Outcome {
        ops: all.len() as u64,
        elapsed,
        p50: pick(0.50),
        p99: pick(0.99),
    }
}

async fn open(backend: &str) -> Arc<dyn UserSessionStore> {
    let policy = SessionPolicy::default();
    match backend {
        "memory" => {
            Arc::new(session_memory::MemoryStore::new(policy).unwrap_or_else(|e| panic!("{e}")))
        }
        other => panic!("unknown backend {other:?}; known: memory"),
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut seconds = 2;
    let mut backends = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--seconds" {
            seconds = args
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("--seconds takes a whole number"));
        } else {
            backends.push(arg);
        }
    }
    if backends.is_empty() {
        backends.push("memory".to_owned());
    }
    println!(
        "{:<8} {:<7} {:>5} {:>12} {:>10} {:>10}",
        "backend", "op", "tasks", "ops/s", "p50 µs", "p99 µs"
    );
    for backend in &backends {
        let store = open(backend).await;
        let mut tokens = Vec::with_capacity(PREFILL);
        for i in 0..PREFILL {
            let issued = store
                .create(NewUserSession::new(format!("user-{}", i % 1000)))
                .await
                .unwrap_or_else(|e| panic!("prefill: {e}"));
            tokens.push(issued.token);
        }
        let tokens = Arc::new(tokens);
        for op in Op::ALL {
            for tasks in CONCURRENCY {
                let o = run(store.clone(), tokens.clone(), op, tasks, seconds).await;
                println!(
                    "{:<8} {:<7} {:>5} {:>12.0} {:>10.1} {:>10.1}",
                    backend,
                    op.name(),
                    tasks,
                    o.ops as f64 / o.elapsed.as_secs_f64(),
                    o.p50.as_secs_f64() * 1e6,
                    o.p99.as_secs_f64() * 1e6
                );
            }
        }
    }
}
