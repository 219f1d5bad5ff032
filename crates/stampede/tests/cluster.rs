//! Cluster mode on the machine's PostgreSQL, Redis and RabbitMQ: several nodes selling one sale,
//! and the faults a cluster must ride out (Redis flushed mid-race, RabbitMQ down during orders,
//! a node killed mid-burst). Skipped with a message when the services are down; under CI that
//! is a failure.
//!
//! The tests here take turns (one lock): flushing Redis or stopping RabbitMQ would otherwise
//! disturb each other's figures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{assert_invariant, cluster_nodes, watch_until, Mode, TestServer};
use serde_json::{json, Value};
use tokio::sync::Mutex;

/// One disruptive test at a time in this binary.
static TURN: Mutex<()> = Mutex::const_new(());

async fn reserve_over(
    nodes: &[common::Api],
    tokens: &[String],
    sale: &str,
) -> Vec<(usize, common::Resp)> {
    let tasks: Vec<_> = tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            let api = nodes[i % nodes.len()].clone();
            let (token, sale) = (token.clone(), sale.to_owned());
            tokio::spawn(async move { (i, api.reserve(&token, &sale, 1).await) })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Holds of a sale in the judge: (hold id, user id, quantity, state).
async fn holds_in_postgres(mode: &Mode, sale: &str) -> Vec<(String, String, i64, String)> {
    let Mode::Cluster(env) = mode else {
        unreachable!("cluster tests only")
    };
    let pool = env.pool().await;
    let rows: Vec<(String, String, i64, String)> =
        sqlx::query_as("SELECT id, user_id, quantity::BIGINT, state FROM holds WHERE sale_id = $1")
            .bind(sale)
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    rows
}

/// The sale row's counters in the judge: (total, available, held, sold).
async fn counters_in_postgres(mode: &Mode, sale: &str) -> (i64, i64, i64, i64) {
    let Mode::Cluster(env) = mode else {
        unreachable!("cluster tests only")
    };
    let pool = env.pool().await;
    let row: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT total_stock::BIGINT, available::BIGINT, held::BIGINT, sold::BIGINT FROM sales WHERE id = $1",
    )
    .bind(sale)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    row
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_sell_exactly_the_stock_to_six_hundred_buyers() {
    let _turn = TURN.lock().await;
    if let Some(mode) = Mode::cluster().await {
        three_nodes_sell_exactly_the_stock(mode).await;
    }
}

/// The same race with the gate on a three-master Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_three_nodes_sell_exactly_the_stock_to_six_hundred_buyers() {
    let _turn = TURN.lock().await;
    if let Some(mode) = Mode::redis_cluster().await {
        three_nodes_sell_exactly_the_stock(mode).await;
    }
}

async fn three_nodes_sell_exactly_the_stock(mode: Mode) {
    let nodes = cluster_nodes(&mode, 3).await;
    let apis: Vec<common::Api> = nodes.iter().map(|n| n.api()).collect();
    let admin = nodes[0].admin_token().await;
    let sale = nodes[0].create_sale(&admin, 100, 2, 600).await;
    let buyers = nodes[1].buyers(600, 32).await;
    // Every buyer fires twice (limit 2, one unit each), spread over the three nodes.
    let mut tokens = buyers.clone();
    tokens.extend(buyers.iter().cloned());
    let answers = reserve_over(&apis, &tokens, &sale).await;
    let mut per_user: HashMap<usize, i64> = HashMap::new();
    let mut won = 0;
    for (i, r) in &answers {
        match r.status {
            201 => {
                won += 1;
                *per_user.entry(i % buyers.len()).or_default() += 1;
            }
            409 => assert!(
                ["sold_out", "limit_exceeded"].contains(&r.code()),
                "refusal says why: {}",
                r.text
            ),
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert_eq!(won, 100, "exactly the stock is held");
    assert!(
        per_user.values().all(|n| *n <= 2),
        "no buyer above the limit"
    );

    let holds = holds_in_postgres(&mode, &sale).await;
    assert_eq!(
        holds.len(),
        100,
        "the judge has exactly the holds acknowledged"
    );
    let mut units: HashMap<&str, i64> = HashMap::new();
    for (_, user, qty, _) in &holds {
        *units.entry(user.as_str()).or_default() += qty;
    }
    assert!(
        units.values().all(|n| *n <= 2),
        "no buyer above the limit in the judge"
    );
    let (total, available, held, sold) = counters_in_postgres(&mode, &sale).await;
    assert_eq!((total, available, held, sold), (100, 0, 100, 0));
    // The invariant in PostgreSQL itself: the counters are what the rows say.
    let active: i64 = holds
        .iter()
        .filter(|(_, _, _, state)| state == "active")
        .map(|(_, _, qty, _)| qty)
        .sum();
    assert_eq!(active, held, "held units = the active holds' units");
    assert_eq!(available + held + sold, total);
    for node in &nodes {
        let m = node.metrics(&admin, &sale).await;
        assert_invariant(&m);
        assert_eq!(
            m["held"], 100,
            "every node reports the judge's figures: {m}"
        );
        assert_eq!(m["available"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushing_redis_mid_race_neither_oversells_nor_stops_the_sale() {
    let _turn = TURN.lock().await;
    if let Some(mode) = Mode::cluster().await {
        flushing_redis_mid_race(mode).await;
    }
}

/// The same with the gate on a three-master Redis Cluster, every master flushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_flushing_every_master_mid_race_neither_oversells_nor_stops_the_sale() {
    let _turn = TURN.lock().await;
    if let Some(mode) = Mode::redis_cluster().await {
        flushing_redis_mid_race(mode).await;
    }
}

async fn flushing_redis_mid_race(mode: Mode) {
    let nodes = cluster_nodes(&mode, 2).await;
    let apis: Vec<common::Api> = nodes.iter().map(|n| n.api()).collect();
    let admin = nodes[0].admin_token().await;
    let sale = nodes[0].create_sale(&admin, 150, 1, 600).await;
    let buyers = nodes[0].buyers(300, 32).await;

    let first = reserve_over(&apis, &buyers[..100], &sale).await;
    assert!(
        first.iter().all(|(_, r)| r.status == 201),
        "stock for all of the first hundred"
    );
    // The rest race while Redis is flushed under them.
    let race = {
        let (apis, tokens, sale) = (apis.clone(), buyers[100..].to_vec(), sale.clone());
        tokio::spawn(async move { reserve_over(&apis, &tokens, &sale).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    mode.flush_redis().await;
    let rest = race.await.unwrap();
    let mut won = first.len();
    for (_, r) in &rest {
        match r.status {
            201 => won += 1,
            409 => assert_eq!(r.code(), "sold_out", "{}", r.text),
            503 => {} // refused fast while the gate was being seeded: not sold, not lost
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert!(won <= 150, "never more than the stock: {won}");
    // Selling resumes: whatever a 503 turned away is still for sale; buy it up. If the race
    // sold out before the flush landed, the nodes answer "sold out" from their local flag for
    // up to a second without asking Redis: wait it out, so the late buyers do reach the
    // (flushed) gate and it is seeded again from the judge.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let late = nodes[1].buyers(60, 16).await;
    let more = reserve_over(&apis, &late, &sale).await;
    won += more.iter().filter(|(_, r)| r.status == 201).count();
    assert_eq!(won, 150, "every unit sold after the flush, none twice");
    let holds = holds_in_postgres(&mode, &sale).await;
    assert_eq!(holds.len(), 150);
    let users: HashSet<&str> = holds.iter().map(|(_, u, _, _)| u.as_str()).collect();
    assert_eq!(users.len(), 150, "limit 1: one hold per buyer");
    let mut repaired = 0;
    for node in &nodes {
        let m = node.metrics(&admin, &sale).await;
        assert_invariant(&m);
        repaired += m["gate_drift_repaired"].as_u64().unwrap();
    }
    assert!(
        repaired > 0,
        "the re-seeding of the lost gate is reported as repaired drift"
    );
    let text =
        nodes[0].get("/metrics", None).await.text + &nodes[1].get("/metrics", None).await.text;
    assert!(
        text.contains("stampede_gate_drift_repaired_units_total"),
        "/metrics reports the repaired drift"
    );
}

/// The masters of the local Redis Cluster holding keys of this cluster namespace.
async fn masters_holding(namespace: &str) -> usize {
    let mut holding = 0;
    for node in common::REDIS_CLUSTER_NODES {
        let client = redis::Client::open(format!("redis://{node}/")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("stampede:{{{namespace}:*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if keys.iter().any(|k| k.ends_with(":avail")) {
            holding += 1;
        }
    }
    holding
}

/// Sales spread over the shards of a three-master Redis Cluster, three nodes selling all of
/// them at once, every master flushed mid-race: no sale oversold, every unit sold in the end,
/// and every node reports the judge's figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_sales_spread_over_the_shards_sell_exactly_their_stock_through_a_flush()
{
    let _turn = TURN.lock().await;
    let Some(mode) = Mode::redis_cluster().await else {
        return;
    };
    let Mode::Cluster(env) = &mode else {
        return;
    };
    let nodes = cluster_nodes(&mode, 3).await;
    let apis: Vec<common::Api> = nodes.iter().map(|n| n.api()).collect();
    let admin = nodes[0].admin_token().await;
    let per_sale = 20;
    // Sales until their gates live on at least two masters (a sale's slot follows its id).
    let mut sales = Vec::new();
    let mut spread = 0;
    while sales.len() < 12 && (sales.len() < 6 || spread < 2) {
        let sale = nodes[0].create_sale(&admin, per_sale, 1, 600).await;
        // Seeds the sale's gate; the probe buyer keeps the unit.
        let probe = nodes[0].buyer().await;
        nodes[0].reserve(&probe, &sale, 1).await.expect(201);
        sales.push(sale);
        spread = masters_holding(&env.name).await;
    }
    assert!(spread >= 2, "the sales' gates live on {spread} master(s)");
    let stock = sales.len() * usize::try_from(per_sale).unwrap();
    // One unit of each sale went to its probe buyer.
    let mut won_per_sale: HashMap<String, usize> = sales.iter().map(|s| (s.clone(), 1)).collect();
    let buyers = nodes[1].buyers(stock + 40, 32).await;
    let race = {
        let apis = apis.clone();
        let plan: Vec<(String, String)> = buyers
            .iter()
            .enumerate()
            .map(|(i, b)| (b.clone(), sales[i % sales.len()].clone()))
            .collect();
        tokio::spawn(async move {
            let tasks: Vec<_> = plan
                .into_iter()
                .enumerate()
                .map(|(i, (token, sale))| {
                    let api = apis[i % apis.len()].clone();
                    tokio::spawn(async move { (sale.clone(), api.reserve(&token, &sale, 1).await) })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    mode.flush_redis().await;
    for (sale, r) in race.await.unwrap() {
        match r.status {
            201 => *won_per_sale.get_mut(&sale).unwrap() += 1,
            409 => assert_eq!(r.code(), "sold_out", "{}", r.text),
            503 => {} // refused fast while a gate was being seeded: not sold, not lost
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    // Whatever a 503 turned away is still for sale: buy it up (after the sold-out flags lapse).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let late = nodes[2].buyers(sales.len() * 8, 16).await;
    for (i, token) in late.iter().enumerate() {
        let sale = &sales[i % sales.len()];
        let r = apis[i % apis.len()].reserve(token, sale, 1).await;
        if r.status == 201 {
            *won_per_sale.get_mut(sale).unwrap() += 1;
        }
    }
    for sale in &sales {
        let won = won_per_sale[sale];
        assert_eq!(
            won,
            usize::try_from(per_sale).unwrap(),
            "sale {sale}: every unit, none twice"
        );
        let holds = holds_in_postgres(&mode, sale).await;
        assert_eq!(
            holds.len(),
            won,
            "the judge has exactly the holds acknowledged"
        );
        let (total, available, held, sold) = counters_in_postgres(&mode, sale).await;
        assert_eq!(
            (total, available, held, sold),
            (per_sale as i64, 0, per_sale as i64, 0)
        );
        for node in &nodes {
            let m = node.metrics(&admin, sale).await;
            assert_invariant(&m);
            assert_eq!(
                m["held"], per_sale,
                "every node reports the judge's figures: {m}"
            );
        }
    }
}

/// Starts RabbitMQ again when dropped, whatever happened in between.
struct BrokerStopped;

impl BrokerStopped {
    fn stop() -> BrokerStopped {
        let ok = std::process::Command::new("rabbitmqctl")
            .arg("stop_app")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "rabbitmqctl stop_app");
        BrokerStopped
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .status();
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["await_startup", "--timeout", "60"])
            .status();
    }
}

async fn notifications_of(api: &common::Api, token: &str) -> Vec<Value> {
    api.get("/api/v1/notifications", Some(token))
        .await
        .expect(200)["notifications"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_made_while_rabbitmq_is_down_are_confirmed_and_their_events_arrive_once() {
    let _turn = TURN.lock().await;
    let Some(mode) = Mode::cluster().await else {
        return;
    };
    if std::process::Command::new("rabbitmqctl")
        .arg("-q")
        .arg("status")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs rabbitmqctl to stop the broker"
        );
        eprintln!("skipped: rabbitmqctl not found");
        return;
    }
    let nodes = cluster_nodes(&mode, 2).await;
    let admin = nodes[0].admin_token().await;
    let sale = nodes[0].create_sale(&admin, 100, 1, 600).await;
    let buyers = nodes[0].buyers(6, 6).await;

    let stopped = tokio::task::block_in_place(BrokerStopped::stop);
    let mut orders = Vec::new();
    for (i, token) in buyers.iter().enumerate() {
        let node = &nodes[i % 2];
        let hold = node.hold(token, &sale, 1).await;
        let r = node.order(token, &[&hold], "tok_ok", None).await;
        assert_eq!(
            r.json["status"], "confirmed",
            "confirmed to the buyer with the broker down: {}",
            r.text
        );
        orders.push(r.json["order_id"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(stopped); // the broker comes back

    for (i, token) in buyers.iter().enumerate() {
        let node = &nodes[(i + 1) % 2];
        let mut seen = Vec::new();
        for _ in 0..300 {
            seen = notifications_of(node, token)
                .await
                .into_iter()
                .filter(|n| n["kind"] == "order_confirmed")
                .collect();
            if !seen.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            seen.len(),
            1,
            "buyer {i}: one confirmation once the broker is back: {seen:?}"
        );
        assert_eq!(seen[0]["data"]["order_id"], orders[i].as_str());
    }
    // Redeliveries (the relay retried while the broker was down) take effect once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for token in &buyers {
        let confirmed = notifications_of(&nodes[0], token)
            .await
            .into_iter()
            .filter(|n| n["kind"] == "order_confirmed")
            .count();
        assert_eq!(confirmed, 1, "none twice in effect");
    }
    let Mode::Cluster(env) = &mode else {
        unreachable!()
    };
    let pool = env.pool().await;
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE delivered_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(waiting, 0, "the outbox drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_on_node_a_sees_the_stock_move_when_a_buyer_buys_on_node_b() {
    let _turn = TURN.lock().await;
    let Some(mode) = Mode::cluster().await else {
        return;
    };
    let nodes = cluster_nodes(&mode, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let admin = a.admin_token().await;
    let sale = a.create_sale(&admin, 10, 2, 600).await;
    let viewer = a
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/sales/{sale}/events"),
            None,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(viewer.status(), 200);
    let buyer = b.buyer().await;
    // Give the viewer's stream a moment to subscribe, then buy on the other node.
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.hold(&buyer, &sale, 2).await;
    let seen = watch_until(viewer, Duration::from_secs(10), |event, data| {
        (event == "stock" && data["available"] == 8).then(|| data.clone())
    })
    .await;
    assert_eq!(seen["held"], 2, "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_burst_loses_no_acknowledged_hold() {
    let _turn = TURN.lock().await;
    let Some(mode) = Mode::cluster().await else {
        return;
    };
    // Each buyer holds up to 500 units here: the hold cap (tested in room_ops.rs) is lifted.
    let uncapped = [
        ("STAMPEDE_MAX_OPEN_HOLDS_PER_ACCOUNT", "0"),
        ("STAMPEDE_MAX_OPEN_HOLDS_PER_DEVICE", "0"),
    ];
    let mut nodes = [
        TestServer::start_with_in(mode.clone(), &uncapped, None).await,
        TestServer::start_with_in(mode.clone(), &uncapped, None).await,
    ];
    let admin = nodes[1].admin_token().await;
    let sale = nodes[1].create_sale(&admin, 100_000, 1000, 600).await;
    let buyers = nodes[1].buyers(20, 10).await;
    let victim = nodes[0].api();
    let mut tasks = Vec::new();
    for token in &buyers {
        let (api, token, sale) = (victim.clone(), token.clone(), sale.clone());
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for _ in 0..500 {
                let rb = api
                    .request(reqwest::Method::POST, "/api/v1/cart/items", Some(&token))
                    .json(&json!({ "sale_id": sale, "quantity": 1 }));
                match api.try_send(rb).await {
                    Ok(r) if r.status == 201 => {
                        acknowledged.push(r.json["hold_id"].as_str().unwrap().to_owned())
                    }
                    Ok(r) => panic!("unexpected {} {}", r.status, r.text),
                    Err(_) => break, // the node died under us: unknown outcome, not acknowledged
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    tokio::task::block_in_place(|| nodes[0].kill9());
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.extend(t.await.unwrap());
    }
    assert!(
        !acknowledged.is_empty(),
        "the burst got going before the kill"
    );
    let in_judge: HashSet<String> = holds_in_postgres(&mode, &sale)
        .await
        .into_iter()
        .map(|(id, _, _, _)| id)
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|h| !in_judge.contains(*h))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged holds missing from PostgreSQL: {lost:?}"
    );
    // The survivor still sells, and the books balance.
    let buyer = nodes[1].buyer().await;
    nodes[1].hold(&buyer, &sale, 1).await;
    let m = nodes[1].metrics(&admin, &sale).await;
    assert_invariant(&m);
    assert!(m["held"].as_i64().unwrap() as usize > acknowledged.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_node_ends_the_session_on_every_node() {
    let _turn = TURN.lock().await;
    let Some(mode) = Mode::cluster().await else {
        return;
    };
    let nodes = cluster_nodes(&mode, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let token = a.buyer().await;
    // Both nodes have the session cached.
    a.get("/api/v1/me", Some(&token)).await.expect(200);
    b.get("/api/v1/me", Some(&token)).await.expect(200);
    assert_eq!(
        a.post_empty("/api/v1/auth/logout", Some(&token))
            .await
            .status,
        204
    );
    let mut status = 0;
    for _ in 0..50 {
        status = b.get("/api/v1/me", Some(&token)).await.status;
        if status == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        status, 401,
        "the other node dropped the session within a second"
    );
}

/// A TCP proxy in front of a service that the test can cut (every connection dropped, new
/// ones refused) and restore.
struct CuttableProxy {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl CuttableProxy {
    async fn start(target: &'static str) -> CuttableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *watch.borrow() {
                    continue; // dropped: refused
                }
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        CuttableProxy { addr, cut }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_unreachable_a_node_answers_fast_503s_and_sells_again_when_it_is_back() {
    let _turn = TURN.lock().await;
    let Some(mode) = Mode::cluster().await else {
        return;
    };
    let proxy = CuttableProxy::start("127.0.0.1:6379").await;
    let url = format!("redis://{}/", proxy.addr);
    let node = TestServer::start_with_in(
        mode.clone(),
        &[
            ("STAMPEDE_REDIS_URL", &url),
            ("STAMPEDE_REDIS_TIMEOUT_MS", "300"),
        ],
        None,
    )
    .await;
    let admin = node.admin_token().await;
    let sale = node.create_sale(&admin, 50, 5, 600).await;
    let buyer = node.buyer().await;
    node.hold(&buyer, &sale, 1).await;
    let paid_hold = node.hold(&buyer, &sale, 1).await;
    let paid = node.order(&buyer, &[&paid_hold], "tok_ok", None).await;
    let paid = paid.expect(201)["order_id"].as_str().unwrap().to_owned();
    let to_release = node.hold(&buyer, &sale, 1).await;

    proxy.cut.send(true).unwrap();
    // What the judge does not need the gate for still works, completely: a refund reaches the
    // gateway (audited after it), a release is done.
    node.post_empty(&format!("/api/v1/orders/{paid}/cancel"), Some(&buyer))
        .await
        .expect(200);
    let r = node
        .delete(&format!("/api/v1/cart/items/{to_release}"), Some(&buyer))
        .await;
    assert!(
        r.status < 300,
        "release with the gate away: {} {}",
        r.status,
        r.text
    );
    let refunds = node
        .get("/api/v1/admin/audit?action=payment.refund", Some(&admin))
        .await;
    assert!(
        refunds.expect(200)["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["target"] == paid.as_str()),
        "the refund happened at the gateway: {}",
        refunds.text
    );
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let r = node.reserve(&buyer, &sale, 1).await;
        let took = started.elapsed();
        r.expect_problem(503, "unavailable");
        assert!(r.header("retry-after").is_some(), "503 says when to retry");
        assert!(
            took < Duration::from_secs(2),
            "answered in {took:?}, not hung"
        );
    }
    proxy.cut.send(false).unwrap();
    let mut sold = false;
    for _ in 0..100 {
        if node.reserve(&buyer, &sale, 1).await.status == 201 {
            sold = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sold, "selling resumes once Redis is reachable again");
    let (_, available, held, sold) = counters_in_postgres(&mode, &sale).await;
    assert_eq!(
        (available, held, sold),
        (48, 2, 0),
        "nothing was held while the gate was away; the refund and the release returned stock"
    );
    // The metrics read the gate too: give the node's Redis connection a moment to be back.
    let path = format!("/api/v1/admin/sales/{sale}/metrics");
    let mut m = node.get(&path, Some(&admin)).await;
    for _ in 0..100 {
        if m.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = node.get(&path, Some(&admin)).await;
    }
    assert_invariant(m.expect(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sweeps_lapsed_holds_when_no_node_is_left_to_do_it() {
    let _turn = TURN.lock().await;
    let Some(mode) = Mode::cluster().await else {
        return;
    };
    let mut node = TestServer::start_in(mode.clone()).await;
    let admin = node.admin_token().await;
    let sale = node.create_sale(&admin, 10, 5, 1).await;
    let buyer = node.buyer().await;
    let hold = node.hold(&buyer, &sale, 3).await;
    tokio::task::block_in_place(|| node.kill9());

    let dir = tempfile::tempdir().unwrap();
    let mut worker = std::process::Command::new(common::binary());
    worker
        .arg("worker")
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    for (k, v) in common::default_env().into_iter().chain(mode.env()) {
        worker.env(k, v);
    }
    let mut worker = worker.spawn().unwrap();
    let mut state = String::new();
    for _ in 0..100 {
        state = holds_in_postgres(&mode, &sale)
            .await
            .into_iter()
            .find(|(id, _, _, _)| *id == hold)
            .map(|(_, _, _, s)| s)
            .unwrap();
        if state == "expired" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(
        state, "expired",
        "the worker's sweeper ended the lapsed hold"
    );
    assert_eq!(counters_in_postgres(&mode, &sale).await, (10, 10, 0, 0));
}
