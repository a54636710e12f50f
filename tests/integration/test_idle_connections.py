#!/usr/bin/env python3
"""Thousands of idle connections are cheap.

2,000 client sessions to an echo upstream, each sends one small message, gets it back and
stays open. grelay's resident memory grows by less than 16 KiB per held session (measured
as the VmRSS difference before and after, divided by the number of sessions; the receive
buffer pool is touched by a warm-up stream first, so its pages are in the baseline). Every
session still works afterwards, and closing them all brings connections_active back to 0.

The bytes per connection are printed ("idle connections: ...") for the README. Under
AddressSanitizer (redzones, quarantine) memory is not representative: the number is
printed but not asserted.
"""

import os
import selectors
import socket
import time

import harness as h

CONNECTIONS = int(os.environ.get("GRELAY_IDLE_CONNECTIONS", "2000"))
LIMIT_PER_CONNECTION = 16 * h.KiB


def open_sessions(port: int, n: int) -> list:
    """n connections, each with one echoed message ("hello N"), opened 100 at a time."""
    socks = []
    sel = selectors.DefaultSelector()
    for base in range(0, n, 100):
        batch = []
        for i in range(base, min(n, base + 100)):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            msg = b"hello %d\n" % i
            s.sendall(msg)
            s.setblocking(False)
            batch.append((s, msg, bytearray()))
            sel.register(s, selectors.EVENT_READ, len(batch) - 1)
        pending = len(batch)
        deadline = time.monotonic() + 20
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(1.0):
                s, msg, got = batch[key.data]
                d = s.recv(4096)
                if not d:
                    raise AssertionError(f"session {base + key.data} closed before its echo")
                got += d
                if len(got) >= len(msg):
                    if bytes(got) != msg:
                        raise AssertionError(f"session {base + key.data}: echo {bytes(got)!r}")
                    sel.unregister(s)
                    pending -= 1
        if pending:
            raise AssertionError(f"{pending} echoes of batch {base} missing after 20s")
        socks += [b[0] for b in batch]
    sel.close()
    return socks


def rss_settled(pid: int) -> int:
    """VmRSS (KiB) once it stops moving: the median of 5 samples 200 ms apart."""
    samples = []
    for _ in range(5):
        time.sleep(0.2)
        samples.append(h.sample_rss(pid))
    return sorted(samples)[2]


class IdleConnectionsTest(h.GrelayTest):
    def test_two_thousand_idle_sessions_cost_under_16_kib_each(self):
        n = CONNECTIONS
        have = h.raise_nofile(3 * n + 256)
        if have < 2 * n + 128:
            self.skipTest(f"RLIMIT_NOFILE {have} is too small for {n} client sockets")
        with h.EpollEchoServer() as echo:
            cfg = h.Config(max_connections=n + 100)
            cfg.with_admin()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("idle", "app")
            with h.Grelay(cfg) as g:
                # Touch the receive buffer pool of every worker: a few big streams.
                warm = h.run_concurrently(h.stream_session,
                                          [(port, h.Stream(i, 32 * h.MiB)) for i in range(4)])
                for r in warm:
                    self.assertTrue(r.ok, f"warm-up: {r}")
                self.assertTrue(h.wait_for(lambda: g.metric("grelay_connections_active") == 0,
                                           10))
                before = rss_settled(g.pid)
                t0 = time.monotonic()
                socks = open_sessions(port, n)
                opened_in = time.monotonic() - t0
                self.assertTrue(h.wait_for(
                    lambda: g.metric("grelay_connections_active", listener="idle") == n, 10),
                    f"connections_active = {g.metric('grelay_connections_active')}")
                self.assertEqual(echo.open, n)
                held = rss_settled(g.pid)
                per_conn = (held - before) * 1024 / n
                h.log(f"idle connections: {n} sessions held (opened in {opened_in:.1f}s), "
                      f"grelay VmRSS {before} KiB -> {held} KiB: {per_conn:.0f} bytes per "
                      f"session (limit {LIMIT_PER_CONNECTION}); fds "
                      f"{h.open_fd_count(g.pid)}; sanitized={h.SANITIZED}")
                # Every held session still relays, byte for byte.
                for i, s in enumerate(socks):
                    s.setblocking(True)
                    s.settimeout(10)
                    msg = b"again %d\n" % i
                    s.sendall(msg)
                    got = b""
                    while len(got) < len(msg):
                        d = s.recv(64)
                        self.assertTrue(d, f"session {i} closed")
                        got += d
                    self.assertEqual(got, msg, f"session {i}")
                for s in socks:
                    s.close()
                self.assertTrue(h.wait_for(lambda: g.metric("grelay_connections_active") == 0,
                                           20), "sessions still open after their clients left")
                after = rss_settled(g.pid)
                h.log(f"idle connections: after closing them all VmRSS {after} KiB")
                if h.SANITIZED:
                    h.log("idle connections: AddressSanitizer build, memory not asserted")
                else:
                    self.assertLess(per_conn, LIMIT_PER_CONNECTION,
                                    f"{per_conn:.0f} bytes of RSS per idle session")


if __name__ == "__main__":
    h.main()
