#!/usr/bin/env python3
"""Half-close (FIN) is propagated in both directions and never loses bytes.

- The client sends a request and shuts down writing; the upstream, after seeing EOF,
  sends a large response and closes: the client receives every byte, then EOF.
- Mirror image: the upstream sends a short greeting and shuts down writing at once, then
  reads a large upload; the client sees the greeting and EOF while still sending, and
  the upstream receives the whole upload, then EOF.
"""

import socket

import harness as h


class GreetThenReadServer(h.Server):
    """Sends `greeting`, shuts down writing, then records everything until EOF."""

    def __init__(self, greeting: bytes, **kw):
        self.greeting = greeting
        super().__init__(keep="bytes", **kw)

    def handle(self, c, rec):
        c.sendall(self.greeting)
        rec.sent = len(self.greeting)
        c.shutdown(socket.SHUT_WR)
        self._end(rec, self._read_all(c, rec))


class HalfCloseTest(h.GrelayTest):
    def test_response_after_client_fin_arrives_whole(self):
        response_size = h.scaled(16 * h.MiB)
        request_size = 100 * h.KiB
        sessions = 8

        def reply(rec):
            # The response to request Stream(seed) is Stream(seed + 1); a Stream starts
            # with its seed (little-endian u64).
            return h.Stream(int.from_bytes(rec.data[:8], "little") + 1, response_size)

        with h.SinkServer(keep="bytes", reply=reply) as up:
            cfg = h.Config()
            cfg.upstream("app", [up.address])
            port = cfg.listener("web", "app")
            with h.Grelay(cfg):
                results = h.run_concurrently(
                    h.stream_session,
                    [(port, h.Stream(100 + i, request_size)) for i in range(sessions)],
                    kwargs_list=[{"expect": h.Stream(101 + i, response_size), "index": i}
                                 for i in range(sessions)])
                for r in results:
                    self.assertTrue(r.ok, f"response after half-close: {r}")
                recs = up.records()
                self.assertEqual(len(recs), sessions)
                got = sorted(bytes(r.data) for r in recs)
                want = sorted(h.Stream(100 + i, request_size).bytes() for i in range(sessions))
                self.assertTrue(got == want, "the upstream did not receive the requests exactly")
                for rec in recs:
                    self.assertEqual(rec.end, "eof")
                    self.assertEqual(rec.sent, response_size)

    def test_upload_after_upstream_fin_arrives_whole(self):
        greeting = b"220 hello, then FIN\r\n"
        upload = h.Stream(77, h.scaled(16 * h.MiB))
        with GreetThenReadServer(greeting) as up:
            cfg = h.Config()
            cfg.upstream("app", [up.address])
            port = cfg.listener("web", "app")
            with h.Grelay(cfg):
                r = h.stream_session(port, upload, expect=greeting)
                self.assertTrue(r.ok, f"client side: {r}")
                self.assertTrue(up.wait_connections(1, timeout=30))
                rec = up.conns[0]
                self.assertEqual(rec.end, "eof")
                self.assertEqual(rec.received, len(upload))
                self.assertTrue(bytes(rec.data) == upload.bytes(),
                                "the upload reached the upstream altered")


if __name__ == "__main__":
    h.main()
