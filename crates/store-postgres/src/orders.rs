//! Orders and payments: checkout over live holds, the gateway's answer, cancellation.
//!
//! Invariants:
//! * a hold is in at most one `pending_payment` order (its `order_id` column), and only a
//!   live hold of the buyer may enter one;
//! * recording an authorization is all-or-nothing: either every hold of the order becomes sold
//!   units (converted, or retaken after lapsing when the caller allows it) and the order is
//!   confirmed, or no stock moves at all and the order fails with `hold_expired`;
//! * every decision is the core's plan (`stampede_core::checkout`): this module reads the facts,
//!   asks, and writes the answer; each status `UPDATE` is guarded by the status it was read in.
//! * an order leaving `pending_payment` for `confirmed` or `payment_failed` writes exactly one
//!   outbox event (`order_confirmed` / `payment_failed`) in the same transaction; a replayed
//!   or pending answer writes none.

use sqlx::{PgConnection, PgPool, Postgres};

use stampede_app::ports::{
    Cancelled, CheckoutError, GatewayOwed, NewOrder, OwedPayment, PaymentApplied, PaymentResult,
    PortResult,
};
use stampede_core::checkout::{
    self, AnswerPlan, CancelPlan, LineStep, OrderLine, PlanError, Settlement,
};
use stampede_core::judge::judge_reserve_in_drop;
use stampede_core::{
    HoldId, HoldState, Order, OrderId, OrderStatus, PaymentId, SaleId, Timestamp, UserId,
};
use stampede_store_sql::engine::Write;
use stampede_store_sql::orders as sql;

use crate::error::{internal, OrPort};
use crate::holds;
use crate::outbox;
use crate::rows;
use crate::txstock::TxStock;

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
    .map(rows::order_item)
    .collect::<PortResult<Vec<_>>>()?;
    let payment = sqlx::query(
        "SELECT id, order_id, status, method, reference, amount, failure_reason, updated_at \
         FROM payments WHERE order_id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .port()?
    .map(|r| rows::payment(&r))
    .transpose()?;
    rows::order(&row, items, payment).map(Some)
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

/// A broken money rule in what this transaction read: a bug or a corrupt row.
fn broken(e: PlanError) -> stampede_app::ports::PortError {
    internal(e)
}

/// Runs a plan's writes in order, refusing to go on if a guarded one lost a race.
async fn run(conn: &mut PgConnection, writes: Vec<Write<'_, Postgres>>) -> PortResult<()> {
    for write in writes {
        let done = write.statement.execute(&mut *conn).await.port()?;
        if let Some(what) = write.exactly_one {
            if done.rows_affected() != 1 {
                return Err(internal(format!("{what} changed status meanwhile")));
            }
        }
    }
    Ok(())
}

/// Carries out a settlement the core planned for `order` (see `stampede_store_sql::orders::
/// settle`), with its outbox event. Stock the settlement returns is the caller's to move first.
async fn settle(
    conn: &mut PgConnection,
    order: &Order,
    plan: &Settlement,
    now: Timestamp,
) -> PortResult<()> {
    run(conn, sql::settle(order, plan, now)?).await?;
    if let Some(event) = sql::money_event(order, plan, now) {
        outbox::insert(conn, &event).await?;
    }
    Ok(())
}

/// Checkout: a `pending_payment` order over live holds of the buyer, with a `pending` payment,
/// as the core's [`checkout::plan_checkout`] makes it of the holds found.
pub(crate) async fn create(
    pool: &PgPool,
    new: &NewOrder,
) -> PortResult<Result<Order, CheckoutError>> {
    let mut tx = pool.begin().await.port()?;
    let mut found = Vec::with_capacity(new.hold_ids.len());
    for id in new.distinct_holds() {
        found.push(holds::find(&mut tx, &new.user_id, id).await?);
    }
    let order = match checkout::plan_checkout(new, &found) {
        Ok(order) => order,
        Err(refused) => return Ok(Err(refused)),
    };
    let payment = sql::payment_of(&order)?;
    run(&mut tx, sql::insert_order(&order)).await?;
    for (position, item) in (0_i64..).zip(&order.items) {
        sqlx::query(
            "INSERT INTO order_items (order_id, user_id, hold_id, sale_id, position, quantity, \
             unit_price) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(order.id.as_str())
        .bind(order.user_id.as_str())
        .bind(item.hold_id.as_str())
        .bind(item.sale_id.as_str())
        .bind(position)
        .bind(i64::from(item.quantity))
        .bind(item.unit_price.0)
        .execute(&mut *tx)
        .await
        .port()?;
    }
    sqlx::query(
        "INSERT INTO payments (id, order_id, user_id, status, method, reference, amount, \
         failure_reason, updated_at) VALUES ($1, $2, $3, $4, $5, NULL, $6, NULL, $7)",
    )
    .bind(payment.id.as_str())
    .bind(order.id.as_str())
    .bind(order.user_id.as_str())
    .bind(payment.status.as_str())
    .bind(&payment.method)
    .bind(payment.amount.0)
    .bind(payment.updated_at.0)
    .execute(&mut *tx)
    .await
    .port()?;
    tx.commit().await.port()?;
    Ok(Ok(order))
}

/// The order's lines in checkout order, their holds locked for the rest of the transaction.
async fn lines(
    conn: &mut PgConnection,
    user: &UserId,
    order: &OrderId,
) -> PortResult<Vec<OrderLine>> {
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
    .map(rows::order_line)
    .collect()
}

/// Carries out, in memory, what the core's [`checkout::convert_line`] decides for each line of
/// an authorization. Returns the hold endings to write, or `None` if some hold cannot be
/// honoured (then `stock` must be discarded).
async fn convert(
    conn: &mut PgConnection,
    stock: &mut TxStock,
    lines: &[OrderLine],
    retake: bool,
    now: Timestamp,
) -> PortResult<Option<Vec<(HoldId, HoldState, HoldState)>>> {
    let sales: Vec<&SaleId> = lines.iter().map(|l| &l.sale_id).collect();
    // Taking stock again for a lapsed hold is a reservation, judged under its drop's limit
    // too, which needs the drop's other sales locked; a plain conversion does not.
    if checkout::may_retake(lines, retake, now) {
        stock.lock_sales_with_drops(conn, &sales).await?;
    } else {
        stock.lock_sales(conn, &sales).await?;
    }
    let mut endings = Vec::new();
    for line in lines {
        stock.touch(conn, &line.sale_id, &line.user_id).await?;
        let step = checkout::convert_line(line, retake, now).map_err(broken)?;
        if let Some(to) = step.hold_ending() {
            endings.push((line.hold_id.clone(), line.state, to));
        }
        match step {
            LineStep::Convert => stock.sell(&line.sale_id, line.quantity)?,
            LineStep::Lapsed => return Ok(None),
            LineStep::Retake { expire_first } => {
                if expire_first {
                    stock.unhold(&line.sale_id, &line.user_id, line.hold_quantity)?;
                }
                let Some(sale) = stock.sale(conn, &line.sale_id).await? else {
                    return Ok(None);
                };
                let status = sale.status_at(now);
                let available = sale.stock.available;
                let limit = sale.per_user_limit;
                let units = stock.units(conn, &line.sale_id, &line.user_id).await?;
                let drop = stock.drop_units(conn, &line.sale_id, &line.user_id).await?;
                if judge_reserve_in_drop(status, available, units, limit, drop, line.quantity)
                    .is_err()
                {
                    return Ok(None);
                }
                stock.retake(&line.sale_id, &line.user_id, line.quantity)?;
            }
        }
    }
    Ok(Some(endings))
}

/// Records the gateway's answer for a pending order, with its effect on holds and stock, as
/// the core's [`checkout::plan_answer`] plans it.
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
    let applied = match checkout::plan_answer(&order, result).map_err(broken)? {
        AnswerPlan::AlreadySettled => return Ok(Some(PaymentApplied::AlreadySettled(order))),
        AnswerPlan::Await { reference } => {
            run(&mut tx, sql::await_answer(&order, &reference, now)?).await?;
            PaymentApplied::Done(load_existing(&mut tx, &user, id).await?)
        }
        AnswerPlan::Settle(plan) => {
            settle(&mut tx, &order, &plan, now).await?;
            PaymentApplied::Done(load_existing(&mut tx, &user, id).await?)
        }
        AnswerPlan::Convert { reference, retake } => {
            let lines = lines(&mut tx, &user, id).await?;
            let mut stock = TxStock::default();
            let endings = convert(&mut tx, &mut stock, &lines, retake, now).await?;
            let plan =
                checkout::plan_authorized(&order, &reference, endings.is_some()).map_err(broken)?;
            match endings {
                Some(endings) => {
                    for (hold, from, to) in &endings {
                        holds::end(&mut tx, &user, hold, *from, *to).await?;
                    }
                    stock.flush(&mut tx).await?;
                    settle(&mut tx, &order, &plan, now).await?;
                    PaymentApplied::Done(load_existing(&mut tx, &user, id).await?)
                }
                None => {
                    // All or nothing: no stock moved. The money must go back at the gateway.
                    drop(stock);
                    settle(&mut tx, &order, &plan, now).await?;
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

/// Cancels the buyer's order as the core's [`checkout::plan_cancel`] plans it: a paid one is
/// refunded (its units available again), a pending one cancelled (its holds stay, free for
/// another order); a final one is refused with its status.
pub(crate) async fn cancel(
    pool: &PgPool,
    user: &UserId,
    id: &OrderId,
    now: Timestamp,
) -> PortResult<Option<Result<Cancelled, OrderStatus>>> {
    let mut tx = pool.begin().await.port()?;
    let Some(order) = lock_and_load(&mut tx, user, id).await? else {
        return Ok(None);
    };
    let owed_now = owed_of(&mut tx, &order).await?;
    let cancelled = match checkout::plan_cancel(&order, owed_now).map_err(broken)? {
        CancelPlan::Refund {
            settlement,
            reference,
            owed,
        } => {
            let mut stock = TxStock::default();
            let sales: Vec<&SaleId> = settlement.stock_returned.iter().map(|(s, _)| s).collect();
            stock.lock_sales(&mut tx, &sales).await?;
            for (sale, quantity) in &settlement.stock_returned {
                stock.touch(&mut tx, sale, user).await?;
                stock.refund(sale, user, *quantity)?;
            }
            stock.flush(&mut tx).await?;
            settle(&mut tx, &order, &settlement, now).await?;
            Cancelled::Refunded {
                order: load_existing(&mut tx, user, id).await?,
                reference,
                owed,
            }
        }
        CancelPlan::Cancel(settlement) => {
            settle(&mut tx, &order, &settlement, now).await?;
            Cancelled::Cancelled(load_existing(&mut tx, user, id).await?)
        }
        CancelPlan::Refused(status) => return Ok(Some(Err(status))),
    };
    tx.commit().await.port()?;
    Ok(Some(Ok(cancelled)))
}

/// The money move still owed to the gateway for this order's payment.
async fn owed_of(conn: &mut PgConnection, order: &Order) -> PortResult<Option<GatewayOwed>> {
    let word: Option<String> = sqlx::query_scalar(sql::OWED_OF)
        .bind(sql::payment_of(order)?.id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .port()?
        .flatten();
    word.as_deref().map(sql::owed_word).transpose()
}

/// Payments with a money move owed to the gateway, oldest change first.
pub(crate) async fn owed(pool: &PgPool, limit: u32) -> PortResult<Vec<OwedPayment>> {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(sql::OWED)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .port()?;
    rows.into_iter().map(sql::owed_payment).collect()
}

/// The gateway acknowledged `done`: what is owed becomes `next`, if `done` is still owed.
pub(crate) async fn owed_done(
    pool: &PgPool,
    payment: &PaymentId,
    done: GatewayOwed,
    next: Option<GatewayOwed>,
    now: Timestamp,
) -> PortResult<bool> {
    let changed = sql::owed_done::<Postgres>(payment, done, next, now)
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
