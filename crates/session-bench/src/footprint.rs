//! Memory per stored session in the memory backend, and purge cost as the store grows.
//!
//! Bytes per session come from the growth of the process's resident set (`VmRSS` in
//! `/proc/self/status`) while sessions are added: at 100k+ sessions the page granularity is
//! negligible, and it counts everything a session costs (map entries, index entries, allocator
//! overhead), which a sum of struct sizes would not.

use std::time::{Duration, Instant};

use session_core::{ManualClock, NewUserSession, SessionPolicy, UserSessionStore};
use session_memory::MemoryStore;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A session like a web app's: ids, an e-mail, a company, two small attributes.
fn typical(i: usize) -> NewUserSession {
    NewUserSession::new(format!("user-{}", i % 100_000))
        .company_name("Acme Corporation")
        .email(format!("user{}@example.com", i % 100_000))
        .attribute("locale", "en-GB")
        .attribute("csrf", "f3a9c1d2e4b5a6978812")
}

pub(crate) async fn bench_footprint() {
    println!(
        "{:<28} {:>10} {:>16}",
        "memory store", "sessions", "bytes/session"
    );
    for n in [100_000usize, 1_000_000] {
        let store = MemoryStore::new(SessionPolicy::default()).unwrap();
        // Warm the allocator and the maps' first growth steps so they are not charged to sessions.
        for i in 0..1000 {
            store.create(typical(i)).await.unwrap();
        }
        let before = rss_bytes();
        for i in 0..n {
            store.create(typical(i)).await.unwrap();
        }
        let after = rss_bytes();
        println!(
            "{:<28} {:>10} {:>16.0}",
            "resident set growth",
            n,
            (after - before) as f64 / n as f64
        );
        drop(store);
    }
    println!();
    println!(
        "{:<12} {:>10} {:>10} {:>12} {:>16}",
        "purge", "stored", "expired", "time ms", "ns/expired"
    );
    // The first round is not reported: it pays for the allocator handing back the memory of the
    // million sessions measured above (32 ms at 1,000 stored, against 0.1 ms when repeated).
    for (round, n) in [1_000usize, 1_000, 100_000, 1_000_000]
        .into_iter()
        .enumerate()
    {
        let clock = ManualClock::starting_now();
        let store = MemoryStore::new(SessionPolicy::default().with_clock(clock.clone())).unwrap();
        let expiring = n / 10;
        for i in 0..expiring {
            store.create(typical(i)).await.unwrap();
        }
        clock.advance(Duration::from_secs(20 * 60));
        for i in expiring..n {
            store.create(typical(i)).await.unwrap();
        }
        clock.advance(Duration::from_secs(11 * 60)); // the first 10% are now past their idle expiry
        let start = Instant::now();
        let purged = store.purge_expired().await.unwrap();
        let elapsed = start.elapsed();
        assert_eq!(purged as usize, expiring);
        assert_eq!(store.len(), n - expiring);
        if round == 0 {
            continue;
        }
        println!(
            "{:<12} {:>10} {:>10} {:>12.2} {:>16.0}",
            "memory",
            n,
            expiring,
            elapsed.as_secs_f64() * 1e3,
            elapsed.as_nanos() as f64 / expiring as f64
        );
    }
}
