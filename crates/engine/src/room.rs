//! The embedded waiting room: one [`WaitingLine`] per sale in this process's memory, each
//! behind its own mutex (operations are O(log n) and never wait on I/O while holding it).
//!
//! The room itself is soft state: a restart empties it. The server puts it behind
//! [`stampede_app::durable_room::DurableRoom`], which logs joins and admissions to the store
//! and gives a sale's line back through [`WaitingRoom::restore`] on its first use after a
//! restart. The admission signing key comes from the data dir
//! ([`MemoryRoom::with_signing_key`]), so the public key shops verify admissions with stays
//! the same across restarts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use dashmap::DashMap;

use stampede_app::ports::{PortError, PortResult, RoomRules, RoomSnapshot, WaitingRoom};
use stampede_core::draw::DrawPurpose;
use stampede_core::waiting_line::{
    Admitted, ClaimRefusal, EntryView, JoinRefusal, LineStats, WaitingLine,
};
use stampede_core::{SaleId, UserId};

use crate::MemoryGate;

#[derive(Default)]
struct Room {
    line: WaitingLine,
    rules: RoomRules,
    seeds: HashMap<&'static str, [u8; 32]>,
    draws: Vec<String>,
}

/// An in-process [`WaitingRoom`].
#[derive(Default)]
pub struct MemoryRoom {
    rooms: DashMap<SaleId, Arc<Mutex<Room>>>,
    key: Mutex<Option<[u8; 32]>>,
    /// The gate whose count admissions are made against, read under the room's lock.
    gate: Option<Arc<MemoryGate>>,
}

fn purpose_key(p: DrawPurpose) -> &'static str {
    match p {
        DrawPurpose::PreQueue => "pre_queue",
        DrawPurpose::Lottery => "lottery",
    }
}

impl MemoryRoom {
    /// No rooms yet; a sale's room appears with its first use. Without a gate, admission
    /// rounds need the units given ([`WaitingRoom::admit`] with `Some`).
    pub fn new() -> Self {
        Self::default()
    }

    /// A room that admits against `gate`'s count, read in the same locked step as the
    /// admission (a reservation settles under the same lock, so the count and the
    /// outstanding admissions are seen at one instant).
    pub fn with_gate(gate: Arc<MemoryGate>) -> Self {
        Self {
            gate: Some(gate),
            ..Self::default()
        }
    }

    /// Signs admissions with `seed` (kept by the caller, e.g. in the data dir) instead of the
    /// first candidate asked with.
    pub fn with_signing_key(self, seed: [u8; 32]) -> Self {
        Self {
            key: Mutex::new(Some(seed)),
            ..self
        }
    }

    fn room(&self, sale: &SaleId) -> Arc<Mutex<Room>> {
        self.rooms.entry(sale.clone()).or_default().clone()
    }

    fn with<T>(&self, sale: &SaleId, f: impl FnOnce(&mut Room) -> T) -> PortResult<T> {
        let room = self.room(sale);
        let mut guard: MutexGuard<'_, Room> = room
            .lock()
            .map_err(|_| PortError::internal("waiting room lock poisoned"))?;
        Ok(f(&mut guard))
    }
}

#[async_trait]
impl WaitingRoom for MemoryRoom {
    async fn join(
        &self,
        sale: &SaleId,
        user: &UserId,
        device: &str,
        max_accounts_per_device: u32,
    ) -> PortResult<Result<EntryView, JoinRefusal>> {
        self.with(sale, |r| {
            r.line.join(user.as_str(), device, max_accounts_per_device)
        })
    }

    async fn view(&self, sale: &SaleId, user: &UserId) -> PortResult<Option<EntryView>> {
        if !self.rooms.contains_key(sale) {
            return Ok(None);
        }
        self.with(sale, |r| r.line.view(user.as_str()))
    }

    async fn pre_queue(&self, sale: &SaleId) -> PortResult<Option<Vec<String>>> {
        self.with(sale, |r| r.line.pre_queue_entrants())
    }

    async fn place_drawn(&self, sale: &SaleId, order: &[String]) -> PortResult<bool> {
        self.with(sale, |r| r.line.place_drawn(order))
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
        Ok(self
            .admit_named(
                sale,
                units_available,
                units_per_admission,
                ttl_ms,
                now_ms,
                max_batch,
            )
            .await?
            .len() as u64)
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
        let gate = self.gate.clone();
        self.with(sale, |r| {
            let units = units_available.unwrap_or_else(|| {
                gate.as_ref()
                    .and_then(|g| g.available_now(sale))
                    .map(|a| u64::try_from(a).unwrap_or(0))
                    .unwrap_or(0)
            });
            r.line
                .admit(units, units_per_admission, ttl_ms, now_ms, max_batch)
        })
    }

    async fn holds(&self, sale: &SaleId) -> PortResult<bool> {
        Ok(self.rooms.contains_key(sale))
    }

    async fn restore(&self, sale: &SaleId, snapshot: &RoomSnapshot) -> PortResult<bool> {
        if self.rooms.contains_key(sale) {
            return Ok(false);
        }
        // Built outside any lock: a million entries take a moment.
        let mut line = WaitingLine::restore(&snapshot.entries, snapshot.drawn);
        line.set_waitlist(snapshot.waitlist);
        let rules = snapshot.rules.unwrap_or_default();
        line.set_admission_limits(
            rules.admission_paused,
            u64::from(rules.new_per_minute),
            u64::from(rules.max_active),
        );
        let room = Room {
            line,
            rules,
            seeds: snapshot
                .seeds
                .iter()
                .map(|(p, s)| (purpose_key(*p), *s))
                .collect(),
            draws: snapshot.draws.clone(),
        };
        match self.rooms.entry(sale.clone()) {
            dashmap::mapref::entry::Entry::Occupied(_) => Ok(false),
            dashmap::mapref::entry::Entry::Vacant(v) => {
                v.insert(Arc::new(Mutex::new(room)));
                Ok(true)
            }
        }
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
        self.with(sale, |r| {
            r.line.claim(
                user.as_str(),
                device,
                ticket,
                quantity,
                device_limit,
                now_ms,
            )
        })
    }

    async fn settle(
        &self,
        sale: &SaleId,
        user: &UserId,
        quantity: u64,
        reserved: bool,
        shopping_until_ms: i64,
    ) -> PortResult<()> {
        self.with(sale, |r| {
            r.line
                .settle(user.as_str(), quantity, reserved, shopping_until_ms)
        })
    }

    async fn shopping_ended(&self, sale: &SaleId, user: &UserId) -> PortResult<()> {
        if !self.rooms.contains_key(sale) {
            return Ok(());
        }
        self.with(sale, |r| r.line.end_shopping(user.as_str()))
    }

    async fn set_sold_out(&self, sale: &SaleId, sold_out: bool, close: bool) -> PortResult<()> {
        self.with(sale, |r| {
            if close {
                r.line.close();
            } else {
                r.line.set_sold_out(sold_out);
            }
        })
    }

    async fn waiting_entrants(&self, sale: &SaleId) -> PortResult<Vec<String>> {
        self.with(sale, |r| r.line.waiting_entrants())
    }

    async fn apply_lottery(
        &self,
        sale: &SaleId,
        entrants: &[String],
        winners: &[String],
        ttl_ms: i64,
        now_ms: i64,
    ) -> PortResult<()> {
        self.with(sale, |r| {
            r.line.apply_lottery(entrants, winners, ttl_ms, now_ms)
        })
    }

    async fn stats(&self, sale: &SaleId) -> PortResult<LineStats> {
        if !self.rooms.contains_key(sale) {
            return Ok(LineStats::default());
        }
        self.with(sale, |r| r.line.stats())
    }

    async fn signing_key(&self, candidate: [u8; 32]) -> PortResult<[u8; 32]> {
        let mut key = self
            .key
            .lock()
            .map_err(|_| PortError::internal("key lock poisoned"))?;
        Ok(*key.get_or_insert(candidate))
    }

    async fn draw_seed(
        &self,
        sale: &SaleId,
        purpose: DrawPurpose,
        candidate: [u8; 32],
    ) -> PortResult<([u8; 32], bool)> {
        self.with(sale, |r| match r.seeds.get(purpose_key(purpose)) {
            Some(seed) => (*seed, false),
            None => {
                r.seeds.insert(purpose_key(purpose), candidate);
                (candidate, true)
            }
        })
    }

    async fn rules(&self, sale: &SaleId) -> PortResult<RoomRules> {
        if !self.rooms.contains_key(sale) {
            return Ok(RoomRules::default());
        }
        self.with(sale, |r| r.rules)
    }

    async fn set_rules(&self, sale: &SaleId, rules: RoomRules) -> PortResult<()> {
        self.with(sale, |r| {
            r.rules = rules;
            r.line.set_admission_limits(
                rules.admission_paused,
                u64::from(rules.new_per_minute),
                u64::from(rules.max_active),
            );
        })
    }

    async fn publish_draw(&self, sale: &SaleId, record: &str) -> PortResult<()> {
        self.with(sale, |r| r.draws.push(record.to_owned()))
    }

    async fn draws(&self, sale: &SaleId) -> PortResult<Vec<String>> {
        if !self.rooms.contains_key(sale) {
            return Ok(Vec::new());
        }
        self.with(sale, |r| r.draws.clone())
    }
}
