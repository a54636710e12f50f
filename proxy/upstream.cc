#include "proxy/upstream.h"

#include <algorithm>

namespace grelay::proxy {

UpstreamPool::UpstreamPool(const config::UpstreamConfig& config)
    : config_(config), active_(new std::atomic<int64_t>[config.servers.size()]) {
  for (size_t i = 0; i < config.servers.size(); ++i) {
    active_[i].store(0);
  }
}

void UpstreamPool::pickOrder(std::vector<uint32_t>& order) {
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
}

}  // namespace grelay::proxy
