// The numbers grelay counts. Each worker thread owns one WorkerStats and is its only
// writer (plain relaxed loads/stores, no locked instructions, no lookups on the data
// path: sessions hold pointers to their listener's and mirror's stats). The exposer
// sums all workers at scrape time.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace grelay::metrics {

// Written by one thread, read by any.
class Counter {
public:
  void add(uint64_t n) {
    value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  void inc() { add(1); }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

private:
  std::atomic<uint64_t> value_{0};
};

class Gauge {
public:
  void add(int64_t n) {
    value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  void inc() { add(1); }
  void dec() { add(-1); }
  void set(int64_t n) { value_.store(n, std::memory_order_relaxed); }
  int64_t value() const { return value_.load(std::memory_order_relaxed); }

private:
  std::atomic<int64_t> value_{0};
};

// Upstream connect latency: buckets from 50us to 10s (seconds, strictly increasing).
inline constexpr std::array<double, 17> kConnectBuckets = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05,    0.1,    0.25,    0.5,    1.0,   2.5,    5.0,   10.0};

// Session length, accept to close: buckets from 1ms to 1h.
inline constexpr std::array<double, 15> kSessionBuckets = {
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0};

// A histogram of seconds over the upper bounds `Bounds` (a std::array above).
template <const auto& Bounds>
class Histogram {
public:
  static constexpr const auto& kBounds = Bounds;
  static constexpr size_t kBuckets = Bounds.size();  // and +Inf

  void observe(double seconds) {
    size_t i = 0;
    while (i < kBuckets && seconds > Bounds[i]) {
      ++i;
    }
    buckets_[i].inc();  // i == kBuckets is the +Inf bucket
    sumNanos_.add(static_cast<uint64_t>(seconds * 1e9));
  }
  // Non-cumulative count of bucket i (i == kBuckets is +Inf).
  uint64_t bucket(size_t i) const { return buckets_[i].value(); }
  double sum() const { return static_cast<double>(sumNanos_.value()) / 1e9; }

private:
  std::array<Counter, kBuckets + 1> buckets_;
  Counter sumNanos_;
};
using ConnectHistogram = Histogram<kConnectBuckets>;
using SessionHistogram = Histogram<kSessionBuckets>;

// The limit a connection closed at once was over (grelay_connections_rejected_total's
// `limit`): [server] max_connections, the listener's max_connections, or its
// max_connections_per_client.
// Why no route of a listener took a session (which then went to the listener's own
// upstream, or was reset if it has none): no route names the server its client asked for
// (or it asked for none); its first bytes are not a TLS ClientHello; the ClientHello was
// not whole within connect_timeout; the client closed before it was.
enum RouteMiss : uint8_t { kRouteUnmatched = 0, kRouteNotTls, kRouteTimeout, kRouteClosed };
inline constexpr int kRouteMissCount = 4;
inline const char* routeMissName(int r) {
  return r == kRouteUnmatched ? "unmatched"
         : r == kRouteNotTls  ? "not_tls"
         : r == kRouteTimeout ? "timeout"
                              : "closed";
}

enum RejectLimit : uint8_t {
  kServerLimit = 0,
  kListenerLimit = 1,
  kClientLimit = 2,
  kClientRateLimit = 3,
};
inline constexpr int kRejectLimitCount = 4;
inline const char* rejectLimitName(int l) {
  return l == kServerLimit     ? "server"
         : l == kListenerLimit ? "listener"
         : l == kClientLimit   ? "client"
                               : "client_rate";
}

enum Direction : uint8_t { kRequest = 0, kResponse = 1 };
inline const char* directionName(int d) {
  return d == kRequest ? "request" : "response";
}

// Relay paths a chunk can take. kSplicePath is not a worker's path: it counts the chunks
// the mainline path moved with splice(2) (single-target directions, [server] splice).
enum PathIndex : uint8_t { kGroupPath = 0, kMainlinePath = 1, kCopyPath = 2, kSplicePath = 3 };
inline constexpr int kPathCount = 4;
inline const char* pathName(int p) {
  switch (p) {
    case kGroupPath:
      return "group";
    case kMainlinePath:
      return "mainline";
    case kCopyPath:
      return "copy";
    default:
      return "splice";
  }
}

struct MirrorStats {
  Counter sentBytes;        // bytes the mirror accepted
  Counter cuts;             // sessions on which the mirror was cut (lag, error, unreachable)
  Counter droppedBytes;     // bytes of sampled sessions the mirror did not get
  Counter connectErrors;    // connects that failed or timed out
  Counter markedDown;       // times a failed connect marked the mirror down (max_fails)
  Counter skippedSessions;  // sampled sessions that skipped it while it was marked down
  Counter sessions;         // sessions sampled for this mirror
  Counter discardedBytes;   // bytes the mirror sent back (read and discarded)
  // Lookups of its host name (resolve_interval), by the generation's DNS thread, in worker
  // 0's stats only: every lookup, those that failed, those that changed its address.
  Counter dnsLookups;
  Counter dnsFailures;
  Counter dnsChanges;
};

// A listener's sessions toward one of its upstream pools (label {listener, upstream}).
struct UpstreamUseStats {
  Counter sentBytes;               // to the primary (target = upstream pool name)
  Counter connectErrors;           // connects that failed or timed out
  Counter markedDown;              // servers these sessions marked down (max_fails)
  Counter serverFull;              // servers a session skipped because they were at max_conns
  Counter queued;                  // sessions that waited for a slot (queue_timeout)
  Gauge queueing;                  // sessions waiting for a slot now
  SessionHistogram queueDuration;  // each wait for a slot, observed as it ends
  ConnectHistogram connectDuration;
  Counter tlsFailures;  // upstream handshakes that failed (certificate, protocol)
  Counter tlsResumed;   // upstream handshakes that resumed a session (session_reuse)
};

struct ListenerStats {
  // `routes`: the listener's [[listener.route]] tables.
  explicit ListenerStats(size_t mirrorCount, size_t routes = 0)
      : upstreams(1 + routes), mirrors(mirrorCount) {}

  Counter connections;                              // accepted client connections
  Gauge active;                                     // open sessions
  std::array<Counter, kRejectLimitCount> rejected;  // closed at once, by RejectLimit
  Counter denied;                                   // reset: the client is outside `allow`
  Counter rateLimited;                   // a worker paused its accepts: max_connection_rate reached
  std::array<Counter, 2> receivedBytes;  // by Direction
  Counter sentClientBytes;               // back to clients
  std::array<Counter, kPathCount> chunks;  // by PathIndex
  // [0]: toward the listener's upstream; [r + 1]: toward routes[r]'s (the same pool may
  // appear more than once: the collector sums by name).
  std::vector<UpstreamUseStats> upstreams;
  Counter noUpstream;                                // sessions closed because every server failed
  std::array<Counter, kRouteMissCount> routeMisses;  // by RouteMiss
  Counter idleTimeouts;
  Counter maxDurations;              // sessions reset at max_session_duration
  Counter resets;                    // sessions ended by a reset (either side)
  SessionHistogram sessionDuration;  // accept to close, of the sessions `connections` counts
  std::vector<MirrorStats> mirrors;  // in config order
  Counter tlsHandshakes;             // client TLS handshakes completed
  Counter tlsResumed;                // of those, sessions resumed (a ticket or session ID)
  Counter proxyProtocolErrors;       // client connections without a valid PROXY header
  Counter accessLogDroppedLines;     // access log lines lost to failed writes
  Counter tlsHandshakeFailures;  // client handshakes that failed (protocol, plaintext client...)
  Counter tlsHandshakeTimeouts;  // client handshakes cut by handshake_timeout
  Counter ktlsSessions;          // TLS sessions (either side) handed to kernel TLS
  Counter tapBytes;              // payload bytes written to the tap
  Counter tapDroppedBytes;       // payload bytes the tap did not record
  Counter tapErrors;             // write errors that disabled the tap
};

// A loop's heartbeat: CLOCK_MONOTONIC nanoseconds of its latest round, 0 before it started,
// kBeatFinished once it has ended (GET /healthz, admin.h).
inline constexpr uint64_t kBeatFinished = UINT64_MAX;

struct WorkerStats {
  std::vector<std::unique_ptr<ListenerStats>> listeners;  // in config order
  std::atomic<uint64_t> beat{0};                          // the worker's event loop
};

// A live view of one upstream pool's servers (proxy::UpstreamPool implements it), read at
// scrape time from the exposer's threads: thread-safe, no locks.
class UpstreamView {
public:
  virtual ~UpstreamView() = default;
  virtual size_t serverCount() const = 0;
  virtual int64_t serverActive(size_t server) const = 0;  // open connections, all workers
  virtual bool serverDown(size_t server) const = 0;       // marked down right now
  // Its share of the rotation right now: its weight, 0 while marked down, scaled by its
  // progress while in slow start.
  virtual double serverWeight(size_t server) const = 0;
  // Sessions connected to the server (its TCP connect, and the TLS handshake for a TLS
  // pool, succeeded), and sessions' connects to it that failed (health checks apart), since
  // it joined the pool: carried over a reload or a DNS move that keeps its address.
  virtual uint64_t serverSessions(size_t server) const = 0;
  virtual uint64_t serverConnectFailures(size_t server) const = 0;
};

// One upstream pool: its live view, its active health checks (pools with check_interval),
// written by the generation's health-check thread only, and its DNS lookups.
struct UpstreamStats {
  // The generation's pool (set when it is built; a DNS move repoints it under the
  // registry's lock, see StatsRegistry::move).
  const UpstreamView* view = nullptr;
  Counter checks;         // connects made by health checks
  Counter checkFailures;  // of those: refused, timed out, unreachable
  Counter markedDown;     // servers a failed check marked down
  Gauge serversDown;      // servers marked down after the latest round
  // Lookups of its servers' host names (resolve_interval), by the generation's DNS thread:
  // every lookup, those that failed, those that changed a server's address.
  Counter dnsLookups;
  Counter dnsFailures;
  Counter dnsChanges;
};

// Configuration changes, written by the server's main thread only.
enum ReloadCause : uint8_t { kReloadSighup = 0, kReloadDns = 1 };
inline const char* reloadCauseName(int c) {
  return c == kReloadSighup ? "sighup" : "dns";
}
// What GET /ready says (admin.h): written by the server's main thread.
enum class Serving : int { kStarting = 0, kReady = 1, kStopping = 2 };
struct Liveness {
  std::atomic<Serving> serving{Serving::kStarting};
  std::atomic<uint64_t> mainBeat{0};  // the main loop's heartbeat (signals, reloads, DNS)
  // [admin] stall_timeout of the running configuration: a heartbeat older than this fails
  // GET /healthz (and /ready).
  std::atomic<uint64_t> stallNanos{10'000'000'000ull};
};

// What grelay's OCSP fetcher (ocsp_update) did for one certificate of a listener, updated
// as it goes (by the fetcher's thread alone).
struct OcspUpdateStats {
  // The nextUpdate of the response stapled now (Unix seconds); 0 = none is stapled;
  // kNoNextUpdate = one without a nextUpdate.
  static constexpr int64_t kNoNextUpdate = -1;
  std::atomic<int64_t> nextUpdate{0};
  Counter ok;      // fetches whose response was stapled
  Counter failed;  // fetches that failed, or whose response could not be stapled
};

// A certificate or revocation list a configuration's TLS contexts loaded, and when it
// stops being good: the grelay_*tls_certificate_expiry_* and grelay_tls_crl_next_update_*
// gauges. Fixed for a generation (the files are read when it is built), but for the OCSP
// responses grelay fetches itself.
struct TlsFileDate {
  enum class Kind : uint8_t {
    kListenerCertificate,
    kUpstreamCertificate,
    kClientCrl,
    kOcspResponse,
    kClientCa,    // a listener's client_ca
    kUpstreamCa,  // a pool's ca
    kUpstreamCrl,
  };
  Kind kind = Kind::kListenerCertificate;
  std::string owner;  // the listener's or upstream pool's name
  std::string file;   // the path as the configuration wrote it
  // A certificate's notAfter; the earliest nextUpdate of a CRL file; an OCSP response's
  // nextUpdate; the earliest notAfter of the CAs in a file.
  int64_t unixSeconds = 0;
  // kOcspResponse with ocsp_update: the response's date is read from here instead, and
  // `file` is the ocsp_response file if there is one, else the certificate's.
  std::shared_ptr<const OcspUpdateStats> ocsp{};
};

struct ReloadStats {
  std::array<Counter, 2> ok;      // [ReloadCause]: a new generation took over (SIGHUP), or
                                  // new sessions take the moved addresses (DNS)
  std::array<Counter, 2> failed;  // [ReloadCause]: the running configuration stayed
  Gauge lastOk;                   // 1 unless the latest attempt failed
  Gauge generations;              // running now: the current one and those still draining

  ReloadStats() {
    lastOk.set(1);
    generations.set(1);
  }
};

}  // namespace grelay::metrics
