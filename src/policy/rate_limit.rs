//! Per-route rate limits: GCRA (a token bucket without a refill task) per key, via `governor`.
//!
//! `requests_per_second` is the sustained rate; `burst` extra requests may come at once
//! (nginx `limit_req burst=N nodelay`: a fresh client gets `burst + 1` immediately). State is
//! one concurrent map per route, shared by every worker thread, so the limit holds per
//! process. Keys are stored as 64-bit keyed hashes (16 bytes of state per tracked client), and
//! keys idle long enough to be indistinguishable from fresh ones are evicted periodically.

use ahash::RandomState;
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter as Gcra};
use http::HeaderName;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

/// What requests are counted together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    ClientIp,
    Header(HeaderName),
    /// One bucket for the whole route.
    Route,
}

/// The typed configuration of one limit.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: u32,
    pub key: RateKey,
}

impl RateLimit {
    /// Whole requests a client may make in one burst.
    pub fn capacity(&self) -> u32 {
        self.burst.saturating_add(1)
    }

    fn quota(&self) -> Option<Quota> {
        let period = Duration::try_from_secs_f64(1.0 / self.requests_per_second).ok()?;
        Some(Quota::with_period(period)?.allow_burst(NonZeroU32::new(self.capacity())?))
    }
}

/// Keys are already keyed hashes: the map need not hash them again.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Keyed = Gcra<
    u64,
    governor::state::keyed::DashMapStateStore<u64, BuildHasherDefault<IdentityHasher>>,
    DefaultClock,
    governor::middleware::NoOpMiddleware<<DefaultClock as Clock>::Instant>,
>;

/// The live limiter of one route.
pub struct RateLimiter {
    pub config: RateLimit,
    gcra: Keyed,
    seed: RandomState,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One clock for every limiter: making a clock calibrates the TSC, which cost about 0.2 ms per
/// route (2 s of a 10,000-route configuration's compile time).
fn shared_clock() -> DefaultClock {
    static CLOCK: std::sync::OnceLock<DefaultClock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(DefaultClock::default).clone()
}

impl RateLimiter {
    /// Build a limiter; `None` when the rate cannot be represented (validated at compile).
    pub fn new(config: RateLimit) -> Option<Self> {
        let quota = config.quota()?;
        let clock = shared_clock();
        let gcra = Gcra::dashmap_with_clock_and_hasher(
            quota,
            clock.clone(),
            BuildHasherDefault::default(),
        );
        Some(RateLimiter {
            config,
            gcra,
            seed: RandomState::new(),
            clock,
        })
    }

    /// Count one request for `key`: `Err(wait)` when it is over the limit.
    pub fn check_bytes(&self, key: &[u8]) -> Result<(), Duration> {
        self.check_hash(self.seed.hash_one(key))
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check_hash(self.seed.hash_one(ip.to_canonical()))
    }

    fn check_hash(&self, h: u64) -> Result<(), Duration> {
        self.gcra
            .check_key(&h)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Drop keys whose bucket is full again, and give the memory back.
    pub fn evict_idle(&self) {
        self.gcra.retain_recent();
        self.gcra.shrink_to_fit();
    }

    /// Keys currently tracked.
    pub fn tracked(&self) -> usize {
        self.gcra.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rps: f64, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimit {
            requests_per_second: rps,
            burst,
            key: RateKey::ClientIp,
        })
        .unwrap()
    }

    #[test]
    fn burst_plus_one_then_denied_with_a_wait() {
        let l = limiter(1.0, 4);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for i in 0..5 {
            assert!(l.check_ip(ip).is_ok(), "request {i}");
        }
        let wait = l.check_ip(ip).unwrap_err();
        assert!(
            wait > Duration::from_millis(500) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another client is not affected.
        assert!(l.check_ip("10.0.0.2".parse().unwrap()).is_ok());
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn tokens_come_back_at_the_sustained_rate() {
        let l = limiter(1000.0, 0);
        assert!(l.check_bytes(b"k").is_ok());
        assert!(l.check_bytes(b"k").is_err());
        std::thread::sleep(Duration::from_millis(3));
        assert!(l.check_bytes(b"k").is_ok());
    }

    #[test]
    fn idle_keys_are_evicted() {
        let l = limiter(1000.0, 0);
        for i in 0..100u32 {
            let _ = l.check_bytes(&i.to_be_bytes());
        }
        assert_eq!(l.tracked(), 100);
        std::thread::sleep(Duration::from_millis(5));
        l.evict_idle();
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn mapped_ipv6_shares_the_ipv4_bucket() {
        let l = limiter(1.0, 0);
        assert!(l.check_ip("1.2.3.4".parse().unwrap()).is_ok());
        assert!(l.check_ip("::ffff:1.2.3.4".parse().unwrap()).is_err());
    }
}
