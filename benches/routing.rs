//! Route lookup with 10, 1,000 and 10,000 routes: exact hosts, wildcards and a catch-all, with
//! exact, prefix and regex paths mixed. Run: `cargo bench --bench routing`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use gatehouse::routing::{normalize_host, HostPattern, PathPattern, RouteId, Router};

/// `n` routes over n/10 hosts (one in five a wildcard), ten paths each, plus a catch-all.
fn table(n: usize) -> Router {
    let mut r = Router::new();
    let mut id = 0u32;
    let mut add = |r: &mut Router, h: &str, p: PathPattern| {
        r.insert(HostPattern::parse(h).unwrap(), p, RouteId(id))
            .unwrap();
        id += 1;
    };
    for h in 0..n.div_ceil(10) {
        let host = if h % 5 == 0 {
            format!("*.zone{h}.example.com")
        } else {
            format!("svc{h}.example.com")
        };
        for p in 0..10 {
            let path = match p {
                0 => PathPattern::exact(&format!("/health{h}")).unwrap(),
                9 => PathPattern::regex(&format!(r"^/img{h}/.*\.png$")).unwrap(),
                _ => PathPattern::prefix(&format!("/api/v{p}/items")).unwrap(),
            };
            add(&mut r, &host, path);
        }
    }
    add(&mut r, "", PathPattern::prefix("/").unwrap());
    r
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    for n in [10usize, 1_000, 10_000] {
        let r = table(n);
        let last = n.div_ceil(10) - 1;
        let host = format!(
            "svc{}.example.com",
            if last % 5 == 0 { last - 1 } else { last }
        );
        g.bench_with_input(BenchmarkId::new("exact_host_prefix", n), &r, |b, r| {
            b.iter(|| r.route(Some(black_box(&host)), black_box("/api/v3/items/42?x=1")))
        });
        g.bench_with_input(BenchmarkId::new("wildcard_host_exact", n), &r, |b, r| {
            b.iter(|| {
                r.route(
                    Some(black_box("a.zone0.example.com")),
                    black_box("/health0"),
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("catch_all_miss", n), &r, |b, r| {
            b.iter(|| {
                r.route(
                    Some(black_box("unknown.org")),
                    black_box("/some/deep/path/here"),
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("normalize_and_route", n), &r, |b, r| {
            b.iter(|| {
                let h = normalize_host(black_box(b"SVC1.Example.com:8080")).unwrap();
                r.route(Some(&h), black_box("/api/v1/items"))
            })
        });
    }
    g.finish();
}

/// Load + compile a configuration of 10,000 routes (1,000 hosts x 10 paths) from YAML.
fn compile(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("gatehouse-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut yaml = String::from(
        "listen: { http: [\"127.0.0.1:8080\"] }\nservices: { s: { targets: [\"127.0.0.1:9000\"] } }\ningresses:\n  - rules:\n",
    );
    for h in 0..1_000 {
        yaml.push_str(&format!(
            "      - host: svc{h}.example.com\n        paths:\n"
        ));
        for p in 0..10 {
            yaml.push_str(&format!(
                "          - {{ path: /api/v{p}, service: s, rate_limit: {{ requests_per_second: 10 }}, access: {{ allow: [10.0.0.0/8] }} }}\n"
            ));
        }
    }
    let path = dir.join("gatehouse.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut g = c.benchmark_group("config");
    g.sample_size(10);
    g.bench_function("load_and_compile_10k_routes", |b| {
        b.iter(|| {
            gatehouse::config::load_runtime(&path, None)
                .unwrap()
                .routes
                .len()
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench, compile);
criterion_main!(benches);
