#!/usr/bin/env bash
# Builds grelay's libFuzzer targets with clang (ASan + UBSan) and fuzzes each one for a
# bounded time, starting from its corpus in tests/fuzz/<target>_corpus/ (read only: new
# inputs go to a scratch corpus in the build dir). One line per target, then
# "N passed, N failed"; exit 1 if a target failed (crash, leak, timeout, broken property:
# the reproducer's path is printed; add it to the corpus once the bug is fixed).
#
#   tests/fuzz/fuzz.sh [SECONDS] [BUILD_DIR]     default: 30 s per target, /tmp/grelay-fuzz
#   tests/fuzz/fuzz.sh --merge [SECONDS] [DIR]   also merge new coverage into the repo corpora
#   FUZZ_TARGETS="config tap" tests/fuzz/fuzz.sh  only these targets
#
# Needs clang and libclang-rt-14-dev (packages.txt, group test).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

merge=0
if [ "${1:-}" = "--merge" ]; then
  merge=1
  shift
fi
seconds=${1:-30}
build=${2:-/tmp/grelay-fuzz}
targets=(${FUZZ_TARGETS:-config config_values tap tap_layout proxy_header client_hello})

if ! command -v clang++ >/dev/null; then
  echo "fuzz: clang++ not found (apt-get install clang libclang-rt-14-dev)"
  echo "0 passed, ${#targets[@]} failed"
  exit 1
fi

gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
if [ ! -f "$build/CMakeCache.txt" ]; then
  if ! cmake -S "$repo" -B "$build" "${gen[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ >"$build.cmake.log" 2>&1; then
    cat "$build.cmake.log"
    echo "fuzz: cmake failed"
    echo "0 passed, ${#targets[@]} failed"
    exit 1
  fi
fi
exes=()
for t in "${targets[@]}"; do exes+=("${t}_fuzz"); done
if ! cmake --build "$build" -j"$(nproc)" --target "${exes[@]}" >"$build/fuzz-build.log" 2>&1; then
  tail -40 "$build/fuzz-build.log"
  echo "fuzz: build failed (clang with libFuzzer? see $build/fuzz-build.log)"
  echo "0 passed, ${#targets[@]} failed"
  exit 1
fi

passed=0 failed=0
for t in "${targets[@]}"; do
  bin=$build/tests/fuzz/${t}_fuzz
  corpus=$here/${t}_corpus
  work=$build/fuzz-work/$t
  mkdir -p "$work/corpus" "$work/artifacts"
  log=$work/fuzz.log
  args=(-max_total_time="$seconds" -timeout=25 -rss_limit_mb=4096 -print_final_stats=1
        -artifact_prefix="$work/artifacts/")
  [ -f "$here/$t.dict" ] && args+=(-dict="$here/$t.dict")
  start=$(date +%s)
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
    timeout $((seconds + 300)) "$bin" "${args[@]}" "$work/corpus" "$corpus" >"$log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  if [ $rc -eq 0 ]; then
    passed=$((passed + 1))
    echo "PASS $t: ${took}s, ${execs:-?} executions, coverage ${cov:-?} edges"
    if [ $merge -eq 1 ]; then
      "$bin" -merge=1 -rss_limit_mb=4096 "$corpus" "$work/corpus" >"$work/merge.log" 2>&1 &&
        echo "     merged: $(grep -o 'added [0-9]* new files' "$work/merge.log" | tail -1)"
    fi
  else
    failed=$((failed + 1))
    artifact=$(grep -o "Test unit written to [^ ]*" "$log" | tail -1 | sed 's/Test unit written to //')
    why=$(grep -m1 -E "ERROR: |fuzz property broken|runtime error|Sanitizer" "$log" | cut -c1-200)
    echo "FAIL $t: exit $rc after ${took}s: ${why:-see $log}; reproducer: ${artifact:-none} (log $log)"
  fi
done
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
