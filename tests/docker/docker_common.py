"""Shared pieces of the tests of docker/ (Python 3.11 stdlib + python3-yaml).

Environment (ctest sets both):
  GRELAY_BIN         the grelay binary ($<TARGET_FILE:grelay>)
  GRELAY_SOURCE_DIR  the repository root (default: two levels above this file)
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.environ.get("GRELAY_SOURCE_DIR") or os.path.join(HERE, "..", ".."))
DOCKER = os.path.join(REPO, "docker")
K8S = os.path.join(DOCKER, "k8s")
SECCOMP_EXEC = os.path.join(HERE, "seccomp_exec.py")
URING_SYSCALLS = ("io_uring_setup", "io_uring_enter", "io_uring_register")


def path(*parts: str) -> str:
    return os.path.join(REPO, *parts)


def read(*parts: str) -> str:
    with open(path(*parts)) as f:
        return f.read()


def yaml_module():
    """python3-yaml (packages.txt group test), or skip the test."""
    try:
        import yaml
    except ImportError:
        raise unittest.SkipTest("python3-yaml is not installed (packages.txt group test)")
    return yaml


def grelay_bin(required: bool = True) -> str | None:
    b = os.environ.get("GRELAY_BIN")
    if b and os.access(b, os.X_OK):
        return b
    if required:
        raise unittest.SkipTest("GRELAY_BIN is not set to the grelay binary")
    return None


def cmake_version() -> str:
    m = re.search(r"project\(grelay\s+VERSION\s+([0-9.]+)", read("CMakeLists.txt"))
    assert m, "no project(grelay VERSION x.y.z) in CMakeLists.txt"
    return m.group(1)


def packages(group: str) -> list[str]:
    out = []
    for line in read("packages.txt").splitlines():
        f = line.split()
        if len(f) >= 2 and not line.startswith("#") and f[0] == group:
            out.append(f[1])
    return out


# ---- grelay configs -----------------------------------------------------------------

def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def host_of(address: str) -> str:
    return address.rsplit(":", 1)[0].strip("[]")


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def config_addresses(cfg: dict) -> dict:
    """{'admin': addr|None, 'listeners': {name: addr}, 'upstreams': [addr], 'mirrors': [addr],
    'taps': [path]} of a parsed grelay config."""
    listeners = {l["name"]: l["listen"] for l in cfg.get("listener", [])}
    upstreams = [s for u in cfg.get("upstream", {}).values() for s in u.get("servers", [])]
    mirrors = [m["address"] for l in cfg.get("listener", []) for m in l.get("mirror", [])]
    taps = [l["tap"]["path"] for l in cfg.get("listener", []) if "tap" in l]
    return {"admin": cfg.get("admin", {}).get("listen"), "listeners": listeners,
            "upstreams": upstreams, "mirrors": mirrors, "taps": taps}


def config_ports(cfg: dict) -> set[int]:
    """The ports grelay listens on: every listener and the admin endpoint."""
    a = config_addresses(cfg)
    ports = {port_of(x) for x in a["listeners"].values()}
    if a["admin"]:
        ports.add(port_of(a["admin"]))
    return ports


def replace_quoted(text: str, mapping: dict) -> str:
    """Replaces whole quoted TOML strings: {'origin:8000': '127.0.0.1:4242'}."""
    for old, new in mapping.items():
        assert f'"{old}"' in text, f'"{old}" is not in the config'
        text = text.replace(f'"{old}"', f'"{new}"')
    return text


def resolvable_here(text: str) -> str:
    """The config with every host name (compose services, Kubernetes Services) replaced by
    127.0.0.1, ports kept: grelay resolves names while loading, also for --check."""
    a = config_addresses(tomllib.loads(text))
    mapping = {}
    for addr in a["upstreams"] + a["mirrors"]:
        if not is_ip(host_of(addr)):
            mapping[addr] = "127.0.0.1:%d" % port_of(addr)
    return replace_quoted(text, mapping)


def grelay_check(text: str, name: str = "grelay.toml") -> subprocess.CompletedProcess:
    """grelay -c FILE --check on TEXT (names made resolvable), in a temp dir."""
    exe = grelay_bin()
    with tempfile.TemporaryDirectory(prefix="grelay-docker-check-") as d:
        p = os.path.join(d, name)
        with open(p, "w") as f:
            f.write(resolvable_here(text))
        return subprocess.run([exe, "-c", p, "--check"], capture_output=True, text=True,
                              timeout=30, cwd=d)


# ---- the Dockerfile ------------------------------------------------------------------

class Instruction:
    def __init__(self, stage: int, keyword: str, args: str, line: int):
        self.stage, self.keyword, self.args, self.line = stage, keyword, args, line

    def json_args(self):
        """Exec-form arguments (["a", "b"]) as a list, else None."""
        import json
        s = self.args.strip()
        if s.startswith("["):
            return json.loads(s)
        return None

    def __repr__(self):
        return f"{self.keyword} {self.args} (line {self.line}, stage {self.stage})"


def parse_dockerfile(file: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comment lines dropped (as BuildKit
    does); `stage` counts FROMs from 0."""
    out, stage = [], -1
    buf, start = "", 0
    with open(file) as f:
        lines = f.read().splitlines()
    for n, raw in enumerate(lines, 1):
        s = raw.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        if not buf:
            start = n
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        keyword, _, args = buf.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword, args.strip(), start))
        buf = ""
    return out


def dockerignore_patterns() -> list[tuple[bool, str]]:
    pats = []
    for line in read(".dockerignore").splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        neg = s.startswith("!")
        pats.append((neg, s.lstrip("!").strip("/")))
    return pats


def _glob_match(pattern: str, rel: str) -> bool:
    """Docker's .dockerignore matching (Go filepath.Match per segment, ** for any depth);
    a pattern matching a directory excludes everything under it."""
    rx = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            rx += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            rx += ".*"
            i += 2
        elif pattern[i] == "*":
            rx += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            rx += "[^/]"
            i += 1
        else:
            rx += re.escape(pattern[i])
            i += 1
    return re.fullmatch(rx + "(?:/.*)?", rel) is not None


def ignored(rel: str, patterns=None) -> bool:
    patterns = dockerignore_patterns() if patterns is None else patterns
    result = False
    for neg, pat in patterns:
        if _glob_match(pat, rel):
            result = not neg
    return result


def context_files() -> list[str]:
    """Files `docker build -f docker/Dockerfile .` sends (relative paths)."""
    pats = dockerignore_patterns()
    out = []
    for root, dirs, files in os.walk(REPO):
        rel_root = os.path.relpath(root, REPO)
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = [d for d in dirs if not ignored(rel_root + d, pats)]
        out += [rel_root + f for f in files if not ignored(rel_root + f, pats)]
    return sorted(out)


# ---- processes and sockets -------------------------------------------------------------

# Below the ephemeral range: a port from it could become the local port of an outgoing
# connection of a test running alongside before grelay binds it ("Address already in use").
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from free_ports import free_port  # noqa: E402,F401


def wait_for(pred, timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def under_profile(profile: str, argv: list[str], without=()) -> list[str]:
    """argv run under a seccomp profile by seccomp_exec.py (no capabilities, like compose's
    cap_drop: [ALL]); `without` removes syscalls from it first."""
    cmd = [sys.executable, SECCOMP_EXEC]
    if without:
        cmd += ["--without", ",".join(without)]
    return cmd + [profile, "--"] + list(argv)


def host_has_io_uring(exe: str) -> tuple[bool, str]:
    r = subprocess.run([exe, "--features"], capture_output=True, text=True, timeout=30)
    out = r.stdout + r.stderr
    return ("io_uring: available" in out), out


def q(argv) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def which(tool: str) -> str:
    exe = shutil.which(tool)
    if not exe:
        raise unittest.SkipTest(f"{tool} is not installed")
    return exe


def main() -> None:
    """Runs the calling module's tests: exit 0 pass, 77 when every test skipped, 1 failure."""
    prog = unittest.main(module="__main__", exit=False, verbosity=2)
    r = prog.result
    if not r.wasSuccessful():
        sys.exit(1)
    if r.testsRun and len(r.skipped) == r.testsRun:
        print("all tests skipped:", "; ".join(sorted({why for _, why in r.skipped})))
        sys.exit(77)
    sys.exit(0)
