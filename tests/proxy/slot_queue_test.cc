#include "proxy/slot_queue.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace grelay::proxy {
namespace {

struct Waiter final : SlotWaiter {
  Waiter(std::string* log, char name) : log(log), name(name) {}
  void lookForSlot() noexcept override { log->push_back(name); }
  std::string* log;
  char name;
};

TEST(SlotQueueTest, OnlyTheOldestIsToldToLookAndTheNextWhenItLeaves) {
  std::string looks;
  Waiter a(&looks, 'a'), b(&looks, 'b'), c(&looks, 'c');
  SlotQueue q;
  q.push(a);  // the first one is the oldest at once
  q.push(b);
  q.push(c);
  EXPECT_EQ(looks, "a");
  EXPECT_EQ(q.size(), 3u);
  EXPECT_TRUE(q.isOldest(a));
  q.slotReleased();
  q.slotReleased();
  EXPECT_EQ(looks, "aaa");
  q.remove(b);  // not the oldest: nobody new looks
  EXPECT_EQ(looks, "aaa");
  EXPECT_FALSE(q.contains(b));
  q.remove(b);  // twice is harmless
  EXPECT_EQ(q.size(), 2u);
  q.remove(a);
  EXPECT_EQ(looks, "aaac");
  EXPECT_TRUE(q.isOldest(c));
  q.remove(c);
  EXPECT_EQ(q.size(), 0u);
  q.slotReleased();  // nobody waits
  EXPECT_EQ(looks, "aaac");
}

TEST(SlotQueueTest, AWaiterThatWaitsAgainKeepsItsTurnAndForgetWakesNobody) {
  std::string looks;
  Waiter a(&looks, 'a'), b(&looks, 'b'), c(&looks, 'c');
  SlotQueue q;
  q.push(a);
  q.push(b);
  q.remove(a);  // a takes a slot; b looks
  q.push(c);
  q.push(a, true);  // a's connect failed: first in line again, and told to look
  EXPECT_EQ(looks, "aba");
  EXPECT_TRUE(q.isOldest(a));
  q.forget(a);  // destroyed with its worker: no look
  q.forget(c);
  EXPECT_EQ(looks, "aba");
  EXPECT_TRUE(q.isOldest(b));
  q.remove(b);
  EXPECT_EQ(q.size(), 0u);
  q.push(c, true);  // front of an empty queue
  EXPECT_EQ(looks, "abac");
  q.remove(c);
}

TEST(SlotQueueTest, KeepsOrderAcrossManyJoinsAndLeaves) {
  std::string looks;
  std::vector<Waiter> waiters;
  waiters.reserve(26);
  for (char n = 'a'; n <= 'z'; ++n) {
    waiters.emplace_back(&looks, n);
  }
  SlotQueue q;
  for (auto& w : waiters) {
    q.push(w);
  }
  for (size_t i = 1; i < waiters.size(); i += 2) {
    q.remove(waiters[i]);  // every other one times out
  }
  looks.clear();
  while (q.size() > 0) {
    for (auto& w : waiters) {
      if (q.isOldest(w)) {
        q.remove(w);
        break;
      }
    }
  }
  EXPECT_EQ(looks, "cegikmoqsuwy");
}

}  // namespace
}  // namespace grelay::proxy
