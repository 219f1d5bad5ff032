//! Time as the domain sees it. Every decision that depends on "now" (is the sale live, has the
//! hold lapsed) takes a [`Timestamp`] from a [`Clock`], never from the OS directly, so tests and
//! simulations can move time by hand.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC. An integer so it stores the same in SQLite and
/// PostgreSQL and compares without surprises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Milliseconds since the epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// This instant moved by `secs` seconds (negative moves back); saturates instead of
    /// overflowing on absurd input.
    pub fn plus_secs(self, secs: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(secs.saturating_mul(1000)))
    }

    /// This instant moved by `ms` milliseconds.
    pub fn plus_millis(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// Whole seconds from `self` until `later`, rounded up, never negative: what a countdown shows.
    pub fn secs_until(self, later: Timestamp) -> i64 {
        let ms = later.0.saturating_sub(self.0);
        if ms <= 0 {
            0
        } else {
            (ms + 999) / 1000
        }
    }
}

/// Where "now" comes from. The real clock lives at the edge (the binary); tests use
/// [`ManualClock`].
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// A clock that only moves when told to: expiry and scheduling tests without sleeping.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now_ms: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self {
            now_ms: Arc::new(AtomicI64::new(start.0)),
        }
    }

    /// Moves time forward (or back, for clock-jump tests) by `ms` milliseconds.
    pub fn advance_millis(&self, ms: i64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets time to an absolute instant.
    pub fn set(&self, at: Timestamp) {
        self.now_ms.store(at.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now_ms.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countdown_rounds_up_and_never_goes_negative() {
        let t = Timestamp(1_000);
        assert_eq!(t.secs_until(Timestamp(1_001)), 1);
        assert_eq!(t.secs_until(Timestamp(3_000)), 2);
        assert_eq!(t.secs_until(Timestamp(0)), 0);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(Timestamp(5));
        assert_eq!(c.now(), Timestamp(5));
        c.advance_millis(10);
        assert_eq!(c.now(), Timestamp(15));
    }
}
