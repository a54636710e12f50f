// A worker thread: its own ring, receive buffers, timers and sessions, and one
// SO_REUSEPORT listening socket per listener. Workers share nothing on the data path
// but the upstream pools' counters and the connection limits.
#pragma once

#include <atomic>
#include <cstdint>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "config/config.h"
#include "metrics/stats.h"
#include "proxy/client_limiter.h"
#include "proxy/log.h"
#include "proxy/rate_limiter.h"
#include "proxy/session.h"
#include "proxy/slot_queue.h"
#include "proxy/sockets.h"
#include "proxy/timer.h"
#include "proxy/tls_context.h"
#include "proxy/upstream.h"
#include "relay/buffer.h"
#include "relay/ring.h"

namespace grelay::proxy {

// Where a generation's new sessions connect: its configuration as the DNS moves since it
// started left it (addresses only), with an upstream pool and a mirror's health per
// address set. A move replaces it in place (Runtime::setRoutes); a session keeps the
// routes it started with until it ends.
struct Routes {
  std::shared_ptr<const config::Config> config;
  std::vector<std::shared_ptr<UpstreamPool>> upstreams;                // config order
  std::vector<std::vector<std::shared_ptr<PeerHealth>>> mirrorHealth;  // [listener][mirror]
};

// Routes for `cfg`: a new pool per upstream and a new health per mirror.
std::shared_ptr<Routes> makeRoutes(std::shared_ptr<const config::Config> cfg);
// The routes after a DNS move to `next` (the same configuration but addresses): a pool
// whose addresses did not move is the same pool, one whose did is new and shares the
// health and open-connection counts of the servers it keeps, and the order of the
// sessions waiting for a slot (UpstreamPool::followMove); a mirror keeps its health unless
// it moved. `now`: monotonic ns.
std::shared_ptr<Routes> moveRoutes(const Routes& was, std::shared_ptr<const config::Config> next,
                                   uint64_t now);

// State shared by all workers (read-mostly).
struct Runtime {
  explicit Runtime(const config::Config& cfg);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // The routes new sessions take (any thread).
  std::shared_ptr<const Routes> routes() const;
  // In place of the routes new sessions take: a DNS move. Workers pick them up before
  // their next accept (wake them to make that prompt).
  void setRoutes(std::shared_ptr<const Routes> next);
  uint64_t routesVersion() const { return routesVersion_.load(std::memory_order_acquire); }

  // What the generation started with: listeners, [server] and everything but addresses
  // (which routes() has as they are now). Outlives the runtime.
  const config::Config& config;
  config::RelayPath path = config::RelayPath::Mainline;  // resolved, never Auto
  bool splice = true;  // [server] splice, and the kernel lets us (Features::splice)
  std::atomic<int64_t> connections{0};
  std::unique_ptr<std::atomic<int64_t>[]> listenerConnections;
  // [listener]: a reload's new generation accepts from its sockets now (set before the
  // drain), so what waits in their queues is not this generation's to take.
  std::unique_ptr<std::atomic<bool>[]> listenerHandedOver;
  std::vector<std::vector<std::unique_ptr<LogLimiter>>> mirrorLogs;  // [listener][mirror]
  std::vector<std::unique_ptr<LogLimiter>> troubleLogs;         // [listener]: TLS, PROXY protocol
  std::vector<std::shared_ptr<ClientLimiter>> clientLimits;     // [listener]; nullptr = no limit
  std::vector<std::shared_ptr<ClientRateLimiter>> clientRates;  // [listener]; nullptr = none
  std::vector<std::shared_ptr<RateLimiter>> acceptRates;        // [listener]; nullptr = no limit
  const TlsContexts* tls = nullptr;
  std::vector<int> accessLogFds;  // [listener]: the access log (O_APPEND, shared) or -1
  LogLimiter acceptErrorLog;
  uint32_t workers = 1;
  std::atomic<bool> draining{false};
  std::atomic<bool> aborting{false};
  // Listening sockets the workers still accept from. Once a draining generation's count
  // is 0, every new connection goes to the generation that replaced it.
  std::atomic<int> openListenSockets{0};
  // [worker]: its control eventfd (set as the workers are made, before any runs), written
  // to wake it: a slot freed on another worker is its oldest waiter's.
  std::vector<int> wakeFds;
  void wakeWorker(uint32_t index) const;

private:
  mutable std::mutex routesMutex_;
  std::shared_ptr<const Routes> routes_;
  std::atomic<uint64_t> routesVersion_{0};
};

// A tap file opened for a worker (fd -1 = the listener has no tap).
struct TapFile {
  int fd = -1;
  std::string path;
};

// Routes as one worker uses them: a context per acceptor and a queue of the sessions
// waiting for a slot (queue_timeout) per upstream pool, whichever listener they came in on.
struct WorkerRoutes {
  std::shared_ptr<const Routes> routes;
  uint64_t version = 0;
  // [upstream]; the same queue as the older routes' while the pool is the same.
  std::vector<std::shared_ptr<SlotQueue>> slotQueues;
  // Per acceptor: its listener's own context, then one per route of the listener.
  std::vector<std::unique_ptr<ListenerContext>> contexts;
  size_t sessions = 0;  // open sessions that use them
};

class Worker final : public SessionHost, public relay::BufferListener {
public:
  // `listenFds[i]` are this worker's sockets for listener i (usually one; more after a
  // reload lowered the worker count, whose sockets are kept rather than closed with what
  // waits in their accept queues) and `taps[i]` its tap file, if any (the worker closes
  // them).
  Worker(Runtime& runtime, uint32_t index, metrics::WorkerStats& stats,
         std::vector<std::vector<int>> listenFds, std::vector<TapFile> taps = {});
  ~Worker();

  // The thread body. Reports 0 or -errno through `ready` once the ring exists.
  void run(std::promise<int>& ready);
  // From any thread: stop accepting and let sessions finish (Runtime::draining) or reset
  // what is left (Runtime::aborting).
  void wake();

  // SessionHost
  relay::Ring& ring() override { return *ring_; }
  Sockets& sockets() override { return *sockets_; }
  relay::ProvidedBufferPool& pool() override { return *pool_; }
  relay::UserBufferPool& userPool() override { return *userPool_; }
  TimerQueue& timers() override { return timers_; }
  // Read fresh (vDSO, ~20 ns): completions are dispatched after the ring's wait, and a
  // deadline set from a value cached before the wait would fire early.
  uint64_t now() override { return now_ = monotonicNanos(); }
  void waitForBuffers(BufferWaiter& waiter) override;
  void cancelWaitForBuffers(BufferWaiter& waiter) override;
  void relayReleasedChunks() override;
  void sessionDone(Session& session) override;
  void mirrorTrouble(const ListenerContext& listener, size_t mirrorIndex,
                     const std::string& what) override;
  uint8_t* discardBuffer(uint32_t* length) override;
  uint8_t pathIndex() const override { return pathIndex_; }
  uint32_t workerIndex() const override { return index_; }
  void listenerTrouble(const ListenerContext& listener, const std::string& what) override;
  int takePipe(int fds[2]) override;
  void givePipe(const int fds[2], int capacity, bool empty) override;
  ListenerContext* newerContext(ListenerContext& current) override;

  // BufferListener (both pools)
  void onBuffersAvailable() noexcept override { buffersFreed_ = true; }

  // run() = init() + loopOnce() until finished(); split for tests driving a fake ring.
  // init() returns 0 or -errno; loopOnce() false on a fatal ring error.
  int init();
  bool loopOnce();
  bool finished() const;
  // For tests: replace the ring and sockets before init() (init() then keeps them).
  void useRing(relay::RingPtr ring, std::unique_ptr<Sockets> sockets);
  size_t sessionCount() const { return sessionCount_; }
  // For tests: how many routes the worker holds (the newest and those sessions still use).
  size_t routesHeld() const { return routes_.size(); }

private:
  struct Acceptor {
    Acceptor(Worker& w, size_t i) : worker(w), index(i), done(*this) {}
    void onAccept(int32_t res, uint32_t flags) noexcept;
    Worker& worker;
    size_t index;
    int fd = -1;
    bool armed = false;
    uint64_t retryAt = 0;                // re-arm no earlier than this after EMFILE and the like
    RateLimiter* rate = nullptr;         // max_connection_rate: one accept per token
    bool ratePaused = false;             // waiting for a token (counted once per pause)
    ListenerContext* context = nullptr;  // in the newest routes_
    relay::BoundCompletion<Acceptor, &Acceptor::onAccept> done;
  };

  // Fills `context`'s fields that come from the routes.
  // Points `context` (its `use` set) at the pool, queue and TLS context of its route.
  void route(ListenerContext& context, size_t listener, WorkerRoutes& routes) const;
  // After a listener's own context in `routes`: one context per route of the listener.
  void addRouteContexts(ListenerContext& own, WorkerRoutes& routes);
  // This worker's queue of the sessions waiting for a slot of `pool`.
  std::shared_ptr<SlotQueue> makeSlotQueue(const UpstreamPool& pool);
  // If Runtime::routes() changed (a DNS move), new sessions take the new routes (one
  // atomic load when not).
  void followRoutes();
  // After a move: the sessions waiting for a slot of a pool it replaced wait for the new
  // pool's (Session::moveToRoutes).
  void moveWaiters();
  // Drops older routes no session uses any more.
  void pruneRoutes();
  void onControl(int32_t res, uint32_t flags) noexcept;
  void armControl();
  void armAccept(Acceptor& acceptor);
  void accepted(Acceptor& acceptor, int fd);
  void acceptQueued(Acceptor& acceptor);
  void closeAcceptor(Acceptor& acceptor);
  void beginDrain();
  void abortAll();
  void afterDispatch();
  void relieveBufferPressure();

  Runtime& runtime_;
  const uint32_t index_;
  metrics::WorkerStats& stats_;
  uint8_t pathIndex_ = metrics::kMainlinePath;
  relay::RingPtr ring_;
  std::unique_ptr<Sockets> sockets_;
  std::unique_ptr<relay::ProvidedBufferPool> pool_;
  std::unique_ptr<relay::UserBufferPool> userPool_;
  TimerQueue timers_;
  uint64_t now_ = 0;
  std::vector<std::unique_ptr<Acceptor>> acceptors_;
  // The routes this worker's sessions use, the newest (new sessions') last; an older one
  // goes when its last session does. Outlive the sessions (deleted in ~Worker's body).
  std::vector<std::unique_ptr<WorkerRoutes>> routes_;
  bool pruneRoutes_ = false;  // some older routes lost their last session
  std::vector<TapFile> tapFiles_;
  std::vector<std::unique_ptr<TapWriter>> taps_;
  std::vector<std::unique_ptr<AccessLog>> accessLogs_;
  int controlFd_ = -1;
  uint64_t controlValue_ = 0;
  bool controlArmed_ = false;
  bool drainStarted_ = false;
  bool abortStarted_ = false;
  relay::BoundCompletion<Worker, &Worker::onControl> controlDone_{*this};

  Session* sessions_ = nullptr;  // intrusive list of live sessions
  size_t sessionCount_ = 0;
  uint64_t nextSessionId_ = 1;
  std::vector<Session*> finished_;  // deleted after the current batch of completions

  BufferWaiter* waitHead_ = nullptr;  // starved of buffers (-ENOBUFS, copy path), FIFO
  BufferWaiter* waitTail_ = nullptr;
  bool buffersFreed_ = false;
  uint64_t tapDue_ = 0;  // when the taps' oldest staged chunks must be written
  bool pressureChecked_ = false;
  bool anyMirrors_ = false;  // some listener has mirrors (else buffer pressure is waited out)

  std::vector<uint8_t> discard_;

  // Empty pipes for splicing flows; a flow holds one only while bytes pass through it.
  struct Pipe {
    int fds[2];
    int capacity;
  };
  std::vector<Pipe> pipes_;
};

}  // namespace grelay::proxy
