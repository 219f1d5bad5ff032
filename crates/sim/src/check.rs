//! The judge's rows as they are, read straight from the database file behind the
//! application's back, and the invariants of DESIGN.md that can be checked on them alone or
//! against the previous reading.

use std::collections::BTreeMap;
use std::path::Path;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::SqlitePool;

use stampede_core::{HoldState, OrderStatus, Timestamp};

use crate::gateway::{Charge, ChargeState};

/// A hold row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRow {
    /// Ids are kept as stored text: the checker compares, it never parses them back.
    pub sale_id: String,
    pub user_id: String,
    pub quantity: i64,
    pub state: HoldState,
    pub expires_at: i64,
}

/// An order row with its items and payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    /// The buyer, as stored.
    pub user_id: String,
    pub status: OrderStatus,
    /// (hold id, sale id, quantity)
    pub items: Vec<(String, String, i64)>,
    pub payment_status: Option<String>,
    pub reference: Option<String>,
}

/// A sale's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleRow {
    /// Signed, as stored: a negative count must show, not wrap.
    pub total: i64,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
    pub limit: i64,
}

/// Everything the checker reads, in one read transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub sales: BTreeMap<String, SaleRow>,
    pub holds: BTreeMap<String, HoldRow>,
    pub orders: BTreeMap<String, OrderRow>,
    /// (sale, user) → units
    pub user_units: BTreeMap<(String, String), i64>,
}

/// A read-only connection to the simulation's database.
pub async fn inspector(db: &Path) -> Result<SqlitePool, String> {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(db).read_only(true))
        .await
        .map_err(|e| format!("opening the inspector: {e}"))
}

fn db(e: sqlx::Error) -> String {
    format!("inspector query: {e}")
}

/// Reads the rows the invariants are about.
pub async fn snapshot(pool: &SqlitePool) -> Result<Snapshot, String> {
    let mut tx = pool.begin().await.map_err(db)?;
    let mut snap = Snapshot::default();
    let sales: Vec<(String, i64, i64, i64, i64, i64)> =
        sqlx::query_as("SELECT id, total_stock, available, held, sold, per_user_limit FROM sales")
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
    for (id, total, available, held, sold, limit) in sales {
        snap.sales.insert(
            id,
            SaleRow {
                total,
                available,
                held,
                sold,
                limit,
            },
        );
    }
    let holds: Vec<(String, String, String, i64, String, i64)> =
        sqlx::query_as("SELECT id, sale_id, user_id, quantity, state, expires_at FROM holds")
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
    for (id, sale_id, user_id, quantity, state, expires_at) in holds {
        let state = HoldState::parse(&state).ok_or_else(|| format!("hold state {state}"))?;
        snap.holds.insert(
            id,
            HoldRow {
                sale_id,
                user_id,
                quantity,
                state,
                expires_at,
            },
        );
    }
    type OrderJoin = (String, String, String, Option<String>, Option<String>);
    let orders: Vec<OrderJoin> = sqlx::query_as(
        "SELECT o.id, o.user_id, o.status, p.status, p.reference FROM orders o \
         LEFT JOIN payments p ON p.order_id = o.id",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    for (id, user_id, status, payment_status, reference) in orders {
        let status = OrderStatus::parse(&status).ok_or_else(|| format!("order status {status}"))?;
        snap.orders.insert(
            id,
            OrderRow {
                user_id,
                status,
                items: Vec::new(),
                payment_status,
                reference,
            },
        );
    }
    let items: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT order_id, hold_id, sale_id, quantity FROM order_items ORDER BY rowid",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    for (order, hold, sale, quantity) in items {
        let Some(o) = snap.orders.get_mut(&order) else {
            return Err(format!("order item of missing order {order}"));
        };
        o.items.push((hold, sale, quantity));
    }
    let units: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT sale_id, user_id, units FROM user_units")
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
    for (sale, user, n) in units {
        if n != 0 {
            snap.user_units.insert((sale, user), n);
        }
    }
    tx.commit().await.map_err(db)?;
    Ok(snap)
}

/// Invariants 1 and 2 and the order/payment bookkeeping, on one snapshot and the gateway's
/// ledger; and "each hold ends once", "orders move only along their state machine" against
/// the previous snapshot.
pub fn invariants(
    snap: &Snapshot,
    prev: &Snapshot,
    charges: &[Charge],
    gateway_violations: &[(String, String)],
    lost_captures: &std::collections::BTreeSet<String>,
    now: Timestamp,
) -> Result<(), String> {
    // Recompute held, sold and per-buyer units from the rows.
    let mut held: BTreeMap<&str, i64> = BTreeMap::new();
    let mut sold: BTreeMap<&str, i64> = BTreeMap::new();
    let mut units: BTreeMap<(String, String), i64> = BTreeMap::new();
    for h in snap.holds.values() {
        if h.state == HoldState::Active {
            *held.entry(&h.sale_id).or_default() += h.quantity;
            *units
                .entry((h.sale_id.clone(), h.user_id.clone()))
                .or_default() += h.quantity;
        }
    }
    let mut paid_holds: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, o) in &snap.orders {
        if matches!(o.status, OrderStatus::Confirmed | OrderStatus::Refunded) {
            for (hold, _, _) in &o.items {
                *paid_holds.entry(hold).or_default() += 1;
            }
        }
        if o.status == OrderStatus::Confirmed {
            for (hold, sale, q) in &o.items {
                *sold.entry(sale).or_default() += q;
                *units.entry((sale.clone(), o.user_id.clone())).or_default() += q;
                match snap.holds.get(hold) {
                    Some(h) if h.state == HoldState::Converted || h.state == HoldState::Expired => {
                    }
                    other => {
                        return Err(format!(
                            "confirmed order {id} pays for hold {hold} in state {:?}",
                            other.map(|h| h.state)
                        ))
                    }
                }
            }
        }
    }
    for (hold, n) in &paid_holds {
        if *n > 1 {
            return Err(format!("hold {hold} is paid for by {n} orders"));
        }
    }
    for (id, s) in &snap.sales {
        for (term, v) in [
            ("available", s.available),
            ("held", s.held),
            ("sold", s.sold),
        ] {
            if v < 0 {
                return Err(format!("sale {id}: {term} is negative ({v})"));
            }
        }
        if s.available + s.held + s.sold != s.total {
            return Err(format!(
                "sale {id}: available {} + held {} + sold {} != total {}",
                s.available, s.held, s.sold, s.total
            ));
        }
        let rows_held = held.get(id.as_str()).copied().unwrap_or(0);
        let rows_sold = sold.get(id.as_str()).copied().unwrap_or(0);
        if (rows_held, rows_sold) != (s.held, s.sold) {
            return Err(format!(
                "sale {id}: counters say held {} sold {}, rows say held {rows_held} sold {rows_sold}",
                s.held, s.sold
            ));
        }
        if rows_held + rows_sold > s.total {
            return Err(format!(
                "sale {id} oversold: {rows_held} held + {rows_sold} sold > {} units",
                s.total
            ));
        }
    }
    units.retain(|_, n| *n != 0);
    if units != snap.user_units {
        return Err(format!(
            "per-buyer units disagree with the rows: stored {:?}, rows {units:?}",
            snap.user_units
        ));
    }
    for ((sale, user), n) in &units {
        let limit = snap.sales.get(sale).map(|s| s.limit).unwrap_or(0);
        if *n > limit {
            return Err(format!(
                "buyer {user} holds or owns {n} units of sale {sale}, over the limit of {limit}"
            ));
        }
    }
    // Each hold ends once, and never before its time by expiry.
    for (id, h) in &snap.holds {
        if let Some(before) = prev.holds.get(id) {
            if before.state != HoldState::Active && before.state != h.state {
                return Err(format!(
                    "hold {id} ended twice: {:?} then {:?}",
                    before.state, h.state
                ));
            }
            if before.state != HoldState::Active && before.quantity != h.quantity {
                return Err(format!("ended hold {id} changed quantity"));
            }
        }
        if h.state == HoldState::Expired && h.expires_at > now.0 {
            return Err(format!(
                "hold {id} expired at {} before its time {}",
                now.0, h.expires_at
            ));
        }
        if h.state == HoldState::Converted && !paid_holds.contains_key(id.as_str()) {
            return Err(format!("hold {id} is converted but no order paid for it"));
        }
    }
    for (id, before) in &prev.holds {
        if !snap.holds.contains_key(id) {
            return Err(format!("hold {id} vanished (was {:?})", before.state));
        }
    }
    for (id, before) in &prev.orders {
        let Some(o) = snap.orders.get(id) else {
            return Err(format!("order {id} vanished (was {:?})", before.status));
        };
        if o.status != before.status && before.status.transition(o.status).is_err() {
            return Err(format!(
                "order {id} went {:?} -> {:?}",
                before.status, o.status
            ));
        }
    }
    // Money: one authorization per order, at most one capture per charge, captured only for
    // a confirmed order, and a confirmed order's money captured.
    // A charge whose capture was lost stays authorized; cancelling its order then asks for
    // a refund of money never taken, which the provider refuses: part of the same loss.
    if let Some((_, v)) = gateway_violations
        .iter()
        .find(|(reference, _)| !lost_captures.contains(reference))
    {
        return Err(format!("wrong-way money move at the gateway: {v}"));
    }
    let mut per_order: BTreeMap<&str, usize> = BTreeMap::new();
    let by_reference: BTreeMap<&str, &Charge> =
        charges.iter().map(|c| (c.reference.as_str(), c)).collect();
    for c in charges {
        *per_order.entry(c.order_id.as_str()).or_default() += 1;
        if c.captures > 1 {
            return Err(format!(
                "charge {} captured {} times",
                c.reference, c.captures
            ));
        }
        let order = snap
            .orders
            .values()
            .find(|o| o.reference.as_deref() == Some(c.reference.as_str()));
        let status = order.map(|o| o.status);
        let wrong = match c.state {
            ChargeState::Captured => status != Some(OrderStatus::Confirmed),
            ChargeState::Refunded => status != Some(OrderStatus::Refunded),
            _ => false,
        };
        if wrong {
            return Err(format!(
                "charge {} is {:?}, its order is {status:?}",
                c.reference, c.state
            ));
        }
    }
    for (order, n) in per_order {
        if n > 1 {
            return Err(format!("order {order} was authorized {n} times"));
        }
    }
    for (id, o) in &snap.orders {
        let wanted = match o.status {
            OrderStatus::Confirmed => Some(ChargeState::Captured),
            OrderStatus::Refunded => Some(ChargeState::Refunded),
            _ => None,
        };
        if let Some(wanted) = wanted {
            let charge = o.reference.as_deref().and_then(|r| by_reference.get(r));
            let lost = charge.is_some_and(|c| {
                c.state == ChargeState::Authorized && lost_captures.contains(&c.reference)
            });
            if charge.map(|c| c.state) != Some(wanted) && !lost {
                return Err(format!(
                    "order {id} is {:?} but its charge is {:?}",
                    o.status,
                    charge.map(|c| c.state)
                ));
            }
            let payment = o.payment_status.as_deref();
            let stored = if wanted == ChargeState::Captured {
                "captured"
            } else {
                "refunded"
            };
            if payment != Some(stored) {
                return Err(format!(
                    "order {id} is {:?} but its payment is {payment:?}",
                    o.status
                ));
            }
        }
    }
    Ok(())
}
