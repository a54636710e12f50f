#include "proxy/worker.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "relay/uring_compat.h"
#include "relay/uring_ring.h"

namespace grelay::proxy {
namespace {

constexpr uint16_t kBufferGroup = 0;
constexpr uint32_t kDiscardBytes = 64 * 1024;
// At most this many connections taken from a listening socket's queue when the drain
// cancels its accept (the listen backlog).
constexpr int kAcceptQueuedMax = 4096;

uint32_t bufferCount(const config::ServerConfig& server) {
  uint64_t n = server.buffer_pool / server.chunk_size;
  uint32_t count = 8;
  while (count * 2 <= n && count < 32768) {
    count *= 2;
  }
  return count;
}

uint8_t pathIndexOf(config::RelayPath path) {
  switch (path) {
    case config::RelayPath::Group:
      return metrics::kGroupPath;
    case config::RelayPath::Copy:
      return metrics::kCopyPath;
    default:
      return metrics::kMainlinePath;
  }
}

// A pool and the configuration its settings are read from: a pool a DNS move leaves as
// it was goes on in the next routes, whose configuration is another.
struct OwnedPool {
  OwnedPool(std::shared_ptr<const config::Config> cfg, size_t index)
      : config(std::move(cfg)), pool(config->upstreams[index]) {}
  std::shared_ptr<const config::Config> config;
  UpstreamPool pool;
};

}  // namespace

std::shared_ptr<Routes> makeRoutes(std::shared_ptr<const config::Config> cfg) {
  auto routes = std::make_shared<Routes>();
  for (size_t u = 0; u < cfg->upstreams.size(); ++u) {
    auto owned = std::make_shared<OwnedPool>(cfg, u);
    routes->upstreams.push_back(std::shared_ptr<UpstreamPool>(owned, &owned->pool));
  }
  for (const auto& l : cfg->listeners) {
    auto& health = routes->mirrorHealth.emplace_back();
    for (size_t m = 0; m < l.mirrors.size(); ++m) {
      health.push_back(std::make_shared<PeerHealth>());
    }
  }
  routes->config = std::move(cfg);
  return routes;
}

std::shared_ptr<Routes> moveRoutes(const Routes& was, std::shared_ptr<const config::Config> next,
                                   uint64_t now) {
  std::shared_ptr<Routes> fresh = makeRoutes(next);
  auto routes = std::make_shared<Routes>(was);
  routes->config = std::move(next);
  const config::Config& before = *was.config;
  const config::Config& after = *routes->config;
  for (size_t u = 0; u < after.upstreams.size(); ++u) {
    const auto& a = before.upstreams[u].servers;
    const auto& b = after.upstreams[u].servers;
    const bool same =
        std::equal(a.begin(), a.end(), b.begin(), b.end(),
                   [](const config::UpstreamServer& x, const config::UpstreamServer& y) {
                     return x.address.sameEndpoint(y.address);
                   });
    if (!same) {
      fresh->upstreams[u]->followMove(*was.upstreams[u], now);
      routes->upstreams[u] = fresh->upstreams[u];
    }
  }
  for (size_t l = 0; l < after.listeners.size(); ++l) {
    for (size_t m = 0; m < after.listeners[l].mirrors.size(); ++m) {
      if (!before.listeners[l].mirrors[m].address.sameEndpoint(
              after.listeners[l].mirrors[m].address)) {
        routes->mirrorHealth[l][m] = fresh->mirrorHealth[l][m];
      }
    }
  }
  return routes;
}

Runtime::Runtime(const config::Config& cfg)
    : config(cfg),
      listenerConnections(new std::atomic<int64_t>[cfg.listeners.size()]),
      listenerHandedOver(new std::atomic<bool>[cfg.listeners.size()]),
      // The first routes are the configuration the runtime started with (not owned here).
      routes_(makeRoutes(std::shared_ptr<const config::Config>(std::shared_ptr<void>(), &cfg))) {
  accessLogFds.assign(cfg.listeners.size(), -1);
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    listenerConnections[i].store(0);
    listenerHandedOver[i].store(false);
    troubleLogs.push_back(std::make_unique<LogLimiter>());
    const uint32_t perClient = cfg.listeners[i].max_connections_per_client;
    clientLimits.push_back(perClient > 0 ? std::make_shared<ClientLimiter>(perClient) : nullptr);
    const uint32_t clientRate = cfg.listeners[i].max_connection_rate_per_client;
    clientRates.push_back(clientRate > 0 ? std::make_shared<ClientRateLimiter>(clientRate)
                                         : nullptr);
    const uint32_t rate = cfg.listeners[i].max_connection_rate;
    acceptRates.push_back(
        rate > 0 ? std::make_shared<RateLimiter>(rate, RateLimiter::defaultBurst(rate)) : nullptr);
    auto& logs = mirrorLogs.emplace_back();
    for (size_t m = 0; m < cfg.listeners[i].mirrors.size(); ++m) {
      logs.push_back(std::make_unique<LogLimiter>());
    }
  }
}

std::shared_ptr<const Routes> Runtime::routes() const {
  std::lock_guard<std::mutex> lock(routesMutex_);
  return routes_;
}

void Runtime::setRoutes(std::shared_ptr<const Routes> next) {
  {
    std::lock_guard<std::mutex> lock(routesMutex_);
    routes_ = std::move(next);
  }
  routesVersion_.fetch_add(1, std::memory_order_release);
}

void Runtime::wakeWorker(uint32_t index) const {
  if (index < wakeFds.size() && wakeFds[index] >= 0) {
    uint64_t one = 1;
    ssize_t ignored = ::write(wakeFds[index], &one, sizeof(one));
    (void)ignored;
  }
}

Runtime::~Runtime() {
  for (int fd : accessLogFds) {
    if (fd >= 0) {
      ::close(fd);
    }
  }
}

Worker::Worker(Runtime& runtime, uint32_t index, metrics::WorkerStats& stats,
               std::vector<std::vector<int>> listenFds, std::vector<TapFile> taps)
    : runtime_(runtime),
      index_(index),
      stats_(stats),
      tapFiles_(std::move(taps)),
      discard_(kDiscardBytes) {
  pathIndex_ = pathIndexOf(runtime.path);
  const config::Config& cfg = runtime.config;
  for (const auto& l : cfg.listeners) {
    anyMirrors_ = anyMirrors_ || !l.mirrors.empty();
  }
  auto first = std::make_unique<WorkerRoutes>();
  first->version = runtime.routesVersion();
  first->routes = runtime.routes();
  controlFd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (runtime.wakeFds.size() <= index) {
    runtime.wakeFds.resize(index + 1, -1);
  }
  runtime.wakeFds[index] = controlFd_;
  for (const auto& pool : first->routes->upstreams) {
    first->slotQueues.push_back(makeSlotQueue(*pool));
  }
  for (size_t i = 0; i < cfg.listeners.size() && i < listenFds.size(); ++i) {
    for (int fd : listenFds[i]) {
      auto a = std::make_unique<Acceptor>(*this, i);
      a->fd = fd;
      if (fd >= 0) {
        runtime.openListenSockets.fetch_add(1);
      }
      auto context = std::make_unique<ListenerContext>();
      context->stats = stats.listeners[i].get();
      context->chunkSize = cfg.server.chunk_size;
      context->splice = runtime.splice && pathIndex_ == metrics::kMainlinePath;
      context->connections = &runtime.listenerConnections[i];
      context->clientLimit = runtime.clientLimits[i].get();
      context->clientRate = runtime.clientRates[i].get();
      a->rate = runtime.acceptRates[i].get();
      if (runtime.tls != nullptr) {
        context->tls = runtime.tls->listener(i);
      }
      route(*context, i, *first);
      a->context = context.get();
      first->contexts.push_back(std::move(context));
      addRouteContexts(*a->context, *first);
      acceptors_.push_back(std::move(a));
    }
  }
  routes_.push_back(std::move(first));
}

std::shared_ptr<SlotQueue> Worker::makeSlotQueue(const UpstreamPool& pool) {
  Runtime* runtime = &runtime_;
  return std::make_shared<SlotQueue>(pool.slotBoard(), index_,
                                     [runtime](uint32_t w) { runtime->wakeWorker(w); });
}

Worker::~Worker() {
  while (sessions_ != nullptr) {
    Session* s = sessions_;
    sessions_ = s->next_;
    delete s;
  }
  for (Session* s : finished_) {
    delete s;
  }
  for (auto& a : acceptors_) {
    closeAcceptor(*a);
  }
  for (auto& t : tapFiles_) {
    if (t.fd >= 0) {
      ::close(t.fd);  // never handed to a TapWriter (init failed)
    }
  }
  taps_.clear();
  for (const Pipe& p : pipes_) {
    ::close(p.fds[0]);
    ::close(p.fds[1]);
  }
  pool_.reset();
  ring_.reset();
  if (controlFd_ >= 0) {
    ::close(controlFd_);
  }
}

void Worker::useRing(relay::RingPtr ring, std::unique_ptr<Sockets> sockets) {
  ring_ = std::move(ring);
  sockets_ = std::move(sockets);
}

void Worker::run(std::promise<int>& ready) {
  int err = init();
  ready.set_value(err);
  if (err != 0) {
    stats_.beat.store(metrics::kBeatFinished);
    return;
  }
  while (!finished()) {
    if (!loopOnce()) {
      break;
    }
  }
  for (auto& t : taps_) {
    t->finish();
  }
  for (auto& log : accessLogs_) {
    log->finish();  // the lines of the last second; the ring no longer runs
  }
  stats_.beat.store(metrics::kBeatFinished);
}

int Worker::init() {
  const config::ServerConfig& server = runtime_.config.server;
  int err = 0;
  if (!ring_) {
    auto ring = relay::UringRing::create(relay::RingOptions{}, &err);
    if (!ring) {
      return err;
    }
    ring_ = std::move(ring);
    sockets_ = std::make_unique<SystemSockets>();
  }
  auto buffers = ring_->registerBuffers(kBufferGroup, bufferCount(server), server.chunk_size, &err);
  if (!buffers) {
    return err;
  }
  pool_ = std::make_unique<relay::ProvidedBufferPool>(std::move(buffers));
  pool_->setListener(this);
  // TLS plaintext and ciphertext, and relay_path = "copy": bounded like the kernel pool.
  userPool_ = std::make_unique<relay::UserBufferPool>(server.chunk_size, 4 * pool_->count());
  userPool_->setListener(this);
  now_ = monotonicNanos();
  const config::Config& cfg = runtime_.config;
  for (size_t i = 0; i < tapFiles_.size() && i < cfg.listeners.size(); ++i) {
    TapFile& t = tapFiles_[i];
    if (t.fd < 0 || !cfg.listeners[i].tap) {
      continue;
    }
    auto writer = std::make_unique<TapWriter>(*ring_, t.fd, t.path, *cfg.listeners[i].tap,
                                              cfg.listeners[i].name, index_, runtime_.workers,
                                              *stats_.listeners[i]);
    t.fd = -1;  // owned by the writer now
    writer->start();
    for (auto& context : routes_.back()->contexts) {
      if (context->index == i) {
        context->tap = writer.get();
      }
    }
    taps_.push_back(std::move(writer));
  }
  for (size_t i = 0; i < runtime_.accessLogFds.size(); ++i) {
    if (runtime_.accessLogFds[i] < 0) {
      continue;
    }
    const config::ListenerConfig& l = cfg.listeners[i];
    auto log = std::make_unique<AccessLog>(runtime_.accessLogFds[i], l.access_log, l.name,
                                           *stats_.listeners[i], ring_.get());
    for (auto& context : routes_.back()->contexts) {
      if (context->index == i) {
        context->accessLog = log.get();
      }
    }
    accessLogs_.push_back(std::move(log));
  }
  for (auto& a : acceptors_) {
    armAccept(*a);
  }
  armControl();
  ring_->submit();
  return 0;
}

void Worker::route(ListenerContext& context, size_t listener, WorkerRoutes& routes) const {
  const config::ListenerConfig& l = routes.routes->config->listeners[listener];
  context.config = &l;
  context.index = listener;
  context.routes = &routes;
  const size_t pool = context.upstreamUse == 0 ? l.upstream_index
                                               : l.routes[context.upstreamUse - 1].upstream_index;
  context.upstreamIndex = pool;
  // No pool of its own (a listener with routes only): a session no route takes is reset
  // (Session::chooseRoute).
  const bool none = context.upstreamUse == 0 && l.upstream.empty();
  context.upstream = none ? nullptr : routes.routes->upstreams[pool].get();
  context.slotQueue = none ? nullptr : routes.slotQueues[pool].get();
  context.upstreamTls = none || runtime_.tls == nullptr ? nullptr : runtime_.tls->upstream(pool);
  context.mirrorHealth.clear();
  for (const auto& h : routes.routes->mirrorHealth[listener]) {
    context.mirrorHealth.push_back(h.get());
  }
  context.mirrorPools.clear();
  for (const config::MirrorConfig& m : l.mirrors) {
    context.mirrorPools.push_back(
        m.upstream.empty() ? nullptr : routes.routes->upstreams[m.upstream_index].get());
  }
}

void Worker::addRouteContexts(ListenerContext& own, WorkerRoutes& routes) {
  own.routed.clear();
  for (size_t r = 0; r < own.config->routes.size(); ++r) {
    auto context = std::make_unique<ListenerContext>(own);
    context->routed.clear();
    context->upstreamUse = r + 1;
    route(*context, own.index, routes);
    own.routed.push_back(context.get());
    routes.contexts.push_back(std::move(context));
  }
}

void Worker::followRoutes() {
  if (runtime_.routesVersion() == routes_.back()->version) {
    return;
  }
  WorkerRoutes& was = *routes_.back();
  auto next = std::make_unique<WorkerRoutes>();
  next->version = runtime_.routesVersion();
  next->routes = runtime_.routes();
  const auto& pools = next->routes->upstreams;
  for (size_t u = 0; u < pools.size(); ++u) {
    // A pool the move left as it was keeps its queue: its waiters stay in order.
    const bool same = u < was.routes->upstreams.size() && was.routes->upstreams[u] == pools[u];
    next->slotQueues.push_back(same ? was.slotQueues[u] : makeSlotQueue(*pools[u]));
  }
  // The same contexts in the same order (newerContext() maps them by position).
  for (auto& a : acceptors_) {
    auto context = std::make_unique<ListenerContext>(*a->context);
    route(*context, a->index, *next);
    a->context = context.get();
    next->contexts.push_back(std::move(context));
    addRouteContexts(*a->context, *next);
  }
  routes_.push_back(std::move(next));
  moveWaiters();
  pruneRoutes();
}

void Worker::moveWaiters() {
  // Sessions waiting for a slot of a pool the move replaced would get one of the old
  // addresses only (which the name no longer has): they wait for the new pool's servers,
  // in the order they came, with their deadlines.
  WorkerRoutes& newest = *routes_.back();
  std::vector<Session*> moving;
  for (Session* s = sessions_; s != nullptr; s = s->next_) {
    ListenerContext& current = s->listener();
    if (current.routes != nullptr && current.routes != &newest && s->waitingForSlot() &&
        current.upstream != newest.routes->upstreams[current.upstreamIndex].get()) {
      moving.push_back(s);
    }
  }
  if (moving.empty()) {
    return;
  }
  std::sort(moving.begin(), moving.end(), [](const Session* a, const Session* b) {
    return SlotQueue::ticket(*a) < SlotQueue::ticket(*b);
  });
  // All leave their old queues before any joins a new one: a pool's queues share a board
  // across the move, on which this worker has one entry.
  for (Session* s : moving) {
    s->leaveQueueToMove();
  }
  for (Session* s : moving) {
    std::shared_ptr<const void> former = s->listener().routes->routes;
    ListenerContext* next = newerContext(s->listener());
    s->moveToRoutes(*next, std::move(former));
  }
}

ListenerContext* Worker::newerContext(ListenerContext& current) {
  WorkerRoutes* from = current.routes;
  WorkerRoutes& newest = *routes_.back();
  if (from == nullptr || from == &newest) {
    return nullptr;
  }
  size_t k = 0;
  while (k < from->contexts.size() && from->contexts[k].get() != &current) {
    ++k;
  }
  if (k == from->contexts.size() || k >= newest.contexts.size()) {
    return nullptr;
  }
  ++newest.sessions;
  if (--from->sessions == 0) {
    pruneRoutes_ = true;  // (not here: the session may be in the middle of a call)
  }
  return newest.contexts[k].get();
}

void Worker::pruneRoutes() {
  pruneRoutes_ = false;
  const WorkerRoutes* newest = routes_.back().get();
  // Older routes no session uses any more (a DNS move's): their pools can go.
  std::erase_if(routes_, [newest](const auto& r) { return r->sessions == 0 && r.get() != newest; });
}

bool Worker::loopOnce() {
  now_ = monotonicNanos();
  followRoutes();
  stats_.beat.store(now_, std::memory_order_relaxed);  // GET /healthz
  timers_.expire(now_);
  afterDispatch();
  if (finished()) {
    return true;
  }
  __kernel_timespec ts{1, 0};
  uint64_t next = timers_.next();
  if (tapDue_ != 0 && (next == 0 || tapDue_ < next)) {
    next = tapDue_;  // small tap chunks staged for a few ms
  }
  for (const auto& a : acceptors_) {
    if (!a->armed && a->retryAt > now_ && (next == 0 || a->retryAt < next)) {
      next = a->retryAt;
    }
  }
  if (next != 0) {
    uint64_t wait = next > now_ ? next - now_ : 0;
    if (wait < 1000000000ull) {
      ts.tv_sec = 0;
      ts.tv_nsec = static_cast<long long>(wait);
    }
  }
  int ret = ring_->run(&ts);
  if (ret < 0 && ret != -ETIME && ret != -EINTR) {
    GRELAY_LOG_ERROR("worker %u: io_uring_enter failed: %s", index_, strerror(-ret));
    return false;
  }
  now_ = monotonicNanos();
  afterDispatch();
  return true;
}

bool Worker::finished() const {
  // A pending control read does not keep the worker: the ring's teardown cancels it.
  if (!drainStarted_ || sessionCount_ != 0) {
    return false;
  }
  for (const auto& t : taps_) {
    if (t->writesInFlight() != 0) {
      return false;
    }
  }
  for (const auto& log : accessLogs_) {
    if (log->writing()) {
      return false;
    }
  }
  for (const auto& a : acceptors_) {
    if (a->armed) {
      return false;
    }
  }
  return true;
}

void Worker::wake() {
  runtime_.wakeWorker(index_);
}

void Worker::armControl() {
  if (controlFd_ < 0) {
    return;
  }
  controlArmed_ = true;
  ring_->read(controlFd_, &controlValue_, sizeof(controlValue_), &controlDone_);
}

void Worker::onControl(int32_t res, uint32_t) noexcept {
  controlArmed_ = false;
  // Perhaps a slot freed on another worker, for the oldest waiter of one of these queues
  // (one that has not waited longest leaves it alone).
  for (const auto& routes : routes_) {
    for (const auto& queue : routes->slotQueues) {
      queue->wakeOldest();
    }
  }
  if (runtime_.draining.load() && !drainStarted_) {
    beginDrain();
  }
  if (runtime_.aborting.load() && !abortStarted_) {
    abortAll();
  }
  if (res == -ECANCELED) {
    return;
  }
  if (!abortStarted_) {
    armControl();
  }
}

void Worker::armAccept(Acceptor& a) {
  if (a.fd < 0 || a.armed || drainStarted_) {
    return;
  }
  if (a.rate != nullptr) {
    // Paced: one accept per token, taken before the accept is armed. Without one the
    // next connections wait in the accept queue (SYN-ACKed by the kernel, not reset)
    // until the token's time.
    uint64_t at = 0;
    if (!a.rate->take(now(), &at)) {
      if (!a.ratePaused) {
        a.ratePaused = true;
        a.context->stats->rateLimited.inc();
      }
      a.retryAt = at;
      return;
    }
    a.ratePaused = false;
    a.armed = true;
    ring_->accept(a.fd, &a.done);
    return;
  }
  a.armed = true;
  ring_->acceptMultishot(a.fd, &a.done);
}

void Worker::Acceptor::onAccept(int32_t res, uint32_t flags) noexcept {
  const bool more = (flags & IORING_CQE_F_MORE) != 0;
  if (!more) {
    armed = false;
  }
  if (res >= 0) {
    worker.accepted(*this, res);
  } else if (res != -ECANCELED && res != -EAGAIN && res != -EINTR) {
    uint64_t suppressed = 0;
    if (worker.runtime_.acceptErrorLog.allow(worker.now_, &suppressed)) {
      char more[64] = "";
      if (suppressed > 0) {
        snprintf(more, sizeof(more), " (%llu more not logged in the last minute)",
                 static_cast<unsigned long long>(suppressed));
      }
      GRELAY_LOG_WARN("listener %s: accept failed: %s%s", context->config->name.c_str(),
                      strerror(-res), more);
    }
  }
  if (!more && !worker.drainStarted_) {
    if (res == -EMFILE || res == -ENFILE || res == -ENOMEM || res == -ENOBUFS) {
      // Out of descriptors or memory: re-arming at once would spin; closing sessions
      // free some. Retry in 100ms (the connection waits in the backlog meanwhile).
      retryAt = worker.now_ + 100'000'000ull;
    } else {
      worker.armAccept(*this);
    }
  }
  if (!armed && worker.drainStarted_ && fd >= 0) {
    worker.acceptQueued(*this);
    worker.closeAcceptor(*this);
  }
}

void Worker::acceptQueued(Acceptor& a) {
  // The drain cancelled the multishot accept. Accepts wait exclusively (EPOLLEXCLUSIVE):
  // a connection whose wake-up went to the request just cancelled waits in the queue and
  // wakes nobody else, not even the next generation's accept on the same socket after a
  // reload. Take what is queued now and serve it with the rest of the drain. A paced
  // listener (max_connection_rate) whose socket a reload handed over takes the one
  // connection whose wake-up the cancelled request may have had, and more only as the
  // rate allows now: the next generation accepts the rest at the pace (each accept it
  // arms tries the queue first).
  const bool paced = a.rate != nullptr && runtime_.listenerHandedOver[a.index].load();
  for (int i = 0; i < kAcceptQueuedMax && !abortStarted_; ++i) {
    uint64_t at = 0;
    if (paced && i > 0 && !a.rate->take(now(), &at)) {
      return;
    }
    int fd = sockets_->acceptNow(a.fd);
    if (fd == -EINTR || fd == -ECONNABORTED) {
      continue;
    }
    if (fd < 0) {
      if (fd != -EAGAIN) {
        GRELAY_LOG_WARN("listener %s: accept while draining failed: %s",
                        a.context->config->name.c_str(), strerror(-fd));
      }
      return;
    }
    accepted(a, fd);
  }
}

void Worker::accepted(Acceptor& a, int fd) {
  followRoutes();  // every session accepted after a DNS move takes its addresses
  metrics::ListenerStats& st = *a.context->stats;
  // A connection the kernel handed over while the drain was cancelling the accept is
  // served like the others (the drain waits for it too); only an abort resets it.
  if (abortStarted_) {
    sockets_->close(fd, true);
    return;
  }
  const config::ListenerConfig& lc = *a.context->config;
  const int64_t global = runtime_.connections.fetch_add(1) + 1;
  const int64_t local = runtime_.listenerConnections[a.index].fetch_add(1) + 1;
  const bool serverFull = global > static_cast<int64_t>(runtime_.config.server.max_connections);
  if (serverFull || (lc.max_connections != 0 && local > static_cast<int64_t>(lc.max_connections))) {
    runtime_.connections.fetch_sub(1);
    runtime_.listenerConnections[a.index].fetch_sub(1);
    st.rejected[serverFull ? metrics::kServerLimit : metrics::kListenerLimit].inc();
    sockets_->close(fd, true);
    return;
  }
  sockets_->setNoDelay(fd);
  auto* s = new Session(*this, *a.context, fd);
  ++a.context->routes->sessions;
  s->setId(nextSessionId_++);
  s->next_ = sessions_;
  if (sessions_ != nullptr) {
    sessions_->prev_ = s;
  }
  sessions_ = s;
  ++sessionCount_;
  s->start();
}

void Worker::sessionDone(Session& s) {
  if (s.prev_ != nullptr) {
    s.prev_->next_ = s.next_;
  } else {
    sessions_ = s.next_;
  }
  if (s.next_ != nullptr) {
    s.next_->prev_ = s.prev_;
  }
  s.prev_ = s.next_ = nullptr;
  --sessionCount_;
  runtime_.connections.fetch_sub(1);
  s.listener().connections->fetch_sub(1);
  finished_.push_back(&s);
}

void Worker::beginDrain() {
  drainStarted_ = true;
  for (auto& a : acceptors_) {
    if (a->armed) {
      ring_->cancel(&a->done, nullptr);
    } else {
      // Paused (max_connection_rate, EMFILE): what waits in its queue is served with the
      // drain too, as when an armed accept is cancelled.
      if (a->fd >= 0 && !abortStarted_) {
        acceptQueued(*a);
      }
      closeAcceptor(*a);
    }
  }
}

void Worker::closeAcceptor(Acceptor& a) {
  if (a.fd < 0) {
    return;
  }
  if (sockets_) {
    sockets_->close(a.fd, false);
  } else {
    ::close(a.fd);  // init() failed before the sockets existed
  }
  a.fd = -1;
  runtime_.openListenSockets.fetch_sub(1);
}

void Worker::abortAll() {
  abortStarted_ = true;
  if (!drainStarted_) {
    beginDrain();
  }
  if (controlArmed_) {
    ring_->cancel(&controlDone_, nullptr);
  }
  for (Session* s = sessions_; s != nullptr;) {
    Session* next = s->next_;
    s->abort();
    s = next;
  }
}

void Worker::waitForBuffers(BufferWaiter& waiter) {
  waiter.nextWaiting_ = nullptr;
  if (waitTail_ != nullptr) {
    waitTail_->nextWaiting_ = &waiter;
  } else {
    waitHead_ = &waiter;
  }
  waitTail_ = &waiter;
  pressureChecked_ = false;
}

void Worker::relayReleasedChunks() {
  // Receivers starving while the relay let go of chunks: mirrors may now hold some alone,
  // so buffer pressure is looked at again after this loop iteration.
  if (waitHead_ != nullptr) {
    pressureChecked_ = false;
  }
}

void Worker::cancelWaitForBuffers(BufferWaiter& waiter) {
  BufferWaiter* prev = nullptr;
  for (BufferWaiter* f = waitHead_; f != nullptr; prev = f, f = f->nextWaiting_) {
    if (f == &waiter) {
      (prev != nullptr ? prev->nextWaiting_ : waitHead_) = f->nextWaiting_;
      if (waitTail_ == f) {
        waitTail_ = prev;
      }
      f->nextWaiting_ = nullptr;
      return;
    }
  }
}

void Worker::afterDispatch() {
  for (Session* s : finished_) {
    WorkerRoutes* routes = s->listener().routes;
    delete s;
    if (--routes->sessions == 0 && routes != routes_.back().get()) {
      pruneRoutes_ = true;  // the last session of older routes
    }
  }
  finished_.clear();
  if (pruneRoutes_) {
    pruneRoutes();
  }
  if (waitHead_ != nullptr && !pressureChecked_ && anyMirrors_) {
    relieveBufferPressure();
  }
  if (buffersFreed_ || waitHead_ != nullptr) {
    buffersFreed_ = false;
    // Each starved waiter needs a buffer to make progress; wake as many as are free (one
    // that still lacks room queues up again at the tail).
    uint32_t budget = pool_->available() + userPool_->available();
    while (waitHead_ != nullptr && budget > 0) {
      BufferWaiter* f = waitHead_;
      waitHead_ = f->nextWaiting_;
      if (waitHead_ == nullptr) {
        waitTail_ = nullptr;
      }
      f->nextWaiting_ = nullptr;
      --budget;
      f->resumeAfterBuffers();
    }
  }
  for (auto& a : acceptors_) {
    if (!a->armed && !drainStarted_ && now_ >= a->retryAt) {
      armAccept(*a);
    }
  }
  for (auto& log : accessLogs_) {
    log->flushIfDue(now_);
  }
  tapDue_ = 0;
  for (auto& t : taps_) {
    uint64_t due = t->flushDue(now_);
    if (due != 0 && (tapDue_ == 0 || due < tapDue_)) {
      tapDue_ = due;
    }
  }
}

void Worker::relieveBufferPressure() {
  // Receives starve while mirrors hold buffers: the primary never waits for a mirror, so
  // cut the mirror connection holding the most chunks that only mirrors still need (if it
  // holds a real share). A pool exhausted by what the relay itself has in flight is
  // waited out: cutting mirrors then would lose their bytes and free nothing.
  pressureChecked_ = true;
  Session* worst = nullptr;
  size_t worstMirror = 0;
  size_t worstChunks = 0;
  for (Session* s = sessions_; s != nullptr; s = s->next_) {
    size_t mirror = 0;
    size_t chunks = s->mirrorHoldingMostAlone(&mirror);
    if (chunks > worstChunks) {
      worst = s;
      worstMirror = mirror;
      worstChunks = chunks;
    }
  }
  if (worst != nullptr && worstChunks >= 2) {
    worst->cutMirror(worstMirror,
                     "held receive buffers the primary needed (buffer_pool exhausted)");
  }
}

void Worker::mirrorTrouble(const ListenerContext& listener, size_t mirrorIndex,
                           const std::string& what) {
  const size_t li = listener.index;
  uint64_t suppressed = 0;
  if (runtime_.mirrorLogs[li][mirrorIndex]->allow(now_, &suppressed)) {
    char more[64] = "";
    if (suppressed > 0) {
      snprintf(more, sizeof(more), " (%llu more cuts not logged in the last minute)",
               static_cast<unsigned long long>(suppressed));
    }
    GRELAY_LOG_WARN("listener %s: mirror %s cut: %s%s", listener.config->name.c_str(),
                    listener.config->mirrors[mirrorIndex].name.c_str(), what.c_str(), more);
  }
}

void Worker::listenerTrouble(const ListenerContext& listener, const std::string& what) {
  const size_t li = listener.index;
  uint64_t suppressed = 0;
  if (runtime_.troubleLogs[li]->allow(now_, &suppressed)) {
    char more[64] = "";
    if (suppressed > 0) {
      snprintf(more, sizeof(more), " (%llu more not logged in the last minute)",
               static_cast<unsigned long long>(suppressed));
    }
    GRELAY_LOG_WARN("listener %s: %s%s", listener.config->name.c_str(), what.c_str(), more);
  }
}

namespace {
// Empty pipes a worker keeps for reuse; more are closed when given back.
constexpr size_t kPipePoolSize = 64;
}  // namespace

int Worker::takePipe(int fds[2]) {
  if (!pipes_.empty()) {
    const Pipe& p = pipes_.back();
    fds[0] = p.fds[0];
    fds[1] = p.fds[1];
    const int capacity = p.capacity;
    pipes_.pop_back();
    return capacity;
  }
  // Two chunks, like the mainline path's back-pressure bound.
  return sockets_->openPipe(fds, 2 * runtime_.config.server.chunk_size);
}

void Worker::givePipe(const int fds[2], int capacity, bool empty) {
  if (empty && pipes_.size() < kPipePoolSize) {
    pipes_.push_back(Pipe{{fds[0], fds[1]}, capacity});
    return;
  }
  sockets_->close(fds[0], false);
  sockets_->close(fds[1], false);
}

uint8_t* Worker::discardBuffer(uint32_t* length) {
  *length = static_cast<uint32_t>(discard_.size());
  return discard_.data();
}

}  // namespace grelay::proxy
