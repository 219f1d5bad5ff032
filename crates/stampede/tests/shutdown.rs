//! Graceful shutdown: SIGTERM during a burst of reservations lets the in-flight requests finish
//! and flushes the group commit; every acknowledged hold is there after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_finishes_in_flight_requests_and_loses_nothing() {
    // Each buyer holds up to 200 units here: the hold cap (tested in room_ops.rs) is lifted.
    let mut server = TestServer::start_with(
        &[
            ("STAMPEDE_MAX_OPEN_HOLDS_PER_ACCOUNT", "0"),
            ("STAMPEDE_MAX_OPEN_HOLDS_PER_DEVICE", "0"),
        ],
        None,
    )
    .await;
    let admin = server.admin_token().await;
    let sale = server.create_sale(&admin, 100_000, 1000, 3600).await;
    let buyers = server.buyers(20, 10).await;
    let api = server.api();
    // A viewer watching the sale live: its stream must not hold the shutdown open.
    let viewer = api
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/sales/{sale}/events"),
            None,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(viewer.status(), 200);

    let mut tasks = Vec::new();
    for (i, token) in buyers.iter().enumerate() {
        let (api, token, sale) = (api.clone(), token.clone(), sale.clone());
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for _ in 0..200 {
                let rb = api
                    .request(reqwest::Method::POST, "/api/v1/cart/items", Some(&token))
                    .json(&serde_json::json!({ "sale_id": sale, "quantity": 1 }));
                match api.try_send(rb).await {
                    Ok(r) if r.status == 201 => {
                        acknowledged.push(r.json["hold_id"].as_str().unwrap().to_owned())
                    }
                    Ok(r) if r.status == 503 => break, // shutting down: refused, not lost
                    Ok(r) => panic!("buyer {i}: unexpected {} {}", r.status, r.text),
                    Err(_) => break, // the server stopped listening
                }
            }
            (token, acknowledged)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::block_in_place(|| server.terminate(Duration::from_secs(20)));
    let status = status.expect("the server exits by itself after SIGTERM, live streams or not");
    drop(viewer);
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let total_acknowledged: usize = results.iter().map(|(_, a)| a.len()).sum();
    assert!(
        total_acknowledged > 0,
        "the burst was under way when SIGTERM came"
    );

    server.start_again().await;
    let admin = server.admin_token().await;
    for (token, acknowledged) in &results {
        let cart = server.cart(token).await;
        let held: Vec<&str> = cart["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["hold_id"].as_str().unwrap())
            .collect();
        for id in acknowledged {
            assert!(held.contains(&id.as_str()), "acknowledged hold {id} lost");
        }
    }
    let m = server.metrics(&admin, &sale).await;
    assert_eq!(m["invariant_ok"], true, "{m}");
    assert_eq!(
        m["held"].as_u64().unwrap() as usize,
        total_acknowledged,
        "every committed hold was acknowledged and vice versa: {m}"
    );
}
