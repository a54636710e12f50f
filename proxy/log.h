// Line-oriented logging to stderr: "2026-11-23T16:47:01.123Z grelay[pid] LEVEL message".
// Each line is one write(2), so lines from worker threads never interleave.
#pragma once

#include <atomic>
#include <cstdarg>
#include <cstdint>

namespace grelay::proxy {

enum class LogLevel { Debug, Info, Warn, Error };

void setLogLevel(LogLevel level);
void logLine(LogLevel level, const char* format, ...) __attribute__((format(printf, 2, 3)));

#define GRELAY_LOG_INFO(...) ::grelay::proxy::logLine(::grelay::proxy::LogLevel::Info, __VA_ARGS__)
#define GRELAY_LOG_WARN(...) ::grelay::proxy::logLine(::grelay::proxy::LogLevel::Warn, __VA_ARGS__)
#define GRELAY_LOG_ERROR(...) \
  ::grelay::proxy::logLine(::grelay::proxy::LogLevel::Error, __VA_ARGS__)
#define GRELAY_LOG_DEBUG(...) \
  ::grelay::proxy::logLine(::grelay::proxy::LogLevel::Debug, __VA_ARGS__)

// Lets one message through per interval (any thread) and counts the ones it held back.
class LogLimiter {
public:
  explicit LogLimiter(uint64_t intervalNanos = 60'000'000'000ull) : interval_(intervalNanos) {}
  // True if a message may be logged now; *suppressed = how many were held back since.
  bool allow(uint64_t now, uint64_t* suppressed);

private:
  uint64_t interval_;
  std::atomic<uint64_t> last_{0};
  std::atomic<uint64_t> suppressed_{0};
};

uint64_t monotonicNanos();

}  // namespace grelay::proxy
