#include "config/config.h"

#include <arpa/inet.h>

#include <algorithm>
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

std::string formatEndpoint(const sockaddr_storage& address) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (address.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(address);
    inet_ntop(AF_INET, &a.sin_addr, host, sizeof(host));
    return std::string(host) + ":" + std::to_string(ntohs(a.sin_port));
  }
  if (address.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(address);
    inet_ntop(AF_INET6, &a.sin6_addr, host, sizeof(host));
    return "[" + std::string(host) + "]:" + std::to_string(ntohs(a.sin6_port));
  }
  return "?";
}

std::string UpstreamServer::label() const {
  std::string base = name.empty() ? std::to_string(entry) : name;
  return all_addresses ? base + "@" + address.text : base;
}

std::vector<UpstreamServer> expandServer(const UpstreamServer& entry,
                                         const std::vector<Address>& answers,
                                         const std::vector<UpstreamServer>& others) {
  std::vector<UpstreamServer> servers;
  for (const Address& answer : answers) {
    auto same = [&](const UpstreamServer& s) { return s.address.sameEndpoint(answer); };
    if (std::any_of(others.begin(), others.end(), same) ||
        std::any_of(servers.begin(), servers.end(), same)) {
      continue;
    }
    UpstreamServer server = entry;
    server.all_addresses = true;
    server.host = entry.written();
    server.address = answer;
    server.address.text = formatEndpoint(answer.storage);  // host_name: as resolved
    servers.push_back(std::move(server));
  }
  return servers;
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
