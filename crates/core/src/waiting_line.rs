//! One sale's waiting line, in memory: the embedded waiting room's data structure and the
//! reference model the Redis one is tested against.
//!
//! - Buyers who join before the start wait in a *pre-queue*; at the start it is put in the
//!   order of a seeded draw ([`crate::draw`]), so arriving early gains nothing. Everyone who
//!   joins after the draw goes to the back: first come, first served.
//! - Every entry gets a *rank* (its place in line, for good). A Fenwick tree counts the entries
//!   still waiting by rank, so a position is one prefix sum: O(log n) with a million waiting.
//! - Admission is stock-aware: [`WaitingLine::admit`] lets in at most as many buyers as the
//!   units the caller says are there, minus admissions not yet used, next in line first.
//! - An admission is used once: [`WaitingLine::claim`] moves it to `claimed` while the
//!   reservation is judged and [`WaitingLine::settle`] to `used` (or back on a refusal), so a
//!   replayed token finds nothing to claim.
//!
//! Invariants (checked by `debug_assert!` and the tests): every rank maps to one entry; the
//! Fenwick total equals the number of waiting entries; admission never passes a waiting entry
//! with a lower rank except through a lottery.

use std::collections::HashMap;

/// What an entry is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    Waiting,
    Admitted,
    /// A reservation with this admission is being judged.
    Claimed,
    /// The admission bought something; it cannot be used again.
    Used,
    /// The admission lapsed unused.
    Expired,
    /// Not drawn in a lottery.
    LotteryLost,
}

/// What a buyer sees of their entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryView {
    pub state: EntryState,
    /// Place in line, 1 = next; 0 unless waiting.
    pub position: u64,
    /// Still in the pre-queue: the position is provisional until the draw at the start.
    pub pre_queue: bool,
    /// The entry's rank, bound into its admission token.
    pub ticket: u64,
    pub device_id: String,
    /// When an admission lapses (0 if not admitted).
    pub admitted_until_ms: i64,
    /// Admitted by winning a lottery.
    pub lottery_won: bool,
    /// The line's stock is gone (for a waiting buyer: sold out unless stock comes back).
    pub sold_out: bool,
    /// The room is closed: nothing will come back.
    pub closed: bool,
    /// The organiser paused admission: nobody is admitted, places are kept.
    pub paused: bool,
    /// The admission is a waitlist offer: made after the room said sold out, for a unit that
    /// came back (it lasts the claim window, then passes on to the next in line).
    pub offered: bool,
}

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    #[error("this device already joined with the most accounts allowed for this sale")]
    DeviceAccountsCap,
    #[error("the waiting room is closed")]
    Closed,
}

/// Why a claim was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimRefusal {
    #[error("not admitted")]
    NotAdmitted,
    #[error("the admission was already used")]
    AlreadyUsed,
    #[error("the admission has lapsed")]
    Lapsed,
    #[error("the admission was for another device or place in line")]
    Mismatch,
    #[error("this device has bought its limit")]
    DeviceLimit,
}

/// Someone let in by [`WaitingLine::admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub user_id: String,
    pub ticket: u64,
    /// The device the buyer joined from (the room's log keeps it with the admission).
    pub device_id: String,
    /// When the admission lapses.
    pub until_ms: i64,
}

/// One buyer's entry as the room's durable log keeps it: enough to put the buyer back in the
/// same place, with the same admission, after a restart (see [`WaitingLine::restore`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEntry {
    pub user_id: String,
    pub device_id: String,
    /// Place in line for good; `None` for a pre-queue entry whose rank the draw gives (see
    /// [`restore_ranks`]).
    pub rank: Option<u64>,
    /// Join order in the pre-queue, if the buyer joined before the draw.
    pub pre_seq: Option<u64>,
    /// `Claimed` is kept as `Admitted`: a claim is settled, or lapses, after a restart.
    pub state: EntryState,
    /// When an admission lapses (0 unless admitted).
    pub until_ms: i64,
    pub lottery_won: bool,
    /// Units bought with the admission (the device's tally).
    pub units: u64,
}

impl LoggedEntry {
    /// How far along its life the entry is: waiting 0, admitted 1, ended 2.
    pub fn stage(&self) -> u8 {
        match self.state {
            EntryState::Waiting => 0,
            EntryState::Admitted | EntryState::Claimed => 1,
            EntryState::Used | EntryState::Expired | EntryState::LotteryLost => 2,
        }
    }

    /// Whether this record replaces `older` for the same buyer: a new rank (joined again
    /// after a lapse) or, at the same place, a later stage. Records may reach the log out of
    /// order (a join and its admission in different batches); the log keeps the furthest,
    /// never goes back. Both stores apply this same rule in SQL.
    pub fn supersedes(&self, older: &LoggedEntry) -> bool {
        let old_rank = older.rank.map_or(-1, i128::from);
        match self.rank.map(i128::from) {
            Some(rank) if rank > old_rank => true,
            Some(rank) if rank < old_rank => false,
            _ => self.stage() > older.stage(),
        }
    }

    /// `self` written over `older` (when it [`supersedes`](Self::supersedes) it): the place
    /// and the pre-queue seat are kept unless `self` names new ones.
    pub fn merged_over(&self, older: &LoggedEntry) -> LoggedEntry {
        LoggedEntry {
            user_id: older.user_id.clone(),
            device_id: older.device_id.clone(),
            rank: self.rank.or(older.rank),
            pre_seq: older.pre_seq.or(self.pre_seq),
            state: self.state,
            // A record without a place (a spent admission) keeps the admission's deadline.
            until_ms: if self.rank.is_none() && self.until_ms == 0 {
                older.until_ms
            } else {
                self.until_ms
            },
            lottery_won: self.lottery_won || older.lottery_won,
            units: self.units.max(older.units),
        }
    }

    /// The stored word of a state.
    pub fn state_word(&self) -> &'static str {
        match self.state {
            EntryState::Waiting => "waiting",
            EntryState::Admitted | EntryState::Claimed => "admitted",
            EntryState::Used => "used",
            EntryState::Expired => "expired",
            EntryState::LotteryLost => "lost",
        }
    }

    /// The state a stored word names.
    pub fn state_from_word(word: &str) -> Option<EntryState> {
        Some(match word {
            "waiting" => EntryState::Waiting,
            "admitted" => EntryState::Admitted,
            "used" => EntryState::Used,
            "expired" => EntryState::Expired,
            "lost" => EntryState::LotteryLost,
            _ => return None,
        })
    }
}

/// Gives every pre-queue entry without a rank the rank the draw gave it: `order` first (those
/// it names, in its order), then the rest in join order, exactly as
/// [`WaitingLine::place_drawn`] did. Entries that already carry a rank keep it (their draw
/// rank, recorded, or a later one after joining again). Returns whether the line counts as
/// drawn: `order` was given, or some entry has a rank (joined after a draw whose record was
/// lost: its pre-queue is placed in join order).
pub fn restore_ranks(entries: &mut [LoggedEntry], order: Option<&[String]>) -> bool {
    let drawn = order.is_some() || entries.iter().any(|e| e.rank.is_some());
    if !drawn {
        return false;
    }
    let mut pre: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].pre_seq.is_some())
        .collect();
    pre.sort_by_key(|&i| entries[i].pre_seq);
    let index_of: HashMap<&str, usize> = pre
        .iter()
        .enumerate()
        .map(|(k, &i)| (entries[i].user_id.as_str(), k))
        .collect();
    let mut placed = vec![false; pre.len()];
    let mut sequence: Vec<usize> = Vec::with_capacity(pre.len());
    for user in order.unwrap_or(&[]) {
        if let Some(&k) = index_of.get(user.as_str()) {
            if !placed[k] {
                placed[k] = true;
                sequence.push(pre[k]);
            }
        }
    }
    for (k, &i) in pre.iter().enumerate() {
        if !placed[k] {
            sequence.push(i);
        }
    }
    for (rank, i) in sequence.into_iter().enumerate() {
        let entry = &mut entries[i];
        if entry.rank.is_none() {
            entry.rank = Some(rank as u64);
        }
    }
    true
}

/// Counters for the admin view and the fairness figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineStats {
    pub waiting: u64,
    pub pre_queue: u64,
    pub drawn: bool,
    pub admitted_total: u64,
    /// Admitted and not yet used or lapsed: each is a claim on stock.
    pub outstanding: u64,
    pub used_total: u64,
    pub expired_total: u64,
    pub lottery_lost_total: u64,
    pub sold_out: bool,
    pub closed: bool,
    /// Ranks in the order they were admitted (FIFO inversions are counted over this).
    pub admission_ranks: Vec<u64>,
    /// Units bought per device that bought any.
    pub device_units: Vec<u64>,
}

/// Counts per rank with O(log n) prefix sums and appends.
#[derive(Debug, Default, Clone)]
struct Fenwick {
    tree: Vec<i64>,
}

impl Fenwick {
    fn len(&self) -> usize {
        self.tree.len()
    }

    /// Sum of values at ranks `0..end`.
    fn prefix(&self, end: usize) -> i64 {
        let mut i = end.min(self.tree.len());
        let mut sum = 0;
        while i > 0 {
            sum += self.tree[i - 1];
            i &= i - 1;
        }
        sum
    }

    fn add(&mut self, rank: usize, delta: i64) {
        let mut i = rank + 1;
        while i <= self.tree.len() {
            self.tree[i - 1] += delta;
            i += i & i.wrapping_neg();
        }
    }

    /// Appends a rank holding `value`: node i covers (i - lowbit(i), i].
    fn push(&mut self, value: i64) {
        let i = self.tree.len() + 1;
        let low = i & i.wrapping_neg();
        let covered = self.prefix(i - 1) - self.prefix(i - low);
        self.tree.push(value + covered);
    }

    /// Built from every rank's value at once, in O(n).
    fn from_values(values: Vec<i64>) -> Self {
        let mut tree = values;
        let n = tree.len();
        for i in 1..=n {
            let parent = i + (i & i.wrapping_neg());
            if parent <= n {
                tree[parent - 1] += tree[i - 1];
            }
        }
        Self { tree }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    user: Box<str>,
    device: u32,
    /// Place in line after the draw; `None` while in the pre-queue.
    rank: Option<u32>,
    state: EntryState,
    until_ms: i64,
    lottery_won: bool,
    /// Admitted after the room said sold out: a waitlist offer.
    offered: bool,
    /// Join order within the pre-queue (its provisional position).
    pre_seq: u32,
}

/// One sale's waiting line.
#[derive(Debug, Default)]
pub struct WaitingLine {
    slots: Vec<Slot>,
    by_user: HashMap<Box<str>, u32>,
    device_ids: HashMap<Box<str>, u32>,
    /// Per device index: accounts joined, units bought.
    device_tally: Vec<(u32, u64)>,
    device_names: Vec<Box<str>>,
    /// Rank → slot.
    ranks: Vec<u32>,
    waiting: Fenwick,
    /// Slots waiting for the draw, in join order.
    pre_queue: Vec<u32>,
    drawn: bool,
    /// Lowest rank that may still be waiting.
    cursor: usize,
    /// Slots admitted or claimed (the outstanding admissions).
    outstanding: Vec<u32>,
    admission_ranks: Vec<u64>,
    admitted_total: u64,
    used_total: u64,
    expired_total: u64,
    lottery_lost_total: u64,
    sold_out: bool,
    /// The room has said sold out once: from then on every admission is a waitlist offer
    /// (a unit that came back, for the next in line).
    waitlist: bool,
    closed: bool,
    /// Set by the organiser: admission rounds admit nobody (lapses still happen).
    paused: bool,
    /// At most this many admissions in any 60 s (0: no ceiling).
    per_minute: u64,
    /// When each admission of the last 60 s happened, oldest first.
    recent_ms: std::collections::VecDeque<i64>,
    /// At most this many buyers admitted and shopping at once (0: no cap).
    max_active: u64,
    /// Slots whose admission bought a hold that has not ended yet (paid, released or lapsed),
    /// each with the time by which its hold has ended whatever happens: a hold never outlives
    /// its sale's hold time, so a missed end notice frees the slot by then.
    shopping: HashMap<u32, i64>,
}

/// The window [`WaitingLine::set_admission_limits`]' ceiling counts over.
pub const ADMISSION_WINDOW_MS: i64 = 60_000;

impl WaitingLine {
    /// An empty line whose pre-queue is open.
    pub fn new() -> Self {
        Self::default()
    }

    fn device_index(&mut self, device: &str) -> u32 {
        if let Some(&i) = self.device_ids.get(device) {
            return i;
        }
        let i = u32::try_from(self.device_names.len()).unwrap_or(u32::MAX);
        self.device_names.push(device.into());
        self.device_tally.push((0, 0));
        self.device_ids.insert(device.into(), i);
        i
    }

    fn next_rank(&mut self, slot: u32) -> u32 {
        let rank = u32::try_from(self.ranks.len()).unwrap_or(u32::MAX);
        self.ranks.push(slot);
        self.waiting.push(1);
        rank
    }

    /// Joins `user` from `device`. Joining again keeps the first place (and the first device);
    /// an entry whose admission lapsed may join again, at the back.
    /// `max_accounts_per_device` of 0 means no cap.
    pub fn join(
        &mut self,
        user: &str,
        device: &str,
        max_accounts_per_device: u32,
    ) -> Result<EntryView, JoinRefusal> {
        if let Some(&slot) = self.by_user.get(user) {
            let s = slot as usize;
            if self.slots[s].state == EntryState::Expired && !self.closed {
                let rank = self.next_rank(slot);
                let entry = &mut self.slots[s];
                entry.rank = Some(rank);
                entry.state = EntryState::Waiting;
                entry.until_ms = 0;
                entry.offered = false;
            }
            return Ok(self.view_slot(slot));
        }
        if self.closed {
            return Err(JoinRefusal::Closed);
        }
        let device_index = self.device_index(device);
        let tally = &mut self.device_tally[device_index as usize];
        if max_accounts_per_device > 0 && tally.0 >= max_accounts_per_device {
            return Err(JoinRefusal::DeviceAccountsCap);
        }
        tally.0 += 1;
        let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        let pre_seq = u32::try_from(self.pre_queue.len()).unwrap_or(u32::MAX);
        let rank = if self.drawn {
            Some(self.next_rank(slot))
        } else {
            self.pre_queue.push(slot);
            None
        };
        self.slots.push(Slot {
            user: user.into(),
            device: device_index,
            rank,
            state: EntryState::Waiting,
            until_ms: 0,
            lottery_won: false,
            offered: false,
            pre_seq,
        });
        self.by_user.insert(user.into(), slot);
        Ok(self.view_slot(slot))
    }

    fn view_slot(&self, slot: u32) -> EntryView {
        let entry = &self.slots[slot as usize];
        let (position, pre_queue) = match (entry.state, entry.rank) {
            (EntryState::Waiting, Some(rank)) => {
                let before = self.waiting.prefix(rank as usize);
                (u64::try_from(before).unwrap_or(0) + 1, false)
            }
            (EntryState::Waiting, None) => (u64::from(entry.pre_seq) + 1, true),
            _ => (0, false),
        };
        EntryView {
            state: entry.state,
            position,
            pre_queue,
            ticket: entry.rank.map(u64::from).unwrap_or(0),
            device_id: self.device_names[entry.device as usize].to_string(),
            admitted_until_ms: entry.until_ms,
            lottery_won: entry.lottery_won,
            sold_out: self.sold_out,
            closed: self.closed,
            paused: self.paused,
            offered: entry.offered
                && matches!(entry.state, EntryState::Admitted | EntryState::Claimed),
        }
    }

    /// The caller's entry, if they joined.
    pub fn view(&self, user: &str) -> Option<EntryView> {
        self.by_user.get(user).map(|&slot| self.view_slot(slot))
    }

    /// Who is in the pre-queue, if the draw has not happened yet.
    pub fn pre_queue_entrants(&self) -> Option<Vec<String>> {
        if self.drawn {
            return None;
        }
        Some(
            self.pre_queue
                .iter()
                .map(|&s| self.slots[s as usize].user.to_string())
                .collect(),
        )
    }

    /// Ends the pre-queue: ranks its entries in `order` (the draw's result); entries the order
    /// does not name (joined after it was computed) follow in join order. Later joins go to
    /// the back. Idempotent: `true` only for the call that placed it.
    pub fn place_drawn(&mut self, order: &[String]) -> bool {
        if self.drawn {
            return false;
        }
        let pending = std::mem::take(&mut self.pre_queue);
        let mut placed = vec![false; pending.len()];
        let position_of: HashMap<u32, usize> =
            pending.iter().enumerate().map(|(i, &s)| (s, i)).collect();
        for user in order {
            if let Some(&slot) = self.by_user.get(user.as_str()) {
                if let Some(&i) = position_of.get(&slot) {
                    if !placed[i] {
                        placed[i] = true;
                        let rank = self.next_rank(slot);
                        self.slots[slot as usize].rank = Some(rank);
                    }
                }
            }
        }
        for (i, &slot) in pending.iter().enumerate() {
            if !placed[i] {
                let rank = self.next_rank(slot);
                self.slots[slot as usize].rank = Some(rank);
            }
        }
        self.drawn = true;
        debug_assert_eq!(self.waiting.len(), self.ranks.len());
        true
    }

    /// Lapses admissions not used by `now`. Returns how many lapsed.
    pub fn expire_admissions(&mut self, now_ms: i64) -> u64 {
        let (mut lapsed, mut used) = (0, 0);
        let slots = &mut self.slots;
        self.outstanding.retain(|&slot| {
            let entry = &mut slots[slot as usize];
            // A claim being judged keeps its admission a little longer than the token; one
            // never settled (its node died mid-reservation) counts as used: the buyer had
            // their turn, and it must not be handed out twice.
            let claimed = entry.state == EntryState::Claimed;
            let grace = if claimed { 60_000 } else { 0 };
            if entry.until_ms + grace <= now_ms {
                if claimed {
                    entry.state = EntryState::Used;
                    used += 1;
                } else {
                    entry.state = EntryState::Expired;
                    lapsed += 1;
                }
                false
            } else {
                true
            }
        });
        self.expired_total += lapsed;
        self.used_total += used;
        lapsed
    }

    /// Admits the next in line: each admission may take up to `units_per_admission` units
    /// (the buyer's limit), so as many as fit in `units_available` once the admissions still
    /// outstanding are counted at that size too; at most `max_batch`. Nothing is admitted
    /// before the draw. Never admits more than the units could serve: a reservation whose
    /// units are already gone from `units_available` but whose admission is still
    /// outstanding is counted twice, which errs on the side of admitting one fewer now.
    pub fn admit(
        &mut self,
        units_available: u64,
        units_per_admission: u64,
        ttl_ms: i64,
        now_ms: i64,
        max_batch: u64,
    ) -> Vec<Admitted> {
        self.expire_admissions(now_ms);
        if !self.drawn || self.closed || self.paused {
            return Vec::new();
        }
        let per = units_per_admission.max(1);
        let mut room = (units_available.saturating_sub((self.outstanding.len() as u64) * per)
            / per)
            .min(max_batch);
        // Admissions are remembered for one window whether or not a ceiling is set, so a
        // ceiling set mid-minute counts what that minute already admitted.
        while self
            .recent_ms
            .front()
            .is_some_and(|&t| t <= now_ms.saturating_sub(ADMISSION_WINDOW_MS))
        {
            self.recent_ms.pop_front();
        }
        if self.per_minute > 0 {
            room = room.min(self.per_minute.saturating_sub(self.recent_ms.len() as u64));
        }
        if self.max_active > 0 {
            self.shopping.retain(|_, until| *until > now_ms);
            let active = (self.outstanding.len() + self.shopping.len()) as u64;
            room = room.min(self.max_active.saturating_sub(active));
        }
        let mut admitted = Vec::new();
        while (admitted.len() as u64) < room && self.cursor < self.ranks.len() {
            let rank = self.cursor;
            self.cursor += 1;
            let slot = self.ranks[rank];
            // A restored line may have ranks nobody holds (joins lost before their batch
            // committed): they point at no slot.
            let Some(entry) = self.slots.get(slot as usize) else {
                continue;
            };
            if entry.state != EntryState::Waiting || entry.rank != u32::try_from(rank).ok() {
                continue;
            }
            admitted.push(self.admit_slot(slot, rank, ttl_ms, now_ms, false));
            self.recent_ms.push_back(now_ms);
        }
        admitted
    }

    fn admit_slot(
        &mut self,
        slot: u32,
        rank: usize,
        ttl_ms: i64,
        now_ms: i64,
        won: bool,
    ) -> Admitted {
        self.waiting.add(rank, -1);
        let entry = &mut self.slots[slot as usize];
        entry.state = EntryState::Admitted;
        entry.until_ms = now_ms.saturating_add(ttl_ms);
        entry.lottery_won = won;
        entry.offered = self.waitlist && !won;
        self.outstanding.push(slot);
        self.admission_ranks.push(rank as u64);
        self.admitted_total += 1;
        Admitted {
            user_id: entry.user.to_string(),
            ticket: rank as u64,
            device_id: self.device_names[entry.device as usize].to_string(),
            until_ms: entry.until_ms,
        }
    }

    /// A line rebuilt from its log (entries with the ranks [`restore_ranks`] gave them):
    /// every buyer at the same place, admissions not used yet still outstanding (lapsing at
    /// the same time), used ones spent, device tallies counted again. O(n), one pass.
    /// `drawn` is what [`restore_ranks`] answered: if not, every entry is back in the
    /// pre-queue in join order.
    pub fn restore(entries: &[LoggedEntry], drawn: bool) -> WaitingLine {
        let mut line = WaitingLine::new();
        line.drawn = drawn;
        let rank_count = if drawn {
            entries
                .iter()
                .filter_map(|e| e.rank)
                .filter(|&r| r < u64::from(u32::MAX))
                .max()
                .map_or(0, |r| r as usize + 1)
        } else {
            0
        };
        line.ranks = vec![u32::MAX; rank_count];
        let mut values = vec![0i64; rank_count];
        let mut pre: Vec<(u64, u32)> = Vec::new();
        let mut unplaced: Vec<u32> = Vec::new();
        line.slots.reserve(entries.len());
        line.by_user.reserve(entries.len());
        for e in entries {
            if line.by_user.contains_key(e.user_id.as_str()) {
                continue;
            }
            let device = line.device_index(&e.device_id);
            let tally = &mut line.device_tally[device as usize];
            tally.0 += 1;
            tally.1 += e.units;
            let slot = u32::try_from(line.slots.len()).unwrap_or(u32::MAX);
            let state = match e.state {
                EntryState::Claimed => EntryState::Admitted,
                s => s,
            };
            let mut rank = None;
            if drawn {
                match e.rank.and_then(|r| usize::try_from(r).ok()) {
                    Some(r) if r < rank_count && line.ranks[r] == u32::MAX => {
                        line.ranks[r] = slot;
                        rank = u32::try_from(r).ok();
                    }
                    _ => unplaced.push(slot),
                }
            } else {
                pre.push((e.pre_seq.unwrap_or(u64::MAX), slot));
            }
            line.slots.push(Slot {
                user: e.user_id.as_str().into(),
                device,
                rank,
                state,
                until_ms: e.until_ms,
                lottery_won: e.lottery_won,
                offered: false,
                pre_seq: 0,
            });
            line.by_user.insert(e.user_id.as_str().into(), slot);
            match state {
                EntryState::Waiting => {
                    if let Some(r) = rank {
                        values[r as usize] = 1;
                    }
                }
                EntryState::Admitted | EntryState::Claimed => {
                    line.outstanding.push(slot);
                    line.admitted_total += 1;
                }
                EntryState::Used => {
                    line.used_total += 1;
                    line.admitted_total += 1;
                }
                EntryState::Expired => {
                    line.expired_total += 1;
                    line.admitted_total += 1;
                }
                EntryState::LotteryLost => line.lottery_lost_total += 1,
            }
        }
        line.waiting = Fenwick::from_values(values);
        line.admission_ranks = line
            .ranks
            .iter()
            .enumerate()
            .filter(|(_, &slot)| {
                line.slots.get(slot as usize).is_some_and(|s| {
                    matches!(
                        s.state,
                        EntryState::Admitted | EntryState::Used | EntryState::Expired
                    )
                })
            })
            .map(|(r, _)| r as u64)
            .collect();
        // Ranks the log had twice or not at all (never in a consistent log): at the back.
        for slot in unplaced {
            let rank = line.next_rank(slot);
            let entry = &mut line.slots[slot as usize];
            entry.rank = Some(rank);
            if entry.state != EntryState::Waiting {
                line.waiting.add(rank as usize, -1);
            }
        }
        pre.sort_unstable();
        for (seq, (_, slot)) in pre.into_iter().enumerate() {
            line.slots[slot as usize].pre_seq = u32::try_from(seq).unwrap_or(u32::MAX);
            line.pre_queue.push(slot);
        }
        debug_assert_eq!(line.waiting.len(), line.ranks.len());
        line
    }

    /// Takes the caller's admission for a reservation of `quantity` units.
    /// `device_limit` of 0 means no per-device limit.
    pub fn claim(
        &mut self,
        user: &str,
        device: &str,
        ticket: u64,
        quantity: u64,
        device_limit: u64,
        now_ms: i64,
    ) -> Result<(), ClaimRefusal> {
        let slot = *self.by_user.get(user).ok_or(ClaimRefusal::NotAdmitted)?;
        let entry = &self.slots[slot as usize];
        match entry.state {
            EntryState::Admitted => {}
            EntryState::Used | EntryState::Claimed => return Err(ClaimRefusal::AlreadyUsed),
            EntryState::Expired => return Err(ClaimRefusal::Lapsed),
            _ => return Err(ClaimRefusal::NotAdmitted),
        }
        if entry.until_ms <= now_ms {
            return Err(ClaimRefusal::Lapsed);
        }
        if entry.rank.map(u64::from) != Some(ticket)
            || *self.device_names[entry.device as usize] != *device
        {
            return Err(ClaimRefusal::Mismatch);
        }
        let tally = &mut self.device_tally[entry.device as usize];
        if device_limit > 0 && tally.1 + quantity > device_limit {
            return Err(ClaimRefusal::DeviceLimit);
        }
        tally.1 += quantity;
        self.slots[slot as usize].state = EntryState::Claimed;
        Ok(())
    }

    /// Ends a claim: `reserved` uses the admission up; otherwise it is given back (the buyer
    /// may try again while it lasts) with the device's units.
    ///
    /// A reserved admission keeps its buyer among those shopping until
    /// [`WaitingLine::end_shopping`] or `shopping_until_ms`, whichever comes first.
    pub fn settle(&mut self, user: &str, quantity: u64, reserved: bool, shopping_until_ms: i64) {
        let Some(&slot) = self.by_user.get(user) else {
            return;
        };
        let entry = &mut self.slots[slot as usize];
        if entry.state != EntryState::Claimed {
            return;
        }
        if reserved {
            entry.state = EntryState::Used;
            self.used_total += 1;
            self.outstanding.retain(|&s| s != slot);
            self.shopping.insert(slot, shopping_until_ms);
        } else {
            entry.state = EntryState::Admitted;
            let tally = &mut self.device_tally[entry.device as usize];
            tally.1 = tally.1.saturating_sub(quantity);
        }
    }

    /// The organiser's controls: `paused` stops admission (places kept, waiting buyers see
    /// it); `per_minute` caps admissions in any 60 s window (0: no cap). Lottery winners are
    /// admitted regardless (and not counted): the published draw decides them.
    ///
    /// `max_active` caps buyers admitted and shopping at once: an outstanding admission or a
    /// hold bought with one takes a slot until it is used up, paid, released or lapses.
    pub fn set_admission_limits(&mut self, paused: bool, per_minute: u64, max_active: u64) {
        self.paused = paused;
        self.per_minute = per_minute;
        self.max_active = max_active;
    }

    /// The buyer's hold ended (paid, released or lapsed): their slot among those shopping is
    /// free for the next in line.
    pub fn end_shopping(&mut self, user: &str) {
        if let Some(&slot) = self.by_user.get(user) {
            self.shopping.remove(&slot);
        }
    }

    /// Marks the stock as gone (or back). Waiting buyers see it on their next look.
    pub fn set_sold_out(&mut self, sold_out: bool) {
        self.sold_out = sold_out;
        self.waitlist |= sold_out;
    }

    /// Whether the room has said sold out (admissions are waitlist offers from then on).
    pub fn is_waitlist(&self) -> bool {
        self.waitlist
    }

    /// Puts back the waitlist flag of a line rebuilt from its log.
    pub fn set_waitlist(&mut self, waitlist: bool) {
        self.waitlist = waitlist;
    }

    /// Closes the room for good: nothing will come back (all sold, or the sale ended).
    pub fn close(&mut self) {
        self.sold_out = true;
        self.waitlist = true;
        self.closed = true;
    }

    /// Everyone still waiting (drawn or not): a lottery's entrants.
    pub fn waiting_entrants(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|s| s.state == EntryState::Waiting)
            .map(|s| s.user.to_string())
            .collect()
    }

    /// Applies a lottery over `entrants` (the published list): `winners` are admitted, the
    /// other entrants still waiting have lost. Anyone who joined after the list was taken
    /// keeps their place. Ends the pre-queue if it was still open.
    pub fn apply_lottery(
        &mut self,
        entrants: &[String],
        winners: &[String],
        ttl_ms: i64,
        now_ms: i64,
    ) {
        let _ = self.place_drawn(&[]);
        let won: std::collections::HashSet<&str> = winners.iter().map(String::as_str).collect();
        for user in entrants {
            let Some(&slot) = self.by_user.get(user.as_str()) else {
                continue;
            };
            let entry = &self.slots[slot as usize];
            let Some(rank) = entry.rank.map(|r| r as usize) else {
                continue;
            };
            if entry.state != EntryState::Waiting {
                continue;
            }
            if won.contains(user.as_str()) {
                self.admit_slot(slot, rank, ttl_ms, now_ms, true);
            } else {
                self.waiting.add(rank, -1);
                self.slots[slot as usize].state = EntryState::LotteryLost;
                self.lottery_lost_total += 1;
            }
        }
    }

    /// Counters and fairness inputs.
    pub fn stats(&self) -> LineStats {
        let waiting = u64::try_from(self.waiting.prefix(self.ranks.len())).unwrap_or(0)
            + self.pre_queue.len() as u64;
        LineStats {
            waiting,
            pre_queue: self.pre_queue.len() as u64,
            drawn: self.drawn,
            admitted_total: self.admitted_total,
            outstanding: self.outstanding.len() as u64,
            used_total: self.used_total,
            expired_total: self.expired_total,
            lottery_lost_total: self.lottery_lost_total,
            sold_out: self.sold_out,
            closed: self.closed,
            admission_ranks: self.admission_ranks.clone(),
            device_units: self
                .device_tally
                .iter()
                .filter(|t| t.1 > 0)
                .map(|t| t.1)
                .collect(),
        }
    }

    /// Rough bytes held per joined buyer (for the scale benchmark).
    pub fn approx_bytes(&self) -> usize {
        let per_slot = std::mem::size_of::<Slot>() + 4 + 8;
        let strings: usize = self.slots.iter().map(|s| s.user.len() * 2).sum();
        let map = (self.by_user.capacity() * (std::mem::size_of::<Box<str>>() + 4 + 1))
            + (self.device_ids.capacity() * (std::mem::size_of::<Box<str>>() + 4 + 1));
        let devices: usize = self.device_names.iter().map(|d| d.len() * 2 + 40).sum();
        self.slots.capacity() * per_slot + strings + map + devices
    }
}

/// Pairs of admitted buyers where the later in line got in first.
pub fn fifo_inversions(admission_ranks: &[u64]) -> u64 {
    fn sort_count(v: &mut [u64], buf: &mut Vec<u64>) -> u64 {
        let n = v.len();
        if n < 2 {
            return 0;
        }
        let mid = n / 2;
        let mut count = sort_count(&mut v[..mid], buf) + sort_count(&mut v[mid..], buf);
        buf.clear();
        let (mut i, mut j) = (0, mid);
        while i < mid && j < n {
            if v[i] <= v[j] {
                buf.push(v[i]);
                i += 1;
            } else {
                buf.push(v[j]);
                count += (mid - i) as u64;
                j += 1;
            }
        }
        buf.extend_from_slice(&v[i..mid]);
        buf.extend_from_slice(&v[j..n]);
        v.copy_from_slice(buf);
        count
    }
    let mut v = admission_ranks.to_vec();
    let mut buf = Vec::with_capacity(v.len());
    sort_count(&mut v, &mut buf)
}

/// Share of all units bought that went to the top `percent` of devices (at least one device).
pub fn top_devices_share(device_units: &[u64], percent: f64) -> f64 {
    let total: u64 = device_units.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let mut sorted = device_units.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let top = ((sorted.len() as f64 * percent / 100.0).ceil() as usize).max(1);
    sorted.iter().take(top).sum::<u64>() as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drawn_line() -> WaitingLine {
        let mut line = WaitingLine::new();
        assert!(line.place_drawn(&[]));
        line
    }

    #[test]
    fn positions_follow_join_order_and_rejoining_keeps_the_place() {
        let mut line = drawn_line();
        for i in 0..10 {
            let v = line.join(&format!("u{i}"), &format!("d{i}"), 0).unwrap();
            assert_eq!(v.position, i + 1);
        }
        assert_eq!(line.join("u3", "other", 0).unwrap().position, 4);
        assert_eq!(line.view("u3").unwrap().device_id, "d3");
        let admitted = line.admit(2, 1, 1000, 0, 100);
        assert_eq!(admitted.len(), 2);
        assert_eq!(admitted[0].user_id, "u0");
        assert_eq!(line.view("u3").unwrap().position, 2);
        assert_eq!(line.view("u0").unwrap().state, EntryState::Admitted);
    }

    #[test]
    fn the_pre_queue_is_placed_in_the_drawn_order() {
        let mut line = WaitingLine::new();
        for u in ["a", "b", "c"] {
            assert!(line.join(u, u, 0).unwrap().pre_queue);
        }
        assert!(
            line.admit(10, 1, 1000, 0, 100).is_empty(),
            "no admission before the draw"
        );
        assert_eq!(line.pre_queue_entrants().unwrap(), vec!["a", "b", "c"]);
        line.place_drawn(&["c".into(), "a".into()]);
        assert_eq!(line.view("c").unwrap().position, 1);
        assert_eq!(line.view("a").unwrap().position, 2);
        assert_eq!(line.view("b").unwrap().position, 3);
        assert_eq!(line.join("late", "x", 0).unwrap().position, 4);
        assert!(line.pre_queue_entrants().is_none());
    }

    #[test]
    fn admission_is_bounded_by_stock_minus_outstanding_and_tokens_are_single_use() {
        let mut line = drawn_line();
        for i in 0..5 {
            line.join(&format!("u{i}"), "d", 0).unwrap();
        }
        assert_eq!(line.admit(2, 1, 1000, 0, 100).len(), 2);
        assert_eq!(
            line.admit(2, 1, 1000, 0, 100).len(),
            0,
            "two are still outstanding"
        );
        let t = line.view("u0").unwrap().ticket;
        assert_eq!(
            line.claim("u0", "d", t + 1, 1, 0, 1),
            Err(ClaimRefusal::Mismatch)
        );
        assert_eq!(
            line.claim("u0", "e", t, 1, 0, 1),
            Err(ClaimRefusal::Mismatch)
        );
        assert_eq!(line.claim("u0", "d", t, 1, 0, 1), Ok(()));
        assert_eq!(
            line.claim("u0", "d", t, 1, 0, 1),
            Err(ClaimRefusal::AlreadyUsed)
        );
        line.settle("u0", 1, true, i64::MAX);
        assert_eq!(
            line.claim("u0", "d", t, 1, 0, 1),
            Err(ClaimRefusal::AlreadyUsed)
        );
        assert_eq!(
            line.claim("u2", "d", 2, 1, 0, 1),
            Err(ClaimRefusal::NotAdmitted)
        );
        // u1's admission lapses unused: its claim on stock goes to the next in line.
        assert_eq!(line.admit(1, 1, 1000, 1001, 100).len(), 1);
        assert_eq!(line.view("u1").unwrap().state, EntryState::Expired);
        assert_eq!(line.view("u2").unwrap().state, EntryState::Admitted);
        assert_eq!(line.stats().expired_total, 1);
    }

    #[test]
    fn device_caps_and_limits() {
        let mut line = drawn_line();
        line.join("a", "phone", 2).unwrap();
        line.join("b", "phone", 2).unwrap();
        assert_eq!(
            line.join("c", "phone", 2),
            Err(JoinRefusal::DeviceAccountsCap)
        );
        line.admit(10, 1, 1000, 0, 100);
        let (ta, tb) = (
            line.view("a").unwrap().ticket,
            line.view("b").unwrap().ticket,
        );
        assert_eq!(line.claim("a", "phone", ta, 1, 1, 0), Ok(()));
        line.settle("a", 1, true, i64::MAX);
        assert_eq!(
            line.claim("b", "phone", tb, 1, 1, 0),
            Err(ClaimRefusal::DeviceLimit)
        );
    }

    #[test]
    fn a_refused_reservation_gives_the_admission_back() {
        let mut line = drawn_line();
        line.join("a", "d", 0).unwrap();
        line.admit(1, 1, 1000, 0, 100);
        let t = line.view("a").unwrap().ticket;
        line.claim("a", "d", t, 1, 1, 0).unwrap();
        line.settle("a", 1, false, i64::MAX);
        assert_eq!(line.claim("a", "d", t, 1, 1, 0), Ok(()));
    }

    #[test]
    fn a_lottery_admits_winners_and_ends_the_rest() {
        let mut line = WaitingLine::new();
        for u in ["a", "b", "c", "d"] {
            line.join(u, u, 0).unwrap();
        }
        let entrants: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        line.apply_lottery(&entrants, &["b".into(), "d".into()], 1000, 0);
        assert!(line.view("b").unwrap().lottery_won);
        assert_eq!(line.view("a").unwrap().state, EntryState::LotteryLost);
        assert_eq!(line.stats().waiting, 0);
        assert_eq!(line.stats().outstanding, 2);
    }

    #[test]
    fn inversions_and_top_share() {
        assert_eq!(fifo_inversions(&[0, 1, 2, 3]), 0);
        assert_eq!(fifo_inversions(&[1, 0, 3, 2]), 2);
        assert_eq!(fifo_inversions(&[3, 2, 1, 0]), 6);
        assert!((top_devices_share(&[1; 100], 1.0) - 0.01).abs() < 1e-9);
        assert!((top_devices_share(&[50, 1, 1], 1.0) - 50.0 / 52.0).abs() < 1e-9);
    }

    proptest! {
        /// Against a plain model: positions are the count of waiting entries ahead.
        #[test]
        fn positions_match_a_model(ops in proptest::collection::vec((0u8..3, 0u8..40), 1..300)) {
            let mut line = drawn_line();
            let mut model: Vec<String> = Vec::new(); // waiting, in order
            for (op, who) in ops {
                let user = format!("u{who}");
                match op {
                    0 => {
                        let fresh = line.view(&user).is_none();
                        line.join(&user, "d", 0).unwrap();
                        if fresh { model.push(user.clone()); }
                    }
                    1 => {
                        let got: Vec<String> = line.admit(2, 1, 1_000_000, 0, 2).into_iter().map(|a| a.user_id).collect();
                        let want: Vec<String> = model.iter().take(got.len()).cloned().collect();
                        prop_assert_eq!(&got, &want);
                        model.drain(..got.len());
                        // Use the admissions up so the next round has room again.
                        for u in &got {
                            let t = line.view(u).unwrap().ticket;
                            line.claim(u, "d", t, 1, 0, 0).unwrap();
                            line.settle(u, 1, true, i64::MAX);
                        }
                    }
                    _ => {
                        for (i, u) in model.iter().enumerate() {
                            prop_assert_eq!(line.view(u).unwrap().position, i as u64 + 1);
                        }
                    }
                }
            }
            prop_assert_eq!(line.stats().waiting, model.len() as u64);
        }

        /// A line rebuilt from what a log keeps of it (every buyer's latest view) answers
        /// every buyer as the line did: same place, state, ticket and deadline.
        #[test]
        fn a_restored_line_answers_as_the_original(
            ops in proptest::collection::vec((0u8..4, 0u8..30), 1..200)
        ) {
            let mut line = drawn_line();
            let mut now = 0i64;
            let mut users: Vec<String> = Vec::new();
            for (op, who) in ops {
                let user = format!("u{who}");
                match op {
                    0 | 1 => {
                        if line.join(&user, &format!("d{}", who % 7), 0).is_ok()
                            && !users.contains(&user)
                        {
                            users.push(user);
                        }
                    }
                    2 => {
                        let _ = line.admit(3, 1, 1000, now, 3);
                    }
                    _ => {
                        now += 400;
                        if let Some(v) = line.view(&user) {
                            if v.state == EntryState::Admitted
                                && line.claim(&user, &v.device_id, v.ticket, 1, 0, now).is_ok()
                            {
                                line.settle(&user, 1, true, i64::MAX);
                            }
                        }
                    }
                }
            }
            let _ = line.admit(0, 1, 1000, now, 0);
            let entries: Vec<LoggedEntry> = users
                .iter()
                .map(|u| {
                    let v = line.view(u).unwrap();
                    LoggedEntry {
                        user_id: u.clone(),
                        device_id: v.device_id.clone(),
                        rank: Some(v.ticket),
                        pre_seq: None,
                        state: v.state,
                        until_ms: v.admitted_until_ms,
                        lottery_won: v.lottery_won,
                        units: 0,
                    }
                })
                .collect();
            let mut restored = WaitingLine::restore(&entries, true);
            let _ = restored.admit(0, 1, 1000, now, 0);
            for u in &users {
                prop_assert_eq!(restored.view(u), line.view(u));
            }
            prop_assert_eq!(restored.stats().waiting, line.stats().waiting);
            prop_assert_eq!(restored.stats().outstanding, line.stats().outstanding);
            // Both admit the same next buyers.
            let a: Vec<String> = line.admit(5, 1, 1000, now, 5).into_iter().map(|a| a.user_id).collect();
            let b: Vec<String> = restored.admit(5, 1, 1000, now, 5).into_iter().map(|a| a.user_id).collect();
            prop_assert_eq!(a, b);
        }

        #[test]
        fn inversions_match_the_quadratic_count(v in proptest::collection::vec(0u64..50, 0..60)) {
            let mut slow = 0;
            for i in 0..v.len() { for j in i+1..v.len() { if v[i] > v[j] { slow += 1; } } }
            prop_assert_eq!(fifo_inversions(&v), slow);
        }
    }
}
