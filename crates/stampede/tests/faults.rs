//! Fault drills: two cluster nodes sell one sale to a crowd of buyers (reserve, then check
//! out) while PostgreSQL, Redis or RabbitMQ is cut, hung or emptied under them — through a
//! proxy of our own in front of each service, so the shared services themselves are never
//! touched — or while one node is killed with SIGKILL. Every drill asserts the same things:
//!
//! * nothing oversold: the judge's counters balance and the admin metrics say `invariant_ok`;
//! * nothing acknowledged lost: every hold answered 201 and every order answered `confirmed`
//!   is in PostgreSQL afterwards, still alive;
//! * fail fast: no request takes longer than the node's request deadline plus a margin, and
//!   no answer is a 500;
//! * recovery: selling resumes after the fault ends; the time from the restore to the first
//!   success is printed with the other figures (`fault-drill <name>: …`).
//!
//! Skipped with a message when the services are down; under CI that is a failure. The drills
//! take turns (one lock) so that their figures are not skewed by each other on a small machine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/faultproxy.rs"]
mod faultproxy;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use common::{assert_invariant, Api, ClusterEnv, Mode, TestServer};
use faultproxy::FaultProxy;
use serde_json::json;
use tokio::sync::Mutex;

/// One drill at a time in this binary.
static TURN: Mutex<()> = Mutex::const_new(());

/// The request deadline the nodes are given (`STAMPEDE_REQUEST_TIMEOUT_MS`).
const DEADLINE: Duration = Duration::from_millis(2000);
/// What a request may take beyond the deadline: scheduling on a busy two-core machine, the
/// client's own connection set-up.
const MARGIN: Duration = Duration::from_millis(1500);
/// Buyers racing in each drill, and the pause each takes between two purchases.
const BUYERS: usize = 12;
const PAUSE: Duration = Duration::from_millis(60);
/// Stock large enough that the race never sells out: every drill must see selling resume.
const STOCK: u64 = 5000;
/// How long the race runs before the fault, and after the first success that follows it.
const BEFORE_FAULT: Duration = Duration::from_millis(1200);
const AFTER_RECOVERY: Duration = Duration::from_millis(1000);
/// Longest the outbox may take to drain once the broker is back: well under the relay's
/// lease (30 s), which is what a failed publish used to wait out.
const OUTBOX_DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// Longest a drill waits for selling to resume after the restore.
const RECOVERY_LIMIT: Duration = Duration::from_secs(20);

/// Two nodes of one cluster namespace, each reaching the services through proxies of its own
/// test: PostgreSQL, Redis and RabbitMQ can be faulted independently.
struct Rig {
    env: Arc<ClusterEnv>,
    pg: FaultProxy,
    redis: FaultProxy,
    amqp: FaultProxy,
    nodes: Vec<TestServer>,
    admin: String,
    sale: String,
    buyers: Vec<String>,
}

async fn rig() -> Option<Rig> {
    let mode = Mode::cluster().await?;
    let Mode::Cluster(env) = &mode else {
        unreachable!("Mode::cluster gives a cluster")
    };
    let env = env.clone();
    let pg = FaultProxy::start("127.0.0.1:5432").await;
    let redis = FaultProxy::start("127.0.0.1:6379").await;
    let amqp = FaultProxy::start("127.0.0.1:5672").await;
    let pg_url = format!(
        "postgres://postgres@{}/test?options[search_path]={}",
        pg.addr(),
        env.name
    );
    let redis_url = format!("redis://{}/", redis.addr());
    let amqp_url = format!("amqp://guest:guest@{}/%2f", amqp.addr());
    let deadline_ms = DEADLINE.as_millis().to_string();
    let vars = [
        ("STAMPEDE_POSTGRES_URL", pg_url.as_str()),
        ("STAMPEDE_REDIS_URL", redis_url.as_str()),
        ("STAMPEDE_AMQP_URL", amqp_url.as_str()),
        ("STAMPEDE_REDIS_TIMEOUT_MS", "300"),
        ("STAMPEDE_REQUEST_TIMEOUT_MS", deadline_ms.as_str()),
    ];
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(TestServer::start_with_in(mode.clone(), &vars, None).await);
    }
    let admin = nodes[0].admin_token().await;
    let sale = nodes[0].create_sale(&admin, STOCK, 1000, 600).await;
    let buyers = nodes[1].buyers(BUYERS, BUYERS).await;
    Some(Rig {
        env,
        pg,
        redis,
        amqp,
        nodes,
        admin,
        sale,
        buyers,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reserve,
    Checkout,
}

/// One request of the race, as its buyer saw it.
#[derive(Debug, Clone)]
struct Call {
    kind: Kind,
    buyer: usize,
    node: usize,
    started: Instant,
    took: Duration,
    /// `None`: no HTTP answer (connection refused or reset, or no answer at all in time).
    status: Option<u16>,
    code: String,
    /// The body, or the transport error: shown when an assertion names the call.
    #[allow(dead_code)]
    text: String,
    /// The hold (reserve 201) or order (checkout 201 `confirmed`) the buyer was told about.
    acknowledged: Option<String>,
}

impl Call {
    fn ended(&self) -> Instant {
        self.started + self.took
    }

    fn succeeded(&self) -> bool {
        self.acknowledged.is_some()
    }
}

/// Sends with a hard limit well past the deadline, so a hung request is recorded, not waited
/// for forever.
async fn timed(api: &Api, rb: reqwest::RequestBuilder) -> (Duration, Option<common::Resp>, String) {
    let started = Instant::now();
    let limit = DEADLINE + MARGIN + Duration::from_secs(5);
    match tokio::time::timeout(limit, api.try_send(rb)).await {
        Ok(Ok(r)) => (started.elapsed(), Some(r), String::new()),
        Ok(Err(e)) => (started.elapsed(), None, e.to_string()),
        Err(_) => (
            started.elapsed(),
            None,
            format!("no answer within {limit:?}"),
        ),
    }
}

/// The race: every buyer reserves one unit and checks it out, again and again, until told to
/// stop. A buyer whose node is gone (no answer at all) moves to the other node, as a load
/// balancer would.
struct Race {
    stop: Arc<AtomicBool>,
    calls: Arc<StdMutex<Vec<Call>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Race {
    fn start(apis: Vec<Api>, buyers: &[String], sale: &str) -> Race {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(StdMutex::new(Vec::new()));
        let tasks = buyers
            .iter()
            .enumerate()
            .map(|(i, token)| {
                let (apis, token, sale) = (apis.clone(), token.clone(), sale.to_owned());
                let (stop, calls) = (stop.clone(), calls.clone());
                tokio::spawn(async move {
                    let mut node = i % apis.len();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let api = &apis[node];
                        let started = Instant::now();
                        let rb = api
                            .request(reqwest::Method::POST, "/api/v1/cart/items", Some(&token))
                            .json(&json!({"sale_id": sale, "quantity": 1}));
                        let (took, r, err) = timed(api, rb).await;
                        let hold = r
                            .as_ref()
                            .filter(|r| r.status == 201)
                            .and_then(|r| r.json["hold_id"].as_str().map(str::to_owned));
                        let refused = r.is_none();
                        let sold_out = r.as_ref().is_some_and(|r| r.status == 409);
                        calls.lock().unwrap().push(call(
                            Kind::Reserve,
                            i,
                            node,
                            started,
                            took,
                            r,
                            err,
                            hold.clone(),
                        ));
                        if let Some(hold) = hold {
                            n += 1;
                            let started = Instant::now();
                            let rb = api
                                .request(reqwest::Method::POST, "/api/v1/orders", Some(&token))
                                .header("Idempotency-Key", format!("drill-{i}-{n}"))
                                .json(&common::order_body(&[&hold], "tok_ok"));
                            let (took, r, err) = timed(api, rb).await;
                            let order = r
                                .as_ref()
                                .filter(|r| r.status == 201 && r.json["status"] == "confirmed")
                                .and_then(|r| r.json["order_id"].as_str().map(str::to_owned));
                            calls.lock().unwrap().push(call(
                                Kind::Checkout,
                                i,
                                node,
                                started,
                                took,
                                r,
                                err,
                                order,
                            ));
                        }
                        if sold_out {
                            break;
                        }
                        if refused {
                            node = (node + 1) % apis.len();
                        }
                        tokio::time::sleep(PAUSE).await;
                    }
                })
            })
            .collect();
        Race { stop, calls, tasks }
    }

    fn snapshot(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits for the first success that ended after `since`; its delay from `since`.
    async fn first_success_after(&self, since: Instant) -> Option<Duration> {
        let deadline = Instant::now() + RECOVERY_LIMIT;
        loop {
            let first = self
                .snapshot()
                .iter()
                .filter(|c| c.succeeded() && c.ended() >= since)
                .map(|c| c.ended() - since)
                .min();
            if first.is_some() || Instant::now() > deadline {
                return first;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> Vec<Call> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.calls)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_else(|arc| arc.lock().unwrap().clone())
    }
}

/// One call's record, from what the buyer saw.
#[allow(clippy::too_many_arguments)]
fn call(
    kind: Kind,
    buyer: usize,
    node: usize,
    started: Instant,
    took: Duration,
    r: Option<common::Resp>,
    err: String,
    acknowledged: Option<String>,
) -> Call {
    Call {
        kind,
        buyer,
        node,
        started,
        took,
        status: r.as_ref().map(|r| r.status),
        code: r.as_ref().map(|r| r.code().to_owned()).unwrap_or_default(),
        text: r.map(|r| r.text).unwrap_or(err),
        acknowledged,
    }
}

/// What a drill measured.
struct Figures {
    requests: usize,
    max_latency: Duration,
    unavailable: usize,
    recovered_in: Duration,
}

/// Asserts the drill's criteria on the race's calls and the judge's rows, prints the figures.
/// `no_answer_ok(call)` says which requests may go unanswered (those to a killed node).
async fn judge(
    name: &str,
    rig: &Rig,
    via: usize,
    calls: &[Call],
    recovered_in: Option<Duration>,
    no_answer_ok: impl Fn(&Call) -> bool,
) -> Figures {
    assert!(
        calls.iter().filter(|c| c.succeeded()).count() > 0,
        "{name}: the race sold something"
    );
    // Fail fast: every answer within the deadline plus the margin, and a known answer.
    let limit = DEADLINE + MARGIN;
    let slow: Vec<&Call> = calls.iter().filter(|c| c.took > limit).collect();
    assert!(
        slow.is_empty(),
        "{name}: {} requests took longer than the deadline {DEADLINE:?} + {MARGIN:?}; first: {:?}",
        slow.len(),
        slow.first()
    );
    let unexpected: Vec<&Call> = calls
        .iter()
        .filter(|c| match (c.kind, c.status) {
            (_, None) => !no_answer_ok(c),
            (Kind::Reserve, Some(201)) => c.acknowledged.is_none(),
            (Kind::Reserve, Some(409)) => {
                !["sold_out", "limit_exceeded"].contains(&c.code.as_str())
            }
            (Kind::Checkout, Some(201)) => c.acknowledged.is_none(),
            (Kind::Checkout, Some(409)) => c.code != "idempotency_in_progress",
            (_, Some(503)) => c.code != "unavailable",
            (_, Some(_)) => true,
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "{name}: {} unexpected answers (500s, unknown codes); first: {:?}",
        unexpected.len(),
        unexpected.first()
    );
    let recovered_in = recovered_in
        .unwrap_or_else(|| panic!("{name}: no success within {RECOVERY_LIMIT:?} of the restore"));

    // Nothing acknowledged lost: every hold and confirmed order the buyers were told about is
    // in the judge, alive.
    let pool = rig.env.pool().await;
    let holds: HashMap<String, String> =
        sqlx::query_as::<_, (String, String)>("SELECT id, state FROM holds WHERE sale_id = $1")
            .bind(&rig.sale)
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let orders: HashMap<String, String> =
        sqlx::query_as::<_, (String, String)>("SELECT id, status FROM orders")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let (total, available, held, sold): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT total_stock::BIGINT, available::BIGINT, held::BIGINT, sold::BIGINT \
         FROM sales WHERE id = $1",
    )
    .bind(&rig.sale)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    let mut acknowledged_holds = 0;
    let mut confirmed_orders = 0;
    for c in calls {
        let Some(id) = &c.acknowledged else { continue };
        match c.kind {
            Kind::Reserve => {
                acknowledged_holds += 1;
                let state = holds.get(id).map(String::as_str);
                assert!(
                    matches!(state, Some("active" | "converted")),
                    "{name}: acknowledged hold {id} is {state:?} in the judge"
                );
            }
            Kind::Checkout => {
                confirmed_orders += 1;
                assert_eq!(
                    orders.get(id).map(String::as_str),
                    Some("confirmed"),
                    "{name}: confirmed order {id} in the judge"
                );
            }
        }
    }
    // Nothing oversold: the judge's counters balance, and what is held or sold covers every
    // acknowledgement, within the stock.
    assert_eq!(
        available + held + sold,
        total,
        "{name}: the judge's counters"
    );
    assert!(held >= 0 && sold >= 0 && available >= 0);
    assert!(held + sold <= total, "{name}: held + sold within the stock");
    assert!(
        held + sold >= acknowledged_holds,
        "{name}: every acknowledged hold is counted"
    );
    let m = rig.nodes[via].metrics(&rig.admin, &rig.sale).await;
    assert_invariant(&m);

    let figures = Figures {
        requests: calls.len(),
        max_latency: calls.iter().map(|c| c.took).max().unwrap_or_default(),
        unavailable: calls.iter().filter(|c| c.status == Some(503)).count(),
        recovered_in,
    };
    println!(
        "fault-drill {name}: recovered in {} ms, requests {}, max latency {} ms, 503s {}, \
         holds {acknowledged_holds}, confirmed orders {confirmed_orders}, no answer {}, \
         at the deadline {} (reserve {}, checkout {})",
        figures.recovered_in.as_millis(),
        figures.requests,
        figures.max_latency.as_millis(),
        figures.unavailable,
        calls.iter().filter(|c| c.status.is_none()).count(),
        calls.iter().filter(|c| c.took >= DEADLINE).count(),
        calls
            .iter()
            .filter(|c| c.took >= DEADLINE && c.kind == Kind::Reserve)
            .count(),
        calls
            .iter()
            .filter(|c| c.took >= DEADLINE && c.kind == Kind::Checkout)
            .count(),
    );
    figures
}

/// Runs the race over both nodes, injects `fault` after a while, restores after `lasting`,
/// waits for selling to resume, and judges.
async fn drill(
    name: &str,
    rig: &Rig,
    lasting: Duration,
    fault: impl FnOnce(&Rig),
    restore: impl FnOnce(&Rig),
) -> Figures {
    let apis: Vec<Api> = rig.nodes.iter().map(|n| n.api()).collect();
    let race = Race::start(apis, &rig.buyers, &rig.sale);
    tokio::time::sleep(BEFORE_FAULT).await;
    let before = race.snapshot().iter().filter(|c| c.succeeded()).count();
    assert!(before > 0, "{name}: the race sells before the fault");
    fault(rig);
    tokio::time::sleep(lasting).await;
    restore(rig);
    let restored = Instant::now();
    let recovered_in = race.first_success_after(restored).await;
    tokio::time::sleep(AFTER_RECOVERY).await;
    let calls = race.finish().await;
    judge(name, rig, 1, &calls, recovered_in, |_| false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_mid_race() {
    let _turn = TURN.lock().await;
    let Some(rig) = rig().await else { return };
    let f = drill(
        "postgres-cut",
        &rig,
        Duration::from_millis(2500),
        |r| r.pg.cut(),
        |r| r.pg.restore(),
    )
    .await;
    assert!(f.unavailable > 0, "the cut was felt: some 503s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_blackholed_mid_race_fails_fast() {
    let _turn = TURN.lock().await;
    let Some(rig) = rig().await else { return };
    let f = drill(
        "postgres-blackhole",
        &rig,
        Duration::from_millis(4000),
        |r| r.pg.blackhole(),
        |r| r.pg.restore(),
    )
    .await;
    assert!(f.unavailable > 0, "the hang was felt: some 503s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_mid_race() {
    let _turn = TURN.lock().await;
    let Some(rig) = rig().await else { return };
    let f = drill(
        "redis-cut",
        &rig,
        Duration::from_millis(2500),
        |r| r.redis.cut(),
        |r| r.redis.restore(),
    )
    .await;
    assert!(f.unavailable > 0, "the cut was felt: some 503s");
}

/// Deletes every Redis key of the namespace (on the real server: only this test's keys).
async fn empty_namespace(name: &str) -> usize {
    let client = redis::Client::open(common::REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("*{name}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            let n: usize = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .unwrap();
            deleted += n;
        }
        cursor = next;
        if cursor == 0 {
            return deleted;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_mid_race() {
    let _turn = TURN.lock().await;
    let Some(rig) = rig().await else { return };
    let name = rig.env.name.clone();
    let apis: Vec<Api> = rig.nodes.iter().map(|n| n.api()).collect();
    let race = Race::start(apis, &rig.buyers, &rig.sale);
    tokio::time::sleep(BEFORE_FAULT).await;
    // Redis goes away, comes back with nothing in it.
    rig.redis.cut();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deleted = empty_namespace(&name).await;
    assert!(deleted > 0, "the namespace had keys to lose");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    rig.redis.restore();
    let restored = Instant::now();
    let recovered_in = race.first_success_after(restored).await;
    tokio::time::sleep(AFTER_RECOVERY).await;
    let calls = race.finish().await;
    judge("redis-restart-empty", &rig, 1, &calls, recovered_in, |_| {
        false
    })
    .await;
    // The gate was rebuilt from the judge: it agrees with it again.
    let m = rig.nodes[0].metrics(&rig.admin, &rig.sale).await;
    assert_invariant(&m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_cut_mid_race() {
    let _turn = TURN.lock().await;
    let Some(rig) = rig().await else { return };
    drill(
        "rabbitmq-cut",
        &rig,
        Duration::from_millis(3000),
        |r| r.amqp.cut(),
        |r| r.amqp.restore(),
    )
    .await;
    // Nothing acknowledged is lost with the bus down: the outbox drains once it is back.
    let pool = rig.env.pool().await;
    let started = Instant::now();
    let mut waiting = -1i64;
    while started.elapsed() < OUTBOX_DRAIN_LIMIT {
        waiting = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE delivered_at IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
        if waiting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.close().await;
    assert_eq!(
        waiting, 0,
        "the outbox drained within {OUTBOX_DRAIN_LIMIT:?} of the broker's return (events that \
         failed to publish are released, not left to wait out their lease)"
    );
    println!(
        "fault-drill rabbitmq-cut: outbox drained {} ms after the race",
        started.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_race_the_other_sells_on() {
    let _turn = TURN.lock().await;
    let Some(mut rig) = rig().await else { return };
    let apis: Vec<Api> = rig.nodes.iter().map(|n| n.api()).collect();
    let race = Race::start(apis, &rig.buyers, &rig.sale);
    tokio::time::sleep(BEFORE_FAULT).await;
    let killed = Instant::now();
    tokio::task::block_in_place(|| rig.nodes[0].kill9());
    // Recovery: the first success that a buyer of the dead node (even ones started there)
    // gets from the survivor.
    let recovered_in = {
        let deadline = Instant::now() + RECOVERY_LIMIT;
        loop {
            let moved = race
                .snapshot()
                .iter()
                .filter(|c| c.succeeded() && c.node == 1 && c.buyer % 2 == 0 && c.started >= killed)
                .map(|c| c.ended() - killed)
                .min();
            if moved.is_some() || Instant::now() > deadline {
                break moved;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::sleep(AFTER_RECOVERY).await;
    let calls = race.finish().await;
    judge("node-kill9", &rig, 1, &calls, recovered_in, |c| c.node == 0).await;
}
