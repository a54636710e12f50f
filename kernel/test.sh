#!/usr/bin/env bash
# Runs the kernel series' tests: builds the normal and the debug kernel (cached, see
# build.sh), then runs the uapi tests (kernel/tests/group_kbuf_test) in a VM on each (see
# vm.sh); the debug VM fails on KASAN/lockdep/... splats and kmemleak reports. Also checks
# that relay/uring_compat.h matches the kernel's uapi, and that the tests skip (exit 77) on
# the host's stock kernel.
#
#   kernel/test.sh [--normal-only | --debug-only] [CASE...]
#
# Prints one line per case ("ok [normal] kbuf_fanout (0.12s)", "FAIL [debug] ...") and ends
# with "N passed, N failed"; exits non-zero if anything failed.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${GRELAY_KERNEL_CACHE:-/var/cache/grelay/kernel}
variants=(normal debug)
cases=()
while [ $# -gt 0 ]; do
  case "$1" in
    --normal-only) variants=(normal) ;;
    --debug-only) variants=(debug) ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "test.sh: unknown option $1" >&2; exit 2 ;;
    *) cases+=("$1") ;;
  esac
  shift
done

passed=0
failed=0
pass() { echo "ok $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }

# Builds first, one after the other (each uses every CPU); cached builds take seconds.
start=$SECONDS
for v in "${variants[@]}"; do
  args=()
  [ "$v" = debug ] && args=(--debug)
  if "$here/build.sh" "${args[@]}" > /dev/null; then
    pass "[build] $v kernel"
  else
    fail "[build] $v kernel (see the messages above)"
    echo "$passed passed, $failed failed"
    exit 1
  fi
done
tests=$cache/tests

# The project's compat header and the patched kernel's uapi agree (also enforced by build.sh).
if "$tests/uapi_check"; then
  pass "[host] uapi_check: relay/uring_compat.h matches the kernel's uapi"
else
  fail "[host] uapi_check: relay/uring_compat.h disagrees with the kernel's uapi"
fi

# On the host's kernel (stock, without the series) the tests must skip, not fail.
"$tests/group_kbuf_test" > /dev/null 2>&1
rc=$?
case $rc in
  77) pass "[host] group_kbuf_test skips on $(uname -r) (no IORING_FEAT_GROUP_KBUF)" ;;
  0) pass "[host] group_kbuf_test passes on $(uname -r)" ;;
  *) fail "[host] group_kbuf_test exited $rc on $(uname -r) (want 77: skip)" ;;
esac

# The VMs run in parallel: the normal one is done long before the debug one.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pids=()
for v in "${variants[@]}"; do
  args=(--no-hostroot --timeout 1200)
  # kmemleak's scan time grows with the VM's memory: 1G is plenty for the tests
  [ "$v" = debug ] && args+=(--debug --mem 1G)
  "$here/vm.sh" "${args[@]}" -- group_kbuf_test "${cases[@]}" > "$tmp/$v.out" 2> "$tmp/$v.err" &
  pids+=($!)
done
i=0
for v in "${variants[@]}"; do
  wait "${pids[$i]}"
  rc=$?
  i=$((i + 1))
  while IFS= read -r line; do
    case "$line" in
      "ok "*) pass "[$v] ${line#ok }" ;;
      "FAIL "*) fail "[$v] ${line#FAIL }" ;;
    esac
  done < "$tmp/$v.out"
  summary=0
  grep -Eq '^[0-9]+ passed, [0-9]+ failed$' "$tmp/$v.out" && summary=1
  case $rc in
    0) ;;
    1)  # failing cases are listed above; the kernel may have complained as well
      if [ $summary -eq 0 ]; then
        fail "[$v] group_kbuf_test did not run to the end (exit 1):"
        sed 's/^/    /' "$tmp/$v.err"
      elif grep -q '^vm.sh:' "$tmp/$v.err"; then
        fail "[$v] kernel log: the kernel reported problems during the tests:"
        sed 's/^/    /' "$tmp/$v.err"
      fi ;;
    77) fail "[$v] group_kbuf_test skipped: the VM's kernel lacks the series' features" ;;
    123) fail "[$v] kernel log: the kernel reported problems during the tests:"
         sed 's/^/    /' "$tmp/$v.err" ;;
    125) fail "[$v] VM: no result (boot failure, panic or timeout):"
         sed 's/^/    /' "$tmp/$v.err" ;;
    *) fail "[$v] group_kbuf_test exited $rc"
       sed 's/^/    /' "$tmp/$v.err" ;;
  esac
  if [ $rc -eq 0 ]; then
    pass "[$v] kernel log clean$([ "$v" = debug ] && echo " (KASAN, lockdep, kmemleak)")"
  fi
done
echo "took $((SECONDS - start)) s"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
