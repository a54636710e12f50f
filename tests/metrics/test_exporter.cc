// metrics_test_exporter: serves grelay's metrics for synthetic stats with known values
// (fixture.h) so tests can scrape them with a real Prometheus.
//
//   metrics_test_exporter [--listen HOST:PORT] [--grow]
//
// Prints "port N" once serving, then runs until stdin reaches EOF or SIGTERM/SIGINT.
// --grow adds 1 to a few of worker 0's counters every 100ms, so rate() has data.
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "metrics/admin.h"
#include "tests/metrics/fixture.h"

using namespace grelay;

int main(int argc, char** argv) {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  bool grow = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--listen" && i + 1 < argc) {
      const std::string value = argv[++i];
      const size_t colon = value.rfind(':');
      host = value.substr(0, colon);
      if (host.size() > 1 && host.front() == '[') {
        host = host.substr(1, host.size() - 2);
      }
      port = static_cast<uint16_t>(std::stoi(value.substr(colon + 1)));
    } else if (arg == "--grow") {
      grow = true;
    } else {
      std::fprintf(stderr, "usage: %s [--listen HOST:PORT] [--grow]\n", argv[0]);
      return 2;
    }
  }

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigprocmask(SIG_BLOCK, &signals, nullptr);

  const config::Config config = metrics::testing::makeConfig(metrics::testing::address(host, port));
  auto workers = metrics::testing::makeWorkers(config, 2);
  metrics::testing::fillKnownValues(*workers[0], 0);
  metrics::testing::fillKnownValues(*workers[1], 1);

  metrics::AdminInputs inputs;
  inputs.config = &config;
  for (const auto& w : workers) {
    inputs.workers.push_back(w.get());
  }
  metrics::testing::FakeUpstreamView appView({7}, {false}, {}, {30}, {3});
  metrics::testing::FakeUpstreamView secureView({2}, {true});
  metrics::UpstreamStats app;  // config.upstreams[0] has check_interval
  metrics::UpstreamStats secure;
  app.view = &appView;
  secure.view = &secureView;
  metrics::testing::fillKnownHealthChecks(app);
  inputs.upstreams = {&app, &secure};
  inputs.relayPath = "mainline";
  metrics::ReloadStats reloads;
  metrics::testing::fillKnownReloads(reloads);
  inputs.reloads = &reloads;
  inputs.tlsDates = metrics::testing::knownTlsDates();
  inputs.version = "0.0.0-test";
  std::string error;
  auto admin = metrics::startAdmin(inputs, &error);
  if (!admin) {
    std::fprintf(stderr, "metrics_test_exporter: %s\n", error.c_str());
    return 1;
  }
  std::printf("port %u\n", admin->port());
  std::fflush(stdout);

  for (;;) {
    timespec zero{};
    if (sigtimedwait(&signals, nullptr, &zero) > 0) {
      break;
    }
    pollfd in{STDIN_FILENO, POLLIN, 0};
    if (poll(&in, 1, 100) > 0) {
      char buf[256];
      if (read(STDIN_FILENO, buf, sizeof(buf)) <= 0) {
        break;
      }
    }
    if (grow) {
      metrics::ListenerStats& web = *workers[0]->listeners[0];
      web.connections.inc();
      web.receivedBytes[metrics::kRequest].add(1000);
      web.upstreams[0].sentBytes.add(1000);
      web.mirrors[0].sentBytes.add(1000);
      web.chunks[metrics::kMainlinePath].inc();
      web.tapBytes.add(1000);
      web.upstreams[0].connectDuration.observe(0.0007);
      web.sessionDuration.observe(2.5);
      app.checks.inc();
    }
  }
  return 0;
}
