//! Host and path routing through the real binary: every matching rule of the contract.

mod common;
use common::*;

/// One origin per route, so the answering origin names the route that matched.
async fn routed_gatehouse() -> (Gatehouse, Vec<Origin>) {
    let names = [
        "api_v1", "api_v2", "app", "wild", "catch", "exact", "regex", "deep",
    ];
    let mut origins = Vec::new();
    let mut services = String::from("services:\n");
    for n in names {
        let o = Origin::start(n).await;
        services.push_str(&format!("  {n}: {{ targets: [\"{}\"] }}\n", o.addr));
        origins.push(o);
    }
    let body = format!(
        r#"{services}
ingresses:
  - name: api
    rules:
      - host: api.example.com
        paths:
          - {{ path: /v1, service: api_v1 }}
          - {{ path: /v2, match: prefix, service: api_v2 }}
          - {{ path: /v1/users/me, match: exact, service: exact }}
          - {{ path: /v1/deep/, service: deep }}
          - {{ path: '^/img/.*\.png$', match: regex, service: regex }}
  - name: app
    rules:
      - host: App.Example.com
        paths: [{{ path: /, service: app }}]
      - host: "*.example.com"
        paths: [{{ path: /, service: wild }}]
      - host: ""
        paths: [{{ path: /, service: catch }}]
"#
    );
    (Gatehouse::start(&body).await, origins)
}

#[tokio::test]
async fn host_and_path_rules_follow_the_contract() {
    let (gh, _origins) = routed_gatehouse().await;
    let c = client();
    let cases = [
        // (host, path, expected origin or status)
        ("api.example.com", "/v1", "api_v1"),
        ("api.example.com", "/v1/", "api_v1"),
        ("api.example.com", "/v1/users", "api_v1"),
        ("api.example.com", "/v2/x?q=1", "api_v2"),
        ("API.EXAMPLE.COM:8080", "/v1/x", "api_v1"),
        ("api.example.com.", "/v1/x", "api_v1"),
        // exact beats prefix, and matches only itself
        ("api.example.com", "/v1/users/me", "exact"),
        ("api.example.com", "/v1/users/me/", "api_v1"),
        ("api.example.com", "/v1/users/meh", "api_v1"),
        // longest prefix wins; trailing slash in the rule is ignored
        ("api.example.com", "/v1/deep", "deep"),
        ("api.example.com", "/v1/deep/er", "deep"),
        ("api.example.com", "/v1/deeper", "api_v1"),
        // regex
        ("api.example.com", "/img/a/b.png", "regex"),
        // segment boundary: /v1 never matches /v1x; the exact host has no other route
        ("api.example.com", "/v1x", "404"),
        ("api.example.com", "/img/a.jpg", "404"),
        // exact host (configured in mixed case) beats wildcard
        ("app.example.com", "/anything", "app"),
        // wildcard: exactly one extra label
        ("foo.example.com", "/", "wild"),
        ("a.b.example.com", "/", "catch"),
        ("example.com", "/", "catch"),
        ("other.org", "/x", "catch"),
    ];
    for (host, path, want) in cases {
        let (status, body) = get_host(&c, &gh.url(path), host).await;
        let got = if status == 200 {
            origin_of(&body)
        } else {
            status.to_string()
        };
        assert_eq!(got, want, "{host}{path} -> {status} {body}");
    }
}

#[tokio::test]
async fn the_query_string_reaches_the_origin_untouched() {
    let (gh, _origins) = routed_gatehouse().await;
    let (status, body) = get_host(&client(), &gh.url("/v1/a?x=1&y=%20"), "api.example.com").await;
    assert_eq!(status, 200);
    assert_eq!(echo(&body)["uri"], "/v1/a?x=1&y=%20");
}

#[tokio::test]
async fn no_route_is_404_with_a_short_body() {
    let o = Origin::start("only").await;
    let gh = Gatehouse::start(&format!(
        "services: {{ s: {{ targets: [\"{}\"] }} }}\ningresses:\n  - rules: [{{ host: a.com, paths: [{{ path: /x, service: s }}] }}]\n",
        o.addr
    ))
    .await;
    let (status, body) = get_host(&client(), &gh.url("/y"), "a.com").await;
    assert_eq!((status, body.as_str()), (404, "404 Not Found\n"));
    let (status, _) = get_host(&client(), &gh.url("/x"), "b.com").await;
    assert_eq!(status, 404);
    assert_eq!(o.hits(), 0);
}

#[tokio::test]
async fn missing_or_malformed_host_is_400_without_a_catch_all() {
    let o = Origin::start("only").await;
    let gh = Gatehouse::start(&format!(
        "services: {{ s: {{ targets: [\"{}\"] }} }}\ningresses:\n  - rules: [{{ host: a.com, paths: [{{ path: /, service: s }}] }}]\n",
        o.addr
    ))
    .await;
    let no_host = gh.raw(b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    let bad_host = gh
        .raw(b"GET / HTTP/1.1\r\nHost: a b.com\r\nConnection: close\r\n\r\n")
        .await;
    assert!(bad_host.starts_with("HTTP/1.1 400"), "{bad_host}");
    let two_hosts = gh
        .raw(b"GET / HTTP/1.1\r\nHost: a.com\r\nHost: b.com\r\nConnection: close\r\n\r\n")
        .await;
    assert!(two_hosts.starts_with("HTTP/1.1 400"), "{two_hosts}");
    let good = gh
        .raw(b"GET / HTTP/1.1\r\nHost: a.com\r\nConnection: close\r\n\r\n")
        .await;
    assert!(good.starts_with("HTTP/1.1 200"), "{good}");
    assert_eq!(o.hits(), 1);
}

#[tokio::test]
async fn missing_host_uses_the_catch_all_when_there_is_one() {
    let gh = Gatehouse::start(
        "ingresses:\n  - rules: [{ paths: [{ path: /, respond: { status: 200, body: \"default\\n\" } }] }]\n",
    )
    .await;
    let resp = gh.raw(b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("default\n"), "{resp}");
}

#[tokio::test]
async fn direct_responses_carry_status_headers_and_body() {
    let gh = Gatehouse::start(
        r#"ingresses:
  - rules:
      - paths:
          - path: /teapot
            match: exact
            respond: { status: 418, body: "short and stout\n", headers: { X-Kind: teapot } }
          - path: /empty
            respond: { status: 204 }
"#,
    )
    .await;
    let c = client();
    let r = c.get(gh.url("/teapot")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 418);
    assert_eq!(r.headers()["x-kind"], "teapot");
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "short and stout\n");
    let r = c.head(gh.url("/teapot")).send().await.unwrap();
    assert_eq!(r.headers()["content-length"], "16");
    assert_eq!(r.text().await.unwrap(), "");
    let r = c.get(gh.url("/empty/x")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
}

#[tokio::test]
async fn ingress_files_from_include_are_merged() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let gh = Gatehouse::start_with(
        "include: [\"conf.d/*.yaml\"]\n",
        &[
            (
                "conf.d/a.yaml",
                &format!(
                    "services: {{ a: {{ targets: [\"{}\"] }} }}\ningresses:\n  - rules: [{{ host: a.com, paths: [{{ path: /, service: a }}] }}]\n",
                    a.addr
                ),
            ),
            (
                "conf.d/b.yaml",
                // Uses the service defined in the other file.
                &format!(
                    "services: {{ b: {{ targets: [\"{}\"] }} }}\ningresses:\n  - rules: [{{ host: b.com, paths: [{{ path: /, service: b }}, {{ path: /a, service: a }}] }}]\n",
                    b.addr
                ),
            ),
        ],
    )
    .await;
    let c = client();
    assert_eq!(origin_of(&get_host(&c, &gh.url("/"), "a.com").await.1), "a");
    assert_eq!(origin_of(&get_host(&c, &gh.url("/"), "b.com").await.1), "b");
    assert_eq!(
        origin_of(&get_host(&c, &gh.url("/a/1"), "b.com").await.1),
        "a"
    );
}
