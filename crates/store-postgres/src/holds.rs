//! Holds: the group commit's batch path of reserving, PostgreSQL's own (every hold id is
//! claimed in the unpartitioned `hold_ids` first). Releasing, resizing, expiring and the
//! shared pieces of judging are `stampede_store_sql::holds`, which also states the lock order
//! every transaction here follows: the hold rows it changes, then the sale rows (in sale id
//! order), then `user_units`. The group commit takes no hold locks: it only inserts new holds
//! and reads retried ones without locking.

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool};

use stampede_app::ports::{PortResult, ReserveRequest};
use stampede_core::judge::Refusal;
use stampede_core::{Hold, SaleId, UserId};
use stampede_store_sql::engine::begin_write;
use stampede_store_sql::hold_cap::OpenHolds;
use stampede_store_sql::holds::{find_unlocked, judge_request};
use stampede_store_sql::txstock::TxStock;

use crate::error::OrPort;
use crate::hold_cap;

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
    let mut tx = begin_write(pool).await?;
    let mut stock = TxStock::default();
    let sales: Vec<&SaleId> = batch.iter().map(|r| &r.sale_id).collect();
    stock.lock_sales_with_drops(&mut tx, &sales).await?;
    let pairs: Vec<(&SaleId, &UserId)> = batch.iter().map(|r| (&r.sale_id, &r.user_id)).collect();
    stock.load_units(&mut tx, &pairs).await?;
    stock.load_drop_units(&mut tx, &pairs).await?;
    let mut open = hold_cap::lock_and_load(&mut tx, batch).await?;
    // Ids already issued (retries after a lost reply), read after the sale locks: a retry of a
    // hold in a sale we now hold locked cannot be in flight elsewhere.
    let ids: Vec<String> = batch.iter().map(|r| r.hold_id.to_string()).collect();
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
            if let Some(row) = find_unlocked(&mut *conn, &req.user_id, &req.hold_id).await? {
                return Ok(Ok(row.hold));
            }
        }
        // Someone else's hold under this id: never show it; refuse this request only.
        tracing::warn!(hold = %req.hold_id, "hold id reused by another buyer or sale");
        return Ok(Err(Refusal::SaleNotLive));
    }
    let hold = match judge_request(&mut *conn, stock, req).await? {
        Ok(hold) => hold,
        Err(refusal) => return Ok(Err(refusal)),
    };
    // The hold cap is judged last, after liveness, the buyer's limit and stock.
    if let Err(refusal) = open.judge(req) {
        return Ok(Err(refusal));
    }
    if !insert(conn, &hold, req.device_id.as_deref()).await? {
        // Claimed meanwhile by a transaction on another sale: not this buyer's hold.
        tracing::warn!(hold = %req.hold_id, "hold id claimed concurrently for another sale");
        return Ok(Err(Refusal::SaleNotLive));
    }
    let owner = (
        req.user_id.as_str().to_owned(),
        req.sale_id.as_str().to_owned(),
    );
    issued.insert(req.hold_id.as_str().to_owned(), owner);
    stock.reserve(&req.sale_id, &req.user_id, req.quantity)?;
    open.opened(req, 1);
    Ok(Ok(hold))
}
