#!/usr/bin/env python3
"""The compose setup, run on this machine without Docker (none runs here): the commands
docker/compose.yaml gives the origin and the sink, and grelay with docker/grelay.toml under
docker/seccomp-io_uring.json (without capabilities, as in compose), wired on 127.0.0.1:

- compose service names in the config are replaced by 127.0.0.1, the fixed ports by free
  ones, 0.0.0.0 by 127.0.0.1 and the tap directory by a temp one — nothing else changes;
- the image's HEALTHCHECK script, under the same profile, reports healthy once grelay runs;
- an HTTP request through grelay returns the origin's page byte for byte, the sink logs the
  mirrored request, the tap records it, the metrics count it;
- SIGTERM stops grelay with exit 0 well within compose's stop_grace_period, after which the
  health check reports unhealthy.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import docker_common as c

PROFILE = c.path("docker", "seccomp-io_uring.json")


class Proc:
    def __init__(self, argv, log_path, cwd):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd,
                                  start_new_session=True)

    def text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()
        return self.p.returncode


class TopologyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        yaml = c.yaml_module()
        cls.exe = c.grelay_bin()
        ok, out = c.host_has_io_uring(cls.exe)
        if not ok:
            raise unittest.SkipTest("this machine's kernel offers no io_uring to grelay:\n" + out)
        probe = subprocess.run(c.under_profile(PROFILE, ["true"]), capture_output=True, text=True)
        if probe.returncode == 77:
            raise unittest.SkipTest(probe.stderr.strip())
        with open(os.path.join(c.DOCKER, "compose.yaml")) as f:
            cls.compose = yaml.safe_load(f)["services"]
        cls.tmp = tempfile.mkdtemp(prefix="grelay-docker-topology-")
        cls.procs = []

    @classmethod
    def tearDownClass(cls):
        for p in reversed(cls.procs):
            p.stop(signal.SIGKILL, timeout=5)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def start(self, name, argv):
        p = Proc(argv, os.path.join(self.tmp, name + ".log"), self.tmp)
        self.procs.append(p)
        return p

    def health(self, admin_port):
        argv = c.under_profile(PROFILE, ["bash", c.path("docker", "healthcheck.sh")])
        env = dict(os.environ, GRELAY_HEALTH_ADDR="127.0.0.1:%d" % admin_port)
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)

    def test_compose_topology_relays_mirrors_taps_and_stops(self):
        origin_port, sink_port, web_port, admin_port = (c.free_port() for _ in range(4))

        # origin: compose's command, with the port, bind address and mounted directory mapped.
        cmd = [str(a) for a in self.compose["origin"]["command"]]
        cmd = [{"8000": str(origin_port), "0.0.0.0": "127.0.0.1",
                "/srv": c.path("config", "examples", "demo")}.get(a, a) for a in cmd]
        self.assertEqual(cmd[0], "python3")
        origin = self.start("origin", [sys.executable] + cmd[1:])

        # sink: compose's inline script, on a free port.
        cmd = [str(a) for a in self.compose["sink"]["command"]]
        script = cmd[-1]
        self.assertIn('("0.0.0.0", 9001)', script)
        script = script.replace('("0.0.0.0", 9001)', '("127.0.0.1", %d)' % sink_port)
        sink = self.start("sink", [sys.executable] + cmd[1:-1] + [script])
        self.assertTrue(c.wait_for(lambda: c.port_open(origin_port) and c.port_open(sink_port), 15),
                        origin.text() + sink.text())

        # grelay: docker/grelay.toml with the addresses mapped, under the seccomp profile.
        text = c.read("docker", "grelay.toml")
        text = c.replace_quoted(text, {
            "origin:8000": "127.0.0.1:%d" % origin_port,
            "sink:9001": "127.0.0.1:%d" % sink_port,
            "0.0.0.0:8080": "127.0.0.1:%d" % web_port,
            "0.0.0.0:9100": "127.0.0.1:%d" % admin_port,
            "/var/lib/grelay/tap/web": os.path.join(self.tmp, "tap", "web"),
        })
        conf = os.path.join(self.tmp, "grelay.toml")
        with open(conf, "w") as f:
            f.write(text)
        grelay = self.start("grelay", c.under_profile(PROFILE, [self.exe, "-c", conf]))
        self.assertTrue(c.wait_for(lambda: self.health(admin_port).returncode == 0
                                   or grelay.p.poll() is not None, 20), grelay.text())
        self.assertIsNone(grelay.p.poll(), "grelay exited under the profile:\n" + grelay.text())
        # /healthz answers as soon as the admin endpoint runs; the line that names the relay
        # path comes once the workers run, a moment later.
        self.assertTrue(c.wait_for(lambda: "relay path" in grelay.text(), 10), grelay.text())

        # A request through grelay: the origin's page, byte for byte.
        with open(c.path("config", "examples", "demo", "index.html"), "rb") as f:
            page = f.read()
        with urllib.request.urlopen("http://127.0.0.1:%d/index.html" % web_port, timeout=10) as r:
            self.assertEqual(r.status, 200)
            self.assertEqual(r.read(), page)

        # The sink saw the mirrored request, the tap recorded it, the metrics count it.
        self.assertTrue(c.wait_for(lambda: "first line: 'GET /index.html HTTP/1.1'" in sink.text(), 10),
                        sink.text())
        tap_dir = os.path.join(self.tmp, "tap", "web")
        self.assertTrue(c.wait_for(lambda: any(f.endswith(".gtap") for f in os.listdir(tap_dir))
                                   if os.path.isdir(tap_dir) else False, 10))

        def sent(target):
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin_port, timeout=5) as r:
                body = r.read().decode()
            m = re.search(r'^grelay_sent_bytes_total\{[^}]*target="%s"[^}]*\} (\S+)$' % target, body, re.M)
            return float(m.group(1)) if m else 0.0

        self.assertTrue(c.wait_for(lambda: sent("sink") > 0 and sent("origin") > 0, 10))
        self.assertEqual(sent("sink"), sent("origin"), "the mirror gets exactly the request bytes")

        # SIGTERM: exit 0 well within compose's stop_grace_period (15s); then unhealthy.
        t0 = time.monotonic()
        rc = grelay.stop(signal.SIGTERM, timeout=15)
        self.assertEqual(rc, 0, grelay.text())
        self.assertLess(time.monotonic() - t0, 12)
        h = self.health(admin_port)
        self.assertEqual(h.returncode, 1, h.stderr)

        export = subprocess.run([self.exe, "tap", "export", "--pcap", os.path.join(self.tmp, "web.pcap"),
                                 tap_dir], capture_output=True, text=True, timeout=30)
        self.assertEqual(export.returncode, 0, export.stderr)


if __name__ == "__main__":
    c.main()
