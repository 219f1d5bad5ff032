//! Outgoing webhooks to the shop: one delivery per order event, leased by a sender on any node,
//! retried with the caller's backoff until the shop answers 2xx.
//!
//! Invariants:
//! * one row per event id: queueing again is a no-op (`ON CONFLICT DO NOTHING`), whichever
//!   node applies a redelivered event;
//! * a claimed delivery is leased (`lease_until`) as outbox events are ([`crate::outbox`]): no
//!   other claim, on any node, returns it before the lease lapses, so no delivery goes to two;
//! * a delivery is due only once `next_attempt_at <= now` (the backoff);
//! * a delivered row (`delivered_at` set) is never claimed again.

use sqlx::Pool;

use stampede_app::ports::{EventKind, OutboxEvent, PortResult, WebhookDelivery};
use stampede_core::{Timestamp, UserId};

use crate::engine::{statement, Bind, Engine, Run};
use crate::internal;
use crate::rows::{col, col_ts, col_u32, col_word, DbRow};

/// Queues `event` for delivery, due at `now`; `false` if it was queued before.
pub async fn enqueue<DB: Engine>(
    writer: &Pool<DB>,
    event: &OutboxEvent,
    now: Timestamp,
) -> PortResult<bool> {
    let done = statement::<DB>(
        "INSERT INTO webhook_deliveries \
             (event_id, kind, user_id, payload_json, created_at, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
    )
    .text(&event.id)
    .text(event.kind.as_str())
    .text(event.user_id.as_str())
    .string(event.data.to_string())
    .int(event.created_at.0)
    .int(now.0)
    .run_in(writer, "webhook_enqueue")
    .await?;
    Ok(done == 1)
}

/// A `webhook_deliveries` row.
fn delivery<R: DbRow>(r: &R) -> PortResult<WebhookDelivery> {
    let payload: String = col(r, "payload_json")?;
    Ok(WebhookDelivery {
        event_id: col(r, "event_id")?,
        kind: col_word(r, "kind", EventKind::parse)?,
        user_id: UserId::from_trusted(col(r, "user_id")?),
        payload: serde_json::from_str(&payload)
            .map_err(|e| internal(format!("webhook payload json: {e}")))?,
        created_at: col_ts(r, "created_at")?,
        attempts: col_u32(r, "attempts")?,
        next_attempt_at: col_ts(r, "next_attempt_at")?,
        last_error: col(r, "last_error")?,
    })
}

/// Leases up to `limit` due deliveries until `now + lease_ms`, oldest first.
pub async fn claim<DB: Engine>(
    writer: &Pool<DB>,
    now: Timestamp,
    lease_ms: i64,
    limit: u32,
) -> PortResult<Vec<WebhookDelivery>> {
    let sql = format!(
        "UPDATE webhook_deliveries SET lease_until = $1 WHERE event_id IN (\
             SELECT event_id FROM webhook_deliveries \
             WHERE delivered_at IS NULL AND next_attempt_at <= $2 AND lease_until <= $2 \
             ORDER BY event_id LIMIT $3{}) \
         RETURNING event_id, kind, user_id, payload_json, created_at, attempts, \
             next_attempt_at, last_error",
        DB::SKIP_LOCKED
    );
    let claim = (now, lease_ms, limit);
    crate::outbox::lease(
        writer,
        &sql,
        claim,
        delivery,
        |d| &d.event_id,
        "webhook_claim",
    )
    .await
}

/// Marks a delivery done (the first delivery time is kept) and lets go of its lease.
pub async fn delivered<DB: Engine>(
    writer: &Pool<DB>,
    event_id: &str,
    now: Timestamp,
) -> PortResult<()> {
    statement::<DB>(
        "UPDATE webhook_deliveries SET delivered_at = $2, lease_until = 0 \
         WHERE event_id = $1 AND delivered_at IS NULL",
    )
    .text(event_id)
    .int(now.0)
    .run_in(writer, "webhook_delivered")
    .await?;
    Ok(())
}

/// Counts a failed attempt, keeps its error, and makes the delivery due at `next_attempt_at`.
pub async fn failed<DB: Engine>(
    writer: &Pool<DB>,
    event_id: &str,
    next_attempt_at: Timestamp,
    error: &str,
) -> PortResult<()> {
    statement::<DB>(
        "UPDATE webhook_deliveries \
         SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3, lease_until = 0 \
         WHERE event_id = $1 AND delivered_at IS NULL",
    )
    .text(event_id)
    .int(next_attempt_at.0)
    .text(error)
    .run_in(writer, "webhook_failed")
    .await?;
    Ok(())
}
