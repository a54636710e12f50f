#!/usr/bin/env python3
"""200 concurrent sessions, each sending 1-8 MiB of seeded random bytes through grelay to
an echo upstream: every byte comes back, in order, and every session ends cleanly."""

import random
import threading
import time

import harness as h


class ConcurrentEchoTest(h.GrelayTest):
    SESSIONS = 200

    def test_every_byte_of_200_concurrent_sessions_comes_back(self):
        rng = random.Random(2024)
        sizes = [rng.randint(h.scaled(1 * h.MiB), h.scaled(8 * h.MiB)) for _ in range(self.SESSIONS)]
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app")
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                # Every session connects before any sends: all 200 are open at once.
                barrier = threading.Barrier(self.SESSIONS, timeout=60)
                t0 = time.monotonic()
                results = h.run_concurrently(
                    h.stream_session,
                    [(port, h.Stream(1000 + i, n)) for i, n in enumerate(sizes)],
                    kwargs_list=[{"index": i, "on_connect": lambda s: barrier.wait(),
                                  "timeout": 120} for i in range(self.SESSIONS)])
                took = time.monotonic() - t0
                bad = [r for r in results if not isinstance(r, h.SessionResult) or not r.ok]
                self.assertEqual(bad, [], "sessions that did not echo exactly:\n" +
                                 "\n".join(map(str, bad[:20])))
                total = sum(sizes)
                self.assertEqual(sum(r.received for r in results), total)
                h.log(f"{self.SESSIONS} sessions, {total / h.MiB:.0f} MiB each way in {took:.1f}s")
                # On the mainline path, no mirror and no tap: both directions switch to
                # splice on their first full chunk, unless [server] splice = false.
                if g.metric("grelay_relay_path_info", path="mainline") == 1:
                    chunks = {p: g.metric("grelay_chunks_total", listener="web", path=p)
                              for p in ("mainline", "splice")}
                    self.assertGreater(chunks["mainline"], 0, chunks)
                    if h.SPLICE == "false":
                        self.assertEqual(chunks["splice"], 0, chunks)
                    else:
                        self.assertGreater(chunks["splice"], 0, chunks)
                    self.assertEqual(g.metric("grelay_received_bytes_total", listener="web"),
                                     2 * total)
            self.assertEqual(len(echo.conns), self.SESSIONS,
                             "the upstream saw a different number of connections")
            self.assertEqual(sorted(c.received for c in echo.conns), sorted(sizes))


if __name__ == "__main__":
    h.main()
