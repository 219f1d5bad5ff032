//! The `RoomLog` conformance suite: the SQLite and PostgreSQL logs of the waiting room run the
//! same checks, against the rule they must both apply ([`LoggedEntry::supersedes`]), which
//! [`MemoryRoomLog`] (the reference, also used by the room suite) applies in plain Rust.
//!
//! A store's test crate calls `room_log_conformance_tests!(run)` where `run` is an async
//! function taking a check (`FnOnce(Arc<dyn RoomLog>) -> impl Future`) and running it on a
//! fresh log (or skipping it, having said why).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use stampede_app::ports::{PortError, PortResult, RoomLog};
use stampede_core::waiting_line::{EntryState, LoggedEntry};
use stampede_core::SaleId;

/// A [`RoomLog`] in memory: the reference the stores are checked against, and the log the
/// room suite rebuilds rooms from.
#[derive(Default)]
pub struct MemoryRoomLog {
    entries: Mutex<Rows>,
    values: Mutex<BTreeMap<(String, String), String>>,
}

/// Entries in first-written order, and where each buyer's is.
type Rows = (Vec<(SaleId, LoggedEntry)>, HashMap<(SaleId, String), usize>);

fn poisoned<T>(_: T) -> PortError {
    PortError::internal("memory log lock poisoned")
}

#[async_trait]
impl RoomLog for MemoryRoomLog {
    async fn append_entries(&self, batch: &[(SaleId, LoggedEntry)]) -> PortResult<()> {
        let mut guard = self.entries.lock().map_err(poisoned)?;
        let (rows, index) = &mut *guard;
        for (sale, entry) in batch {
            match index.get(&(sale.clone(), entry.user_id.clone())) {
                Some(&i) => {
                    if entry.supersedes(&rows[i].1) {
                        rows[i].1 = entry.merged_over(&rows[i].1);
                    }
                }
                None => {
                    index.insert((sale.clone(), entry.user_id.clone()), rows.len());
                    rows.push((sale.clone(), entry.clone()));
                }
            }
        }
        Ok(())
    }

    async fn entries(
        &self,
        sale: &SaleId,
        cursor: i64,
        limit: u32,
    ) -> PortResult<(Vec<LoggedEntry>, i64)> {
        let guard = self.entries.lock().map_err(poisoned)?;
        let mut out = Vec::new();
        let mut next = cursor;
        for (i, (s, e)) in guard.0.iter().enumerate() {
            let id = i as i64 + 1;
            if id <= cursor || s != sale {
                continue;
            }
            if out.len() as u32 == limit {
                break;
            }
            out.push(e.clone());
            next = id;
        }
        Ok((out, next))
    }

    async fn put_value(&self, scope: &str, key: &str, value: &str) -> PortResult<()> {
        self.values
            .lock()
            .map_err(poisoned)?
            .insert((scope.to_owned(), key.to_owned()), value.to_owned());
        Ok(())
    }

    async fn values(&self, scope: &str) -> PortResult<Vec<(String, String)>> {
        Ok(self
            .values
            .lock()
            .map_err(poisoned)?
            .iter()
            .filter(|((s, _), _)| s == scope)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }
}

fn sale() -> SaleId {
    SaleId::generate(7, crate::room_conformance::rand_u128())
}

fn entry(user: &str, rank: Option<u64>, state: EntryState) -> LoggedEntry {
    LoggedEntry {
        user_id: user.to_owned(),
        device_id: format!("dev-{user}"),
        rank,
        pre_seq: None,
        state,
        until_ms: if state == EntryState::Admitted {
            5_000
        } else {
            0
        },
        lottery_won: false,
        units: 0,
    }
}

async fn all(log: &dyn RoomLog, sale: &SaleId, page: u32) -> Vec<LoggedEntry> {
    let mut out = Vec::new();
    let mut cursor = 0;
    loop {
        let (rows, next) = log.entries(sale, cursor, page).await.unwrap();
        let done = (rows.len() as u32) < page;
        out.extend(rows);
        cursor = next;
        if done {
            return out;
        }
    }
}

async fn one(log: &dyn RoomLog, sale: &SaleId, user: &str) -> LoggedEntry {
    all(log, sale, 1000)
        .await
        .into_iter()
        .find(|e| e.user_id == user)
        .unwrap_or_else(|| panic!("{user} is not in the log"))
}

/// 2,500 entries in three batches come back in the order they were first written, page by
/// page, and only the sale's own; writing them again moves nothing.
pub async fn entries_come_back_in_order_page_by_page(log: Arc<dyn RoomLog>) {
    let (a, b) = (sale(), sale());
    let users: Vec<String> = (0..2500).map(|i| format!("u{i:05}")).collect();
    let records: Vec<(SaleId, LoggedEntry)> = users
        .iter()
        .enumerate()
        .map(|(i, u)| (a.clone(), entry(u, Some(i as u64), EntryState::Waiting)))
        .collect();
    for chunk in records.chunks(1000) {
        log.append_entries(chunk).await.unwrap();
    }
    log.append_entries(&[(b.clone(), entry("other", Some(0), EntryState::Waiting))])
        .await
        .unwrap();
    let back: Vec<String> = all(log.as_ref(), &a, 700)
        .await
        .into_iter()
        .map(|e| e.user_id)
        .collect();
    assert_eq!(back, users, "first-written order, every page");
    let again: Vec<(SaleId, LoggedEntry)> = users[..10]
        .iter()
        .map(|u| (a.clone(), entry(u, Some(0), EntryState::Waiting)))
        .collect();
    log.append_entries(&again).await.unwrap();
    assert_eq!(all(log.as_ref(), &a, 5000).await.len(), 2500);
    assert_eq!(all(log.as_ref(), &b, 10).await.len(), 1);
}

/// A record only moves forward, whatever order records arrive in (a join and its admission
/// are written by different batches): a new rank (joined again after a lapse), or a later
/// stage at the same rank; a record without a rank keeps the rank the log has.
pub async fn a_record_only_moves_forward(log: Arc<dyn RoomLog>) {
    let s = sale();
    let put = |e: LoggedEntry| {
        let log = log.clone();
        let s = s.clone();
        async move { log.append_entries(&[(s, e)]).await.unwrap() }
    };
    // The admission arrives before the join it follows: the join does not undo it.
    put(entry("a", Some(5), EntryState::Admitted)).await;
    put(entry("a", Some(5), EntryState::Waiting)).await;
    let a = one(log.as_ref(), &s, "a").await;
    assert_eq!(
        (a.state, a.rank, a.until_ms),
        (EntryState::Admitted, Some(5), 5_000)
    );
    // Used up (a record without a rank): keeps the rank, counts the units.
    let mut used = entry("a", None, EntryState::Used);
    used.units = 2;
    put(used).await;
    let a = one(log.as_ref(), &s, "a").await;
    assert_eq!((a.state, a.rank, a.units), (EntryState::Used, Some(5), 2));
    // A late admission record does not bring a used one back.
    put(entry("a", Some(5), EntryState::Admitted)).await;
    assert_eq!(one(log.as_ref(), &s, "a").await.state, EntryState::Used);

    // Lapsed and joined again: a new rank, waiting again; the old rank's records are stale.
    put(entry("b", Some(1), EntryState::Admitted)).await;
    put(entry("b", Some(9), EntryState::Waiting)).await;
    put(entry("b", Some(1), EntryState::Expired)).await;
    let b = one(log.as_ref(), &s, "b").await;
    assert_eq!((b.state, b.rank), (EntryState::Waiting, Some(9)));

    // A pre-queue entry keeps its seat when its drawn rank is recorded.
    let mut pre = entry("c", None, EntryState::Waiting);
    pre.pre_seq = Some(3);
    put(pre).await;
    put(entry("c", Some(7), EntryState::Admitted)).await;
    let c = one(log.as_ref(), &s, "c").await;
    assert_eq!(
        (c.rank, c.pre_seq, c.state),
        (Some(7), Some(3), EntryState::Admitted)
    );

    // Several records of one buyer in one batch: the furthest is kept.
    log.append_entries(&[
        (s.clone(), entry("d", Some(2), EntryState::Waiting)),
        (s.clone(), entry("d", Some(2), EntryState::Admitted)),
        (s.clone(), entry("d", Some(2), EntryState::Waiting)),
    ])
    .await
    .unwrap();
    assert_eq!(one(log.as_ref(), &s, "d").await.state, EntryState::Admitted);
    // The device is the one the buyer joined from.
    assert_eq!(one(log.as_ref(), &s, "d").await.device_id, "dev-d");
}

/// Values are kept per scope, by key, and a second write replaces the first.
pub async fn values_are_kept_per_scope(log: Arc<dyn RoomLog>) {
    let (a, b) = (sale(), sale());
    log.put_value(a.as_str(), "rules", "{}").await.unwrap();
    log.put_value(a.as_str(), "seed.lottery", "00")
        .await
        .unwrap();
    log.put_value(a.as_str(), "rules", "{\"pow_bits\":3}")
        .await
        .unwrap();
    log.put_value(b.as_str(), "rules", "b").await.unwrap();
    let big = "x".repeat(200_000);
    log.put_value(a.as_str(), "drawn", &big).await.unwrap();
    let got = log.values(a.as_str()).await.unwrap();
    assert_eq!(
        got,
        vec![
            ("drawn".to_owned(), big),
            ("rules".to_owned(), "{\"pow_bits\":3}".to_owned()),
            ("seed.lottery".to_owned(), "00".to_owned()),
        ]
    );
    assert_eq!(log.values(b.as_str()).await.unwrap().len(), 1);
    assert!(log.values("nobody").await.unwrap().is_empty());
}

/// One `#[tokio::test]` per check of this suite; `$run` runs a check on a fresh log.
#[macro_export]
macro_rules! room_log_conformance_tests {
    ($run:path) => {
        $crate::room_log_conformance_tests!(@each $run,
            entries_come_back_in_order_page_by_page,
            a_record_only_moves_forward,
            values_are_kept_per_scope
        );
    };
    (@each $run:path, $($check:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $run($crate::room_log_conformance::$check).await;
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run<C, Fut>(check: C)
    where
        C: FnOnce(Arc<dyn RoomLog>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        check(Arc::new(MemoryRoomLog::default())).await;
    }

    crate::room_log_conformance_tests!(run);
}
