// Fake descriptors for unit tests: records shutdowns and closes (and checks none is
// closed twice).
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "proxy/sockets.h"

namespace grelay::testing {

class FakeSockets final : public proxy::Sockets {
public:
  int openStream(int) override {
    if (failOpen) {
      return -EMFILE;
    }
    return nextFd++;
  }
  // Records the source address by fd; `bindResult` scripts a failure (e.g. -EADDRNOTAVAIL).
  int bindSource(int fd, const config::Address& source) override {
    if (bindResult != 0) {
      return bindResult;
    }
    bound[fd] = source.text;
    return 0;
  }
  void shutdownWrite(int fd) override { shutdowns.push_back(fd); }
  void close(int fd, bool reset) override {
    EXPECT_EQ(closed.count(fd), 0u) << "fd " << fd << " closed twice";
    closed[fd] = reset;
  }
  bool addresses(int, sockaddr_storage* peer, sockaddr_storage* local) override {
    auto* p = reinterpret_cast<sockaddr_in*>(peer);
    p->sin_family = AF_INET;
    p->sin_port = htons(40000);
    p->sin_addr.s_addr = htonl(0x7f000001);
    *local = *peer;
    return true;
  }
  void setNoDelay(int) override {}
  void setReceiveLowWater(int fd, int bytes) override { lowWater[fd] = bytes; }
  void setKeepAlive(int fd, uint32_t idleSeconds) override { keepAlive[fd] = idleSeconds; }
  // Pipes come from the session host in unit tests (FakeHost::takePipe), never from here.
  int openPipe(int[2], uint32_t) override { return -ENOSYS; }
  // Scripted: results of splices out of a socket (fills, by `in`) and into one (drains, by
  // `out`), in order; -EAGAIN once a script runs out.
  ssize_t splice(int in, int out, size_t len) override {
    splices.push_back({in, out, len});
    for (auto* script : {&fillFrom[in], &drainTo[out]}) {
      if (!script->empty()) {
        ssize_t r = script->front();
        script->pop_front();
        return r;
      }
    }
    return -EAGAIN;
  }

  // Scripted: connections waiting in a listening socket's queue, by listening fd.
  int acceptNow(int listenFd) override {
    auto& q = waiting[listenFd];
    if (q.empty()) {
      return -EAGAIN;
    }
    int fd = q.front();
    q.pop_front();
    return fd;
  }

  int readTlsRecord(int, uint8_t*, uint8_t*, size_t) override { return -ENOTSUP; }

  // Scripted: bytes waiting in a socket (by fd); past them -EAGAIN, or 0 once `eof[fd]`.
  ssize_t receiveNow(int fd, void* data, size_t length, bool peek) override {
    std::string& in = incoming[fd];
    if (in.empty()) {
      return eof[fd] ? 0 : -EAGAIN;
    }
    const size_t n = std::min(length, in.size());
    std::memcpy(data, in.data(), n);
    if (!peek) {
      in.erase(0, n);
    }
    return static_cast<ssize_t>(n);
  }

  // Records what was sent, by fd; `sendResult` scripts a result instead (e.g. -EPIPE).
  ssize_t sendNow(int fd, const void* data, size_t length) override {
    if (sendResult.count(fd) != 0) {
      return sendResult[fd];
    }
    sent[fd].append(static_cast<const char*>(data), length);
    return static_cast<ssize_t>(length);
  }

  int nextFd = 100;
  bool failOpen = false;
  int bindResult = 0;
  std::map<int, std::string> bound;
  std::vector<int> shutdowns;
  std::map<int, bool> closed;  // fd -> reset
  struct SpliceCall {
    int in;
    int out;
    size_t len;
  };
  std::vector<SpliceCall> splices;
  std::map<int, std::deque<ssize_t>> fillFrom;
  std::map<int, std::deque<ssize_t>> drainTo;
  std::map<int, std::deque<int>> waiting;
  std::map<int, std::string> sent;
  std::map<int, std::string> incoming;
  std::map<int, uint32_t> keepAlive;  // fd -> idle seconds
  std::map<int, int> lowWater;        // fd -> SO_RCVLOWAT
  std::map<int, bool> eof;
  std::map<int, ssize_t> sendResult;
};

}  // namespace grelay::testing
