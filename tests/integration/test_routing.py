#!/usr/bin/env python3
"""Routing by server name ([[listener.route]]): a listener sends each session to the
upstream pool of the route whose `sni` names the server its client asked for, else to its
own `upstream`.

- TLS passthrough (a listener without `tls`): grelay reads ahead of the ClientHello
  (MSG_PEEK; the bytes stay in the stream), so each route's real TLS server does the
  handshake itself: it sees the client's SNI, and a session's bytes echo back exactly.
  Exact names, wildcards at any depth, case-insensitive; any other name, no SNI: the
  listener's own pool.
- The ClientHello sent a byte at a time, or split over several TLS records, reaches the
  route's server byte for byte with what follows it. A client that is not TLS (an HTTP
  request), one without SNI and one that stops half-way through its ClientHello go to the
  listener's pool at once, with their bytes; one that sends nothing goes there after
  connect_timeout.
- Behind accept_proxy_protocol, the ClientHello after the balancer's header routes; the
  header is taken off and a route's pool with proxy_protocol gets grelay's own.
- TLS termination (a listener with `tls`): the name from grelay's own handshake chooses;
  `--check` warns of a route name no certificate has.
- Metrics: {listener, upstream} series for every pool of the listener (sent bytes, connect
  errors, connect durations), a refused route counted against its own pool; the access
  log's `upstream` and `sni` fields.
- A listener with routes and no upstream of its own resets a client asking for another
  name (or a plaintext one), before anything connects, counted and logged.
- ALPN: an ACME TLS-ALPN-01 challenge (acme-tls/1) goes to its responder whatever the
  name; on a terminating listener, the protocol grelay's handshake chose routes (h2).
- A reload that points a route at another pool moves new sessions there.
"""

import json
import os
import shutil
import signal
import socket
import struct
import tempfile
import time

import harness as h

API = ["api.example.test", "*.api.example.test"]


def refragment(hello: bytes, size: int) -> bytes:
    """The same ClientHello carried in TLS records of `size` bytes of handshake data."""
    assert hello[0] == 22
    length = struct.unpack("!H", hello[3:5])[0]
    body = hello[5:5 + length]
    out = b""
    for i in range(0, len(body), size):
        piece = body[i:i + size]
        out += hello[:3] + struct.pack("!H", len(piece)) + piece
    return out + hello[5 + length:]


def read_json(path):
    """The lines of an access log."""
    with open(path) as f:
        return [json.loads(x) for x in f.read().splitlines()]


class RoutingTest(h.TlsTest):

    def enter(self, server):
        server.__enter__()
        self.addCleanup(server.__exit__, None, None, None)
        return server

    def access_log(self):
        """A path for an access log, removed after the test."""
        directory = tempfile.mkdtemp(prefix="grelay-route-")
        self.addCleanup(shutil.rmtree, directory, True)
        return os.path.join(directory, "access.log")

    def routed(self, *, tls=None, connect_timeout="5s", access_log=None):
        """A config with listener `web` (pool web) and a route to pool api, each pool a
        SinkServer; returns the config, the api and web sinks and the port."""
        api = self.enter(h.SinkServer())
        web = self.enter(h.SinkServer())
        cfg = h.Config()
        cfg.upstream("web", [web.address])
        cfg.upstream("api", [api.address])
        kw = {"connect_timeout": connect_timeout,
              "route": [{"sni": API, "upstream": "api"}]}
        if tls:
            kw["tls"] = tls
        if access_log:
            kw["access_log"] = access_log
        port = cfg.listener("web", "web", **kw)
        cfg.with_admin()
        return cfg, api, web, port

    def send(self, port, pieces, *, gap=0.0, refused=False):
        """Sends `pieces` (`gap` s apart), half-closes and reads until EOF."""
        s = h.connect(port)
        try:
            for piece in pieces:
                s.sendall(piece)
                if gap:
                    time.sleep(gap)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            while s.recv(65536):
                pass
        except OSError:
            if not refused:  # (grelay resets a client whose pool has no server)
                raise
        finally:
            s.close()

    def received(self, sink, n):
        """The bytes of each of the sink's first `n` connections, once they ended."""
        self.assertTrue(sink.wait_connections(n, timeout=h.slack(20)),
                        f"{len(sink.conns)} connections, wanted {n}")
        return [bytes(r.data) for r in sink.records()]

    @staticmethod
    def route_misses(g):
        """grelay_route_misses_total of listener web, by reason."""
        return {dict(labels)["reason"]: v for (name, labels), v in g.metrics().items()
                if name == "grelay_route_misses_total" and dict(labels)["listener"] == "web"}

    def test_passthrough_routes_real_tls_by_client_hello(self):
        certs = self.certs
        api = self.enter(h.TlsEchoServer(*certs.server))
        web = self.enter(h.TlsEchoServer(*certs.server))
        cfg = h.Config()
        cfg.upstream("web", [web.address])
        cfg.upstream("api", [api.address])
        port = cfg.listener("web", "web", route=[{"sni": API, "upstream": "api"}])
        cfg.with_admin()
        ctx = h.tls_client_context(certs.ca, verify=False)
        cases = [("api.example.test", api), ("V2.Api.Example.Test", api),
                 ("a.b.api.example.test", api), ("www.example.test", web),
                 ("api.example.test.evil", web), ("xapi.example.test", web), (None, web)]
        size = h.scaled(256 * h.KiB)
        with h.Grelay(cfg) as g:
            for i, (name, server) in enumerate(cases):
                before = server.handshakes
                r = h.tls_stream_session(port, h.Stream(seed=i, length=size), context=ctx,
                                         server_hostname=name)
                self.assertTrue(r.ok, f"{name}: {r}")
                self.assertEqual(server.handshakes, before + 1, name)
                self.assertEqual(server.server_names[-1], name)
            self.assertGreater(g.metric("grelay_sent_bytes_total", listener="web", target="api"),
                               3 * size)
            self.assertGreater(g.metric("grelay_sent_bytes_total", listener="web", target="web"),
                               4 * size)
            for pool, sessions in (("api", 3), ("web", 4)):
                self.assertEqual(g.metric("grelay_upstream_connect_errors_total",
                                          listener="web", upstream=pool), 0)
                self.assertEqual(g.metric("grelay_upstream_connect_duration_seconds_count",
                                          listener="web", upstream=pool), sessions)

    def test_client_hello_in_pieces_reaches_the_route_byte_for_byte(self):
        cfg, api, web, port = self.routed()
        hello = h.tls_client_hello("api.example.test")
        tail = b"after the hello " * 64
        with h.Grelay(cfg):
            # A byte at a time: the first bytes say how many more make the record.
            self.send(port, [hello[i:i + 1] for i in range(len(hello))] + [tail], gap=0.001)
            self.assertEqual(self.received(api, 1), [hello + tail])
            # The handshake over records of 40 and of 1 byte of it, in uneven segments.
            for size in (40, 1):
                split = refragment(hello, size)
                pieces = [split[i:i + 97] for i in range(0, len(split), 97)]
                self.send(port, pieces + [tail], gap=0.002)
            self.assertEqual(self.received(api, 3)[1:],
                             [refragment(hello, 40) + tail, refragment(hello, 1) + tail])
            self.assertEqual(web.conns, [])

    def test_other_clients_go_to_the_listeners_pool_at_once(self):
        # connect_timeout is far longer than the waits below: nothing waits for it.
        cfg, api, web, port = self.routed(connect_timeout="60s")
        with h.Grelay(cfg) as g:
            # Not TLS: at once, with its bytes (the client has not closed yet).
            s = h.connect(port)
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            self.assertTrue(web.wait_connections(1, timeout=h.slack(10), ended=False))
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            while s.recv(100):
                pass
            s.close()
            # Half a ClientHello, then EOF: that half, to the listener's pool.
            hello = h.tls_client_hello("api.example.test")
            self.send(port, [hello[:len(hello) // 2]])
            # A ClientHello without SNI.
            plain = h.tls_client_hello(None)
            self.send(port, [plain])
            self.assertEqual(self.received(web, 3),
                             [b"GET / HTTP/1.0\r\n\r\n", hello[:len(hello) // 2], plain])
            self.assertEqual(api.conns, [])
            self.assertEqual(self.route_misses(g), {"unmatched": 1, "not_tls": 1,
                                                      "timeout": 0, "closed": 1})

    def test_behind_a_proxy_header_the_client_hello_that_follows_routes(self):
        api = self.enter(h.SinkServer())
        web = self.enter(h.SinkServer())
        cfg = h.Config()
        cfg.upstream("web", [web.address])
        cfg.upstream("api", [api.address], proxy_protocol="v1")
        port = cfg.listener("web", "web", accept_proxy_protocol=True,
                            route=[{"sni": API, "upstream": "api"}])
        header = b"PROXY TCP4 203.0.113.9 192.0.2.1 41000 443\r\n"
        hello = h.tls_client_hello("api.example.test")
        with h.Grelay(cfg):
            self.send(port, [header + hello])  # in one segment
            self.send(port, [header, hello[:9], hello[9:]], gap=0.02)
            # The header is the balancer's: taken off; the route's pool gets its own first.
            self.assertEqual(self.received(api, 2), [header + hello] * 2)
            other = h.tls_client_hello("www.example.test")
            self.send(port, [header + other])
            self.assertEqual(self.received(web, 1), [other])  # (web sends no header)

    def test_a_silent_client_goes_to_the_listeners_pool_after_connect_timeout(self):
        cfg, api, web, port = self.routed(connect_timeout="400ms")
        with h.Grelay(cfg) as g:
            s = h.connect(port)
            time.sleep(0.1)
            self.assertEqual(web.conns, [])
            self.assertTrue(web.wait_connections(1, timeout=h.slack(10), ended=False))
            s.sendall(b"late words")
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            while s.recv(100):
                pass
            s.close()
            self.assertEqual(self.received(web, 1), [b"late words"])
            self.assertEqual(api.conns, [])
            self.assertEqual(self.route_misses(g)["timeout"], 1)

    def test_termination_routes_by_the_handshakes_name(self):
        certs = self.certs
        log = self.access_log()
        cfg, api, web, port = self.routed(
            tls={"cert": certs.server[0], "key": certs.server[1]}, access_log=log)
        ctx = h.tls_client_context(certs.ca, verify=False)
        with h.Grelay(cfg) as g:
            for name in ("api.example.test", "www.example.test", "Z.API.example.test"):
                r = h.tls_stream_session(port, name.encode(), context=ctx,
                                         server_hostname=name, expect=b"")
                self.assertTrue(r.ok, f"{name}: {r}")
            self.assertEqual(self.received(api, 2),
                             [b"api.example.test", b"Z.API.example.test"])
            self.assertEqual(self.received(web, 1), [b"www.example.test"])
            self.assertEqual(self.route_misses(g), {"unmatched": 1})
            g.stop()
        lines = read_json(log)
        self.assertEqual(sorted((x["sni"], x["upstream"]) for x in lines),
                         [("Z.API.example.test", "api"), ("api.example.test", "api"),
                          ("www.example.test", "web")])

    def test_check_warns_of_route_names_no_certificate_has(self):
        certs = self.certs  # server: DNS:localhost only
        for strict, effect in ((False, "its clients get the default certificate"),
                               (True, "strict_sni refuses it: the route is never taken")):
            cfg = h.Config()
            cfg.upstream("web", ["127.0.0.1:9"])
            cfg.upstream("api", ["127.0.0.1:9"])
            cfg.listener("web", "web", route=[{"sni": ["localhost", "api.example.test"],
                                               "upstream": "api"}],
                         tls={"cert": certs.server[0], "key": certs.server[1],
                              "strict_sni": strict})
            path = os.path.join(tempfile.mkdtemp(prefix="grelay-route-"), "grelay.toml")
            with open(path, "w") as f:
                f.write(cfg.render())
            r = h.run_grelay(["-c", path, "--check"])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("1 route)", r.stdout)
            warnings = [x for x in r.stderr.splitlines() if "warning:" in x]
            self.assertEqual(len(warnings), 1, r.stderr)
            self.assertIn("no certificate has the route name 'api.example.test'", warnings[0])
            self.assertIn(effect, warnings[0])

    def test_a_refused_route_counts_against_its_pool(self):
        with h.RefusingPort() as refused:
            web = self.enter(h.SinkServer())
            cfg = h.Config()
            cfg.upstream("web", [web.address])
            cfg.upstream("api", [refused.address])
            port = cfg.listener("web", "web", route=[{"sni": API, "upstream": "api"}])
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                self.send(port, [h.tls_client_hello("api.example.test")], refused=True)
                self.send(port, [h.tls_client_hello("www.example.test")])
                self.received(web, 1)
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_upstream_connect_errors_total", listener="web", upstream="api") == 1,
                    h.slack(10)))
                self.assertEqual(g.metric("grelay_upstream_connect_errors_total",
                                          listener="web", upstream="web"), 0)
                self.assertEqual(g.metric("grelay_upstream_unavailable_total", listener="web"), 1)

    def test_a_listener_with_routes_only_resets_other_names(self):
        api = self.enter(h.SinkServer())
        log = self.access_log()
        cfg = h.Config()
        cfg.upstream("api", [api.address])
        port = cfg.listener("web", "api", access_log=log,
                            route=[{"sni": API, "upstream": "api"}])
        del cfg.listeners[0]["keys"]["upstream"]  # no pool of its own
        cfg.with_admin()
        hello = h.tls_client_hello("api.example.test")
        with h.Grelay(cfg) as g:
            self.assertIn("-> upstream (none: other names are reset), api.example.test (+1) -> api",
                          g.log())
            for other in (h.tls_client_hello("www.example.test"), b"GET / HTTP/1.0\r\n\r\n"):
                end, got, _ = h.try_request(port, other)
                self.assertEqual((end, got), ("reset", b""), other[:20])
            self.send(port, [hello])
            self.assertEqual(self.received(api, 1), [hello])
            self.assertEqual(self.route_misses(g), {"unmatched": 1, "not_tls": 1, "timeout": 0,
                                                    "closed": 0})
            self.assertTrue(h.wait_for(lambda: "which no route has" in g.log(), h.slack(5)))
            g.stop()
        lines = read_json(log)
        self.assertEqual(sorted((x["sni"] or "", x["upstream"] or "", x["end"]) for x in lines),
                         [("", "", "error"), ("api.example.test", "api", "normal"),
                          ("www.example.test", "", "error")])

    def test_alpn_routes_acme_challenges_and_h2(self):
        acme = self.enter(h.SinkServer())
        api = self.enter(h.SinkServer())
        web = self.enter(h.SinkServer())
        cfg = h.Config()
        for pool, sink in (("web", web), ("api", api), ("acme", acme)):
            cfg.upstream(pool, [sink.address])
        log = self.access_log()
        port = cfg.listener("web", "web", access_log=log, route=[
            {"alpn": ["acme-tls/1"], "upstream": "acme"},
            {"sni": API, "upstream": "api"}])
        with h.Grelay(cfg) as g:
            # The TLS-ALPN-01 challenge (RFC 8737) for a routed name goes to the responder.
            challenge = h.tls_client_hello("api.example.test", alpn=["acme-tls/1"])
            normal = h.tls_client_hello("api.example.test", alpn=["h2", "http/1.1"])
            other = h.tls_client_hello("www.example.test", alpn=["acme-tls/1"])
            for hello in (challenge, normal, other):
                self.send(port, [hello])
            self.assertEqual(self.received(acme, 2), [challenge, other])
            self.assertEqual(self.received(api, 1), [normal])
            self.assertEqual(web.conns, [])
            g.stop()
        # The access log has what each client offered, as nginx's $ssl_preread_alpn_protocols.
        self.assertEqual(sorted((x["sni"], x["alpn"], x["upstream"]) for x in read_json(log)),
                         [("api.example.test", "acme-tls/1", "acme"),
                          ("api.example.test", "h2,http/1.1", "api"),
                          ("www.example.test", "acme-tls/1", "acme")])

    def test_passthrough_sends_the_name_as_the_proxy_authority(self):
        api = self.enter(h.SinkServer())
        web = self.enter(h.SinkServer())
        cfg = h.Config()
        for pool, sink in (("web", web), ("api", api)):
            cfg.upstream(pool, [sink.address], proxy_protocol="v2",
                         proxy_protocol_tlvs=["authority"])
        port = cfg.listener("web", "web", route=[{"sni": API, "upstream": "api"}])
        routed = h.tls_client_hello("Z.api.example.test")
        other = h.tls_client_hello("www.example.test")
        plain = b"GET / HTTP/1.0\r\n\r\n"
        with h.Grelay(cfg):
            self.send(port, [routed])
            self.assertEqual(len(self.received(api, 1)), 1)
            for data in (other, plain):
                self.send(port, [data])
            self.assertEqual(len(self.received(web, 2)), 2)
        # The name as the client sent it (PP2_TYPE_AUTHORITY), then its bytes unchanged;
        # a client that named none gets no authority.
        got = []
        for sink in (api, web):
            for data in self.received(sink, len(sink.conns)):
                header, rest = h.split_proxy_v2(data)
                got.append((h.read_tlvs(header), rest))
        self.assertEqual(sorted(got), sorted([([(0x02, b"Z.api.example.test")], routed),
                                              ([(0x02, b"www.example.test")], other),
                                              ([], plain)]))

    def test_termination_routes_by_the_protocol_its_handshake_chose(self):
        certs = self.certs
        log = self.access_log()
        cfg, grpc, web, port = self.routed(
            tls={"cert": certs.server[0], "key": certs.server[1], "alpn": ["h2", "http/1.1"]},
            access_log=log)
        cfg.listeners[0]["keys"]["route"] = [{"alpn": ["h2"], "upstream": "api"}]
        for offered, sink in ((["h2", "http/1.1"], grpc), (["http/1.1"], web), (None, web)):
            ctx = h.tls_client_context(certs.ca, verify=False)
            if offered:
                ctx.set_alpn_protocols(offered)
            with h.Grelay(cfg):
                before = len(sink.conns)
                r = h.tls_stream_session(port, b"x", context=ctx, expect=b"")
                self.assertTrue(r.ok, f"{offered}: {r}")
                self.assertEqual(self.received(sink, before + 1)[-1], b"x")
        self.assertEqual(len(grpc.conns), 1)
        # Terminated here, the access log has the protocol the handshake chose.
        self.assertEqual([(x["alpn"], x["upstream"]) for x in read_json(log)],
                         [("h2", "api"), ("http/1.1", "web"), (None, "web")])

    def test_reload_moves_a_route(self):
        cfg, api, web, port = self.routed()
        other = self.enter(h.SinkServer())
        hello = h.tls_client_hello("api.example.test")
        with h.Grelay(cfg) as g:
            self.send(port, [hello])
            self.assertEqual(self.received(api, 1), [hello])
            cfg.upstream("other", [other.address])
            cfg.listeners[0]["keys"]["route"] = [{"sni": API, "upstream": "other"}]
            with open(g.config_path, "w") as f:
                f.write(cfg.render())
            g.send_signal(signal.SIGHUP)
            self.assertTrue(h.wait_for(lambda: g.metric("grelay_config_reloads_total",
                                                        cause="sighup", result="ok") == 1,
                                       h.slack(10)), g.log_tail())
            self.send(port, [hello])
            self.assertEqual(self.received(other, 1), [hello])
            self.assertEqual(len(api.conns), 1)
            self.assertGreater(g.metric("grelay_sent_bytes_total", listener="web", target="other"),
                               0)


if __name__ == "__main__":
    h.main()
