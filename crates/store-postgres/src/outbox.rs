//! The transactional outbox: events about buyers' orders, written by `apply_payment` in the
//! same transaction as the change they report, and handed to a relay at least once.
//!
//! Invariants:
//! * an event exists iff its order change committed (same transaction);
//! * a claimed event is leased (`lease_until`): no other claim returns it before the lease
//!   lapses. Relays on several nodes claim at once: each locks the rows it leases and skips
//!   rows another claim has locked (`FOR UPDATE SKIP LOCKED`), so no event goes to two;
//! * a delivered event (`delivered_at` set) is never claimed again.

use sqlx::PgPool;

use stampede_app::ports::{EventKind, OutboxEvent, PortResult};
use stampede_core::{Timestamp, UserId};

use crate::error::{internal, OrPort};
use crate::rows::{col, col_ts, col_word};

/// Leases up to `limit` waiting events whose lease has lapsed, oldest first. One statement:
/// the rows are locked as they are chosen, and rows locked by a concurrent claim are skipped
/// (a row whose lease a concurrent claim has just renewed is re-checked and dropped).
pub(crate) async fn claim(
    pool: &PgPool,
    now: Timestamp,
    lease_ms: i64,
    limit: u32,
) -> PortResult<Vec<OutboxEvent>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "UPDATE outbox SET lease_until = $1 WHERE id IN (\
             SELECT id FROM outbox WHERE delivered_at IS NULL AND lease_until <= $2 \
             ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING id, user_id, kind, created_at, data_json::text AS data_json",
    )
    .bind(now.plus_millis(lease_ms).0)
    .bind(now.0)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .port()?;
    let mut events = rows
        .iter()
        .map(|r| {
            let data: String = col(r, "data_json")?;
            Ok(OutboxEvent {
                id: col(r, "id")?,
                user_id: UserId::from_trusted(col(r, "user_id")?),
                kind: col_word(r, "kind", EventKind::parse)?,
                created_at: col_ts(r, "created_at")?,
                data: serde_json::from_str(&data)
                    .map_err(|e| internal(format!("outbox json: {e}")))?,
            })
        })
        .collect::<PortResult<Vec<_>>>()?;
    // RETURNING comes in no promised order.
    events.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(events)
}

/// Marks events delivered (the first delivery time is kept).
pub(crate) async fn delivered(pool: &PgPool, ids: &[String]) -> PortResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    // When it was delivered is bookkeeping only (no decision depends on it): the database's
    // clock, in milliseconds since the epoch, is good enough.
    sqlx::query(
        "UPDATE outbox SET delivered_at = (extract(epoch FROM clock_timestamp()) * 1000)::bigint \
         WHERE id = ANY($1) AND delivered_at IS NULL",
    )
    .bind(ids)
    .execute(pool)
    .await
    .port()?;
    Ok(())
}

/// Ends the lease of undelivered events, so the next claim takes them again.
pub(crate) async fn release(pool: &PgPool, ids: &[String]) -> PortResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE outbox SET lease_until = 0 WHERE id = ANY($1) AND delivered_at IS NULL")
        .bind(ids)
        .execute(pool)
        .await
        .port()?;
    Ok(())
}

/// How many events wait, and when the oldest of them was written.
pub(crate) async fn backlog(pool: &PgPool) -> PortResult<(i64, Option<Timestamp>)> {
    let (count, oldest): (i64, Option<i64>) =
        sqlx::query_as("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE delivered_at IS NULL")
            .fetch_one(pool)
            .await
            .port()?;
    Ok((count, oldest.map(Timestamp)))
}
