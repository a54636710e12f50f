#include "proxy/server.h"

#include <pthread.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <future>
#include <thread>

#include "metrics/admin.h"
#include "proxy/log.h"
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
  struct stat st{};
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
  *path = dir + "/" +
          tap::tapFileName(l.name, worker, tap::tapNowNs(), static_cast<uint32_t>(getpid()));
  int fd = ::open(path->c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
  return fd < 0 ? -errno : fd;
}

void closeAll(std::vector<std::vector<int>>& listenFds, std::vector<std::vector<TapFile>>& taps) {
  for (auto& fds : listenFds) {
    for (int f : fds) {
      ::close(f);
    }
    fds.clear();
  }
  for (auto& ts : taps) {
    for (auto& t : ts) {
      if (t.fd >= 0) {
        ::close(t.fd);
      }
    }
    ts.clear();
  }
}

}  // namespace

int runServer(const config::Config& cfg, const relay::Features& features) {
  if (!features.uringAvailable) {
    GRELAY_LOG_ERROR("io_uring is unavailable: %s", features.unavailableWhy.c_str());
    return kExitNoUring;
  }
  Runtime runtime(cfg);
  config::RelayPath path = cfg.server.relay_path;
  if (path == config::RelayPath::Auto) {
    path = features.autoPath();
  } else if (std::string missing = features.pathMissing(path); !missing.empty()) {
    GRELAY_LOG_ERROR("%s: relay_path = \"%s\" is not available on this kernel (%s): %s",
                     cfg.path.c_str(), config::toString(path), features.kernelRelease.c_str(),
                     missing.c_str());
    return kExitConfig;
  }
  runtime.path = path;

  TlsContexts tls;
  std::vector<std::string> tlsErrors;
  if (!tls.build(cfg, features.ktls, &tlsErrors)) {
    for (const auto& e : tlsErrors) {
      GRELAY_LOG_ERROR("%s", e.c_str());
    }
    return kExitConfig;
  }
  runtime.tls = &tls;

  uint32_t workers = cfg.server.workers;
  if (workers == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    workers = n > 0 ? static_cast<uint32_t>(n) : 1;
  }
  runtime.workers = workers;
  raiseFileLimit();

  // Listening sockets: one per worker and listener (SO_REUSEPORT spreads connections).
  for (const auto& l : cfg.listeners) {
    if (int err = addressFree(l.listen); err < 0) {
      GRELAY_LOG_ERROR("listener %s: cannot listen on %s: %s", l.name.c_str(),
                       l.listen.text.c_str(), strerror(-err));
      return kExitConfig;
    }
  }
  std::vector<std::vector<int>> listenFds(workers);
  std::vector<std::vector<TapFile>> tapFiles(workers);
  for (uint32_t w = 0; w < workers; ++w) {
    for (const auto& l : cfg.listeners) {
      int fd = openListener(l.listen, kBacklog);
      if (fd < 0) {
        GRELAY_LOG_ERROR("listener %s: cannot listen on %s: %s", l.name.c_str(),
                         l.listen.text.c_str(), strerror(-fd));
        closeAll(listenFds, tapFiles);
        return kExitConfig;
      }
      listenFds[w].push_back(fd);
      TapFile tap;
      if (l.tap) {
        tap.fd = openTapFile(l, w, &tap.path);
        if (tap.fd < 0) {
          GRELAY_LOG_ERROR("listener %s: cannot create tap file %s: %s", l.name.c_str(),
                           tap.path.c_str(), strerror(-tap.fd));
          closeAll(listenFds, tapFiles);
          return kExitConfig;
        }
      }
      tapFiles[w].push_back(std::move(tap));
    }
  }

  std::vector<std::unique_ptr<metrics::WorkerStats>> stats;
  for (uint32_t w = 0; w < workers; ++w) {
    auto ws = std::make_unique<metrics::WorkerStats>();
    for (const auto& l : cfg.listeners) {
      ws->listeners.push_back(std::make_unique<metrics::ListenerStats>(l.mirrors.size()));
    }
    stats.push_back(std::move(ws));
  }

  // Signals are taken synchronously by this thread only; workers and the admin
  // server's threads (created below) inherit the blocked mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  std::unique_ptr<metrics::AdminServer> admin;
  if (cfg.admin.listen) {
    metrics::AdminInputs inputs;
    inputs.config = &cfg;
    for (auto& s : stats) {
      inputs.workers.push_back(s.get());
    }
    inputs.relayPath = config::toString(path);
    inputs.version = GRELAY_VERSION;
    std::string error;
    admin = metrics::startAdmin(inputs, &error);
    if (!admin) {
      GRELAY_LOG_ERROR("%s", error.c_str());
      closeAll(listenFds, tapFiles);
      return kExitConfig;
    }
  }

  std::vector<std::unique_ptr<Worker>> pool;
  std::vector<std::thread> threads;
  std::atomic<uint32_t> running{0};
  int startError = 0;
  for (uint32_t w = 0; w < workers; ++w) {
    pool.push_back(std::make_unique<Worker>(runtime, w, *stats[w], std::move(listenFds[w]),
                                            std::move(tapFiles[w])));
  }
  for (uint32_t w = 0; w < workers && startError == 0; ++w) {
    std::promise<int> ready;
    std::future<int> result = ready.get_future();
    running.fetch_add(1);
    threads.emplace_back([&, w, p = std::move(ready)]() mutable {
      pool[w]->run(p);
      running.fetch_sub(1);
    });
    startError = result.get();
  }
  if (startError != 0) {
    const bool noUring = startError == -EPERM || startError == -ENOSYS || startError == -EACCES;
    GRELAY_LOG_ERROR("cannot start worker: %s", noUring ? relay::explainSetupError(startError).c_str()
                                                        : strerror(-startError));
    runtime.draining = true;
    runtime.aborting = true;
    for (auto& w : pool) {
      w->wake();
    }
    for (auto& t : threads) {
      t.join();
    }
    return noUring ? kExitNoUring : kExitConfig;
  }

  for (const auto& l : cfg.listeners) {
    GRELAY_LOG_INFO("listener %s on %s -> upstream %s (%zu mirror%s%s)", l.name.c_str(),
                    l.listen.text.c_str(), l.upstream.c_str(), l.mirrors.size(),
                    l.mirrors.size() == 1 ? "" : "s", l.tap ? ", tap" : "");
  }
  GRELAY_LOG_INFO("grelay %s running: %u worker%s, relay path %s%s%s", GRELAY_VERSION, workers,
                  workers == 1 ? "" : "s", config::toString(path),
                  cfg.admin.listen ? ", metrics on http://" : "",
                  cfg.admin.listen ? (cfg.admin.listen->text + "/metrics").c_str() : "");

  // Wait for a signal, then drain up to drain_timeout, then reset what is left.
  bool draining = false;
  uint64_t deadline = 0;
  while (running.load() > 0) {
    timespec tick{0, 100 * 1000 * 1000};
    int sig = sigtimedwait(&signals, nullptr, &tick);
    if (sig == SIGHUP) {
      GRELAY_LOG_WARN("SIGHUP: configuration reload is not supported yet; restart grelay to apply changes");
      continue;
    }
    if (sig == SIGINT || sig == SIGTERM) {
      if (!draining) {
        draining = true;
        deadline = monotonicNanos() + static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(cfg.server.drain_timeout).count());
        GRELAY_LOG_INFO("%s: no longer accepting; draining sessions for up to %lld ms",
                        sig == SIGINT ? "SIGINT" : "SIGTERM",
                        static_cast<long long>(cfg.server.drain_timeout.count()));
        runtime.draining = true;
      } else {
        GRELAY_LOG_INFO("second signal: resetting open sessions now");
        runtime.aborting = true;
      }
      for (auto& w : pool) {
        w->wake();
      }
    }
    if (draining && !runtime.aborting && monotonicNanos() >= deadline) {
      GRELAY_LOG_WARN("drain_timeout reached: resetting the sessions still open");
      runtime.aborting = true;
      for (auto& w : pool) {
        w->wake();
      }
    }
  }
  for (auto& t : threads) {
    t.join();
  }
  admin.reset();
  GRELAY_LOG_INFO("stopped");
  return 0;
}

}  // namespace grelay::proxy
