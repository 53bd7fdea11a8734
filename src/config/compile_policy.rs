//! Spec -> policy values of one route: access lists, rate limits, header edits, rewrites and
//! redirects, each error with its YAML path. Imports: schema, policy.

use super::compile::Errs;
use super::schema::{
    AccessSpec, HeaderEditsSpec, PathSpec, RateLimitSpec, RedirectSpec, RewriteSpec, SizeSpec,
};
use crate::policy::access::CidrSet;
use crate::policy::{
    AccessList, HeaderEdits, Policy, RateKey, RateLimit, RateLimiter, Redirect, Rewrite,
};
use crate::runtime::Runtime;
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;

/// CIDRs or single addresses (`10.0.0.0/8`, `2001:db8::/32`, `1.2.3.4`).
pub(super) fn cidrs(list: &[String], at: &str, e: &mut Errs) -> CidrSet {
    let mut nets = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let raw = raw.trim();
        match raw.parse::<IpNet>().or_else(|_| raw.parse::<IpAddr>().map(IpNet::from)) {
            Ok(n) => nets.push(n),
            Err(_) => e.push(
                format!("{at}[{i}]"),
                format!("{raw:?} is not a CIDR or IP address; write e.g. \"10.0.0.0/8\" or \"2001:db8::/32\""),
            ),
        }
    }
    CidrSet::new(nets)
}

/// The policy of one path. `previous` lends its rate limiter state to an unchanged route.
/// A size in bytes: an integer, or a string with a `k`, `m` or `g` unit (powers of 1024).
pub(super) fn size(spec: &SizeSpec, at: &str, e: &mut Errs, default: u64) -> u64 {
    let parsed = match spec {
        SizeSpec::Bytes(n) => u64::try_from(*n).ok(),
        SizeSpec::Text(t) => {
            let t = t.trim().to_ascii_lowercase();
            let t = t.strip_suffix('b').unwrap_or(&t);
            let (num, mult) = match t.chars().last() {
                Some('k') => (&t[..t.len() - 1], 1u64 << 10),
                Some('m') => (&t[..t.len() - 1], 1 << 20),
                Some('g') => (&t[..t.len() - 1], 1 << 30),
                _ => (t, 1),
            };
            num.trim()
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(mult))
        }
    };
    match parsed {
        Some(n) if n > 0 => n,
        _ => {
            let shown = match spec {
                SizeSpec::Bytes(n) => n.to_string(),
                SizeSpec::Text(t) => format!("{t:?}"),
            };
            e.push(
                at,
                format!("{shown} is not a size; write bytes or e.g. \"512k\", \"10m\", \"1g\""),
            );
            default
        }
    }
}

pub(super) fn compile_policy(
    p: &PathSpec,
    at: &str,
    route_name: &str,
    previous: Option<&Runtime>,
    default_body: u64,
    e: &mut Errs,
) -> Policy {
    Policy {
        max_body_size: p.max_body_size.as_ref().map_or(default_body, |s| {
            size(s, &format!("{at}.max_body_size"), e, default_body)
        }),
        access: p
            .access
            .as_ref()
            .map(|a| access(a, &format!("{at}.access"), e)),
        rate_limit: p
            .rate_limit
            .as_ref()
            .and_then(|r| rate_limit(r, &format!("{at}.rate_limit"), e))
            .and_then(|cfg| limiter_for(cfg, route_name, previous)),
        request_headers: p
            .request_headers
            .as_ref()
            .map(|h| header_edits(h, &format!("{at}.request_headers"), e))
            .unwrap_or_default(),
        response_headers: p
            .response_headers
            .as_ref()
            .map(|h| header_edits(h, &format!("{at}.response_headers"), e))
            .unwrap_or_default(),
        rewrite: p
            .rewrite
            .as_ref()
            .and_then(|r| rewrite(r, &format!("{at}.rewrite"), e)),
    }
}

fn access(spec: &AccessSpec, at: &str, e: &mut Errs) -> AccessList {
    if spec.allow.is_empty() && spec.deny.is_empty() {
        e.push(at, "an access rule needs `allow` or `deny` entries");
    }
    AccessList {
        allow: cidrs(&spec.allow, &format!("{at}.allow"), e),
        deny: cidrs(&spec.deny, &format!("{at}.deny"), e),
    }
}

fn rate_limit(spec: &RateLimitSpec, at: &str, e: &mut Errs) -> Option<RateLimit> {
    let before = e.out.len();
    let rps = spec.requests_per_second;
    if !(0.001..=1_000_000.0).contains(&rps) {
        e.push(
            format!("{at}.requests_per_second"),
            format!("must be between 0.001 and 1000000, got {rps}"),
        );
    }
    let burst = match spec.burst.unwrap_or(0) {
        b @ 0..=1_000_000 => b as u32,
        b => {
            e.push(
                format!("{at}.burst"),
                format!("burst must be between 0 and 1000000, got {b}"),
            );
            0
        }
    };
    let key = match spec.key.as_deref().unwrap_or("client_ip") {
        "client_ip" => RateKey::ClientIp,
        "route" => RateKey::Route,
        other => match other
            .strip_prefix("header:")
            .map(|h| HeaderName::try_from(h.trim()))
        {
            Some(Ok(h)) => RateKey::Header(h),
            _ => {
                e.push(
                    format!("{at}.key"),
                    format!("{other:?}: write \"client_ip\", \"route\" or \"header:X-Api-Key\""),
                );
                RateKey::ClientIp
            }
        },
    };
    let cfg = RateLimit {
        requests_per_second: rps,
        burst,
        key,
    };
    if e.out.len() == before && RateLimiter::new(cfg.clone()).is_none() {
        e.push(
            at,
            format!("{rps} requests per second with burst {burst} cannot be represented"),
        );
    }
    (e.out.len() == before).then_some(cfg)
}

/// The limiter of a route: the previous one (with its counters) when the route and its limit
/// did not change across a reload, else a new one.
fn limiter_for(
    cfg: RateLimit,
    route_name: &str,
    previous: Option<&Runtime>,
) -> Option<Arc<RateLimiter>> {
    let old = previous.and_then(|rt| {
        rt.routes
            .iter()
            .filter(|r| r.name == route_name)
            .filter_map(|r| r.policy.rate_limit.as_ref())
            .find(|l| l.config == cfg)
            .cloned()
    });
    old.or_else(|| RateLimiter::new(cfg).map(Arc::new))
}

/// A `Name: value` map, each pair validated; errors at `{at}.{name}`.
pub(super) fn header_pairs(
    map: &std::collections::BTreeMap<String, String>,
    at: &str,
    e: &mut Errs,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for (k, v) in map {
        match (
            HeaderName::try_from(k.as_str()),
            HeaderValue::try_from(v.as_str()),
        ) {
            (Ok(n), Ok(v)) => out.push((n, v)),
            (Err(_), _) => e.push(
                format!("{at}.{k}"),
                format!("{k:?} is not a valid header name"),
            ),
            (_, Err(_)) => e.push(
                format!("{at}.{k}"),
                format!("{v:?} is not a valid header value"),
            ),
        }
    }
    out
}

pub(super) fn header_edits(spec: &HeaderEditsSpec, at: &str, e: &mut Errs) -> HeaderEdits {
    let add = header_pairs(&spec.add, &format!("{at}.add"), e);
    let set = header_pairs(&spec.set, &format!("{at}.set"), e);
    let mut remove = Vec::new();
    for (i, k) in spec.remove.iter().enumerate() {
        match HeaderName::try_from(k.as_str()) {
            Ok(n) => remove.push(n),
            Err(_) => e.push(
                format!("{at}.remove[{i}]"),
                format!("{k:?} is not a valid header name"),
            ),
        }
    }
    HeaderEdits { remove, set, add }
}

fn rewrite(spec: &RewriteSpec, at: &str, e: &mut Errs) -> Option<Rewrite> {
    let r = match (
        &spec.strip_prefix,
        &spec.replace_path,
        &spec.regex,
        &spec.replacement,
    ) {
        (Some(p), None, None, None) if p.starts_with('/') && p.len() > 1 => {
            Ok(Rewrite::StripPrefix(p.trim_end_matches('/').to_string()))
        }
        (Some(p), None, None, None) => Err(format!(
            "strip_prefix {p:?} must start with \"/\" and not be \"/\""
        )),
        (None, Some(p), None, None) if p.starts_with('/') && !p.contains(['?', '#', ' ']) => {
            Ok(Rewrite::ReplacePath(p.clone()))
        }
        (None, Some(p), None, None) => Err(format!(
            "replace_path {p:?} must start with \"/\" and have no '?', '#' or spaces"
        )),
        (None, None, Some(re), Some(rep)) => Rewrite::regex(re, rep),
        (None, None, Some(_), None) => {
            Err("`regex` needs a `replacement`, e.g. \"/new/$1\"".to_string())
        }
        _ => Err(
            "write exactly one of `strip_prefix`, `replace_path`, or `regex` with `replacement`"
                .to_string(),
        ),
    };
    r.map_err(|m| e.push(at, m)).ok()
}

pub(super) fn redirect(spec: &RedirectSpec, at: &str, e: &mut Errs) -> Option<Redirect> {
    let code = |default: u16| match spec.code {
        None => Ok(default),
        Some(c) => u16::try_from(c)
            .map_err(|_| format!("redirect code must be one of 301, 302, 307, 308, got {c}")),
    };
    let r = match (&spec.to, spec.https.unwrap_or(false)) {
        (Some(to), false) if spec.port.is_none() => code(301).and_then(|c| Redirect::to(to, c)),
        (None, true) => code(308).and_then(|c| Redirect::https(spec.port, c)),
        (Some(_), _) if spec.port.is_some() => {
            Err("`port` goes with `https: true`, not with `to`".to_string())
        }
        _ => Err("write either `to: <url>` or `https: true`".to_string()),
    };
    r.map_err(|m| e.push(at, m)).ok()
}
