#!/usr/bin/env python3
"""The training run of the profile-guided build (`make release`).

Drives an instrumented gatehouse (built with `-Cprofile-generate`) through the work it does in
production, so that the compiler learns which code is hot: HTTP/1.1 keep-alive and
one-request connections, HTTP/2 and HTTP/1.1 over TLS, the configuration of `make load` with
1,000 routes and every policy, 404s, and a TCP stream. gatehouse is stopped with SIGTERM so
that it exits normally and writes its counters (into the directory named at build time).

    python3 benches/load/train.py path/to/instrumented/gatehouse

The load is bounded (about a minute), on loopback only, and stops by itself.
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402

PATH = "/api/v1/items/42"


def run(argv):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"training step failed: {' '.join(argv)}\n{r.stdout}{r.stderr}")


def stream_listener(port):
    """Configuration for a TCP stream listener on `port` in front of the backend."""
    return f"""streams:
  - name: train
    listen: "127.0.0.1:{port}"
    service: be
"""


def main():
    binary = sys.argv[1]
    d = tempfile.mkdtemp(prefix="gatehouse-train-")
    cert, key, _ = c.make_cert(d)
    backend = c.nginx_backend(d)
    try:
        for policy in (False, True):
            stream = c.free_port()
            g = c.gatehouse(d, backend.port, cert, key, policy=policy, binary=binary,
                            extra=stream_listener(stream))
            c.wait_port(stream)
            http = f"http://127.0.0.1:{g.port}{PATH}"
            https = f"https://127.0.0.1:{g.tls_port}{PATH}"
            run(["h2load", "--h1", "-c", "16", "-n", "60000", http])
            run(["wrk", "-t1", "-c16", "-d4s", http])
            run(["wrk", "-t1", "-c8", "-d3s", "-H", "Connection: close", http])
            run(["h2load", "-c", "8", "-m", "10", "-n", "40000", https])
            run(["h2load", "--h1", "-c", "8", "-n", "10000", https])
            run(["wrk", "-t1", "-c8", "-d2s", "-H", "Host: nowhere.example", f"http://127.0.0.1:{g.port}/missing"])
            run(["wrk", "-t1", "-c8", "-d2s", f"http://127.0.0.1:{stream}{PATH}"])
            with socket.create_connection(("127.0.0.1", g.port)) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")  # refused: 400
                s.recv(4096)
            os.killpg(g.p.pid, signal.SIGTERM)
            if g.p.wait(timeout=60) != 0:
                raise SystemExit(f"gatehouse exited with {g.p.returncode}: no profile written")
            print(f"trained: {'1,000 routes + every policy' if policy else 'plain'}", flush=True)
    finally:
        backend.stop()


if __name__ == "__main__":
    sys.exit(main())
