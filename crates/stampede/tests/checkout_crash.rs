//! A keyed checkout killed at each of its steps (a crash point aborts the process there, as a
//! kill -9 would), then the server restarted and the request retried with the same
//! `Idempotency-Key`: the buyer gets one order, confirmed, the same one on every retry; the
//! gateway shows one charge for it, captured exactly once; and the stock still adds up.
// A test crate: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{assert_invariant, poll_until, Resp, TestServer};
use stampede_app::crash_points::CRASH_AT_ENV;
use stampede_payments::{read_journal, ChargeState};

/// Every crash point of a checkout, in the order a checkout meets them.
const POINTS: [&str; 5] = [
    "checkout.before_authorize",
    "checkout.after_authorize",
    "checkout.after_commit",
    "checkout.after_capture",
    "checkout.before_respond",
];

/// The retry, until the dead attempt's claim is let go of (at once in embedded mode; after
/// the short lease this test sets in cluster mode).
async fn retry(server: &TestServer, buyer: &str, hold: &str, key: &str) -> Resp {
    poll_until(
        "a retry that is not held off by the dead attempt's claim",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || async {
            let r = server.order(buyer, &[hold], "tok_ok", Some(key)).await;
            (r.status != 409).then_some(r)
        },
    )
    .await
}

in_both_modes! {
    async fn a_checkout_killed_at_any_step_answers_once_on_retry(mode) {
        let lease = [("STAMPEDE_IDEMPOTENCY_LEASE_MS", "300")];
        let mut server = TestServer::start_with_in(mode, &lease, None).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 20, 5, 600).await;
        let journal = server.data_dir().join("sandbox-ledger.jsonl");
        for point in POINTS {
            let buyer = server.buyer().await;
            let hold = server.hold(&buyer, &sale, 2).await;
            let key = format!("key-{point}");

            server.set_env(CRASH_AT_ENV, Some(point));
            server.restart().await;
            let cut = server
                .api()
                .try_send(
                    server
                        .request(reqwest::Method::POST, "/api/v1/orders", Some(&buyer))
                        .header("Idempotency-Key", &key)
                        .json(&common::order_body(&[&hold], "tok_ok")),
                )
                .await;
            assert!(cut.is_err(), "{point}: the process answered instead of dying: {cut:?}");
            let exit = server.wait_exit(Duration::from_secs(10));
            assert!(
                exit.is_some_and(|s| !s.success()),
                "{point}: the process did not die at its crash point ({exit:?})"
            );

            server.set_env(CRASH_AT_ENV, None);
            server.restart().await;
            let first = retry(&server, &buyer, &hold, &key).await;
            let order = first.expect(201).clone();
            assert_eq!(order["status"], "confirmed", "{point}: {}", first.text);
            let again = server.order(&buyer, &[&hold], "tok_ok", Some(&key)).await;
            assert_eq!(again.expect(201)["order_id"], order["order_id"], "{point}");
            assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"), "{point}");
            let orders = server.orders(&buyer).await;
            assert_eq!(orders.len(), 1, "{point}: one order for one checkout: {orders:?}");
            assert_eq!(orders[0]["order_id"], order["order_id"], "{point}");

            // The gateway: one charge for the order, captured exactly once (a capture the
            // crash cut short is finished by the money reconciliation at start).
            let order_id = order["order_id"].as_str().unwrap().to_owned();
            let charges = poll_until(
                "the order's charge captured",
                Duration::from_secs(15),
                Duration::from_millis(100),
                || {
                    let (journal, order_id) = (journal.clone(), order_id.clone());
                    async move {
                        let charges: Vec<_> = read_journal(&journal)
                            .unwrap()
                            .into_iter()
                            .filter(|c| c.order_id == order_id)
                            .collect();
                        charges
                            .iter()
                            .all(|c| c.state == ChargeState::Captured)
                            .then_some(charges)
                    }
                },
            )
            .await;
            assert_eq!(charges.len(), 1, "{point}: one authorization: {charges:?}");
            assert_eq!(charges[0].captures, 1, "{point}: captured once: {charges:?}");
        }
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(m["sold"], 2 * POINTS.len(), "{m}");
    }
}
