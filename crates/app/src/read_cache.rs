//! Read-through cache for the hottest reads (sale list and detail: every viewer refreshes).
//!
//! * **Single flight.** When an entry has expired, the first reader loads it and every other
//!   reader of the same key waits for that one load: a thousand viewers refreshing at the same
//!   instant cost one store read per node, not a thousand.
//! * **Probabilistic early expiry** ("XFetch", Vattani et al.): shortly before expiry a reader
//!   may, with a probability that grows as expiry nears and with the load's own cost, refresh
//!   early while everybody else keeps reading the current value, so the entry is usually
//!   renewed before anybody has to wait.
//! * **Bounded lag.** An entry is never served past its time to live, so what viewers see lags
//!   the judge by at most that (default 1 s). The reserve path never reads this cache.
//!
//! Time comes from the application's [`Clock`](stampede_core::Clock), so tests can freeze it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use stampede_core::Timestamp;

/// A loaded value and when it was loaded.
struct Cached<V> {
    value: V,
    loaded_at: Timestamp,
    /// How long the load took (ms, at least 1): the early-expiry scale.
    cost_ms: i64,
}

/// One key's current value and the lock its refreshers take.
struct Slot<V> {
    current: RwLock<Option<Arc<Cached<V>>>>,
    refresh: tokio::sync::Mutex<()>,
}

impl<V> Default for Slot<V> {
    fn default() -> Self {
        Slot {
            current: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }
}

/// Most keys kept at once: past it, entries that are no longer fresh are dropped (a flood of
/// made-up sale ids cannot grow the cache without bound).
const MAX_KEYS: usize = 50_000;

/// A read-through cache of `V` by string key, with single-flight refresh and early expiry.
pub struct ReadThrough<V> {
    ttl_ms: i64,
    slots: DashMap<String, Arc<Slot<V>>>,
    /// Loads performed (store reads), for the metric and for tests.
    loads: AtomicU64,
    name: &'static str,
}

impl<V: Clone + Send + Sync + 'static> ReadThrough<V> {
    /// `ttl_ms` 0 turns caching off (every read loads, concurrent reads still share one load).
    pub fn new(name: &'static str, ttl_ms: i64) -> Self {
        ReadThrough {
            ttl_ms: ttl_ms.max(0),
            slots: DashMap::new(),
            loads: AtomicU64::new(0),
            name,
        }
    }

    /// How many times a value was loaded from the store.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Forgets a key (its source changed on this node): the next reader loads it.
    pub fn invalidate(&self, key: &str) {
        if let Some(slot) = self.slots.get(key) {
            if let Ok(mut current) = slot.current.write() {
                *current = None;
            }
        }
    }

    /// Forgets every key.
    pub fn clear(&self) {
        self.slots.clear();
    }

    fn fresh(&self, cached: &Cached<V>, now: Timestamp) -> bool {
        now.0 < cached.loaded_at.0.saturating_add(self.ttl_ms)
    }

    /// Whether this reader should refresh a still-fresh entry early: true with probability
    /// rising towards expiry, scaled by how long a load takes.
    fn refresh_early(&self, cached: &Cached<V>, now: Timestamp) -> bool {
        let expiry = cached.loaded_at.0.saturating_add(self.ttl_ms);
        let u: f64 = rand::random::<f64>().max(f64::MIN_POSITIVE);
        let head_start = (cached.cost_ms as f64) * -u.ln();
        (now.0 as f64) + head_start >= expiry as f64
    }

    fn current(slot: &Slot<V>) -> Option<Arc<Cached<V>>> {
        slot.current.read().ok().and_then(|c| c.clone())
    }

    /// The value of `key` at `now`: cached if fresh, else loaded once by `load` for everybody
    /// waiting on it. A failed load is returned to the readers that waited for it and cached
    /// for nobody.
    pub async fn get<E, F, Fut>(&self, key: &str, now: Timestamp, load: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let slot = self.slots.entry(key.to_owned()).or_default().clone();
        if let Some(cached) = Self::current(&slot) {
            if self.fresh(&cached, now) {
                if !self.refresh_early(&cached, now) {
                    return Ok(cached.value.clone());
                }
                // Early: refresh only if nobody else is; everybody else reads the current value.
                let Ok(_refreshing) = slot.refresh.try_lock() else {
                    return Ok(cached.value.clone());
                };
                return self.load_into(&slot, now, load).await;
            }
        }
        let _refreshing = slot.refresh.lock().await;
        // Whoever held the lock may have loaded it for us.
        if let Some(cached) = Self::current(&slot) {
            if self.fresh(&cached, now) {
                return Ok(cached.value.clone());
            }
        }
        self.load_into(&slot, now, load).await
    }

    async fn load_into<E, F, Fut>(&self, slot: &Slot<V>, now: Timestamp, load: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let started = std::time::Instant::now();
        self.loads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("stampede_read_cache_loads_total", "cache" => self.name).increment(1);
        let value = load().await?;
        let cost_ms = i64::try_from(started.elapsed().as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        if let Ok(mut current) = slot.current.write() {
            *current = Some(Arc::new(Cached {
                value: value.clone(),
                loaded_at: now,
                cost_ms,
            }));
        }
        if self.slots.len() > MAX_KEYS {
            self.prune(now);
        }
        Ok(value)
    }

    /// Drops every entry that is no longer fresh, or everything if all of them still are.
    /// Readers holding a dropped slot finish with it; the next reader starts a new one.
    fn prune(&self, now: Timestamp) {
        self.slots
            .retain(|_, slot| Self::current(slot).is_some_and(|c| self.fresh(&c, now)));
        if self.slots.len() > MAX_KEYS {
            self.slots.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_fresh_entry_is_served_without_loading_and_an_expired_one_is_loaded_once() {
        let cache: ReadThrough<u32> = ReadThrough::new("t", 1000);
        let t0 = Timestamp(1_000_000);
        let v = cache
            .get("k", t0, || async { Ok::<_, ()>(1) })
            .await
            .unwrap();
        assert_eq!((v, cache.loads()), (1, 1));
        // Well before expiry (cost 1 ms, so no early refresh 500 ms ahead).
        let v = cache
            .get("k", Timestamp(t0.0 + 500), || async { Ok::<_, ()>(2) })
            .await
            .unwrap();
        assert_eq!((v, cache.loads()), (1, 1));
        let v = cache
            .get("k", Timestamp(t0.0 + 1000), || async { Ok::<_, ()>(3) })
            .await
            .unwrap();
        assert_eq!((v, cache.loads()), (3, 2));
        cache.invalidate("k");
        let v = cache
            .get("k", Timestamp(t0.0 + 1001), || async { Ok::<_, ()>(4) })
            .await
            .unwrap();
        assert_eq!((v, cache.loads()), (4, 3));
    }

    #[tokio::test]
    async fn a_flood_of_distinct_keys_stays_bounded() {
        let cache: ReadThrough<Option<u32>> = ReadThrough::new("t", 1000);
        for i in 0..(MAX_KEYS + 10) {
            let at = Timestamp(i64::try_from(i).unwrap() * 2);
            cache
                .get(&format!("made-up-{i}"), at, || async { Ok::<_, ()>(None) })
                .await
                .unwrap();
        }
        assert!(
            cache.slots.len() <= MAX_KEYS,
            "{} keys kept",
            cache.slots.len()
        );
    }

    #[tokio::test]
    async fn a_failed_load_is_not_cached() {
        let cache: ReadThrough<u32> = ReadThrough::new("t", 1000);
        let t0 = Timestamp(0);
        assert!(cache
            .get("k", t0, || async { Err::<u32, _>("down") })
            .await
            .is_err());
        assert_eq!(
            cache.get("k", t0, || async { Ok::<_, &str>(7) }).await,
            Ok(7)
        );
    }
}
