#!/usr/bin/env bash
# Installs the Debian packages of the given groups (see packages.txt) that are missing,
# then, with --build, configures and builds grelay into build/release (and build/asan
# with --asan); --target T builds only target T (e.g. grelay). Used by demo.sh, test.sh,
# bench/ and docker/.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() { echo "usage: setup.sh [--build] [--asan] [--target T] GROUP..." >&2; exit 2; }

build=0 asan=0 groups=() targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=1 ;;
    --asan) asan=1 ;;
    --target) shift; [ $# -gt 0 ] || usage; targets+=(--target "$1") ;;
    -h|--help) usage ;;
    *) groups+=("$1") ;;
  esac
  shift
done

packagesOf() {
  local g
  for g in "$@"; do
    awk -v g="$g" '$1 == g { print $2 }' "$here/packages.txt"
  done | sort -u
}

if [ ${#groups[@]} -gt 0 ]; then
  mapfile -t wanted < <(packagesOf "${groups[@]}")
  missing=()
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts nginx on install; the demo, tests and bench start their own.
    if printf '%s\n' "${missing[@]}" | grep -qx nginx; then
      $sudo service nginx stop >/dev/null 2>&1 || $sudo pkill -x nginx || true
    fi
  fi
fi

buildTree() {  # buildTree DIR [cmake args...]
  local dir=$1; shift
  local gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  local launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  if [ ! -f "$dir/CMakeCache.txt" ]; then
    cmake -S "$here" -B "$dir" "${gen[@]}" "${launcher[@]}" "$@" >/dev/null
  fi
  cmake --build "$dir" -j"$(nproc)" "${targets[@]}"
}

if [ $build -eq 1 ]; then
  buildTree "$here/build/release" -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
if [ $asan -eq 1 ]; then
  buildTree "$here/build/asan" -DCMAKE_BUILD_TYPE=Debug -DGRELAY_SANITIZE=ON
fi
