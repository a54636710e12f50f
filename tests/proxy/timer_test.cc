#include "proxy/timer.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace grelay::proxy {
namespace {

struct Recorder final : Timer {
  std::vector<uint64_t>* fired;
  void onTimer(uint64_t) noexcept override { fired->push_back(deadline()); }
};

TEST(TimerQueueTest, FiresInDeadlineOrderAndHonoursMovesAndCancels) {
  TimerQueue q;
  std::vector<uint64_t> fired;
  std::vector<Recorder> timers(200);
  std::mt19937_64 rng(1);
  for (auto& t : timers) {
    t.fired = &fired;
    q.schedule(t, rng() % 10000 + 1);
  }
  for (size_t i = 0; i < timers.size(); i += 3) {
    q.schedule(timers[i], rng() % 10000 + 1);  // move
  }
  for (size_t i = 1; i < timers.size(); i += 5) {
    q.cancel(timers[i]);
  }
  size_t expected = q.size();
  q.expire(10001);
  EXPECT_EQ(fired.size(), expected);
  EXPECT_TRUE(std::is_sorted(fired.begin(), fired.end()));
  EXPECT_EQ(q.next(), 0u);
}

TEST(TimerQueueTest, NextIsTheEarliestDeadline) {
  TimerQueue q;
  std::vector<uint64_t> fired;
  Recorder a, b;
  a.fired = b.fired = &fired;
  q.schedule(a, 50);
  q.schedule(b, 20);
  EXPECT_EQ(q.next(), 20u);
  q.expire(30);
  EXPECT_EQ(fired, std::vector<uint64_t>{20});
  EXPECT_EQ(q.next(), 50u);
}

}  // namespace
}  // namespace grelay::proxy
