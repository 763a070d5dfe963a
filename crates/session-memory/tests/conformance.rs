//! The whole conformance suite on the in-memory store.

use std::sync::Arc;

use session_memory::MemoryStore;
use session_testkit::Opened;

session_testkit::conformance_tests!(|policy| async move {
    Opened::new(Arc::new(MemoryStore::new(policy).expect("valid policy")))
});
