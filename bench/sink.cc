// bench-sink: the benchmark's mirror sinks. One thread, epoll, level-triggered.
//
//   bench-sink MODE PORT [BATCH_US]   MODE = discard | http204 | stall; PORT 0 = any free port
//
//   discard  reads everything and throws it away (counting request heads, "\r\n\r\n")
//   http204  reads everything and answers every request head ("\r\n\r\n", so GET-style
//            requests without a body) with "204 No Content", keep-alive: what nginx's
//            mirror module needs from a mirror, usable by grelay's mirrors too
//   stall    accepts and never reads (receive buffer 4 KiB): a mirror that hangs
//
// BATCH_US > 0 (discard only): after handling a round of events, sleep that long before
// waiting again, so each wakeup drains several requests per connection — how a collector
// that batches behaves, and far less CPU than one wakeup per mirrored request on a small
// machine shared with the proxy under test.
//
// Prints "listening 127.0.0.1:PORT" once ready; on SIGUSR1 prints
// "stats connections=N bytes=N requests=N"; exits 0 on SIGTERM/SIGINT.
//
// Build: g++ -O2 -std=c++20 -o bench-sink bench/sink.cc

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

enum class Mode { Discard, Http204, Stall };

constexpr char kResponse[] = "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n";
constexpr size_t kResponseLen = sizeof(kResponse) - 1;
constexpr size_t kBatch = 256;  // responses per write at most

struct Connection {
  int state = 0;       // progress through "\r\n\r\n"
  uint64_t owed = 0;   // responses not yet fully written
  size_t written = 0;  // bytes of the first owed response already written
  bool wantWrite = false;
};

struct Stats {
  uint64_t connections = 0;
  uint64_t bytes = 0;
  uint64_t requests = 0;
};

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "bench-sink: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

// Counts request heads ("\r\n\r\n") in data, carrying the match state across reads.
uint64_t countHeads(Connection& c, const char* data, size_t n) {
  uint64_t heads = 0;
  int s = c.state;
  for (size_t i = 0; i < n; ++i) {
    const char ch = data[i];
    if (ch == '\r') {
      s = (s == 2) ? 3 : 1;
    } else if (ch == '\n' && (s == 1 || s == 3)) {
      if (s == 3) {
        ++heads;
        s = 0;
      } else {
        s = 2;
      }
    } else {
      s = 0;
    }
  }
  c.state = s;
  return heads;
}

class Sink {
public:
  Sink(Mode mode, int port, long batchMicros) : mode_(mode), batchMicros_(batchMicros) {
    listenFd_ = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listenFd_ < 0)
      die("socket");
    int one = 1;
    setsockopt(listenFd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (mode_ == Mode::Stall) {
      int small = 4096;  // inherited by accepted sockets: the window closes quickly
      setsockopt(listenFd_, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listenFd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0)
      die("bind");
    if (listen(listenFd_, 4096) < 0)
      die("listen");
    socklen_t len = sizeof(addr);
    getsockname(listenFd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGUSR1);
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    signalFd_ = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (signalFd_ < 0)
      die("signalfd");

    epollFd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epollFd_ < 0)
      die("epoll_create1");
    add(listenFd_, EPOLLIN);
    add(signalFd_, EPOLLIN);
    responses_.reserve(kBatch * kResponseLen);
    for (size_t i = 0; i < kBatch; ++i)
      responses_.append(kResponse, kResponseLen);
  }

  int run() {
    std::printf("listening 127.0.0.1:%d\n", port_);
    std::fflush(stdout);
    std::vector<epoll_event> events(256);
    for (;;) {
      const int n = epoll_wait(epollFd_, events.data(), static_cast<int>(events.size()), -1);
      if (n < 0) {
        if (errno == EINTR)
          continue;
        die("epoll_wait");
      }
      for (int i = 0; i < n; ++i) {
        const int fd = events[i].data.fd;
        if (fd == listenFd_) {
          acceptAll();
        } else if (fd == signalFd_) {
          if (!onSignal())
            return 0;
        } else {
          onConnection(fd, events[i].events);
        }
      }
      if (batchMicros_ > 0 && mode_ == Mode::Discard) {
        timespec ts{batchMicros_ / 1000000, (batchMicros_ % 1000000) * 1000};
        nanosleep(&ts, nullptr);
      }
    }
  }

private:
  void add(int fd, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    if (epoll_ctl(epollFd_, EPOLL_CTL_ADD, fd, &ev) < 0)
      die("epoll_ctl");
  }

  void modify(int fd, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    epoll_ctl(epollFd_, EPOLL_CTL_MOD, fd, &ev);
  }

  void acceptAll() {
    for (;;) {
      const int fd = accept4(listenFd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0)
        return;  // EAGAIN, or a transient error: epoll reports again
      ++stats_.connections;
      if (mode_ == Mode::Stall) {
        stalled_.push_back(fd);  // held open, never read
        continue;
      }
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      connections_[fd] = Connection{};
      add(fd, EPOLLIN | EPOLLRDHUP);
    }
  }

  bool onSignal() {
    signalfd_siginfo info;
    bool keepRunning = true;
    while (read(signalFd_, &info, sizeof(info)) == sizeof(info)) {
      if (info.ssi_signo == SIGUSR1) {
        std::printf("stats connections=%llu bytes=%llu requests=%llu\n",
                    static_cast<unsigned long long>(stats_.connections),
                    static_cast<unsigned long long>(stats_.bytes),
                    static_cast<unsigned long long>(stats_.requests));
        std::fflush(stdout);
      } else {
        keepRunning = false;
      }
    }
    return keepRunning;
  }

  void close(int fd) {
    epoll_ctl(epollFd_, EPOLL_CTL_DEL, fd, nullptr);
    ::close(fd);
    connections_.erase(fd);
  }

  void onConnection(int fd, uint32_t events) {
    auto it = connections_.find(fd);
    if (it == connections_.end())
      return;
    Connection& c = it->second;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
      for (;;) {
        const ssize_t got = read(fd, buffer_, sizeof(buffer_));
        if (got > 0) {
          stats_.bytes += static_cast<uint64_t>(got);
          const uint64_t heads = countHeads(c, buffer_, static_cast<size_t>(got));
          stats_.requests += heads;
          if (mode_ == Mode::Http204) {
            c.owed += heads;
          }
          if (static_cast<size_t>(got) < sizeof(buffer_))
            break;
          continue;
        }
        if (got < 0 && (errno == EAGAIN || errno == EINTR))
          break;
        close(fd);  // EOF or error
        return;
      }
    }
    if (c.owed > 0 && !flush(fd, c)) {
      close(fd);
      return;
    }
    const bool wantWrite = c.owed > 0;
    if (wantWrite != c.wantWrite) {
      c.wantWrite = wantWrite;
      modify(fd, EPOLLIN | EPOLLRDHUP | (wantWrite ? EPOLLOUT : 0u));
    }
  }

  // Writes owed responses until done or the socket is full; false on a write error.
  bool flush(int fd, Connection& c) {
    while (c.owed > 0) {
      const uint64_t batch = c.owed < kBatch ? c.owed : kBatch;
      const size_t len = static_cast<size_t>(batch) * kResponseLen - c.written;
      const ssize_t put = write(fd, responses_.data() + c.written, len);
      if (put < 0)
        return errno == EAGAIN || errno == EINTR;
      const size_t total = c.written + static_cast<size_t>(put);
      c.owed -= total / kResponseLen;
      c.written = total % kResponseLen;
      if (static_cast<size_t>(put) < len)
        return true;
    }
    return true;
  }

  Mode mode_;
  long batchMicros_ = 0;
  int port_ = 0;
  int listenFd_ = -1;
  int signalFd_ = -1;
  int epollFd_ = -1;
  Stats stats_;
  std::unordered_map<int, Connection> connections_;
  std::vector<int> stalled_;
  std::string responses_;
  char buffer_[256 * 1024];
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 && argc != 4) {
    std::fprintf(stderr, "usage: bench-sink discard|http204|stall PORT [BATCH_US]\n");
    return 2;
  }
  const std::string m = argv[1];
  Mode mode;
  if (m == "discard") {
    mode = Mode::Discard;
  } else if (m == "http204") {
    mode = Mode::Http204;
  } else if (m == "stall") {
    mode = Mode::Stall;
  } else {
    std::fprintf(stderr, "bench-sink: unknown mode %s\n", argv[1]);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  static Sink sink(mode, std::atoi(argv[2]), argc == 4 ? std::atol(argv[3]) : 0);
  return sink.run();
}
