//! Pool hygiene shared by the backends' connection pools.

use std::sync::atomic::{AtomicU32, Ordering};

/// After one pooled connection is found dead, its siblings probably died with it (a server
/// restart, a network cut, `CLIENT KILL`): the next checkouts test their connection first, as many
/// as the pool holds, instead of each failing the operation it was checked out for. Pools that
/// test every checkout anyway do not need it; pools that skip the test to save a round trip do.
#[derive(Debug, Default)]
pub struct SuspectConnections {
    remaining: AtomicU32,
}

impl SuspectConnections {
    /// Nothing suspect yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A connection was found dead: the next `pool_size` checkouts test theirs.
    pub fn raise(&self, pool_size: u32) {
        self.remaining.store(pool_size, Ordering::Relaxed);
    }

    /// Whether this checkout should test its connection; counts it off if so.
    pub fn take(&self) -> bool {
        self.remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raise_tests_as_many_checkouts_as_the_pool_holds() {
        let suspect = SuspectConnections::new();
        assert!(!suspect.take());
        suspect.raise(2);
        assert!(suspect.take());
        assert!(suspect.take());
        assert!(!suspect.take());
    }
}
