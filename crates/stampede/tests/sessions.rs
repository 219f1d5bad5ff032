//! Sessions are signed tokens checked in memory: a crowd of buyers the node has never seen costs
//! the store nothing, and an ended session (logout, a ban) is refused at once on the node that
//! ended it, within a second on every other node, and after a restart of any node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use common::TestServer;
use stampede_core::session::{self, SessionClaims};
use stampede_core::{Timestamp, UserId};

/// The key every test server of this file signs with, so the test can mint tokens of its own.
const SESSION_KEY: &str = "5e55105e55105e55105e55105e55105e55105e55105e55105e55105e55105e55";

/// Store operations that background jobs call on their own schedule (sweeper, reconciler,
/// outbox relay, money reconciliation, revocation refresh, stock publisher): not the request
/// path's.
const BACKGROUND_OPS: &[&str] = &[
    "expire_due_holds",
    "warn_expiring_holds",
    "sales",
    "gate_seeds",
    "outbox_backlog",
    "outbox_claim",
    "outbox_delivered",
    "outbox_release",
    "webhook_claim",
    "webhook_backlog",
    "payments_owed",
    "stuck_orders",
    "revoked_sessions",
    "stock_audit",
    "ping",
];

/// `stampede_store_calls_total` per operation, from `/metrics`.
async fn store_calls(server: &TestServer) -> HashMap<String, u64> {
    let text = server.get("/metrics", None).await.text;
    let mut calls = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("stampede_store_calls_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Some(op) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("op=\""))
            .map(|o| o.trim_end_matches('"'))
        else {
            continue;
        };
        let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        *calls.entry(op.to_string()).or_default() += n;
    }
    calls
}

fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut d: Vec<(String, u64)> = after
        .iter()
        .map(|(op, n)| (op.clone(), n - before.get(op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    d.sort();
    d
}

/// A token for a buyer this server has never heard of, signed with the deployment's key.
fn mint(i: u128) -> String {
    let mut key = [0_u8; 32];
    hex_decode(SESSION_KEY, &mut key);
    session::sign(
        &key,
        &SessionClaims {
            user_id: UserId::generate(common::unix_now_millis(), 0xb0b0_0000_0000 + i),
            admin: false,
            session_id: session::session_id(0x5e55_0000_0000 + i),
            expires_at: Timestamp(common::unix_now_millis() + 3_600_000),
        },
    )
}

fn hex_decode(s: &str, out: &mut [u8; 32]) {
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
    }
}

in_both_modes! {
    /// 10,000 distinct authenticated buyers, none of them seen before by the node, each reserve
    /// once on a sold-out sale: every one is told `sold_out`, and the request path reads nothing
    /// from the store (no session lookup, no sale read). Before signed sessions every buyer
    /// cost a session read.
    async fn ten_thousand_distinct_buyers_on_a_sold_out_sale_cost_the_store_nothing(mode) {
        let server =
            TestServer::start_with_in(mode, &[("STAMPEDE_SESSION_KEY", SESSION_KEY)], None).await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 1, 1, 300).await;
        let first = server.buyer().await;
        server.hold(&first, &sale, 1).await;
        // Warm: the sale's configuration is in memory and (cluster) the sold-out flag is set.
        let minted = mint(u128::MAX >> 8);
        server.reserve(&minted, &sale, 1).await.expect_problem(409, "sold_out");
        // The stock publisher reads the sale once after the hold (every 200 ms, coalesced):
        // let it, so what follows counts the crowd only.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let before = store_calls(&server).await;
        assert!(!before.is_empty(), "/metrics must count store calls");
        let buyers = 10_000_u128;
        let started = Instant::now();
        let api = server.api();
        let outcomes: Vec<(u16, String)> = futures::stream::iter(0..buyers)
            .map(|i| {
                let api = api.clone();
                let sale = sale.clone();
                async move {
                    let r = api.reserve(&mint(i), &sale, 1).await;
                    (r.status, r.code().to_string())
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let after = store_calls(&server).await;
        let sold_out = outcomes
            .iter()
            .filter(|(s, c)| *s == 409 && c == "sold_out")
            .count();
        assert_eq!(
            sold_out,
            outcomes.len(),
            "every buyer is told sold_out; others: {:?}",
            outcomes.iter().filter(|(s, _)| *s != 409).take(5).collect::<Vec<_>>()
        );
        let all = delta(&before, &after);
        let request_path: Vec<&(String, u64)> = all
            .iter()
            .filter(|(op, _)| !BACKGROUND_OPS.contains(&op.as_str()))
            .collect();
        eprintln!(
            "{buyers} distinct buyers in {:?}; store calls meanwhile: {all:?}",
            started.elapsed()
        );
        assert!(
            request_path.is_empty(),
            "the request path read the store for a sold-out reserve: {request_path:?}"
        );
        let background: u64 = all.iter().map(|(_, n)| n).sum();
        assert!(
            background < 2_000,
            "store calls grow with the crowd even among background operations: {all:?}"
        );
    }

    /// 2,000 buyers the node has never seen, waiting in a sale's line, each ask for their
    /// place: every answer comes from the room (a Fenwick tree or a sorted set: O(log n)) and
    /// the store is not read at all.
    async fn polling_a_place_in_line_costs_the_store_nothing(mode) {
        let server =
            TestServer::start_with_in(mode, &[("STAMPEDE_SESSION_KEY", SESSION_KEY)], None).await;
        let admin = server.admin_token().await;
        let mut body = common::sale_body(100, 1, 300);
        body["queue_required"] = json!(true);
        body["starts_at"] = json!(common::rfc3339(common::unix_now() + 600));
        let sale = server.create_sale_with(&admin, &body).await.expect(201)["sale_id"]
            .as_str()
            .expect("sale id")
            .to_string();
        let api = server.api();
        let buyers: Vec<String> = (0..2_000_u128).map(|i| mint(1_000_000 + i)).collect();
        let joined: Vec<u16> = futures::stream::iter(buyers.iter().enumerate())
            .map(|(i, token)| {
                let (api, sale) = (api.clone(), sale.clone());
                async move {
                    api.post(
                        &format!("/api/v1/sales/{sale}/queue"),
                        Some(token),
                        &json!({ "device_id": format!("phone-{i}") }),
                    )
                    .await
                    .status
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        assert!(joined.iter().all(|s| *s == 202), "every buyer joins: {:?}", &joined[..5]);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let before = store_calls(&server).await;
        let places: Vec<(u16, String)> = futures::stream::iter(buyers.iter())
            .map(|token| {
                let (api, sale) = (api.clone(), sale.clone());
                async move {
                    let r = api
                        .get(&format!("/api/v1/sales/{sale}/queue/me"), Some(token))
                        .await;
                    (r.status, r.json["status"].as_str().unwrap_or("").to_string())
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let after = store_calls(&server).await;
        assert!(
            places.iter().all(|(s, st)| *s == 200 && st == "waiting"),
            "every buyer has a place: {:?}",
            places.iter().find(|(s, st)| *s != 200 || st != "waiting")
        );
        let all = delta(&before, &after);
        let request_path: Vec<&(String, u64)> = all
            .iter()
            .filter(|(op, _)| !BACKGROUND_OPS.contains(&op.as_str()))
            .collect();
        assert!(
            request_path.is_empty(),
            "polling a place read the store: {request_path:?}"
        );
    }

    /// Logout and a ban end sessions at once on the node that ended them, within a second on
    /// another node of the cluster, and after either node restarts.
    async fn logout_and_ban_are_refused_everywhere_at_once_and_after_restarts(mode) {
        let n = if mode.is_cluster() { 2 } else { 1 };
        let mut nodes = Vec::new();
        for _ in 0..n {
            nodes.push(TestServer::start_in(mode.clone()).await);
        }
        let admin = nodes[0].admin_token().await;
        // One buyer logs out, another is banned (with two sessions).
        let leaver = nodes[0].buyer().await;
        let email = common::unique_email("banned");
        let banned = nodes[0].register_and_login(&email).await;
        let banned_too = nodes[n - 1].login_token(&email, common::PASSWORD).await;
        let stays = nodes[n - 1].buyer().await;
        for node in &nodes {
            for token in [&leaver, &banned, &banned_too, &stays] {
                node.get("/api/v1/cart", Some(token)).await.expect(200);
            }
        }
        let r = nodes[0].post_empty("/api/v1/auth/logout", Some(&leaver)).await;
        assert_eq!(r.status, 204, "logout: {}", r.text);
        nodes[0]
            .get("/api/v1/cart", Some(&leaver))
            .await
            .expect_problem(401, "unauthenticated");
        let banned_id = nodes[0].user_id_of(&banned).await;
        nodes[0]
            .post(
                &format!("/api/v1/admin/users/{banned_id}/status"),
                Some(&admin),
                &json!({ "status": "banned", "reason": "scalping" }),
            )
            .await
            .expect(200);
        for token in [&banned, &banned_too] {
            nodes[0]
                .get("/api/v1/cart", Some(token))
                .await
                .expect_problem(401, "unauthenticated");
        }
        let ended_at = Instant::now();
        if n > 1 {
            // The other node hears of it within a second.
            for token in [&leaver, &banned, &banned_too] {
                loop {
                    let r = nodes[1].get("/api/v1/cart", Some(token)).await;
                    if r.status == 401 {
                        break;
                    }
                    assert!(
                        ended_at.elapsed() < Duration::from_secs(1),
                        "an ended session still works on another node after {:?}",
                        ended_at.elapsed()
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            eprintln!("refused on the second node within {:?}", ended_at.elapsed());
        }
        for i in 0..n {
            nodes[i].restart().await;
            for node in &nodes {
                for token in [&leaver, &banned, &banned_too] {
                    node.get("/api/v1/cart", Some(token))
                        .await
                        .expect_problem(401, "unauthenticated");
                }
                node.get("/api/v1/cart", Some(&stays)).await.expect(200);
            }
        }
    }
}

/// Tokens that were not signed with the deployment's key, or were changed, or ran out, are
/// refused without a word about why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_changed_and_expired_tokens_are_refused() {
    let server = TestServer::start_with(&[("STAMPEDE_SESSION_KEY", SESSION_KEY)], None).await;
    let good = mint(1);
    server.get("/api/v1/cart", Some(&good)).await.expect(200);
    let mut other_key = [7_u8; 32];
    other_key[0] = 1;
    let claims = SessionClaims {
        user_id: UserId::generate(common::unix_now_millis(), 99),
        admin: true,
        session_id: session::session_id(99),
        expires_at: Timestamp(common::unix_now_millis() + 60_000),
    };
    let forged = session::sign(&other_key, &claims);
    let promoted = good.replacen(".buyer.", ".admin.", 1);
    let mut key = [0_u8; 32];
    hex_decode(SESSION_KEY, &mut key);
    let expired = session::sign(
        &key,
        &SessionClaims {
            expires_at: Timestamp(common::unix_now_millis() - 1),
            ..claims
        },
    );
    for token in [forged, promoted, expired, "s1.nonsense".to_string()] {
        server
            .get("/api/v1/cart", Some(&token))
            .await
            .expect_problem(401, "unauthenticated");
    }
}
