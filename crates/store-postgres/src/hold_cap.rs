//! The denial-of-inventory guard at the judge: unpaid holds open at once per account and per
//! device, across every sale, counted inside the group commit's transaction.
//!
//! The batch's sale locks do not cover this: two nodes judging two different sales for the
//! same buyer lock different sale rows. So before counting, the batch takes one transaction
//! advisory lock per account and per device it will judge (keys from `hashtextextended`,
//! taken in key order, after the sale locks and nowhere else: every batch acquires them in the
//! same global order, so they cannot deadlock). A second batch for the same buyer waits for the
//! first to commit, and its count (a fresh statement under READ COMMITTED) then sees the first
//! batch's holds: the cap cannot be passed by reserves arriving together on several nodes.

use std::collections::{BTreeSet, HashMap};

use sqlx::PgConnection;

use stampede_app::ports::{LapsedHolder, PortResult, ReserveRequest};
use stampede_core::judge::{judge_hold_cap, Refusal};
use stampede_core::{Timestamp, UserId};

use crate::error::OrPort;

/// Open unpaid holds per account and per device of one batch.
#[derive(Debug, Default)]
pub(crate) struct OpenHolds {
    accounts: HashMap<String, i64>,
    devices: HashMap<String, i64>,
}

impl OpenHolds {
    /// Locks every account and device the batch names (see the module's doc), then counts
    /// their open holds at the batch's earliest clock reading. Nothing is locked or read when
    /// no request carries a cap. Call after the batch's sale locks.
    pub(crate) async fn lock_and_load(
        conn: &mut PgConnection,
        batch: &[ReserveRequest],
    ) -> PortResult<Self> {
        let mut open = Self::default();
        let capped: Vec<&ReserveRequest> = batch.iter().filter(|r| !r.hold_cap.is_off()).collect();
        let Some(now) = capped.iter().map(|r| r.now).min() else {
            return Ok(open);
        };
        let users: BTreeSet<String> = capped
            .iter()
            .map(|r| r.user_id.as_str().to_owned())
            .collect();
        let devices: BTreeSet<String> = capped.iter().filter_map(|r| r.device_id.clone()).collect();
        let subjects: Vec<String> = users
            .iter()
            .map(|u| format!("hold-cap:u:{u}"))
            .chain(devices.iter().map(|d| format!("hold-cap:d:{d}")))
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
        let users: Vec<String> = users.into_iter().collect();
        open.accounts = sqlx::query_as::<_, (String, i64)>(
            "SELECT user_id, COUNT(*) FROM holds WHERE user_id = ANY($1) AND state = 'active' \
             AND expires_at > $2 GROUP BY user_id",
        )
        .bind(&users)
        .bind(now.0)
        .fetch_all(&mut *conn)
        .await
        .port()?
        .into_iter()
        .collect();
        if !devices.is_empty() {
            let devices: Vec<String> = devices.into_iter().collect();
            open.devices = sqlx::query_as::<_, (String, i64)>(
                "SELECT device_id, COUNT(*) FROM holds WHERE device_id = ANY($1) \
                 AND state = 'active' AND expires_at > $2 GROUP BY device_id",
            )
            .bind(&devices)
            .bind(now.0)
            .fetch_all(&mut *conn)
            .await
            .port()?
            .into_iter()
            .collect();
        }
        Ok(open)
    }

    /// The guard's verdict on one more hold for this request's account and device.
    pub(crate) fn judge(&self, req: &ReserveRequest) -> Result<(), Refusal> {
        if req.hold_cap.is_off() {
            return Ok(());
        }
        let account = self
            .accounts
            .get(req.user_id.as_str())
            .copied()
            .unwrap_or(0);
        let device = req
            .device_id
            .as_deref()
            .map(|d| self.devices.get(d).copied().unwrap_or(0));
        judge_hold_cap(req.hold_cap, account, device)
    }

    /// The batch wrote a hold for this request: it counts for the requests after it.
    pub(crate) fn opened(&mut self, req: &ReserveRequest) {
        *self
            .accounts
            .entry(req.user_id.as_str().to_owned())
            .or_default() += 1;
        if let Some(device) = &req.device_id {
            *self.devices.entry(device.clone()).or_default() += 1;
        }
    }
}

/// Accounts and devices with at least `min_lapsed` holds that lapsed unpaid, most first, at
/// most `limit` of each.
pub(crate) async fn lapsed_holders(
    pool: &sqlx::PgPool,
    min_lapsed: u32,
    limit: u32,
) -> PortResult<(Vec<LapsedHolder>, Vec<LapsedHolder>)> {
    let accounts: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT user_id, COUNT(*), MAX(expires_at) FROM holds WHERE state = 'expired' \
         GROUP BY user_id HAVING COUNT(*) >= $1 ORDER BY COUNT(*) DESC, user_id LIMIT $2",
    )
    .bind(i64::from(min_lapsed))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .port()?;
    let devices: Vec<(String, i64, i64, Vec<String>)> = sqlx::query_as(
        "SELECT device_id, COUNT(*), MAX(expires_at), array_agg(DISTINCT user_id) \
         FROM holds WHERE state = 'expired' AND device_id IS NOT NULL \
         GROUP BY device_id HAVING COUNT(*) >= $1 ORDER BY COUNT(*) DESC, device_id LIMIT $2",
    )
    .bind(i64::from(min_lapsed))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .port()?;
    let accounts = accounts
        .into_iter()
        .map(|(user, lapsed, last)| LapsedHolder {
            accounts: UserId::parse(&user).into_iter().collect(),
            subject: user,
            lapsed: u64::try_from(lapsed).unwrap_or(0),
            last_lapsed_at: Timestamp(last),
        })
        .collect();
    let devices = devices
        .into_iter()
        .map(|(device, lapsed, last, users)| LapsedHolder {
            subject: device,
            lapsed: u64::try_from(lapsed).unwrap_or(0),
            last_lapsed_at: Timestamp(last),
            accounts: users.iter().filter_map(|u| UserId::parse(u)).collect(),
        })
        .collect();
    Ok((accounts, devices))
}
