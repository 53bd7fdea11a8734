//! Protocols through the real binary: WebSockets (upgrade, both directions, their own idle
//! timeout).

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket server that echoes every text message, prefixed with "echo: ".
async fn ws_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        if ws.send(Message::text(format!("echo: {t}"))).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn ws_gatehouse(timeouts: &str) -> Gatehouse {
    let origin = ws_echo().await;
    Gatehouse::start(&format!(
        "services: {{ ws: {{ targets: [\"{origin}\"], timeouts: {{ {timeouts} }} }} }}\ningresses: [{{ rules: [{{ paths: [{{ path: /ws, service: ws }}] }}] }}]\n"
    ))
    .await
}

#[tokio::test]
async fn websocket_echo_outlives_the_read_timeout() {
    let gh = ws_gatehouse("read: 300ms").await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", gh.port))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));
    ws.send(Message::text("one")).await.unwrap();
    let one = ws.next().await.unwrap();
    assert_eq!(
        one.as_ref().ok(),
        Some(&Message::text("echo: one")),
        "{}",
        gh.log()
    );
    // Silent for longer than the request read timeout: an upgraded connection is not cut.
    tokio::time::sleep(Duration::from_millis(900)).await;
    ws.send(Message::text("two")).await.unwrap();
    let two = ws.next().await.unwrap();
    assert_eq!(
        two.as_ref().ok(),
        Some(&Message::text("echo: two")),
        "{}",
        gh.log()
    );
}

#[tokio::test]
async fn websocket_idle_timeout_closes_a_silent_connection() {
    let gh = ws_gatehouse("websocket_idle: 1s").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", gh.port))
        .await
        .unwrap();
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("echo: one")
    );
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(
        closed,
        Ok(true),
        "a silent WebSocket was not closed after websocket_idle"
    );
}

/// A TCP server that echoes every byte back.
async fn tcp_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn tcp_stream_pipes_bytes_and_skips_a_dead_member() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = tcp_echo().await;
    let (dead, listen) = (free_port(), free_port());
    let gh = Gatehouse::start(&format!(
        "services: {{ tcp: {{ targets: [\"127.0.0.1:{dead}\", \"{echo}\"], retries: 1 }} }}\nstreams: [{{ name: echo, listen: \"127.0.0.1:{listen}\", service: tcp, idle_timeout: 2s }}]\n"
    ))
    .await;
    for i in 0..4 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", listen))
            .await
            .unwrap();
        let msg = format!("hello {i}\n").repeat(1000);
        s.write_all(msg.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap(); // half-close: the echo still comes back
        let mut back = String::new();
        s.read_to_string(&mut back).await.unwrap();
        assert_eq!(back, msg, "connection {i}");
    }
    // Counted when each connection ends, which may be just after the client saw its echo.
    let counted = eventually(Duration::from_secs(5), async || {
        let text = gh.metrics().await;
        metric(
            &text,
            r#"gatehouse_stream_connections_total{result="proxied",stream="echo"}"#,
        ) == 4.0
            && metric(
                &text,
                r#"gatehouse_stream_bytes_total{direction="upstream",stream="echo"}"#,
            ) == 32_000.0
            && metric(
                &text,
                r#"gatehouse_stream_bytes_total{direction="downstream",stream="echo"}"#,
            ) == 32_000.0
    });
    assert!(counted.await, "{}", gh.metrics().await);
    let summary = gatehouse_cmd(&["check", "-c", gh.config.to_str().unwrap()]);
    assert!(
        summary
            .stdout
            .contains(&format!("stream echo 127.0.0.1:{listen} -> pool tcp")),
        "{}",
        summary.stdout
    );
}

#[tokio::test]
async fn tcp_stream_idle_timeout_closes_silent_connections() {
    use tokio::io::AsyncReadExt;
    let echo = tcp_echo().await;
    let listen = free_port();
    let _gh = Gatehouse::start(&format!(
        "services: {{ tcp: {{ targets: [\"{echo}\"] }} }}\nstreams: [{{ name: echo, listen: \"127.0.0.1:{listen}\", service: tcp, idle_timeout: 300ms }}]\n"
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", listen))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
}

#[tokio::test]
async fn smuggling_probes_are_refused_and_never_reach_the_origin() {
    let o = Origin::start("o").await;
    let gh = Gatehouse::start(&format!(
        "services: {{ s: {{ targets: [\"{}\"] }} }}\ningresses: [{{ rules: [{{ paths: [{{ path: /, service: s }}] }}] }}]\n",
        o.addr
    ))
    .await;
    let probes: [(&str, &[u8]); 10] = [
        ("CL and TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("duplicate CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        // Refused even when the values agree (Pingora would pass them on as they came).
        ("repeated CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
        ("CL list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello"),
        ("obfuscated TE", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ("space before colon", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ("bare LF", b"GET / HTTP/1.1\nHost: a\n\n"),
        ("TE list", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        ("negative CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
        // Last: its headers may reach the origin just after the client got its 400.
        ("invalid chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
    ];
    for (name, probe) in probes {
        let before = o.hits();
        let resp = gh.raw(probe).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{name}: {resp}");
        // A bad chunk is found while the body streams, after the origin got the headers; the
        // body is re-framed chunk by chunk, so nothing ambiguous passes, and the upstream
        // connection is dropped. Every other probe is refused before any upstream contact.
        if name != "invalid chunk size" {
            assert_eq!(o.hits(), before, "{name} reached the origin");
        }
    }
    // A well-formed chunked request still goes through.
    let ok = gh
        .raw(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

/// (status, origin version) of a GET through gatehouse.
async fn version_seen(gh: &Gatehouse) -> (u16, String) {
    let (status, body) = get_host(&client(), &gh.url("/v"), "x.test").await;
    if status != 200 {
        return (status, body);
    }
    (
        status,
        echo(&body)["version"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstream_is_verified_against_its_ca_and_name() {
    let (acceptor, ca) = origin_tls(&["backend.test"], false);
    let origin =
        Origin::start_mode("tls", "127.0.0.1:0".parse().unwrap(), Mode::Tls(acceptor)).await;
    let service = |tls: &str| {
        format!(
            "services:\n  s: {{ targets: [\"{}\"], tls: {tls} }}\n{}",
            origin.addr,
            one_route("s")
        )
    };
    // The right CA and name: proxied over TLS.
    let gh = Gatehouse::start_with(
        &service("{ sni: backend.test, ca: ca.pem }"),
        &[("ca.pem", &ca)],
    )
    .await;
    assert_eq!(
        version_seen(&gh).await,
        (200, "HTTP/1.1".to_string()),
        "{}",
        gh.log()
    );
    drop(gh);
    // A name the certificate does not carry: refused, 502.
    let gh = Gatehouse::start_with(
        &service("{ sni: other.test, ca: ca.pem }"),
        &[("ca.pem", &ca)],
    )
    .await;
    assert_eq!(version_seen(&gh).await.0, 502);
    assert_eq!(origin.hits(), 1);
    drop(gh);
    // The system roots do not know the test CA: refused.
    let gh = Gatehouse::start(&service("{ sni: backend.test }")).await;
    assert_eq!(version_seen(&gh).await.0, 502);
    drop(gh);
    // Verification off (an operator's explicit choice): proxied.
    let gh = Gatehouse::start(&service("{ verify: false }")).await;
    assert_eq!(version_seen(&gh).await, (200, "HTTP/1.1".to_string()));
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstreams_over_tls_and_cleartext() {
    let (acceptor, ca) = origin_tls(&["backend.test"], true);
    let tls = Origin::start_mode("h2", "127.0.0.1:0".parse().unwrap(), Mode::Tls(acceptor)).await;
    let h2c = Origin::start_mode("h2c", "127.0.0.1:0".parse().unwrap(), Mode::H2c).await;
    let gh = Gatehouse::start_with(
        &format!(
            "services:\n  tls: {{ targets: [\"{}\"], protocol: h2, tls: {{ sni: backend.test, ca: ca.pem }} }}\n  auto: {{ targets: [\"{}\"], protocol: auto, tls: {{ sni: backend.test, ca: ca.pem }} }}\n  clear: {{ targets: [\"{}\"], protocol: h2c, health_check: {{ http: {{ path: /healthz }}, interval: 100ms }} }}\ningresses:\n  - rules:\n      - {{ host: tls.test, paths: [{{ path: /, service: tls }}] }}\n      - {{ host: auto.test, paths: [{{ path: /, service: auto }}] }}\n      - {{ host: clear.test, paths: [{{ path: /, service: clear }}] }}\n",
            tls.addr, tls.addr, h2c.addr
        ),
        &[("ca.pem", &ca)],
    )
    .await;
    let c = client();
    for host in ["tls.test", "auto.test", "clear.test"] {
        // A gRPC-shaped request: POST, application/grpc, TE: trailers.
        let r = c
            .post(gh.url("/pkg.Service/Method"))
            .header("host", host)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(&b"\0\0\0\0\x05hello"[..])
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e:?}\n{}", gh.log()));
        assert_eq!(r.status(), 200, "{host}");
        let body = echo(&r.text().await.unwrap());
        assert_eq!(body["version"], "HTTP/2.0", "{host}: {body}");
        assert_eq!(body["body_len"], 10, "{host}: {body}");
        // HTTP/2 carries scheme and authority (from the Host) beside the path.
        let uri = body["uri"].as_str().unwrap();
        assert!(
            uri.ends_with(&format!("://{host}/pkg.Service/Method")),
            "{uri}"
        );
    }
    // The h2c pool's HTTP health check speaks h2c too: it passes.
    let checked = gh
        .metric_reaches(
            &format!(
                r#"gatehouse_health_checks_total{{backend="{}",pool="clear",result="success"}}"#,
                h2c.addr
            ),
            2.0,
            Duration::from_secs(10),
        )
        .await;
    assert!(checked, "{}", gh.metrics().await);
}

#[test]
fn upstream_protocol_and_tls_mistakes_are_config_errors() {
    let out = check(
        "services:\n  a: { targets: [\"127.0.0.1:1\"], protocol: h2 }\n  b: { targets: [\"127.0.0.1:1\"], protocol: h2c, tls: { verify: false } }\n  c: { targets: [\"127.0.0.1:1\"], tls: {} }\n  d: { targets: [\"127.0.0.1:1\"], tls: { sni: x.test, ca: nope.pem }, retry_on: [404], protocol: spdy }\ningresses: [{ rules: [{ paths: [{ path: /a, service: a }, { path: /b, service: b }, { path: /c, service: c }, { path: /d, service: d }] }] }]\n",
        &[],
    );
    assert_eq!(out.code, 1);
    for want in [
        "services.a.protocol: h2 is negotiated over TLS",
        "services.b.protocol: h2c is cleartext HTTP/2",
        "services.c.tls.sni: verification needs the name",
        "services.d.tls.ca: ",
        "services.d.retry_on[0]: 404 is not a 5xx status",
        "services.d.protocol: \"spdy\": write http1, h2, h2c or auto",
    ] {
        assert!(
            out.stderr.contains(want),
            "missing {want:?}:\n{}",
            out.stderr
        );
    }
}

/// A TCP backend that expects a PROXY v2 header, answers with the source address it names,
/// then echoes.
async fn proxy_aware_echo() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut h = [0u8; 28];
                if s.read_exact(&mut h).await.is_err() {
                    return;
                }
                let line = if &h[..12] == b"\r\n\r\n\0\r\nQUIT\n" && h[12] == 0x21 && h[13] == 0x11
                {
                    let ip = std::net::Ipv4Addr::new(h[16], h[17], h[18], h[19]);
                    let port = u16::from_be_bytes([h[24], h[25]]);
                    format!("from {ip}:{port}\n")
                } else {
                    "no PROXY v2 header\n".to_string()
                };
                let _ = s.write_all(line.as_bytes()).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_stream_listener_terminates_and_sends_proxy_protocol() {
    let backend = proxy_aware_echo().await;
    let listen = free_port();
    let _gh = Gatehouse::start(&format!(
        "services: {{ tcp: {{ targets: [\"{backend}\"] }} }}\nstreams: [{{ name: secure, listen: \"127.0.0.1:{listen}\", service: tcp, tls: true, send_proxy_protocol: v2 }}]\n"
    ))
    .await;
    let (said, echoed, local_port) = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, Read, Write};
        let tcp = std::net::TcpStream::connect(("127.0.0.1", listen)).unwrap();
        let local_port = tcp.local_addr().unwrap().port();
        // An HTTP client's ALPN offer: a raw stream listener must not pick h2.
        let s = insecure_tls(tcp, "tcp.test", b"\x02h2\x08http/1.1").unwrap();
        assert_eq!(s.ssl().selected_alpn_protocol(), None);
        let mut s = std::io::BufReader::new(s);
        let mut said = String::new();
        s.read_line(&mut said).unwrap();
        s.get_mut().write_all(b"ping").unwrap();
        let mut echoed = [0u8; 4];
        s.read_exact(&mut echoed).unwrap();
        (said, echoed, local_port)
    })
    .await
    .unwrap();
    assert_eq!(said, format!("from 127.0.0.1:{local_port}\n"));
    assert_eq!(&echoed, b"ping");
}
