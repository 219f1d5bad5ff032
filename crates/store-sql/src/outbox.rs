//! The transactional outbox: events about buyers' orders, written by the payment answers in the
//! same transaction as the change they report, and handed to a relay at least once.
//!
//! Invariants:
//! * an event exists iff its order change committed (same transaction);
//! * a claimed event is leased (`lease_until`): no other claim returns it before the lease
//!   lapses. On SQLite claims run on the single writer connection, so two claims never
//!   interleave; on PostgreSQL relays on several nodes claim at once: each locks the rows it
//!   leases and skips rows another claim has locked ([`Engine::SKIP_LOCKED`]), so no event
//!   goes to two;
//! * a delivered event (`delivered_at` set) is never claimed again.

use sqlx::Pool;

use stampede_app::ports::{EventKind, OutboxEvent, PortResult};
use stampede_core::{Timestamp, UserId};

use crate::engine::{begin_write, commit, one, statement, values_list, Bind, Conn, Engine, Run};
use crate::error::OrPort;
use crate::internal;
use crate::rows::{col, col_ts, col_word};

/// Writes events inside the caller's transaction, a statement for up to 500 of them.
pub async fn insert<DB: Engine>(
    conn: &mut impl Conn<DB>,
    events: &[OutboxEvent],
) -> PortResult<()> {
    for chunk in events.chunks(500) {
        // `VALUES` names its columns `column1`… on both engines.
        let sql = format!(
            "INSERT INTO outbox (id, user_id, kind, created_at, data_json) \
             SELECT column1, column2, column3, column4, CAST(column5 AS {}) FROM (VALUES {}) AS v",
            DB::JSON,
            values_list(chunk.len(), 5)
        );
        let data: Vec<String> = chunk.iter().map(|e| e.data.to_string()).collect();
        let mut q = statement::<DB>(&sql);
        for (e, data) in chunk.iter().zip(&data) {
            q = q
                .text(&e.id)
                .text(e.user_id.as_str())
                .text(e.kind.as_str())
                .int(e.created_at.0)
                .text(data);
        }
        q.run(conn).await?;
    }
    Ok(())
}

/// Leases up to `limit` waiting events whose lease has lapsed, oldest first.
pub async fn claim<DB: Engine>(
    writer: &Pool<DB>,
    now: Timestamp,
    lease_ms: i64,
    limit: u32,
) -> PortResult<Vec<OutboxEvent>> {
    let claim = (now, lease_ms, limit);
    let sql = claim_sql::<DB>();
    lease(
        writer,
        &sql,
        claim,
        event_row::<DB>,
        |e| &e.id,
        "outbox_claim",
    )
    .await
}

/// [`claim`] inside the caller's transaction: the relay's claim shares the checkout writer's
/// commit (on SQLite's one writer, claims never interleave).
pub async fn claim_in<DB: Engine>(
    conn: &mut impl Conn<DB>,
    now: Timestamp,
    lease_ms: i64,
    limit: u32,
) -> PortResult<Vec<OutboxEvent>> {
    let sql = claim_sql::<DB>();
    leased(conn, &sql, (now, lease_ms, limit), event_row::<DB>, |e| {
        &e.id
    })
    .await
}

/// The claim: `$1` the lease's end, `$2` now, `$3` the limit.
fn claim_sql<DB: Engine>() -> String {
    format!(
        "UPDATE outbox SET lease_until = $1 WHERE id IN (\
             SELECT id FROM outbox WHERE delivered_at IS NULL AND lease_until <= $2 \
             ORDER BY id LIMIT $3{}) \
         RETURNING id, user_id, kind, created_at, CAST(data_json AS TEXT) AS data_json",
        DB::SKIP_LOCKED
    )
}

/// An event as the claim returns it.
fn event_row<DB: Engine>(r: &DB::Row) -> PortResult<OutboxEvent> {
    let data: String = col(r, "data_json")?;
    Ok(OutboxEvent {
        id: col(r, "id")?,
        user_id: UserId::from_trusted(col(r, "user_id")?),
        kind: col_word(r, "kind", EventKind::parse)?,
        created_at: col_ts(r, "created_at")?,
        data: serde_json::from_str(&data).map_err(|e| internal(format!("outbox json: {e}")))?,
    })
}

/// Runs a claim (`sql`: `$1` the lease's end, `$2` now, `$3` the limit) in one write
/// transaction; the rows leased, read by `row`, in `key` order (RETURNING promises none). Rows
/// are locked as they are chosen and those a concurrent claim locked are skipped (a row whose
/// lease a concurrent claim has just renewed is re-checked and dropped).
pub(crate) async fn lease<DB: Engine, T>(
    writer: &Pool<DB>,
    sql: &str,
    claim: (Timestamp, i64, u32),
    row: impl Fn(&DB::Row) -> PortResult<T>,
    key: impl Fn(&T) -> &String,
    op: &'static str,
) -> PortResult<Vec<T>> {
    if claim.2 == 0 {
        return Ok(Vec::new());
    }
    let mut tx = begin_write(writer).await?;
    let leased = leased(&mut tx, sql, claim, row, key).await?;
    if leased.is_empty() {
        return Ok(leased); // Nothing waiting: nothing to commit.
    }
    commit(tx, op).await?;
    Ok(leased)
}

/// [`lease`]'s statement inside the caller's transaction.
async fn leased<DB: Engine, T>(
    conn: &mut impl Conn<DB>,
    sql: &str,
    (now, lease_ms, limit): (Timestamp, i64, u32),
    row: impl Fn(&DB::Row) -> PortResult<T>,
    key: impl Fn(&T) -> &String,
) -> PortResult<Vec<T>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows = statement::<DB>(sql)
        .int(now.plus_millis(lease_ms).0)
        .int(now.0)
        .int(i64::from(limit))
        .all(conn)
        .await?;
    let mut leased = rows.iter().map(row).collect::<PortResult<Vec<_>>>()?;
    leased.sort_by(|a, b| key(a).cmp(key(b)));
    Ok(leased)
}

/// Marks events delivered (the first delivery time is kept).
pub async fn delivered<DB: Engine>(writer: &Pool<DB>, ids: &[String]) -> PortResult<()> {
    // When it was delivered is bookkeeping only (no decision depends on it): the database's
    // clock, in milliseconds since the epoch, is good enough.
    let set = format!("delivered_at = {}", DB::NOW_MS);
    undelivered(writer, &set, ids, "outbox_delivered").await
}

/// [`delivered`] inside the caller's transaction (the checkout writer's batch).
pub async fn delivered_in<DB: Engine>(conn: &mut impl Conn<DB>, ids: &[String]) -> PortResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let sql = undelivered_sql::<DB>(&format!("delivered_at = {}", DB::NOW_MS));
    statement::<DB>(&sql)
        .string(serde_json::Value::from(ids.to_vec()).to_string())
        .run(conn)
        .await?;
    Ok(())
}

/// Ends the lease of undelivered events, so the next claim takes them again.
pub async fn release<DB: Engine>(writer: &Pool<DB>, ids: &[String]) -> PortResult<()> {
    undelivered(writer, "lease_until = 0", ids, "outbox_release").await
}

/// Applies `set` to those of `ids` not delivered yet.
async fn undelivered<DB: Engine>(
    writer: &Pool<DB>,
    set: &str,
    ids: &[String],
    op: &'static str,
) -> PortResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    statement::<DB>(&undelivered_sql::<DB>(set))
        .string(serde_json::Value::from(ids.to_vec()).to_string())
        .run_in(writer, op)
        .await?;
    Ok(())
}

/// `set` on those of the events named by a JSON array of ids not delivered yet.
fn undelivered_sql<DB: Engine>(set: &str) -> String {
    format!(
        "UPDATE outbox SET {set} WHERE delivered_at IS NULL AND id IN ({})",
        DB::JSON_TEXTS
    )
}

/// How many rows of `table` (`outbox`, `webhook_deliveries`) are not delivered yet, and the
/// oldest `created_at` among them: the backlog of events, or of deliveries.
pub async fn waiting<DB: Engine>(
    reader: &Pool<DB>,
    table: &str,
) -> PortResult<(i64, Option<Timestamp>)> {
    let sql = format!(
        "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM {table} WHERE delivered_at IS NULL"
    );
    let mut conn = reader.acquire().await.port()?;
    let row = one(statement::<DB>(&sql), &mut conn, || {
        format!("{table} backlog: no row")
    })
    .await?;
    let oldest: Option<i64> = col(&row, "oldest")?;
    Ok((col(&row, "n")?, oldest.map(Timestamp)))
}
