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
#include <thread>
#include <utility>

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

class ExposerAdminServer : public AdminServer {
public:
  ExposerAdminServer(std::shared_ptr<StatsCollector> collector,
                     std::unique_ptr<prometheus::Exposer> exposer, const config::Address& bound,
                     uint16_t port)
      : collector_(std::move(collector)),
        exposer_(std::move(exposer)),
        port_(port),
        reachable_(reachable(bound, port)) {}

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
    exposer = std::make_unique<prometheus::Exposer>(where, /*num_threads=*/2);
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
                                              port);
}

}  // namespace grelay::metrics
