//! Configuration of the Redis store.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use session_core::{Result, SessionError};

use crate::near_cache::NearCacheConfig;

/// How sessions are laid out in Redis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Layout {
    /// Keys are `{prefix}{tag}:s:<token hash>`, with a per-user index `{prefix}{tag}:u:<user id>`;
    /// no token at rest; Redis Cluster ready. The default.
    #[default]
    Standard,
    /// A session is a hash at the raw session id (no prefix, no hashing) with the fields `user_id`,
    /// `company_name`, `email` and `is_root` (`"Y"`/`"N"`), so a service in another language sharing
    /// the Redis reads and writes the same sessions. Gives up: token at rest (the key *is* the token),
    /// the per-user index (`list_by_user`, `delete_by_user`, `delete_by_handle` and the per-user cap
    /// are unsupported), and Cluster slot placement for `rotate`.
    Compatible,
}

/// Settings of a [`crate::RedisStore`]. Every field has a default; durations accept `500ms`, `2s`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Where Redis is, and which topology it has. Default `redis://127.0.0.1:6379/0`.
    /// - One node: `redis://[user:password@]host[:port][/db]`, `rediss://...` (TLS, with the
    ///   `tls` feature), or `redis+unix:///path/to/socket`.
    /// - Redis Cluster: `redis+cluster://[user:password@]host:port[,host:port...]`, any reachable
    ///   nodes as seeds (the client learns the rest); database 0 only.
    /// - Sentinel: `redis+sentinel://[user:password@]host:port[,host:port...]/<master name>[/db]`,
    ///   the Sentinels' addresses; the credentials are the data nodes' (Sentinels without auth).
    pub url: String,
    /// Prepended to every key (standard layout). `[A-Za-z0-9:._-]`, at most 64 bytes. Default `session:`.
    pub key_prefix: String,
    /// The key layout. Default [`Layout::Standard`].
    pub layout: Layout,
    /// Most pooled connections. Default `16`. On Redis Cluster the store holds one multiplexed
    /// connection per node instead, and this is unused.
    pub pool_max_size: u32,
    /// Idle connections kept open. Default: none.
    pub pool_min_idle: Option<u32>,
    /// Longest wait for a pooled connection (including connecting) before `Timeout`. Default `2s`.
    #[serde(with = "humantime_serde")]
    pub checkout_timeout: Duration,
    /// Longest wait for one reply before `Timeout`; the connection is then discarded. Default `1s`.
    /// On a Cluster, where one connection serves every operation, it is replaced instead once it
    /// has timed out every command, answering none, for two of these plus `checkout_timeout`
    /// after a first time-out (ADR 0032).
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// PING every connection as it is checked out. Default `false`: it costs one extra round trip
    /// per operation (see docs/backends.md for the measurement); broken connections are detected
    /// from their first error instead, after which checkouts ping until the pool is healthy again.
    pub test_on_checkout: bool,
    /// Keep sessions read from Redis in process memory, kept consistent by Redis's invalidation
    /// messages (`CLIENT TRACKING`): `get` and a `touch` not yet due to write answer without a
    /// round trip. Default: off. Standard layout only. See [`NearCacheConfig`] and
    /// docs/backends.md.
    pub near_cache: Option<NearCacheConfig>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".to_owned(),
            key_prefix: "session:".to_owned(),
            layout: Layout::Standard,
            pool_max_size: 16,
            pool_min_idle: None,
            checkout_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(1),
            test_on_checkout: false,
            near_cache: None,
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("layout", &self.layout)
            .field("pool_max_size", &self.pool_max_size)
            .field("pool_min_idle", &self.pool_min_idle)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("test_on_checkout", &self.test_on_checkout)
            .field("near_cache", &self.near_cache)
            .finish()
    }
}

/// The URL with its password (or a lone user name, which Redis URLs may use for one) replaced by
/// `***`, parsed as a URL so that `@`, `:` and `%` inside a password cannot leave part of it
/// behind. A string that does not parse as a URL, or has an `@` after its host, is not shown at
/// all beyond its scheme.
#[must_use]
pub fn redact_url(url: &str) -> String {
    if let Some((scheme @ (CLUSTER_SCHEME | SENTINEL_SCHEME), rest)) = url.split_once("://") {
        // Several hosts are no URL the `url` crate parses: everything up to the last `@` is
        // credentials (hosts and master names hold no `@`), so all of it goes.
        return match rest.rsplit_once('@') {
            Some((_, hosts)) => format!("{scheme}://***@{hosts}"),
            None => url.to_owned(),
        };
    }
    match url::Url::parse(url) {
        // A `/`, `?` or `#` in a password that is not percent-encoded ends the authority early, and
        // the rest of the password, up to its `@`, lands in the path, query or fragment.
        Ok(parsed) if parsed[url::Position::BeforePath..].contains('@') => {
            format!("{}://*** (unparseable)", parsed.scheme())
        }
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Fails only for URLs that cannot have credentials, which then have none.
                let _ = parsed.set_password(Some("***"));
            } else if !parsed.username().is_empty() {
                let _ = parsed.set_username("***");
            }
            // redis-rs also takes credentials from the query of `redis+unix://` URLs.
            if parsed.query().is_some() {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let secret = matches!(k.as_ref(), "pass" | "password" | "user");
                        let v = if secret {
                            "***".to_owned()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        Err(_) => match url.split_once("://") {
            Some((scheme, _))
                if scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
            {
                format!("{scheme}://*** (unparseable)")
            }
            _ => "*** (unparseable)".to_owned(),
        },
    }
}

/// The scheme of a Redis Cluster URL.
const CLUSTER_SCHEME: &str = "redis+cluster";
/// The scheme of a Redis Sentinel URL.
const SENTINEL_SCHEME: &str = "redis+sentinel";

/// What a [`RedisConfig::url`] names: one node, a Cluster or a Sentinel-watched master.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Topology {
    /// One Redis node (a pool of multiplexed connections to it).
    Node(redis::ConnectionInfo),
    /// A Redis Cluster, reached through these seed nodes.
    Cluster {
        /// The nodes to learn the cluster's layout from.
        seeds: Vec<redis::ConnectionInfo>,
    },
    /// A master found through Redis Sentinel (a pool of connections to the current master).
    Sentinel {
        /// The Sentinels' addresses.
        sentinels: Vec<redis::ConnectionInfo>,
        /// The name the Sentinels monitor the master under.
        master_name: String,
        /// Database and credentials for the master.
        node: redis::RedisConnectionInfo,
    },
}

/// `info` without the `CLIENT SETINFO` that redis-rs pipelines at every connect: Redis before 7.2
/// answers it with two `ERR` replies, which count in the server's error statistics (and alert
/// whoever watches them) for every connection the store opens.
fn without_client_setinfo(info: redis::ConnectionInfo) -> redis::ConnectionInfo {
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    info.set_redis_settings(settings)
}

/// The `user:password@` part (empty if none), the `host:port` list and the path after it, of a
/// URL with several hosts (`redis+cluster://`, `redis+sentinel://`).
fn split_hosts(rest: &str) -> (&str, Vec<&str>, &str) {
    let (credentials, after) = match rest.rsplit_once('@') {
        Some((credentials, after)) => (credentials, after),
        None => ("", rest),
    };
    let (hosts, path) = match after.find('/') {
        Some(slash) => (&after[..slash], &after[slash + 1..]),
        None => (after, ""),
    };
    (
        credentials,
        hosts.split(',').map(str::trim).collect(),
        path.trim_end_matches('/'),
    )
}

impl RedisConfig {
    /// A default configuration for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Sets the key prefix.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets the layout.
    #[must_use]
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Sets the pool size.
    #[must_use]
    pub fn pool_max_size(mut self, size: u32) -> Self {
        self.pool_max_size = size;
        self
    }

    /// Sets the checkout timeout.
    #[must_use]
    pub fn checkout_timeout(mut self, timeout: Duration) -> Self {
        self.checkout_timeout = timeout;
        self
    }

    /// Sets the response timeout.
    #[must_use]
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Turns checkout pings on or off.
    #[must_use]
    pub fn test_on_checkout(mut self, on: bool) -> Self {
        self.test_on_checkout = on;
        self
    }

    /// Turns the near cache on with these bounds.
    #[must_use]
    pub fn near_cache(mut self, near_cache: NearCacheConfig) -> Self {
        self.near_cache = Some(near_cache);
        self
    }

    /// Checks every setting and parses the URL.
    ///
    /// # Errors
    /// [`SessionError::Config`] naming the key and the fix.
    pub fn validate(&self) -> Result<Topology> {
        let topology = self.topology()?;
        if matches!(topology, Topology::Cluster { .. }) && self.layout == Layout::Compatible {
            return Err(SessionError::config(
                "layout",
                "the compatible layout keys sessions by their raw id, which spreads one session's keys over Cluster slots; use layout = standard on Redis Cluster",
            ));
        }
        self.validate_settings()?;
        Ok(topology)
    }

    /// Parses the URL.
    fn topology(&self) -> Result<Topology> {
        let url_error = |reason: String| {
            SessionError::config("url", format!("`{}`: {reason}", redact_url(&self.url)))
        };
        let node = |url: &str| {
            redis::IntoConnectionInfo::into_connection_info(url)
                .map(without_client_setinfo)
                .map_err(|e| url_error(e.to_string()))
        };
        let scheme = self.url.split_once("://").map(|(s, _)| s);
        match scheme {
            Some(CLUSTER_SCHEME | SENTINEL_SCHEME) => {
                let rest = &self.url[scheme.map_or(0, str::len) + 3..];
                let (credentials, hosts, path) = split_hosts(rest);
                if hosts.iter().any(|h| h.is_empty()) {
                    return Err(url_error(
                        "expected host:port[,host:port...] after the scheme".to_owned(),
                    ));
                }
                let at = if credentials.is_empty() {
                    String::new()
                } else {
                    format!("{credentials}@")
                };
                if scheme == Some(CLUSTER_SCHEME) {
                    if !matches!(path, "" | "0") {
                        return Err(url_error(
                            "Redis Cluster has database 0 only; drop the path".to_owned(),
                        ));
                    }
                    let seeds = hosts
                        .iter()
                        .map(|host| node(&format!("redis://{at}{host}")))
                        .collect::<Result<_>>()?;
                    return Ok(Topology::Cluster { seeds });
                }
                let (master_name, db) = match path.split_once('/') {
                    Some((name, db)) => (name, db),
                    None => (path, "0"),
                };
                if master_name.is_empty() {
                    return Err(url_error("name the master after the Sentinels: redis+sentinel://host:port,.../mymaster".to_owned()));
                }
                let sentinels = hosts
                    .iter()
                    .map(|host| node(&format!("redis://{host}")))
                    .collect::<Result<_>>()?;
                let master = node(&format!("redis://{at}{}/{db}", hosts[0]))?;
                return Ok(Topology::Sentinel {
                    sentinels,
                    master_name: master_name.to_owned(),
                    node: master.redis_settings().clone(),
                });
            }
            Some("rediss+cluster" | "rediss+sentinel") => {
                return Err(SessionError::config(
                    "url",
                    "TLS to a Redis Cluster or through Sentinel is not supported yet; use redis+cluster:// or redis+sentinel:// on a trusted network, or one node over rediss://",
                ));
            }
            Some("redis" | "unix" | "redis+unix") => {}
            Some("rediss") if cfg!(feature = "tls") => {}
            Some("rediss") => {
                return Err(SessionError::config(
                    "url",
                    "rediss:// needs TLS support: enable the `tls` feature of session-redis (`redis-tls` of session-manager)",
                ));
            }
            _ => {
                return Err(SessionError::config(
                    "url",
                    format!(
                        "`{}` is not a Redis URL; expected redis://host:port/db, rediss://..., redis+cluster://host:port,host:port or redis+sentinel://host:port,host:port/master",
                        redact_url(&self.url)
                    ),
                ));
            }
        }
        node(&self.url).map(Topology::Node)
    }

    /// Checks every setting but the URL.
    fn validate_settings(&self) -> Result<()> {
        if self.layout == Layout::Standard {
            if self.key_prefix.len() > 64
                || !self
                    .key_prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b":._-".contains(&b))
            {
                return Err(SessionError::config(
                    "key_prefix",
                    "use at most 64 characters of [A-Za-z0-9:._-] (braces would break Cluster hash tags)",
                ));
            }
        } else if !self.key_prefix.is_empty()
            && self.key_prefix != RedisConfig::default().key_prefix
        {
            return Err(SessionError::config(
                "key_prefix",
                "the compatible layout keys sessions by the bare session id; leave key_prefix unset",
            ));
        }
        if let Some(near) = &self.near_cache {
            if self.layout != Layout::Standard {
                return Err(SessionError::config(
                    "near_cache",
                    "needs the standard layout (its keys carry the prefix Redis tracks); use layout = standard or leave near_cache unset",
                ));
            }
            if near.max_entries == 0 || near.max_bytes < 64 * 1024 {
                return Err(SessionError::config(
                    "near_cache",
                    "max_entries must be at least 1 and max_bytes at least 65536 (16 shards of 4 KiB: room for a session each)",
                ));
            }
        }
        if self.pool_max_size == 0 {
            return Err(SessionError::config("pool_max_size", "must be at least 1"));
        }
        if self.pool_min_idle.is_some_and(|m| m > self.pool_max_size) {
            return Err(SessionError::config(
                "pool_min_idle",
                "must not exceed pool_max_size",
            ));
        }
        if self.checkout_timeout.is_zero() {
            return Err(SessionError::config(
                "checkout_timeout",
                "must be greater than zero (e.g. `2s`)",
            ));
        }
        if self.response_timeout.is_zero() {
            return Err(SessionError::config(
                "response_timeout",
                "must be greater than zero (e.g. `1s`)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_with_at_colon_and_percent_are_redacted_whole() {
        for (url, secret) in [
            ("redis://user:p@ss@cache.internal:6379/0", "p@ss"),
            ("redis://user:pa:ss@cache.internal:6379/0", "pa:ss"),
            (
                "redis://user:p%40%3Ass%25@cache.internal:6379/0",
                "p%40%3Ass%25",
            ),
            ("redis://:only-password@cache.internal", "only-password"),
            ("rediss://default:s3cr3t@cache.internal:6380", "s3cr3t"),
            ("redis://lone-secret@cache.internal", "lone-secret"),
        ] {
            let shown = redact_url(url);
            assert!(shown.contains("***"), "{url} -> {shown}");
            for part in secret.split(['@', ':', '%']).filter(|p| p.len() > 1) {
                assert!(!shown.contains(part), "{url} -> {shown} shows {part}");
            }
            assert!(shown.contains("cache.internal"), "{url} -> {shown}");
        }
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        let socket = redact_url("redis+unix:///run/redis.sock?db=2&user=app&pass=s3cret");
        assert!(
            !socket.contains("s3cret") && !socket.contains("app") && socket.contains("db=2"),
            "{socket}"
        );
        let garbled = redact_url("redis://user:pw@[not a host");
        assert!(!garbled.contains("pw"), "{garbled}");
    }

    fn key_of(err: SessionError) -> String {
        match err {
            SessionError::Config { key, .. } => key,
            other => panic!("expected Config, got {other:?}"),
        }
    }

    #[test]
    fn defaults_validate_and_parse_database_numbers() {
        RedisConfig::default().validate().unwrap();
        let Topology::Node(info) = RedisConfig::new("redis://127.0.0.1:6380/5")
            .validate()
            .unwrap()
        else {
            panic!("one node expected")
        };
        assert_eq!(info.redis_settings().db(), 5);
    }

    #[test]
    fn cluster_and_sentinel_urls_name_their_nodes() {
        let Topology::Cluster { seeds } =
            RedisConfig::new("redis+cluster://app:s%40cret@10.0.0.1:7000, 10.0.0.2:7001/")
                .validate()
                .unwrap()
        else {
            panic!("a cluster expected")
        };
        assert_eq!(seeds.len(), 2);
        assert_eq!(seeds[1].addr().to_string(), "10.0.0.2:7001");
        assert_eq!(seeds[1].redis_settings().password(), Some("s@cret"));
        assert_eq!(seeds[1].redis_settings().username(), Some("app"));
        let Topology::Sentinel {
            sentinels,
            master_name,
            node,
        } = RedisConfig::new("redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/mymaster/3")
            .validate()
            .unwrap()
        else {
            panic!("a sentinel expected")
        };
        assert_eq!(sentinels.len(), 2);
        assert_eq!(sentinels[0].redis_settings().password(), None);
        assert_eq!(master_name, "mymaster");
        assert_eq!((node.db(), node.password()), (3, Some("pw")));
        for (url, key) in [
            ("redis+cluster://10.0.0.1:7000/2", "url"),
            ("redis+cluster://10.0.0.1:7000,,10.0.0.2:7000", "url"),
            ("redis+cluster://10.0.0.1:notaport", "url"),
            ("redis+sentinel://127.0.0.1:26379", "url"),
            ("redis+sentinel://127.0.0.1:26379/mymaster/x", "url"),
            ("rediss+cluster://10.0.0.1:7000", "url"),
        ] {
            assert_eq!(
                key_of(RedisConfig::new(url).validate().unwrap_err()),
                key,
                "{url}"
            );
        }
        let compat = RedisConfig::new("redis+cluster://10.0.0.1:7000")
            .layout(Layout::Compatible)
            .key_prefix("");
        assert_eq!(key_of(compat.validate().unwrap_err()), "layout");
    }

    #[test]
    fn several_hosts_hide_their_credentials() {
        for url in [
            "redis+cluster://app:p@ss@10.0.0.1:7000,10.0.0.2:7000",
            "redis+sentinel://:p@ss@10.0.0.1:26379,10.0.0.2:26379/mymaster/0",
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains("p@ss") && !shown.contains("ss@"), "{shown}");
            assert!(shown.contains("10.0.0.2"), "{shown}");
        }
        let plain = "redis+cluster://10.0.0.1:7000,10.0.0.2:7000";
        assert_eq!(redact_url(plain), plain);
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(
            key_of(RedisConfig::new("http://x").validate().unwrap_err()),
            "url"
        );
        assert_eq!(
            key_of(
                RedisConfig::new("redis://host:notaport")
                    .validate()
                    .unwrap_err()
            ),
            "url"
        );
        assert_eq!(
            key_of(
                RedisConfig::default()
                    .key_prefix("a{b}")
                    .validate()
                    .unwrap_err()
            ),
            "key_prefix"
        );
        assert_eq!(
            key_of(
                RedisConfig::default()
                    .key_prefix("x".repeat(65))
                    .validate()
                    .unwrap_err()
            ),
            "key_prefix"
        );
        assert_eq!(
            key_of(
                RedisConfig::default()
                    .pool_max_size(0)
                    .validate()
                    .unwrap_err()
            ),
            "pool_max_size"
        );
        assert_eq!(
            key_of(
                RedisConfig::default()
                    .checkout_timeout(Duration::ZERO)
                    .validate()
                    .unwrap_err()
            ),
            "checkout_timeout"
        );
        let compat = RedisConfig::default()
            .layout(Layout::Compatible)
            .key_prefix("app:");
        assert_eq!(key_of(compat.validate().unwrap_err()), "key_prefix");
    }

    #[test]
    fn rediss_without_the_tls_feature_names_the_feature() {
        let result = RedisConfig::new("rediss://127.0.0.1:6380/0").validate();
        if cfg!(feature = "tls") {
            result.unwrap();
        } else {
            let err = result.unwrap_err().to_string();
            assert!(err.contains("`tls` feature"), "{err}");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let cfg = RedisConfig::new("redis://app:s3cret@127.0.0.1:6379/0");
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("app:***@127.0.0.1"));
        assert!(!format!("{:?}", RedisConfig::new("redis://:pw@h/0")).contains("pw@"));
    }

    #[test]
    fn parses_from_json_with_human_durations() {
        let cfg: RedisConfig =
            serde_json::from_str(r#"{"url":"redis://127.0.0.1/1","checkout_timeout":"250ms","layout":"compatible","key_prefix":""}"#)
                .unwrap();
        assert_eq!(cfg.checkout_timeout, Duration::from_millis(250));
        assert_eq!(cfg.layout, Layout::Compatible);
        cfg.validate().unwrap();
    }
}
