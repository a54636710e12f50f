#include "proxy/proxy_protocol.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace grelay::proxy {
namespace {

constexpr char kV2Signature[] = "\r\n\r\n\0\r\nQUIT\n";
constexpr size_t kV2SignatureLength = 12;
constexpr uint8_t kV2ProxyCommand = 0x21;  // version 2, command PROXY
constexpr uint8_t kV2LocalCommand = 0x20;  // version 2, command LOCAL
constexpr uint8_t kV2Unspec = 0x00;
constexpr uint8_t kV2Tcp4 = 0x11;
constexpr uint8_t kV2Tcp6 = 0x21;
constexpr size_t kV2HeaderPrefix = 16;  // signature, ver_cmd, family, length

void appendBytes(std::string& out, const void* data, size_t length) {
  out.append(static_cast<const char*>(data), length);
}

void appendBe16(std::string& out, uint16_t value) {
  out.push_back(static_cast<char>(value >> 8));
  out.push_back(static_cast<char>(value & 0xff));
}

uint16_t readBe16(const uint8_t* p) {
  return static_cast<uint16_t>((p[0] << 8) | p[1]);
}

void appendTlv(std::string& out, uint8_t type, std::string_view value) {
  out.push_back(static_cast<char>(type));
  appendBe16(out, static_cast<uint16_t>(value.size()));
  out.append(value);
}

// The byte-at-a-time table of the reflected Castagnoli polynomial.
constexpr std::array<uint32_t, 256> kCrc32cTable = [] {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int bit = 0; bit < 8; ++bit) {
      c = (c & 1) != 0 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    table[i] = c;
  }
  return table;
}();

// PP2_TYPE_SSL: client bits, a 32-bit verify result (0 only for a client certificate
// that verified), then sub-TLVs.
void appendSslTlv(std::string& out, const ProxyTlvs& tlvs) {
  const bool cert = tlvs.tls && tlvs.clientCert;
  std::string value;
  value.push_back(static_cast<char>(
      tlvs.tls ? kSslClientSsl | (cert ? kSslClientCertConn | kSslClientCertSess : 0) : 0));
  value.append(cert ? std::string_view("\0\0\0\0", 4) : std::string_view("\0\0\0\1", 4));
  if (tlvs.tls) {
    appendTlv(value, kTlvSslVersion, tlvs.tlsVersion);
    if (cert && !tlvs.clientCommonName.empty()) {
      appendTlv(value, kTlvSslCn, tlvs.clientCommonName);
    }
    appendTlv(value, kTlvSslCipher, tlvs.tlsCipher);
  }
  appendTlv(out, kTlvSsl, value);
}

void appendTlvs(std::string& out, const ProxyTlvs& tlvs) {
  if (!tlvs.alpn.empty()) {
    appendTlv(out, kTlvAlpn, tlvs.alpn);
  }
  if (!tlvs.authority.empty()) {
    appendTlv(out, kTlvAuthority, tlvs.authority);
  }
  if (tlvs.ssl) {
    appendSslTlv(out, tlvs);
  }
  if (!tlvs.uniqueId.empty()) {
    appendTlv(out, kTlvUniqueId, tlvs.uniqueId);
  }
  out.append(tlvs.received);
  if (tlvs.crc32c) {
    appendTlv(out, kTlvCrc32c, std::string_view("\0\0\0\0", 4));
  }
}

std::string version1(const sockaddr_storage& client, const sockaddr_storage& local) {
  char src[INET6_ADDRSTRLEN];
  char dst[INET6_ADDRSTRLEN];
  uint16_t sport = 0;
  uint16_t dport = 0;
  const char* proto = nullptr;
  if (client.ss_family == AF_INET && local.ss_family == AF_INET) {
    const auto& c = reinterpret_cast<const sockaddr_in&>(client);
    const auto& l = reinterpret_cast<const sockaddr_in&>(local);
    inet_ntop(AF_INET, &c.sin_addr, src, sizeof(src));
    inet_ntop(AF_INET, &l.sin_addr, dst, sizeof(dst));
    sport = ntohs(c.sin_port);
    dport = ntohs(l.sin_port);
    proto = "TCP4";
  } else if (client.ss_family == AF_INET6 && local.ss_family == AF_INET6) {
    const auto& c = reinterpret_cast<const sockaddr_in6&>(client);
    const auto& l = reinterpret_cast<const sockaddr_in6&>(local);
    inet_ntop(AF_INET6, &c.sin6_addr, src, sizeof(src));
    inet_ntop(AF_INET6, &l.sin6_addr, dst, sizeof(dst));
    sport = ntohs(c.sin6_port);
    dport = ntohs(l.sin6_port);
    proto = "TCP6";
  } else {
    return "PROXY UNKNOWN\r\n";
  }
  return std::string("PROXY ") + proto + " " + src + " " + dst + " " + std::to_string(sport) + " " +
         std::to_string(dport) + "\r\n";
}

std::string version2(const sockaddr_storage& client, const sockaddr_storage& local,
                     const ProxyTlvs* tlvs) {
  std::string out;
  appendBytes(out, kV2Signature, kV2SignatureLength);
  out.push_back(static_cast<char>(kV2ProxyCommand));
  if (client.ss_family == AF_INET && local.ss_family == AF_INET) {
    const auto& c = reinterpret_cast<const sockaddr_in&>(client);
    const auto& l = reinterpret_cast<const sockaddr_in&>(local);
    out.push_back(static_cast<char>(kV2Tcp4));
    appendBe16(out, 12);
    appendBytes(out, &c.sin_addr, 4);
    appendBytes(out, &l.sin_addr, 4);
    appendBytes(out, &c.sin_port, 2);  // already in network order
    appendBytes(out, &l.sin_port, 2);
  } else if (client.ss_family == AF_INET6 && local.ss_family == AF_INET6) {
    const auto& c = reinterpret_cast<const sockaddr_in6&>(client);
    const auto& l = reinterpret_cast<const sockaddr_in6&>(local);
    out.push_back(static_cast<char>(kV2Tcp6));
    appendBe16(out, 36);
    appendBytes(out, &c.sin6_addr, 16);
    appendBytes(out, &l.sin6_addr, 16);
    appendBytes(out, &c.sin6_port, 2);
    appendBytes(out, &l.sin6_port, 2);
  } else {
    // The receiver discards an UNSPEC header's block, TLVs included: none are sent.
    out.push_back(static_cast<char>(kV2Unspec));
    appendBe16(out, 0);
    return out;
  }
  if (tlvs == nullptr) {
    return out;
  }
  appendTlvs(out, *tlvs);
  const size_t body = out.size() - kV2HeaderPrefix;
  out[14] = static_cast<char>(body >> 8);
  out[15] = static_cast<char>(body & 0xff);
  if (tlvs->crc32c) {
    // Computed over the whole header with its own value zeroed, which it is so far.
    const uint32_t crc = crc32c(0, out.data(), out.size());
    for (int i = 0; i < 4; ++i) {
      out[out.size() - 4 + static_cast<size_t>(i)] = static_cast<char>(crc >> (24 - 8 * i));
    }
  }
  return out;
}

constexpr size_t kV1MaxLine = 107;  // "PROXY TCP6 " + 2 addresses + 2 ports + CRLF
constexpr std::string_view kV1Prefix = "PROXY ";

using Status = ProxyHeaderParse::Status;

// True if the first min(length, prefix.size()) bytes of data match prefix.
bool startsLike(const uint8_t* data, size_t length, std::string_view prefix) {
  const size_t n = std::min(length, prefix.size());
  return std::memcmp(data, prefix.data(), n) == 0;
}

bool parsePort(std::string_view text, uint16_t* port) {
  if (text.empty() || text.size() > 5 || (text.size() > 1 && text[0] == '0')) {
    return false;
  }
  uint32_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') {
      return false;
    }
    value = value * 10 + static_cast<uint32_t>(c - '0');
  }
  if (value > 65535) {
    return false;
  }
  *port = static_cast<uint16_t>(value);
  return true;
}

bool parseAddress(int family, std::string_view text, uint16_t port, sockaddr_storage* out) {
  char buf[INET6_ADDRSTRLEN];
  if (text.empty() || text.size() >= sizeof(buf)) {
    return false;
  }
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  *out = sockaddr_storage{};
  if (family == AF_INET) {
    auto& a = reinterpret_cast<sockaddr_in&>(*out);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    return inet_pton(AF_INET, buf, &a.sin_addr) == 1;
  }
  auto& a = reinterpret_cast<sockaddr_in6&>(*out);
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(port);
  return inet_pton(AF_INET6, buf, &a.sin6_addr) == 1;
}

// "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" or "PROXY UNKNOWN[ anything]\r\n".
ProxyHeaderParse parseV1(const uint8_t* data, size_t length) {
  ProxyHeaderParse out;
  const std::string_view text(reinterpret_cast<const char*>(data), std::min(length, kV1MaxLine));
  const size_t end = text.find("\r\n");
  if (end == std::string_view::npos) {
    // Only a CR may be missing its LF yet; a line past the limit is no header.
    out.status = length >= kV1MaxLine ? Status::Invalid : Status::Incomplete;
    if (out.status == Status::Incomplete && text.find('\n') != std::string_view::npos) {
      out.status = Status::Invalid;
    }
    return out;
  }
  out.status = Status::Invalid;
  if (text.substr(0, end).find('\n') != std::string_view::npos) {
    return out;  // a bare LF: no line of this protocol (and a prefix would say so too)
  }
  std::string_view rest = text.substr(kV1Prefix.size(), end - kV1Prefix.size());
  std::string_view fields[5];
  size_t count = 0;
  while (!rest.empty() && count < 5) {
    const size_t space = rest.find(' ');
    fields[count++] = rest.substr(0, space);
    rest = space == std::string_view::npos ? std::string_view() : rest.substr(space + 1);
  }
  if (count >= 1 && fields[0] == "UNKNOWN") {
    out.status = Status::Done;
    out.length = end + 2;
    return out;
  }
  if (count != 5 || !rest.empty()) {
    return out;
  }
  int family = 0;
  if (fields[0] == "TCP4") {
    family = AF_INET;
  } else if (fields[0] == "TCP6") {
    family = AF_INET6;
  } else {
    return out;
  }
  uint16_t sport = 0;
  uint16_t dport = 0;
  if (!parsePort(fields[3], &sport) || !parsePort(fields[4], &dport) ||
      !parseAddress(family, fields[1], sport, &out.client) ||
      !parseAddress(family, fields[2], dport, &out.local)) {
    return out;
  }
  out.status = Status::Done;
  out.length = end + 2;
  out.hasAddresses = true;
  return out;
}

// The address block's length for a v2 family byte (TCP or UDP over IPv4 or IPv6, UNIX
// stream or datagram); SIZE_MAX for UNSPEC and unknown families.
size_t v2AddressLength(uint8_t family) {
  switch (family) {
    case 0x11:
    case 0x12:
      return 12;
    case 0x21:
    case 0x22:
      return 36;
    case 0x31:
    case 0x32:
      return 216;
    default:
      return SIZE_MAX;
  }
}

// Whether the TLVs of data[from, total) fill it exactly and a checksum among them (the
// spec: one present must be verified) matches the header.
bool checkTlvs(const uint8_t* data, size_t from, size_t total) {
  size_t at = from;
  while (at < total) {
    if (total - at < 3) {
      return false;
    }
    const size_t length = readBe16(data + at + 1);
    if (length > total - at - 3) {
      return false;
    }
    if (data[at] == kTlvCrc32c) {
      if (length != 4) {
        return false;
      }
      const size_t value = at + 3;
      const uint8_t zero[4] = {};
      uint32_t crc = crc32c(0, data, value);
      crc = crc32c(crc, zero, 4);
      crc = crc32c(crc, data + value + 4, total - value - 4);
      const uint32_t sent = (static_cast<uint32_t>(data[value]) << 24) |
                            (static_cast<uint32_t>(data[value + 1]) << 16) |
                            (static_cast<uint32_t>(data[value + 2]) << 8) | data[value + 3];
      if (crc != sent) {
        return false;
      }
    }
    at += 3 + length;
  }
  return true;
}

ProxyHeaderParse parseV2(const uint8_t* data, size_t length) {
  ProxyHeaderParse out;
  if (length < kV2HeaderPrefix) {
    return out;  // Incomplete
  }
  const uint8_t version = data[12] >> 4;
  const uint8_t command = data[12] & 0x0f;
  const size_t total = kV2HeaderPrefix + ((static_cast<size_t>(data[14]) << 8) | data[15]);
  if (version != 2 || command > 1 || total > kMaxProxyHeader) {
    out.status = Status::Invalid;
    return out;
  }
  if (length < total) {
    return out;  // Incomplete
  }
  out.status = Status::Done;
  out.length = total;
  if (command == 0) {
    return out;  // LOCAL: the balancer's own connection
  }
  const uint8_t* body = data + kV2HeaderPrefix;
  const size_t bodyLength = total - kV2HeaderPrefix;
  if (data[13] == kV2Tcp4) {
    if (bodyLength < 12) {
      return ProxyHeaderParse{Status::Invalid};
    }
    auto& c = reinterpret_cast<sockaddr_in&>(out.client);
    auto& l = reinterpret_cast<sockaddr_in&>(out.local);
    c.sin_family = l.sin_family = AF_INET;
    std::memcpy(&c.sin_addr, body, 4);
    std::memcpy(&l.sin_addr, body + 4, 4);
    std::memcpy(&c.sin_port, body + 8, 2);
    std::memcpy(&l.sin_port, body + 10, 2);
    out.hasAddresses = true;
  } else if (data[13] == kV2Tcp6) {
    if (bodyLength < 36) {
      return ProxyHeaderParse{Status::Invalid};
    }
    auto& c = reinterpret_cast<sockaddr_in6&>(out.client);
    auto& l = reinterpret_cast<sockaddr_in6&>(out.local);
    c.sin6_family = l.sin6_family = AF_INET6;
    std::memcpy(&c.sin6_addr, body, 16);
    std::memcpy(&l.sin6_addr, body + 16, 16);
    std::memcpy(&c.sin6_port, body + 32, 2);
    std::memcpy(&l.sin6_port, body + 34, 2);
    out.hasAddresses = true;
  }
  // Other families (UDP, UNIX sockets, UNSPEC): the addresses are not ours to use.
  const size_t addresses = v2AddressLength(data[13]);
  if (addresses == SIZE_MAX) {
    return out;  // UNSPEC or unknown: the whole block is discarded
  }
  if (bodyLength < addresses || !checkTlvs(data, kV2HeaderPrefix + addresses, total)) {
    return ProxyHeaderParse{Status::Invalid};
  }
  out.tlvOffset = kV2HeaderPrefix + addresses;
  out.tlvLength = total - out.tlvOffset;
  return out;
}

}  // namespace

ProxyHeaderParse parseProxyHeader(const uint8_t* data, size_t length) {
  const std::string_view signature(kV2Signature, kV2SignatureLength);
  if (length > 0 && startsLike(data, length, signature)) {
    return parseV2(data, length);
  }
  if (length > 0 && startsLike(data, length, kV1Prefix)) {
    if (length < kV1Prefix.size()) {
      return {};
    }
    return parseV1(data, length);
  }
  ProxyHeaderParse out;
  out.status = length == 0 ? Status::Incomplete : Status::Invalid;
  return out;
}

uint32_t crc32c(uint32_t crc, const void* data, size_t length) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t c = ~crc;
  for (size_t i = 0; i < length; ++i) {
    c = kCrc32cTable[(c ^ p[i]) & 0xff] ^ (c >> 8);
  }
  return ~c;
}

std::string_view findTlv(std::string_view tlvs, uint8_t type) {
  const auto* p = reinterpret_cast<const uint8_t*>(tlvs.data());
  for (size_t at = 0; at + 3 <= tlvs.size();) {
    const size_t length = readBe16(p + at + 1);
    if (p[at] == type) {
      return tlvs.substr(at + 3, length);
    }
    at += 3 + length;
  }
  return {};
}

std::string passedTlvs(std::string_view tlvs, OwnTlvs own) {
  std::string out;
  const auto* p = reinterpret_cast<const uint8_t*>(tlvs.data());
  for (size_t at = 0; at + 3 <= tlvs.size();) {
    const uint8_t type = p[at];
    const size_t whole = 3 + readBe16(p + at + 1);
    const bool ours = (type == kTlvAlpn && own.alpn) || (type == kTlvAuthority && own.authority) ||
                      (type == kTlvSsl && own.ssl) || (type == kTlvUniqueId && own.uniqueId);
    if (type != kTlvCrc32c && type != kTlvNoop && !ours) {
      out.append(tlvs.substr(at, whole));
    }
    at += whole;
  }
  return out;
}

std::string proxyHeader(config::ProxyProtocol version, const sockaddr_storage& client,
                        const sockaddr_storage& local, const ProxyTlvs* tlvs) {
  switch (version) {
    case config::ProxyProtocol::Off:
      return {};
    case config::ProxyProtocol::V1:
      return version1(client, local);
    case config::ProxyProtocol::V2:
      return version2(client, local, tlvs);
  }
  return {};
}

std::string proxyHeaderLocal(config::ProxyProtocol version) {
  switch (version) {
    case config::ProxyProtocol::Off:
      return {};
    case config::ProxyProtocol::V1:
      return version1(sockaddr_storage{}, sockaddr_storage{});  // PROXY UNKNOWN
    case config::ProxyProtocol::V2: {
      std::string out(kV2Signature, kV2SignatureLength);
      out.push_back(static_cast<char>(kV2LocalCommand));
      out.push_back(static_cast<char>(kV2Unspec));
      appendBe16(out, 0);
      return out;
    }
  }
  return {};
}

}  // namespace grelay::proxy
