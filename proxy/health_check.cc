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
#include "proxy/sockets.h"
#include "proxy/tls_context.h"
#include "relay/tls_channel.h"

namespace grelay::proxy {

struct HealthChecker::Target {
  // Sending, Expecting: check_send and check_expect.
  enum class Phase : uint8_t { Connecting, Handshaking, Sending, Expecting, Closing };
  Round* round = nullptr;
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
  size_t sent = 0;    // of check_send
  std::string reply;  // read so far, looking for check_expect
};

// One check of each server of a pool.
struct HealthChecker::Round {
  Pool pool;  // what it checks: a move may replace pools_[index] while it is open
  size_t index = 0;
  std::vector<Target> targets;  // one per server
  size_t started = 0;           // targets[0, started) have had their connect
  size_t finished = 0;
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

// Bytes of a health check's reply searched for check_expect.
constexpr size_t kMaxCheckReply = 4096;

// `text` quoted for a log line, control and non-ASCII bytes as \xNN.
std::string printable(std::string_view text) {
  std::string out = "'";
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out += ch;
    } else {
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\x%02x", c);
      out += escaped;
    }
  }
  return out + "'";
}

}  // namespace

HealthChecker::HealthChecker(std::vector<Pool> pools, size_t maxInFlight)
    : pools_(std::move(pools)), maxInFlight_(std::max<size_t>(maxInFlight, 1)) {
  wakeFd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

HealthChecker::~HealthChecker() {
  stop();
  dropRounds();  // (checkNow()'s, interrupted)
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

void HealthChecker::takeNextPools(uint64_t now) {
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
    // (Not a move's: every pool at once.)
    due_.assign(next.size(), now);
    open_.assign(next.size(), nullptr);
  } else {
    for (size_t i = 0; i < next.size(); ++i) {
      if (next[i].pool != pools_[i].pool) {
        // Moved: its new addresses are checked at once; a round of the old pool that is
        // under way finishes on its own.
        due_[i] = now;
        open_[i] = nullptr;
      }
    }
  }
  pools_ = std::move(next);
}

void HealthChecker::run() {
  due_.assign(pools_.size(), monotonicNanos());
  open_.assign(pools_.size(), nullptr);
  for (;;) {
    const uint64_t now = monotonicNanos();
    takeNextPools(now);
    uint64_t next = UINT64_MAX;
    for (size_t i = 0; i < pools_.size(); ++i) {
      if (open_[i] != nullptr) {
        continue;  // the next round of a pool begins when its last one is over
      }
      if (due_[i] <= now) {
        beginRound(i);
        due_[i] = now + nanos(pools_[i].pool->config().check_interval);
        continue;
      }
      next = std::min(next, due_[i]);
    }
    if (!step(next)) {
      break;
    }
  }
  dropRounds();
}

bool HealthChecker::checkNow(const std::vector<size_t>& pools) {
  if (due_.size() != pools_.size()) {
    due_.assign(pools_.size(), 0);
    open_.assign(pools_.size(), nullptr);
  }
  for (size_t i : pools) {
    beginRound(i);
  }
  const auto open = [&] {
    return std::any_of(pools.begin(), pools.end(), [&](size_t i) { return open_[i] != nullptr; });
  };
  while (open()) {
    if (!step(UINT64_MAX)) {
      dropRounds();
      return false;
    }
  }
  return true;
}

void HealthChecker::beginRound(size_t index) {
  if (open_[index] != nullptr) {
    return;
  }
  Round& r = rounds_.emplace_back();
  r.pool = pools_[index];
  r.index = index;
  r.targets.resize(r.pool.pool->size());
  for (size_t s = 0; s < r.targets.size(); ++s) {
    r.targets[s].round = &r;
    r.targets[s].server = static_cast<uint32_t>(s);
  }
  open_[index] = &r;
  roundsStarted_.fetch_add(1, std::memory_order_release);
  if (r.targets.empty()) {
    endRound(r, monotonicNanos());
  }
}

void HealthChecker::endRound(Round& r, uint64_t now) {
  const bool current = r.index < pools_.size() && pools_[r.index].pool == r.pool.pool;
  if (current) {
    // The servers down now, of the pool as it is (not of one a move replaced).
    UpstreamPool& pool = *r.pool.pool;
    int64_t down = 0;
    for (uint32_t s = 0; s < pool.size(); ++s) {
      down += pool.down(s, now) ? 1 : 0;
    }
    r.pool.stats->serversDown.set(down);
  }
  if (r.index < open_.size() && open_[r.index] == &r) {
    open_[r.index] = nullptr;
  }
  rounds_.remove_if([&r](const Round& x) { return &x == &r; });
}

void HealthChecker::dropRounds() {
  for (Round& r : rounds_) {
    for (Target& t : r.targets) {
      t.tls.reset();
      if (t.fd >= 0) {
        ::close(t.fd);
        t.fd = -1;
      }
    }
  }
  rounds_.clear();
  active_.clear();
  std::fill(open_.begin(), open_.end(), nullptr);
}

void HealthChecker::startChecks(uint64_t now) {
  // One check of each open round in turn, so a pool of many unanswering servers (each
  // holding its slot for check_timeout) does not hold back the checks of the others.
  bool more = true;
  while (more && active_.size() < maxInFlight_) {
    more = false;
    for (Round& r : rounds_) {
      if (active_.size() >= maxInFlight_) {
        break;
      }
      if (r.started < r.targets.size()) {
        Target& t = r.targets[r.started++];
        open(t, now);
        active_.push_back(&t);
        more = true;
      }
    }
  }
  size_t inFlight = 0;
  for (const Target* t : active_) {
    inFlight += t->done ? 0 : 1;
  }
  peakInFlight_ = std::max(peakInFlight_, inFlight);
}

bool HealthChecker::reap(uint64_t now) {
  bool any = false;
  for (size_t k = 0; k < active_.size();) {
    Target& t = *active_[k];
    if (!t.done) {
      ++k;
      continue;
    }
    active_[k] = active_.back();
    active_.pop_back();
    any = true;
    // Its descriptor goes back now, not at the end of the round.
    t.tls.reset();
    if (t.fd >= 0) {
      ::close(t.fd);
      t.fd = -1;
    }
    Round& r = *t.round;
    if (t.verdict) {
      report(r.pool, t, now);
    }
    if (++r.finished == r.targets.size()) {
      endRound(r, now);
    }
  }
  return any;
}

bool HealthChecker::step(uint64_t until) {
  uint64_t now = monotonicNanos();
  startChecks(now);
  std::vector<pollfd>& fds = pollFds_;
  std::vector<Target*>& which = polled_;
  fds.assign(1, pollfd{wakeFd_, POLLIN, 0});
  which.clear();
  uint64_t earliest = until;
  for (Target* t : active_) {
    if (!t->done && now >= t->deadline) {
      t->done = true;
      // A server that passed and then keeps the connection open still passed.
      if (t->phase != Target::Phase::Closing) {
        t->error = ETIMEDOUT;
        const std::string within =
            " within " + std::to_string(t->round->pool.pool->config().check_timeout.count()) +
            " ms";
        if (t->phase == Target::Phase::Handshaking) {
          t->why = "no TLS handshake" + within;
        } else if (t->phase == Target::Phase::Sending) {
          t->why = "check_send not taken" + within;
        } else if (t->phase == Target::Phase::Expecting) {
          t->why =
              "no reply with " + printable(t->round->pool.pool->config().check_expect) + within;
        }
      }
    }
    if (!t->done) {
      fds.push_back(pollfd{t->fd, t->events, 0});
      which.push_back(t);
      earliest = std::min(earliest, t->deadline);
    }
  }
  if (reap(now)) {
    return true;  // rounds may have ended, slots come free: the caller looks again
  }
  const int n = ::poll(fds.data(), fds.size(), waitMillis(now, earliest));
  if (n < 0 && errno != EINTR) {
    uint64_t suppressed = 0;
    if (socketErrorLog.allow(now, &suppressed)) {
      GRELAY_LOG_WARN("health checks: poll failed: %s; trying again", strerror(errno));
    }
    pollfd wake{wakeFd_, POLLIN, 0};
    return !(::poll(&wake, 1, 100) > 0 && woken());
  }
  if (n > 0 && fds[0].revents != 0 && woken()) {
    return false;  // stop()
  }
  for (size_t k = 0; n > 0 && k < which.size(); ++k) {
    if (fds[k + 1].revents == 0) {
      continue;
    }
    Target& t = *which[k];
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
  reap(monotonicNanos());
  return true;
}

void HealthChecker::connected(Target& t) {
  const config::UpstreamConfig& uc = t.round->pool.pool->config();
  if (uc.proxy_protocol != config::ProxyProtocol::Off) {
    // Servers that expect a PROXY header get the one for a connection of grelay's own
    // ("PROXY UNKNOWN", v2 LOCAL), before TLS as on sessions: a plain connect to them.
    const std::string header = proxyHeaderLocal(uc.proxy_protocol);
    [[maybe_unused]] ssize_t n =
        ::send(t.fd, header.data(), header.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  }
  SSL_CTX* ctx = t.round->pool.tls;
  if (ctx == nullptr) {
    beginExchange(t);
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

void HealthChecker::beginExchange(Target& t) {
  const config::UpstreamConfig& uc = t.round->pool.pool->config();
  if (!uc.check_send.empty()) {
    t.phase = Target::Phase::Sending;
  } else if (!uc.check_expect.empty()) {
    t.phase = Target::Phase::Expecting;
  } else {
    passed(t);
    return;
  }
  advance(t);
}

void HealthChecker::passed(Target& t) {
  if (t.tls == nullptr) {
    t.done = true;  // (unread reply bytes, if any, make the close a reset: harmless here)
    return;
  }
  t.tls->shutdown();
  t.phase = Target::Phase::Closing;
  t.events = POLLIN;
}

void HealthChecker::failed(Target& t, int error, std::string why) {
  t.done = true;
  t.error = error;
  t.why = std::move(why);
}

bool HealthChecker::moveBytes(Target& t, const void* send, void* receive, size_t len,
                              size_t* moved) {
  using Step = relay::TlsChannel::Step;
  const bool sending = send != nullptr;
  *moved = 0;
  Step step = Step::Done;
  if (t.tls != nullptr) {
    step =
        sending ? t.tls->sendDirect(send, len, moved) : t.tls->receiveDirect(receive, len, moved);
  } else {
    const ssize_t n = sending ? ::send(t.fd, send, len, MSG_DONTWAIT | MSG_NOSIGNAL)
                              : ::recv(t.fd, receive, len, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      step = sending ? Step::WantWrite : Step::WantRead;
    } else if (n < 0) {
      failed(t, errno, "");
      return false;
    } else {
      *moved = static_cast<size_t>(n);
    }
  }
  if (step == Step::Failed) {
    failed(t, EPROTO, "TLS " + t.tls->error());
    return false;
  }
  if (step != Step::Done) {
    t.events = step == Step::WantRead ? POLLIN : POLLOUT;
    return false;
  }
  return true;
}

void HealthChecker::exchange(Target& t) {
  const config::UpstreamConfig& uc = t.round->pool.pool->config();
  while (t.phase == Target::Phase::Sending) {
    const std::string& data = uc.check_send;
    size_t moved = 0;
    if (!moveBytes(t, data.data() + t.sent, nullptr, data.size() - t.sent, &moved)) {
      return;
    }
    t.sent += moved;
    if (t.sent == data.size()) {
      if (uc.check_expect.empty()) {
        passed(t);
        return;
      }
      t.phase = Target::Phase::Expecting;
    }
  }
  // Expecting: read until the reply holds check_expect, or 4 KiB do not.
  const std::string& expect = uc.check_expect;
  while (true) {
    char buf[4096];
    const size_t room = std::min(sizeof(buf), kMaxCheckReply - t.reply.size());
    size_t moved = 0;
    if (!moveBytes(t, nullptr, buf, room, &moved)) {
      return;
    }
    if (moved == 0) {
      failed(t, EPROTO,
             "the server closed before its reply had " + printable(expect) +
                 (t.reply.empty() ? " (no reply)" : " (it sent " + printable(t.reply) + ")"));
      return;
    }
    t.reply.append(buf, moved);
    if (t.reply.find(expect) != std::string::npos) {
      passed(t);
      return;
    }
    if (t.reply.size() >= kMaxCheckReply) {
      failed(t, EPROTO,
             "no " + printable(expect) + " in the first " + std::to_string(kMaxCheckReply) +
                 " bytes of the reply (" + printable(t.reply.substr(0, 64)) + "...)");
      return;
    }
  }
}

void HealthChecker::advance(Target& t) {
  if (t.phase == Target::Phase::Sending || t.phase == Target::Phase::Expecting) {
    exchange(t);
    return;
  }
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
      beginExchange(t);
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
  UpstreamPool& pool = *t.round->pool.pool;
  t.deadline = now + nanos(pool.config().check_timeout);
  config::Address a = pool.server(t.server);
  if (const uint16_t port = pool.config().check_port; port != 0) {
    // The same address, the health port (sin_port and sin6_port share their offset).
    reinterpret_cast<sockaddr_in&>(a.storage).sin_port = htons(port);
  }
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
  if (const std::optional<config::Address>& source = pool.config().source_address) {
    if (const int err = bindSourceAddress(t.fd, *source); err < 0) {
      // Like a socket that cannot be opened: nothing about the server.
      t.done = true;
      t.verdict = false;
      uint64_t suppressed = 0;
      if (socketErrorLog.allow(now, &suppressed)) {
        GRELAY_LOG_WARN("health check of upstream %s: cannot bind source_address %s: %s",
                        pool.config().name.c_str(), source->text.c_str(), strerror(-err));
      }
      return;
    }
  }
  if (::connect(t.fd, a.sockaddrPtr(), a.length) == 0) {
    connected(t);
  } else if (errno != EINPROGRESS) {
    t.done = true;
    t.error = errno;
  }
}

void HealthChecker::report(const Pool& p, const Target& t, uint64_t now) {
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
    // The count is shared with sessions' connects: "failures", and the last one named.
    GRELAY_LOG_WARN(
        "upstream %s: server %s marked down for %lld ms after %u failure%s in a row (health "
        "check: %s)",
        uc.name.c_str(), pool.server(server).text.c_str(),
        static_cast<long long>(uc.fail_timeout.count()), uc.max_fails, uc.max_fails == 1 ? "" : "s",
        why.c_str());
  }
}

}  // namespace grelay::proxy
