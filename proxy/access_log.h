// The access log: one JSON line per finished session ([[listener]] access_log). Each worker
// buffers its lines per listener and appends them to the shared file (O_APPEND, whole
// lines per write) when 64 KiB are buffered, at least once a second, and when it stops:
// a few writes per second at most, never one per session. The worker's writes go through
// its ring (one in flight per log; lines added meanwhile wait for the next), so a slow or
// stuck disk never stops a worker's loop; only the last write, when the worker stops, is
// synchronous.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "metrics/stats.h"
#include "proxy/log.h"
#include "relay/completion.h"
#include "relay/ring.h"

namespace grelay::proxy {

// What one line says about a finished session.
struct AccessRecord {
  int64_t endUnixNanos = 0;  // wall clock when the session ended
  const std::string* listener = nullptr;
  uint32_t worker = 0;  // with `session`, names the session in that worker's tap file
  uint64_t session = 0;
  sockaddr_storage client{};              // after a PROXY protocol header, the address it carried
  const std::string* upstream = nullptr;  // the pool its route chose, or null (refused before)
  const std::string* server = nullptr;    // the upstream server it was connected to, or null
  uint64_t durationNanos = 0;
  uint64_t queueNanos = 0;     // waiting for a slot at max_conns (queue_timeout)
  int64_t connectNanos = -1;   // the TCP connect to `server`; -1 when none succeeded
  uint64_t requestBytes = 0;   // received from the client
  uint64_t responseBytes = 0;  // received from the upstream
  const char* end = "normal";  // normal | connect_failed | idle_timeout | shutdown | error
  bool reset = false;          // the client got a reset, not a FIN
  bool tls = false;            // TLS terminated here
  // The server name the client sent in TLS SNI (terminated here, or read ahead for
  // routes); empty = none.
  std::string_view sni;
  // The ALPN protocol: the one the handshake chose (terminated here), else the ones the
  // ClientHello offered, comma-separated in its order (read ahead for routes); empty = none.
  std::string_view alpn;
  // The protocol version and cipher of a handshake that completed here ("TLSv1.3",
  // "TLS_AES_128_GCM_SHA256"); empty = none.
  std::string_view tlsVersion;
  std::string_view tlsCipher;
  const std::string* clientCert = nullptr;  // the subject of its certificate (mTLS), or null
  uint32_t mirrors = 0;                     // mirrors sampled for the session
  uint32_t mirrorsCut = 0;
};

// `text` as a JSON string. A client's SNI is any bytes but NUL: quotes, backslashes and
// control characters are escaped, and so is every byte past ASCII (as the code point of
// its Latin-1 reading), so the line is valid JSON and UTF-8 whatever the client sent (and
// a log line quoting it stays one printable line).
std::string jsonString(std::string_view text);

// A session's ID, unique across runs as well: "<run>-<worker>-<session>", where <run> is
// 8 hex digits drawn at random once per process ("3f09c2d1-0-17"). The access log's "id"
// and the PROXY protocol's PP2_TYPE_UNIQUE_ID (proxy_protocol_tlvs "unique_id").
std::string sessionId(uint32_t worker, uint64_t session);

// {"time":"2026-12-06T05:12:54.123Z","listener":"web","worker":0,"session":17,
//  "id":"3f09c2d1-0-17",
//  "client":"192.0.2.1:5555",
//  "server":"127.0.0.1:8000","duration":0.004512,"queue":0.000000,"connect":0.000210,
//  "request_bytes":78,"response_bytes":4321,
//  "end":"normal","reset":false,"tls":true,"sni":"api.example.com","alpn":"h2",
//  "tls_version":"TLSv1.3","tls_cipher":"TLS_AES_128_GCM_SHA256",
//  "client_cert":"CN=alice,O=Example","mirrors":1,"mirrors_cut":0}  + "\n"
// (one line; "server" and "connect" are null when no server was connected, "sni", "alpn"
// and "client_cert" when the client sent none, "tls_version" and "tls_cipher" without a
// completed handshake; what the client sent is escaped as JSON needs).
std::string accessLogLine(const AccessRecord& record);

class AccessLog {
public:
  static constexpr size_t kFlushBytes = 64 * 1024;
  static constexpr uint64_t kFlushNanos = 1'000'000'000ull;
  // Lines buffered behind a write in flight, at most: past it (a hung NFS mount, a disk
  // far slower than the sessions) lines are dropped and counted, not kept until memory
  // runs out. About 50,000 lines.
  static constexpr size_t kMaxBuffered = 16 * 1024 * 1024;

  // `fd` (O_APPEND) is shared with the other workers and not owned. `ring`: where the
  // writes go (nullptr: synchronously, on the calling thread).
  AccessLog(int fd, std::string path, std::string listener, metrics::ListenerStats& stats,
            relay::Ring* ring = nullptr);
  ~AccessLog() { finish(); }
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  // Buffers the record's line; drops it (counted, logged) while kMaxBuffered wait.
  void add(const AccessRecord& record, uint64_t now);
  // Writes what is buffered if its oldest line is a second old.
  void flushIfDue(uint64_t now);
  // Writes what is buffered (after the write in flight, if there is one). A failed write
  // (disk full, I/O error) drops its lines, counts them in
  // grelay_access_log_dropped_lines_total and logs (rate-limited).
  void flush();
  // Writes what is buffered now, synchronously: when the worker stops (its ring no longer
  // runs; nothing may be in flight).
  void finish();
  // A write is in flight: the worker's loop must go on until it completes.
  bool writing() const { return inFlight_; }

private:
  void submit();
  // How many bytes of `data` from `from` on the next write takes: all of them, or on a
  // pipe or socket (standard output: every worker writes it) whole lines up to PIPE_BUF,
  // which the kernel never interleaves with another writer's; a longer line alone.
  size_t nextWrite(const std::string& data, size_t from) const;
  void onWritten(int32_t res, uint32_t flags) noexcept;
  // Lines of `data` from byte `done` on were not written (errno `err`): counted and logged.
  void dropped(const std::string& data, size_t done, int err);
  // A line found kMaxBuffered waiting behind the write in flight.
  void overflowed();

  int fd_;
  std::string path_;
  std::string listener_;
  metrics::ListenerStats& stats_;
  relay::Ring* ring_;
  size_t atomicLimit_ = 0;  // 0: a file, written in any size; else PIPE_BUF
  std::string buffer_;      // lines not yet handed to a write
  std::string writing_;     // the write in flight
  size_t written_ = 0;      // of writing_
  bool inFlight_ = false;
  bool flushAfter_ = false;  // flush() came while a write was in flight
  uint64_t submitted_ = 0;   // monotonic ns when the write in flight was submitted
  uint64_t oldest_ = 0;      // monotonic ns when the oldest buffered line was added
  LogLimiter errorLog_;
  relay::BoundCompletion<AccessLog, &AccessLog::onWritten> done_{*this};
};

}  // namespace grelay::proxy
