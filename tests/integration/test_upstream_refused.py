#!/usr/bin/env python3
"""An upstream that refuses connections: the client is reset promptly and gets no data,
grelay keeps serving, and a pool with a dead server fails over to the live one. A server
that fails to connect is marked down (max_fails, fail_timeout): sessions try it last, so
they stop waiting for a blackhole's connect_timeout. Server weights split sessions in
proportion; backup servers serve only when the others fail; with queue_timeout a session
that finds every server at max_conns waits for a slot. Active health checks
(check_interval) find a dead server before any session does and bring a revived one
back at once; slow_start eases it back in. With source_address, sessions' connects,
health checks and a mirror's connects leave from the configured local address, and one
this host does not have fails the start with the reason."""

import os
import re
import select
import shutil
import signal
import socket
import tempfile
import time

import harness as h


class UpstreamRefusedTest(h.GrelayTest):
    def hold(self, port):
        """A session on `port` that has reached its server (one byte echoed), left open."""
        c = h.connect(port)
        c.sendall(b"x")
        self.assertEqual(c.recv(1), b"x")
        return c

    def release_and_reuse(self, g, held, port, upstream):
        """Closes `held`, the only session on `upstream`'s server "0", waits until the server
        counts no connection, then checks a new session on `port` is served."""
        held.close()
        self.assertTrue(h.wait_for(lambda: g.metric(
            "grelay_upstream_server_active_connections", upstream=upstream, server="0") == 0, 5))
        r = h.stream_session(port, h.Stream(1, 64 * h.KiB))
        self.assertTrue(r.ok, str(r))

    def test_per_server_sessions_and_failed_connects_are_counted(self):
        """grelay_upstream_server_sessions_total counts each server's sessions as its echo
        server saw them, and grelay_upstream_server_connect_failures_total the refused
        connects (not health checks); both go on across a reload that keeps the servers."""
        with h.RefusingPort() as dead, h.EchoServer() as a, h.EchoServer() as b:
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [dead.address, a.address, b.address], max_fails=1)
            web = cfg.listener("web", "app")
            with h.Grelay(cfg) as g:
                for i in range(6):
                    r = h.stream_session(web, h.Stream(i, 16 * h.KiB))
                    self.assertTrue(r.ok, str(r))

                def counts(name):
                    return [g.metric(name, upstream="app", server=str(s)) for s in range(3)]

                self.assertTrue(h.wait_for(lambda: all(c.done for c in a.conns + b.conns), 10))
                self.assertEqual(counts("grelay_upstream_server_sessions_total"),
                                 [0, len(a.conns), len(b.conns)])
                self.assertEqual(sum(counts("grelay_upstream_server_sessions_total")), 6)
                # Marked down by its first refusal, the dead server is tried last after that.
                self.assertEqual(counts("grelay_upstream_server_connect_failures_total"),
                                 [1, 0, 0])
                # A reload that keeps the servers keeps their counts going.
                g.send_signal(signal.SIGHUP)
                self.assertTrue(h.wait_for(lambda: "SIGHUP: reloaded" in g.log(), 10))
                r = h.stream_session(web, h.Stream(9, 16 * h.KiB))
                self.assertTrue(r.ok, str(r))
                self.assertEqual(sum(counts("grelay_upstream_server_sessions_total")), 7)

    def test_refused_upstream_resets_client_and_grelay_keeps_serving(self):
        with h.RefusingPort() as dead, h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("dead", [dead.address])
            cfg.upstream("live", [echo.address])
            bad = cfg.listener("bad", "dead")
            good = cfg.listener("good", "live")
            with h.Grelay(cfg):
                for i in range(5):
                    end, data, took = h.try_request(bad, b"GET / HTTP/1.0\r\n\r\n")
                    self.assertEqual(end, "reset", f"attempt {i}: the client should be reset")
                    self.assertEqual(data, b"", f"attempt {i}: no data may reach the client")
                    self.assertLess(took, h.slack(1.0), f"attempt {i}: reset took {took:.2f}s")
                    r = h.stream_session(good, h.Stream(i, 256 * h.KiB))
                    self.assertTrue(r.ok, f"session after a refused one: {r}")

    def test_pool_with_a_dead_server_uses_the_live_one(self):
        with h.RefusingPort() as dead, h.EchoServer() as echo:
            for order in ([dead.address, echo.address], [echo.address, dead.address]):
                for balance in ("round_robin", "least_conn"):
                    with self.subTest(order=order, balance=balance):
                        cfg = h.Config()
                        cfg.upstream("app", order, balance=balance)
                        port = cfg.listener("web", "app")
                        before = len(echo.conns)
                        with h.Grelay(cfg):
                            # Sequential sessions walk the whole rotation ...
                            for i in range(6):
                                r = h.stream_session(port, h.Stream(i, 64 * h.KiB), index=i)
                                self.assertTrue(r.ok, f"sequential session: {r}")
                            # ... and concurrent ones too.
                            results = h.run_concurrently(
                                h.stream_session,
                                [(port, h.Stream(100 + i, 512 * h.KiB)) for i in range(20)])
                            bad = [r for r in results if not r.ok]
                            self.assertEqual(bad, [], "\n".join(map(str, bad)))
                        self.assertEqual(len(echo.conns) - before, 26)

    def test_a_server_that_fails_is_tried_last_for_fail_timeout(self):
        with h.Blackhole() as hole, h.RefusingPort() as dead, h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("mixed", [hole.address, echo.address], fail_timeout="1500ms")
            cfg.upstream("never", [dead.address, echo.address], max_fails=0)
            mixed = cfg.listener("mixed", "mixed", connect_timeout="500ms")
            never = cfg.listener("never", "never")
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                def counts(listener):
                    return (g.metric("grelay_upstream_connect_errors_total", listener=listener),
                            g.metric("grelay_upstream_marked_down_total", listener=listener))

                # The first session starts its rotation at the blackhole: it waits for
                # connect_timeout, then the live server serves it.
                r = h.stream_session(mixed, h.Stream(0, 64 * h.KiB), timeout=10)
                self.assertTrue(r.ok, str(r))
                self.assertGreaterEqual(r.elapsed, 0.45, "the first session did not wait")
                self.assertEqual(counts("mixed"), (1, 1))
                # While it is down no session tries it (half of them would start there).
                start = time.monotonic()
                for i in range(1, 7):
                    r = h.stream_session(mixed, h.Stream(i, 64 * h.KiB), timeout=10)
                    self.assertTrue(r.ok, str(r))
                if time.monotonic() - start < 1.4:  # under load the period may have ended
                    self.assertEqual(counts("mixed"), (1, 1), "a down server was tried")
                self.assertRegex(g.log(), r"upstream mixed: server 127\.0\.0\.1:\d+ marked down "
                                          r"for 1500 ms after 1 failed connect \(")
                # After fail_timeout it is tried again: one of two sessions starts there,
                # fails, and marks it down again.
                time.sleep(1.6)
                for i in range(7, 9):
                    r = h.stream_session(mixed, h.Stream(i, 64 * h.KiB), timeout=10)
                    self.assertTrue(r.ok, str(r))
                errors, marked = counts("mixed")
                self.assertGreaterEqual(errors, 2, "the server was not tried after fail_timeout")
                self.assertEqual(marked, errors, "each failure after fail_timeout marks it again")
                self.assertEqual(len(re.findall(r"upstream mixed: .* marked down", g.log())),
                                 marked)
                # max_fails = 0: never marked down; every rotation that starts at the
                # refusing server tries it.
                for i in range(6):
                    r = h.stream_session(never, h.Stream(20 + i, 16 * h.KiB), timeout=10)
                    self.assertTrue(r.ok, str(r))
                self.assertEqual(counts("never"), (3, 0))

    def test_weights_split_sessions_and_backups_wait_their_turn(self):
        with h.EchoServer() as heavy, h.EchoServer() as light, h.EchoServer() as spare:
            cfg = h.Config()
            cfg.upstream("app", [{"address": heavy.address, "weight": 3}, light.address,
                                 {"address": spare.address, "backup": True}])
            port = cfg.listener("web", "app")
            with h.Grelay(cfg):
                # The rotation is shared by every worker: whole cycles split exactly.
                for i in range(40):
                    r = h.stream_session(port, h.Stream(i, 16 * h.KiB), index=i)
                    self.assertTrue(r.ok, str(r))
                results = h.run_concurrently(
                    h.stream_session, [(port, h.Stream(100 + i, 64 * h.KiB)) for i in range(20)])
                bad = [r for r in results if not r.ok]
                self.assertEqual(bad, [], "\n".join(map(str, bad)))
            self.assertEqual((len(heavy.conns), len(light.conns), len(spare.conns)), (45, 15, 0))

    def test_source_balance_keeps_each_client_address_on_one_server(self):
        def session_from(host, port, i):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(10)
            s.bind((host, 0))
            s.connect(("127.0.0.1", port))
            payload = b"%d from %s\n" % (i, host.encode())
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(4096):
                got += chunk
            s.close()
            self.assertEqual(got, payload)

        with h.EchoServer() as a, h.EchoServer() as b:
            cfg = h.Config()
            cfg.upstream("app", [a.address, b.address], balance="source")
            port = cfg.listener("web", "app")
            with h.Grelay(cfg):
                where = {}
                for n in range(1, 21):
                    host = f"127.0.0.{n}"
                    for i in range(3):  # a new client port each time
                        before = (len(a.conns), len(b.conns))
                        session_from(host, port, i)
                        self.assertTrue(h.wait_for(
                            lambda: len(a.conns) + len(b.conns) > sum(before), 5))
                        server = "a" if len(a.conns) > before[0] else "b"
                        self.assertEqual(where.setdefault(host, server), server,
                                         f"{host} moved from {where[host]} to {server}")
            # 20 addresses hashed over 2 servers: both get some.
            self.assertEqual(set(where.values()), {"a", "b"}, where)

    def test_consistent_source_hashing_keeps_clients_when_a_server_leaves(self):
        def session_from(host, port):
            with socket.create_connection(("127.0.0.1", port), timeout=10,
                                          source_address=(host, 0)) as s:
                s.sendall(host.encode())
                s.shutdown(socket.SHUT_WR)
                self.assertEqual(h.read_outcome(s, 10), ("eof", host.encode()))

        with h.EchoServer() as a, h.EchoServer() as b, h.EchoServer() as c:
            servers = {"a": a, "b": b, "c": c}

            def where(host, port):
                before = {n: len(e.conns) for n, e in servers.items()}
                session_from(host, port)
                got = [n for n, e in servers.items() if len(e.conns) > before[n]]
                self.assertEqual(len(got), 1)
                return got[0]

            cfg = h.Config()
            pool = [{"address": e.address, "name": n} for n, e in servers.items()]
            cfg.upstream("app", pool, balance="source", hash_type="consistent")
            port = cfg.listener("web", "app")
            with h.Grelay(cfg) as g:
                hosts = [f"127.0.0.{n}" for n in range(1, 41)]
                first = {host: where(host, port) for host in hosts}
                self.assertEqual({host: where(host, port) for host in hosts}, first)
                self.assertEqual(set(first.values()), {"a", "b", "c"}, first)
                # b leaves the pool (a reload): only b's clients move.
                cfg.upstream("app", [p for p in pool if p["name"] != "b"], balance="source",
                             hash_type="consistent")
                with open(g.config_path, "w") as f:
                    f.write(cfg.render())
                g.send_signal(signal.SIGHUP)
                self.assertTrue(h.wait_for(lambda: "SIGHUP: reloaded" in g.log(), 10), g.log())
                for host in hosts:
                    now = where(host, port)
                    if first[host] != "b":
                        self.assertEqual(now, first[host], f"{host} moved")
                    else:
                        self.assertIn(now, ("a", "c"))

    def test_max_conns_caps_each_server(self):
        with h.EchoServer() as a, h.EchoServer() as b:
            cfg = h.Config()
            cfg.upstream("pair", [{"address": a.address, "max_conns": 2, "name": "a"},
                                  {"address": b.address, "name": "b"}])
            cfg.upstream("one", [{"address": a.address, "max_conns": 1}])
            pair = cfg.listener("pair", "pair")
            one = cfg.listener("one", "one")
            cfg.with_admin()

            with h.Grelay(cfg) as g:
                held = [self.hold(pair) for _ in range(6)]
                self.assertEqual(g.metric("grelay_upstream_server_active_connections",
                                          upstream="pair", server="a"), 2)
                self.assertEqual(g.metric("grelay_upstream_server_active_connections",
                                          upstream="pair", server="b"), 4)
                # Rotation a b a b a b: the fifth session found a full and went to b.
                self.assertEqual(g.metric("grelay_upstream_server_full_total", listener="pair"),
                                 1)
                # A pool whose only server is full resets the client, like a dead pool.
                first = self.hold(one)
                end, data, _ = h.try_request(one, b"y")
                self.assertEqual((end, data), ("reset", b""))
                self.assertEqual(g.metric("grelay_upstream_unavailable_total", listener="one"), 1)
                self.release_and_reuse(g, first, one, "one")
                for c in held:
                    c.close()

    def test_max_conns_counts_the_sessions_a_reload_left_behind(self):
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("one", [{"address": echo.address, "max_conns": 1}])
            one = cfg.listener("one", "one")
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                first = self.hold(one)
                self.reload(g, cfg)
                # The new generation's pool shares the server's count with the old one:
                # its only slot is still taken, and the series counts it once.
                end, data, _ = h.try_request(one, b"y")
                self.assertEqual((end, data), ("reset", b""))
                self.assertEqual(len(echo.conns), 1, "max_conns exceeded after a reload")
                self.assertEqual(g.metric("grelay_upstream_server_active_connections",
                                          upstream="one", server="0"), 1)
                self.release_and_reuse(g, first, one, "one")

    def test_queue_timeout_holds_a_session_until_a_slot_frees(self):
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("one", [{"address": echo.address, "max_conns": 1}], queue_timeout="30s")
            cfg.upstream("short", [{"address": echo.address, "max_conns": 1}],
                         queue_timeout="300ms")
            cfg.upstream("tiny", [{"address": echo.address, "max_conns": 1}],
                         queue_timeout="30s", max_queue=1)
            tmp = tempfile.mkdtemp(prefix="grelay-queue-")
            self.addCleanup(shutil.rmtree, tmp, True)
            access_log = os.path.join(tmp, "access.log")
            one = cfg.listener("one", "one", access_log=access_log)
            short = cfg.listener("short", "short")
            tiny = cfg.listener("tiny", "tiny")
            cfg.with_admin()

            with h.Grelay(cfg) as g:
                waiting = lambda listener: g.metric("grelay_upstream_queued_sessions",
                                                    listener=listener)
                first = self.hold(one)
                # The next session finds the only server full and waits, its bytes unread
                # by anyone yet; it is not reset.
                second = h.connect(one)
                payload = bytes(range(256)) * 64
                second.sendall(payload)
                self.assertTrue(h.wait_for(lambda: waiting("one") == 1, 10), g.log_tail())
                self.assertEqual(g.metric("grelay_upstream_queued_total", listener="one"), 1)
                self.assertEqual(len(echo.conns), 1)
                time.sleep(h.slack(0.3))
                self.assertEqual(waiting("one"), 1)
                # The first session ends: its slot goes to the waiting one, which then
                # relays every byte it sent meanwhile.
                first.close()
                second.shutdown(socket.SHUT_WR)
                self.assertEqual(h.read_outcome(second, 10), ("eof", payload))
                second.close()
                self.assertEqual(waiting("one"), 0)
                self.assertEqual(g.metric("grelay_upstream_unavailable_total", listener="one"), 0)
                # The wait is in the histogram, once.
                self.assertEqual(g.metric("grelay_upstream_queue_duration_seconds_count",
                                          listener="one"), 1)
                self.assertGreaterEqual(g.metric("grelay_upstream_queue_duration_seconds_sum",
                                                 listener="one"), 0.3)
                # The access log tells how long each session waited for its slot.
                self.assertTrue(h.wait_for(lambda: len(h.read_json_lines(access_log)) == 2, 5))
                waited = sorted(line["queue"] for line in h.read_json_lines(access_log))
                self.assertEqual(waited[0], 0)
                self.assertGreaterEqual(waited[1], 0.3)
                # With a short queue_timeout the wait ends in a reset, logged.
                held = self.hold(short)
                end, data, took = h.try_request(short, b"y", timeout=10)
                self.assertEqual((end, data), ("reset", b""))
                self.assertGreaterEqual(took, 0.29)
                self.assertEqual(g.metric("grelay_upstream_unavailable_total", listener="short"), 1)
                self.assertEqual(waiting("short"), 0)
                self.assertTrue(h.wait_for(lambda: "no server of upstream short had a free slot "
                                           "(max_conns) within queue_timeout: reset" in g.log(),
                                           5), g.log_tail())
                held.close()
                # With max_queue = 1, a second session finding the server full while one
                # waits is reset at once rather than after queue_timeout.
                held = self.hold(tiny)
                queued = h.connect(tiny)
                queued.sendall(b"z")
                self.assertTrue(h.wait_for(lambda: waiting("tiny") == 1, 10), g.log_tail())
                end, data, took = h.try_request(tiny, b"w", timeout=10)
                self.assertEqual((end, data), ("reset", b""))
                self.assertLess(took, h.slack(1.0))
                self.assertTrue(h.wait_for(lambda: "no server of upstream tiny had a free slot "
                                           "(max_conns) and max_queue sessions were waiting "
                                           "already: reset" in g.log(), 5), g.log_tail())
                self.assertEqual(g.metric("grelay_upstream_unavailable_total", listener="tiny"), 1)
                self.assertEqual(g.metric("grelay_upstream_queued_total", listener="tiny"), 1)
                # The waiting one is served once the slot frees.
                held.close()
                queued.shutdown(socket.SHUT_WR)
                self.assertEqual(h.read_outcome(queued, 10), ("eof", b"z"))
                queued.close()

    def serve_waiters_in_order(self, workers, count):
        """`count` sessions wait for the one slot; each slot that frees goes to the oldest
        waiter, whichever worker it is on and whichever waiter looked last; the others are
        still waiting, their byte unanswered."""
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.server["workers"] = workers
            cfg.upstream("one", [{"address": echo.address, "max_conns": 1}], queue_timeout="60s")
            one = cfg.listener("one", "one")
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                held = self.hold(one)
                waiters = []
                for i in range(count):
                    c = h.connect(one)
                    c.sendall(bytes([0x41 + i]))
                    waiters.append(c)
                    self.assertTrue(h.wait_for(lambda: g.metric(
                        "grelay_upstream_queued_sessions", listener="one") == i + 1, 10),
                        g.log_tail())
                held.close()
                for i, c in enumerate(waiters):
                    ready, _, _ = select.select(waiters[i:], [], [], 10)
                    self.assertEqual([waiters.index(r) for r in ready], [i],
                                     "served instead of the oldest waiter")
                    self.assertEqual(c.recv(1), bytes([0x41 + i]))
                    self.assertEqual(g.metric("grelay_upstream_queued_sessions", listener="one"),
                                     len(waiters) - i - 1)
                    c.close()
                self.assertEqual(g.metric("grelay_upstream_queued_total", listener="one"), count)
                self.assertEqual(g.metric("grelay_upstream_unavailable_total", listener="one"), 0)

    def test_a_freed_slot_goes_to_the_session_that_waited_longest(self):
        self.serve_waiters_in_order(workers=1, count=6)

    def test_the_oldest_waiter_gets_the_slot_whichever_worker_freed_it(self):
        # Connections spread over the workers (SO_REUSEPORT): twelve waiters land on both
        # but for a 1 in 2048 chance.
        self.serve_waiters_in_order(workers=2, count=12)

    def test_a_waiting_session_reaches_its_mirrors_only_with_a_slot(self):
        with h.EchoServer() as echo, h.SinkServer() as sink:
            cfg = h.Config()
            cfg.upstream("one", [{"address": echo.address, "max_conns": 1}], queue_timeout="30s")
            cfg.upstream("short", [{"address": echo.address, "max_conns": 1}],
                         queue_timeout="300ms")
            mirror = [{"name": "m", "address": sink.address}]
            one = cfg.listener("one", "one", mirrors=mirror)
            short = cfg.listener("short", "short", mirrors=mirror)
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                held = self.hold(one)
                self.assertTrue(h.wait_for(lambda: len(sink.conns) == 1, 10))  # held's mirror
                second = h.connect(one)
                payload = bytes(range(256)) * 64
                second.sendall(payload)
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_upstream_queued_sessions", listener="one") == 1, 10), g.log_tail())
                time.sleep(h.slack(0.2))
                self.assertEqual(len(sink.conns), 1, "a waiting session connected its mirror")
                held.close()
                second.shutdown(socket.SHUT_WR)
                self.assertEqual(h.read_outcome(second, 10), ("eof", payload))
                second.close()
                # The mirror got the waiting session's bytes, whole and in order.
                self.assertTrue(h.wait_for(lambda: len(sink.conns) == 2 and sink.conns[1].done,
                                           10))
                self.assertEqual(bytes(sink.conns[1].data), payload)
                self.assertEqual(g.metric("grelay_mirror_sessions_total", listener="one",
                                          mirror="m"), 2)
                # A session the queue resets never reaches the mirror.
                held = self.hold(short)
                self.assertTrue(h.wait_for(lambda: len(sink.conns) == 3, 10))  # held's mirror
                end, data, _ = h.try_request(short, b"y", timeout=10)
                self.assertEqual((end, data), ("reset", b""))
                held.close()
                self.assertEqual(g.metric("grelay_upstream_unavailable_total", listener="short"), 1)
                self.assertEqual(len(sink.conns), 3)
                self.assertEqual(g.metric("grelay_mirror_sessions_total", listener="short",
                                          mirror="m"), 1)

    def test_backup_serves_when_every_other_server_fails(self):
        with h.RefusingPort() as d1, h.RefusingPort() as d2, h.EchoServer() as spare:
            cfg = h.Config()
            cfg.upstream("app", [{"address": d1.address, "weight": 2}, d2.address,
                                 {"address": spare.address, "backup": True}])
            port = cfg.listener("web", "app")
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                for i in range(10):
                    r = h.stream_session(port, h.Stream(i, 64 * h.KiB), index=i)
                    self.assertTrue(r.ok, str(r))
                # The first session marked both down (max_fails = 1); the rest went
                # straight to the backup.
                self.assertEqual(g.metric("grelay_upstream_connect_errors_total",
                                          listener="web"), 2)
                self.assertEqual(g.metric("grelay_upstream_marked_down_total",
                                          listener="web"), 2)
            self.assertEqual(len(spare.conns), 10)

    def test_health_checks_find_a_dead_server_before_sessions_do(self):
        with h.Blackhole() as hole, h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [{"address": hole.address, "name": "hole"},
                                 {"address": echo.address, "name": "echo"}],
                         check_interval="200ms", check_timeout="300ms", fail_timeout="5s")
            port = cfg.listener("web", "app", connect_timeout="3s")
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                self.assertTrue(h.wait_for(
                    lambda: g.metric("grelay_upstream_servers_down", upstream="app") == 1, 10),
                    "the blackhole was not marked down by a health check")
                self.assertRegex(g.log(), r"upstream app: server 127\.0\.0\.1:\d+ marked down for "
                                          r"5000 ms after 1 failure in a row \(health check: no "
                                          r"answer within 300 ms\)")
                # No session waits for the blackhole's connect_timeout (3 s): every one of
                # them goes to the live server first, and none fails a connect.
                for i in range(6):
                    r = h.stream_session(port, h.Stream(i, 64 * h.KiB), index=i, timeout=10)
                    self.assertTrue(r.ok, str(r))
                    self.assertLess(r.elapsed, h.slack(1.5), str(r))
                self.assertEqual(g.metric("grelay_upstream_connect_errors_total",
                                          listener="web"), 0)
                self.assertEqual(
                    g.metric("grelay_upstream_health_check_marked_down_total", upstream="app"), 1)
                failed = g.metric("grelay_upstream_health_checks_total", upstream="app",
                                  result="failed")
                ok = g.metric("grelay_upstream_health_checks_total", upstream="app", result="ok")
                self.assertGreaterEqual(failed, 1)
                self.assertGreaterEqual(ok, failed - 1)  # the echo server passes each round
                # Per server: the blackhole out of the rotation, the echo server in it,
                # with the sessions open on it right now.
                self.assertEqual(g.metric("grelay_upstream_server_up", upstream="app",
                                          server="hole"), 0)
                self.assertEqual(g.metric("grelay_upstream_server_up", upstream="app",
                                          server="echo"), 1)
                held = []
                for _ in range(3):
                    c = h.connect(port)
                    c.sendall(b"x")
                    self.assertEqual(c.recv(1), b"x")
                    held.append(c)
                self.assertEqual(g.metric("grelay_upstream_server_active_connections",
                                          upstream="app", server="echo"), 3)
                self.assertEqual(g.metric("grelay_upstream_server_active_connections",
                                          upstream="app", server="hole"), 0)
                for c in held:
                    c.close()
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_upstream_server_active_connections", upstream="app",
                    server="echo") == 0, 5))
            checks = [c for c in echo.conns if c.received == 0]
            self.assertGreaterEqual(len(checks), 1, "no health check reached the live server")

    def test_send_and_expect_find_a_server_that_accepts_but_is_not_ready(self):
        class PingServer(h.Server):
            """Answers a first "PING\\r\\n" with +PONG (ready) or -LOADING, then closes;
            echoes anything else (a session)."""
            ready = True

            def handle(self, c, rec):
                first = c.recv(65536)
                if first == b"PING\r\n":
                    c.sendall(b"+PONG\r\n" if self.ready else b"-LOADING\r\n")
                    self._end(rec, "check")
                    return
                while first:
                    self._record(rec, first)
                    c.sendall(first)
                    first = c.recv(65536)
                c.shutdown(socket.SHUT_WR)
                self._end(rec, "eof")

        with PingServer() as ready, PingServer() as loading:
            loading.ready = False
            cfg = h.Config()
            cfg.upstream("app", [{"address": ready.address, "name": "ready"},
                                 {"address": loading.address, "name": "loading"}],
                         check_interval="200ms", fail_timeout="1h",
                         check_send="PING\r\n", check_expect="+PONG")
            port = cfg.listener("web", "app")
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                down = lambda name: g.metric("grelay_upstream_server_up", upstream="app",
                                             server=name) == 0
                self.assertTrue(h.wait_for(lambda: down("loading"), 10), g.log_tail())
                self.assertFalse(down("ready"))
                self.assertIn("(health check: the server closed before its reply had '+PONG' "
                              "(it sent '-LOADING\\x0d\\x0a'))", g.log())
                # It accepts connections, so without the exchange sessions would meet it.
                for i in range(4):
                    self.assertTrue(h.stream_session(port, h.Stream(i, 64 * h.KiB)).ok)
                # (By the bytes: a health check may be in flight right now, not yet ended.)
                self.assertEqual([c for c in loading.conns if c.received > len(b"PING\r\n")], [])
                # Ready again: back at the next check, and it takes its share.
                loading.ready = True
                self.assertTrue(h.wait_for(lambda: not down("loading"), 10), g.log_tail())
                for i in range(4):
                    self.assertTrue(h.stream_session(port, h.Stream(10 + i, 64 * h.KiB)).ok)
                self.assertEqual(len([c for c in loading.conns if c.received > len(b"PING\r\n")]),
                                 2)

    def test_check_port_checks_each_servers_health_port(self):
        # Two servers on two loopback addresses, one health port number: only the first
        # has something listening on it, so only the first is up, whatever their
        # traffic ports do.
        health = h.free_port("127.0.0.2")
        with h.EchoServer(host="127.0.0.2") as one, h.EchoServer(host="127.0.0.3") as two, \
                h.EchoServer(host="127.0.0.2", port=health) as probe:
            cfg = h.Config()
            cfg.upstream("app", [{"address": one.address, "name": "one"},
                                 {"address": two.address, "name": "two"}],
                         check_interval="200ms", fail_timeout="1h", check_port=health)
            port = cfg.listener("web", "app")
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                up = lambda name: g.metric("grelay_upstream_server_up", upstream="app",
                                           server=name)
                self.assertTrue(h.wait_for(lambda: up("two") == 0, 10), g.log_tail())
                self.assertEqual(up("one"), 1)
                self.assertRegex(g.log(), r"server 127\.0\.0\.3:\d+ marked down .*health check: "
                                          r"Connection refused")
                for i in range(4):
                    self.assertTrue(h.stream_session(port, h.Stream(i, 16 * h.KiB)).ok)
                self.assertEqual(len([c for c in two.conns if c.received]), 0)
            self.assertGreaterEqual(len(probe.conns), 1, "no check reached the health port")
            self.assertEqual(len([c for c in one.conns if c.received == 0]), 0,
                             "a check went to the traffic port")

    def test_a_revived_server_rejoins_at_the_next_check(self):
        with h.EchoServer() as echo:
            dead = h.RefusingPort()
            revived = None
            try:
                cfg = h.Config()
                cfg.upstream("app", [dead.address, echo.address], check_interval="200ms",
                             fail_timeout="1h")
                port = cfg.listener("web", "app")
                cfg.with_admin()
                with h.Grelay(cfg) as g:
                    down = lambda: g.metric("grelay_upstream_servers_down", upstream="app")
                    self.assertTrue(h.wait_for(lambda: down() == 1, 10), "not marked down")
                    dead.close()
                    revived = h.EchoServer(port=dead.port)
                    self.assertTrue(h.wait_for(lambda: down() == 0, 10),
                                    "not back after it listened again")
                    self.assertRegex(g.log(), r"upstream app: server 127\.0\.0\.1:%d is up again "
                                              r"\(health check\)" % dead.port)
                    # Without the check it would wait out fail_timeout (1 h): now it takes
                    # its share of sessions again.
                    for i in range(4):
                        r = h.stream_session(port, h.Stream(i, 64 * h.KiB), index=i)
                        self.assertTrue(r.ok, str(r))
                    served = [c for c in revived.conns if c.received > 0]
                    self.assertEqual(len(served), 2)
                    self.assertEqual(g.metric("grelay_upstream_connect_errors_total",
                                              listener="web"), 0)
            finally:
                dead.close()
                if revived:
                    revived.stop()

    def test_slow_start_eases_a_revived_server_and_a_new_one_in(self):
        with h.EchoServer() as echo, h.EchoServer() as third:
            dead = h.RefusingPort()
            revived = None
            try:
                cfg = h.Config()
                servers = [{"address": dead.address, "name": "one"},
                           {"address": echo.address, "name": "two"}]
                cfg.upstream("app", servers, check_interval="200ms", fail_timeout="1h",
                             slow_start="1h")
                port = cfg.listener("web", "app")
                cfg.with_admin()
                with h.Grelay(cfg) as g:
                    weight = lambda server: g.metric("grelay_upstream_server_weight",
                                                     upstream="app", server=server)
                    down = lambda: g.metric("grelay_upstream_servers_down", upstream="app")
                    self.assertTrue(h.wait_for(lambda: down() == 1, 10), "not marked down")
                    self.assertEqual(weight("one"), 0)
                    dead.close()
                    revived = h.EchoServer(port=dead.port)
                    self.assertTrue(h.wait_for(lambda: down() == 0, 10),
                                    "not back after it listened again")
                    self.assertRegex(g.log(), r"upstream app: server 127\.0\.0\.1:%d is up again "
                                              r"\(health check\); slow start over 3600000 ms"
                                              % dead.port)
                    # Seconds into an hour's ramp it declines its turns: the other server
                    # takes them, every session still succeeds.
                    self.assertEqual(g.metric("grelay_upstream_server_up", upstream="app",
                                              server="one"), 1)
                    self.assertLess(weight("one"), 0.01)
                    self.assertEqual(weight("two"), 1)

                    def run(first, count):
                        for i in range(first, first + count):
                            r = h.stream_session(port, h.Stream(i, 16 * h.KiB), index=i)
                            self.assertTrue(r.ok, str(r))

                    def served(server):
                        return len([c for c in server.conns if c.received > 0])

                    run(0, 10)
                    self.assertEqual((served(revived), served(echo)), (0, 10))
                    # A reload that adds a server: the new one ramps from the reload on,
                    # the revived one goes on with its ramp.
                    cfg.upstreams["app"]["servers"].append(
                        {"address": third.address, "name": "three"})
                    self.reload(g, cfg)
                    self.assertLess(weight("three"), 0.01)
                    self.assertLess(weight("one"), 0.01)
                    run(10, 10)
                    self.assertEqual((served(revived), served(echo), served(third)), (0, 20, 0))
                    # Without slow_start every server has its full share at once.
                    del cfg.upstreams["app"]["slow_start"]
                    self.reload(g, cfg)
                    self.assertEqual([weight(s) for s in ("one", "two", "three")], [1, 1, 1])
                    run(20, 12)
                    self.assertEqual((served(revived), served(echo), served(third)),
                                     (4, 24, 4))
                    self.assertEqual(g.metric("grelay_upstream_connect_errors_total",
                                              listener="web"), 0)
            finally:
                dead.close()
                if revived:
                    revived.stop()

    def reload(self, g, cfg):
        before = len(re.findall(r"SIGHUP: reloaded", g.log()))
        with open(g.config_path, "w") as f:
            f.write(cfg.render())
        g.send_signal(signal.SIGHUP)
        self.assertTrue(h.wait_for(
            lambda: len(re.findall(r"SIGHUP: reloaded", g.log())) > before, 10), g.log_tail())

    def test_a_server_marked_down_stays_down_across_a_reload(self):
        with h.Blackhole() as hole, h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [hole.address, echo.address], fail_timeout="1h")
            port = cfg.listener("web", "app", connect_timeout="500ms")
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                r = h.stream_session(port, h.Stream(0, 16 * h.KiB), timeout=10)
                self.assertTrue(r.ok, str(r))
                self.assertGreaterEqual(r.elapsed, 0.45, "the first session did not wait")
                before = len(re.findall(r"SIGHUP: reloaded", g.log()))
                g.send_signal(signal.SIGHUP)
                self.assertTrue(h.wait_for(
                    lambda: len(re.findall(r"SIGHUP: reloaded", g.log())) > before, 10),
                    g.log_tail())
                # The new generation's pool took the marking over: no session starts at
                # the blackhole again.
                for i in range(1, 7):
                    r = h.stream_session(port, h.Stream(i, 16 * h.KiB), index=i, timeout=10)
                    self.assertTrue(r.ok, str(r))
                    self.assertLess(r.elapsed, h.slack(0.4), str(r))
                self.assertEqual(g.metric("grelay_upstream_connect_errors_total",
                                          listener="web"), 1)

    def test_connects_and_checks_leave_from_the_source_address(self):
        with h.EchoServer() as echo, h.SinkServer() as sink:
            cfg = h.Config()
            cfg.upstream("app", [echo.address], source_address="127.0.0.2",
                         check_interval="100ms")
            port = cfg.listener("web", "app", mirrors=[
                {"name": "m", "address": sink.address, "source_address": "127.0.0.3"}])
            with h.Grelay(cfg):
                stream = h.Stream(7, 256 * h.KiB)
                r = h.stream_session(port, stream)
                self.assertTrue(r.ok, str(r))
                self.assertTrue(sink.wait_connections(1, timeout=10))
                self.assertTrue(h.wait_for(lambda: len(echo.conns) >= 3, 5))  # + checks
            # Every connection the server took (the session's and the health checks') and
            # the mirror's came from the configured address, on ports the kernel picked.
            self.assertEqual({c.peer[0] for c in echo.conns}, {"127.0.0.2"})
            self.assertEqual([c.peer[0] for c in sink.conns], ["127.0.0.3"])
            self.assertEqual(bytes(sink.records()[0].data), stream.bytes())
        # An address this host lacks: refused at start, not at each connect.
        cfg = h.Config()
        cfg.upstream("app", ["127.0.0.1:9"], source_address="192.0.2.77")
        cfg.listener("web", "app")
        path = os.path.join(tempfile.mkdtemp(prefix="grelay-source-"), "grelay.toml")
        self.addCleanup(shutil.rmtree, os.path.dirname(path), True)
        with open(path, "w") as f:
            f.write(cfg.render())
        self.assertEqual(h.run_grelay(["-c", path, "--check"]).returncode, 0)
        r = h.run_grelay(["-c", path])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stderr, r"upstream app: source_address 192\.0\.2\.77 cannot be used "
                                   r"on this host: Cannot assign requested address")

    def test_pool_with_every_server_dead_resets_client(self):
        with h.RefusingPort() as d1, h.RefusingPort() as d2, h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("dead", [d1.address, d2.address])
            cfg.upstream("live", [echo.address])
            bad = cfg.listener("bad", "dead")
            good = cfg.listener("good", "live")
            with h.Grelay(cfg):
                results = h.run_concurrently(
                    h.stream_session, [(bad, h.Stream(i, 64 * h.KiB)) for i in range(10)],
                    kwargs_list=[{"expect": b"", "timeout": 5}] * 10)
                for r in results:
                    self.assertEqual((r.received, r.end), (0, "reset"), str(r))
                    self.assertLess(r.elapsed, h.slack(2.0), str(r))
                r = h.stream_session(good, h.Stream(99, 1 * h.MiB))
                self.assertTrue(r.ok, str(r))


if __name__ == "__main__":
    h.main()
