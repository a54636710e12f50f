#include "proxy/upstream.h"

#include <netinet/in.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <queue>
#include <string>
#include <unordered_map>
#include <utility>

#include "proxy/log.h"

namespace grelay::proxy {

namespace {

uint32_t gcd(uint32_t a, uint32_t b) {
  while (b != 0) {
    a %= b;
    std::swap(a, b);
  }
  return a;
}

// splitmix64's finalizer: FNV-1a of similar inputs differs in few bits; ring points and
// client positions must spread over the whole 64-bit circle.
uint64_t spread(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t fnv(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

uint64_t clientHash(const sockaddr_storage& address, bool withPort) {
  const uint8_t* bytes = nullptr;
  size_t length = 0;
  uint16_t port = 0;
  if (address.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(address);
    bytes = reinterpret_cast<const uint8_t*>(&a.sin_addr);
    length = sizeof(a.sin_addr);
    port = a.sin_port;
  } else if (address.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(address);
    bytes = reinterpret_cast<const uint8_t*>(&a.sin6_addr);
    length = sizeof(a.sin6_addr);
    port = a.sin6_port;
  } else {
    return 0;
  }
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](uint8_t b) {
    h ^= b;
    h *= 1099511628211ull;
  };
  for (size_t i = 0; i < length; ++i) {
    mix(bytes[i]);
  }
  if (withPort) {
    mix(static_cast<uint8_t>(port >> 8));
    mix(static_cast<uint8_t>(port & 0xff));
  }
  return h;
}

UpstreamPool::UpstreamPool(const config::UpstreamConfig& config)
    : config_(config),
      slowStart_(config.balance == config::Balance::Source
                     ? 0
                     : static_cast<uint64_t>(
                           std::chrono::duration_cast<std::chrono::nanoseconds>(config.slow_start)
                               .count())) {
  for (size_t i = 0; i < config.servers.size(); ++i) {
    counts_.push_back(std::make_shared<ServerCounts>());
    health_.push_back(std::make_shared<PeerHealth>());
    (config.servers[i].backup ? backups_ : primaries_).push_back(static_cast<uint32_t>(i));
  }
  // One cycle of a smooth weighted rotation (stride scheduling): server j's k-th turn
  // (from 0) falls at (k + 1/2) / w_j of the cycle, turns in that order, ties to the lower
  // index. Weights 5,1,1 give a a a b c a a rather than a a a a a b c. Divided by their
  // gcd first, so equal weights make a cycle of one session per server (0, 1, 2, ...).
  // O(total log n) with a heap: a pool of thousands of servers builds in milliseconds.
  uint32_t divisor = 0;
  for (uint32_t s : primaries_) {
    divisor = gcd(divisor, config.servers[s].weight);
  }
  std::vector<uint64_t> weight;
  uint64_t total = 0;
  for (uint32_t s : primaries_) {
    weight.push_back(config.servers[s].weight / std::max<uint32_t>(divisor, 1));
    total += weight.back();
  }
  std::vector<uint64_t> turns(primaries_.size(), 0);
  // (2k + 1) / (2 w_a) later than (2k' + 1) / (2 w_b), in integers; ties: higher index.
  auto later = [&](uint32_t a, uint32_t b) {
    const uint64_t ta = (2 * turns[a] + 1) * weight[b];
    const uint64_t tb = (2 * turns[b] + 1) * weight[a];
    return ta != tb ? ta > tb : a > b;
  };
  std::priority_queue<uint32_t, std::vector<uint32_t>, decltype(later)> next(later);
  for (uint32_t j = 0; j < primaries_.size(); ++j) {
    next.push(j);
  }
  if (config.balance == config::Balance::Source &&
      config.hash_type == config::HashType::Consistent) {
    // A server's points depend on its identity only (its name, else its address as
    // written; for one of a name's addresses (all_addresses) that address too), never on
    // its index: adding or removing others leaves them in place.
    const uint64_t perWeight = std::max<uint64_t>(
        1, std::min<uint64_t>(kRingPoints, kMaxRing / std::max<uint64_t>(total, 1)));
    ring_.reserve(static_cast<size_t>(total * perWeight));
    for (uint32_t j = 0; j < primaries_.size(); ++j) {
      const config::UpstreamServer& server = config.servers[primaries_[j]];
      const std::string id = server.name.empty()    ? server.address.text
                             : server.all_addresses ? server.label()
                                                    : server.name;
      for (uint64_t k = 0; k < weight[j] * perWeight; ++k) {
        ring_.emplace_back(spread(fnv(id + "#" + std::to_string(k))), j);
      }
    }
    std::sort(ring_.begin(), ring_.end());
  }
  rotation_.reserve(static_cast<size_t>(total));
  for (uint64_t step = 0; step < total; ++step) {
    const uint32_t j = next.top();
    next.pop();
    rotation_.push_back(j);  // an index into primaries_
    ++turns[j];
    if (turns[j] < weight[j]) {
      next.push(j);
    }
  }
}

// Appends `members` to `order` starting at members[first], then the ones after it,
// wrapping around.
void UpstreamPool::rotate(std::vector<uint32_t>& order, const std::vector<uint32_t>& members,
                          size_t first) {
  for (size_t i = 0; i < members.size(); ++i) {
    order.push_back(members[(first + i) % members.size()]);
  }
}

// The owner of the client's point on the ring, the next distinct servers clockwise (up
// to kRingFallbacks), then the other primaries in index order.
void UpstreamPool::ringOrder(std::vector<uint32_t>& order, uint64_t client) const {
  const uint64_t point = spread(client);
  auto it = std::lower_bound(ring_.begin(), ring_.end(), std::make_pair(point, uint32_t{0}));
  const size_t start = it == ring_.end() ? 0 : static_cast<size_t>(it - ring_.begin());
  const size_t want = std::min(primaries_.size(), kRingFallbacks);
  uint32_t taken[kRingFallbacks];
  size_t count = 0;
  for (size_t step = 0; step < ring_.size() && count < want; ++step) {
    const uint32_t j = ring_[(start + step) % ring_.size()].second;
    if (std::find(taken, taken + count, j) == taken + count) {
      taken[count++] = j;
      order.push_back(primaries_[j]);
    }
  }
  for (uint32_t j = 0; j < primaries_.size() && count < primaries_.size(); ++j) {
    if (std::find(taken, taken + count, j) == taken + count) {
      order.push_back(primaries_[j]);
    }
  }
}

void UpstreamPool::pickOrder(std::vector<uint32_t>& order, uint64_t now, uint64_t client) {
  const size_t n = size();
  order.clear();
  const uint64_t start = config_.balance == config::Balance::Source
                             ? client
                             : next_.fetch_add(1, std::memory_order_relaxed);
  if (!ring_.empty()) {
    ringOrder(order, client);
  } else {
    rotate(order, primaries_, rotation_.empty() ? 0 : rotation_[start % rotation_.size()]);
  }
  if (!backups_.empty()) {
    rotate(order, backups_, start % backups_.size());
  }
  if (config_.balance == config::Balance::LeastConn) {
    // Fewest open connections per unit of weight first; ties keep the rotated order, so
    // equal servers still share the load. Backups stay behind the others. A server in
    // slow start counts with its weight scaled by its progress (at least 1/1000 of it).
    // The sort sees one snapshot of the counts: other workers change them meanwhile, and a
    // comparison that changes its mind mid-sort lets std::stable_sort's insertion step
    // run past the range.
    thread_local std::vector<std::pair<int64_t, uint64_t>> load;  // (open, weight) by server
    load.resize(n);
    for (uint32_t s = 0; s < n; ++s) {
      const uint32_t permille = slowStart_ > 0 ? std::max(rampPermille(s, now), 1u) : 1000;
      load[s] = {activeConnections(s), uint64_t{config_.servers[s].weight} * permille};
    }
    auto fewer = [](uint32_t a, uint32_t b) {
      return load[a].first * static_cast<int64_t>(load[b].second) <
             load[b].first * static_cast<int64_t>(load[a].second);
    };
    auto backupsBegin = order.begin() + static_cast<std::ptrdiff_t>(primaries_.size());
    std::stable_sort(order.begin(), backupsBegin, fewer);
    std::stable_sort(backupsBegin, order.end(), fewer);
  } else if (slowStart_ > 0 && config_.balance == config::Balance::RoundRobin) {
    deferRamping(order, now);
  }
  if (config_.max_fails > 0 && n > 1) {
    std::stable_partition(order.begin(), order.end(),
                          [this, now](uint32_t s) { return !down(s, now); });
  }
}

// Round robin in slow start: while the first server declines its turn, it goes behind the
// other primaries (each server declines at most once per session; when every primary
// declines, the order is as it was).
void UpstreamPool::deferRamping(std::vector<uint32_t>& order, uint64_t now) {
  const auto end = order.begin() + static_cast<std::ptrdiff_t>(primaries_.size());
  for (size_t tries = 0; tries < primaries_.size(); ++tries) {
    const uint32_t first = order.front();
    const uint32_t permille = rampPermille(first, now);
    if (permille >= 1000 || health_[first]->takeRampTurn(permille)) {
      return;
    }
    std::rotate(order.begin(), order.begin() + 1, end);
  }
}

uint32_t UpstreamPool::rampPermille(uint32_t server, uint64_t now) const {
  return slowStart_ == 0 ? 1000 : health_[server]->rampPermille(now, slowStart_);
}

double UpstreamPool::serverWeight(size_t server) const {
  const uint64_t now = monotonicNanos();
  if (down(static_cast<uint32_t>(server), now)) {
    return 0;
  }
  return config_.servers[server].weight * rampPermille(static_cast<uint32_t>(server), now) / 1000.0;
}

uint32_t PeerHealth::rampPermille(uint64_t now, uint64_t window) const {
  const uint64_t since = upSince_.load(std::memory_order_relaxed);
  if (since == 0 || window == 0 || now >= since + window) {
    return 1000;
  }
  if (now <= since) {
    return 0;
  }
  // (now - since) < window <= 24 h in ns < 2^47: times 1000 stays far below 2^64.
  return static_cast<uint32_t>((now - since) * 1000 / window);
}

bool PeerHealth::takeRampTurn(uint32_t permille) {
  const uint64_t turn = rampTurns_.fetch_add(1, std::memory_order_relaxed);
  return (turn + 1) * permille / 1000 > turn * permille / 1000;
}

bool PeerHealth::connectFailed(uint64_t now, uint32_t maxFails, config::Duration failTimeout) {
  if (maxFails == 0) {
    return false;
  }
  const uint32_t failures = failures_.fetch_add(1, std::memory_order_relaxed) + 1;
  if (failures < maxFails) {
    return false;
  }
  const uint64_t until =
      now + static_cast<uint64_t>(
                std::chrono::duration_cast<std::chrono::nanoseconds>(failTimeout).count());
  uint64_t current = downUntil_.load(std::memory_order_relaxed);
  while (current < until) {
    if (downUntil_.compare_exchange_weak(current, until, std::memory_order_relaxed)) {
      return current <= now;
    }
  }
  return false;
}

void PeerHealth::connectSucceeded(uint64_t now) {
  if (failures_.load(std::memory_order_relaxed) != 0) {
    failures_.store(0, std::memory_order_relaxed);
  }
  if (downUntil_.load(std::memory_order_relaxed) != 0) {
    // Many connects may succeed at once: the first to see the marking starts the ramp.
    if (downUntil_.exchange(0, std::memory_order_relaxed) != 0) {
      upSince_.store(std::max<uint64_t>(now, 1), std::memory_order_relaxed);
    }
  }
  if (checkPasses_.load(std::memory_order_relaxed) != 0) {
    checkPasses_.store(0, std::memory_order_relaxed);
  }
}

void PeerHealth::holdDown(uint64_t now, uint64_t until) {
  uint64_t current = downUntil_.load(std::memory_order_relaxed);
  while (now < current && current < until) {
    if (downUntil_.compare_exchange_weak(current, until, std::memory_order_relaxed)) {
      return;
    }
  }
}

void PeerHealth::copyFrom(const PeerHealth& other) {
  failures_.store(other.failures_.load(std::memory_order_relaxed), std::memory_order_relaxed);
  downUntil_.store(other.downUntil_.load(std::memory_order_relaxed), std::memory_order_relaxed);
  checkPasses_.store(other.checkPasses_.load(std::memory_order_relaxed), std::memory_order_relaxed);
  copyRamp(other);
}

bool UpstreamPool::connectFailed(uint32_t server, uint64_t now) {
  return health_[server]->connectFailed(now, config_.max_fails, config_.fail_timeout);
}

void UpstreamPool::connectSucceeded(uint32_t server, uint64_t now) {
  health_[server]->connectSucceeded(now);
}

bool UpstreamPool::enterQueue() {
  const int64_t before = queued_->fetch_add(1, std::memory_order_relaxed);
  if (config_.max_queue != 0 && before >= static_cast<int64_t>(config_.max_queue)) {
    queued_->fetch_sub(1, std::memory_order_relaxed);
    return false;
  }
  return true;
}

void UpstreamPool::takeWaiter(UpstreamPool& from) {
  if (queued_ != from.queued_) {
    from.leaveQueue();
    queued_->fetch_add(1, std::memory_order_relaxed);
  }
}

bool UpstreamPool::acquire(uint32_t server) {
  const int64_t before = counts_[server]->active.fetch_add(1, std::memory_order_relaxed);
  const uint32_t max = config_.servers[server].max_conns;
  if (max != 0 && before >= static_cast<int64_t>(max)) {
    counts_[server]->active.fetch_sub(1, std::memory_order_relaxed);
    return false;
  }
  return true;
}

bool UpstreamPool::wouldWait(const std::vector<uint32_t>& order) const {
  if (config_.queue_timeout.count() == 0) {
    return false;
  }
  if (queuedSessions() > 0) {
    return true;
  }
  for (uint32_t server : order) {
    const uint32_t max = config_.servers[server].max_conns;
    if (max == 0 || activeConnections(server) < static_cast<int64_t>(max)) {
      return false;
    }
  }
  return !order.empty();
}

void UpstreamPool::inheritHealth(const UpstreamPool& previous, uint64_t now) {
  takeOver(previous, now, false);
}

void UpstreamPool::followMove(const UpstreamPool& previous, uint64_t now) {
  takeOver(previous, now, true);
  slotBoard_ = previous.slotBoard_;
}

void UpstreamPool::takeOver(const UpstreamPool& previous, uint64_t now, bool move) {
  queued_ = previous.queued_;
  // By endpoint key: a pool of thousands of addresses (all_addresses) moves in linear time.
  std::unordered_map<std::string, size_t> before;
  std::vector<bool> fresh(size(), true);  // [server]: an endpoint `previous` does not have
  before.reserve(previous.size());
  for (size_t j = 0; j < previous.size(); ++j) {
    before.emplace(config::endpointKey(previous.server(j)), j);
  }
  for (size_t i = 0; i < size(); ++i) {
    auto it = before.find(config::endpointKey(server(i)));
    const bool shared = it != before.end();
    if (shared) {
      const size_t j = it->second;
      fresh[i] = false;
      counts_[i] = previous.counts_[j];
      if (move) {
        health_[i] = previous.health_[j];
      } else if (config_.max_fails > 0) {
        health_[i]->copyFrom(*previous.health_[j]);
      } else {
        health_[i]->copyRamp(*previous.health_[j]);
      }
    }
    if (!shared && slowStart_ > 0) {
      health_[i]->startRamp(std::max<uint64_t>(now, 1));
    }
  }
  if (move) {
    continueCounters(previous, fresh);
  }
}

void UpstreamPool::continueCounters(const UpstreamPool& previous, const std::vector<bool>& fresh) {
  // A server written with one address keeps its `server` label when a move changes that
  // address: its session and failure totals go on from the old address's, or the
  // counters would drop to 0 (a reset to Prometheus, which loses what it had not
  // scraped). An all_addresses server's label names its address: a new address is a new
  // series.
  std::unordered_map<std::string, size_t> byLabel;
  for (size_t j = 0; j < previous.size(); ++j) {
    if (!previous.config_.servers[j].all_addresses) {
      byLabel.emplace(previous.config_.servers[j].label(), j);
    }
  }
  for (size_t i = 0; i < size() && !byLabel.empty(); ++i) {
    const config::UpstreamServer& server = config_.servers[i];
    auto it = !fresh[i] || server.all_addresses ? byLabel.end() : byLabel.find(server.label());
    if (it == byLabel.end()) {
      continue;  // (an address the pool had: its counters, shared)
    }
    const ServerCounts& was = *previous.counts_[it->second];
    counts_[i]->sessions.fetch_add(was.sessions.load(std::memory_order_relaxed),
                                   std::memory_order_relaxed);
    counts_[i]->connectFailures.fetch_add(was.connectFailures.load(std::memory_order_relaxed),
                                          std::memory_order_relaxed);
  }
}

bool UpstreamPool::serverDown(size_t server) const {
  return down(static_cast<uint32_t>(server), monotonicNanos());
}

}  // namespace grelay::proxy
