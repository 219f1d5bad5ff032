//! The transactional outbox: events about buyers' orders, written by `apply_payment` in the
//! same transaction as the change they report, and handed to a relay at least once.
//!
//! Invariants:
//! * an event exists iff its order change committed (same transaction);
//! * a claimed event is leased (`lease_until`): no other claim returns it before the lease
//!   lapses. Claims run on the single writer connection, so two claims never interleave;
//! * a delivered event (`delivered_at` set) is never claimed again.

use sqlx::SqlitePool;

use stampede_app::ports::{EventKind, OutboxEvent, PortResult};
use stampede_core::{Timestamp, UserId};

use crate::error::{internal, OrPort};
use crate::rows::{col, col_ts, col_word};
use crate::BEGIN_WRITE;

/// Leases up to `limit` waiting events whose lease has lapsed, oldest first.
pub(crate) async fn claim(
    writer: &SqlitePool,
    now: Timestamp,
    lease_ms: i64,
    limit: u32,
) -> PortResult<Vec<OutboxEvent>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut tx = writer.begin_with(BEGIN_WRITE).await.port()?;
    let rows = sqlx::query(
        "UPDATE outbox SET lease_until = ?1 WHERE id IN (\
             SELECT id FROM outbox WHERE delivered_at IS NULL AND lease_until <= ?2 \
             ORDER BY id LIMIT ?3) \
         RETURNING id, user_id, kind, created_at, data_json",
    )
    .bind(now.plus_millis(lease_ms).0)
    .bind(now.0)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
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
    tx.commit().await.port()?;
    // RETURNING comes in no promised order.
    events.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(events)
}

/// Marks events delivered (the first delivery time is kept).
pub(crate) async fn delivered(writer: &SqlitePool, ids: &[String]) -> PortResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let ids = serde_json::Value::from(ids.to_vec()).to_string();
    // When it was delivered is bookkeeping only (no decision depends on it): the database's
    // clock, in milliseconds since the epoch, is good enough.
    sqlx::query(
        "UPDATE outbox SET delivered_at = \
             CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) \
         WHERE delivered_at IS NULL AND id IN (SELECT value FROM json_each(?1))",
    )
    .bind(ids)
    .execute(writer)
    .await
    .port()?;
    Ok(())
}

/// Ends the lease of undelivered events, so the next claim takes them again.
pub(crate) async fn release(writer: &SqlitePool, ids: &[String]) -> PortResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let ids = serde_json::Value::from(ids.to_vec()).to_string();
    sqlx::query(
        "UPDATE outbox SET lease_until = 0 \
         WHERE delivered_at IS NULL AND id IN (SELECT value FROM json_each(?1))",
    )
    .bind(ids)
    .execute(writer)
    .await
    .port()?;
    Ok(())
}

/// How many events wait, and when the oldest of them was written.
pub(crate) async fn backlog(reader: &SqlitePool) -> PortResult<(i64, Option<Timestamp>)> {
    let (count, oldest): (i64, Option<i64>) =
        sqlx::query_as("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE delivered_at IS NULL")
            .fetch_one(reader)
            .await
            .port()?;
    Ok((count, oldest.map(Timestamp)))
}
