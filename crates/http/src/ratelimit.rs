//! Request rate limits (GCRA, via `governor`) per client IP, per user, per device and, stricter,
//! per user at checkout. The defaults stop one client flooding a route but let many buyers
//! behind one address (an office, a carrier NAT, a load test on loopback) through at a normal
//! pace. A key may spend a burst of `burst_factor` × its rate at once, then the rate.
//!
//! Memory is bounded: each limiter tracks at most `max_keys` keys. Idle keys (whose bucket is
//! full again) are dropped periodically ([`RateLimits::forget_idle`]) and at once when a
//! limiter is full; if a flood of a million distinct keys still fills it, newcomers share one
//! overflow bucket per limiter (so the flood is limited as one client) until keys go idle.
//!
//! In a cluster the per-user, per-device and checkout limits are also counted in Redis
//! ([`SharedRateLimiter`]), after the node's own check: several nodes then give a client one
//! quota, not one each. If the shared limiter cannot be reached the request is let through
//! (and counted): the node's own limit still holds, and the gate behind it has its own deadline.

use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use stampede_app::ports::SharedRateLimiter;

/// Limits in requests per second per key.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    pub per_user_per_sec: u32,
    pub per_ip_per_sec: u32,
    /// Per `X-Device-Id` (when the client sends one).
    pub per_device_per_sec: u32,
    /// Placing orders (each may move money): per user, on top of the user limit.
    pub checkout_per_user_per_sec: u32,
    /// A key may send this many seconds' worth of requests at once.
    pub burst_factor: u32,
    /// Most keys one limiter tracks.
    pub max_keys: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_user_per_sec: 20,
            per_ip_per_sec: 2000,
            per_device_per_sec: 20,
            checkout_per_user_per_sec: 2,
            burst_factor: 2,
            max_keys: 200_000,
        }
    }
}

/// What a refused request is told.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    /// Whole seconds until a request would pass (at least 1).
    pub retry_after_secs: u64,
    /// The quota that refused: requests per second.
    pub limit: u32,
    /// Requests the key may send at once.
    pub burst: u32,
    /// Which key: "ip", "user", "device" or "checkout".
    pub scope: &'static str,
}

/// A keyed limiter whose map hashes with foldhash (seeded per process, so no client can aim
/// its keys at one shard): SipHash was a tenth of a refused request's instructions.
type KeyedLimiter<K> = RateLimiter<
    K,
    DashMapStateStore<K, foldhash::fast::RandomState>,
    DefaultClock,
    NoOpMiddleware<<DefaultClock as Clock>::Instant>,
>;

/// Checks between two countings of a limiter's keys while far from its bound: counting them
/// reads every shard of the map, too dear to do on every request. Each check adds one key at
/// most, so counting on every check once within this many of the bound keeps the bound exact.
const COUNT_KEYS_EVERY: usize = 256;

/// One keyed limiter with its memory bound.
struct Limiter<K: Hash + Eq + Clone> {
    keys: KeyedLimiter<K>,
    /// Keys in the map when last counted.
    counted: AtomicUsize,
    /// Checks since the keys were last counted.
    since_count: AtomicUsize,
    per_sec: u32,
    burst: u32,
    scope: &'static str,
    max_keys: usize,
    overflow: K,
    /// When the limiter last pruned itself because it was full (ms since `epoch`).
    last_prune_ms: AtomicU64,
    epoch: Instant,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    fn new(
        per_sec: u32,
        burst_factor: u32,
        scope: &'static str,
        max_keys: usize,
        overflow: K,
    ) -> Self {
        let rate = NonZeroU32::new(per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst_n = per_sec.max(1).saturating_mul(burst_factor.max(1));
        let burst = NonZeroU32::new(burst_n).unwrap_or(rate);
        Self {
            keys: RateLimiter::dashmap_with_hasher(
                Quota::per_second(rate).allow_burst(burst),
                foldhash::fast::RandomState::default(),
            ),
            counted: AtomicUsize::new(0),
            since_count: AtomicUsize::new(0),
            per_sec: per_sec.max(1),
            burst: burst.get(),
            scope,
            max_keys: max_keys.max(1),
            overflow,
            last_prune_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn check(&self, key: &K) -> Result<(), Refused> {
        let mut key = key;
        let near_bound = self.counted.load(Ordering::Relaxed) + COUNT_KEYS_EVERY >= self.max_keys;
        if near_bound || self.since_count.fetch_add(1, Ordering::Relaxed) >= COUNT_KEYS_EVERY {
            self.since_count.store(0, Ordering::Relaxed);
            self.counted.store(self.keys.len(), Ordering::Relaxed);
        }
        if self.counted.load(Ordering::Relaxed) >= self.max_keys {
            let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            let last = self.last_prune_ms.load(Ordering::Relaxed);
            if now_ms.saturating_sub(last) >= 100
                && self
                    .last_prune_ms
                    .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.keys.retain_recent();
            }
            if self.keys.len() >= self.max_keys {
                metrics::counter!("stampede_rate_limit_overflow_total", "scope" => self.scope)
                    .increment(1);
                key = &self.overflow;
            }
        }
        self.keys.check_key(key).map_err(|not_until| Refused {
            retry_after_secs: secs(not_until.wait_time_from(DefaultClock::default().now())),
            limit: self.per_sec,
            burst: self.burst,
            scope: self.scope,
        })
    }

    fn forget_idle(&self) {
        self.keys.retain_recent();
        self.keys.shrink_to_fit();
    }
}

/// The keyed limiters. Users and devices are keyed by a keyed hash of their id (64 bits, with a
/// key random per process so no client can aim at another's bucket): counting a request
/// allocates nothing.
pub struct RateLimits {
    per_user: Limiter<u64>,
    per_ip: Limiter<IpAddr>,
    per_device: Limiter<u64>,
    checkout: Limiter<u64>,
    hasher: std::collections::hash_map::RandomState,
    shared: Option<Arc<dyn SharedRateLimiter>>,
    /// After the shared limiter fails, it is skipped until then (ms since `epoch`): an
    /// outage of Redis must not add its deadline to every request.
    shared_down_until_ms: AtomicU64,
    epoch: Instant,
    config: RateLimitConfig,
}

impl RateLimits {
    /// Limiters with these quotas.
    pub fn new(config: RateLimitConfig) -> Self {
        let b = config.burst_factor;
        let max = config.max_keys;
        let overflow = || u64::MAX;
        Self {
            per_user: Limiter::new(config.per_user_per_sec, b, "user", max, overflow()),
            per_ip: Limiter::new(
                config.per_ip_per_sec,
                b,
                "ip",
                max,
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            ),
            per_device: Limiter::new(config.per_device_per_sec, b, "device", max, overflow()),
            checkout: Limiter::new(
                config.checkout_per_user_per_sec,
                b,
                "checkout",
                max,
                overflow(),
            ),
            hasher: std::collections::hash_map::RandomState::new(),
            shared: None,
            shared_down_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            config,
        }
    }

    /// Also counts the per-user, per-device and checkout limits in `shared`, across nodes.
    pub fn with_shared(mut self, shared: Arc<dyn SharedRateLimiter>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// The shared count for `key` after a local pass.
    async fn shared_check<K: Hash + Eq + Clone>(
        &self,
        limiter: &Limiter<K>,
        key: &str,
    ) -> Result<(), Refused> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        if now_ms < self.shared_down_until_ms.load(Ordering::Relaxed) {
            return Ok(());
        }
        match shared
            .check(
                &format!("{}:{key}", limiter.scope),
                limiter.per_sec,
                limiter.burst,
            )
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(wait_ms)) => Err(Refused {
                retry_after_secs: wait_ms.div_ceil(1000).max(1),
                limit: limiter.per_sec,
                burst: limiter.burst,
                scope: limiter.scope,
            }),
            Err(e) => {
                self.shared_down_until_ms
                    .store(now_ms.saturating_add(1000), Ordering::Relaxed);
                metrics::counter!("stampede_shared_rate_limit_errors_total").increment(1);
                tracing::debug!(error = %e, "shared rate limit unreachable: letting through");
                Ok(())
            }
        }
    }

    /// Counts one request by `user`, on this node and (in a cluster) across nodes.
    pub async fn check_user_everywhere(&self, user: &str) -> Result<(), Refused> {
        self.check_user(user)?;
        self.shared_check(&self.per_user, user).await
    }

    /// Counts one request from `device`, on this node and across nodes.
    pub async fn check_device_everywhere(&self, device: &str) -> Result<(), Refused> {
        self.check_device(device)?;
        self.shared_check(&self.per_device, device).await
    }

    /// Counts one checkout by `user`, on this node and across nodes.
    pub async fn check_checkout_everywhere(&self, user: &str) -> Result<(), Refused> {
        self.check_checkout(user)?;
        self.shared_check(&self.checkout, user).await
    }

    /// The configured quotas.
    pub fn config(&self) -> RateLimitConfig {
        self.config
    }

    /// Counts one request from `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        self.per_ip.check(&ip)
    }

    /// Counts one request by `user`.
    pub fn check_user(&self, user: &str) -> Result<(), Refused> {
        self.per_user.check(&self.key(user))
    }

    /// Counts one request from `device` (the client's `X-Device-Id`).
    pub fn check_device(&self, device: &str) -> Result<(), Refused> {
        self.per_device.check(&self.key(device))
    }

    /// Counts one checkout by `user`.
    pub fn check_checkout(&self, user: &str) -> Result<(), Refused> {
        self.checkout.check(&self.key(user))
    }

    fn key(&self, id: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(id)
    }

    /// Drops keys that have been idle long enough to be full again.
    pub fn forget_idle(&self) {
        self.per_user.forget_idle();
        self.per_ip.forget_idle();
        self.per_device.forget_idle();
        self.checkout.forget_idle();
    }

    /// Keys currently tracked (for metrics).
    pub fn tracked_keys(&self) -> usize {
        self.per_user.keys.len()
            + self.per_ip.keys.len()
            + self.per_device.keys.len()
            + self.checkout.keys.len()
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_sec: u32) -> RateLimits {
        RateLimits::new(RateLimitConfig {
            per_user_per_sec: per_sec,
            per_ip_per_sec: per_sec,
            per_device_per_sec: per_sec,
            checkout_per_user_per_sec: 1,
            burst_factor: 2,
            max_keys: 1000,
        })
    }

    #[test]
    fn a_flood_from_one_key_is_refused_others_pass() {
        let limits = limits(5);
        let passed = (0..50).filter(|_| limits.check_user("u1").is_ok()).count();
        assert!(
            (10..=11).contains(&passed),
            "burst of 2x rate, got {passed}"
        );
        let refused = limits.check_user("u1").unwrap_err();
        assert!(refused.retry_after_secs >= 1);
        assert_eq!(
            (refused.limit, refused.burst, refused.scope),
            (5, 10, "user")
        );
        assert!(limits.check_user("u2").is_ok());
        assert!(limits.check_device("d1").is_ok());
    }

    #[test]
    fn checkout_is_stricter_than_the_user_limit() {
        let limits = limits(50);
        let passed = (0..20)
            .filter(|_| limits.check_checkout("u1").is_ok())
            .count();
        assert!(passed <= 3, "checkout burst is 2, got {passed}");
    }

    #[test]
    fn a_million_distinct_keys_stay_within_the_bound() {
        let limits = limits(5);
        for i in 0..1_000_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ = limits.check_ip(ip);
        }
        // Whether idle keys were pruned along the way (a slow machine) or newcomers went to
        // the overflow bucket (a fast one), the limiter never tracks more than its bound.
        assert!(
            limits.per_ip.keys.len() <= 1001,
            "tracked {} keys",
            limits.per_ip.keys.len()
        );
    }

    #[test]
    fn newcomers_to_a_full_limiter_share_one_bucket() {
        // One request a second: no key's bucket is full again (prunable) for a second, far
        // longer than this test takes.
        let limits = limits(1);
        for i in 0..1000u32 {
            assert!(limits.check_ip(IpAddr::from(i.to_be_bytes())).is_ok());
        }
        let late = (0..100u8)
            .filter(|i| limits.check_ip(IpAddr::from([10, 0, 1, *i])).is_ok())
            .count();
        assert!(late <= 2, "the overflow bucket's burst is 2, got {late}");
        assert!(limits.per_ip.keys.len() <= 1001);
    }
}
