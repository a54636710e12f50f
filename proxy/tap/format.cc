#include "proxy/tap/format.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

#include "proxy/tap/tap_types.h"

namespace grelay::tap {
namespace {

constexpr std::array<uint32_t, 256> makeCrcTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) {
      c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    }
    table[i] = c;
  }
  return table;
}

constexpr std::array<uint32_t, 256> kCrcTable = makeCrcTable();

}  // namespace

uint32_t crc32c(const void* data, size_t length, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < length; ++i) {
    crc = kCrcTable[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  }
  return ~crc;
}

uint32_t recordCrc(uint64_t salt, uint64_t offset, const void* fixed, size_t size,
                   size_t crcFieldOffset) {
  uint8_t prefix[16];
  std::memcpy(prefix, &salt, 8);
  std::memcpy(prefix + 8, &offset, 8);
  uint32_t crc = crc32c(prefix, sizeof(prefix));
  const auto* p = static_cast<const uint8_t*>(fixed);
  crc = crc32c(p, crcFieldOffset, crc);
  const uint8_t zeros[4] = {0, 0, 0, 0};
  crc = crc32c(zeros, 4, crc);
  return crc32c(p + crcFieldOffset + 4, size - crcFieldOffset - 4, crc);
}

const char* toString(Direction d) {
  return d == Direction::kRequest ? "request" : "response";
}

const char* toString(EndKind kind) {
  switch (kind) {
    case EndKind::kFin:
      return "fin";
    case EndKind::kReset:
      return "reset";
  }
  return "unknown";
}

const char* toString(GapReason reason) {
  switch (reason) {
    case GapReason::kMaxLag:
      return "max_lag";
    case GapReason::kWriteError:
      return "write_error";
    case GapReason::kFull:
      return "full";
    case GapReason::kOther:
      return "other";
  }
  return "unknown";
}

const char* toString(CloseReason reason) {
  switch (reason) {
    case CloseReason::kNormal:
      return "normal";
    case CloseReason::kConnectFailed:
      return "connect_failed";
    case CloseReason::kIdleTimeout:
      return "idle_timeout";
    case CloseReason::kShutdown:
      return "shutdown";
    case CloseReason::kError:
      return "error";
    case CloseReason::kMaxDuration:
      return "max_duration";
  }
  return "unknown";
}

TapAddress TapAddress::fromSockaddr(const sockaddr* sa, socklen_t length) {
  TapAddress a;
  if (sa == nullptr) {
    return a;
  }
  if (sa->sa_family == AF_INET && length >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
    sockaddr_in in;
    std::memcpy(&in, sa, sizeof(in));
    a.family = 4;
    a.port = ntohs(in.sin_port);
    std::memcpy(a.addr.data(), &in.sin_addr, 4);
  } else if (sa->sa_family == AF_INET6 && length >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
    sockaddr_in6 in6;
    std::memcpy(&in6, sa, sizeof(in6));
    a.family = 6;
    a.port = ntohs(in6.sin6_port);
    a.scopeId = in6.sin6_scope_id;
    std::memcpy(a.addr.data(), &in6.sin6_addr, 16);
  }
  return a;
}

TapAddress TapAddress::ipv4(std::array<uint8_t, 4> bytes, uint16_t port) {
  TapAddress a;
  a.family = 4;
  a.port = port;
  std::memcpy(a.addr.data(), bytes.data(), 4);
  return a;
}

TapAddress TapAddress::ipv6(const std::array<uint8_t, 16>& bytes, uint16_t port) {
  TapAddress a;
  a.family = 6;
  a.port = port;
  a.addr = bytes;
  return a;
}

bool TapAddress::isV4Mapped() const {
  if (family != 6) {
    return false;
  }
  for (int i = 0; i < 10; ++i) {
    if (addr[i] != 0) {
      return false;
    }
  }
  return addr[10] == 0xff && addr[11] == 0xff;
}

std::string TapAddress::toString() const {
  char text[INET6_ADDRSTRLEN] = {};
  if (family == 4) {
    inet_ntop(AF_INET, addr.data(), text, sizeof(text));
    return std::string(text) + ":" + std::to_string(port);
  }
  if (family == 6) {
    inet_ntop(AF_INET6, addr.data(), text, sizeof(text));
    std::string s = "[" + std::string(text);
    if (scopeId != 0) {
      s += "%" + std::to_string(scopeId);
    }
    return s + "]:" + std::to_string(port);
  }
  return "unknown";
}

}  // namespace grelay::tap
