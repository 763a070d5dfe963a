//! One policy for every backend: expiry, touch throttling, size limits, per-user caps.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::clock::{SharedClock, SystemClock, from_millis_since_epoch, millis_since_epoch};
use crate::error::{Result, SessionError};
use crate::session::UserSession;

/// How long sessions live and how they may grow. Backends only *enforce* the instants this computes.
///
/// Every duration accepts human form in configuration files (`30m`, `12h`, `60s`).
/// All instants are kept to whole milliseconds, the finest grain every backend stores.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SessionPolicy {
    /// A session unused for this long expires. Default `30m`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A session expires this long after sign-in, however active. Default `12h`.
    #[serde(with = "humantime_serde")]
    pub absolute_timeout: Duration,
    /// `touch` writes at most once per this interval; touches in between are reads. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub touch_interval: Duration,
    /// Idle timeout of a "remember me" session. Default `7d`.
    #[serde(with = "humantime_serde")]
    pub remember_me_idle_timeout: Duration,
    /// Absolute timeout of a "remember me" session. Default `30d`.
    #[serde(with = "humantime_serde")]
    pub remember_me_absolute_timeout: Duration,
    /// Largest JSON encoding of a session's attributes, in bytes. Default `4096`.
    pub max_attributes_bytes: usize,
    /// Longest `user_id`, `company_name` or `email`, in bytes. Default `320`.
    pub max_field_bytes: usize,
    /// At most this many live sessions per user; creating one more evicts the oldest. Default: no cap.
    pub max_sessions_per_user: Option<u32>,
    /// The clock expiry is computed from. Not configurable from files; tests inject a manual clock.
    #[serde(skip)]
    pub clock: SharedClock,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30 * 60),
            absolute_timeout: Duration::from_secs(12 * 60 * 60),
            touch_interval: Duration::from_secs(60),
            remember_me_idle_timeout: Duration::from_secs(7 * 24 * 60 * 60),
            remember_me_absolute_timeout: Duration::from_secs(30 * 24 * 60 * 60),
            max_attributes_bytes: 4096,
            max_field_bytes: 320,
            max_sessions_per_user: None,
            clock: std::sync::Arc::new(SystemClock),
        }
    }
}

/// The idle and absolute expiry instants of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry {
    /// When the session expires unless touched.
    pub idle_expires_at: SystemTime,
    /// When the session expires regardless.
    pub absolute_expires_at: SystemTime,
}

impl SessionPolicy {
    /// Checks every setting.
    ///
    /// # Errors
    /// [`SessionError::Config`] naming the first invalid key and the fix.
    pub fn validate(&self) -> Result<()> {
        let positive = |key: &str, d: Duration| {
            if d.as_millis() == 0 {
                Err(SessionError::config(
                    key,
                    "must be at least 1ms (e.g. `30m`)",
                ))
            } else {
                Ok(())
            }
        };
        positive("idle_timeout", self.idle_timeout)?;
        positive("absolute_timeout", self.absolute_timeout)?;
        positive("remember_me_idle_timeout", self.remember_me_idle_timeout)?;
        positive(
            "remember_me_absolute_timeout",
            self.remember_me_absolute_timeout,
        )?;
        if self.idle_timeout > self.absolute_timeout {
            return Err(SessionError::config(
                "idle_timeout",
                format!(
                    "{} exceeds absolute_timeout {}; lower it or raise absolute_timeout",
                    humantime::format_duration(self.idle_timeout),
                    humantime::format_duration(self.absolute_timeout)
                ),
            ));
        }
        if self.remember_me_idle_timeout > self.remember_me_absolute_timeout {
            return Err(SessionError::config(
                "remember_me_idle_timeout",
                "exceeds remember_me_absolute_timeout",
            ));
        }
        if self.touch_interval >= self.idle_timeout {
            return Err(SessionError::config(
                "touch_interval",
                "must be shorter than idle_timeout, or active sessions would expire between writes",
            ));
        }
        if self.max_attributes_bytes == 0 || self.max_attributes_bytes > 1 << 20 {
            return Err(SessionError::config(
                "max_attributes_bytes",
                "must be between 1 and 1048576",
            ));
        }
        if self.max_field_bytes == 0 || self.max_field_bytes > 4096 {
            return Err(SessionError::config(
                "max_field_bytes",
                "must be between 1 and 4096",
            ));
        }
        if self.max_sessions_per_user == Some(0) {
            return Err(SessionError::config(
                "max_sessions_per_user",
                "must be at least 1, or unset for no cap",
            ));
        }
        Ok(())
    }

    /// Replaces the clock (tests inject a [`crate::ManualClock`]).
    #[must_use]
    pub fn with_clock(mut self, clock: impl crate::Clock) -> Self {
        self.clock = std::sync::Arc::new(clock);
        self
    }

    /// The current time, truncated to whole milliseconds.
    #[must_use]
    pub fn now(&self) -> SystemTime {
        from_millis_since_epoch(millis_since_epoch(self.clock.now()))
    }

    /// The idle timeout for a session of the given tier.
    #[must_use]
    pub fn idle_timeout_for(&self, remember_me: bool) -> Duration {
        if remember_me {
            self.remember_me_idle_timeout
        } else {
            self.idle_timeout
        }
    }

    /// Expiry of a session created at `now`.
    #[must_use]
    pub fn initial_expiry(&self, now: SystemTime, remember_me: bool) -> Expiry {
        let absolute = if remember_me {
            self.remember_me_absolute_timeout
        } else {
            self.absolute_timeout
        };
        let absolute_expires_at = now + absolute;
        Expiry {
            idle_expires_at: (now + self.idle_timeout_for(remember_me)).min(absolute_expires_at),
            absolute_expires_at,
        }
    }

    /// True once `session` has expired (idle or absolute) at `now`.
    #[must_use]
    pub fn is_expired(&self, session: &UserSession, now: SystemTime) -> bool {
        now >= session.idle_expires_at || now >= session.absolute_expires_at
    }

    /// Whether a touch at `now` must write (the throttle): only once `touch_interval` has passed
    /// since the last write.
    #[must_use]
    pub fn touch_due(&self, session: &UserSession, now: SystemTime) -> bool {
        now.duration_since(session.last_seen_at)
            .is_ok_and(|since| since >= self.touch_interval)
    }

    /// The new idle expiry after a touch at `now`: slides forward, never past the absolute expiry.
    #[must_use]
    pub fn touched_idle_expiry(&self, session: &UserSession, now: SystemTime) -> SystemTime {
        (now + self.idle_timeout_for(session.remember_me)).min(session.absolute_expires_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values_and_valid() {
        let p = SessionPolicy::default();
        assert_eq!(p.idle_timeout, Duration::from_secs(1800));
        assert_eq!(p.absolute_timeout, Duration::from_secs(43200));
        assert_eq!(p.touch_interval, Duration::from_secs(60));
        p.validate().unwrap();
    }

    #[test]
    fn invalid_settings_name_their_key() {
        type Mutation = Box<dyn Fn(&mut SessionPolicy)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "idle_timeout",
                Box::new(|p| p.idle_timeout = Duration::ZERO),
            ),
            (
                "idle_timeout",
                Box::new(|p| p.idle_timeout = Duration::from_secs(86400)),
            ),
            (
                "touch_interval",
                Box::new(|p| p.touch_interval = Duration::from_secs(3600)),
            ),
            (
                "max_attributes_bytes",
                Box::new(|p| p.max_attributes_bytes = 0),
            ),
            (
                "max_sessions_per_user",
                Box::new(|p| p.max_sessions_per_user = Some(0)),
            ),
        ];
        for (key, mutate) in cases {
            let mut p = SessionPolicy::default();
            mutate(&mut p);
            match p.validate() {
                Err(SessionError::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("expected Config error for {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn parses_human_durations_from_toml_like_json() {
        let p: SessionPolicy =
            serde_json::from_str(r#"{"idle_timeout":"15m","absolute_timeout":"8h"}"#).unwrap();
        assert_eq!(p.idle_timeout, Duration::from_secs(900));
        assert_eq!(p.absolute_timeout, Duration::from_secs(8 * 3600));
        assert_eq!(p.touch_interval, Duration::from_secs(60));
        assert!(serde_json::from_str::<SessionPolicy>(r#"{"idle_timout":"15m"}"#).is_err());
    }

    #[test]
    fn idle_expiry_never_passes_absolute() {
        let p = SessionPolicy {
            idle_timeout: Duration::from_secs(60),
            absolute_timeout: Duration::from_secs(90),
            touch_interval: Duration::from_secs(1),
            ..SessionPolicy::default()
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let e = p.initial_expiry(t0, false);
        assert_eq!(e.idle_expires_at, t0 + Duration::from_secs(60));
        assert_eq!(e.absolute_expires_at, t0 + Duration::from_secs(90));
    }
}
