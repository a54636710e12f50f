#!/usr/bin/env bash
# Every C++ source and header of grelay (and its tests) is formatted as the root
# .clang-format says. Exit 77 (skipped) without clang-format.
set -uo pipefail
root=${1:?usage: check_format.sh REPO_ROOT}
command -v clang-format >/dev/null || { echo "clang-format not installed"; exit 77; }
cd "$root" || exit 1
mapfile -t files < <(find config metrics proxy relay tests -name '*.cc' -o -name '*.h' | sort)
if clang-format --dry-run -Werror "${files[@]}"; then
  echo "${#files[@]} files formatted as .clang-format says"
else
  echo "run: clang-format -i \$(find config metrics proxy relay tests -name '*.cc' -o -name '*.h')"
  exit 1
fi
