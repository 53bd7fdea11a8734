//! gatehouse: an edge reverse proxy built on Cloudflare's Pingora.
//!
//! `main.rs` is a thin CLI over this library; `tests/` and `benches/` reach the rooms below.
//! Imports run one way: config -> {routing, upstream} and proxy -> {routing, upstream}.

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod alloc;
pub mod config;
pub mod control;
pub mod downstream;
pub mod metrics;
pub mod ops;
pub mod policy;
pub mod proxy;
pub mod proxy_protocol;
pub mod routing;
pub mod runtime;
pub mod stream;
pub mod tls;
pub mod upstream;

use async_trait::async_trait;
use control::Control;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use runtime::Runtime;
use std::path::PathBuf;
use std::sync::Arc;

/// How the process was asked to start.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Take the listening sockets over from a running gatehouse (zero-downtime upgrade).
    pub upgrade: bool,
    /// Detach and run in the background.
    pub daemon: bool,
}

/// A plain TCP listener without Pingora's read buffer. Pingora puts a 64 KiB `BufReader`
/// under every accepted stream, allocated zeroed; on plain TCP every reader above it (HTTP/1
/// into its own head and body buffers, the PROXY header reader, the stream proxy) reads in
/// chunks of its own, so the buffer only cost zeroing 64 KiB of reused memory per connection
/// (about 65,000 of the 146,000 instructions of a one-request connection) and a copy of every
/// byte read. TLS listeners keep it: OpenSSL reads each record in two small reads, which it
/// batches.
fn plain_tcp(addr: &impl std::fmt::Display) -> pingora::listeners::ListenerConfig {
    pingora::listeners::ListenerConfig::tcp(addr.to_string())
        .l4_buffer(pingora::listeners::L4BufferSettings::default().read(0))
}

fn whole_seconds(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Build the Pingora server for a compiled runtime: the HTTP proxy on every listener, the
/// admin listener and the background supervisor. Nothing is bound until the server runs.
pub fn build_server(
    rt: Runtime,
    config_path: PathBuf,
    opts: &RunOptions,
) -> Result<Server, String> {
    let s = &rt.server;
    let conf = ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        pid_file: s.pid_file.display().to_string(),
        upgrade_sock: s.upgrade_sock.display().to_string(),
        grace_period_seconds: Some(whole_seconds(s.grace_period)),
        graceful_shutdown_timeout_seconds: Some(whole_seconds(s.shutdown_timeout)),
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        error_log: s.error_log.as_ref().map(|p| p.display().to_string()),
        daemon: opts.daemon,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let listen_http = rt.listen_http.clone();
    let listen_https = rt.listen_https.clone();
    let preset = rt.tls_preset;
    let admin_addr = rt.admin;
    let streams: Vec<(String, std::net::SocketAddr, bool)> = rt
        .streams
        .iter()
        .map(|s| (s.name.clone(), s.listen, s.tls))
        .collect();
    let ports: Vec<u16> = listen_http
        .iter()
        .chain(&listen_https)
        .map(|a| a.port())
        .collect();
    let control = Control::new(rt, config_path)?;
    let proxy = pingora::proxy::http_proxy(
        &server.configuration,
        proxy::Gatehouse::new(control.state.clone(), control.challenges.clone()),
    );
    let idle_upstream = proxy.idle_upstream_connections();
    let mut http = pingora::services::listening::Service::new(
        "gatehouse http".to_string(),
        downstream::Guard::new(proxy, control.state.clone(), &ports),
    );
    http.endpoints()
        .set_pre_tls_callback(Arc::new(downstream::ProxyProtocolAccept {
            state: control.state.clone(),
        }));
    for addr in &listen_http {
        http.add_listener(plain_tcp(addr));
    }
    for addr in &listen_https {
        let settings = tls::listener_settings(control.certs.clone(), preset, true)
            .map_err(|e| format!("TLS listener {addr}: {e}"))?;
        http.add_tls_with_settings(&addr.to_string(), None, settings);
    }
    server.add_service(http);
    for (name, listen, tls) in streams {
        let app = stream::StreamProxy::new(name.clone(), control.state.clone());
        let mut svc = pingora::services::listening::Service::new(format!("stream {name}"), app);
        if tls {
            let settings = tls::listener_settings(control.certs.clone(), preset, false)
                .map_err(|e| format!("TLS stream listener {listen}: {e}"))?;
            svc.add_tls_with_settings(&listen.to_string(), None, settings);
        } else {
            svc.add_listener(plain_tcp(&listen));
        }
        server.add_service(svc);
    }
    if let Some(addr) = admin_addr {
        let mut admin = pingora::services::listening::Service::new(
            "gatehouse admin".to_string(),
            admin::Admin::new(control.clone(), idle_upstream),
        );
        admin.add_listener(plain_tcp(&addr));
        server.add_service(admin);
    }
    let phases = std::sync::Mutex::new(Some(server.watch_execution_phase()));
    server.add_service(background_service(
        "supervisor",
        Supervisor { control, phases },
    ));
    Ok(server)
}

/// Background work that follows the current runtime: health checks of its pools, reloads on
/// SIGHUP, and the eviction of idle rate-limit keys.
struct Supervisor {
    control: Arc<Control>,
    phases:
        std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<pingora::server::ExecutionPhase>>>,
}

/// How often idle rate-limit keys are dropped.
const EVICT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.control.start_background();
        let phases = self.phases.lock().ok().and_then(|mut p| p.take());
        if let Some(phases) = phases {
            tokio::spawn(proxy::watch_phases(phases));
        }
        let mut tick = tokio::time::interval(EVICT_EVERY);
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload only through the admin API: {e}");
                None
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => {
                    log::info!("SIGHUP: reloading {}", self.control.config_path.display());
                    let _ = self.control.reload().await;
                }
                _ = tick.tick() => {
                    for route in &self.control.state.load().routes {
                        if let Some(limiter) = &route.policy.rate_limit {
                            limiter.evict_idle();
                        }
                    }
                }
            }
        }
    }
}
