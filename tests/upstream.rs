//! Upstream pools through the real binary: balancing, health checks, retries, timeouts and
//! the headers gatehouse forwards.

mod common;
use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

async fn count_origins(gh: &Gatehouse, n: usize) -> HashMap<String, usize> {
    let c = client();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let (status, body) = get_host(&c, &gh.url("/"), "x.test").await;
        assert_eq!(status, 200, "{body}");
        *counts.entry(origin_of(&body)).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn weighted_round_robin_follows_weights() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let gh = Gatehouse::start(&format!(
        "services:\n  s:\n    targets: [\"{}\", {{ address: \"{}\", weight: 3 }}]\n{}",
        a.addr,
        b.addr,
        one_route("s")
    ))
    .await;
    let counts = count_origins(&gh, 200).await;
    assert_eq!(counts["a"], 50, "{counts:?}");
    assert_eq!(counts["b"], 150, "{counts:?}");
}

#[tokio::test]
async fn random_spreads_and_consistent_hash_sticks() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let gh = Gatehouse::start(&format!(
        r#"services:
  r: {{ targets: ["{a}", "{b}"], balance: random }}
  h: {{ targets: ["{a}", "{b}"], balance: consistent_hash, hash_key: "header:X-User" }}
ingresses:
  - rules:
      - paths: [{{ path: /r, service: r }}, {{ path: /h, service: h }}]
"#,
        a = a.addr,
        b = b.addr
    ))
    .await;
    let c = client();
    let mut seen = HashMap::<String, usize>::new();
    for _ in 0..100 {
        let body = get_text(&c, &gh.url("/r")).await;
        *seen.entry(origin_of(&body)).or_default() += 1;
    }
    assert!(
        seen.len() == 2 && seen.values().all(|n| *n >= 20),
        "random: {seen:?}"
    );
    let mut per_user = HashMap::<String, String>::new();
    let mut distinct = std::collections::HashSet::new();
    for round in 0..3 {
        for user in 0..20 {
            let body = c
                .get(gh.url("/h"))
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let o = origin_of(&body);
            distinct.insert(o.clone());
            if round == 0 {
                per_user.insert(user.to_string(), o);
            } else {
                assert_eq!(per_user[&user.to_string()], o, "user-{user} moved");
            }
        }
    }
    assert_eq!(distinct.len(), 2, "20 users all hashed to one backend");
}

#[tokio::test]
async fn least_connections_avoids_the_busy_backend() {
    let slow = Origin::start("slow").await;
    slow.behaviour.delay_ms.store(1500, Ordering::SeqCst);
    let fast = Origin::start("fast").await;
    let gh = Gatehouse::start(&format!(
        "services:\n  s: {{ targets: [\"{}\", \"{}\"], balance: least_connections }}\n{}",
        slow.addr,
        fast.addr,
        one_route("s")
    ))
    .await;
    // Occupy the slow backend with two requests in flight, then check the rest go to fast.
    let c = client();
    let url = gh.url("/");
    let mut pending = Vec::new();
    for _ in 0..2 {
        let (c, url) = (c.clone(), url.clone());
        pending.push(tokio::spawn(async move {
            c.get(url).send().await.unwrap().text().await
        }));
    }
    assert!(eventually(Duration::from_secs(5), async || slow.hits() >= 1).await);
    let counts = count_origins(&gh, 20).await;
    assert!(counts.get("fast").copied().unwrap_or(0) >= 19, "{counts:?}");
    for p in pending {
        p.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn refused_connection_is_retried_on_another_backend() {
    let live = Origin::start("live").await;
    let dead = free_port();
    let gh = Gatehouse::start(&format!(
        "services:\n  s: {{ targets: [\"127.0.0.1:{dead}\", \"{}\"], retries: 1 }}\n{}",
        live.addr,
        one_route("s")
    ))
    .await;
    let counts = count_origins(&gh, 10).await;
    assert_eq!(counts["live"], 10);
}

#[tokio::test]
async fn refused_everywhere_is_502_and_no_retries_means_one_try() {
    let (d1, d2) = (free_port(), free_port());
    let gh = Gatehouse::start(&format!(
        "services:\n  s: {{ targets: [\"127.0.0.1:{d1}\", \"127.0.0.1:{d2}\"], retries: 0 }}\n{}",
        one_route("s")
    ))
    .await;
    let (status, body) = get_host(&client(), &gh.url("/"), "x").await;
    assert_eq!((status, body.as_str()), (502, "502 Bad Gateway\n"));
}

#[tokio::test]
async fn http_health_check_removes_and_restores_a_backend() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let gh = Gatehouse::start(&format!(
        r#"services:
  s:
    targets: ["{}", "{}"]
    health_check: {{ http: {{ path: /healthz, expect: "200-299" }}, interval: 100ms, timeout: 500ms, rise: 2, fall: 2 }}
{}"#,
        a.addr,
        b.addr,
        one_route("s")
    ))
    .await;
    let c = client();
    b.behaviour.healthy.store(false, Ordering::SeqCst);
    // Once b is out, a run of requests all land on a.
    let only_a = eventually(Duration::from_secs(10), async || {
        for _ in 0..10 {
            if origin_of(&get_host(&c, &gh.url("/"), "x").await.1) != "a" {
                return false;
            }
        }
        true
    })
    .await;
    assert!(only_a, "b was never taken out:\n{}", gh.log());
    assert!(gh.log().contains("is unhealthy"), "{}", gh.log());
    b.behaviour.healthy.store(true, Ordering::SeqCst);
    let b_back = eventually(Duration::from_secs(10), async || {
        origin_of(&get_host(&c, &gh.url("/"), "x").await.1) == "b"
    })
    .await;
    assert!(b_back, "b never came back:\n{}", gh.log());
}

#[tokio::test]
async fn no_healthy_backend_is_503_and_recovery_follows_the_backend() {
    let a = Origin::start("a").await;
    let gh = Gatehouse::start(&format!(
        "services:\n  s: {{ targets: [\"{}\"], health_check: {{ tcp: {{}}, interval: 100ms, timeout: 200ms, rise: 1, fall: 1 }} }}\n{}",
        a.addr,
        one_route("s")
    ))
    .await;
    // Each attempt is bounded, and every answer seen is kept for the failure message: once
    // in CI one attempt waited out the whole window and the message could not say on what.
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert_eq!(get_host(&c, &gh.url("/"), "x").await.0, 200);
    let addr = a.stop().await;
    let mut seen = Vec::new();
    let started = std::time::Instant::now();
    let down = eventually(Duration::from_secs(10), async || {
        let answer = get_host(&c, &gh.url("/"), "x").await;
        seen.push((started.elapsed(), answer.clone()));
        answer == (503, "503 Service Unavailable\n".to_string())
    })
    .await;
    assert!(down, "never 503; answers: {seen:?}\n{}", gh.log());
    let _a = Origin::start_on("a", addr).await;
    let up = eventually(Duration::from_secs(10), async || {
        get_host(&c, &gh.url("/"), "x").await.0 == 200
    })
    .await;
    assert!(up, "never recovered:\n{}", gh.log());
}

#[tokio::test]
async fn read_timeout_is_504() {
    let slow = Origin::start("slow").await;
    slow.behaviour.delay_ms.store(3000, Ordering::SeqCst);
    let gh = Gatehouse::start(&format!(
        "services:\n  s: {{ targets: [\"{}\"], timeouts: {{ read: 300ms }} }}\n{}",
        slow.addr,
        one_route("s")
    ))
    .await;
    let started = std::time::Instant::now();
    let (status, _) = get_host(&client(), &gh.url("/"), "x").await;
    assert_eq!(status, 504);
    // The timeout, not the backend, ended the request.
    assert!(started.elapsed() < Duration::from_millis(2500));
}

#[tokio::test]
async fn upstream_status_and_keepalive_are_passed_through() {
    let a = Origin::start("a").await;
    a.behaviour.status.store(418, Ordering::SeqCst);
    let gh = Gatehouse::start(&format!(
        "services:\n  s: {{ targets: [\"{}\"] }}\n{}",
        a.addr,
        one_route("s")
    ))
    .await;
    let c = client();
    for _ in 0..5 {
        let r = c.get(gh.url("/")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 418);
        assert_eq!(r.headers()["x-origin"], "a");
    }
    assert_eq!(a.hits(), 5);
}

#[tokio::test]
async fn forwarded_headers_are_set_and_host_is_kept() {
    let a = Origin::start("a").await;
    let gh = Gatehouse::start(&format!(
        r#"services:
  s: {{ targets: ["{a}"] }}
  renamed: {{ targets: ["{a}"], host_header: internal.svc }}
ingresses:
  - rules:
      - paths: [{{ path: /, service: s }}, {{ path: /renamed, service: renamed }}]
"#,
        a = a.addr
    ))
    .await;
    let c = client();
    let sent = [
        ("host", "Shop.Example.com"),
        ("x-forwarded-for", "203.0.113.7"),
    ];
    let body = get_with(&c, &gh.url("/"), &sent)
        .await
        .text()
        .await
        .unwrap();
    let h = &echo(&body)["headers"];
    assert_eq!(h["host"][0], "Shop.Example.com");
    assert_eq!(h["x-forwarded-for"][0], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-real-ip"][0], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-host"][0], "Shop.Example.com");

    let body = get_host(&c, &gh.url("/renamed"), "shop.example.com")
        .await
        .1;
    let h = &echo(&body)["headers"];
    assert_eq!(h["host"][0], "internal.svc");
    assert_eq!(h["x-forwarded-host"][0], "shop.example.com");
    assert_eq!(h["x-forwarded-for"][0], "127.0.0.1");

    // Two X-Forwarded-For lines from the client become one list, in order, with the peer.
    let sent = [
        ("x-forwarded-for", "198.51.100.1"),
        ("x-forwarded-for", "203.0.113.7, 192.0.2.9"),
    ];
    let body = get_with(&c, &gh.url("/"), &sent)
        .await
        .text()
        .await
        .unwrap();
    let xff = &echo(&body)["headers"]["x-forwarded-for"];
    assert_eq!(xff.as_array().map(Vec::len), Some(1), "{xff}");
    assert_eq!(xff[0], "198.51.100.1, 203.0.113.7, 192.0.2.9, 127.0.0.1");
}

/// An origin that answers every connection with the request head it received, byte for byte.
async fn head_echo() -> std::net::SocketAddr {
    head_echo_with("").await
}

/// [head_echo], its answer carrying `extra` header lines (each ending in CRLF) first.
async fn head_echo_with(extra: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    head.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.write_all(&head).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn forwarded_headers_are_written_in_their_usual_case_and_edited_ones_in_lowercase() {
    let origin = head_echo().await;
    let gh = Gatehouse::start(&format!(
        r#"services:
  s: {{ targets: ["{origin}"] }}
ingresses:
  - rules:
      - paths:
          - path: /
            service: s
            request_headers: {{ set: {{ X-Edited: "1" }}, add: {{ X-Added: "2" }} }}
"#
    ))
    .await;
    let (status, head) = get_host(&client(), &gh.url("/"), "x").await;
    assert_eq!(status, 200, "{head}\n{}", gh.log());
    for line in [
        "\r\nX-Forwarded-For: 127.0.0.1\r\n",
        "\r\nX-Real-IP: 127.0.0.1\r\n",
        "\r\nX-Forwarded-Proto: http\r\n",
        "\r\nX-Forwarded-Host: x\r\n",
        "\r\nx-edited: 1\r\n",
        "\r\nx-added: 2\r\n",
    ] {
        assert!(head.contains(line), "{line:?} not in:\n{head}");
    }
    assert!(head.contains("\r\nX-Request-Id: "), "{head}");
}

#[tokio::test]
async fn header_names_are_passed_on_as_spelled_both_ways() {
    // Usual spellings, lower case, odd case, and one name in two spellings, each way.
    let origin =
        head_echo_with("Set-Cookie: a=1\r\nServer: o\r\nset-COOKIE: b=2\r\nX-Origin-ODD: y\r\n")
            .await;
    let gh = Gatehouse::start(&format!(
        "services:\n  s: {{ targets: [\"{origin}\"] }}\n{}",
        one_route("s")
    ))
    .await;
    let answer = gh
        .raw(b"GET / HTTP/1.1\r\nHost: x\r\nuser-agent: lower\r\nx-mixed: 1\r\nX-MiXed: 2\r\nACCEPT: */*\r\nAccept-Language: en\r\nConnection: close\r\n\r\n")
        .await;
    let (response, request) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        request.contains("\r\nuser-agent: lower\r\nx-mixed: 1\r\nX-MiXed: 2\r\nACCEPT: */*\r\nAccept-Language: en\r\n"),
        "{answer}"
    );
    assert!(
        response
            .contains("\r\nSet-Cookie: a=1\r\nset-COOKIE: b=2\r\nServer: o\r\nX-Origin-ODD: y\r\n"),
        "{answer}"
    );
}

#[tokio::test]
async fn hop_by_hop_fields_and_connection_nominated_ones_stay_here() {
    let origin = head_echo().await;
    let gh = Gatehouse::start(&format!(
        "services:\n  s: {{ targets: [\"{origin}\"] }}\n{}",
        one_route("s")
    ))
    .await;
    let hop = [
        "Keep-Alive: timeout=5",
        "Proxy-Connection: keep-alive",
        "Proxy-Authorization: Basic Zm9vOmJhcg==",
        "TE: trailers",
        "Trailer: X-Checksum",
        "HTTP2-Settings: AAMAAABkAAQAAP__",
        "Connection: close, X-Nominated",
        "X-Nominated: secret",
    ];
    let request = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\nX-Kept: yes\r\n\r\n",
        hop.join("\r\n")
    );
    let answer = gh.raw(request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The origin's body is the request head it received.
    let (_, head) = answer.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.contains("\r\nx-kept: yes\r\n"), "{answer}");
    for field in hop {
        let name = field.split(':').next().unwrap().to_ascii_lowercase();
        assert!(
            !head.contains(&format!("\r\n{name}:")),
            "{name} forwarded:\n{answer}"
        );
    }

    // A request with none of them is forwarded whole.
    let answer = gh
        .raw(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Kept: yes\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert!(
        answer.contains("\r\nX-Kept: yes\r\nAccept: */*\r\n"),
        "{answer}"
    );
}

#[tokio::test]
async fn hostname_targets_are_resolved_at_load() {
    let a = Origin::start("a").await;
    let gh = Gatehouse::start(&format!(
        "services:\n  s: {{ targets: [\"localhost:{}\"] }}\n{}",
        a.addr.port(),
        one_route("s")
    ))
    .await;
    // localhost may resolve to ::1 as well, where nothing listens: the retry covers it.
    let counts = count_origins(&gh, 4).await;
    assert_eq!(counts["a"], 4);
}

#[tokio::test]
async fn passive_health_ejects_failing_backends() {
    let good = Origin::start("good").await;
    let bad = Origin::start("bad").await;
    bad.behaviour.status.store(500, Ordering::SeqCst);
    let dead = free_port();
    let gh = Gatehouse::start(&format!(
        r#"services:
  refused: {{ targets: ["127.0.0.1:{dead}", "{good}"], retries: 1, passive_health: {{ failures: 1, eject_for: 60s }} }}
  erroring: {{ targets: ["{bad}", "{good}"], passive_health: {{ failures: 2, eject_for: 60s }} }}
  tolerant: {{ targets: ["{bad}", "{good}"], passive_health: off }}
ingresses:
  - rules:
      - paths: [{{ path: /refused, service: refused }}, {{ path: /erroring, service: erroring }}, {{ path: /tolerant, service: tolerant }}]
"#,
        good = good.addr,
        bad = bad.addr
    ))
    .await;
    let c = client();
    for _ in 0..10 {
        assert_eq!(get_host(&c, &gh.url("/refused"), "x").await.0, 200);
    }
    // Only the first request met the refused backend; then it was ejected.
    let text = gh.metrics().await;
    assert!(
        text.contains("gatehouse_upstream_retries_total{pool=\"refused\"} 1\n"),
        "{text}"
    );
    let mut errors = 0;
    for _ in 0..20 {
        errors += usize::from(get_host(&c, &gh.url("/erroring"), "x").await.0 == 500);
    }
    assert_eq!(
        errors, 2,
        "the 5xx backend was not ejected after two failures"
    );
    let mut tolerated = 0;
    for _ in 0..10 {
        tolerated += usize::from(get_host(&c, &gh.url("/tolerant"), "x").await.0 == 500);
    }
    assert_eq!(tolerated, 5);
    assert!(
        gh.log()
            .contains("failed 2 times in a row, ejected for 60s"),
        "{}",
        gh.log()
    );
}

/// Sends `n` requests with `method` (and a small body); returns (statuses, bodies).
async fn send_n(gh: &Gatehouse, method: reqwest::Method, n: usize) -> Vec<(u16, String)> {
    let c = client();
    let mut out = Vec::new();
    for _ in 0..n {
        let r = c
            .request(method.clone(), gh.url("/"))
            .header("host", "x.test")
            .body("payload")
            .send()
            .await
            .unwrap();
        out.push((r.status().as_u16(), r.text().await.unwrap()));
    }
    out
}

/// Two backends, `bad` (set up to fail) and a good one, in a pool with `options`: every GET
/// is answered by the good one, every POST reaches exactly one backend (its failures reach the
/// client). Returns gatehouse and how often `bad` was tried by the GETs.
async fn gets_replayed_posts_not(bad: &Origin, options: &str) -> (Gatehouse, usize) {
    let good = Origin::start("good").await;
    let gh = Gatehouse::start(&format!(
        "services:\n  s: {{ targets: [\"{}\", \"{}\"], passive_health: off{options} }}\n{}",
        bad.addr,
        good.addr,
        one_route("s")
    ))
    .await;
    let gets = send_n(&gh, reqwest::Method::GET, 6).await;
    assert!(
        gets.iter()
            .all(|(s, b)| *s == 200 && origin_of(b) == "good"),
        "{gets:?}"
    );
    let tried = bad.hits();
    assert!(tried >= 1);
    assert_eq!(good.hits(), 6);
    let (bad_before, good_before) = (bad.hits(), good.hits());
    let posts = send_n(&gh, reqwest::Method::POST, 6).await;
    let failed = posts.iter().filter(|(s, _)| *s == 502).count();
    assert_eq!(failed, bad.hits() - bad_before, "{posts:?}");
    assert!(failed >= 1);
    assert_eq!(bad.hits() + good.hits() - bad_before - good_before, 6);
    (gh, tried)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_statuses_replays_gets_never_posts() {
    let bad = Origin::start("bad").await;
    bad.behaviour.status.store(502, Ordering::SeqCst);
    let (gh, tried) = gets_replayed_posts_not(&bad, ", retry_on: [502, 503]").await;
    // Each GET `bad` answered 502 was replayed once; no POST was.
    let retried = metric(
        &gh.metrics().await,
        r#"gatehouse_upstream_retries_total{pool="s"}"#,
    );
    assert_eq!(retried, tried as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_dying_mid_request_is_retried_for_gets_not_posts() {
    // The request reached the dying backend: a GET is replayed, a POST answered 502.
    let dying = Origin::start("dying").await;
    dying.behaviour.reset.store(true, Ordering::SeqCst);
    gets_replayed_posts_not(&dying, "").await;
}

/// What a [`keepalive_origin`] saw of the connections that carried requests (health checks
/// connect too): how many there were, when gatehouse closed each one (EOF read while idle),
/// and how many the origin closed itself for being idle.
#[derive(Default)]
struct ConnLog {
    served: AtomicUsize,
    closed_idle: AtomicUsize,
    closed_by_peer: std::sync::Mutex<Vec<std::time::Instant>>,
}

/// A keep-alive HTTP/1.1 origin (bodiless requests, `Content-Length` answers, no `Connection`
/// header) that answers after `delay` and closes each connection silently `close_after` after
/// answering, if given.
async fn keepalive_origin(
    delay: Duration,
    close_after: Option<Duration>,
) -> (std::net::SocketAddr, Arc<ConnLog>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(ConnLog::default());
    let l = log.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let l = l.clone();
            tokio::spawn(async move {
                let mut n = 0;
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let wait = if head.is_empty() && n > 0 {
                        close_after
                    } else {
                        None
                    };
                    let read = match wait {
                        Some(d) => match tokio::time::timeout(d, s.read(&mut buf)).await {
                            Ok(r) => r,
                            Err(_) => {
                                // idle for close_after: close silently
                                l.closed_idle.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        },
                        None => s.read(&mut buf).await,
                    };
                    match read {
                        Ok(0) | Err(_) => {
                            if head.is_empty() && n > 0 {
                                l.closed_by_peer
                                    .lock()
                                    .unwrap()
                                    .push(std::time::Instant::now());
                            }
                            return;
                        }
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                    if head.ends_with(b"\r\n\r\n") {
                        head.clear();
                        if n == 0 {
                            n = l.served.fetch_add(1, Ordering::SeqCst) + 1;
                        }
                        tokio::time::sleep(delay).await;
                        let body = format!("connection {n}");
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, log)
}

#[tokio::test]
async fn idle_backend_connections_are_reused_then_closed_after_timeouts_idle() {
    let (origin, log) = keepalive_origin(Duration::ZERO, None).await;
    let gh = Gatehouse::start(&format!(
        "services:\n  s: {{ targets: [\"{origin}\"], timeouts: {{ idle: 1s }} }}\n{}",
        one_route("s")
    ))
    .await;
    let c = client();
    for _ in 0..20 {
        let r = c.get(gh.url("/")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.text().await.unwrap(), "connection 1");
    }
    let last = std::time::Instant::now();
    assert_eq!(
        log.served.load(Ordering::SeqCst),
        1,
        "one connection, reused"
    );
    let idle = "gatehouse_upstream_idle_connections";
    assert_eq!(metric(&gh.metrics().await, idle), 1.0);

    // Nothing more is sent: gatehouse closes the idle connection after about a second.
    let closed = eventually(Duration::from_secs(5), async || {
        !log.closed_by_peer.lock().unwrap().is_empty()
    })
    .await;
    assert!(closed, "the idle connection was never closed");
    let after = log.closed_by_peer.lock().unwrap()[0] - last;
    assert!(
        after >= Duration::from_millis(900),
        "closed after only {after:?}"
    );
    // (The count drops just after the close the origin saw.)
    let counted = eventually(Duration::from_secs(2), async || {
        metric(&gh.metrics().await, idle) == 0.0
    })
    .await;
    assert!(counted, "{idle} stays above 0");

    // The next request opens a new connection.
    let r = c.get(gh.url("/")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "connection 2");
}

#[tokio::test]
async fn a_backend_closing_idle_connections_costs_no_request() {
    // The backend closes each connection 100 ms after its answer, with no `Connection: close`;
    // no retries and POSTs: a request sent on such a connection would fail.
    let (origin, log) = keepalive_origin(Duration::ZERO, Some(Duration::from_millis(100))).await;
    let gh = Gatehouse::start(&format!(
        "services:\n  s: {{ targets: [\"{origin}\"], retries: 0 }}\n{}",
        one_route("s")
    ))
    .await;
    let c = client();
    for i in 1..=5 {
        let r = c.post(gh.url("/")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "request {i}");
        assert_eq!(r.text().await.unwrap(), format!("connection {i}"));
        let closed = eventually(Duration::from_secs(5), async || {
            log.closed_idle.load(Ordering::SeqCst) == i
        })
        .await;
        assert!(closed, "the origin closes its idle connection");
    }
    assert_eq!(log.served.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn the_keepalive_pool_size_bounds_idle_backend_connections() {
    let (origin, log) = keepalive_origin(Duration::from_millis(300), None).await;
    let gh = Gatehouse::launch(write_config_server(
        "  upstream_keepalive_pool_size: 2\n",
        &format!(
            "services:\n  s: {{ targets: [\"{origin}\"] }}\n{}",
            one_route("s")
        ),
    ))
    .await;
    // Five requests at once: five backend connections.
    let c = client();
    let all = (0..5).map(|_| {
        let c = c.clone();
        let url = gh.url("/");
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    });
    let statuses = futures_util::future::join_all(all).await;
    assert_eq!(statuses, vec![200; 5]);
    assert_eq!(log.served.load(Ordering::SeqCst), 5);
    // Two stay for reuse, three are closed.
    let closed = eventually(Duration::from_secs(5), async || {
        log.closed_by_peer.lock().unwrap().len() == 3
    })
    .await;
    assert!(
        closed,
        "closed: {}",
        log.closed_by_peer.lock().unwrap().len()
    );
    for _ in 0..4 {
        let body = get_text(&c, &gh.url("/")).await;
        assert!(body.starts_with("connection "), "{body}");
    }
    assert_eq!(
        log.served.load(Ordering::SeqCst),
        5,
        "the kept ones are reused"
    );
    assert_eq!(log.closed_by_peer.lock().unwrap().len(), 3);
}

/// An origin that reads one request head per connection and never answers; it sends on
/// `seen` when a head has arrived and on `closed` when the proxy closes that connection.
async fn silent_origin() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
    let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (seen_tx, closed_tx) = (seen_tx.clone(), closed_tx.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            head.extend_from_slice(&buf[..n]);
                            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                                let _ = seen_tx.send(());
                                head.clear();
                            }
                        }
                    }
                }
                let _ = closed_tx.send(());
            });
        }
    });
    (addr, seen, closed)
}

#[tokio::test]
async fn a_client_leaving_while_the_backend_thinks_closes_the_backend_connection() {
    use tokio::io::AsyncWriteExt;
    let (origin, mut seen, mut closed) = silent_origin().await;
    let gh = Gatehouse::start(&format!(
        "services:\n  s: {{ targets: [\"{origin}\"], retries: 0, timeouts: {{ read: 60s }} }}\n{}",
        one_route("s")
    ))
    .await;
    // A request without a body and one with a body take different paths through the proxy;
    // both must notice the client going away long before the 60 s read timeout.
    for request in [
        &b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"[..],
    ] {
        let mut client = tokio::net::TcpStream::connect(("127.0.0.1", gh.port))
            .await
            .unwrap();
        client.write_all(request).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("the request reaches the backend")
            .unwrap();
        drop(client);
        tokio::time::timeout(Duration::from_secs(10), closed.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "backend connection still open 10 s after the client left: {}",
                    String::from_utf8_lossy(&request[..4])
                )
            })
            .unwrap();
    }
}

/// A keep-alive origin answering by path with the framings a proxy must pass on unchanged:
/// `/chunked` (three chunks written apart), `/big` (1 MiB), `/304`, and any HEAD (a length
/// but no body). Counts its connections.
/// The request line of the next bodiless request on `s`, `None` once the peer is gone.
async fn next_request_line(s: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => head.extend_from_slice(&buf[..k]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    Some(head.lines().next().unwrap_or("").to_string())
}

async fn framing_origin() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                while let Some(line) = next_request_line(&mut s).await {
                    let ok = if line.starts_with("HEAD ") {
                        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                            .await
                    } else if line.contains(" /304 ") {
                        s.write_all(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n")
                            .await
                    } else if line.contains(" /big ") {
                        let mut reply =
                            b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".to_vec();
                        reply.extend(std::iter::repeat_n(b'b', 1 << 20));
                        s.write_all(&reply).await
                    } else {
                        let mut r = s
                            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                            .await;
                        for chunk in ["3\r\naaa\r\n", "3\r\nbbb\r\n", "3\r\nccc\r\n0\r\n\r\n"] {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            r = r.and(s.write_all(chunk.as_bytes()).await);
                        }
                        r
                    };
                    if ok.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn response_framings_pass_through_and_both_connections_are_kept() {
    use http_body_util::{BodyExt, Empty};
    let (origin, conns) = framing_origin().await;
    let gh = Gatehouse::start(&format!(
        "services:\n  s: {{ targets: [\"{origin}\"] }}\n{}",
        one_route("s")
    ))
    .await;
    // One client connection (hyper's, which fails rather than reconnects), one request at a
    // time: if either side of the proxy gave up its connection after any of these, the
    // requests after it or the backend's connection count would show it.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gh.port))
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    for round in 0..2 {
        for (method, path, status, len) in [
            ("GET", "/chunked", 200, 9),
            ("HEAD", "/head", 200, 0),
            ("GET", "/304", 304, 0),
            ("GET", "/big", 200, 1 << 20),
        ] {
            let req = http::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "x")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let r = send.send_request(req).await.unwrap_or_else(|e| {
                panic!("round {round}, {method} {path}: the connection was lost: {e}")
            });
            assert_eq!(r.status().as_u16(), status, "{method} {path}");
            let headers = r.headers().clone();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), len, "{method} {path}");
            match path {
                "/chunked" => assert_eq!(&body[..], b"aaabbbccc"),
                "/head" => assert_eq!(headers["content-length"], "1000"),
                "/304" => assert_eq!(headers["etag"], "\"v1\""),
                _ => assert!(body.iter().all(|&b| b == b'b')),
            }
        }
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "one backend connection for all eight"
    );
}

#[tokio::test]
async fn an_http2_client_cancelling_while_the_backend_thinks_closes_the_backend_connection() {
    let (origin, mut seen, mut closed) = silent_origin().await;
    let https = free_port();
    let _gh = Gatehouse::launch(write_config_listen(
        &format!("  https: [\"127.0.0.1:{https}\"]\n"),
        &format!(
            "services:\n  s: {{ targets: [\"{origin}\"], retries: 0, timeouts: {{ read: 60s }} }}\n{}",
            one_route("s")
        ),
        &[],
    ))
    .await;
    let h2 = h2_client("x.test", https);
    // The request is cancelled (RST_STREAM) once the backend has it; the HTTP/2 connection
    // itself stays open, so only the stream's reset can end the exchange.
    let request = tokio::spawn({
        let h2 = h2.clone();
        async move { h2.get(format!("https://x.test:{https}/slow")).send().await }
    });
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the request reaches the backend")
        .unwrap();
    request.abort();
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("backend connection still open 10 s after the client cancelled")
        .unwrap();
}

/// A backend that answers each request with the head its path names (every answer's body is
/// `hello`, framed as the head says), counting the requests it got.
async fn canned_heads_origin() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let Some(line) = next_request_line(&mut s).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let framing = match line.split(' ').nth(1).unwrap_or("") {
                    "/list" => "Content-Length: 5, 5\r\n",
                    "/twice" => "Content-Length: 5\r\nContent-Length: 5\r\n",
                    "/te-and-cl" => "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                    "/conflict" => "Content-Length: 5\r\nContent-Length: 6\r\n",
                    "/conflict-list" => "Content-Length: 5, 6\r\n",
                    "/not-a-number" => "Content-Length: 5x\r\n",
                    _ => "Content-Length: 5\r\n",
                };
                let body = if framing.starts_with("Transfer-Encoding") {
                    "5\r\nhello\r\n0\r\n\r\n"
                } else {
                    "hello"
                };
                let reply = format!("HTTP/1.1 200 OK\r\n{framing}Connection: close\r\n\r\n{body}");
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn backend_content_length_is_reconciled_or_the_answer_refused() {
    let (origin, hits) = canned_heads_origin().await;
    let gh = Gatehouse::start(&format!(
        "services:\n  s: {{ targets: [\"{origin}\"], retries: 0 }}\n{}",
        one_route("s")
    ))
    .await;
    let c = client();
    // Identical values, in a list or on two lines, frame the body; Transfer-Encoding wins over
    // a Content-Length next to it (RFC 9112 6.3).
    for path in ["/plain", "/list", "/twice", "/te-and-cl"] {
        let (status, body) = get_host(&c, &gh.url(path), "x.test").await;
        assert_eq!((status, body.as_str()), (200, "hello"), "{path}");
    }
    // Values that disagree or do not parse make the framing ambiguous: never passed on.
    for path in ["/conflict", "/conflict-list", "/not-a-number"] {
        let before = hits.load(Ordering::SeqCst);
        let (status, body) = get_host(&c, &gh.url(path), "x.test").await;
        assert_eq!(status, 502, "{path}: {body}");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            before + 1,
            "{path}: tried once"
        );
    }
}

/// An origin that serves any number of requests on a connection, never closes one itself,
/// and answers each with the number of its connection and the head its path names: `/close`
/// says `Connection: close`, `/http10` answers as HTTP/1.0, `/http10-keepalive` as HTTP/1.0
/// with `Connection: keep-alive`, anything else as plain HTTP/1.1.
async fn keepalive_signals_origin() -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let n = conns.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                while let Some(line) = next_request_line(&mut s).await {
                    let status = match line.split(' ').nth(1).unwrap_or("") {
                        "/close" => "HTTP/1.1 200 OK\r\nConnection: close",
                        "/http10" => "HTTP/1.0 200 OK",
                        "/http10-keepalive" => "HTTP/1.0 200 OK\r\nConnection: keep-alive",
                        _ => "HTTP/1.1 200 OK",
                    };
                    let body = format!("connection {n}");
                    let reply = format!("{status}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_backend_connection_is_kept_only_when_the_backend_allows_it() {
    let origin = keepalive_signals_origin().await;
    let gh = Gatehouse::start(&format!(
        "services:\n  s: {{ targets: [\"{origin}\"] }}\n{}",
        one_route("s")
    ))
    .await;
    let c = client();
    let conn = |path: &'static str| {
        let (c, url) = (c.clone(), gh.url(path));
        async move {
            let (status, body) = get_host(&c, &url, "x.test").await;
            assert_eq!(status, 200, "{path}: {body}");
            body.trim_start_matches("connection ")
                .parse::<usize>()
                .unwrap()
        }
    };
    // Requests one after another: each goes on the idle connection the one before left, if
    // it left one. The origin closes none, so only gatehouse's decision shows.
    let first = conn("/").await;
    assert_eq!(
        conn("/").await,
        first,
        "an HTTP/1.1 answer keeps the connection"
    );
    assert_eq!(conn("/close").await, first);
    let second = conn("/").await;
    assert_ne!(second, first, "`Connection: close` was not respected");
    assert_eq!(conn("/http10").await, second);
    let third = conn("/").await;
    assert_ne!(
        third, second,
        "an HTTP/1.0 answer without keep-alive was kept"
    );
    assert_eq!(conn("/http10-keepalive").await, third);
    assert_eq!(
        conn("/").await,
        third,
        "HTTP/1.0 with `Connection: keep-alive` was not kept"
    );
}
