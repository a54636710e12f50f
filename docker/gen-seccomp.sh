#!/usr/bin/env bash
# Generates grelay's seccomp profiles from Docker's default profile, as Debian ships it in
# the package of packages.txt group "docker" (golang-github-docker-docker-dev, file
# profiles/seccomp/default.json; Apache-2.0, Docker/Moby authors):
#
#   docker/seccomp-io_uring.json      Docker's format (archMap, includes/excludes by
#                                     capability, architecture and kernel), the default
#                                     profile with io_uring_setup, io_uring_enter and
#                                     io_uring_register in its unconditional allow rule.
#                                     For `docker run --security-opt seccomp=...` and compose.
#   docker/k8s/node/seccomp-io_uring.json  the same profile flattened to plain OCI (what
#                                     containerd and CRI-O read for a Kubernetes
#                                     "Localhost" profile: they ignore includes/excludes):
#                                     the rules Docker applies to a container with NO
#                                     capabilities (grelay drops them all) on amd64 or arm64.
#
# usage: docker/gen-seccomp.sh [DEFAULT_JSON]
#   DEFAULT_JSON  Docker's default.json to start from. Without it: the installed package's
#                 copy, else the package is fetched with `apt-get download` (not installed:
#                 its ~260 Go dependencies are not needed) and unpacked in a temp dir.
# Env: OUT_DOCKER, OUT_K8S override the two output paths (tests compare against them).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

pkg=$(awk '$1 == "docker" && $2 ~ /docker-docker-dev$/ { print $2; exit }' "$repo/packages.txt")
[ -n "$pkg" ] || { echo "gen-seccomp: no docker-docker-dev package in packages.txt group docker" >&2; exit 1; }
rel=usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json
out_docker=${OUT_DOCKER:-$here/seccomp-io_uring.json}
out_k8s=${OUT_K8S:-$here/k8s/node/seccomp-io_uring.json}

src=${1:-}
origin=""
if [ -z "$src" ]; then
  if [ -f "/$rel" ]; then
    src=/$rel
    origin="$pkg $(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || echo '?') (installed)"
  else
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mkdir "$tmp/dl"
    chmod 0755 "$tmp" && chmod 0777 "$tmp/dl"  # apt-get download fetches as user _apt
    (cd "$tmp/dl" && apt-get download -q "$pkg" >/dev/null)
    deb=$(ls "$tmp"/dl/*.deb)
    dpkg-deb -x "$deb" "$tmp/x"
    src=$tmp/x/$rel
    origin="$pkg $(dpkg-deb -f "$deb" Version) (downloaded)"
  fi
fi
[ -f "$src" ] || { echo "gen-seccomp: $src: no such file" >&2; exit 1; }
echo "gen-seccomp: from ${origin:-$src}" >&2

python3 - "$src" "$out_docker" "$out_k8s" <<'PY'
import json
import sys

src, out_docker, out_k8s = sys.argv[1:4]
URING = ["io_uring_enter", "io_uring_register", "io_uring_setup"]
TARGET_ARCHES = {"amd64", "arm64"}  # Docker's names; the flat profile serves both


def unconditional(rule):
    return not rule.get("args") and not rule.get("includes") and not rule.get("excludes")


with open(src) as f:
    profile = json.load(f)
if profile.get("defaultAction") != "SCMP_ACT_ERRNO":
    sys.exit("gen-seccomp: %s: defaultAction is %r, expected SCMP_ACT_ERRNO"
             % (src, profile.get("defaultAction")))

# 1. Docker format: io_uring_* into the first unconditional allow rule, and
#    out of any other rule (Docker >= 25 lists none; a future one might deny them).
rules = profile["syscalls"]
allow = next((r for r in rules if r.get("action") == "SCMP_ACT_ALLOW" and unconditional(r)), None)
if allow is None:
    sys.exit("gen-seccomp: %s has no unconditional SCMP_ACT_ALLOW rule" % src)
for rule in rules:
    if rule is not allow:
        rule["names"] = [n for n in rule["names"] if n not in URING]
profile["syscalls"] = rules = [r for r in rules if r["names"]]
added = [n for n in URING if n not in allow["names"]]
for name in added:
    # Docker orders names alphabetically ignoring underscores ("io_cancel", "ioctl",
    # "io_destroy"): insert at that place.
    key = name.replace("_", "")
    names = allow["names"]
    at = next((i for i, n in enumerate(names) if n.replace("_", "") > key), len(names))
    names.insert(at, name)
print("gen-seccomp: io_uring syscalls %s" % (("added: " + ", ".join(added)) if added
      else "already allowed by this default.json (Docker < 25); kept"), file=sys.stderr)


def dump(obj, path):
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent="\t") + "\n")


dump(profile, out_docker)


# 2. Flat OCI: evaluate includes/excludes the way dockerd does for a container with no
#    capabilities on a kernel >= every minKernel, keeping a rule when it applies on at
#    least one target arch (names of another arch's syscalls are ignored by runc/crun).
def applies(rule):
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if inc.get("caps"):
        return False  # needs a capability grelay does not have
    if inc.get("arches") and not TARGET_ARCHES & set(inc["arches"]):
        return False
    if exc.get("arches") and TARGET_ARCHES <= set(exc["arches"]):
        return False
    split = [a for a in TARGET_ARCHES if a in set(exc.get("arches") or [])]
    if split:
        sys.exit("gen-seccomp: a rule for %s excludes only %s: cannot flatten for both"
                 % (rule["names"], split))
    return True  # excludes.caps: none held; minKernel: nodes run newer kernels


flat_rules = []
for rule in rules:
    if not applies(rule):
        continue
    flat = {"names": rule["names"], "action": rule["action"]}
    if rule.get("args"):
        flat["args"] = rule["args"]
    if "errnoRet" in rule:
        flat["errnoRet"] = rule["errnoRet"]
    flat_rules.append(flat)
flat_profile = {"defaultAction": profile["defaultAction"]}
if "defaultErrnoRet" in profile:
    flat_profile["defaultErrnoRet"] = profile["defaultErrnoRet"]
flat_profile["syscalls"] = flat_rules
dump(flat_profile, out_k8s)
print("gen-seccomp: wrote %s (%d rules), %s (%d rules)"
      % (out_docker, len(rules), out_k8s, len(flat_rules)), file=sys.stderr)
PY
