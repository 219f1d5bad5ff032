//! The embedded waiting room at scale: a million buyers join one sale's line, then look up
//! their places; prints joins/s, position look-ups/s, and bytes held per queued buyer (from the
//! process's resident memory, not an estimate).
//!
//! `cargo run --release -p stampede-engine --example queue_scale [-- BUYERS]`

use std::time::Instant;

use stampede_app::ports::WaitingRoom;
use stampede_core::{SaleId, UserId};
use stampede_engine::MemoryRoom;

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let buyers: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let users: Vec<UserId> = (0..buyers)
        .map(|i| UserId::generate(1_800_000_000_000 + i as i64, u128::from(i) * 7919))
        .collect();
    let devices: Vec<String> = (0..buyers).map(|i| format!("device-{i}")).collect();
    let room = MemoryRoom::new();
    let sale = SaleId::generate(1, 1);
    let _ = room.place_drawn(&sale, &[]).await;
    let before = resident_bytes();

    let started = Instant::now();
    for (u, d) in users.iter().zip(&devices) {
        if !matches!(room.join(&sale, u, d, 0).await, Ok(Ok(_))) {
            eprintln!("join refused");
            std::process::exit(1);
        }
    }
    let join_secs = started.elapsed().as_secs_f64();
    let after = resident_bytes();

    let started = Instant::now();
    let mut checksum = 0u64;
    let mut i: u64 = 12345;
    for _ in 0..buyers {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let u = &users[(i >> 33) as usize % users.len()];
        if let Ok(Some(v)) = room.view(&sale, u).await {
            checksum = checksum.wrapping_add(v.position);
        }
    }
    let view_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let admitted = room
        .admit(&sale, Some(1000), 1, 120_000, 0, 1000)
        .await
        .unwrap_or(0);
    let admit_ms = started.elapsed().as_secs_f64() * 1000.0;

    println!("buyers in line:         {buyers}");
    println!("joins/s:                {:.0}", buyers as f64 / join_secs);
    println!(
        "position look-ups/s:    {:.0} (random buyers; checksum {checksum})",
        buyers as f64 / view_secs
    );
    println!("admit 1,000 at the head: {admit_ms:.2} ms ({admitted} admitted)");
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "bytes per queued buyer: {:.0} (resident memory growth)",
            a.saturating_sub(b) as f64 / buyers as f64
        );
    }
}
