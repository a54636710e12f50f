// HealthChecker against real loopback sockets: a listening server passes, a refused port
// fails and is marked down, a revived one comes back at once, PROXY-protocol pools get a
// header, and stop() ends the thread promptly.
#include "proxy/health_check.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "proxy/log.h"

namespace grelay::proxy {
namespace {

using namespace std::chrono_literals;

// A bound loopback socket: refuses connects until listen() is called.
struct Port {
  Port() {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&in), sizeof(in)), 0);
    socklen_t length = sizeof(in);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&in), &length);
    address.length = sizeof(sockaddr_in);
    std::memcpy(&address.storage, &in, sizeof(in));
    address.text = "127.0.0.1:" + std::to_string(ntohs(in.sin_port));
  }
  ~Port() {
    ::close(fd);
    if (filler >= 0) {
      ::close(filler);
    }
  }
  void listen() { ASSERT_EQ(::listen(fd, 64), 0); }
  // Listens with a full accept queue: the SYN of a connect is dropped, so the connect
  // neither succeeds nor fails (a check waits out check_timeout).
  void stall() {
    ASSERT_EQ(::listen(fd, 0), 0);
    filler = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_EQ(::connect(filler, address.sockaddrPtr(), address.length), 0);
  }
  // The bytes the next queued connection sent before closing.
  std::string acceptAndRead() {
    int c = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
    EXPECT_GE(c, 0);
    std::string out;
    char buf[256];
    for (;;) {
      pollfd p{c, POLLIN, 0};
      if (::poll(&p, 1, 2000) <= 0) {
        break;
      }
      ssize_t n = ::recv(c, buf, sizeof(buf), 0);
      if (n <= 0) {
        break;
      }
      out.append(buf, static_cast<size_t>(n));
    }
    ::close(c);
    return out;
  }
  int fd = -1;
  int filler = -1;
  config::Address address;
};

// A pool of `servers` in `c` (which it reads from) checked once a minute, each check
// waiting up to `timeout`; max_fails 1.
std::shared_ptr<UpstreamPool> checkedPool(config::UpstreamConfig& c, std::string name,
                                          const std::vector<const Port*>& servers,
                                          config::Duration timeout) {
  c.name = std::move(name);
  for (const Port* p : servers) {
    c.servers.push_back({p->address});
  }
  c.max_fails = 1;
  c.fail_timeout = 60s;
  c.check_interval = 60s;  // one round each (the first), but for a move's
  c.check_timeout = timeout;
  return std::make_shared<UpstreamPool>(c);
}

class HealthCheckTest : public ::testing::Test {
protected:
  void makePool(std::vector<const Port*> servers, uint32_t maxFails = 1,
                config::ProxyProtocol proxy = config::ProxyProtocol::Off,
                size_t maxInFlight = HealthChecker::kMaxInFlight) {
    config_.servers.clear();
    for (const Port* p : servers) {
      config_.servers.push_back({p->address});
    }
    config_.name = "app";
    config_.max_fails = maxFails;
    config_.fail_timeout = 60s;
    config_.check_interval = 50ms;
    config_.check_timeout = 1s;
    config_.proxy_protocol = proxy;
    pool_ = std::make_shared<UpstreamPool>(config_);
    checker_ = std::make_unique<HealthChecker>(std::vector<HealthChecker::Pool>{{pool_, &stats_}},
                                               maxInFlight);
  }

  config::UpstreamConfig config_;
  std::shared_ptr<UpstreamPool> pool_;
  metrics::UpstreamStats stats_;
  std::unique_ptr<HealthChecker> checker_;
};

TEST_F(HealthCheckTest, ARefusedServerIsMarkedDownAndComesBackWhenItListens) {
  Port up, down;
  up.listen();
  makePool({&up, &down});
  ASSERT_TRUE(checker_->checkNow({0}));
  EXPECT_EQ(stats_.checks.value(), 2u);
  EXPECT_EQ(stats_.checkFailures.value(), 1u);
  EXPECT_EQ(stats_.markedDown.value(), 1u);
  EXPECT_EQ(stats_.serversDown.value(), 1);
  const uint64_t now = monotonicNanos();
  EXPECT_FALSE(pool_->down(0, now));
  EXPECT_TRUE(pool_->down(1, now));
  // Still failing: the marking is extended, not counted again.
  ASSERT_TRUE(checker_->checkNow({0}));
  EXPECT_EQ(stats_.checkFailures.value(), 2u);
  EXPECT_EQ(stats_.markedDown.value(), 1u);
  // It listens again: the next check brings it back at once, long before fail_timeout.
  down.listen();
  ASSERT_TRUE(checker_->checkNow({0}));
  EXPECT_EQ(stats_.checks.value(), 6u);
  EXPECT_EQ(stats_.checkFailures.value(), 2u);
  EXPECT_EQ(stats_.serversDown.value(), 0);
  EXPECT_FALSE(pool_->down(1, monotonicNanos()));
}

TEST_F(HealthCheckTest, ABigPoolIsCheckedAFewServersAtATime) {
  // A pool of thousands would otherwise hold thousands of descriptors at once.
  std::vector<std::unique_ptr<Port>> ports;
  std::vector<const Port*> servers;
  for (int i = 0; i < 7; ++i) {
    ports.push_back(std::make_unique<Port>());
    if (i != 3) {
      ports.back()->listen();
    }
    servers.push_back(ports.back().get());
  }
  makePool(servers, 1, config::ProxyProtocol::Off, 2);
  ASSERT_TRUE(checker_->checkNow({0}));
  EXPECT_EQ(stats_.checks.value(), 7u);  // every server, each once
  EXPECT_EQ(stats_.checkFailures.value(), 1u);
  EXPECT_EQ(stats_.serversDown.value(), 1);
  EXPECT_TRUE(pool_->down(3, monotonicNanos()));
  EXPECT_EQ(checker_->peakInFlight(), 2u);
}

TEST_F(HealthCheckTest, AServerMarkedDownNeedsCheckPassesGoodChecksInARow) {
  Port server;
  config_.check_passes = 3;
  makePool({&server});
  config_.fail_timeout = 200ms;
  ASSERT_TRUE(checker_->checkNow({0}));  // refused: marked down
  EXPECT_EQ(stats_.markedDown.value(), 1u);
  server.listen();
  ASSERT_TRUE(checker_->checkNow({0}));
  std::this_thread::sleep_for(250ms);  // past fail_timeout: the good check holds it down
  EXPECT_TRUE(pool_->down(0, monotonicNanos())) << "after 1 good check";
  ASSERT_TRUE(checker_->checkNow({0}));
  EXPECT_TRUE(pool_->down(0, monotonicNanos())) << "after 2 good checks";
  ASSERT_TRUE(checker_->checkNow({0}));
  EXPECT_FALSE(pool_->down(0, monotonicNanos())) << "after 3 good checks";
  EXPECT_EQ(stats_.serversDown.value(), 0);
  // A failed check in between starts the count again (the server's address switched
  // between a refusing port and the listening one).
  Port refusing;
  auto check = [&](const Port& port) {
    config_.servers[0].address = port.address;
    ASSERT_TRUE(checker_->checkNow({0}));
  };
  check(refusing);
  EXPECT_TRUE(pool_->down(0, monotonicNanos()));
  check(server);
  check(server);
  check(refusing);
  check(server);
  check(server);
  EXPECT_TRUE(pool_->down(0, monotonicNanos()));
  check(server);
  EXPECT_FALSE(pool_->down(0, monotonicNanos()));
}

TEST_F(HealthCheckTest, ChecksCountTowardMaxFailsWithSessionFailures) {
  Port down;
  makePool({&down}, 3);
  ASSERT_TRUE(checker_->checkNow({0}));
  ASSERT_TRUE(checker_->checkNow({0}));
  EXPECT_EQ(stats_.markedDown.value(), 0u);
  EXPECT_FALSE(pool_->down(0, monotonicNanos()));
  EXPECT_TRUE(pool_->connectFailed(0, monotonicNanos()));  // a session's: the third
  ASSERT_TRUE(checker_->checkNow({0}));
  EXPECT_EQ(stats_.markedDown.value(), 0u);  // already down: extended
  EXPECT_EQ(stats_.serversDown.value(), 1);
}

TEST_F(HealthCheckTest, PoolsSpeakingProxyProtocolGetAnUnknownHeader) {
  for (auto [version, header] :
       {std::pair{config::ProxyProtocol::V1, std::string("PROXY UNKNOWN\r\n")},
        std::pair{config::ProxyProtocol::V2,
                  std::string("\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00", 16)}}) {
    Port server;
    server.listen();
    makePool({&server}, 1, version);
    ASSERT_TRUE(checker_->checkNow({0}));
    EXPECT_EQ(server.acceptAndRead(), header);
  }
  Port plain;
  plain.listen();
  makePool({&plain});
  ASSERT_TRUE(checker_->checkNow({0}));
  EXPECT_EQ(plain.acceptAndRead(), "");  // connect, then close: nothing sent
}

// Answers the connections to a listening Port on its own thread: reads what a check sends
// (until `request` bytes came, or EOF), then sends `reply` (in pieces, 50 ms apart) and
// closes, or, with `hang`, holds the connection until destroyed.
class Responder {
public:
  Responder(Port& port, size_t request, std::vector<std::string> reply, bool hang = false)
      : port_(port), request_(request), reply_(std::move(reply)), hang_(hang) {
    port_.listen();
    thread_ = std::thread([this] { run(); });
  }
  ~Responder() {
    stop_ = true;
    thread_.join();
  }
  std::string received() {
    std::lock_guard<std::mutex> lock(mu_);
    return received_;
  }

private:
  void run() {
    std::vector<int> held;
    while (!stop_) {
      pollfd p{port_.fd, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) {
        continue;
      }
      const int c = ::accept4(port_.fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) {
        continue;
      }
      std::string got;
      char buf[256];
      while (got.size() < request_) {
        pollfd q{c, POLLIN, 0};
        ssize_t n = ::poll(&q, 1, 2000) > 0 ? ::recv(c, buf, sizeof(buf), 0) : 0;
        if (n <= 0) {
          break;
        }
        got.append(buf, static_cast<size_t>(n));
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        received_ += got;
      }
      if (hang_) {
        held.push_back(c);
        continue;
      }
      for (size_t i = 0; i < reply_.size(); ++i) {
        if (i > 0) {
          std::this_thread::sleep_for(50ms);
        }
        [[maybe_unused]] ssize_t n = ::send(c, reply_[i].data(), reply_[i].size(), MSG_NOSIGNAL);
      }
      ::close(c);
    }
    for (int c : held) {
      ::close(c);
    }
  }

  Port& port_;
  size_t request_;
  std::vector<std::string> reply_;
  bool hang_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::string received_;
  std::thread thread_;
};

TEST_F(HealthCheckTest, SendAndExpectPassOnlyAServerThatRepliesAsExpected) {
  // A server that accepts and then answers wrongly (or not at all) is down, which a
  // connect alone cannot tell.
  Port good, pieces, wrong, closes, silent;
  Responder goodServer(good, 6, {"+PONG\r\n"});
  Responder piecesServer(pieces, 6, {"+P", "ON", "G\r\n"});
  Responder wrongServer(wrong, 6, {"-ERR unknown command\r\n"});
  Responder closesServer(closes, 6, {});
  Responder silentServer(silent, 6, {}, true);
  config_.check_send = "PING\r\n";
  config_.check_expect = "+PONG";
  makePool({&good, &pieces, &wrong, &closes, &silent});
  config_.check_timeout = 500ms;
  pool_ = std::make_shared<UpstreamPool>(config_);
  checker_ = std::make_unique<HealthChecker>(std::vector<HealthChecker::Pool>{{pool_, &stats_}});
  ASSERT_TRUE(checker_->checkNow({0}));
  const uint64_t now = monotonicNanos();
  EXPECT_FALSE(pool_->down(0, now));
  EXPECT_FALSE(pool_->down(1, now));
  EXPECT_TRUE(pool_->down(2, now));
  EXPECT_TRUE(pool_->down(3, now));
  EXPECT_TRUE(pool_->down(4, now));
  EXPECT_EQ(stats_.checkFailures.value(), 3u);
  EXPECT_EQ(goodServer.received(), "PING\r\n");
  EXPECT_EQ(silentServer.received(), "PING\r\n");
}

TEST_F(HealthCheckTest, ExpectAloneWaitsForWhatTheServerSaysFirst) {
  // A server that speaks first (SMTP's banner, MySQL's greeting): nothing is sent.
  Port banner, other;
  Responder bannerServer(banner, 0, {"220 mail.example ESMTP\r\n"});
  Responder otherServer(other, 0, {"500 go away\r\n"});
  config_.check_expect = "220 ";
  makePool({&banner, &other});
  ASSERT_TRUE(checker_->checkNow({0}));
  EXPECT_FALSE(pool_->down(0, monotonicNanos()));
  EXPECT_TRUE(pool_->down(1, monotonicNanos()));
  EXPECT_EQ(bannerServer.received(), "");
}

TEST_F(HealthCheckTest, CheckPortChecksAnotherPortOfEachServer) {
  // The traffic port refuses; the health port listens: the check says up, and the
  // other way round says down.
  Port traffic, health;
  health.listen();
  config_.check_port = ntohs(reinterpret_cast<const sockaddr_in&>(health.address.storage).sin_port);
  makePool({&traffic});
  ASSERT_TRUE(checker_->checkNow({0}));
  EXPECT_FALSE(pool_->down(0, monotonicNanos()));
  EXPECT_EQ(stats_.checkFailures.value(), 0u);
  config_.check_port =
      ntohs(reinterpret_cast<const sockaddr_in&>(traffic.address.storage).sin_port);
  makePool({&health});
  ASSERT_TRUE(checker_->checkNow({0}));
  EXPECT_TRUE(pool_->down(0, monotonicNanos()));
}

TEST_F(HealthCheckTest, AMoveKeepsTheRoundInProgressAndChecksOnlyTheMovedPoolAtOnce) {
  Port stalled, steady, refusing;
  stalled.stall();
  steady.listen();
  config::UpstreamConfig movingConfig, steadyConfig, movedConfig;
  metrics::UpstreamStats movingStats, steadyStats;
  std::shared_ptr<UpstreamPool> moving = checkedPool(movingConfig, "moving", {&stalled}, 300ms);
  std::shared_ptr<UpstreamPool> unmoved = checkedPool(steadyConfig, "steady", {&steady}, 300ms);
  HealthChecker checker({{moving, &movingStats}, {unmoved, &steadyStats}});
  ASSERT_EQ(checker.start(), 0);
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (steadyStats.checks.value() < 1 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  ASSERT_EQ(steadyStats.checks.value(), 1u);  // its round is over ...
  ASSERT_EQ(checker.roundsStarted(), 2u);
  ASSERT_EQ(movingStats.checks.value(), 0u);  // ... the stalled server's check is under way

  // `moving` gets a second address (its first stays): a new pool, as a DNS move makes it.
  std::shared_ptr<UpstreamPool> moved =
      checkedPool(movedConfig, "moving", {&stalled, &refusing}, 300ms);
  moved->followMove(*moving, monotonicNanos());
  checker.setPools({{moved, &movingStats}, {unmoved, &steadyStats}});
  moving.reset();  // the checker keeps what its round uses
  // The round in progress finishes (its verdict on the server the move kept counts in the
  // new pool), and the moved pool's round begins at once: 1 + 2 checks.
  while (movingStats.checks.value() < 3 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(movingStats.checks.value(), 3u);
  EXPECT_EQ(movingStats.checkFailures.value(), 3u);
  EXPECT_EQ(checker.roundsStarted(), 3u);
  EXPECT_EQ(movingStats.markedDown.value(), 2u);  // each server once
  const uint64_t now = monotonicNanos();
  EXPECT_TRUE(moved->down(0, now));
  EXPECT_TRUE(moved->down(1, now));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(steadyStats.checks.value(), 1u);  // the pool the move left alone: no round
  checker.stop();
}

TEST_F(HealthCheckTest, APoolOfUnansweringServersHoldsBackNoOtherPool) {
  // Two checks open at most; `slow` has four servers that never answer (each holds its
  // slot for check_timeout), `quick` one that refuses.
  std::vector<std::unique_ptr<Port>> stalled;
  std::vector<const Port*> slowServers;
  for (int i = 0; i < 4; ++i) {
    stalled.push_back(std::make_unique<Port>());
    stalled.back()->stall();
    slowServers.push_back(stalled.back().get());
  }
  Port refusing;
  config::UpstreamConfig slowConfig, quickConfig;
  metrics::UpstreamStats slowStats, quickStats;
  std::shared_ptr<UpstreamPool> slow = checkedPool(slowConfig, "slow", slowServers, 2s);
  std::shared_ptr<UpstreamPool> quick = checkedPool(quickConfig, "quick", {&refusing}, 2s);
  HealthChecker checker({{slow, &slowStats}, {quick, &quickStats}}, 2);
  ASSERT_EQ(checker.start(), 0);
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (quickStats.checks.value() < 1 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  // `quick` got a slot in turn and its verdict is in, while `slow`'s first checks are
  // still waiting out check_timeout (and two more wait for a slot).
  EXPECT_EQ(quickStats.checks.value(), 1u);
  EXPECT_EQ(quickStats.markedDown.value(), 1u);
  EXPECT_EQ(quickStats.serversDown.value(), 1);
  EXPECT_EQ(slowStats.checks.value(), 0u);
  EXPECT_TRUE(quick->down(0, monotonicNanos()));
  checker.stop();  // mid-round: what is open is dropped
  EXPECT_EQ(slowStats.checks.value(), 0u);
  EXPECT_EQ(checker.peakInFlight(), 2u);
}

TEST_F(HealthCheckTest, TheThreadChecksEachIntervalAndStopsPromptly) {
  Port down;
  makePool({&down});
  ASSERT_EQ(checker_->start(), 0);
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (stats_.checks.value() < 3 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_GE(stats_.checks.value(), 3u);
  const auto before = std::chrono::steady_clock::now();
  checker_->stop();
  EXPECT_LT(std::chrono::steady_clock::now() - before, 1s);
  const uint64_t checks = stats_.checks.value();
  std::this_thread::sleep_for(150ms);
  EXPECT_EQ(stats_.checks.value(), checks);
  checker_->stop();  // idempotent
}

}  // namespace
}  // namespace grelay::proxy
