#!/usr/bin/env python3
"""Runs a command under a container seccomp profile, the way a container runtime would,
so tests can check what grelay does under docker/seccomp-io_uring.json without Docker.

  seccomp_exec.py [--caps CAP,...] [--without NAME,...] PROFILE -- COMMAND [ARG...]

PROFILE is a Docker-format profile (archMap, includes/excludes) or a plain OCI one. Like
dockerd, the rules are evaluated for this machine's architecture, the running kernel and
the container's capabilities (--caps; default none, as with `cap_drop: [ALL]`); like runc,
each remaining rule becomes a libseccomp rule (names unknown on this architecture are
skipped, a rule equal to the default action is skipped, errnoRet defaults to EPERM).
--without removes syscalls from every rule first (e.g. io_uring_*: what Docker >= 25's
default profile does). Then the filter is loaded (with no_new_privs) and COMMAND is
exec'd: it inherits the filter.

Uses libseccomp.so.2 through ctypes (apt depends on libseccomp2, so every Debian has it).
Exit codes: COMMAND's, 126 if the filter cannot be built or loaded, 77 without libseccomp.
"""

import argparse
import ctypes
import ctypes.util
import errno
import json
import os
import platform
import sys

ACT_ALLOW = 0x7FFF0000
ACT_LOG = 0x7FFC0000
ACT_KILL_THREAD = 0x00000000
ACT_KILL_PROCESS = 0x80000000
ACT_TRAP = 0x00030000


def act_errno(e):
    return 0x00050000 | (e & 0xFFFF)


def act_trace(e):
    return 0x7FF00000 | (e & 0xFFFF)


CMP = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
       "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}

# Docker's architecture names (Go's GOARCH) and libseccomp's, by uname -m.
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "riscv64": "riscv64", "s390x": "s390x",
          "ppc64le": "ppc64le"}
SCMP_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64",
             "riscv64": "SCMP_ARCH_RISCV64", "s390x": "SCMP_ARCH_S390X",
             "ppc64le": "SCMP_ARCH_PPC64LE"}


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def action_of(name, errno_ret, default_errno=errno.EPERM):
    if name == "SCMP_ACT_ERRNO":
        return act_errno(default_errno if errno_ret is None else errno_ret)
    if name == "SCMP_ACT_TRACE":
        return act_trace(default_errno if errno_ret is None else errno_ret)
    return {"SCMP_ACT_ALLOW": ACT_ALLOW, "SCMP_ACT_LOG": ACT_LOG,
            "SCMP_ACT_KILL": ACT_KILL_THREAD, "SCMP_ACT_KILL_THREAD": ACT_KILL_THREAD,
            "SCMP_ACT_KILL_PROCESS": ACT_KILL_PROCESS, "SCMP_ACT_TRAP": ACT_TRAP}[name]


def kernel_at_least(version):
    want = tuple(int(x) for x in version.split("."))
    have = tuple(int(x) for x in platform.release().split("-")[0].split(".")[:len(want)])
    return have >= want


def applicable_rules(profile, caps, without=()):
    """dockerd's evaluation of includes/excludes for this machine: the rules that apply."""
    arch = GOARCH.get(platform.machine(), platform.machine())
    out = []
    for rule in profile.get("syscalls", []):
        inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
        if any(c not in caps for c in inc.get("caps") or []):
            continue
        if inc.get("arches") and arch not in inc["arches"]:
            continue
        if inc.get("minKernel") and not kernel_at_least(inc["minKernel"]):
            continue
        if arch in (exc.get("arches") or []):
            continue
        if any(c in caps for c in exc.get("caps") or []):
            continue
        names = [n for n in rule.get("names") or [rule.get("name")] if n and n not in without]
        if names:
            out.append(dict(rule, names=names))
    return out


def build_filter(lib, profile, caps, without):
    default = action_of(profile["defaultAction"], profile.get("defaultErrnoRet"))
    ctx = lib.seccomp_init(ctypes.c_uint32(default))
    if not ctx:
        raise OSError("seccomp_init failed")
    added = 0
    for rule in applicable_rules(profile, caps, without):
        action = action_of(rule["action"], rule.get("errnoRet"))
        if action == default:
            continue
        args = rule.get("args") or []
        arr = (ArgCmp * max(1, len(args)))()
        for i, a in enumerate(args):
            arr[i] = ArgCmp(a["index"], CMP[a["op"]], a.get("value", 0), a.get("valueTwo", 0))
        for name in rule["names"]:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # not a syscall of this architecture
            rc = lib.seccomp_rule_add_array(ctx, ctypes.c_uint32(action), nr,
                                            len(args), arr)
            if rc < 0:
                raise OSError(-rc, "seccomp_rule_add %s: %s" % (name, os.strerror(-rc)))
            added += 1
    return ctx, added


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--caps", default="", help="capabilities the container keeps, e.g. CAP_NET_RAW")
    p.add_argument("--without", default="", help="syscalls to drop from the profile first")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("profile")
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        p.error("no COMMAND")
    path = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(path, use_errno=True)
    except OSError as e:
        print("seccomp_exec: no libseccomp (%s)" % e, file=sys.stderr)
        return 77
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    with open(a.profile) as f:
        profile = json.load(f)
    caps = {c.strip() for c in a.caps.split(",") if c.strip()}
    without = {s.strip() for s in a.without.split(",") if s.strip()}
    try:
        ctx, added = build_filter(lib, profile, caps, without)
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise OSError(-rc, "seccomp_load: " + os.strerror(-rc))
    except (OSError, KeyError) as e:
        print("seccomp_exec: %s: %s" % (a.profile, e), file=sys.stderr)
        return 126
    if a.verbose:
        print("seccomp_exec: %s: %d syscall rules loaded" % (a.profile, added), file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        print("seccomp_exec: cannot run %s: %s" % (cmd[0], e), file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
