#include "proxy/client_limiter.h"

#include <netinet/in.h>

#include <algorithm>
#include <cstring>

namespace grelay::proxy {

ClientKey clientKeyOf(const sockaddr_storage& client) {
  // IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), so both spellings of a client count once.
  ClientKey key{};
  if (client.ss_family == AF_INET6) {
    std::memcpy(key.data(), &reinterpret_cast<const sockaddr_in6&>(client).sin6_addr, 16);
  } else if (client.ss_family == AF_INET) {
    key[10] = 0xff;
    key[11] = 0xff;
    std::memcpy(key.data() + 12, &reinterpret_cast<const sockaddr_in&>(client).sin_addr, 4);
  }
  return key;
}

size_t ClientKeyHash::operator()(const ClientKey& k) const noexcept {
  // FNV-1a: cheap, and the shard and bucket both take it.
  uint64_t h = 1469598103934665603ull;
  for (uint8_t b : k) {
    h = (h ^ b) * 1099511628211ull;
  }
  return static_cast<size_t>(h ^ (h >> 32));
}

bool ClientLimiter::acquire(const sockaddr_storage& client) {
  const ClientKey key = clientKeyOf(client);
  Shard& shard = shardOf(key);
  std::lock_guard<std::mutex> lock(shard.mutex);
  uint32_t& open = shard.open[key];
  if (open >= limit()) {
    if (open == 0) {
      shard.open.erase(key);  // limit 0 admits nobody; leave no empty entry behind
    }
    return false;
  }
  ++open;
  return true;
}

void ClientLimiter::release(const sockaddr_storage& client) {
  const ClientKey key = clientKeyOf(client);
  Shard& shard = shardOf(key);
  std::lock_guard<std::mutex> lock(shard.mutex);
  auto it = shard.open.find(key);
  if (it == shard.open.end()) {
    return;
  }
  if (--it->second == 0) {
    shard.open.erase(it);  // the map holds only clients with sessions open
  }
}

size_t ClientLimiter::clients() const {
  size_t n = 0;
  for (const Shard& s : shards_) {
    std::lock_guard<std::mutex> lock(s.mutex);
    n += s.open.size();
  }
  return n;
}

namespace {

constexpr uint64_t kToken = 1'000'000'000ull;  // a token in credits: one a nanosecond at 1/s

// A bucket's credit at `now`: what it had at `at` plus `rate` credits a nanosecond since,
// up to a full bucket (exact integers: a token comes back exactly 1/rate s after).
uint64_t creditAt(uint64_t credit, uint64_t at, uint64_t now, uint64_t rate) {
  const uint64_t full = rate * kToken;
  const uint64_t elapsed = now > at ? now - at : 0;
  return elapsed >= kToken ? full : std::min(full, credit + elapsed * rate);
}

}  // namespace

bool ClientRateLimiter::admit(const sockaddr_storage& client, uint64_t nowNanos) {
  const ClientKey key = clientKeyOf(client);
  const uint64_t rate = this->rate();
  Shard& shard = shardOf(key);
  std::lock_guard<std::mutex> lock(shard.mutex);
  if (nowNanos - shard.sweptAt >= kToken) {
    // Forget the addresses whose bucket is full again: they are as if never seen.
    std::erase_if(shard.buckets, [&](const auto& entry) {
      const Bucket& b = entry.second;
      return creditAt(b.credit, b.at, nowNanos, rate) == rate * kToken;
    });
    shard.sweptAt = nowNanos;
  }
  auto [it, added] = shard.buckets.try_emplace(key, Bucket{rate * kToken, nowNanos});
  Bucket& bucket = it->second;
  bucket.credit = creditAt(bucket.credit, bucket.at, nowNanos, rate);
  bucket.at = std::max(bucket.at, nowNanos);
  if (bucket.credit < kToken) {
    return false;
  }
  bucket.credit -= kToken;
  return true;
}

size_t ClientRateLimiter::clients() const {
  size_t n = 0;
  for (const Shard& s : shards_) {
    std::lock_guard<std::mutex> lock(s.mutex);
    n += s.buckets.size();
  }
  return n;
}

}  // namespace grelay::proxy
