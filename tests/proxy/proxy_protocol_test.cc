// The PROXY protocol header, byte for byte against HAProxy's specification.
#include "proxy/proxy_protocol.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <string>

#include <gtest/gtest.h>

namespace grelay::proxy {
namespace {

using config::ProxyProtocol;

sockaddr_storage v4(const char* ip, uint16_t port) {
  sockaddr_storage out{};
  auto& a = reinterpret_cast<sockaddr_in&>(out);
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, ip, &a.sin_addr);
  return out;
}

sockaddr_storage v6(const char* ip, uint16_t port) {
  sockaddr_storage out{};
  auto& a = reinterpret_cast<sockaddr_in6&>(out);
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(port);
  inet_pton(AF_INET6, ip, &a.sin6_addr);
  return out;
}

const std::string kSignature("\r\n\r\n\0\r\nQUIT\n", 12);

TEST(ProxyProtocolTest, OffSendsNothing) {
  EXPECT_EQ(proxyHeader(ProxyProtocol::Off, v4("10.0.0.1", 1), v4("10.0.0.2", 2)), "");
}

TEST(ProxyProtocolTest, Version1Ipv4) {
  EXPECT_EQ(proxyHeader(ProxyProtocol::V1, v4("192.0.2.10", 56324), v4("198.51.100.1", 443)),
            "PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n");
}

TEST(ProxyProtocolTest, Version1Ipv6IsAtMost108Bytes) {
  const std::string longest =
      proxyHeader(ProxyProtocol::V1, v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
                  v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 65535));
  EXPECT_EQ(longest,
            "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe 65535 65535\r\n");
  EXPECT_LE(longest.size(), 107u);  // the spec's maximum line, without its final NUL
  EXPECT_EQ(proxyHeader(ProxyProtocol::V1, v6("::1", 40000), v6("::1", 8080)),
            "PROXY TCP6 ::1 ::1 40000 8080\r\n");
}

TEST(ProxyProtocolTest, Version1UnknownWhenTheAddressesDoNotMatch) {
  EXPECT_EQ(proxyHeader(ProxyProtocol::V1, sockaddr_storage{}, v4("10.0.0.2", 2)),
            "PROXY UNKNOWN\r\n");
  EXPECT_EQ(proxyHeader(ProxyProtocol::V1, v6("::1", 1), v4("10.0.0.2", 2)), "PROXY UNKNOWN\r\n");
}

TEST(ProxyProtocolTest, Version2Ipv4) {
  const std::string expected = kSignature + std::string("\x21\x11\x00\x0c", 4) +
                               std::string("\xc0\x00\x02\x0a", 4) +  // 192.0.2.10
                               std::string("\xc6\x33\x64\x01", 4) +  // 198.51.100.1
                               std::string("\xdc\x04", 2) +          // 56324
                               std::string("\x01\xbb", 2);           // 443
  EXPECT_EQ(proxyHeader(ProxyProtocol::V2, v4("192.0.2.10", 56324), v4("198.51.100.1", 443)),
            expected);
}

TEST(ProxyProtocolTest, Version2Ipv6) {
  const std::string header =
      proxyHeader(ProxyProtocol::V2, v6("2001:db8::1", 40000), v6("2001:db8::2", 8080));
  ASSERT_EQ(header.size(), 16u + 36u);
  EXPECT_EQ(header.substr(0, 16), kSignature + std::string("\x21\x21\x00\x24", 4));
  const std::string prefix("\x20\x01\x0d\xb8", 4);  // 2001:db8::
  EXPECT_EQ(header.substr(16, 16), prefix + std::string(11, '\0') + "\x01");
  EXPECT_EQ(header.substr(32, 16), prefix + std::string(11, '\0') + "\x02");
  EXPECT_EQ(header.substr(48), std::string("\x9c\x40\x1f\x90", 4));  // 40000, 8080
}

TEST(ProxyProtocolTest, Version2UnspecWhenTheAddressesAreUnknown) {
  EXPECT_EQ(proxyHeader(ProxyProtocol::V2, sockaddr_storage{}, sockaddr_storage{}),
            kSignature + std::string("\x21\x00\x00\x00", 4));
}

}  // namespace
}  // namespace grelay::proxy
