// Active health checks: the servers of every upstream pool that sets check_interval get a
// TCP connect (then a close) each interval, from one thread per configuration generation,
// off the data path. A TLS pool's servers get a TLS handshake on top, verified as a
// session's would be (SNI, certificate, name), then close_notify: a server whose TLS is
// broken fails, and none sees a connection that never says ClientHello. A check that fails
// (refused, unreachable, handshake failed, no answer within check_timeout) counts like a
// session's failed connect toward max_fails and marks the server down; a good one brings a
// server marked down back (after check_passes in a row). So a dead server is found before
// sessions try it, and a revived one rejoins without waiting out fail_timeout. Each pool's
// rounds keep their own schedule, and each check reports as it ends. At most kMaxInFlight
// checks are open at once, taken in turn from the rounds under way, so a pool of many
// unanswering servers (each holding a slot for check_timeout) delays no other pool.
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <openssl/ssl.h>
#include <poll.h>

#include "metrics/stats.h"
#include "proxy/upstream.h"
#include "relay/buffer.h"

namespace grelay::proxy {

class HealthChecker {
public:
  struct Pool {
    std::shared_ptr<UpstreamPool> pool;  // its config sets check_interval
    metrics::UpstreamStats* stats = nullptr;
    SSL_CTX* tls = nullptr;  // the pool's client context; nullptr = plaintext
  };

  // Checks open at once, across the pools of a generation; more wait for a free slot.
  static constexpr size_t kMaxInFlight = 256;

  explicit HealthChecker(std::vector<Pool> pools, size_t maxInFlight = kMaxInFlight);
  ~HealthChecker();  // stop()
  HealthChecker(const HealthChecker&) = delete;
  HealthChecker& operator=(const HealthChecker&) = delete;

  // Starts the thread (the first round runs at once). 0 or -errno.
  int start();
  // Stops and joins the thread promptly, even mid-round (checks still open are dropped).
  // Idempotent.
  void stop();
  // A DNS move: `pools` (the same pools, in the same order, as moved) replace the ones
  // checked. A round under way finishes on the pool it began with (the servers the move
  // kept share their health with the new pool), a moved pool's new round begins at once,
  // and the others keep their schedule: a move neither drops checks nor adds rounds of
  // pools it left alone. Any thread.
  void setPools(std::vector<Pool> pools);

  // A round over each of the given pools now, on the calling thread, until they end: what
  // the thread runs each interval (for tests). Returns false if stop() interrupted it.
  bool checkNow(const std::vector<size_t>& pools);
  // For tests: the most checks that were open at the same moment.
  size_t peakInFlight() const { return peakInFlight_; }
  // For tests: the rounds the thread has begun.
  uint64_t roundsStarted() const { return roundsStarted_.load(std::memory_order_acquire); }

private:
  struct Target;
  struct Round;
  void run();
  void wake();
  // The wake-up eventfd was readable: true when stop() wrote it (else it is read off).
  bool woken();
  // setPools()' pools, if any came: the moved ones are due at `now`.
  void takeNextPools(uint64_t now);
  // A round over pools_[index]'s servers, unless one is open for that pool.
  void beginRound(size_t index);
  void endRound(Round& r, uint64_t now);
  // Closes what open rounds hold (stop()).
  void dropRounds();
  // Opens checks, in turn across the open rounds, while fewer than maxInFlight_ are open.
  void startChecks(uint64_t now);
  // Starts checks, waits for them until `until` (monotonic ns) at the latest, and reports
  // each that finished (a round ends with its last). False when stop() was called.
  bool step(uint64_t until);
  // Reports and closes the checks that finished; true if any did.
  bool reap(uint64_t now);
  void open(Target& t, uint64_t now);
  void connected(Target& t);
  void advance(Target& t);
  // After the connect (and TLS handshake): check_send, then check_expect, then passed().
  void beginExchange(Target& t);
  void exchange(Target& t);
  // One send (of `send`) or receive (into `receive`) of the exchange, through TLS or not:
  // true with *moved bytes (receiving, 0 = the server closed); false when the target must
  // wait (its events set) or failed.
  bool moveBytes(Target& t, const void* send, void* receive, size_t len, size_t* moved);
  void passed(Target& t);
  void failed(Target& t, int error, std::string why);
  void report(const Pool& p, const Target& t, uint64_t now);

  // The checker thread's (or checkNow()'s caller's) alone:
  std::vector<Pool> pools_;
  std::vector<uint64_t> due_;    // [pool]: when its next round begins
  std::vector<Round*> open_;     // [pool]: its round under way, if any
  std::list<Round> rounds_;      // open rounds, oldest first (a move's old pool's too)
  std::vector<Target*> active_;  // checks started and not yet reported
  std::vector<pollfd> pollFds_;
  std::vector<Target*> polled_;
  size_t maxInFlight_;
  size_t peakInFlight_ = 0;
  std::atomic<uint64_t> roundsStarted_{0};
  int wakeFd_ = -1;  // eventfd: stop() and setPools() write it
  std::atomic<bool> stopping_{false};
  std::mutex nextMutex_;
  std::vector<Pool> next_;  // setPools()' (under nextMutex_)
  bool hasNext_ = false;
  std::thread thread_;
  // TlsChannel's buffers; a check never leaves the handshake's socket BIO, so none is taken.
  relay::UserBufferPool tlsBuffers_{16384, 4};
};

}  // namespace grelay::proxy
