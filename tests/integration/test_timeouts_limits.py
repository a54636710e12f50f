#!/usr/bin/env python3
"""Timeouts and connection limits.

- idle_timeout: an idle session is closed about idle_timeout after its last byte; a
  session that keeps talking is not.
- connect_timeout: against an upstream that never answers the SYN (a full listen
  backlog), the client is reset within connect_timeout + slack; a pool falls over to
  the next server after connect_timeout.
- tcp_keepalive: grelay's sockets of a session (client, upstream, mirror) run the kernel's
  keepalive timer with the configured idle time (seen with `ss -o`); without it, none.
- max_connections (server-wide and per listener): connections past the limit are
  closed at once without reaching the upstream, counted, and grelay serves again as
  soon as a session ends.
- allow: a client outside the listener's networks is reset before anything connects,
  and counted; one inside is relayed.
- max_connection_rate: connections past the rate wait in the accept queue and are served
  in turn (none reset), across a reload and through a drain.
- max_connection_rate_per_client: a client over its rate is reset, others are served, a
  reload gives nobody a fresh burst.
- max_session_duration: a busy session is reset at the limit, a short one is untouched.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import harness as h


def open_session(port: int) -> socket.socket:
    """A session through grelay to an echo upstream, proven live by one round trip."""
    s = h.connect(port)
    s.sendall(b"ping")
    got = b""
    s.settimeout(5)
    while len(got) < 4:
        d = s.recv(4 - len(got))
        if not d:
            raise AssertionError("session closed before the echo came back")
        got += d
    assert got == b"ping", got
    return s


def end_session(s: socket.socket) -> str:
    s.shutdown(socket.SHUT_WR)
    end, _ = h.read_outcome(s, 5)
    s.close()
    return end


class TimeoutTest(h.GrelayTest):
    def test_idle_session_is_closed_and_active_one_is_not(self):
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app", idle_timeout="1s")
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                active_result = {}

                def active():
                    # One byte every 250 ms for 3 s: never idle for a whole second.
                    s = open_session(port)
                    try:
                        for i in range(12):
                            time.sleep(0.25)
                            s.sendall(bytes([i]))
                            if s.recv(1) != bytes([i]):
                                active_result["error"] = f"echo {i} missing"
                                return
                        active_result["end"] = end_session(s)
                    except OSError as e:
                        active_result["error"] = repr(e)

                t = threading.Thread(target=active)
                t.start()
                idle = open_session(port)
                t_last = time.monotonic()
                end, data = h.read_outcome(idle, timeout=6)
                idle_for = time.monotonic() - t_last
                idle.close()
                t.join()
                self.assertIn(end, ("eof", "reset"), "the idle session was not closed")
                self.assertEqual(data, b"")
                self.assertGreaterEqual(idle_for, 0.9, "closed before idle_timeout")
                self.assertLessEqual(idle_for, 3.0, "closed long after idle_timeout")
                self.assertEqual(active_result, {"end": "eof"},
                                 "the active session should live on and end cleanly")
                self.assertGreaterEqual(g.metric("grelay_idle_timeouts_total", listener="web"), 1)

    def test_max_session_duration_resets_a_busy_session(self):
        """A session is reset once open for max_session_duration, however busy; what came
        before is relayed byte for byte, the access log says why, and a short session on
        the same listener is untouched."""
        tmp = tempfile.mkdtemp(prefix="grelay-duration-")
        self.addCleanup(shutil.rmtree, tmp, True)
        log_path = os.path.join(tmp, "access.log")
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app", max_session_duration="1500ms", idle_timeout="10s",
                                access_log=log_path)
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                s = open_session(port)
                opened = time.monotonic()
                echoed = bytearray()
                end = None
                try:
                    for i in range(100):  # a byte every 100 ms: never idle
                        s.sendall(bytes([i]))
                        got = s.recv(1)
                        if not got:
                            end = "eof"
                            break
                        echoed += got
                        time.sleep(0.1)
                except OSError as e:
                    end = "reset" if isinstance(e, ConnectionResetError) else repr(e)
                lived = time.monotonic() - opened
                s.close()
                self.assertEqual(end, "reset", "the session was not reset")
                self.assertEqual(bytes(echoed), bytes(range(len(echoed))))
                # (Each session's limit is jittered by up to 10% either way.)
                self.assertGreaterEqual(lived, 1.3, "reset before max_session_duration")
                self.assertLessEqual(lived, 4.0, "reset long after max_session_duration")
                # A short session goes on as ever.
                short = open_session(port)
                short.sendall(b"ping")
                self.assertEqual(short.recv(4), b"ping")
                self.assertEqual(end_session(short), "eof")
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_max_session_duration_resets_total", listener="web") == 1, 10))

                def ends():
                    try:
                        with open(log_path) as f:
                            return [json.loads(x)["end"] for x in f if x.strip()]
                    except OSError:
                        return []
                self.assertTrue(h.wait_for(lambda: sorted(ends()) == ["max_duration", "normal"],
                                           10), ends())

    def test_tcp_keepalive_runs_on_grelays_sockets(self):
        if not shutil.which("ss"):
            self.skipTest("ss (iproute2) is not installed")
        with h.EchoServer() as echo, h.SinkServer() as mirror:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            alive = cfg.listener("alive", "app", tcp_keepalive="40s",
                                 mirrors=[{"name": "m", "address": mirror.address}])
            plain = cfg.listener("plain", "app")
            with h.Grelay(cfg):
                a = open_session(alive)
                b = open_session(plain)
                try:
                    out = subprocess.run(["ss", "-tnoH", "state", "established"],
                                         capture_output=True, text=True, check=True).stdout

                    def timer(local: str, peer: str) -> str:
                        for line in out.splitlines():
                            f = line.split()
                            if len(f) >= 4 and f[2] == local and f[3] == peer:
                                m = re.search(r"timer:\((\w+),", line)
                                return m.group(1) if m else "none"
                        raise AssertionError(f"no socket {local} -> {peer}:\n{out}")

                    def me(s):
                        return "%s:%d" % s.getsockname()[:2]

                    def them(s):
                        return "%s:%d" % s.getpeername()[:2]

                    # grelay's end of each client connection.
                    self.assertEqual(timer(them(a), me(a)), "keepalive")
                    self.assertEqual(timer(them(b), me(b)), "none")
                    # grelay's connections to the upstream and the mirror: the sockets whose
                    # peer is the server and whose local port is not the client's.
                    ups = [line for line in out.splitlines()
                           if line.split()[3] in (echo.address, mirror.address)]
                    kinds = sorted(re.search(r"timer:\((\w+),", line).group(1)
                                   if "timer:" in line else "none" for line in ups)
                    self.assertEqual(kinds, ["keepalive", "keepalive", "none"], out)
                    m = re.search(r"timer:\(keepalive,(\d+)sec", out)
                    self.assertTrue(m and 30 <= int(m.group(1)) <= 40, out)
                finally:
                    self.assertEqual(end_session(a), "eof")
                    self.assertEqual(end_session(b), "eof")

    def test_connect_timeout_against_a_blackhole(self):
        with h.Blackhole() as hole, h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("hole", [hole.address])
            cfg.upstream("mixed", [hole.address, echo.address])
            cfg.upstream("live", [echo.address])
            p_hole = cfg.listener("hole", "hole", connect_timeout="500ms")
            p_mixed = cfg.listener("mixed", "mixed", connect_timeout="500ms")
            p_live = cfg.listener("live", "live", connect_timeout="500ms")
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                for _ in range(3):
                    # An idle pause first: the deadline must count from the connect,
                    # not from when the worker last woke up.
                    time.sleep(0.7)
                    end, data, took = h.try_request(p_hole, b"hello", timeout=10)
                    self.assertEqual((end, data), ("reset", b""),
                                     "a client whose upstream never answers gets a reset")
                    self.assertGreaterEqual(took, 0.45, "reset before connect_timeout")
                    self.assertLessEqual(took, 2.0, "connect_timeout (500ms) not honoured")
                self.assertGreaterEqual(
                    g.metric("grelay_upstream_connect_errors_total", listener="hole"), 3)
                # A pool moves on to its next server after connect_timeout.
                took = []
                for i in range(4):
                    time.sleep(0.7)
                    r = h.stream_session(p_mixed, h.Stream(i, 64 * h.KiB), timeout=10)
                    self.assertTrue(r.ok, str(r))
                    took.append(r.elapsed)
                self.assertTrue(any(0.45 <= t <= 2.0 for t in took),
                                f"no session waited for the blackhole's timeout: {took}")
                r = h.stream_session(p_live, h.Stream(9, 1 * h.MiB))
                self.assertTrue(r.ok, str(r))


    def test_a_pools_connect_timeout_overrides_the_listeners(self):
        """Routes to a near pool and a far one: each pool's connect_timeout, not the
        listener's (30 s), bounds a connect to its servers."""
        with h.Blackhole() as hole:
            cfg = h.Config()
            cfg.upstream("near", [hole.address], connect_timeout="500ms")
            p = cfg.listener("web", "near", connect_timeout="30s")
            with h.Grelay(cfg):
                end, data, took = h.try_request(p, b"hello", timeout=20)
                self.assertEqual((end, data), ("reset", b""))
                self.assertGreaterEqual(took, 0.45, "reset before the pool's connect_timeout")
                self.assertLessEqual(took, 5.0, "the listener's connect_timeout was used")


class LimitTest(h.GrelayTest):
    def _assert_rejected(self, port: int, what: str) -> None:
        end, data, took = h.try_request(port, b"hello", timeout=5)
        self.assertIn(end, ("reset", "eof"), f"{what}: the excess connection stayed open")
        self.assertEqual(data, b"", what)
        self.assertLess(took, 1.0, f"{what}: not closed at once")

    def _assert_serves_again(self, g, port: int, what: str, limit: int,
                             listener: str | None = None) -> socket.socket:
        # grelay frees the slot when it has closed both sockets of the session, a moment
        # after the client saw EOF: wait for the gauge, so that no connection made in
        # between is rejected (and counted) before the one that must be served.
        labels = {"listener": listener} if listener else {}
        if not h.wait_for(lambda: g.metric("grelay_connections_active", **labels) < limit, 3):
            raise AssertionError(f"{what}: a session ended but grelay still counts it open")
        return open_session(port)

    def test_clients_outside_allow_are_reset_and_counted(self):
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("echo", [echo.address])
            port = cfg.listener("web", "echo", allow=["127.0.0.2/32", "10.0.0.0/8"])
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                with socket.create_connection(("127.0.0.1", port), timeout=10,
                                              source_address=("127.0.0.2", 0)) as s:
                    s.sendall(b"allowed")
                    s.shutdown(socket.SHUT_WR)
                    self.assertEqual(h.read_outcome(s, 10), ("eof", b"allowed"))
                for _ in range(3):
                    end, data, _ = h.try_request(port, b"denied")
                    self.assertIn(end, ("reset", "eof"))
                    self.assertEqual(data, b"")
                self.assertTrue(h.wait_for(
                    lambda: g.metric("grelay_connections_denied_total", listener="web") == 3, 5))
                self.assertEqual(len(echo.conns), 1, "a denied client reaches no upstream")
                self.assertIn("listener web: client 127.0.0.1:", g.log())
                self.assertIn("is outside the listener's allow networks: reset", g.log())

    def test_max_connection_rate_paces_accepts_and_resets_nobody(self):
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("echo", [echo.address])
            port = cfg.listener("web", "echo", max_connection_rate=10)  # 100 ms apart
            cfg.with_admin()

            def burst(n, meanwhile=None):
                """n connections at once, each sending its index, then `meanwhile()` (if
                any); how long after the first was opened each was echoed (the pace holds
                from the first accept, however slowly the client opens them)."""
                conns = []
                t0 = time.monotonic()
                for i in range(n):
                    c = h.connect(port)
                    c.sendall(bytes([i]))
                    conns.append(c)
                if meanwhile is not None:
                    meanwhile()
                served = []
                for i, c in enumerate(conns):
                    c.settimeout(10)
                    self.assertEqual(c.recv(1), bytes([i]), f"connection {i} not served")
                    served.append(time.monotonic() - t0)
                    c.close()
                return served

            with h.Grelay(cfg) as g:
                self.assertEqual(g.metric("grelay_listener_max_connection_rate", listener="web"),
                                 10)
                # 12 at once, burst 1 (a tenth of a second's worth, at least 1): the 12th is
                # accepted no sooner than 1.1 s after the first, and none is reset.
                served = burst(12)
                self.assertGreaterEqual(max(served), 1.0, served)
                self.assertEqual(len(echo.conns), 12)
                self.assertEqual(g.metric("grelay_connections_total", listener="web"), 12)
                self.assertEqual(g.metric("grelay_connections_rejected_total", listener="web",
                                          limit="server"), 0)
                self.assertGreater(g.metric("grelay_connections_rate_limited_total",
                                            listener="web"), 0)
                # A reload keeps the pacing (no fresh burst): 6 more still take 0.5 s.
                g.send_signal(signal.SIGHUP)
                self.assertTrue(h.wait_for(lambda: "SIGHUP: reloaded" in g.log(), 10), g.log())
                served = burst(6)
                self.assertGreaterEqual(max(served), 0.4, served)
                self.assertEqual(len(echo.conns), 18)
                # A reload while connections wait in the accept queue: the old generation
                # stops accepting and the new one takes them at the same pace, rather than
                # the old one taking the whole queue at once as it drains (each old
                # acceptor may take one more: 14 connections, 9 or more at the pace).
                def signal_soon(sig):
                    time.sleep(0.15)  # one or two accepted; the rest wait
                    g.send_signal(sig)

                served = burst(14, lambda: signal_soon(signal.SIGHUP))
                self.assertGreaterEqual(max(served), 0.8, served)
                self.assertTrue(h.wait_for(lambda: g.log().count("SIGHUP: reloaded") == 2, 10))
                self.assertEqual(len(echo.conns), 32)
                # A drain serves the connections still waiting in the accept queue.
                burst(8, lambda: signal_soon(signal.SIGTERM))
                self.assertEqual(g.wait_exit(15), 0, g.log_tail())

    def test_max_connections_per_client(self):
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("echo", [echo.address])
            port = cfg.listener("web", "echo", max_connections_per_client=2)
            cfg.with_admin()

            def session_from(ip):
                s = socket.create_connection(("127.0.0.1", port), timeout=10,
                                             source_address=(ip, 0))
                s.sendall(b"ping")
                return s

            with h.Grelay(cfg) as g:
                held = [session_from("127.0.0.1"), session_from("127.0.0.1")]
                for s in held:
                    self.assertEqual(s.recv(4), b"ping")
                # A third from the same address (127.0.0.1, as try_request's) is reset
                # before anything connects.
                end, data, _ = h.try_request(port, b"ping", timeout=10)
                self.assertIn(end, ("reset", "eof"))
                self.assertEqual(data, b"")
                self.assertEqual(g.metric("grelay_connections_rejected_total", listener="web",
                                          limit="client"), 1)
                self.assertEqual(len(echo.conns), 2, "a limited client reaches no upstream")
                self.assertIn("already has 2 sessions open (max_connections_per_client)", g.log())
                # A reload keeps counting the sessions open on the old configuration.
                g.send_signal(signal.SIGHUP)
                self.assertTrue(h.wait_for(lambda: "SIGHUP: reloaded" in g.log(), 10), g.log())
                end, data, _ = h.try_request(port, b"ping", timeout=10)
                self.assertIn(end, ("reset", "eof"))
                self.assertEqual(data, b"")
                self.assertEqual(g.metric("grelay_connections_rejected_total", listener="web",
                                          limit="client"), 2)
                # Another client is not affected.
                other = session_from("127.0.0.2")
                other.shutdown(socket.SHUT_WR)
                self.assertEqual(h.read_outcome(other, 10), ("eof", b"ping"))
                other.close()
                # A session that ends gives its slot back.
                held.pop().close()
                self.assertTrue(h.wait_for(
                    lambda: g.metric("grelay_connections_active", listener="web") == 1, 10))
                again = session_from("127.0.0.1")
                again.shutdown(socket.SHUT_WR)
                self.assertEqual(h.read_outcome(again, 10), ("eof", b"ping"))
                again.close()
                self.assertEqual(g.metric("grelay_connections_rejected_total", listener="web",
                                          limit="client"), 2)
                for s in held:
                    s.close()

    def test_max_connection_rate_per_client(self):
        """A client address opening connections faster than the rate is reset before
        anything connects; other addresses are not; tokens come back with time and a
        reload gives no fresh burst."""
        rate = 2
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("echo", [echo.address])
            port = cfg.listener("web", "echo", max_connection_rate_per_client=rate)
            cfg.with_admin()

            def outcomes(ip, n):
                """Opens n connections from `ip` at once, each sending "ping" and closing
                its side: how many were echoed, and the seconds it took to open them."""
                start = time.monotonic()
                socks = []
                for _ in range(n):
                    try:
                        s = socket.create_connection(("127.0.0.1", port), timeout=10,
                                                     source_address=(ip, 0))
                    except ConnectionResetError:
                        continue  # reset before connect() returned (loopback is that fast)
                    try:
                        s.sendall(b"ping")
                        s.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass  # already reset
                    socks.append(s)
                opened = time.monotonic() - start
                echoed = 0
                for s in socks:
                    end, data = h.read_outcome(s, 10)
                    self.assertIn((end, data), (("eof", b"ping"), ("eof", b""), ("reset", b"")))
                    echoed += data == b"ping"
                    s.close()
                return echoed, opened

            def rejected():
                return g.metric("grelay_connections_rejected_total", listener="web",
                                limit="client_rate")

            with h.Grelay(cfg) as g:
                echoed, opened = outcomes("127.0.0.1", 10)
                # The burst, and at most what came back while the ten were opened.
                self.assertGreaterEqual(echoed, rate)
                self.assertLessEqual(echoed, rate + rate * opened + 1, f"opened in {opened:.2f}s")
                self.assertTrue(h.wait_for(lambda: rejected() == 10 - echoed, 10),
                                f"{rejected()} rejected, {echoed} echoed")
                self.assertEqual(len(echo.conns), echoed, "a limited client reaches no upstream")
                self.assertIn(f"opens connections faster than {rate} a second "
                              "(max_connection_rate_per_client): reset", g.log())
                # Another address has its own bucket.
                self.assertEqual(outcomes("127.0.0.2", rate)[0], rate)
                # Tokens come back: a second later the burst is whole again.
                time.sleep(1.1)
                self.assertEqual(outcomes("127.0.0.1", 1)[0], 1)
                # A reload keeps each client's bucket: emptied just before, it has no token
                # for a connection right after (unless 1/rate s passed meanwhile).
                emptied = time.monotonic()
                outcomes("127.0.0.1", 4)
                g.send_signal(signal.SIGHUP)
                self.assertTrue(h.wait_for(lambda: "SIGHUP: reloaded" in g.log(), 10), g.log())
                echoed, _ = outcomes("127.0.0.1", 1)
                if time.monotonic() - emptied < 0.45:
                    self.assertEqual(echoed, 0, "a reload gave the client a fresh burst")

    def test_server_wide_max_connections(self):
        with h.EchoServer() as echo:
            cfg = h.Config(max_connections=4)
            cfg.upstream("app", [echo.address])
            a = cfg.listener("a", "app")
            b = cfg.listener("b", "app")
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                held = [open_session(a), open_session(a), open_session(b), open_session(b)]
                self._assert_rejected(a, "listener a at the server-wide limit")
                self._assert_rejected(b, "listener b at the server-wide limit")
                self.assertEqual(len(echo.conns), 4, "a rejected connection reached the upstream")
                self.assertEqual(end_session(held.pop(0)), "eof")
                held.append(self._assert_serves_again(g, b, "listener b", 4))
                self._assert_rejected(a, "back at the limit")
                self.assertEqual(g.metric("grelay_connections_rejected_total"), 3)
                self.assertEqual(g.metric("grelay_connections_rejected_total", limit="server"), 3)
                # No listener sets its own limit: only the server-wide series exist.
                self.assertEqual({dict(ls)["limit"] for (n, ls) in g.metrics()
                                  if n == "grelay_connections_rejected_total"}, {"server"})
                for s in held:
                    self.assertEqual(end_session(s), "eof")

    def test_per_listener_max_connections(self):
        with h.EchoServer() as echo:
            cfg = h.Config(max_connections=100)
            cfg.upstream("app", [echo.address])
            a = cfg.listener("a", "app", max_connections=2)
            b = cfg.listener("b", "app")
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                held = [open_session(a), open_session(a)]
                self._assert_rejected(a, "listener a at its own limit")
                # The other listener is not limited by a's cap.
                held += [open_session(b) for _ in range(3)]
                self.assertEqual(end_session(held.pop(0)), "eof")
                held.append(self._assert_serves_again(g, a, "listener a", 2, listener="a"))
                self._assert_rejected(a, "listener a back at its limit")
                self.assertEqual(g.metric("grelay_connections_rejected_total", listener="a",
                                          limit="listener"), 2)
                self.assertEqual(g.metric("grelay_connections_rejected_total", listener="a",
                                          limit="server"), 0)
                self.assertEqual(g.metric("grelay_connections_rejected_total", listener="b"), 0)
                for s in held:
                    self.assertEqual(end_session(s), "eof")


if __name__ == "__main__":
    h.main()
