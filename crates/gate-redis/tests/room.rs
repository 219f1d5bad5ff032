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

/// The shared rate limit lets a burst through, then the rate, whichever node asks.
#[tokio::test]
async fn shared_rate_limits_allow_the_burst_then_refuse() {
    use stampede_app::ports::SharedRateLimiter;
    let config = RedisGateConfig {
        url: URL.to_string(),
        namespace: format!("t{}", rand::random::<u32>()),
        timeout: Duration::from_millis(2000),
    };
    let (a, b) = match (
        RedisRoom::connect(config.clone()).await,
        RedisRoom::connect(config).await,
    ) {
        (Ok(a), Ok(b)) => (a.rate_limits(), b.rate_limits()),
        (Err(e), _) | (_, Err(e)) => {
            if std::env::var_os("CI").is_some() {
                panic!("Redis must be reachable in CI: {e}");
            }
            eprintln!("skipped: Redis not reachable at {URL}: {e}");
            return;
        }
    };
    let mut passed = 0;
    let mut last_wait = 0;
    for i in 0..50 {
        let limiter = if i % 2 == 0 { &a } else { &b };
        match limiter.check("user:u1", 5, 10).await.unwrap() {
            Ok(()) => passed += 1,
            Err(ms) => last_wait = ms,
        }
    }
    assert!((10..=11).contains(&passed), "a burst of 10, got {passed}");
    assert!(
        last_wait > 0 && last_wait <= 200,
        "retry within one interval, got {last_wait} ms"
    );
    assert_eq!(
        a.check("user:u2", 5, 10).await.unwrap(),
        Ok(()),
        "another key has its own bucket"
    );
}

/// Admission rounds read the gate's own count, in the same script as the admission.
#[tokio::test]
async fn admission_reads_the_gates_count() {
    use stampede_app::ports::{Gate, GateSeed};
    use stampede_core::{SaleId, UserId};
    use stampede_gate_redis::RedisGate;
    let config = RedisGateConfig {
        url: URL.to_string(),
        namespace: format!("t{}", rand::random::<u32>()),
        timeout: Duration::from_millis(2000),
    };
    let (gate, room) = match (
        RedisGate::connect(config.clone()).await,
        RedisRoom::connect(config).await,
    ) {
        (Ok(g), Ok(r)) => (g, r),
        (Err(e), _) | (_, Err(e)) => {
            if std::env::var_os("CI").is_some() {
                panic!("Redis must be reachable in CI: {e}");
            }
            eprintln!("skipped: Redis not reachable at {URL}: {e}");
            return;
        }
    };
    let sale = SaleId::generate(1, rand::random());
    gate.seed(&GateSeed {
        sale_id: sale.clone(),
        available: 3,
        user_units: vec![],
    })
    .await
    .unwrap();
    room.place_drawn(&sale, &[]).await.unwrap();
    for i in 0..5 {
        let u = UserId::generate(i + 1, rand::random());
        room.join(&sale, &u, "d", 0).await.unwrap().unwrap();
    }
    let now = 1_800_000_000_000;
    assert_eq!(room.admit(&sale, None, 1, 1000, now, 100).await.unwrap(), 3);
    assert_eq!(room.admit(&sale, None, 1, 1000, now, 100).await.unwrap(), 0);
}

/// The Redis room as a durable deployment uses it: guarded, behind the log.
mod durable {
    use super::*;
    use stampede_app::durable_room::DurableRoom;
    use stampede_core::SaleId;
    use stampede_testkit::room_log_conformance::MemoryRoomLog;

    async fn guarded_room() -> Option<Arc<dyn WaitingRoom>> {
        let config = RedisGateConfig {
            url: URL.to_string(),
            namespace: format!("t{}", rand::random::<u32>()),
            timeout: Duration::from_millis(2000),
        };
        match RedisRoom::connect(config).await {
            Ok(room) => Some(Arc::new(room.durable())),
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("Redis must be reachable in CI: {e}")
            }
            Err(e) => {
                eprintln!("skipped: Redis not reachable at {URL}: {e}");
                None
            }
        }
    }

    async fn durable_redis_room() -> Option<Arc<dyn WaitingRoom>> {
        let room = guarded_room().await?;
        Some(DurableRoom::start(room, Arc::new(MemoryRoomLog::default())))
    }

    stampede_testkit::room_conformance_tests!(durable_redis_room);

    /// As a flush would: every key of the sale's room goes (the namespace's other sales and
    /// the machine's other users of Redis are left alone).
    fn flush_sale(
        room: Arc<dyn WaitingRoom>,
        sale: SaleId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn WaitingRoom>> + Send>> {
        Box::pin(async move {
            let client = redis::Client::open(URL).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("stampede:{{*:{sale}}}:*"))
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(!keys.is_empty(), "the sale had keys to lose");
            let _: i64 = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .unwrap();
            room
        })
    }

    stampede_testkit::durable_room_conformance_tests!(guarded_room, flush_sale);
}
