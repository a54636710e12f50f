#!/usr/bin/env bash
# Runs a command inside a qemu VM booted on grelay's patched kernel (kernel/build.sh).
#
#   kernel/vm.sh [--debug] [--timeout SECS] [--share DIR]... [--env NAME=VALUE]...
#                [--no-hostroot] [--mem SIZE] [--keep-logs] [--kernel BZIMAGE]
#                [--append KERNEL-ARGS] -- COMMAND [ARG...]
#
# The VM (qemu-system-x86_64 -accel tcg -smp 2 -m 4G) sees the host's root filesystem
# read-only through virtio-9p, under a tmpfs overlay (writable, discarded at exit), and runs
# COMMAND chrooted into it, in the same working directory, so the project's binaries and
# the host's tools run unchanged. /proc, /sys, /dev (+ /dev/shm) are mounted, loopback is
# up; /tmp is the host's, through the overlay. --share DIR mounts the host's DIR read-write
# at the same path, so writes there reach the host. --no-hostroot runs COMMAND in the
# initramfs instead (busybox, and the uapi tests in /grelay/tests).
#
# Environment passed to COMMAND: PATH, HOME, LANG, LC_*, TZ, TERM, ASAN_OPTIONS,
# UBSAN_OPTIONS, LSAN_OPTIONS, anything prefixed GRELAY_, and each --env NAME=VALUE.
#
# Output and exit code (the contract other tests rely on):
#   - COMMAND's stdout on stdout, its stderr on stderr (streamed), no kernel messages.
#   - exit code: COMMAND's; 123 if COMMAND exited 0 but the kernel logged a problem
#     (BUG/WARNING/KASAN/lockdep/... splat, or in --debug a kmemleak report), printed on
#     stderr; 125 if the VM failed: no boot, kernel panic, or timeout (default 900 s).
#   - on 123/125 (or with --keep-logs) the run directory is kept and its path printed:
#     console.log (serial console), dmesg, kmemleak.
# --debug boots the debug kernel (KASAN, kmemleak, lockdep); debugfs is mounted, and after
# COMMAND kmemleak is scanned and any leak fails the run. --kernel boots BZIMAGE (from an
# out-of-tree build dir, e.g. while developing the series) instead of building one;
# GRELAY_VM_KERNEL=BZIMAGE does the same for scripts that call vm.sh (bench/fanout/run.sh).
# --append adds kernel command line arguments (e.g. "loglevel=7" to see the boot).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${GRELAY_KERNEL_CACHE:-/var/cache/grelay/kernel}

debug=0
timeout=900
hostroot=1
mem=4G
keep=0
kernel=${GRELAY_VM_KERNEL:+$(readlink -f "$GRELAY_VM_KERNEL")}
append=
shares=()
envs=()
usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) debug=1 ;;
    --timeout) timeout=$2; shift ;;
    --share) shares+=("$(cd "$2" && pwd)"); shift ;;
    --env) envs+=("$2"); shift ;;
    --no-hostroot) hostroot=0 ;;
    --mem) mem=$2; shift ;;
    --keep-logs) keep=1 ;;
    --kernel) kernel=$(readlink -f "$2"); shift ;;
    --append) append="$append $2"; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "vm.sh: unknown argument '$1' (the command goes after --)" >&2; exit 2 ;;
  esac
  shift
done
[ $# -gt 0 ] || usage

vmfail() { echo "vm.sh: $*" >&2; exit 125; }

buildArgs=()
[ $debug -eq 1 ] && buildArgs+=(--debug)
if [ -n "$kernel" ]; then
  "$here/build.sh" --tests-only >/dev/null || vmfail "building the uapi tests failed"
  bzImage=$kernel
else
  bzImage=$("$here/build.sh" "${buildArgs[@]}") || vmfail "kernel build failed"
fi

# --- initramfs: busybox, /init, the uapi tests ---------------------------------------------
busybox=/bin/busybox
[ -x "$busybox" ] || vmfail "$busybox not found (package busybox-static)"
if readelf -l "$busybox" 2>/dev/null | grep -q INTERP; then
  vmfail "$busybox is not statically linked (install busybox-static)"
fi
gen=$(dirname "$bzImage")/../../../usr/gen_init_cpio
[ -x "$gen" ] || vmfail "$gen missing (kernel build incomplete?)"
tests=$cache/tests
initrdKey=$(cat "$busybox" "$here/vm/init" "$tests/.grelay-stamp" | sha256sum | cut -c1-16)
initrd=$cache/initramfs-$initrdKey.cpio.gz
if [ ! -f "$initrd" ]; then
  spec=$(mktemp)
  {
    echo "dir /bin 0755 0 0"
    echo "dir /dev 0755 0 0"
    echo "nod /dev/console 0600 0 0 c 5 1"
    echo "nod /dev/null 0666 0 0 c 1 3"
    echo "dir /proc 0755 0 0"
    echo "dir /sys 0755 0 0"
    echo "dir /tmp 1777 0 0"
    echo "dir /run 0755 0 0"
    echo "dir /mnt 0755 0 0"
    echo "file /bin/busybox $busybox 0755 0 0"
    echo "slink /bin/sh busybox 0777 0 0"
    echo "file /init $here/vm/init 0755 0 0"
    echo "dir /grelay 0755 0 0"
    echo "dir /grelay/tests 0755 0 0"
    for t in "$tests"/*_test; do
      [ -x "$t" ] && echo "file /grelay/tests/$(basename "$t") $t 0755 0 0"
    done
  } > "$spec"
  # concurrent runs may build the same one: write a private file, rename it in place
  tmp=$(mktemp "$initrd.XXXXXX")
  "$gen" "$spec" | gzip -1 > "$tmp"
  rm -f "$spec"
  mv -f "$tmp" "$initrd"
  # initramfs images nobody used for a day
  find "$cache" -maxdepth 1 -name 'initramfs-*.cpio.gz' -mmin +1440 -delete 2>/dev/null || true
fi
touch "$initrd"

# --- the run directory: settings and the command --------------------------------------------
mkdir -p "$cache/runs"
rundir=$(mktemp -d "$cache/runs/run.XXXXXX")
share=$rundir/share
mkdir -p "$share"
q() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }
{
  echo "vm_debug=$debug"
  echo "vm_hostroot=$hostroot"
} > "$share/vm.conf"
: > "$share/shares"
i=0
for d in "${shares[@]}"; do
  i=$((i + 1))
  printf 'share%d %s\n' "$i" "$d" >> "$share/shares"
done
{
  echo "# generated by kernel/vm.sh"
  for name in $(compgen -e); do
    case "$name" in
      PATH|HOME|LANG|LC_*|TZ|TERM|ASAN_OPTIONS|UBSAN_OPTIONS|LSAN_OPTIONS|GRELAY_*)
        echo "export $name=$(q "${!name}")" ;;
    esac
  done
  for e in "${envs[@]}"; do
    echo "export ${e%%=*}=$(q "${e#*=}")"
  done
  echo "export GRELAY_IN_VM=1"
  if [ $hostroot -eq 1 ]; then
    echo "cd $(q "$PWD") || { echo \"vm.sh: no directory $(q "$PWD") in the VM\" >&2; exit 125; }"
  else
    echo "export PATH=/grelay/tests:/bin"
    echo "cd /tmp"
  fi
  printf 'exec'
  for a in "$@"; do printf ' %s' "$(q "$a")"; done
  echo
} > "$share/cmd.sh"
: > "$share/stdout"
: > "$share/stderr"

# --- boot -------------------------------------------------------------------------------------
# The debug kernel (KASAN, lockdep) interprets ACPI's AML so slowly under TCG that the PCI
# interrupt routing times out: it boots without ACPI (the BIOS' MP and PIRQ tables do).
cmdline="console=ttyS0 quiet panic=-1 oops=panic rcupdate.rcu_cpu_stall_timeout=120"
[ $debug -eq 1 ] && cmdline+=" acpi=off"
cmdline+=$append
qemu=(qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m "$mem" -nographic -no-reboot
  -monitor none -serial "file:$rundir/console.log" -nic none
  -kernel "$bzImage" -initrd "$initrd"
  -append "$cmdline"
  -virtfs "local,path=$share,mount_tag=grelayrun,security_model=none,multidevs=remap")
if [ $hostroot -eq 1 ]; then
  qemu+=(-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
fi
i=0
for d in "${shares[@]}"; do
  i=$((i + 1))
  qemu+=(-virtfs "local,path=$d,mount_tag=share$i,security_model=none,multidevs=remap")
done

timeout -k 10 "$timeout" "${qemu[@]}" < /dev/null > "$rundir/qemu.log" 2>&1 &
qpid=$!
tail -s 0.2 -n +1 -f --pid=$qpid "$share/stdout" &
t1=$!
tail -s 0.2 -n +1 -f --pid=$qpid "$share/stderr" >&2 &
t2=$!
trap 'kill $qpid $t1 $t2 2>/dev/null; exit 130' INT TERM
qrc=0
wait $qpid || qrc=$?
wait $t1 $t2 2>/dev/null || true
trap - INT TERM

# --- verdict -----------------------------------------------------------------------------------
keepLogs() {
  echo "vm.sh: logs kept in $rundir (console.log: serial console; share/dmesg, share/kmemleak)" >&2
}
console=$rundir/console.log
if [ ! -f "$share/rc" ]; then
  if [ $qrc -eq 124 ] || [ $qrc -eq 137 ]; then
    echo "vm.sh: timeout: the VM did not finish within $timeout s" >&2
  elif grep -q 'Kernel panic' "$console" 2>/dev/null; then
    echo "vm.sh: kernel panic:" >&2
    grep -B30 -A5 'Kernel panic' "$console" | head -80 >&2
  else
    echo "vm.sh: the VM exited without running the command to the end (qemu exit $qrc)" >&2
    tail -20 "$console" >&2 2>/dev/null || true
    tail -5 "$rundir/qemu.log" >&2 2>/dev/null || true
  fi
  keepLogs
  exit 125
fi
rc=$(cat "$share/rc")
if [ ! -f "$share/done" ]; then
  echo "vm.sh: the kernel died after the command (exit $rc):" >&2
  grep -B30 -A5 'Kernel panic' "$console" | head -80 >&2 || tail -30 "$console" >&2
  keepLogs
  exit 125
fi

problems=0
splats='BUG:|WARNING:|Oops|general protection fault|Kernel panic|UBSAN:|KASAN|'
splats+='possible circular locking|inconsistent lock state|possible recursive locking|'
splats+='list_add corruption|list_del corruption|refcount_t:|rcu.*stall|INFO: task .* blocked'
if grep -Eq "$splats" "$share/dmesg"; then
  echo "vm.sh: the kernel logged problems while the command ran:" >&2
  grep -E -A25 "$splats" "$share/dmesg" | head -150 >&2
  problems=1
fi
if [ $debug -eq 1 ] && [ -s "$share/kmemleak" ]; then
  echo "vm.sh: kmemleak found leaks:" >&2
  head -100 "$share/kmemleak" >&2
  problems=1
fi
if [ $problems -eq 1 ]; then
  keepLogs
  [ "$rc" -eq 0 ] && exit 123
  exit "$rc"
fi
if [ $keep -eq 1 ]; then
  keepLogs
else
  rm -rf "$rundir"
fi
exit "$rc"
