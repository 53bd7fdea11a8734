//! Downstream connection limits through the real binary: the whole-head deadline against
//! slowloris, the keep-alive idle timeout, connections per listener, and the PROXY protocol
//! feeding the client address to access rules (plain and TLS listeners).

mod common;
use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn route_to(origin: std::net::SocketAddr, access: &str) -> String {
    format!(
        "services: {{ s: {{ targets: [\"{origin}\"] }} }}\ningresses:\n  - rules: [{{ paths: [{{ path: /, service: s{access} }}] }}]\n"
    )
}

/// Read until the server closes the connection; returns what was read, or `None` if it was
/// still open after `limit`.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match tokio::time::timeout(limit, s.read_to_end(&mut out)).await {
        Ok(_) => Some(out),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_at_the_header_timeout_and_others_are_served() {
    let origin = Origin::start("app").await;
    let gh = Gatehouse::start(&format!(
        "limits: {{ header_timeout: 1s }}\n{}",
        route_to(origin.addr, "")
    ))
    .await;
    let mut slow = TcpStream::connect(("127.0.0.1", gh.port)).await.unwrap();
    let started = Instant::now();
    // One byte every 100 ms: each read is quick, the head never completes within 1 s.
    let head = b"GET / HTTP/1.1\r\nHost: x.test\r\nUser-Agent: slowloris\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for b in head {
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        // A normal client meanwhile.
        if started.elapsed() > Duration::from_millis(500)
            && started.elapsed() < Duration::from_millis(650)
        {
            let (status, _) = get_host(&client(), &gh.url("/"), "x.test").await;
            assert_eq!(status, 200);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !cut {
        let rest = read_until_closed(&mut slow, Duration::from_secs(5)).await;
        assert!(
            rest.is_some_and(|r| !r.starts_with(b"HTTP/1.1 200")),
            "the slow head was served"
        );
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "cut too early: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "not cut: {took:?}");
    assert!(
        metric(
            &gh.metrics().await,
            r#"gatehouse_downstream_rejected_connections_total{reason="header_timeout"}"#
        ) >= 1.0
    );
    // A head that arrives in time, even in pieces, is served.
    let mut ok = TcpStream::connect(("127.0.0.1", gh.port)).await.unwrap();
    for part in [
        &b"GET / HTTP/1.1\r\nHo"[..],
        b"st: x.test\r\nConnection: close\r\n",
        b"\r\n",
    ] {
        ok.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answer = read_until_closed(&mut ok, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_are_closed_after_the_keepalive_timeout() {
    let origin = Origin::start("app").await;
    let gh = Gatehouse::start(&format!(
        "limits: {{ keepalive_timeout: 1s }}\n{}",
        route_to(origin.addr, "")
    ))
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", gh.port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let idle = Instant::now();
    // The response may still be arriving; then the server closes the idle connection.
    let rest = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(rest.is_some(), "still open after 5 s");
    assert!(
        idle.elapsed() >= Duration::from_millis(900),
        "{:?}",
        idle.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_above_max_connections_are_closed_at_once() {
    let origin = Origin::start("app").await;
    let gh = Gatehouse::start(&format!(
        "limits: {{ max_connections: 2 }}\n{}",
        route_to(origin.addr, "")
    ))
    .await;
    // The harness's readiness probe has come and gone; wait until the listener is free.
    assert!(
        eventually(Duration::from_secs(5), async || {
            let mut a = TcpStream::connect(("127.0.0.1", gh.port)).await.unwrap();
            a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .is_ok()
                && read_until_closed(&mut a, Duration::from_secs(2))
                    .await
                    .is_some_and(|r| r.starts_with(b"HTTP/1.1 200"))
        })
        .await
    );
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(("127.0.0.1", gh.port)).await.unwrap();
        // A request each, so both are surely accepted and counted.
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(c);
    }
    let mut third = TcpStream::connect(("127.0.0.1", gh.port)).await.unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let answer = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert_eq!(
        answer.as_deref(),
        Some(&b""[..]),
        "the third connection was served"
    );
    assert!(
        metric(
            &gh.metrics().await,
            r#"gatehouse_downstream_rejected_connections_total{reason="max_connections"}"#
        ) >= 1.0
    );
    // A slot frees when a connection closes.
    drop(held.pop());
    let served = eventually(Duration::from_secs(5), async || {
        get_host(&client(), &gh.url("/"), "x").await.0 == 200
    })
    .await;
    assert!(served);
}

fn v2_header(src: std::net::SocketAddrV4, dst: std::net::SocketAddrV4) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src.ip().octets());
    h.extend_from_slice(&dst.ip().octets());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

fn status_of(answer: &str) -> &str {
    answer.get(9..12).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_headers_set_the_client_address_for_access_rules() {
    let origin = Origin::start("app").await;
    let https = free_port();
    let w = write_config_listen(
        &format!("  https: [\"127.0.0.1:{https}\"]\n  proxy_protocol: true\n"),
        &route_to(
            origin.addr,
            ", access: { allow: [10.0.0.0/8], deny: [10.0.50.0/24] }",
        ),
        &[],
    );
    let gh = Gatehouse::launch(w).await;
    let req = b"GET /who HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n";
    let with = |header: &[u8]| [header, &req[..]].concat();
    // v1: allowed, denied, and outside the allow list.
    let ok = gh
        .raw(&with(b"PROXY TCP4 10.0.1.100 127.0.0.1 40000 80\r\n"))
        .await;
    assert_eq!(status_of(&ok), "200", "{ok}");
    let body = &ok[ok.find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(echo(body)["headers"]["x-forwarded-for"][0], "10.0.1.100");
    let denied = gh
        .raw(&with(b"PROXY TCP4 10.0.50.10 127.0.0.1 40000 80\r\n"))
        .await;
    assert_eq!(status_of(&denied), "403", "{denied}");
    let outside = gh
        .raw(&with(b"PROXY TCP4 1.2.3.4 127.0.0.1 40000 80\r\n"))
        .await;
    assert_eq!(status_of(&outside), "403", "{outside}");
    // v2.
    let v2 = v2_header(
        "10.0.1.100:40000".parse().unwrap(),
        "127.0.0.1:80".parse().unwrap(),
    );
    let ok = gh.raw(&with(&v2)).await;
    assert_eq!(status_of(&ok), "200", "{ok}");
    // No header, or a forged one: closed without an answer.
    assert_eq!(gh.raw(req).await, "");
    assert_eq!(
        gh.raw(&with(b"PROXY TCP4 10.0.1.100 nope 1 2\r\n")).await,
        ""
    );
    assert!(
        metric(
            &gh.metrics().await,
            r#"gatehouse_downstream_rejected_connections_total{reason="proxy_protocol"}"#
        ) >= 2.0
    );
    // TLS listener: the header comes before the handshake.
    let tls = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", https)).unwrap();
        tcp.write_all(b"PROXY TCP4 10.0.1.100 127.0.0.1 40000 443\r\n")
            .unwrap();
        let mut s = insecure_tls(tcp, "x.test", b"").unwrap();
        s.write_all(b"GET /who HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    assert_eq!(status_of(&tls), "200", "{tls}");
    assert!(
        tls.contains("\"x-forwarded-for\":[\"10.0.1.100\"]"),
        "{tls}"
    );
}

#[test]
fn limit_and_stream_mistakes_are_config_errors() {
    let out = check(
        "limits: { header_timeout: 0s, keepalive_timeout: soon, max_connections: 0 }\nservices: { t: { targets: [\"127.0.0.1:1\"] } }\nstreams: [{ name: s, listen: \"127.0.0.1:1\", service: t, send_proxy_protocol: v3 }]\n",
        &[],
    );
    assert_eq!(out.code, 1);
    for want in [
        "limits.header_timeout: \"0s\" must be greater than zero",
        "limits.keepalive_timeout: ",
        "limits.max_connections: max_connections must be at least 1, got 0",
        "streams[0].send_proxy_protocol: \"v3\": write v1 or v2",
    ] {
        assert!(
            out.stderr.contains(want),
            "missing {want:?}:\n{}",
            out.stderr
        );
    }
}

/// A raw HTTP/2 client over TLS (ALPN h2), for frames no well-behaved client sends.
struct RawH2 {
    s: openssl::ssl::SslStream<std::net::TcpStream>,
}

impl RawH2 {
    fn connect(port: u16) -> RawH2 {
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut s = insecure_tls(tcp, "x.test", b"\x02h2").unwrap();
        assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        let mut h = RawH2 { s };
        h.frame(0x4, 0, 0, &[]).unwrap(); // SETTINGS
        h
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> std::io::Result<()> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.s.write_all(&f)
    }

    /// Read frames until the server sends GOAWAY or closes; true if it did either.
    fn goes_away(&mut self) -> bool {
        let mut head = [0u8; 9];
        loop {
            if self.s.read_exact(&mut head).is_err() {
                return true; // closed
            }
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if self.s.read_exact(&mut payload).is_err() {
                return true;
            }
            if head[3] == 0x7 {
                return true; // GOAWAY
            }
        }
    }
}

/// `GET /` for x.test in HPACK: :method GET, :scheme https, :path /, :authority x.test.
const GET_BLOCK: &[u8] = b"\x82\x87\x84\x41\x06x.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_and_continuation_floods_are_cut_off() {
    let origin = Origin::start("app").await;
    let https = free_port();
    let w = write_config_listen(
        &format!("  https: [\"127.0.0.1:{https}\"]\n"),
        &route_to(origin.addr, ""),
        &[],
    );
    let gh = Gatehouse::launch(w).await;
    let (rapid_cut, sent_streams) = tokio::task::spawn_blocking(move || {
        // Rapid reset (CVE-2023-44487): open and cancel streams as fast as possible.
        let mut h = RawH2::connect(https);
        let mut sent = 0u32;
        for i in 0..20_000u32 {
            let id = 2 * i + 1;
            if h.frame(0x1, 0x4 | 0x1, id, GET_BLOCK).is_err()
                || h.frame(0x3, 0, id, &8u32.to_be_bytes()).is_err()
            {
                break;
            }
            sent += 1;
        }
        (h.goes_away(), sent)
    })
    .await
    .unwrap();
    eprintln!(
        "rapid reset: {sent_streams} streams sent, {} reached the origin",
        origin.hits()
    );
    assert!(rapid_cut, "the rapid-reset connection stayed open");
    // The resets did not turn into 20,000 upstream requests.
    assert!(
        origin.hits() < 1000,
        "{} of {sent_streams} reset streams reached the origin",
        origin.hits()
    );
    let (continuation_cut, bytes) = tokio::task::spawn_blocking(move || {
        // CONTINUATION flood: a header block that never ends.
        let mut h = RawH2::connect(https);
        let _ = h.frame(0x1, 0x1, 1, GET_BLOCK); // END_STREAM, no END_HEADERS
        let filler = {
            // Literal header field without indexing, new name: "x-flood: aaaa...".
            let mut b = vec![0x00, 0x07];
            b.extend_from_slice(b"x-flood");
            b.extend_from_slice(&[0x7f, 0x81, 0x7f]); // value length 16,384 - 14 (HPACK integer)
            b.resize(16_384, b'a');
            b
        };
        let mut bytes = 0usize;
        while bytes < 256 << 20 {
            if h.frame(0x9, 0, 1, &filler).is_err() {
                break;
            }
            bytes += filler.len();
        }
        (h.goes_away(), bytes)
    })
    .await
    .unwrap();
    eprintln!("continuation flood: cut after {bytes} bytes");
    assert!(continuation_cut, "the CONTINUATION flood was not cut");
    assert!(
        bytes < 64 << 20,
        "accepted {bytes} bytes of one header block"
    );
    // Gatehouse is alive and serves everyone else, over HTTP/1.1 and HTTP/2.
    let (status, _) = get_host(&client(), &gh.url("/"), "x.test").await;
    assert_eq!(status, 200);
    let h2 = h2_client("x.test", https);
    let r = h2
        .get(format!("https://x.test:{https}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_2)
    );
}
