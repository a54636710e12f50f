#include "config/config.h"

#include <cstring>

namespace grelay::config {

bool admits(const std::vector<Network>& networks, const sockaddr_storage& address) {
  if (networks.empty()) {
    return true;
  }
  for (const Network& network : networks) {
    if (network.contains(address)) {
      return true;
    }
  }
  return false;
}

bool Network::contains(const sockaddr_storage& address) const {
  const uint8_t* bytes_in = nullptr;
  int peer_family = address.ss_family;
  if (peer_family == AF_INET) {
    bytes_in = reinterpret_cast<const uint8_t*>(
        &reinterpret_cast<const sockaddr_in&>(address).sin_addr.s_addr);
  } else if (peer_family == AF_INET6) {
    const in6_addr& a6 = reinterpret_cast<const sockaddr_in6&>(address).sin6_addr;
    bytes_in = a6.s6_addr;
    if (IN6_IS_ADDR_V4MAPPED(&a6)) {
      peer_family = AF_INET;
      bytes_in += 12;
    }
  } else {
    return false;
  }
  if (peer_family != family) {
    return false;
  }
  const uint32_t whole = prefix / 8;
  if (std::memcmp(bytes_in, bytes.data(), whole) != 0) {
    return false;
  }
  const uint32_t rest = prefix % 8;
  if (rest == 0) {
    return true;
  }
  const uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (bytes_in[whole] & mask) == bytes[whole];
}

const char* toString(RelayPath path) {
  switch (path) {
    case RelayPath::Auto:
      return "auto";
    case RelayPath::Group:
      return "group";
    case RelayPath::Mainline:
      return "mainline";
    case RelayPath::Copy:
      return "copy";
  }
  return "?";
}

const char* toString(Balance balance) {
  switch (balance) {
    case Balance::RoundRobin:
      return "round_robin";
    case Balance::LeastConn:
      return "least_conn";
    case Balance::Source:
      return "source";
  }
  return "?";
}

const char* toString(HashType type) {
  switch (type) {
    case HashType::Map:
      return "map";
    case HashType::Consistent:
      return "consistent";
  }
  return "?";
}

const char* toString(ProxyProtocol version) {
  switch (version) {
    case ProxyProtocol::Off:
      return "off";
    case ProxyProtocol::V1:
      return "v1";
    case ProxyProtocol::V2:
      return "v2";
  }
  return "?";
}

const char* toString(MirrorDirection direction) {
  switch (direction) {
    case MirrorDirection::Request:
      return "request";
    case MirrorDirection::Both:
      return "both";
  }
  return "?";
}

}  // namespace grelay::config
