#!/usr/bin/env python3
"""io_uring unavailable (a seccomp filter makes io_uring_setup fail with EPERM, or
ENOSYS as on a kernel without io_uring): `grelay -c valid.toml` exits 2 with a message
naming the cause and the fix, and `grelay --features` reports io_uring unavailable
(exit 2 as well)."""

import os
import subprocess
import sys

import harness as h

NR_IO_URING_SETUP = 425
EXPECTED = {
    # mode: (errno name in the message, a phrase of the fix)
    "eperm": ("EPERM", "--security-opt seccomp="),
    "enosys": ("ENOSYS", "seccomp profile"),
}


class NoUringTest(h.GrelayTest):
    needs_uring = False

    def setUp(self):
        self.helper = h.no_uring_helper()
        if not self.helper:
            self.fail("no no_uring helper: set GRELAY_NO_URING or install a C compiler")

    def _helper_blocks_io_uring(self, mode: str) -> None:
        """The wrapper itself works: io_uring_setup really fails with the errno."""
        probe = ("import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); "
                 f"r = libc.syscall({NR_IO_URING_SETUP}, 1, None); "
                 "print(r, ctypes.get_errno())")
        out = subprocess.run([self.helper, mode, sys.executable, "-c", probe],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        want = {"eperm": 1, "enosys": 38}[mode]
        self.assertEqual(out.stdout.split(), ["-1", str(want)], out.stdout + out.stderr)

    def test_run_exits_2_and_explains(self):
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            cfg.listener("web", "app")
            text = cfg.render()
        d = h.tempfile.mkdtemp(prefix="grelay-no-uring-cfg-")
        path = os.path.join(d, "valid.toml")
        with open(path, "w") as f:
            f.write(text)
        for mode, (errname, fix) in EXPECTED.items():
            with self.subTest(mode=mode):
                self._helper_blocks_io_uring(mode)
                r = h.run_grelay(["-c", path], wrapper=[self.helper, mode], timeout=30)
                out = r.stdout + r.stderr
                self.assertEqual(r.returncode, 2, f"exit code without io_uring ({mode}):\n{out}")
                for phrase in ("io_uring", errname, "seccomp", fix):
                    self.assertIn(phrase, out, f"the message ({mode}) should mention {phrase!r}")
                self.assertEqual(h.run_grelay(["-c", path, "--check"],
                                              wrapper=[self.helper, mode]).returncode, 0,
                                 "--check needs no io_uring")

    def test_features_reports_unavailable(self):
        for mode, (errname, fix) in EXPECTED.items():
            with self.subTest(mode=mode):
                r = h.run_grelay(["--features"], wrapper=[self.helper, mode], timeout=30)
                out = r.stdout + r.stderr
                self.assertEqual(r.returncode, 2, f"--features without io_uring ({mode}):\n{out}")
                self.assertIn("io_uring: unavailable", out)
                self.assertIn(errname, out)
                self.assertIn(fix, out)
                self.assertNotIn("relay path chosen by auto: mainline", out)

    def test_splice_refused_keeps_every_direction_on_recv_send(self):
        """A profile that allows io_uring but refuses splice(2): --features says so, grelay
        warns once at startup, and sessions that would splice relay every byte on
        RECV/SEND instead."""
        r = h.run_grelay(["--features"], wrapper=[self.helper, "nosplice"], timeout=30)
        out = r.stdout + r.stderr
        if r.returncode == 2 and "io_uring: unavailable" in out:
            self.skipTest("io_uring is unavailable here")
        self.assertEqual(r.returncode, 0, out)
        self.assertRegex(out, r"splice \(socket->pipe->socket\): +no")
        self.assertRegex(h.run_grelay(["--features"], timeout=30).stdout,
                         r"splice \(socket->pipe->socket\): +yes")
        sizes = [h.scaled(3 * h.MiB) + i * 4099 for i in range(8)]
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app")
            cfg.with_admin()
            with h.Grelay(cfg, wrapper=[self.helper, "nosplice"]) as g:
                results = h.run_concurrently(
                    h.stream_session, [(port, h.Stream(700 + i, n)) for i, n in enumerate(sizes)],
                    kwargs_list=[{"index": i, "timeout": 120} for i in range(len(sizes))])
                bad = [x for x in results if not isinstance(x, h.SessionResult) or not x.ok]
                self.assertEqual(bad, [], "sessions that did not echo exactly:\n" +
                                 "\n".join(map(str, bad)))
                if g.metric("grelay_relay_path_info", path="mainline") == 1:
                    self.assertEqual(g.metric("grelay_chunks_total", listener="web",
                                              path="splice"), 0)
                    self.assertGreater(g.metric("grelay_chunks_total", listener="web",
                                                path="mainline"), 0)
                    self.assertIn("splice(2) from a socket into a pipe does not work here",
                                  g.log())
                self.assertEqual(g.metric("grelay_received_bytes_total", listener="web"),
                                 2 * sum(sizes))


if __name__ == "__main__":
    h.main()
