// fanout-source: the client of the fan-out benchmark (bench/fanout/README.md).
//
//   fanout-source PORT BYTES [WRITE_SIZE]
//
// Connects to 127.0.0.1:PORT, sends BYTES bytes as fast as the relay takes them (blocking
// send() of WRITE_SIZE bytes at a time, default 256 KiB, from a buffer with a pattern),
// half-closes, reads until the relay closes (discarding anything it sends back) and
// prints one line:
//
//   START_NS END_NS SENT RECEIVED CPU_NS
//
// (START_NS, END_NS: CLOCK_MONOTONIC before connect and at EOF; CPU_NS: this process's CPU
// time, CLOCK_PROCESS_CPUTIME_ID.)
//
// Exit 0 when everything was sent and the relay closed cleanly, 1 otherwise.
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t nowNs(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: fanout-source PORT BYTES [WRITE_SIZE]\n");
    return 2;
  }
  int port = atoi(argv[1]);
  uint64_t total = strtoull(argv[2], NULL, 10);
  size_t writeSize = argc > 3 ? strtoul(argv[3], NULL, 10) : 256 * 1024;
  char* buf = malloc(writeSize);
  if (buf == NULL || writeSize == 0) {
    fprintf(stderr, "fanout-source: bad write size\n");
    return 2;
  }
  for (size_t i = 0; i < writeSize; ++i) {
    buf[i] = (char)('a' + i % 26);
  }

  uint64_t start = nowNs();
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, (struct sockaddr*)&a, sizeof(a)) < 0) {
    fprintf(stderr, "fanout-source: connect to port %d: %s\n", port, strerror(errno));
    return 1;
  }
  uint64_t sent = 0;
  while (sent < total) {
    size_t n = total - sent < writeSize ? (size_t)(total - sent) : writeSize;
    ssize_t r = send(fd, buf, n, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) {
        continue;
      }
      fprintf(stderr, "fanout-source: send after %llu bytes: %s\n", (unsigned long long)sent,
              strerror(errno));
      return 1;
    }
    sent += (uint64_t)r;
  }
  shutdown(fd, SHUT_WR);
  uint64_t received = 0;
  int rc = 0;
  for (;;) {
    ssize_t r = recv(fd, buf, writeSize, 0);
    if (r > 0) {
      received += (uint64_t)r;
      continue;
    }
    if (r < 0 && errno == EINTR) {
      continue;
    }
    if (r < 0) {
      fprintf(stderr, "fanout-source: receive: %s\n", strerror(errno));
      rc = 1;
    }
    break;
  }
  uint64_t end = nowNs();
  struct timespec cpu;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu);
  printf("%llu %llu %llu %llu %llu\n", (unsigned long long)start, (unsigned long long)end,
         (unsigned long long)sent, (unsigned long long)received,
         (unsigned long long)cpu.tv_sec * 1000000000ull + (unsigned long long)cpu.tv_nsec);
  return rc;
}
