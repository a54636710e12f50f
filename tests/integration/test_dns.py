#!/usr/bin/env python3
"""resolve_interval: an upstream server and a mirror written with host names follow the
names when they move. grelay runs in its own mount namespace with a hosts file of the
test's bind-mounted over /etc/hosts, so rewriting that file is a real change of what the
system's resolver (getaddrinfo, "files" first in nsswitch.conf) answers.

A moved name is applied in place, in the running generation (no new workers or buffers):
new sessions go to the new address, and so do sessions still waiting for a slot
(queue_timeout); a session already open stays byte-exact on the old server. A name that still resolves to the address in use among other answers changes
nothing; one that stops resolving keeps it."""

import contextlib
import os
import subprocess
import tempfile

import harness as h

HOST_UP = "backend.grelay.test"
HOST_MIRROR = "sink.grelay.test"
MOVED = "DNS: new sessions use the new addresses"


def namespace_problem() -> str | None:
    """Why grelay cannot get a private /etc/hosts here (None: it can)."""
    with tempfile.NamedTemporaryFile("w", suffix=".hosts") as f:
        f.write(f"127.0.0.2 {HOST_UP}\n")
        f.flush()
        try:
            r = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 'mount --bind "$0" /etc/hosts && getent ahostsv4 ' + HOST_UP, f.name],
                capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"cannot run unshare: {e}"
        if r.returncode != 0 or "127.0.0.2" not in r.stdout:
            return ("a private mount namespace with its own /etc/hosts is not available "
                    f"(needs root and unshare): {(r.stderr or r.stdout).strip()}")
    return None


class DnsTest(h.GrelayTest):
    def setUp(self):
        super().setUp()
        why = namespace_problem()
        if why:
            self.skipTest(why)
        fd, self.hosts = tempfile.mkstemp(prefix="grelay-hosts-")
        os.close(fd)
        self.addCleanup(os.unlink, self.hosts)

    def write_hosts(self, text: str) -> None:
        # In place (the bind mount follows the inode, not the name) and in one write from
        # offset 0, never truncating: a lookup in between would see an empty file, fail, and
        # log "cannot resolve". A shorter text is padded with empty lines to the old length.
        data = text.encode()
        data += b"\n" * max(0, os.path.getsize(self.hosts) - len(data))
        fd = os.open(self.hosts, os.O_WRONLY)
        try:
            self.assertEqual(os.pwrite(fd, data, 0), len(data))
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def servers_at_both(self, port: int, mport: int):
        """An echo server on `port` and a sink on `mport`, each at 127.0.0.1 and at
        127.0.0.2: (echo .1, echo .2, sink .1, sink .2)."""
        with self.echo_at_both(port) as (echo_one, echo_two), \
                h.SinkServer(host="127.0.0.1", port=mport) as sink_one, \
                h.SinkServer(host="127.0.0.2", port=mport) as sink_two:
            yield echo_one, echo_two, sink_one, sink_two

    @contextlib.contextmanager
    def echo_at_both(self, port: int):
        """An echo server on `port` at 127.0.0.1 and one at 127.0.0.2."""
        with h.EchoServer(host="127.0.0.1", port=port) as echo_one, \
                h.EchoServer(host="127.0.0.2", port=port) as echo_two:
            yield echo_one, echo_two

    def grelay(self, cfg) -> h.Grelay:
        return h.Grelay(cfg, wrapper=[
            "unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/hosts && exec "$@"', self.hosts])

    def test_a_moved_name_is_followed_and_open_sessions_stay(self):
        self.write_hosts(f"127.0.0.1 {HOST_UP} {HOST_MIRROR}\n")
        port = h.free_port("127.0.0.1")
        mport = h.free_port("127.0.0.1")
        with self.servers_at_both(port, mport) as (old, new, old_sink, new_sink):
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [f"{HOST_UP}:{port}"], resolve_interval="100ms")
            web = cfg.listener("web", "app", mirrors=[{
                "name": "shadow", "address": f"{HOST_MIRROR}:{mport}",
                "resolve_interval": "100ms"}])
            with self.grelay(cfg) as g:
                r = h.stream_session(web, h.Stream(1, 64 * h.KiB))
                self.assertTrue(r.ok, str(r))
                self.assertEqual((len(old.conns), len(new.conns)), (1, 0))
                # A session open across the move: its first half now ...
                first, second = h.Stream(2, 96 * h.KiB).bytes()[:40000], None
                held = h.connect(web, "127.0.0.1", 30)
                held.sendall(first)
                got = bytearray()
                while len(got) < len(first):
                    chunk = held.recv(65536)
                    self.assertTrue(chunk, "the held session ended early")
                    got += chunk

                self.write_hosts(f"127.0.0.2 {HOST_UP} {HOST_MIRROR}\n")
                self.assertTrue(h.wait_for(lambda: g.log().count(MOVED) >= 1, 15),
                                "the move was not applied")
                self.assertTrue(h.wait_for(
                    lambda: g.metric("grelay_upstream_dns_lookups_total", upstream="app",
                                     result="changed") >= 1 and
                    g.metric("grelay_mirror_dns_lookups_total", mirror="shadow",
                             result="changed") >= 1, 15), g.log())
                self.assertIn(f"now resolves to 127.0.0.2:{port}, not 127.0.0.1:{port}", g.log())
                self.assertIn(f"now resolves to 127.0.0.2:{mport}, not 127.0.0.1:{mport}",
                              g.log())
                for i in range(4):
                    r = h.stream_session(web, h.Stream(10 + i, 64 * h.KiB))
                    self.assertTrue(r.ok, str(r))
                self.assertEqual((len(old.conns), len(new.conns)), (2, 4))
                # Server "0" is the same series before and after: its total goes on.
                self.assertEqual(g.metric("grelay_upstream_server_sessions_total",
                                          upstream="app", server="0"), 6)

                # ... and its second half after: still on the old server, byte-exact.
                second = h.Stream(2, 96 * h.KiB).bytes()[40000:]
                held.sendall(second)
                held.shutdown(h.socket.SHUT_WR)
                while chunk := held.recv(65536):
                    got += chunk
                held.close()
                self.assertEqual(bytes(got), first + second)
                self.assertTrue(h.wait_for(lambda: all(c.done for c in old.conns), 10))
                self.assertEqual(len(old.conns), 2)
                # Applied in place: one generation throughout, none started or retired.
                self.assertEqual(g.metric("grelay_config_generations"), 1)
                self.assertNotIn("generation", g.log())

                # The mirror moved with its name: each session's request bytes whole at
                # the sink its session started with.
                self.assertTrue(h.wait_for(
                    lambda: len(old_sink.conns) == 2 and len(new_sink.conns) == 4 and
                    all(c.done for c in old_sink.conns + new_sink.conns), 15),
                    f"{len(old_sink.conns)} {len(new_sink.conns)}")
                self.assertEqual(bytes(old_sink.conns[1].data), first + second)
                for i, c in enumerate(new_sink.conns):
                    self.assertEqual(bytes(c.data), h.Stream(10 + i, 64 * h.KiB).bytes())
                self.assertEqual(g.log().count(MOVED), 1, g.log())
                self.assertEqual(g.metric("grelay_config_reloads_total", cause="dns",
                                          result="ok"), 1)

    def test_sessions_waiting_for_a_slot_when_the_name_moves_go_to_the_new_address(self):
        self.write_hosts(f"127.0.0.1 {HOST_UP}\n")
        port = h.free_port("127.0.0.1")
        with self.echo_at_both(port) as (old, new):
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [{"address": f"{HOST_UP}:{port}", "max_conns": 1}],
                         resolve_interval="100ms", queue_timeout="60s")
            web = cfg.listener("web", "app")
            with self.grelay(cfg) as g:
                waiting = lambda: g.metric("grelay_upstream_queued_sessions", listener="web")
                # A long session holds the old address's only slot; two more wait for it,
                # their bytes sent.
                held = h.connect(web, "127.0.0.1", 30)
                held.sendall(b"x")
                self.assertEqual(held.recv(1), b"x")
                payloads = [h.Stream(20 + i, 48 * h.KiB).bytes() for i in range(2)]
                waiters = []
                for n, payload in enumerate(payloads, 1):
                    c = h.connect(web, "127.0.0.1", 30)
                    c.sendall(payload)
                    waiters.append(c)
                    self.assertTrue(h.wait_for(lambda: waiting() == n, 10), g.log_tail())

                # The name moves. The waiters do not wait for the old address (which the
                # held session could keep for their whole queue_timeout): the first takes
                # the new address's slot at once, the second waits for it in turn.
                self.write_hosts(f"127.0.0.2 {HOST_UP}\n")
                self.assertTrue(h.wait_for(lambda: g.log().count(MOVED) >= 1, 15),
                                "the move was not applied")
                first = waiters[0]
                got = bytearray()
                while len(got) < len(payloads[0]):
                    chunk = first.recv(65536)
                    self.assertTrue(chunk, "the first waiter ended early")
                    got += chunk
                self.assertEqual(bytes(got), payloads[0])
                self.assertEqual((len(old.conns), len(new.conns)), (1, 1))
                self.assertEqual(waiting(), 1)
                first.close()
                second = waiters[1]
                second.shutdown(h.socket.SHUT_WR)
                self.assertEqual(h.read_outcome(second, 15), ("eof", payloads[1]))
                second.close()
                self.assertEqual((len(old.conns), len(new.conns)), (1, 2))
                self.assertEqual(waiting(), 0)
                self.assertEqual(g.metric("grelay_upstream_unavailable_total", listener="web"),
                                 0)

                # The held session stayed on the old server throughout.
                held.sendall(b"y")
                self.assertEqual(held.recv(1), b"y")
                held.close()
                self.assertEqual(g.metric("grelay_upstream_queued_total", listener="web"), 2)

    def test_an_address_still_answered_is_kept_and_a_failed_lookup_keeps_it_too(self):
        self.write_hosts(f"127.0.0.2 {HOST_UP}\n")
        port = h.free_port("127.0.0.1")
        with self.echo_at_both(port) as (one, two):
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [f"{HOST_UP}:{port}"], resolve_interval="100ms")
            web = cfg.listener("web", "app")
            with self.grelay(cfg) as g:
                def lookups(result):
                    return g.metric("grelay_upstream_dns_lookups_total", upstream="app",
                                    result=result)

                # Two answers, the one in use second: nothing changes.
                self.write_hosts(f"127.0.0.1 {HOST_UP}\n127.0.0.2 {HOST_UP}\n")
                start = lookups("unchanged")
                self.assertTrue(h.wait_for(lambda: lookups("unchanged") >= start + 5, 15))
                # No answer at all: the address in use stays, the failure is logged once.
                self.write_hosts("127.0.0.9 unrelated.grelay.test\n")
                self.assertTrue(h.wait_for(lambda: lookups("failed") >= 3, 15), g.log())
                self.assertEqual(g.log().count(
                    f"DNS: {HOST_UP}:{port} (upstream app, server 0): cannot resolve host "
                    f"'{HOST_UP}'"), 1, g.log())
                self.assertIn(f"keeping 127.0.0.2:{port}", g.log())
                for i in range(3):
                    r = h.stream_session(web, h.Stream(i, 32 * h.KiB))
                    self.assertTrue(r.ok, str(r))
                self.write_hosts(f"127.0.0.2 {HOST_UP}\n")
                self.assertTrue(h.wait_for(lambda: "resolves again" in g.log(), 15), g.log())
                r = h.stream_session(web, h.Stream(9, 32 * h.KiB))
                self.assertTrue(r.ok, str(r))
                self.assertEqual(lookups("changed"), 0)
                self.assertNotIn(MOVED, g.log())
            self.assertEqual((len(one.conns), len(two.conns)), (0, 4))


    def test_a_server_with_all_addresses_follows_the_set_of_answers(self):
        """all_addresses: a name with several addresses (a headless Kubernetes service) is
        one server per address; an address added or gone gives new sessions the new set, a
        reordering changes nothing."""
        self.write_hosts(f"127.0.0.1 {HOST_UP}\n127.0.0.2 {HOST_UP}\n")
        port = h.free_port("127.0.0.1")
        with h.EchoServer(host="127.0.0.1", port=port) as one, \
                h.EchoServer(host="127.0.0.2", port=port) as two, \
                h.EchoServer(host="127.0.0.3", port=port) as three:
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [{"address": f"{HOST_UP}:{port}", "all_addresses": True}],
                         resolve_interval="100ms")
            web = cfg.listener("web", "app")
            with self.grelay(cfg) as g:
                def up(ip):
                    return g.metric("grelay_upstream_server_up", upstream="app",
                                    server=f"0@{ip}:{port}")

                def sessions(first, n):
                    for i in range(n):
                        r = h.stream_session(web, h.Stream(first + i, 32 * h.KiB))
                        self.assertTrue(r.ok, str(r))

                self.assertEqual((up("127.0.0.1"), up("127.0.0.2")), (1, 1))
                sessions(0, 4)  # round robin over both addresses
                self.assertEqual((len(one.conns), len(two.conns), len(three.conns)), (2, 2, 0))

                # Reordered: the same set, nothing moves.
                self.write_hosts(f"127.0.0.2 {HOST_UP}\n127.0.0.1 {HOST_UP}\n")
                start = g.metric("grelay_upstream_dns_lookups_total", upstream="app",
                                 result="unchanged")
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_upstream_dns_lookups_total", upstream="app",
                    result="unchanged") >= start + 3, 15), g.log())

                # One address gone, another added: new sessions take the new set.
                self.write_hosts(f"127.0.0.2 {HOST_UP}\n127.0.0.3 {HOST_UP}\n")
                self.assertTrue(h.wait_for(lambda: MOVED in g.log(), 15),
                                g.log())
                self.assertIn(f"DNS: {HOST_UP}:{port} (upstream app, server 0) now resolves to "
                              f"127.0.0.2:{port}, 127.0.0.3:{port}, not ", g.log())
                sessions(10, 4)
                self.assertEqual((len(one.conns), len(two.conns), len(three.conns)), (2, 4, 2))
                self.assertTrue(h.wait_for(lambda: g.metric(
                    "grelay_upstream_server_up", upstream="app",
                    server=f"0@127.0.0.3:{port}") == 1, 10))
                self.assertEqual(g.log().count(MOVED), 1, g.log())
            for c in one.conns + two.conns + three.conns:
                self.assertTrue(c.done)

    def test_with_resolve_hold_a_changing_subset_of_answers_moves_nothing(self):
        """resolve_hold: a resolver answering a different subset of a name's addresses at
        each lookup leaves an all_addresses pool as it is, and a mirror on the address it
        uses; an address unanswered for the whole hold leaves them."""
        self.write_hosts(f"127.0.0.1 {HOST_UP} {HOST_MIRROR}\n"
                         f"127.0.0.2 {HOST_UP} {HOST_MIRROR}\n")
        port = h.free_port("127.0.0.1")
        mport = h.free_port("127.0.0.1")
        with self.servers_at_both(port, mport) as (one, two, sink_one, sink_two):
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [{"address": f"{HOST_UP}:{port}", "all_addresses": True}],
                         resolve_interval="100ms", resolve_hold="1500ms")
            web = cfg.listener("web", "app", mirrors=[{
                "name": "shadow", "address": f"{HOST_MIRROR}:{mport}",
                "resolve_interval": "100ms", "resolve_hold": "1500ms"}])
            with self.grelay(cfg) as g:
                def lookups(result):
                    return g.metric("grelay_upstream_dns_lookups_total", upstream="app",
                                    result=result)

                def mirror_lookups(result):
                    return g.metric("grelay_mirror_dns_lookups_total", mirror="shadow",
                                    result=result)

                # One address per answer, alternating, over several lookups each.
                for i in range(6):
                    self.write_hosts(f"127.0.0.{1 + i % 2} {HOST_UP} {HOST_MIRROR}\n")
                    start, mstart = lookups("unchanged"), mirror_lookups("unchanged")
                    self.assertTrue(h.wait_for(lambda: lookups("unchanged") >= start + 2 and
                                               mirror_lookups("unchanged") >= mstart + 2, 15),
                                    g.log())
                self.assertEqual((lookups("changed"), mirror_lookups("changed")), (0, 0))
                self.assertNotIn(MOVED, g.log())
                for i in range(4):  # both still servers; the mirror where it was
                    r = h.stream_session(web, h.Stream(i, 32 * h.KiB))
                    self.assertTrue(r.ok, str(r))
                self.assertEqual((len(one.conns), len(two.conns)), (2, 2))
                self.assertTrue(h.wait_for(lambda: len(sink_one.conns) == 4, 10))
                self.assertEqual(len(sink_two.conns), 0)

                # 127.0.0.1 is no longer answered at all: it leaves once the hold is over.
                self.write_hosts(f"127.0.0.2 {HOST_UP} {HOST_MIRROR}\n")
                self.assertTrue(h.wait_for(lambda: MOVED in g.log(), 15), g.log())
                self.assertTrue(h.wait_for(lambda: mirror_lookups("changed") >= 1, 15))
                self.assertIn(f"now resolves to 127.0.0.2:{port}, not ", g.log())
                self.assertTrue(h.wait_for(lambda: g.log().count(MOVED) >= 1 and
                                           f"127.0.0.2:{mport}, not 127.0.0.1:{mport}" in g.log(),
                                           15), g.log())
                for i in range(2):
                    r = h.stream_session(web, h.Stream(10 + i, 32 * h.KiB))
                    self.assertTrue(r.ok, str(r))
                self.assertEqual((len(one.conns), len(two.conns)), (2, 4))
                self.assertTrue(h.wait_for(lambda: len(sink_two.conns) == 2, 10))

    def test_health_checks_follow_the_move(self):
        """The pool's health checks go to the new address once it moved, and no longer to
        the old one; the checks' counters go on. A pool the move left alone keeps its
        schedule (the move adds no round of its)."""
        self.write_hosts(f"127.0.0.1 {HOST_UP}\n")
        port = h.free_port("127.0.0.1")
        with h.EchoServer(host="127.0.0.1", port=port) as old, \
                h.EchoServer(host="127.0.0.2", port=port) as new, \
                h.EchoServer() as steady:
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [f"{HOST_UP}:{port}"], resolve_interval="100ms",
                         check_interval="200ms")
            cfg.upstream("other", [steady.address], check_interval="1h")
            cfg.listener("other", "other")
            web = cfg.listener("web", "app")
            with self.grelay(cfg) as g:
                def checks():
                    return g.metric("grelay_upstream_health_checks_total", upstream="app",
                                    result="ok")

                self.assertTrue(h.wait_for(lambda: len(old.conns) >= 2, 10))
                self.write_hosts(f"127.0.0.2 {HOST_UP}\n")
                self.assertTrue(h.wait_for(lambda: MOVED in g.log(), 15), g.log())
                before = checks()
                self.assertTrue(h.wait_for(lambda: len(new.conns) >= 2, 10), g.log())
                self.assertTrue(h.wait_for(lambda: checks() >= before + 2, 10))
                settled = len(old.conns)
                self.assertTrue(h.wait_for(lambda: len(new.conns) >= 5, 10))
                self.assertEqual(len(old.conns), settled, "checks still go to the old address")
                r = h.stream_session(web, h.Stream(1, 32 * h.KiB))
                self.assertTrue(r.ok, str(r))
                self.assertEqual(g.metric("grelay_upstream_server_up", upstream="app"), 1)
                self.assertEqual(g.metric("grelay_upstream_health_checks_total",
                                          upstream="other", result="ok"), 1)
                self.assertEqual(len(steady.conns), 1)

    def test_a_move_keeps_the_tls_contexts_and_does_not_read_the_files_again(self):
        """A DNS move changes addresses only: sessions after it are served TLS with the
        contexts already loaded (only SIGHUP reads certificate files), so a certificate
        being rotated or gone at that moment cannot fail it."""
        certs = h.Certs()
        self.addCleanup(certs.cleanup)
        self.write_hosts(f"127.0.0.1 {HOST_UP}\n")
        port = h.free_port("127.0.0.1")
        with self.echo_at_both(port) as (old, new):
            cfg = h.Config()
            cfg.upstream("app", [f"{HOST_UP}:{port}"], resolve_interval="100ms")
            cert, key = certs.server
            web = cfg.listener("web", "app", tls={"cert": cert, "key": key})
            with self.grelay(cfg) as g:
                ctx = h.tls_client_context(certs.ca)

                def echo(payload):
                    with ctx.wrap_socket(h.connect(web), server_hostname="localhost") as s:
                        s.sendall(payload)
                        got = b""
                        while len(got) < len(payload):
                            chunk = s.recv(65536)
                            self.assertTrue(chunk, "the TLS session ended early")
                            got += chunk
                        self.assertEqual(got, payload)

                echo(b"before")
                os.rename(cert, cert + ".gone")
                os.rename(key, key + ".gone")
                self.write_hosts(f"127.0.0.2 {HOST_UP}\n")
                self.assertTrue(h.wait_for(lambda: MOVED in g.log(), 15),
                                g.log())
                echo(b"after" * 1000)
                self.assertNotIn("cannot apply", g.log())
            self.assertEqual((len(old.conns), len(new.conns)), (1, 1))

    def test_long_sessions_hold_no_move_back_and_keep_their_servers(self):
        """Each move applies at once, whatever stays open: six moves, each leaving a session
        on the address it started with. Every held session then still echoes byte-exact
        on its own server, and there was one generation throughout (no workers, rings or
        buffer pools added per move)."""
        port = h.free_port("127.0.0.1")
        ips = ["127.0.0.1", "127.0.0.2"]
        with h.EchoServer(host=ips[0], port=port) as a, h.EchoServer(host=ips[1], port=port) as b:
            servers = {ips[0]: a, ips[1]: b}
            self.write_hosts(f"{ips[0]} {HOST_UP}\n")
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("app", [f"{HOST_UP}:{port}"], resolve_interval="100ms")
            web = cfg.listener("web", "app")
            with self.grelay(cfg) as g:
                held = []  # (socket, the address its session is on)

                def hold(ip):
                    before = len(servers[ip].conns)
                    s = h.connect(web, "127.0.0.1", 30)
                    s.sendall(b"held")
                    self.assertEqual(s.recv(16), b"held")
                    self.assertEqual(len(servers[ip].conns), before + 1, f"not on {ip}")
                    held.append((s, ip))

                hold(ips[0])
                for n in range(1, 7):
                    ip = ips[n % 2]
                    self.write_hosts(f"{ip} {HOST_UP}\n")
                    self.assertTrue(h.wait_for(lambda n=n: g.log().count(MOVED) == n, 15),
                                    g.log())
                    hold(ip)
                self.assertEqual(g.metric("grelay_config_generations"), 1)
                self.assertEqual(g.metric("grelay_config_reloads_total", cause="dns",
                                          result="ok"), 6)
                self.assertEqual((len(a.conns), len(b.conns)), (4, 3))
                # A reload after the moves starts from the addresses as they moved.
                g.send_signal(h.signal.SIGHUP)
                self.assertTrue(h.wait_for(lambda: "SIGHUP: reloaded" in g.log(), 15), g.log())
                hold(ips[0])
                self.assertEqual(g.metric("grelay_config_generations"), 2)
                for i, (s, ip) in enumerate(held):
                    payload = h.Stream(i, 48 * h.KiB).bytes()
                    s.sendall(payload)
                    s.shutdown(h.socket.SHUT_WR)
                    got = bytearray()
                    while chunk := s.recv(65536):
                        got += chunk
                    s.close()
                    self.assertEqual(bytes(got), payload, f"session {i} on {ip}")
                self.assertTrue(h.wait_for(
                    lambda: all(c.done for c in a.conns + b.conns), 10))
                for ip, server in servers.items():
                    self.assertEqual([c.received for c in server.conns],
                                     [4 + 48 * h.KiB] * len(server.conns), ip)


if __name__ == "__main__":
    h.main()
