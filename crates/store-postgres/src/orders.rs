//! Orders and payments: checkout over live holds, the gateway's answer, cancellation.
//!
//! Invariants:
//! * a hold is in at most one `pending_payment` order (its `order_id` column), and only a
//!   live hold of the buyer may enter one;
//! * recording an authorization is all-or-nothing: either every hold of the order becomes sold
//!   units (converted, or retaken after lapsing when the caller allows it) and the order is
//!   confirmed, or no stock moves at all and the order fails with `hold_expired`;
//! * every order and payment status change goes through `OrderStatus::transition` /
//!   `PaymentStatus::transition`, and its `UPDATE` is guarded by the status it was read in.
//! * an order leaving `pending_payment` for `confirmed` or `payment_failed` writes exactly one
//!   outbox event (`order_confirmed` / `payment_failed`) in the same transaction; a replayed
//!   or pending answer writes none.

use sqlx::{PgConnection, PgPool};

use stampede_app::ports::{
    Cancelled, CheckoutError, GatewayOwed, NewOrder, OwedPayment, PaymentApplied, PaymentResult,
    PortResult,
};
use stampede_core::judge::judge_reserve_in_drop;
use stampede_core::{
    Currency, HoldId, HoldState, Money, Order, OrderId, OrderItem, OrderStatus, Payment, PaymentId,
    PaymentStatus, SaleId, Timestamp, UserId,
};

use crate::error::{internal, OrPort};
use crate::holds;
use crate::outbox;
use crate::rows::{self, col, col_money, col_ts, col_u32, col_word};
use crate::txstock::TxStock;

/// Why a lapsed authorization failed, as stored on the payment.
pub(crate) const HOLD_EXPIRED: &str = "hold_expired";

/// The buyer's order with its items (in checkout order) and its payment. Orders are
/// partitioned by user: the user is part of the key.
pub(crate) async fn load(
    conn: &mut PgConnection,
    user: &UserId,
    id: &OrderId,
) -> PortResult<Option<Order>> {
    let Some(row) = sqlx::query(
        "SELECT id, user_id, status, total, currency, created_at FROM orders \
         WHERE user_id = $1 AND id = $2",
    )
    .bind(user.as_str())
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .port()?
    else {
        return Ok(None);
    };
    let items = sqlx::query(
        "SELECT sale_id, hold_id, quantity, unit_price FROM order_items \
         WHERE user_id = $1 AND order_id = $2 ORDER BY position",
    )
    .bind(user.as_str())
    .bind(id.as_str())
    .fetch_all(&mut *conn)
    .await
    .port()?
    .iter()
    .map(|r| {
        Ok(OrderItem {
            sale_id: SaleId::from_trusted(col(r, "sale_id")?),
            hold_id: HoldId::from_trusted(col(r, "hold_id")?),
            quantity: col_u32(r, "quantity")?,
            unit_price: col_money(r, "unit_price")?,
        })
    })
    .collect::<PortResult<Vec<_>>>()?;
    let payment = sqlx::query(
        "SELECT id, order_id, status, method, reference, amount, failure_reason, updated_at \
         FROM payments WHERE order_id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .port()?
    .map(|r| {
        Ok::<_, stampede_app::ports::PortError>(Payment {
            id: PaymentId::from_trusted(col(&r, "id")?),
            order_id: OrderId::from_trusted(col(&r, "order_id")?),
            status: rows::payment_status(&r, "status")?,
            method: col(&r, "method")?,
            reference: col(&r, "reference")?,
            amount: col_money(&r, "amount")?,
            failure_reason: col(&r, "failure_reason")?,
            updated_at: col_ts(&r, "updated_at")?,
        })
    })
    .transpose()?;
    Ok(Some(Order {
        id: OrderId::from_trusted(col(&row, "id")?),
        user_id: UserId::from_trusted(col(&row, "user_id")?),
        status: col_word(&row, "status", OrderStatus::parse)?,
        items,
        total: col_money(&row, "total")?,
        currency: Currency::from_trusted(col(&row, "currency")?),
        created_at: col_ts(&row, "created_at")?,
        payment,
    }))
}

/// The user who placed an order, found through its payment (unpartitioned, one per order).
async fn owner(conn: &mut PgConnection, id: &OrderId) -> PortResult<Option<UserId>> {
    let user: Option<String> =
        sqlx::query_scalar("SELECT user_id FROM payments WHERE order_id = $1")
            .bind(id.as_str())
            .fetch_optional(&mut *conn)
            .await
            .port()?;
    Ok(user.map(UserId::from_trusted))
}

/// Locks the buyer's order row for the rest of the transaction, then loads it: two answers
/// for one order (a webhook and the synchronous reply, on two nodes) are applied one after
/// the other, the second seeing the first's outcome.
async fn lock_and_load(
    conn: &mut PgConnection,
    user: &UserId,
    id: &OrderId,
) -> PortResult<Option<Order>> {
    let locked =
        sqlx::query("SELECT 1 FROM orders WHERE user_id = $1 AND id = $2 FOR NO KEY UPDATE")
            .bind(user.as_str())
            .bind(id.as_str())
            .fetch_optional(&mut *conn)
            .await
            .port()?;
    if locked.is_none() {
        return Ok(None);
    }
    load(conn, user, id).await
}

async fn load_existing(conn: &mut PgConnection, user: &UserId, id: &OrderId) -> PortResult<Order> {
    load(conn, user, id)
        .await?
        .ok_or_else(|| internal(format!("order {id} vanished inside its transaction")))
}

/// Moves the order to `to` if that is a legal move from the status it was read in.
async fn set_status(
    conn: &mut PgConnection,
    order: &Order,
    to: OrderStatus,
    now: Timestamp,
) -> PortResult<()> {
    let to = order.status.transition(to).map_err(internal)?;
    let done = sqlx::query(
        "UPDATE orders SET status = $1, updated_at = $2 \
             WHERE user_id = $3 AND id = $4 AND status = $5",
    )
    .bind(to.as_str())
    .bind(now.0)
    .bind(order.user_id.as_str())
    .bind(order.id.as_str())
    .bind(order.status.as_str())
    .execute(&mut *conn)
    .await
    .port()?;
    if done.rows_affected() != 1 {
        return Err(internal(format!(
            "order {} changed status meanwhile",
            order.id
        )));
    }
    Ok(())
}

/// Moves the order's payment to `to` (a legal move only), recording the gateway's reference
/// (kept if `None`), the failure reason (cleared if `None`) and the money move this leaves
/// owed to the gateway (see [`GatewayOwed`]).
async fn set_payment(
    conn: &mut PgConnection,
    order: &Order,
    to: PaymentStatus,
    reference: Option<&str>,
    failure_reason: Option<&str>,
    owed: Option<GatewayOwed>,
    now: Timestamp,
) -> PortResult<()> {
    let payment = payment_of(order)?;
    let to = payment.status.transition(to).map_err(internal)?;
    let done = sqlx::query(
        "UPDATE payments SET status = $1, reference = COALESCE($2, reference), \
         failure_reason = $3, updated_at = $4, gateway_owed = $7 \
         WHERE id = $5 AND status = $6",
    )
    .bind(to.as_str())
    .bind(reference)
    .bind(failure_reason)
    .bind(now.0)
    .bind(payment.id.as_str())
    .bind(payment.status.as_str())
    .bind(owed.map(GatewayOwed::as_str))
    .execute(&mut *conn)
    .await
    .port()?;
    if done.rows_affected() != 1 {
        return Err(internal(format!(
            "payment {} changed status meanwhile",
            payment.id
        )));
    }
    Ok(())
}

fn payment_of(order: &Order) -> PortResult<&Payment> {
    order
        .payment
        .as_ref()
        .ok_or_else(|| internal(format!("order {} has no payment", order.id)))
}

/// Lets the holds go of an order that is no longer pending, so they can join another one.
async fn release_holds_from(
    conn: &mut PgConnection,
    user: &UserId,
    order: &OrderId,
) -> PortResult<()> {
    sqlx::query("UPDATE holds SET order_id = NULL WHERE user_id = $1 AND order_id = $2")
        .bind(user.as_str())
        .bind(order.as_str())
        .execute(&mut *conn)
        .await
        .port()?;
    Ok(())
}

/// Checkout: a `pending_payment` order over live holds of the buyer, with a `pending` payment.
pub(crate) async fn create(
    pool: &PgPool,
    new: &NewOrder,
) -> PortResult<Result<Order, CheckoutError>> {
    let mut tx = pool.begin().await.port()?;
    let mut ids: Vec<&HoldId> = Vec::with_capacity(new.hold_ids.len());
    for id in &new.hold_ids {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let mut holds = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(row) = holds::find(&mut tx, &new.user_id, id).await? else {
            return Ok(Err(CheckoutError::HoldNotFound));
        };
        if row.hold.user_id != new.user_id {
            return Ok(Err(CheckoutError::HoldNotFound));
        }
        if !row.hold.is_live_at(new.now) {
            return Ok(Err(CheckoutError::HoldExpired));
        }
        if row.in_pending_order {
            return Ok(Err(CheckoutError::HoldInPendingOrder));
        }
        holds.push(row.hold);
    }
    let Some(first) = holds.first() else {
        return Ok(Err(CheckoutError::HoldNotFound));
    };
    let currency = first.currency.clone();
    if holds.iter().any(|h| h.currency != currency) {
        return Ok(Err(CheckoutError::MixedCurrencies));
    }
    let total = holds.iter().fold(Money(0), |sum, h| {
        Money(sum.0.saturating_add(h.unit_price.times(h.quantity).0))
    });

    sqlx::query(
        "INSERT INTO orders (id, user_id, status, total, currency, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(new.order_id.as_str())
    .bind(new.user_id.as_str())
    .bind(OrderStatus::PendingPayment.as_str())
    .bind(total.0)
    .bind(currency.as_str())
    .bind(new.now.0)
    .execute(&mut *tx)
    .await
    .port()?;
    for (position, h) in (0_i64..).zip(&holds) {
        sqlx::query(
            "INSERT INTO order_items (order_id, user_id, hold_id, sale_id, position, quantity, \
             unit_price) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(new.order_id.as_str())
        .bind(new.user_id.as_str())
        .bind(h.id.as_str())
        .bind(h.sale_id.as_str())
        .bind(position)
        .bind(i64::from(h.quantity))
        .bind(h.unit_price.0)
        .execute(&mut *tx)
        .await
        .port()?;
        sqlx::query("UPDATE holds SET order_id = $1 WHERE user_id = $2 AND id = $3")
            .bind(new.order_id.as_str())
            .bind(new.user_id.as_str())
            .bind(h.id.as_str())
            .execute(&mut *tx)
            .await
            .port()?;
    }
    sqlx::query(
        "INSERT INTO payments (id, order_id, user_id, status, method, reference, amount, \
         failure_reason, updated_at) VALUES ($1, $2, $3, $4, $5, NULL, $6, NULL, $7)",
    )
    .bind(new.payment_id.as_str())
    .bind(new.order_id.as_str())
    .bind(new.user_id.as_str())
    .bind(PaymentStatus::Pending.as_str())
    .bind(&new.method)
    .bind(total.0)
    .bind(new.now.0)
    .execute(&mut *tx)
    .await
    .port()?;
    let order = load_existing(&mut tx, &new.user_id, &new.order_id).await?;
    tx.commit().await.port()?;
    Ok(Ok(order))
}

/// One line of an order with the current state of its hold.
struct Line {
    hold_id: HoldId,
    sale_id: SaleId,
    user_id: UserId,
    quantity: u32,
    hold_quantity: u32,
    state: HoldState,
    expires_at: Timestamp,
}

/// The order's lines in checkout order, their holds locked for the rest of the transaction.
async fn lines(conn: &mut PgConnection, user: &UserId, order: &OrderId) -> PortResult<Vec<Line>> {
    sqlx::query(
        "SELECT i.hold_id, i.sale_id, i.quantity, h.user_id, h.quantity AS hold_quantity, \
         h.state, h.expires_at FROM order_items i \
         JOIN holds h ON h.user_id = i.user_id AND h.id = i.hold_id \
         WHERE i.user_id = $1 AND i.order_id = $2 ORDER BY i.position FOR NO KEY UPDATE OF h",
    )
    .bind(user.as_str())
    .bind(order.as_str())
    .fetch_all(&mut *conn)
    .await
    .port()?
    .iter()
    .map(|r| {
        Ok(Line {
            hold_id: HoldId::from_trusted(col(r, "hold_id")?),
            sale_id: SaleId::from_trusted(col(r, "sale_id")?),
            user_id: UserId::from_trusted(col(r, "user_id")?),
            quantity: col_u32(r, "quantity")?,
            hold_quantity: col_u32(r, "hold_quantity")?,
            state: col_word(r, "state", HoldState::parse)?,
            expires_at: col_ts(r, "expires_at")?,
        })
    })
    .collect()
}

/// Works out, in memory, what an authorization does to each hold of the order. Returns the
/// hold endings to write, or `None` if some hold cannot be honoured (then `stock` must be
/// discarded).
async fn plan_authorization(
    conn: &mut PgConnection,
    stock: &mut TxStock,
    lines: &[Line],
    retake: bool,
    now: Timestamp,
) -> PortResult<Option<Vec<(HoldId, HoldState, HoldState)>>> {
    let sales: Vec<&SaleId> = lines.iter().map(|l| &l.sale_id).collect();
    // Taking stock again for a lapsed hold is a reservation, judged under its drop's limit
    // too, which needs the drop's other sales locked; a plain conversion does not.
    let may_retake = retake
        && lines
            .iter()
            .any(|l| !(l.state == HoldState::Active && now < l.expires_at));
    if may_retake {
        stock.lock_sales_with_drops(conn, &sales).await?;
    } else {
        stock.lock_sales(conn, &sales).await?;
    }
    let mut endings = Vec::new();
    for line in lines {
        stock.touch(conn, &line.sale_id, &line.user_id).await?;
        if line.state == HoldState::Active && now < line.expires_at {
            if line.hold_quantity != line.quantity {
                return Err(internal(format!(
                    "hold {} changed quantity inside a pending order",
                    line.hold_id
                )));
            }
            stock.sell(&line.sale_id, line.quantity)?;
            endings.push((line.hold_id.clone(), line.state, HoldState::Converted));
            continue;
        }
        if !retake || line.state == HoldState::Converted {
            return Ok(None);
        }
        if line.state == HoldState::Active {
            // Due but not swept yet: expire it first, exactly as the sweeper would have, so
            // the outcome does not depend on when the sweeper last ran.
            stock.unhold(&line.sale_id, &line.user_id, line.hold_quantity)?;
            endings.push((line.hold_id.clone(), line.state, HoldState::Expired));
        }
        let Some(sale) = stock.sale(conn, &line.sale_id).await? else {
            return Ok(None);
        };
        let status = sale.status_at(now);
        let available = sale.stock.available;
        let limit = sale.per_user_limit;
        let units = stock.units(conn, &line.sale_id, &line.user_id).await?;
        let drop = stock.drop_units(conn, &line.sale_id, &line.user_id).await?;
        if judge_reserve_in_drop(status, available, units, limit, drop, line.quantity).is_err() {
            return Ok(None);
        }
        stock.retake(&line.sale_id, &line.user_id, line.quantity)?;
    }
    Ok(Some(endings))
}

/// Records the gateway's answer for a pending order, with its effect on holds and stock.
pub(crate) async fn apply_payment(
    pool: &PgPool,
    id: &OrderId,
    result: &PaymentResult,
    now: Timestamp,
) -> PortResult<Option<PaymentApplied>> {
    let mut tx = pool.begin().await.port()?;
    let Some(user) = owner(&mut tx, id).await? else {
        return Ok(None);
    };
    let Some(order) = lock_and_load(&mut tx, &user, id).await? else {
        return Ok(None);
    };
    if order.status != OrderStatus::PendingPayment {
        return Ok(Some(PaymentApplied::AlreadySettled(order)));
    }
    let applied = match result {
        PaymentResult::Declined { reference, reason } => {
            set_status(&mut tx, &order, OrderStatus::PaymentFailed, now).await?;
            set_payment(
                &mut tx,
                &order,
                PaymentStatus::Declined,
                reference.as_deref(),
                Some(reason),
                None,
                now,
            )
            .await?;
            release_holds_from(&mut tx, &user, id).await?;
            outbox::insert(
                &mut tx,
                &stampede_app::ports::OutboxEvent::payment_failed(&order, reason, now),
            )
            .await?;
            PaymentApplied::Done(load_existing(&mut tx, &user, id).await?)
        }
        PaymentResult::Pending { reference } => {
            let payment = payment_of(&order)?;
            sqlx::query("UPDATE payments SET reference = $1, updated_at = $2 WHERE id = $3")
                .bind(reference)
                .bind(now.0)
                .bind(payment.id.as_str())
                .execute(&mut *tx)
                .await
                .port()?;
            sqlx::query("UPDATE orders SET updated_at = $1 WHERE user_id = $2 AND id = $3")
                .bind(now.0)
                .bind(user.as_str())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .port()?;
            PaymentApplied::Done(load_existing(&mut tx, &user, id).await?)
        }
        PaymentResult::Abandoned { reference, reason } => {
            // Only an authorization the gateway made has money to release.
            let known = reference.is_some() || payment_of(&order)?.reference.is_some();
            set_status(&mut tx, &order, OrderStatus::PaymentFailed, now).await?;
            set_payment(
                &mut tx,
                &order,
                PaymentStatus::Voided,
                reference.as_deref(),
                Some(reason),
                known.then_some(GatewayOwed::Void),
                now,
            )
            .await?;
            release_holds_from(&mut tx, &user, id).await?;
            outbox::insert(
                &mut tx,
                &stampede_app::ports::OutboxEvent::payment_failed(&order, reason, now),
            )
            .await?;
            PaymentApplied::Done(load_existing(&mut tx, &user, id).await?)
        }
        PaymentResult::Authorized { reference, retake } => {
            let lines = lines(&mut tx, &user, id).await?;
            let mut stock = TxStock::default();
            match plan_authorization(&mut tx, &mut stock, &lines, *retake, now).await? {
                Some(endings) => {
                    for (hold, from, to) in &endings {
                        holds::end(&mut tx, &user, hold, *from, *to).await?;
                    }
                    stock.flush(&mut tx).await?;
                    set_status(&mut tx, &order, OrderStatus::Confirmed, now).await?;
                    set_payment(
                        &mut tx,
                        &order,
                        PaymentStatus::Captured,
                        Some(reference),
                        None,
                        Some(GatewayOwed::Capture),
                        now,
                    )
                    .await?;
                    outbox::insert(
                        &mut tx,
                        &stampede_app::ports::OutboxEvent::order_confirmed(&order, now),
                    )
                    .await?;
                    PaymentApplied::Done(load_existing(&mut tx, &user, id).await?)
                }
                None => {
                    // All or nothing: no stock moved. The money must go back at the gateway.
                    drop(stock);
                    set_status(&mut tx, &order, OrderStatus::PaymentFailed, now).await?;
                    set_payment(
                        &mut tx,
                        &order,
                        PaymentStatus::Voided,
                        Some(reference),
                        Some(HOLD_EXPIRED),
                        Some(GatewayOwed::Void),
                        now,
                    )
                    .await?;
                    release_holds_from(&mut tx, &user, id).await?;
                    let event =
                        stampede_app::ports::OutboxEvent::payment_failed(&order, HOLD_EXPIRED, now);
                    outbox::insert(&mut tx, &event).await?;
                    PaymentApplied::HoldLapsed(load_existing(&mut tx, &user, id).await?)
                }
            }
        }
    };
    tx.commit().await.port()?;
    Ok(Some(applied))
}

/// The order paid with this gateway reference.
pub(crate) async fn by_payment_reference(
    pool: &PgPool,
    reference: &str,
) -> PortResult<Option<Order>> {
    let mut conn = pool.acquire().await.port()?;
    let found: Option<(String, String)> =
        sqlx::query_as("SELECT user_id, order_id FROM payments WHERE reference = $1")
            .bind(reference)
            .fetch_optional(&mut *conn)
            .await
            .port()?;
    match found {
        Some((user, id)) => {
            load(
                &mut conn,
                &UserId::from_trusted(user),
                &OrderId::from_trusted(id),
            )
            .await
        }
        None => Ok(None),
    }
}

/// The buyer's own order (another buyer's is "not found").
pub(crate) async fn own(pool: &PgPool, user: &UserId, id: &OrderId) -> PortResult<Option<Order>> {
    let mut conn = pool.acquire().await.port()?;
    load(&mut conn, user, id).await
}

/// The buyer's orders, newest first.
pub(crate) async fn of_user(pool: &PgPool, user: &UserId) -> PortResult<Vec<Order>> {
    let mut tx = pool.begin().await.port()?;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM orders WHERE user_id = $1 ORDER BY created_at DESC, id DESC",
    )
    .bind(user.as_str())
    .fetch_all(&mut *tx)
    .await
    .port()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(load_existing(&mut tx, user, &OrderId::from_trusted(id)).await?);
    }
    tx.commit().await.port()?;
    Ok(out)
}

/// Cancels the buyer's order: a paid one is refunded (its units available again), a pending
/// one cancelled (its holds stay, free for another order).
pub(crate) async fn cancel(
    pool: &PgPool,
    user: &UserId,
    id: &OrderId,
    now: Timestamp,
) -> PortResult<Option<Result<Cancelled, String>>> {
    let mut tx = pool.begin().await.port()?;
    let Some(order) = lock_and_load(&mut tx, user, id).await? else {
        return Ok(None);
    };
    let cancelled = match order.status {
        OrderStatus::Confirmed => {
            let reference = payment_of(&order)?
                .reference
                .clone()
                .ok_or_else(|| internal(format!("paid order {id} has no payment reference")))?;
            let mut stock = TxStock::default();
            let sales: Vec<&SaleId> = order.items.iter().map(|i| &i.sale_id).collect();
            stock.lock_sales(&mut tx, &sales).await?;
            for item in &order.items {
                stock.touch(&mut tx, &item.sale_id, user).await?;
                stock.refund(&item.sale_id, user, item.quantity)?;
            }
            stock.flush(&mut tx).await?;
            set_status(&mut tx, &order, OrderStatus::Refunded, now).await?;
            // A refund of money whose capture is still owed must capture first.
            let owed = match owed_of(&mut tx, &order).await? {
                Some(GatewayOwed::Capture | GatewayOwed::CaptureThenRefund) => {
                    GatewayOwed::CaptureThenRefund
                }
                _ => GatewayOwed::Refund,
            };
            set_payment(
                &mut tx,
                &order,
                PaymentStatus::Refunded,
                None,
                None,
                Some(owed),
                now,
            )
            .await?;
            Cancelled::Refunded {
                order: load_existing(&mut tx, user, id).await?,
                reference,
                owed,
            }
        }
        OrderStatus::PendingPayment => {
            set_status(&mut tx, &order, OrderStatus::Cancelled, now).await?;
            let owed = payment_of(&order)?
                .reference
                .is_some()
                .then_some(GatewayOwed::Void);
            set_payment(
                &mut tx,
                &order,
                PaymentStatus::Voided,
                None,
                None,
                owed,
                now,
            )
            .await?;
            release_holds_from(&mut tx, user, id).await?;
            Cancelled::Cancelled(load_existing(&mut tx, user, id).await?)
        }
        other => return Ok(Some(Err(other.as_str().to_owned()))),
    };
    tx.commit().await.port()?;
    Ok(Some(Ok(cancelled)))
}

/// The money move still owed to the gateway for this order's payment.
async fn owed_of(conn: &mut PgConnection, order: &Order) -> PortResult<Option<GatewayOwed>> {
    let payment = payment_of(order)?;
    let word: Option<String> =
        sqlx::query_scalar("SELECT gateway_owed FROM payments WHERE id = $1")
            .bind(payment.id.as_str())
            .fetch_optional(&mut *conn)
            .await
            .port()?
            .flatten();
    word.map(|w| {
        GatewayOwed::parse(&w).ok_or_else(|| internal(format!("unknown gateway_owed {w:?}")))
    })
    .transpose()
}

/// Payments with a money move owed to the gateway, oldest change first.
pub(crate) async fn owed(pool: &PgPool, limit: u32) -> PortResult<Vec<OwedPayment>> {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT id, order_id, reference, gateway_owed FROM payments \
         WHERE gateway_owed IS NOT NULL AND reference IS NOT NULL \
         ORDER BY updated_at, id LIMIT $1",
    )
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .port()?;
    rows.into_iter()
        .map(|(id, order_id, reference, word)| {
            Ok(OwedPayment {
                payment_id: PaymentId::from_trusted(id),
                order_id: OrderId::from_trusted(order_id),
                reference,
                owed: GatewayOwed::parse(&word)
                    .ok_or_else(|| internal(format!("unknown gateway_owed {word:?}")))?,
            })
        })
        .collect()
}

/// The gateway acknowledged `done`: what is owed becomes `next`, if `done` is still owed.
pub(crate) async fn owed_done(
    pool: &PgPool,
    payment: &PaymentId,
    done: GatewayOwed,
    next: Option<GatewayOwed>,
    now: Timestamp,
) -> PortResult<bool> {
    let changed = sqlx::query(
        "UPDATE payments SET gateway_owed = $1, updated_at = $2 \
         WHERE id = $3 AND gateway_owed = $4",
    )
    .bind(next.map(GatewayOwed::as_str))
    .bind(now.0)
    .bind(payment.as_str())
    .bind(done.as_str())
    .execute(pool)
    .await
    .port()?;
    Ok(changed.rows_affected() == 1)
}

/// Pending orders nobody will settle (see `Store::stuck_orders`), oldest first.
pub(crate) async fn stuck(
    pool: &PgPool,
    unanswered_before: Timestamp,
    deadline_before: Timestamp,
    limit: u32,
) -> PortResult<Vec<Order>> {
    let mut conn = pool.acquire().await.port()?;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT o.user_id, o.id FROM orders o JOIN payments p \
         ON p.order_id = o.id AND p.user_id = o.user_id \
         WHERE o.status = 'pending_payment' \
         AND ((p.reference IS NULL AND o.created_at <= $1) OR o.created_at <= $2) \
         ORDER BY o.created_at, o.id LIMIT $3",
    )
    .bind(unanswered_before.0)
    .bind(deadline_before.0)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await
    .port()?;
    let mut out = Vec::with_capacity(rows.len());
    for (user, id) in rows {
        let (user, id) = (UserId::from_trusted(user), OrderId::from_trusted(id));
        if let Some(order) = load(&mut conn, &user, &id).await? {
            out.push(order);
        }
    }
    Ok(out)
}
