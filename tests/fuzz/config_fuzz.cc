// Fuzz target: config::loadString() on any bytes. It must never crash, throw or hang, its
// result must be consistent (a config exactly when there are no errors; every error placed
// in this file at a 1-based line and column, sorted, with a message), and a config it
// accepts must keep every rule the loader documents (loader.h, config.h, README
// "Configuration"): the rest of grelay trusts those structs without checking again.
//
// Host names never reach the network: offline_resolver.cc. Seeds: config_corpus/ (the
// example configs, one file per feature, and inputs the fuzzer found interesting).
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "config/loader.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using namespace grelay::config;
using grelay::fuzz::printable;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kGiB = 1024 * kMiB;
constexpr Duration kDay = std::chrono::hours(24);

bool isName(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

void checkAddress(const Address& a, const char* what) {
  const std::string ctx = std::string(what) + " '" + printable(a.text) + "'";
  FUZZ_CHECK(a.family() == AF_INET || a.family() == AF_INET6, ctx);
  FUZZ_CHECK(a.length == (a.family() == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6)), ctx);
  const uint16_t port = a.family() == AF_INET
                            ? reinterpret_cast<const sockaddr_in&>(a.storage).sin_port
                            : reinterpret_cast<const sockaddr_in6&>(a.storage).sin6_port;
  FUZZ_CHECK(port != 0, ctx + ": port 0");
  FUZZ_CHECK(!a.text.empty(), ctx);
}

// Where grelay connects (upstream servers, mirrors): an IP endpoint as above, or a Unix
// socket "unix:PATH" / "unix:@NAME" whose sockaddr holds exactly the text's path.
void checkTarget(const Address& a, const char* what) {
  if (a.family() != AF_UNIX) {
    checkAddress(a, what);
    return;
  }
  const std::string ctx = std::string(what) + " '" + printable(a.text) + "'";
  FUZZ_CHECK(a.text.rfind("unix:", 0) == 0, ctx + ": a Unix socket not written unix:");
  const bool abstract = a.text.size() > 5 && a.text[5] == '@';
  const std::string path = a.text.substr(abstract ? 6 : 5);
  FUZZ_CHECK(!path.empty() && path.size() <= 107, ctx + ": socket path length");
  FUZZ_CHECK(path.find('\0') == std::string::npos, ctx + ": NUL in the path");
  const auto& un = reinterpret_cast<const sockaddr_un&>(a.storage);
  FUZZ_CHECK(a.length == offsetof(sockaddr_un, sun_path) + 1 + path.size(), ctx + ": length");
  FUZZ_CHECK((un.sun_path[0] == '\0') == abstract, ctx + ": abstract or not");
  FUZZ_CHECK(std::memcmp(un.sun_path + (abstract ? 1 : 0), path.data(), path.size()) == 0,
             ctx + ": path");
  FUZZ_CHECK(!a.host_name, ctx + ": looked up");
}

// The same endpoint (family, address, port): listeners and [admin] must not share one.
// Written apart from config::endpointKey, which the loader's own checks use.
std::string oracleKey(const Address& a) {
  std::string key(1, static_cast<char>(a.family()));
  if (a.family() == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(a.storage);
    key.append(reinterpret_cast<const char*>(&in.sin_addr), sizeof(in.sin_addr));
    key.append(reinterpret_cast<const char*>(&in.sin_port), sizeof(in.sin_port));
  } else if (a.family() == AF_UNIX) {
    key.append(reinterpret_cast<const char*>(&a.storage), a.length);
  } else {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a.storage);
    key.append(reinterpret_cast<const char*>(&in6.sin6_addr), sizeof(in6.sin6_addr));
    key.append(reinterpret_cast<const char*>(&in6.sin6_port), sizeof(in6.sin6_port));
    key.append(reinterpret_cast<const char*>(&in6.sin6_scope_id), sizeof(in6.sin6_scope_id));
  }
  return key;
}

void checkAccepted(const Config& c) {
  const ServerConfig& s = c.server;
  FUZZ_CHECK(s.workers <= 1024, "workers 0..1024");
  FUZZ_CHECK(s.chunk_size >= 4 * kKiB && s.chunk_size <= kMiB, "chunk_size 4KiB..1MiB");
  FUZZ_CHECK(s.max_connections >= 1 && s.max_connections <= 10'000'000,
             "max_connections 1..10000000");
  FUZZ_CHECK(s.drain_timeout.count() >= 0 && s.drain_timeout <= kDay, "drain_timeout 0s..24h");
  FUZZ_CHECK(s.shutdown_delay.count() >= 0 && s.shutdown_delay <= kDay, "shutdown_delay 0s..24h");
  FUZZ_CHECK(s.buffer_pool >= 4ull * s.chunk_size && s.buffer_pool <= 4 * kGiB,
             "buffer_pool 4 x chunk_size..4GiB");

  std::set<std::string> endpoints;
  if (c.admin.listen) {
    checkAddress(*c.admin.listen, "admin listen");
    endpoints.insert(oracleKey(*c.admin.listen));
  }

  // source_address: an IP (port 0) of the family of every address it connects to.
  auto checkSource = [](const std::optional<Address>& source, const Address& to) {
    if (!source) {
      return;
    }
    const bool v4 = source->family() == AF_INET;
    FUZZ_CHECK(to.family() != AF_UNIX, "source_address toward a Unix socket");
    FUZZ_CHECK(source->family() == to.family(), "source_address of another family");
    FUZZ_CHECK(source->length == (v4 ? sizeof(sockaddr_in) : sizeof(sockaddr_in6)),
               "source_address length");
    FUZZ_CHECK(reinterpret_cast<const sockaddr_in&>(source->storage).sin_port == 0,
               "source_address with a port");
  };

  // TLS groups: names, none twice.
  auto checkGroups = [](const std::vector<std::string>& groups) {
    std::set<std::string> seen;
    for (const std::string& g : groups) {
      FUZZ_CHECK(isName(g) && g.size() <= 64, "group '" + printable(g) + "'");
      FUZZ_CHECK(seen.insert(g).second, "group twice: " + g);
    }
  };

  std::set<std::string> upstreamNames;
  for (const UpstreamConfig& u : c.upstreams) {
    checkGroups(u.tls.groups);
    FUZZ_CHECK(isName(u.name), "upstream name '" + printable(u.name) + "'");
    FUZZ_CHECK(upstreamNames.insert(u.name).second, "duplicate upstream " + u.name);
    FUZZ_CHECK(!u.servers.empty(), "upstream " + u.name + " without servers");
    std::set<std::string> servers;
    bool primary = false;
    std::set<std::string> names;
    for (const UpstreamServer& s : u.servers) {
      checkTarget(s.address, "upstream server");
      FUZZ_CHECK(s.address.family() != AF_UNIX || !s.all_addresses, "all_addresses of a socket");
      FUZZ_CHECK(s.address.family() != AF_UNIX || u.check_port == 0, "check_port of a socket");
      FUZZ_CHECK(
          s.address.family() != AF_UNIX || !u.tls.enabled || !u.tls.verify || !u.tls.sni.empty(),
          "TLS verifying a socket server without sni");
      checkSource(u.source_address, s.address);
      FUZZ_CHECK(servers.insert(oracleKey(s.address)).second, "duplicate server in " + u.name);
      FUZZ_CHECK(s.weight >= 1 && s.weight <= 256, "server weight " + std::to_string(s.weight));
      primary = primary || !s.backup;
      FUZZ_CHECK(s.name.empty() || isName(s.name), "server name '" + printable(s.name) + "'");
      FUZZ_CHECK(s.name.empty() || names.insert(s.name).second, "duplicate server name");
    }
    FUZZ_CHECK(primary, "upstream " + u.name + " has only backup servers");
    FUZZ_CHECK(
        !u.connect_timeout || (u.connect_timeout->count() >= 1 && *u.connect_timeout <= kDay),
        "upstream connect_timeout 1ms..24h");
    FUZZ_CHECK(u.check_interval.count() == 0 || u.max_fails > 0,
               "health checks without max_fails in " + u.name);
    FUZZ_CHECK(u.check_timeout.count() >= 1 && u.check_timeout.count() <= 60'000,
               "check_timeout " + std::to_string(u.check_timeout.count()));
    FUZZ_CHECK(u.check_passes >= 1 && u.check_passes <= 1000, "check_passes 1..1000");
    FUZZ_CHECK(u.slow_start.count() >= 0 && u.slow_start <= kDay,
               "slow_start " + std::to_string(u.slow_start.count()));
    FUZZ_CHECK(u.queue_timeout.count() >= 0 && u.queue_timeout <= std::chrono::hours(1),
               "queue_timeout " + std::to_string(u.queue_timeout.count()));
    FUZZ_CHECK(u.max_queue <= 10'000'000, "max_queue " + std::to_string(u.max_queue));
    FUZZ_CHECK(u.resolve_interval.count() == 0 ||
                   (u.resolve_interval.count() >= 100 && u.resolve_interval <= kDay),
               "resolve_interval " + std::to_string(u.resolve_interval.count()));
  }

  FUZZ_CHECK(!c.listeners.empty(), "at least one listener");
  std::set<std::string> listenerNames;
  for (const ListenerConfig& l : c.listeners) {
    FUZZ_CHECK(isName(l.name), "listener name '" + printable(l.name) + "'");
    FUZZ_CHECK(listenerNames.insert(l.name).second, "duplicate listener " + l.name);
    checkAddress(l.listen, "listener listen");
    FUZZ_CHECK(endpoints.insert(oracleKey(l.listen)).second,
               "listen address shared: " + l.listen.text);
    // No upstream of its own only with routes (sessions no route takes are reset).
    FUZZ_CHECK(l.upstream.empty() ? !l.routes.empty()
                                  : l.upstream_index < c.upstreams.size() &&
                                        c.upstreams[l.upstream_index].name == l.upstream,
               "listener " + l.name + " upstream '" + printable(l.upstream) + "'");
    std::set<std::pair<std::string, std::string>> routeKeys;  // (name or "", protocol or "")
    for (const RouteConfig& r : l.routes) {
      const size_t index = static_cast<size_t>(&r - &l.routes[0]);
      FUZZ_CHECK(
          r.upstream_index < c.upstreams.size() && c.upstreams[r.upstream_index].name == r.upstream,
          "listener " + l.name + " route upstream '" + printable(r.upstream) + "'");
      FUZZ_CHECK(!r.sni.empty() || !r.alpn.empty(),
                 "listener " + l.name + ": a route without names or protocols");
      std::vector<std::string> protocols = r.alpn;
      for (const std::string& p : protocols) {
        FUZZ_CHECK(!p.empty() && p.size() <= 255, "route ALPN '" + printable(p) + "'");
      }
      if (protocols.empty()) {
        protocols.push_back("");
      }
      for (const std::string& p : protocols) {
        const std::vector<std::string> offered =
            p.empty() ? std::vector<std::string>{} : std::vector<std::string>{p};
        for (const std::string& name : r.sni.empty() ? std::vector<std::string>{""} : r.sni) {
          FUZZ_CHECK(routeKeys.insert({name, p}).second,
                     "a name and protocol in two routes: " + printable(name) + " " + printable(p));
          // Each exact name (or none) with each protocol (or none) routes to its own route:
          // no other route can tie or win.
          FUZZ_CHECK(name.starts_with("*.") || routeFor(l, name, offered) == index,
                     "routeFor '" + printable(name) + "' '" + printable(p) + "'");
        }
      }
      for (const std::string& name : r.sni) {
        const std::string_view host =
            name.starts_with("*.") ? std::string_view(name).substr(2) : std::string_view(name);
        FUZZ_CHECK(!host.empty() && host.size() <= 253 && host.front() != '.' &&
                       host.back() != '.' && host.find("..") == std::string_view::npos &&
                       std::all_of(host.begin(), host.end(),
                                   [](char ch) {
                                     return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
                                            ch == '-' || ch == '_' || ch == '.';
                                   }),
                   "route name '" + printable(name) + "'");
      }
    }
    FUZZ_CHECK(l.connect_timeout.count() >= 1 && l.connect_timeout <= kDay, "connect_timeout");
    FUZZ_CHECK(l.idle_timeout.count() >= 1 && l.idle_timeout <= kDay, "idle_timeout");
    FUZZ_CHECK(l.max_session_duration.count() >= 0 && l.max_session_duration <= 30 * kDay,
               "max_session_duration 0..30d");
    FUZZ_CHECK(l.max_connections_per_client <= 10'000'000, "max_connections_per_client");
    FUZZ_CHECK(l.max_connection_rate <= 1'000'000, "max_connection_rate");
    FUZZ_CHECK(l.max_connection_rate_per_client <= 1'000'000, "max_connection_rate_per_client");
    FUZZ_CHECK(l.proxy_protocol_from.empty() || l.accept_proxy_protocol,
               "proxy_protocol_from without accept_proxy_protocol");
    for (const Network& n : l.allow) {
      FUZZ_CHECK(n.prefix <= (n.family == AF_INET ? 32u : 128u), "allow prefix");
    }
    for (const Network& n : l.proxy_protocol_from) {
      FUZZ_CHECK(n.prefix <= (n.family == AF_INET ? 32u : 128u), "network prefix");
    }
    if (l.tls) {
      FUZZ_CHECK(!l.tls->cert.empty() && !l.tls->key.empty(), "tls cert and key");
      FUZZ_CHECK(l.tls->handshake_timeout.count() >= 1 && l.tls->handshake_timeout <= kDay,
                 "handshake_timeout");
      FUZZ_CHECK(l.tls->min_version == "1.2" || l.tls->min_version == "1.3", "min_version");
      checkGroups(l.tls->groups);
      FUZZ_CHECK(l.tls->session_ticket_rotation >= std::chrono::seconds(1) &&
                     l.tls->session_ticket_rotation <= kDay,
                 "session_ticket_rotation 1s..24h");
      // Every file a listener's TLS names was readable when loaded (cert, key,
      // ocsp_response), and each extra certificate has its pair.
      auto readable = [](const std::string& path) {
        return path.empty() || access(path.c_str(), R_OK) == 0;
      };
      FUZZ_CHECK(readable(l.tls->cert) && readable(l.tls->ocsp_response), "tls files readable");
      // session_ticket_keys: 1..8 distinct readable files, only with tickets on.
      const std::vector<std::string>& keys = l.tls->session_ticket_keys;
      FUZZ_CHECK(keys.size() <= 8, "session_ticket_keys 1..8");
      FUZZ_CHECK(keys.empty() || l.tls->session_tickets, "ticket keys with tickets off");
      for (size_t k = 0; k < keys.size(); ++k) {
        FUZZ_CHECK(!keys[k].empty() && readable(keys[k]), "ticket key file readable");
        FUZZ_CHECK(std::find(keys.begin(), keys.begin() + static_cast<ptrdiff_t>(k), keys[k]) ==
                       keys.begin() + static_cast<ptrdiff_t>(k),
                   "ticket key file twice");
      }
      // ocsp_update: an http:// responder if any, delays 1s..24h with min <= max, and
      // neither a responder nor delays other than the defaults without it.
      FUZZ_CHECK(l.tls->ocsp_responder.empty() || parseHttpUrl(l.tls->ocsp_responder),
                 "ocsp_responder an http URL");
      FUZZ_CHECK(l.tls->ocsp_proxy.empty() || (parseHttpUrl(l.tls->ocsp_proxy) &&
                                               parseHttpUrl(l.tls->ocsp_proxy)->path == "/"),
                 "ocsp_proxy an http URL without a path");
      FUZZ_CHECK(l.tls->ocsp_update_min_delay >= std::chrono::seconds(1) &&
                     l.tls->ocsp_update_max_delay <= kDay &&
                     l.tls->ocsp_update_min_delay <= l.tls->ocsp_update_max_delay,
                 "ocsp_update delays 1s <= min <= max <= 24h");
      FUZZ_CHECK(l.tls->ocsp_update || (l.tls->ocsp_responder.empty() &&
                                        l.tls->ocsp_update_min_delay == std::chrono::minutes(5) &&
                                        l.tls->ocsp_update_max_delay == std::chrono::hours(1)),
                 "ocsp_update settings without ocsp_update");
      for (const CertificateFiles& c : l.tls->certs) {
        FUZZ_CHECK(!c.cert.empty() && !c.key.empty(), "certs cert and key");
        FUZZ_CHECK(readable(c.cert) && readable(c.key) && readable(c.ocsp_response),
                   "certs files readable");
      }
    }
    std::set<std::string> mirrorNames;
    for (const MirrorConfig& m : l.mirrors) {
      FUZZ_CHECK(isName(m.name), "mirror name '" + printable(m.name) + "'");
      FUZZ_CHECK(mirrorNames.insert(m.name).second, "duplicate mirror " + m.name);
      if (m.upstream.empty()) {
        checkTarget(m.address, "mirror address");
        checkSource(m.source_address, m.address);
      } else {
        // A pool's servers: its settings, never TLS.
        FUZZ_CHECK(m.address.length == 0, "mirror with both address and upstream");
        FUZZ_CHECK(m.upstream_index < c.upstreams.size() &&
                       c.upstreams[m.upstream_index].name == m.upstream,
                   "mirror upstream index");
        FUZZ_CHECK(!c.upstreams[m.upstream_index].tls.enabled, "mirror to a TLS pool");
        FUZZ_CHECK(!m.source_address && m.resolve_interval.count() == 0,
                   "mirror upstream with its own source_address or resolve_interval");
      }
      FUZZ_CHECK(!m.proxy_protocol_tlvs.any() || m.proxy_protocol == ProxyProtocol::V2,
                 "mirror TLVs without a v2 header");
      FUZZ_CHECK(m.sample_percent <= 100, "sample_percent 0..100");
      FUZZ_CHECK(m.max_fails <= 1000, "mirror max_fails 0..1000");
      FUZZ_CHECK(m.fail_timeout.count() >= 1, "mirror fail_timeout >= 1ms");
      FUZZ_CHECK(m.resolve_interval.count() == 0 ||
                     (m.resolve_interval.count() >= 100 && m.resolve_interval <= kDay),
                 "mirror resolve_interval " + std::to_string(m.resolve_interval.count()));
      FUZZ_CHECK(m.max_lag >= s.chunk_size, "mirror max_lag >= chunk_size");
    }
    if (l.tap) {
      FUZZ_CHECK(!l.tap->path.empty(), "tap path non-empty");
      FUZZ_CHECK(l.tap->max_size >= kMiB, "tap max_size >= 1MiB");
      FUZZ_CHECK(l.tap->max_lag >= s.chunk_size, "tap max_lag >= chunk_size");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  static const std::string kFile = "fuzz.toml";
  LoadResult result;
  try {
    result = loadString(text, kFile);
  } catch (...) {
    FUZZ_CHECK(false, "loadString threw");
  }
  FUZZ_CHECK(result.config.has_value() == result.errors.empty(),
             "a config exactly when there are no errors");
  for (size_t i = 0; i < result.errors.size(); ++i) {
    const ConfigError& e = result.errors[i];
    FUZZ_CHECK(e.where.file == kFile, e.toString());
    FUZZ_CHECK(e.where.line >= 1 && e.where.column >= 1, e.toString());
    FUZZ_CHECK(!e.message.empty(), e.toString());
    FUZZ_CHECK_KNOWN(e.message.find('\n') == std::string::npos, "error-newline",
                     "one line per error: " + e.toString());
    if (i > 0) {
      const Location& before = result.errors[i - 1].where;
      FUZZ_CHECK(std::tie(before.line, before.column) <= std::tie(e.where.line, e.where.column),
                 "errors sorted: " + e.toString());
    }
  }
  if (result.config) {
    checkAccepted(*result.config);
  }
  return 0;
}
