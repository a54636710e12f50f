#!/usr/bin/env python3
"""An upstream that refuses connections: the client is reset promptly and gets no data,
grelay keeps serving, and a pool with a dead server fails over to the live one."""

import harness as h


class UpstreamRefusedTest(h.GrelayTest):
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
