//! The whole conformance suite on a real Redis Cluster of this test binary's own (3 masters and
//! 3 replicas of `redis-server` on free loopback ports, started once and shared by the cases,
//! each case under its own random key prefix, deleted when the case ends).

use std::sync::Arc;

use session_redis::{RedisConfig, RedisStore};
use session_testkit::Opened;
use session_testkit::servers::{RedisCluster, unique_prefix};

session_testkit::conformance_tests!(|policy| async move {
    let cluster = RedisCluster::shared();
    let prefix = unique_prefix("conf");
    let config = RedisConfig::new(cluster.url()).key_prefix(prefix.clone());
    let store = RedisStore::connect(config, policy)
        .await
        .expect("Redis Cluster store");
    Opened::with_cleanup(Arc::new(store), move || cluster.delete_prefix(&prefix))
});
