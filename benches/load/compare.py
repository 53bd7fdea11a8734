#!/usr/bin/env python3
"""Load comparison on loopback: gatehouse, a bare Pingora proxy, nginx and HAProxy in front of
one nginx backend, driven by wrk (HTTP/1.1 keep-alive and new-connection-per-request) and
h2load (HTTP/2 over TLS). Runs every proxy once per round, in alternating order, over several
rounds so machine drift cancels out; prints medians and ratios; writes JSON to target/bench/.

Usage: benches/load/compare.py [--duration 10] [--rounds 3] [--connections 32]
Run through `make load` or `make bench`, which install nginx-light, haproxy, wrk and
nghttp2-client and build the binaries first. The build measured as "gatehouse" is
GATEHOUSE_BIN (the profile-guided build of `make release`, as `make load` passes it; else
target/release/gatehouse).
"""
import argparse, json, os, re, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GATEHOUSE = os.environ.get("GATEHOUSE_BIN") or os.path.join(ROOT, "target/release/gatehouse")
BARE = os.path.join(ROOT, "target/release/examples/bare_proxy")
TICK = os.sysconf("SC_CLK_TCK")
BODY = "hello from the backend\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def family(pid):
    """pid and all its descendants (nginx master + worker)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            kids = open(f"/proc/{p}/task/{p}/children").read().split()
        except OSError:
            kids = []
        todo.extend(int(k) for k in kids)
    return out


def cpu_seconds(pid):
    total = 0.0
    for p in family(pid):
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        except (OSError, IndexError):
            pass
    return total


def rss_kib(pid, key):
    total = 0
    for p in family(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def make_cert(d):
    key, crt = os.path.join(d, "bench.key"), os.path.join(d, "bench.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=bench.test",
                    "-addext", "subjectAltName=DNS:bench.test"], check=True, capture_output=True)
    pem = os.path.join(d, "bench.pem")
    with open(pem, "w") as f:
        f.write(open(crt).read() + open(key).read())
    return crt, key, pem


# Where each side runs. With two CPUs or more, the proxy under test gets the last one to
# itself and the backend and the load generator share the others: the proxy is not left
# waiting for a core the load generator holds, and where it lands no longer changes from run
# to run (unpinned, the same build measured 0.25 or 0.35 CPU s / 10k requests from one round
# to the next). BENCH_PIN=0 leaves placement to the scheduler.
NCPU = os.cpu_count() or 1
PIN = os.environ.get("BENCH_PIN", "1") != "0" and NCPU >= 2
PROXY_CPUS, LOAD_CPUS = str(NCPU - 1), f"0-{max(NCPU - 2, 0)}"


def pinned(argv, cpus):
    return ["taskset", "-c", cpus, *argv] if PIN else list(argv)


class Proc:
    def __init__(self, name, argv, port, tls_port=None, cpus=PROXY_CPUS):
        self.name, self.port, self.tls_port = name, port, tls_port
        self.argv = list(argv)  # as run, without the pinning (callgrind runs it itself)
        self.p = subprocess.Popen(pinned(argv, cpus), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        wait_port(port)
        if tls_port:
            wait_port(tls_port)
        time.sleep(0.3)
        self.idle_rss = rss_kib(self.p.pid, "VmRSS")

    def stop(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except OSError:
            pass
        self.p.wait()


def nginx_backend(d):
    port = free_port()
    conf = os.path.join(d, "backend.conf")
    open(conf, "w").write(f"""daemon off; worker_processes 1; pid {d}/backend.pid; error_log stderr crit;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port} reuseport; location / {{ return 200 "{BODY.strip()}\\n"; }} }} }}
""")
    return Proc("backend", ["nginx", "-c", conf, "-p", d], port, cpus=LOAD_CPUS)


def nginx_proxy(d, backend, cert, key, policy=False):
    port, tls = free_port(), free_port()
    conf = os.path.join(d, f"nginx{'-policy' if policy else ''}.conf")
    pol = ""
    if policy:
        pol = """allow 127.0.0.0/8; allow 10.0.0.0/8; deny 10.0.50.0/24; deny all;
      limit_req zone=perip burst=1000000 nodelay;
      proxy_set_header X-Env prod; proxy_hide_header X-Powered-By; add_header X-Served-By gatehouse-bench;
      rewrite ^/api/v1/(.*)$ /$1 break;"""
    zone = "limit_req_zone $binary_remote_addr zone=perip:10m rate=1000000r/s;" if policy else ""
    open(conf, "w").write(f"""daemon off; worker_processes 1; pid {conf}.pid; error_log stderr crit;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; {zone}
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port}; listen 127.0.0.1:{tls} ssl http2;
    ssl_certificate {cert}; ssl_certificate_key {key};
    location / {{ {pol}
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Real-IP $remote_addr; proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host; proxy_set_header X-Request-Id $request_id;
      add_header X-Request-Id $request_id always; }} }} }}
""")
    return Proc("nginx-policy" if policy else "nginx", ["nginx", "-c", conf, "-p", d], port, tls)


def haproxy(d, backend, pem):
    port, tls = free_port(), free_port()
    conf = os.path.join(d, "haproxy.cfg")
    open(conf, "w").write(f"""global
  nbthread 1
  log stderr local0 emerg
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  option forwardfor
frontend fe
  bind 127.0.0.1:{port}
  bind 127.0.0.1:{tls} ssl crt {pem} alpn h2,http/1.1
  unique-id-format %{{+X}}o%ci%cp%fi%fp%Ts%rt%pid
  http-request set-header X-Request-Id %[unique-id]
  http-request set-header X-Real-IP %[src]
  http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
  http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-after-response set-header X-Request-Id %[unique-id]
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:{backend}
""")
    return Proc("haproxy", ["haproxy", "-db", "-f", conf], port, tls)


def gatehouse(d, backend, cert, key, policy=False, binary=GATEHOUSE, name=None, extra=""):
    """gatehouse in front of `backend`; `extra` is appended to its configuration."""
    port, tls = free_port(), free_port()
    name = name or ("gatehouse-policy" if policy else "gatehouse")
    routes = ""
    if policy:
        # 1,000 routes: 100 hosts (one in five a wildcard) x 10 paths, the benchmark's own last.
        lines = []
        for h in range(100):
            host = f"*.zone{h}.example.com" if h % 5 == 0 else f"svc{h}.example.com"
            paths = ", ".join(f"{{ path: /p{p}/items, service: be }}" for p in range(10))
            lines.append(f"      - {{ host: \"{host}\", paths: [{paths}] }}")
        routes = "\n".join(lines) + "\n"
        last = """      - host: ""
        paths:
          - path: /
            service: be
            access: { allow: [127.0.0.0/8, 10.0.0.0/8], deny: [10.0.50.0/24] }
            rate_limit: { requests_per_second: 1000000, burst: 1000000 }
            request_headers: { set: { X-Env: prod } }
            response_headers: { add: { X-Served-By: gatehouse-bench }, remove: [X-Powered-By] }
            rewrite: { regex: "^/api/v1/(.*)$", replacement: "/$1" }
"""
    else:
        last = """      - host: ""
        paths: [{ path: /, service: be }]
"""
    conf = os.path.join(d, f"{name}.yaml")
    open(conf, "w").write(f"""listen: {{ http: ["127.0.0.1:{port}"], https: ["127.0.0.1:{tls}"] }}
admin: "off"
log_level: error
server: {{ threads: 1, work_stealing: false, pid_file: {d}/{name}.pid, upgrade_sock: {d}/{name}.sock }}
tls: {{ certificates: [{{ cert: {cert}, key: {key} }}] }}
services: {{ be: {{ targets: ["127.0.0.1:{backend}"] }} }}
ingresses:
  - name: bench
    rules:
{routes}{last}{extra}""")
    return Proc(name, [binary, "run", "-c", conf], port, tls)


def bare(backend):
    port = free_port()
    return Proc("pingora-bare", [BARE, f"127.0.0.1:{port}", f"127.0.0.1:{backend}", "1"], port)


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url, duration, conns, close=False):
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", url]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(pinned(argv, LOAD_CPUS), capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    pct = {}
    for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        pct[p] = float(v) * UNITS[u]
    return {"rps": rps, "requests": total, "p50_ms": pct.get("50"), "p99_ms": pct.get("99"),
            "errors": errors + (int(non2xx.group(1)) if non2xx else 0)}


def h2load(url, duration, conns):
    argv = ["h2load", "-t1", f"-c{conns}", "-m10", "-D", str(duration), url]
    out = subprocess.run(pinned(argv, LOAD_CPUS), capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    return {"rps": rps, "requests": int(done.group(2)), "p50_ms": None, "p99_ms": None,
            "mean_ms": float(mean.group(1)) * UNITS[mean.group(2)] if mean else None,
            "errors": int(done.group(3)) + int(done.group(4))}


def measure(proc, fn):
    before = cpu_seconds(proc.p.pid)
    r = fn()
    cpu = cpu_seconds(proc.p.pid) - before
    r["cpu_s_per_10k"] = cpu / max(r["requests"], 1) * 10_000
    r["peak_rss_mib"] = rss_kib(proc.p.pid, "VmHWM") / 1024
    r["idle_rss_mib"] = proc.idle_rss / 1024
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=int(os.environ.get("BENCH_DURATION", 6)))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 5)))
    ap.add_argument("--connections", type=int, default=32)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="gatehouse-bench-")
    cert, key, pem = make_cert(d)
    backend = nginx_backend(d)
    procs = {
        "gatehouse": gatehouse(d, backend.port, cert, key),
        "gatehouse-policy": gatehouse(d, backend.port, cert, key, policy=True),
        "pingora-bare": bare(backend.port),
        "nginx": nginx_proxy(d, backend.port, cert, key),
        "nginx-policy": nginx_proxy(d, backend.port, cert, key, policy=True),
        "haproxy": haproxy(d, backend.port, pem),
    }
    # A/B against an older build: BENCH_BASELINE=/path/to/old/gatehouse adds "gatehouse-before"
    # to the keep-alive, new-connection and TLS scenarios; BENCH_NO_PGO=/path/to/gatehouse (a
    # build without profile guidance, as `make load` passes) adds "gatehouse-no-pgo" the same way.
    extra = []
    for name, var in [("gatehouse-before", "BENCH_BASELINE"), ("gatehouse-no-pgo", "BENCH_NO_PGO")]:
        if os.environ.get(var):
            procs[name] = gatehouse(d, backend.port, cert, key, binary=os.environ[var], name=name)
            extra.append(name)
    path = "/api/v1/items/42"
    scenarios = {
        "plain keep-alive (wrk)": (["gatehouse", *extra, "pingora-bare", "nginx", "haproxy"],
                                   lambda p: wrk(f"http://127.0.0.1:{p.port}{path}", a.duration, a.connections)),
        "new connection per request (wrk)": (["gatehouse", *extra, "pingora-bare", "nginx", "haproxy"],
                                   lambda p: wrk(f"http://127.0.0.1:{p.port}{path}", a.duration, a.connections, close=True)),
        "1,000 routes + every policy (wrk)": (["gatehouse-policy", "gatehouse", "nginx-policy"],
                                   lambda p: wrk(f"http://127.0.0.1:{p.port}{path}", a.duration, a.connections)),
        "TLS termination, HTTP/2 (h2load)": (["gatehouse", *extra, "nginx", "haproxy"],
                                   lambda p: h2load(f"https://127.0.0.1:{p.tls_port}{path}", a.duration, a.connections)),
    }
    results = {s: {n: [] for n in names} for s, (names, _) in scenarios.items()}
    try:
        for rnd in range(a.rounds):
            for s, (names, fn) in scenarios.items():
                order = names if rnd % 2 == 0 else list(reversed(names))
                for n in order:
                    r = measure(procs[n], lambda: fn(procs[n]))
                    results[s][n].append(r)
                    print(f"round {rnd + 1}/{a.rounds} {s:36} {n:17} {r['rps']:10.0f} req/s  "
                          f"{r['cpu_s_per_10k']:.3f} CPU s/10k  errors {r['errors']}", flush=True)
    finally:
        for p in list(procs.values()) + [backend]:
            p.stop()
    summary = summarize(results)
    paired = paired_ratios(results)
    print_table(summary, paired, a)
    out_dir = os.path.join(ROOT, "target/bench")
    os.makedirs(out_dir, exist_ok=True)
    doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "duration_s": a.duration,
           "rounds": a.rounds, "connections": a.connections, "cores": os.cpu_count(),
           "summary": summary, "paired_ratios": paired, "runs": results}
    for f in ["load-latest.json", time.strftime("load-%Y%m%d-%H%M%S.json")]:
        json.dump(doc, open(os.path.join(out_dir, f), "w"), indent=2)
    print(f"\nJSON: {os.path.join(out_dir, 'load-latest.json')}")


def med(runs, k):
    vals = [r[k] for r in runs if r.get(k) is not None]
    return statistics.median(vals) if vals else None


def summarize(results):
    out = {}
    for s, per in results.items():
        out[s] = {n: {k: med(runs, k) for k in ["rps", "p50_ms", "p99_ms", "mean_ms", "cpu_s_per_10k",
                                                 "peak_rss_mib", "idle_rss_mib"]}
                  | {"errors": sum(r["errors"] for r in runs)} for n, runs in per.items()}
    return out


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def subject(per):
    """The gatehouse entry a scenario's ratios are about."""
    return "gatehouse-policy" if "gatehouse-policy" in per else "gatehouse"


def paired_ratios(results):
    """Per scenario, gatehouse against each other proxy: the median over rounds of the ratio
    within each round. The proxies of a round run one after another, so a ratio taken within
    a round cancels the machine's drift between rounds, which medians taken apart do not."""
    out = {}
    for s, per in results.items():
        g = subject(per)
        out[s] = {}
        for other in ["nginx", "nginx-policy", "haproxy", "pingora-bare", "gatehouse-before",
                      "gatehouse-no-pgo", "gatehouse"]:
            if other not in per or other == g:
                continue
            r = {}
            for k in ["rps", "cpu_s_per_10k", "p99_ms", "mean_ms"]:
                vals = [a[k] / b[k] for a, b in zip(per[g], per[other]) if a.get(k) and b.get(k)]
                r[k] = statistics.median(vals) if vals else None
            out[s][other] = r
    return out


def print_table(summary, paired, a):
    print(f"\nmedians of {a.rounds} rounds, {a.duration}s each, {a.connections} connections, 1 proxy thread\n")
    for s, per in summary.items():
        print(f"## {s}\n")
        print("| proxy | req/s | p50 ms | p99 ms | mean ms | CPU s / 10k req | peak RSS MiB | idle RSS MiB | errors |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for n, r in per.items():
            print(f"| {n} | {fmt(r['rps'], '.0f')} | {fmt(r['p50_ms'], '.2f')} | {fmt(r['p99_ms'], '.2f')} | "
                  f"{fmt(r['mean_ms'], '.2f')} | {fmt(r['cpu_s_per_10k'], '.3f')} | {fmt(r['peak_rss_mib'], '.1f')} | "
                  f"{fmt(r['idle_rss_mib'], '.1f')} | {r['errors']} |")
        g = subject(per)
        lines = []
        for other, r in paired[s].items():
            latency = ("p99", r["p99_ms"]) if r["p99_ms"] else ("mean latency", r["mean_ms"])
            lines.append(f"{g}/{other}: throughput {fmt(r['rps'], '.2f')}x, CPU per request "
                         f"{fmt(r['cpu_s_per_10k'], '.2f')}x, {latency[0]} {fmt(latency[1], '.2f')}x")
        print("\nRatios, each the median over rounds of the ratio within a round:\n")
        print("\n".join(f"- {r}" for r in lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
