// StatsCollector: the prometheus::Collectable registered with the Exposer. Collect() sums
// every worker's stats at scrape time and builds grelay's metric families (names, labels
// and meaning in metrics/README.md) plus the process_* families. The data path never
// touches prometheus-cpp: workers only bump their own relaxed counters (stats.h).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include "metrics/admin.h"

namespace grelay::metrics {

class StatsCollector : public prometheus::Collectable {
public:
  // Reads `inputs.config` and the workers on every Collect(); they must outlive this.
  explicit StatsCollector(AdminInputs inputs);

  std::vector<prometheus::MetricFamily> Collect() const override;

  // Collect() serialized in the Prometheus text format 0.0.4.
  std::string render() const;

private:
  std::vector<prometheus::MetricFamily> collectGrelay() const;
  std::vector<prometheus::MetricFamily> collectFrom(
      const std::vector<StatsRegistry::Generation>& generations, const RetiredTotals* retired,
      const std::string& relayPath, const ReloadStats* reloads) const;

  AdminInputs inputs_;
  std::optional<double> startTimeSeconds_;  // process_start_time_seconds, read once
};

}  // namespace grelay::metrics
