#!/usr/bin/env bash
# Smoke test of the benchmark harness (not a performance gate): one quick run of grelay
# alone and with one mirror, through bench/run.sh. Passes (exit 0) when the harness
# worked and grelay served every request without socket errors, non-2xx responses or
# wrong response sizes, and the mirror got every request; fails (exit 1) otherwise.
#
#   bench/smoke_test.sh [GRELAY_BIN]       (or GRELAY_BIN in the environment)
#
# Installs nothing (--no-setup): wrk, nginx and g++ come from the `test` and `build`
# package groups. Without GRELAY_BIN, run.sh builds build/release/proxy/grelay.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -gt 0 ] && export GRELAY_BIN=$1

out=$(mktemp -d /tmp/grelay-bench-smoke.XXXXXX)
trap 'rm -rf "$out"' EXIT
export BENCH_BUILD=${BENCH_BUILD:-$out/build}

"$here/run.sh" --no-setup --quick --no-plot --cases grelay_100b,grelay_mirror1 \
  --out "$out/smoke"
rc=$?
if [ $rc -ne 0 ]; then
  echo "bench smoke test: FAILED (exit $rc)"
  exit 1
fi
python3 - "$out/smoke.json" <<'EOF' || exit 1
import json, sys
doc = json.load(open(sys.argv[1]))
bad = []
for name in ("grelay_100b", "grelay_mirror1"):
    s = doc["summary"].get(name)
    if not s:
        bad.append(f"{name}: no run")
    elif s["rps"] <= 0 or s["flags"]:
        bad.append(f"{name}: {s['rps']:.0f} req/s, {s['flags']}")
if bad:
    print("bench smoke test: FAILED: " + "; ".join(bad))
    sys.exit(1)
print("bench smoke test: passed")
EOF
