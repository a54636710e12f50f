#!/usr/bin/env bash
# Edit kernel/patches as git commits.
#
#   kernel/series.sh import DIR   DIR becomes a git repository: Debian's linux-source-6.12
#                                 as one commit (tag "pristine"), the series on top (git am),
#                                 and the cover letter in the branch description.
#   kernel/series.sh export DIR   Writes DIR's commits after "pristine" back to kernel/patches
#                                 (git format-patch --cover-letter), with the branch
#                                 description as the cover letter.
#
# In between, change the commits as usual (git rebase -i, git commit --fixup, ...) and
# build with `make O=...` in DIR, or check each patch from outside any git work tree (inside
# one, checkpatch reads the patch files as a diff of that tree), e.g. in DIR:
#   scripts/checkpatch.pl --strict --no-tree /path/to/kernel/patches/000[1-9]-*.patch
# DIR should live outside the repository (e.g. /var/cache/grelay/kernel/dev).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tarball=${GRELAY_KERNEL_TARBALL:-/usr/src/linux-source-6.12.tar.xz}
patches=$here/patches

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$2

git_() { git -C "$dir" "$@"; }

case "$cmd" in
  import)
    [ ! -e "$dir" ] || { echo "series.sh: $dir exists" >&2; exit 1; }
    mkdir -p "$dir"
    tar -xf "$tarball" -C "$dir" --strip-components=1
    git_ init -q
    git_ config user.name >/dev/null || git_ config user.name "grelay"
    git_ config user.email >/dev/null || git_ config user.email "grelay@localhost"
    # Debian's .gitignore ignores the whole top level: track everything regardless.
    git_ add -f -A
    git_ commit -q -m "linux-source-6.12 $(make -s -C "$dir" kernelversion) (Debian), pristine"
    git_ tag pristine
    for p in "$patches"/[0-9][0-9][0-9][0-9]-*.patch; do
      case "$(basename "$p")" in 0000-*) continue ;; esac
      git_ am -q --keep-cr "$p"
    done
    # The cover letter's text (between its headers and the shortlog) becomes the branch
    # description; its subject without "[PATCH 0/N] " the first line.
    cover=$patches/0000-cover-letter.patch
    if [ -f "$cover" ]; then
      branch=$(git_ symbolic-ref --short HEAD)
      desc=$(awk '
        /^Subject: / && !subj { sub(/^Subject: (\[[^]]*\] )?/, ""); subj = $0; next }
        subj && !body && /^ / { sub(/^ /, ""); subj = subj " " $0; next }
        subj && !body && /^$/ { body = 1; print subj; print ""; next }
        body && /^[^ ].* \([0-9]+\):$/ { exit }
        body { print }' "$cover")
      git_ config "branch.$branch.description" "$desc"
    fi
    echo "series.sh: $dir: $(git_ rev-list --count pristine..HEAD) patches on top of 'pristine'"
    ;;
  export)
    git_ rev-parse -q --verify pristine >/dev/null || { echo "series.sh: no 'pristine' tag in $dir" >&2; exit 1; }
    rm -f "$patches"/[0-9][0-9][0-9][0-9]-*.patch
    git_ format-patch -q --cover-letter --cover-from-description=subject --no-signature \
      -o "$patches" pristine..HEAD
    # Trailing blank lines of the description end up in the cover letter as well.
    ls "$patches"
    ;;
  *) usage ;;
esac
