//! The Redis waiting room at scale: BUYERS join one sale's line from 64 concurrent clients,
//! then look up their places; prints joins/s, look-ups/s and Redis memory per queued buyer.
//! Runs in its own namespace on the Redis at REDIS_URL (default 127.0.0.1:6379) and deletes
//! its keys afterwards.
//!
//! `cargo run --release -p stampede-gate-redis --example room_scale [-- BUYERS]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use stampede_app::ports::WaitingRoom;
use stampede_core::{SaleId, UserId};
use stampede_gate_redis::{RedisGateConfig, RedisRoom};

async fn used_memory(client: &redis::Client) -> Option<u64> {
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let buyers: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let namespace = format!("scale{}", rand::random::<u32>());
    let room = Arc::new(
        RedisRoom::connect(RedisGateConfig {
            url: url.clone(),
            namespace: namespace.clone(),
            timeout: Duration::from_secs(5),
        })
        .await?,
    );
    let client = redis::Client::open(url.as_str())?;
    let sale = SaleId::generate(1, rand::random());
    room.place_drawn(&sale, &[]).await?;
    let users: Arc<Vec<UserId>> = Arc::new(
        (0..buyers)
            .map(|i| UserId::generate(1_800_000_000_000 + i as i64, u128::from(i) * 7919))
            .collect(),
    );
    let before = used_memory(&client).await;
    let started = Instant::now();
    futures::stream::iter(0..buyers as usize)
        .map(|i| {
            let (room, users, sale) = (room.clone(), users.clone(), sale.clone());
            async move { room.join(&sale, &users[i], &format!("device-{i}"), 0).await }
        })
        .buffer_unordered(64)
        .for_each(|_| async {})
        .await;
    let join_secs = started.elapsed().as_secs_f64();
    let after = used_memory(&client).await;
    let started = Instant::now();
    futures::stream::iter(0..buyers as usize)
        .map(|i| {
            let (room, users, sale) = (room.clone(), users.clone(), sale.clone());
            async move { room.view(&sale, &users[(i * 7919) % users.len()]).await }
        })
        .buffer_unordered(64)
        .for_each(|_| async {})
        .await;
    let view_secs = started.elapsed().as_secs_f64();
    println!("buyers in line:         {buyers}");
    println!("joins/s:                {:.0}", buyers as f64 / join_secs);
    println!("position look-ups/s:    {:.0}", buyers as f64 / view_secs);
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "Redis bytes per buyer:  {:.0}",
            a.saturating_sub(b) as f64 / buyers as f64
        );
    }
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("stampede:{{{namespace}*"))
        .query_async(&mut conn)
        .await?;
    for k in keys {
        let _: i64 = redis::cmd("DEL").arg(k).query_async(&mut conn).await?;
    }
    Ok(())
}
