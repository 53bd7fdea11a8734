//! The steps of `request_filter`, in order: client IP and request id, path normalisation,
//! the listener's https redirect, routing, access control, rate limit, then the route's own
//! answer (redirect or direct response) or on to the upstream.

use super::{respond, Ctx};
use crate::acme::Challenges;
use crate::policy::{normalize::normalize, request_id, RateKey};
use crate::routing::normalize_host;
use crate::runtime::RouteAction;
use http::{header, HeaderName, HeaderValue};
use pingora::prelude::*;
use pingora::proxy::Session;
use std::borrow::Cow;

/// Prefix answered for ACME before anything else; never redirected.
pub const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// Answer `/.well-known/acme-challenge/<token>` for any host, before routing and policy.
/// `Ok(true)` when it was such a request (answered 200 with the key authorization, or 404).
pub async fn acme_challenge(
    session: &mut Session,
    ctx: &mut Ctx,
    challenges: &Challenges,
) -> Result<bool> {
    let Some(token) = session.req_header().uri.path().strip_prefix(ACME_CHALLENGE) else {
        return Ok(false);
    };
    if challenges.is_empty() {
        return Ok(false); // no order waits: the path is the routes' to answer
    }
    identify(session, ctx);
    match challenges.get(token) {
        Some(key_auth) => {
            let ct = (header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            respond::send(session, ctx, 200, &[ct], key_auth.into()).await?;
        }
        None => respond::error(session, ctx, 404).await?,
    }
    Ok(true)
}

/// Run the whole filter. `Ok(true)` means a response was sent.
pub async fn run(session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    identify(session, ctx);
    if ambiguous_framing(session) {
        // Never forward a request whose end two parsers could see differently.
        session.set_keepalive(None);
        respond::error(session, ctx, 400).await?;
        return Ok(true);
    }
    let req = session.req_header();
    let header_size: usize = req.raw_path().len()
        + req
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if header_size as u64 > ctx.rt.max_header_size {
        session.set_keepalive(None);
        respond::error(session, ctx, 431).await?;
        return Ok(true);
    }
    let path = match normalize(req.uri.path()) {
        Ok(Cow::Borrowed(_)) => req.uri.path().to_string(),
        Ok(Cow::Owned(p)) => {
            ctx.normalized_path = Some(p.clone());
            p
        }
        Err(e) => {
            log::debug!("refused path {:?}: {e:?}", req.uri.path());
            respond::error(session, ctx, 400).await?;
            return Ok(true);
        }
    };
    let Ok(raw_host) = request_host(session) else {
        respond::error(session, ctx, 400).await?;
        return Ok(true);
    };
    let host = raw_host
        .and_then(|h| normalize_host(h).ok())
        .map(Cow::into_owned);
    if let Some(r) = ctx
        .rt
        .https_redirect
        .as_ref()
        .filter(|_| !path.starts_with(ACME_CHALLENGE))
    {
        let Some(host) = host else {
            respond::error(session, ctx, 400).await?;
            return Ok(true);
        };
        let location = r.location(&host, &path, session.req_header().uri.query());
        let code = r.code.as_u16();
        respond::redirect(session, ctx, code, location).await?;
        return Ok(true);
    }
    let Some(route) = ctx.rt.router.route(host.as_deref(), &path) else {
        // Without a usable host only a catch-all could have matched: the host is the fault.
        let status = if host.is_none() { 400 } else { 404 };
        respond::error(session, ctx, status).await?;
        return Ok(true);
    };
    ctx.route = Some(route);
    if enforce(session, ctx).await? {
        return Ok(true);
    }
    let limit = ctx.rt.route(route).policy.max_body_size;
    let declared = session.req_header().headers.get(header::CONTENT_LENGTH);
    if declared
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .is_some_and(|n| n > limit)
    {
        // The body will not be read: close after answering.
        session.set_keepalive(None);
        respond::error(session, ctx, 413).await?;
        return Ok(true);
    }
    let rt = ctx.rt.clone();
    match &rt.route(route).action {
        RouteAction::Proxy(pool) => {
            ctx.pool = Some(rt.pool(*pool).clone());
            Ok(false)
        }
        RouteAction::Respond(d) => {
            respond::send(session, ctx, d.status.as_u16(), &d.headers, d.body.clone()).await?;
            Ok(true)
        }
        RouteAction::Redirect(r) => {
            let query = session.req_header().uri.query();
            let location = r.location(host.as_deref().unwrap_or(""), &path, query);
            respond::redirect(session, ctx, r.code.as_u16(), location).await?;
            Ok(true)
        }
    }
}

/// Request smuggling guards Pingora leaves to us: both Content-Length and Transfer-Encoding
/// (RFC 9112 lets a proxy reject it, and gatehouse does), more than one Content-Length value
/// (Pingora reconciles equal ones and passes the field on as it came, which a backend may
/// refuse or read otherwise), and header lines ended by a bare LF (which a backend might split
/// differently). Pingora itself refuses differing or invalid Content-Length, unknown transfer
/// codings and malformed chunks.
fn ambiguous_framing(session: &Session) -> bool {
    // Read the bytes as received: Pingora already dropped Content-Length from the parsed
    // headers when Transfer-Encoding is present.
    let Some(h1) = session.as_downstream().as_http1() else {
        return false;
    };
    let raw = h1.get_headers_raw_bytes();
    // One pass over the lines: any not ended by CRLF, how many Content-Length values there
    // are, and whether Transfer-Encoding is there too.
    let (mut cl, mut te) = (0, false);
    let mut start = 0;
    for (i, &b) in raw.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        if i == 0 || raw[i - 1] != b'\r' {
            return true;
        }
        let line = &raw[start..i];
        let starts =
            |name: &[u8]| line.len() > name.len() && line[..name.len()].eq_ignore_ascii_case(name);
        if starts(b"content-length:") {
            // A list counts as several values, even when they agree (as nginx: one value).
            cl += 1 + line.iter().filter(|&&c| c == b',').count();
        }
        te |= starts(b"transfer-encoding:");
        start = i + 1;
    }
    cl > 1 || (cl == 1 && te)
}

/// The client IP (trusted proxies only) and the request id.
fn identify(session: &Session, ctx: &mut Ctx) {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical());
    ctx.peer_ip = peer;
    let req = session.req_header();
    ctx.client_ip = peer.map(|p| {
        let xff = req
            .headers
            .get_all(&super::X_FORWARDED_FOR)
            .iter()
            .map(HeaderValue::as_bytes);
        ctx.rt.trusted_proxies.client_ip(p, xff)
    });
    ctx.request_id = match req.headers.get(&super::X_REQUEST_ID) {
        Some(v) if request_id::is_valid(v.as_bytes()) => v.clone(),
        _ => request_id::generate(),
    };
}

/// The raw host: the absolute URI's authority, else the Host header. `Err` when there are
/// two Host headers (ambiguous: never guess).
fn request_host(session: &Session) -> std::result::Result<Option<&[u8]>, ()> {
    let req = session.req_header();
    if let Some(a) = req.uri.authority() {
        return Ok(Some(a.as_str().as_bytes()));
    }
    let mut hosts = req.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(h), None) => Ok(Some(h.as_bytes())),
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(()),
    }
}

/// Access control (403) and rate limit (429). `Ok(true)` when the request was refused.
async fn enforce(session: &mut Session, ctx: &Ctx) -> Result<bool> {
    let Some(route) = ctx.route() else {
        return Ok(false);
    };
    let policy = &route.policy;
    if let (Some(acl), Some(ip)) = (&policy.access, ctx.client_ip) {
        if !acl.permits(ip) {
            log::debug!("{ip} denied by the access list of {}", route.name);
            crate::metrics::get()
                .access_denied
                .with_label_values(&[&route.name])
                .inc();
            respond::error(session, ctx, 403).await?;
            return Ok(true);
        }
    }
    let Some(limiter) = &policy.rate_limit else {
        return Ok(false);
    };
    // Counted at the request's arrival, already read for the access log.
    let at = ctx.started;
    let verdict = match &limiter.config.key {
        RateKey::ClientIp => match ctx.client_ip {
            Some(ip) => limiter.check_ip(ip, at),
            None => limiter.check_bytes(b"", at),
        },
        RateKey::Header(h) => limiter.check_bytes(session.get_header_bytes(h), at),
        RateKey::Route => limiter.check_bytes(b"", at),
    };
    let Err(wait) = verdict else { return Ok(false) };
    crate::metrics::get()
        .rate_limited
        .with_label_values(&[&route.name])
        .inc();
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let num = |n: u64| HeaderValue::from(n);
    let headers = vec![
        (header::RETRY_AFTER, num(secs.max(1))),
        (
            HeaderName::from_static("ratelimit-limit"),
            num(u64::from(limiter.config.capacity())),
        ),
        (HeaderName::from_static("ratelimit-remaining"), num(0)),
        (HeaderName::from_static("ratelimit-reset"), num(secs.max(1))),
    ];
    respond::error_with(session, ctx, 429, headers).await?;
    Ok(true)
}
