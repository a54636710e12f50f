#include "proxy/log.h"

#include <sys/time.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>

namespace grelay::proxy {
namespace {
std::atomic<int> gLevel{static_cast<int>(LogLevel::Info)};
const char* levelName(LogLevel l) {
  switch (l) {
    case LogLevel::Debug:
      return "DEBUG";
    case LogLevel::Info:
      return "INFO";
    case LogLevel::Warn:
      return "WARN";
    case LogLevel::Error:
      return "ERROR";
  }
  return "?";
}
}  // namespace

void setLogLevel(LogLevel level) {
  gLevel.store(static_cast<int>(level));
}

void logLine(LogLevel level, const char* format, ...) {
  if (static_cast<int>(level) < gLevel.load(std::memory_order_relaxed)) {
    return;
  }
  char line[2048];
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t{};
  gmtime_r(&ts.tv_sec, &t);
  int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ grelay[%d] %s ",
                   t.tm_year + 1900, t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
                   ts.tv_nsec / 1000000, static_cast<int>(getpid()), levelName(level));
  va_list ap;
  va_start(ap, format);
  int m = vsnprintf(line + n, sizeof(line) - static_cast<size_t>(n) - 1, format, ap);
  va_end(ap);
  size_t len = static_cast<size_t>(n) + static_cast<size_t>(m < 0 ? 0 : m);
  if (len > sizeof(line) - 2) {
    len = sizeof(line) - 2;
  }
  line[len++] = '\n';
  ssize_t ignored = ::write(STDERR_FILENO, line, len);
  (void)ignored;
}

bool LogLimiter::allow(uint64_t now, uint64_t* suppressed) {
  uint64_t last = last_.load(std::memory_order_relaxed);
  if (last != 0 && now - last < interval_) {
    suppressed_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  if (!last_.compare_exchange_strong(last, now)) {
    suppressed_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  *suppressed = suppressed_.exchange(0);
  return true;
}

uint64_t monotonicNanos() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace grelay::proxy
