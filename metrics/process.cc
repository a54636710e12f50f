#include "metrics/process.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

namespace grelay::metrics {
namespace {

prometheus::MetricFamily gauge(std::string name, std::string help, double value) {
  prometheus::MetricFamily family{
      std::move(name), std::move(help), prometheus::MetricType::Gauge, {}};
  family.metric.emplace_back().gauge.value = value;
  return family;
}

// The fields of /proc/self/stat after "(comm)", so fields()[0] is field 3 (state) of
// proc(5). comm may hold spaces and parentheses: split after the last ')'.
std::vector<std::string> statFields() {
  std::ifstream in("/proc/self/stat");
  std::string line;
  if (!std::getline(in, line)) {
    return {};
  }
  const size_t close = line.rfind(')');
  if (close == std::string::npos) {
    return {};
  }
  std::istringstream rest(line.substr(close + 1));
  std::vector<std::string> fields;
  for (std::string field; rest >> field;) {
    fields.push_back(field);
  }
  return fields;
}

// proc(5) field number (1-based, as in the man page) of /proc/self/stat.
std::optional<unsigned long long> statField(const std::vector<std::string>& fields, size_t number) {
  const size_t index = number - 3;
  if (number < 3 || index >= fields.size()) {
    return std::nullopt;
  }
  char* end = nullptr;
  const unsigned long long value = std::strtoull(fields[index].c_str(), &end, 10);
  if (end == fields[index].c_str() || *end != '\0') {
    return std::nullopt;
  }
  return value;
}

std::optional<double> bootTimeSeconds() {
  std::ifstream in("/proc/stat");
  for (std::string key; in >> key;) {
    if (key == "btime") {
      double value = 0;
      if (in >> value) {
        return value;
      }
      return std::nullopt;
    }
    in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return std::nullopt;
}

std::optional<double> openFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) {
    return std::nullopt;
  }
  const int own = dirfd(dir);
  double count = 0;
  while (const dirent* entry = readdir(dir)) {
    if (entry->d_name[0] == '.') {
      continue;
    }
    if (std::atoi(entry->d_name) == own) {
      continue;  // the descriptor this listing uses
    }
    count += 1;
  }
  closedir(dir);
  return count;
}

}  // namespace

std::optional<double> processStartTimeSeconds() {
  const auto boot = bootTimeSeconds();
  const auto startTicks = statField(statFields(), 22);
  const long ticksPerSecond = sysconf(_SC_CLK_TCK);
  if (!boot || !startTicks || ticksPerSecond <= 0) {
    return std::nullopt;
  }
  return *boot + static_cast<double>(*startTicks) / static_cast<double>(ticksPerSecond);
}

std::vector<prometheus::MetricFamily> collectProcessMetrics(
    std::optional<double> startTimeSeconds) {
  std::vector<prometheus::MetricFamily> families;

  rusage usage{};
  if (getrusage(RUSAGE_SELF, &usage) == 0) {
    const double cpu = static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
                       static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
    prometheus::MetricFamily family{"process_cpu_seconds_total",
                                    "Total user and system CPU time spent in seconds.",
                                    prometheus::MetricType::Counter,
                                    {}};
    family.metric.emplace_back().counter.value = cpu;
    families.push_back(std::move(family));
  }

  if (const auto fds = openFds()) {
    families.push_back(gauge("process_open_fds", "Number of open file descriptors.", *fds));
  }
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    families.push_back(gauge("process_max_fds", "Maximum number of open file descriptors.",
                             static_cast<double>(limit.rlim_cur)));
  }

  const auto fields = statFields();
  const auto vsize = statField(fields, 23);  // bytes
  const auto rss = statField(fields, 24);    // pages
  if (vsize) {
    families.push_back(gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                             static_cast<double>(*vsize)));
  }
  const long pageSize = sysconf(_SC_PAGESIZE);
  if (rss && pageSize > 0) {
    families.push_back(gauge("process_resident_memory_bytes", "Resident memory size in bytes.",
                             static_cast<double>(*rss) * static_cast<double>(pageSize)));
  }

  if (startTimeSeconds) {
    families.push_back(gauge("process_start_time_seconds",
                             "Start time of the process since unix epoch in seconds.",
                             *startTimeSeconds));
  }
  return families;
}

}  // namespace grelay::metrics
