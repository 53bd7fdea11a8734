//! ACME end to end against Debian's Pebble (Let's Encrypt's test server): issuance over
//! HTTP-01 and TLS-ALPN-01, reuse after a restart, renewal inside the window, an unreachable
//! CA; and, through a fault layer in front of Pebble, renewal information (ARI) and rate limits
//! with Retry-After.

mod common;
use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Pebble {
    _dir: tempfile::TempDir,
    acme_port: u16,
    mgmt_port: u16,
    /// The CA that signed Pebble's own HTTPS certificate (gatehouse's `tls.acme.ca`).
    ca_file: PathBuf,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_port(port: u16, what: &str, child: &mut Child) {
    let up = eventually(Duration::from_secs(20), async || {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "{what} did not start: {:?}", child.try_wait());
}

impl Pebble {
    /// Start Pebble validating HTTP-01 on `http_port`, with a DNS stub resolving every name
    /// to 127.0.0.1. `validity` is the lifetime of the certificates it issues.
    async fn start(http_port: u16, validity: Duration) -> Pebble {
        Self::start_with(http_port, free_port(), validity).await
    }

    /// Like `start`, validating TLS-ALPN-01 on `tls_port`.
    async fn start_with(http_port: u16, tls_port: u16, validity: Duration) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A throwaway CA and a localhost certificate for Pebble's own HTTPS endpoint.
        let t = test_cert(&["localhost", "127.0.0.1", "::1"]);
        std::fs::write(d.join("ca.pem"), t.ca_pem).unwrap();
        std::fs::write(d.join("cert.pem"), t.cert_pem).unwrap();
        std::fs::write(d.join("key.pem"), t.key_pem).unwrap();

        let (dns, stub_mgmt) = (udp_port(), free_port());
        let mut stub = Command::new("pebble-challtestsrv")
            .args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns}"),
                "-management",
                &format!("127.0.0.1:{stub_mgmt}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (Debian package pebble; `make test` installs it)");
        wait_port(stub_mgmt, "pebble-challtestsrv", &mut stub).await;

        let (acme_port, mgmt_port) = (free_port(), free_port());
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": d.join("cert.pem"),
            "privateKey": d.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity.as_secs(),
        }});
        std::fs::write(d.join("pebble.json"), config.to_string()).unwrap();
        let log = std::fs::File::create(d.join("pebble.log")).unwrap();
        let mut pebble = Command::new("pebble")
            .arg("-config")
            .arg(d.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble");
        wait_port(acme_port, "pebble", &mut pebble).await;
        wait_port(mgmt_port, "pebble management", &mut pebble).await;
        Pebble {
            ca_file: d.join("ca.pem"),
            dir: d.to_path_buf(),
            _dir: dir,
            acme_port,
            mgmt_port,
            children: vec![stub, pebble],
        }
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The root that signs the certificates Pebble issues.
    async fn issuing_root(&self) -> reqwest::Certificate {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ca_file).unwrap()).unwrap();
        let c = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(ca)
            .build()
            .unwrap();
        let pem = c
            .get(format!("https://localhost:{}/roots/0", self.mgmt_port))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        reqwest::Certificate::from_pem(&pem).unwrap()
    }
}

/// The configuration: `tls.acme` for `dir` (plus `acme_extra`, more keys of that section) and
/// one ingress for shop.test.
fn acme_yaml(dir: &str, ca: &Path, storage: &Path, acme_extra: &str, origin: SocketAddr) -> String {
    format!(
        r#"tls:
  acme:
    directory: "{dir}"
    email: ops@example.com
    storage: {storage}
    ca: {ca}
    check_interval: 1s
    min_retry: 1s
    max_retry: 4s
{acme_extra}services: {{ app: {{ targets: ["{origin}"] }} }}
ingresses:
  - name: shop
    tls: {{ acme: true }}
    rules: [{{ host: shop.test, paths: [{{ path: /, service: app }}] }}]
"#,
        storage = storage.display(),
        ca = ca.display()
    )
}

struct Setup {
    gh: Gatehouse,
    https: SocketAddr,
}

async fn start_gatehouse(yaml: String, ports: Option<(u16, u16)>) -> (Setup, tempfile::TempDir) {
    let https = ports.map_or_else(free_port, |p| p.1);
    let mut w = write_config_listen(&format!("  https: [\"127.0.0.1:{https}\"]\n"), &yaml, &[]);
    if let Some((http, _)) = ports {
        // Reuse the HTTP port Pebble validates against.
        let text = std::fs::read_to_string(&w.config).unwrap().replace(
            &format!(":{}\"]\n  https", w.port),
            &format!(":{http}\"]\n  https"),
        );
        std::fs::write(&w.config, text).unwrap();
        w.port = http;
    }
    let keep = tempfile::tempdir().unwrap();
    let gh = Gatehouse::launch(w).await;
    (
        Setup {
            gh,
            https: SocketAddr::from(([127, 0, 0, 1], https)),
        },
        keep,
    )
}

async fn https_get(root: &reqwest::Certificate, https: SocketAddr) -> Result<String, String> {
    let c = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(root.clone())
        .tls_built_in_root_certs(false)
        .resolve("shop.test", https)
        .build()
        .unwrap();
    let r = c
        .get(format!("https://shop.test:{}/hello", https.port()))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_over_http01_serves_it_and_reuses_it_after_a_restart() {
    let origin = Origin::start("app").await;
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, Duration::from_secs(90 * 86_400)).await;
    let storage = tempfile::tempdir().unwrap();
    let yaml = acme_yaml(
        &pebble.directory(),
        &pebble.ca_file,
        storage.path(),
        "",
        origin.addr,
    );
    let (s, _keep) = start_gatehouse(yaml.clone(), Some((http, https))).await;
    let root = pebble.issuing_root().await;
    let served = eventually(Duration::from_secs(30), async || {
        https_get(&root, s.https).await.is_ok()
    })
    .await;
    assert!(served, "no ACME certificate served:\n{}", s.gh.log());
    assert_eq!(origin_of(&https_get(&root, s.https).await.unwrap()), "app");
    assert_eq!(
        metric(
            &s.gh.metrics().await,
            r#"gatehouse_acme_orders_total{result="success"}"#
        ),
        1.0
    );
    let key = storage.path().join("certs/shop.test.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let accounts: Vec<_> = std::fs::read_dir(storage.path().join("accounts"))
        .unwrap()
        .collect();
    assert_eq!(accounts.len(), 1);
    drop(s);

    // Restart: the stored certificate is served at once, nothing is ordered.
    let (s, _keep) = start_gatehouse(yaml, Some((http, https))).await;
    let served = eventually(Duration::from_secs(10), async || {
        https_get(&root, s.https).await.is_ok()
    })
    .await;
    assert!(served, "{}", s.gh.log());
    assert_eq!(
        metric(
            &s.gh.metrics().await,
            r#"gatehouse_acme_orders_total{result="success"}"#
        ),
        0.0
    );
    assert!(
        s.gh.log()
            .contains("using the stored certificate for shop.test"),
        "{}",
        s.gh.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_when_inside_the_window() {
    let origin = Origin::start("app").await;
    let (http, https) = (free_port(), free_port());
    // Certificates live 1 hour and are renewed 2 hours before expiry: always due.
    let pebble = Pebble::start(http, Duration::from_secs(3600)).await;
    let storage = tempfile::tempdir().unwrap();
    let yaml = acme_yaml(
        &pebble.directory(),
        &pebble.ca_file,
        storage.path(),
        "    renew_before: 2h\n",
        origin.addr,
    );
    let (s, _keep) = start_gatehouse(yaml, Some((http, https))).await;
    let renewed =
        s.gh.metric_reaches(
            r#"gatehouse_acme_orders_total{result="success"}"#,
            2.0,
            Duration::from_secs(30),
        )
        .await;
    assert!(renewed, "{}", s.gh.log());
    let root = pebble.issuing_root().await;
    assert!(https_get(&root, s.https).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ca_backs_off_and_the_proxy_keeps_serving() {
    let origin = Origin::start("app").await;
    let nowhere = format!("https://127.0.0.1:{}/dir", free_port());
    let storage = tempfile::tempdir().unwrap();
    let ca = storage.path().join("ca.pem");
    std::fs::write(
        &ca,
        rcgen::generate_simple_self_signed(vec!["x".to_string()])
            .unwrap()
            .cert
            .pem(),
    )
    .unwrap();
    let (s, _keep) = start_gatehouse(
        acme_yaml(&nowhere, &ca, storage.path(), "", origin.addr),
        None,
    )
    .await;
    let failed =
        s.gh.metric_reaches(
            r#"gatehouse_acme_orders_total{result="failure"}"#,
            3.0,
            Duration::from_secs(15),
        )
        .await;
    assert!(failed, "{}", s.gh.log());
    let log = s.gh.log();
    assert!(
        log.contains("ACME: no certificate for shop.test: cannot register an account"),
        "{log}"
    );
    assert!(
        log.contains("retrying in 1s") && log.contains("retrying in 2s"),
        "{log}"
    );
    assert!(
        metric(
            &s.gh.metrics().await,
            r#"gatehouse_acme_last_error_timestamp_seconds{name="shop.test"}"#
        ) > 0.0
    );
    // Plain HTTP and the TLS fallback keep working meanwhile.
    assert_eq!(
        origin_of(&get_host(&client(), &s.gh.url("/"), "shop.test").await.1),
        "app"
    );
    let insecure = reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .resolve("shop.test", s.https)
        .build()
        .unwrap();
    assert!(insecure
        .get(format!("https://shop.test:{}/", s.https.port()))
        .send()
        .await
        .is_ok());
}

#[test]
fn acme_mistakes_are_config_errors() {
    let out = check(
        "ingresses:\n  - tls: { acme: true, hosts: [\"*.wild.test\"] }\n    rules: [{ host: a.test, paths: [{ path: /, respond: {} }] }]\n",
        &[],
    );
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("ingresses[0].tls.acme: ACME needs a `tls.acme` section"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(
            "ingresses[0].tls.hosts[0]: \"*.wild.test\": HTTP-01 and TLS-ALPN-01 cannot certify wildcards"
        ),
        "{}",
        out.stderr
    );
    let out = check(
        "tls: { acme: { directory: \"http://insecure\", email: nope, ca: /no/such.pem, renew_before: soon, challenge: dns-01 } }\ningresses: [{ tls: { acme: true }, rules: [{ host: a.test, paths: [{ respond: {} }] }] }]\n",
        &[],
    );
    assert_eq!(out.code, 1);
    for want in [
        "tls.acme.directory: \"http://insecure\": write an https:// URL",
        "tls.acme.email: \"nope\" is not an email address",
        "tls.acme.ca: /no/such.pem is not a readable file",
        "tls.acme.renew_before: \"soon\" is not a duration",
        "tls.acme.challenge: \"dns-01\": write http-01 or tls-alpn-01",
    ] {
        assert!(
            out.stderr.contains(want),
            "missing {want:?}:\n{}",
            out.stderr
        );
    }
    let out = check(
        "tls: { acme: { email: ops@example.com, challenge: tls-alpn-01 } }\ningresses: [{ tls: { acme: true }, rules: [{ host: a.test, paths: [{ respond: {} }] }] }]\n",
        &[],
    );
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("tls.acme.challenge: tls-alpn-01 is answered on an HTTPS listener"),
        "{}",
        out.stderr
    );
    let ok = check(
        "tls: { acme: { email: ops@example.com, storage: /tmp/acme } }\ningresses: [{ tls: { acme: true }, rules: [{ host: a.test, paths: [{ respond: {} }] }, { host: b.test, paths: [{ respond: {} }] }] }]\n",
        &[],
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(
        ok.stdout.contains("manages: a.test, b.test"),
        "{}",
        ok.stdout
    );
}

/// Faults and extensions the layer adds in front of Pebble.
#[derive(Default)]
struct Faults {
    /// Offer renewal information (RFC 9773, which Debian's Pebble 2.4 lacks): the first
    /// certificate asked about is due now, any later one in 30 days.
    ari: bool,
    /// Answer this many new orders with 429 `rateLimited` and `Retry-After: retry_after`.
    rate_limited_orders: AtomicUsize,
    retry_after: u64,
    /// Every newOrder seen: when, and its JWS payload.
    orders: Mutex<Vec<(Instant, serde_json::Value)>>,
    /// Every certificate identifier renewal information was asked for.
    ari_asked: Mutex<Vec<String>>,
}

/// A fault layer between gatehouse and Pebble: an HTTPS proxy (with Pebble's own certificate)
/// that keeps the Host header, so that Pebble writes the layer's address into every URL and
/// all later requests come through it too.
struct Layer {
    port: u16,
    faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Layer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Layer {
    async fn start(pebble: &Pebble, faults: Faults) -> Layer {
        let mut acceptor =
            openssl::ssl::SslAcceptor::mozilla_intermediate_v5(openssl::ssl::SslMethod::tls())
                .unwrap();
        acceptor
            .set_certificate_chain_file(pebble.dir.join("cert.pem"))
            .unwrap();
        acceptor
            .set_private_key_file(pebble.dir.join("key.pem"), openssl::ssl::SslFiletype::PEM)
            .unwrap();
        let acceptor = Arc::new(acceptor.build());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&pebble.ca_file).unwrap()).unwrap();
        // HTTP/1.1: over h2 the Host header would give way to the URL's authority.
        let upstream = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .add_root_certificate(ca)
            .build()
            .unwrap();
        let pebble_port = pebble.acme_port;
        let faults = Arc::new(faults);
        let f = faults.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, f, upstream) = (acceptor.clone(), f.clone(), upstream.clone());
                conns.spawn(async move {
                    let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                    let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                    if std::pin::Pin::new(&mut tls).accept().await.is_err() {
                        return;
                    }
                    let svc = hyper::service::service_fn(move |req| {
                        layer_answer(req, f.clone(), upstream.clone(), pebble_port)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Layer { port, faults, task }
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }
}

type LayerResponse = hyper::Response<http_body_util::Full<bytes::Bytes>>;

fn problem(status: u16, kind: &str, retry_after: u64) -> LayerResponse {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/problem+json")
        .header("retry-after", retry_after.to_string())
        .body(
            serde_json::json!({
                "type": format!("urn:ietf:params:acme:error:{kind}"),
                "detail": "the layer says: too many new orders",
                "status": status,
            })
            .to_string()
            .into(),
        )
        .unwrap()
}

async fn layer_answer(
    req: hyper::Request<hyper::body::Incoming>,
    f: Arc<Faults>,
    upstream: reqwest::Client,
    pebble_port: u16,
) -> Result<LayerResponse, std::convert::Infallible> {
    use base64::Engine;
    use http_body_util::BodyExt;
    let path = req.uri().path().to_string();
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if let Some(id) = path.strip_prefix("/renewal-info/").filter(|_| f.ari) {
        let mut asked = f.ari_asked.lock().unwrap();
        let first = asked.first().is_none_or(|a| a == id);
        asked.push(id.to_string());
        let now = std::time::SystemTime::now();
        let day = Duration::from_secs(86_400);
        let (start, end) = if first {
            (now - 2 * day, now - day)
        } else {
            (now + 30 * day, now + 31 * day)
        };
        let body = serde_json::json!({ "suggestedWindow": {
            "start": humantime::format_rfc3339_seconds(start).to_string(),
            "end": humantime::format_rfc3339_seconds(end).to_string(),
        }});
        return Ok(hyper::Response::builder()
            .header("content-type", "application/json")
            .header("retry-after", "1")
            .body(body.to_string().into())
            .unwrap());
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let mut replaces = None;
    if path == "/order-plz" {
        let jws: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jws["payload"].as_str().unwrap())
            .unwrap();
        let payload: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        replaces = payload.get("replaces").cloned();
        f.orders.lock().unwrap().push((Instant::now(), payload));
        let limited = f
            .rate_limited_orders
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if limited {
            return Ok(problem(429, "rateLimited", f.retry_after));
        }
    }
    let uri = format!(
        "https://127.0.0.1:{pebble_port}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut headers = parts.headers.clone();
    headers.remove("content-length");
    let rsp = upstream
        .request(parts.method, uri)
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap();
    let mut out = hyper::Response::builder().status(rsp.status());
    for (k, v) in rsp.headers() {
        if !matches!(
            k.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            out = out.header(k, v);
        }
    }
    let mut bytes = rsp.bytes().await.unwrap();
    if path == "/dir" && f.ari {
        let mut dir: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        dir["renewalInfo"] = format!("https://{host}/renewal-info").into();
        bytes = dir.to_string().into();
    }
    if let Some(r) = replaces.filter(|_| f.ari) {
        // An ARI CA echoes `replaces` in the order (RFC 9773 §5); Pebble 2.4 does not.
        let mut order: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        order["replaces"] = r;
        bytes = order.to_string().into();
    }
    Ok(out.body(bytes.into()).unwrap())
}

/// Pebble (90-day certificates) behind a fault layer, and gatehouse ordering through it. Keep
/// the whole value alive: dropping it stops them all.
struct Layered {
    _origin: Origin,
    pebble: Pebble,
    layer: Layer,
    s: Setup,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn layered(faults: Faults) -> Layered {
    let origin = Origin::start("app").await;
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, Duration::from_secs(90 * 86_400)).await;
    let layer = Layer::start(&pebble, faults).await;
    let storage = tempfile::tempdir().unwrap();
    let yaml = acme_yaml(
        &layer.directory(),
        &pebble.ca_file,
        storage.path(),
        "",
        origin.addr,
    );
    let (s, keep) = start_gatehouse(yaml, Some((http, https))).await;
    Layered {
        _origin: origin,
        pebble,
        layer,
        s,
        _dirs: (storage, keep),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_early_when_the_ca_renewal_information_says_so() {
    // 90-day certificates and the default 30-day window: only ARI can make one due.
    let l = layered(Faults {
        ari: true,
        ..Faults::default()
    })
    .await;
    // Issued, then asked about (window in the past: renewed at once, replacing it), then the
    // replacement asked about (window in 30 days: left alone).
    let settled = eventually(Duration::from_secs(30), async || {
        let asked = l.layer.faults.ari_asked.lock().unwrap().clone();
        asked.len() >= 2 && asked.first() != asked.last()
    })
    .await;
    assert!(settled, "{}", l.s.gh.log());
    assert_eq!(
        metric(
            &l.s.gh.metrics().await,
            r#"gatehouse_acme_orders_total{result="success"}"#
        ),
        2.0,
        "{}",
        l.s.gh.log()
    );
    let orders = l.layer.faults.orders.lock().unwrap().clone();
    assert_eq!(orders.len(), 2, "{orders:?}\n{}", l.s.gh.log());
    assert!(orders[0].1.get("replaces").is_none());
    let first_id = l.layer.faults.ari_asked.lock().unwrap()[0].clone();
    assert_eq!(orders[1].1["replaces"], first_id.as_str());
    assert!(
        l.s.gh
            .log()
            .contains("ACME: the CA suggests renewing shop.test between"),
        "{}",
        l.s.gh.log()
    );
    let root = l.pebble.issuing_root().await;
    assert_eq!(
        origin_of(&https_get(&root, l.s.https).await.unwrap()),
        "app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_order_waits_for_retry_after() {
    // Our own backoff would retry after 1 s (`min_retry`); the CA asks for 3.
    let l = layered(Faults {
        rate_limited_orders: AtomicUsize::new(1),
        retry_after: 3,
        ..Faults::default()
    })
    .await;
    let issued =
        l.s.gh
            .metric_reaches(
                r#"gatehouse_acme_orders_total{result="success"}"#,
                1.0,
                Duration::from_secs(30),
            )
            .await;
    assert!(issued, "{}", l.s.gh.log());
    let orders = l.layer.faults.orders.lock().unwrap().clone();
    assert_eq!(orders.len(), 2, "{}", l.s.gh.log());
    let waited = orders[1].0 - orders[0].0;
    assert!(
        waited >= Duration::from_millis(2900),
        "retried after {waited:?}"
    );
    let log = l.s.gh.log();
    assert!(
        log.contains("rateLimited") && log.contains("retrying in 3s (the CA asked for 3s)"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_over_tls_alpn01_on_the_https_listener() {
    let origin = Origin::start("app").await;
    let (http, https) = (free_port(), free_port());
    // Pebble validates HTTP-01 on a port nobody listens on: only TLS-ALPN-01 can succeed.
    let pebble = Pebble::start_with(free_port(), https, Duration::from_secs(90 * 86_400)).await;
    let storage = tempfile::tempdir().unwrap();
    let yaml = acme_yaml(
        &pebble.directory(),
        &pebble.ca_file,
        storage.path(),
        "    challenge: tls-alpn-01\n",
        origin.addr,
    );
    let (s, _keep) = start_gatehouse(yaml, Some((http, https))).await;
    let root = pebble.issuing_root().await;
    let served = eventually(Duration::from_secs(30), async || {
        https_get(&root, s.https).await.is_ok()
    })
    .await;
    assert!(served, "no ACME certificate served:\n{}", s.gh.log());
    assert_eq!(origin_of(&https_get(&root, s.https).await.unwrap()), "app");
    assert!(
        s.gh.log()
            .contains("acme-tls/1 validation handshake for Some(\"shop.test\") (answered)"),
        "{}",
        s.gh.log()
    );
    // With no order waiting, an acme-tls/1 handshake gets no certificate at all.
    let https_port = s.https.port();
    let refused = tokio::task::spawn_blocking(move || {
        let tcp = std::net::TcpStream::connect(("127.0.0.1", https_port)).unwrap();
        insecure_tls(tcp, "shop.test", b"\x0aacme-tls/1").is_err()
    })
    .await
    .unwrap();
    assert!(
        refused,
        "an acme-tls/1 handshake completed without an order"
    );
}
