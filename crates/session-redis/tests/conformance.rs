//! The whole conformance suite on the shared Redis (127.0.0.1:6379, or `REDIS_URL`), each case
//! under its own random key prefix, deleted when the case ends.

use std::sync::Arc;

use session_redis::{RedisConfig, RedisStore};
use session_testkit::Opened;
use session_testkit::servers::{redis_delete_prefix, redis_url, require_redis, unique_prefix};

session_testkit::conformance_tests!(|policy| async move {
    let url = redis_url();
    require_redis(&url);
    let prefix = unique_prefix("conf");
    let config = RedisConfig::new(url.clone()).key_prefix(prefix.clone());
    let store = RedisStore::connect(config, policy)
        .await
        .expect("Redis store");
    Opened::with_cleanup(Arc::new(store), move || redis_delete_prefix(&url, &prefix))
});
