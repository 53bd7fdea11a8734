//! `Runtime`: the compiled, immutable snapshot of the configuration that requests read.
//!
//! It is held in an `ArcSwap`; a reload compiles a new one and swaps it in atomically, and a
//! request keeps the snapshot it started with. Imports: routing, policy, upstream, metrics
//! (the per-route series kept with each route).

use crate::access_log::AccessLog;
use crate::acme::AcmeConfig;
use crate::policy::{Policy, Redirect, TrustedProxies};
use crate::routing::{HostPattern, RouteId, Router};
use crate::stream::StreamConfig;
use crate::tls::{CertKey, Preset};
use crate::upstream::{Pool, PoolId};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Process-level settings (threads, upgrade paths, shutdown timing). Changing them needs a
/// restart or an upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub threads: usize,
    pub work_stealing: bool,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    pub upstream_keepalive_pool_size: usize,
    pub error_log: Option<PathBuf>,
}

/// A fixed response served by gatehouse itself.
#[derive(Debug, Clone)]
pub struct DirectResponse {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub enum RouteAction {
    Proxy(PoolId),
    Respond(DirectResponse),
    Redirect(Redirect),
}

#[derive(Debug, Clone)]
pub struct Route {
    /// `ingress/host/path`: stable across reloads, used in logs and metric labels.
    pub name: String,
    pub host: HostPattern,
    /// The path pattern as shown to operators (`= /x`, `/x`, `~ ^/x`).
    pub path: String,
    pub action: RouteAction,
    pub policy: Policy,
    /// Its request metrics, resolved on first use.
    pub series: crate::metrics::RouteSeries,
}

#[derive(Debug)]
pub struct Runtime {
    /// Hash of every configuration file read: changes whenever the configuration does.
    pub version: u64,
    pub loaded_at: SystemTime,
    pub files: Vec<PathBuf>,
    pub listen_http: Vec<SocketAddr>,
    pub listen_https: Vec<SocketAddr>,
    pub tls_preset: Preset,
    /// Certificates from files, in order (the first is the default).
    pub certificates: Vec<Arc<CertKey>>,
    /// ACME settings and the names it manages, when any ingress asks for them.
    pub acme: Option<AcmeConfig>,
    /// TCP stream listeners.
    pub streams: Vec<StreamConfig>,
    /// Request line + headers above this get 431.
    pub max_header_size: u64,
    /// Connection-level limits of the HTTP listeners.
    pub limits: crate::downstream::DownstreamLimits,
    /// Redirect every request on the HTTP listeners to https (ACME challenges excepted).
    pub https_redirect: Option<Redirect>,
    pub trusted_proxies: TrustedProxies,
    pub admin: Option<SocketAddr>,
    pub access_log: Option<Arc<AccessLog>>,
    pub log_level: log::LevelFilter,
    pub server: ServerSettings,
    pub router: Router,
    pub routes: Vec<Route>,
    pub pools: Vec<Arc<Pool>>,
    /// Things that are legal but probably not what the operator meant.
    pub warnings: Vec<String>,
}

impl Runtime {
    pub fn route(&self, id: RouteId) -> &Route {
        &self.routes[id.0 as usize]
    }

    pub fn pool(&self, id: PoolId) -> &Arc<Pool> {
        &self.pools[id.0 as usize]
    }

    /// Every listening address: HTTP, HTTPS and TCP streams.
    pub fn listeners(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.listen_http
            .iter()
            .chain(&self.listen_https)
            .copied()
            .chain(self.streams.iter().map(|s| s.listen))
    }

    /// Why `next` cannot fully take over from `self` by a reload: listening sockets and
    /// process settings change only with a restart or `gatehouse upgrade`.
    pub fn needs_upgrade(&self, next: &Runtime) -> Vec<String> {
        let mut why = Vec::new();
        if self.listen_http != next.listen_http {
            why.push("listen.http changed".to_string());
        }
        if self.listen_https != next.listen_https || self.tls_preset != next.tls_preset {
            why.push("listen.https or tls.preset changed".to_string());
        }
        let listens = |rt: &Runtime| {
            rt.streams
                .iter()
                .map(|s| (s.name.clone(), s.listen))
                .collect::<Vec<_>>()
        };
        if listens(self) != listens(next) {
            why.push("streams (names or listeners) changed".to_string());
        }
        if self.admin != next.admin {
            why.push("admin changed".to_string());
        }
        if self.server != next.server {
            why.push("server settings changed".to_string());
        }
        why
    }

    /// A short human summary: listeners, routes and pools (what `gatehouse check` prints).
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "config version {:016x} ({} files)",
            self.version,
            self.files.len()
        );
        for l in &self.listen_http {
            let _ = writeln!(s, "listen http {l}");
        }
        for l in &self.listen_https {
            let _ = writeln!(s, "listen https {l} (TLS preset {:?})", self.tls_preset);
        }
        for c in &self.certificates {
            let left = c.remaining().as_secs() / 86_400;
            let _ = writeln!(
                s,
                "certificate {} ({left} days left) from {:?}",
                c.names.join(", "),
                c.source
            );
        }
        match self.admin {
            Some(a) => {
                let _ = writeln!(
                    s,
                    "admin http://{a}/ (metrics, healthz, readyz, status, reload)"
                );
            }
            None => {
                let _ = writeln!(s, "admin off");
            }
        }
        if let Some(l) = &self.access_log {
            let _ = writeln!(
                s,
                "access log {:?} ({:?})",
                l.config.target, l.config.format
            );
        }
        let _ = writeln!(s, "{} routes:", self.routes.len());
        for r in &self.routes {
            let target = match &r.action {
                RouteAction::Proxy(p) => format!("-> pool {}", self.pool(*p).config.name),
                RouteAction::Respond(d) => format!("-> respond {}", d.status.as_u16()),
                RouteAction::Redirect(r) => format!("-> redirect {}", r.code.as_u16()),
            };
            let _ = writeln!(s, "  {} {} {}  [{}]", r.host, r.path, target, r.name);
        }
        for st in &self.streams {
            let pool = &self.pool(st.pool).config.name;
            let _ = writeln!(
                s,
                "stream {} {}{} -> pool {pool} (idle {:?}{})",
                st.name,
                st.listen,
                if st.tls { " (TLS)" } else { "" },
                st.idle_timeout,
                match st.send_proxy {
                    Some(v) => format!(", sends PROXY {v:?}"),
                    None => String::new(),
                }
            );
        }
        let _ = writeln!(s, "{} pools:", self.pools.len());
        for p in &self.pools {
            let c = &p.config;
            let targets: Vec<String> = c
                .targets
                .iter()
                .map(|t| format!("{} w{}", t.addr, t.weight))
                .collect();
            let check = match &c.health_check {
                Some(h) => format!("{:?} every {:?}", h.kind, h.interval),
                None => "no active check".into(),
            };
            let tls = match &c.tls {
                Some(t) if t.verify => format!(" over TLS to {:?}", t.sni),
                Some(_) => " over TLS (unverified)".to_string(),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "  {} ({}{tls}, {}, {}, retries {}): {}",
                c.name,
                c.protocol.name(c.tls.is_some()),
                c.balance.name(),
                check,
                c.retries,
                targets.join(", ")
            );
        }
        if let Some(a) = &self.acme {
            let _ = writeln!(
                s,
                "ACME {} ({}) manages: {}",
                a.directory,
                a.challenge.as_str(),
                a.names.join(", ")
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }
}
