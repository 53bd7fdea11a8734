//! Choosing a backend for one request attempt, and counting requests in flight.

use super::{Balance, Balancer, Pool};
use pingora::lb::Backend;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Decrements a backend's in-flight count when the attempt ends (dropped with the request).
#[derive(Debug)]
pub struct InflightGuard {
    pool: Arc<Pool>,
    index: usize,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.pool.inflight[self.index].1.fetch_sub(1, Relaxed);
    }
}

impl Pool {
    /// Pick a healthy backend that is not in `exclude` (the ones this request already tried).
    /// `key` feeds consistent hashing and is ignored by the other algorithms.
    pub fn select(&self, key: &[u8], exclude: &[SocketAddr]) -> Option<SocketAddr> {
        // Prefer backends passive health has not ejected; if every candidate is ejected, try
        // them anyway rather than fail outright.
        self.select_where(key, exclude, true)
            .or_else(|| self.select_where(key, exclude, false))
    }

    fn select_where(
        &self,
        key: &[u8],
        exclude: &[SocketAddr],
        skip_ejected: bool,
    ) -> Option<SocketAddr> {
        let ok = |a: &SocketAddr| !(exclude.contains(a) || skip_ejected && self.ejected(*a));
        // One backend: whatever the algorithm, it is the answer if it may be used; the
        // balancer's per-pick work (its set of backends seen, hashing) is skipped.
        if let [only] = self.config.targets.as_slice() {
            return (ok(&only.addr) && self.is_healthy(only.addr)).then_some(only.addr);
        }
        let accept = |b: &Backend, healthy: bool| healthy && b.addr.as_inet().is_some_and(ok);
        let backend = match &self.balancer {
            Balancer::RoundRobin(_) if self.config.balance == Balance::LeastConnections => {
                return self.least_connections(&ok);
            }
            Balancer::RoundRobin(lb) => lb.select_with(key, self.max_iterations, accept),
            Balancer::Random(lb) => lb.select_with(key, self.max_iterations, accept),
            Balancer::Hash(lb) => lb.select_with(key, self.max_iterations, accept),
        }?;
        backend.addr.as_inet().copied()
    }

    /// Whether a retry may go somewhere: a backend not in `tried`, within `retries`.
    pub fn may_retry(&self, tried: &[SocketAddr]) -> bool {
        tried.len() <= self.config.retries && self.inflight.iter().any(|(a, _)| !tried.contains(a))
    }

    /// Count a request in flight to `addr` until the returned guard is dropped.
    pub fn track(self: &Arc<Self>, addr: SocketAddr) -> Option<InflightGuard> {
        let index = self.inflight.iter().position(|(a, _)| *a == addr)?;
        self.inflight[index].1.fetch_add(1, Relaxed);
        Some(InflightGuard {
            pool: self.clone(),
            index,
        })
    }

    /// The healthy backend with the fewest requests in flight relative to its weight; ties go
    /// round the pool so that an idle pool still spreads its load.
    fn least_connections(&self, ok: &dyn Fn(&SocketAddr) -> bool) -> Option<SocketAddr> {
        let n = self.config.targets.len();
        let start = self.tie_break.fetch_add(1, Relaxed);
        let mut best: Option<(usize, usize, SocketAddr)> = None; // (load*1000/weight, weight)
        for i in 0..n {
            let t = &self.config.targets[(start + i) % n];
            if !ok(&t.addr) || !self.is_healthy(t.addr) {
                continue;
            }
            let load = self.inflight(t.addr).saturating_mul(1000) / t.weight.max(1);
            if best.is_none_or(|(l, _, _)| load < l) {
                best = Some((load, t.weight, t.addr));
            }
        }
        best.map(|(_, _, a)| a)
    }
}

impl Pool {
    fn index(&self, addr: SocketAddr) -> Option<usize> {
        self.inflight.iter().position(|(a, _)| *a == addr)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether passive health currently keeps `addr` out.
    pub fn ejected(&self, addr: SocketAddr) -> bool {
        // 0 = never ejected: no clock read on the common path.
        self.index(addr).is_some_and(|i| {
            let until = self.passive[i].1.load(Relaxed);
            until != 0 && until > self.now_ms()
        })
    }

    /// Record the outcome of an attempt on `addr` for passive health.
    pub fn record(&self, addr: SocketAddr, success: bool) {
        let (Some(cfg), Some(i)) = (&self.config.passive, self.index(addr)) else {
            return;
        };
        let (fails, until) = &self.passive[i];
        if success {
            fails.store(0, Relaxed);
            return;
        }
        if fails.fetch_add(1, Relaxed) + 1 >= cfg.failures {
            fails.store(0, Relaxed);
            let ms = u64::try_from(cfg.eject_for.as_millis()).unwrap_or(u64::MAX);
            until.store(self.now_ms().saturating_add(ms), Relaxed);
            log::warn!(
                "pool {}: backend {addr} failed {} times in a row, ejected for {:?}",
                self.config.name,
                cfg.failures,
                cfg.eject_for
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn pool(balance: Balance, weights: &[usize]) -> Arc<Pool> {
        let targets = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Target {
                addr: format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                weight: *w,
            })
            .collect();
        Arc::new(
            Pool::new(PoolConfig {
                name: "p".into(),
                targets,
                balance,
                health_check: None,
                retries: 1,
                timeouts: Timeouts::default(),
                host_header: None,
                protocol: Protocol::Http1,
                tls: None,
                retry_on: Vec::new(),
                passive: Some(Passive {
                    failures: 2,
                    eject_for: std::time::Duration::from_secs(60),
                }),
            })
            .unwrap(),
        )
    }

    #[test]
    fn weighted_round_robin_follows_weights() {
        let p = pool(Balance::RoundRobin, &[1, 3]);
        let mut counts: HashMap<SocketAddr, usize> = HashMap::new();
        for _ in 0..400 {
            *counts.entry(p.select(b"", &[]).unwrap()).or_default() += 1;
        }
        assert_eq!(counts[&"127.0.0.1:1000".parse().unwrap()], 100);
        assert_eq!(counts[&"127.0.0.1:1001".parse().unwrap()], 300);
    }

    #[test]
    fn exclusion_skips_tried_backends() {
        let p = pool(Balance::RoundRobin, &[1, 1]);
        let first = p.select(b"", &[]).unwrap();
        let second = p.select(b"", &[first]).unwrap();
        assert_ne!(first, second);
        assert_eq!(p.select(b"", &[first, second]), None);
    }

    #[test]
    fn consistent_hash_is_stable_per_key() {
        let p = pool(Balance::ConsistentHash(HashKey::ClientIp), &[1, 1, 1, 1]);
        for key in [&b"10.0.0.1"[..], b"10.0.0.2", b"user-42"] {
            let a = p.select(key, &[]).unwrap();
            assert!((0..20).all(|_| p.select(key, &[]) == Some(a)));
        }
    }

    #[test]
    fn passive_health_ejects_after_consecutive_failures() {
        let p = pool(Balance::RoundRobin, &[1, 1]);
        let bad: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        p.record(bad, false);
        p.record(bad, true); // a success resets the count
        p.record(bad, false);
        assert!(!p.ejected(bad));
        p.record(bad, false);
        assert!(p.ejected(bad));
        assert!((0..10).all(|_| p.select(b"", &[]) != Some(bad)));
        // With the other backend excluded, the ejected one is still better than nothing.
        assert_eq!(
            p.select(b"", &["127.0.0.1:1001".parse().unwrap()]),
            Some(bad)
        );
    }

    #[test]
    fn least_connections_prefers_the_idlest() {
        let p = pool(Balance::LeastConnections, &[1, 1, 1]);
        let busy: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let also_busy: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let _g1 = p.track(busy).unwrap();
        let _g2 = p.track(also_busy).unwrap();
        for _ in 0..5 {
            assert_eq!(p.select(b"", &[]), Some("127.0.0.1:1002".parse().unwrap()));
        }
        drop(_g1);
        assert_eq!(p.inflight(busy), 0);
    }
}
