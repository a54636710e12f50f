// The PROXY protocol header, byte for byte against HAProxy's specification.
#include "proxy/proxy_protocol.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <string>
#include <utility>

#include <gtest/gtest.h>

#include "tests/proxy/addresses.h"

namespace grelay::proxy {
namespace {

using testing::v4;
using testing::v6;

using config::ProxyProtocol;

const std::string kSignature("\r\n\r\n\0\r\nQUIT\n", 12);

TEST(ProxyProtocolTest, LocalHeadersCarryNoAddressesAndParseAsSuch) {
  EXPECT_EQ(proxyHeaderLocal(ProxyProtocol::Off), "");
  EXPECT_EQ(proxyHeaderLocal(ProxyProtocol::V1), "PROXY UNKNOWN\r\n");
  EXPECT_EQ(proxyHeaderLocal(ProxyProtocol::V2), kSignature + std::string("\x20\x00\x00\x00", 4));
  for (ProxyProtocol v : {ProxyProtocol::V1, ProxyProtocol::V2}) {
    const std::string h = proxyHeaderLocal(v);
    const ProxyHeaderParse p =
        parseProxyHeader(reinterpret_cast<const uint8_t*>(h.data()), h.size());
    EXPECT_EQ(p.status, ProxyHeaderParse::Status::Done);
    EXPECT_EQ(p.length, h.size());
    EXPECT_FALSE(p.hasAddresses);
  }
}

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

using Status = ProxyHeaderParse::Status;

ProxyHeaderParse parse(const std::string& bytes) {
  return parseProxyHeader(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

std::string text(const sockaddr_storage& a) {
  char buf[INET6_ADDRSTRLEN] = "";
  uint16_t port = 0;
  if (a.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(a);
    inet_ntop(AF_INET, &in.sin_addr, buf, sizeof(buf));
    port = ntohs(in.sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto& in = reinterpret_cast<const sockaddr_in6&>(a);
    inet_ntop(AF_INET6, &in.sin6_addr, buf, sizeof(buf));
    port = ntohs(in.sin6_port);
  }
  return std::string(buf) + "/" + std::to_string(port);
}

TEST(ProxyHeaderParseTest, WhatWeSendParsesBack) {
  for (ProxyProtocol version : {ProxyProtocol::V1, ProxyProtocol::V2}) {
    for (const auto& [client, local] :
         {std::pair{v4("192.0.2.10", 56324), v4("198.51.100.1", 443)},
          std::pair{v6("2001:db8::1", 40000), v6("2001:db8::2", 8080)}}) {
      const std::string header = proxyHeader(version, client, local);
      const ProxyHeaderParse p = parse(header + "GET / HTTP/1.1\r\n");
      ASSERT_EQ(p.status, Status::Done) << header;
      EXPECT_EQ(p.length, header.size());
      EXPECT_TRUE(p.hasAddresses);
      EXPECT_EQ(text(p.client), text(client));
      EXPECT_EQ(text(p.local), text(local));
      // Every proper prefix is a valid beginning.
      for (size_t n = 0; n < header.size(); ++n) {
        EXPECT_EQ(parse(header.substr(0, n)).status, Status::Incomplete) << n << " " << header;
      }
    }
  }
}

TEST(ProxyHeaderParseTest, UnknownAndLocalKeepTheConnectionsAddresses) {
  ProxyHeaderParse p = parse("PROXY UNKNOWN\r\nrest");
  EXPECT_EQ(p.status, Status::Done);
  EXPECT_EQ(p.length, 15u);
  EXPECT_FALSE(p.hasAddresses);
  p = parse("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n");
  EXPECT_EQ(p.status, Status::Done);
  EXPECT_FALSE(p.hasAddresses);
  // v2 LOCAL with a TCP4 block: the block is skipped, not used.
  const std::string local = kSignature + std::string("\x20\x11\x00\x0c", 4) + std::string(12, 'x');
  p = parse(local + "data");
  EXPECT_EQ(p.status, Status::Done);
  EXPECT_EQ(p.length, 28u);
  EXPECT_FALSE(p.hasAddresses);
  // v2 PROXY over a UNIX socket (family 0x31, 216 bytes of addresses): skipped too.
  const std::string unix = kSignature + std::string("\x21\x31\x00\xd8", 4) + std::string(216, 'u');
  p = parse(unix);
  EXPECT_EQ(p.status, Status::Done);
  EXPECT_EQ(p.length, 232u);
  EXPECT_FALSE(p.hasAddresses);
}

std::string tlv(uint8_t type, const std::string& value) {
  return std::string(1, static_cast<char>(type)) + static_cast<char>(value.size() >> 8) +
         static_cast<char>(value.size() & 0xff) + value;
}

// A header with addresses 192.0.2.10:56324 -> 198.51.100.1:443 and `tlvs` after them.
std::string headerWith(const std::string& tlvs) {
  std::string header =
      proxyHeader(ProxyProtocol::V2, v4("192.0.2.10", 56324), v4("198.51.100.1", 443));
  header[15] = static_cast<char>(12 + tlvs.size());
  return header + tlvs;
}

TEST(ProxyProtocolTest, Crc32cIsCastagnolis) {
  EXPECT_EQ(crc32c(0, "123456789", 9), 0xE3069283u);  // the standard check value
  EXPECT_EQ(crc32c(crc32c(0, "1234", 4), "56789", 5), 0xE3069283u);
  EXPECT_EQ(crc32c(0, "", 0), 0u);
}

TEST(ProxyProtocolTest, Version2TlvsByteForByte) {
  const std::string received = tlv(0xea, "\x01vpce-1");  // an AWS VPC endpoint ID
  ProxyTlvs tlvs;
  tlvs.alpn = "h2";
  tlvs.authority = "api.example";
  tlvs.ssl = true;
  tlvs.tls = true;
  tlvs.tlsVersion = "TLSv1.3";
  tlvs.tlsCipher = "TLS_AES_128_GCM_SHA256";
  tlvs.received = received;
  tlvs.crc32c = true;
  const std::string ssl = std::string("\x01\x00\x00\x00\x01", 5) + tlv(0x21, "TLSv1.3") +
                          tlv(0x23, "TLS_AES_128_GCM_SHA256");
  // The checksum as an independent implementation (Python, bit by bit) computes it.
  const std::string expected =
      headerWith(tlv(0x01, "h2") + tlv(0x02, "api.example") + tlv(0x20, ssl) + received +
                 tlv(0x03, std::string("\xff\x77\x08\xed", 4)));
  EXPECT_EQ(expected.substr(12, 4), std::string("\x21\x11\x00\x5b", 4));  // 91 bytes
  EXPECT_EQ(proxyHeader(ProxyProtocol::V2, v4("192.0.2.10", 56324), v4("198.51.100.1", 443), &tlvs),
            expected);
}

TEST(ProxyProtocolTest, Version2SslTlvOfAPlainSessionHasNoSubTlvs) {
  ProxyTlvs tlvs;
  tlvs.ssl = true;
  EXPECT_EQ(proxyHeader(ProxyProtocol::V2, v4("192.0.2.10", 56324), v4("198.51.100.1", 443), &tlvs),
            headerWith(tlv(0x20, std::string("\x00\x00\x00\x00\x01", 5))));
}

TEST(ProxyProtocolTest, Version2SslTlvOfAClientCertificate) {
  ProxyTlvs tlvs;
  tlvs.ssl = true;
  tlvs.tls = true;
  tlvs.tlsVersion = "TLSv1.3";
  tlvs.tlsCipher = "TLS_AES_128_GCM_SHA256";
  tlvs.clientCert = true;
  tlvs.clientCommonName = "alice";
  // Client bits SSL | CERT_CONN | CERT_SESS, verify 0 (verified), then version, CN, cipher.
  const std::string ssl = std::string("\x07\x00\x00\x00\x00", 5) + tlv(0x21, "TLSv1.3") +
                          tlv(0x22, "alice") + tlv(0x23, "TLS_AES_128_GCM_SHA256");
  EXPECT_EQ(proxyHeader(ProxyProtocol::V2, v4("192.0.2.10", 56324), v4("198.51.100.1", 443), &tlvs),
            headerWith(tlv(0x20, ssl)));
}

TEST(ProxyProtocolTest, Version2UniqueIdComesAfterSslAndBeforeWhatIsPassedOn) {
  const std::string received = tlv(0x05, "lb-id-1") + tlv(0xea, "\x01vpce-1");
  ProxyTlvs tlvs;
  tlvs.ssl = true;
  tlvs.uniqueId = "3f09c2d1-0-17";
  const std::string passed = passedTlvs(received, {.uniqueId = true});
  tlvs.received = passed;
  EXPECT_EQ(passed, tlv(0xea, "\x01vpce-1"));  // the balancer's ID gives way to ours
  EXPECT_EQ(proxyHeader(ProxyProtocol::V2, v4("192.0.2.10", 56324), v4("198.51.100.1", 443), &tlvs),
            headerWith(tlv(0x20, std::string("\x00\x00\x00\x00\x01", 5)) +
                       tlv(0x05, "3f09c2d1-0-17") + tlv(0xea, "\x01vpce-1")));
}

TEST(ProxyProtocolTest, Version2UnspecCarriesNoTlvs) {
  ProxyTlvs tlvs;
  tlvs.authority = "api.example";
  tlvs.crc32c = true;
  EXPECT_EQ(proxyHeader(ProxyProtocol::V2, sockaddr_storage{}, sockaddr_storage{}, &tlvs),
            kSignature + std::string("\x21\x00\x00\x00", 4));
  // Version 1 has no TLVs at all.
  EXPECT_EQ(proxyHeader(ProxyProtocol::V1, v4("10.1.2.3", 1), v4("10.9.9.9", 2), &tlvs),
            "PROXY TCP4 10.1.2.3 10.9.9.9 1 2\r\n");
}

TEST(ProxyProtocolTest, PassedTlvsLeaveOutChecksumsNoopsAndWhatGrelayWrites) {
  const std::string vpce = tlv(0xea, "\x01vpce-1");
  const std::string authority = tlv(0x02, "lb.example");
  const std::string ssl = tlv(0x20, std::string("\x00\x00\x00\x00\x01", 5));
  const std::string all = tlv(0x04, "pad") + authority + vpce + tlv(0x03, "abcd") + ssl;
  const std::string alpn = tlv(0x01, "h2");
  const std::string withAlpn = alpn + all;
  EXPECT_EQ(passedTlvs(withAlpn, {}), alpn + authority + vpce + ssl);
  EXPECT_EQ(passedTlvs(withAlpn, {.authority = true}), alpn + vpce + ssl);
  EXPECT_EQ(passedTlvs(withAlpn, {.alpn = true, .authority = true, .ssl = true}), vpce);
  EXPECT_EQ(passedTlvs("", {.alpn = true, .authority = true, .ssl = true}), "");
  EXPECT_EQ(findTlv(all, 0x02), "lb.example");
  EXPECT_EQ(findTlv(all, 0xea), "\x01vpce-1");
  EXPECT_EQ(findTlv(all, 0x05), "");
}

TEST(ProxyHeaderParseTest, Version2TlvsAreCheckedAndKept) {
  const std::string tlvs = tlv(0xea, "\x01vpce") + tlv(0x02, "lb.example");
  const std::string header = headerWith(tlvs);
  const ProxyHeaderParse p = parse(header + "payload");
  ASSERT_EQ(p.status, Status::Done);
  EXPECT_EQ(p.length, header.size());
  EXPECT_EQ(text(p.client), "192.0.2.10/56324");
  EXPECT_EQ(header.substr(p.tlvOffset, p.tlvLength), tlvs);
  // Malformed TLVs: a header that is not what it says is no header.
  for (const std::string& bad : {
           headerWith(tlvs + "\x05\x00"),                                // 2 bytes left over
           headerWith(tlvs + std::string("\x05\x00\x09", 3) + "short"),  // past the end
           headerWith(tlv(0x03, "abc")),                                 // a checksum of 3 bytes
       }) {
    EXPECT_EQ(parse(bad).status, Status::Invalid);
  }
}

TEST(ProxyHeaderParseTest, AChecksumMustMatch) {
  ProxyTlvs tlvs;
  tlvs.authority = "api.example";
  tlvs.crc32c = true;
  const std::string header =
      proxyHeader(ProxyProtocol::V2, v4("192.0.2.10", 56324), v4("198.51.100.1", 443), &tlvs);
  ASSERT_EQ(parse(header).status, Status::Done);
  // Any byte changed after the signature and version (whose changes are invalid anyway),
  // in the addresses, a TLV or the checksum's length or value, fails it. (Changing the
  // checksum's type makes it another TLV: a header without a checksum.)
  const size_t checksumType = header.size() - 7;
  ASSERT_EQ(header[checksumType], '\x03');
  for (size_t i = 16; i < header.size(); ++i) {
    if (i == checksumType) {
      continue;
    }
    std::string changed = header;
    changed[i] = static_cast<char>(changed[i] ^ 0x20);
    EXPECT_EQ(parse(changed).status, Status::Invalid) << i;
  }
}

TEST(ProxyHeaderParseTest, AnythingElseIsInvalid) {
  for (const std::string& bad : {
           std::string("GET / HTTP/1.1\r\n"),
           std::string("\x16\x03\x01\x00\xa5", 5),  // a TLS ClientHello
           std::string("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"),
           std::string("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"),
           std::string("PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n"),
           std::string("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"),
           std::string("PROXY TCP4 ::1 ::1 1 2\r\n"),
           std::string("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n"),
           std::string("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"),
           std::string("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), std::string("PROXY UNKNOWN a\nb\r\n"),
           std::string("PROXY ") + std::string(120, 'A'),
           kSignature + std::string("\x11\x11\x00\x0c", 4),           // version 1 in a v2 header
           kSignature + std::string("\x22\x11\x00\x0c", 4),           // command 2
           kSignature + std::string("\x21\x11\x00\x04", 4) + "abcd",  // TCP4 block too short
           kSignature + std::string("\x21\x21\x10\x11", 4),           // 4113 bytes: too long
       }) {
    EXPECT_EQ(parse(bad).status, Status::Invalid) << bad;
  }
  EXPECT_EQ(parse("").status, Status::Incomplete);
  EXPECT_EQ(parse("PRO").status, Status::Incomplete);
  EXPECT_EQ(parse("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r").status, Status::Incomplete);
}

}  // namespace
}  // namespace grelay::proxy
