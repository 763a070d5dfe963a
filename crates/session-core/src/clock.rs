//! An injectable clock, so expiry can be tested without sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// A clock shared by a policy and everything built from it.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to; clones share one time.
#[derive(Clone)]
pub struct ManualClock {
    millis_since_epoch: Arc<AtomicU64>,
}

impl ManualClock {
    /// A manual clock set to the given time.
    #[must_use]
    pub fn at(time: SystemTime) -> Self {
        Self {
            millis_since_epoch: Arc::new(AtomicU64::new(millis_since_epoch(time))),
        }
    }

    /// A manual clock set to the real time now. Backends with native expiry (Redis TTLs, SQL `now()`)
    /// need instants near the real time, so tests start here and move forward.
    #[must_use]
    pub fn starting_now() -> Self {
        Self::at(SystemTime::now())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.millis_since_epoch.fetch_add(ms, Ordering::SeqCst);
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.millis_since_epoch.load(Ordering::SeqCst))
    }
}

/// Milliseconds since the Unix epoch, saturating; times before 1970 map to 0.
#[must_use]
pub fn millis_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `ms` milliseconds after the Unix epoch.
#[must_use]
pub fn from_millis_since_epoch(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced_and_clones_share_time() {
        let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(100));
        let other = clock.clone();
        assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_secs(100));
        other.advance(Duration::from_secs(5));
        assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_secs(105));
    }
}
