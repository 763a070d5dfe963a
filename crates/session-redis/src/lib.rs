//! A Redis [`UserSessionStore`](session_core::UserSessionStore) on a bb8 pool of bb8-redis connections.
//!
//! - One network round trip per operation (`HMGET`, or one `EVALSHA` of a script loaded once).
//! - Expiry enforced by Redis itself (`PEXPIREAT` at the policy's idle expiry), and checked against the
//!   policy clock on every read.
//! - A per-user index (sorted set scored by expiry), trimmed on every write and carrying its own TTL,
//!   so it never outlives the user's sessions.
//! - No token in the keyspace: keys hold the token's SHA-256.
//! - Cluster-ready: a user's keys share one hash tag, so every atomic script touches one slot.
//! - A [`Layout::Compatible`] mode for sharing sessions with a service in another language.
//!
//! ```no_run
//! # async fn demo() -> session_core::Result<()> {
//! use session_core::{NewUserSession, SessionPolicy, UserSessionStore};
//! use session_redis::{RedisConfig, RedisStore};
//! let store = RedisStore::connect(RedisConfig::new("redis://127.0.0.1:6379/0"), SessionPolicy::default()).await?;
//! let issued = store.create(NewUserSession::new("u-1")).await?;
//! assert!(store.get(&issued.token).await?.is_some());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod codec;
mod config;
mod error;
mod near_cache;
mod pool;
mod scripts;
mod store;

pub use codec::FIELDS as SESSION_FIELDS;
pub use config::{Layout, RedisConfig, Topology, redact_url};
pub use near_cache::{NearCacheConfig, NearCacheStats};
pub use store::RedisStore;

/// Not part of the API; for the fuzz targets and property tests.
#[doc(hidden)]
pub mod fuzzing {
    use std::time::SystemTime;

    use redis::Value;
    use session_core::{Result, SessionHandle, SessionPolicy, UserSession};

    use crate::Layout;
    use crate::codec::{Row, decode_session};

    /// What the store makes of an `HMGET <FIELDS>` reply before applying expiry: `None` for an
    /// absent key, else the decoded session or a `Decode` error.
    pub fn decode_reply(
        handle: &SessionHandle,
        reply: Value,
        pttl: Option<i64>,
        now: SystemTime,
        policy: &SessionPolicy,
        layout: Layout,
    ) -> Result<Option<UserSession>> {
        Row::from_reply(handle, reply)?
            .map(|row| decode_session(handle, row, pttl, now, policy, layout))
            .transpose()
    }

    /// The session `update` stored, from the update script's reply after its tag.
    pub fn updated_session(
        handle: &SessionHandle,
        session: &UserSession,
        reply: &[Value],
    ) -> Result<UserSession> {
        crate::codec::updated_session(handle, session, reply)
    }
}

/// The driver crates, re-exported so users name the same versions.
pub use {bb8, bb8_redis, redis};
