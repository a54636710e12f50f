#include "proxy/upstream.h"

#include <algorithm>
#include <chrono>

namespace grelay::proxy {

UpstreamPool::UpstreamPool(const config::UpstreamConfig& config)
    : config_(config),
      active_(new std::atomic<int64_t>[config.servers.size()]),
      health_(new Health[config.servers.size()]) {
  for (size_t i = 0; i < config.servers.size(); ++i) {
    active_[i].store(0);
  }
}

void UpstreamPool::pickOrder(std::vector<uint32_t>& order, uint64_t now) {
  const size_t n = size();
  order.resize(n);
  const uint64_t start = next_.fetch_add(1, std::memory_order_relaxed);
  for (size_t i = 0; i < n; ++i) {
    order[i] = static_cast<uint32_t>((start + i) % n);
  }
  if (config_.balance == config::Balance::LeastConn) {
    // Ties keep the rotated order, so equal servers still share the load.
    std::stable_sort(order.begin(), order.end(), [this](uint32_t a, uint32_t b) {
      return activeConnections(a) < activeConnections(b);
    });
  }
  if (config_.max_fails > 0 && n > 1) {
    std::stable_partition(order.begin(), order.end(),
                          [this, now](uint32_t s) { return !down(s, now); });
  }
}

bool UpstreamPool::connectFailed(uint32_t server, uint64_t now) {
  if (config_.max_fails == 0) {
    return false;
  }
  Health& h = health_[server];
  const uint32_t failures = h.failures.fetch_add(1, std::memory_order_relaxed) + 1;
  if (failures < config_.max_fails) {
    return false;
  }
  const uint64_t until =
      now + static_cast<uint64_t>(
                std::chrono::duration_cast<std::chrono::nanoseconds>(config_.fail_timeout).count());
  uint64_t current = h.downUntil.load(std::memory_order_relaxed);
  while (current < until) {
    // A failure while already down (a session that tried it last, or a connect that
    // started before the marking) extends the period but is not a new marking.
    if (h.downUntil.compare_exchange_weak(current, until, std::memory_order_relaxed)) {
      return current <= now;
    }
  }
  return false;
}

void UpstreamPool::connectSucceeded(uint32_t server) {
  Health& h = health_[server];
  if (h.failures.load(std::memory_order_relaxed) != 0) {
    h.failures.store(0, std::memory_order_relaxed);
  }
  if (h.downUntil.load(std::memory_order_relaxed) != 0) {
    h.downUntil.store(0, std::memory_order_relaxed);
  }
}

bool UpstreamPool::down(uint32_t server, uint64_t now) const {
  return now < health_[server].downUntil.load(std::memory_order_relaxed);
}

}  // namespace grelay::proxy
