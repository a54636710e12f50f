// no_uring: runs a command with io_uring unavailable, the way a container runtime's
// seccomp profile makes it unavailable, so tests can check how grelay reports it.
//
//   no_uring eperm  COMMAND [ARG...]    io_uring_setup/enter/register fail with EPERM
//   no_uring enosys COMMAND [ARG...]    ... with ENOSYS (as on a kernel without io_uring)
//   no_uring nosplice COMMAND [ARG...]  io_uring works, splice(2) fails with EPERM (a
//                                       profile that allows io_uring but not splice)
//
// Installs a classic-BPF seccomp filter (after PR_SET_NO_NEW_PRIVS, so no privilege is
// needed): a foreign architecture is killed, the chosen syscalls return the chosen errno,
// everything else is allowed. Then execs COMMAND (the filter is inherited).
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#elif defined(__riscv) && __riscv_xlen == 64
#define NATIVE_ARCH AUDIT_ARCH_RISCV64
#else
#error "no_uring: add this architecture's AUDIT_ARCH_* value"
#endif

// The io_uring syscalls share their numbers on every architecture (since Linux 5.1).
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif

#define MAX_REFUSED 3

// Refuses the `count` syscalls in `nrs` with `err`: a foreign architecture is killed, the
// listed syscalls fail, everything else is allowed.
static int refuse(const unsigned int* nrs, unsigned int count, unsigned int err) {
  struct sock_filter code[4 + MAX_REFUSED + 2] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_ARCH, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
  };
  unsigned int n = 4, i;
  struct sock_fprog prog;

  if (count > MAX_REFUSED) {
    fprintf(stderr, "no_uring: at most %d syscalls\n", MAX_REFUSED);
    return -1;
  }

  for (i = 0; i < count; i++) {
    // A match jumps over the remaining tests and the ALLOW, to the ERRNO return.
    code[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nrs[i],
                                             (unsigned char)(count - i), 0);
  }
  code[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  code[n++] =
      (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA));
  prog.len = (unsigned short)n;
  prog.filter = code;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    perror("no_uring: prctl(PR_SET_NO_NEW_PRIVS)");
    return -1;
  }
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
    perror("no_uring: seccomp(SECCOMP_SET_MODE_FILTER)");
    return -1;
  }
  return 0;
}

int main(int argc, char** argv) {
  static const unsigned int uring[] = {__NR_io_uring_setup, __NR_io_uring_enter,
                                       __NR_io_uring_register};
  static const unsigned int splice[] = {__NR_splice};
  int ret;

  if (argc < 3 || (strcmp(argv[1], "eperm") != 0 && strcmp(argv[1], "enosys") != 0 &&
                   strcmp(argv[1], "nosplice") != 0)) {
    fprintf(stderr, "usage: no_uring eperm|enosys|nosplice COMMAND [ARG...]\n");
    return 125;
  }
  if (strcmp(argv[1], "nosplice") == 0) {
    ret = refuse(splice, 1, EPERM);
  } else {
    ret = refuse(uring, 3, strcmp(argv[1], "eperm") == 0 ? EPERM : ENOSYS);
  }
  if (ret != 0) {
    return 125;
  }
  execvp(argv[2], argv + 2);
  fprintf(stderr, "no_uring: cannot run %s: %s\n", argv[2], strerror(errno));
  return 127;
}
