//! Metric handles and names: a leaf every room may call. Prometheus conventions, `gatehouse_`
//! prefix, labels bounded by the configuration (route and pool names, backend addresses),
//! never by raw paths or client addresses.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::OnceLock;
use std::time::Duration;

/// Every metric gatehouse exports.
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_connect: HistogramVec,
    pub upstream_response: HistogramVec,
    pub request_bytes: IntCounterVec,
    pub response_bytes: IntCounterVec,
    pub requests_in_flight: IntGauge,
    pub downstream_connections: IntGaugeVec,
    pub upstream_idle_connections: IntGauge,
    pub backend_up: IntGaugeVec,
    pub backend_inflight: IntGaugeVec,
    pub health_checks: IntCounterVec,
    pub retries: IntCounterVec,
    pub downstream_rejected: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub access_denied: IntCounterVec,
    pub reloads: IntCounterVec,
    pub config_info: IntGaugeVec,
    pub config_loaded: Gauge,
    pub access_log_dropped: IntCounter,
    pub tls_handshakes: IntCounterVec,
    pub tls_certificate_picks: IntCounterVec,
    pub tls_handshake_errors: IntCounter,
    pub certificate_expiry: IntGaugeVec,
    pub acme_orders: IntCounterVec,
    pub acme_last_error: IntGaugeVec,
    pub stream_connections: IntCounterVec,
    pub stream_bytes: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c =
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{name}: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g =
        IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{name}: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    g
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("{name}: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let buckets = vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    r.register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    h
}

impl Metrics {
    // The names and label sets below are fixed and distinct: registration cannot fail, and a
    // test (`all_metrics_register`) proves it, so the panics above cannot fire.
    fn new() -> Metrics {
        let r = Registry::new();
        let single = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("{name}: {e}"));
            r.register(Box::new(c.clone()))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            c
        };
        let access_log_dropped = single(
            "gatehouse_access_log_dropped_total",
            "Access log lines dropped because the writer could not keep up.",
        );
        let tls_handshake_errors = single(
            "gatehouse_tls_certificate_errors_total",
            "Handshakes where the chosen certificate could not be installed.",
        );
        let requests_in_flight = int_gauge(
            &r,
            "gatehouse_requests_in_flight",
            "Requests being served now.",
        );
        let upstream_idle_connections = int_gauge(
            &r,
            "gatehouse_upstream_idle_connections",
            "Idle keep-alive connections to backends kept for reuse (all pools, at scrape time).",
        );
        let config_loaded = Gauge::new(
            "gatehouse_config_last_load_timestamp_seconds",
            "Unix time the running configuration was loaded.",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        r.register(Box::new(config_loaded.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = r.register(Box::new(pc));
        }
        Metrics {
            requests: counter(
                &r,
                "gatehouse_requests_total",
                "Requests answered, by route, method and status class.",
                &["route", "method", "status"],
            ),
            request_duration: histogram(
                &r,
                "gatehouse_request_duration_seconds",
                "Time from request to the end of the response.",
                &["route"],
            ),
            upstream_connect: histogram(
                &r,
                "gatehouse_upstream_connect_seconds",
                "Time to connect to a backend (new connections only).",
                &["pool"],
            ),
            upstream_response: histogram(
                &r,
                "gatehouse_upstream_response_seconds",
                "Time from choosing a backend to its response header.",
                &["pool"],
            ),
            request_bytes: counter(
                &r,
                "gatehouse_request_body_bytes_total",
                "Request body bytes read from clients.",
                &["route"],
            ),
            response_bytes: counter(
                &r,
                "gatehouse_response_body_bytes_total",
                "Response body bytes sent to clients.",
                &["route"],
            ),
            requests_in_flight,
            upstream_idle_connections,
            downstream_connections: gauge(
                &r,
                "gatehouse_downstream_connections",
                "Established client connections per listener (from the kernel, at scrape time).",
                &["kind", "listener"],
            ),
            backend_up: gauge(
                &r,
                "gatehouse_backend_up",
                "1 when the active health check considers the backend healthy.",
                &["pool", "backend"],
            ),
            backend_inflight: gauge(
                &r,
                "gatehouse_backend_requests_in_flight",
                "Requests in flight to the backend.",
                &["pool", "backend"],
            ),
            health_checks: counter(
                &r,
                "gatehouse_health_checks_total",
                "Active health check results.",
                &["pool", "backend", "result"],
            ),
            retries: counter(
                &r,
                "gatehouse_upstream_retries_total",
                "Requests sent to another backend after a failure or a retry_on status.",
                &["pool"],
            ),
            downstream_rejected: counter(
                &r,
                "gatehouse_downstream_rejected_connections_total",
                "Client connections closed before or while reading a request head.",
                &["reason"],
            ),
            rate_limited: counter(
                &r,
                "gatehouse_rate_limited_total",
                "Requests refused with 429 by a rate limit.",
                &["route"],
            ),
            access_denied: counter(
                &r,
                "gatehouse_access_denied_total",
                "Requests refused with 403 by an access list.",
                &["route"],
            ),
            reloads: counter(
                &r,
                "gatehouse_config_reloads_total",
                "Configuration reloads, by result.",
                &["result"],
            ),
            config_info: gauge(
                &r,
                "gatehouse_config_info",
                "The running configuration's version hash (value 1).",
                &["hash"],
            ),
            config_loaded,
            access_log_dropped,
            tls_handshakes: counter(
                &r,
                "gatehouse_tls_handshakes_total",
                "Completed TLS handshakes, by protocol version.",
                &["version"],
            ),
            tls_certificate_picks: counter(
                &r,
                "gatehouse_tls_certificate_selections_total",
                "Certificates chosen at handshake, by rule (exact, wildcard, default, fallback).",
                &["rule"],
            ),
            tls_handshake_errors,
            certificate_expiry: gauge(
                &r,
                "gatehouse_certificate_expiry_timestamp_seconds",
                "When each served certificate expires (Unix time), by name and source.",
                &["name", "source"],
            ),
            acme_orders: counter(
                &r,
                "gatehouse_acme_orders_total",
                "ACME certificate orders, by result.",
                &["result"],
            ),
            acme_last_error: gauge(
                &r,
                "gatehouse_acme_last_error_timestamp_seconds",
                "When the last ACME attempt for a name failed (0: last attempt succeeded).",
                &["name"],
            ),
            stream_connections: counter(
                &r,
                "gatehouse_stream_connections_total",
                "TCP stream connections, by stream and result (proxied, no_backend).",
                &["stream", "result"],
            ),
            stream_bytes: counter(
                &r,
                "gatehouse_stream_bytes_total",
                "TCP stream bytes, by stream and direction (upstream, downstream).",
                &["stream", "direction"],
            ),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];
const STATUSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::PATCH => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

fn status_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 5,
    }
}

/// `GET`, `HEAD`, `POST`, `PUT`, `DELETE`, `PATCH`, `OPTIONS` or `other`: bounded labels.
fn method_class(m: &http::Method) -> &'static str {
    METHODS[method_index(m)]
}

/// `1xx` ... `5xx`, or `none` when no response was sent.
fn status_class(status: u16) -> &'static str {
    STATUSES[status_index(status)]
}

/// The per-request series of one route, looked up on first use and then kept with the route:
/// a label lookup hashes the label values and takes a lock, so it is done once per route and
/// series rather than four times per request. A series still appears in `/metrics` only once
/// it has been used.
#[derive(Clone, Default)]
pub struct RouteSeries {
    /// By method class, then status class; allocated on the route's first request.
    requests: OnceLock<Box<[[OnceLock<IntCounter>; 6]; 8]>>,
    duration: OnceLock<Histogram>,
    request_bytes: OnceLock<IntCounter>,
    response_bytes: OnceLock<IntCounter>,
}

impl std::fmt::Debug for RouteSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteSeries").finish_non_exhaustive()
    }
}

/// What one finished request adds to its route's series.
pub struct Finished<'a> {
    pub method: &'a http::Method,
    /// 0 when no response was sent.
    pub status: u16,
    pub elapsed: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl RouteSeries {
    /// The series of requests that matched no route (`route="none"`).
    pub fn unrouted() -> &'static RouteSeries {
        static NONE: OnceLock<RouteSeries> = OnceLock::new();
        NONE.get_or_init(RouteSeries::default)
    }

    pub fn record(&self, route: &str, r: Finished<'_>) {
        let m = get();
        let (mi, si) = (method_index(r.method), status_index(r.status));
        self.requests.get_or_init(Box::default)[mi][si]
            .get_or_init(|| {
                m.requests.with_label_values(&[
                    route,
                    method_class(r.method),
                    status_class(r.status),
                ])
            })
            .inc();
        self.duration
            .get_or_init(|| m.request_duration.with_label_values(&[route]))
            .observe(r.elapsed.as_secs_f64());
        self.request_bytes
            .get_or_init(|| m.request_bytes.with_label_values(&[route]))
            .inc_by(r.bytes_in);
        self.response_bytes
            .get_or_init(|| m.response_bytes.with_label_values(&[route]))
            .inc_by(r.bytes_out);
    }
}

/// The per-request series of one upstream pool, kept with the pool like [`RouteSeries`].
#[derive(Clone, Default)]
pub struct PoolSeries {
    connect: OnceLock<Histogram>,
    response: OnceLock<Histogram>,
}

impl std::fmt::Debug for PoolSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolSeries").finish_non_exhaustive()
    }
}

impl PoolSeries {
    /// A new connection to a backend of `pool` took `d`.
    pub fn connected(&self, pool: &str, d: Duration) {
        self.connect
            .get_or_init(|| get().upstream_connect.with_label_values(&[pool]))
            .observe(d.as_secs_f64());
    }

    /// A backend of `pool` sent its response header `d` after the request was sent.
    pub fn responded(&self, pool: &str, d: Duration) {
        self.response
            .get_or_init(|| get().upstream_response.with_label_values(&[pool]))
            .observe(d.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_metrics_register_and_render() {
        let m = get();
        m.requests.with_label_values(&["r", "GET", "2xx"]).inc();
        let text = m.render();
        assert!(
            text.contains("gatehouse_requests_total{method=\"GET\",route=\"r\",status=\"2xx\"} 1")
        );
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(100), "1xx");
        assert_eq!(status_class(599), "5xx");
        for s in [0, 99, 600] {
            assert_eq!(status_class(s), "none");
        }
        assert_eq!(
            method_class(&http::Method::from_bytes(b"PURGE").unwrap()),
            "other"
        );
    }

    #[test]
    fn route_series_count_into_the_labelled_series() {
        let series = RouteSeries::default();
        fn done(method: &http::Method, status: u16) -> Finished<'_> {
            Finished {
                method,
                status,
                elapsed: Duration::from_millis(3),
                bytes_in: 10,
                bytes_out: 100,
            }
        }
        series.record("series-test", done(&http::Method::GET, 200));
        series.record("series-test", done(&http::Method::GET, 204));
        series.record("series-test", done(&http::Method::POST, 0));
        // A second cache (a reloaded route) adds to the same series.
        RouteSeries::default().record("series-test", done(&http::Method::GET, 404));
        let text = get().render();
        for line in [
            r#"gatehouse_requests_total{method="GET",route="series-test",status="2xx"} 2"#,
            r#"gatehouse_requests_total{method="POST",route="series-test",status="none"} 1"#,
            r#"gatehouse_requests_total{method="GET",route="series-test",status="4xx"} 1"#,
            r#"gatehouse_request_duration_seconds_count{route="series-test"} 4"#,
            r#"gatehouse_request_body_bytes_total{route="series-test"} 40"#,
            r#"gatehouse_response_body_bytes_total{route="series-test"} 400"#,
        ] {
            assert!(text.contains(line), "{line} missing");
        }
        assert!(!text.contains(r#"route="series-test",status="5xx""#));
    }
}
