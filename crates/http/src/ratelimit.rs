//! Request rate limits per client IP and per user (GCRA, via `governor`). The defaults stop one
//! client flooding a route but let many buyers behind one address (an office, a carrier NAT, a
//! load test on loopback) through at a normal pace. Key memory is bounded: idle keys are
//! dropped by [`RateLimits::forget_idle`], which the server calls periodically.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Limits in requests per second (bursts of twice that are allowed).
#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    pub per_user_per_sec: u32,
    pub per_ip_per_sec: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_user_per_sec: 20,
            per_ip_per_sec: 2000,
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
    /// Which key: "ip" or "user".
    pub scope: &'static str,
}

/// The keyed limiters.
pub struct RateLimits {
    per_user: DefaultKeyedRateLimiter<String>,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    config: RateLimitConfig,
}

fn quota(per_sec: u32) -> Quota {
    let rate = NonZeroU32::new(per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(per_sec.max(1).saturating_mul(2)).unwrap_or(rate);
    Quota::per_second(rate).allow_burst(burst)
}

impl RateLimits {
    /// Limiters with these quotas.
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            per_user: RateLimiter::keyed(quota(config.per_user_per_sec)),
            per_ip: RateLimiter::keyed(quota(config.per_ip_per_sec)),
            config,
        }
    }

    /// The configured quotas.
    pub fn config(&self) -> RateLimitConfig {
        self.config
    }

    /// Counts one request from `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        self.per_ip.check_key(&ip).map_err(|not_until| Refused {
            retry_after_secs: secs(not_until.wait_time_from(DefaultClock::default().now())),
            limit: self.config.per_ip_per_sec,
            scope: "ip",
        })
    }

    /// Counts one request by `user`.
    pub fn check_user(&self, user: &str) -> Result<(), Refused> {
        self.per_user
            .check_key(&user.to_owned())
            .map_err(|not_until| Refused {
                retry_after_secs: secs(not_until.wait_time_from(DefaultClock::default().now())),
                limit: self.config.per_user_per_sec,
                scope: "user",
            })
    }

    /// Drops keys that have been idle long enough to be full again: bounds memory under a
    /// flood of distinct keys.
    pub fn forget_idle(&self) {
        self.per_user.retain_recent();
        self.per_ip.retain_recent();
        self.per_user.shrink_to_fit();
        self.per_ip.shrink_to_fit();
    }

    /// Keys currently tracked (for metrics).
    pub fn tracked_keys(&self) -> usize {
        self.per_user.len() + self.per_ip.len()
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_from_one_key_is_refused_others_pass() {
        let limits = RateLimits::new(RateLimitConfig {
            per_user_per_sec: 5,
            per_ip_per_sec: 5,
        });
        let passed = (0..50).filter(|_| limits.check_user("u1").is_ok()).count();
        assert!(
            (10..=11).contains(&passed),
            "burst of 2x rate, got {passed}"
        );
        let refused = limits.check_user("u1").unwrap_err();
        assert!(refused.retry_after_secs >= 1);
        assert!(limits.check_user("u2").is_ok());
    }
}
