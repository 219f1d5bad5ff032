//! What operators of big sales ask of the room, over HTTP in both modes (cluster: two nodes of
//! one deployment): the denial-of-inventory guard (a cap on unpaid holds open at once per
//! account and per device, across all sales, that reserves arriving together on several nodes
//! cannot pass) and the hoarders' list with its one-click ban.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{poll_until, Api, Mode, Resp, TestServer};
use serde_json::{json, Value};

/// One server in embedded mode; two nodes of one deployment in cluster mode, both with `env`.
async fn servers(mode: &Mode, env: &[(&str, &str)]) -> Vec<TestServer> {
    let n = if mode.is_cluster() { 2 } else { 1 };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(TestServer::start_with_in(mode.clone(), env, None).await);
    }
    out
}

/// A reserve of one unit, from `device` if given.
async fn reserve_from(api: &Api, token: &str, sale: &str, device: Option<&str>) -> Resp {
    let mut rb = api
        .request(reqwest::Method::POST, "/api/v1/cart/items", Some(token))
        .json(&json!({ "sale_id": sale, "quantity": 1 }));
    if let Some(device) = device {
        rb = rb.header("x-device-id", device);
    }
    api.send(rb).await
}

const CAP_ENV: [(&str, &str); 2] = [
    ("STAMPEDE_MAX_OPEN_HOLDS_PER_ACCOUNT", "2"),
    ("STAMPEDE_MAX_OPEN_HOLDS_PER_DEVICE", "3"),
];

in_both_modes! {
    /// A buyer at the cap gets `409 hold_cap_reached` in any sale until a hold closes; a device
    /// is capped across its accounts; and eight reserves of one buyer in eight sales, fired at
    /// once on every node, open exactly the cap's number of holds, round after round.
    async fn a_buyer_at_the_hold_cap_gets_its_code_even_when_reserving_everywhere_at_once(mode) {
        let nodes = servers(&mode, &CAP_ENV).await;
        let admin = nodes[0].admin_token().await;
        let mut sales = Vec::new();
        for _ in 0..8 {
            sales.push(nodes[0].create_sale(&admin, 50, 5, 300).await);
        }

        let buyer = nodes[0].buyer().await;
        let first = nodes[0].hold(&buyer, &sales[0], 1).await;
        nodes[0].hold(&buyer, &sales[1], 1).await;
        let r = nodes[0].reserve(&buyer, &sales[2], 1).await;
        r.expect_problem(409, "hold_cap_reached");
        assert!(r.json["detail"].as_str().unwrap().contains("pay for or release"), "{}", r.text);
        // Nothing was taken for the refused reserve.
        assert_eq!(nodes[0].sale(&sales[2]).await["available"], 50);
        // Releasing one frees its place, in another sale too.
        let r = nodes[0].delete(&format!("/api/v1/cart/items/{first}"), Some(&buyer)).await;
        assert_eq!(r.status, 204, "{}", r.text);
        nodes[0].hold(&buyer, &sales[2], 1).await;

        // Per device, across accounts: three open from one device, the fourth account is
        // refused there, and the same account from another device is not.
        let others = nodes[0].buyers(4, 4).await;
        for token in &others[..3] {
            reserve_from(&nodes[0], token, &sales[3], Some("shared-device")).await.expect(201);
        }
        reserve_from(&nodes[0], &others[3], &sales[4], Some("shared-device"))
            .await
            .expect_problem(409, "hold_cap_reached");
        reserve_from(&nodes[0], &others[3], &sales[4], Some("own-device")).await.expect(201);

        // Reserves of one buyer in every sale at once, spread over the nodes.
        for round in 0..5 {
            let buyer = nodes[0].buyer().await;
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(sales.len()));
            let mut tasks = Vec::new();
            for (i, sale) in sales.iter().enumerate() {
                let api = nodes[i % nodes.len()].api();
                let (buyer, sale, barrier) = (buyer.clone(), sale.clone(), barrier.clone());
                tasks.push(tokio::spawn(async move {
                    barrier.wait().await;
                    api.reserve(&buyer, &sale, 1).await
                }));
            }
            let mut opened = 0;
            for t in tasks {
                let r = t.await.unwrap();
                match r.status {
                    201 => opened += 1,
                    _ => r.expect_problem(409, "hold_cap_reached"),
                }
            }
            assert_eq!(opened, 2, "round {round}: one account's open holds at once");
            let cart = nodes[0].cart(&buyer).await;
            assert_eq!(cart["items"].as_array().unwrap().len(), 2, "{cart}");
        }
        for sale in &sales {
            common::assert_invariant(&nodes[0].metrics(&admin, sale).await);
        }
    }

    /// Holds that lapse unpaid again and again put the account and its device on the
    /// hoarders' list; the one-click ban bans it, ends its session and gives its live hold's
    /// stock back at once, and the audit log says who did it.
    async fn the_hoarders_list_shows_an_account_whose_holds_lapsed_repeatedly(mode) {
        let nodes = servers(&mode, &[]).await;
        let node = &nodes[0];
        let admin = node.admin_token().await;
        let mut short = Vec::new();
        for _ in 0..3 {
            short.push(node.create_sale(&admin, 10, 1, 1).await);
        }
        let long = node.create_sale(&admin, 10, 1, 300).await;
        let hoarder = node.buyer().await;
        let hoarder_id = node.user_id_of(&hoarder).await;
        let payer = node.buyer().await;
        let payer_id = node.user_id_of(&payer).await;
        for sale in &short {
            reserve_from(node, &hoarder, sale, Some("bot-farm-7")).await.expect(201);
        }
        // Someone who pays is never a hoarder.
        let paid = node.hold(&payer, &short[0], 1).await;
        node.post("/api/v1/orders", Some(&payer), &common::order_body(&[&paid], "tok_ok"))
            .await
            .expect(201);

        let listed: Value = poll_until(
            "the hoarder's three lapsed holds to be listed",
            Duration::from_secs(20),
            Duration::from_millis(200),
            || async {
                let r = node.get("/api/v1/admin/hoarders?min_lapsed=3", Some(&admin)).await;
                let body = r.expect(200).clone();
                let found = body["accounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["subject"] == hoarder_id.as_str());
                found.then_some(body)
            },
        )
        .await;
        let account = listed["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["subject"] == hoarder_id.as_str())
            .unwrap();
        assert_eq!(account["lapsed"], 3, "{listed}");
        assert_eq!(account["accounts"][0]["user_id"], hoarder_id.as_str());
        assert_eq!(account["accounts"][0]["status"], "active");
        let device = listed["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["subject"] == "bot-farm-7")
            .unwrap_or_else(|| panic!("the device is listed: {listed}"));
        assert_eq!(device["lapsed"], 3);
        assert!(
            !listed["accounts"].as_array().unwrap().iter().any(|a| a["subject"] == payer_id.as_str()),
            "{listed}"
        );
        // Buyers may not see the list.
        node.get("/api/v1/admin/hoarders", Some(&payer)).await.expect_problem(403, "forbidden");

        // The hoarder holds again; the one-click ban (from any node) returns that unit at once.
        node.hold(&hoarder, &long, 1).await;
        assert_eq!(node.sale(&long).await["available"], 9);
        let banner = &nodes[nodes.len() - 1];
        let r = banner
            .post(
                "/api/v1/admin/hoarders/ban",
                Some(&admin),
                &json!({ "device_id": "bot-farm-7", "reason": "holds lapse unpaid, again and again" }),
            )
            .await;
        let body = r.expect(200);
        assert_eq!(body["banned"][0]["user_id"], hoarder_id.as_str(), "{body}");
        assert_eq!(body["banned"][0]["status"], "banned");
        assert_eq!(node.sale(&long).await["available"], 10, "the ban gave the stock back");
        poll_until("the hoarder's session to end", Duration::from_secs(5), Duration::from_millis(50), || async {
            (node.get("/api/v1/me", Some(&hoarder)).await.status == 401).then_some(())
        })
        .await;
        let audit = node
            .get("/api/v1/admin/audit?action=hoarder.ban", Some(&admin))
            .await;
        let entries = audit.expect(200)["entries"].as_array().unwrap().clone();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0]["target"], "bot-farm-7");
        assert_eq!(entries[0]["actor"], node.user_id_of(&admin).await.as_str());
        assert_eq!(entries[0]["after"]["banned"][0], hoarder_id.as_str());
    }
}
