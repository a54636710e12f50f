// fanout-relay: the reference relays of the fan-out benchmark (bench/fanout/README.md).
//
//   fanout-relay splice|copy LISTEN_PORT CHUNK TAP_FILE TARGET_PORT...
//
// Serves one client connection at a time on 127.0.0.1:LISTEN_PORT: connects to every
// 127.0.0.1:TARGET_PORT (the first is the primary, the others mirrors), relays what the
// client sends to all of them and writes it to the file TAP_FILE.N (N = 0, 1, ... per
// connection; "-" = no tap), CHUNK bytes at most per step, blocking, one thread:
//
//   splice  the kernel's existing zero-copy fan-out: splice(client -> pipe) moves up to
//           CHUNK bytes (page references, no copy); tee(2) duplicates them into one more
//           pipe per extra target and one for the tap (references again); splice(pipe ->
//           socket) hands the pages to each target, splice(pipe -> file) writes the tap.
//   copy    read(2) into a user buffer, write(2) it to every target and to the tap.
//
// At the client's EOF it half-closes the targets, waits for the primary to close (what
// it sends back is discarded), then closes the client. Nothing is rate limited or
// re-ordered: a slow target slows every other one (the relay the issue compares against,
// not a mirror that may be cut). Exit on any error, with a message.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_TARGETS 8
#define PIPE_BYTES (1 << 20)  // room for a whole chunk whatever its skb layout

static void die(const char* what) {
  fprintf(stderr, "fanout-relay: %s: %s\n", what, strerror(errno));
  exit(1);
}

static int connectTo(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, (struct sockaddr*)&a, sizeof(a)) < 0) {
    die("connect to a target");
  }
  return fd;
}

static void makePipe(int p[2]) {
  if (pipe2(p, O_CLOEXEC) < 0) {
    die("pipe2");
  }
  if (fcntl(p[1], F_SETPIPE_SZ, PIPE_BYTES) < 0) {
    die("F_SETPIPE_SZ");
  }
}

// Moves exactly n bytes out of pipe `from` into fd `to`.
static void drain(int from, int to, size_t n) {
  while (n > 0) {
    ssize_t r = splice(from, NULL, to, NULL, n, SPLICE_F_MOVE);
    if (r < 0 && errno == EINTR) {
      continue;
    }
    if (r <= 0) {
      die("splice to a target");
    }
    n -= (size_t)r;
  }
}

static void writeAll(int fd, const char* buf, size_t n) {
  while (n > 0) {
    ssize_t r = write(fd, buf, n);
    if (r < 0 && errno == EINTR) {
      continue;
    }
    if (r <= 0) {
      die("write to a target");
    }
    buf += r;
    n -= (size_t)r;
  }
}

struct relay {
  int splice;
  size_t chunk;
  const char* tapPath;
  int targets[MAX_TARGETS];
  int ntargets;
  int tap;
  int pipes[MAX_TARGETS + 1][2];  // [0]: what the client sent; [i]: target i; [n]: the tap
  char* buf;
};

static void relaySplice(struct relay* r, int client) {
  int* in = r->pipes[0];
  int copies = r->ntargets - 1 + (r->tap >= 0 ? 1 : 0);
  for (;;) {
    ssize_t got = splice(client, NULL, in[1], NULL, r->chunk, SPLICE_F_MOVE);
    if (got < 0 && errno == EINTR) {
      continue;
    }
    if (got < 0) {
      die("splice from the client");
    }
    if (got == 0) {
      return;
    }
    // Every extra pipe is empty here and as large as the first: tee takes it all at once.
    for (int i = 1; i <= copies; ++i) {
      ssize_t t = tee(in[0], r->pipes[i][1], (size_t)got, 0);
      if (t != got) {
        die("tee");
      }
    }
    drain(in[0], r->targets[0], (size_t)got);
    for (int i = 1; i < r->ntargets; ++i) {
      drain(r->pipes[i][0], r->targets[i], (size_t)got);
    }
    if (r->tap >= 0) {
      drain(r->pipes[copies][0], r->tap, (size_t)got);
    }
  }
}

static void relayCopy(struct relay* r, int client) {
  for (;;) {
    ssize_t got = read(client, r->buf, r->chunk);
    if (got < 0 && errno == EINTR) {
      continue;
    }
    if (got < 0) {
      die("read from the client");
    }
    if (got == 0) {
      return;
    }
    for (int i = 0; i < r->ntargets; ++i) {
      writeAll(r->targets[i], r->buf, (size_t)got);
    }
    if (r->tap >= 0) {
      writeAll(r->tap, r->buf, (size_t)got);
    }
  }
}

int main(int argc, char** argv) {
  if (argc < 6 || argc - 5 > MAX_TARGETS ||
      (strcmp(argv[1], "splice") != 0 && strcmp(argv[1], "copy") != 0)) {
    fprintf(stderr,
            "usage: fanout-relay splice|copy LISTEN_PORT CHUNK TAP_FILE|- TARGET_PORT...\n");
    return 2;
  }
  struct relay r = {0};
  r.splice = strcmp(argv[1], "splice") == 0;
  int port = atoi(argv[2]);
  r.chunk = strtoul(argv[3], NULL, 10);
  r.tapPath = strcmp(argv[4], "-") == 0 ? NULL : argv[4];
  r.ntargets = argc - 5;
  int ports[MAX_TARGETS];
  for (int i = 0; i < r.ntargets; ++i) {
    ports[i] = atoi(argv[5 + i]);
  }
  if (r.chunk == 0 || r.chunk > PIPE_BYTES) {
    fprintf(stderr, "fanout-relay: CHUNK must be 1..%d\n", PIPE_BYTES);
    return 2;
  }
  r.buf = aligned_alloc(4096, (r.chunk + 4095) / 4096 * 4096);
  if (r.buf == NULL) {
    die("aligned_alloc");
  }
  if (r.splice) {
    for (int i = 0; i < r.ntargets + 1; ++i) {
      makePipe(r.pipes[i]);
    }
  }

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (lfd < 0 || bind(lfd, (struct sockaddr*)&a, sizeof(a)) < 0 || listen(lfd, 16) < 0) {
    die("listen");
  }
  unsigned connections = 0;
  for (;;) {
    int client = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (client < 0) {
      if (errno == EINTR) {
        continue;
      }
      die("accept");
    }
    for (int i = 0; i < r.ntargets; ++i) {
      r.targets[i] = connectTo(ports[i]);
    }
    r.tap = -1;
    if (r.tapPath != NULL) {
      char path[4096];
      snprintf(path, sizeof(path), "%s.%u", r.tapPath, connections++);
      r.tap = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (r.tap < 0) {
        die(path);
      }
    }
    if (r.splice) {
      relaySplice(&r, client);
    } else {
      relayCopy(&r, client);
    }
    for (int i = 0; i < r.ntargets; ++i) {
      shutdown(r.targets[i], SHUT_WR);
    }
    // The primary closes once it has everything: then the client may learn it is done.
    while (read(r.targets[0], r.buf, r.chunk) > 0) {
    }
    for (int i = 0; i < r.ntargets; ++i) {
      close(r.targets[i]);
    }
    if (r.tap >= 0) {
      close(r.tap);
    }
    close(client);
  }
}
