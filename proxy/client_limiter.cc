#include "proxy/client_limiter.h"

#include <netinet/in.h>

#include <cstring>

namespace grelay::proxy {

ClientLimiter::Key ClientLimiter::keyOf(const sockaddr_storage& client) {
  // IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), so both spellings of a client count once.
  Key key{};
  if (client.ss_family == AF_INET6) {
    std::memcpy(key.data(), &reinterpret_cast<const sockaddr_in6&>(client).sin6_addr, 16);
  } else if (client.ss_family == AF_INET) {
    key[10] = 0xff;
    key[11] = 0xff;
    std::memcpy(key.data() + 12, &reinterpret_cast<const sockaddr_in&>(client).sin_addr, 4);
  }
  return key;
}

size_t ClientLimiter::KeyHash::operator()(const Key& k) const noexcept {
  // FNV-1a: cheap, and the shard and bucket both take it.
  uint64_t h = 1469598103934665603ull;
  for (uint8_t b : k) {
    h = (h ^ b) * 1099511628211ull;
  }
  return static_cast<size_t>(h ^ (h >> 32));
}

bool ClientLimiter::acquire(const sockaddr_storage& client) {
  const Key key = keyOf(client);
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
  const Key key = keyOf(client);
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

}  // namespace grelay::proxy
