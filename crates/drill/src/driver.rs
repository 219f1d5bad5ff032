//! The open-model driver: each buyer starts at its scheduled arrival time whether or not the
//! buyers before it have been answered.
//!
//! At most `connections` buyers are in flight at once (a machine has only so many sockets);
//! a buyer who arrives while all are busy waits for one, and that wait counts in its latency,
//! because latency is measured from the scheduled arrival. So a slow server shows as high
//! latency, never as a politely reduced load. Within one buyer the steps are sequential (you
//! pay after your reservation is answered), each timed from when it was sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::client::{code, Api};
use crate::plan::{Behaviour, PlannedBuyer};
use crate::stats::Stats;

/// What every buyer task shares.
pub struct Ctx {
    pub api: Api,
    pub sale_id: String,
    /// Bearer token of each account; buyer `i` uses account `i mod len` (one account per
    /// buyer unless the drill was told to share fewer).
    pub tokens: Vec<String>,
    pub stats: Arc<Stats>,
    /// How many times a refresher reads the sale page.
    pub refreshes: u32,
    /// How long a queue joiner waits for admission before giving up.
    pub queue_patience: Duration,
}

impl Ctx {
    fn token(&self, buyer: usize) -> Option<&str> {
        let n = self.tokens.len();
        (n > 0)
            .then(|| self.tokens.get(buyer % n).map(String::as_str))
            .flatten()
    }
}

/// Runs the plan to the end (every buyer's visit finished). Returns the wall time from T-0.
pub async fn drive(
    ctx: Arc<Ctx>,
    plan: &[PlannedBuyer],
    connections: usize,
    progress: bool,
) -> Duration {
    let bar = if progress {
        let bar = ProgressBar::new(plan.len() as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} buyers ({per_sec}, eta {eta}) {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let slots = Arc::new(Semaphore::new(connections.max(1)));
    let start = ctx.stats.start();
    let mut tasks = tokio::task::JoinSet::new();
    for buyer in plan {
        let scheduled = start + buyer.at;
        // Wait for the arrival time first, then for a free connection: the wait for a
        // connection is part of what the buyer experiences.
        tokio::time::sleep_until(scheduled.into()).await;
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let ctx = ctx.clone();
        let buyer = *buyer;
        let bar = bar.clone();
        tasks.spawn(async move {
            visit(&ctx, buyer, scheduled).await;
            bar.inc(1);
            drop(permit);
        });
        // Reap finished visits as we go, so a million buyers never pile up as handles.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    bar.finish_and_clear();
    start.elapsed()
}

/// One buyer's visit, start to end, with exactly one outcome recorded.
async fn visit(ctx: &Ctx, buyer: PlannedBuyer, scheduled: Instant) {
    let outcome = match buyer.behaviour {
        Behaviour::Healthz => {
            let (status, _) = ctx.api.call(Method::GET, "/healthz", None, None, &[]).await;
            ctx.stats.request("healthz", status, scheduled);
            if status == 200 {
                "healthz"
            } else {
                failure(status)
            }
        }
        Behaviour::Refresh => refresh(ctx, buyer, scheduled).await,
        Behaviour::Queue => queue_then_buy(ctx, buyer, scheduled).await,
        Behaviour::Pay | Behaviour::Abandon | Behaviour::Decline | Behaviour::Reserve => {
            buy(ctx, buyer, scheduled, None).await
        }
    };
    ctx.stats.outcome(outcome);
}

fn failure(status: u16) -> &'static str {
    match status {
        0 => "transport_error",
        429 => "rate_limited",
        500..=599 => "server_error",
        _ => "unexpected_answer",
    }
}

async fn refresh(ctx: &Ctx, buyer: PlannedBuyer, scheduled: Instant) -> &'static str {
    let path = format!("/api/v1/sales/{}", ctx.sale_id);
    let token = ctx.token(buyer.index);
    let mut from = scheduled;
    for _ in 0..ctx.refreshes.max(1) {
        let (status, _) = ctx.api.call(Method::GET, &path, token, None, &[]).await;
        ctx.stats.request("sale", status, from);
        if status != 200 {
            return failure(status);
        }
        from = Instant::now();
    }
    "refreshed"
}

/// Joins the waiting room, waits to be admitted, then buys with the admission token. A server
/// without a waiting room (404 on the queue), or a sale without one (409), is counted as
/// "queue unavailable" and the buyer buys without one.
async fn queue_then_buy(ctx: &Ctx, buyer: PlannedBuyer, scheduled: Instant) -> &'static str {
    let Some(token) = ctx.token(buyer.index) else {
        return "unexpected_answer";
    };
    let device = format!("drill-device-{}", buyer.index);
    let path = format!("/api/v1/sales/{}/queue", ctx.sale_id);
    let join_sent = Instant::now();
    let (status, body) = ctx
        .api
        .call(
            Method::POST,
            &path,
            Some(token),
            Some(&json!({"device_id": device})),
            &[],
        )
        .await;
    let join_answered = Instant::now();
    ctx.stats.request("queue_join", status, scheduled);
    match (status, code(&body)) {
        (200..=299, _) => {}
        (409, "sold_out") => return "sold_out",
        (409, "sale_not_live") => return "sale_not_live",
        // No waiting room: on this server (404) or for this sale (409). Buy without one.
        (404 | 405 | 409, _) => {
            ctx.stats.queue_unavailable();
            return buy(ctx, buyer, Instant::now(), None).await;
        }
        _ => return failure(status),
    }
    let deadline = Instant::now() + ctx.queue_patience;
    let me = format!("/api/v1/sales/{}/queue/me", ctx.sale_id);
    loop {
        let sent = Instant::now();
        let (status, body) = ctx.api.call(Method::GET, &me, Some(token), None, &[]).await;
        ctx.stats.request("queue_me", status, sent);
        if status != 200 {
            return failure(status);
        }
        match body["status"].as_str().unwrap_or("") {
            status @ ("admitted" | "lottery_won") => {
                if status == "admitted" {
                    ctx.stats.admitted(join_sent, join_answered);
                }
                let admission = body["admission_token"].as_str().map(str::to_owned);
                return buy(ctx, buyer, Instant::now(), admission.as_deref()).await;
            }
            "lottery_lost" => return "lottery_lost",
            "expired" => return "queue_expired",
            "sold_out" => return "sold_out",
            "used" => return "queue_token_used",
            _ => {}
        }
        if Instant::now() >= deadline {
            return "queue_timeout";
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reserves one unit, then pays, declines or walks away by the buyer's behaviour.
async fn buy(
    ctx: &Ctx,
    buyer: PlannedBuyer,
    from: Instant,
    admission: Option<&str>,
) -> &'static str {
    let Some(token) = ctx.token(buyer.index) else {
        return "unexpected_answer";
    };
    ctx.stats.demanded(1);
    // An admission token is bound to the device that queued: both go with the reservation.
    let device = format!("drill-device-{}", buyer.index);
    let headers: Vec<(&str, &str)> = match admission {
        Some(t) => vec![("x-admission-token", t), ("x-device-id", device.as_str())],
        None => vec![],
    };
    let (status, body) = ctx
        .api
        .call(
            Method::POST,
            "/api/v1/cart/items",
            Some(token),
            Some(&json!({"sale_id": ctx.sale_id, "quantity": 1})),
            &headers,
        )
        .await;
    ctx.stats.request("reserve", status, from);
    if status != 201 {
        return match (status, code(&body)) {
            (409, "sold_out") => "sold_out",
            (422, "limit_exceeded") => "limit_exceeded",
            (403, "not_admitted") => "not_admitted",
            (409, "sale_not_live") => "sale_not_live",
            _ => failure(status),
        };
    }
    ctx.stats.acked_hold();
    let card = match buyer.behaviour {
        Behaviour::Abandon => return "abandoned",
        Behaviour::Reserve => return "held",
        Behaviour::Decline => "tok_decline",
        _ => "tok_ok",
    };
    let Some(hold) = body["hold_id"].as_str() else {
        return "unexpected_answer";
    };
    let key = format!("drill-{}-{hold}", buyer.index);
    let sent = Instant::now();
    let (status, body) = ctx
        .api
        .call(
            Method::POST,
            "/api/v1/orders",
            Some(token),
            Some(&json!({"hold_ids": [hold], "payment": {"method": "card", "token": card}})),
            &[("idempotency-key", &key)],
        )
        .await;
    ctx.stats.request("order", status, sent);
    match (status, body["status"].as_str().unwrap_or("")) {
        (201, "confirmed") => {
            ctx.stats.acked_confirmed_order();
            "bought"
        }
        (201, _) => "payment_pending",
        (402, _) => "declined",
        (409, _) if code(&body) == "hold_expired" => "hold_expired",
        _ => failure(status),
    }
}

/// Reads the sale's stock from the admin API every `every` until `stop` flips.
pub async fn sample_stock(
    api: Api,
    admin: String,
    sale_id: String,
    stats: Arc<Stats>,
    every: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if let Ok(m) = api.metrics(&admin, &sale_id).await {
            stats.stock(m.available, m.held, m.sold);
        }
        if *stop.borrow() {
            return;
        }
    }
}
