// max_connections_per_client's counting: per address, across threads, nothing left behind;
// max_connection_rate_per_client's token buckets.
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

constexpr uint64_t kSecond = 1'000'000'000ull;

TEST(ClientRateLimiterTest, EachAddressGetsABurstThenRateASecond) {
  ClientRateLimiter limiter(4);
  const uint64_t t0 = 5 * kSecond;
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(limiter.admit(v4("10.0.0.1", static_cast<uint16_t>(1000 + i)), t0)) << i;
  }
  EXPECT_FALSE(limiter.admit(v4("10.0.0.1", 2000), t0));
  EXPECT_FALSE(limiter.admit(v4("10.0.0.1", 2001), t0 + kSecond / 4 - 1));  // not yet
  EXPECT_TRUE(limiter.admit(v4("10.0.0.1", 2002), t0 + kSecond / 4));       // one back
  EXPECT_FALSE(limiter.admit(v4("10.0.0.1", 2003), t0 + kSecond / 4));
  // Others have their own buckets; an IPv4-mapped client is its IPv4 address.
  EXPECT_TRUE(limiter.admit(v4("10.0.0.2", 1000), t0));
  EXPECT_TRUE(limiter.admit(v6("2001:db8::1", 1000), t0));
  EXPECT_FALSE(limiter.admit(v6("::ffff:10.0.0.1", 1), t0 + kSecond / 4));
  // A refused connection takes nothing: a client that keeps trying gets rate a second.
  int admitted = 0;
  for (uint64_t t = t0 + kSecond / 4; t < t0 + 10 * kSecond + kSecond / 4; t += kSecond / 100) {
    admitted += limiter.admit(v4("10.0.0.1", 3000), t) ? 1 : 0;
  }
  EXPECT_EQ(admitted, 39);  // at 0.5 s, 0.75 s, ... 10 s
  // Waiting refills the burst, no more.
  const uint64_t later = t0 + 60 * kSecond;
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(limiter.admit(v4("10.0.0.1", 4000), later)) << i;
  }
  EXPECT_FALSE(limiter.admit(v4("10.0.0.1", 4000), later));
}

TEST(ClientRateLimiterTest, ClientsWhoseBucketIsFullAgainAreForgotten) {
  // Memory stays bounded by the clients of about the last second, not every address seen.
  ClientRateLimiter limiter(10);
  for (int i = 0; i < 1000; ++i) {
    const std::string ip = "10.1." + std::to_string(i / 256) + "." + std::to_string(i % 256);
    ASSERT_TRUE(limiter.admit(v4(ip.c_str(), 1), kSecond + static_cast<uint64_t>(i)));
  }
  EXPECT_EQ(limiter.clients(), 1000u);
  // Two seconds on, every bucket is full: each shard's next admission sweeps its forgotten.
  for (int i = 0; i < 64; ++i) {
    const std::string ip = "10.2.0." + std::to_string(i);
    ASSERT_TRUE(limiter.admit(v4(ip.c_str(), 1), 3 * kSecond));
  }
  EXPECT_EQ(limiter.clients(), 64u);
  // A client still short of tokens is remembered.
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(limiter.admit(v4("10.3.0.1", 1), 3 * kSecond));
  }
  EXPECT_FALSE(limiter.admit(v4("10.3.0.1", 1), 3 * kSecond + kSecond / 20));
  EXPECT_EQ(limiter.clients(), 65u);
}

TEST(ClientRateLimiterTest, WorkersAdmittingAtOnceNeverExceedTheBurst) {
  ClientRateLimiter limiter(100);
  std::vector<std::thread> threads;
  std::atomic<int> admitted{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        admitted += limiter.admit(v4("192.0.2.1", 1), 7 * kSecond) ? 1 : 0;
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_EQ(admitted.load(), 100);
}

}  // namespace
}  // namespace grelay::proxy
