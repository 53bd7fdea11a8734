//! What happens to a downstream connection before Pingora parses HTTP on it: the per-listener
//! connection limit, the PROXY protocol (the client address a TCP load balancer in front of
//! gatehouse reports) and the deadline on every request head. [`Guard`] wraps the HTTP proxy
//! app (serving HTTP/1 connections through the vendored `process_new_connection`); settings come
//! from the current runtime, so a reload applies them to new connections.
//! Imports: runtime, metrics, proxy_protocol.

mod head;

use head::HeadDeadline;

use crate::metrics;
use crate::proxy_protocol::{self, Header};
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::connectors::http::custom;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora::proxy::{HttpProxy, ProxyHttp};
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Connection-level settings of the HTTP listeners (`limits`, `listen.proxy_protocol`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownstreamLimits {
    /// Longest time from the first byte of a request head to its end.
    pub header_timeout: Duration,
    /// How long an idle keep-alive connection waits for its next request.
    pub keepalive_timeout: Duration,
    /// Open connections per listener; more are closed at once.
    pub max_connections: usize,
    /// Every connection starts with a PROXY protocol header (v1 or v2).
    pub proxy_protocol: bool,
}

impl Default for DownstreamLimits {
    fn default() -> Self {
        DownstreamLimits {
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            proxy_protocol: false,
        }
    }
}

/// The HTTP app behind the guard.
pub struct Guard<A> {
    inner: Arc<A>,
    state: Arc<ArcSwap<Runtime>>,
    /// Open connections by listener port.
    open: HashMap<u16, AtomicUsize>,
}

impl<A> Guard<A> {
    pub fn new(inner: A, state: Arc<ArcSwap<Runtime>>, ports: &[u16]) -> Guard<A> {
        Guard {
            inner: Arc::new(inner),
            state,
            open: ports.iter().map(|p| (*p, AtomicUsize::new(0))).collect(),
        }
    }
}

/// One open connection counted against its listener, until dropped.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn local_port(stream: &Stream) -> Option<u16> {
    let d = stream.get_socket_digest()?;
    d.local_addr().and_then(|a| a.as_inet()).map(|a| a.port())
}

/// The app behind the guard: what serves a connection once the guard has let it in.
pub trait ConnectionApp: Send + Sync + 'static {
    fn serve<'a>(
        self: &'a Arc<Self>,
        stream: Stream,
        shutdown: &'a ShutdownWatch,
    ) -> impl Future<Output = Option<Stream>> + Send + 'a;

    fn cleanup(&self) -> impl Future<Output = ()> + Send + '_;
}

/// Pingora's HTTP proxy, through the vendored `process_new_connection`: Pingora's own
/// `process_new`, except that the requests of an HTTP/1 connection are served in one future
/// rather than in a boxed future each (see vendor/pingora-proxy/GATEHOUSE-PATCH.md).
impl<SV, C> ConnectionApp for HttpProxy<SV, C>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
    C: custom::Connector,
{
    fn serve<'a>(
        self: &'a Arc<Self>,
        stream: Stream,
        shutdown: &'a ShutdownWatch,
    ) -> impl Future<Output = Option<Stream>> + Send + 'a {
        self.process_new_connection(stream, shutdown)
    }

    fn cleanup(&self) -> impl Future<Output = ()> + Send + '_ {
        ServerApp::cleanup(self)
    }
}

#[async_trait]
impl<A: ConnectionApp> ServerApp for Guard<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let limits = self.state.load().limits.clone();
        let m = metrics::get();
        let counter = local_port(&stream).and_then(|p| self.open.get(&p));
        let _slot = match counter {
            Some(c) => {
                if c.fetch_add(1, Ordering::Relaxed) >= limits.max_connections {
                    c.fetch_sub(1, Ordering::Relaxed);
                    m.downstream_rejected
                        .with_label_values(&["max_connections"])
                        .inc();
                    log::debug!(
                        "listener full ({} connections), closing",
                        limits.max_connections
                    );
                    return None;
                }
                Some(Slot(c))
            }
            None => None,
        };
        let mut stream = stream;
        if limits.proxy_protocol && stream.get_ssl().is_none() {
            // Plain listeners: the header is read here. (TLS listeners read it before the
            // handshake, in `ProxyProtocolAccept`.)
            let Ok(mut l4) = stream.into_any().downcast::<L4Stream>() else {
                return None;
            };
            if accept_proxy_header(&mut l4, limits.header_timeout)
                .await
                .is_err()
            {
                return None;
            }
            stream = l4;
        }
        let mut guarded: Stream = Box::new(HeadDeadline::new(stream, limits.header_timeout));
        let mut next = self.inner.serve(guarded, shutdown).await;
        // Pingora hands a connection back only for custom protocols; keep serving it.
        while let Some(s) = next {
            guarded = s;
            next = self.inner.serve(guarded, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Read the PROXY header at the start of `l4` (within `limit`), put back what followed it,
/// and make its source the connection's peer address.
async fn accept_proxy_header(l4: &mut L4Stream, limit: Duration) -> Result<(), ()> {
    let m = metrics::get();
    let result = tokio::time::timeout(limit, read_proxy_header(l4)).await;
    let (header, rest) = match result {
        Ok(Ok(h)) => h,
        Ok(Err(why)) => {
            log::info!("closing a connection without a valid PROXY header: {why}");
            m.downstream_rejected
                .with_label_values(&["proxy_protocol"])
                .inc();
            return Err(());
        }
        Err(_) => {
            m.downstream_rejected
                .with_label_values(&["proxy_protocol_timeout"])
                .inc();
            return Err(());
        }
    };
    l4.rewind(&rest);
    if let Header::Proxied { source, dest } = header {
        let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
        let _ = digest.peer_addr.set(Some(PSocketAddr::Inet(source)));
        let _ = digest.local_addr.set(Some(PSocketAddr::Inet(dest)));
        l4.set_socket_digest(digest);
    }
    Ok(())
}

/// The header and any bytes read past it.
async fn read_proxy_header(l4: &mut L4Stream) -> Result<(Header, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        let n = l4.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed before the header ended".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((header, len)) = proxy_protocol::parse(&buf)? {
            return Ok((header, buf.split_off(len)));
        }
        if buf.len() > proxy_protocol::V2_MAX {
            return Err("header too long".into());
        }
    }
}

/// The PROXY header of TLS listeners, read before the handshake.
pub struct ProxyProtocolAccept {
    pub state: Arc<ArcSwap<Runtime>>,
}

#[async_trait]
impl PreTlsProcess for ProxyProtocolAccept {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let limits = self.state.load().limits.clone();
        if !limits.proxy_protocol {
            return Ok(());
        }
        accept_proxy_header(stream, limits.header_timeout)
            .await
            .map_err(|()| {
                pingora::Error::explain(pingora::ErrorType::AcceptError, "bad PROXY header")
            })
    }
}
