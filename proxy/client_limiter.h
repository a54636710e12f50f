// max_connections_per_client: how many sessions each client address has open on a
// listener, shared by the listener's workers and handed on to the next configuration
// generation (a reload), so sessions still open on the old one keep counting. Sharded by
// address, one small lock per shard, taken once when a session starts and once when it
// ends (never per chunk).
#pragma once

#include <sys/socket.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace grelay::proxy {

class ClientLimiter {
public:
  explicit ClientLimiter(uint32_t limit) : limit_(limit) {}
  ClientLimiter(const ClientLimiter&) = delete;
  ClientLimiter& operator=(const ClientLimiter&) = delete;

  // Counts a session of `client` (port ignored; an IPv4-mapped IPv6 address is its IPv4
  // address) unless it already has `limit` open: then false and nothing is counted.
  bool acquire(const sockaddr_storage& client);
  // Ends a session acquire() counted.
  void release(const sockaddr_storage& client);
  // Clients with a session open (for tests).
  size_t clients() const;
  uint32_t limit() const { return limit_.load(std::memory_order_relaxed); }
  // A reload's new value: sessions over it stay; new ones wait until the count is below.
  void setLimit(uint32_t limit) { limit_.store(limit, std::memory_order_relaxed); }

private:
  using Key = std::array<uint8_t, 16>;
  struct KeyHash {
    size_t operator()(const Key& k) const noexcept;
  };
  struct Shard {
    mutable std::mutex mutex;
    std::unordered_map<Key, uint32_t, KeyHash> open;
  };
  static constexpr size_t kShards = 16;
  static Key keyOf(const sockaddr_storage& client);
  Shard& shardOf(const Key& key) { return shards_[KeyHash{}(key) % kShards]; }

  std::atomic<uint32_t> limit_;
  std::array<Shard, kShards> shards_;
};

}  // namespace grelay::proxy
