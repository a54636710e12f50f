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
  void load(const std::string& extra = "") {
    auto result = config::loadString(
        "[server]\nworkers = 1\n" + extra +
            "\n[upstream.app]\nservers = [\"127.0.0.1:8000\"]\n"
            "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\nupstream = \"app\"\n",
        "test.toml");
    ASSERT_TRUE(result.config) << (result.errors.empty() ? "" : result.errors[0].toString());
    config_ = std::move(*result.config);
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

}  // namespace
}  // namespace grelay::proxy
