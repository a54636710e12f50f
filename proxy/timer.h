// Deadlines of a worker's sessions: an indexed binary heap of intrusive timers, so a
// session can move or drop its one timer in O(log n) and the worker sleeps exactly
// until the earliest deadline.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace grelay::proxy {

class Timer {
public:
  virtual void onTimer(uint64_t now) noexcept = 0;
  bool armed() const { return index_ != kNone; }
  uint64_t deadline() const { return deadline_; }

protected:
  ~Timer() = default;

private:
  friend class TimerQueue;
  static constexpr size_t kNone = ~size_t{0};
  uint64_t deadline_ = 0;
  size_t index_ = kNone;
};

class TimerQueue {
public:
  // Arms or moves `timer` to `deadline` (monotonic ns).
  void schedule(Timer& timer, uint64_t deadline);
  void cancel(Timer& timer);
  // Fires every timer due at `now`; returns how many fired.
  size_t expire(uint64_t now);
  // The earliest deadline, or 0 when nothing is armed.
  uint64_t next() const { return heap_.empty() ? 0 : heap_.front()->deadline_; }
  size_t size() const { return heap_.size(); }

private:
  void siftUp(size_t i);
  void siftDown(size_t i);
  void swapAt(size_t a, size_t b);
  void removeAt(size_t i);

  std::vector<Timer*> heap_;
};

}  // namespace grelay::proxy
