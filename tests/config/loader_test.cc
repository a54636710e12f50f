// Validation of whole config files: every error kind with its exact
// "FILE:LINE:COL: message" text, defaults, stored values and the shipped examples.
#include <netdb.h>
#include <sys/un.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <filesystem>

#include "config/loader.h"
#include "tests/config/test_util.h"

namespace grelay::config {
namespace {

using test::errorsOf;
using test::lines;
using test::TempDir;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::SizeIs;

// A valid file: one upstream (lines 1-2) and one listener (lines 4-7). Tests
// append keys to the listener table after line 7.
const std::string kValid = lines({
    R"([upstream.app])",
    R"(servers = ["127.0.0.1:8000"])",
    R"()",
    R"([[listener]])",
    R"(name = "web")",
    R"(listen = "127.0.0.1:8080")",
    R"(upstream = "app")",
});

std::string validWith(std::initializer_list<std::string_view> more) {
  return kValid + lines(more);
}

TEST(LoaderTest, MinimalFileLoadsWithDefaults) {
  LoadResult result = loadString(kValid, "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const Config& config = *result.config;
  EXPECT_EQ(config.path, "t.toml");
  EXPECT_EQ(config.server.workers, 1u);
  EXPECT_EQ(config.server.relay_path, RelayPath::Auto);
  EXPECT_EQ(config.server.chunk_size, 64u * 1024);
  EXPECT_EQ(config.server.max_connections, 10000u);
  EXPECT_EQ(config.server.drain_timeout, Duration(10'000));
  EXPECT_EQ(config.server.shutdown_delay, Duration(0));
  EXPECT_EQ(config.server.buffer_pool, 16u * 1024 * 1024);
  EXPECT_EQ(config.server.user, "");
  EXPECT_EQ(config.server.location.line, 0u);  // no [server] table
  EXPECT_FALSE(config.admin.listen.has_value());

  ASSERT_EQ(config.upstreams.size(), 1u);
  const UpstreamConfig& app = config.upstreams[0];
  EXPECT_EQ(app.name, "app");
  ASSERT_EQ(app.servers.size(), 1u);
  EXPECT_EQ(app.servers[0].address.text, "127.0.0.1:8000");
  EXPECT_EQ(app.balance, Balance::RoundRobin);
  EXPECT_EQ(app.max_fails, 1u);
  EXPECT_EQ(app.fail_timeout, Duration(10'000));
  EXPECT_EQ(app.proxy_protocol, ProxyProtocol::Off);
  EXPECT_FALSE(app.tls.enabled);
  EXPECT_EQ(app.location.line, 1u);

  ASSERT_EQ(config.listeners.size(), 1u);
  const ListenerConfig& web = config.listeners[0];
  EXPECT_EQ(web.name, "web");
  EXPECT_EQ(web.listen.text, "127.0.0.1:8080");
  EXPECT_EQ(web.listen.family(), AF_INET);
  EXPECT_EQ(web.upstream, "app");
  EXPECT_EQ(web.upstream_index, 0u);
  EXPECT_EQ(web.connect_timeout, Duration(5'000));
  EXPECT_EQ(web.idle_timeout, Duration(3'600'000));
  EXPECT_EQ(web.tcp_keepalive, Duration(0));
  EXPECT_EQ(web.max_connections, 0u);
  EXPECT_FALSE(web.accept_proxy_protocol);
  EXPECT_FALSE(web.tls.has_value());
  EXPECT_TRUE(web.mirrors.empty());
  EXPECT_FALSE(web.tap.has_value());
  EXPECT_EQ(web.location.file, "t.toml");
  EXPECT_EQ(web.location.line, 4u);
  EXPECT_EQ(web.location.column, 1u);
}

TEST(LoaderTest, MirrorAndTapDefaultsApplied) {
  LoadResult result = loadString(validWith({
                                     R"([[listener.mirror]])",
                                     R"(name = "m")",
                                     R"(address = "127.0.0.1:9001")",
                                     R"([listener.tap])",
                                     R"(path = "var/tap")",
                                 }),
                                 "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const ListenerConfig& web = result.config->listeners[0];
  ASSERT_EQ(web.mirrors.size(), 1u);
  EXPECT_EQ(web.mirrors[0].sample_percent, 100u);
  EXPECT_EQ(web.mirrors[0].max_lag, 8u * 1024 * 1024);
  EXPECT_EQ(web.mirrors[0].direction, MirrorDirection::Request);
  EXPECT_EQ(web.mirrors[0].max_fails, 1u);
  EXPECT_EQ(web.mirrors[0].fail_timeout, Duration(10'000));
  EXPECT_EQ(web.mirrors[0].location.line, 8u);
  ASSERT_TRUE(web.tap.has_value());
  EXPECT_EQ(web.tap->path, "var/tap");
  EXPECT_EQ(web.tap->max_size, 1024ull * 1024 * 1024);
  EXPECT_EQ(web.tap->max_lag, 8u * 1024 * 1024);
  EXPECT_EQ(web.tap->location.line, 11u);
}

TEST(LoaderTest, EveryValueIsStored) {
  TempDir dir;
  std::string cert = dir.write("cert.pem", "cert");
  std::string key = dir.write("key.pem", "key");
  std::string ca = dir.write("ca.pem", "ca");
  LoadResult result = loadString(
      lines({
          R"([server])",
          R"(workers = 0)",
          R"(relay_path = "mainline")",
          R"(chunk_size = 16384)",
          R"(max_connections = 20)",
          R"(drain_timeout = "1m30s")",
          R"(buffer_pool = "1MB")",
          R"(user = "nobody")",
          R"([admin])",
          R"(listen = "[::1]:9100")",
          R"([upstream.app])",
          R"(servers = ["127.0.0.1:8000", "localhost:8001"])",
          R"(balance = "least_conn")",
          R"(max_fails = 3)",
          R"(fail_timeout = "30s")",
          R"(check_interval = "15s")",
          R"(check_timeout = "500ms")",
          R"(resolve_interval = "30s")",
          R"(resolve_hold = "2m")",
          R"(proxy_protocol = "v2")",
          R"(proxy_protocol_tlvs = ["alpn", "authority", "ssl", "unique_id", "received", "crc32c"])",
          "tls = { ca = \"" + ca +
              "\", sni = \"app.test\", verify = false, forward_sni = true, session_reuse = false }",
          R"([[listener]])",
          R"(name = "web-1_a")",
          R"(listen = "0.0.0.0:8080")",
          R"(upstream = "app")",
          R"(connect_timeout = "250ms")",
          R"(idle_timeout = "100us")",
          R"(max_connections = 7)",
          R"(accept_proxy_protocol = true)",
          "tls = { cert = \"" + cert + "\", key = \"" + key + "\", handshake_timeout = \"3s\" }",
          R"([[listener.mirror]])",
          R"(name = "shadow")",
          R"(address = "[::1]:9001")",
          R"(sample_percent = 0)",
          R"(max_lag = "16KiB")",
          R"(direction = "both")",
          R"(max_fails = 0)",
          R"(fail_timeout = "1m")",
          R"(resolve_interval = "100ms")",
          R"(resolve_hold = "5s")",
          R"([listener.tap])",
          R"(path = "tap dir")",
          R"(max_size = "2GB")",
          R"(max_lag = 65536)",
      }),
      "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const Config& c = *result.config;
  EXPECT_EQ(c.server.workers, 0u);
  EXPECT_EQ(c.server.relay_path, RelayPath::Mainline);
  EXPECT_EQ(c.server.chunk_size, 16384u);
  EXPECT_EQ(c.server.max_connections, 20u);
  EXPECT_EQ(c.server.drain_timeout, Duration(90'000));
  EXPECT_EQ(c.server.buffer_pool, 1'000'000u);
  EXPECT_EQ(c.server.user, "nobody");
  EXPECT_EQ(c.server.location.line, 1u);
  ASSERT_TRUE(c.admin.listen.has_value());
  EXPECT_EQ(c.admin.listen->family(), AF_INET6);
  EXPECT_EQ(c.admin.listen->text, "[::1]:9100");
  const UpstreamConfig& app = c.upstreams[0];
  ASSERT_EQ(app.servers.size(), 2u);
  EXPECT_EQ(app.servers[1].address.text, "localhost:8001");
  EXPECT_EQ(ntohs(reinterpret_cast<const sockaddr_in&>(app.servers[1].address.storage).sin_port),
            8001);
  EXPECT_EQ(app.balance, Balance::LeastConn);
  EXPECT_EQ(app.max_fails, 3u);
  EXPECT_EQ(app.fail_timeout, Duration(30'000));
  EXPECT_EQ(app.check_interval, Duration(15'000));
  EXPECT_EQ(app.check_timeout, Duration(500));
  EXPECT_EQ(app.resolve_interval, Duration(30'000));
  EXPECT_EQ(app.resolve_hold, Duration(120'000));
  EXPECT_FALSE(app.servers[0].address.host_name);
  EXPECT_TRUE(app.servers[1].address.host_name);
  EXPECT_EQ(app.proxy_protocol, ProxyProtocol::V2);
  EXPECT_TRUE(app.proxy_protocol_tlvs.alpn && app.proxy_protocol_tlvs.authority &&
              app.proxy_protocol_tlvs.ssl && app.proxy_protocol_tlvs.unique_id &&
              app.proxy_protocol_tlvs.received && app.proxy_protocol_tlvs.crc32c);
  EXPECT_TRUE(app.tls.enabled);
  EXPECT_EQ(app.tls.ca, ca);
  EXPECT_EQ(app.tls.sni, "app.test");
  EXPECT_FALSE(app.tls.verify);
  EXPECT_TRUE(app.tls.forward_sni);
  EXPECT_FALSE(app.tls.session_reuse);
  const ListenerConfig& web = c.listeners[0];
  EXPECT_EQ(web.name, "web-1_a");
  EXPECT_EQ(web.connect_timeout, Duration(250));
  EXPECT_EQ(web.idle_timeout, Duration(1));  // 100us rounds up, never to 0
  EXPECT_EQ(web.max_connections, 7u);
  EXPECT_TRUE(web.accept_proxy_protocol);
  ASSERT_TRUE(web.tls.has_value());
  EXPECT_EQ(web.tls->cert, cert);
  EXPECT_EQ(web.tls->key, key);
  EXPECT_EQ(web.tls->handshake_timeout, Duration(3'000));
  EXPECT_EQ(web.tls->location.line, 31u);
  EXPECT_EQ(web.tls->location.column, 7u);
  const MirrorConfig& shadow = web.mirrors.at(0);
  EXPECT_EQ(shadow.name, "shadow");
  EXPECT_EQ(shadow.address.family(), AF_INET6);
  EXPECT_EQ(shadow.sample_percent, 0u);
  EXPECT_EQ(shadow.max_lag, 16384u);
  EXPECT_EQ(shadow.direction, MirrorDirection::Both);
  EXPECT_EQ(shadow.max_fails, 0u);
  EXPECT_EQ(shadow.fail_timeout, Duration(60'000));
  EXPECT_EQ(shadow.resolve_interval, Duration(100));
  EXPECT_EQ(shadow.resolve_hold, Duration(5'000));
  EXPECT_FALSE(shadow.address.host_name);
  EXPECT_EQ(web.tap->path, "tap dir");
  EXPECT_EQ(web.tap->max_size, 2'000'000'000u);
  EXPECT_EQ(web.tap->max_lag, 65536u);
}

TEST(LoaderTest, ShutdownDelayIsStored) {
  LoadResult result = loadString("[server]\nshutdown_delay = \"5s\"\n" + kValid, "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_EQ(result.config->server.shutdown_delay, Duration(5'000));
}

TEST(LoaderTest, MaxConnectionsPerClientIsStored) {
  LoadResult result = loadString(kValid + "max_connections_per_client = 20\n", "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_EQ(result.config->listeners[0].max_connections_per_client, 20u);
  EXPECT_EQ(loadString(kValid, "t.toml").config->listeners[0].max_connections_per_client, 0u);
}

TEST(LoaderTest, MaxConnectionRatePerClientIsStoredAndBounded) {
  LoadResult result = loadString(kValid + "max_connection_rate_per_client = 50\n", "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_EQ(result.config->listeners[0].max_connection_rate_per_client, 50u);
  EXPECT_EQ(loadString(kValid, "t.toml").config->listeners[0].max_connection_rate_per_client, 0u);
  for (const char* bad : {"-1", "1000001", "\"10/s\""}) {
    EXPECT_THAT(errorsOf(kValid + "max_connection_rate_per_client = " + bad + "\n"),
                ElementsAre(testing::HasSubstr("'max_connection_rate_per_client'")))
        << bad;
  }
}

TEST(LoaderTest, MaxSessionDurationIsStoredAndBounded) {
  EXPECT_EQ(loadString(kValid, "t.toml").config->listeners[0].max_session_duration, Duration(0));
  for (const auto& [text, value] :
       {std::pair<const char*, int64_t>{"0s", 0}, {"90s", 90'000}, {"720h", 720ll * 3'600'000}}) {
    LoadResult result = loadString(kValid + "max_session_duration = \"" + text + "\"\n", "t.toml");
    ASSERT_TRUE(result.ok()) << text << ": " << result.errors[0].toString();
    EXPECT_EQ(result.config->listeners[0].max_session_duration, Duration(value)) << text;
  }
  for (const char* bad : {"\"721h\"", "60", "\"-1s\""}) {
    EXPECT_THAT(errorsOf(kValid + "max_session_duration = " + bad + "\n"),
                ElementsAre(testing::HasSubstr("'max_session_duration'")))
        << bad;
  }
}

TEST(LoaderTest, AdminStallTimeoutIsStoredAndBounded) {
  EXPECT_EQ(loadString(kValid, "t.toml").config->admin.stall_timeout, Duration(10'000));
  LoadResult result = loadString(
      "[admin]\nlisten = \"127.0.0.1:9100\"\nstall_timeout = \"30s\"\n" + kValid, "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_EQ(result.config->admin.stall_timeout, Duration(30'000));
  LoadResult tooShort = loadString("[admin]\nstall_timeout = \"1s\"\n" + kValid, "t.toml");
  ASSERT_FALSE(tooShort.ok());
  EXPECT_NE(tooShort.errors[0].toString().find("stall_timeout"), std::string::npos)
      << tooShort.errors[0].toString();
}

TEST(LoaderTest, MaxConnectionRateIsStoredAndBounded) {
  LoadResult result = loadString(kValid + "max_connection_rate = 250\n", "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_EQ(result.config->listeners[0].max_connection_rate, 250u);
  EXPECT_EQ(loadString(kValid, "t.toml").config->listeners[0].max_connection_rate, 0u);
  LoadResult tooHigh = loadString(kValid + "max_connection_rate = 1000001\n", "t.toml");
  ASSERT_FALSE(tooHigh.ok());
  EXPECT_NE(tooHigh.errors[0].toString().find("max_connection_rate"), std::string::npos)
      << tooHigh.errors[0].toString();
  EXPECT_FALSE(loadString(kValid + "max_connection_rate = -1\n", "t.toml").ok());
  EXPECT_FALSE(loadString(kValid + "max_connection_rate = \"10/s\"\n", "t.toml").ok());
}

TEST(LoaderTest, UpstreamTlsTrueEnablesWithDefaults) {
  LoadResult result =
      loadString(lines({R"([upstream.app])", R"(servers = ["127.0.0.1:8000"])", R"(tls = true)"}) +
                     lines({R"([[listener]])", R"(name = "web")", R"(listen = "127.0.0.1:8080")",
                            R"(upstream = "app")"}),
                 "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_TRUE(result.config->upstreams[0].tls.enabled);
  EXPECT_TRUE(result.config->upstreams[0].tls.verify);
  EXPECT_EQ(result.config->upstreams[0].tls.ca, "");
}

TEST(LoaderTest, ListenerResolvesItsUpstreamIndex) {
  LoadResult result = loadString(lines({
                                     R"([upstream.b])",
                                     R"(servers = ["127.0.0.1:8001"])",
                                     R"([upstream.a])",
                                     R"(servers = ["127.0.0.1:8000"])",
                                     R"([[listener]])",
                                     R"(name = "x")",
                                     R"(listen = "127.0.0.1:8080")",
                                     R"(upstream = "b")",
                                 }),
                                 "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const Config& c = *result.config;
  EXPECT_EQ(c.upstreams.at(c.listeners[0].upstream_index).name, "b");
}

// ---- One test per error kind, exact text ----

TEST(LoaderErrorTest, SyntaxErrorUsesTomlPositionAndDescription) {
  EXPECT_THAT(errorsOf(lines({"[server]", "workers = ", "max_connections = 5"})),
              ElementsAre("t.toml:2:11: Error while parsing key-value pair: expected value, saw "
                          "'\\n'"));
  EXPECT_THAT(errorsOf(lines({"[server]", "workers = 1", "workers = 2"})),
              ElementsAre("t.toml:3:11: Error while parsing key-value pair: cannot redefine "
                          "existing integer 'workers'"));
}

TEST(LoaderErrorTest, UnknownKeyAtTopLevel) {
  EXPECT_THAT(errorsOf("colour = 1\n" + kValid),
              ElementsAre("t.toml:1:1: unknown key 'colour' at top level"));
}

TEST(LoaderErrorTest, UnknownKeyInServer) {
  EXPECT_THAT(errorsOf("[server]\nfoo = 1\n" + kValid),
              ElementsAre("t.toml:2:1: unknown key 'foo' in [server]"));
}

TEST(LoaderErrorTest, UnknownKeySuggestsTheClosestKnownKey) {
  EXPECT_THAT(errorsOf("[server]\nwrokers = 1\n" + kValid),
              ElementsAre("t.toml:2:1: unknown key 'wrokers' in [server] (did you mean "
                          "'workers'?)"));
}

TEST(LoaderErrorTest, UnknownKeyInAdmin) {
  EXPECT_THAT(errorsOf("[admin]\nfoo = 1\n" + kValid),
              ElementsAre("t.toml:2:1: unknown key 'foo' in [admin]"));
}

TEST(LoaderErrorTest, UnknownKeyInUpstream) {
  EXPECT_THAT(errorsOf(lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000"])", "foo = 1",
                              "[[listener]]", R"(name = "web")", R"(listen = "127.0.0.1:8080")",
                              R"(upstream = "app")"})),
              ElementsAre("t.toml:3:1: unknown key 'foo' in [upstream.app]"));
}

TEST(LoaderErrorTest, UnknownKeyInUpstreamTls) {
  EXPECT_THAT(errorsOf(lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000"])",
                              "tls = { foo = 1 }", "[[listener]]", R"(name = "web")",
                              R"(listen = "127.0.0.1:8080")", R"(upstream = "app")"})),
              ElementsAre("t.toml:3:9: unknown key 'foo' in [upstream.app] tls"));
}

TEST(LoaderErrorTest, UnknownKeyInListener) {
  EXPECT_THAT(errorsOf(validWith({"foo = 1"})),
              ElementsAre("t.toml:8:1: unknown key 'foo' in [[listener]]"));
}

TEST(LoaderErrorTest, UnknownKeyInListenerTls) {
  TempDir dir;
  std::string cert = dir.write("cert.pem", "x");
  EXPECT_THAT(
      errorsOf(validWith({"tls = { cert = \"" + cert + "\", key = \"" + cert + "\", foo = 1 }"})),
      ElementsAre("t.toml:8:" + std::to_string(30 + 2 * cert.size()) +
                  ": unknown key 'foo' in [[listener]] tls"));
}

TEST(LoaderErrorTest, UnknownKeyInMirror) {
  EXPECT_THAT(errorsOf(validWith({"[[listener.mirror]]", R"(name = "m")",
                                  R"(address = "127.0.0.1:9001")", "  foo = 1"})),
              ElementsAre("t.toml:11:3: unknown key 'foo' in [[listener.mirror]]"));
}

TEST(LoaderErrorTest, UnknownKeyInTap) {
  EXPECT_THAT(errorsOf(validWith({"[listener.tap]", R"(path = "t")", "foo = 1"})),
              ElementsAre("t.toml:10:1: unknown key 'foo' in [listener.tap]"));
}

TEST(LoaderErrorTest, WrongTypeNamesExpectedAndActualType) {
  EXPECT_THAT(errorsOf("[server]\nworkers = \"4\"\n" + kValid),
              ElementsAre("t.toml:2:11: 'workers' must be an integer, got string"));
  EXPECT_THAT(errorsOf("[server]\nuser = 0\n" + kValid),
              ElementsAre("t.toml:2:8: 'user' must be a string, got integer"));
  EXPECT_THAT(errorsOf("server = 1\n" + kValid),
              ElementsAre("t.toml:1:10: 'server' must be a table ([server]), got integer"));
  EXPECT_THAT(errorsOf(validWith({"connect_timeout = 1.5"})),
              ElementsAre("t.toml:8:19: 'connect_timeout' must be a duration like \"5s\", got "
                          "float"));
  EXPECT_THAT(errorsOf("[server]\nchunk_size = true\n" + kValid),
              ElementsAre("t.toml:2:14: 'chunk_size' must be a size like \"64KiB\" or a byte "
                          "count, got boolean"));
}

TEST(LoaderErrorTest, ListenerMustBeAnArrayOfTables) {
  EXPECT_THAT(errorsOf(lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000"])", "[listener]",
                              R"(name = "web")"})),
              ElementsAre("t.toml:3:1: 'listener' must be an array of tables ([[listener]]), "
                          "got table",
                          "t.toml:3:1: no listener defined (add a [[listener]] table)"));
}

TEST(LoaderErrorTest, DurationWithoutUnitIsRejected) {
  EXPECT_THAT(errorsOf(validWith({R"(connect_timeout = "5")"})),
              ElementsAre("t.toml:8:19: bad duration '5' for 'connect_timeout': missing unit "
                          "(e.g. 5s, 250ms, 1h)"));
  EXPECT_THAT(errorsOf(validWith({R"(connect_timeout = 5)"})),
              ElementsAre("t.toml:8:19: 'connect_timeout' must be a duration with a unit, e.g. "
                          "\"5s\" or \"5ms\", got integer 5"));
}

TEST(LoaderErrorTest, BadDuration) {
  EXPECT_THAT(errorsOf(validWith({R"(idle_timeout = "1d")"})),
              ElementsAre("t.toml:8:16: bad duration '1d' for 'idle_timeout': unknown unit "
                          "(use us, ms, s, m or h)"));
  EXPECT_THAT(errorsOf(validWith({R"(idle_timeout = "-5s")"})),
              ElementsAre("t.toml:8:16: bad duration '-5s' for 'idle_timeout': negative "
                          "durations are not allowed"));
}

TEST(LoaderErrorTest, BadSize) {
  EXPECT_THAT(errorsOf("[server]\nchunk_size = \"64XB\"\n" + kValid),
              ElementsAre("t.toml:2:14: bad size '64XB' for 'chunk_size': unknown unit (use B, "
                          "KiB, MiB, GiB, TiB, KB, MB, GB or TB)"));
  EXPECT_THAT(errorsOf("[server]\nchunk_size = \"1.5MiB\"\n" + kValid),
              ElementsAre("t.toml:2:14: bad size '1.5MiB' for 'chunk_size': fractions are not "
                          "allowed; use a smaller unit (e.g. 1536KiB)"));
}

TEST(LoaderErrorTest, OutOfRangeValuesNameTheRange) {
  EXPECT_THAT(errorsOf("[server]\nworkers = 2000\n" + kValid),
              ElementsAre("t.toml:2:11: 'workers' must be in 0..1024, got 2000"));
  EXPECT_THAT(errorsOf("[server]\nmax_connections = 0\n" + kValid),
              ElementsAre("t.toml:2:19: 'max_connections' must be in 1..10000000, got 0"));
  EXPECT_THAT(errorsOf("[server]\nchunk_size = \"2MiB\"\n" + kValid),
              ElementsAre("t.toml:2:14: 'chunk_size' must be in 4KiB..1MiB, got 2MiB"));
  EXPECT_THAT(errorsOf("[server]\nchunk_size = -4096\n" + kValid),
              ElementsAre("t.toml:2:14: 'chunk_size' must be in 4KiB..1MiB, got -4096"));
  EXPECT_THAT(errorsOf("[server]\ndrain_timeout = \"25h\"\n" + kValid),
              ElementsAre("t.toml:2:17: 'drain_timeout' must be in 0s..24h, got 25h"));
  EXPECT_THAT(errorsOf("[server]\nshutdown_delay = \"25h\"\n" + kValid),
              ElementsAre("t.toml:2:18: 'shutdown_delay' must be in 0s..24h, got 25h"));
  EXPECT_THAT(errorsOf(validWith({R"(connect_timeout = "0s")"})),
              ElementsAre("t.toml:8:19: 'connect_timeout' must be in 1ms..24h, got 0s"));
  EXPECT_THAT(errorsOf(validWith({"[[listener.mirror]]", R"(name = "m")",
                                  R"(address = "127.0.0.1:9001")", "sample_percent = 101"})),
              ElementsAre("t.toml:11:18: 'sample_percent' must be in 0..100, got 101"));
  EXPECT_THAT(errorsOf(validWith({"[listener.tap]", R"(path = "t")", R"(max_size = "512KiB")"})),
              ElementsAre("t.toml:10:12: 'max_size' must be at least 1MiB, got 512KiB"));
}

TEST(LoaderErrorTest, SizeLimitsDerivedFromChunkSize) {
  EXPECT_THAT(errorsOf("[server]\nchunk_size = \"128KiB\"\nbuffer_pool = \"256KiB\"\n" + kValid),
              ElementsAre("t.toml:3:15: 'buffer_pool' must be in 4 x chunk_size (512KiB)..4GiB, "
                          "got 256KiB"));
  EXPECT_THAT(errorsOf("[server]\nbuffer_pool = \"5GiB\"\n" + kValid),
              ElementsAre("t.toml:2:15: 'buffer_pool' must be in 4 x chunk_size (256KiB)..4GiB, "
                          "got 5GiB"));
  EXPECT_THAT(errorsOf("[server]\nchunk_size = \"128KiB\"\n" +
                       validWith({"[[listener.mirror]]", R"(name = "m")",
                                  R"(address = "127.0.0.1:9001")", R"(max_lag = "64KiB")",
                                  "[listener.tap]", R"(path = "t")", "max_lag = 1000"})),
              ElementsAre("t.toml:13:11: 'max_lag' must be at least chunk_size (128KiB), got 64KiB",
                          "t.toml:16:11: 'max_lag' must be at least chunk_size (128KiB), got "
                          "1000B"));
}

TEST(LoaderErrorTest, BadEnumValueListsTheChoices) {
  EXPECT_THAT(errorsOf("[server]\nrelay_path = \"fast\"\n" + kValid),
              ElementsAre("t.toml:2:14: 'relay_path' must be one of auto, group, mainline, copy, "
                          "got 'fast'"));
  EXPECT_THAT(errorsOf(validWith({"[[listener.mirror]]", R"(name = "m")",
                                  R"(address = "127.0.0.1:9001")", R"(direction = "response")"})),
              ElementsAre("t.toml:11:13: 'direction' must be one of request, both, got "
                          "'response'"));
  auto balance = [](const std::string& value) {
    return errorsOf(lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000"])",
                           "balance = \"" + value + "\"", "[[listener]]", R"(name = "web")",
                           R"(listen = "127.0.0.1:8080")", R"(upstream = "app")"}));
  };
  EXPECT_THAT(balance("source"), IsEmpty());
  EXPECT_THAT(balance("random"),
              ElementsAre("t.toml:3:11: 'balance' must be one of round_robin, least_conn, source, "
                          "got 'random'"));
}

TEST(LoaderErrorTest, UnparsableAddress) {
  EXPECT_THAT(errorsOf(validWith({"[[listener.mirror]]", R"(name = "m")", R"(address = "9001")"})),
              ElementsAre("t.toml:10:11: bad address '9001' for 'address': missing port "
                          "(expected HOST:PORT)"));
  EXPECT_THAT(errorsOf("[admin]\nlisten = \"::1:9100\"\n" + kValid),
              ElementsAre("t.toml:2:10: bad address '::1:9100' for 'listen': an IPv6 address "
                          "must be in brackets, e.g. [::1]:8080"));
  EXPECT_THAT(errorsOf("[admin]\nlisten = \"10.1:9100\"\n" + kValid),
              ElementsAre("t.toml:2:10: bad address '10.1:9100' for 'listen': invalid IPv4 "
                          "address '10.1'"));
  EXPECT_THAT(errorsOf("[admin]\nlisten = \"[::g]:9100\"\n" + kValid),
              ElementsAre("t.toml:2:10: bad address '[::g]:9100' for 'listen': invalid IPv6 "
                          "address '::g'"));
}

TEST(LoaderErrorTest, BadPort) {
  EXPECT_THAT(errorsOf("[admin]\nlisten = \"127.0.0.1:0\"\n" + kValid),
              ElementsAre("t.toml:2:10: bad address '127.0.0.1:0' for 'listen': port '0' is not "
                          "in 1..65535"));
  EXPECT_THAT(errorsOf("[admin]\nlisten = \"127.0.0.1:65536\"\n" + kValid),
              ElementsAre("t.toml:2:10: bad address '127.0.0.1:65536' for 'listen': port "
                          "'65536' is not in 1..65535"));
  EXPECT_THAT(errorsOf("[admin]\nlisten = \"127.0.0.1:http\"\n" + kValid),
              ElementsAre("t.toml:2:10: bad address '127.0.0.1:http' for 'listen': port 'http' "
                          "is not in 1..65535"));
}

TEST(LoaderErrorTest, UnresolvableHostIsNamed) {
  // The reason comes from the resolver; ask it the same question.
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  int rc = getaddrinfo("nosuch.invalid", "80", &hints, &found);
  ASSERT_NE(rc, 0) << "nosuch.invalid resolved on this machine";
  EXPECT_THAT(
      errorsOf(lines({"[upstream.app]", R"(servers = ["nosuch.invalid:80"])", "[[listener]]",
                      R"(name = "web")", R"(listen = "127.0.0.1:8080")", R"(upstream = "app")"})),
      ElementsAre("t.toml:2:12: bad address 'nosuch.invalid:80' for 'servers': cannot "
                  "resolve host 'nosuch.invalid': " +
                  std::string(gai_strerror(rc))));
}

TEST(LoaderErrorTest, UnknownUpstream) {
  EXPECT_THAT(
      errorsOf(lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000"])", "[[listener]]",
                      R"(name = "web")", R"(listen = "127.0.0.1:8080")", R"(upstream = "ap")"})),
      ElementsAre("t.toml:6:12: unknown upstream 'ap'"));
}

TEST(LoaderErrorTest, DuplicateListenerName) {
  EXPECT_THAT(errorsOf(validWith({"[[listener]]", R"(name = "web")", R"(listen = "127.0.0.1:8081")",
                                  R"(upstream = "app")"})),
              ElementsAre("t.toml:9:8: duplicate listener name 'web' (first at 5:8)"));
}

TEST(LoaderErrorTest, DuplicateMirrorNameWithinAListener) {
  EXPECT_THAT(errorsOf(validWith({"[[listener.mirror]]", R"(name = "m")",
                                  R"(address = "127.0.0.1:9001")", "[[listener.mirror]]",
                                  R"(name = "m")", R"(address = "127.0.0.1:9002")"})),
              ElementsAre("t.toml:12:8: duplicate mirror name 'm' (first at 9:8)"));
}

TEST(LoaderErrorTest, SameMirrorNameInTwoListenersIsFine) {
  LoadResult result =
      loadString(validWith({"[[listener.mirror]]", R"(name = "m")", R"(address = "127.0.0.1:9001")",
                            "[[listener]]", R"(name = "api")", R"(listen = "127.0.0.1:8081")",
                            R"(upstream = "app")", "[[listener.mirror]]", R"(name = "m")",
                            R"(address = "127.0.0.1:9001")"}),
                 "t.toml");
  EXPECT_TRUE(result.ok()) << result.errors[0].toString();
}

TEST(LoaderErrorTest, DuplicateListenAddress) {
  EXPECT_THAT(errorsOf(validWith({"[[listener]]", R"(name = "api")", R"(listen = "127.0.0.1:8080")",
                                  R"(upstream = "app")"})),
              ElementsAre("t.toml:10:10: duplicate listen address '127.0.0.1:8080' (first at "
                          "6:10)"));
  // Compared after resolution, and [admin] takes part.
  EXPECT_THAT(errorsOf("[admin]\nlisten = \"localhost:8080\"\n" + kValid),
              ElementsAre("t.toml:8:10: duplicate listen address '127.0.0.1:8080' (first at "
                          "2:10)"));
}

TEST(LoaderErrorTest, DuplicateServerInAPool) {
  EXPECT_THAT(errorsOf(lines({"[upstream.app]",
                              R"(servers = ["127.0.0.1:8000", "127.0.0.1:8001", "127.0.0.1:8000"])",
                              "[[listener]]", R"(name = "web")", R"(listen = "127.0.0.1:8080")",
                              R"(upstream = "app")"})),
              ElementsAre("t.toml:2:48: duplicate server '127.0.0.1:8000' in [upstream.app] "
                          "(first at 2:12)"));
}

TEST(LoaderErrorTest, DuplicatesInALargePoolPointAtTheFirst) {
  // Four thousand servers (what all_addresses behind a large headless service gives):
  // checked by endpoint and name lookups, and the error still names the first entry.
  std::string servers = "servers = [";
  for (int i = 0; i < 4000; ++i) {
    servers += "{ address = \"10." + std::to_string(i / 250) + "." + std::to_string(i % 250) +
               ".1:80\", name = \"s" + std::to_string(i) + "\" }, ";
  }
  auto pool = [&](const std::string& last) {
    return errorsOf(
        lines({"[upstream.app]", servers + last + "]", "[[listener]]", R"(name = "web")",
               R"(listen = "127.0.0.1:8080")", R"(upstream = "app")"}));
  };
  EXPECT_THAT(pool(R"("10.9.9.9:80")"), IsEmpty());
  const size_t lastColumn = servers.size() + 1;
  const std::string at = "t.toml:2:" + std::to_string(lastColumn) + ": ";
  // The 1235th entry (index 1234) is 10.4.234.1:80, named s1234.
  const std::string firstColumn = std::to_string(1 + servers.find("{ address = \"10.4.234.1:80\""));
  EXPECT_THAT(pool(R"("10.4.234.1:80")"),
              ElementsAre(at + "duplicate server '10.4.234.1:80' in [upstream.app] (first at 2:" +
                          firstColumn + ")"));
  EXPECT_THAT(pool(R"({ address = "10.9.9.9:80", name = "s1234" })"),
              ElementsAre(at + "duplicate server name 's1234' in [upstream.app] (first at 2:" +
                          firstColumn + ")"));
}

TEST(LoaderTest, EndpointKeysAreEqualExactlyForTheSameEndpoint) {
  auto key = [](const char* text) { return endpointKey(resolveAddresses(text).at(0)); };
  EXPECT_EQ(key("127.0.0.1:80"), key("localhost:80"));
  EXPECT_NE(key("127.0.0.1:80"), key("127.0.0.1:81"));
  EXPECT_NE(key("127.0.0.1:80"), key("127.0.0.2:80"));
  EXPECT_NE(key("127.0.0.1:80"), key("[::ffff:127.0.0.1]:80"));  // another family
  EXPECT_EQ(key("[::1]:80"), key("[0:0::1]:80"));
  EXPECT_NE(key("[::1]:80"), key("[::2]:80"));
  Address scoped = resolveAddresses("[fe80::1]:80").at(0);
  Address other = scoped;
  reinterpret_cast<sockaddr_in6&>(other.storage).sin6_scope_id = 2;
  EXPECT_NE(endpointKey(scoped), endpointKey(other));
}

TEST(LoaderTest, ServersTakeAWeightAndABackupFlag) {
  LoadResult result = loadString(
      lines(
          {R"([upstream.app])",
           R"(servers = ["127.0.0.1:8000", { address = "127.0.0.1:8001", weight = 3, name = "b" },)",
           R"(           { address = "[::1]:8002", backup = true, weight = 256, max_conns = 9 }])",
           "[[listener]]", R"(name = "web")", R"(listen = "127.0.0.1:8080")",
           R"(upstream = "app")"}),
      "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const UpstreamConfig& app = result.config->upstreams.at(0);
  ASSERT_EQ(app.servers.size(), 3u);
  EXPECT_EQ(app.servers[0].address.text, "127.0.0.1:8000");
  EXPECT_EQ(app.servers[0].weight, 1u);
  EXPECT_FALSE(app.servers[0].backup);
  EXPECT_EQ(app.servers[1].address.text, "127.0.0.1:8001");
  EXPECT_EQ(app.servers[1].weight, 3u);
  EXPECT_EQ(app.servers[1].name, "b");
  EXPECT_EQ(app.servers[0].name, "");
  EXPECT_FALSE(app.servers[1].backup);
  EXPECT_EQ(app.servers[2].address.family(), AF_INET6);
  EXPECT_EQ(app.servers[2].weight, 256u);
  EXPECT_TRUE(app.servers[2].backup);
  EXPECT_EQ(app.servers[2].max_conns, 9u);
  EXPECT_EQ(app.servers[1].max_conns, 0u);
}

TEST(LoaderTest, AServerWithAllAddressesIsOneServerPerAddressOfItsName) {
  LoadResult result = loadString(
      lines(
          {R"([upstream.app])",
           R"(servers = ["127.0.0.1:7000", { address = "localhost:8000", all_addresses = true },)",
           R"(           { address = "127.0.0.1:8001", all_addresses = true, name = "x", )"
           R"(weight = 3, max_conns = 5 }, "127.0.0.1:9000"])",
           "[[listener]]", R"(name = "web")", R"(listen = "127.0.0.1:8080")",
           R"(upstream = "app")"}),
      "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const std::vector<Address> local = resolveAddresses("localhost:8000");
  ASSERT_FALSE(local.empty());
  const UpstreamConfig& app = result.config->upstreams.at(0);
  ASSERT_EQ(app.servers.size(), 3 + local.size());
  EXPECT_EQ(app.servers[0].label(), "0");
  EXPECT_FALSE(app.servers[0].all_addresses);
  for (size_t i = 0; i < local.size(); ++i) {
    const UpstreamServer& s = app.servers[1 + i];
    EXPECT_TRUE(s.address.sameEndpoint(local[i]));
    EXPECT_EQ(s.address.text, formatEndpoint(local[i].storage));
    EXPECT_EQ(s.host, "localhost:8000");
    EXPECT_EQ(s.written(), "localhost:8000");
    EXPECT_EQ(s.entry, 1u);
    EXPECT_EQ(s.label(), "1@" + s.address.text);
    EXPECT_TRUE(s.address.host_name);
  }
  // An IP address stands for itself; the fields go to every address.
  const UpstreamServer& x = app.servers[1 + local.size()];
  EXPECT_EQ(x.address.text, "127.0.0.1:8001");
  EXPECT_EQ(x.label(), "x@127.0.0.1:8001");
  EXPECT_EQ(x.entry, 2u);
  EXPECT_EQ(x.weight, 3u);
  EXPECT_EQ(x.max_conns, 5u);
  EXPECT_FALSE(x.address.host_name);           // nothing to look up again
  EXPECT_EQ(app.servers.back().label(), "3");  // its place as written
  EXPECT_EQ(app.servers.back().written(), "127.0.0.1:9000");
}

TEST(LoaderTest, ExpandServerLeavesOutAddressesOfOtherServers) {
  auto at = [](const char* text) { return resolveAddresses(text).at(0); };
  UpstreamServer entry;
  entry.address = at("127.0.0.1:80");
  entry.address.text = "svc:80";
  entry.all_addresses = true;
  entry.entry = 4;
  entry.weight = 2;
  UpstreamServer other;
  other.address = at("127.0.0.2:80");
  std::vector<UpstreamServer> servers = expandServer(
      entry, {at("127.0.0.3:80"), at("127.0.0.2:80"), at("[::1]:80"), at("127.0.0.3:80")}, {other});
  ASSERT_EQ(servers.size(), 2u);
  EXPECT_EQ(servers[0].address.text, "127.0.0.3:80");
  EXPECT_EQ(servers[1].address.text, "[::1]:80");
  for (const UpstreamServer& s : servers) {
    EXPECT_EQ(s.host, "svc:80");
    EXPECT_EQ(s.entry, 4u);
    EXPECT_EQ(s.weight, 2u);
  }
  // Expanding an expanded server again keeps the name as written.
  EXPECT_EQ(expandServer(servers[1], {at("127.0.0.9:80")}, {}).at(0).host, "svc:80");
  EXPECT_TRUE(expandServer(entry, {at("127.0.0.2:80")}, {other}).empty());
}

TEST(LoaderErrorTest, BadServerEntries) {
  auto pool = [](const std::string& line) {
    return errorsOf(lines({"[upstream.app]", line, "[[listener]]", R"(name = "web")",
                           R"(listen = "127.0.0.1:8080")", R"(upstream = "app")"}));
  };
  EXPECT_THAT(pool(R"(servers = [{ address = "127.0.0.1:8000", weight = 0 }])"),
              ElementsAre("t.toml:2:51: 'weight' must be in 1..256, got 0"));
  EXPECT_THAT(pool(R"(servers = [{ address = "127.0.0.1:8000", weight = 257 }])"),
              ElementsAre("t.toml:2:51: 'weight' must be in 1..256, got 257"));
  EXPECT_THAT(pool(R"(servers = [{ weight = 2 }])"),
              ElementsAre("t.toml:2:12: missing required key 'address' in [upstream.app] server"));
  EXPECT_THAT(pool(R"(servers = [{ address = "127.0.0.1:8000", wieght = 2 }])"),
              ElementsAre("t.toml:2:42: unknown key 'wieght' in [upstream.app] server (did you "
                          "mean 'weight'?)"));
  EXPECT_THAT(pool(R"(servers = [{ address = "127.0.0.1:8000", backup = "yes" }])"),
              ElementsAre("t.toml:2:51: 'backup' must be a boolean, got string"));
  EXPECT_THAT(pool(R"(servers = [8000])"),
              ElementsAre("t.toml:2:12: 'servers' must be an array of addresses (\"HOST:PORT\" "
                          "or { address = \"HOST:PORT\", weight = N, backup = true, ... }), got "
                          "integer"));
  EXPECT_THAT(pool(R"(servers = [{ address = "127.0.0.1:8000", backup = true }])"),
              ElementsAre("t.toml:2:11: every server in [upstream.app] is a backup: at least "
                          "one must not be"));
  EXPECT_THAT(
      pool(R"(servers = ["127.0.0.1:8000", { address = "127.0.0.1:8000", backup = true }])"),
      ElementsAre("t.toml:2:30: duplicate server '127.0.0.1:8000' in [upstream.app] "
                  "(first at 2:12)"));
  EXPECT_THAT(pool(R"(servers = [{ address = "127.0.0.1:8000", name = "a b" }])"),
              ElementsAre("t.toml:2:49: 'name' must match [A-Za-z0-9_-]+, got 'a b'"));
  EXPECT_THAT(pool(R"(servers = [{ address = "127.0.0.1:8000", name = "a" },)"
                   R"( { address = "127.0.0.1:8001", name = "a" }])"),
              ElementsAre("t.toml:2:56: duplicate server name 'a' in [upstream.app] (first at "
                          "2:12)"));
  EXPECT_THAT(pool(R"(servers = [{ address = "127.0.0.1:8000", max_conns = -1 }])"),
              ElementsAre("t.toml:2:54: 'max_conns' must be in 0..10000000, got -1"));
  EXPECT_THAT(pool(R"(servers = [{ address = "127.0.0.1:8000", all_addresses = 1 }])"),
              ElementsAre("t.toml:2:58: 'all_addresses' must be a boolean, got integer"));
  EXPECT_THAT(pool(R"(servers = ["127.0.0.1:8000", )"
                   R"({ address = "127.0.0.1:8000", all_addresses = true }])"),
              ElementsAre("t.toml:2:30: duplicate server '127.0.0.1:8000' (an address of "
                          "'127.0.0.1:8000') in [upstream.app] (first at 2:12)"));
  EXPECT_THAT(pool(R"(servers = [{ address = "nowhere.invalid:80", all_addresses = true }])"),
              SizeIs(1));
  // A bad entry is reported once, not again as "every server is a backup".
  EXPECT_THAT(pool(R"(servers = [{ address = "nowhere", backup = true }])"), SizeIs(1));
}

TEST(LoaderErrorTest, PassiveHealthValuesOutOfRange) {
  auto pool = [](const std::string& line) {
    return errorsOf(
        lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000"])", line, "[[listener]]",
               R"(name = "web")", R"(listen = "127.0.0.1:8080")", R"(upstream = "app")"}));
  };
  EXPECT_THAT(pool("max_fails = -1"),
              ElementsAre("t.toml:3:13: 'max_fails' must be in 0..1000, got -1"));
  EXPECT_THAT(pool("max_fails = 1001"),
              ElementsAre("t.toml:3:13: 'max_fails' must be in 0..1000, got 1001"));
  EXPECT_THAT(pool("max_fails = \"3\""),
              ElementsAre("t.toml:3:13: 'max_fails' must be an integer, got string"));
  EXPECT_THAT(pool("fail_timeout = \"0s\""), SizeIs(1));
  EXPECT_THAT(pool("fail_timeout = 10"), SizeIs(1));
  EXPECT_THAT(pool("max_fails = 0"), IsEmpty());
  EXPECT_THAT(errorsOf(validWith({"[[listener.mirror]]", R"(name = "m")",
                                  R"(address = "127.0.0.1:9001")", "max_fails = 1001"})),
              ElementsAre("t.toml:11:13: 'max_fails' must be in 0..1000, got 1001"));
  EXPECT_THAT(errorsOf(validWith({"[[listener.mirror]]", R"(name = "m")",
                                  R"(address = "127.0.0.1:9001")", R"(fail_timeout = "0s")"})),
              SizeIs(1));
  EXPECT_THAT(pool("check_interval = \"-1s\""), SizeIs(1));
  EXPECT_THAT(pool("check_timeout = \"0s\""),
              ElementsAre("t.toml:3:17: 'check_timeout' must be in 1ms..1m, got 0s"));
  EXPECT_THAT(pool("check_timeout = \"2m\""), SizeIs(1));
  EXPECT_THAT(pool("check_interval = \"0s\"\nmax_fails = 0"), IsEmpty());
  EXPECT_THAT(pool("check_interval = \"5s\"\nmax_fails = 0"),
              ElementsAre("t.toml:3:18: 'check_interval' needs 'max_fails' > 0 in [upstream.app]: "
                          "health checks mark servers down through it"));
  EXPECT_THAT(errorsOf(validWith({R"(tcp_keepalive = "3h")"})), SizeIs(1));
  EXPECT_THAT(errorsOf(validWith({R"(tcp_keepalive = "90s")"})), IsEmpty());
  EXPECT_THAT(pool("check_interval = \"5s\"\ncheck_passes = 3"), IsEmpty());
  EXPECT_THAT(pool("check_interval = \"5s\"\ncheck_passes = 0"),
              ElementsAre("t.toml:4:16: 'check_passes' must be in 1..1000, got 0"));
  EXPECT_THAT(pool("check_passes = 2"), IsEmpty());  // unused without check_interval
  EXPECT_THAT(pool("slow_start = \"30s\""), IsEmpty());
  EXPECT_THAT(pool("slow_start = \"0s\""), IsEmpty());
  EXPECT_THAT(pool("slow_start = \"25h\""),
              ElementsAre("t.toml:3:14: 'slow_start' must be in 0s..24h, got 25h"));
  EXPECT_THAT(pool("slow_start = 30"), SizeIs(1));
  EXPECT_THAT(pool("queue_timeout = \"5s\""), IsEmpty());
  EXPECT_THAT(pool("max_queue = 100"), IsEmpty());
  EXPECT_THAT(pool("max_queue = -1"),
              ElementsAre("t.toml:3:13: 'max_queue' must be in 0..10000000, got -1"));
  EXPECT_THAT(pool("queue_timeout = \"2h\""),
              ElementsAre("t.toml:3:17: 'queue_timeout' must be in 0s..1h, got 2h"));
  EXPECT_THAT(pool("resolve_interval = \"0s\""), IsEmpty());
  EXPECT_THAT(pool("resolve_interval = \"100ms\""), IsEmpty());
  EXPECT_THAT(pool("resolve_interval = \"99ms\""),
              ElementsAre("t.toml:3:20: 'resolve_interval' must be 0 (off) or at least 100ms"));
  EXPECT_THAT(pool("resolve_interval = 30"), SizeIs(1));
  EXPECT_THAT(pool("resolve_hold = \"30s\""), IsEmpty());
  EXPECT_THAT(pool("resolve_hold = \"25h\""),
              ElementsAre("t.toml:3:16: 'resolve_hold' must be in 0s..24h, got 25h"));
  EXPECT_THAT(errorsOf(validWith({"[[listener.mirror]]", R"(name = "m")",
                                  R"(address = "127.0.0.1:9001")", R"(resolve_interval = "25h")"})),
              SizeIs(1));
  EXPECT_THAT(pool("hash_type = \"ketama\""),
              ElementsAre("t.toml:3:13: 'hash_type' must be one of map, consistent, got 'ketama'"));
  EXPECT_THAT(pool("proxy_protocol = \"v3\""),
              ElementsAre("t.toml:3:18: 'proxy_protocol' must be one of off, v1, v2, got 'v3'"));
}

TEST(LoaderTest, ProxyProtocolTlvsNeedVersion2AndKnownNames) {
  // Lines 3 and 4 of [upstream.app].
  auto pool = [](const std::string& third, const std::string& fourth) {
    return lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000"])", third, fourth,
                  "[[listener]]", R"(name = "web")", R"(listen = "127.0.0.1:8080")",
                  R"(upstream = "app")"});
  };
  LoadResult result =
      loadString(pool(R"(proxy_protocol_tlvs = ["crc32c"])", R"(proxy_protocol = "v2")"), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const config::ProxyProtocolTlvs& tlvs = result.config->upstreams[0].proxy_protocol_tlvs;
  EXPECT_TRUE(tlvs.crc32c);
  EXPECT_FALSE(tlvs.authority || tlvs.ssl || tlvs.received);
  EXPECT_THAT(errorsOf(pool(R"(proxy_protocol_tlvs = ["authority"])", R"(proxy_protocol = "v1")")),
              ElementsAre("t.toml:3:23: 'proxy_protocol_tlvs' needs 'proxy_protocol = \"v2\"' in "
                          "[upstream.app]: only version 2 headers carry TLVs"));
  EXPECT_THAT(
      errorsOf(
          pool(R"(proxy_protocol = "v2")", R"(proxy_protocol_tlvs = ["authority", "npn", 5])")),
      ElementsAre("t.toml:4:37: 'proxy_protocol_tlvs' entries must be one of alpn, authority, "
                  "ssl, unique_id, received, crc32c, got 'npn'",
                  "t.toml:4:44: 'proxy_protocol_tlvs' entries must be one of alpn, authority, "
                  "ssl, unique_id, received, crc32c, got a non-string"));
  EXPECT_THAT(errorsOf(pool(R"(proxy_protocol = "v2")", R"(proxy_protocol_tlvs = "crc32c")")),
              SizeIs(1));
}

TEST(LoaderTest, APoolsConnectTimeoutIsItsOwnOrTheListeners) {
  auto pool = [](const std::string& line) {
    return lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000"])", line, "[[listener]]",
                  R"(name = "web")", R"(listen = "127.0.0.1:8080")", R"(upstream = "app")"});
  };
  LoadResult result = loadString(pool(R"(connect_timeout = "250ms")"), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_EQ(result.config->upstreams[0].connect_timeout, std::chrono::milliseconds(250));
  result = loadString(pool(""), "t.toml");
  ASSERT_TRUE(result.ok());
  EXPECT_FALSE(result.config->upstreams[0].connect_timeout.has_value());
  EXPECT_THAT(errorsOf(pool(R"(connect_timeout = "0s")")),
              ElementsAre("t.toml:3:19: 'connect_timeout' must be in 1ms..24h, got 0s"));
}

TEST(LoaderTest, AMirrorSendsToAnAddressOrToAPool) {
  auto config = [](const std::string& mirror, const std::string& sinks = "") {
    return lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000"])", "[upstream.sinks]",
                  R"(servers = ["127.0.0.1:9000", "127.0.0.1:9001"])", sinks, "[[listener]]",
                  R"(name = "web")", R"(listen = "127.0.0.1:8080")", R"(upstream = "app")",
                  "[[listener.mirror]]", R"(name = "m")", mirror});
  };
  LoadResult result = loadString(config(R"(upstream = "sinks")"), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const MirrorConfig& m = result.config->listeners[0].mirrors[0];
  EXPECT_EQ(m.upstream, "sinks");
  EXPECT_EQ(m.upstream_index, 1u);
  EXPECT_EQ(m.address.length, 0u);
  EXPECT_THAT(errorsOf(config(R"(address = "127.0.0.1:9000")"
                              "\n"
                              R"(upstream = "sinks")")),
              ElementsAre("t.toml:12:11: both 'address' and 'upstream' in [[listener.mirror]]: "
                          "a mirror sends to one address or to a pool's servers"));
  EXPECT_THAT(errorsOf(config("sample_percent = 5")),
              ElementsAre("t.toml:10:1: neither 'address' nor 'upstream' in "
                          "[[listener.mirror]]: a mirror sends to one address or to a pool's "
                          "servers"));
  EXPECT_THAT(errorsOf(config(R"(upstream = "nope")")),
              ElementsAre("t.toml:12:12: unknown upstream 'nope'"));
  EXPECT_THAT(errorsOf(config(R"(upstream = "sinks")"
                              "\n"
                              "max_fails = 3")),
              ElementsAre("t.toml:13:13: 'max_fails' with 'upstream' in [[listener.mirror]]: "
                          "the pool's own applies to its servers (set it in [upstream.sinks])"));
  EXPECT_THAT(errorsOf(config(R"(upstream = "sinks")", "tls = true")),
              ElementsAre("t.toml:12:12: mirror 'm': upstream 'sinks' has 'tls': mirrors send "
                          "the bytes as they are, never through TLS"));
}

TEST(LoaderTest, UnixSocketServersAndMirrors) {
  LoadResult result = loadString(
      lines({"[upstream.app]",
             R"(servers = ["unix:/run/app.sock", { address = "unix:@app", name = "abstract" },)",
             R"(           "127.0.0.1:8000", "unix:relative.sock"])", "[[listener]]",
             R"(name = "web")", R"(listen = "127.0.0.1:8080")", R"(upstream = "app")",
             "[[listener.mirror]]", R"(name = "m")", R"(address = "unix:/run/sink.sock")"}),
      "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const auto& servers = result.config->upstreams[0].servers;
  ASSERT_EQ(servers.size(), 4u);
  const Address& file = servers[0].address;
  EXPECT_TRUE(file.isUnix());
  EXPECT_FALSE(file.host_name);
  EXPECT_EQ(file.text, "unix:/run/app.sock");
  const auto& un = reinterpret_cast<const sockaddr_un&>(file.storage);
  EXPECT_STREQ(un.sun_path, "/run/app.sock");
  EXPECT_EQ(file.length, offsetof(sockaddr_un, sun_path) + sizeof("/run/app.sock"));
  EXPECT_EQ(formatEndpoint(file.storage), "unix:/run/app.sock");
  // The abstract namespace: a NUL, then the name (no terminator in the length).
  const Address& abstract = servers[1].address;
  const auto& an = reinterpret_cast<const sockaddr_un&>(abstract.storage);
  EXPECT_EQ(an.sun_path[0], '\0');
  EXPECT_EQ(std::string(an.sun_path + 1, 3), "app");
  EXPECT_EQ(abstract.length, offsetof(sockaddr_un, sun_path) + 4);
  EXPECT_EQ(formatEndpoint(abstract.storage), "unix:@app");
  EXPECT_FALSE(servers[2].address.isUnix());
  EXPECT_EQ(formatEndpoint(servers[3].address.storage), "unix:relative.sock");
  EXPECT_TRUE(result.config->listeners[0].mirrors[0].address.isUnix());
  // Distinct sockets are distinct servers; the same path twice is a duplicate.
  EXPECT_NE(endpointKey(servers[0].address), endpointKey(servers[3].address));
  EXPECT_NE(endpointKey(servers[0].address), endpointKey(servers[1].address));
}

TEST(LoaderErrorTest, UnixSocketsOnlyWhereAConnectionGoes) {
  auto config = [](const std::string& servers, const std::string& pool,
                   const std::string& listen = "127.0.0.1:8080", const std::string& mirror = "") {
    return errorsOf(lines({"[upstream.app]", "servers = " + servers, pool, "[[listener]]",
                           R"(name = "web")", "listen = \"" + listen + "\"", R"(upstream = "app")",
                           mirror.empty() ? "" : "[[listener.mirror]]",
                           mirror.empty() ? "" : R"(name = "m")", mirror}));
  };
  EXPECT_THAT(config(R"(["127.0.0.1:8000"])", "", "unix:/run/grelay.sock"),
              ElementsAre("t.toml:6:10: bad address 'unix:/run/grelay.sock' for 'listen': a "
                          "Unix socket can only be an upstream server or a mirror"));
  EXPECT_THAT(errorsOf(lines({"[admin]", R"(listen = "unix:/run/admin.sock")"})),
              Contains("t.toml:2:10: bad address 'unix:/run/admin.sock' for 'listen': a "
                       "Unix socket can only be an upstream server or a mirror"));
  EXPECT_THAT(config(R"(["unix:"])", ""),
              ElementsAre("t.toml:2:12: bad address 'unix:' for 'servers': missing socket "
                          "path (e.g. unix:/run/app.sock, or unix:@name for the abstract "
                          "namespace)"));
  EXPECT_THAT(config(R"(["unix:@"])", ""), SizeIs(1));
  const std::string longest = "/" + std::string(106, 'x');
  EXPECT_THAT(config("[\"unix:" + longest + "\"]", ""), IsEmpty());
  EXPECT_THAT(config("[\"unix:@" + longest + "\"]", ""), IsEmpty());
  EXPECT_THAT(config("[\"unix:" + longest + "x\"]", ""),
              ElementsAre("t.toml:2:12: bad address 'unix:" + longest +
                          "x' for 'servers': the socket path is longer than 107 bytes"));
  EXPECT_THAT(config(R"(["unix:/a.sock", { address = "unix:/a.sock", backup = true }])", ""),
              ElementsAre("t.toml:2:28: duplicate server 'unix:/a.sock' in [upstream.app] "
                          "(first at 2:12)"));
  EXPECT_THAT(config(R"([{ address = "unix:/a.sock", all_addresses = true }])", ""),
              ElementsAre("t.toml:2:12: 'all_addresses' in [upstream.app] needs a host name "
                          "to look up, not the Unix socket 'unix:/a.sock'"));
  EXPECT_THAT(config(R"(["127.0.0.1:8000", "unix:/a.sock"])", R"(source_address = "127.0.0.2")"),
              ElementsAre("t.toml:3:18: source_address '127.0.0.2' cannot apply to server "
                          "'unix:/a.sock', a Unix socket: a connection to it leaves from no IP "
                          "address"));
  EXPECT_THAT(config(R"(["127.0.0.1:8000"])", "", "127.0.0.1:8080",
                     R"(address = "unix:/m.sock")"
                     "\n"
                     R"(source_address = "127.0.0.2")"),
              ElementsAre("t.toml:11:18: source_address '127.0.0.2' cannot apply to the "
                          "mirror's address 'unix:/m.sock', a Unix socket: a connection to it "
                          "leaves from no IP address"));
  EXPECT_THAT(config(R"(["unix:/a.sock"])", R"(check_interval = "1s")"
                                            "\n"
                                            "check_port = 9000"),
              ElementsAre("t.toml:4:14: 'check_port' in [upstream.app] needs every server to "
                          "have a port: 'unix:/a.sock' is a Unix socket"));
  EXPECT_THAT(config(R"(["unix:/a.sock"])", "tls = true"),
              ElementsAre("t.toml:3:7: 'tls' in [upstream.app] verifies each server's "
                          "certificate against its host name, and 'unix:/a.sock' (a Unix "
                          "socket) has none: set tls.sni to the name its certificate has (or "
                          "verify = false)"));
  EXPECT_THAT(config(R"(["unix:/a.sock"])", R"(tls = { sni = "app.internal" })"), IsEmpty());
  EXPECT_THAT(config(R"(["unix:/a.sock"])", "tls = { verify = false }"), IsEmpty());
}

TEST(LintTest, ResolveIntervalWithUnixSocketsSaysSo) {
  LoadResult result = loadString(
      lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000", "unix:/a.sock"])",
             R"(resolve_interval = "1s")", "[[listener]]", R"(name = "web")",
             R"(listen = "127.0.0.1:8080")", R"(upstream = "app")", "[[listener.mirror]]",
             R"(name = "m")", R"(address = "unix:@sink")", R"(resolve_interval = "1s")"}),
      "t.toml");
  ASSERT_TRUE(result.ok());
  std::vector<std::string> warnings;
  for (const ConfigError& w : lintConfig(*result.config)) {
    warnings.push_back(w.message);
  }
  EXPECT_THAT(warnings, ElementsAre("upstream app: resolve_interval has no effect: every server "
                                    "is an IP address or a Unix socket",
                                    "listener web, mirror m: resolve_interval has no effect: the "
                                    "address is a Unix socket"));
}

TEST(LoaderTest, SourceAddressIsAnIpOfTheServersFamily) {
  // Line 3 of [upstream.app] (servers on line 2) and line 4 of its mirror.
  auto config = [](const std::string& servers, const std::string& source, const std::string& mirror,
                   const std::string& mirrorSource) {
    return lines({"[upstream.app]", "servers = " + servers, source, "[[listener]]",
                  R"(name = "web")", R"(listen = "127.0.0.1:8080")", R"(upstream = "app")",
                  "[[listener.mirror]]", R"(name = "m")", "address = " + mirror, mirrorSource});
  };
  LoadResult result = loadString(
      config(R"(["127.0.0.1:8000", "127.0.0.1:8001"])", R"(source_address = "127.0.0.2")",
             R"("[::1]:9000")", R"(source_address = "::1")"),
      "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const std::optional<config::Address>& source = result.config->upstreams[0].source_address;
  ASSERT_TRUE(source.has_value());
  EXPECT_EQ(source->family(), AF_INET);
  EXPECT_EQ(source->text, "127.0.0.2");
  EXPECT_EQ(reinterpret_cast<const sockaddr_in&>(source->storage).sin_port, 0);
  const auto& mirrorSource = result.config->listeners[0].mirrors[0].source_address;
  ASSERT_TRUE(mirrorSource.has_value());
  EXPECT_EQ(mirrorSource->family(), AF_INET6);
  EXPECT_FALSE(loadString(config(R"(["127.0.0.1:8000"])", "", R"("127.0.0.1:9000")", ""), "t.toml")
                   .config->upstreams[0]
                   .source_address.has_value());

  EXPECT_THAT(errorsOf(config(R"(["127.0.0.1:8000", "[::1]:8001"])",
                              R"(source_address = "127.0.0.2")", R"("127.0.0.1:9000")", "")),
              ElementsAre("t.toml:3:18: source_address '127.0.0.2' is IPv4 but server "
                          "'[::1]:8001' is IPv6: a connection cannot leave from one family to "
                          "the other"));
  EXPECT_THAT(errorsOf(config(R"(["127.0.0.1:8000"])", "", R"("127.0.0.1:9000")",
                              R"(source_address = "fd00::5")")),
              ElementsAre("t.toml:11:18: source_address 'fd00::5' is IPv6 but the mirror's "
                          "address '127.0.0.1:9000' is IPv4: a connection cannot leave from one "
                          "family to the other"));
  for (const char* bad : {"127.0.0.2:80", "[::1]", "localhost", "10.0.0.0/8", ""}) {
    EXPECT_THAT(
        errorsOf(config(R"(["127.0.0.1:8000"])", "source_address = \"" + std::string(bad) + "\"",
                        R"("127.0.0.1:9000")", "")),
        ElementsAre("t.toml:3:18: 'source_address' must be an IPv4 or IPv6 address of "
                    "this host, like \"10.0.0.5\" or \"fd00::5\" (no port, no name), "
                    "got '" +
                    std::string(bad) + "'"))
        << bad;
  }
  EXPECT_THAT(
      errorsOf(config(R"(["127.0.0.1:8000"])", "source_address = 5", R"("127.0.0.1:9000")", "")),
      SizeIs(1));
}

TEST(LoaderTest, AMirrorMayAskForAProxyProtocolHeader) {
  auto mirror = [](const std::string& third, const std::string& fourth) {
    return lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000"])", "[[listener]]",
                  R"(name = "web")", R"(listen = "127.0.0.1:8080")", R"(upstream = "app")",
                  "[[listener.mirror]]", R"(name = "m")", R"(address = "127.0.0.1:9000")", third,
                  fourth});
  };
  LoadResult result = loadString(
      mirror(R"(proxy_protocol = "v2")", R"(proxy_protocol_tlvs = ["unique_id"])"), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const config::MirrorConfig& m = result.config->listeners[0].mirrors[0];
  EXPECT_EQ(m.proxy_protocol, config::ProxyProtocol::V2);
  EXPECT_TRUE(m.proxy_protocol_tlvs.unique_id);
  EXPECT_FALSE(m.proxy_protocol_tlvs.crc32c);
  EXPECT_EQ(loadString(mirror("", ""), "t.toml").config->listeners[0].mirrors[0].proxy_protocol,
            config::ProxyProtocol::Off);
  EXPECT_THAT(errorsOf(mirror(R"(proxy_protocol = "v1")", R"(proxy_protocol_tlvs = ["crc32c"])")),
              ElementsAre("t.toml:11:23: 'proxy_protocol_tlvs' needs 'proxy_protocol = \"v2\"' "
                          "in [[listener.mirror]]: only version 2 headers carry TLVs"));
  EXPECT_THAT(errorsOf(mirror(R"(proxy_protocol = "v3")", "")), SizeIs(1));
}

TEST(LoaderTest, ProxyProtocolFromKeepsEveryNetwork) {
  LoadResult result = loadString(
      validWith({"accept_proxy_protocol = true",
                 R"(proxy_protocol_from = ["10.0.0.0/8", "192.0.2.7", "[fd00::]/8", "::1"])"}),
      "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const auto& from = result.config->listeners[0].proxy_protocol_from;
  ASSERT_EQ(from.size(), 4u);
  EXPECT_EQ(from[0].family, AF_INET);
  EXPECT_EQ(from[0].prefix, 8u);
  EXPECT_EQ(from[1].prefix, 32u);
  EXPECT_EQ(from[2].family, AF_INET6);
  EXPECT_EQ(from[2].prefix, 8u);
  EXPECT_EQ(from[3].prefix, 128u);
  EXPECT_EQ(from[3].text, "::1");
}

TEST(LoaderErrorTest, ProxyProtocolFromErrors) {
  EXPECT_THAT(errorsOf(validWith({R"(proxy_protocol_from = ["10.0.0.0/8"])"})),
              ElementsAre("t.toml:8:23: 'proxy_protocol_from' needs 'accept_proxy_protocol = "
                          "true' in [[listener]]: it says who may send a PROXY protocol header"));
  auto with = [](const std::string& value) {
    return errorsOf(validWith({"accept_proxy_protocol = true", "proxy_protocol_from = " + value}));
  };
  EXPECT_THAT(with("[]"), ElementsAre("t.toml:9:23: 'proxy_protocol_from' must not be empty "
                                      "(leave it out to accept a header from any peer)"));
  EXPECT_THAT(with(R"(["10.0.0.1/8"])"),
              ElementsAre("t.toml:9:24: bad network '10.0.0.1/8' for 'proxy_protocol_from': "
                          "address bits past the /8 prefix are set"));
  EXPECT_THAT(with(R"(["10.0.0.0/33"])"),
              ElementsAre("t.toml:9:24: bad network '10.0.0.0/33' for 'proxy_protocol_from': "
                          "prefix length '33' is not in 0..32"));
  EXPECT_THAT(with(R"(["lb.example"])"), SizeIs(1));
  EXPECT_THAT(with(R"(["10.0.0.0/"])"), SizeIs(1));
  EXPECT_THAT(with(R"([10])"), SizeIs(1));
  EXPECT_THAT(with(R"("10.0.0.0/8")"), SizeIs(1));
  EXPECT_THAT(with(R"(["0.0.0.0/0", "::/0"])"), IsEmpty());
}

TEST(LoaderTest, LintWarnsOnlyAboutWhatIsProbablyAMistake) {
  auto warnings = [](std::initializer_list<std::string_view> pool,
                     std::initializer_list<std::string_view> listener) {
    LoadResult r = loadString(
        lines({"[upstream.app]"}) + lines(pool) +
            lines({"[[listener]]", R"(name = "web")", R"(upstream = "app")"}) + lines(listener),
        "t.toml");
    EXPECT_TRUE(r.ok()) << (r.errors.empty() ? "" : r.errors[0].toString());
    std::vector<std::string> out;
    for (const auto& w : r.warnings) {
      out.push_back(w.toString());
    }
    return out;
  };
  const std::string_view local = R"(servers = ["127.0.0.1:8000"])";
  EXPECT_THAT(warnings({local}, {R"(listen = "0.0.0.0:8080")"}), IsEmpty());
  // A route by a protocol the listener's own handshake never chooses.
  TempDir dir;
  const std::string key = dir.write("key.pem", "x");
  const std::string tls =
      "tls = { cert = \"" + key + "\", key = \"" + key + "\", alpn = [\"h2\"] }";
  EXPECT_THAT(warnings({local}, {R"(listen = "0.0.0.0:8080")", tls, "[[listener.route]]",
                                 R"(alpn = ["h2", "grpc-exp"])", R"(upstream = "app")"}),
              ElementsAre(testing::HasSubstr("route ALPN 'grpc-exp' is not in the listener's "
                                             "tls alpn")));
  // PROXY headers: from anyone on a reachable listener; fine on loopback or when restricted.
  EXPECT_THAT(warnings({local}, {R"(listen = "0.0.0.0:8080")", "accept_proxy_protocol = true"}),
              SizeIs(1));
  EXPECT_THAT(warnings({local}, {R"(listen = "[::]:8080")", "accept_proxy_protocol = true"}),
              SizeIs(1));
  EXPECT_THAT(warnings({local}, {R"(listen = "127.0.0.1:8080")", "accept_proxy_protocol = true"}),
              IsEmpty());
  EXPECT_THAT(warnings({local}, {R"(listen = "[::1]:8080")", "accept_proxy_protocol = true"}),
              IsEmpty());
  EXPECT_THAT(warnings({local}, {R"(listen = "0.0.0.0:8080")", "accept_proxy_protocol = true",
                                 R"(proxy_protocol_from = ["10.0.0.0/8"])"}),
              IsEmpty());
  // Health checks slower than fail_timeout.
  EXPECT_THAT(warnings({local, R"(check_interval = "2s")"}, {R"(listen = "0.0.0.0:8080")"}),
              IsEmpty());
  EXPECT_THAT(warnings({local, R"(check_interval = "20s")"}, {R"(listen = "0.0.0.0:8080")"}),
              ElementsAre("t.toml:1:1: upstream app: check_interval (20s) is not below "
                          "fail_timeout (10s): a dead server rejoins the rotation between checks"));
  // hash_type without balance = "source".
  EXPECT_THAT(warnings({local, R"(hash_type = "consistent")"}, {R"(listen = "0.0.0.0:8080")"}),
              ElementsAre("t.toml:1:1: upstream app: hash_type has no effect unless balance = "
                          "\"source\""));
  EXPECT_THAT(warnings({local, R"(balance = "source")", R"(hash_type = "consistent")"},
                       {R"(listen = "0.0.0.0:8080")"}),
              IsEmpty());
  // queue_timeout without any max_conns to wait for.
  EXPECT_THAT(warnings({local, R"(queue_timeout = "5s")"}, {R"(listen = "0.0.0.0:8080")"}),
              ElementsAre("t.toml:1:1: upstream app: queue_timeout has no effect: no server has "
                          "max_conns"));
  // slow_start with balance = "source".
  EXPECT_THAT(warnings({local, R"(balance = "source")", R"(slow_start = "30s")"},
                       {R"(listen = "0.0.0.0:8080")"}),
              ElementsAre("t.toml:1:1: upstream app: slow_start has no effect with balance = "
                          "\"source\": a client's server never depends on load"));
  EXPECT_THAT(warnings({local, R"(balance = "least_conn")", R"(slow_start = "30s")"},
                       {R"(listen = "0.0.0.0:8080")"}),
              IsEmpty());
  // resolve_interval with nothing to resolve.
  EXPECT_THAT(warnings({R"(servers = ["localhost:8000"])", R"(resolve_interval = "5s")"},
                       {R"(listen = "0.0.0.0:8080")"}),
              IsEmpty());
  EXPECT_THAT(
      warnings({local}, {R"(listen = "0.0.0.0:8080")", "[[listener.mirror]]", R"(name = "m")",
                         R"(address = "127.0.0.1:9001")", R"(resolve_interval = "5s")"}),
      ElementsAre("t.toml:7:1: listener web, mirror m: resolve_interval has no effect: "
                  "the address is an IP address"));
  // resolve_hold with nothing looked up again.
  EXPECT_THAT(
      warnings({local}, {R"(listen = "0.0.0.0:8080")", "[[listener.mirror]]", R"(name = "m")",
                         R"(address = "localhost:9001")", R"(resolve_hold = "5s")"}),
      ElementsAre("t.toml:7:1: listener web, mirror m: resolve_hold has no effect without "
                  "resolve_interval"));
  EXPECT_THAT(warnings({R"(servers = ["localhost:8000"])", R"(resolve_hold = "1m")"},
                       {R"(listen = "0.0.0.0:8080")"}),
              ElementsAre("t.toml:1:1: upstream app: resolve_hold has no effect without "
                          "resolve_interval"));
  EXPECT_THAT(warnings({R"(servers = ["localhost:8000"])", R"(resolve_interval = "5s")",
                        R"(resolve_hold = "1m")"},
                       {R"(listen = "0.0.0.0:8080")"}),
              IsEmpty());
}

TEST(LoaderTest, AllowKeepsEveryNetwork) {
  LoadResult result =
      loadString(validWith({R"(allow = ["10.0.0.0/8", "2001:db8::/32"])"}), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const auto& allow = result.config->listeners[0].allow;
  ASSERT_EQ(allow.size(), 2u);
  EXPECT_EQ(allow[0].text, "10.0.0.0/8");
  EXPECT_EQ(allow[1].family, AF_INET6);
  EXPECT_THAT(errorsOf(validWith({"allow = []"})),
              ElementsAre("t.toml:8:9: 'allow' must not be empty (leave it out to allow every "
                          "client)"));
  EXPECT_THAT(errorsOf(validWith({R"(allow = ["10.0.0.0/8", "nope"])"})),
              ElementsAre("t.toml:8:24: bad network 'nope' for 'allow': not an IPv4 or IPv6 "
                          "address (host names are not accepted here)"));
}

TEST(LoaderErrorTest, EmptyServerList) {
  EXPECT_THAT(errorsOf(lines({"[upstream.app]", "servers = []", "[[listener]]", R"(name = "web")",
                              R"(listen = "127.0.0.1:8080")", R"(upstream = "app")"})),
              ElementsAre("t.toml:2:11: 'servers' must not be empty in [upstream.app]"));
}

TEST(LoaderErrorTest, ControlCharactersInAnUpstreamNameStayOnOneLine) {
  // Found by fuzz.config: the name went raw into "[upstream.NAME]" in other errors.
  EXPECT_THAT(
      errorsOf(lines({R"([upstream."a\nb"])", "servers = []", "[[listener]]", R"(name = "web")",
                      R"(listen = "127.0.0.1:8080")", R"(upstream = "web")"})),
      ElementsAre("t.toml:1:11: upstream name 'a\\x0ab' must match [A-Za-z0-9_-]+",
                  "t.toml:2:11: 'servers' must not be empty in [upstream.a\\x0ab]",
                  "t.toml:6:12: unknown upstream 'web'"));
}

TEST(LoaderErrorTest, MissingRequiredKeyPointsAtItsTable) {
  EXPECT_THAT(errorsOf(lines({"[upstream.app]", "balance = \"least_conn\"", "[[listener]]",
                              R"(listen = "127.0.0.1:8080")", R"(upstream = "app")"})),
              ElementsAre("t.toml:1:1: missing required key 'servers' in [upstream.app]",
                          "t.toml:3:1: missing required key 'name' in [[listener]]"));
  EXPECT_THAT(errorsOf(validWith({"  [[listener.mirror]]", R"(  name = "m")", "  [listener.tap]",
                                  "  max_size = \"1GiB\""})),
              ElementsAre("t.toml:8:3: neither 'address' nor 'upstream' in [[listener.mirror]]: "
                          "a mirror sends to one address or to a pool's servers",
                          "t.toml:10:3: missing required key 'path' in [listener.tap]"));
}

TEST(LoaderErrorTest, MissingCertFileIsNamed) {
  TempDir dir;
  std::string key = dir.write("key.pem", "x");
  EXPECT_THAT(errorsOf(validWith({"tls = { cert = \"no-such-cert.pem\", key = \"" + key + "\" }"})),
              ElementsAre("t.toml:8:16: cannot read cert file 'no-such-cert.pem': No such file "
                          "or directory"));
  EXPECT_THAT(
      errorsOf(validWith({"tls = { cert = \"" + key + "\", key = \"" + dir.path() + "\" }"})),
      ElementsAre("t.toml:8:" + std::to_string(26 + key.size()) + ": cannot read key file '" +
                  dir.path() + "': is a directory"));
  EXPECT_THAT(errorsOf(validWith({"tls = { key = \"" + key + "\" }"})),
              ElementsAre("t.toml:8:7: missing required key 'cert' in [[listener]] tls"));
}

TEST(LoaderTest, MoreCertificatesAreReadWithTheirPlaces) {
  TempDir dir;
  const std::string key = dir.write("key.pem", "x");
  const std::string a = dir.write("a.pem", "x");
  const std::string b = dir.write("b.pem", "x");
  LoadResult result =
      loadString(validWith({"[listener.tls]", "cert = \"" + key + "\"", "key = \"" + key + "\"",
                            "certs = [{ cert = \"" + a + "\", key = \"" + key + "\" },",
                            "         { cert = \"" + b + "\", key = \"" + key + "\" }]"}),
                 "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const config::ListenerTlsConfig& tls = *result.config->listeners[0].tls;
  ASSERT_EQ(tls.certs.size(), 2u);
  EXPECT_EQ(tls.certs[0].cert, a);
  EXPECT_EQ(tls.certs[1].cert, b);
  EXPECT_EQ(tls.certs[1].key, key);
  EXPECT_EQ(tls.certs[1].location.line, 12u);  // where grelay --check points at it
  EXPECT_FALSE(tls.strict_sni);
  EXPECT_THAT(errorsOf(validWith({"[listener.tls]", "cert = \"" + key + "\"",
                                  "key = \"" + key + "\"", "certs = [{ cert = \"" + a + "\" }]"})),
              ElementsAre("t.toml:11:10: missing required key 'key' in [[listener]] tls certs"));
  EXPECT_THAT(errorsOf(validWith({"[listener.tls]", "cert = \"" + key + "\"",
                                  "key = \"" + key + "\"", "certs = [\"" + a + "\"]"})),
              SizeIs(1));
}

TEST(LoaderTest, AlpnProtocolsOnBothSides) {
  TempDir dir;
  const std::string key = dir.write("key.pem", "x");
  const std::string tls = "tls = { cert = \"" + key + "\", key = \"" + key + "\", alpn = ";
  auto file = [&](const std::string& listenerAlpn, const std::string& upstreamAlpn) {
    return lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000"])",
                  "tls = { alpn = " + upstreamAlpn + " }", "[[listener]]", R"(name = "web")",
                  R"(listen = "127.0.0.1:8080")", R"(upstream = "app")",
                  tls + listenerAlpn + " }"});
  };
  LoadResult result = loadString(file(R"(["h2", "http/1.1"])", R"(["h2"])"), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_THAT(result.config->listeners[0].tls->alpn, ElementsAre("h2", "http/1.1"));
  EXPECT_THAT(result.config->upstreams[0].tls.alpn, ElementsAre("h2"));
  EXPECT_FALSE(result.config->upstreams[0].tls.forward_sni);
  EXPECT_TRUE(result.config->upstreams[0].tls.session_reuse);  // nginx's default too
  EXPECT_TRUE(result.config->upstreams[0].tls.enabled);
  EXPECT_THAT(errorsOf(file(R"(["h2", "h2"])", "[]")),
              ElementsAre(testing::HasSubstr("'alpn' names 'h2' twice")));
  for (const std::string& bad : {std::string(R"([""])"), std::string(R"(["h 2"])"),
                                 std::string("[2]"), "[\"" + std::string(256, 'p') + "\"]"}) {
    EXPECT_THAT(errorsOf(file("[]", bad)),
                ElementsAre(testing::HasSubstr("'alpn' entries must be protocol names of 1 to 255 "
                                               "printable characters")))
        << bad;
  }
  EXPECT_THAT(errorsOf(file("\"h2\"", "[]")), SizeIs(1));
}

TEST(LoaderTest, KeyExchangeGroupsOnBothSides) {
  TempDir dir;
  const std::string key = dir.write("key.pem", "x");
  const std::string tls = "tls = { cert = \"" + key + "\", key = \"" + key + "\", groups = ";
  auto file = [&](const std::string& listenerGroups, const std::string& upstreamGroups) {
    return lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000"])",
                  "tls = { groups = " + upstreamGroups + " }", "[[listener]]", R"(name = "web")",
                  R"(listen = "127.0.0.1:8080")", R"(upstream = "app")",
                  tls + listenerGroups + " }"});
  };
  LoadResult result = loadString(file(R"(["P-384", "P-256"])", R"(["X25519"])"), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_THAT(result.config->listeners[0].tls->groups, ElementsAre("P-384", "P-256"));
  EXPECT_THAT(result.config->upstreams[0].tls.groups, ElementsAre("X25519"));
  EXPECT_THAT(errorsOf(file(R"(["P-256", "P-256"])", R"(["X25519"])")),
              ElementsAre(testing::HasSubstr("'groups' names 'P-256' twice")));
  EXPECT_THAT(
      errorsOf(file("[]", R"(["X25519"])")),
      ElementsAre(testing::HasSubstr("'groups' must not be empty (leave it out for the default)")));
  for (const std::string& bad : {std::string(R"([""])"), std::string(R"(["P:256"])"),
                                 std::string("[2]"), "[\"" + std::string(65, 'p') + "\"]"}) {
    EXPECT_THAT(errorsOf(file(R"(["P-256"])", bad)),
                ElementsAre(testing::HasSubstr("'groups' entries must be group names like")))
        << bad;
  }
  EXPECT_THAT(errorsOf(file("\"P-256\"", R"(["X25519"])")), SizeIs(1));
}

TEST(LoaderTest, SessionTicketsAreOnUnlessTurnedOff) {
  TempDir dir;
  const std::string key = dir.write("key.pem", "x");
  auto file = [&](const std::string& extra) {
    return lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000"])", "[[listener]]",
                  R"(name = "web")", R"(listen = "127.0.0.1:8080")", R"(upstream = "app")",
                  "tls = { cert = \"" + key + "\", key = \"" + key + "\"" + extra + " }"});
  };
  LoadResult result = loadString(file(""), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_TRUE(result.config->listeners[0].tls->session_tickets);
  EXPECT_EQ(result.config->listeners[0].tls->session_ticket_rotation.count(), 3'600'000);
  result = loadString(file(", session_ticket_rotation = \"10m\""), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_EQ(result.config->listeners[0].tls->session_ticket_rotation.count(), 600'000);
  EXPECT_THAT(errorsOf(file(", session_ticket_rotation = \"500ms\"")), SizeIs(1));
  EXPECT_THAT(errorsOf(file(", session_ticket_rotation = \"25h\"")), SizeIs(1));
  result = loadString(file(", session_tickets = false"), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_FALSE(result.config->listeners[0].tls->session_tickets);
  EXPECT_THAT(errorsOf(file(", session_tickets = \"no\"")), SizeIs(1));
}

TEST(LoaderTest, CheckSendAndExpectNeedHealthChecks) {
  auto pool = [](const std::string& line) {
    return lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000"])", "check_interval = \"1s\"",
                  line, "[[listener]]", R"(name = "web")", R"(listen = "127.0.0.1:8080")",
                  R"(upstream = "app")"});
  };
  LoadResult result = loadString(pool(R"(check_send = "PING\r\n")"), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_EQ(result.config->upstreams[0].check_send, "PING\r\n");
  result = loadString(pool(R"(check_expect = "+PONG")"), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_EQ(result.config->upstreams[0].check_expect, "+PONG");
  result = loadString(pool("check_port = 8081"), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_EQ(result.config->upstreams[0].check_port, 8081u);
  EXPECT_THAT(errorsOf(pool("check_port = 0")), SizeIs(1));
  EXPECT_THAT(errorsOf(pool(R"(check_expect = "")")),
              ElementsAre("t.toml:4:16: 'check_expect' must be 1 to 4096 bytes, got 0"));
  EXPECT_THAT(errorsOf(pool("check_send = \"" + std::string(4097, 'x') + "\"")),
              ElementsAre("t.toml:4:14: 'check_send' must be 1 to 4096 bytes, got 4097"));
  EXPECT_THAT(errorsOf(lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000"])",
                              R"(check_send = "PING")", "[[listener]]", R"(name = "web")",
                              R"(listen = "127.0.0.1:8080")", R"(upstream = "app")"})),
              ElementsAre("t.toml:3:14: 'check_send' needs 'check_interval' in [upstream.app]: "
                          "it shapes the health checks"));
}

TEST(LoaderTest, AnUpstreamClientCertificateNeedsItsKey) {
  TempDir dir;
  const std::string pem = dir.write("c.pem", "x");
  auto pool = [&](const std::string& tls) {
    return lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000"])", "tls = { " + tls + " }",
                  "[[listener]]", R"(name = "web")", R"(listen = "127.0.0.1:8080")",
                  R"(upstream = "app")"});
  };
  LoadResult result = loadString(pool("cert = \"" + pem + "\", key = \"" + pem + "\""), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_EQ(result.config->upstreams[0].tls.cert, pem);
  EXPECT_EQ(result.config->upstreams[0].tls.key, pem);
  EXPECT_THAT(errorsOf(pool("cert = \"" + pem + "\"")),
              ElementsAre("t.toml:3:7: 'cert' and 'key' go together in [upstream.app] tls: a "
                          "client certificate needs its private key"));
}

TEST(LoaderTest, ClientCertificatesNeedTheirCa) {
  TempDir dir;
  const std::string key = dir.write("key.pem", "x");
  auto tls = [&](const std::string& more) {
    return validWith({"tls = { cert = \"" + key + "\", key = \"" + key + "\"" + more + " }"});
  };
  LoadResult result = loadString(tls(", client_ca = \"" + key + "\""), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_EQ(result.config->listeners[0].tls->client_ca, key);
  EXPECT_FALSE(result.config->listeners[0].tls->client_cert_optional);
  result = loadString(tls(", client_ca = \"" + key + "\", client_verify = \"optional\""), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_TRUE(result.config->listeners[0].tls->client_cert_optional);
  EXPECT_THAT(
      errorsOf(tls(", client_verify = \"required\"")),
      ElementsAre(testing::HasSubstr(
          "'client_verify' needs 'client_ca' in [[listener]] tls: the CAs to verify against")));
  EXPECT_THAT(errorsOf(tls(", client_ca = \"" + key + "\", client_verify = \"sometimes\"")),
              ElementsAre(testing::HasSubstr(
                  "'client_verify' must be one of required, optional, got 'sometimes'")));
  EXPECT_THAT(
      errorsOf(tls(", client_crl = \"" + key + "\"")),
      ElementsAre(testing::HasSubstr(
          "'client_crl' needs 'client_ca' in [[listener]] tls: the CAs to verify against")));
  result = loadString(tls(", client_ca = \"" + key + "\", client_crl = \"" + key + "\""), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_EQ(result.config->listeners[0].tls->client_crl, key);
  EXPECT_THAT(errorsOf(tls(", client_ca = \"no-such-ca.pem\"")),
              ElementsAre(testing::HasSubstr("cannot read client_ca file 'no-such-ca.pem'")));
}

TEST(LoaderTest, UpstreamCrlNeedsVerification) {
  TempDir dir;
  const std::string crl = dir.write("crl.pem", "x");
  auto file = [&](const std::string& tls) {
    return lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000"])", "tls = " + tls,
                  "[[listener]]", R"(name = "web")", R"(listen = "127.0.0.1:8080")",
                  R"(upstream = "app")"});
  };
  LoadResult result = loadString(file("{ crl = \"" + crl + "\" }"), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_EQ(result.config->upstreams[0].tls.crl, crl);
  EXPECT_THAT(errorsOf(file("{ crl = \"" + crl + "\", verify = false }")),
              ElementsAre(testing::HasSubstr("'crl' with 'verify = false' in [upstream.app] tls: "
                                             "nothing is verified, so nothing is revoked")));
  EXPECT_THAT(errorsOf(file("{ crl = \"no-such-crl.pem\" }")),
              ElementsAre(testing::HasSubstr("cannot read crl file 'no-such-crl.pem'")));
}

TEST(LoaderTest, OcspResponsesBelongToTheirCertificate) {
  TempDir dir;
  const std::string key = dir.write("key.pem", "x");
  const std::string ocsp = dir.write("a.ocsp", "x");
  const std::string pair = "cert = \"" + key + "\", key = \"" + key + "\"";
  LoadResult result =
      loadString(validWith({"tls = { " + pair + ", ocsp_response = \"" + ocsp + "\", certs = [{ " +
                            pair + ", ocsp_response = \"" + ocsp + "\" }, { " + pair + " }] }"}),
                 "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const config::ListenerTlsConfig& tls = *result.config->listeners[0].tls;
  EXPECT_EQ(tls.ocsp_response, ocsp);
  ASSERT_EQ(tls.certs.size(), 2u);
  EXPECT_EQ(tls.certs[0].ocsp_response, ocsp);
  EXPECT_EQ(tls.certs[1].ocsp_response, "");
  EXPECT_THAT(errorsOf(validWith({"tls = { " + pair + ", ocsp_response = \"no-such.ocsp\" }"})),
              ElementsAre(testing::HasSubstr("cannot read ocsp_response file 'no-such.ocsp'")));
  EXPECT_THAT(errorsOf(validWith(
                  {"tls = { " + pair + ", certs = [{ " + pair + ", ocsp_response = 1 }] }"})),
              ElementsAre(testing::HasSubstr("'ocsp_response'")));
}

TEST(LoaderTest, OcspUpdateAndItsResponderAndDelays) {
  TempDir dir;
  const std::string key = dir.write("key.pem", "x");
  auto tls = [&](const std::string& more) {
    return validWith({"tls = { cert = \"" + key + "\", key = \"" + key + "\"" + more + " }"});
  };
  LoadResult result = loadString(tls(""), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const config::ListenerTlsConfig& defaults = *result.config->listeners[0].tls;
  EXPECT_FALSE(defaults.ocsp_update);
  EXPECT_EQ(defaults.ocsp_responder, "");
  EXPECT_EQ(defaults.ocsp_update_min_delay, std::chrono::minutes(5));
  EXPECT_EQ(defaults.ocsp_update_max_delay, std::chrono::hours(1));
  result = loadString(tls(", ocsp_update = true, ocsp_responder = \"http://10.0.0.5:2560/\", "
                          "ocsp_update_min_delay = \"1s\", ocsp_update_max_delay = \"10m\""),
                      "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const config::ListenerTlsConfig& t = *result.config->listeners[0].tls;
  EXPECT_TRUE(t.ocsp_update);
  EXPECT_EQ(t.ocsp_responder, "http://10.0.0.5:2560/");
  EXPECT_EQ(t.ocsp_update_min_delay, std::chrono::seconds(1));
  EXPECT_EQ(t.ocsp_update_max_delay, std::chrono::minutes(10));
  EXPECT_THAT(errorsOf(tls(", ocsp_update = true, ocsp_responder = \"https://ocsp.test/\"")),
              ElementsAre(testing::HasSubstr("'ocsp_responder' must be an http:// URL like "
                                             "\"http://ocsp.example.com/\" or "
                                             "\"http://10.0.0.5:8080/ocsp\", got "
                                             "'https://ocsp.test/'")));
  EXPECT_THAT(errorsOf(tls(", ocsp_responder = \"http://ocsp.test/\"")),
              ElementsAre(testing::HasSubstr("'ocsp_responder' needs 'ocsp_update = true'")));
  result = loadString(tls(", ocsp_update = true, ocsp_proxy = \"http://proxy.internal:3128\""),
                      "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_EQ(result.config->listeners[0].tls->ocsp_proxy, "http://proxy.internal:3128");
  for (const char* bad : {"http://proxy.internal:3128/path", "https://proxy.internal:3128", "x"}) {
    EXPECT_THAT(
        errorsOf(tls(", ocsp_update = true, ocsp_proxy = \"" + std::string(bad) + "\"")),
        ElementsAre(testing::HasSubstr("'ocsp_proxy' must be an HTTP proxy's http:// URL like "
                                       "\"http://proxy.internal:3128\", got '" +
                                       std::string(bad) + "'")))
        << bad;
  }
  EXPECT_THAT(errorsOf(tls(", ocsp_proxy = \"http://proxy.internal:3128\"")),
              ElementsAre(testing::HasSubstr("'ocsp_proxy' needs 'ocsp_update = true'")));
  EXPECT_THAT(
      errorsOf(tls(", ocsp_update = false, ocsp_update_max_delay = \"1h\"")),
      ElementsAre(testing::HasSubstr("'ocsp_update_max_delay' needs 'ocsp_update = true'")));
  EXPECT_THAT(errorsOf(tls(", ocsp_update = true, ocsp_update_min_delay = \"2h\"")),
              ElementsAre(testing::HasSubstr(
                  "'ocsp_update_min_delay' (2h) must not exceed 'ocsp_update_max_delay' (1h)")));
  EXPECT_THAT(errorsOf(tls(", ocsp_update = true, ocsp_update_max_delay = \"1m\"")),
              ElementsAre(testing::HasSubstr(
                  "'ocsp_update_max_delay' (1m) must not be below 'ocsp_update_min_delay' (5m)")));
  EXPECT_THAT(errorsOf(tls(", ocsp_update = true, ocsp_update_min_delay = \"500ms\"")),
              ElementsAre(testing::HasSubstr("'ocsp_update_min_delay'")));
  EXPECT_THAT(errorsOf(tls(", ocsp_update = \"yes\"")),
              ElementsAre(testing::HasSubstr("'ocsp_update'")));
}

TEST(LoaderTest, SessionTicketKeyFiles) {
  TempDir dir;
  const std::string key = dir.write("key.pem", "x");
  const std::string k80 = dir.write("k80", std::string(80, 'a'));
  const std::string k48 = dir.write("k48", std::string(48, 'b'));
  const std::string k10 = dir.write("k10", std::string(10, 'c'));
  auto tls = [&](const std::string& more) {
    return validWith({"tls = { cert = \"" + key + "\", key = \"" + key + "\"" + more + " }"});
  };
  LoadResult result =
      loadString(tls(", session_ticket_keys = [\"" + k80 + "\", \"" + k48 + "\"]"), "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_EQ(result.config->listeners[0].tls->session_ticket_keys,
            (std::vector<std::string>{k80, k48}));
  EXPECT_THAT(errorsOf(tls(", session_ticket_keys = [\"" + k10 + "\"]")),
              ElementsAre(testing::HasSubstr("session ticket key file '" + k10 +
                                             "' has 10 bytes, not 80 (make one with: openssl "
                                             "rand 80 > FILE) or 48")));
  EXPECT_THAT(errorsOf(tls(", session_ticket_keys = [\"no-such.key\"]")),
              ElementsAre(testing::HasSubstr("cannot read session ticket key file 'no-such.key'")));
  EXPECT_THAT(errorsOf(tls(", session_ticket_keys = [\"" + k80 + "\", \"" + k80 + "\"]")),
              ElementsAre(testing::HasSubstr("names '" + k80 + "' twice")));
  EXPECT_THAT(errorsOf(tls(", session_ticket_keys = []")),
              ElementsAre(testing::HasSubstr("must name 1 to 8 files")));
  EXPECT_THAT(
      errorsOf(tls(", session_ticket_keys = [\"" + k80 + "\"], session_ticket_rotation = \"1h\"")),
      ElementsAre(testing::HasSubstr("'session_ticket_rotation' with 'session_ticket_keys'")));
  EXPECT_THAT(
      errorsOf(tls(", session_ticket_keys = [\"" + k80 + "\"], session_tickets = false")),
      ElementsAre(testing::HasSubstr("'session_ticket_keys' with 'session_tickets = false'")));
}

TEST(LoaderErrorTest, MissingCaFileIsNamed) {
  EXPECT_THAT(
      errorsOf(lines({"[upstream.app]", R"(servers = ["127.0.0.1:8000"])",
                      R"(tls = { ca = "no-such-ca.pem" })", "[[listener]]", R"(name = "web")",
                      R"(listen = "127.0.0.1:8080")", R"(upstream = "app")"})),
      ElementsAre("t.toml:3:14: cannot read ca file 'no-such-ca.pem': No such file or "
                  "directory"));
}

TEST(LoaderErrorTest, NamesMustBeLabelSafe) {
  EXPECT_THAT(errorsOf(lines({R"(["upstream"."my app"])", R"(servers = ["127.0.0.1:8000"])",
                              "[[listener]]", R"(name = "web.1")", R"(listen = "127.0.0.1:8080")",
                              R"(upstream = "my app")"})),
              ElementsAre("t.toml:1:13: upstream name 'my app' must match [A-Za-z0-9_-]+",
                          "t.toml:4:8: 'name' must match [A-Za-z0-9_-]+, got 'web.1'"));
}

TEST(LoaderErrorTest, EmptyFileNeedsAnUpstreamAndAListener) {
  EXPECT_THAT(errorsOf(""),
              ElementsAre("t.toml:1:1: no upstream defined (add an [upstream.NAME] table)",
                          "t.toml:1:1: no listener defined (add a [[listener]] table)"));
}

TEST(LoaderErrorTest, SeveralErrorsAreAllReportedInFileOrder) {
  EXPECT_THAT(errorsOf(lines({
                  "[[listener]]",                   // 1
                  R"(name = "web")",                // 2
                  R"(listen = "127.0.0.1:99999")",  // 3
                  R"(upstream = "nope")",           // 4
                  R"(idle_timeout = "soon")",       // 5
                  "[server]",                       // 6
                  "workers = -1",                   // 7
                  "bogus = true",                   // 8
                  "[upstream.app]",                 // 9
                  R"(servers = ["127.0.0.1"])",     // 10
              })),
              ElementsAre("t.toml:3:10: bad address '127.0.0.1:99999' for 'listen': port '99999' "
                          "is not in 1..65535",
                          "t.toml:4:12: unknown upstream 'nope'",
                          "t.toml:5:16: bad duration 'soon' for 'idle_timeout': expected a number "
                          "with a unit, e.g. 5s, 250ms, 1h",
                          "t.toml:7:11: 'workers' must be in 0..1024, got -1",
                          "t.toml:8:1: unknown key 'bogus' in [server]",
                          "t.toml:10:12: bad address '127.0.0.1' for 'servers': missing port "
                          "(expected HOST:PORT)"));
}

TEST(LoaderErrorTest, NulInAStringIsRejected) {
  EXPECT_THAT(errorsOf(validWith({"[listener.tap]", R"(path = "a\u0000b")"})),
              ElementsAre("t.toml:9:8: 'path' must not contain NUL characters"));
}

// ---- Files ----

TEST(LoadFileTest, MissingFileIsOneError) {
  LoadResult result = loadFile("/nonexistent/grelay.toml");
  EXPECT_FALSE(result.ok());
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_EQ(result.errors[0].toString(),
            "/nonexistent/grelay.toml:1:1: cannot read config: No such file or directory");
}

TEST(LoadFileTest, DirectoryIsOneError) {
  TempDir dir;
  LoadResult result = loadFile(dir.path());
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_EQ(result.errors[0].toString(), dir.path() + ":1:1: cannot read config: Is a directory");
}

TEST(LoadFileTest, ErrorsCarryThePathGiven) {
  TempDir dir;
  std::string path = dir.write("bad.toml", "[server]\nworkers = \"x\"\n" + kValid);
  LoadResult result = loadFile(path);
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_EQ(result.errors[0].toString(), path + ":2:11: 'workers' must be an integer, got string");
}

TEST(LoadFileTest, EveryExampleFileLoads) {
  std::filesystem::path examples = std::filesystem::path(GRELAY_SOURCE_DIR) / "config/examples";
  int loaded = 0;
  for (const auto& entry : std::filesystem::directory_iterator(examples)) {
    if (entry.path().extension() != ".toml")
      continue;
    LoadResult result = loadFile(entry.path());
    for (const ConfigError& error : result.errors)
      ADD_FAILURE() << error.toString();
    EXPECT_TRUE(result.ok()) << entry.path();
    ++loaded;
  }
  EXPECT_GE(loaded, 2);
}

TEST(LoadFileTest, DemoExampleIsTheReadmeDemo) {
  LoadResult result = loadFile(std::string(GRELAY_SOURCE_DIR) + "/config/examples/demo.toml");
  ASSERT_TRUE(result.ok());
  const Config& c = *result.config;
  EXPECT_EQ(c.server.workers, 1u);
  EXPECT_EQ(c.admin.listen->text, "127.0.0.1:9100");
  ASSERT_EQ(c.listeners.size(), 1u);
  const ListenerConfig& web = c.listeners[0];
  EXPECT_EQ(web.name, "web");
  EXPECT_EQ(web.listen.text, "127.0.0.1:8080");
  EXPECT_EQ(c.upstreams.at(web.upstream_index).name, "app");
  EXPECT_EQ(c.upstreams[0].servers.at(0).address.text, "127.0.0.1:8000");
  ASSERT_EQ(web.mirrors.size(), 1u);
  EXPECT_EQ(web.mirrors[0].name, "analytics");
  EXPECT_EQ(web.mirrors[0].address.text, "127.0.0.1:9001");
  EXPECT_EQ(web.mirrors[0].direction, MirrorDirection::Request);
  EXPECT_EQ(web.tap->path, "var/tap/web");
}

TEST(LoaderTest, RoutesByServerName) {
  auto file = [](const std::vector<std::string>& routes) {
    std::vector<std::string> all = {"[upstream.app]",
                                    R"(servers = ["127.0.0.1:8000"])",
                                    "[upstream.api]",
                                    R"(servers = ["127.0.0.1:8001"])",
                                    "[upstream.admin]",
                                    R"(servers = ["127.0.0.1:8002"])",
                                    "[[listener]]",
                                    R"(name = "web")",
                                    R"(listen = "127.0.0.1:8443")",
                                    R"(upstream = "app")"};
    all.insert(all.end(), routes.begin(), routes.end());
    std::string text;
    for (const std::string& line : all) {
      text += line + "\n";
    }
    return text;
  };
  LoadResult result =
      loadString(file({"[[listener.route]]", R"(sni = ["API.example.com", "*.api.example.com"])",
                       R"(upstream = "api")", "[[listener.route]]", R"(sni = ["*.example.com"])",
                       R"(upstream = "admin")"}),
                 "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const config::ListenerConfig& l = result.config->listeners[0];
  ASSERT_EQ(l.routes.size(), 2u);
  EXPECT_THAT(l.routes[0].sni, ElementsAre("api.example.com", "*.api.example.com"));
  EXPECT_EQ(result.config->upstreams[l.routes[0].upstream_index].name, "api");
  EXPECT_EQ(result.config->upstreams[l.routes[1].upstream_index].name, "admin");
  EXPECT_EQ(l.routes[1].location.line, 14u);
  // Exact names first, then the longest wildcard; no case; anything else: the listener's.
  EXPECT_EQ(config::routeFor(l, "api.example.com"), 0u);
  EXPECT_EQ(config::routeFor(l, "Api.Example.COM"), 0u);
  EXPECT_EQ(config::routeFor(l, "api.example.com."), 0u);  // fully qualified: the same name
  EXPECT_EQ(config::routeFor(l, "v2.api.example.com"), 0u);
  EXPECT_EQ(config::routeFor(l, "a.b.api.example.com"), 0u);
  EXPECT_EQ(config::routeFor(l, "www.example.com"), 1u);
  EXPECT_EQ(config::routeFor(l, "example.com"), config::kNoRoute);
  EXPECT_EQ(config::routeFor(l, "xexample.com"), config::kNoRoute);
  EXPECT_EQ(config::routeFor(l, ""), config::kNoRoute);
  EXPECT_EQ(config::routeFor(l, std::string(300, 'a')), config::kNoRoute);

  // Routes may stand in for the listener's upstream (other names are then reset); nothing
  // else may.
  std::string routesOnly =
      file({"[[listener.route]]", R"(sni = ["a.example"])", R"(upstream = "api")"});
  routesOnly.erase(routesOnly.find("upstream = \"app\"\n"), 17);
  result = loadString(routesOnly, "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  EXPECT_EQ(result.config->listeners[0].upstream, "");
  std::string neither = file({});
  neither.erase(neither.find("upstream = \"app\"\n"), 17);
  EXPECT_THAT(errorsOf(neither),
              ElementsAre("t.toml:7:1: missing required key 'upstream' in [[listener]]"));
  std::string empty = file({"[[listener.route]]", R"(sni = ["a.example"])", R"(upstream = "api")"});
  empty.replace(empty.find("upstream = \"app\""), 16, "upstream = \"\"");
  EXPECT_THAT(errorsOf(empty), ElementsAre("t.toml:10:12: 'upstream' must not be empty"));
  EXPECT_THAT(
      errorsOf(file({"[[listener.route]]", R"(sni = ["a.example"])", R"(upstream = "nope")"})),
      ElementsAre("t.toml:13:12: unknown upstream 'nope'"));
  EXPECT_THAT(errorsOf(file({"[[listener.route]]", R"(upstream = "api")"})),
              ElementsAre("t.toml:11:1: a [[listener.route]] needs 'sni' or 'alpn' (or both): "
                          "what it takes sessions by"));
  EXPECT_THAT(errorsOf(file({"[[listener.route]]", R"(sni = ["a.example"])"})),
              ElementsAre(testing::HasSubstr("missing required key 'upstream'")));
  EXPECT_THAT(errorsOf(file({"[[listener.route]]", R"(sni = [])", R"(upstream = "api")"})),
              SizeIs(1));
  for (const char* bad : {R"("")", R"("a..b")", R"("a b")", R"("*")", R"("*.")", R"("a.*.b")",
                          R"("**.a")", R"(".a")", R"("a..")", "2"}) {
    EXPECT_THAT(errorsOf(file({"[[listener.route]]", std::string("sni = [") + bad + "]",
                               R"(upstream = "api")"})),
                ElementsAre(testing::HasSubstr("'sni' entries must be host names")))
        << bad;
  }
  EXPECT_THAT(errorsOf(file({"[[listener.route]]", R"(sni = ["a.example", "A.example"])",
                             R"(upstream = "api")"})),
              ElementsAre(testing::HasSubstr("'sni' names 'a.example' twice")));
  EXPECT_THAT(errorsOf(file({"[[listener.route]]", R"(sni = ["a.example"])", R"(upstream = "api")",
                             "[[listener.route]]", R"(sni = ["b.example", "a.example"])",
                             R"(upstream = "admin")"})),
              ElementsAre("t.toml:14:1: listener 'web': 'a.example' is in two routes (also line "
                          "11)"));
}

TEST(LoaderTest, RoutesByAlpnToo) {
  auto file = [](const std::string& routes) {
    return lines({"[upstream.web]", R"(servers = ["127.0.0.1:8000"])", "[upstream.grpc]",
                  R"(servers = ["127.0.0.1:8001"])", "[upstream.acme]",
                  R"(servers = ["127.0.0.1:8002"])", "[[listener]]", R"(name = "edge")",
                  R"(listen = "127.0.0.1:8443")", R"(upstream = "web")"}) +
           routes;
  };
  LoadResult result = loadString(
      file(lines({"[[listener.route]]", R"(alpn = ["acme-tls/1"])", R"(upstream = "acme")",
                  "[[listener.route]]", R"(sni = ["api.example.com", "*.example.com"])",
                  R"(alpn = ["h2"])", R"(upstream = "grpc")", "[[listener.route]]",
                  R"(sni = ["*.example.com"])", R"(upstream = "web")"})),
      "t.toml");
  ASSERT_TRUE(result.ok()) << result.errors[0].toString();
  const config::ListenerConfig& l = result.config->listeners[0];
  ASSERT_EQ(l.routes.size(), 3u);
  EXPECT_TRUE(l.routes[0].sni.empty());
  EXPECT_THAT(l.routes[1].alpn, ElementsAre("h2"));
  using P = std::vector<std::string>;
  // ACME's challenge goes to its responder whatever the name (ALPN first).
  EXPECT_EQ(config::routeFor(l, "api.example.com", P{"acme-tls/1"}), 0u);
  EXPECT_EQ(config::routeFor(l, "", P{"acme-tls/1"}), 0u);
  // h2 to gRPC for example.com's names; the rest of them to web.
  EXPECT_EQ(config::routeFor(l, "api.example.com", P{"h2", "http/1.1"}), 1u);
  EXPECT_EQ(config::routeFor(l, "www.example.com", P{"h2"}), 1u);
  EXPECT_EQ(config::routeFor(l, "www.example.com", P{"http/1.1"}), 2u);
  EXPECT_EQ(config::routeFor(l, "www.example.com"), 2u);
  EXPECT_EQ(config::routeFor(l, "other.org", P{"h2"}), config::kNoRoute);
  EXPECT_EQ(config::routeFor(l, "", P{"h2"}), config::kNoRoute);

  // What could tie is refused; a name with and without a protocol may coexist.
  EXPECT_THAT(errorsOf(file(lines({"[[listener.route]]", R"(alpn = ["acme-tls/1", "x"])",
                                   R"(upstream = "acme")", "[[listener.route]]",
                                   R"(alpn = ["acme-tls/1"])", R"(upstream = "web")"}))),
              ElementsAre("t.toml:14:1: listener 'edge': any name with ALPN 'acme-tls/1' is in "
                          "two routes (also line 11)"));
  EXPECT_THAT(
      errorsOf(file(lines({"[[listener.route]]", R"(sni = ["a.example"])", R"(alpn = ["h2"])",
                           R"(upstream = "grpc")", "[[listener.route]]", R"(sni = ["a.example"])",
                           R"(alpn = ["h2", "h3"])", R"(upstream = "web")"}))),
      ElementsAre(testing::HasSubstr("'a.example' with ALPN 'h2' is in two routes")));
  EXPECT_TRUE(
      loadString(file(lines({"[[listener.route]]", R"(sni = ["a.example"])", R"(alpn = ["h2"])",
                             R"(upstream = "grpc")", "[[listener.route]]", R"(sni = ["a.example"])",
                             R"(upstream = "web")"})),
                 "t.toml")
          .ok());
  EXPECT_THAT(errorsOf(file(lines({"[[listener.route]]", R"(alpn = [])", R"(upstream = "web")"}))),
              ElementsAre("t.toml:12:8: 'alpn' must not be empty (leave it out to match any "
                          "protocol)"));
}

}  // namespace
}  // namespace grelay::config
