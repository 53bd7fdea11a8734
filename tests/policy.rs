//! Per-route policy through the real binary: client IP behind trusted proxies, access lists,
//! rate limits, header edits, rewrites, redirects, request ids and path normalisation.

mod common;
use common::*;
use std::time::Duration;

async fn proxied(paths: &str, extra: &str) -> (Gatehouse, Origin) {
    let o = Origin::start("o").await;
    let gh = Gatehouse::start(&format!(
        "{extra}services: {{ s: {{ targets: [\"{}\"] }} }}\ningresses:\n  - rules:\n      - paths:\n{paths}",
        o.addr
    ))
    .await;
    (gh, o)
}

async fn get_xff(gh: &Gatehouse, path: &str, xff: &str) -> reqwest::Response {
    get_with(&client(), &gh.url(path), &[("x-forwarded-for", xff)]).await
}

#[tokio::test]
async fn access_list_through_a_trusted_proxy_follows_the_seed_examples() {
    let (gh, o) = proxied(
        "          - { path: /admin, service: s, access: { allow: [10.0.0.0/8, 203.0.113.0/24], deny: [10.0.50.0/24] } }\n",
        "client_ip: { trusted_proxies: [127.0.0.1/32] }\n",
    )
    .await;
    let r = get_xff(&gh, "/admin", "10.0.1.100").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        echo(&r.text().await.unwrap())["headers"]["x-real-ip"][0],
        "10.0.1.100"
    );
    for denied in ["10.0.50.10", "1.2.3.4", "9.9.9.9, 10.0.50.10"] {
        let r = get_xff(&gh, "/admin", denied).await;
        assert_eq!(r.status(), 403, "{denied}");
        assert_eq!(r.text().await.unwrap(), "403 Forbidden\n");
    }
    // The right-most untrusted hop is the client: a spoofed left-most entry changes nothing.
    assert_eq!(
        get_xff(&gh, "/admin", "10.0.1.100, 1.2.3.4").await.status(),
        403
    );
    assert_eq!(o.hits(), 1);
}

#[tokio::test]
async fn an_untrusted_peer_cannot_choose_its_ip() {
    let (gh, o) = proxied(
        "          - { path: /internal, service: s, access: { allow: [10.0.0.0/8] } }\n          - { path: /, service: s, access: { deny: [127.0.0.1] } }\n",
        "",
    )
    .await;
    assert_eq!(get_xff(&gh, "/internal", "10.0.1.100").await.status(), 403);
    assert_eq!(get_xff(&gh, "/", "10.0.1.100").await.status(), 403);
    assert_eq!(o.hits(), 0);
}

#[tokio::test]
async fn rate_limit_allows_a_burst_then_429_then_recovers() {
    let (gh, _o) = proxied(
        "          - { path: /, service: s, rate_limit: { requests_per_second: 1, burst: 2 } }\n",
        "client_ip: { trusted_proxies: [127.0.0.1/32] }\n",
    )
    .await;
    for i in 0..3 {
        assert_eq!(
            get_xff(&gh, "/", "1.1.1.1").await.status(),
            200,
            "request {i}"
        );
    }
    let r = get_xff(&gh, "/", "1.1.1.1").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["ratelimit-limit"], "3");
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    assert!(r.headers().contains_key("x-request-id"));
    // Another client has its own bucket.
    assert_eq!(get_xff(&gh, "/", "2.2.2.2").await.status(), 200);
    // One token comes back every second. (At 5 per second, four requests taking over 200 ms on
    // a loaded machine met a refilled bucket: the fourth was let through.)
    let back = eventually(Duration::from_secs(3), async || {
        get_xff(&gh, "/", "1.1.1.1").await.status() == 200
    })
    .await;
    assert!(back);
}

#[tokio::test]
async fn rate_limit_by_header_and_for_the_whole_route() {
    let (gh, _o) = proxied(
        "          - { path: /key, service: s, rate_limit: { requests_per_second: 0.1, key: \"header:X-Api-Key\" } }\n          - { path: /all, service: s, rate_limit: { requests_per_second: 0.1, burst: 1, key: route } }\n",
        "",
    )
    .await;
    let c = client();
    let key = async |k: &str| {
        c.get(gh.url("/key"))
            .header("x-api-key", k)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(key("a").await, 200);
    assert_eq!(key("a").await, 429);
    assert_eq!(key("b").await, 200);
    let all = async || {
        c.get(gh.url("/all"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!((all().await, all().await, all().await), (200, 200, 429));
}

#[tokio::test]
async fn header_edits_reach_origin_and_client_and_error_pages() {
    let (gh, _o) = proxied(
        r#"          - path: /
            service: s
            request_headers: { add: { X-Env: prod }, set: { User-Agent: gatehouse-test }, remove: [X-Secret] }
            response_headers: { add: { X-Added: yes }, set: { Content-Type: text/x-echo }, remove: [X-Origin] }
          - path: /private
            service: s
            access: { deny: ["0.0.0.0/0"] }
            response_headers: { set: { Cache-Control: no-store } }
"#,
        "",
    )
    .await;
    let r = client()
        .get(gh.url("/"))
        .header("x-env", "dev")
        .header("x-secret", "hunter2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-added"], "yes");
    assert_eq!(r.headers()["content-type"], "text/x-echo");
    assert!(!r.headers().contains_key("x-origin"));
    let h = echo(&r.text().await.unwrap())["headers"].clone();
    assert_eq!(h["x-env"], serde_json::json!(["dev", "prod"]));
    assert_eq!(h["user-agent"][0], "gatehouse-test");
    assert!(h.get("x-secret").is_none());
    let r = client().get(gh.url("/private")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn each_rewrite_form_keeps_the_query() {
    let (gh, _o) = proxied(
        r#"          - { path: /api/v1, service: s, rewrite: { strip_prefix: /api/v1 } }
          - { path: /old-api, service: s, rewrite: { replace_path: /v2 } }
          - { path: '^/old/(.*)$', match: regex, service: s, rewrite: { regex: '^/old/(.*)$', replacement: '/new/$1' } }
"#,
        "",
    )
    .await;
    let c = client();
    for (req, want) in [
        ("/api/v1/users?page=2", "/users?page=2"),
        ("/api/v1", "/"),
        ("/old-api/users?x=1", "/v2?x=1"),
        ("/old/a/b?q", "/new/a/b?q"),
    ] {
        let body = get_text(&c, &gh.url(req)).await;
        assert_eq!(echo(&body)["uri"], want, "{req}");
    }
}

#[tokio::test]
async fn redirects_to_templates_and_to_https() {
    let gh = Gatehouse::start(
        r#"ingresses:
  - rules:
      - paths:
          - { path: /moved, redirect: { to: "https://example.org/new{path}?{query}" } }
          - { path: /temp, redirect: { to: "https://example.org/t", code: 307 } }
          - { path: /secure, redirect: { https: true } }
"#,
    )
    .await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = c
        .get(gh.url("/moved/x?a=1"))
        .header("host", "shop.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(
        r.headers()["location"],
        "https://example.org/new/moved/x?a=1"
    );
    let r = c.get(gh.url("/temp")).send().await.unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["location"].to_str().unwrap()
        ),
        (307, "https://example.org/t")
    );
    let r = c
        .post(gh.url("/secure/p?q=1"))
        .header("host", "Shop.Test:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "https://shop.test/secure/p?q=1");
}

#[tokio::test]
async fn listener_https_redirect_spares_acme_challenges() {
    let gh = Gatehouse::launch(write_config_listen(
        "  https_redirect: true\n",
        "ingresses: [{ rules: [{ paths: [{ path: /, respond: { body: \"plain\\n\" } }] }] }]\n",
        &[],
    ))
    .await;
    let resp = gh
        .raw(b"GET /a?b=c HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        .await;
    assert!(resp.starts_with("HTTP/1.1 308"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("location: https://shop.test/a?b=c"),
        "{resp}"
    );
    let acme = gh
        .raw(b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        .await;
    assert!(acme.starts_with("HTTP/1.1 200"), "{acme}");
}

#[tokio::test]
async fn request_ids_are_generated_or_reused_and_shared_with_the_origin() {
    let (gh, _o) = proxied("          - { path: /, service: s }\n", "").await;
    let c = client();
    let r = c.get(gh.url("/")).send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(
        echo(&r.text().await.unwrap())["headers"]["x-request-id"][0],
        id.as_str()
    );
    let r = get_with(&c, &gh.url("/"), &[("x-request-id", "abc-123")]).await;
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = get_with(&c, &gh.url("/"), &[("x-request-id", "bad id with spaces")]).await;
    assert_ne!(r.headers()["x-request-id"], "bad id with spaces");
    // gatehouse's own answers carry it too.
    let own = [("host", "a b"), ("x-request-id", "e-1")];
    let r = get_with(&c, &gh.url("/x"), &own).await;
    assert_eq!(r.headers()["x-request-id"], "e-1");
}

#[tokio::test]
async fn encoded_paths_cannot_bypass_access_rules() {
    let (gh, o) = proxied(
        "          - { path: /admin, service: s, access: { deny: [\"0.0.0.0/0\", \"::/0\"] } }\n          - { path: /, service: s }\n",
        "",
    )
    .await;
    for p in [
        "/admin",
        "/admin/",
        "/%61dmin",
        "/x/../admin",
        "//admin",
        "/./admin/x",
        "/%2e/admin",
    ] {
        let req = format!("GET {p} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let resp = gh.raw(req.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 403"), "{p}: {resp}");
    }
    for p in [
        "/public%2F..%2Fadmin",
        "/../admin",
        "/a/../../admin",
        "/%2e%2e/admin",
        "/a%00",
    ] {
        let req = format!("GET {p} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let resp = gh.raw(req.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{p}: {resp}");
    }
    assert_eq!(o.hits(), 0);
    // The origin receives the normalised path, query untouched.
    let resp = gh
        .raw(b"GET /%61pi//v1/./x/../y?q=%2F HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert_eq!(echo(body)["uri"], "/api/v1/y?q=%2F");
}

#[tokio::test]
async fn oversized_headers_and_bodies_are_refused() {
    let (gh, o) = proxied(
        "          - { path: /small, service: s, max_body_size: 1k }\n          - { path: /, service: s }\n",
        "limits: { max_header_size: 8k }\n",
    )
    .await;
    let c = client();
    let r = c
        .get(gh.url("/"))
        .header("x-big", "a".repeat(10_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let r = c
        .post(gh.url("/small"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(o.hits(), 0);
    // A chunked body (no Content-Length) is counted as it streams.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b'x'; 700]), Ok(vec![b'y'; 700])];
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = c.post(gh.url("/small")).body(body).send().await;
    assert!(r.map(|r| r.status().as_u16()).unwrap_or(413) == 413);
    let r = c
        .post(gh.url("/small"))
        .body(vec![b'x'; 500])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(gh.url("/other"))
        .body(vec![b'x'; 200_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out = check("limits: { max_body_size: 10x }\n", &[]);
    assert!(
        out.stderr
            .contains("limits.max_body_size: \"10x\" is not a size"),
        "{}",
        out.stderr
    );
}
