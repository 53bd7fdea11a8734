//! `gatehouse check` and `gatehouse run` on good and bad configurations: every error listed,
//! each naming its file, YAML path and fix.

mod common;
use common::*;

#[test]
fn a_good_config_prints_a_summary_and_exits_0() {
    let out = check(
        r#"services:
  api: { targets: ["127.0.0.1:9001", { address: "127.0.0.1:9002", weight: 2 }], balance: least_connections }
ingresses:
  - name: api
    rules:
      - host: api.example.com
        paths: [{ path: /v1, service: api }, { path: /ping, match: exact, respond: { body: "pong" } }]
"#,
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("2 routes"), "{}", out.stdout);
    assert!(
        out.stdout.contains("api.example.com /v1 -> pool api"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("127.0.0.1:9002 w2"), "{}", out.stdout);
    assert!(out.stdout.contains("least_connections"), "{}", out.stdout);
    assert!(out.stdout.contains("configuration OK"), "{}", out.stdout);
}

#[test]
fn every_semantic_error_is_listed_with_file_and_yaml_path() {
    let out = check(
        r#"services:
  api: { targets: ["10.0.0.1"] }
  empty: { targets: [] }
  zero: { targets: [{ address: "127.0.0.1:1", weight: 0 }], retries: -1, timeouts: { read: 0s } }
  hc: { targets: ["127.0.0.1:2"], health_check: { http: { expect: "abc" }, interval: soon, fall: 0 } }
ingresses:
  - rules:
      - host: api.example.com
        paths:
          - { path: /v1, service: apii }
          - { path: "(", match: regex, service: api }
          - { path: nope, service: api }
          - { path: /both, service: api, respond: { body: x } }
          - { path: /t, respond: { status: 99, headers: { "bad header": x } } }
      - host: "a.*.com"
        paths: [{ path: /, service: api }]
"#,
        &[],
    );
    assert_eq!(out.code, 1);
    let e = &out.stderr;
    let expected = [
        "gatehouse.yaml: services.api.targets[0]: \"10.0.0.1\" has no port",
        "gatehouse.yaml: services.empty.targets: a service needs at least one target",
        "gatehouse.yaml: services.zero.targets[0].weight: weight must be at least 1, got 0",
        "gatehouse.yaml: services.zero.retries: retries must be between 0 and 16, got -1",
        "gatehouse.yaml: services.zero.timeouts.read: \"0s\" must be greater than zero",
        "gatehouse.yaml: services.hc.health_check.http.expect: \"abc\" is not a status range",
        "gatehouse.yaml: services.hc.health_check.interval: \"soon\" is not a duration",
        "gatehouse.yaml: services.hc.health_check.fall: fall must be at least 1, got 0",
        "gatehouse.yaml: ingresses[0].rules[0].paths[0].service: no service named \"apii\"; did you mean \"api\"?",
        "gatehouse.yaml: ingresses[0].rules[0].paths[1].path: invalid regex",
        "gatehouse.yaml: ingresses[0].rules[0].paths[2].path: path \"nope\" must start with \"/\"",
        "gatehouse.yaml: ingresses[0].rules[0].paths[3]: a path needs exactly one of `service`, `respond` or `redirect`",
        "gatehouse.yaml: ingresses[0].rules[0].paths[4].respond.status: status must be between 200 and 599, got 99",
        "gatehouse.yaml: ingresses[0].rules[0].paths[4].respond.headers.bad header: \"bad header\" is not a valid header name",
        "gatehouse.yaml: ingresses[0].rules[1].host: \"a.*.com\": a wildcard must be the whole first label",
        "error(s)",
    ];
    for want in expected {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[test]
fn duplicate_routes_across_files_name_both_files() {
    let out = check(
        "include: [\"conf.d/*.yaml\"]\nservices: { s: { targets: [\"127.0.0.1:1\"] } }\n",
        &[
            (
                "conf.d/a.yaml",
                "ingresses:\n  - rules: [{ host: x.com, paths: [{ path: /api, service: s }] }]\n",
            ),
            (
                "conf.d/b.yaml",
                "ingresses:\n  - rules: [{ host: X.com, paths: [{ path: /api/, service: s }] }]\n",
            ),
        ],
    );
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("conf.d/b.yaml: ingresses[0].rules[0].paths[0]: host x.com path \"/api\" is already routed by"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("conf.d/a.yaml: ingresses[0].rules[0].paths[0]"),
        "{}",
        out.stderr
    );
}

#[test]
fn duplicate_services_across_files_are_errors() {
    let out = check(
        "include: [\"conf.d/*.yaml\"]\nservices: { s: { targets: [\"127.0.0.1:1\"] } }\n",
        &[(
            "conf.d/a.yaml",
            "services: { s: { targets: [\"127.0.0.1:2\"] } }\n",
        )],
    );
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("conf.d/a.yaml: services.s: service \"s\" is already defined in"),
        "{}",
        out.stderr
    );
}

#[test]
fn yaml_syntax_and_unknown_keys_give_file_line_column() {
    let out = check("ingresses:\n  - rules: [\n", &[]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("gatehouse.yaml:"), "{}", out.stderr);
    assert!(regex_like_line_col(&out.stderr), "{}", out.stderr);

    let out = check("ingresses:\n  - rules:\n      - hots: a.com\n", &[]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("unknown field `hots`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("gatehouse.yaml:12:9:"),
        "{}",
        out.stderr
    );

    // An included file with a syntax error is named (semantic checks wait for a clean parse).
    let out = check(
        "include: [\"conf.d/*.yaml\"]\nservices: { s: { targets: [] } }\n",
        &[("conf.d/bad.yaml", "services: {\n")],
    );
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("conf.d/bad.yaml:2:1:"),
        "{}",
        out.stderr
    );
}

fn regex_like_line_col(s: &str) -> bool {
    s.lines().any(|l| {
        let mut parts = l.splitn(4, ':');
        let (_, line, col) = (parts.next(), parts.next(), parts.next());
        line.is_some_and(|x| x.parse::<u32>().is_ok())
            && col.is_some_and(|x| x.parse::<u32>().is_ok())
    })
}

#[test]
fn unset_environment_variables_are_errors_and_set_ones_are_used() {
    let out = check(
        "services: { s: { targets: [\"${GATEHOUSE_TEST_UNSET_VAR}\"] } }\n",
        &[],
    );
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("environment variable GATEHOUSE_TEST_UNSET_VAR is not set"),
        "{}",
        out.stderr
    );
    let out = check(
        "services: { s: { targets: [\"127.0.0.1:${GATEHOUSE_TEST_UNSET_VAR:-8081}\"] } }\ningresses: [{ rules: [{ paths: [{ service: s }] }] }]\n",
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("127.0.0.1:8081"), "{}", out.stdout);
}

#[test]
fn bad_listener_and_server_values_are_errors() {
    let w = write_config("", &[]);
    let config = &w.config;
    std::fs::write(
        config,
        "listen: { http: [\"0.0.0.0\", \"127.0.0.1:80\", \"127.0.0.1:80\"] }\nserver: { threads: 0, grace_period: forever }\n",
    )
    .unwrap();
    let out = gatehouse_cmd(&["check", "-c", config.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    for want in [
        "listen.http[0]: \"0.0.0.0\" is not an IP:port address",
        "listen.http[2]: 127.0.0.1:80 is listed twice",
        "server.threads: threads must be at least 1, got 0",
        "server.grace_period: \"forever\" is not a duration",
    ] {
        assert!(
            out.stderr.contains(want),
            "missing {want:?}:\n{}",
            out.stderr
        );
    }
}

#[test]
fn run_with_a_bad_config_exits_nonzero_before_binding() {
    let w = write_config("services: { s: { targets: [] } }\n", &[]);
    let out = gatehouse_cmd(&["run", "-c", w.config.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("not starting"), "{}", out.stderr);
    // Nothing was bound: the ports are still free.
    assert!(std::net::TcpListener::bind(("127.0.0.1", w.port)).is_ok());
    assert!(std::net::TcpListener::bind(("127.0.0.1", w.admin_port)).is_ok());
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = gatehouse_cmd(&["check", "-c", "/nonexistent/gatehouse.yaml"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("/nonexistent/gatehouse.yaml: cannot read"),
        "{}",
        out.stderr
    );
}

#[test]
fn every_shipped_example_config_is_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    for entry in std::fs::read_dir(format!("{root}/conf")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = gatehouse_cmd(&["check", "-c", path.to_str().unwrap()]);
            assert_eq!(out.code, 0, "{}: {}", path.display(), out.stderr);
        }
    }
}

#[test]
fn policy_mistakes_are_errors_with_their_yaml_path() {
    let out = check(
        r#"client_ip: { trusted_proxies: ["10.0.0.0/33"] }
services: { s: { targets: ["127.0.0.1:1"] } }
ingresses:
  - rules:
      - paths:
          - path: /a
            service: s
            access: { allow: ["10.0.0.0/8", "not-an-ip"] }
            rate_limit: { requests_per_second: 0, burst: -1, key: "cookie:x" }
            request_headers: { set: { "bad name": x }, remove: ["ok", "bad\nname"] }
            response_headers: { add: { X-Ok: "bad\u0001value" } }
            rewrite: { regex: "^/a/(.*)$", replacement: "/b/$2" }
          - { path: /b, service: s, rewrite: { strip_prefix: /b, replace_path: /c } }
          - { path: /c, redirect: { to: "https://x/{nope}" } }
          - { path: /d, redirect: { https: true, code: 200 } }
          - { path: /e, respond: { body: x }, rewrite: { replace_path: /f } }
"#,
        &[],
    );
    assert_eq!(out.code, 1);
    for want in [
        "client_ip.trusted_proxies[0]: \"10.0.0.0/33\" is not a CIDR or IP address",
        "paths[0].access.allow[1]: \"not-an-ip\" is not a CIDR or IP address",
        "paths[0].rate_limit.requests_per_second: must be between 0.001 and 1000000, got 0",
        "paths[0].rate_limit.burst: burst must be between 0 and 1000000, got -1",
        "paths[0].rate_limit.key: \"cookie:x\": write \"client_ip\", \"route\" or \"header:X-Api-Key\"",
        "paths[0].request_headers.set.bad name: \"bad name\" is not a valid header name",
        "paths[0].request_headers.remove[1]:",
        "paths[0].response_headers.add.X-Ok:",
        "paths[0].rewrite: replacement refers to group $2, but the regex has 1 group(s)",
        "paths[1].rewrite: write exactly one of `strip_prefix`, `replace_path`, or `regex` with `replacement`",
        "paths[2].redirect: unknown variable {nope}",
        "paths[3].redirect: redirect code must be one of 301, 302, 307, 308, got 200",
        "paths[4].rewrite: a rewrite only applies to a path with a `service`",
    ] {
        assert!(out.stderr.contains(want), "missing {want:?} in:\n{}", out.stderr);
    }
}
