// Re-resolution of host names (resolve_interval): upstream servers and mirrors written as
// "HOST:PORT" with a name are looked up again, each at its interval, from one thread per
// configuration generation, off the data path. The watcher only reports: when the address
// a generation uses is no longer among a name's answers, it records the first answer and
// the server gives the generation's new sessions that address, in place (sessions already
// open stay where they are), then watches the new addresses with a new watcher. An address still
// among the answers is kept, so a resolver that rotates its answers changes nothing; a failed
// lookup keeps the address in use. When a name moves, every other name is looked up at once and
// their moves are reported together, so one DNS update that moves several names is one move.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "metrics/stats.h"

namespace grelay::proxy {

// One name to look up again.
struct DnsTarget {
  enum class Kind { Server, Mirror };
  Kind kind = Kind::Server;
  size_t outer = 0;         // upstream index (Server) or listener index (Mirror)
  size_t inner = 0;         // the server's `entry` in the pool, or mirror index in the listener
  std::string what;         // for logs: "upstream app, server 0"
  config::Address current;  // in use by the generation; current.text is the HOST:PORT
  config::Duration interval{0};
  metrics::Counter* lookups = nullptr;   // every lookup
  metrics::Counter* failures = nullptr;  // of those: no answer
  metrics::Counter* changes = nullptr;   // of those: `current` not among the answers
  // A server with all_addresses: every address in use (`current` is the first). It moves
  // when the answers are not these addresses, as a set (an address added or gone).
  std::vector<config::Address> all{};
  // With `all`: the pool's other servers. An answer that is one of them is not this
  // server's (the pool has it already), so it is left out before comparing.
  std::vector<config::Address> exclude{};
  // resolve_hold: an address in use that the answers lack is kept until this long after
  // the last answer that had it (so a resolver answering a changing subset moves nothing).
  config::Duration hold{0};
};

// A target whose name no longer resolves to its `current` address (or, with `all`, to
// those addresses).
struct DnsChange {
  size_t target = 0;                       // index into the watcher's targets
  config::Address address;                 // the first answer
  std::vector<config::Address> addresses;  // every answer, in the resolver's order
};

class DnsWatcher {
public:
  // Every address `text` resolves to now (config::resolveAddresses by default); empty with
  // `error` set when it does not resolve.
  using Resolve =
      std::function<std::vector<config::Address>(const std::string& text, std::string* error)>;

  explicit DnsWatcher(std::vector<DnsTarget> targets, Resolve resolve = nullptr);
  ~DnsWatcher();  // stop()
  DnsWatcher(const DnsWatcher&) = delete;
  DnsWatcher& operator=(const DnsWatcher&) = delete;

  const std::vector<DnsTarget>& targets() const;

  // Starts the thread; each target's first lookup is one interval from now (the config
  // was just resolved). 0 or -errno.
  int start();
  // Stops the thread without waiting for a lookup in progress (getaddrinfo cannot be
  // interrupted): from here on the thread touches nothing but its own state, and leaves
  // when the lookup returns. Idempotent.
  void stop();

  // Looks up every target now, on the calling thread, and reports the moves together: what
  // the thread runs when a name moved (for tests).
  void lookupNow();
  // Before start(): the watcher a move replaces saw the addresses this one starts with
  // answered at the times it recorded, which resolve_hold counts from (rather than from
  // now). Targets match by kind and index.
  void carryOver(const DnsWatcher& before);

  // The changes found since the last call, one per target (the latest).
  std::vector<DnsChange> takeChanges();
  // Whether takeChanges() would return any.
  bool hasChanges() const;

private:
  struct Shared;
  static void run(std::shared_ptr<Shared> shared);
  // Looks `target` up and stages a move; true when the move is new (not already pending).
  static bool lookup(Shared& shared, size_t target);
  // resolve_hold: records `answers` as seen now; an address in use that they lack but an
  // answer had within the hold is kept: appended to `answers` (all_addresses), or the
  // return value is true (a single address). Forgets what is older than the hold.
  static bool holdUnanswered(Shared& shared, size_t target, std::vector<config::Address>& answers);
  // Makes the moves staged by a round visible to takeChanges(), all at once.
  static void publish(Shared& shared);

  std::shared_ptr<Shared> shared_;
};

}  // namespace grelay::proxy
