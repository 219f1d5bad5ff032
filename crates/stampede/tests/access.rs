//! Access control generated from the route table (the served OpenAPI document), so a new route
//! is covered the day it is added: every admin route refuses a buyer (403) and an anonymous
//! caller (401), before any body or query string is read; every route that takes the id of a buyer's hold or order answers 404 to any
//! other buyer, while the owner can reach it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::TestServer;
use reqwest::Method;
use serde_json::{json, Value};

/// Every (method, path template) in the served document.
async fn routes(server: &TestServer) -> Vec<(Method, String)> {
    let doc = server.get("/openapi.json", None).await.expect(200).clone();
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            out.push((
                Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                path.clone(),
            ));
        }
    }
    out
}

fn fill(template: &str, ids: &BTreeMap<&str, String>) -> String {
    template
        .split('/')
        .map(|seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(param) => ids
                .get(param)
                .unwrap_or_else(|| panic!("no fixture for path parameter {{{param}}} in {template}: add one to this test"))
                .clone(),
            None => seg.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A body that parses for routes that need one, so refusals are about access, not input.
fn body_for(method: &Method, path: &str) -> Option<Value> {
    match (method.as_str(), path) {
        ("PATCH", p) if p.contains("/cart/items/") => Some(json!({ "quantity": 1 })),
        ("PATCH", p) if p.contains("/admin/sales/") => Some(json!({ "name": "x" })),
        ("PATCH", p) if p.contains("/admin/products/") || p.contains("/admin/drops/") => {
            Some(json!({ "name": "x" }))
        }
        ("POST", "/api/v1/admin/products") => Some(json!({
            "name": "x", "regular_price": "2.00", "currency": "EUR"
        })),
        ("POST", "/api/v1/admin/drops") => Some(json!({
            "name": "x", "starts_at": "2030-01-01T00:00:00Z", "ends_at": "2030-01-02T00:00:00Z"
        })),
        ("POST", "/api/v1/admin/sales") => Some(json!({
            "name": "x", "original_price": "2.00", "sale_price": "1.00", "currency": "EUR",
            "total_stock": 1, "starts_at": "2030-01-01T00:00:00Z",
            "ends_at": "2030-01-02T00:00:00Z", "per_user_limit": 1
        })),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_refuse_buyers_and_anonymous_callers() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let sale = server.create_sale(&admin, 5, 1, 300).await;
    let buyer = server.buyer().await;
    let product = server
        .post(
            "/api/v1/admin/products",
            Some(&admin),
            &body_for(&Method::POST, "/api/v1/admin/products").unwrap(),
        )
        .await;
    let drop = server
        .post(
            "/api/v1/admin/drops",
            Some(&admin),
            &body_for(&Method::POST, "/api/v1/admin/drops").unwrap(),
        )
        .await;
    let ids = BTreeMap::from([
        ("sale_id", sale.clone()),
        ("user_id", server.user_id_of(&buyer).await),
        (
            "product_id",
            product.expect(201)["product_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        ),
        (
            "drop_id",
            drop.expect(201)["drop_id"].as_str().unwrap().to_owned(),
        ),
    ]);
    let mut checked = 0;
    for (method, template) in routes(&server).await {
        if !template.starts_with("/api/v1/admin") {
            continue;
        }
        let path = fill(&template, &ids);
        for (token, status, code) in [
            (Some(buyer.as_str()), 403, "forbidden"),
            (None, 401, "unauthenticated"),
        ] {
            let mut rb = server.request(method.clone(), &path, token);
            if let Some(b) = body_for(&method, &template) {
                rb = rb.json(&b);
            }
            let r = server.send(rb).await;
            assert_eq!(
                (r.status, r.code()),
                (status, code),
                "{method} {template} as {}: {}",
                if token.is_some() { "a buyer" } else { "nobody" },
                r.text
            );
            // Authorization comes before the body is read: a body that does not parse (and a
            // query string that does not either) still gets the refusal, never 422.
            let rb = server
                .request(method.clone(), &format!("{path}?limit=lots"), token)
                .header("content-type", "application/json")
                .body(r#"{"total_stock": "lots", "#);
            let r = server.send(rb).await;
            assert_eq!(
                (r.status, r.code()),
                (status, code),
                "{method} {template} with an invalid body as {}: {}",
                if token.is_some() { "a buyer" } else { "nobody" },
                r.text
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 7,
        "expected the admin routes of the contract, found {checked}"
    );
    // The sale is untouched by all those refused calls.
    let m = server.metrics(&admin, &sale).await;
    assert_eq!(
        (m["available"].as_i64(), m["invariant_ok"].as_bool()),
        (Some(5), Some(true))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_buyers_holds_and_orders_are_not_found() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let sale = server.create_sale(&admin, 10, 3, 300).await;
    let owner = server.buyer().await;
    let stranger = server.buyer().await;
    let paid_hold = server.hold(&owner, &sale, 1).await;
    let order = server.order(&owner, &[&paid_hold], "tok_ok", None).await;
    let order_id = order.expect(201)["order_id"].as_str().unwrap().to_owned();
    let open_hold = server.hold(&owner, &sale, 1).await;
    let ids = BTreeMap::from([
        ("hold_id", open_hold.clone()),
        ("order_id", order_id.clone()),
        ("sale_id", sale.clone()),
    ]);
    let mut checked = 0;
    for (method, template) in routes(&server).await {
        let owned = template.contains("{hold_id}") || template.contains("{order_id}");
        if !owned {
            continue;
        }
        let path = fill(&template, &ids);
        let mut rb = server.request(method.clone(), &path, Some(&stranger));
        if let Some(b) = body_for(&method, &template) {
            rb = rb.json(&b);
        }
        let r = server.send(rb).await;
        assert_eq!(
            (r.status, r.code()),
            (404, "not_found"),
            "{method} {template} with another buyer's id: {}",
            r.text
        );
        assert!(
            !r.text.contains(&owner) && !r.text.contains("\"quantity\""),
            "a 404 must not leak the owner's data: {}",
            r.text
        );
        checked += 1;
    }
    assert!(
        checked >= 4,
        "expected hold and order routes, found {checked}"
    );
    // Nothing the stranger did changed the owner's things.
    let cart = server.cart(&owner).await;
    assert_eq!(cart["items"].as_array().unwrap().len(), 1, "{cart}");
    let r = server
        .get(&format!("/api/v1/orders/{order_id}"), Some(&owner))
        .await;
    assert_eq!(r.expect(200)["status"], "confirmed");
}
