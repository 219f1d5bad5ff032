//! What operators of big sales ask of the room, over HTTP in both modes (cluster: two nodes of
//! one deployment): the denial-of-inventory guard (a cap on unpaid holds open at once per
//! account and per device, across all sales, that reserves arriving together on several nodes
//! cannot pass) and the hoarders' list with its one-click ban; every control audited with its
//! actor; buyers told when it is their turn (feed, live stream, signed webhook to the shop) and
//! the organiser's broadcast; the place page that works without JavaScript and turns crawlers
//! away; the queue's figures in the admin room view.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{poll_until, rfc3339, unix_now, watch_until, Api, Mode, Resp, TestServer};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const SHOP_SECRET: &str = "shop_whsec_room_ops";

/// A shop on 127.0.0.1 that accepts every webhook and keeps (signature, body).
struct Shop {
    url: String,
    got: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Shop {
    async fn start() -> Shop {
        let got: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let seen = got.clone();
        let app = axum::Router::new().route(
            "/hooks",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let seen = seen.clone();
                async move {
                    let sig = headers
                        .get("stampede-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    seen.lock().unwrap().push((sig, body));
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Shop {
            url: format!("http://{addr}/hooks"),
            got,
            task,
        }
    }

    /// The bodies received whose `type` is `kind`, with whether their signature verifies.
    fn received(&self, kind: &str) -> Vec<(bool, Value)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(sig, body)| {
                let v: Value = serde_json::from_str(body).ok()?;
                (v["type"] == kind).then(|| (signature_verifies(sig, body), v))
            })
            .collect()
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `t=<secs>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with the shop's secret, made just now.
fn signature_verifies(header: &str, body: &str) -> bool {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    (unix_now() - t).abs() <= 300
        && v1.iter().any(|sig| {
            let mut mac = Hmac::<Sha256>::new_from_slice(SHOP_SECRET.as_bytes()).unwrap();
            mac.update(format!("{t}.").as_bytes());
            mac.update(body.as_bytes());
            mac.verify_slice(sig).is_ok()
        })
}

/// A waiting-room sale of `total` units (one per buyer), started `ago` seconds ago (negative:
/// starting later); returns its id.
async fn queued_sale(node: &Api, admin: &str, total: u64, ago: i64) -> String {
    let mut body = common::sale_body(total, 1, 300);
    body["queue_required"] = json!(true);
    body["starts_at"] = json!(rfc3339(unix_now() - ago));
    node.create_sale_with(admin, &body).await.expect(201)["sale_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn join(api: &Api, token: &str, sale: &str, device: &str) -> Resp {
    api.post(
        &format!("/api/v1/sales/{sale}/queue"),
        Some(token),
        &json!({ "device_id": device }),
    )
    .await
}

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

    /// Every operator control over HTTP (pause, resume, the admission ceiling and "queue
    /// everyone"), sent to any node, is in the audit log with the admin who acted and why.
    async fn every_room_control_is_audited_with_its_actor_and_reason(mode) {
        let nodes = servers(&mode, &[]).await;
        let admin = nodes[0].admin_token().await;
        let admin_id = nodes[0].user_id_of(&admin).await;
        let mut body = common::sale_body(10, 1, 300);
        body["queue_required"] = json!(true);
        let queued = nodes[0].create_sale_with(&admin, &body).await.expect(201)["sale_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let open = nodes[0].create_sale(&admin, 10, 1, 300).await;
        let node = |i: usize| &nodes[i % nodes.len()];
        let path = |sale: &str, verb: &str| format!("/api/v1/admin/sales/{sale}/queue/{verb}");
        // A buyer cannot act.
        let buyer = nodes[0].buyer().await;
        node(1)
            .post(&path(&queued, "pause"), Some(&buyer), &json!({ "reason": "mine" }))
            .await
            .expect_problem(403, "forbidden");
        node(1)
            .post(&path(&queued, "pause"), Some(&admin), &json!({ "reason": "gateway incident" }))
            .await
            .expect(200);
        let r = node(0)
            .call(
                reqwest::Method::PUT,
                &path(&queued, "ceiling"),
                Some(&admin),
                Some(&json!({ "per_minute": 30, "reason": "gateway recovering" })),
            )
            .await;
        assert_eq!(r.expect(200)["rules"]["new_per_minute"], 30, "{}", r.text);
        node(1)
            .post(&path(&queued, "resume"), Some(&admin), &json!({ "reason": "incident over" }))
            .await
            .expect(200);
        node(0)
            .post(&path(&open, "everyone"), Some(&admin), &json!({ "reason": "bots at the door" }))
            .await
            .expect(200);
        assert_eq!(nodes[0].sale(&open).await["queue_required"], true);
        for (action, target, reason) in [
            ("room.pause_admission", &queued, "gateway incident"),
            ("room.admission_ceiling", &queued, "gateway recovering"),
            ("room.resume_admission", &queued, "incident over"),
            ("room.queue_everyone", &open, "bots at the door"),
        ] {
            let r = node(1).get(&format!("/api/v1/admin/audit?action={action}"), Some(&admin)).await;
            let entries = r.expect(200)["entries"].as_array().unwrap().clone();
            let entry = entries
                .iter()
                .find(|e| e["target"] == target.as_str())
                .unwrap_or_else(|| panic!("{action} not audited: {}", r.text));
            assert_eq!(entry["actor"], admin_id.as_str(), "{action}");
            assert_eq!(entry["after"]["reason"], reason, "{action}");
        }
    }

    /// When a buyer is admitted they are told three ways: a `queue_admitted` notification in
    /// their feed, the same pushed on their live stream, and a signed webhook to the shop; the
    /// notice states the admission window. The organiser's broadcast reaches everyone waiting
    /// (their place, its live stream) and is audited.
    async fn buyers_are_told_when_it_is_their_turn_and_hear_the_organiser(mode) {
        let shop = Shop::start().await;
        let env = [
            ("STAMPEDE_SHOP_WEBHOOK_URL", shop.url.as_str()),
            ("STAMPEDE_SHOP_WEBHOOK_SECRET", SHOP_SECRET),
            ("STAMPEDE_ADMISSION_TTL_SECS", "90"),
        ];
        let nodes = servers(&mode, &env).await;
        let node = |i: usize| &nodes[i % nodes.len()];
        let admin = nodes[0].admin_token().await;
        let sale = queued_sale(node(0), &admin, 1, 60).await;
        let control = |verb: &str| format!("/api/v1/admin/sales/{sale}/queue/{verb}");
        node(1)
            .post(&control("pause"), Some(&admin), &json!({ "reason": "lining up" }))
            .await
            .expect(200);
        let (first, second) = (nodes[0].buyer().await, nodes[0].buyer().await);
        let first_id = nodes[0].user_id_of(&first).await;
        join(node(0), &first, &sale, "phone-1").await.expect(202);
        join(node(1), &second, &sale, "phone-2").await.expect(202);

        // The broadcast: refused to buyers and for bad text; heard by the waiting on any node.
        node(0)
            .post(&control("broadcast"), Some(&first), &json!({ "message": "hi" }))
            .await
            .expect_problem(403, "forbidden");
        node(0)
            .post(&control("broadcast"), Some(&admin), &json!({ "message": " " }))
            .await
            .expect_problem(422, "invalid_input");
        let second_stream = node(1)
            .request(reqwest::Method::GET, &format!("/api/v1/sales/{sale}/queue/me/events"), Some(&second))
            .send()
            .await
            .unwrap();
        let text = "Checkout is back in five minutes: you keep your place.";
        let r = node(0).post(&control("broadcast"), Some(&admin), &json!({ "message": text })).await;
        assert_eq!(r.expect(200)["text"], text, "{}", r.text);
        watch_until(second_stream, Duration::from_secs(10), |event, data| {
            (event == "queue" && data["message"]["text"] == text).then_some(())
        })
        .await;
        for (i, token) in [&first, &second].iter().enumerate() {
            let me = node(i + 1).get(&format!("/api/v1/sales/{sale}/queue/me"), Some(token)).await;
            assert_eq!(me.expect(200)["message"]["text"], text, "{}", me.text);
        }
        let report = node(1).get(&format!("/api/v1/admin/sales/{sale}/queue"), Some(&admin)).await;
        assert_eq!(report.expect(200)["message"]["text"], text);
        let audit = node(1).get("/api/v1/admin/audit?action=room.broadcast", Some(&admin)).await;
        let entries = audit.expect(200)["entries"].as_array().unwrap().clone();
        let entry = entries.iter().find(|e| e["target"] == sale.as_str()).unwrap();
        assert_eq!(entry["actor"], nodes[0].user_id_of(&admin).await.as_str());
        assert_eq!(entry["after"]["message"], text);

        // Admission: the first in line is told on their live stream, in their feed and to
        // the shop; the window (90 s here) is stated.
        let feed = node(1)
            .request(reqwest::Method::GET, "/api/v1/me/events", Some(&first))
            .send()
            .await
            .unwrap();
        node(0)
            .post(&control("resume"), Some(&admin), &json!({ "reason": "ready" }))
            .await
            .expect(200);
        let pushed = watch_until(feed, Duration::from_secs(10), |event, data| {
            (event == "notification" && data["kind"] == "queue_admitted").then(|| data.clone())
        })
        .await;
        assert_eq!(pushed["data"]["sale_id"], sale.as_str(), "{pushed}");
        assert_eq!(pushed["data"]["window_seconds"], 90, "{pushed}");
        let until = common::parse_rfc3339(pushed["data"]["admitted_until"].as_str().unwrap()).unwrap();
        let at = common::parse_rfc3339(pushed["data"]["admitted_at"].as_str().unwrap()).unwrap();
        assert_eq!(until - at, 90_000, "{pushed}");
        let me = node(0).get(&format!("/api/v1/sales/{sale}/queue/me"), Some(&first)).await;
        let me = me.expect(200);
        assert_eq!(me["status"], "admitted");
        assert_eq!(
            common::parse_rfc3339(me["admitted_until"].as_str().unwrap()).unwrap() / 1000,
            until / 1000,
            "the place says the same window: {me}"
        );
        let feed = node(0).get("/api/v1/notifications", Some(&first)).await;
        let told: Vec<Value> = feed.expect(200)["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["kind"] == "queue_admitted")
            .cloned()
            .collect();
        assert_eq!(told.len(), 1, "told once: {told:?}");
        let hooks = poll_until("the shop's webhook", Duration::from_secs(10), Duration::from_millis(100), || async {
            let got = shop.received("queue_admitted");
            (!got.is_empty()).then_some(got)
        })
        .await;
        assert!(hooks.iter().all(|(signed, _)| *signed), "every webhook verifies: {hooks:?}");
        assert_eq!(hooks[0].1["data"]["sale_id"], sale.as_str());
        assert_eq!(hooks[0].1["data"]["window_seconds"], 90);
        assert_eq!(hooks[0].1["data"]["user_id"], first_id.as_str(), "the shop learns whose turn");
        // One unit: the second buyer is still waiting, and was not told anything.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let feed = node(1).get("/api/v1/notifications", Some(&second)).await;
        assert!(
            !feed.expect(200)["notifications"].as_array().unwrap().iter().any(|n| n["kind"] == "queue_admitted"),
            "{}",
            feed.text
        );
        assert!(
            shop.received("queue_admitted").iter().all(|(_, v)| v["data"]["sale_id"] == sale.as_str()),
        );
    }

    /// The place link from a join shows the place on a server-rendered page that refreshes
    /// itself and announces it to screen readers, turns into a redirect to the sale once the
    /// buyer is admitted, refuses a link that is not ours or is for another sale, and answers
    /// crawlers 503 with `Retry-After` (the queue page too).
    async fn the_place_page_needs_no_script_and_turns_crawlers_away(mode) {
        let nodes = servers(&mode, &[]).await;
        let admin = nodes[0].admin_token().await;
        let sale = queued_sale(&nodes[0], &admin, 1, 60).await;
        let other = queued_sale(&nodes[0], &admin, 1, 60).await;
        let path = format!("/api/v1/admin/sales/{sale}/queue/pause");
        nodes[0].post(&path, Some(&admin), &json!({ "reason": "lining up" })).await.expect(200);
        let buyer = nodes[0].buyer().await;
        let joined = join(&nodes[0], &buyer, &sale, "phone-1").await;
        let place_url = joined.expect(202)["place_url"].as_str().unwrap().to_owned();
        assert!(place_url.starts_with(&format!("/sales/{sale}/queue/place?ticket=")), "{place_url}");
        // Polls do not hand the link out again.
        let me = nodes[0].get(&format!("/api/v1/sales/{sale}/queue/me"), Some(&buyer)).await;
        assert!(me.expect(200).get("place_url").is_none(), "{}", me.text);

        let no_redirects = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let get = |url: String, agent: &'static str| {
            let client = no_redirects.clone();
            async move {
                client.get(url).header("user-agent", agent).send().await.unwrap()
            }
        };
        let browser = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36";
        let node = nodes.last().unwrap();
        let r = get(node.url(&place_url), browser).await;
        assert_eq!(r.status(), 200);
        let refresh: u64 = r.headers()["refresh"].to_str().unwrap().parse().unwrap();
        assert!((1..=30).contains(&refresh), "{refresh}");
        assert_eq!(r.headers()["referrer-policy"], "no-referrer");
        let html = r.text().await.unwrap();
        assert!(html.contains(r#"role="status" aria-live="polite""#), "{html}");
        assert!(html.contains("You are number 1 in line"), "{html}");
        assert!(html.contains("paused by the organiser"), "{html}");
        assert!(html.contains(&format!(r#"<meta http-equiv="refresh" content="{refresh}">"#)), "{html}");

        // Not ours, or for another sale: 404.
        let forged = place_url.replace("ticket=", "ticket=x");
        assert_eq!(get(node.url(&forged), browser).await.status(), 404);
        let elsewhere = place_url.replace(&sale, &other);
        assert_eq!(get(node.url(&elsewhere), browser).await.status(), 404);

        // Crawlers: 503 with Retry-After, on the place page and the queue page.
        for page in [place_url.clone(), format!("/sales/{sale}/queue")] {
            let r = get(node.url(&page), "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)").await;
            assert_eq!(r.status(), 503, "{page}");
            assert!(r.headers().get("retry-after").is_some(), "{page}");
        }
        assert_eq!(get(node.url(&format!("/sales/{sale}/queue")), browser).await.status(), 200);

        // Admitted: the page sends the buyer to the sale.
        nodes[0]
            .post(&format!("/api/v1/admin/sales/{sale}/queue/resume"), Some(&admin), &json!({ "reason": "go" }))
            .await
            .expect(200);
        let location = poll_until("the place page to redirect", Duration::from_secs(10), Duration::from_millis(100), || {
            let r = get(node.url(&place_url), browser);
            async move {
                let r = r.await;
                (r.status() == 303).then(|| r.headers()["location"].to_str().unwrap().to_owned())
            }
        })
        .await;
        assert_eq!(location, format!("/sales/{sale}"));
    }

    /// The admin room view carries the queue's figures (as the node answering saw them):
    /// joins, admissions, time in queue and admissions per minute against the limit (the definitions are unit-tested with a
    /// deterministic clock in `stampede_core::queue_analytics`).
    async fn the_room_view_has_the_queue_figures(mode) {
        // One node: each node counts what it saw (joins and admissions it made).
        let node = &TestServer::start_in(mode.clone()).await;
        let admin = node.admin_token().await;
        let sale = queued_sale(node, &admin, 2, 60).await;
        let r = node
            .call(
                reqwest::Method::PUT,
                &format!("/api/v1/admin/sales/{sale}/queue/ceiling"),
                Some(&admin),
                Some(&json!({ "per_minute": 40, "reason": "steady" })),
            )
            .await;
        r.expect(200);
        let buyers = node.buyers(3, 3).await;
        for (i, b) in buyers.iter().enumerate() {
            join(node, b, &sale, &format!("d{i}")).await.expect(202);
        }
        let figures = poll_until("two admissions in the figures", Duration::from_secs(10), Duration::from_millis(100), || async {
            let r = node.get(&format!("/api/v1/admin/sales/{sale}/queue"), Some(&admin)).await;
            let a = r.expect(200)["analytics"].clone();
            (a["admitted"] == 2).then_some(a)
        })
        .await;
        assert_eq!(figures["joined"], 3, "{figures}");
        assert_eq!(figures["admissions_per_minute_limit"], 40);
        let per_minute: u64 = figures["admissions_per_minute"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(per_minute, 2, "{figures}");
        assert!(figures["time_in_queue_p99_secs"].as_f64().unwrap() >= 0.0);
        assert_eq!(figures["no_shows"], 0, "windows still open: {figures}");
    }
}
