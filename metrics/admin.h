// The admin endpoint: prometheus-cpp's Exposer on [admin].listen serving GET /metrics.
// Metric values are read from the workers' stats at scrape time (see stats.h); nothing
// here runs on the data path.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "metrics/stats.h"

namespace grelay::metrics {

// What the exposer reads. The config and every WorkerStats must outlive the AdminServer
// (it reads them from the HTTP server's threads on every scrape); workers[i] must have
// one ListenerStats per config listener and one MirrorStats per mirror, in config order.
struct AdminInputs {
  const config::Config* config = nullptr;
  std::vector<const WorkerStats*> workers;
  std::string relayPath;  // the path in use: "group", "mainline" or "copy"
  std::string version;
};

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
