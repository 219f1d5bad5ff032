//! The use cases over the real embedded adapters (SQLite judge, memory gate, sandbox gateway)
//! with a manual clock: expiry and late payments tested without sleeping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use stampede_app::config::Argon2Cost;
use stampede_app::ports::{Gate, Role};
use stampede_app::sales::SaleDraft;
use stampede_app::{Adapters, App, AppConfig, AppError, Principal};
use stampede_core::{Clock, ManualClock, OrderStatus, Timestamp};
use stampede_engine::{LocalBus, MemoryGate};
use stampede_payments::{SandboxGateway, SandboxTimings, SignedEvent};
use stampede_store_sqlite::SqliteStore;
use tokio::sync::mpsc;

struct World {
    app: Arc<App>,
    clock: ManualClock,
    gate: Arc<MemoryGate>,
    sandbox: Arc<SandboxGateway>,
    webhooks: mpsc::Receiver<SignedEvent>,
    admin: Principal,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).await.unwrap());
    let clock = ManualClock::new(Timestamp(1_800_000_000_000));
    let (tx, webhooks) = mpsc::channel(16);
    let sandbox = Arc::new(SandboxGateway::new(
        "whsec".into(),
        Arc::new(clock.clone()),
        SandboxTimings {
            slow: Duration::from_millis(1),
            async_confirm: Duration::from_millis(1),
        },
        tx,
    ));
    let gate = Arc::new(MemoryGate::new());
    let config = AppConfig {
        webhook_secret: "whsec".into(),
        argon2: Argon2Cost {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        },
        ..AppConfig::default()
    };
    let (app, _writer) = App::start(
        Adapters {
            store,
            gate: gate.clone(),
            bus: Arc::new(LocalBus::default()),
            gateway: sandbox.clone(),
            clock: Arc::new(clock.clone()),
            outbox: None,
            shop_webhooks: None,
        },
        config,
    )
    .await
    .unwrap();
    let admin = app
        .ensure_admin("root@example.com", "root-password")
        .await
        .unwrap();
    let admin = Principal {
        user_id: admin.id,
        role: Role::Admin,
        expires_at: Timestamp(i64::MAX),
        token_hash: String::new(),
    };
    World {
        app,
        clock,
        gate,
        sandbox,
        webhooks,
        admin,
        _dir: dir,
    }
}

impl World {
    async fn sale(&self, total: i64, limit: i64, hold_seconds: i64) -> String {
        let now = self.clock.now();
        self.app
            .create_sale(
                &self.admin,
                SaleDraft {
                    name: "s".into(),
                    description: String::new(),
                    original_price: "10.00".into(),
                    sale_price: "2.50".into(),
                    currency: "EUR".into(),
                    total_stock: total,
                    starts_at: now.plus_secs(-1),
                    ends_at: now.plus_secs(86_400),
                    per_user_limit: limit,
                    queue_required: false,
                    hold_seconds: Some(hold_seconds),
                },
            )
            .await
            .unwrap()
            .id
            .to_string()
    }

    async fn buyer(&self, n: u32) -> Principal {
        let email = format!("buyer{n}@example.com");
        self.app.register(&email, "password-1", "B").await.unwrap();
        let grant = self.app.login(&email, "password-1").await.unwrap();
        self.app.authenticate(&grant.token).await.unwrap()
    }

    async fn checkout(
        &self,
        who: &Principal,
        hold: &str,
        token: &str,
    ) -> Result<stampede_core::Order, AppError> {
        self.app
            .checkout(
                who,
                stampede_app::checkout::CheckoutRequest {
                    hold_ids: vec![hold.to_owned()],
                    method: "card".into(),
                    token: token.into(),
                },
            )
            .await
    }
}

#[tokio::test]
async fn a_lapsed_hold_returns_its_stock_and_cannot_be_paid() {
    let w = world().await;
    let sale = w.sale(3, 2, 300).await;
    let buyer = w.buyer(1).await;
    let hold = w.app.reserve(&buyer, &sale, 2, None).await.unwrap();
    let sale_id = hold.sale_id.clone();
    assert_eq!(w.gate.available(&sale_id).await.unwrap(), Some(1));

    w.clock.advance_millis(299_000);
    assert_eq!(w.app.sweep().await.unwrap(), 0, "not due yet");
    w.clock.advance_millis(1_000);

    // The judge's clock already says lapsed, even before the sweeper runs.
    let paid = w.checkout(&buyer, hold.id.as_str(), "tok_ok").await;
    assert!(matches!(paid, Err(AppError::HoldExpired)), "{paid:?}");
    assert!(w.sandbox.charges().is_empty(), "nothing may be charged");

    assert_eq!(w.app.sweep().await.unwrap(), 1);
    assert_eq!(w.app.sweep().await.unwrap(), 0, "a hold expires once");
    let m = w.app.sale_metrics(&w.admin, &sale).await.unwrap();
    assert_eq!((m.available, m.held, m.sold, m.holds_expired), (3, 0, 0, 1));
    assert!(m.invariant_ok);
    assert_eq!(m.gate_drift, 0, "the sweeper gave the gate its units back");
    // The buyer's limit counts only live units again.
    w.app.reserve(&buyer, &sale, 2, None).await.unwrap();
}

#[tokio::test]
async fn a_late_async_payment_is_honoured_only_while_stock_remains() {
    let mut w = world().await;
    let sale = w.sale(1, 1, 60).await;
    let early = w.buyer(1).await;
    let hold = w.app.reserve(&early, &sale, 1, None).await.unwrap();
    let order = w
        .checkout(&early, hold.id.as_str(), "tok_async")
        .await
        .unwrap();
    assert_eq!(order.status, OrderStatus::PendingPayment);

    // The hold lapses before the gateway confirms; someone else takes the unit.
    w.clock.advance_millis(61_000);
    assert_eq!(w.app.sweep().await.unwrap(), 1);
    let late = w.buyer(2).await;
    w.app.reserve(&late, &sale, 1, None).await.unwrap();

    let event = w.webhooks.recv().await.unwrap();
    w.app
        .payment_webhook(&event.body, Some(&event.signature))
        .await
        .unwrap();
    let order = w.app.order(&early, order.id.as_str()).await.unwrap();
    assert_eq!(
        order.status,
        OrderStatus::PaymentFailed,
        "stock was gone: not honoured"
    );
    let charge = w
        .sandbox
        .charges()
        .into_iter()
        .find(|c| Some(&c.reference) == order.payment.as_ref().unwrap().reference.as_ref())
        .unwrap();
    assert_eq!(
        charge.captures, 0,
        "never charged for stock it could not have"
    );

    // Replaying the same signed event changes nothing.
    w.app
        .payment_webhook(&event.body, Some(&event.signature))
        .await
        .unwrap();
    let m = w.app.sale_metrics(&w.admin, &sale).await.unwrap();
    assert_eq!((m.available, m.held, m.sold), (0, 1, 0));
    assert!(m.invariant_ok);
}

#[tokio::test]
async fn a_late_async_payment_retakes_stock_that_is_still_there() {
    let mut w = world().await;
    let sale = w.sale(5, 1, 60).await;
    let buyer = w.buyer(1).await;
    let hold = w.app.reserve(&buyer, &sale, 1, None).await.unwrap();
    let order = w
        .checkout(&buyer, hold.id.as_str(), "tok_async")
        .await
        .unwrap();
    w.clock.advance_millis(61_000);
    w.app.sweep().await.unwrap();
    let event = w.webhooks.recv().await.unwrap();
    w.app
        .payment_webhook(&event.body, Some(&event.signature))
        .await
        .unwrap();
    let order = w.app.order(&buyer, order.id.as_str()).await.unwrap();
    assert_eq!(order.status, OrderStatus::Confirmed);
    let m = w.app.sale_metrics(&w.admin, &sale).await.unwrap();
    assert_eq!((m.available, m.held, m.sold), (4, 0, 1));
    assert!(m.invariant_ok);
    assert_eq!(m.gate_drift, 0);
    // The buyer now owns their one unit: the limit holds.
    let again = w.app.reserve(&buyer, &sale, 1, None).await;
    assert!(matches!(again, Err(AppError::LimitExceeded)), "{again:?}");
}

#[tokio::test]
async fn sale_status_follows_the_clock() {
    let w = world().await;
    let now = w.clock.now();
    let sale = w
        .app
        .create_sale(
            &w.admin,
            SaleDraft {
                name: "later".into(),
                description: String::new(),
                original_price: "10.00".into(),
                sale_price: "5.00".into(),
                currency: "EUR".into(),
                total_stock: 10,
                starts_at: now.plus_secs(60),
                ends_at: now.plus_secs(120),
                per_user_limit: 1,
                queue_required: false,
                hold_seconds: None,
            },
        )
        .await
        .unwrap();
    let buyer = w.buyer(1).await;
    let id = sale.id.to_string();
    assert!(matches!(
        w.app.reserve(&buyer, &id, 1, None).await,
        Err(AppError::SaleNotLive)
    ));
    w.clock.advance_millis(60_000);
    w.app.reserve(&buyer, &id, 1, None).await.unwrap();
    w.clock.advance_millis(60_000);
    let s = w.app.sale(&id).await.unwrap();
    assert_eq!(s.status_at(w.clock.now()).as_str(), "ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciling_during_a_burst_leaves_no_drift() {
    let w = world().await;
    let sale = w.sale(100_000, 1000, 300).await;
    let mut buyers = Vec::new();
    for n in 0..10 {
        buyers.push(w.buyer(n).await);
    }
    let mut tasks = Vec::new();
    for i in 0..1500 {
        let (app, who, sale) = (
            w.app.clone(),
            buyers[i % buyers.len()].clone(),
            sale.clone(),
        );
        tasks.push(tokio::spawn(async move {
            app.reserve(&who, &sale, 1, None).await
        }));
    }
    // Buyers hanging up mid-request: their reservations must still leave gate and judge agreed.
    for t in tasks.iter().skip(1).step_by(7) {
        t.abort();
    }
    for _ in 0..30 {
        w.app.reconcile().await.unwrap();
        tokio::task::yield_now().await;
    }
    for t in tasks {
        let _ = t.await;
    }
    // Let detached pairs of aborted requests finish, then compare without reconciling again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = w.app.sale_metrics(&w.admin, &sale).await.unwrap();
        assert!(m.invariant_ok);
        if m.gate_drift == 0 && m.held > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gate and judge disagree by {} units after the burst",
            m.gate_drift
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_reads_at_the_moment_a_sale_expires_from_the_cache_cost_one_store_read() {
    let w = world().await;
    let id = w.sale(100, 1, 300).await;
    // Prime the entry, then freeze the clock exactly at its expiry (default lag 1 s).
    w.app.sale(&id).await.unwrap();
    let (before, _) = w.app.read_cache_loads();
    w.clock.advance_millis(1000);
    let start = Arc::new(tokio::sync::Barrier::new(10_000));
    let mut tasks = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let (app, id, start) = (w.app.clone(), id.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            app.sale(&id).await.unwrap().stock.available
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 100);
    }
    let (after, _) = w.app.read_cache_loads();
    assert_eq!(after - before, 1, "one store read for ten thousand viewers");
    // The list too.
    w.app.list_sales(None).await.unwrap();
    let (_, lists_before) = w.app.read_cache_loads();
    w.clock.advance_millis(1000);
    let reads: Vec<_> = (0..10_000)
        .map(|_| {
            let app = w.app.clone();
            tokio::spawn(async move { app.list_sales(None).await.unwrap().len() })
        })
        .collect();
    for r in reads {
        assert_eq!(r.await.unwrap(), 1);
    }
    let (_, lists_after) = w.app.read_cache_loads();
    assert_eq!(lists_after - lists_before, 1);
}
