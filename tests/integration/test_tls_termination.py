#!/usr/bin/env python3
"""TLS termination on a listener (issue 5 item 5.1).

Certificates are made at test time with the openssl CLI (harness.Certs).

- curl --cacert CA https://localhost:PORT/ through grelay to Debian's nginx returns the
  file byte for byte.
- A Python ssl client: concurrent sessions of seeded random streams (up to a few MiB)
  come back byte for byte through grelay to a plaintext echo upstream, ending with the
  client's close_notify answered by grelay's close_notify and FIN; the handshakes are
  counted and the decrypted request chunks count under path="copy" (no kTLS on this host:
  grelay_ktls_sessions_total stays 0 unless the kernel has the tls ULP).
- Several certificates on one listener (`certs`): the client's SNI chooses by the DNS
  names each certificate has, exact names before wildcards, case-insensitively; any other
  name or none gets the default `cert`. `--check` refuses a certificate without DNS names
  and a name in two certificates.
- ALPN (`alpn`): curl --http2 negotiates h2 with grelay and speaks HTTP/2 through it to
  Debian's nginx serving cleartext HTTP/2 (the gRPC set-up); the first protocol of the
  listener's list that a client offers wins, and nothing in common means no ALPN.
- Client certificates (`client_ca`): required, a client without one, or with one the CA
  did not sign, fails its handshake and reaches no upstream; with one, its subject is in
  the access log. `client_verify = "optional"` lets a client without one in; one that
  `client_crl` revokes is refused.
- Dates: when each certificate and the CA of each client_ca and ca file expire and each CRL
  file needs refreshing are gauges (checked against `openssl x509 -enddate`/`openssl crl
  -nextupdate`); `--check` and
  startup warn of a certificate expired or within 14 days of it, and of a CA whose newest
  list is past its
  nextUpdate, which then refuses every client of that CA until the file is refreshed and
  grelay reloaded (a stale list next to a current one of the same CA is harmless).
- Session tickets: a returning client resumes on any worker; keys rotate; instances sharing
  `session_ticket_keys` files resume each other's tickets, a later file opens and the
  first renews, 48-byte keys work, and bad files are named by `--check`.
- OCSP stapling (`ocsp_response`): `openssl s_client -status` over TLS 1.3 and 1.2 gets
  the response `openssl ocsp` made for the certificate SNI chose (none for a certificate
  without one), as `openssl ocsp -resp_text` reads the file; its nextUpdate is a gauge; a
  fresh file and SIGHUP staple the new one; `--check` refuses a response saying the
  certificate is revoked and a certificate file without the issuer to check against.
- Resets propagate both ways: an upstream reset reaches the TLS client as a TCP reset
  (no close_notify); a TLS client's reset reaches the upstream after the bytes it sent.
"""

import calendar
import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time

import harness as h


def tls_listener(certs: h.Certs, **kw) -> dict:
    return {"cert": certs.server[0], "key": certs.server[1], **kw}


def check_listener_tls(test, directory: str, tls: dict, message: str | None) -> None:
    """`grelay --check` of one listener with `tls` (its pool a dead address): it passes when
    `message` is None, else fails saying `message`."""
    cfg = h.Config()
    cfg.upstream("app", ["127.0.0.1:9"])
    cfg.listener("tls", "app", tls=tls)
    path = os.path.join(directory, "check.toml")
    with open(path, "w") as f:
        f.write(cfg.render())
    r = h.run_grelay(["-c", path, "--check"])
    if message is None:
        test.assertEqual(r.returncode, 0, r.stderr)
        return
    test.assertNotEqual(r.returncode, 0, r.stdout)
    test.assertIn(message, r.stderr)



def s_client_status(test, ca, port, sni, version):
    """`openssl s_client -status` to 127.0.0.1:`port` with `sni` and `version` ("-tls1_3"),
    verifying against `ca`: its output when a successful OCSP response was stapled, None
    when none was."""
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                        "-servername", sni, "-status", "-CAfile", ca, "-verify_return_error",
                        version], input="", capture_output=True, text=True, timeout=30)
    test.assertIn("Verify return code: 0 (ok)", r.stdout, r.stdout + r.stderr)
    if "OCSP response: no response sent" in r.stdout:
        return None
    test.assertIn("OCSP Response Status: successful", r.stdout, r.stdout)
    return r.stdout

class TlsTerminationTest(h.TlsTest):
    def test_curl_through_grelay_to_nginx_gets_the_file_exactly(self):
        if h.NginxServer.available():
            self.skipTest(h.NginxServer.available())
        if not shutil.which("curl"):
            self.skipTest("curl is not installed")
        body = h.Stream(4242, h.scaled(1 * h.MiB + 12345)).bytes()
        with h.NginxServer(body=body) as nginx:
            cfg = h.Config()
            cfg.upstream("web", [nginx.address])
            port = cfg.listener("tls", "web", tls=tls_listener(self.certs))
            with h.Grelay(cfg):
                for attempt in range(3):  # a fresh connection each time
                    out = subprocess.run(
                        ["curl", "-sS", "--fail", "--max-time", "20", "--cacert", self.certs.ca,
                         "--resolve", f"localhost:{port}:127.0.0.1",
                         f"https://localhost:{port}/{nginx.FILE_NAME}"],
                        capture_output=True, timeout=60)
                    self.assertEqual(out.returncode, 0,
                                     f"curl #{attempt} failed: {out.stderr.decode(errors='replace')}")
                    self.assertEqual(len(out.stdout), len(body), f"curl #{attempt}: length")
                    self.assertTrue(out.stdout == body, f"curl #{attempt}: body differs")

    def test_sni_chooses_among_several_certificates(self):
        import ssl
        c = self.certs
        api = c._signed("sni_api", "/CN=api", "DNS:api.test,DNS:*.svc.test")
        other = c._signed("sni_other", "/CN=other", "DNS:other.test,DNS:exact.svc.test")
        more = [{"cert": api[0], "key": api[1]}, {"cert": other[0], "key": other[1]}]
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("tls", "app", tls={**tls_listener(c), "certs": more})
            strict = cfg.listener("strict", "app", tls={**tls_listener(c), "certs": more,
                                                        "strict_sni": True})
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                for sni, cn in (("localhost", "localhost"), ("api.test", "api"),
                                ("API.Test", "api"), ("x.svc.test", "api"),
                                ("exact.svc.test", "other"),  # an exact name beats a wildcard
                                ("a.b.svc.test", "localhost"),  # a wildcard covers one label
                                ("svc.test", "localhost"), ("other.test", "other"),
                                ("unknown.test", "localhost"), (None, "localhost")):
                    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    ctx.load_verify_locations(c.ca)
                    ctx.check_hostname = False  # the chain is checked; the name is the test's
                    with ctx.wrap_socket(h.connect(port), server_hostname=sni) as s:
                        subject = dict(x[0] for x in s.getpeercert()["subject"])
                        self.assertEqual(subject["commonName"], cn, sni)
                        s.sendall(b"ping")
                        self.assertEqual(s.recv(4), b"ping")
                # strict_sni: the names of the certificates only; no default for the rest.
                for sni, served in (("localhost", True), ("x.svc.test", True),
                                    ("other.test", True), ("unknown.test", False),
                                    ("a.b.svc.test", False), (None, False)):
                    ctx = h.tls_client_context(c.ca)
                    ctx.check_hostname = False
                    try:
                        with ctx.wrap_socket(h.connect(strict), server_hostname=sni) as s:
                            s.sendall(b"ping")
                            got = s.recv(4)
                    except ssl.SSLError as e:
                        got = e.reason
                    self.assertEqual(got, b"ping" if served else "TLSV1_UNRECOGNIZED_NAME", sni)
                # (Counted once grelay has sent its alert and closed, which the client may
                # see first.)
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_tls_handshake_failures_total", listener="strict",
                    reason="error") >= 3, 10), g.log_tail())
                self.assertEqual(g.metric("grelay_tls_handshake_failures_total", listener="strict",
                                          reason="error"), 3)
        # A certificate SNI cannot choose, and a name in two certificates: refused.
        ip_only = c._signed("sni_ip", "/CN=ip", "IP:10.1.1.1")
        twice = c._signed("sni_twice", "/CN=twice", "DNS:twice.test,DNS:API.test")
        # (A default certificate without DNS names is fine: it is the default; with
        # strict_sni it could never be served.)
        api_tls = {"cert": api[0], "key": api[1]}
        ip_tls = {"cert": ip_only[0], "key": ip_only[1]}
        for tls, message in (
                ({**tls_listener(c), "certs": [api_tls, ip_tls]},
                 f"cert file '{ip_only[0]}' has no DNS names (subjectAltName) for SNI"),
                ({**tls_listener(c), "certs": [api_tls, {"cert": twice[0], "key": twice[1]}]},
                 f"name 'api.test' of cert file '{twice[0]}' is also in cert file '{api[0]}'"),
                ({**ip_tls, "certs": [api_tls], "strict_sni": True},
                 f"cert file '{ip_only[0]}' has no DNS names (subjectAltName) for SNI"),
                ({**ip_tls, "certs": [api_tls]}, None)):
            check_listener_tls(self, c.dir, tls, message)

    def test_alpn_lets_http2_clients_through_to_a_cleartext_http2_server(self):
        if h.NginxServer.available():
            self.skipTest(h.NginxServer.available())
        if not shutil.which("curl"):
            self.skipTest("curl is not installed")
        body = h.Stream(4343, h.scaled(1 * h.MiB + 4321)).bytes()
        with h.NginxServer(body=body, listen_options="http2") as nginx:
            cfg = h.Config()
            cfg.upstream("web", [nginx.address])
            h2 = cfg.listener("h2", "web", tls={**tls_listener(self.certs),
                                                "alpn": ["h2", "http/1.1"]})
            plain = cfg.listener("plain", "web", tls=tls_listener(self.certs))
            with h.Grelay(cfg):
                for attempt in range(2):
                    out = subprocess.run(
                        ["curl", "-sS", "--fail", "--http2", "--max-time", "20",
                         "--cacert", self.certs.ca, "--resolve", f"localhost:{h2}:127.0.0.1",
                         "-w", "%{http_version}", "-o", "-",
                         f"https://localhost:{h2}/{nginx.FILE_NAME}"],
                        capture_output=True, timeout=60)
                    self.assertEqual(out.returncode, 0, out.stderr.decode(errors="replace"))
                    self.assertEqual(out.stdout[-1:], b"2", f"#{attempt}: not HTTP/2")
                    self.assertTrue(out.stdout[:-1] == body, f"#{attempt}: body differs")
                # A Python client: the listener's order wins; nothing in common, no ALPN.
                # A listener without `alpn` chooses none.
                for port, offered, chosen in ((h2, ["http/1.1", "h2"], "h2"),
                                              (h2, ["http/1.1"], "http/1.1"),
                                              (h2, ["spdy/3"], None), (plain, ["h2"], None)):
                    ctx = h.tls_client_context(self.certs.ca)
                    ctx.set_alpn_protocols(offered)
                    with ctx.wrap_socket(h.connect(port), server_hostname="localhost") as s:
                        self.assertEqual(s.selected_alpn_protocol(), chosen, offered)

    def test_a_returning_client_resumes_its_session(self):
        import ssl
        c = self.certs
        alice = c.client("alice", "/CN=alice")
        log = os.path.join(c.dir, "resume-access.log")
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("tls", "app", access_log=log,
                                tls={**tls_listener(c), "client_ca": c.ca})
            off = cfg.listener("off", "app",
                               tls={**tls_listener(c), "session_tickets": False})
            contexts = {}
            for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
                contexts[version] = h.tls_client_context(c.ca)
                contexts[version].load_cert_chain(*alice)
                contexts[version].maximum_version = version
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                def session(port, version, ticket=None):
                    with contexts[version].wrap_socket(h.connect(port), server_hostname="localhost",
                                         session=ticket) as s:
                        s.sendall(b"ping")
                        self.assertEqual(s.recv(4), b"ping")  # (the ticket comes first)
                        return s.session, s.session_reused

                for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
                    ticket, reused = session(port, version)
                    self.assertFalse(reused)
                    # Resumed whichever worker takes the connection (one ticket key).
                    for _ in range(4):
                        self.assertTrue(session(port, version, ticket)[1], version)
                # Without tickets, a TLS 1.3 client does the whole handshake every time.
                ticket, _ = session(off, ssl.TLSVersion.TLSv1_3)
                self.assertFalse(session(off, ssl.TLSVersion.TLSv1_3, ticket)[1])
                self.assertEqual(
                    (g.metric("grelay_tls_handshakes_total", listener="tls"),
                     g.metric("grelay_tls_resumed_handshakes_total", listener="tls"),
                     g.metric("grelay_tls_resumed_handshakes_total", listener="off")), (10, 8, 0))
        # A resumed session still names the client's certificate, as verified first.
        with open(log) as f:
            lines = [json.loads(x) for x in f.read().splitlines()]
        self.assertEqual([x["client_cert"] for x in lines], ["CN=alice"] * 10)

    def test_ticket_keys_rotate(self):
        """A ticket opens with the newest key or the one before: after one rotation period
        a client still resumes (and gets a ticket of the new key); a ticket two periods old
        gets a full handshake."""
        c = self.certs
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("tls", "app", tls={**tls_listener(c),
                                                   "session_ticket_rotation": "3s"})
            ctx = h.tls_client_context(c.ca)
            with h.Grelay(cfg):
                def session(ticket=None):
                    with ctx.wrap_socket(h.connect(port), server_hostname="localhost",
                                         session=ticket) as s:
                        s.sendall(b"ping")
                        self.assertEqual(s.recv(4), b"ping")
                        return s.session, s.session_reused

                start = time.monotonic()
                first, _ = session()  # the first key is made now
                self.assertTrue(session(first)[1])
                time.sleep(max(0.0, start + 3.3 - time.monotonic()))
                renewed, reused = session(first)  # a second key; the first still opens
                self.assertTrue(reused, "a ticket one period old")
                time.sleep(6.5)  # two periods after the second key: both are gone
                self.assertFalse(session(first)[1], "a ticket of a dropped key")
                self.assertFalse(session(renewed)[1], "a ticket of a dropped key")

    def test_ticket_key_files_are_shared_by_instances(self):
        """session_ticket_keys: instances with the same key file resume each other's
        tickets; the first file seals, the others open (and the ticket is renewed with the
        first); 48-byte keys (AES-128) work as 80-byte ones."""
        import contextlib
        import ssl
        c = self.certs
        keys = tempfile.mkdtemp(prefix="grelay-ticket-keys-")
        self.addCleanup(shutil.rmtree, keys, True)

        def key_file(name, size):
            path = os.path.join(keys, name)
            with open(path, "wb") as f:
                f.write(os.urandom(size))
            return path

        k1, k2, k48 = key_file("k1", 80), key_file("k2", 80), key_file("k48", 48)
        with h.EchoServer() as echo, contextlib.ExitStack() as stack:
            ports = {}
            for name, files in (("a", [k1]), ("b", [k2, k1]), ("c", [k2]), ("d", [k48]),
                                ("e", [k1, k48])):
                cfg = h.Config()
                cfg.upstream("app", [echo.address])
                ports[name] = cfg.listener("tls", "app", tls={**tls_listener(c),
                                                              "session_ticket_keys": files})
                stack.enter_context(h.Grelay(cfg))
            for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
                ctx = h.tls_client_context(c.ca, maximum=version)

                def session(name, ticket=None):
                    with ctx.wrap_socket(h.connect(ports[name]), server_hostname="localhost",
                                         session=ticket) as s:
                        s.sendall(b"ping")
                        self.assertEqual(s.recv(4), b"ping")  # (the ticket comes first)
                        return s.session, s.session_reused

                t1, reused = session("a")
                self.assertFalse(reused)
                self.assertTrue(session("a", t1)[1], version)
                t2, reused = session("b", t1)  # another instance, k1 second: opens, renews
                self.assertTrue(reused, version)
                self.assertTrue(session("c", t2)[1], f"{version}: renewed with k2")
                self.assertFalse(session("a", t2)[1], f"{version}: a has no k2")
                self.assertFalse(session("c", t1)[1], f"{version}: c has no k1")
                t48, _ = session("d")
                self.assertTrue(session("e", t48)[1], f"{version}: a 48-byte key")
        # Bad key files are named by --check.
        short = key_file("short", 10)
        twin = os.path.join(keys, "twin")
        shutil.copy(k1, twin)
        for tls, message in (
                ({"session_ticket_keys": [short]},
                 f"session ticket key file '{short}' has 10 bytes, not 80"),
                ({"session_ticket_keys": [k1, twin]},
                 f"session ticket key files '{k1}' and '{twin}' start with the same key name"),
                ({"session_ticket_keys": [k1], "session_ticket_rotation": "1h"},
                 "'session_ticket_rotation' with 'session_ticket_keys'"),
                ({"session_ticket_keys": [k1], "session_tickets": False},
                 "'session_ticket_keys' with 'session_tickets = false'")):
            check_listener_tls(self, keys, {**tls_listener(c), **tls}, message)

    def test_groups_limit_the_key_exchange(self):
        c = self.certs
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("tls", "app", tls={**tls_listener(c), "groups": ["P-384"]})
            with h.Grelay(cfg):
                def handshake(groups):
                    r = subprocess.run(
                        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-groups", groups,
                         "-CAfile", c.ca, "-servername", "localhost", "-verify_return_error"],
                        input="", capture_output=True, text=True, timeout=30)
                    m = re.search(r"Server Temp Key: (.*)", r.stdout)
                    return m.group(1) if m else r.stdout + r.stderr
                self.assertEqual(handshake("X25519:P-384"), "ECDH, secp384r1, 384 bits")
                refused = handshake("X25519:P-256")
                self.assertIn("alert handshake failure", refused)

    def test_client_certificates_required_or_optional(self):
        import json
        import ssl
        c = self.certs
        alice = c.client("alice", "/CN=alice")
        log = os.path.join(c.dir, "mtls-access.log")
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            required = cfg.listener("required", "app", access_log=log,
                                    tls={**tls_listener(c), "client_ca": c.ca})
            optional = cfg.listener("optional", "app", access_log=log,
                                    tls={**tls_listener(c), "client_ca": c.ca,
                                         "client_verify": "optional"})
            cfg.with_admin()

            def session(port, cert):
                ctx = h.tls_client_context(c.ca)
                if cert:
                    ctx.load_cert_chain(*cert)
                try:
                    with ctx.wrap_socket(h.connect(port), server_hostname="localhost") as s:
                        s.sendall(b"ping")
                        return s.recv(4)
                except (ssl.SSLError, OSError) as e:
                    return repr(e)

            with h.Grelay(cfg) as g:
                self.assertEqual(session(required, alice), b"ping")
                self.assertEqual(session(optional, alice), b"ping")
                self.assertEqual(session(optional, None), b"ping")
                # No certificate, or one the CA did not sign (TLS 1.3: the client learns it
                # from the alert on its first read, after writing its first bytes: no reset
                # may overtake the alert).
                for cert, alert in ((None, "TLSV13_ALERT_CERTIFICATE_REQUIRED"),
                                    (c.self_signed, "TLSV1_ALERT_UNKNOWN_CA")):
                    self.assertIn(alert, str(session(required, cert)), cert)
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_tls_handshake_failures_total", listener="required",
                    reason="error") == 2, 5))
            echo.settle()
            self.assertEqual(len(echo.conns), 3, "a refused client reached the upstream")
        with open(log) as f:
            lines = [json.loads(x) for x in f]
        got = sorted((x["listener"], x["end"], x["client_cert"] or "") for x in lines)
        self.assertEqual(got, [("optional", "normal", ""),
                               ("optional", "normal", "CN=alice"),
                               ("required", "error", ""), ("required", "error", ""),
                               ("required", "normal", "CN=alice")], lines)

    def test_a_revoked_client_certificate_is_refused(self):
        c = self.certs
        carol = c.client("carol", "/CN=carol")
        mallory = c.client("mallory", "/CN=mallory")
        crl = c.crl([mallory[0]])
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("mtls", "app", tls={**tls_listener(c), "client_ca": c.ca,
                                                    "client_crl": crl})
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                outcome = {}
                for name, cert in (("carol", carol), ("mallory", mallory)):
                    ctx = h.tls_client_context(c.ca)
                    ctx.load_cert_chain(*cert)
                    try:
                        with ctx.wrap_socket(h.connect(port), server_hostname="localhost") as s:
                            # A client that writes once grelay has refused and closed.
                            time.sleep(0.2)
                            s.sendall(b"ping")
                            outcome[name] = s.recv(4)
                    except OSError as e:  # ssl.SSLError included
                        outcome[name] = repr(e)
                self.assertEqual(outcome["carol"], b"ping")
                # The alert, read after the first write: no reset overtakes it.
                self.assertIn("SSLV3_ALERT_CERTIFICATE_REVOKED", str(outcome["mallory"]))
                # Why, in grelay's log (rate-limited with the listener's other trouble).
                self.assertTrue(h.wait_for(lambda: "certificate revoked" in g.log(), 5),
                                g.log_tail())
                self.assertRegex(g.log(), r"listener mtls: TLS: client 127\.0\.0\.1:\d+: .*"
                                          r"certificate revoked")
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_tls_handshake_failures_total", listener="mtls", reason="error") == 1,
                    5))
            echo.settle()
            self.assertEqual(len(echo.conns), 1)

    def test_certificate_and_crl_dates_are_gauges_and_stale_ones_are_warned_of(self):
        c = self.certs
        carol = c.client("carol", "/CN=carol")
        january = ("20200101000000Z", "20200201000000Z")
        stale = c.crl([], dates=january, name="stale.pem")
        both = os.path.join(c.dir, "both.pem")
        with open(both, "w") as f:  # a stale list and a current one of the same CA
            f.write(open(stale).read() + open(c.crl([], name="fresh.pem")).read())

        def unix(openssl_args):
            out = subprocess.run(["openssl", *openssl_args], capture_output=True, text=True,
                                 check=True).stdout
            when = out.strip().split("=", 1)[1]  # "Jan  6 10:00:00 2027 GMT"
            return calendar.timegm(time.strptime(when, "%b %d %H:%M:%S %Y %Z"))

        def not_after(cert):
            return unix(["x509", "-in", cert, "-noout", "-enddate"])

        def next_update(crl):
            return unix(["crl", "-in", crl, "-noout", "-nextupdate"])

        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            cfg.upstream("signed", ["127.0.0.1:9"],
                         tls={"verify": False, "cert": c.expired[0], "key": c.expired[1]})
            cfg.upstream("verified", ["127.0.0.1:9"], tls={"ca": c.ca})
            current = cfg.listener("current", "app", tls={
                **tls_listener(c), "certs": [{"cert": c.wrong_host[0], "key": c.wrong_host[1]}],
                "client_ca": c.ca, "client_crl": both})
            old = cfg.listener("old", "app", tls={
                "cert": c.expired[0], "key": c.expired[1], "client_ca": c.ca,
                "client_crl": stale})
            # Valid for 5 more days: warned of as well.
            end = time.gmtime(time.time() + 5 * 86400 + 3600)
            soon = c._signed("soon", "/CN=localhost", c.NAMES,
                             dates=("20200101000000Z", time.strftime("%Y%m%d%H%M%SZ", end)))
            cfg.listener("soon", "app", tls={"cert": soon[0], "key": soon[1]})
            cfg.with_admin()
            path = os.path.join(tempfile.mkdtemp(prefix="grelay-dates-"), "grelay.toml")
            self.addCleanup(shutil.rmtree, os.path.dirname(path), True)
            with open(path, "w") as f:
                f.write(cfg.render())
            r = h.run_grelay(["-c", path, "--check"])
            self.assertEqual(r.returncode, 0, r.stderr)
            warnings = [x for x in r.stderr.splitlines() if "warning:" in x]
            self.assertEqual(len(warnings), 4, r.stderr)
            warnings = "\n".join(warnings)
            self.assertRegex(warnings, rf"warning: listener soon: the certificate in cert file "
                                       rf"'{soon[0]}' expires at \S+Z \(in 5 days\): renew it "
                                       rf"and reload")
            self.assertIn(f"warning: listener old: the certificate in cert file '{c.expired[0]}' "
                          "expired at 2020-02-01T00:00:00Z: clients that verify refuse it",
                          warnings)
            self.assertIn(f"warning: listener old: the revocation list of CN=grelay test CA in "
                          f"client_crl file '{stale}' expired at 2020-02-01T00:00:00Z "
                          "(nextUpdate): every client certificate that CA signed is refused",
                          warnings)
            self.assertIn(f"warning: upstream signed: the client certificate in cert file "
                          f"'{c.expired[0]}' expired at 2020-02-01T00:00:00Z", warnings)

            def handshake(port):
                ctx = h.tls_client_context(verify=False)  # (old serves an expired cert)
                ctx.load_cert_chain(*carol)
                try:
                    with ctx.wrap_socket(h.connect(port), server_hostname="localhost") as s:
                        s.sendall(b"ping")
                        return s.recv(4)
                except OSError as e:  # ssl.SSLError included
                    return repr(e)

            with h.Grelay(cfg) as g:
                self.assertEqual(g.log().count("warning:"), 4, g.log_tail())
                january_end = calendar.timegm((2020, 2, 1, 0, 0, 0))
                self.assertEqual(
                    {(dict(ls).get("listener") or dict(ls)["upstream"], dict(ls)["file"]): v
                     for (n, ls), v in g.metrics().items()
                     if n in ("grelay_tls_certificate_expiry_timestamp_seconds",
                              "grelay_upstream_tls_certificate_expiry_timestamp_seconds")},
                    {("current", c.server[0]): not_after(c.server[0]),
                     ("current", c.wrong_host[0]): not_after(c.wrong_host[0]),
                     ("soon", soon[0]): not_after(soon[0]),
                     ("old", c.expired[0]): january_end,
                     ("signed", c.expired[0]): january_end})
                self.assertEqual(g.metric("grelay_tls_crl_next_update_timestamp_seconds",
                                          listener="current", file=both),
                                 next_update(os.path.join(c.dir, "fresh.pem")))
                self.assertEqual(g.metric("grelay_tls_crl_next_update_timestamp_seconds",
                                          listener="old", file=stale), january_end)
                # The CA files: when their CA expires (client_ca, a pool's ca).
                self.assertEqual(
                    {(n, dict(ls).get("listener") or dict(ls)["upstream"], dict(ls)["file"]): v
                     for (n, ls), v in g.metrics().items()
                     if n in ("grelay_tls_client_ca_expiry_timestamp_seconds",
                              "grelay_upstream_tls_ca_expiry_timestamp_seconds")},
                    {("grelay_tls_client_ca_expiry_timestamp_seconds", name, c.ca):
                     not_after(c.ca) for name in ("current", "old")} |
                    {("grelay_upstream_tls_ca_expiry_timestamp_seconds", "verified", c.ca):
                     not_after(c.ca)})
                # What the warning says: the stale list refuses carol, revoked or not; next
                # to a current list of the same CA it does not.
                self.assertEqual(handshake(current), b"ping")
                self.assertNotEqual(handshake(old), b"ping")
                self.assertTrue(h.wait_for(lambda: "CRL has expired" in g.log(), 5),
                                g.log_tail())
                # The remedy: refresh the file and reload.
                shutil.copy(os.path.join(c.dir, "fresh.pem"), stale)
                g.send_signal(signal.SIGHUP)
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_tls_crl_next_update_timestamp_seconds", listener="old",
                    file=stale) > time.time(), 10), g.log_tail())
                self.assertEqual(handshake(old), b"ping")

    def test_ocsp_responses_are_stapled(self):
        c = self.certs
        api = c._signed("ocsp_api", "/CN=api", "DNS:api.test")
        bare = c._signed("ocsp_bare", "/CN=bare", "DNS:bare.test")
        server_ocsp = c.ocsp(c.server[0], "server.ocsp")
        api_ocsp = c.ocsp(api[0], "api.ocsp", days=2)

        def response_lines(printed):
            """The lines naming an OCSP response in its printed form (before its signature
            and the certificates it carries)."""
            head = printed.split("OCSP Response Data:", 1)[-1].split("Signature Algorithm:")[0]
            return [x.strip() for x in head.splitlines()
                    if x.strip().startswith(("Produced At:", "Serial Number:", "Cert Status:",
                                             "This Update:", "Next Update:"))]

        def text(response):
            """The lines of `openssl ocsp -resp_text` that name the response."""
            out = subprocess.run(["openssl", "ocsp", "-respin", response, "-resp_text",
                                  "-noverify"], capture_output=True, text=True, check=True).stdout
            lines = response_lines(out)
            self.assertEqual(len(lines), 5, out)
            return lines

        def next_update(response):
            line = next(x for x in text(response) if x.startswith("Next Update:"))
            when = line.split(":", 1)[1].strip()  # "Dec 14 17:26:08 2026 GMT"
            return calendar.timegm(time.strptime(when, "%b %d %H:%M:%S %Y %Z"))

        def s_client(port, sni, version):
            """What openssl s_client asking for the status was stapled: the response's
            lines, or None."""
            out = s_client_status(self, c.ca, port, sni, version)
            return None if out is None else response_lines(out)

        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("tls", "app", tls={
                "cert": c.chain(c.server[0]), "key": c.server[1], "ocsp_response": server_ocsp,
                "certs": [{"cert": c.chain(api[0]), "key": api[1], "ocsp_response": api_ocsp},
                          {"cert": c.chain(bare[0]), "key": bare[1]}]})
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                self.assertNotIn("warning:", g.log(), g.log_tail())
                for version in ("-tls1_3", "-tls1_2"):
                    self.assertEqual(s_client(port, "localhost", version), text(server_ocsp))
                    self.assertEqual(s_client(port, "api.test", version), text(api_ocsp))
                    self.assertIsNone(s_client(port, "bare.test", version))
                # Stapled or not, the session relays.
                with h.tls_client_context(c.ca).wrap_socket(
                        h.connect(port), server_hostname="localhost") as s:
                    s.sendall(b"ping")
                    self.assertEqual(s.recv(4), b"ping")
                self.assertEqual(g.metric("grelay_tls_ocsp_next_update_timestamp_seconds",
                                          listener="tls", file=server_ocsp),
                                 next_update(server_ocsp))
                self.assertEqual(g.metric("grelay_tls_ocsp_next_update_timestamp_seconds",
                                          listener="tls", file=api_ocsp), next_update(api_ocsp))
                # A fresh response (what a cron job fetching from the CA does), then SIGHUP.
                before = next_update(server_ocsp)
                time.sleep(1.1)
                c.ocsp(c.server[0], "server.ocsp", days=9)
                g.send_signal(signal.SIGHUP)
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_tls_ocsp_next_update_timestamp_seconds", listener="tls",
                    file=server_ocsp) > before, 10), g.log_tail())
                self.assertEqual(s_client(port, "localhost", "-tls1_3"), text(server_ocsp))
        # A response that says the certificate is revoked, and one that cannot be checked
        # (no issuer in the cert file): refused by --check, with the reason.
        revoked = c._signed("ocsp_revoked", "/CN=localhost", c.NAMES)
        c.crl([revoked[0]], name="ocsp_crl.pem")
        revoked_ocsp = c.ocsp(revoked[0], "revoked.ocsp")
        for tls, message in (
                ({"cert": c.chain(revoked[0]), "key": revoked[1], "ocsp_response": revoked_ocsp},
                 f"ocsp_response file '{revoked_ocsp}': it says the certificate in cert file "
                 f"'{c.chain(revoked[0])}' was revoked at "),
                ({**tls_listener(c), "ocsp_response": server_ocsp},
                 f"ocsp_response file '{server_ocsp}': cert file '{c.server[0]}' has no issuer "
                 "certificate after the server's")):
            check_listener_tls(self, c.dir, tls, message)

    def test_ocsp_responses_are_fetched_from_the_responder(self):
        """ocsp_update: grelay asks the CA's responder (`openssl ocsp -port`, named by the
        certificate's authorityInfoAccess) itself, staples the answer, keeps it over a
        reload and while the responder is down, and stops stapling once it says revoked."""
        c = self.certs
        responder_port = h.free_port()
        url = f"http://127.0.0.1:{responder_port}/"
        cert, key = c._signed("ocsp_fetched", "/CN=localhost", c.NAMES, ocsp_url=url)
        chain = c.chain(cert)

        def status(port, version):
            """What openssl s_client asking for the status was stapled: 'good', 'revoked',
            or None."""
            out = s_client_status(self, c.ca, port, "localhost", version)
            return None if out is None else re.search(r"Cert Status: (\w+)", out).group(1)

        def updates(g, result):
            return g.metric("grelay_tls_ocsp_updates_total", listener="tls", file=chain,
                            result=result)

        responder = c.ocsp_responder(responder_port)
        try:
            with h.EchoServer() as echo:
                cfg = h.Config()
                cfg.upstream("app", [echo.address])
                port = cfg.listener("tls", "app", tls={
                    "cert": chain, "key": key, "ocsp_update": True,
                    "ocsp_update_min_delay": "1s", "ocsp_update_max_delay": "2s"})
                cfg.with_admin()
                with h.Grelay(cfg) as g:
                    self.assertTrue(h.wait_for(lambda: updates(g, "ok") >= 1, 20), g.log_tail())
                    self.assertIn(f"listener tls: OCSP response for cert file '{chain}' from {url}: "
                                  "updated, good until ", g.log())
                    for version in ("-tls1_3", "-tls1_2"):
                        self.assertEqual(status(port, version), "good")
                    # The responder answers for a minute: the gauge says until when.
                    next_update = g.metric("grelay_tls_ocsp_next_update_timestamp_seconds",
                                           listener="tls", file=chain)
                    self.assertAlmostEqual(next_update, time.time() + 60, delta=15)
                    # Refreshed before it gets old (every 2s here: halfway is 30s away).
                    ok = updates(g, "ok")
                    self.assertTrue(h.wait_for(lambda: updates(g, "ok") >= ok + 2, 20),
                                    g.log_tail())
                    # A reload serves the response fetched, at once.
                    g.send_signal(signal.SIGHUP)
                    self.assertTrue(h.wait_for(lambda: g.metric(
                        "grelay_config_reloads_total", result="ok") >= 1, 10), g.log_tail())
                    self.assertEqual(status(port, "-tls1_3"), "good")
                    # The responder down: the response stapled stays.
                    responder.terminate()
                    responder.wait(10)
                    errors = updates(g, "error")
                    self.assertTrue(h.wait_for(lambda: updates(g, "error") > errors, 20),
                                    g.log_tail())
                    self.assertIn(f"from {url} failed: connect: Connection refused; the response "
                                  "stapled stays, until ", g.log())
                    self.assertEqual(status(port, "-tls1_3"), "good")
                    # Back, saying revoked: nothing is stapled.
                    c.revoke(cert)
                    responder = c.ocsp_responder(responder_port)
                    self.assertTrue(h.wait_for(lambda: status(port, "-tls1_3") is None, 20),
                                    g.log_tail())
                    self.assertIn(f"' was revoked at ", g.log())
                    self.assertIn("nothing is stapled for it", g.log())
                    self.assertEqual(g.metric("grelay_tls_ocsp_next_update_timestamp_seconds",
                                              listener="tls", file=chain), 0)
                    # Sessions go on, stapled or not.
                    with h.tls_client_context(c.ca).wrap_socket(
                            h.connect(port), server_hostname="localhost") as s:
                        s.sendall(b"ping")
                        self.assertEqual(s.recv(4), b"ping")
        finally:
            responder.kill()
            responder.wait(10)

    def test_concurrent_random_streams_are_byte_exact_both_ways(self):
        rng = random.Random(5005)
        n = 12
        streams = [h.Stream(9000 + i, rng.randint(1, h.scaled(4 * h.MiB))) for i in range(n)]
        streams[0] = h.Stream(8999, 1)  # a one-byte session
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("tls", "app", tls=tls_listener(self.certs))
            with h.Grelay(cfg) as g:
                ctx = h.tls_client_context(self.certs.ca)
                results = h.run_concurrently(
                    h.tls_stream_session, [(port, s) for s in streams],
                    kwargs_list=[{"context": ctx, "index": i, "timeout": 60}
                                 for i in range(n)])
                bad = [r for r in results if not getattr(r, "ok", False)]
                self.assertEqual(bad, [], "\n".join(map(str, bad)))
                for r in results:
                    self.assertIn(r.version, ("TLSv1.2", "TLSv1.3"))
                    self.assertTrue(r.close_notify, f"no close_notify from grelay: {r}")
                self.assertTrue(echo.wait_connections(n, timeout=30))
                self.assertEqual(sorted(c.received for c in echo.conns),
                                 sorted(len(s) for s in streams), "upstream byte counts")
                self.assertEqual(g.metric("grelay_tls_handshakes_total", listener="tls"), n)
                self.assertEqual(g.metric("grelay_tls_handshake_failures_total", listener="tls"),
                                 0)
                self.assertEqual(g.metric("grelay_received_bytes_total", listener="tls",
                                          direction="request"), sum(map(len, streams)))
                self.assertEqual(g.metric("grelay_received_bytes_total", listener="tls",
                                          direction="response"), sum(map(len, streams)))
                self.assertEqual(g.metric("grelay_sent_bytes_total", listener="tls", target="app"),
                                 sum(map(len, streams)))
                ktls = g.metric("grelay_ktls_sessions_total", listener="tls")
                if ktls == 0:
                    self.assertGreater(g.metric("grelay_chunks_total", listener="tls",
                                                path="copy"), 0)

    def test_tls12_client_works_with_the_default_ciphers(self):
        import ssl
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("tls", "app", tls=tls_listener(self.certs))
            with h.Grelay(cfg):
                ctx = h.tls_client_context(self.certs.ca, maximum=ssl.TLSVersion.TLSv1_2)
                r = h.tls_stream_session(port, h.Stream(31, h.scaled(2 * h.MiB)), context=ctx)
                self.assertTrue(r.ok, str(r))
                self.assertEqual(r.version, "TLSv1.2")

    def test_request_chunks_of_a_tls_client_count_under_copy(self):
        with h.SinkServer(keep="count") as sink:
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [sink.address])
            port = cfg.listener("tls", "app", tls=tls_listener(self.certs))
            with h.Grelay(cfg) as g:
                ctx = h.tls_client_context(self.certs.ca)
                r = h.tls_stream_session(port, h.Stream(77, 512 * h.KiB), context=ctx,
                                         expect=b"")
                self.assertTrue(r.ok, str(r))
                if g.metric("grelay_ktls_sessions_total", listener="tls") > 0:
                    self.skipTest("kTLS took the session: its chunks are not on the copy path")
                self.assertGreater(g.metric("grelay_chunks_total", listener="tls", path="copy"),
                                   0)
                self.assertEqual(g.metric("grelay_chunks_total", listener="tls",
                                          path="mainline"), 0)

    def test_resets_propagate_both_ways(self):
        import socket
        import struct
        ctx = h.tls_client_context(self.certs.ca)
        with h.ResetServer(after=100 * h.KiB, reply=b"hi") as resetter, \
                h.SinkServer(keep="count") as sink:
            cfg = h.Config()
            cfg.upstream("resetter", [resetter.address])
            cfg.upstream("sink", [sink.address])
            p_up = cfg.listener("upstream_resets", "resetter", tls=tls_listener(self.certs))
            p_client = cfg.listener("client_resets", "sink", tls=tls_listener(self.certs))
            with h.Grelay(cfg):
                # The upstream resets: the TLS client sees a TCP reset, no close_notify.
                r = h.tls_stream_session(p_up, h.Stream(12, h.MiB), context=ctx, expect=None,
                                         keep=True, timeout=10)
                self.assertEqual(r.end, "reset", str(r))
                self.assertFalse(r.close_notify, str(r))
                self.assertEqual(r.data, b"hi")
                # The client resets: the upstream sees a reset after the decrypted bytes.
                s = socket.create_connection(("127.0.0.1", p_client), timeout=10)
                t = ctx.wrap_socket(s, server_hostname="localhost")
                t.sendall(b"x" * 50000)
                self.assertTrue(h.wait_for(lambda: sink.conns and sink.conns[0].received ==
                                           50000, 10))
                t.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                t.close()
                self.assertTrue(sink.wait_connections(1, timeout=10))
                self.assertEqual((sink.conns[0].received, sink.conns[0].end), (50000, "reset"))


if __name__ == "__main__":
    h.main()
