//! Integration harness: starts the real gatehouse binary on ephemeral ports with a generated
//! configuration, starts origin servers that echo what they receive, and waits on readiness
//! (a successful TCP connect), never on fixed sleeps.
#![allow(dead_code)]

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// A port that was free a moment ago (the OS hands out ephemeral ports round-robin, so a
/// just-released one is not reused immediately).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Poll `f` until it returns true or `timeout` passes. Returns whether it became true.
pub async fn eventually(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// What an origin does with a request, decided per request.
#[derive(Default)]
pub struct Behaviour {
    /// Status for every request except `/healthz`.
    pub status: AtomicU16,
    /// `/healthz` answers 200 while true, 503 otherwise.
    pub healthy: AtomicBool,
    /// Delay before answering, in milliseconds.
    pub delay_ms: AtomicU64,
    /// Close the connection instead of answering (a backend dying mid-request).
    pub reset: AtomicBool,
}

/// How an origin speaks.
#[derive(Clone)]
pub enum Mode {
    Http1,
    /// Cleartext HTTP/2 with prior knowledge.
    H2c,
    /// TLS with this acceptor; HTTP/2 when ALPN picked h2, else HTTP/1.1.
    Tls(Arc<openssl::ssl::SslAcceptor>),
}

/// One route, `/` on every host, to `service`.
pub fn one_route(service: &str) -> String {
    format!("ingresses:\n  - rules: [{{ paths: [{{ path: /, service: {service} }}] }}]\n")
}

/// A blocking TLS handshake over `tcp` that does not verify the server (gatehouse's
/// self-signed fallback), offering `alpn` (wire format; empty offers none).
pub fn insecure_tls(
    tcp: std::net::TcpStream,
    sni: &str,
    alpn: &[u8],
) -> Result<
    openssl::ssl::SslStream<std::net::TcpStream>,
    openssl::ssl::HandshakeError<std::net::TcpStream>,
> {
    let mut c = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
    c.set_verify(openssl::ssl::SslVerifyMode::NONE);
    if !alpn.is_empty() {
        c.set_alpn_protos(alpn).unwrap();
    }
    c.build().connect(sni, tcp)
}

/// A throwaway CA and a certificate for `names` signed by it, as PEM.
pub struct TestCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn test_cert(names: &[&str]) -> TestCert {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct subjects: with rcgen's default for both, the leaf would look self-issued.
    p.distinguished_name
        .push(DnType::CommonName, "gatehouse test CA");
    let ca = p.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut leaf = CertificateParams::new(names.clone()).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, names[0].as_str());
    let cert = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    TestCert {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A TLS acceptor for an origin: a certificate for `names` signed by a fresh CA (returned as
/// PEM), offering h2 by ALPN when `h2`.
pub fn origin_tls(names: &[&str], h2: bool) -> (Arc<openssl::ssl::SslAcceptor>, String) {
    let t = test_cert(names);
    let mut b =
        openssl::ssl::SslAcceptor::mozilla_intermediate_v5(openssl::ssl::SslMethod::tls()).unwrap();
    b.set_certificate(&openssl::x509::X509::from_pem(t.cert_pem.as_bytes()).unwrap())
        .unwrap();
    b.set_private_key(&openssl::pkey::PKey::private_key_from_pem(t.key_pem.as_bytes()).unwrap())
        .unwrap();
    let protos: &'static [u8] = if h2 {
        b"\x02h2\x08http/1.1"
    } else {
        b"\x08http/1.1"
    };
    b.set_alpn_select_callback(move |_, client| {
        openssl::ssl::select_next_proto(protos, client).ok_or(openssl::ssl::AlpnError::NOACK)
    });
    (Arc::new(b.build()), t.ca_pem)
}

/// An HTTP/1.1 origin that echoes the request as JSON: `{origin, method, uri, headers}`.
pub struct Origin {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub behaviour: Arc<Behaviour>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub async fn start(name: &str) -> Origin {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Start on a given address (to bring a stopped origin back on its old port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Origin {
        Self::start_mode(name, addr, Mode::Http1).await
    }

    pub async fn start_mode(name: &str, addr: SocketAddr, mode: Mode) -> Origin {
        let listener = TcpListener::bind(addr).await.expect("bind origin");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let behaviour = Arc::new(Behaviour {
            status: AtomicU16::new(200),
            healthy: AtomicBool::new(true),
            delay_ms: AtomicU64::new(0),
            reset: AtomicBool::new(false),
        });
        let (n, h, b) = (name.to_string(), hits.clone(), behaviour.clone());
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection too.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (n, h, b, mode) = (n.clone(), h.clone(), b.clone(), mode.clone());
                conns.spawn(async move {
                    let svc = (n, h, b);
                    match mode {
                        Mode::Http1 => serve_h1(stream, svc).await,
                        Mode::H2c => serve_h2(stream, svc).await,
                        Mode::Tls(acceptor) => {
                            let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                            let mut tls = tokio_openssl::SslStream::new(ssl, stream).unwrap();
                            if std::pin::Pin::new(&mut tls).accept().await.is_err() {
                                return;
                            }
                            if tls.ssl().selected_alpn_protocol() == Some(b"h2") {
                                serve_h2(tls, svc).await
                            } else {
                                serve_h1(tls, svc).await
                            }
                        }
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Origin {
            name: name.to_string(),
            addr,
            hits,
            behaviour,
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stop listening and close every open connection.
    pub async fn stop(self) -> SocketAddr {
        self.task.abort();
        let _ = self.task.await;
        self.addr
    }
}

type Echo = Result<Response<Full<Bytes>>, std::io::Error>;

/// Who answers on an origin connection: (name, hits, behaviour).
type Echoer = (String, Arc<AtomicUsize>, Arc<Behaviour>);

async fn serve_h1<S>(io: S, (n, h, b): Echoer)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| serve_echo(n.clone(), h.clone(), b.clone(), req));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

async fn serve_h2<S>(io: S, (n, h, b): Echoer)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| serve_echo(n.clone(), h.clone(), b.clone(), req));
    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

async fn serve_echo(
    name: String,
    hits: Arc<AtomicUsize>,
    b: Arc<Behaviour>,
    req: Request<hyper::body::Incoming>,
) -> Echo {
    if req.uri().path() == "/healthz" {
        let ok = b.healthy.load(Ordering::SeqCst);
        let resp = Response::builder().status(if ok { 200 } else { 503 });
        return Ok(resp
            .body(Full::new(Bytes::from_static(b"health\n")))
            .unwrap());
    }
    hits.fetch_add(1, Ordering::SeqCst);
    if b.reset.load(Ordering::SeqCst) {
        return Err(std::io::Error::other("told to die mid-request"));
    }
    let delay = b.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.to_string())
            .or_default()
            .push(v.to_str().unwrap_or("?").to_string());
    }
    let (method, version, uri) = (
        req.method().to_string(),
        format!("{:?}", req.version()),
        req.uri().to_string(),
    );
    // Read the whole request, as a real backend does (one that answers first makes an HTTP/2
    // client reset the rest of its body).
    let body_len = http_body_util::BodyExt::collect(req.into_body())
        .await
        .map_or(0, |b| b.to_bytes().len());
    let body = json!({
        "origin": name,
        "method": method,
        "version": version,
        "uri": uri,
        "body_len": body_len,
        "headers": headers,
    });
    let status = b.status.load(Ordering::SeqCst);
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-origin", name)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap())
}

/// A running gatehouse process with its own temporary directory.
pub struct Gatehouse {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub admin_port: u16,
    pub config: PathBuf,
    child: Child,
}

/// Result of running a gatehouse subcommand to completion.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Write a main config (and extra files) into a fresh directory. `body` holds everything but
/// `listen` and `server`, which the harness adds with an ephemeral port and private paths.
/// A configuration written to a fresh directory, with its ports.
pub struct Written {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub admin_port: u16,
    pub config: PathBuf,
}

pub fn write_config(body: &str, files: &[(&str, &str)]) -> Written {
    write_config_listen("", body, files)
}

/// Like [`write_config`], with more keys for the `listen` section (e.g. `https_redirect`).
pub fn write_config_listen(listen_extra: &str, body: &str, files: &[(&str, &str)]) -> Written {
    write_config_sections(listen_extra, "", body, files)
}

/// Like [`write_config`], with more keys for the `server` section (indented by two spaces).
pub fn write_config_server(server_extra: &str, body: &str) -> Written {
    write_config_sections("", server_extra, body, &[])
}

fn write_config_sections(
    listen_extra: &str,
    server_extra: &str,
    body: &str,
    files: &[(&str, &str)],
) -> Written {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let admin_port = free_port();
    let d = dir.path().display();
    let main = format!(
        "admin: \"127.0.0.1:{admin_port}\"\nlisten:\n  http: [\"127.0.0.1:{port}\"]\n{listen_extra}server:\n  threads: 2\n  grace_period: 1s\n  \
         shutdown_timeout: 1s\n  pid_file: {d}/gatehouse.pid\n  upgrade_sock: {d}/upgrade.sock\n{server_extra}{body}"
    );
    let config = dir.path().join("gatehouse.yaml");
    std::fs::write(&config, main).unwrap();
    for (name, content) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    Written {
        dir,
        port,
        admin_port,
        config,
    }
}

/// Run `gatehouse <args>` to completion.
pub fn gatehouse_cmd(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run gatehouse");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `gatehouse check` on a config written like [`write_config`].
pub fn check(body: &str, files: &[(&str, &str)]) -> Output {
    let w = write_config(body, files);
    gatehouse_cmd(&["check", "-c", w.config.to_str().unwrap()])
}

impl Gatehouse {
    pub async fn start(body: &str) -> Gatehouse {
        Self::start_with(body, &[]).await
    }

    pub async fn start_with(body: &str, files: &[(&str, &str)]) -> Gatehouse {
        Self::launch(write_config(body, files)).await
    }

    /// Start on a configuration made by [`write_config`] or [`write_config_listen`].
    pub async fn launch(w: Written) -> Gatehouse {
        let Written {
            dir,
            port,
            admin_port,
            config,
        } = w;
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(BIN)
            .args(["run", "-c", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gatehouse");
        let mut gh = Gatehouse {
            dir,
            port,
            admin_port,
            config,
            child,
        };
        gh.wait_ready().await;
        gh
    }

    /// Wait until `/readyz` says every listener (HTTP, HTTPS, streams) accepts connections.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let c = client();
        let mut last = String::from("admin listener not accepting");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gatehouse exited early ({status}):\n{}", self.log());
            }
            match c.get(self.admin_url("/readyz")).send().await {
                Ok(r) if r.status() == 200 => return,
                Ok(r) => last = r.text().await.unwrap_or_default(),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("gatehouse not ready within 20s ({last}):\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin_port, path)
    }

    /// The Prometheus text from the admin listener.
    pub async fn metrics(&self) -> String {
        get_text(&client(), &self.admin_url("/metrics")).await
    }

    /// The `/status` JSON from the admin listener.
    pub async fn status(&self) -> serde_json::Value {
        client()
            .get(self.admin_url("/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Wait until the metric `series` reaches at least `min` (false after `timeout`).
    pub async fn metric_reaches(&self, series: &str, min: f64, timeout: Duration) -> bool {
        eventually(timeout, async || {
            metric(&self.metrics().await, series) >= min
        })
        .await
    }

    /// The OS process id of the gatehouse this harness started.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process the harness started has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Replace the main configuration file (keeping the harness's listen/server sections).
    pub fn rewrite_config(&self, body: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let head_end = text
            .find("  upgrade_sock:")
            .and_then(|i| text[i..].find('\n').map(|j| i + j + 1))
            .unwrap();
        std::fs::write(&self.config, format!("{}{body}", &text[..head_end])).unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Send raw bytes and read the whole response (the request should ask to close).
    pub async fn raw(&self, request: &[u8]) -> String {
        raw_request(self.port, request).await
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send raw bytes to a port and read until the server closes (or 5 s pass). Async, so that
/// origins on the test's own runtime keep being served meanwhile.
pub async fn raw_request(port: u16, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A client that talks to gatehouse directly (no system proxy), one for every test.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// An HTTP/2-only client for gatehouse's HTTPS listener on `port` (self-signed fallback
/// certificate not verified), with `host` resolved to it.
pub fn h2_client(host: &str, port: u16) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .http2_prior_knowledge()
        .resolve(host, ([127, 0, 0, 1], port).into())
        .build()
        .unwrap()
}

/// GET `url` with extra request headers; a name given twice is sent as two lines.
pub async fn get_with(
    c: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let req = headers
        .iter()
        .fold(c.get(url), |r, (n, v)| r.header(*n, *v));
    req.send().await.unwrap()
}

/// The body of a GET to `url`.
pub async fn get_text(c: &reqwest::Client, url: &str) -> String {
    c.get(url).send().await.unwrap().text().await.unwrap()
}

/// GET `url` with a Host header; returns (status, body).
pub async fn get_host(c: &reqwest::Client, url: &str, host: &str) -> (u16, String) {
    let r = match c.get(url).header("host", host).send().await {
        Ok(r) => r,
        Err(e) => return (0, format!("request failed: {e:?}")),
    };
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// The origin name in an echo body (or the raw body if it is not one).
pub fn origin_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["origin"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}

/// Parse an echo body.
pub fn echo(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not an echo body: {body}"))
}

/// The value of one series (name with its labels, as rendered) in a Prometheus text; 0 when
/// the series is absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}
