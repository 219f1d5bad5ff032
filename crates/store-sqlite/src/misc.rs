//! Idempotency keys, webhook de-duplication and the append-only audit log.
//!
//! Idempotency: one row per `(user, key)`; `status` is NULL while the first request is being
//! worked on. A claim older than the caller's lease counts as abandoned (its request died) and
//! is taken over by the next request with that key, which then owns the row.

use sqlx::SqlitePool;

use stampede_app::ports::{
    AuditEntry, AuditFilter, EventKind, IdempotencyStart, Notification, PortResult,
};
use stampede_core::{Timestamp, UserId};

use crate::error::{internal, OrPort};
use crate::rows::{col, col_ts, col_word};
use crate::BEGIN_WRITE;

/// Claims a key, or says why not (replay, mismatch, in progress).
pub(crate) async fn idempotency_start(
    writer: &SqlitePool,
    user: &UserId,
    key: &str,
    request_hash: &str,
    now: Timestamp,
    lease_ms: i64,
) -> PortResult<IdempotencyStart> {
    let mut tx = writer.begin_with(BEGIN_WRITE).await.port()?;
    let row = sqlx::query(
        "SELECT request_hash, status, body, started_at FROM idempotency \
         WHERE user_id = ?1 AND key = ?2",
    )
    .bind(user.as_str())
    .bind(key)
    .fetch_optional(&mut *tx)
    .await
    .port()?;
    let verdict = match row {
        None => {
            sqlx::query(
                "INSERT INTO idempotency (user_id, key, request_hash, status, body, started_at) \
                 VALUES (?1, ?2, ?3, NULL, NULL, ?4)",
            )
            .bind(user.as_str())
            .bind(key)
            .bind(request_hash)
            .bind(now.0)
            .execute(&mut *tx)
            .await
            .port()?;
            IdempotencyStart::Proceed
        }
        Some(row) => {
            let stored_hash: String = col(&row, "request_hash")?;
            let status: Option<i64> = col(&row, "status")?;
            let started_at = col_ts(&row, "started_at")?;
            match status {
                Some(status) if stored_hash == request_hash => IdempotencyStart::Replay {
                    status: u16::try_from(status)
                        .map_err(|_| internal(format!("stored status {status}")))?,
                    body: col::<Option<String>>(&row, "body")?.unwrap_or_default(),
                },
                Some(_) => IdempotencyStart::Mismatch,
                None if started_at.plus_millis(lease_ms) <= now => {
                    sqlx::query(
                        "UPDATE idempotency SET request_hash = ?3, started_at = ?4 \
                         WHERE user_id = ?1 AND key = ?2 AND status IS NULL",
                    )
                    .bind(user.as_str())
                    .bind(key)
                    .bind(request_hash)
                    .bind(now.0)
                    .execute(&mut *tx)
                    .await
                    .port()?;
                    IdempotencyStart::Proceed
                }
                None if stored_hash == request_hash => IdempotencyStart::InProgress,
                None => IdempotencyStart::Mismatch,
            }
        }
    };
    tx.commit().await.port()?;
    Ok(verdict)
}

/// Stores the answer for a claimed key.
pub(crate) async fn idempotency_finish(
    writer: &SqlitePool,
    user: &UserId,
    key: &str,
    status: u16,
    body: &str,
) -> PortResult<()> {
    let done = sqlx::query(
        "UPDATE idempotency SET status = ?3, body = ?4 WHERE user_id = ?1 AND key = ?2",
    )
    .bind(user.as_str())
    .bind(key)
    .bind(i64::from(status))
    .bind(body)
    .execute(writer)
    .await
    .port()?;
    if done.rows_affected() == 0 {
        tracing::warn!(%user, key, "idempotency_finish for a key that was never claimed");
    }
    Ok(())
}

/// Drops an unanswered claim (an answered one stays, so it keeps replaying).
pub(crate) async fn idempotency_abandon(
    writer: &SqlitePool,
    user: &UserId,
    key: &str,
) -> PortResult<()> {
    sqlx::query("DELETE FROM idempotency WHERE user_id = ?1 AND key = ?2 AND status IS NULL")
        .bind(user.as_str())
        .bind(key)
        .execute(writer)
        .await
        .port()?;
    Ok(())
}

/// Whether a webhook event id has been recorded.
pub(crate) async fn webhook_event_seen(reader: &SqlitePool, event_id: &str) -> PortResult<bool> {
    let row = sqlx::query("SELECT 1 FROM webhook_events WHERE event_id = ?1")
        .bind(event_id)
        .fetch_optional(reader)
        .await
        .port()?;
    Ok(row.is_some())
}

/// Records a webhook event id; `false` if it was already seen.
pub(crate) async fn record_webhook_event(
    writer: &SqlitePool,
    event_id: &str,
    now: Timestamp,
) -> PortResult<bool> {
    let done = sqlx::query(
        "INSERT INTO webhook_events (event_id, received_at) VALUES (?1, ?2) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(now.0)
    .execute(writer)
    .await
    .port()?;
    Ok(done.rows_affected() == 1)
}

fn json_text(v: &Option<serde_json::Value>) -> Option<String> {
    v.as_ref().map(serde_json::Value::to_string)
}

fn json_value(text: Option<String>) -> PortResult<Option<serde_json::Value>> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| internal(format!("audit json: {e}"))))
        .transpose()
}

/// Appends one entry (the table refuses updates and deletes).
pub(crate) async fn append_audit(writer: &SqlitePool, e: &AuditEntry) -> PortResult<()> {
    sqlx::query(
        "INSERT INTO audit (id, at, actor, action, target, before_json, after_json) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(&e.id)
    .bind(e.at.0)
    .bind(&e.actor)
    .bind(&e.action)
    .bind(&e.target)
    .bind(json_text(&e.before))
    .bind(json_text(&e.after))
    .execute(writer)
    .await
    .port()?;
    Ok(())
}

/// Entries matching the filter, oldest first. A `limit` of 0 means no limit.
pub(crate) async fn audit(reader: &SqlitePool, f: &AuditFilter) -> PortResult<Vec<AuditEntry>> {
    let limit = if f.limit == 0 { -1 } else { i64::from(f.limit) };
    sqlx::query(
        "SELECT id, at, actor, action, target, before_json, after_json FROM audit \
         WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR action = ?2) \
         AND (?3 IS NULL OR id > ?3) ORDER BY id LIMIT ?4",
    )
    .bind(f.actor.as_deref())
    .bind(f.action.as_deref())
    .bind(f.after.as_deref())
    .bind(limit)
    .fetch_all(reader)
    .await
    .port()?
    .iter()
    .map(|r| {
        Ok(AuditEntry {
            id: col(r, "id")?,
            at: col_ts(r, "at")?,
            actor: col(r, "actor")?,
            action: col(r, "action")?,
            target: col(r, "target")?,
            before: json_value(col(r, "before_json")?)?,
            after: json_value(col(r, "after_json")?)?,
        })
    })
    .collect()
}

/// Adds one notification to a buyer's feed; `false` (nothing written) if its id is there
/// already, so a redelivered event takes effect once.
pub(crate) async fn append_notification(writer: &SqlitePool, n: &Notification) -> PortResult<bool> {
    let done = sqlx::query(
        "INSERT INTO notifications (id, user_id, kind, created_at, data_json) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&n.id)
    .bind(n.user_id.as_str())
    .bind(n.kind.as_str())
    .bind(n.created_at.0)
    .bind(n.data.to_string())
    .execute(writer)
    .await
    .port()?;
    Ok(done.rows_affected() == 1)
}

/// A buyer's notifications after a cursor, oldest first.
pub(crate) async fn notifications(
    reader: &SqlitePool,
    user: &UserId,
    after: Option<&str>,
    limit: u32,
) -> PortResult<Vec<Notification>> {
    sqlx::query(
        "SELECT id, user_id, kind, created_at, data_json FROM notifications \
         WHERE user_id = ?1 AND (?2 IS NULL OR rowid > COALESCE( \
             (SELECT rowid FROM notifications WHERE id = ?2 AND user_id = ?1), -1)) \
         ORDER BY rowid LIMIT ?3",
    )
    .bind(user.as_str())
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(reader)
    .await
    .port()?
    .iter()
    .map(|r| {
        let data: String = col(r, "data_json")?;
        Ok(Notification {
            id: col(r, "id")?,
            user_id: UserId::from_trusted(col(r, "user_id")?),
            kind: col_word(r, "kind", EventKind::parse)?,
            created_at: col_ts(r, "created_at")?,
            data: serde_json::from_str(&data)
                .map_err(|e| internal(format!("notification json: {e}")))?,
        })
    })
    .collect()
}
