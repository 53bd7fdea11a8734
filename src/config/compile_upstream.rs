//! Spec -> upstream pools: targets (resolved), balancing, health checks, passive health and
//! timeouts, each error with its YAML path. Imports: schema, upstream.

use super::compile::{positive, positive_duration, Errs};
use super::load::Sourced;
use super::schema::*;
use crate::routing::HostPattern;
use crate::upstream::{
    Balance, CaBundle, CheckKind, HashKey, HealthCheckConfig, Passive, PoolConfig, Protocol,
    Target, Timeouts, UpstreamTls,
};
use http::{HeaderName, HeaderValue};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

pub(super) fn compile_service(
    name: &str,
    src: &Sourced<ServiceSpec>,
    e: &mut Errs,
) -> Option<PoolConfig> {
    let base = src.file.parent().unwrap_or(Path::new("."));
    let spec = &src.spec;
    let at = |k: &str| format!("{}.{k}", src.yaml_path);
    let before = e.out.len();
    let targets = compile_targets(&spec.targets, &at("targets"), e);
    let balance = match spec.balance.unwrap_or(BalanceSpec::RoundRobin) {
        BalanceSpec::RoundRobin => Balance::RoundRobin,
        BalanceSpec::Random => Balance::Random,
        BalanceSpec::LeastConnections => Balance::LeastConnections,
        BalanceSpec::ConsistentHash => match spec.hash_key.as_deref().unwrap_or("client_ip") {
            "client_ip" => Balance::ConsistentHash(HashKey::ClientIp),
            other => match other
                .strip_prefix("header:")
                .map(|h| HeaderName::try_from(h.trim()))
            {
                Some(Ok(h)) => Balance::ConsistentHash(HashKey::Header(h)),
                _ => {
                    e.push(
                        at("hash_key"),
                        format!("{other:?}: write \"client_ip\" or \"header:X-User-Id\""),
                    );
                    Balance::RoundRobin
                }
            },
        },
    };
    if spec.hash_key.is_some()
        && !matches!(balance, Balance::ConsistentHash(_))
        && e.out.len() == before
    {
        e.push(
            at("hash_key"),
            "hash_key only applies to balance: consistent_hash",
        );
    }
    let health_check = spec
        .health_check
        .as_ref()
        .and_then(|h| compile_check(h, &at("health_check"), e));
    let retries = match spec.retries {
        None => 2,
        Some(n) if (0..=16).contains(&n) => n as usize,
        Some(n) => {
            e.push(
                at("retries"),
                format!("retries must be between 0 and 16, got {n}"),
            );
            0
        }
    };
    let timeouts = compile_timeouts(&spec.timeouts, &at("timeouts"), e);
    let host_header = spec
        .host_header
        .as_ref()
        .and_then(|h| match HeaderValue::from_str(h) {
            Ok(v) => Some(v),
            Err(_) => {
                e.push(
                    at("host_header"),
                    format!("{h:?} is not a valid header value"),
                );
                None
            }
        });
    let passive = compile_passive(spec.passive_health.as_ref(), &at("passive_health"), e);
    let tls = spec
        .tls
        .as_ref()
        .and_then(|t| compile_upstream_tls(t, host_header.as_ref(), base, &at("tls"), e));
    let protocol = match (spec.protocol.as_deref().unwrap_or("http1"), tls.is_some()) {
        ("http1", _) => Protocol::Http1,
        ("h2", true) | ("h2c", false) => Protocol::H2,
        ("auto", true) => Protocol::Auto,
        ("h2", false) => {
            e.push(
                at("protocol"),
                "h2 is negotiated over TLS: add `tls:`, or write h2c for cleartext HTTP/2",
            );
            Protocol::Http1
        }
        ("h2c", true) => {
            e.push(
                at("protocol"),
                "h2c is cleartext HTTP/2: write h2 for HTTP/2 over TLS",
            );
            Protocol::Http1
        }
        ("auto", false) => {
            e.push(
                at("protocol"),
                "auto picks h2 or HTTP/1.1 by TLS ALPN: add `tls:`, or choose http1 or h2c",
            );
            Protocol::Http1
        }
        (other, _) => {
            e.push(
                at("protocol"),
                format!("{other:?}: write http1, h2, h2c or auto"),
            );
            Protocol::Http1
        }
    };
    let mut retry_on = Vec::new();
    for (i, s) in spec.retry_on.iter().enumerate() {
        match u16::try_from(*s) {
            Ok(s @ 500..=599) => retry_on.push(s),
            _ => e.push(
                format!("{}[{i}]", at("retry_on")),
                format!("{s} is not a 5xx status; write e.g. [502, 503, 504]"),
            ),
        }
    }
    (e.out.len() == before).then(|| PoolConfig {
        protocol,
        tls,
        retry_on,
        passive,
        name: name.to_string(),
        targets,
        balance,
        health_check,
        retries,
        timeouts,
        host_header,
    })
}

fn compile_upstream_tls(
    spec: &UpstreamTlsSpec,
    host_header: Option<&HeaderValue>,
    base: &Path,
    at: &str,
    e: &mut Errs,
) -> Option<UpstreamTls> {
    let verify = spec.verify.unwrap_or(true);
    let sni = match (&spec.sni, host_header.and_then(|h| h.to_str().ok())) {
        (Some(s), _) => {
            if HostPattern::parse(s).is_err() || s.contains('*') {
                e.push(format!("{at}.sni"), format!("{s:?} is not a host name"));
            }
            s.to_ascii_lowercase()
        }
        (None, Some(h)) => h.split(':').next().unwrap_or(h).to_ascii_lowercase(),
        (None, None) => String::new(),
    };
    if verify && sni.is_empty() {
        e.push(
            format!("{at}.sni"),
            "verification needs the name the backends' certificates carry: set `sni` (or \
             `host_header`), or `verify: false`",
        );
    }
    let ca = match &spec.ca {
        None => None,
        Some(c) => match CaBundle::load(&base.join(c)) {
            Ok(b) => Some(b),
            Err(m) => {
                e.push(format!("{at}.ca"), m);
                None
            }
        },
    };
    Some(UpstreamTls { sni, verify, ca })
}

fn compile_passive(spec: Option<&PassiveSpec>, at: &str, e: &mut Errs) -> Option<Passive> {
    let d = Passive::default();
    match spec {
        None => Some(d),
        Some(PassiveSpec::Off(s)) if s == "off" => None,
        Some(PassiveSpec::Off(s)) => {
            e.push(
                at,
                format!("{s:?}: write `off` or {{ failures: 3, eject_for: 10s }}"),
            );
            None
        }
        Some(PassiveSpec::On {
            failures,
            eject_for,
        }) => {
            let failures = e.take(
                positive(*failures, 3, "failures"),
                format!("{at}.failures"),
                3,
            );
            let eject_for = positive_duration(eject_for, d.eject_for);
            let eject_for = e.take(eject_for, format!("{at}.eject_for"), d.eject_for);
            Some(Passive {
                failures: u32::try_from(failures).unwrap_or(u32::MAX),
                eject_for,
            })
        }
    }
}

fn compile_targets(specs: &[TargetSpec], at: &str, e: &mut Errs) -> Vec<Target> {
    if specs.is_empty() {
        e.push(
            at,
            "a service needs at least one target, e.g. targets: [\"127.0.0.1:8080\"]",
        );
    }
    let mut out: Vec<Target> = Vec::new();
    for (i, t) in specs.iter().enumerate() {
        let (address, weight) = match t {
            TargetSpec::Address(a) => (a, None),
            TargetSpec::Weighted(w) => (&w.address, w.weight),
        };
        let path = format!("{at}[{i}]");
        let weight = match positive(weight, 1, "weight") {
            Ok(w) if w <= 1000 => w,
            Ok(w) => {
                e.push(
                    format!("{path}.weight"),
                    format!("weight must be at most 1000, got {w}"),
                );
                continue;
            }
            Err(m) => {
                e.push(format!("{path}.weight"), m);
                continue;
            }
        };
        match resolve(address) {
            Ok(addrs) => {
                for addr in addrs {
                    if out.iter().any(|t| t.addr == addr) {
                        e.push(&path, format!("{addr} is listed twice in this service"));
                    } else {
                        out.push(Target { addr, weight });
                    }
                }
            }
            Err(m) => e.push(&path, m),
        }
    }
    out
}

/// `IP:port` parses directly; `host:port` is resolved here (compile runs off the async runtime).
fn resolve(address: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!(
            "{address:?} has no port; write \"host:port\", e.g. \"10.0.0.1:8080\""
        ));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("{address:?} is not a valid host:port address"));
    }
    let mut addrs: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve {address:?}: {err}"))?
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("{address:?} resolved to no address"));
    }
    Ok(addrs)
}

fn compile_check(spec: &HealthCheckSpec, at: &str, e: &mut Errs) -> Option<HealthCheckConfig> {
    let before = e.out.len();
    let kind = match (&spec.tcp, &spec.http) {
        (Some(_), Some(_)) => {
            e.push(at, "choose one of `tcp` or `http`, not both");
            CheckKind::Tcp
        }
        (_, Some(h)) => {
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.contains(char::is_whitespace) {
                e.push(
                    format!("{at}.http.path"),
                    format!("{path:?} must start with \"/\" and have no spaces"),
                );
            }
            let expect = parse_status_range(h.expect.as_deref().unwrap_or("200-399"));
            let expect = e.take(expect, format!("{at}.http.expect"), 200..=399);
            CheckKind::Http {
                path,
                expect,
                host: h.host.clone(),
            }
        }
        _ => CheckKind::Tcp,
    };
    let interval = positive_duration(&spec.interval, Duration::from_secs(5));
    let interval = e.take(interval, format!("{at}.interval"), Duration::ZERO);
    let timeout = positive_duration(&spec.timeout, Duration::from_secs(1));
    let timeout = e.take(timeout, format!("{at}.timeout"), Duration::ZERO);
    let rise = e.take(positive(spec.rise, 2, "rise"), format!("{at}.rise"), 1);
    let fall = e.take(positive(spec.fall, 3, "fall"), format!("{at}.fall"), 1);
    (e.out.len() == before).then_some(HealthCheckConfig {
        kind,
        interval,
        timeout,
        rise,
        fall,
    })
}

pub(super) fn parse_status_range(raw: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let bad = || format!("{raw:?} is not a status range; write e.g. \"200-399\" or \"204\"");
    let (lo, hi) = raw.split_once('-').unwrap_or((raw, raw));
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
        return Err(bad());
    }
    Ok(lo..=hi)
}

fn compile_timeouts(spec: &TimeoutsSpec, at: &str, e: &mut Errs) -> Timeouts {
    let d = Timeouts::default();
    let mut one = |raw: &Option<String>, key: &str, default: Duration| {
        e.take(
            positive_duration(raw, default),
            format!("{at}.{key}"),
            default,
        )
    };
    Timeouts {
        connect: one(&spec.connect, "connect", d.connect),
        read: one(&spec.read, "read", d.read),
        write: one(&spec.write, "write", d.write),
        idle: one(&spec.idle, "idle", d.idle),
        websocket_idle: one(&spec.websocket_idle, "websocket_idle", d.websocket_idle),
    }
}
