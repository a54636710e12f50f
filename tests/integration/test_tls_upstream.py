#!/usr/bin/env python3
"""TLS toward upstream servers, with verification (issue 5 item 5.5).

Python ssl echo upstreams with certificates made at test time (harness.Certs):

- a valid CA-signed certificate, verified against the server address's IP (no SNI sent)
  or against sni = "localhost" (sent): concurrent sessions byte for byte; also behind a
  TLS listener (TLS on both sides);
- an expired certificate, a self-signed one, one for another host (IP and name), a revoked
  one (crl),
  and our CA's certificate checked against the system store (tls = true): each refused
  like a failed connect: the client is reset without data,
  grelay_upstream_tls_failures_total and grelay_upstream_connect_errors_total count it,
  and the log line names the upstream and the reason;
- with crl, a server whose certificate the list revokes is refused the same way
  ("certificate revoked"); a current one is served, and the list's nextUpdate is a gauge;
- verify = false accepts the self-signed certificate;
- a pool [self-signed server, good server] fails over to the good one for every session;
- an upstream that accepts TCP but never answers the handshake is given up after
  connect_timeout;
- sessions resume the TLS session of the connection before to the same server under the
  same name (TLS 1.3 and 1.2), counted in grelay_upstream_tls_resumed_handshakes_total;
  never under another name (forward_sni); not with session_reuse = false;
- health checks of a TLS pool complete a verified handshake and close with close_notify:
  a server with a certificate for another host and a plaintext server (which accepts the
  TCP connect a bare check would pass) are marked down before any session meets them.
"""

import re
import socket
import subprocess

import harness as h

PAYLOAD = b"request that must not reach a refused upstream\n"


class TlsUpstreamTest(h.TlsTest):
    def test_valid_certificate_is_verified_and_streams_are_byte_exact(self):
        c = self.certs
        with h.TlsEchoServer(*c.upstream) as up:
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("by_ip", [up.address], tls={"ca": c.ca})
            cfg.upstream("by_sni", [up.address], tls={"ca": c.ca, "sni": "localhost"})
            p_ip = cfg.listener("by_ip", "by_ip")
            p_sni = cfg.listener("by_sni", "by_sni")
            p_both = cfg.listener("both", "by_sni", tls={"cert": c.server[0], "key": c.server[1]})
            with h.Grelay(cfg) as g:
                streams = [h.Stream(4000 + i, h.scaled((i + 1) * 700 * h.KiB)) for i in range(6)]
                args = [((p_ip if i % 2 else p_sni), s) for i, s in enumerate(streams)]
                results = h.run_concurrently(h.stream_session, args)
                bad = [r for r in results if not r.ok]
                self.assertEqual(bad, [], "\n".join(map(str, bad)))
                ctx = h.tls_client_context(c.ca)
                tls_streams = [h.Stream(4100 + i, h.scaled(1536 * h.KiB) + i) for i in range(3)]
                results = h.run_concurrently(
                    h.tls_stream_session, [(p_both, s) for s in tls_streams],
                    kwargs_list=[{"context": ctx, "index": i} for i in range(3)])
                bad = [r for r in results if not getattr(r, "ok", False)]
                self.assertEqual(bad, [], "\n".join(map(str, bad)))
                self.assertTrue(up.wait_connections(9, timeout=30))
                self.assertEqual(sorted(r.received for r in up.conns),
                                 sorted(len(s) for s in streams + tls_streams))
                self.assertTrue(all(r.end == "eof" for r in up.conns),
                                [r.end for r in up.conns])
                # SNI: none for an IP address, the configured name otherwise.
                self.assertEqual(sorted(up.server_names, key=str),
                                 sorted([None] * 3 + ["localhost"] * 6, key=str))
                for name in ("by_ip", "by_sni", "both"):
                    self.assertEqual(g.metric("grelay_upstream_tls_failures_total",
                                              listener=name), 0, name)

    def _refused(self, g: h.Grelay, port: int, listener: str, server, reason: str):
        outcome, data, took = h.try_request(port, PAYLOAD, timeout=10)
        self.assertEqual(outcome, "reset", f"{listener}: client saw {outcome}")
        self.assertEqual(data, b"", f"{listener}: client got bytes")
        self.assertLess(took, h.slack(5.0), f"{listener}: reset after {took:.1f}s")
        self.assertTrue(h.wait_for(lambda: g.metric("grelay_upstream_tls_failures_total",
                                                    listener=listener) == 1, 5),
                        f"{listener}: upstream TLS failures = "
                        f"{g.metric('grelay_upstream_tls_failures_total', listener=listener)}")
        self.assertEqual(g.metric("grelay_upstream_connect_errors_total", listener=listener), 1)
        self.assertEqual(g.metric("grelay_upstream_unavailable_total", listener=listener), 1)
        pattern = (rf"listener {re.escape(listener)}: TLS: upstream "
                   rf"{re.escape(server.address)}: .*{reason}")
        self.assertTrue(h.wait_for(lambda: re.search(pattern, g.log()), 5),
                        f"{listener}: no log line matching {pattern!r}")
        self.assertEqual(sum(r.received for r in server.conns), 0,
                         f"{listener}: the refused upstream received plaintext")

    def test_alpn_offers_the_pools_protocols(self):
        with h.TlsEchoServer(*self.certs.upstream, alpn=["http/1.1", "h2"]) as both, \
                h.TlsEchoServer(*self.certs.upstream, alpn=["spdy/3"]) as other:
            cfg = h.Config()
            tls = {"ca": self.certs.ca, "sni": "localhost", "alpn": ["h2", "http/1.1"]}
            cfg.upstream("both", [both.address], tls=tls)
            cfg.upstream("other", [other.address], tls=tls)
            ports = [cfg.listener("both", "both"), cfg.listener("other", "other")]
            with h.Grelay(cfg):
                for port in ports:
                    self.assertTrue(h.stream_session(port, h.Stream(77, 64 * h.KiB)).ok)
            # The server chooses among what grelay offers (Python's server: its own order);
            # one with nothing in common goes on without ALPN.
            self.assertEqual(both.protocols, ["http/1.1"])
            self.assertEqual(other.protocols, [None])

    def test_groups_are_the_key_exchanges_offered_to_servers(self):
        with h.TlsEchoServer(*self.certs.upstream) as server:
            server.context.set_ecdh_curve("secp384r1")  # a server that takes P-384 only
            cfg = h.Config()
            cfg.with_admin()
            base = {"ca": self.certs.ca, "sni": "localhost"}
            ports = {}
            for name, groups in (("default", None), ("p384", ["X25519", "P-384"]),
                                 ("p256", ["P-256"])):
                cfg.upstream(name, [server.address],
                             tls={**base, **({"groups": groups} if groups else {})})
                ports[name] = cfg.listener(name, name)
            with h.Grelay(cfg) as g:
                for name in ("default", "p384"):
                    r = h.stream_session(ports[name], h.Stream(5, 64 * h.KiB))
                    self.assertTrue(r.ok, f"{name}: {r}")
                r = h.stream_session(ports["p256"], h.Stream(6, 64 * h.KiB), expect=b"")
                self.assertEqual((r.received, r.end), (0, "reset"), str(r))
                self.assertEqual(g.metric("grelay_upstream_tls_failures_total", listener="p256"),
                                 1)
        self.assertEqual(server.handshakes, 2)

    def test_a_client_certificate_for_servers_that_ask(self):
        grelay_cert = self.certs.client("grelay", "/CN=grelay")
        with h.TlsEchoServer(*self.certs.upstream, client_ca=self.certs.ca) as server:
            cfg = h.Config()
            base = {"ca": self.certs.ca, "sni": "localhost"}
            cfg.upstream("with", [server.address],
                         tls={**base, "cert": grelay_cert[0], "key": grelay_cert[1]})
            cfg.upstream("without", [server.address], tls=base, max_fails=0)
            with_cert = cfg.listener("with", "with")
            without = cfg.listener("without", "without")
            with h.Grelay(cfg):
                stream = h.Stream(78, h.scaled(512 * h.KiB))
                self.assertTrue(h.stream_session(with_cert, stream).ok)
                # Without one, the server refuses the handshake: the session gets no server.
                r = h.stream_session(without, h.Stream(79, 1024))
                self.assertFalse(r.ok)
                self.assertEqual(r.received, 0)
            self.assertEqual(server.client_subjects, ["grelay"])

    def test_forward_sni_sends_and_verifies_the_name_the_client_asked_for(self):
        import ssl
        c = self.certs
        with h.TlsEchoServer(*c.upstream) as server:
            cfg = h.Config()
            cfg.upstream("app", [server.address], max_fails=0,
                         tls={"ca": c.ca, "forward_sni": True})
            port = cfg.listener("web", "app", tls={"cert": c.server[0], "key": c.server[1]})
            with h.Grelay(cfg):
                def session(sni):
                    ctx = h.tls_client_context(c.ca)
                    ctx.check_hostname = False
                    try:
                        with ctx.wrap_socket(h.connect(port), server_hostname=sni) as s:
                            s.sendall(b"ping")
                            return s.recv(4)
                    except (ssl.SSLError, OSError) as e:
                        return repr(e)
                # The client's name goes on, and the upstream's certificate has it.
                self.assertEqual(session("localhost"), b"ping")
                # No name: the pool's own (none for an IP address, verified as the IP).
                self.assertEqual(session(None), b"ping")
                # A name the upstream's certificate lacks: its handshake fails.
                self.assertNotEqual(session("api.test"), b"ping")
            self.assertEqual(server.server_names, ["localhost", None, "api.test"])
            self.assertEqual(server.handshakes, 2)  # grelay refused the third certificate

    def test_sessions_resume_with_the_same_server_and_name(self):
        """session_reuse: the second and later connections to a server resume the session
        of the one before (TLS 1.3 and 1.2); never under another name (forward_sni), and
        not at all with session_reuse = false."""
        import ssl
        c = self.certs
        servers = [h.TlsEchoServer(*c.upstream) for _ in range(4)]
        servers[1].context.maximum_version = ssl.TLSVersion.TLSv1_2
        with servers[0] as v13, servers[1] as v12, servers[2] as off, servers[3] as fwd, \
                h.EchoServer() as echo:
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("v13", [v13.address], tls={"ca": c.ca, "sni": "localhost"})
            cfg.upstream("v12", [v12.address], tls={"ca": c.ca, "sni": "localhost"})
            cfg.upstream("off", [off.address], tls={"ca": c.ca, "session_reuse": False})
            cfg.upstream("fwd", [fwd.address], tls={"ca": c.ca, "forward_sni": True})
            # A server that sends no new ticket after a resumption (grelay's own TLS
            # listener): the one session still resumes every time.
            cfg.upstream("plain", [echo.address])
            inner = cfg.listener("inner", "plain", tls={"cert": c.server[0], "key": c.server[1]})
            cfg.upstream("grelay", [f"127.0.0.1:{inner}"], tls={"ca": c.ca, "sni": "localhost"})
            ports = {name: cfg.listener(name, name) for name in ("v13", "v12", "off", "grelay")}
            ports["fwd"] = cfg.listener("fwd", "fwd",
                                        tls={"cert": c.server[0], "key": c.server[1]})
            with h.Grelay(cfg) as g:
                for name in ("v13", "v12", "off", "grelay"):
                    for i in range(4):
                        data = f"{name} {i}".encode()
                        with h.connect(ports[name]) as s:
                            s.sendall(data)
                            s.shutdown(socket.SHUT_WR)
                            got = b""
                            while chunk := s.recv(4096):
                                got += chunk
                            self.assertEqual(got, data)
                ctx = h.tls_client_context(c.ca)
                ctx.check_hostname = False
                for sni in ("localhost", None, "localhost", None):
                    with ctx.wrap_socket(h.connect(ports["fwd"]), server_hostname=sni) as s:
                        s.sendall(b"ping")
                        self.assertEqual(s.recv(4), b"ping")
                self.assertEqual(v13.resumed, [False, True, True, True])
                self.assertEqual(v12.resumed, [False, True, True, True])
                self.assertEqual(off.resumed, [False] * 4)
                # The name sent and verified is part of the key: "localhost", then none
                # (the pool's own: the IP address, verified as such).
                self.assertEqual(fwd.server_names, ["localhost", None, "localhost", None])
                self.assertEqual(fwd.resumed, [False, False, True, True])
                self.assertEqual(g.metric("grelay_tls_resumed_handshakes_total",
                                          listener="inner"), 3)
                for name, resumed in (("v13", 3), ("v12", 3), ("off", 0), ("fwd", 2),
                                      ("grelay", 3)):
                    self.assertEqual(g.metric("grelay_upstream_tls_resumed_handshakes_total",
                                              listener=name, upstream=name), resumed, name)

    def test_bad_certificates_are_refused_with_a_reason(self):
        c = self.certs
        revoked = c._signed("up_revoked", "/CN=localhost", c.NAMES)
        crl = c.crl([revoked[0]], name="servers-crl.pem")
        with h.TlsEchoServer(*c.expired) as expired, \
                h.TlsEchoServer(*c.self_signed) as self_signed, \
                h.TlsEchoServer(*c.wrong_host) as wrong, \
                h.TlsEchoServer(*revoked) as revoked_server, \
                h.TlsEchoServer(*c.upstream) as good:
            cases = {
                # listener: (server, upstream tls, reason in the log)
                "expired": (expired, {"ca": c.ca}, "certificate has expired"),
                "self_signed": (self_signed, {"ca": c.ca}, "self-signed certificate"),
                "wrong_ip": (wrong, {"ca": c.ca}, "IP address mismatch"),
                "wrong_name": (wrong, {"ca": c.ca, "sni": "localhost"}, "hostname mismatch"),
                "system_store": (good, True, "unable to get local issuer certificate"),
                "revoked": (revoked_server, {"ca": c.ca, "crl": crl}, "certificate revoked"),
            }
            cfg = h.Config()
            cfg.with_admin()
            ports = {}
            for name, (server, tls, _) in cases.items():
                cfg.upstream(name, [server.address], tls=tls)
                ports[name] = cfg.listener(name, name)
            with h.Grelay(cfg) as g:
                for name, (server, _, reason) in cases.items():
                    with self.subTest(name):
                        self._refused(g, ports[name], name, server, reason)
                self.assertEqual(good.handshakes, 0)

    def test_crl_lets_current_certificates_through_and_dates_the_lists(self):
        """crl: a server whose certificate the lists do not revoke is served as before, and
        when each list needs refreshing is a gauge (the revoked server: above)."""
        import calendar
        import time
        c = self.certs
        crl = c.crl([], name="servers-crl-none.pem")
        out = subprocess.run(["openssl", "crl", "-in", crl, "-noout", "-nextupdate"],
                               capture_output=True, text=True, check=True).stdout
        next_update = calendar.timegm(time.strptime(out.strip().split("=", 1)[1],
                                                    "%b %d %H:%M:%S %Y %Z"))
        with h.TlsEchoServer(*c.upstream) as good:
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [good.address], tls={"ca": c.ca, "sni": "localhost", "crl": crl})
            port = cfg.listener("web", "app")
            with h.Grelay(cfg) as g:
                self.assertTrue(h.stream_session(port, h.Stream(77, 64 * h.KiB)).ok)
                self.assertEqual(good.handshakes, 1)
                self.assertEqual(g.metric("grelay_upstream_tls_crl_next_update_timestamp_seconds",
                                          upstream="app", file=crl), next_update)

    def test_verify_false_accepts_a_self_signed_certificate(self):
        with h.TlsEchoServer(*self.certs.self_signed) as up:
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [up.address], tls={"verify": False})
            port = cfg.listener("noverify", "app")
            with h.Grelay(cfg) as g:
                r = h.stream_session(port, h.Stream(77, h.scaled(2 * h.MiB)))
                self.assertTrue(r.ok, str(r))
                self.assertEqual(g.metric("grelay_upstream_tls_failures_total",
                                          listener="noverify"), 0)

    def test_pool_fails_over_from_a_bad_certificate_to_a_good_server(self):
        c = self.certs
        with h.TlsEchoServer(*c.self_signed) as bad, h.TlsEchoServer(*c.upstream) as good:
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("pool", [bad.address, good.address], tls={"ca": c.ca})
            port = cfg.listener("failover", "pool")
            with h.Grelay(cfg) as g:
                n = 6
                for i in range(n):
                    r = h.stream_session(port, h.Stream(8800 + i, h.scaled(256 * h.KiB)),
                                         index=i)
                    self.assertTrue(r.ok, str(r))
                self.assertTrue(good.wait_connections(n, timeout=30))
                self.assertEqual(len(good.conns), n)
                bad.settle()
                self.assertGreaterEqual(len(bad.conns), 1, "the bad server was never tried")
                self.assertEqual(bad.handshakes, 0)
                self.assertTrue(all(r.received == 0 for r in bad.conns))
                self.assertEqual(g.metric("grelay_upstream_tls_failures_total",
                                          listener="failover"), len(bad.conns))
                self.assertEqual(g.metric("grelay_upstream_unavailable_total",
                                          listener="failover"), 0)

    def test_upstream_that_never_answers_the_handshake_is_given_up(self):
        with h.StallServer() as stall:
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [stall.address], tls={"ca": self.certs.ca})
            port = cfg.listener("stall", "app", connect_timeout="500ms")
            with h.Grelay(cfg) as g:
                outcome, data, took = h.try_request(port, PAYLOAD, timeout=10)
                self.assertEqual(outcome, "reset", outcome)
                self.assertEqual(data, b"")
                self.assertGreaterEqual(took, 0.45, f"reset after {took:.2f}s")
                self.assertLess(took, h.slack(3.0), f"reset after {took:.2f}s")
                self.assertEqual(g.metric("grelay_upstream_tls_failures_total", listener="stall"),
                                 1)
                self.assertTrue(h.wait_for(lambda: "TLS handshake timed out" in g.log(), 5),
                                "no log line for the timeout")

    def test_health_checks_of_a_tls_pool_make_a_verified_handshake(self):
        c = self.certs
        with h.TlsEchoServer(*c.upstream) as good, h.TlsEchoServer(*c.wrong_host) as wrong, \
                h.EchoServer() as plain:
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("pool", [{"address": wrong.address, "name": "wrong"},
                                  {"address": plain.address, "name": "plain"},
                                  {"address": good.address, "name": "good"}],
                         tls={"ca": c.ca}, check_interval="200ms", check_timeout="2s",
                         fail_timeout="1m")
            port = cfg.listener("web", "pool")
            with h.Grelay(cfg) as g:
                self.assertTrue(h.wait_for(
                    lambda: g.metric("grelay_upstream_servers_down", upstream="pool") == 2, 15),
                    g.log())
                self.assertRegex(g.log(), r"server 127\.0\.0\.1:\d+ marked down for 60000 ms after "
                                          r"1 failure in a row \(health check: TLS handshake: "
                                          r"certificate verify failed: [^)]*\)")
                self.assertEqual(g.metric("grelay_upstream_server_up", upstream="pool",
                                          server="good"), 1)
                # No session meets a bad server: all go to the good one at once.
                for i in range(6):
                    r = h.stream_session(port, h.Stream(9100 + i, 64 * h.KiB), index=i)
                    self.assertTrue(r.ok, str(r))
                self.assertEqual(g.metric("grelay_upstream_tls_failures_total", listener="web"), 0)
                self.assertEqual(g.metric("grelay_upstream_connect_errors_total", listener="web"),
                                 0)
                # The good server saw whole handshakes from the checks, each closed cleanly
                # (close_notify, then FIN; no reset), with no application data.
                self.assertTrue(h.wait_for(lambda: good.handshakes >= 6 + 2, 10))
                # (Checks keep coming every 200ms: look at those that have ended.)
                checks = [r for r in list(good.conns) if r.done and r.received == 0]
                self.assertGreaterEqual(len(checks), 2)
                self.assertTrue(all(r.end == "eof" for r in checks), [r.end for r in checks])
                self.assertEqual(wrong.handshakes, 0)
                self.assertGreaterEqual(g.metric("grelay_upstream_health_checks_total",
                                                 upstream="pool", result="failed"), 2)

    def test_send_and_expect_go_through_tls(self):
        c = self.certs
        with h.TlsEchoServer(*c.upstream) as echo:
            cfg = h.Config()
            cfg.with_admin()
            # The echo server replies with what it is sent: "ping" passes, waiting for
            # "pong" does not (the reply never has it: check_timeout).
            for name, expect in (("echoing", "ping"), ("other", "pong")):
                cfg.upstream(name, [echo.address], tls={"ca": c.ca, "sni": "localhost"},
                             check_interval="200ms", check_timeout="500ms",
                             check_send="ping", check_expect=expect)
                cfg.listener(name, name)
            with h.Grelay(cfg) as g:
                self.assertTrue(h.wait_for(
                    lambda: g.metric("grelay_upstream_servers_down", upstream="other") == 1, 10),
                    g.log_tail())
                self.assertIn("(health check: no reply with 'pong' within 500 ms)", g.log())
                self.assertEqual(g.metric("grelay_upstream_servers_down", upstream="echoing"), 0)
                self.assertGreaterEqual(g.metric("grelay_upstream_health_checks_total",
                                                 upstream="echoing", result="ok"), 1)
            # The checks' "ping" went through TLS: the server decrypted it.
            self.assertTrue(any(r.received == 4 for r in echo.conns))



if __name__ == "__main__":
    h.main()
