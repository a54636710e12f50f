// The admin endpoint: exact sums across workers, histogram layout, label hygiene, bind
// failures, a real HTTP scrape, and promtool's verdict on the exposition.
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "metrics/admin.h"
#include "metrics/collector.h"
#include "tests/metrics/exposition.h"
#include "tests/metrics/fixture.h"

namespace grelay::metrics {
namespace {

using testing::address;
using testing::makeConfig;
using testing::makeWorkers;
using testing::parseExposition;
using testing::sampleLines;

// Every grelay_* sample of the fixture (fixture.h) with two filled workers, in order.
// Counters are 11 * (BASE + 100 * listener index); worked out by hand, not by the code.
constexpr const char* kExpectedGrelaySamples = R"golden(grelay_build_info{version="0.0.0-test"} 1
grelay_relay_path_info{path="mainline"} 1
grelay_workers 2
grelay_config_reloads_total{cause="sighup",result="ok"} 3
grelay_config_reloads_total{cause="sighup",result="failed"} 1
grelay_config_reloads_total{cause="dns",result="ok"} 2
grelay_config_reloads_total{cause="dns",result="failed"} 0
grelay_config_last_reload_successful 0
grelay_config_generations 2
grelay_max_connections 5000
grelay_listener_max_connections{listener="api"} 100
grelay_listener_max_connection_rate{listener="web"} 50
grelay_connections_total{listener="web"} 11
grelay_connections_total{listener="api"} 1111
grelay_connections_active{listener="web"} 22
grelay_connections_active{listener="api"} 1122
grelay_connections_rejected_total{listener="web",limit="server"} 33
grelay_connections_rejected_total{listener="web",limit="client"} 275
grelay_connections_rejected_total{listener="api",limit="server"} 1133
grelay_connections_rejected_total{listener="api",limit="listener"} 1364
grelay_connections_denied_total{listener="web"} 253
grelay_connections_rate_limited_total{listener="web"} 308
grelay_received_bytes_total{listener="web",direction="request"} 44
grelay_received_bytes_total{listener="web",direction="response"} 55
grelay_received_bytes_total{listener="api",direction="request"} 1144
grelay_received_bytes_total{listener="api",direction="response"} 1155
grelay_sent_bytes_total{listener="web",target="app"} 66
grelay_sent_bytes_total{listener="web",target="analytics"} 330
grelay_sent_bytes_total{listener="web",target="shadow"} 440
grelay_sent_bytes_total{listener="api",target="secure_api"} 1166
grelay_client_sent_bytes_total{listener="web"} 77
grelay_client_sent_bytes_total{listener="api"} 1177
grelay_chunks_total{listener="web",path="group"} 88
grelay_chunks_total{listener="web",path="mainline"} 99
grelay_chunks_total{listener="web",path="copy"} 110
grelay_chunks_total{listener="web",path="splice"} 198
grelay_chunks_total{listener="api",path="group"} 1188
grelay_chunks_total{listener="api",path="mainline"} 1199
grelay_chunks_total{listener="api",path="copy"} 1210
grelay_chunks_total{listener="api",path="splice"} 1298
grelay_idle_timeouts_total{listener="web"} 143
grelay_idle_timeouts_total{listener="api"} 1243
grelay_session_resets_total{listener="web"} 154
grelay_session_resets_total{listener="api"} 1254
grelay_upstream_connect_errors_total{listener="web",upstream="app"} 121
grelay_upstream_connect_errors_total{listener="api",upstream="secure_api"} 1221
grelay_upstream_marked_down_total{listener="web",upstream="app"} 209
grelay_upstream_marked_down_total{listener="api",upstream="secure_api"} 1309
grelay_upstream_server_full_total{listener="web",upstream="app"} 242
grelay_upstream_queued_total{listener="web",upstream="app"} 286
grelay_upstream_queued_sessions{listener="web",upstream="app"} 297
grelay_upstream_unavailable_total{listener="web"} 132
grelay_upstream_unavailable_total{listener="api"} 1232
grelay_upstream_connect_duration_seconds_count{listener="web",upstream="app"} 6
grelay_upstream_connect_duration_seconds_sum{listener="web",upstream="app"} 23.02064
grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="5e-05"} 1
grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="0.0001"} 1
grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="0.00025"} 1
grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="0.0005"} 3
grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="0.001"} 3
grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="0.0025"} 3
grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="0.005"} 3
grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="0.01"} 3
grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="0.025"} 4
grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="0.05"} 4
grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="0.1"} 4
grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="0.25"} 4
grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="0.5"} 4
grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="1"} 4
grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="2.5"} 4
grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="5"} 5
grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="10"} 5
grelay_upstream_connect_duration_seconds_bucket{listener="web",upstream="app",le="+Inf"} 6
grelay_upstream_connect_duration_seconds_count{listener="api",upstream="secure_api"} 7
grelay_upstream_connect_duration_seconds_sum{listener="api",upstream="secure_api"} 23.02214
grelay_upstream_connect_duration_seconds_bucket{listener="api",upstream="secure_api",le="5e-05"} 1
grelay_upstream_connect_duration_seconds_bucket{listener="api",upstream="secure_api",le="0.0001"} 1
grelay_upstream_connect_duration_seconds_bucket{listener="api",upstream="secure_api",le="0.00025"} 1
grelay_upstream_connect_duration_seconds_bucket{listener="api",upstream="secure_api",le="0.0005"} 3
grelay_upstream_connect_duration_seconds_bucket{listener="api",upstream="secure_api",le="0.001"} 3
grelay_upstream_connect_duration_seconds_bucket{listener="api",upstream="secure_api",le="0.0025"} 4
grelay_upstream_connect_duration_seconds_bucket{listener="api",upstream="secure_api",le="0.005"} 4
grelay_upstream_connect_duration_seconds_bucket{listener="api",upstream="secure_api",le="0.01"} 4
grelay_upstream_connect_duration_seconds_bucket{listener="api",upstream="secure_api",le="0.025"} 5
grelay_upstream_connect_duration_seconds_bucket{listener="api",upstream="secure_api",le="0.05"} 5
grelay_upstream_connect_duration_seconds_bucket{listener="api",upstream="secure_api",le="0.1"} 5
grelay_upstream_connect_duration_seconds_bucket{listener="api",upstream="secure_api",le="0.25"} 5
grelay_upstream_connect_duration_seconds_bucket{listener="api",upstream="secure_api",le="0.5"} 5
grelay_upstream_connect_duration_seconds_bucket{listener="api",upstream="secure_api",le="1"} 5
grelay_upstream_connect_duration_seconds_bucket{listener="api",upstream="secure_api",le="2.5"} 5
grelay_upstream_connect_duration_seconds_bucket{listener="api",upstream="secure_api",le="5"} 6
grelay_upstream_connect_duration_seconds_bucket{listener="api",upstream="secure_api",le="10"} 6
grelay_upstream_connect_duration_seconds_bucket{listener="api",upstream="secure_api",le="+Inf"} 7
grelay_upstream_queue_duration_seconds_count{listener="web",upstream="app"} 3
grelay_upstream_queue_duration_seconds_sum{listener="web",upstream="app"} 17.0004
grelay_upstream_queue_duration_seconds_bucket{listener="web",upstream="app",le="0.001"} 1
grelay_upstream_queue_duration_seconds_bucket{listener="web",upstream="app",le="0.005"} 1
grelay_upstream_queue_duration_seconds_bucket{listener="web",upstream="app",le="0.01"} 1
grelay_upstream_queue_duration_seconds_bucket{listener="web",upstream="app",le="0.05"} 1
grelay_upstream_queue_duration_seconds_bucket{listener="web",upstream="app",le="0.1"} 1
grelay_upstream_queue_duration_seconds_bucket{listener="web",upstream="app",le="0.5"} 1
grelay_upstream_queue_duration_seconds_bucket{listener="web",upstream="app",le="1"} 1
grelay_upstream_queue_duration_seconds_bucket{listener="web",upstream="app",le="5"} 2
grelay_upstream_queue_duration_seconds_bucket{listener="web",upstream="app",le="10"} 2
grelay_upstream_queue_duration_seconds_bucket{listener="web",upstream="app",le="30"} 3
grelay_upstream_queue_duration_seconds_bucket{listener="web",upstream="app",le="60"} 3
grelay_upstream_queue_duration_seconds_bucket{listener="web",upstream="app",le="300"} 3
grelay_upstream_queue_duration_seconds_bucket{listener="web",upstream="app",le="900"} 3
grelay_upstream_queue_duration_seconds_bucket{listener="web",upstream="app",le="1800"} 3
grelay_upstream_queue_duration_seconds_bucket{listener="web",upstream="app",le="3600"} 3
grelay_upstream_queue_duration_seconds_bucket{listener="web",upstream="app",le="+Inf"} 3
grelay_session_duration_seconds_count{listener="web"} 3
grelay_session_duration_seconds_sum{listener="web"} 7245.002
grelay_session_duration_seconds_bucket{listener="web",le="0.001"} 0
grelay_session_duration_seconds_bucket{listener="web",le="0.005"} 1
grelay_session_duration_seconds_bucket{listener="web",le="0.01"} 1
grelay_session_duration_seconds_bucket{listener="web",le="0.05"} 1
grelay_session_duration_seconds_bucket{listener="web",le="0.1"} 1
grelay_session_duration_seconds_bucket{listener="web",le="0.5"} 1
grelay_session_duration_seconds_bucket{listener="web",le="1"} 1
grelay_session_duration_seconds_bucket{listener="web",le="5"} 1
grelay_session_duration_seconds_bucket{listener="web",le="10"} 1
grelay_session_duration_seconds_bucket{listener="web",le="30"} 1
grelay_session_duration_seconds_bucket{listener="web",le="60"} 2
grelay_session_duration_seconds_bucket{listener="web",le="300"} 2
grelay_session_duration_seconds_bucket{listener="web",le="900"} 2
grelay_session_duration_seconds_bucket{listener="web",le="1800"} 2
grelay_session_duration_seconds_bucket{listener="web",le="3600"} 2
grelay_session_duration_seconds_bucket{listener="web",le="+Inf"} 3
grelay_session_duration_seconds_count{listener="api"} 4
grelay_session_duration_seconds_sum{listener="api"} 7245.502
grelay_session_duration_seconds_bucket{listener="api",le="0.001"} 0
grelay_session_duration_seconds_bucket{listener="api",le="0.005"} 1
grelay_session_duration_seconds_bucket{listener="api",le="0.01"} 1
grelay_session_duration_seconds_bucket{listener="api",le="0.05"} 1
grelay_session_duration_seconds_bucket{listener="api",le="0.1"} 1
grelay_session_duration_seconds_bucket{listener="api",le="0.5"} 2
grelay_session_duration_seconds_bucket{listener="api",le="1"} 2
grelay_session_duration_seconds_bucket{listener="api",le="5"} 2
grelay_session_duration_seconds_bucket{listener="api",le="10"} 2
grelay_session_duration_seconds_bucket{listener="api",le="30"} 2
grelay_session_duration_seconds_bucket{listener="api",le="60"} 3
grelay_session_duration_seconds_bucket{listener="api",le="300"} 3
grelay_session_duration_seconds_bucket{listener="api",le="900"} 3
grelay_session_duration_seconds_bucket{listener="api",le="1800"} 3
grelay_session_duration_seconds_bucket{listener="api",le="3600"} 3
grelay_session_duration_seconds_bucket{listener="api",le="+Inf"} 4
grelay_mirror_sessions_total{listener="web",mirror="analytics"} 374
grelay_mirror_sessions_total{listener="web",mirror="shadow"} 484
grelay_mirror_cuts_total{listener="web",mirror="analytics"} 341
grelay_mirror_cuts_total{listener="web",mirror="shadow"} 451
grelay_mirror_dropped_bytes_total{listener="web",mirror="analytics"} 352
grelay_mirror_dropped_bytes_total{listener="web",mirror="shadow"} 462
grelay_mirror_connect_errors_total{listener="web",mirror="analytics"} 363
grelay_mirror_connect_errors_total{listener="web",mirror="shadow"} 473
grelay_mirror_marked_down_total{listener="web",mirror="analytics"} 396
grelay_mirror_marked_down_total{listener="web",mirror="shadow"} 506
grelay_mirror_skipped_sessions_total{listener="web",mirror="analytics"} 407
grelay_mirror_skipped_sessions_total{listener="web",mirror="shadow"} 517
grelay_mirror_response_bytes_total{listener="web",mirror="analytics"} 385
grelay_mirror_response_bytes_total{listener="web",mirror="shadow"} 495
grelay_mirror_dns_lookups_total{listener="web",mirror="shadow",result="unchanged"} 16
grelay_mirror_dns_lookups_total{listener="web",mirror="shadow",result="changed"} 2
grelay_mirror_dns_lookups_total{listener="web",mirror="shadow",result="failed"} 3
grelay_tap_bytes_total{listener="web"} 165
grelay_tap_dropped_bytes_total{listener="web"} 176
grelay_tap_errors_total{listener="web"} 187
grelay_proxy_protocol_errors_total{listener="web"} 220
grelay_proxy_protocol_errors_total{listener="api"} 1320
grelay_access_log_dropped_lines_total{listener="web"} 231
grelay_tls_certificate_expiry_timestamp_seconds{listener="web",file="/etc/grelay/web.pem"} 1780000000
grelay_upstream_tls_certificate_expiry_timestamp_seconds{upstream="secure_api",file="/etc/grelay/client.pem"} 1770000000
grelay_tls_crl_next_update_timestamp_seconds{listener="web",file="/etc/grelay/crl.pem"} 1765000000
grelay_upstream_tls_crl_next_update_timestamp_seconds{upstream="secure_api",file="/etc/grelay/servers-crl.pem"} 1766000000
grelay_tls_client_ca_expiry_timestamp_seconds{listener="web",file="/etc/grelay/clients-ca.pem"} 1900000000
grelay_upstream_tls_ca_expiry_timestamp_seconds{upstream="secure_api",file="/etc/grelay/ca.pem"} 1890000000
grelay_tls_ocsp_next_update_timestamp_seconds{listener="web",file="/etc/grelay/web.ocsp"} 1764000000
grelay_tls_ocsp_next_update_timestamp_seconds{listener="web",file="/etc/grelay/api.pem"} 1765500000
grelay_tls_ocsp_updates_total{listener="web",file="/etc/grelay/api.pem",result="ok"} 12
grelay_tls_ocsp_updates_total{listener="web",file="/etc/grelay/api.pem",result="error"} 3
grelay_upstream_health_checks_total{upstream="app",result="ok"} 25
grelay_upstream_health_checks_total{upstream="app",result="failed"} 5
grelay_upstream_health_check_marked_down_total{upstream="app"} 2
grelay_upstream_server_active_connections{upstream="app",server="app1"} 12
grelay_upstream_server_active_connections{upstream="secure_api",server="0"} 3
grelay_upstream_server_up{upstream="app",server="app1"} 1
grelay_upstream_server_up{upstream="secure_api",server="0"} 0
grelay_upstream_server_weight{upstream="app",server="app1"} 2.5
grelay_upstream_server_weight{upstream="secure_api",server="0"} 0
grelay_upstream_server_sessions_total{upstream="app",server="app1"} 40
grelay_upstream_server_sessions_total{upstream="secure_api",server="0"} 0
grelay_upstream_server_connect_failures_total{upstream="app",server="app1"} 4
grelay_upstream_server_connect_failures_total{upstream="secure_api",server="0"} 0
grelay_upstream_servers_down{upstream="app"} 1
grelay_upstream_dns_lookups_total{upstream="app",result="unchanged"} 9
grelay_upstream_dns_lookups_total{upstream="app",result="changed"} 1
grelay_upstream_dns_lookups_total{upstream="app",result="failed"} 2
)golden";

std::vector<std::string> splitLines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    lines.push_back(line);
  }
  return lines;
}

// A listening TCP socket on 127.0.0.1 with a kernel-chosen port.
struct ListeningSocket {
  ListeningSocket() {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&in), sizeof(in)), 0);
    EXPECT_EQ(listen(fd, 4), 0);
    socklen_t len = sizeof(in);
    getsockname(fd, reinterpret_cast<sockaddr*>(&in), &len);
    port = ntohs(in.sin_port);
  }
  ~ListeningSocket() { close(fd); }
  int fd = -1;
  uint16_t port = 0;
};

// A plain HTTP/1.0 request on 127.0.0.1:port; returns the whole response (headers + body).
std::string httpRequest(uint16_t port, const std::string& method, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in in{};
  in.sin_family = AF_INET;
  in.sin_port = htons(port);
  in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&in), sizeof(in)) != 0) {
    close(fd);
    return "connect failed";
  }
  const std::string request = method + " " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  EXPECT_EQ(write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
  std::string response;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) {
    response.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return response;
}

std::string httpGet(uint16_t port, const std::string& path) {
  return httpRequest(port, "GET", path);
}

std::string bodyOf(const std::string& response) {
  const size_t end = response.find("\r\n\r\n");
  return end == std::string::npos ? "" : response.substr(end + 4);
}

// Runs `promtool check metrics` on `text`; returns its exit status and output.
std::pair<int, std::string> promtoolCheckMetrics(const std::string& text) {
  char path[] = "/tmp/grelay-metrics-XXXXXX";
  const int fd = mkstemp(path);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  close(fd);
  const std::string command = std::string("promtool check metrics < ") + path + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  std::string output;
  char buf[512];
  while (size_t n = fread(buf, 1, sizeof(buf), pipe)) {
    output.append(buf, n);
  }
  const int status = pclose(pipe);
  unlink(path);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

bool havePromtool() {
  return std::system("command -v promtool >/dev/null 2>&1") == 0;
}

class AdminTest : public ::testing::Test {
protected:
  AdminTest() : config_(makeConfig(address("127.0.0.1", 0))), workers_(makeWorkers(config_, 2)) {
    testing::fillKnownValues(*workers_[0], 0);
    testing::fillKnownValues(*workers_[1], 1);
    app_.view = &appView_;
    secure_.view = &secureView_;
    testing::fillKnownHealthChecks(app_);
    testing::fillKnownReloads(reloads_);
  }

  AdminInputs inputs() const {
    AdminInputs in;
    in.config = &config_;
    for (const auto& w : workers_) {
      in.workers.push_back(w.get());
    }
    in.upstreams = {&app_, &secure_};
    in.relayPath = "mainline";
    in.version = "0.0.0-test";
    in.reloads = &reloads_;
    in.tlsDates = testing::knownTlsDates();
    return in;
  }

  std::unique_ptr<AdminServer> start() {
    std::string error;
    auto admin = startAdmin(inputs(), &error);
    EXPECT_NE(admin, nullptr) << error;
    return admin;
  }

  config::Config config_;
  std::vector<std::unique_ptr<WorkerStats>> workers_;
  UpstreamStats app_;  // the "app" pool checks its servers (fixture.h)
  UpstreamStats secure_;
  ReloadStats reloads_;
  testing::FakeUpstreamView appView_{{12}, {false}, {2.5}, {40}, {4}};  // in slow start
  testing::FakeUpstreamView secureView_{{3}, {true}};
};

TEST_F(AdminTest, RenderHasExactlyTheSummedValueOfEverySeries) {
  const auto admin = start();
  ASSERT_NE(admin, nullptr);
  EXPECT_EQ(sampleLines(admin->render(), "grelay_"), splitLines(kExpectedGrelaySamples));
}

TEST_F(AdminTest, CollectorRendersTheSameWithoutAServer) {
  const StatsCollector collector(inputs());
  EXPECT_EQ(sampleLines(collector.render(), "grelay_"), splitLines(kExpectedGrelaySamples));
}

TEST_F(AdminTest, ScrapesReadLiveCountersEachTime) {
  const auto admin = start();
  ASSERT_NE(admin, nullptr);
  workers_[1]->listeners[0]->connections.add(1000);
  workers_[0]->listeners[0]->active.add(-20);
  const auto lines = sampleLines(admin->render(), "grelay_connections_");
  EXPECT_NE(
      std::find(lines.begin(), lines.end(), "grelay_connections_total{listener=\"web\"} 1011"),
      lines.end());
  EXPECT_NE(std::find(lines.begin(), lines.end(), "grelay_connections_active{listener=\"web\"} 2"),
            lines.end());
}

TEST(AdminHistogramTest, BucketsAreCumulativeAndInfEqualsCount) {
  const config::Config config = makeConfig(address("127.0.0.1", 0));
  auto workers = makeWorkers(config, 3);  // worker 2 observes nothing
  ConnectHistogram& h0 = workers[0]->listeners[0]->upstreams[0].connectDuration;
  ConnectHistogram& h1 = workers[1]->listeners[0]->upstreams[0].connectDuration;
  h0.observe(0.00005);  // on a bound: counts in le="5e-05"
  h0.observe(0.0002);   // le="0.00025"
  h1.observe(0.0002);
  h1.observe(10.0);  // the last finite bucket
  h1.observe(10.5);  // +Inf only
  AdminInputs inputs;
  inputs.config = &config;
  for (const auto& w : workers) {
    inputs.workers.push_back(w.get());
  }
  const auto expo = parseExposition(StatsCollector(inputs).render());

  std::vector<std::pair<std::string, std::string>> buckets;  // le -> cumulative count
  std::string count, sum;
  for (const auto& s : expo.samples) {
    if (s.labels.empty() || s.labels[0].second != "web") {
      continue;
    }
    if (s.name == "grelay_upstream_connect_duration_seconds_bucket") {
      ASSERT_EQ(s.labels.size(), 3u);
      EXPECT_EQ(s.labels[1], (std::pair<std::string, std::string>{"upstream", "app"}));
      EXPECT_EQ(s.labels[2].first, "le");
      buckets.emplace_back(s.labels[2].second, s.value);
    } else if (s.name == "grelay_upstream_connect_duration_seconds_count") {
      count = s.value;
    } else if (s.name == "grelay_upstream_connect_duration_seconds_sum") {
      sum = s.value;
    }
  }
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"5e-05", "1"},  {"0.0001", "1"}, {"0.00025", "3"}, {"0.0005", "3"}, {"0.001", "3"},
      {"0.0025", "3"}, {"0.005", "3"},  {"0.01", "3"},    {"0.025", "3"},  {"0.05", "3"},
      {"0.1", "3"},    {"0.25", "3"},   {"0.5", "3"},     {"1", "3"},      {"2.5", "3"},
      {"5", "3"},      {"10", "4"},     {"+Inf", "5"}};
  EXPECT_EQ(buckets, expected);
  EXPECT_EQ(count, "5");
  EXPECT_EQ(sum, "20.50045");
  ASSERT_EQ(kConnectBuckets.size() + 1, expected.size());
}

TEST(AdminHistogramTest, SessionLengthsAreSummedOverWorkersWithTheirOwnBuckets) {
  const config::Config config = makeConfig(address("127.0.0.1", 0));
  auto workers = makeWorkers(config, 2);
  workers[0]->listeners[0]->sessionDuration.observe(0.0004);  // le="0.001"
  workers[0]->listeners[0]->sessionDuration.observe(75.0);    // le="300"
  workers[1]->listeners[0]->sessionDuration.observe(3600.0);  // on the last bound
  workers[1]->listeners[0]->sessionDuration.observe(7200.0);  // +Inf only
  AdminInputs inputs;
  inputs.config = &config;
  for (const auto& w : workers) {
    inputs.workers.push_back(w.get());
  }
  const auto expo = parseExposition(StatsCollector(inputs).render());
  std::vector<std::pair<std::string, std::string>> buckets;
  std::string count;
  for (const auto& s : expo.samples) {
    if (s.labels.empty() || s.labels[0].second != "web") {
      continue;
    }
    if (s.name == "grelay_session_duration_seconds_bucket") {
      ASSERT_EQ(s.labels.size(), 2u);
      buckets.emplace_back(s.labels[1].second, s.value);
    } else if (s.name == "grelay_session_duration_seconds_count") {
      count = s.value;
    }
  }
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"0.001", "1"}, {"0.005", "1"}, {"0.01", "1"}, {"0.05", "1"}, {"0.1", "1"}, {"0.5", "1"},
      {"1", "1"},     {"5", "1"},     {"10", "1"},   {"30", "1"},   {"60", "1"},  {"300", "2"},
      {"900", "2"},   {"1800", "2"},  {"3600", "3"}, {"+Inf", "4"}};
  EXPECT_EQ(buckets, expected);
  EXPECT_EQ(count, "4");
}

TEST_F(AdminTest, EveryFamilyHasHelpAndTypeAndCountersEndInTotal) {
  const auto expo = parseExposition(StatsCollector(inputs()).render());
  std::set<std::string> families;
  for (const auto& s : expo.samples) {
    families.insert(testing::familyOf(s, expo));
  }
  EXPECT_EQ(families.size(), 65u);  // 59 grelay_* and 6 process_*
  for (const auto& family : families) {
    ASSERT_EQ(expo.type.count(family), 1u) << family;
    EXPECT_FALSE(expo.help.at(family).empty()) << family;
    const bool total = family.size() > 6 && family.substr(family.size() - 6) == "_total";
    EXPECT_EQ(expo.type.at(family) == "counter", total) << family;
  }
  // The contract of design.md ("Metrics") and issue 4, by name and type.
  const std::map<std::string, std::string> contract = {
      {"grelay_connections_total", "counter"},
      {"grelay_connections_active", "gauge"},
      {"grelay_received_bytes_total", "counter"},
      {"grelay_sent_bytes_total", "counter"},
      {"grelay_chunks_total", "counter"},
      {"grelay_mirror_cuts_total", "counter"},
      {"grelay_mirror_dropped_bytes_total", "counter"},
      {"grelay_tap_bytes_total", "counter"},
      {"grelay_tap_dropped_bytes_total", "counter"},
      {"grelay_upstream_connect_errors_total", "counter"},
      {"grelay_upstream_connect_duration_seconds", "histogram"},
      {"grelay_relay_path_info", "gauge"},
      {"grelay_build_info", "gauge"},
      {"process_resident_memory_bytes", "gauge"},
      {"process_virtual_memory_bytes", "gauge"},
      {"process_open_fds", "gauge"},
      {"process_max_fds", "gauge"},
      {"process_cpu_seconds_total", "counter"},
      {"process_start_time_seconds", "gauge"},
  };
  for (const auto& [name, type] : contract) {
    ASSERT_EQ(expo.type.count(name), 1u) << name;
    EXPECT_EQ(expo.type.at(name), type) << name;
  }
}

TEST_F(AdminTest, LabelsComeOnlyFromConfigNames) {
  std::set<std::string> allowedValues = {"request",
                                         "response",
                                         "group",
                                         "mainline",
                                         "copy",
                                         "splice",
                                         "ok",
                                         "0.0.0-test",
                                         "failed",
                                         "error",
                                         "unchanged",
                                         "changed",
                                         "sighup",
                                         "dns",
                                         "server",
                                         "listener",
                                         "client",  // limit
                                         "/etc/grelay/web.pem",
                                         "/etc/grelay/client.pem",
                                         "/etc/grelay/crl.pem",
                                         "/etc/grelay/web.ocsp",
                                         "/etc/grelay/clients-ca.pem",
                                         "/etc/grelay/ca.pem",
                                         "/etc/grelay/servers-crl.pem",
                                         "/etc/grelay/api.pem"};  // file
  for (const auto& u : config_.upstreams) {
    allowedValues.insert(u.name);
    for (size_t s = 0; s < u.servers.size(); ++s) {
      allowedValues.insert(u.servers[s].name.empty() ? std::to_string(s) : u.servers[s].name);
    }
  }
  for (const auto& l : config_.listeners) {
    allowedValues.insert(l.name);
    for (const auto& m : l.mirrors) {
      allowedValues.insert(m.name);
    }
  }
  std::set<std::string> bucketBounds = {"+Inf"};
  std::vector<double> bounds(kConnectBuckets.begin(), kConnectBuckets.end());
  bounds.insert(bounds.end(), kSessionBuckets.begin(), kSessionBuckets.end());
  for (double b : bounds) {
    std::ostringstream text;
    text.precision(16);
    text << b;
    bucketBounds.insert(text.str());
  }
  const std::set<std::string> allowedNames = {"listener", "direction", "target",  "path",
                                              "mirror",   "upstream",  "version", "result",
                                              "server",   "cause",     "limit",   "file"};
  const auto expo = parseExposition(StatsCollector(inputs()).render());
  size_t labelled = 0;
  for (const auto& s : expo.samples) {
    for (const auto& [name, value] : s.labels) {
      ++labelled;
      if (name == "le") {
        EXPECT_EQ(bucketBounds.count(value), 1u) << s.line;
        continue;
      }
      EXPECT_EQ(allowedNames.count(name), 1u) << s.line;
      EXPECT_EQ(allowedValues.count(value), 1u) << s.line;
    }
  }
  EXPECT_GT(labelled, 100u);
}

TEST(AdminLabelsTest, MirrorNamedLikeItsUpstreamGetsItsOwnTarget) {
  config::Config config = makeConfig(address("127.0.0.1", 0));
  config.listeners[0].mirrors[0].name = "app";  // the web listener's upstream pool
  auto workers = makeWorkers(config, 1);
  workers[0]->listeners[0]->upstreams[0].sentBytes.add(5);
  workers[0]->listeners[0]->mirrors[0].sentBytes.add(7);
  AdminInputs inputs;
  inputs.config = &config;
  inputs.workers = {workers[0].get()};
  const auto lines = sampleLines(StatsCollector(inputs).render(), "grelay_sent_bytes_total");
  const std::vector<std::string> expected = {
      R"(grelay_sent_bytes_total{listener="web",target="app"} 5)",
      R"(grelay_sent_bytes_total{listener="web",target="mirror:app"} 7)",
      R"(grelay_sent_bytes_total{listener="web",target="shadow"} 0)",
      R"(grelay_sent_bytes_total{listener="api",target="secure_api"} 0)",
  };
  EXPECT_EQ(lines, expected);
}

TEST(AdminLabelsTest, RoutesGiveASeriesPerPoolSummedByName) {
  config::Config config = makeConfig(address("127.0.0.1", 0));
  // web: its own pool app, then routes to secure_api and (again) app.
  config.listeners[0].routes.resize(2);
  config.listeners[0].routes[0].upstream = "secure_api";
  config.listeners[0].routes[0].upstream_index = 1;
  config.listeners[0].routes[1].upstream = "app";
  config.listeners[0].mirrors[0].name = "secure_api";
  auto workers = makeWorkers(config, 2);
  for (auto& w : workers) {
    ListenerStats& web = *w->listeners[0];
    web.upstreams[0].sentBytes.add(1);
    web.upstreams[1].sentBytes.add(10);
    web.upstreams[2].sentBytes.add(100);
    web.upstreams[1].connectErrors.add(3);
    web.upstreams[2].connectDuration.observe(0.0003);
  }
  AdminInputs inputs;
  inputs.config = &config;
  inputs.workers = {workers[0].get(), workers[1].get()};
  const std::string text = StatsCollector(inputs).render();
  EXPECT_EQ(sampleLines(text, "grelay_sent_bytes_total"),
            (std::vector<std::string>{
                R"(grelay_sent_bytes_total{listener="web",target="app"} 202)",
                R"(grelay_sent_bytes_total{listener="web",target="secure_api"} 20)",
                R"(grelay_sent_bytes_total{listener="web",target="mirror:secure_api"} 0)",
                R"(grelay_sent_bytes_total{listener="web",target="shadow"} 0)",
                R"(grelay_sent_bytes_total{listener="api",target="secure_api"} 0)",
            }));
  EXPECT_EQ(sampleLines(text, "grelay_upstream_connect_errors_total"),
            (std::vector<std::string>{
                R"(grelay_upstream_connect_errors_total{listener="web",upstream="app"} 0)",
                R"(grelay_upstream_connect_errors_total{listener="web",upstream="secure_api"} 6)",
                R"(grelay_upstream_connect_errors_total{listener="api",upstream="secure_api"} 0)",
            }));
  EXPECT_EQ(
      sampleLines(text, "grelay_upstream_connect_duration_seconds_count"),
      (std::vector<std::string>{
          R"(grelay_upstream_connect_duration_seconds_count{listener="web",upstream="app"} 2)",
          R"(grelay_upstream_connect_duration_seconds_count{listener="web",upstream="secure_api"} 0)",
          R"(grelay_upstream_connect_duration_seconds_count{listener="api",upstream="secure_api"} 0)",
      }));
}

TEST(StatsRegistryTest, ARetiredGenerationsRouteCountersGoOnByPoolName) {
  auto first = std::make_shared<config::Config>(makeConfig(address("127.0.0.1", 0)));
  first->listeners[0].routes.resize(1);
  first->listeners[0].routes[0].upstream = "secure_api";
  first->listeners[0].routes[0].upstream_index = 1;
  auto second = std::make_shared<config::Config>(*first);
  second->listeners[0].routes.clear();  // the reload drops the route
  auto workers1 = makeWorkers(*first, 1);
  auto workers2 = makeWorkers(*second, 1);
  workers1[0]->listeners[0]->upstreams[0].connectErrors.add(1);
  workers1[0]->listeners[0]->upstreams[1].connectErrors.add(4);
  workers2[0]->listeners[0]->upstreams[0].connectErrors.add(2);
  StatsRegistry registry;
  registry.add(first, {workers1[0].get()}, "mainline", {});
  registry.add(second, {workers2[0].get()}, "mainline", {});
  AdminInputs inputs;
  inputs.registry = &registry;
  const std::vector<std::string> expected = {
      R"(grelay_upstream_connect_errors_total{listener="web",upstream="app"} 3)",
      R"(grelay_upstream_connect_errors_total{listener="api",upstream="secure_api"} 0)",
  };
  EXPECT_EQ(sampleLines(StatsCollector(inputs).render(), "grelay_upstream_connect_errors_total"),
            expected);
  registry.retire(first.get());
  EXPECT_EQ(sampleLines(StatsCollector(inputs).render(), "grelay_upstream_connect_errors_total"),
            expected);
}

TEST(AdminHealthCheckTest, PoolsWithChecksExposeTheirCountersAndServersDown) {
  config::Config config = makeConfig(address("127.0.0.1", 0));
  config.upstreams[0].check_interval = config::Duration(0);      // app: no checks
  config.upstreams[1].check_interval = config::Duration(2'000);  // secure_api only
  auto workers = makeWorkers(config, 1);
  UpstreamStats app, secure;
  secure.checks.add(10);
  secure.checkFailures.add(3);
  secure.markedDown.add(1);
  secure.serversDown.set(1);
  AdminInputs inputs;
  inputs.config = &config;
  inputs.workers = {workers[0].get()};
  inputs.upstreams = {&app, &secure};
  const std::string text = StatsCollector(inputs).render();
  EXPECT_EQ(sampleLines(text, "grelay_upstream_health"),
            (std::vector<std::string>{
                R"(grelay_upstream_health_checks_total{upstream="secure_api",result="ok"} 7)",
                R"(grelay_upstream_health_checks_total{upstream="secure_api",result="failed"} 3)",
                R"(grelay_upstream_health_check_marked_down_total{upstream="secure_api"} 1)",
            }));
  EXPECT_EQ(sampleLines(text, "grelay_upstream_servers_down"),
            (std::vector<std::string>{R"(grelay_upstream_servers_down{upstream="secure_api"} 1)"}));
}

TEST(StatsRegistryTest, HealthCheckCountersSurviveAReloadByPoolName) {
  auto first = std::make_shared<config::Config>(makeConfig(address("127.0.0.1", 0)));
  first->upstreams[0].check_interval = config::Duration(1'000);
  auto second = std::make_shared<config::Config>(*first);
  std::swap(second->upstreams[0], second->upstreams[1]);  // "app" moves to index 1
  for (auto& l : second->listeners) {
    l.upstream_index = 1 - l.upstream_index;
  }
  auto workers1 = makeWorkers(*first, 1);
  auto workers2 = makeWorkers(*second, 1);
  UpstreamStats old, fresh;
  old.checks.add(5);
  old.checkFailures.add(2);
  old.serversDown.set(1);
  fresh.checks.add(1);
  StatsRegistry registry;
  registry.add(first, {workers1[0].get()}, "mainline", {&old, nullptr});
  registry.add(second, {workers2[0].get()}, "mainline", {nullptr, &fresh});
  AdminInputs inputs;
  inputs.registry = &registry;
  auto lines = [&] {
    std::vector<std::string> out =
        sampleLines(StatsCollector(inputs).render(), "grelay_upstream_h");
    for (const auto& l : sampleLines(StatsCollector(inputs).render(), "grelay_upstream_servers")) {
      out.push_back(l);
    }
    return out;
  };
  const std::vector<std::string> expected = {
      R"(grelay_upstream_health_checks_total{upstream="app",result="ok"} 4)",
      R"(grelay_upstream_health_checks_total{upstream="app",result="failed"} 2)",
      R"(grelay_upstream_health_check_marked_down_total{upstream="app"} 0)",
      R"(grelay_upstream_servers_down{upstream="app"} 0)",  // the newest generation's
  };
  EXPECT_EQ(lines(), expected);
  registry.retire(first.get());  // folded into the retired totals by name
  EXPECT_EQ(lines(), expected);
}

// A reload's pool shares the open-connection counter of every server it keeps (proxy's
// UpstreamPool::inheritHealth), so the newest view already counts the sessions older
// generations hold: the collector reads it alone, and by the newest config's order.
TEST(StatsRegistryTest, PerServerSeriesComeFromTheNewestGenerationsView) {
  auto first = std::make_shared<config::Config>(makeConfig(address("127.0.0.1", 0)));
  first->upstreams[0].servers.push_back({address("127.0.0.1", 8001), "b"});
  auto second = std::make_shared<config::Config>(*first);
  // The reload swaps the two servers of "app" and adds a third.
  std::swap(second->upstreams[0].servers[0], second->upstreams[0].servers[1]);
  second->upstreams[0].servers.push_back({address("127.0.0.1", 8002), "c"});
  auto workers1 = makeWorkers(*first, 1);
  auto workers2 = makeWorkers(*second, 1);
  testing::FakeUpstreamView oldView({5, 7}, {false, false});           // 8000, 8001
  testing::FakeUpstreamView newView({1, 2, 3}, {true, false, false});  // 8001, 8000, 8002
  UpstreamStats oldStats, newStats;
  oldStats.view = &oldView;
  newStats.view = &newView;
  StatsRegistry registry;
  registry.add(first, {workers1[0].get()}, "mainline", {&oldStats, nullptr});
  registry.add(second, {workers2[0].get()}, "mainline", {&newStats, nullptr});
  AdminInputs inputs;
  inputs.registry = &registry;
  const std::string text = StatsCollector(inputs).render();
  std::vector<std::string> lines = sampleLines(text, "grelay_upstream_server_active");
  for (const std::string& line : sampleLines(text, "grelay_upstream_server_up")) {
    lines.push_back(line);
  }
  EXPECT_EQ(lines,
            (std::vector<std::string>{
                R"(grelay_upstream_server_active_connections{upstream="app",server="b"} 1)",
                R"(grelay_upstream_server_active_connections{upstream="app",server="app1"} 2)",
                R"(grelay_upstream_server_active_connections{upstream="app",server="c"} 3)",
                R"(grelay_upstream_server_up{upstream="app",server="b"} 0)",
                R"(grelay_upstream_server_up{upstream="app",server="app1"} 1)",
                R"(grelay_upstream_server_up{upstream="app",server="c"} 1)",
            }));
}

// Certificate and CRL dates are read when a generation is built: a reload that brings a
// renewed certificate or a refreshed list moves the gauges, and a draining generation's
// older files are not exposed.
TEST(StatsRegistryTest, TlsDatesComeFromTheNewestGeneration) {
  auto first = std::make_shared<config::Config>(makeConfig(address("127.0.0.1", 0)));
  auto second = std::make_shared<config::Config>(*first);
  auto workers1 = makeWorkers(*first, 1);
  auto workers2 = makeWorkers(*second, 1);
  using Kind = TlsFileDate::Kind;
  StatsRegistry registry;
  registry.add(first, {workers1[0].get()}, "copy", {},
               {{Kind::kListenerCertificate, "web", "/etc/grelay/web.pem", 1780000000},
                {Kind::kClientCrl, "web", "/etc/grelay/crl.pem", 1765000000}});
  AdminInputs inputs;
  inputs.registry = &registry;
  auto lines = [&] {
    const std::string text = StatsCollector(inputs).render();
    std::vector<std::string> out = sampleLines(text, "grelay_tls_c");
    for (const auto& l : sampleLines(text, "grelay_upstream_tls_certificate")) {
      out.push_back(l);
    }
    return out;
  };
  EXPECT_EQ(
      lines(),
      (std::vector<std::string>{
          R"(grelay_tls_certificate_expiry_timestamp_seconds{listener="web",file="/etc/grelay/web.pem"} 1780000000)",
          R"(grelay_tls_crl_next_update_timestamp_seconds{listener="web",file="/etc/grelay/crl.pem"} 1765000000)",
      }));
  registry.add(second, {workers2[0].get()}, "copy", {},
               {{Kind::kListenerCertificate, "web", "/etc/grelay/web.pem", 1790000000},
                {Kind::kListenerCertificate, "web", "/etc/grelay/api.pem", 1785000000},
                {Kind::kUpstreamCertificate, "secure_api", "/etc/grelay/client.pem", 1770000000},
                {Kind::kClientCrl, "web", "/etc/grelay/crl.pem", 1766000000}});
  const std::vector<std::string> renewed = {
      R"(grelay_tls_certificate_expiry_timestamp_seconds{listener="web",file="/etc/grelay/web.pem"} 1790000000)",
      R"(grelay_tls_certificate_expiry_timestamp_seconds{listener="web",file="/etc/grelay/api.pem"} 1785000000)",
      R"(grelay_tls_crl_next_update_timestamp_seconds{listener="web",file="/etc/grelay/crl.pem"} 1766000000)",
      R"(grelay_upstream_tls_certificate_expiry_timestamp_seconds{upstream="secure_api",file="/etc/grelay/client.pem"} 1770000000)",
  };
  EXPECT_EQ(lines(), renewed);
  registry.retire(first.get());
  EXPECT_EQ(lines(), renewed);
}

TEST(AdminWorkersTest, NoWorkersExposesZerosForEveryConfiguredSeries) {
  const config::Config config = makeConfig(address("127.0.0.1", 0));
  AdminInputs inputs;
  inputs.config = &config;
  inputs.relayPath = "group";
  const auto expo = parseExposition(StatsCollector(inputs).render());
  size_t grelay = 0;
  for (const auto& s : expo.samples) {
    if (s.name.rfind("grelay_", 0) != 0) {
      continue;
    }
    ++grelay;
    if (s.name == "grelay_build_info" || s.name == "grelay_relay_path_info") {
      EXPECT_EQ(s.value, "1") << s.line;
    } else if (s.name == "grelay_max_connections") {
      EXPECT_EQ(s.value, "5000");
    } else if (s.name == "grelay_listener_max_connections") {
      EXPECT_EQ(s.value, "100");
    } else if (s.name == "grelay_listener_max_connection_rate") {
      EXPECT_EQ(s.value, "50");
    } else {
      EXPECT_EQ(s.value, "0") << s.line;
    }
  }
  // All but the 10 per-server series, which need a live view of the pool, the 6 reload
  // series, which need the server's ReloadStats, and the 7 certificate, CA, CRL and OCSP
  // dates and the 3 series of a fetched OCSP response, which need the TLS contexts.
  EXPECT_EQ(grelay, splitLines(kExpectedGrelaySamples).size() - 10 - 6 - 7 - 3);
}

TEST_F(AdminTest, BusyPortFailsWithAClearError) {
  ListeningSocket busy;
  config_.admin.listen = address("127.0.0.1", busy.port);
  std::string error;
  std::unique_ptr<AdminServer> admin;
  EXPECT_NO_THROW(admin = startAdmin(inputs(), &error));
  EXPECT_EQ(admin, nullptr);
  EXPECT_EQ(error, "cannot serve metrics on 127.0.0.1:" + std::to_string(busy.port) +
                       ": Address already in use");
}

TEST_F(AdminTest, AddressNotOnThisHostFailsWithAClearError) {
  config_.admin.listen = address("192.0.2.1", 9100);  // TEST-NET-1, never local
  std::string error;
  std::unique_ptr<AdminServer> admin;
  EXPECT_NO_THROW(admin = startAdmin(inputs(), &error));
  EXPECT_EQ(admin, nullptr);
  EXPECT_EQ(error, "cannot serve metrics on 192.0.2.1:9100: Cannot assign requested address");
}

TEST_F(AdminTest, Ipv6AddressServesOrSaysCivetwebLacksIpv6) {
  config_.admin.listen = address("::1", 0);
  std::string error;
  std::unique_ptr<AdminServer> admin;
  EXPECT_NO_THROW(admin = startAdmin(inputs(), &error));
  if (admin == nullptr) {
    EXPECT_EQ(error.rfind("cannot serve metrics on [::1]:0: the installed civetweb", 0), 0u)
        << error;
    EXPECT_NE(error.find("without IPv6"), std::string::npos) << error;
  } else {
    EXPECT_GT(admin->port(), 0);
  }
}

TEST_F(AdminTest, HttpGetOnMetricsReturnsTheExposition) {
  const auto admin = start();
  ASSERT_NE(admin, nullptr);
  ASSERT_GT(admin->port(), 0);
  const std::string response = httpGet(admin->port(), "/metrics");
  ASSERT_EQ(response.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << response.substr(0, 200);
  const std::string headers = response.substr(0, response.find("\r\n\r\n"));
  EXPECT_NE(headers.find("Content-Type: text/plain"), std::string::npos) << headers;
  const std::string body = bodyOf(response);
  EXPECT_EQ(sampleLines(body, "grelay_"), splitLines(kExpectedGrelaySamples));
  EXPECT_EQ(sampleLines(body, "grelay_"), sampleLines(admin->render(), "grelay_"));
  EXPECT_EQ(sampleLines(body, "process_").size(), 6u);
  EXPECT_EQ(sampleLines(body, "exposer_scrapes_total").size(), 1u);  // prometheus-cpp's own
}

std::set<std::string> threadIds() {
  std::set<std::string> ids;
  DIR* dir = opendir("/proc/self/task");
  while (const dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') {
      ids.insert(entry->d_name);
    }
  }
  closedir(dir);
  return ids;
}

// The "SigBlk:" mask of a thread of this process, as a number.
unsigned long long blockedSignals(const std::string& tid) {
  std::ifstream in("/proc/self/task/" + tid + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("SigBlk:", 0) == 0) {
      return std::stoull(line.substr(7), nullptr, 16);
    }
  }
  return 0;
}

TEST_F(AdminTest, HttpThreadsNeverTakeTermIntOrHup) {
  // grelay waits for SIGTERM/SIGINT/SIGHUP synchronously in its main thread; a civetweb
  // thread that left them unblocked would get them instead and die of SIGTERM.
  sigset_t none;
  sigemptyset(&none);
  ASSERT_EQ(pthread_sigmask(SIG_SETMASK, &none, nullptr), 0);
  const auto before = threadIds();
  const auto admin = start();
  ASSERT_NE(admin, nullptr);
  size_t created = 0;
  for (const auto& tid : threadIds()) {
    if (before.count(tid) != 0) {
      continue;
    }
    ++created;
    const unsigned long long mask = blockedSignals(tid);
    for (int sig : {SIGTERM, SIGINT, SIGHUP}) {
      EXPECT_TRUE(mask & (1ull << (sig - 1))) << "thread " << tid << " signal " << sig;
    }
  }
  EXPECT_GE(created, 2u);  // civetweb's master and workers
  sigset_t current;
  pthread_sigmask(SIG_SETMASK, nullptr, &current);
  EXPECT_EQ(sigismember(&current, SIGTERM), 0);  // the caller's mask is restored
}

TEST_F(AdminTest, HttpGetOnAnotherPathIsNotFound) {
  const auto admin = start();
  ASSERT_NE(admin, nullptr);
  const std::string response = httpGet(admin->port(), "/");
  const std::string status = response.substr(0, response.find("\r\n"));
  EXPECT_EQ(status.substr(status.find(' ')), " 404 Not Found") << response;
}

uint64_t monotonicNow() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

TEST_F(AdminTest, ReadyFollowsTheServingStateAndHealthzOnlyStalls) {
  Liveness live;
  AdminInputs in = inputs();
  in.liveness = &live;
  const uint64_t now = 100'000'000'000ull;
  auto ready = [&] {
    const ProbeAnswer a = answerReady(in, now);
    return std::to_string(a.status) + " " + a.body;
  };
  auto healthz = [&] {
    const ProbeAnswer a = answerHealthz(in, now);
    return std::to_string(a.status) + " " + a.body;
  };
  EXPECT_EQ(ready(), "503 starting\n");  // listeners and workers still being set up
  EXPECT_EQ(healthz(), "200 ok\n");
  live.serving = Serving::kReady;
  EXPECT_EQ(ready(), "200 ready\n");
  // Loops that have not started, that went round lately or that have ended are fine.
  workers_[0]->beat = now - 9'000'000'000ull;
  workers_[1]->beat = kBeatFinished;
  live.mainBeat = now - 50'000'000ull;
  EXPECT_EQ(ready(), "200 ready\n");
  EXPECT_EQ(healthz(), "200 ok\n");
  // A worker stuck past kStalledAfterNanos fails both: restart me, send nothing here.
  workers_[0]->beat = now - 12'500'000'000ull;
  EXPECT_EQ(healthz(), "503 stalled: worker 0 has not gone round its loop for 12.5s\n");
  EXPECT_EQ(ready(), "503 stalled: worker 0 has not gone round its loop for 12.5s\n");
  workers_[0]->beat = now;
  live.mainBeat = now - 11'000'000'000ull;
  EXPECT_EQ(healthz(), "503 stalled: the main thread has not gone round its loop for 11.0s\n");
  // [admin] stall_timeout moves the threshold: 11s is within 30s, 3.5s is past 3s.
  live.stallNanos = 30'000'000'000ull;
  EXPECT_EQ(healthz(), "200 ok\n");
  live.stallNanos = 3'000'000'000ull;
  live.mainBeat = now;
  workers_[0]->beat = now - 3'500'000'000ull;
  EXPECT_EQ(healthz(), "503 stalled: worker 0 has not gone round its loop for 3.5s\n");
  workers_[0]->beat = now;
  // SIGTERM: alive, but no longer taking new clients.
  live.serving = Serving::kStopping;
  EXPECT_EQ(ready(), "503 stopping\n");
  EXPECT_EQ(healthz(), "200 ok\n");
}

TEST_F(AdminTest, ProbesAnswerOverHttp) {
  Liveness live;
  live.serving = Serving::kReady;
  AdminInputs in = inputs();
  in.liveness = &live;
  std::string error;
  const auto admin = startAdmin(in, &error);
  ASSERT_NE(admin, nullptr) << error;
  std::string response = httpGet(admin->port(), "/ready");
  ASSERT_EQ(response.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << response;
  EXPECT_NE(response.find("Content-Type: text/plain"), std::string::npos) << response;
  EXPECT_NE(response.find("Cache-Control: no-store"), std::string::npos) << response;
  EXPECT_EQ(bodyOf(response), "ready\n");
  EXPECT_EQ(bodyOf(httpGet(admin->port(), "/healthz?verbose=1")), "ok\n");  // query ignored
  response = httpRequest(admin->port(), "HEAD", "/ready");
  EXPECT_EQ(response.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << response;
  EXPECT_NE(response.find("Content-Length: 6\r\n"), std::string::npos) << response;
  EXPECT_EQ(bodyOf(response), "");
  response = httpRequest(admin->port(), "POST", "/ready");
  EXPECT_EQ(response.rfind("HTTP/1.1 405 Method Not Allowed\r\n", 0), 0u) << response;
  EXPECT_NE(response.find("Allow: GET, HEAD\r\n"), std::string::npos) << response;
  workers_[1]->beat = monotonicNow() - 30'000'000'000ull;
  response = httpGet(admin->port(), "/healthz");
  EXPECT_EQ(response.rfind("HTTP/1.1 503 Service Unavailable\r\n", 0), 0u) << response;
  EXPECT_EQ(bodyOf(response).rfind("stalled: worker 1 has not gone round its loop for 30.", 0), 0u)
      << response;
  live.serving = Serving::kStopping;
  workers_[1]->beat = kBeatFinished;
  EXPECT_EQ(bodyOf(httpGet(admin->port(), "/ready")), "stopping\n");
  // The probes leave /metrics to prometheus-cpp.
  EXPECT_EQ(httpGet(admin->port(), "/metrics").rfind("HTTP/1.1 200 OK\r\n", 0), 0u);
}

TEST(StatsRegistryTest, ProbesWatchEveryGenerationsWorkers) {
  StatsRegistry registry;
  auto cfg = std::make_shared<const config::Config>(makeConfig(address("127.0.0.1", 0)));
  auto older = makeWorkers(*cfg, 1);
  auto newer = makeWorkers(*cfg, 2);
  registry.add(cfg, {older[0].get()}, "mainline");
  auto cfg2 = std::make_shared<const config::Config>(*cfg);
  registry.add(cfg2, {newer[0].get(), newer[1].get()}, "mainline");
  registry.liveness().serving = Serving::kReady;
  AdminInputs in;
  in.registry = &registry;
  const uint64_t now = 100'000'000'000ull;
  EXPECT_EQ(answerReady(in, now).status, 200);
  older[0]->beat = now - 20'000'000'000ull;  // a draining generation's worker is stuck
  EXPECT_EQ(answerHealthz(in, now).body,
            "stalled: worker 0 (of an older generation) has not gone round its loop for 20.0s\n");
  registry.retire(cfg.get());
  EXPECT_EQ(answerHealthz(in, now).body, "ok\n");
}

TEST_F(AdminTest, DestroyingTheServerReleasesThePort) {
  auto admin = start();
  ASSERT_NE(admin, nullptr);
  const uint16_t port = admin->port();
  admin.reset();
  EXPECT_EQ(httpGet(port, "/metrics"), "connect failed");
  config_.admin.listen = address("127.0.0.1", port);
  admin = start();  // the same port again (a restart or a reload)
  ASSERT_NE(admin, nullptr);
  EXPECT_EQ(admin->port(), port);
}

TEST_F(AdminTest, PromtoolAcceptsTheRenderedExposition) {
  if (!havePromtool()) {
    GTEST_SKIP() << "promtool not installed (Debian package prometheus)";
  }
  const auto [status, output] = promtoolCheckMetrics(StatsCollector(inputs()).render());
  EXPECT_EQ(status, 0) << output;
  EXPECT_EQ(output, "");
}

TEST_F(AdminTest, PromtoolAcceptsTheScrapedExposition) {
  if (!havePromtool()) {
    GTEST_SKIP() << "promtool not installed (Debian package prometheus)";
  }
  const auto admin = start();
  ASSERT_NE(admin, nullptr);
  httpGet(admin->port(), "/metrics");  // so exposer_* carry numbers, not NaN only
  const auto [status, output] = promtoolCheckMetrics(bodyOf(httpGet(admin->port(), "/metrics")));
  EXPECT_EQ(status, 0) << output;
}

}  // namespace
}  // namespace grelay::metrics
