// max_connections_per_client's counting: per address, across threads, nothing left behind.
#include "proxy/client_limiter.h"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/proxy/addresses.h"

namespace grelay::proxy {
namespace {

using testing::v4;
using testing::v6;

TEST(ClientLimiterTest, EachAddressGetsLimitSessionsWhateverItsPorts) {
  ClientLimiter limiter(2);
  EXPECT_TRUE(limiter.acquire(v4("10.0.0.1", 1000)));
  EXPECT_TRUE(limiter.acquire(v4("10.0.0.1", 1001)));
  EXPECT_FALSE(limiter.acquire(v4("10.0.0.1", 1002)));
  EXPECT_TRUE(limiter.acquire(v4("10.0.0.2", 1000)));  // another client
  EXPECT_TRUE(limiter.acquire(v6("2001:db8::1", 1000)));
  EXPECT_EQ(limiter.clients(), 3u);
  limiter.release(v4("10.0.0.1", 1000));
  EXPECT_TRUE(limiter.acquire(v4("10.0.0.1", 1003)));
  EXPECT_FALSE(limiter.acquire(v4("10.0.0.1", 1004)));
}

TEST(ClientLimiterTest, AnIpv4MappedClientIsItsIpv4Address) {
  // A [::] listener sees IPv4 clients as ::ffff:a.b.c.d; a PROXY header may say a.b.c.d.
  ClientLimiter limiter(1);
  EXPECT_TRUE(limiter.acquire(v6("::ffff:192.0.2.7", 1)));
  EXPECT_FALSE(limiter.acquire(v4("192.0.2.7", 2)));
  limiter.release(v4("192.0.2.7", 3));
  EXPECT_EQ(limiter.clients(), 0u);
}

TEST(ClientLimiterTest, ReleasedClientsLeaveNothingBehind) {
  // Memory stays bounded by the clients with sessions open, not by every address seen.
  ClientLimiter limiter(1);
  for (int i = 0; i < 1000; ++i) {
    const std::string ip = "10.1." + std::to_string(i / 256) + "." + std::to_string(i % 256);
    ASSERT_TRUE(limiter.acquire(v4(ip.c_str(), 1)));
    EXPECT_FALSE(limiter.acquire(v4(ip.c_str(), 2)));
    limiter.release(v4(ip.c_str(), 1));
  }
  EXPECT_EQ(limiter.clients(), 0u);
  limiter.release(v4("10.9.9.9", 1));  // never counted: nothing happens
  EXPECT_EQ(limiter.clients(), 0u);
}

TEST(ClientLimiterTest, WorkersCountingAtOnceNeverExceedTheLimit) {
  ClientLimiter limiter(3);
  std::vector<std::thread> threads;
  std::atomic<int> admitted{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        if (limiter.acquire(v4("10.0.0.1", 1))) {
          admitted.fetch_add(1);
          EXPECT_LE(admitted.load(), 3);
          admitted.fetch_sub(1);
          limiter.release(v4("10.0.0.1", 1));
        }
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_EQ(limiter.clients(), 0u);
}

}  // namespace
}  // namespace grelay::proxy
