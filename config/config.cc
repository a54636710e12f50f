#include "config/config.h"

#include <arpa/inet.h>
#include <sys/un.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <iterator>
#include <unordered_set>

namespace grelay::config {

bool admits(const NetworkSet& networks, const sockaddr_storage& address) {
  return networks.empty() || networks.contains(address);
}

std::string canonicalHostName(std::string_view name) {
  if (!name.empty() && name.back() == '.') {
    name.remove_suffix(1);
  }
  std::string out(name);
  for (char& c : out) {
    c = c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
  }
  return out;
}

std::optional<HttpUrl> parseHttpUrl(std::string_view text) {
  constexpr std::string_view kScheme = "http://";
  if (text.size() < kScheme.size() ||
      canonicalHostName(text.substr(0, kScheme.size())) != kScheme ||
      std::any_of(text.begin(), text.end(),
                  [](char c) { return static_cast<unsigned char>(c) <= ' ' || c == 127; })) {
    return std::nullopt;
  }
  text.remove_prefix(kScheme.size());
  const size_t slash = text.find_first_of("/?");
  std::string_view authority = text.substr(0, slash);
  HttpUrl url;
  if (slash != std::string_view::npos) {
    url.path = (text[slash] == '?' ? "/" : "") + std::string(text.substr(slash));
  }
  if (authority.find('@') != std::string_view::npos || url.path.find('#') != std::string::npos) {
    return std::nullopt;
  }
  std::string_view port;
  if (authority.starts_with("[")) {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos || close == 1) {
      return std::nullopt;
    }
    url.host = std::string(authority.substr(1, close - 1));
    authority.remove_prefix(close + 1);
    if (!authority.empty() && !authority.starts_with(":")) {
      return std::nullopt;
    }
    port = authority.empty() ? std::string_view() : authority.substr(1);
    in6_addr v6{};
    if (inet_pton(AF_INET6, url.host.c_str(), &v6) != 1) {
      return std::nullopt;
    }
  } else {
    const size_t colon = authority.find(':');
    url.host = std::string(authority.substr(0, colon));
    port = colon == std::string_view::npos ? std::string_view() : authority.substr(colon + 1);
    if (url.host.empty() || !std::all_of(url.host.begin(), url.host.end(), [](char c) {
          return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
        })) {
      return std::nullopt;
    }
  }
  if (authority.find(':') != std::string_view::npos) {
    if (port.empty() || port.size() > 5 ||
        !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return std::nullopt;
    }
    const int number = std::stoi(std::string(port));
    if (number < 1 || number > 65535) {
      return std::nullopt;
    }
    url.port = static_cast<uint16_t>(number);
  }
  return url;
}

namespace {

constexpr size_t kExactName = 1000;  // above any wildcard's suffix length

// How well a route's names fit `name` (canonical): 0 = no match; 1 = the route has no
// names (any name); a wildcard's suffix length + 1; kExactName for the name itself.
size_t nameFit(const RouteConfig& route, std::string_view name) {
  if (route.sni.empty()) {
    return 1;
  }
  size_t fit = 0;
  for (const std::string& pattern : route.sni) {
    if (pattern.starts_with("*.")) {
      const std::string_view suffix = std::string_view(pattern).substr(1);
      if (name.size() > suffix.size() && name.ends_with(suffix)) {
        fit = std::max(fit, suffix.size() + 1);
      }
    } else if (pattern == name) {
      return kExactName;
    }
  }
  return fit;
}

}  // namespace

size_t routeFor(const ListenerConfig& listener, std::string_view serverName,
                const std::vector<std::string>& protocols) {
  if (listener.routes.empty() || serverName.size() > 255) {
    return kNoRoute;
  }
  const std::string name = canonicalHostName(serverName);
  size_t best = kNoRoute;
  std::pair<bool, size_t> bestFit{false, 0};
  for (size_t r = 0; r < listener.routes.size(); ++r) {
    const RouteConfig& route = listener.routes[r];
    const size_t fit = name.empty() ? (route.sni.empty() ? 1 : 0) : nameFit(route, name);
    if (fit == 0) {
      continue;
    }
    const bool byAlpn = !route.alpn.empty();
    if (byAlpn && std::none_of(protocols.begin(), protocols.end(), [&](const std::string& p) {
          return std::find(route.alpn.begin(), route.alpn.end(), p) != route.alpn.end();
        })) {
      continue;
    }
    const std::pair<bool, size_t> candidate{byAlpn, fit};
    if (best == kNoRoute || candidate > bestFit) {
      best = r;
      bestFit = candidate;
    }
  }
  return best;
}

namespace {

uint64_t bigEndian64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) {
    v = (v << 8) | p[i];
  }
  return v;
}

// The host-bit mask of a prefix within one 64-bit half that starts at bit `offset`.
uint64_t hostMask(uint32_t prefix, uint32_t offset) {
  if (prefix <= offset) {
    return ~uint64_t{0};
  }
  if (prefix >= offset + 64) {
    return 0;
  }
  return ~uint64_t{0} >> (prefix - offset);
}

// Sorts [first, last] ranges and merges those that overlap or touch.
template <typename T>
void mergeRanges(std::vector<std::pair<T, T>>& ranges, T (*next)(const T&),
                 bool (*isMax)(const T&)) {
  std::sort(ranges.begin(), ranges.end());
  size_t out = 0;
  for (size_t i = 0; i < ranges.size(); ++i) {
    if (out > 0 &&
        (isMax(ranges[out - 1].second) || ranges[i].first <= next(ranges[out - 1].second))) {
      ranges[out - 1].second = std::max(ranges[out - 1].second, ranges[i].second);
      continue;
    }
    ranges[out++] = ranges[i];
  }
  ranges.resize(out);
}

}  // namespace

NetworkSet::NetworkSet(std::vector<Network> networks) : networks_(std::move(networks)) {
  for (const Network& n : networks_) {
    if (n.family == AF_INET) {
      const uint32_t base = (uint32_t{n.bytes[0]} << 24) | (uint32_t{n.bytes[1]} << 16) |
                            (uint32_t{n.bytes[2]} << 8) | n.bytes[3];
      const uint32_t host = n.prefix >= 32 ? 0 : ~uint32_t{0} >> n.prefix;
      v4_.emplace_back(base & ~host, base | host);
    } else {
      const Key base{bigEndian64(n.bytes.data()), bigEndian64(n.bytes.data() + 8)};
      const uint64_t hiHost = hostMask(n.prefix, 0);
      const uint64_t loHost = hostMask(n.prefix, 64);
      v6_.emplace_back(Key{base.hi & ~hiHost, base.lo & ~loHost},
                       Key{base.hi | hiHost, base.lo | loHost});
    }
  }
  mergeRanges<uint32_t>(
      v4_, +[](const uint32_t& v) { return v + 1; },
      +[](const uint32_t& v) { return v == ~uint32_t{0}; });
  mergeRanges<Key>(
      v6_,
      +[](const Key& k) {
        return k.lo == ~uint64_t{0} ? Key{k.hi + 1, 0} : Key{k.hi, k.lo + 1};
      },
      +[](const Key& k) { return k.hi == ~uint64_t{0} && k.lo == ~uint64_t{0}; });
}

bool NetworkSet::contains(const sockaddr_storage& address) const {
  auto within = [](const auto& ranges, const auto& key) {
    // The last range starting at or before `key`, if it reaches it.
    auto it = std::upper_bound(ranges.begin(), ranges.end(), key,
                               [](const auto& k, const auto& r) { return k < r.first; });
    return it != ranges.begin() && key <= std::prev(it)->second;
  };
  if (address.ss_family == AF_INET) {
    return within(v4_, ntohl(reinterpret_cast<const sockaddr_in&>(address).sin_addr.s_addr));
  }
  if (address.ss_family != AF_INET6) {
    return false;
  }
  const in6_addr& a6 = reinterpret_cast<const sockaddr_in6&>(address).sin6_addr;
  if (IN6_IS_ADDR_V4MAPPED(&a6)) {
    const uint8_t* b = a6.s6_addr + 12;
    return within(v4_,
                  (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3]);
  }
  return within(v6_, Key{bigEndian64(a6.s6_addr), bigEndian64(a6.s6_addr + 8)});
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
  if (address.ss_family == AF_UNIX) {
    const auto& a = reinterpret_cast<const sockaddr_un&>(address);
    const size_t size = strnlen(a.sun_path + 1, sizeof(a.sun_path) - 1);
    return a.sun_path[0] == '\0'
               ? "unix:@" + std::string(a.sun_path + 1, size)
               : "unix:" + std::string(a.sun_path, strnlen(a.sun_path, sizeof(a.sun_path)));
  }
  return "?";
}

std::string endpointKey(const Address& address) {
  std::string key(1, static_cast<char>(address.family()));
  auto append = [&key](const void* bytes, size_t size) {
    key.append(static_cast<const char*>(bytes), size);
  };
  if (address.family() == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(address.storage);
    append(&a.sin_port, sizeof(a.sin_port));
    append(&a.sin_addr, sizeof(a.sin_addr));
  } else if (address.family() == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(address.storage);
    append(&a.sin6_port, sizeof(a.sin6_port));
    append(&a.sin6_addr, sizeof(a.sin6_addr));
    append(&a.sin6_scope_id, sizeof(a.sin6_scope_id));
  } else {
    append(&address.storage, address.length);
  }
  return key;
}

std::string UpstreamServer::label() const {
  std::string base = name.empty() ? std::to_string(entry) : name;
  return all_addresses ? base + "@" + address.text : base;
}

std::vector<UpstreamServer> expandServer(const UpstreamServer& entry,
                                         const std::vector<Address>& answers,
                                         const std::vector<UpstreamServer>& others) {
  std::vector<UpstreamServer> servers;
  std::unordered_set<std::string> taken;  // others' and the answers' kept so far
  taken.reserve(others.size() + answers.size());
  for (const UpstreamServer& other : others) {
    taken.insert(endpointKey(other.address));
  }
  for (const Address& answer : answers) {
    if (!taken.insert(endpointKey(answer)).second) {
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
