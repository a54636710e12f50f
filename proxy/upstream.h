// An upstream pool shared by all workers: its servers, the balancing between them and
// their passive health (servers that keep failing to connect are tried last for a while).
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
  // round_robin rotates the starting server; least_conn sorts by open connections. Servers
  // marked down (see connectFailed) come after all the others, in the same policy order,
  // so a session still tries them when every other server fails. Fills `order` (size()
  // entries); `now` is monotonic ns.
  void pickOrder(std::vector<uint32_t>& order, uint64_t now);

  // Open-connection accounting for least_conn (any thread).
  void connected(uint32_t server) { active_[server].fetch_add(1, std::memory_order_relaxed); }
  void disconnected(uint32_t server) { active_[server].fetch_sub(1, std::memory_order_relaxed); }
  int64_t activeConnections(uint32_t server) const {
    return active_[server].load(std::memory_order_relaxed);
  }

  // Passive health (any thread). A connect to `server` (TCP, and the TLS handshake when
  // the pool uses TLS) failed: after max_fails consecutive failures the server is marked
  // down until now + fail_timeout. Returns true when this call marked it down (it was
  // not down already), so the caller counts and logs each marking once.
  bool connectFailed(uint32_t server, uint64_t now);
  // A connect to `server` succeeded: its failures are forgotten and it is up again.
  void connectSucceeded(uint32_t server);
  bool down(uint32_t server, uint64_t now) const;

private:
  struct Health {
    std::atomic<uint32_t> failures{0};   // consecutive failed connects
    std::atomic<uint64_t> downUntil{0};  // monotonic ns; down while now < downUntil
  };

  const config::UpstreamConfig& config_;
  std::atomic<uint64_t> next_{0};
  std::unique_ptr<std::atomic<int64_t>[]> active_;
  std::unique_ptr<Health[]> health_;
};

}  // namespace grelay::proxy
