//! The denial-of-inventory guard at the judge: unpaid holds open at once per account and per
//! device, across every sale, counted inside the group commit's transaction.
//!
//! SQLite has one writer, and the group commit's transaction is `BEGIN IMMEDIATE`: no other
//! write can open a hold between the count read here and the batch's commit, so the counts
//! (read once per batch, then kept up to date as the batch accepts holds) are exact and two
//! concurrent reserves cannot both pass the cap.

use std::collections::{HashMap, HashSet};

use sqlx::SqliteConnection;

use stampede_app::ports::{LapsedHolder, PortResult, ReserveRequest};
use stampede_core::judge::{judge_hold_cap, Refusal};
use stampede_core::{Timestamp, UserId};

use crate::error::OrPort;

/// Ids per `IN (…)` list: well under SQLite's parameter limit.
const IDS_PER_STATEMENT: usize = 400;

/// Open unpaid holds per account and per device of one batch.
#[derive(Debug, Default)]
pub(crate) struct OpenHolds {
    accounts: HashMap<String, i64>,
    devices: HashMap<String, i64>,
}

impl OpenHolds {
    /// Counts, at the batch's earliest clock reading, the open holds of every account and
    /// device the batch names. Nothing is read when no request carries a cap.
    pub(crate) async fn load(
        conn: &mut SqliteConnection,
        batch: &[ReserveRequest],
    ) -> PortResult<Self> {
        let mut open = Self::default();
        let capped: Vec<&ReserveRequest> = batch.iter().filter(|r| !r.hold_cap.is_off()).collect();
        let Some(now) = capped.iter().map(|r| r.now).min() else {
            return Ok(open);
        };
        let users: HashSet<&str> = capped.iter().map(|r| r.user_id.as_str()).collect();
        let devices: HashSet<&str> = capped
            .iter()
            .filter_map(|r| r.device_id.as_deref())
            .collect();
        open.accounts = count(conn, "user_id", users, now).await?;
        open.devices = count(conn, "device_id", devices, now).await?;
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

    /// The batch accepted a hold for this request: it counts for the requests after it.
    pub(crate) fn opened(&mut self, req: &ReserveRequest) {
        *self
            .accounts
            .entry(req.user_id.as_str().to_owned())
            .or_default() += 1;
        if let Some(device) = &req.device_id {
            *self.devices.entry(device.clone()).or_default() += 1;
        }
    }

    /// A hold counted by [`Self::opened`] was not written after all (a retry's id collided).
    pub(crate) fn not_opened(&mut self, req: &ReserveRequest) {
        if let Some(n) = self.accounts.get_mut(req.user_id.as_str()) {
            *n -= 1;
        }
        if let Some(device) = &req.device_id {
            if let Some(n) = self.devices.get_mut(device) {
                *n -= 1;
            }
        }
    }
}

/// Open holds per value of `column` (`user_id` or `device_id`) among `ids`.
async fn count(
    conn: &mut SqliteConnection,
    column: &'static str,
    ids: HashSet<&str>,
    now: Timestamp,
) -> PortResult<HashMap<String, i64>> {
    let ids: Vec<&str> = ids.into_iter().collect();
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
            "SELECT {column}, COUNT(*) FROM holds WHERE state = 'active' AND expires_at > "
        ));
        qb.push_bind(now.0);
        qb.push(format!(" AND {column} IN ("));
        let mut list = qb.separated(", ");
        for id in chunk {
            list.push_bind(id.to_string());
        }
        qb.push(format!(") GROUP BY {column}"));
        let rows: Vec<(String, i64)> = qb.build_query_as().fetch_all(&mut *conn).await.port()?;
        out.extend(rows);
    }
    Ok(out)
}

/// Accounts and devices with at least `min_lapsed` holds that lapsed unpaid, most first, at
/// most `limit` of each.
pub(crate) async fn lapsed_holders(
    reader: &sqlx::SqlitePool,
    min_lapsed: u32,
    limit: u32,
) -> PortResult<(Vec<LapsedHolder>, Vec<LapsedHolder>)> {
    let accounts: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT user_id, COUNT(*), MAX(expires_at) FROM holds WHERE state = 'expired' \
         GROUP BY user_id HAVING COUNT(*) >= ?1 ORDER BY COUNT(*) DESC, user_id LIMIT ?2",
    )
    .bind(i64::from(min_lapsed))
    .bind(i64::from(limit))
    .fetch_all(reader)
    .await
    .port()?;
    let devices: Vec<(String, i64, i64, String)> = sqlx::query_as(
        "SELECT device_id, COUNT(*), MAX(expires_at), group_concat(DISTINCT user_id) \
         FROM holds WHERE state = 'expired' AND device_id IS NOT NULL \
         GROUP BY device_id HAVING COUNT(*) >= ?1 ORDER BY COUNT(*) DESC, device_id LIMIT ?2",
    )
    .bind(i64::from(min_lapsed))
    .bind(i64::from(limit))
    .fetch_all(reader)
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
            accounts: users.split(',').filter_map(UserId::parse).collect(),
        })
        .collect();
    Ok((accounts, devices))
}
