//! The Redis waiting room against the shared room conformance suite, on a real Redis
//! (127.0.0.1:6379), each run in its own namespace. Skipped with a message when Redis is not
//! reachable, except under CI, where that fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use stampede_app::ports::WaitingRoom;
use stampede_gate_redis::{RedisGateConfig, RedisRoom};

const URL: &str = "redis://127.0.0.1:6379/";

async fn redis_room() -> Option<Arc<dyn WaitingRoom>> {
    let config = RedisGateConfig {
        url: URL.to_string(),
        namespace: format!("t{}", rand::random::<u32>()),
        timeout: Duration::from_millis(2000),
    };
    match RedisRoom::connect(config).await {
        Ok(room) => Some(Arc::new(room)),
        Err(e) if std::env::var_os("CI").is_some() => panic!("Redis must be reachable in CI: {e}"),
        Err(e) => {
            eprintln!("skipped: Redis not reachable at {URL}: {e}");
            None
        }
    }
}

stampede_testkit::room_conformance_tests!(redis_room);
