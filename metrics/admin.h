// The admin endpoint: prometheus-cpp's Exposer on [admin].listen serving GET /metrics.
// Metric values are read from the workers' stats at scrape time (see stats.h); nothing
// here runs on the data path.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "metrics/stats.h"

namespace grelay::metrics {

struct AdminInputs {
  const config::Config* config = nullptr;
  std::vector<const WorkerStats*> workers;
  std::string relayPath;  // the path in use: "group", "mainline" or "copy"
  std::string version;
};

class AdminServer {
public:
  virtual ~AdminServer() = default;
  // The exposition text a scrape returns right now (Prometheus text format 0.0.4).
  virtual std::string render() const = 0;
};

// Starts serving on config->admin.listen. nullptr and *error when it cannot bind
// (prometheus-cpp throws CivetException; it is caught here).
std::unique_ptr<AdminServer> startAdmin(const AdminInputs& inputs, std::string* error);

}  // namespace grelay::metrics
