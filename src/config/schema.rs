//! The serde types of the configuration file, exactly as an operator writes it.
//!
//! Every struct denies unknown keys, so a typo is an error, not a silently ignored line.
//! These types never leave `config`: `compile` turns them into the typed `Runtime`.
//! Imports: serde only.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The main configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    #[serde(default)]
    pub listen: ListenSpec,
    /// Globs (relative to the main file) of fragment files holding more services and ingresses.
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub server: ServerSpec,
    #[serde(default)]
    pub client_ip: ClientIpSpec,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`, `/status`, `POST /reload`):
    /// `IP:port`, or `off`. Default `127.0.0.1:9090`.
    pub admin: Option<String>,
    pub access_log: Option<AccessLogSpec>,
    #[serde(default)]
    pub tls: TlsSpec,
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Error log level: error, warn, info, debug, trace. `RUST_LOG` overrides it.
    pub log_level: Option<String>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSpec>,
    #[serde(default)]
    pub ingresses: Vec<IngressSpec>,
    #[serde(default)]
    pub streams: Vec<StreamSpec>,
}

/// A raw TCP listener piped to a service's backends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    pub name: String,
    pub listen: String,
    pub service: String,
    /// Close the connection when nothing moved either way for this long (default 10m).
    pub idle_timeout: Option<String>,
    /// Terminate TLS on this listener (certificates from `tls`, by SNI).
    #[serde(default)]
    pub tls: bool,
    /// Tell the backend the client's address with a PROXY protocol header: `v1` or `v2`.
    pub send_proxy_protocol: Option<String>,
}

/// Sizes are bytes, or strings with a unit: `512k`, `10m`, `1g` (powers of 1024).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeSpec {
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Largest request body (413 above it); a path's `max_body_size` overrides it.
    pub max_body_size: Option<SizeSpec>,
    /// Largest request line + header block (431 above it).
    pub max_header_size: Option<SizeSpec>,
    /// Longest time to receive a whole request head.
    pub header_timeout: Option<String>,
    /// How long an idle keep-alive connection waits for its next request.
    pub keepalive_timeout: Option<String>,
    /// Open connections per HTTP listener.
    pub max_connections: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// `modern`, `intermediate` (default) or `old`.
    pub preset: Option<String>,
    /// Certificate chain + key files; the first is the default certificate.
    #[serde(default)]
    pub certificates: Vec<CertFilesSpec>,
    /// A directory of `<name>.crt` + `<name>.key` pairs (`*.example.com.crt` too).
    pub directory: Option<String>,
    pub acme: Option<AcmeSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSpec {
    /// Directory URL, or `production` (default) / `staging` for Let's Encrypt.
    pub directory: Option<String>,
    pub email: Option<String>,
    pub storage: Option<String>,
    pub renew_before: Option<String>,
    /// PEM CA bundle to trust for the ACME server.
    pub ca: Option<String>,
    pub check_interval: Option<String>,
    pub min_retry: Option<String>,
    pub max_retry: Option<String>,
    /// `http-01` (default) or `tls-alpn-01`.
    pub challenge: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressTlsSpec {
    /// Obtain certificates for this ingress's hosts over ACME.
    #[serde(default)]
    pub acme: bool,
    /// The names to certify; default: every exact host of the ingress's rules.
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFilesSpec {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSpec {
    /// `stdout`, `off`, or a file path.
    pub path: Option<String>,
    /// `combined` (default) or `json`.
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIpSpec {
    /// CIDRs (or single addresses) whose X-Forwarded-For is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// An included file (`include:`): only services and ingresses, merged into the main table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FragmentSpec {
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSpec>,
    #[serde(default)]
    pub ingresses: Vec<IngressSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSpec {
    #[serde(default)]
    pub http: Vec<String>,
    /// TLS listeners (HTTP/1.1 and HTTP/2 by ALPN).
    #[serde(default)]
    pub https: Vec<String>,
    /// Answer every request on the HTTP listeners with a redirect to https (except ACME
    /// challenges).
    #[serde(default)]
    pub https_redirect: bool,
    /// Every connection to the HTTP and HTTPS listeners starts with a PROXY protocol header.
    #[serde(default)]
    pub proxy_protocol: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    pub threads: Option<i64>,
    pub work_stealing: Option<bool>,
    pub grace_period: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub upstream_keepalive_pool_size: Option<i64>,
    /// Where a daemonised gatehouse (`run --daemon`) writes its error log.
    pub error_log: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default)]
    pub targets: Vec<TargetSpec>,
    pub balance: Option<BalanceSpec>,
    /// What consistent_hash hashes: `client_ip` (default) or `header:<Name>`.
    pub hash_key: Option<String>,
    pub health_check: Option<HealthCheckSpec>,
    pub retries: Option<i64>,
    #[serde(default)]
    pub timeouts: TimeoutsSpec,
    /// Host header sent upstream instead of the client's.
    pub host_header: Option<String>,
    /// `{ failures: 3, eject_for: 10s }` by default; `off` disables.
    pub passive_health: Option<PassiveSpec>,
    /// `http1` (default), `h2`, `h2c` or `auto` (h2 or HTTP/1.1 by ALPN; needs `tls`).
    pub protocol: Option<String>,
    /// TLS to the backends.
    pub tls: Option<UpstreamTlsSpec>,
    /// Statuses that send an idempotent request to another backend (502, 503, 504).
    #[serde(default)]
    pub retry_on: Vec<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSpec {
    /// Name sent as SNI and checked against the certificate (default: `host_header`).
    pub sni: Option<String>,
    /// Verify the backend's certificate (default true).
    pub verify: Option<bool>,
    /// PEM bundle of CAs to trust instead of the system's.
    pub ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PassiveSpec {
    Off(String),
    On {
        failures: Option<i64>,
        eject_for: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TargetSpec {
    Address(String),
    Weighted(WeightedTargetSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedTargetSpec {
    pub address: String,
    pub weight: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceSpec {
    RoundRobin,
    Random,
    ConsistentHash,
    LeastConnections,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    pub tcp: Option<TcpCheckSpec>,
    pub http: Option<HttpCheckSpec>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpCheckSpec {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheckSpec {
    pub path: Option<String>,
    /// Accepted status range, `"200-399"` or a single `"204"`.
    pub expect: Option<String>,
    /// Host header of the probe; defaults to the target address.
    pub host: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSpec {
    pub connect: Option<String>,
    pub read: Option<String>,
    pub write: Option<String>,
    pub idle: Option<String>,
    /// Idle timeout of upgraded (WebSocket) connections, instead of `read`.
    pub websocket_idle: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressSpec {
    pub name: Option<String>,
    pub tls: Option<IngressTlsSpec>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub paths: Vec<PathSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSpec {
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(rename = "match")]
    pub match_kind: Option<MatchSpec>,
    pub service: Option<String>,
    pub respond: Option<RespondSpec>,
    pub redirect: Option<RedirectSpec>,
    pub access: Option<AccessSpec>,
    pub rate_limit: Option<RateLimitSpec>,
    pub request_headers: Option<HeaderEditsSpec>,
    pub response_headers: Option<HeaderEditsSpec>,
    pub rewrite: Option<RewriteSpec>,
    pub max_body_size: Option<SizeSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessSpec {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub requests_per_second: f64,
    pub burst: Option<i64>,
    /// `client_ip` (default), `header:<Name>` or `route`.
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEditsSpec {
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteSpec {
    pub strip_prefix: Option<String>,
    pub replace_path: Option<String>,
    pub regex: Option<String>,
    pub replacement: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectSpec {
    /// A URL template with {host}, {path}, {query}, {request_uri}.
    pub to: Option<String>,
    /// Redirect to the same host and path over https.
    pub https: Option<bool>,
    /// With `https`: the https port when it is not 443.
    pub port: Option<u16>,
    pub code: Option<i64>,
}

fn default_path() -> String {
    "/".to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchSpec {
    Exact,
    Prefix,
    Regex,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondSpec {
    pub status: Option<i64>,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}
