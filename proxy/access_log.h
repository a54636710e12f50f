// The access log: one JSON line per finished session ([[listener]] access_log). Each worker
// buffers its lines per listener and appends them to the shared file (O_APPEND, whole
// lines per write) when 64 KiB are buffered, at least once a second, and when it stops:
// a few synchronous writes per second at most, never one per session.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>

#include "metrics/stats.h"
#include "proxy/log.h"

namespace grelay::proxy {

// What one line says about a finished session.
struct AccessRecord {
  int64_t endUnixNanos = 0;  // wall clock when the session ended
  const std::string* listener = nullptr;
  uint32_t worker = 0;  // with `session`, names the session in that worker's tap file
  uint64_t session = 0;
  sockaddr_storage client{};            // after a PROXY protocol header, the address it carried
  const std::string* server = nullptr;  // the upstream server it was connected to, or null
  uint64_t durationNanos = 0;
  uint64_t requestBytes = 0;   // received from the client
  uint64_t responseBytes = 0;  // received from the upstream
  const char* end = "normal";  // normal | connect_failed | idle_timeout | shutdown | error
  bool reset = false;          // the client got a reset, not a FIN
  bool tls = false;            // TLS terminated here
  uint32_t mirrors = 0;        // mirrors sampled for the session
  uint32_t mirrorsCut = 0;
};

// {"time":"2026-12-06T05:12:54.123Z","listener":"web","worker":0,"session":17,
//  "client":"192.0.2.1:5555",
//  "server":"127.0.0.1:8000","duration":0.004512,"request_bytes":78,"response_bytes":4321,
//  "end":"normal","reset":false,"tls":false,"mirrors":1,"mirrors_cut":0}  + "\n"
// (one line; "server" is null when no server was connected).
std::string accessLogLine(const AccessRecord& record);

class AccessLog {
public:
  static constexpr size_t kFlushBytes = 64 * 1024;
  static constexpr uint64_t kFlushNanos = 1'000'000'000ull;

  // `fd` (O_APPEND) is shared with the other workers and not owned.
  AccessLog(int fd, std::string path, std::string listener, metrics::ListenerStats& stats);
  ~AccessLog() { flush(); }
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  void add(const AccessRecord& record, uint64_t now);
  // Writes what is buffered if its oldest line is a second old.
  void flushIfDue(uint64_t now);
  // Writes what is buffered. A failed write (disk full, I/O error) drops the buffered
  // lines, counts them in grelay_access_log_dropped_lines_total and logs (rate-limited).
  void flush();

private:
  int fd_;
  std::string path_;
  std::string listener_;
  metrics::ListenerStats& stats_;
  std::string buffer_;
  uint64_t oldest_ = 0;  // monotonic ns when the oldest buffered line was added
  LogLimiter errorLog_;
};

}  // namespace grelay::proxy
