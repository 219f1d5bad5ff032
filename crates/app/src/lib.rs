//! Stampede's use cases over the ports they need. One module per use case; [`App`] wires them.
//!
//! Dependencies point one way: `core ← app ← {adapters, http} ← stampede`. Nothing here knows
//! whether it runs on SQLite and in-process counters or on PostgreSQL, Redis and RabbitMQ.

pub mod accounts;
pub mod auth;
pub mod background;
pub mod cart;
pub mod catalog;
pub mod checkout;
pub mod config;
pub mod counted;
pub mod crash_points;
pub mod durable_room;
pub mod error;
pub mod group_commit;
pub mod money;
pub mod notifications;
pub mod outbox;
pub mod ports;
pub mod read_cache;
pub mod room_ops;
pub mod sales;
pub mod shop_webhooks;
pub mod waiting_room;
pub mod webhook;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use stampede_core::{Clock, SaleId};

pub use auth::Principal;
pub use config::AppConfig;
pub use error::AppError;

use auth::{PasswordHashing, Revocations};
use group_commit::{CheckoutWriter, ReserveBatcher, WriteBatcher};
use ports::{EventBus, Gate, OutboxSink, PaymentGateway, ShopWebhooks, Store, WaitingRoom};
use sales::SaleCache;

/// The adapters an [`App`] runs over.
pub struct Adapters {
    pub store: Arc<dyn Store>,
    pub gate: Arc<dyn Gate>,
    /// The waiting room's lines (in memory, or Redis shared by every node).
    pub room: Arc<dyn WaitingRoom>,
    pub bus: Arc<dyn EventBus>,
    pub gateway: Arc<dyn PaymentGateway>,
    pub clock: Arc<dyn Clock>,
    /// Where outbox events go: a broker's durable queue, or `None` to apply them in this
    /// process (embedded mode).
    pub outbox: Option<Arc<dyn OutboxSink>>,
    /// Where the shop's own systems hear about order events (signed webhooks), or `None` if
    /// the shop configured no URL: then no delivery is queued at all.
    pub shop_webhooks: Option<Arc<dyn ShopWebhooks>>,
}

/// Most audit entries written in one transaction.
const AUDITS_PER_COMMIT: usize = 1_000;
/// Most checkout steps (orders, gateway answers, money moves done, keys) in one transaction: enough to share an fsync among a crowd, few enough that a batch holds the
/// writer for tens of milliseconds at most.
const CHECKOUTS_PER_COMMIT: usize = 256;

/// The application: every use case is a method on it.
pub struct App {
    /// The judge and system of record.
    pub store: Arc<dyn Store>,
    /// The fast filter in front of the judge.
    pub gate: Arc<dyn Gate>,
    /// Live updates and follow-ups.
    pub bus: Arc<dyn EventBus>,
    /// Where money moves.
    pub gateway: Arc<dyn PaymentGateway>,
    /// The only source of "now".
    pub clock: Arc<dyn Clock>,
    pub config: AppConfig,
    outbox: Option<Arc<dyn OutboxSink>>,
    /// The shop's webhook sender, if the shop configured one (see [`crate::shop_webhooks`]).
    pub(crate) shop_webhooks: Option<Arc<dyn ShopWebhooks>>,
    /// Wakes the webhook delivery job as soon as this node queued a delivery.
    pub(crate) webhook_kick: tokio::sync::Notify,
    /// Wakes the outbox relay as soon as an order event was written.
    pub(crate) outbox_kick: tokio::sync::Notify,
    /// Sales this node saw sold out at the gate, until when (local, cleared by a
    /// stock-returned event): the 99% case answered without a round trip to a shared gate.
    pub(crate) sold_out_until: dashmap::DashMap<SaleId, stampede_core::Timestamp>,
    /// One seeding of the gate from the judge at a time on this node.
    pub(crate) seeding: tokio::sync::Mutex<()>,
    /// Sale detail as viewers read it (lags the judge by at most `read_cache_ms`).
    pub(crate) sale_reads: read_cache::ReadThrough<Option<stampede_core::Sale>>,
    /// The sale list as viewers read it.
    pub(crate) list_reads: read_cache::ReadThrough<Vec<stampede_core::Sale>>,
    /// Browses of sales (category, status, search, page) as viewers read them.
    pub(crate) browse_reads: read_cache::ReadThrough<Vec<stampede_core::Sale>>,
    /// Audit entry ids: ULIDs that keep this node's order even within one millisecond.
    pub(crate) audit_ids: MonotonicUlids,
    /// Units of gate drift this node repaired, per sale (admin metrics).
    pub(crate) drift_repaired: dashmap::DashMap<SaleId, u64>,
    hashing: PasswordHashing,
    /// Signs and checks session tokens; the same on every node of a deployment.
    session_key: [u8; 32],
    /// Sessions ended early, refused until their tokens expire (see [`auth`]).
    revoked: Revocations,
    batcher: ReserveBatcher,
    /// Group commit of audit entries: an entry is written before the action answers, many
    /// actions' entries in one transaction.
    audits: WriteBatcher<ports::AuditEntry>,
    /// Group commit of every checkout step (orders, gateway answers, money moves done,
    /// idempotency keys) and of notifications.
    checkout_writes: CheckoutWriter,
    sales: SaleCache,
    /// The waiting room's lines.
    pub room: Arc<dyn WaitingRoom>,
    /// The key admission tokens are signed with (fetched once from the room, shared by nodes).
    pub(crate) admission_key: tokio::sync::OnceCell<stampede_core::admission::AdmissionKey>,
    /// Bumped after every admission round: live queue streams look again.
    pub(crate) queue_tick: tokio::sync::watch::Sender<u64>,
    /// Admission rate per sale as this node measured it (for ETAs).
    pub(crate) queue_rates: dashmap::DashMap<SaleId, waiting_room::RateSample>,
    /// Refused reservations per buyer and reason (bounded), for the admin's account page.
    pub(crate) user_refusals: moka::sync::Cache<
        stampede_core::UserId,
        Arc<Mutex<std::collections::BTreeMap<&'static str, u64>>>,
    >,
    /// Idempotency keys' answers given but not yet committed (they are stored behind the
    /// answer): a replay on this node is answered from here meanwhile.
    pub(crate) answers_in_flight:
        dashmap::DashMap<(stampede_core::UserId, String), checkout::AnswerInFlight>,
    /// Rooms this node saw closed (final: all sold or the sale ended).
    pub(crate) closed_rooms: dashmap::DashSet<SaleId>,
    /// Draws this node knows are published (sale, purpose).
    pub(crate) drawn_here: dashmap::DashSet<(SaleId, &'static str)>,
    /// One pre-queue draw at a time on this node.
    pub(crate) drawing: tokio::sync::Mutex<()>,
    /// When this node first saw each sale's stock gone.
    pub(crate) sold_out_at: dashmap::DashMap<SaleId, stampede_core::Timestamp>,
    /// Refused attempts per sale and reason (admin view; the metric has the totals).
    /// Per sale, then per reason: found by borrowed keys, so counting a refusal of a known
    /// sale allocates nothing and takes only a shard's read lock plus one atomic add.
    pub(crate) queue_refusals:
        dashmap::DashMap<SaleId, dashmap::DashMap<&'static str, std::sync::atomic::AtomicU64>>,
    /// Sales whose stock moved since the last publish.
    dirty_stock: Mutex<HashSet<SaleId>>,
    /// Turn notices, the operator's broadcasts and the queue analytics (`room_ops`).
    pub(crate) ops: room_ops::RoomOps,
    /// Shared by every operation that changes both the judge and the gate; taken exclusively
    /// by reconciliation, so it never reads the judge between the two halves of a pair (which
    /// would count in-flight units twice or not at all). Only for a gate this node owns (see
    /// [`ports::Gate::is_shared`] and [`App::pair_guard`]).
    gate_sync: Arc<tokio::sync::RwLock<()>>,
}

impl App {
    /// Builds the application and starts its group-commit writer. Returns the app and the
    /// writer's task: drop every `Arc<App>` and await the task to flush it on shutdown.
    pub async fn start(
        adapters: Adapters,
        config: AppConfig,
    ) -> Result<(Arc<App>, tokio::task::JoinHandle<()>), AppError> {
        adapters.store.migrate().await?;
        let session_key = match &config.session_key {
            Some(hex_key) => auth::parse_session_key(hex_key)?,
            None => auth::parse_session_key(
                &adapters
                    .store
                    .shared_secret("session_key", &auth::new_session_key())
                    .await?,
            )?,
        };
        let (batcher, writer) = ReserveBatcher::start(
            adapters.store.clone(),
            config.max_batch,
            config.reserve_queue_depth,
        );
        let store = adapters.store.clone();
        let write_audits: group_commit::BatchWrite<ports::AuditEntry> = Box::new(move |entries| {
            let store = store.clone();
            Box::pin(async move {
                let n = entries.len();
                group_commit::for_each_of(n, store.append_audits(&entries).await)
            })
        });
        // Detached: every entry's writer waits for its commit, so by the time the requests
        // have drained on shutdown the audit queue has too; it stops with the app.
        let (audits, _) = WriteBatcher::start(write_audits, AUDITS_PER_COMMIT);
        let checkout_writes = CheckoutWriter::start(adapters.store.clone(), CHECKOUTS_PER_COMMIT);
        let app = Arc::new(App {
            store: adapters.store,
            gate: adapters.gate,
            bus: adapters.bus,
            gateway: adapters.gateway,
            clock: adapters.clock,
            hashing: PasswordHashing::new(config.argon2, config.hash_concurrency)?,
            session_key,
            revoked: Revocations::default(),
            batcher,
            audits,
            checkout_writes,
            sales: SaleCache::default(),
            room: adapters.room,
            admission_key: tokio::sync::OnceCell::new(),
            queue_tick: tokio::sync::watch::channel(0).0,
            queue_rates: dashmap::DashMap::new(),
            sold_out_at: dashmap::DashMap::new(),
            drawing: tokio::sync::Mutex::new(()),
            closed_rooms: dashmap::DashSet::new(),
            user_refusals: moka::sync::Cache::new(100_000),
            drawn_here: dashmap::DashSet::new(),
            answers_in_flight: dashmap::DashMap::new(),
            queue_refusals: dashmap::DashMap::new(),
            dirty_stock: Mutex::new(HashSet::new()),
            ops: room_ops::RoomOps::default(),
            gate_sync: Arc::new(tokio::sync::RwLock::new(())),
            outbox: adapters.outbox,
            shop_webhooks: adapters.shop_webhooks,
            webhook_kick: tokio::sync::Notify::new(),
            outbox_kick: tokio::sync::Notify::new(),
            sold_out_until: dashmap::DashMap::new(),
            seeding: tokio::sync::Mutex::new(()),
            drift_repaired: dashmap::DashMap::new(),
            audit_ids: MonotonicUlids::default(),
            sale_reads: read_cache::ReadThrough::new(
                "sale",
                i64::try_from(config.read_cache_ms).unwrap_or(i64::MAX),
            ),
            list_reads: read_cache::ReadThrough::new(
                "sales",
                i64::try_from(config.read_cache_ms).unwrap_or(i64::MAX),
            ),
            browse_reads: read_cache::ReadThrough::new(
                "sale_browse",
                i64::try_from(config.read_cache_ms).unwrap_or(i64::MAX),
            ),
            config,
        });
        app.load_sales().await?;
        app.refresh_revocations().await?;
        let drift = app.reconcile().await?;
        tracing::info!(drift, "gate rebuilt from the store");
        // Money a crash left half-moved is finished before the first request: a capture the
        // judge decided is owed to the buyer's order, an authorization nobody will use to
        // the buyer. A gateway that cannot be reached now is retried by the periodic job.
        match app.reconcile_payments().await {
            Ok(report) if !report.is_empty() => {
                tracing::info!(?report, "money left by a crash finished at start");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "money reconciliation at start failed; will retry")
            }
        }
        Ok((app, writer))
    }

    /// Runs `work`, which changes both the gate and the judge, to completion on its own task:
    /// a caller that goes away (a buyer hanging up) cannot cancel it between the two halves,
    /// and reconciliation waits for it.
    pub(crate) async fn paired<T, F, Fut>(self: &Arc<Self>, work: F) -> Result<T, AppError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<App>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, AppError>> + Send + 'static,
    {
        let app = self.clone();
        tokio::spawn(async move {
            let _pair = app.pair_guard().await;
            work(app.clone()).await
        })
        .await
        .map_err(|e| AppError::Internal(format!("paired task: {e}")))?
    }
}

impl App {
    /// Keeps reconciliation out while a pair (gate, then judge) is half done, when the gate is
    /// this node's own. A shared gate needs no pause (its repair is a compare-and-set on what it
    /// saw twice), and pausing reserves across its network calls is what must not happen.
    pub(crate) async fn pair_guard(&self) -> Option<tokio::sync::OwnedRwLockReadGuard<()>> {
        if self.gate.is_shared() {
            None
        } else {
            Some(self.gate_sync.clone().read_owned().await)
        }
    }
}

/// ULIDs that never go backwards on this node: within one millisecond (or if the clock steps
/// back) the next id is the previous one plus one, so entries listed by id keep the order in
/// which they were made.
#[derive(Default)]
pub struct MonotonicUlids {
    last: Mutex<Option<ulid::Ulid>>,
}

impl MonotonicUlids {
    /// The next id at `now`.
    pub fn next(&self, now: stampede_core::Timestamp) -> ulid::Ulid {
        let fresh =
            ulid::Ulid::from_parts(u64::try_from(now.millis()).unwrap_or(0), rand::random());
        let Ok(mut last) = self.last.lock() else {
            return fresh;
        };
        let id = match *last {
            Some(prev) if fresh <= prev => prev.increment().unwrap_or(fresh),
            _ => fresh,
        };
        *last = Some(id);
        id
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_keep_their_order_within_a_millisecond_and_across_a_clock_step_back() {
        let ids = MonotonicUlids::default();
        let t = stampede_core::Timestamp(1_800_000_000_000);
        let mut prev = ids.next(t);
        for i in 0..1000 {
            let at = if i == 500 {
                stampede_core::Timestamp(t.0 - 5)
            } else {
                t
            };
            let id = ids.next(at);
            assert!(id > prev);
            prev = id;
        }
    }
}
