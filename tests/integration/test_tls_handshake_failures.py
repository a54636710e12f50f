#!/usr/bin/env python3
"""Clients a TLS listener must refuse, and the handshake timeout (issue 5 item 5.4).

- TLS 1.0 and 1.1 clients (Python ssl with maximum_version and @SECLEVEL=0, checked
  against a control server to really offer that version; `openssl s_client -tls1_1`) are
  refused: no session reaches the upstream, grelay_tls_handshake_failures_total
  {reason="error"} counts them, grelay keeps serving.
- min_version = "1.3" refuses a TLS 1.2-only client and serves a TLS 1.3 one.
- A plaintext HTTP request on the TLS port is closed cleanly (EOF or an alert/reset)
  within a second, nothing reaches the upstream, and grelay keeps serving.
- handshake_timeout = "500ms": a client that connects and sends nothing, and one that
  stops halfway through its ClientHello, are closed within ~0.5-2 s and counted under
  reason="timeout".
- ciphers / ciphersuites restrict what is negotiated.
"""

import shutil
import socket
import ssl
import subprocess
import threading
import warnings

import harness as h

warnings.filterwarnings("ignore", category=DeprecationWarning)  # ssl.TLSVersion.TLSv1_x

OLD = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1}


def old_client_context(version: str) -> ssl.SSLContext:
    """A client that offers exactly `version` (TLSv1 / TLSv1.1) and nothing newer."""
    return h.tls_client_context(verify=False, minimum=OLD[version], maximum=OLD[version],
                                ciphers="DEFAULT@SECLEVEL=0")


def control_handshake(certs: h.Certs, client: ssl.SSLContext) -> str:
    """Handshakes `client` with a Python server that accepts TLS 1.0 up: the version."""
    sctx = h.tls_server_context(*certs.server)
    sctx.minimum_version = ssl.TLSVersion.TLSv1
    sctx.set_ciphers("DEFAULT@SECLEVEL=0")
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]

    def serve():
        c, _ = lsock.accept()
        try:
            with sctx.wrap_socket(c, server_side=True) as t:
                t.recv(1)
        except OSError:
            pass

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s, \
                client.wrap_socket(s, server_hostname="localhost") as t:
            v = t.version()
            t.sendall(b"x")
            return v
    finally:
        th.join(5)
        lsock.close()


class TlsHandshakeFailureTest(h.TlsTest):
    def tls(self, **kw) -> dict:
        return {"cert": self.certs.server[0], "key": self.certs.server[1], **kw}

    def assert_still_serving(self, port: int, data=b"still serving"):
        r = h.tls_stream_session(port, data, context=h.tls_client_context(self.certs.ca),
                                 timeout=10)
        self.assertTrue(r.ok, f"a good client after the failures: {r}")

    def test_tls10_and_tls11_clients_are_refused(self):
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("tls", "app", tls=self.tls())
            with h.Grelay(cfg) as g:
                refused = 0
                for version in ("TLSv1", "TLSv1.1"):
                    ctx = old_client_context(version)
                    got = control_handshake(self.certs, ctx)
                    self.assertEqual(got, version, f"the {version} client does not offer it")
                    r = h.tls_stream_session(port, b"hello", context=ctx, timeout=5)
                    self.assertFalse(r.ok, f"{version} client was served: {r}")
                    self.assertIn("PROTOCOL_VERSION", r.handshake_error or "", f"{version}: {r}")
                    self.assertLess(r.elapsed, 2.0, f"{version}: refused too slowly: {r}")
                    refused += 1
                if shutil.which("openssl"):
                    out = subprocess.run(
                        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_1",
                         "-cipher", "DEFAULT@SECLEVEL=0", "-servername", "localhost"],
                        input="", capture_output=True, text=True, timeout=20)
                    text = out.stdout + out.stderr
                    self.assertNotEqual(out.returncode, 0, f"s_client -tls1_1 connected:\n{text}")
                    self.assertRegex(text, r"(?i)alert protocol version|wrong version|"
                                           r"unsupported protocol",
                                     f"s_client -tls1_1 output:\n{text}")
                    refused += 1
                self.assert_still_serving(port)
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_tls_handshake_failures_total", listener="tls",
                    reason="error") == refused, 5),
                    "failures counted: " + str(g.metric("grelay_tls_handshake_failures_total",
                                                        listener="tls", reason="error")))
                self.assertEqual(g.metric("grelay_tls_handshakes_total", listener="tls"), 1)
                self.assertEqual(len(echo.conns), 1, "a refused client reached the upstream")

    def test_min_version_13_refuses_a_tls12_only_client(self):
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("tls13", "app", tls=self.tls(min_version="1.3"))
            with h.Grelay(cfg) as g:
                ctx12 = h.tls_client_context(self.certs.ca, maximum=ssl.TLSVersion.TLSv1_2)
                r = h.tls_stream_session(port, b"hello", context=ctx12, timeout=5)
                self.assertFalse(r.ok, f"a TLS 1.2 client was served: {r}")
                self.assertIsNotNone(r.handshake_error, str(r))
                ctx13 = h.tls_client_context(self.certs.ca, minimum=ssl.TLSVersion.TLSv1_3)
                r = h.tls_stream_session(port, h.Stream(13, 100 * h.KiB), context=ctx13)
                self.assertTrue(r.ok, str(r))
                self.assertEqual(r.version, "TLSv1.3")
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_tls_handshake_failures_total", listener="tls13", reason="error") == 1,
                    5))
                self.assertEqual(len(echo.conns), 1)

    def test_plaintext_client_is_closed_promptly_and_grelay_keeps_serving(self):
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("tls", "app", tls=self.tls())
            with h.Grelay(cfg) as g:
                for i in range(3):
                    outcome, data, took = h.try_request(
                        port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", timeout=5)
                    self.assertIn(outcome, ("eof", "reset"), f"plaintext client #{i}: {outcome}")
                    self.assertLess(took, 1.0, f"plaintext client #{i} closed after {took:.2f}s")
                    # At most a TLS alert record (content type 21) came back.
                    if data:
                        self.assertEqual(data[0], 21, f"plaintext client got {data[:64]!r}")
                        self.assertLessEqual(len(data), 64, f"plaintext client got {data!r}")
                self.assert_still_serving(port)
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_tls_handshake_failures_total", listener="tls", reason="error") == 3,
                    5))
                self.assertEqual(len(echo.conns), 1, "a plaintext client reached the upstream")
                self.assertEqual(g.metric("grelay_connections_active", listener="tls"), 0)

    def test_handshake_timeout_closes_silent_and_stalled_clients(self):
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("tls", "app", tls=self.tls(handshake_timeout="500ms"))
            with h.Grelay(cfg) as g:
                # Silent: connects and sends nothing.
                outcome, data, took = h.try_request(port, b"", timeout=5)
                self.assertIn(outcome, ("eof", "reset"), outcome)
                self.assertGreaterEqual(took, 0.45, f"closed after {took:.2f}s, before the timeout")
                self.assertLess(took, 2.0, f"closed after {took:.2f}s")
                # Stalled: the first 20 bytes of a real ClientHello, then nothing.
                hello = self._client_hello()
                outcome, data, took = h.try_request(port, hello[:20], timeout=5)
                self.assertIn(outcome, ("eof", "reset"), outcome)
                self.assertGreaterEqual(took, 0.45, f"closed after {took:.2f}s, before the timeout")
                self.assertLess(took, 2.0, f"closed after {took:.2f}s")
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_tls_handshake_failures_total", listener="tls",
                    reason="timeout") == 2, 5),
                    "timeouts counted: " + str(g.metric("grelay_tls_handshake_failures_total",
                                                        listener="tls", reason="timeout")))
                # A client slower than the timeout only in between its sessions is fine.
                self.assert_still_serving(port)
                self.assertEqual(len(echo.conns), 1)
                self.assertEqual(g.metric("grelay_tls_handshake_failures_total", listener="tls",
                                          reason="error"), 0)

    def _client_hello(self) -> bytes:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = h.tls_client_context(self.certs.ca).wrap_bio(incoming, outgoing,
                                                           server_hostname="localhost")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = outgoing.read()
        self.assertEqual(hello[0], 22, "not a handshake record")
        return hello

    def test_ciphers_and_ciphersuites_restrict_what_is_negotiated(self):
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("tls", "app", tls=self.tls(
                ciphers="ECDHE-RSA-AES256-GCM-SHA384",
                ciphersuites="TLS_CHACHA20_POLY1305_SHA256"))
            with h.Grelay(cfg):
                r = h.tls_stream_session(port, b"x" * 1000, context=h.tls_client_context(
                    self.certs.ca, maximum=ssl.TLSVersion.TLSv1_2))
                self.assertTrue(r.ok, str(r))
                self.assertEqual((r.version, r.cipher), ("TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384"))
                r = h.tls_stream_session(port, b"y" * 1000,
                                         context=h.tls_client_context(self.certs.ca))
                self.assertTrue(r.ok, str(r))
                self.assertEqual((r.version, r.cipher), ("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256"))
                # A TLS 1.2 client offering only other ciphers is refused.
                r = h.tls_stream_session(port, b"z", timeout=5, context=h.tls_client_context(
                    self.certs.ca, maximum=ssl.TLSVersion.TLSv1_2,
                    ciphers="ECDHE-RSA-AES128-GCM-SHA256"))
                self.assertFalse(r.ok, str(r))
                self.assertIsNotNone(r.handshake_error, str(r))


if __name__ == "__main__":
    h.main()
