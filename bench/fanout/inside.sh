#!/bin/sh
# Runs inside the VM (kernel/vm.sh, started by bench/fanout/run.sh): the fan-out benchmark
# on the kernel built from kernel/. Arguments go to `fanout.py run`.
set -e
here=$(cd "$(dirname "$0")" && pwd)
if [ "${GRELAY_IN_VM:-}" != 1 ]; then
  echo "inside.sh: runs inside kernel/vm.sh (use bench/fanout/run.sh)" >&2
  exit 2
fi
ulimit -n 65536 2>/dev/null || true
# Socket buffers of 32 MiB from the start (the VM is ours; every relay gets the same): the
# sinks are scheduled late now and then, and on grelay's group path a mirror whose send
# buffer cannot take a chunk at once is cut (see README.md, "Mirror cuts").
echo "4096 33554432 33554432" > /proc/sys/net/ipv4/tcp_wmem
echo "4096 33554432 33554432" > /proc/sys/net/ipv4/tcp_rmem
exec python3 "$here/fanout.py" run "$@"
