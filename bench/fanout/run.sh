#!/usr/bin/env bash
# The in-VM fan-out benchmark (bench/fanout/README.md): grelay's group, mainline and copy
# paths, a splice+tee relay and a read/write relay, 1..4 targets + a tap, 64 KiB and
# 4 KiB chunks, in one VM on the kernel built from kernel/.
#
#   bench/fanout/run.sh [--quick] [--reps N] [fanout.py run options...]
#
#   --quick      1 repetition, smaller runs; writes results/tmp/quick.{md,json}
#   --no-icount  guest time = host time (plain TCG) instead of counted instructions
#   --perf       profile every run (perf record -a -g in the VM): results/tmp/perf/*.txt
#   others       passed to `fanout.py run` (--reps, --relays group,splice, --chunks 65536,
#                --targets 3, --bytes-64k N, --bytes-4k N, --timeout S; see fanout.py run -h)
#
# Builds grelay (setup.sh --build --target grelay: build/release, RelWithDebInfo) unless
# GRELAY_BIN names a binary, compiles the C tools with cc into $FANOUT_BUILD (default
# build/fanout), boots the VM once (kernel/vm.sh, which builds the kernel if needed) and
# runs every case inside it. A full run (no --quick, no case selection) writes
# results/latest.{md,json} and puts the tables into README.md; other runs write
# results/tmp/run.{md,json}. Exit 1 if any run failed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

quick=0
partial=0
icount=1
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --no-icount) icount=0 ;;
    --perf) partial=1; args+=(--perf "$here/results/tmp/perf") ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --relays|--chunks|--targets|--bytes-64k|--bytes-4k) partial=1; args+=("$1" "$2"); shift ;;
    *) args+=("$1") ;;
  esac
  shift
done

if [ -z "${GRELAY_BIN:-}" ]; then
  "$repo/setup.sh" --build --target grelay >/dev/null
  GRELAY_BIN="$repo/build/release/proxy/grelay"
fi
GRELAY_BIN=$(readlink -f "$GRELAY_BIN")
[ -x "$GRELAY_BIN" ] || { echo "run.sh: no grelay binary at $GRELAY_BIN" >&2; exit 1; }

build=$(mkdir -p "${FANOUT_BUILD:-$repo/build/fanout}" && cd "${FANOUT_BUILD:-$repo/build/fanout}" && pwd)
for tool in sink:fanout-sink source:fanout-source splice_tee:fanout-relay; do
  src="$here/${tool%%:*}.c" bin="$build/${tool##*:}"
  if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ]; then
    "${CC:-cc}" -O2 -Wall -Wextra -Werror -o "$bin" "$src"
  fi
done

results="$here/results"
if [ $quick -eq 1 ] || [ $partial -eq 1 ]; then
  mkdir -p "$results/tmp"
  out="$results/tmp/$([ $quick -eq 1 ] && echo quick || echo run)"
else
  out="$results/latest"
fi
if [ $quick -eq 1 ]; then
  args=(--reps 1 --bytes-64k $((16 << 20)) --bytes-4k $((4 << 20)) --quick "${args[@]}")
fi

mkdir -p "$results"
vmpath=$PATH
if [ $icount -eq 1 ]; then
  # kernel/vm.sh starts qemu-system-x86_64 from PATH: this one adds -icount (README.md).
  FANOUT_REAL_QEMU=$(command -v qemu-system-x86_64) || { echo "run.sh: no qemu" >&2; exit 1; }
  export FANOUT_REAL_QEMU
  vmpath="$here/qemu-icount:$PATH"
  args=(--clock icount "${args[@]}")
else
  args=(--clock host "${args[@]}")
fi
rc=0
PATH=$vmpath "$repo/kernel/vm.sh" --timeout "${FANOUT_VM_TIMEOUT:-7200}" --share "$results" -- \
  "$here/inside.sh" --bin-dir "$build" --grelay "$GRELAY_BIN" --out "$out" "${args[@]}" || rc=$?
[ -f "$out.md" ] || { echo "run.sh: the VM run wrote no results (exit $rc)" >&2; exit 1; }

if [ "$out" = "$results/latest" ]; then
  # The README's results section is replaced by the new tables.
  python3 - "$here/README.md" "$out.md" <<'PY'
import sys
readme, md = sys.argv[1], sys.argv[2]
try:
    text = open(readme).read()
except FileNotFoundError:
    sys.exit(0)
begin, end = "<!-- fanout-results:begin -->", "<!-- fanout-results:end -->"
if begin in text and end in text:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    open(readme, "w").write(head + begin + "\n" + open(md).read() + end + tail)
PY
fi
cat "$out.md"
exit $rc
