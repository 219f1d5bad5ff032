//! The durable waiting room at a million: joins per second and position look-ups (what
//! `GET …/queue/me` asks the room) per second with the line full, bytes per queued buyer, and
//! the time to rebuild every place from the log — embedded (the memory room, its log in
//! SQLite) and cluster (the Redis room, its log in PostgreSQL). Every join goes through the
//! log's group commit and is counted only once its batch has committed. Prints figures;
//! decides nothing.
//!
//! ```sh
//! cargo bench -p stampede-gate-redis --bench room [-- BUYERS]     # default 1,000,000
//! ```
//! `STAMPEDE_BENCH_REDIS` (default `redis://127.0.0.1:6379/`), `STAMPEDE_BENCH_POSTGRES`
//! (default `postgres://postgres@127.0.0.1:5432/test`; a scratch schema, dropped after),
//! `SKIP_CLUSTER=1` for the embedded half only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stampede_app::durable_room::DurableRoom;
use stampede_app::ports::{RoomLog, Store, WaitingRoom};
use stampede_core::{SaleId, UserId};
use stampede_engine::MemoryRoom;
use stampede_gate_redis::{RedisGateConfig, RedisRoom};

/// Buyers joining or looking up at once (each join waits for its batch to commit).
const CONCURRENCY: usize = 512;

fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

struct Figures {
    joins_per_sec: f64,
    lookups_per_sec: f64,
    /// Reading the sale's log (one pass, in pages).
    read: Duration,
    /// Loading the line into the room.
    load: Duration,
}

/// Rebuilds `sale`'s line in `inner` (which lost it) from `node`'s log, timing the two steps
/// the first use after a restart takes.
async fn rebuild(
    node: &DurableRoom,
    inner: &dyn WaitingRoom,
    sale: &SaleId,
) -> (Duration, Duration) {
    let started = Instant::now();
    let snapshot = node.snapshot(sale).await.unwrap();
    let read = started.elapsed();
    let started = Instant::now();
    assert!(inner.restore(sale, &snapshot).await.unwrap());
    (read, started.elapsed())
}

/// `buyers` join `room` from `CONCURRENCY` tasks; then as many look-ups of random buyers.
async fn load(room: Arc<dyn WaitingRoom>, sale: &SaleId, users: &Arc<Vec<UserId>>) -> (f64, f64) {
    let n = users.len();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..CONCURRENCY {
        let (room, sale, users) = (room.clone(), sale.clone(), users.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = k;
            while i < users.len() {
                let joined = room.join(&sale, &users[i], &format!("d{i}"), 0).await;
                assert!(matches!(joined, Ok(Ok(_))), "join {i}: {joined:?}");
                i += CONCURRENCY;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let joins = n as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..CONCURRENCY {
        let (room, sale, users) = (room.clone(), sale.clone(), users.clone());
        tasks.push(tokio::spawn(async move {
            let mut x = (k as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for _ in 0..users.len() / CONCURRENCY {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = &users[(x % users.len() as u64) as usize];
                let v = room.view(&sale, u).await.unwrap().unwrap();
                assert!(v.position > 0);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let lookups = (n / CONCURRENCY * CONCURRENCY) as f64 / started.elapsed().as_secs_f64();
    (joins, lookups)
}

/// The places of every 997th buyer.
async fn sample(room: &dyn WaitingRoom, sale: &SaleId, users: &[UserId]) -> Vec<u64> {
    let mut out = Vec::new();
    for u in users.iter().step_by(997) {
        out.push(room.view(sale, u).await.unwrap().unwrap().position);
    }
    out
}

fn users(n: usize) -> Arc<Vec<UserId>> {
    Arc::new(
        (0..n)
            .map(|i| UserId::generate(1_800_000_000_000 + i as i64, (i as u128) * 7919 + 1))
            .collect(),
    )
}

async fn embedded(n: usize) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stampede.db");
    let store = stampede_store_sqlite::open(&path).await.unwrap();
    store.migrate().await.unwrap();
    let log: Arc<dyn RoomLog> = Arc::new(store.clone());
    let sale = SaleId::generate(1, 42);
    let users = users(n);
    let room = DurableRoom::start(Arc::new(MemoryRoom::new()), log.clone());
    room.place_drawn(&sale, &[]).await.unwrap();
    let before = resident_bytes();
    let (joins, lookups) = load(room.clone(), &sale, &users).await;
    println!("embedded joins_per_sec={joins:.0} lookups_per_sec={lookups:.0}");
    let memory = resident_bytes().saturating_sub(before);
    let file: u64 = ["stampede.db", "stampede.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.path().join(f)).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "embedded bytes_per_queued_buyer memory={} sqlite_log={}",
        memory / n as u64,
        file / n as u64
    );
    let sample = sample(room.as_ref(), &sale, &users).await;
    drop(room);
    // A restart: an empty room over the same log.
    let inner: Arc<dyn WaitingRoom> = Arc::new(MemoryRoom::new());
    let fresh = DurableRoom::start(inner.clone(), log);
    let (read, load) = rebuild(&fresh, inner.as_ref(), &sale).await;
    assert_eq!(
        sample,
        self::sample(fresh.as_ref(), &sale, &users).await,
        "places came back"
    );
    store.close().await;
    Figures {
        joins_per_sec: joins,
        lookups_per_sec: lookups,
        read,
        load,
    }
}

async fn cluster(n: usize) -> Option<Figures> {
    let redis_url = std::env::var("STAMPEDE_BENCH_REDIS")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    let pg_url = std::env::var("STAMPEDE_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("stampede_bench_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&pg_url).await.ok()?;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    let options = sqlx::postgres::PgConnectOptions::from_str(&pg_url)
        .unwrap()
        .options([("search_path", schema.as_str())]);
    let store = stampede_store_postgres::connect_with(options)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let namespace = format!("bench{}", std::process::id());
    let redis_room = RedisRoom::connect(RedisGateConfig {
        url: redis_url.clone(),
        namespace: namespace.clone(),
        timeout: Duration::from_secs(10),
    })
    .await
    .ok()?
    .durable();
    let log: Arc<dyn RoomLog> = Arc::new(store.clone());
    let inner: Arc<dyn WaitingRoom> = Arc::new(redis_room);
    let room = DurableRoom::start(inner.clone(), log);
    let sale = SaleId::generate(1, 43);
    let users = users(n);
    room.place_drawn(&sale, &[]).await.unwrap();
    let (joins, lookups) = load(room.clone(), &sale, &users).await;
    println!("redis joins_per_sec={joins:.0} lookups_per_sec={lookups:.0}");

    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("stampede:{{{namespace}:{sale}}}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut redis_bytes = 0u64;
    for k in &keys {
        let used: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(k)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut conn)
            .await
            .unwrap();
        redis_bytes += used.unwrap_or(0);
    }
    let pg_bytes: i64 = sqlx::query_scalar(&format!(
        "SELECT pg_total_relation_size('{schema}.room_log')"
    ))
    .fetch_one(&admin)
    .await
    .unwrap();
    println!(
        "redis bytes_per_queued_buyer redis={} postgres_log={}",
        redis_bytes / n as u64,
        pg_bytes as u64 / n as u64
    );
    let before = sample(room.as_ref(), &sale, &users).await;
    // Redis comes back empty (UNLINK: the big keys are freed in the background).
    let _: i64 = redis::cmd("UNLINK")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (read, load) = rebuild(&room, inner.as_ref(), &sale).await;
    assert_eq!(
        before,
        sample(room.as_ref(), &sale, &users).await,
        "places came back"
    );

    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("stampede:{{{namespace}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("UNLINK")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    store.close().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
    Some(Figures {
        joins_per_sec: joins,
        lookups_per_sec: lookups,
        read,
        load,
    })
}

fn report(mode: &str, n: usize, f: &Figures) {
    println!(
        "{mode} buyers={n} joins_per_sec={:.0} lookups_per_sec={:.0} rebuild_ms={} \
         (log_read_ms={} room_load_ms={})",
        f.joins_per_sec,
        f.lookups_per_sec,
        (f.read + f.load).as_millis(),
        f.read.as_millis(),
        f.load.as_millis()
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let f = embedded(n).await;
    report("embedded", n, &f);
    if std::env::var_os("SKIP_CLUSTER").is_none() {
        match cluster(n).await {
            Some(f) => report("redis", n, &f),
            None => println!("redis skipped: Redis or PostgreSQL not reachable"),
        }
    }
}
