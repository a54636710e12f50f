// An upstream pool shared by all workers: its servers and the balancing between them.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "config/config.h"

namespace grelay::proxy {

class UpstreamPool {
public:
  explicit UpstreamPool(const config::UpstreamConfig& config);

  const config::UpstreamConfig& config() const { return config_; }
  size_t size() const { return config_.servers.size(); }
  const config::Address& server(size_t i) const { return config_.servers[i]; }

  // The order in which a new session tries the servers (each at most once), by policy:
  // round_robin rotates the starting server; least_conn sorts by open connections.
  // Fills `order` (size() entries).
  void pickOrder(std::vector<uint32_t>& order);

  // Open-connection accounting for least_conn (any thread).
  void connected(uint32_t server) { active_[server].fetch_add(1, std::memory_order_relaxed); }
  void disconnected(uint32_t server) { active_[server].fetch_sub(1, std::memory_order_relaxed); }
  int64_t activeConnections(uint32_t server) const {
    return active_[server].load(std::memory_order_relaxed);
  }

private:
  const config::UpstreamConfig& config_;
  std::atomic<uint64_t> next_{0};
  std::unique_ptr<std::atomic<int64_t>[]> active_;
};

}  // namespace grelay::proxy
