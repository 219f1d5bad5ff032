//! The waiting room made durable: a [`WaitingRoom`] in front of another (the memory room, or
//! Redis's) that writes every join and admission to a [`RoomLog`] and rebuilds a line from it
//! when the room does not hold it (embedded: after a restart; cluster: Redis flushed or
//! restarted empty).
//!
//! - **Joins are group-committed.** One writer task drains every log record waiting for it into
//!   one store transaction, then takes the next batch (as holds are, see
//!   [`crate::group_commit`]): no store write per buyer, and a join is answered only once its
//!   batch has committed, so an acknowledged place survives a crash.
//! - **Admissions, used admissions and lottery outcomes** are logged the same way, by the
//!   round that made them; rules, seeds, the drawn order and draw records go straight to the
//!   log's values (a handful per sale).
//! - **Rebuild**: the first use of a sale on a node whose room does not hold it reads the
//!   sale's log in one pass, gives the pre-queue its drawn ranks again
//!   ([`restore_ranks`]) and hands the whole line to [`WaitingRoom::restore`] in one go. A
//!   shared room that loses a line later answers [`PortError::RoomNotLoaded`]; the line is
//!   rebuilt and the call made again.
//!
//! Buyers keep their places: a restored entry has its rank, and a position is the count of
//! entries waiting ahead of it, so everyone is where they were minus those admitted since.

use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use stampede_core::draw::DrawPurpose;
use stampede_core::waiting_line::{
    restore_ranks, Admitted, ClaimRefusal, EntryState, EntryView, JoinRefusal, LineStats,
    LoggedEntry,
};
use stampede_core::{SaleId, UserId};

use crate::ports::{PortError, PortResult, RoomLog, RoomRules, RoomSnapshot, WaitingRoom};

/// Records one writer commits at most at once.
const MAX_BATCH: usize = 4096;
/// Records waiting for the writer before a join waits for room in the queue.
const QUEUE_DEPTH: usize = 65_536;
/// Entries read per page when a line is rebuilt.
const PAGE: u32 = 100_000;
/// Lottery losers written per log transaction.
const LOSERS_PER_WRITE: usize = 10_000;

/// The scope of deployment-wide values.
const DEPLOYMENT: &str = "*";

struct Pending {
    records: Vec<(SaleId, LoggedEntry)>,
    reply: oneshot::Sender<PortResult<()>>,
}

/// A waiting room whose lines survive the room losing them.
pub struct DurableRoom {
    inner: Arc<dyn WaitingRoom>,
    log: Arc<dyn RoomLog>,
    queue: mpsc::Sender<Pending>,
    /// Sales whose line this node knows the room holds (restored or checked).
    loaded: DashMap<SaleId, ()>,
    /// One rebuild at a time per sale on this node.
    loading: DashMap<SaleId, Arc<tokio::sync::Mutex<()>>>,
    /// Sales whose waitlist flag this node has written to the log.
    waitlists_logged: DashMap<SaleId, ()>,
    /// Seeds this node has written to the log (once per sale and purpose is enough).
    seeds_logged: DashMap<(SaleId, &'static str), ()>,
    /// Admissions the log could not take yet: written with the next round.
    unlogged: std::sync::Mutex<Vec<(SaleId, LoggedEntry)>>,
}

/// Per buyer, the record that [supersedes](LoggedEntry::supersedes) the others in `batch`,
/// merged over the one it replaced: what a log keeps, computed before it is written (a
/// statement may not touch one row twice).
pub fn fold_batch(batch: &[(SaleId, LoggedEntry)]) -> Vec<(SaleId, LoggedEntry)> {
    let mut index: std::collections::HashMap<(&str, &str), usize> =
        std::collections::HashMap::with_capacity(batch.len());
    let mut out: Vec<(SaleId, LoggedEntry)> = Vec::with_capacity(batch.len());
    for (sale, entry) in batch {
        match index.get(&(sale.as_str(), entry.user_id.as_str())) {
            Some(&i) => {
                let kept = &out[i].1;
                if entry.supersedes(kept) {
                    out[i].1 = entry.merged_over(kept);
                }
            }
            None => {
                index.insert((sale.as_str(), entry.user_id.as_str()), out.len());
                out.push((sale.clone(), entry.clone()));
            }
        }
    }
    out
}

fn purpose_key(p: DrawPurpose) -> &'static str {
    match p {
        DrawPurpose::PreQueue => "seed.pre_queue",
        DrawPurpose::Lottery => "seed.lottery",
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).ok().map(|()| out)
}

fn internal(e: impl std::fmt::Display) -> PortError {
    PortError::internal(e.to_string())
}

/// A buyer's entry as the room answered it, as a log record.
fn record_of(user: &UserId, view: &EntryView) -> LoggedEntry {
    LoggedEntry {
        user_id: user.as_str().to_owned(),
        device_id: view.device_id.clone(),
        rank: (!view.pre_queue).then_some(view.ticket),
        pre_seq: view.pre_queue.then(|| view.position.saturating_sub(1)),
        state: view.state,
        until_ms: view.admitted_until_ms,
        lottery_won: view.lottery_won,
        units: 0,
    }
}

fn admitted_record(a: &Admitted, won: bool) -> LoggedEntry {
    LoggedEntry {
        user_id: a.user_id.clone(),
        device_id: a.device_id.clone(),
        rank: Some(a.ticket),
        pre_seq: None,
        state: EntryState::Admitted,
        until_ms: a.until_ms,
        lottery_won: won,
        units: 0,
    }
}

async fn write_loop(log: Arc<dyn RoomLog>, mut rx: mpsc::Receiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(64);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let records: Vec<(SaleId, LoggedEntry)> = batch
            .iter()
            .flat_map(|p| p.records.iter().cloned())
            .collect();
        metrics::histogram!("stampede_room_log_batch_size").record(records.len() as f64);
        let outcome = log.append_entries(&records).await;
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, size = records.len(), "room log batch failed");
        }
        for pending in batch.drain(..) {
            let reply = match &outcome {
                Ok(()) => Ok(()),
                Err(PortError::Internal { what, .. }) => Err(PortError::internal(what.clone())),
                Err(e) => Err(PortError::unavailable(e.to_string())),
            };
            // A caller who gave up waiting is not an error: the record stands.
            let _ = pending.reply.send(reply);
        }
    }
}

impl DurableRoom {
    /// Puts `inner` behind the log and starts the log's writer (a task that ends when the
    /// room is dropped, once its queue is written).
    pub fn start(inner: Arc<dyn WaitingRoom>, log: Arc<dyn RoomLog>) -> Arc<DurableRoom> {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(write_loop(log.clone(), rx));
        Arc::new(DurableRoom {
            inner,
            log,
            queue,
            loaded: DashMap::new(),
            loading: DashMap::new(),
            seeds_logged: DashMap::new(),
            waitlists_logged: DashMap::new(),
            unlogged: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Queues records for the writer and waits until their batch has committed.
    async fn append(&self, records: Vec<(SaleId, LoggedEntry)>) -> PortResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { records, reply })
            .await
            .map_err(|_| PortError::unavailable("the room log is shutting down"))?;
        answer
            .await
            .map_err(|_| PortError::unavailable("the room log writer stopped"))?
    }

    /// What the log has of a sale, ready for [`WaitingRoom::restore`].
    pub async fn snapshot(&self, sale: &SaleId) -> PortResult<RoomSnapshot> {
        let mut entries = Vec::new();
        let mut cursor = 0;
        loop {
            let (page, next) = self.log.entries(sale, cursor, PAGE).await?;
            let done = page.len() < PAGE as usize;
            entries.extend(page);
            cursor = next;
            if done {
                break;
            }
        }
        let mut snapshot = RoomSnapshot::default();
        let mut order: Option<Vec<String>> = None;
        for (key, value) in self.log.values(sale.as_str()).await? {
            match key.as_str() {
                "drawn" => order = Some(serde_json::from_str(&value).map_err(internal)?),
                "waitlist" => snapshot.waitlist = value == "1",
                "rules" => snapshot.rules = Some(serde_json::from_str(&value).map_err(internal)?),
                "seed.pre_queue" | "seed.lottery" => {
                    let purpose = if key == "seed.lottery" {
                        DrawPurpose::Lottery
                    } else {
                        DrawPurpose::PreQueue
                    };
                    let seed = hex32(&value).ok_or_else(|| internal("a logged seed is not hex"))?;
                    snapshot.seeds.push((purpose, seed));
                }
                // Keys sort in the order the records were published.
                k if k.starts_with("draw.") => snapshot.draws.push(value),
                _ => {}
            }
        }
        snapshot.drawn = restore_ranks(&mut entries, order.as_deref());
        snapshot.entries = entries;
        Ok(snapshot)
    }

    /// Makes sure the room holds the sale's line, rebuilding it from the log if not.
    async fn ensure(&self, sale: &SaleId) -> PortResult<()> {
        if self.loaded.contains_key(sale) {
            return Ok(());
        }
        let lock = self.loading.entry(sale.clone()).or_default().clone();
        let _one = lock.lock().await;
        if self.loaded.contains_key(sale) {
            return Ok(());
        }
        if !self.inner.holds(sale).await? {
            let started = std::time::Instant::now();
            let snapshot = self.snapshot(sale).await?;
            if self.inner.restore(sale, &snapshot).await? {
                let entries = snapshot.entries.len();
                metrics::counter!("stampede_room_rebuilds_total").increment(1);
                if entries > 0 {
                    tracing::warn!(
                        sale = %sale,
                        entries,
                        ms = started.elapsed().as_millis() as u64,
                        "waiting room rebuilt from its log"
                    );
                }
            }
        }
        self.loaded.insert(sale.clone(), ());
        Ok(())
    }

    /// Runs `call` on a room that holds the sale's line; once more after a rebuild if the
    /// room lost it meanwhile.
    async fn on_line<T, F, Fut>(&self, sale: &SaleId, call: F) -> PortResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = PortResult<T>>,
    {
        self.ensure(sale).await?;
        match call().await {
            Err(PortError::RoomNotLoaded) => {
                self.loaded.remove(sale);
                self.ensure(sale).await?;
                call().await
            }
            other => other,
        }
    }

    /// Logs admissions (and any the log could not take before).
    async fn log_admitted(&self, records: Vec<(SaleId, LoggedEntry)>) -> PortResult<()> {
        let mut all = std::mem::take(&mut *self.unlogged.lock().map_err(internal)?);
        all.extend(records);
        if all.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.append(all.clone()).await {
            // The admissions stand; the next round writes them.
            if let Ok(mut left) = self.unlogged.lock() {
                left.extend(all);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Writes a value, a few times before giving up (the room's change already stands).
    async fn put_value(&self, scope: &str, key: &str, value: &str) -> PortResult<()> {
        let mut last = None;
        for attempt in 0..3u64 {
            match self.log.put_value(scope, key, value).await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50 * (attempt + 1))).await;
        }
        Err(last.unwrap_or_else(|| internal("room log value not written")))
    }
}

#[async_trait]
impl WaitingRoom for DurableRoom {
    async fn join(
        &self,
        sale: &SaleId,
        user: &UserId,
        device: &str,
        max_accounts_per_device: u32,
    ) -> PortResult<Result<EntryView, JoinRefusal>> {
        let joined = self
            .on_line(sale, || {
                self.inner.join(sale, user, device, max_accounts_per_device)
            })
            .await?;
        if let Ok(view) = &joined {
            self.append(vec![(sale.clone(), record_of(user, view))])
                .await?;
        }
        Ok(joined)
    }

    async fn view(&self, sale: &SaleId, user: &UserId) -> PortResult<Option<EntryView>> {
        self.on_line(sale, || self.inner.view(sale, user)).await
    }

    async fn pre_queue(&self, sale: &SaleId) -> PortResult<Option<Vec<String>>> {
        self.on_line(sale, || self.inner.pre_queue(sale)).await
    }

    async fn place_drawn(&self, sale: &SaleId, order: &[String]) -> PortResult<bool> {
        let placed = self
            .on_line(sale, || self.inner.place_drawn(sale, order))
            .await?;
        if placed {
            let json = serde_json::to_string(order).map_err(internal)?;
            self.put_value(sale.as_str(), "drawn", &json).await?;
        }
        Ok(placed)
    }

    async fn admit(
        &self,
        sale: &SaleId,
        units_available: Option<u64>,
        units_per_admission: u64,
        ttl_ms: i64,
        now_ms: i64,
        max_batch: u64,
    ) -> PortResult<u64> {
        let admitted = self
            .admit_named(
                sale,
                units_available,
                units_per_admission,
                ttl_ms,
                now_ms,
                max_batch,
            )
            .await?;
        Ok(admitted.len() as u64)
    }

    async fn admit_named(
        &self,
        sale: &SaleId,
        units_available: Option<u64>,
        units_per_admission: u64,
        ttl_ms: i64,
        now_ms: i64,
        max_batch: u64,
    ) -> PortResult<Vec<Admitted>> {
        let admitted = self
            .on_line(sale, || {
                self.inner.admit_named(
                    sale,
                    units_available,
                    units_per_admission,
                    ttl_ms,
                    now_ms,
                    max_batch,
                )
            })
            .await?;
        let records = admitted
            .iter()
            .map(|a| (sale.clone(), admitted_record(a, false)))
            .collect();
        self.log_admitted(records).await?;
        Ok(admitted)
    }

    async fn claim(
        &self,
        sale: &SaleId,
        user: &UserId,
        device: &str,
        ticket: u64,
        quantity: u64,
        device_limit: u64,
        now_ms: i64,
    ) -> PortResult<Result<(), ClaimRefusal>> {
        self.on_line(sale, || {
            self.inner
                .claim(sale, user, device, ticket, quantity, device_limit, now_ms)
        })
        .await
    }

    async fn settle(
        &self,
        sale: &SaleId,
        user: &UserId,
        quantity: u64,
        reserved: bool,
        shopping_until_ms: i64,
    ) -> PortResult<()> {
        self.on_line(sale, || {
            self.inner
                .settle(sale, user, quantity, reserved, shopping_until_ms)
        })
        .await?;
        if reserved {
            // The admission is spent: after a restart it must not buy again.
            let record = LoggedEntry {
                user_id: user.as_str().to_owned(),
                device_id: String::new(),
                rank: None,
                pre_seq: None,
                state: EntryState::Used,
                until_ms: 0,
                lottery_won: false,
                units: quantity,
            };
            self.append(vec![(sale.clone(), record)]).await?;
        }
        Ok(())
    }

    async fn shopping_ended(&self, sale: &SaleId, user: &UserId) -> PortResult<()> {
        self.on_line(sale, || self.inner.shopping_ended(sale, user))
            .await
    }

    async fn set_sold_out(&self, sale: &SaleId, sold_out: bool, close: bool) -> PortResult<()> {
        if (sold_out || close) && !self.waitlists_logged.contains_key(sale) {
            // Admissions are waitlist offers from now on, after a restart too.
            self.put_value(sale.as_str(), "waitlist", "1").await?;
            self.waitlists_logged.insert(sale.clone(), ());
        }
        self.on_line(sale, || self.inner.set_sold_out(sale, sold_out, close))
            .await
    }

    async fn waiting_entrants(&self, sale: &SaleId) -> PortResult<Vec<String>> {
        self.on_line(sale, || self.inner.waiting_entrants(sale))
            .await
    }

    async fn apply_lottery(
        &self,
        sale: &SaleId,
        entrants: &[String],
        winners: &[String],
        ttl_ms: i64,
        now_ms: i64,
    ) -> PortResult<()> {
        // A lottery at the start places the pre-queue in join order first: logged like a draw.
        self.place_drawn(sale, &[]).await?;
        self.on_line(sale, || {
            self.inner
                .apply_lottery(sale, entrants, winners, ttl_ms, now_ms)
        })
        .await?;
        let mut records = Vec::with_capacity(winners.len());
        for winner in winners {
            let user = UserId::from_trusted(winner.clone());
            if let Some(view) = self.inner.view(sale, &user).await? {
                records.push((sale.clone(), record_of(&user, &view)));
            }
        }
        self.log_admitted(records).await?;
        let won: std::collections::HashSet<&str> = winners.iter().map(String::as_str).collect();
        let losers: Vec<(SaleId, LoggedEntry)> = entrants
            .iter()
            .filter(|u| !won.contains(u.as_str()))
            .map(|u| {
                (
                    sale.clone(),
                    LoggedEntry {
                        user_id: u.clone(),
                        device_id: String::new(),
                        rank: None,
                        pre_seq: None,
                        state: EntryState::LotteryLost,
                        until_ms: 0,
                        lottery_won: false,
                        units: 0,
                    },
                )
            })
            .collect();
        for chunk in losers.chunks(LOSERS_PER_WRITE) {
            self.log.append_entries(chunk).await?;
        }
        Ok(())
    }

    async fn stats(&self, sale: &SaleId) -> PortResult<LineStats> {
        self.on_line(sale, || self.inner.stats(sale)).await
    }

    async fn signing_key(&self, candidate: [u8; 32]) -> PortResult<[u8; 32]> {
        let stored = self
            .log
            .values(DEPLOYMENT)
            .await?
            .into_iter()
            .find(|(k, _)| k == "admission_key")
            .and_then(|(_, v)| hex32(&v));
        let key = self.inner.signing_key(stored.unwrap_or(candidate)).await?;
        if stored != Some(key) {
            self.put_value(DEPLOYMENT, "admission_key", &hex::encode(key))
                .await?;
        }
        Ok(key)
    }

    async fn draw_seed(
        &self,
        sale: &SaleId,
        purpose: DrawPurpose,
        candidate: [u8; 32],
    ) -> PortResult<([u8; 32], bool)> {
        let (seed, created) = self
            .on_line(sale, || self.inner.draw_seed(sale, purpose, candidate))
            .await?;
        let key = (sale.clone(), purpose_key(purpose));
        if !self.seeds_logged.contains_key(&key) {
            self.put_value(sale.as_str(), purpose_key(purpose), &hex::encode(seed))
                .await?;
            self.seeds_logged.insert(key, ());
        }
        Ok((seed, created))
    }

    async fn rules(&self, sale: &SaleId) -> PortResult<RoomRules> {
        self.on_line(sale, || self.inner.rules(sale)).await
    }

    async fn set_rules(&self, sale: &SaleId, rules: RoomRules) -> PortResult<()> {
        self.ensure(sale).await?;
        let json = serde_json::to_string(&rules).map_err(internal)?;
        self.put_value(sale.as_str(), "rules", &json).await?;
        self.on_line(sale, || self.inner.set_rules(sale, rules))
            .await
    }

    async fn publish_draw(&self, sale: &SaleId, record: &str) -> PortResult<()> {
        self.ensure(sale).await?;
        // Keys sort in publication order: time first, and monotonic within a millisecond.
        static KEYS: std::sync::Mutex<Option<ulid::Generator>> = std::sync::Mutex::new(None);
        let id = {
            let mut keys = KEYS.lock().map_err(internal)?;
            keys.get_or_insert_with(ulid::Generator::new)
                .generate()
                .unwrap_or_else(|_| ulid::Ulid::new())
        };
        let key = format!("draw.{id}");
        self.put_value(sale.as_str(), &key, record).await?;
        self.on_line(sale, || self.inner.publish_draw(sale, record))
            .await
    }

    async fn draws(&self, sale: &SaleId) -> PortResult<Vec<String>> {
        self.on_line(sale, || self.inner.draws(sale)).await
    }

    async fn holds(&self, sale: &SaleId) -> PortResult<bool> {
        self.inner.holds(sale).await
    }

    async fn restore(&self, sale: &SaleId, snapshot: &RoomSnapshot) -> PortResult<bool> {
        self.inner.restore(sale, snapshot).await
    }
}
