#!/usr/bin/env python3
"""SIGTERM drains: grelay stops accepting at once, lets open sessions finish byte for
byte and exits 0; sessions that never end are reset at drain_timeout and it still
exits 0. With shutdown_delay it first keeps accepting while GET /ready answers 503."""

import signal
import threading
import time
import urllib.error
import urllib.request

import harness as h
from test_timeouts_limits import open_session


class DrainTest(h.GrelayTest):
    def test_sigterm_lets_streaming_sessions_finish(self):
        sessions = 10
        size = 8 * h.MiB  # not scaled: the sessions must still be streaming at SIGTERM
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app")
            g = h.Grelay(cfg).start()
            results = [None] * sessions
            started = threading.Barrier(sessions + 1, timeout=30)

            def client(i):
                # ~2-3 s of streaming: 256 KiB pieces with a pause between them.
                results[i] = h.stream_session(port, h.Stream(i, size), send_pause=0.08,
                                              index=i, timeout=30,
                                              on_connect=lambda s: started.wait())

            threads = [threading.Thread(target=client, args=(i,)) for i in range(sessions)]
            for t in threads:
                t.start()
            started.wait()
            time.sleep(0.5)
            g.send_signal(signal.SIGTERM)
            t_term = time.monotonic()
            # New connections are refused (the listeners are closed) a moment later.
            time.sleep(0.3)
            end, data, _ = h.try_request(port, b"x", timeout=2)
            self.assertIn(end, ("refused", "reset"), "grelay accepts new sessions after SIGTERM")
            self.assertEqual(data, b"")
            self.assertTrue(g.alive(), "grelay exited with sessions still streaming")
            for t in threads:
                t.join()
            code = g.wait_exit(15)
            took = time.monotonic() - t_term
            self.assertEqual(code, 0, f"exit code after draining (after {took:.1f}s)")
            g.stop()  # collects the exit code, checks the log for sanitizer reports
            bad = [r for r in results if not r.ok]
            self.assertEqual(bad, [], "sessions cut by the drain:\n" + "\n".join(map(str, bad)))
            self.assertEqual(len(echo.conns), sessions)

    def test_drain_timeout_bounds_the_exit(self):
        with h.EchoServer() as echo:
            cfg = h.Config(drain_timeout="1s")
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app")
            g = h.Grelay(cfg).start()
            stuck = [open_session(port) for _ in range(3)]  # never closed by the client
            t0 = time.monotonic()
            g.send_signal(signal.SIGTERM)
            code = g.wait_exit(10)
            took = time.monotonic() - t0
            self.assertEqual(code, 0, "exit code with sessions open at drain_timeout")
            g.stop()
            self.assertGreaterEqual(took, 0.9, "exited before drain_timeout with sessions open")
            self.assertLessEqual(took, 3.0, "drain_timeout (1s) not honoured")
            for s in stuck:
                end, _ = h.read_outcome(s, 2)
                self.assertIn(end, ("reset", "eof"), "a stuck session was left open")
                s.close()

    def test_shutdown_delay_keeps_serving_while_ready_answers_503(self):
        with h.EchoServer() as echo:
            cfg = h.Config(shutdown_delay="3s", drain_timeout="5s")
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app")
            admin = cfg.with_admin()
            g = h.Grelay(cfg).start()
            # Ready once the workers run (the listening sockets exist a moment before).
            self.assertTrue(h.wait_for(lambda: probe(admin, "/ready")[0] == 200, 10))
            self.assertEqual(probe(admin, "/ready"), (200, "ready\n"))
            self.assertEqual(probe(admin, "/healthz"), (200, "ok\n"))
            held = open_session(port)  # open across the whole stop
            g.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            self.assertTrue(h.wait_for(lambda: probe(admin, "/ready")[0] == 503, 5), g.log())
            self.assertEqual(probe(admin, "/ready"), (503, "stopping\n"))
            self.assertEqual(probe(admin, "/healthz"), (200, "ok\n"))  # alive, only leaving
            # Load balancers that have not noticed yet are still served, byte for byte.
            r = h.stream_session(port, h.Stream(3, 256 * h.KiB))
            self.assertTrue(r.ok, str(r))
            self.assertNotIn("shutdown_delay over", g.log(), "the session outlasted the delay")
            self.assertTrue(h.wait_for(lambda: "shutdown_delay over" in g.log(), 10), g.log())
            self.assertGreaterEqual(time.monotonic() - t0, 2.9, "accepting stopped before the delay")
            time.sleep(0.3)
            end, _, _ = h.try_request(port, b"x", timeout=2)
            self.assertIn(end, ("refused", "reset"), "grelay accepts after shutdown_delay")
            held.sendall(b"still here")  # the held session drains normally
            self.assertEqual(held.recv(64), b"still here")
            held.close()
            self.assertEqual(g.wait_exit(10), 0)
            g.stop()

    def test_a_second_signal_during_shutdown_delay_stops_at_once(self):
        with h.EchoServer() as echo:
            cfg = h.Config(shutdown_delay="1h")
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app")
            g = h.Grelay(cfg).start()
            held = open_session(port)
            g.send_signal(signal.SIGTERM)
            self.assertTrue(h.wait_for(lambda: "still accepting" in g.log(), 5), g.log())
            g.send_signal(signal.SIGTERM)
            self.assertEqual(g.wait_exit(10), 0, "a second SIGTERM must not wait out the delay")
            g.stop()
            end, _ = h.read_outcome(held, 2)
            self.assertIn(end, ("reset", "eof"))
            held.close()


class ReloadWhileStoppingTest(h.GrelayTest):
    def test_sighup_applies_during_shutdown_delay_and_not_while_draining(self):
        """shutdown_delay can be long (load balancers slow to notice): a reload then still
        applies to the sessions that keep arriving; once the drain began it is ignored."""
        with h.EchoServer() as old, h.EchoServer() as new:
            cfg = h.Config(shutdown_delay="1h", drain_timeout="5s")
            cfg.upstream("app", [old.address])
            port = cfg.listener("web", "app")
            g = h.Grelay(cfg).start()
            g.send_signal(signal.SIGTERM)
            self.assertTrue(h.wait_for(lambda: "still accepting" in g.log(), 5), g.log())
            with open(g.config_path, "w") as f:
                f.write(h.inject_server_defaults(cfg.render().replace(old.address, new.address)))
            g.send_signal(signal.SIGHUP)
            self.assertTrue(h.wait_for(lambda: "SIGHUP: reloaded" in g.log(), 10), g.log())
            r = h.stream_session(port, h.Stream(1, 64 * h.KiB))
            self.assertTrue(r.ok, str(r))
            self.assertEqual((len(old.conns), len(new.conns)), (0, 1))
            g.send_signal(signal.SIGTERM)  # a second signal: stop now
            self.assertEqual(g.wait_exit(10), 0)
            g.stop()
            self.assertNotIn("ignored", g.log())

            # Draining (no delay): a reload is ignored, the open session finishes.
            cfg = h.Config(drain_timeout="30s")
            cfg.upstream("app", [old.address])
            port = cfg.listener("web", "app")
            g = h.Grelay(cfg).start()
            held = open_session(port)
            g.send_signal(signal.SIGTERM)
            self.assertTrue(h.wait_for(lambda: "no longer accepting" in g.log(), 5), g.log())
            g.send_signal(signal.SIGHUP)
            self.assertTrue(h.wait_for(lambda: "SIGHUP while draining: ignored" in g.log(), 5),
                            g.log())
            held.sendall(b"still here")
            self.assertEqual(held.recv(64), b"still here")
            held.close()
            self.assertEqual(g.wait_exit(10), 0)
            g.stop()


def probe(port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path: (status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


if __name__ == "__main__":
    h.main()
