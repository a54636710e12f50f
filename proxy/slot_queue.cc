#include "proxy/slot_queue.h"

namespace grelay::proxy {

void SlotBoard::extendSpan(uint32_t worker) {
  uint32_t span = span_.load(std::memory_order_relaxed);
  while (span <= worker &&
         !span_.compare_exchange_weak(span, worker + 1, std::memory_order_relaxed)) {
  }
}

void SlotBoard::addAside(uint32_t worker, int delta) {
  if (worker >= kWorkers || delta == 0) {
    return;
  }
  extendSpan(worker);
  // Only `worker`'s thread changes its entry.
  const uint32_t was =
      aside_[worker].fetch_add(static_cast<uint32_t>(delta), std::memory_order_acq_rel);
  const uint32_t now = was + static_cast<uint32_t>(delta);
  if (was == 0 && now != 0) {
    asideWorkers_.fetch_add(1, std::memory_order_acq_rel);
  } else if (was != 0 && now == 0) {
    asideWorkers_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void SlotBoard::publish(uint32_t worker, uint64_t ticket) {
  if (worker >= kWorkers) {
    return;
  }
  extendSpan(worker);
  // Only `worker`'s thread writes its entry.
  const uint64_t was = oldest_[worker].exchange(ticket, std::memory_order_acq_rel);
  if (was == 0 && ticket != 0) {
    waiting_.fetch_add(1, std::memory_order_acq_rel);
  } else if (was != 0 && ticket == 0) {
    waiting_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

uint64_t SlotBoard::oldest(uint32_t* worker) const {
  if (waiting_.load(std::memory_order_acquire) == 0) {
    return 0;
  }
  uint64_t best = 0;
  const uint32_t span = span_.load(std::memory_order_acquire);
  for (uint32_t w = 0; w < span; ++w) {
    const uint64_t ticket = oldest_[w].load(std::memory_order_acquire);
    if (ticket != 0 && (best == 0 || ticket < best)) {
      best = ticket;
      *worker = w;
    }
  }
  return best;
}

SlotQueue::SlotQueue(std::shared_ptr<SlotBoard> board, uint32_t worker, WakeWorker wake)
    : board_(worker < SlotBoard::kWorkers ? std::move(board) : nullptr),
      worker_(worker),
      wake_(std::move(wake)) {}

SlotQueue::~SlotQueue() {
  if (board_ != nullptr) {
    // (Torn down with its worker.)
    if (size_ > 0) {
      board_->publish(worker_, 0);
    }
    board_->addAside(worker_, -static_cast<int>(asideCount_));
  }
}

void SlotQueue::publish() {
  if (board_ != nullptr) {
    board_->publish(worker_, head_ != nullptr ? head_->slotTicket_ : 0);
  }
}

void SlotQueue::push(SlotWaiter& waiter) {
  if (waiter.waitingSlot_) {
    return;
  }
  // Without a board the order is the list's alone (olderElsewhere() is false).
  waiter.slotTicket_ = board_ != nullptr ? board_->takeTicket() : 0;
  append(waiter);
}

void SlotQueue::pushMoved(SlotWaiter& waiter, const SlotQueue& from) {
  if (waiter.waitingSlot_) {
    return;
  }
  if (board_ == nullptr || board_ != from.board_) {
    waiter.slotTicket_ = board_ != nullptr ? board_->takeTicket() : 0;
  }
  append(waiter);
}

void SlotQueue::pushAside(SlotWaiter& waiter) {
  if (waiter.waitingSlot_) {
    return;
  }
  waiter.waitingSlot_ = true;
  waiter.aside_ = true;
  ++asideCount_;
  if (board_ != nullptr) {
    board_->addAside(worker_, 1);
  }
  // Oldest first (a few at most: sessions whose connect failed while the pool was full).
  SlotWaiter* prev = nullptr;
  SlotWaiter* next = asideHead_;
  while (next != nullptr && next->slotTicket_ <= waiter.slotTicket_) {
    prev = next;
    next = next->nextSlotWaiter_;
  }
  waiter.prevSlotWaiter_ = prev;
  waiter.nextSlotWaiter_ = next;
  (prev != nullptr ? prev->nextSlotWaiter_ : asideHead_) = &waiter;
  if (next != nullptr) {
    next->prevSlotWaiter_ = &waiter;
  }
}

void SlotQueue::tellAside() {
  for (SlotWaiter* w = asideHead_; w != nullptr; w = w->nextSlotWaiter_) {
    w->lookForSlot();  // (schedules its look: the list stays as it is)
  }
}

void SlotQueue::append(SlotWaiter& waiter) {
  waiter.waitingSlot_ = true;
  ++size_;
  if (head_ == nullptr) {
    head_ = tail_ = &waiter;
    publish();
    waiter.lookForSlot();
    return;
  }
  waiter.prevSlotWaiter_ = tail_;
  tail_->nextSlotWaiter_ = &waiter;
  tail_ = &waiter;
}

void SlotQueue::forget(SlotWaiter& waiter) {
  if (!waiter.waitingSlot_) {
    return;
  }
  // Either list: the line (head_ to tail_) or aside (asideHead_, no tail kept).
  const bool aside = waiter.aside_;
  const bool wasOldest = head_ == &waiter;
  SlotWaiter* prev = waiter.prevSlotWaiter_;
  SlotWaiter* next = waiter.nextSlotWaiter_;
  (prev != nullptr ? prev->nextSlotWaiter_ : aside ? asideHead_ : head_) = next;
  if (next != nullptr) {
    next->prevSlotWaiter_ = prev;
  } else if (!aside) {
    tail_ = prev;
  }
  waiter.prevSlotWaiter_ = waiter.nextSlotWaiter_ = nullptr;
  waiter.waitingSlot_ = false;
  waiter.aside_ = false;
  if (aside) {
    --asideCount_;
    if (board_ != nullptr) {
      board_->addAside(worker_, -1);
    }
    return;
  }
  --size_;
  if (wasOldest) {
    publish();
  }
}

void SlotQueue::remove(SlotWaiter& waiter) {
  const bool wasOldest = head_ == &waiter;
  forget(waiter);
  if (wasOldest && head_ != nullptr) {
    head_->lookForSlot();
  }
}

void SlotQueue::slotReleased() {
  tellAside();  // they had waited in line before: they look first
  uint32_t worker = worker_;
  if (board_ == nullptr) {
    if (head_ != nullptr) {
      head_->lookForSlot();
    }
    return;
  }
  uint32_t woken = SlotBoard::kWorkers;
  if (board_->oldest(&worker) != 0) {
    if (head_ != nullptr && worker == worker_) {
      head_->lookForSlot();
    } else if (wake_) {
      // Its waiter has waited longest: the slot is its. On this worker that waiter is in
      // another queue of the board (a DNS move's), which the wake-up reaches.
      wake_(worker);
      woken = worker;
    }
  }
  if (wake_) {
    // Waiters aside on other workers look too (they are on no board entry of their own).
    board_->forEachAside(worker_, [this, woken](uint32_t w) {
      if (w != woken) {
        wake_(w);
      }
    });
  }
}

void SlotQueue::wakeOldest() {
  tellAside();
  if (head_ != nullptr) {
    head_->lookForSlot();
  }
}

bool SlotQueue::olderElsewhere(const SlotWaiter& waiter) const {
  if (board_ == nullptr) {
    return false;
  }
  uint32_t worker = worker_;
  const uint64_t ticket = board_->oldest(&worker);
  return ticket != 0 && worker != worker_ && ticket < waiter.slotTicket_;
}

}  // namespace grelay::proxy
