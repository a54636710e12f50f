// The sessions of one listener on one worker that wait for an upstream slot (the pool's
// queue_timeout, every server at max_conns), oldest first.
//
// Only the oldest waiter looks for a slot: on its own timer (a slot another worker or an
// older generation freed), and at once when a session of this queue's listener releases
// one or the waiter ahead of it leaves. The others wait for their turn (or their
// queue_timeout) without a timer of their own, so a long queue costs nothing per waiter
// and a freed slot goes to the session that has waited longest on this worker.
#pragma once

#include <cstddef>

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
  bool waitingSlot_ = false;

protected:
  ~SlotWaiter() = default;
};

class SlotQueue {
public:
  SlotQueue() = default;
  SlotQueue(const SlotQueue&) = delete;
  SlotQueue& operator=(const SlotQueue&) = delete;

  // A new waiter goes last. One that waited before (its slot's connect failed) goes
  // first again with `front`: it keeps its turn. A waiter that becomes the oldest is told
  // to look (lookForSlot()).
  void push(SlotWaiter& waiter, bool front = false);
  // Unlinks `waiter` (if queued); when it was the oldest, the next one looks at once.
  void remove(SlotWaiter& waiter);
  // Unlinks without waking anyone (a waiter being destroyed with its worker).
  void forget(SlotWaiter& waiter);
  // A slot of the pool came free: the oldest waiter looks for it.
  void slotReleased();

  bool contains(const SlotWaiter& waiter) const { return waiter.waitingSlot_; }
  bool isOldest(const SlotWaiter& waiter) const { return head_ == &waiter; }
  size_t size() const { return size_; }

private:
  SlotWaiter* head_ = nullptr;
  SlotWaiter* tail_ = nullptr;
  size_t size_ = 0;
};

}  // namespace grelay::proxy
