#!/usr/bin/env python3
"""The tap through the real relay: every session grelay relayed (both directions, small
messages and large transfers, sessions ending with FIN and with a reset) comes back out
of `grelay tap export --pcap` byte for byte, as tshark's `follow,tcp,raw` reassembles it;
counters match; max_size stops recording without touching the relay."""

import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

import harness as h


def client_ports_by_stream(pcap):
    """{tcp.stream index: client port} from the synthesized SYNs."""
    out = subprocess.run(["tshark", "-r", pcap, "-T", "fields", "-e", "tcp.stream",
                          "-e", "tcp.srcport", "-Y", "tcp.flags.syn==1 && tcp.flags.ack==0"],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    streams = {}
    for line in out.stdout.split("\n"):
        if line.strip():
            stream, port = line.split()
            streams[int(stream)] = int(port)
    return streams


def follow_all(pcap, streams):
    """tshark_follow() for many streams in one tshark run: {stream: (node 0, node 1)}."""
    args = ["tshark", "-r", pcap, "-q"]
    for n in streams:
        args += ["-z", f"follow,tcp,raw,{n}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    result = {}
    for block in out.stdout.split("Follow: tcp,raw")[1:]:
        header, _, body = block.partition("Node 1:")
        stream = int(header.split("Filter: tcp.stream eq ")[1].split()[0])
        sides = [bytearray(), bytearray()]
        for line in body.split("\n")[1:]:
            if not line.strip():
                continue
            if line.startswith("="):
                break
            sides[1 if line.startswith("\t") else 0] += bytes.fromhex(line.strip())
        result[stream] = (bytes(sides[0]), bytes(sides[1]))
    return result


def ping_pong(port, seed, count):
    """`count` small request/response exchanges on one connection (the kind of traffic
    whose tap writes grelay batches), then a half-close. Returns (client port, sent)."""
    msgs = [h.Stream(seed * 1000 + i, 40 + (seed * 7 + i * 13) % 900).bytes() for i in range(count)]
    s = h.connect(port)
    s.settimeout(20)
    local = s.getsockname()[1]
    for m in msgs:
        s.sendall(m)
        got = bytearray()
        while len(got) < len(m):
            d = s.recv(len(m) - len(got))
            if not d:
                raise AssertionError("EOF in the middle of a ping-pong")
            got += d
        if bytes(got) != m:
            raise AssertionError("ping-pong echo mismatch")
    s.shutdown(socket.SHUT_WR)
    if s.recv(1) != b"":
        raise AssertionError("bytes after the echo")
    s.close()
    return local, b"".join(msgs)


class TapTest(h.GrelayTest):
    def setUp(self):
        super().setUp()
        if not shutil.which("tshark"):
            self.skipTest("tshark is not installed")
        self.dir = tempfile.mkdtemp(prefix="grelay-tap-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def export(self, tap_dir):
        pcap = os.path.join(self.dir, "out.pcap")
        r = h.run_grelay(["tap", "export", "--pcap", pcap, tap_dir], timeout=300)
        return r, pcap

    def test_every_session_exports_byte_exact_in_both_directions(self):
        tap_dir = os.path.join(self.dir, "tap")
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            admin = cfg.with_admin()
            port = cfg.listener("web", "app", tap={"path": tap_dir})
            g = h.Grelay(cfg).start()
            expected = {}  # client port -> bytes (echoed, so the same both ways)
            # Large transfers, concurrently (mainline chunks up to chunk_size).
            streams = [h.Stream(100 + i, h.scaled(256 * h.KiB + i * 131 * h.KiB))
                       for i in range(12)]
            results = h.run_concurrently(
                lambda i: h.stream_session(port, streams[i], index=i), [(i,) for i in range(12)])
            for r, s in zip(results, streams):
                self.assertTrue(r.ok, str(r))
                expected[r.local_port] = s.bytes()
            # Small messages, many per session (the staged tap writes).
            for seed in range(6):
                local, sent = ping_pong(port, seed, 60)
                expected[local] = sent
            # A session the client resets after an exchange.
            s = h.connect(port)
            reset_port = s.getsockname()[1]
            s.sendall(b"before the reset")
            self.assertEqual(s.recv(100), b"before the reset")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            expected[reset_port] = b"before the reset"
            total = sum(len(v) for v in expected.values())
            self.assertTrue(h.wait_for(
                lambda: h.parse_metrics(h.scrape_metrics(admin)).get(
                    ("grelay_tap_bytes_total", (("listener", "web"),)), 0) >= 2 * total, 10),
                "tap bytes never reached what was relayed")
            m = h.parse_metrics(h.scrape_metrics(admin))
            self.assertEqual(m[("grelay_tap_bytes_total", (("listener", "web"),))], 2 * total)
            self.assertEqual(m[("grelay_tap_dropped_bytes_total", (("listener", "web"),))], 0)
            g.stop()

        r, pcap = self.export(tap_dir)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        ports = client_ports_by_stream(pcap)
        self.assertEqual(sorted(ports.values()), sorted(expected))
        followed = follow_all(pcap, sorted(ports))
        for stream, client_port in ports.items():
            sent, received = followed[stream]
            want = expected[client_port]
            self.assertEqual(len(sent), len(want), f"stream {stream} (client port {client_port})")
            self.assertTrue(sent == want, f"stream {stream}: request bytes differ")
            self.assertTrue(received == want, f"stream {stream}: response bytes differ")

    def test_max_size_stops_recording_and_counts_the_rest(self):
        tap_dir = os.path.join(self.dir, "tap")
        with h.EchoServer() as echo:
            cfg = h.Config(workers=1)
            cfg.upstream("app", [echo.address])
            admin = cfg.with_admin()
            port = cfg.listener("web", "app", tap={"path": tap_dir, "max_size": "1MiB"})
            g = h.Grelay(cfg).start()
            for i in range(4):
                r = h.stream_session(port, h.Stream(200 + i, 1 * h.MiB))
                self.assertTrue(r.ok, f"the relay must not care about the tap: {r}")
            def counted():
                m = h.parse_metrics(h.scrape_metrics(admin))
                return (m[("grelay_tap_bytes_total", (("listener", "web"),))],
                        m[("grelay_tap_dropped_bytes_total", (("listener", "web"),))])

            # Tap writes complete after the sessions: wait for the last ones.
            h.wait_for(lambda: sum(counted()) >= 2 * 4 * h.MiB, 10)
            recorded, dropped = counted()
            self.assertEqual(recorded + dropped, 2 * 4 * h.MiB)
            self.assertGreater(dropped, 0)
            self.assertIn("reached its share of max_size", g.log())
            g.stop()
        size = sum(os.path.getsize(os.path.join(tap_dir, f)) for f in os.listdir(tap_dir))
        self.assertLessEqual(size, 1 * h.MiB)
        r, pcap = self.export(tap_dir)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_sighup_rotates_the_files_and_sessions_finish_in_theirs(self):
        """A reload starts new files for the sessions after it; a session open across it
        stays whole in the old file, which is finished (file-end record) once that session
        ends."""
        tap_dir = os.path.join(self.dir, "tap")
        with h.EchoServer() as echo:
            cfg = h.Config(workers=1)
            cfg.upstream("app", [echo.address])
            admin = cfg.with_admin()
            port = cfg.listener("web", "app", tap={"path": tap_dir})
            g = h.Grelay(cfg).start()
            old = h.connect(port)
            old.settimeout(20)
            old_port = old.getsockname()[1]
            first = h.Stream(300, 256 * h.KiB).bytes()
            old.sendall(first)
            got = bytearray()
            while len(got) < len(first):
                got += old.recv(len(first) - len(got))
            self.assertEqual(bytes(got), first)
            (old_file,) = os.listdir(tap_dir)
            # Files of the names this second (and the next few) would give, as when reloads
            # come within one second: the new file takes the next number instead of failing.
            now = int(time.time())
            taken = [os.path.join(tap_dir, time.strftime(f"web-w0-%Y%m%dT%H%M%SZ-{g.proc.pid}.gtap",
                                                         time.gmtime(now + i)))
                     for i in range(5)]
            for path in taken:
                open(path, "a").close()
            g.proc.send_signal(signal.SIGHUP)
            self.assertTrue(h.wait_for(lambda: "SIGHUP: reloaded" in g.log(), 10), g.log())
            for path in taken:
                if os.path.getsize(path) == 0:
                    os.unlink(path)
            self.assertTrue(any(f.endswith(f"-{g.proc.pid}-1.gtap") for f in os.listdir(tap_dir)),
                            os.listdir(tap_dir))
            new_stream = h.Stream(301, 384 * h.KiB)
            new = h.stream_session(port, new_stream)
            self.assertTrue(new.ok, str(new))
            files = sorted(os.listdir(tap_dir))
            self.assertEqual(len(files), 2, files)
            self.assertEqual(self.export(os.path.join(tap_dir, old_file))[0].returncode, 1,
                             "the old file is unfinished while its session is open")
            last = h.Stream(302, 64 * h.KiB).bytes()
            old.sendall(last)
            old.shutdown(socket.SHUT_WR)
            got = bytearray()
            while True:
                d = old.recv(64 * h.KiB)
                if not d:
                    break
                got += d
            old.close()
            self.assertEqual(bytes(got), last)
            self.assertTrue(h.wait_for(
                lambda: "finished its last session" in g.log(), 10), g.log())
            r, pcap = self.export(os.path.join(tap_dir, old_file))
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            (stream,) = client_ports_by_stream(pcap)
            sent, received = follow_all(pcap, [stream])[stream]
            self.assertTrue(sent == first + last and received == first + last)
            m = h.parse_metrics(h.scrape_metrics(admin))
            self.assertEqual(m[("grelay_tap_dropped_bytes_total", (("listener", "web"),))], 0)
            g.stop()
        r, pcap = self.export(tap_dir)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(sorted(client_ports_by_stream(pcap).values()),
                         sorted([old_port, new.local_port]))


if __name__ == "__main__":
    h.main()
