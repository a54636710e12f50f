#!/usr/bin/env bash
# The README's second command: installs what is missing, builds grelay (release and
# ASan+UBSan) and runs every test: unit and integration tests on both builds (ctest),
# then the kernel series' tests in the VM (kernel/test.sh). Ends with "N passed, N failed".
#
#   ./test.sh            everything
#   ./test.sh --quick    release build only, no ASan run, no kernel VM
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

quick=0
[ "${1:-}" = "--quick" ] && quick=1

groups=(build test)
[ $quick -eq 1 ] || groups+=(kernel)
if [ $quick -eq 1 ]; then
  ./setup.sh --build "${groups[@]}" || { echo "test: build failed"; echo "0 passed, 1 failed"; exit 1; }
else
  ./setup.sh --build --asan "${groups[@]}" || { echo "test: build failed"; echo "0 passed, 1 failed"; exit 1; }
fi

passed=0 failed=0 skipped=0
failures=()
jobs=$(nproc)

# The two test kernels take ~18 minutes to compile on a machine whose kernel cache is
# cold (seconds when it is warm), and the host tests below leave a core idle much of the
# time. Build them meanwhile at SCHED_IDLE priority: they take only CPU time no test
# wants. kernel/test.sh finds them built (or, if this failed, builds and reports itself).
prebuild=0 prebuildLog=""
if [ $quick -eq 0 ] && [ -x kernel/build.sh ]; then
  prebuildLog=$(mktemp)
  setsid chrt --idle 0 nice -n 19 bash -c \
    'start=$SECONDS; kernel/build.sh >/dev/null && kernel/build.sh --debug >/dev/null
     rc=$?; echo "kernels built in the background in $((SECONDS - start)) s (exit $rc)"' \
    > "$prebuildLog" 2>&1 &
  prebuild=$!
  trap '[ $prebuild -eq 0 ] || kill -- -$prebuild 2>/dev/null' EXIT
fi

# runCtest NAME DIR [ctest args...]: runs a ctest tree and adds up its results.
runCtest() {
  local name=$1 dir=$2; shift 2
  local log
  log=$(mktemp)
  echo "=== $name: ctest in ${dir#$here/}"
  (cd "$dir" && ctest --output-on-failure --timeout 600 "$@") 2>&1 | tee "$log"
  local total fail skip
  total=$(sed -n 's/.* tests failed out of \([0-9]*\).*/\1/p' "$log" | tail -1)
  fail=$(sed -n 's/.* \([0-9]*\) tests failed out of .*/\1/p' "$log" | tail -1)
  skip=$(grep -c '\*\*\*Skipped' "$log" || true)
  if [ -z "$total" ]; then
    echo "test: $name did not report results"
    failed=$((failed + 1)); failures+=("$name: ctest did not finish")
  else
    passed=$((passed + total - fail - skip))
    failed=$((failed + fail))
    skipped=$((skipped + skip))
    while read -r line; do failures+=("$name: $line"); done < <(sed -n 's/^\s*[0-9]* - \(.*\)/\1/p' "$log" | grep -v 'Skipped\|Not Run' || true)
  fi
  rm -f "$log"
}

# Unit tests first (parallel), then integration tests one at a time: several of them
# measure time or memory and must not compete with each other for two cores.
runCtest "release unit" "$here/build/release" -j"$jobs" -LE integration
runCtest "release integration" "$here/build/release" -L integration

if [ $quick -eq 0 ]; then
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  runCtest "asan unit" "$here/build/asan" -j"$jobs" -LE integration
  GRELAY_TEST_SCALE=${GRELAY_TEST_SCALE:-0.25} runCtest "asan integration" "$here/build/asan" -L integration
  unset ASAN_OPTIONS UBSAN_OPTIONS

  # Every fuzz target for a bounded time (the corpora already replayed in both builds).
  echo "=== fuzz: tests/fuzz/fuzz.sh (clang, libFuzzer, ${GRELAY_FUZZ_SECONDS:-20} s per target)"
  flog=$(mktemp)
  tests/fuzz/fuzz.sh "${GRELAY_FUZZ_SECONDS:-20}" "$here/build/fuzz" 2>&1 | tee "$flog"
  summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$flog" | tail -1)
  if [ -n "$summary" ]; then
    fp=$(echo "$summary" | awk '{print $1}')
    ff=$(echo "$summary" | awk '{print $3}')
    passed=$((passed + fp)); failed=$((failed + ff))
    [ "$ff" -eq 0 ] || failures+=("fuzz: $ff failed")
  else
    failed=$((failed + 1)); failures+=("fuzz: fuzz.sh did not finish")
  fi
  rm -f "$flog"

  if [ $prebuild -ne 0 ]; then
    echo "=== kernel: waiting for the background kernel builds"
    wait $prebuild
    prebuild=0
    cat "$prebuildLog"
    rm -f "$prebuildLog"
  fi

  if [ -x kernel/test.sh ]; then
    echo "=== kernel: kernel/test.sh (patched 6.12 in qemu)"
    klog=$(mktemp)
    ./kernel/test.sh 2>&1 | tee "$klog"
    krc=${PIPESTATUS[0]}
    summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$klog" | tail -1)
    if [ -n "$summary" ]; then
      kp=$(echo "$summary" | awk '{print $1}')
      kf=$(echo "$summary" | awk '{print $3}')
      passed=$((passed + kp)); failed=$((failed + kf))
      [ "$kf" -eq 0 ] || failures+=("kernel: $kf failed")
    elif [ "$krc" -ne 0 ]; then
      failed=$((failed + 1)); failures+=("kernel: kernel/test.sh exited $krc without a summary")
    fi
    rm -f "$klog"
  fi

  if [ -x kernel/vm.sh ]; then
    # The group relay path exists only on the patched kernel: the integration tests run
    # again inside the VM with relay_path = "group" (and kTLS).
    echo "=== group path: integration tests inside the kernel/ VM"
    vlog=$(mktemp)
    GRELAY_BIN="$here/build/release/proxy/grelay" ./kernel/vm.sh --timeout 2400 -- \
      tests/integration/vm_suite.sh 2>&1 | tee "$vlog"
    vrc=${PIPESTATUS[0]}
    summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$vlog" | tail -1)
    vskip=$(sed -n 's/^\([0-9]*\) skipped$/\1/p' "$vlog" | tail -1)
    skipped=$((skipped + ${vskip:-0}))
    if [ -n "$summary" ]; then
      vp=$(echo "$summary" | awk '{print $1}')
      vf=$(echo "$summary" | awk '{print $3}')
      passed=$((passed + vp)); failed=$((failed + vf))
      [ "$vf" -eq 0 ] || failures+=("group path (VM): $vf failed")
    fi
    if [ "$vrc" -eq 123 ]; then
      failed=$((failed + 1)); failures+=("group path (VM): the kernel logged a problem (see above)")
    elif [ -z "$summary" ] || { [ "$vrc" -ne 0 ] && [ "$vrc" -ne 1 ]; }; then
      failed=$((failed + 1)); failures+=("group path (VM): kernel/vm.sh exited $vrc")
    fi
    rm -f "$vlog"
  fi
fi

echo
echo "=== summary"
for f in "${failures[@]}"; do echo "FAILED: $f"; done
echo "$skipped skipped (a kernel feature or tool this machine lacks; see each test's reason)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
