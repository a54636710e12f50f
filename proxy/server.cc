#include "proxy/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <grp.h>
#include <pwd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <future>
#include <iterator>
#include <memory>
#include <optional>
#include <thread>

#include "config/loader.h"
#include "metrics/admin.h"
#include "proxy/dns_watcher.h"
#include "proxy/health_check.h"
#include "proxy/log.h"
#include "proxy/ocsp.h"
#include "proxy/sockets.h"
#include "proxy/tap/layout.h"
#include "proxy/worker.h"

namespace grelay::proxy {
namespace {

constexpr int kBacklog = 4096;

void raiseFileLimit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur == lim.rlim_max) {
    return;
  }
  rlim_t old = lim.rlim_cur;
  lim.rlim_cur = lim.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &lim) == 0) {
    GRELAY_LOG_INFO("raised the open-file limit from %llu to %llu",
                    static_cast<unsigned long long>(old),
                    static_cast<unsigned long long>(lim.rlim_max));
  }
}

// mkdir -p; 0 or -errno.
int makeDirectories(const std::string& path) {
  std::string prefix;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    prefix = path.substr(0, pos);
    if (prefix.empty()) {
      continue;
    }
    if (::mkdir(prefix.c_str(), 0750) != 0 && errno != EEXIST) {
      return -errno;
    }
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return -errno;
  }
  return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

// Creates this worker's tap file of a listener; fd or -errno, *path set either way.
int openTapFile(const config::ListenerConfig& l, uint32_t worker, std::string* path) {
  const std::string& dir = l.tap->path;
  int err = makeDirectories(dir);
  *path = dir;
  if (err < 0) {
    return err;
  }
  // A reload within the second of the previous generation's files takes the next sequence
  // number rather than failing on their name.
  const uint64_t now = tap::tapNowNs();
  for (uint32_t sequence = 0;; ++sequence) {
    *path = dir + "/" +
            tap::tapFileName(l.name, worker, now, static_cast<uint32_t>(getpid()), sequence);
    const int fd = ::open(path->c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (fd >= 0 || errno != EEXIST || sequence == 999) {
      return fd < 0 ? -errno : fd;
    }
  }
}

uint64_t nanos(config::Duration d) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
}

// Switches to `user` (after everything privileged is done). "" = stay.
bool dropPrivileges(const std::string& user, std::string* error) {
  if (user.empty()) {
    return true;
  }
  errno = 0;
  passwd* pw = getpwnam(user.c_str());
  if (pw == nullptr) {
    *error = "[server] user '" + user + "': no such user" +
             (errno != 0 ? std::string(": ") + strerror(errno) : "");
    return false;
  }
  if (geteuid() == pw->pw_uid) {
    return true;
  }
  if (geteuid() != 0) {
    *error = "[server] user '" + user + "': only root can switch users (running as uid " +
             std::to_string(geteuid()) + ")";
    return false;
  }
  if (initgroups(pw->pw_name, pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0 ||
      setuid(pw->pw_uid) != 0) {
    *error = "[server] user '" + user + "': cannot switch: " + strerror(errno);
    return false;
  }
  if (setuid(0) == 0) {
    *error = "[server] user '" + user + "': root privileges could be regained; refusing to run";
    return false;
  }
  GRELAY_LOG_INFO("running as user %s (uid %u, gid %u)", pw->pw_name,
                  static_cast<unsigned>(pw->pw_uid), static_cast<unsigned>(pw->pw_gid));
  return true;
}

// The sockets among `fds` (workers that shared a socket hold duplicates of one fd).
std::vector<int> distinctSockets(const std::vector<int>& fds) {
  std::vector<int> out;
  std::vector<ino_t> seen;
  for (int fd : fds) {
    struct stat st {};
    if (::fstat(fd, &st) == 0) {
      if (std::find(seen.begin(), seen.end(), st.st_ino) != seen.end()) {
        continue;
      }
      seen.push_back(st.st_ino);
    }
    out.push_back(fd);
  }
  return out;
}

uint16_t portOf(const config::Address& a) {
  return ntohs(a.family() == AF_INET6 ? reinterpret_cast<const sockaddr_in6*>(&a.storage)->sin6_port
                                      : reinterpret_cast<const sockaddr_in*>(&a.storage)->sin_port);
}

std::string joinAddresses(const std::vector<config::Address>& addresses) {
  std::string text;
  for (const config::Address& a : addresses) {
    text += (text.empty() ? "" : ", ") + formatAddress(a.storage);
  }
  return text;
}

// A server with all_addresses whose name has other addresses now: the servers expanded
// from its entry are replaced, in place, by one per answer (an answer that is another
// server of the pool is left out; if every one is, the entry keeps its addresses and
// false is returned).
bool moveAllAddresses(config::UpstreamConfig& pool, const DnsTarget& target,
                      const DnsChange& change) {
  auto ofEntry = [&](const config::UpstreamServer& s) { return s.entry == target.inner; };
  auto at = std::find_if(pool.servers.begin(), pool.servers.end(), ofEntry);
  if (at == pool.servers.end()) {
    return false;
  }
  const config::UpstreamServer entry = *at;
  std::vector<config::UpstreamServer> others;
  std::copy_if(pool.servers.begin(), pool.servers.end(), std::back_inserter(others),
               [&](const config::UpstreamServer& s) { return !ofEntry(s); });
  std::vector<config::UpstreamServer> moved = config::expandServer(entry, change.addresses, others);
  if (moved.empty()) {
    GRELAY_LOG_WARN(
        "DNS: %s (%s) now resolves to %s, all of them other servers of the pool; "
        "keeping %s",
        target.current.text.c_str(), target.what.c_str(), joinAddresses(change.addresses).c_str(),
        joinAddresses(target.all).c_str());
    return false;
  }
  GRELAY_LOG_INFO("DNS: %s (%s) now resolves to %s, not %s", target.current.text.c_str(),
                  target.what.c_str(), joinAddresses(change.addresses).c_str(),
                  joinAddresses(target.all).c_str());
  const size_t position = static_cast<size_t>(at - pool.servers.begin());
  others.insert(others.begin() + static_cast<std::ptrdiff_t>(position),
                std::make_move_iterator(moved.begin()), std::make_move_iterator(moved.end()));
  pool.servers = std::move(others);
  return true;
}

// One configuration's workers, sockets, TLS contexts and stats. A reload starts a new
// generation; the old one drains and is retired when its last session is gone.
struct Generation {
  // `base`: the configuration it started with (the runtime's). `config`: the same with the
  // addresses DNS moves have applied since (Runtime::routes()'s): what a reload starts
  // from, and what the stats registry knows the generation by.
  std::shared_ptr<const config::Config> base;
  std::shared_ptr<const config::Config> config;
  config::RelayPath path = config::RelayPath::Mainline;
  uint32_t workerCount = 1;
  std::unique_ptr<Runtime> runtime;
  std::shared_ptr<TlsContexts> tls;
  std::vector<std::unique_ptr<metrics::WorkerStats>> stats;
  std::vector<std::unique_ptr<metrics::UpstreamStats>> upstreamStats;  // [upstream]
  // Pools with check_interval (the current routes'); destroyed (stopped) before the
  // runtime's pools. Both are built anew when a DNS move changes the routes.
  std::unique_ptr<HealthChecker> checker;
  // Host names with resolve_interval; stopped before the stats it counts in are freed.
  std::unique_ptr<DnsWatcher> dns;
  // [worker][listener] -> that worker's sockets for the listener, until the workers own them.
  std::vector<std::vector<std::vector<int>>> listenFds;
  // [listener] -> every socket of the listener (one or more per worker), owned by the
  // workers: what the next reload's generation inherits.
  std::vector<std::vector<int>> handover;
  // [listener]: the previous generation's listener whose sockets this one took over, or -1.
  std::vector<int> inheritedFrom;
  std::vector<std::vector<TapFile>> tapFiles;
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<std::thread> threads;
  std::atomic<uint32_t> running{0};
  bool draining = false;
  uint64_t deadline = 0;  // 0 = drain without a deadline (a reload's old generation)

  ~Generation() {
    for (auto& t : threads) {
      if (t.joinable()) {
        t.join();
      }
    }
    workers.clear();
    for (auto& perListener : listenFds) {
      for (auto& fds : perListener) {
        for (int f : fds) {
          ::close(f);
        }
      }
    }
    for (auto& ts : tapFiles) {
      for (auto& t : ts) {
        if (t.fd >= 0) {
          ::close(t.fd);
        }
      }
    }
  }

  void wakeAll() {
    for (auto& w : workers) {
      w->wake();
    }
  }
  // A draining generation's pools take no new sessions: their checks and lookups stop.
  void stopChecks() {
    if (checker) {
      checker->stop();
    }
    if (dns) {
      dns->stop();
    }
  }
  void drain(uint64_t until) {
    stopChecks();
    draining = true;
    deadline = until;
    runtime->draining = true;
    wakeAll();
  }
  // After drain(): true once the workers have closed their listening sockets (what their
  // accepts had taken meanwhile is served), false if that took longer than `limit`.
  bool waitAcceptsStopped(std::chrono::milliseconds limit) const {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (runtime->openListenSockets.load() > 0) {
      if (std::chrono::steady_clock::now() >= until) {
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
  }
  void abort() {
    stopChecks();
    runtime->draining = true;
    runtime->aborting = true;
    wakeAll();
  }
};

// The pools of `gen`'s current routes that have check_interval, in configuration order.
std::vector<HealthChecker::Pool> checkedPools(Generation& gen) {
  const std::shared_ptr<const Routes> routes = gen.runtime->routes();
  std::vector<HealthChecker::Pool> checked;
  for (size_t u = 0; u < gen.config->upstreams.size(); ++u) {
    if (gen.config->upstreams[u].check_interval.count() > 0) {
      checked.push_back({routes->upstreams[u], gen.upstreamStats[u].get(), gen.tls->upstream(u)});
    }
  }
  return checked;
}

// The DNS watcher of `gen` (not started): its host names with resolve_interval, as its
// configuration has them now (so a name is looked up again one interval after it moved).
void buildDnsWatcher(Generation& gen) {
  const std::shared_ptr<const config::Config>& cfg = gen.config;
  std::vector<DnsTarget> names;
  for (size_t u = 0; u < cfg->upstreams.size(); ++u) {
    const config::UpstreamConfig& pool = cfg->upstreams[u];
    metrics::UpstreamStats& stats = *gen.upstreamStats[u];
    for (size_t s = 0; s < pool.servers.size() && pool.resolve_interval.count() > 0; ++s) {
      const config::UpstreamServer& server = pool.servers[s];
      if (!server.address.host_name ||
          (s > 0 && server.all_addresses && pool.servers[s - 1].entry == server.entry)) {
        continue;  // an IP address, or an address of an entry already watched
      }
      DnsTarget target{DnsTarget::Kind::Server,
                       u,
                       server.entry,
                       "upstream " + pool.name + ", server " +
                           (server.name.empty() ? std::to_string(server.entry) : server.name),
                       server.address,
                       pool.resolve_interval,
                       &stats.dnsLookups,
                       &stats.dnsFailures,
                       &stats.dnsChanges};
      target.hold = pool.resolve_hold;
      if (server.all_addresses) {
        for (size_t e = s; e < pool.servers.size() && pool.servers[e].entry == server.entry; ++e) {
          target.all.push_back(pool.servers[e].address);
        }
        target.current.text = server.host;  // what is looked up
        for (const config::UpstreamServer& other : pool.servers) {
          if (other.entry != server.entry) {
            target.exclude.push_back(other.address);
          }
        }
      }
      names.push_back(std::move(target));
    }
  }
  for (size_t l = 0; l < cfg->listeners.size(); ++l) {
    const config::ListenerConfig& listener = cfg->listeners[l];
    for (size_t m = 0; m < listener.mirrors.size(); ++m) {
      const config::MirrorConfig& mirror = listener.mirrors[m];
      if (mirror.resolve_interval.count() > 0 && mirror.address.host_name) {
        metrics::MirrorStats& stats = gen.stats[0]->listeners[l]->mirrors[m];
        names.push_back({DnsTarget::Kind::Mirror, l, m,
                         "listener " + listener.name + ", mirror " + mirror.name, mirror.address,
                         mirror.resolve_interval, &stats.dnsLookups, &stats.dnsFailures,
                         &stats.dnsChanges});
        names.back().hold = mirror.resolve_hold;
      }
    }
  }
  if (!names.empty()) {
    gen.dns = std::make_unique<DnsWatcher>(std::move(names));
  }
}

// The health checker and DNS watcher of `gen`'s current routes (not started).
void buildWatchers(Generation& gen) {
  std::vector<HealthChecker::Pool> checked = checkedPools(gen);
  if (!checked.empty()) {
    gen.checker = std::make_unique<HealthChecker>(std::move(checked));
  }
  buildDnsWatcher(gen);
}

// Starts what buildWatchers() built, each even if the other cannot start: 0, or the first
// -errno with *what saying which thread failed.
int startWatchers(Generation& gen, const char** what) {
  int err = gen.checker ? gen.checker->start() : 0;
  if (err < 0) {
    *what = "health-check";
  }
  if (int dnsErr = gen.dns ? gen.dns->start() : 0; dnsErr < 0 && err == 0) {
    err = dnsErr;
    *what = "DNS";
  }
  return err;
}

// Builds everything a configuration needs before any worker runs; on failure returns
// nullptr with *error set and leaves nothing open. `previous` hands over its listening
// sockets for addresses it shares with `cfg` (they are dup'ed: both generations accept
// from the same socket until the previous one stops).
// Every source_address can be bound here: one this host does not have would fail every
// connect of its pool or mirror, so it fails the start (or the reload) instead.
bool sourceAddressesUsable(const config::Config& cfg, std::string* error) {
  auto usable = [error](const std::optional<config::Address>& source, const config::Location& where,
                        const std::string& what) {
    if (!source) {
      return true;
    }
    const int fd = ::socket(source->family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int err = fd < 0 ? -errno : bindSourceAddress(fd, *source);
    if (fd >= 0) {
      ::close(fd);
    }
    if (err == 0) {
      return true;
    }
    *error = where.file + ":" + std::to_string(where.line) + ":" + std::to_string(where.column) +
             ": " + what + ": source_address " + source->text +
             " cannot be used on this host: " + std::strerror(-err);
    return false;
  };
  for (const config::UpstreamConfig& u : cfg.upstreams) {
    if (!usable(u.source_address, u.location, "upstream " + u.name)) {
      return false;
    }
  }
  for (const config::ListenerConfig& l : cfg.listeners) {
    for (const config::MirrorConfig& m : l.mirrors) {
      if (!usable(m.source_address, m.location, "listener " + l.name + ": mirror " + m.name)) {
        return false;
      }
    }
  }
  return true;
}

std::unique_ptr<Generation> buildGeneration(std::shared_ptr<const config::Config> cfg,
                                            const relay::Features& features,
                                            const Generation* previous, int* exitCode,
                                            std::string* error) {
  auto gen = std::make_unique<Generation>();
  gen->base = cfg;
  gen->config = cfg;
  *exitCode = kExitConfig;
  config::RelayPath path = cfg->server.relay_path;
  if (path == config::RelayPath::Auto) {
    path = features.autoPath();
  } else if (std::string missing = features.pathMissing(path); !missing.empty()) {
    *error = cfg->path + ": relay_path = \"" + config::toString(path) +
             "\" is not available on this kernel (" + features.kernelRelease + "): " + missing;
    return nullptr;
  }
  gen->path = path;
  gen->runtime = std::make_unique<Runtime>(*cfg);
  gen->runtime->path = path;
  const std::shared_ptr<const Routes> routes = gen->runtime->routes();
  if (previous != nullptr) {
    // Servers and mirrors marked down stay down across a reload (servers by pool name and
    // address, mirrors by listener name, mirror name and address); per-client session
    // counts carry on by listener name. The previous generation's routes are its
    // configuration as DNS moves left it (previous->config).
    const std::shared_ptr<const Routes> was = previous->runtime->routes();
    for (size_t u = 0; u < cfg->upstreams.size(); ++u) {
      for (size_t p = 0; p < previous->config->upstreams.size(); ++p) {
        if (previous->config->upstreams[p].name == cfg->upstreams[u].name) {
          routes->upstreams[u]->inheritHealth(*was->upstreams[p], monotonicNanos());
        }
      }
    }
    for (size_t l = 0; l < cfg->listeners.size(); ++l) {
      for (size_t p = 0; p < previous->config->listeners.size(); ++p) {
        const config::ListenerConfig& before = previous->config->listeners[p];
        if (before.name != cfg->listeners[l].name) {
          continue;
        }
        // Per-client counts go on: a client's sessions on the old generation still count.
        auto& limit = gen->runtime->clientLimits[l];
        if (limit != nullptr && previous->runtime->clientLimits[p] != nullptr) {
          const uint32_t value = limit->limit();
          limit = previous->runtime->clientLimits[p];
          limit->setLimit(value);
        }
        // And each client's connection rate: a reload gives no client a fresh burst.
        auto& clientRate = gen->runtime->clientRates[l];
        if (clientRate != nullptr && previous->runtime->clientRates[p] != nullptr) {
          const uint32_t value = clientRate->rate();
          clientRate = previous->runtime->clientRates[p];
          clientRate->setRate(value);
        }
        // So does the connection rate's pacing: a reload opens no fresh burst.
        auto& rate = gen->runtime->acceptRates[l];
        if (rate != nullptr && previous->runtime->acceptRates[p] != nullptr) {
          const uint32_t value = rate->perSecond();
          rate = previous->runtime->acceptRates[p];
          rate->setRate(value, RateLimiter::defaultBurst(value));
        }
        const auto& mirrors = cfg->listeners[l].mirrors;
        for (size_t m = 0; m < mirrors.size(); ++m) {
          for (size_t q = 0; q < before.mirrors.size(); ++q) {
            if (before.mirrors[q].name == mirrors[m].name &&
                before.mirrors[q].address.sameEndpoint(mirrors[m].address)) {
              routes->mirrorHealth[l][m]->copyFrom(*was->mirrorHealth[p][q]);
            }
          }
        }
      }
    }
  }
  gen->runtime->splice = cfg->server.splice && features.splice;
  if (cfg->server.splice && !features.splice && path == config::RelayPath::Mainline &&
      previous == nullptr) {
    GRELAY_LOG_WARN(
        "splice(2) from a socket into a pipe does not work here (a seccomp "
        "profile?): every direction stays on RECV/SEND");
  }

  gen->tls = std::make_shared<TlsContexts>();
  std::vector<std::string> tlsErrors;
  std::vector<std::string> tlsWarnings;
  const bool tlsBuilt = gen->tls->build(*cfg, features.ktls, &tlsErrors, &tlsWarnings);
  for (const std::string& w : tlsWarnings) {
    GRELAY_LOG_WARN("%s", w.c_str());
  }
  if (!tlsBuilt) {
    *error = tlsErrors.front();
    for (size_t i = 1; i < tlsErrors.size(); ++i) {
      *error += "\n" + tlsErrors[i];
    }
    return nullptr;
  }
  gen->runtime->tls = gen->tls.get();
  if (!sourceAddressesUsable(*cfg, error)) {
    return nullptr;
  }

  uint32_t workers = cfg->server.workers;
  if (workers == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    workers = n > 0 ? static_cast<uint32_t>(n) : 1;
  }
  gen->workerCount = workers;
  gen->runtime->workers = workers;

  gen->listenFds.assign(workers, std::vector<std::vector<int>>(cfg->listeners.size()));
  gen->tapFiles.resize(workers);
  // The addresses are checked, then the files opened, then the sockets: a generation that
  // cannot have them all fails before it has a listening socket (so no client connects to
  // a grelay about to exit, or on a reload to sockets about to close) and before it
  // creates a tap file.
  for (const config::ListenerConfig& l : cfg->listeners) {
    int inherited = -1;
    if (previous != nullptr) {
      for (size_t pi = 0; pi < previous->config->listeners.size(); ++pi) {
        if (previous->config->listeners[pi].listen.sameEndpoint(l.listen)) {
          inherited = static_cast<int>(pi);
        }
      }
    }
    gen->inheritedFrom.push_back(inherited);
    if (inherited < 0) {
      if (int err = addressFree(l.listen); err < 0) {
        *error =
            "listener " + l.name + ": cannot listen on " + l.listen.text + ": " + strerror(-err);
        return nullptr;
      }
    }
  }
  for (size_t li = 0; li < cfg->listeners.size(); ++li) {
    const config::ListenerConfig& l = cfg->listeners[li];
    if (l.access_log.empty()) {
      continue;
    }
    // "-": grelay's standard output (a container's log), used as it is: reopening it by
    // /dev/stdout fails for an unprivileged user on a pipe the runtime made.
    int fd = l.access_log == "-"
                 ? ::fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3)
                 : ::open(l.access_log.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
      *error = "listener " + l.name + ": cannot open access log " +
               (l.access_log == "-" ? std::string("- (standard output)") : l.access_log) + ": " +
               strerror(errno);
      return nullptr;
    }
    gen->runtime->accessLogFds[li] = fd;
  }
  for (uint32_t w = 0; w < workers; ++w) {
    for (const auto& l : cfg->listeners) {
      TapFile tap;
      if (l.tap) {
        tap.fd = openTapFile(l, w, &tap.path);
        if (tap.fd < 0) {
          *error = "listener " + l.name + ": cannot create tap file " + tap.path + ": " +
                   strerror(-tap.fd);
          return nullptr;
        }
      }
      gen->tapFiles[w].push_back(std::move(tap));
    }
  }
  for (size_t li = 0; li < cfg->listeners.size(); ++li) {
    const config::ListenerConfig& l = cfg->listeners[li];
    const int inherited = gen->inheritedFrom[li];
    // An inherited listener keeps every socket of its SO_REUSEPORT group: closing one would
    // reset the connections waiting in its accept queue. With fewer workers than sockets,
    // worker w accepts on sockets w, w + workers, ...; with more, the extra workers share
    // them (a new socket might not be allowed to join the group once root is dropped).
    const std::vector<int> old =
        inherited >= 0 ? distinctSockets(previous->handover[static_cast<size_t>(inherited)])
                       : std::vector<int>{};
    const size_t count = std::max<size_t>(workers, old.size());
    for (size_t k = 0; k < count; ++k) {
      int fd;
      if (!old.empty()) {
        fd = ::fcntl(old[k % old.size()], F_DUPFD_CLOEXEC, 0);
        fd = fd < 0 ? -errno : fd;
      } else {
        fd = openListener(l.listen, kBacklog);
      }
      if (fd < 0) {
        *error =
            "listener " + l.name + ": cannot listen on " + l.listen.text + ": " + strerror(-fd);
        return nullptr;
      }
      gen->listenFds[k % workers][li].push_back(fd);
    }
  }
  for (uint32_t w = 0; w < workers; ++w) {
    auto ws = std::make_unique<metrics::WorkerStats>();
    for (const auto& l : cfg->listeners) {
      ws->listeners.push_back(
          std::make_unique<metrics::ListenerStats>(l.mirrors.size(), l.routes.size()));
    }
    gen->stats.push_back(std::move(ws));
  }
  for (size_t u = 0; u < cfg->upstreams.size(); ++u) {
    gen->upstreamStats.push_back(std::make_unique<metrics::UpstreamStats>());
    gen->upstreamStats.back()->view = routes->upstreams[u].get();
  }
  buildWatchers(*gen);
  *exitCode = kExitOk;
  return gen;
}

// Starts the generation's workers; on failure stops what started and returns an exit code.
int startGeneration(Generation& gen, std::string* error) {
  for (uint32_t w = 0; w < gen.workerCount; ++w) {
    gen.workers.push_back(std::make_unique<Worker>(*gen.runtime, w, *gen.stats[w], gen.listenFds[w],
                                                   std::move(gen.tapFiles[w])));
  }
  gen.tapFiles.clear();
  // The workers own the sockets now; the numbers stay known for a reload's hand-over.
  gen.handover.assign(gen.config->listeners.size(), {});
  for (const auto& perListener : gen.listenFds) {
    for (size_t li = 0; li < perListener.size(); ++li) {
      gen.handover[li].insert(gen.handover[li].end(), perListener[li].begin(),
                              perListener[li].end());
    }
  }
  gen.listenFds.clear();
  int startError = 0;
  for (uint32_t w = 0; w < gen.workerCount && startError == 0; ++w) {
    std::promise<int> ready;
    std::future<int> result = ready.get_future();
    gen.running.fetch_add(1);
    gen.threads.emplace_back([&gen, w, p = std::move(ready)]() mutable {
      gen.workers[w]->run(p);
      gen.running.fetch_sub(1);
    });
    startError = result.get();
  }
  if (startError == 0) {
    const char* what = "";
    if (int err = startWatchers(gen, &what); err < 0) {
      *error = std::string("cannot start the ") + what + " thread: " + strerror(-err);
      gen.abort();
      for (auto& t : gen.threads) {
        t.join();
      }
      gen.threads.clear();
      return kExitConfig;
    }
  }
  if (startError == 0) {
    return kExitOk;
  }
  const bool noUring = startError == -EPERM || startError == -ENOSYS || startError == -EACCES;
  *error = std::string("cannot start worker: ") +
           (noUring ? relay::explainSetupError(startError) : strerror(-startError));
  gen.abort();
  for (auto& t : gen.threads) {
    t.join();
  }
  gen.threads.clear();
  return noUring ? kExitNoUring : kExitConfig;
}

// SIGUSR1 (logrotate's postrotate): every access log of the generation is opened anew at
// its path and put in place of the old file under the same descriptor (dup2), so a worker
// writing at that moment finishes on the old file and its next write goes to the new
// one. On failure the old file stays in use: nothing is lost.
void reopenAccessLogs(Generation& gen) {
  const config::Config& cfg = *gen.config;
  for (size_t li = 0; li < cfg.listeners.size(); ++li) {
    const int fd = gen.runtime->accessLogFds[li];
    if (fd < 0) {
      continue;
    }
    const std::string& path = cfg.listeners[li].access_log;
    if (path == "-") {
      continue;  // standard output: nothing to reopen
    }
    int fresh = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fresh < 0) {
      GRELAY_LOG_ERROR("SIGUSR1: cannot reopen access log %s: %s; still writing the old file",
                       path.c_str(), strerror(errno));
      continue;
    }
    if (::dup3(fresh, fd, O_CLOEXEC) < 0) {
      GRELAY_LOG_ERROR("SIGUSR1: cannot reopen access log %s: %s; still writing the old file",
                       path.c_str(), strerror(errno));
    } else {
      GRELAY_LOG_INFO("SIGUSR1: reopened access log %s (listener %s)", path.c_str(),
                      cfg.listeners[li].name.c_str());
    }
    ::close(fresh);
  }
}

void logGeneration(const Generation& gen) {
  for (const auto& l : gen.config->listeners) {
    std::string routes;
    for (const config::RouteConfig& r : l.routes) {
      // "api.example.com (+1)", "alpn acme-tls/1", or both: enough to tell the routes apart.
      auto first = [](const std::vector<std::string>& list) {
        return list.front() +
               (list.size() > 1 ? " (+" + std::to_string(list.size() - 1) + ")" : "");
      };
      std::string what = r.sni.empty() ? "" : first(r.sni);
      if (!r.alpn.empty()) {
        what += (what.empty() ? "alpn " : " alpn ") + first(r.alpn);
      }
      routes += ", " + what + " -> " + r.upstream;
    }
    GRELAY_LOG_INFO("listener %s on %s -> upstream %s%s (%zu mirror%s%s%s)", l.name.c_str(),
                    l.listen.text.c_str(),
                    l.upstream.empty() ? "(none: other names are reset)" : l.upstream.c_str(),
                    routes.c_str(), l.mirrors.size(), l.mirrors.size() == 1 ? "" : "s",
                    l.tap ? ", tap" : "", l.tls ? ", TLS" : "");
  }
}

}  // namespace

int runServer(config::Config initial, const relay::Features& features) {
  if (!features.uringAvailable) {
    GRELAY_LOG_ERROR("io_uring is unavailable: %s", features.unavailableWhy.c_str());
    return kExitNoUring;
  }
  raiseFileLimit();
  auto cfg = std::make_shared<const config::Config>(std::move(initial));
  int exitCode = kExitOk;
  std::string error;
  std::unique_ptr<Generation> current = buildGeneration(cfg, features, nullptr, &exitCode, &error);
  if (!current) {
    GRELAY_LOG_ERROR("%s", error.c_str());
    return exitCode;
  }

  // Signals are taken synchronously by this thread only; the workers and the admin
  // server's threads (created below) inherit the blocked mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  sigaddset(&signals, SIGUSR1);
  sigaddset(&signals, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  metrics::StatsRegistry registry;
  auto publish = [&registry](const Generation& gen) {
    std::vector<const metrics::WorkerStats*> ws;
    for (auto& s : gen.stats) {
      ws.push_back(s.get());
    }
    std::vector<const metrics::UpstreamStats*> us;
    for (auto& u : gen.upstreamStats) {
      us.push_back(u.get());
    }
    registry.add(gen.config, std::move(ws), config::toString(gen.path), std::move(us),
                 gen.tls->dates());
  };
  publish(*current);
  registry.liveness().stallNanos.store(nanos(cfg->admin.stall_timeout));

  // The admin server, and the configuration whose [admin] listen it serves on (which
  // outlives it).
  std::unique_ptr<metrics::AdminServer> admin;
  std::shared_ptr<const config::Config> adminConfig = cfg;
  auto startAdminFor = [&registry](const std::shared_ptr<const config::Config>& from,
                                   std::string* why) {
    metrics::AdminInputs inputs;
    inputs.config = from.get();
    inputs.registry = &registry;
    inputs.version = GRELAY_VERSION;
    return metrics::startAdmin(inputs, why);
  };
  if (cfg->admin.listen) {
    admin = startAdminFor(cfg, &error);
    if (!admin) {
      GRELAY_LOG_ERROR("%s", error.c_str());
      return kExitConfig;
    }
  }
  // Everything privileged (binding, creating tap files) is done.
  if (!dropPrivileges(cfg->server.user, &error)) {
    GRELAY_LOG_ERROR("%s", error.c_str());
    return kExitConfig;
  }
  exitCode = startGeneration(*current, &error);
  if (exitCode != kExitOk) {
    GRELAY_LOG_ERROR("%s", error.c_str());
    return exitCode;
  }
  // OCSP responses of listeners with ocsp_update, fetched from here on.
  OcspUpdater ocspUpdater;
  auto watchOcsp = [&ocspUpdater](const Generation& gen) {
    if (std::string why; !ocspUpdater.watch(gen.tls->ocspWatches(), &why)) {
      GRELAY_LOG_ERROR("ocsp_update: %s: responses are not fetched", why.c_str());
    }
  };
  watchOcsp(*current);
  // GET /ready: from here on (before the line that says so).
  metrics::Liveness& liveness = registry.liveness();
  liveness.serving.store(metrics::Serving::kReady);
  logGeneration(*current);
  GRELAY_LOG_INFO("grelay %s running: %u worker%s, relay path %s%s%s", GRELAY_VERSION,
                  current->workerCount, current->workerCount == 1 ? "" : "s",
                  config::toString(current->path), cfg->admin.listen ? ", metrics on http://" : "",
                  cfg->admin.listen ? (cfg->admin.listen->text + "/metrics").c_str() : "");

  std::vector<std::unique_ptr<Generation>> old;  // draining after a reload
  bool stopping = false;
  uint64_t drainAt = 0;  // SIGTERM/SIGINT with a shutdown_delay: when accepting stops
  auto all = [&](auto&& f) {
    f(*current);
    for (auto& g : old) {
      f(*g);
    }
  };

  metrics::ReloadStats& reloads = registry.reloads();
  auto reloadFailed = [&reloads](metrics::ReloadCause why) {
    reloads.failed[why].inc();
    reloads.lastOk.set(0);
  };
  // SIGHUP: starts a generation for `nextCfg` in place of the current one, which drains.
  // `done` says what happened.
  // Returns whether the new generation took over.
  auto apply = [&](std::shared_ptr<const config::Config> nextCfg, const std::string& done) {
    const char* cause = "SIGHUP";
    auto failed = [&](const std::string& line) {
      reloadFailed(metrics::kReloadSighup);  // counted before the line that says so
      GRELAY_LOG_ERROR("%s: %s", cause, line.c_str());
    };
    int code = kExitOk;
    std::string error;
    std::unique_ptr<Generation> gen =
        buildGeneration(nextCfg, features, current.get(), &code, &error);
    if (!gen) {
      failed("cannot apply " + nextCfg->path + "; keeping the running configuration: " + error);
      return false;
    }
    publish(*gen);
    if (startGeneration(*gen, &error) != kExitOk) {
      registry.retire(gen->config.get());
      failed("cannot start the new workers; keeping the running configuration: " + error);
      return false;
    }
    for (int from : gen->inheritedFrom) {
      if (from >= 0) {
        current->runtime->listenerHandedOver[static_cast<size_t>(from)].store(true);
      }
    }
    // The new generation accepts; the old one stops accepting and finishes its sessions.
    // Once its workers have let go of the listening sockets (about a ring round trip), a
    // connection can only go to the new one: the line logged below says so.
    current->drain(0);
    if (!current->waitAcceptsStopped(std::chrono::seconds(1))) {
      GRELAY_LOG_WARN("%s: the previous generation's workers still accept after 1s", cause);
    }
    old.push_back(std::move(current));
    current = std::move(gen);
    watchOcsp(*current);
    registry.liveness().stallNanos.store(nanos(current->config->admin.stall_timeout));
    reloads.ok[metrics::kReloadSighup].inc();
    reloads.lastOk.set(1);
    reloads.generations.set(static_cast<int64_t>(1 + old.size()));
    logGeneration(*current);
    GRELAY_LOG_INFO(
        "%s: %s: %u worker%s, relay path %s; %zu older "
        "generation%s finishing their sessions",
        cause, done.c_str(), current->workerCount, current->workerCount == 1 ? "" : "s",
        config::toString(current->path), old.size(), old.size() == 1 ? "" : "s");
    return true;
  };

  // After a reload: metrics and probes follow [admin] listen when it moved, came or went.
  // A new port is bound before the old one is let go; the same port on another address
  // right after (the sockets would conflict). If the new one cannot be bound, the old one
  // stays and the next SIGHUP tries again.
  auto followAdmin = [&]() {
    const std::optional<config::Address>& was = adminConfig->admin.listen;
    const std::optional<config::Address>& now = current->config->admin.listen;
    if (was.has_value() == now.has_value() && (!was || was->sameEndpoint(*now))) {
      adminConfig = current->config;
      return;
    }
    if (!now) {
      admin.reset();
      adminConfig = current->config;
      GRELAY_LOG_INFO("SIGHUP: no [admin] listen: metrics and probes are no longer served");
      return;
    }
    const bool samePort = was && portOf(*was) == portOf(*now);
    if (samePort) {
      admin.reset();
    }
    std::string why;
    std::unique_ptr<metrics::AdminServer> fresh = startAdminFor(current->config, &why);
    if (!fresh) {
      std::string again;
      if (samePort && !(admin = startAdminFor(adminConfig, &again))) {
        GRELAY_LOG_ERROR("SIGHUP: %s; and again %s: metrics and probes are not served", why.c_str(),
                         again.c_str());
        adminConfig = current->config;  // the next SIGHUP tries [admin] listen anew
        return;
      }
      GRELAY_LOG_ERROR("SIGHUP: %s; metrics stay on %s", why.c_str(),
                       was ? was->text.c_str() : "(none)");
      return;
    }
    admin = std::move(fresh);  // the old server (another port) stops here
    adminConfig = current->config;
    GRELAY_LOG_INFO("SIGHUP: metrics on http://%s/metrics", now->text.c_str());
  };

  // A DNS move: from now on the current generation's new sessions connect to `next`'s
  // addresses (it differs from the running configuration in addresses only); open
  // sessions stay where they are. No workers, sockets or buffers are added: long-lived
  // sessions cannot pile up generations, nor hold a move back.
  auto moveInPlace = [&](std::shared_ptr<const config::Config> next) {
    Generation& gen = *current;
    if (gen.dns) {
      gen.dns->stop();  // (it starts again below, from the new addresses)
    }
    const std::shared_ptr<const Routes> was = gen.runtime->routes();
    std::shared_ptr<Routes> routes = moveRoutes(*was, next, monotonicNanos());
    registry.move(gen.config.get(), next, [&gen, &routes] {
      for (size_t u = 0; u < gen.upstreamStats.size(); ++u) {
        gen.upstreamStats[u]->view = routes->upstreams[u].get();
      }
    });
    gen.config = next;
    gen.runtime->setRoutes(routes);
    gen.wakeAll();
    // The checks go on, the moved pools' at once (a round in progress finishes: the
    // servers the move kept share their health); lookups go on from the new addresses.
    if (gen.checker) {
      gen.checker->setPools(checkedPools(gen));
    }
    const std::unique_ptr<DnsWatcher> before = std::move(gen.dns);
    buildDnsWatcher(gen);
    if (gen.dns && before) {
      gen.dns->carryOver(*before);  // (resolve_hold counts from the answers it saw)
    }
    if (int err = gen.dns ? gen.dns->start() : 0; err < 0) {
      reloadFailed(metrics::kReloadDns);
      GRELAY_LOG_ERROR(
          "DNS: new sessions use the new addresses, but the DNS thread cannot start again: %s",
          strerror(-err));
      return;
    }
    reloads.ok[metrics::kReloadDns].inc();
    reloads.lastOk.set(1);
    GRELAY_LOG_INFO("DNS: new sessions use the new addresses; open sessions stay where they are");
  };

  // Every generation stops accepting and has drain_timeout to finish its sessions.
  auto drainAll = [&](const char* why) {
    const config::Duration d = current->config->server.drain_timeout;
    GRELAY_LOG_INFO("%s: no longer accepting; draining sessions for up to %lld ms", why,
                    static_cast<long long>(d.count()));
    const uint64_t until = monotonicNanos() + nanos(d);
    all([until](Generation& g) { g.drain(until); });
  };

  auto reload = [&]() {
    const std::string path = current->config->path;
    config::LoadResult loaded = config::loadFile(path);
    if (!loaded.config) {
      reloadFailed(metrics::kReloadSighup);
      GRELAY_LOG_ERROR("SIGHUP: %s is invalid; keeping the running configuration:", path.c_str());
      for (const auto& e : loaded.errors) {
        GRELAY_LOG_ERROR("  %s", e.toString().c_str());
      }
      return;
    }
    for (const auto& w : loaded.warnings) {
      GRELAY_LOG_WARN("SIGHUP: %s", w.toString().c_str());
    }
    if (loaded.config->server.user != current->config->server.user) {
      GRELAY_LOG_WARN("SIGHUP: [server] user changes need a restart");
    }
    if (apply(std::make_shared<const config::Config>(std::move(*loaded.config)),
              "reloaded " + path)) {
      followAdmin();
    }
  };

  while (true) {
    liveness.mainBeat.store(monotonicNanos());  // GET /healthz
    timespec tick{0, 100 * 1000 * 1000};
    int sig = sigtimedwait(&signals, nullptr, &tick);
    if (sig == SIGHUP) {
      if (stopping && drainAt == 0) {
        GRELAY_LOG_WARN("SIGHUP while draining: ignored");
      } else {
        reload();  // (also during shutdown_delay: the proxy still accepts)
      }
    } else if (sig == SIGUSR1) {
      all([](Generation& g) { reopenAccessLogs(g); });
    } else if (sig == SIGUSR2) {
      GRELAY_LOG_WARN("SIGUSR2: ignored (SIGHUP reloads, SIGUSR1 reopens the access logs)");
    } else if (sig == SIGINT || sig == SIGTERM) {
      const char* name = sig == SIGINT ? "SIGINT" : "SIGTERM";
      if (!stopping) {
        stopping = true;
        liveness.serving.store(metrics::Serving::kStopping);
        const config::Duration delay = current->config->server.shutdown_delay;
        if (delay.count() > 0) {
          // Load balancers that probe GET /ready (or have not yet seen this endpoint go)
          // keep sending for a while: serve them until they have noticed.
          GRELAY_LOG_INFO(
              "%s: GET /ready answers 503; still accepting for %lld ms (shutdown_delay), "
              "then draining",
              name, static_cast<long long>(delay.count()));
          drainAt = monotonicNanos() + nanos(delay);
        } else {
          drainAll(name);
        }
      } else {
        drainAt = 0;
        GRELAY_LOG_INFO("second signal: resetting open sessions now");
        all([](Generation& g) { g.abort(); });
      }
    }
    if (drainAt != 0 && monotonicNanos() >= drainAt) {
      drainAt = 0;
      drainAll("shutdown_delay over");
    }
    // Names that no longer resolve to the addresses in use: new sessions take the new
    // addresses, in place (also while shutdown_delay still accepts).
    if (!current->draining && current->dns) {
      std::vector<DnsChange> changes = current->dns->takeChanges();
      if (!changes.empty()) {
        config::Config next = *current->config;
        bool moved = false;
        for (const DnsChange& change : changes) {
          const DnsTarget& target = current->dns->targets()[change.target];
          if (!target.all.empty()) {
            moved = moveAllAddresses(next.upstreams[target.outer], target, change) || moved;
            continue;
          }
          moved = true;
          GRELAY_LOG_INFO("DNS: %s (%s) now resolves to %s, not %s", target.current.text.c_str(),
                          target.what.c_str(), formatAddress(change.address.storage).c_str(),
                          formatAddress(target.current.storage).c_str());
          if (target.kind == DnsTarget::Kind::Mirror) {
            next.listeners[target.outer].mirrors[target.inner].address = change.address;
            continue;
          }
          for (config::UpstreamServer& server : next.upstreams[target.outer].servers) {
            if (server.entry == target.inner) {
              server.address = change.address;
            }
          }
        }
        if (moved) {
          moveInPlace(std::make_shared<const config::Config>(std::move(next)));
        }
      }
    }
    const uint64_t now = monotonicNanos();
    bool deadlinePassed = false;
    all([&](Generation& g) {
      if (g.deadline != 0 && now >= g.deadline && !g.runtime->aborting) {
        deadlinePassed = true;
        g.abort();
      }
    });
    if (deadlinePassed) {
      GRELAY_LOG_WARN("drain_timeout reached: resetting the sessions still open");
    }
    // Retire the generations whose workers have all finished.
    for (auto it = old.begin(); it != old.end();) {
      if ((*it)->running.load() == 0) {
        registry.retire((*it)->config.get());
        it = old.erase(it);
        GRELAY_LOG_INFO("an older configuration generation finished its last session");
      } else {
        ++it;
      }
    }
    reloads.generations.set(static_cast<int64_t>(1 + old.size()));
    if (stopping && current->running.load() == 0 && old.empty()) {
      break;
    }
    if (!stopping && current->running.load() == 0) {
      GRELAY_LOG_ERROR("every worker stopped unexpectedly");
      break;
    }
  }
  admin.reset();
  current.reset();
  GRELAY_LOG_INFO("stopped");
  return 0;
}

}  // namespace grelay::proxy
