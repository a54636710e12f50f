// process_* metrics describe this very process.
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <string>

#include <gtest/gtest.h>

#include "metrics/process.h"

namespace grelay::metrics {
namespace {

std::map<std::string, double> values() {
  std::map<std::string, double> out;
  for (const auto& family : collectProcessMetrics(processStartTimeSeconds())) {
    EXPECT_EQ(family.metric.size(), 1u) << family.name;
    EXPECT_FALSE(family.help.empty()) << family.name;
    const auto& m = family.metric.front();
    out[family.name] =
        family.type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value;
  }
  return out;
}

TEST(ProcessMetricsTest, AllSixFamiliesArePresent) {
  const auto v = values();
  for (const char* name : {"process_cpu_seconds_total", "process_open_fds", "process_max_fds",
                           "process_virtual_memory_bytes", "process_resident_memory_bytes",
                           "process_start_time_seconds"}) {
    EXPECT_EQ(v.count(name), 1u) << name;
  }
}

TEST(ProcessMetricsTest, OpenFdsCountsEveryDescriptorThisProcessOpens) {
  const double before = values().at("process_open_fds");
  int a[2], b[2], c[2];
  ASSERT_EQ(pipe(a), 0);
  ASSERT_EQ(pipe(b), 0);
  ASSERT_EQ(pipe(c), 0);
  const double during = values().at("process_open_fds");
  for (int fd : {a[0], a[1], b[0], b[1], c[0], c[1]}) {
    close(fd);
  }
  EXPECT_EQ(during, before + 6);
  EXPECT_EQ(values().at("process_open_fds"), before);
}

TEST(ProcessMetricsTest, MaxFdsIsTheSoftLimit) {
  rlimit limit{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &limit), 0);
  EXPECT_EQ(values().at("process_max_fds"), static_cast<double>(limit.rlim_cur));
}

TEST(ProcessMetricsTest, ResidentMemoryIsPositiveAndWithinVirtual) {
  const auto v = values();
  EXPECT_GT(v.at("process_resident_memory_bytes"), 0);
  EXPECT_GE(v.at("process_virtual_memory_bytes"), v.at("process_resident_memory_bytes"));
}

TEST(ProcessMetricsTest, ResidentMemoryGrowsWhenPagesAreTouched) {
  const double before = values().at("process_resident_memory_bytes");
  constexpr size_t kSize = 64 << 20;
  std::vector<char> block(kSize, 1);  // touches every page
  const double after = values().at("process_resident_memory_bytes");
  EXPECT_GE(after - before, static_cast<double>(kSize) * 0.9);
  EXPECT_EQ(block[kSize - 1], 1);
}

TEST(ProcessMetricsTest, StartTimeIsThisProcessesStart) {
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  const double start = values().at("process_start_time_seconds");
  // The test binary started moments ago; /proc/stat's btime is whole seconds.
  EXPECT_LE(start, now + 1.0);
  EXPECT_GE(start, now - 300.0);
}

TEST(ProcessMetricsTest, CpuSecondsGrowWithWork) {
  const double before = values().at("process_cpu_seconds_total");
  // Spin for 200ms of this process's CPU time (wall time varies on a loaded machine).
  auto cpuNow = [] {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
  };
  const double until = cpuNow() + 0.2;
  volatile uint64_t spin = 0;
  while (cpuNow() < until) {
    spin = spin + 1;
  }
  const double after = values().at("process_cpu_seconds_total");
  EXPECT_GE(after - before, 0.19);
  EXPECT_LT(after - before, 5.0);
}

}  // namespace
}  // namespace grelay::metrics
