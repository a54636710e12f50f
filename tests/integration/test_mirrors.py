#!/usr/bin/env python3
"""Mirrors (issue 3 item 4).

- Every mirror receives exactly the client bytes of every sampled session, byte for
  byte, matched per session; sample_percent = 50 picks about half the sessions and the
  same ones on every mirror with 50%.
- A mirror that accepts and never reads is cut past max_lag and does not slow the
  primary (no more than 1.5x the time of the same run without it).
- A stalled mirror whose max_lag exceeds the buffer pool is cut by buffer pressure; a
  mirror that keeps up is not.
- Small writes to a mirror that reads late are packed, not cut before max_lag.
- An unreachable mirror costs the primary nothing, and while it is marked down the
  sessions it would have taken splice.
- direction = "both": the mirror gets the request bytes, then the response bytes.
- A mirror to an upstream pool spreads the sessions' copies over its servers by its
  balance, follows its health and max_conns.
"""

import random
import re
import signal
import threading
import time

import harness as h


def seed_of(data) -> int:
    """A Stream starts with its seed (little-endian u64)."""
    return int.from_bytes(bytes(data[:8]), "little")


class MirrorTest(h.GrelayTest):
    def _assert_mirror_exact(self, name, sink, streams: dict, expected_seeds=None):
        """`sink` got exactly one connection per expected session, each carrying exactly
        that session's bytes and ending with EOF. Returns the set of seeds it got."""
        recs = sink.records()
        seeds = []
        for rec in recs:
            self.assertEqual(rec.end, "eof", f"mirror {name}: connection {rec.index} ended "
                                             f"with {rec.end} after {rec.received} bytes")
            self.assertGreater(rec.received, 0, f"mirror {name}: an empty connection")
            seed = seed_of(rec.data)
            self.assertIn(seed, streams, f"mirror {name}: bytes of no session")
            want = streams[seed]
            self.assertEqual(rec.received, len(want),
                             f"mirror {name}: session {seed} length")
            c = h.Checker(want)
            c.feed(memoryview(rec.data))
            self.assertTrue(c.complete, f"mirror {name}: session {seed}: {c.describe()}")
            seeds.append(seed)
        self.assertEqual(len(seeds), len(set(seeds)), f"mirror {name}: a session twice")
        if expected_seeds is not None:
            self.assertEqual(set(seeds), set(expected_seeds),
                             f"mirror {name}: sessions missing or extra")
        return set(seeds)

    def test_three_mirrors_get_every_session_byte_for_byte(self):
        n = 40
        rng = random.Random(11)
        streams = {s: h.Stream(s, rng.randint(h.scaled(256 * h.KiB), h.scaled(2 * h.MiB)))
                   for s in range(5000, 5000 + n)}
        with h.EchoServer() as echo, h.SinkServer() as m1, h.SinkServer() as m2, \
                h.SinkServer() as m3:
            mirrors = {"m1": m1, "m2": m2, "m3": m3}
            # A pool that holds every byte in flight: 40 concurrent sessions and three Python
            # readers that can fall far behind under load must not hit the buffer-pressure
            # cut (tested on its own below); this test is about byte-exact mirroring.
            cfg = h.Config(buffer_pool="64MiB")
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app", mirrors=[
                {"name": k, "address": v.address} for k, v in mirrors.items()])
            with h.Grelay(cfg):
                results = h.run_concurrently(h.stream_session,
                                             [(port, s) for s in streams.values()])
                bad = [r for r in results if not r.ok]
                self.assertEqual(bad, [], "\n".join(map(str, bad)))
                for name, sink in mirrors.items():
                    self.assertTrue(sink.wait_connections(n, timeout=30),
                                    f"mirror {name} got {len(sink.conns)} of {n} sessions")
                    self._assert_mirror_exact(name, sink, streams, streams.keys())

    def test_half_sampling_picks_the_same_sessions_on_every_mirror(self):
        n = 200
        streams = {s: h.Stream(s, 16 * h.KiB + s % 7 * 1000) for s in range(7000, 7000 + n)}
        with h.EchoServer() as echo, h.SinkServer() as m1, h.SinkServer() as m2, \
                h.SinkServer() as m3, h.SinkServer() as full:
            halves = {"h1": m1, "h2": m2, "h3": m3}
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app", mirrors=[
                {"name": k, "address": v.address, "sample_percent": 50}
                for k, v in halves.items()] + [{"name": "all", "address": full.address}])
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                results = h.run_concurrently(h.stream_session,
                                             [(port, s) for s in streams.values()])
                bad = [r for r in results if not r.ok]
                self.assertEqual(bad, [], "\n".join(map(str, bad)))
                self.assertTrue(full.wait_connections(n, timeout=30))
                self._assert_mirror_exact("all", full, streams, streams.keys())
                picked = []
                for name, sink in halves.items():
                    sink.settle()
                    picked.append(self._assert_mirror_exact(name, sink, streams))
                counts = [len(p) for p in picked]
                h.log(f"sample_percent 50 picked {counts} of {n} sessions")
                for c in counts:
                    self.assertTrue(70 <= c <= 130, f"50% of {n} sessions picked {c}")
                self.assertEqual(picked[0], picked[1], "mirrors with 50% differ in sessions")
                self.assertEqual(picked[0], picked[2], "mirrors with 50% differ in sessions")
                for name in halves:
                    self.assertEqual(g.metric("grelay_mirror_sessions_total", mirror=name),
                                     counts[0])

    def _timed_run(self, port, sessions, size, seed0):
        t0 = time.monotonic()
        results = h.run_concurrently(
            h.stream_session, [(port, h.Stream(seed0 + i, size)) for i in range(sessions)],
            kwargs_list=[{"timeout": 60}] * sessions)
        took = time.monotonic() - t0
        bad = [r for r in results if not r.ok]
        self.assertEqual(bad, [], "\n".join(map(str, bad)))
        self.assertLess(max(r.elapsed for r in results), 30, "a session stalled")
        return took

    def test_stalled_mirror_is_cut_and_does_not_slow_the_primary(self):
        sessions = h.scaled(16, 4)
        size = 8 * h.MiB  # well past max_lag plus what the kernel buffers toward the mirror
        with h.EchoServer() as echo, h.StallServer() as stall:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            plain = cfg.listener("plain", "app")
            stalled = cfg.listener("stalled", "app", mirrors=[
                {"name": "stall", "address": stall.address, "max_lag": "1MiB"}])
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                times = {"plain": 0.0, "stalled": 0.0}
                for rnd in range(2):  # interleaved, to even out noise
                    times["plain"] += self._timed_run(plain, sessions, size, 100 * rnd)
                    times["stalled"] += self._timed_run(stalled, sessions, size, 100 * rnd + 50)
                h.log(f"{sessions} sessions x {size / h.MiB:.0f} MiB, two rounds: "
                      f"without the mirror {times['plain']:.2f}s, with the stalled mirror "
                      f"{times['stalled']:.2f}s")
                self.assertLessEqual(times["stalled"], 1.5 * times["plain"],
                                     "the stalled mirror slowed the primary down")
                cuts = g.metric("grelay_mirror_cuts_total", listener="stalled", mirror="stall")
                self.assertEqual(cuts, 2 * sessions, "every session should cut the mirror")
                self.assertGreater(g.metric("grelay_mirror_dropped_bytes_total",
                                            listener="stalled", mirror="stall"), 0)
                self.assertEqual(len(stall.conns), 2 * sessions)
                self.assertIn("max_lag", g.log())

    def test_buffer_pressure_cuts_the_stalled_mirror_not_the_healthy_one(self):
        # max_lag larger than the whole buffer pool: what stops the stalled mirror from
        # holding every receive buffer is the buffer-pressure cut. It must pick the mirror
        # that holds buffers alone, leave the one that keeps up, and never stall the primary.
        data = h.Stream(5300, h.scaled(32 * h.MiB, 20 * h.MiB))
        with h.EchoServer() as echo, h.StallServer() as stall, h.SinkServer() as live:
            cfg = h.Config(workers=1, buffer_pool="8MiB")
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app", mirrors=[
                {"name": "stall", "address": stall.address, "max_lag": "256MiB"},
                {"name": "live", "address": live.address}])
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                # The client is paced (~25 MB/s) so that the live mirror, a Python reader
                # sharing the GIL with the client and the upstream, keeps up with the primary.
                r = h.stream_session(port, data, send_pause=0.01, timeout=120)
                self.assertTrue(r.ok, f"the primary suffered from the stalled mirror: {r}")
                self.assertEqual(g.metric("grelay_mirror_cuts_total", mirror="stall"), 1)
                self.assertEqual(g.metric("grelay_mirror_cuts_total", mirror="live"), 0)
                self.assertTrue(live.wait_connections(1, timeout=30))
                self._assert_mirror_exact("live", live, {5300: data}, [5300])
                if h.RELAY_PATH != "group":  # there a mirror's budget is its socket buffer
                    self.assertIn("buffer_pool exhausted", g.log())

    def test_small_writes_to_a_late_mirror_are_not_cut_before_max_lag(self):
        # 768 writes of 4 KiB, a mirror that reads nothing until the client is done, and a
        # pool of 32 receive buffers. Once the kernel's buffers toward the mirror are full,
        # small chunks pinning a 64 KiB receive buffer each would use up the pool after
        # 128 KiB and get the mirror cut; max_lag (8 MiB) is meant to be the budget.
        if h.RELAY_PATH == "group":
            self.skipTest("on the group path a mirror's lag budget is its socket buffer")
        release = threading.Event()

        class LateSink(h.SinkServer):
            def handle(self, c, rec):
                release.wait(60)
                super().handle(c, rec)

        data = h.Stream(5400, 768 * 4 * h.KiB)
        with h.EchoServer() as echo, LateSink(rcvbuf=4096) as late:
            cfg = h.Config(workers=1, buffer_pool="2MiB")
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app", mirrors=[{"name": "late", "address": late.address}])
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                r = h.stream_session(port, data, chunk=4 * h.KiB, send_pause=0.001, timeout=60)
                self.assertTrue(r.ok, str(r))
                release.set()
                self.assertTrue(late.wait_connections(1, timeout=30))
                self._assert_mirror_exact("late", late, {5400: data}, [5400])
                self.assertEqual(g.metric("grelay_mirror_cuts_total", mirror="late"), 0)

    def test_unreachable_mirror_costs_the_primary_nothing(self):
        with h.EchoServer() as echo, h.RefusingPort() as dead, h.SinkServer() as live:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app", mirrors=[
                {"name": "dead", "address": dead.address},
                {"name": "live", "address": live.address}])
            cfg.with_admin()
            streams = {s: h.Stream(s, h.scaled(1 * h.MiB)) for s in range(20)}
            with h.Grelay(cfg) as g:
                results = h.run_concurrently(h.stream_session,
                                             [(port, s) for s in streams.values()])
                bad = [r for r in results if not r.ok]
                self.assertEqual(bad, [], "\n".join(map(str, bad)))
                self.assertTrue(live.wait_connections(len(streams), timeout=30))
                self._assert_mirror_exact("live", live, streams, streams.keys())
                # Each sampled session either tried the dead mirror (until the first
                # refusal marked it down) or skipped it.
                errors = g.metric("grelay_mirror_connect_errors_total", mirror="dead")
                skipped = g.metric("grelay_mirror_skipped_sessions_total", mirror="dead")
                self.assertGreaterEqual(errors, 1)
                self.assertEqual(errors + skipped, len(streams))
                self.assertEqual(g.metric("grelay_mirror_marked_down_total", mirror="dead"), 1)
                self.assertEqual(g.metric("grelay_mirror_skipped_sessions_total", mirror="live"),
                                 0)

    def test_sessions_splice_while_their_only_mirror_is_marked_down(self):
        # A mirror the session skips (marked down) or cut takes no byte: the directions it
        # would have taken splice like unmirrored ones, and what it misses counts as dropped.
        with h.EchoServer() as echo, h.RefusingPort() as dead:
            cfg = h.Config(workers=1)
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app", mirrors=[
                {"name": "dead", "address": dead.address, "direction": "both",
                 "fail_timeout": "60s"}])
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                first = h.Stream(1, 64 * h.KiB)
                r = h.stream_session(port, first)
                self.assertTrue(r.ok, str(r))
                self.assertTrue(h.wait_for(
                    lambda: g.metric("grelay_mirror_marked_down_total", mirror="dead") == 1, 5))
                streams = [h.Stream(s, h.scaled(4 * h.MiB, 2 * h.MiB)) for s in range(2, 6)]
                for data in streams:
                    r = h.stream_session(port, data)
                    self.assertTrue(r.ok, str(r))
                self.assertEqual(g.metric("grelay_mirror_skipped_sessions_total", mirror="dead"),
                                 len(streams))
                total = 2 * (len(first) + sum(len(d) for d in streams))  # both ways
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_mirror_dropped_bytes_total", mirror="dead") == total, 5),
                    g.metric("grelay_mirror_dropped_bytes_total", mirror="dead"))
                if g.metric("grelay_relay_path_info", path="mainline") == 1 and \
                        h.SPLICE != "false":
                    self.assertGreater(
                        g.metric("grelay_chunks_total", listener="web", path="splice"), 0)

    def test_a_dead_mirror_is_skipped_until_fail_timeout_even_across_a_reload(self):
        with h.EchoServer() as echo, h.Blackhole() as hole, h.SinkServer() as live:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app", connect_timeout="300ms", mirrors=[
                {"name": "hole", "address": hole.address, "fail_timeout": "3s"},
                {"name": "live", "address": live.address}])
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                def count(name):
                    return g.metric(name, mirror="hole")

                r = h.stream_session(port, h.Stream(1, 64 * h.KiB))
                self.assertTrue(r.ok, str(r))
                self.assertTrue(h.wait_for(
                    lambda: count("grelay_mirror_marked_down_total") == 1, 5))
                # The counter goes up just before the line is logged.
                self.assertTrue(h.wait_for(lambda: re.search(
                    r"listener web: mirror hole \(127\.0\.0\.1:\d+\) "
                    r"marked down for 3000 ms after 1 failed connect", g.log()), 5), g.log())
                start = time.monotonic()
                for i in range(2, 5):
                    r = h.stream_session(port, h.Stream(i, 64 * h.KiB))
                    self.assertTrue(r.ok, str(r))
                before = len(re.findall(r"SIGHUP: reloaded", g.log()))
                g.send_signal(signal.SIGHUP)
                self.assertTrue(h.wait_for(
                    lambda: len(re.findall(r"SIGHUP: reloaded", g.log())) > before, 10))
                for i in range(5, 7):
                    r = h.stream_session(port, h.Stream(i, 64 * h.KiB))
                    self.assertTrue(r.ok, str(r))
                if time.monotonic() - start < 2.5:  # under load the period may have ended
                    self.assertEqual(count("grelay_mirror_connect_errors_total"), 1)
                    self.assertEqual(count("grelay_mirror_skipped_sessions_total"), 5)
                self.assertTrue(live.wait_connections(6, timeout=10))
                # After fail_timeout a session tries it again (and times out again).
                time.sleep(max(0.0, 3.2 - (time.monotonic() - start)))
                r = h.stream_session(port, h.Stream(9, 64 * h.KiB))
                self.assertTrue(r.ok, str(r))
                self.assertTrue(h.wait_for(
                    lambda: count("grelay_mirror_connect_errors_total") >= 2, 5))

    def test_a_mirror_to_a_pool_spreads_sessions_and_follows_its_health(self):
        """`upstream` instead of `address`: each session's copy goes to one server of the
        pool, byte for byte, by the pool's balance; a dead server is marked
        down by the pool and the copies go to the others; every server at max_conns means
        the session is skipped; the pool's per-server counts include the copies."""
        with h.EchoServer() as echo, h.SinkServer() as a, h.SinkServer() as b, \
                h.RefusingPort() as dead:
            cfg = h.Config(workers=1)
            cfg.with_admin()
            cfg.upstream("app", [echo.address])
            cfg.upstream("sinks", [{"address": a.address, "name": "a"},
                                   {"address": b.address, "name": "b", "weight": 2},
                                   {"address": dead.address, "name": "dead"}],
                         fail_timeout="1h")
            port = cfg.listener("web", "app", mirrors=[
                {"name": "analytics", "upstream": "sinks", "proxy_protocol": "v1"}])
            with h.Grelay(cfg) as g:
                streams = {s: h.Stream(s, h.scaled(96 * h.KiB) + s) for s in range(7000, 7012)}
                for s in streams.values():  # one at a time: the rotation's order is exact
                    r = h.stream_session(port, s)
                    self.assertTrue(r.ok, str(r))
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_upstream_server_up", upstream="sinks", server="dead") == 0, 5))
                self.assertIn("listener web: mirror analytics: upstream sinks: server "
                              f"{dead.address} marked down", g.log())
                got = {}
                for name, sink in (("a", a), ("b", b)):
                    for rec in sink.records():
                        self.assertEqual(rec.end, "eof")
                        header, _, data = bytes(rec.data).partition(b"\r\n")
                        self.assertTrue(header.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 "))
                        seed = seed_of(data)
                        self.assertEqual(data, streams[seed].bytes(), f"session {seed} on {name}")
                        got.setdefault(name, []).append(seed)
                # 12 sessions: the dead server's first turn lost its copy (its later turns,
                # marked down, fall to the next server, as for sessions); the other 11
                # went to a and b.
                self.assertEqual(len(got["a"]) + len(got["b"]), 11, got)
                self.assertGreater(len(got["a"]), 0, got)
                self.assertGreater(len(got["b"]), 0, got)
                self.assertEqual(g.metric("grelay_mirror_connect_errors_total",
                                          mirror="analytics"), 1)
                self.assertEqual(g.metric("grelay_mirror_marked_down_total",
                                          mirror="analytics"), 1)
                self.assertEqual(g.metric("grelay_upstream_server_sessions_total",
                                          upstream="sinks", server="b"), len(got["b"]))
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_upstream_server_active_connections", upstream="sinks",
                    server="a") == 0, 5))

    def test_a_mirror_to_a_full_pool_skips_the_session(self):
        with h.EchoServer() as echo, h.SinkServer() as sink:
            cfg = h.Config(workers=1)
            cfg.with_admin()
            cfg.upstream("app", [echo.address])
            cfg.upstream("sinks", [{"address": sink.address, "max_conns": 1}])
            port = cfg.listener("web", "app", mirrors=[{"name": "m", "upstream": "sinks"}])
            with h.Grelay(cfg) as g:
                held = h.connect(port)
                held.sendall(b"first")
                self.assertEqual(held.recv(5), b"first")
                self.assertTrue(sink.wait_connections(1, ended=False))
                r = h.stream_session(port, b"second")  # the sink's one slot is taken
                self.assertTrue(r.ok, str(r))
                self.assertEqual(g.metric("grelay_mirror_skipped_sessions_total", mirror="m"), 1)
                held.close()
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_upstream_server_active_connections", upstream="sinks",
                    server="0") == 0, 5))
                r = h.stream_session(port, b"third")  # free again
                self.assertTrue(r.ok, str(r))
                recs = sink.records()
                self.assertEqual([bytes(rec.data) for rec in recs], [b"first", b"third"])

    def test_direction_both_mirrors_request_then_response(self):
        sessions = 10
        req_size, resp_size = 300 * h.KiB, h.scaled(2 * h.MiB)
        requests = {s: h.Stream(s, req_size) for s in range(900, 900 + sessions)}

        def reply(rec):
            return h.Stream(seed_of(rec.data) + 10000, resp_size)

        with h.SinkServer(reply=reply) as answering, h.SinkServer() as silent, \
                h.EchoServer() as echo, h.SinkServer() as m_answer, \
                h.SinkServer() as m_silent, h.SinkServer() as m_echo:
            cfg = h.Config()
            cfg.upstream("answering", [answering.address])
            cfg.upstream("silent", [silent.address])
            cfg.upstream("echo", [echo.address])
            p_answer = cfg.listener("answer", "answering", mirrors=[
                {"name": "both", "address": m_answer.address, "direction": "both"}])
            p_silent = cfg.listener("silent", "silent", mirrors=[
                {"name": "both", "address": m_silent.address, "direction": "both"}])
            p_echo = cfg.listener("echo", "echo", mirrors=[
                {"name": "both", "address": m_echo.address, "direction": "both"}])
            with h.Grelay(cfg):
                # The upstream answers only after the request's EOF: the mirror sees the
                # whole request, then the whole response.
                results = h.run_concurrently(
                    h.stream_session, [(p_answer, s) for s in requests.values()],
                    kwargs_list=[{"expect": h.Stream(s + 10000, resp_size)} for s in requests])
                bad = [r for r in results if not r.ok]
                self.assertEqual(bad, [], "\n".join(map(str, bad)))
                self.assertTrue(m_answer.wait_connections(sessions, timeout=30))
                for rec in m_answer.records():
                    seed = seed_of(rec.data)
                    want = requests[seed].bytes() + h.Stream(seed + 10000, resp_size).bytes()
                    self.assertEqual(rec.received, len(want), "request + response bytes")
                    self.assertTrue(bytes(rec.data) == want,
                                    f"session {seed}: the mirror's bytes are not the request "
                                    "followed by the response")
                # An upstream that never answers: exactly the request, in order.
                results = h.run_concurrently(h.stream_session,
                                             [(p_silent, s) for s in requests.values()],
                                             kwargs_list=[{"expect": b""}] * sessions)
                bad = [r for r in results if not r.ok]
                self.assertEqual(bad, [], "\n".join(map(str, bad)))
                self.assertTrue(m_silent.wait_connections(sessions, timeout=30))
                self._assert_mirror_exact("both/silent", m_silent, requests, requests.keys())
                # An echo upstream: both directions interleave; the total is request + response.
                results = h.run_concurrently(h.stream_session,
                                             [(p_echo, s) for s in requests.values()])
                bad = [r for r in results if not r.ok]
                self.assertEqual(bad, [], "\n".join(map(str, bad)))
                self.assertTrue(m_echo.wait_connections(sessions, timeout=30))
                recs = m_echo.records()
                self.assertEqual(len(recs), sessions)
                for rec in recs:
                    self.assertEqual(rec.end, "eof")
                    self.assertEqual(rec.received, 2 * req_size)


if __name__ == "__main__":
    h.main()
