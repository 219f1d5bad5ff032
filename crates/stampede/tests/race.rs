//! Many buyers, little stock: nothing is oversold and every loser is told why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{assert_invariant, TestServer};
use tokio::sync::Barrier;

in_both_modes! {
    async fn five_hundred_buyers_race_for_fifty_units(mode) {
        const BUYERS: usize = 500;
        const STOCK: u64 = 50;
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, STOCK, 1, 300).await;

        let tokens = server.buyers(BUYERS, 16).await;
        assert_eq!(tokens.len(), BUYERS);
        assert_eq!(
            tokens.iter().collect::<HashSet<_>>().len(),
            BUYERS,
            "every login must get its own token"
        );

        // Everyone waits at the barrier, then all reserve at once.
        let barrier = Arc::new(Barrier::new(BUYERS));
        let mut tasks = Vec::with_capacity(BUYERS);
        for token in tokens.clone() {
            let api = server.api();
            let sale = sale.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let r = api.reserve(&token, &sale, 1).await;
                (token, r)
            }));
        }
        let mut won = Vec::new();
        let mut sold_out = 0;
        let mut other = Vec::new();
        for t in tasks {
            let (token, r) = t.await.expect("task");
            match r.status {
                201 => {
                    assert_eq!(r.json["sale_id"], sale.as_str(), "hold: {}", r.text);
                    assert_eq!(r.json["quantity"], 1, "hold: {}", r.text);
                    let hold = r.json["hold_id"].as_str().expect("hold_id").to_string();
                    won.push((token, hold));
                }
                409 if r.code() == "sold_out" => {
                    r.expect_problem(409, "sold_out");
                    sold_out += 1;
                }
                _ => other.push(format!("{} {}", r.status, r.text)),
            }
        }
        assert!(
            other.is_empty(),
            "every reserve must be 201 or 409 sold_out; {} others, e.g. {:?}",
            other.len(),
            other.iter().take(5).collect::<Vec<_>>()
        );
        assert_eq!(
            won.len() as u64,
            STOCK,
            "exactly the stock must be reserved"
        );
        assert_eq!(sold_out, BUYERS - STOCK as usize);
        let hold_ids: HashSet<_> = won.iter().map(|(_, h)| h.clone()).collect();
        assert_eq!(hold_ids.len(), won.len(), "hold ids must be distinct");

        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(m["total_stock"], STOCK, "{m}");
        assert_eq!(m["held"], STOCK, "{m}");
        assert_eq!(m["available"], 0, "{m}");
        assert_eq!(m["sold"], 0, "{m}");
        assert_eq!(server.sale(&sale).await["available"], 0);

        // The winners really own their holds.
        for (token, hold) in won.iter().take(10) {
            let cart = server.cart(token).await;
            let items = cart["items"].as_array().expect("cart items");
            assert_eq!(items.len(), 1, "winner's cart: {cart}");
            assert_eq!(items[0]["hold_id"], hold.as_str(), "winner's cart: {cart}");
        }
        // A late buyer still gets a clean sold_out.
        let late = server.buyer().await;
        server
            .reserve(&late, &sale, 1)
            .await
            .expect_problem(409, "sold_out");
    }

    async fn one_buyer_firing_twenty_reserves_gets_exactly_the_limit(mode) {
        const SHOTS: usize = 20;
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 100, 2, 300).await;
        let token = server.buyer().await;

        let barrier = Arc::new(Barrier::new(SHOTS));
        let mut tasks = Vec::new();
        for _ in 0..SHOTS {
            let api = server.api();
            let (sale, token, barrier) = (sale.clone(), token.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                api.reserve(&token, &sale, 1).await
            }));
        }
        let mut created = Vec::new();
        let mut limited = 0;
        for t in tasks {
            let r = t.await.expect("task");
            match r.status {
                201 => created.push(r.json["hold_id"].as_str().expect("hold_id").to_string()),
                _ => {
                    r.expect_problem(422, "limit_exceeded");
                    limited += 1;
                }
            }
        }
        assert_eq!(created.len(), 2, "exactly per_user_limit reserves succeed");
        assert_eq!(limited, SHOTS - 2);

        let cart = server.cart(&token).await;
        let items = cart["items"].as_array().expect("cart items");
        let qty: i64 = items.iter().map(|i| i["quantity"].as_i64().unwrap()).sum();
        assert_eq!(qty, 2, "cart: {cart}");
        let mut in_cart: Vec<_> = items
            .iter()
            .map(|i| i["hold_id"].as_str().unwrap().to_string())
            .collect();
        in_cart.sort();
        created.sort();
        assert_eq!(
            in_cart, created,
            "the cart holds exactly the acknowledged holds"
        );

        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(m["held"], 2, "{m}");
        assert_eq!(m["available"], 98, "{m}");

        // One more is refused as well, and changes nothing.
        server
            .reserve(&token, &sale, 1)
            .await
            .expect_problem(422, "limit_exceeded");
        assert_eq!(server.metrics(&admin, &sale).await["held"], 2);
    }
}

/// The race on the gate's three-master Redis Cluster (`scripts/redis-cluster`).
mod redis_cluster {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn five_hundred_buyers_race_for_fifty_units() {
        if let Some(mode) = super::common::Mode::redis_cluster().await {
            super::five_hundred_buyers_race_for_fifty_units(mode).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_buyer_firing_twenty_reserves_gets_exactly_the_limit() {
        if let Some(mode) = super::common::Mode::redis_cluster().await {
            super::one_buyer_firing_twenty_reserves_gets_exactly_the_limit(mode).await
        }
    }
}
