#!/usr/bin/env python3
"""End to end: traffic through the real grelay binary shows up in Prometheus, exactly.

An echo upstream, a mirror sink and a Prometheus (prom_harness) around a real grelay
with three listeners:
  web     -> app (echo), mirror "analytics", five sessions of 1 B .. 1 MiB + 7 B
  dead    -> pool "nowhere" (a port nobody listens on): one session, no server answers
  capped  -> app, max_connections = 1: a second concurrent connection is rejected
Every byte and session count queried from Prometheus must equal what the test sent.
SIGTERM must then stop grelay with exit status 0 within a few seconds.

usage: grelay_metrics_e2e_test.py --grelay PATH
Exits 77 (skipped) without Prometheus or when grelay cannot use io_uring here.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prom_harness import SKIP, Prometheus, free_port, http_get, skip_unless_prometheus  # noqa: E402

SIZES = [1, 1000, 65536, 100000, 1024 * 1024 + 7]


class Server:
    """A TCP server on a free port: echoes (upstream) or only counts (mirror sink)."""

    def __init__(self, echo):
        self.echo = echo
        self.received = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                with self.lock:
                    self.received += len(data)
                if self.echo:
                    conn.sendall(data)


def exchange(port, payload):
    """Sends payload, half-closes, returns everything read until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        sender = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)))
        sender.start()
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
        sender.join()
        return b"".join(chunks)


def closed_by_peer(sock, timeout=5):
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def closed_on_connect(port):
    """Connects and reports whether grelay closes the connection (EOF or reset) unprompted."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            return closed_by_peer(s)
    except ConnectionResetError:  # the reset can beat connect() itself on loopback
        return True


def wait_until(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--grelay", required=True)
    args = parser.parse_args()
    skip_unless_prometheus()

    failures = []

    def check(ok, message):
        if not ok:
            failures.append(message)
            print("FAIL:", message)

    upstream = Server(echo=True)
    mirror = Server(echo=False)
    nowhere = free_port()  # closed again: connects are refused
    admin, web, dead, capped = free_port(), free_port(), free_port(), free_port()
    workdir = tempfile.mkdtemp(prefix="grelay-metrics-e2e-")
    config = os.path.join(workdir, "grelay.toml")
    with open(config, "w") as f:
        f.write(f"""
[server]
workers = 2

[admin]
listen = "127.0.0.1:{admin}"

[upstream.app]
servers = ["127.0.0.1:{upstream.port}"]

[upstream.nowhere]
servers = ["127.0.0.1:{nowhere}"]

[[listener]]
name = "web"
listen = "127.0.0.1:{web}"
upstream = "app"

  [[listener.mirror]]
  name = "analytics"
  address = "127.0.0.1:{mirror.port}"

[[listener]]
name = "dead"
listen = "127.0.0.1:{dead}"
upstream = "nowhere"

[[listener]]
name = "capped"
listen = "127.0.0.1:{capped}"
upstream = "app"
max_connections = 1
""")
    version = subprocess.run([args.grelay, "--version"], stdout=subprocess.PIPE, text=True).stdout.split()[-1]
    log_path = os.path.join(workdir, "grelay.log")
    log = open(log_path, "w")
    grelay = subprocess.Popen([args.grelay, "-c", config], stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)

    def grelay_log():
        with open(log_path) as f:
            return f.read()

    try:
        if not wait_until(lambda: http_get("http://127.0.0.1:%d/metrics" % admin)[0] == 200
                          or grelay.poll() is not None):
            print("grelay did not serve /metrics:\n" + grelay_log())
            return 1
        if grelay.poll() is not None:
            text = grelay_log()
            if "io_uring" in text and ("EPERM" in text or "ENOSYS" in text or "disabled" in text):
                print("SKIP: grelay cannot use io_uring here:\n" + text)
                return SKIP
            print("grelay exited %d:\n%s" % (grelay.returncode, text))
            return 1

        with Prometheus(["127.0.0.1:%d" % admin]) as prom:
            prom.wait_for_scrape()

            # web: five sessions, each echoed back byte for byte.
            for i, size in enumerate(SIZES):
                payload = bytes((i * 7 + n) % 251 for n in range(size))
                check(exchange(web, payload) == payload, "web session %d (%d bytes) not echoed exactly" % (i, size))
            total = sum(SIZES)
            check(wait_until(lambda: mirror.received == total),
                  "mirror got %d of %d bytes" % (mirror.received, total))

            # dead: the only server refuses, the client is closed.
            check(closed_on_connect(dead), "dead listener: client not closed")

            # capped: the second concurrent connection is closed at once.
            with socket.create_connection(("127.0.0.1", capped), timeout=5) as first:
                first.sendall(b"ping")
                check(first.recv(4) == b"ping", "capped: first session does not relay")
                check(closed_on_connect(capped), "capped: second connection not rejected")
                time.sleep(1.2)  # a session that lasts over a second (its length's bucket)
                first.shutdown(socket.SHUT_WR)
                check(closed_by_peer(first), "capped: first session not finished")

            # Wait for a scrape taken after everything settled.
            prom.wait_for_series('grelay_sent_bytes_total{listener="web",target="analytics"} == %d' % total)
            prom.wait_for_series('sum(grelay_connections_active) == 0')
            prom.wait_for_series('grelay_connections_rejected_total{listener="capped",limit="listener"} == 1')

            want = {
                'grelay_build_info{version="%s"}' % version: 1,
                'grelay_workers': 2,
                'grelay_connections_total{listener="web"}': len(SIZES),
                'grelay_connections_active{listener="web"}': 0,
                'grelay_connections_rejected_total{listener="web",limit="server"}': 0,
                'grelay_received_bytes_total{listener="web",direction="request"}': total,
                'grelay_received_bytes_total{listener="web",direction="response"}': total,
                'grelay_sent_bytes_total{listener="web",target="app"}': total,
                'grelay_sent_bytes_total{listener="web",target="analytics"}': total,
                'grelay_client_sent_bytes_total{listener="web"}': total,
                'sum(grelay_chunks_total{listener="web"})': None,  # checked below
                'grelay_mirror_sessions_total{listener="web",mirror="analytics"}': len(SIZES),
                'grelay_mirror_cuts_total{listener="web",mirror="analytics"}': 0,
                'grelay_mirror_dropped_bytes_total{listener="web",mirror="analytics"}': 0,
                'grelay_mirror_connect_errors_total{listener="web",mirror="analytics"}': 0,
                'grelay_upstream_connect_errors_total{listener="web",upstream="app"}': 0,
                'grelay_upstream_connect_duration_seconds_count{listener="web",upstream="app"}': len(SIZES),
                'grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="+Inf"}': len(SIZES),
                'grelay_connections_total{listener="dead"}': 1,
                'grelay_upstream_connect_errors_total{listener="dead",upstream="nowhere"}': 1,
                'grelay_upstream_unavailable_total{listener="dead"}': 1,
                'grelay_upstream_connect_duration_seconds_count{listener="dead",upstream="nowhere"}': 0,
                'grelay_connections_total{listener="capped"}': 1,
                'grelay_connections_rejected_total{listener="capped",limit="listener"}': 1,
                'grelay_connections_rejected_total{listener="capped",limit="server"}': 0,
                'grelay_received_bytes_total{listener="capped",direction="request"}': 4,
                'grelay_sent_bytes_total{listener="capped",target="app"}': 4,
                'grelay_client_sent_bytes_total{listener="capped"}': 4,
                # Every session that ended, once (the rejected connection is not a session).
                'grelay_session_duration_seconds_count{listener="web"}': len(SIZES),
                'grelay_session_duration_seconds_bucket{listener="web",le="+Inf"}': len(SIZES),
                'grelay_session_duration_seconds_count{listener="dead"}': 1,
                'grelay_session_duration_seconds_count{listener="capped"}': 1,
                'grelay_session_duration_seconds_bucket{listener="capped",le="1"}': 0,
            }
            for expr, value in want.items():
                if value is None:
                    continue
                try:
                    got = prom.value(expr)
                except Exception as e:  # noqa: BLE001 - report every mismatch
                    check(False, "%s: %s" % (expr, e))
                    continue
                check(got == value, "%s = %r, want %r" % (expr, got, value))

            # Chunks: at least one per 64KiB received in each direction, all on the path in use.
            paths = prom.series("grelay_relay_path_info")
            check(len(paths) == 1, "one relay path in use: %s" % paths)
            in_use = dict(next(iter(paths))).get("path") if paths else None
            chunks = {dict(k)["path"]: v for k, v in prom.series('grelay_chunks_total{listener="web"}').items()}
            # The request direction is mirrored: it is never spliced. The response direction
            # has a single target (the client) and no tap: on the mainline path it may
            # splice once a full chunk arrives at once.
            minimum = sum(-(-size // 65536) for size in SIZES)
            check(chunks.get(in_use, 0) >= minimum, "web chunks on %s: %s, want >= %d" % (in_use, chunks, minimum))
            allowed = {in_use, "splice"} if in_use == "mainline" else {in_use}
            check(all(v == 0 for p, v in chunks.items() if p not in allowed), "chunks on other paths: %s" % chunks)
            latency = prom.value('histogram_quantile(0.99, grelay_upstream_connect_duration_seconds_bucket{listener="web"})')
            check(0 < latency <= 10, "p99 upstream connect %r s" % latency)

        started = time.monotonic()
        grelay.send_signal(signal.SIGTERM)
        try:
            code = grelay.wait(timeout=15)
        except subprocess.TimeoutExpired:
            code = None
        check(code == 0, "grelay exit status after SIGTERM: %r" % code)
        check(time.monotonic() - started < 5, "SIGTERM took %.1fs" % (time.monotonic() - started))
    finally:
        if grelay.poll() is None:
            grelay.kill()
            grelay.wait()
        log.close()

    if failures:
        print("%d check(s) failed; grelay log:\n%s" % (len(failures), grelay_log()))
        return 1
    print("OK: %d bytes in %d web sessions, a dead upstream and a rejected connection counted exactly"
          % (sum(SIZES), len(SIZES)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
