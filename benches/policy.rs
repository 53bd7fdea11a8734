//! Policy hot paths: CIDR lookup in a 10,000-entry list, rate-limit checks for one hot key and
//! over 1,000,000 distinct keys (and the memory each tracked key costs), header edits,
//! rewrites and path normalisation. Run: `cargo bench --bench policy`.
//!
//! A rate-limit check is given the request's arrival time, which the proxy has read already
//! (`Ctx::started`); the benches pass a time that advances by 1 ns per check. The
//! `1M_keys_with_clock_read` line reads `Instant::now()` per check as well, for comparison
//! with a limiter that reads its own clock (that read is ordered: the CPU cannot start the
//! next check while one waits for memory). `1M_keys` measures checks back to back, where the
//! CPU overlaps one check's cache miss with the next; `1M_keys_one_at_a_time` does not let it,
//! which is closer to a proxy, where checks are thousands of instructions apart.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse::policy::access::CidrSet;
use gatehouse::policy::normalize::normalize;
use gatehouse::policy::{AccessList, HeaderEdits, RateKey, RateLimit, RateLimiter, Rewrite};
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use std::alloc::{GlobalAlloc, Layout};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Counts live heap bytes, to report the memory per tracked rate-limit key; allocates with
/// the gatehouse binary's allocator (mimalloc).
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Relaxed);
        unsafe { gatehouse::alloc::Allocator.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Relaxed);
        unsafe { gatehouse::alloc::Allocator.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Relaxed);
        unsafe { gatehouse::alloc::Allocator.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761)))
}

fn cidr(c: &mut Criterion) {
    // 10,000 scattered /24s and /32s, allow and deny.
    let nets = (0..10_000u32).map(|i| {
        let len = if i % 2 == 0 { 24 } else { 32 };
        ipnet::IpNet::new(ip(i), len).unwrap()
    });
    let set = CidrSet::new(nets);
    let acl = AccessList {
        allow: set.clone(),
        deny: CidrSet::new([ipnet::IpNet::new(ip(7), 32).unwrap()]),
    };
    let mut i = 0u32;
    c.bench_function("cidr/10k/lookup", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(acl.permits(black_box(ip(i % 20_000))))
        })
    });
}

fn limiter() -> RateLimiter {
    RateLimiter::new(RateLimit {
        requests_per_second: 1e6,
        burst: 100,
        key: RateKey::ClientIp,
    })
    .unwrap()
}

fn rate_limit(c: &mut Criterion) {
    let hot = limiter();
    let client: IpAddr = "203.0.113.9".parse().unwrap();
    let t0 = Instant::now();
    let mut tick = 0u64;
    let mut arrival = || {
        tick += 1;
        t0 + Duration::from_nanos(tick)
    };
    c.bench_function("rate_limit/hot_key", |b| {
        b.iter(|| black_box(hot.check_ip(black_box(client), arrival())))
    });

    let before = LIVE.load(Relaxed);
    let many = limiter();
    for i in 0..1_000_000u32 {
        let _ = many.check_ip(ip(i), arrival());
    }
    let bytes = LIVE.load(Relaxed) - before;
    println!(
        "rate_limit/1M_keys: {} keys tracked, {} bytes, {:.1} bytes per key",
        many.tracked(),
        bytes,
        bytes as f64 / many.tracked() as f64
    );
    let mut i = 0u32;
    c.bench_function("rate_limit/1M_keys", |b| {
        b.iter(|| {
            i = (i + 1) % 1_000_000;
            black_box(many.check_ip(ip(i), arrival()))
        })
    });
    // In the proxy, checks are thousands of instructions apart, so the cache miss of one never
    // overlaps the next; `lfence` keeps the CPU from starting the next check early.
    #[cfg(target_arch = "x86_64")]
    c.bench_function("rate_limit/1M_keys_one_at_a_time", |b| {
        b.iter(|| {
            i = (i + 1) % 1_000_000;
            let r = black_box(many.check_ip(ip(i), arrival()));
            // SAFETY: lfence is part of SSE2, which every x86_64 CPU has.
            unsafe { std::arch::x86_64::_mm_lfence() };
            r
        })
    });
    c.bench_function("rate_limit/1M_keys_with_clock_read", |b| {
        b.iter(|| {
            i = (i + 1) % 1_000_000;
            black_box(many.check_ip(ip(i), Instant::now()))
        })
    });
}

fn edits_and_rewrites(c: &mut Criterion) {
    let edits = HeaderEdits {
        remove: vec![HeaderName::from_static("x-secret")],
        set: vec![(
            HeaderName::from_static("x-env"),
            HeaderValue::from_static("prod"),
        )],
        add: vec![(
            HeaderName::from_static("x-tag"),
            HeaderValue::from_static("edge"),
        )],
    };
    let mut base = RequestHeader::build("GET", b"/api/v1/users?page=2", None).unwrap();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "bench"),
        ("x-secret", "s"),
        ("accept", "*/*"),
    ] {
        base.insert_header(k, v).unwrap();
    }
    c.bench_function("headers/edit_request", |b| {
        b.iter_batched(
            || base.clone(),
            |mut h| {
                edits.apply(&mut h);
                // Returned, so that dropping the header is not timed.
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let strip = Rewrite::StripPrefix("/api/v1".into());
    c.bench_function("rewrite/strip_prefix", |b| {
        b.iter(|| strip.apply(black_box("/api/v1/users/42")))
    });
    let re = Rewrite::regex("^/old/(.*)$", "/new/$1").unwrap();
    c.bench_function("rewrite/regex", |b| {
        b.iter(|| re.apply(black_box("/old/users/42")))
    });
    c.bench_function("normalize/clean", |b| {
        b.iter(|| normalize(black_box("/api/v1/users/42")).is_ok())
    });
    c.bench_function("normalize/dirty", |b| {
        b.iter(|| normalize(black_box("/api//v1/./%75sers/x/../42")).is_ok())
    });
}

criterion_group!(benches, cidr, rate_limit, edits_and_rewrites);
criterion_main!(benches);
