//! The audit log of a scripted sale: every admin action and every money movement, in the order
//! it happened, with who did it and the values before and after; filters and paging; and no way
//! to change it through the API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde_json::{json, Value};

use common::TestServer;

async fn all_entries(server: &TestServer, admin: &str, query: &str) -> Vec<Value> {
    let r = server
        .get(&format!("/api/v1/admin/audit?{query}"), Some(admin))
        .await;
    r.expect(200)["entries"].as_array().cloned().unwrap()
}

in_both_modes! {
    async fn every_admin_and_money_action_of_a_scripted_sale_is_audited_in_order(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let me = server.get("/api/v1/me", Some(&admin)).await.expect(200)["user_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let start = all_entries(&server, &admin, "limit=1000").await.len();

        let sale = server.create_sale(&admin, 10, 2, 600).await;
        server
            .patch(&format!("/api/v1/admin/sales/{sale}"), Some(&admin), &json!({"name": "Renamed"}))
            .await
            .expect(200);
        server.admin_action(&admin, &sale, "pause").await.expect(200);
        server.admin_action(&admin, &sale, "resume").await.expect(200);

        let buyer = server.buyer().await;
        let paid_hold = server.hold(&buyer, &sale, 1).await;
        let paid = server.order(&buyer, &[&paid_hold], "tok_ok", None).await;
        let paid_id = paid.expect(201)["order_id"].as_str().unwrap().to_owned();
        let declined_hold = server.hold(&buyer, &sale, 1).await;
        let declined = server.order(&buyer, &[&declined_hold], "tok_decline", None).await;
        assert_eq!(declined.status, 402, "{}", declined.text);
        server
            .post_empty(&format!("/api/v1/orders/{paid_id}/cancel"), Some(&buyer))
            .await
            .expect(200);
        server.admin_action(&admin, &sale, "stop").await.expect(200);

        let entries = all_entries(&server, &admin, "limit=1000").await;
        let script: Vec<(String, String)> = entries[start..]
            .iter()
            .map(|e| {
                (
                    e["action"].as_str().unwrap().to_owned(),
                    e["target"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let declined_order = declined.json["order_id"].as_str().map(str::to_owned);
        let mut expected = vec![
            ("sale.create".to_owned(), sale.clone()),
            ("sale.patch".to_owned(), sale.clone()),
            ("sale.pause".to_owned(), sale.clone()),
            ("sale.resume".to_owned(), sale.clone()),
            ("payment.authorize".to_owned(), paid_id.clone()),
            ("payment.capture".to_owned(), paid_id.clone()),
        ];
        if let Some(declined_order) = declined_order {
            expected.push(("payment.authorize".to_owned(), declined_order));
        }
        expected.push(("payment.refund".to_owned(), paid_id.clone()));
        expected.push(("sale.stop".to_owned(), sale.clone()));
        let script_actions: Vec<&str> = script.iter().map(|(a, _)| a.as_str()).collect();
        let expected_actions: Vec<&str> = expected.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(script_actions, expected_actions, "entries: {script:?}");
        for ((action, target), (want_action, want_target)) in script.iter().zip(&expected) {
            assert_eq!((action, target), (want_action, want_target));
        }

        // Who, when, before and after.
        let mine = &entries[start..];
        assert_eq!(mine[0]["actor"], me.as_str(), "the admin is the actor of admin actions");
        assert!(mine[0]["before"].is_null() && mine[0]["after"]["name"].is_string());
        assert_eq!(mine[1]["before"]["name"], mine[0]["after"]["name"]);
        assert_eq!(mine[1]["after"]["name"], "Renamed");
        let at = |e: &Value| common::parse_rfc3339(e["at"].as_str().unwrap()).unwrap();
        assert!(mine.windows(2).all(|w| at(&w[0]) <= at(&w[1])), "times never go back");
        assert!(mine.windows(2).all(|w| w[0]["id"].as_str() < w[1]["id"].as_str()));

        // Filters and paging.
        let captures = all_entries(&server, &admin, "action=payment.capture&limit=1000").await;
        assert!(captures.iter().all(|e| e["action"] == "payment.capture"));
        assert!(captures.iter().any(|e| e["target"] == paid_id.as_str()));
        let by_admin = all_entries(&server, &admin, &format!("actor={me}&limit=1000")).await;
        assert!(by_admin.iter().all(|e| e["actor"] == me.as_str()));
        assert!(by_admin.len() >= 5);
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let q = match &after {
                Some(a) => format!("/api/v1/admin/audit?limit=3&after={a}"),
                None => "/api/v1/admin/audit?limit=3".to_owned(),
            };
            let page = server.get(&q, Some(&admin)).await.expect(200).clone();
            paged.extend(page["entries"].as_array().cloned().unwrap());
            match page["next"].as_str() {
                Some(n) => after = Some(n.to_owned()),
                None => break,
            }
        }
        assert_eq!(paged, entries, "paging walks the whole log once, in order");

        // Append-only: nothing in the API edits or deletes an entry.
        let id = mine[0]["id"].as_str().unwrap();
        for method in [reqwest::Method::DELETE, reqwest::Method::PUT, reqwest::Method::PATCH] {
            for path in ["/api/v1/admin/audit".to_owned(), format!("/api/v1/admin/audit/{id}")] {
                let r = server.send(server.request(method.clone(), &path, Some(&admin))).await;
                assert!([404, 405].contains(&r.status), "{method} {path}: {}", r.status);
            }
        }
        assert_eq!(all_entries(&server, &admin, "limit=1000").await, entries);
    }
}
