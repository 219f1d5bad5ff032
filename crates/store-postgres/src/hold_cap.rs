//! The denial-of-inventory guard at the judge: unpaid holds open at once per account and per
//! device, across every sale, counted inside the group commit's transaction (the shared
//! `stampede_store_sql::hold_cap`; what is this engine's own is the locking below).
//!
//! The batch's sale locks do not cover this: two nodes judging two different sales for the
//! same buyer lock different sale rows. So before counting, the batch takes one transaction
//! advisory lock per account and per device it will judge (keys from `hashtextextended`,
//! taken in key order, after the sale locks and nowhere else: every batch acquires them in the
//! same global order, so they cannot deadlock). A second batch for the same buyer waits for the
//! first to commit, and its count (a fresh statement under READ COMMITTED) then sees the first
//! batch's holds: the cap cannot be passed by reserves arriving together on several nodes.

use sqlx::PgConnection;

use stampede_app::ports::{PortResult, ReserveRequest};
use stampede_store_sql::hold_cap::{Capped, OpenHolds};

use crate::error::OrPort;

/// Locks every account and device the batch names (see the module's doc), then counts
/// their open holds at the batch's earliest clock reading. Nothing is locked or read when
/// no request carries a cap. Call after the batch's sale locks.
pub(crate) async fn lock_and_load(
    conn: &mut PgConnection,
    batch: &[ReserveRequest],
) -> PortResult<OpenHolds> {
    let mut open = OpenHolds::default();
    let Some(capped) = Capped::of(batch) else {
        return Ok(open);
    };
    let subjects: Vec<String> = capped
        .users
        .iter()
        .map(|u| format!("hold-cap:u:{u}"))
        .chain(capped.devices.iter().map(|d| format!("hold-cap:d:{d}")))
        .collect();
    // Volatile functions in the select list run after the sort: the locks are taken in
    // key order.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k) FROM \
         (SELECT DISTINCT hashtextextended(s, 0) AS k FROM unnest($1::text[]) AS s) AS keys \
         ORDER BY k",
    )
    .bind(&subjects)
    .fetch_all(&mut *conn)
    .await
    .port()?;
    // One statement per column, whatever the batch's size (`= ANY` of one array).
    for (column, ids, counts) in [
        ("user_id", capped.users, &mut open.accounts),
        ("device_id", capped.devices, &mut open.devices),
    ] {
        if ids.is_empty() {
            continue;
        }
        let ids: Vec<String> = ids.into_iter().collect();
        *counts = sqlx::query_as::<_, (String, i64)>(&format!(
            "SELECT {column}, COUNT(*) FROM holds WHERE {column} = ANY($1) \
                 AND state = 'active' AND expires_at > $2 GROUP BY {column}"
        ))
        .bind(&ids)
        .bind(capped.now.0)
        .fetch_all(&mut *conn)
        .await
        .port()?
        .into_iter()
        .collect();
    }
    Ok(open)
}
