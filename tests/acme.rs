//! ACME end to end against Debian's Pebble (Let's Encrypt's test server): issuance over
//! HTTP-01, reuse after a restart, renewal inside the window, and an unreachable CA.

mod common;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Pebble {
    _dir: tempfile::TempDir,
    acme_port: u16,
    mgmt_port: u16,
    /// The CA that signed Pebble's own HTTPS certificate (gatehouse's `tls.acme.ca`).
    ca_file: PathBuf,
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
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A throwaway CA and a localhost certificate for Pebble's own HTTPS endpoint.
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "pebble test CA");
        let ca = p.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(d.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(d.join("key.pem"), key.serialize_pem()).unwrap();

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
            "tlsPort": free_port(),
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

fn acme_yaml(dir: &str, ca: &Path, storage: &Path, extra: &str, origin: SocketAddr) -> String {
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
{extra}services: {{ app: {{ targets: ["{origin}"] }} }}
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
        "",
        origin.addr,
    )
    .replace(
        "check_interval: 1s",
        "check_interval: 1s\n    renew_before: 2h",
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
            "ingresses[0].tls.hosts[0]: \"*.wild.test\": HTTP-01 cannot certify wildcards"
        ),
        "{}",
        out.stderr
    );
    let out = check(
        "tls: { acme: { directory: \"http://insecure\", email: nope, ca: /no/such.pem, renew_before: soon } }\ningresses: [{ tls: { acme: true }, rules: [{ host: a.test, paths: [{ respond: {} }] }] }]\n",
        &[],
    );
    assert_eq!(out.code, 1);
    for want in [
        "tls.acme.directory: \"http://insecure\": write an https:// URL",
        "tls.acme.email: \"nope\" is not an email address",
        "tls.acme.ca: /no/such.pem is not a readable file",
        "tls.acme.renew_before: \"soon\" is not a duration",
    ] {
        assert!(
            out.stderr.contains(want),
            "missing {want:?}:\n{}",
            out.stderr
        );
    }
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
