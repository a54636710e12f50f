// Fake descriptors for unit tests: records shutdowns and closes (and checks none is
// closed twice).
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <map>
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

  int nextFd = 100;
  bool failOpen = false;
  std::vector<int> shutdowns;
  std::map<int, bool> closed;  // fd -> reset
};

}  // namespace grelay::testing
