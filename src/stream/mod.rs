//! Raw TCP proxying (`streams:`, like nginx `stream` or liteginx's `kind: tcp`): each
//! connection to a stream listener is piped to a backend of the stream's pool, chosen by the
//! pool's balancer among healthy backends, with connect retries on other backends, the pool's
//! connect timeout and the stream's idle timeout. Imports: runtime, upstream, proxy_protocol, metrics.

use crate::metrics;
use crate::proxy_protocol;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant};

/// The typed configuration of one stream listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub pool: crate::upstream::PoolId,
    pub idle_timeout: Duration,
    /// TLS terminated on the listener.
    pub tls: bool,
    /// A PROXY protocol header sent to the backend first.
    pub send_proxy: Option<ProxyVersion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

/// The app behind one stream listener. It looks its configuration up by name in the current
/// runtime for every connection, so a reload changes pools and timeouts of new connections.
pub struct StreamProxy {
    name: String,
    state: Arc<ArcSwap<Runtime>>,
}

impl StreamProxy {
    pub fn new(name: String, state: Arc<ArcSwap<Runtime>>) -> Self {
        StreamProxy { name, state }
    }

    /// Connect to a backend of the pool, trying others after a failed connection.
    async fn connect(
        &self,
        rt: &Runtime,
        cfg: &StreamConfig,
        client: &[u8],
    ) -> Option<(TcpStream, SocketAddr)> {
        let pool = rt.pool(cfg.pool);
        let mut tried = Vec::new();
        while tried.len() <= pool.config.retries {
            let addr = pool.select(client, &tried)?;
            tried.push(addr);
            match timeout(pool.config.timeouts.connect, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    pool.record(addr, true);
                    let _ = s.set_nodelay(true);
                    return Some((s, addr));
                }
                Ok(Err(e)) => log::warn!("stream {}: connect to {addr} failed: {e}", cfg.name),
                Err(_) => log::warn!("stream {}: connect to {addr} timed out", cfg.name),
            }
            pool.record(addr, false);
        }
        None
    }
}

#[async_trait]
impl ServerApp for StreamProxy {
    async fn process_new(
        self: &Arc<Self>,
        mut client: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let rt = self.state.load_full();
        let m = metrics::get();
        let Some(cfg) = rt.streams.iter().find(|s| s.name == self.name) else {
            m.stream_connections
                .with_label_values(&[&self.name, "unconfigured"])
                .inc();
            return None;
        };
        let peer = client
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned());
        let key = peer
            .as_ref()
            .and_then(|p| p.as_inet())
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let Some((mut upstream, addr)) = self.connect(&rt, cfg, key.as_bytes()).await else {
            log::warn!("stream {}: no backend accepted the connection", cfg.name);
            m.stream_connections
                .with_label_values(&[&cfg.name, "no_backend"])
                .inc();
            return None;
        };
        m.stream_connections
            .with_label_values(&[&cfg.name, "proxied"])
            .inc();
        if let Some(version) = cfg.send_proxy {
            let local = client
                .get_socket_digest()
                .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
            let header = match (peer.as_ref().and_then(|p| p.as_inet()), local) {
                (Some(src), Some(dst)) => match version {
                    ProxyVersion::V1 => proxy_protocol::v1(*src, dst),
                    ProxyVersion::V2 => proxy_protocol::v2(*src, dst),
                },
                _ => match version {
                    ProxyVersion::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
                    ProxyVersion::V2 => proxy_protocol::v2_local(),
                },
            };
            if upstream.write_all(&header).await.is_err() {
                return None;
            }
        }
        let pool = rt.pool(cfg.pool);
        let _inflight = pool.track(addr);
        let (up, down) = pipe(&mut client, upstream, cfg.idle_timeout).await;
        m.stream_bytes
            .with_label_values(&[&cfg.name, "upstream"])
            .inc_by(up);
        m.stream_bytes
            .with_label_values(&[&cfg.name, "downstream"])
            .inc_by(down);
        None
    }
}

/// Copy both ways until both sides are done or nothing moved for `idle`. Half-closes are
/// passed on. Returns (bytes to the backend, bytes to the client).
async fn pipe(client: &mut Stream, upstream: TcpStream, idle: Duration) -> (u64, u64) {
    let (mut ur, mut uw) = upstream.into_split();
    let (mut cbuf, mut ubuf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut up, mut down) = (0u64, 0u64);
    let (mut client_open, mut upstream_open) = (true, true);
    let mut deadline = Instant::now() + idle;
    while client_open || upstream_open {
        tokio::select! {
            r = client.read(&mut cbuf), if client_open => match r {
                Ok(0) | Err(_) => {
                    client_open = false;
                    let _ = uw.shutdown().await;
                }
                Ok(n) => {
                    if uw.write_all(&cbuf[..n]).await.is_err() { break; }
                    up += n as u64;
                    deadline = Instant::now() + idle;
                }
            },
            r = ur.read(&mut ubuf), if upstream_open => match r {
                Ok(0) | Err(_) => {
                    upstream_open = false;
                    let _ = client.shutdown().await;
                }
                Ok(n) => {
                    if client.write_all(&ubuf[..n]).await.is_err() || client.flush().await.is_err() { break; }
                    down += n as u64;
                    deadline = Instant::now() + idle;
                }
            },
            _ = sleep_until(deadline) => break,
        }
    }
    (up, down)
}
