//! Holds: the judge's side of reserving, releasing, resizing and expiring.
//!
//! Every function here is one transaction, and every stock movement goes through [`TxStock`],
//! so the `sales` counters and `user_units` change in the same transaction as the hold rows
//! that justify them. A hold ends exactly once: each ending goes through [`HoldState::end`] and
//! the `UPDATE` is guarded by `state = 'active'`.
//!
//! Locking order, the same everywhere so that nodes cannot deadlock: the hold rows a
//! transaction changes, then the sale rows (in sale id order), then `user_units` (only
//! written under their sale's lock). Row locks are `FOR NO KEY UPDATE`, the lock an `UPDATE`
//! of non-key columns takes: exclusive among writers, yet foreign-key checks still pass. The
//! group commit takes no hold locks: it only inserts new holds and reads retried ones without
//! locking.

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool};

use stampede_app::ports::{HoldError, PortResult, ReserveRequest};
use stampede_core::judge::{judge_reserve_in_drop, judge_resize, Refusal};
use stampede_core::{Hold, HoldId, HoldState, SaleId, Timestamp, UserId};

use crate::error::{internal, OrPort};
use crate::hold_cap::OpenHolds;
use crate::rows::{self, hold_cols, hold_from, HoldRow};
use crate::txstock::TxStock;

const SELECT_HOLD: &str = concat!(
    "SELECT ",
    hold_cols!(),
    hold_from!(),
    "WHERE h.user_id = $1 AND h.id = $2"
);

/// The buyer's hold with this id, with its order's status, locked for the rest of the
/// transaction (holds are partitioned by user: the user is part of the key).
///
/// Locks first, then reads in a second statement: under READ COMMITTED that read sees
/// everything committed before the lock was granted, including the order a concurrent
/// checkout on another node just put this hold in (a single locking statement would re-check
/// the hold row but keep its stale view of the joined order).
pub(crate) async fn find(
    conn: &mut PgConnection,
    user: &UserId,
    id: &HoldId,
) -> PortResult<Option<HoldRow>> {
    let locked =
        sqlx::query("SELECT 1 FROM holds WHERE user_id = $1 AND id = $2 FOR NO KEY UPDATE")
            .bind(user.as_str())
            .bind(id.as_str())
            .fetch_optional(&mut *conn)
            .await
            .port()?;
    if locked.is_none() {
        return Ok(None);
    }
    let row = sqlx::query(SELECT_HOLD)
        .bind(user.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .port()?;
    row.map(|r| rows::hold_row(&r)).transpose()
}

/// Moves an active hold to its final state and returns it; refuses (as `Internal`) if it was
/// not active, which the callers have already checked, so this is the last line against a
/// double end.
pub(crate) async fn end(
    conn: &mut PgConnection,
    user: &UserId,
    id: &HoldId,
    from: HoldState,
    to: HoldState,
) -> PortResult<HoldState> {
    let state = from.end(to).map_err(internal)?;
    let done = sqlx::query(
        "UPDATE holds SET state = $1 WHERE user_id = $2 AND id = $3 AND state = 'active'",
    )
    .bind(state.as_str())
    .bind(user.as_str())
    .bind(id.as_str())
    .execute(&mut *conn)
    .await
    .port()?;
    if done.rows_affected() != 1 {
        return Err(internal(format!("hold {id} was not active")));
    }
    Ok(state)
}

/// Claims the hold's id in `hold_ids` and inserts the hold, in one statement; `false`
/// (nothing written) if the id is taken. A concurrent claim of the same id by another
/// transaction makes this wait for it, then report the id as taken.
async fn insert(conn: &mut PgConnection, hold: &Hold, device: Option<&str>) -> PortResult<bool> {
    let done = sqlx::query(
        "WITH claimed AS ( \
           INSERT INTO hold_ids (id, user_id, sale_id) VALUES ($1, $3, $2) \
           ON CONFLICT (id) DO NOTHING RETURNING id) \
         INSERT INTO holds (id, sale_id, user_id, quantity, unit_price, currency, state, \
         created_at, expires_at, order_id, device_id) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10 FROM claimed",
    )
    .bind(hold.id.as_str())
    .bind(hold.sale_id.as_str())
    .bind(hold.user_id.as_str())
    .bind(i64::from(hold.quantity))
    .bind(hold.unit_price.0)
    .bind(hold.currency.as_str())
    .bind(hold.state.as_str())
    .bind(hold.created_at.0)
    .bind(hold.expires_at.0)
    .bind(device)
    .execute(&mut *conn)
    .await
    .port()?;
    Ok(done.rows_affected() == 1)
}

/// The group commit: judges every request in order inside one transaction. Every sale the
/// batch touches is locked once, up front and in id order (so batches on several nodes queue
/// instead of deadlocking), the buyers' units are read in one statement, and each sale's
/// counters are written back once at the end.
pub(crate) async fn reserve(
    pool: &PgPool,
    batch: &[ReserveRequest],
) -> PortResult<Vec<Result<Hold, Refusal>>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await.port()?;
    let mut stock = TxStock::default();
    let sales: Vec<&SaleId> = batch.iter().map(|r| &r.sale_id).collect();
    stock.lock_sales_with_drops(&mut tx, &sales).await?;
    let pairs: Vec<(&SaleId, &UserId)> = batch.iter().map(|r| (&r.sale_id, &r.user_id)).collect();
    stock.load_units(&mut tx, &pairs).await?;
    stock.load_drop_units(&mut tx, &pairs).await?;
    let mut open = OpenHolds::lock_and_load(&mut tx, batch).await?;
    // Ids already issued (retries after a lost reply), read after the sale locks: a retry of a
    // hold in a sale we now hold locked cannot be in flight elsewhere.
    let ids: Vec<String> = batch
        .iter()
        .map(|r| r.hold_id.as_str().to_owned())
        .collect();
    let mut issued: HashMap<String, (String, String)> =
        sqlx::query_as::<_, (String, String, String)>(
            "SELECT id, user_id, sale_id FROM hold_ids WHERE id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .port()?
        .into_iter()
        .map(|(id, user, sale)| (id, (user, sale)))
        .collect();
    let mut out = Vec::with_capacity(batch.len());
    for req in batch {
        out.push(reserve_one(&mut tx, &mut stock, &mut open, &mut issued, req).await?);
    }
    stock.flush(&mut tx).await?;
    tx.commit().await.port()?;
    Ok(out)
}

async fn reserve_one(
    conn: &mut PgConnection,
    stock: &mut TxStock,
    open: &mut OpenHolds,
    issued: &mut HashMap<String, (String, String)>,
    req: &ReserveRequest,
) -> PortResult<Result<Hold, Refusal>> {
    if let Some((user, sale)) = issued.get(req.hold_id.as_str()) {
        if user == req.user_id.as_str() && sale == req.sale_id.as_str() {
            // Read without a row lock: the batch holds sale locks, and waiting here for a
            // hold lock (a checkout in progress) would invert the hold-then-sale order.
            let row = sqlx::query(SELECT_HOLD)
                .bind(req.user_id.as_str())
                .bind(req.hold_id.as_str())
                .fetch_optional(&mut *conn)
                .await
                .port()?;
            if let Some(row) = row {
                return Ok(Ok(rows::hold_row(&row)?.hold));
            }
        }
        // Someone else's hold under this id: never show it; refuse this request only.
        tracing::warn!(hold = %req.hold_id, "hold id reused by another buyer or sale");
        return Ok(Err(Refusal::SaleNotLive));
    }
    if req.quantity == 0 {
        // The app validates quantities; a zero would break the holds CHECK and with it the
        // whole batch, so refuse just this one.
        tracing::warn!(hold = %req.hold_id, "reserve of zero units");
        return Ok(Err(Refusal::LimitExceeded));
    }
    let Some(sale) = stock.sale(conn, &req.sale_id).await? else {
        return Ok(Err(Refusal::SaleNotLive));
    };
    let status = sale.status_at(req.now);
    let available = sale.stock.available;
    let limit = sale.per_user_limit;
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
    let units = stock.units(conn, &req.sale_id, &req.user_id).await?;
    let drop = stock.drop_units(conn, &req.sale_id, &req.user_id).await?;
    if let Err(refusal) = judge_reserve_in_drop(status, available, units, limit, drop, req.quantity)
    {
        return Ok(Err(refusal));
    }
    // The hold cap is judged last, after liveness, the buyer's limit and stock.
    if let Err(refusal) = open.judge(req) {
        return Ok(Err(refusal));
    }
    if !insert(conn, &hold, req.device_id.as_deref()).await? {
        // Claimed meanwhile by a transaction on another sale: not this buyer's hold.
        tracing::warn!(hold = %req.hold_id, "hold id claimed concurrently for another sale");
        return Ok(Err(Refusal::SaleNotLive));
    }
    issued.insert(
        req.hold_id.as_str().to_owned(),
        (
            req.user_id.as_str().to_owned(),
            req.sale_id.as_str().to_owned(),
        ),
    );
    stock.reserve(&req.sale_id, &req.user_id, req.quantity)?;
    open.opened(req);
    Ok(Ok(hold))
}

/// The buyer's holds that are active and unexpired at `now`, oldest first.
pub(crate) async fn live(pool: &PgPool, user: &UserId, now: Timestamp) -> PortResult<Vec<Hold>> {
    let found = sqlx::query(concat!(
        "SELECT ",
        hold_cols!(),
        hold_from!(),
        "WHERE h.user_id = $1 AND h.state = 'active' AND h.expires_at > $2 \
         ORDER BY h.created_at, h.id"
    ))
    .bind(user.as_str())
    .bind(now.0)
    .fetch_all(pool)
    .await
    .port()?;
    found
        .iter()
        .map(|r| rows::hold_row(r).map(|h| h.hold))
        .collect()
}

/// A hold of this user that may be changed at `now`, or why not.
async fn own_changeable(
    conn: &mut PgConnection,
    user: &UserId,
    id: &HoldId,
    now: Timestamp,
) -> PortResult<Result<HoldRow, HoldError>> {
    let Some(row) = find(conn, user, id).await? else {
        return Ok(Err(HoldError::NotFound));
    };
    if &row.hold.user_id != user || row.hold.state != HoldState::Active {
        return Ok(Err(HoldError::NotFound));
    }
    if !row.hold.is_live_at(now) {
        return Ok(Err(HoldError::Expired));
    }
    if row.in_pending_order {
        return Ok(Err(HoldError::InPendingOrder));
    }
    Ok(Ok(row))
}

/// The buyer lets go of a live hold: its units are available again at once.
pub(crate) async fn release(
    pool: &PgPool,
    user: &UserId,
    id: &HoldId,
    now: Timestamp,
) -> PortResult<Result<Hold, HoldError>> {
    let mut tx = pool.begin().await.port()?;
    let mut hold = match own_changeable(&mut tx, user, id, now).await? {
        Ok(row) => row.hold,
        Err(e) => return Ok(Err(e)),
    };
    let mut stock = TxStock::default();
    stock.touch(&mut tx, &hold.sale_id, user).await?;
    hold.state = end(&mut tx, user, &hold.id, hold.state, HoldState::Released).await?;
    stock.unhold(&hold.sale_id, user, hold.quantity)?;
    stock.flush(&mut tx).await?;
    tx.commit().await.port()?;
    Ok(Ok(hold))
}

/// Changes a live hold's quantity: growth is a reservation of the difference, judged with the
/// sale's status at `now`; shrinking returns the difference at once. The expiry stays.
pub(crate) async fn resize(
    pool: &PgPool,
    user: &UserId,
    id: &HoldId,
    quantity: u32,
    now: Timestamp,
) -> PortResult<Result<Hold, HoldError>> {
    if quantity == 0 {
        return Err(internal("resize to zero units: release the hold instead"));
    }
    let mut tx = pool.begin().await.port()?;
    let mut hold = match own_changeable(&mut tx, user, id, now).await? {
        Ok(row) => row.hold,
        Err(e) => return Ok(Err(e)),
    };
    if quantity == hold.quantity {
        return Ok(Ok(hold));
    }
    let mut stock = TxStock::default();
    let growing = quantity > hold.quantity;
    if growing {
        // Growth is judged under the drop's limit too: lock the drop's other sales with it.
        stock
            .lock_sales_with_drops(&mut tx, &[&hold.sale_id])
            .await?;
    }
    let Some(sale) = stock.sale(&mut tx, &hold.sale_id).await? else {
        return Err(internal(format!(
            "sale {} of hold {id} missing",
            hold.sale_id
        )));
    };
    let status = sale.status_at(now);
    let available = sale.stock.available;
    let limit = sale.per_user_limit;
    let units = stock.units(&mut tx, &hold.sale_id, user).await?;
    let drop = if growing {
        stock.drop_units(&mut tx, &hold.sale_id, user).await?
    } else {
        None
    };
    if let Err(refusal) = judge_resize(
        status,
        available,
        units,
        limit,
        drop,
        hold.quantity,
        quantity,
    ) {
        return Ok(Err(HoldError::Refused(refusal)));
    }
    if quantity > hold.quantity {
        stock.reserve(&hold.sale_id, user, quantity - hold.quantity)?;
    } else {
        stock.unhold(&hold.sale_id, user, hold.quantity - quantity)?;
    }
    let done = sqlx::query(
        "UPDATE holds SET quantity = $1 WHERE user_id = $2 AND id = $3 AND state = 'active'",
    )
    .bind(i64::from(quantity))
    .bind(user.as_str())
    .bind(id.as_str())
    .execute(&mut *tx)
    .await
    .port()?;
    if done.rows_affected() != 1 {
        return Err(internal(format!("hold {id} was not active")));
    }
    hold.quantity = quantity;
    stock.flush(&mut tx).await?;
    tx.commit().await.port()?;
    Ok(Ok(hold))
}

/// The sweeper: ends up to `limit` due active holds as expired (earliest due first) and
/// returns their stock. Holds inside a pending order keep their `order_id`, so a late payment
/// can still find them and retake the stock. Holds another transaction has locked (a sweeper
/// on another node, a payment in progress) are skipped, not waited for: the next sweep gets
/// them if they are still due.
pub(crate) async fn expire_due(pool: &PgPool, now: Timestamp, limit: u32) -> PortResult<Vec<Hold>> {
    let mut tx = pool.begin().await.port()?;
    let due = sqlx::query(concat!(
        "SELECT ",
        hold_cols!(),
        hold_from!(),
        "WHERE h.state = 'active' AND h.expires_at <= $1 ORDER BY h.expires_at, h.id LIMIT $2 \
         FOR NO KEY UPDATE OF h SKIP LOCKED"
    ))
    .bind(now.0)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .port()?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let due = due
        .iter()
        .map(|r| rows::hold_row(r).map(|h| h.hold))
        .collect::<PortResult<Vec<_>>>()?;
    let mut stock = TxStock::default();
    let sales: Vec<&SaleId> = due.iter().map(|h| &h.sale_id).collect();
    stock.lock_sales(&mut tx, &sales).await?;
    let mut out = Vec::with_capacity(due.len());
    for mut hold in due {
        stock.touch(&mut tx, &hold.sale_id, &hold.user_id).await?;
        hold.state = end(
            &mut tx,
            &hold.user_id,
            &hold.id,
            hold.state,
            HoldState::Expired,
        )
        .await?;
        stock.unhold(&hold.sale_id, &hold.user_id, hold.quantity)?;
        out.push(hold);
    }
    stock.flush(&mut tx).await?;
    tx.commit().await.port()?;
    Ok(out)
}

/// Marks live holds lapsing within `within_ms` as warned and writes their `hold_expiring`
/// events, in one transaction. Rows another sweeper (or a payment) has locked are skipped;
/// the next pass gets them if they are still unwarned.
pub(crate) async fn warn_expiring(
    pool: &PgPool,
    now: Timestamp,
    within_ms: i64,
    limit: u32,
) -> PortResult<usize> {
    let mut tx = pool.begin().await.port()?;
    let due = sqlx::query(concat!(
        "SELECT ",
        hold_cols!(),
        hold_from!(),
        "WHERE h.state = 'active' AND NOT h.expiry_warned AND h.expires_at > $1 \
         AND h.expires_at <= $2 ORDER BY h.expires_at, h.id LIMIT $3 \
         FOR NO KEY UPDATE OF h SKIP LOCKED"
    ))
    .bind(now.0)
    .bind(now.0.saturating_add(within_ms))
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .port()?;
    for row in &due {
        let hold = rows::hold_row(row)?.hold;
        sqlx::query("UPDATE holds SET expiry_warned = true WHERE user_id = $1 AND id = $2")
            .bind(hold.user_id.as_str())
            .bind(hold.id.as_str())
            .execute(&mut *tx)
            .await
            .port()?;
        crate::outbox::insert(
            &mut tx,
            &stampede_app::ports::OutboxEvent::hold_expiring(&hold, now),
        )
        .await?;
    }
    tx.commit().await.port()?;
    Ok(due.len())
}
