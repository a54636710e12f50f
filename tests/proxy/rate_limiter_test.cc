#include "proxy/rate_limiter.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace grelay::proxy {
namespace {

constexpr uint64_t kSecond = 1'000'000'000;

TEST(RateLimiterTest, ABurstThenOneEveryIntervalAndTheTimeTheNextIsDue) {
  RateLimiter rate(10, 3);  // 100 ms apart, 3 at once after a quiet spell
  const uint64_t t0 = 50 * kSecond;
  uint64_t at = 0;
  EXPECT_TRUE(rate.take(t0, &at));
  EXPECT_TRUE(rate.take(t0, &at));
  EXPECT_TRUE(rate.take(t0, &at));
  ASSERT_FALSE(rate.take(t0, &at));
  EXPECT_EQ(at, t0 + kSecond / 10);
  EXPECT_FALSE(rate.take(at - 1, &at));  // not a nanosecond early
  EXPECT_EQ(at, t0 + kSecond / 10);
  EXPECT_TRUE(rate.take(at, &at));
  uint64_t next = 0;
  EXPECT_FALSE(rate.take(t0 + kSecond / 10, &next));
  EXPECT_EQ(next, t0 + 2 * kSecond / 10);
  // Over a long stretch of constant demand: one every 100 ms (at 200 ms, ..., 10 s).
  uint64_t taken = 0;
  for (uint64_t now = t0 + kSecond / 10 + kSecond / 1000; now <= t0 + 10 * kSecond;
       now += kSecond / 1000) {
    taken += rate.take(now, &at) ? 1 : 0;
  }
  EXPECT_EQ(taken, 99u);
  // After a quiet spell the burst is back, no more.
  const uint64_t later = t0 + 60 * kSecond;
  int burst = 0;
  while (rate.take(later, &at)) {
    ++burst;
  }
  EXPECT_EQ(burst, 3);
}

TEST(RateLimiterTest, TheDefaultBurstIsATenthOfASecondsWorth) {
  EXPECT_EQ(RateLimiter::defaultBurst(1), 1u);
  EXPECT_EQ(RateLimiter::defaultBurst(19), 1u);
  EXPECT_EQ(RateLimiter::defaultBurst(20), 2u);
  EXPECT_EQ(RateLimiter::defaultBurst(1000), 100u);
}

TEST(RateLimiterTest, ANewRateKeepsThePacingAlreadyPromised) {
  RateLimiter rate(1, 1);
  const uint64_t t0 = 10 * kSecond;
  uint64_t at = 0;
  EXPECT_TRUE(rate.take(t0, &at));
  rate.setRate(100, 1);  // a reload: the next slot is not moved earlier than promised
  EXPECT_FALSE(rate.take(t0 + kSecond / 2, &at));
  EXPECT_EQ(at, t0 + kSecond);
  EXPECT_TRUE(rate.take(t0 + kSecond, &at));
  EXPECT_TRUE(rate.take(t0 + kSecond + kSecond / 100, &at));
  EXPECT_EQ(rate.perSecond(), 100u);
}

TEST(RateLimiterTest, ThreadsTakingAtOnceNeverGetMoreThanTheBurst) {
  RateLimiter rate(1000, 50);
  const uint64_t now = 5 * kSecond;
  std::atomic<int> taken{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      uint64_t at = 0;
      for (int i = 0; i < 1000; ++i) {
        taken.fetch_add(rate.take(now, &at) ? 1 : 0);
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_EQ(taken.load(), 50);
}

}  // namespace
}  // namespace grelay::proxy
