//! Upstream pools on pingora-load-balancing: selection, active health checks, timeouts.
//!
//! A [`Pool`] is built from a typed [`PoolConfig`] (made by `config::compile`) and is
//! addressed by [`PoolId`] in the runtime. Pools whose configuration is unchanged are carried
//! across reloads as the same `Arc<Pool>`, so their health state survives.
//! Imports: pingora, metrics (health gauges, per-pool latency series); nothing of config or
//! proxy.

mod health;
mod select;

pub use health::spawn_health_checks;
pub use select::InflightGuard;

use http::HeaderName;
use http::HeaderValue;
use pingora::lb::selection::{Consistent, Random, RoundRobin};
use pingora::lb::{discovery, Backend, Backends, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

/// Index of a pool in the runtime's pool table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolId(pub u32);

/// One resolved backend address with its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub weight: usize,
}

/// What consistent hashing hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(HeaderName),
}

/// Backend selection algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    Random,
    ConsistentHash(HashKey),
    LeastConnections,
}

impl Balance {
    pub fn name(&self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::Random => "random",
            Balance::ConsistentHash(_) => "consistent_hash",
            Balance::LeastConnections => "least_connections",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    Tcp,
    Http {
        path: String,
        expect: RangeInclusive<u16>,
        host: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes to mark an unhealthy backend healthy.
    pub rise: usize,
    /// Consecutive failures to mark a healthy backend unhealthy.
    pub fall: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    /// How long an idle upstream keep-alive connection is kept in the pool.
    pub idle: Duration,
    /// How long an upgraded (WebSocket) connection may stay silent; replaces `read` for them.
    pub websocket_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(60),
            write: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            websocket_idle: Duration::from_secs(3600),
        }
    }
}

/// Passive health: a backend that fails `failures` times in a row (refused or timed-out
/// connections, 5xx answers) gets no traffic for `eject_for`, then is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passive {
    pub failures: u32,
    pub eject_for: Duration,
}

impl Default for Passive {
    fn default() -> Self {
        Passive {
            failures: 3,
            eject_for: Duration::from_secs(10),
        }
    }
}

/// The HTTP version spoken to a pool's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 only: over TLS by ALPN, or cleartext with prior knowledge (`h2c`).
    H2,
    /// h2 when the backend's ALPN offers it, else HTTP/1.1 (TLS only).
    Auto,
}

impl Protocol {
    pub fn name(self, tls: bool) -> &'static str {
        match (self, tls) {
            (Protocol::Http1, _) => "http1",
            (Protocol::H2, true) => "h2",
            (Protocol::H2, false) => "h2c",
            (Protocol::Auto, _) => "auto",
        }
    }
}

/// CA certificates trusted for a pool's backends, compared by content (a reload that changes
/// the file builds a new pool).
#[derive(Clone)]
pub struct CaBundle {
    pub path: std::path::PathBuf,
    pem: Vec<u8>,
    certs: Arc<Box<[openssl::x509::X509]>>,
}

impl CaBundle {
    pub fn load(path: &std::path::Path) -> Result<CaBundle, String> {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let certs = openssl::x509::X509::stack_from_pem(&pem)
            .map_err(|e| format!("{}: not a PEM certificate bundle ({e})", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: holds no certificate", path.display()));
        }
        Ok(CaBundle {
            path: path.to_path_buf(),
            pem,
            certs: Arc::new(certs.into_boxed_slice()),
        })
    }
}

impl PartialEq for CaBundle {
    fn eq(&self, other: &Self) -> bool {
        self.pem == other.pem
    }
}

impl Eq for CaBundle {}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaBundle({})", self.path.display())
    }
}

/// TLS to the backends of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// SNI and the name verified in the certificate; empty: no SNI.
    pub sni: String,
    pub verify: bool,
    /// `None`: the system's roots.
    pub ca: Option<CaBundle>,
}

impl UpstreamTls {
    /// Apply to a peer's options (requests and health checks alike).
    fn apply(&self, o: &mut pingora::upstreams::peer::PeerOptions) {
        o.verify_cert = self.verify;
        o.verify_hostname = self.verify;
        if let Some(ca) = &self.ca {
            o.ca = Some(ca.certs.clone());
        }
    }
}

/// How many requests share one HTTP/2 connection to a backend.
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// The typed configuration of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub name: String,
    pub targets: Vec<Target>,
    pub balance: Balance,
    pub health_check: Option<HealthCheckConfig>,
    /// How many other backends to try after a failed connection.
    pub retries: usize,
    pub timeouts: Timeouts,
    pub host_header: Option<HeaderValue>,
    /// `None`: passive health is off.
    pub passive: Option<Passive>,
    pub protocol: Protocol,
    pub tls: Option<UpstreamTls>,
    /// Answers that send an idempotent request to another backend.
    pub retry_on: Vec<u16>,
}

impl PoolConfig {
    /// The peer for one request to `addr`; `upgrade` (WebSocket) forces HTTP/1.1 and its own
    /// idle timeout.
    pub fn peer(&self, addr: SocketAddr, upgrade: bool) -> HttpPeer {
        let t = &self.timeouts;
        let mut peer = match &self.tls {
            Some(tls) => HttpPeer::new(addr, true, tls.sni.clone()),
            None => HttpPeer::new(addr, false, String::new()),
        };
        self.set_options(&mut peer.options);
        let o = &mut peer.options;
        // An upgraded connection (WebSocket) may be silent for long: it gets its own timeout.
        o.read_timeout = Some(if upgrade { t.websocket_idle } else { t.read });
        o.write_timeout = Some(t.write);
        o.idle_timeout = Some(t.idle);
        if upgrade {
            o.set_http_version(1, 1);
        }
        peer
    }

    /// Protocol, TLS and connect timeout: what requests and health checks share.
    pub fn set_options(&self, o: &mut pingora::upstreams::peer::PeerOptions) {
        o.connection_timeout = Some(self.timeouts.connect);
        if let Some(tls) = &self.tls {
            tls.apply(o);
        }
        match self.protocol {
            Protocol::Http1 => {}
            Protocol::H2 => o.set_http_version(2, 2),
            Protocol::Auto => o.set_http_version(2, 1),
        }
        if self.protocol != Protocol::Http1 {
            o.max_h2_streams = H2_STREAMS_PER_CONNECTION;
        }
    }
}

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Hash(LoadBalancer<Consistent>),
}

/// A live pool: its configuration, its balancer with health state, and in-flight counts.
pub struct Pool {
    pub config: PoolConfig,
    balancer: Balancer,
    /// The backends as the balancer knows them, in the order of `config.targets`: built once,
    /// for health lookups on the request path.
    members: Box<[Backend]>,
    /// In-flight requests per backend, in the order of `config.targets` (deduplicated).
    inflight: Box<[(SocketAddr, AtomicUsize)]>,
    /// Passive health per backend (same order): consecutive failures, ejected until (ms
    /// since `born`).
    passive: Box<[(AtomicU32, AtomicU64)]>,
    born: std::time::Instant,
    /// Rotates the starting point of least-connections ties.
    tie_break: AtomicUsize,
    max_iterations: usize,
    checks_started: AtomicBool,
    /// Its request metrics, resolved on first use.
    pub series: crate::metrics::PoolSeries,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Build a pool. Starts nothing: health checks are started by [`spawn_health_checks`].
    pub fn new(config: PoolConfig) -> Result<Pool, String> {
        let members: Box<[Backend]> = config
            .targets
            .iter()
            .map(|t| Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(t.addr),
                weight: t.weight,
                ext: Default::default(),
            })
            .collect();
        let set: BTreeSet<Backend> = members.iter().cloned().collect();
        let hc = config
            .health_check
            .as_ref()
            .map(|hc| health::build_check(&config, hc));
        let balancer = match &config.balance {
            Balance::RoundRobin | Balance::LeastConnections => {
                Balancer::RoundRobin(build_lb(set, hc)?)
            }
            Balance::Random => Balancer::Random(build_lb(set, hc)?),
            Balance::ConsistentHash(_) => Balancer::Hash(build_lb(set, hc)?),
        };
        let mut seen = Vec::new();
        for t in &config.targets {
            if !seen.contains(&t.addr) {
                seen.push(t.addr);
            }
        }
        let passive = seen
            .iter()
            .map(|_| (AtomicU32::new(0), AtomicU64::new(0)))
            .collect();
        let inflight = seen.into_iter().map(|a| (a, AtomicUsize::new(0))).collect();
        let total_weight: usize = config.targets.iter().map(|t| t.weight).sum();
        Ok(Pool {
            max_iterations: total_weight.saturating_mul(2).saturating_add(16),
            config,
            balancer,
            members,
            inflight,
            passive,
            born: std::time::Instant::now(),
            tie_break: AtomicUsize::new(0),
            checks_started: AtomicBool::new(false),
            series: Default::default(),
        })
    }

    fn backends(&self) -> &Backends {
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends(),
            Balancer::Random(lb) => lb.backends(),
            Balancer::Hash(lb) => lb.backends(),
        }
    }

    /// Whether the active health check currently considers `addr` healthy.
    pub fn is_healthy(&self, addr: SocketAddr) -> bool {
        self.members
            .iter()
            .filter(|b| b.addr.as_inet() == Some(&addr))
            .any(|b| self.backends().ready(b))
    }

    /// Requests currently in flight to `addr`.
    pub fn inflight(&self, addr: SocketAddr) -> usize {
        self.inflight
            .iter()
            .find(|(a, _)| *a == addr)
            .map_or(0, |(_, n)| n.load(std::sync::atomic::Ordering::Relaxed))
    }
}

fn build_lb<S>(
    set: BTreeSet<Backend>,
    hc: Option<Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync>>,
) -> Result<LoadBalancer<S>, String>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    use futures_util::FutureExt;
    let backends = Backends::new(discovery::Static::new(set));
    let mut lb = LoadBalancer::<S>::from_backends(backends);
    if let Some(hc) = hc {
        lb.set_health_check(hc);
    }
    // Static discovery completes without awaiting anything.
    match lb.update().now_or_never() {
        Some(Ok(())) => Ok(lb),
        Some(Err(e)) => Err(format!("cannot build the balancer: {e}")),
        None => Err("static discovery did not complete".to_string()),
    }
}
