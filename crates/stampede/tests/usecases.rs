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
    let store = Arc::new(
        stampede_store_sqlite::open(&dir.path().join("s.db"))
            .await
            .unwrap(),
    );
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
        // The bursts here hold hundreds of units per buyer; the hold cap is tested (with its
        // default on) in room_ops.rs.
        hold_cap: stampede_core::judge::HoldCap::default(),
        ..AppConfig::default()
    };
    let (app, _writer) = App::start(
        Adapters {
            store,
            gate: gate.clone(),
            room: Arc::new(stampede_engine::MemoryRoom::with_gate(gate.clone())),
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
        session_id: String::new(),
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
                    discount_percent: None,
                    currency: "EUR".into(),
                    total_stock: total,
                    starts_at: Some(now.plus_secs(-1)),
                    ends_at: Some(now.plus_secs(86_400)),
                    per_user_limit: limit,
                    queue_required: false,
                    hold_seconds: Some(hold_seconds),
                    product_id: None,
                    drop_id: None,
                    category: None,
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
    let hold = w.app.reserve(&buyer, &sale, 2, None, None).await.unwrap();
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
    w.app.reserve(&buyer, &sale, 2, None, None).await.unwrap();
}

#[tokio::test]
async fn a_late_async_payment_is_honoured_only_while_stock_remains() {
    let mut w = world().await;
    let sale = w.sale(1, 1, 60).await;
    let early = w.buyer(1).await;
    let hold = w.app.reserve(&early, &sale, 1, None, None).await.unwrap();
    let order = w
        .checkout(&early, hold.id.as_str(), "tok_async")
        .await
        .unwrap();
    assert_eq!(order.status, OrderStatus::PendingPayment);

    // The hold lapses before the gateway confirms; someone else takes the unit.
    w.clock.advance_millis(61_000);
    assert_eq!(w.app.sweep().await.unwrap(), 1);
    let late = w.buyer(2).await;
    w.app.reserve(&late, &sale, 1, None, None).await.unwrap();

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
    let hold = w.app.reserve(&buyer, &sale, 1, None, None).await.unwrap();
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
    let again = w.app.reserve(&buyer, &sale, 1, None, None).await;
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
                discount_percent: None,
                currency: "EUR".into(),
                total_stock: 10,
                starts_at: Some(now.plus_secs(60)),
                ends_at: Some(now.plus_secs(120)),
                per_user_limit: 1,
                queue_required: false,
                hold_seconds: None,
                product_id: None,
                drop_id: None,
                category: None,
            },
        )
        .await
        .unwrap();
    let buyer = w.buyer(1).await;
    let id = sale.id.to_string();
    assert!(matches!(
        w.app.reserve(&buyer, &id, 1, None, None).await,
        Err(AppError::SaleNotLive)
    ));
    w.clock.advance_millis(60_000);
    w.app.reserve(&buyer, &id, 1, None, None).await.unwrap();
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
            app.reserve(&who, &sale, 1, None, None).await
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

// ---- The waiting room -------------------------------------------------------------------

impl World {
    /// A `queue_required` sale starting `starts_in_secs` from now (negative: already live).
    async fn queued_sale(&self, total: i64, limit: i64, starts_in_secs: i64) -> String {
        let now = self.clock.now();
        self.app
            .create_sale(
                &self.admin,
                SaleDraft {
                    name: "queued".into(),
                    description: String::new(),
                    original_price: "10.00".into(),
                    sale_price: "2.50".into(),
                    discount_percent: None,
                    currency: "EUR".into(),
                    total_stock: total,
                    starts_at: Some(now.plus_secs(starts_in_secs)),
                    ends_at: Some(now.plus_secs(86_400)),
                    per_user_limit: limit,
                    queue_required: true,
                    hold_seconds: Some(60),
                    product_id: None,
                    drop_id: None,
                    category: None,
                },
            )
            .await
            .unwrap()
            .id
            .to_string()
    }

    async fn status(&self, who: &Principal, sale: &str) -> stampede_app::waiting_room::QueueView {
        self.app.queue_status(who, sale).await.unwrap()
    }
}

use stampede_app::waiting_room::QueueStatus;

fn device(i: usize) -> String {
    format!("dev-{i}")
}

/// Admission stops exactly when the stock is gone; everyone waiting sees "sold out" after one
/// admission tick; stock that comes back (a release, a lapsed hold) admits the next in line;
/// when everything is sold the room closes.
#[tokio::test]
async fn admission_follows_the_stock_to_the_unit() {
    let w = world().await;
    let sale = w.queued_sale(3, 1, -1).await;
    let mut buyers = Vec::new();
    for i in 0..10 {
        let b = w.buyer(100 + i as u32).await;
        let v = w.app.join_queue(&b, &sale, &device(i), None).await.unwrap();
        assert_eq!((v.position, v.status), (i as u64 + 1, QueueStatus::Waiting));
        buyers.push(b);
    }
    // Without a token nobody gets in.
    assert!(matches!(
        w.app
            .reserve(&buyers[0], &sale, 1, None, Some("dev-0"))
            .await,
        Err(AppError::NotAdmitted(_))
    ));
    w.app.admission_tick().await.unwrap();
    w.app.admission_tick().await.unwrap(); // outstanding admissions count: still three
    let mut holds = Vec::new();
    for (i, b) in buyers.iter().enumerate() {
        let v = w.status(b, &sale).await;
        if i < 3 {
            assert_eq!(
                (v.status, v.position),
                (QueueStatus::Admitted, 0),
                "buyer {i}"
            );
            let token = v.admission_token.expect("an admitted buyer has a token");
            let hold = w
                .app
                .reserve(b, &sale, 1, Some(&token), Some(&device(i)))
                .await
                .unwrap();
            holds.push(hold);
        } else {
            assert_eq!((v.status, v.position), (QueueStatus::Waiting, i as u64 - 2));
            assert!(v.admission_token.is_none());
        }
    }
    // The stock is gone: one tick later every waiting buyer is told.
    w.app.admission_tick().await.unwrap();
    for b in &buyers[3..] {
        let v = w.status(b, &sale).await;
        assert_eq!(v.status, QueueStatus::SoldOut);
        assert!(!v.closed, "holds may still come back");
    }
    let report = w.app.room_report(&w.admin, &sale).await.unwrap();
    assert_eq!(
        (report.admitted, report.used, report.queue_length),
        (3, 3, 7)
    );
    assert!(report.sold_out_at.is_some());
    // A release gives a unit back: the next in line (and only they) get in.
    w.app
        .release_hold(&buyers[0], holds[0].id.as_str())
        .await
        .unwrap();
    w.app.admission_tick().await.unwrap();
    assert_eq!(
        w.status(&buyers[3], &sale).await.status,
        QueueStatus::Admitted
    );
    assert_eq!(
        w.status(&buyers[4], &sale).await.status,
        QueueStatus::Waiting
    );
    assert_eq!(w.status(&buyers[4], &sale).await.position, 1);
    // The sale had sold out: that admission is a waitlist offer. It lapses unused (the
    // claim window): the next one gets the unit instead.
    assert!(w.status(&buyers[3], &sale).await.claim_deadline.is_some());
    w.clock
        .advance_millis(w.app.config.waitlist_claim_secs.saturating_mul(1000) + 1_000);
    // Meanwhile the other two holds lapsed too (60 s): three units are back.
    w.app.sweep().await.unwrap();
    w.app.admission_tick().await.unwrap();
    assert_eq!(
        w.status(&buyers[3], &sale).await.status,
        QueueStatus::Expired
    );
    let mut orders = Vec::new();
    for (i, b) in buyers.iter().enumerate().skip(4).take(3) {
        let v = w.status(b, &sale).await;
        assert_eq!(v.status, QueueStatus::Admitted, "buyer {i}");
        assert!(
            v.claim_deadline.is_some(),
            "a unit that came back is an offer"
        );
        let token = v.admission_token.unwrap();
        let hold = w
            .app
            .reserve(b, &sale, 1, Some(&token), Some(&device(i)))
            .await
            .unwrap();
        orders.push(w.checkout(b, hold.id.as_str(), "tok_ok").await.unwrap());
    }
    // Everything sold and nothing held, but three still wait: the room stays open as their
    // waitlist, in order.
    w.app.admission_tick().await.unwrap();
    for (place, b) in buyers[7..].iter().enumerate() {
        let v = w.status(b, &sale).await;
        assert_eq!((v.status, v.closed), (QueueStatus::SoldOut, false));
        assert_eq!(v.waitlist_position, Some(place as u64 + 1));
    }
    // A cancelled order's unit is offered to the first on the waitlist, for the claim window.
    w.app
        .cancel_order(&buyers[4], orders[0].id.as_str())
        .await
        .unwrap();
    w.app.admission_tick().await.unwrap();
    let offer = w.status(&buyers[7], &sale).await;
    assert_eq!(offer.status, QueueStatus::Admitted);
    assert_eq!(
        offer.claim_deadline,
        Some(w.clock.now().plus_secs(w.app.config.waitlist_claim_secs))
    );
    assert_eq!(w.status(&buyers[8], &sale).await.waitlist_position, Some(1));
    // Unclaimed, it passes on to the next.
    w.clock
        .advance_millis(w.app.config.waitlist_claim_secs.saturating_mul(1000) + 1);
    w.app.admission_tick().await.unwrap();
    assert_eq!(
        w.status(&buyers[7], &sale).await.status,
        QueueStatus::Expired
    );
    let offer = w.status(&buyers[8], &sale).await;
    assert_eq!(offer.status, QueueStatus::Admitted);
    let hold = w
        .app
        .reserve(
            &buyers[8],
            &sale,
            1,
            offer.admission_token.as_deref(),
            Some(&device(8)),
        )
        .await
        .unwrap();
    w.checkout(&buyers[8], hold.id.as_str(), "tok_ok")
        .await
        .unwrap();
    // Only the last one waits now; everything sold, nothing held: the room stays open for
    // them until the sale ends.
    w.app.admission_tick().await.unwrap();
    let v = w.status(&buyers[9], &sale).await;
    assert_eq!(
        (v.status, v.waitlist_position),
        (QueueStatus::SoldOut, Some(1))
    );
    let report = w.app.room_report(&w.admin, &sale).await.unwrap();
    assert_eq!(report.admitted, 9, "3 + 1 returned + 3 returned + 2 offers");
    assert_eq!(report.fifo_inversions, 0);
    let m = w.app.sale_metrics(&w.admin, &sale).await.unwrap();
    assert_eq!((m.sold, m.held, m.available), (3, 0, 0));
    assert!(m.invariant_ok);
}

/// Ten thousand forged, replayed, expired and transferred admission tokens: none gets a unit.
#[tokio::test]
async fn no_bad_admission_token_is_ever_accepted() {
    use stampede_core::admission::{AdmissionClaims, AdmissionKey};
    let w = world().await;
    let sale = w.queued_sale(1000, 1, -1).await;
    let owner = w.buyer(1).await;
    let thief = w.buyer(2).await;
    w.app
        .join_queue(&owner, &sale, "owner-phone", None)
        .await
        .unwrap();
    w.app
        .join_queue(&thief, &sale, "thief-phone", None)
        .await
        .unwrap();
    w.app.admission_tick().await.unwrap();
    let owner_token = w.status(&owner, &sale).await.admission_token.unwrap();
    let thief_token = w.status(&thief, &sale).await.admission_token.unwrap();
    let mut bad: Vec<(Principal, String, String, &str)> = Vec::new();
    for i in 0..2500u64 {
        // Forged: the right claims signed with a key the server never had.
        let forged = AdmissionClaims {
            sale_id: sale.clone(),
            user_id: owner.user_id.to_string(),
            device_id: "owner-phone".into(),
            ticket: i % 2,
            issued_at: w.clock.now(),
            expires_at: w.clock.now().plus_secs(60),
        }
        .sign(&AdmissionKey::from_seed(&rand::random()))
        .unwrap();
        bad.push((owner.clone(), forged, "owner-phone".into(), "forged"));
        // Tampered: a real token with one byte of its payload or signature changed.
        let mut bytes = owner_token.clone().into_bytes();
        let at = (i as usize * 7) % bytes.len();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        bad.push((
            owner.clone(),
            String::from_utf8(bytes).unwrap(),
            "owner-phone".into(),
            "tampered",
        ));
        // Transferred: the owner's real token used by someone else, or from another device.
        if i % 2 == 0 {
            bad.push((
                thief.clone(),
                owner_token.clone(),
                "owner-phone".into(),
                "other user",
            ));
        } else {
            bad.push((
                owner.clone(),
                owner_token.clone(),
                format!("bot-{i}"),
                "other device",
            ));
        }
        // Replayed: the thief's own token, already used by the reservation below.
        bad.push((
            thief.clone(),
            thief_token.clone(),
            "thief-phone".into(),
            "replayed",
        ));
    }
    w.app
        .reserve(&thief, &sale, 1, Some(&thief_token), Some("thief-phone"))
        .await
        .unwrap();
    let before = w.app.sale_metrics(&w.admin, &sale).await.unwrap();
    let mut accepted = 0;
    for (n, (who, token, dev, kind)) in bad.iter().enumerate() {
        let result = w.app.reserve(who, &sale, 1, Some(token), Some(dev)).await;
        match result {
            Err(AppError::NotAdmitted(_)) => {}
            other => {
                accepted += 1;
                eprintln!("#{n} ({kind}) was not refused: {other:?}");
            }
        }
    }
    // Expired: the owner's genuine token after it lapsed.
    w.clock.advance_millis(121_000);
    assert!(matches!(
        w.app
            .reserve(&owner, &sale, 1, Some(&owner_token), Some("owner-phone"))
            .await,
        Err(AppError::NotAdmitted(_))
    ));
    assert_eq!(bad.len(), 10_000);
    assert_eq!(accepted, 0, "bad tokens accepted");
    let after = w.app.sale_metrics(&w.admin, &sale).await.unwrap();
    assert_eq!((after.held, after.sold), (before.held, before.sold));
    let report = w.app.room_report(&w.admin, &sale).await.unwrap();
    assert!(report.refusals.get("token_forged").copied().unwrap_or(0) >= 2500);
    assert!(report.refusals.get("token_replayed").copied().unwrap_or(0) >= 2500);
    assert!(
        report
            .refusals
            .get("token_transferred")
            .copied()
            .unwrap_or(0)
            >= 2500
    );
}

/// Buyers who arrive before the start are put in the order of the committed seed's draw,
/// whatever order they came in; the published record verifies.
#[tokio::test]
async fn the_pre_queue_is_drawn_with_the_committed_seed() {
    use stampede_core::draw::{draw_order, DrawPurpose, Seed};
    let w = world().await;
    let sale = w.queued_sale(5, 1, 60).await;
    let mut buyers = Vec::new();
    for i in 0..30 {
        let b = w.buyer(300 + i).await;
        let v = w
            .app
            .join_queue(&b, &sale, &device(i as usize), None)
            .await
            .unwrap();
        assert!(v.pre_queue);
        buyers.push(b);
    }
    let (records, commitments) = w.app.draws(&sale).await.unwrap();
    assert!(records.is_empty());
    let committed = commitments
        .iter()
        .find(|(p, _)| p == "pre_queue")
        .unwrap()
        .1
        .clone();
    // Before the start: no draw, no admission.
    w.app.admission_tick().await.unwrap();
    assert!(w.status(&buyers[0], &sale).await.pre_queue);
    w.clock.advance_millis(61_000);
    w.app.admission_tick().await.unwrap();
    let (records, _) = w.app.draws(&sale).await.unwrap();
    let record = &records[0];
    assert_eq!(
        record.seed_commitment, committed,
        "the seed committed before the draw"
    );
    assert_eq!(record.verify().unwrap(), record.winners);
    let seed = Seed::from_hex(&record.seed).unwrap();
    let order = draw_order(&seed, DrawPurpose::PreQueue, &record.entrants);
    let joined: Vec<String> = buyers.iter().map(|b| b.user_id.to_string()).collect();
    assert_ne!(order, joined, "not the arrival order");
    // The first five in the drawn order are admitted; the rest wait in that order.
    for (place, user) in order.iter().enumerate() {
        let b = buyers.iter().find(|b| b.user_id.as_str() == user).unwrap();
        let v = w.status(b, &sale).await;
        if place < 5 {
            assert_eq!(v.status, QueueStatus::Admitted);
        } else {
            assert_eq!(v.position, place as u64 - 4);
        }
    }
}

/// A sale marked as a draw: at the start a lottery among everyone who joined decides who may
/// buy the stock; nobody is admitted first come, first served before it.
#[tokio::test]
async fn a_sale_marked_as_a_draw_is_decided_by_lottery_at_the_start() {
    use stampede_app::ports::RoomRules;
    let w = world().await;
    let sale = w.queued_sale(5, 1, 30).await;
    w.app
        .set_room_rules(
            &w.admin,
            &sale,
            RoomRules {
                lottery_at_start: true,
                ..RoomRules::default()
            },
        )
        .await
        .unwrap();
    let mut buyers = Vec::new();
    for i in 0..20 {
        let b = w.buyer(500 + i).await;
        w.app
            .join_queue(&b, &sale, &device(i as usize), None)
            .await
            .unwrap();
        buyers.push(b);
    }
    w.app.admission_tick().await.unwrap();
    assert_eq!(
        w.app.room_report(&w.admin, &sale).await.unwrap().admitted,
        0
    );
    w.clock.advance_millis(31_000);
    w.app.admission_tick().await.unwrap();
    w.app.admission_tick().await.unwrap();
    let (records, _) = w.app.draws(&sale).await.unwrap();
    assert_eq!(records.len(), 1, "one published lottery");
    let record = &records[0];
    assert_eq!(record.verify().unwrap().len(), 5);
    let mut won = 0;
    for (i, b) in buyers.iter().enumerate() {
        let v = w.status(b, &sale).await;
        let winner = record.winners.iter().any(|u| u == b.user_id.as_str());
        if winner {
            won += 1;
            assert_eq!(v.status, QueueStatus::LotteryWon);
            let token = v.admission_token.unwrap();
            let hold = w
                .app
                .reserve(b, &sale, 1, Some(&token), Some(&device(i)))
                .await
                .unwrap();
            // Growing the hold would skip the line: refused.
            assert!(matches!(
                w.app.resize_hold(b, hold.id.as_str(), 2).await,
                Err(AppError::NotAdmitted(_))
            ));
        } else {
            assert_eq!(v.status, QueueStatus::LotteryLost);
        }
    }
    assert_eq!(won, 5);
    let m = w.app.sale_metrics(&w.admin, &sale).await.unwrap();
    assert_eq!((m.held, m.available), (5, 0));
}

/// A sale priced as a percentage off: for prices and percentages across the range, the price
/// shown on the sale is the rounding rule's, and the order charges exactly that.
#[tokio::test]
async fn a_percentage_off_is_shown_and_charged_alike() {
    use rand::{Rng, SeedableRng};
    let w = world().await;
    let buyer = w.buyer(900).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut cases: Vec<(i64, i64)> =
        vec![(999, 33), (1, 50), (100_000, 0), (12_345, 100), (1_999, 15)];
    cases.extend((0..60).map(|_| (rng.gen_range(1..=10_000_000), rng.gen_range(0..=100))));
    for (cents, percent) in cases {
        let now = w.clock.now();
        let original = format!("{}.{:02}", cents / 100, cents % 100);
        let sale = w
            .app
            .create_sale(
                &w.admin,
                SaleDraft {
                    name: "pct".into(),
                    description: String::new(),
                    original_price: original.clone(),
                    sale_price: String::new(),
                    discount_percent: Some(percent),
                    currency: "EUR".into(),
                    total_stock: 5,
                    starts_at: Some(now.plus_secs(-1)),
                    ends_at: Some(now.plus_secs(86_400)),
                    per_user_limit: 5,
                    queue_required: false,
                    hold_seconds: Some(60),
                    product_id: None,
                    drop_id: None,
                    category: None,
                },
            )
            .await
            .unwrap();
        let rule = cents - cents * percent / 100;
        assert_eq!(sale.sale_price.0, rule, "{original} at {percent}% off");
        let shown = w.app.sale(sale.id.as_str()).await.unwrap().sale_price;
        assert_eq!(shown.0, rule);
        let hold = w
            .app
            .reserve(&buyer, sale.id.as_str(), 2, None, None)
            .await
            .unwrap();
        assert_eq!(hold.unit_price, shown);
        let order = w
            .checkout(&buyer, hold.id.as_str(), "tok_ok")
            .await
            .unwrap();
        assert_eq!(order.total.0, 2 * rule, "charged twice the shown price");
    }
    // Both, or neither, is an input error.
    let now = w.clock.now();
    let both = SaleDraft {
        name: "x".into(),
        description: String::new(),
        original_price: "10.00".into(),
        sale_price: "5.00".into(),
        discount_percent: Some(10),
        currency: "EUR".into(),
        total_stock: 1,
        starts_at: Some(now),
        ends_at: Some(now.plus_secs(60)),
        per_user_limit: 1,
        queue_required: false,
        hold_seconds: None,
        product_id: None,
        drop_id: None,
        category: None,
    };
    assert!(matches!(
        w.app.create_sale(&w.admin, both.clone()).await,
        Err(AppError::InvalidInput(_))
    ));
    let too_much = SaleDraft {
        sale_price: String::new(),
        discount_percent: Some(101),
        ..both
    };
    assert!(matches!(
        w.app.create_sale(&w.admin, too_much).await,
        Err(AppError::InvalidInput(_))
    ));
}

/// A token works until its expiry and not a millisecond after (also when this node cached it),
/// and a logged-out token is dead at once.
#[tokio::test]
async fn a_token_dies_at_its_expiry_and_at_logout() {
    let w = world().await;
    w.app
        .register("exp@example.com", "password-1", "E")
        .await
        .unwrap();
    let grant = w.app.login("exp@example.com", "password-1").await.unwrap();
    let ttl_ms = w.app.config.token_ttl_secs * 1000;
    assert_eq!(grant.expires_at, w.clock.now().plus_secs(ttl_ms / 1000));
    w.app.authenticate(&grant.token).await.unwrap();
    w.clock.advance_millis(ttl_ms - 1);
    w.app.authenticate(&grant.token).await.unwrap();
    w.clock.advance_millis(1);
    assert!(matches!(
        w.app.authenticate(&grant.token).await,
        Err(AppError::Unauthenticated)
    ));

    let grant = w.app.login("exp@example.com", "password-1").await.unwrap();
    let who = w.app.authenticate(&grant.token).await.unwrap();
    w.app.logout(&who).await.unwrap();
    assert!(matches!(
        w.app.authenticate(&grant.token).await,
        Err(AppError::Unauthenticated)
    ));
}

/// The operator's controls: paused, nobody is admitted however many rounds run and everyone
/// keeps their place (and sees the pause); resumed, the next in the original order get in; a
/// ceiling holds admissions per minute; "queue everyone" puts a live sale behind its room.
/// Each control is in the audit log with its actor and reason.
#[tokio::test]
async fn operator_controls_pause_resume_ceiling_and_queue_everyone_are_audited() {
    use stampede_app::ports::AuditFilter;
    use stampede_app::waiting_room::RoomControl;
    let w = world().await;
    let sale = w.queued_sale(100, 1, -1).await;
    let mut buyers = Vec::new();
    for i in 0..12 {
        let b = w.buyer(700 + i as u32).await;
        w.app.join_queue(&b, &sale, &device(i), None).await.unwrap();
        buyers.push(b);
    }
    // A buyer may not pause, and a reason is required.
    assert!(matches!(
        w.app
            .control_room(&buyers[0], &sale, RoomControl::Pause, "mine")
            .await,
        Err(AppError::Forbidden)
    ));
    assert!(matches!(
        w.app
            .control_room(&w.admin, &sale, RoomControl::Pause, "  ")
            .await,
        Err(AppError::InvalidInput(_))
    ));
    let report = w
        .app
        .control_room(
            &w.admin,
            &sale,
            RoomControl::Pause,
            "payment provider incident",
        )
        .await
        .unwrap();
    assert!(report.rules.admission_paused);
    assert!(matches!(
        w.app
            .control_room(&w.admin, &sale, RoomControl::Pause, "again")
            .await,
        Err(AppError::Conflict(_))
    ));
    for _ in 0..5 {
        w.app.admission_tick().await.unwrap();
        w.clock.advance_millis(100);
    }
    for (i, b) in buyers.iter().enumerate() {
        let v = w.status(b, &sale).await;
        assert_eq!(
            (v.status, v.position, v.paused),
            (QueueStatus::Waiting, i as u64 + 1, true),
            "buyer {i} while paused"
        );
        assert!(v.admission_token.is_none());
    }
    assert_eq!(
        w.app.room_report(&w.admin, &sale).await.unwrap().admitted,
        0
    );
    // Rules set while paused do not resume.
    w.app
        .set_room_rules(&w.admin, &sale, stampede_app::ports::RoomRules::default())
        .await
        .unwrap();
    w.app.admission_tick().await.unwrap();
    assert_eq!(
        w.status(&buyers[0], &sale).await.status,
        QueueStatus::Waiting
    );

    // Resumed with a ceiling of 5 a minute: the first five in the original order, then
    // nobody more until the minute has passed.
    w.app
        .control_room(
            &w.admin,
            &sale,
            RoomControl::RateCeiling { per_minute: 5 },
            "payment provider recovering",
        )
        .await
        .unwrap();
    w.app
        .control_room(&w.admin, &sale, RoomControl::Resume, "incident over")
        .await
        .unwrap();
    for _ in 0..10 {
        w.app.admission_tick().await.unwrap();
        w.clock.advance_millis(1_000);
    }
    for (i, b) in buyers.iter().enumerate() {
        let v = w.status(b, &sale).await;
        assert!(!v.paused);
        let expected = if i < 5 {
            QueueStatus::Admitted
        } else {
            QueueStatus::Waiting
        };
        assert_eq!(v.status, expected, "buyer {i} after resuming");
    }
    w.clock.advance_millis(50_001);
    w.app.admission_tick().await.unwrap();
    for (i, b) in buyers.iter().enumerate() {
        let expected = if i < 10 {
            QueueStatus::Admitted
        } else {
            QueueStatus::Waiting
        };
        assert_eq!(
            w.status(b, &sale).await.status,
            expected,
            "buyer {i} a minute later"
        );
    }

    // Queue everyone: a live sale without a room gets one; reserving now needs admission.
    let open = w.sale(10, 1, 60).await;
    let early = w.buyer(799).await;
    w.app.reserve(&early, &open, 1, None, None).await.unwrap();
    w.app
        .control_room(
            &w.admin,
            &open,
            RoomControl::QueueEveryone,
            "bots at the door",
        )
        .await
        .unwrap();
    let late = w.buyer(798).await;
    assert!(matches!(
        w.app.reserve(&late, &open, 1, None, None).await,
        Err(AppError::NotAdmitted(_))
    ));
    w.app
        .join_queue(&late, &open, "late-phone", None)
        .await
        .unwrap();
    w.app.admission_tick().await.unwrap();
    let token = w.status(&late, &open).await.admission_token.unwrap();
    w.app
        .reserve(&late, &open, 1, Some(&token), Some("late-phone"))
        .await
        .unwrap();

    let audit = w
        .app
        .audit_log(
            &w.admin,
            AuditFilter {
                actor: Some(w.admin.user_id.to_string()),
                action: None,
                after: None,
                limit: 100,
            },
        )
        .await
        .unwrap();
    for (action, reason) in [
        ("room.pause_admission", "payment provider incident"),
        ("room.admission_ceiling", "payment provider recovering"),
        ("room.resume_admission", "incident over"),
        ("room.queue_everyone", "bots at the door"),
    ] {
        let entry = audit
            .iter()
            .find(|e| e.action == action)
            .unwrap_or_else(|| panic!("{action} not audited"));
        assert_eq!(entry.actor, w.admin.user_id.to_string());
        assert_eq!(entry.after.as_ref().unwrap()["reason"], reason, "{action}");
    }
}

/// Which of `buyers` are no longer waiting in `sale`'s room.
async fn admitted(w: &World, buyers: &[Principal], sale: &str) -> Vec<usize> {
    let mut n = Vec::new();
    for (i, b) in buyers.iter().enumerate() {
        if w.status(b, sale).await.status != QueueStatus::Waiting {
            n.push(i);
        }
    }
    n
}

/// Admission by capacity: with `max_active` = 10 the 11th buyer is admitted only once one of
/// the ten pays, releases, lets the hold lapse or lets the admission lapse, each time freeing
/// exactly one slot for the next in line.
#[tokio::test]
async fn max_active_admits_the_next_only_when_a_slot_frees() {
    use stampede_app::ports::RoomRules;
    let w = world().await;
    let sale = w.queued_sale(100, 1, -1).await;
    w.app
        .set_room_rules(
            &w.admin,
            &sale,
            RoomRules {
                max_active: 10,
                ..RoomRules::default()
            },
        )
        .await
        .unwrap();
    let mut buyers = Vec::new();
    for i in 0..14 {
        let b = w.buyer(600 + i as u32).await;
        w.app.join_queue(&b, &sale, &device(i), None).await.unwrap();
        buyers.push(b);
    }
    w.app.admission_tick().await.unwrap();
    assert_eq!(
        admitted(&w, &buyers, &sale).await,
        (0..10).collect::<Vec<_>>()
    );
    // Nine of the ten reserve (one holds on to its admission); still ten active.
    let mut holds = Vec::new();
    for (i, b) in buyers.iter().enumerate().take(9) {
        let token = w.status(b, &sale).await.admission_token.unwrap();
        let hold = w
            .app
            .reserve(b, &sale, 1, Some(&token), Some(&device(i)))
            .await
            .unwrap();
        holds.push(hold);
    }
    for _ in 0..3 {
        w.app.admission_tick().await.unwrap();
    }
    assert_eq!(
        admitted(&w, &buyers, &sale).await.len(),
        10,
        "nobody freed a slot"
    );
    // One pays: the 11th gets in, nobody else.
    w.checkout(&buyers[0], holds[0].id.as_str(), "tok_ok")
        .await
        .unwrap();
    w.app.admission_tick().await.unwrap();
    assert_eq!(
        admitted(&w, &buyers, &sale).await,
        (0..11).collect::<Vec<_>>()
    );
    // One releases: the 12th.
    w.app
        .release_hold(&buyers[1], holds[1].id.as_str())
        .await
        .unwrap();
    w.app.admission_tick().await.unwrap();
    assert_eq!(
        admitted(&w, &buyers, &sale).await,
        (0..12).collect::<Vec<_>>()
    );
    // A payment declined keeps the hold and the slot.
    assert!(w
        .checkout(&buyers[2], holds[2].id.as_str(), "tok_decline")
        .await
        .is_err());
    w.app.admission_tick().await.unwrap();
    assert_eq!(admitted(&w, &buyers, &sale).await.len(), 12);
    // The other holds lapse (60 s): their slots free, and everyone left gets in.
    w.clock.advance_millis(61_000);
    w.app.sweep().await.unwrap();
    w.app.admission_tick().await.unwrap();
    assert_eq!(
        admitted(&w, &buyers, &sale).await,
        (0..14).collect::<Vec<_>>()
    );
}

/// The queue's figures through the use cases, on the manual clock: waits measured from join
/// to admission, the ETA told at join against the admission, a buyer who stops looking is
/// counted as having left, an admission that lapses unused as a no-show, and admissions per
/// minute against the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_figures_follow_the_room_on_a_manual_clock() {
    use stampede_app::waiting_room::RoomControl;
    let w = world().await;
    let sale = w.queued_sale(2, 1, -1).await;
    w.app
        .control_room(&w.admin, &sale, RoomControl::Pause, "lining up")
        .await
        .unwrap();
    w.app
        .control_room(
            &w.admin,
            &sale,
            RoomControl::RateCeiling { per_minute: 30 },
            "steady",
        )
        .await
        .unwrap();
    let buyers = [w.buyer(900).await, w.buyer(901).await, w.buyer(902).await];
    for (i, who) in buyers.iter().enumerate() {
        let v = w
            .app
            .join_queue(who, &sale, &device(i), None)
            .await
            .unwrap();
        assert!(v.eta_seconds <= 1, "nothing measured yet: a tick a place");
    }
    // The first two keep looking at their place; the third never looks again.
    for _ in 0..2 {
        w.clock.advance_millis(30_000);
        w.status(&buyers[0], &sale).await;
        w.status(&buyers[1], &sale).await;
    }
    w.app
        .control_room(&w.admin, &sale, RoomControl::Resume, "open")
        .await
        .unwrap();
    w.app.admission_tick().await.unwrap();
    let token = w.status(&buyers[0], &sale).await.admission_token.unwrap();
    w.app
        .reserve(&buyers[0], &sale, 1, Some(&token), Some(&device(0)))
        .await
        .unwrap();

    let f = w.app.room_report(&w.admin, &sale).await.unwrap().analytics;
    assert_eq!((f.joined, f.admitted), (3, 2), "{f:?}");
    assert_eq!(f.time_in_queue_p50_secs, 60.0);
    assert_eq!(f.time_in_queue_p99_secs, 60.0);
    // Told about 1 s, admitted after 60 s: 59 s late.
    assert!((58.0..=60.0).contains(&f.eta_error_p50_secs), "{f:?}");
    assert!(f.eta_bias_secs > 0.0);
    assert_eq!((f.abandoned, f.no_shows), (0, 0), "{f:?}");
    assert_eq!(f.admissions_per_minute.iter().sum::<u64>(), 2);
    assert_eq!(f.admissions_per_minute_limit, 30);

    // Past the admission window (120 s): the second buyer bought nothing, and the third has
    // not looked at their place for over two minutes.
    w.clock.advance_millis(130_000);
    let f = w.app.room_report(&w.admin, &sale).await.unwrap().analytics;
    assert_eq!((f.abandoned, f.no_shows), (1, 1), "{f:?}");
    assert_eq!(f.no_show_rate, 0.5);
    assert_eq!(f.max_admissions_in_a_minute, 2);
}
