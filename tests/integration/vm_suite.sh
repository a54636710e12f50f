#!/usr/bin/env bash
# The integration tests on the group path, inside the kernel/ VM (issue 10): the same
# tests as on the host, with relay_path = "group" written into every config, plus kTLS.
# Run by test.sh as
#   GRELAY_BIN=... kernel/vm.sh --timeout N -- tests/integration/vm_suite.sh
# Prints one line per test and ends with "N passed, N failed".
#
# Left out on purpose (under TCG emulation they measure the emulator, or move more bytes
# than it can in their timeouts): the timing/memory tests (slow_client_memory,
# timeouts_limits, wrk_nginx, soak, idle connections, faults), drain (80 MB must stream
# for the whole 10 s drain window) and tls_backpressure (160 MB of TLS at ~3 MB/s).
# They run on the host.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export GRELAY_RELAY_PATH=${GRELAY_RELAY_PATH:-group}
export GRELAY_TEST_SCALE=${GRELAY_TEST_SCALE:-0.15}
: "${GRELAY_BIN:?set GRELAY_BIN to the grelay binary}"

# [core], [fanout], [metrics] and [tls]; the handshake and CLI tests are left to the host
# (nothing of them depends on the relay path).
# NAME@PATH runs a test on another relay path: kTLS exists only in the VM, so its tests
# also run there on the mainline path.
tests=(half_close resets upstream_refused proxy_protocol access_log mirrors echo_concurrent tap reload metrics
       ktls ktls@mainline tls_termination tls_mirror_tap tls_upstream routing unix_sockets)
[ $# -gt 0 ] && tests=("$@")

case "$("$GRELAY_BIN" --features | sed -n 's/^relay path chosen by auto: //p')" in
  group) ;;
  *) echo "vm_suite: this kernel has no group path (run it inside kernel/vm.sh)"; echo "0 passed, 1 failed"; exit 1 ;;
esac

passed=0 failed=0 skipped=0
for entry in "${tests[@]}"; do
  t=${entry%@*}
  path=$GRELAY_RELAY_PATH
  [ "$entry" != "$t" ] && path=${entry#*@}
  log=$(mktemp)
  start=$SECONDS
  if [ "$t" = metrics ]; then
    # Prometheus scrapes grelay and every counter must match what went through.
    GRELAY_RELAY_PATH=$path python3 "$here/../metrics/grelay_metrics_e2e_test.py" \
      --grelay "$GRELAY_BIN" >"$log" 2>&1
  else
    GRELAY_RELAY_PATH=$path python3 "$here/test_$t.py" >"$log" 2>&1
  fi
  rc=$?
  took=$((SECONDS - start))
  case $rc in
    0) echo "PASS $path/$t (${took}s)"; passed=$((passed + 1)) ;;
    77) echo "SKIP $path/$t: $(grep -m1 'SKIPPED' "$log" || echo skipped)"; skipped=$((skipped + 1)) ;;
    *) echo "FAIL $path/$t (${took}s)"; tail -60 "$log" | sed 's/^/    /'; failed=$((failed + 1)) ;;
  esac
  rm -f "$log"
done
echo "$skipped skipped"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
