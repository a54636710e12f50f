// The worker's accept loop and drain on a scripted ring.
#include "proxy/worker.h"

#include <gtest/gtest.h>
#include <poll.h>

#include "proxy/log.h"

#include "config/loader.h"
#include "tests/proxy/fake_sockets.h"
#include "tests/proxy/hello_bytes.h"
#include "tests/relay/fake_ring.h"

namespace grelay::proxy {
namespace {

using testing::FakeRing;
using testing::FakeSockets;
using testing::OpKind;

constexpr int kListenFd = 5;

class WorkerTest : public ::testing::Test {
protected:
  static config::Config parse(const std::string& extra, int port = 8000) {
    auto result = config::loadString(
        "[server]\nworkers = 1\n" + extra +
            "\n[upstream.app]\nservers = [\"127.0.0.1:" + std::to_string(port) +
            "\"]\n"
            "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\nupstream = \"app\"\n",
        "test.toml");
    EXPECT_TRUE(result.config) << (result.errors.empty() ? "" : result.errors[0].toString());
    return result.config ? std::move(*result.config) : config::Config{};
  }

  // `app` with servers at `ports` that take one connection each, and sessions that wait
  // up to 10 s for a slot; `listener` adds keys to the listener.
  static config::Config parseQueued(std::vector<int> ports, const std::string& listener = "") {
    std::string servers;
    for (int port : ports) {
      servers += std::string(servers.empty() ? "" : ", ") +
                 "{ address = \"127.0.0.1:" + std::to_string(port) + "\", max_conns = 1 }";
    }
    auto result = config::loadString(
        "[server]\nworkers = 1\n[upstream.app]\nservers = [" + servers +
            "]\nqueue_timeout = \"10s\"\n"
            "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\nupstream = \"app\"\n" +
            listener,
        "test.toml");
    EXPECT_TRUE(result.config) << (result.errors.empty() ? "" : result.errors[0].toString());
    return result.config ? std::move(*result.config) : config::Config{};
  }

  // A DNS move of the running routes to `next`'s addresses, as the server makes it.
  void move(config::Config next) {
    runtime_->setRoutes(moveRoutes(*runtime_->routes(),
                                   std::make_shared<const config::Config>(std::move(next)),
                                   monotonicNanos()));
  }

  void load(const std::string& extra = "") { load(parse(extra)); }

  void load(config::Config cfg) {
    config_ = std::move(cfg);
    ASSERT_FALSE(config_.listeners.empty());
    runtime_ = std::make_unique<Runtime>(config_);
    stats_.listeners.push_back(
        std::make_unique<metrics::ListenerStats>(0, config_.listeners[0].routes.size()));
    worker_ =
        std::make_unique<Worker>(*runtime_, 0, stats_, std::vector<std::vector<int>>{{kListenFd}});
    auto ring = std::make_unique<FakeRing>();
    auto sockets = std::make_unique<FakeSockets>();
    ring_ = ring.get();
    sockets_ = sockets.get();
    worker_->useRing(std::move(ring), std::move(sockets));
    ASSERT_EQ(worker_->init(), 0);
  }

  config::Config config_;
  std::unique_ptr<Runtime> runtime_;
  metrics::WorkerStats stats_;
  std::unique_ptr<Worker> worker_;
  FakeRing* ring_ = nullptr;
  FakeSockets* sockets_ = nullptr;
};

TEST_F(WorkerTest, MultishotAcceptThatEndsWithoutMoreIsRearmed) {
  load();
  auto* accept = ring_->pending(OpKind::Accept, kListenFd);
  ASSERT_NE(accept, nullptr);
  ring_->complete(accept, 50, IORING_CQE_F_MORE);
  EXPECT_EQ(worker_->sessionCount(), 1u);
  EXPECT_EQ(ring_->pendingCount(OpKind::Accept, kListenFd), 1u);
  ring_->complete(accept, 51, 0);  // the kernel ended the multishot
  EXPECT_EQ(worker_->sessionCount(), 2u);
  EXPECT_TRUE(accept->done);
  auto* rearmed = ring_->pending(OpKind::Accept, kListenFd);
  ASSERT_NE(rearmed, nullptr);
  EXPECT_NE(rearmed, accept);
  EXPECT_EQ(stats_.listeners[0]->connections.value(), 2u);
}

TEST_F(WorkerTest, AcceptErrorEmfileRetriesLaterInsteadOfSpinning) {
  load();
  auto* accept = ring_->pending(OpKind::Accept, kListenFd);
  ring_->complete(accept, -EMFILE, 0);
  ASSERT_TRUE(worker_->loopOnce());
  EXPECT_EQ(ring_->pendingCount(OpKind::Accept, kListenFd), 0u);
}

TEST_F(WorkerTest, ConnectionsOverMaxConnectionsAreClosedAtOnceAndCounted) {
  load("max_connections = 1");
  auto* accept = ring_->pending(OpKind::Accept, kListenFd);
  ring_->complete(accept, 50, IORING_CQE_F_MORE);
  ring_->complete(accept, 51, IORING_CQE_F_MORE);
  EXPECT_EQ(worker_->sessionCount(), 1u);
  EXPECT_EQ(stats_.listeners[0]->rejected[metrics::kServerLimit].value(), 1u);  // [server]
  EXPECT_EQ(stats_.listeners[0]->rejected[metrics::kListenerLimit].value(), 0u);
  ASSERT_EQ(sockets_->closed.count(51), 1u);
  EXPECT_TRUE(sockets_->closed.at(51));
}

TEST_F(WorkerTest, DrainStopsAcceptingAndFinishesWhenSessionsAreGone) {
  load();
  auto* accept = ring_->pending(OpKind::Accept, kListenFd);
  ring_->complete(accept, 50, IORING_CQE_F_MORE);
  runtime_->draining = true;
  ring_->complete(ring_->pending(OpKind::Read), 8);  // the control eventfd
  EXPECT_TRUE(accept->cancelRequested);
  ring_->complete(accept, -ECANCELED, 0);
  EXPECT_FALSE(worker_->finished());  // one session still open
  runtime_->aborting = true;
  ring_->complete(ring_->pending(OpKind::Read), 8);
  ring_->completeCancelled();
  ASSERT_TRUE(worker_->loopOnce());
  EXPECT_EQ(worker_->sessionCount(), 0u);
  EXPECT_TRUE(worker_->finished());
  EXPECT_TRUE(sockets_->closed.at(50));  // aborted sessions are reset
}

TEST_F(WorkerTest, ConnectionsAcceptedOrQueuedWhileTheDrainCancelsTheAcceptAreServed) {
  load();
  auto* accept = ring_->pending(OpKind::Accept, kListenFd);
  runtime_->draining = true;
  ring_->complete(ring_->pending(OpKind::Read), 8);  // the control eventfd
  EXPECT_TRUE(accept->cancelRequested);
  // Already accepted by the kernel before the cancel took effect: closing it would reset
  // a client that did nothing wrong (a reload drains the old workers this way).
  ring_->complete(accept, 52, IORING_CQE_F_MORE);
  // Accepts wait exclusively: connections whose wake-up went to the cancelled request
  // would wake nobody else, so the worker takes what is queued once the accept ends.
  sockets_->waiting[kListenFd] = {53, 54};
  EXPECT_EQ(runtime_->openListenSockets.load(), 1);
  ring_->complete(accept, -ECANCELED, 0);
  // Then it lets go of the listening socket: what arrives next goes to the generation
  // that replaced this one, which the reload waits for before it says it is done.
  EXPECT_EQ(runtime_->openListenSockets.load(), 0);
  ASSERT_EQ(sockets_->closed.count(kListenFd), 1u);
  EXPECT_FALSE(sockets_->closed.at(kListenFd));
  EXPECT_EQ(worker_->sessionCount(), 3u);
  EXPECT_TRUE(sockets_->waiting[kListenFd].empty());
  EXPECT_EQ(sockets_->closed.count(52), 0u);
  EXPECT_EQ(sockets_->closed.count(54), 0u);
  EXPECT_EQ(ring_->pendingCount(OpKind::Accept, kListenFd), 0u);  // not re-armed
  EXPECT_FALSE(worker_->finished());
}

TEST_F(WorkerTest, ADnsMoveRoutesNewSessionsAndTheOldRoutesGoWithTheirLastSession) {
  load();
  auto* accept = ring_->pending(OpKind::Accept, kListenFd);
  ring_->complete(accept, 50, IORING_CQE_F_MORE);
  auto* before = ring_->pending(OpKind::Connect);
  ASSERT_NE(before, nullptr);
  EXPECT_EQ(before->offset, 8000u);
  const UpstreamPool* oldPool = runtime_->routes()->upstreams[0].get();

  // The server's name moved (to port 9000 here): the worker picks the routes up before
  // its next accept, without a new ring, sockets or buffers.
  runtime_->setRoutes(makeRoutes(std::make_shared<const config::Config>(parse("", 9000))));
  ASSERT_TRUE(worker_->loopOnce());
  EXPECT_EQ(worker_->routesHeld(), 2u);  // the open session still uses the old ones
  ring_->complete(accept, 51, IORING_CQE_F_MORE);
  EXPECT_EQ(ring_->pendingCount(OpKind::Connect), 2u);
  EXPECT_EQ(oldPool->activeConnections(0), 1);  // the first session's slot, on its pool
  EXPECT_EQ(runtime_->routes()->upstreams[0]->activeConnections(0), 1);  // the second's

  // The first session ends (its server refused): the routes it used go with it.
  ring_->complete(before, -ECONNREFUSED);
  ASSERT_TRUE(worker_->loopOnce());
  EXPECT_EQ(worker_->sessionCount(), 1u);
  EXPECT_EQ(worker_->routesHeld(), 1u);
  auto* after = ring_->pending(OpKind::Connect);
  ASSERT_NE(after, nullptr);
  EXPECT_EQ(after->offset, 9000u);

  // A second move while no session uses the current routes replaces them at once.
  ring_->complete(after, -ECONNREFUSED);
  ASSERT_TRUE(worker_->loopOnce());
  EXPECT_EQ(worker_->sessionCount(), 0u);
  runtime_->setRoutes(makeRoutes(std::make_shared<const config::Config>(parse("", 9001))));
  ASSERT_TRUE(worker_->loopOnce());
  EXPECT_EQ(worker_->routesHeld(), 1u);
  ring_->complete(accept, 52, IORING_CQE_F_MORE);
  ASSERT_NE(ring_->pending(OpKind::Connect), nullptr);
  EXPECT_EQ(ring_->pending(OpKind::Connect)->offset, 9001u);
}

TEST_F(WorkerTest, SessionsWaitingForASlotWhenTheirPoolMovesWaitForTheNewAddressesInOrder) {
  load(parseQueued({8000}));
  auto* accept = ring_->pending(OpKind::Accept, kListenFd);
  ring_->complete(accept, 50, IORING_CQE_F_MORE);  // takes the only slot
  auto* holder = ring_->pending(OpKind::Connect);
  ASSERT_NE(holder, nullptr);
  EXPECT_EQ(holder->offset, 8000u);
  ring_->complete(accept, 51, IORING_CQE_F_MORE);  // both wait for it
  ring_->complete(accept, 52, IORING_CQE_F_MORE);
  ASSERT_TRUE(worker_->loopOnce());
  EXPECT_EQ(ring_->pendingCount(OpKind::Connect), 1u);
  EXPECT_EQ(runtime_->routes()->upstreams[0]->queuedSessions(), 2);

  // The name moved: the old address's slot may never come free (nor should it be used),
  // so the waiters go over to the new pool, the first of them at once.
  move(parseQueued({9000}));
  ASSERT_TRUE(worker_->loopOnce());
  ASSERT_TRUE(worker_->loopOnce());
  ASSERT_EQ(ring_->pendingCount(OpKind::Connect), 2u);
  auto* first = ring_->pending(OpKind::Connect, 101);
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->offset, 9000u);
  const UpstreamPool& fresh = *runtime_->routes()->upstreams[0];
  EXPECT_EQ(fresh.activeConnections(0), 1);
  EXPECT_EQ(fresh.queuedSessions(), 1);  // the second still waits, now for 9000
  EXPECT_EQ(worker_->routesHeld(), 2u);  // the holder stays on the old routes

  // The first one's connect fails, which frees the new server's slot: the second takes it.
  ring_->complete(first, -ECONNREFUSED);
  ASSERT_TRUE(worker_->loopOnce());
  ASSERT_TRUE(worker_->loopOnce());
  auto* second = ring_->pending(OpKind::Connect, 102);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(second->offset, 9000u);
  EXPECT_EQ(fresh.queuedSessions(), 0);

  // The holder ends: the old routes go with it.
  ring_->complete(holder, -ECONNREFUSED);
  ASSERT_TRUE(worker_->loopOnce());
  EXPECT_EQ(worker_->routesHeld(), 1u);
  EXPECT_EQ(worker_->sessionCount(), 1u);
}

TEST_F(WorkerTest, ASessionWaitingAgainAfterAFailedConnectMovesToo) {
  load(parseQueued({8000, 8001}));
  auto* accept = ring_->pending(OpKind::Accept, kListenFd);
  ring_->complete(accept, 50, IORING_CQE_F_MORE);  // holds 8000 (round robin: first)
  ring_->complete(accept, 51, IORING_CQE_F_MORE);  // takes 8001
  ring_->complete(accept, 52, IORING_CQE_F_MORE);  // waits
  auto* second = ring_->pending(OpKind::Connect, 101);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(second->offset, 8001u);
  // 8001 refuses: 51 waits for 8000 (it does not try 8001 again), and 52 takes 8001 ...
  ring_->complete(second, -ECONNREFUSED);
  ASSERT_TRUE(worker_->loopOnce());
  auto* third = ring_->pending(OpKind::Connect, 102);
  ASSERT_NE(third, nullptr);
  EXPECT_EQ(third->offset, 8001u);
  // ... which refuses again: 52 waits again, for 8000, outside the queue on its own timer.
  ring_->complete(third, -ECONNREFUSED);
  ASSERT_TRUE(worker_->loopOnce());
  EXPECT_EQ(ring_->pendingCount(OpKind::Connect), 1u);
  EXPECT_EQ(runtime_->routes()->upstreams[0]->queuedSessions(), 2);

  // Both names moved: neither waits for the old 8000 any longer.
  move(parseQueued({9000, 9001}));
  const uint64_t until = monotonicNanos() + 1'000'000'000;
  while (ring_->pendingCount(OpKind::Connect) < 3 && monotonicNanos() < until) {
    ASSERT_TRUE(worker_->loopOnce());  // (52 looks on its timer: within 5 ms)
  }
  ASSERT_EQ(ring_->pendingCount(OpKind::Connect), 3u);
  for (int fd : {103, 104}) {  // (new sockets)
    auto* moved = ring_->pending(OpKind::Connect, fd);
    ASSERT_NE(moved, nullptr) << fd;
    EXPECT_GE(moved->offset, 9000u) << fd;
  }
  EXPECT_EQ(runtime_->routes()->upstreams[0]->queuedSessions(), 0);
}

TEST_F(WorkerTest, ASessionWaitingAgainIsNotStarvedByYoungerWaiters) {
  load(parseQueued({8000, 8001}));
  auto* accept = ring_->pending(OpKind::Accept, kListenFd);
  ring_->complete(accept, 50, IORING_CQE_F_MORE);  // holds 8000
  ring_->complete(accept, 51, IORING_CQE_F_MORE);  // takes 8001
  ring_->complete(accept, 52, IORING_CQE_F_MORE);  // waits, first
  auto* holder = ring_->pending(OpKind::Connect, 100);
  ASSERT_NE(holder, nullptr);
  // 8001 refuses 51 (which then waits, after 52) and 52, which waits again for 8000
  // alone: aside, older than 51.
  ring_->complete(ring_->pending(OpKind::Connect, 101), -ECONNREFUSED);
  ASSERT_TRUE(worker_->loopOnce());
  ring_->complete(ring_->pending(OpKind::Connect, 102), -ECONNREFUSED);
  ASSERT_TRUE(worker_->loopOnce());
  EXPECT_EQ(runtime_->routes()->upstreams[0]->queuedSessions(), 2);

  // 8000's slot comes free (the holder goes on to 8001): both 51 (the line's oldest) and
  // 52 look at once, 52 first; it gets 8000.
  ring_->complete(holder, -ECONNREFUSED);
  ASSERT_TRUE(worker_->loopOnce());
  ASSERT_TRUE(worker_->loopOnce());
  EXPECT_EQ(runtime_->routes()->upstreams[0]->queuedSessions(), 1);
  auto* taken = ring_->pending(OpKind::Connect, 104);
  ASSERT_NE(taken, nullptr);
  EXPECT_EQ(taken->offset, 8000u);
  ring_->complete(taken, 0);
  EXPECT_NE(ring_->pendingReceive(52), nullptr);  // 52 relays
  EXPECT_EQ(ring_->pendingReceive(51), nullptr);  // 51 still waits
}

TEST_F(WorkerTest, ASessionStillReadingItsProxyHeaderWhenTheNameMovesConnectsToTheNewAddress) {
  load(parseQueued({8000}, "accept_proxy_protocol = true\n"));
  auto* accept = ring_->pending(OpKind::Accept, kListenFd);
  ring_->complete(accept, 50, IORING_CQE_F_MORE);
  auto* poll = ring_->pending(OpKind::Poll, 50);  // no header yet
  ASSERT_NE(poll, nullptr);

  move(parseQueued({9000}, "accept_proxy_protocol = true\n"));
  ASSERT_TRUE(worker_->loopOnce());
  EXPECT_EQ(worker_->routesHeld(), 2u);
  sockets_->incoming[50] = "PROXY TCP4 192.0.2.1 192.0.2.2 40000 80\r\n";
  ring_->complete(poll, POLLIN);
  auto* connect = ring_->pending(OpKind::Connect);
  ASSERT_NE(connect, nullptr);
  EXPECT_EQ(connect->offset, 9000u);  // nothing was connected: it goes where new ones go
  ASSERT_TRUE(worker_->loopOnce());
  EXPECT_EQ(worker_->routesHeld(), 1u);  // and the old routes have no session left
}

TEST_F(WorkerTest, ASessionReadingItsClientHelloWhenTheRoutesPoolMovesConnectsToTheNewAddress) {
  const std::string route =
      "[[listener.route]]\nsni = [\"api.example.test\"]\nupstream = \"api\"\n";
  auto withApi = [&](int api) {
    auto result = config::loadString(
        "[server]\nworkers = 1\n[upstream.app]\nservers = [\"127.0.0.1:8000\"]\n"
        "[upstream.api]\nservers = [\"127.0.0.1:" +
            std::to_string(api) +
            "\"]\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n"
            "upstream = \"app\"\n" +
            route,
        "test.toml");
    EXPECT_TRUE(result.config) << (result.errors.empty() ? "" : result.errors[0].toString());
    return result.config ? std::move(*result.config) : config::Config{};
  };
  load(withApi(8100));
  const std::string hello = testing::clientHelloFor("api.example.test");
  auto* accept = ring_->pending(OpKind::Accept, kListenFd);
  sockets_->incoming[50] = hello.substr(0, 3);
  ring_->complete(accept, 50, IORING_CQE_F_MORE);
  auto* poll = ring_->pending(OpKind::Poll, 50);  // the name is not there yet
  ASSERT_NE(poll, nullptr);

  move(withApi(9100));
  ASSERT_TRUE(worker_->loopOnce());
  EXPECT_EQ(worker_->routesHeld(), 2u);
  sockets_->incoming[50] = hello;
  ring_->complete(poll, POLLIN);
  auto* connect = ring_->pending(OpKind::Connect);
  ASSERT_NE(connect, nullptr);
  EXPECT_EQ(connect->offset, 9100u);  // the route's pool as it is now
  // Another name: the listener's own pool, which did not move.
  sockets_->incoming[51] = testing::clientHelloFor("www.example.test");
  ring_->complete(accept, 51, IORING_CQE_F_MORE);
  connect = ring_->pending(OpKind::Connect, 101);
  ASSERT_NE(connect, nullptr);
  EXPECT_EQ(connect->offset, 8000u);
  ASSERT_TRUE(worker_->loopOnce());
  EXPECT_EQ(worker_->routesHeld(), 1u);
}

// Two pools and two mirrors; `app0` and `mirror1` are the ports a DNS move may change.
std::shared_ptr<const config::Config> routed(int app0, int mirror1) {
  auto result = config::loadString(
      "[upstream.app]\nservers = [\"127.0.0.1:" + std::to_string(app0) +
          "\", \"127.0.0.1:8001\"]\n"
          "[upstream.other]\nservers = [\"127.0.0.1:7000\"]\n"
          "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\nupstream = \"app\"\n"
          "[[listener.mirror]]\nname = \"m0\"\naddress = \"127.0.0.1:6000\"\n"
          "[[listener.mirror]]\nname = \"m1\"\naddress = \"127.0.0.1:" +
          std::to_string(mirror1) + "\"\n",
      "test.toml");
  EXPECT_TRUE(result.config) << (result.errors.empty() ? "" : result.errors[0].toString());
  return std::make_shared<const config::Config>(std::move(*result.config));
}

TEST(RoutesTest, AMovedServerKeepsItsLabelsTotalsGoing) {
  const uint64_t now = 5'000'000'000ull;
  std::shared_ptr<const Routes> was = makeRoutes(routed(8000, 6001));
  UpstreamPool& app = *was->upstreams[0];
  app.sessionConnected(0);
  app.sessionConnected(0);
  app.sessionConnectFailed(0);
  app.sessionConnected(1);
  // Server "0" moves to another address: the same label, so its totals go on (a counter
  // that dropped to 0 would read as a reset); "1" kept its address and its counters.
  std::shared_ptr<const Routes> moved = moveRoutes(*was, routed(8100, 6001), now);
  UpstreamPool& fresh = *moved->upstreams[0];
  EXPECT_EQ(fresh.serverSessions(0), 2u);
  EXPECT_EQ(fresh.serverConnectFailures(0), 1u);
  EXPECT_EQ(fresh.activeConnections(0), 0);  // connections are the address's own
  EXPECT_EQ(fresh.serverSessions(1), 1u);
  fresh.sessionConnected(0);
  EXPECT_EQ(fresh.serverSessions(0), 3u);
  EXPECT_EQ(app.serverSessions(0), 2u);  // (the old address's counters are apart)
}

TEST(RoutesTest, AMoveReplacesOnlyWhatMovedAndSharesHealthAndCounts) {
  const uint64_t now = 5'000'000'000ull;
  std::shared_ptr<const Routes> was = makeRoutes(routed(8000, 6001));
  UpstreamPool& app = *was->upstreams[0];
  ASSERT_TRUE(app.acquire(1));
  EXPECT_TRUE(app.connectFailed(1, now));  // max_fails = 1: 127.0.0.1:8001 is down
  was->mirrorHealth[0][0]->connectFailed(now, 1, std::chrono::seconds(10));

  std::shared_ptr<const Routes> moved = moveRoutes(*was, routed(8100, 6101), now);
  // `other` and mirror m0 did not move: the very same pool and health.
  EXPECT_EQ(moved->upstreams[1], was->upstreams[1]);
  EXPECT_EQ(moved->mirrorHealth[0][0], was->mirrorHealth[0][0]);
  EXPECT_TRUE(moved->mirrorHealth[0][0]->down(now));
  // `app` has a server at a new address: a new pool for the new address set, which
  // keeps the marking and the open-connection count of the server it shares.
  ASSERT_NE(moved->upstreams[0], was->upstreams[0]);
  UpstreamPool& fresh = *moved->upstreams[0];
  EXPECT_EQ(fresh.server(0).text, "127.0.0.1:8100");
  EXPECT_TRUE(fresh.down(1, now));
  EXPECT_FALSE(fresh.down(0, now));
  EXPECT_EQ(fresh.activeConnections(1), 1);
  app.release(1);  // the session on the old routes ends: one count for both
  EXPECT_EQ(fresh.activeConnections(1), 0);
  // One health too: a connect that started on the old routes and succeeds, or a health
  // check of the old pool that was under way, brings the server back in the new pool.
  app.connectSucceeded(1, now + 1);
  EXPECT_FALSE(fresh.down(1, now + 1));
  EXPECT_EQ(fresh.slotBoard(), app.slotBoard());  // waiters keep their turns
  // Mirror m1 moved: a new health.
  EXPECT_NE(moved->mirrorHealth[0][1], was->mirrorHealth[0][1]);
  EXPECT_EQ(moved->config->listeners[0].mirrors[1].address.text, "127.0.0.1:6101");

  // The old routes go (their last session ended); the pool they shared with the new ones
  // still reads the configuration it was made from.
  was.reset();
  EXPECT_EQ(moved->upstreams[1]->config().name, "other");
  EXPECT_EQ(moved->upstreams[1]->server(0).text, "127.0.0.1:7000");
}

}  // namespace
}  // namespace grelay::proxy
