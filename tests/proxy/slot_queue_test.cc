#include "proxy/slot_queue.h"

#include <gtest/gtest.h>

#include <memory>
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

TEST(SlotQueueTest, ForgetWakesNobody) {
  std::string looks;
  Waiter a(&looks, 'a'), b(&looks, 'b'), c(&looks, 'c');
  SlotQueue q;
  q.push(a);
  q.push(b);
  q.remove(a);  // a takes a slot; b looks
  q.push(c);
  EXPECT_EQ(looks, "ab");
  q.forget(b);  // destroyed with its worker: no look
  EXPECT_EQ(looks, "ab");
  EXPECT_TRUE(q.isOldest(c));
  q.remove(c);
  EXPECT_EQ(q.size(), 0u);
  q.push(a);  // first in an empty queue: told to look
  EXPECT_EQ(looks, "aba");
  q.remove(a);
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

TEST(SlotQueueTest, AFreedSlotGoesToTheOldestWaiterOfAnyWorker) {
  std::string looks;
  std::vector<uint32_t> woken;
  auto board = std::make_shared<SlotBoard>();
  auto wake = [&woken](uint32_t w) { woken.push_back(w); };
  SlotQueue q0(board, 0, wake), q1(board, 1, wake);
  Waiter a(&looks, 'a'), b(&looks, 'b'), c(&looks, 'c'), d(&looks, 'd');
  q0.push(a);  // the first to wait, on worker 0
  q1.push(b);  // then one on worker 1
  q0.push(c);
  q1.push(d);
  EXPECT_EQ(looks, "ab");  // each worker's oldest looks
  // A slot freed on worker 1 is a's (worker 0 is woken for it), not b's; b leaves what
  // it finds to a.
  q1.slotReleased();
  EXPECT_EQ(woken, std::vector<uint32_t>{0});
  EXPECT_EQ(looks, "ab");
  EXPECT_TRUE(q1.olderElsewhere(b));
  EXPECT_FALSE(q0.olderElsewhere(a));
  q0.wakeOldest();  // worker 0 woken: its oldest looks
  EXPECT_EQ(looks, "aba");
  q0.remove(a);  // a took the slot: c is worker 0's oldest, but b has waited longer
  EXPECT_EQ(looks, "abac");
  EXPECT_TRUE(q0.olderElsewhere(c));
  EXPECT_FALSE(q1.olderElsewhere(b));
  q0.slotReleased();
  EXPECT_EQ(woken, (std::vector<uint32_t>{0, 1}));
  q1.slotReleased();  // freed on the oldest's own worker: it looks at once
  EXPECT_EQ(looks, "abacb");
  q1.remove(b);
  EXPECT_EQ(looks, "abacbd");
  EXPECT_FALSE(q0.olderElsewhere(c));  // c is the oldest of all now
  EXPECT_TRUE(q1.olderElsewhere(d));
  q0.remove(c);
  q1.remove(d);
  q0.slotReleased();  // nobody waits anywhere: nobody is woken
  EXPECT_EQ(woken, (std::vector<uint32_t>{0, 1}));
  EXPECT_EQ(looks, "abacbd");
}

TEST(SlotQueueTest, AWaiterOutOfTheQueueKeepsItsTicketAndHoldsBackNobody) {
  std::string looks;
  auto board = std::make_shared<SlotBoard>();
  SlotQueue q0(board, 0), q1(board, 1);
  Waiter a(&looks, 'a'), b(&looks, 'b'), c(&looks, 'c');
  q0.push(a);
  q1.push(b);
  EXPECT_TRUE(q1.olderElsewhere(b));
  // a took a slot whose connect failed: it waits again, outside the queue (for the
  // servers it has left), with its ticket.
  q0.remove(a);
  EXPECT_FALSE(q1.olderElsewhere(b));  // b is held back by nobody
  EXPECT_FALSE(q0.olderElsewhere(a));  // and a by nobody younger
  q0.push(c);
  EXPECT_TRUE(q0.olderElsewhere(c));  // c came after b
  EXPECT_FALSE(q1.olderElsewhere(b));
  q0.remove(c);
  q1.remove(b);
}

TEST(SlotQueueTest, WaitersAsideAreToldToLookBeforeTheLineOldestFirst) {
  std::string looks;
  auto board = std::make_shared<SlotBoard>();
  SlotQueue q(board, 0);
  Waiter a(&looks, 'a'), b(&looks, 'b'), c(&looks, 'c'), d(&looks, 'd');
  q.push(a);
  q.push(b);
  q.push(c);
  EXPECT_EQ(looks, "a");
  // b, then a, took slots whose connects failed: they wait again aside, with their
  // tickets, and are told to look before the line's oldest (c), so c cannot take every
  // slot they could use.
  q.remove(b);
  q.remove(a);
  EXPECT_EQ(looks, "ac");  // c, the oldest in line once a left, was told
  looks.clear();
  q.pushAside(b);
  q.pushAside(a);
  EXPECT_TRUE(q.isAside(a));
  EXPECT_FALSE(q.contains(a));
  EXPECT_EQ(q.size(), 1u);
  EXPECT_TRUE(q.isOldest(c));
  q.slotReleased();  // the aside first, oldest first, then the line's oldest
  EXPECT_EQ(looks, "abc");
  q.push(d);
  q.wakeOldest();
  EXPECT_EQ(looks, "abcabc");
  q.remove(a);  // from aside: nobody else is told
  EXPECT_EQ(looks, "abcabc");
  EXPECT_FALSE(q.isAside(a));
  q.forget(b);
  q.slotReleased();
  EXPECT_EQ(looks, "abcabcc");
  q.remove(c);
  q.remove(d);
  EXPECT_EQ(q.size(), 0u);
}

TEST(SlotQueueTest, ASlotFreedOnAnotherWorkerWakesTheWorkersWithWaitersAside) {
  std::string looks;
  std::vector<uint32_t> woken;
  auto board = std::make_shared<SlotBoard>();
  auto wake = [&woken](uint32_t w) { woken.push_back(w); };
  SlotQueue q0(board, 0, wake), q1(board, 1, wake), q2(board, 2, wake);
  Waiter a(&looks, 'a'), b(&looks, 'b');
  q1.push(a);
  q1.remove(a);  // its slot's connect failed: it waits again aside on worker 1
  q1.pushAside(a);
  q2.push(b);  // the line's oldest, on worker 2
  looks.clear();
  // Freed on worker 0: worker 2 for the line's oldest, and worker 1 for its waiter aside.
  q0.slotReleased();
  EXPECT_EQ(woken, (std::vector<uint32_t>{2, 1}));
  q1.wakeOldest();
  EXPECT_EQ(looks, "a");
  // Freed on worker 1 itself: a is told at once, worker 2 woken, nobody else.
  woken.clear();
  q1.slotReleased();
  EXPECT_EQ(looks, "aa");
  EXPECT_EQ(woken, std::vector<uint32_t>{2});
  // Once a has left, a freed slot wakes only the line's oldest.
  q1.remove(a);
  woken.clear();
  q0.slotReleased();
  EXPECT_EQ(woken, std::vector<uint32_t>{2});
  q2.remove(b);
  woken.clear();
  q0.slotReleased();
  EXPECT_TRUE(woken.empty());
}

TEST(SlotQueueTest, WaitersMovedToAQueueOfTheSameBoardKeepTheirTurns) {
  std::string looks;
  std::vector<uint32_t> woken;
  auto board = std::make_shared<SlotBoard>();
  auto wake = [&woken](uint32_t w) { woken.push_back(w); };
  // A DNS move's new pool shares its predecessor's board; worker 1 has not moved yet.
  auto old0 = std::make_unique<SlotQueue>(board, 0, wake);
  SlotQueue old1(board, 1, wake), new0(board, 0, wake);
  Waiter a(&looks, 'a'), b(&looks, 'b'), c(&looks, 'c'), d(&looks, 'd');
  old0->push(a);
  old1.push(b);
  old0->push(c);
  EXPECT_EQ(looks, "ab");
  // Worker 0 moves: its waiters leave the old queue, then join the new one oldest first.
  old0->forget(a);
  old0->forget(c);
  new0.pushMoved(a, *old0);
  new0.pushMoved(c, *old0);
  EXPECT_EQ(looks, "aba");  // the oldest is told to look (at the new pool's servers)
  EXPECT_EQ(SlotQueue::ticket(a), 1u);
  EXPECT_FALSE(new0.olderElsewhere(a));  // a still came before b
  EXPECT_TRUE(old1.olderElsewhere(b));
  new0.push(d);  // a newcomer after the move: after all of them
  EXPECT_FALSE(new0.isOldest(d));
  EXPECT_GT(SlotQueue::ticket(d), SlotQueue::ticket(c));
  // A session of the old routes on worker 0 frees a slot: the waiter it is for is in the
  // new queue, which the worker's wake-up reaches.
  old0->slotReleased();
  EXPECT_EQ(woken, std::vector<uint32_t>{0});
  old0.reset();  // (the old routes go with their last session)
  new0.remove(a);
  EXPECT_EQ(looks, "abac");
  EXPECT_TRUE(new0.olderElsewhere(c));  // b came before c
  old1.remove(b);
  new0.remove(c);
  new0.remove(d);
}

TEST(SlotQueueTest, WaitersMovedToAQueueOfAnotherBoardTakeNewTickets) {
  std::string looks;
  SlotQueue from(std::make_shared<SlotBoard>(), 0), to(std::make_shared<SlotBoard>(), 0);
  Waiter a(&looks, 'a'), b(&looks, 'b'), c(&looks, 'c');
  from.push(a);
  from.push(b);
  to.push(c);
  from.forget(a);
  from.forget(b);
  to.pushMoved(a, from);
  to.pushMoved(b, from);
  EXPECT_EQ(SlotQueue::ticket(a), 2u);  // behind the new board's own waiter
  EXPECT_EQ(SlotQueue::ticket(b), 3u);
  EXPECT_TRUE(to.isOldest(c));
  to.remove(c);
  EXPECT_EQ(looks, "aca");
  to.remove(a);
  to.remove(b);
}

}  // namespace
}  // namespace grelay::proxy
