#include "proxy/rate_limiter.h"

#include <algorithm>

namespace grelay::proxy {

void RateLimiter::setRate(uint32_t perSecond, uint32_t burst) {
  perSecond = std::max<uint32_t>(perSecond, 1);
  burst = std::max<uint32_t>(burst, 1);
  const uint64_t interval = std::max<uint64_t>(1'000'000'000ull / perSecond, 1);
  perSecond_.store(perSecond, std::memory_order_relaxed);
  interval_.store(interval, std::memory_order_relaxed);
  tolerance_.store(interval * (burst - 1), std::memory_order_relaxed);
}

bool RateLimiter::take(uint64_t now, uint64_t* retryAt) {
  const uint64_t interval = interval_.load(std::memory_order_relaxed);
  const uint64_t tolerance = tolerance_.load(std::memory_order_relaxed);
  uint64_t next = next_.load(std::memory_order_relaxed);
  for (;;) {
    const uint64_t due = std::max(next, now);
    if (due - now > tolerance) {
      *retryAt = due - tolerance;  // then due - now == tolerance: allowed
      return false;
    }
    if (next_.compare_exchange_weak(next, due + interval, std::memory_order_relaxed)) {
      return true;
    }
  }
}

}  // namespace grelay::proxy
