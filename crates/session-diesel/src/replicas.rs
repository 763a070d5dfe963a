//! Read replicas for read-only scopes (PostgreSQL streaming replicas; ADR 0022).
//!
//! A read-only scope ([`session_core::ScopeOptions::read_only`]) runs on the next healthy replica
//! in turn; a read-write scope never reaches one. A task checks every replica each
//! `check_interval`: it must answer within the checkout time-out, still be in recovery (a promoted
//! standby is no longer a replica of this primary), and have replayed the primary's WAL up to a
//! position the primary had reached no more than `max_lag` ago. The primary's position is sampled
//! at each check (`pg_current_wal_lsn()`), so an idle primary does not make a caught-up replica
//! look behind (as `now() - pg_last_xact_replay_timestamp()` would), and a replica whose WAL
//! receiver has stopped does fall behind the samples. With no healthy replica, read-only scopes
//! run on the primary, and so does one whose replica checkout takes longer than the check
//! interval (a replica that died between checks, or one saturated).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::{Bool, Nullable, Text};
use diesel_async::AsyncPgConnection;
use session_core::{PoolConfig, Result, SessionError};

use crate::provider::{CheckoutCheck, DieselProvider, Replica, ReplicaSet};

/// Read replicas of a [`crate::PgProvider`]: where they are and how fresh they must be.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaConfig {
    /// The replicas' connection URLs (pooled with the primary's [`PoolConfig`]).
    pub urls: Vec<String>,
    /// A replica further behind the primary than this serves no read-only scope until it has
    /// caught up. Default 1 s.
    pub max_lag: Duration,
    /// How often each replica is checked. Default 250 ms.
    pub check_interval: Duration,
}

impl std::fmt::Debug for ReplicaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaConfig")
            .field(
                "urls",
                &self.urls.iter().map(|u| redact(u)).collect::<Vec<_>>(),
            )
            .field("max_lag", &self.max_lag)
            .field("check_interval", &self.check_interval)
            .finish()
    }
}

impl ReplicaConfig {
    /// These replicas, with the default lag bound and check interval.
    #[must_use]
    pub fn new<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> Self {
        Self {
            urls: urls.into_iter().map(Into::into).collect(),
            max_lag: Duration::from_secs(1),
            check_interval: Duration::from_millis(250),
        }
    }

    /// Sets the lag bound.
    #[must_use]
    pub fn max_lag(mut self, max_lag: Duration) -> Self {
        self.max_lag = max_lag;
        self
    }

    /// Sets the check interval.
    #[must_use]
    pub fn check_interval(mut self, interval: Duration) -> Self {
        self.check_interval = interval;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`SessionError::Config`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        if self.check_interval < Duration::from_millis(10)
            || self.check_interval > Duration::from_secs(60)
        {
            return Err(SessionError::config(
                "replicas.check_interval",
                "must be between 10ms and 60s",
            ));
        }
        if self.max_lag < 2 * self.check_interval {
            return Err(SessionError::config(
                "replicas.max_lag",
                "must be at least twice the check interval (a replica keeping up is measured one sample behind)",
            ));
        }
        Ok(())
    }
}

/// What the last check found of one replica, from [`crate::PgProvider::replica_states`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaState {
    /// The replica's URL without its password.
    pub url: String,
    /// Whether read-only scopes go to it.
    pub healthy: bool,
    /// How far behind the primary it was (`None`: unknown: not answering, or behind every sample).
    pub lag: Option<Duration>,
    /// Read-only scopes it has run.
    pub scopes: u64,
}

#[derive(QueryableByName)]
struct PrimaryRow {
    #[diesel(sql_type = Text)]
    lsn: String,
}

#[derive(QueryableByName)]
struct ReplicaRow {
    #[diesel(sql_type = Bool)]
    recovery: bool,
    #[diesel(sql_type = Nullable<Text>)]
    lsn: Option<String>,
}

/// `X/Y` (two hex words) as one number.
fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

/// A URL as reports may show it: scheme, host and path only. The user and password, and the
/// query string (which may carry `password=`), are dropped; a key=value connection string shows
/// as such. Everything up to the last `@` goes first, before the query and fragment are cut: a
/// password may hold an unencoded `?`, `/` or `#`, which would otherwise end the authority early
/// and leave part of it shown (an `@` later in the query hides the host too, never a secret).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(connection string)".to_owned();
    };
    let rest = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    format!("{scheme}://{host}/{path}")
}

impl DieselProvider<AsyncPgConnection> {
    /// [`DieselProvider::connect`] with read replicas: read-only scopes go to a healthy replica
    /// (see the module's rules), the rest to the primary at `url`. The replicas are checked once
    /// before this returns, so routing starts at once; one that does not answer yet is used once
    /// a later check finds it well.
    ///
    /// # Errors
    /// [`SessionError::Config`] for invalid settings; `Unavailable` or `Timeout` if the primary
    /// cannot be reached.
    pub async fn connect_with_replicas(
        url: &str,
        config: PoolConfig,
        replicas: ReplicaConfig,
    ) -> Result<Self> {
        replicas.validate()?;
        let mut provider = Self::connect(url, config).await?;
        let suspect = Arc::new(session_core::SuspectConnections::new());
        let list = replicas
            .urls
            .iter()
            .map(|replica_url| Replica {
                shown: redact(replica_url),
                pool: std::sync::RwLock::new(Some(Self::build_pool(
                    replica_url,
                    provider.config(),
                    CheckoutCheck::Ping,
                    &suspect,
                ))),
                healthy: std::sync::atomic::AtomicBool::new(false),
                lag_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
                scopes: std::sync::atomic::AtomicU64::new(0),
            })
            .collect();
        let set = Arc::new(ReplicaSet::new(list, replicas.check_interval));
        let mut monitor = Monitor {
            primary_url: url.to_owned(),
            primary: None,
            replicas: Arc::downgrade(&set),
            connections: replicas.urls.iter().map(|_| None).collect(),
            urls: replicas.urls.clone(),
            samples: VecDeque::new(),
            max_lag: replicas.max_lag,
            timeout: replicas
                .check_interval
                .max(Duration::from_millis(100))
                .min(provider.config().checkout_timeout),
        };
        monitor.check().await;
        let interval = replicas.check_interval;
        let handle = tokio::spawn(async move {
            // Ends when the provider is dropped without `close()`: the monitor holds the
            // replicas weakly.
            while monitor.replicas.strong_count() > 0 {
                tokio::time::sleep(interval).await;
                monitor.check().await;
            }
        });
        *set.monitor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle.abort_handle());
        provider.replicas = set;
        Ok(provider)
    }

    /// What the last check found of each replica, in the order configured.
    #[must_use]
    pub fn replica_states(&self) -> Vec<ReplicaState> {
        self.replicas
            .list
            .iter()
            .map(|r| {
                let lag = r.lag_ms.load(Ordering::Acquire);
                ReplicaState {
                    url: r.shown.clone(),
                    healthy: r.healthy.load(Ordering::Acquire),
                    lag: (lag != u64::MAX).then(|| Duration::from_millis(lag)),
                    scopes: r.scopes.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Read-only scopes that found no healthy replica and ran on the primary.
    #[must_use]
    pub fn read_only_scopes_on_primary(&self) -> u64 {
        self.replicas.fell_back.load(Ordering::Relaxed)
    }
}

/// The replicas' checker: samples of the primary's WAL position, and each replica's replay
/// position judged against them. It holds a connection of its own to each server rather than
/// taking pooled ones: a pool whose server died makes a checkout wait out its whole time-out
/// (bb8 retries the refused connects), where a direct connect is refused at once.
struct Monitor {
    primary_url: String,
    primary: Option<AsyncPgConnection>,
    replicas: std::sync::Weak<ReplicaSet<AsyncPgConnection>>,
    urls: Vec<String>,
    connections: Vec<Option<AsyncPgConnection>>,
    /// (when, the primary's WAL position then), oldest first, spanning a little over `max_lag`.
    samples: VecDeque<(Instant, u64)>,
    max_lag: Duration,
    /// How long one check of one server may take.
    timeout: Duration,
}

/// Runs `query` on the connection in `slot` (opened first if there is none) within `timeout`;
/// on any failure the connection is dropped, to be opened afresh next time.
async fn checked<T>(
    slot: &mut Option<AsyncPgConnection>,
    url: &str,
    timeout: Duration,
    query: &'static str,
) -> Option<T>
where
    T: QueryableByName<diesel::pg::Pg> + Send + 'static,
{
    use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
    let answer = tokio::time::timeout(timeout, async {
        if slot.is_none() {
            *slot = Some(AsyncPgConnection::establish(url).await.ok()?);
        }
        let conn = slot.as_mut()?;
        diesel::sql_query(query).get_result::<T>(conn).await.ok()
    })
    .await
    .ok()
    .flatten();
    if answer.is_none() {
        *slot = None;
    }
    answer
}

impl Monitor {
    async fn check(&mut self) {
        // Timed before the query: the position is at least that recent. The write position, not
        // the insert one: on an idle primary the insert position can stand past a page header the
        // replica never replays, so a caught-up replica would look ever later. (With
        // `synchronous_commit = off` a commit can be visible before it is written: the lag then
        // reads low by up to the WAL writer's delay.)
        let asked = Instant::now();
        let sampled: Option<PrimaryRow> = checked(
            &mut self.primary,
            &self.primary_url,
            self.timeout,
            "SELECT pg_current_wal_lsn()::text AS lsn",
        )
        .await;
        let now = Instant::now();
        if let Some(lsn) = sampled.and_then(|row| parse_lsn(&row.lsn)) {
            self.samples.push_back((asked, lsn));
        }
        // Kept: the newest sample at least `max_lag` old, and all after it.
        while self.samples.len() > 1
            && self
                .samples
                .get(1)
                .is_some_and(|(at, _)| now.duration_since(*at) >= self.max_lag)
        {
            self.samples.pop_front();
        }
        let Some(replicas) = self.replicas.upgrade() else {
            return;
        };
        for i in 0..self.urls.len() {
            let lag = self.lag_of(i).await;
            let replica = &replicas.list[i];
            replica.lag_ms.store(
                lag.map_or(u64::MAX, |l| {
                    u64::try_from(l.as_millis()).unwrap_or(u64::MAX - 1)
                }),
                Ordering::Release,
            );
            let healthy = lag.is_some_and(|lag| lag <= self.max_lag);
            let was = replica.healthy.swap(healthy, Ordering::AcqRel);
            if was != healthy {
                tracing::info!(replica = %replica.shown, healthy, lag_ms = lag.map(|l| l.as_millis()), "replica health changed");
            }
        }
    }

    /// How far replica `i` is behind: the age of the newest primary sample it has replayed.
    async fn lag_of(&mut self, i: usize) -> Option<Duration> {
        let row: ReplicaRow = checked(
            &mut self.connections[i],
            &self.urls[i],
            self.timeout,
            "SELECT pg_is_in_recovery() AS recovery, pg_last_wal_replay_lsn()::text AS lsn",
        )
        .await?;
        if !row.recovery {
            // Promoted: it takes writes of its own now, not this primary's.
            return None;
        }
        let replayed = parse_lsn(row.lsn.as_deref()?)?;
        let now = Instant::now();
        self.samples
            .iter()
            .rev()
            .find(|(_, lsn)| *lsn <= replayed)
            .map(|(at, _)| now.duration_since(*at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_and_urls() {
        assert_eq!(parse_lsn("0/3000060"), Some(0x300_0060));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("nonsense"), None);
        assert_eq!(
            redact("postgres://app:secret@db:5432/x"),
            "postgres://db:5432/x"
        );
        assert_eq!(
            redact("postgres://app:p@ss@db/x?password=s"),
            "postgres://db/x"
        );
        assert_eq!(
            redact("postgresql:///x?host=/sock&password=s"),
            "postgresql:///x"
        );
        assert_eq!(redact("host=db password=s"), "(connection string)");
        // Unencoded `@ : % / ? #` in a password never show, whole or in part.
        for password in ["p?ss", "p/ss", "p#ss", "p@ss:w%rd", "a?b/c#d@e"] {
            let url = format!("postgres://app:{password}@db:5432/x?sslmode=disable");
            let shown = redact(&url);
            assert_eq!(shown, "postgres://db:5432/x", "{url}");
            assert!(!shown.contains("app") && !shown.contains("ss"), "{shown}");
        }
        let shown = format!("{:?}", ReplicaConfig::new(["postgres://a:secret@r/x"]));
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn the_lag_bound_is_at_least_two_intervals() {
        assert!(ReplicaConfig::new(["postgres://r"]).validate().is_ok());
        let config = ReplicaConfig::new(["postgres://r"])
            .max_lag(Duration::from_millis(150))
            .check_interval(Duration::from_millis(100));
        assert!(config.validate().is_err());
    }
}
