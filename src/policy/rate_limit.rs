//! Per-route rate limits: GCRA (a token bucket without a refill task) per key.
//!
//! `requests_per_second` is the sustained rate; `burst` extra requests may come at once
//! (nginx `limit_req burst=N nodelay`: a fresh client gets `burst + 1` immediately). State is
//! one table per route, shared by every worker thread, so the limit holds per process.
//!
//! The table is our own rather than `governor`'s keyed store (a DashMap): a check over a
//! million tracked clients is a random memory access, and the cost is the cache and TLB
//! misses on the way to the key's state. Here a key is a 64-bit keyed hash stored inline with
//! its theoretical arrival time (16 bytes, one cache line touched), in 64 open-addressing
//! shards behind uncontended mutexes. Keys whose bucket is full again are indistinguishable
//! from fresh ones and are evicted periodically, which also shrinks the tables.
//!
//! The caller says when the request arrived instead of the limiter reading the clock: the
//! proxy has read it once per request already (`Ctx::started`, for the access log and the
//! duration metrics), and a second read next to the table's cache miss cost more than the
//! whole lookup on this VM (1,000,000 keys: 186 ns with a read of its own, see
//! `benches/policy.rs`). The arrival time is also the right time for GCRA: a request that
//! waited a few microseconds in the parser is counted when it came.

use ahash::RandomState;
use http::HeaderName;
use std::net::IpAddr;
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
}

/// The origin of the limiters' nanosecond timeline; set when the first limiter is built,
/// before any request can be counted.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// `at` in nanoseconds since `EPOCH`; never 0, so that a slot's zero `tat` always reads as
/// "long ago". A time from before the epoch counts as the epoch.
fn ns(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(*EPOCH).as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

const SHARDS: usize = 64;

/// A tracked key: its hash (0 = empty slot) and its theoretical arrival time.
#[derive(Clone, Copy, Default)]
struct Slot {
    key: u64,
    tat: u64,
}

/// Open addressing with linear probing; grows past 3/4 full.
#[derive(Default)]
struct Shard {
    slots: Vec<Slot>,
    len: usize,
}

impl Shard {
    fn slot(&mut self, key: u64) -> &mut Slot {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.resize((self.slots.len() * 2).max(8));
        }
        let mask = self.slots.len() - 1;
        let mut i = key as usize & mask;
        loop {
            let k = self.slots[i].key;
            if k == key {
                return &mut self.slots[i];
            }
            if k == 0 {
                self.len += 1;
                self.slots[i] = Slot { key, tat: 0 };
                return &mut self.slots[i];
            }
            i = (i + 1) & mask;
        }
    }

    /// Rebuild with `size` slots (a power of two), keeping the keys `keep` accepts.
    fn rebuild(&mut self, size: usize, keep: impl Fn(&Slot) -> bool) {
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); size]);
        self.len = 0;
        let mask = size - 1;
        for s in old.into_iter().filter(|s| s.key != 0 && keep(s)) {
            let mut i = s.key as usize & mask;
            while self.slots[i].key != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
            self.len += 1;
        }
    }

    fn resize(&mut self, size: usize) {
        self.rebuild(size, |_| true);
    }
}

/// The live limiter of one route.
pub struct RateLimiter {
    pub config: RateLimit,
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    /// How far ahead of now a key's arrival time may run: `burst` intervals.
    tolerance: u64,
    shards: Box<[Mutex<Shard>]>,
    seed: RandomState,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic while holding a shard cannot leave it inconsistent in a way that matters more
    // than losing the limit: keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RateLimiter {
    /// Build a limiter; `None` when the rate cannot be represented (validated at compile).
    pub fn new(config: RateLimit) -> Option<Self> {
        let rps = config.requests_per_second;
        if !(rps.is_finite() && rps > 0.0) {
            return None;
        }
        let interval = (1e9 / rps).round();
        if !(1.0..=u64::MAX as f64).contains(&interval) {
            return None;
        }
        let interval = interval as u64;
        let tolerance = interval.checked_mul(u64::from(config.burst))?;
        LazyLock::force(&EPOCH);
        Some(RateLimiter {
            config,
            interval,
            tolerance,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            seed: RandomState::new(),
        })
    }

    /// Count one request for `key` that arrived `at`: `Err(wait)` when it is over the limit.
    pub fn check_bytes(&self, key: &[u8], at: Instant) -> Result<(), Duration> {
        self.check_hash(self.seed.hash_one(key), at)
    }

    pub fn check_ip(&self, ip: IpAddr, at: Instant) -> Result<(), Duration> {
        // One 128-bit word per address; an IPv4 address and its IPv4-mapped IPv6 form are
        // the same client.
        let bits = match ip {
            IpAddr::V4(a) => a.to_ipv6_mapped(),
            IpAddr::V6(a) => a,
        };
        self.check_hash(self.seed.hash_one(bits.to_bits()), at)
    }

    fn check_hash(&self, h: u64, at: Instant) -> Result<(), Duration> {
        let key = h.max(1);
        let now = ns(at);
        // The top bits pick the shard, the low bits the slot.
        let mut shard = lock(&self.shards[(key >> 58) as usize % SHARDS]);
        let slot = shard.slot(key);
        let tat = slot.tat.max(now);
        let ahead = tat - now;
        if ahead > self.tolerance {
            return Err(Duration::from_nanos(ahead - self.tolerance));
        }
        slot.tat = tat.saturating_add(self.interval);
        Ok(())
    }

    /// Drop keys whose bucket is full again, and give the memory back.
    pub fn evict_idle(&self) {
        let now = ns(Instant::now());
        for m in self.shards.iter() {
            let mut shard = lock(m);
            let live = shard
                .slots
                .iter()
                .filter(|s| s.key != 0 && s.tat > now)
                .count();
            let size = if live == 0 {
                0
            } else {
                (live * 2).next_power_of_two().max(8)
            };
            if size == 0 {
                *shard = Shard::default();
            } else {
                shard.rebuild(size, |s| s.tat > now);
            }
        }
    }

    /// Keys currently tracked.
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|m| lock(m).len).sum()
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
            assert!(l.check_ip(ip, Instant::now()).is_ok(), "request {i}");
        }
        let wait = l.check_ip(ip, Instant::now()).unwrap_err();
        assert!(
            wait > Duration::from_millis(500) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another client is not affected.
        assert!(l
            .check_ip("10.0.0.2".parse().unwrap(), Instant::now())
            .is_ok());
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn tokens_come_back_at_the_sustained_rate() {
        let l = limiter(1000.0, 0);
        assert!(l.check_bytes(b"k", Instant::now()).is_ok());
        assert!(l.check_bytes(b"k", Instant::now()).is_err());
        std::thread::sleep(Duration::from_millis(3));
        assert!(l.check_bytes(b"k", Instant::now()).is_ok());
    }

    #[test]
    fn requests_are_counted_at_their_arrival_time() {
        let l = limiter(10.0, 1);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(l.check_bytes(b"k", t0).is_ok());
        assert!(l.check_bytes(b"k", t0).is_ok());
        assert_eq!(l.check_bytes(b"k", ms(40)), Err(Duration::from_millis(60)));
        // One interval (100 ms) after the first arrival one token is back, not two.
        assert!(l.check_bytes(b"k", ms(100)).is_ok());
        assert!(l.check_bytes(b"k", ms(100)).is_err());
        // A request that arrived earlier than one already counted (another thread was
        // faster) is judged against the later state: stricter, never looser.
        assert!(l.check_bytes(b"k", ms(90)).is_err());
        // Arrival times from before the limiters' epoch count as the epoch.
        let early = t0.checked_sub(Duration::from_secs(3600)).unwrap_or(t0);
        assert!(l.check_bytes(b"other", early).is_ok());
    }

    #[test]
    fn idle_keys_are_evicted() {
        let l = limiter(1000.0, 0);
        for i in 0..100u32 {
            let _ = l.check_bytes(&i.to_be_bytes(), Instant::now());
        }
        assert_eq!(l.tracked(), 100);
        std::thread::sleep(Duration::from_millis(5));
        l.evict_idle();
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn tables_grow_shrink_and_keep_every_key_apart() {
        let l = limiter(1.0, 1);
        for i in 0..10_000u32 {
            assert!(l.check_bytes(&i.to_be_bytes(), Instant::now()).is_ok());
        }
        assert_eq!(l.tracked(), 10_000);
        for i in 0..10_000u32 {
            assert!(
                l.check_bytes(&i.to_be_bytes(), Instant::now()).is_ok(),
                "second of {i}"
            );
            assert!(
                l.check_bytes(&i.to_be_bytes(), Instant::now()).is_err(),
                "third of {i}"
            );
        }
        // Nobody is idle yet: eviction keeps every key and its state.
        l.evict_idle();
        assert_eq!(l.tracked(), 10_000);
        assert!(l.check_bytes(&7u32.to_be_bytes(), Instant::now()).is_err());
    }

    #[test]
    fn unrepresentable_rates_are_refused() {
        for rps in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e12] {
            let limit = RateLimit {
                requests_per_second: rps,
                burst: 0,
                key: RateKey::Route,
            };
            assert!(RateLimiter::new(limit).is_none(), "{rps}");
        }
    }

    #[test]
    fn mapped_ipv6_shares_the_ipv4_bucket() {
        let l = limiter(1.0, 0);
        assert!(l
            .check_ip("1.2.3.4".parse().unwrap(), Instant::now())
            .is_ok());
        assert!(l
            .check_ip("::ffff:1.2.3.4".parse().unwrap(), Instant::now())
            .is_err());
    }
}
