#!/usr/bin/env python3
"""The decrypted stream of a TLS session goes to mirrors and the tap (issue 5 item 5.2-3).

- A TLS listener with a mirror: the mirror receives exactly the decrypted client bytes of
  every session (never ciphertext), the client still gets its echo byte for byte.
- A TLS listener with a tap: `grelay tap export --pcap` + `tshark -z follow,tcp,raw`
  shows the plaintext of both directions, and the tap's SessionOpen record carries the
  TLS-terminated flag (read from the .gtap file itself: `grelay tap export` does not
  print session flags); a plaintext listener's session does not carry it.
- A stalled mirror on a TLS listener is cut; the TLS session completes byte for byte.
"""

import os
import random
import shutil
import tempfile

import harness as h


def seed_of(data) -> int:
    return int.from_bytes(bytes(data[:8]), "little")


class TlsMirrorTapTest(h.TlsTest):
    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="grelay-tls-tap-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def tls(self) -> dict:
        return {"cert": self.certs.server[0], "key": self.certs.server[1]}

    def test_mirror_gets_exactly_the_decrypted_client_bytes(self):
        rng = random.Random(606)
        n = 6
        streams = {s: h.Stream(s, rng.randint(h.scaled(64 * h.KiB), h.scaled(3 * h.MiB)))
                   for s in range(6100, 6100 + n)}
        with h.EchoServer() as echo, h.SinkServer(keep="bytes") as mirror:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("tls", "app", tls=self.tls(),
                                mirrors=[{"name": "m", "address": mirror.address}])
            with h.Grelay(cfg):
                ctx = h.tls_client_context(self.certs.ca)
                results = h.run_concurrently(
                    h.tls_stream_session, [(port, s) for s in streams.values()],
                    kwargs_list=[{"context": ctx, "index": i} for i in range(n)])
                bad = [r for r in results if not getattr(r, "ok", False)]
                self.assertEqual(bad, [], "\n".join(map(str, bad)))
                self.assertTrue(mirror.wait_connections(n, timeout=30),
                                f"mirror got {len(mirror.conns)} of {n} sessions")
                got = set()
                for rec in mirror.records():
                    self.assertEqual(rec.end, "eof", f"mirror connection {rec.index}: {rec.end}")
                    seed = seed_of(rec.data)
                    self.assertIn(seed, streams, "mirror got bytes of no session (ciphertext?)")
                    c = h.Checker(streams[seed])
                    c.feed(memoryview(rec.data))
                    self.assertTrue(c.complete, f"mirror, session {seed}: {c.describe()}")
                    got.add(seed)
                self.assertEqual(got, set(streams))

    def test_stalled_mirror_is_cut_and_the_tls_session_completes(self):
        # A mirror that never reads holds the decrypted chunks given to it. When they use
        # up the copy path's buffers, the mirror must be cut (as on the plaintext paths),
        # never the primary session.
        data = h.Stream(6150, h.scaled(16 * h.MiB, 8 * h.MiB))
        with h.EchoServer() as echo, h.StallServer() as stalled:
            cfg = h.Config(workers=1, buffer_pool="1MiB")
            cfg.with_admin()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("tls", "app", tls=self.tls(),
                                mirrors=[{"name": "stalled", "address": stalled.address}])
            with h.Grelay(cfg) as g:
                r = h.tls_stream_session(port, data, context=h.tls_client_context(self.certs.ca),
                                         timeout=30)
                self.assertTrue(r.ok, f"the TLS session suffered from a stalled mirror: {r}")
                self.assertEqual(g.metric("grelay_mirror_cuts_total", listener="tls",
                                          mirror="stalled"), 1)
                self.assertEqual(g.metric("grelay_session_resets_total", listener="tls"), 0)

    def _export(self, tap_dir: str) -> str:
        pcap = os.path.join(self.tmp, "out.pcap")
        out = h.run_grelay(["tap", "export", "--pcap", pcap, tap_dir], timeout=120)
        self.assertEqual(out.returncode, 0, f"tap export: {out.stdout}{out.stderr}")
        return pcap

    def test_tap_records_plaintext_both_ways_and_flags_the_session(self):
        if not shutil.which("tshark"):
            self.skipTest("tshark is not installed")
        request = h.Stream(6201, h.scaled(300 * h.KiB)).bytes()
        response = h.Stream(6202, h.scaled(200 * h.KiB) + 7).bytes()
        with h.SinkServer(keep="count", reply=lambda rec: response) as upstream:
            cfg = h.Config(workers=1)
            cfg.upstream("app", [upstream.address])
            tap_dir = os.path.join(self.tmp, "tap")
            port = cfg.listener("tls", "app", tls=self.tls(), tap={"path": tap_dir})
            with h.Grelay(cfg):
                ctx = h.tls_client_context(self.certs.ca)
                r = h.tls_stream_session(port, request, context=ctx, expect=response)
                self.assertTrue(r.ok, str(r))
            # grelay stopped: the tap file is finished.
            flags = h.tap_session_flags(tap_dir)
            self.assertEqual(len(flags), 1, f"tap sessions: {flags}")
            self.assertTrue(all(f & h.TAP_SESSION_TLS_TERMINATED for f in flags.values()),
                            f"session not flagged TLS-terminated: {flags}")
            pcap = self._export(tap_dir)
            sent, received = h.tshark_follow(pcap, 0)
            self.assertEqual(len(sent), len(request), "client -> upstream bytes in the pcap")
            self.assertTrue(sent == request, "client -> upstream bytes differ from the plaintext")
            self.assertEqual(len(received), len(response), "upstream -> client bytes")
            self.assertTrue(received == response, "upstream -> client bytes differ")

    def test_plaintext_session_is_not_flagged_tls(self):
        with h.EchoServer() as echo:
            cfg = h.Config(workers=1)
            cfg.upstream("app", [echo.address])
            tap_dir = os.path.join(self.tmp, "tap")
            port = cfg.listener("plain", "app", tap={"path": tap_dir})
            with h.Grelay(cfg):
                r = h.stream_session(port, b"plain bytes")
                self.assertTrue(r.ok, str(r))
            flags = h.tap_session_flags(tap_dir)
            self.assertEqual(len(flags), 1, f"tap sessions: {flags}")
            self.assertFalse(any(f & h.TAP_SESSION_TLS_TERMINATED for f in flags.values()))


if __name__ == "__main__":
    h.main()
