#!/usr/bin/env python3
"""[upstream.NAME] proxy_protocol: every upstream connection starts with a PROXY protocol
header (v1 text or v2 binary) carrying the client's address and the address it connected
to; then the client's bytes follow unchanged. A mirror gets one only when it asks
(its own proxy_protocol and TLVs: the session's ID joins a sink's records with the access
log). Debian's
nginx (listen ... proxy_protocol) reads the client's address from it, in front of TLS too.

[[listener]] accept_proxy_protocol: grelay behind a load balancer reads the header its
clients start with (v1 or v2, before TLS), relays none of it, and passes the addresses it
carries on; connections without one are closed and counted, a bare connect-and-close
(a TCP health check) is not an error, and a header that never comes times out.

[upstream.NAME] proxy_protocol_tlvs: a v2 header sent upstream carries the protocol ALPN
chose and the name the client asked for (from grelay's TLS handshake, else the client's
own header), an SSL TLV (with a verified client certificate's CN), the TLVs of the
client's header passed on, and a CRC32C checksum that Debian's HAProxy verifies. A
received header whose TLVs are malformed or whose checksum does not match is refused."""

import json
import os
import re
import shutil
import socket
import struct
import tempfile
import time

import harness as h

def expected_header(version: str, client: tuple, server: tuple) -> bytes:
    """The header for a connection from `client` to `server` ((host, port) pairs)."""
    v6 = ":" in client[0]
    if version == "v1":
        return (f"PROXY {'TCP6' if v6 else 'TCP4'} {client[0]} {server[0]} "
                f"{client[1]} {server[1]}\r\n").encode()
    family = socket.AF_INET6 if v6 else socket.AF_INET
    addrs = socket.inet_pton(family, client[0]) + socket.inet_pton(family, server[0])
    body = addrs + struct.pack("!HH", client[1], server[1])
    return (h.V2_SIGNATURE + bytes([0x21, 0x21 if v6 else 0x11]) + struct.pack("!H", len(body)) +
            body)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), bit by bit: independent of grelay's table."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def with_tlvs(header: bytes, tlvs: bytes, checksum: bool = True, flip: int = 0) -> bytes:
    """A v2 header with `tlvs` appended (and a CRC32C TLV, xor-ed with `flip`)."""
    body = header[16:] + tlvs + (tlv(0x03, b"\0" * 4) if checksum else b"")
    out = bytearray(header[:14] + struct.pack("!H", len(body)) + body)
    if checksum:
        out[-4:] = struct.pack("!I", crc32c(bytes(out)) ^ flip)
    return bytes(out)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class ProxyProtocolTest(h.GrelayTest):
    def certs_or_skip(self) -> h.Certs:
        """Test certificates, removed when the test ends; skips without openssl."""
        why = h.Certs.available()
        if why:
            self.skipTest(why)
        certs = h.Certs()
        self.addCleanup(certs.cleanup)
        return certs

    def test_header_first_then_the_stream_byte_exact_and_none_to_mirrors(self):
        hosts = ["127.0.0.1"] + (["::1"] if ipv6_loopback() else [])
        h.log(f"listener hosts: {hosts}")
        with h.SinkServer() as up, h.SinkServer() as mirror:
            cfg = h.Config()
            cfg.upstream("v1", [up.address], proxy_protocol="v1")
            cfg.upstream("v2", [up.address], proxy_protocol="v2")
            # (version, host, mirrored) -> port; the unmirrored ones relay by splice.
            ports = {}
            for version in ("v1", "v2"):
                for host in hosts:
                    for mirrored in (True, False):
                        name = f"{version}_{'six' if ':' in host else 'four'}_{int(mirrored)}"
                        mirrors = [{"name": "m", "address": mirror.address}] if mirrored else []
                        ports[(version, host, mirrored)] = cfg.listener(name, version, host=host,
                                                                        mirrors=mirrors)
            with h.Grelay(cfg):
                expected, mirrored_data = [], []
                for i, ((version, host, mirrored), port) in enumerate(sorted(ports.items())):
                    stream = h.Stream(500 + i, h.scaled(512 * h.KiB) + i)
                    seen = {}
                    r = h.stream_session(port, stream, expect=b"", host=host,
                                         on_connect=lambda s: seen.update(
                                             client=s.getsockname()[:2], server=s.getpeername()[:2]))
                    self.assertTrue(r.ok, str(r))
                    header = expected_header(version, seen["client"], seen["server"])
                    expected.append(header + stream.bytes())
                    if mirrored:
                        mirrored_data.append(stream.bytes())
                    h.log(f"{version} header: {header!r}")
                ups = up.records()
                self.assertEqual(len(ups), len(expected))
                got = sorted(bytes(r.data) for r in ups)
                for g, w in zip(got, sorted(expected)):
                    self.assertEqual(len(g), len(w))
                    self.assertEqual(g[:120], w[:120], "header or first bytes differ")
                    self.assertTrue(g == w, "the stream after the header differs")
                self.assertEqual(sorted(bytes(r.data) for r in mirror.records()),
                                 sorted(mirrored_data), "a mirror must get the client's bytes only")

    def test_a_mirror_that_asks_gets_a_header_with_the_session_id(self):
        log = os.path.join(tempfile.mkdtemp(prefix="grelay-pp-"), "access.log")
        self.addCleanup(shutil.rmtree, os.path.dirname(log), True)
        with h.SinkServer() as up, h.SinkServer() as m1, h.SinkServer() as m2:
            cfg = h.Config()
            cfg.upstream("app", [up.address])
            port = cfg.listener("web", "app", access_log=log, mirrors=[
                {"name": "one", "address": m1.address, "proxy_protocol": "v1"},
                {"name": "two", "address": m2.address, "proxy_protocol": "v2",
                 "proxy_protocol_tlvs": ["unique_id", "crc32c"]}])
            with h.Grelay(cfg):
                stream = h.Stream(77, h.scaled(256 * h.KiB))
                seen = {}
                r = h.stream_session(port, stream, expect=b"", on_connect=lambda s: seen.update(
                    client=s.getsockname()[:2], server=s.getpeername()[:2]))
                self.assertTrue(r.ok, str(r))
                for sink in (up, m1, m2):
                    self.assertTrue(sink.wait_connections(1, timeout=10))
            with open(log) as f:
                session_id = json.loads(f.readline())["id"]
        # The upstream pool asked for none; each mirror gets its header, then the stream.
        self.assertEqual(bytes(up.records()[0].data), stream.bytes())
        v1 = expected_header("v1", seen["client"], seen["server"])
        self.assertEqual(bytes(m1.records()[0].data), v1 + stream.bytes())
        header, rest = h.split_proxy_v2(bytes(m2.records()[0].data))
        self.assertEqual(rest, stream.bytes())
        addresses = expected_header("v2", seen["client"], seen["server"])
        self.assertEqual(header[:13] + header[16:28], addresses[:13] + addresses[16:28])
        tlvs = h.read_tlvs(header)
        self.assertEqual([k for k, _ in tlvs], [0x05, 0x03], tlvs)
        self.assertEqual(tlvs[0][1], session_id.encode(), "PP2_TYPE_UNIQUE_ID")
        checked = bytearray(header)
        checked[-4:] = b"\0" * 4
        self.assertEqual(struct.unpack("!I", tlvs[1][1])[0], crc32c(bytes(checked)))

    def _nginx_sees_the_client(self, version: str, tls: bool):
        lines = ('return 200 "$proxy_protocol_addr $proxy_protocol_port '
                 '$proxy_protocol_server_addr $proxy_protocol_server_port\\n";')
        why = h.NginxServer.available() or (h.Certs.available() if tls else "")
        if why:
            self.skipTest(why)
        certs = None
        listen = "proxy_protocol"
        if tls:
            certs = h.Certs()
            listen += " ssl"
            lines += f" ssl_certificate {certs.upstream[0]}; ssl_certificate_key {certs.upstream[1]};"
        try:
            with h.NginxServer(listen_options=listen, server_lines=lines) as nginx:
                cfg = h.Config()
                cfg.upstream("app", [nginx.address], proxy_protocol=version,
                             **({"tls": {"ca": certs.ca}} if tls else {}))
                port = cfg.listener("web", "app")
                with h.Grelay(cfg):
                    for _ in range(3):
                        with h.connect(port) as s:
                            client = s.getsockname()
                            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                            reply = b""
                            while chunk := s.recv(65536):
                                reply += chunk
                        head, _, body = reply.partition(b"\r\n\r\n")
                        self.assertTrue(head.startswith(b"HTTP/1.1 200"), reply[:200])
                        self.assertEqual(body.decode(),
                                         f"{client[0]} {client[1]} 127.0.0.1 {port}\n",
                                         nginx.error_log())
        finally:
            if certs is not None:
                certs.cleanup()

    def test_nginx_reads_the_client_address_v1(self):
        self._nginx_sees_the_client("v1", tls=False)

    def test_nginx_reads_the_client_address_v2(self):
        self._nginx_sees_the_client("v2", tls=False)

    def test_the_header_goes_before_tls(self):
        self._nginx_sees_the_client("v2", tls=True)

    def test_accepted_header_is_not_relayed_and_its_addresses_pass_on(self):
        with h.SinkServer() as up, h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("tell", [up.address], proxy_protocol="v2")
            cfg.upstream("echo", [echo.address])
            tell = cfg.listener("tell", "tell", accept_proxy_protocol=True)
            plain = cfg.listener("plain", "echo", accept_proxy_protocol=True)
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                # The header's client is forwarded, whether it came as v1 or v2.
                streams = []
                for i, version in enumerate(("v1", "v2")):
                    header = expected_header(version, ("203.0.113.7", 50000 + i),
                                             ("198.51.100.9", 443))
                    stream = h.Stream(700 + i, h.scaled(256 * h.KiB))
                    streams.append(stream)
                    r = h.stream_session(tell, stream, expect=b"",
                                         on_connect=lambda s, hd=header: s.sendall(hd))
                    self.assertTrue(r.ok, str(r))
                got = sorted(bytes(r.data) for r in up.records())
                want = sorted(expected_header("v2", ("203.0.113.7", 50000 + i),
                                              ("198.51.100.9", 443)) + s.bytes()
                              for i, s in enumerate(streams))
                self.assertEqual(got, want)
                # Header and first bytes in one segment, or the header in pieces: the
                # echo gets (and returns) exactly the stream.
                header = expected_header("v1", ("192.0.2.1", 1234), ("192.0.2.2", 80))
                for pieces in ([header + b"hello"], [header[:7], header[7:20], header[20:]]):
                    with h.connect(plain) as s:
                        for piece in pieces:
                            s.sendall(piece)
                            time.sleep(0.05)
                        s.sendall(b"-and-more")
                        s.shutdown(socket.SHUT_WR)
                        end, data = h.read_outcome(s, 10)
                    self.assertEqual(end, "eof")
                    self.assertEqual(data, b"".join(pieces)[len(header):] + b"-and-more")
                self.assertEqual(g.metric("grelay_proxy_protocol_errors_total", listener="plain"), 0)

    def test_connections_without_a_header_are_closed_and_counted(self):
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("echo", [echo.address])
            port = cfg.listener("web", "echo", accept_proxy_protocol=True,
                                connect_timeout="400ms")
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                end, data, _ = h.try_request(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                self.assertIn(end, ("reset", "eof"))
                self.assertEqual(data, b"")
                # A bare connect and close: a load balancer's TCP health check.
                with h.connect(port):
                    pass
                # Nothing at all: closed after connect_timeout.
                end, data, took = h.try_request(port, b"", timeout=10)
                self.assertIn(end, ("reset", "eof"))
                self.assertGreaterEqual(took, 0.35)
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_proxy_protocol_errors_total", listener="web") == 2, 5),
                    g.metric("grelay_proxy_protocol_errors_total", listener="web"))
                self.assertEqual(echo.conns, [], "nothing may reach the upstream")
                log = g.log()
                self.assertIn("listener web: PROXY protocol header: the client did not send one",
                              log)
                # Rate-limited: the timeout is not logged within the same minute.
                self.assertEqual(len(re.findall("PROXY protocol header", log)), 1, log)

    def test_only_peers_in_proxy_protocol_from_may_send_a_header(self):
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("echo", [echo.address])
            port = cfg.listener("web", "echo", accept_proxy_protocol=True,
                                proxy_protocol_from=["127.0.0.2", "10.0.0.0/8"])
            cfg.with_admin()
            with h.Grelay(cfg) as g:
                header = expected_header("v1", ("203.0.113.7", 50000), ("198.51.100.9", 443))
                # The load balancer's address: its header is taken, the stream relayed.
                with socket.create_connection(("127.0.0.1", port), timeout=10,
                                              source_address=("127.0.0.2", 0)) as s:
                    s.sendall(header + b"from the balancer")
                    s.shutdown(socket.SHUT_WR)
                    end, data = h.read_outcome(s, 10)
                self.assertEqual((end, data), ("eof", b"from the balancer"))
                # Any other peer: reset before a byte is read, however valid its header.
                end, data, _ = h.try_request(port, header + b"spoofed client address")
                self.assertIn(end, ("reset", "eof"))
                self.assertEqual(data, b"")
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_proxy_protocol_errors_total", listener="web") == 1, 5))
                self.assertEqual(len(echo.conns), 1, "only the balancer's session goes upstream")
                self.assertRegex(g.log(), r"listener web: PROXY protocol header from "
                                          r"127\.0\.0\.1:\d+, a peer outside "
                                          r"proxy_protocol_from: reset")

    def test_header_before_tls(self):
        certs = self.certs_or_skip()
        with h.SinkServer() as up:
            cfg = h.Config()
            cfg.upstream("tell", [up.address], proxy_protocol="v1")
            port = cfg.listener("web", "tell", accept_proxy_protocol=True,
                                tls={"cert": certs.server[0], "key": certs.server[1]})
            with h.Grelay(cfg):
                header = expected_header("v2", ("2001:db8::5", 61000), ("2001:db8::1", 443))
                raw = h.connect(port)
                raw.sendall(header)
                ctx = h.tls_client_context(certs.ca)
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(b"secret request")
                recs = up.records()
                self.assertEqual(len(recs), 1)
                self.assertEqual(bytes(recs[0].data),
                                 b"PROXY TCP6 2001:db8::5 2001:db8::1 61000 443\r\n"
                                 b"secret request")

    def test_tlvs_passed_on_and_added_with_a_checksum_byte_exact(self):
        certs = self.certs_or_skip()
        with h.SinkServer() as up:
            cfg = h.Config()
            cfg.upstream("tell", [up.address], proxy_protocol="v2",
                         proxy_protocol_tlvs=["alpn", "authority", "ssl", "received",
                                              "crc32c"])
            tls_port = cfg.listener("tls", "tell", accept_proxy_protocol=True,
                                    tls={"cert": certs.server[0], "key": certs.server[1],
                                         "alpn": ["h2"], "client_ca": certs.ca})
            plain_port = cfg.listener("plain", "tell", accept_proxy_protocol=True)
            cfg.with_admin()
            vpce = tlv(0xEA, b"\x01vpce-0a1b2c3d4e5f")  # AWS PrivateLink's endpoint ID
            received = (tlv(0x04, b"pad") + tlv(0x01, b"http/1.1") + tlv(0x02, b"lb.example") +
                        vpce)
            addresses = expected_header("v2", ("203.0.113.7", 50001), ("198.51.100.9", 443))
            with h.Grelay(cfg) as g:
                raw = h.connect(tls_port)
                raw.sendall(with_tlvs(addresses, received))
                ctx = h.tls_client_context(certs.ca)
                ctx.set_alpn_protocols(["h2", "http/1.1"])
                ctx.load_cert_chain(*certs.client("alice", "/CN=alice"))
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    version, cipher = s.version(), s.cipher()[0]
                    s.sendall(b"over TLS")
                stream = h.Stream(901, h.scaled(256 * h.KiB))
                r = h.stream_session(plain_port, stream, expect=b"", on_connect=lambda c:
                                     c.sendall(with_tlvs(addresses, received)))
                self.assertTrue(r.ok, str(r))
                recs = sorted(up.records(), key=lambda rec: len(rec.data))
                self.assertEqual(len(recs), 2)
                for rec, payload in zip(recs, (b"over TLS", stream.bytes())):
                    header, rest = h.split_proxy_v2(bytes(rec.data))
                    self.assertEqual(rest, payload, "the stream after the header")
                    self.assertEqual(header[:28], addresses[:14] + header[14:16] +
                                     addresses[16:], "the addresses")
                    got = h.read_tlvs(header)
                    kinds = [k for k, _ in got]
                    self.assertEqual(kinds, [0x01, 0x02, 0x20, 0xEA, 0x03], got)
                    checked = bytearray(header)
                    checked[-4:] = b"\0" * 4
                    self.assertEqual(struct.unpack("!I", got[4][1])[0],
                                     crc32c(bytes(checked)), "the checksum")
                    self.assertEqual(got[3], (0xEA, vpce[3:]), "passed on unchanged")
                    if payload == b"over TLS":
                        # What grelay's own handshake says wins over the balancer's TLVs.
                        self.assertEqual(got[0][1], b"h2")
                        self.assertEqual(got[1][1], b"localhost")
                        # A verified client certificate: bits SSL, CERT_CONN and
                        # CERT_SESS, verify 0, and its CN.
                        self.assertEqual(got[2][1], b"\x07\0\0\0\0" +
                                         tlv(0x21, version.encode()) + tlv(0x22, b"alice") +
                                         tlv(0x23, cipher.encode()))
                    else:
                        self.assertEqual(got[0][1], b"http/1.1")
                        self.assertEqual(got[1][1], b"lb.example")
                        self.assertEqual(got[2][1], b"\0\0\0\0\x01")
                # A checksum that does not match, or TLVs that do not fill the header: refused.
                for bad in (with_tlvs(addresses, received, flip=1),
                            with_tlvs(addresses, tlv(0x02, b"x")[:-1] + b"\0\x05x",
                                      checksum=False)):
                    with h.connect(plain_port) as c:
                        c.sendall(bad + b"data")
                        end, _ = h.read_outcome(c, 10)
                    self.assertEqual(end, "reset")
                self.assertEqual(
                    g.metric("grelay_proxy_protocol_errors_total", listener="plain"), 2)
                self.assertEqual(len(up.records()), 2, "nothing connected for them")

    def test_haproxy_verifies_the_checksum_and_reads_the_authority_and_id(self):
        why = h.HaproxyServer.available() or h.Certs.available()
        if why:
            self.skipTest(why)
        certs = h.Certs()
        lines = ('http-request return status 200 content-type text/plain '
                 'lf-string "%[fc_pp_authority] %[src] %[src_port] %[fc_pp_unique_id]\\n"')
        log = os.path.join(certs.dir, "access.log")
        try:
            with h.HaproxyServer(bind_options="accept-proxy", frontend_lines=lines) as hap:
                cfg = h.Config()
                cfg.upstream("app", [hap.address], proxy_protocol="v2",
                             proxy_protocol_tlvs=["authority", "ssl", "unique_id", "crc32c"])
                port = cfg.listener("web", "app", access_log=log,
                                    tls={"cert": certs.server[0], "key": certs.server[1]})
                ids = {}
                with h.Grelay(cfg):
                    for _ in range(3):
                        raw = h.connect(port)
                        client = raw.getsockname()
                        ctx = h.tls_client_context(certs.ca)
                        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                            reply = b""
                            while chunk := s.recv(65536):
                                reply += chunk
                        head, _, body = reply.partition(b"\r\n\r\n")
                        self.assertTrue(head.startswith(b"HTTP/1.1 200"), reply[:200] + b"\n" +
                                        hap.log().encode())
                        authority, src, src_port, unique_id = body.decode().split()
                        self.assertEqual((authority, src, int(src_port)),
                                         ("localhost", client[0], client[1]))
                        ids[f"{client[0]}:{client[1]}"] = unique_id
                # The ID HAProxy read is the access log's for the same session.
                with open(log) as f:
                    logged = {x["client"]: x["id"] for x in map(json.loads, f)}
                self.assertEqual(logged, ids)
        finally:
            certs.cleanup()


if __name__ == "__main__":
    h.main()
