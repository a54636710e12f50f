#!/usr/bin/env python3
"""docker/compose.yaml, checked without a Docker engine:

- Debian's docker-compose (1.29) validates it offline: `docker-compose -f compose.yaml
  config` from docker/ (Compose v1 reads the seccomp profile relative to the current
  directory, v2 relative to the file: docker/ suits both). It reads and parses the seccomp
  JSON while doing so. The normalized output is what the rest checks;
- services grelay, origin, sink, prometheus, grafana on one network, each with a
  healthcheck and without capabilities; grelay with the seccomp profile, no-new-privileges,
  an explicit nofile ulimit, a read-only root, built from docker/Dockerfile with the
  repository root as context and tagged with the CMake project version;
- grelay's mounts, ports and dependencies agree with docker/grelay.toml and the Dockerfile
  (config path = CMD's -c, tap volume = VOLUME, ports = EXPOSE, every host name in the
  config is a service grelay waits for, listening on the port the config names);
- Prometheus and Grafana get docker/prometheus and docker/grafana where the metrics helper's
  files expect them, and prometheus.yml scrapes the grelay service's admin port.

Not repeated here (tests/metrics/dashboard_rules_test.py, ctest metrics.dashboard_and_rules,
does them): `promtool check config` / `check rules` on docker/prometheus and every query of
the Grafana dashboard against a real Prometheus.
"""

import os
import re
import shlex
import subprocess
import tomllib
import unittest

import docker_common as c

SERVICES = {"grelay", "origin", "sink", "prometheus", "grafana"}


def container_port(spec) -> int:
    """'127.0.0.1:8080:8080/tcp' or {'target': 8080, ...} -> 8080."""
    if isinstance(spec, dict):
        return int(spec["target"])
    return int(str(spec).split("/")[0].rsplit(":", 1)[-1])


def volume_parts(spec):
    """'SRC:DST[:MODE]' or the long form -> (src, dst, read_only)."""
    if isinstance(spec, dict):
        return spec.get("source"), spec["target"], bool(spec.get("read_only"))
    parts = spec.split(":")
    mode = parts[2] if len(parts) > 2 else "rw"
    return parts[0], parts[1], "ro" in mode.split(",")


class ComposeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        yaml = c.yaml_module()
        exe = c.which("docker-compose")
        cls.run_config = subprocess.run([exe, "-f", "compose.yaml", "config"], cwd=c.DOCKER,
                                        capture_output=True, text=True, timeout=60)
        cls.cfg = yaml.safe_load(cls.run_config.stdout) if cls.run_config.returncode == 0 else None
        with open(os.path.join(c.DOCKER, "compose.yaml")) as f:
            cls.raw = yaml.safe_load(f)
        with open(os.path.join(c.DOCKER, "grelay.toml"), "rb") as f:
            cls.grelay_cfg = tomllib.load(f)
        cls.dockerfile = c.parse_dockerfile(c.path("docker", "Dockerfile"))
        with open(os.path.join(c.DOCKER, "prometheus", "prometheus.yml")) as f:
            cls.prom = yaml.safe_load(f)
        with open(os.path.join(c.DOCKER, "grafana", "provisioning", "dashboards", "grelay.yaml")) as f:
            cls.dash_prov = yaml.safe_load(f)
        with open(os.path.join(c.DOCKER, "grafana", "provisioning", "datasources", "prometheus.yaml")) as f:
            cls.ds_prov = yaml.safe_load(f)

    def setUp(self):
        self.assertEqual(self.run_config.returncode, 0,
                         "docker-compose config failed:\n" + self.run_config.stderr)

    def svc(self, name):
        return self.cfg["services"][name]

    def last_stage(self, keyword):
        last = max(i.stage for i in self.dockerfile)
        return [i for i in self.dockerfile if i.keyword == keyword and i.stage == last]

    def test_compose_v1_accepts_the_file(self):
        self.assertEqual(set(self.cfg["services"]), SERVICES)
        self.assertNotIn("WARNING", self.run_config.stderr, self.run_config.stderr)

    def test_every_service_has_healthcheck_network_and_no_capabilities(self):
        nets = set(self.cfg.get("networks", {}))
        self.assertEqual(len(nets), 1, nets)
        for name, s in self.cfg["services"].items():
            with self.subTest(service=name):
                hc = s.get("healthcheck", {})
                self.assertTrue(hc.get("test"), "no healthcheck")
                self.assertNotEqual(hc.get("disable"), True)
                self.assertEqual(set(s.get("networks", {})), nets)
                self.assertEqual(s.get("cap_drop"), ["ALL"])
                self.assertIn("no-new-privileges:true", s.get("security_opt", []))

    def test_grelay_runs_with_the_io_uring_seccomp_profile(self):
        opts = self.raw["services"]["grelay"]["security_opt"]
        seccomp = [o for o in opts if re.match(r"seccomp[=:]", o)]
        self.assertEqual(len(seccomp), 1, opts)
        rel = re.split(r"[=:]", seccomp[0], maxsplit=1)[1]
        profile = os.path.normpath(os.path.join(c.DOCKER, rel))
        self.assertEqual(profile, os.path.join(c.DOCKER, "seccomp-io_uring.json"))
        from_root = subprocess.run(["docker-compose", "-f", "docker/compose.yaml", "config", "-q"],
                                   cwd=c.REPO, capture_output=True, text=True, timeout=60)
        version = subprocess.run(["docker-compose", "version", "--short"], capture_output=True,
                                 text=True, timeout=60).stdout.strip()
        if version.startswith("1."):
            # Compose v1 opened and parsed it relative to the current directory (docker/),
            # and misses it from elsewhere: docker/README.md says to run v1 from docker/.
            self.assertIn("seccomp:" + rel, self.svc("grelay")["security_opt"])
            self.assertNotEqual(from_root.returncode, 0)
            self.assertIn("seccomp profile", from_root.stderr)
        else:
            # Compose v2 resolves it relative to the compose file: works from anywhere.
            self.assertEqual(from_root.returncode, 0, from_root.stderr)

    def test_grelay_limits_and_read_only_root(self):
        g = self.svc("grelay")
        nofile = g["ulimits"]["nofile"]
        self.assertGreaterEqual(int(nofile["soft"]), 65536)
        self.assertEqual(int(nofile["soft"]), int(nofile["hard"]))
        self.assertTrue(g.get("read_only"))
        self.assertEqual(g["healthcheck"]["test"], ["CMD", "grelay-healthcheck"])
        drain = self.grelay_cfg["server"].get("drain_timeout", "10s")
        self.assertGreater(self._seconds(g["stop_grace_period"]), self._seconds(drain),
                           "stop_grace_period must exceed [server] drain_timeout")

    @staticmethod
    def _seconds(s):
        m = re.fullmatch(r"(\d+)(ms|s|m)", str(s))
        return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]

    def test_grelay_image_is_built_from_the_dockerfile(self):
        g = self.svc("grelay")
        self.assertEqual(os.path.normpath(g["build"]["context"]), c.REPO)
        self.assertEqual(g["build"]["dockerfile"], "docker/Dockerfile")
        self.assertEqual(g["image"], "grelay:" + c.cmake_version())

    def test_grelay_mounts_match_the_image(self):
        g = self.svc("grelay")
        mounts = {volume_parts(v)[1]: volume_parts(v) for v in g["volumes"]}
        cmd = self.last_stage("CMD")[0].json_args()
        conf = mounts.get(cmd[cmd.index("-c") + 1])
        self.assertIsNotNone(conf, f"nothing mounted at the CMD's config path {cmd}")
        self.assertEqual(conf[0], os.path.join(c.DOCKER, "grelay.toml"))
        self.assertTrue(conf[2], "the config must be mounted read-only")
        volume = self.last_stage("VOLUME")[0].json_args()[0]
        tap = mounts.get(volume)
        self.assertIsNotNone(tap, f"nothing mounted at the image's VOLUME {volume}")
        self.assertIn(tap[0], self.cfg.get("volumes", {}), "the tap should be a named volume")

    def test_grelay_ports_match_config_and_expose(self):
        published = {container_port(p) for p in self.svc("grelay")["ports"]}
        expose = {int(p.split("/")[0]) for i in self.last_stage("EXPOSE") for p in i.args.split()}
        self.assertEqual(published, c.config_ports(self.grelay_cfg))
        self.assertEqual(published, expose)
        a = c.config_addresses(self.grelay_cfg)
        for addr in list(a["listeners"].values()) + [a["admin"]]:
            self.assertEqual(c.host_of(addr), "0.0.0.0", f"{addr}: must accept from other containers")

    def test_config_hosts_are_services_grelay_waits_for(self):
        a = c.config_addresses(self.grelay_cfg)
        deps = self.svc("grelay").get("depends_on", {})
        for addr in a["upstreams"] + a["mirrors"]:
            host, port = c.host_of(addr), c.port_of(addr)
            with self.subTest(address=addr):
                self.assertIn(host, self.cfg["services"], f"{host} is not a compose service")
                self.assertEqual(deps.get(host, {}).get("condition"), "service_healthy",
                                 "grelay resolves names at startup: wait for the service")
                command = self.svc(host).get("command")
                text = command if isinstance(command, str) else " ".join(map(str, command))
                self.assertRegex(text, rf"(?<!\d){port}(?!\d)", f"{host} does not listen on {port}")
                hc = " ".join(self.svc(host)["healthcheck"]["test"])
                self.assertRegex(hc, rf"(?<!\d){port}(?!\d)", f"{host}'s healthcheck does not probe {port}")

    def test_grelay_toml_passes_grelay_check(self):
        """Compose service names do not resolve outside compose: checked with 127.0.0.1."""
        c.grelay_bin()
        r = c.grelay_check(c.read("docker", "grelay.toml"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_origin_serves_the_demo_pages(self):
        o = self.svc("origin")
        args = o["command"] if isinstance(o["command"], list) else shlex.split(o["command"])
        directory = args[args.index("--directory") + 1]
        src = {volume_parts(v)[1]: volume_parts(v)[0] for v in o["volumes"]}.get(directory)
        self.assertEqual(src, c.path("config", "examples", "demo"))
        self.assertTrue(os.path.isfile(os.path.join(src, "index.html")))

    def test_prometheus_gets_docker_prometheus_and_scrapes_grelay(self):
        p = self.svc("prometheus")
        mounts = {volume_parts(v)[1]: volume_parts(v) for v in p["volumes"]}
        self.assertEqual(mounts["/etc/prometheus"][0], os.path.join(c.DOCKER, "prometheus"))
        self.assertIn("--config.file=/etc/prometheus/prometheus.yml", p["command"])
        self.assertFalse([a for a in p["command"] if a.startswith("--web.listen-address")],
                         "Grafana's datasource expects Prometheus' default port 9090")
        admin = c.port_of(c.config_addresses(self.grelay_cfg)["admin"])
        targets = [t for job in self.prom["scrape_configs"] if job["job_name"] == "grelay"
                   for sc in job.get("static_configs", []) for t in sc["targets"]]
        self.assertEqual(targets, [f"grelay:{admin}"])

    def test_grafana_gets_provisioning_and_dashboards(self):
        g = self.svc("grafana")
        mounts = {volume_parts(v)[1]: volume_parts(v)[0] for v in g["volumes"]}
        self.assertEqual(mounts.get("/etc/grafana/provisioning"),
                         os.path.join(c.DOCKER, "grafana", "provisioning"))
        dash_path = self.dash_prov["providers"][0]["options"]["path"]
        self.assertEqual(mounts.get(dash_path), os.path.join(c.DOCKER, "grafana", "dashboards"))
        home = g.get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
        if home:
            self.assertTrue(os.path.isfile(os.path.join(mounts[dash_path], os.path.relpath(home, dash_path))))
        url = self.ds_prov["datasources"][0]["url"]
        self.assertEqual(url, "http://prometheus:9090")
        self.assertEqual(g["depends_on"]["prometheus"]["condition"], "service_healthy")

    def test_bind_mount_sources_exist(self):
        for name, s in self.cfg["services"].items():
            for v in s.get("volumes", []):
                src, dst, _ = volume_parts(v)
                if src and src.startswith("/"):
                    with self.subTest(service=name, target=dst):
                        self.assertTrue(os.path.exists(src), src)


if __name__ == "__main__":
    c.main()
