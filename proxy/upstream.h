// An upstream pool shared by all workers: its servers, the balancing between them and
// their passive health (servers that keep failing to connect are tried last for a while).
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "config/config.h"
#include "metrics/stats.h"
#include "proxy/slot_queue.h"

namespace grelay::proxy {

// Passive health of one peer (an upstream server or a mirror), shared by all workers: after
// `maxFails` connects in a row fail it is marked down until now + failTimeout, and a
// successful connect brings it back at once. maxFails 0 = never marked down.
class PeerHealth {
public:
  // Returns true when this call marked the peer down (it was not down already), so the
  // caller counts and logs each marking once. A failure while down (a connect that
  // started before the marking, or a probe) extends the period, without a new marking.
  bool connectFailed(uint64_t now, uint32_t maxFails, config::Duration failTimeout);
  // Forgets the failures; a peer that was marked down (even if its period is over) is up
  // again from `now` (monotonic ns), which starts its slow start.
  void connectSucceeded(uint64_t now);
  // Keeps a peer that is down down until at least `until` (monotonic ns); no-op when up.
  void holdDown(uint64_t now, uint64_t until);
  bool down(uint64_t now) const { return now < downUntil_.load(std::memory_order_relaxed); }
  // Health checks in a row that connected while the peer was down (check_passes): the
  // count after this one. Only the health-check thread counts.
  uint32_t checkPassed() { return checkPasses_.fetch_add(1, std::memory_order_relaxed) + 1; }
  void checkFailed() { checkPasses_.store(0, std::memory_order_relaxed); }
  // Takes over `other`'s state (a reload's new pool or listener for the same peer).
  void copyFrom(const PeerHealth& other);

  // Slow start: how far into a ramp of `window` ns the peer is, in thousandths (1000 =
  // done, or never marked down). A ramp starts when a peer marked down is up again, or
  // with startRamp() (a server new to a reloaded pool).
  uint32_t rampPermille(uint64_t now, uint64_t window) const;
  void startRamp(uint64_t now) { upSince_.store(now, std::memory_order_relaxed); }
  void copyRamp(const PeerHealth& other) {
    upSince_.store(other.upSince_.load(std::memory_order_relaxed), std::memory_order_relaxed);
  }
  // Whether the peer takes this turn of its ramp: exactly `permille` thousandths of the
  // turns offered, spread evenly (any thread).
  bool takeRampTurn(uint32_t permille);

private:
  std::atomic<uint32_t> failures_{0};   // consecutive failed connects
  std::atomic<uint64_t> downUntil_{0};  // monotonic ns; down while now < downUntil_
  std::atomic<uint32_t> checkPasses_{0};
  std::atomic<uint64_t> upSince_{0};    // monotonic ns: when it was last up again
  std::atomic<uint64_t> rampTurns_{0};  // turns offered to it while ramping
};

// FNV-1a of a client's IP address, and of its port too with `withPort`: the same value on
// every worker and across restarts (balance = "source", mirror sampling). 0 for families
// other than IPv4 and IPv6.
uint64_t clientHash(const sockaddr_storage& address, bool withPort);

class UpstreamPool final : public metrics::UpstreamView {
public:
  explicit UpstreamPool(const config::UpstreamConfig& config);

  // metrics::UpstreamView (any thread)
  size_t serverCount() const override { return size(); }
  int64_t serverActive(size_t server) const override {
    return activeConnections(static_cast<uint32_t>(server));
  }
  bool serverDown(size_t server) const override;
  double serverWeight(size_t server) const override;
  uint64_t serverSessions(size_t server) const override {
    return counts_[server]->sessions.load(std::memory_order_relaxed);
  }
  uint64_t serverConnectFailures(size_t server) const override {
    return counts_[server]->connectFailures.load(std::memory_order_relaxed);
  }

  const config::UpstreamConfig& config() const { return config_; }
  size_t size() const { return config_.servers.size(); }
  const config::Address& server(size_t i) const { return config_.servers[i].address; }

  // The order in which a new session tries the servers (each at most once), by policy:
  // round_robin starts at the next server of a smooth weighted rotation (a server of
  // weight w starts w of every sum-of-weights sessions, spread out, across all workers),
  // then the others in index order from there; source starts at the place in that
  // rotation that `client` (clientHash() of the client's address) picks, so a client
  // keeps its server while the pool's servers stay up (with hash_type = "consistent" the
  // client's point on the hash ring picks the server, and the next distinct servers on
  // the ring, up to kRingFallbacks of them, follow it, then the rest in index order);
  // least_conn sorts by open
  // connections per unit of weight, ties in the rotated order. Backup servers come after
  // the others, in the same policy order among themselves; servers marked down (see
  // connectFailed) come after all servers that are not, so a session still tries them
  // when every other server fails. With slow_start, a server ramping up declines the
  // share of its round_robin turns it is not ready for (it moves behind the other
  // primaries, so the next server takes the turn), and counts for least_conn with its
  // weight scaled by its progress. Fills `order` (size() entries); `now` is monotonic ns.
  void pickOrder(std::vector<uint32_t>& order, uint64_t now, uint64_t client = 0);

  // Connection accounting (any thread), for least_conn, max_conns and the metrics: a
  // session takes a slot before it connects and gives it back when that connection ends
  // or fails. False (nothing taken) when the server has max_conns connections already.
  bool acquire(uint32_t server);
  void release(uint32_t server) { counts_[server]->active.fetch_sub(1, std::memory_order_relaxed); }
  int64_t activeConnections(uint32_t server) const {
    return counts_[server]->active.load(std::memory_order_relaxed);
  }

  // queue_timeout's waiting sessions (any thread): false (nothing taken) when max_queue
  // are waiting already. Shared with the pool of the same name across a reload.
  bool enterQueue();
  void leaveQueue() { queued_->fetch_sub(1, std::memory_order_relaxed); }
  int64_t queuedSessions() const { return queued_->load(std::memory_order_relaxed); }
  // Whether a new session trying the servers of `order` would wait for a slot now: the
  // pool has a queue_timeout and sessions are waiting already or every server of `order`
  // is at max_conns (a snapshot: slots come and go on other workers).
  bool wouldWait(const std::vector<uint32_t>& order) const;
  // The order of this pool's waiting sessions across workers (each worker's SlotQueue).
  const std::shared_ptr<SlotBoard>& slotBoard() const { return slotBoard_; }
  // A session that waited for a slot of `from` waits for one of this pool now (a DNS move
  // replaced `from`): it counts against this pool's max_queue (one count when the pools
  // share it, as inheritHealth makes them), admitted whatever the count.
  void takeWaiter(UpstreamPool& from);

  // A session is connected to `server` (TCP, and the TLS handshake for a TLS pool), or
  // its connect failed: the per-server counts (not health checks'; any thread).
  void sessionConnected(uint32_t server) {
    counts_[server]->sessions.fetch_add(1, std::memory_order_relaxed);
  }
  void sessionConnectFailed(uint32_t server) {
    counts_[server]->connectFailures.fetch_add(1, std::memory_order_relaxed);
  }

  // Passive health (any thread). A connect to `server` (TCP, and the TLS handshake when
  // the pool uses TLS) failed: after max_fails consecutive failures the server is marked
  // down until now + fail_timeout. Returns true when this call marked it down (it was
  // not down already), so the caller counts and logs each marking once.
  bool connectFailed(uint32_t server, uint64_t now);
  // A connect to `server` succeeded: its failures are forgotten and it is up again (its
  // slow start begins at `now` if it was marked down).
  void connectSucceeded(uint32_t server, uint64_t now);
  bool down(uint32_t server, uint64_t now) const { return health_[server]->down(now); }
  // A server marked down stays down until at least `until` (health checks counting
  // check_passes); no-op when it is up.
  void holdDown(uint32_t server, uint64_t now, uint64_t until) {
    health_[server]->holdDown(now, until);
  }
  // check_passes: see PeerHealth.
  uint32_t checkPassed(uint32_t server) { return health_[server]->checkPassed(); }
  void checkFailed(uint32_t server) { health_[server]->checkFailed(); }

  // A reload's new pool takes over the health of the servers it shares (same address)
  // with `previous` (the pool of the same name in the configuration it replaces): a
  // server marked down stays down for the rest of its period, and failures (and health
  // checks passed, check_passes) in a row keep counting, and a slow start goes on; a
  // server it does not share begins its slow start at `now`. The open-connection counts
  // of shared servers become one: sessions of either generation count against max_conns
  // (and for least_conn) in both, and so does the count of sessions waiting for a slot
  // (max_queue). Before any session uses this pool.
  void inheritHealth(const UpstreamPool& previous, uint64_t now);
  // A DNS move's new pool (the same configuration but addresses) goes on from `previous`:
  // as inheritHealth, but the servers it shares have one health in both (a check or a
  // connect that reports to `previous` after the move counts here too), and the sessions
  // that wait for a slot of `previous` come over keeping their turns (their tickets of
  // the same board), so the order of waiting sessions across workers survives the move.
  // A moved server written with one address (its `server` label the same) continues the
  // old address's session and failure totals. Before any session uses this pool.
  void followMove(const UpstreamPool& previous, uint64_t now);

  // Slow start progress of `server` in thousandths; 1000 when slow_start is 0.
  uint32_t rampPermille(uint32_t server, uint64_t now) const;

  // Points per unit of weight (weights divided by their gcd) on the consistent-hash ring,
  // fewer when the ring would exceed kMaxRing points; how many servers after the owner a
  // session takes from the ring (the rest follow in index order).
  static constexpr uint32_t kRingPoints = 160;
  static constexpr size_t kMaxRing = size_t{1} << 20;
  static constexpr size_t kRingFallbacks = 8;

private:
  void takeOver(const UpstreamPool& previous, uint64_t now, bool move);
  // `fresh`: [server] whether its endpoint is new to the pool (its counters are its own).
  void continueCounters(const UpstreamPool& previous, const std::vector<bool>& fresh);
  void ringOrder(std::vector<uint32_t>& order, uint64_t client) const;
  void deferRamping(std::vector<uint32_t>& order, uint64_t now);
  static void rotate(std::vector<uint32_t>& order, const std::vector<uint32_t>& members,
                     size_t first);

  const config::UpstreamConfig& config_;
  const uint64_t slowStart_;  // ns; 0 = off
  // One cycle of the weighted rotation: the non-backup servers, each weight times, their
  // turns spread over the cycle; sessions take their first server from it in turn.
  std::vector<uint32_t> rotation_;   // indexes into primaries_
  std::vector<uint32_t> primaries_;  // non-backup servers, in index order
  std::vector<uint32_t> backups_;    // backup servers, in index order
  // hash_type = "consistent": (point, index into primaries_), sorted by point.
  std::vector<std::pair<uint64_t, uint32_t>> ring_;
  std::atomic<uint64_t> next_{0};
  // Per server: open connections, sessions and failed connects, shared with the pools of
  // earlier and later generations (and DNS moves) for the same endpoint (inheritHealth), so
  // max_conns and least_conn count the sessions a reload left on the old configuration
  // too, and the per-server counters go on.
  struct ServerCounts {
    std::atomic<int64_t> active{0};
    std::atomic<uint64_t> sessions{0};
    std::atomic<uint64_t> connectFailures{0};
  };
  std::vector<std::shared_ptr<ServerCounts>> counts_;
  std::shared_ptr<std::atomic<int64_t>> queued_ = std::make_shared<std::atomic<int64_t>>(0);
  // Not shared across a reload (another generation's sessions wait in other queues), only
  // with a DNS move's new pool (followMove).
  std::shared_ptr<SlotBoard> slotBoard_ = std::make_shared<SlotBoard>();
  // Per server; shared with a DNS move's next pool for the same endpoint (followMove).
  std::vector<std::shared_ptr<PeerHealth>> health_;
};

}  // namespace grelay::proxy
