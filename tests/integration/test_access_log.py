#!/usr/bin/env python3
"""[[listener]] access_log: one JSON line per finished session, with the client (the one a
PROXY protocol header names, when the listener accepts them), the server, the duration,
the bytes each way, how it ended and the mirrors. Lines reach the file within about two
seconds and all of them by the time grelay exits; a path that cannot be opened stops
startup with a clear error; a full disk drops lines (counted), never traffic; SIGUSR1
reopens the file (logrotate). access_log = "-" writes grelay's standard output (a pipe, as
in a container): lines of several workers never cut each other."""

import json
import os
import shutil
import signal
import socket
import tempfile
import time

import harness as h


def read_lines(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


class AccessLogTest(h.GrelayTest):
    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="grelay-access-")
        self.path = os.path.join(self.dir, "access.log")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_one_line_per_session(self):
        with h.EchoServer() as echo, h.RefusingPort() as dead, h.SinkServer() as mirror:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            cfg.upstream("dead", [dead.address])
            web = cfg.listener("web", "app", access_log=self.path, idle_timeout="500ms",
                               mirrors=[{"name": "m", "address": mirror.address}])
            bad = cfg.listener("bad", "dead", access_log=self.path)
            lb = cfg.listener("lb", "app", access_log=self.path, accept_proxy_protocol=True)
            with h.Grelay(cfg) as g:
                seen = {}
                stream = h.Stream(1, h.scaled(300 * h.KiB) + 7)
                r = h.stream_session(web, stream,
                                     on_connect=lambda s: seen.update(port=s.getsockname()[1]))
                self.assertTrue(r.ok, str(r))
                end, _, _ = h.try_request(bad, b"x")
                self.assertEqual(end, "reset")
                # Idle: closed by idle_timeout after 5 bytes each way.
                with h.connect(web) as s:
                    s.sendall(b"hello")
                    self.assertEqual(h.read_outcome(s, 5), ("eof", b"hello"))
                with h.connect(lb) as s:
                    s.sendall(b"PROXY TCP4 203.0.113.9 192.0.2.1 41000 443\r\nping")
                    s.shutdown(socket.SHUT_WR)
                    self.assertEqual(h.read_outcome(s, 5), ("eof", b"ping"))
                # Written while grelay runs, within about two seconds.
                self.assertTrue(h.wait_for(lambda: len(read_lines(self.path)) == 4, 5),
                                read_lines(self.path))
            lines = read_lines(self.path)
        self.assertEqual(len(lines), 4, lines)
        by_end = {}
        for line in lines:
            self.assertEqual(set(line), {"time", "listener", "worker", "session", "id", "client",
                                         "upstream", "server", "duration", "queue", "connect",
                                         "request_bytes", "response_bytes", "end", "reset",
                                         "tls", "sni", "alpn", "tls_version", "tls_cipher",
                                         "client_cert", "mirrors",
                                         "mirrors_cut"})
            by_end.setdefault((line["listener"], line["end"]), []).append(line)
        normal = [x for x in by_end[("web", "normal")] if x["request_bytes"] == len(stream)]
        self.assertEqual(len(normal), 1, lines)
        n = normal[0]
        self.assertEqual(n["client"], f"127.0.0.1:{seen['port']}")
        self.assertEqual((n["upstream"], n["server"]), ("app", echo.address))
        self.assertEqual(n["response_bytes"], len(stream))
        self.assertEqual((n["reset"], n["tls"], n["sni"], n["alpn"], n["mirrors"],
                          n["mirrors_cut"]), (False, False, None, None, 1, 0))
        self.assertGreater(n["duration"], 0)
        self.assertEqual(n["queue"], 0)
        self.assertGreaterEqual(n["connect"], 0)
        self.assertLess(n["connect"], n["duration"])
        self.assertRegex(n["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        failed = by_end[("bad", "connect_failed")][0]
        self.assertEqual((failed["upstream"], failed["server"], failed["connect"],
                          failed["reset"], failed["request_bytes"]),
                         ("dead", None, None, True, 0))  # nothing is read before a connect
        idle = by_end[("web", "idle_timeout")][0]
        self.assertEqual((idle["request_bytes"], idle["response_bytes"]), (5, 5))
        self.assertGreaterEqual(idle["duration"], 0.45)
        proxied = by_end[("lb", "normal")][0]
        self.assertEqual(proxied["client"], "203.0.113.9:41000")
        self.assertEqual(proxied["request_bytes"], 4)  # the header is not the client's stream

    def test_tls_sessions_log_the_name_the_client_asked_for(self):
        why = h.Certs.available()
        if why:
            self.skipTest(why)
        import ssl
        certs = h.Certs()
        self.addCleanup(certs.cleanup)
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("tls", "app", access_log=self.path,
                                tls={"cert": certs.server[0], "key": certs.server[1]})
            with h.Grelay(cfg):
                for name, ctx in (("localhost", h.tls_client_context(certs.ca)),
                                  (None, h.tls_client_context(verify=False))):
                    with ctx.wrap_socket(h.connect(port), server_hostname=name) as s:
                        s.sendall(b"ping")
                        self.assertEqual(s.recv(4), b"ping")
                        cipher = s.cipher()[0]
                # A name the certificate does not have: the client gives up in the
                # handshake, and the line still says what it asked for.
                with self.assertRaises(ssl.SSLError):
                    h.tls_client_context(certs.ca).wrap_socket(
                        h.connect(port), server_hostname="other.example").close()
                self.assertTrue(h.wait_for(lambda: len(read_lines(self.path)) == 3, 5),
                                read_lines(self.path))
            lines = read_lines(self.path)
        got = sorted(((x["sni"] or ""), x["end"], x["tls"], x["request_bytes"], x["tls_version"])
                     for x in lines)
        self.assertEqual(got, [("", "normal", True, 4, "TLSv1.3"),
                               ("localhost", "normal", True, 4, "TLSv1.3"),
                               ("other.example", "error", True, 0, None)], lines)
        # The cipher of each completed handshake, as OpenSSL names it; none for the failed one.
        self.assertEqual(sorted(str(x["tls_cipher"]) for x in lines),
                         sorted([cipher, cipher, "None"]), lines)

    def test_every_line_is_written_by_exit(self):
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app", access_log=self.path)
            g = h.Grelay(cfg).start()
            try:
                results = h.run_concurrently(
                    h.stream_session, [(port, h.Stream(10 + i, 4 * h.KiB)) for i in range(50)])
                self.assertTrue(all(r.ok for r in results))
            finally:
                g.stop()
        lines = read_lines(self.path)
        self.assertEqual(len(lines), 50)
        self.assertEqual(len({(x["worker"], x["session"]) for x in lines}), 50,
                         "worker + session must name each session once")
        self.assertEqual(len({x["id"] for x in lines}), 50, "each session has its own id")
        self.assertTrue(all(x["id"].endswith(f"-{x['worker']}-{x['session']}") for x in lines))

    def test_sigusr1_reopens_the_log_for_logrotate(self):
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app", access_log=self.path)
            with h.Grelay(cfg) as g:
                for i in range(3):
                    self.assertTrue(h.stream_session(port, h.Stream(40 + i, 4 * h.KiB)).ok)
                self.assertTrue(h.wait_for(lambda: len(read_lines(self.path)) == 3, 5))
                # logrotate: rename, then SIGUSR1 (postrotate).
                rotated = self.path + ".1"
                os.rename(self.path, rotated)
                g.send_signal(signal.SIGUSR1)
                self.assertTrue(h.wait_for(
                    lambda: "SIGUSR1: reopened access log" in g.log(), 5), g.log_tail())
                self.assertTrue(os.path.exists(self.path), "no new file after SIGUSR1")
                for i in range(2):
                    self.assertTrue(h.stream_session(port, h.Stream(50 + i, 4 * h.KiB)).ok)
                self.assertTrue(h.wait_for(lambda: len(read_lines(self.path)) == 2, 5))
                self.assertEqual(len(read_lines(rotated)), 3, "the old file changed")
                # SIGUSR2 must not kill a proxy (a stray signal is logged, not fatal).
                g.send_signal(signal.SIGUSR2)
                self.assertTrue(h.wait_for(lambda: "SIGUSR2: ignored" in g.log(), 5))
                self.assertTrue(g.alive())
                self.assertTrue(h.stream_session(port, h.Stream(60, 4 * h.KiB)).ok)
            self.assertEqual(len(read_lines(self.path)), 3)

    def test_dash_writes_whole_lines_to_standard_output(self):
        """access_log = "-": grelay's standard output, a pipe here as in a container; two
        workers and two listeners write it at once, and every line arrives whole."""
        import subprocess
        import threading
        with h.EchoServer() as echo:
            cfg = h.Config(workers=2)
            cfg.upstream("app", [echo.address])
            ports = [cfg.listener(name, "app", access_log="-") for name in ("a", "b")]
            conf = os.path.join(self.dir, "grelay.toml")
            with open(conf, "w") as f:
                f.write(cfg.render())
            err = open(os.path.join(self.dir, "grelay.log"), "w+")
            self.addCleanup(err.close)
            proc = subprocess.Popen([h.GRELAY_BIN, "-c", conf], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=err)
            out = []

            def read_slowly():
                # A slow reader keeps the pipe full, so both workers' writes wait on it at
                # once: where lines longer than the kernel's atomic size would be cut.
                data = b""
                while chunk := os.read(proc.stdout.fileno(), 4096):
                    data += chunk
                    time.sleep(0.001)
                out.append(data)

            reader = threading.Thread(target=read_slowly)
            reader.start()
            try:
                # (Ready once it says so: a probe connection would be a session too.)
                self.assertTrue(h.wait_for(
                    lambda: " running: " in open(err.name).read(), 15))
                proc.send_signal(signal.SIGUSR1)  # nothing to reopen: still the same pipe
                n = 1000
                results = h.run_concurrently(
                    h.stream_session,
                    [(ports[i % 2], h.Stream(300 + i, 2 * h.KiB)) for i in range(n)])
                self.assertTrue(all(r.ok for r in results))
            finally:
                proc.send_signal(signal.SIGTERM)
                self.assertEqual(proc.wait(30), 0)
                reader.join(30)
            text = out[0].decode()
            lines = [json.loads(x) for x in text.splitlines()]  # a cut line fails here
            self.assertEqual(len(lines), n, text[-2000:])
            self.assertEqual(sorted(x["listener"] for x in lines), ["a"] * 500 + ["b"] * 500)
            self.assertEqual({x["worker"] for x in lines}, {0, 1})
            err.seek(0)
            self.assertNotIn("cannot reopen", err.read())

    def test_an_access_log_that_cannot_be_opened_stops_startup(self):
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            cfg.listener("web", "app", access_log=os.path.join(self.dir, "no", "such", "dir.log"))
            g = h.Grelay(cfg, expect_exit=None)
            with self.assertRaises(h.GrelayError):
                g.start()
            self.assertNotEqual(g.wait_exit(10), 0)
            self.assertIn("listener web: cannot open access log", g.log())
            self.assertIn("No such file or directory", g.log())

    def test_a_full_disk_drops_lines_not_traffic(self):
        if not os.path.exists("/dev/full"):
            self.skipTest("no /dev/full")
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app", access_log="/dev/full")
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                for i in range(5):
                    r = h.stream_session(port, h.Stream(30 + i, 64 * h.KiB))
                    self.assertTrue(r.ok, str(r))
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_access_log_dropped_lines_total", listener="web") == 5, 5))
                # The counter goes up just before the line is logged.
                self.assertTrue(h.wait_for(
                    lambda: "access log /dev/full: write failed: No space left on device"
                    in g.log(), 5), g.log_tail())


if __name__ == "__main__":
    h.main()
