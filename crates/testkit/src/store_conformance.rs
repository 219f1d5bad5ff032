//! Conformance of a `Store` adapter to the port: the judge's rules (no oversell, per-buyer
//! limits, holds ending once), orders and payments, the outbox and notifications, idempotency,
//! and a seeded randomized run against the reference model `stampede_core::judge::SaleLedger`.
//!
//! Every check is a plain `pub async fn(Arc<dyn Store>)` that expects a fresh, migrated, empty
//! store; [`crate::store_conformance_tests!`] turns them into one `#[tokio::test]` per check for
//! an adapter. Checks written once here are what "same behaviour in both modes" means.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use stampede_app::ports::{
    AuditEntry, AuditFilter, Cancelled, CheckoutError, CheckoutIds, CheckoutWrite, CheckoutWritten,
    EventKind, GatewayOwed, HoldError, IdempotencyAnswer, IdempotencyClaim, IdempotencyStart,
    KeyedOrder, NewOrder, Notification, OutboxEvent, OutboxLease, OwedDone, OwedPayment,
    PaymentAnswer, PaymentApplied, PaymentResult, ReserveRequest, Role, Session, Store, User,
    WebhookDelivery,
};
use stampede_core::judge::{HoldCap, LedgerError, Refusal, SaleLedger};
use stampede_core::{
    Currency, Hold, HoldId, HoldState, Money, Order, OrderId, OrderStatus, PaymentId,
    PaymentStatus, Sale, SaleControl, SaleId, StockLevels, Timestamp, UserId,
};

pub use crate::catalog_conformance::{
    a_drop_limit_spans_its_sales, browse_matches_the_model, concurrent_batches_respect_a_drop_limit,
};

/// The judge's clock reading most checks run at.
pub const T0: Timestamp = Timestamp(1_700_000_000_000);
/// How long the checks' sales hold units.
pub const HOLD_SECS: u32 = 60;

static SEQ: AtomicU64 = AtomicU64::new(1);

fn seq() -> u128 {
    u128::from(SEQ.fetch_add(1, Ordering::Relaxed))
}

/// The `n`th test buyer: the same id every time, so checks can name buyers by number.
pub fn user(n: u32) -> UserId {
    UserId::generate(1_000, u128::from(n) + 1)
}

/// A fresh hold id, unique within the test process.
pub fn hold_id() -> HoldId {
    HoldId::generate(T0.0, seq())
}

/// The store under test, named as the checks were first written against.
struct Fx {
    store: Arc<dyn Store>,
}

/// A live sale (not yet stored) of `total` units at 25.00, `limit` per buyer.
pub fn sale_with(total: i64, limit: u32, currency: &str) -> Sale {
    Sale {
        id: SaleId::generate(T0.0, seq()),
        name: "Sneakers".into(),
        description: "Limited run".into(),
        original_price: Money(10_000),
        sale_price: Money(2_500),
        currency: Currency::parse(currency).unwrap(),
        starts_at: T0.plus_secs(-3_600),
        ends_at: T0.plus_secs(86_400),
        per_user_limit: limit,
        queue_required: false,
        hold_seconds: HOLD_SECS,
        control: SaleControl::Running,
        stock: StockLevels::fresh(total),
        product_id: None,
        drop_id: None,
        category: String::new(),
        created_at: T0.plus_secs(-7_200),
        updated_at: T0.plus_secs(-7_200),
    }
}

/// Stores a fresh live EUR sale and returns it.
pub async fn new_sale(store: &dyn Store, total: i64, limit: u32) -> Sale {
    let sale = sale_with(total, limit, "EUR");
    store.insert_sale(&sale).await.unwrap();
    sale
}

/// A reservation request with a fresh hold id.
pub fn req(sale: &Sale, user: &UserId, quantity: u32, now: Timestamp) -> ReserveRequest {
    ReserveRequest {
        hold_id: hold_id(),
        sale_id: sale.id.clone(),
        user_id: user.clone(),
        quantity,
        now,
        device_id: None,
        hold_cap: HoldCap::default(),
    }
}

/// [`req`] from `device` (if any) under the hold cap `per_account` / `per_device`.
pub fn capped(
    mut r: ReserveRequest,
    per_account: u32,
    per_device: u32,
    device: Option<&str>,
) -> ReserveRequest {
    r.hold_cap = HoldCap {
        per_account,
        per_device,
    };
    r.device_id = device.map(str::to_owned);
    r
}

/// Reserves in a batch of one and expects a hold.
pub async fn reserve_one(
    store: &dyn Store,
    sale: &Sale,
    user: &UserId,
    qty: u32,
    now: Timestamp,
) -> Hold {
    let mut out = store.reserve(&[req(sale, user, qty, now)]).await.unwrap();
    out.pop().unwrap().unwrap()
}

/// Asserts every invariant of the sale and returns its counters.
pub async fn checked(store: &dyn Store, sale: &SaleId) -> StockLevels {
    let audit = store.stock_audit(sale).await.unwrap().unwrap();
    assert!(audit.invariant_ok(), "invariants broken: {audit:?}");
    audit.counters
}

/// Shorthand for a `StockLevels`.
pub fn levels(total: i64, available: i64, held: i64, sold: i64) -> StockLevels {
    StockLevels {
        total,
        available,
        held,
        sold,
    }
}

async fn checkout(
    store: &dyn Store,
    user: &UserId,
    holds: &[&Hold],
    now: Timestamp,
) -> Result<Order, CheckoutError> {
    store
        .create_order(&NewOrder {
            order_id: OrderId::generate(now.0, seq()),
            payment_id: PaymentId::generate(now.0, seq()),
            user_id: user.clone(),
            hold_ids: holds.iter().map(|h| h.id.clone()).collect(),
            method: "card".into(),
            now,
        })
        .await
        .unwrap()
}

fn authorized(reference: &str, retake: bool) -> PaymentResult {
    PaymentResult::Authorized {
        reference: reference.into(),
        retake,
    }
}

async fn pay(
    store: &dyn Store,
    order: &Order,
    result: PaymentResult,
    now: Timestamp,
) -> PaymentApplied {
    store
        .apply_payment(&order.id, &result, now)
        .await
        .unwrap()
        .unwrap()
}

// --- the judge ---------------------------------------------------------------------------

/// One group-commit batch bigger than the stock: exactly the stock is held, in request order, the
/// rest is sold out (invariant 1, no oversell).
pub async fn one_batch_sells_exactly_the_stock(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 5, 2).await;
    let batch: Vec<_> = (0..8).map(|u| req(&sale, &user(u), 1, T0)).collect();
    let out = f.store.reserve(&batch).await.unwrap();
    assert_eq!(out.len(), 8);
    assert!(out[..5].iter().all(Result::is_ok), "{out:?}");
    assert!(
        out[5..].iter().all(|r| r == &Err(Refusal::SoldOut)),
        "{out:?}"
    );
    for (r, q) in out.iter().zip(&batch) {
        if let Ok(h) = r {
            assert_eq!(h.id, q.hold_id);
            assert_eq!(h.state, HoldState::Active);
            assert_eq!(h.unit_price, Money(2_500));
            assert_eq!(h.expires_at, T0.plus_secs(i64::from(HOLD_SECS)));
        }
    }
    assert_eq!(checked(&*f.store, &sale.id).await, levels(5, 0, 5, 0));
    let stored = f.store.sale(&sale.id).await.unwrap().unwrap();
    assert_eq!(stored.stock, levels(5, 0, 5, 0));
}

/// A buyer's per-sale limit holds within one batch and across batches (invariant 2).
pub async fn per_user_limit_holds_inside_one_batch(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 100, 2).await;
    let u = user(1);
    let batch: Vec<_> = (0..5).map(|_| req(&sale, &u, 1, T0)).collect();
    let out = f.store.reserve(&batch).await.unwrap();
    let ok = out.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 2, "{out:?}");
    assert!(out[2..].iter().all(|r| r == &Err(Refusal::LimitExceeded)));
    // The limit also holds across batches.
    let again = f.store.reserve(&[req(&sale, &u, 1, T0)]).await.unwrap();
    assert_eq!(again, vec![Err(Refusal::LimitExceeded)]);
    assert_eq!(checked(&*f.store, &sale.id).await, levels(100, 98, 2, 0));
}

/// Refusals come in the contract's order: not live (missing, before start, at end, paused), then
/// over the limit, then sold out.
pub async fn refusals_follow_status_then_limit_then_stock(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 1, 2).await;
    let u = user(1);
    let missing = ReserveRequest {
        sale_id: SaleId::generate(T0.0, seq()),
        ..req(&sale, &u, 1, T0)
    };
    let before_start = req(&sale, &u, 1, sale.starts_at.plus_millis(-1));
    let at_end = req(&sale, &u, 1, sale.ends_at);
    let over_limit = req(&sale, &u, 3, T0);
    let too_many = req(&sale, &u, 2, T0);
    let out = f
        .store
        .reserve(&[missing, before_start, at_end, over_limit, too_many])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            Err(Refusal::SaleNotLive),
            Err(Refusal::SaleNotLive),
            Err(Refusal::SaleNotLive),
            Err(Refusal::LimitExceeded),
            Err(Refusal::SoldOut),
        ]
    );
    let mut paused = sale.clone();
    paused.control = SaleControl::Paused;
    assert!(f.store.update_sale(&paused).await.unwrap());
    let out = f.store.reserve(&[req(&sale, &u, 1, T0)]).await.unwrap();
    assert_eq!(out, vec![Err(Refusal::SaleNotLive)]);
    assert_eq!(checked(&*f.store, &sale.id).await, levels(1, 1, 0, 0));
}

/// A retried hold id gets the same hold and takes stock once; another buyer reusing it is refused
/// and never sees it.
pub async fn duplicate_hold_id_returns_the_same_hold_and_takes_stock_once(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 10, 5).await;
    let u = user(1);
    let r = req(&sale, &u, 2, T0);
    let out = f.store.reserve(&[r.clone(), r.clone()]).await.unwrap();
    let first = out[0].clone().unwrap();
    assert_eq!(out[1], Ok(first.clone()));
    // A retry in a later batch (after a lost reply) too, even at a later clock reading.
    let retry = ReserveRequest {
        now: T0.plus_secs(5),
        ..r.clone()
    };
    let out = f.store.reserve(&[retry]).await.unwrap();
    assert_eq!(out, vec![Ok(first)]);
    assert_eq!(checked(&*f.store, &sale.id).await, levels(10, 8, 2, 0));
    // Someone else's id is never shown to another buyer.
    let thief = ReserveRequest {
        user_id: user(2),
        ..r
    };
    let out = f.store.reserve(&[thief]).await.unwrap();
    assert!(out[0].is_err());
    assert_eq!(checked(&*f.store, &sale.id).await, levels(10, 8, 2, 0));
}

/// Releasing returns stock and the buyer's units at once, and only the owner can release.
pub async fn release_returns_stock_and_only_to_its_owner(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 3, 3).await;
    let (a, b) = (user(1), user(2));
    let h = reserve_one(&*f.store, &sale, &a, 2, T0).await;
    assert_eq!(f.store.live_holds(&a, T0).await.unwrap(), vec![h.clone()]);
    assert_eq!(
        f.store.release_hold(&b, &h.id, T0).await.unwrap(),
        Err(HoldError::NotFound)
    );
    assert_eq!(
        f.store.release_hold(&a, &hold_id(), T0).await.unwrap(),
        Err(HoldError::NotFound)
    );
    let released = f.store.release_hold(&a, &h.id, T0).await.unwrap().unwrap();
    assert_eq!(released.state, HoldState::Released);
    assert_eq!(checked(&*f.store, &sale.id).await, levels(3, 3, 0, 0));
    assert_eq!(
        f.store.release_hold(&a, &h.id, T0).await.unwrap(),
        Err(HoldError::NotFound)
    );
    assert!(f.store.live_holds(&a, T0).await.unwrap().is_empty());
    // The buyer's units came back too: the full limit is available again.
    assert!(reserve_one(&*f.store, &sale, &a, 3, T0)
        .await
        .is_live_at(T0));
}

/// The sweeper expires due holds once each, within its limit, returning stock and units (invariant
/// 4).
pub async fn expiry_returns_stock_and_ends_each_hold_once(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 4, 4).await;
    let (a, b) = (user(1), user(2));
    let h1 = reserve_one(&*f.store, &sale, &a, 1, T0).await;
    let h2 = reserve_one(&*f.store, &sale, &b, 2, T0.plus_secs(10)).await;
    let due1 = h1.expires_at;
    // Past expiry but not swept: not live, cannot be released.
    assert!(f.store.live_holds(&a, due1).await.unwrap().is_empty());
    assert_eq!(
        f.store.release_hold(&a, &h1.id, due1).await.unwrap(),
        Err(HoldError::Expired)
    );
    assert!(f
        .store
        .expire_due_holds(due1.plus_millis(-1), 100)
        .await
        .unwrap()
        .is_empty());
    let expired = f.store.expire_due_holds(due1, 100).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].id, h1.id);
    assert_eq!(expired[0].state, HoldState::Expired);
    assert_eq!(checked(&*f.store, &sale.id).await, levels(4, 2, 2, 0));
    assert!(f
        .store
        .expire_due_holds(due1, 100)
        .await
        .unwrap()
        .is_empty());
    // The limit caps a sweep.
    let late = h2.expires_at.plus_secs(1);
    let h3 = reserve_one(&*f.store, &sale, &a, 1, T0).await;
    assert_eq!(f.store.expire_due_holds(late, 1).await.unwrap().len(), 1);
    assert_eq!(f.store.expire_due_holds(late, 1).await.unwrap().len(), 1);
    assert!(f.store.expire_due_holds(late, 1).await.unwrap().is_empty());
    assert_eq!(
        f.store.release_hold(&a, &h3.id, late).await.unwrap(),
        Err(HoldError::NotFound)
    );
    let audit = f.store.stock_audit(&sale.id).await.unwrap().unwrap();
    assert!(audit.invariant_ok());
    assert_eq!(audit.counters, levels(4, 4, 0, 0));
    assert_eq!(audit.holds_expired, 3);
    // Everyone's units are back: the gate is rebuilt with nothing held.
    let seeds = f.store.gate_seeds().await.unwrap();
    assert_eq!(seeds.len(), 1);
    assert_eq!(seeds[0].available, 4);
    assert!(seeds[0].user_units.is_empty());
}

/// Growing a hold is judged like a reservation; shrinking returns units; expired or in-order holds
/// cannot change.
pub async fn resize_judges_growth_and_returns_shrinkage(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 4, 3).await;
    let (a, b) = (user(1), user(2));
    let h = reserve_one(&*f.store, &sale, &a, 1, T0).await;
    let grown = f
        .store
        .resize_hold(&a, &h.id, 3, T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(grown.quantity, 3);
    assert_eq!(grown.expires_at, h.expires_at);
    assert_eq!(checked(&*f.store, &sale.id).await, levels(4, 1, 3, 0));
    assert_eq!(
        f.store.resize_hold(&a, &h.id, 4, T0).await.unwrap(),
        Err(HoldError::Refused(Refusal::LimitExceeded))
    );
    let hb = reserve_one(&*f.store, &sale, &b, 1, T0).await;
    assert_eq!(
        f.store.resize_hold(&b, &hb.id, 2, T0).await.unwrap(),
        Err(HoldError::Refused(Refusal::SoldOut))
    );
    assert_eq!(
        f.store.resize_hold(&b, &h.id, 1, T0).await.unwrap(),
        Err(HoldError::NotFound)
    );
    let shrunk = f
        .store
        .resize_hold(&a, &h.id, 1, T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(shrunk.quantity, 1);
    assert_eq!(checked(&*f.store, &sale.id).await, levels(4, 2, 2, 0));
    assert!(f.store.resize_hold(&a, &h.id, 0, T0).await.is_err());
    assert_eq!(
        f.store
            .resize_hold(&a, &h.id, 2, h.expires_at)
            .await
            .unwrap(),
        Err(HoldError::Expired)
    );
    // A hold being paid for cannot change.
    checkout(&*f.store, &a, &[&h], T0).await.unwrap();
    assert_eq!(
        f.store.resize_hold(&a, &h.id, 2, T0).await.unwrap(),
        Err(HoldError::InPendingOrder)
    );
    assert_eq!(
        f.store.release_hold(&a, &h.id, T0).await.unwrap(),
        Err(HoldError::InPendingOrder)
    );
    assert_eq!(checked(&*f.store, &sale.id).await, levels(4, 2, 2, 0));
}

/// Concurrent batches on one sale never sell more than the stock.
pub async fn concurrent_batches_never_oversell(store: Arc<dyn Store>) {
    let f = Fx { store };
    let store = Arc::clone(&f.store);
    let sale = new_sale(&*store, 25, 1).await;
    let mut tasks = Vec::new();
    for t in 0..8_u32 {
        let store = Arc::clone(&store);
        let sale = sale.clone();
        tasks.push(tokio::spawn(async move {
            let batch: Vec<_> = (0..10)
                .map(|i| req(&sale, &user(t * 10 + i), 1, T0))
                .collect();
            store.reserve(&batch).await.unwrap()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap().iter().filter(|r| r.is_ok()).count();
    }
    assert_eq!(ok, 25);
    assert_eq!(checked(&*store, &sale.id).await, levels(25, 0, 25, 0));
}

// --- the hold cap (denial of inventory) ----------------------------------------------------

/// The cap counts unpaid holds open at once per account and per device across every sale,
/// inside a batch too; a released or lapsed hold frees its place; a retry of a hold made
/// before the cap was reached still gets its hold.
pub async fn the_hold_cap_counts_open_holds_per_account_and_device_across_sales(
    store: Arc<dyn Store>,
) {
    let f = Fx { store };
    let mut sales = Vec::new();
    for _ in 0..4 {
        sales.push(new_sale(&*f.store, 10, 5).await);
    }
    let a = user(1);
    let one = |sale: &Sale, who: &UserId, device: Option<&str>, now: Timestamp| {
        capped(req(sale, who, 1, now), 2, 3, device)
    };
    let first = f
        .store
        .reserve(&[one(&sales[0], &a, None, T0)])
        .await
        .unwrap();
    let first_hold = first[0].clone().unwrap();
    let out = f
        .store
        .reserve(&[one(&sales[1], &a, None, T0), one(&sales[2], &a, None, T0)])
        .await
        .unwrap();
    assert!(out[0].is_ok(), "{out:?}");
    assert_eq!(out[1], Err(Refusal::HoldCapReached), "the third open hold");
    // Nothing was taken by the refusal.
    assert_eq!(checked(&*f.store, &sales[2].id).await, levels(10, 10, 0, 0));
    // A retry of the first request (a lost reply) still gets its hold, cap or not.
    let retry = ReserveRequest {
        hold_id: first_hold.id.clone(),
        ..one(&sales[0], &a, None, T0)
    };
    assert_eq!(
        f.store.reserve(&[retry]).await.unwrap(),
        vec![Ok(first_hold.clone())]
    );
    // Releasing one frees its place.
    f.store
        .release_hold(&a, &first_hold.id, T0)
        .await
        .unwrap()
        .unwrap();
    let out = f
        .store
        .reserve(&[one(&sales[2], &a, None, T0)])
        .await
        .unwrap();
    assert!(out[0].is_ok(), "{out:?}");
    // Holds whose time ran out are not open, swept or not.
    let later = T0.plus_secs(i64::from(HOLD_SECS) + 1);
    let out = f
        .store
        .reserve(&[one(&sales[3], &a, None, later)])
        .await
        .unwrap();
    assert!(out[0].is_ok(), "{out:?}");

    // Per device, across accounts: three open from "dev-x", the fourth account is refused
    // there but not from another device.
    let dev = Some("dev-x");
    for n in 2..5 {
        let out = f
            .store
            .reserve(&[one(&sales[0], &user(n), dev, T0)])
            .await
            .unwrap();
        assert!(out[0].is_ok(), "buyer {n}: {out:?}");
    }
    let out = f
        .store
        .reserve(&[one(&sales[1], &user(5), dev, T0)])
        .await
        .unwrap();
    assert_eq!(out[0], Err(Refusal::HoldCapReached));
    let out = f
        .store
        .reserve(&[one(&sales[1], &user(5), Some("dev-y"), T0)])
        .await
        .unwrap();
    assert!(out[0].is_ok(), "{out:?}");
    // A cap of 0 is no cap.
    let free: Vec<_> = (0..4)
        .map(|i| capped(req(&sales[i], &user(6), 1, T0), 0, 0, dev))
        .collect();
    let out = f.store.reserve(&free).await.unwrap();
    assert!(out.iter().all(Result::is_ok), "{out:?}");
}

/// Reserves for one buyer (or one device) in different sales, judged at once by concurrent
/// batches, never open more holds than the cap: the sale locks do not cover this, so the
/// adapter must serialise batches per buyer and device.
pub async fn concurrent_batches_respect_the_hold_cap(store: Arc<dyn Store>) {
    let mut sales = Vec::new();
    for _ in 0..8 {
        sales.push(new_sale(&*store, 100, 5).await);
    }
    for round in 0..4_u32 {
        // By account: one buyer, eight sales, eight batches at once, cap 3.
        let buyer = user(100 + round);
        let mut tasks = Vec::new();
        for (i, sale) in sales.iter().enumerate() {
            let store = Arc::clone(&store);
            let mut batch = vec![capped(req(sale, &buyer, 1, T0), 3, 0, None)];
            // Other buyers in the same batch, so batches take a while and overlap.
            for k in 0..5_u32 {
                batch.push(req(
                    sale,
                    &user(1_000 + round * 100 + i as u32 * 10 + k),
                    1,
                    T0,
                ));
            }
            tasks.push(tokio::spawn(
                async move { store.reserve(&batch).await.unwrap() },
            ));
        }
        let mut ok = 0;
        for t in tasks {
            let out = t.await.unwrap();
            match &out[0] {
                Ok(_) => ok += 1,
                Err(r) => assert_eq!(*r, Refusal::HoldCapReached),
            }
        }
        assert_eq!(ok, 3, "round {round}: open holds of one account");
        // By device: eight accounts on one device, cap 2.
        let device = format!("shared-{round}");
        let mut tasks = Vec::new();
        for (i, sale) in sales.iter().enumerate() {
            let store = Arc::clone(&store);
            let r = capped(
                req(sale, &user(5_000 + round * 10 + i as u32), 1, T0),
                0,
                2,
                Some(&device),
            );
            tasks.push(tokio::spawn(
                async move { store.reserve(&[r]).await.unwrap() },
            ));
        }
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap()[0].is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 2, "round {round}: open holds of one device");
    }
}

/// Accounts and devices whose holds lapsed unpaid at least the given number of times are
/// listed, most first; paid, released and live holds do not count.
pub async fn lapsed_holds_list_accounts_and_devices(store: Arc<dyn Store>) {
    let f = Fx { store };
    let mut sales = Vec::new();
    for _ in 0..3 {
        sales.push(new_sale(&*f.store, 10, 5).await);
    }
    let (hoarder, once, payer) = (user(1), user(2), user(3));
    for sale in &sales {
        let r = capped(req(sale, &hoarder, 1, T0), 0, 0, Some("bot-1"));
        assert!(f.store.reserve(&[r]).await.unwrap()[0].is_ok());
    }
    reserve_one(&*f.store, &sales[0], &once, 1, T0).await;
    let released = reserve_one(&*f.store, &sales[1], &payer, 1, T0).await;
    f.store
        .release_hold(&payer, &released.id, T0)
        .await
        .unwrap()
        .unwrap();
    // Not lapsed yet: nobody is listed.
    let (accounts, devices) = f.store.lapsed_holders(2, 10).await.unwrap();
    assert!(accounts.is_empty() && devices.is_empty());
    let due = T0.plus_secs(i64::from(HOLD_SECS));
    assert_eq!(f.store.expire_due_holds(due, 100).await.unwrap().len(), 4);
    let (accounts, devices) = f.store.lapsed_holders(2, 10).await.unwrap();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(accounts[0].subject, hoarder.as_str());
    assert_eq!(accounts[0].lapsed, 3);
    assert_eq!(accounts[0].last_lapsed_at, due);
    assert_eq!(accounts[0].accounts, vec![hoarder.clone()]);
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0].subject, "bot-1");
    assert_eq!(devices[0].lapsed, 3);
    assert_eq!(devices[0].accounts, vec![hoarder.clone()]);
    // A threshold of 1 lists the one-off lapse too, after the hoarder.
    let (accounts, _) = f.store.lapsed_holders(1, 10).await.unwrap();
    let subjects: Vec<&str> = accounts.iter().map(|a| a.subject.as_str()).collect();
    assert_eq!(subjects, vec![hoarder.as_str(), once.as_str()]);
}

// --- orders and payments -----------------------------------------------------------------

/// Checkout, authorization and refund move held → sold → available; replays change nothing; orders
/// are private to their buyer.
pub async fn paid_order_sells_and_cancel_refunds(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 5, 3).await;
    let (a, b) = (user(1), user(2));
    let h1 = reserve_one(&*f.store, &sale, &a, 2, T0).await;
    let h2 = reserve_one(&*f.store, &sale, &a, 1, T0).await;
    let order = checkout(&*f.store, &a, &[&h1, &h2], T0).await.unwrap();
    assert_eq!(order.status, OrderStatus::PendingPayment);
    assert_eq!(order.total, Money(7_500));
    assert_eq!(order.items.len(), 2);
    assert_eq!(order.items[0].hold_id, h1.id);
    let payment = order.payment.clone().unwrap();
    assert_eq!(payment.status, PaymentStatus::Pending);
    assert_eq!(payment.amount, Money(7_500));

    let later = T0.plus_secs(1);
    let done = pay(&*f.store, &order, authorized("ref-1", false), later).await;
    let PaymentApplied::Done(paid) = done else {
        panic!("{done:?}")
    };
    assert_eq!(paid.status, OrderStatus::Confirmed);
    let p = paid.payment.clone().unwrap();
    assert_eq!(p.status, PaymentStatus::Captured);
    assert_eq!(p.reference.as_deref(), Some("ref-1"));
    assert_eq!(checked(&*f.store, &sale.id).await, levels(5, 2, 0, 3));
    assert!(f.store.live_holds(&a, later).await.unwrap().is_empty());
    // A replayed webhook changes nothing.
    let again = pay(&*f.store, &order, authorized("ref-1", false), later).await;
    assert_eq!(again, PaymentApplied::AlreadySettled(paid.clone()));

    assert_eq!(
        f.store.order_by_payment_reference("ref-1").await.unwrap(),
        Some(paid.clone())
    );
    assert_eq!(
        f.store.order(&a, &order.id).await.unwrap(),
        Some(paid.clone())
    );
    assert_eq!(f.store.order(&b, &order.id).await.unwrap(), None);
    assert_eq!(
        f.store.cancel_order(&b, &order.id, later).await.unwrap(),
        None
    );

    let cancelled = f.store.cancel_order(&a, &order.id, later).await.unwrap();
    let Some(Ok(Cancelled::Refunded {
        order: refunded,
        reference,
        owed,
    })) = cancelled
    else {
        panic!("{cancelled:?}")
    };
    assert_eq!(reference, "ref-1");
    // The capture was never recorded as done, so the refund must capture first.
    assert_eq!(owed, GatewayOwed::CaptureThenRefund);
    assert_eq!(refunded.status, OrderStatus::Refunded);
    assert_eq!(refunded.payment.unwrap().status, PaymentStatus::Refunded);
    assert_eq!(checked(&*f.store, &sale.id).await, levels(5, 5, 0, 0));
    assert_eq!(
        f.store.cancel_order(&a, &order.id, later).await.unwrap(),
        Some(Err(OrderStatus::Refunded))
    );
    // The refunded units count against nobody: the buyer may reserve the full limit again.
    assert!(reserve_one(&*f.store, &sale, &a, 3, later)
        .await
        .is_live_at(later));
    assert_eq!(
        f.store
            .apply_payment(&OrderId::generate(0, seq()), &authorized("x", false), later)
            .await
            .unwrap(),
        None
    );
}

fn owed_of<'a>(owed: &'a [OwedPayment], order: &Order) -> Option<&'a OwedPayment> {
    owed.iter().find(|p| p.order_id == order.id)
}

/// Every money move the judge decides is recorded as owed to the gateway in the same
/// transaction (capture on confirm, void on a lapsed authorization or a cancelled pending
/// order, refund on cancel), listed until recorded done, and recorded done only once: a move
/// finished twice, or a stale finisher, changes nothing.
pub async fn money_moves_are_owed_until_recorded_done(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 10, 10).await;
    let a = user(1);
    let later = T0.plus_secs(1);

    // Confirmed: a capture is owed.
    let h = reserve_one(&*f.store, &sale, &a, 1, T0).await;
    let paid = checkout(&*f.store, &a, &[&h], T0).await.unwrap();
    pay(&*f.store, &paid, authorized("own-1", false), T0).await;
    let owed = f.store.payments_owed(100).await.unwrap();
    let capture = owed_of(&owed, &paid).expect("a capture is owed").clone();
    assert_eq!(capture.owed, GatewayOwed::Capture);
    assert_eq!(capture.reference, "own-1");
    assert_eq!(&capture.payment_id, &paid.payment.as_ref().unwrap().id);
    // A stale finisher (the wrong move) changes nothing.
    assert!(!f
        .store
        .payment_owed_done(&capture.payment_id, GatewayOwed::Void, None, later)
        .await
        .unwrap());
    assert!(f
        .store
        .payment_owed_done(&capture.payment_id, GatewayOwed::Capture, None, later)
        .await
        .unwrap());
    assert!(!f
        .store
        .payment_owed_done(&capture.payment_id, GatewayOwed::Capture, None, later)
        .await
        .unwrap());
    assert!(owed_of(&f.store.payments_owed(100).await.unwrap(), &paid).is_none());
    // Refunding an order whose capture is done owes a plain refund.
    let Some(Ok(Cancelled::Refunded { owed, .. })) =
        f.store.cancel_order(&a, &paid.id, later).await.unwrap()
    else {
        panic!("a paid order is refunded")
    };
    assert_eq!(owed, GatewayOwed::Refund);
    let listed = f.store.payments_owed(100).await.unwrap();
    assert_eq!(
        owed_of(&listed, &paid).map(|p| p.owed),
        Some(GatewayOwed::Refund)
    );
    assert!(f
        .store
        .payment_owed_done(&capture.payment_id, GatewayOwed::Refund, None, later)
        .await
        .unwrap());

    // A capture then refund moves to a plain refund once the capture is recorded.
    let h = reserve_one(&*f.store, &sale, &a, 1, T0).await;
    let order = checkout(&*f.store, &a, &[&h], T0).await.unwrap();
    pay(&*f.store, &order, authorized("own-2", false), T0).await;
    let Some(Ok(Cancelled::Refunded { owed, .. })) =
        f.store.cancel_order(&a, &order.id, later).await.unwrap()
    else {
        panic!("a paid order is refunded")
    };
    assert_eq!(owed, GatewayOwed::CaptureThenRefund);
    let pid = order.payment.as_ref().unwrap().id.clone();
    assert!(f
        .store
        .payment_owed_done(
            &pid,
            GatewayOwed::CaptureThenRefund,
            Some(GatewayOwed::Refund),
            later
        )
        .await
        .unwrap());
    let listed = f.store.payments_owed(100).await.unwrap();
    assert_eq!(
        owed_of(&listed, &order).map(|p| p.owed),
        Some(GatewayOwed::Refund)
    );

    // An authorization that arrives after its hold lapsed: a void is owed.
    let h = reserve_one(&*f.store, &sale, &a, 1, T0).await;
    let order = checkout(&*f.store, &a, &[&h], T0).await.unwrap();
    let lapsed = T0.plus_secs(i64::from(HOLD_SECS) + 1);
    assert!(matches!(
        pay(&*f.store, &order, authorized("own-3", false), lapsed).await,
        PaymentApplied::HoldLapsed(_)
    ));
    let listed = f.store.payments_owed(100).await.unwrap();
    assert_eq!(
        owed_of(&listed, &order).map(|p| (p.owed, p.reference.as_str())),
        Some((GatewayOwed::Void, "own-3"))
    );

    // A pending (asynchronous) payment cancelled: its authorization is voided.
    let h = reserve_one(&*f.store, &sale, &a, 1, T0).await;
    let order = checkout(&*f.store, &a, &[&h], T0).await.unwrap();
    pay(
        &*f.store,
        &order,
        PaymentResult::Pending {
            reference: "own-4".into(),
        },
        T0,
    )
    .await;
    assert!(owed_of(&f.store.payments_owed(100).await.unwrap(), &order).is_none());
    f.store
        .cancel_order(&a, &order.id, later)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let listed = f.store.payments_owed(100).await.unwrap();
    assert_eq!(
        owed_of(&listed, &order).map(|p| p.owed),
        Some(GatewayOwed::Void)
    );

    // A declined payment owes nothing.
    let h = reserve_one(&*f.store, &sale, &a, 1, T0).await;
    let order = checkout(&*f.store, &a, &[&h], T0).await.unwrap();
    pay(
        &*f.store,
        &order,
        PaymentResult::Declined {
            reference: Some("own-5".into()),
            reason: "card_declined".into(),
        },
        T0,
    )
    .await;
    assert!(owed_of(&f.store.payments_owed(100).await.unwrap(), &order).is_none());
    assert_eq!(checked(&*f.store, &sale.id).await.sold, 0);
}

/// Pending orders nobody will settle are found (no recorded answer after the answer timeout,
/// anything pending after the deadline), and abandoning one fails it, lets its holds go and
/// owes a void only if there is an authorization to release.
pub async fn stuck_pending_orders_are_found_and_abandoned(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 10, 10).await;
    let a = user(1);
    let h1 = reserve_one(&*f.store, &sale, &a, 1, T0).await;
    let unanswered = checkout(&*f.store, &a, &[&h1], T0).await.unwrap();
    let h2 = reserve_one(&*f.store, &sale, &a, 1, T0).await;
    let waiting = checkout(&*f.store, &a, &[&h2], T0).await.unwrap();
    pay(
        &*f.store,
        &waiting,
        PaymentResult::Pending {
            reference: "stuck-async".into(),
        },
        T0,
    )
    .await;
    let ids = |orders: Vec<Order>| orders.into_iter().map(|o| o.id).collect::<Vec<_>>();
    let before = T0.plus_secs(-1);
    assert!(f
        .store
        .stuck_orders(before, before, 100)
        .await
        .unwrap()
        .is_empty());
    // Past the answer timeout only the order with no recorded answer is stuck.
    assert_eq!(
        ids(f.store.stuck_orders(T0, before, 100).await.unwrap()),
        vec![unanswered.id.clone()]
    );
    // Past the deadline both are.
    let both = ids(f.store.stuck_orders(T0, T0, 100).await.unwrap());
    assert_eq!(both.len(), 2);
    assert!(both.contains(&unanswered.id) && both.contains(&waiting.id));

    // The gateway had authorized the unanswered one: abandoning owes its void.
    let later = T0.plus_secs(1);
    let PaymentApplied::Done(failed) = pay(
        &*f.store,
        &unanswered,
        PaymentResult::Abandoned {
            reference: Some("stuck-found".into()),
            reason: "authorization_lost".into(),
        },
        later,
    )
    .await
    else {
        panic!("a stuck order is abandoned")
    };
    assert_eq!(failed.status, OrderStatus::PaymentFailed);
    let payment = failed.payment.clone().unwrap();
    assert_eq!(payment.status, PaymentStatus::Voided);
    assert_eq!(payment.reference.as_deref(), Some("stuck-found"));
    assert_eq!(
        payment.failure_reason.as_deref(),
        Some("authorization_lost")
    );
    let listed = f.store.payments_owed(100).await.unwrap();
    assert_eq!(
        owed_of(&listed, &failed).map(|p| (p.owed, p.reference.as_str())),
        Some((GatewayOwed::Void, "stuck-found"))
    );
    // Its hold let go of it: another order may use it.
    let again = checkout(&*f.store, &a, &[&h1], later).await.unwrap();
    assert_eq!(again.status, OrderStatus::PendingPayment);
    // A second abandon changes nothing.
    assert!(matches!(
        pay(
            &*f.store,
            &unanswered,
            PaymentResult::Abandoned {
                reference: None,
                reason: "authorization_lost".into(),
            },
            later,
        )
        .await,
        PaymentApplied::AlreadySettled(_)
    ));
    assert_eq!(
        ids(f.store.stuck_orders(T0, T0, 100).await.unwrap()),
        vec![waiting.id.clone()]
    );

    // No authorization found: failed with nothing owed.
    let h3 = reserve_one(&*f.store, &sale, &a, 1, T0).await;
    let lost = checkout(&*f.store, &a, &[&h3], T0).await.unwrap();
    pay(
        &*f.store,
        &lost,
        PaymentResult::Abandoned {
            reference: None,
            reason: "authorization_lost".into(),
        },
        later,
    )
    .await;
    assert!(owed_of(&f.store.payments_owed(100).await.unwrap(), &lost).is_none());
    assert_eq!(checked(&*f.store, &sale.id).await, levels(10, 7, 3, 0));
}

/// A buyer's orders list newest first, each with its items and payment.
pub async fn orders_are_listed_newest_first_with_items_and_payment(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 10, 10).await;
    let a = user(1);
    let h1 = reserve_one(&*f.store, &sale, &a, 1, T0).await;
    let h2 = reserve_one(&*f.store, &sale, &a, 1, T0).await;
    let o1 = checkout(&*f.store, &a, &[&h1], T0).await.unwrap();
    let o2 = checkout(&*f.store, &a, &[&h2], T0.plus_secs(1))
        .await
        .unwrap();
    let list = f.store.orders(&a).await.unwrap();
    assert_eq!(list, vec![o2, o1]);
    assert!(list
        .iter()
        .all(|o| o.payment.is_some() && o.items.len() == 1));
    assert!(f.store.orders(&user(2)).await.unwrap().is_empty());
}

/// Checkout refuses others' holds, expired holds, holds in a pending order and mixed currencies;
/// cancelling frees the holds.
pub async fn checkout_refuses_foreign_expired_busy_and_mixed_holds(store: Arc<dyn Store>) {
    let f = Fx { store };
    let eur = new_sale(&*f.store, 10, 10).await;
    let usd = sale_with(10, 10, "USD");
    f.store.insert_sale(&usd).await.unwrap();
    let (a, b) = (user(1), user(2));
    let ha = reserve_one(&*f.store, &eur, &a, 1, T0).await;
    let hb = reserve_one(&*f.store, &eur, &b, 1, T0).await;
    let hu = reserve_one(&*f.store, &usd, &a, 1, T0).await;
    assert_eq!(
        checkout(&*f.store, &a, &[&hb], T0).await,
        Err(CheckoutError::HoldNotFound)
    );
    assert_eq!(
        checkout(&*f.store, &a, &[&ha], ha.expires_at).await,
        Err(CheckoutError::HoldExpired)
    );
    assert_eq!(
        checkout(&*f.store, &a, &[&ha, &hu], T0).await,
        Err(CheckoutError::MixedCurrencies)
    );
    let pending = checkout(&*f.store, &a, &[&ha], T0).await.unwrap();
    assert_eq!(
        checkout(&*f.store, &a, &[&ha], T0).await,
        Err(CheckoutError::HoldInPendingOrder)
    );
    // Cancelling the pending order lets the hold go; it is still live and usable.
    let c = f.store.cancel_order(&a, &pending.id, T0).await.unwrap();
    let Some(Ok(Cancelled::Cancelled(cancelled))) = c else {
        panic!("{c:?}")
    };
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert_eq!(cancelled.payment.unwrap().status, PaymentStatus::Voided);
    assert!(checkout(&*f.store, &a, &[&ha], T0).await.is_ok());
    assert_eq!(
        f.store.cancel_order(&a, &pending.id, T0).await.unwrap(),
        Some(Err(OrderStatus::Cancelled))
    );
    assert_eq!(checked(&*f.store, &eur.id).await, levels(10, 8, 2, 0));
}

/// A pending then declined payment keeps the holds for another order, which can then be paid.
pub async fn declined_payment_leaves_holds_for_another_try(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 5, 5).await;
    let a = user(1);
    let h = reserve_one(&*f.store, &sale, &a, 2, T0).await;
    let o1 = checkout(&*f.store, &a, &[&h], T0).await.unwrap();
    let pending = pay(
        &*f.store,
        &o1,
        PaymentResult::Pending {
            reference: "ref-async".into(),
        },
        T0,
    )
    .await;
    let PaymentApplied::Done(pending) = pending else {
        panic!("{pending:?}")
    };
    assert_eq!(pending.status, OrderStatus::PendingPayment);
    assert_eq!(
        pending.payment.as_ref().unwrap().reference.as_deref(),
        Some("ref-async")
    );
    assert_eq!(
        f.store
            .order_by_payment_reference("ref-async")
            .await
            .unwrap()
            .map(|o| o.id),
        Some(o1.id.clone())
    );
    let declined = pay(
        &*f.store,
        &o1,
        PaymentResult::Declined {
            reference: None,
            reason: "insufficient_funds".into(),
        },
        T0,
    )
    .await;
    let PaymentApplied::Done(failed) = declined else {
        panic!("{declined:?}")
    };
    assert_eq!(failed.status, OrderStatus::PaymentFailed);
    let p = failed.payment.unwrap();
    assert_eq!(p.status, PaymentStatus::Declined);
    assert_eq!(p.failure_reason.as_deref(), Some("insufficient_funds"));
    assert_eq!(p.reference.as_deref(), Some("ref-async"));
    assert_eq!(checked(&*f.store, &sale.id).await, levels(5, 3, 2, 0));
    assert_eq!(f.store.live_holds(&a, T0).await.unwrap(), vec![h.clone()]);

    let o2 = checkout(&*f.store, &a, &[&h], T0).await.unwrap();
    let done = pay(&*f.store, &o2, authorized("ref-2", false), T0).await;
    assert!(matches!(done, PaymentApplied::Done(ref o) if o.status == OrderStatus::Confirmed));
    assert_eq!(checked(&*f.store, &sale.id).await, levels(5, 3, 0, 2));
    assert_eq!(
        f.store.cancel_order(&a, &o1.id, T0).await.unwrap(),
        Some(Err(OrderStatus::PaymentFailed))
    );
}

/// An authorization after the hold expired, without retake, fails the order and moves no stock.
pub async fn late_authorization_without_retake_lapses_and_moves_no_stock(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 3, 3).await;
    let a = user(1);
    let h = reserve_one(&*f.store, &sale, &a, 2, T0).await;
    let order = checkout(&*f.store, &a, &[&h], T0).await.unwrap();
    let late = h.expires_at.plus_secs(1);
    assert_eq!(f.store.expire_due_holds(late, 10).await.unwrap().len(), 1);
    let before = checked(&*f.store, &sale.id).await;
    assert_eq!(before, levels(3, 3, 0, 0));
    let out = pay(&*f.store, &order, authorized("ref-late", false), late).await;
    let PaymentApplied::HoldLapsed(failed) = out else {
        panic!("{out:?}")
    };
    assert_eq!(failed.status, OrderStatus::PaymentFailed);
    let p = failed.payment.unwrap();
    assert_eq!(p.status, PaymentStatus::Voided);
    assert_eq!(p.failure_reason.as_deref(), Some("hold_expired"));
    assert_eq!(p.reference.as_deref(), Some("ref-late"));
    assert_eq!(checked(&*f.store, &sale.id).await, before);
}

/// With retake, a late authorization takes the stock again and counts against the buyer's limit.
pub async fn late_authorization_with_retake_takes_the_stock_again(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 3, 2).await;
    let a = user(1);
    let h = reserve_one(&*f.store, &sale, &a, 2, T0).await;
    let order = checkout(&*f.store, &a, &[&h], T0).await.unwrap();
    let late = h.expires_at.plus_secs(1);
    assert_eq!(f.store.expire_due_holds(late, 10).await.unwrap().len(), 1);
    let out = pay(&*f.store, &order, authorized("ref-late", true), late).await;
    // The store says which sales' stock it took again: only theirs need the gate's repair.
    let PaymentApplied::Retook { order: paid, sales } = out else {
        panic!("{out:?}")
    };
    assert_eq!(sales, vec![sale.id.clone()]);
    assert_eq!(paid.status, OrderStatus::Confirmed);
    assert_eq!(checked(&*f.store, &sale.id).await, levels(3, 1, 0, 2));
    // The retaken units count against the buyer's limit.
    let more = f.store.reserve(&[req(&sale, &a, 1, late)]).await.unwrap();
    assert_eq!(more, vec![Err(Refusal::LimitExceeded)]);
}

/// An authorization that may retake stock but finds every hold live takes nothing again: a plain
/// confirmation, so nothing of the gate needs repair.
pub async fn a_retake_with_live_holds_is_a_plain_confirmation(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 3, 2).await;
    let a = user(1);
    let h = reserve_one(&*f.store, &sale, &a, 2, T0).await;
    let order = checkout(&*f.store, &a, &[&h], T0).await.unwrap();
    let out = pay(&*f.store, &order, authorized("ref", true), T0.plus_secs(1)).await;
    assert!(
        matches!(out, PaymentApplied::Done(ref o) if o.status == OrderStatus::Confirmed),
        "{out:?}"
    );
    assert_eq!(checked(&*f.store, &sale.id).await, levels(3, 1, 0, 2));
}

/// A retake of a due but unswept hold expires it first, so the outcome does not depend on the
/// sweeper.
pub async fn retake_of_an_unswept_hold_expires_it_first(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 3, 3).await;
    let a = user(1);
    let h = reserve_one(&*f.store, &sale, &a, 2, T0).await;
    let order = checkout(&*f.store, &a, &[&h], T0).await.unwrap();
    let late = h.expires_at;
    let out = pay(&*f.store, &order, authorized("ref", true), late).await;
    assert!(
        matches!(out, PaymentApplied::Retook { ref order, ref sales }
            if order.status == OrderStatus::Confirmed && *sales == vec![sale.id.clone()]),
        "{out:?}"
    );
    let audit = f.store.stock_audit(&sale.id).await.unwrap().unwrap();
    assert!(audit.invariant_ok(), "{audit:?}");
    assert_eq!(audit.counters, levels(3, 1, 0, 2));
    assert_eq!(audit.holds_expired, 1);
    assert_eq!(audit.orders, 1);
    // The sweeper has nothing left to do for it.
    assert!(f.store.expire_due_holds(late, 10).await.unwrap().is_empty());
}

/// An authorization over several holds is all or nothing: one lost hold fails it and no stock
/// moves.
pub async fn authorization_is_all_or_nothing_across_holds(store: Arc<dyn Store>) {
    let f = Fx { store };
    let first = new_sale(&*f.store, 5, 5).await;
    let mut short = sale_with(1, 5, "EUR");
    short.hold_seconds = 1;
    f.store.insert_sale(&short).await.unwrap();
    let (a, b) = (user(1), user(2));
    let long_hold = reserve_one(&*f.store, &first, &a, 2, T0).await;
    let short_hold = reserve_one(&*f.store, &short, &a, 1, T0).await;
    let order = checkout(&*f.store, &a, &[&long_hold, &short_hold], T0)
        .await
        .unwrap();
    let late = short_hold.expires_at;
    assert_eq!(f.store.expire_due_holds(late, 10).await.unwrap().len(), 1);
    // Somebody else takes the last unit of the short sale.
    reserve_one(&*f.store, &short, &b, 1, late).await;
    let before = (
        checked(&*f.store, &first.id).await,
        checked(&*f.store, &short.id).await,
    );
    let out = pay(&*f.store, &order, authorized("ref", true), late).await;
    assert!(matches!(out, PaymentApplied::HoldLapsed(_)), "{out:?}");
    let after = (
        checked(&*f.store, &first.id).await,
        checked(&*f.store, &short.id).await,
    );
    assert_eq!(before, after);
    assert_eq!(after.0, levels(5, 3, 2, 0));
    // The live hold was let go of the failed order and can be bought on its own.
    let again = checkout(&*f.store, &a, &[&long_hold], late).await.unwrap();
    let out = pay(&*f.store, &again, authorized("ref-2", false), late).await;
    assert!(matches!(out, PaymentApplied::Done(_)));
    assert_eq!(checked(&*f.store, &first.id).await, levels(5, 3, 0, 2));
}

// --- users, sessions, sales --------------------------------------------------------------

/// Banning ends every session of the account at once and keeps the reason; search finds
/// accounts by email or name, case-insensitively, in id order with a cursor; lifting the ban
/// lets new sessions work again.
pub async fn account_status_ends_sessions_and_accounts_are_searchable(store: Arc<dyn Store>) {
    use stampede_app::ports::UserStatus;
    let f = Fx { store };
    let bea = a_user(11, "bea@example.com", Role::Buyer);
    let bob = User {
        name: "Bob 100%_sure".into(),
        ..a_user(12, "bob@example.com", Role::Buyer)
    };
    f.store.insert_user(&bea, "h").await.unwrap();
    f.store.insert_user(&bob, "h").await.unwrap();
    for (t, who) in [("s1", &bea), ("s2", &bea), ("s3", &bob)] {
        let session = Session {
            session_id: t.into(),
            user_id: who.id.clone(),
            role: Role::Buyer,
            expires_at: T0.plus_secs(3_600),
        };
        f.store.insert_session(&session, T0).await.unwrap();
    }
    let mut ended = f
        .store
        .set_user_status(&bea.id, UserStatus::Banned, "scalping")
        .await
        .unwrap()
        .unwrap();
    ended.sort();
    let expiry = T0.plus_secs(3_600);
    assert_eq!(
        ended,
        vec![("s1".to_string(), expiry), ("s2".to_string(), expiry)]
    );
    // Every node refuses them until they would have expired anyway, restarts included.
    let mut revoked = f.store.revoked_sessions(T0).await.unwrap();
    revoked.sort();
    assert_eq!(revoked, ended);
    assert!(f.store.revoked_sessions(expiry).await.unwrap().is_empty());
    assert_eq!(f.store.session("s1").await.unwrap(), None);
    assert!(
        f.store.session("s3").await.unwrap().is_some(),
        "others keep theirs"
    );
    let account = f.store.account(&bea.id).await.unwrap().unwrap();
    assert_eq!(
        (account.status, account.status_reason.as_str()),
        (UserStatus::Banned, "scalping")
    );
    // A session written after the ban (a login racing it) is not honoured either.
    let late = Session {
        session_id: "s4".into(),
        user_id: bea.id.clone(),
        role: Role::Buyer,
        expires_at: T0.plus_secs(3_600),
    };
    assert!(!f.store.insert_session(&late, T0).await.unwrap());
    assert_eq!(f.store.session("s4").await.unwrap(), None);
    assert_eq!(
        f.store
            .set_user_status(&user(99), UserStatus::Banned, "x")
            .await
            .unwrap(),
        None
    );
    // Lifted: the next session works.
    let lifted = f
        .store
        .set_user_status(&bea.id, UserStatus::Active, "appeal upheld")
        .await
        .unwrap()
        .unwrap();
    assert!(lifted.is_empty());
    assert!(f.store.insert_session(&late, T0).await.unwrap());
    assert!(f.store.session("s4").await.unwrap().is_some());

    let found = |q: &'static str| {
        let store = f.store.clone();
        async move {
            store
                .accounts(q, None, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|a| a.user.email)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(found("BEA@").await, vec!["bea@example.com"]);
    assert_eq!(
        found("100%_").await,
        vec!["bob@example.com"],
        "wildcards are literal"
    );
    assert_eq!(found("%").await, vec!["bob@example.com"]);
    assert_eq!(found("example.com").await.len(), 2);
    let first = f.store.accounts("", None, 1).await.unwrap();
    let next = f
        .store
        .accounts("", Some(&first[0].user.id), 10)
        .await
        .unwrap();
    assert!(next.iter().all(|a| a.user.id > first[0].user.id));
    assert_eq!(next.len() + 1, 2);
}

fn a_user(n: u32, email: &str, role: Role) -> User {
    User {
        id: user(n),
        email: email.into(),
        name: format!("user {n}"),
        role,
        created_at: T0,
    }
}

/// Users have unique emails; sessions follow role changes; admins are created or promoted in place.
pub async fn users_sessions_and_admins(store: Arc<dyn Store>) {
    let f = Fx { store };
    let alice = a_user(1, "alice@example.com", Role::Buyer);
    assert!(f.store.insert_user(&alice, "hash-a").await.unwrap());
    let dup = a_user(2, "alice@example.com", Role::Buyer);
    assert!(!f.store.insert_user(&dup, "hash-x").await.unwrap());
    assert_eq!(f.store.user(&alice.id).await.unwrap(), Some(alice.clone()));
    assert_eq!(f.store.user(&dup.id).await.unwrap(), None);
    let creds = f
        .store
        .credentials_by_email("alice@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.password_hash, "hash-a");
    assert_eq!(creds.user, alice);

    let session = Session {
        session_id: "t1".into(),
        user_id: alice.id.clone(),
        role: Role::Buyer,
        expires_at: T0.plus_secs(3_600),
    };
    assert!(f.store.insert_session(&session, T0).await.unwrap());
    assert_eq!(f.store.session("t1").await.unwrap(), Some(session.clone()));

    // Promoting an existing user keeps their id and changes role and password.
    let promoted = f
        .store
        .upsert_admin(&a_user(3, "alice@example.com", Role::Admin), "hash-admin")
        .await
        .unwrap();
    assert_eq!(promoted.id, alice.id);
    assert_eq!(promoted.role, Role::Admin);
    assert_eq!(
        f.store.session("t1").await.unwrap().unwrap().role,
        Role::Admin
    );
    let creds = f
        .store
        .credentials_by_email("alice@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.password_hash, "hash-admin");
    let root = f
        .store
        .upsert_admin(&a_user(4, "root@example.com", Role::Admin), "h")
        .await
        .unwrap();
    assert_eq!(root.id, user(4));

    assert!(f.store.revoked_sessions(T0).await.unwrap().is_empty());
    assert!(f.store.delete_session("t1").await.unwrap());
    assert!(!f.store.delete_session("t1").await.unwrap());
    assert_eq!(f.store.session("t1").await.unwrap(), None);
    assert_eq!(
        f.store.revoked_sessions(T0).await.unwrap(),
        vec![("t1".to_string(), T0.plus_secs(3_600))]
    );

    // The deployment's shared secret: the first writer's value, for everyone after.
    let first = f.store.shared_secret("session_key", "aaaa").await.unwrap();
    assert_eq!(first, "aaaa");
    let second = f.store.shared_secret("session_key", "bbbb").await.unwrap();
    assert_eq!(second, "aaaa");
}

/// Changing a sale's total moves `available` with it, never below zero.
pub async fn update_sale_moves_available_with_total(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 5, 5).await;
    reserve_one(&*f.store, &sale, &user(1), 3, T0).await;
    let mut more = sale.clone();
    more.name = "Sneakers v2".into();
    more.stock.total = 8;
    more.updated_at = T0;
    assert!(f.store.update_sale(&more).await.unwrap());
    let stored = f.store.sale(&sale.id).await.unwrap().unwrap();
    assert_eq!(stored.name, "Sneakers v2");
    assert_eq!(stored.updated_at, T0);
    assert_eq!(stored.stock, levels(8, 5, 3, 0));
    let mut fewer = more.clone();
    fewer.stock.total = 2; // would leave available at -1
    assert!(!f.store.update_sale(&fewer).await.unwrap());
    fewer.stock.total = 3;
    assert!(f.store.update_sale(&fewer).await.unwrap());
    assert_eq!(checked(&*f.store, &sale.id).await, levels(3, 0, 3, 0));
    let ghost = sale_with(1, 1, "EUR");
    assert!(!f.store.update_sale(&ghost).await.unwrap());
    f.store.insert_sale(&ghost).await.unwrap();
    let ids: Vec<_> = f
        .store
        .sales()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&ghost.id) && ids.contains(&sale.id));
}

// --- idempotency, webhooks, audit --------------------------------------------------------

/// Idempotency keys: proceed, in progress, mismatch, lease takeover under the first claim's ids,
/// replay, abandon; keys are per user.
pub async fn idempotency_keys(store: Arc<dyn Store>) {
    let f = Fx { store };
    let (a, b) = (user(1), user(2));
    let s = &*f.store;
    let ids = |n: u128| CheckoutIds {
        order_id: OrderId::generate(T0.0, n),
        payment_id: PaymentId::generate(T0.0, n),
    };
    let fresh = |n| IdempotencyStart::Proceed {
        ids: ids(n),
        resumed: false,
    };
    let start = |u: &UserId, hash: &str, ms: i64, n: u128| {
        let (u, hash) = (u.clone(), hash.to_owned());
        async move {
            s.idempotency_start(&u, "k", &hash, T0.plus_millis(ms), 1_000, &ids(n))
                .await
                .unwrap()
        }
    };
    assert_eq!(start(&a, "h1", 0, 1).await, fresh(1));
    assert_eq!(start(&a, "h1", 10, 2).await, IdempotencyStart::InProgress);
    assert_eq!(start(&a, "h2", 10, 3).await, IdempotencyStart::Mismatch);
    // Keys are per user.
    assert_eq!(start(&b, "h9", 0, 4).await, fresh(4));
    // The lease lapses: another body still may not use the key; the same request takes the
    // claim over under the ids it was first made with, and then owns it.
    assert_eq!(start(&a, "h2", 1_000, 5).await, IdempotencyStart::Mismatch);
    let resumed = IdempotencyStart::Proceed {
        ids: ids(1),
        resumed: true,
    };
    assert_eq!(start(&a, "h1", 1_000, 6).await, resumed);
    assert_eq!(
        start(&a, "h1", 1_500, 7).await,
        IdempotencyStart::InProgress
    );
    assert_eq!(start(&a, "h1", 2_000, 8).await, resumed, "lapsed again");
    s.idempotency_finish(&a, "k", 201, "{\"ok\":true}")
        .await
        .unwrap();
    let replay = IdempotencyStart::Replay {
        status: 201,
        body: "{\"ok\":true}".into(),
    };
    assert_eq!(start(&a, "h1", 99_000, 9).await, replay);
    assert_eq!(
        start(&a, "h2", 99_000, 10).await,
        IdempotencyStart::Mismatch
    );
    // Abandon only drops unanswered claims.
    s.idempotency_abandon(&a, "k").await.unwrap();
    assert_eq!(start(&a, "h1", 99_000, 11).await, replay);
    s.idempotency_abandon(&b, "k").await.unwrap();
    assert_eq!(
        start(&b, "h9", 0, 12).await,
        fresh(12),
        "a dropped claim starts afresh"
    );
}

/// The answers to `batch` written with `Store::write_checkouts`, none of them failed.
async fn written(store: &dyn Store, batch: &[CheckoutWrite]) -> Vec<CheckoutWritten> {
    let answers = store.write_checkouts(batch).await;
    answers.into_iter().map(Result::unwrap).collect()
}

/// Checkout steps of every kind written together (`Store::write_checkouts`, one transaction
/// with one writer): each answered in order as its own kind's call would answer it, later
/// items seeing earlier ones (the same hold twice, the same key twice, the same notification
/// twice), and a refusal leaving its neighbours' writes in place.
pub async fn checkout_steps_of_every_kind_share_a_batch(store: Arc<dyn Store>) {
    let f = Fx { store };
    let s = &*f.store;
    let sale = new_sale(s, 10, 10).await;
    let (a, b) = (user(1), user(2));
    let (ha, hb) = (
        reserve_one(s, &sale, &a, 2, T0).await,
        reserve_one(s, &sale, &b, 1, T0).await,
    );
    let order_of = |u: &UserId, h: &Hold| NewOrder {
        order_id: OrderId::generate(T0.0, seq()),
        payment_id: PaymentId::generate(T0.0, seq()),
        user_id: u.clone(),
        hold_ids: vec![h.id.clone()],
        method: "card".into(),
        now: T0,
    };
    let ids = CheckoutIds {
        order_id: OrderId::generate(T0.0, seq()),
        payment_id: PaymentId::generate(T0.0, seq()),
    };
    let claim = IdempotencyClaim {
        user: a.clone(),
        key: "k".into(),
        request_hash: "h".into(),
        now: T0,
        lease_ms: 60_000,
        ids: ids.clone(),
    };
    let notice = Notification {
        id: UserId::generate(T0.0, seq()).to_string(),
        user_id: b.clone(),
        kind: EventKind::OrderConfirmed,
        created_at: T0,
        data: serde_json::json!({ "order_id": "o1" }),
    };
    let first = order_of(&a, &ha);
    let batch = vec![
        CheckoutWrite::Order(first.clone()),
        CheckoutWrite::Claim(claim.clone()),
        CheckoutWrite::Order(order_of(&a, &hb)),
        CheckoutWrite::Notice(notice.clone()),
        CheckoutWrite::Order(order_of(&a, &ha)),
        CheckoutWrite::Claim(claim.clone()),
        CheckoutWrite::Notice(notice.clone()),
    ];
    let answers = written(s, &batch).await;
    let CheckoutWritten::Order(Ok(order)) = &answers[0] else {
        panic!("{answers:?}")
    };
    assert_eq!(order.id, first.order_id);
    assert_eq!(order.status, OrderStatus::PendingPayment);
    assert_eq!(
        answers[1..],
        [
            CheckoutWritten::Claim(IdempotencyStart::Proceed {
                ids,
                resumed: false
            }),
            CheckoutWritten::Order(Err(CheckoutError::HoldNotFound)),
            CheckoutWritten::Notice(true),
            CheckoutWritten::Order(Err(CheckoutError::HoldInPendingOrder)),
            CheckoutWritten::Claim(IdempotencyStart::InProgress),
            CheckoutWritten::Notice(false),
        ]
    );
    // The gateway's answer and the key's stored answer, together.
    let paid = vec![
        CheckoutWrite::Payment(PaymentAnswer {
            order: order.id.clone(),
            result: authorized("ref-1", false),
            now: T0,
            audit: Vec::new(),
        }),
        CheckoutWrite::Answer(IdempotencyAnswer {
            user: a.clone(),
            key: "k".into(),
            status: 201,
            body: "{}".into(),
        }),
    ];
    let answers = written(s, &paid).await;
    let CheckoutWritten::Payment(Some(PaymentApplied::Done(confirmed))) = &answers[0] else {
        panic!("{answers:?}")
    };
    assert_eq!(confirmed.status, OrderStatus::Confirmed);
    assert_eq!(answers[1], CheckoutWritten::Answer);
    assert_eq!(
        s.order(&a, &order.id).await.unwrap().as_ref(),
        Some(confirmed),
        "the answer is the order as stored"
    );
    assert_eq!(
        s.idempotency_start(&a, "k", "h", T0, 60_000, &claim.ids)
            .await
            .unwrap(),
        IdempotencyStart::Replay {
            status: 201,
            body: "{}".into()
        }
    );
    assert_eq!(s.notifications(&b, None, 10).await.unwrap(), vec![notice]);
    assert_eq!(checked(s, &sale.id).await, levels(10, 7, 1, 2));
}

/// A keyed order (`CheckoutWrite::KeyedOrder`) claims its key and, only if the claim is new,
/// creates its order under the claim's ids: a second claim of the key in progress creates
/// nothing, a refused order leaves its claim (the refusal is the answer), a lapsed claim taken
/// over creates nothing (its order may exist), and keyed orders share a batch with plain ones.
pub async fn keyed_orders_create_their_order_only_under_a_new_claim(store: Arc<dyn Store>) {
    let f = Fx { store };
    let s = &*f.store;
    let sale = new_sale(s, 10, 10).await;
    let (a, b) = (user(1), user(2));
    let ha = reserve_one(s, &sale, &a, 2, T0).await;
    let hb = reserve_one(s, &sale, &b, 1, T0).await;
    let ids = || CheckoutIds {
        order_id: OrderId::generate(T0.0, seq()),
        payment_id: PaymentId::generate(T0.0, seq()),
    };
    let keyed = |u: &UserId, key: &str, h: &Hold, now: Timestamp| {
        let claim = IdempotencyClaim {
            user: u.clone(),
            key: key.into(),
            request_hash: "h".into(),
            now,
            lease_ms: 60_000,
            ids: ids(),
        };
        // Other ids than the claim's: the order must be made under the claim's.
        let other = ids();
        let order = NewOrder {
            order_id: other.order_id,
            payment_id: other.payment_id,
            user_id: u.clone(),
            hold_ids: vec![h.id.clone()],
            method: "card".into(),
            now,
        };
        Box::new(KeyedOrder { claim, order })
    };
    let first = keyed(&a, "k", &ha, T0);
    let foreign = keyed(&b, "k", &ha, T0);
    let plain = NewOrder {
        order_id: OrderId::generate(T0.0, seq()),
        payment_id: PaymentId::generate(T0.0, seq()),
        user_id: b.clone(),
        hold_ids: vec![hb.id.clone()],
        method: "card".into(),
        now: T0,
    };
    let batch = vec![
        CheckoutWrite::KeyedOrder(first.clone()),
        CheckoutWrite::KeyedOrder(keyed(&a, "k", &ha, T0)),
        CheckoutWrite::KeyedOrder(foreign.clone()),
        CheckoutWrite::Order(plain.clone()),
    ];
    let answers = written(s, &batch).await;
    let CheckoutWritten::KeyedOrder(start, Some(Ok(order))) = &answers[0] else {
        panic!("{answers:?}")
    };
    let fresh = |c: &KeyedOrder| IdempotencyStart::Proceed {
        ids: c.claim.ids.clone(),
        resumed: false,
    };
    assert_eq!(*start, fresh(&first));
    assert_eq!(
        order.id, first.claim.ids.order_id,
        "made under the claim's ids"
    );
    assert_eq!(order.status, OrderStatus::PendingPayment);
    assert_eq!(
        answers[1..3],
        [
            CheckoutWritten::KeyedOrder(IdempotencyStart::InProgress, None),
            CheckoutWritten::KeyedOrder(fresh(&foreign), Some(Err(CheckoutError::HoldNotFound))),
        ]
    );
    let CheckoutWritten::Order(Ok(plain_order)) = &answers[3] else {
        panic!("{answers:?}")
    };
    assert_eq!(plain_order.id, plain.order_id);
    assert_eq!(
        s.order(&a, &first.claim.ids.order_id)
            .await
            .unwrap()
            .as_ref(),
        Some(order),
        "the order answered is the order stored"
    );
    // The refused order's claim stands: the same key again is in progress.
    let again = written(s, &[CheckoutWrite::KeyedOrder(keyed(&b, "k", &hb, T0))]).await;
    assert_eq!(
        again,
        [CheckoutWritten::KeyedOrder(
            IdempotencyStart::InProgress,
            None
        )]
    );
    // Once the lease lapses, a retry takes the claim over under its first ids and creates no
    // order of its own.
    let late = keyed(&a, "k", &ha, T0.plus_secs(61));
    let answers = written(s, &[CheckoutWrite::KeyedOrder(late)]).await;
    assert_eq!(
        answers,
        [CheckoutWritten::KeyedOrder(
            IdempotencyStart::Proceed {
                ids: first.claim.ids.clone(),
                resumed: true
            },
            None
        )]
    );
    assert_eq!(
        s.orders(&a).await.unwrap().len(),
        1,
        "one order for the key"
    );
    assert_eq!(s.orders(&b).await.unwrap().len(), 1);
    assert_eq!(checked(s, &sale.id).await, levels(10, 7, 3, 0));
}

/// Checkouts written together each see the ones before them (a hold an earlier one took is in
/// a pending order for a later one), and gateway answers written together are each all or
/// nothing: an order whose holds cannot all be honoured moves no stock while its neighbours
/// convert theirs, and a second answer for an order settled earlier in the batch finds it
/// settled. The orders answered are the orders stored, and each outcome writes its one event.
pub async fn checkouts_and_answers_together_each_see_the_earlier_ones(store: Arc<dyn Store>) {
    let f = Fx { store };
    let s = &*f.store;
    let sale = new_sale(s, 10, 10).await;
    let (a, b, d) = (user(1), user(2), user(4));
    let ha = reserve_one(s, &sale, &a, 2, T0).await;
    let hb = reserve_one(s, &sale, &b, 1, T0).await;
    let hd_old = reserve_one(s, &sale, &d, 1, T0).await;
    let t1 = T0.plus_secs(10);
    assert!(hd_old.expires_at > t1, "holds outlive ten seconds");
    let hd_new = reserve_one(s, &sale, &d, 1, t1).await;
    let order_of = |u: &UserId, holds: &[&Hold]| NewOrder {
        order_id: OrderId::generate(t1.0, seq()),
        payment_id: PaymentId::generate(t1.0, seq()),
        user_id: u.clone(),
        hold_ids: holds.iter().map(|h| h.id.clone()).collect(),
        method: "card".into(),
        now: t1,
    };
    let batch: Vec<CheckoutWrite> = [
        order_of(&a, &[&ha]),
        order_of(&a, &[&ha]),
        order_of(&b, &[&hb]),
        order_of(&d, &[&hd_new, &hd_old]),
    ]
    .into_iter()
    .map(CheckoutWrite::Order)
    .collect();
    let mut orders = Vec::new();
    for (i, answer) in written(s, &batch).await.into_iter().enumerate() {
        match (i, answer) {
            (1, CheckoutWritten::Order(refused)) => {
                assert_eq!(refused, Err(CheckoutError::HoldInPendingOrder))
            }
            (_, CheckoutWritten::Order(Ok(order))) => orders.push(order),
            other => panic!("{other:?}"),
        }
    }
    let [oa, ob, od] = &orders[..] else {
        panic!("{orders:?}")
    };
    assert_eq!(s.order(&d, &od.id).await.unwrap().as_ref(), Some(od));
    assert_eq!(checked(s, &sale.id).await, levels(10, 5, 5, 0));
    // d's older hold has lapsed (unswept) by the time its money comes: d's other hold, first
    // in its order, must not stay sold.
    let late = hd_old.expires_at.plus_secs(1);
    assert!(hd_new.expires_at > late);
    let answer = |order: &Order, result: PaymentResult, now: Timestamp| {
        CheckoutWrite::Payment(PaymentAnswer {
            order: order.id.clone(),
            result,
            now,
            audit: Vec::new(),
        })
    };
    let declined = PaymentResult::Declined {
        reference: Some("ref-b".into()),
        reason: "card_declined".into(),
    };
    let batch = vec![
        answer(od, authorized("ref-d", false), late),
        answer(oa, authorized("ref-a", false), t1),
        answer(oa, authorized("ref-a", false), t1),
        answer(ob, declined, t1),
    ];
    let answers = written(s, &batch).await;
    let applied: Vec<&PaymentApplied> = answers
        .iter()
        .map(|w| match w {
            CheckoutWritten::Payment(Some(applied)) => applied,
            other => panic!("{other:?}"),
        })
        .collect();
    let [PaymentApplied::HoldLapsed(d_failed), PaymentApplied::Done(a_paid), PaymentApplied::AlreadySettled(a_again), PaymentApplied::Done(b_failed)] =
        &applied[..]
    else {
        panic!("{applied:?}")
    };
    assert_eq!(d_failed.status, OrderStatus::PaymentFailed);
    assert_eq!(a_paid.status, OrderStatus::Confirmed);
    assert_eq!(a_again, a_paid);
    assert_eq!(b_failed.status, OrderStatus::PaymentFailed);
    for (who, order) in [(&d, d_failed), (&a, a_paid), (&b, b_failed)] {
        assert_eq!(
            s.order(who, &order.id).await.unwrap().as_ref(),
            Some(order),
            "the answer is the order as stored"
        );
    }
    // a's two units sold; b's declined hold and both of d's still held.
    assert_eq!(checked(s, &sale.id).await, levels(10, 5, 3, 2));
    let kinds: Vec<EventKind> = claim_all(s, late).await.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == EventKind::OrderConfirmed)
            .count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == EventKind::PaymentFailed)
            .count(),
        2,
        "{kinds:?}"
    );
    // b's declined hold let go of its order: b can try again.
    let again = written(s, &[CheckoutWrite::Order(order_of(&b, &[&hb]))]).await;
    assert!(
        matches!(&again[..], [CheckoutWritten::Order(Ok(_))]),
        "{again:?}"
    );
    // Finished money moves together: each changes its own payment once.
    let done = |order: &Order, owed: GatewayOwed| {
        CheckoutWrite::OwedDone(OwedDone {
            payment: order.payment.as_ref().unwrap().id.clone(),
            done: owed,
            next: None,
            now: late,
            audit: Vec::new(),
        })
    };
    let moves = [
        done(a_paid, GatewayOwed::Capture),
        done(d_failed, GatewayOwed::Void),
    ];
    let owed = s.payments_owed(100).await.unwrap();
    assert_eq!(
        [owed_of(&owed, a_paid), owed_of(&owed, d_failed)].map(|o| o.map(|o| o.owed)),
        [Some(GatewayOwed::Capture), Some(GatewayOwed::Void)]
    );
    let outcome = written(s, &moves).await;
    assert_eq!(outcome, vec![CheckoutWritten::OwedDone(true); 2]);
    assert_eq!(s.payments_owed(100).await.unwrap(), Vec::new());
    let outcome = written(s, &moves[..1]).await;
    assert_eq!(outcome, [CheckoutWritten::OwedDone(false)]);
    // Claims and notifications together: new ones each taken, a repeat in the same batch
    // sees the one before it.
    let claim = |who: &UserId, key: &str| {
        CheckoutWrite::Claim(IdempotencyClaim {
            user: who.clone(),
            key: key.into(),
            request_hash: "h".into(),
            now: late,
            lease_ms: 60_000,
            ids: CheckoutIds {
                order_id: OrderId::generate(late.0, seq()),
                payment_id: PaymentId::generate(late.0, seq()),
            },
        })
    };
    let claims = [claim(&a, "k1"), claim(&b, "k1"), claim(&a, "k1")];
    let outcome = written(s, &claims).await;
    assert!(
        matches!(
            &outcome[..],
            [
                CheckoutWritten::Claim(IdempotencyStart::Proceed { resumed: false, .. }),
                CheckoutWritten::Claim(IdempotencyStart::Proceed { resumed: false, .. }),
                CheckoutWritten::Claim(IdempotencyStart::InProgress),
            ]
        ),
        "{outcome:?}"
    );
    let outcome = written(s, &[claim(&a, "k2"), claim(&b, "k2")]).await;
    assert!(
        outcome.iter().all(|o| matches!(
            o,
            CheckoutWritten::Claim(IdempotencyStart::Proceed { resumed: false, .. })
        )),
        "{outcome:?}"
    );
    let notice = |n: u128, who: &UserId| Notification {
        id: format!("n{n}"),
        user_id: who.clone(),
        kind: EventKind::OrderConfirmed,
        created_at: late,
        data: serde_json::json!({ "n": n.to_string() }),
    };
    let (n1, n2) = (notice(seq(), &a), notice(seq(), &a));
    let notices = [
        CheckoutWrite::Notice(n1.clone()),
        CheckoutWrite::Notice(n2.clone()),
    ];
    assert_eq!(
        written(s, &notices).await,
        vec![CheckoutWritten::Notice(true); 2]
    );
    assert_eq!(
        written(s, &notices[..1]).await,
        [CheckoutWritten::Notice(false)]
    );
    assert_eq!(s.notifications(&a, None, 10).await.unwrap(), vec![n1, n2]);
}

/// A webhook event id is recorded once.
pub async fn webhook_events_are_seen_once(store: Arc<dyn Store>) {
    let f = Fx { store };
    assert!(f.store.record_webhook_event("evt_1", T0).await.unwrap());
    assert!(!f
        .store
        .record_webhook_event("evt_1", T0.plus_secs(1))
        .await
        .unwrap());
    assert!(f.store.record_webhook_event("evt_2", T0).await.unwrap());
}

/// The audit log filters by actor and action and pages by id, oldest first.
pub async fn audit_log_filters_and_pages(store: Arc<dyn Store>) {
    let f = Fx { store };
    let entries: Vec<AuditEntry> = [
        ("admin1", "sale.create"),
        ("system", "payment.capture"),
        ("admin1", "sale.pause"),
        ("admin2", "sale.create"),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (actor, action))| AuditEntry {
        id: format!("01J000000000000000000000{i:02}"),
        at: T0.plus_secs(i64::try_from(i).unwrap()),
        actor: actor.into(),
        action: action.into(),
        target: "sale-x".into(),
        before: (i == 2).then(|| serde_json::json!({"control": "running"})),
        after: Some(serde_json::json!({"i": i})),
    })
    .collect();
    // One entry alone, then a group-committed batch of the rest; nothing to write is no error.
    f.store.append_audits(&entries[..1]).await.unwrap();
    f.store.append_audits(&entries[1..]).await.unwrap();
    f.store.append_audits(&[]).await.unwrap();
    let all = f
        .store
        .audit(&AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(
        all[2].before,
        Some(serde_json::json!({"control": "running"}))
    );
    let by_actor = f
        .store
        .audit(&AuditFilter {
            actor: Some("admin1".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        by_actor
            .iter()
            .map(|e| e.action.as_str())
            .collect::<Vec<_>>(),
        ["sale.create", "sale.pause"]
    );
    let page = f
        .store
        .audit(&AuditFilter {
            action: Some("sale.create".into()),
            after: Some(all[0].id.clone()),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].actor, "admin2");
    let limited = f
        .store
        .audit(&AuditFilter {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(limited, all[..2].to_vec());
}

// --- the outbox and notifications --------------------------------------------------------

/// Every waiting outbox event, leased for a moment at `now` (which must be later than any
/// earlier claim's lease), oldest first.
async fn claim_all(store: &dyn Store, now: Timestamp) -> Vec<OutboxEvent> {
    store.outbox_claim(now, 1, 10_000).await.unwrap()
}

/// `n` orders of buyer `who`, one unit each, confirmed one millisecond apart from `at`: `n`
/// `order_confirmed` events, oldest first.
async fn confirmed_orders(store: &dyn Store, who: &UserId, n: u32, at: Timestamp) -> Vec<Order> {
    let sale = new_sale(store, i64::from(n), n).await;
    let batch: Vec<_> = (0..n).map(|_| req(&sale, who, 1, T0)).collect();
    let holds: Vec<Hold> = store
        .reserve(&batch)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut orders = Vec::new();
    for (i, h) in holds.iter().enumerate() {
        let order = checkout(store, who, &[h], T0).await.unwrap();
        let now = at.plus_millis(i64::try_from(i).unwrap());
        let out = pay(
            store,
            &order,
            authorized(&format!("ref-{}", order.id), false),
            now,
        )
        .await;
        let PaymentApplied::Done(paid) = out else {
            panic!("{out:?}")
        };
        assert_eq!(paid.status, OrderStatus::Confirmed);
        orders.push(paid);
    }
    orders
}

/// An order leaving `pending_payment` writes exactly one outbox event in its transaction:
/// `order_confirmed` with the total, `payment_failed` with the gateway's reason or with
/// `hold_expired` for a lapsed authorization. A pending answer or a replay writes none.
pub async fn payment_outcomes_write_one_outbox_event_each(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 10, 10).await;
    let (a, b) = (user(1), user(2));
    assert_eq!(f.store.outbox_backlog().await.unwrap(), (0, None));

    // Confirmed, then replayed.
    let ha = reserve_one(&*f.store, &sale, &a, 2, T0).await;
    let oa = checkout(&*f.store, &a, &[&ha], T0).await.unwrap();
    let t1 = T0.plus_secs(1);
    let out = pay(&*f.store, &oa, authorized("ref-a", false), t1).await;
    let PaymentApplied::Done(confirmed) = out else {
        panic!("{out:?}")
    };
    assert_eq!(confirmed.status, OrderStatus::Confirmed);
    assert_eq!(f.store.outbox_backlog().await.unwrap(), (1, Some(t1)));
    let again = pay(&*f.store, &oa, authorized("ref-a", false), t1.plus_secs(1)).await;
    assert!(
        matches!(again, PaymentApplied::AlreadySettled(_)),
        "{again:?}"
    );
    assert_eq!(f.store.outbox_backlog().await.unwrap(), (1, Some(t1)));

    // Pending (nothing yet), then declined, then a replayed decline.
    let hb = reserve_one(&*f.store, &sale, &b, 1, T0).await;
    let ob = checkout(&*f.store, &b, &[&hb], T0).await.unwrap();
    let t2 = T0.plus_secs(2);
    let pending = PaymentResult::Pending {
        reference: "ref-b".into(),
    };
    let out = pay(&*f.store, &ob, pending, t2).await;
    assert!(matches!(out, PaymentApplied::Done(ref o) if o.status == OrderStatus::PendingPayment));
    assert_eq!(f.store.outbox_backlog().await.unwrap().0, 1);
    let declined = PaymentResult::Declined {
        reference: None,
        reason: "insufficient_funds".into(),
    };
    let t3 = T0.plus_secs(3);
    let out = pay(&*f.store, &ob, declined.clone(), t3).await;
    assert!(matches!(out, PaymentApplied::Done(ref o) if o.status == OrderStatus::PaymentFailed));
    assert_eq!(f.store.outbox_backlog().await.unwrap(), (2, Some(t1)));
    let out = pay(&*f.store, &ob, declined, t3.plus_secs(1)).await;
    assert!(matches!(out, PaymentApplied::AlreadySettled(_)), "{out:?}");
    assert_eq!(f.store.outbox_backlog().await.unwrap().0, 2);

    // The declined hold joins a new order, lapses, and its late authorization fails.
    let oc = checkout(&*f.store, &b, &[&hb], t3).await.unwrap();
    let late = hb.expires_at.plus_secs(1);
    assert_eq!(f.store.expire_due_holds(late, 10).await.unwrap().len(), 1);
    let out = pay(&*f.store, &oc, authorized("ref-c", false), late).await;
    assert!(matches!(out, PaymentApplied::HoldLapsed(_)), "{out:?}");
    assert_eq!(f.store.outbox_backlog().await.unwrap(), (3, Some(t1)));
    // Cancelling the confirmed order is not an outcome of a payment: no event.
    let cancelled = f.store.cancel_order(&a, &oa.id, late).await.unwrap();
    assert!(matches!(cancelled, Some(Ok(Cancelled::Refunded { .. }))));
    assert_eq!(f.store.outbox_backlog().await.unwrap().0, 3);

    let events = claim_all(&*f.store, late.plus_secs(1)).await;
    assert_eq!(events.len(), 3, "{events:?}");
    let (e1, e2, e3) = (&events[0], &events[1], &events[2]);
    assert_eq!(
        (e1.kind.as_str(), &e1.user_id, e1.created_at),
        ("order_confirmed", &a, t1)
    );
    assert_eq!(
        e1.data,
        serde_json::json!({
            "order_id": oa.id.as_str(),
            "total": oa.total.format(&oa.currency),
            "currency": "EUR",
        })
    );
    assert_eq!(e1.data["total"], "50.00");
    assert_eq!(
        (e2.kind.as_str(), &e2.user_id, e2.created_at),
        ("payment_failed", &b, t3)
    );
    assert_eq!(
        e2.data,
        serde_json::json!({ "order_id": ob.id.as_str(), "reason": "insufficient_funds" })
    );
    assert_eq!(
        (e3.kind.as_str(), &e3.user_id, e3.created_at),
        ("payment_failed", &b, late)
    );
    assert_eq!(
        e3.data,
        serde_json::json!({ "order_id": oc.id.as_str(), "reason": "hold_expired" })
    );
    // Ids are ULIDs of the moment the event was written, so they sort by time.
    for e in &events {
        assert_eq!(e.id.len(), 26, "{e:?}");
    }
    assert!(e1.id < e2.id && e2.id < e3.id);
    assert!(e1.id.starts_with(&UserId::generate(t1.0, 0).as_str()[..10]));
}

/// Events the bus did not take are released: the next claim gets them at once, not after the
/// lease; a delivered event stays delivered even if released.
pub async fn released_outbox_events_are_claimed_again_at_once(store: Arc<dyn Store>) {
    let f = Fx { store };
    let a = user(1);
    let at = T0.plus_secs(1);
    confirmed_orders(&*f.store, &a, 2, at).await;
    let t = T0.plus_secs(10);
    let lease = 30_000;
    let claimed = f.store.outbox_claim(t, lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(f.store.outbox_claim(t, lease, 10).await.unwrap().is_empty());
    f.store
        .outbox_delivered(&[claimed[0].id.clone()])
        .await
        .unwrap();
    let ids: Vec<String> = claimed.iter().map(|e| e.id.clone()).collect();
    f.store.outbox_release(&ids).await.unwrap();
    f.store.outbox_release(&[]).await.unwrap();
    let again = f.store.outbox_claim(t, lease, 10).await.unwrap();
    assert_eq!(again.len(), 1, "only the undelivered event comes back");
    assert_eq!(again[0].id, claimed[1].id);
    assert_eq!(f.store.outbox_backlog().await.unwrap().0, 1);
}

/// A claim leases events, oldest first and at most `limit`: no other claim gets them until the
/// lease lapses (`lease_until <= now`), and a delivered event is never claimed again.
pub async fn outbox_claims_lease_events_until_delivered(store: Arc<dyn Store>) {
    let f = Fx { store };
    let a = user(1);
    let at = T0.plus_secs(1);
    confirmed_orders(&*f.store, &a, 3, at).await;
    assert_eq!(f.store.outbox_backlog().await.unwrap(), (3, Some(at)));
    let t = T0.plus_secs(10);
    let lease = 30_000;

    assert!(f.store.outbox_claim(t, lease, 0).await.unwrap().is_empty());
    let first = f.store.outbox_claim(t, lease, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].created_at, at);
    assert_eq!(first[1].created_at, at.plus_millis(1));
    let second = f.store.outbox_claim(t, lease, 10).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].created_at, at.plus_millis(2));
    let mut ids: Vec<String> = first.iter().chain(&second).map(|e| e.id.clone()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "oldest first");
    // Claimed, not delivered: still waiting.
    assert_eq!(f.store.outbox_backlog().await.unwrap(), (3, Some(at)));

    // Within the lease: nothing.
    assert!(f.store.outbox_claim(t, lease, 10).await.unwrap().is_empty());
    let just_before = t.plus_millis(lease - 1);
    assert!(f
        .store
        .outbox_claim(just_before, lease, 10)
        .await
        .unwrap()
        .is_empty());

    // The lease lapsed (a relay died): the same events again, unchanged.
    let t2 = t.plus_millis(lease);
    let retaken = f.store.outbox_claim(t2, lease, 10).await.unwrap();
    let expected: Vec<OutboxEvent> = first.iter().chain(&second).cloned().collect();
    assert_eq!(retaken, expected);

    // Two delivered: only the third waits, and only it comes back after its lease.
    f.store.outbox_delivered(&[]).await.unwrap();
    f.store.outbox_delivered(&ids[..2]).await.unwrap();
    assert_eq!(
        f.store.outbox_backlog().await.unwrap(),
        (1, Some(at.plus_millis(2)))
    );
    let t3 = t2.plus_millis(lease);
    let last = f.store.outbox_claim(t3, lease, 10).await.unwrap();
    assert_eq!(last, vec![expected[2].clone()]);

    // Delivering again (a relay that lost the answer) is harmless.
    ids.push(ids[0].clone());
    f.store.outbox_delivered(&ids).await.unwrap();
    assert_eq!(f.store.outbox_backlog().await.unwrap(), (0, None));
    let much_later = t3.plus_secs(86_400);
    assert!(claim_all(&*f.store, much_later).await.is_empty());
}

/// The relay's leases and delivery marks written among checkout steps
/// (`CheckoutWrite::OutboxClaim` / `OutboxDelivered`) do what `outbox_claim` and
/// `outbox_delivered` do, in the batch's order: a second lease in the batch finds the events
/// leased by the first, and a lease after the delivery mark of the same batch (its lease
/// lapsed) finds the delivered events gone.
pub async fn relay_steps_among_checkout_steps_lease_and_deliver_in_order(store: Arc<dyn Store>) {
    let f = Fx { store };
    let s = &*f.store;
    let a = user(1);
    let at = T0.plus_secs(1);
    confirmed_orders(s, &a, 3, at).await;
    let lease = |secs, limit| {
        CheckoutWrite::OutboxClaim(OutboxLease {
            now: T0.plus_secs(secs),
            lease_ms: 30_000,
            limit,
        })
    };
    let notice = Notification {
        id: UserId::generate(T0.0, seq()).to_string(),
        user_id: a.clone(),
        kind: EventKind::OrderConfirmed,
        created_at: T0,
        data: serde_json::json!({ "order_id": "o1" }),
    };
    let answers = written(
        s,
        &[lease(10, 2), CheckoutWrite::Notice(notice), lease(10, 10)],
    )
    .await;
    let [CheckoutWritten::OutboxClaimed(first), CheckoutWritten::Notice(true), CheckoutWritten::OutboxClaimed(second)] =
        &answers[..]
    else {
        panic!("{answers:?}")
    };
    assert_eq!(
        (first.len(), second.len()),
        (2, 1),
        "the second lease skips the first's"
    );
    let ids: Vec<String> = first.iter().map(|e| e.id.clone()).collect();
    let answers = written(s, &[CheckoutWrite::OutboxDelivered(ids), lease(100, 10)]).await;
    let [CheckoutWritten::OutboxDelivered, CheckoutWritten::OutboxClaimed(again)] = &answers[..]
    else {
        panic!("{answers:?}")
    };
    assert_eq!(
        again, second,
        "only the undelivered event comes back once leases lapse"
    );
    assert_eq!(
        s.outbox_backlog().await.unwrap(),
        (1, Some(at.plus_millis(2)))
    );
}

/// Two relays claiming at once never get the same event, and between them get every one.
pub async fn concurrent_outbox_claims_never_share_an_event(store: Arc<dyn Store>) {
    let f = Fx { store };
    let orders = confirmed_orders(&*f.store, &user(1), 50, T0.plus_secs(1)).await;
    assert_eq!(f.store.outbox_backlog().await.unwrap().0, 50);
    let now = T0.plus_secs(10);
    let relay = move |store: Arc<dyn Store>| async move {
        let mut got = Vec::new();
        loop {
            let batch = store.outbox_claim(now, 60_000, 10).await.unwrap();
            if batch.is_empty() {
                return got;
            }
            assert!(batch.len() <= 10);
            got.extend(batch.into_iter().map(|e| e.id));
            tokio::task::yield_now().await;
        }
    };
    let (x, y) = tokio::join!(relay(f.store.clone()), relay(f.store.clone()));
    let xs: std::collections::BTreeSet<String> = x.iter().cloned().collect();
    let ys: std::collections::BTreeSet<String> = y.iter().cloned().collect();
    assert_eq!(xs.len(), x.len(), "one relay got an event twice");
    assert_eq!(ys.len(), y.len(), "one relay got an event twice");
    assert!(
        xs.is_disjoint(&ys),
        "both relays got {:?}",
        xs.intersection(&ys)
    );
    assert_eq!(xs.len() + ys.len(), 50);
    // Every event is one of these orders, once.
    let mut order_ids: Vec<String> = claim_all(&*f.store, now.plus_secs(60))
        .await
        .into_iter()
        .map(|e| e.data["order_id"].as_str().unwrap().to_owned())
        .collect();
    order_ids.sort();
    let mut expected: Vec<String> = orders.iter().map(|o| o.id.to_string()).collect();
    expected.sort();
    assert_eq!(order_ids, expected);
}

/// A notification is appended once per id: a redelivered event adds nothing.
pub async fn notifications_are_appended_once_per_id(store: Arc<dyn Store>) {
    let f = Fx { store };
    let a = user(1);
    let n1 = Notification {
        id: UserId::generate(T0.0, 1).to_string(),
        user_id: a.clone(),
        kind: EventKind::OrderConfirmed,
        created_at: T0,
        data: serde_json::json!({ "order_id": "o1", "total": "25.00", "currency": "EUR" }),
    };
    assert!(f.store.append_notification(&n1).await.unwrap());
    let replay = Notification {
        created_at: T0.plus_secs(5),
        data: serde_json::json!({ "other": true }),
        ..n1.clone()
    };
    assert!(!f.store.append_notification(&replay).await.unwrap());
    assert_eq!(
        f.store.notifications(&a, None, 10).await.unwrap(),
        vec![n1.clone()]
    );
    let n2 = Notification {
        id: UserId::generate(T0.0 + 1, 2).to_string(),
        created_at: T0.plus_millis(1),
        ..n1.clone()
    };
    assert!(f.store.append_notification(&n2).await.unwrap());
    assert_eq!(
        f.store.notifications(&a, None, 10).await.unwrap(),
        vec![n1.clone(), n2.clone()]
    );
    assert_eq!(
        f.store.notifications(&a, Some(&n1.id), 10).await.unwrap(),
        vec![n2]
    );
    assert!(f
        .store
        .notifications(&user(2), None, 10)
        .await
        .unwrap()
        .is_empty());
}

// --- outgoing webhooks to the shop ---------------------------------------------------------

/// An `order_confirmed` event of buyer `n` that happened at `at` (ids sort by `at`).
fn an_event(n: u32, at: Timestamp) -> OutboxEvent {
    OutboxEvent {
        id: UserId::generate(at.0, seq()).to_string(),
        user_id: user(n),
        kind: EventKind::OrderConfirmed,
        created_at: at,
        data: serde_json::json!({ "order_id": format!("o{n}"), "total": "25.00", "currency": "EUR" }),
    }
}

/// The event ids of some deliveries, in the order given.
fn ids_of(deliveries: &[WebhookDelivery]) -> Vec<&str> {
    deliveries.iter().map(|d| d.event_id.as_str()).collect()
}

/// Queueing an event's delivery twice (a redelivered outbox event) queues it once, as first
/// written, due at once and never tried.
pub async fn webhook_enqueue_is_idempotent_per_event(store: Arc<dyn Store>) {
    let f = Fx { store };
    assert_eq!(f.store.webhook_backlog().await.unwrap(), (0, None));
    let e = an_event(1, T0);
    let now = T0.plus_secs(1);
    assert!(f.store.webhook_enqueue(&e, now).await.unwrap());
    let replay = OutboxEvent {
        data: serde_json::json!({ "other": true }),
        kind: EventKind::PaymentFailed,
        ..e.clone()
    };
    assert!(!f
        .store
        .webhook_enqueue(&replay, now.plus_secs(5))
        .await
        .unwrap());
    assert!(!f.store.webhook_enqueue(&e, now).await.unwrap());
    assert_eq!(f.store.webhook_backlog().await.unwrap(), (1, Some(T0)));
    // Not due before it was queued.
    assert!(f
        .store
        .webhook_claim(now.plus_millis(-1), 30_000, 10)
        .await
        .unwrap()
        .is_empty());
    let due = f.store.webhook_claim(now, 30_000, 10).await.unwrap();
    assert_eq!(
        due,
        vec![WebhookDelivery {
            event_id: e.id.clone(),
            kind: EventKind::OrderConfirmed,
            user_id: user(1),
            payload: e.data.clone(),
            created_at: T0,
            attempts: 0,
            next_attempt_at: now,
            last_error: None,
        }]
    );
    // A claim is not a delivery.
    assert_eq!(f.store.webhook_backlog().await.unwrap(), (1, Some(T0)));
}

/// A claim leases due deliveries, oldest first and at most `limit`: no other claim gets them
/// until the lease lapses. A failure counts an attempt, keeps the error, lets go of the lease
/// and makes the delivery due again only at the backoff's time.
pub async fn webhook_claims_lease_back_off_and_wait_until_due(store: Arc<dyn Store>) {
    let f = Fx { store };
    let (e1, e2, e3) = (
        an_event(1, T0),
        an_event(2, T0.plus_millis(1)),
        an_event(3, T0.plus_millis(2)),
    );
    // Queued in another order than they happened: the claim still goes oldest first.
    for e in [&e3, &e1, &e2] {
        assert!(f.store.webhook_enqueue(e, T0).await.unwrap());
    }
    // Queued to be due only later.
    let e4 = an_event(4, T0.plus_millis(3));
    let later = T0.plus_secs(100);
    assert!(f.store.webhook_enqueue(&e4, later).await.unwrap());
    assert_eq!(f.store.webhook_backlog().await.unwrap(), (4, Some(T0)));

    let t = T0.plus_secs(1);
    let lease = 30_000;
    assert!(f.store.webhook_claim(t, lease, 0).await.unwrap().is_empty());
    let first = f.store.webhook_claim(t, lease, 2).await.unwrap();
    assert_eq!(ids_of(&first), vec![e1.id.as_str(), e2.id.as_str()]);
    let second = f.store.webhook_claim(t, lease, 10).await.unwrap();
    assert_eq!(ids_of(&second), vec![e3.id.as_str()], "e4 is not due yet");
    // Within the lease: nothing.
    assert!(f
        .store
        .webhook_claim(t, lease, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(f
        .store
        .webhook_claim(t.plus_millis(lease - 1), lease, 10)
        .await
        .unwrap()
        .is_empty());

    // e1 failed: lease gone, but due only at the backoff's time.
    let retry_at = t.plus_secs(5);
    f.store
        .webhook_failed(&e1.id, retry_at, "shop answered 500")
        .await
        .unwrap();
    assert!(f
        .store
        .webhook_claim(retry_at.plus_millis(-1), lease, 10)
        .await
        .unwrap()
        .is_empty());
    let again = f.store.webhook_claim(retry_at, lease, 10).await.unwrap();
    assert_eq!(ids_of(&again), vec![e1.id.as_str()]);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[0].next_attempt_at, retry_at);
    assert_eq!(again[0].last_error.as_deref(), Some("shop answered 500"));
    assert_eq!(again[0].payload, e1.data);
    // Failed again: two attempts, the latest error.
    let retry_at2 = retry_at.plus_secs(1);
    f.store
        .webhook_failed(&e1.id, retry_at2, "timed out")
        .await
        .unwrap();
    assert_eq!(f.store.webhook_backlog().await.unwrap(), (4, Some(T0)));

    // The first leases lapsed (a sender died): e1 (its retry due), e2 and e3 again.
    let t2 = t.plus_millis(lease);
    let retaken = f.store.webhook_claim(t2, lease, 10).await.unwrap();
    assert_eq!(
        ids_of(&retaken),
        vec![e1.id.as_str(), e2.id.as_str(), e3.id.as_str()]
    );
    assert_eq!(retaken[0].attempts, 2);
    assert_eq!(retaken[0].last_error.as_deref(), Some("timed out"));
    assert_eq!(
        retaken[1].attempts, 0,
        "a lapsed lease is not a failed attempt"
    );
    assert_eq!(retaken[1].last_error, None);

    // Once every lease lapsed and e4 is due: all four, oldest first.
    let t3 = later.max(t2.plus_millis(lease));
    let all = f.store.webhook_claim(t3, lease, 10).await.unwrap();
    assert_eq!(
        ids_of(&all),
        vec![
            e1.id.as_str(),
            e2.id.as_str(),
            e3.id.as_str(),
            e4.id.as_str()
        ]
    );
}

/// A delivered delivery is never claimed again: not after its lease, not after a late failure
/// report, not when its event is queued again.
pub async fn delivered_webhooks_are_never_claimed_again(store: Arc<dyn Store>) {
    let f = Fx { store };
    let (e1, e2) = (an_event(1, T0), an_event(2, T0.plus_millis(1)));
    for e in [&e1, &e2] {
        assert!(f.store.webhook_enqueue(e, T0).await.unwrap());
    }
    let t = T0.plus_secs(1);
    let lease = 30_000;
    assert_eq!(f.store.webhook_claim(t, lease, 10).await.unwrap().len(), 2);
    f.store.webhook_delivered(&e1.id, t).await.unwrap();
    // Twice (a sender that lost the answer), and a late failure from a sender whose lease
    // had lapsed: neither brings it back.
    f.store
        .webhook_delivered(&e1.id, t.plus_secs(1))
        .await
        .unwrap();
    f.store
        .webhook_failed(&e1.id, t, "late failure")
        .await
        .unwrap();
    assert!(!f.store.webhook_enqueue(&e1, t).await.unwrap());
    assert_eq!(
        f.store.webhook_backlog().await.unwrap(),
        (1, Some(e2.created_at))
    );
    let much_later = t.plus_secs(86_400);
    let left = f.store.webhook_claim(much_later, lease, 10).await.unwrap();
    assert_eq!(ids_of(&left), vec![e2.id.as_str()]);
    f.store.webhook_delivered(&e2.id, much_later).await.unwrap();
    assert_eq!(f.store.webhook_backlog().await.unwrap(), (0, None));
    assert!(f
        .store
        .webhook_claim(much_later.plus_secs(86_400), lease, 10)
        .await
        .unwrap()
        .is_empty());
    // Unknown ids are harmless.
    f.store.webhook_delivered("nope", t).await.unwrap();
    f.store.webhook_failed("nope", t, "x").await.unwrap();
}

/// Senders claiming at once (several nodes) never get the same delivery, and between them
/// get every one.
pub async fn concurrent_webhook_claims_never_share_a_delivery(store: Arc<dyn Store>) {
    let f = Fx { store };
    let mut expected = Vec::new();
    for i in 0..60u32 {
        let e = an_event(i, T0.plus_millis(i64::from(i)));
        assert!(f.store.webhook_enqueue(&e, T0).await.unwrap());
        expected.push(e.id);
    }
    let now = T0.plus_secs(1);
    let sender = move |store: Arc<dyn Store>| async move {
        let mut got = Vec::new();
        loop {
            let batch = store.webhook_claim(now, 60_000, 7).await.unwrap();
            if batch.is_empty() {
                return got;
            }
            assert!(batch.len() <= 7);
            got.extend(batch.into_iter().map(|d| d.event_id));
            tokio::task::yield_now().await;
        }
    };
    let senders: Vec<_> = (0..3)
        .map(|_| tokio::spawn(sender(f.store.clone())))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0;
    for s in senders {
        let got = s.await.unwrap();
        total += got.len();
        for id in got {
            assert!(seen.insert(id.clone()), "two senders got {id}");
        }
    }
    assert_eq!(total, 60);
    expected.sort();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), expected);
}

// --- randomized comparison against the reference model -----------------------------------

/// xorshift64*: deterministic, no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the store knows about a model hold.
struct Pair {
    hold: Hold,
    order: Option<OrderId>,
}

async fn compare(store: &dyn Store, sale: &SaleId, model: &SaleLedger, users: u32, step: usize) {
    let audit = store.stock_audit(sale).await.unwrap().unwrap();
    assert!(audit.invariant_ok(), "step {step}: {audit:?}");
    assert_eq!(audit.counters, model.stock, "step {step}");
    let expired = model
        .holds
        .values()
        .filter(|h| h.state == HoldState::Expired)
        .count();
    assert_eq!(
        audit.holds_expired,
        i64::try_from(expired).unwrap(),
        "step {step}"
    );
    assert_eq!(model.check(), Ok(()), "step {step}");
    let seeds = store.gate_seeds().await.unwrap();
    let seed = seeds.iter().find(|s| &s.sale_id == sale).unwrap();
    assert_eq!(seed.available, model.stock.available, "step {step}");
    let units: HashMap<UserId, u32> = seed.user_units.iter().cloned().collect();
    for u in 0..users {
        let stored = units.get(&user(u)).copied().map_or(0, i64::from);
        assert_eq!(stored, model.units_of(u), "step {step}: units of user {u}");
    }
}

async fn randomized_run(
    store: &Arc<dyn Store>,
    seed: u64,
    steps: usize,
) -> BTreeMap<&'static str, u32> {
    const USERS: u32 = 5;
    let f = Fx {
        store: Arc::clone(store),
    };
    let mut rng = Rng(seed);
    let total = 4 + i64::try_from(rng.below(10)).unwrap();
    let limit = 1 + u32::try_from(rng.below(4)).unwrap();
    let mut sale = sale_with(total, limit, "EUR");
    sale.hold_seconds = 3;
    f.store.insert_sale(&sale).await.unwrap();
    let mut model = SaleLedger::new(total, limit, 3_000);
    let mut pairs: BTreeMap<u64, Pair> = BTreeMap::new();
    let mut now = T0;
    // How often each kind of operation actually did something, so a run that never pays or
    // never expires anything fails instead of passing vacuously.
    let mut did: BTreeMap<&str, u32> = BTreeMap::new();

    for step in 0..steps {
        let ids: Vec<u64> = pairs.keys().copied().collect();
        let pick = |r: u64| {
            ids.get(usize::try_from(r).unwrap() % ids.len().max(1))
                .copied()
        };
        match rng.below(12) {
            // A group commit of a few requests, judged in order.
            0..=3 => {
                let n = 1 + rng.below(3);
                let mut batch = Vec::new();
                let mut who = Vec::new();
                for _ in 0..n {
                    let u = u32::try_from(rng.below(u64::from(USERS))).unwrap();
                    let q = 1 + u32::try_from(rng.below(3)).unwrap();
                    batch.push(req(&sale, &user(u), q, now));
                    who.push((u, q));
                }
                let out = f.store.reserve(&batch).await.unwrap();
                for ((u, q), got) in who.into_iter().zip(out) {
                    match (model.reserve(u, q, now), got) {
                        (Ok(id), Ok(hold)) => {
                            *did.entry("reserve").or_default() += 1;
                            pairs.insert(id, Pair { hold, order: None });
                        }
                        (Err(LedgerError::Refused(want)), Err(refusal)) => {
                            *did.entry("refused").or_default() += 1;
                            assert_eq!(want, refusal, "step {step}")
                        }
                        (want, got) => panic!("step {step}: model {want:?}, store {got:?}"),
                    }
                }
            }
            4 => {
                if let Some(id) = pick(rng.next()) {
                    let p = &pairs[&id];
                    let want = model.release(id, now);
                    let got = f
                        .store
                        .release_hold(&p.hold.user_id, &p.hold.id, now)
                        .await
                        .unwrap();
                    assert_eq!(
                        want.is_ok(),
                        got.is_ok(),
                        "step {step}: {want:?} vs {got:?}"
                    );
                    if got.is_ok() {
                        *did.entry("release").or_default() += 1;
                    }
                }
            }
            5 | 6 => {
                if let Some(id) = pick(rng.next()) {
                    let want = model.pay(id, now);
                    let p = pairs.get_mut(&id).unwrap();
                    let got = checkout(&*f.store, &p.hold.user_id, &[&p.hold], now).await;
                    assert_eq!(
                        want.is_ok(),
                        got.is_ok(),
                        "step {step}: {want:?} vs {got:?}"
                    );
                    if let Ok(order) = got {
                        let out = pay(
                            &*f.store,
                            &order,
                            authorized(&format!("ref-{seed:x}-{step}"), false),
                            now,
                        )
                        .await;
                        assert!(
                            matches!(out, PaymentApplied::Done(ref o) if o.status == OrderStatus::Confirmed),
                            "step {step}: {out:?}"
                        );
                        p.order = Some(order.id);
                        *did.entry("pay").or_default() += 1;
                    }
                }
            }
            7 => {
                if let Some(id) = pick(rng.next()) {
                    let want = model.refund(id);
                    let p = &pairs[&id];
                    match &p.order {
                        Some(order) => {
                            let got = f
                                .store
                                .cancel_order(&p.hold.user_id, order, now)
                                .await
                                .unwrap()
                                .unwrap();
                            assert_eq!(
                                want.is_ok(),
                                got.is_ok(),
                                "step {step}: {want:?} vs {got:?}"
                            );
                            if got.is_ok() {
                                *did.entry("refund").or_default() += 1;
                            }
                        }
                        None => assert!(want.is_err(), "step {step}"),
                    }
                }
            }
            // Checkouts that do not end in a sale: the model does not change.
            8 => {
                if let Some(id) = pick(rng.next()) {
                    let p = &pairs[&id];
                    let live = model.holds[&id].state == HoldState::Active
                        && now < model.holds[&id].expires_at;
                    let got = checkout(&*f.store, &p.hold.user_id, &[&p.hold], now).await;
                    assert_eq!(live, got.is_ok(), "step {step}: {got:?}");
                    if let Ok(order) = got {
                        *did.entry("abandoned checkout").or_default() += 1;
                        if rng.below(2) == 0 {
                            let declined = PaymentResult::Declined {
                                reference: Some(format!("ref-d{seed:x}-{step}")),
                                reason: "declined".into(),
                            };
                            pay(&*f.store, &order, declined, now).await;
                        } else {
                            let c = f
                                .store
                                .cancel_order(&p.hold.user_id, &order.id, now)
                                .await
                                .unwrap();
                            assert!(
                                matches!(c, Some(Ok(Cancelled::Cancelled(_)))),
                                "step {step}"
                            );
                        }
                    }
                }
            }
            9 | 10 => now = now.plus_millis(i64::try_from(rng.below(2_000)).unwrap()),
            _ => {
                let want = model.expire_due(now);
                let got = f.store.expire_due_holds(now, 1_000).await.unwrap();
                assert_eq!(want, got.len(), "step {step}");
                *did.entry("expired").or_default() += u32::try_from(want).unwrap();
            }
        }
        compare(&*f.store, &sale.id, &model, USERS, step).await;
    }
    let end = now.plus_secs(10);
    assert_eq!(
        model.expire_due(end),
        f.store.expire_due_holds(end, 1_000).await.unwrap().len()
    );
    compare(&*f.store, &sale.id, &model, USERS, steps).await;
    assert_eq!(model.stock.held, 0);
    did
}

/// Conformance check `randomized_operations_match_the_reference_model`: three seeded runs (each
/// on its own sale in the same store) compared step by step with `SaleLedger`.
pub async fn randomized_operations_match_the_reference_model(store: Arc<dyn Store>) {
    let mut did: BTreeMap<&str, u32> = BTreeMap::new();
    for seed in [0x9E37_79B9_7F4A_7C15, 0xD1B5_4A32_D192_ED03, 42] {
        for (op, n) in randomized_run(&store, seed, 200).await {
            *did.entry(op).or_default() += n;
        }
    }
    println!("randomized coverage: {did:?}");
    for op in [
        "reserve",
        "refused",
        "release",
        "pay",
        "refund",
        "abandoned checkout",
        "expired",
    ] {
        assert!(
            did.get(op).copied().unwrap_or(0) >= 3,
            "too few {op}: {did:?}"
        );
    }
}

/// Holds that lapse within the window are warned once each, through an outbox event written in
/// the same transaction; holds outside the window, ended holds and warned holds are not.
pub async fn expiring_holds_are_warned_once_through_the_outbox(store: Arc<dyn Store>) {
    let f = Fx { store };
    let sale = new_sale(&*f.store, 10, 10).await;
    let (a, b) = (user(1), user(2));
    // Holds last HOLD_SECS from when they were made.
    let soon = reserve_one(&*f.store, &sale, &a, 2, T0).await;
    let later = reserve_one(&*f.store, &sale, &b, 1, T0.plus_secs(120)).await;
    let released = reserve_one(&*f.store, &sale, &b, 1, T0).await;
    f.store
        .release_hold(&b, &released.id, T0.plus_secs(1))
        .await
        .unwrap()
        .unwrap();
    let window = 60_000;
    let now = soon.expires_at.plus_secs(-30);
    assert_eq!(
        f.store.warn_expiring_holds(now, window, 100).await.unwrap(),
        1
    );
    assert_eq!(
        f.store.warn_expiring_holds(now, window, 100).await.unwrap(),
        0,
        "warned once"
    );
    let events = claim_all(&*f.store, now).await;
    let warnings: Vec<&OutboxEvent> = events
        .iter()
        .filter(|e| e.kind == EventKind::HoldExpiring)
        .collect();
    assert_eq!(warnings.len(), 1, "{events:?}");
    assert_eq!(warnings[0].user_id, a);
    assert_eq!(warnings[0].data["hold_id"], soon.id.as_str());
    assert_eq!(warnings[0].data["quantity"], 2);
    assert_eq!(warnings[0].data["seconds_left"], 30);
    // The later hold comes into the window in its turn; a lapsed hold is not warned.
    let now = later.expires_at.plus_secs(-10);
    assert_eq!(
        f.store.warn_expiring_holds(now, window, 100).await.unwrap(),
        1
    );
    let now = later.expires_at.plus_secs(1);
    assert_eq!(
        f.store.warn_expiring_holds(now, window, 100).await.unwrap(),
        0
    );
    checked(&*f.store, &sale.id).await;
}

/// A feed pages in the order notifications were added: one added late with an older id (a
/// redelivered or slow event) still comes after a cursor taken before it was added.
pub async fn notifications_page_in_the_order_they_were_added(store: Arc<dyn Store>) {
    let a = user(1);
    // ULID-shaped: `older` sorts first.
    let older = "01HZZZZZZZZZZZZZZZZZZZZZ0A".to_owned();
    let newer = "01HZZZZZZZZZZZZZZZZZZZZZ0B".to_owned();
    let note = |id: &str| Notification {
        id: id.to_owned(),
        user_id: a.clone(),
        kind: EventKind::OrderConfirmed,
        created_at: T0,
        data: serde_json::json!({}),
    };
    assert!(store.append_notification(&note(&newer)).await.unwrap());
    let first = store.notifications(&a, None, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    // The reader's cursor is now `newer`; the late event arrives with an older id.
    assert!(store.append_notification(&note(&older)).await.unwrap());
    let next = store.notifications(&a, Some(&newer), 10).await.unwrap();
    let ids: Vec<&str> = next.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, [older.as_str()], "the late one is after the cursor");
    let all = store.notifications(&a, None, 10).await.unwrap();
    let ids: Vec<&str> = all.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(
        ids,
        [newer.as_str(), older.as_str()],
        "in the order they were added"
    );
    assert!(store
        .notifications(&a, Some(&older), 10)
        .await
        .unwrap()
        .is_empty());
}
