//! Times the judge alone: batches of reservations straight into the SQLite store, without and
//! with the hold cap (10 per account, 20 per device), each buyer distinct, in the same run.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use stampede_app::ports::{Catalog, Holds};
use std::time::Instant;

use stampede_app::ports::{ReserveRequest, Store};
use stampede_core::*;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = stampede_store_sqlite::open(&dir.path().join("s.db"))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let now = Timestamp(1_800_000_000_000);
    let sale = Sale {
        id: SaleId::generate(now.0, 1),
        name: "s".into(),
        description: String::new(),
        original_price: Money(1000),
        sale_price: Money(100),
        currency: Currency::parse("EUR").unwrap(),
        starts_at: Timestamp(0),
        ends_at: now.plus_secs(86_400),
        per_user_limit: 1000,
        queue_required: false,
        hold_seconds: 3600,
        control: SaleControl::Running,
        stock: StockLevels::fresh(10_000_000),
        product_id: None,
        drop_id: None,
        category: String::new(),
        created_at: now,
        updated_at: now,
    };
    store.insert_sale(&sale).await.unwrap();
    let mut n = 0u128;
    for (capped, batch_size) in [false, true]
        .into_iter()
        .flat_map(|c| [1usize, 16, 64, 256].map(|b| (c, b)))
    {
        let batches = 4000 / batch_size.max(1);
        let started = Instant::now();
        for _ in 0..batches {
            let batch: Vec<ReserveRequest> = (0..batch_size)
                .map(|_| {
                    n += 1;
                    ReserveRequest {
                        hold_id: HoldId::generate(now.0, n),
                        sale_id: sale.id.clone(),
                        user_id: UserId::generate(now.0, n),
                        quantity: 1,
                        now,
                        device_id: capped.then(|| format!("device-{}", n % 5000)),
                        hold_cap: if capped {
                            judge::HoldCap {
                                per_account: 10,
                                per_device: 20,
                            }
                        } else {
                            judge::HoldCap::default()
                        },
                    }
                })
                .collect();
            store.reserve(&batch).await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let holds = (batches * batch_size) as f64;
        println!(
            "cap {:3} batch {batch_size:4}: {:8.0} holds/s, {:6.1} µs/hold, {:6.2} ms/batch",
            if capped { "on" } else { "off" },
            holds / secs,
            secs * 1e6 / holds,
            secs * 1e3 / batches as f64
        );
    }
}
