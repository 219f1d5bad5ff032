//! The waiting room over HTTP, in both modes (cluster: two nodes sharing the Redis room):
//! joins and places, the draw at the start, admission handing over to reservations, live
//! updates, the lottery and `stampede verify-draw`, rate limits and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{cluster_nodes, rfc3339, sale_body, unix_now, watch_until, Api, Mode, TestServer};
use serde_json::{json, Value};

/// One server in embedded mode; two nodes of one deployment in cluster mode.
async fn servers(mode: &Mode) -> Vec<TestServer> {
    if mode.is_cluster() {
        cluster_nodes(mode, 2).await
    } else {
        vec![TestServer::start_in(mode.clone()).await]
    }
}

fn queued_sale(total: u64, starts_in_secs: i64) -> Value {
    let mut body = sale_body(total, 1, 300);
    body["queue_required"] = json!(true);
    body["starts_at"] = json!(rfc3339(unix_now() + starts_in_secs));
    body
}

async fn join(api: &Api, token: &str, sale: &str, device: &str) -> common::Resp {
    api.post(
        &format!("/api/v1/sales/{sale}/queue"),
        Some(token),
        &json!({ "device_id": device }),
    )
    .await
}

async fn me(api: &Api, token: &str, sale: &str) -> Value {
    let r = api
        .get(&format!("/api/v1/sales/{sale}/queue/me"), Some(token))
        .await;
    r.expect(200).clone()
}

async fn reserve_admitted(
    api: &Api,
    token: &str,
    sale: &str,
    admission: &str,
    device: &str,
) -> common::Resp {
    let rb = api
        .request(reqwest::Method::POST, "/api/v1/cart/items", Some(token))
        .header("X-Admission-Token", admission)
        .header("X-Device-Id", device)
        .json(&json!({ "sale_id": sale, "quantity": 1 }));
    api.send(rb).await
}

/// Runs `stampede verify-draw` on `json`; returns (success, output).
fn verify_draw(json: &Value) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("draws.json");
    std::fs::write(&path, json.to_string()).unwrap();
    let out = std::process::Command::new(common::binary())
        .arg("verify-draw")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

in_both_modes! {
    /// Two hundred buyers join a scheduled sale at once from either node: their provisional
    /// places are a permutation, re-joining moves nobody; at the start the pre-queue is drawn
    /// (verifiably), exactly the stock is admitted, the admitted reserve with their tokens
    /// (once), and everyone else hears "sold out" live.
    async fn a_stampede_through_the_waiting_room(mode) {
        const BUYERS: usize = 200;
        const STOCK: u64 = 20;
        let nodes = servers(&mode).await;
        let api = |i: usize| nodes[i % nodes.len()].api();
        let admin = nodes[0].admin_token().await;
        let r = nodes[0].create_sale_with(&admin, &queued_sale(STOCK, 6)).await;
        let sale = r.expect(201)["sale_id"].as_str().unwrap().to_owned();
        let tokens = nodes[0].buyers(BUYERS, 16).await;

        let mut tasks = Vec::new();
        for (i, token) in tokens.iter().enumerate() {
            let (api, token, sale) = (api(i), token.clone(), sale.clone());
            tasks.push(tokio::spawn(async move {
                let r = join(&api, &token, &sale, &format!("device-{i}")).await;
                r.expect(202);
                assert_eq!(r.json["status"], "waiting", "{}", r.text);
                assert_eq!(r.json["pre_queue"], true, "{}", r.text);
                r.json["position"].as_u64().unwrap()
            }));
        }
        let mut places = Vec::new();
        for t in tasks {
            places.push(t.await.unwrap());
        }
        let unique: HashSet<u64> = places.iter().copied().collect();
        assert_eq!(unique, (1..=BUYERS as u64).collect::<HashSet<_>>(), "a permutation of 1..=200");
        for (i, token) in tokens.iter().enumerate().take(50) {
            let again = join(&api(i + 1), token, &sale, "another-device").await;
            assert_eq!(again.expect(202)["position"].as_u64().unwrap(), places[i], "re-joining moved a buyer");
        }

        // The start: the pre-queue is drawn and the first twenty admitted.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut admitted = Vec::new();
        loop {
            admitted.clear();
            for (i, token) in tokens.iter().enumerate() {
                let v = me(&api(i), token, &sale).await;
                if v["status"] == "admitted" {
                    admitted.push((i, v["admission_token"].as_str().unwrap().to_owned()));
                }
            }
            if admitted.len() == STOCK as usize || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(admitted.len(), STOCK as usize, "exactly the stock is admitted");
        let draws = nodes[0].get(&format!("/api/v1/sales/{sale}/draws"), None).await;
        let draws = draws.expect(200).clone();
        assert_eq!(draws["draws"][0]["purpose"], "pre_queue");
        assert_eq!(draws["draws"][0]["entrants"].as_array().unwrap().len(), BUYERS);
        let (ok, out) = verify_draw(&draws);
        assert!(ok, "verify-draw: {out}");

        // The waiting see consecutive places behind the admitted.
        let mut waiting = Vec::new();
        for (i, token) in tokens.iter().enumerate() {
            let v = me(&api(i), token, &sale).await;
            if v["status"] == "waiting" {
                waiting.push(v["position"].as_u64().unwrap());
            }
        }
        waiting.sort_unstable();
        assert_eq!(waiting, (1..=(BUYERS as u64 - STOCK)).collect::<Vec<_>>());

        // Without a token, with someone else's, or from another device: refused.
        let (first, first_token) = admitted[0].clone();
        let other = (0..BUYERS).find(|i| !admitted.iter().any(|a| a.0 == *i)).unwrap();
        // A waiting buyer watches live (through the other node, in a cluster).
        let stream = api(other + 1)
            .request(reqwest::Method::GET, &format!("/api/v1/sales/{sale}/queue/me/events"), Some(&tokens[other]))
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200);
        // Each refusal says which of token, account or device failed, and nothing of whose.
        let r = nodes[0].reserve(&tokens[first], &sale, 1).await;
        r.expect_problem(403, "not_admitted");
        assert!(r.json["detail"].as_str().unwrap().contains("no admission token"), "{}", r.text);
        let r = reserve_admitted(&api(0), &tokens[other], &sale, &first_token, &format!("device-{first}")).await;
        r.expect_problem(403, "not_admitted");
        assert!(r.json["detail"].as_str().unwrap().contains("this account"), "{}", r.text);
        assert!(!r.text.contains(&format!("device-{first}")), "leaks the holder's device: {}", r.text);
        let r = reserve_admitted(&api(0), &tokens[first], &sale, &first_token, "a-bot").await;
        r.expect_problem(403, "not_admitted");
        assert!(r.json["detail"].as_str().unwrap().contains("X-Device-Id"), "{}", r.text);
        // The admitted reserve, each once.
        for (i, admission) in &admitted {
            reserve_admitted(&api(*i), &tokens[*i], &sale, admission, &format!("device-{i}"))
                .await
                .expect(201);
        }
        let r = reserve_admitted(&api(1), &tokens[first], &sale, &first_token, &format!("device-{first}")).await;
        r.expect_problem(403, "not_admitted");
        assert!(r.json["detail"].as_str().unwrap().contains("already used"), "{}", r.text);
        let m = nodes[0].metrics(&admin, &sale).await;
        assert_eq!((m["held"].as_i64(), m["available"].as_i64()), (Some(STOCK as i64), Some(0)));

        // The stock is gone: the watcher hears it live, the rest on their next look.
        watch_until(stream, Duration::from_secs(5), |event, data| {
            (event == "queue" && data["status"] == "sold_out").then_some(())
        })
        .await;
        let v = me(&api(0), &tokens[other], &sale).await;
        assert_eq!(v["status"], "sold_out");
        let report = nodes[0].get(&format!("/api/v1/admin/sales/{sale}/queue"), Some(&admin)).await;
        let report = report.expect(200);
        assert_eq!(report["admitted"], STOCK);
        assert_eq!(report["fifo_inversions"], 0);
        assert!(report["refusals"]["token_transferred"].as_u64().unwrap() >= 2, "{report}");
    }

    /// The organiser pauses admission (with a reason): nobody is admitted, places are kept, and
    /// the waiters' live stream says so; resumed, the next in the original order get in. Both
    /// controls are in the audit log with their actor and reason.
    async fn pausing_admission_keeps_places_and_resuming_keeps_the_order(mode) {
        let nodes = servers(&mode).await;
        let api = |i: usize| nodes[i % nodes.len()].api();
        let admin = nodes[0].admin_token().await;
        let admin_id = nodes[0].user_id_of(&admin).await;
        let r = nodes[0].create_sale_with(&admin, &queued_sale(3, -1)).await;
        let sale = r.expect(201)["sale_id"].as_str().unwrap().to_owned();
        let control = |verb: &str| format!("/api/v1/admin/sales/{sale}/queue/{verb}");
        api(1).post(&control("pause"), Some(&admin), &json!({})).await.expect_problem(422, "invalid_input");
        let r = api(1).post(&control("pause"), Some(&admin), &json!({ "reason": "checkout incident" })).await;
        assert_eq!(r.expect(200)["admission_paused"], true, "{}", r.text);
        let tokens = nodes[0].buyers(5, 5).await;
        for (i, token) in tokens.iter().enumerate() {
            join(&api(i), token, &sale, &format!("device-{i}")).await.expect(202);
        }
        let stream = api(1)
            .request(reqwest::Method::GET, &format!("/api/v1/sales/{sale}/queue/me/events"), Some(&tokens[0]))
            .send()
            .await
            .unwrap();
        let first = watch_until(stream, Duration::from_secs(5), |event, data| {
            (event == "queue").then(|| data.clone())
        })
        .await;
        assert_eq!((first["status"].as_str(), first["paused"].as_bool()), (Some("waiting"), Some(true)), "{first}");
        // Many admission rounds later (every 100 ms, on every node): still nobody in.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        for (i, token) in tokens.iter().enumerate() {
            let v = me(&api(i), token, &sale).await;
            assert_eq!((v["status"].as_str(), v["position"].as_u64(), v["paused"].as_bool()),
                (Some("waiting"), Some(i as u64 + 1), Some(true)), "buyer {i}: {v}");
        }
        let watcher = api(0)
            .request(reqwest::Method::GET, &format!("/api/v1/sales/{sale}/queue/me/events"), Some(&tokens[0]))
            .send()
            .await
            .unwrap();
        api(0).post(&control("resume"), Some(&admin), &json!({ "reason": "fixed" })).await.expect(200);
        watch_until(watcher, Duration::from_secs(5), |event, data| {
            (event == "queue" && data["status"] == "admitted" && data["paused"] == false).then_some(())
        })
        .await;
        for (i, token) in tokens.iter().enumerate() {
            let v = me(&api(i), token, &sale).await;
            if i < 3 {
                assert_eq!(v["status"], "admitted", "buyer {i}: {v}");
            } else {
                assert_eq!((v["status"].as_str(), v["position"].as_u64()), (Some("waiting"), Some(i as u64 - 2)), "buyer {i}: {v}");
            }
        }
        for (action, reason) in [("room.pause_admission", "checkout incident"), ("room.resume_admission", "fixed")] {
            let r = api(0).get(&format!("/api/v1/admin/audit?action={action}"), Some(&admin)).await;
            let entries = r.expect(200)["entries"].as_array().unwrap().clone();
            let entry = entries.iter().find(|e| e["target"] == sale.as_str()).unwrap_or_else(|| panic!("{action}: {}", r.text));
            assert_eq!(entry["actor"], admin_id.as_str());
            assert_eq!(entry["after"]["reason"], reason);
        }
    }

    /// A lottery among the waiting: the winners are admitted, the rest told; anyone can
    /// recompute it with `stampede verify-draw`, and a changed seed does not check out.
    async fn a_lottery_anyone_can_recompute(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let r = server.create_sale_with(&admin, &queued_sale(1000, -60)).await;
        let sale = r.expect(201)["sale_id"].as_str().unwrap().to_owned();
        // Paused: no first-come admission, so everyone is still waiting at the draw.
        server.admin_action(&admin, &sale, "pause").await.expect(200);
        let tokens = server.buyers(30, 8).await;
        for (i, t) in tokens.iter().enumerate() {
            join(&server.api(), t, &sale, &format!("d{i}")).await.expect(202);
        }
        let before = server.get(&format!("/api/v1/sales/{sale}/draws"), None).await;
        let commitment = before.expect(200)["commitments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["purpose"] == "lottery")
            .unwrap()["seed_commitment"]
            .clone();
        let r = server
            .post(&format!("/api/v1/admin/sales/{sale}/lottery"), Some(&admin), &json!({ "winners": 5 }))
            .await;
        let record = r.expect(200).clone();
        assert_eq!(record["seed_commitment"], commitment, "the seed committed before the draw");
        let winners: HashSet<String> = record["winners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(winners.len(), 5);
        let mut won = 0;
        for t in &tokens {
            let v = me(&server.api(), t, &sale).await;
            match v["status"].as_str().unwrap() {
                "lottery_won" => {
                    won += 1;
                    assert!(v["admission_token"].is_string());
                }
                "lottery_lost" => assert_eq!(v["position"], 0),
                other => panic!("after the draw a buyer is {other}"),
            }
        }
        assert_eq!(won, 5);

        let published = server.get(&format!("/api/v1/sales/{sale}/draws"), None).await;
        let published = published.expect(200).clone();
        let (ok, out) = verify_draw(&published);
        assert!(ok, "verify-draw: {out}");
        let lottery = published["draws"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["purpose"] == "lottery")
            .unwrap()
            .clone();
        // Another seed (with a matching commitment) gives other winners: verification fails.
        let mut other = lottery.clone();
        let seed = "11".repeat(32);
        other["seed"] = json!(seed);
        other["seed_commitment"] = json!(sha256_hex(&[0x11; 32]));
        let (ok, out) = verify_draw(&other);
        assert!(!ok && out.contains("differ"), "a changed seed must not verify: {out}");
        // A seed that does not match the published commitment fails too.
        let mut swapped = lottery.clone();
        swapped["seed"] = json!(seed);
        let (ok, out) = verify_draw(&swapped);
        assert!(!ok && out.contains("commitment"), "{out}");
    }

    /// A burst of ten times the configured rate: what gets through never exceeds the quota
    /// for the elapsed time plus the burst; the refused get 429 with the rate-limit headers.
    /// In a cluster the burst is spread over two nodes, which share one quota.
    async fn a_burst_is_cut_to_quota_plus_burst(mode) {
        let env = [("STAMPEDE_RATE_LIMIT_PER_SEC", "10"), ("STAMPEDE_IP_RATE_LIMIT_PER_SEC", "100000")];
        let mut nodes = vec![TestServer::start_with_in(mode.clone(), &env, None).await];
        if mode.is_cluster() {
            nodes.push(TestServer::start_with_in(mode.clone(), &env, None).await);
        }
        let token = nodes[0].buyer().await;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..100 {
            let api = nodes[i as usize % nodes.len()].api();
            let token = token.clone();
            tasks.push(tokio::spawn(async move {
                // Ten times the rate: 100 requests spread over one second.
                tokio::time::sleep(Duration::from_millis(i * 10)).await;
                api.get("/api/v1/cart", Some(&token)).await
            }));
        }
        let mut accepted = 0u64;
        let mut refused = None;
        for t in tasks {
            let r = t.await.unwrap();
            match r.status {
                200 => accepted += 1,
                429 => refused = Some(r),
                other => panic!("unexpected {other}: {}", r.text),
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let allowed = (10.0 * elapsed).ceil() as u64 + 20;
        assert!(accepted <= allowed, "{accepted} accepted in {elapsed:.2}s; quota + burst is {allowed}");
        assert!(accepted >= 20, "the burst itself passes, got {accepted}");
        let refused = refused.expect("some requests are refused");
        refused.expect_problem(429, "rate_limited");
        assert!(refused.header("retry-after").is_some());
        let policy = refused.header("ratelimit-policy").unwrap();
        assert!(policy.starts_with("10;w=1;burst=20"), "{policy}");
        assert!(refused.header("ratelimit").unwrap().contains("remaining=0"));
    }

    /// The waiting room's bad input and wrong callers get clear 4xx answers.
    async fn waiting_room_bad_input(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let buyer = server.buyer().await;
        let r = server.create_sale_with(&admin, &queued_sale(5, -60)).await;
        let sale = r.expect(201)["sale_id"].as_str().unwrap().to_owned();
        let plain = server.create_sale(&admin, 5, 1, 300).await;
        let api = server.api();
        join(&api, &buyer, &sale, "").await.expect_problem(422, "invalid_input");
        join(&api, &buyer, &sale, "a|b").await.expect_problem(422, "invalid_input");
        join(&api, &buyer, &sale, &"x".repeat(65)).await.expect_problem(422, "invalid_input");
        api.post(&format!("/api/v1/sales/{sale}/queue"), Some(&buyer), &json!({ "device_id": 7 }))
            .await
            .expect_problem(422, "invalid_input");
        join(&api, &buyer, "01J00000000000000000000000", "d").await.expect_problem(404, "not_found");
        join(&api, &buyer, &plain, "d").await.expect_problem(409, "conflict");
        api.get(&format!("/api/v1/sales/{sale}/queue/me"), Some(&buyer))
            .await
            .expect_problem(404, "not_found");
        api.post(&format!("/api/v1/sales/{sale}/queue"), None, &json!({ "device_id": "d" }))
            .await
            .expect_problem(401, "unauthenticated");
        server.reserve(&buyer, &sale, 1).await.expect_problem(403, "not_admitted");
        reserve_admitted(&api, &buyer, &sale, "not.a-token", "d")
            .await
            .expect_problem(403, "not_admitted");
        api.get(&format!("/api/v1/admin/sales/{sale}/queue"), Some(&buyer))
            .await
            .expect_problem(403, "forbidden");
        api.post(&format!("/api/v1/admin/sales/{sale}/lottery"), Some(&buyer), &json!({}))
            .await
            .expect_problem(403, "forbidden");
        let rb = api
            .request(reqwest::Method::PUT, &format!("/api/v1/admin/sales/{sale}/queue/rules"), Some(&admin))
            .json(&json!({ "pow_bits": 99 }));
        api.send(rb).await.expect_problem(422, "invalid_input");
    }

    /// Anti-abuse rules: accounts per device are capped at join, and a proof of work is asked
    /// and checked when the sale wants one.
    async fn device_caps_and_proof_of_work(mode) {
        let server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let r = server.create_sale_with(&admin, &queued_sale(5, 60)).await;
        let sale = r.expect(201)["sale_id"].as_str().unwrap().to_owned();
        let api = server.api();
        let rb = api
            .request(reqwest::Method::PUT, &format!("/api/v1/admin/sales/{sale}/queue/rules"), Some(&admin))
            .json(&json!({ "max_accounts_per_device": 2, "device_limit": 1, "pow_bits": 10 }));
        api.send(rb).await.expect(200);
        let buyers = server.buyers(3, 3).await;
        // No proof: refused. A solved challenge: in.
        join(&api, &buyers[0], &sale, "farm-1").await.expect_problem(422, "invalid_input");
        for (i, b) in buyers.iter().enumerate() {
            let c = api.get(&format!("/api/v1/sales/{sale}/queue/challenge"), Some(b)).await;
            let c = c.expect(200).clone();
            assert_eq!(c["difficulty_bits"], 10);
            let challenge = c["challenge"].as_str().unwrap();
            let nonce = stampede_core::pow::solve(challenge, 10);
            let body = json!({ "device_id": "farm-1", "pow": { "challenge": challenge, "nonce": nonce } });
            let r = api.post(&format!("/api/v1/sales/{sale}/queue"), Some(b), &body).await;
            if i < 2 {
                r.expect(202);
            } else {
                r.expect_problem(422, "limit_exceeded");
            }
            // Someone else's solution does not carry over.
            if i == 0 {
                let stolen = api.post(&format!("/api/v1/sales/{sale}/queue"), Some(&buyers[2]), &body).await;
                stolen.expect_problem(422, "invalid_input");
            }
        }
        let report = api.get(&format!("/api/v1/admin/sales/{sale}/queue"), Some(&admin)).await;
        let report = report.expect(200);
        assert_eq!(report["queue_length"], 2);
        assert!(report["refusals"]["device_accounts_cap"].as_u64().unwrap() >= 1);
        assert!(report["refusals"]["pow_failed"].as_u64().unwrap() >= 2);
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}
