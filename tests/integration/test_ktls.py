#!/usr/bin/env python3
"""Kernel TLS (issue 5 item 4): where the kernel has the "tls" ULP, a TLS session is
handed to kernel TLS after the handshake and continues on the worker's zero-copy path.
OpenSSL 3.0 offloads both directions for TLS 1.2 and only sending for TLS 1.3. Skipped on
kernels without the ULP (the host); the kernel/ VM has it (CONFIG_TLS=y)."""

import os
import shutil
import subprocess
import tempfile

import harness as h


def ktls_available() -> bool:
    out = subprocess.run([h.GRELAY_BIN, "--features"], capture_output=True, text=True)
    return 'kTLS (tcp ULP "tls"):             yes' in out.stdout


class KtlsTest(h.TlsTest):
    def setUp(self):
        super().setUp()
        if not ktls_available():
            self.skipTest("the kernel has no TLS ULP (kTLS): run inside kernel/vm.sh")

    def _config(self, upstream_address, upstream_tls=None, **listener):
        """Upstream "app" and, with the admin endpoint, listener "tls" terminating TLS with
        the test certificate or, with `upstream_tls`, listener "plain" in front of a TLS
        upstream. Returns (config, port)."""
        cfg = h.Config()
        cfg.with_admin()
        if upstream_tls is None:
            cfg.upstream("app", [upstream_address])
            port = cfg.listener("tls", "app", tls={"cert": self.certs.server[0],
                                                   "key": self.certs.server[1]}, **listener)
        else:
            cfg.upstream("app", [upstream_address], tls=upstream_tls)
            port = cfg.listener("plain", "app", **listener)
        return cfg, port

    def test_tls12_sessions_run_on_kernel_tls_both_ways_with_mirror_and_tap(self):
        import ssl
        tap_dir = tempfile.mkdtemp(prefix="grelay-ktls-")
        self.addCleanup(shutil.rmtree, tap_dir, True)
        with h.EchoServer() as echo, h.SinkServer(keep="bytes") as sink:
            cfg, port = self._config(echo.address,
                                     mirrors=[{"name": "copy", "address": sink.address}],
                                     tap={"path": tap_dir})
            with h.Grelay(cfg) as g:
                ctx = h.tls_client_context(self.certs.ca, maximum=ssl.TLSVersion.TLSv1_2)
                streams = [h.Stream(900 + i, h.scaled(1 * h.MiB) + i * 4099) for i in range(4)]
                for s in streams:
                    r = h.tls_stream_session(port, s, context=ctx)
                    self.assertTrue(r.ok, str(r))
                    self.assertEqual(r.version, "TLSv1.2")
                self.assertEqual(g.metric("grelay_ktls_sessions_total", listener="tls"), 4)
                # Both directions are plain sends and receives for grelay: nothing is
                # decrypted or encrypted in userspace.
                self.assertEqual(g.metric("grelay_chunks_total", listener="tls", path="copy"), 0)
                self.assertTrue(h.wait_for(lambda: len([c for c in sink.conns if c.done]) == 4, 10))
                got = sorted(bytes(c.data) for c in sink.conns)
                self.assertEqual(got, sorted(s.bytes() for s in streams),
                                 "the mirror gets the plaintext")
                expected_path = "group" if h.RELAY_PATH == "group" else "mainline"
                self.assertGreater(g.metric("grelay_chunks_total", listener="tls",
                                            path=expected_path), 0)
        pcap = os.path.join(tap_dir, "out.pcap")
        r = h.run_grelay(["tap", "export", "--pcap", pcap, tap_dir], timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        flags = h.tap_session_flags(tap_dir)
        self.assertEqual(len(flags), 4)
        self.assertTrue(all(f & h.TAP_SESSION_TLS_TERMINATED for f in flags.values()))

    def test_tls13_sends_through_kernel_tls_and_decrypts_in_userspace(self):
        import ssl
        with h.EchoServer() as echo:
            cfg, port = self._config(echo.address)
            with h.Grelay(cfg) as g:
                ctx = h.tls_client_context(self.certs.ca, minimum=ssl.TLSVersion.TLSv1_3)
                r = h.tls_stream_session(port, h.Stream(950, h.scaled(2 * h.MiB)), context=ctx)
                self.assertTrue(r.ok, str(r))
                self.assertEqual(r.version, "TLSv1.3")
                self.assertEqual(g.metric("grelay_ktls_sessions_total", listener="tls"), 1)
                # Requests are decrypted by OpenSSL (copy path); responses go out as plain
                # sends that the kernel encrypts.
                self.assertGreater(g.metric("grelay_chunks_total", listener="tls", path="copy"), 0)

    def test_upstream_tls12_runs_on_kernel_tls_both_ways(self):
        import ssl
        c = self.certs
        with h.TlsEchoServer(*c.upstream) as up:
            up.context.maximum_version = ssl.TLSVersion.TLSv1_2
            cfg, port = self._config(up.address, upstream_tls={"ca": c.ca})
            with h.Grelay(cfg) as g:
                streams = [h.Stream(960 + i, h.scaled(1 * h.MiB) + i * 977) for i in range(3)]
                for s in streams:
                    r = h.stream_session(port, s)
                    self.assertTrue(r.ok, str(r))
                self.assertEqual(g.metric("grelay_ktls_sessions_total", listener="plain"), 3)
                # Nothing is encrypted or decrypted in userspace.
                self.assertEqual(g.metric("grelay_chunks_total", listener="plain", path="copy"), 0)
                self.assertTrue(up.wait_connections(3, timeout=30))
                self.assertEqual(sorted(r.received for r in up.conns),
                                 sorted(len(s) for s in streams))
                self.assertTrue(all(r.end == "eof" for r in up.conns), [r.end for r in up.conns])

    def test_upstream_tls13_sends_through_kernel_tls_and_takes_its_tickets(self):
        # A TLS 1.3 server sends session tickets after the handshake; OpenSSL 3.0 decrypts
        # TLS 1.3 itself, so they reach it (and a kernel-TLS receive would ignore them).
        c = self.certs
        with h.TlsEchoServer(*c.upstream) as up:
            cfg, port = self._config(up.address, upstream_tls={"ca": c.ca})
            with h.Grelay(cfg) as g:
                r = h.stream_session(port, h.Stream(970, h.scaled(2 * h.MiB)))
                self.assertTrue(r.ok, str(r))
                self.assertEqual(g.metric("grelay_ktls_sessions_total", listener="plain"), 1)
                self.assertGreater(g.metric("grelay_chunks_total", listener="plain", path="copy"), 0)
                self.assertNotIn("reset", g.log())

    def _tls12_over_memory_bios(self, port):
        """A TLS 1.2 client whose records the test handles itself (ssl.MemoryBIO), so it
        can tamper with what it receives. Returns (socket, SSLObject, send, receive)."""
        import socket
        import ssl
        ctx = h.tls_client_context(self.certs.ca, maximum=ssl.TLSVersion.TLSv1_2)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.addCleanup(sock.close)

        def send():
            data = outgoing.read()
            if data:
                sock.sendall(data)

        def receive(tamper=None):
            data = sock.recv(256 * h.KiB)
            self.assertTrue(data, "grelay closed the connection")
            incoming.write(tamper(data) if tamper else data)

        while True:
            try:
                tls.do_handshake()
                send()
                break
            except ssl.SSLWantReadError:
                send()
                receive()
        self.assertEqual(tls.version(), "TLSv1.2")
        return sock, tls, send, receive

    def test_a_fatal_alert_from_the_client_resets_the_upstream(self):
        # Kernel TLS gives alerts to a recvmsg that asks for the record type. close_notify
        # ends the direction with a FIN; a fatal alert means the client gave up, so the
        # upstream must not see a clean end of what may be a truncated request.
        import ssl
        with h.EchoServer() as echo:
            cfg, port = self._config(echo.address)
            with h.Grelay(cfg) as g:
                sock, tls, send, receive = self._tls12_over_memory_bios(port)
                tls.write(b"first request")
                send()
                got = b""
                while len(got) < len(b"first request"):
                    try:
                        got += tls.read(1024)
                    except ssl.SSLWantReadError:
                        receive()
                self.assertEqual(got, b"first request")
                self.assertEqual(g.metric("grelay_ktls_sessions_total", listener="tls"), 1)
                # The echo of the second request arrives with a flipped tag byte: OpenSSL
                # answers with a fatal bad_record_mac alert, which goes to grelay.
                tls.write(b"second request")
                send()
                with self.assertRaises(ssl.SSLError):
                    while True:
                        try:
                            tls.read(1024)
                        except ssl.SSLWantReadError:
                            receive(lambda d: d[:-1] + bytes([d[-1] ^ 1]))
                send()
                self.assertTrue(h.wait_for(lambda: len(echo.conns) == 1 and echo.conns[0].end,
                                           10), "the upstream connection did not end")
                self.assertEqual(echo.conns[0].end, "reset",
                                 "a fatal alert must reset the upstream, not close it")
                self.assertIn("the client sent fatal alert bad record mac", g.log())
                self.assertEqual(g.metric("grelay_session_resets_total", listener="tls"), 1)

    def test_close_notify_from_the_client_ends_the_request_with_a_fin(self):
        import ssl
        with h.SinkServer(reply=lambda rec: b"answer") as upstream:
            cfg, port = self._config(upstream.address)
            with h.Grelay(cfg) as g:
                sock, tls, send, receive = self._tls12_over_memory_bios(port)
                tls.write(b"the whole request")
                send()
                try:
                    tls.unwrap()  # close_notify
                except ssl.SSLWantReadError:
                    pass
                send()
                self.assertTrue(upstream.wait_connections(1, timeout=10))
                rec = upstream.records()[0]
                self.assertEqual(rec.end, "eof")
                self.assertEqual(bytes(rec.data), b"the whole request")
                self.assertNotIn("alert", g.log())


if __name__ == "__main__":
    h.main()
