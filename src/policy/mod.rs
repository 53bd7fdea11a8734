//! Per-route request policy: client IP, access lists, rate limits, header edits, rewrites,
//! redirects, path normalisation and request ids.
//!
//! Each piece takes plain values (IpAddr, &str, header maps) and returns a decision; none
//! touches the pingora Session, so each is unit-tested and benchmarked alone.
//! Imports: ipnet, regex, ahash, http.

pub mod access;
pub mod client_ip;
pub mod headers;
pub mod normalize;
pub mod rate_limit;
pub mod redirect;
pub mod request_id;
pub mod rewrite;

pub use access::AccessList;
pub use client_ip::TrustedProxies;
pub use headers::HeaderEdits;
pub use rate_limit::{RateKey, RateLimit, RateLimiter};
pub use redirect::Redirect;
pub use rewrite::Rewrite;

use std::sync::Arc;

/// Everything a route enforces besides where it sends the request.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    pub access: Option<AccessList>,
    pub rate_limit: Option<Arc<RateLimiter>>,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub rewrite: Option<Rewrite>,
    /// Largest request body accepted (413 above it).
    pub max_body_size: u64,
}
