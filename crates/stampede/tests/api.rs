//! Sales, their lifecycle, operations endpoints and durable sessions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{
    cents, parse_rfc3339, poll_until, rfc3339, sale_body, unique_email, unix_now, unix_now_millis,
    Resp, TestServer,
};
use serde_json::{json, Value};

/// Asserts every field of the contract's `Sale`.
#[track_caller]
fn assert_sale_shape(s: &Value) {
    for k in ["sale_id", "name", "description", "currency", "status"] {
        assert!(s[k].is_string(), "Sale.{k} must be a string: {s}");
    }
    for k in ["original_price", "sale_price"] {
        cents(&s[k]);
    }
    for k in ["total_stock", "available", "per_user_limit"] {
        assert!(
            s[k].is_u64(),
            "Sale.{k} must be a non-negative integer: {s}"
        );
    }
    assert!(s["queue_required"].is_boolean(), "Sale.queue_required: {s}");
    for k in ["starts_at", "ends_at", "server_time"] {
        assert!(
            s[k].as_str().and_then(parse_rfc3339).is_some(),
            "Sale.{k} must be RFC 3339: {s}"
        );
    }
    let server_time = parse_rfc3339(s["server_time"].as_str().unwrap()).unwrap();
    assert!(
        (server_time - unix_now_millis()).abs() < 30_000,
        "server_time must be the server's clock, now: {s}"
    );
    assert!(
        ["scheduled", "live", "paused", "ended"].contains(&s["status"].as_str().unwrap()),
        "Sale.status: {s}"
    );
}

fn ids(list: &Value) -> Vec<String> {
    list["sales"]
        .as_array()
        .unwrap_or_else(|| panic!("`sales` must be an array: {list}"))
        .iter()
        .map(|s| s["sale_id"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Records what is wrong with a successful JSON answer.
fn check_json(bad: &mut Vec<String>, what: &str, r: &Resp, status: u16) {
    if r.status != status {
        bad.push(format!(
            "{what}: expected {status}, got {} {}",
            r.status, r.text
        ));
    } else if let Some(e) = r.json_content_type_error() {
        bad.push(format!("{what}: {e}"));
    }
}

/// Records what is wrong with a problem answer.
fn check_problem(bad: &mut Vec<String>, what: &str, r: &Resp, status: u16, code: &str) {
    if (r.status, r.code()) != (status, code) {
        bad.push(format!(
            "{what}: expected {status} {code}, got {} {}",
            r.status, r.text
        ));
    } else if let Some(e) = r.problem_shape_error() {
        bad.push(format!("{what}: {e}"));
    }
}

in_both_modes! {
    async fn sales_list_and_detail_carry_the_sale_fields(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let now = unix_now();
        let body = json!({
            "name": "Sneaker drop",
            "description": "Forty pairs only",
            "original_price": "100.00",
            "sale_price": "20.00",
            "currency": "EUR",
            "total_stock": 40,
            "starts_at": rfc3339(now - 60),
            "ends_at": rfc3339(now + 3600),
            "per_user_limit": 2,
            "queue_required": false,
            "hold_seconds": 120,
        });
        let r = server.create_sale_with(&admin, &body).await;
        let created = r.expect(201).clone();
        assert_sale_shape(&created);
        assert_eq!(created["name"], "Sneaker drop");
        assert_eq!(created["description"], "Forty pairs only");
        assert_eq!(cents(&created["original_price"]), 10_000);
        assert_eq!(cents(&created["sale_price"]), 2_000);
        assert_eq!(created["currency"], "EUR");
        assert_eq!(created["total_stock"], 40);
        assert_eq!(created["available"], 40);
        assert_eq!(created["per_user_limit"], 2);
        assert_eq!(created["queue_required"], false);
        assert_eq!(created["status"], "live");
        assert_eq!(
            parse_rfc3339(created["starts_at"].as_str().unwrap()),
            Some((now - 60) * 1000)
        );
        let id = created["sale_id"].as_str().unwrap().to_string();

        let detail = server.sale(&id).await;
        assert_sale_shape(&detail);
        for k in [
            "sale_id",
            "name",
            "description",
            "original_price",
            "sale_price",
            "currency",
            "total_stock",
            "available",
            "status",
            "starts_at",
            "ends_at",
            "per_user_limit",
            "queue_required",
        ] {
            assert_eq!(detail[k], created[k], "detail and creation disagree on {k}");
        }

        let r = server.get("/api/v1/sales", None).await;
        let list = r.expect(200).clone();
        let listed = list["sales"]
            .as_array()
            .expect("sales")
            .iter()
            .find(|s| s["sale_id"] == id.as_str())
            .unwrap_or_else(|| panic!("the new sale is listed: {list}"))
            .clone();
        assert_sale_shape(&listed);
        assert_eq!(listed["total_stock"], 40);

        // available follows the holds.
        let buyer = server.buyer().await;
        server.hold(&buyer, &id, 2).await;
        assert_eq!(server.sale(&id).await["available"], 38);

        // Status filters.
        let live = server.get("/api/v1/sales?status=live", None).await;
        assert!(ids(live.expect(200)).contains(&id), "{}", live.text);
        let ended = server
            .get("/api/v1/sales?status=ended,scheduled", None)
            .await;
        assert!(!ids(ended.expect(200)).contains(&id), "{}", ended.text);
        for s in ended.json["sales"].as_array().unwrap() {
            assert!(s["status"] == "ended" || s["status"] == "scheduled", "{s}");
        }
    }

    async fn scheduled_sale_goes_live_by_the_clock(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let buyer = server.buyer().await;
        let mut body = sale_body(5, 2, 300);
        let starts = unix_now() + 4;
        body["starts_at"] = json!(rfc3339(starts));
        let r = server.create_sale_with(&admin, &body).await;
        let id = r.expect(201)["sale_id"].as_str().unwrap().to_string();
        assert_eq!(r.json["status"], "scheduled", "{}", r.text);

        // Before the start: scheduled, listed as such, not reservable, still editable.
        let s = server.sale(&id).await;
        assert_eq!(s["status"], "scheduled", "{s}");
        let scheduled = server.get("/api/v1/sales?status=scheduled", None).await;
        assert!(ids(scheduled.expect(200)).contains(&id));
        server
            .reserve(&buyer, &id, 1)
            .await
            .expect_problem(409, "sale_not_live");
        let r = server
            .patch(
                &format!("/api/v1/admin/sales/{id}"),
                Some(&admin),
                &json!({"total_stock": 7}),
            )
            .await;
        assert_eq!(r.expect(200)["total_stock"], 7, "{}", r.text);
        assert_eq!(server.sale(&id).await["available"], 7);

        let s = poll_until(
            "the scheduled sale to go live",
            Duration::from_secs(15),
            Duration::from_millis(200),
            || async {
                let s = server.sale(&id).await;
                (s["status"] != "scheduled").then_some(s)
            },
        )
        .await;
        assert_eq!(s["status"], "live", "{s}");
        assert!(
            unix_now_millis() >= starts * 1000 - 1000,
            "the sale went live before its starts_at: {s}"
        );
        server.hold(&buyer, &id, 2).await;
        let m = server.metrics(&admin, &id).await;
        common::assert_invariant(&m);
        assert_eq!(
            (m["total_stock"].as_i64(), m["available"].as_i64()),
            (Some(7), Some(5))
        );
    }

    async fn admin_pauses_resumes_and_stops_a_sale(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let buyer = server.buyer().await;
        let id = server.create_sale(&admin, 10, 3, 300).await;
        server.hold(&buyer, &id, 1).await;

        let r = server.admin_action(&admin, &id, "pause").await;
        assert_eq!(r.expect(200)["status"], "paused", "{}", r.text);
        assert_eq!(server.sale(&id).await["status"], "paused");
        let paused = server.get("/api/v1/sales?status=paused", None).await;
        assert!(ids(paused.expect(200)).contains(&id));
        server
            .reserve(&buyer, &id, 1)
            .await
            .expect_problem(409, "sale_not_live");

        let r = server.admin_action(&admin, &id, "resume").await;
        assert_eq!(r.expect(200)["status"], "live", "{}", r.text);
        assert_eq!(server.sale(&id).await["status"], "live");
        server.hold(&buyer, &id, 1).await;

        let r = server.admin_action(&admin, &id, "stop").await;
        assert_eq!(r.expect(200)["status"], "ended", "{}", r.text);
        assert_eq!(server.sale(&id).await["status"], "ended");
        server
            .reserve(&buyer, &id, 1)
            .await
            .expect_problem(409, "sale_not_live");
        let m = server.metrics(&admin, &id).await;
        common::assert_invariant(&m);

        // The audit log recorded the admin's actions.
        let r = server.get("/api/v1/admin/audit", Some(&admin)).await;
        let entries = r.expect(200)["entries"]
            .as_array()
            .unwrap_or_else(|| panic!("audit entries: {}", r.text))
            .clone();
        let about_sale: Vec<&Value> = entries
            .iter()
            .filter(|e| {
                e["target"]
                    .as_str()
                    .is_some_and(|t| t.contains(id.as_str()))
            })
            .collect();
        assert!(
            about_sale.len() >= 3,
            "pause, resume and stop of {id} are audited: {entries:?}"
        );
    }

    async fn operations_endpoints(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let r = server.get("/healthz", None).await;
        assert_eq!(r.status, 200, "healthz: {}", r.text);
        let r = server.get("/readyz", None).await;
        assert_eq!(r.status, 200, "readyz: {}", r.text);

        // Some traffic so that counters exist.
        let admin = server.admin_token().await;
        let id = server.create_sale(&admin, 3, 3, 300).await;
        let buyer = server.buyer().await;
        server.hold(&buyer, &id, 1).await;
        let r = server.get("/metrics", None).await;
        assert_eq!(r.status, 200, "metrics: {}", r.text);
        assert!(
            r.text
                .lines()
                .any(|l| !l.starts_with('#') && l.starts_with("stampede_")),
            "/metrics must expose stampede_* samples:\n{}",
            r.text.chars().take(2000).collect::<String>()
        );

        let r = server.get("/openapi.json", None).await;
        assert_eq!(r.status, 200, "openapi: {}", r.text);
        assert!(r.json.is_object(), "openapi.json must be JSON");
        let paths = r.json["paths"]
            .as_object()
            .unwrap_or_else(|| panic!("openapi.json has no `paths`"));
        for p in ["/api/v1/cart/items", "/api/v1/orders", "/api/v1/auth/login"] {
            assert!(
                paths.contains_key(p),
                "openapi paths lack {p}: {:?}",
                paths.keys()
            );
        }

        let r = server.get("/", None).await;
        assert_eq!(r.status, 200, "storefront");
        assert!(
            r.content_type().starts_with("text/html"),
            "storefront is HTML: {}",
            r.content_type()
        );
    }

    async fn me_reports_the_account(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let email = unique_email("me");
        let r = server.register(&email, common::PASSWORD, "Ada Buyer").await;
        let user_id = r.expect(201)["user_id"].as_str().unwrap().to_string();
        let r = server.login(&email, common::PASSWORD).await;
        let login = r.expect(200).clone();
        assert_eq!(login["user_id"], user_id.as_str());
        assert_ne!(login["role"], "admin");
        let expires = login["expires_at"].as_str().and_then(parse_rfc3339);
        assert!(
            expires.is_some_and(|e| e > unix_now_millis()),
            "login.expires_at must be a future RFC 3339 time: {login}"
        );
        let token = login["token"].as_str().unwrap();
        let me = server.get("/api/v1/me", Some(token)).await;
        let me = me.expect(200);
        assert_eq!(me["user_id"], user_id.as_str());
        assert_eq!(me["email"], email.as_str());
        assert_eq!(me["name"], "Ada Buyer");
        assert_eq!(me["role"], login["role"]);

        let admin = server.admin_token().await;
        let me = server.get("/api/v1/me", Some(&admin)).await;
        assert_eq!(me.expect(200)["role"], "admin");
        assert_eq!(me.json["email"], common::ADMIN_EMAIL);
    }

    async fn sessions_and_data_survive_a_restart(mode) {
        let mut server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let email = unique_email("durable");
        let token = server.register_and_login(&email).await;
        let sale = server.create_sale(&admin, 10, 3, 600).await;
        let hold = server.hold(&token, &sale, 2).await;
        let me_before = server.get("/api/v1/me", Some(&token)).await;
        me_before.expect(200);
        let old_base = server.base.clone();

        server.restart().await;
        assert_ne!(server.base, old_base, "a restart on port 0 gets a new port");
        let me_after = server.get("/api/v1/me", Some(&token)).await;
        assert_eq!(
            me_after.expect(200),
            me_before.expect(200),
            "the session survives"
        );
        let m = server.metrics(&admin, &sale).await;
        common::assert_invariant(&m);
        assert_eq!(
            (m["held"].as_i64(), m["available"].as_i64()),
            (Some(2), Some(8)),
            "{m}"
        );
        let cart = server.cart(&token).await;
        assert_eq!(cart["items"][0]["hold_id"], hold.as_str(), "{cart}");
        // And the session still buys.
        let r = server.order(&token, &[&hold], "tok_ok", None).await;
        assert_eq!(r.expect(201)["status"], "confirmed");

        // A logout before a restart stays a logout after it.
        let r = server.post_empty("/api/v1/auth/logout", Some(&token)).await;
        assert_eq!(r.status, 204);
        server.restart().await;
        server
            .get("/api/v1/me", Some(&token))
            .await
            .expect_problem(401, "unauthenticated");
        let m = server.metrics(&admin, &sale).await;
        assert_eq!(m["sold"], 2, "{m}");
    }

    /// "JSON in and out", errors as application/problem+json: checked over every kind of answer
    /// in one place, each wrong one listed.
    async fn answers_declare_their_content_type(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let mut bad = Vec::new();
        let email = unique_email("ct");
        let r = server.register(&email, common::PASSWORD, "CT").await;
        check_json(&mut bad, "POST /auth/register", &r, 201);
        let r = server.login(&email, common::PASSWORD).await;
        check_json(&mut bad, "POST /auth/login", &r, 200);
        let buyer = r.json["token"].as_str().unwrap_or_default().to_string();
        let r = server.get("/api/v1/me", Some(&buyer)).await;
        check_json(&mut bad, "GET /me", &r, 200);

        let admin = server.admin_token().await;
        let r = server
            .create_sale_with(&admin, &sale_body(10, 10, 300))
            .await;
        check_json(&mut bad, "POST /admin/sales", &r, 201);
        let sale = r.json["sale_id"].as_str().unwrap().to_string();
        let r = server.get("/api/v1/sales", None).await;
        check_json(&mut bad, "GET /sales", &r, 200);
        let r = server.get(&format!("/api/v1/sales/{sale}"), None).await;
        check_json(&mut bad, "GET /sales/{id}", &r, 200);
        let r = server.admin_action(&admin, &sale, "pause").await;
        check_json(&mut bad, "POST /admin/sales/{id}/pause", &r, 200);
        let r = server.admin_action(&admin, &sale, "resume").await;
        check_json(&mut bad, "POST /admin/sales/{id}/resume", &r, 200);
        let r = server
            .get(&format!("/api/v1/admin/sales/{sale}/metrics"), Some(&admin))
            .await;
        check_json(&mut bad, "GET /admin/sales/{id}/metrics", &r, 200);
        let r = server.get("/api/v1/admin/audit", Some(&admin)).await;
        check_json(&mut bad, "GET /admin/audit", &r, 200);

        let r = server.reserve(&buyer, &sale, 1).await;
        check_json(&mut bad, "POST /cart/items", &r, 201);
        let h1 = r.json["hold_id"].as_str().unwrap_or_default().to_string();
        let r = server
            .patch(
                &format!("/api/v1/cart/items/{h1}"),
                Some(&buyer),
                &json!({"quantity": 2}),
            )
            .await;
        check_json(&mut bad, "PATCH /cart/items/{id}", &r, 200);
        let r = server.get("/api/v1/cart", Some(&buyer)).await;
        check_json(&mut bad, "GET /cart", &r, 200);
        let h2 = server.hold(&buyer, &sale, 1).await;
        let h3 = server.hold(&buyer, &sale, 1).await;
        let h4 = server.hold(&buyer, &sale, 1).await;

        // Checkout, with and without Idempotency-Key, success and failure.
        let r = server.order(&buyer, &[&h2], "tok_decline", None).await;
        check_problem(
            &mut bad,
            "POST /orders (declined)",
            &r,
            402,
            "payment_declined",
        );
        let r = server
            .order(&buyer, &[&h2], "tok_decline", Some("ct-key-1"))
            .await;
        check_problem(
            &mut bad,
            "POST /orders with Idempotency-Key (declined)",
            &r,
            402,
            "payment_declined",
        );
        let r = server
            .order(&buyer, &["01ARZ3NDEKTSV4RRFFQ69G5FAV"], "tok_ok", None)
            .await;
        check_problem(
            &mut bad,
            "POST /orders (unknown hold)",
            &r,
            404,
            "not_found",
        );
        let r = server
            .post_raw("/api/v1/orders", Some(&buyer), r#"{"hold_ids": []}"#)
            .await;
        check_problem(
            &mut bad,
            "POST /orders (bad body)",
            &r,
            422,
            "invalid_input",
        );
        let r = server.order(&buyer, &[&h1], "tok_ok", None).await;
        check_json(&mut bad, "POST /orders", &r, 201);
        let order = r.json["order_id"].as_str().unwrap_or_default().to_string();
        let r = server
            .order(&buyer, &[&h2], "tok_ok", Some("ct-key-2"))
            .await;
        check_json(&mut bad, "POST /orders with Idempotency-Key", &r, 201);
        let r = server
            .order(&buyer, &[&h2], "tok_ok", Some("ct-key-2"))
            .await;
        check_json(&mut bad, "POST /orders (idempotent replay)", &r, 201);
        let r = server
            .order(&buyer, &[&h3], "tok_ok", Some("ct-key-2"))
            .await;
        check_problem(
            &mut bad,
            "POST /orders (key reused)",
            &r,
            422,
            "idempotency_key_reused",
        );
        let r = server.order(&buyer, &[&h4], "tok_async", None).await;
        check_json(&mut bad, "POST /orders (tok_async)", &r, 201);
        let r = server.get("/api/v1/orders", Some(&buyer)).await;
        check_json(&mut bad, "GET /orders", &r, 200);
        let r = server
            .get(&format!("/api/v1/orders/{order}"), Some(&buyer))
            .await;
        check_json(&mut bad, "GET /orders/{id}", &r, 200);
        let r = server
            .post_empty(&format!("/api/v1/orders/{order}/cancel"), Some(&buyer))
            .await;
        check_json(&mut bad, "POST /orders/{id}/cancel", &r, 200);
        let r = server.get("/openapi.json", None).await;
        check_json(&mut bad, "GET /openapi.json", &r, 200);

        let r = server.get("/metrics", None).await;
        if !r.content_type().starts_with("text/plain") {
            bad.push(format!("GET /metrics: content-type {:?}", r.content_type()));
        }
        assert!(
            bad.is_empty(),
            "answers with a wrong status or content type:\n  {}",
            bad.join("\n  ")
        );
    }

    /// Banning a buyer ends their sessions within one request (the next one is refused, even
    /// with the token cached) and returns their held stock; they cannot log in; the reason is
    /// kept; reinstating lets them back in. An admin account cannot be banned this way.
    async fn banning_a_buyer_ends_their_sessions_and_returns_their_stock(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 10, 5, 300).await;
        let email = common::unique_email("scalper");
        let token = server.register_and_login(&email).await;
        let second = server.login_token(&email, common::PASSWORD).await;
        server.hold(&token, &sale, 3).await;
        server.hold(&second, &sale, 2).await;
        assert_eq!(server.metrics(&admin, &sale).await["held"], 5);
        let user_id = server.user_id_of(&token).await;
        server.get("/api/v1/cart", Some(&token)).await.expect(200);
        let r = server
            .post(
                &format!("/api/v1/admin/users/{user_id}/status"),
                Some(&admin),
                &json!({ "status": "banned", "reason": "scalping" }),
            )
            .await;
        let banned = r.expect(200);
        assert_eq!((banned["status"].as_str(), banned["status_reason"].as_str()), (Some("banned"), Some("scalping")));
        server.get("/api/v1/cart", Some(&token)).await.expect_problem(401, "unauthenticated");
        server.reserve(&second, &sale, 1).await.expect_problem(401, "unauthenticated");
        let m = server.metrics(&admin, &sale).await;
        assert_eq!(
            (m["held"].as_i64(), m["available"].as_i64(), m["invariant_ok"].as_bool()),
            (Some(0), Some(10), Some(true)),
            "the banned buyer's holds went back to stock: {m}"
        );
        server.login(&email, common::PASSWORD).await.expect_problem(403, "forbidden");
        let detail = server.get(&format!("/api/v1/admin/users/{user_id}"), Some(&admin)).await;
        let detail = detail.expect(200);
        assert_eq!(detail["account"]["status"], "banned");
        assert_eq!(detail["live_holds"].as_array().map(Vec::len), Some(0));
        let found = server.get("/api/v1/admin/users?q=SCALPER", Some(&admin)).await;
        let found = found.expect(200);
        assert!(found["users"].as_array().unwrap().iter().any(|u| u["user_id"] == user_id.as_str()));
        server
            .post(
                &format!("/api/v1/admin/users/{user_id}/status"),
                Some(&admin),
                &json!({ "status": "banned", "reason": "" }),
            )
            .await
            .expect_problem(422, "invalid_input");
        server
            .post(
                &format!("/api/v1/admin/users/{user_id}/status"),
                Some(&admin),
                &json!({ "status": "active", "reason": "appeal upheld" }),
            )
            .await
            .expect(200);
        let back = server.login_token(&email, common::PASSWORD).await;
        server.get("/api/v1/cart", Some(&back)).await.expect(200);
        let admin_id = server.user_id_of(&admin).await;
        server
            .post(
                &format!("/api/v1/admin/users/{admin_id}/status"),
                Some(&admin),
                &json!({ "status": "banned", "reason": "x" }),
            )
            .await
            .expect_problem(409, "conflict");
        server
            .get("/api/v1/admin/users/01J00000000000000000000000", Some(&admin))
            .await
            .expect_problem(404, "not_found");
    }
}
