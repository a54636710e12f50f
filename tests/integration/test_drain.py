#!/usr/bin/env python3
"""SIGTERM drains: grelay stops accepting at once, lets open sessions finish byte for
byte and exits 0; sessions that never end are reset at drain_timeout and it still
exits 0."""

import signal
import threading
import time

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


if __name__ == "__main__":
    h.main()
