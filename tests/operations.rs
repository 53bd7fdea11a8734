//! Operating gatehouse: the admin endpoints and metrics, the access log, hot reload (CLI,
//! SIGHUP, bad configurations) and the zero-downtime binary upgrade, under client load.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test]
async fn metrics_count_a_known_mix_of_requests() {
    let o = Origin::start("o").await;
    let gh = Gatehouse::start(&format!(
        r#"services: {{ s: {{ targets: ["{}"], health_check: {{ tcp: {{}}, interval: 1s }} }} }}
ingresses:
  - name: shop
    rules:
      - host: shop.test
        paths:
          - {{ path: /, service: s }}
          - {{ path: /limited, service: s, rate_limit: {{ requests_per_second: 0.01 }} }}
          - {{ path: /private, service: s, access: {{ deny: ["0.0.0.0/0"] }} }}
"#,
        o.addr
    ))
    .await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(get_host(&c, &gh.url("/a"), "shop.test").await.0, 200);
    }
    assert_eq!(
        c.post(gh.url("/a"))
            .header("host", "shop.test")
            .body("12345")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(get_host(&c, &gh.url("/"), "nope.test").await.0, 404);
    assert_eq!(get_host(&c, &gh.url("/limited"), "shop.test").await.0, 200);
    assert_eq!(get_host(&c, &gh.url("/limited"), "shop.test").await.0, 429);
    assert_eq!(get_host(&c, &gh.url("/private"), "shop.test").await.0, 403);
    let text = gh.metrics().await;
    let get = |s: &str| metric(&text, s);
    assert_eq!(
        get(r#"gatehouse_requests_total{method="GET",route="shop/shop.test/",status="2xx"}"#),
        3.0,
        "{text}"
    );
    assert_eq!(
        get(r#"gatehouse_requests_total{method="POST",route="shop/shop.test/",status="2xx"}"#),
        1.0
    );
    assert_eq!(
        get(r#"gatehouse_requests_total{method="GET",route="none",status="4xx"}"#),
        1.0
    );
    assert_eq!(
        get(
            r#"gatehouse_requests_total{method="GET",route="shop/shop.test/limited",status="4xx"}"#
        ),
        1.0
    );
    assert_eq!(
        get(r#"gatehouse_rate_limited_total{route="shop/shop.test/limited"}"#),
        1.0
    );
    assert_eq!(
        get(r#"gatehouse_access_denied_total{route="shop/shop.test/private"}"#),
        1.0
    );
    assert_eq!(
        get(r#"gatehouse_request_body_bytes_total{route="shop/shop.test/"}"#),
        5.0
    );
    assert_eq!(
        get(r#"gatehouse_request_duration_seconds_count{route="shop/shop.test/"}"#),
        4.0
    );
    assert_eq!(
        get(r#"gatehouse_upstream_response_seconds_count{pool="s"}"#),
        5.0
    );
    assert_eq!(
        get(&format!(
            r#"gatehouse_backend_up{{backend="{}",pool="s"}}"#,
            o.addr
        )),
        1.0
    );
    assert!(text.contains("gatehouse_config_info{hash="), "{text}");
    let checks = format!(
        r#"gatehouse_health_checks_total{{backend="{}",pool="s",result="success"}}"#,
        o.addr
    );
    let checked = gh
        .metric_reaches(&checks, 1.0, Duration::from_secs(5))
        .await;
    assert!(checked, "no successful health check counted");
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
    assert_eq!(get("gatehouse_requests_in_flight"), 0.0);
    // The test client keeps its keep-alive connection open: at least one is established.
    let listener = format!(
        r#"gatehouse_downstream_connections{{kind="http",listener="127.0.0.1:{}"}}"#,
        gh.port
    );
    assert!(get(&listener) >= 1.0, "{text}");
}

#[tokio::test]
async fn health_ready_and_status_endpoints() {
    let o = Origin::start("o").await;
    let gh = Gatehouse::start(&format!(
        "services: {{ s: {{ targets: [\"{}\", \"127.0.0.1:{}\"], health_check: {{ tcp: {{}}, interval: 100ms, fall: 1 }} }} }}\ningresses: [{{ name: app, rules: [{{ host: a.test, paths: [{{ path: /, service: s }}] }}] }}]\n",
        o.addr,
        free_port()
    ))
    .await;
    let c = client();
    let r = c.get(gh.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap().as_str()),
        (200, "ok\n")
    );
    assert_eq!(
        c.get(gh.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(gh.admin_url("/nope")).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        c.post(gh.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    let down_seen = eventually(Duration::from_secs(5), async || {
        let s: serde_json::Value = gh.status().await;
        s["pools"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["healthy"] == false)
    })
    .await;
    assert!(down_seen);
    let s: serde_json::Value = gh.status().await;
    assert_eq!(s["routes"][0]["name"], "app/a.test/");
    assert_eq!(s["routes"][0]["target"]["service"], "s");
    assert_eq!(s["pools"][0]["name"], "s");
    assert_eq!(s["config"]["hash"].as_str().unwrap().len(), 16);
    let healthy: Vec<_> = s["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["healthy"].clone())
        .collect();
    assert_eq!(healthy, [true, false]);
}

#[tokio::test]
async fn the_access_log_has_one_json_line_per_request() {
    let o = Origin::start("o").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gh = Gatehouse::start(&format!(
        "access_log: {{ path: {}, format: json }}\nservices: {{ s: {{ targets: [\"{}\"] }} }}\ningresses: [{{ name: app, rules: [{{ paths: [{{ path: /, service: s }}] }}] }}]\n",
        log.display(),
        o.addr
    ))
    .await;
    let c = client();
    for i in 0..20 {
        let r = c
            .get(gh.url(&format!("/item/{i}?q=1")))
            .header("user-agent", "t/1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(get_host(&c, &gh.url("/"), "bad host").await.0, 200);
    let lines = async || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert!(
        eventually(Duration::from_secs(5), async || lines().await == 21).await,
        "{}",
        lines().await
    );
    let text = std::fs::read_to_string(&log).unwrap();
    for (i, line) in text.lines().take(20).enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["uri"], format!("/item/{i}?q=1"));
        assert_eq!(v["status"], 200);
        assert_eq!(v["method"], "GET");
        assert_eq!(v["client_ip"], "127.0.0.1");
        assert_eq!(v["route"], "app/*/");
        assert_eq!(v["upstream"], o.addr.to_string());
        assert_eq!(v["user_agent"], "t/1");
        assert_eq!(v["request_id"].as_str().unwrap().len(), 32);
        assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
        assert!(v["upstream_time_ms"].as_f64().is_some());
        assert!(v["tls"].is_null());
    }
}

/// Sends keep-alive requests back to back until told to stop; counts successes, failures and
/// the origins that answered.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(url: String, host: &'static str) -> Load {
        let (stop, ok) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, o, f, n) = (stop.clone(), ok.clone(), failed.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let c = client();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                match get_host(&c, &url, host).await {
                    (200, body) => {
                        o.fetch_add(1, Ordering::SeqCst);
                        let origin = origin_of(&body);
                        let mut seen = n.lock().unwrap();
                        if seen.last() != Some(&origin) {
                            seen.push(origin);
                        }
                    }
                    (status, body) => f.lock().unwrap().push(format!("{status} {body}")),
                }
            }
        });
        Load {
            stop,
            ok,
            failed,
            seen,
            task,
        }
    }

    async fn wait_for(&self, n: usize) {
        let start = self.ok.load(Ordering::SeqCst);
        assert!(
            eventually(Duration::from_secs(10), async || self
                .ok
                .load(Ordering::SeqCst)
                >= start + n)
            .await
        );
    }

    async fn finish(self) -> (usize, Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let failed = self.failed.lock().unwrap().clone();
        let seen = self.seen.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failed, seen)
    }
}

fn two_pool_config(a: &Origin, b: &Origin, route_to: &str) -> String {
    format!(
        "services:\n  a: {{ targets: [\"{}\"] }}\n  b: {{ targets: [\"{}\"] }}\ningresses: [{{ name: app, rules: [{{ host: shop.test, paths: [{{ path: /, service: {route_to} }}] }}] }}]\n",
        a.addr, b.addr
    )
}

// Multi-threaded: the test blocks on CLI commands while the load and the origins keep going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_switches_routing_without_a_failed_request() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let gh = Gatehouse::start(&two_pool_config(&a, &b, "a")).await;
    let load = Load::start(gh.url("/"), "shop.test");
    load.wait_for(50).await;

    gh.rewrite_config(&two_pool_config(&a, &b, "b"));
    let out = gatehouse_cmd(&["reload", "-c", gh.config.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("reloaded configuration"),
        "{}",
        out.stdout
    );
    load.wait_for(50).await;

    // A broken configuration is refused; the running one keeps serving.
    gh.rewrite_config("services: { a: { targets: [] } }\ningresses: [{ rules: [{ paths: [{ path: /, service: nope }] }] }]\n");
    let out = gatehouse_cmd(&["reload", "-c", gh.config.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("services.a.targets"), "{}", out.stderr);
    assert!(
        out.stderr.contains("the running configuration stays"),
        "{}",
        out.stderr
    );
    load.wait_for(50).await;

    // Back to pool a, by SIGHUP this time.
    gh.rewrite_config(&two_pool_config(&a, &b, "a"));
    unsafe { libc::kill(gh.pid() as i32, libc::SIGHUP) };
    let c = client();
    assert!(
        eventually(Duration::from_secs(10), async || {
            origin_of(&get_host(&c, &gh.url("/"), "shop.test").await.1) == "a"
        })
        .await
    );
    load.wait_for(50).await;

    let (ok, failed, seen) = load.finish().await;
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(seen, ["a", "b", "a"], "routing did not follow the reloads");
    let text = gh.metrics().await;
    assert_eq!(
        metric(&text, r#"gatehouse_config_reloads_total{result="success"}"#),
        2.0
    );
    assert_eq!(
        metric(&text, r#"gatehouse_config_reloads_total{result="failure"}"#),
        1.0
    );
}

#[tokio::test]
async fn reload_keeps_health_state_and_reports_listener_changes() {
    let a = Origin::start("a").await;
    let dead = free_port();
    let body = |extra: &str| {
        format!(
            "services:\n  s: {{ targets: [\"{}\", \"127.0.0.1:{dead}\"], health_check: {{ tcp: {{}}, interval: 50ms, fall: 1, rise: 1 }} }}\ningresses: [{{ rules: [{{ paths: [{{ path: /, service: s }}{extra}] }}] }}]\n",
            a.addr
        )
    };
    let gh = Gatehouse::start(&body("")).await;
    let c = client();
    assert!(
        eventually(Duration::from_secs(5), async || gh.status().await["pools"]
            [0]["backends"][1]["healthy"]
            == false)
        .await
    );
    // Add a route: the unchanged pool keeps its (unhealthy) state across the reload.
    gh.rewrite_config(&body(", { path: /x, respond: { body: x } }"));
    let r = c.post(gh.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        gh.status().await["pools"][0]["backends"][1]["healthy"],
        false
    );
    assert_eq!(gh.status().await["routes"].as_array().unwrap().len(), 2);
    // A listener change cannot be applied by a reload, and says so.
    let text = std::fs::read_to_string(&gh.config).unwrap();
    std::fs::write(
        &gh.config,
        text.replace(
            &format!("127.0.0.1:{}\"]", gh.port),
            &format!("127.0.0.1:{}\"]", free_port()),
        ),
    )
    .unwrap();
    let r = c.post(gh.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("listen.http changed: not applied until `gatehouse upgrade`"));
    assert_eq!(get_host(&c, &gh.url("/x"), "h").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_load_drops_nothing() {
    let o = Origin::start("o").await;
    let mut gh = Gatehouse::start(&format!(
        "services: {{ s: {{ targets: [\"{}\"] }} }}\ningresses: [{{ rules: [{{ paths: [{{ path: /, service: s }}] }}] }}]\n",
        o.addr
    ))
    .await;
    let old_pid = gh.pid();
    let load = Load::start(gh.url("/"), "shop.test");
    load.wait_for(50).await;
    let upgrade_log = std::fs::File::create(gh.path().join("upgrade.log")).unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(BIN)
        .args(["upgrade", "-c", gh.config.to_str().unwrap()])
        .stderr(upgrade_log)
        .output()
        .unwrap();
    let took = started.elapsed();
    let upgraded_log = std::fs::read_to_string(gh.path().join("upgrade.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\n{upgraded_log}\n{}",
        String::from_utf8_lossy(&out.stdout),
        gh.log()
    );
    let new_pid: u32 = std::fs::read_to_string(gh.path().join("gatehouse.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new_pid, old_pid);
    assert!(gh.exited(), "the old process is still running");
    // Pingora's fixed 5 s hand-over delay + grace_period 1s + shutdown_timeout 1s, + start-up.
    assert!(took < Duration::from_secs(12), "upgrade took {took:?}");
    load.wait_for(50).await;
    let (ok, failed, _) = load.finish().await;
    unsafe { libc::kill(new_pid as i32, libc::SIGTERM) };
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    // New connections were accepted all along: no refused connection.
    assert!(ok >= 100);
}
