#!/usr/bin/env bash
# Builds grelay's test kernel: Debian's linux-source-6.12 with kernel/patches applied,
# configured as `make tinyconfig` + kernel/config/grelay.config (+ debug.config with
# --debug), built out of tree with ccache. Also builds the uapi tests (kernel/tests/,
# statically linked) against the patched kernel's uapi headers.
#
#   kernel/build.sh [--debug] [--tests-only] [-j N]
#
# Prints the path of the bzImage on stdout (progress goes to stderr). Everything lives in
# ${GRELAY_KERNEL_CACHE:-/var/cache/grelay/kernel}, never in the repository:
#   src/            the patched source tree (re-extracted when the series or tarball changes)
#   build-normal/   build-debug/   out-of-tree build dirs (O=)
#   tests/          the uapi test binaries and the patched uapi headers they use
#   ccache/         CCACHE_DIR
# Re-running with nothing changed is a no-op (stamp files). Safe to run concurrently:
# flock on the source tree (shared while building from it), the tests and each build dir.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
cache=${GRELAY_KERNEL_CACHE:-/var/cache/grelay/kernel}
tarball=${GRELAY_KERNEL_TARBALL:-/usr/src/linux-source-6.12.tar.xz}

variant=normal
tests_only=0
jobs=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) variant=debug ;;
    --tests-only) tests_only=1 ;;
    -j) jobs=$2; shift ;;
    -j*) jobs=${1#-j} ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done

say() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: error: $*" >&2; exit 1; }

# Packages (linux-source-6.12, gcc, flex, bison, ...): only installs what is missing.
"$repo/setup.sh" kernel >&2

[ -f "$tarball" ] || die "$tarball not found (package linux-source-6.12)"
mkdir -p "$cache"

hashOf() { sha256sum | cut -c1-16; }
fragments=("$here/config/grelay.config")
[ "$variant" = debug ] && fragments+=("$here/config/debug.config")
mapfile -t patches < <(find "$here/patches" -maxdepth 1 -name '[0-9][0-9][0-9][0-9]-*.patch' \
  ! -name '0000-*' | sort)

tarId="$(readlink -f "$tarball") $(stat -c '%s %Y' "$tarball")"
seriesHash=$( { echo "$tarId"; cat "${patches[@]}"; } | hashOf)
src=$cache/src
out=$cache/build-$variant
configHash=$( { echo "$seriesHash"; cat "${fragments[@]}"; } | hashOf)
kernelStamp=$( { echo "$configHash"; cat "$0"; } | hashOf)
testsStamp=$( { echo "$seriesHash"; cat "$0" "$here"/tests/*.c "$here"/tests/*.h \
  "$here"/tests/*.cc "$repo/relay/uring_compat.h" 2>/dev/null; } | hashOf)
bzImage=$out/arch/x86/boot/bzImage

upToDate() {
  [ "$(cat "$src/.grelay-series" 2>/dev/null)" = "$seriesHash" ] &&
    [ "$(cat "$cache/tests/.grelay-stamp" 2>/dev/null)" = "$testsStamp" ] || return 1
  [ $tests_only -eq 1 ] && return 0
  [ -f "$bzImage" ] && [ "$(cat "$out/.grelay-stamp" 2>/dev/null)" = "$kernelStamp" ]
}
result() {
  if [ $tests_only -eq 1 ]; then echo "$cache/tests"; else echo "$bzImage"; fi
}
# Nothing to do: no lock, so concurrent users of a built kernel don't wait on each other.
if upToDate; then
  result
  exit 0
fi

# --- source tree: pristine tarball + series ------------------------------------------------
prepareSource() {
  if [ -f "$src/.grelay-series" ] && [ "$(cat "$src/.grelay-series")" = "$seriesHash" ]; then
    return
  fi
  say "extracting $(basename "$tarball") and applying ${#patches[@]} patches"
  local fresh=$cache/src.new
  rm -rf "$fresh"
  mkdir -p "$fresh"
  tar -xf "$tarball" -C "$fresh" --strip-components=1
  local version
  version=$(make -s -C "$fresh" kernelversion 2>/dev/null || echo unknown)
  local p
  for p in "${patches[@]}"; do
    if ! log=$(patch -d "$fresh" -p1 --forward --batch --fuzz=0 -i "$p" 2>&1); then
      echo "$log" >&2
      rm -rf "$fresh"
      die "patch $(basename "$p") does not apply to linux-source-6.12 ($version, $tarball);" \
        "rebase the series (see kernel/README.md)"
    fi
  done
  find "$fresh" -name '*.orig' -delete
  # Files keep the tarball's timestamps, so a build dir only recompiles what a patch
  # touched. Touch what the old and the new series change, so that files a patch no
  # longer touches are rebuilt as well.
  local files=()
  mapfile -t files < <( { [ -f "$src/.grelay-files" ] && cat "$src/.grelay-files"
    grep -h '^+++ b/' "${patches[@]}" 2>/dev/null | sed 's|^+++ b/||'; } | sort -u)
  printf '%s\n' "${files[@]}" > "$fresh/.grelay-files"
  local f
  for f in "${files[@]}"; do
    [ -e "$fresh/$f" ] && touch "$fresh/$f"
  done
  echo "$seriesHash" > "$fresh/.grelay-series"
  rm -rf "$src"
  mv "$fresh" "$src"
}

# --- kernel: tinyconfig + fragments, out of tree --------------------------------------------
checkConfig() {  # checkConfig CONFIG FRAGMENT...
  local cfg=$1; shift
  local bad=0 line name
  while IFS= read -r line; do
    case "$line" in
      CONFIG_*=*)
        grep -qxF "$line" "$cfg" || { say "config: '$line' requested but .config has" \
          "'$(grep -E "^(# )?${line%%=*}[= ]" "$cfg" || echo "${line%%=*} unset")'"; bad=1; } ;;
      "# CONFIG_"*" is not set")
        name=${line#\# }; name=${name%% *}
        if grep -q "^$name=" "$cfg"; then
          say "config: '$line' requested but .config has '$(grep "^$name=" "$cfg")'"; bad=1
        fi ;;
    esac
  done < <(cat "$@")
  [ $bad -eq 0 ] || die "Kconfig dropped options of ${*##*/} (missing dependencies?)"
}

buildKernel() {
  local cc=gcc
  command -v ccache >/dev/null && cc="ccache gcc"
  export CCACHE_DIR=$cache/ccache
  # relative paths in ccache's hashes: hits survive moving the cache directory
  export CCACHE_BASEDIR=$cache
  export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-4G}
  export KBUILD_BUILD_USER=grelay KBUILD_BUILD_HOST=grelay
  export KBUILD_BUILD_TIMESTAMP="$(date -d "@$(stat -c %Y "$tarball")" -R)"
  local mk=(make -s -C "$src" O="$out" ARCH=x86_64 CC="$cc" HOSTCC="$cc" -j"$jobs")
  mkdir -p "$out"

  if [ ! -f "$out/.config" ] || [ "$(cat "$out/.grelay-config" 2>/dev/null)" != "$configHash" ]; then
    say "configuring $variant kernel (tinyconfig + ${fragments[*]##*/})"
    rm -f "$out/.grelay-stamp"
    "${mk[@]}" tinyconfig >/dev/null
    "$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "${fragments[@]}" >/dev/null
    "${mk[@]}" olddefconfig >/dev/null
    checkConfig "$out/.config" "${fragments[@]}"
    echo "$configHash" > "$out/.grelay-config"
  fi

  if [ -f "$bzImage" ] && [ "$(cat "$out/.grelay-stamp" 2>/dev/null)" = "$kernelStamp" ]; then
    return
  fi
  say "building $variant kernel in $out (-j$jobs; ~10 min from scratch, seconds with ccache)"
  local start=$SECONDS log=$out/build.log
  if ! "${mk[@]}" bzImage > "$log" 2>&1; then
    tail -40 "$log" >&2
    die "kernel build failed, full log: $log"
  fi
  echo "$kernelStamp" > "$out/.grelay-stamp"
  say "$variant kernel built in $((SECONDS - start)) s"
}

# --- uapi tests: static binaries against the patched uapi headers --------------------------
buildTests() {
  local out=$cache/tests
  if [ "$(cat "$out/.grelay-stamp" 2>/dev/null)" = "$testsStamp" ]; then
    return
  fi
  say "building uapi tests in $out"
  rm -rf "$out"
  mkdir -p "$out"
  # The patched <linux/io_uring.h> (the installed uapi header is the same file) in front
  # of the system's headers, which provide the rest (linux/types.h, ...).
  mkdir -p "$out/usr/include/linux"
  cp "$src/include/uapi/linux/io_uring.h" "$out/usr/include/linux/"
  local cflags=(-O2 -g -Wall -Wextra -Wno-missing-field-initializers -Werror -D_GNU_SOURCE
    -I"$out/usr/include" -I"$repo")
  gcc "${cflags[@]}" -static -o "$out/group_kbuf_test" "$here/tests/group_kbuf_test.c" \
    -luring -lpthread
  # The project's compat header, the patched kernel's uapi and the tests must agree.
  gcc "${cflags[@]}" -c -o "$out/uapi_kernel.o" "$here/tests/uapi_check_kernel.c"
  g++ -std=c++20 -O2 -Wall -Wextra -Werror -I"$repo" -o "$out/uapi_check" \
    "$here/tests/uapi_check_compat.cc" "$out/uapi_kernel.o"
  "$out/uapi_check" >&2 || die "relay/uring_compat.h disagrees with the kernel's uapi"
  echo "$testsStamp" > "$out/.grelay-stamp"
}

# The source tree is replaced only while nobody builds from it.
exec 7>"$cache/.src.lock"
flock -x 7
prepareSource
flock -s 7
exec 8>"$cache/.tests.lock"
flock -x 8
buildTests
flock -u 8
if [ $tests_only -eq 0 ]; then
  exec 9>"$cache/.build-$variant.lock"
  flock -x 9
  buildKernel
fi
result
