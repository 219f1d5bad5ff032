//! kill -9 in the middle of a burst, round after round: whatever was acknowledged survives the
//! restart, the stock still adds up, and the money too — every acknowledged order's charge is
//! captured (or refunded) exactly once at the sandbox gateway, whose ledger outlives the
//! process. `STAMPEDE_CRASH_ROUNDS=N` runs more rounds than CI's 20.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{assert_invariant, Api, Rng, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use stampede_payments::{read_journal, Charge, ChargeState};

const USERS: usize = 40;
const TOTAL: i64 = 100;
const LIMIT: i64 = 3;
/// Kill -9 rounds by default (CI); `STAMPEDE_CRASH_ROUNDS` for a longer drill.
const ROUNDS: usize = 20;

fn rounds() -> usize {
    std::env::var("STAMPEDE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(ROUNDS)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum HoldState {
    /// Must be in its owner's cart.
    Held,
    /// Must not be in the cart (released, or gone for a reason we observed).
    Released,
    /// Turned into an order: must not be in the cart.
    Ordered,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum OrderState {
    Confirmed,
    Refunded,
}

#[derive(Debug)]
struct Rec<S> {
    user: usize,
    state: S,
    /// False when a later request about it was in flight at the crash (either outcome is fine).
    certain: bool,
}

#[derive(Default)]
struct Ledger {
    holds: HashMap<String, Rec<HoldState>>,
    orders: HashMap<String, Rec<OrderState>>,
    /// Answers no request in this test should get: (what, status, body).
    unexpected: Vec<(String, u16, String)>,
    acks: usize,
    /// Acknowledged orders whose charge was checked at the gateway (all rounds).
    payments_checked: usize,
    /// Acknowledged hold changes (reserved, released) this round.
    hold_acks: usize,
    /// Acknowledged orders (placed, refunded) this round.
    order_acks: usize,
}

type Shared = Arc<Mutex<Ledger>>;

fn set_hold(l: &Shared, id: &str, user: usize, state: HoldState, certain: bool) {
    let mut l = l.lock().unwrap();
    l.acks += 1;
    l.hold_acks += 1;
    l.holds.insert(
        id.to_string(),
        Rec {
            user,
            state,
            certain,
        },
    );
}

fn set_order(l: &Shared, id: &str, user: usize, state: OrderState, certain: bool) {
    let mut l = l.lock().unwrap();
    l.acks += 1;
    l.order_acks += 1;
    l.orders.insert(
        id.to_string(),
        Rec {
            user,
            state,
            certain,
        },
    );
}

fn unsure_hold(l: &Shared, id: &str) {
    if let Some(r) = l.lock().unwrap().holds.get_mut(id) {
        r.certain = false;
    }
}

fn unsure_order(l: &Shared, id: &str) {
    if let Some(r) = l.lock().unwrap().orders.get_mut(id) {
        r.certain = false;
    }
}

fn unexpected(l: &Shared, what: &str, r: &common::Resp) {
    l.lock()
        .unwrap()
        .unexpected
        .push((what.to_string(), r.status, r.text.clone()));
}

/// Releases a hold. Returns false once the server is gone.
async fn release(api: &Api, token: &str, user: usize, hold: &str, l: &Shared) -> bool {
    let rb = api.request(
        Method::DELETE,
        &format!("/api/v1/cart/items/{hold}"),
        Some(token),
    );
    match api.try_send(rb).await {
        Err(_) => {
            unsure_hold(l, hold);
            false
        }
        Ok(r) if r.status == 204 => {
            set_hold(l, hold, user, HoldState::Released, true);
            true
        }
        // A checkout cut short by an earlier crash can leave the hold in an order still
        // awaiting payment; the contract lets such a hold be refused with a conflict.
        Ok(r) if r.status == 409 && r.code() == "conflict" => true,
        Ok(r) => {
            unexpected(l, "DELETE hold", &r);
            true
        }
    }
}

/// Cancels an order. Returns false once the server is gone.
async fn cancel(api: &Api, token: &str, user: usize, order: &str, l: &Shared) -> bool {
    let rb = api.request(
        Method::POST,
        &format!("/api/v1/orders/{order}/cancel"),
        Some(token),
    );
    match api.try_send(rb).await {
        Err(_) => {
            unsure_order(l, order);
            false
        }
        Ok(r) if r.status == 200 && r.json["status"] == "refunded" => {
            set_order(l, order, user, OrderState::Refunded, true);
            true
        }
        Ok(r) => {
            unexpected(l, "cancel order", &r);
            true
        }
    }
}

/// One buyer hammering the sale until the server dies: reserve, then release, buy (and maybe
/// cancel) or keep; when limited or sold out, free something of its own.
#[allow(clippy::too_many_arguments)]
async fn buyer_loop(
    api: Api,
    user: usize,
    token: String,
    sale: String,
    l: Shared,
    mut my_holds: Vec<String>,
    mut my_orders: Vec<String>,
    seed: u64,
) {
    let mut rng = Rng::with_seed(seed);
    loop {
        let rb = api
            .request(Method::POST, "/api/v1/cart/items", Some(&token))
            .json(&json!({"sale_id": sale, "quantity": 1}));
        let r = match api.try_send(rb).await {
            Ok(r) => r,
            Err(_) => return,
        };
        match (r.status, r.code()) {
            (201, _) => {
                let Some(hold) = r.json["hold_id"].as_str().map(str::to_string) else {
                    unexpected(&l, "reserve without hold_id", &r);
                    return;
                };
                set_hold(&l, &hold, user, HoldState::Held, true);
                match rng.range(0, 3) {
                    0 => {
                        if !release(&api, &token, user, &hold, &l).await {
                            return;
                        }
                    }
                    1 => {
                        let key = format!("crash-{user}-{}", rng.next_u64());
                        let rb = api
                            .request(Method::POST, "/api/v1/orders", Some(&token))
                            .header("Idempotency-Key", key)
                            .json(&common::order_body(&[&hold], "tok_ok"));
                        match api.try_send(rb).await {
                            Err(_) => {
                                unsure_hold(&l, &hold);
                                return;
                            }
                            Ok(r) if r.status == 201 && r.json["status"] == "confirmed" => {
                                let order = r.json["order_id"].as_str().unwrap_or("").to_string();
                                set_hold(&l, &hold, user, HoldState::Ordered, true);
                                set_order(&l, &order, user, OrderState::Confirmed, true);
                                if rng.range(0, 2) == 0 {
                                    if !cancel(&api, &token, user, &order, &l).await {
                                        return;
                                    }
                                } else {
                                    my_orders.push(order);
                                }
                            }
                            Ok(r) => unexpected(&l, "order", &r),
                        }
                    }
                    _ => my_holds.push(hold),
                }
            }
            (409, "sold_out") | (422, "limit_exceeded") => {
                if let Some(h) = my_holds.pop() {
                    if !release(&api, &token, user, &h, &l).await {
                        return;
                    }
                } else if let Some(o) = my_orders.pop() {
                    if !cancel(&api, &token, user, &o, &l).await {
                        return;
                    }
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            _ => {
                unexpected(&l, "reserve", &r);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// What the server holds for each user after a restart.
struct Observed {
    /// Per user: hold ids in the cart.
    holds: Vec<Vec<String>>,
    /// Per user: confirmed order ids.
    confirmed: Vec<Vec<String>>,
}

/// Checks the restarted server against everything acknowledged, then brings the ledger in line
/// with what was observed (so the next round starts from certain knowledge).
async fn verify(
    api: &Api,
    admin: &str,
    sale: &str,
    tokens: &[String],
    ledger: &mut Ledger,
    round: usize,
    journal: &std::path::Path,
) -> Observed {
    let mut bad = Vec::new();
    let mut cart_qty_total = 0;
    let mut confirmed_qty_total = 0;
    let mut pending_orders = 0;
    let mut carts: Vec<HashMap<String, i64>> = Vec::new();
    // (order, status, gateway reference) of every acknowledged order, for the money check.
    let mut references: Vec<(String, String, String)> = Vec::new();
    let mut orders: Vec<HashMap<String, Value>> = Vec::new();
    for (u, token) in tokens.iter().enumerate() {
        let r = api.get("/api/v1/cart", Some(token)).await;
        assert_eq!(
            r.status, 200,
            "round {round}: user {u}'s session must survive the restart; GET /cart: {}",
            r.text
        );
        let mut cart = HashMap::new();
        for item in r.json["items"].as_array().expect("cart items") {
            let q = item["quantity"].as_i64().expect("quantity");
            cart.insert(item["hold_id"].as_str().expect("hold_id").to_string(), q);
        }
        let r = api.get("/api/v1/orders", Some(token)).await;
        assert_eq!(r.status, 200, "round {round}: GET /orders: {}", r.text);
        let mut own = HashMap::new();
        for o in r.json["orders"].as_array().expect("orders") {
            own.insert(
                o["order_id"].as_str().expect("order_id").to_string(),
                o.clone(),
            );
        }
        let cart_qty: i64 = cart.values().sum();
        let mut confirmed_qty = 0;
        for o in own.values() {
            let q: i64 = o["items"]
                .as_array()
                .expect("order items")
                .iter()
                .map(|i| i["quantity"].as_i64().expect("quantity"))
                .sum();
            match o["status"].as_str() {
                Some("confirmed") => confirmed_qty += q,
                Some("pending_payment") => pending_orders += 1,
                _ => {}
            }
        }
        if cart_qty + confirmed_qty > LIMIT {
            bad.push(format!(
                "user {u}: held {cart_qty} + sold {confirmed_qty} exceeds the per-user limit {LIMIT}"
            ));
        }
        cart_qty_total += cart_qty;
        confirmed_qty_total += confirmed_qty;
        carts.push(cart);
        orders.push(own);
    }

    for (id, rec) in &ledger.holds {
        let in_cart = carts[rec.user].contains_key(id);
        if !rec.certain {
            continue;
        }
        match rec.state {
            HoldState::Held if !in_cart => bad.push(format!(
                "acknowledged hold {id} of user {} is missing from the cart",
                rec.user
            )),
            HoldState::Released | HoldState::Ordered if in_cart => bad.push(format!(
                "hold {id} of user {} came back into the cart (acknowledged {:?})",
                rec.user, rec.state
            )),
            _ => {}
        }
    }
    for (id, rec) in &ledger.orders {
        let token = &tokens[rec.user];
        let r = api.get(&format!("/api/v1/orders/{id}"), Some(token)).await;
        if r.status != 200 {
            bad.push(format!(
                "acknowledged order {id} of user {}: GET answered {} {}",
                rec.user, r.status, r.text
            ));
            continue;
        }
        if !orders[rec.user].contains_key(id) {
            bad.push(format!(
                "order {id} is missing from user {}'s list",
                rec.user
            ));
        }
        let status = r.json["status"].as_str().unwrap_or("").to_string();
        let pay = r.json["payment"]["status"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if let Some(reference) = r.json["payment"]["reference"].as_str() {
            references.push((id.clone(), status.clone(), reference.to_string()));
        }
        let ok = match (rec.certain, rec.state) {
            (true, OrderState::Confirmed) => status == "confirmed" && pay == "captured",
            (true, OrderState::Refunded) => status == "refunded",
            (false, _) => status == "confirmed" || status == "refunded",
        };
        if !ok {
            bad.push(format!(
                "order {id} acknowledged as {:?} (certain: {}) is now {status} / payment {pay}",
                rec.state, rec.certain
            ));
        }
    }

    // The money, at the gateway: nobody charged twice, and every acknowledged order's charge
    // is where its order says (a capture a kill cut short was finished at the restart).
    let charges: HashMap<String, Charge> = read_journal(journal)
        .expect("the sandbox's ledger")
        .into_iter()
        .map(|c| (c.reference.clone(), c))
        .collect();
    for c in charges.values() {
        if c.captures > 1 {
            bad.push(format!(
                "charge {} captured {} times",
                c.reference, c.captures
            ));
        }
    }
    for (order, status, reference) in &references {
        let wanted = match status.as_str() {
            "confirmed" => ChargeState::Captured,
            "refunded" => ChargeState::Refunded,
            _ => continue,
        };
        let state = charges.get(reference).map(|c| c.state);
        if state != Some(wanted) {
            bad.push(format!(
                "order {order} is {status} but its charge {reference} is {state:?} at the gateway"
            ));
        }
    }
    ledger.payments_checked += references.len();

    let m = api.metrics(admin, sale).await;
    assert_invariant(&m);
    assert_eq!(m["total_stock"], TOTAL, "{m}");
    if m["sold"].as_i64() != Some(confirmed_qty_total) {
        bad.push(format!(
            "metrics sold {} but the users' confirmed orders hold {confirmed_qty_total} units",
            m["sold"]
        ));
    }
    let held = m["held"].as_i64().unwrap_or(-1);
    if (pending_orders == 0 && held != cart_qty_total) || cart_qty_total > held {
        bad.push(format!(
            "metrics held {held} but the users' carts hold {cart_qty_total} units \
             ({pending_orders} orders pending)"
        ));
    }
    assert!(
        bad.is_empty(),
        "round {round}: after kill -9 and restart:\n  {}\nmetrics: {m}",
        bad.join("\n  ")
    );

    // Resync: what we saw is now certain.
    for (id, rec) in ledger.holds.iter_mut() {
        if !rec.certain {
            rec.certain = true;
            if !carts[rec.user].contains_key(id) {
                rec.state = HoldState::Released;
            }
        }
    }
    ledger.orders.clear();
    let mut observed = Observed {
        holds: Vec::new(),
        confirmed: Vec::new(),
    };
    for (u, (cart, own)) in carts.iter().zip(&orders).enumerate() {
        for id in cart.keys() {
            ledger.holds.insert(
                id.clone(),
                Rec {
                    user: u,
                    state: HoldState::Held,
                    certain: true,
                },
            );
        }
        let mut confirmed = Vec::new();
        for (id, o) in own {
            let state = match o["status"].as_str() {
                Some("confirmed") => OrderState::Confirmed,
                Some("refunded") => OrderState::Refunded,
                _ => continue,
            };
            if state == OrderState::Confirmed {
                confirmed.push(id.clone());
            }
            ledger.orders.insert(
                id.clone(),
                Rec {
                    user: u,
                    state,
                    certain: true,
                },
            );
        }
        observed.holds.push(cart.keys().cloned().collect());
        observed.confirmed.push(confirmed);
    }
    observed
}

in_both_modes! {
    async fn kill9_mid_burst_loses_nothing_acknowledged(mode) {
        let mut server = TestServer::start_in(mode.clone()).await;
        let admin = server.admin_token().await;
        let sale = server
            .create_sale(&admin, TOTAL as u64, LIMIT as u64, 600)
            .await;
        let tokens = server.buyers(USERS, 8).await;
        let mut rng = Rng::seeded();
        let mut ledger = Ledger::default();
        let mut observed = Observed {
            holds: vec![Vec::new(); USERS],
            confirmed: vec![Vec::new(); USERS],
        };
        let mut total_acks = 0;
        let (mut hold_acks, mut order_acks) = (0, 0);
        let rounds = rounds();
        let journal = server.data_dir().join("sandbox-ledger.jsonl");
        let started = std::time::Instant::now();

        for round in 1..=rounds {
            let shared: Shared = Arc::new(Mutex::new(std::mem::take(&mut ledger)));
            {
                let mut l = shared.lock().unwrap();
                l.acks = 0;
                l.hold_acks = 0;
                l.order_acks = 0;
            }
            let mut tasks = Vec::new();
            for (u, token) in tokens.iter().enumerate() {
                tasks.push(tokio::spawn(buyer_loop(
                    server.api(),
                    u,
                    token.clone(),
                    sale.clone(),
                    shared.clone(),
                    observed.holds[u].clone(),
                    observed.confirmed[u].clone(),
                    rng.next_u64(),
                )));
            }
            // Long enough for a real burst (hundreds of requests from 40 buyers at once, orders
            // among them even in cluster mode), short enough for 20 rounds in CI.
            let delay = rng.range(200, 800);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            server.kill9();
            for t in tasks {
                tokio::time::timeout(Duration::from_secs(60), t)
                    .await
                    .expect("buyer tasks end once the server is dead")
                    .expect("buyer task panicked");
            }
            ledger = Arc::try_unwrap(shared)
                .ok()
                .expect("tasks are done")
                .into_inner()
                .unwrap();
            assert!(
                ledger.acks > 0,
                "round {round}: nothing was acknowledged in {delay} ms; the burst never ran"
            );
            total_acks += ledger.acks;
            hold_acks += ledger.hold_acks;
            order_acks += ledger.order_acks;
            let internal: Vec<_> = ledger
                .unexpected
                .iter()
                .filter(|(_, status, _)| *status >= 500 && *status != 503)
                .collect();
            assert!(
                internal.is_empty(),
                "round {round}: server errors during the burst: {internal:?}"
            );
            if !ledger.unexpected.is_empty() {
                eprintln!(
                    "round {round}: {} unexpected answers, e.g. {:?}",
                    ledger.unexpected.len(),
                    ledger.unexpected.iter().take(3).collect::<Vec<_>>()
                );
                ledger.unexpected.clear();
            }

            server.restart().await;
            let r = server.get("/readyz", None).await;
            assert_eq!(r.status, 200, "readyz after restart: {}", r.text);
            observed = verify(
                &server.api(),
                &admin,
                &sale,
                &tokens,
                &mut ledger,
                round,
                &journal,
            )
            .await;
            eprintln!(
                "round {round}: killed after {delay} ms, {} acknowledged operations verified",
                ledger.acks
            );
        }
        assert!(total_acks > 0);
        assert!(
            !ledger.orders.is_empty(),
            "the bursts should have placed some orders: the checkout path went untested"
        );

        // The restarted server still sells, and never more than it has.
        let m = server.metrics(&admin, &sale).await;
        let available = m["available"].as_i64().unwrap();
        let late = server.buyer().await;
        let r = server.reserve(&late, &sale, 1).await;
        if available > 0 {
            r.expect(201);
        } else {
            r.expect_problem(409, "sold_out");
        }
        let m = server.metrics(&admin, &sale).await;
        assert_invariant(&m);
        let distinct: HashSet<_> = tokens.iter().collect();
        assert_eq!(distinct.len(), USERS);
        // One line to quote: every check above passed for every round.
        eprintln!(
            "crash drill ({}): {rounds} kill -9 rounds in {:.1?}; acknowledged and checked \
             after restarts: {hold_acks} holds, {order_acks} orders, {} payment checks at the \
             gateway; lost 0, oversold 0, double charges 0",
            if matches!(mode, common::Mode::Embedded) { "embedded" } else { "cluster" },
            started.elapsed(),
            ledger.payments_checked,
        );
    }
}
