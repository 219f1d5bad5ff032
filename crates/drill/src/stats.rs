//! What the drill observed: an HDR histogram of latency per endpoint, a per-second timeline
//! (requests and latency percentiles), the outcome of every buyer, and the answers by status.
//!
//! Latency is in microseconds and, for the first request of a buyer, counted from the
//! buyer's *scheduled* arrival, not from when a connection became free: a server that stalls
//! cannot hide the queue it caused (no coordinated omission).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Highest latency recorded exactly (longer ones are clamped): 10 minutes, in µs.
const MAX_LATENCY_US: u64 = 600_000_000;

/// Two significant digits: enough for percentiles, small enough to keep one per second.
#[allow(clippy::expect_used)] // constant, valid bounds: this cannot fail
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).expect("valid histogram bounds")
}

/// One second of the drill.
#[derive(Debug, Clone)]
pub struct Second {
    pub requests: u64,
    pub latency_us: Histogram<u64>,
}

/// One reading of the sale's stock from the admin API.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StockSample {
    pub at_secs: f64,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
}

/// A queue joiner seen admitted: when its join was sent and answered, and when the drill first
/// saw it admitted (all from T-0). A join answered before another was sent is surely ahead of
/// it in line, whatever the positions (which are relative to the moment) say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Admission {
    pub join_sent: Duration,
    pub join_answered: Duration,
    pub admitted_after: Duration,
}

#[derive(Debug, Default)]
struct Inner {
    endpoints: BTreeMap<&'static str, Histogram<u64>>,
    statuses: BTreeMap<(&'static str, u16), u64>,
    seconds: Vec<Second>,
    outcomes: BTreeMap<&'static str, u64>,
    stock: Vec<StockSample>,
    admissions: Vec<Admission>,
    queue_unavailable: u64,
    acked_holds: u64,
    acked_confirmed_orders: u64,
    units_demanded: u64,
}

/// Everything recorded during a drill, shared by every buyer task.
#[derive(Debug)]
pub struct Stats {
    start: Instant,
    inner: Mutex<Inner>,
}

/// A finished drill's observations, owned.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub endpoints: BTreeMap<&'static str, Histogram<u64>>,
    /// (endpoint, HTTP status or 0 for a transport error) → answers.
    pub statuses: BTreeMap<(&'static str, u16), u64>,
    pub seconds: Vec<Second>,
    pub outcomes: BTreeMap<&'static str, u64>,
    pub stock: Vec<StockSample>,
    pub admissions: Vec<Admission>,
    pub queue_unavailable: u64,
    /// Reservations the server acknowledged (201): each must exist in the store.
    pub acked_holds: u64,
    /// Orders the server acknowledged as confirmed: each must be confirmed in the store.
    pub acked_confirmed_orders: u64,
    /// Units buyers asked for (one per buyer who tried to reserve).
    pub units_demanded: u64,
}

impl Stats {
    /// Starts the clock of the drill: T-0 is `start`.
    pub fn new(start: Instant) -> Self {
        Stats {
            start,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// T-0 of the drill.
    pub fn start(&self) -> Instant {
        self.start
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// One answered (or failed) request: `from` is when it should have started.
    pub fn request(&self, endpoint: &'static str, status: u16, from: Instant) {
        let now = Instant::now();
        let us = u64::try_from(now.saturating_duration_since(from).as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let second = usize::try_from(now.saturating_duration_since(self.start).as_secs())
            .unwrap_or(usize::MAX);
        self.with(|s| {
            s.endpoints
                .entry(endpoint)
                .or_insert_with(histogram)
                .saturating_record(us);
            *s.statuses.entry((endpoint, status)).or_default() += 1;
            if second < 100_000 {
                while s.seconds.len() <= second {
                    s.seconds.push(Second {
                        requests: 0,
                        latency_us: histogram(),
                    });
                }
                if let Some(sec) = s.seconds.get_mut(second) {
                    sec.requests += 1;
                    sec.latency_us.saturating_record(us);
                }
            }
        });
    }

    /// How a buyer's visit ended.
    pub fn outcome(&self, outcome: &'static str) {
        self.with(|s| *s.outcomes.entry(outcome).or_default() += 1);
    }

    pub fn stock(&self, available: i64, held: i64, sold: i64) {
        let at_secs = self.start.elapsed().as_secs_f64();
        self.with(|s| {
            s.stock.push(StockSample {
                at_secs,
                available,
                held,
                sold,
            })
        });
    }

    /// A queue joiner admitted (first come, first served: not a lottery win).
    pub fn admitted(&self, join_sent: Instant, join_answered: Instant) {
        let admitted_after = self.start.elapsed();
        let join_sent = join_sent.saturating_duration_since(self.start);
        let join_answered = join_answered.saturating_duration_since(self.start);
        self.with(|s| {
            s.admissions.push(Admission {
                join_sent,
                join_answered,
                admitted_after,
            })
        });
    }

    pub fn queue_unavailable(&self) {
        self.with(|s| s.queue_unavailable += 1);
    }

    pub fn acked_hold(&self) {
        self.with(|s| s.acked_holds += 1);
    }

    pub fn acked_confirmed_order(&self) {
        self.with(|s| s.acked_confirmed_orders += 1);
    }

    pub fn demanded(&self, units: u64) {
        self.with(|s| s.units_demanded += units);
    }

    /// A copy of everything so far.
    pub fn summary(&self) -> Summary {
        self.with(|s| Summary {
            endpoints: s.endpoints.clone(),
            statuses: s.statuses.clone(),
            seconds: s.seconds.clone(),
            outcomes: s.outcomes.clone(),
            stock: s.stock.clone(),
            admissions: s.admissions.clone(),
            queue_unavailable: s.queue_unavailable,
            acked_holds: s.acked_holds,
            acked_confirmed_orders: s.acked_confirmed_orders,
            units_demanded: s.units_demanded,
        })
    }
}

impl Summary {
    /// Requests answered in all.
    pub fn requests(&self) -> u64 {
        self.endpoints.values().map(|h| h.len()).sum()
    }
}
