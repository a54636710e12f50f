#include "metrics/collector.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <utility>

#include <prometheus/text_serializer.h>

#include "metrics/process.h"

namespace grelay::metrics {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;
using Labels = std::vector<ClientMetric::Label>;

// Lookups of host names with resolve_interval.
struct DnsTotals {
  uint64_t lookups = 0;
  uint64_t failures = 0;
  uint64_t changes = 0;

  void add(const Counter& l, const Counter& f, const Counter& c) {
    lookups += l.value();
    failures += f.value();
    changes += c.value();
  }
  void add(const DnsTotals& other) {
    lookups += other.lookups;
    failures += other.failures;
    changes += other.changes;
  }
};

// A histogram summed over workers (and retired generations).
template <const auto& Bounds>
struct HistogramTotals {
  std::array<uint64_t, Bounds.size() + 1> buckets{};  // non-cumulative; the last is +Inf
  double seconds = 0;

  void add(const Histogram<Bounds>& h) {
    for (size_t b = 0; b < buckets.size(); ++b) {
      buckets[b] += h.bucket(b);
    }
    seconds += h.sum();
  }
  void add(const HistogramTotals& other) {
    for (size_t b = 0; b < buckets.size(); ++b) {
      buckets[b] += other.buckets[b];
    }
    seconds += other.seconds;
  }
  void emit(ClientMetric& metric) const {
    uint64_t cumulative = 0;
    for (size_t b = 0; b < Bounds.size(); ++b) {
      cumulative += buckets[b];
      metric.histogram.bucket.push_back({cumulative, Bounds[b]});
    }
    // The serializer writes le="+Inf" from sample_count.
    metric.histogram.sample_count = cumulative + buckets[Bounds.size()];
    metric.histogram.sample_sum = seconds;
  }
};

struct MirrorTotals {
  uint64_t sentBytes = 0;
  uint64_t cuts = 0;
  uint64_t droppedBytes = 0;
  uint64_t connectErrors = 0;
  uint64_t markedDown = 0;
  uint64_t skippedSessions = 0;
  uint64_t sessions = 0;
  uint64_t discardedBytes = 0;
  DnsTotals dns;
};

// A listener's sessions toward one upstream pool, summed over workers (and routes that
// share the pool).
struct UpstreamUseTotals {
  uint64_t sentBytes = 0;
  uint64_t connectErrors = 0;
  uint64_t markedDown = 0;
  uint64_t serverFull = 0;
  uint64_t queued = 0;
  int64_t queueing = 0;
  HistogramTotals<kSessionBuckets> queueDuration;
  HistogramTotals<kConnectBuckets> connectDuration;
  uint64_t tlsFailures = 0;
  uint64_t tlsResumed = 0;

  void add(const UpstreamUseStats& stats) {
    sentBytes += stats.sentBytes.value();
    connectErrors += stats.connectErrors.value();
    markedDown += stats.markedDown.value();
    serverFull += stats.serverFull.value();
    queued += stats.queued.value();
    queueing += stats.queueing.value();
    queueDuration.add(stats.queueDuration);
    connectDuration.add(stats.connectDuration);
    tlsFailures += stats.tlsFailures.value();
    tlsResumed += stats.tlsResumed.value();
  }
  void add(const UpstreamUseTotals& other) {
    sentBytes += other.sentBytes;
    connectErrors += other.connectErrors;
    markedDown += other.markedDown;
    serverFull += other.serverFull;
    queued += other.queued;
    queueing += other.queueing;
    queueDuration.add(other.queueDuration);
    connectDuration.add(other.connectDuration);
    tlsFailures += other.tlsFailures;
    tlsResumed += other.tlsResumed;
  }
};

// The pool a listener's sessions of stats index `use` went to (ListenerStats::upstreams).
const std::string& upstreamOfUse(const config::ListenerConfig& listener, size_t use) {
  return use == 0 || use > listener.routes.size() ? listener.upstream
                                                  : listener.routes[use - 1].upstream;
}

// The pools of a listener (its own, then its routes'), each once.
std::vector<const std::string*> upstreamsOf(const config::ListenerConfig& listener) {
  std::vector<const std::string*> names;
  for (size_t use = 0; use <= listener.routes.size(); ++use) {
    const std::string& name = upstreamOfUse(listener, use);
    if (!name.empty() && std::none_of(names.begin(), names.end(),
                                      [&](const std::string* n) { return *n == name; })) {
      names.push_back(&name);
    }
  }
  return names;
}

// One listener's stats summed over all workers.
struct ListenerTotals {
  uint64_t connections = 0;
  int64_t active = 0;
  std::array<uint64_t, kRejectLimitCount> rejected{};
  uint64_t denied = 0;
  uint64_t rateLimited = 0;
  std::array<uint64_t, 2> receivedBytes{};
  uint64_t sentClientBytes = 0;
  std::array<uint64_t, kPathCount> chunks{};
  std::map<std::string, UpstreamUseTotals> upstreams;  // by pool name
  uint64_t noUpstream = 0;
  std::array<uint64_t, kRouteMissCount> routeMisses{};
  uint64_t idleTimeouts = 0;
  uint64_t maxDurations = 0;
  uint64_t resets = 0;
  HistogramTotals<kSessionBuckets> sessionDuration;
  std::vector<MirrorTotals> mirrors;
  uint64_t tapBytes = 0;
  uint64_t tapDroppedBytes = 0;
  uint64_t tapErrors = 0;
  uint64_t tlsHandshakes = 0;
  uint64_t tlsResumed = 0;
  uint64_t proxyProtocolErrors = 0;
  uint64_t accessLogDroppedLines = 0;
  uint64_t tlsHandshakeFailures = 0;
  uint64_t tlsHandshakeTimeouts = 0;
  uint64_t ktlsSessions = 0;
};

// One upstream pool's health checks, summed over generations.
struct UpstreamTotals {
  uint64_t checks = 0;
  uint64_t checkFailures = 0;
  uint64_t markedDown = 0;
  DnsTotals dns;
};

void addUpstream(UpstreamTotals& into, const UpstreamStats& stats) {
  into.checks += stats.checks.value();
  into.checkFailures += stats.checkFailures.value();
  into.markedDown += stats.markedDown.value();
  into.dns.add(stats.dnsLookups, stats.dnsFailures, stats.dnsChanges);
}

// Adds one worker's stats of listener `from`; mirrorMap[m] = index of stats.mirrors[m] in
// total.mirrors (-1: that mirror no longer exists).
void addTo(ListenerTotals& total, const ListenerStats& stats, const config::ListenerConfig& from,
           const std::vector<int>& mirrorMap) {
  total.connections += stats.connections.value();
  total.active += stats.active.value();
  for (size_t r = 0; r < total.rejected.size(); ++r) {
    total.rejected[r] += stats.rejected[r].value();
  }
  total.denied += stats.denied.value();
  total.rateLimited += stats.rateLimited.value();
  for (size_t d = 0; d < total.receivedBytes.size(); ++d) {
    total.receivedBytes[d] += stats.receivedBytes[d].value();
  }
  total.sentClientBytes += stats.sentClientBytes.value();
  for (size_t p = 0; p < total.chunks.size(); ++p) {
    total.chunks[p] += stats.chunks[p].value();
  }
  for (size_t use = 0; use < stats.upstreams.size(); ++use) {
    total.upstreams[upstreamOfUse(from, use)].add(stats.upstreams[use]);
  }
  for (size_t r = 0; r < total.routeMisses.size(); ++r) {
    total.routeMisses[r] += stats.routeMisses[r].value();
  }
  total.noUpstream += stats.noUpstream.value();
  total.idleTimeouts += stats.idleTimeouts.value();
  total.maxDurations += stats.maxDurations.value();
  total.resets += stats.resets.value();
  total.sessionDuration.add(stats.sessionDuration);
  for (size_t m = 0; m < stats.mirrors.size() && m < mirrorMap.size(); ++m) {
    if (mirrorMap[m] < 0) {
      continue;
    }
    const MirrorStats& mirror = stats.mirrors[m];
    MirrorTotals& sum = total.mirrors[static_cast<size_t>(mirrorMap[m])];
    sum.sentBytes += mirror.sentBytes.value();
    sum.cuts += mirror.cuts.value();
    sum.droppedBytes += mirror.droppedBytes.value();
    sum.connectErrors += mirror.connectErrors.value();
    sum.markedDown += mirror.markedDown.value();
    sum.skippedSessions += mirror.skippedSessions.value();
    sum.sessions += mirror.sessions.value();
    sum.discardedBytes += mirror.discardedBytes.value();
    sum.dns.add(mirror.dnsLookups, mirror.dnsFailures, mirror.dnsChanges);
  }
  total.tapBytes += stats.tapBytes.value();
  total.tapDroppedBytes += stats.tapDroppedBytes.value();
  total.tapErrors += stats.tapErrors.value();
  total.tlsHandshakes += stats.tlsHandshakes.value();
  total.tlsResumed += stats.tlsResumed.value();
  total.proxyProtocolErrors += stats.proxyProtocolErrors.value();
  total.accessLogDroppedLines += stats.accessLogDroppedLines.value();
  total.tlsHandshakeFailures += stats.tlsHandshakeFailures.value();
  total.tlsHandshakeTimeouts += stats.tlsHandshakeTimeouts.value();
  total.ktlsSessions += stats.ktlsSessions.value();
}

void addTotals(ListenerTotals& into, const ListenerTotals& from) {
  into.connections += from.connections;
  into.active += from.active;
  for (size_t r = 0; r < into.rejected.size(); ++r) {
    into.rejected[r] += from.rejected[r];
  }
  into.denied += from.denied;
  into.rateLimited += from.rateLimited;
  for (size_t d = 0; d < into.receivedBytes.size(); ++d) {
    into.receivedBytes[d] += from.receivedBytes[d];
  }
  into.sentClientBytes += from.sentClientBytes;
  for (size_t p = 0; p < into.chunks.size(); ++p) {
    into.chunks[p] += from.chunks[p];
  }
  for (const auto& [name, use] : from.upstreams) {
    into.upstreams[name].add(use);
  }
  for (size_t r = 0; r < into.routeMisses.size(); ++r) {
    into.routeMisses[r] += from.routeMisses[r];
  }
  into.noUpstream += from.noUpstream;
  into.idleTimeouts += from.idleTimeouts;
  into.maxDurations += from.maxDurations;
  into.resets += from.resets;
  into.sessionDuration.add(from.sessionDuration);
  into.tapBytes += from.tapBytes;
  into.tapDroppedBytes += from.tapDroppedBytes;
  into.tapErrors += from.tapErrors;
  into.tlsHandshakes += from.tlsHandshakes;
  into.tlsResumed += from.tlsResumed;
  into.proxyProtocolErrors += from.proxyProtocolErrors;
  into.accessLogDroppedLines += from.accessLogDroppedLines;
  into.tlsHandshakeFailures += from.tlsHandshakeFailures;
  into.tlsHandshakeTimeouts += from.tlsHandshakeTimeouts;
  into.ktlsSessions += from.ktlsSessions;
}

void addMirror(MirrorTotals& into, const MirrorTotals& from) {
  into.sentBytes += from.sentBytes;
  into.cuts += from.cuts;
  into.droppedBytes += from.droppedBytes;
  into.connectErrors += from.connectErrors;
  into.markedDown += from.markedDown;
  into.skippedSessions += from.skippedSessions;
  into.sessions += from.sessions;
  into.discardedBytes += from.discardedBytes;
  into.dns.add(from.dns);
}

// Where each mirror of `from` sits among the mirrors of `to` (by name; -1 = gone).
std::vector<int> mirrorMap(const config::ListenerConfig& from, const config::ListenerConfig& to) {
  std::vector<int> map(from.mirrors.size(), -1);
  for (size_t m = 0; m < from.mirrors.size(); ++m) {
    for (size_t n = 0; n < to.mirrors.size(); ++n) {
      if (from.mirrors[m].name == to.mirrors[n].name) {
        map[m] = static_cast<int>(n);
      }
    }
  }
  return map;
}

// Families in the order they are declared (a deque: add() hands out references that
// must stay valid while more families are added).
class FamilyList {
public:
  MetricFamily& add(const char* name, const char* help, MetricType type) {
    return families_.emplace_back(MetricFamily{name, help, type, {}});
  }

  // Families without samples are left out (e.g. tap families when no listener has a tap).
  std::vector<MetricFamily> take() {
    std::vector<MetricFamily> out;
    for (MetricFamily& family : families_) {
      if (!family.metric.empty()) {
        out.push_back(std::move(family));
      }
    }
    return out;
  }

private:
  std::deque<MetricFamily> families_;
};

// Adds a sample to a counter or gauge family.
void sample(MetricFamily& family, Labels labels, double value) {
  ClientMetric& metric = family.metric.emplace_back();
  metric.label = std::move(labels);
  if (family.type == MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
}

bool anyMaxConns(const config::UpstreamConfig& pool) {
  for (const config::UpstreamServer& s : pool.servers) {
    if (s.max_conns != 0) {
      return true;
    }
  }
  return false;
}

double asDouble(uint64_t value) {
  return static_cast<double>(value);
}

}  // namespace

// Counters of generations that finished, by listener and mirror name.
struct RetiredTotals {
  struct Listener {
    ListenerTotals totals;
    std::map<std::string, MirrorTotals> mirrors;
  };
  std::map<std::string, Listener> listeners;
  std::map<std::string, UpstreamTotals> upstreams;  // health checks, by pool name
};

StatsRegistry::StatsRegistry() : retired_(std::make_unique<RetiredTotals>()) {}
StatsRegistry::~StatsRegistry() = default;

void StatsRegistry::add(std::shared_ptr<const config::Config> config,
                        std::vector<const WorkerStats*> workers, std::string relayPath,
                        std::vector<const UpstreamStats*> upstreams,
                        std::vector<TlsFileDate> tlsDates) {
  std::lock_guard<std::mutex> lock(mutex_);
  generations_.push_back(
      Generation{std::move(config), std::move(workers), std::move(upstreams), std::move(tlsDates)});
  relayPath_ = std::move(relayPath);
}

void StatsRegistry::retire(const config::Config* config) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto it = generations_.begin(); it != generations_.end(); ++it) {
    if (it->config.get() != config) {
      continue;
    }
    for (size_t l = 0; l < config->listeners.size(); ++l) {
      const config::ListenerConfig& lc = config->listeners[l];
      ListenerTotals sum;
      sum.mirrors.resize(lc.mirrors.size());
      std::vector<int> identity(lc.mirrors.size());
      for (size_t m = 0; m < identity.size(); ++m) {
        identity[m] = static_cast<int>(m);
      }
      for (const WorkerStats* w : it->workers) {
        if (w != nullptr && l < w->listeners.size() && w->listeners[l] != nullptr) {
          addTo(sum, *w->listeners[l], lc, identity);
        }
      }
      sum.active = 0;  // a retired generation has no open session
      RetiredTotals::Listener& into = retired_->listeners[lc.name];
      addTotals(into.totals, sum);
      for (size_t m = 0; m < lc.mirrors.size(); ++m) {
        addMirror(into.mirrors[lc.mirrors[m].name], sum.mirrors[m]);
      }
    }
    for (size_t u = 0; u < it->upstreams.size() && u < config->upstreams.size(); ++u) {
      if (it->upstreams[u] != nullptr) {
        addUpstream(retired_->upstreams[config->upstreams[u].name], *it->upstreams[u]);
      }
    }
    generations_.erase(it);
    return;
  }
}

void StatsRegistry::move(const config::Config* config, std::shared_ptr<const config::Config> next,
                         const std::function<void()>& change) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (Generation& gen : generations_) {
    if (gen.config.get() == config) {
      gen.config = std::move(next);
      break;
    }
  }
  change();
}

StatsCollector::StatsCollector(AdminInputs inputs)
    : inputs_(std::move(inputs)), startTimeSeconds_(processStartTimeSeconds()) {}

std::vector<MetricFamily> StatsCollector::Collect() const {
  std::vector<MetricFamily> families = collectGrelay();
  for (MetricFamily& family : collectProcessMetrics(startTimeSeconds_)) {
    families.push_back(std::move(family));
  }
  return families;
}

std::string StatsCollector::render() const {
  return prometheus::TextSerializer().Serialize(Collect());
}

std::vector<MetricFamily> StatsCollector::collectGrelay() const {
  if (inputs_.registry != nullptr) {
    return inputs_.registry->read([this](const std::vector<StatsRegistry::Generation>& gens,
                                         const RetiredTotals& retired, const std::string& path) {
      if (gens.empty()) {
        return std::vector<MetricFamily>{};
      }
      return collectFrom(gens, &retired, path, &inputs_.registry->reloads());
    });
  }
  std::shared_ptr<const config::Config> unowned(inputs_.config, [](const config::Config*) {});
  return collectFrom(
      {StatsRegistry::Generation{unowned, inputs_.workers, inputs_.upstreams, inputs_.tlsDates}},
      nullptr, inputs_.relayPath, inputs_.reloads);
}

std::vector<MetricFamily> StatsCollector::collectFrom(
    const std::vector<StatsRegistry::Generation>& gens, const RetiredTotals* retired,
    const std::string& relayPath, const ReloadStats* reloads) const {
  const config::Config& config = *gens.back().config;
  const size_t workerCount = gens.back().workers.size();

  std::vector<ListenerTotals> totals(config.listeners.size());
  for (size_t l = 0; l < totals.size(); ++l) {
    totals[l].mirrors.resize(config.listeners[l].mirrors.size());
  }
  for (const StatsRegistry::Generation& gen : gens) {
    for (size_t gl = 0; gl < gen.config->listeners.size(); ++gl) {
      const config::ListenerConfig& from = gen.config->listeners[gl];
      for (size_t l = 0; l < config.listeners.size(); ++l) {
        if (config.listeners[l].name != from.name) {
          continue;
        }
        const std::vector<int> map = mirrorMap(from, config.listeners[l]);
        for (const WorkerStats* worker : gen.workers) {
          if (worker != nullptr && gl < worker->listeners.size() &&
              worker->listeners[gl] != nullptr) {
            addTo(totals[l], *worker->listeners[gl], from, map);
          }
        }
      }
    }
  }
  if (retired != nullptr) {
    for (size_t l = 0; l < config.listeners.size(); ++l) {
      auto it = retired->listeners.find(config.listeners[l].name);
      if (it == retired->listeners.end()) {
        continue;
      }
      addTotals(totals[l], it->second.totals);
      for (size_t m = 0; m < config.listeners[l].mirrors.size(); ++m) {
        auto mi = it->second.mirrors.find(config.listeners[l].mirrors[m].name);
        if (mi != it->second.mirrors.end()) {
          addMirror(totals[l].mirrors[m], mi->second);
        }
      }
    }
  }

  FamilyList list;
  // Declared up front so the exposition order is fixed (one family after another).
  auto& buildInfo = list.add(
      "grelay_build_info", "Always 1; the version label is the grelay version.", MetricType::Gauge);
  auto& pathInfo = list.add("grelay_relay_path_info",
                            "Always 1; the path label is the relay path in use (group, mainline "
                            "or copy).",
                            MetricType::Gauge);
  auto& workers = list.add("grelay_workers", "Worker threads relaying traffic.", MetricType::Gauge);
  auto& reloadCount = list.add("grelay_config_reloads_total",
                               "Attempts to change the running configuration, by cause (sighup: "
                               "the file; dns: a server's host name moved) and result (ok: a "
                               "new generation took over, or for dns new sessions take the new "
                               "address; failed: the running one stayed).",
                               MetricType::Counter);
  auto& reloadOk = list.add("grelay_config_last_reload_successful",
                            "0 while the latest attempt to change the configuration failed "
                            "(the running configuration stays), else 1.",
                            MetricType::Gauge);
  auto& generations = list.add("grelay_config_generations",
                               "Configuration generations running: the current one and older "
                               "ones still finishing their sessions.",
                               MetricType::Gauge);
  auto& maxConnections = list.add("grelay_max_connections",
                                  "Server-wide limit on open client connections "
                                  "([server] max_connections).",
                                  MetricType::Gauge);
  auto& listenerMax = list.add("grelay_listener_max_connections",
                               "Per-listener limit on open client connections (listeners that "
                               "set max_connections).",
                               MetricType::Gauge);
  auto& listenerRate = list.add("grelay_listener_max_connection_rate",
                                "New client connections a listener accepts per second (listeners "
                                "that set max_connection_rate).",
                                MetricType::Gauge);
  auto& connections =
      list.add("grelay_connections_total", "Client connections accepted.", MetricType::Counter);
  auto& active =
      list.add("grelay_connections_active", "Client sessions open now.", MetricType::Gauge);
  auto& rejected = list.add("grelay_connections_rejected_total",
                            "Client connections closed at once because a limit was reached, by "
                            "limit: server ([server] max_connections), listener (its "
                            "max_connections), client (max_connections_per_client).",
                            MetricType::Counter);
  auto& denied = list.add("grelay_connections_denied_total",
                          "Client connections reset because the client address is outside "
                          "the listener's allow networks (listeners with allow).",
                          MetricType::Counter);
  auto& rateLimited =
      list.add("grelay_connections_rate_limited_total",
               "Times a worker stopped accepting on the listener because max_connection_rate was "
               "reached; the next connection waited in the accept queue (listeners with "
               "max_connection_rate).",
               MetricType::Counter);
  auto& received = list.add("grelay_received_bytes_total",
                            "Bytes received: direction=request from clients, direction=response "
                            "from upstream servers.",
                            MetricType::Counter);
  auto& sent = list.add("grelay_sent_bytes_total",
                        "Bytes sent to a target: the listener's upstream pool or one of its "
                        "mirrors.",
                        MetricType::Counter);
  auto& clientSent = list.add("grelay_client_sent_bytes_total", "Bytes sent back to clients.",
                              MetricType::Counter);
  auto& chunks =
      list.add("grelay_chunks_total", "Chunks relayed, by relay path (group, mainline, copy).",
               MetricType::Counter);
  auto& idleTimeouts =
      list.add("grelay_idle_timeouts_total", "Sessions closed by the listener's idle_timeout.",
               MetricType::Counter);
  auto& maxDurations =
      list.add("grelay_max_session_duration_resets_total",
               "Sessions reset at the listener's max_session_duration (listeners that set one).",
               MetricType::Counter);
  auto& resets = list.add("grelay_session_resets_total",
                          "Sessions ended by a TCP reset from either side.", MetricType::Counter);
  auto& connectErrors =
      list.add("grelay_upstream_connect_errors_total",
               "Connects to upstream servers that failed or timed out.", MetricType::Counter);
  auto& markedDown = list.add("grelay_upstream_marked_down_total",
                              "Times a server of the upstream pool was marked down after "
                              "max_fails consecutive failed connects (tried last for "
                              "fail_timeout).",
                              MetricType::Counter);
  auto& serverFull = list.add("grelay_upstream_server_full_total",
                              "Times a session passed over a server of the pool because it had "
                              "max_conns connections.",
                              MetricType::Counter);
  auto& queued = list.add("grelay_upstream_queued_total",
                          "Client sessions that found every server at max_conns and waited "
                          "for a slot (pools with queue_timeout).",
                          MetricType::Counter);
  auto& queueing = list.add("grelay_upstream_queued_sessions",
                            "Client sessions waiting for a slot on a server now (pools with "
                            "queue_timeout).",
                            MetricType::Gauge);
  auto& unavailable = list.add("grelay_upstream_unavailable_total",
                               "Client sessions closed because every server of the upstream "
                               "pool failed.",
                               MetricType::Counter);
  auto& routeMisses =
      list.add("grelay_route_misses_total",
               "Sessions of a listener with routes that no route took (they went to the "
               "listener's upstream, or were reset if it has none), by reason: unmatched (no route "
               "names the server the client asked for, or it "
               "asked for none), not_tls (its first bytes are not a TLS ClientHello), timeout "
               "(the ClientHello was not whole within connect_timeout), closed (the client "
               "closed before it was). Only unmatched on a listener with tls.",
               MetricType::Counter);
  auto& connectDuration = list.add("grelay_upstream_connect_duration_seconds",
                                   "Time to connect to an upstream server (successful connects).",
                                   MetricType::Histogram);
  auto& queueDuration =
      list.add("grelay_upstream_queue_duration_seconds",
               "Time a session waited for a free slot because every server was at max_conns, "
               "observed as each wait ends: with a slot, at queue_timeout or when the session "
               "ends (pools with max_conns and queue_timeout).",
               MetricType::Histogram);
  auto& sessionDuration = list.add("grelay_session_duration_seconds",
                                   "Length of client sessions from accept to close, observed "
                                   "as they close (the connections grelay_connections_total "
                                   "counts).",
                                   MetricType::Histogram);
  auto& mirrorSessions = list.add("grelay_mirror_sessions_total",
                                  "Client sessions sampled for a mirror.", MetricType::Counter);
  auto& mirrorCuts = list.add("grelay_mirror_cuts_total",
                              "Sessions on which a mirror was cut (max_lag exceeded, error or "
                              "unreachable).",
                              MetricType::Counter);
  auto& mirrorDropped =
      list.add("grelay_mirror_dropped_bytes_total",
               "Bytes of sampled sessions a mirror did not get.", MetricType::Counter);
  auto& mirrorConnectErrors =
      list.add("grelay_mirror_connect_errors_total",
               "Connects to a mirror that failed or timed out.", MetricType::Counter);
  auto& mirrorMarkedDown = list.add("grelay_mirror_marked_down_total",
                                    "Times the mirror was marked down after max_fails failed "
                                    "connects in a row (sampled sessions skip it for "
                                    "fail_timeout).",
                                    MetricType::Counter);
  auto& mirrorSkipped = list.add("grelay_mirror_skipped_sessions_total",
                                 "Sampled sessions that skipped the mirror while it was marked "
                                 "down (their bytes count as dropped).",
                                 MetricType::Counter);
  auto& mirrorResponse =
      list.add("grelay_mirror_response_bytes_total",
               "Bytes a mirror sent back (read and discarded).", MetricType::Counter);
  auto& mirrorDns = list.add("grelay_mirror_dns_lookups_total",
                             "Lookups of the mirror's host name (resolve_interval), by result: "
                             "unchanged, changed (a new address, which new sessions "
                             "take), failed (the address in use stays).",
                             MetricType::Counter);
  auto& tapBytes =
      list.add("grelay_tap_bytes_total", "Payload bytes written to the tap.", MetricType::Counter);
  auto& tapDropped = list.add("grelay_tap_dropped_bytes_total",
                              "Payload bytes the tap did not record (max_size, max_lag, errors).",
                              MetricType::Counter);
  auto& tapErrors = list.add("grelay_tap_errors_total", "Tap write errors that disabled the tap.",
                             MetricType::Counter);
  auto& proxyErrors = list.add("grelay_proxy_protocol_errors_total",
                               "Client connections closed because they did not start with a "
                               "valid PROXY protocol header, or came from a peer outside "
                               "proxy_protocol_from (listeners with accept_proxy_protocol).",
                               MetricType::Counter);
  auto& accessDropped = list.add("grelay_access_log_dropped_lines_total",
                                 "Access log lines lost because writing the file failed (disk "
                                 "full, I/O error).",
                                 MetricType::Counter);
  auto& tlsHandshakes =
      list.add("grelay_tls_handshakes_total", "Client TLS handshakes completed on a TLS listener.",
               MetricType::Counter);
  auto& tlsResumed = list.add("grelay_tls_resumed_handshakes_total",
                              "Client TLS handshakes that resumed a session (a ticket or session "
                              "ID) instead of a full key exchange; counted in "
                              "grelay_tls_handshakes_total too.",
                              MetricType::Counter);
  auto& tlsFailures = list.add("grelay_tls_handshake_failures_total",
                               "Client TLS handshakes that failed (reason=error: protocol, "
                               "version, plaintext client; reason=timeout: handshake_timeout).",
                               MetricType::Counter);
  auto& ktls = list.add("grelay_ktls_sessions_total",
                        "TLS connections handed to kernel TLS after the handshake (their chunks "
                        "then count under the group or mainline path).",
                        MetricType::Counter);
  auto& upstreamTls = list.add("grelay_upstream_tls_failures_total",
                               "TLS handshakes with upstream servers that failed (certificate "
                               "verification, protocol); counted in connect errors too.",
                               MetricType::Counter);
  auto& upstreamTlsResumed =
      list.add("grelay_upstream_tls_resumed_handshakes_total",
               "TLS handshakes with upstream servers that resumed an earlier session "
               "(session_reuse): no key exchange or certificate verification.",
               MetricType::Counter);
  auto& certificateExpiry =
      list.add("grelay_tls_certificate_expiry_timestamp_seconds",
               "When each certificate a TLS listener serves (cert and certs) expires: its "
               "notAfter as Unix time, read when the configuration was loaded.",
               MetricType::Gauge);
  auto& upstreamCertificateExpiry =
      list.add("grelay_upstream_tls_certificate_expiry_timestamp_seconds",
               "When the client certificate a TLS pool presents to its servers expires "
               "(notAfter, Unix time).",
               MetricType::Gauge);
  auto& crlNextUpdate =
      list.add("grelay_tls_crl_next_update_timestamp_seconds",
               "The earliest nextUpdate (Unix time) of the revocation lists in a listener's "
               "client_crl file: past it, client certificates of that CA are refused until the "
               "file is refreshed and grelay reloaded.",
               MetricType::Gauge);
  auto& upstreamCrlNextUpdate =
      list.add("grelay_upstream_tls_crl_next_update_timestamp_seconds",
               "The earliest nextUpdate (Unix time) of the revocation lists in a TLS pool's crl "
               "file: past it, server certificates of that CA are refused until the file is "
               "refreshed and grelay reloaded.",
               MetricType::Gauge);
  auto& clientCaExpiry =
      list.add("grelay_tls_client_ca_expiry_timestamp_seconds",
               "When the CAs of a listener's client_ca file stop being good: the earliest "
               "notAfter (Unix time) of its CA certificates (of several with one subject, the "
               "newest); past it, client certificates that CA signed fail verification.",
               MetricType::Gauge);
  auto& upstreamCaExpiry =
      list.add("grelay_upstream_tls_ca_expiry_timestamp_seconds",
               "The same for a TLS pool's ca file: past it, server certificates that CA "
               "signed fail verification and the pool's connects fail.",
               MetricType::Gauge);
  auto& ocspNextUpdate =
      list.add("grelay_tls_ocsp_next_update_timestamp_seconds",
               "The nextUpdate (Unix time) of the OCSP response a TLS listener staples for a "
               "certificate (ocsp_response, or fetched by ocsp_update; 0 while none is): past it "
               "the response is no longer stapled until a new one is fetched, or the file is "
               "refreshed and grelay reloaded.",
               MetricType::Gauge);
  auto& ocspUpdates =
      list.add("grelay_tls_ocsp_updates_total",
               "OCSP responses grelay fetched from a certificate's responder (ocsp_update), by "
               "result: ok (stapled), error (unreachable, an HTTP error, not a good response "
               "for the certificate, revoked, out of date).",
               MetricType::Counter);
  auto& healthChecks = list.add("grelay_upstream_health_checks_total",
                                "Active health checks of the pool's servers (pools with "
                                "check_interval), by result (ok, failed).",
                                MetricType::Counter);
  auto& checkMarkedDown = list.add("grelay_upstream_health_check_marked_down_total",
                                   "Times a failed health check marked a server of the pool down.",
                                   MetricType::Counter);
  auto& serverActive = list.add("grelay_upstream_server_active_connections",
                                "Open connections to each server of the pool (all workers and "
                                "configuration generations).",
                                MetricType::Gauge);
  auto& serverUp = list.add("grelay_upstream_server_up",
                            "1 if the server is in the pool's rotation, 0 while it is marked "
                            "down (max_fails failed connects or health checks).",
                            MetricType::Gauge);
  auto& serverWeight = list.add("grelay_upstream_server_weight",
                                "The server's share of the pool's rotation right now: its "
                                "weight, 0 while marked down, scaled from 0 up during "
                                "slow_start.",
                                MetricType::Gauge);
  auto& serverSessions = list.add("grelay_upstream_server_sessions_total",
                                  "Sessions connected to each server of the pool (its TCP "
                                  "connect, and the TLS handshake for a TLS pool, succeeded).",
                                  MetricType::Counter);
  auto& serverFailures = list.add("grelay_upstream_server_connect_failures_total",
                                  "Sessions' connects to each server of the pool that failed or "
                                  "timed out, TLS handshakes included (not health checks).",
                                  MetricType::Counter);
  auto& serversDown = list.add("grelay_upstream_servers_down",
                               "Servers of the pool marked down after the latest round of "
                               "health checks (pools with check_interval).",
                               MetricType::Gauge);
  auto& upstreamDns = list.add("grelay_upstream_dns_lookups_total",
                               "Lookups of the pool's server host names (resolve_interval), by "
                               "result: unchanged, changed (a new address, which new sessions "
                               "take), failed (the address in use stays).",
                               MetricType::Counter);
  auto dnsSamples = [](MetricFamily& family, const Labels& labels, const DnsTotals& dns) {
    auto with = [&labels](const char* result) {
      Labels l = labels;
      l.push_back({"result", result});
      return l;
    };
    sample(family, with("unchanged"), asDouble(dns.lookups - dns.failures - dns.changes));
    sample(family, with("changed"), asDouble(dns.changes));
    sample(family, with("failed"), asDouble(dns.failures));
  };

  sample(buildInfo, {{"version", inputs_.version.empty() ? "unknown" : inputs_.version}}, 1);
  if (!relayPath.empty()) {
    sample(pathInfo, {{"path", relayPath}}, 1);
  }
  sample(workers, {}, asDouble(workerCount));
  if (reloads != nullptr) {
    for (int c = kReloadSighup; c <= kReloadDns; ++c) {
      const ClientMetric::Label cause{"cause", reloadCauseName(c)};
      sample(reloadCount, {cause, {"result", "ok"}}, asDouble(reloads->ok[c].value()));
      sample(reloadCount, {cause, {"result", "failed"}}, asDouble(reloads->failed[c].value()));
    }
    sample(reloadOk, {}, static_cast<double>(reloads->lastOk.value()));
    sample(generations, {}, static_cast<double>(reloads->generations.value()));
  }
  sample(maxConnections, {}, config.server.max_connections);

  for (size_t l = 0; l < totals.size(); ++l) {
    const config::ListenerConfig& listener = config.listeners[l];
    const ListenerTotals& total = totals[l];
    const ClientMetric::Label name{"listener", listener.name};

    if (listener.max_connections > 0) {
      sample(listenerMax, {name}, listener.max_connections);
    }
    sample(connections, {name}, asDouble(total.connections));
    sample(active, {name}, static_cast<double>(total.active));
    // A limit the listener does not set has no series (the server-wide one always exists).
    for (int r = kServerLimit; r < kRejectLimitCount; ++r) {
      if ((r == kListenerLimit && listener.max_connections == 0) ||
          (r == kClientLimit && listener.max_connections_per_client == 0) ||
          (r == kClientRateLimit && listener.max_connection_rate_per_client == 0)) {
        continue;
      }
      sample(rejected, {name, {"limit", rejectLimitName(r)}}, asDouble(total.rejected[r]));
    }
    if (!listener.allow.empty()) {
      sample(denied, {name}, asDouble(total.denied));
    }
    if (listener.max_connection_rate > 0) {
      sample(listenerRate, {name}, listener.max_connection_rate);
      sample(rateLimited, {name}, asDouble(total.rateLimited));
    }
    for (int d = kRequest; d <= kResponse; ++d) {
      sample(received, {name, {"direction", directionName(d)}}, asDouble(total.receivedBytes[d]));
    }
    // The listener's pools (its own and its routes'), each once, with what its sessions did
    // toward them.
    struct Use {
      const std::string* name;
      const config::UpstreamConfig* pool;
      UpstreamUseTotals totals;
    };
    std::vector<Use> uses;
    for (const std::string* pool : upstreamsOf(listener)) {
      auto named = [&](const config::UpstreamConfig& u) { return u.name == *pool; };
      auto it = std::find_if(config.upstreams.begin(), config.upstreams.end(), named);
      auto found = total.upstreams.find(*pool);
      if (it != config.upstreams.end()) {
        uses.push_back(
            {pool, &*it, found != total.upstreams.end() ? found->second : UpstreamUseTotals{}});
      }
    }
    for (const Use& use : uses) {
      sample(sent, {name, {"target", *use.name}}, asDouble(use.totals.sentBytes));
    }
    for (size_t m = 0; m < listener.mirrors.size(); ++m) {
      // A mirror named like an upstream pool would repeat a series: keep them apart.
      const std::string& mirror = listener.mirrors[m].name;
      const bool clash =
          std::any_of(uses.begin(), uses.end(), [&](const Use& u) { return *u.name == mirror; });
      sample(sent, {name, {"target", clash ? "mirror:" + mirror : mirror}},
             asDouble(total.mirrors[m].sentBytes));
    }
    sample(clientSent, {name}, asDouble(total.sentClientBytes));
    for (int p = 0; p < kPathCount; ++p) {
      sample(chunks, {name, {"path", pathName(p)}}, asDouble(total.chunks[p]));
    }
    sample(idleTimeouts, {name}, asDouble(total.idleTimeouts));
    if (listener.max_session_duration.count() > 0) {
      sample(maxDurations, {name}, asDouble(total.maxDurations));
    }
    sample(resets, {name}, asDouble(total.resets));

    bool anyUpstreamTls = false;
    for (const Use& use : uses) {
      const ClientMetric::Label upstream{"upstream", *use.name};
      const UpstreamUseTotals& t = use.totals;
      sample(connectErrors, {name, upstream}, asDouble(t.connectErrors));
      sample(markedDown, {name, upstream}, asDouble(t.markedDown));
      if (anyMaxConns(*use.pool)) {
        sample(serverFull, {name, upstream}, asDouble(t.serverFull));
        if (use.pool->queue_timeout.count() > 0) {
          sample(queued, {name, upstream}, asDouble(t.queued));
          sample(queueing, {name, upstream}, static_cast<double>(t.queueing));
          ClientMetric& metric = queueDuration.metric.emplace_back();
          metric.label = {name, upstream};
          t.queueDuration.emit(metric);
        }
      }
      ClientMetric& metric = connectDuration.metric.emplace_back();
      metric.label = {name, upstream};
      t.connectDuration.emit(metric);
      if (use.pool->tls.enabled) {
        anyUpstreamTls = true;
        sample(upstreamTls, {name, upstream}, asDouble(t.tlsFailures));
        sample(upstreamTlsResumed, {name, upstream}, asDouble(t.tlsResumed));
      }
    }
    sample(unavailable, {name}, asDouble(total.noUpstream));
    if (!listener.routes.empty()) {
      for (int r = 0; r < kRouteMissCount; ++r) {
        if (r == kRouteUnmatched || !listener.tls) {
          sample(routeMisses, {name, {"reason", routeMissName(r)}}, asDouble(total.routeMisses[r]));
        }
      }
    }
    {
      ClientMetric& metric = sessionDuration.metric.emplace_back();
      metric.label = {name};
      total.sessionDuration.emit(metric);
    }

    for (size_t m = 0; m < listener.mirrors.size(); ++m) {
      const MirrorTotals& mirror = total.mirrors[m];
      const Labels labels{name, {"mirror", listener.mirrors[m].name}};
      sample(mirrorSessions, labels, asDouble(mirror.sessions));
      sample(mirrorCuts, labels, asDouble(mirror.cuts));
      sample(mirrorDropped, labels, asDouble(mirror.droppedBytes));
      sample(mirrorConnectErrors, labels, asDouble(mirror.connectErrors));
      sample(mirrorMarkedDown, labels, asDouble(mirror.markedDown));
      sample(mirrorSkipped, labels, asDouble(mirror.skippedSessions));
      sample(mirrorResponse, labels, asDouble(mirror.discardedBytes));
      if (listener.mirrors[m].resolve_interval.count() > 0 &&
          listener.mirrors[m].address.host_name) {
        dnsSamples(mirrorDns, labels, mirror.dns);
      }
    }

    if (listener.accept_proxy_protocol) {
      sample(proxyErrors, {name}, asDouble(total.proxyProtocolErrors));
    }
    if (!listener.access_log.empty()) {
      sample(accessDropped, {name}, asDouble(total.accessLogDroppedLines));
    }
    if (listener.tls) {
      sample(tlsHandshakes, {name}, asDouble(total.tlsHandshakes));
      sample(tlsResumed, {name}, asDouble(total.tlsResumed));
      sample(tlsFailures, {name, {"reason", "error"}}, asDouble(total.tlsHandshakeFailures));
      sample(tlsFailures, {name, {"reason", "timeout"}}, asDouble(total.tlsHandshakeTimeouts));
    }
    if (listener.tls || anyUpstreamTls) {
      sample(ktls, {name}, asDouble(total.ktlsSessions));
    }

    if (listener.tap) {
      sample(tapBytes, {name}, asDouble(total.tapBytes));
      sample(tapDropped, {name}, asDouble(total.tapDroppedBytes));
      sample(tapErrors, {name}, asDouble(total.tapErrors));
    }
  }
  for (size_t u = 0; u < config.upstreams.size(); ++u) {
    const config::UpstreamConfig& pool = config.upstreams[u];
    const auto& newest = gens.back().upstreams;
    const UpstreamStats* now = u < newest.size() ? newest[u] : nullptr;
    if (now != nullptr && now->view != nullptr) {
      const size_t count = std::min(pool.servers.size(), now->view->serverCount());
      // The newest pool's counts include the sessions older generations left on the same
      // servers: a reload's pool shares each kept server's counter (inheritHealth).
      const ClientMetric::Label name{"upstream", pool.name};
      for (size_t s = 0; s < count; ++s) {
        const Labels labels{name, {"server", pool.servers[s].label()}};
        sample(serverActive, labels, static_cast<double>(now->view->serverActive(s)));
        sample(serverUp, labels, now->view->serverDown(s) ? 0 : 1);
        sample(serverWeight, labels, now->view->serverWeight(s));
        sample(serverSessions, labels, asDouble(now->view->serverSessions(s)));
        sample(serverFailures, labels, asDouble(now->view->serverConnectFailures(s)));
      }
    }
    const bool checked = pool.check_interval.count() > 0;
    const bool resolved =
        pool.resolve_interval.count() > 0 &&
        std::any_of(pool.servers.begin(), pool.servers.end(),
                    [](const config::UpstreamServer& s) { return s.address.host_name; });
    if (!checked && !resolved) {
      continue;
    }
    UpstreamTotals sum;
    if (retired != nullptr) {
      if (auto it = retired->upstreams.find(pool.name); it != retired->upstreams.end()) {
        sum = it->second;
      }
    }
    for (const StatsRegistry::Generation& gen : gens) {
      for (size_t k = 0; k < gen.upstreams.size() && k < gen.config->upstreams.size(); ++k) {
        if (gen.upstreams[k] != nullptr && gen.config->upstreams[k].name == pool.name) {
          addUpstream(sum, *gen.upstreams[k]);
        }
      }
    }
    const ClientMetric::Label name{"upstream", pool.name};
    if (resolved) {
      dnsSamples(upstreamDns, {name}, sum.dns);
    }
    if (!checked) {
      continue;
    }
    sample(healthChecks, {name, {"result", "ok"}}, asDouble(sum.checks - sum.checkFailures));
    sample(healthChecks, {name, {"result", "failed"}}, asDouble(sum.checkFailures));
    sample(checkMarkedDown, {name}, asDouble(sum.markedDown));
    sample(serversDown, {name}, now != nullptr ? static_cast<double>(now->serversDown.value()) : 0);
  }
  // The files of the configuration running now (a draining generation's may be older).
  for (const TlsFileDate& date : gens.back().tlsDates) {
    const ClientMetric::Label file{"file", date.file};
    const auto seconds = static_cast<double>(date.unixSeconds);
    switch (date.kind) {
      case TlsFileDate::Kind::kListenerCertificate:
        sample(certificateExpiry, {{"listener", date.owner}, file}, seconds);
        break;
      case TlsFileDate::Kind::kUpstreamCertificate:
        sample(upstreamCertificateExpiry, {{"upstream", date.owner}, file}, seconds);
        break;
      case TlsFileDate::Kind::kClientCrl:
        sample(crlNextUpdate, {{"listener", date.owner}, file}, seconds);
        break;
      case TlsFileDate::Kind::kOcspResponse:
        if (date.ocsp == nullptr) {
          sample(ocspNextUpdate, {{"listener", date.owner}, file}, seconds);
          break;
        }
        if (const int64_t next = date.ocsp->nextUpdate.load(std::memory_order_relaxed);
            next != OcspUpdateStats::kNoNextUpdate) {
          sample(ocspNextUpdate, {{"listener", date.owner}, file}, static_cast<double>(next));
        }
        sample(ocspUpdates, {{"listener", date.owner}, file, {"result", "ok"}},
               asDouble(date.ocsp->ok.value()));
        sample(ocspUpdates, {{"listener", date.owner}, file, {"result", "error"}},
               asDouble(date.ocsp->failed.value()));
        break;
      case TlsFileDate::Kind::kClientCa:
        sample(clientCaExpiry, {{"listener", date.owner}, file}, seconds);
        break;
      case TlsFileDate::Kind::kUpstreamCa:
        sample(upstreamCaExpiry, {{"upstream", date.owner}, file}, seconds);
        break;
      case TlsFileDate::Kind::kUpstreamCrl:
        sample(upstreamCrlNextUpdate, {{"upstream", date.owner}, file}, seconds);
        break;
    }
  }
  return list.take();
}

}  // namespace grelay::metrics
