//! The whole conformance suite on the PostgreSQL store, each case in a schema of its own that is
//! dropped when the case ends.

use std::sync::Arc;

use session_core::PoolConfig;
use session_diesel::PgSessionStore;
use session_testkit::Opened;
use session_testkit::servers::PgSchema;

session_testkit::conformance_tests!(|policy| async move {
    let schema = PgSchema::create("conf");
    let store = PgSessionStore::connect(&schema.url(), PoolConfig::default(), policy)
        .await
        .expect("PostgreSQL store");
    Opened::with_cleanup(Arc::new(store), move || drop(schema))
});
