//! Idempotency keys, webhook de-duplication and the append-only audit log.
//!
//! Idempotency: one row per `(user, key)`; `status` is NULL while the first request is being
//! worked on. A claim older than the caller's lease counts as abandoned (its request died) and
//! is taken over by the next request with that key, which then owns the row.

use sqlx::PgPool;

use stampede_app::ports::{
    AuditEntry, AuditFilter, EventKind, IdempotencyStart, Notification, PortResult,
};
use stampede_core::{Timestamp, UserId};

use crate::error::{internal, OrPort};
use crate::rows::{col, col_ts, col_word};

/// Claims a key, or says why not (replay, mismatch, in progress). The claim is an insert
/// first, so two nodes racing on one key cannot both proceed: the loser waits for the
/// winner's insert to commit, then reads and locks the winner's row.
pub(crate) async fn idempotency_start(
    pool: &PgPool,
    user: &UserId,
    key: &str,
    request_hash: &str,
    now: Timestamp,
    lease_ms: i64,
) -> PortResult<IdempotencyStart> {
    let mut tx = pool.begin().await.port()?;
    let claimed = sqlx::query(
        "INSERT INTO idempotency (user_id, key, request_hash, status, body, started_at) \
         VALUES ($1, $2, $3, NULL, NULL, $4) ON CONFLICT (user_id, key) DO NOTHING",
    )
    .bind(user.as_str())
    .bind(key)
    .bind(request_hash)
    .bind(now.0)
    .execute(&mut *tx)
    .await
    .port()?;
    if claimed.rows_affected() == 1 {
        tx.commit().await.port()?;
        return Ok(IdempotencyStart::Proceed);
    }
    let row = sqlx::query(
        "SELECT request_hash, status, body, started_at FROM idempotency \
         WHERE user_id = $1 AND key = $2 FOR UPDATE",
    )
    .bind(user.as_str())
    .bind(key)
    .fetch_one(&mut *tx)
    .await
    .port()?;
    let stored_hash: String = col(&row, "request_hash")?;
    let status: Option<i64> = col(&row, "status")?;
    let started_at = col_ts(&row, "started_at")?;
    let verdict = match status {
        Some(status) if stored_hash == request_hash => IdempotencyStart::Replay {
            status: u16::try_from(status)
                .map_err(|_| internal(format!("stored status {status}")))?,
            body: col::<Option<String>>(&row, "body")?.unwrap_or_default(),
        },
        Some(_) => IdempotencyStart::Mismatch,
        None if started_at.plus_millis(lease_ms) <= now => {
            sqlx::query(
                "UPDATE idempotency SET request_hash = $3, started_at = $4 \
                 WHERE user_id = $1 AND key = $2 AND status IS NULL",
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
    };
    tx.commit().await.port()?;
    Ok(verdict)
}

/// Stores the answer for a claimed key.
pub(crate) async fn idempotency_finish(
    pool: &PgPool,
    user: &UserId,
    key: &str,
    status: u16,
    body: &str,
) -> PortResult<()> {
    let done = sqlx::query(
        "UPDATE idempotency SET status = $3, body = $4 WHERE user_id = $1 AND key = $2",
    )
    .bind(user.as_str())
    .bind(key)
    .bind(i64::from(status))
    .bind(body)
    .execute(pool)
    .await
    .port()?;
    if done.rows_affected() == 0 {
        tracing::warn!(%user, key, "idempotency_finish for a key that was never claimed");
    }
    Ok(())
}

/// Drops an unanswered claim (an answered one stays, so it keeps replaying).
pub(crate) async fn idempotency_abandon(pool: &PgPool, user: &UserId, key: &str) -> PortResult<()> {
    sqlx::query("DELETE FROM idempotency WHERE user_id = $1 AND key = $2 AND status IS NULL")
        .bind(user.as_str())
        .bind(key)
        .execute(pool)
        .await
        .port()?;
    Ok(())
}

/// Whether a webhook event id has been recorded.
pub(crate) async fn webhook_event_seen(pool: &PgPool, event_id: &str) -> PortResult<bool> {
    let row = sqlx::query("SELECT 1 FROM webhook_events WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(pool)
        .await
        .port()?;
    Ok(row.is_some())
}

/// Records a webhook event id; `false` if it was already seen.
pub(crate) async fn record_webhook_event(
    pool: &PgPool,
    event_id: &str,
    now: Timestamp,
) -> PortResult<bool> {
    let done = sqlx::query(
        "INSERT INTO webhook_events (event_id, received_at) VALUES ($1, $2) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(now.0)
    .execute(pool)
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
pub(crate) async fn append_audit(pool: &PgPool, e: &AuditEntry) -> PortResult<()> {
    sqlx::query(
        "INSERT INTO audit (id, at, actor, action, target, before_json, after_json) \
         VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb)",
    )
    .bind(&e.id)
    .bind(e.at.0)
    .bind(&e.actor)
    .bind(&e.action)
    .bind(&e.target)
    .bind(json_text(&e.before))
    .bind(json_text(&e.after))
    .execute(pool)
    .await
    .port()?;
    Ok(())
}

/// Entries matching the filter, oldest first. A `limit` of 0 means no limit.
pub(crate) async fn audit(pool: &PgPool, f: &AuditFilter) -> PortResult<Vec<AuditEntry>> {
    // LIMIT NULL is no limit.
    let limit = (f.limit != 0).then(|| i64::from(f.limit));
    sqlx::query(
        "SELECT id, at, actor, action, target, before_json::text AS before_json, \
         after_json::text AS after_json FROM audit \
         WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR action = $2) \
         AND ($3::text IS NULL OR id > $3) ORDER BY id LIMIT $4",
    )
    .bind(f.actor.as_deref())
    .bind(f.action.as_deref())
    .bind(f.after.as_deref())
    .bind(limit)
    .fetch_all(pool)
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
pub(crate) async fn append_notification(pool: &PgPool, n: &Notification) -> PortResult<bool> {
    let done = sqlx::query(
        "INSERT INTO notifications (id, user_id, kind, created_at, data_json) \
         VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&n.id)
    .bind(n.user_id.as_str())
    .bind(n.kind.as_str())
    .bind(n.created_at.0)
    .bind(n.data.to_string())
    .execute(pool)
    .await
    .port()?;
    Ok(done.rows_affected() == 1)
}

/// A buyer's notifications after a cursor, oldest first.
pub(crate) async fn notifications(
    pool: &PgPool,
    user: &UserId,
    after: Option<&str>,
    limit: u32,
) -> PortResult<Vec<Notification>> {
    sqlx::query(
        "SELECT id, user_id, kind, created_at, data_json::text AS data_json FROM notifications \
         WHERE user_id = $1 AND ($2::text IS NULL OR seq > COALESCE( \
             (SELECT seq FROM notifications WHERE id = $2 AND user_id = $1), -1)) \
         ORDER BY seq LIMIT $3",
    )
    .bind(user.as_str())
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(pool)
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
