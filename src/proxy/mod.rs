//! The only `impl ProxyHttp`. Each phase is a few lines calling routing, policy, upstream and
//! respond. Imports: routing, policy, upstream, runtime (and pingora). Nothing here knows YAML.

mod ctx;
mod drain;
mod filter;
mod respond;

pub use ctx::Ctx;
pub use drain::watch_phases;

use crate::access_log::Entry;
use crate::acme::Challenges;
use crate::metrics::{self, Finished, RouteSeries};
use crate::policy::rewrite::with_query;
use crate::runtime::Runtime;
use crate::upstream::{Balance, HashKey};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::header;
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};
use std::fmt::Write as _;
use std::sync::Arc;

/// The HTTP proxy: reads the current [`Runtime`] from a shared swap slot.
pub struct Gatehouse {
    state: Arc<ArcSwap<Runtime>>,
    challenges: Arc<Challenges>,
}

impl Gatehouse {
    pub fn new(state: Arc<ArcSwap<Runtime>>, challenges: Arc<Challenges>) -> Self {
        Gatehouse { state, challenges }
    }
}

fn status_error(code: u16, why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(code), why)
}

/// Header names looked up or set on every request, parsed once.
const X_FORWARDED_FOR: header::HeaderName = header::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: header::HeaderName = header::HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: header::HeaderName = header::HeaderName::from_static("x-forwarded-proto");
const X_REAL_IP: header::HeaderName = header::HeaderName::from_static("x-real-ip");
const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");
/// The headers [`forwarded_headers`] may add.
const FORWARDED_HEADERS: usize = 6;

/// The error that sends a `retry_on` answer to another backend.
const RETRY_STATUS: ErrorType = ErrorType::Custom("retry_on status");

fn count_retry(ctx: &Ctx) {
    let pool = ctx.pool.as_ref().map_or("", |p| p.config.name.as_str());
    metrics::get().retries.with_label_values(&[pool]).inc();
}

/// Whether a request may be sent again: an idempotent method and a body (if any) still whole
/// in Pingora's retry buffer. A POST is never replayed.
fn may_replay(session: &Session) -> bool {
    session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated()
}

#[async_trait]
impl ProxyHttp for Gatehouse {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.state.load_full())
    }

    /// No downstream modules. Pingora's default is its response compression module, disabled
    /// (level 0): it did nothing but cost, per request, a context to build and four filter
    /// calls. gatehouse passes bodies through as the backend encoded them.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // Pingora waits forever for the next request on an HTTP/1.1 connection unless told
        // otherwise: bound it with `limits.keepalive_timeout`.
        if session.get_keepalive().is_some() {
            let idle = ctx.rt.limits.keepalive_timeout.as_secs().max(1);
            session.set_keepalive(Some(idle));
        }
        if filter::acme_challenge(session, ctx, &self.challenges).await? {
            return Ok(true);
        }
        filter::run(session, ctx).await
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx
            .route()
            .is_some_and(|r| ctx.body_bytes > r.policy.max_body_size)
        {
            session.set_keepalive(None);
            return Err(status_error(413, "request body larger than max_body_size"));
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let pool = ctx
            .pool
            .clone()
            .ok_or_else(|| status_error(500, "no pool for route"))?;
        let ip_key;
        let key: &[u8] = match &pool.config.balance {
            Balance::ConsistentHash(HashKey::ClientIp) => {
                ip_key = ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default();
                ip_key.as_bytes()
            }
            Balance::ConsistentHash(HashKey::Header(h)) => session.get_header_bytes(h),
            _ => b"",
        };
        let Some(addr) = pool.select(key, &ctx.tried) else {
            return Err(if ctx.tried.is_empty() {
                status_error(503, "no healthy backend")
            } else {
                status_error(502, "every backend tried failed")
            });
        };
        ctx.tried.push(addr);
        ctx.inflight = pool.track(addr);
        ctx.upstream_start = Some(std::time::Instant::now());
        Ok(Box::new(pool.config.peer(addr, session.is_upgrade_req())))
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        ctx.inflight = None;
        let mut e = e.more_context(format!("peer: {peer}"));
        let retry_status = e.etype() == &RETRY_STATUS;
        if !retry_status {
            if let (Some(pool), Some(addr)) = (&ctx.pool, ctx.tried.last()) {
                pool.record(*addr, false);
            }
        }
        // nginx `proxy_next_upstream error timeout`: the request may have reached the backend,
        // so only an idempotent one, whose body is still whole in the retry buffer and of which
        // nothing was sent to the client, is tried again, on another backend.
        let retry = ctx.pool.as_ref().is_some_and(|p| p.may_retry(&ctx.tried))
            && may_replay(session)
            && session.response_written().is_none();
        if retry {
            log::warn!("{e}; trying another backend");
            count_retry(ctx);
        }
        e.set_retry(retry);
        e
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.inflight = None;
        if let (Some(pool), Some(addr)) = (&ctx.pool, ctx.tried.last()) {
            pool.record(*addr, false);
        }
        // Nothing reached the backend yet, so any method may go to another one.
        let retry = ctx.pool.as_ref().is_some_and(|p| p.may_retry(&ctx.tried));
        log::warn!(
            "connect to {} failed: {}{}",
            peer,
            e.etype().as_str(),
            if retry {
                "; trying another backend"
            } else {
                ""
            }
        );
        if retry {
            count_retry(ctx);
        }
        e.set_retry(retry);
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (false, Some(start), Some(pool)) = (reused, ctx.upstream_start, &ctx.pool) {
            pool.series.connected(&pool.config.name, start.elapsed());
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        if let (Some(pool), Some(addr)) = (&ctx.pool, ctx.tried.last()) {
            pool.record(*addr, status < 500);
            // `retry_on`: nothing has reached the client yet, so an idempotent request whose
            // body is still in the retry buffer can go to another backend.
            if pool.config.retry_on.contains(&status)
                && pool.may_retry(&ctx.tried)
                && may_replay(session)
            {
                let mut e =
                    Error::explain(RETRY_STATUS, format!("backend {addr} answered {status}"));
                e.set_retry(true);
                return Err(e);
            }
        }
        if let (Some(start), Some(pool)) = (ctx.upstream_start, &ctx.pool) {
            let took = start.elapsed();
            ctx.upstream_time = Some(took);
            pool.series.responded(&pool.config.name, took);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // One step of growth for both of the (cloned, full) header maps, not several.
        let edits = ctx
            .route()
            .map_or(0, |r| r.policy.request_headers.additions());
        upstream.reserve_headers(FORWARDED_HEADERS + edits);
        if let Some(route) = ctx.route() {
            let rewritten = route.policy.rewrite.as_ref().map(|rw| {
                let path = ctx
                    .normalized_path
                    .as_deref()
                    .unwrap_or(upstream.uri.path());
                rw.apply(path)
            });
            if let Some(path) = rewritten.or_else(|| ctx.normalized_path.clone()) {
                let uri = with_query(&path, upstream.uri.query());
                let uri = http::Uri::try_from(uri)
                    .map_err(|_| status_error(400, "bad rewritten path"))?;
                upstream.set_uri(uri);
            }
            route.policy.request_headers.apply(upstream);
        }
        forwarded_headers(session, upstream, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        respond::prepare(session, resp, ctx);
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match (e.etype(), e.esource()) {
            (ErrorType::HTTPStatus(code), _) => *code,
            (
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
                ErrorSource::Upstream,
            ) => 504,
            (_, ErrorSource::Upstream) => 502,
            (
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
            ) => 0,
            (_, ErrorSource::Downstream) => 400,
            (_, ErrorSource::Internal | ErrorSource::Unset) => 500,
        };
        if code > 0 && session.response_written().is_none() {
            // The connection is not reused after a failure: say so, so that no client races
            // the close by sending its next request on it.
            session.set_keepalive(None);
            if let Err(err) = respond::error(session, ctx, code).await {
                log::debug!("could not send the {code} error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.inflight = None;
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let (route, series) = ctx.route().map_or(("none", RouteSeries::unrouted()), |r| {
            (r.name.as_str(), &r.series)
        });
        let elapsed = ctx.started.elapsed();
        series.record(
            route,
            Finished {
                method: &session.req_header().method,
                status,
                elapsed,
                bytes_in: session.body_bytes_read() as u64,
                bytes_out: session.body_bytes_sent() as u64,
            },
        );
        if let Some(log) = &ctx.rt.access_log {
            log.log(access_entry(session, ctx, status, elapsed));
        }
        if let Some(e) = e.filter(|_| log::log_enabled!(log::Level::Debug)) {
            log::debug!(
                "request {} on route {route} ended with {}",
                String::from_utf8_lossy(ctx.request_id.as_bytes()),
                e.etype().as_str()
            );
        }
    }
}

fn header_str(req: &RequestHeader, name: header::HeaderName) -> String {
    req.headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default()
}

fn access_entry(session: &Session, ctx: &Ctx, status: u16, elapsed: std::time::Duration) -> Entry {
    let req = session.req_header();
    let host = req
        .uri
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_else(|| header_str(req, header::HOST));
    let tls = session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .map(|s| s.version.to_string());
    Entry {
        // The wall clock is read only when there is a log to write.
        time: std::time::SystemTime::now()
            .checked_sub(elapsed)
            .unwrap_or(std::time::UNIX_EPOCH),
        client_ip: ctx.client_ip,
        host,
        method: req.method.to_string(),
        uri: req
            .uri
            .path_and_query()
            .map_or_else(|| req.uri.to_string(), |p| p.to_string()),
        protocol: match req.version {
            http::Version::HTTP_09 => "HTTP/0.9",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        },
        status,
        bytes_sent: session.body_bytes_sent(),
        duration: elapsed,
        upstream: ctx.tried.last().copied(),
        upstream_time: ctx.upstream_time,
        request_id: String::from_utf8_lossy(ctx.request_id.as_bytes()).into_owned(),
        route: ctx.route().map(|r| r.name.clone()).unwrap_or_default(),
        tls,
        referer: header_str(req, header::REFERER),
        user_agent: header_str(req, header::USER_AGENT),
    }
}

/// Append `ip` in its usual text form. IPv4 by hand: `Display` for `Ipv4Addr` goes through
/// the padding machinery of `fmt` (~1,100 instructions an address, measured with callgrind).
fn push_ip(buf: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push('.');
                }
                if octet >= 100 {
                    buf.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    buf.push(char::from(b'0' + octet / 10 % 10));
                }
                buf.push(char::from(b'0' + octet % 10));
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(buf, "{v6}");
        }
    }
}

/// X-Forwarded-For (the peer appended), X-Real-IP (the client), X-Forwarded-Proto,
/// X-Forwarded-Host, X-Request-Id; Host kept unless the pool overrides it.
fn forwarded_headers(session: &Session, upstream: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    if let Some(peer) = ctx.peer_ip {
        // Every X-Forwarded-For line the client sent, in order, then the peer (nginx
        // `$proxy_add_x_forwarded_for`).
        let mut xff = String::with_capacity(64);
        for prev in upstream.headers.get_all(&X_FORWARDED_FOR) {
            // A line that is not text is dropped.
            match prev.to_str().map(str::trim) {
                Ok("") | Err(_) => {}
                Ok(prev) => {
                    xff.push_str(prev);
                    xff.push_str(", ");
                }
            }
        }
        push_ip(&mut xff, peer);
        upstream.insert_header((&X_FORWARDED_FOR, "X-Forwarded-For"), xff)?;
    }
    if let Some(ip) = ctx.client_ip {
        let mut real = String::with_capacity(15);
        push_ip(&mut real, ip);
        upstream.insert_header((&X_REAL_IP, "X-Real-IP"), real)?;
    }
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let proto = if tls { "https" } else { "http" };
    upstream.insert_header((&X_FORWARDED_PROTO, "X-Forwarded-Proto"), proto)?;
    upstream.insert_header((&X_REQUEST_ID, "X-Request-Id"), ctx.request_id.clone())?;
    let req = session.req_header();
    let host = match req.uri.authority() {
        Some(a) => header::HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers.get(header::HOST).cloned(),
    };
    if let Some(host) = host {
        upstream.insert_header((&X_FORWARDED_HOST, "X-Forwarded-Host"), host.clone())?;
        if upstream.headers.get(header::HOST).is_none() {
            upstream.insert_header(header::HOST, host)?;
        }
    }
    if let Some(h) = ctx.pool.as_ref().and_then(|p| p.config.host_header.clone()) {
        upstream.insert_header(header::HOST, h)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::push_ip;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut samples: Vec<IpAddr> = ["::1", "2001:db8::7", "::ffff:10.0.0.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        for octet in 0..=255u8 {
            samples.push(IpAddr::V4(Ipv4Addr::new(octet, 255 - octet, octet / 3, 7)));
        }
        for ip in samples {
            let mut s = String::from("x, ");
            push_ip(&mut s, ip);
            assert_eq!(s, format!("x, {ip}"));
        }
    }
}
