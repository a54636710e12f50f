// The PROXY protocol header (HAProxy's spec, versions 1 and 2) that tells an upstream
// server the client's address and the address the client connected to.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "config/config.h"

namespace grelay::proxy {

// Version 2 TLV types (the spec's PP2_TYPE_*) and the SSL TLV's bits and sub-types.
constexpr uint8_t kTlvAlpn = 0x01;
constexpr uint8_t kTlvAuthority = 0x02;
constexpr uint8_t kTlvCrc32c = 0x03;
constexpr uint8_t kTlvNoop = 0x04;
constexpr uint8_t kTlvUniqueId = 0x05;
constexpr uint8_t kTlvSsl = 0x20;
constexpr uint8_t kTlvSslVersion = 0x21;
constexpr uint8_t kTlvSslCn = 0x22;
constexpr uint8_t kTlvSslCipher = 0x23;
constexpr uint8_t kSslClientSsl = 0x01;
constexpr uint8_t kSslClientCertConn = 0x02;  // a certificate on this connection
constexpr uint8_t kSslClientCertSess = 0x04;  // ... and on its TLS session

// What a version 2 header carries after the addresses ([upstream.NAME]
// proxy_protocol_tlvs), in this order: the ALPN protocol, the authority, the SSL TLV,
// the unique ID, the TLVs passed on from the client's own header, the checksum.
struct ProxyTlvs {
  std::string_view alpn;       // PP2_TYPE_ALPN; empty = none
  std::string_view authority;  // PP2_TYPE_AUTHORITY (a host name); empty = none
  bool ssl = false;            // PP2_TYPE_SSL, saying whether TLS was terminated here:
  bool tls = false;            //   the client bit, and then the version and cipher
  std::string_view tlsVersion;
  std::string_view tlsCipher;
  bool clientCert = false;  //   a client certificate, verified, and its subject's CN
  std::string_view clientCommonName;
  std::string_view uniqueId;  // PP2_TYPE_UNIQUE_ID (at most 128 bytes); empty = none
  std::string_view received;  // TLVs as read (well-formed), sent unchanged
  bool crc32c = false;        // PP2_TYPE_CRC32C over the whole header
};

// The header for a TCP connection from `client` to `local` (the listener's address).
// Version 1 is one text line ("PROXY TCP4 SRC DST SPORT DPORT\r\n"); version 2 is binary
// (12-byte signature, command PROXY, TCP over IPv4 or IPv6, then `tlvs` if given).
// Addresses that are neither both IPv4 nor both IPv6 (a client whose address could not
// be read) give "PROXY UNKNOWN\r\n" and, in version 2, the UNSPEC family: the server
// then uses the connection's own addresses. Empty for ProxyProtocol::Off.
std::string proxyHeader(config::ProxyProtocol version, const sockaddr_storage& client,
                        const sockaddr_storage& local, const ProxyTlvs* tlvs = nullptr);

// CRC-32C (Castagnoli), as PP2_TYPE_CRC32C carries it: crc32c(0, data, n) for a whole
// buffer; pass the previous result to continue over the next piece.
uint32_t crc32c(uint32_t crc, const void* data, size_t length);

// The value of the first TLV of `type` in well-formed `tlvs`; empty if there is none.
std::string_view findTlv(std::string_view tlvs, uint8_t type);

// The TLVs of well-formed `tlvs` that are passed on upstream: all but the checksum and
// no-ops (the header sent is a new one) and the types grelay writes itself.
struct OwnTlvs {
  bool alpn = false;
  bool authority = false;
  bool ssl = false;
  bool uniqueId = false;
};
std::string passedTlvs(std::string_view tlvs, OwnTlvs own);

// The header for a connection grelay makes on its own behalf (a health check), which the
// spec says servers must accept without addresses: "PROXY UNKNOWN\r\n", or v2's LOCAL
// command. Empty for ProxyProtocol::Off.
std::string proxyHeaderLocal(config::ProxyProtocol version);

}  // namespace grelay::proxy

namespace grelay::proxy {

// Reading a PROXY protocol header (v1 or v2, told apart by their first bytes) that a load
// balancer in front of grelay sends first on each connection.
struct ProxyHeaderParse {
  enum class Status : uint8_t {
    Incomplete,  // a valid beginning: wait for more bytes
    Invalid,     // not a PROXY protocol header (or too long: see kMaxProxyHeader)
    Done,        // a whole header of `length` bytes
  };
  Status status = Status::Incomplete;
  size_t length = 0;
  // Done: whether `client` and `local` hold the addresses the header carries. False for
  // v1 UNKNOWN, v2 LOCAL (the balancer's own health checks) and v2 families other than
  // TCP over IPv4/IPv6: the connection's own addresses stand.
  bool hasAddresses = false;
  sockaddr_storage client{};
  sockaddr_storage local{};
  // Done, v2 with addresses: where its TLVs are in the bytes parsed (well-formed: each
  // one's length inside the header; a PP2_TYPE_CRC32C among them matched).
  size_t tlvOffset = 0;
  size_t tlvLength = 0;
};

// The longest header accepted: v2's 16-byte prefix plus up to 4 KiB of addresses and
// TLVs (cloud load balancers add a few dozen bytes of TLVs). v1 lines are at most 107.
constexpr size_t kMaxProxyHeader = 16 + 4096;

// Parses the bytes a connection started with. A v2 header whose TLVs do not fill its
// length exactly, or whose checksum TLV does not match, is Invalid. Needs no more than the header
// itself: while a header is Incomplete, every byte seen so far belongs to it.
ProxyHeaderParse parseProxyHeader(const uint8_t* data, size_t length);

}  // namespace grelay::proxy
