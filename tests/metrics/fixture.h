// A hand-built config and synthetic worker stats with known values, shared by the unit
// tests and metrics_test_exporter (whose numbers prometheus_scrape_test.py checks).
//
// Config: upstream pools "app" and "secure_api"; listener "web" (upstream app, mirrors
// "analytics" and "shadow", a tap, an access log, accept_proxy_protocol) and listener "api"
// (upstream secure_api, no mirrors, no tap, max_connections = 100, accept_proxy_protocol); [server]
// max_connections = 5000; web has max_connections_per_client = 4.
//
// fillKnownValues(stats, worker): every counter of listener L (0 = web, 1 = api) holds
// (BASE + 100 * L) * (worker == 0 ? 1 : 10), so two workers sum to 11 * (BASE + 100 * L).
// BASE per field is in kBase* below; mirror M's fields use 30 + 10 * M + k. Upstream
// connect durations: worker 0 observes 40us, 300us and 20ms, worker 1 observes 300us, 3s
// and 20s (past the last bucket); on listener api, worker 0 also observes 1.5ms.
#pragma once

#include <arpa/inet.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "metrics/stats.h"

namespace grelay::metrics::testing {

inline config::Address address(const std::string& host, uint16_t port) {
  config::Address out;
  if (host.find(':') != std::string::npos) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    inet_pton(AF_INET6, host.c_str(), &in6->sin6_addr);
    out.length = sizeof(sockaddr_in6);
    out.text = "[" + host + "]:" + std::to_string(port);
  } else {
    auto* in4 = reinterpret_cast<sockaddr_in*>(&out.storage);
    in4->sin_family = AF_INET;
    in4->sin_port = htons(port);
    inet_pton(AF_INET, host.c_str(), &in4->sin_addr);
    out.length = sizeof(sockaddr_in);
    out.text = host + ":" + std::to_string(port);
  }
  return out;
}

inline config::Config makeConfig(const config::Address& admin) {
  config::Config c;
  c.path = "metrics-test.toml";
  c.server.workers = 2;
  c.server.max_connections = 5000;
  c.admin.listen = admin;

  config::UpstreamConfig app;
  app.name = "app";
  app.servers = {{address("127.0.0.1", 8000), "app1"}};  // secure_api's server is unnamed
  app.servers[0].max_conns = 50;
  app.queue_timeout = config::Duration(5'000);   // the queue families for "web"
  app.check_interval = config::Duration(5'000);  // health-check families for "app"
  app.servers[0].address.host_name = true;       // and DNS families
  app.resolve_interval = config::Duration(30'000);
  config::UpstreamConfig secure;
  secure.name = "secure_api";
  secure.servers = {{address("127.0.0.1", 8443)}};
  c.upstreams = {app, secure};

  config::ListenerConfig web;
  web.name = "web";
  web.listen = address("127.0.0.1", 8080);
  web.upstream = "app";
  web.upstream_index = 0;
  config::MirrorConfig analytics;
  analytics.name = "analytics";
  analytics.address = address("127.0.0.1", 9001);
  config::MirrorConfig shadow;
  shadow.name = "shadow";
  shadow.address = address("127.0.0.1", 9002);
  shadow.address.host_name = true;  // the DNS family for "shadow" (not "analytics")
  shadow.resolve_interval = config::Duration(10'000);
  web.mirrors = {analytics, shadow};
  web.access_log = "access.log";
  web.allow = {config::Network{}};  // the denied family for "web" (0.0.0.0/0)
  web.accept_proxy_protocol = true;
  web.max_connections_per_client = 4;  // the limit="client" series for "web"
  web.max_connection_rate = 50;        // the rate families for "web"
  web.tap = config::TapConfig{};
  web.tap->path = "var/tap/web";

  config::ListenerConfig api;
  api.name = "api";
  api.listen = address("127.0.0.1", 8081);
  api.upstream = "secure_api";
  api.upstream_index = 1;
  api.max_connections = 100;
  api.accept_proxy_protocol = true;

  c.listeners = {web, api};
  return c;
}

// A pool's servers as the collector sees them: fixed open connections, down flags,
// weights (1 when not given; 0 while down), sessions and failed connects (0 when not given).
class FakeUpstreamView : public UpstreamView {
public:
  FakeUpstreamView(std::vector<int64_t> active, std::vector<bool> down,
                   std::vector<double> weight = {}, std::vector<uint64_t> sessions = {},
                   std::vector<uint64_t> failures = {})
      : active_(std::move(active)),
        down_(std::move(down)),
        weight_(std::move(weight)),
        sessions_(std::move(sessions)),
        failures_(std::move(failures)) {}
  size_t serverCount() const override { return active_.size(); }
  int64_t serverActive(size_t server) const override { return active_[server]; }
  bool serverDown(size_t server) const override { return down_[server]; }
  double serverWeight(size_t server) const override {
    return down_[server] ? 0 : server < weight_.size() ? weight_[server] : 1;
  }
  uint64_t serverSessions(size_t server) const override {
    return server < sessions_.size() ? sessions_[server] : 0;
  }
  uint64_t serverConnectFailures(size_t server) const override {
    return server < failures_.size() ? failures_[server] : 0;
  }

private:
  std::vector<int64_t> active_;
  std::vector<bool> down_;
  std::vector<double> weight_;
  std::vector<uint64_t> sessions_;
  std::vector<uint64_t> failures_;
};

// The "app" pool's health checks (makeConfig sets its check_interval): 30 checks, 5 failed,
// 2 markings, 1 server down after the latest round; and its DNS lookups (resolve_interval):
// 12, 2 failed, 1 changed.
inline void fillKnownHealthChecks(UpstreamStats& app) {
  app.checks.add(30);
  app.checkFailures.add(5);
  app.markedDown.add(2);
  app.serversDown.set(1);
  app.dnsLookups.add(12);
  app.dnsFailures.add(2);
  app.dnsChanges.add(1);
}

// Reloads: 3 by SIGHUP and 2 by DNS took over, 1 by SIGHUP failed (the latest); 2
// generations running.
inline void fillKnownReloads(ReloadStats& reloads) {
  reloads.ok[kReloadSighup].add(3);
  reloads.failed[kReloadSighup].add(1);
  reloads.ok[kReloadDns].add(2);
  reloads.lastOk.set(0);
  reloads.generations.set(2);
}

// Certificate and CRL dates (Unix seconds): listener web's certificate, secure_api's client
// certificate, web's client_crl, the OCSP response web staples, web's client_ca, and
// secure_api's ca and crl, and the OCSP response web fetches for api.pem.
inline std::vector<TlsFileDate> knownTlsDates() {
  using Kind = TlsFileDate::Kind;
  // The response web fetches for its api.pem certificate (ocsp_update).
  auto fetched = std::make_shared<OcspUpdateStats>();
  fetched->nextUpdate.store(1765500000);
  fetched->ok.add(12);
  fetched->failed.add(3);
  TlsFileDate live{Kind::kOcspResponse, "web", "/etc/grelay/api.pem"};
  live.ocsp = fetched;
  return {{Kind::kListenerCertificate, "web", "/etc/grelay/web.pem", 1780000000},
          {Kind::kUpstreamCertificate, "secure_api", "/etc/grelay/client.pem", 1770000000},
          {Kind::kClientCrl, "web", "/etc/grelay/crl.pem", 1765000000},
          {Kind::kOcspResponse, "web", "/etc/grelay/web.ocsp", 1764000000},
          {Kind::kClientCa, "web", "/etc/grelay/clients-ca.pem", 1900000000},
          {Kind::kUpstreamCa, "secure_api", "/etc/grelay/ca.pem", 1890000000},
          {Kind::kUpstreamCrl, "secure_api", "/etc/grelay/servers-crl.pem", 1766000000},
          live};
}

inline std::vector<std::unique_ptr<WorkerStats>> makeWorkers(const config::Config& c,
                                                             size_t count) {
  std::vector<std::unique_ptr<WorkerStats>> workers;
  for (size_t w = 0; w < count; ++w) {
    auto stats = std::make_unique<WorkerStats>();
    for (const auto& listener : c.listeners) {
      stats->listeners.push_back(
          std::make_unique<ListenerStats>(listener.mirrors.size(), listener.routes.size()));
    }
    workers.push_back(std::move(stats));
  }
  return workers;
}

enum Base : uint64_t {
  kBaseConnections = 1,
  kBaseActive = 2,
  kBaseRejected = 3,
  kBaseReceivedRequest = 4,
  kBaseReceivedResponse = 5,
  kBaseSentUpstream = 6,
  kBaseSentClient = 7,
  kBaseChunksGroup = 8,
  kBaseChunksMainline = 9,
  kBaseChunksCopy = 10,
  kBaseConnectErrors = 11,
  kBaseNoUpstream = 12,
  kBaseIdleTimeouts = 13,
  kBaseResets = 14,
  kBaseTapBytes = 15,
  kBaseTapDropped = 16,
  kBaseTapErrors = 17,
  kBaseChunksSplice = 18,
  kBaseMarkedDown = 19,
  kBaseProxyProtocolErrors = 20,
  kBaseAccessLogDropped = 21,
  kBaseServerFull = 22,
  kBaseDenied = 23,
  kBaseRejectedListener = 24,
  kBaseRejectedClient = 25,
  kBaseQueued = 26,
  kBaseQueueing = 27,
  kBaseRateLimited = 28,
};

inline void fillKnownValues(WorkerStats& stats, int worker) {
  const uint64_t scale = worker == 0 ? 1 : 10;
  for (size_t l = 0; l < stats.listeners.size(); ++l) {
    ListenerStats& s = *stats.listeners[l];
    auto v = [&](uint64_t base) { return (base + 100 * l) * scale; };
    s.connections.add(v(kBaseConnections));
    s.active.add(static_cast<int64_t>(v(kBaseActive)));
    s.rejected[kServerLimit].add(v(kBaseRejected));
    s.rejected[kListenerLimit].add(v(kBaseRejectedListener));
    s.rejected[kClientLimit].add(v(kBaseRejectedClient));
    s.denied.add(v(kBaseDenied));
    s.rateLimited.add(v(kBaseRateLimited));
    s.receivedBytes[kRequest].add(v(kBaseReceivedRequest));
    s.receivedBytes[kResponse].add(v(kBaseReceivedResponse));
    s.upstreams[0].sentBytes.add(v(kBaseSentUpstream));
    s.sentClientBytes.add(v(kBaseSentClient));
    s.chunks[kGroupPath].add(v(kBaseChunksGroup));
    s.chunks[kMainlinePath].add(v(kBaseChunksMainline));
    s.chunks[kCopyPath].add(v(kBaseChunksCopy));
    s.chunks[kSplicePath].add(v(kBaseChunksSplice));
    s.upstreams[0].connectErrors.add(v(kBaseConnectErrors));
    s.upstreams[0].markedDown.add(v(kBaseMarkedDown));
    s.upstreams[0].serverFull.add(v(kBaseServerFull));
    s.upstreams[0].queued.add(v(kBaseQueued));
    s.upstreams[0].queueing.add(static_cast<int64_t>(v(kBaseQueueing)));
    s.proxyProtocolErrors.add(v(kBaseProxyProtocolErrors));
    s.accessLogDroppedLines.add(v(kBaseAccessLogDropped));
    s.noUpstream.add(v(kBaseNoUpstream));
    s.idleTimeouts.add(v(kBaseIdleTimeouts));
    s.resets.add(v(kBaseResets));
    s.tapBytes.add(v(kBaseTapBytes));
    s.tapDroppedBytes.add(v(kBaseTapDropped));
    s.tapErrors.add(v(kBaseTapErrors));
    for (size_t m = 0; m < s.mirrors.size(); ++m) {
      MirrorStats& ms = s.mirrors[m];
      const uint64_t base = 30 + 10 * m;
      ms.sentBytes.add(v(base + 0));
      ms.cuts.add(v(base + 1));
      ms.droppedBytes.add(v(base + 2));
      ms.connectErrors.add(v(base + 3));
      ms.sessions.add(v(base + 4));
      ms.discardedBytes.add(v(base + 5));
      ms.markedDown.add(v(base + 6));
      ms.skippedSessions.add(v(base + 7));
      if (worker == 0) {  // the DNS thread counts in worker 0's stats only
        ms.dnsLookups.add(20 + m);
        ms.dnsFailures.add(3);
        ms.dnsChanges.add(2);
      }
    }
    if (worker == 0) {
      s.upstreams[0].connectDuration.observe(0.00004);
      s.upstreams[0].connectDuration.observe(0.0003);
      s.upstreams[0].connectDuration.observe(0.02);
      if (l == 1) {
        s.upstreams[0].connectDuration.observe(0.0015);
      }
    } else {
      s.upstreams[0].connectDuration.observe(0.0003);
      s.upstreams[0].connectDuration.observe(3.0);
      s.upstreams[0].connectDuration.observe(20.0);
    }
    if (l == 0) {  // "web": its pool "app" queues (max_conns, queue_timeout)
      if (worker == 0) {
        s.upstreams[0].queueDuration.observe(0.0004);
        s.upstreams[0].queueDuration.observe(12.0);
      } else {
        s.upstreams[0].queueDuration.observe(5.0);  // on a bound: counts in le="5"
      }
    }
    if (worker == 0) {
      s.sessionDuration.observe(0.002);
      s.sessionDuration.observe(45.0);
    } else {
      s.sessionDuration.observe(7200.0);
      if (l == 1) {
        s.sessionDuration.observe(0.5);  // on a bound: counts in le="0.5"
      }
    }
  }
}

}  // namespace grelay::metrics::testing
