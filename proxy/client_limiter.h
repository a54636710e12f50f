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

// A client address as the per-client limits count it: port ignored, an IPv4-mapped IPv6
// address as its IPv4 address.
using ClientKey = std::array<uint8_t, 16>;
ClientKey clientKeyOf(const sockaddr_storage& client);
struct ClientKeyHash {
  size_t operator()(const ClientKey& k) const noexcept;
};

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
  struct Shard {
    mutable std::mutex mutex;
    std::unordered_map<ClientKey, uint32_t, ClientKeyHash> open;
  };
  static constexpr size_t kShards = 16;
  Shard& shardOf(const ClientKey& key) { return shards_[ClientKeyHash{}(key) % kShards]; }

  std::atomic<uint32_t> limit_;
  std::array<Shard, kShards> shards_;
};

// max_connection_rate_per_client: how fast each client address may open connections to a
// listener, across its workers and a reload: a token bucket per address holding at most
// `rate` tokens (a burst of `rate` connections), one back every 1/rate s. A connection
// takes a token or is refused. An address whose bucket has filled up again is forgotten
// (swept about once a second per shard), so the table holds only the clients that
// connected within about the last second.
class ClientRateLimiter {
public:
  explicit ClientRateLimiter(uint32_t rate) : rate_(rate) {}
  ClientRateLimiter(const ClientRateLimiter&) = delete;
  ClientRateLimiter& operator=(const ClientRateLimiter&) = delete;

  // Takes one of `client`'s tokens at `nowNanos` (a monotonic clock); false, taking
  // nothing, when it has none.
  bool admit(const sockaddr_storage& client, uint64_t nowNanos);
  // Addresses remembered (for tests).
  size_t clients() const;
  uint32_t rate() const { return rate_.load(std::memory_order_relaxed); }
  // A reload's new value; buckets fill up to it from then on.
  void setRate(uint32_t rate) { rate_.store(rate, std::memory_order_relaxed); }

private:
  struct Bucket {
    uint64_t credit = 0;  // tokens x 1e9
    uint64_t at = 0;      // when `credit` was reckoned
  };
  struct Shard {
    mutable std::mutex mutex;
    std::unordered_map<ClientKey, Bucket, ClientKeyHash> buckets;
    uint64_t sweptAt = 0;
  };
  static constexpr size_t kShards = 16;
  Shard& shardOf(const ClientKey& key) { return shards_[ClientKeyHash{}(key) % kShards]; }

  std::atomic<uint32_t> rate_;
  std::array<Shard, kShards> shards_;
};

}  // namespace grelay::proxy
