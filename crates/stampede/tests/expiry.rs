//! Holds end by themselves: a lapsed hold gives its stock back and can no longer be paid.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{assert_invariant, parse_rfc3339, poll_until, unix_now_millis, TestServer};

in_both_modes! {
    async fn lapsed_hold_returns_stock_and_cannot_be_paid(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 5, 2, 1).await;
        let buyer = server.buyer().await;

        let before = unix_now_millis();
        let r = server.reserve(&buyer, &sale, 2).await;
        r.expect(201);
        let hold = r.json["hold_id"].as_str().expect("hold_id").to_string();
        let expires = r.json["expires_at"]
            .as_str()
            .and_then(parse_rfc3339)
            .unwrap_or_else(|| panic!("hold.expires_at must be RFC 3339: {}", r.text));
        assert!(
            expires >= before - 2_000 && expires <= unix_now_millis() + 3_000,
            "a 1-second hold must expire about a second from now: {}",
            r.text
        );
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(
            (m["held"].as_i64(), m["available"].as_i64()),
            (Some(2), Some(3)),
            "{m}"
        );

        // The sweeper gives the stock back without anyone asking.
        let m = poll_until(
            "the lapsed hold to be swept (held == 0)",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || async {
                let m = server.metrics(&admin, &sale).await;
                (m["held"] == 0).then_some(m)
            },
        )
        .await;
        assert_invariant(&m);
        assert_eq!(m["available"], 5, "stock is back: {m}");
        assert_eq!(m["sold"], 0, "{m}");
        assert!(
            m["holds_expired"].as_i64().unwrap_or(0) >= 1,
            "holds_expired counts the lapse: {m}"
        );
        assert_eq!(server.sale(&sale).await["available"], 5);

        // Paying for it now is refused, and nothing is charged.
        server
            .order(&buyer, &[&hold], "tok_ok", None)
            .await
            .expect_error(409, "hold_expired");
        let orders = server.orders(&buyer).await;
        assert!(
            orders
                .iter()
                .all(|o| o["status"] != "confirmed" && o["payment"]["status"] != "captured"),
            "no order may be confirmed or captured for a lapsed hold: {orders:?}"
        );
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(
            (m["sold"].as_i64(), m["available"].as_i64()),
            (Some(0), Some(5)),
            "{m}"
        );

        // The lapsed hold is gone from the cart.
        let cart = server.cart(&buyer).await;
        let items = cart["items"].as_array().expect("cart items");
        assert!(
            items.iter().all(|i| i["hold_id"] != hold.as_str()),
            "a lapsed hold must not stay in the cart: {cart}"
        );

        // And the returned units really sell again (per-user limit 2: three more buyers).
        for q in [2, 2, 1] {
            let other = server.buyer().await;
            server.hold(&other, &sale, q).await;
        }
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(
            (m["available"].as_i64(), m["held"].as_i64()),
            (Some(0), Some(5)),
            "{m}"
        );
    }

    async fn released_hold_returns_stock_at_once(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 3, 3, 300).await;
        let buyer = server.buyer().await;

        let hold = server.hold(&buyer, &sale, 3).await;
        let other = server.buyer().await;
        server
            .reserve(&other, &sale, 1)
            .await
            .expect_error(409, "sold_out");

        let r = server
            .delete(&format!("/api/v1/cart/items/{hold}"), Some(&buyer))
            .await;
        assert_eq!(r.status, 204, "DELETE hold: {}", r.text);
        // "Stock back at once": no waiting.
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(
            (m["available"].as_i64(), m["held"].as_i64()),
            (Some(3), Some(0)),
            "{m}"
        );
        let cart = server.cart(&buyer).await;
        assert_eq!(cart["items"].as_array().map(Vec::len), Some(0), "{cart}");
        server.hold(&other, &sale, 1).await;

        // A released hold is gone for good.
        server
            .delete(&format!("/api/v1/cart/items/{hold}"), Some(&buyer))
            .await
            .expect_error(404, "not_found");
        server
            .order(&buyer, &[&hold], "tok_ok", None)
            .await
            .expect_status_in(&[404, 409]);
    }

    async fn a_buyer_is_warned_once_when_a_hold_is_about_to_lapse(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let short = server.create_sale(&admin, 10, 2, 30).await;
        let long = server.create_sale(&admin, 10, 2, 600).await;
        let buyer = server.buyer().await;
        let hold = server.hold(&buyer, &short, 1).await;
        server.hold(&buyer, &long, 1).await;
        let warnings = || async {
            server.get("/api/v1/notifications", Some(&buyer)).await.expect(200)["notifications"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|n| n["kind"] == "hold_expiring")
                .collect::<Vec<_>>()
        };
        let mut seen = Vec::new();
        for _ in 0..100 {
            seen = warnings().await;
            if !seen.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(seen.len(), 1, "the 30 s hold is within the 60 s warning: {seen:?}");
        assert_eq!(seen[0]["data"]["hold_id"], hold.as_str());
        let left = seen[0]["data"]["seconds_left"].as_i64().unwrap();
        assert!((1..=30).contains(&left), "seconds left: {left}");
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        assert_eq!(warnings().await.len(), 1, "once per hold; the 600 s hold is not warned yet");
    }
}
