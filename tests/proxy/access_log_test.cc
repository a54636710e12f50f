// The access log: the line format, when buffered lines reach the file, and a failing disk.
#include "proxy/access_log.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

#include "tests/relay/fake_ring.h"

namespace grelay::proxy {
namespace {

constexpr uint64_t kSecond = 1'000'000'000ull;

AccessRecord record(const std::string* listener, const std::string* server) {
  AccessRecord r;
  r.endUnixNanos = 1'765'000'000'123'456'789;  // 2025-12-06T05:46:40.123Z
  r.listener = listener;
  r.worker = 1;
  r.session = 42;
  auto& c = reinterpret_cast<sockaddr_in&>(r.client);
  c.sin_family = AF_INET;
  c.sin_port = htons(51098);
  inet_pton(AF_INET, "192.0.2.7", &c.sin_addr);
  static const std::string kPool = "app";
  r.upstream = server != nullptr ? &kPool : nullptr;
  r.server = server;
  r.durationNanos = 1'500'250'000;
  r.queueNanos = 250'000'000;
  r.connectNanos = 512'000;
  r.requestBytes = 78;
  r.responseBytes = 4321;
  r.mirrors = 2;
  r.mirrorsCut = 1;
  return r;
}

TEST(AccessLogTest, OneJsonLinePerSession) {
  const std::string web = "web";
  const std::string server = "127.0.0.1:8000";
  EXPECT_EQ(
      accessLogLine(record(&web, &server)),
      "{\"time\":\"2025-12-06T05:46:40.123Z\",\"listener\":\"web\",\"worker\":1,"
      "\"session\":42,\"id\":\"" +
          sessionId(1, 42) +
          "\",\"client\":"
          "\"192.0.2.7:51098\",\"upstream\":\"app\",\"server\":\"127.0.0.1:8000\","
          "\"duration\":1.500250,"
          "\"queue\":0.250000,\"connect\":0.000512,\"request_bytes\":78,\"response_bytes\":4321,"
          "\"end\":\"normal\",\"reset\":false,"
          "\"tls\":false,\"sni\":null,\"alpn\":null,\"tls_version\":null,\"tls_cipher\":null,"
          "\"client_cert\":null,\"mirrors\":2,\"mirrors_"
          "cut\":1}\n");
  AccessRecord r = record(&web, nullptr);
  auto& c6 = reinterpret_cast<sockaddr_in6&>(r.client);
  c6 = sockaddr_in6{};
  c6.sin6_family = AF_INET6;
  c6.sin6_port = htons(443);
  inet_pton(AF_INET6, "2001:db8::1", &c6.sin6_addr);
  r.end = "connect_failed";
  r.connectNanos = -1;
  r.reset = true;
  r.tls = true;
  const std::string line = accessLogLine(r);
  EXPECT_NE(line.find("\"client\":\"[2001:db8::1]:443\",\"upstream\":null,\"server\":null,"),
            std::string::npos)
      << line;
  EXPECT_NE(line.find("\"connect\":null,"), std::string::npos) << line;
  EXPECT_NE(line.find("\"end\":\"connect_failed\",\"reset\":true,\"tls\":true,"), std::string::npos)
      << line;
}

TEST(AccessLogTest, SessionIdsAreUniqueAcrossRunsAndNameWorkerAndSession) {
  const std::string id = sessionId(3, 1234);
  ASSERT_EQ(id.size(), 8u + std::string("-3-1234").size());
  EXPECT_EQ(id.substr(8), "-3-1234");
  EXPECT_EQ(id.find_first_not_of("0123456789abcdef"), 8u);   // 8 hex digits, then the rest
  EXPECT_EQ(sessionId(0, 1).substr(0, 8), id.substr(0, 8));  // one run, one prefix
}

TEST(AccessLogTest, TheClientsSniAndCertificateAreEscapedIntoValidJson) {
  const std::string web = "web";
  AccessRecord r = record(&web, nullptr);
  r.tls = true;
  r.sni = "api.example.com";
  EXPECT_NE(accessLogLine(r).find(",\"tls\":true,\"sni\":\"api.example.com\",\"alpn\":null,"),
            std::string::npos);
  r.alpn = "h2";
  EXPECT_NE(
      accessLogLine(r).find(",\"sni\":\"api.example.com\",\"alpn\":\"h2\",\"tls_version\":null,"),
      std::string::npos)
      << accessLogLine(r);
  // Protocol names are any bytes too (RFC 7301), and an offered list is joined by commas.
  r.alpn = std::string_view("h2,x\"\0y\xff", 8);
  EXPECT_NE(accessLogLine(r).find(R"("alpn":"h2,x\"\u0000y\u00ff",)"), std::string::npos)
      << accessLogLine(r);
  r.alpn = {};
  r.tlsVersion = "TLSv1.3";
  r.tlsCipher = "TLS_AES_128_GCM_SHA256";
  EXPECT_NE(accessLogLine(r).find(
                R"("alpn":null,"tls_version":"TLSv1.3","tls_cipher":"TLS_AES_128_GCM_SHA256",)"),
            std::string::npos)
      << accessLogLine(r);
  r.tlsVersion = r.tlsCipher = {};
  // A client may send any bytes but NUL; the line stays one line of valid JSON.
  r.sni = "a\"b\\c\nd\x7f\xc3\xa9";
  EXPECT_NE(accessLogLine(r).find(R"("sni":"a\"b\\c\u000ad\u007f\u00c3\u00a9",)"),
            std::string::npos)
      << accessLogLine(r);
  const std::string subject = R"(CN=Jos\C3\A9 \"J\",O=Example)";  // RFC 2253, as OpenSSL writes it
  r.clientCert = &subject;
  EXPECT_NE(
      accessLogLine(r).find(R"("client_cert":"CN=Jos\\C3\\A9 \\\"J\\\",O=Example","mirrors")"),
      std::string::npos)
      << accessLogLine(r);
  r.clientCert = nullptr;
  const std::string longest(255, 'x');  // RFC 6066's limit, which OpenSSL keeps
  r.sni = longest;
  EXPECT_NE(accessLogLine(r).find(
                "\"sni\":\"" + longest +
                "\",\"alpn\":null,\"tls_version\":null,\"tls_cipher\":null,\"client_cert\":null,"),
            std::string::npos);
}

class AccessLogFileTest : public ::testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/grelay-access-XXXXXX";
    fd_ = mkstemp(tmpl);
    ASSERT_GE(fd_, 0);
    path_ = tmpl;
  }
  void TearDown() override {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  std::string contents() const {
    std::string out;
    char buf[65536];
    ssize_t n;
    for (off_t off = 0; (n = ::pread(fd_, buf, sizeof(buf), off)) > 0; off += n) {
      out.append(buf, static_cast<size_t>(n));
    }
    return out;
  }

  int fd_ = -1;
  std::string path_;
  metrics::ListenerStats stats_{0};
  const std::string web_ = "web";
};

TEST_F(AccessLogFileTest, LinesReachTheFileWithinASecondOrAt64KiB) {
  AccessLog log(fd_, path_, "web", stats_);
  const uint64_t t0 = 100 * kSecond;
  log.add(record(&web_, nullptr), t0);
  log.add(record(&web_, nullptr), t0 + kSecond / 2);
  log.flushIfDue(t0 + kSecond - 1);
  EXPECT_EQ(contents(), "");  // buffered: no write per session
  log.flushIfDue(t0 + kSecond);
  const std::string line = accessLogLine(record(&web_, nullptr));
  EXPECT_EQ(contents(), line + line);
  // A burst is written as soon as 64 KiB are buffered.
  size_t added = 0;
  while (contents().size() == 2 * line.size()) {
    log.add(record(&web_, nullptr), t0 + 2 * kSecond);
    ++added;
    ASSERT_LE(added * line.size(), AccessLog::kFlushBytes + line.size());
  }
  EXPECT_GE(added * line.size(), AccessLog::kFlushBytes);
  EXPECT_EQ(contents().size(), (2 + added) * line.size());
}

TEST_F(AccessLogFileTest, WhatIsBufferedIsWrittenWhenTheLogGoes) {
  {
    AccessLog log(fd_, path_, "web", stats_);
    log.add(record(&web_, nullptr), 5 * kSecond);
  }
  EXPECT_EQ(contents(), accessLogLine(record(&web_, nullptr)));
}

TEST(AccessLogRingTest, WritesGoThroughTheRingOneAtATimeAndShortWritesResume) {
  // A slow disk must not stop the worker: the write is the ring's, the loop goes on.
  testing::FakeRing ring;
  metrics::ListenerStats stats(0);
  const std::string web = "web";
  const std::string line = accessLogLine(record(&web, nullptr));
  constexpr int kFd = 77;  // never touched: every write is the fake ring's
  AccessLog log(kFd, "access.log", "web", stats, &ring);
  log.add(record(&web, nullptr), kSecond);
  log.add(record(&web, nullptr), kSecond);
  log.flushIfDue(2 * kSecond);
  testing::FakeOp* write = ring.pending(testing::OpKind::Write, kFd);
  ASSERT_NE(write, nullptr);
  EXPECT_EQ(std::string(static_cast<const char*>(write->buf), write->len), line + line);
  EXPECT_EQ(write->offset, UINT64_MAX);  // O_APPEND: at the end, whatever other workers wrote
  EXPECT_TRUE(log.writing());
  // Lines added meanwhile wait for the write in flight.
  log.add(record(&web, nullptr), 2 * kSecond);
  log.flush();
  EXPECT_EQ(ring.pendingCount(testing::OpKind::Write), 1u);
  // A short write: the rest goes next, then what was waiting.
  ring.complete(write, static_cast<int32_t>(line.size() + 10));
  write = ring.pending(testing::OpKind::Write, kFd);
  ASSERT_NE(write, nullptr);
  EXPECT_EQ(std::string(static_cast<const char*>(write->buf), write->len), line.substr(10));
  ring.complete(write, static_cast<int32_t>(write->len));
  write = ring.pending(testing::OpKind::Write, kFd);
  ASSERT_NE(write, nullptr);
  EXPECT_EQ(std::string(static_cast<const char*>(write->buf), write->len), line);
  // A full disk: that write's lines are dropped and counted; the log goes on.
  log.add(record(&web, nullptr), 3 * kSecond);
  ring.complete(write, -ENOSPC);
  EXPECT_EQ(stats.accessLogDroppedLines.value(), 1u);
  EXPECT_FALSE(log.writing());  // the new line waits for its second (or 64 KiB)
  EXPECT_EQ(ring.pendingCount(testing::OpKind::Write), 0u);
  log.flushIfDue(4 * kSecond);
  write = ring.pending(testing::OpKind::Write, kFd);
  ASSERT_NE(write, nullptr);
  ring.complete(write, static_cast<int32_t>(write->len));
  EXPECT_FALSE(log.writing());
  EXPECT_EQ(stats.accessLogDroppedLines.value(), 1u);
}

TEST(AccessLogRingTest, LinesPastTheLimitBehindAStuckWriteAreDroppedAndCounted) {
  // A write that never completes (a hung NFS mount) must not buffer lines until memory
  // runs out: past kMaxBuffered they are dropped and counted; relaying goes on.
  testing::FakeRing ring;
  metrics::ListenerStats stats(0);
  const std::string web = "web";
  const std::string line = accessLogLine(record(&web, nullptr));
  constexpr int kFd = 77;
  AccessLog log(kFd, "access.log", "web", stats, &ring);
  log.add(record(&web, nullptr), kSecond);
  log.flush();
  testing::FakeOp* stuck = ring.pending(testing::OpKind::Write, kFd);
  ASSERT_NE(stuck, nullptr);
  const size_t fit = (AccessLog::kMaxBuffered + line.size() - 1) / line.size();
  const size_t extra = 1000;
  for (size_t i = 0; i < fit + extra; ++i) {
    log.add(record(&web, nullptr), kSecond);
  }
  EXPECT_EQ(ring.pendingCount(testing::OpKind::Write), 1u);
  EXPECT_EQ(stats.accessLogDroppedLines.value(), extra);
  // The write completes: what was kept goes next, whole lines, and new lines are taken.
  ring.complete(stuck, static_cast<int32_t>(stuck->len));
  testing::FakeOp* next = ring.pending(testing::OpKind::Write, kFd);
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(next->len, fit * line.size());
  EXPECT_EQ(std::string(static_cast<const char*>(next->buf), line.size()), line);
  log.add(record(&web, nullptr), kSecond);
  EXPECT_EQ(stats.accessLogDroppedLines.value(), extra);
  ring.complete(next, static_cast<int32_t>(next->len));
  log.flush();
  next = ring.pending(testing::OpKind::Write, kFd);
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(std::string(static_cast<const char*>(next->buf), next->len), line);
  ring.complete(next, static_cast<int32_t>(next->len));
}

TEST(AccessLogRingTest, ToAPipeEachWriteIsWholeLinesOfAtMostPipeBuf) {
  // Standard output ("-") is a pipe every worker writes: a write of more than PIPE_BUF
  // may interleave with another worker's, cutting lines; up to PIPE_BUF it cannot.
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  testing::FakeRing ring;
  metrics::ListenerStats stats(0);
  const std::string web = "web";
  const std::string line = accessLogLine(record(&web, nullptr));
  ASSERT_LT(line.size(), static_cast<size_t>(PIPE_BUF));
  AccessLog log(fds[1], "-", "web", stats, &ring);
  const size_t lines = 3 * PIPE_BUF / line.size() + 1;
  for (size_t i = 0; i < lines; ++i) {
    log.add(record(&web, nullptr), kSecond);
  }
  log.flush();
  std::string written;
  for (testing::FakeOp* write = ring.pending(testing::OpKind::Write, fds[1]); write != nullptr;
       write = ring.pending(testing::OpKind::Write, fds[1])) {
    EXPECT_LE(write->len, static_cast<uint32_t>(PIPE_BUF));
    const std::string piece(static_cast<const char*>(write->buf), write->len);
    EXPECT_EQ(piece.back(), '\n');
    EXPECT_EQ(piece.size() % line.size(), 0u);
    written += piece;
    ring.complete(write, static_cast<int32_t>(write->len));
  }
  EXPECT_EQ(written.size(), lines * line.size());
  EXPECT_FALSE(log.writing());
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST(AccessLogFailureTest, AFullDiskDropsAndCountsTheLines) {
  const int fd = ::open("/dev/full", O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) {
    GTEST_SKIP() << "no /dev/full";
  }
  metrics::ListenerStats stats(0);
  const std::string web = "web";
  {
    AccessLog log(fd, "/dev/full", "web", stats);
    log.add(record(&web, nullptr), kSecond);
    log.add(record(&web, nullptr), kSecond);
    log.add(record(&web, nullptr), kSecond);
    log.flush();
    EXPECT_EQ(stats.accessLogDroppedLines.value(), 3u);
    log.add(record(&web, nullptr), kSecond);
  }
  EXPECT_EQ(stats.accessLogDroppedLines.value(), 4u);
  ::close(fd);
}

}  // namespace
}  // namespace grelay::proxy
