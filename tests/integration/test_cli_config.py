#!/usr/bin/env python3
"""Configuration errors through the command line.

- `grelay -c bad.toml --check` exits 1 and prints every error as FILE:LINE:COL: message;
  a valid file exits 0; running with a bad file exits 1 with the same errors.
- A listener (or admin) address already in use, also by another grelay: exit 1,
  naming the address and why.
- Forcing a relay path the kernel lacks: exit 1, naming the path (never a downgrade).
"""

import os
import re
import shutil
import socket
import tempfile

import harness as h

BAD = """\
[server]
workers = 1
bogus = 3
chunk_size = "64KiB"

[upstream.app]
servers = ["127.0.0.1:8000"]

[[listener]]
name = "web"
listen = "127.0.0.1:99999"
upstream = "nowhere"
idle_timeout = 5
"""
# (line, column, words the message must contain) for each error in BAD.
BAD_ERRORS = [
    (3, 1, ["bogus"]),
    (11, 10, ["99999"]),
    (12, 12, ["nowhere"]),
    (13, 16, ["idle_timeout"]),
]
LINE_RE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<msg>.+)$")


def write(text: str, name: str = "grelay.toml") -> str:
    d = tempfile.mkdtemp(prefix="grelay-cli-")
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def valid_config(port: int | None = None, admin: int | None = None) -> str:
    cfg = h.Config()
    cfg.upstream("app", ["127.0.0.1:9"])
    cfg.listener("web", "app", port=port)
    if admin:
        cfg.with_admin(admin)
    return cfg.render()


class CheckTest(h.GrelayTest):
    needs_uring = False

    def _assert_errors(self, path: str, output: str) -> None:
        lines = [l for l in output.splitlines() if l.strip()]
        parsed = [LINE_RE.match(l) for l in lines]
        self.assertTrue(all(parsed), f"lines not in FILE:LINE:COL: form:\n{output}")
        self.assertTrue(all(m["file"] == path for m in parsed), output)
        got = [(int(m["line"]), int(m["col"]), m["msg"]) for m in parsed]
        self.assertEqual([(l, c) for l, c, _ in got], [(l, c) for l, c, _ in BAD_ERRORS],
                         f"error positions:\n{output}")
        for (_, _, msg), (_, _, words) in zip(got, BAD_ERRORS):
            for w in words:
                self.assertIn(w, msg)

    def test_check_reports_every_error_with_its_location(self):
        path = write(BAD)
        r = h.run_grelay(["-c", path, "--check"])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self._assert_errors(path, r.stderr)

    def test_check_accepts_a_valid_file(self):
        path = write(valid_config())
        r = h.run_grelay(["-c", path, "--check"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("ok", r.stdout)
        for example in ("demo.toml", "full.toml"):
            p = os.path.join(h.REPO, "config", "examples", example)
            if os.path.exists(p):
                r = h.run_grelay(["-c", p, "--check"])
                self.assertEqual(r.returncode, 0, f"{example}: {r.stdout}{r.stderr}")

    def test_warnings_are_printed_by_check_and_logged_by_a_running_grelay(self):
        with h.EchoServer() as echo:
            port = h.free_port("0.0.0.0")
            text = (f'[upstream.app]\nservers = ["{echo.address}"]\n'
                    f'check_interval = "30s"\n\n'
                    f'[[listener]]\nname = "web"\nlisten = "0.0.0.0:{port}"\n'
                    f'upstream = "app"\naccept_proxy_protocol = true\n')
            path = write(text)
            r = h.run_grelay(["-c", path, "--check"])
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn(f"{path}:1:1: warning: upstream app: check_interval (30s) is not "
                          "below fail_timeout (10s)", r.stderr)
            self.assertIn(f"{path}:5:1: warning: listener web: takes PROXY protocol headers "
                          "from any peer", r.stderr)
            self.assertIn("ok (1 listener", r.stdout)
            if h.uring_status()[0]:
                with h.Grelay(text) as g:
                    self.assertIn("WARN", g.log())
                    self.assertIn("listener web: takes PROXY protocol headers from any peer",
                                  g.log())

    def test_running_with_a_bad_file_exits_1(self):
        path = write(BAD)
        r = h.run_grelay(["-c", path], timeout=30)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self._assert_errors(path, r.stderr)

    def test_missing_file(self):
        path = os.path.join(tempfile.mkdtemp(prefix="grelay-cli-"), "absent.toml")
        for args in (["-c", path, "--check"], ["-c", path]):
            r = h.run_grelay(args, timeout=30)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertRegex(r.stderr, re.escape(path) + r":1:1: .*(No such file|cannot read)")

    def test_bad_command_lines(self):
        for args in (["--bogus"], ["-c"], []):
            r = h.run_grelay(args)
            self.assertEqual(r.returncode, 1, f"{args}: {r.stdout}{r.stderr}")
            self.assertIn("usage", r.stderr)


class StartupErrorTest(h.GrelayTest):
    def test_listener_address_in_use(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            r = h.run_grelay(["-c", write(valid_config(port=port))], timeout=30)
            out = r.stdout + r.stderr
            self.assertEqual(r.returncode, 1, out)
            self.assertIn(f"127.0.0.1:{port}", out)
            self.assertIn("web", out, "the message should name the listener")
            self.assertIn("Address already in use", out)

    def test_a_startup_error_leaves_no_listening_socket_and_no_tap_file(self):
        # The addresses are checked, then the files opened, then the sockets: a busy
        # address creates no tap file (and a file that cannot be opened leaves no port a
        # client could connect to before grelay exits: the access log test's startup
        # error no longer races with its readiness check).
        taps = tempfile.mkdtemp(prefix="grelay-taps-")
        try:
            with socket.socket() as busy:
                busy.bind(("127.0.0.1", 0))
                busy.listen(1)
                cfg = h.Config()
                cfg.upstream("app", ["127.0.0.1:9"])
                cfg.listener("web", "app", tap={"path": taps})
                cfg.listener("busy", "app", port=busy.getsockname()[1])
                r = h.run_grelay(["-c", write(cfg.render())], timeout=30)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertIn("Address already in use", r.stderr)
                self.assertEqual(os.listdir(taps), [])
            # A tap directory that cannot be made fails before any listening socket.
            cfg = h.Config()
            cfg.upstream("app", ["127.0.0.1:9"])
            cfg.listener("web", "app", tap={"path": "/proc/no-tap-here"})
            r = h.run_grelay(["-c", write(cfg.render())], timeout=30)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("cannot create tap file", r.stderr)
        finally:
            shutil.rmtree(taps, ignore_errors=True)

    def test_second_grelay_on_the_same_address(self):
        # Listening sockets use SO_REUSEPORT (one per worker): a second grelay must not
        # silently join the first one's listener and take half its traffic.
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app")
            with h.Grelay(cfg):
                r = h.run_grelay(["-c", write(cfg.render())], timeout=30)
                out = r.stdout + r.stderr
                self.assertEqual(r.returncode, 1, out)
                self.assertIn(f"127.0.0.1:{port}", out)
                self.assertIn("Address already in use", out)
                s = h.stream_session(port, h.Stream(1, 64 * h.KiB))
                self.assertTrue(s.ok, f"the first grelay after the second one's attempt: {s}")

    def test_admin_address_in_use(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            r = h.run_grelay(["-c", write(valid_config(admin=port))], timeout=30)
            out = r.stdout + r.stderr
            self.assertEqual(r.returncode, 1, out)
            self.assertIn(f"127.0.0.1:{port}", out)

    def test_forcing_a_path_the_kernel_lacks(self):
        _, features = h.uring_status()
        missing = [p for p in ("group", "mainline", "copy")
                   if re.search(rf"^\s*{p}: unavailable", features, re.M)]
        if not missing:
            self.skipTest("this kernel offers every relay path")
        text = valid_config().replace(f'relay_path = "{h.RELAY_PATH}"',
                                      f'relay_path = "{missing[0]}"')
        r = h.run_grelay(["-c", write(text)], timeout=30)
        out = r.stdout + r.stderr
        self.assertEqual(r.returncode, 1, out)
        self.assertIn(missing[0], out)
        self.assertIn("not available", out)


if __name__ == "__main__":
    h.main()
