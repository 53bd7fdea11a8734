//! Per-request state shared by the proxy phases.

use crate::routing::RouteId;
use crate::runtime::{Route, Runtime};
use crate::upstream::{InflightGuard, Pool};
use http::HeaderValue;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// Counts a request in `gatehouse_requests_in_flight` for as long as it lives.
pub struct InFlight;

impl InFlight {
    fn new() -> Self {
        crate::metrics::get().requests_in_flight.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        crate::metrics::get().requests_in_flight.dec();
    }
}

/// What one request carries from phase to phase. It holds one `Runtime` snapshot, so the
/// whole request sees one configuration even if a reload happens meanwhile.
pub struct Ctx {
    pub rt: Arc<Runtime>,
    pub route: Option<RouteId>,
    pub pool: Option<Arc<Pool>>,
    /// The TCP peer.
    pub peer_ip: Option<IpAddr>,
    /// The client: the peer, or from X-Forwarded-For when the peer is a trusted proxy.
    pub client_ip: Option<IpAddr>,
    /// Empty until the request is identified.
    pub request_id: HeaderValue,
    /// The normalised path, when it differs from the request's.
    pub normalized_path: Option<String>,
    /// Backends already tried by this request, in order.
    pub tried: Vec<SocketAddr>,
    /// Counts this request against the backend it is talking to.
    pub inflight: Option<InflightGuard>,
    /// When the request head was in (the access log's time is derived from it).
    pub started: Instant,
    /// When the current upstream attempt began, and when its response header arrived.
    pub upstream_start: Option<Instant>,
    pub upstream_time: Option<std::time::Duration>,
    /// Request body bytes read so far (for the body size limit of chunked bodies).
    pub body_bytes: u64,
    _in_flight: InFlight,
}

impl Ctx {
    pub fn new(rt: Arc<Runtime>) -> Self {
        Ctx {
            rt,
            route: None,
            pool: None,
            peer_ip: None,
            client_ip: None,
            request_id: HeaderValue::from_static(""),
            normalized_path: None,
            tried: Vec::new(),
            inflight: None,
            started: Instant::now(),
            upstream_start: None,
            upstream_time: None,
            body_bytes: 0,
            _in_flight: InFlight::new(),
        }
    }

    pub fn route(&self) -> Option<&Route> {
        self.route.map(|id| self.rt.route(id))
    }
}
