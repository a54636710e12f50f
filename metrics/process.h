// process_* metrics in the standard names the Go and Python clients use (prometheus-cpp
// has none), read from /proc/self and getrusage/getrlimit at scrape time.
#pragma once

#include <optional>
#include <vector>

#include <prometheus/metric_family.h>

namespace grelay::metrics {

// Seconds since the epoch at which this process started (from /proc/self/stat and
// /proc/stat's btime); nullopt if /proc is not readable.
std::optional<double> processStartTimeSeconds();

// process_cpu_seconds_total, process_open_fds, process_max_fds,
// process_virtual_memory_bytes, process_resident_memory_bytes and, if known,
// process_start_time_seconds. A value that cannot be read is left out.
std::vector<prometheus::MetricFamily> collectProcessMetrics(std::optional<double> startTimeSeconds);

}  // namespace grelay::metrics
