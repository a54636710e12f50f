#!/usr/bin/env python3
"""The seccomp profiles: docker/seccomp-io_uring.json (Docker's format) and
docker/k8s/node/seccomp-io_uring.json (plain OCI, for Kubernetes "Localhost").

Static:
- both parse, deny by default (SCMP_ACT_ERRNO) and allow io_uring_setup, io_uring_enter and
  io_uring_register without conditions; no rule denies them; the OCI one has no Docker-only
  keys (containerd ignores includes/excludes, which would turn conditional rules into
  unconditional ones);
- docker/gen-seccomp.sh reproduces both committed files byte for byte: from the committed
  Docker profile (idempotent, and the OCI one is derived from it), from a Docker >= 25 style
  profile without io_uring (it adds them back), and, when Debian's default.json is on this
  machine (package golang-github-docker-docker-dev, or GRELAY_DOCKER_DEFAULT_SECCOMP=FILE),
  from that file: the provenance docker/README.md states.

Real behaviour (seccomp_exec.py loads the profile with libseccomp, evaluated as dockerd
does for a container without capabilities, and execs grelay under it):
- under each profile `grelay --features` finds io_uring available and picks a path;
- under the same profile without the three io_uring syscalls (what Docker >= 25 and
  containerd 2 apply by default) grelay exits 2 and names seccomp as the cause;
- under each profile creating a user namespace still fails: the profile is Docker's
  restrictive default, not an allow-all.
"""

import json
import os
import shutil
import subprocess
import tempfile
import unittest

import docker_common as c

DOCKER_PROFILE = c.path("docker", "seccomp-io_uring.json")
OCI_PROFILE = c.path("docker", "k8s", "node", "seccomp-io_uring.json")
PACKAGED_DEFAULT = ("/usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json")
DOCKER_ONLY_KEYS = {"includes", "excludes", "comment"}


def load(p):
    with open(p) as f:
        return json.load(f)


def unconditional_allow(profile):
    return {n for r in profile["syscalls"]
            if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args")
            and not r.get("includes") and not r.get("excludes")
            for n in r["names"]}


class StaticTest(unittest.TestCase):
    def test_both_profiles_deny_by_default_and_allow_io_uring(self):
        for p in (DOCKER_PROFILE, OCI_PROFILE):
            with self.subTest(profile=os.path.relpath(p, c.REPO)):
                prof = load(p)
                self.assertEqual(prof["defaultAction"], "SCMP_ACT_ERRNO")
                allowed = unconditional_allow(prof)
                for name in c.URING_SYSCALLS:
                    self.assertIn(name, allowed)
                for r in prof["syscalls"]:
                    if r["action"] != "SCMP_ACT_ALLOW":
                        self.assertFalse(set(r["names"]) & set(c.URING_SYSCALLS), r)
                self.assertGreater(len(allowed), 250, "expected Docker's default allow-list")
                for must_deny in ("mount", "unshare", "setns", "bpf", "kexec_load", "init_module"):
                    self.assertNotIn(must_deny, allowed)

    def test_oci_profile_has_no_docker_only_keys(self):
        prof = load(OCI_PROFILE)
        self.assertEqual(set(prof) - {"defaultAction", "defaultErrnoRet", "architectures",
                                      "flags", "syscalls"}, set())
        for r in prof["syscalls"]:
            self.assertEqual(set(r) & DOCKER_ONLY_KEYS, set(), r)
            self.assertLessEqual(set(r), {"names", "action", "errnoRet", "args"}, r)
        # No rule needing a capability survived (grelay drops them all).
        names = {n for r in prof["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}
        self.assertFalse({"mount", "setns", "unshare", "reboot", "chroot"} & names)

    def regenerate(self, source):
        with tempfile.TemporaryDirectory(prefix="grelay-gen-seccomp-") as d:
            env = dict(os.environ, OUT_DOCKER=os.path.join(d, "docker.json"),
                       OUT_K8S=os.path.join(d, "k8s.json"))
            r = subprocess.run(["bash", c.path("docker", "gen-seccomp.sh"), source], env=env,
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(env["OUT_DOCKER"]) as f1, open(env["OUT_K8S"]) as f2:
                return f1.read(), f2.read(), r.stderr

    def committed(self):
        with open(DOCKER_PROFILE) as f1, open(OCI_PROFILE) as f2:
            return f1.read(), f2.read()

    def test_generator_is_idempotent_and_derives_the_oci_profile(self):
        docker, k8s, _ = self.regenerate(DOCKER_PROFILE)
        self.assertEqual((docker, k8s), self.committed())

    def test_generator_adds_io_uring_to_a_docker_25_style_profile(self):
        prof = load(DOCKER_PROFILE)
        for r in prof["syscalls"]:
            r["names"] = [n for n in r["names"] if n not in c.URING_SYSCALLS]
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(prof, f, indent="\t")
            f.flush()
            docker, k8s, log = self.regenerate(f.name)
        self.assertIn("added: io_uring_enter, io_uring_register, io_uring_setup", log)
        self.assertEqual((docker, k8s), self.committed())

    def test_generated_from_debians_docker_default_json(self):
        source = os.environ.get("GRELAY_DOCKER_DEFAULT_SECCOMP") or PACKAGED_DEFAULT
        if not os.path.isfile(source):
            self.skipTest("Docker's default.json is not on this machine (docker/gen-seccomp.sh "
                          "downloads it; set GRELAY_DOCKER_DEFAULT_SECCOMP to check against a copy)")
        docker, k8s, _ = self.regenerate(source)
        self.assertEqual((docker, k8s), self.committed())


class UnderProfileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.exe = c.grelay_bin()
        ok, out = c.host_has_io_uring(cls.exe)
        if not ok:
            raise unittest.SkipTest("this machine's kernel offers no io_uring to grelay:\n" + out)
        probe = subprocess.run(c.under_profile(DOCKER_PROFILE, ["true"]), capture_output=True,
                               text=True, timeout=30)
        if probe.returncode == 77:
            raise unittest.SkipTest(probe.stderr.strip())
        cls.tmp = tempfile.mkdtemp(prefix="grelay-docker-seccomp-")
        cls.config = os.path.join(cls.tmp, "grelay.toml")
        with open(cls.config, "w") as f:
            f.write('[server]\nworkers = 1\n\n[upstream.app]\nservers = ["127.0.0.1:%d"]\n\n'
                    '[[listener]]\nname = "web"\nlisten = "127.0.0.1:%d"\nupstream = "app"\n'
                    % (c.free_port(), c.free_port()))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def run_under(self, profile, argv, without=(), timeout=30):
        return subprocess.run(c.under_profile(profile, argv, without), capture_output=True,
                              text=True, timeout=timeout, cwd=self.tmp)

    def test_io_uring_available_under_the_profiles(self):
        for p in (DOCKER_PROFILE, OCI_PROFILE):
            with self.subTest(profile=os.path.relpath(p, c.REPO)):
                r = self.run_under(p, [self.exe, "--features"])
                out = r.stdout + r.stderr
                self.assertEqual(r.returncode, 0, out)
                self.assertIn("io_uring: available", out)
                self.assertRegex(out, r"relay path chosen by auto: (group|mainline)")

    def test_without_io_uring_grelay_exits_2_naming_seccomp(self):
        for p in (DOCKER_PROFILE, OCI_PROFILE):
            with self.subTest(profile=os.path.relpath(p, c.REPO)):
                r = self.run_under(p, [self.exe, "-c", self.config], without=c.URING_SYSCALLS)
                out = r.stdout + r.stderr
                self.assertEqual(r.returncode, 2, out)
                for phrase in ("io_uring", "EPERM", "seccomp"):
                    self.assertIn(phrase, out)
                f = self.run_under(p, [self.exe, "--features"], without=c.URING_SYSCALLS)
                self.assertIn("io_uring: unavailable", f.stdout + f.stderr)

    def test_profiles_still_deny_namespaces(self):
        unshare = shutil.which("unshare")
        if not unshare:
            self.skipTest("no unshare(1)")
        bare = subprocess.run([unshare, "--user", "true"], capture_output=True, timeout=30)
        if bare.returncode != 0:
            self.skipTest("unshare --user fails here even without a profile")
        for p in (DOCKER_PROFILE, OCI_PROFILE):
            with self.subTest(profile=os.path.relpath(p, c.REPO)):
                r = self.run_under(p, [unshare, "--user", "true"])
                self.assertNotEqual(r.returncode, 0, "unshare(CLONE_NEWUSER) passed the profile")
                self.assertIn("Operation not permitted", r.stderr)


if __name__ == "__main__":
    c.main()
