//! The denial-of-inventory guard at the judge: unpaid holds open at once per account and per
//! device, across every sale, counted inside the group commit's transaction, then kept up to
//! date as the batch accepts holds; and the accounts and devices whose holds keep lapsing
//! unpaid.
//!
//! The counts are exact because no other transaction can open a hold for these buyers before
//! the batch commits. SQLite: one writer, and the batch is `BEGIN IMMEDIATE`. PostgreSQL: the
//! batch's sale locks do not cover this (two nodes judging two sales for one buyer lock
//! different rows), so before counting the batch takes one transaction advisory lock per
//! account and per device it will judge ([`Judging::lock_hold_cap`]: keys from
//! `hashtextextended`, in key order, after the sale locks and nowhere else, so batches cannot
//! deadlock). A second batch for the same buyer waits for the first to commit, and its count
//! (a fresh statement under READ COMMITTED) then sees the first batch's holds.

use std::collections::{BTreeSet, HashMap};

use sqlx::Pool;

use stampede_app::ports::{LapsedHolder, PortResult, ReserveRequest};
use stampede_core::judge::{judge_hold_cap, Refusal};
use stampede_core::{Timestamp, UserId};

use crate::engine::{statement, Bind, Conn, Engine, Run};
use crate::judging::Judging;
use crate::rows::col;

/// Open unpaid holds per account and per device of one batch.
#[derive(Debug, Default)]
pub struct OpenHolds {
    /// Open holds per user id.
    accounts: HashMap<String, i64>,
    /// Open holds per device id.
    devices: HashMap<String, i64>,
}

/// The accounts and devices of a batch's requests that carry a cap, and the batch's earliest
/// clock reading: what the counts are taken of.
struct Capped {
    /// The earliest `now` of the capped requests.
    now: Timestamp,
    /// Their user ids, in order (the order PostgreSQL's locks are taken in).
    users: BTreeSet<String>,
    /// Their device ids, in order.
    devices: BTreeSet<String>,
}

impl Capped {
    /// `None` when no request of the batch carries a cap: nothing to lock or count.
    fn of(batch: &[ReserveRequest]) -> Option<Self> {
        let capped: Vec<&ReserveRequest> = batch.iter().filter(|r| !r.hold_cap.is_off()).collect();
        let now = capped.iter().map(|r| r.now).min()?;
        Some(Self {
            now,
            users: capped.iter().map(|r| r.user_id.to_string()).collect(),
            devices: capped.iter().filter_map(|r| r.device_id.clone()).collect(),
        })
    }
}

impl OpenHolds {
    /// Locks every account and device the batch names (see the module's doc), then counts
    /// their open holds at the batch's earliest clock reading. Nothing is locked or read when
    /// no request carries a cap. Call after the batch's sale locks.
    pub async fn lock_and_load<DB: Judging>(
        conn: &mut impl Conn<DB>,
        batch: &[ReserveRequest],
    ) -> PortResult<Self> {
        let Some(capped) = Capped::of(batch) else {
            return Ok(Self::default());
        };
        let users = capped.users.iter().map(|u| format!("hold-cap:u:{u}"));
        let devices = capped.devices.iter().map(|d| format!("hold-cap:d:{d}"));
        DB::lock_hold_cap(conn.conn(), users.chain(devices).collect()).await?;
        Ok(Self {
            accounts: count(conn, "user_id", &capped.users, capped.now).await?,
            devices: count(conn, "device_id", &capped.devices, capped.now).await?,
        })
    }

    /// The guard's verdict on one more hold for this request's account and device.
    pub fn judge(&self, req: &ReserveRequest) -> Result<(), Refusal> {
        if req.hold_cap.is_off() {
            return Ok(());
        }
        let open = |of: &HashMap<String, i64>, id: &str| of.get(id).copied().unwrap_or(0);
        let device = req.device_id.as_deref().map(|d| open(&self.devices, d));
        judge_hold_cap(
            req.hold_cap,
            open(&self.accounts, req.user_id.as_str()),
            device,
        )
    }

    /// The batch accepted a hold for this request (`1`): it counts for the requests after it;
    /// or a hold so counted was not written after all (`-1`: a retry's id collided).
    pub fn opened(&mut self, req: &ReserveRequest, n: i64) {
        *self
            .accounts
            .entry(req.user_id.as_str().to_owned())
            .or_default() += n;
        if let Some(device) = &req.device_id {
            *self.devices.entry(device.clone()).or_default() += n;
        }
    }
}

/// Open holds per value of `column` (`user_id` or `device_id`) among `ids`, in one statement.
async fn count<DB: Engine>(
    conn: &mut impl Conn<DB>,
    column: &'static str,
    ids: &BTreeSet<String>,
    now: Timestamp,
) -> PortResult<HashMap<String, i64>> {
    let sql = format!(
        "SELECT {column} AS id, COUNT(*) AS n FROM holds \
         WHERE {column} IN ({}) AND state = 'active' AND expires_at > $2 GROUP BY {column}",
        DB::JSON_TEXTS
    );
    let ids = serde_json::to_string(ids).map_err(crate::internal)?;
    let rows = statement::<DB>(&sql)
        .string(ids)
        .int(now.0)
        .all(conn)
        .await?;
    rows.iter()
        .map(|row| Ok((col(row, "id")?, col(row, "n")?)))
        .collect()
}

/// Accounts and devices with at least `min_lapsed` holds that lapsed unpaid, most first, at
/// most `limit` of each.
pub async fn lapsed_holders<DB: Engine>(
    reader: &Pool<DB>,
    min_lapsed: u32,
    limit: u32,
) -> PortResult<(Vec<LapsedHolder>, Vec<LapsedHolder>)> {
    let accounts = lapsed_by(reader, "user_id", "user_id", min_lapsed, limit).await?;
    let devices = lapsed_by(
        reader,
        "device_id",
        DB::DISTINCT_USER_IDS,
        min_lapsed,
        limit,
    )
    .await?;
    Ok((accounts, devices))
}

/// [`lapsed_holders`] per value of `subject` (`user_id` or `device_id`); `users` aggregates
/// the comma-separated accounts behind each.
async fn lapsed_by<DB: Engine>(
    reader: &Pool<DB>,
    subject: &str,
    users: &str,
    min_lapsed: u32,
    limit: u32,
) -> PortResult<Vec<LapsedHolder>> {
    let sql = format!(
        "SELECT {subject} AS subject, COUNT(*) AS lapsed, MAX(expires_at) AS last_at, \
         {users} AS users FROM holds WHERE state = 'expired' AND {subject} IS NOT NULL \
         GROUP BY {subject} HAVING COUNT(*) >= $1 ORDER BY COUNT(*) DESC, {subject} LIMIT $2"
    );
    let found = statement::<DB>(&sql)
        .int(i64::from(min_lapsed))
        .int(i64::from(limit))
        .all_in(reader)
        .await?;
    found
        .iter()
        .map(|row| {
            let lapsed: i64 = col(row, "lapsed")?;
            let users: String = col(row, "users")?;
            Ok(LapsedHolder {
                subject: col(row, "subject")?,
                lapsed: u64::try_from(lapsed).unwrap_or(0),
                last_lapsed_at: Timestamp(col(row, "last_at")?),
                accounts: users.split(',').filter_map(UserId::parse).collect(),
            })
        })
        .collect()
}
