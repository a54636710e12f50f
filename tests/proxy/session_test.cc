// Session logic on a scripted ring: every completion a test delivers is one the kernel
// could deliver, including the awkward ones (-EAGAIN, -ENOBUFS, short sends, resets).
#include "proxy/session.h"

#include <gtest/gtest.h>
#include <poll.h>

#include <map>
#include <set>

#include "config/loader.h"
#include "tests/proxy/fake_sockets.h"
#include "tests/proxy/hello_bytes.h"
#include "tests/relay/fake_ring.h"

namespace grelay::proxy {
namespace {

using testing::FakeOp;
using testing::FakeRing;
using testing::FakeSockets;
using testing::OpKind;

constexpr int kClientFd = 7;
constexpr uint32_t kChunk = 4096;

class FakeHost final : public SessionHost {
public:
  FakeHost() {
    int err = 0;
    pool_ = std::make_unique<relay::ProvidedBufferPool>(ring_.registerBuffers(0, 16, kChunk, &err));
  }
  relay::Ring& ring() override { return ring_; }
  Sockets& sockets() override { return sockets_; }
  relay::ProvidedBufferPool& pool() override { return *pool_; }
  relay::UserBufferPool& userPool() override { return userPool_; }
  void listenerTrouble(const ListenerContext&, const std::string& what) override {
    troubles.push_back(what);
  }
  TimerQueue& timers() override { return timers_; }
  uint64_t now() override { return now_; }
  void waitForBuffers(BufferWaiter& w) override { waiting.insert(&w); }
  void cancelWaitForBuffers(BufferWaiter& w) override { waiting.erase(&w); }
  void relayReleasedChunks() override { ++relayReleases; }
  void sessionDone(Session&) override { ++done; }
  void mirrorTrouble(const ListenerContext&, size_t index, const std::string& what) override {
    troubles.push_back(std::to_string(index) + ": " + what);
  }
  uint8_t* discardBuffer(uint32_t* len) override {
    *len = sizeof(discard_);
    return discard_;
  }
  uint8_t pathIndex() const override { return path; }
  uint32_t workerIndex() const override { return 0; }
  int takePipe(int fds[2]) override {
    if (pipeCapacity <= 0) {
      return -EMFILE;
    }
    fds[0] = sockets_.nextFd++;
    fds[1] = sockets_.nextFd++;
    ++pipesTaken;
    return pipeCapacity;
  }
  void givePipe(const int[2], int, bool empty) override { pipesGiven.push_back(empty); }
  ListenerContext* newerContext(ListenerContext&) override { return nullptr; }

  void advance(uint64_t nanos) {
    now_ += nanos;
    timers_.expire(now_);
  }

  FakeRing ring_;
  FakeSockets sockets_;
  std::unique_ptr<relay::ProvidedBufferPool> pool_;
  relay::UserBufferPool userPool_{kChunk, 16};
  TimerQueue timers_;
  uint64_t now_ = 1'000'000'000;
  std::set<BufferWaiter*> waiting;
  int done = 0;
  int relayReleases = 0;
  int pipeCapacity = 0;  // > 0: takePipe() hands out pipes of this size
  int pipesTaken = 0;
  std::vector<bool> pipesGiven;  // empty? per givePipe()
  std::vector<std::string> troubles;
  uint8_t discard_[256];
  uint8_t path = metrics::kMainlinePath;
};

config::Address address(const char* text) {
  auto a = config::parseAddress(text);
  EXPECT_TRUE(a.has_value()) << text;
  return *a;
}

// An IPv4 source_address (port 0), as the loader makes it.
config::Address sourceAddress(const char* ip) {
  config::Address a;
  auto& v4 = reinterpret_cast<sockaddr_in&>(a.storage);
  v4.sin_family = AF_INET;
  EXPECT_EQ(inet_pton(AF_INET, ip, &v4.sin_addr), 1) << ip;
  a.length = sizeof(sockaddr_in);
  a.text = ip;
  return a;
}

class SessionTest : public ::testing::Test {
protected:
  void SetUp() override { configure(0); }

  void configure(size_t mirrors, uint64_t maxLag = 4 * kChunk, size_t servers = 1) {
    upstreamConfig_.name = "app";
    upstreamConfig_.servers.clear();
    for (size_t i = 0; i < servers; ++i) {
      upstreamConfig_.servers.push_back(
          {address(("127.0.0.1:" + std::to_string(8000 + i)).c_str())});
    }
    listenerConfig_.name = "web";
    listenerConfig_.connect_timeout = std::chrono::milliseconds(5000);
    listenerConfig_.idle_timeout = std::chrono::milliseconds(60000);
    listenerConfig_.mirrors.clear();
    for (size_t i = 0; i < mirrors; ++i) {
      config::MirrorConfig m;
      m.name = "m" + std::to_string(i);
      m.address = address(("127.0.0.1:" + std::to_string(9000 + i)).c_str());
      m.max_lag = maxLag;
      listenerConfig_.mirrors.push_back(m);
    }
    pool_ = std::make_unique<UpstreamPool>(upstreamConfig_);
    stats_ = std::make_unique<metrics::ListenerStats>(mirrors);
    context_.config = &listenerConfig_;
    context_.upstream = pool_.get();
    context_.stats = stats_.get();
    context_.chunkSize = kChunk;
    context_.slotQueue = &slotQueue_;
  }

  // One server with max_conns = 1 whose slot another session holds, and a queue_timeout
  // of 100 ms: the next session waits.
  void fillTheOnlyServer(size_t mirrors = 0) {
    configure(mirrors, 4 * kChunk, 1);
    upstreamConfig_.servers[0].max_conns = 1;
    upstreamConfig_.queue_timeout = std::chrono::milliseconds(100);
    ASSERT_TRUE(pool_->acquire(0));
  }

  // Two servers with max_conns = 1 whose slots other sessions hold, and a queue_timeout
  // of 100 ms: the next sessions wait.
  void fillBothServers() {
    configure(0, 4 * kChunk, 2);
    upstreamConfig_.servers[0].max_conns = 1;
    upstreamConfig_.servers[1].max_conns = 1;
    upstreamConfig_.queue_timeout = std::chrono::milliseconds(100);
    ASSERT_TRUE(pool_->acquire(0));
    ASSERT_TRUE(pool_->acquire(1));
  }

  // Starts a session and connects its primary (fd 100 + mirrors first).
  Session& startConnected() {
    session_ = std::make_unique<Session>(host_, context_, kClientFd);
    session_->start();
    FakeOp* connect = host_.ring_.pending(OpKind::Connect, primaryFd());
    EXPECT_NE(connect, nullptr);
    host_.ring_.complete(connect, 0);
    return *session_;
  }
  int primaryFd() const {
    return 100 + static_cast<int>(listenerConfig_.mirrors.size()) - skippedMirrors_;
  }
  FakeRing& ring() { return host_.ring_; }

  FakeHost host_;
  config::UpstreamConfig upstreamConfig_;
  config::ListenerConfig listenerConfig_;
  std::unique_ptr<UpstreamPool> pool_;
  std::unique_ptr<metrics::ListenerStats> stats_;
  SlotQueue slotQueue_;
  ListenerContext context_;
  std::unique_ptr<Session> session_;
  int skippedMirrors_ = 0;  // mirrors marked down: no socket, so no fd before the primary's
};

TEST_F(SessionTest, SendsTheReceivedBufferItselfAndRecyclesItAfterTheSend) {
  startConnected();
  FakeOp* recv = ring().pendingReceive(kClientFd);
  ASSERT_NE(recv, nullptr);
  ring().receive(recv, "hello");
  FakeOp* send = ring().pending(OpKind::Send, primaryFd());
  ASSERT_NE(send, nullptr);
  // Zero copy in userspace: the send points into the provided buffer the kernel filled.
  EXPECT_EQ(send->buf, ring().buffers()->address(0));
  EXPECT_EQ(send->len, 5u);
  EXPECT_EQ(std::string(static_cast<const char*>(send->buf), 5), "hello");
  EXPECT_EQ(ring().buffers()->recycled(), 0u);
  ring().complete(send, 5);
  EXPECT_EQ(ring().buffers()->recycled(), 1u);
  EXPECT_EQ(stats_->receivedBytes[metrics::kRequest].value(), 5u);
  EXPECT_EQ(stats_->upstreams[0].sentBytes.value(), 5u);
  EXPECT_EQ(stats_->chunks[metrics::kMainlinePath].value(), 1u);
}

TEST_F(SessionTest, ShortSendContinuesWithTheRest) {
  startConnected();
  ring().receive(ring().pendingReceive(kClientFd), "0123456789");
  FakeOp* send = ring().pending(OpKind::Send, primaryFd());
  ring().complete(send, 4);
  FakeOp* rest = ring().pending(OpKind::Send, primaryFd());
  ASSERT_NE(rest, nullptr);
  EXPECT_EQ(std::string(static_cast<const char*>(rest->buf), rest->len), "456789");
  EXPECT_EQ(ring().buffers()->recycled(), 0u);
  ring().complete(rest, 6);
  EXPECT_EQ(ring().buffers()->recycled(), 1u);
}

TEST_F(SessionTest, OneSendInFlightPerSocketAndOrderKept) {
  startConnected();
  ring().receive(ring().pendingReceive(kClientFd), "first");
  ring().receive(ring().pendingReceive(kClientFd), "second");
  EXPECT_EQ(ring().pendingCount(OpKind::Send, primaryFd()), 1u);
  FakeOp* send = ring().pending(OpKind::Send, primaryFd());
  EXPECT_EQ(std::string(static_cast<const char*>(send->buf), send->len), "first");
  ring().complete(send, 5);
  send = ring().pending(OpKind::Send, primaryFd());
  EXPECT_EQ(std::string(static_cast<const char*>(send->buf), send->len), "second");
}

TEST_F(SessionTest, MultishotReceiveStaysArmedAndBackPressureCancelsIt) {
  startConnected();
  FakeOp* recv = ring().pending(OpKind::RecvMultishot, kClientFd);
  ASSERT_NE(recv, nullptr);
  const std::string full(kChunk, 'm');
  ring().receive(recv, full, true);
  EXPECT_EQ(ring().pendingReceives(kClientFd), 1u);  // the same request, still armed
  EXPECT_FALSE(recv->cancelRequested);
  ring().receive(recv, full, true);  // two chunks unsent toward the primary
  EXPECT_TRUE(recv->cancelRequested);
  // A chunk that raced with the cancel is still delivered, in order.
  ring().receive(recv, "late", true);
  ring().complete(recv, -ECANCELED);
  EXPECT_EQ(ring().pendingReceives(kClientFd), 0u);  // paused
  ring().complete(ring().pending(OpKind::Send, primaryFd()), static_cast<int32_t>(kChunk));
  ring().complete(ring().pending(OpKind::Send, primaryFd()), static_cast<int32_t>(kChunk));
  FakeOp* last = ring().pending(OpKind::Send, primaryFd());
  ASSERT_NE(last, nullptr);
  EXPECT_EQ(std::string(static_cast<const char*>(last->buf), last->len), "late");
  EXPECT_EQ(ring().pendingReceives(kClientFd), 1u);  // resumed: a new multishot receive
}

TEST_F(SessionTest, EagainOnReceiveRearms) {
  startConnected();
  ring().complete(ring().pendingReceive(kClientFd), -EAGAIN);
  EXPECT_EQ(ring().pendingReceives(kClientFd), 1u);
}

TEST_F(SessionTest, EnobufsWaitsForBuffersThenResumes) {
  startConnected();
  ring().complete(ring().pendingReceive(kClientFd), -ENOBUFS);
  EXPECT_EQ(ring().pendingReceives(kClientFd), 0u);
  ASSERT_EQ(host_.waiting.size(), 1u);
  BufferWaiter* flow = *host_.waiting.begin();
  host_.waiting.clear();
  flow->resumeAfterBuffers();
  EXPECT_EQ(ring().pendingReceives(kClientFd), 1u);
}

TEST_F(SessionTest, BackPressurePausesAtTwoUnsentChunksAndResumesWhenDrained) {
  startConnected();
  const std::string full(kChunk, 'x');
  ring().receive(ring().pendingReceive(kClientFd), full);
  ring().receive(ring().pendingReceive(kClientFd), full);
  // Two chunks unsent toward a slow primary: stop reading the client.
  EXPECT_EQ(ring().pendingReceives(kClientFd), 0u);
  ring().complete(ring().pending(OpKind::Send, primaryFd()), static_cast<int32_t>(kChunk));
  EXPECT_EQ(ring().pendingReceives(kClientFd), 1u);
}

TEST_F(SessionTest, EofBecomesShutdownOnlyAfterTheQueueDrains) {
  startConnected();
  ring().receive(ring().pendingReceive(kClientFd), "bye");
  ring().complete(ring().pendingReceive(kClientFd), 0);
  EXPECT_TRUE(host_.sockets_.shutdowns.empty());
  ring().complete(ring().pending(OpKind::Send, primaryFd()), 3);
  ASSERT_EQ(host_.sockets_.shutdowns.size(), 1u);
  EXPECT_EQ(host_.sockets_.shutdowns[0], primaryFd());
  // The response direction still flows after the request half-closed.
  EXPECT_EQ(ring().pendingReceives(primaryFd()), 1u);
  EXPECT_EQ(host_.done, 0);
}

TEST_F(SessionTest, BothDirectionsEndedClosesGracefullyAndFreesTheSession) {
  startConnected();
  ring().complete(ring().pendingReceive(kClientFd), 0);
  ring().complete(ring().pendingReceive(primaryFd()), 0);
  EXPECT_EQ(host_.done, 1);
  EXPECT_FALSE(host_.sockets_.closed.at(kClientFd));
  EXPECT_FALSE(host_.sockets_.closed.at(primaryFd()));
  EXPECT_EQ(stats_->active.value(), 0);
}

TEST_F(SessionTest, ClientResetResetsThePrimaryAfterItsSendCompletes) {
  startConnected();
  ring().receive(ring().pendingReceive(kClientFd), "data");
  FakeOp* send = ring().pending(OpKind::Send, primaryFd());
  ring().complete(ring().pendingReceive(kClientFd), -ECONNRESET);
  // The send still reads its buffer: nothing is closed or recycled until it completes.
  EXPECT_TRUE(send->cancelRequested);
  EXPECT_EQ(host_.sockets_.closed.count(primaryFd()), 0u);
  EXPECT_EQ(ring().buffers()->recycled(), 0u);
  ring().completeCancelled();
  EXPECT_TRUE(host_.sockets_.closed.at(primaryFd()));  // reset
  EXPECT_EQ(ring().buffers()->recycled(), 1u);
  EXPECT_EQ(host_.done, 1);
  EXPECT_EQ(stats_->resets.value(), 1u);
}

TEST_F(SessionTest, UpstreamSendFailureResetsTheClient) {
  startConnected();
  ring().receive(ring().pendingReceive(kClientFd), "data");
  ring().complete(ring().pending(OpKind::Send, primaryFd()), -EPIPE);
  ring().completeCancelled();
  EXPECT_TRUE(host_.sockets_.closed.at(kClientFd));
  EXPECT_EQ(host_.done, 1);
}

TEST_F(SessionTest, ConnectFailureTriesTheNextServerThenResetsTheClient) {
  configure(0, 4 * kChunk, 2);
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  ring().complete(ring().pending(OpKind::Connect, 100), -ECONNREFUSED);
  FakeOp* second = ring().pending(OpKind::Connect, 101);
  ASSERT_NE(second, nullptr);
  ring().complete(second, -ECONNREFUSED);
  EXPECT_EQ(stats_->upstreams[0].connectErrors.value(), 2u);
  EXPECT_EQ(stats_->noUpstream.value(), 1u);
  EXPECT_TRUE(host_.sockets_.closed.at(kClientFd));
  EXPECT_EQ(host_.done, 1);
}

TEST_F(SessionTest, AServerAtMaxConnsIsPassedOverAndItsSlotHeldUntilTheSessionEnds) {
  configure(0, 4 * kChunk, 2);
  upstreamConfig_.servers[0].max_conns = 1;
  ASSERT_TRUE(pool_->acquire(0));  // another session holds server 0's only slot
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  // Server 0 comes first in the rotation but is full: the first connect goes to 8001.
  FakeOp* connect = ring().pending(OpKind::Connect, 100);
  ASSERT_NE(connect, nullptr);
  EXPECT_EQ(connect->offset, 8001u);
  EXPECT_EQ(stats_->upstreams[0].serverFull.value(), 1u);
  EXPECT_EQ(pool_->activeConnections(1), 1);  // taken while connecting
  ring().complete(connect, -ECONNREFUSED);
  // No other server left: the client is reset and every slot is given back.
  EXPECT_EQ(stats_->noUpstream.value(), 1u);
  EXPECT_TRUE(host_.sockets_.closed.at(kClientFd));
  EXPECT_EQ(pool_->activeConnections(1), 0);
  EXPECT_EQ(pool_->activeConnections(0), 1);
  pool_->release(0);
  // With a free slot the next session connects there and holds it until it ends.
  host_.sockets_.closed.clear();
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  EXPECT_EQ(pool_->activeConnections(0) + pool_->activeConnections(1), 1);
  EXPECT_EQ(stats_->upstreams[0].serverFull.value(), 1u);
}

TEST_F(SessionTest, WithQueueTimeoutASessionWaitsForASlotThenConnects) {
  fillBothServers();
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  EXPECT_EQ(ring().pending(OpKind::Connect, 100), nullptr);  // nothing to connect to yet
  EXPECT_EQ(stats_->upstreams[0].serverFull.value(), 2u);
  EXPECT_EQ(stats_->upstreams[0].queued.value(), 1u);
  EXPECT_EQ(stats_->upstreams[0].queueing.value(), 1);
  host_.advance(30'000'000);  // still full: it keeps waiting, without counting again
  EXPECT_EQ(ring().pending(OpKind::Connect, 100), nullptr);
  EXPECT_EQ(stats_->upstreams[0].serverFull.value(), 2u);
  EXPECT_FALSE(host_.sockets_.closed.count(kClientFd));
  // A slot frees up: the next look (at most 10 ms later) takes it.
  pool_->release(1);
  host_.advance(10'000'000);
  FakeOp* connect = ring().pending(OpKind::Connect, 100);
  ASSERT_NE(connect, nullptr);
  EXPECT_EQ(connect->offset, 8001u);
  EXPECT_EQ(stats_->upstreams[0].queueing.value(), 0);
  EXPECT_EQ(pool_->activeConnections(1), 1);
  EXPECT_NEAR(stats_->upstreams[0].queueDuration.sum(), 0.040,
              1e-9);                                            // the wait, observed as it ended
  EXPECT_EQ(stats_->upstreams[0].queueDuration.bucket(3), 1u);  // le="0.05"
  // It failed: the session waits again for the server still full (8001 is not retried).
  ring().complete(connect, -ECONNREFUSED);
  EXPECT_EQ(stats_->upstreams[0].queueing.value(), 1);
  EXPECT_EQ(stats_->upstreams[0].queued.value(), 1u);  // one session, one wait
  EXPECT_EQ(pool_->activeConnections(1), 0);
  pool_->release(0);
  host_.advance(10'000'000);
  connect = ring().pending(OpKind::Connect, 101);
  ASSERT_NE(connect, nullptr);
  EXPECT_EQ(connect->offset, 8000u);
  EXPECT_NEAR(stats_->upstreams[0].queueDuration.sum(), 0.050, 1e-9);  // and the second wait, 10 ms
  EXPECT_EQ(stats_->upstreams[0].queueDuration.bucket(2), 1u);         // le="0.01"
  ring().complete(connect, 0);
  EXPECT_EQ(stats_->upstreams[0].queueing.value(), 0);
  EXPECT_EQ(stats_->noUpstream.value(), 0u);
  EXPECT_FALSE(host_.sockets_.closed.count(kClientFd));
  EXPECT_EQ(pool_->activeConnections(0), 1);
}

TEST_F(SessionTest, AWaiterWhoseSlotFailedHoldsBackNoOneWaitingForTheServerItLeft) {
  fillBothServers();
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  auto second = std::make_unique<Session>(host_, context_, kClientFd + 1);
  second->start();
  EXPECT_EQ(slotQueue_.size(), 2u);
  // 8001 frees: the first waiter takes it, and its connect fails.
  pool_->release(1);
  host_.advance(10'000'000);
  FakeOp* connect = ring().pending(OpKind::Connect, 100);
  ASSERT_NE(connect, nullptr);
  EXPECT_EQ(connect->offset, 8001u);
  ring().complete(connect, -ECONNREFUSED);
  // It waits again for 8000 only, out of the queue: the second, which may still try 8001,
  // is the queue's oldest now and takes 8001's free slot (8001 is marked down, but a
  // server marked down is still tried when every other one is full).
  EXPECT_EQ(stats_->upstreams[0].queueing.value(), 2);
  EXPECT_EQ(slotQueue_.size(), 1u);
  EXPECT_TRUE(slotQueue_.isOldest(*second));
  host_.advance(10'000'000);
  connect = ring().pending(OpKind::Connect, 101);
  ASSERT_NE(connect, nullptr);
  EXPECT_EQ(connect->offset, 8001u);
  EXPECT_FALSE(host_.sockets_.closed.count(kClientFd + 1));
  // The first still waits for 8000, and gets it when it frees.
  pool_->release(0);
  host_.advance(10'000'000);
  connect = ring().pending(OpKind::Connect, 102);
  ASSERT_NE(connect, nullptr);
  EXPECT_EQ(connect->offset, 8000u);
  EXPECT_EQ(stats_->upstreams[0].queueing.value(), 0);
  second->abort();
  session_->abort();
  ring().completeCancelled();
}

TEST_F(SessionTest, AQueuedSessionIsResetAtQueueTimeoutAndOnAbort) {
  fillTheOnlyServer();
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  EXPECT_EQ(stats_->upstreams[0].queueing.value(), 1);
  host_.advance(99'000'000);
  EXPECT_FALSE(host_.sockets_.closed.count(kClientFd));
  host_.advance(1'000'000);  // queue_timeout: reset like a session no server took
  EXPECT_TRUE(host_.sockets_.closed.at(kClientFd));
  EXPECT_EQ(stats_->noUpstream.value(), 1u);
  EXPECT_EQ(stats_->upstreams[0].queueing.value(), 0);
  EXPECT_EQ(host_.done, 1);
  ASSERT_FALSE(host_.troubles.empty());
  EXPECT_EQ(host_.troubles.back(),
            "no server of upstream app had a free slot (max_conns) within queue_timeout: reset");
  EXPECT_EQ(pool_->activeConnections(0), 1);  // the other session's slot only
  // A session shut down while it waits leaves the queue too.
  host_.sockets_.closed.clear();
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  EXPECT_EQ(stats_->upstreams[0].queueing.value(), 1);
  session_->abort();
  EXPECT_EQ(stats_->upstreams[0].queueing.value(), 0);
  EXPECT_TRUE(host_.sockets_.closed.at(kClientFd));
  EXPECT_EQ(host_.done, 2);
  host_.advance(200'000'000);  // no timer left to fire
  EXPECT_EQ(stats_->noUpstream.value(), 1u);
}

TEST_F(SessionTest, MaxQueueResetsASessionWhenEnoughAreWaiting) {
  fillTheOnlyServer();
  upstreamConfig_.max_queue = 1;
  auto waiting = std::make_unique<Session>(host_, context_, kClientFd);
  waiting->start();
  EXPECT_EQ(pool_->queuedSessions(), 1);
  // A second one finds the queue full: reset at once, not after queue_timeout.
  session_ = std::make_unique<Session>(host_, context_, kClientFd + 1);
  session_->start();
  EXPECT_TRUE(host_.sockets_.closed.at(kClientFd + 1));
  EXPECT_FALSE(host_.sockets_.closed.count(kClientFd));
  EXPECT_EQ(stats_->upstreams[0].queued.value(), 1u);
  EXPECT_EQ(stats_->noUpstream.value(), 1u);
  ASSERT_FALSE(host_.troubles.empty());
  EXPECT_EQ(host_.troubles.back(),
            "no server of upstream app had a free slot (max_conns) and max_queue sessions were "
            "waiting already: reset");
  // The waiting one gets the slot; the queue is empty again.
  pool_->release(0);
  host_.advance(10'000'000);
  EXPECT_NE(ring().pending(OpKind::Connect, 100), nullptr);
  EXPECT_EQ(pool_->queuedSessions(), 0);
  EXPECT_EQ(stats_->upstreams[0].queueing.value(), 0);
  waiting->abort();
}

TEST_F(SessionTest, ANewSessionWaitsBehindTheQueueRatherThanTakeAFreedSlot) {
  fillTheOnlyServer();
  auto waiting = std::make_unique<Session>(host_, context_, kClientFd);
  waiting->start();
  host_.advance(20'000'000);  // it now looks every 5 ms
  pool_->release(0);          // a slot frees up just as a new session arrives
  session_ = std::make_unique<Session>(host_, context_, kClientFd + 1);
  session_->start();
  EXPECT_EQ(ring().pending(OpKind::Connect, 100), nullptr);  // the newcomer did not take it
  EXPECT_EQ(pool_->queuedSessions(), 2);
  EXPECT_EQ(stats_->upstreams[0].serverFull.value(), 1u);  // the first one's pass only
  EXPECT_EQ(slotQueue_.size(), 2u);
  EXPECT_TRUE(slotQueue_.isOldest(*waiting));
  host_.advance(5'000'000);
  // At its next look the one that waited longest takes the slot; the other waits on.
  FakeOp* connect = ring().pending(OpKind::Connect, 100);
  ASSERT_NE(connect, nullptr);
  EXPECT_EQ(pool_->queuedSessions(), 1);
  EXPECT_TRUE(slotQueue_.isOldest(*session_));
  EXPECT_EQ(pool_->activeConnections(0), 1);
  EXPECT_EQ(stats_->upstreams[0].queued.value(), 2u);
  ring().complete(connect, 0);
  EXPECT_EQ(waiting->listener().stats->upstreams[0].queueing.value(), 1);
  EXPECT_FALSE(host_.sockets_.closed.count(kClientFd + 1));
  session_->abort();
  waiting->abort();
  ring().completeCancelled();
  EXPECT_EQ(pool_->queuedSessions(), 0);
  EXPECT_EQ(slotQueue_.size(), 0u);
  EXPECT_EQ(pool_->activeConnections(0), 0);
}

TEST_F(SessionTest, ASlotASessionReleasesGoesAtOnceToTheOldestWaiter) {
  configure(0, 4 * kChunk, 1);
  upstreamConfig_.servers[0].max_conns = 1;
  upstreamConfig_.queue_timeout = std::chrono::milliseconds(100);
  Session& holder = startConnected();  // fd 100, the only slot
  std::vector<std::unique_ptr<Session>> waiters;
  for (int i = 0; i < 3; ++i) {
    waiters.push_back(std::make_unique<Session>(host_, context_, kClientFd + 1 + i));
    waiters.back()->start();
    host_.advance(2'000'000);
  }
  ASSERT_EQ(slotQueue_.size(), 3u);
  EXPECT_TRUE(slotQueue_.isOldest(*waiters[0]));
  // The holder finishes: its slot goes to the oldest waiter at the next turn of the loop,
  // not at its next look (up to 5 ms later).
  holder.abort();
  ring().completeCancelled();
  EXPECT_EQ(pool_->activeConnections(0), 0);
  host_.advance(0);
  FakeOp* connect = ring().pending(OpKind::Connect, 101);
  ASSERT_NE(connect, nullptr);
  EXPECT_EQ(pool_->activeConnections(0), 1);
  EXPECT_EQ(slotQueue_.size(), 2u);
  EXPECT_TRUE(slotQueue_.isOldest(*waiters[1]));
  // Its connect is refused (it had no other server to try: reset): the slot it releases
  // goes at once to the next one.
  ring().complete(connect, -ECONNREFUSED);
  EXPECT_TRUE(host_.sockets_.closed.at(kClientFd + 1));
  host_.advance(0);
  EXPECT_NE(ring().pending(OpKind::Connect, 102), nullptr);
  EXPECT_EQ(pool_->activeConnections(0), 1);
  EXPECT_EQ(slotQueue_.size(), 1u);
  EXPECT_TRUE(slotQueue_.isOldest(*waiters[2]));
  for (auto& w : waiters) {
    w->abort();
  }
  ring().completeCancelled();
  EXPECT_EQ(slotQueue_.size(), 0u);
  EXPECT_EQ(pool_->activeConnections(0), 0);
  EXPECT_EQ(pool_->queuedSessions(), 0);
}

TEST_F(SessionTest, AWaitingSessionConnectsItsMirrorsOnlyWithItsSlot) {
  fillTheOnlyServer(1);
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  EXPECT_EQ(pool_->queuedSessions(), 1);
  EXPECT_EQ(ring().pending(OpKind::Connect, 100), nullptr);  // no mirror connect yet
  EXPECT_EQ(stats_->mirrors[0].sessions.value(), 0u);
  pool_->release(0);
  host_.advance(1'000'000);
  // The slot taken: the primary (fd 100) and then the mirror (fd 101) connect.
  FakeOp* primary = ring().pending(OpKind::Connect, 100);
  ASSERT_NE(primary, nullptr);
  EXPECT_EQ(primary->offset, 8000u);
  FakeOp* mirror = ring().pending(OpKind::Connect, 101);
  ASSERT_NE(mirror, nullptr);
  EXPECT_EQ(mirror->offset, 9000u);
  EXPECT_EQ(stats_->mirrors[0].sessions.value(), 1u);
  ring().complete(primary, 0);
  ring().complete(mirror, 0);
  FakeOp* recv = ring().pendingReceive(kClientFd);
  ASSERT_NE(recv, nullptr);
  ring().receive(recv, "hello");
  EXPECT_NE(ring().pending(OpKind::Send, 100), nullptr);
  EXPECT_NE(ring().pending(OpKind::Send, 101), nullptr);
  // A session the queue resets never reaches the mirror.
  auto other = std::make_unique<Session>(host_, context_, kClientFd + 1);
  other->start();
  EXPECT_EQ(pool_->queuedSessions(), 1);
  host_.advance(100'000'000);
  EXPECT_TRUE(host_.sockets_.closed.at(kClientFd + 1));
  EXPECT_EQ(stats_->mirrors[0].sessions.value(), 1u);
  EXPECT_EQ(host_.sockets_.nextFd, 102);  // no socket opened for it
  session_->abort();
  ring().completeCancelled();
}

TEST_F(SessionTest, AFailedConnectMarksTheServerDownAndASuccessfulOneClearsIt) {
  configure(0, 4 * kChunk, 2);
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  FakeOp* first = ring().pending(OpKind::Connect, 100);
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->offset, 8000u);
  ring().complete(first, -ECONNREFUSED);
  EXPECT_EQ(stats_->upstreams[0].markedDown.value(), 1u);
  EXPECT_TRUE(pool_->down(0, host_.now()));
  FakeOp* second = ring().pending(OpKind::Connect, 101);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(second->offset, 8001u);
  ring().complete(second, 0);
  EXPECT_EQ(stats_->upstreams[0].connectErrors.value(), 1u);
  // Sessions whose rotation starts at server 0 try 8001 first while 0 is down.
  std::vector<uint32_t> order;
  pool_->pickOrder(order, host_.now());  // rotation [1, 0]
  EXPECT_EQ(order, (std::vector<uint32_t>{1, 0}));
  pool_->pickOrder(order, host_.now());  // rotation [0, 1]
  EXPECT_EQ(order, (std::vector<uint32_t>{1, 0}));
  // fail_timeout (10s by default) later server 0 is back.
  host_.advance(10'000'000'000ull);
  EXPECT_FALSE(pool_->down(0, host_.now()));
  EXPECT_EQ(stats_->upstreams[0].markedDown.value(), 1u);
}

TEST_F(SessionTest, ConnectsLeaveFromTheSourceAddresses) {
  upstreamConfig_.source_address = sourceAddress("127.0.0.2");
  configure(1);
  listenerConfig_.mirrors[0].source_address = sourceAddress("127.0.0.3");
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  // The mirror's socket (100) is opened first, then the primary's (101): each bound
  // before its connect.
  ASSERT_NE(ring().pending(OpKind::Connect, 100), nullptr);
  ASSERT_NE(ring().pending(OpKind::Connect, 101), nullptr);
  EXPECT_EQ(host_.sockets_.bound,
            (std::map<int, std::string>{{100, "127.0.0.3"}, {101, "127.0.0.2"}}));
}

TEST_F(SessionTest, AMirrorToAPoolHoldsAServerSlotAndFeedsItsHealth) {
  configure(1);
  config::UpstreamConfig sinksConfig;
  sinksConfig.name = "sinks";
  sinksConfig.servers.push_back({address("127.0.0.1:9100")});
  sinksConfig.servers.push_back({address("127.0.0.1:9101")});
  UpstreamPool sinks(sinksConfig);
  listenerConfig_.mirrors[0].address = {};
  listenerConfig_.mirrors[0].upstream = "sinks";
  context_.mirrorPools = {&sinks};
  auto run = [&](int32_t mirrorResult) {
    host_.sockets_.closed.clear();  // one client fd for every session here
    session_ = std::make_unique<Session>(host_, context_, kClientFd);
    session_->start();
    FakeOp* mirror = ring().pending(OpKind::Connect);  // the mirror's comes first
    EXPECT_NE(mirror, nullptr);
    const auto port = static_cast<uint16_t>(mirror->offset);
    EXPECT_EQ(sinks.activeConnections(port - 9100), 1);  // held from the connect on
    ring().complete(mirror, mirrorResult);
    FakeOp* primary = ring().pending(OpKind::Connect);
    const int primaryFd = primary->fd;
    ring().complete(primary, 0);
    ring().complete(ring().pendingReceive(kClientFd), 0);
    ring().complete(ring().pendingReceive(primaryFd), 0);
    ring().completeCancelled();
    EXPECT_EQ(sinks.activeConnections(port - 9100), 0);  // given back at the end
    return port;
  };
  // Round robin over the pool; a failed connect marks its server down (max_fails 1).
  const uint16_t first = run(0);
  const uint16_t second = run(-ECONNREFUSED);
  EXPECT_NE(first, second);
  EXPECT_TRUE(sinks.down(second - 9100, host_.now()));
  EXPECT_EQ(stats_->mirrors[0].markedDown.value(), 1u);
  EXPECT_EQ(run(0), first);  // the other one is down: the next copies skip it
  EXPECT_EQ(run(0), first);
  EXPECT_EQ(sinks.serverSessions(first - 9100), 3u);
  // Every server down: the session goes without its copy (skipped).
  ASSERT_TRUE(sinks.connectFailed(first - 9100, host_.now()));
  host_.sockets_.closed.clear();
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  EXPECT_EQ(stats_->mirrors[0].skippedSessions.value(), 1u);
  EXPECT_EQ(ring().pendingCount(OpKind::Connect), 1u);  // the primary's, not a mirror's
}

TEST_F(SessionTest, ThePoolsConnectTimeoutOverridesTheListeners) {
  upstreamConfig_.connect_timeout = std::chrono::milliseconds(200);
  configure(0, 4 * kChunk, 2);  // the listener's connect_timeout: 5 s
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  FakeOp* first = ring().pending(OpKind::Connect, 100);
  ASSERT_NE(first, nullptr);
  host_.advance(199'000'000);
  EXPECT_EQ(ring().pendingCount(OpKind::Connect, 100), 1u);
  host_.advance(1'000'000);  // the pool's 200 ms: cancelled, a timeout
  ring().completeCancelled();
  EXPECT_EQ(stats_->upstreams[0].connectErrors.value(), 1u);
  // The next server, with its own 200 ms.
  ASSERT_NE(ring().pending(OpKind::Connect, 101), nullptr);
  host_.advance(200'000'000);
  ring().completeCancelled();
  EXPECT_EQ(stats_->upstreams[0].connectErrors.value(), 2u);
  EXPECT_EQ(stats_->noUpstream.value(), 1u);
}

TEST_F(SessionTest, ASourceAddressThatCannotBeBoundSparesTheServers) {
  upstreamConfig_.source_address = sourceAddress("192.0.2.1");
  configure(0, 4 * kChunk, 2);
  host_.sockets_.bindResult = -EADDRNOTAVAIL;
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  // Each server's socket is closed unconnected; the client is reset as when every
  // server fails, and no server is marked down for it.
  EXPECT_EQ(ring().pendingCount(OpKind::Connect, 100), 0u);
  EXPECT_EQ(ring().pendingCount(OpKind::Connect, 101), 0u);
  EXPECT_FALSE(host_.sockets_.closed.at(100));
  EXPECT_FALSE(host_.sockets_.closed.at(101));
  EXPECT_EQ(stats_->upstreams[0].connectErrors.value(), 2u);
  EXPECT_EQ(stats_->upstreams[0].markedDown.value(), 0u);
  EXPECT_FALSE(pool_->down(0, host_.now()));
  EXPECT_EQ(stats_->noUpstream.value(), 1u);
  EXPECT_TRUE(host_.sockets_.closed.at(kClientFd));
}

TEST_F(SessionTest, ProxyProtocolHeaderGoesFirstOnTheUpstreamConnection) {
  upstreamConfig_.proxy_protocol = config::ProxyProtocol::V1;
  configure(0);
  startConnected();
  EXPECT_EQ(host_.sockets_.sent[primaryFd()], "PROXY TCP4 127.0.0.1 127.0.0.1 40000 40000\r\n");
  EXPECT_EQ(ring().pendingCount(OpKind::Send, primaryFd()), 0u);
  ring().receive(ring().pendingReceive(kClientFd), "GET /");
  FakeOp* send = ring().pending(OpKind::Send, primaryFd());
  ASSERT_NE(send, nullptr);
  EXPECT_EQ(std::string(static_cast<const char*>(send->buf), send->len), "GET /");
}

TEST_F(SessionTest, AProxyProtocolHeaderThatCannotBeSentFailsTheConnect) {
  upstreamConfig_.proxy_protocol = config::ProxyProtocol::V2;
  configure(0, 4 * kChunk, 2);
  host_.sockets_.sendResult[100] = -ECONNRESET;
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  ring().complete(ring().pending(OpKind::Connect, 100), 0);
  EXPECT_EQ(stats_->upstreams[0].connectErrors.value(), 1u);
  EXPECT_FALSE(host_.sockets_.closed.at(100));
  FakeOp* second = ring().pending(OpKind::Connect, 101);
  ASSERT_NE(second, nullptr);
  ring().complete(second, 0);
  EXPECT_EQ(host_.sockets_.sent[101].size(), 28u);  // v2, IPv4
  EXPECT_EQ(host_.done, 0);
}

TEST_F(SessionTest, AcceptedProxyHeaderReplacesTheClientAddressAndIsNotRelayed) {
  listenerConfig_.accept_proxy_protocol = true;
  upstreamConfig_.proxy_protocol = config::ProxyProtocol::V1;
  host_.sockets_.incoming[kClientFd] = "PROXY TCP4 10.1.2.3 10.9.9.9 5555 80\r\nGET /";
  startConnected();
  EXPECT_EQ(host_.sockets_.incoming[kClientFd], "GET /");  // the stream is left for the relay
  EXPECT_EQ(host_.sockets_.sent[primaryFd()], "PROXY TCP4 10.1.2.3 10.9.9.9 5555 80\r\n");
  EXPECT_EQ(stats_->proxyProtocolErrors.value(), 0u);
}

TEST_F(SessionTest, AProxyHeaderInPiecesIsReadToItsEndOnly) {
  listenerConfig_.accept_proxy_protocol = true;
  upstreamConfig_.proxy_protocol = config::ProxyProtocol::V1;
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  host_.sockets_.incoming[kClientFd] = "PROXY TCP6 2001:db8::7 ";
  session_->start();
  EXPECT_EQ(ring().pendingCount(OpKind::Connect, 100), 0u);
  EXPECT_EQ(host_.sockets_.incoming[kClientFd], "");  // header bytes, so taken
  FakeOp* poll = ring().pending(OpKind::Poll, kClientFd);
  ASSERT_NE(poll, nullptr);
  host_.sockets_.incoming[kClientFd] = "2001:db8::1 40000 443\r\n\x16\x03\x01";
  ring().complete(poll, POLLIN);
  EXPECT_EQ(host_.sockets_.incoming[kClientFd], "\x16\x03\x01");
  ring().complete(ring().pending(OpKind::Connect, 100), 0);
  EXPECT_EQ(host_.sockets_.sent[100], "PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n");
}

TEST_F(SessionTest, AClientWithoutAProxyHeaderIsClosedAndCounted) {
  listenerConfig_.accept_proxy_protocol = true;
  host_.sockets_.incoming[kClientFd] = "GET / HTTP/1.1\r\n\r\n";
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  EXPECT_EQ(ring().pendingCount(OpKind::Connect, 100), 0u);
  EXPECT_TRUE(host_.sockets_.closed.at(kClientFd));
  EXPECT_EQ(stats_->proxyProtocolErrors.value(), 1u);
  EXPECT_EQ(host_.done, 1);
  ASSERT_EQ(host_.troubles.size(), 1u);
  EXPECT_EQ(host_.troubles[0], "PROXY protocol header: the client did not send one");
}

TEST_F(SessionTest, APeerOutsideProxyProtocolFromIsResetWithoutReadingItsHeader) {
  // The fake peer is 127.0.0.1:40000.
  listenerConfig_.accept_proxy_protocol = true;
  listenerConfig_.proxy_protocol_from = {*config::parseNetwork("10.0.0.0/8"),
                                         *config::parseNetwork("127.0.0.2")};
  const std::string spoofed = "PROXY TCP4 10.1.2.3 10.9.9.9 5555 80\r\nGET /";
  host_.sockets_.incoming[kClientFd] = spoofed;
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  EXPECT_EQ(host_.sockets_.incoming[kClientFd], spoofed);  // not a byte read
  EXPECT_EQ(ring().pendingCount(OpKind::Connect, 100), 0u);
  EXPECT_TRUE(host_.sockets_.closed.at(kClientFd));  // reset
  EXPECT_EQ(stats_->proxyProtocolErrors.value(), 1u);
  ASSERT_EQ(host_.troubles.size(), 1u);
  EXPECT_EQ(
      host_.troubles[0],
      "PROXY protocol header from 127.0.0.1:40000, a peer outside proxy_protocol_from: reset");
}

TEST_F(SessionTest, APeerInProxyProtocolFromHasItsHeaderRead) {
  listenerConfig_.accept_proxy_protocol = true;
  listenerConfig_.proxy_protocol_from = {*config::parseNetwork("127.0.0.0/8")};
  upstreamConfig_.proxy_protocol = config::ProxyProtocol::V1;
  host_.sockets_.incoming[kClientFd] = "PROXY TCP4 10.1.2.3 10.9.9.9 5555 80\r\nGET /";
  startConnected();
  EXPECT_EQ(host_.sockets_.incoming[kClientFd], "GET /");
  EXPECT_EQ(host_.sockets_.sent[primaryFd()], "PROXY TCP4 10.1.2.3 10.9.9.9 5555 80\r\n");
  EXPECT_EQ(stats_->proxyProtocolErrors.value(), 0u);
}

TEST_F(SessionTest, AClientOutsideAllowIsResetBeforeAnythingConnects) {
  // The fake peer is 127.0.0.1:40000.
  listenerConfig_.allow = {*config::parseNetwork("10.0.0.0/8")};
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  EXPECT_EQ(ring().pendingCount(OpKind::Connect, 100), 0u);
  EXPECT_TRUE(host_.sockets_.closed.at(kClientFd));  // reset
  EXPECT_EQ(stats_->denied.value(), 1u);
  ASSERT_EQ(host_.troubles.size(), 1u);
  EXPECT_EQ(host_.troubles[0],
            "client 127.0.0.1:40000 is outside the listener's allow networks: reset");
}

TEST_F(SessionTest, AllowJudgesTheClientThatAProxyHeaderCarries) {
  listenerConfig_.allow = {*config::parseNetwork("10.0.0.0/8")};
  listenerConfig_.accept_proxy_protocol = true;
  host_.sockets_.incoming[kClientFd] = "PROXY TCP4 10.1.2.3 10.9.9.9 5555 80\r\nGET /";
  startConnected();
  EXPECT_EQ(stats_->denied.value(), 0u);
  EXPECT_FALSE(host_.sockets_.closed.count(kClientFd));
}

TEST_F(SessionTest, AProxyHeaderNamingAClientOutsideAllowIsReset) {
  listenerConfig_.allow = {*config::parseNetwork("10.0.0.0/8")};
  listenerConfig_.accept_proxy_protocol = true;
  host_.sockets_.incoming[kClientFd] = "PROXY TCP4 192.0.2.1 10.9.9.9 5555 80\r\nGET /";
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  EXPECT_EQ(ring().pendingCount(OpKind::Connect, 100), 0u);
  EXPECT_EQ(stats_->denied.value(), 1u);
}

TEST_F(SessionTest, AProxyHeaderThatNeverComesTimesOutAfterConnectTimeout) {
  listenerConfig_.accept_proxy_protocol = true;
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  FakeOp* poll = ring().pending(OpKind::Poll, kClientFd);
  ASSERT_NE(poll, nullptr);
  host_.advance(4'000'000'000ull);
  EXPECT_FALSE(poll->cancelRequested);
  host_.advance(1'500'000'000ull);
  EXPECT_TRUE(poll->cancelRequested);
  ring().completeCancelled();
  EXPECT_TRUE(host_.sockets_.closed.at(kClientFd));
  EXPECT_EQ(stats_->proxyProtocolErrors.value(), 1u);
  EXPECT_EQ(host_.done, 1);
}

TEST_F(SessionTest, AConnectionClosedBeforeAnyByteIsAHealthCheckNotAnError) {
  listenerConfig_.accept_proxy_protocol = true;
  host_.sockets_.eof[kClientFd] = true;
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  EXPECT_TRUE(host_.sockets_.closed.count(kClientFd));
  EXPECT_EQ(stats_->proxyProtocolErrors.value(), 0u);
  EXPECT_EQ(host_.done, 1);
}

TEST_F(SessionTest, TcpKeepaliveIsOffByDefault) {
  configure(1);
  startConnected();
  EXPECT_TRUE(host_.sockets_.keepAlive.empty());
}

TEST_F(SessionTest, TcpKeepaliveGoesOnEverySocketOfTheSession) {
  configure(1);
  listenerConfig_.tcp_keepalive = std::chrono::milliseconds(29'500);  // whole seconds, up
  startConnected();
  const std::map<int, uint32_t> expected = {{kClientFd, 30}, {100, 30}, {primaryFd(), 30}};
  EXPECT_EQ(host_.sockets_.keepAlive, expected);
}

TEST_F(SessionTest, ConnectTimeoutCancelsAndCountsAsAFailure) {
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();
  FakeOp* connect = ring().pending(OpKind::Connect, 100);
  host_.advance(4'000'000'000ull);
  EXPECT_FALSE(connect->cancelRequested);
  host_.advance(1'500'000'000ull);
  EXPECT_TRUE(connect->cancelRequested);
  ring().completeCancelled();
  EXPECT_EQ(stats_->upstreams[0].connectErrors.value(), 1u);
  EXPECT_EQ(host_.done, 1);
}

TEST_F(SessionTest, IdleTimeoutClosesTheSession) {
  startConnected();
  host_.advance(59'000'000'000ull);
  EXPECT_EQ(host_.done, 0);
  host_.advance(2'000'000'000ull);
  ring().completeCancelled();
  EXPECT_EQ(host_.done, 1);
  EXPECT_EQ(stats_->idleTimeouts.value(), 1u);
}

TEST_F(SessionTest, MaxSessionDurationResetsTheSessionBusyOrNot) {
  listenerConfig_.max_session_duration = std::chrono::seconds(30);
  startConnected();
  // Busy: bytes every 10 s, so idle_timeout (60 s) never comes near.
  for (int i = 0; i < 2; ++i) {
    host_.advance(10'000'000'000ull);
    ring().receive(ring().pendingReceive(kClientFd), "data");
    ring().complete(ring().pending(OpKind::Send, primaryFd()), 4);
  }
  host_.advance(6'900'000'000ull);  // 26.9 s from the accept: before 30 s - 10%
  EXPECT_EQ(host_.done, 0);
  // A chunk on its way when the time is up is not delivered: both sides are reset.
  ring().receive(ring().pendingReceive(kClientFd), "late");
  host_.advance(6'200'000'000ull);  // 33.1 s: past 30 s + 10%
  ring().completeCancelled();
  EXPECT_EQ(host_.done, 1);
  EXPECT_TRUE(host_.sockets_.closed.at(kClientFd));  // reset
  EXPECT_TRUE(host_.sockets_.closed.at(primaryFd()));
  EXPECT_EQ(stats_->maxDurations.value(), 1u);
  EXPECT_EQ(stats_->idleTimeouts.value(), 0u);
}

TEST_F(SessionTest, MaxSessionDurationIsSpreadOverTenPercentEitherSide) {
  // Sessions accepted together are reset at different times within 27..33 s.
  listenerConfig_.max_session_duration = std::chrono::seconds(30);
  std::set<uint64_t> resetAt;
  for (uint64_t id = 1; id <= 16; ++id) {
    host_.sockets_.closed.clear();
    host_.done = 0;
    session_ = std::make_unique<Session>(host_, context_, kClientFd);
    session_->setId(id);
    const uint64_t start = host_.now();
    session_->start();
    ring().complete(ring().pending(OpKind::Connect), 0);
    while (host_.done == 0 && host_.now() - start < 40'000'000'000ull) {
      host_.advance(100'000'000);
      ring().completeCancelled();
    }
    ASSERT_EQ(host_.done, 1);
    const uint64_t lived = host_.now() - start;
    EXPECT_GE(lived, 27'000'000'000ull);
    EXPECT_LE(lived, 33'100'000'000ull);
    resetAt.insert(lived / 100'000'000);
  }
  EXPECT_GE(resetAt.size(), 8u);  // spread, not one instant
}

TEST_F(SessionTest, AClientOverItsConnectionRateIsResetBeforeAnythingConnects) {
  ClientRateLimiter rate(1);
  context_.clientRate = &rate;
  session_ = std::make_unique<Session>(host_, context_, kClientFd);
  session_->start();  // the fake peer, 127.0.0.1:40000: its first, admitted
  EXPECT_EQ(stats_->rejected[metrics::kClientRateLimit].value(), 0u);
  EXPECT_FALSE(host_.sockets_.closed.count(kClientFd));
  session_ = std::make_unique<Session>(host_, context_, kClientFd + 1);
  session_->start();  // its second within the second
  EXPECT_EQ(stats_->rejected[metrics::kClientRateLimit].value(), 1u);
  EXPECT_TRUE(host_.sockets_.closed.at(kClientFd + 1));  // reset
  ASSERT_FALSE(host_.troubles.empty());
  EXPECT_EQ(host_.troubles.back(),
            "client 127.0.0.1:40000 opens connections faster than 1 a second "
            "(max_connection_rate_per_client): reset");
}

// Splice ([server] splice on the mainline path): a direction with a single target starts
// on RECV/SEND; a full chunk switches it to splice (source -> pipe -> target, polled) once
// the target has sent what was received, and a source that runs dry switches it back.
class SpliceTest : public SessionTest {
protected:
  void SetUp() override {
    configure(0);
    context_.splice = true;
    host_.pipeCapacity = 8192;
  }
  FakeSockets& sockets() { return host_.sockets_; }
  FakeOp* poll(int fd, uint32_t events) {
    FakeOp* p = ring().pendingPoll(fd, events);
    EXPECT_NE(p, nullptr) << "no poll for " << events << " on fd " << fd;
    return p;
  }
  // A full chunk from the client; the switch to splice happens when its send completes,
  // with the splices scripted in `sockets()` by then.
  void fullChunkFromClient() {
    FakeOp* recv = ring().pending(OpKind::RecvMultishot, kClientFd);
    ASSERT_NE(recv, nullptr);
    ring().receive(recv, std::string(kChunk, 'f'), true);
    EXPECT_TRUE(recv->cancelRequested);  // the multishot receive stops for the switch
    ring().complete(recv, -ECANCELED);
    EXPECT_EQ(ring().pendingCount(OpKind::Poll, kClientFd), 0u);  // not before the send
  }
  void completeChunkSend() {
    ring().complete(ring().pending(OpKind::Send, primaryFd()), static_cast<int32_t>(kChunk));
  }
};

TEST_F(SpliceTest, AFullChunkSwitchesToSpliceAndASmallBurstSwitchesBack) {
  startConnected();
  fullChunkFromClient();
  sockets().fillFrom[kClientFd] = {5000, 3000};
  sockets().drainTo[primaryFd()] = {3000, 2000, 3000};
  completeChunkSend();
  EXPECT_EQ(stats_->receivedBytes[metrics::kRequest].value(), kChunk + 8000u);
  EXPECT_EQ(stats_->upstreams[0].sentBytes.value(), kChunk + 8000u);
  EXPECT_EQ(stats_->chunks[metrics::kMainlinePath].value(), 1u);
  EXPECT_EQ(stats_->chunks[metrics::kSplicePath].value(), 2u);
  EXPECT_EQ(ring().buffers()->recycled(), 1u);  // only the first chunk took a buffer
  // A burst of a chunk or more: the direction stays on splice and waits for the next.
  FakeOp* readable = poll(kClientFd, POLLIN);
  ASSERT_FALSE(host_.pipesGiven.empty());
  for (bool empty : host_.pipesGiven) {
    EXPECT_TRUE(empty);  // idle: the pipe went back to the pool
  }
  // A burst smaller than a chunk: back to RECV/SEND.
  sockets().fillFrom[kClientFd] = {100};
  sockets().drainTo[primaryFd()] = {100};
  ring().complete(readable, POLLIN);
  EXPECT_EQ(ring().pendingCount(OpKind::Poll, kClientFd), 0u);
  EXPECT_EQ(ring().pendingCount(OpKind::RecvMultishot, kClientFd), 1u);
  // Small chunks stay on RECV/SEND.
  ring().receive(ring().pending(OpKind::RecvMultishot, kClientFd), "small", true);
  EXPECT_FALSE(ring().pending(OpKind::RecvMultishot, kClientFd)->cancelRequested);
}

TEST_F(SpliceTest, RightAfterTheSwitchTheRestOfTheBurstIsWaitedFor) {
  startConnected();
  fullChunkFromClient();
  completeChunkSend();  // the first splice finds nothing yet
  FakeOp* readable = poll(kClientFd, POLLIN);
  EXPECT_EQ(ring().pendingReceives(kClientFd), 0u);
  sockets().fillFrom[kClientFd] = {700};
  sockets().drainTo[primaryFd()] = {700};
  ring().complete(readable, POLLIN);
  EXPECT_EQ(stats_->upstreams[0].sentBytes.value(), kChunk + 700u);
  EXPECT_EQ(stats_->chunks[metrics::kSplicePath].value(), 1u);
}

TEST_F(SpliceTest, BytesInThePipeWaitForTheTargetAndNothingMoreIsRead) {
  startConnected();
  fullChunkFromClient();
  sockets().fillFrom[kClientFd] = {8192};
  sockets().drainTo[primaryFd()] = {-EAGAIN};
  completeChunkSend();
  // Back-pressure: the pipe holds the bytes, the target is polled for room, the source
  // is neither polled nor received from.
  EXPECT_EQ(ring().pendingPoll(kClientFd, POLLIN), nullptr);
  EXPECT_EQ(ring().pendingReceives(kClientFd), 0u);
  FakeOp* writable = poll(primaryFd(), POLLOUT);
  // EOF while bytes are still in the pipe: FIN only after they are out.
  sockets().fillFrom[kClientFd] = {0};
  sockets().drainTo[primaryFd()] = {4096, -EAGAIN};
  ring().complete(writable, POLLOUT);
  EXPECT_TRUE(sockets().shutdowns.empty());
  sockets().drainTo[primaryFd()] = {4096};
  ring().complete(poll(primaryFd(), POLLOUT), POLLOUT);
  EXPECT_EQ(stats_->upstreams[0].sentBytes.value(), kChunk + 8192u);
  ASSERT_EQ(sockets().shutdowns.size(), 1u);
  EXPECT_EQ(sockets().shutdowns[0], primaryFd());
}

TEST_F(SpliceTest, ResetOfTheTargetResetsTheSourceAndClosesThePipe) {
  startConnected();
  fullChunkFromClient();
  sockets().fillFrom[kClientFd] = {4096};
  sockets().drainTo[primaryFd()] = {-ECONNRESET};
  completeChunkSend();
  EXPECT_EQ(stats_->resets.value(), 1u);
  ASSERT_FALSE(host_.pipesGiven.empty());
  EXPECT_FALSE(host_.pipesGiven.back());  // it still held bytes: closed, not pooled
  ring().completeCancelled();             // the response direction's receive
  EXPECT_EQ(host_.done, 1);
  EXPECT_TRUE(sockets().closed.at(kClientFd));
  EXPECT_TRUE(sockets().closed.at(primaryFd()));
}

TEST_F(SpliceTest, ClosingCancelsTheSplicePollsAndWaitsForThem) {
  startConnected();
  fullChunkFromClient();
  completeChunkSend();
  FakeOp* readable = poll(kClientFd, POLLIN);
  session_->abort();
  EXPECT_TRUE(readable->cancelRequested);
  EXPECT_EQ(host_.done, 0);
  EXPECT_EQ(sockets().closed.count(kClientFd), 0u);  // a poll still refers to it
  ring().completeCancelled();
  EXPECT_EQ(host_.done, 1);
  EXPECT_TRUE(sockets().closed.at(kClientFd));
}

TEST_F(SpliceTest, WithoutAPipeTheDirectionStaysOnRecvSend) {
  host_.pipeCapacity = 0;  // e.g. EMFILE
  startConnected();
  fullChunkFromClient();
  completeChunkSend();
  EXPECT_EQ(ring().pendingCount(OpKind::Poll), 0u);
  ASSERT_EQ(ring().pendingCount(OpKind::RecvMultishot, kClientFd), 1u);
  ring().receive(ring().pending(OpKind::RecvMultishot, kClientFd), std::string(kChunk, 'g'), true);
  EXPECT_FALSE(ring().pending(OpKind::RecvMultishot, kClientFd)->cancelRequested);
}

TEST_F(SpliceTest, ASpliceRefusedByTheKernelLeavesTheDirectionOnRecvSend) {
  startConnected();
  fullChunkFromClient();
  sockets().fillFrom[kClientFd] = {-EPERM};  // e.g. a seccomp profile refusing splice(2)
  completeChunkSend();
  EXPECT_EQ(stats_->resets.value(), 0u);
  EXPECT_EQ(ring().pendingCount(OpKind::Poll), 0u);
  ASSERT_FALSE(host_.pipesGiven.empty());
  EXPECT_TRUE(host_.pipesGiven.back());  // empty: back to the pool
  // The bytes go on through RECV/SEND, and a full chunk no longer switches.
  FakeOp* recv = ring().pending(OpKind::RecvMultishot, kClientFd);
  ASSERT_NE(recv, nullptr);
  ring().receive(recv, std::string(kChunk, 'h'), true);
  EXPECT_FALSE(ring().pending(OpKind::RecvMultishot, kClientFd)->cancelRequested);
  completeChunkSend();
  EXPECT_EQ(stats_->upstreams[0].sentBytes.value(), 2 * kChunk);
  EXPECT_EQ(stats_->chunks[metrics::kSplicePath].value(), 0u);
}

TEST_F(SpliceTest, AMirroredDirectionNeverSplicesButTheOtherDoes) {
  configure(1);
  context_.splice = true;
  startConnected();
  ring().receive(ring().pending(OpKind::RecvMultishot, kClientFd), std::string(kChunk, 'r'), true);
  EXPECT_FALSE(ring().pending(OpKind::RecvMultishot, kClientFd)->cancelRequested);
  FakeOp* response = ring().pending(OpKind::RecvMultishot, primaryFd());
  ring().receive(response, std::string(kChunk, 's'), true);
  EXPECT_TRUE(response->cancelRequested);
}

TEST_F(SpliceTest, AMirrorMarkedDownLeavesTheDirectionFreeToSplice) {
  // Found reading startRelaying(): a mirror the session skipped (marked down) still
  // counted as taking the bytes, so while an analytics sink was down every session of
  // the listener stayed on RECV/SEND.
  configure(1);
  context_.splice = true;
  PeerHealth health;
  ASSERT_TRUE(health.connectFailed(host_.now(), 1, std::chrono::seconds(10)));
  context_.mirrorHealth = {&health};
  skippedMirrors_ = 1;
  startConnected();
  EXPECT_EQ(stats_->mirrors[0].skippedSessions.value(), 1u);
  fullChunkFromClient();
  sockets().fillFrom[kClientFd] = {5000};
  sockets().drainTo[primaryFd()] = {5000};
  completeChunkSend();
  EXPECT_EQ(stats_->upstreams[0].sentBytes.value(), kChunk + 5000u);
  EXPECT_EQ(stats_->chunks[metrics::kSplicePath].value(), 1u);
  // What the mirror missed counts as dropped, spliced or not.
  EXPECT_EQ(stats_->mirrors[0].droppedBytes.value(), kChunk + 5000u);
}

TEST_F(SpliceTest, AMirrorCutMidSessionLetsItsDirectionSplice) {
  configure(1, 2 * kChunk);
  context_.splice = true;
  startConnected();
  const int mirrorFd = 100;
  ring().complete(ring().pending(OpKind::Connect, mirrorFd), 0);
  FakeOp* recv = ring().pending(OpKind::RecvMultishot, kClientFd);
  ring().receive(recv, std::string(kChunk, 'c'), true);
  EXPECT_FALSE(recv->cancelRequested);  // mirrored: stays on RECV/SEND
  completeChunkSend();
  // The mirror takes nothing (its send never completes) and falls behind max_lag.
  ring().receive(recv, std::string(kChunk, 'c'), true);
  completeChunkSend();
  ring().receive(recv, std::string(kChunk, 'c'), true);
  EXPECT_EQ(stats_->mirrors[0].cuts.value(), 1u);
  // The chunk that cut it was a full one: the direction now switches to splice.
  EXPECT_TRUE(recv->cancelRequested);
  ring().complete(recv, -ECANCELED);
  sockets().fillFrom[kClientFd] = {3000};
  sockets().drainTo[primaryFd()] = {3000};
  completeChunkSend();
  EXPECT_EQ(stats_->upstreams[0].sentBytes.value(), 3 * kChunk + 3000u);
  EXPECT_EQ(stats_->chunks[metrics::kSplicePath].value(), 1u);
  // The mirror took none of it: what it held when cut, the chunk that cut it, the splice.
  EXPECT_EQ(stats_->mirrors[0].droppedBytes.value(), 3 * kChunk + 3000u);
}

TEST_F(SessionTest, MirrorGetsTheSameBufferAndIsCutPastMaxLagWithoutSlowingThePrimary) {
  configure(1, 2 * kChunk);
  startConnected();
  const int mirrorFd = 100;
  ring().complete(ring().pending(OpKind::Connect, mirrorFd), 0);
  const std::string full(kChunk, 'y');
  ring().receive(ring().pendingReceive(kClientFd), full);
  FakeOp* toMirror = ring().pending(OpKind::Send, mirrorFd);
  FakeOp* toPrimary = ring().pending(OpKind::Send, primaryFd());
  ASSERT_NE(toMirror, nullptr);
  EXPECT_EQ(toMirror->buf, toPrimary->buf);  // one buffer, two consumers
  // The primary keeps up; the mirror never completes its send.
  for (int i = 0; i < 3; ++i) {
    ring().complete(ring().pending(OpKind::Send, primaryFd()), static_cast<int32_t>(kChunk));
    ring().receive(ring().pendingReceive(kClientFd), full);
  }
  EXPECT_EQ(stats_->mirrors[0].cuts.value(), 1u);
  EXPECT_GT(stats_->mirrors[0].droppedBytes.value(), 0u);
  EXPECT_EQ(host_.troubles.size(), 1u);
  EXPECT_EQ(ring().pendingReceives(kClientFd), 1u);  // primary unaffected
  ring().completeCancelled();
  EXPECT_TRUE(host_.sockets_.closed.at(mirrorFd));  // cut = reset
}

TEST_F(SessionTest, OnlyChunksAMirrorAloneHoldsCountAsItsBufferPressure) {
  configure(2, 64 * kChunk);
  startConnected();
  ring().complete(ring().pending(OpKind::Connect, 100), 0);
  ring().complete(ring().pending(OpKind::Connect, 101), 0);
  const std::string full(kChunk, 'p');
  ring().receive(ring().pendingReceive(kClientFd), full);
  ring().receive(ring().pendingReceive(kClientFd), full);
  // Both chunks are still on their way to the primary: cutting a mirror would free none.
  size_t mirror = 99;
  EXPECT_EQ(session_->mirrorHoldingMostAlone(&mirror), 0u);
  EXPECT_EQ(mirror, 99u);
  // The primary and mirror 0 take both; mirror 1 holds them alone. The host hears of
  // each chunk the primary lets go (not of the mirror's), to look at pressure again.
  const int released = host_.relayReleases;
  for (int fd : {primaryFd(), 100}) {
    ring().complete(ring().pending(OpKind::Send, fd), static_cast<int32_t>(kChunk));
    ring().complete(ring().pending(OpKind::Send, fd), static_cast<int32_t>(kChunk));
  }
  EXPECT_EQ(host_.relayReleases - released, 2);
  ring().receive(ring().pendingReceive(kClientFd), full);  // shared by all three again
  EXPECT_EQ(session_->mirrorHoldingMostAlone(&mirror), 2u);
  EXPECT_EQ(mirror, 1u);
}

TEST_F(SessionTest, SmallChunksForALaggingMirrorArePackedAndFreeTheirReceiveBuffers) {
  configure(1, 64 * kChunk);
  startConnected();
  const int mirrorFd = 100;
  ring().complete(ring().pending(OpKind::Connect, mirrorFd), 0);
  const uint32_t poolSize = host_.pool_->count();
  // The mirror's first send never completes; the primary keeps up with 40 small chunks
  // (more than the 16 receive buffers there are).
  std::string all;
  for (int i = 0; i < 40; ++i) {
    const std::string piece(100 + i, static_cast<char>('a' + i % 26));
    all += piece;
    ring().receive(ring().pendingReceive(kClientFd), piece);
    ring().complete(ring().pending(OpKind::Send, primaryFd()), static_cast<int32_t>(piece.size()));
  }
  EXPECT_EQ(stats_->mirrors[0].cuts.value(), 0u);
  // Only the chunks the mirror keeps as they are still hold receive buffers: the one in
  // flight and the one queued behind it; the other 38 (4,579 bytes) were copied into two.
  EXPECT_EQ(host_.pool_->available(), poolSize - 2);
  EXPECT_EQ(host_.userPool_.leased(), 2u);
  // The mirror drains: every byte, in order.
  std::string sent;
  while (FakeOp* op = ring().pending(OpKind::Send, mirrorFd)) {
    sent.append(static_cast<const char*>(op->buf), op->len);
    ring().complete(op, static_cast<int32_t>(op->len));
  }
  EXPECT_EQ(sent, all);
  EXPECT_EQ(host_.pool_->available(), poolSize);
  EXPECT_EQ(host_.userPool_.leased(), 0u);
  EXPECT_EQ(stats_->mirrors[0].sentBytes.value(), all.size());
}

TEST_F(SessionTest, RefusedMirrorIsCutAndThePrimaryRelaysOn) {
  configure(1);
  startConnected();
  ring().complete(ring().pending(OpKind::Connect, 100), -ECONNREFUSED);
  EXPECT_EQ(stats_->mirrors[0].cuts.value(), 1u);
  EXPECT_EQ(stats_->mirrors[0].connectErrors.value(), 1u);
  ring().receive(ring().pendingReceive(kClientFd), "abc");
  EXPECT_EQ(ring().pendingCount(OpKind::Send, 100), 0u);
  EXPECT_EQ(ring().pendingCount(OpKind::Send, primaryFd()), 1u);
  EXPECT_EQ(stats_->mirrors[0].droppedBytes.value(), 3u);
}

TEST_F(SessionTest, MirrorStillConnectingQueuesThenSendsInOrder) {
  configure(1);
  startConnected();
  ring().receive(ring().pendingReceive(kClientFd), "one");
  ring().receive(ring().pendingReceive(kClientFd), "two");
  EXPECT_EQ(ring().pendingCount(OpKind::Send, 100), 0u);
  ring().complete(ring().pending(OpKind::Connect, 100), 0);
  FakeOp* send = ring().pending(OpKind::Send, 100);
  ASSERT_NE(send, nullptr);
  EXPECT_EQ(std::string(static_cast<const char*>(send->buf), send->len), "one");
}

TEST_F(SessionTest, AMirrorAskingForAProxyHeaderGetsItBeforeWhatWasQueued) {
  configure(1);
  listenerConfig_.mirrors[0].proxy_protocol = config::ProxyProtocol::V1;
  startConnected();
  ring().receive(ring().pendingReceive(kClientFd), "one");
  ring().complete(ring().pending(OpKind::Connect, 100), 0);
  EXPECT_EQ(host_.sockets_.sent[100], "PROXY TCP4 127.0.0.1 127.0.0.1 40000 40000\r\n");
  FakeOp* send = ring().pending(OpKind::Send, 100);
  ASSERT_NE(send, nullptr);
  EXPECT_EQ(std::string(static_cast<const char*>(send->buf), send->len), "one");
  EXPECT_EQ(host_.sockets_.sent.count(primaryFd()), 0u);  // the pool asked for none
}

TEST_F(SessionTest, AMirrorWhoseProxyHeaderCannotBeSentIsCutAsAFailedConnect) {
  configure(1);
  listenerConfig_.mirrors[0].proxy_protocol = config::ProxyProtocol::V2;
  PeerHealth health;
  context_.mirrorHealth = {&health};
  host_.sockets_.sendResult[100] = -EPIPE;
  startConnected();
  ring().complete(ring().pending(OpKind::Connect, 100), 0);
  EXPECT_EQ(stats_->mirrors[0].cuts.value(), 1u);
  EXPECT_EQ(stats_->mirrors[0].connectErrors.value(), 1u);
  EXPECT_EQ(stats_->mirrors[0].markedDown.value(), 1u);  // max_fails 1: counted toward it
  EXPECT_TRUE(health.down(host_.now()));
  ring().receive(ring().pendingReceive(kClientFd), "abc");
  EXPECT_EQ(ring().pendingCount(OpKind::Send, 100), 0u);
  EXPECT_EQ(ring().pendingCount(OpKind::Send, primaryFd()), 1u);
}

TEST_F(SessionTest, AMirrorThatFailsToConnectIsSkippedBySessionsUntilFailTimeout) {
  configure(1);
  PeerHealth health;
  context_.mirrorHealth = {&health};
  startConnected();
  ring().complete(ring().pending(OpKind::Connect, 100), -ECONNREFUSED);
  EXPECT_EQ(stats_->mirrors[0].connectErrors.value(), 1u);
  EXPECT_EQ(stats_->mirrors[0].markedDown.value(), 1u);
  EXPECT_TRUE(health.down(host_.now()));
  // A second session on the same listener: sampled, but no connect to the mirror at all;
  // its bytes count as dropped.
  auto second = std::make_unique<Session>(host_, context_, kClientFd + 50);
  second->start();
  EXPECT_EQ(ring().pendingCount(OpKind::Connect), 1u);  // its primary only
  EXPECT_EQ(stats_->mirrors[0].sessions.value(), 2u);
  EXPECT_EQ(stats_->mirrors[0].skippedSessions.value(), 1u);
  EXPECT_EQ(stats_->mirrors[0].connectErrors.value(), 1u);
  // fail_timeout (10 s) later the next session tries it again, and a success clears it.
  host_.advance(10'000'000'000ull);
  auto third = std::make_unique<Session>(host_, context_, kClientFd + 60);
  third->start();
  EXPECT_EQ(ring().pendingCount(OpKind::Connect), 3u);  // second's primary, third's two
  EXPECT_EQ(stats_->mirrors[0].skippedSessions.value(), 1u);
  FakeOp* probe = nullptr;
  for (int fd = 100; fd < 110 && probe == nullptr; ++fd) {
    FakeOp* op = ring().pending(OpKind::Connect, fd);
    if (op != nullptr && op->offset == 9000) {
      probe = op;
    }
  }
  ASSERT_NE(probe, nullptr);
  ring().complete(probe, 0);
  EXPECT_FALSE(health.down(host_.now()));
  EXPECT_EQ(stats_->mirrors[0].markedDown.value(), 1u);
}

TEST_F(SessionTest, AFinishedSessionGivesAStillConnectingMirrorOnlyItsConnectTimeout) {
  // Found with a blackholed mirror: once client and server were done, the session
  // waited for the mirror's connect until idle_timeout (1 h), holding its slot.
  configure(1);
  listenerConfig_.idle_timeout = std::chrono::hours(1);
  startConnected();  // the mirror's connect (fd 100) stays pending
  ring().receive(ring().pendingReceive(kClientFd), "tail");
  ring().complete(ring().pending(OpKind::Send, primaryFd()), 4);
  ring().complete(ring().pendingReceive(kClientFd), 0);
  ring().complete(ring().pendingReceive(primaryFd()), 0);
  EXPECT_EQ(host_.done, 0);         // the mirror may still connect and take "tail"
  host_.advance(5'000'000'000ull);  // connect_timeout
  ring().completeCancelled();       // the connect, cancelled by the timer: timed out
  EXPECT_EQ(stats_->mirrors[0].connectErrors.value(), 1u);
  EXPECT_EQ(stats_->mirrors[0].cuts.value(), 1u);
  EXPECT_EQ(stats_->mirrors[0].droppedBytes.value(), 4u);
  EXPECT_EQ(host_.done, 1);
}

TEST_F(SessionTest, FinishedSessionLetsTheMirrorDrainThenClosesIt) {
  configure(1);
  startConnected();
  ring().complete(ring().pending(OpKind::Connect, 100), 0);
  ring().receive(ring().pendingReceive(kClientFd), "tail");
  ring().complete(ring().pending(OpKind::Send, primaryFd()), 4);
  ring().complete(ring().pendingReceive(kClientFd), 0);
  ring().complete(ring().pendingReceive(primaryFd()), 0);
  EXPECT_EQ(host_.done, 0);  // the mirror still has "tail" in flight
  ring().complete(ring().pending(OpKind::Send, 100), 4);
  EXPECT_NE(std::find(host_.sockets_.shutdowns.begin(), host_.sockets_.shutdowns.end(), 100),
            host_.sockets_.shutdowns.end());
  ring().completeCancelled();  // the discard read
  EXPECT_EQ(host_.done, 1);
  EXPECT_FALSE(host_.sockets_.closed.at(100));
  EXPECT_EQ(stats_->mirrors[0].sentBytes.value(), 4u);
  EXPECT_EQ(stats_->mirrors[0].cuts.value(), 0u);
}

TEST_F(SessionTest, HalfSampledMirrorsPickTheSameSessions) {
  // Same percentage -> same decision for every mirror (hash of client address+port).
  configure(2);
  listenerConfig_.mirrors[0].sample_percent = 50;
  listenerConfig_.mirrors[1].sample_percent = 50;
  startConnected();
  const bool first = stats_->mirrors[0].sessions.value() == 1;
  const bool second = stats_->mirrors[1].sessions.value() == 1;
  EXPECT_EQ(first, second);
}

// --- the group path ------------------------------------------------------------------

class GroupPathTest : public SessionTest {
protected:
  void SetUp() override {
    SessionTest::SetUp();
    host_.path = metrics::kGroupPath;
  }
  static void completeMember(FakeOp* group, size_t i, int32_t res) {
    group->members[i].completion->complete(res, 0);
  }
};

TEST_F(GroupPathTest, OneGroupPerChunkWithThePrimaryAndEveryMirrorAsMembers) {
  configure(1);
  startConnected();
  ring().complete(ring().pending(OpKind::Connect, 100), 0);  // the mirror
  // The mirror connected after the relay started: the first chunk went the mainline way.
  ring().receive(ring().pendingReceive(kClientFd), "early");
  ring().complete(ring().pending(OpKind::Send, 100), 5);
  ring().complete(ring().pending(OpKind::Send, primaryFd()), 5);
  // Both drained: the next chunk goes as a group.
  FakeOp* group = ring().pending(OpKind::Group, kClientFd);
  ASSERT_NE(group, nullptr);
  EXPECT_EQ(group->len, kChunk);
  ASSERT_EQ(group->members.size(), 2u);
  EXPECT_EQ(group->members[0].fd, primaryFd());
  EXPECT_TRUE(group->members[0].msgFlags & MSG_WAITALL);
  EXPECT_EQ(group->members[1].fd, 100);
  EXPECT_TRUE(group->members[1].msgFlags & MSG_DONTWAIT);  // never wait for a mirror

  ring().complete(group, 100);  // the leader's CQE comes first
  EXPECT_EQ(stats_->receivedBytes[metrics::kRequest].value(), 105u);
  EXPECT_EQ(stats_->chunks[metrics::kGroupPath].value(), 1u);
  EXPECT_EQ(stats_->chunks[metrics::kMainlinePath].value(), 1u);
  // One send per socket: no new group before the primary's member is back.
  EXPECT_EQ(ring().pendingCount(OpKind::Group, kClientFd), 0u);
  completeMember(group, 1, 100);
  completeMember(group, 0, 100);
  EXPECT_EQ(ring().pendingCount(OpKind::Group, kClientFd), 1u);
  EXPECT_EQ(stats_->upstreams[0].sentBytes.value(), 105u);
  EXPECT_EQ(stats_->mirrors[0].sentBytes.value(), 105u);
}

TEST_F(GroupPathTest, MirrorShortSendCutsOnlyThatMirror) {
  configure(1);
  startConnected();
  ring().complete(ring().pending(OpKind::Connect, 100), 0);
  ring().receive(ring().pendingReceive(kClientFd), "x");
  ring().complete(ring().pending(OpKind::Send, 100), 1);
  ring().complete(ring().pending(OpKind::Send, primaryFd()), 1);
  FakeOp* group = ring().pending(OpKind::Group, kClientFd);
  ring().complete(group, 1000);
  completeMember(group, 1, 400);  // the mirror's socket buffer was full
  EXPECT_EQ(stats_->mirrors[0].cuts.value(), 1u);
  EXPECT_EQ(stats_->mirrors[0].droppedBytes.value(), 600u);
  completeMember(group, 0, 1000);
  FakeOp* next = ring().pending(OpKind::Group, kClientFd);
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(next->members.size(), 1u);  // the primary only
  ring().completeCancelled();
  EXPECT_TRUE(host_.sockets_.closed.at(100));
}

TEST_F(GroupPathTest, LeaderEofCancelsMembersAndTheFinFollowsThem) {
  startConnected();
  FakeOp* group = ring().pending(OpKind::Group, kClientFd);
  ASSERT_NE(group, nullptr);
  ring().complete(group, 0);
  EXPECT_TRUE(host_.sockets_.shutdowns.empty());  // the target's member is still out
  completeMember(group, 0, -ECANCELED);
  ASSERT_EQ(host_.sockets_.shutdowns.size(), 1u);
  EXPECT_EQ(host_.sockets_.shutdowns[0], primaryFd());
}

TEST_F(GroupPathTest, AMirrorStillDrainingMainlineChunksNeverHoldsThePrimary) {
  configure(1);
  startConnected();
  ring().complete(ring().pending(OpKind::Connect, 100), 0);
  ring().receive(ring().pendingReceive(kClientFd), "a");
  ring().complete(ring().pending(OpKind::Send, primaryFd()), 1);
  // The mirror has not taken "a" yet: the primary does not wait, the next chunk goes the
  // mainline way (and queues for the mirror behind "a").
  EXPECT_EQ(ring().pendingCount(OpKind::Group, kClientFd), 0u);
  EXPECT_EQ(ring().pendingReceives(kClientFd), 1u);
}

TEST_F(GroupPathTest, AMirrorOnAUnixSocketTakesItsChunksTheMainlineWay) {
  configure(1);
  listenerConfig_.mirrors[0].address = *config::parseUnixAddress("unix:/run/sink.sock");
  startConnected();
  ring().complete(ring().pending(OpKind::Connect, 100), 0);
  for (const char* chunk : {"a", "b", "c"}) {
    ring().receive(ring().pendingReceive(kClientFd), chunk);
    ring().complete(ring().pending(OpKind::Send, 100), 1);
    ring().complete(ring().pending(OpKind::Send, primaryFd()), 1);
    // Drained, and still no group: its socket buffer is no budget for max_lag.
    EXPECT_EQ(ring().pendingCount(OpKind::Group, kClientFd), 0u);
    EXPECT_EQ(ring().pendingReceives(kClientFd), 1u);
  }
  EXPECT_EQ(stats_->mirrors[0].sentBytes.value(), 3u);
  EXPECT_EQ(stats_->chunks[metrics::kMainlinePath].value(), 3u);
  // The responses, which the mirror does not take, go as groups.
  EXPECT_EQ(ring().pendingCount(OpKind::Group, primaryFd()), 1u);
}

TEST_F(GroupPathTest, EnobufsFromTheKernelFallsBackToMainlineForAMoment) {
  startConnected();
  FakeOp* group = ring().pending(OpKind::Group, kClientFd);
  ring().complete(group, -ENOBUFS);
  completeMember(group, 0, -ECANCELED);
  EXPECT_EQ(ring().pendingReceives(kClientFd), 1u);
  EXPECT_EQ(ring().pendingCount(OpKind::Group, kClientFd), 0u);
}

TEST_F(GroupPathTest, ResetOnTheSourceResetsTheOtherSide) {
  startConnected();
  FakeOp* group = ring().pending(OpKind::Group, kClientFd);
  ring().complete(group, -ECONNRESET);
  completeMember(group, 0, -ECANCELED);
  ring().completeCancelled();
  EXPECT_TRUE(host_.sockets_.closed.at(primaryFd()));
  EXPECT_EQ(host_.done, 1);
}

class RoutedSessionTest : public SessionTest {
protected:
  void SetUp() override {
    SessionTest::SetUp();
    apiConfig_.name = "api";
    apiConfig_.servers.push_back({address("127.0.0.1:8100")});
    apiPool_ = std::make_unique<UpstreamPool>(apiConfig_);
    config::RouteConfig route;
    route.sni = {"api.example.test"};
    route.upstream = "api";
    listenerConfig_.routes = {route};
    stats_ = std::make_unique<metrics::ListenerStats>(0, 1);
    context_.stats = stats_.get();
    routeContext_ = context_;
    routeContext_.upstream = apiPool_.get();
    routeContext_.upstreamUse = 1;
    context_.routed = {&routeContext_};
  }

  Session& begin(const std::string& arrived) {
    host_.sockets_.incoming[kClientFd] = arrived;
    session_ = std::make_unique<Session>(host_, context_, kClientFd);
    session_->start();
    return *session_;
  }

  config::UpstreamConfig apiConfig_;
  std::unique_ptr<UpstreamPool> apiPool_;
  ListenerContext routeContext_;
};

TEST_F(RoutedSessionTest, AClientHelloInPiecesIsWaitedForWholeAndLeftInTheStream) {
  const std::string hello = testing::clientHelloFor("API.example.test") + "more";
  Session& s = begin(hello.substr(0, 3));
  // Nothing connects before the name is known; the poll wakes at the record's header...
  EXPECT_EQ(ring().pendingCount(OpKind::Connect), 0u);
  EXPECT_EQ(host_.sockets_.lowWater.at(kClientFd), 5);
  FakeOp* poll = ring().pending(OpKind::Poll, kClientFd);
  ASSERT_NE(poll, nullptr);
  host_.sockets_.incoming[kClientFd] = hello.substr(0, 20);
  ring().complete(poll, POLLIN);
  // ... then once the whole record is there, not at every segment.
  EXPECT_EQ(host_.sockets_.lowWater.at(kClientFd), static_cast<int>(hello.size() - 4));
  poll = ring().pending(OpKind::Poll, kClientFd);
  ASSERT_NE(poll, nullptr);
  host_.sockets_.incoming[kClientFd] = hello;
  ring().complete(poll, POLLIN);
  EXPECT_EQ(host_.sockets_.lowWater.at(kClientFd), 1);   // back to normal for the relay
  EXPECT_EQ(host_.sockets_.incoming[kClientFd], hello);  // peeked: all of it is relayed
  EXPECT_EQ(&s.listener(), &routeContext_);
  for (const auto& counter : stats_->routeMisses) {
    EXPECT_EQ(counter.value(), 0u);
  }
  FakeOp* connect = ring().pending(OpKind::Connect, 100);
  ASSERT_NE(connect, nullptr);
  ring().complete(connect, 0);
  EXPECT_EQ(stats_->upstreams[1].connectDuration.bucket(0) +
                stats_->upstreams[1].connectDuration.bucket(1),
            1u);
  EXPECT_EQ(stats_->upstreams[0].connectDuration.sum(), 0.0);
}

TEST_F(RoutedSessionTest, OtherNamesAndNonTlsClientsTakeTheListenersPoolAtOnce) {
  Session& s = begin(testing::clientHelloFor("www.example.test"));
  EXPECT_EQ(&s.listener(), &context_);
  EXPECT_NE(ring().pending(OpKind::Connect, 100), nullptr);
  EXPECT_EQ(host_.sockets_.lowWater.count(kClientFd), 0u);  // never raised
  Session& plain = begin("GET / HTTP/1.1\r\n");
  EXPECT_EQ(&plain.listener(), &context_);
  EXPECT_EQ(stats_->routeMisses[metrics::kRouteUnmatched].value(), 1u);
  EXPECT_EQ(stats_->routeMisses[metrics::kRouteNotTls].value(), 1u);
}

TEST_F(RoutedSessionTest, AClientHelloThatStopsIsRoutedByWhatCameAfterConnectTimeout) {
  const std::string hello = testing::clientHelloFor("api.example.test");
  Session& s = begin(hello.substr(0, 10));
  FakeOp* poll = ring().pending(OpKind::Poll, kClientFd);
  ASSERT_NE(poll, nullptr);
  host_.advance(5'500'000'000ull);
  EXPECT_TRUE(poll->cancelRequested);
  ring().completeCancelled();
  EXPECT_EQ(&s.listener(), &context_);
  EXPECT_EQ(host_.sockets_.lowWater.at(kClientFd), 1);
  EXPECT_NE(ring().pending(OpKind::Connect, 100), nullptr);
  EXPECT_FALSE(host_.sockets_.closed.count(kClientFd));
  EXPECT_EQ(stats_->routeMisses[metrics::kRouteTimeout].value(), 1u);
}

TEST_F(RoutedSessionTest, AClientThatClosesHalfWayIsRoutedByWhatItSent) {
  Session& s = begin(testing::clientHelloFor("api.example.test").substr(0, 30));
  FakeOp* poll = ring().pending(OpKind::Poll, kClientFd);
  ASSERT_NE(poll, nullptr);
  ring().complete(poll, POLLIN | POLLRDHUP);
  EXPECT_EQ(&s.listener(), &context_);
  EXPECT_NE(ring().pending(OpKind::Connect, 100), nullptr);
  EXPECT_EQ(host_.sockets_.incoming[kClientFd].size(), 30u);
  EXPECT_EQ(stats_->routeMisses[metrics::kRouteClosed].value(), 1u);
}

TEST_F(RoutedSessionTest, WithoutAnUpstreamOfItsOwnAListenerResetsWhatNoRouteTakes) {
  context_.upstream = nullptr;  // a listener with routes only
  context_.slotQueue = nullptr;
  Session& other = begin(testing::clientHelloFor("www.example.test"));
  EXPECT_TRUE(host_.sockets_.closed.at(kClientFd));  // reset, nothing connected
  EXPECT_EQ(ring().pendingCount(OpKind::Connect), 0u);
  EXPECT_EQ(stats_->routeMisses[metrics::kRouteUnmatched].value(), 1u);
  ASSERT_EQ(host_.troubles.size(), 1u);
  EXPECT_NE(host_.troubles[0].find("asked for \"www.example.test\", which no route has"),
            std::string::npos)
      << host_.troubles[0];
  (void)other;
  Session& api = begin(testing::clientHelloFor("api.example.test"));
  EXPECT_EQ(&api.listener(), &routeContext_);
  EXPECT_NE(ring().pending(OpKind::Connect, 100), nullptr);
}

TEST_F(RoutedSessionTest, AnAlpnRouteTakesTheProtocolsTheClientHelloOffers) {
  config::RouteConfig acme;
  acme.alpn = {"acme-tls/1"};
  acme.upstream = "api";
  listenerConfig_.routes.insert(listenerConfig_.routes.begin(), acme);
  stats_ = std::make_unique<metrics::ListenerStats>(0, 2);
  context_.stats = stats_.get();
  ListenerContext acmeContext = routeContext_;
  acmeContext.stats = stats_.get();
  acmeContext.upstreamUse = 1;
  routeContext_.stats = stats_.get();
  routeContext_.upstreamUse = 2;
  context_.routed = {&acmeContext, &routeContext_};
  Session& challenge = begin(testing::clientHelloFor("api.example.test", {"h2", "acme-tls/1"}));
  EXPECT_EQ(&challenge.listener(), &acmeContext);
  Session& other = begin(testing::clientHelloFor("api.example.test", {"h2"}));
  EXPECT_EQ(&other.listener(), &routeContext_);
}

}  // namespace
}  // namespace grelay::proxy
