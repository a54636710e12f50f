#!/usr/bin/env python3
"""Upstream servers and mirrors on Unix domain sockets ("unix:/run/app.sock", and
"unix:@name" in the abstract namespace): sessions reach them byte for byte in both
directions (half-close included), on every relay path; a mirror on a socket gets the
client's bytes; the access log names the socket (as valid JSON, whatever the path holds);
the tap records the sessions and exports them; health checks mark a server whose socket
is gone down and bring it back; TLS reaches a socket server by the name in tls.sni; and
a listener cannot be a Unix socket (a clear --check error)."""

import hashlib
import os
import shutil
import socket
import tempfile

import harness as h


class UnixSocketTest(h.GrelayTest):
    def setUp(self):
        super().setUp()
        # A directory whose name JSON must escape: the access log's "server" carries it.
        self.dir = tempfile.mkdtemp(prefix='grelay-unix-"q\\')
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.abstract = f"@grelay-test-{os.getpid()}"

    def path(self, name):
        return os.path.join(self.dir, name)

    def test_sessions_and_mirror_reach_unix_sockets_byte_for_byte(self):
        """A pool of a socket file and an abstract socket, a mirror on a socket file: every
        session echoes byte for byte, round robin uses both servers, the mirror gets each
        session's request bytes, the access log and the metrics name the servers, and the
        tap exports every session."""
        log = self.path("access.log")
        tap_dir = self.path("tap")
        with h.EchoServer(unix=self.path("app.sock")) as a, \
                h.EchoServer(unix=self.abstract) as b, \
                h.SinkServer(unix=self.path("mirror.sock"), keep="sha256") as sink:
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [a.address, {"address": b.address, "name": "abstract"}])
            port = cfg.listener("web", "app", access_log=log, tap={"path": tap_dir},
                                mirrors=[{"name": "m", "address": sink.address}])
            with h.Grelay(cfg) as g:
                n = 8
                streams = [h.Stream(40 + i, h.scaled(1 * h.MiB + i * 97 * h.KiB, 64 * h.KiB))
                           for i in range(n)]
                results = h.run_concurrently(
                    lambda i: h.stream_session(port, streams[i], index=i),
                    [(i,) for i in range(n)])
                for r in results:
                    self.assertTrue(r.ok, str(r))
                # Small exchanges too (the first bytes of a session, one chunk each way).
                for i in range(4):
                    r = h.stream_session(port, b"ping %d" % i)
                    self.assertTrue(r.ok, str(r))
                self.assertTrue(h.wait_for(lambda: len(h.read_json_lines(log)) == n + 4, 10))
                self.assertEqual(len(a.conns) + len(b.conns), n + 4)
                self.assertGreater(len(a.conns), 0)
                self.assertGreater(len(b.conns), 0)
                self.assertEqual(g.metric("grelay_upstream_server_sessions_total",
                                          upstream="app", server="abstract"), len(b.conns))
                expected = sorted([hashlib.sha256(s.bytes()).hexdigest() for s in streams] +
                                  [hashlib.sha256(b"ping %d" % i).hexdigest() for i in range(4)])
                records = sink.records()
                self.assertEqual(sorted(r.sha256 for r in records), expected)
                lines = h.read_json_lines(log)
                self.assertEqual({line["server"] for line in lines}, {a.address, b.address})
                self.assertTrue(all(line["end"] == "normal" for line in lines), lines)
                self.assertEqual(g.metric("grelay_mirror_connect_errors_total",
                                          listener="web", mirror="m"), 0)
            r = h.run_grelay(["tap", "export", "--pcap", self.path("out.pcap"), tap_dir],
                             timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(f"exported {n + 4} sessions", r.stdout + r.stderr)

    def test_health_checks_follow_a_socket_that_goes_away_and_comes_back(self):
        """A server whose socket file is removed is marked down by the health checks and
        sessions go to the other; served again at the same path, it is back."""
        gone = self.path("gone.sock")
        with h.EchoServer(unix=self.path("stays.sock")) as stays:
            first = h.EchoServer(unix=gone)
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [first.address, stays.address], check_interval="200ms",
                         check_timeout="300ms", fail_timeout="1h")
            port = cfg.listener("web", "app")
            with h.Grelay(cfg) as g:
                up = lambda: g.metric("grelay_upstream_server_up", upstream="app", server="0")
                self.assertTrue(h.wait_for(lambda: up() == 1, 5))
                first.stop()  # closes and unlinks the socket
                self.assertTrue(h.wait_for(lambda: up() == 0, 5), "never marked down")
                before = len(stays.conns)
                for i in range(6):
                    r = h.stream_session(port, h.Stream(i, 32 * h.KiB))
                    self.assertTrue(r.ok, str(r))
                self.assertEqual(len(stays.conns), before + 6)
                with h.EchoServer(unix=gone) as again:
                    self.assertTrue(h.wait_for(lambda: up() == 1, 5), "never back")
                    results = [h.stream_session(port, h.Stream(10 + i, 8 * h.KiB))
                               for i in range(4)]
                    self.assertTrue(all(r.ok for r in results), results)
                    self.assertGreater(len(again.conns), 0)
                self.assertIn(f"server {first.address} marked down", g.log_tail(200))

    def test_a_proxy_protocol_header_carries_the_tcp_client(self):
        """proxy_protocol toward a socket server: the header names the TCP client and the
        address it connected to, then the client's bytes follow unchanged."""
        with h.SinkServer(unix=self.path("pp.sock"), keep="bytes") as sink:
            cfg = h.Config()
            cfg.upstream("app", [sink.address], proxy_protocol="v1")
            port = cfg.listener("web", "app")
            with h.Grelay(cfg):
                c = h.connect(port)
                client_port = c.getsockname()[1]
                c.sendall(b"hello over a socket")
                c.shutdown(socket.SHUT_WR)
                self.assertEqual(c.recv(10), b"")
                c.close()
                (record,) = sink.records()
            self.assertEqual(bytes(record.data),
                             f"PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {port}\r\n"
                             .encode() + b"hello over a socket")

    def test_tls_reaches_a_socket_server_by_the_name_in_sni(self):
        """TLS toward a server on a socket verifies its certificate against tls.sni (it has
        no host name of its own) and sends that name."""
        why = h.Certs.available()
        if why:
            self.skipTest(why)
        certs = h.Certs()
        self.addCleanup(certs.cleanup)
        with h.TlsEchoServer(*certs.upstream, unix=self.path("tls.sock")) as up:
            cfg = h.Config()
            cfg.upstream("app", [up.address], tls={"ca": certs.ca, "sni": "localhost"})
            port = cfg.listener("web", "app")
            with h.Grelay(cfg):
                for i in range(3):
                    r = h.stream_session(port, h.Stream(i, 256 * h.KiB))
                    self.assertTrue(r.ok, str(r))
            self.assertEqual(up.server_names, ["localhost"] * 3)

    def test_unix_socket_addresses_are_checked(self):
        """Where a Unix socket cannot go, --check says why."""
        cases = [
            ('[upstream.app]\nservers = ["127.0.0.1:1"]\n[[listener]]\nname = "web"\n'
             'listen = "unix:/run/grelay.sock"\nupstream = "app"\n',
             "a Unix socket can only be an upstream server or a mirror"),
            ('[upstream.app]\nservers = ["unix:"]\n[[listener]]\nname = "web"\n'
             'listen = "127.0.0.1:1"\nupstream = "app"\n', "missing socket path"),
            ('[upstream.app]\nservers = ["unix:/' + "x" * 120 + '"]\n[[listener]]\n'
             'name = "web"\nlisten = "127.0.0.1:1"\nupstream = "app"\n',
             "longer than 107 bytes"),
            ('[upstream.app]\nservers = ["unix:/run/app.sock"]\ntls = true\n[[listener]]\n'
             'name = "web"\nlisten = "127.0.0.1:1"\nupstream = "app"\n', "set tls.sni"),
        ]
        for text, message in cases:
            path = self.path("bad.toml")
            with open(path, "w") as f:
                f.write(text)
            r = h.run_grelay(["-c", path, "--check"])
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn(message, r.stdout + r.stderr)


if __name__ == "__main__":
    h.main()
