// The sessions that wait for an upstream slot (the pool's queue_timeout, every server at
// max_conns), oldest first: one queue per worker and pool, and a board the pool's queues
// share so that a freed slot goes to the oldest waiter of any worker.
//
// Each waiter takes a ticket from the board as it starts waiting (in arrival order across
// workers); each queue publishes the ticket of its oldest waiter. Only a queue's oldest
// waiter looks for a slot: on its own timer (a slot freed by an older generation, or a
// wake-up that was missed), and at once when it is woken: by a session that releases a
// slot, on whichever worker, when its ticket is the smallest published; or when the
// waiter ahead of it leaves. A waiter whose ticket is not the smallest leaves a slot it
// finds to the older one (olderElsewhere()). The others wait for their turn (or their
// queue_timeout) without a timer of their own, so a long queue costs nothing per waiter.
// A waiter whose slot's connect failed and that waits again (for the servers it has left)
// waits aside: not in line, where it would hold back others when a slot comes free on its
// failed server, but told to look whenever the line's oldest is, before it, and whenever
// a slot comes free on another worker, so younger waiters do not take every slot it could
// use.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

namespace grelay::proxy {

class SlotWaiter {
public:
  // It is the oldest waiter now, or a slot was released: look for one soon (not from
  // within this call: the caller may be in the middle of releasing).
  virtual void lookForSlot() noexcept = 0;

private:
  friend class SlotQueue;
  SlotWaiter* prevSlotWaiter_ = nullptr;
  SlotWaiter* nextSlotWaiter_ = nullptr;
  uint64_t slotTicket_ = 0;
  bool waitingSlot_ = false;
  bool aside_ = false;  // waitingSlot_: in the aside list, not in line

protected:
  ~SlotWaiter() = default;
};

// Shared by the queues of one pool (one per worker): tickets, and each worker's oldest.
class SlotBoard {
public:
  // Workers past this many keep their order among themselves only.
  static constexpr uint32_t kWorkers = 1024;

  SlotBoard()
      : oldest_(new std::atomic<uint64_t>[kWorkers]), aside_(new std::atomic<uint32_t>[kWorkers]) {
    for (uint32_t w = 0; w < kWorkers; ++w) {
      oldest_[w].store(0, std::memory_order_relaxed);
      aside_[w].store(0, std::memory_order_relaxed);
    }
  }
  uint64_t takeTicket() { return next_.fetch_add(1, std::memory_order_relaxed) + 1; }
  // `ticket` of `worker`'s oldest waiter (0 = it has none).
  void publish(uint32_t worker, uint64_t ticket);
  // The worker whose oldest waiter has the smallest ticket, and that ticket (0 = none).
  uint64_t oldest(uint32_t* worker) const;
  // `worker` has `delta` more (or fewer) waiters aside.
  void addAside(uint32_t worker, int delta);
  // Calls wake(w) for each worker other than `except` with waiters aside.
  template <typename F>
  void forEachAside(uint32_t except, F wake) const {
    if (asideWorkers_.load(std::memory_order_acquire) == 0) {
      return;
    }
    const uint32_t span = span_.load(std::memory_order_acquire);
    for (uint32_t w = 0; w < span; ++w) {
      if (w != except && aside_[w].load(std::memory_order_acquire) != 0) {
        wake(w);
      }
    }
  }

private:
  void extendSpan(uint32_t worker);

  std::atomic<uint64_t> next_{0};
  std::unique_ptr<std::atomic<uint64_t>[]> oldest_;
  std::unique_ptr<std::atomic<uint32_t>[]> aside_;  // waiters aside, by worker
  std::atomic<uint32_t> asideWorkers_{0};           // workers with waiters aside
  std::atomic<uint32_t> span_{0};                   // 1 + the highest worker that ever published
  std::atomic<uint32_t> waiting_{0};                // workers with a waiter now
};

class SlotQueue {
public:
  // Wakes worker `index` (from any thread) so that its queues' oldest waiters look.
  using WakeWorker = std::function<void(uint32_t index)>;

  // `board` (may be null: this queue's order only) is the pool's; `worker` this queue's.
  explicit SlotQueue(std::shared_ptr<SlotBoard> board = nullptr, uint32_t worker = 0,
                     WakeWorker wake = nullptr);
  ~SlotQueue();
  SlotQueue(const SlotQueue&) = delete;
  SlotQueue& operator=(const SlotQueue&) = delete;

  // A new waiter goes last, with a new ticket (which it keeps when it leaves: a session
  // that waits again outside the queue is still ordered by it). A waiter that becomes the
  // oldest is told to look (lookForSlot()).
  void push(SlotWaiter& waiter);
  // A waiter that waits again after its slot's connect failed, aside, with the ticket it
  // has (see above); remove() or forget() takes it out.
  void pushAside(SlotWaiter& waiter);
  // A waiter that left `from` (forget()) because a DNS move replaced its pool goes last
  // here, keeping its ticket when both queues share a board (the caller moves a queue's
  // waiters oldest first), else with a new one.
  void pushMoved(SlotWaiter& waiter, const SlotQueue& from);
  // Unlinks `waiter` (if queued); when it was the oldest, the next one looks at once.
  void remove(SlotWaiter& waiter);
  // Unlinks without waking anyone (a waiter being destroyed with its worker).
  void forget(SlotWaiter& waiter);
  // A slot of the pool came free: the oldest waiter of any worker looks for it (this
  // worker's at once, another's through `wake`, and through `wake` too when this worker's
  // oldest waits in another queue of the board: one a DNS move's new pool made); this
  // queue's waiters aside look too, first, and other workers with waiters aside are
  // woken for theirs.
  void slotReleased();
  // This worker was woken for a freed slot: its waiters aside and its oldest look.
  void wakeOldest();

  // In line (not aside).
  bool contains(const SlotWaiter& waiter) const { return waiter.waitingSlot_ && !waiter.aside_; }
  bool isAside(const SlotWaiter& waiter) const { return waiter.waitingSlot_ && waiter.aside_; }
  bool isOldest(const SlotWaiter& waiter) const { return head_ == &waiter; }
  // Its place in the order of the pool's waiters (0 = it never waited).
  static uint64_t ticket(const SlotWaiter& waiter) { return waiter.slotTicket_; }
  // Whether a waiter of another worker has waited longer than `waiter`: a slot `waiter`
  // finds is that one's.
  bool olderElsewhere(const SlotWaiter& waiter) const;
  size_t size() const { return size_; }

private:
  void publish();
  void append(SlotWaiter& waiter);
  void tellAside();

  std::shared_ptr<SlotBoard> board_;
  uint32_t worker_;
  WakeWorker wake_;
  SlotWaiter* head_ = nullptr;
  SlotWaiter* tail_ = nullptr;
  size_t size_ = 0;                  // in line
  SlotWaiter* asideHead_ = nullptr;  // aside, oldest ticket first
  size_t asideCount_ = 0;
};

}  // namespace grelay::proxy
