// Vocabulary shared by the tap writer (layout.h), reader (reader.h) and exporter.
#pragma once

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <string>

namespace grelay::tap {

// Direction of a session stream. kRequest = client -> upstream, kResponse = upstream -> client.
enum class Direction : uint8_t { kRequest = 0, kResponse = 1 };

inline constexpr size_t index(Direction d) {
  return static_cast<size_t>(d);
}
const char* toString(Direction d);

// How one direction of a session ended.
enum class EndKind : uint8_t { kFin = 1, kReset = 2 };
const char* toString(EndKind kind);

// Why bytes of a stream are missing from the tap (informational; stored in gap records).
enum class GapReason : uint8_t { kMaxLag = 1, kWriteError = 2, kFull = 3, kOther = 4 };
const char* toString(GapReason reason);

// Why a session closed (informational; stored in close records). Unknown values are kept.
enum class CloseReason : uint32_t {
  kNormal = 0,         // both directions ended
  kConnectFailed = 1,  // the upstream connect failed (upstream address may be unknown)
  kIdleTimeout = 2,
  kShutdown = 3,     // grelay stopped (drain deadline)
  kError = 4,        // an I/O error; see the record's error field
  kMaxDuration = 5,  // open for the listener's max_session_duration
};
const char* toString(CloseReason reason);

// Session flags stored in the open record.
inline constexpr uint32_t kSessionTlsTerminated = 1u << 0;

// An IPv4/IPv6 endpoint, or "unknown" (family 0).
struct TapAddress {
  uint8_t family = 0;  // 0 unknown, 4 IPv4, 6 IPv6
  uint16_t port = 0;
  uint32_t scopeId = 0;            // IPv6 scope id, 0 otherwise
  std::array<uint8_t, 16> addr{};  // IPv4 in the first 4 bytes

  static TapAddress fromSockaddr(const sockaddr* sa, socklen_t length);
  static TapAddress ipv4(std::array<uint8_t, 4> a, uint16_t port);
  static TapAddress ipv6(const std::array<uint8_t, 16>& a, uint16_t port);

  bool known() const { return family == 4 || family == 6; }
  // True for ::ffff:a.b.c.d.
  bool isV4Mapped() const;
  // "1.2.3.4:80", "[::1]:80" or "unknown".
  std::string toString() const;

  bool operator==(const TapAddress&) const = default;
};

}  // namespace grelay::tap
