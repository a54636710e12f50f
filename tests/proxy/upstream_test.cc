// UpstreamPool: balancing order and passive health (max_fails / fail_timeout).
#include "proxy/upstream.h"

#include <arpa/inet.h>

#include <atomic>
#include <chrono>
#include <map>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "config/loader.h"
#include "proxy/log.h"
#include "proxy/tls_context.h"

namespace grelay::proxy {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kSecond = 1'000'000'000ull;
constexpr uint64_t kStart = 1000 * kSecond;

class UpstreamPoolTest : public ::testing::Test {
protected:
  UpstreamPool& makePool(size_t servers, uint32_t maxFails = 1,
                         config::Balance balance = config::Balance::RoundRobin,
                         std::vector<uint32_t> weights = {}, std::vector<bool> backups = {}) {
    config_.servers.clear();
    for (size_t i = 0; i < servers; ++i) {
      config::Address a;
      auto* in = reinterpret_cast<sockaddr_in*>(&a.storage);
      in->sin_family = AF_INET;
      in->sin_port = htons(static_cast<uint16_t>(8000 + i));
      a.length = sizeof(sockaddr_in);
      config_.servers.push_back({a});
      if (i < weights.size()) {
        config_.servers.back().weight = weights[i];
      }
      if (i < backups.size()) {
        config_.servers.back().backup = backups[i];
      }
    }
    config_.max_fails = maxFails;
    config_.fail_timeout = 10s;
    config_.balance = balance;
    pool_ = std::make_unique<UpstreamPool>(config_);
    return *pool_;
  }

  std::vector<uint32_t> order(uint64_t now) {
    std::vector<uint32_t> out;
    pool_->pickOrder(out, now);
    return out;
  }

  config::UpstreamConfig config_;
  std::unique_ptr<UpstreamPool> pool_;
};

TEST_F(UpstreamPoolTest, RoundRobinRotatesTheFirstServer) {
  makePool(3);
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{0, 1, 2}));
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{1, 2, 0}));
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{2, 0, 1}));
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{0, 1, 2}));
}

TEST_F(UpstreamPoolTest, WeightsSpreadFirstServersSmoothly) {
  makePool(3, 1, config::Balance::RoundRobin, {5, 1, 1});
  // Each server's turns spread over the cycle: 5,1,1 -> a a a b c a a, then again.
  std::vector<uint32_t> firsts;
  for (int i = 0; i < 14; ++i) {
    firsts.push_back(order(kStart)[0]);
  }
  EXPECT_EQ(firsts, (std::vector<uint32_t>{0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 1, 2, 0, 0}));
  // After the first server, the others follow in index order, each once.
  makePool(3, 1, config::Balance::RoundRobin, {1, 2, 1});
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{1, 2, 0}));
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{0, 1, 2}));
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{2, 0, 1}));
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{1, 2, 0}));
}

TEST_F(UpstreamPoolTest, WeightsWithACommonDivisorMakeTheShortestCycle) {
  makePool(2, 1, config::Balance::RoundRobin, {200, 100});
  std::vector<uint32_t> firsts;
  for (int i = 0; i < 6; ++i) {
    firsts.push_back(order(kStart)[0]);
  }
  EXPECT_EQ(firsts, (std::vector<uint32_t>{0, 1, 0, 0, 1, 0}));
}

TEST_F(UpstreamPoolTest, BackupsComeAfterTheOthersAndBeforeServersMarkedDown) {
  UpstreamPool& pool = makePool(4, 1, config::Balance::RoundRobin, {}, {false, true, false, true});
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{0, 2, 1, 3}));
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{2, 0, 3, 1}));
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{0, 2, 1, 3}));
  // Both non-backups dead: sessions go to the backups first, then still try the others.
  EXPECT_TRUE(pool.connectFailed(0, kStart));
  EXPECT_TRUE(pool.connectFailed(2, kStart));
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{3, 1, 2, 0}));
  // A dead backup goes behind everything that is up.
  EXPECT_TRUE(pool.connectFailed(3, kStart));
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{1, 0, 2, 3}));
}

TEST_F(UpstreamPoolTest, LeastConnCountsConnectionsPerUnitOfWeight) {
  UpstreamPool& pool = makePool(3, 1, config::Balance::LeastConn, {3, 1, 1}, {false, false, true});
  for (int i = 0; i < 2; ++i) {
    pool.acquire(0);
  }
  // 2/3 open per unit of weight on 0, none on 1; the backup last though it has none.
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{1, 0, 2}));
  pool.acquire(1);
  // 0: 2/3 < 1: 1/1.
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{0, 1, 2}));
  pool.acquire(0);
  // 3/3 = 1/1: a tie keeps the rotation's order.
  std::vector<uint32_t> first = order(kStart);
  std::vector<uint32_t> second = order(kStart);
  EXPECT_EQ(first.back(), 2u);
  EXPECT_EQ(second.back(), 2u);
}

TEST_F(UpstreamPoolTest, SourceKeepsAClientOnItsServerAndSpreadsClients) {
  UpstreamPool& pool = makePool(3, 1, config::Balance::Source, {2, 1, 1});
  auto client = [](uint8_t last, uint16_t port) {
    sockaddr_storage s{};
    auto* in = reinterpret_cast<sockaddr_in*>(&s);
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = htonl(0x0a000000u | last);
    in->sin_port = htons(port);
    return s;
  };
  std::vector<int> firsts(3, 0);
  for (int c = 0; c < 200; ++c) {
    const uint64_t h = clientHash(client(static_cast<uint8_t>(c), 1000), false);
    EXPECT_EQ(h, clientHash(client(static_cast<uint8_t>(c), 2000), false)) << "port ignored";
    std::vector<uint32_t> first;
    pool.pickOrder(first, kStart, h);
    std::vector<uint32_t> again;
    pool.pickOrder(again, kStart, h);
    EXPECT_EQ(first, again);
    ++firsts[first[0]];
  }
  // Weights 2:1:1 over 200 clients, roughly.
  EXPECT_GT(firsts[0], 70);
  EXPECT_GT(firsts[1], 25);
  EXPECT_GT(firsts[2], 25);
  // Its server down, a client moves to the next one, the same each time.
  const uint64_t h = clientHash(client(7, 1), false);
  std::vector<uint32_t> before;
  pool.pickOrder(before, kStart, h);
  EXPECT_TRUE(pool.connectFailed(before[0], kStart));
  std::vector<uint32_t> after;
  pool.pickOrder(after, kStart, h);
  EXPECT_EQ(after[0], before[1]);
  EXPECT_EQ(after.back(), before[0]);
  EXPECT_NE(clientHash(client(7, 1), true), clientHash(client(7, 2), true));
  EXPECT_EQ(clientHash(sockaddr_storage{}, true), 0u);
}

// balance = "source", hash_type = "consistent": servers identified by address text.
class RingTest : public ::testing::Test {
protected:
  static config::UpstreamConfig ring(const std::vector<std::string>& ids,
                                     std::vector<uint32_t> weights = {}) {
    config::UpstreamConfig c;
    c.name = "app";
    c.balance = config::Balance::Source;
    c.hash_type = config::HashType::Consistent;
    for (size_t i = 0; i < ids.size(); ++i) {
      config::UpstreamServer server;
      server.address.text = ids[i];
      server.weight = i < weights.size() ? weights[i] : 1;
      c.servers.push_back(server);
    }
    return c;
  }
  // The id of the server `client` starts at.
  static std::string owner(UpstreamPool& pool, uint64_t client) {
    std::vector<uint32_t> order;
    pool.pickOrder(order, kStart, client);
    EXPECT_EQ(order.size(), pool.size());
    return pool.config().servers[order[0]].address.text;
  }
  static uint64_t client(uint32_t i) {
    sockaddr_storage s{};
    auto* in = reinterpret_cast<sockaddr_in*>(&s);
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = htonl(0x0a000000u + i);
    return clientHash(s, false);
  }
};

TEST_F(RingTest, ClientsSpreadByWeightAndKeepTheirServer) {
  config::UpstreamConfig c = ring({"a:80", "b:80", "c:80"}, {2, 1, 1});
  UpstreamPool pool(c);
  std::map<std::string, int> count;
  for (uint32_t i = 0; i < 4000; ++i) {
    const std::string first = owner(pool, client(i));
    EXPECT_EQ(owner(pool, client(i)), first);
    ++count[first];
  }
  // 2:1:1 of 4000 is 2000:1000:1000; 160 points per unit of weight keep it within ~20%.
  EXPECT_GT(count["a:80"], 1600);
  EXPECT_GT(count["b:80"], 750);
  EXPECT_GT(count["c:80"], 750);
}

TEST_F(RingTest, RemovingOrAddingAServerMovesOnlyItsClients) {
  config::UpstreamConfig four = ring({"a:80", "b:80", "c:80", "d:80"});
  config::UpstreamConfig three = ring({"a:80", "b:80", "d:80"});  // c removed, d re-indexed
  config::UpstreamConfig five = ring({"a:80", "b:80", "c:80", "d:80", "e:80"});
  UpstreamPool p4(four), p3(three), p5(five);
  int moved = 0, toNew = 0;
  for (uint32_t i = 0; i < 4000; ++i) {
    const std::string before = owner(p4, client(i));
    if (before != "c:80") {
      EXPECT_EQ(owner(p3, client(i)), before) << "client " << i;
    }
    const std::string after = owner(p5, client(i));
    if (after != before) {
      ++moved;
      toNew += after == "e:80";
    }
  }
  // Adding a fifth server takes about a fifth of the clients, all of them to itself.
  EXPECT_EQ(moved, toNew);
  EXPECT_GT(moved, 500);
  EXPECT_LT(moved, 1200);
}

TEST_F(RingTest, TheAddressesOfANamedServerWithAllAddressesEachHaveTheirPoints) {
  // { name = "pods", all_addresses = true }: three addresses of one name. Named by the
  // name alone they would share their points; each has its own, by NAME@IP:PORT.
  auto pods = [](const std::vector<std::string>& ips) {
    config::UpstreamConfig c = ring(ips);
    for (config::UpstreamServer& s : c.servers) {
      s.name = "pods";
      s.all_addresses = true;
      s.host = "pods.svc:80";
    }
    return c;
  };
  config::UpstreamConfig three = pods({"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"});
  config::UpstreamConfig two = pods({"10.0.0.1:80", "10.0.0.3:80"});  // a pod gone
  UpstreamPool p3(three), p2(two);
  std::map<std::string, int> count;
  for (uint32_t i = 0; i < 3000; ++i) {
    const std::string before = owner(p3, client(i));
    ++count[before];
    if (before != "10.0.0.2:80") {
      EXPECT_EQ(owner(p2, client(i)), before) << "client " << i;
    }
  }
  EXPECT_GT(count["10.0.0.1:80"], 700);
  EXPECT_GT(count["10.0.0.2:80"], 700);
  EXPECT_GT(count["10.0.0.3:80"], 700);
}

TEST_F(RingTest, AServerDownSpreadsItsClientsOverTheOthers) {
  config::UpstreamConfig c = ring({"a:80", "b:80", "c:80", "d:80"});
  UpstreamPool pool(c);
  pool.connectFailed(0, kStart);  // "a:80" marked down
  std::map<std::string, int> heirs;
  for (uint32_t i = 0; i < 2000; ++i) {
    std::vector<uint32_t> order;
    pool.pickOrder(order, kStart, client(i));
    EXPECT_EQ(order.back(), 0u);  // the server marked down last
    std::vector<uint32_t> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, (std::vector<uint32_t>{0, 1, 2, 3}));  // each server once
    if (owner(pool, client(i)) != "a:80") {
      ++heirs[c.servers[order[0]].address.text];
    }
  }
  // a's clients go to the next server on the ring, which differs from arc to arc.
  EXPECT_EQ(heirs.size(), 3u);
}

TEST_F(RingTest, NamedServersKeepTheirPlaceWhenTheirAddressChanges) {
  config::UpstreamConfig before = ring({"10.0.0.1:80", "10.0.0.2:80"});
  before.servers[0].name = "one";
  before.servers[1].name = "two";
  config::UpstreamConfig after = before;
  after.servers[0].address.text = "10.0.0.9:80";
  UpstreamPool p1(before), p2(after);
  for (uint32_t i = 0; i < 500; ++i) {
    std::vector<uint32_t> o1, o2;
    p1.pickOrder(o1, kStart, client(i));
    p2.pickOrder(o2, kStart, client(i));
    EXPECT_EQ(o1, o2);
  }
}

TEST_F(UpstreamPoolTest, AServerMarkedDownIsTriedLastUntilFailTimeout) {
  UpstreamPool& pool = makePool(3);
  EXPECT_TRUE(pool.connectFailed(0, kStart));
  EXPECT_TRUE(pool.down(0, kStart));
  // Every session still gets every server, the failed one last.
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{1, 2, 0}));
  EXPECT_EQ(order(kStart + 1), (std::vector<uint32_t>{1, 2, 0}));
  EXPECT_EQ(order(kStart + 2), (std::vector<uint32_t>{2, 1, 0}));
  // fail_timeout later it is back in the rotation.
  EXPECT_TRUE(pool.down(0, kStart + 10 * kSecond - 1));
  EXPECT_FALSE(pool.down(0, kStart + 10 * kSecond));
  EXPECT_EQ(order(kStart + 10 * kSecond), (std::vector<uint32_t>{0, 1, 2}));
  // It failed max_fails times in a row: one more failure marks it down again.
  EXPECT_TRUE(pool.connectFailed(0, kStart + 11 * kSecond));
  EXPECT_TRUE(pool.down(0, kStart + 20 * kSecond));
  EXPECT_FALSE(pool.down(0, kStart + 21 * kSecond));
}

TEST_F(UpstreamPoolTest, MaxFailsCountsConsecutiveFailures) {
  UpstreamPool& pool = makePool(2, 3);
  EXPECT_FALSE(pool.connectFailed(1, kStart));
  EXPECT_FALSE(pool.connectFailed(1, kStart));
  pool.connectSucceeded(1, kStart);  // the streak is broken
  EXPECT_FALSE(pool.connectFailed(1, kStart));
  EXPECT_FALSE(pool.connectFailed(1, kStart));
  EXPECT_FALSE(pool.down(1, kStart));
  EXPECT_TRUE(pool.connectFailed(1, kStart + 1));
  EXPECT_TRUE(pool.down(1, kStart + 1));
  // Failures while down (connects that started before, or a session trying it last)
  // extend the period but do not mark it again.
  EXPECT_FALSE(pool.connectFailed(1, kStart + 5 * kSecond));
  EXPECT_TRUE(pool.down(1, kStart + 14 * kSecond));
  EXPECT_FALSE(pool.down(1, kStart + 15 * kSecond + 1));
  EXPECT_FALSE(pool.down(0, kStart));
}

TEST_F(UpstreamPoolTest, ASuccessBringsAServerBackAtOnce) {
  UpstreamPool& pool = makePool(2);
  ASSERT_TRUE(pool.connectFailed(0, kStart));
  pool.connectSucceeded(0, kStart);  // it answered a session that tried it last
  EXPECT_FALSE(pool.down(0, kStart));
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{0, 1}));
  EXPECT_TRUE(pool.connectFailed(0, kStart));  // a fresh streak of max_fails = 1
}

TEST_F(UpstreamPoolTest, MaxFailsZeroNeverMarksAServerDown) {
  UpstreamPool& pool = makePool(2, 0);
  for (int i = 0; i < 100; ++i) {
    EXPECT_FALSE(pool.connectFailed(0, kStart));
  }
  EXPECT_FALSE(pool.down(0, kStart));
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{0, 1}));
}

TEST_F(UpstreamPoolTest, WhenEveryServerIsDownThePolicyOrderStays) {
  UpstreamPool& pool = makePool(3);
  for (uint32_t s = 0; s < 3; ++s) {
    ASSERT_TRUE(pool.connectFailed(s, kStart));
  }
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{0, 1, 2}));
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{1, 2, 0}));
}

TEST_F(UpstreamPoolTest, LeastConnPutsADownServerLastEvenWithFewestConnections) {
  UpstreamPool& pool = makePool(3, 1, config::Balance::LeastConn);
  pool.acquire(1);
  pool.acquire(1);
  pool.acquire(2);
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{0, 2, 1}));
  ASSERT_TRUE(pool.connectFailed(0, kStart));
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{2, 1, 0}));
}

TEST_F(UpstreamPoolTest, AcquireStopsAtMaxConnsAcrossThreads) {
  UpstreamPool& pool = makePool(2);
  config_.servers[0].max_conns = 100;  // the pool reads its config live
  std::atomic<int> taken{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        if (pool.acquire(0)) {
          taken.fetch_add(1);
        }
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_EQ(taken.load(), 100);
  EXPECT_EQ(pool.activeConnections(0), 100);
  pool.release(0);
  EXPECT_TRUE(pool.acquire(0));
  EXPECT_FALSE(pool.acquire(0));
  for (int i = 0; i < 5000; ++i) {
    EXPECT_TRUE(pool.acquire(1));  // no limit
  }
}

TEST_F(UpstreamPoolTest, ANewSessionWouldWaitOnlyWithAQueueAndEveryServerFullOrOthersWaiting) {
  UpstreamPool& pool = makePool(2);
  config_.servers[0].max_conns = 1;
  config_.servers[1].max_conns = 1;
  const std::vector<uint32_t> both = {0, 1};
  ASSERT_TRUE(pool.acquire(0));
  ASSERT_TRUE(pool.acquire(1));
  EXPECT_FALSE(pool.wouldWait(both));  // no queue_timeout: it would be reset, not wait
  config_.queue_timeout = 1s;
  EXPECT_TRUE(pool.wouldWait(both));
  EXPECT_TRUE(pool.wouldWait({1}));
  EXPECT_FALSE(pool.wouldWait({}));
  pool.release(1);
  EXPECT_FALSE(pool.wouldWait(both));
  EXPECT_TRUE(pool.wouldWait({0}));
  config_.servers[0].max_conns = 0;  // no limit: never full
  EXPECT_FALSE(pool.wouldWait({0}));
  ASSERT_TRUE(pool.enterQueue());  // others wait: a new session waits behind them
  EXPECT_TRUE(pool.wouldWait(both));
  pool.leaveQueue();
  EXPECT_FALSE(pool.wouldWait(both));
}

TEST_F(UpstreamPoolTest, AReloadedPoolKeepsTheHealthOfTheServersItShares) {
  UpstreamPool& old = makePool(3, 2);
  EXPECT_FALSE(old.connectFailed(0, kStart));
  EXPECT_TRUE(old.connectFailed(0, kStart));   // 8000 down until kStart + 10 s
  EXPECT_FALSE(old.connectFailed(2, kStart));  // 8002: one failure of two
  auto oldPool = std::move(pool_);             // refers to config_, which stays as it is
  // The new config drops 8001, keeps 8002 and 8000 (in another order), adds 8003.
  config::UpstreamConfig next = config_;
  next.servers = {config_.servers[2], config_.servers[0]};
  next.servers.push_back(config_.servers[1]);
  auto* in = reinterpret_cast<sockaddr_in*>(&next.servers[2].address.storage);
  in->sin_port = htons(8003);
  UpstreamPool fresh(next);
  fresh.inheritHealth(*oldPool, kStart);
  EXPECT_FALSE(fresh.down(0, kStart));
  EXPECT_TRUE(fresh.down(1, kStart + 10 * kSecond - 1));  // 8000, for the rest of its period
  EXPECT_FALSE(fresh.down(1, kStart + 10 * kSecond));
  EXPECT_FALSE(fresh.down(2, kStart));
  EXPECT_TRUE(fresh.connectFailed(0, kStart));  // 8002's second failure in a row
  // Health checks passed while down (check_passes) keep counting across a reload too.
  EXPECT_EQ(oldPool->checkPassed(0), 1u);
  EXPECT_EQ(oldPool->checkPassed(0), 2u);
  UpstreamPool again(next);
  again.inheritHealth(*oldPool, kStart);
  EXPECT_EQ(again.checkPassed(1), 3u);  // 8000
  again.checkFailed(1);
  EXPECT_EQ(again.checkPassed(1), 1u);
  again.connectSucceeded(1, kStart);  // up: the count starts again
  EXPECT_EQ(again.checkPassed(1), 1u);
  // max_fails = 0 in the new config: nothing is taken over.
  next.max_fails = 0;
  UpstreamPool never(next);
  never.inheritHealth(*oldPool, kStart);
  EXPECT_FALSE(never.down(1, kStart));
}

// How many of `picks` sessions start at each server.
std::map<uint32_t, int> firsts(UpstreamPool& pool, uint64_t now, int picks) {
  std::map<uint32_t, int> count;
  std::vector<uint32_t> out;
  for (int i = 0; i < picks; ++i) {
    pool.pickOrder(out, now);
    EXPECT_EQ(out.size(), pool.size());
    ++count[out[0]];
  }
  return count;
}

TEST_F(UpstreamPoolTest, SlowStartGivesARecoveredServerAGrowingShareOfItsTurns) {
  config_.slow_start = 10s;
  UpstreamPool& pool = makePool(2);
  EXPECT_EQ(pool.rampPermille(0, kStart), 1000u);  // not at start-up
  EXPECT_EQ(pool.serverWeight(0), 1.0);
  EXPECT_TRUE(pool.connectFailed(0, kStart));
  const uint64_t up = kStart + 2 * kSecond;
  pool.connectSucceeded(0, up);            // back before fail_timeout: the ramp starts here
  pool.connectSucceeded(0, up + kSecond);  // a later connect does not restart it
  EXPECT_EQ(pool.rampPermille(0, up), 0u);
  EXPECT_EQ(pool.rampPermille(0, up + 2500 * kSecond / 1000), 250u);
  EXPECT_EQ(pool.rampPermille(0, up + 10 * kSecond), 1000u);
  EXPECT_EQ(pool.rampPermille(1, up), 1000u);
  // Right after it is up it gets nothing, yet every session can still fall back to it.
  EXPECT_EQ(firsts(pool, up, 100), (std::map<uint32_t, int>{{1, 100}}));
  // A quarter of the way: 25 of its 100 turns, evenly; the next server takes the rest.
  std::map<uint32_t, int> quarter = firsts(pool, up + 2500 * kSecond / 1000, 200);
  EXPECT_EQ(quarter[0], 25);
  EXPECT_EQ(quarter[1], 175);
  EXPECT_EQ(firsts(pool, up + 7500 * kSecond / 1000, 200)[0], 75);
  EXPECT_EQ(firsts(pool, up + 10 * kSecond, 200)[0], 100);  // done: its full share
  // Marked down again and back: a new ramp.
  EXPECT_TRUE(pool.connectFailed(0, up + 20 * kSecond));
  pool.connectSucceeded(0, up + 21 * kSecond);
  EXPECT_EQ(pool.rampPermille(0, up + 26 * kSecond), 500u);
}

TEST_F(UpstreamPoolTest, SlowStartAfterAMarkingThatRanOut) {
  config_.slow_start = 10s;
  UpstreamPool& pool = makePool(3, 1, config::Balance::RoundRobin, {2, 1, 1});
  // Early on the clock (not kStart): the gauge below reads the real clock, which must be
  // past the ramp's end even on a machine booted a minute ago.
  const uint64_t start = kSecond;
  EXPECT_TRUE(pool.connectFailed(1, start));
  // fail_timeout is over: a session tries it again and connects; that is when it is up.
  const uint64_t up = start + 30 * kSecond;
  EXPECT_FALSE(pool.down(1, up));
  pool.connectSucceeded(1, up);
  std::map<uint32_t, int> half = firsts(pool, up + 5 * kSecond, 400);
  EXPECT_EQ(half[1], 50);  // half of its 100 turns
  EXPECT_EQ(half[0] + half[2], 350);
  EXPECT_EQ(pool.serverWeight(1), 1.0);  // the gauge reads the clock: past up + 10s
}

TEST_F(UpstreamPoolTest, SlowStartScalesTheWeightLeastConnCounts) {
  config_.slow_start = 10s;
  UpstreamPool& pool = makePool(2, 1, config::Balance::LeastConn);
  EXPECT_TRUE(pool.connectFailed(0, kStart));
  pool.connectSucceeded(0, kStart);
  pool.acquire(0);
  pool.acquire(1);
  pool.acquire(1);
  // At 40%: 1 open / 0.4 = 2.5 per unit of weight on 0, 2 on 1.
  EXPECT_EQ(order(kStart + 4 * kSecond), (std::vector<uint32_t>{1, 0}));
  // At 60%: 1 / 0.6 < 2.
  EXPECT_EQ(order(kStart + 6 * kSecond), (std::vector<uint32_t>{0, 1}));
  // Right after recovery its weight counts as 1/1000, never 0.
  pool.release(0);
  EXPECT_EQ(order(kStart), (std::vector<uint32_t>{0, 1}));
}

TEST_F(UpstreamPoolTest, SlowStartForServersAReloadAddsAndNotWithSource) {
  config_.slow_start = 10s;
  UpstreamPool& old = makePool(2);
  EXPECT_TRUE(old.connectFailed(1, kStart));
  old.connectSucceeded(1, kStart);  // 8001 ramping since kStart
  auto oldPool = std::move(pool_);
  config::UpstreamConfig next = config_;
  next.servers.push_back(config_.servers[1]);
  reinterpret_cast<sockaddr_in*>(&next.servers[2].address.storage)->sin_port = htons(8002);
  UpstreamPool fresh(next);
  fresh.inheritHealth(*oldPool, kStart + 5 * kSecond);
  EXPECT_EQ(fresh.rampPermille(0, kStart + 5 * kSecond), 1000u);  // 8000: it stays as it was
  EXPECT_EQ(fresh.rampPermille(1, kStart + 5 * kSecond), 500u);   // 8001: its ramp goes on
  EXPECT_EQ(fresh.rampPermille(2, kStart + 5 * kSecond), 0u);     // 8002: new, starts now
  EXPECT_EQ(fresh.rampPermille(2, kStart + 15 * kSecond), 1000u);
  // Without max_fails the marking is not taken over, the ramps still are.
  next.max_fails = 0;
  UpstreamPool unmarked(next);
  unmarked.inheritHealth(*oldPool, kStart + 5 * kSecond);
  EXPECT_EQ(unmarked.rampPermille(1, kStart + 5 * kSecond), 500u);
  EXPECT_EQ(unmarked.rampPermille(2, kStart + 5 * kSecond), 0u);
  // balance = "source": a client's server does not depend on load; no slow start.
  next.balance = config::Balance::Source;
  UpstreamPool source(next);
  source.inheritHealth(*oldPool, kStart + 5 * kSecond);
  EXPECT_EQ(source.rampPermille(2, kStart + 5 * kSecond), 1000u);
}

TEST_F(UpstreamPoolTest, EveryPrimaryInSlowStartKeepsTheRotation) {
  config_.slow_start = 10s;
  UpstreamPool& pool = makePool(3, 1, config::Balance::RoundRobin, {}, {false, false, true});
  config::UpstreamConfig next = config_;
  for (auto& server : next.servers) {
    reinterpret_cast<sockaddr_in*>(&server.address.storage)->sin_port =
        htons(ntohs(reinterpret_cast<sockaddr_in*>(&server.address.storage)->sin_port) + 100);
  }
  UpstreamPool fresh(next);
  fresh.inheritHealth(pool, kStart);
  std::vector<uint32_t> out;
  fresh.pickOrder(out, kStart);
  EXPECT_EQ(out, (std::vector<uint32_t>{0, 1, 2}));
  fresh.pickOrder(out, kStart);
  EXPECT_EQ(out, (std::vector<uint32_t>{1, 0, 2}));
}

TEST_F(UpstreamPoolTest, TheWeightGaugeIsZeroWhileMarkedDown) {
  UpstreamPool& pool = makePool(2, 1, config::Balance::RoundRobin, {3, 1});
  EXPECT_EQ(pool.serverWeight(0), 3.0);
  EXPECT_TRUE(pool.connectFailed(0, monotonicNanos()));
  EXPECT_EQ(pool.serverWeight(0), 0.0);
  EXPECT_EQ(pool.serverWeight(1), 1.0);
}

TEST_F(UpstreamPoolTest, AReloadedPoolCountsTheConnectionsTheOldOneStillHolds) {
  UpstreamPool& old = makePool(2, 0, config::Balance::LeastConn);  // max_fails 0 too
  config_.servers[0].max_conns = 1;
  ASSERT_TRUE(old.acquire(0));  // 8000: a session of the old generation holds its slot
  ASSERT_TRUE(old.acquire(1));
  ASSERT_TRUE(old.acquire(1));
  auto oldPool = std::move(pool_);
  // The new config keeps 8001 and 8000 (swapped) and adds 8002.
  config::UpstreamConfig next = config_;
  next.servers = {config_.servers[1], config_.servers[0], config_.servers[1]};
  reinterpret_cast<sockaddr_in*>(&next.servers[2].address.storage)->sin_port = htons(8002);
  ASSERT_TRUE(oldPool->enterQueue());  // a session of the old generation waits for a slot
  UpstreamPool fresh(next);
  fresh.inheritHealth(*oldPool, kStart);
  EXPECT_EQ(fresh.queuedSessions(), 1);      // max_queue counts it in the new one too
  EXPECT_EQ(fresh.activeConnections(0), 2);  // 8001
  EXPECT_EQ(fresh.activeConnections(1), 1);  // 8000
  EXPECT_EQ(fresh.activeConnections(2), 0);
  EXPECT_FALSE(fresh.acquire(1));  // 8000's max_conns counts the old session
  std::vector<uint32_t> out;
  fresh.pickOrder(out, kStart);
  EXPECT_EQ(out, (std::vector<uint32_t>{2, 1, 0}));  // least_conn sees the old load
  oldPool->release(0);  // the old session ends: the new generation sees the slot free
  EXPECT_EQ(fresh.activeConnections(1), 0);
  EXPECT_TRUE(fresh.acquire(1));
  EXPECT_EQ(oldPool->activeConnections(0), 1);
}

TEST_F(UpstreamPoolTest, ConcurrentFailuresMarkAServerDownOnce) {
  UpstreamPool& pool = makePool(2);
  std::atomic<int> marked{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&pool, &marked, t] {
      for (int i = 0; i < 1000; ++i) {
        if (pool.connectFailed(0, kStart + static_cast<uint64_t>(t * 1000 + i))) {
          marked.fetch_add(1);
        }
      }
    });
  }
  for (std::thread& t : threads) {
    t.join();
  }
  EXPECT_EQ(marked.load(), 1);
  EXPECT_TRUE(pool.down(0, kStart + 10 * kSecond));
}

TEST(UpstreamPeerNameTest, OneOfANamesAddressesIsVerifiedAndNamedByTheName) {
  config::UpstreamConfig pool;
  pool.tls.enabled = true;
  pool.tls.verify = true;
  config::UpstreamServer entry;
  entry.address = config::resolveAddresses("localhost:443").at(0);
  std::vector<config::UpstreamServer> servers =
      config::expandServer(entry, {*config::parseAddress("127.0.0.1:443")}, {});
  ASSERT_EQ(servers.size(), 1u);
  EXPECT_EQ(servers[0].address.text, "127.0.0.1:443");
  UpstreamPeerName peer = upstreamPeerName(pool, servers[0]);
  EXPECT_EQ(peer.sni, "localhost");
  EXPECT_EQ(peer.verifyHost, "localhost");
  // A server written as an IP address: no SNI, the address verified.
  config::UpstreamServer ip;
  ip.address = *config::parseAddress("127.0.0.1:443");
  peer = upstreamPeerName(pool, ip);
  EXPECT_EQ(peer.sni, "");
  EXPECT_EQ(peer.verifyHost, "127.0.0.1");
  // A name of hex digits is a name.
  ip.address.text = "cafe.be:443";
  EXPECT_EQ(upstreamPeerName(pool, ip).sni, "cafe.be");
}

TEST(UpstreamPeerNameTest, AUnixSocketServerIsNamedByTlsSniOnly) {
  config::UpstreamConfig pool;
  pool.tls.enabled = true;
  pool.tls.verify = true;
  config::UpstreamServer server;
  server.address = *config::parseUnixAddress("unix:/run/app:443.sock");
  // Without tls.sni (the loader refuses that with verify on): no name, not "unix".
  EXPECT_EQ(upstreamPeerName(pool, server).sni, "");
  EXPECT_EQ(upstreamPeerName(pool, server).verifyHost, "");
  pool.tls.sni = "app.internal";
  EXPECT_EQ(upstreamPeerName(pool, server).sni, "app.internal");
  EXPECT_EQ(upstreamPeerName(pool, server).verifyHost, "app.internal");
}

}  // namespace
}  // namespace grelay::proxy
