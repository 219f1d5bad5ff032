//! What this node saw of the reserve path in the last few seconds, per sale: latency
//! percentiles and refusals by reason, for the admin dashboard's live stream.
//!
//! The judge's figures (stock, orders, expiries) come from the store and are the same on every
//! node; these do not: each node keeps its own small window of the reserve requests it
//! answered, in memory, and forgets it on restart. It is a picture for the people watching the
//! sale, not an accounting (Prometheus has `stampede_http_request_seconds` for that).
//!
//! Each sale has a window of its own behind its own short lock, found in a sharded map by the
//! borrowed sale id: a reserve allocates nothing and shares no process-wide lock.
//!
//! Bounded on purpose: at most [`MAX_SAMPLES`] latencies per sale (the newest win) and at most
//! [`MAX_SALES`] sales (a sale past that is not recorded), so a flood of requests or of made-up
//! sale ids cannot grow it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use dashmap::DashMap;
use std::time::{Duration, Instant};

/// How far back the latency percentiles look.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Latency samples kept per sale: enough for a stable p99, small enough to sort every second.
pub const MAX_SAMPLES: usize = 4096;
/// Sales tracked at once.
pub const MAX_SALES: usize = 1024;

#[derive(Default)]
struct SaleWindow {
    /// (when answered, latency in microseconds), oldest first.
    samples: VecDeque<(Instant, u32)>,
    /// Refused reserves since this node started, by problem code.
    refusals: BTreeMap<&'static str, u64>,
    /// Reserves answered 201 since this node started.
    accepted: u64,
}

/// The reserve path's recent latencies and refusals, per sale, on this node.
#[derive(Default)]
pub struct ReserveStats {
    sales: DashMap<Box<str>, Mutex<SaleWindow>>,
}

/// One look at a sale's window.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct ReserveSnapshot {
    /// Median reserve latency over the last [`WINDOW`], in milliseconds (0 without samples).
    pub p50_ms: f64,
    /// 99th percentile over the same window.
    pub p99_ms: f64,
    /// How many answers the percentiles are over.
    pub samples: u64,
    /// Reserves answered 201 by this node since it started.
    pub accepted: u64,
    /// Refused reserves by code (`sold_out`, `limit_exceeded`, `not_admitted`,
    /// `sale_not_live`, …) answered by this node since it started.
    pub refusals: BTreeMap<String, u64>,
}

impl ReserveStats {
    /// Records one answered reserve: `refused` is the problem code, `None` for a hold.
    pub fn record(&self, sale_id: &str, latency: Duration, refused: Option<&'static str>) {
        let now = Instant::now();
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        let add = |w: &mut SaleWindow| {
            if w.samples.len() >= MAX_SAMPLES {
                w.samples.pop_front();
            }
            w.samples.push_back((now, micros));
            match refused {
                None => w.accepted += 1,
                Some(code) => *w.refusals.entry(code).or_default() += 1,
            }
        };
        // The common case: a sale already tracked, found by the borrowed id.
        if let Some(window) = self.sales.get(sale_id) {
            if let Ok(mut w) = window.lock() {
                add(&mut w);
            }
            return;
        }
        if self.sales.len() >= MAX_SALES {
            return;
        }
        let window = self.sales.entry(sale_id.into()).or_default();
        let guard = window.lock();
        if let Ok(mut w) = guard {
            add(&mut w);
        }
    }

    /// The sale's percentiles over the last [`WINDOW`] and its counters.
    pub fn snapshot(&self, sale_id: &str) -> ReserveSnapshot {
        let Some(window) = self.sales.get(sale_id) else {
            return ReserveSnapshot::default();
        };
        let Ok(mut w) = window.lock() else {
            return ReserveSnapshot::default();
        };
        let now = Instant::now();
        while w
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW)
        {
            w.samples.pop_front();
        }
        let mut micros: Vec<u32> = w.samples.iter().map(|(_, m)| *m).collect();
        let refusals = w
            .refusals
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        let accepted = w.accepted;
        drop(w);
        drop(window);
        micros.sort_unstable();
        ReserveSnapshot {
            p50_ms: percentile_ms(&micros, 50),
            p99_ms: percentile_ms(&micros, 99),
            samples: micros.len() as u64,
            accepted,
            refusals,
        }
    }
}

/// The `pct`th percentile (nearest rank) of sorted microseconds, in milliseconds.
fn percentile_ms(sorted_micros: &[u32], pct: usize) -> f64 {
    if sorted_micros.is_empty() {
        return 0.0;
    }
    let rank = (sorted_micros.len() * pct).div_ceil(100).max(1);
    let idx = rank.min(sorted_micros.len()) - 1;
    f64::from(sorted_micros[idx]) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_refusals() {
        let stats = ReserveStats::default();
        for ms in 1..=100u64 {
            stats.record("s", Duration::from_millis(ms), None);
        }
        stats.record("s", Duration::from_millis(1), Some("sold_out"));
        let snap = stats.snapshot("s");
        assert_eq!(snap.samples, 101);
        assert_eq!(snap.accepted, 100);
        assert_eq!(snap.refusals.get("sold_out"), Some(&1));
        assert!((snap.p50_ms - 50.0).abs() < 1.01, "{}", snap.p50_ms);
        assert!((snap.p99_ms - 99.0).abs() < 1.01, "{}", snap.p99_ms);
        assert_eq!(stats.snapshot("other"), ReserveSnapshot::default());
    }

    #[test]
    fn bounded() {
        let stats = ReserveStats::default();
        for i in 0..(MAX_SALES + 10) {
            stats.record(&format!("sale-{i}"), Duration::from_millis(1), None);
        }
        assert_eq!(stats.sales.len(), MAX_SALES);
        for _ in 0..(MAX_SAMPLES + 10) {
            stats.record("sale-0", Duration::from_millis(1), None);
        }
        assert_eq!(stats.snapshot("sale-0").samples, MAX_SAMPLES as u64);
    }
}
