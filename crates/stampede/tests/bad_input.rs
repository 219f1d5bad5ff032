//! Every bad request gets its documented status and `code` as application/problem+json, never
//! a 500.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{
    assert_invariant, poll_until, rfc3339, sale_body, unique_email, unix_now, Api, Resp,
    TestServer, PASSWORD,
};
use reqwest::Method;
use serde_json::{json, Value};

/// `id` with its last character changed: same format, names nothing.
fn unknown_like(id: &str) -> String {
    let mut s = id.to_string();
    let last = s.pop().expect("non-empty id");
    s.push(if last == '0' { '1' } else { '0' });
    s
}

#[track_caller]
fn invalid(r: &Resp, what: &str) {
    assert!(
        r.status == 422 && r.code() == "invalid_input",
        "{what}: expected 422 invalid_input, got {} {}",
        r.status,
        r.text
    );
    if let Some(e) = r.problem_shape_error() {
        panic!("{what}: {e}");
    }
}

/// Retries a setup call that the deliberately tight rate limit refused.
async fn until_admitted<F, Fut>(what: &str, mut f: F) -> Resp
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Resp>,
{
    poll_until(
        what,
        Duration::from_secs(20),
        Duration::from_millis(250),
        || {
            let fut = f();
            async move {
                let r = fut.await;
                (r.status != 429).then_some(r)
            }
        },
    )
    .await
}

in_both_modes! {
    async fn malformed_and_mistyped_bodies_are_invalid_input(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 10, 5, 300).await;
        let buyer = server.buyer().await;

        let reserve_bodies = [
            (
                "malformed JSON",
                format!(r#"{{"sale_id": "{sale}", "quantity": "#),
            ),
            ("not JSON at all", "quantity=1".to_string()),
            ("empty body", String::new()),
            (
                "JSON array",
                format!(r#"[{{"sale_id": "{sale}", "quantity": 1}}]"#),
            ),
            ("null", "null".to_string()),
            (
                "quantity as a string",
                format!(r#"{{"sale_id": "{sale}", "quantity": "2"}}"#),
            ),
            (
                "fractional quantity",
                format!(r#"{{"sale_id": "{sale}", "quantity": 1.5}}"#),
            ),
            (
                "zero quantity",
                format!(r#"{{"sale_id": "{sale}", "quantity": 0}}"#),
            ),
            (
                "negative quantity",
                format!(r#"{{"sale_id": "{sale}", "quantity": -1}}"#),
            ),
            (
                "huge quantity",
                format!(r#"{{"sale_id": "{sale}", "quantity": 1e30}}"#),
            ),
            ("missing quantity", format!(r#"{{"sale_id": "{sale}"}}"#)),
            ("missing sale_id", r#"{"quantity": 1}"#.to_string()),
            (
                "sale_id as a number",
                r#"{"sale_id": 7, "quantity": 1}"#.to_string(),
            ),
            (
                "unknown field",
                format!(r#"{{"sale_id": "{sale}", "quantity": 1, "colour": "red"}}"#),
            ),
        ];
        for (what, body) in reserve_bodies {
            let r = server
                .post_raw("/api/v1/cart/items", Some(&buyer), body)
                .await;
            invalid(&r, &format!("reserve with {what}"));
        }
        // Nothing was reserved by any of them.
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(m["held"], 0, "{m}");

        let email = unique_email("bad-input");
        let register_bodies = [
            (
                "malformed JSON",
                r#"{"email": "a@b.test", "password": "#.to_string(),
            ),
            (
                "unknown field",
                json!({"email": email, "password": PASSWORD, "name": "X", "admin": true}).to_string(),
            ),
            (
                "missing password",
                json!({"email": email, "name": "X"}).to_string(),
            ),
            (
                "email of the wrong type",
                json!({"email": 42, "password": PASSWORD, "name": "X"}).to_string(),
            ),
            (
                "not an email",
                json!({"email": "not-an-email", "password": PASSWORD, "name": "X"}).to_string(),
            ),
        ];
        for (what, body) in register_bodies {
            let r = server.post_raw("/api/v1/auth/register", None, body).await;
            invalid(&r, &format!("register with {what}"));
        }
        let r = server
            .post_raw("/api/v1/auth/login", None, r#"{"email": "#)
            .await;
        invalid(&r, "login with malformed JSON");

        let hold = server.hold(&buyer, &sale, 1).await;

        // Changing a hold.
        for (what, body) in [
            ("zero quantity", json!({"quantity": 0})),
            ("negative quantity", json!({"quantity": -2})),
            ("quantity as a string", json!({"quantity": "2"})),
            ("unknown field", json!({"quantity": 1, "x": 1})),
        ] {
            let r = server
                .patch(&format!("/api/v1/cart/items/{hold}"), Some(&buyer), &body)
                .await;
            invalid(&r, &format!("PATCH hold with {what}"));
        }

        // Creating sales.
        let now = unix_now();
        let mut tweaks: Vec<(&str, Value)> = Vec::new();
        let mut b = sale_body(10, 1, 300);
        b["total_stock"] = json!(-5);
        tweaks.push(("negative stock", b));
        let mut b = sale_body(10, 1, 300);
        b["sale_price"] = json!("twenty");
        tweaks.push(("a price that is not a decimal", b));
        let mut b = sale_body(10, 1, 300);
        b["sale_price"] = json!(20.0);
        tweaks.push(("a price as a float", b));
        let mut b = sale_body(10, 1, 300);
        b["ends_at"] = json!(rfc3339(now - 3600));
        b["starts_at"] = json!(rfc3339(now + 3600));
        tweaks.push(("ends before it starts", b));
        let mut b = sale_body(10, 1, 300);
        b["starts_at"] = json!("tomorrow");
        tweaks.push(("a time that is not RFC 3339", b));
        let mut b = sale_body(10, 1, 300);
        b.as_object_mut().unwrap().remove("name");
        tweaks.push(("no name", b));
        for (what, body) in tweaks {
            let r = server.create_sale_with(&admin, &body).await;
            invalid(&r, &format!("create sale with {what}"));
        }

        // Orders.
        let order_bodies = [
            ("malformed JSON", r#"{"hold_ids": ["#.to_string()),
            (
                "no holds",
                json!({"hold_ids": [], "payment": {"method": "card", "token": "tok_ok"}}).to_string(),
            ),
            ("missing payment", json!({"hold_ids": [hold]}).to_string()),
            (
                "hold_ids not a list",
                json!({"hold_ids": hold, "payment": {"method": "card", "token": "tok_ok"}}).to_string(),
            ),
            (
                "unknown field",
                json!({"hold_ids": [hold], "payment": {"method": "card", "token": "tok_ok"},
                       "coupon": "FREE"})
                .to_string(),
            ),
        ];
        for (what, body) in order_bodies {
            let r = server.post_raw("/api/v1/orders", Some(&buyer), body).await;
            invalid(&r, &format!("order with {what}"));
        }
        assert!(
            server.orders(&buyer).await.is_empty(),
            "no order from bad input"
        );
    }

    async fn oversized_bodies_are_413(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 10, 5, 300).await;
        let buyer = server.buyer().await;
        let padding = "x".repeat(70 * 1024);

        let body = json!({"sale_id": sale, "quantity": 1, "padding": padding}).to_string();
        let r = server
            .post_raw("/api/v1/cart/items", Some(&buyer), body)
            .await;
        r.expect_problem(413, "payload_too_large");

        let body =
            json!({"email": unique_email("big"), "password": PASSWORD, "name": padding}).to_string();
        let r = server.post_raw("/api/v1/auth/register", None, body).await;
        r.expect_problem(413, "payload_too_large");

        let m = server.metrics(&admin, &sale).await;
        assert_eq!(m["held"], 0, "{m}");
    }

    async fn unknown_and_malformed_ids_are_404(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 10, 5, 300).await;
        let buyer = server.buyer().await;
        let hold = server.hold(&buyer, &sale, 1).await;
        let r = server.order(&buyer, &[&hold], "tok_ok", None).await;
        let order = r.expect(201)["order_id"].as_str().unwrap().to_string();
        let hold2 = server.hold(&buyer, &sale, 1).await;

        let no_sale = unknown_like(&sale);
        let no_order = unknown_like(&order);
        let no_hold = unknown_like(&hold2);
        let b = Some(buyer.as_str());
        let a = Some(admin.as_str());
        let q = json!({"quantity": 1});
        let cases: Vec<(Method, String, Option<&str>, Option<Value>)> = vec![
            (Method::GET, format!("/api/v1/sales/{no_sale}"), None, None),
            (
                Method::GET,
                "/api/v1/sales/not-a-sale-id".into(),
                None,
                None,
            ),
            (Method::GET, "/api/v1/sales/%F0%9F%92%A5".into(), None, None),
            (
                Method::POST,
                "/api/v1/cart/items".into(),
                b,
                Some(json!({"sale_id": no_sale, "quantity": 1})),
            ),
            (Method::GET, format!("/api/v1/orders/{no_order}"), b, None),
            (Method::GET, "/api/v1/orders/nope".into(), b, None),
            (
                Method::POST,
                format!("/api/v1/orders/{no_order}/cancel"),
                b,
                None,
            ),
            (Method::POST, "/api/v1/orders/nope/cancel".into(), b, None),
            (
                Method::PATCH,
                format!("/api/v1/cart/items/{no_hold}"),
                b,
                Some(q.clone()),
            ),
            (
                Method::PATCH,
                "/api/v1/cart/items/nope".into(),
                b,
                Some(q.clone()),
            ),
            (
                Method::DELETE,
                format!("/api/v1/cart/items/{no_hold}"),
                b,
                None,
            ),
            (Method::DELETE, "/api/v1/cart/items/nope".into(), b, None),
            (
                Method::GET,
                format!("/api/v1/admin/sales/{no_sale}/metrics"),
                a,
                None,
            ),
            (
                Method::POST,
                format!("/api/v1/admin/sales/{no_sale}/pause"),
                a,
                None,
            ),
            (Method::GET, "/api/v1/no-such-route".into(), b, None),
            (
                Method::POST,
                "/api/v1/orders".into(),
                b,
                Some(common::order_body(&[&no_hold], "tok_ok")),
            ),
            (
                Method::POST,
                "/api/v1/orders".into(),
                b,
                Some(common::order_body(&["nope"], "tok_ok")),
            ),
        ];
        for (method, path, token, body) in cases {
            let r = server
                .call(method.clone(), &path, token, body.as_ref())
                .await;
            assert!(
                r.status == 404 && r.code() == "not_found",
                "{method} {path}: expected 404 not_found, got {} {}",
                r.status,
                r.text
            );
            if let Some(e) = r.problem_shape_error() {
                panic!("{method} {path}: {e}");
            }
        }
        // Nothing changed.
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(
            (m["sold"].as_i64(), m["held"].as_i64()),
            (Some(1), Some(1)),
            "{m}"
        );
    }

    async fn other_users_holds_and_orders_are_404(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 10, 5, 300).await;
        let owner = server.buyer().await;
        let thief = server.buyer().await;
        let paid = server.hold(&owner, &sale, 1).await;
        let r = server.order(&owner, &[&paid], "tok_ok", None).await;
        let order = r.expect(201)["order_id"].as_str().unwrap().to_string();
        let hold = server.hold(&owner, &sale, 2).await;

        let t = Some(thief.as_str());
        server
            .patch(
                &format!("/api/v1/cart/items/{hold}"),
                t,
                &json!({"quantity": 1}),
            )
            .await
            .expect_problem(404, "not_found");
        server
            .delete(&format!("/api/v1/cart/items/{hold}"), t)
            .await
            .expect_problem(404, "not_found");
        server
            .get(&format!("/api/v1/orders/{order}"), t)
            .await
            .expect_problem(404, "not_found");
        server
            .post_empty(&format!("/api/v1/orders/{order}/cancel"), t)
            .await
            .expect_problem(404, "not_found");

        // The owner's things are untouched.
        let cart = server.cart(&owner).await;
        let items = cart["items"].as_array().expect("items");
        assert_eq!(items.len(), 1, "{cart}");
        assert_eq!(items[0]["hold_id"], hold.as_str());
        assert_eq!(items[0]["quantity"], 2);
        let r = server
            .get(&format!("/api/v1/orders/{order}"), Some(&owner))
            .await;
        assert_eq!(r.expect(200)["status"], "confirmed");
        assert!(server.orders(&thief).await.is_empty());
        let cart = server.cart(&thief).await;
        assert_eq!(cart["items"].as_array().map(Vec::len), Some(0), "{cart}");
        // Paying with someone else's hold is not found either, and takes nothing.
        server
            .order(&thief, &[&hold], "tok_ok", None)
            .await
            .expect_problem(404, "not_found");
        let cart = server.cart(&owner).await;
        assert_eq!(cart["items"].as_array().map(Vec::len), Some(1), "{cart}");
    }

    async fn authentication_errors(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 10, 5, 300).await;
        let reserve = json!({"sale_id": sale, "quantity": 1});

        // No token, a made-up token, another scheme.
        for token in [None, Some("not-a-real-token"), Some("")] {
            for (method, path, body) in [
                (Method::GET, "/api/v1/me", None),
                (Method::GET, "/api/v1/cart", None),
                (Method::POST, "/api/v1/cart/items", Some(&reserve)),
                (Method::GET, "/api/v1/orders", None),
                (Method::POST, "/api/v1/auth/logout", None),
                (Method::POST, "/api/v1/orders", None),
            ] {
                let r = server.call(method.clone(), path, token, body).await;
                assert!(
                    r.status == 401 && r.code() == "unauthenticated",
                    "{method} {path} with token {token:?}: expected 401 unauthenticated, got {} {}",
                    r.status,
                    r.text
                );
                if let Some(e) = r.problem_shape_error() {
                    panic!("{method} {path} with token {token:?}: {e}");
                }
            }
        }
        let rb = server
            .request(Method::GET, "/api/v1/me", None)
            .header("Authorization", "Basic YWRtaW46YWRtaW4=");
        server.send(rb).await.expect_problem(401, "unauthenticated");
        // Authentication is judged before input.
        server
            .post_raw("/api/v1/cart/items", None, "{broken")
            .await
            .expect_problem(401, "unauthenticated");

        // Accounts.
        let email = unique_email("auth");
        let token = server.register_and_login(&email).await;
        server
            .register(&email, PASSWORD, "Again")
            .await
            .expect_problem(409, "email_taken");
        server
            .login(&email, "wrong-password-123")
            .await
            .expect_problem(401, "bad_credentials");
        server
            .login(&unique_email("nobody"), PASSWORD)
            .await
            .expect_problem(401, "bad_credentials");
        let me = server.get("/api/v1/me", Some(&token)).await;
        assert_eq!(me.expect(200)["email"], email.as_str());

        // Logout kills the token at once.
        let r = server.post_empty("/api/v1/auth/logout", Some(&token)).await;
        assert_eq!(r.status, 204, "logout: {}", r.text);
        server
            .get("/api/v1/me", Some(&token))
            .await
            .expect_problem(401, "unauthenticated");
        server
            .reserve(&token, &sale, 1)
            .await
            .expect_problem(401, "unauthenticated");
        server
            .post_empty("/api/v1/auth/logout", Some(&token))
            .await
            .expect_problem(401, "unauthenticated");
        // Logging in again works.
        let again = server.login_token(&email, PASSWORD).await;
        assert_ne!(again, token);
        server.get("/api/v1/me", Some(&again)).await.expect(200);
        server
            .get("/api/v1/notifications", None)
            .await
            .expect_problem(401, "unauthenticated");
    }

    async fn buyers_are_forbidden_on_admin_routes(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 10, 5, 300).await;
        let buyer = server.buyer().await;
        let body = sale_body(10, 1, 300);
        let patch = json!({"total_stock": 1});
        let cases: Vec<(Method, String, Option<&Value>)> = vec![
            (Method::POST, "/api/v1/admin/sales".into(), Some(&body)),
            (
                Method::PATCH,
                format!("/api/v1/admin/sales/{sale}"),
                Some(&patch),
            ),
            (
                Method::POST,
                format!("/api/v1/admin/sales/{sale}/pause"),
                None,
            ),
            (
                Method::POST,
                format!("/api/v1/admin/sales/{sale}/resume"),
                None,
            ),
            (
                Method::POST,
                format!("/api/v1/admin/sales/{sale}/stop"),
                None,
            ),
            (
                Method::GET,
                format!("/api/v1/admin/sales/{sale}/metrics"),
                None,
            ),
            (Method::GET, "/api/v1/admin/audit".into(), None),
        ];
        for (method, path, body) in &cases {
            let r = server.call(method.clone(), path, Some(&buyer), *body).await;
            assert!(
                r.status == 403 && r.code() == "forbidden",
                "buyer {method} {path}: expected 403 forbidden, got {} {}",
                r.status,
                r.text
            );
            if let Some(e) = r.problem_shape_error() {
                panic!("buyer {method} {path}: {e}");
            }
            let r = server.call(method.clone(), path, None, *body).await;
            assert!(
                r.status == 401 && r.code() == "unauthenticated",
                "anonymous {method} {path}: expected 401 unauthenticated, got {} {}",
                r.status,
                r.text
            );
            if let Some(e) = r.problem_shape_error() {
                panic!("anonymous {method} {path}: {e}");
            }
        }
        // None of it took effect.
        let s = server.sale(&sale).await;
        assert_eq!(s["status"], "live", "{s}");
        assert_eq!(s["total_stock"], 10, "{s}");
    }

    async fn wrong_method_is_405(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 10, 5, 300).await;
        let buyer = server.buyer().await;
        let cases: Vec<(Method, String)> = vec![
            (Method::DELETE, "/api/v1/sales".into()),
            (Method::POST, format!("/api/v1/sales/{sale}")),
            (Method::PUT, "/api/v1/cart/items".into()),
            (Method::GET, "/api/v1/cart/items".into()),
            (Method::GET, "/api/v1/auth/login".into()),
            (Method::DELETE, "/api/v1/orders".into()),
            (Method::GET, "/api/v1/payments/webhook".into()),
            (Method::POST, "/healthz".into()),
        ];
        for (method, path) in cases {
            let r = server.call(method.clone(), &path, Some(&buyer), None).await;
            assert!(
                r.status == 405 && r.code() == "method_not_allowed",
                "{method} {path}: expected 405 method_not_allowed, got {} {}",
                r.status,
                r.text
            );
            if let Some(e) = r.problem_shape_error() {
                panic!("{method} {path}: {e}");
            }
        }
    }

    async fn reserve_refusals_follow_the_contract_and_its_order(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let buyer = server.buyer().await;

        // Limit.
        let sale = server.create_sale(&admin, 10, 2, 300).await;
        server
            .reserve(&buyer, &sale, 3)
            .await
            .expect_problem(422, "limit_exceeded");
        let hold = server.hold(&buyer, &sale, 1).await;
        server
            .reserve(&buyer, &sale, 2)
            .await
            .expect_problem(422, "limit_exceeded");
        server
            .patch(
                &format!("/api/v1/cart/items/{hold}"),
                Some(&buyer),
                &json!({"quantity": 3}),
            )
            .await
            .expect_problem(422, "limit_exceeded");
        let r = server
            .patch(
                &format!("/api/v1/cart/items/{hold}"),
                Some(&buyer),
                &json!({"quantity": 2}),
            )
            .await;
        assert_eq!(r.expect(200)["quantity"], 2, "{}", r.text);
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(m["held"], 2, "{m}");

        // Input is judged before existence, existence before liveness.
        let no_sale = unknown_like(&sale);
        server
            .reserve(&buyer, &no_sale, 0)
            .await
            .expect_problem(422, "invalid_input");
        server
            .reserve(&buyer, &no_sale, 1)
            .await
            .expect_problem(404, "not_found");

        // Paused: not live, whatever the quantity (liveness before the limit).
        let paused = server.create_sale(&admin, 10, 2, 300).await;
        server
            .admin_action(&admin, &paused, "pause")
            .await
            .expect(200);
        server
            .reserve(&buyer, &paused, 1)
            .await
            .expect_problem(409, "sale_not_live");
        server
            .reserve(&buyer, &paused, 5)
            .await
            .expect_problem(409, "sale_not_live");
        server
            .admin_action(&admin, &paused, "resume")
            .await
            .expect(200);
        server.hold(&buyer, &paused, 1).await;

        // Scheduled and stopped sales are not live either.
        let mut body = sale_body(10, 2, 300);
        body["starts_at"] = json!(rfc3339(unix_now() + 3600));
        body["ends_at"] = json!(rfc3339(unix_now() + 7200));
        let r = server.create_sale_with(&admin, &body).await;
        let scheduled = r.expect(201)["sale_id"].as_str().unwrap().to_string();
        server
            .reserve(&buyer, &scheduled, 1)
            .await
            .expect_problem(409, "sale_not_live");
        let stopped = server.create_sale(&admin, 10, 2, 300).await;
        server
            .admin_action(&admin, &stopped, "stop")
            .await
            .expect(200);
        server
            .reserve(&buyer, &stopped, 1)
            .await
            .expect_problem(409, "sale_not_live");

        // Limit before stock: a sold-out sale still says limit_exceeded to a request above it.
        let tiny = server.create_sale(&admin, 1, 2, 300).await;
        let other = server.buyer().await;
        server.hold(&other, &tiny, 1).await;
        server
            .reserve(&buyer, &tiny, 3)
            .await
            .expect_problem(422, "limit_exceeded");
        server
            .reserve(&buyer, &tiny, 1)
            .await
            .expect_problem(409, "sold_out");
        // Growing a hold beyond the stock is sold_out.
        let small = server.create_sale(&admin, 2, 5, 300).await;
        let h = server.hold(&buyer, &small, 1).await;
        server
            .patch(
                &format!("/api/v1/cart/items/{h}"),
                Some(&buyer),
                &json!({"quantity": 3}),
            )
            .await
            .expect_problem(409, "sold_out");
        let m = server.metrics(&admin, &small).await;
        assert_invariant(&m);
        assert_eq!(m["held"], 1, "{m}");
    }

    async fn flooding_one_route_is_rate_limited(mode) {
        let server = TestServer::start_with_in(mode.clone(),
            &[
                ("STAMPEDE_RATE_LIMIT_PER_SEC", "5"),
                ("STAMPEDE_IP_RATE_LIMIT_PER_SEC", "5"),
            ],
            None,
        )
        .await;
        let api: Api = server.api();
        let r = until_admitted("admin login", || {
            api.login(common::ADMIN_EMAIL, common::ADMIN_PASSWORD)
        })
        .await;
        let admin = r.expect(200)["token"].as_str().unwrap().to_string();
        let r = until_admitted("create sale", || {
            let (api, admin) = (api.clone(), admin.clone());
            async move {
                api.create_sale_with(&admin, &sale_body(1000, 1000, 300))
                    .await
            }
        })
        .await;
        let sale = r.expect(201)["sale_id"].as_str().unwrap().to_string();
        let email = unique_email("flood");
        until_admitted("register", || api.register(&email, PASSWORD, "Flood"))
            .await
            .expect(201);
        let r = until_admitted("login", || api.login(&email, PASSWORD)).await;
        let token = r.expect(200)["token"].as_str().unwrap().to_string();

        let shots: Vec<Resp> =
            futures::future::join_all((0..40).map(|_| api.reserve(&token, &sale, 1))).await;
        let limited: Vec<&Resp> = shots.iter().filter(|r| r.status == 429).collect();
        for r in &shots {
            assert!(
                r.status == 201 || r.status == 429,
                "reserve under flood: expected 201 or 429, got {} {}",
                r.status,
                r.text
            );
        }
        assert!(
            !limited.is_empty(),
            "40 reserves at once against 5/s must be limited"
        );
        let r = limited[0];
        r.expect_problem(429, "rate_limited");
        let retry = r
            .header("retry-after")
            .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", r.headers));
        assert!(
            retry.trim().parse::<u64>().is_ok(),
            "Retry-After in seconds: {retry:?}"
        );
        assert!(
            r.headers
                .keys()
                .any(|k| k.as_str().to_ascii_lowercase().starts_with("ratelimit")),
            "429 without RateLimit-* headers: {:?}",
            r.headers
        );
        let granted = shots.iter().filter(|r| r.status == 201).count();
        let m = until_admitted("metrics", || {
            let (api, admin, sale) = (api.clone(), admin.clone(), sale.clone());
            async move {
                api.get(&format!("/api/v1/admin/sales/{sale}/metrics"), Some(&admin))
                    .await
            }
        })
        .await;
        assert_eq!(
            m.expect(200)["held"].as_u64(),
            Some(granted as u64),
            "only the admitted reserves hold stock"
        );

        // The limit lifts by itself.
        until_admitted("the rate limit to lift", || api.reserve(&token, &sale, 1))
            .await
            .expect(201);
    }
}
