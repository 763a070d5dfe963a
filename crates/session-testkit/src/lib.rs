//! Conformance cases every [`UserSessionStore`] backend runs.
//!
//! Each case is a plain `pub async fn case(factory: &dyn StoreFactory)` in [`cases`]; a backend's
//! test file runs them all with one macro call:
//!
//! ```text
//! session_testkit::conformance_tests!(|policy| async move {
//!     session_testkit::Opened::new(Arc::new(MemoryStore::new(policy).unwrap()))
//! });
//! ```
//!
//! The factory receives the policy a case needs (with a [`ManualClock`] injected, so expiry needs no
//! sleeping) and returns a fresh, isolated store (its own key prefix, schema or database).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)] // test support: a panic is the failure report

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use session_core::{ManualClock, SessionPolicy, StorageDump, UserSessionStore};

pub mod cases;
pub mod servers;

/// A store the conformance suite can run on: the contract plus a raw view of what it keeps.
pub trait TestStore: UserSessionStore + StorageDump {}
impl<T: UserSessionStore + StorageDump> TestStore for T {}

/// A shared [`TestStore`], what a factory returns.
pub type SharedTestStore = Arc<dyn TestStore>;

/// A store a factory opened, and how to remove everything it wrote once the case ends.
pub struct Opened {
    store: SharedTestStore,
    cleanup: Option<Box<dyn FnOnce() + Send>>,
}

impl Opened {
    /// A store that needs no cleanup (it lives in memory).
    pub fn new(store: SharedTestStore) -> Self {
        Self {
            store,
            cleanup: None,
        }
    }

    /// A store whose data `cleanup` removes (e.g. deleting a key prefix or dropping a schema). It runs
    /// when the case ends, also when the case panics; it must not need the async runtime.
    pub fn with_cleanup(store: SharedTestStore, cleanup: impl FnOnce() + Send + 'static) -> Self {
        Self {
            store,
            cleanup: Some(Box::new(cleanup)),
        }
    }
}

/// Opens a fresh, isolated store enforcing the given policy.
#[async_trait]
pub trait StoreFactory: Send + Sync {
    /// Opens the store.
    async fn open(&self, policy: SessionPolicy) -> Opened;
}

#[async_trait]
impl<F, Fut> StoreFactory for F
where
    F: Fn(SessionPolicy) -> Fut + Send + Sync,
    Fut: Future<Output = Opened> + Send,
{
    async fn open(&self, policy: SessionPolicy) -> Opened {
        self(policy).await
    }
}

/// A store under test and the clock its policy reads. Runs the store's cleanup when dropped.
pub struct Fixture {
    /// The store.
    pub store: SharedTestStore,
    /// Its clock; advance it to expire sessions.
    pub clock: ManualClock,
    cleanup: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            cleanup();
        }
    }
}

impl Fixture {
    /// Opens a store with the default policy, adjusted by `tweak`, on a manual clock set to now.
    pub async fn open(factory: &dyn StoreFactory, tweak: impl FnOnce(&mut SessionPolicy)) -> Self {
        let clock = ManualClock::starting_now();
        let mut policy = SessionPolicy::default().with_clock(clock.clone());
        tweak(&mut policy);
        policy.validate().unwrap();
        let opened = factory.open(policy).await;
        Self {
            store: opened.store,
            clock,
            cleanup: opened.cleanup,
        }
    }

    /// Another fresh, isolated store from `factory` with this fixture's policy and clock, e.g. the
    /// target of a copy.
    pub async fn open_beside(&self, factory: &dyn StoreFactory) -> Self {
        let opened = factory.open(self.store().policy().clone()).await;
        Self {
            store: opened.store,
            clock: self.clock.clone(),
            cleanup: opened.cleanup,
        }
    }

    /// The store as the contract trait.
    pub fn store(&self) -> &dyn UserSessionStore {
        &*self.store
    }

    /// Everything the store keeps, as one string.
    pub async fn dump(&self) -> String {
        self.store.dump_raw().await.unwrap().join("\n")
    }
}

/// Opens the inner factory's store inside the layer stack `SessionManager` serves
/// ([`session_core::stacked`]), so the suite tests what is served, not only the bare backend.
pub struct StackedFactory<F>(pub F);

#[async_trait]
impl<F: StoreFactory> StoreFactory for StackedFactory<F> {
    async fn open(&self, policy: SessionPolicy) -> Opened {
        let opened = self.0.open(policy).await;
        let store: SharedTestStore = Arc::new(session_core::stacked(
            opened.store,
            session_core::RetryPolicy::default(),
        ));
        Opened {
            store,
            cleanup: opened.cleanup,
        }
    }
}

/// Expands to two modules, `bare` and `stacked`, each with one `#[tokio::test]` per conformance
/// case: `bare` calls every case with `$factory`'s store, `stacked` with the same store inside the
/// manager's layer stack ([`StackedFactory`]). The calling crate needs `tokio` (with `macros` and
/// `rt-multi-thread`) as a dev-dependency.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        mod bare {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_tests!(@all $factory);
        }
        mod stacked {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_tests!(@all $crate::StackedFactory($factory));
        }
    };
    (@all $factory:expr) => {
        $crate::conformance_tests!(@cases $factory;
            round_trip_every_field,
            unissued_token_is_never_adopted,
            malformed_and_oversized_tokens,
            idle_expiry,
            absolute_expiry_caps_touch,
            remember_me_uses_longer_timeouts,
            touch_is_throttled,
            update_is_compare_and_set,
            update_validates_and_keeps_user_and_expiry,
            concurrent_increments_lose_nothing,
            rotate_kills_old_token_and_keeps_data,
            concurrent_rotations_issue_one_token,
            delete_and_delete_by_handle,
            list_and_delete_by_user_except,
            per_user_cap_evicts_oldest,
            purge_expired_removes_only_expired,
            oversized_attributes_are_rejected,
            raw_token_is_stored_nowhere,
            health_answers,
            update_that_changes_root_rotates_the_token,
            update_with_retries_conflicts_and_stores_typed_values,
            close_is_idempotent_and_later_calls_are_closed,
            per_user_cap_holds_under_concurrent_creates,
            scan_walks_every_live_session_in_bounded_pages,
            import_keeps_the_session_and_never_overwrites,
            tombstone_ends_a_session_and_refuses_its_copies,
            client_metadata_is_kept_and_reauthentication_rotates,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                $crate::cases::$case(&factory).await;
            }
        )*
    };
}
