#include "proxy/dns_watcher.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_set>

#include "config/loader.h"
#include "proxy/log.h"
#include "proxy/sockets.h"

namespace grelay::proxy {

namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

// Everything the thread touches. It outlives the watcher when stop() leaves the thread in
// a lookup; once `stopped` is set the thread touches nothing else (the counters belong to
// the generation).
struct DnsWatcher::Shared {
  std::vector<DnsTarget> targets;
  Resolve resolve;
  std::mutex mutex;
  std::condition_variable wake;
  bool stopped = false;
  std::vector<bool> failing;  // [target]: its last lookup failed (logged once)
  using Answers = std::vector<config::Address>;
  std::map<size_t, Answers> staged;   // found by the round in progress
  std::map<size_t, Answers> pending;  // target -> its new answers, not yet taken
  std::map<size_t, Answers> moved;    // target -> the move last found (taken or not)
  // [target] with a hold: endpoint key -> when an answer last had it (the addresses in
  // use count as answered when the watcher was made).
  std::vector<std::unordered_map<std::string, Clock::time_point>> seen;
};

namespace {

std::unordered_set<std::string> keysOf(const std::vector<config::Address>& addresses) {
  std::unordered_set<std::string> keys;
  keys.reserve(addresses.size());
  for (const config::Address& a : addresses) {
    keys.insert(config::endpointKey(a));
  }
  return keys;
}

// The same addresses, whatever their order (both lists have no duplicates). A name with
// thousands of addresses is compared at every round: by hash, not pair by pair.
bool sameSet(const std::vector<config::Address>& a, const std::vector<config::Address>& b) {
  if (a.size() != b.size()) {
    return false;
  }
  const std::unordered_set<std::string> keys = keysOf(b);
  return std::all_of(a.begin(), a.end(), [&](const config::Address& x) {
    return keys.contains(config::endpointKey(x));
  });
}

}  // namespace

DnsWatcher::DnsWatcher(std::vector<DnsTarget> targets, Resolve resolve)
    : shared_(std::make_shared<Shared>()) {
  shared_->targets = std::move(targets);
  shared_->failing.assign(shared_->targets.size(), false);
  shared_->seen.resize(shared_->targets.size());
  const Clock::time_point now = Clock::now();
  for (size_t t = 0; t < shared_->targets.size(); ++t) {
    const DnsTarget& target = shared_->targets[t];
    if (target.hold.count() > 0) {
      shared_->seen[t][config::endpointKey(target.current)] = now;
      for (const config::Address& a : target.all) {
        shared_->seen[t][config::endpointKey(a)] = now;
      }
    }
  }
  shared_->resolve =
      resolve ? std::move(resolve) : [](const std::string& text, std::string* error) {
        return config::resolveAddresses(text, error);
      };
}

DnsWatcher::~DnsWatcher() {
  stop();
}

const std::vector<DnsTarget>& DnsWatcher::targets() const {
  return shared_->targets;
}

int DnsWatcher::start() {
  try {
    std::thread(run, shared_).detach();
  } catch (const std::system_error& e) {
    return -(e.code().value() != 0 ? e.code().value() : EAGAIN);
  }
  return 0;
}

void DnsWatcher::stop() {
  std::lock_guard<std::mutex> lock(shared_->mutex);
  shared_->stopped = true;
  shared_->wake.notify_all();
}

void DnsWatcher::carryOver(const DnsWatcher& before) {
  std::lock_guard<std::mutex> lock(before.shared_->mutex);
  const Shared& old = *before.shared_;
  for (size_t t = 0; t < shared_->targets.size(); ++t) {
    const DnsTarget& target = shared_->targets[t];
    for (size_t o = 0; o < old.targets.size() && target.hold.count() > 0; ++o) {
      const DnsTarget& was = old.targets[o];
      if (was.kind != target.kind || was.outer != target.outer || was.inner != target.inner) {
        continue;
      }
      for (auto& [key, at] : shared_->seen[t]) {
        if (auto it = old.seen[o].find(key); it != old.seen[o].end()) {
          at = it->second;
        }
      }
    }
  }
}

void DnsWatcher::lookupNow() {
  for (size_t t = 0; t < shared_->targets.size(); ++t) {
    lookup(*shared_, t);
  }
  publish(*shared_);
}

bool DnsWatcher::hasChanges() const {
  std::lock_guard<std::mutex> lock(shared_->mutex);
  return !shared_->pending.empty();
}

std::vector<DnsChange> DnsWatcher::takeChanges() {
  std::lock_guard<std::mutex> lock(shared_->mutex);
  std::vector<DnsChange> changes;
  for (auto& [target, answers] : shared_->pending) {
    config::Address first = answers.front();
    changes.push_back(DnsChange{target, std::move(first), std::move(answers)});
  }
  shared_->pending.clear();
  return changes;
}

// Detached: the thread holds `shared` and leaves as soon as it sees `stopped`.
void DnsWatcher::run(std::shared_ptr<Shared> shared) {
  std::vector<Clock::time_point> due;
  const Clock::time_point start = Clock::now();
  for (const DnsTarget& t : shared->targets) {
    due.push_back(start + t.interval);
  }
  while (true) {
    std::vector<size_t> now;
    {
      std::unique_lock<std::mutex> lock(shared->mutex);
      if (due.empty()) {
        shared->wake.wait(lock, [&] { return shared->stopped; });
        return;
      }
      const Clock::time_point next = *std::min_element(due.begin(), due.end());
      shared->wake.wait_until(lock, next, [&] { return shared->stopped || Clock::now() >= next; });
      if (shared->stopped) {
        return;
      }
      const Clock::time_point at = Clock::now();
      for (size_t t = 0; t < due.size(); ++t) {
        if (due[t] <= at) {
          now.push_back(t);
        }
      }
    }
    std::vector<bool> looked(due.size(), false);
    bool moved = false;
    for (size_t t : now) {
      moved = lookup(*shared, t) || moved;
      looked[t] = true;
      due[t] = Clock::now() + shared->targets[t].interval;
    }
    if (moved) {
      // One change to the names (a DNS update, a rewritten hosts file) often moves several
      // at once: the others are looked up now, so that their moves go into the same new
      // generation rather than one generation each, an interval apart.
      for (size_t t = 0; t < due.size(); ++t) {
        if (!looked[t]) {
          lookup(*shared, t);
          due[t] = Clock::now() + shared->targets[t].interval;
        }
      }
    }
    publish(*shared);
  }
}

void DnsWatcher::publish(Shared& shared) {
  std::lock_guard<std::mutex> lock(shared.mutex);
  for (auto& [target, answers] : shared.staged) {
    shared.pending[target] = std::move(answers);
  }
  shared.staged.clear();
}

bool DnsWatcher::holdUnanswered(Shared& shared, size_t t, std::vector<config::Address>& answers) {
  const DnsTarget& target = shared.targets[t];
  auto& seen = shared.seen[t];
  const Clock::time_point now = Clock::now();
  std::unordered_set<std::string> answered;
  answered.reserve(answers.size());
  for (const config::Address& a : answers) {
    answered.insert(config::endpointKey(a));
    seen[config::endpointKey(a)] = now;
  }
  const auto recent = [&](const std::string& key) {
    auto it = seen.find(key);
    return it != seen.end() && now - it->second < target.hold;
  };
  bool held = false;
  if (target.all.empty()) {
    const std::string key = config::endpointKey(target.current);
    held = !answered.contains(key) && recent(key);
  } else {
    for (const config::Address& a : target.all) {
      const std::string key = config::endpointKey(a);
      if (!answered.contains(key) && recent(key)) {
        answers.push_back(a);  // still a server, after the answers
        held = true;
      }
    }
  }
  std::erase_if(seen, [&](const auto& entry) { return now - entry.second >= target.hold; });
  return held;
}

bool DnsWatcher::lookup(Shared& shared, size_t t) {
  const DnsTarget& target = shared.targets[t];
  std::string error;
  // Blocks for as long as the resolver takes: outside the lock, so stop() never waits.
  std::vector<config::Address> answers = shared.resolve(target.current.text, &error);
  std::lock_guard<std::mutex> lock(shared.mutex);
  if (shared.stopped) {
    return false;
  }
  target.lookups->inc();
  if (answers.empty()) {
    target.failures->inc();
    if (!shared.failing[t]) {
      shared.failing[t] = true;
      GRELAY_LOG_WARN("DNS: %s (%s): %s; keeping %s", target.current.text.c_str(),
                      target.what.c_str(), error.c_str(),
                      formatAddress(target.current.storage).c_str());
    }
    return false;
  }
  if (shared.failing[t]) {
    shared.failing[t] = false;
    GRELAY_LOG_INFO("DNS: %s (%s) resolves again", target.current.text.c_str(),
                    target.what.c_str());
  }
  if (!target.all.empty() && !target.exclude.empty()) {
    const std::unordered_set<std::string> excluded = keysOf(target.exclude);
    std::erase_if(answers, [&](const config::Address& a) {
      return excluded.contains(config::endpointKey(a));
    });
  }
  bool kept = answers.empty();  // every answer another server's: nothing to change
  bool held = false;            // the address in use, unanswered but within resolve_hold
  if (!kept && target.hold.count() > 0) {
    held = holdUnanswered(shared, t, answers);
  }
  if (!kept) {
    kept = target.all.empty() ? held || std::any_of(answers.begin(), answers.end(),
                                                    [&](const config::Address& a) {
                                                      return a.sameEndpoint(target.current);
                                                    })
                              : sameSet(answers, target.all);
  }
  if (kept) {
    shared.staged.erase(t);  // back to the address in use before the change was taken
    shared.pending.erase(t);
    shared.moved.erase(t);
    return false;
  }
  target.changes->inc();
  // New unless the same move was found before (it waits while older generations finish,
  // or the generation it asked for could not start).
  auto last = shared.moved.find(t);
  const bool known = last != shared.moved.end() &&
                     (target.all.empty() ? last->second.front().sameEndpoint(answers.front())
                                         : sameSet(last->second, answers));
  shared.moved[t] = answers;
  shared.staged[t] = std::move(answers);
  return !known;
}

}  // namespace grelay::proxy
