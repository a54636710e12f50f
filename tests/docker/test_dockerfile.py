#!/usr/bin/env python3
"""docker/Dockerfile and .dockerignore, checked without a Docker engine:

- two stages: debian:bookworm (build) and debian:bookworm-slim (runtime);
- every package comes from packages.txt through setup.sh (groups build and runtime): no
  apt-get/dpkg install with package names in the Dockerfile;
- cmake with -DGRELAY_TESTS=OFF, target grelay;
- runtime: numeric non-root USER created with that uid, VOLUME for the tap, EXPOSE exactly
  the ports of docker/grelay.toml, HEALTHCHECK running docker/healthcheck.sh, ENTRYPOINT
  grelay and CMD -c at the path the config is copied to;
- every COPY source is in the build context, which leaves out .git, build/ and var/, and
  the context alone configures with cmake (what the build stage runs);
- the runtime group's packages (and their dependencies) provide every shared library the
  grelay binary loads, so the slim image can run it;
- the HEALTHCHECK script says "unhealthy" for a closed port and a non-200 answer (its
  healthy case runs against the real grelay in test_topology.py).
"""

import http.server
import os
import re
import shutil
import subprocess
import tempfile
import threading
import tomllib
import unittest

import docker_common as c

DOCKERFILE = c.path("docker", "Dockerfile")


class DockerfileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ins = c.parse_dockerfile(DOCKERFILE)
        cls.last = max(i.stage for i in cls.ins)
        with open(c.path("docker", "grelay.toml"), "rb") as f:
            cls.cfg = tomllib.load(f)

    def of(self, keyword, stage=None):
        return [i for i in self.ins if i.keyword == keyword and (stage is None or i.stage == stage)]

    def one(self, keyword, stage=None):
        found = self.of(keyword, stage)
        self.assertEqual(len(found), 1, f"exactly one {keyword} expected: {found}")
        return found[0]

    def test_two_stages_bookworm_then_bookworm_slim(self):
        froms = [i.args for i in self.of("FROM")]
        self.assertEqual(len(froms), 2, froms)
        self.assertRegex(froms[0], r"^debian:bookworm\s+AS\s+build$")
        self.assertEqual(froms[1], "debian:bookworm-slim")

    def test_packages_come_only_from_packages_txt(self):
        forbidden = re.compile(r"\b(apt-get|apt|aptitude)\s+(-\S+\s+)*install\b|\bdpkg\s+(-\S+\s+)*-i\b")
        for i in self.of("RUN"):
            self.assertNotRegex(i.args, forbidden,
                                f"line {i.line}: packages must come from packages.txt via setup.sh")
        for stage, group in ((0, "build"), (self.last, "runtime")):
            self.assertTrue(c.packages(group), f"packages.txt has no group {group!r}")
            runs = [i for i in self.of("RUN", stage) if re.search(r"setup\.sh\s+" + group + r"\b", i.args)]
            self.assertEqual(len(runs), 1, f"stage {stage} must run setup.sh {group}")
            copies = [i for i in self.of("COPY", stage)
                      if "packages.txt" in i.args.split() and "setup.sh" in i.args.split()]
            self.assertTrue(copies and copies[0].line < runs[0].line,
                            f"stage {stage} must COPY packages.txt setup.sh before running setup.sh")
        # setup.sh itself installs what packages.txt lists for the groups it is given.
        setup = c.read("setup.sh")
        self.assertIn('"$here/packages.txt"', setup)
        self.assertRegex(setup, r"apt-get install .*\"\$\{missing\[@\]\}\"")

    def test_build_stage_builds_grelay_without_tests(self):
        cmake = [i for i in self.of("RUN", 0) if "cmake" in i.args]
        self.assertTrue(cmake, "no cmake RUN in the build stage")
        text = " ".join(i.args for i in cmake)
        self.assertIn("-DGRELAY_TESTS=OFF", text)
        self.assertRegex(text, r"--target\s+grelay\b")
        copy = [i for i in self.of("COPY", self.last) if i.args.startswith("--from=build")]
        self.assertEqual(len(copy), 1)
        self.assertTrue(copy[0].args.split()[-1].endswith("/bin/grelay"), copy[0])

    def test_runtime_user_is_numeric_and_not_root(self):
        user = self.one("USER", self.last).args
        self.assertRegex(user, r"^\d+:\d+$", "numeric, so Kubernetes runAsNonRoot can verify it")
        uid, gid = (int(x) for x in user.split(":"))
        self.assertNotEqual(uid, 0)
        run = " ".join(i.args for i in self.of("RUN", self.last))
        self.assertRegex(run, rf"useradd\b.*--uid {uid}\b")
        self.assertRegex(run, rf"groupadd\b.*--gid {gid}\b")

    def test_volume_expose_healthcheck_entrypoint_cmd(self):
        vol = self.one("VOLUME", self.last).json_args()
        self.assertEqual(vol, ["/var/lib/grelay/tap"])
        for tap in c.config_addresses(self.cfg)["taps"]:
            self.assertTrue(tap.startswith(vol[0] + "/"), f"tap {tap} is not on the volume {vol[0]}")
        # The volume directory exists in the image, owned by the runtime user (a named
        # volume copies it, ownership included, on first use).
        self.assertIn("install -d -o grelay -g grelay", " ".join(i.args for i in self.of("RUN", self.last)))

        expose = {int(p.split("/")[0]) for i in self.of("EXPOSE", self.last) for p in i.args.split()}
        self.assertEqual(expose, c.config_ports(self.cfg),
                         "EXPOSE must be the listener and admin ports of docker/grelay.toml")

        hc = self.one("HEALTHCHECK", self.last).args
        m = re.search(r"CMD\s+(\[.*\])", hc)
        self.assertTrue(m, hc)
        import json
        probe = json.loads(m.group(1))
        self.assertEqual(probe, ["grelay-healthcheck"])
        copies = {i.args.split()[-1]: i.args.split()[-2] for i in self.of("COPY", self.last)
                  if not i.args.startswith("--")}
        self.assertEqual(copies.get("/usr/local/bin/grelay-healthcheck"), "docker/healthcheck.sh")
        self.assertTrue(os.access(c.path("docker", "healthcheck.sh"), os.X_OK))
        admin = c.config_addresses(self.cfg)["admin"]
        self.assertIn("${GRELAY_HEALTH_ADDR:-127.0.0.1:%d}" % c.port_of(admin), c.read("docker", "healthcheck.sh"),
                      "the health check's default port must be [admin]'s")

        self.assertEqual(self.one("ENTRYPOINT", self.last).json_args(), ["grelay"])
        cmd = self.one("CMD", self.last).json_args()
        self.assertEqual(cmd, ["-c", "/etc/grelay/grelay.toml"])
        self.assertEqual(copies.get(cmd[1]), "docker/grelay.toml")

    def test_copy_sources_are_in_the_context(self):
        files = set(c.context_files())
        for i in self.of("COPY") + self.of("ADD"):
            if i.args.startswith("--from"):
                continue
            for src in i.args.split()[:-1]:
                if src.startswith("--"):
                    continue
                if src == ".":
                    continue
                self.assertIn(src, files, f"line {i.line}: {src} is not in the build context")

    def test_dockerignore_leaves_out_local_state(self):
        for rel in (".git", ".git/HEAD", "build", "build/release/proxy/grelay", "var", "var/tap/web/x.gtap",
                    "kernel/README.md", "tests/__pycache__/x.pyc"):
            self.assertTrue(c.ignored(rel), f"{rel} should be excluded from the build context")
        for rel in ("CMakeLists.txt", "packages.txt", "setup.sh", "proxy/main.cc", "relay/ring.h",
                    "config/loader.cc", "metrics/collector.cc", "docker/grelay.toml",
                    "docker/healthcheck.sh"):
            self.assertFalse(c.ignored(rel), f"{rel} must be in the build context")
        files = c.context_files()
        self.assertFalse([f for f in files if f.startswith((".git/", "build/", "var/"))])

    def test_context_alone_configures(self):
        """The build stage's cmake step, on a copy of exactly the build context."""
        cmake = shutil.which("cmake")
        if not cmake:
            self.skipTest("cmake is not installed")
        run = " ".join(i.args for i in self.of("RUN", 0) if "cmake -S" in i.args)
        m = re.search(r"cmake -S \. -B \S+ (.*?) &&", run)
        self.assertTrue(m, run)
        flags = m.group(1).split()
        with tempfile.TemporaryDirectory(prefix="grelay-docker-context-") as d:
            ctx = os.path.join(d, "src")
            for rel in c.context_files():
                dst = os.path.join(ctx, rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copy2(c.path(rel), dst)
            if not shutil.which("ninja"):
                flags = [f for f in flags if f not in ("-G", "Ninja")]
            r = subprocess.run([cmake, "-S", ctx, "-B", os.path.join(d, "b")] + flags,
                               capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, "cmake on the build context failed:\n" + r.stdout + r.stderr)

    def test_runtime_packages_provide_every_shared_library(self):
        exe = c.grelay_bin()
        if not shutil.which("ldd") or not shutil.which("dpkg-query"):
            self.skipTest("ldd or dpkg-query missing")
        out = subprocess.run(["ldd", exe], capture_output=True, text=True, check=True).stdout
        libs = re.findall(r"=>\s+(/\S+)", out)
        self.assertTrue(libs, out)
        closure = self._depends_closure(c.packages("runtime"))
        sanitizer = {"libasan8", "libubsan1", "liblsan0", "libtsan2"}
        missing = []
        for lib in libs:
            pkg = self._owner(lib)
            if pkg is None:
                missing.append(f"{lib}: no Debian package owns it")
            elif pkg in sanitizer:
                continue  # an ASan/UBSan test build; the image builds without sanitizers
            elif pkg not in closure:
                missing.append(f"{lib} ({pkg})")
        self.assertFalse(missing, "packages.txt group runtime (with dependencies) lacks: "
                         + ", ".join(missing))

    @staticmethod
    def _owner(lib):
        cands = {lib, os.path.realpath(lib)}
        for p in list(cands):  # merged /usr: dpkg may know either spelling
            if p.startswith("/usr/"):
                cands.add(p[4:])
            else:
                cands.add("/usr" + p)
        for p in cands:
            r = subprocess.run(["dpkg-query", "-S", p], capture_output=True, text=True)
            if r.returncode == 0:
                return r.stdout.split(":", 1)[0].split(",")[0].strip()
        return None

    @staticmethod
    def _depends_closure(roots):
        seen, todo = set(), list(roots)
        while todo:
            p = todo.pop()
            if p in seen:
                continue
            seen.add(p)
            r = subprocess.run(["dpkg-query", "-W", "-f=${Depends},${Pre-Depends}", p],
                               capture_output=True, text=True)
            if r.returncode != 0:
                continue
            for alt in re.split(r"[,|]", r.stdout):
                name = alt.strip().split(" ")[0].split(":")[0]
                if name:
                    todo.append(name)
        return seen


class HealthcheckScriptTest(unittest.TestCase):
    def run_probe(self, port, extra=None):
        env = dict(os.environ, GRELAY_HEALTH_ADDR=f"127.0.0.1:{port}", GRELAY_HEALTH_TIMEOUT="2",
                   **(extra or {}))
        return subprocess.run(["bash", c.path("docker", "healthcheck.sh")], env=env,
                              capture_output=True, text=True, timeout=20)

    def test_closed_port_is_unhealthy(self):
        r = self.run_probe(c.free_port())
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot connect", r.stderr)

    def probe_against(self, status: int, *envs) -> tuple[list, list]:
        """Runs the script once per env in `envs` against a server answering `status`:
        (the paths it asked for, the results)."""
        paths = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                paths.append(self.path)
                if status != 200:
                    self.send_error(status, "draining")
                    return
                self.send_response(200)
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"ok\n")

            def log_message(self, *a):
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        try:
            results = [self.run_probe(srv.server_address[1], env) for env in envs]
        finally:
            srv.shutdown()
            srv.server_close()
        return paths, results

    def test_asks_healthz_unless_told_another_path(self):
        paths, (first, second) = self.probe_against(200, None, {"GRELAY_HEALTH_PATH": "/ready"})
        self.assertEqual((first.returncode, second.returncode), (0, 0), first.stderr + second.stderr)
        self.assertEqual(paths, ["/healthz", "/ready"])

    def test_non_200_answer_is_unhealthy(self):
        _, (r,) = self.probe_against(503, None)
        self.assertEqual(r.returncode, 1)
        self.assertIn("503", r.stderr)

if __name__ == "__main__":
    c.main()
