//! Holds: the judge's side of reserving (the group commit's batch), releasing, resizing and
//! expiring, for both engines.
//!
//! Every function here is one write transaction, and every stock movement goes through
//! [`TxStock`], so the `sales` counters and `user_units` change in the same transaction as the
//! hold rows that justify them. A hold ends exactly once: each ending goes through
//! [`HoldState::end`] and the `UPDATE` is guarded by `state = 'active'`.
//!
//! Locking order on PostgreSQL (see [`crate::judging`]): the hold rows a transaction changes,
//! then the sale rows (in sale id order), then `user_units`. The group commit takes no hold
//! locks: it only inserts new holds and reads retried ones without locking. Holds are keyed
//! by their buyer too, which PostgreSQL's partitions need and SQLite accepts as one more
//! condition.

use std::collections::{HashMap, HashSet};

use sqlx::Pool;

use stampede_app::ports::{HoldError, OutboxEvent, PortResult, ReserveRequest};
use stampede_core::checkout::FoundHold;
use stampede_core::judge::Refusal;
use stampede_core::{Hold, HoldId, HoldState, SaleId, Timestamp, UserId};

use crate::engine::{begin_write, commit, list, statement, values_list, Bind, Conn, Run};
use crate::hold_cap::OpenHolds;
use crate::internal;
use crate::judging::{exactly_one, lock_many, lock_own, Judging};
use crate::outbox::insert as write_events;
use crate::rows::{self, col};
use crate::txstock::TxStock;

/// `SELECT` of [`rows::hold_row`]'s columns (the hold, and the status of the order it is in,
/// joined by buyer too, which PostgreSQL's partitions need), then `$cond`.
macro_rules! select_holds {
    ($cond:literal) => {
        concat!(
            "SELECT h.id, h.sale_id, h.user_id, h.quantity, h.unit_price, h.currency, h.state, \
             h.created_at, h.expires_at, o.status AS order_status \
             FROM holds h LEFT JOIN orders o ON o.user_id = h.user_id AND o.id = h.order_id ",
            $cond
        )
    };
}

/// The buyer's hold with this id, with its order's status; if `lock`, locked for the rest of
/// the transaction.
///
/// Locks first, then reads in a second statement: under PostgreSQL's READ COMMITTED that read
/// sees everything committed before the lock was granted, including the order a concurrent
/// checkout on another node just put this hold in (a single locking statement would re-check
/// the hold row but keep its stale view of the joined order).
pub async fn find<DB: Judging>(
    conn: &mut impl Conn<DB>,
    user: &UserId,
    id: &HoldId,
    lock: bool,
) -> PortResult<Option<FoundHold>> {
    if lock && !lock_own(conn, "holds", user.as_str(), id.as_str()).await? {
        return Ok(None);
    }
    let sql = select_holds!("WHERE h.user_id = $1 AND h.id = $2");
    let row = statement::<DB>(sql)
        .text(user.as_str())
        .text(id.as_str())
        .first(conn)
        .await?;
    row.map(|r| rows::hold_row(&r)).transpose()
}

/// The holds of many `(buyer, hold)` keys, by hold id, each with its order's status; if
/// `lock`, locked first ([`lock_many`]: the caller sorts the keys). One statement each,
/// whatever the number of keys; a key that names no hold of that buyer is absent. Reads after
/// locking for the reason [`find`] does.
pub async fn find_many<DB: Judging>(
    conn: &mut impl Conn<DB>,
    keys: &[(&str, &str)],
    lock: bool,
) -> PortResult<HashMap<HoldId, FoundHold>> {
    let mut found = HashMap::with_capacity(keys.len());
    if keys.is_empty() {
        return Ok(found);
    }
    if lock {
        lock_many(conn, "holds", keys).await?;
    }
    let json = serde_json::to_string(keys).map_err(internal)?;
    let sql = format!(
        "{} WHERE (h.user_id, h.id) IN ({})",
        select_holds!(""),
        DB::JSON_PAIRS
    );
    for row in statement::<DB>(&sql).string(json).all(conn).await? {
        let row = rows::hold_row(&row)?;
        found.insert(row.hold.id.clone(), row);
    }
    Ok(found)
}

/// Moves an active hold to its final state and returns it; refuses (as `Internal`) if it was
/// not active, which the callers have already checked, so this is the last line against a
/// double end.
pub async fn end<DB: Judging>(
    conn: &mut impl Conn<DB>,
    user: &UserId,
    id: &HoldId,
    from: HoldState,
    to: HoldState,
) -> PortResult<HoldState> {
    let state = from.end(to).map_err(internal)?;
    let done = statement::<DB>(
        "UPDATE holds SET state = $1 WHERE user_id = $2 AND id = $3 AND state = 'active'",
    )
    .text(state.as_str())
    .text(user.as_str())
    .text(id.as_str())
    .run(conn)
    .await?;
    exactly_one(done, format_args!("hold {id} was not active"))?;
    Ok(state)
}

/// A hold's ending to write: its buyer, its id, the state it was read in and where it goes.
pub type HoldEnding = (UserId, HoldId, HoldState, HoldState);

/// Holds ending per multi-row statement: well under either engine's limit on parameters.
const ENDINGS_PER_STATEMENT: usize = 300;

/// [`end`] of many holds, a statement for each few hundred; refuses (as `Internal`, failing
/// the transaction) if one of them was not active.
pub async fn end_many<DB: Judging>(
    conn: &mut impl Conn<DB>,
    endings: &[HoldEnding],
) -> PortResult<()> {
    for chunk in endings.chunks(ENDINGS_PER_STATEMENT) {
        let sql = format!(
            "UPDATE holds SET state = v.column3 FROM (VALUES {}) AS v \
             WHERE holds.user_id = v.column1 AND holds.id = v.column2 AND holds.state = 'active'",
            values_list(chunk.len(), 3)
        );
        let mut q = statement::<DB>(&sql);
        for (user, id, from, to) in chunk {
            let state = from.end(*to).map_err(internal)?;
            q = q.text(user.as_str()).text(id.as_str()).text(state.as_str());
        }
        let done = q.run(conn).await?;
        if usize::try_from(done).ok() != Some(chunk.len()) {
            return Err(internal(format!(
                "{} of {} holds ending were active",
                done,
                chunk.len()
            )));
        }
    }
    Ok(())
}

/// The group commit: judges a batch of reservations in order inside one write transaction,
/// in a constant number of statements whatever its size (retries of issued ids aside).
///
/// Every sale the batch touches is locked once, up front and in id order (so batches on
/// several nodes queue instead of deadlocking), the buyers' units, open holds and already
/// issued ids are read in one statement each, every decision is made in memory, the accepted
/// holds are written by one multi-row insert, and each sale's counters and the buyers' units
/// once at the end. A second request with an id seen before (in this batch or an earlier one)
/// is a retry: it gets the hold its first try made, if the buyer and sale match, and never
/// takes stock itself.
pub async fn reserve<DB: Judging>(
    writer: &Pool<DB>,
    batch: &[ReserveRequest],
) -> PortResult<Vec<Result<Hold, Refusal>>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = begin_write(writer).await?;
    let mut stock = TxStock::default();
    let sales: Vec<&SaleId> = batch.iter().map(|r| &r.sale_id).collect();
    stock.lock_sales(&mut tx, &sales, true).await?;
    let pairs: Vec<(&SaleId, &UserId)> = batch.iter().map(|r| (&r.sale_id, &r.user_id)).collect();
    stock.load_units(&mut tx, &pairs).await?;
    stock.load_drop_units(&mut tx, &pairs).await?;
    let mut open = OpenHolds::lock_and_load(&mut tx, batch).await?;
    // Read after the sale locks: a retry of a hold in a sale this batch holds locked cannot be
    // in flight elsewhere.
    let ids: Vec<&str> = batch.iter().map(|r| r.hold_id.as_str()).collect();
    let sql = format!(
        "SELECT id, user_id, sale_id FROM {} WHERE id IN ({})",
        DB::HOLD_IDS,
        DB::JSON_TEXTS
    );
    let issued: HashMap<String, (String, String)> = statement::<DB>(&sql)
        .string(serde_json::to_string(&ids).map_err(internal)?)
        .all(&mut tx)
        .await?
        .iter()
        .map(|r| Ok((col(r, "id")?, (col(r, "user_id")?, col(r, "sale_id")?))))
        .collect::<PortResult<_>>()?;

    let mut verdicts: Vec<Result<Hold, Refusal>> = Vec::with_capacity(batch.len());
    // The request (by index) whose accepted hold each new id of this batch stands for.
    let mut fresh: HashMap<&str, usize> = HashMap::new();
    for (i, req) in batch.iter().enumerate() {
        let verdict = if let Some(&f) = fresh.get(req.hold_id.as_str()) {
            let first = &batch[f];
            if first.user_id == req.user_id && first.sale_id == req.sale_id {
                verdicts[f].clone()
            } else {
                Err(reused(req))
            }
        } else if let Some((user, sale)) = issued.get(req.hold_id.as_str()) {
            retried(&mut tx, req, user, sale).await?
        } else {
            // The hold cap is judged last, after liveness, the buyer's limit and stock.
            let judged = judge_request(&mut tx, &mut stock, req)
                .await?
                .and_then(|hold| open.judge(req).map(|()| hold));
            if judged.is_ok() {
                stock.reserve(&req.sale_id, &req.user_id, req.quantity)?;
                open.opened(req, 1);
                fresh.insert(req.hold_id.as_str(), i);
            }
            judged
        };
        verdicts.push(verdict);
    }

    let new: Vec<(&Hold, Option<&str>)> = fresh
        .values()
        .filter_map(|&i| Some((verdicts[i].as_ref().ok()?, batch[i].device_id.as_deref())))
        .collect();
    let written: HashSet<String> = DB::insert_holds(tx.conn(), &new)
        .await?
        .into_iter()
        .collect();
    for (&id, &i) in &fresh {
        if written.contains(id) {
            continue;
        }
        // Claimed meanwhile by a transaction on another sale: not this buyer's hold.
        let req = &batch[i];
        stock.unhold(&req.sale_id, &req.user_id, req.quantity)?;
        open.opened(req, -1);
        for (v, r) in verdicts.iter_mut().zip(batch) {
            if r.hold_id.as_str() == id {
                *v = Err(reused(r));
            }
        }
    }
    stock.flush(&mut tx).await?;
    commit(tx, "reserve").await?;
    Ok(verdicts)
}

/// A hold id that is someone else's (another buyer's or sale's): never shown; only this
/// request is refused.
fn reused(req: &ReserveRequest) -> Refusal {
    tracing::warn!(hold = %req.hold_id, "hold id reused by another buyer or sale");
    Refusal::SaleNotLive
}

/// A retried request whose id was issued before this batch gets that hold if it is this
/// buyer's in this sale (its stock was taken once, by the first try).
async fn retried<DB: Judging>(
    conn: &mut impl Conn<DB>,
    req: &ReserveRequest,
    user: &str,
    sale: &str,
) -> PortResult<Result<Hold, Refusal>> {
    if user == req.user_id.as_str() && sale == req.sale_id.as_str() {
        // Read without a row lock: the batch holds sale locks, and waiting here for a hold
        // lock (a checkout in progress) would invert the hold-then-sale order.
        if let Some(row) = find(conn, &req.user_id, &req.hold_id, false).await? {
            return Ok(Ok(row.hold));
        }
    }
    Ok(Err(reused(req)))
}

/// The judge's decision on one request of a batch against the batch's in-memory state: the
/// hold it would write, or why not. The hold cap is the backend's to judge after this.
pub async fn judge_request<DB: Judging>(
    conn: &mut impl Conn<DB>,
    stock: &mut TxStock,
    req: &ReserveRequest,
) -> PortResult<Result<Hold, Refusal>> {
    if req.quantity == 0 {
        // The app validates quantities; a zero would break the holds CHECK and with it the
        // whole batch, so refuse just this one.
        tracing::warn!(hold = %req.hold_id, "reserve of zero units");
        return Ok(Err(Refusal::LimitExceeded));
    }
    let Some(sale) = stock.sale(conn, &req.sale_id).await? else {
        return Ok(Err(Refusal::SaleNotLive));
    };
    let hold = Hold {
        id: req.hold_id.clone(),
        sale_id: req.sale_id.clone(),
        user_id: req.user_id.clone(),
        quantity: req.quantity,
        unit_price: sale.sale_price,
        currency: sale.currency.clone(),
        state: HoldState::Active,
        created_at: req.now,
        expires_at: req.now.plus_secs(i64::from(sale.hold_seconds)),
    };
    let verdict = stock
        .judge_more(conn, &req.sale_id, &req.user_id, req.quantity, req.now)
        .await?;
    Ok(verdict.unwrap_or(Err(Refusal::SaleNotLive)).map(|()| hold))
}

/// The buyer's holds that are active and unexpired at `now`, oldest first.
pub async fn live<DB: Judging>(
    reader: &Pool<DB>,
    user: &UserId,
    now: Timestamp,
) -> PortResult<Vec<Hold>> {
    let sql = select_holds!(
        "WHERE h.user_id = $1 AND h.state = 'active' AND h.expires_at > $2 \
         ORDER BY h.created_at, h.id"
    );
    let q = statement::<DB>(sql).text(user.as_str()).int(now.0);
    list(q, reader, |r| rows::hold_row(r).map(|h| h.hold)).await
}

/// A hold of this user that may be changed at `now` (locked), or why not.
async fn own_changeable<DB: Judging>(
    conn: &mut impl Conn<DB>,
    user: &UserId,
    id: &HoldId,
    now: Timestamp,
) -> PortResult<Result<Hold, HoldError>> {
    let found = find(conn, user, id, true).await?;
    let Some(row) = found.filter(|r| &r.hold.user_id == user && r.hold.state == HoldState::Active)
    else {
        return Ok(Err(HoldError::NotFound));
    };
    if !row.hold.is_live_at(now) {
        return Ok(Err(HoldError::Expired));
    }
    if row.in_pending_order {
        return Ok(Err(HoldError::InPendingOrder));
    }
    Ok(Ok(row.hold))
}

/// The buyer lets go of a live hold: its units are available again at once.
pub async fn release<DB: Judging>(
    writer: &Pool<DB>,
    user: &UserId,
    id: &HoldId,
    now: Timestamp,
) -> PortResult<Result<Hold, HoldError>> {
    let mut tx = begin_write(writer).await?;
    let mut hold = match own_changeable(&mut tx, user, id, now).await? {
        Ok(hold) => hold,
        Err(e) => return Ok(Err(e)),
    };
    let mut stock = TxStock::default();
    stock.touch(&mut tx, &hold.sale_id, user).await?;
    hold.state = end(&mut tx, user, &hold.id, hold.state, HoldState::Released).await?;
    stock.unhold(&hold.sale_id, user, hold.quantity)?;
    stock.flush(&mut tx).await?;
    commit(tx, "release_hold").await?;
    Ok(Ok(hold))
}

/// Changes a live hold's quantity: growth is a reservation of the difference, judged with the
/// sale's status at `now`; shrinking returns the difference at once. The expiry stays.
pub async fn resize<DB: Judging>(
    writer: &Pool<DB>,
    user: &UserId,
    id: &HoldId,
    quantity: u32,
    now: Timestamp,
) -> PortResult<Result<Hold, HoldError>> {
    if quantity == 0 {
        return Err(internal("resize to zero units: release the hold instead"));
    }
    let mut tx = begin_write(writer).await?;
    let mut hold = match own_changeable(&mut tx, user, id, now).await? {
        Ok(hold) => hold,
        Err(e) => return Ok(Err(e)),
    };
    if quantity == hold.quantity {
        return Ok(Ok(hold));
    }
    let mut stock = TxStock::default();
    if quantity > hold.quantity {
        // Growth is a reservation of the difference, judged under the drop's limit too: lock
        // the drop's other sales with it. Shrinking is always allowed.
        stock.lock_sales(&mut tx, &[&hold.sale_id], true).await?;
        let more = quantity - hold.quantity;
        let verdict = stock.judge_more(&mut tx, &hold.sale_id, user, more, now);
        let missing = || internal(format!("sale {} of hold {id} missing", hold.sale_id));
        if let Err(refusal) = verdict.await?.ok_or_else(missing)? {
            return Ok(Err(HoldError::Refused(refusal)));
        }
        stock.reserve(&hold.sale_id, user, more)?;
    } else {
        stock.touch(&mut tx, &hold.sale_id, user).await?;
        stock.unhold(&hold.sale_id, user, hold.quantity - quantity)?;
    }
    let done = statement::<DB>(
        "UPDATE holds SET quantity = $1 WHERE user_id = $2 AND id = $3 AND state = 'active'",
    )
    .int(i64::from(quantity))
    .text(user.as_str())
    .text(id.as_str())
    .run(&mut tx)
    .await?;
    exactly_one(done, format_args!("hold {id} was not active"))?;
    hold.quantity = quantity;
    stock.flush(&mut tx).await?;
    commit(tx, "resize_hold").await?;
    Ok(Ok(hold))
}

/// Active holds matching `cond`, earliest due first, locked for the rest of the transaction;
/// `ints` bind `$1`, `$2`, …, the last one the limit. On PostgreSQL, holds another transaction
/// has locked are skipped, not waited for.
async fn lock_due<DB: Judging>(
    conn: &mut impl Conn<DB>,
    cond: &str,
    ints: &[i64],
) -> PortResult<Vec<Hold>> {
    let sql = format!(
        select_holds!("WHERE h.state = 'active' AND {} ORDER BY h.expires_at, h.id LIMIT ${}{}"),
        cond,
        ints.len(),
        DB::SKIP_LOCKED_HOLDS
    );
    let mut q = statement::<DB>(&sql);
    for v in ints {
        q = q.int(*v);
    }
    let found = q.all(conn).await?;
    found
        .iter()
        .map(|r| rows::hold_row(r).map(|h| h.hold))
        .collect()
}

/// The sweeper: ends up to `limit` due active holds as expired (earliest due first) and
/// returns their stock. Holds inside a pending order keep their `order_id`, so a late payment
/// can still find them and retake the stock. On PostgreSQL, holds another transaction has
/// locked (a sweeper on another node, a payment in progress) are skipped, not waited for: the
/// next sweep gets them if they are still due.
pub async fn expire_due<DB: Judging>(
    writer: &Pool<DB>,
    now: Timestamp,
    limit: u32,
) -> PortResult<Vec<Hold>> {
    let mut tx = begin_write(writer).await?;
    let due = lock_due(&mut tx, "h.expires_at <= $1", &[now.0, i64::from(limit)]).await?;
    if due.is_empty() {
        return Ok(Vec::new()); // An idle sweep commits nothing.
    }
    let mut stock = TxStock::default();
    let sales: Vec<&SaleId> = due.iter().map(|h| &h.sale_id).collect();
    stock.lock_sales(&mut tx, &sales, false).await?;
    let mut out = Vec::with_capacity(due.len());
    for mut hold in due {
        stock.touch(&mut tx, &hold.sale_id, &hold.user_id).await?;
        let ended = end(
            &mut tx,
            &hold.user_id,
            &hold.id,
            hold.state,
            HoldState::Expired,
        );
        hold.state = ended.await?;
        stock.unhold(&hold.sale_id, &hold.user_id, hold.quantity)?;
        out.push(hold);
    }
    stock.flush(&mut tx).await?;
    commit(tx, "expire_due_holds").await?;
    Ok(out)
}

/// Marks live holds lapsing within `within_ms` as warned and writes their `hold_expiring`
/// events, in one write transaction. On PostgreSQL, rows another sweeper (or a payment) has
/// locked are skipped; the next pass gets them if they are still unwarned.
pub async fn warn_expiring<DB: Judging>(
    writer: &Pool<DB>,
    now: Timestamp,
    within_ms: i64,
    limit: u32,
) -> PortResult<usize> {
    let mut tx = begin_write(writer).await?;
    let cond = "NOT h.expiry_warned AND h.expires_at > $1 AND h.expires_at <= $2";
    let until = now.0.saturating_add(within_ms);
    let due = lock_due(&mut tx, cond, &[now.0, until, i64::from(limit)]).await?;
    if due.is_empty() {
        return Ok(0);
    }
    // A statement for every few hundred holds, and one for their events.
    for chunk in due.chunks(ENDINGS_PER_STATEMENT) {
        let sql = format!(
            "UPDATE holds SET expiry_warned = TRUE FROM (VALUES {}) AS v \
             WHERE holds.user_id = v.column1 AND holds.id = v.column2",
            values_list(chunk.len(), 2)
        );
        let mut q = statement::<DB>(&sql);
        for hold in chunk {
            q = q.text(hold.user_id.as_str()).text(hold.id.as_str());
        }
        q.run(&mut tx).await?;
    }
    let events: Vec<OutboxEvent> = due
        .iter()
        .map(|hold| OutboxEvent::hold_expiring(hold, now))
        .collect();
    write_events(&mut tx, &events).await?;
    commit(tx, "warn_expiring_holds").await?;
    Ok(due.len())
}
