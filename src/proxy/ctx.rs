//! Per-request state shared by the proxy phases.

use crate::routing::RouteId;
use crate::runtime::Runtime;
use crate::upstream::{InflightGuard, Pool};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What one request carries from phase to phase. It holds one `Runtime` snapshot, so the
/// whole request sees one configuration even if a reload happens meanwhile.
pub struct Ctx {
    pub rt: Arc<Runtime>,
    pub route: Option<RouteId>,
    pub pool: Option<Arc<Pool>>,
    pub client_ip: Option<IpAddr>,
    /// Backends already tried by this request, in order.
    pub tried: Vec<SocketAddr>,
    /// Counts this request against the backend it is talking to.
    pub inflight: Option<InflightGuard>,
}

impl Ctx {
    pub fn new(rt: Arc<Runtime>) -> Self {
        Ctx {
            rt,
            route: None,
            pool: None,
            client_ip: None,
            tried: Vec::new(),
            inflight: None,
        }
    }
}
