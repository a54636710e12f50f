#!/usr/bin/env bash
# grelay's benchmark: wrk against grelay, nginx and HAProxy on loopback (see bench/README.md).
#
#   bench/run.sh [--quick] [--no-setup] [bench.py options...]
#
#   --quick      1 repetition of 3 s per case, output to bench/results/tmp/quick.*
#   --no-setup   do not install packages (setup.sh bench); for the smoke test
#   --cases a,b  only these cases (names or prefixes; --list shows them)
#   others       passed to bench/bench.py (--reps, --duration, --pin, --out, ...; --help)
#
# Installs the `build` and `bench` package groups of packages.txt (apt, only what is
# missing), builds grelay into build/release (RelWithDebInfo) unless GRELAY_BIN names a
# binary, builds bench-sink into $BENCH_BUILD (default build/bench), then runs bench.py.
# Full runs write bench/results/latest.{json,md,png}.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")

setup=1
args=()
for a in "$@"; do
  case "$a" in
    --no-setup) setup=0 ;;
    *) args+=("$a") ;;
  esac
done

if [ $setup -eq 1 ]; then
  "$repo/setup.sh" build bench
fi

if [ -z "${GRELAY_BIN:-}" ]; then
  "$repo/setup.sh" --build --target grelay >/dev/null
  GRELAY_BIN="$repo/build/release/proxy/grelay"
fi
[ -x "$GRELAY_BIN" ] || { echo "run.sh: no grelay binary at $GRELAY_BIN" >&2; exit 1; }

bench_build=${BENCH_BUILD:-$repo/build/bench}
sink="$bench_build/bench-sink"
if [ ! -x "$sink" ] || [ "$here/sink.cc" -nt "$sink" ]; then
  mkdir -p "$bench_build"
  "${CXX:-g++}" -O2 -std=c++20 -Wall -Wextra -Werror -o "$sink" "$here/sink.cc"
fi

export GRELAY_BIN BENCH_SINK="$sink"
exec python3 "$here/bench.py" "${args[@]}"
