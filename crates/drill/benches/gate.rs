//! R3: the embedded gate's reserve (`MemoryGate::try_take`, in process, no network) against a
//! bare compare-and-swap loop on one atomic, the floor of any counter. Both take one unit per
//! call from a huge stock (new buyers each time, and one returning buyer); a last figure is the
//! sold-out answer (the 99% case).
//! `cargo bench -p stampede-drill --bench gate`; prints ns per operation, median of 3.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use stampede_app::ports::{Gate, GateSeed};
use stampede_core::{SaleId, UserId};
use stampede_engine::MemoryGate;

const OPS: u64 = 2_000_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn cas_loop() -> f64 {
    let available = AtomicI64::new(i64::MAX / 2);
    let started = Instant::now();
    for _ in 0..OPS {
        let _ = available.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
            (cur >= 1).then_some(cur - 1)
        });
    }
    std::hint::black_box(available.load(Ordering::Relaxed));
    started.elapsed().as_nanos() as f64 / OPS as f64
}

async fn gate(stock: i64) -> f64 {
    let gate = MemoryGate::new();
    let sale = SaleId::generate(1_700_000_000_000, 1);
    gate.rebuild(&[GateSeed {
        sale_id: sale.clone(),
        available: stock,
        user_units: vec![],
    }])
    .await
    .unwrap();
    // Distinct buyers, as in a sale: each buyer's entry is created by its take.
    let users: Vec<UserId> = (0..OPS)
        .map(|i| UserId::generate(1_700_000_000_000, u128::from(i)))
        .collect();
    let started = Instant::now();
    for user in &users {
        std::hint::black_box(gate.try_take(&sale, user, 1, 1).await.unwrap());
    }
    started.elapsed().as_nanos() as f64 / OPS as f64
}

/// One returning buyer with a generous limit: the per-buyer entry exists, so this is the
/// check-and-take itself without a map insertion per call.
async fn gate_returning_buyer() -> f64 {
    let gate = MemoryGate::new();
    let sale = SaleId::generate(1_700_000_000_000, 1);
    gate.rebuild(&[GateSeed {
        sale_id: sale.clone(),
        available: i64::MAX / 2,
        user_units: vec![],
    }])
    .await
    .unwrap();
    let user = UserId::generate(1_700_000_000_000, 7);
    let started = Instant::now();
    for _ in 0..OPS {
        std::hint::black_box(gate.try_take(&sale, &user, 1, u32::MAX).await.unwrap());
    }
    started.elapsed().as_nanos() as f64 / OPS as f64
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut cas = Vec::new();
    let mut take = Vec::new();
    let mut sold_out = Vec::new();
    let mut returning = Vec::new();
    for _ in 0..3 {
        cas.push(cas_loop());
        take.push(rt.block_on(gate(i64::MAX / 2)));
        sold_out.push(rt.block_on(gate(0)));
        returning.push(rt.block_on(gate_returning_buyer()));
    }
    let (cas, take, sold_out) = (median(cas), median(take), median(sold_out));
    let returning = median(returning);
    println!("bare CAS loop            {cas:8.1} ns/op");
    println!("gate reserve (accepted)  {take:8.1} ns/op");
    println!("gate reserve (returning) {returning:8.1} ns/op");
    println!("gate reserve (sold out)  {sold_out:8.1} ns/op");
    println!("R3 gate reserve / CAS    {:8.1}x", take / cas);
}
