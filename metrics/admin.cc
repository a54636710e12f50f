#include "metrics/admin.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include <CivetServer.h>
#include <civetweb.h>
#include <prometheus/exposer.h>

#include "metrics/collector.h"

namespace grelay::metrics {
namespace {

// civetweb's mg_check_feature() bit for IPv6 support.
constexpr unsigned kCivetFeatureIpv6 = 8;

// civetweb's listening_ports syntax: "1.2.3.4:9100" or "[::1]:9100" (numeric, no names).
std::string civetAddress(const config::Address& address) {
  char host[INET6_ADDRSTRLEN] = {};
  if (address.family() == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&address.storage);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    return "[" + std::string(host) + "]:" + std::to_string(ntohs(in6->sin6_port));
  }
  const auto* in4 = reinterpret_cast<const sockaddr_in*>(&address.storage);
  inet_ntop(AF_INET, &in4->sin_addr, host, sizeof(host));
  return std::string(host) + ":" + std::to_string(ntohs(in4->sin_port));
}

// civetweb only says "null context ... Possible problem binding to port": bind the same
// address ourselves to report the real reason (e.g. "Address already in use").
std::string bindFailureReason(const config::Address& address) {
  const int fd = socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return std::strerror(errno);
  }
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // as civetweb does
  std::string reason;
  if (bind(fd, address.sockaddrPtr(), address.length) != 0 || listen(fd, 1) != 0) {
    reason = std::strerror(errno);
  }
  close(fd);
  return reason;
}

// Where to connect to reach a server bound to `bound` on `port` (a wildcard address is
// reached through loopback).
config::Address reachable(const config::Address& bound, uint16_t port) {
  config::Address out = bound;
  if (out.family() == AF_INET6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
    if (IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr)) {
      in6->sin6_addr = in6addr_loopback;
    }
    in6->sin6_port = htons(port);
  } else {
    auto* in4 = reinterpret_cast<sockaddr_in*>(&out.storage);
    if (in4->sin_addr.s_addr == htonl(INADDR_ANY)) {
      in4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    }
    in4->sin_port = htons(port);
  }
  return out;
}

// Connects and closes at once: wakes civetweb's accept loop.
void knock(const config::Address& address) {
  const int fd = socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0) {
    connect(fd, address.sockaddrPtr(), address.length);
    close(fd);
  }
}

uint64_t monotonicNow() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// How long ago `beat` was, or 0 when that loop has not started or has ended.
uint64_t sinceBeat(uint64_t beat, uint64_t now) {
  if (beat == 0 || beat == kBeatFinished || beat >= now) {
    return 0;
  }
  return now - beat;
}

// The serving state and main-loop heartbeat: the registry's (the server), else the inputs'.
const Liveness* livenessOf(const AdminInputs& inputs) {
  return inputs.registry != nullptr ? &inputs.registry->liveness() : inputs.liveness;
}

// "" when every loop went round lately; else which one stalled, for how long.
std::string stalledLoop(const AdminInputs& inputs, uint64_t now) {
  char line[160];
  auto stalled = [&](const char* what, uint64_t ago) {
    snprintf(line, sizeof(line), "%s has not gone round its loop for %.1fs", what,
             static_cast<double>(ago) / 1e9);
    return std::string(line);
  };
  const Liveness* live = livenessOf(inputs);
  const uint64_t limit = live != nullptr ? live->stallNanos.load() : kStalledAfterNanos;
  if (live != nullptr) {
    if (const uint64_t ago = sinceBeat(live->mainBeat.load(), now); ago > limit) {
      return stalled("the main thread", ago);
    }
  }
  auto check = [&](const std::vector<const WorkerStats*>& workers, const char* generation) {
    for (size_t i = 0; i < workers.size(); ++i) {
      if (const uint64_t ago = sinceBeat(workers[i]->beat.load(), now); ago > limit) {
        const std::string what = "worker " + std::to_string(i) + generation;
        return stalled(what.c_str(), ago);
      }
    }
    return std::string();
  };
  if (inputs.registry == nullptr) {
    return check(inputs.workers, "");
  }
  return inputs.registry->read(
      [&](const std::vector<StatsRegistry::Generation>& gens, const auto&, const auto&) {
        for (size_t g = 0; g < gens.size(); ++g) {
          std::string found =
              check(gens[g].workers, g + 1 == gens.size() ? "" : " (of an older generation)");
          if (!found.empty()) {
            return found;
          }
        }
        return std::string();
      });
}

}  // namespace

ProbeAnswer answerHealthz(const AdminInputs& inputs, uint64_t now) {
  std::string stalled = stalledLoop(inputs, now);
  if (!stalled.empty()) {
    return {503, "stalled: " + stalled + "\n"};
  }
  return {200, "ok\n"};
}

ProbeAnswer answerReady(const AdminInputs& inputs, uint64_t now) {
  const Liveness* live = livenessOf(inputs);
  const Serving serving = live != nullptr ? live->serving.load() : Serving::kReady;
  if (serving == Serving::kStarting) {
    return {503, "starting\n"};
  }
  if (serving == Serving::kStopping) {
    return {503, "stopping\n"};
  }
  ProbeAnswer health = answerHealthz(inputs, now);
  return health.status == 200 ? ProbeAnswer{200, "ready\n"} : health;
}

namespace {

// civetweb calls begin_request on its own threads with nothing of ours but the request:
// each running admin server leaves its inputs here under its port.
std::mutex& probeSitesMutex() {
  static std::mutex m;
  return m;
}
std::map<int, std::shared_ptr<const AdminInputs>>& probeSites() {
  static std::map<int, std::shared_ptr<const AdminInputs>> sites;
  return sites;
}

// GET/HEAD /ready and /healthz, answered before prometheus-cpp's handlers see the
// request; every other request is left to them (0). So is /metrics, except in the moment
// between civetweb's listening and the registration of its handler, when it would say
// 404: a scrape then learns the server is starting (503) rather than that it has no
// metrics.
int answerProbe(mg_connection* conn) {
  const mg_request_info* request = mg_get_request_info(conn);
  if (request == nullptr || request->local_uri == nullptr) {
    return 0;
  }
  const std::string path = request->local_uri;
  if (path != "/ready" && path != "/healthz" && path != "/metrics") {
    return 0;
  }
  std::shared_ptr<const AdminInputs> inputs;
  {
    std::lock_guard<std::mutex> lock(probeSitesMutex());
    auto it = probeSites().find(request->server_port);
    if (it != probeSites().end()) {
      inputs = it->second;
    }
  }
  if (path == "/metrics" && inputs != nullptr) {
    return 0;  // registered (the site is added after the handler)
  }
  const std::string method = request->request_method != nullptr ? request->request_method : "";
  ProbeAnswer answer;
  if (method != "GET" && method != "HEAD") {
    answer = {405, "only GET and HEAD\n"};
  } else if (inputs == nullptr) {
    answer = {503, "starting\n"};  // the server is still being set up
  } else {
    answer = path == "/ready" ? answerReady(*inputs, monotonicNow())
                              : answerHealthz(*inputs, monotonicNow());
  }
  const char* reason = answer.status == 200   ? "OK"
                       : answer.status == 405 ? "Method Not Allowed"
                                              : "Service Unavailable";
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Length: %zu\r\nCache-Control: no-store\r\n%sConnection: close\r\n\r\n",
            answer.status, reason, answer.body.size(),
            answer.status == 405 ? "Allow: GET, HEAD\r\n" : "");
  if (method != "HEAD") {
    mg_write(conn, answer.body.data(), answer.body.size());
  }
  return answer.status;
}

class ExposerAdminServer : public AdminServer {
public:
  ExposerAdminServer(std::shared_ptr<StatsCollector> collector,
                     std::unique_ptr<prometheus::Exposer> exposer, const config::Address& bound,
                     uint16_t port, const AdminInputs& inputs)
      : collector_(std::move(collector)),
        exposer_(std::move(exposer)),
        port_(port),
        reachable_(reachable(bound, port)) {
    std::lock_guard<std::mutex> lock(probeSitesMutex());
    probeSites()[port_] = std::make_shared<const AdminInputs>(inputs);
  }

  ~ExposerAdminServer() override {
    // civetweb's accept loop sees the stop request only when its poll() times out (2s)
    // or a connection arrives: knock until it has stopped, so shutdown takes
    // milliseconds.
    std::atomic<bool> stopped{false};
    sigset_t all;
    sigset_t saved;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &saved);  // the knocker takes no signals
    std::thread knocker([&] {
      while (!stopped.load()) {
        knock(reachable_);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    });
    pthread_sigmask(SIG_SETMASK, &saved, nullptr);
    exposer_.reset();
    stopped.store(true);
    knocker.join();
    std::lock_guard<std::mutex> lock(probeSitesMutex());
    probeSites().erase(port_);
  }

  std::string render() const override { return collector_->render(); }
  uint16_t port() const override { return port_; }

private:
  // Declared before the exposer so it outlives the HTTP threads that call it.
  std::shared_ptr<StatsCollector> collector_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  uint16_t port_;
  config::Address reachable_;
};

}  // namespace

std::unique_ptr<AdminServer> startAdmin(const AdminInputs& inputs, std::string* error) {
  auto fail = [&](const std::string& where, const std::string& reason) {
    if (error != nullptr) {
      *error = "cannot serve metrics on " + where + ": " + reason;
    }
    return nullptr;
  };
  if (inputs.config == nullptr || !inputs.config->admin.listen) {
    return fail("(none)", "no [admin] listen address configured");
  }
  const config::Address& address = *inputs.config->admin.listen;
  if (address.family() != AF_INET && address.family() != AF_INET6) {
    return fail(address.text, "not an IPv4 or IPv6 address");
  }
  const std::string where = civetAddress(address);
  if (address.family() == AF_INET6 && mg_check_feature(kCivetFeatureIpv6) == 0) {
    return fail(where,
                "the installed civetweb (the HTTP server of prometheus-cpp) was built without "
                "IPv6; use an IPv4 address such as 127.0.0.1:9100 or 0.0.0.0:9100");
  }

  auto collector = std::make_shared<StatsCollector>(inputs);
  std::unique_ptr<prometheus::Exposer> exposer;
  std::string reason;
  // civetweb's threads inherit this thread's signal mask: block every signal while they
  // are created so SIGTERM/SIGINT/SIGHUP always reach grelay's own handling, whatever the
  // caller's mask is at this point.
  sigset_t all;
  sigset_t saved;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &saved);
  try {
    CivetCallbacks callbacks;
    callbacks.begin_request = answerProbe;
    exposer = std::make_unique<prometheus::Exposer>(where, /*num_threads=*/2, &callbacks);
    exposer->RegisterCollectable(collector);
  } catch (const std::exception& e) {
    reason = bindFailureReason(address);
    if (reason.empty()) {
      reason = e.what();
    }
  } catch (...) {
    reason = "unknown error from the HTTP server";
  }
  pthread_sigmask(SIG_SETMASK, &saved, nullptr);
  if (exposer == nullptr) {
    return fail(where, reason);
  }
  uint16_t port = 0;
  const std::vector<int> ports = exposer->GetListeningPorts();
  if (!ports.empty()) {
    port = static_cast<uint16_t>(ports.front());
  }
  return std::make_unique<ExposerAdminServer>(std::move(collector), std::move(exposer), address,
                                              port, inputs);
}

}  // namespace grelay::metrics
