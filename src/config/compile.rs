//! Spec -> Runtime: resolve names, parse addresses, durations, headers and regexes, and collect
//! EVERY error with its file and YAML path. After this, runtime code meets no strings where a
//! type fits. Imports: schema, routing, upstream, runtime.

use super::compile_policy::{cidrs, compile_policy, header_pairs, redirect, size};
use super::compile_tls::{compile_acme, compile_tls};
use super::compile_upstream::compile_service;
use super::load::{Loaded, Sourced};
use super::schema::*;
use super::{ConfigError, ConfigErrors};
use crate::access_log::{self, AccessLog, AccessLogConfig, Format};
use crate::downstream::DownstreamLimits;
use crate::policy::Policy;
use crate::policy::TrustedProxies;
use crate::routing::{HostPattern, PathPattern, RouteId, Router};
use crate::runtime::{DirectResponse, Route, RouteAction, Runtime, ServerSettings};
use crate::stream::ProxyVersion;
use crate::stream::StreamConfig;
use crate::upstream::{Pool, PoolId};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// nginx's `client_max_body_size` is 1 MiB; uploads through an edge proxy are often larger.
const DEFAULT_MAX_BODY: u64 = 100 << 20;
/// Request line and headers together, like nginx's `large_client_header_buffers 4 8k`.
const DEFAULT_MAX_HEADER: u64 = 32 << 10;

/// Collects errors for one file.
pub(super) struct Errs<'a> {
    pub file: &'a Path,
    pub out: &'a mut Vec<ConfigError>,
}

impl Errs<'_> {
    pub fn push(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.out.push(ConfigError::at(self.file, path, msg));
    }

    /// The value, or the default after recording the error at `path`.
    pub fn take<T>(&mut self, r: Result<T, String>, path: impl Into<String>, default: T) -> T {
        r.unwrap_or_else(|m| {
            self.push(path, m);
            default
        })
    }
}

/// Parse a duration like `500ms`, `30s`, `5m`, `30d`.
pub fn duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw.trim()).map_err(|e| {
        format!("{raw:?} is not a duration ({e}); write e.g. \"500ms\", \"30s\", \"5m\"")
    })
}

pub(super) fn positive_duration(
    raw: &Option<String>,
    default: Duration,
) -> Result<Duration, String> {
    match raw {
        None => Ok(default),
        Some(r) => match duration(r)? {
            d if d.is_zero() => Err(format!("{r:?} must be greater than zero")),
            d => Ok(d),
        },
    }
}

pub(super) fn positive(raw: Option<i64>, default: usize, what: &str) -> Result<usize, String> {
    match raw {
        None => Ok(default),
        Some(n) if n >= 1 => usize::try_from(n).map_err(|_| format!("{what} {n} is too large")),
        Some(n) => Err(format!("{what} must be at least 1, got {n}")),
    }
}

/// Compile a loaded configuration. Pools whose configuration equals one in `previous` are
/// carried over (with their health state) instead of rebuilt.
pub fn compile(loaded: &Loaded, previous: Option<&Runtime>) -> Result<Runtime, ConfigErrors> {
    let mut errors = Vec::new();
    let main = &loaded.main;
    let mut e = Errs {
        file: &loaded.main_file,
        out: &mut errors,
    };
    let server = compile_server(&main.server, &mut e);
    let listen_http = compile_listen(&main.listen, &mut e);
    let trusted = cidrs(
        &main.client_ip.trusted_proxies,
        "client_ip.trusted_proxies",
        &mut e,
    );
    let admin = compile_admin(main.admin.as_deref(), &mut e);
    let listen_https = compile_addrs(&main.listen.https, "listen.https", &mut e);
    let mut warnings = Vec::new();
    let (tls_preset, certificates) =
        compile_tls(&main.tls, &loaded.main_file, &mut e, &mut warnings);
    if !listen_https.is_empty() && certificates.is_empty() {
        warnings.push(
            "HTTPS listeners but no certificate: every handshake gets the self-signed fallback"
                .into(),
        );
    }
    let access_log = compile_access_log(main.access_log.as_ref(), previous, &mut e);
    let log_level = match main
        .log_level
        .as_deref()
        .unwrap_or("info")
        .parse::<log::LevelFilter>()
    {
        Ok(l) => l,
        Err(_) => {
            e.push(
                "log_level",
                "write one of off, error, warn, info, debug, trace",
            );
            log::LevelFilter::Info
        }
    };

    let mut pool_ids = HashMap::new();
    let mut pool_configs = Vec::new();
    for (name, src) in &loaded.services {
        let mut e = Errs {
            file: &src.file,
            out: &mut errors,
        };
        if let Some(cfg) = compile_service(name, src, &mut e) {
            pool_ids.insert(name.clone(), PoolId(pool_configs.len() as u32));
            pool_configs.push(cfg);
        }
    }
    let known: Vec<&str> = loaded.services.keys().map(String::as_str).collect();
    let mut e = Errs {
        file: &loaded.main_file,
        out: &mut errors,
    };
    let limits = &main.limits;
    let max_body_size = limits.max_body_size.as_ref().map_or(DEFAULT_MAX_BODY, |s| {
        size(s, "limits.max_body_size", &mut e, DEFAULT_MAX_BODY)
    });
    let max_header_size = limits
        .max_header_size
        .as_ref()
        .map_or(DEFAULT_MAX_HEADER, |s| {
            size(s, "limits.max_header_size", &mut e, DEFAULT_MAX_HEADER)
        });
    let defaults = DownstreamLimits::default();
    let mut dur = |raw: &Option<String>, key: &str, default: Duration| {
        positive_duration(raw, default).unwrap_or_else(|m| {
            e.push(format!("limits.{key}"), m);
            default
        })
    };
    let header_timeout = dur(
        &limits.header_timeout,
        "header_timeout",
        defaults.header_timeout,
    );
    let keepalive_timeout = dur(
        &limits.keepalive_timeout,
        "keepalive_timeout",
        defaults.keepalive_timeout,
    );
    let max_connections = positive(
        limits.max_connections,
        defaults.max_connections,
        "max_connections",
    )
    .unwrap_or_else(|m| {
        e.push("limits.max_connections", m);
        defaults.max_connections
    });
    let downstream = DownstreamLimits {
        header_timeout,
        keepalive_timeout,
        max_connections,
        proxy_protocol: main.listen.proxy_protocol,
    };
    let ctx = RouteCtx {
        pool_ids: &pool_ids,
        known_services: &known,
        previous,
        max_body_size,
    };
    let (router, routes) = compile_ingresses(&loaded.ingresses, &ctx, &mut errors);
    let mut e = Errs {
        file: &loaded.main_file,
        out: &mut errors,
    };
    let http_listeners: Vec<SocketAddr> =
        listen_http.iter().chain(&listen_https).copied().collect();
    let streams = compile_streams(&main.streams, &pool_ids, &known, &http_listeners, &mut e);

    let mut pools = Vec::with_capacity(pool_configs.len());
    for cfg in pool_configs {
        let reused = previous
            .and_then(|p| p.pools.iter().find(|old| old.config == cfg))
            .cloned();
        match reused {
            Some(pool) => pools.push(pool),
            None => {
                let src = &loaded.services[&cfg.name];
                match Pool::new(cfg) {
                    Ok(p) => pools.push(Arc::new(p)),
                    Err(msg) => errors.push(ConfigError::at(&src.file, &src.yaml_path, msg)),
                }
            }
        }
    }
    let acme = compile_acme(
        main.tls.acme.as_ref(),
        &loaded.ingresses,
        &mut errors,
        &loaded.main_file,
        !listen_https.is_empty(),
    );
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    for (name, id) in &pool_ids {
        let used = routes
            .iter()
            .any(|r| matches!(r.action, RouteAction::Proxy(p) if p == *id))
            || streams.iter().any(|s| s.pool == *id);
        if !used {
            warnings.push(format!("service {name:?} is not used by any route"));
        }
    }
    warnings.sort();
    Ok(Runtime {
        version: loaded.hash,
        loaded_at: SystemTime::now(),
        files: loaded.files.clone(),
        listen_http,
        listen_https,
        tls_preset,
        certificates,
        acme,
        max_header_size,
        limits: downstream,
        streams,
        https_redirect: main
            .listen
            .https_redirect
            .then(|| crate::policy::Redirect::https(None, 308).ok())
            .flatten(),
        trusted_proxies: TrustedProxies::new(trusted),
        admin,
        access_log,
        log_level,
        server: server.unwrap_or_else(default_server),
        router,
        routes,
        pools,
        warnings,
    })
}

fn default_server() -> ServerSettings {
    ServerSettings {
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        work_stealing: true,
        grace_period: Duration::from_secs(5),
        shutdown_timeout: Duration::from_secs(10),
        pid_file: PathBuf::from("/tmp/gatehouse.pid"),
        upgrade_sock: PathBuf::from("/tmp/gatehouse_upgrade.sock"),
        upstream_keepalive_pool_size: 128,
        error_log: None,
    }
}

fn compile_streams(
    specs: &[StreamSpec],
    pool_ids: &HashMap<String, PoolId>,
    known: &[&str],
    http: &[SocketAddr],
    e: &mut Errs,
) -> Vec<StreamConfig> {
    let mut out: Vec<StreamConfig> = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let at = format!("streams[{i}]");
        let before = e.out.len();
        if out.iter().any(|o| o.name == s.name) {
            e.push(
                format!("{at}.name"),
                format!("stream name {:?} is used twice", s.name),
            );
        }
        let listen = s.listen.parse::<SocketAddr>().map_err(|_| {
            e.push(
                format!("{at}.listen"),
                format!("{:?} is not an IP:port address", s.listen),
            )
        });
        if let Ok(l) = listen {
            if http.contains(&l) || out.iter().any(|o| o.listen == l) {
                e.push(format!("{at}.listen"), format!("{l} is already a listener"));
            }
        }
        let pool = match pool_ids.get(&s.service) {
            Some(p) => Some(*p),
            None if known.contains(&s.service.as_str()) => None,
            None => {
                e.push(
                    format!("{at}.service"),
                    format!("no service named {:?}", s.service),
                );
                None
            }
        };
        let idle = positive_duration(&s.idle_timeout, Duration::from_secs(600));
        let idle_timeout = e.take(idle, format!("{at}.idle_timeout"), Duration::from_secs(600));
        let send_proxy = match s.send_proxy_protocol.as_deref() {
            None => None,
            Some("v1") => Some(ProxyVersion::V1),
            Some("v2") => Some(ProxyVersion::V2),
            Some(other) => {
                e.push(
                    format!("{at}.send_proxy_protocol"),
                    format!("{other:?}: write v1 or v2"),
                );
                None
            }
        };
        if let (Ok(listen), Some(pool), true) = (listen, pool, e.out.len() == before) {
            out.push(StreamConfig {
                name: s.name.clone(),
                listen,
                pool,
                idle_timeout,
                tls: s.tls,
                send_proxy,
            });
        }
    }
    out
}

fn compile_admin(raw: Option<&str>, e: &mut Errs) -> Option<SocketAddr> {
    match raw.map(str::trim) {
        Some("off") => None,
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
        Some(a) => match a.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                e.push("admin", format!("{a:?} is not an IP:port address (or \"off\"); write e.g. \"127.0.0.1:9090\""));
                None
            }
        },
    }
}

/// The access log; an unchanged one is carried over a reload (and reopened, for logrotate).
fn compile_access_log(
    spec: Option<&AccessLogSpec>,
    previous: Option<&Runtime>,
    e: &mut Errs,
) -> Option<Arc<AccessLog>> {
    let spec = spec?;
    let format = match spec.format.as_deref().unwrap_or("combined") {
        "combined" => Format::Combined,
        "json" => Format::Json,
        other => {
            e.push(
                "access_log.format",
                format!("{other:?}: write \"combined\" or \"json\""),
            );
            Format::Combined
        }
    };
    let target = match spec.path.as_deref().unwrap_or("stdout") {
        "off" => return None,
        "stdout" => access_log::Target::Stdout,
        p => {
            let path = PathBuf::from(p);
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !dir.is_dir() {
                e.push(
                    "access_log.path",
                    format!(
                        "directory {} does not exist; create it or write \"stdout\"",
                        dir.display()
                    ),
                );
            }
            access_log::Target::File(path)
        }
    };
    let config = AccessLogConfig { target, format };
    let reused = previous
        .and_then(|p| p.access_log.clone())
        .filter(|l| l.config == config);
    match reused {
        Some(l) => {
            l.reopen();
            Some(l)
        }
        None => Some(Arc::new(AccessLog::new(config))),
    }
}

fn compile_server(spec: &ServerSpec, e: &mut Errs) -> Option<ServerSettings> {
    let d = default_server();
    let before = e.out.len();
    let threads = e.take(
        positive(spec.threads, d.threads, "threads"),
        "server.threads",
        1,
    );
    let pool_size = e.take(
        positive(
            spec.upstream_keepalive_pool_size,
            d.upstream_keepalive_pool_size,
            "pool size",
        ),
        "server.upstream_keepalive_pool_size",
        1,
    );
    let grace = positive_duration(&spec.grace_period, d.grace_period);
    let grace = e.take(grace, "server.grace_period", d.grace_period);
    let shutdown = positive_duration(&spec.shutdown_timeout, d.shutdown_timeout);
    let shutdown = e.take(shutdown, "server.shutdown_timeout", d.shutdown_timeout);
    (e.out.len() == before).then(|| ServerSettings {
        threads,
        work_stealing: spec.work_stealing.unwrap_or(d.work_stealing),
        grace_period: grace,
        shutdown_timeout: shutdown,
        pid_file: spec.pid_file.as_ref().map_or(d.pid_file, PathBuf::from),
        upgrade_sock: spec
            .upgrade_sock
            .as_ref()
            .map_or(d.upgrade_sock, PathBuf::from),
        upstream_keepalive_pool_size: pool_size,
        error_log: spec.error_log.as_ref().map(PathBuf::from),
    })
}

fn compile_listen(spec: &ListenSpec, e: &mut Errs) -> Vec<SocketAddr> {
    if spec.http.is_empty() && spec.https.is_empty() {
        e.push(
            "listen",
            "no listener; add one, e.g. listen: { http: [\"0.0.0.0:80\"] }",
        );
    }
    let out = compile_addrs(&spec.http, "listen.http", e);
    for a in &out {
        if spec
            .https
            .iter()
            .any(|h| h.parse::<SocketAddr>().ok() == Some(*a))
        {
            e.push("listen.https", format!("{a} is also an HTTP listener"));
        }
    }
    out
}

fn compile_addrs(list: &[String], at: &str, e: &mut Errs) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for (i, raw) in list.iter().enumerate() {
        match raw.parse::<SocketAddr>() {
            Ok(a) if out.contains(&a) => {
                e.push(format!("{at}[{i}]"), format!("{a} is listed twice"))
            }
            Ok(a) => out.push(a),
            Err(_) => e.push(
                format!("{at}[{i}]"),
                format!(
                    "{raw:?} is not an IP:port address; write e.g. \"0.0.0.0:80\" or \"[::]:80\""
                ),
            ),
        }
    }
    out
}

/// Where a route was defined, for duplicate messages.
struct Origin {
    file: Arc<Path>,
    yaml_path: String,
}

/// What every route compilation needs to look things up.
struct RouteCtx<'a> {
    pool_ids: &'a HashMap<String, PoolId>,
    known_services: &'a [&'a str],
    previous: Option<&'a Runtime>,
    max_body_size: u64,
}

fn compile_ingresses(
    ingresses: &[Sourced<IngressSpec>],
    ctx: &RouteCtx,
    errors: &mut Vec<ConfigError>,
) -> (Router, Vec<Route>) {
    let mut router = Router::new();
    let mut routes = Vec::new();
    let mut origins: Vec<Origin> = Vec::new();
    let mut names: HashMap<String, Arc<Path>> = HashMap::new();
    for ing in ingresses {
        let mut e = Errs {
            file: &ing.file,
            out: errors,
        };
        let name = ing
            .spec
            .name
            .clone()
            .unwrap_or_else(|| default_ingress_name(ing));
        if let Some(prev) = names.insert(name.clone(), ing.file.clone()) {
            e.push(
                format!("{}.name", ing.yaml_path),
                format!(
                    "ingress name {name:?} is already used in {}; names must be unique",
                    prev.display()
                ),
            );
        }
        for (ri, rule) in ing.spec.rules.iter().enumerate() {
            let rule_at = format!("{}.rules[{ri}]", ing.yaml_path);
            let host = match HostPattern::parse(&rule.host) {
                Ok(h) => h,
                Err(m) => {
                    e.push(format!("{rule_at}.host"), m);
                    continue;
                }
            };
            for (pi, p) in rule.paths.iter().enumerate() {
                let at = format!("{rule_at}.paths[{pi}]");
                let route_name = format!("{name}/{host}{}", p.path);
                let Some((pattern, action, policy)) =
                    compile_path(p, &at, &route_name, ctx, &mut e)
                else {
                    continue;
                };
                let id = RouteId(routes.len() as u32);
                let shown = pattern.to_string();
                match router.insert(host.clone(), pattern, id) {
                    Ok(()) => {
                        routes.push(Route {
                            name: route_name,
                            host: host.clone(),
                            path: shown,
                            action,
                            policy,
                            series: Default::default(),
                        });
                        origins.push(Origin {
                            file: ing.file.clone(),
                            yaml_path: at,
                        });
                    }
                    Err(prev) => {
                        let o = &origins[prev.0 as usize];
                        e.push(at, format!(
                            "host {host} path {shown:?} is already routed by {}: {}; remove one or change its path",
                            o.file.display(), o.yaml_path
                        ));
                    }
                }
            }
        }
    }
    (router, routes)
}

fn default_ingress_name(ing: &Sourced<IngressSpec>) -> String {
    let stem = ing
        .file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("ingress");
    format!("{stem}.{}", ing.yaml_path)
}

fn compile_path(
    p: &PathSpec,
    at: &str,
    route_name: &str,
    ctx: &RouteCtx,
    e: &mut Errs,
) -> Option<(PathPattern, RouteAction, Policy)> {
    let before = e.out.len();
    let pattern = match p.match_kind.unwrap_or(MatchSpec::Prefix) {
        MatchSpec::Exact => PathPattern::exact(&p.path),
        MatchSpec::Prefix => PathPattern::prefix(&p.path),
        MatchSpec::Regex => PathPattern::regex(&p.path),
    };
    let pattern = pattern.map_err(|m| e.push(format!("{at}.path"), m)).ok();
    let action = match (&p.service, &p.respond, &p.redirect) {
        (Some(s), None, None) => match ctx.pool_ids.get(s) {
            Some(id) => Some(RouteAction::Proxy(*id)),
            None if ctx.known_services.contains(&s.as_str()) => None, // the service had its own errors
            None => {
                let hint = closest(s, ctx.known_services)
                    .map_or_else(String::new, |c| format!("; did you mean {c:?}?"));
                e.push(
                    format!("{at}.service"),
                    format!("no service named {s:?}{hint}"),
                );
                None
            }
        },
        (None, Some(r), None) => {
            compile_respond(r, &format!("{at}.respond"), e).map(RouteAction::Respond)
        }
        (None, None, Some(r)) => {
            redirect(r, &format!("{at}.redirect"), e).map(RouteAction::Redirect)
        }
        _ => {
            e.push(
                at,
                "a path needs exactly one of `service`, `respond` or `redirect`",
            );
            None
        }
    };
    let policy = compile_policy(p, at, route_name, ctx.previous, ctx.max_body_size, e);
    let proxied = matches!(action, Some(RouteAction::Proxy(_)));
    if e.out.len() == before && !proxied {
        if p.rewrite.is_some() {
            e.push(
                format!("{at}.rewrite"),
                "a rewrite only applies to a path with a `service`",
            );
        }
        if p.request_headers.is_some() {
            e.push(
                format!("{at}.request_headers"),
                "request header edits only apply to a path with a `service`",
            );
        }
    }
    (e.out.len() == before).then_some((pattern?, action?, policy))
}

fn compile_respond(spec: &RespondSpec, at: &str, e: &mut Errs) -> Option<DirectResponse> {
    let before = e.out.len();
    let status = match spec.status.unwrap_or(200) {
        n @ 200..=599 => StatusCode::from_u16(n as u16).ok(),
        n => {
            e.push(
                format!("{at}.status"),
                format!("status must be between 200 and 599, got {n}"),
            );
            None
        }
    };
    let mut headers = header_pairs(&spec.headers, &format!("{at}.headers"), e);
    if !spec.body.is_empty() && !headers.iter().any(|(n, _)| n == http::header::CONTENT_TYPE) {
        headers.push((
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ));
    }
    (e.out.len() == before).then(|| DirectResponse {
        status: status.unwrap_or(StatusCode::OK),
        headers,
        body: Bytes::from(spec.body.clone()),
    })
}

/// The known name closest to `name` (for "did you mean"), if any is close.
fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_ranges_parse() {
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("30d").unwrap(), Duration::from_secs(30 * 86400));
        assert!(duration("fast").is_err());
        assert_eq!(
            super::super::compile_upstream::parse_status_range("200-399").unwrap(),
            200..=399
        );
        assert_eq!(
            super::super::compile_upstream::parse_status_range("204").unwrap(),
            204..=204
        );
        assert!(super::super::compile_upstream::parse_status_range("399-200").is_err());
        assert!(super::super::compile_upstream::parse_status_range("abc").is_err());
    }

    #[test]
    fn closest_name_suggestion() {
        assert_eq!(closest("apii", &["api", "web"]), Some("api"));
        assert_eq!(closest("zzzzzz", &["api", "web"]), None);
    }
}
