#include "proxy/proxy_protocol.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstdint>
#include <cstring>

namespace grelay::proxy {
namespace {

constexpr char kV2Signature[] = "\r\n\r\n\0\r\nQUIT\n";
constexpr size_t kV2SignatureLength = 12;
constexpr uint8_t kV2ProxyCommand = 0x21;  // version 2, command PROXY
constexpr uint8_t kV2Unspec = 0x00;
constexpr uint8_t kV2Tcp4 = 0x11;
constexpr uint8_t kV2Tcp6 = 0x21;

void appendBytes(std::string& out, const void* data, size_t length) {
  out.append(static_cast<const char*>(data), length);
}

void appendBe16(std::string& out, uint16_t value) {
  out.push_back(static_cast<char>(value >> 8));
  out.push_back(static_cast<char>(value & 0xff));
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

std::string version2(const sockaddr_storage& client, const sockaddr_storage& local) {
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
    out.push_back(static_cast<char>(kV2Unspec));
    appendBe16(out, 0);
  }
  return out;
}

}  // namespace

std::string proxyHeader(config::ProxyProtocol version, const sockaddr_storage& client,
                        const sockaddr_storage& local) {
  switch (version) {
    case config::ProxyProtocol::Off:
      return {};
    case config::ProxyProtocol::V1:
      return version1(client, local);
    case config::ProxyProtocol::V2:
      return version2(client, local);
  }
  return {};
}

}  // namespace grelay::proxy
