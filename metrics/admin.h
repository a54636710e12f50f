// The admin endpoint: prometheus-cpp's Exposer on [admin].listen serving GET /metrics, and
// the probes GET /healthz and GET /ready (answered by a civetweb callback).
// Metric values are read from the workers' stats at scrape time (see stats.h); nothing
// here runs on the data path.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "config/config.h"
#include "metrics/stats.h"

namespace grelay::metrics {

struct RetiredTotals;

// Every configuration generation's stats (a SIGHUP reload starts a new generation while
// the old one drains). Counters are summed by listener and mirror name across live and
// retired generations, so they never go backwards; the newest generation's config says
// which listeners and mirrors exist. Thread-safe: the server adds and retires
// generations, the exposer reads on every scrape.
class StatsRegistry {
public:
  StatsRegistry();
  ~StatsRegistry();

  // `workers[i]` has one ListenerStats per listener of `config` and one MirrorStats per
  // mirror, in config order; both must stay valid until retire(config).
  // `upstreams[u]` (may be empty, or nullptr entries) are the health-check stats of
  // config->upstreams[u]; they must stay valid until retire(config) too.
  // `tlsDates`: what its TLS contexts loaded (the newest generation's are exposed).
  void add(std::shared_ptr<const config::Config> config, std::vector<const WorkerStats*> workers,
           std::string relayPath, std::vector<const UpstreamStats*> upstreams = {},
           std::vector<TlsFileDate> tlsDates = {});
  // Folds the generation's counters into the retired totals and forgets its pointers.
  void retire(const config::Config* config);
  // A DNS move applied in place: the generation registered with `config` goes on with
  // `next` (the same configuration but addresses). `change` runs under the lock, so no
  // scrape sees the new configuration without what `change` repoints (the pools' views)
  // or the other way round.
  void move(const config::Config* config, std::shared_ptr<const config::Config> next,
            const std::function<void()>& change);
  // Reloads and generations: process-wide, written by the server's main thread.
  ReloadStats& reloads() { return reloads_; }
  const ReloadStats& reloads() const { return reloads_; }
  // Serving state and the main loop's heartbeat: written by the server's main thread.
  Liveness& liveness() { return liveness_; }
  const Liveness& liveness() const { return liveness_; }

  struct Generation {
    std::shared_ptr<const config::Config> config;
    std::vector<const WorkerStats*> workers;
    std::vector<const UpstreamStats*> upstreams;  // [upstream], may be shorter
    std::vector<TlsFileDate> tlsDates;
  };
  // Runs `f(generations, retired, relayPath)` under the registry's lock; the newest
  // generation is last.
  template <typename F>
  auto read(F&& f) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return f(generations_, *retired_, relayPath_);
  }

private:
  mutable std::mutex mutex_;
  std::vector<Generation> generations_;
  std::unique_ptr<RetiredTotals> retired_;
  std::string relayPath_;
  ReloadStats reloads_;
  Liveness liveness_;
};

// What the exposer reads: either a registry (the server), or one fixed config and its
// workers' stats (tests). The config and every WorkerStats must outlive the AdminServer
// (it reads them from the HTTP server's threads on every scrape); workers[i] must have
// one ListenerStats per config listener and one MirrorStats per mirror, in config order.
struct AdminInputs {
  const config::Config* config = nullptr;  // also: [admin] listen
  std::vector<const WorkerStats*> workers;
  std::vector<const UpstreamStats*> upstreams;  // [upstream]: health checks; may be empty
  std::string relayPath;                        // the path in use: "group", "mainline" or "copy"
  std::vector<TlsFileDate> tlsDates;            // certificates and CRLs loaded; may be empty
  const ReloadStats* reloads = nullptr;         // reloads and generations; may be null
  std::string version;
  const StatsRegistry* registry = nullptr;  // when set, read instead of config/workers
  // GET /ready and GET /healthz: the serving state and the main loop's heartbeat (the
  // registry's when it is set). Null: ready, and only the workers' heartbeats are watched.
  const Liveness* liveness = nullptr;
};

// A heartbeat older than this fails GET /healthz: a loop that stopped going round (a
// worker's event loop waits at most 1s; the main loop 100ms). [admin] stall_timeout,
// through Liveness::stallNanos; this without a Liveness.
inline constexpr uint64_t kStalledAfterNanos = 10'000'000'000ull;

// The answer to a probe: GET /ready (200 while serving; 503 while starting, stopping or
// stalled) or GET /healthz (200 unless a loop has stalled). `now` is CLOCK_MONOTONIC ns.
struct ProbeAnswer {
  int status = 200;
  std::string body;  // one line, newline-terminated
};
ProbeAnswer answerReady(const AdminInputs& inputs, uint64_t now);
ProbeAnswer answerHealthz(const AdminInputs& inputs, uint64_t now);

class AdminServer {
public:
  virtual ~AdminServer() = default;
  // The grelay_* and process_* families a scrape returns right now (Prometheus text
  // format 0.0.4). A scrape of GET /metrics also carries prometheus-cpp's own exposer_*
  // families (scrape count, bytes, latency) ahead of these.
  virtual std::string render() const = 0;
  // The TCP port actually bound (differs from the config only when it asked for port 0).
  virtual uint16_t port() const = 0;
};

// Starts serving on config->admin.listen (which must be set). nullptr and *error =
// "cannot serve metrics on ADDR: REASON" when it cannot (port in use, IPv6 without
// support in civetweb, ...); no exception escapes. Destroying the server stops it.
std::unique_ptr<AdminServer> startAdmin(const AdminInputs& inputs, std::string* error);

}  // namespace grelay::metrics
