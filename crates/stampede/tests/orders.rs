//! Checkout, payments, idempotency, webhooks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    assert_invariant, cents, poll_until, sign_webhook, sign_webhook_at, unique_suffix, unix_now,
    TestServer, WEBHOOK_SECRET,
};
use serde_json::{json, Value};
use tokio::sync::Barrier;

fn order_id(v: &Value) -> String {
    v["order_id"]
        .as_str()
        .unwrap_or_else(|| panic!("order without order_id: {v}"))
        .to_string()
}

#[track_caller]
fn assert_order_shape(o: &Value, sale: &str, quantity: i64) {
    assert!(o["order_id"].is_string(), "order_id: {o}");
    assert!(o["created_at"].is_string(), "created_at: {o}");
    let items = o["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items: {o}"));
    assert_eq!(items.len(), 1, "one item per hold here: {o}");
    assert_eq!(items[0]["sale_id"], sale, "{o}");
    assert_eq!(items[0]["quantity"], quantity, "{o}");
    assert_eq!(
        cents(&items[0]["unit_price"]),
        2000,
        "unit price is the sale price: {o}"
    );
    assert_eq!(cents(&o["total"]), 2000 * quantity, "total: {o}");
    assert_eq!(o["payment"]["method"], "card", "{o}");
    assert!(
        o["payment"]["reference"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "payment.reference: {o}"
    );
}

fn event(id: &str, kind: &str, reference: &str) -> String {
    json!({"id": id, "type": kind, "data": {"reference": reference}}).to_string()
}

async fn order_status(server: &TestServer, token: &str, id: &str) -> String {
    let r = server
        .get(&format!("/api/v1/orders/{id}"), Some(token))
        .await;
    r.expect(200)["status"].as_str().unwrap_or("").to_string()
}

/// Captures the sandbox gateway has performed, from the server's Prometheus metrics.
async fn captures(server: &TestServer) -> u64 {
    let text = server.get("/metrics", None).await.text;
    text.lines()
        .find_map(|l| l.strip_prefix("stampede_sandbox_captures_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

in_both_modes! {
    async fn purchase_then_cancel_refunds_and_returns_stock(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 10, 2, 300).await;
        let buyer = server.buyer().await;
        let hold = server.hold(&buyer, &sale, 2).await;

        let r = server.order(&buyer, &[&hold], "tok_ok", None).await;
        let order = r.expect(201).clone();
        assert_eq!(order["status"], "confirmed", "{order}");
        assert_eq!(order["payment"]["status"], "captured", "{order}");
        assert_order_shape(&order, &sale, 2);
        let id = order_id(&order);

        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(
            (
                m["sold"].as_i64(),
                m["held"].as_i64(),
                m["available"].as_i64()
            ),
            (Some(2), Some(0), Some(8)),
            "{m}"
        );
        assert_eq!(m["orders"], 1, "{m}");
        let cart = server.cart(&buyer).await;
        assert_eq!(
            cart["items"].as_array().map(Vec::len),
            Some(0),
            "the hold became the order: {cart}"
        );

        let list = server.orders(&buyer).await;
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(order_id(&list[0]), id);
        assert_eq!(list[0]["status"], "confirmed");
        let got = server
            .get(&format!("/api/v1/orders/{id}"), Some(&buyer))
            .await;
        assert_eq!(got.expect(200)["order_id"], id.as_str());
        assert_eq!(got.json["status"], "confirmed");

        // Another user cannot see it.
        let stranger = server.buyer().await;
        server
            .get(&format!("/api/v1/orders/{id}"), Some(&stranger))
            .await
            .expect_error(404, "not_found");
        assert!(server.orders(&stranger).await.is_empty(), "own orders only");

        // Cancel: refunded, stock back while the sale is live.
        let r = server
            .post_empty(&format!("/api/v1/orders/{id}/cancel"), Some(&buyer))
            .await;
        assert_eq!(r.expect(200)["status"], "refunded", "{}", r.text);
        assert_eq!(order_id(&r.json), id);
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(
            (m["sold"].as_i64(), m["available"].as_i64()),
            (Some(0), Some(10)),
            "{m}"
        );
        let got = server
            .get(&format!("/api/v1/orders/{id}"), Some(&buyer))
            .await;
        assert_eq!(got.expect(200)["status"], "refunded");

        let r = server
            .post_empty(&format!("/api/v1/orders/{id}/cancel"), Some(&buyer))
            .await;
        assert_eq!(r.status, 409, "a second cancel is a conflict: {}", r.text);
        r.expect_problem_shape();
        let m = server.metrics(&admin, &sale).await;
        assert_eq!(
            m["available"], 10,
            "a second cancel returns nothing more: {m}"
        );

        // The refunded units sell again, and the limit counts them as free.
        server.hold(&buyer, &sale, 2).await;
    }

    async fn declined_payment_keeps_the_hold_and_paying_again_works(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 5, 1, 300).await;
        let buyer = server.buyer().await;
        let hold = server.hold(&buyer, &sale, 1).await;

        server
            .order(&buyer, &[&hold], "tok_decline", None)
            .await
            .expect_error(402, "payment_declined");

        let list = server.orders(&buyer).await;
        assert!(
            list.iter().any(|o| o["status"] == "payment_failed"),
            "the declined attempt is kept as a payment_failed order: {list:?}"
        );
        assert!(list.iter().all(|o| o["status"] != "confirmed"), "{list:?}");
        let cart = server.cart(&buyer).await;
        let items = cart["items"].as_array().expect("items");
        assert!(
            items.iter().any(|i| i["hold_id"] == hold.as_str()),
            "the hold stays after a decline: {cart}"
        );
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(
            (m["held"].as_i64(), m["sold"].as_i64()),
            (Some(1), Some(0)),
            "{m}"
        );

        let r = server.order(&buyer, &[&hold], "tok_ok", None).await;
        assert_eq!(r.expect(201)["status"], "confirmed", "{}", r.text);
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(
            (m["held"].as_i64(), m["sold"].as_i64()),
            (Some(0), Some(1)),
            "{m}"
        );
        let list = server.orders(&buyer).await;
        assert_eq!(
            list.iter().filter(|o| o["status"] == "confirmed").count(),
            1,
            "{list:?}"
        );
    }

    async fn idempotent_retry_replays_the_first_answer(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 10, 3, 300).await;
        let buyer = server.buyer().await;
        let hold = server.hold(&buyer, &sale, 1).await;
        let key = format!("idem-{}", unique_suffix());

        let first = server.order(&buyer, &[&hold], "tok_ok", Some(&key)).await;
        first.expect(201);
        assert_eq!(first.json["status"], "confirmed");
        let second = server.order(&buyer, &[&hold], "tok_ok", Some(&key)).await;
        assert_eq!(
            second.status, first.status,
            "replay status: {}",
            second.text
        );
        assert_eq!(second.text, first.text, "the replay answers the same body");
        let list = server.orders(&buyer).await;
        assert_eq!(list.len(), 1, "one order despite the retry: {list:?}");
        let m = server.metrics(&admin, &sale).await;
        assert_eq!(m["sold"], 1, "charged once: {m}");
        assert_eq!(
            captures(&server).await,
            1,
            "the gateway captured exactly once"
        );

        // The same key with another body.
        let other_hold = server.hold(&buyer, &sale, 1).await;
        server
            .order(&buyer, &[&other_hold], "tok_ok", Some(&key))
            .await
            .expect_error(422, "idempotency_key_reused");
        assert_eq!(server.orders(&buyer).await.len(), 1);
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(
            (m["sold"].as_i64(), m["held"].as_i64()),
            (Some(1), Some(1)),
            "{m}"
        );

        // Keys are per user: another buyer may use the same key for its own order.
        let other = server.buyer().await;
        let their_hold = server.hold(&other, &sale, 1).await;
        let r = server
            .order(&other, &[&their_hold], "tok_ok", Some(&key))
            .await;
        assert_eq!(r.expect(201)["status"], "confirmed", "{}", r.text);
        assert_ne!(order_id(&r.json), order_id(&first.json));
    }

    async fn concurrent_duplicates_with_one_key_make_one_order(mode) {
        const DUPES: usize = 5;
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 10, 2, 300).await;
        let buyer = server.buyer().await;
        let hold = server.hold(&buyer, &sale, 1).await;
        let key = format!("idem-{}", unique_suffix());

        let barrier = Arc::new(Barrier::new(DUPES));
        let mut tasks = Vec::new();
        for _ in 0..DUPES {
            let (api, buyer, hold, key, barrier) = (
                server.api(),
                buyer.clone(),
                hold.clone(),
                key.clone(),
                barrier.clone(),
            );
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                api.order(&buyer, &[&hold], "tok_slow", Some(&key)).await
            }));
        }
        let mut created: Vec<Value> = Vec::new();
        for t in tasks {
            let r = t.await.expect("task");
            if r.status == 201 {
                created.push(r.json.clone());
            } else {
                r.expect_error(409, "idempotency_in_progress");
            }
        }
        assert!(!created.is_empty(), "one of the duplicates must go through");
        assert!(
            created.iter().all(|c| *c == created[0]),
            "every 201 is the same answer: {created:?}"
        );
        assert_eq!(created[0]["status"], "confirmed", "{}", created[0]);

        let list = server.orders(&buyer).await;
        assert_eq!(list.len(), 1, "never two orders for one key: {list:?}");
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(m["sold"], 1, "charged once: {m}");
        assert_eq!(
            captures(&server).await,
            1,
            "the gateway captured exactly once"
        );

        // Once done, a retry gets the stored answer.
        let r = server.order(&buyer, &[&hold], "tok_slow", Some(&key)).await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(r.json, created[0]);
    }

    async fn two_checkouts_of_one_hold_sell_it_once(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 10, 2, 300).await;
        let buyer = server.buyer().await;
        let hold = server.hold(&buyer, &sale, 2).await;

        let barrier = Arc::new(Barrier::new(2));
        let mut tasks = Vec::new();
        for i in 0..2 {
            let (api, buyer, hold, barrier) =
                (server.api(), buyer.clone(), hold.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let key = format!("distinct-{i}-{}", unique_suffix());
                api.order(&buyer, &[&hold], "tok_slow", Some(&key)).await
            }));
        }
        let mut confirmed = 0;
        for t in tasks {
            let r = t.await.expect("task");
            assert_ne!(r.status, 500, "{}", r.text);
            if r.status == 201 && r.json["status"] == "confirmed" {
                confirmed += 1;
            } else {
                // Refused: the hold is already in the other order (a conflict), or gone.
                r.expect_status_in(&[404, 409]);
            }
        }
        assert_eq!(confirmed, 1, "a hold converts to exactly one order");
        let list = server.orders(&buyer).await;
        assert_eq!(
            list.iter().filter(|o| o["status"] == "confirmed").count(),
            1,
            "{list:?}"
        );
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(
            (m["sold"].as_i64(), m["held"].as_i64()),
            (Some(2), Some(0)),
            "{m}"
        );
    }

    async fn async_payment_confirms_through_the_sandbox_webhook(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 10, 2, 300).await;
        let buyer = server.buyer().await;
        let hold = server.hold(&buyer, &sale, 1).await;

        let r = server.order(&buyer, &[&hold], "tok_async", None).await;
        let order = r.expect(201).clone();
        assert_eq!(order["status"], "pending_payment", "{order}");
        assert_order_shape(&order, &sale, 1);
        let id = order_id(&order);

        let done = poll_until(
            "the tok_async order to be confirmed by the sandbox webhook",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || async {
                let r = server
                    .get(&format!("/api/v1/orders/{id}"), Some(&buyer))
                    .await;
                (r.expect(200)["status"] != "pending_payment").then(|| r.json.clone())
            },
        )
        .await;
        assert_eq!(done["status"], "confirmed", "{done}");
        assert_eq!(done["payment"]["status"], "captured", "{done}");
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(
            (m["sold"].as_i64(), m["held"].as_i64()),
            (Some(1), Some(0)),
            "{m}"
        );
    }

    async fn webhooks_are_verified_and_deduplicated(mode) {
        // The sandbox must not confirm by itself here: the test plays the gateway.
        let server = TestServer::start_with_in(mode.clone(), &[("STAMPEDE_SANDBOX_ASYNC_MS", "600000")], None).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 10, 5, 300).await;
        let buyer = server.buyer().await;
        let mut orders = Vec::new();
        for _ in 0..3 {
            let hold = server.hold(&buyer, &sale, 1).await;
            let r = server.order(&buyer, &[&hold], "tok_async", None).await;
            assert_eq!(r.expect(201)["status"], "pending_payment", "{}", r.text);
            let reference = r.json["payment"]["reference"]
                .as_str()
                .expect("payment.reference")
                .to_string();
            orders.push((order_id(&r.json), reference));
        }
        let (a, ref_a) = orders[0].clone();
        let (b, ref_b) = orders[1].clone();
        let (c, ref_c) = orders[2].clone();
        let evt_a = format!("evt_{}", unique_suffix());
        let body_a = event(&evt_a, "payment.succeeded", &ref_a);

        // Bad signatures: none, wrong secret, stale, other body, garbage.
        server
            .post_webhook(&body_a, None)
            .await
            .expect_error(401, "bad_signature");
        server
            .post_webhook(
                &body_a,
                Some(&sign_webhook("not-the-secret", body_a.as_bytes())),
            )
            .await
            .expect_error(401, "bad_signature");
        let stale = sign_webhook_at(WEBHOOK_SECRET, unix_now() - 600, body_a.as_bytes());
        server
            .post_webhook(&body_a, Some(&stale))
            .await
            .expect_error(401, "bad_signature");
        let other_body = sign_webhook(
            WEBHOOK_SECRET,
            event(&evt_a, "payment.succeeded", "x").as_bytes(),
        );
        server
            .post_webhook(&body_a, Some(&other_body))
            .await
            .expect_error(401, "bad_signature");
        server
            .post_webhook(&body_a, Some("t=1,v1=deadbeef"))
            .await
            .expect_error(401, "bad_signature");
        // A time at the ends of i64 is as stale as any other, not an overflow.
        for t in [i64::MIN, i64::MAX] {
            server
                .post_webhook(&body_a, Some(&format!("t={t},v1=deadbeef")))
                .await
                .expect_error(401, "bad_signature");
        }
        assert_eq!(order_status(&server, &buyer, &a).await, "pending_payment");

        // A good one confirms.
        let r = server
            .post_webhook(
                &body_a,
                Some(&sign_webhook(WEBHOOK_SECRET, body_a.as_bytes())),
            )
            .await;
        assert_eq!(r.status, 204, "signed webhook: {}", r.text);
        poll_until(
            "order A to be confirmed by its webhook",
            Duration::from_secs(5),
            Duration::from_millis(50),
            || async { (order_status(&server, &buyer, &a).await == "confirmed").then_some(()) },
        )
        .await;
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(m["sold"], 1, "{m}");

        // The exact replay: acknowledged, no effect (same order state, no second capture).
        let captured_before = captures(&server).await;
        let r = server
            .post_webhook(
                &body_a,
                Some(&sign_webhook(WEBHOOK_SECRET, body_a.as_bytes())),
            )
            .await;
        assert_eq!(r.status, 204, "replayed webhook: {}", r.text);
        assert_eq!(order_status(&server, &buyer, &a).await, "confirmed");
        assert_eq!(captures(&server).await, captured_before, "a replay captures nothing");
        let m = server.metrics(&admin, &sale).await;
        assert_eq!(m["sold"], 1, "a replay sells nothing: {m}");
        // payment.failed: the order fails, its hold stays for another attempt.
        let body_c = event(
            &format!("evt_{}", unique_suffix()),
            "payment.failed",
            &ref_c,
        );
        let r = server
            .post_webhook(
                &body_c,
                Some(&sign_webhook(WEBHOOK_SECRET, body_c.as_bytes())),
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.text);
        poll_until(
            "order C to fail",
            Duration::from_secs(5),
            Duration::from_millis(50),
            || async { (order_status(&server, &buyer, &c).await == "payment_failed").then_some(()) },
        )
        .await;
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(
            (m["sold"].as_i64(), m["held"].as_i64()),
            (Some(1), Some(2)),
            "{m}"
        );

        // The same event id about another payment: acknowledged, and ignored.
        assert_eq!(order_status(&server, &buyer, &b).await, "pending_payment");
        let body_dup = event(&evt_a, "payment.succeeded", &ref_b);
        let r = server
            .post_webhook(
                &body_dup,
                Some(&sign_webhook(WEBHOOK_SECRET, body_dup.as_bytes())),
            )
            .await;
        assert_eq!(r.status, 204, "replayed event id: {}", r.text);
        assert_eq!(order_status(&server, &buyer, &a).await, "confirmed");
        assert_eq!(
            order_status(&server, &buyer, &b).await,
            "pending_payment",
            "event {evt_a} was seen before (for order A); delivered again about order B it must \
             be acknowledged without effect"
        );
        let m = server.metrics(&admin, &sale).await;
        assert_eq!(m["sold"], 1, "replays sell nothing: {m}");

        // A fresh event for B does take effect (so the check above was not vacuous).
        let body_b = event(
            &format!("evt_{}", unique_suffix()),
            "payment.succeeded",
            &ref_b,
        );
        let r = server
            .post_webhook(
                &body_b,
                Some(&sign_webhook(WEBHOOK_SECRET, body_b.as_bytes())),
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.text);
        poll_until(
            "order B to be confirmed",
            Duration::from_secs(5),
            Duration::from_millis(50),
            || async { (order_status(&server, &buyer, &b).await == "confirmed").then_some(()) },
        )
        .await;
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(
            (m["sold"].as_i64(), m["held"].as_i64()),
            (Some(2), Some(1)),
            "{m}"
        );
    }

    async fn confirmed_order_is_notified(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 10, 2, 300).await;
        let buyer = server.buyer().await;
        let hold = server.hold(&buyer, &sale, 1).await;
        let r = server.order(&buyer, &[&hold], "tok_ok", None).await;
        r.expect(201);

        let kinds = poll_until(
            "an order_confirmed notification",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || async {
                let r = server.get("/api/v1/notifications", Some(&buyer)).await;
                let list = r.expect(200)["notifications"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let kinds: Vec<String> = list
                    .iter()
                    .filter_map(|n| n["kind"].as_str().map(str::to_string))
                    .collect();
                kinds
                    .iter()
                    .any(|k| k == "order_confirmed")
                    .then_some(kinds)
            },
        )
        .await;
        assert!(kinds.contains(&"order_confirmed".to_string()));
        // Own only.
        let stranger = server.buyer().await;
        let r = server.get("/api/v1/notifications", Some(&stranger)).await;
        let theirs = r.expect(200)["notifications"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            theirs.iter().all(|n| n["kind"] != "order_confirmed"),
            "notifications are own only: {theirs:?}"
        );
    }
}
