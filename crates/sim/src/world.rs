//! The simulated world: one application over the embedded adapters (SQLite file, in-process
//! gate, room and bus) wired as `stampede serve` wires them, a manual clock, the simulation's
//! gateway, and a model of what every client was told. Steps run one at a time; after each,
//! the checker compares the database with the invariants and with the model.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use futures::FutureExt;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sqlx::SqlitePool;

use stampede_app::checkout::{CheckoutRequest, KeyedCheckout};
use stampede_app::config::Argon2Cost;
use stampede_app::ports::{Gate, GateSeed, Role};
use stampede_app::sales::SaleDraft;
use stampede_app::{Adapters, App, AppConfig, AppError, Principal};
use stampede_core::{
    HoldId, HoldState, ManualClock, Order, OrderStatus, SaleId, Timestamp, UserId,
};
use stampede_engine::{LocalBus, MemoryGate, MemoryRoom};
use stampede_store_sqlite::SqliteStore;

use crate::check::{self, Snapshot};
use crate::gateway::{tokens, ChargeState, Hang, OwedWebhook, SimGateway};
use crate::step::{Ending, Shape, Step};

/// Signs the gateway's webhooks.
const SECRET: &str = "sim-webhook-secret";
/// Where the simulated clock starts.
const EPOCH: Timestamp = Timestamp(1_800_000_000_000);

/// A running application and the handles a crash needs.
struct Node {
    app: Arc<App>,
    writer: tokio::task::JoinHandle<()>,
    store: SqliteStore,
    gate: Arc<MemoryGate>,
}

/// What a client was told about a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    Active,
    Released,
    /// Released, but the answer was lost in a crash.
    MaybeReleased,
}

#[derive(Debug, Clone)]
struct KnownHold {
    id: HoldId,
    user: usize,
    qty: u32,
    expires_at: Timestamp,
    told: Told,
    /// Named in a checkout: it may have become sold, or be in a pending order.
    in_checkout: bool,
}

/// A reserve whose answer was lost: its hold may exist or not.
#[derive(Debug, Clone)]
struct MaybeHold {
    user: UserId,
    sale: SaleId,
    qty: i64,
}

#[derive(Debug, Clone)]
struct KnownOrder {
    id: String,
    user: usize,
    /// What the client was told (`None`: the answer was lost, or it was found in the rows).
    told: Option<OrderStatus>,
    /// The client was told the checkout failed: it must never be sold.
    must_not_sell: bool,
    cancel_tried: bool,
}

/// A checkout that did not hand the client an order id: it may have left an order behind.
#[derive(Debug, Clone)]
struct Attempt {
    user: UserId,
    holds: BTreeSet<String>,
    /// The client was told it failed (rather than losing the answer).
    told_failure: bool,
}

/// A checkout sent with an `Idempotency-Key`.
#[derive(Debug, Clone)]
struct Keyed {
    user: usize,
    key: String,
    hash: String,
    holds: Vec<String>,
    token: &'static str,
    /// The stored answer, if the client saw it.
    answer: Option<(u16, String)>,
    /// A 5xx: the claim was dropped and a retry runs afresh.
    abandoned: bool,
    /// [`World::kills`] when the key was first used: an answer stored behind its response
    /// may be lost to a kill after that.
    kills_at: u32,
}

/// How one checkout ended, as the HTTP layer would put it.
enum Answer {
    Fresh(u16, String, Box<Result<Order, AppError>>),
    Replay(u16, String),
    Mismatch,
    InProgress,
}

/// One simulation run.
pub struct World {
    _dir: tempfile::TempDir,
    db: PathBuf,
    clock: ManualClock,
    gateway: Arc<SimGateway>,
    node: Option<Node>,
    inspector: SqlitePool,
    sales: Vec<SaleId>,
    users: Vec<Principal>,
    holds: Vec<KnownHold>,
    maybe_holds: Vec<MaybeHold>,
    orders: Vec<KnownOrder>,
    attempts: Vec<Attempt>,
    keyed: Vec<Keyed>,
    delivered: Vec<OwedWebhook>,
    owed_at: BTreeMap<String, Timestamp>,
    prev: Snapshot,
    /// The sweeper does not run before this step.
    stalled_until: usize,
    /// The gate was made wrong and not rebuilt since.
    drifted: bool,
    /// Crashes that killed the node without a graceful stop.
    kills: u32,
    step_no: usize,
    /// Charges whose capture was hanging when the app crashed after their order was confirmed.
    /// The restart's money reconciliation must capture them before the next check; only with
    /// `STAMPEDE_SIM_STRICT_CAPTURE=0` does the checker let them through (to compare).
    lost_captures: BTreeSet<String>,
    /// What happened, by kind: shows a run exercised what it claims to.
    pub stats: BTreeMap<&'static str, u64>,
}

fn principal(user_id: UserId, role: Role) -> Principal {
    Principal {
        user_id,
        role,
        expires_at: Timestamp(i64::MAX),
        session_id: String::new(),
    }
}

/// A temporary directory on a RAM disk if the machine has one: the store fsyncs every
/// commit, and the simulation commits thousands of times.
fn scratch_dir() -> Result<tempfile::TempDir, String> {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("stampede-sim")
            .tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("stampede-sim").tempdir()
    };
    dir.map_err(|e| format!("temp dir: {e}"))
}

fn app_err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// The status and body the HTTP layer would send for a checkout's result.
fn render(result: &Result<Order, AppError>) -> (u16, String) {
    match result {
        Ok(o) => (
            201,
            serde_json::json!({ "order_id": o.id.as_str(), "status": o.status.as_str() })
                .to_string(),
        ),
        Err(e) => {
            let status = match e {
                AppError::PaymentDeclined { .. } => 402,
                AppError::NotFound => 404,
                AppError::HoldExpired | AppError::Conflict(_) => 409,
                AppError::InvalidInput(_) => 422,
                e if e.is_unavailable() => 503,
                _ => 500,
            };
            let order = match e {
                AppError::PaymentDeclined { order_id, .. } => Some(order_id.clone()),
                _ => None,
            };
            (
                status,
                serde_json::json!({ "error": e.to_string(), "order_id": order }).to_string(),
            )
        }
    }
}

impl World {
    /// A fresh shop: `shape.sales` live sales of a few units each and `shape.users` buyers.
    pub async fn new(rng: &mut ChaCha8Rng, shape: Shape) -> Result<World, String> {
        let dir = scratch_dir()?;
        let db = dir.path().join("stampede.db");
        let clock = ManualClock::new(EPOCH);
        let gateway = Arc::new(SimGateway::new());
        let mut world = World {
            inspector: SqlitePool::connect_lazy("sqlite::memory:")
                .map_err(|e| app_err("placeholder pool", e))?,
            _dir: dir,
            db,
            clock,
            gateway,
            node: None,
            sales: Vec::new(),
            users: Vec::new(),
            holds: Vec::new(),
            maybe_holds: Vec::new(),
            orders: Vec::new(),
            attempts: Vec::new(),
            keyed: Vec::new(),
            delivered: Vec::new(),
            owed_at: BTreeMap::new(),
            prev: Snapshot::default(),
            stalled_until: 0,
            drifted: false,
            kills: 0,
            step_no: 0,
            stats: BTreeMap::new(),
            lost_captures: BTreeSet::new(),
        };
        world.node = Some(world.start().await?);
        world.inspector = check::inspector(&world.db).await?;
        let admin = principal(UserId::generate(EPOCH.0, rng.gen()), Role::Admin);
        for i in 0..shape.sales {
            let sale = world
                .app()?
                .create_sale(
                    &admin,
                    SaleDraft {
                        name: format!("Sim sale {i}"),
                        description: "simulated".into(),
                        original_price: "20.00".into(),
                        sale_price: "5.00".into(),
                        discount_percent: None,
                        currency: "EUR".into(),
                        total_stock: rng.gen_range(2..=6),
                        starts_at: Some(EPOCH),
                        ends_at: Some(EPOCH.plus_secs(30 * 24 * 3600)),
                        per_user_limit: rng.gen_range(1..=3),
                        queue_required: false,
                        hold_seconds: Some(rng.gen_range(20..=120)),
                        product_id: None,
                        drop_id: None,
                        category: None,
                    },
                )
                .await
                .map_err(|e| app_err("creating a sale", e))?;
            world.sales.push(sale.id);
        }
        for _ in 0..shape.users {
            world
                .users
                .push(principal(UserId::generate(EPOCH.0, rng.gen()), Role::Buyer));
        }
        world.prev = check::snapshot(&world.inspector).await?;
        Ok(world)
    }

    /// Starts the application over the database, as `stampede serve` does in embedded mode:
    /// SQLite store, in-process gate, waiting room on that gate, in-process bus. `App::start`
    /// migrates, loads the sales and rebuilds the gate from the judge.
    async fn start(&self) -> Result<Node, String> {
        let store = stampede_store_sqlite::open(&self.db)
            .await
            .map_err(|e| app_err("opening the store", e))?;
        let gate = Arc::new(MemoryGate::new());
        let adapters = Adapters {
            store: Arc::new(store.clone()),
            gate: gate.clone(),
            room: Arc::new(MemoryRoom::with_gate(gate.clone())),
            bus: Arc::new(LocalBus::default()),
            gateway: self.gateway.clone(),
            clock: Arc::new(self.clock.clone()),
            outbox: None,
            shop_webhooks: None,
        };
        let config = AppConfig {
            webhook_secret: SECRET.into(),
            // Nobody logs in here; the cheapest cost keeps the start's decoy hash from
            // dominating a crash-and-restart.
            argon2: Argon2Cost {
                memory_kib: 8,
                iterations: 1,
                parallelism: 1,
            },
            read_cache_ms: 0,
            // No checkout outlives a crash here (steps run one at a time), so a pending order
            // with no recorded answer is stuck as soon as the app restarts.
            payment_answer_timeout_secs: 0,
            ..AppConfig::default()
        };
        let (app, writer) = App::start(adapters, config)
            .await
            .map_err(|e| app_err("starting the app", e))?;
        Ok(Node {
            app,
            writer,
            store,
            gate,
        })
    }

    fn node(&self) -> Result<&Node, String> {
        self.node
            .as_ref()
            .ok_or_else(|| "no app running".to_string())
    }

    fn app(&self) -> Result<Arc<App>, String> {
        Ok(self.node()?.app.clone())
    }

    fn now(&self) -> Timestamp {
        stampede_core::Clock::now(&self.clock)
    }

    /// Drops the application and starts it again over the same file. `graceful` stores the
    /// keyed answers written behind their responses and lets the group-commit writer drain its
    /// queue; otherwise it dies with what it has queued.
    async fn crash(&mut self, graceful: bool) -> Result<(), String> {
        if let Some(node) = self.node.take() {
            let Node {
                app,
                writer,
                store,
                gate,
            } = node;
            if !graceful {
                writer.abort();
            } else if !app
                .store_answers_in_flight(std::time::Duration::from_secs(10))
                .await
            {
                return Err("keyed answers were still unstored 10 s into a graceful stop".into());
            }
            drop(app);
            drop(gate);
            let ended = writer.await;
            store.close().await;
            if let Err(e) = ended {
                if e.is_panic() {
                    return Err(format!(
                        "the judge's writer died while draining its queue: {}",
                        panic_message(e.into_panic())
                    ));
                }
            }
        }
        self.node = Some(self.start().await?);
        self.drifted = false;
        self.kills += u32::from(!graceful);
        self.count(if graceful {
            "crash (writer drained)"
        } else {
            "crash (writer killed)"
        });
        Ok(())
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn user_of(&self, id: &UserId) -> Option<usize> {
        self.users.iter().position(|p| &p.user_id == id)
    }

    fn sweeper_runs(&self) -> bool {
        self.step_no >= self.stalled_until
    }

    /// A request failure that no client should ever see.
    fn unexpected(what: &str, e: &AppError) -> Result<(), String> {
        Err(format!("{what}: unexpected answer {e:?}"))
    }

    fn record_reserve(
        &mut self,
        user: usize,
        result: Result<stampede_core::Hold, AppError>,
    ) -> Result<(), String> {
        match result {
            Ok(h) => {
                self.count("reserve: hold");
                self.holds.push(KnownHold {
                    id: h.id,
                    user,
                    qty: h.quantity,
                    expires_at: h.expires_at,
                    told: Told::Active,
                    in_checkout: false,
                });
                Ok(())
            }
            Err(AppError::SoldOut) => {
                self.count("reserve: sold out");
                Ok(())
            }
            Err(AppError::LimitExceeded) => {
                self.count("reserve: over the limit");
                Ok(())
            }
            Err(e) => Self::unexpected("reserve", &e),
        }
    }

    /// Runs one step, then checks everything. If the step failed because the judge's writer
    /// died, the writer's own last words are the better report.
    pub async fn run(&mut self, rng: &mut ChaCha8Rng, step: &Step) -> Result<(), String> {
        match self.run_inner(rng, step).await {
            Ok(()) => Ok(()),
            Err(e) => match self.node.as_ref().map(|n| n.writer.is_finished()) {
                Some(true) => Err(format!(
                    "{e}; {}",
                    self.writer_alive().await.err().unwrap_or_default()
                )),
                _ => Err(e),
            },
        }
    }

    async fn run_inner(&mut self, rng: &mut ChaCha8Rng, step: &Step) -> Result<(), String> {
        self.step_no += 1;
        let mut swept = false;
        match step.clone() {
            Step::Reserve {
                user,
                sale,
                qty,
                ending,
            } => {
                let (who, sale_id) = (self.users[user].clone(), self.sales[sale].clone());
                let result = self
                    .app()?
                    .reserve(&who, sale_id.as_str(), qty, None, None)
                    .await;
                if ending == Ending::CrashBeforeReply {
                    if result.is_ok() {
                        self.maybe_holds.push(MaybeHold {
                            user: who.user_id,
                            sale: sale_id,
                            qty,
                        });
                    } else if let Err(e) = &result {
                        if !matches!(e, AppError::SoldOut | AppError::LimitExceeded) {
                            return Self::unexpected("reserve", e);
                        }
                    }
                    self.crash(rng.gen_bool(0.5)).await?;
                } else {
                    self.record_reserve(user, result)?;
                }
            }
            Step::ReserveTwice { user, sale, qty } => {
                let app = self.app()?;
                let (who, sale_id) = (self.users[user].clone(), self.sales[sale].clone());
                let (a, b) = futures::join!(
                    app.reserve(&who, sale_id.as_str(), qty, None, None),
                    app.reserve(&who, sale_id.as_str(), qty, None, None)
                );
                self.record_reserve(user, a)?;
                self.record_reserve(user, b)?;
            }
            Step::Burst { buyers } => {
                let app = self.app()?;
                let mut order: Vec<usize> = (0..buyers.len()).collect();
                // The seed decides who is polled first.
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.gen_range(0..=i));
                }
                let requests: Vec<(usize, Principal, SaleId, i64)> = order
                    .iter()
                    .map(|&i| {
                        let (u, s, q) = buyers[i];
                        (u, self.users[u].clone(), self.sales[s].clone(), q)
                    })
                    .collect();
                let results = futures::future::join_all(
                    requests
                        .iter()
                        .map(|(_, who, sale, q)| app.reserve(who, sale.as_str(), *q, None, None)),
                )
                .await;
                for ((u, _, _, _), r) in requests.iter().zip(results) {
                    self.record_reserve(*u, r)?;
                }
            }
            Step::Release { pick, ending } => {
                let live: Vec<usize> = self.told_active();
                if let Some(&i) = pick_from(&live, pick) {
                    let h = self.holds[i].clone();
                    let who = self.users[h.user].clone();
                    let result = self.app()?.release_hold(&who, h.id.as_str()).await;
                    let late = self.now() >= h.expires_at;
                    match (&result, ending) {
                        (Ok(()), Ending::Told) => self.holds[i].told = Told::Released,
                        (Ok(()), Ending::CrashBeforeReply) => {
                            self.holds[i].told = Told::MaybeReleased
                        }
                        (Err(AppError::HoldExpired | AppError::NotFound), _)
                            if late || h.in_checkout => {}
                        (Err(AppError::Conflict(_)), _) if h.in_checkout => {}
                        (Err(e), _) => {
                            return Err(format!(
                                "release of live hold {} (expires {}, now {}): {e:?}",
                                h.id,
                                h.expires_at.0,
                                self.now().0
                            ))
                        }
                    }
                    if ending == Ending::CrashBeforeReply {
                        self.crash(rng.gen_bool(0.5)).await?;
                    }
                }
            }
            Step::ReleaseWhilePaying {
                pick,
                token,
                release_first,
            } => {
                let now = self.now();
                let mut live = self.told_active();
                if live.iter().any(|&i| self.holds[i].expires_at > now) {
                    live.retain(|&i| self.holds[i].expires_at > now);
                }
                if let Some(&i) = pick_from(&live, pick) {
                    let h = self.holds[i].clone();
                    let who = self.users[h.user].clone();
                    let app = self.app()?;
                    let id = h.id.to_string();
                    // The one that goes second lets the runtime run the other first.
                    let later = |first: bool| async move {
                        if !first {
                            for _ in 0..3 {
                                tokio::task::yield_now().await;
                            }
                        }
                    };
                    let (released, paid) = futures::join!(
                        async {
                            later(release_first).await;
                            app.release_hold(&who, &id).await
                        },
                        async {
                            later(!release_first).await;
                            app.checkout(&who, Self::request(std::slice::from_ref(&id), token))
                                .await
                        }
                    );
                    self.count(match (&released, &paid) {
                        (Ok(()), Ok(_)) => "race: release and checkout both won",
                        (Ok(()), Err(_)) => "race: release won",
                        (Err(_), Ok(_)) => "race: checkout won",
                        (Err(_), Err(_)) => "race: neither",
                    });
                    match released {
                        Ok(()) => self.holds[i].told = Told::Released,
                        // The checkout got there first, or the hold had lapsed.
                        Err(AppError::HoldExpired | AppError::NotFound | AppError::Conflict(_)) => {
                        }
                        Err(e) => return Self::unexpected("release while paying", &e),
                    }
                    if let Err(e) = &paid {
                        if e.is_unavailable() && token != tokens::DOWN {
                            return Self::unexpected("checkout while releasing", e);
                        }
                    }
                    self.after_checkout(h.user, &[id], paid, Ending::Told)?;
                }
            }
            Step::SweepWhileWebhook { pick } => {
                let owed = self.gateway.owed();
                if let Some(i) = pick_index(owed.len(), pick) {
                    if let Some(hook) = self.gateway.take_owed(i) {
                        let app = self.app()?;
                        let body = hook.body();
                        let sig = stampede_app::webhook::sign(SECRET, self.now(), &body);
                        let (swept_now, applied) =
                            futures::join!(app.sweep(), app.payment_webhook(&body, Some(&sig)));
                        swept_now.map_err(|e| app_err("sweep", e))?;
                        if let Err(e) = applied {
                            return Self::unexpected("webhook during a sweep", &e);
                        }
                        self.count("webhook: applied during a sweep");
                        self.delivered.push(hook);
                    }
                }
            }
            Step::Resize { pick, qty } => {
                let live = self.told_active();
                if let Some(&i) = pick_from(&live, pick) {
                    let h = self.holds[i].clone();
                    let who = self.users[h.user].clone();
                    let result = self.app()?.resize_hold(&who, h.id.as_str(), qty).await;
                    let late = self.now() >= h.expires_at;
                    match result {
                        Ok(held) => {
                            if i64::from(held.quantity) != qty {
                                return Err(format!("resized to {qty}, got {}", held.quantity));
                            }
                            self.holds[i].qty = held.quantity;
                        }
                        Err(AppError::SoldOut | AppError::LimitExceeded) => {}
                        Err(AppError::HoldExpired | AppError::NotFound)
                            if late || h.in_checkout => {}
                        Err(AppError::Conflict(_)) if h.in_checkout => {}
                        Err(e) => return Self::unexpected("resize", &e),
                    }
                }
            }
            Step::Checkout {
                user,
                picks,
                token,
                key,
                ending,
            } => {
                let holds = self.checkout_holds(user, &picks);
                let key = key.map(|k| format!("k{}-{k}", self.step_no));
                self.checkout(user, holds, token, key, ending).await?;
            }
            Step::RetryCheckout { pick } => {
                if let Some(i) = pick_index(self.keyed.len(), pick) {
                    let k = self.keyed[i].clone();
                    let before = self.gateway.charges().len();
                    let answer = self.send_keyed(&k).await?;
                    match (answer, &k.answer) {
                        (Answer::Replay(s, b), Some((s0, b0))) => {
                            self.count("checkout: idempotent replay");
                            if (s, &b) != (*s0, b0) {
                                return Err(format!(
                                    "retry of key {} got ({s}, {b}), first answer was ({s0}, {b0})",
                                    k.key
                                ));
                            }
                        }
                        (Answer::Replay(s, b), None) if !k.abandoned => {
                            self.keyed[i].answer = Some((s, b));
                        }
                        (Answer::Fresh(s, b, result), None) if k.abandoned => {
                            self.after_checkout(k.user, &k.holds, *result, Ending::Told)?;
                            self.keyed[i].abandoned = s >= 500;
                            self.keyed[i].answer = (s < 500).then_some((s, b));
                        }
                        // Its answer was stored behind the response and a kill came first: the
                        // retry resumed under the claim's ids and must tell the same.
                        (Answer::Fresh(s, b, _), Some(told))
                            if self.kills > k.kills_at && (s, &b) == (told.0, &told.1) =>
                        {
                            self.count("checkout: resumed after a lost answer");
                        }
                        (Answer::Fresh(..), _) => {
                            return Err(format!("retry of key {} ran the checkout again", k.key))
                        }
                        (Answer::Mismatch, _) => {
                            return Err(format!("retry of key {} with the same body: 422", k.key))
                        }
                        (Answer::InProgress, _) => {
                            return Err(format!("retry of finished key {}: in progress", k.key))
                        }
                        (Answer::Replay(..), _) => {
                            return Err(format!(
                                "key {} replayed after its claim was dropped",
                                k.key
                            ))
                        }
                    }
                    if !k.abandoned && self.gateway.charges().len() != before {
                        return Err(format!("retry of key {} charged again", k.key));
                    }
                }
            }
            Step::ReuseKey { pick } => {
                if let Some(i) = pick_index(self.keyed.len(), pick) {
                    let mut k = self.keyed[i].clone();
                    if !k.abandoned {
                        k.hash.push_str("+other");
                        let before = self.gateway.charges().len();
                        match self.send_keyed(&k).await? {
                            Answer::Mismatch => {}
                            _ => {
                                return Err(format!(
                                    "key {} reused with another body was not refused",
                                    k.key
                                ))
                            }
                        }
                        if self.gateway.charges().len() != before {
                            return Err("a reused key charged".into());
                        }
                    }
                }
            }
            Step::DuplicateCheckout { user, picks, token } => {
                let holds = self.checkout_holds(user, &picks);
                let k = Keyed {
                    user,
                    key: format!("dup{}", self.step_no),
                    hash: format!("{}|{token}", holds.join(",")),
                    holds: holds.clone(),
                    token,
                    answer: None,
                    abandoned: false,
                    kills_at: self.kills,
                };
                let before = self.gateway.charges().len();
                let (a, b) = futures::join!(self.send_keyed(&k), self.send_keyed(&k));
                let mut fresh = 0;
                let mut first = None;
                let mut replays = Vec::new();
                for answer in [a?, b?] {
                    match answer {
                        Answer::Fresh(s, body, result) => {
                            fresh += 1;
                            first = Some((s, body.clone()));
                            self.after_checkout(user, &holds, *result, Ending::Told)?;
                        }
                        Answer::Replay(s, body) => replays.push((s, body)),
                        Answer::InProgress => {}
                        Answer::Mismatch => return Err("duplicate checkout: 422".into()),
                    }
                }
                if fresh != 1 {
                    return Err(format!("duplicate keyed checkout ran {fresh} times"));
                }
                if replays.iter().any(|r| Some(r) != first.as_ref()) {
                    return Err("duplicate keyed checkout replayed another answer".into());
                }
                if self.gateway.charges().len() > before + 1 {
                    return Err("duplicate keyed checkout charged twice".into());
                }
                let abandoned = first.as_ref().is_some_and(|(s, _)| *s >= 500);
                self.keyed.push(Keyed {
                    answer: first.filter(|_| !abandoned),
                    abandoned,
                    ..k
                });
            }
            Step::Cancel { pick } => {
                if let Some(i) = pick_index(self.orders.len(), pick) {
                    let o = self.orders[i].clone();
                    let who = self.users[o.user].clone();
                    self.orders[i].cancel_tried = true;
                    match self.app()?.cancel_order(&who, &o.id).await {
                        Ok(order) => {
                            if !matches!(
                                order.status,
                                OrderStatus::Cancelled | OrderStatus::Refunded
                            ) {
                                return Err(format!("cancel left order {:?}", order.status));
                            }
                            self.orders[i].told = Some(order.status);
                        }
                        Err(AppError::Conflict(_)) => {}
                        Err(e) => return Self::unexpected("cancel", &e),
                    }
                }
            }
            Step::DeliverWebhook { pick, stale } => {
                let owed = self.gateway.owed();
                if let Some(i) = pick_index(owed.len(), pick) {
                    if let Some(hook) = self.gateway.take_owed(i) {
                        let now = self.now();
                        let owed_at = self.owed_at.get(&hook.id).copied().unwrap_or(now);
                        let signed_at = if stale { owed_at } else { now };
                        let body = hook.body();
                        let sig = stampede_app::webhook::sign(SECRET, signed_at, &body);
                        match self.app()?.payment_webhook(&body, Some(&sig)).await {
                            Ok(()) => {
                                self.count("webhook: applied");
                                self.delivered.push(hook)
                            }
                            Err(AppError::BadSignature)
                                if (now.0 / 1000 - signed_at.0 / 1000).abs() > 300 =>
                            {
                                self.count("webhook: stale signature refused");
                                self.gateway.owe_again(hook);
                            }
                            Err(e) => return Self::unexpected("webhook", &e),
                        }
                    }
                }
            }
            Step::ReplayWebhook { pick } => {
                if let Some(i) = pick_index(self.delivered.len(), pick) {
                    let hook = self.delivered[i].clone();
                    let before = check::snapshot(&self.inspector).await?;
                    let charges = self.gateway.charges();
                    let body = hook.body();
                    let sig = stampede_app::webhook::sign(SECRET, self.now(), &body);
                    if let Err(e) = self.app()?.payment_webhook(&body, Some(&sig)).await {
                        return Self::unexpected("replayed webhook", &e);
                    }
                    self.count("webhook: replayed");
                    if check::snapshot(&self.inspector).await? != before
                        || self.gateway.charges() != charges
                    {
                        return Err(format!("replayed webhook {} changed something", hook.id));
                    }
                }
            }
            Step::Advance { ms } => {
                self.clock.advance_millis(ms);
                swept = self.sweep_if_running().await?;
            }
            Step::ToExpiry { pick, offset_ms } => {
                let mut candidates: Vec<usize> = self
                    .holds
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| h.told == Told::Active && h.expires_at > self.now())
                    .map(|(i, _)| i)
                    .collect();
                // Holds being paid for first: the payment then lands just before or after.
                candidates.sort_by_key(|&i| !self.holds[i].in_checkout);
                if let Some(&i) = pick_from(&candidates, pick % 4) {
                    let at = self.holds[i].expires_at.plus_millis(offset_ms);
                    if at > self.now() {
                        self.clock.set(at);
                    }
                    swept = self.sweep_if_running().await?;
                }
            }
            Step::Sweep => {
                self.sweep().await?;
                swept = true;
            }
            Step::StallSweeper { steps } => {
                self.stalled_until = self.step_no + steps as usize;
            }
            Step::Reconcile => {
                self.app()?
                    .reconcile()
                    .await
                    .map_err(|e| app_err("reconcile", e))?;
                self.drifted = false;
                let money = self
                    .app()?
                    .reconcile_payments()
                    .await
                    .map_err(|e| app_err("reconcile_payments", e))?;
                if money.stuck_orders > 0 {
                    self.count("stuck pending order failed");
                }
                if money.finished > 0 {
                    self.count("owed money move finished late");
                }
            }
            Step::GateDrift { sale, extra } => {
                self.count("gate made wrong");
                let sale_id = self.sales[sale].clone();
                let snap = check::snapshot(&self.inspector).await?;
                let available = snap
                    .sales
                    .get(sale_id.as_str())
                    .map(|s| s.available)
                    .unwrap_or(0);
                self.node()?
                    .gate
                    .rebuild(&[GateSeed {
                        sale_id,
                        available: available + extra,
                        user_units: Vec::new(),
                    }])
                    .await
                    .map_err(|e| app_err("drifting the gate", e))?;
                self.drifted = true;
            }
            Step::Crash { graceful } => self.crash(graceful).await?,
            Step::CrashDuringPayment {
                user,
                picks,
                hang,
                graceful,
            } => {
                let holds = self.checkout_holds(user, &picks);
                let who = self.users[user].clone();
                let app = self.app()?;
                self.gateway.hang_next(Some(hang));
                let mut paying = Box::pin(app.checkout(&who, Self::request(&holds, tokens::OK)));
                // Drive the checkout until it finishes or waits on the call that never
                // answers (the store works on its own threads meanwhile).
                let mut finished = None;
                for _ in 0..2_000 {
                    if self.gateway.hanging().is_some() {
                        break;
                    }
                    let poll =
                        tokio::time::timeout(std::time::Duration::from_millis(5), paying.as_mut());
                    if let Ok(result) = poll.await {
                        finished = Some(result);
                        break;
                    }
                }
                let hanging = self.gateway.hanging();
                self.gateway.hang_next(None);
                drop(paying);
                drop(app);
                match (finished, hanging) {
                    (Some(result), _) => self.after_checkout(user, &holds, result, Ending::Told)?,
                    (None, Some(reference)) => {
                        for h in self.holds.iter_mut() {
                            if holds.contains(&h.id.to_string()) {
                                h.in_checkout = true;
                            }
                        }
                        self.attempts.push(Attempt {
                            user: who.user_id.clone(),
                            holds: holds.iter().cloned().collect(),
                            told_failure: false,
                        });
                        if hang == Hang::Capture {
                            self.lost_captures.insert(reference);
                            self.count("crash while capturing");
                        } else {
                            self.count("crash while authorizing");
                        }
                        self.crash(graceful).await?;
                    }
                    (None, None) => return Err("a checkout neither finished nor hung".into()),
                }
            }
            Step::CrashMidReserve {
                user,
                sale,
                qty,
                graceful,
            } => {
                let (who, sale_id) = (self.users[user].clone(), self.sales[sale].clone());
                let app = self.app()?;
                let mut request = Box::pin(app.reserve(&who, sale_id.as_str(), qty, None, None));
                // One poll takes the units from the gate and queues the request for the judge.
                match request.as_mut().now_or_never() {
                    Some(Err(AppError::SoldOut | AppError::LimitExceeded)) => {}
                    Some(Err(e)) => return Self::unexpected("reserve", &e),
                    _ => self.maybe_holds.push(MaybeHold {
                        user: who.user_id.clone(),
                        sale: sale_id.clone(),
                        qty,
                    }),
                }
                drop(request);
                drop(app);
                self.crash(graceful).await?;
            }
        }
        for hook in self.gateway.owed() {
            let now = self.now();
            self.owed_at.entry(hook.id).or_insert(now);
        }
        self.check(swept).await
    }

    async fn sweep(&self) -> Result<(), String> {
        self.app()?
            .sweep()
            .await
            .map(|_| ())
            .map_err(|e| app_err("sweep", e))
    }

    async fn sweep_if_running(&self) -> Result<bool, String> {
        if self.sweeper_runs() {
            self.sweep().await?;
            return Ok(true);
        }
        Ok(false)
    }

    fn told_active(&self) -> Vec<usize> {
        self.holds
            .iter()
            .enumerate()
            .filter(|(_, h)| h.told == Told::Active)
            .map(|(i, _)| i)
            .collect()
    }

    /// The hold ids a buyer names in a checkout: their own told-active holds by pick, or a
    /// made-up one if they have none.
    fn checkout_holds(&self, user: usize, picks: &[usize]) -> Vec<String> {
        let now = self.now();
        let mut mine: Vec<usize> = self
            .told_active()
            .into_iter()
            .filter(|&i| self.holds[i].user == user)
            .collect();
        // Mostly the holds that are still live; now and then one whose time has run out.
        let live: Vec<usize> = mine
            .iter()
            .copied()
            .filter(|&i| self.holds[i].expires_at > now)
            .collect();
        if !live.is_empty() && picks.first().is_some_and(|p| p % 5 != 0) {
            mine = live;
        }
        let mut ids: Vec<String> = Vec::new();
        for p in picks {
            if let Some(&i) = pick_from(&mine, *p) {
                let id = self.holds[i].id.to_string();
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        if ids.is_empty() {
            ids.push(HoldId::generate(self.now().0, 7).to_string());
        }
        ids
    }

    fn request(holds: &[String], token: &str) -> CheckoutRequest {
        CheckoutRequest {
            hold_ids: holds.to_vec(),
            method: "card".into(),
            token: token.into(),
        }
    }

    /// A keyed checkout through the use case the HTTP layer calls: claim the key, run (or
    /// resume), store the answer (or drop the claim after a 5xx).
    async fn send_keyed(&self, k: &Keyed) -> Result<Answer, String> {
        let app = self.app()?;
        let who = &self.users[k.user];
        let req = Self::request(&k.holds, k.token);
        match app.checkout_keyed(who, req, &k.key, &k.hash, render).await {
            Ok(KeyedCheckout::Replay { status, body }) => Ok(Answer::Replay(status, body)),
            Ok(KeyedCheckout::Ran {
                result,
                status,
                body,
            }) => Ok(Answer::Fresh(status, body, result)),
            Err(AppError::IdempotencyKeyReused) => Ok(Answer::Mismatch),
            Err(AppError::IdempotencyInProgress) => Ok(Answer::InProgress),
            Err(e) => Err(app_err("checkout_keyed", e)),
        }
    }

    async fn checkout(
        &mut self,
        user: usize,
        holds: Vec<String>,
        token: &'static str,
        key: Option<String>,
        ending: Ending,
    ) -> Result<(), String> {
        let result = match &key {
            None => {
                let who = self.users[user].clone();
                self.app()?
                    .checkout(&who, Self::request(&holds, token))
                    .await
            }
            Some(key) => {
                let k = Keyed {
                    user,
                    key: key.clone(),
                    hash: format!("{}|{token}", holds.join(",")),
                    holds: holds.clone(),
                    token,
                    answer: None,
                    abandoned: false,
                    kills_at: self.kills,
                };
                match self.send_keyed(&k).await? {
                    Answer::Fresh(status, body, result) => {
                        let told = ending == Ending::Told;
                        self.keyed.push(Keyed {
                            answer: (told && status < 500).then_some((status, body)),
                            abandoned: status >= 500,
                            ..k
                        });
                        *result
                    }
                    _ => return Err(format!("fresh key {key} was not fresh")),
                }
            }
        };
        let unavailable_ok = token == tokens::DOWN;
        if let Err(e) = &result {
            if e.is_unavailable() && !unavailable_ok {
                return Self::unexpected("checkout", e);
            }
        }
        self.after_checkout(user, &holds, result, ending)?;
        if ending == Ending::CrashBeforeReply {
            self.crash(true).await?;
        }
        Ok(())
    }

    /// Records what the client learnt from a checkout.
    fn after_checkout(
        &mut self,
        user: usize,
        holds: &[String],
        result: Result<Order, AppError>,
        ending: Ending,
    ) -> Result<(), String> {
        for h in self.holds.iter_mut() {
            if holds.contains(&h.id.to_string()) {
                h.in_checkout = true;
            }
        }
        self.count(match &result {
            Ok(o) if o.status == OrderStatus::Confirmed => "checkout: confirmed",
            Ok(_) => "checkout: pending payment",
            Err(AppError::PaymentDeclined { .. }) => "checkout: declined",
            Err(AppError::HoldExpired) => "checkout: hold expired",
            Err(AppError::NotFound) => "checkout: hold not found",
            Err(AppError::Conflict(_)) => "checkout: hold in another order",
            Err(e) if e.is_unavailable() => "checkout: gateway down",
            Err(_) => "checkout: other error",
        });
        let told = ending == Ending::Told;
        let order_id = match &result {
            Ok(o) => Some(o.id.to_string()),
            Err(AppError::PaymentDeclined { order_id, .. }) => Some(order_id.clone()),
            _ => None,
        };
        match (&result, order_id) {
            (Ok(o), _)
                if !matches!(
                    o.status,
                    OrderStatus::Confirmed | OrderStatus::PendingPayment
                ) =>
            {
                return Err(format!("checkout answered an order that is {:?}", o.status))
            }
            (Err(e), _) if e.is_internal() => {
                if let Err(e) = result {
                    return Self::unexpected("checkout", &e);
                }
            }
            (_, Some(id)) => self.orders.push(KnownOrder {
                id,
                user,
                told: if told {
                    Some(match &result {
                        Ok(o) => o.status,
                        _ => OrderStatus::PaymentFailed,
                    })
                } else {
                    None
                },
                must_not_sell: told && result.is_err(),
                cancel_tried: false,
            }),
            (_, None) => self.attempts.push(Attempt {
                user: self.users[user].user_id.clone(),
                holds: holds.iter().cloned().collect(),
                told_failure: told,
            }),
        }
        Ok(())
    }

    /// The group-commit writer lives as long as the app: if it ended, say why (a panic in
    /// it is how a debug build reports a judge that broke the stock counters).
    async fn writer_alive(&mut self) -> Result<(), String> {
        let finished = self.node()?.writer.is_finished();
        if !finished {
            return Ok(());
        }
        let Some(node) = self.node.take() else {
            return Ok(());
        };
        let why = match node.writer.await {
            Ok(()) => "it returned".to_string(),
            Err(e) if e.is_panic() => panic_message(e.into_panic()),
            Err(e) => e.to_string(),
        };
        Err(format!("the judge's writer died: {why}"))
    }

    /// Every check after a step.
    async fn check(&mut self, swept: bool) -> Result<(), String> {
        self.writer_alive().await?;
        let snap = check::snapshot(&self.inspector).await?;
        let now = self.now();
        let strict = crate::strict_capture();
        let tolerated = if strict {
            BTreeSet::new()
        } else {
            self.lost_captures.clone()
        };
        check::invariants(
            &snap,
            &self.prev,
            &self.gateway.charges(),
            &self.gateway.violations(),
            &tolerated,
            now,
        )?;
        // The app's own check (what the metrics endpoint reports) must agree; it recomputes
        // what the checker above already did, so every few steps is enough.
        if self.step_no % 4 == 0 {
            let failed = self
                .app()?
                .check_invariants()
                .await
                .map_err(|e| app_err("check_invariants", e))?;
            if !failed.is_empty() {
                return Err(format!(
                    "the app's own invariant check failed for {failed:?}"
                ));
            }
        }
        if swept {
            if let Some((id, _)) = snap
                .holds
                .iter()
                .find(|(_, h)| h.state == HoldState::Active && h.expires_at <= now.0)
            {
                return Err(format!("hold {id} is past its expiry after a sweep"));
            }
        }
        // The gate agrees with the judge unless it was made wrong on purpose.
        if !self.drifted {
            let node = self.node()?;
            for (id, s) in &snap.sales {
                let gate = node.gate.available_now(&SaleId::from_trusted(id.clone()));
                if gate != Some(s.available) {
                    return Err(format!(
                        "gate says {gate:?} available for sale {id}, the judge {}",
                        s.available
                    ));
                }
            }
        }
        self.check_model(&snap, now)?;
        self.prev = snap;
        Ok(())
    }

    /// What the clients were told against what the judge holds.
    fn check_model(&mut self, snap: &Snapshot, now: Timestamp) -> Result<(), String> {
        let mut known: BTreeSet<String> = BTreeSet::new();
        for h in &self.holds {
            let id = h.id.to_string();
            let Some(row) = snap.holds.get(&id) else {
                return Err(format!("acknowledged hold {id} is lost"));
            };
            let late = now >= h.expires_at;
            let ok = match (h.told, row.state) {
                (Told::Released, s) => s == HoldState::Released,
                (Told::MaybeReleased, s) => {
                    s == HoldState::Released
                        || (s == HoldState::Active && !late)
                        || (late && s == HoldState::Expired)
                }
                (Told::Active, HoldState::Active) => {
                    h.in_checkout || row.quantity == i64::from(h.qty)
                }
                (Told::Active, HoldState::Expired) => late,
                (Told::Active, HoldState::Converted) => h.in_checkout,
                (Told::Active, HoldState::Released) => false,
            };
            if !ok {
                return Err(format!(
                    "hold {id}: client was told {:?} (qty {}, expires {}), judge has {:?} qty {} at {}",
                    h.told, h.qty, h.expires_at.0, row.state, row.quantity, now.0
                ));
            }
            known.insert(id);
        }
        // Holds nobody was told about: each must be the one a lost answer may have made.
        let strangers: Vec<(String, crate::check::HoldRow)> = snap
            .holds
            .iter()
            .filter(|(id, _)| !known.contains(*id))
            .map(|(id, h)| (id.clone(), h.clone()))
            .collect();
        for (id, row) in strangers {
            let found = self.maybe_holds.iter().position(|m| {
                m.user.as_str() == row.user_id
                    && m.sale.as_str() == row.sale_id
                    && m.qty == row.quantity
            });
            let Some(i) = found else {
                return Err(format!("hold {id} exists but no client asked for it"));
            };
            self.maybe_holds.remove(i);
            self.count("lost answer: hold found");
            let Some(user) = self.user_of(&UserId::from_trusted(row.user_id.clone())) else {
                return Err(format!("hold {id} of an unknown buyer"));
            };
            let hold_id = HoldId::parse(&id).ok_or_else(|| format!("hold id {id}"))?;
            self.holds.push(KnownHold {
                id: hold_id,
                user,
                qty: u32::try_from(row.quantity).unwrap_or(0),
                expires_at: Timestamp(row.expires_at),
                told: if row.state == HoldState::Released {
                    Told::Released
                } else {
                    Told::Active
                },
                in_checkout: false,
            });
        }
        let mut known_orders: BTreeSet<String> = BTreeSet::new();
        for o in &self.orders {
            let Some(row) = snap.orders.get(&o.id) else {
                return Err(format!("acknowledged order {} is lost", o.id));
            };
            let s = row.status;
            let ok = match o.told {
                Some(OrderStatus::Confirmed) => {
                    s == OrderStatus::Confirmed || (o.cancel_tried && s == OrderStatus::Refunded)
                }
                Some(OrderStatus::PendingPayment) | None => {
                    o.cancel_tried || !matches!(s, OrderStatus::Cancelled | OrderStatus::Refunded)
                }
                Some(told) => s == told,
            };
            if !ok
                || (o.must_not_sell && matches!(s, OrderStatus::Confirmed | OrderStatus::Refunded))
            {
                return Err(format!(
                    "order {}: client was told {:?}, judge has {s:?}",
                    o.id, o.told
                ));
            }
            known_orders.insert(o.id.clone());
        }
        let strangers: Vec<(String, crate::check::OrderRow)> = snap
            .orders
            .iter()
            .filter(|(id, _)| !known_orders.contains(*id))
            .map(|(id, o)| (id.clone(), o.clone()))
            .collect();
        for (id, row) in strangers {
            let holds: BTreeSet<String> = row.items.iter().map(|(h, _, _)| h.clone()).collect();
            // An attempt whose answer was lost is the likelier author than one told it failed
            // over the same holds (a hold freed by a stuck order's resolution is used again).
            let same = |a: &Attempt| a.user.as_str() == row.user_id && a.holds == holds;
            let found = self
                .attempts
                .iter()
                .position(|a| same(a) && !a.told_failure)
                .or_else(|| self.attempts.iter().position(same));
            let Some(i) = found else {
                return Err(format!(
                    "order {id} exists but no client checked out its holds"
                ));
            };
            let attempt = self.attempts.remove(i);
            self.count("checkout without an answer: order found");
            if attempt.told_failure
                && matches!(row.status, OrderStatus::Confirmed | OrderStatus::Refunded)
            {
                return Err(format!(
                    "order {id} is {:?} but its buyer was told the checkout failed",
                    row.status
                ));
            }
            let Some(user) = self.user_of(&attempt.user) else {
                return Err(format!("order {id} of an unknown buyer"));
            };
            self.orders.push(KnownOrder {
                id,
                user,
                told: None,
                must_not_sell: attempt.told_failure,
                cancel_tried: false,
            });
        }
        Ok(())
    }

    /// Where the holds and orders ended up, added to the stats.
    fn final_stats(&mut self) {
        let snap = self.prev.clone();
        for h in snap.holds.values() {
            self.count(match h.state {
                HoldState::Active => "end: hold still active",
                HoldState::Converted => "end: hold sold",
                HoldState::Released => "end: hold released",
                HoldState::Expired => "end: hold expired",
            });
        }
        for o in snap.orders.values() {
            self.count(match o.status {
                OrderStatus::PendingPayment => "end: order pending",
                OrderStatus::Confirmed => "end: order confirmed",
                OrderStatus::PaymentFailed => "end: order failed",
                OrderStatus::Cancelled => "end: order cancelled",
                OrderStatus::Refunded => "end: order refunded",
            });
            // A late payment that took lapsed stock again.
            if o.status == OrderStatus::Confirmed
                && o.items.iter().any(|(hold, _, _)| {
                    snap.holds.get(hold).map(|h| h.state) == Some(HoldState::Expired)
                })
            {
                self.count("end: late payment honoured from stock");
            }
            if o.status == OrderStatus::PaymentFailed
                && o.payment_status.as_deref() == Some("voided")
            {
                self.count("end: late payment voided");
            }
        }
    }

    /// Money left in limbo at the end: authorizations neither captured nor voided (a crash
    /// while the authorization's answer was on its way), and confirmed orders whose capture
    /// was lost in a crash.
    fn limbo_stats(&mut self) {
        let snap = self.prev.clone();
        for c in self.gateway.charges() {
            if c.state != ChargeState::Authorized {
                continue;
            }
            let confirmed = snap.orders.values().any(|o| {
                o.reference.as_deref() == Some(c.reference.as_str())
                    && o.status == OrderStatus::Confirmed
            });
            self.count(if confirmed {
                "end: confirmed order never captured"
            } else {
                "end: authorization neither captured nor voided"
            });
        }
    }

    /// Stops the application and lets its writer finish; returns what happened.
    pub async fn shut_down(mut self) -> BTreeMap<&'static str, u64> {
        self.final_stats();
        self.limbo_stats();
        if let Some(node) = self.node.take() {
            drop(node.app);
            let _ = node.writer.await;
            node.store.close().await;
        }
        self.inspector.close().await;
        std::mem::take(&mut self.stats)
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}

fn pick_index(len: usize, pick: usize) -> Option<usize> {
    (len > 0).then(|| pick % len)
}

fn pick_from<T>(items: &[T], pick: usize) -> Option<&T> {
    pick_index(items.len(), pick).and_then(|i| items.get(i))
}
