#!/usr/bin/env python3
"""Fault injection with real sockets: one test per fault.

Every test runs a stream of healthy, byte-exact echo sessions on a second listener
("healthy") through the fault and asserts that
  - grelay keeps serving them (all byte-exact, at least a few completed during the fault),
  - every session of the faulty listener that completes is byte-exact (what a client got
    is always a prefix of what it should get),
  - a metric on /metrics counts the fault,
  - grelay exits 0 on SIGTERM with a log free of sanitizer reports (harness.Grelay).

Faults: the upstream resets mid-stream; the upstream accepts and stalls (idle_timeout);
a mirror's process is killed mid-session; a client vanishes with a reset mid-chunk while
the upstream floods; the tap's disk fills up (a 2 MiB tmpfs; skipped if it cannot be
mounted); file descriptors run out (RLIMIT_NOFILE 64); max_connections is reached;
slowloris clients against handshake_timeout (TLS) and idle_timeout (plaintext).
"""

import os
import re
import resource
import socket
import struct
import threading
import time

import harness as h


def healthy_config(echo, **server) -> h.Config:
    """A config with the admin endpoint and a "healthy" listener to `echo`."""
    cfg = h.Config(**server)
    cfg.with_admin()
    cfg.upstream("healthy", [echo.address])
    cfg.listener("healthy", "healthy")
    return cfg


def reset_close(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def ping(s: socket.socket, payload: bytes = b"ping", timeout: float = 5.0) -> bool:
    """Sends `payload` and reads it back from an echo upstream."""
    s.settimeout(timeout)
    try:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            d = s.recv(len(payload) - len(got))
            if not d:
                return False
            got += d
        return got == payload
    except OSError:
        return False


class FaultTest(h.GrelayTest):
    def healthy(self, g: h.Grelay, **kw) -> h.BackgroundSessions:
        kw.setdefault("size", h.scaled(512 * h.KiB, 64 * h.KiB))
        return h.BackgroundSessions(g.port("healthy"), **kw).start()

    def wait_metric(self, g: h.Grelay, name: str, minimum: float, timeout: float = 10.0,
                    **labels) -> float:
        h.wait_for(lambda: g.metric(name, **labels) >= minimum, timeout, interval=0.1)
        value = g.metric(name, **labels)
        self.assertGreaterEqual(value, minimum, f"{name}{labels} = {value}, expected >= "
                                                f"{minimum}")
        return value

    # -- the upstream

    def test_upstream_reset_mid_stream_is_counted_and_costs_others_nothing(self):
        n = 10
        with h.EchoServer() as echo, h.ResetServer(after=256 * h.KiB) as resetter:
            cfg = healthy_config(echo)
            cfg.upstream("faulty", [resetter.address])
            port = cfg.listener("faulty", "faulty")
            with h.Grelay(cfg) as g:
                bg = self.healthy(g)
                results = h.run_concurrently(
                    h.stream_session, [(port, h.Stream(i, 4 * h.MiB)) for i in range(n)],
                    kwargs_list=[{"expect": b"", "timeout": 10}] * n)
                for r in results:
                    self.assertIn(r.end, ("reset", "eof"), f"after an upstream reset: {r}")
                    self.assertEqual(r.received, 0, f"bytes the upstream never sent: {r}")
                    self.assertLess(r.elapsed, 5.0, str(r))
                self.assertTrue(resetter.wait_connections(n, timeout=10))
                for c in resetter.conns:
                    self.assertGreaterEqual(c.received, 256 * h.KiB, "the upstream got less "
                                            "than it read before resetting")
                self.wait_metric(g, "grelay_session_resets_total", n, listener="faulty")
                bg.assert_healthy(self, minimum=3)
                self.assertEqual(g.metric("grelay_session_resets_total", listener="healthy"), 0)

    def test_upstream_that_accepts_and_stalls_ends_at_idle_timeout(self):
        n = 6
        with h.EchoServer() as echo, h.StallServer() as stall:
            cfg = healthy_config(echo)
            cfg.upstream("faulty", [stall.address])
            port = cfg.listener("faulty", "faulty", idle_timeout="1s")
            with h.Grelay(cfg) as g:
                bg = self.healthy(g)

                def stalled_client(i):
                    s = h.connect(port)
                    s.sendall(h.Stream(i, 2 * h.KiB).bytes())
                    t_last = time.monotonic()
                    end, data = h.read_outcome(s, timeout=10)
                    s.close()
                    return end, data, time.monotonic() - t_last

                for end, data, idle in h.run_concurrently(stalled_client,
                                                          [(i,) for i in range(n)]):
                    self.assertIn(end, ("eof", "reset"), "the stalled session was not closed")
                    self.assertEqual(data, b"", "bytes from an upstream that sent nothing")
                    self.assertGreaterEqual(idle, 0.9, f"closed {idle:.2f}s after the last "
                                                       "byte, before idle_timeout (1s)")
                    self.assertLessEqual(idle, 3.0, f"closed {idle:.2f}s after the last byte")
                self.wait_metric(g, "grelay_idle_timeouts_total", n, listener="faulty")
                self.assertTrue(h.wait_for(lambda: g.metric("grelay_connections_active",
                                                            listener="faulty") == 0, 5),
                                "stalled sessions still open")
                bg.assert_healthy(self, minimum=3)
                self.assertEqual(g.metric("grelay_idle_timeouts_total", listener="healthy"), 0)

    # -- a mirror

    def test_mirror_killed_mid_session_is_cut_and_the_session_completes(self):
        n = 3
        size = h.scaled(48 * h.MiB, 8 * h.MiB)
        with h.EchoServer() as echo, h.KillableSink() as sink:
            cfg = healthy_config(echo)
            cfg.upstream("faulty", [echo.address])
            port = cfg.listener("faulty", "faulty",
                                mirrors=[{"name": "m", "address": sink.address}])
            with h.Grelay(cfg) as g:
                bg = self.healthy(g)
                results = []

                def sessions():
                    results.extend(h.run_concurrently(
                        h.stream_session, [(port, h.Stream(100 + i, size)) for i in range(n)],
                        kwargs_list=[{"chunk": 64 * h.KiB, "send_pause": 0.002,
                                      "timeout": 60}] * n))

                t = threading.Thread(target=sessions)
                t.start()
                mirrored = lambda: g.metric("grelay_sent_bytes_total", listener="faulty",
                                            target="m")
                self.assertTrue(h.wait_for(lambda: mirrored() >= n * h.MiB, 30, 0.05),
                                f"the mirror got only {mirrored()} bytes")
                sink.kill()
                killed_at = mirrored()
                t.join(120)
                self.assertFalse(t.is_alive(), "sessions hung after the mirror died")
                for r in results:
                    self.assertTrue(r.ok, f"a session whose mirror died: {r}")
                self.assertLess(killed_at, n * size, "the mirror died after the sessions ended")
                self.wait_metric(g, "grelay_mirror_cuts_total", n, listener="faulty",
                                 mirror="m")
                self.assertGreater(g.metric("grelay_mirror_dropped_bytes_total",
                                            listener="faulty", mirror="m"), 0)
                bg.assert_healthy(self, minimum=3)

    # -- a client

    def test_client_vanishing_with_reset_mid_chunk_is_counted(self):
        n = 6
        with h.EchoServer() as echo, h.FloodServer(total=1 << 40) as flood:
            cfg = healthy_config(echo)
            cfg.upstream("faulty", [flood.address])
            port = cfg.listener("faulty", "faulty")
            with h.Grelay(cfg) as g:
                bg = self.healthy(g)
                for i in range(n):
                    s = h.connect(port)
                    # Half a chunk of request while the upstream floods the response.
                    s.sendall(h.Stream(i, 24 * h.KiB).bytes())
                    checker = h.Checker(flood.stream)
                    while checker.offset < 2 * h.MiB:
                        checker.feed(s.recv(256 * h.KiB))
                    self.assertIsNone(checker.mismatch, checker.describe())
                    reset_close(s)
                    self.assertTrue(flood.wait_connections(i + 1, timeout=5),
                                    "the upstream kept flooding after the client vanished")
                    self.assertTrue(flood.conns[i].end == "reset" or
                                    "BrokenPipe" in flood.conns[i].end,
                                    f"the upstream saw {flood.conns[i].end}, not a reset")
                self.wait_metric(g, "grelay_session_resets_total", n, listener="faulty")
                self.assertEqual(g.metric("grelay_connections_active", listener="faulty"), 0)
                bg.assert_healthy(self, minimum=3)

    # -- the tap's disk

    def test_tap_disk_full_disables_the_tap_and_relaying_goes_on(self):
        fs, why = h.Tmpfs.mount("2m")
        if fs is None:
            self.skipTest(why)
        with fs, h.EchoServer() as echo:
            cfg = healthy_config(echo)
            cfg.upstream("faulty", [echo.address])
            tap_dir = os.path.join(fs.path, "tap")
            port = cfg.listener("faulty", "faulty", tap={"path": tap_dir, "max_size": "1GiB"})
            with h.Grelay(cfg) as g:
                bg = self.healthy(g)
                n = 8
                size = h.scaled(2 * h.MiB, 512 * h.KiB)
                for batch in range(2):  # the second batch runs with the tap disabled
                    results = h.run_concurrently(
                        h.stream_session,
                        [(port, h.Stream(batch * 100 + i, size)) for i in range(n)])
                    for r in results:
                        self.assertTrue(r.ok, f"batch {batch} with a full tap disk: {r}")
                self.wait_metric(g, "grelay_tap_errors_total", 1, listener="faulty")
                self.assertGreater(g.metric("grelay_tap_dropped_bytes_total", listener="faulty"),
                                   0)
                # The error counter goes up just before the line is logged.
                self.assertTrue(h.wait_for(
                    lambda: re.search(r"(?i)tap.*(no space|ENOSPC)", g.log()), 10),
                    "the full disk was not logged\n" + g.log_tail())
                bg.assert_healthy(self, minimum=3)
                st = os.statvfs(fs.path)
                self.assertLess(st.f_bfree * st.f_frsize, 64 * h.KiB, "the tmpfs never filled")
            # What the tap recorded before the disk filled still exports (exit 1: the files
            # are unfinished, which is reported, not fatal).
            pcap = os.path.join(h.tempfile.mkdtemp(prefix="grelay-faults-"), "tap.pcap")
            self.addCleanup(h.shutil.rmtree, os.path.dirname(pcap), True)
            r = h.run_grelay(["tap", "export", "--pcap", pcap, tap_dir], timeout=120)
            self.assertFalse(re.search(r"DEADLYSIGNAL|Sanitizer", r.stderr),
                             f"tap export crashed: {r.stderr[-3000:]}")
            self.assertIn(r.returncode, (0, 1), f"tap export: {r.stdout}{r.stderr}")
            self.assertRegex(r.stdout, r"exported [1-9]\d* sessions", r.stdout + r.stderr)

    # -- file descriptors

    def test_fd_exhaustion_neither_crashes_nor_spins_and_recovers(self):
        if h.SANITIZED:
            # UBSan's vptr check reads a vtable only after probing it with a pipe (two fds,
            # sanitizer_common's IsAccessibleMemoryRange); with every fd in use the probe
            # fails and UBSan reports a false "invalid vptr" and aborts grelay.
            self.skipTest("UBSan's vptr check needs free fds: a false report when they run out")
        limit = 64

        def low_nofile():
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        with h.EchoServer() as echo:
            cfg = healthy_config(echo, workers=1)
            cfg.upstream("faulty", [echo.address])
            port = cfg.listener("faulty", "faulty")
            with h.Grelay(cfg, preexec_fn=low_nofile) as g:
                self.assertEqual(g.metric("process_max_fds"), limit)
                baseline = h.open_fd_count(g.pid)
                clients = []
                served = 0
                # Two fds per session: far more sessions than fds.
                for i in range(limit):
                    try:
                        s = h.connect(port, timeout=2)
                    except OSError:
                        continue
                    clients.append(s)
                    if ping(s, b"session %d" % i, timeout=0.3):
                        served += 1
                self.assertTrue(h.wait_for(lambda: h.open_fd_count(g.pid) >= limit - 1, 5),
                                f"fds never ran out: {h.open_fd_count(g.pid)} of {limit} "
                                f"(baseline {baseline})")
                self.assertGreater(served, 0, "no session was served at all")
                self.assertLess(served, len(clients), "every session was served: no exhaustion")
                # Out of fds: neither dead nor spinning on the failing accept.
                cpu0, t0 = h.process_cpu_seconds(g.pid), time.monotonic()
                time.sleep(3)
                cpu = (h.process_cpu_seconds(g.pid) - cpu0) / (time.monotonic() - t0)
                self.assertTrue(g.alive(), "grelay died out of fds\n" + g.log_tail())
                self.assertLess(cpu, 0.25, f"grelay uses {cpu:.0%} CPU while out of fds: spins")
                # The sessions it did open still work, byte for byte.
                for s in clients[:served]:
                    self.assertTrue(ping(s, b"still there", timeout=5),
                                    "an open session broke while fds were exhausted")
                for s in clients:
                    s.close()
                time.sleep(0.5)
                self.assertTrue(g.alive(), "grelay died when the sessions closed\n" + g.log_tail())
                # Serves again once sessions close (the backlog drains; its clients are gone).
                ok = h.wait_for(lambda: h.stream_session(port, h.Stream(9, 64 * h.KiB),
                                                         timeout=5).ok, 15, interval=0.2)
                self.assertTrue(ok, "grelay did not serve again after the sessions closed")
                r = h.stream_session(g.port("healthy"), h.Stream(10, 1 * h.MiB), timeout=10)
                self.assertTrue(r.ok, str(r))
                log = g.log()
                accept_errors = re.findall(r"accept failed: .*", log)
                self.assertGreaterEqual(len(accept_errors), 1, "no accept error was logged")
                self.assertLessEqual(len(accept_errors), 2,
                                     "accept errors are not rate-limited:\n" +
                                     "\n".join(accept_errors[:10]))
                # A metric shows it: connections that could not get an upstream fd, or the
                # accepts that failed.
                counted = (g.metric("grelay_upstream_connect_errors_total", listener="faulty")
                           + g.metric("grelay_accept_errors_total", listener="faulty"))
                h.log(f"fd exhaustion: {served} of {len(clients)} sessions served, "
                      f"accept errors logged {len(accept_errors)}: {accept_errors[:2]}, "
                      f"counted {counted}")
                self.assertGreater(counted, 0, "no metric counts the fd exhaustion "
                                               "(accept or upstream socket failures)")

    # -- limits

    def test_max_connections_reached_rejects_and_counts(self):
        with h.EchoServer() as echo, h.EchoServer() as limited:
            cfg = healthy_config(echo)
            cfg.upstream("faulty", [limited.address])
            port = cfg.listener("faulty", "faulty", max_connections=5)
            with h.Grelay(cfg) as g:
                bg = self.healthy(g)
                held = []
                for i in range(5):
                    s = h.connect(port)
                    self.assertTrue(ping(s), f"session {i} under the limit")
                    held.append(s)
                upstream_before = len(limited.conns)
                for i in range(10):
                    outcome, data, took = h.try_request(port, b"over the limit", timeout=5)
                    self.assertIn(outcome, ("eof", "reset"), f"connection {i} over the limit")
                    self.assertEqual(data, b"")
                    self.assertLess(took, 2.0, f"rejected only after {took:.2f}s")
                self.wait_metric(g, "grelay_connections_rejected_total", 10, listener="faulty")
                self.assertEqual(len(limited.conns), upstream_before,
                                 "a rejected connection reached the upstream")
                for s in held:
                    self.assertTrue(ping(s, b"still"), "a held session broke")
                    s.close()
                ok = h.wait_for(lambda: h.stream_session(port, h.Stream(3, 64 * h.KiB),
                                                         timeout=5).ok, 5, 0.1)
                self.assertTrue(ok, "no session after the held ones closed")
                bg.assert_healthy(self, minimum=3)
                self.assertEqual(g.metric("grelay_connections_rejected_total",
                                          listener="healthy"), 0)

    # -- slowloris

    def test_slowloris_tls_clients_are_closed_at_handshake_timeout(self):
        reason = h.Certs.available()
        if reason:
            self.skipTest(reason)
        certs = h.Certs()
        self.addCleanup(certs.cleanup)
        n = 10
        hello = h.tls_client_hello()
        with h.EchoServer() as echo, h.EchoServer() as behind_tls:
            cfg = healthy_config(echo)
            cfg.upstream("faulty", [behind_tls.address])
            port = cfg.listener("faulty", "faulty", tls={
                "cert": certs.server[0], "key": certs.server[1], "handshake_timeout": "1s"})
            with h.Grelay(cfg) as g:
                bg = self.healthy(g)

                def trickler(i):
                    s = h.connect(port)
                    t0 = time.monotonic()
                    sent = 0
                    try:
                        for b in hello:
                            s.sendall(bytes([b]))
                            sent += 1
                            s.settimeout(0.3)
                            try:
                                if s.recv(4096) == b"":
                                    return "eof", sent, time.monotonic() - t0
                            except socket.timeout:
                                continue
                            return "data", sent, time.monotonic() - t0
                    except ConnectionResetError:
                        return "reset", sent, time.monotonic() - t0
                    except OSError as e:
                        return repr(e), sent, time.monotonic() - t0
                    finally:
                        s.close()
                    return "handshake sent", sent, time.monotonic() - t0

                good = []
                t = threading.Thread(target=lambda: good.append(h.tls_stream_session(
                    port, h.Stream(77, 256 * h.KiB), context=h.tls_client_context(certs.ca),
                    timeout=10)))
                t.start()
                for end, sent, took in h.run_concurrently(trickler, [(i,) for i in range(n)]):
                    self.assertIn(end, ("eof", "reset"), f"after {sent} bytes of ClientHello")
                    self.assertGreaterEqual(took, 0.9, f"closed after {took:.2f}s")
                    self.assertLessEqual(took, 2.5, f"closed after {took:.2f}s "
                                                    "(handshake_timeout 1s)")
                    self.assertLess(sent, len(hello), "the whole ClientHello got through")
                t.join(30)
                self.assertTrue(good and good[0].ok,
                                f"a real TLS client next to the slowloris ones: {good}")
                self.wait_metric(g, "grelay_tls_handshake_failures_total", n,
                                 listener="faulty", reason="timeout")
                self.assertEqual(len(behind_tls.conns), 1,
                                 "a slowloris client reached the upstream")
                bg.assert_healthy(self, minimum=3)

    def test_slowloris_plaintext_clients_are_closed_at_idle_timeout(self):
        n = 10
        with h.EchoServer() as echo:
            cfg = healthy_config(echo)
            cfg.upstream("faulty", [echo.address])
            port = cfg.listener("faulty", "faulty", idle_timeout="1s")
            with h.Grelay(cfg) as g:
                bg = self.healthy(g)

                def trickler(i):
                    # One byte every 2 s: the session is idle for 1 s after each byte.
                    s = h.connect(port)
                    sent = 0
                    try:
                        for k in range(5):
                            s.sendall(bytes([65 + k]))
                            sent += 1
                            t_last = time.monotonic()
                            s.settimeout(2.0)
                            try:
                                d = s.recv(16)
                                if d == bytes([65 + k]):  # the echo
                                    d = s.recv(16)
                            except socket.timeout:
                                continue
                            if d == b"":
                                return "eof", sent, time.monotonic() - t_last
                            return f"data {d!r}", sent, time.monotonic() - t_last
                    except ConnectionResetError:
                        return "reset", sent, time.monotonic() - t_last
                    except OSError as e:
                        return repr(e), sent, 0.0
                    finally:
                        s.close()
                    return "never closed", sent, 0.0

                for end, sent, idle in h.run_concurrently(trickler, [(i,) for i in range(n)]):
                    self.assertIn(end, ("eof", "reset"), f"a trickling client ({sent} bytes)")
                    self.assertEqual(sent, 1, "closed only after more trickled bytes")
                    self.assertGreaterEqual(idle, 0.9, f"closed after {idle:.2f}s idle")
                    self.assertLessEqual(idle, 1.9, f"closed after {idle:.2f}s idle "
                                                    "(idle_timeout 1s)")
                self.wait_metric(g, "grelay_idle_timeouts_total", n, listener="faulty")
                bg.assert_healthy(self, minimum=3)


if __name__ == "__main__":
    h.main()
