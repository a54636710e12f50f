#include "proxy/health_check.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <system_error>

#include "proxy/log.h"
#include "proxy/proxy_protocol.h"
#include "proxy/tls_context.h"
#include "relay/tls_channel.h"

namespace grelay::proxy {

struct HealthChecker::Target {
  enum class Phase : uint8_t { Connecting, Handshaking, Closing };
  size_t pool = 0;
  uint32_t server = 0;
  int fd = -1;
  uint64_t deadline = 0;
  Phase phase = Phase::Connecting;
  short events = POLLOUT;  // what poll waits for next
  bool done = false;
  bool verdict = true;  // false: the check could not be made here (no socket), no result
  int error = 0;        // done && verdict: 0 = passed, else errno (ETIMEDOUT, EPROTO: TLS)
  std::string why;      // error != 0: the reason, when errno's text is not it
  std::unique_ptr<relay::TlsChannel> tls;
};

namespace {

uint64_t nanos(config::Duration d) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
}

// Milliseconds to wait for `until`, rounded up so a wake-up is never early.
int waitMillis(uint64_t now, uint64_t until) {
  if (until <= now) {
    return 0;
  }
  const uint64_t ms = (until - now + 999'999) / 1'000'000;
  return ms > INT_MAX ? INT_MAX : static_cast<int>(ms);
}

LogLimiter socketErrorLog;

}  // namespace

HealthChecker::HealthChecker(std::vector<Pool> pools, size_t maxInFlight)
    : pools_(std::move(pools)), maxInFlight_(std::max<size_t>(maxInFlight, 1)) {
  wakeFd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

HealthChecker::~HealthChecker() {
  stop();
  if (wakeFd_ >= 0) {
    ::close(wakeFd_);
  }
}

int HealthChecker::start() {
  if (wakeFd_ < 0) {
    return -EMFILE;
  }
  try {
    thread_ = std::thread([this] { run(); });
  } catch (const std::system_error& e) {
    return -e.code().value();
  }
  return 0;
}

void HealthChecker::stop() {
  stopping_.store(true, std::memory_order_release);
  wake();
  if (thread_.joinable()) {
    thread_.join();
  }
}

void HealthChecker::wake() {
  if (wakeFd_ >= 0) {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wakeFd_, &one, sizeof(one));
  }
}

bool HealthChecker::woken() {
  if (stopping_.load(std::memory_order_acquire)) {
    return true;  // (the count is left: every later poll sees it at once)
  }
  uint64_t count = 0;
  [[maybe_unused]] ssize_t n = ::read(wakeFd_, &count, sizeof(count));
  return false;
}

void HealthChecker::setPools(std::vector<Pool> pools) {
  {
    std::lock_guard<std::mutex> lock(nextMutex_);
    next_ = std::move(pools);
    hasNext_ = true;
  }
  wake();  // (a round in progress goes on)
}

void HealthChecker::takeNextPools(std::vector<uint64_t>& due, uint64_t now) {
  std::vector<Pool> next;
  {
    std::lock_guard<std::mutex> lock(nextMutex_);
    if (!hasNext_) {
      return;
    }
    hasNext_ = false;
    next.swap(next_);
  }
  if (next.size() != pools_.size()) {
    due.assign(next.size(), now);  // (not a move's: every pool at once)
  } else {
    for (size_t i = 0; i < next.size(); ++i) {
      if (next[i].pool != pools_[i].pool) {
        due[i] = now;  // moved: its new addresses are checked at once
      }
    }
  }
  pools_ = std::move(next);
}

void HealthChecker::run() {
  std::vector<uint64_t> due(pools_.size(), monotonicNanos());
  std::vector<size_t> ready;
  for (;;) {
    const uint64_t now = monotonicNanos();
    takeNextPools(due, now);
    uint64_t next = UINT64_MAX;
    ready.clear();
    for (size_t i = 0; i < pools_.size(); ++i) {
      if (due[i] <= now) {
        ready.push_back(i);
        due[i] = now + nanos(pools_[i].pool->config().check_interval);
      }
      next = std::min(next, due[i]);
    }
    if (!ready.empty()) {
      roundsStarted_.fetch_add(1, std::memory_order_release);
      if (!checkNow(ready)) {
        return;
      }
      continue;
    }
    pollfd wake{wakeFd_, POLLIN, 0};
    if (::poll(&wake, 1, waitMillis(now, next)) > 0 && woken()) {
      return;
    }
  }
}

bool HealthChecker::checkNow(const std::vector<size_t>& pools) {
  std::vector<Target> targets;
  for (size_t pi : pools) {
    for (uint32_t s = 0; s < pools_[pi].pool->size(); ++s) {
      Target& t = targets.emplace_back();
      t.pool = pi;
      t.server = s;
    }
  }
  const bool finished = waitFor(targets);
  if (finished) {
    const uint64_t now = monotonicNanos();
    for (Target& t : targets) {
      if (!t.verdict) {
        continue;
      }
      report(pools_[t.pool], t, now);
    }
    for (size_t pi : pools) {
      UpstreamPool& pool = *pools_[pi].pool;
      int64_t down = 0;
      for (uint32_t s = 0; s < pool.size(); ++s) {
        down += pool.down(s, now) ? 1 : 0;
      }
      pools_[pi].stats->serversDown.set(down);
    }
  }
  for (Target& t : targets) {
    t.tls.reset();
    if (t.fd >= 0) {
      ::close(t.fd);
    }
  }
  return finished;
}

void HealthChecker::connected(Target& t) {
  const config::UpstreamConfig& uc = pools_[t.pool].pool->config();
  if (uc.proxy_protocol != config::ProxyProtocol::Off) {
    // Servers that expect a PROXY header get the one for a connection of grelay's own
    // ("PROXY UNKNOWN", v2 LOCAL), before TLS as on sessions: a plain connect to them.
    const std::string header = proxyHeaderLocal(uc.proxy_protocol);
    [[maybe_unused]] ssize_t n =
        ::send(t.fd, header.data(), header.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  }
  SSL_CTX* ctx = pools_[t.pool].tls;
  if (ctx == nullptr) {
    t.done = true;
    return;
  }
  t.tls = std::make_unique<relay::TlsChannel>(ctx, t.fd, false, tlsBuffers_);
  if (!t.tls->valid()) {
    t.done = true;
    t.verdict = false;  // out of memory here says nothing about the server
    return;
  }
  const UpstreamPeerName peer = upstreamPeerName(uc, uc.servers[t.server]);
  t.tls->setPeerName(peer.sni, peer.verifyHost);
  t.phase = Target::Phase::Handshaking;
  advance(t);
}

void HealthChecker::advance(Target& t) {
  if (t.phase == Target::Phase::Closing) {
    // The verdict is in; read until the server's close_notify and FIN so the socket is
    // not closed on unread bytes (a reset for the server to log).
    char sink[4096];
    ssize_t n;
    while ((n = ::recv(t.fd, sink, sizeof(sink), MSG_DONTWAIT)) > 0) {
    }
    if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
      t.done = true;
    }
    return;
  }
  switch (t.tls->handshake()) {
    case relay::TlsChannel::Step::Done:
      t.tls->shutdown();
      t.phase = Target::Phase::Closing;
      t.events = POLLIN;
      return;
    case relay::TlsChannel::Step::WantRead:
      t.events = POLLIN;
      return;
    case relay::TlsChannel::Step::WantWrite:
      t.events = POLLOUT;
      return;
    case relay::TlsChannel::Step::Failed:
      t.done = true;
      t.error = EPROTO;
      t.why = "TLS " + t.tls->error();
      return;
  }
}

void HealthChecker::open(Target& t, uint64_t now) {
  UpstreamPool& pool = *pools_[t.pool].pool;
  t.deadline = now + nanos(pool.config().check_timeout);
  const config::Address& a = pool.server(t.server);
  t.fd = ::socket(a.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (t.fd < 0) {
    // Out of descriptors or memory here says nothing about the server.
    t.done = true;
    t.verdict = false;
    uint64_t suppressed = 0;
    if (socketErrorLog.allow(now, &suppressed)) {
      GRELAY_LOG_WARN("health check of upstream %s: cannot open a socket: %s",
                      pool.config().name.c_str(), strerror(errno));
    }
    return;
  }
  if (::connect(t.fd, a.sockaddrPtr(), a.length) == 0) {
    connected(t);
  } else if (errno != EINPROGRESS) {
    t.done = true;
    t.error = errno;
  }
}

bool HealthChecker::waitFor(std::vector<Target>& targets) {
  std::vector<pollfd> fds;
  std::vector<size_t> which;
  size_t started = 0;  // targets[0, started) have had their connect
  for (;;) {
    fds.assign(1, pollfd{wakeFd_, POLLIN, 0});
    which.clear();
    const uint64_t now = monotonicNanos();
    uint64_t earliest = UINT64_MAX;
    // At most maxInFlight_ checks at once, so a pool of thousands of servers does not take
    // thousands of descriptors (the workers' too) at the same moment.
    size_t inFlight = 0;
    for (size_t i = 0; i < started; ++i) {
      inFlight += targets[i].done ? 0 : 1;
    }
    while (started < targets.size() && inFlight < maxInFlight_) {
      Target& t = targets[started++];
      open(t, now);
      inFlight += t.done ? 0 : 1;
    }
    peakInFlight_ = std::max(peakInFlight_, inFlight);
    for (size_t i = 0; i < started; ++i) {
      Target& t = targets[i];
      if (t.done) {
        if (t.fd >= 0) {  // finished: its descriptor goes back now, not after the round
          t.tls.reset();
          ::close(t.fd);
          t.fd = -1;
        }
        continue;
      }
      if (now >= t.deadline) {
        t.done = true;
        // A server that passed and then keeps the connection open still passed.
        if (t.phase != Target::Phase::Closing) {
          t.error = ETIMEDOUT;
          if (t.phase == Target::Phase::Handshaking) {
            t.why = "no TLS handshake within " +
                    std::to_string(pools_[t.pool].pool->config().check_timeout.count()) + " ms";
          }
        }
        continue;
      }
      fds.push_back(pollfd{t.fd, t.events, 0});
      which.push_back(i);
      earliest = std::min(earliest, t.deadline);
    }
    if (which.empty()) {
      if (started < targets.size()) {
        continue;  // all of these ended: start the next ones
      }
      return true;
    }
    const int n = ::poll(fds.data(), fds.size(), waitMillis(now, earliest));
    if (n < 0 && errno != EINTR) {
      GRELAY_LOG_WARN("health checks: poll failed: %s; this round is dropped", strerror(errno));
      return false;
    }
    if (n > 0 && fds[0].revents != 0 && woken()) {
      return false;  // stop()
    }
    for (size_t k = 0; n > 0 && k < which.size(); ++k) {
      if (fds[k + 1].revents == 0) {
        continue;
      }
      Target& t = targets[which[k]];
      if (t.phase != Target::Phase::Connecting) {
        advance(t);
        continue;
      }
      int error = 0;
      socklen_t length = sizeof(error);
      if (::getsockopt(t.fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) {
        error = errno;
      }
      if (error != 0) {
        t.done = true;
        t.error = error;
      } else {
        connected(t);
      }
    }
  }
}

void HealthChecker::report(Pool& p, const Target& t, uint64_t now) {
  const uint32_t server = t.server;
  const int error = t.error;
  UpstreamPool& pool = *p.pool;
  const config::UpstreamConfig& uc = pool.config();
  p.stats->checks.inc();
  if (error == 0) {
    const bool wasDown = pool.down(server, now);
    if (wasDown && pool.checkPassed(server) < uc.check_passes) {
      // Not yet: it stays down past fail_timeout until the next check has counted.
      pool.holdDown(server, now, now + nanos(uc.check_interval + uc.check_timeout) * 2);
      return;
    }
    pool.connectSucceeded(server, now);  // and the passes start again from 0
    if (wasDown) {
      const std::string ramp =
          pool.rampPermille(server, now) < 1000
              ? "; slow start over " + std::to_string(uc.slow_start.count()) + " ms"
              : "";
      GRELAY_LOG_INFO("upstream %s: server %s is up again (health check%s)%s", uc.name.c_str(),
                      pool.server(server).text.c_str(), uc.check_passes > 1 ? "s in a row" : "",
                      ramp.c_str());
    }
    return;
  }
  pool.checkFailed(server);
  p.stats->checkFailures.inc();
  if (pool.connectFailed(server, now)) {
    p.stats->markedDown.inc();
    std::string why = !t.why.empty() ? t.why
                      : error == ETIMEDOUT
                          ? "no answer within " + std::to_string(uc.check_timeout.count()) + " ms"
                          : strerror(error);
    GRELAY_LOG_WARN(
        "upstream %s: server %s marked down for %lld ms after %u failed connect%s (health "
        "check: %s)",
        uc.name.c_str(), pool.server(server).text.c_str(),
        static_cast<long long>(uc.fail_timeout.count()), uc.max_fails, uc.max_fails == 1 ? "" : "s",
        why.c_str());
  }
}

}  // namespace grelay::proxy
