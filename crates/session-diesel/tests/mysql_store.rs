//! The whole conformance suite on the MySQL/MariaDB store, each case in a database of its own
//! that is dropped when the case ends.

use std::sync::Arc;

use session_core::PoolConfig;
use session_diesel::MysqlSessionStore;
use session_testkit::Opened;
use session_testkit::servers::MysqlDatabase;

session_testkit::conformance_tests!(|policy| async move {
    let database = MysqlDatabase::create("conf");
    let store = MysqlSessionStore::connect(&database.url(), PoolConfig::default(), policy)
        .await
        .expect("MySQL store");
    Opened::with_cleanup(Arc::new(store), move || drop(database))
});
