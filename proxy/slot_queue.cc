#include "proxy/slot_queue.h"

namespace grelay::proxy {

void SlotQueue::push(SlotWaiter& waiter, bool front) {
  if (waiter.waitingSlot_) {
    return;
  }
  waiter.waitingSlot_ = true;
  ++size_;
  SlotWaiter* oldHead = head_;
  if (head_ == nullptr) {
    head_ = tail_ = &waiter;
  } else if (front) {
    waiter.nextSlotWaiter_ = head_;
    head_->prevSlotWaiter_ = &waiter;
    head_ = &waiter;
  } else {
    waiter.prevSlotWaiter_ = tail_;
    tail_->nextSlotWaiter_ = &waiter;
    tail_ = &waiter;
  }
  if (head_ != oldHead) {
    waiter.lookForSlot();
  }
}

void SlotQueue::forget(SlotWaiter& waiter) {
  if (!waiter.waitingSlot_) {
    return;
  }
  SlotWaiter* prev = waiter.prevSlotWaiter_;
  SlotWaiter* next = waiter.nextSlotWaiter_;
  (prev != nullptr ? prev->nextSlotWaiter_ : head_) = next;
  (next != nullptr ? next->prevSlotWaiter_ : tail_) = prev;
  waiter.prevSlotWaiter_ = waiter.nextSlotWaiter_ = nullptr;
  waiter.waitingSlot_ = false;
  --size_;
}

void SlotQueue::remove(SlotWaiter& waiter) {
  const bool wasOldest = head_ == &waiter;
  forget(waiter);
  if (wasOldest && head_ != nullptr) {
    head_->lookForSlot();
  }
}

void SlotQueue::slotReleased() {
  if (head_ != nullptr) {
    head_->lookForSlot();
  }
}

}  // namespace grelay::proxy
