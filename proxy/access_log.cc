#include "proxy/access_log.h"

#include <limits.h>
#include <poll.h>
#include <sys/stat.h>

#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "proxy/sockets.h"

namespace grelay::proxy {

std::string jsonString(std::string_view text) {
  std::string out = "\"";
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20 || c >= 0x7f) {
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\u%04x", c);
      out += escaped;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

std::string sessionId(uint32_t worker, uint64_t session) {
  static const std::string run = [] {
    uint32_t random = 0;
    if (::getrandom(&random, sizeof(random), 0) != sizeof(random)) {
      random = static_cast<uint32_t>(monotonicNanos() ^ static_cast<uint64_t>(::getpid()) << 32);
    }
    char hex[16];
    std::snprintf(hex, sizeof(hex), "%08x", random);
    return std::string(hex);
  }();
  return run + "-" + std::to_string(worker) + "-" + std::to_string(session);
}

std::string accessLogLine(const AccessRecord& r) {
  const time_t seconds = static_cast<time_t>(r.endUnixNanos / 1'000'000'000);
  const int millis = static_cast<int>((static_cast<uint64_t>(r.endUnixNanos) / 1'000'000) % 1000);
  tm utc{};
  gmtime_r(&seconds, &utc);
  char time[64];
  std::snprintf(time, sizeof(time), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", utc.tm_year + 1900,
                utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, millis);
  // Names are [A-Za-z0-9_-] and addresses digits, dots, colons and brackets: nothing to
  // escape.
  const std::string server = r.server != nullptr ? jsonString(*r.server) : "null";  // a path too
  const std::string upstream = r.upstream != nullptr ? "\"" + *r.upstream + "\"" : "null";
  char connect[32] = "null";
  if (r.connectNanos >= 0) {
    std::snprintf(connect, sizeof(connect), "%.6f", static_cast<double>(r.connectNanos) / 1e9);
  }
  char numbers[320];
  std::snprintf(numbers, sizeof(numbers),
                "\"duration\":%.6f,\"queue\":%.6f,\"connect\":%s,\"request_bytes\":%" PRIu64
                ",\"response_bytes\":%" PRIu64 ",\"end\":\"%s\",\"reset\":%s,\"tls\":%s,\"sni\":",
                static_cast<double>(r.durationNanos) / 1e9, static_cast<double>(r.queueNanos) / 1e9,
                connect, r.requestBytes, r.responseBytes, r.end, r.reset ? "true" : "false",
                r.tls ? "true" : "false");
  char mirrors[64];
  std::snprintf(mirrors, sizeof(mirrors), ",\"mirrors\":%u,\"mirrors_cut\":%u}\n", r.mirrors,
                r.mirrorsCut);
  const std::string sni = r.sni.empty() ? "null" : jsonString(r.sni);
  const std::string alpn = r.alpn.empty() ? "null" : jsonString(r.alpn);
  // OpenSSL's names: letters, digits, '.', '_', '-'.
  const std::string tlsVersion = r.tlsVersion.empty() ? "null" : jsonString(r.tlsVersion);
  const std::string tlsCipher = r.tlsCipher.empty() ? "null" : jsonString(r.tlsCipher);
  const std::string cert = r.clientCert == nullptr ? "null" : jsonString(*r.clientCert);
  return std::string("{\"time\":\"") + time + "\",\"listener\":\"" + *r.listener +
         "\",\"worker\":" + std::to_string(r.worker) + ",\"session\":" + std::to_string(r.session) +
         ",\"id\":\"" + sessionId(r.worker, r.session) + "\"" + ",\"client\":\"" +
         formatAddress(r.client) + "\",\"upstream\":" + upstream + ",\"server\":" + server + "," +
         numbers + sni + ",\"alpn\":" + alpn + ",\"tls_version\":" + tlsVersion +
         ",\"tls_cipher\":" + tlsCipher + ",\"client_cert\":" + cert + mirrors;
}

AccessLog::AccessLog(int fd, std::string path, std::string listener, metrics::ListenerStats& stats,
                     relay::Ring* ring)
    : fd_(fd), path_(std::move(path)), listener_(std::move(listener)), stats_(stats), ring_(ring) {
  struct stat st {};
  if (::fstat(fd_, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))) {
    atomicLimit_ = PIPE_BUF;
  }
}

size_t AccessLog::nextWrite(const std::string& data, size_t from) const {
  const size_t left = data.size() - from;
  if (atomicLimit_ == 0 || left <= atomicLimit_) {
    return left;
  }
  if (const size_t cut = data.rfind('\n', from + atomicLimit_ - 1);
      cut != std::string::npos && cut >= from) {
    return cut + 1 - from;
  }
  const size_t end = data.find('\n', from);  // one line longer than the limit: alone
  return end == std::string::npos ? left : end + 1 - from;
}

void AccessLog::add(const AccessRecord& record, uint64_t now) {
  if (buffer_.size() >= kMaxBuffered) {
    overflowed();  // only behind a write in flight: the buffer is written at 64 KiB
    return;
  }
  if (buffer_.empty()) {
    oldest_ = now;
  }
  buffer_ += accessLogLine(record);
  if (buffer_.size() >= kFlushBytes) {
    flush();
  }
}

void AccessLog::flushIfDue(uint64_t now) {
  if (!buffer_.empty() && now >= oldest_ + kFlushNanos) {
    flush();
  }
}

void AccessLog::flush() {
  if (buffer_.empty()) {
    return;
  }
  if (ring_ == nullptr) {
    finish();
    return;
  }
  if (inFlight_) {
    flushAfter_ = true;
    return;
  }
  submit();
}

void AccessLog::submit() {
  writing_.swap(buffer_);
  buffer_.clear();
  written_ = 0;
  inFlight_ = true;
  submitted_ = monotonicNanos();
  // Offset -1: the file position, which O_APPEND puts at the end for each write.
  ring_->write(fd_, writing_.data(), static_cast<uint32_t>(nextWrite(writing_, 0)), UINT64_MAX,
               &done_);
}

void AccessLog::onWritten(int32_t res, uint32_t) noexcept {
  if (res > 0) {
    written_ += static_cast<size_t>(res);
  }
  if ((res > 0 && written_ < writing_.size()) || res == -EINTR || res == -EAGAIN) {
    // A short write, or the next piece for a pipe: the rest, whole lines still in order.
    ring_->write(fd_, writing_.data() + written_,
                 static_cast<uint32_t>(nextWrite(writing_, written_)), UINT64_MAX, &done_);
    return;
  }
  if (res <= 0) {
    dropped(writing_, written_, res < 0 ? -res : ENOSPC);
  }
  inFlight_ = false;
  writing_.clear();
  if (!buffer_.empty() && (flushAfter_ || buffer_.size() >= kFlushBytes)) {
    submit();
  }
  flushAfter_ = false;
}

void AccessLog::finish() {
  if (inFlight_) {
    // Only when a worker is torn down with its ring failed: the lines in flight are
    // its, the buffered ones still go out here.
    inFlight_ = false;
  }
  size_t done = 0;
  int err = 0;
  while (done < buffer_.size()) {
    const ssize_t n = ::write(fd_, buffer_.data() + done, nextWrite(buffer_, done));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0 && errno == EAGAIN) {
      // A non-blocking pipe (standard output as a container runtime may set it up) that
      // is full: wait for its reader, a while.
      pollfd p{fd_, POLLOUT, 0};
      if (::poll(&p, 1, 5000) > 0) {
        continue;
      }
    }
    if (n <= 0) {
      err = n < 0 ? errno : ENOSPC;
      break;
    }
    done += static_cast<size_t>(n);
  }
  if (err != 0) {
    dropped(buffer_, done, err);
  }
  buffer_.clear();
}

void AccessLog::overflowed() {
  stats_.accessLogDroppedLines.inc();
  const uint64_t now = monotonicNanos();
  uint64_t suppressed = 0;
  if (errorLog_.allow(now, &suppressed)) {
    const uint64_t waited = now - submitted_;
    GRELAY_LOG_WARN(
        "listener %s: access log %s: a write has not completed in %.1fs and %zu "
        "MiB of lines wait behind it: lines dropped until it does%s",
        listener_.c_str(), path_.c_str(), static_cast<double>(waited) / 1e9, kMaxBuffered >> 20,
        suppressed > 0 ? "; more failures not logged in the last minute" : "");
  }
}

void AccessLog::dropped(const std::string& data, size_t done, int err) {
  // Lines not written whole are dropped; a line cut by a short write stays cut (the next
  // write starts a new line, so readers can skip it).
  uint64_t lost = 0;
  for (size_t i = done; i < data.size(); ++i) {
    lost += data[i] == '\n' ? 1 : 0;
  }
  if (done > 0 && data[done - 1] != '\n') {
    (void)!::write(fd_, "\n", 1);
  }
  stats_.accessLogDroppedLines.add(lost);
  uint64_t suppressed = 0;
  if (errorLog_.allow(monotonicNanos(), &suppressed)) {
    GRELAY_LOG_WARN("listener %s: access log %s: write failed: %s (%" PRIu64 " lines dropped%s)",
                    listener_.c_str(), path_.c_str(), std::strerror(err), lost,
                    suppressed > 0 ? "; more failures not logged in the last minute" : "");
  }
}

}  // namespace grelay::proxy
