// max_connection_rate: new connections a listener takes per second, shared by its
// workers and handed on to the next configuration generation (a reload must not open a
// fresh burst).
//
// A token bucket in its GCRA form (one atomic: the theoretical arrival time of the next
// connection): connections are spaced 1/rate apart, with a burst of up to `burst` at once
// after a quiet spell. A worker takes a token before it accepts the next connection; with
// none left it stops accepting until the returned time and the connections wait in the
// kernel's accept queue (what HAProxy's `rate-limit sessions` does), rather than being
// accepted and reset.
#pragma once

#include <atomic>
#include <cstdint>

namespace grelay::proxy {

class RateLimiter {
public:
  RateLimiter(uint32_t perSecond, uint32_t burst) { setRate(perSecond, burst); }
  RateLimiter(const RateLimiter&) = delete;
  RateLimiter& operator=(const RateLimiter&) = delete;

  // The burst max_connection_rate allows: a tenth of a second's worth, at least 1.
  static uint32_t defaultBurst(uint32_t perSecond) { return perSecond >= 20 ? perSecond / 10 : 1; }

  // Takes a token at `now` (monotonic ns): true, or false and `*retryAt` the earliest
  // time one is free (nothing taken).
  bool take(uint64_t now, uint64_t* retryAt);
  // A reload's new rate; the spacing already promised stays.
  void setRate(uint32_t perSecond, uint32_t burst);
  uint32_t perSecond() const { return perSecond_.load(std::memory_order_relaxed); }

private:
  std::atomic<uint32_t> perSecond_{1};
  std::atomic<uint64_t> interval_{1'000'000'000};  // ns between connections
  std::atomic<uint64_t> tolerance_{0};             // (burst - 1) intervals
  std::atomic<uint64_t> next_{0};                  // theoretical arrival time of the next one
};

}  // namespace grelay::proxy
