// fanout-sink: the targets of the fan-out benchmark (bench/fanout/README.md).
//
//   fanout-sink PORT...
//
// Listens on 127.0.0.1:PORT for each PORT and discards whatever its connections send,
// without copying it (recv with MSG_TRUNC: TCP drops the bytes in the kernel), so the
// sinks cost as little as possible next to the relay under test. One thread, epoll.
// Prints "ready" once listening, then one line per connection when it ends:
//
//   PORT BYTES END_NS            (END_NS: CLOCK_MONOTONIC when EOF was read)
//   PORT BYTES END_NS error ERRNO
//
// A connection is closed at EOF (which ends the relay's upstream side, so the relay
// closes the client). Runs until killed.
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PORTS 16
#define DISCARD (1 << 20)

struct conn {
  int fd;
  int port;
  uint64_t bytes;
};

static uint64_t nowNs(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char* what) {
  fprintf(stderr, "fanout-sink: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void finish(int ep, struct conn* c, int err) {
  if (err != 0) {
    printf("%d %llu %llu error %d\n", c->port, (unsigned long long)c->bytes,
           (unsigned long long)nowNs(), err);
  } else {
    printf("%d %llu %llu\n", c->port, (unsigned long long)c->bytes, (unsigned long long)nowNs());
  }
  fflush(stdout);
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  free(c);
}

int main(int argc, char** argv) {
  if (argc < 2 || argc - 1 > MAX_PORTS) {
    fprintf(stderr, "usage: fanout-sink PORT... (at most %d)\n", MAX_PORTS);
    return 2;
  }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) {
    die("epoll_create1");
  }
  // Listening sockets are tagged by a small pointer value (index + 1), connections by
  // their struct conn.
  int listeners[MAX_PORTS];
  int ports[MAX_PORTS];
  int n = argc - 1;
  for (int i = 0; i < n; ++i) {
    ports[i] = atoi(argv[i + 1]);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      die("socket");
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)ports[i])};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr*)&a, sizeof(a)) < 0 || listen(fd, 128) < 0) {
      die(argv[i + 1]);
    }
    listeners[i] = fd;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i + 1};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
      die("epoll_ctl");
    }
  }
  char* discard = malloc(DISCARD);
  if (discard == NULL) {
    die("malloc");
  }
  printf("ready\n");
  fflush(stdout);

  struct epoll_event events[64];
  for (;;) {
    int k = epoll_wait(ep, events, 64, -1);
    if (k < 0) {
      if (errno == EINTR) {
        continue;
      }
      die("epoll_wait");
    }
    for (int e = 0; e < k; ++e) {
      uint64_t tag = events[e].data.u64;
      if (tag <= (uint64_t)n) {
        int i = (int)tag - 1;
        for (;;) {
          int fd = accept4(listeners[i], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd < 0) {
            break;
          }
          struct conn* c = calloc(1, sizeof(*c));
          if (c == NULL) {
            die("calloc");
          }
          c->fd = fd;
          c->port = ports[i];
          struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
          if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            die("epoll_ctl");
          }
        }
        continue;
      }
      struct conn* c = events[e].data.ptr;
      for (;;) {
        ssize_t r = recv(c->fd, discard, DISCARD, MSG_TRUNC | MSG_DONTWAIT);
        if (r > 0) {
          c->bytes += (uint64_t)r;
          continue;
        }
        if (r == 0) {
          finish(ep, c, 0);
        } else if (errno == EINTR) {
          continue;
        } else if (errno != EAGAIN) {
          finish(ep, c, errno);
        }
        break;
      }
    }
  }
}
