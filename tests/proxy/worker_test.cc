// The worker's accept loop and drain on a scripted ring.
#include "proxy/worker.h"

#include <gtest/gtest.h>

#include "config/loader.h"
#include "tests/proxy/fake_sockets.h"
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

  void load(const std::string& extra = "") {
    config_ = parse(extra);
    ASSERT_FALSE(config_.listeners.empty());
    runtime_ = std::make_unique<Runtime>(config_);
    stats_.listeners.push_back(std::make_unique<metrics::ListenerStats>(0));
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

TEST(RoutesTest, AMoveReplacesOnlyWhatMovedAndCarriesHealthAndCountsOver) {
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
