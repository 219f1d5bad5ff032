//! Exactly-once money across kill -9: a server killed while checkouts are between the
//! gateway's authorization and the judge's commit (or between the commit and the capture)
//! leaves no orphan charge once it is back. Every authorization ends captured for a confirmed
//! order or voided for one that did not sell, none is captured twice, and the units sold
//! match the money captured. The sandbox's ledger outlives the process (a journal in the data
//! dir), as a real provider's would, and is what this test reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{assert_invariant, poll_until, Rng, TestServer};
use serde_json::Value;
use stampede_payments::{read_journal, Charge, ChargeState};

const BUYERS: usize = 24;
const ROUNDS: usize = 3;

/// Every buyer's orders, by order id.
async fn all_orders(server: &TestServer, tokens: &[String]) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    for token in tokens {
        for o in server.orders(token).await {
            out.insert(o["order_id"].as_str().unwrap().to_string(), o);
        }
    }
    out
}

in_both_modes! {
    async fn kill9_between_charge_and_commit_leaves_no_orphan_charge(mode) {
        // A checkout whose answer died with the process is resolved one second later (no
        // checkout on a restarted node can still be waiting for it), and the money
        // reconciliation runs often.
        let mut server = TestServer::start_with_in(
            mode.clone(),
            &[
                ("STAMPEDE_PAYMENT_ANSWER_TIMEOUT_SECS", "1"),
                ("STAMPEDE_PAYMENT_RECONCILE_INTERVAL_MS", "200"),
            ],
            None,
        )
        .await;
        let admin = server.admin_token().await;
        let sale = server
            .create_sale(&admin, (BUYERS * ROUNDS) as u64, ROUNDS as u64, 600)
            .await;
        let tokens = server.buyers(BUYERS, 8).await;
        let journal = server.data_dir().join("sandbox-ledger.jsonl");
        let mut rng = Rng::seeded();
        let mut in_limbo_at_kill = 0;

        for round in 1..=ROUNDS {
            let mut holds = Vec::new();
            for token in &tokens {
                holds.push(server.hold(token, &sale, 1).await);
            }
            // Every buyer checks out at once; the server dies while they are in flight.
            let mut tasks = Vec::new();
            for (token, hold) in tokens.iter().zip(&holds) {
                let (api, token, hold) = (server.api(), token.clone(), hold.clone());
                tasks.push(tokio::spawn(async move {
                    let rb = api
                        .request(reqwest::Method::POST, "/api/v1/orders", Some(&token))
                        .json(&common::order_body(&[&hold], "tok_ok"));
                    api.try_send(rb).await.ok().map(|r| r.status)
                }));
            }
            tokio::time::sleep(Duration::from_millis(rng.range(5, 60))).await;
            server.kill9();
            let mut answered = 0;
            for t in tasks {
                if t.await.expect("checkout task") == Some(201) {
                    answered += 1;
                }
            }
            let charges = read_journal(&journal).expect("the sandbox's ledger");
            let authorized = charges
                .iter()
                .filter(|c| c.state == ChargeState::Authorized)
                .count();
            in_limbo_at_kill += authorized;
            eprintln!(
                "round {round}: {answered} checkouts answered before the kill, \
                 {authorized} authorizations neither captured nor voided at the kill"
            );

            server.restart().await;
            // After the restart (and at most the answer timeout plus a reconciliation),
            // nothing is left authorized.
            let (charges, orders): (Vec<Charge>, HashMap<String, Value>) = poll_until(
                "every authorization captured or voided and no order pending after the restart",
                Duration::from_secs(20),
                Duration::from_millis(200),
                || async {
                    let charges = read_journal(&journal).expect("the sandbox's ledger");
                    let orders = all_orders(&server, &tokens).await;
                    let settled = charges.iter().all(|c| c.state != ChargeState::Authorized)
                        && orders.values().all(|o| o["status"] != "pending_payment");
                    settled.then_some((charges, orders))
                },
            )
            .await;
            let mut captured = 0;
            for c in &charges {
                assert!(c.captures <= 1, "charge {} captured {} times", c.reference, c.captures);
                let order = orders
                    .values()
                    .find(|o| o["payment"]["reference"].as_str() == Some(c.reference.as_str()));
                let status = order.and_then(|o| o["status"].as_str()).unwrap_or("none");
                match c.state {
                    ChargeState::Captured => {
                        captured += 1;
                        assert_eq!(status, "confirmed", "captured charge {}", c.reference);
                    }
                    ChargeState::Voided => assert!(
                        matches!(status, "payment_failed" | "cancelled" | "none"),
                        "voided charge {} of a {status} order",
                        c.reference
                    ),
                    other => panic!("charge {} left {other:?}", c.reference),
                }
            }
            for (id, o) in &orders {
                assert_ne!(
                    o["status"], "pending_payment",
                    "order {id} is still pending after the restart: {o}"
                );
                if o["status"] == "confirmed" {
                    assert_eq!(o["payment"]["status"], "captured", "{o}");
                }
            }
            let m = server.metrics(&admin, &sale).await;
            assert_invariant(&m);
            assert_eq!(m["sold"].as_i64(), Some(captured), "units sold = charges captured: {m}");
        }
        eprintln!(
            "kill -9 between charge and commit: {ROUNDS} rounds, {in_limbo_at_kill} \
             authorizations caught in limbo by a kill, 0 left after the restarts"
        );
    }
}
