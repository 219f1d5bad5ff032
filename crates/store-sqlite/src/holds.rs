//! Holds: the judge's side of reserving, releasing, resizing and expiring.
//!
//! Every function here is one write transaction on the single writer connection, and every
//! stock movement goes through [`TxStock`], so the `sales` counters and `user_units` change in
//! the same transaction as the hold rows that justify them. A hold ends exactly once: each
//! ending goes through [`HoldState::end`] and the `UPDATE` is guarded by `state = 'active'`.

use sqlx::{SqliteConnection, SqlitePool};

use stampede_app::ports::{HoldError, PortResult, ReserveRequest};
use stampede_core::judge::{judge_reserve_in_drop, judge_resize, Refusal};
use stampede_core::{Hold, HoldId, HoldState, SaleId, Timestamp, UserId};

use crate::error::{internal, OrPort};
use crate::hold_cap::OpenHolds;
use crate::rows::{self, hold_cols, hold_from, HoldRow};
use crate::txstock::TxStock;
use crate::BEGIN_WRITE;

const SELECT_HOLD: &str = concat!("SELECT ", hold_cols!(), hold_from!(), "WHERE h.id = ?1");

/// The hold with this id, with its order's status.
pub(crate) async fn find(conn: &mut SqliteConnection, id: &HoldId) -> PortResult<Option<HoldRow>> {
    let row = sqlx::query(SELECT_HOLD)
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
    conn: &mut SqliteConnection,
    id: &HoldId,
    from: HoldState,
    to: HoldState,
) -> PortResult<HoldState> {
    let state = from.end(to).map_err(internal)?;
    let done = sqlx::query("UPDATE holds SET state = ?1 WHERE id = ?2 AND state = 'active'")
        .bind(state.as_str())
        .bind(id.as_str())
        .execute(&mut *conn)
        .await
        .port()?;
    if done.rows_affected() != 1 {
        return Err(internal(format!("hold {id} was not active")));
    }
    Ok(state)
}

/// The group commit: judges every request in order inside one transaction.
///
/// Every decision is made in memory on rows loaded once per batch (each sale, every buyer's
/// units), the accepted holds are written by one multi-row insert, and the counters by one
/// statement per sale plus one for all buyers. sqlx hands each SQLite statement to a worker
/// thread, so statements per batch, not rows, are what this path costs.
pub(crate) async fn reserve(
    writer: &SqlitePool,
    batch: &[ReserveRequest],
) -> PortResult<Vec<Result<Hold, Refusal>>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = writer.begin_with(BEGIN_WRITE).await.port()?;
    let mut stock = TxStock::default();
    let pairs: Vec<(SaleId, UserId)> = batch
        .iter()
        .map(|r| (r.sale_id.clone(), r.user_id.clone()))
        .collect();
    stock.preload_units(&mut tx, &pairs).await?;
    stock.preload_drop_units(&mut tx, &pairs).await?;
    let mut open = OpenHolds::load(&mut tx, batch).await?;

    // Judge in order; `None` marks a request the judge accepted, pending its insert.
    let mut verdicts: Vec<Option<Result<Hold, Refusal>>> = Vec::with_capacity(batch.len());
    let mut accepted: Vec<(usize, Hold)> = Vec::new();
    // A second request with an id already seen in this batch is a retry: it is resolved after
    // the insert, against whatever the first one wrote, and never takes stock itself.
    let mut seen = std::collections::HashSet::with_capacity(batch.len());
    let mut retries: Vec<usize> = Vec::new();
    for (i, req) in batch.iter().enumerate() {
        if !seen.insert(req.hold_id.as_str()) {
            retries.push(i);
            verdicts.push(None);
            continue;
        }
        // The hold cap is judged last, after liveness, the buyer's limit and stock.
        let judged = judge_one(&mut tx, &mut stock, req)
            .await?
            .and_then(|hold| open.judge(req).map(|()| hold));
        match judged {
            Ok(hold) => {
                stock.reserve(&req.sale_id, &req.user_id, req.quantity)?;
                open.opened(req);
                accepted.push((i, hold));
                verdicts.push(None);
            }
            Err(refusal) => verdicts.push(Some(already_held_or(&mut tx, req, refusal).await?)),
        }
    }

    // The common case is fresh ids: insert them all, and look only at the ones that collided
    // (a retry of a request whose hold exists; its stock was taken by the first try).
    let inserted = insert_many(
        &mut tx,
        accepted
            .iter()
            .map(|(i, h)| (h, batch[*i].device_id.as_deref())),
    )
    .await?;
    for (i, hold) in accepted {
        if inserted.contains(hold.id.as_str()) {
            verdicts[i] = Some(Ok(hold));
        } else {
            let req = &batch[i];
            stock.unhold(&req.sale_id, &req.user_id, req.quantity)?;
            open.not_opened(req);
            verdicts[i] = Some(already_held_or(&mut tx, req, Refusal::SaleNotLive).await?);
        }
    }
    for i in retries {
        verdicts[i] = Some(already_held_or(&mut tx, &batch[i], Refusal::SaleNotLive).await?);
    }
    stock.flush(&mut tx).await?;
    tx.commit().await.port()?;
    verdicts
        .into_iter()
        .map(|v| v.ok_or_else(|| internal("a reservation was left without a verdict")))
        .collect()
}

/// The judge's decision on one request against the batch's in-memory state.
async fn judge_one(
    conn: &mut SqliteConnection,
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
    Ok(judge_reserve_in_drop(status, available, units, limit, drop, req.quantity).map(|()| hold))
}

/// Inserts holds in multi-row statements, skipping ids that exist; returns the ids written.
async fn insert_many<'h>(
    conn: &mut SqliteConnection,
    holds: impl Iterator<Item = (&'h Hold, Option<&'h str>)>,
) -> PortResult<std::collections::HashSet<String>> {
    let holds: Vec<(&Hold, Option<&str>)> = holds.collect();
    let mut written = std::collections::HashSet::with_capacity(holds.len());
    for chunk in holds.chunks(HOLDS_PER_STATEMENT) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO holds (id, sale_id, user_id, quantity, unit_price, currency, state, \
             created_at, expires_at, device_id) ",
        );
        qb.push_values(chunk, |mut row, (h, device)| {
            row.push_bind(h.id.as_str().to_owned())
                .push_bind(h.sale_id.as_str().to_owned())
                .push_bind(h.user_id.as_str().to_owned())
                .push_bind(i64::from(h.quantity))
                .push_bind(h.unit_price.0)
                .push_bind(h.currency.as_str().to_owned())
                .push_bind(h.state.as_str())
                .push_bind(h.created_at.0)
                .push_bind(h.expires_at.0)
                .push_bind(device.map(str::to_owned));
        });
        qb.push(" ON CONFLICT (id) DO NOTHING RETURNING id");
        let ids: Vec<String> = qb.build_query_scalar().fetch_all(&mut *conn).await.port()?;
        written.extend(ids);
    }
    Ok(written)
}

/// Holds per multi-row insert: 10 parameters each, well under SQLite's limit.
const HOLDS_PER_STATEMENT: usize = 200;

/// A retried request whose hold already exists gets that hold (its stock was taken once, by
/// the first try); any other request gets `refusal`. Someone else's hold under the same id is
/// never shown.
async fn already_held_or(
    conn: &mut SqliteConnection,
    req: &ReserveRequest,
    refusal: Refusal,
) -> PortResult<Result<Hold, Refusal>> {
    match find(conn, &req.hold_id).await? {
        Some(existing)
            if existing.hold.user_id == req.user_id && existing.hold.sale_id == req.sale_id =>
        {
            Ok(Ok(existing.hold))
        }
        Some(_) => {
            tracing::warn!(hold = %req.hold_id, "hold id reused by another buyer or sale");
            Ok(Err(Refusal::SaleNotLive))
        }
        None => Ok(Err(refusal)),
    }
}

/// The buyer's holds that are active and unexpired at `now`, oldest first.
pub(crate) async fn live(
    reader: &SqlitePool,
    user: &UserId,
    now: Timestamp,
) -> PortResult<Vec<Hold>> {
    let found = sqlx::query(concat!(
        "SELECT ",
        hold_cols!(),
        hold_from!(),
        "WHERE h.user_id = ?1 AND h.state = 'active' AND h.expires_at > ?2 \
         ORDER BY h.created_at, h.id"
    ))
    .bind(user.as_str())
    .bind(now.0)
    .fetch_all(reader)
    .await
    .port()?;
    found
        .iter()
        .map(|r| rows::hold_row(r).map(|h| h.hold))
        .collect()
}

/// A hold of this user that may be changed at `now`, or why not.
async fn own_changeable(
    conn: &mut SqliteConnection,
    user: &UserId,
    id: &HoldId,
    now: Timestamp,
) -> PortResult<Result<HoldRow, HoldError>> {
    let Some(row) = find(conn, id).await? else {
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
    writer: &SqlitePool,
    user: &UserId,
    id: &HoldId,
    now: Timestamp,
) -> PortResult<Result<Hold, HoldError>> {
    let mut tx = writer.begin_with(BEGIN_WRITE).await.port()?;
    let mut hold = match own_changeable(&mut tx, user, id, now).await? {
        Ok(row) => row.hold,
        Err(e) => return Ok(Err(e)),
    };
    let mut stock = TxStock::default();
    stock.touch(&mut tx, &hold.sale_id, user).await?;
    hold.state = end(&mut tx, &hold.id, hold.state, HoldState::Released).await?;
    stock.unhold(&hold.sale_id, user, hold.quantity)?;
    stock.flush(&mut tx).await?;
    tx.commit().await.port()?;
    Ok(Ok(hold))
}

/// Changes a live hold's quantity: growth is a reservation of the difference, judged with the
/// sale's status at `now`; shrinking returns the difference at once. The expiry stays.
pub(crate) async fn resize(
    writer: &SqlitePool,
    user: &UserId,
    id: &HoldId,
    quantity: u32,
    now: Timestamp,
) -> PortResult<Result<Hold, HoldError>> {
    if quantity == 0 {
        return Err(internal("resize to zero units: release the hold instead"));
    }
    let mut tx = writer.begin_with(BEGIN_WRITE).await.port()?;
    let mut hold = match own_changeable(&mut tx, user, id, now).await? {
        Ok(row) => row.hold,
        Err(e) => return Ok(Err(e)),
    };
    if quantity == hold.quantity {
        return Ok(Ok(hold));
    }
    let mut stock = TxStock::default();
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
    let drop = stock.drop_units(&mut tx, &hold.sale_id, user).await?;
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
    let done = sqlx::query("UPDATE holds SET quantity = ?1 WHERE id = ?2 AND state = 'active'")
        .bind(i64::from(quantity))
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
/// can still find them and retake the stock.
pub(crate) async fn expire_due(
    writer: &SqlitePool,
    now: Timestamp,
    limit: u32,
) -> PortResult<Vec<Hold>> {
    let mut tx = writer.begin_with(BEGIN_WRITE).await.port()?;
    let due = sqlx::query(concat!(
        "SELECT ",
        hold_cols!(),
        hold_from!(),
        "WHERE h.state = 'active' AND h.expires_at <= ?1 ORDER BY h.expires_at, h.id LIMIT ?2"
    ))
    .bind(now.0)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .port()?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let mut stock = TxStock::default();
    let mut out = Vec::with_capacity(due.len());
    for row in &due {
        let mut hold = rows::hold_row(row)?.hold;
        stock.touch(&mut tx, &hold.sale_id, &hold.user_id).await?;
        hold.state = end(&mut tx, &hold.id, hold.state, HoldState::Expired).await?;
        stock.unhold(&hold.sale_id, &hold.user_id, hold.quantity)?;
        out.push(hold);
    }
    stock.flush(&mut tx).await?;
    tx.commit().await.port()?;
    Ok(out)
}

/// Marks live holds lapsing within `within_ms` as warned and writes their `hold_expiring`
/// events, in one write transaction.
pub(crate) async fn warn_expiring(
    writer: &SqlitePool,
    now: Timestamp,
    within_ms: i64,
    limit: u32,
) -> PortResult<usize> {
    let mut tx = writer.begin_with(BEGIN_WRITE).await.port()?;
    let due = sqlx::query(concat!(
        "SELECT ",
        hold_cols!(),
        hold_from!(),
        "WHERE h.state = 'active' AND h.expiry_warned = 0 AND h.expires_at > ?1 \
         AND h.expires_at <= ?2 ORDER BY h.expires_at, h.id LIMIT ?3"
    ))
    .bind(now.0)
    .bind(now.0.saturating_add(within_ms))
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .port()?;
    for row in &due {
        let hold = rows::hold_row(row)?.hold;
        sqlx::query("UPDATE holds SET expiry_warned = 1 WHERE id = ?1")
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
