//! Holds: the group commit's batch path of reserving, SQLite's own. Releasing, resizing,
//! expiring and the shared pieces of judging are `stampede_store_sql::holds`.
//!
//! The batch is one write transaction on the single writer connection, and every stock
//! movement goes through [`TxStock`], so the `sales` counters and `user_units` change in the
//! same transaction as the hold rows that justify them.

use std::collections::HashSet;

use sqlx::{SqliteConnection, SqlitePool};

use stampede_app::ports::{PortResult, ReserveRequest};
use stampede_core::judge::Refusal;
use stampede_core::{Hold, SaleId, UserId};
use stampede_store_sql::engine::begin_write;
use stampede_store_sql::holds::judge_request;
use stampede_store_sql::rows::hold_row;
use stampede_store_sql::txstock::TxStock;
use stampede_store_sql::{hold_cols, hold_from};

use crate::error::{internal, OrPort};
use crate::hold_cap::OpenHolds;

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
    let mut tx = begin_write(writer).await?;
    let mut stock = TxStock::default();
    let pairs: Vec<(&SaleId, &UserId)> = batch.iter().map(|r| (&r.sale_id, &r.user_id)).collect();
    stock.load_units(&mut tx, &pairs).await?;
    stock.load_drop_units(&mut tx, &pairs).await?;
    let mut open = OpenHolds::load(&mut tx, batch).await?;

    // Judge in order; `None` marks a request the judge accepted, pending its insert.
    let mut verdicts: Vec<Option<Result<Hold, Refusal>>> = Vec::with_capacity(batch.len());
    let mut accepted: Vec<(usize, Hold)> = Vec::new();
    // A second request with an id already seen in this batch is a retry: it is resolved after
    // the insert, against whatever the first one wrote, and never takes stock itself.
    let mut seen = HashSet::with_capacity(batch.len());
    let mut retries: Vec<usize> = Vec::new();
    for (i, req) in batch.iter().enumerate() {
        if !seen.insert(req.hold_id.as_str()) {
            retries.push(i);
            verdicts.push(None);
            continue;
        }
        // The hold cap is judged last, after liveness, the buyer's limit and stock.
        let judged = judge_request(&mut tx, &mut stock, req)
            .await?
            .and_then(|hold| open.judge(req).map(|()| hold));
        match judged {
            Ok(hold) => {
                stock.reserve(&req.sale_id, &req.user_id, req.quantity)?;
                open.opened(req, 1);
                accepted.push((i, hold));
                verdicts.push(None);
            }
            Err(refusal) => verdicts.push(Some(already_held_or(&mut tx, req, refusal).await?)),
        }
    }

    // The common case is fresh ids: insert them all, and look only at the ones that collided
    // (a retry of a request whose hold exists; its stock was taken by the first try).
    let inserted = insert_many(&mut tx, batch, &accepted).await?;
    for (i, hold) in accepted {
        if inserted.contains(hold.id.as_str()) {
            verdicts[i] = Some(Ok(hold));
        } else {
            let req = &batch[i];
            stock.unhold(&req.sale_id, &req.user_id, req.quantity)?;
            open.opened(req, -1);
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

/// Inserts the accepted holds (each with its request's index in `batch`) in multi-row
/// statements, skipping ids that exist; returns the ids written.
async fn insert_many(
    conn: &mut SqliteConnection,
    batch: &[ReserveRequest],
    accepted: &[(usize, Hold)],
) -> PortResult<HashSet<String>> {
    let mut written = HashSet::with_capacity(accepted.len());
    for chunk in accepted.chunks(HOLDS_PER_STATEMENT) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO holds (id, sale_id, user_id, quantity, unit_price, currency, state, \
             created_at, expires_at, device_id) ",
        );
        qb.push_values(chunk, |mut row, (i, h)| {
            row.push_bind(h.id.as_str().to_owned())
                .push_bind(h.sale_id.as_str().to_owned())
                .push_bind(h.user_id.as_str().to_owned())
                .push_bind(i64::from(h.quantity))
                .push_bind(h.unit_price.0)
                .push_bind(h.currency.as_str().to_owned())
                .push_bind(h.state.as_str())
                .push_bind(h.created_at.0)
                .push_bind(h.expires_at.0)
                .push_bind(batch[*i].device_id.clone());
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
/// the first try); any other request gets `refusal`. The hold is looked up by id alone, whoever's
/// it is: someone else's hold under the same id is never shown.
async fn already_held_or(
    conn: &mut SqliteConnection,
    req: &ReserveRequest,
    refusal: Refusal,
) -> PortResult<Result<Hold, Refusal>> {
    let sql = concat!("SELECT ", hold_cols!(), hold_from!(), "WHERE h.id = $1");
    let row = sqlx::query(sql)
        .bind(req.hold_id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .port()?;
    match row.map(|r| hold_row(&r)).transpose()? {
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
