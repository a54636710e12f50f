#include "proxy/timer.h"

#include <utility>

namespace grelay::proxy {

void TimerQueue::schedule(Timer& timer, uint64_t deadline) {
  if (timer.armed()) {
    uint64_t old = timer.deadline_;
    timer.deadline_ = deadline;
    if (deadline < old) {
      siftUp(timer.index_);
    } else {
      siftDown(timer.index_);
    }
    return;
  }
  timer.deadline_ = deadline;
  timer.index_ = heap_.size();
  heap_.push_back(&timer);
  siftUp(timer.index_);
}

void TimerQueue::cancel(Timer& timer) {
  if (timer.armed()) {
    removeAt(timer.index_);
  }
}

size_t TimerQueue::expire(uint64_t now) {
  size_t fired = 0;
  while (!heap_.empty() && heap_.front()->deadline_ <= now) {
    Timer* t = heap_.front();
    removeAt(0);
    ++fired;
    t->onTimer(now);  // may reschedule itself or destroy its owner
  }
  return fired;
}

void TimerQueue::swapAt(size_t a, size_t b) {
  std::swap(heap_[a], heap_[b]);
  heap_[a]->index_ = a;
  heap_[b]->index_ = b;
}

void TimerQueue::siftUp(size_t i) {
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (heap_[parent]->deadline_ <= heap_[i]->deadline_) {
      break;
    }
    swapAt(i, parent);
    i = parent;
  }
}

void TimerQueue::siftDown(size_t i) {
  const size_t n = heap_.size();
  while (true) {
    size_t smallest = i;
    size_t l = 2 * i + 1;
    size_t r = l + 1;
    if (l < n && heap_[l]->deadline_ < heap_[smallest]->deadline_) {
      smallest = l;
    }
    if (r < n && heap_[r]->deadline_ < heap_[smallest]->deadline_) {
      smallest = r;
    }
    if (smallest == i) {
      break;
    }
    swapAt(i, smallest);
    i = smallest;
  }
}

void TimerQueue::removeAt(size_t i) {
  Timer* t = heap_[i];
  size_t last = heap_.size() - 1;
  if (i != last) {
    swapAt(i, last);
  }
  heap_.pop_back();
  t->index_ = Timer::kNone;
  if (i < heap_.size()) {
    siftUp(i);
    siftDown(i);
  }
}

}  // namespace grelay::proxy
