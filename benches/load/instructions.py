#!/usr/bin/env python3
"""User-space instructions per proxied request, counted by valgrind's callgrind.

CPU time per request on a shared 2-core machine moves by 10-20% between runs; an instruction
count over a fixed number of requests moves by about 1%, so it is what tells whether a
change to the request path made it cheaper. It counts only user-space work (no kernel, no cache
misses): use it next to `make load`, not instead of it.

Each gatehouse build runs under callgrind in front of one nginx backend; 500 warm-up requests,
then the counters are zeroed, N keep-alive HTTP/1.1 requests are made with h2load (4
connections), and the counters are dumped. Scenarios: plain proxying, and 1,000 routes with
every policy on (the configuration of `make load`).

    python3 benches/load/instructions.py [name=/path/to/gatehouse ...]

With no arguments it measures target/release/gatehouse. N (default 4000) sets the count.
Results also go to target/bench/instructions.json.
"""
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402

N = int(os.environ.get("N", 4000))
PATH = "/api/v1/items/42"


def count(d, backend, cert, key, binary, name, policy):
    # Start once normally to build its configuration and learn its command line and port.
    probe = c.gatehouse(d, backend, cert, key, policy=policy, binary=binary, name=name)
    argv, port = probe.argv, probe.port
    probe.stop()
    out = os.path.join(d, f"callgrind-{name}.out")
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + argv,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        c.wait_port(port, 120)
        url = f"http://127.0.0.1:{port}{PATH}"
        h2load = ["h2load", "--h1", "-c", "4"]
        subprocess.run(h2load + ["-n", "500", url], capture_output=True, check=True, timeout=300)
        subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, check=True)
        r = subprocess.run(h2load + ["-n", str(N), url], capture_output=True, text=True, check=True,
                           timeout=600).stdout
        subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True, check=True)
        ok = int(re.search(r"(\d+) succeeded", r).group(1))
        if ok != N:
            raise SystemExit(f"{name}: only {ok} of {N} requests succeeded")
        deadline = time.time() + 30
        total = None
        while total is None and time.time() < deadline:
            for f in glob.glob(out + ".*"):
                m = re.search(r"^(?:summary|totals): (\d+)", open(f).read(), re.M)
                if m:
                    total = int(m.group(1))
            time.sleep(0.2)
        if total is None:
            raise SystemExit(f"{name}: callgrind wrote no dump")
        return total / N
    finally:
        p.terminate()
        p.wait()


def main():
    builds = [a.split("=", 1) for a in sys.argv[1:]] or [["gatehouse", c.GATEHOUSE]]
    d = tempfile.mkdtemp(prefix="gatehouse-instr-")
    cert, key, _ = c.make_cert(d)
    backend = c.nginx_backend(d)
    results = {}
    try:
        for name, binary in builds:
            for policy in (False, True):
                scenario = "1,000 routes, every policy" if policy else "plain"
                tag = f"{name}-policy" if policy else name
                results.setdefault(name, {})[scenario] = count(d, backend.port, cert, key, binary, tag, policy)
                print(f"{name:20} {scenario:28} {results[name][scenario]:9.0f} instructions/request", flush=True)
    finally:
        backend.stop()
    print(f"callgrind dumps: {d}/callgrind-*.out.1 (callgrind_annotate --inclusive=yes FILE)")
    os.makedirs(os.path.join(c.ROOT, "target/bench"), exist_ok=True)
    with open(os.path.join(c.ROOT, "target/bench/instructions.json"), "w") as f:
        json.dump({"requests": N, "instructions_per_request": results}, f, indent=2)


if __name__ == "__main__":
    main()
