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

use std::collections::{HashMap, HashSet};

use sqlx::{Pool, Transaction};

use stampede_app::ports::{
    Cancelled, CheckoutError, CheckoutWrite, CheckoutWritten, GatewayOwed, IdempotencyStart,
    NewOrder, OutboxEvent, OwedDone, OwedPayment, PaymentAnswer, PaymentApplied, PortResult,
};
use stampede_core::checkout::{
    self, AnswerPlan, CancelPlan, FoundHold, LineStep, MoneyEvent, OrderLine, Settlement,
};
use stampede_core::{
    HoldId, Order, OrderId, OrderItem, OrderStatus, Payment, PaymentId, SaleId, Timestamp, UserId,
};

use crate::engine::{
    begin_write, commit, each_in_one, find_on, list, statement, Bind, Conn, InBatch, Pending, Run,
    Statement,
};
use crate::error::OrPort;
use crate::holds::{self, HoldEnding};
use crate::internal;
use crate::judging::{lock_many, lock_own, Judging};
use crate::misc::{answer_all, claim_all, insert_audits, notify_all};
use crate::outbox::{self, insert as write_events};
use crate::rows::{self, col, col_opt_word, col_word, ORDER_COLS, PAYMENT_COLS};
use crate::txstock::TxStock;

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
    Ok(load_many(conn, &[(user.as_str(), id.as_str())])
        .await?
        .remove(id))
}

/// The orders of many `(buyer, order)` keys, by id, with their items (in checkout order) and
/// payments: three statements whatever their number. A key naming no order of that buyer is
/// absent.
async fn load_many<DB: Judging>(
    conn: &mut impl Conn<DB>,
    keys: &[(&str, &str)],
) -> PortResult<HashMap<OrderId, Order>> {
    let mut found = HashMap::with_capacity(keys.len());
    if keys.is_empty() {
        return Ok(found);
    }
    let pairs = serde_json::to_string(keys).map_err(internal)?;
    let sql = format!(
        "SELECT order_id, sale_id, hold_id, quantity, unit_price FROM order_items \
         WHERE (user_id, order_id) IN ({}) ORDER BY order_id, position",
        DB::JSON_PAIRS
    );
    let mut items: HashMap<OrderId, Vec<_>> = HashMap::with_capacity(keys.len());
    for row in statement::<DB>(&sql)
        .string(pairs.clone())
        .all(conn)
        .await?
    {
        let order = OrderId::from_trusted(col(&row, "order_id")?);
        items
            .entry(order)
            .or_default()
            .push(rows::order_item(&row)?);
    }
    let ids: Vec<&str> = keys.iter().map(|(_, id)| *id).collect();
    let sql = format!(
        "SELECT {PAYMENT_COLS} FROM payments WHERE order_id IN ({})",
        DB::JSON_TEXTS
    );
    let ids = serde_json::to_string(&ids).map_err(internal)?;
    let mut payments = HashMap::with_capacity(keys.len());
    for row in statement::<DB>(&sql).string(ids).all(conn).await? {
        let payment = rows::payment(&row)?;
        payments.insert(payment.order_id.clone(), payment);
    }
    let sql = format!(
        "SELECT {ORDER_COLS} FROM orders WHERE (user_id, id) IN ({})",
        DB::JSON_PAIRS
    );
    for row in statement::<DB>(&sql).string(pairs).all(conn).await? {
        let id = OrderId::from_trusted(col(&row, "id")?);
        let lines = items.remove(&id).unwrap_or_default();
        let order = rows::order(&row, lines, payments.remove(&id))?;
        found.insert(id, order);
    }
    Ok(found)
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
    let mut keys = Vec::with_capacity(found.len());
    for row in found {
        let (user, order): (String, String) = (col(row, "user_id")?, col(row, id)?);
        keys.push((user, order));
    }
    let wanted: Vec<(&str, &str)> = keys.iter().map(|(u, o)| (u.as_str(), o.as_str())).collect();
    let mut orders = load_many(conn, &wanted).await?;
    keys.iter()
        .map(|(_, id)| {
            orders
                .remove(&OrderId::from_trusted(id.clone()))
                .ok_or_else(|| internal(format!("order {id} vanished")))
        })
        .collect()
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

/// Carries out a settlement the core planned for `order`: [`settle_all`] of one.
async fn settle<DB: Judging>(
    conn: &mut impl Conn<DB>,
    order: &Order,
    plan: &Settlement,
    now: Timestamp,
) -> PortResult<()> {
    settle_all(conn, &[(order, plan, now)]).await
}

/// Settlements per multi-row statement: well under either engine's limit on parameters.
const SETTLEMENTS_PER_STATEMENT: usize = 200;

/// Carries out settlements the core planned, each for its own order (at most one per order):
/// both status moves, each guarded by the status read (all or the batch fails), the money
/// move now owed, the holds letting go of the order, and its outbox event (if any); a
/// statement each for all of them. Stock a settlement returns is the caller's to move first.
async fn settle_all<DB: Judging>(
    conn: &mut impl Conn<DB>,
    settled: &[(&Order, &Settlement, Timestamp)],
) -> PortResult<()> {
    for chunk in settled.chunks(SETTLEMENTS_PER_STATEMENT) {
        let sql = format!(
            "UPDATE orders SET status = v.column3, updated_at = v.column4 \
             FROM (VALUES {}) AS v \
             WHERE orders.user_id = v.column1 AND orders.id = v.column2 \
             AND orders.status = v.column5",
            crate::engine::values_list(chunk.len(), 5)
        );
        let mut q = statement::<DB>(&sql);
        for (order, plan, now) in chunk {
            q = q
                .text(order.user_id.as_str())
                .text(order.id.as_str())
                .text(plan.order.as_str())
                .int(now.0)
                .text(order.status.as_str());
        }
        all_changed(
            q.run(conn).await?,
            chunk.len(),
            "an order changed status meanwhile",
        )?;
        let sql = format!(
            "UPDATE payments SET status = v.column2, \
             reference = COALESCE(v.column3, payments.reference), failure_reason = v.column4, \
             updated_at = v.column5, gateway_owed = v.column6 FROM (VALUES {}) AS v \
             WHERE payments.id = v.column1 AND payments.status = v.column7",
            crate::engine::values_list(chunk.len(), 7)
        );
        let mut q = statement::<DB>(&sql);
        for (order, plan, now) in chunk {
            let payment = payment_of(order)?;
            q = q
                .text(payment.id.as_str())
                .text(plan.payment.as_str())
                .opt_text(plan.reference.as_deref())
                .opt_text(plan.failure_reason.as_deref())
                .int(now.0)
                .opt_text(plan.owed.map(GatewayOwed::as_str))
                .text(payment.status.as_str());
        }
        all_changed(
            q.run(conn).await?,
            chunk.len(),
            "a payment changed status meanwhile",
        )?;
        let released: Vec<&Order> = chunk
            .iter()
            .filter(|(_, plan, _)| plan.release_holds)
            .map(|(order, _, _)| *order)
            .collect();
        if !released.is_empty() {
            let sql = format!(
                "UPDATE holds SET order_id = NULL FROM (VALUES {}) AS v \
                 WHERE holds.user_id = v.column1 AND holds.order_id = v.column2",
                crate::engine::values_list(released.len(), 2)
            );
            let mut q = statement::<DB>(&sql);
            for order in released {
                q = q.text(order.user_id.as_str()).text(order.id.as_str());
            }
            q.run(conn).await?;
        }
        let events: Vec<OutboxEvent> = chunk
            .iter()
            .filter_map(|(order, plan, now)| match &plan.event {
                Some(MoneyEvent::OrderConfirmed) => Some(OutboxEvent::order_confirmed(order, *now)),
                Some(MoneyEvent::PaymentFailed { reason }) => {
                    Some(OutboxEvent::payment_failed(order, reason, *now))
                }
                None => None,
            })
            .collect();
        write_events(conn, &events).await?;
    }
    Ok(())
}

/// `Ok` if a guarded multi-row write changed every row it named, else `Internal` (`broken`):
/// some row was not in the state it was read in.
fn all_changed(done: u64, wanted: usize, broken: &str) -> PortResult<()> {
    match usize::try_from(done) {
        Ok(done) if done == wanted => Ok(()),
        _ => Err(internal(format!("{broken} ({done} of {wanted} changed)"))),
    }
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
        Box::pin(async move { one_answer(create_all(tx, &[self]).await?) })
    }
    fn run_all<'c>(
        items: &'c [Self],
        tx: &'c mut Transaction<'static, DB>,
    ) -> Pending<'c, Vec<Self::Answer>> {
        Box::pin(async move {
            let news: Vec<&NewOrder> = items.iter().collect();
            create_all(tx, &news).await
        })
    }
}

/// The one answer of a batch of one.
fn one_answer<T>(mut answers: Vec<T>) -> PortResult<T> {
    match (answers.pop(), answers.is_empty()) {
        (Some(answer), true) => Ok(answer),
        _ => Err(internal("a batch of one gave other than one answer")),
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
                W::KeyedOrder(k) => {
                    let start = one_answer(claim_all(tx, &[&k.claim]).await?)?;
                    let order = match k.order_after(&start) {
                        Some(new) => Some(one_answer(create_all(tx, &[&new]).await?)?),
                        None => None,
                    };
                    A::KeyedOrder(start, order)
                }
                W::OutboxClaim(l) => {
                    A::OutboxClaimed(outbox::claim_in(tx, l.now, l.lease_ms, l.limit).await?)
                }
                W::OutboxDelivered(ids) => {
                    outbox::delivered_in(tx, ids).await?;
                    A::OutboxDelivered
                }
            })
        })
    }
    /// Steps done together, a multi-row statement or so per run of one kind ([`create_all`],
    /// [`apply_all`] and the others), as if one after another in the batch's order.
    ///
    /// Steps that touch different tables commute, so the batch is split into lanes that run
    /// one after the other, each in the batch's order: idempotency claims and answers (in one
    /// lane, claims first when no key comes twice, as rows of different keys commute); orders
    /// with gateway answers (holds, orders, payments, stock); finished money moves (a
    /// payment's `gateway_owed`, which is only set by the settlement that ends a pending order:
    /// a move's guard cannot match a payment an answer of the same batch still writes, and an
    /// answer for a settled order writes nothing); notifications; and last the outbox relay's
    /// leases and delivery marks. A keyed order is a claim in the first lane and, if the claim
    /// was new, an order in the second, at its place.
    ///
    /// The relay's steps touch only the outbox, to which the gateway answers of the second lane
    /// add events: a lease taken last also sees the events of answers after it in the batch, as
    /// if it had come after them, an order its caller (the relay, which waits for each step)
    /// could have had just as well; a delivery mark names events leased before.
    fn run_all<'c>(
        items: &'c [Self],
        tx: &'c mut Transaction<'static, DB>,
    ) -> Pending<'c, Vec<CheckoutWritten>> {
        use CheckoutWrite as W;
        use CheckoutWritten as A;
        Box::pin(async move {
            let mut answers: Vec<Option<CheckoutWritten>> = vec![None; items.len()];
            let keyed_claims: Vec<(usize, CheckoutWrite)> = items
                .iter()
                .enumerate()
                .filter_map(|(i, w)| match w {
                    W::KeyedOrder(k) => Some((i, W::Claim(k.claim.clone()))),
                    _ => None,
                })
                .collect();
            let keys_lane = |w: &CheckoutWrite| matches!(w, W::Claim(_) | W::Answer(_));
            let mut steps = lane_of(items, keys_lane, &keyed_claims);
            let keys = steps.iter().filter_map(|(_, w)| match w {
                W::Claim(c) => Some((c.user.as_str(), c.key.as_str())),
                W::Answer(a) => Some((a.user.as_str(), a.key.as_str())),
                _ => None,
            });
            if crate::engine::all_distinct(keys) {
                steps.sort_by_key(|(_, w)| matches!(w, W::Answer(_)));
            }
            let mut starts: Vec<(usize, IdempotencyStart)> = Vec::new();
            for (i, answer) in run_lane(tx, steps).await? {
                match (&items[i], answer) {
                    (W::KeyedOrder(_), A::Claim(start)) => starts.push((i, start)),
                    (_, answer) => answers[i] = Some(answer),
                }
            }
            let keyed_orders: Vec<(usize, CheckoutWrite)> = starts
                .iter()
                .filter_map(|(i, start)| match &items[*i] {
                    W::KeyedOrder(k) => Some((*i, W::Order(k.order_after(start)?))),
                    _ => None,
                })
                .collect();
            let orders_lane = |w: &CheckoutWrite| matches!(w, W::Order(_) | W::Payment(_));
            let steps = lane_of(items, orders_lane, &keyed_orders);
            let mut created: HashMap<usize, Result<Order, CheckoutError>> = HashMap::new();
            for (i, answer) in run_lane(tx, steps).await? {
                match (&items[i], answer) {
                    (W::KeyedOrder(_), A::Order(order)) => {
                        created.insert(i, order);
                    }
                    (_, answer) => answers[i] = Some(answer),
                }
            }
            for (i, start) in starts {
                answers[i] = Some(A::KeyedOrder(start, created.remove(&i)));
            }
            let owed = lane_of(items, |w| matches!(w, W::OwedDone(_)), &[]);
            let notices = lane_of(items, |w| matches!(w, W::Notice(_)), &[]);
            let relay = |w: &CheckoutWrite| matches!(w, W::OutboxClaim(_) | W::OutboxDelivered(_));
            for steps in [owed, notices, lane_of(items, relay, &[])] {
                for (i, answer) in run_lane(tx, steps).await? {
                    answers[i] = Some(answer);
                }
            }
            answers
                .into_iter()
                .map(|a| a.ok_or_else(|| internal("a checkout step went unanswered")))
                .collect()
        })
    }
}

/// The items of a lane (those `in_lane` takes) with the steps `derived` from other items at
/// those items' places, in the batch's order.
fn lane_of<'a>(
    items: &'a [CheckoutWrite],
    in_lane: impl Fn(&CheckoutWrite) -> bool,
    derived: &'a [(usize, CheckoutWrite)],
) -> Vec<(usize, &'a CheckoutWrite)> {
    let mut steps: Vec<(usize, &CheckoutWrite)> = items
        .iter()
        .enumerate()
        .filter(|(_, w)| in_lane(w))
        .chain(derived.iter().map(|(i, w)| (*i, w)))
        .collect();
    steps.sort_by_key(|(i, _)| *i);
    steps
}

/// One lane's steps (each with its item's place in the batch) in the order given, each run of
/// one kind done together; the answers with their places.
async fn run_lane<DB: Judging>(
    tx: &mut impl Conn<DB>,
    steps: Vec<(usize, &CheckoutWrite)>,
) -> PortResult<Vec<(usize, CheckoutWritten)>> {
    let (at, steps): (Vec<usize>, Vec<&CheckoutWrite>) = steps.into_iter().unzip();
    let done = run_in_order(tx, &steps).await?;
    if done.len() != at.len() {
        return Err(internal("a lane of checkout steps lost an answer"));
    }
    Ok(at.into_iter().zip(done).collect())
}

/// Steps in order, each run of one kind done together.
async fn run_in_order<DB: Judging>(
    tx: &mut impl Conn<DB>,
    steps: &[&CheckoutWrite],
) -> PortResult<Vec<CheckoutWritten>> {
    use CheckoutWrite as W;
    use CheckoutWritten as A;
    /// The steps of a run of one kind, as that kind.
    macro_rules! run_of {
        ($run:expr, $kind:ident) => {
            $run.iter()
                .filter_map(|w| match w {
                    W::$kind(x) => Some(x),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
    }
    let mut done = Vec::with_capacity(steps.len());
    let mut rest = steps;
    while let Some(first) = rest.first() {
        let kind = std::mem::discriminant(*first);
        let len = rest
            .iter()
            .take_while(|w| std::mem::discriminant(**w) == kind)
            .count();
        let (run, later) = rest.split_at(len);
        rest = later;
        let answers: Vec<CheckoutWritten> = match first {
            W::Order(_) => wrap(create_all(tx, &run_of!(run, Order)).await?, A::Order),
            W::Payment(_) => wrap(apply_all(tx, &run_of!(run, Payment)).await?, A::Payment),
            W::OwedDone(_) => wrap(
                owed_done_all(tx, &run_of!(run, OwedDone)).await?,
                A::OwedDone,
            ),
            W::Claim(_) => wrap(claim_all(tx, &run_of!(run, Claim)).await?, A::Claim),
            W::Answer(_) => wrap(answer_all(tx, &run_of!(run, Answer)).await?, |()| A::Answer),
            W::Notice(_) => wrap(notify_all(tx, &run_of!(run, Notice)).await?, A::Notice),
            W::KeyedOrder(_) => return Err(internal("a keyed order outside its lanes")),
            W::OutboxClaim(_) => {
                let mut claimed = Vec::with_capacity(run.len());
                for l in run_of!(run, OutboxClaim) {
                    let events = outbox::claim_in(tx, l.now, l.lease_ms, l.limit).await?;
                    claimed.push(A::OutboxClaimed(events));
                }
                claimed
            }
            W::OutboxDelivered(_) => {
                let ids: Vec<String> = run_of!(run, OutboxDelivered)
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect();
                outbox::delivered_in(tx, &ids).await?;
                vec![A::OutboxDelivered; run.len()]
            }
        };
        if answers.len() != run.len() {
            return Err(internal("a run of checkout steps lost an answer"));
        }
        done.extend(answers);
    }
    Ok(done)
}

/// Each answer of a run, as a step's answer.
fn wrap<T>(answers: Vec<T>, as_step: impl Fn(T) -> CheckoutWritten) -> Vec<CheckoutWritten> {
    answers.into_iter().map(as_step).collect()
}

/// Checkouts of [`create_many`] together, inside the batch's transaction, in a constant number
/// of statements whatever their number: every hold they name is locked and read at once, the
/// core plans each checkout in turn (a hold an earlier checkout of the batch took is in a
/// pending order for the later ones, as if each had committed), and the accepted orders are
/// written with one multi-row statement per table. A refusal writes nothing.
async fn create_all<DB: Judging>(
    tx: &mut impl Conn<DB>,
    news: &[&NewOrder],
) -> PortResult<Vec<Result<Order, CheckoutError>>> {
    let mut keys: Vec<(&str, &str)> = news
        .iter()
        .flat_map(|n| n.hold_ids.iter().map(|h| (n.user_id.as_str(), h.as_str())))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let found = holds::find_many(tx, &keys, true).await?;
    let mut taken: HashSet<&HoldId> = HashSet::new();
    let mut planned = Vec::with_capacity(news.len());
    for new in news {
        let seen: Vec<Option<FoundHold>> = new
            .distinct_holds()
            .into_iter()
            .map(|id| {
                found.get(id).map(|f| FoundHold {
                    hold: f.hold.clone(),
                    in_pending_order: f.in_pending_order || taken.contains(id),
                })
            })
            .collect();
        let plan = checkout::plan_checkout(new, &seen);
        if plan.is_ok() {
            taken.extend(new.distinct_holds());
        }
        planned.push(plan);
    }
    let orders: Vec<&Order> = planned.iter().filter_map(|p| p.as_ref().ok()).collect();
    for chunk in orders.chunks(ORDERS_PER_STATEMENT) {
        write_orders(tx, chunk).await?;
    }
    Ok(planned)
}

/// Orders (and, below, lines) per multi-row write: well under either engine's limit on bound
/// parameters (SQLite's 32,766), whatever the number of lines an order has.
const ORDERS_PER_STATEMENT: usize = 100;
/// Lines per multi-row write, as [`ORDERS_PER_STATEMENT`] orders.
const LINES_PER_STATEMENT: usize = 1_000;

/// New `pending_payment` orders as the core planned them: the order rows, their holds taken
/// into them, their lines (positioned in checkout order) and their payments, a statement each.
async fn write_orders<DB: Judging>(tx: &mut impl Conn<DB>, orders: &[&Order]) -> PortResult<()> {
    let sql = format!(
        "INSERT INTO orders (user_id, id, status, total, currency, created_at, updated_at) \
         VALUES {}",
        crate::engine::values_list(orders.len(), 7)
    );
    let mut q = statement::<DB>(&sql);
    for order in orders {
        q = q
            .text(order.user_id.as_str())
            .text(order.id.as_str())
            .text(order.status.as_str())
            .int(order.total.0)
            .text(order.currency.as_str())
            .int(order.created_at.0)
            .int(order.created_at.0);
    }
    q.run(tx).await?;
    let lines: Vec<(&Order, i64, &OrderItem)> = orders
        .iter()
        .flat_map(|o| {
            (0_i64..)
                .zip(&o.items)
                .map(move |(at, item)| (*o, at, item))
        })
        .collect();
    for chunk in lines.chunks(LINES_PER_STATEMENT) {
        let sql = format!(
            "UPDATE holds SET order_id = v.column3 FROM (VALUES {}) AS v \
             WHERE holds.user_id = v.column1 AND holds.id = v.column2",
            crate::engine::values_list(chunk.len(), 3)
        );
        let mut q = statement::<DB>(&sql);
        for (order, _, item) in chunk {
            q = q
                .text(order.user_id.as_str())
                .text(item.hold_id.as_str())
                .text(order.id.as_str());
        }
        let moved = q.run(tx).await?;
        debug_assert_eq!(
            moved,
            chunk.len() as u64,
            "every line's hold joined its order"
        );
        let sql = format!(
            "INSERT INTO order_items (order_id, user_id, hold_id, sale_id, position, quantity, \
             unit_price) VALUES {}",
            crate::engine::values_list(chunk.len(), 7)
        );
        let mut q = statement::<DB>(&sql);
        for (order, position, item) in chunk {
            q = q
                .text(order.id.as_str())
                .text(order.user_id.as_str())
                .text(item.hold_id.as_str())
                .text(item.sale_id.as_str())
                .int(*position)
                .int(i64::from(item.quantity))
                .int(item.unit_price.0);
        }
        q.run(tx).await?;
    }
    let sql = format!(
        "INSERT INTO payments (id, order_id, user_id, status, method, reference, amount, \
         failure_reason, updated_at) VALUES {}",
        crate::engine::values_list(orders.len(), 9)
    );
    let mut q = statement::<DB>(&sql);
    for order in orders {
        let payment = payment_of(order)?;
        q = q
            .text(payment.id.as_str())
            .text(order.id.as_str())
            .text(order.user_id.as_str())
            .text(payment.status.as_str())
            .text(&payment.method)
            .opt_text(payment.reference.as_deref())
            .int(payment.amount.0)
            .opt_text(payment.failure_reason.as_deref())
            .int(payment.updated_at.0);
    }
    q.run(tx).await?;
    Ok(())
}

/// The lines of many `(buyer, order)` keys, by order, in checkout order, their holds locked
/// for the rest of the transaction (in key order): one statement.
async fn lines_of<DB: Judging>(
    conn: &mut impl Conn<DB>,
    keys: &[(&str, &str)],
) -> PortResult<HashMap<OrderId, Vec<OrderLine>>> {
    let mut lines: HashMap<OrderId, Vec<(i64, OrderLine)>> = HashMap::with_capacity(keys.len());
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT i.order_id, i.position, i.hold_id, i.sale_id, i.quantity, h.user_id, \
         h.quantity AS hold_quantity, h.state, h.expires_at FROM order_items i \
         JOIN holds h ON h.user_id = i.user_id AND h.id = i.hold_id \
         WHERE (i.user_id, i.order_id) IN ({}) ORDER BY h.user_id, h.id{}",
        DB::JSON_PAIRS,
        DB::LOCK_HOLDS
    );
    let json = serde_json::to_string(keys).map_err(internal)?;
    for row in statement::<DB>(&sql).string(json).all(conn).await? {
        let order = OrderId::from_trusted(col(&row, "order_id")?);
        let at: i64 = col(&row, "position")?;
        lines
            .entry(order)
            .or_default()
            .push((at, rows::order_line(&row)?));
    }
    Ok(lines
        .into_iter()
        .map(|(order, mut found)| {
            found.sort_unstable_by_key(|(at, _)| *at);
            (order, found.into_iter().map(|(_, line)| line).collect())
        })
        .collect())
}

/// Carries out, in `stock`, what the core's [`checkout::convert_line`] decides for each line
/// of an order on an authorization (its sales loaded, and locked with their drops when a
/// lapsed hold may be taken again). Returns the hold endings to write, or `None` if some hold
/// cannot be honoured (then the caller discards what this did to `stock`).
async fn convert<DB: Judging>(
    conn: &mut impl Conn<DB>,
    stock: &mut TxStock,
    lines: &[OrderLine],
    retake: bool,
    now: Timestamp,
) -> PortResult<Option<Converted>> {
    let (mut endings, mut retaken) = (Vec::new(), Vec::new());
    for line in lines {
        stock.touch(conn, &line.sale_id, &line.user_id).await?;
        let step = checkout::convert_line(line, retake, now).map_err(internal)?;
        if let Some(to) = step.hold_ending() {
            endings.push((line.user_id.clone(), line.hold_id.clone(), line.state, to));
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

/// What an authorization did to an order's holds: each hold's ending (buyer, hold, from, to),
/// and the sales whose stock it took again after a hold had lapsed.
type Converted = (Vec<HoldEnding>, Vec<SaleId>);

/// Records the gateway's answers for pending orders, many in one transaction
/// ([`each_in_one`], [`apply_all`]), each with its effect on holds and stock.
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
        Box::pin(async move { one_answer(apply_all(tx, &[self]).await?) })
    }
    fn run_all<'c>(
        items: &'c [Self],
        tx: &'c mut Transaction<'static, DB>,
    ) -> Pending<'c, Vec<Self::Answer>> {
        Box::pin(async move {
            let answers: Vec<&PaymentAnswer> = items.iter().collect();
            apply_all(tx, &answers).await
        })
    }
}

/// Notes that the batch settles `order`: a settled order is final, so a second settlement in
/// one batch is a bug, refused (`Internal`) so the batch fails before writing it.
fn settle_once(settled: &mut HashSet<OrderId>, order: &OrderId) -> PortResult<()> {
    match settled.insert(order.clone()) {
        true => Ok(()),
        false => Err(internal(format!(
            "order {order} settled twice in one batch"
        ))),
    }
}

/// Gateway answers of [`apply_payments`] together, inside the batch's transaction, as the
/// core's [`checkout::plan_answer`] plans each; an unknown or settled order writes nothing.
///
/// The common case (authorizations converting live holds) costs a constant number of
/// statements whatever the number of answers: the orders are locked and read at once, then
/// their lines (holds locked), sales and buyers' units; each answer is planned in turn
/// against the orders as the earlier answers left them, its stock moved in memory; and the
/// hold endings, counters, status moves, outbox events and audit entries are written at the
/// end, a statement each (a counter row per sale). An authorization whose holds cannot all be
/// honoured moves no stock: what it did in memory is undone before the next answer.
async fn apply_all<DB: Judging>(
    tx: &mut impl Conn<DB>,
    answers: &[&PaymentAnswer],
) -> PortResult<Vec<Option<PaymentApplied>>> {
    // Whose orders: through the payments (one per order), as `orders` is keyed by buyer.
    let mut ids: Vec<&str> = answers.iter().map(|a| a.order.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let sql = format!(
        "SELECT user_id, order_id FROM payments WHERE order_id IN ({})",
        DB::JSON_TEXTS
    );
    let json = serde_json::to_string(&ids).map_err(internal)?;
    let mut owners: Vec<(String, String)> = Vec::with_capacity(ids.len());
    for row in statement::<DB>(&sql).string(json).all(tx).await? {
        owners.push((col(&row, "user_id")?, col(&row, "order_id")?));
    }
    owners.sort_unstable();
    let keys: Vec<(&str, &str)> = owners
        .iter()
        .map(|(u, o)| (u.as_str(), o.as_str()))
        .collect();
    // Two answers for one order (a webhook and the synchronous reply, on two nodes) are
    // applied one after the other: the order rows stay locked to the commit.
    lock_many(tx, "orders", &keys).await?;
    let mut orders = load_many(tx, &keys).await?;
    let pending: Vec<(&str, &str)> = keys
        .iter()
        .filter(|(_, id)| {
            let id = OrderId::from_trusted((*id).to_owned());
            orders
                .get(&id)
                .is_some_and(|o| o.status == OrderStatus::PendingPayment)
        })
        .copied()
        .collect();
    let lines = lines_of(tx, &pending).await?;
    // Taking stock again for a lapsed hold is a reservation, judged under its drop's limit
    // too, which needs the drop's other sales locked; a plain conversion does not.
    let with_drops = answers.iter().any(|a| {
        let (Some(order), Some(lines)) = (orders.get(&a.order), lines.get(&a.order)) else {
            return false;
        };
        matches!(checkout::plan_answer(order, &a.result),
            Ok(AnswerPlan::Convert { retake, .. }) if checkout::may_retake(lines, retake, a.now))
    });
    let mut stock = TxStock::default();
    let sales: Vec<&SaleId> = lines.values().flatten().map(|l| &l.sale_id).collect();
    stock.lock_sales(tx, &sales, with_drops).await?;
    let buyers: Vec<(&SaleId, &UserId)> = lines
        .values()
        .flatten()
        .map(|l| (&l.sale_id, &l.user_id))
        .collect();
    stock.load_units(tx, &buyers).await?;

    let mut endings: Vec<HoldEnding> = Vec::new();
    let mut settled: Vec<(Order, Settlement, Timestamp)> = Vec::new();
    let mut settled_ids: HashSet<OrderId> = HashSet::new();
    let mut applied = Vec::with_capacity(answers.len());
    for answer in answers {
        let now = answer.now;
        let Some(order) = orders.get(&answer.order) else {
            applied.push(None);
            continue;
        };
        // `None`: a hold lapsed; else the sales whose stock was taken again. With the order
        // as written (built from what was read and planned, not read back).
        let (retaken, after) =
            match checkout::plan_answer(order, &answer.result).map_err(internal)? {
                AnswerPlan::AlreadySettled => {
                    applied.push(Some(PaymentApplied::AlreadySettled(order.clone())));
                    continue;
                }
                AnswerPlan::Await { reference } => {
                    // An answer that comes later: records the gateway's reference, and the time.
                    statement::<DB>(
                        "UPDATE payments SET reference = $1, updated_at = $2 WHERE id = $3",
                    )
                    .text(&reference)
                    .int(now.0)
                    .text(payment_of(order)?.id.as_str())
                    .run(tx)
                    .await?;
                    let sql = "UPDATE orders SET updated_at = $3 WHERE user_id = $1 AND id = $2";
                    keyed::<DB>(sql, &order.user_id, &order.id)
                        .int(now.0)
                        .run(tx)
                        .await?;
                    (Some(Vec::new()), checkout::awaiting(order, &reference, now))
                }
                AnswerPlan::Settle(plan) => {
                    let after = plan.applied_to(order, now);
                    settle_once(&mut settled_ids, &order.id)?;
                    settled.push((order.clone(), plan, now));
                    (Some(Vec::new()), after)
                }
                AnswerPlan::Convert { reference, retake } => {
                    let order_lines = lines.get(&answer.order).map_or(&[][..], Vec::as_slice);
                    let before = stock.clone();
                    let converted = convert(tx, &mut stock, order_lines, retake, now).await?;
                    // All or nothing: without endings no stock moves; the money must go back at
                    // the gateway.
                    let plan = checkout::plan_authorized(order, &reference, converted.is_some())
                        .map_err(internal)?;
                    let after = plan.applied_to(order, now);
                    settle_once(&mut settled_ids, &order.id)?;
                    settled.push((order.clone(), plan, now));
                    match converted {
                        Some((ended, retaken)) => {
                            endings.extend(ended);
                            (Some(retaken), after)
                        }
                        None => {
                            stock = before;
                            (None, after)
                        }
                    }
                }
            };
        orders.insert(after.id.clone(), after.clone());
        applied.push(Some(match retaken {
            None => PaymentApplied::HoldLapsed(after),
            Some(sales) if sales.is_empty() => PaymentApplied::Done(after),
            Some(sales) => PaymentApplied::Retook {
                order: after,
                sales,
            },
        }));
    }
    holds::end_many(tx, &endings).await?;
    stock.flush(tx).await?;
    let settled: Vec<(&Order, &Settlement, Timestamp)> =
        settled.iter().map(|(o, p, now)| (o, p, *now)).collect();
    settle_all(tx, &settled).await?;
    let audit: Vec<_> = answers
        .iter()
        .flat_map(|a| a.audit.iter().cloned())
        .collect();
    insert_audits(tx, &audit).await?;
    #[cfg(debug_assertions)]
    for (id, order) in &orders {
        debug_assert_eq!(
            Some(order),
            load(tx, &order.user_id, id).await.ok().flatten().as_ref(),
            "the order as written is the order as stored"
        );
    }
    Ok(applied)
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
        Box::pin(async move { Ok(owed_done_all(tx, &[self]).await?.first() == Some(&true)) })
    }
    fn run_all<'c>(
        items: &'c [Self],
        tx: &'c mut Transaction<'static, DB>,
    ) -> Pending<'c, Vec<bool>> {
        Box::pin(async move { owed_done_all(tx, &items.iter().collect::<Vec<_>>()).await })
    }
}

/// Money moves recorded done together: a guarded multi-row update for each few hundred (one
/// by one when a payment comes twice, so the later sees the earlier), and their audit entries
/// in one insert; whether each changed its payment.
async fn owed_done_all<DB: Judging>(
    tx: &mut impl Conn<DB>,
    moves: &[&OwedDone],
) -> PortResult<Vec<bool>> {
    let size = match crate::engine::all_distinct(moves.iter().map(|m| m.payment.as_str())) {
        true => SETTLEMENTS_PER_STATEMENT,
        false => 1,
    };
    let mut changed = HashSet::new();
    for chunk in moves.chunks(size) {
        let sql = format!(
            "UPDATE payments SET gateway_owed = v.column2, updated_at = v.column3 \
             FROM (VALUES {}) AS v \
             WHERE payments.id = v.column1 AND payments.gateway_owed = v.column4 RETURNING id",
            crate::engine::values_list(chunk.len(), 4)
        );
        let mut q = statement::<DB>(&sql);
        for m in chunk {
            q = q
                .text(m.payment.as_str())
                .opt_text(m.next.map(GatewayOwed::as_str))
                .int(m.now.0)
                .text(m.done.as_str());
        }
        for row in q.all(tx).await? {
            changed.insert(PaymentId::from_trusted(col(&row, "id")?));
        }
    }
    let audit: Vec<_> = moves.iter().flat_map(|m| m.audit.iter().cloned()).collect();
    insert_audits(tx, &audit).await?;
    // A payment changed by this call counts for its first move only.
    Ok(moves.iter().map(|m| changed.remove(&m.payment)).collect())
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
