// DnsWatcher with scripted resolver answers: an address still among the answers is kept
// (rotation changes nothing), one that is gone is replaced by the first answer, a failed
// lookup keeps the address in use, each lookup is counted, and the thread looks up at the
// interval and stops without waiting for a lookup in progress.
#include "proxy/dns_watcher.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "proxy/log.h"

namespace grelay::proxy {
namespace {

using namespace std::chrono_literals;

config::Address v4(const char* ip, uint16_t port, const std::string& text) {
  config::Address a;
  sockaddr_in in{};
  in.sin_family = AF_INET;
  in.sin_port = htons(port);
  inet_pton(AF_INET, ip, &in.sin_addr);
  std::memcpy(&a.storage, &in, sizeof(in));
  a.length = sizeof(in);
  a.text = text;
  a.host_name = true;
  return a;
}

std::string ipOf(const config::Address& a) {
  char text[INET_ADDRSTRLEN] = "";
  inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(a.storage).sin_addr, text, sizeof(text));
  return text;
}

// What the scripted resolver answers, per name (empty: the lookup fails).
struct Answers {
  std::mutex mutex;
  std::map<std::string, std::vector<const char*>> ips;
  std::atomic<int> calls{0};

  DnsWatcher::Resolve resolver() {
    return [this](const std::string& text, std::string* error) {
      ++calls;
      std::lock_guard<std::mutex> lock(mutex);
      std::vector<config::Address> out;
      for (const char* ip : ips[text]) {
        out.push_back(v4(ip, 80, text));
      }
      if (out.empty()) {
        *error = "Name or service not known";
      }
      return out;
    };
  }
  void set(const std::string& text, std::vector<const char*> list) {
    std::lock_guard<std::mutex> lock(mutex);
    ips[text] = std::move(list);
  }
};

struct Counters {
  metrics::Counter lookups, failures, changes;
};

DnsTarget target(const char* text, const char* ip, Counters& c, config::Duration interval = 1h) {
  DnsTarget t;
  t.what = std::string("upstream app, server ") + text;
  t.current = v4(ip, 80, text);
  t.interval = interval;
  t.lookups = &c.lookups;
  t.failures = &c.failures;
  t.changes = &c.changes;
  return t;
}

class DnsWatcherTest : public ::testing::Test {
protected:
  void SetUp() override { setLogLevel(LogLevel::Error); }
  void TearDown() override { setLogLevel(LogLevel::Info); }
};

TEST_F(DnsWatcherTest, KeepsAnAddressStillAmongTheAnswersAndReplacesOneThatIsGone) {
  Answers answers;
  Counters a, b;
  DnsWatcher watcher({target("a.test:80", "10.0.0.1", a), target("b.test:80", "10.0.0.2", b)},
                     answers.resolver());
  // a: rotated, still there. b: moved to two new addresses.
  answers.set("a.test:80", {"10.0.0.9", "10.0.0.1"});
  answers.set("b.test:80", {"10.0.0.7", "10.0.0.8"});
  watcher.lookupNow();
  std::vector<DnsChange> changes = watcher.takeChanges();
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].target, 1u);
  EXPECT_EQ(ipOf(changes[0].address), "10.0.0.7");
  EXPECT_EQ(changes[0].address.text, "b.test:80");
  EXPECT_EQ(a.lookups.value(), 1u);
  EXPECT_EQ(a.changes.value(), 0u);
  EXPECT_EQ(b.lookups.value(), 1u);
  EXPECT_EQ(b.changes.value(), 1u);
  EXPECT_TRUE(watcher.takeChanges().empty());  // taken once
}

TEST_F(DnsWatcherTest, AServerWithAllAddressesMovesWhenTheSetOfAnswersChanges) {
  Answers answers;
  Counters a;
  DnsTarget all = target("a.test:80", "10.0.0.1", a);
  all.all = {v4("10.0.0.1", 80, "10.0.0.1:80"), v4("10.0.0.2", 80, "10.0.0.2:80")};
  DnsWatcher watcher({all}, answers.resolver());
  // The same two, in the other order: nothing moved.
  answers.set("a.test:80", {"10.0.0.2", "10.0.0.1"});
  watcher.lookupNow();
  EXPECT_TRUE(watcher.takeChanges().empty());
  // A third address: a move, with every answer.
  answers.set("a.test:80", {"10.0.0.2", "10.0.0.3", "10.0.0.1"});
  watcher.lookupNow();
  std::vector<DnsChange> changes = watcher.takeChanges();
  ASSERT_EQ(changes.size(), 1u);
  ASSERT_EQ(changes[0].addresses.size(), 3u);
  EXPECT_EQ(ipOf(changes[0].address), "10.0.0.2");
  EXPECT_EQ(ipOf(changes[0].addresses[1]), "10.0.0.3");
  // One of the two gone (the other still answered): a move too.
  answers.set("a.test:80", {"10.0.0.1"});
  watcher.lookupNow();
  changes = watcher.takeChanges();
  ASSERT_EQ(changes.size(), 1u);
  ASSERT_EQ(changes[0].addresses.size(), 1u);
  EXPECT_EQ(ipOf(changes[0].address), "10.0.0.1");
  EXPECT_EQ(a.lookups.value(), 3u);
  EXPECT_EQ(a.changes.value(), 2u);
}

TEST_F(DnsWatcherTest, WithAHoldAChangingSubsetMovesNothingUntilAnAddressStaysUnanswered) {
  Answers answers;
  Counters a;
  DnsTarget all = target("a.test:80", "10.0.0.1", a);
  all.all = {v4("10.0.0.1", 80, "10.0.0.1:80"), v4("10.0.0.2", 80, "10.0.0.2:80"),
             v4("10.0.0.3", 80, "10.0.0.3:80")};
  all.hold = 500ms;
  DnsWatcher watcher({all}, answers.resolver());
  // A resolver that answers two of the three, a different two each time: nothing moves.
  answers.set("a.test:80", {"10.0.0.1", "10.0.0.2"});
  watcher.lookupNow();
  answers.set("a.test:80", {"10.0.0.3", "10.0.0.2"});
  watcher.lookupNow();
  EXPECT_TRUE(watcher.takeChanges().empty());
  EXPECT_EQ(a.changes.value(), 0u);
  // A new address moves at once, with those held after the answers.
  answers.set("a.test:80", {"10.0.0.4", "10.0.0.2"});
  watcher.lookupNow();
  std::vector<DnsChange> changes = watcher.takeChanges();
  ASSERT_EQ(changes.size(), 1u);
  std::vector<std::string> ips;
  for (const config::Address& address : changes[0].addresses) {
    ips.push_back(ipOf(address));
  }
  EXPECT_EQ(ips, (std::vector<std::string>{"10.0.0.4", "10.0.0.2", "10.0.0.1", "10.0.0.3"}));
  // Unanswered for longer than the hold, 10.0.0.1 is dropped (10.0.0.3 was answered since).
  std::this_thread::sleep_for(600ms);
  answers.set("a.test:80", {"10.0.0.3", "10.0.0.2"});
  watcher.lookupNow();
  changes = watcher.takeChanges();
  ASSERT_EQ(changes.size(), 1u);
  ASSERT_EQ(changes[0].addresses.size(), 2u);
  EXPECT_EQ(ipOf(changes[0].addresses[0]), "10.0.0.3");
  EXPECT_EQ(ipOf(changes[0].addresses[1]), "10.0.0.2");
}

TEST_F(DnsWatcherTest, WithAHoldASingleAddressStaysWhileAnswersHadItRecently) {
  Answers answers;
  Counters a;
  DnsTarget one = target("a.test:80", "10.0.0.1", a);
  one.hold = 500ms;
  DnsWatcher watcher({one}, answers.resolver());
  // Round-robin DNS answering one address of several at a time: the one in use stays.
  for (const char* ip : {"10.0.0.2", "10.0.0.1", "10.0.0.3"}) {
    answers.set("a.test:80", {ip});
    watcher.lookupNow();
  }
  EXPECT_TRUE(watcher.takeChanges().empty());
  std::this_thread::sleep_for(600ms);
  answers.set("a.test:80", {"10.0.0.2"});
  watcher.lookupNow();
  std::vector<DnsChange> changes = watcher.takeChanges();
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(ipOf(changes[0].address), "10.0.0.2");
}

TEST_F(DnsWatcherTest, TheHoldCountsFromTheAnswersTheReplacedWatcherSaw) {
  Answers answers;
  Counters a;
  DnsTarget all = target("a.test:80", "10.0.0.1", a);
  all.all = {v4("10.0.0.1", 80, "10.0.0.1:80"), v4("10.0.0.2", 80, "10.0.0.2:80")};
  all.hold = 500ms;
  answers.set("a.test:80", {"10.0.0.1"});
  DnsWatcher before({all}, answers.resolver());
  std::this_thread::sleep_for(600ms);
  // A move replaced `before` with `after` just now; 10.0.0.2 was last answered (as far as
  // `before` knows: when it was made) 600 ms ago, past the hold.
  DnsWatcher after({all}, answers.resolver());
  after.carryOver(before);
  after.lookupNow();
  std::vector<DnsChange> changes = after.takeChanges();
  ASSERT_EQ(changes.size(), 1u);
  ASSERT_EQ(changes[0].addresses.size(), 1u);
  EXPECT_EQ(ipOf(changes[0].addresses[0]), "10.0.0.1");
  // Without what `before` saw, the hold would start again at every move.
  DnsWatcher forgetful({all}, answers.resolver());
  forgetful.lookupNow();
  EXPECT_TRUE(forgetful.takeChanges().empty());
}

TEST_F(DnsWatcherTest, AnswersThatAreOtherServersOfThePoolAreNotTaken) {
  Answers answers;
  Counters a;
  DnsTarget all = target("a.test:80", "10.0.0.1", a);
  all.all = {v4("10.0.0.1", 80, "10.0.0.1:80")};
  all.exclude = {v4("10.0.0.9", 80, "10.0.0.9:80")};
  DnsWatcher watcher({all}, answers.resolver());
  answers.set("a.test:80", {"10.0.0.9", "10.0.0.1"});
  watcher.lookupNow();
  answers.set("a.test:80", {"10.0.0.9"});  // only another server's: nothing to take
  watcher.lookupNow();
  EXPECT_TRUE(watcher.takeChanges().empty());
  answers.set("a.test:80", {"10.0.0.9", "10.0.0.2"});
  watcher.lookupNow();
  std::vector<DnsChange> changes = watcher.takeChanges();
  ASSERT_EQ(changes.size(), 1u);
  ASSERT_EQ(changes[0].addresses.size(), 1u);
  EXPECT_EQ(ipOf(changes[0].address), "10.0.0.2");
}

TEST_F(DnsWatcherTest, AFailedLookupKeepsTheAddressAndCounts) {
  Answers answers;
  Counters a;
  DnsWatcher watcher({target("a.test:80", "10.0.0.1", a)}, answers.resolver());
  watcher.lookupNow();  // no answer
  watcher.lookupNow();
  EXPECT_TRUE(watcher.takeChanges().empty());
  EXPECT_EQ(a.lookups.value(), 2u);
  EXPECT_EQ(a.failures.value(), 2u);
  answers.set("a.test:80", {"10.0.0.1"});
  watcher.lookupNow();
  EXPECT_TRUE(watcher.takeChanges().empty());
  EXPECT_EQ(a.lookups.value(), 3u);
  EXPECT_EQ(a.failures.value(), 2u);
  EXPECT_EQ(a.changes.value(), 0u);
}

TEST_F(DnsWatcherTest, AChangeNotYetTakenIsDroppedWhenTheOldAddressComesBack) {
  Answers answers;
  Counters a;
  DnsWatcher watcher({target("a.test:80", "10.0.0.1", a)}, answers.resolver());
  answers.set("a.test:80", {"10.0.0.2"});
  watcher.lookupNow();
  answers.set("a.test:80", {"10.0.0.3"});
  watcher.lookupNow();
  answers.set("a.test:80", {"10.0.0.1"});
  watcher.lookupNow();
  EXPECT_TRUE(watcher.takeChanges().empty());
  answers.set("a.test:80", {"10.0.0.2"});
  watcher.lookupNow();
  answers.set("a.test:80", {"10.0.0.3"});
  watcher.lookupNow();
  std::vector<DnsChange> changes = watcher.takeChanges();
  ASSERT_EQ(changes.size(), 1u);  // the latest answer only
  EXPECT_EQ(ipOf(changes[0].address), "10.0.0.3");
  EXPECT_EQ(a.changes.value(), 4u);
}

TEST_F(DnsWatcherTest, TheThreadLooksUpEachTargetAtItsInterval) {
  Answers answers;
  answers.set("a.test:80", {"10.0.0.1"});
  answers.set("b.test:80", {"10.0.0.5"});
  Counters a, b;
  DnsWatcher watcher(
      {target("a.test:80", "10.0.0.1", a, 20ms), target("b.test:80", "10.0.0.2", b, 1h)},
      answers.resolver());
  ASSERT_EQ(watcher.start(), 0);
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (a.lookups.value() < 5 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
  }
  watcher.stop();
  EXPECT_GE(a.lookups.value(), 5u);
  EXPECT_EQ(b.lookups.value(), 0u);  // not due for an hour
  EXPECT_TRUE(watcher.takeChanges().empty());
}

TEST_F(DnsWatcherTest, AMoveLooksUpTheOtherNamesAtOnceAndReportsThemTogether) {
  Answers answers;
  answers.set("a.test:80", {"10.0.0.1"});
  answers.set("b.test:80", {"10.0.0.2"});
  answers.set("c.test:80", {"10.0.0.3"});
  Counters a, b, c;
  DnsWatcher watcher(
      {target("a.test:80", "10.0.0.1", a, 20ms), target("b.test:80", "10.0.0.2", b, 1h),
       target("c.test:80", "10.0.0.3", c, 1h)},
      answers.resolver());
  ASSERT_EQ(watcher.start(), 0);
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (a.lookups.value() < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(b.lookups.value(), 0u);  // nothing moved: b and c wait for their hour
  // One update moves a and b (c stays): a's next lookup finds it and b is looked up with it.
  answers.set("b.test:80", {"10.0.0.8"});
  answers.set("a.test:80", {"10.0.0.9"});
  while (!watcher.hasChanges() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
  }
  std::vector<DnsChange> changes = watcher.takeChanges();
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_EQ(ipOf(changes[0].address), "10.0.0.9");
  EXPECT_EQ(ipOf(changes[1].address), "10.0.0.8");
  EXPECT_EQ(b.lookups.value(), 1u);
  EXPECT_EQ(c.lookups.value(), 1u);
  EXPECT_EQ(c.changes.value(), 0u);
  // a's next lookups find the same move again (here nobody starts the generation it asks
  // for): reported again, but the other names are not looked up each time.
  const uint64_t seen = a.lookups.value();
  while (a.lookups.value() < seen + 5 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
  }
  watcher.stop();
  EXPECT_EQ(b.lookups.value(), 1u);
  EXPECT_EQ(c.lookups.value(), 1u);
}

TEST_F(DnsWatcherTest, StopDoesNotWaitForALookupInProgress) {
  // Shared with the resolver, which the watcher's thread leaves only after the watcher is
  // gone: it must outlive this test's frame.
  struct Gate {
    std::mutex mutex;
    std::condition_variable cv;
    bool entered = false;
    bool release = false;
    bool left = false;
  };
  auto gate = std::make_shared<Gate>();
  Counters a;
  auto watcher = std::make_unique<DnsWatcher>(
      std::vector<DnsTarget>{target("slow.test:80", "10.0.0.1", a, 1ms)},
      [gate](const std::string& text, std::string*) {
        std::unique_lock<std::mutex> lock(gate->mutex);
        gate->entered = true;
        gate->cv.notify_all();
        gate->cv.wait(lock, [&] { return gate->release; });
        gate->left = true;
        gate->cv.notify_all();
        return std::vector<config::Address>{v4("10.0.0.2", 80, text)};
      });
  ASSERT_EQ(watcher->start(), 0);
  {
    std::unique_lock<std::mutex> lock(gate->mutex);
    ASSERT_TRUE(gate->cv.wait_for(lock, 10s, [&] { return gate->entered; }));
  }
  const auto before = std::chrono::steady_clock::now();
  watcher.reset();  // stops while the resolver blocks
  EXPECT_LT(std::chrono::steady_clock::now() - before, 1s);
  {
    std::unique_lock<std::mutex> lock(gate->mutex);
    gate->release = true;
    gate->cv.notify_all();
    ASSERT_TRUE(gate->cv.wait_for(lock, 10s, [&] { return gate->left; }));
  }
  // The lookup returned after the stop: it must not count into (or report through) what
  // the watcher's owner may already have freed.
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(a.lookups.value(), 0u);
  EXPECT_EQ(a.changes.value(), 0u);
}

}  // namespace
}  // namespace grelay::proxy
