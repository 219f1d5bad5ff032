//! Orders and payments, for both engines: checkout over live holds, the gateway's answer,
//! cancellation, and the money moves owed to the gateway.
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
//!
//! Order rows are keyed by their buyer too (`keyed`: PostgreSQL's partitions need it); the
//! statements whose columns differ are [`Judging`]'s. A transaction locks the order row, then
//! its holds, then its sales in id order: the lock order of [`crate::judging`].

use sqlx::{Pool, Transaction};

use stampede_app::ports::{
    Cancelled, CheckoutError, CheckoutWrite, CheckoutWritten, GatewayOwed, NewOrder, OutboxEvent,
    OwedDone, OwedPayment, PaymentAnswer, PaymentApplied, PaymentResult, PortResult,
};
use stampede_core::checkout::{
    self, AnswerPlan, CancelPlan, LineStep, MoneyEvent, OrderLine, Settlement,
};
use stampede_core::{
    HoldId, HoldState, Order, OrderId, OrderStatus, Payment, PaymentId, SaleId, Timestamp, UserId,
};

use crate::engine::{
    begin_write, commit, each_in_one, find_on, list, statement, Bind, Conn, InBatch, Pending, Run,
    Statement,
};
use crate::error::OrPort;
use crate::judging::{exactly_one, lock_own, Judging};
use crate::misc::insert_audits;
use crate::outbox::insert as write_event;
use crate::rows::{self, col, col_opt_word, col_word, ORDER_COLS, PAYMENT_COLS};
use crate::txstock::TxStock;
use crate::{holds, internal};

/// The order's payment; every order has one.
fn payment_of(order: &Order) -> PortResult<&Payment> {
    order
        .payment
        .as_ref()
        .ok_or_else(|| internal(format!("order {} has no payment", order.id)))
}

/// `sql` with the buyer bound as `$1` and the order as `$2`: the key of the buyer's order rows.
fn keyed<'q, DB: Judging>(sql: &'q str, user: &'q UserId, id: &'q OrderId) -> Statement<'q, DB> {
    statement::<DB>(sql).text(user.as_str()).text(id.as_str())
}

/// The buyer's order with its items (in checkout order) and its payment.
async fn load<DB: Judging>(
    conn: &mut impl Conn<DB>,
    user: &UserId,
    id: &OrderId,
) -> PortResult<Option<Order>> {
    let sql = format!("SELECT {ORDER_COLS} FROM orders WHERE user_id = $1 AND id = $2");
    let Some(row) = keyed::<DB>(&sql, user, id).first(conn).await? else {
        return Ok(None);
    };
    let sql = "SELECT sale_id, hold_id, quantity, unit_price FROM order_items \
         WHERE user_id = $1 AND order_id = $2 ORDER BY position";
    let items = keyed::<DB>(sql, user, id)
        .all(conn)
        .await?
        .iter()
        .map(rows::order_item)
        .collect::<PortResult<Vec<_>>>()?;
    let sql = format!("SELECT {PAYMENT_COLS} FROM payments WHERE order_id = $1");
    let payment = find_on(conn, &sql, id.as_str(), rows::payment).await?;
    rows::order(&row, items, payment).map(Some)
}

/// [`load`] of an order known to exist (orders are never deleted).
async fn load_existing<DB: Judging>(
    conn: &mut impl Conn<DB>,
    user: &UserId,
    id: &OrderId,
) -> PortResult<Order> {
    load(conn, user, id)
        .await?
        .ok_or_else(|| internal(format!("order {id} vanished")))
}

/// The orders of `found`, in row order: rows of the buyer (`user_id`) and the order (column
/// `id`), each an order that exists.
async fn load_each<DB: Judging>(
    conn: &mut impl Conn<DB>,
    found: &[DB::Row],
    id: &str,
) -> PortResult<Vec<Order>> {
    let mut out = Vec::with_capacity(found.len());
    for row in found {
        let user = UserId::from_trusted(col(row, "user_id")?);
        out.push(load_existing(conn, &user, &OrderId::from_trusted(col(row, id)?)).await?);
    }
    Ok(out)
}

/// Locks the buyer's order row for the rest of the transaction, then loads it: two answers
/// for one order (a webhook and the synchronous reply, on two nodes) are applied one after
/// the other, the second seeing the first's outcome.
async fn lock_and_load<DB: Judging>(
    conn: &mut impl Conn<DB>,
    user: &UserId,
    id: &OrderId,
) -> PortResult<Option<Order>> {
    if !lock_own(conn, "orders", user.as_str(), id.as_str()).await? {
        return Ok(None);
    }
    load(conn, user, id).await
}

/// Carries out a settlement the core planned for `order`: both status moves, each guarded by
/// the status read, the money move now owed, the holds letting go of the order, and its
/// outbox event (if any). Stock the settlement returns is the caller's to move first.
async fn settle<DB: Judging>(
    conn: &mut impl Conn<DB>,
    order: &Order,
    plan: &Settlement,
    now: Timestamp,
) -> PortResult<()> {
    let payment = payment_of(order)?;
    let sql = "UPDATE orders SET status = $3, updated_at = $4 \
         WHERE user_id = $1 AND id = $2 AND status = $5";
    let done = keyed::<DB>(sql, &order.user_id, &order.id)
        .text(plan.order.as_str())
        .int(now.0)
        .text(order.status.as_str())
        .run(conn)
        .await?;
    exactly_one(
        done,
        format_args!("order {} changed status meanwhile", order.id),
    )?;
    let done = statement::<DB>(
        "UPDATE payments SET status = $1, reference = COALESCE($2, reference), \
         failure_reason = $3, updated_at = $4, gateway_owed = $7 \
         WHERE id = $5 AND status = $6",
    )
    .text(plan.payment.as_str())
    .opt_text(plan.reference.as_deref())
    .opt_text(plan.failure_reason.as_deref())
    .int(now.0)
    .text(payment.id.as_str())
    .text(payment.status.as_str())
    .opt_text(plan.owed.map(GatewayOwed::as_str))
    .run(conn)
    .await?;
    exactly_one(
        done,
        format_args!("payment {} changed status meanwhile", payment.id),
    )?;
    if plan.release_holds {
        let sql = "UPDATE holds SET order_id = NULL WHERE user_id = $1 AND order_id = $2";
        keyed::<DB>(sql, &order.user_id, &order.id)
            .run(conn)
            .await?;
    }
    let event = match &plan.event {
        Some(MoneyEvent::OrderConfirmed) => OutboxEvent::order_confirmed(order, now),
        Some(MoneyEvent::PaymentFailed { reason }) => {
            OutboxEvent::payment_failed(order, reason, now)
        }
        None => return Ok(()),
    };
    write_event(conn, &event).await
}

/// Checkouts, many buyers' in one transaction ([`each_in_one`]): each a `pending_payment` order
/// over live holds of its buyer, with a `pending` payment, as the core's
/// [`checkout::plan_checkout`] makes it of the holds found (each locked).
pub async fn create_many<DB: Judging>(
    writer: &Pool<DB>,
    news: &[NewOrder],
) -> Vec<PortResult<Result<Order, CheckoutError>>> {
    each_in_one(writer, news).await
}

impl<DB: Judging> InBatch<DB> for NewOrder {
    const OP: &'static str = "create_orders";
    type Answer = Result<Order, CheckoutError>;
    fn run<'c>(&'c self, tx: &'c mut Transaction<'static, DB>) -> Pending<'c, Self::Answer> {
        Box::pin(create(tx, self))
    }
}

/// Any step of a checkout, in a batch of every kind ([`stampede_app::ports::Store::write_checkouts`]):
/// each runs as its own kind's batch item would.
impl<DB: Judging> InBatch<DB> for CheckoutWrite {
    const OP: &'static str = "checkout_writes";
    type Answer = CheckoutWritten;
    fn run<'c>(&'c self, tx: &'c mut Transaction<'static, DB>) -> Pending<'c, CheckoutWritten> {
        use CheckoutWrite as W;
        use CheckoutWritten as A;
        Box::pin(async move {
            Ok(match self {
                W::Order(x) => A::Order(InBatch::<DB>::run(x, tx).await?),
                W::Payment(x) => A::Payment(InBatch::<DB>::run(x, tx).await?),
                W::OwedDone(x) => A::OwedDone(InBatch::<DB>::run(x, tx).await?),
                W::Claim(x) => A::Claim(InBatch::<DB>::run(x, tx).await?),
                W::Answer(x) => {
                    InBatch::<DB>::run(x, tx).await?;
                    A::Answer
                }
                W::Notice(x) => A::Notice(InBatch::<DB>::run(x, tx).await?),
            })
        })
    }
}

/// One checkout of [`create_many`], inside the batch's transaction; a refusal writes nothing.
async fn create<DB: Judging>(
    tx: &mut impl Conn<DB>,
    new: &NewOrder,
) -> PortResult<Result<Order, CheckoutError>> {
    let mut found = Vec::with_capacity(new.hold_ids.len());
    for id in new.distinct_holds() {
        found.push(holds::find(tx, &new.user_id, id, true).await?);
    }
    let order = match checkout::plan_checkout(new, &found) {
        Ok(order) => order,
        Err(refused) => return Ok(Err(refused)),
    };
    // The order row, its holds taken into it, its lines (positioned in checkout order) and
    // the payment: a statement each.
    let payment = payment_of(&order)?;
    let sql = "INSERT INTO orders (user_id, id, status, total, currency, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6)";
    keyed::<DB>(sql, &order.user_id, &order.id)
        .text(order.status.as_str())
        .int(order.total.0)
        .text(order.currency.as_str())
        .int(order.created_at.0)
        .run(tx)
        .await?;
    let ids: Vec<&str> = order.items.iter().map(|i| i.hold_id.as_str()).collect();
    let sql = format!(
        "UPDATE holds SET order_id = $3 WHERE id IN ({}) AND user_id = $2",
        DB::JSON_TEXTS
    );
    statement::<DB>(&sql)
        .string(serde_json::to_string(&ids).map_err(internal)?)
        .text(order.user_id.as_str())
        .text(order.id.as_str())
        .run(tx)
        .await?;
    let sql = format!(
        "INSERT INTO order_items (order_id, user_id, hold_id, sale_id, position, quantity, \
         unit_price) VALUES {}",
        crate::engine::values_list(order.items.len(), 7)
    );
    let mut q = statement::<DB>(&sql);
    for (position, item) in (0_i64..).zip(&order.items) {
        q = q
            .text(order.id.as_str())
            .text(order.user_id.as_str())
            .text(item.hold_id.as_str())
            .text(item.sale_id.as_str())
            .int(position)
            .int(i64::from(item.quantity))
            .int(item.unit_price.0);
    }
    q.run(tx).await?;
    statement::<DB>(
        "INSERT INTO payments (id, order_id, user_id, status, method, reference, amount, \
         failure_reason, updated_at) VALUES ($1, $2, $3, $4, $5, NULL, $6, NULL, $7)",
    )
    .text(payment.id.as_str())
    .text(order.id.as_str())
    .text(order.user_id.as_str())
    .text(payment.status.as_str())
    .text(&payment.method)
    .int(payment.amount.0)
    .int(payment.updated_at.0)
    .run(tx)
    .await?;
    Ok(Ok(order))
}

/// Carries out, in memory, what the core's [`checkout::convert_line`] decides for each line of
/// the buyer's order `id` on an authorization. Returns the hold endings to write, or `None` if
/// some hold cannot be honoured (then `stock` must be discarded).
async fn convert<DB: Judging>(
    conn: &mut impl Conn<DB>,
    stock: &mut TxStock,
    user: &UserId,
    id: &OrderId,
    retake: bool,
    now: Timestamp,
) -> PortResult<Option<Converted>> {
    // The order's lines in checkout order, their holds locked for the rest of the transaction.
    let sql = format!(
        "SELECT i.hold_id, i.sale_id, i.quantity, h.user_id, h.quantity AS hold_quantity, \
         h.state, h.expires_at FROM order_items i \
         JOIN holds h ON h.user_id = i.user_id AND h.id = i.hold_id \
         WHERE i.user_id = $1 AND i.order_id = $2 ORDER BY i.position{}",
        DB::LOCK_HOLDS
    );
    let lines = keyed::<DB>(&sql, user, id)
        .all(conn)
        .await?
        .iter()
        .map(rows::order_line)
        .collect::<PortResult<Vec<OrderLine>>>()?;
    let sales: Vec<&SaleId> = lines.iter().map(|l| &l.sale_id).collect();
    // Taking stock again for a lapsed hold is a reservation, judged under its drop's limit
    // too, which needs the drop's other sales locked; a plain conversion does not.
    let with_drops = checkout::may_retake(&lines, retake, now);
    stock.lock_sales(conn, &sales, with_drops).await?;
    let (mut endings, mut retaken) = (Vec::new(), Vec::new());
    for line in &lines {
        stock.touch(conn, &line.sale_id, &line.user_id).await?;
        let step = checkout::convert_line(line, retake, now).map_err(internal)?;
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
                let verdict = stock
                    .judge_more(conn, &line.sale_id, &line.user_id, line.quantity, now)
                    .await?;
                if verdict != Some(Ok(())) {
                    return Ok(None);
                }
                stock.retake(&line.sale_id, &line.user_id, line.quantity)?;
                if !retaken.contains(&line.sale_id) {
                    retaken.push(line.sale_id.clone());
                }
            }
        }
    }
    Ok(Some((endings, retaken)))
}

/// What an authorization did to an order's holds: each hold's ending (from, to), and the
/// sales whose stock it took again after a hold had lapsed.
type Converted = (Vec<(HoldId, HoldState, HoldState)>, Vec<SaleId>);

/// Records the gateway's answers for pending orders, many in one transaction
/// ([`each_in_one`]), each with its effect on holds and stock.
pub async fn apply_payments<DB: Judging>(
    writer: &Pool<DB>,
    answers: &[PaymentAnswer],
) -> Vec<PortResult<Option<PaymentApplied>>> {
    each_in_one(writer, answers).await
}

impl<DB: Judging> InBatch<DB> for PaymentAnswer {
    const OP: &'static str = "apply_payments";
    type Answer = Option<PaymentApplied>;
    fn run<'c>(&'c self, tx: &'c mut Transaction<'static, DB>) -> Pending<'c, Self::Answer> {
        Box::pin(async move {
            let applied = apply_payment(tx, &self.order, &self.result, self.now).await?;
            insert_audits(tx, &self.audit).await?;
            Ok(applied)
        })
    }
}

/// One answer of [`apply_payments`], as the core's [`checkout::plan_answer`] plans it; an
/// unknown or settled order writes nothing.
async fn apply_payment<DB: Judging>(
    tx: &mut impl Conn<DB>,
    id: &OrderId,
    result: &PaymentResult,
    now: Timestamp,
) -> PortResult<Option<PaymentApplied>> {
    // Through the payment (one per order): `orders` is keyed by buyer.
    let sql = "SELECT user_id FROM payments WHERE order_id = $1";
    let owner = find_on(tx, sql, id.as_str(), |r| col(r, "user_id")).await?;
    let Some(user) = owner.map(UserId::from_trusted) else {
        return Ok(None);
    };
    let Some(order) = lock_and_load(tx, &user, id).await? else {
        return Ok(None);
    };
    // `None`: a hold lapsed; else the sales whose stock was taken again. With the order as
    // written (built from what was read and written, not read back).
    let (retaken, order) = match checkout::plan_answer(&order, result).map_err(internal)? {
        AnswerPlan::AlreadySettled => return Ok(Some(PaymentApplied::AlreadySettled(order))),
        AnswerPlan::Await { reference } => {
            // An answer that comes later: records the gateway's reference, and the time.
            statement::<DB>("UPDATE payments SET reference = $1, updated_at = $2 WHERE id = $3")
                .text(&reference)
                .int(now.0)
                .text(payment_of(&order)?.id.as_str())
                .run(tx)
                .await?;
            let sql = "UPDATE orders SET updated_at = $3 WHERE user_id = $1 AND id = $2";
            keyed::<DB>(sql, &user, id).int(now.0).run(tx).await?;
            (
                Some(Vec::new()),
                checkout::awaiting(&order, &reference, now),
            )
        }
        AnswerPlan::Settle(plan) => {
            settle(tx, &order, &plan, now).await?;
            (Some(Vec::new()), plan.applied_to(&order, now))
        }
        AnswerPlan::Convert { reference, retake } => {
            let mut stock = TxStock::default();
            let converted = convert(tx, &mut stock, &user, id, retake, now).await?;
            let plan = checkout::plan_authorized(&order, &reference, converted.is_some())
                .map_err(internal)?;
            // All or nothing: without endings `stock` is dropped unflushed and no stock moves;
            // the money must go back at the gateway.
            if let Some((endings, _)) = &converted {
                for (hold, from, to) in endings {
                    holds::end(tx, &user, hold, *from, *to).await?;
                }
                stock.flush(tx).await?;
            }
            settle(tx, &order, &plan, now).await?;
            let after = plan.applied_to(&order, now);
            (converted.map(|(_, retaken)| retaken), after)
        }
    };
    debug_assert_eq!(
        Some(&order),
        load(tx, &user, id).await.ok().flatten().as_ref(),
        "the order as written is the order as stored"
    );
    Ok(Some(match retaken {
        None => PaymentApplied::HoldLapsed(order),
        Some(sales) if sales.is_empty() => PaymentApplied::Done(order),
        Some(sales) => PaymentApplied::Retook { order, sales },
    }))
}

/// The order paid with this gateway reference.
pub async fn by_payment_reference<DB: Judging>(
    reader: &Pool<DB>,
    reference: &str,
) -> PortResult<Option<Order>> {
    let mut conn = reader.acquire().await.port()?;
    let sql = "SELECT user_id, order_id FROM payments WHERE reference = $1";
    let q = statement::<DB>(sql).text(reference);
    // References are unique: one row at most.
    let found = q.all(&mut conn).await?;
    Ok(load_each(&mut conn, &found, "order_id").await?.pop())
}

/// The buyer's own order (another buyer's is "not found").
pub async fn own<DB: Judging>(
    reader: &Pool<DB>,
    user: &UserId,
    id: &OrderId,
) -> PortResult<Option<Order>> {
    let mut conn = reader.acquire().await.port()?;
    load(&mut conn, user, id).await
}

/// The buyer's orders, newest first.
pub async fn of_user<DB: Judging>(reader: &Pool<DB>, user: &UserId) -> PortResult<Vec<Order>> {
    let mut tx = reader.begin().await.port()?;
    let sql = "SELECT user_id, id FROM orders WHERE user_id = $1 ORDER BY created_at DESC, id DESC";
    let found = statement::<DB>(sql)
        .text(user.as_str())
        .all(&mut tx)
        .await?;
    let out = load_each(&mut tx, &found, "id").await?;
    tx.commit().await.port()?;
    Ok(out)
}

/// Cancels the buyer's order as the core's [`checkout::plan_cancel`] plans it: a paid one is
/// refunded (its units available again), a pending one cancelled (its holds stay, free for
/// another order); a final one is refused with its status.
pub async fn cancel<DB: Judging>(
    writer: &Pool<DB>,
    user: &UserId,
    id: &OrderId,
    now: Timestamp,
) -> PortResult<Option<Result<Cancelled, OrderStatus>>> {
    let mut tx = begin_write(writer).await?;
    let Some(order) = lock_and_load(&mut tx, user, id).await? else {
        return Ok(None);
    };
    // The money move still owed to the gateway for this order's payment.
    let sql = "SELECT gateway_owed FROM payments WHERE id = $1";
    let payment = payment_of(&order)?.id.as_str();
    let owed_now = find_on(&mut tx, sql, payment, |r| {
        col_opt_word(r, "gateway_owed", GatewayOwed::parse)
    })
    .await?
    .flatten();
    let (settlement, refunded) = match checkout::plan_cancel(&order, owed_now).map_err(internal)? {
        CancelPlan::Refund {
            settlement,
            reference,
            owed,
        } => (settlement, Some((reference, owed))),
        CancelPlan::Cancel(settlement) => (settlement, None),
        CancelPlan::Refused(status) => return Ok(Some(Err(status))),
    };
    // The stock the settlement returns (a refund's; none when a pending order is cancelled).
    let mut stock = TxStock::default();
    let sales: Vec<&SaleId> = settlement.stock_returned.iter().map(|(s, _)| s).collect();
    stock.lock_sales(&mut tx, &sales, false).await?;
    for (sale, quantity) in &settlement.stock_returned {
        stock.touch(&mut tx, sale, user).await?;
        stock.refund(sale, user, *quantity)?;
    }
    stock.flush(&mut tx).await?;
    settle(&mut tx, &order, &settlement, now).await?;
    let order = load_existing(&mut tx, user, id).await?;
    commit(tx, "cancel_order").await?;
    Ok(Some(Ok(match refunded {
        Some((reference, owed)) => Cancelled::Refunded {
            order,
            reference,
            owed,
        },
        None => Cancelled::Cancelled(order),
    })))
}

/// Payments with a money move owed to the gateway, oldest change first.
pub async fn owed<DB: Judging>(reader: &Pool<DB>, limit: u32) -> PortResult<Vec<OwedPayment>> {
    let q = statement::<DB>(
        "SELECT id, order_id, reference, gateway_owed FROM payments \
         WHERE gateway_owed IS NOT NULL AND reference IS NOT NULL \
         ORDER BY updated_at, id LIMIT $1",
    );
    list(q.int(i64::from(limit)), reader, |r| {
        Ok(OwedPayment {
            payment_id: PaymentId::from_trusted(col(r, "id")?),
            order_id: OrderId::from_trusted(col(r, "order_id")?),
            reference: col(r, "reference")?,
            owed: col_word(r, "gateway_owed", GatewayOwed::parse)?,
        })
    })
    .await
}

/// The gateway acknowledged moves: what each payment owes becomes its `next`, if its `done`
/// is still owed (whether it changed), many in one transaction ([`each_in_one`]).
pub async fn owed_done_many<DB: Judging>(
    writer: &Pool<DB>,
    moves: &[OwedDone],
) -> Vec<PortResult<bool>> {
    each_in_one(writer, moves).await
}

impl<DB: Judging> InBatch<DB> for OwedDone {
    const OP: &'static str = "payments_owed_done";
    type Answer = bool;
    fn run<'c>(&'c self, tx: &'c mut Transaction<'static, DB>) -> Pending<'c, bool> {
        Box::pin(async move {
            let changed = statement::<DB>(
                "UPDATE payments SET gateway_owed = $1, updated_at = $2 \
                 WHERE id = $3 AND gateway_owed = $4",
            )
            .opt_text(self.next.map(GatewayOwed::as_str))
            .int(self.now.0)
            .text(self.payment.as_str())
            .text(self.done.as_str())
            .run(tx)
            .await?;
            insert_audits(tx, &self.audit).await?;
            Ok(changed == 1)
        })
    }
}

/// Pending orders nobody will settle (see `Store::stuck_orders`), oldest first.
pub async fn stuck<DB: Judging>(
    reader: &Pool<DB>,
    unanswered_before: Timestamp,
    deadline_before: Timestamp,
    limit: u32,
) -> PortResult<Vec<Order>> {
    let mut conn = reader.acquire().await.port()?;
    let found = statement::<DB>(
        "SELECT o.user_id, o.id FROM orders o JOIN payments p ON p.order_id = o.id \
         WHERE o.status = 'pending_payment' \
         AND ((p.reference IS NULL AND o.created_at <= $1) OR o.created_at <= $2) \
         ORDER BY o.created_at, o.id LIMIT $3",
    )
    .int(unanswered_before.0)
    .int(deadline_before.0)
    .int(i64::from(limit))
    .all(&mut conn)
    .await?;
    load_each(&mut conn, &found, "id").await
}
