// The value parsers on their own: sizes, durations, addresses, and their edge cases.
#include <arpa/inet.h>

#include <cstring>

#include <gtest/gtest.h>

#include "config/loader.h"

namespace grelay::config {
namespace {

std::string sizeError(std::string_view text) {
  std::string error;
  EXPECT_FALSE(parseSize(text, &error).has_value()) << text;
  return error;
}

std::string durationError(std::string_view text) {
  std::string error;
  EXPECT_FALSE(parseDuration(text, &error).has_value()) << text;
  return error;
}

std::string addressError(std::string_view text) {
  std::string error;
  EXPECT_FALSE(parseAddress(text, &error).has_value()) << text;
  return error;
}

TEST(ParseSizeTest, AcceptsBinaryAndDecimalUnits) {
  EXPECT_EQ(parseSize("512"), 512u);
  EXPECT_EQ(parseSize("0"), 0u);
  EXPECT_EQ(parseSize("100B"), 100u);
  EXPECT_EQ(parseSize("64KiB"), 64u * 1024);
  EXPECT_EQ(parseSize("64 KiB"), 64u * 1024);
  EXPECT_EQ(parseSize("8MiB"), 8u << 20);
  EXPECT_EQ(parseSize("1GiB"), 1ull << 30);
  EXPECT_EQ(parseSize("3TiB"), 3ull << 40);
  EXPECT_EQ(parseSize("64KB"), 64'000u);
  EXPECT_EQ(parseSize("8MB"), 8'000'000u);
  EXPECT_EQ(parseSize("1GB"), 1'000'000'000u);
  EXPECT_EQ(parseSize("2TB"), 2'000'000'000'000u);
  EXPECT_EQ(parseSize("18446744073709551615"), UINT64_MAX);
  EXPECT_EQ(parseSize("17179869183GiB"), 17179869183ull << 30);
}

TEST(ParseSizeTest, RejectsOverflowFractionsNegativesAndGarbage) {
  EXPECT_EQ(sizeError("18446744073709551616"), "too large");
  EXPECT_EQ(sizeError("17179869184GiB"), "too large");  // exactly 2^64
  EXPECT_EQ(sizeError("99999999999999999999999TiB"), "too large");
  EXPECT_EQ(sizeError("1.5MiB"), "fractions are not allowed; use a smaller unit (e.g. 1536KiB)");
  EXPECT_EQ(sizeError("-1"), "negative sizes are not allowed");
  EXPECT_EQ(sizeError(""), "expected a number with an optional unit, e.g. 64KiB or 8MiB");
  EXPECT_EQ(sizeError("KiB"), "expected a number with an optional unit, e.g. 64KiB or 8MiB");
  EXPECT_EQ(sizeError(" 64KiB"), "expected a number with an optional unit, e.g. 64KiB or 8MiB");
  const std::string unknown = "unknown unit (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)";
  EXPECT_EQ(sizeError("64kib"), unknown);  // units are case-sensitive: "kb" could be kilobits
  EXPECT_EQ(sizeError("64K"), unknown);
  EXPECT_EQ(sizeError("64KiB "), unknown);
  EXPECT_EQ(sizeError("64  KiB"), unknown);
  EXPECT_EQ(sizeError("64 "), unknown);
  EXPECT_EQ(sizeError("1e6"), unknown);
  EXPECT_EQ(sizeError("0x10"), unknown);
}

TEST(ParseDurationTest, AcceptsUnitsAndCompounds) {
  EXPECT_EQ(parseDuration("5s"), Duration(5'000));
  EXPECT_EQ(parseDuration("250ms"), Duration(250));
  EXPECT_EQ(parseDuration("1h"), Duration(3'600'000));
  EXPECT_EQ(parseDuration("1m"), Duration(60'000));
  EXPECT_EQ(parseDuration("0s"), Duration(0));
  EXPECT_EQ(parseDuration("1h30m"), Duration(5'400'000));
  EXPECT_EQ(parseDuration("1m30s500ms"), Duration(90'500));
  EXPECT_EQ(parseDuration("2000us"), Duration(2));
}

TEST(ParseDurationTest, SubMillisecondRoundsUpNeverToZero) {
  EXPECT_EQ(parseDuration("100us"), Duration(1));
  EXPECT_EQ(parseDuration("1us"), Duration(1));
  EXPECT_EQ(parseDuration("1001us"), Duration(2));
  EXPECT_EQ(parseDuration("0us"), Duration(0));
}

TEST(ParseDurationTest, RejectsBareNumbersNegativesOverflowAndGarbage) {
  EXPECT_EQ(durationError("5"), "missing unit (e.g. 5s, 250ms, 1h)");
  EXPECT_EQ(durationError("0"), "missing unit (e.g. 5s, 250ms, 1h)");
  EXPECT_EQ(durationError("1h30"), "missing unit (e.g. 5s, 250ms, 1h)");
  EXPECT_EQ(durationError("-5s"), "negative durations are not allowed");
  EXPECT_EQ(durationError("1.5s"), "fractions are not allowed; use a smaller unit (e.g. 1500ms)");
  EXPECT_EQ(durationError(""), "expected a number with a unit, e.g. 5s, 250ms, 1h");
  EXPECT_EQ(durationError("s"), "expected a number with a unit, e.g. 5s, 250ms, 1h");
  EXPECT_EQ(durationError("5s "), "expected a number with a unit, e.g. 5s, 250ms, 1h");
  EXPECT_EQ(durationError("5 s"), "missing unit (e.g. 5s, 250ms, 1h)");
  EXPECT_EQ(durationError("5d"), "unknown unit (use us, ms, s, m or h)");
  EXPECT_EQ(durationError("5S"), "unknown unit (use us, ms, s, m or h)");
  EXPECT_EQ(durationError("5ns"), "unknown unit (use us, ms, s, m or h)");
  EXPECT_EQ(durationError("18446744073709551616us"), "too large");
  EXPECT_EQ(durationError("5124095576030432h"), "too large");          // * 3.6e9 overflows
  EXPECT_EQ(durationError("18446744073709551615us1us"), "too large");  // the sum overflows
  EXPECT_EQ(parseDuration("18446744073709551615us"), Duration(18446744073709552));
}

TEST(ParseAddressTest, AcceptsIpv4Ipv6AndHostNames) {
  std::optional<Address> v4 = parseAddress("127.0.0.1:8080");
  ASSERT_TRUE(v4.has_value());
  EXPECT_EQ(v4->family(), AF_INET);
  EXPECT_EQ(v4->length, sizeof(sockaddr_in));
  EXPECT_EQ(v4->text, "127.0.0.1:8080");
  const auto& in = reinterpret_cast<const sockaddr_in&>(v4->storage);
  EXPECT_EQ(ntohs(in.sin_port), 8080);
  EXPECT_EQ(ntohl(in.sin_addr.s_addr), INADDR_LOOPBACK);

  std::optional<Address> any = parseAddress("0.0.0.0:80");
  ASSERT_TRUE(any.has_value());
  EXPECT_EQ(reinterpret_cast<const sockaddr_in&>(any->storage).sin_addr.s_addr, INADDR_ANY);

  std::optional<Address> v6 = parseAddress("[::1]:8080");
  ASSERT_TRUE(v6.has_value());
  EXPECT_EQ(v6->family(), AF_INET6);
  EXPECT_EQ(v6->length, sizeof(sockaddr_in6));
  const auto& in6 = reinterpret_cast<const sockaddr_in6&>(v6->storage);
  EXPECT_EQ(ntohs(in6.sin6_port), 8080);
  EXPECT_TRUE(IN6_IS_ADDR_LOOPBACK(&in6.sin6_addr));

  std::optional<Address> named = parseAddress("localhost:65535");
  ASSERT_TRUE(named.has_value());
  EXPECT_TRUE(named->family() == AF_INET || named->family() == AF_INET6);
  EXPECT_EQ(ntohs(reinterpret_cast<const sockaddr_in&>(named->storage).sin_port), 65535);
  EXPECT_EQ(named->text, "localhost:65535");
  EXPECT_TRUE(named->host_name);
  EXPECT_FALSE(v4->host_name);
  EXPECT_FALSE(v6->host_name);

  EXPECT_TRUE(parseAddress("[::]:1").has_value());
}

TEST(ParseAddressTest, ResolvesEveryAddressOfAName) {
  std::string error;
  // localhost has an IPv4 address and often an IPv6 one too, never the same one twice.
  std::vector<Address> all = resolveAddresses("localhost:80", &error);
  ASSERT_FALSE(all.empty()) << error;
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_TRUE(all[i].host_name);
    EXPECT_EQ(all[i].text, "localhost:80");
    for (size_t j = 0; j < i; ++j) {
      EXPECT_FALSE(all[i].length == all[j].length &&
                   std::memcmp(&all[i].storage, &all[j].storage, all[i].length) == 0);
    }
  }
  EXPECT_EQ(all.front().length, parseAddress("localhost:80")->length);
  std::vector<Address> literal = resolveAddresses("127.0.0.1:80");
  ASSERT_EQ(literal.size(), 1u);
  EXPECT_FALSE(literal[0].host_name);
  EXPECT_TRUE(resolveAddresses("no-such-host.invalid:80", &error).empty());
  EXPECT_NE(error.find("cannot resolve host 'no-such-host.invalid'"), std::string::npos) << error;
}

TEST(ParseAddressTest, RejectsBadPorts) {
  EXPECT_EQ(addressError("127.0.0.1:0"), "port '0' is not in 1..65535");
  EXPECT_EQ(addressError("127.0.0.1:65536"), "port '65536' is not in 1..65535");
  EXPECT_EQ(addressError("127.0.0.1:99999999999999999999999"),
            "port '99999999999999999999999' is not in 1..65535");
  EXPECT_EQ(addressError("127.0.0.1:"), "port '' is not in 1..65535");
  EXPECT_EQ(addressError("127.0.0.1:-1"), "port '-1' is not in 1..65535");
  EXPECT_EQ(addressError("127.0.0.1:80a"), "port '80a' is not in 1..65535");
  EXPECT_EQ(addressError("127.0.0.1: 80"), "port ' 80' is not in 1..65535");
  EXPECT_EQ(addressError("127.0.0.1:http"), "port 'http' is not in 1..65535");
  EXPECT_EQ(addressError("[::1]:0"), "port '0' is not in 1..65535");
}

TEST(ParseAddressTest, RejectsMalformedHosts) {
  EXPECT_EQ(addressError(""), "missing port (expected HOST:PORT)");
  EXPECT_EQ(addressError("127.0.0.1"), "missing port (expected HOST:PORT)");
  EXPECT_EQ(addressError(":80"), "missing host (use 0.0.0.0 or [::] for all addresses)");
  EXPECT_EQ(addressError("[]:80"), "missing host (use 0.0.0.0 or [::] for all addresses)");
  EXPECT_EQ(addressError("::1:80"), "an IPv6 address must be in brackets, e.g. [::1]:8080");
  EXPECT_EQ(addressError("[::1]"), "missing port (expected [IPV6]:PORT)");
  EXPECT_EQ(addressError("[::1]80"), "missing port (expected [IPV6]:PORT)");
  EXPECT_EQ(addressError("[::1:80"), "missing ']' after the IPv6 address");
  EXPECT_EQ(addressError("[127.0.0.1]:80"), "invalid IPv6 address '127.0.0.1'");
  EXPECT_EQ(addressError("256.0.0.1:80"), "invalid IPv4 address '256.0.0.1'");
  EXPECT_EQ(addressError("1.2.3:80"), "invalid IPv4 address '1.2.3'");
  EXPECT_EQ(addressError("bad host:80"), "invalid host name 'bad host'");
  EXPECT_EQ(addressError(std::string_view("a\0b:80", 6)), "invalid host name 'a\\x00b'");
}

TEST(ParseAddressTest, ErrorOutputIsOptional) {
  EXPECT_FALSE(parseAddress("nope").has_value());
  EXPECT_FALSE(parseSize("nope").has_value());
  EXPECT_FALSE(parseDuration("nope").has_value());
}

sockaddr_storage peer(const char* ip) {
  sockaddr_storage out{};
  if (std::strchr(ip, ':') != nullptr) {
    auto& in6 = reinterpret_cast<sockaddr_in6&>(out);
    in6.sin6_family = AF_INET6;
    EXPECT_EQ(inet_pton(AF_INET6, ip, &in6.sin6_addr), 1) << ip;
  } else {
    auto& in = reinterpret_cast<sockaddr_in&>(out);
    in.sin_family = AF_INET;
    EXPECT_EQ(inet_pton(AF_INET, ip, &in.sin_addr), 1) << ip;
  }
  return out;
}

TEST(ParseNetworkTest, MatchesPeersByPrefix) {
  Network lan = *parseNetwork("10.1.0.0/16");
  EXPECT_TRUE(lan.contains(peer("10.1.0.0")));
  EXPECT_TRUE(lan.contains(peer("10.1.255.7")));
  EXPECT_FALSE(lan.contains(peer("10.2.0.1")));
  EXPECT_TRUE(lan.contains(peer("::ffff:10.1.2.3")));  // an IPv4 client of a [::] listener
  EXPECT_FALSE(lan.contains(peer("fd00::1")));
  Network odd = *parseNetwork("192.0.2.128/25");
  EXPECT_TRUE(odd.contains(peer("192.0.2.200")));
  EXPECT_FALSE(odd.contains(peer("192.0.2.127")));
  Network one = *parseNetwork("192.0.2.7");
  EXPECT_EQ(one.prefix, 32u);
  EXPECT_TRUE(one.contains(peer("192.0.2.7")));
  EXPECT_FALSE(one.contains(peer("192.0.2.8")));
  Network v6 = *parseNetwork("[fd00::]/8");
  EXPECT_TRUE(v6.contains(peer("fdff::1")));
  EXPECT_FALSE(v6.contains(peer("fe80::1")));
  EXPECT_FALSE(v6.contains(peer("10.0.0.1")));
  EXPECT_TRUE(parseNetwork("0.0.0.0/0")->contains(peer("203.0.113.9")));
  EXPECT_TRUE(parseNetwork("::/0")->contains(peer("2001:db8::1")));
  EXPECT_TRUE(parseNetwork("::1")->contains(peer("::1")));
}

TEST(ParseNetworkTest, RejectsWhatIsNotANetwork) {
  std::string error;
  for (const char* bad :
       {"", "/8", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/8x", "10.0.0.1/8",
        "fd00::1/8", "::/129", "localhost", "10.0.0", "[10.0.0.0]/8x", "10.0.0.0/0008"}) {
    error.clear();
    EXPECT_FALSE(parseNetwork(bad, &error).has_value()) << bad;
    EXPECT_FALSE(error.empty()) << bad;
  }
}

TEST(ParseHttpUrlTest, TakesWhatOcspRespondersAre) {
  const struct {
    const char* text;
    const char* host;
    uint16_t port;
    const char* path;
  } good[] = {
      {"http://ocsp.example.com", "ocsp.example.com", 80, "/"},
      {"HTTP://r3.o.lencr.org/", "r3.o.lencr.org", 80, "/"},
      {"http://10.0.0.5:8080/ocsp", "10.0.0.5", 8080, "/ocsp"},
      {"http://[fd00::5]:2560/a/b?c=d", "fd00::5", 2560, "/a/b?c=d"},
      {"http://[::1]", "::1", 80, "/"},
      {"http://ocsp_1.internal?x", "ocsp_1.internal", 80, "/?x"},
  };
  for (const auto& g : good) {
    const std::optional<HttpUrl> url = parseHttpUrl(g.text);
    ASSERT_TRUE(url.has_value()) << g.text;
    EXPECT_EQ(url->host, g.host) << g.text;
    EXPECT_EQ(url->port, g.port) << g.text;
    EXPECT_EQ(url->path, g.path) << g.text;
  }
  for (const char* bad : {"", "https://ocsp.example.com/", "ldap://x", "http://", "http:///path",
                          "http://a b/", "http://host:0/", "http://host:65536/", "http://host:/",
                          "http://host:80x/", "http://user@host/", "http://host/#frag",
                          "http://[fd00::5/", "http://[]/", "http://[nothost]/", "http://[::1]x/",
                          "http://ho\x01st/", "http://a/\x7f", "ocsp.example.com"}) {
    EXPECT_FALSE(parseHttpUrl(bad).has_value()) << bad;
  }
}

TEST(FormatTest, SizesAndDurationsUseTheLargestExactUnit) {
  EXPECT_EQ(formatSize(0), "0B");
  EXPECT_EQ(formatSize(1000), "1000B");
  EXPECT_EQ(formatSize(65536), "64KiB");
  EXPECT_EQ(formatSize(1536 * 1024), "1536KiB");
  EXPECT_EQ(formatSize(4ull << 30), "4GiB");
  EXPECT_EQ(formatSize(1ull << 40), "1TiB");
  EXPECT_EQ(formatDuration(Duration(0)), "0s");
  EXPECT_EQ(formatDuration(Duration(250)), "250ms");
  EXPECT_EQ(formatDuration(Duration(90'000)), "90s");
  EXPECT_EQ(formatDuration(Duration(120'000)), "2m");
  EXPECT_EQ(formatDuration(Duration(86'400'000)), "24h");
}

}  // namespace
}  // namespace grelay::config
