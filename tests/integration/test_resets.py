#!/usr/bin/env python3
"""Resets are propagated and cost other sessions nothing.

- The upstream resets mid-stream: the client sees a reset (or EOF) and no byte the
  upstream did not send; sessions running at the same time on grelay are unaffected.
- The client resets mid-stream: the upstream sees a reset, whether it was reading
  (request direction) or sending (response direction).
"""

import socket
import struct

import harness as h


def reset_close(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


class ResetTest(h.GrelayTest):
    def test_upstream_reset_reaches_client_without_extra_bytes(self):
        reply = h.Stream(5, 100 * h.KiB)
        with h.ResetServer(after=256 * h.KiB) as silent, \
                h.ResetServer(after=256 * h.KiB, reply=reply.bytes()) as talker, \
                h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("silent", [silent.address])
            cfg.upstream("talker", [talker.address])
            cfg.upstream("echo", [echo.address])
            p_silent = cfg.listener("silent", "silent")
            p_talker = cfg.listener("talker", "talker")
            p_echo = cfg.listener("echo", "echo")
            with h.Grelay(cfg):
                n = 10
                args = ([(p_silent, h.Stream(i, 4 * h.MiB)) for i in range(n)]
                        + [(p_talker, h.Stream(100 + i, 4 * h.MiB)) for i in range(n)]
                        + [(p_echo, h.Stream(200 + i, h.scaled(4 * h.MiB))) for i in range(n)])
                kwargs = ([{"expect": b"", "timeout": 10}] * n
                          + [{"expect": reply, "timeout": 10}] * n
                          + [{"timeout": 60}] * n)
                results = h.run_concurrently(h.stream_session, args, kwargs_list=kwargs)
                for r in results[:2 * n]:
                    self.assertIn(r.end, ("reset", "eof"), f"after an upstream reset: {r}")
                    # Every byte the client got is the upstream's, in order (a prefix).
                    self.assertNotIn("differ", r.check, str(r))
                    self.assertLess(r.elapsed, h.slack(5.0), str(r))
                for r in results[:n]:
                    self.assertEqual(r.received, 0, str(r))
                for r in results[2 * n:]:
                    self.assertTrue(r.ok, f"a healthy session next to resetting ones: {r}")
                # And afterwards grelay still serves.
                r = h.stream_session(p_echo, h.Stream(999, 1 * h.MiB))
                self.assertTrue(r.ok, str(r))

    def test_client_reset_while_sending_reaches_upstream(self):
        with h.SinkServer(keep="count") as sink:
            cfg = h.Config()
            cfg.upstream("app", [sink.address])
            port = cfg.listener("web", "app")
            with h.Grelay(cfg):
                for i in range(5):
                    s = h.connect(port)
                    s.sendall(h.Stream(i, 1 * h.MiB).bytes())
                    self.assertTrue(h.wait_for(lambda: len(sink.conns) > i and
                                               sink.conns[i].received == 1 * h.MiB, 10),
                                    "the upstream did not get the bytes sent before the reset")
                    reset_close(s)
                    self.assertTrue(sink.wait_connections(i + 1, timeout=5),
                                    "the upstream connection stayed open after the client reset")
                    self.assertEqual(sink.conns[i].end, "reset",
                                     "the upstream should see a reset, not a clean close")

    def test_client_reset_while_receiving_reaches_upstream(self):
        with h.FloodServer(total=1 << 40) as flood:
            cfg = h.Config()
            cfg.upstream("app", [flood.address])
            port = cfg.listener("web", "app")
            with h.Grelay(cfg):
                for i in range(3):
                    s = h.connect(port)
                    got = 0
                    while got < 4 * h.MiB:
                        got += len(s.recv(1 << 20))
                    reset_close(s)
                    self.assertTrue(flood.wait_connections(i + 1, timeout=5),
                                    "the upstream kept sending after the client reset")
                    self.assertTrue(flood.conns[i].end == "reset" or
                                    "BrokenPipe" in flood.conns[i].end,
                                    f"the upstream saw {flood.conns[i].end}, not a reset")


if __name__ == "__main__":
    h.main()
